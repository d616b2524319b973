//! Float forward and backward kernels of the trainer, on batches stored
//! channels-last (`[n][h][w][c]`, so a pointwise conv over a whole batch is
//! one GEMM and depthwise/batch-norm loops run along contiguous channels).
//!
//! Batch-norm and the other per-channel passes are in [`super::norm`].
//! Every kernel here has a finite-difference gradient check in
//! `learn/tests.rs`. GEMMs go through `matrixmultiply` (maintained, pure
//! Rust, AVX2/FMA kernels, single-threaded here: the trainer splits work
//! itself, see [`super::par`], so results are repeatable).
//!
//! Conventions: weights are ONNX OIHW (`[cout][cin/groups][kh][kw]`), as in
//! [`crate::ir::Conv`]; gradients are *accumulated* into `dw`/`db`/`dx`
//! only where a doc says so, otherwise written.

use std::ops::Range;

use super::norm::{fold_tile, moments_tile, sum_f64, tile_rows, BnAct, BnGrad, FOLD_ROWS};
use super::par;
use crate::ir::Unary;

/// Batch shape, channels last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub n: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
}

impl Dims {
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Pixels over the whole batch (rows of the `[pixels][c]` matrix).
    pub fn rows(&self) -> usize {
        self.n * self.h * self.w
    }
}

/// `C (m x n) = alpha * A (m x k) * B (k x n) + beta * C`, any strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (usize, usize),
    b: &[f32],
    (rsb, csb): (usize, usize),
    beta: f32,
    c: &mut [f32],
    (rsc, csc): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |r: usize, cs: usize, rows: usize, cols: usize| (rows - 1) * r + (cols - 1) * cs;
    if k > 0 {
        assert!(a.len() > last(rsa, csa, m, k) && b.len() > last(rsb, csb, k, n));
    }
    assert!(c.len() > last(rsc, csc, m, n));
    // SAFETY: the asserts above keep every element matrixmultiply reads or
    // writes (rows 0..m / 0..k, columns 0..k / 0..n at the given strides)
    // inside the three slices; `c` is a unique borrow, so it aliases
    // neither `a` nor `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            rsc as isize,
            csc as isize,
        );
    }
}

/// A convolution's geometry (any kernel, stride, padding and groups).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSpec {
    pub cin: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    /// top, left, bottom, right
    pub pads: [usize; 4],
    pub groups: usize,
}

impl ConvSpec {
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let [pt, pl, pb, pr] = self.pads;
        (
            (h + pt + pb - self.kh) / self.sh + 1,
            (w + pl + pr - self.kw) / self.sw + 1,
        )
    }
    /// Weights per output channel.
    pub fn row_len(&self) -> usize {
        self.cin / self.groups * self.kh * self.kw
    }
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.pads == [0; 4]
    }
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.cin && self.cout == self.cin
    }
    /// Input coordinate of output `o` at tap `k` along one axis, if inside.
    #[inline]
    fn src(o: usize, k: usize, stride: usize, pad: usize, len: usize) -> Option<usize> {
        (o * stride + k).checked_sub(pad).filter(|&i| i < len)
    }
}

/// Convolution forward: `y = conv(x, w) + bias`. `x` is `d`, `y` is
/// `(d.n, oh, ow, cout)`. With `pre` (depthwise and pointwise convs only),
/// the conv's input is `pre` applied to `x`: computed one image or one
/// block of rows at a time into a scratch buffer that stays in cache, so
/// a batch-norm output read only by this conv is never written out.
#[allow(clippy::too_many_arguments)]
pub fn conv_forward(
    s: &ConvSpec,
    x: &[f32],
    d: Dims,
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    pre: Option<&BnAct>,
    threads: usize,
) {
    conv_forward_impl(s, x, d, w, y, pre, threads, false);
    add_bias(s, bias, y);
}

/// Whether [`conv_forward`] takes a `pre` for this conv.
pub fn takes_pre(s: &ConvSpec) -> bool {
    s.is_depthwise() || s.is_pointwise()
}

