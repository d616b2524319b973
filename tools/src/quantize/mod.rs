//! Lowering the float IR to graftnet's int8 ops, calibration, and
//! quantization.
//!
//! Every model — a base, or a task exported on its own — goes through
//! exactly this path, so a task's quantized form does not depend on which
//! base it is later diffed against. That is what makes backbone + patch
//! bit-identical to the task exported alone.
//!
//! Rules (see `runtime/FORMAT.md`, "Quantization"):
//! - activations: per tensor, asymmetric int8 from the calibration min/max
//!   (the range always contains 0): `scale = (max - min) / 255`,
//!   `zp = round(-128 - min / scale)`;
//! - weights: per output channel, symmetric int8 in [-127, 127] against the
//!   canonical scale `decode(encode_scale_ceil(max|w| / 127))`, rounding half
//!   away from zero;
//! - biases: binary16 codes of the float bias (folded batch norm included);
//! - unary functions: 256-entry tables computed from the float function;
//! - per-channel gains (powers of two) on a conv -> function -> depthwise
//!   chain, with one table per gain ([`channel_gains`]): the one place
//!   where channels of a tensor get different steps.

use anyhow::{bail, Context, Result};
use graftnet::format::entry::{emit_luts, luts_payload_len};
use graftnet::format::{Act as QAct, OpKind};
use graftnet::quant::{decode_bias, encode_bias, encode_scale_nearest, quantize_value};

use crate::float_eval;

mod gains;
use crate::ir::{Act, Graph, Op, Shape, Unary};
use gains::channel_gains;

/// A quantized activation tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    pub name: String,
    pub shape: Shape,
    pub scale: f32,
    pub zp: i8,
    /// Storage shared with this tensor (a reshape).
    pub alias_of: Option<usize>,
    /// Per-channel gains (powers of two; empty = all 1): channel `c` holds
    /// `gains[c]` times the float model's value, so that a channel with a
    /// narrow range gets finer int8 steps (see [`channel_gains`]).
    pub gains: Vec<f32>,
}

/// A quantized op, in runtime terms.
#[derive(Clone, Debug, PartialEq)]
pub struct QOp {
    /// ONNX node name (for messages).
    pub name: String,
    pub kind: OpKind,
    pub act: QAct,
    pub act_lo: f32,
    pub act_hi: f32,
    pub in0: usize,
    pub in1: Option<usize>,
    pub out: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub pads: [usize; 4],
    pub groups: usize,
    pub flags: u16,
    /// Conv-like: int8 weights in the kernel layout.
    pub weights: Vec<i8>,
    /// Conv-like: float weights, `[cout][row]` with each row in the same
    /// element order as the int8 row (for patch classification).
    pub float_rows: Vec<f32>,
    /// Conv-like: per-output-channel scale codes (sign bit clear).
    pub scale_codes: Vec<u16>,
    /// Conv-like: per-output-channel bias codes.
    pub bias_codes: Vec<u16>,
    /// Lut: the table.
    pub lut: Option<Vec<u8>>,
    /// Lut: the float function (for messages).
    pub unary: Option<Unary>,
}

impl QOp {
    fn new(name: &str, kind: OpKind, in0: usize, in1: Option<usize>, out: usize) -> Self {
        QOp {
            name: name.to_string(),
            kind,
            act: QAct::None,
            act_lo: f32::NEG_INFINITY,
            act_hi: f32::INFINITY,
            in0,
            in1,
            out,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            pads: [0; 4],
            groups: 1,
            flags: 0,
            weights: vec![],
            float_rows: vec![],
            scale_codes: vec![],
            bias_codes: vec![],
            lut: None,
            unary: None,
        }
    }
    /// Output channels of a conv-like op.
    pub fn cout(&self) -> usize {
        self.scale_codes.len()
    }
    /// Weights per output channel.
    pub fn row_len(&self) -> usize {
        if self.scale_codes.is_empty() {
            0
        } else {
            self.weights.len() / self.scale_codes.len()
        }
    }
    /// Int8 weights of output channel `c` in row order (`[kh][kw][cin/g]`
    /// for conv, `[kh][kw]` for depthwise).
    pub fn row(&self, c: usize) -> Vec<i8> {
        let n = self.row_len();
        if self.kind == OpKind::DwConv {
            let cout = self.cout();
            (0..n).map(|k| self.weights[k * cout + c]).collect()
        } else {
            self.weights[c * n..(c + 1) * n].to_vec()
        }
    }
}

