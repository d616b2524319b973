//! Armv7E-M DSP kernels (Cortex-M4, M7): `sxtb16` sign-extends bytes 0 and
//! 2 (or, rotated by 8, bytes 1 and 3) of a word into two i16 lanes, and
//! `smlad` adds both lane products to an i32 accumulator. Both are inline
//! `asm!`: the `core::arch::arm` DSP intrinsics are unstable. The module is
//! compiled only for DSP cores (`cfg(graftnet_dsp)`, see `cpu::Dsp`).
//!
//! - GEMM (pointwise; the im2col conv and the fully connected layer through
//!   [`crate::kernels::gemm::conv_blocks`], with an 8 KiB im2col block and 2 KiB of
//!   padded weights on the stack): tiles of 2 pixels × 2 output channels
//!   (1 × 4 for a single pixel, the fully connected layer) in the
//!   dot-product layout, 4 reduction bytes per step, weights read in place.
//!   Each operand word becomes an even and an odd lane pair; the lane order
//!   does not matter since both operands use the same. 8 `sxtb16` and 8
//!   `smlad` per 16 MACs of a 2x2 tile. A `k % 4` tail is added in scalar.
//! - Depthwise (`dsp_dwconv_i8i32_4`, up to 25 taps): 4 channels per step,
//!   two taps per `smlad`. `pkhbt`/`pkhtb` pair a channel's inputs of two
//!   taps; the weights are packed once per call into the same i16 pairs
//!   (`⌈kh·kw/2⌉ × 64` words on the stack, per chunk of 64 channels).
//! - Requantization (`requant`): `smmul` (high word of the 64-bit product)
//!   instead of a 64-bit multiply, add and shift. Exact: for `s >= 33`,
//!   `(P + 2^(s−1)) >> s == ((P >> 32) + 2^(s−33)) >> (s − 32)` (the low
//!   word cannot carry into the rounding bit, which lies above it), and for
//!   `s == 32` the rounding is `smmulr`'s own. The zero point is added with
//!   `qadd`, which saturates exactly where the i64 clamp of the reference
//!   would. Shifts below 32 (multipliers ≥ 1), or an `acc + bias` that
//!   overflows i32, take the scalar [`scalar::requant`].
//!
//! Every product is exact (int8 × int8 in i16 lanes, summed in i32), and a
//! row of at most 32768 weights sums to at most 2^29 in magnitude, so the
//! accumulators equal the reference's.
#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::asm;
use core::ptr;

use crate::kernels::cpu::Dsp;
use crate::kernels::gemm::{self, Gemm};
use crate::kernels::{check_dwconv, scalar, ConvGeom, KernelNames, Kernels, OutQ};
use crate::quant::ChannelRequant;

pub(in crate::kernels) fn table(_t: Dsp) -> Kernels {
    Kernels {
        name: "dsp",
        pointwise: dsp_pointwise_i8i32_2x2,
        conv: dsp_conv_i8i32_2x2,
        dwconv: dsp_dwconv_i8i32_4,
        add: scalar::add,
        fc: dsp_fc_i8i32_1x4,
        names: KernelNames {
            pointwise: "dsp_pointwise_i8i32_2x2",
            conv: "dsp_conv_i8i32_2x2",
            dwconv: "dsp_dwconv_i8i32_4",
            fc: "dsp_fc_i8i32_1x4",
        },
    }
}

/// Bytes of the im2col block (plus 16 of slack, see `gemm::conv_blocks`).
const IM2COL_BYTES: usize = 8 * 1024;
/// Bytes of the zero-padded weight copy (the 3x3 stem: 32 × 28).
const WPAD_BYTES: usize = 2 * 1024;

// Private entries: reachable only through a table built from a `Dsp` token.
// The whole crate is compiled for a DSP core (`cfg(graftnet_dsp)`), which
// is what makes the instructions below sound.

