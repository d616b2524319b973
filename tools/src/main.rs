//! `graftnet`: export ONNX models to a backbone + task patches, inspect blobs,
//! and run or evaluate tasks on the host through the real runtime.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

mod bench;
mod device_client;

use graftnet_tools::args::{parse_kv, parse_pair, parse_triple};
use graftnet_tools::bias_correction::BiasCorrection;
use graftnet_tools::data::{self, Preprocess};
use graftnet_tools::export::OtherPolicy;
use graftnet_tools::host::{argmax, ExportDir};
use graftnet_tools::inspect;
use graftnet_tools::pipeline::{self, ExportOptions};
use graftnet_tools::reference::TractModel;

#[derive(Parser)]
#[command(
    name = "graftnet",
    version,
    about = "One frozen int8 backbone, many kilobyte task patches (K for the Price of 1)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Export a base model and task models to DIR/backbone.gnb + DIR/NAME.gnp.
    Export(ExportArgs),
    /// Train a task patch (S/B, DW, logits) or a whole base on the CPU; writes ONNX for `export`.
    Learn(Box<graftnet_tools::learn::cli::LearnArgs>),
    /// Describe a backbone (.gnb) or patch (.gnp): layers, shapes, sizes, quantization, signature.
    Inspect {
        file: PathBuf,
        /// For a patch: the backbone to check it against (default: backbone.gnb beside it).
        #[arg(long)]
        backbone: Option<PathBuf>,
        /// Check the blob's signature against this public key (KEY.pub) and time the check; fails if it does not verify.
        #[arg(long, value_name = "KEY.pub")]
        verify_key: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Make an Ed25519 signing key: KEY (secret, 64 hex digits, mode 0600) and KEY.pub.
    Keygen {
        /// the secret key file; the public key goes to KEY.pub
        #[arg(long, value_name = "KEY")]
        out: PathBuf,
        /// replace existing key files
        #[arg(long)]
        force: bool,
    },
    /// Sign backbones (.gnb) and patches (.gnp) in place (or to --out): appends an Ed25519 signature trailer, replacing an old one.
    Sign {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// the secret key file (from `graftnet keygen`)
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
        /// write the signed blob here instead of replacing FILE (one FILE only)
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Talk to a board over the device protocol: info, tasks, switch, infer, upload, delete, check, bench.
    Device(device_client::DeviceArgs),
    /// Class scores of one input.
    Run {
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
    },
    /// Int8 top-1 accuracy of a task (and the float model's, with --reference).
    Eval {
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
    },
    /// Write synthetic MobileNet ONNX models (random weights, PyTorch export
    /// style) with derived S/B, DW and logits tasks, plus random calibration
    /// data: the models BENCHMARKS.md measures.
    Fixture {
        /// mnv2 or mnv3
        #[arg(long, default_value = "mnv2")]
        arch: String,
        #[arg(long, default_value_t = 1.0)]
        width: f32,
        #[arg(long, default_value_t = 224)]
        resolution: usize,
        #[arg(long, default_value_t = 3)]
        channels: usize,
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// calibration samples to write
        #[arg(long, default_value_t = 8)]
        calib: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time inference, task switch and memory of an export directory (and signature checks, with --verify-key).
    Bench {
        dir: PathBuf,
        #[command(flatten)]
        verify: VerifyArgs,
        /// task to time inference on (default: base)
        #[arg(long)]
        task: Option<String>,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// timed inferences (after warm-up)
        #[arg(long, default_value_t = 50)]
        iters: usize,
        /// kernel table (scalar, avx2, avx512vnni, neon, dotprod, or all; default: the best for this CPU)
        #[arg(long)]
        kernels: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Randomized long run of one engine: task switches, inferences checked
    /// bit for bit against a per-task reference, corrupted patches that must
    /// be refused; exits non-zero on any mismatch or accepted corruption.
    Soak(graftnet_tools::soak::SoakArgs),
    /// The main job on the models and data the repository ships: export,
    /// then run every task and print accuracy, sizes and switch time.
    Demo {
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
    },
}

/// `--verify-key KEY.pub`: run signed blobs only.
#[derive(Args, Clone, Default)]
struct VerifyArgs {
    /// Refuse a backbone or patch that is not signed with this public key (KEY.pub from `graftnet keygen`).
    #[arg(long, value_name = "KEY.pub")]
    verify_key: Option<PathBuf>,
}

impl VerifyArgs {
    fn key(&self) -> Result<Option<graftnet::VerifyKey>> {
        self.verify_key
            .as_deref()
            .map(graftnet_tools::signing::read_verify_key)
            .transpose()
    }
}

#[derive(Args, Clone, Default)]
struct PrepArgs {
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

#[derive(Args)]
struct ExportArgs {
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
    #[command(flatten)]
    prep: PrepArgs,
    #[arg(long)]
    json: bool,
}

impl PrepArgs {
    fn to_prep(&self, shape: Option<(usize, usize, usize)>) -> Preprocess {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Export(a) => cmd_export(a),
        Cmd::Learn(a) => a.run(),
        Cmd::Soak(a) => a.run(),
        Cmd::Inspect {
            file,
            backbone,
            verify_key,
            json,
        } => inspect::inspect_verified(&file, backbone.as_deref(), verify_key.as_deref(), json),
        Cmd::Keygen { out, force } => cmd_keygen(&out, force),
        Cmd::Sign { files, key, out } => cmd_sign(&files, &key, out.as_deref()),
        Cmd::Device(a) => device_client::run(a),
        Cmd::Run {
            dir,
            task,
            verify,
            input,
            prep,
            json,
        } => cmd_run(&dir, &task, &verify, &input, &prep, json),
        Cmd::Eval {
            dir,
            task,
            verify,
            data,
            labels,
            reference,
            limit,
            prep,
            json,
        } => cmd_eval(
            &dir,
            &task,
            &verify,
            &data,
            labels.as_deref(),
            reference.as_deref(),
            limit,
            &prep,
            json,
        ),
        Cmd::Demo {
            models,
            data,
            out,
            arch,
            json,
        } => cmd_demo(models, data, &out, &arch, json),
        Cmd::Fixture {
            arch,
            width,
            resolution,
            channels,
            classes,
            calib,
            seed,
            out,
        } => cmd_fixture(
            &arch, width, resolution, channels, classes, calib, seed, &out,
        ),
        Cmd::Bench {
            dir,
            verify,
            task,
            threads,
            iters,
            kernels,
            json,
        } => verify.key().and_then(|verify_key| {
            bench::run(&bench::BenchArgs {
                dir,
                verify_key,
                task,
                threads,
                iters,
                json,
                kernels,
            })
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_labels(p: &Path) -> Result<Vec<String>> {
    let s =
        std::fs::read_to_string(p).with_context(|| format!("reading labels {}", p.display()))?;
    Ok(s.lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect())
}

fn cmd_export(a: ExportArgs) -> Result<()> {
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
                json!({"name": t.name, "classes": t.classes, "patch_bytes": t.patch_bytes, "bytes_by_class": by,
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
                "  task {:<24} {:>3} classes  patch {:>8} bytes  ({})",
                t.name,
                t.classes,
                t.patch_bytes,
                parts.join(", ")
            );
        }
    }
    Ok(())
}

fn input_shape_of(dir: &ExportDir) -> Result<(usize, usize, usize)> {
    let bb = dir.parse_backbone()?;
    let t = bb.input();
    Ok((t.c as usize, t.h as usize, t.w as usize))
}

fn manifest_prep(dir: &ExportDir, prep: &PrepArgs, shape: (usize, usize, usize)) -> Preprocess {
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

fn cmd_keygen(out: &Path, force: bool) -> Result<()> {
    let vk = graftnet_tools::signing::keygen(out, force)?;
    println!(
        "wrote {} (secret: keep it private) and {} (public), key id {}",
        out.display(),
        graftnet_tools::signing::public_path(out).display(),
        vk.id()
    );
    Ok(())
}

fn cmd_sign(files: &[PathBuf], key: &Path, out: Option<&Path>) -> Result<()> {
    use graftnet::format::signature::TRAILER_LEN;
    use graftnet_tools::signing;
    if out.is_some() && files.len() != 1 {
        bail!("--out takes one FILE, got {}", files.len());
    }
    let sk = signing::read_signing_key(key)?;
    let id = sk.verify_key().id();
    for f in files {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        signing::blob_kind(&bytes, f)?;
        let signed = signing::sign_blob(&bytes, &sk).with_context(|| format!("{}", f.display()))?;
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

fn cmd_run(
    dir: &Path,
    task: &str,
    verify: &VerifyArgs,
    input: &Path,
    prep: &PrepArgs,
    json_out: bool,
) -> Result<()> {
    let d = ExportDir::open_verified(dir, verify.key()?)?;
    for w in d.warnings() {
        eprintln!("graftnet: warning: {w}");
    }
    let shape = input_shape_of(&d)?;
    let p = manifest_prep(&d, prep, shape);
    let (s, x) = data::load_input(input, &p)?;
    if s != shape {
        bail!(
            "input {} has shape {:?} (c,h,w); the model takes {:?}",
            input.display(),
            s,
            shape
        );
    }
    let labels = d.labels(task);
    let (scores, top) = d.with_engine(task, |e| {
        let sc = e.run_f32(&x).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut v = vec![0f32; sc.len()];
        sc.dequantize_into(&mut v);
        Ok((v, sc.argmax()))
    })?;
    if json_out {
        println!(
            "{}",
            graftnet_tools::host::scores_json(task, &scores, top, &labels)
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

/// Evaluation results.
struct EvalResult {
    count: usize,
    correct: usize,
    reference_correct: Option<usize>,
    agreement: Option<usize>,
    seconds: f64,
}

fn evaluate(
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

#[allow(clippy::too_many_arguments)]
fn cmd_eval(
    dir: &Path,
    task: &str,
    verify: &VerifyArgs,
    data_p: &Path,
    labels: Option<&Path>,
    reference: Option<&Path>,
    limit: usize,
    prep: &PrepArgs,
    json_out: bool,
) -> Result<()> {
    let d = ExportDir::open_verified(dir, verify.key()?)?;
    for w in d.warnings() {
        eprintln!("graftnet: warning: {w}");
    }
    // Unknown task, unsigned or modified blobs -> error before loading data.
    d.parse_backbone()?;
    d.patch(task)?;
    let shape = input_shape_of(&d)?;
    let p = manifest_prep(&d, prep, shape);
    let ds = data::load_dataset(data_p, labels, &p)?;
    if ds.shape != shape {
        bail!(
            "data {} has samples of shape {:?} (c,h,w); the model takes {:?}",
            data_p.display(),
            ds.shape,
            shape
        );
    }
    let refm = match reference {
        Some(r) => Some(TractModel::load(r, Some(shape))?),
        None => None,
    };
    let r = evaluate(&d, task, &ds, refm.as_ref(), limit)?;
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

fn cmd_demo(
    models: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    out: &Path,
    arch: &str,
    json_out: bool,
) -> Result<()> {
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
    let archs: Vec<&str> = match arch {
        "all" => vec!["learned", "mnv2", "mnv3"],
        "learned" | "mnv2" | "mnv3" => vec![arch],
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

/// Mean time of `Patch::parse` + `Engine::apply` over every patch of an export, alternating.
fn switch_time_us(d: &ExportDir) -> Result<f64> {
    let names: Vec<String> = d.patches.keys().cloned().collect();
    if names.is_empty() {
        return Ok(0.0);
    }
    let blobs: Vec<&[u8]> = names.iter().map(|n| d.patches[n].as_slice()).collect();
    let bb = d.parse_backbone()?;
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![graftnet::Requant::default(); bb.params_len()];
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

#[allow(clippy::too_many_arguments)]
fn cmd_fixture(
    arch: &str,
    width: f32,
    resolution: usize,
    channels: usize,
    classes: usize,
    calib: usize,
    seed: u64,
    out: &Path,
) -> Result<()> {
    use graftnet_tools::fixtures::*;
    let stride = if resolution >= 96 { 2 } else { 1 };
    let base = match arch {
        "mnv2" => mobilenet_v2(&MobileNetV2Config {
            width,
            resolution,
            in_channels: channels,
            classes,
            first_stride: stride,
            seed,
        }),
        "mnv3" => mobilenet_v3_small(&MobileNetV3Config {
            width,
            resolution,
            in_channels: channels,
            classes,
            first_stride: 2,
            reduced_tail: false,
            seed,
        }),
        _ => bail!("--arch must be mnv2 or mnv3"),
    };
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let style = ExportStyle::default();
    let models = [
        ("base", base.clone()),
        (
            "sb",
            derive_task(&base, TaskKind::ScaleBias { classes }, seed + 1),
        ),
        (
            "dw",
            derive_task(&base, TaskKind::Depthwise { classes }, seed + 2),
        ),
        (
            "logits",
            derive_task(&base, TaskKind::Logits { classes }, seed + 3),
        ),
    ];
    for (name, p) in &models {
        let path = out.join(format!("{name}.onnx"));
        std::fs::write(&path, to_onnx(p, &style))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let [_, c, h, w] = base.input_shape();
    data::write_npy_f32(
        out.join("calib.npy"),
        &[calib, c, h, w],
        &random_inputs(calib, c, h, w, seed + 10),
    )?;
    println!(
        "wrote {}/{{base,sb,dw,logits}}.onnx and calib.npy ({} parameters, {} batch-norm channels); export with:\n  graftnet export --base {0}/base.onnx --task sb={0}/sb.onnx --task dw={0}/dw.onnx --task logits={0}/logits.onnx --calib {0}/calib.npy --out {0}/export",
        out.display(),
        base.param_count(),
        base.bn_channels()
    );
    Ok(())
}
