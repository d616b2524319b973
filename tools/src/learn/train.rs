//! The training loop: shuffled mini-batches, optional light augmentation,
//! softmax cross-entropy, Adam or SGD with momentum under a cosine learning
//! rate (after a linear warm-up, see [`lr_at`]), validation after every epoch, and an
//! exact re-estimate of the batch-norm statistics at the end.
//!
//! Determinism: shuffles, augmentations and new weights come from
//! [`crate::rng::Rng`] streams named by seed, epoch and purpose; kernels
//! split work by thread count only (see [`super::par`]). The same seed and
//! thread count give the same model, bit for bit.

use std::time::Instant;

use anyhow::{ensure, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::kernels::softmax_xent;
use super::net::{nchw_to_nhwc, Mode, Net, Param};
use crate::data::Dataset;
use crate::host::argmax;
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Optimizer {
    /// Adam (beta1 0.9, beta2 0.999, eps 1e-8).
    Adam,
    /// SGD with momentum 0.9 (PyTorch's form: `v = 0.9 v + g; w -= lr v`).
    Sgd,
}

/// Light augmentation of training images (off by default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Random translation by up to this many pixels (zero padding, i.e. the
    /// value 0 of the preprocessed input), like a padded random crop.
    pub crop: usize,
    /// Random horizontal flip.
    pub flip: bool,
}

#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub lr: f32,
    pub batch: usize,
    pub seed: u64,
    pub optimizer: Optimizer,
    pub weight_decay: f32,
    pub augment: Augment,
    /// Images used to re-estimate batch-norm statistics at the end (0 = skip).
    pub bn_estimate: usize,
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 2,
            lr: 1e-2,
            batch: 32,
            seed: 0,
            optimizer: Optimizer::Adam,
            weight_decay: 0.0,
            augment: Augment::default(),
            bn_estimate: 4096,
            progress: false,
        }
    }
}

/// One epoch's figures.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochStats {
    pub epoch: usize,
    pub loss: f64,
    pub train_top1: f64,
    pub val_top1: Option<f64>,
}

/// Learning rate at `step` of `total`: linear warm-up from `base / 25`
/// over the first 10 % of steps (at least one), then cosine decay to zero
/// (close to PyTorch's one-cycle schedule, which the shipped task models
/// were trained with).
pub fn lr_at(base: f32, step: usize, total: usize) -> f32 {
    let warm = (total / 10).max(1);
    if step < warm {
        let f = step as f32 / warm as f32;
        return base * (1.0 / 25.0 + f * (1.0 - 1.0 / 25.0));
    }
    let t = (step - warm) as f64 / (total - warm).max(1) as f64;
    (f64::from(base) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())) as f32
}

/// One optimizer step over `params`; `t` counts steps from 1.
pub fn step(params: Vec<&mut Param>, opt: Optimizer, lr: f32, wd: f32, t: usize) {
    for p in params {
        let lr_p = lr * p.lr_scale;
        let row = if p.row_scale.is_empty() {
            usize::MAX
        } else {
            p.v.len() / p.row_scale.len()
        };
        for i in 0..p.v.len() {
            let lr = if row == usize::MAX {
                lr_p
            } else {
                lr_p * p.row_scale[i / row]
            };
            let g = p.g[i] + wd * p.v[i];
            match opt {
                Optimizer::Adam => {
                    let (b1, b2) = (0.9f32, 0.999f32);
                    p.m[i] = b1 * p.m[i] + (1.0 - b1) * g;
                    p.s[i] = b2 * p.s[i] + (1.0 - b2) * g * g;
                    let mh = p.m[i] / (1.0 - b1.powi(t as i32));
                    let sh = p.s[i] / (1.0 - b2.powi(t as i32));
                    p.v[i] -= lr * mh / (sh.sqrt() + 1e-8);
                }
                Optimizer::Sgd => {
                    p.m[i] = 0.9 * p.m[i] + g;
                    p.v[i] -= lr * p.m[i];
                }
            }
        }
        p.g.fill(0.0);
    }
}

