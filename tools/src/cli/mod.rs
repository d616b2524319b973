//! The `graftnet` commands, one file per command: each holds the command's
//! `Args` (its flags and help text, parsed by clap) and `Args::run`.
//! `learn` and `soak` keep their arguments beside their code in the library
//! (`graftnet_tools::learn::cli`, `graftnet_tools::soak`). This file holds
//! the argument groups several commands share.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use graftnet_tools::args::parse_pair;
use graftnet_tools::data::Preprocess;
use graftnet_tools::host::ExportDir;

pub mod bench;
pub mod demo;
pub mod device;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod keygen;
pub mod run;
pub mod sign;

/// `--verify-key KEY.pub`: run signed blobs only.
#[derive(Args, Clone, Default)]
pub struct VerifyArgs {
    /// Refuse a backbone or patch that is not signed with this public key (KEY.pub from `graftnet keygen`).
    #[arg(long, value_name = "KEY.pub")]
    verify_key: Option<PathBuf>,
}

impl VerifyArgs {
    pub fn key(&self) -> Result<Option<graftnet::VerifyKey>> {
        self.verify_key
            .as_deref()
            .map(graftnet_tools::signing::read_verify_key)
            .transpose()
    }
}

#[derive(Args, Clone, Default)]
pub struct PrepArgs {
    /// resize images to H,W (image inputs only; default: the model's input size)
    #[arg(long, value_parser = parse_pair)]
    size: Option<(usize, usize)>,
    /// per-channel mean, comma separated (image inputs only)
    #[arg(long, value_delimiter = ',')]
    mean: Vec<f32>,
    /// per-channel std, comma separated (image inputs only)
    #[arg(long, value_delimiter = ',')]
    std: Vec<f32>,
}

impl PrepArgs {
    pub fn to_prep(&self, shape: Option<(usize, usize, usize)>) -> Preprocess {
        let c = shape.map_or(0, |s| s.0);
        let mut p = Preprocess {
            size: self.size.or(shape.map(|s| (s.1, s.2))),
            ..Preprocess::default()
        };
        if c > 0 {
            p.channels = c;
        }
        if !self.mean.is_empty() {
            p.mean = self.mean.clone();
        }
        if !self.std.is_empty() {
            p.std = self.std.clone();
        }
        p
    }
}

pub fn input_shape_of(dir: &ExportDir) -> Result<(usize, usize, usize)> {
    let bb = dir.parse_backbone()?;
    let t = bb.input();
    Ok((t.c as usize, t.h as usize, t.w as usize))
}

pub fn manifest_prep(dir: &ExportDir, prep: &PrepArgs, shape: (usize, usize, usize)) -> Preprocess {
    let mut p = prep.to_prep(Some(shape));
    if let Some(m) = &dir.manifest {
        let get = |k: &str| -> Option<Vec<f32>> {
            m.get("preprocess")?.get(k)?.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect()
            })
        };
        if prep.mean.is_empty() {
            if let Some(v) = get("mean").filter(|v| !v.is_empty()) {
                p.mean = v;
            }
        }
        if prep.std.is_empty() {
            if let Some(v) = get("std").filter(|v| !v.is_empty()) {
                p.std = v;
            }
        }
    }
    p
}
