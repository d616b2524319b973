//! The 16-byte multiply-accumulate steps of the GEMM tiles: NEON
//! `smull`/`smlal` (+ `sadalp`) and dotprod `sdot`.

#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::arch::asm;

/// 16-byte multiply-accumulate into 4 i32 lanes (each lane: 4 products).
pub(super) trait Mac {
    /// Exact for every int8 weight (else: for weights in [−127, 127]).
    const ANY_WEIGHT: bool;
    /// # Safety
    ///
    /// The CPU must support the implementation's instructions.
    unsafe fn mac16(acc: int32x4_t, a: int8x16_t, w: int8x16_t) -> int32x4_t;
}

pub(super) struct Smull;
impl Mac for Smull {
    const ANY_WEIGHT: bool = true;
    #[inline(always)]
    unsafe fn mac16(acc: int32x4_t, a: int8x16_t, w: int8x16_t) -> int32x4_t {
        let acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(w)));
        vpadalq_s16(acc, vmull_high_s8(a, w))
    }
}

/// `smull` + `smlal2` into one i16 lane pair, then `sadalp`: 3 instructions
/// per 16 MACs. Exact only when no weight is −128 (then each i16 lane sums
/// two products of magnitude ≤ 128·127, at most 32512); the GEMM checks
/// every block's weights first.
pub(super) struct SmullSmlal;
impl Mac for SmullSmlal {
    const ANY_WEIGHT: bool = false;
    #[inline(always)]
    unsafe fn mac16(acc: int32x4_t, a: int8x16_t, w: int8x16_t) -> int32x4_t {
        let p = vmull_s8(vget_low_s8(a), vget_low_s8(w));
        vpadalq_s16(acc, vmlal_high_s8(p, a, w))
    }
}

pub(super) struct Sdot;
impl Mac for Sdot {
    const ANY_WEIGHT: bool = true;
    #[inline(always)]
    unsafe fn mac16(mut acc: int32x4_t, a: int8x16_t, w: int8x16_t) -> int32x4_t {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {w:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            w = in(vreg) w,
            options(pure, nomem, nostack, preserves_flags)
        );
        acc
    }
}
