//! `graftnet demo`: the main job on the models and data the repository
//! ships: export, then run every task and print accuracy, sizes and switch
//! time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args as ClapArgs;
use serde_json::json;

use graftnet_tools::data::{self, Preprocess};
use graftnet_tools::host::ExportDir;
use graftnet_tools::pipeline::{self, ExportOptions};
use graftnet_tools::reference::TractModel;

use super::eval::evaluate;

#[derive(ClapArgs)]
pub struct Args {
    /// folder with learned/, mnv2/, mnv3/ and data/ (default: tests/models of the
    /// checkout around the current directory or the executable)
    #[arg(long)]
    models: Option<PathBuf>,
    /// larger test sets written by tests/data/setup.sh (default: tests/data/generated if present)
    #[arg(long)]
    data: Option<PathBuf>,
    /// where to write the exports
    #[arg(long, default_value = "out/demo")]
    out: PathBuf,
    /// learned (trained by `graftnet learn`), mnv2, mnv3 (fine-tuned in PyTorch) or all
    #[arg(long, default_value = "all")]
    arch: String,
    #[arg(long)]
    json: bool,
}

/// `rel` (a folder of the repository, e.g. `tests/models`) found at run
/// time: under the current directory or one of its parents, then beside
/// the executable or one of its parents (`target/release/graftnet` in a
/// checkout). No path is compiled into the binary.
fn find_repo_dir(rel: &str) -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    for start in cwd.into_iter().chain(exe) {
        for dir in start.ancestors() {
            let d = dir.join(rel);
            if d.is_dir() {
                return Some(d);
            }
        }
    }
    None
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args {
            models,
            data: data_dir,
            out,
            arch,
            json: json_out,
        } = self;
        let models = match models {
            Some(m) => m,
            None => find_repo_dir("tests/models").ok_or_else(|| {
                anyhow::anyhow!(
                    "the demo's models were not found: no --models DIR given, and no tests/models \
                     under the current directory, the executable's or their parents \
                     (run it from a graftnet checkout, or pass --models PATH/TO/tests/models)"
                )
            })?,
        };
        let data_dir = data_dir.or_else(|| {
            find_repo_dir("tests/data/generated").filter(|g| g.join("mnist_test_x.npy").exists())
        });
        let archs: Vec<&str> = match arch.as_str() {
            "all" => vec!["learned", "mnv2", "mnv3"],
            a @ ("learned" | "mnv2" | "mnv3") => vec![a],
            _ => bail!("--arch must be learned, mnv2, mnv3 or all"),
        };
        // learned/: written by `graftnet learn` (tests/models/learned/README.md);
        // mnv2/, mnv3/: fine-tuned in PyTorch.
        let model_file = |a: &str, t: &str| {
            if a == "learned" {
                models.join(a).join(format!("{t}.onnx"))
            } else {
                models.join(a).join(format!("{t}.folded.onnx"))
            }
        };
        let fixture = models.join("data");
        let test_dir = data_dir.clone().unwrap_or_else(|| fixture.clone());
        let mut rows = Vec::new();
        for a in archs {
            // (task name, model file, data task)
            let tasks: Vec<(&str, &str)> = if a != "mnv3" {
                vec![
                    ("mnist-sb", "mnist"),
                    ("mnist-dw", "mnist"),
                    ("fashion-updown-sb", "fashion-updown"),
                    ("fashion-binary-logits", "fashion-binary"),
                ]
            } else {
                vec![
                    ("mnist-sb", "mnist"),
                    ("fashion-updown-sb", "fashion-updown"),
                ]
            };
            let outd = out.join(a);
            let mut opts = ExportOptions {
                base: model_file(a, "base"),
                calib: fixture.join("fashion_calib_x.npy"),
                out: outd.clone(),
                progress: !json_out,
                ..Default::default()
            };
            let labels = |data_task: &str| -> Vec<String> {
                let l: &[&str] = match data_task {
                    "mnist" => &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
                    "fashion-binary" => &["other", "footwear"],
                    _ => &[
                        "T-shirt/top",
                        "Trouser",
                        "Pullover",
                        "Dress",
                        "Coat",
                        "Sandal",
                        "Shirt",
                        "Sneaker",
                        "Bag",
                        "Ankle boot",
                    ],
                };
                l.iter().map(|s| s.to_string()).collect()
            };
            opts.labels.insert("base".into(), labels("fashion"));
            for (t, dt) in &tasks {
                opts.tasks.push((t.to_string(), model_file(a, t)));
                opts.calib_tasks
                    .insert(t.to_string(), fixture.join(format!("{dt}_calib_x.npy")));
                opts.labels.insert(t.to_string(), labels(dt));
            }
            let t0 = Instant::now();
            let rep = pipeline::export(&opts)?;
            let export_s = t0.elapsed().as_secs_f64();
            let d = ExportDir::open(&outd)?;
            let switch_us = switch_time_us(&d)?;
            if !json_out {
                println!(
                    "\n{a}: exported in {export_s:.1} s: backbone {} bytes, arena {} bytes (lower bound {}), switch {switch_us:.1} us per patch from bytes (parse + apply)",
                    rep.backbone_bytes, rep.arena_bytes, rep.arena_lower_bound
                );
                println!(
                    "  {:<22} {:>5} {:>9} {:>9} {:>9} {:>9} {:>7}  patch bytes by kind",
                    "task", "n", "patch B", "int8 %", "float %", "agree %", "ms/img"
                );
            }
            let all: Vec<(String, PathBuf, &str)> =
                std::iter::once(("base".to_string(), opts.base.clone(), "fashion"))
                    .chain(
                        tasks
                            .iter()
                            .map(|(t, dt)| (t.to_string(), model_file(a, t), *dt)),
                    )
                    .collect();
            for (task, onnx, dt) in all {
                let ds = data::load_dataset(
                    &test_dir.join(format!("{dt}_test_x.npy")),
                    Some(&test_dir.join(format!("{dt}_test_y.npy"))),
                    &Preprocess::default(),
                )?;
                let refm = TractModel::load(&onnx, None)?;
                let r = evaluate(&d, &task, &ds, Some(&refm), 0)?;
                let tr = rep.tasks.iter().find(|t| t.name == task).unwrap();
                let by: Vec<String> = tr
                    .bytes_by_class
                    .iter()
                    .filter(|(_, b)| *b > 0)
                    .map(|(c, b)| format!("{} {b}", c.name()))
                    .collect();
                let int8 = 100.0 * r.correct as f64 / r.count as f64;
                let fl = 100.0 * r.reference_correct.unwrap() as f64 / r.count as f64;
                let ag = 100.0 * r.agreement.unwrap() as f64 / r.count as f64;
                let ms = 1000.0 * r.seconds / r.count as f64;
                if !json_out {
                    println!(
                        "  {:<22} {:>5} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>7.3}  {}",
                        task,
                        r.count,
                        tr.patch_bytes,
                        int8,
                        fl,
                        ag,
                        ms,
                        by.join(", ")
                    );
                }
                rows.push(json!({"arch": a, "task": task, "count": r.count, "patch_bytes": tr.patch_bytes, "top1": int8 / 100.0,
                                 "reference_top1": fl / 100.0, "agreement": ag / 100.0, "ms_per_image": ms,
                                 "backbone_bytes": rep.backbone_bytes, "arena_bytes": rep.arena_bytes, "switch_us": switch_us}));
            }
        }
        if json_out {
            println!(
                "{}",
                json!({"rows": rows, "test_data": test_dir.to_string_lossy()})
            );
        } else if data_dir.is_none() {
            println!("\n(test data: the 192-image fixtures; run tests/data/setup.sh for the full test splits)");
        }
        Ok(())
    }
}

/// Mean time of `Patch::parse` + `Engine::apply` over every patch of an export, alternating.
fn switch_time_us(d: &ExportDir) -> Result<f64> {
    let names: Vec<String> = d.patches.keys().cloned().collect();
    if names.is_empty() {
        return Ok(0.0);
    }
    let blobs: Vec<&[u8]> = names.iter().map(|n| d.patches[n].as_slice()).collect();
    let bb = d.parse_backbone()?;
    let sizes = d.engine_sizes()?;
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![graftnet::ChannelRequant::default(); sizes.params];
    let mut e =
        graftnet::Engine::new(&bb, &mut arena, &mut params).map_err(|e| anyhow::anyhow!("{e}"))?;
    let iters = 200;
    let t0 = Instant::now();
    for i in 0..iters {
        // A switch from flash: check the blob (checksum, framing), then apply.
        let p =
            graftnet::Patch::parse(blobs[i % blobs.len()]).map_err(|e| anyhow::anyhow!("{e}"))?;
        e.apply(p).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / iters as f64)
}
