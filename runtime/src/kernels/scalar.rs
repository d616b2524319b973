//! Scalar reference kernels. These define graftnet's results.

use super::{ConvGeom, OutQ};
use crate::quant::apply_multiplier;
use crate::quant::ChannelRequant;

/// Requantizes one accumulator.
#[inline(always)]
pub fn requant(acc: i32, r: &ChannelRequant, q: OutQ) -> i8 {
    let y = apply_multiplier(acc as i64 + r.bias as i64, r.mult, r.shift) + q.zp as i64;
    y.clamp(q.lo as i64, q.hi as i64) as i8
}

#[inline(always)]
fn dot(x: &[i8], w: &[u8]) -> i32 {
    let mut acc = 0i32;
    for (a, b) in x.iter().zip(w) {
        acc += *a as i32 * (*b as i8) as i32;
    }
    acc
}

/// Dense or grouped convolution, weights `[cout][kh][kw][cin/groups]`.
pub fn conv(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    let row = g.row_len();
    for co in 0..g.cout {
        conv_channel(
            input,
            &w[co * row..(co + 1) * row],
            g,
            co,
            zp_in,
            &rq[co],
            q,
            out,
        );
    }
}

/// Computes output channel `co` of a dense/grouped conv with weight row
/// `row` (`[kh][kw][cin/groups]`), writing `out[.., co]`.
#[allow(clippy::too_many_arguments)]
pub fn conv_channel(
    input: &[i8],
    row: &[u8],
    g: &ConvGeom,
    co: usize,
    zp_in: i8,
    r: &ChannelRequant,
    q: OutQ,
    out: &mut [i8],
) {
    let cg = g.cin / g.groups;
    let ci0 = (co / (g.cout / g.groups)) * cg;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut acc = 0i32;
            for ky in 0..g.kh {
                let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                for kx in 0..g.kw {
                    let ix = (ox * g.sw + kx) as isize - g.pl as isize;
                    let wr = &row[(ky * g.kw + kx) * cg..(ky * g.kw + kx + 1) * cg];
                    if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                        let s: i32 = wr.iter().map(|&b| b as i8 as i32).sum();
                        acc += zp_in as i32 * s;
                    } else {
                        let p = (iy as usize * g.iw + ix as usize) * g.cin + ci0;
                        acc += dot(&input[p..p + cg], wr);
                    }
                }
            }
            out[(oy * g.ow + ox) * g.cout + co] = requant(acc, r, q);
        }
    }
}

/// Depthwise convolution, weights `[kh][kw][c]`.
pub fn dwconv(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    const BLOCK: usize = 64;
    let c = g.cout;
    let mut acc = [0i32; BLOCK];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut c0 = 0;
            while c0 < c {
                let n = BLOCK.min(c - c0);
                acc[..n].fill(0);
                for ky in 0..g.kh {
                    let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                    for kx in 0..g.kw {
                        let ix = (ox * g.sw + kx) as isize - g.pl as isize;
                        let wr = &w[(ky * g.kw + kx) * c + c0..(ky * g.kw + kx) * c + c0 + n];
                        if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                            for j in 0..n {
                                acc[j] += zp_in as i32 * wr[j] as i8 as i32;
                            }
                        } else {
                            let p = (iy as usize * g.iw + ix as usize) * c + c0;
                            let x = &input[p..p + n];
                            for j in 0..n {
                                acc[j] += x[j] as i32 * wr[j] as i8 as i32;
                            }
                        }
                    }
                }
                let o = (oy * g.ow + ox) * c + c0;
                for j in 0..n {
                    out[o + j] = requant(acc[j], &rq[c0 + j], q);
                }
                c0 += n;
            }
        }
    }
}

/// Computes channel `ch` of a depthwise conv with its own kernel `row`
/// (`[kh][kw]`), writing `out[.., ch]`.
#[allow(clippy::too_many_arguments)]
pub fn dwconv_channel(
    input: &[i8],
    row: &[u8],
    g: &ConvGeom,
    ch: usize,
    zp_in: i8,
    r: &ChannelRequant,
    q: OutQ,
    out: &mut [i8],
) {
    let c = g.cout;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let mut acc = 0i32;
            for ky in 0..g.kh {
                let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                for kx in 0..g.kw {
                    let ix = (ox * g.sw + kx) as isize - g.pl as isize;
                    let wv = row[ky * g.kw + kx] as i8 as i32;
                    let x = if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                        zp_in as i32
                    } else {
                        input[(iy as usize * g.iw + ix as usize) * c + ch] as i32
                    };
                    acc += x * wv;
                }
            }
            out[(oy * g.ow + ox) * c + ch] = requant(acc, r, q);
        }
    }
}

/// `y = zp_out + round((a - za) * ma + (b - zb) * mb) >> shift`, clamped.
#[allow(clippy::too_many_arguments)]
pub fn add(
    a: &[i8],
    b: &[i8],
    za: i32,
    ma: i32,
    zb: i32,
    mb: i32,
    shift: i32,
    q: OutQ,
    out: &mut [i8],
) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        let s = (x as i64 - za as i64) * ma as i64 + (y as i64 - zb as i64) * mb as i64;
        let v = ((s + (1i64 << (shift - 1))) >> shift) + q.zp as i64;
        *o = v.clamp(q.lo as i64, q.hi as i64) as i8;
    }
}