/// [`conv_forward`] without bias, returning the per-channel mean and
/// biased variance of `y`, summed block by block while each block of the
/// output is still in cache (for batch-norm in training mode).
pub fn conv_forward_moments(
    s: &ConvSpec,
    x: &[f32],
    d: Dims,
    w: &[f32],
    y: &mut [f32],
    pre: Option<&BnAct>,
    threads: usize,
) -> (Vec<f64>, Vec<f64>) {
    let parts = conv_forward_impl(s, x, d, w, y, pre, threads, true);
    let c = s.cout;
    let sums = sum_f64(parts, 2 * c);
    let n = (y.len() / c.max(1)).max(1) as f64;
    let mean: Vec<f64> = sums[..c].iter().map(|v| v / n).collect();
    let var = sums[c..]
        .iter()
        .zip(&mean)
        .map(|(v, m)| (v / n - m * m).max(0.0))
        .collect();
    (mean, var)
}

/// Running per-channel sums of x and x^2 over blocks of a `[rows][c]`
/// output (f32 over at most [`FOLD_ROWS`] rows, then f64).
struct BlockSums {
    c: usize,
    tr: usize,
    zero: Vec<f32>,
    s1: Vec<f32>,
    s2: Vec<f32>,
    /// sums of x (first `c`) and x^2 (last `c`)
    out: Vec<f64>,
}

impl BlockSums {
    fn new(c: usize) -> Self {
        let tr = tile_rows(c);
        BlockSums {
            c,
            tr,
            zero: vec![0.0; tr * c],
            s1: vec![0.0; tr * c],
            s2: vec![0.0; tr * c],
            out: vec![0.0; 2 * c],
        }
    }

    fn add(&mut self, block: &[f32]) {
        let (c, tr) = (self.c, self.tr);
        for group in block.chunks(FOLD_ROWS.div_ceil(tr) * tr * c) {
            self.s1.fill(0.0);
            self.s2.fill(0.0);
            for tile in group.chunks(tr * c) {
                moments_tile(tile, &self.zero, &mut self.s1, &mut self.s2);
            }
            let (o1, o2) = self.out.split_at_mut(c);
            fold_tile(&self.s1, c, o1);
            fold_tile(&self.s2, c, o2);
        }
    }
}

/// Rows per GEMM block when output statistics are gathered alongside.
const STATS_BLOCK_ROWS: usize = 256;

#[allow(clippy::too_many_arguments)]
fn conv_forward_impl(
    s: &ConvSpec,
    x: &[f32],
    d: Dims,
    w: &[f32],
    y: &mut [f32],
    pre: Option<&BnAct>,
    threads: usize,
    stats: bool,
) -> Vec<Vec<f64>> {
    assert!(
        pre.is_none() || takes_pre(s),
        "conv_forward: `pre` on a conv that does not take it"
    );
    let (oh, ow) = s.out_hw(d.h, d.w);
    let finish = |b: Option<BlockSums>| b.map(|b| b.out).unwrap_or_default();
    if s.is_depthwise() {
        let c = s.cout;
        let wt = taps_major(s, w);
        let img_in = d.h * d.w * c;
        let img_out = oh * ow * c;
        let t = par::threads_for(threads, d.n, oh * ow * c * s.kh * s.kw);
        par::map_rows(t, y, img_out, |imgs, yr| {
            let mut sums = stats.then(|| BlockSums::new(c));
            let mut buf = Vec::new();
            for (i, n) in imgs.enumerate() {
                let yi = &mut yr[i * img_out..(i + 1) * img_out];
                let xi = &x[n * img_in..(n + 1) * img_in];
                let xi = match pre {
                    Some(p) => {
                        buf.resize(img_in, 0.0);
                        p.apply(xi, &mut buf);
                        &buf[..]
                    }
                    None => xi,
                };
                dw_forward_image(s, d, xi, &wt, yi);
                if let Some(b) = sums.as_mut() {
                    b.add(yi);
                }
            }
            finish(sums)
        })
    } else if s.is_pointwise() {
        let t = par::threads_for(threads, d.rows(), s.cin * s.cout);
        par::map_rows(t, y, s.cout, |rows, yr| {
            let mut sums = stats.then(|| BlockSums::new(s.cout));
            let block = if stats || pre.is_some() {
                STATS_BLOCK_ROWS
            } else {
                rows.len().max(1)
            };
            let mut buf = Vec::new();
            for (bi, yb) in yr.chunks_mut(block * s.cout).enumerate() {
                let r0 = rows.start + bi * block;
                let nr = yb.len() / s.cout;
                let xb = &x[r0 * s.cin..(r0 + nr) * s.cin];
                let xb = match pre {
                    Some(p) => {
                        buf.resize(xb.len(), 0.0);
                        p.apply(xb, &mut buf);
                        &buf[..]
                    }
                    None => xb,
                };
                gemm(
                    nr,
                    s.cin,
                    s.cout,
                    xb,
                    (s.cin, 1),
                    w,
                    (1, s.cin),
                    0.0,
                    yb,
                    (s.cout, 1),
                );
                if let Some(b) = sums.as_mut() {
                    b.add(yb);
                }
            }
            finish(sums)
        })
    } else {
        let img = oh * ow * s.cout;
        let t = par::threads_for(threads, d.n, img * s.row_len());
        par::map_rows(t, y, img, |imgs, yr| {
            let mut sums = stats.then(|| BlockSums::new(s.cout));
            let mut cols = Vec::new();
            for (i, n) in imgs.enumerate() {
                let yi = &mut yr[i * img..(i + 1) * img];
                for g in 0..s.groups {
                    im2col(s, x, d, n, g, &mut cols);
                    let cog = s.cout / s.groups;
                    let k = s.row_len();
                    gemm(
                        oh * ow,
                        k,
                        cog,
                        &cols,
                        (k, 1),
                        &w[g * cog * k..],
                        (1, k),
                        0.0,
                        &mut yi[g * cog..],
                        (s.cout, 1),
                    );
                }
                if let Some(b) = sums.as_mut() {
                    b.add(yi);
                }
            }
            finish(sums)
        })
    }
}

