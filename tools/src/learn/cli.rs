//! `graftnet learn`: arguments, data loading and outputs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use serde_json::json;

use super::net::{BnInit, Net, PatchKind};
use super::onnx_out::to_onnx;
use super::train::{self, Augment, Optimizer, TaskRun, TrainConfig};
use crate::args::{parse_pair, parse_triple};
use crate::data::{self, Dataset, Preprocess};
use crate::ir::Graph;

/// Train a task patch (or a whole base) on the CPU and write it as ONNX.
#[derive(Args, Clone, Debug)]
pub struct LearnArgs {
    /// The base model (ONNX). Omit with --arch to train a base from scratch.
    #[arg(long, required_unless_present = "arch")]
    pub base: Option<PathBuf>,
    /// Train from scratch: mobilenet_v2:WIDTH (e.g. mobilenet_v2:0.35);
    /// needs --input-shape and --patch full.
    #[arg(long, conflicts_with = "base")]
    pub arch: Option<String>,
    /// C,H,W of the network input with --arch.
    #[arg(long, value_parser = parse_triple)]
    pub input_shape: Option<(usize, usize, usize)>,
    /// Stride of the first conv with --arch (torchvision: 2; 1 suits 32x32 inputs).
    #[arg(long, default_value_t = 2)]
    pub stem_stride: usize,
    /// Training data: .npy (N,C,H,W), an IDX image file (*-idx3-ubyte[.gz]) or an ImageFolder.
    #[arg(long, required_unless_present = "tasks")]
    pub train: Option<PathBuf>,
    /// Labels for --train (.npy of integers, or *-idx1-ubyte[.gz]).
    #[arg(long)]
    pub train_labels: Option<PathBuf>,
    /// Validation data (same formats); accuracy is reported after every epoch.
    #[arg(long)]
    pub val: Option<PathBuf>,
    #[arg(long)]
    pub val_labels: Option<PathBuf>,
    /// Multi-task: NAME=DATA[,LABELS], repeatable; tasks train together over one network.
    #[arg(long = "task", value_parser = parse_task, conflicts_with = "train")]
    pub tasks: Vec<(String, PathBuf, Option<PathBuf>)>,
    /// Multi-task validation: NAME=DATA[,LABELS], repeatable.
    #[arg(long = "task-val", value_parser = parse_task)]
    pub task_vals: Vec<(String, PathBuf, Option<PathBuf>)>,
    /// Multi-task: keep the shared network frozen, or learn it too (then
    /// OUT/base.onnx holds the new shared network).
    #[arg(long, default_value = "frozen", value_parser = ["frozen", "train"])]
    pub shared: String,
    /// Learning rate of the shared weights with --shared train (default: --lr / 25).
    #[arg(long)]
    pub shared_lr: Option<f32>,
    /// logits, sb+logits, dw+logits, sb+dw+logits or full
    #[arg(long, default_value = "sb+logits")]
    pub patch: String,
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Peak learning rate (default: 5e-2 S/B, 1e-2 logits, 3e-2 DW and full
    /// from a base (relative to each channel's RMS weight), 5e-3 from scratch).
    #[arg(long)]
    pub lr: Option<f32>,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Worker threads (default: every core). Results are bit-identical
    /// for a seed and a thread count; `--json` records the count.
    #[arg(long)]
    pub threads: Option<usize>,
    /// adam or sgd (momentum 0.9)
    #[arg(long, default_value = "adam", value_parser = ["adam", "sgd"])]
    pub optimizer: String,
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f32,
    /// Light augmentation: crop=PIXELS (random translation), flip; comma separated.
    #[arg(long)]
    pub augment: Option<String>,
    /// Always start from a fresh classifier (default: only when the class count changes).
    #[arg(long)]
    pub new_head: bool,
    /// Use at most N training images (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,
    /// Use at most N validation images (0 = all).
    #[arg(long, default_value_t = 0)]
    pub val_limit: usize,
    /// Images for the final batch-norm statistics (0 = keep the running average).
    #[arg(long, default_value_t = 4096)]
    pub bn_samples: usize,
    /// Resize image inputs to H,W (default: the model input).
    #[arg(long, value_parser = parse_pair)]
    pub size: Option<(usize, usize)>,
    /// Per-channel mean for image inputs (after scaling to [0,1]).
    #[arg(long, value_delimiter = ',')]
    pub mean: Vec<f32>,
    /// Per-channel std for image inputs.
    #[arg(long, value_delimiter = ',')]
    pub std: Vec<f32>,
    /// The learned model: TASK.onnx (one task) or a folder (multi-task).
    #[arg(long)]
    pub out: PathBuf,
    /// Also export the learned task(s) as DIR/NAME.gnp against the backbone
    /// already in DIR (an earlier `graftnet export`: its manifest names the
    /// base model and calibration data, which must reproduce the backbone).
    #[arg(long, value_name = "DIR")]
    pub export: Option<PathBuf>,
    /// Task name for --export (default: the --out file's stem).
    #[arg(long)]
    pub name: Option<String>,
    /// Calibration data for --export (.npy or ImageFolder; default: the
    /// training data when it is one of those).
    #[arg(long)]
    pub calib: Option<PathBuf>,
    /// One JSON object at the end instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

fn parse_task(s: &str) -> Result<(String, PathBuf, Option<PathBuf>), String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=DATA[,LABELS], got '{s}'"))?;
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') || name == "base" {
        return Err(format!(
            "task name '{name}' must be a plain file name other than 'base'"
        ));
    }
    let (d, l) = match rest.split_once(',') {
        Some((d, l)) => (d, Some(PathBuf::from(l))),
        None => (rest, None),
    };
    Ok((name.to_string(), PathBuf::from(d), l))
}

