//! `graftnet run`: the class scores of one input, for one task or several
//! in one pass (`Engine::run_tasks`: the ops they share run once).

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
    /// task name (`base` for the base task); repeat for several tasks
    #[arg(long, required = true)]
    task: Vec<String>,
    /// threads per inference
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(flatten)]
    verify: VerifyArgs,
    /// .npy of one sample (1,C,H,W) or an image file
    #[arg(long)]
    input: PathBuf,
    #[command(flatten)]
    prep: PrepArgs,
    /// one JSON object (`task`, `scores`, `top1`, `label`); for several
    /// tasks, one per task in a list under `results`
    #[arg(long)]
    json: bool,
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args {
            dir,
            task: tasks,
            threads,
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
        let (results, shared) = d.run_tasks(&tasks, &x, threads)?;
        if json_out {
            let objects: Vec<serde_json::Value> = tasks
                .iter()
                .zip(&results)
                .map(|(task, (scores, top))| {
                    let labels = d.labels(task);
                    json!({"task": task, "scores": scores, "top1": top, "label": labels.get(*top)})
                })
                .collect();
            match objects.as_slice() {
                [one] => println!("{one}"),
                _ => println!(
                    "{}",
                    json!({"results": objects, "shared_ops": shared.ops, "ops": shared.of})
                ),
            }
            return Ok(());
        }
        if tasks.len() > 1 {
            println!(
                "{} tasks in one pass: {} of {} ops shared",
                tasks.len(),
                shared.ops,
                shared.of
            );
        }
        for (task, (scores, top)) in tasks.iter().zip(&results) {
            let labels = d.labels(task);
            println!(
                "task {task}: top-1 class {top}{}",
                labels
                    .get(*top)
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
