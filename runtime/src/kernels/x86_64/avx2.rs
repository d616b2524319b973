//! AVX2 kernels (x86_64): `vpmaddwd` on sign-extended int8.
//!
//! - GEMM (`avx2_pointwise_i8i32_3x8`, and through [`crate::kernels::gemm::conv`] the
//!   im2col conv and the fully connected layer): tiles of 3 pixels × 8
//!   output channels. A pixel's 8 activations are broadcast to both 128-bit
//!   halves, two weight rows (channels `j`, `j+4`) share one register, so
//!   one `vpmaddwd` does 16 MACs and three `vphaddd` per pixel leave the 8
//!   channel sums in order. Weights are read in place (no packing).
//! - Depthwise (`avx2_dwconv_i8i32_16`): 16 channels per register, taps
//!   interleaved in pairs so `vpmaddwd` adds two taps per lane.
//!
//! Requantization runs in SIMD when a block's shifts are all in `31..=62`
//! (every `M < 1`, the normal case): then the result fits i32, the i64
//! product is shifted with `vpsrlvq` after adding `2^62` (which makes it
//! non-negative, so the logical shift equals the arithmetic one) and the
//! offset `2^(62-s)` is subtracted in i32. Other blocks use the scalar
//! `requant`. Sign-extension to i16 keeps every product exact for the whole
//! int8 range (no `vpmaddubsw` saturation).
#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;
use core::ptr;

use crate::kernels::cpu::Avx2;
use crate::kernels::gemm::{self, Gemm};
use crate::kernels::{check_dwconv, scalar, ConvGeom, KernelNames, Kernels, OutQ};
use crate::quant::ChannelRequant;

pub(in crate::kernels) fn table(_t: Avx2) -> Kernels {
    Kernels {
        name: "avx2",
        pointwise: avx2_pointwise_i8i32_3x8,
        conv: avx2_conv_i8i32_3x8,
        dwconv: avx2_dwconv_i8i32_16,
        fc: avx2_fc_i8i32_1x8,
        add: crate::kernels::scalar::add,
        names: KernelNames {
            pointwise: "avx2_pointwise_i8i32_3x8",
            conv: "avx2_conv_i8i32_3x8",
            dwconv: "avx2_dwconv_i8i32_16",
            fc: "avx2_fc_i8i32_1x8",
        },
    }
}

// The table's entries. They are private: the only way to reach them is a
// table built from an `Avx2` token, which is what makes the `unsafe` calls
// to `#[target_feature(enable = "avx2")]` functions below sound.

fn avx2_pointwise_i8i32_3x8(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, gemm, 8);
}

fn avx2_conv_i8i32_3x8(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, gemm, 8);
}

fn avx2_fc_i8i32_1x8(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, gemm, 8);
}

fn gemm(p: &Gemm<'_>, out: &mut [i8], ldo: usize) {
    p.check(out, ldo);
    // SAFETY: only reachable through `table` (an `Avx2` token proves the CPU
    // runs AVX2); `check` proved every row `gemm_impl` touches is in bounds.
    unsafe { gemm_impl(p, out.as_mut_ptr(), ldo) }
}