fn add_bias(s: &ConvSpec, bias: Option<&[f32]>, y: &mut [f32]) {
    if let Some(b) = bias {
        for row in y.chunks_mut(s.cout) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }
}

/// Convolution backward. Writes `dx` (when given) and *adds* to `dw` (when
/// given). The bias gradient is [`channel_sums`] of `dy`. `x` is only
/// read for `dw` (it may be empty otherwise).
///
/// With `pre = (z, op)` (depthwise and pointwise convs without `dw`
/// only), `dy` is the gradient at the output of the batch-norm that
/// follows this conv, `z` this conv's output, and the conv's output
/// gradient is `op` applied to them, computed one image or one block of
/// rows at a time into a buffer that stays in cache (same bits as
/// applying it to the whole tensor first).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    s: &ConvSpec,
    x: &[f32],
    d: Dims,
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    pre: Option<(&[f32], &BnGrad)>,
    threads: usize,
) {
    assert!(
        pre.is_none() || (takes_pre(s) && dw.is_none()),
        "conv_backward: `pre` on a conv that does not take it"
    );
    if s.is_depthwise() {
        return dw_backward(s, x, d, w, dy, dx, dw, pre, threads);
    }
    let (oh, ow) = s.out_hw(d.h, d.w);
    if s.is_pointwise() {
        let t = par::threads_for(threads, d.rows(), s.cin * s.cout);
        if let Some(dx) = dx {
            par::map_rows(t, dx, s.cin, |rows, dxr| {
                let block = if pre.is_some() {
                    STATS_BLOCK_ROWS
                } else {
                    rows.len().max(1)
                };
                let mut buf = Vec::new();
                for (bi, dxb) in dxr.chunks_mut(block * s.cin).enumerate() {
                    let r0 = rows.start + bi * block;
                    let nr = dxb.len() / s.cin;
                    let dyb = &dy[r0 * s.cout..(r0 + nr) * s.cout];
                    let dyb = match pre {
                        Some((z, op)) => {
                            buf.resize(dyb.len(), 0.0);
                            op.apply(&z[r0 * s.cout..(r0 + nr) * s.cout], dyb, &mut buf);
                            &buf[..]
                        }
                        None => dyb,
                    };
                    gemm(
                        nr,
                        s.cout,
                        s.cin,
                        dyb,
                        (s.cout, 1),
                        w,
                        (s.cin, 1),
                        0.0,
                        dxb,
                        (s.cin, 1),
                    );
                }
            });
        }
        if let Some(dw) = dw {
            let parts = par::map(t, d.rows(), |rows| {
                let mut g = vec![0f32; s.cout * s.cin];
                gemm(
                    s.cout,
                    rows.len(),
                    s.cin,
                    &dy[rows.start * s.cout..],
                    (1, s.cout),
                    &x[rows.start * s.cin..],
                    (s.cin, 1),
                    0.0,
                    &mut g,
                    (s.cin, 1),
                );
                g
            });
            add_into(dw, &par::sum_in_order(parts));
        }
        return;
    }
    let k = s.row_len();
    let cog = s.cout / s.groups;
    let img_out = oh * ow * s.cout;
    let t = par::threads_for(threads, d.n, img_out * k);
    let want_dw = dw.is_some();
    let work = |imgs: Range<usize>, dxr: Option<&mut [f32]>| -> Vec<f32> {
        let mut gw = if want_dw {
            vec![0f32; s.cout * k]
        } else {
            Vec::new()
        };
        let mut cols = Vec::new();
        let mut dcols = vec![0f32; oh * ow * k];
        let img_in = d.h * d.w * d.c;
        let mut dxr = dxr;
        if let Some(dxr) = dxr.as_deref_mut() {
            dxr.fill(0.0);
        }
        for (i, n) in imgs.enumerate() {
            let dyi = &dy[n * img_out..(n + 1) * img_out];
            for g in 0..s.groups {
                if want_dw {
                    im2col(s, x, d, n, g, &mut cols);
                    gemm(
                        cog,
                        oh * ow,
                        k,
                        &dyi[g * cog..],
                        (1, s.cout),
                        &cols,
                        (k, 1),
                        1.0,
                        &mut gw[g * cog * k..],
                        (k, 1),
                    );
                }
                if let Some(dxr) = dxr.as_deref_mut() {
                    gemm(
                        oh * ow,
                        cog,
                        k,
                        &dyi[g * cog..],
                        (s.cout, 1),
                        &w[g * cog * k..],
                        (k, 1),
                        0.0,
                        &mut dcols,
                        (k, 1),
                    );
                    col2im_add(s, &dcols, d, g, &mut dxr[i * img_in..(i + 1) * img_in]);
                }
            }
        }
        gw
    };
    let parts = match dx {
        Some(dx) => par::map_rows(t, dx, d.h * d.w * d.c, |r, dxr| work(r, Some(dxr))),
        None => par::map(t, d.n, |r| work(r, None)),
    };
    if let Some(dw) = dw {
        add_into(dw, &par::sum_in_order(parts));
    }
}

