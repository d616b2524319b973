//! The float forward pass over [`NetParams`] that sets weight scales and
//! batch-norm statistics from data ([`run_float`] and its [`Mode`]s).

use crate::rng::{random_inputs, Rng};

use super::params::*;

/// Activations of one image, `[C][H][W]`.
struct Fmap {
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
}

fn second_moment(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / v.len().max(1) as f64
}

/// Direct convolution without bias (zero padding `(k − 1) / 2`).
fn conv2d(x: &Fmap, c: &ConvLayer) -> Fmap {
    let (k, s, pad) = (c.kernel, c.stride, c.padding());
    let oh = (x.h + 2 * pad - k) / s + 1;
    let ow = (x.w + 2 * pad - k) / s + 1;
    let cin_g = c.in_channels / c.groups;
    let cout_g = c.out_channels / c.groups;
    assert_eq!(x.c, c.in_channels, "{}: input channels", c.module);
    let mut y = vec![0.0f32; c.out_channels * oh * ow];
    for o in 0..c.out_channels {
        let g = o / cout_g;
        let yo = &mut y[o * oh * ow..(o + 1) * oh * ow];
        for ci in 0..cin_g {
            let xc = &x.data[(g * cin_g + ci) * x.h * x.w..][..x.h * x.w];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = c.weight[((o * cin_g + ci) * k + ky) * k + kx];
                    // Output columns whose input column ox·s + kx − pad is inside.
                    let lo = (pad.saturating_sub(kx)).div_ceil(s);
                    let hi = (x.w + pad).saturating_sub(kx).div_ceil(s).min(ow);
                    for oy in 0..oh {
                        let iy = oy * s + ky;
                        if iy < pad || iy - pad >= x.h {
                            continue;
                        }
                        let row = &xc[(iy - pad) * x.w..][..x.w];
                        let yrow = &mut yo[oy * ow..][..ow];
                        for ox in lo..hi {
                            yrow[ox] += wv * row[ox * s + kx - pad];
                        }
                    }
                }
            }
        }
    }
    Fmap {
        c: c.out_channels,
        h: oh,
        w: ow,
        data: y,
    }
}

fn activate(act: Activation, v: &mut [f32]) {
    for x in v {
        *x = match act {
            Activation::None => *x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::HardSwish => *x * (*x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::HardSigmoid => (*x / 6.0 + 0.5).clamp(0.0, 1.0),
        };
    }
}

/// What [`run_float`] does besides computing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only compute.
    Eval,
    /// Data-dependent init of a new net, layer by layer (in the spirit of
    /// LSUV): each batch-normed conv's weights get one scale per layer for
    /// unit variance (averaged over channels) and its batch-norm means are
    /// shifted by the measured channel means; convs without batch norm and
    /// linear layers get one scale per layer for a unit second moment.
    Init,
    /// An S/B task (the seed): new gamma and beta for every batch norm,
    /// statistics re-estimated on the batch, as after real S/B fine-tuning.
    /// Weights are not touched.
    /// Only blocks from the second number on.
    TaskStats(u64, usize),
}

/// Per-channel mean and variance of a batch of maps.
fn channel_stats(ys: &[Fmap]) -> Vec<(f64, f64)> {
    let plane = ys[0].h * ys[0].w;
    let n = (plane * ys.len()) as f64;
    (0..ys[0].c)
        .map(|o| {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for y in ys {
                for &v in &y.data[o * plane..(o + 1) * plane] {
                    s1 += f64::from(v);
                    s2 += f64::from(v) * f64::from(v);
                }
            }
            let mean = s1 / n;
            (mean, (s2 / n - mean * mean).max(0.0))
        })
        .collect()
}

