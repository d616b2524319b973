//! Fusion passes over the working graph: batch-norm and per-channel affine
//! folding with clamp fusion, the final softmax, dead-code elimination, and
//! elementwise chains into one [`Unary`] expression.

use std::collections::{HashMap, HashSet};

use crate::ir::{Act, Expr, Unary};

use super::error::Res;
use super::graph::{BOp, Builder, Elt, UOp, WOp};

impl Builder {
    // -----------------------------------------------------------------------
    // Passes
    // -----------------------------------------------------------------------

    /// BN / per-channel affine ops folded into the preceding Conv or
    /// ChannelAffine (sole consumer, no activation yet) or made standalone
    /// ChannelAffines; Relu/Clip fused as `Act`.
    pub(super) fn fold_affine_pass(&mut self) -> Res<()> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let x = match self.nodes[i].inputs.first() {
                Some(&x) => x,
                None => continue,
            };
            let op = self.nodes[i].op.clone();
            let fold_target = self.producer(x).filter(|&p| {
                self.uses(x) == 1
                    && match &self.nodes[p].op {
                        WOp::Conv(c) => c.act == Act::None,
                        WOp::Affine { act, .. } => *act == Act::None,
                        _ => false,
                    }
            });
            match op {
                WOp::Bn { .. } | WOp::Chan { .. } => {
                    if let Some(p) = fold_target {
                        let out = self.nodes[i].output;
                        match &mut self.nodes[p].op {
                            WOp::Conv(c) => {
                                let rl = c.row_len();
                                apply_channel_op(&op, &mut c.weight, rl, &mut c.bias);
                            }
                            WOp::Affine { scale, bias, .. } => {
                                apply_channel_op(&op, scale, 1, bias)
                            }
                            _ => unreachable!(),
                        }
                        self.nodes[p].output = out;
                        self.nodes[i].alive = false;
                        continue;
                    }
                    let scalar = matches!(&op, WOp::Chan { c, .. } if c.len() == 1);
                    if scalar {
                        if let WOp::Chan {
                            op: bop,
                            c,
                            const_first,
                        } = op
                        {
                            self.nodes[i].op = WOp::Elt(Elt::BinC {
                                op: bop,
                                c: c[0],
                                const_first,
                            });
                        }
                    } else {
                        let ch = self.dims(x)[if self.dims(x).len() >= 2 { 1 } else { 0 }];
                        let mut scale = vec![1f32; ch];
                        let mut bias = vec![0f32; ch];
                        apply_channel_op(&op, &mut scale, 1, &mut bias);
                        self.nodes[i].op = WOp::Affine {
                            scale,
                            bias,
                            act: Act::None,
                        };
                    }
                }
                WOp::Elt(Elt::U(UOp::Relu | UOp::Clip(..)))
                | WOp::Elt(Elt::BinC {
                    op: BOp::Max | BOp::Min,
                    ..
                }) => {
                    // Clamps compose: fold into the producer's activation.
                    let Some(p) = self.producer(x).filter(|_| self.uses(x) == 1) else {
                        continue;
                    };
                    let cur = match &self.nodes[p].op {
                        WOp::Conv(c) => c.act,
                        WOp::Affine { act, .. } => *act,
                        _ => continue,
                    };
                    let (mut lo, mut hi) = match cur {
                        Act::None => (f32::NEG_INFINITY, f32::INFINITY),
                        Act::Relu => (0.0, f32::INFINITY),
                        Act::Clip(l, h) => (l, h),
                    };
                    match op {
                        WOp::Elt(Elt::U(UOp::Relu)) => lo = lo.max(0.0),
                        WOp::Elt(Elt::U(UOp::Clip(l, h))) => {
                            lo = lo.max(l);
                            hi = hi.min(h);
                        }
                        WOp::Elt(Elt::BinC {
                            op: BOp::Max, c, ..
                        }) => lo = lo.max(c),
                        WOp::Elt(Elt::BinC {
                            op: BOp::Min, c, ..
                        }) => hi = hi.min(c),
                        _ => unreachable!(),
                    }
                    if lo.is_nan() || hi.is_nan() || lo > hi {
                        continue;
                    }
                    let act = if lo == f32::NEG_INFINITY && hi == f32::INFINITY {
                        Act::None
                    } else if lo == 0.0 && hi == f32::INFINITY {
                        Act::Relu
                    } else {
                        Act::Clip(lo, hi)
                    };
                    match &mut self.nodes[p].op {
                        WOp::Conv(c) => c.act = act,
                        WOp::Affine { act: a, .. } => *a = act,
                        _ => unreachable!(),
                    }
                    self.nodes[p].output = self.nodes[i].output;
                    self.nodes[i].alive = false;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A Softmax producing the graph output (possibly followed by reshapes
    /// of the class vector) is dropped and recorded.
    pub(super) fn softmax_tail(&mut self) {
        let mut v = self.output;
        let mut last_reshape = None;
        while let Some(p) = self.producer(v) {
            match self.nodes[p].op {
                WOp::Reshape => {
                    last_reshape = Some(p);
                    v = self.nodes[p].inputs[0];
                }
                WOp::Softmax => {
                    let src = self.nodes[p].inputs[0];
                    if self.uses(v) != 1 {
                        return;
                    }
                    match last_reshape {
                        None => self.output = src,
                        Some(r) => self.nodes[r].inputs[0] = src,
                    }
                    self.nodes[p].alive = false;
                    self.output_softmax = true;
                    return;
                }
                _ => return,
            }
        }
    }

    pub(super) fn dce(&mut self) {
        let mut live_vals = HashSet::new();
        live_vals.insert(self.output);
        for i in (0..self.nodes.len()).rev() {
            if !self.nodes[i].alive {
                continue;
            }
            if live_vals.contains(&self.nodes[i].output) {
                for &v in &self.nodes[i].inputs {
                    live_vals.insert(v);
                }
            } else {
                self.nodes[i].alive = false;
            }
        }
    }

    /// Groups of elementwise nodes over one activation -> one Unary.
    pub(super) fn expr_pass(&mut self) -> Res<()> {
        let n = self.nodes.len();
        let mut cand: Vec<bool> = self
            .nodes
            .iter()
            .map(|nd| nd.alive && matches!(nd.op, WOp::Elt(_)))
            .collect();
        let mut prod: HashMap<usize, usize> = HashMap::new();
        for (i, nd) in self.nodes.iter().enumerate() {
            if nd.alive {
                prod.insert(nd.output, i);
            }
        }
        let mut consumers: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, nd) in self.nodes.iter().enumerate() {
            if nd.alive {
                for &v in &nd.inputs {
                    consumers.entry(v).or_default().push(i);
                }
            }
        }
        let output = self.output;
        let mut root = vec![usize::MAX; n];
        let mut absorbed = vec![false; n];
        loop {
            let mut changed = false;
            for i in 0..n {
                absorbed[i] = cand[i]
                    && self.nodes[i].output != output
                    && consumers
                        .get(&self.nodes[i].output)
                        .is_some_and(|cs| cs.iter().all(|&c| cand[c]));
            }
            for i in 0..n {
                if !cand[i] {
                    continue;
                }
                let mut r = None;
                let mut same = true;
                for &v in &self.nodes[i].inputs {
                    let rv = match prod.get(&v) {
                        Some(&p) if cand[p] && absorbed[p] => root[p],
                        _ => v,
                    };
                    match r {
                        None => r = Some(rv),
                        Some(r0) if r0 != rv => same = false,
                        _ => {}
                    }
                }
                if same {
                    root[i] = r.unwrap();
                } else {
                    cand[i] = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Materialize.
        let mut new_ops: Vec<(usize, Unary, usize)> = Vec::new();
        for i in 0..n {
            if cand[i] && !absorbed[i] {
                let e = self.build_expr(self.nodes[i].output, root[i], &prod);
                let u = to_unary(&e);
                new_ops.push((i, u, root[i]));
            }
        }
        for (i, u, r) in new_ops {
            self.nodes[i].op = WOp::Unary(u);
            self.nodes[i].inputs = vec![r];
        }
        Ok(())
    }

    /// Expression of value `v` in terms of `root`; every node between them is
    /// an absorbed elementwise node (guaranteed by the grouping).
    pub(super) fn build_expr(&self, v: usize, root: usize, prod: &HashMap<usize, usize>) -> WExpr {
        if v == root {
            return WExpr::X;
        }
        let nd = &self.nodes[prod[&v]];
        let sub = |k: usize| Box::new(self.build_expr(nd.inputs[k], root, prod));
        match &nd.op {
            WOp::Elt(Elt::U(u)) => WExpr::U(*u, sub(0)),
            WOp::Elt(Elt::BinC { op, c, const_first }) => {
                if *const_first {
                    WExpr::B(*op, Box::new(WExpr::C(*c)), sub(0))
                } else {
                    WExpr::B(*op, sub(0), Box::new(WExpr::C(*c)))
                }
            }
            WOp::Elt(Elt::Bin2(op)) => WExpr::B(*op, sub(0), sub(1)),
            _ => unreachable!("non-elementwise node inside an expression group"),
        }
    }
}

pub(super) fn transpose2(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Apply a per-output-channel op to `(weights rows, bias)`.
pub(super) fn apply_channel_op(op: &WOp, w: &mut [f32], row_len: usize, bias: &mut [f32]) {
    let n = bias.len();
    match op {
        WOp::Bn { s, mean, beta } => {
            for o in 0..n {
                for v in &mut w[o * row_len..(o + 1) * row_len] {
                    *v *= s[o];
                }
                bias[o] = (bias[o] - mean[o]) * s[o] + beta[o];
            }
        }
        WOp::Chan { op, c, const_first } => {
            for o in 0..n {
                let k = if c.len() == 1 { c[0] } else { c[o] };
                let row = &mut w[o * row_len..(o + 1) * row_len];
                match (op, const_first) {
                    (BOp::Add, _) => bias[o] += k,
                    (BOp::Sub, false) => bias[o] -= k,
                    (BOp::Sub, true) => {
                        row.iter_mut().for_each(|v| *v = -*v);
                        bias[o] = k - bias[o];
                    }
                    (BOp::Mul, _) => {
                        row.iter_mut().for_each(|v| *v *= k);
                        bias[o] *= k;
                    }
                    (BOp::Div, false) => {
                        row.iter_mut().for_each(|v| *v /= k);
                        bias[o] /= k;
                    }
                    _ => unreachable!("not an affine op"),
                }
            }
        }
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------
// Elementwise expressions
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub(super) enum WExpr {
    X,
    C(f32),
    U(UOp, Box<WExpr>),
    B(BOp, Box<WExpr>, Box<WExpr>),
}

pub(super) fn to_unary(e: &WExpr) -> Unary {
    use WExpr::*;
    match e {
        U(u, x) if **x == X => match *u {
            UOp::Relu => return Unary::Relu,
            UOp::Clip(lo, hi) if lo == 0.0 && hi == f32::INFINITY => return Unary::Relu,
            UOp::Clip(lo, hi) => return Unary::Clip(lo, hi),
            UOp::LeakyRelu(alpha) => return Unary::LeakyRelu { alpha },
            UOp::HardSigmoid(alpha, beta) => return Unary::HardSigmoid { alpha, beta },
            UOp::HardSwish => {
                return Unary::HardSwish {
                    alpha: 1.0 / 6.0,
                    beta: 0.5,
                }
            }
            UOp::Sigmoid => return Unary::Sigmoid,
            UOp::Tanh => return Unary::Tanh,
            _ => {}
        },
        B(BOp::Mul, a, b) => {
            let (a, b) = (&**a, &**b);
            for (p, q) in [(a, b), (b, a)] {
                if *p == X {
                    match q {
                        U(UOp::HardSigmoid(alpha, beta), y) if **y == X => {
                            return Unary::HardSwish {
                                alpha: *alpha,
                                beta: *beta,
                            };
                        }
                        U(UOp::Sigmoid, y) if **y == X => return Unary::Swish,
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
    Unary::Expr(lower_expr(e))
}

pub(super) fn bx(e: Expr) -> Box<Expr> {
    Box::new(e)
}

pub(super) fn lower_expr(e: &WExpr) -> Expr {
    match e {
        WExpr::X => Expr::X,
        WExpr::C(c) => Expr::Const(*c),
        WExpr::B(op, a, b) => {
            let (la, lb) = (lower_expr(a), lower_expr(b));
            match op {
                BOp::Add => Expr::Add(bx(la), bx(lb)),
                BOp::Sub => Expr::Sub(bx(la), bx(lb)),
                BOp::Mul => Expr::Mul(bx(la), bx(lb)),
                BOp::Div => Expr::Div(bx(la), bx(lb)),
                BOp::Max => Expr::Max(bx(la), bx(lb)),
                BOp::Min => Expr::Min(bx(la), bx(lb)),
                BOp::Pow => {
                    // Exponent validated at lowering: a constant in 0..=4.
                    let n = match **b {
                        WExpr::C(c) => c as u32,
                        _ => unreachable!(),
                    };
                    if n == 0 {
                        return Expr::Const(1.0);
                    }
                    let mut acc = la.clone();
                    for _ in 1..n {
                        acc = Expr::Mul(bx(acc), bx(la.clone()));
                    }
                    acc
                }
            }
        }
        WExpr::U(u, a) => {
            let x = lower_expr(a);
            let c = Expr::Const;
            match *u {
                UOp::Relu => Expr::Max(bx(x), bx(c(0.0))),
                UOp::Clip(lo, hi) => {
                    let mut y = x;
                    if lo > f32::NEG_INFINITY {
                        y = Expr::Max(bx(y), bx(c(lo)));
                    }
                    if hi < f32::INFINITY {
                        y = Expr::Min(bx(y), bx(c(hi)));
                    }
                    y
                }
                UOp::LeakyRelu(al) => {
                    let ax = Expr::Mul(bx(c(al)), bx(x.clone()));
                    if al <= 1.0 {
                        Expr::Max(bx(x), bx(ax))
                    } else {
                        Expr::Min(bx(x), bx(ax))
                    }
                }
                UOp::HardSigmoid(al, be) => hard_sigmoid(x, al, be),
                UOp::HardSwish => Expr::Mul(bx(x.clone()), bx(hard_sigmoid(x, 1.0 / 6.0, 0.5))),
                UOp::Sigmoid => Expr::Sigmoid(bx(x)),
                UOp::Tanh => Expr::Tanh(bx(x)),
                UOp::Neg => Expr::Neg(bx(x)),
                UOp::Exp => Expr::Exp(bx(x)),
                UOp::Abs => Expr::Max(bx(x.clone()), bx(Expr::Neg(bx(x)))),
                UOp::Reciprocal => Expr::Div(bx(c(1.0)), bx(x)),
                UOp::Elu(al) => elu(x, al),
                UOp::Selu(al, g) => Expr::Mul(bx(c(g)), bx(elu(x, al))),
                UOp::Softsign => Expr::Div(
                    bx(x.clone()),
                    bx(Expr::Add(
                        bx(c(1.0)),
                        bx(Expr::Max(bx(x.clone()), bx(Expr::Neg(bx(x))))),
                    )),
                ),
            }
        }
    }
}

pub(super) fn hard_sigmoid(x: Expr, alpha: f32, beta: f32) -> Expr {
    let lin = Expr::Add(
        bx(Expr::Mul(bx(Expr::Const(alpha)), bx(x))),
        bx(Expr::Const(beta)),
    );
    Expr::Max(
        bx(Expr::Const(0.0)),
        bx(Expr::Min(bx(Expr::Const(1.0)), bx(lin))),
    )
}

/// `x > 0 ? x : alpha * (exp(x) - 1)` as `max(x, 0) + alpha * (exp(min(x, 0)) - 1)`.
pub(super) fn elu(x: Expr, alpha: f32) -> Expr {
    let pos = Expr::Max(bx(x.clone()), bx(Expr::Const(0.0)));
    let neg = Expr::Mul(
        bx(Expr::Const(alpha)),
        bx(Expr::Sub(
            bx(Expr::Exp(bx(Expr::Min(bx(x), bx(Expr::Const(0.0)))))),
            bx(Expr::Const(1.0)),
        )),
    );
    Expr::Add(bx(pos), bx(neg))
}