/// Rows `(oy, ox)` of group `g`'s patches of image `n`; columns in OIHW's
/// `(ci, ky, kx)` order, zeros where the window covers padding.
fn im2col(s: &ConvSpec, x: &[f32], d: Dims, n: usize, g: usize, cols: &mut Vec<f32>) {
    let (oh, ow) = s.out_hw(d.h, d.w);
    let cig = s.cin / s.groups;
    let k = s.row_len();
    cols.clear();
    cols.resize(oh * ow * k, 0.0);
    let [pt, pl, _, _] = s.pads;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &mut cols[(oy * ow + ox) * k..(oy * ow + ox + 1) * k];
            for ky in 0..s.kh {
                let Some(iy) = ConvSpec::src(oy, ky, s.sh, pt, d.h) else {
                    continue;
                };
                for kx in 0..s.kw {
                    let Some(ix) = ConvSpec::src(ox, kx, s.sw, pl, d.w) else {
                        continue;
                    };
                    let base = ((n * d.h + iy) * d.w + ix) * d.c + g * cig;
                    for ci in 0..cig {
                        row[(ci * s.kh + ky) * s.kw + kx] = x[base + ci];
                    }
                }
            }
        }
    }
}

/// Adds patch gradients back onto one image's input gradient.
fn col2im_add(s: &ConvSpec, dcols: &[f32], d: Dims, g: usize, dx: &mut [f32]) {
    let (oh, ow) = s.out_hw(d.h, d.w);
    let cig = s.cin / s.groups;
    let k = s.row_len();
    let [pt, pl, _, _] = s.pads;
    for oy in 0..oh {
        for ox in 0..ow {
            let row = &dcols[(oy * ow + ox) * k..(oy * ow + ox + 1) * k];
            for ky in 0..s.kh {
                let Some(iy) = ConvSpec::src(oy, ky, s.sh, pt, d.h) else {
                    continue;
                };
                for kx in 0..s.kw {
                    let Some(ix) = ConvSpec::src(ox, kx, s.sw, pl, d.w) else {
                        continue;
                    };
                    let base = (iy * d.w + ix) * d.c + g * cig;
                    for ci in 0..cig {
                        dx[base + ci] += row[(ci * s.kh + ky) * s.kw + kx];
                    }
                }
            }
        }
    }
}