/// The S/B change of one batch norm, given the measured statistics of its
/// input under the task (see [`derive_task`]).
fn task_batch_norm(bn: &mut BatchNorm, stats: &[(f64, f64)], seed: u64) {
    let mut r = Rng::for_name(seed, &format!("task.sb.{}", bn.module));
    // The base's variances are relative to a layer average of 1.
    let layer_var = stats.iter().map(|s| s.1).sum::<f64>() / stats.len() as f64;
    let layer_var = if layer_var > 1e-12 { layer_var } else { 1.0 };
    for (i, &(mean, var)) in stats.iter().enumerate() {
        bn.gamma[i] *= r.uniform(0.55, 1.4);
        if r.unit() < 0.05 {
            bn.gamma[i] = -bn.gamma[i];
        }
        bn.beta[i] += r.normal(0.0, 0.1);
        bn.mean[i] = (mean + f64::from(r.normal(0.0, 0.1)) * layer_var.sqrt()) as f32;
        bn.var[i] = (f64::from(bn.var[i]) * layer_var * f64::from(r.uniform(0.7, 1.4))) as f32;
        if r.unit() < 0.02 {
            // Constant on the task's data: running variance exactly 0. The
            // fused scale gamma/sqrt(eps) stays moderate on this data.
            bn.var[i] = 0.0;
            let g =
                f64::from(bn.eps).sqrt() * f64::from(r.uniform(0.5, 2.0)) / var.max(1e-12).sqrt();
            bn.gamma[i] = (g as f32).copysign(bn.gamma[i]);
        }
    }
}