fn avx2_dwconv_i8i32_16(
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
    // SAFETY: as in `gemm`; `check_dwconv` proved the bounds.
    unsafe {
        dw_impl(
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

/// Requantization parameters of 8 channels for [`requant8`].
#[derive(Clone, Copy)]
pub(super) struct Rq8 {
    bias: __m256i,
    mult: __m256i,
    mult_odd: __m256i,
    rnd_e: __m256i,
    rnd_o: __m256i,
    sh_e: __m256i,
    sh_o: __m256i,
    off: __m256i,
    /// every shift in `31..=62`: [`requant8`] is exact
    fast: bool,
}

impl Rq8 {
    /// Parameters of channels `ch[0..8]` (missing channels: zero).
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[inline(always)]
    pub(super) unsafe fn new(ch: &[ChannelRequant; 8]) -> Self {
        let mut fast = true;
        let (mut bias, mut mult, mut off) = ([0i32; 8], [0i32; 8], [0i32; 8]);
        let (mut rnd, mut sh) = ([0i64; 8], [0i64; 8]);
        for j in 0..8 {
            let r = &ch[j];
            bias[j] = r.bias;
            mult[j] = r.mult;
            if (31..=62).contains(&r.shift) {
                rnd[j] = (1i64 << (r.shift - 1)) + (1i64 << 62);
                sh[j] = r.shift as i64;
                off[j] = (1u64 << (62 - r.shift)) as u32 as i32;
            } else {
                fast = false;
            }
        }
        let mult_v = _mm256_loadu_si256(mult.as_ptr() as *const __m256i);
        Rq8 {
            bias: _mm256_loadu_si256(bias.as_ptr() as *const __m256i),
            mult: mult_v,
            mult_odd: _mm256_srli_epi64::<32>(mult_v),
            rnd_e: _mm256_set_epi64x(rnd[6], rnd[4], rnd[2], rnd[0]),
            rnd_o: _mm256_set_epi64x(rnd[7], rnd[5], rnd[3], rnd[1]),
            sh_e: _mm256_set_epi64x(sh[6], sh[4], sh[2], sh[0]),
            sh_o: _mm256_set_epi64x(sh[7], sh[5], sh[3], sh[1]),
            off: _mm256_loadu_si256(off.as_ptr() as *const __m256i),
            fast,
        }
    }
}

/// `(acc + bias) · mult + 2^(s-1) >> s` of 8 channels, as i32 (exact when
/// `r.fast`).
///
/// # Safety
///
/// AVX2.
#[inline(always)]
unsafe fn requant8(v: __m256i, r: &Rq8) -> __m256i {
    let x = _mm256_add_epi32(v, r.bias);
    let pe = _mm256_srlv_epi64(
        _mm256_add_epi64(_mm256_mul_epi32(x, r.mult), r.rnd_e),
        r.sh_e,
    );
    let xo = _mm256_srli_epi64::<32>(x);
    let po = _mm256_srlv_epi64(
        _mm256_add_epi64(_mm256_mul_epi32(xo, r.mult_odd), r.rnd_o),
        r.sh_o,
    );
    let y = _mm256_blend_epi32::<0b1010_1010>(pe, _mm256_slli_epi64::<32>(po));
    _mm256_sub_epi32(y, r.off)
}

/// Output quantization as i16 vectors.
#[derive(Clone, Copy)]
struct OutV {
    zp: __m256i,
    lo: __m256i,
    hi: __m256i,
}

impl OutV {
    /// # Safety
    ///
    /// AVX2.
    #[inline(always)]
    unsafe fn new(q: OutQ) -> Self {
        OutV {
            zp: _mm256_set1_epi16(q.zp as i16),
            lo: _mm256_set1_epi16(q.lo as i16),
            hi: _mm256_set1_epi16(q.hi as i16),
        }
    }
}

/// 8 requantized i32 → 8 int8 (low half), with zero point and clamp.
///
/// # Safety
///
/// AVX2.
#[inline(always)]
unsafe fn pack8(y: __m256i, o: &OutV) -> __m128i {
    let s = _mm_packs_epi32(_mm256_castsi256_si128(y), _mm256_extracti128_si256::<1>(y));
    let s = _mm_adds_epi16(s, _mm256_castsi256_si128(o.zp));
    let s = _mm_min_epi16(
        _mm_max_epi16(s, _mm256_castsi256_si128(o.lo)),
        _mm256_castsi256_si128(o.hi),
    );
    _mm_packs_epi16(s, s)
}

/// Reads 8 bytes.
///
/// # Safety
///
/// `p..p+8` readable.
#[inline(always)]
unsafe fn rd64(p: *const u8) -> i64 {
    ptr::read_unaligned(p as *const i64)
}

/// Stores the low `n` (≤ 16) bytes of `v` at `dst`.
///
/// # Safety
///
/// SSE2; `dst..dst+n` writable.
#[inline(always)]
unsafe fn store_n(dst: *mut i8, v: __m128i, n: usize) {
    if n == 16 {
        _mm_storeu_si128(dst as *mut __m128i, v);
    } else if n == 8 {
        _mm_storel_epi64(dst as *mut __m128i, v);
    } else {
        let mut t = [0i8; 16];
        _mm_storeu_si128(t.as_mut_ptr() as *mut __m128i, v);
        ptr::copy_nonoverlapping(t.as_ptr(), dst, n);
    }
}

/// Loads `n` (≤ 16) bytes, zero-filling the rest.
///
/// # Safety
///
/// SSE2; `src..src+n` readable.
#[inline(always)]
unsafe fn load_n(src: *const u8, n: usize) -> __m128i {
    if n == 16 {
        _mm_loadu_si128(src as *const __m128i)
    } else {
        let mut t = [0u8; 16];
        ptr::copy_nonoverlapping(src, t.as_mut_ptr(), n);
        _mm_loadu_si128(t.as_ptr() as *const __m128i)
    }
}

const MR: usize = 3;

/// Sums of `R` pixel rows × 8 weight rows over `k8` (a multiple of 8),
/// channel sums in order.
///
/// # Safety
///
/// AVX2; `k8` bytes readable at every pointer.
#[inline(always)]
unsafe fn tile<const R: usize>(
    ap: &[*const u8; R],
    rows: &[*const u8; 8],
    k8: usize,
) -> [__m256i; R] {
    let z = _mm256_setzero_si256();
    let mut acc = [[z; 4]; R];
    let mut k = 0;
    while k < k8 {
        let mut av = [z; R];
        for i in 0..R {
            av[i] = _mm256_cvtepi8_epi16(_mm_set1_epi64x(rd64(ap[i].add(k))));
        }
        for j in 0..4 {
            let wv = _mm256_cvtepi8_epi16(_mm_set_epi64x(
                rd64(rows[j + 4].add(k)),
                rd64(rows[j].add(k)),
            ));
            for i in 0..R {
                acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av[i], wv));
            }
        }
        k += 8;
    }
    let mut s = [z; R];
    for i in 0..R {
        let h01 = _mm256_hadd_epi32(acc[i][0], acc[i][1]);
        let h23 = _mm256_hadd_epi32(acc[i][2], acc[i][3]);
        s[i] = _mm256_hadd_epi32(h01, h23);
    }
    s
}

/// Requantizes and stores one pixel's 8 channel sums.
///
/// # Safety
///
/// AVX2; `dst..dst+nr` writable; `rq` holds `nr` entries.
#[inline(always)]
unsafe fn finish_pixel(
    dst: *mut i8,
    s: __m256i,
    nr: usize,
    r: &Rq8,
    o: &OutV,
    rq: &[ChannelRequant],
    q: OutQ,
) {
    if r.fast {
        store_n(dst, pack8(requant8(s, r), o), nr);
    } else {
        let mut t = [0i32; 8];
        _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, s);
        for j in 0..nr {
            *dst.add(j) = scalar::requant(t[j], &rq[j], q);
        }
    }
}

