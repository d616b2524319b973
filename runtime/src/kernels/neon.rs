//! aarch64 kernels: NEON (Cortex-A72 class) and dotprod (SDOT: Cortex-A76,
//! A78AE and later).
//!
//! - GEMM (pointwise; the im2col conv and fully connected layer through
//!   [`super::gemm::conv`]): tiles of 4 pixels × 4 output channels in the
//!   dot-product layout, 16 reduction bytes per step, weights read in place.
//!   NEON multiplies with `smull` and adds the next 8 products into the same
//!   i16 lanes with `smlal2`, then accumulates pairs into i32 with `sadalp`
//!   (3 instructions per 16 MACs). Two products of magnitude ≤ 128·127 fit
//!   i16; only `(−128)·(−128)` twice would not, so a block of weight rows
//!   holding −128 (the exporter never writes it: weights are in [−127, 127],
//!   but a blob may) takes `smull`/`smull2`/`sadalp`×2 instead. Two `addp`
//!   rounds leave a pixel's 4 channel sums in order.
//! - dotprod GEMM ([`gemm_packed`]): the weights of 16 channels are
//!   re-arranged per call into a stack block (4 reduction bytes × 4
//!   channels per vector), and `sdot` by element multiplies them with 4-byte
//!   groups of a pixel's load: 4 pixels × 16 channels per tile, one channel
//!   per i32 lane, no horizontal reduction. Shapes it does not take (`k % 4
//!   != 0`, `k > 1024`, fewer than 4 pixels) use the 4x4 tiles with one
//!   `sdot` per 16 MACs. `sdot` is inline `asm!`: the `vdotq_s32` intrinsic
//!   is not stable yet; the functions enable the `dotprod` target feature,
//!   so the assembler accepts it.
//! - Depthwise 3x3 ([`dw3_body`], both tables): 16 channels per block;
//!   dotprod interleaves taps with `zip` so that one `sdot` adds 4 taps,
//!   NEON takes `smull`/`smull2` then `saddw`/`saddw2` per tap. Other kernel
//!   sizes: `neon_dwconv_i8i32_16`'s general loop.
//! - Requantization in SIMD, exact for every shift: `sqdmulh` + `srshl` in
//!   i32 when every shift of a block is 32..=62 ([`scale4`]), else `smull`
//!   to i64 and `srshl` by `−shift` (exactly `(x + 2^(s−1)) >> s`);
//!   saturating narrows, zero point in i16, clamp.
//! - Residual add (`neon_add_i8_16`, both tables): exact i64 sums, the same
//!   narrows.
//! - Loops hold no calls (a `memcpy` for a short tail would make the
//!   compiler spill the registers live across it): tails take separate
//!   monomorphized or out-of-line paths.
#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::arch::asm;
use core::ptr;

use super::cpu::{Dotprod, Neon};
use super::gemm::{self, Gemm};
use super::{check_dwconv, scalar, ConvGeom, KernelNames, Kernels, OutQ};
use crate::engine::Requant;

pub(super) fn table(_t: Neon) -> Kernels {
    Kernels {
        name: "neon",
        pointwise: neon_pointwise_i8i32_4x4,
        conv: neon_conv_i8i32_4x4,
        dwconv: neon_dwconv_i8i32_16,
        fc: neon_fc_i8i32_1x4,
        add: neon_add_i8_16,
        names: KernelNames {
            pointwise: "neon_pointwise_i8i32_4x4",
            conv: "neon_conv_i8i32_4x4",
            dwconv: "neon_dwconv_i8i32_16",
            fc: "neon_fc_i8i32_1x4",
        },
    }
}

pub(super) fn dotprod_table(t: Dotprod) -> Kernels {
    let _ = t.neon();
    Kernels {
        name: "dotprod",
        pointwise: dotprod_pointwise_i8i32_4x4,
        conv: dotprod_conv_i8i32_4x4,
        dwconv: dotprod_dwconv_i8i32_16,
        fc: dotprod_fc_i8i32_1x4,
        add: neon_add_i8_16,
        names: KernelNames {
            pointwise: "dotprod_pointwise_i8i32_4x4",
            conv: "dotprod_conv_i8i32_4x4",
            dwconv: "dotprod_dwconv_i8i32_16",
            fc: "dotprod_fc_i8i32_1x4",
        },
    }
}

// Private entries: reachable only through tables built from `Neon` /
// `Dotprod` tokens, which makes the `unsafe` calls below sound.