/// A whole quantized model.
#[derive(Clone, Debug)]
pub struct QModel {
    pub tensors: Vec<QTensor>,
    pub ops: Vec<QOp>,
    pub input: usize,
    pub output: usize,
    pub head_op: usize,
    pub softmax: bool,
    pub labels: Vec<String>,
}

impl QModel {
    pub fn classes(&self) -> usize {
        self.tensors[self.output].shape.c
    }
}

/// The lowered (not yet calibrated) model: ops plus a map from runtime
/// tensors to the IR tensors whose ranges they take.
struct Lowered {
    tensors: Vec<QTensor>,
    /// IR tensor each runtime tensor takes its range from
    source: Vec<usize>,
    ops: Vec<QOp>,
    /// float conv weights per op, OIHW, with biases (conv-like ops)
    conv_float: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    input: usize,
    output: usize,
}

fn check_u8(v: usize, what: &str, node: &str) -> Result<usize> {
    if v > 255 {
        bail!("node '{node}': {what} {v} is larger than 255, which the runtime's op record cannot hold");
    }
    Ok(v)
}

fn act_bounds(act: Act) -> (QAct, f32, f32) {
    match act {
        Act::None => (QAct::None, f32::NEG_INFINITY, f32::INFINITY),
        Act::Relu => (QAct::Clamp, 0.0, f32::INFINITY),
        Act::Clip(lo, hi) => (QAct::Clamp, lo, hi),
    }
}