/// Samples `idx` of `data` as a channels-last batch, augmented with `rng`.
pub fn gather(data: &Dataset, idx: &[usize], aug: Augment, rng: Option<&mut Rng>) -> Vec<f32> {
    let (c, h, w) = data.shape;
    let mut nchw = Vec::with_capacity(idx.len() * c * h * w);
    for &i in idx {
        nchw.extend_from_slice(data.sample(i));
    }
    if let Some(rng) = rng {
        if aug.crop > 0 || aug.flip {
            let p = aug.crop as i64;
            for img in nchw.chunks_mut(c * h * w) {
                let dy = if p > 0 {
                    (rng.next_u64() % (2 * p as u64 + 1)) as i64 - p
                } else {
                    0
                };
                let dx = if p > 0 {
                    (rng.next_u64() % (2 * p as u64 + 1)) as i64 - p
                } else {
                    0
                };
                let flip = aug.flip && rng.next_u64() & 1 == 1;
                let src = img.to_vec();
                for ch in 0..c {
                    for y in 0..h as i64 {
                        for x in 0..w as i64 {
                            let sx = if flip { w as i64 - 1 - x } else { x } + dx;
                            let sy = y + dy;
                            let v = if sy >= 0 && sy < h as i64 && sx >= 0 && sx < w as i64 {
                                src[ch * h * w + sy as usize * w + sx as usize]
                            } else {
                                0.0
                            };
                            img[ch * h * w + y as usize * w + x as usize] = v;
                        }
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    nchw_to_nhwc(&nchw, idx.len(), data.shape, &mut out);
    out
}

/// Top-1 accuracy (fraction) of `net` in inference mode on labelled data.
pub fn evaluate(net: &mut Net, data: &Dataset) -> Result<f64> {
    let labels = data
        .labels
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("validation data has no labels"))?;
    let k = net.classes();
    let mut correct = 0usize;
    let idx: Vec<usize> = (0..data.len()).collect();
    for chunk in idx.chunks(256) {
        let x = gather(data, chunk, Augment::default(), None);
        let logits = net.forward(x, chunk.len(), Mode::Eval);
        for (row, &i) in logits.chunks(k).zip(chunk) {
            if argmax(row) == labels[i] {
                correct += 1;
            }
        }
    }
    Ok(correct as f64 / data.len().max(1) as f64)
}

/// Re-estimates batch-norm statistics over the first `n` training images
/// (batch statistics averaged, in batches of `batch`).
pub fn estimate_bn(net: &mut Net, data: &Dataset, n: usize, batch: usize) {
    let n = n.min(data.len());
    if n == 0 {
        return;
    }
    net.start_bn_estimate();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch.max(2)) {
        if chunk.len() < 2 {
            continue;
        }
        let x = gather(data, chunk, Augment::default(), None);
        net.forward(x, chunk.len(), Mode::Estimate);
    }
    net.finish_bn_estimate();
}

/// One task's data and the state of its training run.
pub struct TaskRun<'a> {
    pub name: String,
    pub net: Net,
    pub train: &'a Dataset,
    pub val: Option<&'a Dataset>,
    pub history: Vec<EpochStats>,
    order: Vec<usize>,
    loss_sum: f64,
    correct: usize,
    seen: usize,
}

impl<'a> TaskRun<'a> {
    pub fn new(name: String, net: Net, train: &'a Dataset, val: Option<&'a Dataset>) -> Self {
        TaskRun {
            name,
            net,
            train,
            val,
            history: vec![],
            order: vec![],
            loss_sum: 0.0,
            correct: 0,
            seen: 0,
        }
    }
}

/// What [`train`] measured.
#[derive(Clone, Debug)]
pub struct TrainStats {
    /// Training images processed per second (forward + backward + update;
    /// validation and batch-norm re-estimation excluded), all tasks.
    pub images_per_s: f64,
    pub train_seconds: f64,
    pub steps: usize,
    /// Median wall time of one step (all tasks' batches), milliseconds.
    pub step_ms_median: f64,
}

/// Trains one or more tasks. With several tasks, every step takes one batch
/// of each task in turn (interleaved). With `shared`, the weights outside
/// the patches ([`Net::shared_params_mut`]) are learned by all tasks
/// together: after each task's update, the shared values and optimizer
/// state are copied into the other tasks' nets.
pub fn train(tasks: &mut [TaskRun<'_>], cfg: &TrainConfig, shared: bool) -> Result<TrainStats> {
    ensure!(!tasks.is_empty(), "no task to train");
    ensure!(
        cfg.batch >= 2,
        "--batch must be at least 2 (batch-norm needs batch statistics)"
    );
    ensure!(cfg.epochs >= 1, "--epochs must be at least 1");
    ensure!(
        cfg.lr.is_finite() && cfg.lr > 0.0,
        "--lr must be a positive number"
    );
    for t in tasks.iter() {
        ensure!(
            t.train.len() >= cfg.batch,
            "task '{}': {} training images, fewer than one batch of {}",
            t.name,
            t.train.len(),
            cfg.batch
        );
        ensure!(
            t.train.labels.is_some(),
            "task '{}': training data has no labels",
            t.name
        );
    }
    let steps_per_epoch = tasks
        .iter()
        .map(|t| t.train.len() / cfg.batch)
        .max()
        .unwrap_or(1);
    let total = steps_per_epoch * cfg.epochs;
    let style = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}, eta {eta})",
    )
    .expect("static template")
    .progress_chars("=> ");
    let mut step_no = 0usize;
    let mut images = 0usize;
    let mut seconds = 0f64;
    let mut step_ms: Vec<f64> = Vec::with_capacity(total);
    for epoch in 0..cfg.epochs {
        let pb = if cfg.progress {
            let p = ProgressBar::new(steps_per_epoch as u64);
            p.set_style(style.clone());
            p.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
            Some(p)
        } else {
            None
        };
        for t in tasks.iter_mut() {
            t.order = shuffled(t.train.len(), cfg.seed, &t.name, epoch);
            t.loss_sum = 0.0;
            t.correct = 0;
            t.seen = 0;
        }
        let start = Instant::now();
        for s in 0..steps_per_epoch {
            let step_start = Instant::now();
            let lr = lr_at(cfg.lr, step_no, total);
            step_no += 1;
            for ti in 0..tasks.len() {
                let t = &mut tasks[ti];
                let per = t.train.len() / cfg.batch;
                let b = s % per;
                let idx = t.order[b * cfg.batch..(b + 1) * cfg.batch].to_vec();
                let mut rng =
                    Rng::for_name(cfg.seed, &format!("learn.augment.{}.{epoch}.{s}", t.name));
                let x = gather(t.train, &idx, cfg.augment, Some(&mut rng));
                let labels: Vec<usize> = {
                    let l = t.train.labels.as_ref().expect("checked above");
                    idx.iter().map(|&i| l[i]).collect()
                };
                let k = t.net.classes();
                if let Some(&bad) = labels.iter().find(|&&l| l >= k) {
                    anyhow::bail!(
                        "task '{}': label {bad} but the classifier has {k} classes",
                        t.name
                    );
                }
                let logits = t.net.forward(x, idx.len(), Mode::Train).to_vec();
                let mut d = vec![0f32; logits.len()];
                let (loss, correct) = softmax_xent(&logits, k, &labels, &mut d);
                ensure!(
                    loss.is_finite(),
                    "task '{}': the loss became {loss} at epoch {} step {s}; lower --lr",
                    t.name,
                    epoch + 1
                );
                t.net.backward(d);
                step(
                    t.net.params_mut(),
                    cfg.optimizer,
                    lr,
                    cfg.weight_decay,
                    step_no,
                );
                t.loss_sum += loss * idx.len() as f64;
                t.correct += correct;
                t.seen += idx.len();
                images += idx.len();
                if shared && tasks.len() > 1 {
                    sync_shared(tasks, ti);
                }
            }
            step_ms.push(step_start.elapsed().as_secs_f64() * 1e3);
            if let Some(p) = &pb {
                let t = &tasks[0];
                p.set_message(format!(
                    "loss {:.3} train {:.1} %",
                    t.loss_sum / t.seen.max(1) as f64,
                    100.0 * t.correct as f64 / t.seen.max(1) as f64
                ));
                p.inc(1);
            }
        }
        seconds += start.elapsed().as_secs_f64();
        let mut line = Vec::new();
        let multi = tasks.len() > 1;
        for t in tasks.iter_mut() {
            let val = match t.val {
                Some(v) => Some(evaluate(&mut t.net, v)?),
                None => None,
            };
            let e = EpochStats {
                epoch: epoch + 1,
                loss: t.loss_sum / t.seen.max(1) as f64,
                train_top1: t.correct as f64 / t.seen.max(1) as f64,
                val_top1: val,
            };
            line.push(format!(
                "{}loss {:.4}, train {:.2} %{}",
                if multi {
                    format!("{}: ", t.name)
                } else {
                    String::new()
                },
                e.loss,
                100.0 * e.train_top1,
                val.map_or(String::new(), |v| format!(", val {:.2} %", 100.0 * v))
            ));
            t.history.push(e);
        }
        let msg = format!(
            "epoch {}/{}: {} ({:.0} images/s)",
            epoch + 1,
            cfg.epochs,
            line.join("; "),
            images as f64 / seconds.max(1e-9)
        );
        if let Some(p) = pb {
            p.finish_and_clear();
            eprintln!("{msg}");
        }
    }
    for t in tasks.iter_mut() {
        if t.net.has_bn() && cfg.bn_estimate > 0 {
            estimate_bn(&mut t.net, t.train, cfg.bn_estimate, cfg.batch.max(64));
            if let (Some(v), Some(last)) = (t.val, t.history.last_mut()) {
                last.val_top1 = Some(evaluate(&mut t.net, v)?);
            }
        }
    }
    step_ms.sort_by(f64::total_cmp);
    Ok(TrainStats {
        images_per_s: images as f64 / seconds.max(1e-9),
        train_seconds: seconds,
        steps: step_no,
        step_ms_median: step_ms.get(step_ms.len() / 2).copied().unwrap_or(0.0),
    })
}

/// Copies the shared weights (and their optimizer state) of task `from`
/// into every other task.
fn sync_shared(tasks: &mut [TaskRun<'_>], from: usize) {
    let src: Vec<Param> = tasks[from]
        .net
        .shared_params_mut()
        .into_iter()
        .map(|p| p.clone())
        .collect();
    for (i, t) in tasks.iter_mut().enumerate() {
        if i == from {
            continue;
        }
        for (dst, s) in t.net.shared_params_mut().into_iter().zip(&src) {
            dst.v.copy_from_slice(&s.v);
            dst.m.copy_from_slice(&s.m);
            dst.s.copy_from_slice(&s.s);
        }
    }
}

/// A permutation of `0..n` for (seed, task, epoch).
fn shuffled(n: usize, seed: u64, task: &str, epoch: usize) -> Vec<usize> {
    let mut r = Rng::for_name(seed, &format!("learn.shuffle.{task}.{epoch}"));
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (r.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}
