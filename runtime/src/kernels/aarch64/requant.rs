//! Requantization and output in SIMD: per-channel parameters ([`Rq4`]),
//! the exact scale ([`scale4`]), saturating narrows, zero point, clamp
//! ([`OutV`], [`OutV16`], [`store16`]), and partial-vector loads and stores.

#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::ptr;

use crate::kernels::OutQ;
use crate::quant::ChannelRequant;

/// Requantization parameters of 4 channels.
#[derive(Clone, Copy)]
pub(super) struct Rq4 {
    pub(super) bias: int32x4_t,
    pub(super) mult: int32x4_t,
    pub(super) nsh_lo: int64x2_t,
    pub(super) nsh_hi: int64x2_t,
    /// `31 − shift` (the short path's rounding shift)
    pub(super) nsh31: int32x4_t,
}

impl Rq4 {
    /// # Safety
    ///
    /// NEON.
    #[inline(always)]
    pub(super) unsafe fn new(ch: &[ChannelRequant; 4]) -> Self {
        let bias = [ch[0].bias, ch[1].bias, ch[2].bias, ch[3].bias];
        let mult = [ch[0].mult, ch[1].mult, ch[2].mult, ch[3].mult];
        let nsh = [
            -(ch[0].shift as i64),
            -(ch[1].shift as i64),
            -(ch[2].shift as i64),
            -(ch[3].shift as i64),
        ];
        let nsh31 = [
            31 - ch[0].shift,
            31 - ch[1].shift,
            31 - ch[2].shift,
            31 - ch[3].shift,
        ];
        Rq4 {
            bias: vld1q_s32(bias.as_ptr()),
            mult: vld1q_s32(mult.as_ptr()),
            nsh_lo: vld1q_s64(nsh.as_ptr()),
            nsh_hi: vld1q_s64(nsh.as_ptr().add(2)),
            nsh31: vld1q_s32(nsh31.as_ptr()),
        }
    }
}

/// Whether every shift allows the short requantization ([`scale4`]).
pub(super) fn short_requant(ch: &[ChannelRequant]) -> bool {
    ch.iter().all(|r| (32..=62).contains(&r.shift))
}

/// `x·mult + 2^(s−1) >> s` of 4 channels (`x` already holds the bias),
/// saturated to i32.
///
/// `SHORT` (every shift in 32..=62, see [`short_requant`]): `sqdmulh` gives
/// `H = floor(x·mult / 2^31)` (no saturation: `|x|, |mult| < 2^31`), and
/// `srshl` by `31 − s` gives `floor((H + 2^(t−1)) / 2^t)` with `t = s − 31`.
/// Writing `x·mult = 2^31·H + L` with `0 <= L < 2^31`, the reference is
/// `floor((H + 2^(t−1) + L/2^31) / 2^t)`, and a fraction below 1 added to an
/// integer never changes that floor: the two are equal. Otherwise the i64
/// product, `srshl` by `−s`, and saturating narrows.
///
/// # Safety
///
/// NEON.
#[inline(always)]
pub(super) unsafe fn scale4<const SHORT: bool>(x: int32x4_t, r: &Rq4) -> int32x4_t {
    if SHORT {
        vrshlq_s32(vqdmulhq_s32(x, r.mult), r.nsh31)
    } else {
        let lo = vrshlq_s64(vmull_s32(vget_low_s32(x), vget_low_s32(r.mult)), r.nsh_lo);
        let hi = vrshlq_s64(vmull_high_s32(x, r.mult), r.nsh_hi);
        vcombine_s32(vqmovn_s64(lo), vqmovn_s64(hi))
    }
}

/// `(acc + bias)·mult + 2^(s−1) >> s` of 4 channels, saturated to i32.
///
/// # Safety
///
/// NEON.
#[inline(always)]
pub(super) unsafe fn requant4<const SHORT: bool>(v: int32x4_t, r: &Rq4) -> int32x4_t {
    scale4::<SHORT>(vaddq_s32(v, r.bias), r)
}

/// Output quantization as i16 vectors.
#[derive(Clone, Copy)]
pub(super) struct OutV {
    pub(super) zp: int16x8_t,
    pub(super) lo: int16x8_t,
    pub(super) hi: int16x8_t,
}

impl OutV {
    /// # Safety
    ///
    /// NEON.
    #[inline(always)]
    pub(super) unsafe fn new(q: OutQ) -> Self {
        OutV {
            zp: vdupq_n_s16(q.zp as i16),
            lo: vdupq_n_s16(q.lo as i16),
            hi: vdupq_n_s16(q.hi as i16),
        }
    }
}

