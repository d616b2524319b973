//! `graftnet export`: a base model and its task models to one backbone and
//! one patch per task (`graftnet_tools::pipeline::export`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;

use graftnet_tools::args::{parse_kv, parse_triple};
use graftnet_tools::bias_correction::BiasCorrection;
use graftnet_tools::export::OtherPolicy;
use graftnet_tools::pipeline::{self, ExportOptions};

use super::PrepArgs;

#[derive(ClapArgs)]
pub struct Args {
    #[arg(long)]
    base: PathBuf,
    /// NAME=TASK.onnx, repeatable
    #[arg(long = "task", value_parser = parse_kv)]
    tasks: Vec<(String, PathBuf)>,
    /// calibration data (.npy (N,C,H,W) or ImageFolder) for the base and tasks without their own
    #[arg(long)]
    calib: PathBuf,
    /// NAME=DATA, repeatable
    #[arg(long = "calib-task", value_parser = parse_kv)]
    calib_tasks: Vec<(String, PathBuf)>,
    #[arg(long)]
    out: PathBuf,
    /// C,H,W for models with dynamic input dimensions
    #[arg(long, value_parser = parse_triple)]
    input_shape: Option<(usize, usize, usize)>,
    /// use at most N calibration samples per task (0 = all)
    #[arg(long, default_value_t = 0)]
    calib_limit: usize,
    /// a changed tensor no patch kind covers: reject the task, or carry the whole tensor
    #[arg(long, default_value = "reject", value_parser = ["reject", "override"])]
    other: String,
    /// NAME=FILE with one class label per line, repeatable
    #[arg(long = "labels", value_parser = parse_kv)]
    labels: Vec<(String, PathBuf)>,
    /// move every conv bias by its mean int8 error on the first N calibration
    /// samples (empirical bias correction; 0 = off). Helps models whose int8
    /// error drifts, e.g. PP-LCNet; applied to the base and every task, so
    /// task patches carry their biases and grow.
    #[arg(long, default_value_t = 0, value_name = "N")]
    bias_correction: usize,
    /// An existing backbone.gnb (already on devices): write only patches for
    /// it; refused, saying what differs, unless --base and --calib reproduce it.
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// version written into every patch (0 = unversioned); devices can refuse
    /// a task older than one they accepted (Engine::apply_newer)
    #[arg(long, default_value_t = 0, value_name = "N")]
    task_version: u32,
    /// sign the backbone and every patch with this secret key (from `graftnet keygen`)
    #[arg(long, value_name = "KEY")]
    sign: Option<PathBuf>,
    /// tasks keep the base's int8 form (activation ranges, gains, tables,
    /// biases) for every op they leave unchanged, so `run --task A --task B`
    /// and devices run those ops once for all tasks; patches shrink to what
    /// changed. Costs accuracy where a task's data differ from the base's.
    #[arg(long)]
    share_prefix: bool,
    #[command(flatten)]
    prep: PrepArgs,
    #[arg(long)]
    json: bool,
}

fn read_labels(p: &Path) -> Result<Vec<String>> {
    let s =
        std::fs::read_to_string(p).with_context(|| format!("reading labels {}", p.display()))?;
    Ok(s.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

impl Args {
    pub fn run(self) -> Result<()> {
        let a = self;
        let mut labels = BTreeMap::new();
        for (k, p) in &a.labels {
            labels.insert(k.clone(), read_labels(p)?);
        }
        let opts = ExportOptions {
            base: a.base,
            tasks: a.tasks,
            calib: a.calib,
            calib_tasks: a.calib_tasks.into_iter().collect(),
            out: a.out,
            input_shape: a.input_shape,
            prep: a.prep.to_prep(None),
            calib_limit: a.calib_limit,
            other: if a.other == "override" {
                OtherPolicy::Override
            } else {
                OtherPolicy::Reject
            },
            labels,
            progress: !a.json,
            bias_correction: (a.bias_correction > 0).then_some(BiasCorrection {
                samples: a.bias_correction,
            }),
            backbone: a.backbone,
            task_version: a.task_version,
            share_prefix: a.share_prefix,
            sign: a
                .sign
                .as_deref()
                .map(graftnet_tools::signing::read_signing_key)
                .transpose()?,
        };
        let opts_sign_id = opts.sign.as_ref().map(|k| k.verify_key().id().to_string());
        let r = pipeline::export(&opts)?;
        for p in &r.removed {
            eprintln!(
                "graftnet: removed {}: a patch of an earlier export that this export does not list",
                p.display()
            );
        }
        if a.json {
            let tasks: Vec<_> = r
                .tasks
                .iter()
                .map(|t| {
                    let by: serde_json::Map<String, serde_json::Value> =
                        t.bytes_by_class.iter().map(|(c, b)| (c.name().to_string(), json!(b))).collect();
                    json!({"name": t.name, "classes": t.classes, "patch_bytes": t.patch_bytes, "bytes_by_class": by, "ops_shared_with_base": t.shared_ops,
                           "head": t.head.as_ref().map(|h| json!({"cut_op": h.cut_op, "cut_node": h.cut_node, "ops": h.ops, "arena_bytes": h.arena_len, "params": h.params_len})),
                           "patch": t.patch.as_ref().map(|p| p.to_string_lossy().to_string())})
                })
                .collect();
            println!(
                "{}",
                json!({"backbone": r.backbone.to_string_lossy(), "backbone_bytes": r.backbone_bytes, "weights_bytes": r.weights_bytes,
                       "arena_bytes": r.arena_bytes, "arena_lower_bound": r.arena_lower_bound, "params_len": r.params_len,
                       "fingerprint": format!("{:016x}", r.fingerprint), "tasks": tasks, "signed_by": opts_sign_id})
            );
        } else {
            println!(
                "backbone {}: {} bytes ({} weights), arena {} bytes (live-tensor lower bound {}), fingerprint {:016x}",
                r.backbone.display(),
                r.backbone_bytes,
                r.weights_bytes,
                r.arena_bytes,
                r.arena_lower_bound,
                r.fingerprint
            );
            if let Some(k) = &opts_sign_id {
                println!("signed   the backbone and every patch with key {k}");
            }
            for t in r.tasks.iter().skip(1) {
                let parts: Vec<String> = t
                    .bytes_by_class
                    .iter()
                    .filter(|(_, b)| *b > 0)
                    .map(|(c, b)| format!("{} {b}", c.name()))
                    .collect();
                println!(
                    "  task {:<24} {:>3} classes  patch {:>8} bytes  ({}); shares {} of {} ops with the base",
                    t.name,
                    t.classes,
                    t.patch_bytes,
                    parts.join(", "),
                    t.shared_ops,
                    r.n_ops
                );
                if let Some(h) = &t.head {
                    println!(
                        "       brings its own head: the backbone stops before op {} (node '{}'); head network: {}",
                        h.cut_op,
                        h.cut_node,
                        h.ops.join(", ")
                    );
                }
            }
        }
        Ok(())
    }
}