fn lower(g: &Graph) -> Result<Lowered> {
    let mut tensors: Vec<QTensor> = Vec::new();
    let mut source = Vec::new();
    // IR tensor -> runtime tensor
    let mut map: Vec<Option<usize>> = vec![None; g.tensors.len()];
    let new_tensor =
        |tensors: &mut Vec<QTensor>, source: &mut Vec<usize>, ir: usize, alias: Option<usize>| {
            tensors.push(QTensor {
                name: g.tensors[ir].name.clone(),
                shape: g.tensors[ir].shape,
                scale: 1.0,
                zp: 0,
                alias_of: alias,
                gains: Vec::new(),
            });
            source.push(ir);
            tensors.len() - 1
        };
    map[g.input] = Some(new_tensor(&mut tensors, &mut source, g.input, None));
    let mut ops = Vec::new();
    let mut conv_float = Vec::new();
    for node in &g.nodes {
        let name = node.name.as_str();
        let inp = |k: usize| -> Result<usize> {
            let t = *node
                .inputs
                .get(k)
                .with_context(|| format!("node '{name}' lacks input {k}"))?;
            map[t].with_context(|| {
                format!(
                    "node '{name}' reads tensor '{}' before it is produced",
                    g.tensors[t].name
                )
            })
        };
        match &node.op {
            Op::Reshape => {
                let src = inp(0)?;
                let a = g.tensors[node.inputs[0]].shape;
                let o = g.tensors[node.output].shape;
                if a.len() != o.len() || !(a.h * a.w == 1 && o.h * o.w == 1) {
                    bail!("node '{name}' (Reshape {a} -> {o}) changes the memory order; only reshapes between (c,1,1) vectors can run in place");
                }
                let root = tensors[src].alias_of.unwrap_or(src);
                map[node.output] = Some(new_tensor(
                    &mut tensors,
                    &mut source,
                    node.output,
                    Some(root),
                ));
                continue;
            }
            Op::Concat => {
                let n = node.inputs.len();
                if n < 2 {
                    let src = inp(0)?;
                    let root = tensors[src].alias_of.unwrap_or(src);
                    map[node.output] = Some(new_tensor(
                        &mut tensors,
                        &mut source,
                        node.output,
                        Some(root),
                    ));
                    continue;
                }
                let mut acc = inp(0)?;
                for k in 1..n {
                    let b = inp(k)?;
                    let out = new_tensor(&mut tensors, &mut source, node.output, None);
                    if k + 1 < n {
                        let sa = tensors[acc].shape;
                        let sb = tensors[b].shape;
                        tensors[out].shape = Shape::new(sa.c + sb.c, sa.h, sa.w);
                        tensors[out].name = format!("{}#concat{k}", node.name);
                    }
                    ops.push(QOp::new(name, OpKind::Concat, acc, Some(b), out));
                    conv_float.push(None);
                    acc = out;
                }
                map[node.output] = Some(acc);
                continue;
            }
            _ => {}
        }
        let in0 = inp(0)?;
        let in1 = if node.inputs.len() > 1 {
            Some(inp(1)?)
        } else {
            None
        };
        let out = new_tensor(&mut tensors, &mut source, node.output, None);
        map[node.output] = Some(out);
        let mut fl = None;
        let op = match &node.op {
            Op::Conv(c) => {
                if c.dilation != (1, 1) {
                    bail!(
                        "node '{name}' (Conv): dilation {:?} is not supported",
                        c.dilation
                    );
                }
                let dw = c.is_depthwise();
                let mut q = QOp::new(
                    name,
                    if dw { OpKind::DwConv } else { OpKind::Conv },
                    in0,
                    None,
                    out,
                );
                q.kh = check_u8(c.kh, "kernel height", name)?;
                q.kw = check_u8(c.kw, "kernel width", name)?;
                q.sh = check_u8(c.stride.0, "stride", name)?;
                q.sw = check_u8(c.stride.1, "stride", name)?;
                for (k, &p) in c.pads.iter().enumerate() {
                    q.pads[k] = check_u8(p, "padding", name)?;
                }
                q.groups = c.groups;
                let (a, lo, hi) = act_bounds(c.act);
                (q.act, q.act_lo, q.act_hi) = (a, lo, hi);
                fl = Some((c.weight.clone(), c.bias.clone()));
                q
            }
            Op::ChannelAffine { scale, bias, act } => {
                // A per-channel affine is a 1x1 depthwise conv.
                let c = scale.len();
                let mut q = QOp::new(name, OpKind::DwConv, in0, None, out);
                q.groups = c;
                let (a, lo, hi) = act_bounds(*act);
                (q.act, q.act_lo, q.act_hi) = (a, lo, hi);
                fl = Some((scale.clone(), bias.clone()));
                q
            }
            Op::Add => QOp::new(name, OpKind::Add, in0, in1, out),
            Op::Mul => QOp::new(name, OpKind::Mul, in0, in1, out),
            Op::Unary(u) => {
                let mut q = QOp::new(name, OpKind::Lut, in0, None, out);
                q.unary = Some(u.clone());
                q
            }
            Op::GlobalAvgPool => QOp::new(name, OpKind::GlobalAvgPool, in0, None, out),
            Op::AvgPool(p) | Op::MaxPool(p) => {
                let avg = matches!(node.op, Op::AvgPool(_));
                let mut q = QOp::new(
                    name,
                    if avg {
                        OpKind::AvgPool
                    } else {
                        OpKind::MaxPool
                    },
                    in0,
                    None,
                    out,
                );
                q.kh = check_u8(p.kh, "window height", name)?;
                q.kw = check_u8(p.kw, "window width", name)?;
                q.sh = check_u8(p.stride.0, "stride", name)?;
                q.sw = check_u8(p.stride.1, "stride", name)?;
                for (k, &v) in p.pads.iter().enumerate() {
                    q.pads[k] = check_u8(v, "padding", name)?;
                }
                if avg && p.count_include_pad {
                    q.flags |= graftnet::format::backbone::OP_FLAG_COUNT_INCLUDE_PAD;
                }
                if avg && p.kh * p.kw > 64 {
                    bail!("node '{name}' (AveragePool): a {}x{} window is larger than the runtime supports (64 cells)", p.kh, p.kw);
                }
                q
            }
            Op::Reshape | Op::Concat => unreachable!(),
        };
        ops.push(op);
        conv_float.push(fl);
    }
    let output = map[g.output].context("graph output is never produced")?;
    let input = map[g.input].unwrap_or(0);
    Ok(Lowered {
        tensors,
        source,
        ops,
        conv_float,
        input,
        output,
    })
}

/// Per-IR-tensor value ranges over a calibration set.
#[derive(Clone, Debug)]
pub struct Ranges {
    /// observed minimum
    pub min: Vec<f32>,
    /// observed maximum
    pub max: Vec<f32>,
    /// range chosen for quantization (inside [min, max], always containing 0)
    pub lo: Vec<f32>,
    pub hi: Vec<f32>,
    /// observed minimum and maximum of every channel
    pub ch_min: Vec<Vec<f32>>,
    pub ch_max: Vec<Vec<f32>>,
    pub samples: usize,
}

