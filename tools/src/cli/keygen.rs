//! `graftnet keygen`: a new Ed25519 signing key pair.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;

use graftnet_tools::signing;

#[derive(ClapArgs)]
pub struct Args {
    /// the secret key file; the public key goes to KEY.pub
    #[arg(long, value_name = "KEY")]
    out: PathBuf,
    /// replace existing key files
    #[arg(long)]
    force: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args { out, force } = self;
        let vk = signing::keygen(&out, force)?;
        println!(
            "wrote {} (secret: keep it private) and {} (public), key id {}",
            out.display(),
            signing::public_path(&out).display(),
            vk.id()
        );
        Ok(())
    }
}
