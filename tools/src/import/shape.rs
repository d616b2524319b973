//! Shape inference helpers: broadcasting, axes, conv / pool windows,
//! reshape / squeeze / unsqueeze dims.

use super::decode::{numel, strides};
use super::error::{Ctx, Res};

pub(super) fn norm_axis(ctx: &Ctx, axis: i64, rank: usize) -> Res<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(ctx.malformed(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Broadcast two shapes (numpy rules).
pub(super) fn bcast_dims(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        *o = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

/// For every flat index of `out`, the flat index of the broadcast input.
pub(super) fn bcast_index(out: &[usize], inp: &[usize]) -> Vec<usize> {
    let r = out.len();
    let off = r - inp.len();
    let ist = strides(inp);
    let mut es = vec![0usize; r];
    for i in 0..inp.len() {
        if inp[i] != 1 {
            es[i + off] = ist[i];
        }
    }
    let n = numel(out);
    let mut idx = vec![0usize; r];
    let mut res = Vec::with_capacity(n);
    let mut cur = 0usize;
    for _ in 0..n {
        res.push(cur);
        let mut k = r;
        while k > 0 {
            k -= 1;
            idx[k] += 1;
            cur += es[k];
            if idx[k] < out[k] {
                break;
            }
            cur -= es[k] * out[k];
            idx[k] = 0;
        }
    }
    res
}

/// If a constant of dims `cd` broadcast against an activation of dims `xd`
/// varies only along the channel axis (and does not grow the activation),
/// the number of channels.
pub(super) fn per_channel(xd: &[usize], cd: &[usize]) -> Option<usize> {
    let ch = if xd.len() >= 2 { 1 } else { 0 };
    if xd.is_empty() {
        return None;
    }
    let extra = cd.len().saturating_sub(xd.len());
    if cd[..extra].iter().any(|&d| d != 1) {
        return None;
    }
    let cd = &cd[extra..];
    let off = xd.len() - cd.len();
    for (i, &x) in xd.iter().enumerate() {
        let c = if i >= off { cd[i - off] } else { 1 };
        if i == ch {
            if c != x && c != 1 {
                return None;
            }
        } else if c != 1 {
            return None;
        }
    }
    Some(xd[ch])
}

/// Output size and pads (top, left, bottom, right) of a conv / pool window.
#[allow(clippy::too_many_arguments)]
pub(super) fn window(
    ctx: &Ctx,
    hw: (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    auto_pad: &str,
    pads: Option<Vec<i64>>,
    ceil_mode: bool,
) -> Res<([usize; 4], (usize, usize))> {
    if hw.0 == 0 || hw.1 == 0 {
        return Err(ctx.malformed("empty input"));
    }
    let (ins, ks, ss) = ([hw.0, hw.1], [k.0, k.1], [s.0, s.1]);
    let mut p = [0usize; 4];
    let mut out = [0usize; 2];
    match auto_pad {
        "" | "NOTSET" => {
            if let Some(pv) = pads {
                if pv.len() != 4 {
                    return Err(ctx
                        .unsupported(format!("pads {pv:?} (expected 4 values for a 2-D window)")));
                }
                for (i, &v) in pv.iter().enumerate() {
                    if v < 0 {
                        return Err(ctx.unsupported(format!("negative pads {pv:?}")));
                    }
                    p[i] = v as usize;
                }
            }
            for a in 0..2 {
                let tot = ins[a] + p[a] + p[a + 2];
                if tot < ks[a] {
                    return Err(
                        ctx.malformed(format!("window {} larger than padded input {}", ks[a], tot))
                    );
                }
                let floor = (tot - ks[a]) / ss[a] + 1;
                if ceil_mode {
                    let mut ceil = (tot - ks[a]).div_ceil(ss[a]) + 1;
                    if (ceil - 1) * ss[a] >= ins[a] + p[a] {
                        ceil -= 1;
                    }
                    if ceil != floor {
                        return Err(ctx.unsupported("ceil_mode=1 (changes the output size here)"));
                    }
                }
                out[a] = floor;
            }
        }
        "VALID" => {
            for a in 0..2 {
                if ins[a] < ks[a] {
                    return Err(ctx.malformed("window larger than input"));
                }
                out[a] = (ins[a] - ks[a]) / ss[a] + 1;
            }
        }
        "SAME_UPPER" | "SAME_LOWER" => {
            for a in 0..2 {
                out[a] = ins[a].div_ceil(ss[a]);
                let need = (out[a] - 1) * ss[a] + ks[a];
                let tot = need.saturating_sub(ins[a]);
                let small = tot / 2;
                if auto_pad == "SAME_UPPER" {
                    p[a] = small;
                    p[a + 2] = tot - small;
                } else {
                    p[a] = tot - small;
                    p[a + 2] = small;
                }
            }
        }
        other => return Err(ctx.unsupported(format!("auto_pad '{other}'"))),
    }
    Ok((p, (out[0], out[1])))
}

pub(super) fn pair(
    ctx: &Ctx,
    v: Option<Vec<i64>>,
    default: usize,
    what: &str,
) -> Res<(usize, usize)> {
    match v {
        None => Ok((default, default)),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => Ok((v[0] as usize, v[1] as usize)),
        Some(v) => Err(ctx.unsupported(format!("{what} {v:?} (expected two positive values)"))),
    }
}

// ---------------------------------------------------------------------------
// Shape helpers
// ---------------------------------------------------------------------------

pub(super) fn reshape_dims(
    d: &[usize],
    shape: &[i64],
    allowzero: bool,
) -> Result<Vec<usize>, String> {
    let total = numel(d);
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        if s == -1 {
            if infer.is_some() {
                return Err(format!("reshape {shape:?} has two -1"));
            }
            infer = Some(i);
            out.push(1);
        } else if s == 0 && !allowzero {
            out.push(
                *d.get(i)
                    .ok_or_else(|| format!("reshape {shape:?}: 0 beyond the input rank"))?,
            );
        } else if s < 0 {
            return Err(format!("reshape {shape:?}: invalid dim"));
        } else {
            out.push(s as usize);
        }
    }
    if let Some(i) = infer {
        let rest = numel(&out);
        if rest == 0 || !total.is_multiple_of(rest) {
            return Err(format!("cannot reshape {d:?} to {shape:?}"));
        }
        out[i] = total / rest;
    }
    if numel(&out) != total {
        return Err(format!("cannot reshape {d:?} to {shape:?}"));
    }
    Ok(out)
}

pub(super) fn squeeze_dims(d: &[usize], axes: Option<Vec<i64>>) -> Result<Vec<usize>, String> {
    match axes {
        None => Ok(d.iter().copied().filter(|&v| v != 1).collect()),
        Some(ax) if ax.is_empty() => Ok(d.iter().copied().filter(|&v| v != 1).collect()),
        Some(ax) => {
            let r = d.len() as i64;
            let ax: Vec<usize> = ax
                .iter()
                .map(|&a| (if a < 0 { a + r } else { a }) as usize)
                .collect();
            for &a in &ax {
                if a >= d.len() || d[a] != 1 {
                    return Err(format!("cannot squeeze axis {a} of {d:?}"));
                }
            }
            Ok(d.iter()
                .enumerate()
                .filter(|(i, _)| !ax.contains(i))
                .map(|(_, &v)| v)
                .collect())
        }
    }
}

pub(super) fn unsqueeze_dims(d: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let r = (d.len() + axes.len()) as i64;
    let mut ax: Vec<usize> = Vec::new();
    for &a in axes {
        let a = if a < 0 { a + r } else { a };
        if a < 0 || a >= r {
            return Err(format!("unsqueeze axis {a} out of range"));
        }
        ax.push(a as usize);
    }
    let mut out = Vec::with_capacity(r as usize);
    let mut it = d.iter();
    for i in 0..r as usize {
        if ax.contains(&i) {
            out.push(1);
        } else {
            out.push(*it.next().ok_or("unsqueeze axes repeat")?);
        }
    }
    Ok(out)
}