/// Histogram bins per tensor for range selection.
const BINS: usize = 2048;
/// Shrink factors tried for each end of a range.
const SHRINK: [f64; 12] = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1];

/// Runs the float graph over `samples` (each `c*h*w`, CHW) twice: first for
/// every tensor's min and max, then for a histogram, from which each
/// internal tensor's quantization range is chosen to minimise the expected
/// squared error (clipping error plus rounding noise, `step^2 / 12`). The
/// graph input and output keep their full observed range (the output's top
/// values decide the class).
pub fn calibrate<'s>(
    g: &Graph,
    samples: impl IntoIterator<Item = &'s [f32]>,
    progress: &dyn Fn(usize),
) -> Result<Ranges> {
    let n = g.tensors.len();
    let samples: Vec<&[f32]> = samples.into_iter().collect();
    let mut r = Ranges {
        min: vec![f32::INFINITY; n],
        max: vec![f32::NEG_INFINITY; n],
        lo: vec![0.0; n],
        hi: vec![0.0; n],
        ch_min: (0..n).map(|t| vec![f32::INFINITY; g.shape(t).c]).collect(),
        ch_max: (0..n)
            .map(|t| vec![f32::NEG_INFINITY; g.shape(t).c])
            .collect(),
        samples: 0,
    };
    if samples.is_empty() {
        bail!("the calibration set is empty");
    }
    let want = g.shape(g.input).len();
    for x in &samples {
        if x.len() != want {
            bail!(
                "calibration sample has {} values, the model input {} takes {}",
                x.len(),
                g.shape(g.input),
                want
            );
        }
    }
    for x in &samples {
        let vals = float_eval::run(g, x);
        for (t, v) in vals.iter().enumerate() {
            let c = r.ch_min[t].len();
            let hw = v.len().checked_div(c).unwrap_or(0);
            for (i, &y) in v.iter().enumerate() {
                if y.is_finite() {
                    r.min[t] = r.min[t].min(y);
                    r.max[t] = r.max[t].max(y);
                    if let Some(ch) = i.checked_div(hw).filter(|&ch| ch < c) {
                        r.ch_min[t][ch] = r.ch_min[t][ch].min(y);
                        r.ch_max[t][ch] = r.ch_max[t][ch].max(y);
                    }
                }
            }
        }
        r.samples += 1;
        progress(r.samples);
    }
    for t in 0..n {
        r.min[t] = if r.min[t].is_finite() {
            r.min[t].min(0.0)
        } else {
            0.0
        };
        r.max[t] = if r.max[t].is_finite() {
            r.max[t].max(0.0)
        } else {
            0.0
        };
    }
    // A tensor read only by elementwise functions that are constant below
    // some `a` (HardSwish, ReLU) or above some `b` (HardSigmoid, Clip) needs
    // no int8 steps out there: clamping its range to [a, b] changes no
    // function value and gives the rest finer steps.
    for t in 0..n {
        if t == g.input || t == g.output {
            continue;
        }
        let mut readers = g
            .nodes
            .iter()
            .filter(|nd| nd.inputs.contains(&t))
            .peekable();
        if readers.peek().is_none() {
            continue;
        }
        let (mut a, mut b) = (f32::INFINITY, f32::NEG_INFINITY);
        for nd in readers {
            let Op::Unary(u) = &nd.op else {
                a = r.min[t];
                b = r.max[t];
                break;
            };
            let (ua, ub) = varying_interval(u, r.min[t], r.max[t]);
            a = a.min(ua);
            b = b.max(ub);
        }
        r.min[t] = r.min[t].max(a.min(0.0));
        r.max[t] = r.max[t].min(b.max(0.0));
    }
    let mut hist = vec![vec![0u64; BINS]; n];
    for x in &samples {
        let vals = float_eval::run(g, x);
        for (t, v) in vals.iter().enumerate() {
            let (a, b) = (r.min[t] as f64, r.max[t] as f64);
            if b <= a {
                continue;
            }
            let k = BINS as f64 / (b - a);
            for &y in v {
                if y.is_finite() {
                    let i = (((y as f64 - a) * k) as usize).min(BINS - 1);
                    hist[t][i] += 1;
                }
            }
        }
    }
    for (t, hist) in hist.iter().enumerate() {
        let (a, b) = (r.min[t] as f64, r.max[t] as f64);
        if t == g.input || t == g.output || b <= a {
            r.lo[t] = r.min[t];
            r.hi[t] = r.max[t];
            continue;
        }
        let w = (b - a) / BINS as f64;
        let mut best = (f64::INFINITY, a, b);
        for &fa in &SHRINK {
            if a == 0.0 && fa != 1.0 {
                continue;
            }
            for &fb in &SHRINK {
                if b == 0.0 && fb != 1.0 {
                    continue;
                }
                let (lo, hi) = (a * fa, b * fb);
                let step = (hi - lo) / 255.0;
                let noise = step * step / 12.0;
                let mut err = 0.0;
                for (i, &c) in hist.iter().enumerate() {
                    if c == 0 {
                        continue;
                    }
                    let v = a + (i as f64 + 0.5) * w;
                    let e = if v < lo {
                        (lo - v) * (lo - v)
                    } else if v > hi {
                        (v - hi) * (v - hi)
                    } else {
                        noise
                    };
                    err += c as f64 * e;
                }
                if err < best.0 {
                    best = (err, lo, hi);
                }
            }
        }
        r.lo[t] = best.1 as f32;
        r.hi[t] = best.2 as f32;
    }
    Ok(r)
}

