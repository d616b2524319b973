//! Per-channel passes over channels-last `[rows][c]` matrices: sums and
//! moments, batch-norm forward and backward (training mode), clamps and
//! their masks. All are memory-bound over tensors far larger than any
//! cache, so each is one streaming pass of flat, vectorizable tile loops
//! (see [`tile_rows`]); statistics add f32 partial sums over [`FOLD_ROWS`]
//! rows in f64, in a fixed order.

use super::par;
use crate::ir::Act;

/// Rows per tile for `c` channels: per-channel loops run over whole tiles
/// of `tile_rows(c) * c` values (at least 256) against per-channel vectors
/// repeated as often, so every inner loop is a flat, vectorizable loop
/// whatever `c` is, and the repeated vectors (up to six per loop) stay in
/// the L1 cache.
pub(super) fn tile_rows(c: usize) -> usize {
    256usize.div_ceil(c.max(1))
}

/// Rows summed in f32 (in tile-shaped accumulators) before the partial
/// sums are added in f64.
pub(super) const FOLD_ROWS: usize = 256;

/// `v` (one value per channel) repeated for `rows` rows.
fn tiled(v: &[f32], rows: usize) -> Vec<f32> {
    let mut t = Vec::with_capacity(v.len() * rows);
    for _ in 0..rows {
        t.extend_from_slice(v);
    }
    t
}

/// Folds a tile-shaped accumulator back to one value per channel (f64).
pub(super) fn fold_tile(acc: &[f32], c: usize, out: &mut [f64]) {
    for row in acc.chunks_exact(c) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o += f64::from(v);
        }
    }
}

/// Per-channel sums of a `[rows][c]` matrix (f32 over [`FOLD_ROWS`] rows,
/// f64 across them, fixed order).
pub fn channel_sums(v: &[f32], c: usize, threads: usize) -> Vec<f64> {
    let tr = tile_rows(c);
    let rows = v.len() / c.max(1);
    let t = par::threads_for(threads, rows, c);
    let parts = par::map(t, rows, |r| {
        let mut out = vec![0f64; c];
        let mut acc = vec![0f32; tr * c];
        for group in v[r.start * c..r.end * c].chunks(FOLD_ROWS.div_ceil(tr) * tr * c) {
            acc.fill(0.0);
            for tile in group.chunks(tr * c) {
                for (a, &x) in acc.iter_mut().zip(tile) {
                    *a += x;
                }
            }
            fold_tile(&acc, c, &mut out);
        }
        out
    });
    sum_f64(parts, c)
}

pub(super) fn sum_f64(parts: Vec<Vec<f64>>, c: usize) -> Vec<f64> {
    let mut acc = vec![0f64; c];
    for p in parts {
        for (a, b) in acc.iter_mut().zip(p) {
            *a += b;
        }
    }
    acc
}

/// Per-channel mean and biased variance of a `[rows][c]` matrix. One pass:
/// sums of `x - pivot` and its square (the pivot, row 0, keeps the
/// subtraction from cancelling), f32 over [`FOLD_ROWS`] rows, f64 across.
pub fn channel_moments(v: &[f32], c: usize, threads: usize) -> (Vec<f64>, Vec<f64>) {
    let tr = tile_rows(c);
    let rows = v.len() / c.max(1);
    if rows == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let pivot = tiled(&v[..c], tr);
    let t = par::threads_for(threads, rows, 2 * c);
    let parts = par::map(t, rows, |r| {
        let mut out = vec![0f64; 2 * c];
        let mut s1 = vec![0f32; tr * c];
        let mut s2 = vec![0f32; tr * c];
        for group in v[r.start * c..r.end * c].chunks(FOLD_ROWS.div_ceil(tr) * tr * c) {
            s1.fill(0.0);
            s2.fill(0.0);
            for tile in group.chunks(tr * c) {
                moments_tile(tile, &pivot, &mut s1, &mut s2);
            }
            let (o1, o2) = out.split_at_mut(c);
            fold_tile(&s1, c, o1);
            fold_tile(&s2, c, o2);
        }
        out
    });
    let acc = sum_f64(parts, 2 * c);
    let n = rows as f64;
    let mut mean = vec![0f64; c];
    let mut var = vec![0f64; c];
    for k in 0..c {
        let m = acc[k] / n;
        mean[k] = f64::from(pivot[k]) + m;
        var[k] = (acc[c + k] / n - m * m).max(0.0);
    }
    (mean, var)
}