/// Runs `p` on a batch of images (each `[C][H][W]`); returns their logits.
/// `mode` may change the parameters on the way (see [`Mode`]).
pub fn run_float(p: &mut NetParams, inputs: &[Vec<f32>], mode: Mode) -> Vec<Vec<f32>> {
    fn scale(v: &mut [f32], f: f64) {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) * f) as f32);
    }
    fn conv(c: &mut ConvLayer, xs: &[Fmap], mode: Mode) -> Vec<Fmap> {
        let mut ys: Vec<Fmap> = xs.iter().map(|x| conv2d(x, c)).collect();
        let plane = ys[0].h * ys[0].w;
        match (mode, &mut c.bn) {
            (Mode::Init, Some(_)) => {
                let stats = channel_stats(&ys);
                // One scale per layer (per-channel scales from a few samples
                // overfit on 1×1 maps).
                let var = stats.iter().map(|s| s.1).sum::<f64>() / c.out_channels as f64;
                let f = if var > 1e-12 { 1.0 / var.sqrt() } else { 1.0 };
                scale(&mut c.weight, f);
                ys.iter_mut().for_each(|y| scale(&mut y.data, f));
                let bn = c.bn.as_mut().expect("matched Some");
                for (m, (mean, _)) in bn.mean.iter_mut().zip(&stats) {
                    *m += (mean * f) as f32;
                }
            }
            (Mode::Init, None) => {
                let m2 = ys.iter().map(|y| second_moment(&y.data)).sum::<f64>() / ys.len() as f64;
                let f = 1.0 / m2.max(1e-12).sqrt();
                scale(&mut c.weight, f);
                ys.iter_mut().for_each(|y| scale(&mut y.data, f));
            }
            (Mode::TaskStats(seed, _), Some(bn)) => task_batch_norm(bn, &channel_stats(&ys), seed),
            _ => {}
        }
        for y in &mut ys {
            for o in 0..y.c {
                let v = &mut y.data[o * plane..(o + 1) * plane];
                let b = c.bias.as_ref().map_or(0.0, |b| b[o]);
                let (s, t) = match &c.bn {
                    Some(bn) => {
                        let s = bn.gamma[o] / (bn.var[o] + bn.eps).sqrt();
                        (s, bn.beta[o] - bn.mean[o] * s)
                    }
                    None => (1.0, 0.0),
                };
                for x in v.iter_mut() {
                    *x = (*x + b) * s + t;
                }
                activate(c.act, v);
            }
        }
        ys
    }
    fn pool(x: &Fmap) -> Fmap {
        let plane = x.h * x.w;
        let data = (0..x.c)
            .map(|c| x.data[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32)
            .collect();
        Fmap {
            c: x.c,
            h: 1,
            w: 1,
            data,
        }
    }
    fn linear(l: &mut Linear, xs: &[Vec<f32>], mode: Mode) -> Vec<Vec<f32>> {
        let mat = |l: &Linear, x: &[f32]| -> Vec<f32> {
            (0..l.out_features)
                .map(|o| {
                    let row = &l.weight[o * l.in_features..(o + 1) * l.in_features];
                    row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>()
                })
                .collect()
        };
        let mut ys: Vec<Vec<f32>> = xs.iter().map(|x| mat(l, x)).collect();
        if mode == Mode::Init {
            let m2 = ys.iter().map(|y| second_moment(y)).sum::<f64>() / ys.len() as f64;
            let f = (1.0 / m2.max(1e-12).sqrt()) as f32;
            l.weight.iter_mut().for_each(|w| *w *= f);
            ys = xs.iter().map(|x| mat(l, x)).collect();
        }
        for y in &mut ys {
            y.iter_mut().zip(&l.bias).for_each(|(v, b)| *v += b);
        }
        ys
    }

    let [_, c, h, w] = p.input_shape();
    let mut xs: Vec<Fmap> = inputs
        .iter()
        .map(|input| {
            assert_eq!(input.len(), c * h * w, "one image is C·H·W values");
            Fmap {
                c,
                h,
                w,
                data: input.clone(),
            }
        })
        .collect();
    let outer = mode;
    for (bi, block) in p.blocks.iter_mut().enumerate() {
        let mode = match outer {
            Mode::TaskStats(_, first) if bi < first => Mode::Eval,
            m => m,
        };
        let skip: Option<Vec<Vec<f32>>> = block
            .residual
            .then(|| xs.iter().map(|x| x.data.clone()).collect());
        for layer in &mut block.layers {
            xs = match layer {
                Layer::Conv(cv) => conv(cv, &xs, mode),
                Layer::SqueezeExcite(se) => {
                    let pooled: Vec<Fmap> = xs.iter().map(pool).collect();
                    let s = conv(&mut se.fc1, &pooled, mode);
                    let gates = conv(&mut se.fc2, &s, mode);
                    for (x, gate) in xs.iter_mut().zip(&gates) {
                        let plane = x.h * x.w;
                        for (ch, g) in gate.data.iter().enumerate() {
                            x.data[ch * plane..(ch + 1) * plane]
                                .iter_mut()
                                .for_each(|v| *v *= g);
                        }
                    }
                    xs
                }
            };
        }
        if let Some(skip) = skip {
            for (x, s) in xs.iter_mut().zip(&skip) {
                x.data.iter_mut().zip(s).for_each(|(v, s)| *v += s);
            }
        }
    }
    let mut vs: Vec<Vec<f32>> = xs.iter().map(|x| pool(x).data).collect();
    if let Some(hd) = &mut p.hidden {
        vs = linear(&mut hd.linear, &vs, mode);
        vs.iter_mut().for_each(|v| activate(hd.act, v));
    }
    linear(&mut p.classifier, &vs, mode)
}

/// A batch of random images for data-dependent steps: enough values per
/// channel on the last (1×1 or 2×2) maps of a 32×32 net, two images at 96+.
pub fn calibration_batch(p: &NetParams, seed: u64) -> Vec<Vec<f32>> {
    let [_, c, h, w] = p.input_shape();
    let n = (16384 / (h * w).max(1)).clamp(2, 16) as u64;
    (0..n)
        .map(|i| random_inputs(1, c, h, w, seed ^ 0xca1b ^ (i << 32)))
        .collect()
}

/// Sets weight scales and batch-norm means from data ([`Mode::Init`]):
/// with batch-norm statistics that do not match the activations, nothing
/// else keeps a 50-layer net's activations in range.
pub fn calibrate(p: &mut NetParams, seed: u64) {
    let xs = calibration_batch(p, seed);
    run_float(p, &xs, Mode::Init);
}
