//! The dotprod GEMM over weights packed per call ([`gemm_packed`]): 4
//! pixels × 16 channels per tile, `sdot` by element.

#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::arch::asm;
use core::ptr;

use crate::kernels::gemm::Gemm;
use crate::quant::ChannelRequant;

use super::requant::{load_n, short_requant, store16, OutV16, Rq4};

pub(super) const PK_N: usize = 16;
/// Bytes of the packed block on the stack: 16 channels × `k` <= 1024.
pub(super) const PK_BYTES: usize = 16 * 1024;
/// Fewer pixels than this (the fully connected layer) do not repay the
/// packing; they take the dot-product tiles.
pub(super) const PK_MIN_PIXELS: usize = 4;
/// Pixels per tile of the lane-indexed GEMM.
pub(super) const PK_MR: usize = 4;

/// `sdot acc.4s, w.16b, a.4b[L]`: lane `e` of `acc` gains
/// `Σ_b w[4e + b]·a[4L + b]`.
///
/// # Safety
///
/// dotprod.
#[inline(always)]
pub(super) unsafe fn sdot_lane<const L: i32>(
    mut acc: int32x4_t,
    w: int8x16_t,
    a: int8x16_t,
) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
        acc = inout(vreg) acc,
        w = in(vreg) w,
        a = in(vreg) a,
        l = const L,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// Lane-indexed GEMM: per block of 16 output channels, the weights are
/// packed once (on the stack) so that one 16-byte vector holds 4 reduction
/// bytes of 4 channels; `sdot` by element then multiplies it with one
/// 4-byte group of a pixel's 16-byte load, and each i32 lane accumulates
/// one channel. A pixel's 16 channel sums come out in order: no horizontal
/// reduction, the bias starts in the accumulators, and the requantization
/// runs on 16 outputs at a time. The packing (4 loads, 8 `trn`, 4 stores per
/// 64 bytes) is amortized over every pixel of the call.
///
/// # Safety
///
/// NEON and dotprod; `p` passed `Gemm::check`; `p.m >= 1`; `k % 4 == 0`
/// and `16·k <= PK_BYTES`.
#[inline(always)]
pub(super) unsafe fn gemm_packed(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    let mut wp = [0i8; PK_BYTES];
    let mut n0 = 0;
    while n0 < p.n {
        let nr = (p.n - n0).min(PK_N);
        match nr.div_ceil(4) {
            1 => packed_cols::<1>(p, n0, nr, &mut wp, out, ldo),
            2 => packed_cols::<2>(p, n0, nr, &mut wp, out, ldo),
            3 => packed_cols::<3>(p, n0, nr, &mut wp, out, ldo),
            _ => packed_cols::<4>(p, n0, nr, &mut wp, out, ldo),
        }
        n0 += nr;
    }
}

/// 4x4 transpose of 32-bit lanes: `r[e]` holds 4 groups of row `e`; the
/// result's vector `j` holds group `j` of rows 0..4.
///
/// # Safety
///
/// NEON.
#[inline(always)]
pub(super) unsafe fn transpose4(r: [int8x16_t; 4]) -> [int8x16_t; 4] {
    let r0 = vreinterpretq_s32_s8(r[0]);
    let r1 = vreinterpretq_s32_s8(r[1]);
    let r2 = vreinterpretq_s32_s8(r[2]);
    let r3 = vreinterpretq_s32_s8(r[3]);
    let t0 = vreinterpretq_s64_s32(vtrn1q_s32(r0, r1));
    let t1 = vreinterpretq_s64_s32(vtrn2q_s32(r0, r1));
    let t2 = vreinterpretq_s64_s32(vtrn1q_s32(r2, r3));
    let t3 = vreinterpretq_s64_s32(vtrn2q_s32(r2, r3));
    [
        vreinterpretq_s8_s64(vtrn1q_s64(t0, t2)),
        vreinterpretq_s8_s64(vtrn1q_s64(t1, t3)),
        vreinterpretq_s8_s64(vtrn2q_s64(t0, t2)),
        vreinterpretq_s8_s64(vtrn2q_s64(t1, t3)),
    ]
}