/// `y = zp_out + round((a - za) * (b - zb) * M)`; `b` is either the same
/// size as `a` or one value per channel (`c` values, broadcast over pixels).
#[allow(clippy::too_many_arguments)]
pub fn mul(
    a: &[i8],
    b: &[i8],
    c: usize,
    za: i32,
    zb: i32,
    mult: i32,
    shift: i32,
    q: OutQ,
    out: &mut [i8],
) {
    let bcast = b.len() != a.len();
    for (i, (o, &x)) in out.iter_mut().zip(a).enumerate() {
        let y = if bcast { b[i % c] } else { b[i] };
        let p = (x as i64 - za as i64) * (y as i64 - zb as i64);
        let v = apply_multiplier(p, mult, shift) + q.zp as i64;
        *o = v.clamp(q.lo as i64, q.hi as i64) as i8;
    }
}

/// Elementwise table lookup (index = input as `u8`).
pub fn lut(a: &[i8], table: &[u8], out: &mut [i8]) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o = table[x as u8 as usize] as i8;
    }
}

/// Per-channel lookup tables over NHWC data whose slices start at a pixel:
/// element `(p, c)` goes through table `index[c]` (256 bytes each in
/// `tables`).
pub fn lut_channels(a: &[i8], index: &[u8], tables: &[u8], out: &mut [i8]) {
    let c = index.len();
    if c == 0 {
        return;
    }
    for (o_px, a_px) in out.chunks_exact_mut(c).zip(a.chunks_exact(c)) {
        for ((o, &x), &t) in o_px.iter_mut().zip(a_px).zip(index) {
            *o = tables[t as usize * 256 + x as u8 as usize] as i8;
        }
    }
}

/// Global average pooling: `y[c] = zp_out + round(sum(x - zp_in) * M)`.
pub fn global_avg_pool(a: &[i8], hw: usize, c: usize, r: &ChannelRequant, q: OutQ, out: &mut [i8]) {
    for ch in 0..c {
        let mut s = 0i64;
        for p in 0..hw {
            s += a[p * c + ch] as i64;
        }
        s -= r.bias as i64 * hw as i64;
        let v = apply_multiplier(s, r.mult, r.shift) + q.zp as i64;
        out[ch] = v.clamp(q.lo as i64, q.hi as i64) as i8;
    }
}

/// k x k pooling. `avg`: `rq[n-1]` scales a sum of `n` cells (its `bias`
/// is the input zero point); otherwise max pooling (padding ignored).
pub fn pool(
    a: &[i8],
    g: &ConvGeom,
    avg: Option<(&[ChannelRequant], bool)>,
    q: OutQ,
    out: &mut [i8],
) {
    let c = g.cin;
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            for ch in 0..c {
                let mut s = 0i64;
                let mut m = i8::MIN;
                let mut n = 0usize;
                for ky in 0..g.kh {
                    let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                    for kx in 0..g.kw {
                        let ix = (ox * g.sw + kx) as isize - g.pl as isize;
                        if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                            continue;
                        }
                        let x = a[(iy as usize * g.iw + ix as usize) * c + ch];
                        s += x as i64;
                        m = m.max(x);
                        n += 1;
                    }
                }
                let o = &mut out[(oy * g.ow + ox) * c + ch];
                match avg {
                    Some((rq, include_pad)) => {
                        let div = if include_pad { g.kh * g.kw } else { n.max(1) };
                        let r = &rq[div - 1];
                        let v = apply_multiplier(s - r.bias as i64 * n as i64, r.mult, r.shift)
                            + q.zp as i64;
                        *o = v.clamp(q.lo as i64, q.hi as i64) as i8;
                    }
                    None => *o = m,
                }
            }
        }
    }
}

/// Channel concat: requantizes `a` then `b` into `out` (per pixel
/// `[a channels | b channels]`). Each `ChannelRequant` holds `mult, shift` and the
/// input zero point in `bias`.
#[allow(clippy::too_many_arguments)]
pub fn concat(
    a: &[i8],
    ca: usize,
    ra: &ChannelRequant,
    b: &[i8],
    cb: usize,
    rb: &ChannelRequant,
    q: OutQ,
    out: &mut [i8],
) {
    let c = ca + cb;
    let pixels = out.len().checked_div(c).unwrap_or(0);
    for p in 0..pixels {
        for j in 0..ca {
            let v = apply_multiplier(a[p * ca + j] as i64 - ra.bias as i64, ra.mult, ra.shift)
                + q.zp as i64;
            out[p * c + j] = v.clamp(q.lo as i64, q.hi as i64) as i8;
        }
        for j in 0..cb {
            let v = apply_multiplier(b[p * cb + j] as i64 - rb.bias as i64, rb.mult, rb.shift)
                + q.zp as i64;
            out[p * c + ca + j] = v.clamp(q.lo as i64, q.hi as i64) as i8;
        }
    }
}