fn neon_pointwise_i8i32_4x4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, neon_gemm, 16);
}
fn neon_conv_i8i32_4x4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, neon_gemm, 16);
}
fn neon_fc_i8i32_1x4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, neon_gemm, 16);
}
fn dotprod_pointwise_i8i32_4x4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, dotprod_gemm, 16);
}
fn dotprod_conv_i8i32_4x4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, dotprod_gemm, 16);
}
fn dotprod_fc_i8i32_1x4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, dotprod_gemm, 16);
}

fn neon_gemm(p: &Gemm<'_>, out: &mut [i8], ldo: usize) {
    p.check(out, ldo);
    // SAFETY: reachable only through a table built from a `Neon` token;
    // `check` proved the bounds `gemm_neon` relies on.
    unsafe { gemm_neon(p, out.as_mut_ptr(), ldo) }
}

fn dotprod_gemm(p: &Gemm<'_>, out: &mut [i8], ldo: usize) {
    p.check(out, ldo);
    // SAFETY: reachable only through a table built from a `Dotprod` token;
    // `check` proved the bounds `gemm_dotprod` relies on.
    unsafe { gemm_dotprod(p, out.as_mut_ptr(), ldo) }
}

fn neon_dwconv_i8i32_16(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    check_dwconv(input, w, g, rq, out);
    let taps = g.kh * g.kw;
    if taps == 9 {
        // SAFETY: as below.
        unsafe {
            dw3_neon(
                input.as_ptr(),
                w.as_ptr(),
                g,
                zp_in,
                rq,
                q,
                out.as_mut_ptr(),
            )
        }
        return;
    }
    if taps == 0 || taps > DW_MAX_TAPS {
        scalar::dwconv(input, w, g, zp_in, rq, q, out);
        return;
    }
    // SAFETY: as in `neon_gemm`; `check_dwconv` proved the bounds.
    unsafe {
        dw_neon(
            input.as_ptr(),
            w.as_ptr(),
            g,
            zp_in,
            rq,
            q,
            out.as_mut_ptr(),
        )
    }
}