/// Channels `n0..n0 + nr` (`nr <= 4·Q`) of [`gemm_packed`].
///
/// # Safety
///
/// As [`gemm_packed`]; `nr >= 1`.
#[inline(always)]
pub(super) unsafe fn packed_cols<const Q: usize>(
    p: &Gemm<'_>,
    n0: usize,
    nr: usize,
    wp: &mut [i8; PK_BYTES],
    out: *mut i8,
    ldo: usize,
) {
    let k = p.k;
    let (k16, rem) = (k / 16, k % 16);
    let w0 = p.w.as_ptr() as *const i8;
    let wd = wp.as_mut_ptr();
    // Pack: group g (4 bytes of k) of quad q at `wd + (g·Q + q)·16`; zero
    // past `k` and for channels past `nr`.
    for q in 0..Q {
        let mut rows = [w0; 4];
        for e in 0..4 {
            rows[e] = w0.add((n0 + (4 * q + e).min(nr - 1)) * p.ldw);
        }
        let live = |e: usize| 4 * q + e < nr;
        for st in 0..k16 + (rem > 0) as usize {
            let n = if st < k16 { 16 } else { rem };
            let mut r = [vdupq_n_s8(0); 4];
            for e in 0..4 {
                if live(e) {
                    r[e] = load_n(rows[e].add(16 * st), n);
                }
            }
            let gv = transpose4(r);
            for j in 0..n.div_ceil(4) {
                vst1q_s8(wd.add(((4 * st + j) * Q + q) * 16), gv[j]);
            }
        }
    }
    let mut bias = [0i32; 16];
    let mut ch = [ChannelRequant {
        mult: 0,
        shift: 31,
        bias: 0,
    }; 16];
    for c in 0..nr {
        ch[c] = p.rq[n0 + c];
        bias[c] = ch[c].bias;
    }
    let mut init = [vdupq_n_s32(0); Q];
    let mut rqs = [Rq4::new(&[ch[0]; 4]); Q];
    for q in 0..Q {
        init[q] = vld1q_s32(bias.as_ptr().add(4 * q));
        let four = [ch[4 * q], ch[4 * q + 1], ch[4 * q + 2], ch[4 * q + 3]];
        rqs[q] = Rq4::new(&four);
    }
    let o = OutV16::new(p.q);
    // Whole quads store without a copy, keeping calls out of the loop.
    match (short_requant(&ch[..nr]), nr == 4 * Q) {
        (true, true) => packed_rows::<Q, true, true>(p, wd, &init, &rqs, &o, n0, nr, out, ldo),
        (true, false) => packed_rows::<Q, true, false>(p, wd, &init, &rqs, &o, n0, nr, out, ldo),
        (false, true) => packed_rows::<Q, false, true>(p, wd, &init, &rqs, &o, n0, nr, out, ldo),
        (false, false) => packed_rows::<Q, false, false>(p, wd, &init, &rqs, &o, n0, nr, out, ldo),
    }
}

/// Every pixel of [`packed_cols`]; `FULL`: `nr == 4·Q`.
///
/// # Safety
///
/// As [`packed_cols`]; `wp` holds the packed block.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn packed_rows<const Q: usize, const SHORT: bool, const FULL: bool>(
    p: &Gemm<'_>,
    wp: *const i8,
    init: &[int32x4_t; Q],
    rqs: &[Rq4; Q],
    o: &OutV16,
    n0: usize,
    nr: usize,
    out: *mut i8,
    ldo: usize,
) {
    // Row pointers advance by additions (no multiply per tile).
    let (lda, mut a, mut d) = (p.lda, p.a.as_ptr(), out.add(n0));
    let mut m0 = 0;
    while m0 + PK_MR <= p.m {
        let ap = [a, a.add(lda), a.add(2 * lda), a.add(3 * lda)];
        let acc = packed_tile::<PK_MR, Q>(&ap, wp, p.k, init);
        for i in 0..PK_MR {
            store16::<Q, SHORT, FULL>(&acc[i], rqs, o, d, nr);
            d = d.add(ldo);
        }
        a = a.add(PK_MR * lda);
        m0 += PK_MR;
    }
    while m0 < p.m {
        let acc = packed_tile::<1, Q>(&[a], wp, p.k, init);
        store16::<Q, SHORT, FULL>(&acc[0], rqs, o, d, nr);
        (a, d) = (a.add(lda), d.add(ldo));
        m0 += 1;
    }
}

