//! Constant folding: ONNX ops evaluated on constant tensors (shapes are
//! static, so `Shape -> Slice -> Concat -> Reshape` chains fold here).

use std::rc::Rc;

use super::decode::{numel, strides, tensor_from_proto, Attrs, Data, Tensor};
use super::error::{Ctx, Res};
use super::shape::{
    bcast_dims, bcast_index, norm_axis, reshape_dims, squeeze_dims, unsqueeze_dims,
};

// ---------------------------------------------------------------------------
// Constant folding
// ---------------------------------------------------------------------------

pub(super) fn constant_attr(a: &Attrs) -> Result<Tensor, String> {
    if let Some(t) = a.tensor("value") {
        return tensor_from_proto(t);
    }
    if let Some(at) = a.get("value_float") {
        return Ok(Tensor::f(vec![], vec![at.f]));
    }
    if let Some(v) = a.floats("value_floats") {
        return Ok(Tensor::f(vec![v.len()], v));
    }
    if let Some(v) = a.int("value_int") {
        return Ok(Tensor::i(vec![], vec![v]));
    }
    if let Some(v) = a.ints("value_ints") {
        return Ok(Tensor::i(vec![v.len()], v));
    }
    Err("Constant without a supported value attribute (value, value_float(s), value_int(s))".into())
}

pub(super) fn map_f(t: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor::f(t.dims.clone(), t.f32s().into_iter().map(f).collect())
}

pub(super) fn eval_binary(op: &str, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let od = bcast_dims(&a.dims, &b.dims)
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", a.dims, b.dims))?;
    let ia = bcast_index(&od, &a.dims);
    let ib = bcast_index(&od, &b.dims);
    let cmp = matches!(
        op,
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual"
    );
    if a.is_float() || b.is_float() {
        let (av, bv) = (a.f32s(), b.f32s());
        let f: fn(f32, f32) -> f32 = match op {
            "Add" | "Sum" => |x, y| x + y,
            "Sub" => |x, y| x - y,
            "Mul" => |x, y| x * y,
            "Div" => |x, y| x / y,
            "Pow" => |x, y| x.powf(y),
            "Max" => |x: f32, y| x.max(y),
            "Min" => |x: f32, y| x.min(y),
            "Mod" => |x: f32, y| x % y,
            "Equal" => |x, y| (x == y) as i32 as f32,
            "Less" => |x, y| (x < y) as i32 as f32,
            "Greater" => |x, y| (x > y) as i32 as f32,
            "LessOrEqual" => |x, y| (x <= y) as i32 as f32,
            "GreaterOrEqual" => |x, y| (x >= y) as i32 as f32,
            _ => return Err(format!("cannot evaluate {op} on constants")),
        };
        let v: Vec<f32> = ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect();
        if cmp {
            return Ok(Tensor::i(od, v.into_iter().map(|x| x as i64).collect()));
        }
        return Ok(Tensor::f(od, v));
    }
    let (av, bv) = (a.i64s(), b.i64s());
    let f: fn(i64, i64) -> i64 = match op {
        "Add" | "Sum" => |x, y| x.wrapping_add(y),
        "Sub" => |x, y| x.wrapping_sub(y),
        "Mul" => |x, y| x.wrapping_mul(y),
        "Div" => |x, y| if y == 0 { 0 } else { x / y },
        "Pow" => |x, y| x.wrapping_pow(y.max(0) as u32),
        "Max" => |x, y| x.max(y),
        "Min" => |x, y| x.min(y),
        "Mod" => |x, y| if y == 0 { 0 } else { x.rem_euclid(y) },
        "Equal" => |x, y| (x == y) as i64,
        "Less" => |x, y| (x < y) as i64,
        "Greater" => |x, y| (x > y) as i64,
        "LessOrEqual" => |x, y| (x <= y) as i64,
        "GreaterOrEqual" => |x, y| (x >= y) as i64,
        "And" => |x, y| (x != 0 && y != 0) as i64,
        "Or" => |x, y| (x != 0 || y != 0) as i64,
        "Xor" => |x, y| ((x != 0) ^ (y != 0)) as i64,
        _ => return Err(format!("cannot evaluate {op} on constants")),
    };
    Ok(Tensor::i(
        od,
        ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect(),
    ))
}

pub(super) fn is_perm(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
}