/// # Safety
///
/// AVX2; `p` passed `Gemm::check` for `out` (length) and `ldo`.
#[target_feature(enable = "avx2")]
unsafe fn gemm_impl(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    let (m, n, k) = (p.m, p.n, p.k);
    let k8 = k & !7;
    let a0 = p.a.as_ptr() as *const u8;
    let w0 = p.w.as_ptr();
    let o = OutV::new(p.q);
    let mut n0 = 0;
    while n0 < n {
        let nr = (n - n0).min(8);
        let mut rows = [w0; 8];
        let mut chq = [ChannelRequant {
            mult: 0,
            shift: 31,
            bias: 0,
        }; 8];
        for j in 0..8 {
            rows[j] = w0.add((n0 + j.min(nr - 1)) * p.ldw);
            if j < nr {
                chq[j] = p.rq[n0 + j];
            }
        }
        let r = Rq8::new(&chq);
        let rq = &p.rq[n0..n0 + nr];
        let mut m0 = 0;
        while m0 < m {
            let mr = if m - m0 >= MR { MR } else { 1 };
            let mut sums = [_mm256_setzero_si256(); MR];
            if mr == MR {
                let mut ap = [a0; MR];
                for i in 0..MR {
                    ap[i] = a0.add((m0 + i) * p.lda);
                }
                sums = tile::<MR>(&ap, &rows, k8);
            } else {
                sums[0] = tile::<1>(&[a0.add(m0 * p.lda)], &rows, k8)[0];
            }
            for i in 0..mr {
                if k8 < k {
                    let a = core::slice::from_raw_parts(
                        a0.add((m0 + i) * p.lda + k8) as *const i8,
                        k - k8,
                    );
                    let mut t = [0i32; 8];
                    for j in 0..nr {
                        t[j] = tail_dot(a, core::slice::from_raw_parts(rows[j].add(k8), k - k8));
                    }
                    sums[i] =
                        _mm256_add_epi32(sums[i], _mm256_loadu_si256(t.as_ptr() as *const __m256i));
                }
                finish_pixel(out.add((m0 + i) * ldo + n0), sums[i], nr, &r, &o, rq, p.q);
            }
            m0 += mr;
        }
        n0 += nr;
    }
}

/// Scalar dot product of a row tail.
#[inline(always)]
fn tail_dot(a: &[i8], w: &[u8]) -> i32 {
    a.iter()
        .zip(w)
        .map(|(&x, &y)| x as i32 * y as i8 as i32)
        .sum()
}

/// Taps the SIMD depthwise kernels handle (more: scalar).
pub(super) const DW_MAX_TAPS: usize = 64;
/// Channels per depthwise chunk (weights and parameters prepared per chunk).
const DW_CHUNK: usize = 128;
const DW_BLOCKS: usize = DW_CHUNK / 16;

/// Channels `ch..ch+n` of the input cell at `off` (`-1`: padding, the zero
/// point), sign-extended to i16.
///
/// # Safety
///
/// AVX2; `off + ch + n` bytes of `input` readable when `off >= 0`.
#[inline(always)]
unsafe fn ld_tap(input: *const i8, off: isize, ch: usize, n: usize, zpv: __m256i) -> __m256i {
    if off < 0 {
        zpv
    } else {
        _mm256_cvtepi8_epi16(load_n(input.offset(off).add(ch) as *const u8, n))
    }
}