fn dsp_pointwise_i8i32_2x2(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    dsp_conv_i8i32_2x2(input, w, g, zp_in, rq, q, out);
}
fn dsp_conv_i8i32_2x2(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv_blocks::<{ IM2COL_BYTES + 16 }, WPAD_BYTES>(
        input, w, g, zp_in, rq, q, out, dsp_gemm, 4,
    );
}
fn dsp_fc_i8i32_1x4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    dsp_conv_i8i32_2x2(input, w, g, zp_in, rq, q, out);
}

fn dsp_gemm(p: &Gemm<'_>, out: &mut [i8], ldo: usize) {
    p.check(out, ldo);
    // SAFETY: `check` proved the bounds `gemm_body` relies on.
    unsafe { gemm_body(p, out.as_mut_ptr(), ldo) }
}

fn dsp_dwconv_i8i32_4(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    check_dwconv(input, w, g, rq, out);
    let taps = g.kh * g.kw;
    if taps == 0 || taps > DW_MAX_TAPS {
        scalar::dwconv(input, w, g, zp_in, rq, q, out);
        return;
    }
    // SAFETY: `check_dwconv` proved the bounds; `1 <= taps <= DW_MAX_TAPS`.
    unsafe {
        // 3x3 (every depthwise layer of a MobileNet) with the taps unrolled:
        // 20 % fewer instructions there, for 4 KiB of code.
        match taps {
            9 => dw_body(input.as_ptr(), w, g, zp_in, rq, q, out.as_mut_ptr(), 9),
            t => dw_body(input.as_ptr(), w, g, zp_in, rq, q, out.as_mut_ptr(), t),
        }
    }
}

// ------------------------------------------------------------ instructions

