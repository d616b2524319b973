//! Dense convolutions as GEMMs in graftnet's dot-product layout, shared by
//! the SIMD tables.
//!
//! A [`Gemm`] is `out[p][c] = requant(Σ_k a[p][k] · w[c][k])`: pixels ×
//! reduction (`a`, row stride `lda`) against output channels × reduction
//! (`w`, the blob's `[cout][kh][kw][cin/g]` rows, stride `ldw`). Both operands
//! are contiguous along `k`, so an ISA only supplies a [`GemmFn`] that
//! multiplies such blocks; [`conv`] maps every dense conv onto it:
//!
//! - 1x1 unpadded (any stride, any groups): rows read in place;
//! - fully connected (the kernel covers the input): one row, `k = h·w·c`;
//! - anything else: im2col into a stack block, padded cells filled with the
//!   input zero point (what the reference reads), and the weights copied
//!   zero-padded to the ISA's `k` unit when they are small (the 3x3 stem:
//!   27 → 32), so no scalar tail remains. Row tails are not cleared: they
//!   hold int8 bytes that meet those zero weights (or are not read).

use super::{scalar, ConvGeom, OutQ};
use crate::quant::ChannelRequant;

/// One GEMM block; see the module doc.
#[derive(Clone, Copy)]
pub(crate) struct Gemm<'a> {
    pub a: &'a [i8],
    pub lda: usize,
    /// rows of `a` (pixels)
    pub m: usize,
    /// reduction length
    pub k: usize,
    pub w: &'a [u8],
    pub ldw: usize,
    /// rows of `w` (output channels)
    pub n: usize,
    pub rq: &'a [ChannelRequant],
    pub q: OutQ,
}

/// Multiplies a [`Gemm`] block into `out` (row stride `ldo`).
pub(crate) type GemmFn = fn(&Gemm<'_>, &mut [i8], usize);

impl Gemm<'_> {
    /// Panics unless every row the block reads or writes is inside its
    /// slice. The ISA GEMMs call this before unchecked accesses.
    pub fn check(&self, out: &[i8], ldo: usize) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        assert!(
            self.a.len() >= (self.m - 1) * self.lda + self.k,
            "gemm: a too short"
        );
        assert!(
            self.w.len() >= (self.n - 1) * self.ldw + self.k,
            "gemm: w too short"
        );
        assert!(
            self.rq.len() >= self.n,
            "gemm: too few requantization parameters"
        );
        assert!(
            ldo >= self.n && out.len() >= (self.m - 1) * ldo + self.n,
            "gemm: out too short"
        );
    }
}

/// Bytes of the im2col block on the stack.
const IM2COL_BYTES: usize = 32 * 1024;
/// Bytes of the zero-padded weight copy on the stack.
const WPAD_BYTES: usize = 8 * 1024;

/// A dense / grouped conv through `gemm`; `unit` is the `k` granularity the
/// ISA GEMM runs without a scalar tail (im2col rows are padded to it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
    gemm: GemmFn,
    unit: usize,
) {
    conv_blocks::<{ IM2COL_BYTES + 16 }, WPAD_BYTES>(input, w, g, zp_in, rq, q, out, gemm, unit);
}