/// Depthwise weights `[c][tap]` as `[tap][c]`, so channel loops are contiguous.
fn taps_major(s: &ConvSpec, w: &[f32]) -> Vec<f32> {
    let taps = s.kh * s.kw;
    let mut t = vec![0f32; taps * s.cout];
    for c in 0..s.cout {
        for k in 0..taps {
            t[k * s.cout + c] = w[c * taps + k];
        }
    }
    t
}

tile_fn! {
/// One image of a depthwise conv: `x` is `(h, w, c)`, `wt` `[tap][c]`.
fn dw_forward_image(s: &ConvSpec, d: Dims, x: &[f32], wt: &[f32], y: &mut [f32]) {
    let (oh, ow) = s.out_hw(d.h, d.w);
    let c = s.cout;
    let [pt, pl, _, _] = s.pads;
    for oy in 0..oh {
        for ox in 0..ow {
            let o = (oy * ow + ox) * c;
            let out = &mut y[o..o + c];
            out.fill(0.0);
            for ky in 0..s.kh {
                let Some(iy) = ConvSpec::src(oy, ky, s.sh, pt, d.h) else {
                    continue;
                };
                for kx in 0..s.kw {
                    let Some(ix) = ConvSpec::src(ox, kx, s.sw, pl, d.w) else {
                        continue;
                    };
                    let xi = (iy * d.w + ix) * c;
                    let xs = &x[xi..xi + c];
                    let ws = &wt[(ky * s.kw + kx) * c..(ky * s.kw + kx + 1) * c];
                    for ((o, &a), &b) in out.iter_mut().zip(xs).zip(ws) {
                        *o += a * b;
                    }
                }
            }
        }
    }
}
}

#[allow(clippy::too_many_arguments)]
fn dw_backward(
    s: &ConvSpec,
    x: &[f32],
    d: Dims,
    w: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dw: Option<&mut [f32]>,
    pre: Option<(&[f32], &BnGrad)>,
    threads: usize,
) {
    let (oh, ow) = s.out_hw(d.h, d.w);
    let c = s.cout;
    let taps = s.kh * s.kw;
    let wt = taps_major(s, w);
    let want_dw = dw.is_some();
    let t = par::threads_for(threads, d.n, 2 * oh * ow * c * taps);
    let work = |imgs: Range<usize>, mut dxr: Option<&mut [f32]>| -> Vec<f32> {
        let mut gw = if want_dw {
            vec![0f32; taps * c]
        } else {
            Vec::new()
        };
        let img_in = d.h * d.w * c;
        let img_out = oh * ow * c;
        let mut buf = Vec::new();
        for (i, n) in imgs.enumerate() {
            let dyi = &dy[n * img_out..(n + 1) * img_out];
            let dyi = match pre {
                Some((z, op)) => {
                    buf.resize(img_out, 0.0);
                    op.apply(&z[n * img_out..(n + 1) * img_out], dyi, &mut buf);
                    &buf[..]
                }
                None => dyi,
            };
            // (`x` is only read for the weight gradient: a frozen kernel's
            // input may not exist, see `conv_forward`'s `pre`)
            let xi = if want_dw {
                &x[n * img_in..(n + 1) * img_in]
            } else {
                &[]
            };
            dw_backward_image(
                s,
                d,
                xi,
                &wt,
                dyi,
                dxr.as_deref_mut()
                    .map(|d| &mut d[i * img_in..(i + 1) * img_in]),
                want_dw.then_some(&mut gw[..]),
            );
        }
        gw
    };
    let parts = match dx {
        Some(dx) => par::map_rows(t, dx, d.h * d.w * c, |r, dxr| work(r, Some(dxr))),
        None => par::map(t, d.n, |r| work(r, None)),
    };
    if let Some(dw) = dw {
        let g = par::sum_in_order(parts);
        for ch in 0..c {
            for k in 0..taps {
                dw[ch * taps + k] += g[k * c + ch];
            }
        }
    }
}

