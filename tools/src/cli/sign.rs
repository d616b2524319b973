//! `graftnet sign`: append (or replace) the Ed25519 signature trailer of blobs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;

use graftnet::format::signature::TRAILER_LEN;
use graftnet_tools::signing;

#[derive(ClapArgs)]
pub struct Args {
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// the secret key file (from `graftnet keygen`)
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// write the signed blob here instead of replacing FILE (one FILE only)
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args { files, key, out } = self;
        let out = out.as_deref();
        if out.is_some() && files.len() != 1 {
            bail!("--out takes one FILE, got {}", files.len());
        }
        let sk = signing::read_signing_key(&key)?;
        let id = sk.verify_key().id();
        for f in &files {
            let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
            signing::blob_kind(&bytes, f)?;
            let signed =
                signing::sign_blob(&bytes, &sk).with_context(|| format!("{}", f.display()))?;
            let dest = out.unwrap_or(f);
            signing::write_atomic(dest, &signed)?;
            println!(
                "signed {} with key {id}: {} bytes ({} of blob, {TRAILER_LEN} of signature trailer)",
                dest.display(),
                signed.len(),
                signed.len() - TRAILER_LEN
            );
        }
        Ok(())
    }
}
