//! The trainable network: an imported float graph ([`crate::ir::Graph`],
//! batch norm already folded into its convs) turned back into layers with
//! parameters, gradients and batch-norm, with forward and backward passes
//! over channels-last batches.
//!
//! How a patch kind maps onto parameters (the paper's patches):
//! - S/B (`sb`): every conv that reads a spatial map (not the squeeze-excite
//!   convs or hidden fully-connected layers after a global pool) gets a
//!   batch-norm layer back, initialised so the network computes exactly the
//!   base's function on the task data (statistics estimated on it, `gamma =
//!   sqrt(var + eps)`, `beta = mean + folded bias`); its `gamma`/`beta`
//!   train, its statistics are the batch's during training and re-estimated
//!   at the end. Stand-alone per-channel affines train as S/B too.
//! - DW (`dw`): the depthwise kernels train; the folded biases stay.
//! - logits: the classifier (the conv producing the graph output).
//! - full: everything, with batch-norm after every spatial conv.
//!
//! Only parameters upstream of which something trains get gradients: a
//! logits-only step runs backward through the classifier alone.
//!
//! Folded weights: an imported conv's weights are `W' = s * W` with the
//! base's batch-norm scale `s` per output channel folded in (`s` spans
//! orders of magnitude). Adam's step has about the same size for every
//! weight, so trained as they are, channels with a small `s` would move far
//! more, relative to their weights, than the unfolded `W` would under the
//! same learning rate. When conv weights train from a base, each output
//! channel's step is therefore scaled by the RMS of its weights: the update
//! is what the unfolded parametrisation (a unit-RMS kernel times a frozen
//! scale) would get.

use anyhow::{bail, Result};

use super::kernels::{self as k, ConvSpec, Dims};
use super::norm;
use crate::ir::{Act, Graph, Op, Unary};
use crate::rng::Rng;

mod batch_norm;
use batch_norm::bn_stats;

/// Which parameters a training run learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Logits,
    SbLogits,
    DwLogits,
    SbDwLogits,
    Full,
}

impl PatchKind {
    pub const ALL: [PatchKind; 5] = [
        PatchKind::Logits,
        PatchKind::SbLogits,
        PatchKind::DwLogits,
        PatchKind::SbDwLogits,
        PatchKind::Full,
    ];
    pub fn name(self) -> &'static str {
        match self {
            PatchKind::Logits => "logits",
            PatchKind::SbLogits => "sb+logits",
            PatchKind::DwLogits => "dw+logits",
            PatchKind::SbDwLogits => "sb+dw+logits",
            PatchKind::Full => "full",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        PatchKind::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown patch kind '{s}': use logits, sb+logits, dw+logits, sb+dw+logits or full"
                )
            })
    }
    /// Batch-norm layers exist (and train).
    pub fn sb(self) -> bool {
        matches!(
            self,
            PatchKind::SbLogits | PatchKind::SbDwLogits | PatchKind::Full
        )
    }
    pub fn dw(self) -> bool {
        matches!(
            self,
            PatchKind::DwLogits | PatchKind::SbDwLogits | PatchKind::Full
        )
    }
}

/// A parameter tensor with its gradient and optimizer state.
#[derive(Clone, Debug, Default)]
pub struct Param {
    pub v: Vec<f32>,
    pub g: Vec<f32>,
    pub trainable: bool,
    /// Optimizer moments (Adam: first and second; SGD: velocity in `m`).
    pub m: Vec<f32>,
    pub s: Vec<f32>,
    /// This parameter's learning rate relative to the run's.
    pub lr_scale: f32,
    /// Per output channel (rows of equal length): a further factor on the
    /// step; empty = none. See [`Net::from_graph`].
    pub row_scale: Vec<f32>,
}

impl Param {
    fn new(v: Vec<f32>, trainable: bool) -> Self {
        let n = if trainable { v.len() } else { 0 };
        Param {
            g: vec![0.0; n],
            m: vec![0.0; n],
            s: vec![0.0; n],
            v,
            trainable,
            lr_scale: 1.0,
            row_scale: vec![],
        }
    }

