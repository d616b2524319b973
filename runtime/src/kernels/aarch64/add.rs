//! The residual add of both aarch64 tables (`neon_add_i8_16`).

#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;

use crate::kernels::OutQ;

use super::requant::OutV16;

#[allow(clippy::too_many_arguments)]
pub(super) fn neon_add_i8_16(
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
    crate::kernels::add_blocks16(a, b, [za, ma, zb, mb, shift], q, out, |a, b, p, q, out| {
        // SAFETY: reachable only through a table built from a `Neon` token;
        // `a`, `b` and `out` hold the same multiple of 16 elements, and
        // `add_blocks16` passes only int8 zero points and shifts 1..=62.
        unsafe { add_neon(a.as_ptr(), b.as_ptr(), p, q, out.as_mut_ptr(), out.len()) }
    });
}

/// 16 elements at a time of [`scalar::add`]: `x − za` widened to i32,
/// `smull` / `smlal` into the exact i64 sum (`|x − za| <= 255`,
/// `|ma|, |mb| < 2^31`: below 2^40), `srshl` by `−shift` (the reference's
/// `(s + 2^(shift−1)) >> shift`), then the saturating narrows and the clamp
/// of [`store16`] (a saturated value lies beyond `[lo, hi]` on its side).
///
/// # Safety
///
/// NEON; `n` (a multiple of 16) elements at `a`, `b`, `out`; `za`, `zb`
/// int8; `1 <= shift <= 62`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn add_neon(
    a: *const i8,
    b: *const i8,
    p: [i32; 5],
    q: OutQ,
    out: *mut i8,
    n: usize,
) {
    let [za, ma, zb, mb, shift] = p;
    let (za, zb) = (vdupq_n_s8(za as i8), vdupq_n_s8(zb as i8));
    let (ma, mb) = (vdupq_n_s32(ma), vdupq_n_s32(mb));
    let nsh = vdupq_n_s64(-(shift as i64));
    let o = OutV16::new(q);
    let mut i = 0;
    while i < n {
        let x = vld1q_s8(a.add(i));
        let y = vld1q_s8(b.add(i));
        let xd = [
            vsubl_s8(vget_low_s8(x), vget_low_s8(za)),
            vsubl_high_s8(x, za),
        ];
        let yd = [
            vsubl_s8(vget_low_s8(y), vget_low_s8(zb)),
            vsubl_high_s8(y, zb),
        ];
        let mut r = [vdupq_n_s32(0); 4];
        for h in 0..2 {
            let xs = [vmovl_s16(vget_low_s16(xd[h])), vmovl_high_s16(xd[h])];
            let ys = [vmovl_s16(vget_low_s16(yd[h])), vmovl_high_s16(yd[h])];
            for j in 0..2 {
                let lo = vmlal_s32(
                    vmull_s32(vget_low_s32(xs[j]), vget_low_s32(ma)),
                    vget_low_s32(ys[j]),
                    vget_low_s32(mb),
                );
                let hi = vmlal_high_s32(vmull_high_s32(xs[j], ma), ys[j], mb);
                r[2 * h + j] =
                    vqmovn_high_s64(vqmovn_s64(vrshlq_s64(lo, nsh)), vrshlq_s64(hi, nsh));
            }
        }
        let lo = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(r[0]), r[1]), o.zp);
        let hi = vqaddq_s16(vqmovn_high_s32(vqmovn_s32(r[2]), r[3]), o.zp);
        let v = vqmovn_high_s16(vqmovn_s16(lo), hi);
        vst1q_s8(out.add(i), vminq_s8(vmaxq_s8(v, o.lo), o.hi));
        i += 16;
    }
}