pub(super) fn transpose_nd(t: &Tensor, perm: &[usize]) -> Tensor {
    let d = &t.dims;
    let od: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
    let st = strides(d);
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let n = numel(&od);
    let mut idx = vec![0usize; od.len()];
    let mut src = Vec::with_capacity(n);
    let mut cur = 0usize;
    for _ in 0..n {
        src.push(cur);
        let mut k = od.len();
        while k > 0 {
            k -= 1;
            idx[k] += 1;
            cur += pst[k];
            if idx[k] < od[k] {
                break;
            }
            cur -= pst[k] * od[k];
            idx[k] = 0;
        }
    }
    t.gather_flat(od, &src)
}

/// Select indices `sel[axis]` along every axis.
pub(super) fn select_nd(t: &Tensor, sel: &[Vec<usize>]) -> Tensor {
    let od: Vec<usize> = sel.iter().map(|s| s.len()).collect();
    let st = strides(&t.dims);
    let n = numel(&od);
    let mut src = Vec::with_capacity(n);
    let mut idx = vec![0usize; od.len()];
    for _ in 0..n {
        src.push(
            idx.iter()
                .enumerate()
                .map(|(a, &i)| sel[a][i] * st[a])
                .sum(),
        );
        let mut k = od.len();
        while k > 0 {
            k -= 1;
            idx[k] += 1;
            if idx[k] < od[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    t.gather_flat(od, &src)
}

pub(super) fn eval_const(
    ctx: &Ctx,
    a: &Attrs,
    ins: &[Option<Rc<Tensor>>],
    opset: i64,
) -> Res<Vec<Tensor>> {
    let bad = |m: String| ctx.unsupported_op(format!("cannot evaluate on constants: {m}"));
    let inp = |i: usize| -> Res<&Tensor> {
        ins.get(i)
            .and_then(|v| v.as_deref())
            .ok_or_else(|| ctx.malformed(format!("missing input {i}")))
    };
    let opt = |i: usize| -> Option<&Tensor> { ins.get(i).and_then(|v| v.as_deref()) };
    let x = inp(0)?;
    let t = match ctx.op.as_str() {
        "Identity" | "Dropout" => x.clone(),
        "Cast" | "CastLike" => {
            let to = if ctx.op == "CastLike" {
                if inp(1)?.is_float() {
                    1
                } else {
                    7
                }
            } else {
                a.int("to").unwrap_or(1)
            };
            match to {
                1 | 10 | 11 | 16 => Tensor::f(x.dims.clone(), x.f32s()),
                9 => Tensor::i(
                    x.dims.clone(),
                    x.f32s().iter().map(|&v| (v != 0.0) as i64).collect(),
                ),
                2..=7 | 12 | 13 => Tensor::i(x.dims.clone(), x.i64s()),
                _ => return Err(bad(format!("Cast to data type {to}"))),
            }
        }
        "Reshape" => {
            let shape = inp(1)?.i64s();
            x.reshaped(
                reshape_dims(&x.dims, &shape, a.int("allowzero").unwrap_or(0) != 0).map_err(bad)?,
            )
        }
        "Flatten" => {
            let ax = a.int("axis").unwrap_or(1);
            let ax = if ax < 0 { ax + x.dims.len() as i64 } else { ax } as usize;
            let ax = ax.min(x.dims.len());
            x.reshaped(vec![numel(&x.dims[..ax]), numel(&x.dims[ax..])])
        }
        "Squeeze" => {
            let axes = if opset < 13 {
                a.ints("axes")
            } else {
                opt(1).map(|t| t.i64s())
            };
            x.reshaped(squeeze_dims(&x.dims, axes).map_err(bad)?)
        }
        "Unsqueeze" => {
            let axes = if opset < 13 {
                a.ints("axes").unwrap_or_default()
            } else {
                inp(1)?.i64s()
            };
            x.reshaped(unsqueeze_dims(&x.dims, &axes).map_err(bad)?)
        }
        "Concat" => {
            let parts: Vec<&Tensor> = ins.iter().flatten().map(|t| &**t).collect();
            let r = parts[0].dims.len();
            let axis = norm_axis(ctx, a.int("axis").unwrap_or(0), r)?;
            let float = parts.iter().any(|p| p.is_float());
            if parts.iter().any(|p| {
                p.dims.len() != r || (0..r).any(|i| i != axis && p.dims[i] != parts[0].dims[i])
            }) {
                return Err(bad("concat of mismatched shapes".into()));
            }
            let mut od = parts[0].dims.clone();
            od[axis] = parts
                .iter()
                .map(|p| p.dims.get(axis).copied().unwrap_or(0))
                .sum();
            let outer = numel(&od[..axis]);
            let mut fv = Vec::new();
            let mut iv = Vec::new();
            for o in 0..outer {
                for p in &parts {
                    if p.dims.len() != r {
                        return Err(bad("concat of different ranks".into()));
                    }
                    let blk = numel(&p.dims[axis..]);
                    if float {
                        fv.extend_from_slice(&p.f32s()[o * blk..(o + 1) * blk]);
                    } else {
                        iv.extend_from_slice(&p.i64s()[o * blk..(o + 1) * blk]);
                    }
                }
            }
            if float {
                Tensor::f(od, fv)
            } else {
                Tensor::i(od, iv)
            }
        }
        "Slice" => {
            let r = x.dims.len();
            let (starts, ends, axes, steps) = if opset < 10 {
                (
                    a.ints("starts").unwrap_or_default(),
                    a.ints("ends").unwrap_or_default(),
                    a.ints("axes"),
                    None,
                )
            } else {
                (
                    inp(1)?.i64s(),
                    inp(2)?.i64s(),
                    opt(3).map(|t| t.i64s()),
                    opt(4).map(|t| t.i64s()),
                )
            };
            let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return Err(bad("Slice starts/ends/axes/steps lengths differ".into()));
            }
            let mut sel: Vec<Vec<usize>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
            for k in 0..starts.len() {
                let ax = norm_axis(ctx, axes[k], r)?;
                let d = x.dims[ax] as i64;
                let step = steps[k];
                if step == 0 {
                    return Err(bad("slice step 0".into()));
                }
                let fix = |v: i64| if v < 0 { v + d } else { v };
                let (mut s, mut e) = (fix(starts[k]), fix(ends[k]));
                let mut v = Vec::new();
                if step > 0 {
                    s = s.clamp(0, d);
                    e = e.clamp(0, d);
                    let mut i = s;
                    while i < e {
                        v.push(i as usize);
                        i += step;
                    }
                } else {
                    s = s.clamp(-1, d - 1);
                    e = e.clamp(-1, d - 1);
                    let mut i = s;
                    while i > e {
                        v.push(i as usize);
                        i += step;
                    }
                }
                sel[ax] = v;
            }
            select_nd(x, &sel)
        }
        "Gather" => {
            let idx = inp(1)?;
            let r = x.dims.len();
            let axis = norm_axis(ctx, a.int("axis").unwrap_or(0), r)?;
            let d = x.dims[axis] as i64;
            let iv: Vec<usize> = idx
                .i64s()
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + d } else { i };
                    if j < 0 || j >= d {
                        Err(bad(format!("gather index {i} out of range")))
                    } else {
                        Ok(j as usize)
                    }
                })
                .collect::<Res<_>>()?;
            let outer = numel(&x.dims[..axis]);
            let inner = numel(&x.dims[axis + 1..]);
            let mut src = Vec::new();
            for o in 0..outer {
                for &j in &iv {
                    for k in 0..inner {
                        src.push((o * x.dims[axis] + j) * inner + k);
                    }
                }
            }
            let mut od = x.dims[..axis].to_vec();
            od.extend_from_slice(&idx.dims);
            od.extend_from_slice(&x.dims[axis + 1..]);
            x.gather_flat(od, &src)
        }
        "Shape" => {
            let d: Vec<i64> = x.dims.iter().map(|&v| v as i64).collect();
            let r = d.len() as i64;
            let clampi = |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
            let s = clampi(a.int("start").unwrap_or(0));
            let e = clampi(a.int("end").unwrap_or(r));
            let d = if s < e { d[s..e].to_vec() } else { vec![] };
            Tensor::i(vec![d.len()], d)
        }
        "Size" => Tensor::i(vec![], vec![x.len() as i64]),
        "Transpose" => {
            let perm: Vec<usize> = match a.ints("perm") {
                Some(p) => p
                    .iter()
                    .map(|&v| norm_axis(ctx, v, x.dims.len()))
                    .collect::<Res<_>>()?,
                None => (0..x.dims.len()).rev().collect(),
            };
            if !is_perm(&perm, x.dims.len()) {
                return Err(ctx.malformed(format!("invalid perm {perm:?}")));
            }
            transpose_nd(x, &perm)
        }
        "Expand" => {
            let shape: Vec<usize> = inp(1)?.i64s().iter().map(|&v| v.max(0) as usize).collect();
            let od =
                bcast_dims(&x.dims, &shape).ok_or_else(|| bad("shapes do not broadcast".into()))?;
            let idx = bcast_index(&od, &x.dims);
            x.gather_flat(od, &idx)
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = x.i64s().iter().map(|&v| v.max(0) as usize).collect();
            let n = numel(&shape);
            match a.tensor("value") {
                Some(v) => {
                    let v = tensor_from_proto(v).map_err(bad)?;
                    let idx = vec![0usize; n];
                    v.gather_flat(shape, &idx)
                }
                None => Tensor::f(shape, vec![0.0; n]),
            }
        }
        "Range" => {
            let (s, l, d) = (inp(0)?, inp(1)?, inp(2)?);
            if s.is_float() || l.is_float() || d.is_float() {
                let sc = |t: &Tensor| {
                    t.scalar_f32()
                        .ok_or_else(|| bad("Range inputs must be scalars".into()))
                };
                let (s, l, d) = (sc(s)?, sc(l)?, sc(d)?);
                if d == 0.0 {
                    return Err(bad("Range with delta 0".into()));
                }
                let n = (((l - s) / d).ceil()).max(0.0) as usize;
                Tensor::f(vec![n], (0..n).map(|i| s + i as f32 * d).collect())
            } else {
                if s.len() != 1 || l.len() != 1 || d.len() != 1 {
                    return Err(bad("Range inputs must be scalars".into()));
                }
                let (s, l, d) = (s.i64s()[0], l.i64s()[0], d.i64s()[0]);
                if d == 0 {
                    return Err(bad("Range with delta 0".into()));
                }
                let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
                Tensor::i(vec![n], (0..n).map(|i| s + i as i64 * d).collect())
            }
        }
        "Where" => {
            let (c, p, q) = (inp(0)?, inp(1)?, inp(2)?);
            let od = bcast_dims(&c.dims, &p.dims)
                .and_then(|d| bcast_dims(&d, &q.dims))
                .ok_or_else(|| bad("shapes do not broadcast".into()))?;
            let (ic, ip, iq) = (
                bcast_index(&od, &c.dims),
                bcast_index(&od, &p.dims),
                bcast_index(&od, &q.dims),
            );
            let cv = c.i64s();
            if p.is_float() || q.is_float() {
                let (pv, qv) = (p.f32s(), q.f32s());
                Tensor::f(
                    od.clone(),
                    (0..ic.len())
                        .map(|k| if cv[ic[k]] != 0 { pv[ip[k]] } else { qv[iq[k]] })
                        .collect(),
                )
            } else {
                let (pv, qv) = (p.i64s(), q.i64s());
                Tensor::i(
                    od.clone(),
                    (0..ic.len())
                        .map(|k| if cv[ic[k]] != 0 { pv[ip[k]] } else { qv[iq[k]] })
                        .collect(),
                )
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mod" | "Equal"
        | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            let parts: Vec<&Tensor> = ins.iter().flatten().map(|t| &**t).collect();
            let mut acc = parts[0].clone();
            for p in &parts[1..] {
                acc = eval_binary(&ctx.op, &acc, p).map_err(bad)?;
            }
            acc
        }
        "Not" => Tensor::i(
            x.dims.clone(),
            x.i64s().iter().map(|&v| (v == 0) as i64).collect(),
        ),
        "Neg" => match &x.data {
            Data::I(v) => Tensor::i(x.dims.clone(), v.iter().map(|&v| -v).collect()),
            Data::F(_) => map_f(x, |v| -v),
        },
        "Abs" => match &x.data {
            Data::I(v) => Tensor::i(x.dims.clone(), v.iter().map(|&v| v.abs()).collect()),
            Data::F(_) => map_f(x, f32::abs),
        },
        "Sqrt" => map_f(x, f32::sqrt),
        "Reciprocal" => map_f(x, |v| 1.0 / v),
        "Exp" => map_f(x, f32::exp),
        "Log" => map_f(x, f32::ln),
        "Floor" => map_f(x, f32::floor),
        "Ceil" => map_f(x, f32::ceil),
        "Round" => map_f(x, f32::round_ties_even),
        "Relu" => map_f(x, |v| v.max(0.0)),
        "Sigmoid" => map_f(x, |v| 1.0 / (1.0 + (-v).exp())),
        "Tanh" => map_f(x, f32::tanh),
        "Sign" => map_f(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        "Clip" => {
            let (lo, hi) = if opset < 11 {
                (
                    a.float("min").unwrap_or(f32::NEG_INFINITY),
                    a.float("max").unwrap_or(f32::INFINITY),
                )
            } else {
                (
                    opt(1)
                        .and_then(|t| t.scalar_f32())
                        .unwrap_or(f32::NEG_INFINITY),
                    opt(2).and_then(|t| t.scalar_f32()).unwrap_or(f32::INFINITY),
                )
            };
            match &x.data {
                Data::I(v) => Tensor::i(
                    x.dims.clone(),
                    v.iter()
                        .map(|&v| (v as f32).max(lo).min(hi) as i64)
                        .collect(),
                ),
                Data::F(_) => map_f(x, |v| v.max(lo).min(hi)),
            }
        }
        "ReduceProd" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceMean" => {
            let r = x.dims.len();
            let axes = match a.ints("axes") {
                Some(v) => Some(v),
                None if ctx.op == "ReduceSum" || opset >= 18 => opt(1).map(|t| t.i64s()),
                None => None,
            };
            let noop = a.int("noop_with_empty_axes").unwrap_or(0) != 0;
            let ax: Vec<usize> = match axes {
                Some(v) if !v.is_empty() => v
                    .iter()
                    .map(|&v| norm_axis(ctx, v, r))
                    .collect::<Res<_>>()?,
                _ if noop => vec![],
                _ => (0..r).collect(),
            };
            let keep = a.int("keepdims").unwrap_or(1) != 0;
            let kd: Vec<usize> = x
                .dims
                .iter()
                .enumerate()
                .map(|(i, &d)| if ax.contains(&i) { 1 } else { d })
                .collect();
            let kst = strides(&kd);
            let xst = strides(&x.dims);
            let n_out = numel(&kd);
            let xv = x.f32s();
            let init = match ctx.op.as_str() {
                "ReduceProd" => 1.0,
                "ReduceMax" => f32::NEG_INFINITY,
                "ReduceMin" => f32::INFINITY,
                _ => 0.0,
            };
            let mut acc = vec![init; n_out];
            for (flat, &v) in xv.iter().enumerate() {
                let mut o = 0;
                for k in 0..r {
                    let i = (flat / xst[k]) % x.dims[k];
                    if !ax.contains(&k) {
                        o += i * kst[k];
                    }
                }
                acc[o] = match ctx.op.as_str() {
                    "ReduceProd" => acc[o] * v,
                    "ReduceMax" => acc[o].max(v),
                    "ReduceMin" => acc[o].min(v),
                    _ => acc[o] + v,
                };
            }
            if ctx.op == "ReduceMean" {
                let cnt = (numel(&x.dims) / n_out.max(1)) as f32;
                acc.iter_mut().for_each(|v| *v /= cnt);
            }
            let od = if keep {
                kd
            } else {
                x.dims
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !ax.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            };
            if x.is_float() {
                Tensor::f(od, acc)
            } else {
                Tensor::i(od, acc.iter().map(|&v| v as i64).collect())
            }
        }
        "DequantizeLinear" => {
            let scale = inp(1)?;
            let zp = opt(2);
            let xv = x.f32s();
            let sv = scale.f32s();
            let zv = zp.map(|z| z.f32s()).unwrap_or_else(|| vec![0.0; sv.len()]);
            if sv.len() == 1 {
                Tensor::f(
                    x.dims.clone(),
                    xv.iter().map(|&v| (v - zv[0]) * sv[0]).collect(),
                )
            } else {
                let axis = norm_axis(ctx, a.int("axis").unwrap_or(1), x.dims.len())?;
                let inner = numel(&x.dims[axis + 1..]);
                let d = x.dims[axis];
                Tensor::f(
                    x.dims.clone(),
                    xv.iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let c = (i / inner) % d;
                            (v - zv[c]) * sv[c]
                        })
                        .collect(),
                )
            }
        }
        "Split" => {
            let r = x.dims.len();
            let axis = norm_axis(ctx, a.int("axis").unwrap_or(0), r)?;
            let d = x.dims[axis];
            let sizes: Vec<usize> = match a.ints("split").or_else(|| opt(1).map(|t| t.i64s())) {
                Some(s) => s.iter().map(|&v| v as usize).collect(),
                None => return Err(bad("Split without explicit sizes".into())),
            };
            if sizes.iter().sum::<usize>() != d {
                return Err(bad("split sizes do not add up".into()));
            }
            let mut outs = Vec::new();
            let mut start = 0;
            for s in sizes {
                let mut sel: Vec<Vec<usize>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
                sel[axis] = (start..start + s).collect();
                outs.push(select_nd(x, &sel));
                start += s;
            }
            return Ok(outs);
        }
        _ => {
            return Err(ctx.unsupported_op(
                "no equivalent in the graftnet IR (and it cannot be evaluated on constants)",
            ))
        }
    };
    Ok(vec![t])
}