tile_fn! {
/// One image of the depthwise backward: adds to `gw` (`[tap][c]` weight
/// gradient) and writes `dx` (the image's input gradient) when given.
fn dw_backward_image(
    s: &ConvSpec,
    d: Dims,
    x: &[f32],
    wt: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    gw: Option<&mut [f32]>,
) {
    let (oh, ow) = s.out_hw(d.h, d.w);
    let c = s.cout;
    let [pt, pl, _, _] = s.pads;
    let mut gw = gw;
    for oy in 0..oh {
        for ox in 0..ow {
            let o = (oy * ow + ox) * c;
            let g = &dy[o..o + c];
            for ky in 0..s.kh {
                let Some(iy) = ConvSpec::src(oy, ky, s.sh, pt, d.h) else {
                    continue;
                };
                for kx in 0..s.kw {
                    let Some(ix) = ConvSpec::src(ox, kx, s.sw, pl, d.w) else {
                        continue;
                    };
                    let tap = ky * s.kw + kx;
                    let xi = (iy * d.w + ix) * c;
                    if let Some(gw) = gw.as_deref_mut() {
                        let xs = &x[xi..xi + c];
                        let gs = &mut gw[tap * c..(tap + 1) * c];
                        for ((acc, &a), &b) in gs.iter_mut().zip(g).zip(xs) {
                            *acc += a * b;
                        }
                    }
                }
            }
        }
    }
    if let Some(dx) = dx {
        dw_input_grad_image(s, d, wt, dy, dx);
    }
}
}

tile_fn! {
/// One image's depthwise input gradient, gathered: every `dx` pixel is
/// written once, as the sum over taps of the output gradients that read it
/// (no zeroed buffer, no read-modify-write per tap).
fn dw_input_grad_image(s: &ConvSpec, d: Dims, wt: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (oh, ow) = s.out_hw(d.h, d.w);
    let c = s.cout;
    let [pt, pl, _, _] = s.pads;
    // Output coordinate whose tap `k` reads input coordinate `i`, if any.
    let dst = |i: usize, k: usize, stride: usize, pad: usize, len: usize| {
        (i + pad)
            .checked_sub(k)
            .filter(|v| v % stride == 0)
            .map(|v| v / stride)
            .filter(|&o| o < len)
    };
    for iy in 0..d.h {
        for ix in 0..d.w {
            let xi = (iy * d.w + ix) * c;
            let out = &mut dx[xi..xi + c];
            out.fill(0.0);
            for ky in 0..s.kh {
                let Some(oy) = dst(iy, ky, s.sh, pt, oh) else {
                    continue;
                };
                for kx in 0..s.kw {
                    let Some(ox) = dst(ix, kx, s.sw, pl, ow) else {
                        continue;
                    };
                    let tap = ky * s.kw + kx;
                    let o = (oy * ow + ox) * c;
                    let (g, ws) = (&dy[o..o + c], &wt[tap * c..(tap + 1) * c]);
                    for ((acc, &a), &b) in out.iter_mut().zip(g).zip(ws) {
                        *acc += a * b;
                    }
                }
            }
        }
    }
}
}

/// `acc += v`.
pub fn add_into(acc: &mut [f32], v: &[f32]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a += b;
    }
}

