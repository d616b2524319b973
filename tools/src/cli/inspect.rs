//! `graftnet inspect`: describe a backbone or a patch (`graftnet_tools::inspect`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args as ClapArgs;

use graftnet_tools::inspect;

#[derive(ClapArgs)]
pub struct Args {
    file: PathBuf,
    /// For a patch: the backbone to check it against (default: backbone.gnb beside it).
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Check the blob's signature against this public key (KEY.pub) and time the check; fails if it does not verify.
    #[arg(long, value_name = "KEY.pub")]
    verify_key: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        inspect::inspect_verified(
            &self.file,
            self.backbone.as_deref(),
            self.verify_key.as_deref(),
            self.json,
        )
    }
}