/// [`conv`] with other stack blocks: `BUF` bytes of im2col block (16 of
/// them slack for `copy_short`) and `WPAD` bytes of padded weights. MCUs
/// use smaller blocks than the 40 KiB of [`conv`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_blocks<const BUF: usize, const WPAD: usize>(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
    gemm: GemmFn,
    unit: usize,
) {
    const { assert!(BUF > 16) };
    super::check_conv(input, w, g, rq, out);
    let (cg, ng, row) = (g.cin / g.groups, g.cout / g.groups, g.row_len());
    let pixels = g.oh * g.ow;
    if pixels == 0 || g.cout == 0 {
        return;
    }
    if g.is_fully_connected() {
        let p = Gemm {
            a: input,
            lda: row,
            m: 1,
            k: row,
            w,
            ldw: row,
            n: g.cout,
            rq,
            q,
        };
        gemm(&p, out, g.cout);
        return;
    }
    let in_bounds = (g.oh - 1) * g.sh < g.ih && (g.ow - 1) * g.sw < g.iw;
    if g.kh == 1 && g.kw == 1 && g.pt == 0 && g.pl == 0 && in_bounds {
        for grp in 0..g.groups {
            let wg = &w[grp * ng * row..];
            let rqg = &rq[grp * ng..];
            if g.sh == 1 && g.sw == 1 && g.ow == g.iw {
                let p = Gemm {
                    a: &input[grp * cg..],
                    lda: g.cin,
                    m: pixels,
                    k: cg,
                    w: wg,
                    ldw: row,
                    n: ng,
                    rq: rqg,
                    q,
                };
                gemm(&p, &mut out[grp * ng..], g.cout);
            } else {
                for oy in 0..g.oh {
                    let a = &input[(oy * g.sh * g.iw) * g.cin + grp * cg..];
                    let p = Gemm {
                        a,
                        lda: g.sw * g.cin,
                        m: g.ow,
                        k: cg,
                        w: wg,
                        ldw: row,
                        n: ng,
                        rq: rqg,
                        q,
                    };
                    gemm(&p, &mut out[oy * g.ow * g.cout + grp * ng..], g.cout);
                }
            }
        }
        return;
    }
    // im2col
    let rowpad = row.div_ceil(unit) * unit;
    let chunk = (BUF - 16) / rowpad.max(1);
    if chunk == 0 {
        scalar::conv(input, w, g, zp_in, rq, q, out);
        return;
    }
    // 16 bytes of slack: short copies move 16 bytes at once (see `copy_short`).
    let mut buf = [0i8; BUF];
    let mut wpad = [0u8; WPAD];
    let padw = rowpad != row && ng * rowpad <= WPAD;
    for grp in 0..g.groups {
        let wg = &w[grp * ng * row..(grp + 1) * ng * row];
        let (wk, ldw, k) = if padw {
            for c in 0..ng {
                wpad[c * rowpad..c * rowpad + row].copy_from_slice(&wg[c * row..(c + 1) * row]);
                wpad[c * rowpad + row..(c + 1) * rowpad].fill(0);
            }
            (&wpad[..ng * rowpad], rowpad, rowpad)
        } else {
            (wg, row, row)
        };
        let mut p0 = 0;
        while p0 < pixels {
            let np = chunk.min(pixels - p0);
            // Rows are written in order, each segment after the previous one,
            // so the bytes a short copy writes past its segment are
            // overwritten later (or lie beyond the block).
            let (mut oy, mut ox) = (p0 / g.ow, p0 % g.ow);
            for r in 0..np {
                if r > 0 {
                    ox += 1;
                    if ox == g.ow {
                        (oy, ox) = (oy + 1, 0);
                    }
                }
                let d0 = r * rowpad;
                let ix0 = (ox * g.sw) as isize - g.pl as isize;
                let cols_in = g.groups == 1 && ix0 >= 0 && ix0 as usize + g.kw <= g.iw;
                let iy0 = (oy * g.sh) as isize - g.pt as isize;
                // Interior pixel of a 3-row kernel with short rows (the
                // stem's 3 × 9 bytes): three 16-byte moves, checked once.
                let (seg, step) = (g.kw * cg, g.iw * g.cin);
                if g.kh == 3 && cols_in && seg <= 16 && iy0 >= 0 && iy0 as usize + 3 <= g.ih {
                    let s0 = (iy0 as usize * g.iw + ix0 as usize) * g.cin;
                    if let (Some(src), Some(dst)) = (
                        input.get(s0..s0 + 2 * step + 16),
                        buf.get_mut(d0..d0 + 2 * seg + 16),
                    ) {
                        move3(src, step, dst, seg);
                        continue;
                    }
                }
                for ky in 0..g.kh {
                    let iy = (oy * g.sh + ky) as isize - g.pt as isize;
                    let seg = d0 + ky * g.kw * cg;
                    if iy < 0 || iy >= g.ih as isize {
                        buf[seg..seg + g.kw * cg].fill(zp_in);
                    } else if cols_in {
                        // A dense conv's kernel row is one contiguous input span.
                        let s = (iy as usize * g.iw + ix0 as usize) * g.cin;
                        copy_short(&mut buf, seg, input, s, g.kw * cg);
                    } else {
                        for kx in 0..g.kw {
                            let ix = ix0 + kx as isize;
                            let d = seg + kx * cg;
                            if ix < 0 || ix >= g.iw as isize {
                                buf[d..d + cg].fill(zp_in);
                            } else {
                                let s = (iy as usize * g.iw + ix as usize) * g.cin + grp * cg;
                                copy_short(&mut buf, d, input, s, cg);
                            }
                        }
                    }
                }
                // The row's tail `row..rowpad` is not cleared: it holds zeros
                // or int8 input bytes a `copy_short` spilled there. Either
                // the GEMM does not read it (k = row) or it meets the
                // zero-padded weights, so every ISA's product adds 0.
            }
            let p = Gemm {
                a: &buf[..np * rowpad],
                lda: rowpad,
                m: np,
                k,
                w: wk,
                ldw,
                n: ng,
                rq: &rq[grp * ng..],
                q,
            };
            gemm(&p, &mut out[p0 * g.cout + grp * ng..], g.cout);
            p0 += np;
        }
    }
}

/// `dst[i·seg..][..16] = src[i·step..][..16]` for `i` in 0..3 (the slices
/// end 16 bytes after the third row).
#[inline(always)]
fn move3(src: &[i8], step: usize, dst: &mut [i8], seg: usize) {
    let rows: [[i8; 16]; 3] = core::array::from_fn(|i| src[i * step..][..16].try_into().unwrap());
    for (i, r) in rows.iter().enumerate() {
        dst[i * seg..][..16].copy_from_slice(r);
    }
}

/// Copies `src[s..s + n]` to `buf[d..d + n]`; when `n <= 16` and both sides
/// have 16 bytes, moves 16 (one load, one store instead of a `memcpy`
/// call), clobbering `buf[d + n..d + 16]`.
#[inline(always)]
fn copy_short(buf: &mut [i8], d: usize, src: &[i8], s: usize, n: usize) {
    if n <= 16 && d + 16 <= buf.len() && s + 16 <= src.len() {
        let t: [i8; 16] = src[s..s + 16].try_into().unwrap();
        buf[d..d + 16].copy_from_slice(&t);
    } else {
        buf[d..d + n].copy_from_slice(&src[s..s + n]);
    }
}