    /// Steps of each output channel scaled by that channel's RMS weight.
    fn scale_rows_by_rms(&mut self, rows: usize) {
        let n = self.v.len() / rows.max(1);
        self.row_scale = self
            .v
            .chunks(n.max(1))
            .map(|r| {
                let ms = r.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / n as f64;
                (ms.sqrt() as f32).max(1e-6)
            })
            .collect();
    }
}

/// Batch-norm after a conv: `gamma * (z - mean) / sqrt(var + eps) + beta`.
#[derive(Clone, Debug)]
pub struct Bn {
    pub gamma: Param,
    pub beta: Param,
    /// Running (inference) statistics.
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f32,
    /// This batch's statistics (mean, 1/sqrt(var + eps)), kept for backward.
    bmean: Vec<f32>,
    binv: Vec<f32>,
    /// Re-estimation: sums of batch means and unbiased variances, count.
    acc: Option<(Vec<f64>, Vec<f64>, usize)>,
}

/// How batch-norm layers behave in a forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Running statistics; no caches needed for backward beyond inputs.
    Eval,
    /// Batch statistics; running statistics follow an exponential average.
    Train,
    /// Batch statistics, accumulated for an exact re-estimate
    /// ([`Net::finish_bn_estimate`]); running statistics untouched.
    Estimate,
}

/// Momentum of the running statistics during training (PyTorch's default).
const BN_MOMENTUM: f32 = 0.1;

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per graph node; boxing buys nothing
pub enum Layer {
    Conv {
        spec: ConvSpec,
        w: Param,
        b: Param,
        bn: Option<Bn>,
        act: Act,
        /// conv output before batch-norm (kept for backward)
        z: Vec<f32>,
    },
    /// Per-channel `act(x * s + b)` (a batch-norm without a conv before it).
    Affine {
        s: Param,
        b: Param,
        act: Act,
    },
    Add,
    Mul,
    Unary(Unary),
    GlobalAvgPool,
    Concat,
    /// Same values in the same order (only shapes whose channels-last and
    /// channels-first orders agree).
    Reshape,
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub layer: Layer,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A trainable network over batches.
#[derive(Clone, Debug)]
pub struct Net {
    pub nodes: Vec<Node>,
    /// (c, h, w) per tensor.
    pub shapes: Vec<(usize, usize, usize)>,
    pub input: usize,
    pub output: usize,
    /// The source model ended in Softmax (kept when writing ONNX).
    pub softmax: bool,
    /// Index of the classifier node.
    pub head: usize,
    pub threads: usize,
    /// Depthwise kernels belong to the patch.
    dw_patch: bool,
    /// Apply batch-norms inside their only reader where possible
    /// ([`Net::fused_inputs`]); same bits either way (tested).
    pub fuse: bool,
    vals: Vec<Vec<f32>>,
    grads: Vec<Option<Vec<f32>>>,
    /// Freed gradient buffers, reused by the next ones.
    pool: Vec<Vec<f32>>,
    batch: usize,
}

/// How [`Net::from_graph`] initialises batch-norm layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnInit {
    /// Keep the base's function on the data given to [`Net::init_bn_from_data`].
    PreserveFunction,
    /// `gamma = 1, beta = 0` (training from scratch).
    Fresh,
}