/// 8 requantized i32 (two vectors) → 8 int8 with zero point and clamp.
///
/// # Safety
///
/// NEON.
#[inline(always)]
pub(super) unsafe fn pack8(y0: int32x4_t, y1: int32x4_t, o: &OutV) -> int8x8_t {
    let s = vcombine_s16(vqmovn_s32(y0), vqmovn_s32(y1));
    let s = vminq_s16(vmaxq_s16(vqaddq_s16(s, o.zp), o.lo), o.hi);
    vqmovn_s16(s)
}

/// Loads `n` (≤ 16) bytes, zero-filling the rest.
///
/// # Safety
///
/// NEON; `src..src+n` readable.
#[inline(always)]
pub(super) unsafe fn load_n(src: *const i8, n: usize) -> int8x16_t {
    if n == 16 {
        vld1q_s8(src)
    } else {
        let mut t = [0i8; 16];
        ptr::copy_nonoverlapping(src, t.as_mut_ptr(), n);
        vld1q_s8(t.as_ptr())
    }
}

/// Stores the first `n` (≤ 16) bytes of `v`.
///
/// # Safety
///
/// NEON; `dst..dst+n` writable.
#[inline(always)]
pub(super) unsafe fn store_n(dst: *mut i8, v: int8x16_t, n: usize) {
    if n == 16 {
        vst1q_s8(dst, v);
    } else {
        let mut t = [0i8; 16];
        vst1q_s8(t.as_mut_ptr(), v);
        ptr::copy_nonoverlapping(t.as_ptr(), dst, n);
    }
}

/// Output quantization for 16 outputs: zero point in i16, clamp in i8.
#[derive(Clone, Copy)]
pub(super) struct OutV16 {
    pub(super) zp: int16x8_t,
    pub(super) lo: int8x16_t,
    pub(super) hi: int8x16_t,
}

impl OutV16 {
    /// # Safety
    ///
    /// NEON.
    #[inline(always)]
    pub(super) unsafe fn new(q: OutQ) -> Self {
        OutV16 {
            zp: vdupq_n_s16(q.zp as i16),
            lo: vdupq_n_s8(q.lo as i8),
            hi: vdupq_n_s8(q.hi as i8),
        }
    }
}

/// Requantizes one pixel's `4·Q` channel sums (bias included) and stores
/// the first `nr` bytes at `dst` (`FULL`: `nr == 4·Q`, stored without a
/// copy).
///
/// Narrowing saturates at every step (i32 → i16, `+ zp` in i16, → i8) and
/// the clamp comes last, in i8: a value that saturates lies beyond
/// `[lo, hi]` (both int8) on the same side, so the result is the
/// reference's `clamp(zp + y, lo, hi)`.
///
/// # Safety
///
/// NEON; `dst..dst + nr` writable; `nr <= 4·Q`.
#[inline(always)]
pub(super) unsafe fn store16<const Q: usize, const SHORT: bool, const FULL: bool>(
    acc: &[int32x4_t; Q],
    rqs: &[Rq4; Q],
    o: &OutV16,
    dst: *mut i8,
    nr: usize,
) {
    let mut y = [vdupq_n_s32(0); 4];
    for q in 0..Q {
        y[q] = scale4::<SHORT>(acc[q], &rqs[q]);
    }
    let lo = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(y[0]), y[1]), o.zp);
    if Q <= 2 {
        let b = vqmovn_s16(lo);
        let b = vmin_s8(vmax_s8(b, vget_low_s8(o.lo)), vget_low_s8(o.hi));
        if FULL && Q == 2 {
            vst1_s8(dst, b);
        } else if FULL {
            vst1_lane_u32::<0>(dst as *mut u32, vreinterpret_u32_s8(b));
        } else {
            store_n(dst, vcombine_s8(b, b), nr);
        }
    } else {
        let hi = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(y[2]), y[3]), o.zp);
        let b = vqmovn_high_s16(vqmovn_s16(lo), hi);
        let b = vminq_s8(vmaxq_s8(b, o.lo), o.hi);
        if FULL && Q == 4 {
            vst1q_s8(dst, b);
        } else if FULL {
            vst1_s8(dst, vget_low_s8(b));
            vst1q_lane_u32::<2>(dst.add(8) as *mut u32, vreinterpretq_u32_s8(b));
        } else {
            store_n(dst, b, nr);
        }
    }
}