fn parse_augment(s: &str) -> Result<Augment> {
    let mut a = Augment::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some(("crop", v)) => {
                a.crop = v
                    .parse()
                    .with_context(|| format!("--augment crop={v}: not a pixel count"))?
            }
            None if part == "flip" => a.flip = true,
            None if part == "crop" => a.crop = 2,
            _ => bail!("--augment: unknown item '{part}' (use crop=PIXELS and/or flip)"),
        }
    }
    Ok(a)
}

fn is_idx(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("-idx3-ubyte") || n.contains("-idx1-ubyte"))
}

/// Loads labelled (or unlabelled) samples: .npy, IDX or ImageFolder.
pub fn load_data(
    x: &Path,
    labels: Option<&Path>,
    prep: &Preprocess,
    limit: usize,
) -> Result<Dataset> {
    let mut d = if is_idx(x) {
        load_idx(x, labels, prep, limit)?
    } else {
        data::load_dataset(x, labels, prep).with_context(|| format!("loading {}", x.display()))?
    };
    if limit > 0 && d.len() > limit {
        let n = limit * d.sample_len();
        d.samples.truncate(n);
        if let Some(l) = &mut d.labels {
            l.truncate(limit);
        }
    }
    if let Some(i) = d.samples.iter().position(|v| !v.is_finite()) {
        bail!(
            "{}: sample {} holds a non-finite value ({}) at index {}",
            x.display(),
            i / d.sample_len().max(1),
            d.samples[i],
            i % d.sample_len().max(1)
        );
    }
    Ok(d)
}

