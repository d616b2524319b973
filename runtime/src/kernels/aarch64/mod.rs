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
//! - dotprod GEMM ([`gemm_packed::gemm_packed`]): the weights of 16 channels are
//!   re-arranged per call into a stack block (4 reduction bytes × 4
//!   channels per vector), and `sdot` by element multiplies them with 4-byte
//!   groups of a pixel's load: 4 pixels × 16 channels per tile, one channel
//!   per i32 lane, no horizontal reduction. Shapes it does not take (`k % 4
//!   != 0`, `k > 1024`, fewer than 4 pixels) use the 4x4 tiles with one
//!   `sdot` per 16 MACs. `sdot` is inline `asm!`: the `vdotq_s32` intrinsic
//!   is not stable yet; the functions enable the `dotprod` target feature,
//!   so the assembler accepts it.
//! - Depthwise 3x3 ([`depthwise::dw3_body`], both tables): 16 channels per block;
//!   dotprod interleaves taps with `zip` so that one `sdot` adds 4 taps,
//!   NEON takes `smull`/`smull2` then `saddw`/`saddw2` per tap. Other kernel
//!   sizes: `neon_dwconv_i8i32_16`'s general loop.
//! - Requantization in SIMD, exact for every shift: `sqdmulh` + `srshl` in
//!   i32 when every shift of a block is 32..=62 ([`requant::scale4`]), else `smull`
//!   to i64 and `srshl` by `−shift` (exactly `(x + 2^(s−1)) >> s`);
//!   saturating narrows, zero point in i16, clamp.
//! - Residual add (`neon_add_i8_16`, both tables): exact i64 sums, the same
//!   narrows.
//! - Loops hold no calls (a `memcpy` for a short tail would make the
//!   compiler spill the registers live across it): tails take separate
//!   monomorphized or out-of-line paths.
//!
//! Files: `gemm_tiles` (4x4 tiles), `gemm_packed` (dotprod, packed weights),
//! `depthwise`, `add`, with `dot` (the multiply-accumulate steps) and
//! `requant` (requantization and output) shared by all.

#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

mod add;
mod depthwise;
mod dot;
mod gemm_packed;
mod gemm_tiles;
mod requant;

use crate::kernels::cpu::{Dotprod, Neon};
use crate::kernels::gemm::{self, Gemm};
use crate::kernels::{check_dwconv, scalar, ConvGeom, KernelNames, Kernels, OutQ};
use crate::quant::ChannelRequant;

use add::neon_add_i8_16;
use depthwise::{dw3_dotprod, dw3_neon, dw_neon, DW_MAX_TAPS};
use gemm_tiles::{gemm_dotprod, gemm_neon};

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
    rq: &[ChannelRequant],
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
    rq: &[ChannelRequant],
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
    rq: &[ChannelRequant],
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
    rq: &[ChannelRequant],
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
    rq: &[ChannelRequant],
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
    rq: &[ChannelRequant],
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
    rq: &[ChannelRequant],
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
    rq: &[ChannelRequant],
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