tile_fn! {
/// `s1 += x - p`, `s2 += (x - p)^2`, element-wise.
pub(super) fn moments_tile(x: &[f32], p: &[f32], s1: &mut [f32], s2: &mut [f32]) {
    let n = x.len();
    let (p, s1, s2) = (&p[..n], &mut s1[..n], &mut s2[..n]);
    for i in 0..n {
        let d = x[i] - p[i];
        s1[i] += d;
        s2[i] += d * d;
    }
}
}

tile_fn! {
/// `y = clamp(z * s + b, lo, hi)`, element-wise.
fn affine_clamp_tile(z: &[f32], s: &[f32], b: &[f32], lo: f32, hi: f32, y: &mut [f32]) {
    let n = z.len();
    let (s, b, y) = (&s[..n], &b[..n], &mut y[..n]);
    for i in 0..n {
        y[i] = clamp(z[i] * s[i] + b[i], lo, hi);
    }
}
}

tile_fn! {
/// Batch-norm backward sums over one tile: with `m` the clamp's mask,
/// `s1 += g*m`, `s2 += g*m * xhat`. `stats` = (mean, inv_std, scale, shift).
fn bn_reduce_tile(
    z: &[f32],
    g: &[f32],
    stats: [&[f32]; 4],
    bounds: (f32, f32),
    s1: &mut [f32],
    s2: &mut [f32],
) {
    let (lo, hi) = bounds;
    let n = z.len();
    let [mean, inv, sc, sh] = stats;
    let (g, mean, inv, sc, sh) = (&g[..n], &mean[..n], &inv[..n], &sc[..n], &sh[..n]);
    let (s1, s2) = (&mut s1[..n], &mut s2[..n]);
    for i in 0..n {
        let u = z[i] * sc[i] + sh[i];
        // Load first and `&`, not `&&`: no branch, so the loop vectorizes
        // (the mask is a select).
        let gi = g[i];
        let gm = if (u > lo) & (u < hi) { gi } else { 0.0 };
        s1[i] += gm;
        s2[i] += gm * ((z[i] - mean[i]) * inv[i]);
    }
}
}

tile_fn! {
/// Batch-norm input gradient over one tile:
/// `out = a * (g*m - mb - (z - mean) * mg)`. `coef` = (a, mb, mean, mg,
/// scale, shift).
fn bn_apply_grad_tile(
    z: &[f32],
    g: &[f32],
    coef: [&[f32]; 6],
    bounds: (f32, f32),
    out: &mut [f32],
) {
    let (lo, hi) = bounds;
    let n = z.len();
    let [a, mb, mean, mg, sc, sh] = coef;
    let (a, mb, mean, mg, sc, sh) = (&a[..n], &mb[..n], &mean[..n], &mg[..n], &sc[..n], &sh[..n]);
    let (g, out) = (&g[..n], &mut out[..n]);
    for i in 0..n {
        let u = z[i] * sc[i] + sh[i];
        let gi = g[i];
        let gm = if (u > lo) & (u < hi) { gi } else { 0.0 };
        out[i] = a[i] * (gm - mb[i] - (z[i] - mean[i]) * mg[i]);
    }
}
}