impl Net {
    /// Builds the trainable network for `kind` from an imported graph.
    pub fn from_graph(g: &Graph, kind: PatchKind, bn_init: BnInit, threads: usize) -> Result<Net> {
        let head = g
            .nodes
            .iter()
            .position(|n| n.output == g.output)
            .filter(|&i| matches!(g.nodes[i].op, Op::Conv(_)))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "graftnet learn needs a model whose output is a fully-connected (Gemm/MatMul) or conv classifier; this model's output comes from a {} node",
                    g.nodes
                        .iter()
                        .find(|n| n.output == g.output)
                        .map_or("missing", |n| n.op.name())
                )
            })?;
        // Tensors computed from a global pool only (squeeze-excite branches,
        // hidden fully-connected layers): their convs get no batch-norm.
        let mut pooled = vec![false; g.tensors.len()];
        let mut nodes = Vec::with_capacity(g.nodes.len());
        for (i, n) in g.nodes.iter().enumerate() {
            let all_pooled = n.inputs.iter().all(|&t| pooled[t]);
            pooled[n.output] = match &n.op {
                Op::GlobalAvgPool => true,
                Op::Conv(_)
                | Op::Unary(_)
                | Op::Reshape
                | Op::ChannelAffine { .. }
                | Op::Add
                | Op::Mul => all_pooled,
                _ => false,
            };
            let is_head = i == head;
            let layer = match &n.op {
                Op::Conv(c) => {
                    if c.dilation != (1, 1) {
                        bail!(
                            "node '{}': dilated convolutions cannot be trained yet",
                            n.name
                        );
                    }
                    let spec = ConvSpec {
                        cin: c.cin,
                        cout: c.cout,
                        kh: c.kh,
                        kw: c.kw,
                        sh: c.stride.0,
                        sw: c.stride.1,
                        pads: c.pads,
                        groups: c.groups,
                    };
                    let spatial = !is_head && !all_pooled;
                    let with_bn = kind.sb() && spatial;
                    let w_train = is_head
                        || kind == PatchKind::Full
                        || (kind.dw() && spec.is_depthwise());
                    let bn = with_bn.then(|| {
                        let (gamma, beta) = match bn_init {
                            BnInit::PreserveFunction => (vec![1.0; c.cout], c.bias.clone()),
                            BnInit::Fresh => (vec![1.0; c.cout], vec![0.0; c.cout]),
                        };
                        Bn {
                            gamma: Param::new(gamma, true),
                            beta: Param::new(beta, true),
                            mean: vec![0.0; c.cout],
                            var: vec![1.0; c.cout],
                            eps: 1e-5,
                            bmean: vec![],
                            binv: vec![],
                            acc: None,
                        }
                    });
                    let b_train = bn.is_none() && (is_head || kind == PatchKind::Full);
                    let bias = if bn.is_some() {
                        vec![0.0; c.cout]
                    } else {
                        c.bias.clone()
                    };
                    let mut w = Param::new(c.weight.clone(), w_train);
                    if w_train && !is_head && bn_init == BnInit::PreserveFunction {
                        w.scale_rows_by_rms(c.cout);
                    }
                    Layer::Conv {
                        spec,
                        w,
                        b: Param::new(bias, b_train),
                        bn,
                        act: c.act,
                        z: vec![],
                    }
                }
                Op::ChannelAffine { scale, bias, act } => Layer::Affine {
                    s: Param::new(scale.clone(), kind.sb()),
                    b: Param::new(bias.clone(), kind.sb()),
                    act: *act,
                },
                Op::Add => Layer::Add,
                Op::Mul => Layer::Mul,
                Op::Unary(u) => Layer::Unary(u.clone()),
                Op::GlobalAvgPool => Layer::GlobalAvgPool,
                Op::Concat => Layer::Concat,
                Op::Reshape => {
                    let a = g.shape(n.inputs[0]);
                    let b = g.shape(n.output);
                    if !((a.h == 1 && a.w == 1 && b.h == 1 && b.w == 1) || a == b) {
                        bail!(
                            "node '{}': a reshape from {a} to {b} cannot be trained yet (only between (c,1,1) shapes)",
                            n.name
                        );
                    }
                    Layer::Reshape
                }
                Op::AvgPool(_) | Op::MaxPool(_) => bail!(
                    "node '{}': {} cannot be trained yet (graftnet learn supports Conv, BatchNormalization, Add, Mul, elementwise functions, GlobalAveragePool, Concat, Flatten/Gemm)",
                    n.name,
                    n.op.name()
                ),
            };
            nodes.push(Node {
                name: n.name.clone(),
                layer,
                inputs: n.inputs.clone(),
                output: n.output,
            });
        }
        let shapes = g
            .tensors
            .iter()
            .map(|t| (t.shape.c, t.shape.h, t.shape.w))
            .collect::<Vec<_>>();
        Ok(Net {
            vals: vec![vec![]; shapes.len()],
            grads: vec![None; shapes.len()],
            pool: vec![],
            shapes,
            nodes,
            input: g.input,
            output: g.output,
            softmax: g.output_softmax,
            head,
            threads: threads.max(1),
            dw_patch: kind.dw(),
            fuse: true,
            batch: 0,
        })
    }

    /// Number of classes the classifier has now.
    pub fn classes(&self) -> usize {
        self.shapes[self.output].0
    }

    /// Input (c, h, w).
    pub fn input_shape(&self) -> (usize, usize, usize) {
        self.shapes[self.input]
    }

    /// Replaces the classifier by a fresh one with `classes` outputs:
    /// weights N(0, 0.01), bias 0 (seeded).
    pub fn new_head(&mut self, classes: usize, seed: u64) {
        let out = self.output;
        let Layer::Conv { spec, w, b, .. } = &mut self.nodes[self.head].layer else {
            unreachable!("the head is a conv (checked in from_graph)");
        };
        spec.cout = classes;
        let mut r = Rng::for_name(seed, "learn.head");
        *w = Param::new(r.normals(classes * spec.row_len(), 0.01), true);
        *b = Param::new(vec![0.0; classes], true);
        self.shapes[out].0 = classes;
    }

    fn dims(&self, t: usize) -> Dims {
        let (c, h, w) = self.shapes[t];
        Dims {
            n: self.batch,
            h,
            w,
            c,
        }
    }

    /// Trainable parameters (values and gradients).
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut out = Vec::new();
        for n in &mut self.nodes {
            match &mut n.layer {
                Layer::Conv { w, b, bn, .. } => {
                    out.push(w);
                    out.push(b);
                    if let Some(bn) = bn {
                        out.push(&mut bn.gamma);
                        out.push(&mut bn.beta);
                    }
                }
                Layer::Affine { s, b, .. } => {
                    out.push(s);
                    out.push(b);
                }
                _ => {}
            }
        }
        out.retain(|p| p.trainable);
        out
    }

    /// The network has batch-norm layers (S/B or full patches).
    pub fn has_bn(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.layer, Layer::Conv { bn: Some(_), .. }))
    }

    /// The weights outside the patch: every conv's weights except the
    /// classifier's and (for DW patches) the depthwise kernels, and the
    /// biases of convs without batch-norm. In multi-task training these are
    /// the shared network.
    pub fn shared_params_mut(&mut self) -> Vec<&mut Param> {
        let head = self.head;
        let dw_patch = self.dw_patch;
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Layer::Conv { spec, w, b, bn, .. } = &mut n.layer {
                if i == head || (dw_patch && spec.is_depthwise()) {
                    continue;
                }
                out.push(w);
                if bn.is_none() {
                    out.push(b);
                }
            }
        }
        out
    }

    /// Makes the shared weights trainable (multi-task `--shared train`), at
    /// `lr_scale` times the run's learning rate.
    pub fn train_shared(&mut self, lr_scale: f32) {
        for p in self.shared_params_mut() {
            if !p.trainable {
                *p = Param::new(std::mem::take(&mut p.v), true);
            }
            p.lr_scale = lr_scale;
        }
    }

    /// Number of trainable values.
    pub fn trainable_count(&mut self) -> usize {
        self.params_mut().iter().map(|p| p.v.len()).sum()
    }

    /// Forward pass over `n` images given channels-last. Returns the logits
    /// `[n][classes]`.
    pub fn forward(&mut self, x: Vec<f32>, n: usize, mode: Mode) -> &[f32] {
        self.batch = n;
        debug_assert_eq!(x.len(), self.dims(self.input).len());
        self.vals[self.input] = x;
        let fused = self.fused_inputs();
        for i in 0..self.nodes.len() {
            let out = self.nodes[i].output;
            let od = self.dims(out);
            let ins = self.nodes[i].inputs.clone();
            let id = self.dims(ins[0]);
            let threads = self.threads;
            let (before, rest) = self.nodes.split_at_mut(i);
            let node = &mut rest[0];
            // The input, or (when it was not written out) the producer's
            // conv output and the batch-norm to apply to it.
            let pre = fused[ins[0]].then(|| {
                let p = before
                    .iter()
                    .find(|p| p.output == ins[0])
                    .expect("a fused tensor's producer comes first");
                let Layer::Conv {
                    bn: Some(bn),
                    act,
                    z,
                    ..
                } = &p.layer
                else {
                    unreachable!("fused_inputs marks conv + batch-norm outputs only");
                };
                (
                    &z[..],
                    norm::BnAct::new(&bn.bmean, &bn.binv, &bn.gamma.v, &bn.beta.v, *act),
                )
            });
            if fused[out] {
                // Only its consumer reads this output: it applies the
                // batch-norm to `z` itself (statistics set here).
                self.vals[out] = Vec::new();
                let Layer::Conv {
                    spec,
                    w,
                    bn: Some(bn),
                    z,
                    ..
                } = &mut node.layer
                else {
                    unreachable!("fused_inputs marks conv + batch-norm outputs only");
                };
                let (x, pre) = match &pre {
                    Some((z, op)) => (*z, Some(op)),
                    None => (&self.vals[ins[0]][..], None),
                };
                z.resize(od.len(), 0.0);
                let moments = (mode != Mode::Eval)
                    .then(|| k::conv_forward_moments(spec, x, id, &w.v, z, pre, threads));
                if moments.is_none() {
                    k::conv_forward(spec, x, id, &w.v, None, z, pre, threads);
                }
                bn_stats(bn, z, od.c, mode, moments);
                continue;
            }
            // Every layer writes all of its output: no need to clear.
            let mut y = std::mem::take(&mut self.vals[out]);
            y.resize(od.len(), 0.0);
            let vals = &self.vals;
            let x = match &pre {
                Some((z, _)) => *z,
                None => &vals[ins[0]][..],
            };
            let pre = pre.as_ref().map(|(_, op)| op);
            match &mut node.layer {
                Layer::Conv {
                    spec,
                    w,
                    b,
                    bn,
                    act,
                    z,
                } => match bn {
                    None => {
                        k::conv_forward(spec, x, id, &w.v, Some(&b.v), &mut y, pre, threads);
                        norm::act_apply(*act, &mut y, threads);
                    }
                    Some(bn) => {
                        z.resize(od.len(), 0.0);
                        let moments = if mode == Mode::Eval {
                            k::conv_forward(spec, x, id, &w.v, None, z, pre, threads);
                            None
                        } else {
                            Some(k::conv_forward_moments(spec, x, id, &w.v, z, pre, threads))
                        };
                        bn_stats(bn, z, od.c, mode, moments);
                        norm::bn_forward(
                            z,
                            od.c,
                            &bn.bmean,
                            &bn.binv,
                            &bn.gamma.v,
                            &bn.beta.v,
                            *act,
                            &mut y,
                            threads,
                        );
                    }
                },
                Layer::Affine { s, b, act } => {
                    for (yr, xr) in y.chunks_mut(od.c).zip(x.chunks(od.c)) {
                        for c in 0..od.c {
                            yr[c] = act.apply(xr[c] * s.v[c] + b.v[c]);
                        }
                    }
                }
                Layer::Add => {
                    let x2 = &vals[ins[1]];
                    crate::learn::par::for_each_piece(threads, &mut y, |off, piece| {
                        for ((o, a), b) in piece.iter_mut().zip(&x[off..]).zip(&x2[off..]) {
                            *o = a + b;
                        }
                    });
                }
                Layer::Mul => {
                    let x2 = &vals[ins[1]];
                    if x2.len() == x.len() {
                        for ((o, a), b) in y.iter_mut().zip(x).zip(x2) {
                            *o = a * b;
                        }
                    } else {
                        let hw = id.h * id.w * id.c;
                        for (img, (yo, xi)) in y.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
                            let gate = &x2[img * id.c..(img + 1) * id.c];
                            for (yr, xr) in yo.chunks_mut(id.c).zip(xi.chunks(id.c)) {
                                for c in 0..id.c {
                                    yr[c] = xr[c] * gate[c];
                                }
                            }
                        }
                    }
                }
                Layer::Unary(u) => {
                    let u = &*u;
                    crate::learn::par::for_each_piece(threads, &mut y, |off, piece| {
                        for (o, &v) in piece.iter_mut().zip(&x[off..]) {
                            *o = u.apply(v);
                        }
                    });
                }
                Layer::GlobalAvgPool => {
                    let hw = id.h * id.w;
                    for (img, yo) in y.chunks_mut(id.c).enumerate() {
                        let mut acc = vec![0f64; id.c];
                        for row in x[img * hw * id.c..(img + 1) * hw * id.c].chunks(id.c) {
                            for (a, &v) in acc.iter_mut().zip(row) {
                                *a += f64::from(v);
                            }
                        }
                        for (o, a) in yo.iter_mut().zip(acc) {
                            *o = (a / hw as f64) as f32;
                        }
                    }
                }
                Layer::Concat => {
                    let rows = od.rows();
                    let mut off = 0;
                    for &t in &ins {
                        let c = self.shapes[t].0;
                        let src = &vals[t];
                        for r in 0..rows {
                            y[r * od.c + off..r * od.c + off + c]
                                .copy_from_slice(&src[r * c..(r + 1) * c]);
                        }
                        off += c;
                    }
                }
                Layer::Reshape => y.copy_from_slice(x),
            }
            self.vals[out] = y;
        }
        &self.vals[self.output]
    }

    /// Tensors that are never written out: the output of a conv with
    /// batch-norm whose only reader is a depthwise or pointwise conv with
    /// frozen weights. That conv applies the batch-norm to its input block
    /// by block (the backward needs neither: the batch-norm's own backward
    /// works from `z`, and a frozen conv's input gradient does not read its
    /// input). Saves a write and a read of the largest tensors (the
    /// expanded ones of inverted residual blocks) per step.
    pub(super) fn fused_inputs(&self) -> Vec<bool> {
        let mut readers = vec![0usize; self.shapes.len()];
        for n in &self.nodes {
            for &t in &n.inputs {
                readers[t] += 1;
            }
        }
        let mut fused = vec![false; self.shapes.len()];
        if !self.fuse {
            return fused;
        }
        for q in &self.nodes {
            let Layer::Conv { spec, w, .. } = &q.layer else {
                continue;
            };
            let t = q.inputs[0];
            if w.trainable || !k::takes_pre(spec) || readers[t] != 1 || t == self.output {
                continue;
            }
            fused[t] = self
                .nodes
                .iter()
                .any(|p| p.output == t && matches!(&p.layer, Layer::Conv { bn: Some(_), .. }));
        }
        fused
    }

    /// Which tensors need a gradient: those downstream of a trainable parameter.
    fn needs_grad(&self) -> Vec<bool> {
        let mut need = vec![false; self.shapes.len()];
        for n in &self.nodes {
            let own = match &n.layer {
                Layer::Conv { w, b, bn, .. } => {
                    w.trainable || b.trainable || bn.as_ref().is_some_and(|bn| bn.gamma.trainable)
                }
                Layer::Affine { s, b, .. } => s.trainable || b.trainable,
                _ => false,
            };
            need[n.output] = own || n.inputs.iter().any(|&t| need[t]);
        }
        need
    }

    /// Backward pass from `dlogits` (after a [`Mode::Train`] forward of the
    /// same batch): adds every trainable parameter's gradient.
    pub fn backward(&mut self, dlogits: Vec<f32>) {
        let need = self.needs_grad();
        for g in self.grads.iter_mut() {
            if let Some(b) = g.take() {
                self.pool.push(b);
            }
        }
        self.grads[self.output] = Some(dlogits);
        let threads = self.threads;
        for i in (0..self.nodes.len()).rev() {
            let out = self.nodes[i].output;
            if !need[out] {
                continue;
            }
            let Some(mut dy) = self.grads[out].take() else {
                continue;
            };
            let ins = self.nodes[i].inputs.clone();
            let od = self.dims(out);
            let id = self.dims(ins[0]);
            let want0 = need[ins[0]];
            let mut dx0: Option<Vec<f32>> = None;
            let mut dx1: Option<Vec<f32>> = None;
            let vals = &self.vals;
            let x = &vals[ins[0]];
            match &mut self.nodes[i].layer {
                Layer::Conv {
                    spec,
                    w,
                    b,
                    bn,
                    act,
                    z,
                } => {
                    // The batch-norm's input gradient, applied over the
                    // whole tensor, or (a frozen depthwise or pointwise
                    // conv) block by block inside the conv's backward.
                    let mut pre = None;
                    let dz = match bn {
                        Some(bn) => {
                            // (applies the clamp's mask itself)
                            let (dg, db, op) = norm::bn_backward_sums(
                                z,
                                od.c,
                                &bn.bmean,
                                &bn.binv,
                                &bn.gamma.v,
                                &bn.beta.v,
                                *act,
                                &dy,
                                threads,
                            );
                            if bn.gamma.trainable {
                                k::add_into(&mut bn.gamma.g, &dg);
                                k::add_into(&mut bn.beta.g, &db);
                            }
                            if self.fuse && !w.trainable && k::takes_pre(spec) {
                                pre = Some(op);
                            } else {
                                op.apply_in_place(z, &mut dy, od.c, threads);
                            }
                            dy
                        }
                        None => {
                            norm::act_mask(*act, &vals[out], &mut dy, threads);
                            if b.trainable {
                                let s = norm::channel_sums(&dy, od.c, threads);
                                for (g, v) in b.g.iter_mut().zip(s) {
                                    *g += v as f32;
                                }
                            }
                            dy
                        }
                    };
                    let mut dx = want0.then(|| take_buf(&mut self.pool, id.len()));
                    if dx.is_some() || w.trainable {
                        k::conv_backward(
                            spec,
                            x,
                            id,
                            &w.v,
                            &dz,
                            dx.as_deref_mut(),
                            if w.trainable { Some(&mut w.g) } else { None },
                            pre.as_ref().map(|op| (&z[..], op)),
                            threads,
                        );
                    }
                    self.pool.push(dz);
                    dx0 = dx;
                }
                Layer::Affine { s, b, act } => {
                    norm::act_mask(*act, &vals[out], &mut dy, threads);
                    if s.trainable {
                        for (gr, xr) in dy.chunks(od.c).zip(x.chunks(od.c)) {
                            for c in 0..od.c {
                                s.g[c] += gr[c] * xr[c];
                                b.g[c] += gr[c];
                            }
                        }
                    }
                    if want0 {
                        for gr in dy.chunks_mut(od.c) {
                            for (g, sc) in gr.iter_mut().zip(&s.v) {
                                *g *= sc;
                            }
                        }
                        dx0 = Some(dy);
                    }
                }
                Layer::Add => {
                    if need[ins[1]] {
                        let mut d = take_buf(&mut self.pool, dy.len());
                        d.copy_from_slice(&dy);
                        dx1 = Some(d);
                    }
                    dx0 = Some(dy);
                }
                Layer::Mul => {
                    let x2 = &vals[ins[1]];
                    if x2.len() == x.len() {
                        if need[ins[1]] {
                            dx1 = Some(dy.iter().zip(x).map(|(g, a)| g * a).collect());
                        }
                        if want0 {
                            dx0 = Some(dy.iter().zip(x2).map(|(g, b)| g * b).collect());
                        }
                    } else {
                        let hw = id.h * id.w * id.c;
                        if need[ins[1]] {
                            let mut dg = vec![0f32; x2.len()];
                            for (img, (go, xi)) in dy.chunks(hw).zip(x.chunks(hw)).enumerate() {
                                let d = &mut dg[img * id.c..(img + 1) * id.c];
                                for (gr, xr) in go.chunks(id.c).zip(xi.chunks(id.c)) {
                                    for c in 0..id.c {
                                        d[c] += gr[c] * xr[c];
                                    }
                                }
                            }
                            dx1 = Some(dg);
                        }
                        if want0 {
                            for (img, go) in dy.chunks_mut(hw).enumerate() {
                                let gate = &x2[img * id.c..(img + 1) * id.c];
                                for gr in go.chunks_mut(id.c) {
                                    for (g, s) in gr.iter_mut().zip(gate) {
                                        *g *= s;
                                    }
                                }
                            }
                            dx0 = Some(dy);
                        }
                    }
                }
                Layer::Unary(u) => {
                    let u = &*u;
                    crate::learn::par::for_each_piece(threads, &mut dy, |off, piece| {
                        for (g, &v) in piece.iter_mut().zip(&x[off..]) {
                            *g *= k::unary_grad(u, v).1;
                        }
                    });
                    dx0 = Some(dy);
                }
                Layer::GlobalAvgPool => {
                    let hw = id.h * id.w;
                    let mut dx = take_buf(&mut self.pool, id.len());
                    for (img, g) in dy.chunks(id.c).enumerate() {
                        for row in dx[img * hw * id.c..(img + 1) * hw * id.c].chunks_mut(id.c) {
                            for c in 0..id.c {
                                row[c] = g[c] / hw as f32;
                            }
                        }
                    }
                    dx0 = Some(dx);
                }
                Layer::Concat => {
                    let rows = od.rows();
                    let mut off = 0;
                    for &t in &ins {
                        let c = self.shapes[t].0;
                        if need[t] {
                            let mut d = take_buf(&mut self.pool, rows * c);
                            for r in 0..rows {
                                d[r * c..(r + 1) * c]
                                    .copy_from_slice(&dy[r * od.c + off..r * od.c + off + c]);
                            }
                            add_grad(&mut self.grads[t], d, &mut self.pool, threads);
                        }
                        off += c;
                    }
                }
                Layer::Reshape => dx0 = Some(dy),
            }
            if let Some(d) = dx0.filter(|_| want0) {
                add_grad(&mut self.grads[ins[0]], d, &mut self.pool, threads);
            }
            if let Some(d) = dx1 {
                add_grad(&mut self.grads[ins[1]], d, &mut self.pool, threads);
            }
        }
    }

    /// Zeroes every gradient.
    pub fn zero_grads(&mut self) {
        for p in self.params_mut() {
            p.g.fill(0.0);
        }
    }
}

