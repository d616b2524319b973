//! Lowering: one ONNX node over activations to working-graph nodes;
//! nodes over constants only go to [`eval_const`].

use std::rc::Rc;

use tract_onnx::pb;

use crate::ir::{Act, Conv, Pool};

use super::decode::{numel, Attrs, Tensor};
use super::error::{Ctx, Res};
use super::fold::{constant_attr, eval_const, is_perm};
use super::fuse::transpose2;
use super::graph::{ir_shape_of, BOp, Builder, Elt, UOp, Val, WOp};
use super::shape::{
    bcast_dims, norm_axis, pair, per_channel, reshape_dims, squeeze_dims, unsqueeze_dims, window,
};

impl Builder {
    pub(super) fn lower(&mut self, idx: usize, n: &pb::NodeProto) -> Res<()> {
        let name = if n.name.is_empty() {
            format!("{}#{}", n.op_type, idx)
        } else {
            n.name.clone()
        };
        let ctx = Ctx {
            name,
            op: n.op_type.clone(),
        };
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(
                ctx.unsupported_op(format!("operator domain '{}' is not supported", n.domain))
            );
        }
        let a = Attrs(&n.attribute);
        let mut ins: Vec<Option<Val>> = Vec::with_capacity(n.input.len());
        for s in &n.input {
            if s.is_empty() {
                ins.push(None);
            } else {
                ins.push(Some(self.vals.get(s).cloned().ok_or_else(|| {
                    ctx.malformed(format!("reads undefined value '{s}'"))
                })?));
            }
        }
        let out0 = n.output.first().cloned().unwrap_or_default();
        if out0.is_empty() {
            return Err(ctx.malformed("node has no output"));
        }
        if n.op_type == "Constant" {
            let t = constant_attr(&a).map_err(|why| ctx.unsupported(why))?;
            self.vals.insert(out0, Val::Const(Rc::new(t)));
            return Ok(());
        }
        let any_act = ins.iter().any(|v| matches!(v, Some(Val::Act(_))));
        if !any_act {
            let cins: Vec<Option<Rc<Tensor>>> = ins
                .iter()
                .map(|v| {
                    v.as_ref().map(|v| {
                        if let Val::Const(t) = v {
                            t.clone()
                        } else {
                            unreachable!()
                        }
                    })
                })
                .collect();
            if cins.iter().all(|v| v.is_none()) {
                return Err(ctx.unsupported_op("node without inputs (only Constant is supported)"));
            }
            let outs = eval_const(&ctx, &a, &cins, self.opset)?;
            for (name, t) in n.output.iter().zip(outs) {
                if !name.is_empty() {
                    self.vals.insert(name.clone(), Val::Const(Rc::new(t)));
                }
            }
            return Ok(());
        }
        self.lower_act(&ctx, &a, &ins, &out0)
    }

    pub(super) fn act_in(&self, ctx: &Ctx, ins: &[Option<Val>], i: usize) -> Res<usize> {
        match ins.get(i) {
            Some(Some(Val::Act(a))) => Ok(*a),
            Some(Some(Val::Const(_))) => Err(ctx.unsupported(format!(
                "input {i} is a constant where an activation is expected"
            ))),
            _ => Err(ctx.malformed(format!("missing input {i}"))),
        }
    }

    pub(super) fn const_in(&self, ctx: &Ctx, ins: &[Option<Val>], i: usize) -> Res<Rc<Tensor>> {
        match ins.get(i) {
            Some(Some(Val::Const(t))) => Ok(t.clone()),
            Some(Some(Val::Act(_))) => Err(ctx.unsupported(format!(
                "input {i} must be a constant (it is computed at run time)"
            ))),
            _ => Err(ctx.malformed(format!("missing input {i}"))),
        }
    }

    pub(super) fn opt_const_in(
        &self,
        ctx: &Ctx,
        ins: &[Option<Val>],
        i: usize,
    ) -> Res<Option<Rc<Tensor>>> {
        match ins.get(i) {
            None | Some(None) => Ok(None),
            Some(Some(_)) => self.const_in(ctx, ins, i).map(Some),
        }
    }

    pub(super) fn alias(&mut self, out: &str, v: usize) {
        self.vals.insert(out.to_string(), Val::Act(v));
    }

    pub(super) fn lower_act(
        &mut self,
        ctx: &Ctx,
        a: &Attrs,
        ins: &[Option<Val>],
        out: &str,
    ) -> Res<()> {
        let opset = self.opset;
        match ctx.op.as_str() {
            "Identity" | "Dropout" => {
                let x = self.act_in(ctx, ins, 0)?;
                self.alias(out, x);
            }
            "Cast" | "CastLike" => {
                let x = self.act_in(ctx, ins, 0)?;
                let to = a.int("to").unwrap_or(1);
                if ctx.op == "Cast" && ![1, 10, 11, 16].contains(&to) {
                    return Err(ctx.unsupported(format!("cast of an activation to data type {to}")));
                }
                self.alias(out, x);
            }
            "Shape" | "Size" => {
                let x = self.act_in(ctx, ins, 0)?;
                let mut d: Vec<i64> = match (&self.input_nhwc_dims, x == self.input) {
                    (Some(nd), true) => nd.iter().map(|&v| v as i64).collect(),
                    _ => self.dims(x).iter().map(|&v| v as i64).collect(),
                };
                let t = if ctx.op == "Size" {
                    Tensor::i(vec![], vec![d.iter().product()])
                } else {
                    let r = d.len() as i64;
                    let clampi =
                        |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
                    let s = clampi(a.int("start").unwrap_or(0));
                    let e = clampi(a.int("end").unwrap_or(r));
                    d = if s < e { d[s..e].to_vec() } else { vec![] };
                    Tensor::i(vec![d.len()], d)
                };
                self.vals.insert(out.to_string(), Val::Const(Rc::new(t)));
            }
            "Conv" => self.lower_conv(ctx, a, ins, out)?,
            "BatchNormalization" => {
                let x = self.act_in(ctx, ins, 0)?;
                if a.int("training_mode").unwrap_or(0) != 0 {
                    return Err(ctx.unsupported("training_mode=1"));
                }
                if opset < 9 && a.int("spatial").unwrap_or(1) != 1 {
                    return Err(ctx.unsupported("spatial=0"));
                }
                let xd = self.dims(x).to_vec();
                if xd.len() < 2 {
                    return Err(ctx.unsupported(format!("input of rank {}", xd.len())));
                }
                let c = xd[1];
                let mut p = Vec::new();
                for i in 1..5 {
                    let t = self.const_in(ctx, ins, i)?;
                    if t.len() != c {
                        return Err(ctx.malformed(format!(
                            "parameter {i} has {} values for {c} channels",
                            t.len()
                        )));
                    }
                    p.push(t.f32s());
                }
                let eps = a.float("epsilon").unwrap_or(1e-5);
                let s: Vec<f32> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
                let beta = p[1].clone();
                let mean = p[2].clone();
                self.push(ctx, WOp::Bn { s, mean, beta }, vec![x], out, xd)?;
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" => {
                let present: Vec<&Val> = ins.iter().flatten().collect();
                if present.len() == 1 {
                    let x = self.act_in(ctx, ins, 0)?;
                    self.alias(out, x);
                    return Ok(());
                }
                if present.len() != 2 {
                    return Err(ctx.unsupported(format!("{} operands (only 2)", present.len())));
                }
                let op = match ctx.op.as_str() {
                    "Add" | "Sum" => BOp::Add,
                    "Sub" => BOp::Sub,
                    "Mul" => BOp::Mul,
                    "Div" => BOp::Div,
                    "Pow" => BOp::Pow,
                    "Max" => BOp::Max,
                    _ => BOp::Min,
                };
                match (present[0], present[1]) {
                    (Val::Act(x), Val::Act(y)) => {
                        let (x, y) = (*x, *y);
                        if op == BOp::Pow {
                            return Err(ctx.unsupported("Pow of two activations"));
                        }
                        let d = bcast_dims(self.dims(x), self.dims(y)).ok_or_else(|| {
                            ctx.malformed(format!(
                                "shapes {:?} and {:?} do not broadcast",
                                self.dims(x),
                                self.dims(y)
                            ))
                        })?;
                        self.push(ctx, WOp::Elt(Elt::Bin2(op)), vec![x, y], out, d)?;
                    }
                    (Val::Act(x), Val::Const(t)) => {
                        self.lower_bin_const(ctx, op, *x, t, false, out)?
                    }
                    (Val::Const(t), Val::Act(x)) => {
                        self.lower_bin_const(ctx, op, *x, t, true, out)?
                    }
                    _ => unreachable!(),
                }
            }
            "Relu" | "Clip" | "LeakyRelu" | "HardSigmoid" | "HardSwish" | "Sigmoid" | "Tanh"
            | "Neg" | "Exp" | "Abs" | "Reciprocal" | "Elu" | "Selu" | "Softsign" | "PRelu" => {
                let x = self.act_in(ctx, ins, 0)?;
                let u = match ctx.op.as_str() {
                    "Relu" => UOp::Relu,
                    "Clip" => {
                        let (lo, hi) = if opset < 11 {
                            (
                                a.float("min").unwrap_or(f32::NEG_INFINITY),
                                a.float("max").unwrap_or(f32::INFINITY),
                            )
                        } else {
                            let lo = self.opt_const_in(ctx, ins, 1)?;
                            let hi = self.opt_const_in(ctx, ins, 2)?;
                            let sc = |t: Option<Rc<Tensor>>, d: f32| -> Res<f32> {
                                match t {
                                    None => Ok(d),
                                    Some(t) => t
                                        .scalar_f32()
                                        .ok_or_else(|| ctx.unsupported("non-scalar Clip bound")),
                                }
                            };
                            (sc(lo, f32::NEG_INFINITY)?, sc(hi, f32::INFINITY)?)
                        };
                        UOp::Clip(lo, hi)
                    }
                    "LeakyRelu" => UOp::LeakyRelu(a.float("alpha").unwrap_or(0.01)),
                    "HardSigmoid" => UOp::HardSigmoid(
                        a.float("alpha").unwrap_or(0.2),
                        a.float("beta").unwrap_or(0.5),
                    ),
                    "HardSwish" => UOp::HardSwish,
                    "Sigmoid" => UOp::Sigmoid,
                    "Tanh" => UOp::Tanh,
                    "Neg" => UOp::Neg,
                    "Exp" => UOp::Exp,
                    "Abs" => UOp::Abs,
                    "Reciprocal" => UOp::Reciprocal,
                    "Elu" => UOp::Elu(a.float("alpha").unwrap_or(1.0)),
                    "Selu" => UOp::Selu(
                        a.float("alpha").unwrap_or(1.673_263_2),
                        a.float("gamma").unwrap_or(1.050_701),
                    ),
                    "Softsign" => UOp::Softsign,
                    _ => {
                        let slope = self.const_in(ctx, ins, 1)?;
                        match slope.scalar_f32() {
                            Some(s) => UOp::LeakyRelu(s),
                            None => {
                                return Err(ctx.unsupported(
                                    "PRelu with a per-channel slope (only a scalar slope)",
                                ));
                            }
                        }
                    }
                };
                let d = self.dims(x).to_vec();
                self.push(ctx, WOp::Elt(Elt::U(u)), vec![x], out, d)?;
            }
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                if d.len() != 4 {
                    return Err(ctx.unsupported(format!("input of rank {} (only NCHW)", d.len())));
                }
                let op = if ctx.op == "GlobalAveragePool" {
                    WOp::Gap
                } else {
                    WOp::MaxPool(Pool {
                        kh: d[2],
                        kw: d[3],
                        stride: (1, 1),
                        pads: [0; 4],
                        count_include_pad: false,
                    })
                };
                self.push(ctx, op, vec![x], out, vec![1, d[1], 1, 1])?;
            }
            "ReduceMean" | "ReduceMax" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let axes = match a.ints("axes") {
                    Some(v) => Some(v),
                    None => self.opt_const_in(ctx, ins, 1)?.map(|t| t.i64s()),
                };
                let keep = a.int("keepdims").unwrap_or(1) != 0;
                let mut ax: Vec<usize> = match axes {
                    Some(v) if !v.is_empty() => v
                        .iter()
                        .map(|&v| norm_axis(ctx, v, d.len()))
                        .collect::<Res<_>>()?,
                    _ if a.int("noop_with_empty_axes").unwrap_or(0) != 0 => vec![],
                    _ => (0..d.len()).collect(),
                };
                ax.sort();
                ax.dedup();
                // Only a reduction over the whole H x W plane (reducing size-1
                // dims is a no-op).
                let ok = d.len() == 4
                    && (0..2).all(|i| !ax.contains(&i) || d[i] == 1)
                    && (2..4).all(|i| ax.contains(&i) || d[i] == 1);
                if !ok {
                    return Err(ctx.unsupported(format!(
                        "{} over axes {:?} of a {:?} tensor (only over H and W)",
                        ctx.op, ax, d
                    )));
                }
                let od: Vec<usize> = if keep {
                    d.iter()
                        .enumerate()
                        .map(|(i, &v)| if ax.contains(&i) { 1 } else { v })
                        .collect()
                } else {
                    d.iter()
                        .enumerate()
                        .filter(|(i, _)| !ax.contains(i))
                        .map(|(_, &v)| v)
                        .collect()
                };
                if d[2] == 1 && d[3] == 1 {
                    if od == d {
                        self.alias(out, x);
                    } else {
                        self.push(ctx, WOp::Reshape, vec![x], out, od)?;
                    }
                    return Ok(());
                }
                let op = if ctx.op == "ReduceMean" {
                    WOp::Gap
                } else {
                    WOp::MaxPool(Pool {
                        kh: d[2],
                        kw: d[3],
                        stride: (1, 1),
                        pads: [0; 4],
                        count_include_pad: false,
                    })
                };
                if od == [1, d[1], 1, 1] {
                    self.push(ctx, op, vec![x], out, od)?;
                } else {
                    // keepdims=0: pool, then reshape (same memory order).
                    let tmp = format!("{out}#pooled");
                    let p = self.push(ctx, op, vec![x], &tmp, vec![1, d[1], 1, 1])?;
                    self.push(ctx, WOp::Reshape, vec![p], out, od)?;
                }
            }
            "AveragePool" | "MaxPool" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                if d.len() != 4 {
                    return Err(
                        ctx.unsupported(format!("input of rank {} (only 2-D pooling)", d.len()))
                    );
                }
                let k = a
                    .ints("kernel_shape")
                    .ok_or_else(|| ctx.malformed("missing kernel_shape"))?;
                let k = pair(ctx, Some(k), 1, "kernel_shape")?;
                let s = pair(ctx, a.ints("strides"), 1, "strides")?;
                let dil = pair(ctx, a.ints("dilations"), 1, "dilations")?;
                if dil != (1, 1) {
                    return Err(ctx.unsupported(format!("dilations {dil:?} (only 1)")));
                }
                let ceil = a.int("ceil_mode").unwrap_or(0) != 0;
                let ap = a.string("auto_pad").unwrap_or_default();
                let (pads, (oh, ow)) = window(ctx, (d[2], d[3]), k, s, &ap, a.ints("pads"), ceil)?;
                let pool = Pool {
                    kh: k.0,
                    kw: k.1,
                    stride: s,
                    pads,
                    count_include_pad: a.int("count_include_pad").unwrap_or(0) != 0,
                };
                let op = if ctx.op == "MaxPool" {
                    WOp::MaxPool(pool)
                } else {
                    WOp::AvgPool(pool)
                };
                self.push(ctx, op, vec![x], out, vec![1, d[1], oh, ow])?;
            }
            "Concat" => {
                let mut xs = Vec::new();
                for v in ins {
                    match v {
                        Some(Val::Act(x)) => xs.push(*x),
                        Some(Val::Const(t)) if t.len() == 0 => {}
                        Some(Val::Const(_)) => {
                            return Err(
                                ctx.unsupported("concatenation of an activation with a constant")
                            );
                        }
                        None => {}
                    }
                }
                if xs.len() == 1 {
                    self.alias(out, xs[0]);
                    return Ok(());
                }
                let d0 = self.dims(xs[0]).to_vec();
                let axis = norm_axis(
                    ctx,
                    a.int("axis").ok_or_else(|| ctx.malformed("missing axis"))?,
                    d0.len(),
                )?;
                let mut od = d0.clone();
                od[axis] = 0;
                for &x in &xs {
                    let d = self.dims(x);
                    if d.len() != d0.len() || (0..d.len()).any(|i| i != axis && d[i] != d0[i]) {
                        return Err(ctx.malformed(format!("concat of shapes {:?} and {:?}", d0, d)));
                    }
                    od[axis] += d[axis];
                }
                if axis != 1 || d0.len() < 2 {
                    return Err(ctx.unsupported(format!(
                        "concatenation along axis {axis} of {:?} tensors (only along channels)",
                        d0
                    )));
                }
                self.push(ctx, WOp::Concat, xs, out, od)?;
            }
            "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Transpose" | "Expand" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let od: Vec<usize> = match ctx.op.as_str() {
                    "Flatten" => {
                        let ax = a.int("axis").unwrap_or(1);
                        let ax = if ax < 0 { ax + d.len() as i64 } else { ax } as usize;
                        if ax > d.len() {
                            return Err(ctx.malformed("axis out of range"));
                        }
                        vec![numel(&d[..ax]), numel(&d[ax..])]
                    }
                    "Reshape" => {
                        let shape = self.const_in(ctx, ins, 1)?.i64s();
                        reshape_dims(&d, &shape, a.int("allowzero").unwrap_or(0) != 0)
                            .map_err(|e| ctx.malformed(e))?
                    }
                    "Squeeze" => {
                        let axes = if opset < 13 {
                            a.ints("axes")
                        } else {
                            self.opt_const_in(ctx, ins, 1)?.map(|t| t.i64s())
                        };
                        squeeze_dims(&d, axes).map_err(|e| ctx.malformed(e))?
                    }
                    "Unsqueeze" => {
                        let axes = if opset < 13 {
                            a.ints("axes")
                                .ok_or_else(|| ctx.malformed("missing axes"))?
                        } else {
                            self.const_in(ctx, ins, 1)?.i64s()
                        };
                        unsqueeze_dims(&d, &axes).map_err(|e| ctx.malformed(e))?
                    }
                    "Expand" => {
                        let shape: Vec<usize> = self
                            .const_in(ctx, ins, 1)?
                            .i64s()
                            .iter()
                            .map(|&v| v.max(0) as usize)
                            .collect();
                        let od = bcast_dims(&d, &shape)
                            .ok_or_else(|| ctx.malformed("shapes do not broadcast"))?;
                        if numel(&od) != numel(&d) {
                            return Err(ctx.unsupported(format!(
                                "Expand of an activation from {d:?} to {od:?}"
                            )));
                        }
                        od
                    }
                    _ => {
                        let perm: Vec<usize> = match a.ints("perm") {
                            Some(p) => p
                                .iter()
                                .map(|&v| norm_axis(ctx, v, d.len()))
                                .collect::<Res<_>>()?,
                            None => (0..d.len()).rev().collect(),
                        };
                        if !is_perm(&perm, d.len()) {
                            return Err(ctx.malformed(format!("invalid perm {perm:?}")));
                        }
                        if perm.len() != d.len() {
                            return Err(ctx.malformed("perm length differs from the rank"));
                        }
                        if x == self.input && self.input_nhwc_dims.is_some() && perm == [0, 3, 1, 2]
                        {
                            self.alias(out, x);
                            return Ok(());
                        }
                        // Order-preserving iff the non-1 axes keep their order.
                        let moved: Vec<usize> =
                            perm.iter().copied().filter(|&p| d[p] != 1).collect();
                        if moved.windows(2).any(|w| w[0] > w[1]) {
                            return Err(ctx.unsupported(format!(
                                "Transpose {perm:?} of an activation of shape {d:?} changes the memory order"
                            )));
                        }
                        perm.iter().map(|&p| d[p]).collect()
                    }
                };
                if numel(&od) != numel(&d) {
                    return Err(ctx.malformed(format!("reshape of {d:?} to {od:?}")));
                }
                if od == d {
                    self.alias(out, x);
                } else {
                    self.push(ctx, WOp::Reshape, vec![x], out, od)?;
                }
            }
            "Gemm" => {
                let x = self.act_in(ctx, ins, 0)?;
                let b = self.const_in(ctx, ins, 1)?;
                let c = self.opt_const_in(ctx, ins, 2)?;
                if a.int("transA").unwrap_or(0) != 0 {
                    return Err(ctx.unsupported("Gemm with transA=1"));
                }
                let trans_b = a.int("transB").unwrap_or(0) != 0;
                let alpha = a.float("alpha").unwrap_or(1.0);
                let beta = a.float("beta").unwrap_or(1.0);
                let xd = self.dims(x).to_vec();
                if xd.len() != 2 || xd[0] != 1 || b.dims.len() != 2 {
                    return Err(ctx.unsupported(format!(
                        "Gemm of {:?} by {:?} (only a [1, K] activation)",
                        xd, b.dims
                    )));
                }
                let k = xd[1];
                let (bk, bn) = if trans_b {
                    (b.dims[1], b.dims[0])
                } else {
                    (b.dims[0], b.dims[1])
                };
                if bk != k {
                    return Err(ctx.malformed(format!("Gemm of {:?} by {:?}", xd, b.dims)));
                }
                let bv = b.f32s();
                let mut w = if trans_b { bv } else { transpose2(&bv, k, bn) };
                if alpha != 1.0 {
                    w.iter_mut().for_each(|v| *v *= alpha);
                }
                let mut bias = vec![0f32; bn];
                if let Some(c) = c {
                    let cv = c.f32s();
                    if cv.len() == bn && per_channel(&[1, bn], &c.dims).is_some() {
                        bias = cv;
                    } else if cv.len() == 1 {
                        bias = vec![cv[0]; bn];
                    } else {
                        return Err(ctx.unsupported(format!("Gemm bias of shape {:?}", c.dims)));
                    }
                    if beta != 1.0 {
                        bias.iter_mut().for_each(|v| *v *= beta);
                    }
                }
                self.lower_fc(ctx, x, w, bias, bn, vec![1, bn], out)?;
            }
            "MatMul" => {
                let x = match &ins.first() {
                    Some(Some(Val::Act(x))) => *x,
                    _ => return Err(ctx.unsupported("MatMul whose first operand is a constant")),
                };
                let b = match ins.get(1) {
                    Some(Some(Val::Const(t))) => t.clone(),
                    _ => return Err(ctx.unsupported(
                        "MatMul of two activations (the second operand must be a constant matrix)",
                    )),
                };
                let xd = self.dims(x).to_vec();
                let bd: Vec<usize> = {
                    let extra = b.dims.len().saturating_sub(2);
                    if b.dims[..extra].iter().any(|&v| v != 1) || b.dims.len() < 2 {
                        return Err(
                            ctx.unsupported(format!("MatMul by a constant of shape {:?}", b.dims))
                        );
                    }
                    b.dims[extra..].to_vec()
                };
                if xd.len() < 2 || numel(&xd[..xd.len() - 1]) != 1 || xd[xd.len() - 1] != bd[0] {
                    return Err(ctx.unsupported(format!(
                        "MatMul of {:?} by {:?} (only a vector times a matrix)",
                        xd, b.dims
                    )));
                }
                let (k, nn) = (bd[0], bd[1]);
                let w = transpose2(&b.f32s(), k, nn);
                let mut od = xd.clone();
                *od.last_mut().unwrap() = nn;
                self.lower_fc(ctx, x, w, vec![0.0; nn], nn, od, out)?;
            }
            "Softmax" | "LogSoftmax" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let default_axis = if opset < 13 { 1 } else { -1 };
                let axis = norm_axis(ctx, a.int("axis").unwrap_or(default_axis), d.len())?;
                let covered = if opset < 13 {
                    numel(&d[axis..])
                } else {
                    d[axis]
                };
                if covered != numel(&d) {
                    return Err(ctx.unsupported(format!(
                        "{} over axis {axis} of a {d:?} tensor (only over all classes)",
                        ctx.op
                    )));
                }
                self.push(ctx, WOp::Softmax, vec![x], out, d)?;
            }
            "Pad" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let mode = a.string("mode").unwrap_or_else(|| "constant".into());
                if mode != "constant" {
                    return Err(ctx.unsupported(format!(
                        "Pad mode '{mode}' (only constant zero padding before a Conv)"
                    )));
                }
                let (pads, value) = if opset < 11 {
                    (
                        a.ints("pads")
                            .or_else(|| a.ints("paddings"))
                            .ok_or_else(|| ctx.malformed("missing pads"))?,
                        a.float("value").unwrap_or(0.0),
                    )
                } else {
                    let p = self.const_in(ctx, ins, 1)?.i64s();
                    let v = match self.opt_const_in(ctx, ins, 2)? {
                        Some(t) => t.scalar_f32().unwrap_or(f32::NAN),
                        None => 0.0,
                    };
                    (p, v)
                };
                let r = d.len();
                let mut full = vec![0i64; 2 * r];
                match self.opt_const_in(ctx, ins, 3)? {
                    Some(axes) => {
                        let axes = axes.i64s();
                        if pads.len() != 2 * axes.len() {
                            return Err(ctx.malformed("pads length does not match axes"));
                        }
                        for (i, &ax) in axes.iter().enumerate() {
                            let ax = norm_axis(ctx, ax, r)?;
                            full[ax] = pads[i];
                            full[ax + r] = pads[i + axes.len()];
                        }
                    }
                    None => {
                        if pads.len() != 2 * r {
                            return Err(ctx.malformed(format!("pads {pads:?} for rank {r}")));
                        }
                        full = pads;
                    }
                }
                if value != 0.0 {
                    return Err(
                        ctx.unsupported(format!("Pad with value {value} (only zero padding)"))
                    );
                }
                if full.iter().any(|&p| p < 0) {
                    return Err(ctx.unsupported(format!("negative pads {full:?}")));
                }
                if full.iter().all(|&p| p == 0) {
                    self.alias(out, x);
                    return Ok(());
                }
                if r != 4 || full[0] != 0 || full[1] != 0 || full[4] != 0 || full[5] != 0 {
                    return Err(ctx.unsupported(format!(
                        "Pad {full:?} of a {d:?} tensor (only spatial padding)"
                    )));
                }
                let p = [
                    full[2] as usize,
                    full[3] as usize,
                    full[6] as usize,
                    full[7] as usize,
                ];
                let od = vec![1, d[1], d[2] + p[0] + p[2], d[3] + p[1] + p[3]];
                self.push(ctx, WOp::Pad(p), vec![x], out, od)?;
            }
            "Upsample" | "Resize" => {
                return Err(ctx.unsupported_op("resampling has no equivalent in the graftnet IR"));
            }
            _ => {
                return Err(ctx.unsupported_op("no equivalent in the graftnet IR"));
            }
        }
        Ok(())
    }

    pub(super) fn lower_bin_const(
        &mut self,
        ctx: &Ctx,
        op: BOp,
        x: usize,
        t: &Tensor,
        const_first: bool,
        out: &str,
    ) -> Res<()> {
        let xd = self.dims(x).to_vec();
        if let Some(c) = t.scalar_f32() {
            if op == BOp::Pow {
                if const_first {
                    return Err(ctx.unsupported("Pow with a constant base"));
                }
                if !(c == c.round() && (0.0..=4.0).contains(&c)) {
                    return Err(
                        ctx.unsupported(format!("Pow with exponent {c} (only 0, 1, 2, 3, 4)"))
                    );
                }
            }
            let op = if matches!(op, BOp::Add | BOp::Sub | BOp::Mul | BOp::Div)
                && !(op == BOp::Div && const_first)
            {
                WOp::Chan {
                    op,
                    c: vec![c],
                    const_first,
                }
            } else {
                WOp::Elt(Elt::BinC { op, c, const_first })
            };
            self.push(ctx, op, vec![x], out, xd)?;
            return Ok(());
        }
        match per_channel(&xd, &t.dims) {
            Some(_) if matches!(op, BOp::Add | BOp::Sub | BOp::Mul) || (op == BOp::Div && !const_first) => {
                self.push(ctx, WOp::Chan { op, c: t.f32s(), const_first }, vec![x], out, xd)?;
                Ok(())
            }
            _ => Err(ctx.unsupported(format!(
                "{} of an activation of shape {:?} with a constant of shape {:?} (only scalar or per-channel constants)",
                ctx.op, xd, t.dims
            ))),
        }
    }

    pub(super) fn lower_conv(
        &mut self,
        ctx: &Ctx,
        a: &Attrs,
        ins: &[Option<Val>],
        out: &str,
    ) -> Res<()> {
        let x = self.act_in(ctx, ins, 0)?;
        let w = self.const_in(ctx, ins, 1)?;
        let b = self.opt_const_in(ctx, ins, 2)?;
        let xd = self.dims(x).to_vec();
        if xd.len() != 4 || w.dims.len() != 4 {
            return Err(ctx.unsupported(format!(
                "convolution of a {:?} input with a {:?} kernel (only 2-D convolution)",
                xd, w.dims
            )));
        }
        let (m, cpg, kh, kw) = (w.dims[0], w.dims[1], w.dims[2], w.dims[3]);
        let group = a.int("group").unwrap_or(1);
        if group < 1 {
            return Err(ctx.malformed(format!("group {group}")));
        }
        let group = group as usize;
        if cpg * group != xd[1] || m % group != 0 {
            return Err(ctx.malformed(format!(
                "weights {:?} with group {group} for {} input channels",
                w.dims, xd[1]
            )));
        }
        if let Some(ks) = a.ints("kernel_shape") {
            if ks != [kh as i64, kw as i64] {
                return Err(ctx.malformed(format!(
                    "kernel_shape {ks:?} differs from the weights {:?}",
                    w.dims
                )));
            }
        }
        let s = pair(ctx, a.ints("strides"), 1, "strides")?;
        let dil = pair(ctx, a.ints("dilations"), 1, "dilations")?;
        if dil != (1, 1) {
            return Err(ctx.unsupported(format!(
                "dilations {:?} (only 1 is supported)",
                [dil.0, dil.1]
            )));
        }
        let ap = a.string("auto_pad").unwrap_or_default();
        let (mut pads, (oh, ow)) =
            window(ctx, (xd[2], xd[3]), (kh, kw), s, &ap, a.ints("pads"), false)?;
        // Pad -> Conv.
        let mut src = x;
        if let Some(p) = self.producer(x) {
            if let WOp::Pad(pp) = self.nodes[p].op {
                src = self.nodes[p].inputs[0];
                for i in 0..4 {
                    pads[i] += pp[i];
                }
            }
        }
        let bias = match b {
            Some(b) => {
                if b.len() != m {
                    return Err(ctx.malformed(format!(
                        "bias has {} values for {m} output channels",
                        b.len()
                    )));
                }
                b.f32s()
            }
            None => vec![0.0; m],
        };
        let conv = Conv {
            cout: m,
            cin: xd[1],
            kh,
            kw,
            stride: s,
            pads,
            dilation: dil,
            groups: group,
            weight: w.f32s(),
            bias,
            act: Act::None,
        };
        self.push(ctx, WOp::Conv(conv), vec![src], out, vec![1, m, oh, ow])?;
        Ok(())
    }

    /// Fully connected layer: reads the tensor before any flatten/reshape.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lower_fc(
        &mut self,
        ctx: &Ctx,
        x: usize,
        w: Vec<f32>,
        bias: Vec<f32>,
        n: usize,
        od: Vec<usize>,
        out: &str,
    ) -> Res<()> {
        let mut src = x;
        while let Some(p) = self.producer(src) {
            if matches!(self.nodes[p].op, WOp::Reshape) {
                src = self.nodes[p].inputs[0];
            } else {
                break;
            }
        }
        let s = ir_shape_of(self.dims(src)).expect("checked at creation");
        let k = s.len();
        if w.len() != n * k {
            return Err(ctx.malformed(format!("weights have {} values for {n} x {k}", w.len())));
        }
        let conv = Conv {
            cout: n,
            cin: s.c,
            kh: s.h,
            kw: s.w,
            stride: (1, 1),
            pads: [0; 4],
            dilation: (1, 1),
            groups: 1,
            weight: w,
            bias,
            act: Act::None,
        };
        self.push(ctx, WOp::Conv(conv), vec![src], out, od)?;
        Ok(())
    }
}