/// One step of 4 reduction bytes (lane `L` of the pixels' loads) for `Q`
/// quads; `w` points at the step's packed vectors.
///
/// # Safety
///
/// dotprod; `Q·16` bytes readable at `w`.
#[inline(always)]
pub(super) unsafe fn packed_step<const P: usize, const Q: usize, const L: i32>(
    acc: &mut [[int32x4_t; Q]; P],
    w: *const i8,
    a: &[int8x16_t; P],
) {
    for q in 0..Q {
        let wv = vld1q_s8(w.add(16 * q));
        for i in 0..P {
            acc[i][q] = sdot_lane::<L>(acc[i][q], wv, a[i]);
        }
    }
}

/// Sums of `P` pixels × `4·Q` channels over `k` bytes, starting from `init`.
///
/// # Safety
///
/// dotprod; `k` bytes readable at every pixel; `wp` packed for `k`.
#[inline(always)]
pub(super) unsafe fn packed_tile<const P: usize, const Q: usize>(
    ap: &[*const i8; P],
    wp: *const i8,
    k: usize,
    init: &[int32x4_t; Q],
) -> [[int32x4_t; Q]; P] {
    let mut acc = [*init; P];
    let k16 = k / 16;
    let mut w = wp;
    let mut a = [vdupq_n_s8(0); P];
    for st in 0..k16 {
        for i in 0..P {
            a[i] = vld1q_s8(ap[i].add(16 * st));
        }
        packed_step::<P, Q, 0>(&mut acc, w, &a);
        packed_step::<P, Q, 1>(&mut acc, w.add(16 * Q), &a);
        packed_step::<P, Q, 2>(&mut acc, w.add(32 * Q), &a);
        packed_step::<P, Q, 3>(&mut acc, w.add(48 * Q), &a);
        w = w.add(64 * Q);
    }
    let rem = k % 16;
    if rem > 0 {
        for i in 0..P {
            a[i] = load_tail4(ap[i].add(16 * k16), rem);
        }
        packed_step::<P, Q, 0>(&mut acc, w, &a);
        if rem > 4 {
            packed_step::<P, Q, 1>(&mut acc, w.add(16 * Q), &a);
        }
        if rem > 8 {
            packed_step::<P, Q, 2>(&mut acc, w.add(32 * Q), &a);
        }
        if rem > 12 {
            packed_step::<P, Q, 3>(&mut acc, w.add(48 * Q), &a);
        }
    }
    acc
}

/// 4, 8 or 12 bytes zero-extended to 16, without a copy (a copy would put
/// a `memcpy` call into the GEMM loop, and the registers live across it
/// would be spilled).
///
/// # Safety
///
/// NEON; `src..src+n` readable; `n` is 4, 8 or 12.
#[inline(always)]
pub(super) unsafe fn load_tail4(src: *const i8, n: usize) -> int8x16_t {
    let mut v = vdupq_n_u32(0);
    if n == 8 || n == 12 {
        v = vreinterpretq_u32_s8(vcombine_s8(vld1_s8(src), vdup_n_s8(0)));
    }
    if n == 4 {
        v = vsetq_lane_u32::<0>(ptr::read_unaligned(src as *const u32), v);
    }
    if n == 12 {
        v = vsetq_lane_u32::<2>(ptr::read_unaligned(src.add(8) as *const u32), v);
    }
    vreinterpretq_s8_u32(v)
}
