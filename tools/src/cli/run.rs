//! `graftnet run`: the class scores of one input.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde_json::json;

use graftnet_tools::data;
use graftnet_tools::host::ExportDir;

use super::{input_shape_of, manifest_prep, PrepArgs, VerifyArgs};

#[derive(ClapArgs)]
pub struct Args {
    dir: PathBuf,
    #[arg(long)]
    task: String,
    #[command(flatten)]
    verify: VerifyArgs,
    /// .npy of one sample (1,C,H,W) or an image file
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    prep: PrepArgs,
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args {
            dir,
            task,
            verify,
            input,
            prep,
            json: json_out,
        } = self;
        let d = ExportDir::open_verified(&dir, verify.key()?)?;
        for w in d.warnings() {
            eprintln!("graftnet: warning: {w}");
        }
        let shape = input_shape_of(&d)?;
        let p = manifest_prep(&d, &prep, shape);
        let (s, x) = data::load_input(&input, &p)?;
        if s != shape {
            bail!(
                "input {} has shape {:?} (c,h,w); the model takes {:?}",
                input.display(),
                s,
                shape
            );
        }
        let labels = d.labels(&task);
        let (scores, top) = d.with_engine(&task, |e| {
            let sc = e.run_f32(&x).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut v = vec![0f32; sc.len()];
            sc.dequantize_into(&mut v);
            Ok((v, sc.argmax()))
        })?;
        if json_out {
            println!(
                "{}",
                json!({"task": task, "scores": scores, "top1": top, "label": labels.get(top)})
            );
        } else {
            println!(
                "task {task}: top-1 class {top}{}",
                labels
                    .get(top)
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default()
            );
            for (i, s) in scores.iter().enumerate() {
                println!(
                    "  {:>3} {:>10.4} {}",
                    i,
                    s,
                    labels.get(i).map(String::as_str).unwrap_or("")
                );
            }
        }
        Ok(())
    }
}
