//! Per-channel gains on a conv -> function -> depthwise chain (see
//! [`channel_gains`]): the one place where channels of a tensor get
//! different int8 steps.

use graftnet::format::OpKind;

use super::{tensor_quant, Lowered, Ranges};

/// Per-channel gains found for one conv -> function -> depthwise chain.
pub(super) struct GainChain {
    /// conv writing the function's input
    pub(super) producer: usize,
    /// the function (a lookup-table op)
    pub(super) lut: usize,
    /// depthwise convs reading the function's output
    pub(super) readers: Vec<usize>,
    /// gain of every channel, in the function's input and output alike
    pub(super) g: Vec<f32>,
    /// new quantization (scale, zp) of the function's input and output
    pub(super) quant: [(f32, i8); 2],
}

/// Negative-range widenings tried for each tensor of a chain.
const WIDEN: [f64; 9] = [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0];

/// Per-channel gains: int8 activations are per tensor, so a channel whose
/// values span a small part of its tensor's range gets few steps, and a
/// depthwise conv with large (batch-norm-folded) weights on that channel
/// amplifies the rounding. Where a conv's output `t1` is read only by an
/// elementwise function (a lookup table) whose output `t2` is read only by
/// depthwise convs, every channel can be stored scaled, exactly:
/// - the conv's weights and bias of channel `c` are multiplied by `g[c]`,
/// - the function of channel `c` becomes `x -> g[c] · f(x / g[c])` (one
///   table per distinct gain, `FORMAT.md` "lut"),
/// - the depthwise weights of channel `c` are divided by `g[c]`.
///
/// Per-channel symmetric weight quantization makes the int8 weights
/// invariant (`quant(k·w) = quant(w)`), so only scale and bias codes and
/// the tables change, and powers of two keep those exact. A channel's gain
/// is the largest power of two up to `2^max_log2` that keeps its
/// calibration range inside both tensors' int8 ranges; one gain for both
/// tensors keeps the tables to at most `max_log2 + 1` per function.
///
/// A gain scales a channel's negative side too, and HardSwish's outputs
/// all reach about −0.375, so with the tensor's own zero point no channel
/// could grow. Each tensor's range is therefore widened on the negative
/// side (by a factor from [`WIDEN`], its positive end kept) where that
/// lowers `Σ_c (step / (g[c] · width[c]))²` over both tensors: coarser
/// steps for the whole tensor, bought back many times by the gains.
pub(super) fn channel_gains(low: &Lowered, ranges: &Ranges, max_log2: u32) -> Vec<GainChain> {
    let readers = |t: usize| -> Vec<usize> {
        (0..low.ops.len())
            .filter(|&i| low.ops[i].in0 == t || low.ops[i].in1 == Some(t))
            .collect()
    };
    let plain = |t: usize| {
        t != low.input
            && t != low.output
            && low.tensors[t].alias_of.is_none()
            && low.tensors.iter().all(|x| x.alias_of != Some(t))
    };
    // Channel ranges of tensor t (clamped like the tensor's, containing 0).
    let channels = |t: usize| -> Vec<(f64, f64)> {
        let ir = low.source[t];
        let (tmin, tmax) = (ranges.min[ir] as f64, ranges.max[ir] as f64);
        (0..low.tensors[t].shape.c)
            .map(|c| {
                let cmin = ranges.ch_min[ir].get(c).map_or(0.0, |&v| v as f64);
                let cmax = ranges.ch_max[ir].get(c).map_or(0.0, |&v| v as f64);
                (
                    if cmin.is_finite() {
                        cmin.max(tmin).min(0.0)
                    } else {
                        0.0
                    },
                    if cmax.is_finite() {
                        cmax.min(tmax).max(0.0)
                    } else {
                        0.0
                    },
                )
            })
            .collect()
    };
    // int8 range of (scale, zp)
    let span = |(s, z): (f32, i8)| -> (f64, f64, f64) {
        let (s, z) = (s as f64, z as f64);
        (s * (-128.0 - z), s * (127.0 - z), s)
    };
    let gain = |(a, b): (f64, f64), (lo, hi, _): (f64, f64, f64)| -> f64 {
        (0..=max_log2)
            .rev()
            .map(|k| (1u32 << k) as f64)
            .find(|&g| g * b <= hi && g * a >= lo)
            .unwrap_or(1.0)
    };
    let mut out = Vec::new();
    for (i, l) in low.ops.iter().enumerate() {
        if l.kind != OpKind::Lut {
            continue;
        }
        let (t1, t2) = (l.in0, l.out);
        if !plain(t1) || !plain(t2) || readers(t1) != [i] {
            continue;
        }
        let Some(p) = low.ops.iter().position(|o| o.out == t1) else {
            continue;
        };
        let po = &low.ops[p];
        let clamp_ok =
            (po.act_lo == f32::NEG_INFINITY || po.act_lo == 0.0) && po.act_hi == f32::INFINITY;
        if !matches!(po.kind, OpKind::Conv | OpKind::DwConv)
            || !clamp_ok
            || low.conv_float[p].is_none()
        {
            continue;
        }
        let rd = readers(t2);
        if rd.is_empty()
            || !rd.iter().all(|&d| {
                low.ops[d].kind == OpKind::DwConv
                    && low.ops[d].in0 == t2
                    && low.conv_float[d].is_some()
            })
        {
            continue;
        }
        let (c1, c2) = (channels(t1), channels(t2));
        let q0 = [
            (low.tensors[t1].scale, low.tensors[t1].zp),
            (low.tensors[t2].scale, low.tensors[t2].zp),
        ];
        let widen = |q: (f32, i8), f: f64| -> (f32, i8) {
            let (lo, hi, _) = span(q);
            if f == 1.0 {
                q
            } else {
                tensor_quant((lo * f) as f32, hi as f32)
            }
        };
        let gains_of = |q: [(f32, i8); 2]| -> Vec<f64> {
            let (s1, s2) = (span(q[0]), span(q[1]));
            c1.iter()
                .zip(&c2)
                .map(|(&r1, &r2)| gain(r1, s1).min(gain(r2, s2)))
                .collect()
        };
        let cost = |q: [(f32, i8); 2], g: &[f64]| -> f64 {
            let (s1, s2) = (q[0].0 as f64, q[1].0 as f64);
            g.iter()
                .zip(c1.iter().zip(&c2))
                .map(|(&g, (&(a1, b1), &(a2, b2)))| {
                    let w1 = (b1 - a1).max(s1);
                    let w2 = (b2 - a2).max(s2);
                    (s1 / (g * w1)).powi(2) + (s2 / (g * w2)).powi(2)
                })
                .sum()
        };
        let mut best = (cost(q0, &gains_of(q0)), q0);
        for &f1 in &WIDEN {
            for &f2 in &WIDEN {
                let q = [widen(q0[0], f1), widen(q0[1], f2)];
                let c = cost(q, &gains_of(q));
                if c < best.0 {
                    best = (c, q);
                }
            }
        }
        let quant = best.1;
        let g: Vec<f32> = gains_of(quant).iter().map(|&g| g as f32).collect();
        if g.iter().all(|&x| x == 1.0) {
            continue;
        }
        out.push(GainChain {
            producer: p,
            lut: i,
            readers: rd,
            g,
            quant,
        });
    }
    out
}
