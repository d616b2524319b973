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
//!   but a blob may) takes `smull`/`smull2`/`sadalp`×2 instead. dotprod does
//!   16 MACs per accumulator with one `sdot` (inline `asm!`: the `vdotq_s32`
//!   intrinsic is not stable yet; the function enables the `dotprod` target
//!   feature, so the assembler accepts it). Two `addp` rounds leave a
//!   pixel's 4 channel sums in order.
//! - Depthwise (`neon_dwconv_i8i32_16`, both tables): 16 channels per
//!   register, `smull`/`smull2` then `saddw`/`saddw2` per tap.
//! - Requantization in SIMD, exact for every shift: `smull` to i64,
//!   `srshl` by `−shift` (which is exactly `(x + 2^(s−1)) >> s`), saturating
//!   narrows, zero point and clamp in i16.
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
        names: KernelNames {
            pointwise: "neon_pointwise_i8i32_4x4",
            conv: "neon_conv_i8i32_4x4",
            dwconv: "neon_dwconv_i8i32_16",
            fc: "neon_fc_i8i32_1x4",
        },
    }
}

pub(super) fn dotprod_table(t: Dotprod) -> Kernels {
    let base = table(t.neon());
    Kernels {
        name: "dotprod",
        pointwise: dotprod_pointwise_i8i32_4x4,
        conv: dotprod_conv_i8i32_4x4,
        dwconv: base.dwconv,
        fc: dotprod_fc_i8i32_1x4,
        names: KernelNames {
            pointwise: "dotprod_pointwise_i8i32_4x4",
            conv: "dotprod_conv_i8i32_4x4",
            dwconv: base.names.dwconv,
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
        Rq4 {
            bias: vld1q_s32(bias.as_ptr()),
            mult: vld1q_s32(mult.as_ptr()),
            nsh_lo: vld1q_s64(nsh.as_ptr()),
            nsh_hi: vld1q_s64(nsh.as_ptr().add(2)),
        }
    }
}

/// `(acc + bias)·mult + 2^(s−1) >> s` of 4 channels, saturated to i32.
///
/// # Safety
///
/// NEON.
#[inline(always)]
unsafe fn requant4(v: int32x4_t, r: &Rq4) -> int32x4_t {
    let x = vaddq_s32(v, r.bias);
    let lo = vrshlq_s64(vmull_s32(vget_low_s32(x), vget_low_s32(r.mult)), r.nsh_lo);
    let hi = vrshlq_s64(vmull_high_s32(x, r.mult), r.nsh_hi);
    vcombine_s32(vqmovn_s64(lo), vqmovn_s64(hi))
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
/// order. The `k % 16` tail is zero-extended to one more step.
///
/// # Safety
///
/// The CPU runs `M`; `k` bytes readable at every pointer.
#[inline(always)]
unsafe fn tile<M: Mac, const R: usize>(
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
        for i in 0..R {
            av[i] = load_tail(ap[i].add(k16), kt);
        }
        for j in 0..4 {
            let wv = load_tail(rows[j].add(k16), kt);
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
    gemm_body::<Sdot, Sdot>(p, out, ldo)
}

/// `F` is used for weight blocks without −128, `M` for the others.
///
/// # Safety
///
/// As [`gemm_neon`], and the CPU runs `F` and `M`.
#[inline(always)]
unsafe fn gemm_body<F: Mac, M: Mac>(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    let (m, n, k) = (p.m, p.n, p.k);
    let a0 = p.a.as_ptr();
    let w0 = p.w.as_ptr() as *const i8;
    let o = OutV::new(p.q);
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
        let mut m0 = 0;
        while m0 < m {
            let mr = if m - m0 >= MR { MR } else { 1 };
            let mut sums = [vdupq_n_s32(0); MR];
            if mr == MR {
                let mut ap = [a0; MR];
                for i in 0..MR {
                    ap[i] = a0.add((m0 + i) * p.lda);
                }
                sums = if fast {
                    tile::<F, MR>(&ap, &rows, k)
                } else {
                    tile::<M, MR>(&ap, &rows, k)
                };
            } else {
                let a = [a0.add(m0 * p.lda)];
                sums[0] = if fast {
                    tile::<F, 1>(&a, &rows, k)[0]
                } else {
                    tile::<M, 1>(&a, &rows, k)[0]
                };
            }
            // Two pixels share the narrowing, zero point and clamp.
            let mut i = 0;
            while i < mr {
                let y0 = requant4(sums[i], &r);
                let y1 = if i + 1 < mr {
                    requant4(sums[i + 1], &r)
                } else {
                    y0
                };
                let b = vreinterpret_u32_s8(pack8(y0, y1, &o));
                let d0 = out.add((m0 + i) * ldo + n0);
                let d1 = out.add((m0 + i + 1) * ldo + n0);
                if nr == 4 {
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
        n0 += nr;
    }
}

/// Taps the SIMD depthwise kernel handles (more: scalar).
const DW_MAX_TAPS: usize = 64;
/// Channels per depthwise chunk (parameters prepared per chunk).
const DW_CHUNK: usize = 128;
const DW_BLOCKS: usize = DW_CHUNK / 16;

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
                    let lo = pack8(requant4(a0, &r[0]), requant4(a1, &r[1]), &o);
                    let hi = pack8(requant4(a2, &r[2]), requant4(a3, &r[3]), &o);
                    store_n(dst.add(ch), vcombine_s8(lo, hi), n);
                }
            }
        }
        c0 += cc;
    }
}