/// `v` clamped to `[lo, hi]` with plain compares (compiles to min/max
/// instructions; `f32::max/min` carry NaN rules that cost extra
/// instructions per element, and training data is checked finite).
#[inline(always)]
fn clamp(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

/// The clamp of an activation as (lo, hi).
fn bounds(act: Act) -> (f32, f32) {
    match act {
        Act::None => (f32::NEG_INFINITY, f32::INFINITY),
        Act::Relu => (0.0, f32::INFINITY),
        Act::Clip(lo, hi) => (lo, hi),
    }
}

/// Batch-norm as `z * scale + shift` per channel. The forward pass and the
/// backward's recomputed clamp mask both use this, so they agree bit for
/// bit.
fn scale_shift(gamma: &[f32], beta: &[f32], mean: &[f32], inv_std: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(inv_std).map(|(g, i)| g * i).collect();
    let shift = beta
        .iter()
        .zip(mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    (scale, shift)
}

/// A batch-norm with given per-channel statistics and the clamp after it,
/// `y = act(gamma * (z - mean) * inv_std + beta)`, ready for tile loops.
/// [`bn_forward`] applies it to a whole tensor; a conv whose input is
/// only ever read by that conv applies it block by block to its input
/// instead ([`super::kernels::conv_forward`]'s `pre`), so the tensor is
/// never written out. Both give the same bits.
pub struct BnAct {
    c: usize,
    scale: Vec<f32>,
    shift: Vec<f32>,
    lo: f32,
    hi: f32,
}

impl BnAct {
    pub fn new(mean: &[f32], inv_std: &[f32], gamma: &[f32], beta: &[f32], act: Act) -> Self {
        let c = mean.len();
        let tr = tile_rows(c);
        let (scale, shift) = scale_shift(gamma, beta, mean, inv_std);
        let (lo, hi) = bounds(act);
        BnAct {
            c,
            scale: tiled(&scale, tr),
            shift: tiled(&shift, tr),
            lo,
            hi,
        }
    }

    /// `y = act(z * scale + shift)` over whole rows of `c` channels.
    pub fn apply(&self, z: &[f32], y: &mut [f32]) {
        let tile = self.scale.len();
        for (yt, zt) in y.chunks_mut(tile).zip(z.chunks(tile)) {
            affine_clamp_tile(zt, &self.scale, &self.shift, self.lo, self.hi, yt);
        }
    }
}

/// Batch-norm with given per-channel statistics, then a clamp:
/// `y = act(gamma * (z - mean) * inv_std + beta)`.
#[allow(clippy::too_many_arguments)]
pub fn bn_forward(
    z: &[f32],
    c: usize,
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Act,
    y: &mut [f32],
    threads: usize,
) {
    let op = BnAct::new(mean, inv_std, gamma, beta, act);
    debug_assert_eq!(op.c, c);
    let t = par::threads_for(threads, z.len() / c.max(1), c);
    par::map_rows(t, y, c, |r, yr| op.apply(&z[r.start * c..r.end * c], yr));
}

/// The input gradient of a batch-norm in training mode and its clamp,
/// once the batch's sums are known ([`bn_backward_sums`]): from the
/// gradient `g` at the clamp's output to the gradient at `z`.
pub struct BnGrad {
    /// (a, mb, mean, mg, scale, shift), each tiled
    coef: [Vec<f32>; 6],
    bounds: (f32, f32),
}

impl BnGrad {
    /// `out = d/dz` over whole rows (`z`, `g` and `out` of equal length).
    pub fn apply(&self, z: &[f32], g: &[f32], out: &mut [f32]) {
        let tile = self.coef[0].len();
        let coef = [
            &self.coef[0][..],
            &self.coef[1],
            &self.coef[2],
            &self.coef[3],
            &self.coef[4],
            &self.coef[5],
        ];
        for ((zt, gt), ot) in z.chunks(tile).zip(g.chunks(tile)).zip(out.chunks_mut(tile)) {
            bn_apply_grad_tile(zt, gt, coef, self.bounds, ot);
        }
    }

    /// [`BnGrad::apply`] over a whole tensor, in place (tile by tile
    /// through a buffer that stays in the L1 cache).
    pub fn apply_in_place(&self, z: &[f32], g: &mut [f32], c: usize, threads: usize) {
        let tile = self.coef[0].len();
        let t = par::threads_for(threads, z.len() / c.max(1), 2 * c);
        par::map_rows(t, g, c, |r, gr| {
            let mut buf = vec![0f32; tile];
            let zr = &z[r.start * c..r.end * c];
            for (gt, zt) in gr.chunks_mut(tile).zip(zr.chunks(tile)) {
                let b = &mut buf[..gt.len()];
                self.apply(zt, gt, b);
                gt.copy_from_slice(b);
            }
        });
    }
}

/// Batch-norm backward in training mode (statistics of this batch), with
/// the clamp that follows it, first half: the per-channel sums over the
/// batch. `g` is the gradient at the clamp's output. The clamp's mask is
/// recomputed from `z` exactly as [`bn_forward`] computed the clamp's
/// input (same operations, same operands), so no pass over the output is
/// needed. Returns `(dgamma, dbeta)` and the second half, which maps `g`
/// to the gradient at `z` — over the whole tensor
/// ([`BnGrad::apply_in_place`]) or block by block inside the conv's
/// backward (`super::kernels::conv_backward`'s `pre`).
#[allow(clippy::too_many_arguments)]
pub fn bn_backward_sums(
    z: &[f32],
    c: usize,
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Act,
    g: &[f32],
    threads: usize,
) -> (Vec<f32>, Vec<f32>, BnGrad) {
    let tr = tile_rows(c);
    let rows = z.len() / c;
    let t = par::threads_for(threads, rows, 2 * c);
    let (mean_t, inv_t) = (tiled(mean, tr), tiled(inv_std, tr));
    let (scale, shift) = scale_shift(gamma, beta, mean, inv_std);
    let (scale_t, shift_t) = (tiled(&scale, tr), tiled(&shift, tr));
    let (lo, hi) = bounds(act);
    let parts = par::map(t, rows, |r| {
        let mut out = vec![0f64; 2 * c];
        let mut s1 = vec![0f32; tr * c];
        let mut s2 = vec![0f32; tr * c];
        let zb = &z[r.start * c..r.end * c];
        let gb = &g[r.start * c..r.end * c];
        for (zg, gg) in zb
            .chunks(FOLD_ROWS.div_ceil(tr) * tr * c)
            .zip(gb.chunks(FOLD_ROWS.div_ceil(tr) * tr * c))
        {
            s1.fill(0.0);
            s2.fill(0.0);
            for (zt, gt) in zg.chunks(tr * c).zip(gg.chunks(tr * c)) {
                let stats = [&mean_t[..], &inv_t, &scale_t, &shift_t];
                bn_reduce_tile(zt, gt, stats, (lo, hi), &mut s1, &mut s2);
            }
            let (o1, o2) = out.split_at_mut(c);
            fold_tile(&s1, c, o1);
            fold_tile(&s2, c, o2);
        }
        out
    });
    let s = sum_f64(parts, 2 * c);
    let dbeta: Vec<f32> = s[..c].iter().map(|&v| v as f32).collect();
    let dgamma: Vec<f32> = s[c..].iter().map(|&v| v as f32).collect();
    let m = rows as f32;
    let a: Vec<f32> = (0..c).map(|k| gamma[k] * inv_std[k]).collect();
    let mb: Vec<f32> = (0..c).map(|k| dbeta[k] / m).collect();
    // xhat * dgamma / m = (z - mean) * inv * dgamma / m
    let mg: Vec<f32> = (0..c).map(|k| dgamma[k] / m * inv_std[k]).collect();
    let op = BnGrad {
        coef: [
            tiled(&a, tr),
            tiled(&mb, tr),
            mean_t,
            tiled(&mg, tr),
            scale_t,
            shift_t,
        ],
        bounds: (lo, hi),
    };
    (dgamma, dbeta, op)
}

/// Batch-norm backward in training mode with the clamp that follows it,
/// both halves: `g` (the gradient at the clamp's output) is overwritten
/// with the gradient at the batch-norm input `z`. Returns
/// `(dgamma, dbeta)`.
#[allow(clippy::too_many_arguments)]
pub fn bn_backward_train(
    z: &[f32],
    c: usize,
    mean: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    beta: &[f32],
    act: Act,
    g: &mut [f32],
    threads: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (dgamma, dbeta, op) = bn_backward_sums(z, c, mean, inv_std, gamma, beta, act, g, threads);
    op.apply_in_place(z, g, c, threads);
    (dgamma, dbeta)
}

/// Zeroes `dy` where a clamp was saturated; the mask is read off the
/// clamp's output `y` (inside the open interval the clamp is the identity).
pub fn act_mask(act: Act, y: &[f32], dy: &mut [f32], threads: usize) {
    if act == Act::None {
        return;
    }
    let (lo, hi) = bounds(act);
    par::for_each_piece(threads, dy, |off, piece| {
        for (g, &v) in piece.iter_mut().zip(&y[off..]) {
            *g = if (v > lo) & (v < hi) { *g } else { 0.0 };
        }
    });
}

/// `y = act(y)` in place.
pub fn act_apply(act: Act, y: &mut [f32], threads: usize) {
    if act == Act::None {
        return;
    }
    let (lo, hi) = bounds(act);
    par::for_each_piece(threads, y, |_, piece| {
        for v in piece {
            *v = clamp(*v, lo, hi);
        }
    });
}

/// `acc += v`, in parallel.
pub fn add_into_par(acc: &mut [f32], v: &[f32], threads: usize) {
    par::for_each_piece(threads, acc, |off, piece| {
        for (a, b) in piece.iter_mut().zip(&v[off..]) {
            *a += b;
        }
    });
}