/// The part of `[lo, hi]` outside which `u` is constant: `[a, b]` with
/// `u(x) == u(lo)` for every `x` in `[lo, a]` and `u(x) == u(hi)` on
/// `[b, hi]`, found on a grid of 8192 steps (conservatively: the true
/// breakpoints lie within one step outside `[a, b]`).
fn varying_interval(u: &Unary, lo: f32, hi: f32) -> (f32, f32) {
    const STEPS: usize = 8192;
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return (lo, hi);
    }
    let x = |i: usize| {
        if i == STEPS {
            hi
        } else {
            (lo as f64 + (hi as f64 - lo as f64) * i as f64 / STEPS as f64) as f32
        }
    };
    let same = |p: f32, q: f32| p == q || (p.is_nan() && q.is_nan());
    let (f0, f1) = (u.apply(lo), u.apply(hi));
    let mut a = 0;
    while a < STEPS && same(u.apply(x(a + 1)), f0) {
        a += 1;
    }
    let mut b = STEPS;
    while b > a && same(u.apply(x(b - 1)), f1) {
        b -= 1;
    }
    (x(a), x(b))
}

/// Activation quantization from a range (always including 0).
pub fn tensor_quant(min: f32, max: f32) -> (f32, i8) {
    let mut lo = (min as f64).min(0.0);
    let mut hi = (max as f64).max(0.0);
    if !lo.is_finite() {
        lo = 0.0;
    }
    if !hi.is_finite() {
        hi = 0.0;
    }
    if hi - lo < 1e-8 {
        hi = lo + 1e-8;
    }
    let scale = ((hi - lo) / 255.0) as f32;
    let zp = graftnet::quant::round_half_away(-128.0 - lo / scale as f64).clamp(-128, 127) as i8;
    (scale, zp)
}

/// Quantizes one weight row: `q = round(127 * w / max|w|)` (half away
/// from zero) — invariant under a per-channel factor, so a task whose batch
/// norm changed reuses the base's int8 weights — and the scale `max|w|/127`
/// as the nearest 16-bit code. Returns the code (sign clear) and the row.
pub fn quantize_row(w: &[f32]) -> (u16, Vec<i8>) {
    let maxabs = w.iter().fold(0.0f64, |m, &x| m.max((x as f64).abs()));
    let code = encode_scale_nearest(maxabs / 127.0, false);
    let q = w
        .iter()
        .map(|&x| {
            if maxabs == 0.0 {
                0
            } else {
                graftnet::quant::round_half_away(x as f64 / maxabs * 127.0).clamp(-127, 127) as i8
            }
        })
        .collect();
    (code, q)
}

/// Largest per-channel gain, as a power of two (see [`channel_gains`]).
pub const MAX_GAIN_LOG2: u32 = 4;