/// Value and derivative of an elementwise function at `x`.
pub fn unary_grad(u: &Unary, x: f32) -> (f32, f32) {
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    match u {
        Unary::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
        Unary::Clip(lo, hi) => (
            x.max(*lo).min(*hi),
            if x > *lo && x < *hi { 1.0 } else { 0.0 },
        ),
        Unary::HardSigmoid { alpha, beta } => {
            let v = alpha * x + beta;
            (
                v.clamp(0.0, 1.0),
                if v > 0.0 && v < 1.0 { *alpha } else { 0.0 },
            )
        }
        Unary::HardSwish { alpha, beta } => {
            let v = alpha * x + beta;
            let h = v.clamp(0.0, 1.0);
            let dh = if v > 0.0 && v < 1.0 { *alpha } else { 0.0 };
            (x * h, h + x * dh)
        }
        Unary::Sigmoid => {
            let s = sig(x);
            (s, s * (1.0 - s))
        }
        Unary::Swish => {
            let s = sig(x);
            (x * s, s + x * s * (1.0 - s))
        }
        Unary::Tanh => {
            let t = x.tanh();
            (t, 1.0 - t * t)
        }
        Unary::LeakyRelu { alpha } => {
            if x >= 0.0 {
                (x, 1.0)
            } else {
                (alpha * x, *alpha)
            }
        }
        Unary::Expr(e) => expr_grad(e, x),
    }
}

/// Forward-mode derivative of an elementwise expression (dual numbers).
fn expr_grad(e: &crate::ir::Expr, x: f32) -> (f32, f32) {
    use crate::ir::Expr as E;
    match e {
        E::X => (x, 1.0),
        E::Const(c) => (*c, 0.0),
        E::Add(a, b) => {
            let ((av, ad), (bv, bd)) = (expr_grad(a, x), expr_grad(b, x));
            (av + bv, ad + bd)
        }
        E::Sub(a, b) => {
            let ((av, ad), (bv, bd)) = (expr_grad(a, x), expr_grad(b, x));
            (av - bv, ad - bd)
        }
        E::Mul(a, b) => {
            let ((av, ad), (bv, bd)) = (expr_grad(a, x), expr_grad(b, x));
            (av * bv, ad * bv + av * bd)
        }
        E::Div(a, b) => {
            let ((av, ad), (bv, bd)) = (expr_grad(a, x), expr_grad(b, x));
            (av / bv, (ad * bv - av * bd) / (bv * bv))
        }
        E::Max(a, b) => {
            let ((av, ad), (bv, bd)) = (expr_grad(a, x), expr_grad(b, x));
            if av >= bv {
                (av, ad)
            } else {
                (bv, bd)
            }
        }
        E::Min(a, b) => {
            let ((av, ad), (bv, bd)) = (expr_grad(a, x), expr_grad(b, x));
            if av <= bv {
                (av, ad)
            } else {
                (bv, bd)
            }
        }
        E::Neg(a) => {
            let (v, d) = expr_grad(a, x);
            (-v, -d)
        }
        E::Exp(a) => {
            let (v, d) = expr_grad(a, x);
            let e = v.exp();
            (e, e * d)
        }
        E::Tanh(a) => {
            let (v, d) = expr_grad(a, x);
            let t = v.tanh();
            (t, (1.0 - t * t) * d)
        }
        E::Sigmoid(a) => {
            let (v, d) = expr_grad(a, x);
            let s = 1.0 / (1.0 + (-v).exp());
            (s, s * (1.0 - s) * d)
        }
    }
}

/// Softmax cross-entropy, mean over the batch. `logits` is `[n][k]`.
/// Returns (loss, number correct) and writes `dlogits`.
pub fn softmax_xent(
    logits: &[f32],
    k: usize,
    labels: &[usize],
    dlogits: &mut [f32],
) -> (f64, usize) {
    let n = labels.len();
    let mut loss = 0f64;
    let mut correct = 0;
    for (i, &label) in labels.iter().enumerate() {
        let row = &logits[i * k..(i + 1) * k];
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = row.iter().map(|&v| f64::from(v - m).exp()).sum();
        let lse = f64::from(m) + sum.ln();
        loss += lse - f64::from(row[label]);
        if crate::host::argmax(row) == label {
            correct += 1;
        }
        let d = &mut dlogits[i * k..(i + 1) * k];
        for j in 0..k {
            let p = (f64::from(row[j]) - lse).exp();
            d[j] = ((p - if j == label { 1.0 } else { 0.0 }) / n as f64) as f32;
        }
    }
    (loss / n as f64, correct)
}