/// IDX images (`N x H x W` bytes, e.g. Fashion-MNIST) scaled to [0, 1],
/// resized to `prep.size` (bilinear) and normalised with `prep.mean/std`.
fn load_idx(x: &Path, labels: Option<&Path>, prep: &Preprocess, limit: usize) -> Result<Dataset> {
    let (dims, bytes) = data::read_idx_gz(x)?;
    let &[n, h, w] = dims.as_slice() else {
        bail!(
            "{}: IDX images must have 3 dimensions (N, H, W), found {dims:?}",
            x.display()
        );
    };
    ensure!(
        prep.channels == 1,
        "{}: IDX images are grayscale; the model takes {} channels",
        x.display(),
        prep.channels
    );
    let (oh, ow) = prep.size.unwrap_or((h, w));
    let (m, s) = (prep.mean[0], prep.std[0]);
    let keep = if limit > 0 { n.min(limit) } else { n };
    let mut samples = Vec::with_capacity(keep * oh * ow);
    for img in bytes.chunks(h * w).take(keep) {
        let f: Vec<f32> = img.iter().map(|&b| f32::from(b) / 255.0).collect();
        let r = if (oh, ow) == (h, w) {
            f
        } else {
            data::resize_bilinear(&f, 1, h, w, oh, ow)
        };
        samples.extend(r.into_iter().map(|v| (v - m) / s));
    }
    let labels = match labels {
        None => None,
        Some(l) if is_idx(l) => {
            let (ld, lb) = data::read_idx_gz(l)?;
            ensure!(
                ld == [n],
                "{}: {ld:?} labels for {n} images in {}",
                l.display(),
                x.display()
            );
            Some(lb.into_iter().take(keep).map(usize::from).collect())
        }
        Some(l) => {
            let v = data::read_npy(l)?
                .labels()
                .with_context(|| format!("labels in {}", l.display()))?;
            ensure!(
                v.len() == n,
                "{}: {} labels for {n} images",
                l.display(),
                v.len()
            );
            Some(v)
        }
    };
    Ok(Dataset {
        shape: (1, oh, ow),
        samples,
        labels,
        class_names: None,
    })
}

/// Default peak learning rates (see LEARN.md, "Learning rates"). Conv
/// weights trained from a base take steps relative to their channel's RMS,
/// so their rate is a relative step size.
fn default_lr(kind: PatchKind, scratch: bool) -> f32 {
    match kind {
        _ if scratch => 5e-3,
        PatchKind::SbLogits => 5e-2,
        PatchKind::Logits => 1e-2,
        PatchKind::DwLogits | PatchKind::SbDwLogits | PatchKind::Full => 3e-2,
    }
}

/// The base graph: imported ONNX, or a fresh architecture for --arch.
fn base_graph(a: &LearnArgs) -> Result<(Graph, bool)> {
    if let Some(p) = &a.base {
        return Ok((crate::pipeline::import(p, None)?, false));
    }
    let spec = a.arch.as_deref().unwrap_or_default();
    let (name, width) = spec.split_once(':').unwrap_or((spec, "1.0"));
    let width: f32 = width
        .parse()
        .with_context(|| format!("--arch {spec}: width '{width}' is not a number"))?;
    let (c, h, w) = a.input_shape.context("--arch needs --input-shape C,H,W")?;
    ensure!(
        h == w,
        "--arch builds square inputs; --input-shape has {h}x{w}"
    );
    ensure!(
        a.patch == "full",
        "--arch trains a network from scratch: use --patch full"
    );
    let params = match name {
        "mobilenet_v2" | "mnv2" => crate::arch::mobilenet_v2(&crate::arch::MobileNetV2Config {
            width,
            resolution: h,
            in_channels: c,
            classes: 10,
            first_stride: a.stem_stride,
            seed: a.seed,
        }),
        "mobilenet_v3_small" | "mnv3" => {
            crate::arch::mobilenet_v3_small(&crate::arch::MobileNetV3Config {
                width,
                resolution: h,
                in_channels: c,
                classes: 10,
                first_stride: a.stem_stride,
                reduced_tail: true,
                seed: a.seed,
            })
        }
        _ => {
            bail!("--arch: unknown architecture '{name}' (mobilenet_v2:W or mobilenet_v3_small:W)")
        }
    };
    let onnx = crate::arch::to_onnx(&params, &crate::arch::ExportStyle::default());
    let g = crate::import::import_onnx(&onnx, &Default::default())
        .map_err(|e| anyhow::anyhow!("building --arch {spec}: {e}"))?;
    Ok((g, true))
}

