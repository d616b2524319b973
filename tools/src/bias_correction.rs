//! Empirical bias correction (Nagel et al., "Data-Free Quantization Through
//! Weight Equalization and Bias Correction", 2019, section 4.2, with
//! calibration data instead of batch-norm statistics).
//!
//! Int8 rounding of weights and activations is not zero-mean per channel:
//! a depthwise kernel with large batch-norm-folded weights, for instance,
//! turns the rounding of a smooth input into a systematic offset of its
//! output channel, and the offsets add up through the network. This pass
//! runs the quantized model in the runtime (the exact int8 results) next to
//! the float graph on calibration samples and moves each conv channel's bias
//! by the mean difference `float − dequantized int8` of that channel.
//!
//! - Only positions where the float value lies inside the channel's int8
//!   range (tensor range ∩ fused activation clamp, half a step from either
//!   end) count: clipping and a ReLU's zeros are not rounding bias, and
//!   correcting them would shift the unclipped values.
//! - Layers are corrected in order, each measured with every upstream
//!   correction in place (one int8 run of the samples per conv layer).
//!   Correcting all layers from one measurement would count an upstream
//!   error once upstream and again in every layer below it, and diverges.
//! - Cost: one float run per sample (its conv outputs are kept: memory is
//!   samples × the conv outputs' sizes × 4 bytes, about 10 MB per sample for
//!   a 224x224 PP-LCNet) and one int8 run per sample and conv layer.
//! - A conv output stored with per-channel gains
//!   (`quantize::channel_gains`) is compared with the float value times the
//!   gain.
//! - The correction changes bias codes only; weights, scales and activation
//!   ranges stay as calibrated. The corrected biases depend on the model's
//!   own errors, so a task exported with correction is not the base plus a
//!   small patch: `graftnet export` applies it only when asked, and then to
//!   the base and to every task alike.

use anyhow::{anyhow, Result};
use graftnet::format::OpKind;
use graftnet::quant::{decode_bias, encode_bias};
use graftnet::{Backbone, ChannelRequant, Engine};

use crate::data::Dataset;
use crate::export::emit_backbone_with;
use crate::float_eval;
use crate::ir::Graph;
use crate::quantize::QModel;

/// Options of [`correct_biases`].
#[derive(Clone, Copy, Debug)]
pub struct BiasCorrection {
    /// Calibration samples used (the first ones).
    pub samples: usize,
}

impl Default for BiasCorrection {
    fn default() -> Self {
        BiasCorrection { samples: 32 }
    }
}

/// A conv op and the IR tensor holding its float output.
struct Site {
    op: usize,
    ir: usize,
}

/// Moves the biases of `q`'s conv layers (quantized from `graph`) by their
/// measured mean int8 error on the first `opts.samples` samples of
/// `calib`, except the ops marked in `frozen` (their biases are another
/// model's: `share_prefix`). `tick(k)` reports conv layers done.
pub fn correct_biases(
    graph: &Graph,
    q: &mut QModel,
    calib: &Dataset,
    opts: BiasCorrection,
    frozen: &[bool],
    tick: &dyn Fn(usize),
) -> Result<()> {
    let n = calib.len().min(opts.samples);
    let mut sites: Vec<Site> = Vec::new();
    for (i, op) in q.ops.iter().enumerate() {
        if !matches!(op.kind, OpKind::Conv | OpKind::DwConv) || frozen.get(i) == Some(&true) {
            continue;
        }
        let name = &q.tensors[op.out].name;
        let Some(ir) = graph.tensors.iter().position(|t| &t.name == name) else {
            continue;
        };
        let c = op.cout();
        if graph.shape(ir).c != c {
            continue;
        }
        sites.push(Site { op: i, ir });
    }
    if sites.is_empty() || n == 0 {
        return Ok(());
    }
    let floats: Vec<Vec<Vec<f32>>> = (0..n)
        .map(|s| {
            let mut all = float_eval::run(graph, calib.sample(s));
            sites
                .iter()
                .map(|site| std::mem::take(&mut all[site.ir]))
                .collect()
        })
        .collect();
    for (k, site) in sites.iter().enumerate() {
        let blob = emit_backbone_with(q, q.classes(), false)?;
        let bb = Backbone::parse(&blob.bytes)
            .map_err(|e| anyhow!("internal error: bias correction backbone: {e}"))?;
        let mut arena = vec![0i8; bb.arena_len()];
        let mut params = vec![ChannelRequant::default(); bb.params_len()];
        let mut e = Engine::new(&bb, &mut arena, &mut params)
            .map_err(|e| anyhow!("internal error: bias correction engine: {e}"))?;
        let op = &q.ops[site.op];
        let t = op.out;
        let sh = q.tensors[t].shape;
        let (scale, zp) = e.tensor_quant(t);
        let (scale, zp) = (scale as f64, zp as f64);
        let lo = (scale * (-128.0 - zp)).max(op.act_lo as f64) + 0.5 * scale;
        let hi = (scale * (127.0 - zp)).min(op.act_hi as f64) - 0.5 * scale;
        let hw = sh.h * sh.w;
        let (mut diff, mut count) = (vec![0f64; sh.c], vec![0u64; sh.c]);
        for (s, fl) in floats.iter().enumerate() {
            e.run_f32(calib.sample(s))
                .map_err(|e| anyhow!("bias correction: {e}"))?;
            let f = &fl[k];
            let d = e.tensor_data(t);
            for c in 0..sh.c {
                // int8 channels stored with a gain (quantize::channel_gains)
                let gain = q.tensors[t].gains.get(c).map_or(1.0, |&g| g as f64);
                let (mut sum, mut cnt) = (0f64, 0u64);
                for p in 0..hw {
                    let fv = f[c * hw + p] as f64 * gain;
                    if fv > lo && fv < hi {
                        sum += fv - scale * (d[p * sh.c + c] as f64 - zp);
                        cnt += 1;
                    }
                }
                diff[c] += sum;
                count[c] += cnt;
            }
        }
        let op = &mut q.ops[site.op];
        for (code, (&d, &n)) in op.bias_codes.iter_mut().zip(diff.iter().zip(&count)) {
            if n > 0 {
                *code = encode_bias(decode_bias(*code) + d / n as f64);
            }
        }
        tick(k + 1);
    }
    Ok(())
}