fn add_grad(slot: &mut Option<Vec<f32>>, d: Vec<f32>, pool: &mut Vec<Vec<f32>>, threads: usize) {
    match slot {
        Some(g) => {
            norm::add_into_par(g, &d, threads);
            pool.push(d);
        }
        None => *slot = Some(d),
    }
}

/// A buffer of `len` values (contents unspecified) from the pool of freed
/// gradient buffers: large batches would otherwise map and fault in fresh
/// pages for every gradient of every step.
fn take_buf(pool: &mut Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let best = pool
        .iter()
        .enumerate()
        .filter(|(_, b)| b.capacity() >= len)
        .min_by_key(|(_, b)| b.capacity())
        .map(|(i, _)| i);
    let mut v = match best {
        Some(i) => pool.swap_remove(i),
        None => Vec::with_capacity(len),
    };
    v.resize(len, 0.0);
    v.truncate(len);
    v
}

/// Converts NCHW samples to channels-last.
pub fn nchw_to_nhwc(x: &[f32], n: usize, (c, h, w): (usize, usize, usize), out: &mut Vec<f32>) {
    out.clear();
    out.resize(n * c * h * w, 0.0);
    if c == 1 {
        out.copy_from_slice(&x[..n * h * w]);
        return;
    }
    for i in 0..n {
        for ch in 0..c {
            for p in 0..h * w {
                out[(i * h * w + p) * c + ch] = x[(i * c + ch) * h * w + p];
            }
        }
    }
}