/// # Safety
///
/// AVX2; slices as checked by `check_dwconv`; `1 <= kh·kw <= DW_MAX_TAPS`.
#[target_feature(enable = "avx2")]
unsafe fn dw_impl(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: *mut i8,
) {
    // Constant tap counts unroll the tap loop.
    match g.kh * g.kw {
        9 => dw_body(input, w, g, zp_in, rq, q, out, 9),
        25 => dw_body(input, w, g, zp_in, rq, q, out, 25),
        t => dw_body(input, w, g, zp_in, rq, q, out, t),
    }
}

/// # Safety
///
/// As [`dw_impl`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dw_body(
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
    let pairs = taps.div_ceil(2);
    let z = _mm256_setzero_si256();
    let o = OutV::new(q);
    let zpv = _mm256_set1_epi16(zp_in as i16);
    let mut wt = [[z; 2]; DW_MAX_TAPS / 2 * DW_BLOCKS];
    let zero_rq = Rq8::new(
        &[ChannelRequant {
            mult: 0,
            shift: 31,
            bias: 0,
        }; 8],
    );
    let mut rqs = [[zero_rq; 2]; DW_BLOCKS];
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
            let n = (c - ch).min(16);
            for pi in 0..pairs {
                let w0 = _mm256_cvtepi8_epi16(load_n(w.add(2 * pi * c + ch), n));
                let w1 = if 2 * pi + 1 < taps {
                    _mm256_cvtepi8_epi16(load_n(w.add((2 * pi + 1) * c + ch), n))
                } else {
                    z
                };
                wt[pi * nb + b] = [_mm256_unpacklo_epi16(w0, w1), _mm256_unpackhi_epi16(w0, w1)];
            }
            // vpunpck{l,h}wd order: lo holds channels 0-3, 8-11; hi 4-7, 12-15.
            let mut lo = [ChannelRequant {
                mult: 0,
                shift: 31,
                bias: 0,
            }; 8];
            let mut hi = lo;
            for j in 0..8 {
                let (cl, chh) = ((j & 3) + (j >> 2) * 8, (j & 3) + 4 + (j >> 2) * 8);
                if cl < n {
                    lo[j] = rq[ch + cl];
                }
                if chh < n {
                    hi[j] = rq[ch + chh];
                }
            }
            rqs[b] = [Rq8::new(&lo), Rq8::new(&hi)];
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
                    let (mut al, mut ah) = (z, z);
                    for pi in 0..pairs {
                        let (x0, x1);
                        if interior && n == 16 {
                            x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(
                                input.offset(offs[2 * pi]).add(ch) as *const __m128i,
                            ));
                            x1 = if 2 * pi + 1 < taps {
                                _mm256_cvtepi8_epi16(_mm_loadu_si128(
                                    input.offset(offs[2 * pi + 1]).add(ch) as *const __m128i,
                                ))
                            } else {
                                z
                            };
                        } else {
                            x0 = ld_tap(input, offs[2 * pi], ch, n, zpv);
                            x1 = if 2 * pi + 1 < taps {
                                ld_tap(input, offs[2 * pi + 1], ch, n, zpv)
                            } else {
                                z
                            };
                        }
                        let [wl, wh] = wt[pi * nb + b];
                        al = _mm256_add_epi32(
                            al,
                            _mm256_madd_epi16(_mm256_unpacklo_epi16(x0, x1), wl),
                        );
                        ah = _mm256_add_epi32(
                            ah,
                            _mm256_madd_epi16(_mm256_unpackhi_epi16(x0, x1), wh),
                        );
                    }
                    let [rl, rh] = &rqs[b];
                    if rl.fast && rh.fast {
                        let s = _mm256_packs_epi32(requant8(al, rl), requant8(ah, rh));
                        let s = _mm256_min_epi16(
                            _mm256_max_epi16(_mm256_adds_epi16(s, o.zp), o.lo),
                            o.hi,
                        );
                        let s = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(s, s));
                        store_n(dst.add(ch), _mm256_castsi256_si128(s), n);
                    } else {
                        let (mut tl, mut th) = ([0i32; 8], [0i32; 8]);
                        _mm256_storeu_si256(tl.as_mut_ptr() as *mut __m256i, al);
                        _mm256_storeu_si256(th.as_mut_ptr() as *mut __m256i, ah);
                        for j in 0..8 {
                            let (cl, chh) = ((j & 3) + (j >> 2) * 8, (j & 3) + 4 + (j >> 2) * 8);
                            if cl < n {
                                *dst.add(ch + cl) = scalar::requant(tl[j], &rq[ch + cl], q);
                            }
                            if chh < n {
                                *dst.add(ch + chh) = scalar::requant(th[j], &rq[ch + chh], q);
                            }
                        }
                    }
                }
            }
        }
        c0 += cc;
    }
}
