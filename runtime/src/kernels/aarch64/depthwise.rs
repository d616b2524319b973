//! Depthwise convolution: the general kernel (`dw_body`) and the 3x3
//! kernel (`dw3_body`), both tables.

#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::ptr;

use crate::kernels::{ConvGeom, OutQ};
use crate::quant::ChannelRequant;

use super::dot::{Mac, Sdot};
use super::requant::{load_n, pack8, requant4, short_requant, store16, store_n, OutV, OutV16, Rq4};

/// Taps the SIMD depthwise kernel handles (more: scalar).
pub(super) const DW_MAX_TAPS: usize = 64;
/// Channels per depthwise chunk (parameters prepared per chunk).
pub(super) const DW_CHUNK: usize = 128;
pub(super) const DW_BLOCKS: usize = DW_CHUNK / 16;
/// Channels per chunk of the dotprod depthwise kernel: 256 covers most
/// MobileNet layers in one or two passes over the pixels (about 8 KiB of
/// prepared weights and parameters on the stack).
pub(super) const DWD_CHUNK: usize = 256;
pub(super) const DWD_BLOCKS: usize = DWD_CHUNK / 16;

/// # Safety
///
/// NEON; slices as checked by `check_dwconv`; `1 <= kh·kw <= DW_MAX_TAPS`.
#[target_feature(enable = "neon")]
pub(super) unsafe fn dw_neon(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
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
pub(super) unsafe fn dw_body(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: *mut i8,
    taps: usize,
) {
    let c = g.cout;
    let w = w as *const i8;
    let o = OutV::new(q);
    let zpv = vdupq_n_s8(zp_in);
    let zero_rq = Rq4::new(
        &[ChannelRequant {
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
                let mut four = [ChannelRequant {
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
pub(super) unsafe fn interleave4(x: [int8x16_t; 4]) -> [int8x16_t; 4] {
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
pub(super) unsafe fn dw3_dotprod(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
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
pub(super) unsafe fn dw3_neon(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
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
pub(super) unsafe fn dw3_body<const DOT: bool>(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: *mut i8,
) {
    const TAPS: usize = 9;
    let c = g.cout;
    let w = w as *const i8;
    let o = OutV16::new(q);
    let zpv = vdupq_n_s8(zp_in);
    let zero_rq = Rq4::new(
        &[ChannelRequant {
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
            let mut four = [[ChannelRequant {
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
pub(super) struct DwBlocks<'a> {
    pub(super) wi: &'a [[int8x16_t; 9]; DWD_BLOCKS],
    pub(super) bias: &'a [[int32x4_t; 4]; DWD_BLOCKS],
    pub(super) rqs: &'a [[Rq4; 4]; DWD_BLOCKS],
    pub(super) o: &'a OutV16,
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
pub(super) unsafe fn dw_pixel<const DOT: bool, const INTERIOR: bool, const SHORT: bool>(
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
pub(super) unsafe fn dw_tail_dotprod<const SHORT: bool>(
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
pub(super) unsafe fn dw_tail_neon<const SHORT: bool>(
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
pub(super) unsafe fn dw_block<
    const DOT: bool,
    const INTERIOR: bool,
    const FULL: bool,
    const SHORT: bool,
>(
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