/// Bytes 0 and 2 of `x`, sign-extended into the two i16 lanes.
#[inline(always)]
fn sxtb16(x: u32) -> u32 {
    let r: u32;
    // SAFETY: a register-only DSP instruction; this module is compiled only
    // for DSP cores.
    unsafe {
        asm!("sxtb16 {r}, {x}", r = lateout(reg) r, x = in(reg) x,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// Bytes 1 and 3 of `x`, sign-extended into the two i16 lanes.
#[inline(always)]
fn sxtb16_ror8(x: u32) -> u32 {
    let r: u32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("sxtb16 {r}, {x}, ror #8", r = lateout(reg) r, x = in(reg) x,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// `acc + a.lo·b.lo + a.hi·b.hi` (i16 lanes). It sets the sticky Q flag on
/// i32 overflow, which the kernels' sums never reach.
#[inline(always)]
fn smlad(a: u32, b: u32, acc: i32) -> i32 {
    let r: i32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("smlad {r}, {a}, {b}, {acc}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b,
             acc = in(reg) acc, options(pure, nomem, nostack));
    }
    r
}

/// Low lane of `lo`, low lane of `hi` in the high half.
#[inline(always)]
fn pkhbt(lo: u32, hi: u32) -> u32 {
    let r: u32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("pkhbt {r}, {lo}, {hi}, lsl #16", r = lateout(reg) r, lo = in(reg) lo, hi = in(reg) hi,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// High lane of `lo` in the low half, high lane of `hi`.
#[inline(always)]
fn pkhtb(lo: u32, hi: u32) -> u32 {
    let r: u32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("pkhtb {r}, {hi}, {lo}, asr #16", r = lateout(reg) r, lo = in(reg) lo, hi = in(reg) hi,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// `(a·b) >> 32` (floor).
#[inline(always)]
fn smmul(a: i32, b: i32) -> i32 {
    let r: i32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("smmul {r}, {a}, {b}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// `(a·b + 2^31) >> 32`.
#[inline(always)]
fn smmulr(a: i32, b: i32) -> i32 {
    let r: i32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("smmulr {r}, {a}, {b}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b,
             options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// `a + b`, saturated to i32 (sets the sticky Q flag when it saturates).
#[inline(always)]
fn qadd(a: i32, b: i32) -> i32 {
    let r: i32;
    // SAFETY: as in `sxtb16`.
    unsafe {
        asm!("qadd {r}, {a}, {b}", r = lateout(reg) r, a = in(reg) a, b = in(reg) b,
             options(pure, nomem, nostack));
    }
    r
}

/// 4 bytes at `p` as a little-endian word (unaligned).
///
/// # Safety
///
/// `p..p+4` readable.
#[inline(always)]
unsafe fn load4(p: *const i8) -> u32 {
    u32::from_le(p.cast::<u32>().read_unaligned())
}

/// `n` (< 4) bytes at `p`, zero-extended to a word.
///
/// # Safety
///
/// `p..p+n` readable.
#[inline(always)]
unsafe fn load_n(p: *const i8, n: usize) -> u32 {
    let mut b = [0u8; 4];
    ptr::copy_nonoverlapping(p.cast::<u8>(), b.as_mut_ptr(), n);
    u32::from_le_bytes(b)
}

// ---------------------------------------------------------- requantization

/// A channel's requantization, prepared for [`requant`].
#[derive(Clone, Copy)]
struct ChRq {
    r: ChannelRequant,
    /// 0: `smmul`, add, shift; 1: `smmulr` (`shift == 32`); 2: scalar
    mode: u8,
    /// `2^(shift − 33)` (mode 0)
    add: i32,
    /// `shift − 32` (mode 0)
    sh: u32,
}

impl ChRq {
    const ZERO: ChRq = ChRq {
        r: ChannelRequant {
            mult: 0,
            shift: 32,
            bias: 0,
        },
        mode: 1,
        add: 0,
        sh: 0,
    };

    #[inline(always)]
    fn new(r: ChannelRequant) -> Self {
        match r.shift {
            33..=62 => ChRq {
                r,
                mode: 0,
                add: 1 << (r.shift - 33),
                sh: (r.shift - 32) as u32,
            },
            32 => ChRq {
                r,
                mode: 1,
                add: 0,
                sh: 0,
            },
            _ => ChRq {
                r,
                mode: 2,
                add: 0,
                sh: 0,
            },
        }
    }
}

/// The rare cases of [`requant`], out of line to keep the kernels small.
#[cold]
#[inline(never)]
fn requant_scalar(acc: i32, r: &ChannelRequant, q: OutQ) -> i8 {
    scalar::requant(acc, r, q)
}

/// Panics like the reference's `clamp` would on its first output.
#[inline(always)]
fn check_clamp(q: OutQ, outputs: usize) {
    assert!(outputs == 0 || q.lo <= q.hi, "clamp: lo > hi");
}

/// [`scalar::requant`], bit for bit (see the module doc), for `q` that
/// passed [`check_clamp`].
#[inline(always)]
fn requant(acc: i32, c: &ChRq, q: OutQ) -> i8 {
    let x = match acc.checked_add(c.r.bias) {
        Some(x) if c.mode != 2 => x,
        _ => return requant_scalar(acc, &c.r, q),
    };
    // |x·mult| <= 2^62, so the high word is at most 2^30 in magnitude and
    // adding 2^(s−33) <= 2^29 cannot overflow.
    let y = if c.mode == 0 {
        (smmul(x, c.r.mult) + c.add) >> c.sh
    } else {
        smmulr(x, c.r.mult)
    };
    // Saturating the sum changes nothing after a clamp to i32 bounds. The
    // callers checked `lo <= hi` (the reference's `clamp` panics otherwise),
    // so `max`/`min` is that clamp without a check per value.
    qadd(y, q.zp).max(q.lo).min(q.hi) as i8
}

// -------------------------------------------------------------------- GEMM

/// Sums of `R` pixel rows × `C` weight rows over `k` bytes.
///
/// # Safety
///
/// `k` bytes readable at every pointer.
#[inline(always)]
unsafe fn tile<const R: usize, const C: usize>(
    ap: &[*const i8; R],
    wp: &[*const i8; C],
    k: usize,
) -> [[i32; C]; R] {
    let mut acc = [[0i32; C]; R];
    let k4 = k & !3;
    let mut kk = 0;
    while kk < k4 {
        let mut ae = [0u32; R];
        let mut ao = [0u32; R];
        for i in 0..R {
            let x = load4(ap[i].add(kk));
            ae[i] = sxtb16(x);
            ao[i] = sxtb16_ror8(x);
        }
        for j in 0..C {
            let y = load4(wp[j].add(kk));
            let (we, wo) = (sxtb16(y), sxtb16_ror8(y));
            for i in 0..R {
                acc[i][j] = smlad(ae[i], we, acc[i][j]);
                acc[i][j] = smlad(ao[i], wo, acc[i][j]);
            }
        }
        kk += 4;
    }
    while kk < k {
        for i in 0..R {
            let x = *ap[i].add(kk) as i32;
            for j in 0..C {
                acc[i][j] += x * *wp[j].add(kk) as i32;
            }
        }
        kk += 1;
    }
    acc
}

/// Output tile `R × C` at pixel `m0`, channel `n0`.
///
/// # Safety
///
/// `p` passed `Gemm::check` for `out` and `ldo`; `m0 + R <= p.m`,
/// `n0 + C <= p.n`.
#[inline(always)]
unsafe fn gemm_tile<const R: usize, const C: usize>(
    p: &Gemm<'_>,
    rqs: &[ChRq; C],
    m0: usize,
    n0: usize,
    out: *mut i8,
    ldo: usize,
) {
    let a0 = p.a.as_ptr();
    let w0 = p.w.as_ptr().cast::<i8>();
    let mut ap = [a0; R];
    for i in 0..R {
        ap[i] = a0.add((m0 + i) * p.lda);
    }
    let mut wp = [w0; C];
    for j in 0..C {
        wp[j] = w0.add((n0 + j) * p.ldw);
    }
    let s = tile::<R, C>(&ap, &wp, p.k);
    for i in 0..R {
        let d = out.add((m0 + i) * ldo + n0);
        for j in 0..C {
            *d.add(j) = requant(s[i][j], &rqs[j], p.q);
        }
    }
}

/// # Safety
///
/// `p` passed `Gemm::check` for `out` and `ldo`.
#[inline(always)]
unsafe fn gemm_body(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    let (m, n) = (p.m, p.n);
    check_clamp(p.q, m * n);
    let rq = |c: usize| ChRq::new(p.rq[c]);
    let mut n0 = 0;
    if m == 1 {
        while n0 + 4 <= n {
            let r = [rq(n0), rq(n0 + 1), rq(n0 + 2), rq(n0 + 3)];
            gemm_tile::<1, 4>(p, &r, 0, n0, out, ldo);
            n0 += 4;
        }
    }
    while n0 + 2 <= n {
        let r = [rq(n0), rq(n0 + 1)];
        let mut m0 = 0;
        while m0 + 2 <= m {
            gemm_tile::<2, 2>(p, &r, m0, n0, out, ldo);
            m0 += 2;
        }
        if m0 < m {
            gemm_tile::<1, 2>(p, &r, m0, n0, out, ldo);
        }
        n0 += 2;
    }
    if n0 < n {
        let r = [rq(n0)];
        let mut m0 = 0;
        while m0 + 2 <= m {
            gemm_tile::<2, 1>(p, &r, m0, n0, out, ldo);
            m0 += 2;
        }
        if m0 < m {
            gemm_tile::<1, 1>(p, &r, m0, n0, out, ldo);
        }
    }
}

// --------------------------------------------------------------- depthwise

/// Taps the DSP depthwise kernel handles (more: scalar).
const DW_MAX_TAPS: usize = 25;
/// Tap pairs of [`DW_MAX_TAPS`].
const DW_MAX_PAIRS: usize = DW_MAX_TAPS.div_ceil(2);
/// Channels per chunk (weights packed and parameters prepared per chunk).
const DW_CHUNK: usize = 64;

/// # Safety
///
/// Slices as checked by `check_dwconv` (`input`, `out` point to them);
/// `1 <= taps <= DW_MAX_TAPS`, `taps == g.kh * g.kw`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_body(
    input: *const i8,
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: *mut i8,
    taps: usize,
) {
    let c = g.cout;
    check_clamp(q, g.oh * g.ow * c);
    let pairs = taps.div_ceil(2);
    let zp4 = u32::from_ne_bytes([zp_in as u8; 4]);
    // Weights of a chunk: [pair][channel] words, (tap 2j, tap 2j+1) as i16
    // lanes (low, high); 0 for a missing tap or channel.
    let mut wpk = [0u32; DW_MAX_PAIRS * DW_CHUNK];
    let mut rqs = [ChRq::ZERO; DW_CHUNK];
    let mut offs = [0isize; DW_MAX_TAPS];
    let mut toff = [0isize; DW_MAX_TAPS];
    for t in 0..taps {
        toff[t] = (((t / g.kw) * g.iw + t % g.kw) * c) as isize;
    }
    let mut c0 = 0;
    while c0 < c {
        let cc = (c - c0).min(DW_CHUNK);
        let cc4 = cc.div_ceil(4) * 4;
        for j in 0..pairs {
            for l in 0..cc4 {
                let ch = c0 + l;
                let tw = |t: usize| {
                    if t < taps && ch < c {
                        w[t * c + ch] as i8 as i16 as u16 as u32
                    } else {
                        0
                    }
                };
                wpk[j * DW_CHUNK + l] = tw(2 * j) | tw(2 * j + 1) << 16;
            }
        }
        for l in 0..cc {
            rqs[l] = ChRq::new(rq[c0 + l]);
        }
        for oy in 0..g.oh {
            let iy0 = (oy * g.sh) as isize - g.pt as isize;
            let rows_in = iy0 >= 0 && iy0 + g.kh as isize <= g.ih as isize;
            for ox in 0..g.ow {
                let ix0 = (ox * g.sw) as isize - g.pl as isize;
                let interior = rows_in && ix0 >= 0 && ix0 + g.kw as isize <= g.iw as isize;
                let base = (iy0 * g.iw as isize + ix0) * c as isize + c0 as isize;
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
                let dst = out.add((oy * g.ow + ox) * c + c0);
                let mut l = 0;
                while l < cc {
                    let n = (cc - l).min(4);
                    // The input word of tap `t` at channels l..l+4.
                    let x = |t: usize| {
                        if !interior && offs[t] < 0 {
                            zp4
                        } else if n == 4 {
                            load4(input.offset(offs[t]).add(l))
                        } else {
                            load_n(input.offset(offs[t]).add(l), n)
                        }
                    };
                    let (mut a0, mut a1, mut a2, mut a3) = (0i32, 0i32, 0i32, 0i32);
                    for j in 0..pairs {
                        let x0 = x(2 * j);
                        // An odd last tap pairs with itself; its weight is 0.
                        let x1 = if 2 * j + 1 < taps { x(2 * j + 1) } else { x0 };
                        let (e0, o0) = (sxtb16(x0), sxtb16_ror8(x0));
                        let (e1, o1) = (sxtb16(x1), sxtb16_ror8(x1));
                        let wj = wpk.as_ptr().add(j * DW_CHUNK + l);
                        a0 = smlad(pkhbt(e0, e1), *wj, a0);
                        a1 = smlad(pkhbt(o0, o1), *wj.add(1), a1);
                        a2 = smlad(pkhtb(e0, e1), *wj.add(2), a2);
                        a3 = smlad(pkhtb(o0, o1), *wj.add(3), a3);
                    }
                    let acc = [a0, a1, a2, a3];
                    for i in 0..n {
                        *dst.add(l + i) = requant(acc[i], &rqs[l + i], q);
                    }
                    l += 4;
                }
            }
        }
        c0 += cc;
    }
}
