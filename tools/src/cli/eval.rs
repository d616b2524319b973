//! `graftnet eval`: int8 top-1 accuracy of a task over a data set, and the
//! float model's (through tract) with `--reference`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use serde_json::json;

use graftnet_tools::data;
use graftnet_tools::host::{argmax, ExportDir};
use graftnet_tools::reference::TractModel;

use super::{input_shape_of, manifest_prep, PrepArgs, VerifyArgs};

#[derive(ClapArgs)]
pub struct Args {
    dir: PathBuf,
    #[arg(long)]
    task: String,
    #[command(flatten)]
    verify: VerifyArgs,
    /// .npy (N,C,H,W) float32, or an ImageFolder directory
    #[arg(long)]
    data: PathBuf,
    /// .npy of integer labels (not needed for ImageFolder)
    #[arg(long)]
    labels: Option<PathBuf>,
    /// the float ONNX model, run through tract for comparison
    #[arg(long)]
    reference: Option<PathBuf>,
    /// evaluate at most N samples (0 = all)
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[command(flatten)]
    prep: PrepArgs,
    #[arg(long)]
    json: bool,
}

/// Evaluation results.
pub struct EvalResult {
    pub count: usize,
    pub correct: usize,
    pub reference_correct: Option<usize>,
    pub agreement: Option<usize>,
    pub seconds: f64,
}

/// Runs `task` over the first `limit` samples of `ds` (0 = all), and the
/// float `reference` over the same samples.
pub fn evaluate(
    d: &ExportDir,
    task: &str,
    ds: &data::Dataset,
    reference: Option<&TractModel>,
    limit: usize,
) -> Result<EvalResult> {
    let labels = ds
        .labels
        .clone()
        .context("the evaluation data has no labels (give --labels)")?;
    let n = if limit == 0 {
        ds.len()
    } else {
        ds.len().min(limit)
    };
    let t0 = Instant::now();
    let preds = d.with_engine(task, |e| {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let s = e
                .run_f32(ds.sample(i))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            v.push(s.argmax());
        }
        Ok(v)
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    let correct = (0..n).filter(|&i| preds[i] == labels[i]).count();
    let (mut rc, mut ag) = (None, None);
    if let Some(m) = reference {
        let (mut c, mut a) = (0, 0);
        for i in 0..n {
            let y = m.run(ds.sample(i))?;
            let p = argmax(&y);
            c += (p == labels[i]) as usize;
            a += (p == preds[i]) as usize;
        }
        rc = Some(c);
        ag = Some(a);
    }
    Ok(EvalResult {
        count: n,
        correct,
        reference_correct: rc,
        agreement: ag,
        seconds,
    })
}

impl Args {
    pub fn run(self) -> Result<()> {
        let Args {
            dir,
            task,
            verify,
            data: data_p,
            labels,
            reference,
            limit,
            prep,
            json: json_out,
        } = self;
        let d = ExportDir::open_verified(&dir, verify.key()?)?;
        for w in d.warnings() {
            eprintln!("graftnet: warning: {w}");
        }
        // Unknown task, unsigned or modified blobs -> error before loading data.
        d.parse_backbone()?;
        d.patch(&task)?;
        let shape = input_shape_of(&d)?;
        let p = manifest_prep(&d, &prep, shape);
        let ds = data::load_dataset(&data_p, labels.as_deref(), &p)?;
        if ds.shape != shape {
            bail!(
                "data {} has samples of shape {:?} (c,h,w); the model takes {:?}",
                data_p.display(),
                ds.shape,
                shape
            );
        }
        let refm = match reference {
            Some(r) => Some(TractModel::load(&r, Some(shape))?),
            None => None,
        };
        let r = evaluate(&d, &task, &ds, refm.as_ref(), limit)?;
        let top1 = r.correct as f64 / r.count.max(1) as f64;
        if json_out {
            let mut o = json!({"task": task, "count": r.count, "correct": r.correct, "top1": top1, "seconds": r.seconds});
            if let (Some(c), Some(a)) = (r.reference_correct, r.agreement) {
                o["reference_top1"] = json!(c as f64 / r.count.max(1) as f64);
                o["agreement"] = json!(a as f64 / r.count.max(1) as f64);
            }
            println!("{o}");
        } else {
            println!(
                "task {task}: int8 top-1 {:.2} % ({}/{})",
                100.0 * top1,
                r.correct,
                r.count
            );
            if let (Some(c), Some(a)) = (r.reference_correct, r.agreement) {
                println!(
                    "  float (tract) top-1 {:.2} %, int8-vs-float agreement {:.2} %",
                    100.0 * c as f64 / r.count as f64,
                    100.0 * a as f64 / r.count as f64
                );
            }
        }
        Ok(())
    }
}