fn classes_of(d: &Dataset) -> usize {
    d.labels
        .as_ref()
        .and_then(|l| l.iter().max())
        .map_or(0, |m| m + 1)
}

/// Channels-last batches of the first images, for [`Net::init_bn_from_data`].
fn init_batches(d: &Dataset, n: usize) -> Vec<(Vec<f32>, usize)> {
    let idx: Vec<usize> = (0..d.len().min(n)).collect();
    idx.chunks(128)
        .map(|c| (train::gather(d, c, Augment::default(), None), c.len()))
        .collect()
}

impl LearnArgs {
    pub fn run(self) -> Result<()> {
        let kind = PatchKind::parse(&self.patch)?;
        let (graph, scratch) = base_graph(&self)?;
        let s = graph.shape(graph.input);
        let shape = (s.c, s.h, s.w);
        let mut prep = Preprocess {
            size: self.size.or(Some((s.h, s.w))),
            channels: s.c,
            ..Preprocess::default()
        };
        if !self.mean.is_empty() {
            prep.mean = self.mean.clone();
        }
        if !self.std.is_empty() {
            prep.std = self.std.clone();
        }
        let cfg = TrainConfig {
            epochs: self.epochs,
            lr: self.lr.unwrap_or(default_lr(kind, scratch)),
            batch: self.batch,
            seed: self.seed,
            optimizer: if self.optimizer == "sgd" {
                Optimizer::Sgd
            } else {
                Optimizer::Adam
            },
            weight_decay: self.weight_decay,
            augment: self
                .augment
                .as_deref()
                .map(parse_augment)
                .transpose()?
                .unwrap_or_default(),
            bn_estimate: self.bn_samples,
            progress: !self.json,
        };
        // (name, train, val)
        let mut sets: Vec<(String, Dataset, Option<Dataset>)> = Vec::new();
        let multi = !self.tasks.is_empty();
        if multi {
            for (name, x, l) in &self.tasks {
                if sets.iter().any(|(n, _, _)| n == name) {
                    bail!("task '{name}' is given twice");
                }
                let tr = load_data(x, l.as_deref(), &prep, self.limit)?;
                let val = self
                    .task_vals
                    .iter()
                    .find(|(n, _, _)| n == name)
                    .map(|(_, x, l)| load_data(x, l.as_deref(), &prep, self.val_limit))
                    .transpose()?;
                sets.push((name.clone(), tr, val));
            }
            for (n, _, _) in &self.task_vals {
                ensure!(
                    sets.iter().any(|(m, _, _)| m == n),
                    "--task-val names '{n}', which is not a --task"
                );
            }
        } else {
            let x = self.train.as_ref().context("--train is required")?;
            let tr = load_data(x, self.train_labels.as_deref(), &prep, self.limit)?;
            let val = self
                .val
                .as_ref()
                .map(|v| load_data(v, self.val_labels.as_deref(), &prep, self.val_limit))
                .transpose()?;
            let name = self
                .out
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("task")
                .to_string();
            sets.push((name, tr, val));
        }
        for (name, tr, val) in &sets {
            ensure!(
                tr.shape == shape,
                "task '{name}': training samples are {:?} (c,h,w) but the model takes {shape:?}",
                tr.shape
            );
            ensure!(
                tr.labels.is_some(),
                "task '{name}': training data needs labels (--train-labels, DATA,LABELS, or an ImageFolder)"
            );
            if let Some(v) = val {
                ensure!(
                    v.shape == shape && v.labels.is_some(),
                    "task '{name}': validation data must be labelled samples of shape {shape:?}"
                );
            }
        }
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        ensure!(threads >= 1, "--threads must be at least 1");
        let started = Instant::now();
        let mut runs = Vec::new();
        for (name, tr, val) in &sets {
            let init = if scratch {
                BnInit::Fresh
            } else {
                BnInit::PreserveFunction
            };
            let mut net = Net::from_graph(&graph, kind, init, threads)?;
            if !scratch && net.has_bn() {
                net.init_bn_from_data(&init_batches(tr, 1024));
            }
            let classes = classes_of(tr).max(val.as_ref().map_or(0, classes_of));
            if scratch || self.new_head || classes != net.classes() {
                net.new_head(classes.max(2), self.seed);
            }
            if multi && self.shared == "train" {
                let shared_lr = self.shared_lr.unwrap_or(cfg.lr / 25.0);
                ensure!(
                    shared_lr.is_finite() && shared_lr > 0.0,
                    "--shared-lr must be a positive number"
                );
                net.train_shared(shared_lr / cfg.lr);
            }
            runs.push(TaskRun::new(name.clone(), net, tr, val.as_ref()));
        }
        let trainable = runs[0].net.trainable_count();
        let stats = train::train(&mut runs, &cfg, multi && self.shared == "train")?;
        let written = self.write(&runs, multi)?;
        let exported = match &self.export {
            Some(dir) => self.export_into(dir, &runs, multi)?,
            None => vec![],
        };
        let results: Vec<_> = runs
            .iter()
            .map(|r| {
                let last = r.history.last();
                json!({
                    "task": r.name,
                    "classes": r.net.classes(),
                    "train_images": r.train.len(),
                    "val_top1": last.and_then(|e| e.val_top1),
                    "history": r.history.iter().map(|e| json!({
                        "epoch": e.epoch, "loss": e.loss, "train_top1": e.train_top1, "val_top1": e.val_top1
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let mut j = json!({
            "patch": kind.name(),
            "epochs": cfg.epochs,
            "batch": cfg.batch,
            "lr": cfg.lr,
            "threads": threads,
            "seed": cfg.seed,
            "train_images": runs.iter().map(|r| r.train.len()).sum::<usize>(),
            "images_per_s": stats.images_per_s,
            "step_ms_median": stats.step_ms_median,
            "train_seconds": stats.train_seconds,
            "seconds": started.elapsed().as_secs_f64(),
            "trainable_params": trainable,
            "val_top1": runs[0].history.last().and_then(|e| e.val_top1),
            "out": written.iter().map(|p| p.to_string_lossy().to_string()).collect::<Vec<_>>(),
        });
        if !exported.is_empty() {
            j["patches"] = json!(exported);
        }
        if multi {
            j["shared"] = json!(self.shared);
            j["tasks"] = json!(results);
        } else {
            j["history"] = results[0]["history"].clone();
        }
        if self.json {
            println!("{j}");
        } else {
            for r in &runs {
                let v = r
                    .history
                    .last()
                    .and_then(|e| e.val_top1)
                    .map_or("no validation data".to_string(), |v| {
                        format!("val top-1 {:.2} %", 100.0 * v)
                    });
                println!("{}: {} ({} trainable parameters)", r.name, v, trainable);
            }
            println!(
                "{:.0} training images/s over {} steps; wrote {}",
                stats.images_per_s,
                stats.steps,
                written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(())
    }

    /// `--export DIR`: the learned tasks as patches for DIR's backbone.
    fn export_into(
        &self,
        dir: &Path,
        runs: &[TaskRun<'_>],
        multi: bool,
    ) -> Result<Vec<serde_json::Value>> {
        ensure!(
            !(multi && self.shared == "train"),
            "--export adds tasks to an existing backbone; with --shared train the shared network changed, so export OUT/base.onnx and the tasks with `graftnet export` (devices re-flash the backbone)"
        );
        let mpath = dir.join("manifest.json");
        let m: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&mpath)
                .with_context(|| format!("--export: reading {}", mpath.display()))?,
        )
        .with_context(|| format!("--export: {} is not valid JSON", mpath.display()))?;
        let base_entry = m["tasks"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "base"));
        let (Some(base), Some(calib)) = (
            base_entry.and_then(|t| t["source"].as_str()),
            m["calib"].as_str(),
        ) else {
            bail!(
                "--export: {} does not record the base model and calibration data (written by an older graftnet); run `graftnet export --backbone {}` with them instead",
                mpath.display(),
                dir.join("backbone.gnb").display()
            );
        };
        let floats = |v: &serde_json::Value| -> Vec<f32> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_f64())
                        .map(|x| x as f32)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut opts = crate::pipeline::ExportOptions {
            base: PathBuf::from(base),
            calib: PathBuf::from(calib),
            out: dir.to_path_buf(),
            calib_limit: m["calib_limit"].as_u64().unwrap_or(0) as usize,
            bias_correction: match m["bias_correction"].as_u64().unwrap_or(0) {
                0 => None,
                n => Some(crate::bias_correction::BiasCorrection {
                    samples: n as usize,
                }),
            },
            backbone: Some(dir.join("backbone.gnb")),
            progress: !self.json,
            ..Default::default()
        };
        let (mean, std) = (
            floats(&m["preprocess"]["mean"]),
            floats(&m["preprocess"]["std"]),
        );
        if !mean.is_empty() && !std.is_empty() {
            opts.prep.mean = mean;
            opts.prep.std = std;
        }
        let base_labels: Vec<String> = base_entry
            .and_then(|t| t["labels"].as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if !base_labels.is_empty() {
            opts.labels.insert("base".into(), base_labels);
        }
        for (i, r) in runs.iter().enumerate() {
            let name = if multi {
                r.name.clone()
            } else {
                self.name.clone().unwrap_or_else(|| r.name.clone())
            };
            let onnx = if multi {
                self.out.join(format!("{}.onnx", r.name))
            } else {
                self.out.clone()
            };
            let calib = match (&self.calib, multi) {
                (Some(c), false) => c.clone(),
                _ => {
                    let src = if multi {
                        self.tasks[i].1.clone()
                    } else {
                        self.train.clone().unwrap_or_default()
                    };
                    ensure!(
                        !is_idx(&src),
                        "--export: task '{name}' trains on IDX data; give --calib (a .npy or ImageFolder) for its calibration"
                    );
                    src
                }
            };
            if let Some(names) = &r.train.class_names {
                opts.labels.insert(name.clone(), names.clone());
            }
            opts.calib_tasks.insert(name.clone(), calib);
            opts.tasks.push((name, onnx));
        }
        let rep = crate::pipeline::export(&opts)?;
        Ok(rep
            .tasks
            .iter()
            .filter(|t| t.patch.is_some())
            .map(|t| {
                json!({
                    "task": t.name,
                    "patch": t.patch.as_ref().map(|p| p.to_string_lossy().to_string()),
                    "patch_bytes": t.patch_bytes,
                })
            })
            .collect())
    }

    fn write(&self, runs: &[TaskRun<'_>], multi: bool) -> Result<Vec<PathBuf>> {
        let producer = format!("graftnet-learn {}", env!("CARGO_PKG_VERSION"));
        let mut out = Vec::new();
        if !multi {
            if let Some(d) = self.out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            }
            std::fs::write(&self.out, to_onnx(&runs[0].net, &producer))
                .with_context(|| format!("writing {}", self.out.display()))?;
            out.push(self.out.clone());
            return Ok(out);
        }
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("creating {}", self.out.display()))?;
        if self.shared == "train" {
            let p = self.out.join("base.onnx");
            std::fs::write(&p, to_onnx(&runs[0].net, &producer))
                .with_context(|| format!("writing {}", p.display()))?;
            out.push(p);
        }
        for r in runs {
            let p = self.out.join(format!("{}.onnx", r.name));
            std::fs::write(&p, to_onnx(&r.net, &producer))
                .with_context(|| format!("writing {}", p.display()))?;
            out.push(p);
        }
        Ok(out)
    }
}