fn dotprod_dwconv_i8i32_16(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: &mut [i8],
) {
    if g.kh * g.kw != 9 {
        neon_dwconv_i8i32_16(input, w, g, zp_in, rq, q, out);
        return;
    }
    check_dwconv(input, w, g, rq, out);
    // SAFETY: reachable only through a table built from a `Dotprod` token;
    // `check_dwconv` proved the bounds.
    unsafe {
        dw3_dotprod(
            input.as_ptr(),
            w.as_ptr(),
            g,
            zp_in,
            rq,
            q,
            out.as_mut_ptr(),
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn neon_add_i8_16(
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
    super::add_blocks16(a, b, [za, ma, zb, mb, shift], q, out, |a, b, p, q, out| {
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
unsafe fn add_neon(a: *const i8, b: *const i8, p: [i32; 5], q: OutQ, out: *mut i8, n: usize) {
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

/// 16-byte multiply-accumulate into 4 i32 lanes (each lane: 4 products).
trait Mac {
    /// Exact for every int8 weight (else: for weights in [−127, 127]).
    const ANY_WEIGHT: bool;
    /// # Safety
    ///
    /// The CPU must support the implementation's instructions.
    unsafe fn mac16(acc: int32x4_t, a: int8x16_t, w: int8x16_t) -> int32x4_t;
}

struct Smull;
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
struct SmullSmlal;
impl Mac for SmullSmlal {
    const ANY_WEIGHT: bool = false;
    #[inline(always)]
    unsafe fn mac16(acc: int32x4_t, a: int8x16_t, w: int8x16_t) -> int32x4_t {
        let p = vmull_s8(vget_low_s8(a), vget_low_s8(w));
        vpadalq_s16(acc, vmlal_high_s8(p, a, w))
    }
}

struct Sdot;
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

/// Requantization parameters of 4 channels.
#[derive(Clone, Copy)]
struct Rq4 {
    bias: int32x4_t,
    mult: int32x4_t,
    nsh_lo: int64x2_t,
    nsh_hi: int64x2_t,
    /// `31 − shift` (the short path's rounding shift)
    nsh31: int32x4_t,
}

impl Rq4 {
    /// # Safety
    ///
    /// NEON.
    #[inline(always)]
    unsafe fn new(ch: &[Requant; 4]) -> Self {
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
fn short_requant(ch: &[Requant]) -> bool {
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
unsafe fn scale4<const SHORT: bool>(x: int32x4_t, r: &Rq4) -> int32x4_t {
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
unsafe fn requant4<const SHORT: bool>(v: int32x4_t, r: &Rq4) -> int32x4_t {
    scale4::<SHORT>(vaddq_s32(v, r.bias), r)
}

/// Output quantization as i16 vectors.
#[derive(Clone, Copy)]
struct OutV {
    zp: int16x8_t,
    lo: int16x8_t,
    hi: int16x8_t,
}

impl OutV {
    /// # Safety
    ///
    /// NEON.
    #[inline(always)]
    unsafe fn new(q: OutQ) -> Self {
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
unsafe fn pack8(y0: int32x4_t, y1: int32x4_t, o: &OutV) -> int8x8_t {
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
unsafe fn load_n(src: *const i8, n: usize) -> int8x16_t {
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
unsafe fn store_n(dst: *mut i8, v: int8x16_t, n: usize) {
    if n == 16 {
        vst1q_s8(dst, v);
    } else {
        let mut t = [0i8; 16];
        vst1q_s8(t.as_mut_ptr(), v);
        ptr::copy_nonoverlapping(t.as_ptr(), dst, n);
    }
}

const MR: usize = 4;

/// `n` (< 16) bytes zero-extended to 16 (8 bytes: one `ldr d`).
///
/// # Safety
///
/// NEON; `src..src+n` readable.
#[inline(always)]
unsafe fn load_tail(src: *const i8, n: usize) -> int8x16_t {
    if n == 8 {
        vcombine_s8(vld1_s8(src), vdup_n_s8(0))
    } else {
        load_n(src, n)
    }
}

/// Sums of `R` pixel rows × 4 weight rows over `k` bytes, channel sums in
/// order. The `k % 16` tail is zero-extended to one more step (`PLAIN`:
/// the tail is 0 or 8 bytes, loaded without a copy).
///
/// # Safety
///
/// The CPU runs `M`; `k` bytes readable at every pointer; `PLAIN` only if
/// `k % 16` is 0 or 8.
#[inline(always)]
unsafe fn tile<M: Mac, const R: usize, const PLAIN: bool>(
    ap: &[*const i8; R],
    rows: &[*const i8; 4],
    k: usize,
) -> [int32x4_t; R] {
    let k16 = k & !15;
    let z = vdupq_n_s32(0);
    let mut acc = [[z; 4]; R];
    let mut kk = 0;
    while kk < k16 {
        let mut av = [vdupq_n_s8(0); R];
        for i in 0..R {
            av[i] = vld1q_s8(ap[i].add(kk));
        }
        for j in 0..4 {
            let wv = vld1q_s8(rows[j].add(kk));
            for i in 0..R {
                acc[i][j] = M::mac16(acc[i][j], av[i], wv);
            }
        }
        kk += 16;
    }
    if k16 < k {
        let kt = k - k16;
        let mut av = [vdupq_n_s8(0); R];
        let tail = |src: *const i8| {
            if PLAIN {
                vcombine_s8(vld1_s8(src), vdup_n_s8(0))
            } else {
                load_tail(src, kt)
            }
        };
        for i in 0..R {
            av[i] = tail(ap[i].add(k16));
        }
        for j in 0..4 {
            let wv = tail(rows[j].add(k16));
            for i in 0..R {
                acc[i][j] = M::mac16(acc[i][j], av[i], wv);
            }
        }
    }
    let mut s = [z; R];
    for i in 0..R {
        s[i] = vpaddq_s32(
            vpaddq_s32(acc[i][0], acc[i][1]),
            vpaddq_s32(acc[i][2], acc[i][3]),
        );
    }
    s
}

/// # Safety
///
/// NEON; `p` passed `Gemm::check` for `out` and `ldo`.
#[target_feature(enable = "neon")]
unsafe fn gemm_neon(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    gemm_body::<SmullSmlal, Smull>(p, out, ldo)
}

/// Whether any of the 4 rows holds −128 in its first `k` bytes.
///
/// # Safety
///
/// NEON; `k` bytes readable at every row.
#[inline(always)]
unsafe fn has_min(rows: &[*const i8; 4], k: usize) -> bool {
    let min = vdupq_n_s8(i8::MIN);
    let k16 = k & !15;
    let mut any = vdupq_n_u8(0);
    for r in rows {
        let mut kk = 0;
        while kk < k16 {
            any = vorrq_u8(any, vceqq_s8(vld1q_s8(r.add(kk)), min));
            kk += 16;
        }
        for j in k16..k {
            if *r.add(j) == i8::MIN {
                return true;
            }
        }
    }
    vmaxvq_u8(any) != 0
}

/// # Safety
///
/// NEON and dotprod; `p` passed `Gemm::check` for `out` and `ldo`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn gemm_dotprod(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    if p.m < PK_MIN_PIXELS || p.k % 4 != 0 || p.k * PK_N > PK_BYTES {
        gemm_body::<Sdot, Sdot>(p, out, ldo)
    } else {
        gemm_packed(p, out, ldo)
    }
}

/// Channels per packed weight block of the lane-indexed GEMM (4 quads).
const PK_N: usize = 16;
/// Bytes of the packed block on the stack: 16 channels × `k` <= 1024.
const PK_BYTES: usize = 16 * 1024;
/// Fewer pixels than this (the fully connected layer) do not repay the
/// packing; they take the dot-product tiles.
const PK_MIN_PIXELS: usize = 4;
/// Pixels per tile of the lane-indexed GEMM.
const PK_MR: usize = 4;

/// `sdot acc.4s, w.16b, a.4b[L]`: lane `e` of `acc` gains
/// `Σ_b w[4e + b]·a[4L + b]`.
///
/// # Safety
///
/// dotprod.
#[inline(always)]
unsafe fn sdot_lane<const L: i32>(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
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
unsafe fn gemm_packed(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
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
unsafe fn transpose4(r: [int8x16_t; 4]) -> [int8x16_t; 4] {
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
unsafe fn packed_cols<const Q: usize>(
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
    let mut ch = [Requant {
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
unsafe fn packed_rows<const Q: usize, const SHORT: bool, const FULL: bool>(
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
unsafe fn packed_step<const P: usize, const Q: usize, const L: i32>(
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
unsafe fn packed_tile<const P: usize, const Q: usize>(
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
unsafe fn load_tail4(src: *const i8, n: usize) -> int8x16_t {
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

/// Output quantization for 16 outputs: zero point in i16, clamp in i8.
#[derive(Clone, Copy)]
struct OutV16 {
    zp: int16x8_t,
    lo: int8x16_t,
    hi: int8x16_t,
}

impl OutV16 {
    /// # Safety
    ///
    /// NEON.
    #[inline(always)]
    unsafe fn new(q: OutQ) -> Self {
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
unsafe fn store16<const Q: usize, const SHORT: bool, const FULL: bool>(
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

/// `F` is used for weight blocks without −128, `M` for the others.
///
/// # Safety
///
/// As [`gemm_neon`], and the CPU runs `F` and `M`.
#[inline(always)]
unsafe fn gemm_body<F: Mac, M: Mac>(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    let (n, k) = (p.n, p.k);
    let w0 = p.w.as_ptr() as *const i8;
    let mut n0 = 0;
    while n0 < n {
        let nr = (n - n0).min(4);
        let mut rows = [w0; 4];
        let mut chq = [Requant {
            mult: 0,
            shift: 31,
            bias: 0,
        }; 4];
        for j in 0..4 {
            rows[j] = w0.add((n0 + j.min(nr - 1)) * p.ldw);
            if j < nr {
                chq[j] = p.rq[n0 + j];
            }
        }
        let r = Rq4::new(&chq);
        let fast = F::ANY_WEIGHT || !has_min(&rows, k);
        // Plain: 4 channels and a k tail of 0 or 8 bytes, so that no copy
        // (a `memcpy` call, spilling the loop's registers) is needed.
        let plain = nr == 4 && (k % 16 == 0 || k % 16 == 8);
        match (fast, short_requant(&chq[..nr]), plain) {
            (true, true, true) => gemm_cols::<F, true, true>(p, &rows, &r, n0, nr, out, ldo),
            (true, false, true) => gemm_cols::<F, false, true>(p, &rows, &r, n0, nr, out, ldo),
            (false, true, true) => gemm_cols::<M, true, true>(p, &rows, &r, n0, nr, out, ldo),
            (false, false, true) => gemm_cols::<M, false, true>(p, &rows, &r, n0, nr, out, ldo),
            (true, true, false) => gemm_cols::<F, true, false>(p, &rows, &r, n0, nr, out, ldo),
            (true, false, false) => gemm_cols::<F, false, false>(p, &rows, &r, n0, nr, out, ldo),
            (false, true, false) => gemm_cols::<M, true, false>(p, &rows, &r, n0, nr, out, ldo),
            (false, false, false) => gemm_cols::<M, false, false>(p, &rows, &r, n0, nr, out, ldo),
        }
        n0 += nr;
    }
}

/// Every pixel of [`gemm_body`] against the weight rows `rows` (channels
/// `n0..n0 + nr`); `PLAIN`: `nr == 4` and `k % 16` is 0 or 8.
///
/// # Safety
///
/// As [`gemm_body`]; `M` is exact for these rows.
#[inline(always)]
unsafe fn gemm_cols<M: Mac, const SHORT: bool, const PLAIN: bool>(
    p: &Gemm<'_>,
    rows: &[*const i8; 4],
    r: &Rq4,
    n0: usize,
    nr: usize,
    out: *mut i8,
    ldo: usize,
) {
    let (m, k) = (p.m, p.k);
    let a0 = p.a.as_ptr();
    let o = OutV::new(p.q);
    let mut m0 = 0;
    while m0 < m {
        let mr = if m - m0 >= MR { MR } else { 1 };
        let mut sums = [vdupq_n_s32(0); MR];
        if mr == MR {
            let mut ap = [a0; MR];
            for i in 0..MR {
                ap[i] = a0.add((m0 + i) * p.lda);
            }
            sums = tile::<M, MR, PLAIN>(&ap, rows, k);
        } else {
            sums[0] = tile::<M, 1, PLAIN>(&[a0.add(m0 * p.lda)], rows, k)[0];
        }
        // Two pixels share the narrowing, zero point and clamp.
        let mut i = 0;
        while i < mr {
            let y0 = requant4::<SHORT>(sums[i], r);
            let y1 = if i + 1 < mr {
                requant4::<SHORT>(sums[i + 1], r)
            } else {
                y0
            };
            let b = vreinterpret_u32_s8(pack8(y0, y1, &o));
            let d0 = out.add((m0 + i) * ldo + n0);
            let d1 = out.add((m0 + i + 1) * ldo + n0);
            if PLAIN || nr == 4 {
                vst1_lane_u32::<0>(d0 as *mut u32, b);
                if i + 1 < mr {
                    vst1_lane_u32::<1>(d1 as *mut u32, b);
                }
            } else {
                let mut t = [0i8; 8];
                vst1_s8(t.as_mut_ptr(), vreinterpret_s8_u32(b));
                ptr::copy_nonoverlapping(t.as_ptr(), d0, nr);
                if i + 1 < mr {
                    ptr::copy_nonoverlapping(t.as_ptr().add(4), d1, nr);
                }
            }
            i += 2;
        }
        m0 += mr;
    }
}

/// Taps the SIMD depthwise kernel handles (more: scalar).
const DW_MAX_TAPS: usize = 64;
/// Channels per depthwise chunk (parameters prepared per chunk).
const DW_CHUNK: usize = 128;
const DW_BLOCKS: usize = DW_CHUNK / 16;
/// Channels per chunk of the dotprod depthwise kernel: 256 covers most
/// MobileNet layers in one or two passes over the pixels (about 8 KiB of
/// prepared weights and parameters on the stack).
const DWD_CHUNK: usize = 256;
const DWD_BLOCKS: usize = DWD_CHUNK / 16;

/// # Safety
///
/// NEON; slices as checked by `check_dwconv`; `1 <= kh·kw <= DW_MAX_TAPS`.
#[target_feature(enable = "neon")]
unsafe fn dw_neon(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: *mut i8,
) {
    match g.kh * g.kw {
        9 => dw_body(input, w, g, zp_in, rq, q, out, 9),
        25 => dw_body(input, w, g, zp_in, rq, q, out, 25),
        t => dw_body(input, w, g, zp_in, rq, q, out, t),
    }
}

/// # Safety
///
/// As [`dw_neon`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_body(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: *mut i8,
    taps: usize,
) {
    let c = g.cout;
    let w = w as *const i8;
    let o = OutV::new(q);
    let zpv = vdupq_n_s8(zp_in);
    let zero_rq = Rq4::new(
        &[Requant {
            mult: 0,
            shift: 31,
            bias: 0,
        }; 4],
    );
    let mut rqs = [[zero_rq; 4]; DW_BLOCKS];
    let mut shorts = [false; DW_BLOCKS];
    let mut offs = [0isize; DW_MAX_TAPS];
    let mut toff = [0isize; DW_MAX_TAPS];
    for t in 0..taps {
        toff[t] = (((t / g.kw) * g.iw + t % g.kw) * c) as isize;
    }
    let mut c0 = 0;
    while c0 < c {
        let cc = (c - c0).min(DW_CHUNK);
        let nb = cc.div_ceil(16);
        for b in 0..nb {
            let ch = c0 + 16 * b;
            shorts[b] = short_requant(&rq[ch..(ch + 16).min(c)]);
            for v in 0..4 {
                let mut four = [Requant {
                    mult: 0,
                    shift: 31,
                    bias: 0,
                }; 4];
                for j in 0..4 {
                    let cj = ch + 4 * v + j;
                    if cj < c {
                        four[j] = rq[cj];
                    }
                }
                rqs[b][v] = Rq4::new(&four);
            }
        }
        for oy in 0..g.oh {
            let iy0 = (oy * g.sh) as isize - g.pt as isize;
            let rows_in = iy0 >= 0 && iy0 + g.kh as isize <= g.ih as isize;
            for ox in 0..g.ow {
                let ix0 = (ox * g.sw) as isize - g.pl as isize;
                let interior = rows_in && ix0 >= 0 && ix0 + g.kw as isize <= g.iw as isize;
                let base = (iy0 * g.iw as isize + ix0) * c as isize;
                for t in 0..taps {
                    offs[t] = if interior {
                        base + toff[t]
                    } else {
                        let (iy, ix) = (iy0 + (t / g.kw) as isize, ix0 + (t % g.kw) as isize);
                        if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                            -1
                        } else {
                            base + toff[t]
                        }
                    };
                }
                let dst = out.add((oy * g.ow + ox) * c);
                for b in 0..nb {
                    let ch = c0 + 16 * b;
                    let n = (c - ch).min(16);
                    let z = vdupq_n_s32(0);
                    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                    for t in 0..taps {
                        let (x, wv) = if n == 16 {
                            let x = if interior || offs[t] >= 0 {
                                vld1q_s8(input.offset(offs[t]).add(ch))
                            } else {
                                zpv
                            };
                            (x, vld1q_s8(w.add(t * c + ch)))
                        } else {
                            let x = if offs[t] >= 0 {
                                load_n(input.offset(offs[t]).add(ch), n)
                            } else {
                                zpv
                            };
                            (x, load_n(w.add(t * c + ch), n))
                        };
                        let pl = vmull_s8(vget_low_s8(x), vget_low_s8(wv));
                        let ph = vmull_high_s8(x, wv);
                        a0 = vaddw_s16(a0, vget_low_s16(pl));
                        a1 = vaddw_high_s16(a1, pl);
                        a2 = vaddw_s16(a2, vget_low_s16(ph));
                        a3 = vaddw_high_s16(a3, ph);
                    }
                    let r = &rqs[b];
                    let (lo, hi) = if shorts[b] {
                        (
                            pack8(requant4::<true>(a0, &r[0]), requant4::<true>(a1, &r[1]), &o),
                            pack8(requant4::<true>(a2, &r[2]), requant4::<true>(a3, &r[3]), &o),
                        )
                    } else {
                        (
                            pack8(
                                requant4::<false>(a0, &r[0]),
                                requant4::<false>(a1, &r[1]),
                                &o,
                            ),
                            pack8(
                                requant4::<false>(a2, &r[2]),
                                requant4::<false>(a3, &r[3]),
                                &o,
                            ),
                        )
                    };
                    store_n(dst.add(ch), vcombine_s8(lo, hi), n);
                }
            }
        }
        c0 += cc;
    }
}

/// 4 vectors of 16 channels (taps `t..t + 4`) → 4 vectors of 4 channels ×
/// those 4 taps (`[c][t]`, channels `4j..4j + 4` in vector `j`): the layout
/// in which `sdot` sums 4 taps of a channel into its lane.
///
/// # Safety
///
/// NEON.
#[inline(always)]
unsafe fn interleave4(x: [int8x16_t; 4]) -> [int8x16_t; 4] {
    let z0 = vreinterpretq_s16_s8(vzip1q_s8(x[0], x[1]));
    let z1 = vreinterpretq_s16_s8(vzip2q_s8(x[0], x[1]));
    let z2 = vreinterpretq_s16_s8(vzip1q_s8(x[2], x[3]));
    let z3 = vreinterpretq_s16_s8(vzip2q_s8(x[2], x[3]));
    [
        vreinterpretq_s8_s16(vzip1q_s16(z0, z2)),
        vreinterpretq_s8_s16(vzip2q_s16(z0, z2)),
        vreinterpretq_s8_s16(vzip1q_s16(z1, z3)),
        vreinterpretq_s8_s16(vzip2q_s16(z1, z3)),
    ]
}

/// 3x3 depthwise with `sdot`: per 16 channels, taps 0–3 and 4–7 of the
/// inputs are interleaved (8 `zip`s each) so that one `sdot` adds 4 taps of
/// 4 channels; tap 8 takes `smull` + `saddw`. The weights are interleaved
/// the same way once per chunk of channels (on the stack), the bias starts
/// in the accumulators, and the requantization is [`store16`]'s.
///
/// # Safety
///
/// NEON and dotprod; slices as checked by `check_dwconv`; `kh·kw = 9`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn dw3_dotprod(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: *mut i8,
) {
    dw3_body::<true>(input, w, g, zp_in, rq, q, out)
}

/// [`dw3_body`] without `sdot`: per tap `smull` + `saddw` (as
/// `neon_dwconv_i8i32_16`, with its loop structure).
///
/// # Safety
///
/// NEON; slices as checked by `check_dwconv`; `kh·kw = 9`.
#[target_feature(enable = "neon")]
unsafe fn dw3_neon(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: *mut i8,
) {
    dw3_body::<false>(input, w, g, zp_in, rq, q, out)
}

/// 3x3 depthwise, `DOT`: with `sdot` (see [`dw3_dotprod`]).
///
/// # Safety
///
/// As [`dw3_dotprod`] (`DOT`) or [`dw3_neon`].
#[inline(always)]
unsafe fn dw3_body<const DOT: bool>(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[Requant],
    q: OutQ,
    out: *mut i8,
) {
    const TAPS: usize = 9;
    let c = g.cout;
    let w = w as *const i8;
    let o = OutV16::new(q);
    let zpv = vdupq_n_s8(zp_in);
    let zero_rq = Rq4::new(
        &[Requant {
            mult: 0,
            shift: 31,
            bias: 0,
        }; 4],
    );
    let mut rqs = [[zero_rq; 4]; DWD_BLOCKS];
    let mut bias = [[vdupq_n_s32(0); 4]; DWD_BLOCKS];
    // Per block: taps 0–3 interleaved (4 vectors), taps 4–7 (4), tap 8 (1).
    let mut wi = [[vdupq_n_s8(0); 9]; DWD_BLOCKS];
    let mut offs = [0isize; TAPS];
    let mut toff = [0isize; TAPS];
    for t in 0..TAPS {
        toff[t] = (((t / g.kw) * g.iw + t % g.kw) * c) as isize;
    }
    let mut c0 = 0;
    while c0 < c {
        let cc = (c - c0).min(DWD_CHUNK);
        let nb = cc.div_ceil(16);
        let short = short_requant(&rq[c0..c0 + cc]);
        for b in 0..nb {
            let ch = c0 + 16 * b;
            let n = (c - ch).min(16);
            let mut four = [[Requant {
                mult: 0,
                shift: 31,
                bias: 0,
            }; 4]; 4];
            let mut bs = [0i32; 16];
            for j in 0..n {
                four[j / 4][j % 4] = rq[ch + j];
                bs[j] = rq[ch + j].bias;
            }
            for v in 0..4 {
                rqs[b][v] = Rq4::new(&four[v]);
                bias[b][v] = vld1q_s32(bs.as_ptr().add(4 * v));
            }
            let mut wv = [vdupq_n_s8(0); TAPS];
            for t in 0..TAPS {
                wv[t] = load_n(w.add(t * c + ch), n);
            }
            wi[b] = if DOT {
                let lo = interleave4([wv[0], wv[1], wv[2], wv[3]]);
                let hi = interleave4([wv[4], wv[5], wv[6], wv[7]]);
                [
                    lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3], wv[8],
                ]
            } else {
                wv
            };
        }
        for oy in 0..g.oh {
            let iy0 = (oy * g.sh) as isize - g.pt as isize;
            let rows_in = iy0 >= 0 && iy0 + g.kh as isize <= g.ih as isize;
            for ox in 0..g.ow {
                let ix0 = (ox * g.sw) as isize - g.pl as isize;
                let interior = rows_in && ix0 >= 0 && ix0 + g.kw as isize <= g.iw as isize;
                let base = (iy0 * g.iw as isize + ix0) * c as isize;
                for t in 0..TAPS {
                    offs[t] = if interior {
                        base + toff[t]
                    } else {
                        let (iy, ix) = (iy0 + (t / g.kw) as isize, ix0 + (t % g.kw) as isize);
                        if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize {
                            -1
                        } else {
                            base + toff[t]
                        }
                    };
                }
                let dst = out.add((oy * g.ow + ox) * c);
                let blocks = DwBlocks {
                    wi: &wi,
                    bias: &bias,
                    rqs: &rqs,
                    o: &o,
                };
                if interior {
                    let mut taps = [input; TAPS];
                    for t in 0..TAPS {
                        taps[t] = input.offset(offs[t]);
                    }
                    if short {
                        dw_pixel::<DOT, true, true>(taps, zpv, &blocks, c0, c, nb, dst);
                    } else {
                        dw_pixel::<DOT, true, false>(taps, zpv, &blocks, c0, c, nb, dst);
                    }
                } else {
                    let mut taps = [ptr::null(); TAPS];
                    for t in 0..TAPS {
                        if offs[t] >= 0 {
                            taps[t] = input.offset(offs[t]);
                        }
                    }
                    if short {
                        dw_pixel::<DOT, false, true>(taps, zpv, &blocks, c0, c, nb, dst);
                    } else {
                        dw_pixel::<DOT, false, false>(taps, zpv, &blocks, c0, c, nb, dst);
                    }
                }
            }
        }
        c0 += cc;
    }
}

/// What [`dw3_body`] prepared for the blocks of one chunk of channels.
struct DwBlocks<'a> {
    wi: &'a [[int8x16_t; 9]; DWD_BLOCKS],
    bias: &'a [[int32x4_t; 4]; DWD_BLOCKS],
    rqs: &'a [[Rq4; 4]; DWD_BLOCKS],
    o: &'a OutV16,
}

/// One output pixel of [`dw3_body`], channels `c0..c0 + 16·nb` (at most
/// `c`): `taps[t]` is the input pixel of tap `t`, or null for a padded tap
/// (read as the zero point). `INTERIOR`: no tap is padded; `SHORT`: every
/// shift of the chunk allows [`scale4`]'s short path.
///
/// # Safety
///
/// NEON and dotprod; the non-null tap pointers hold `c` channels; `dst`
/// has `c` writable bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_pixel<const DOT: bool, const INTERIOR: bool, const SHORT: bool>(
    taps: [*const i8; 9],
    zpv: int8x16_t,
    bl: &DwBlocks<'_>,
    c0: usize,
    c: usize,
    nb: usize,
    dst: *mut i8,
) {
    // Whole blocks of 16 channels inline; a channel tail takes copies,
    // out of line, so that no call sits in the loop.
    let full = ((c - c0) / 16).min(nb);
    for b in 0..full {
        dw_block::<DOT, INTERIOR, true, SHORT>(&taps, zpv, bl, b, c0 + 16 * b, 16, dst);
    }
    if full < nb {
        let (b, ch, n) = (full, c0 + 16 * full, c - c0 - 16 * full);
        if DOT {
            dw_tail_dotprod::<SHORT>(&taps, zpv, bl, b, ch, n, dst);
        } else {
            dw_tail_neon::<SHORT>(&taps, zpv, bl, b, ch, n, dst);
        }
    }
}

/// The channel tail of [`dw_pixel`].
///
/// # Safety
///
/// As [`dw_block`].
#[inline(never)]
#[target_feature(enable = "neon,dotprod")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_tail_dotprod<const SHORT: bool>(
    taps: &[*const i8; 9],
    zpv: int8x16_t,
    bl: &DwBlocks<'_>,
    b: usize,
    ch: usize,
    n: usize,
    dst: *mut i8,
) {
    dw_block::<true, false, false, SHORT>(taps, zpv, bl, b, ch, n, dst)
}

/// The channel tail of [`dw_pixel`] without `sdot`.
///
/// # Safety
///
/// As [`dw_block`].
#[inline(never)]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_tail_neon<const SHORT: bool>(
    taps: &[*const i8; 9],
    zpv: int8x16_t,
    bl: &DwBlocks<'_>,
    b: usize,
    ch: usize,
    n: usize,
    dst: *mut i8,
) {
    dw_block::<false, false, false, SHORT>(taps, zpv, bl, b, ch, n, dst)
}

/// Block `b` of [`dw_pixel`]: channels `ch..ch + n`; `FULL`: `n == 16`.
///
/// # Safety
///
/// As [`dw_pixel`]; `n <= 16`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_block<const DOT: bool, const INTERIOR: bool, const FULL: bool, const SHORT: bool>(
    taps: &[*const i8; 9],
    zpv: int8x16_t,
    bl: &DwBlocks<'_>,
    b: usize,
    ch: usize,
    n: usize,
    dst: *mut i8,
) {
    let mut x = [zpv; 9];
    for t in 0..9 {
        if FULL && (INTERIOR || !taps[t].is_null()) {
            x[t] = vld1q_s8(taps[t].add(ch));
        } else if !FULL && !taps[t].is_null() {
            x[t] = load_n(taps[t].add(ch), n);
        }
    }
    let wb = &bl.wi[b];
    let mut acc = bl.bias[b];
    // Tap 8 (DOT), every tap (else): i16 products, widened into i32.
    let first = if DOT {
        let lo = interleave4([x[0], x[1], x[2], x[3]]);
        let hi = interleave4([x[4], x[5], x[6], x[7]]);
        for j in 0..4 {
            acc[j] = Sdot::mac16(acc[j], lo[j], wb[j]);
            acc[j] = Sdot::mac16(acc[j], hi[j], wb[4 + j]);
        }
        8
    } else {
        0
    };
    for t in first..9 {
        let pl = vmull_s8(vget_low_s8(x[t]), vget_low_s8(wb[t]));
        let ph = vmull_high_s8(x[t], wb[t]);
        acc[0] = vaddw_s16(acc[0], vget_low_s16(pl));
        acc[1] = vaddw_high_s16(acc[1], pl);
        acc[2] = vaddw_s16(acc[2], vget_low_s16(ph));
        acc[3] = vaddw_high_s16(acc[3], ph);
    }
    store16::<4, SHORT, FULL>(&acc, &bl.rqs[b], bl.o, dst.add(ch), n);
}