/// Lowers and quantizes a float graph with calibrated `ranges`
/// ([`quantize_with`] with per-channel gains up to `2^MAX_GAIN_LOG2`).
pub fn quantize(g: &Graph, ranges: &Ranges, labels: Vec<String>) -> Result<QModel> {
    quantize_with(g, ranges, labels, MAX_GAIN_LOG2)
}

/// Lowers and quantizes a float graph; per-channel gains up to
/// `2^max_gain_log2` (0: none).
pub fn quantize_with(
    g: &Graph,
    ranges: &Ranges,
    labels: Vec<String>,
    max_gain_log2: u32,
) -> Result<QModel> {
    let mut low = lower(g)?;
    // Tensor quantization.
    for t in 0..low.tensors.len() {
        let ir = low.source[t];
        let (s, z) = tensor_quant(ranges.lo[ir], ranges.hi[ir]);
        low.tensors[t].scale = s;
        low.tensors[t].zp = z;
    }
    // Ops whose output must share its input's quantization.
    for t in 0..low.tensors.len() {
        if let Some(a) = low.tensors[t].alias_of {
            low.tensors[t].scale = low.tensors[a].scale;
            low.tensors[t].zp = low.tensors[a].zp;
        }
    }
    for op in &low.ops {
        if op.kind == OpKind::MaxPool {
            let (s, z) = (low.tensors[op.in0].scale, low.tensors[op.in0].zp);
            low.tensors[op.out].scale = s;
            low.tensors[op.out].zp = z;
        }
    }
    // Concat chains: intermediate tensors use the final output's quantization.
    for i in (0..low.ops.len()).rev() {
        if low.ops[i].kind == OpKind::Concat {
            let out = low.ops[i].out;
            let a = low.ops[i].in0;
            let produced_by_concat = low.ops[..i]
                .iter()
                .any(|o| o.kind == OpKind::Concat && o.out == a && o.name == low.ops[i].name);
            if produced_by_concat {
                low.tensors[a].scale = low.tensors[out].scale;
                low.tensors[a].zp = low.tensors[out].zp;
            }
        }
    }
    // A reshape after the classifier: the classifier's own tensor is the output.
    if let Some(r) = low.tensors[low.output].alias_of {
        low.output = r;
    }
    // Per-channel gains between a conv, an elementwise function and the
    // depthwise convs reading it.
    if max_gain_log2 > 0 {
        for chain in channel_gains(&low, ranges, max_gain_log2) {
            let block = |w: &mut Vec<f32>, c: usize, k: f32, cout: usize| {
                let n = w.len() / cout;
                for v in &mut w[c * n..(c + 1) * n] {
                    *v *= k;
                }
            };
            let l = &low.ops[chain.lut];
            let (t1, t2) = (l.in0, l.out);
            let (w, b) = low.conv_float[chain.producer].as_mut().unwrap();
            let cout = chain.g.len();
            for (c, &g) in chain.g.iter().enumerate() {
                block(w, c, g, cout);
                if let Some(v) = b.get_mut(c) {
                    *v *= g;
                }
            }
            for &d in &chain.readers {
                let (w, _) = low.conv_float[d].as_mut().unwrap();
                for (c, &g) in chain.g.iter().enumerate() {
                    block(w, c, 1.0 / g, cout);
                }
            }
            for (t, (s, z)) in [t1, t2].into_iter().zip(chain.quant) {
                low.tensors[t].scale = s;
                low.tensors[t].zp = z;
            }
            low.tensors[t1].gains = chain.g.clone();
            low.tensors[t2].gains = chain.g;
        }
    }
    // Weights and tables.
    for (i, op) in low.ops.iter_mut().enumerate() {
        match op.kind {
            OpKind::Conv | OpKind::DwConv => {
                let (w, b) = low.conv_float[i].clone().unwrap();
                let a = low.tensors[op.in0].shape;
                let o = low.tensors[op.out].shape;
                let cout = o.c;
                let cin_g = a.c / op.groups;
                let (kh, kw) = (op.kh, op.kw);
                let row = cin_g * kh * kw;
                let affine = w.len() == cout
                    && op.kind == OpKind::DwConv
                    && kh == 1
                    && kw == 1
                    && b.len() == cout
                    && row == 1;
                let mut rows = vec![0f32; cout * row];
                for co in 0..cout {
                    for ci in 0..cin_g {
                        for y in 0..kh {
                            for x in 0..kw {
                                // OIHW -> row order [kh][kw][cin_g]
                                let v = if affine {
                                    w[co]
                                } else {
                                    w[((co * cin_g + ci) * kh + y) * kw + x]
                                };
                                rows[co * row + (y * kw + x) * cin_g + ci] = v;
                            }
                        }
                    }
                }
                let mut q = vec![0i8; cout * row];
                op.scale_codes = Vec::with_capacity(cout);
                for co in 0..cout {
                    let (code, qr) = quantize_row(&rows[co * row..(co + 1) * row]);
                    op.scale_codes.push(code);
                    for (k, &v) in qr.iter().enumerate() {
                        if op.kind == OpKind::DwConv {
                            q[k * cout + co] = v; // [kh][kw][c]
                        } else {
                            q[co * row + k] = v;
                        }
                    }
                }
                op.weights = q;
                op.float_rows = rows;
                op.bias_codes = (0..cout)
                    .map(|c| encode_bias(b.get(c).copied().unwrap_or(0.0) as f64))
                    .collect();
                if row > graftnet::format::backbone::MAX_ROW_LEN {
                    bail!(
                        "node '{}': {} weights per output channel exceed the runtime's limit of {}",
                        op.name,
                        row,
                        graftnet::format::backbone::MAX_ROW_LEN
                    );
                }
            }
            OpKind::Lut => {
                let u = op.unary.clone().unwrap();
                let (si, zi) = (
                    low.tensors[op.in0].scale as f64,
                    low.tensors[op.in0].zp as i32,
                );
                let (so, zo) = (
                    low.tensors[op.out].scale as f64,
                    low.tensors[op.out].zp as i32,
                );
                let c = low.tensors[op.out].shape.c;
                let gain = |t: usize, ch: usize| -> f64 {
                    low.tensors[t].gains.get(ch).map_or(1.0, |&k| k as f64)
                };
                let table = |ch: usize| -> Vec<u8> {
                    let (gi, go) = (gain(op.in0, ch), gain(op.out, ch));
                    let mut t = vec![0u8; 256];
                    for qv in -128i32..=127 {
                        let x = (si * (qv - zi) as f64 / gi) as f32;
                        let y = u.apply(x) as f64 * go;
                        t[(qv as i8 as u8) as usize] = quantize_value(y, so, zo) as i8 as u8;
                    }
                    t
                };
                if low.tensors[op.in0].gains.is_empty() && low.tensors[op.out].gains.is_empty() {
                    op.lut = Some(table(0));
                } else {
                    // One table per distinct (input gain, output gain).
                    let mut tables: Vec<Vec<u8>> = Vec::new();
                    let mut index = Vec::with_capacity(c);
                    for ch in 0..c {
                        let t = table(ch);
                        let k = match tables.iter().position(|x| *x == t) {
                            Some(k) => k,
                            None => {
                                tables.push(t);
                                tables.len() - 1
                            }
                        };
                        index.push(k as u8);
                    }
                    if tables.len() == 1 {
                        op.lut = tables.pop();
                    } else {
                        let flat: Vec<u8> = tables.concat();
                        let mut p = vec![0u8; luts_payload_len(tables.len(), c)];
                        emit_luts(&mut p, &index, &flat);
                        op.lut = Some(p);
                    }
                }
            }
            _ => {}
        }
    }
    // The head: the conv that writes the output.
    let head_op = low
        .ops
        .iter()
        .position(|o| o.out == low.output)
        .context("the graph output is not written by an op")?;
    let h = &low.ops[head_op];
    let os = low.tensors[low.output].shape;
    if h.kind != OpKind::Conv || h.groups != 1 || os.h != 1 || os.w != 1 {
        bail!(
            "the model must end in a fully connected classifier (Gemm/MatMul/1x1 conv to a (classes,1,1) output, optionally followed by Softmax); node '{}' ({}) writes the output {}",
            h.name,
            h.kind.name(),
            os
        );
    }
    let _ = decode_bias;
    Ok(QModel {
        tensors: low.tensors,
        ops: low.ops,
        input: low.input,
        output: low.output,
        head_op,
        softmax: g.output_softmax,
        labels,
    })
}
