//! AVX-512 VNNI kernels (x86_64: Ice Lake, Sapphire Rapids, Zen 4 ...).
//!
//! GEMM (`avx512vnni_pointwise_u8i8i32_6x16`, and the im2col conv and fully
//! connected layer through [`crate::kernels::gemm::conv`]): `vpdpbusd` multiplies
//! unsigned by signed bytes, so activations are shifted to `x + 128` (a
//! `vpxord` with `0x80`) and each channel's bias absorbs `−128·Σw`, the
//! channel's weight sum, computed per call from the weights themselves
//! (with `vpdpbusd` against ones) because a patch may replace rows. The
//! u8×i8 products and their sums are exact, so the result is bit-identical.
//!
//! Layout: a zmm holds 4 channels × 16 reduction bytes (a 16-byte slice of
//! 4 weight rows, read in place), the pixel's 16 activations are broadcast
//! to the 4 lanes; a tile is 6 pixels × 16 channels (24 accumulators). At
//! the end, 3 unpack/add rounds leave a pixel's 16 channel sums in order.
//! Reduction tails (`k % 16`) use masked loads.
//!
//! Residual add (`avx512vnni_add_i8_16`): the exact i64 sum of both
//! rescaled inputs, 16 elements per step.
//!
//! Requantization is exact in SIMD for every shift: i64 products
//! (`vpmuldq` on even and odd lanes), `vpsravq`, i64 clamp, `vpmovdb`.
//!
//! Depthwise (`avx512vnni_dwconv_i16i32_32`): 32 channels per zmm as i16,
//! taps interleaved in pairs and accumulated with `vpdpwssd` (i16 pairs →
//! i32, exact), masked loads and stores for channel tails, the same exact
//! requantization. Interior pixels (every tap inside the input) take a path
//! without per-tap bounds checks.
#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use core::mem::MaybeUninit;

use crate::kernels::cpu::Avx512Vnni;
use crate::kernels::gemm::{self, Gemm};
use crate::kernels::{check_dwconv, scalar, ConvGeom, KernelNames, Kernels, OutQ};
use crate::quant::ChannelRequant;

pub(in crate::kernels) fn table(t: Avx512Vnni) -> Kernels {
    let _ = t;
    Kernels {
        name: "avx512vnni",
        pointwise: avx512vnni_pointwise_u8i8i32_6x16,
        conv: avx512vnni_conv_u8i8i32_6x16,
        dwconv: avx512vnni_dwconv_i16i32_32,
        fc: avx512vnni_fc_u8i8i32_1x16,
        add: avx512vnni_add_i8_16,
        names: KernelNames {
            pointwise: "avx512vnni_pointwise_u8i8i32_6x16",
            conv: "avx512vnni_conv_u8i8i32_6x16",
            dwconv: "avx512vnni_dwconv_i16i32_32",
            fc: "avx512vnni_fc_u8i8i32_1x16",
        },
    }
}

// Private entries: reachable only through a table built from an
// `Avx512Vnni` token, which makes the `unsafe` calls below sound.

fn avx512vnni_pointwise_u8i8i32_6x16(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, gemm, 16);
}

fn avx512vnni_conv_u8i8i32_6x16(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, gemm, 16);
}

fn avx512vnni_fc_u8i8i32_1x16(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    gemm::conv(input, w, g, zp_in, rq, q, out, gemm, 16);
}

/// Residual add, 16 elements per step: `x − za`, `y − zb` in i32 lanes,
/// the exact i64 sum `(x − za)·ma + (y − zb)·mb` (`vpmuldq` on even and odd
/// lanes, below 2^40 in magnitude), `+ 2^(shift−1)`, `vpsraq`, zero point and
/// clamp in i64, `vpmovdb`. Zero points outside int8 or shifts outside
/// 1..=62 (never derived) and the last `n % 16` elements take the scalar loop.
#[allow(clippy::too_many_arguments)]
fn avx512vnni_add_i8_16(
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
        // SAFETY: reachable only through a table built from an `Avx512Vnni`
        // token; `a`, `b` and `out` hold the same multiple of 16 elements,
        // and `add_blocks16` passes only shifts 1..=62.
        unsafe { add_avx512(a, b, p, q, out) }
    });
}

/// # Safety
/// The CPU runs AVX-512 F/BW; `out.len()` is a multiple of 16 and at most
/// the length of `a` and `b`; `1 <= shift <= 62`.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn add_avx512(a: &[i8], b: &[i8], p: [i32; 5], q: OutQ, out: &mut [i8]) {
    let n16 = out.len();
    let [za, ma, zb, mb, shift] = p;
    let (vza, vzb) = (_mm512_set1_epi32(za), _mm512_set1_epi32(zb));
    // `vpmuldq` reads the low dword of each qword.
    let (vma, vmb) = (_mm512_set1_epi32(ma), _mm512_set1_epi32(mb));
    let round = _mm512_set1_epi64(1i64 << (shift - 1));
    let count = _mm_cvtsi32_si128(shift);
    let zp = _mm512_set1_epi64(q.zp as i64);
    let (lo, hi) = (
        _mm512_set1_epi64(q.lo as i64),
        _mm512_set1_epi64(q.hi as i64),
    );
    let finish = |s: __m512i| {
        let v = _mm512_add_epi64(_mm512_sra_epi64(_mm512_add_epi64(s, round), count), zp);
        _mm512_min_epi64(_mm512_max_epi64(v, lo), hi)
    };
    for i in (0..n16).step_by(16) {
        // SAFETY: `i + 16 <= out.len() <= len(a), len(b)` (caller).
        let (x, y) = unsafe {
            (
                _mm512_cvtepi8_epi32(_mm_loadu_si128(a.as_ptr().add(i) as *const __m128i)),
                _mm512_cvtepi8_epi32(_mm_loadu_si128(b.as_ptr().add(i) as *const __m128i)),
            )
        };
        let (xa, yb) = (_mm512_sub_epi32(x, vza), _mm512_sub_epi32(y, vzb));
        let even = _mm512_add_epi64(_mm512_mul_epi32(xa, vma), _mm512_mul_epi32(yb, vmb));
        let odd = _mm512_add_epi64(
            _mm512_mul_epi32(_mm512_srli_epi64(xa, 32), vma),
            _mm512_mul_epi32(_mm512_srli_epi64(yb, 32), vmb),
        );
        // Clamped values fit a dword: even results stay in the low dwords,
        // odd ones move to the high dwords.
        let r = _mm512_mask_blend_epi32(0xaaaa, finish(even), _mm512_slli_epi64(finish(odd), 32));
        // SAFETY: as above.
        unsafe {
            _mm_storeu_si128(
                out.as_mut_ptr().add(i) as *mut __m128i,
                _mm512_cvtepi32_epi8(r),
            )
        };
    }
}

fn gemm(p: &Gemm<'_>, out: &mut [i8], ldo: usize) {
    p.check(out, ldo);
    // SAFETY: only reachable through `table` (an `Avx512Vnni` token proves
    // the CPU features); `check` proved the bounds `gemm_impl` relies on.
    unsafe { gemm_impl(p, out.as_mut_ptr(), ldo) }
}

fn avx512vnni_dwconv_i16i32_32(
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

/// Requantization parameters of 16 channels: i32 lanes for the bias and
/// multiplier, i64 lanes (even channels, odd channels) for the rounding
/// constant and the shift.
#[derive(Clone, Copy)]
struct Rq16 {
    bias: __m512i,
    mult: __m512i,
    mult_odd: __m512i,
    rnd_e: __m512i,
    rnd_o: __m512i,
    sh_e: __m512i,
    sh_o: __m512i,
}

impl Rq16 {
    /// # Safety
    ///
    /// AVX-512F.
    #[inline(always)]
    unsafe fn new(ch: &[ChannelRequant; 16]) -> Self {
        let (mut bias, mut mult) = ([0i32; 16], [0i32; 16]);
        let (mut rnd, mut sh) = ([0i64; 16], [0i64; 16]);
        for j in 0..16 {
            // even channels to 0..8, odd to 8..16
            let h = (j & 1) * 8 + j / 2;
            bias[j] = ch[j].bias;
            mult[j] = ch[j].mult;
            let s = ch[j].shift;
            if (1..=62).contains(&s) {
                rnd[h] = 1i64 << (s - 1);
                sh[h] = s as i64;
            }
        }
        let mult_v = _mm512_loadu_si512(mult.as_ptr() as *const _);
        Rq16 {
            bias: _mm512_loadu_si512(bias.as_ptr() as *const _),
            mult: mult_v,
            mult_odd: _mm512_srli_epi64::<32>(mult_v),
            rnd_e: _mm512_loadu_si512(rnd.as_ptr() as *const _),
            rnd_o: _mm512_loadu_si512(rnd.as_ptr().add(8) as *const _),
            sh_e: _mm512_loadu_si512(sh.as_ptr() as *const _),
            sh_o: _mm512_loadu_si512(sh.as_ptr().add(8) as *const _),
        }
    }
}

/// Output quantization: `lo − zp`, `hi − zp` (i64 lanes), `zp` (i32 lanes).
struct OutV {
    lo: __m512i,
    hi: __m512i,
    zp: __m512i,
}

impl OutV {
    /// # Safety
    ///
    /// AVX-512F.
    #[inline(always)]
    unsafe fn new(q: OutQ) -> Self {
        OutV {
            lo: _mm512_set1_epi64(q.lo as i64 - q.zp as i64),
            hi: _mm512_set1_epi64(q.hi as i64 - q.zp as i64),
            zp: _mm512_set1_epi32(q.zp),
        }
    }
}

/// 16 channel sums → 16 output bytes (same lane order). Even and odd
/// channels are multiplied in the i64 halves of their qwords (`vpmuldq`),
/// shifted arithmetically (`vpsravq`), clamped in i64 (so any shift is
/// exact), merged back into dwords and narrowed with one `vpmovdb`.
///
/// # Safety
///
/// AVX-512F.
#[inline(always)]
unsafe fn requant16(v: __m512i, r: &Rq16, o: &OutV) -> __m128i {
    let x = _mm512_add_epi32(v, r.bias);
    let pe = _mm512_mul_epi32(x, r.mult);
    let po = _mm512_mul_epi32(_mm512_srli_epi64::<32>(x), r.mult_odd);
    let pe = _mm512_srav_epi64(_mm512_add_epi64(pe, r.rnd_e), r.sh_e);
    let po = _mm512_srav_epi64(_mm512_add_epi64(po, r.rnd_o), r.sh_o);
    let pe = _mm512_min_epi64(_mm512_max_epi64(pe, o.lo), o.hi);
    let po = _mm512_min_epi64(_mm512_max_epi64(po, o.lo), o.hi);
    let y = _mm512_mask_blend_epi32(0xaaaa, pe, _mm512_slli_epi64::<32>(po));
    _mm512_cvtepi32_epi8(_mm512_add_epi32(y, o.zp))
}

/// Sum of a weight row (`k` bytes), by `vpdpbusd` against ones.
///
/// # Safety
///
/// AVX-512 VNNI/BW; `row..row+k` readable.
#[inline(always)]
unsafe fn row_sum(row: *const u8, k: usize) -> i32 {
    let ones = _mm512_set1_epi8(1);
    let mut acc = _mm512_setzero_si512();
    let mut kk = 0;
    while kk + 64 <= k {
        acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(row.add(kk) as *const _));
        kk += 64;
    }
    if kk < k {
        let mask: __mmask64 = (1u64 << (k - kk)) - 1;
        acc = _mm512_dpbusd_epi32(
            acc,
            ones,
            _mm512_maskz_loadu_epi8(mask, row.add(kk) as *const i8),
        );
    }
    _mm512_reduce_add_epi32(acc)
}

/// 16 bytes of rows `g`, `4+g`, `8+g`, `12+g` at `k` (masked by `mask`).
///
/// # Safety
///
/// AVX-512F/BW/VL; the unmasked bytes readable.
#[inline(always)]
unsafe fn wvec(rows: &[*const u8; 16], g: usize, k: usize, mask: __mmask16) -> __m512i {
    let v = _mm512_castsi128_si512(_mm_maskz_loadu_epi8(mask, rows[g].add(k) as *const i8));
    let v = _mm512_inserti32x4::<1>(
        v,
        _mm_maskz_loadu_epi8(mask, rows[4 + g].add(k) as *const i8),
    );
    let v = _mm512_inserti32x4::<2>(
        v,
        _mm_maskz_loadu_epi8(mask, rows[8 + g].add(k) as *const i8),
    );
    _mm512_inserti32x4::<3>(
        v,
        _mm_maskz_loadu_epi8(mask, rows[12 + g].add(k) as *const i8),
    )
}

const MR: usize = 6;

/// Sums (with activations shifted by +128) of `R` pixel rows × 16 weight
/// rows over `k`, channel sums in order.
///
/// # Safety
///
/// AVX-512 VNNI/F/BW/VL; `k` bytes readable at every pointer.
#[inline(always)]
unsafe fn tile<const R: usize>(
    ap: &[*const u8; R],
    rows: &[*const u8; 16],
    k: usize,
) -> [__m512i; R] {
    let z = _mm512_setzero_si512();
    let x80 = _mm512_set1_epi8(0x80u8 as i8);
    let mut acc = [[z; 4]; R];
    let mut kk = 0;
    while kk < k {
        let mask: __mmask16 = if k - kk >= 16 {
            0xffff
        } else {
            ((1u32 << (k - kk)) - 1) as u16
        };
        let mut av = [z; R];
        for i in 0..R {
            let a = _mm_maskz_loadu_epi8(mask, ap[i].add(kk) as *const i8);
            av[i] = _mm512_xor_si512(_mm512_broadcast_i32x4(a), x80);
        }
        for g in 0..4 {
            let wv = wvec(rows, g, kk, mask);
            for i in 0..R {
                acc[i][g] = _mm512_dpbusd_epi32(acc[i][g], av[i], wv);
            }
        }
        kk += 16;
    }
    let mut s = [z; R];
    for i in 0..R {
        let [a0, a1, a2, a3] = acc[i];
        let t = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
        let u = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
        s[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t, u), _mm512_unpackhi_epi64(t, u));
    }
    s
}

/// # Safety
///
/// AVX-512 VNNI/F/BW/VL; `p` passed `Gemm::check` for `out` and `ldo`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm_impl(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    let (m, n, k) = (p.m, p.n, p.k);
    let a0 = p.a.as_ptr() as *const u8;
    let w0 = p.w.as_ptr();
    let o = OutV::new(p.q);
    let mut n0 = 0;
    while n0 < n {
        let nr = (n - n0).min(16);
        let mut rows = [w0; 16];
        let mut chq = [ChannelRequant {
            mult: 0,
            shift: 31,
            bias: 0,
        }; 16];
        for j in 0..16 {
            rows[j] = w0.add((n0 + j.min(nr - 1)) * p.ldw);
            if j < nr {
                chq[j] = p.rq[n0 + j];
                // x·w = (x + 128)·w − 128·w
                chq[j].bias = chq[j]
                    .bias
                    .wrapping_sub(row_sum(rows[j], k).wrapping_mul(128));
            }
        }
        let r = Rq16::new(&chq);
        let smask: __mmask16 = ((1u32 << nr) - 1) as u16;
        let mut m0 = 0;
        while m0 < m {
            let mr = if m - m0 >= MR {
                MR
            } else if m - m0 >= 3 {
                3
            } else {
                1
            };
            let mut sums = [_mm512_setzero_si512(); MR];
            let mut ap = [a0; MR];
            for i in 0..mr {
                ap[i] = a0.add((m0 + i) * p.lda);
            }
            if mr == MR {
                sums = tile::<MR>(&ap, &rows, k);
            } else if mr == 3 {
                let s3 = tile::<3>(&[ap[0], ap[1], ap[2]], &rows, k);
                sums[..3].copy_from_slice(&s3);
            } else {
                sums[0] = tile::<1>(&[ap[0]], &rows, k)[0];
            }
            for i in 0..mr {
                let v = requant16(sums[i], &r, &o);
                _mm_mask_storeu_epi8(out.add((m0 + i) * ldo + n0), smask, v);
            }
            m0 += mr;
        }
        n0 += nr;
    }
}

/// Taps the SIMD depthwise kernel handles (more: scalar).
const DW_MAX_TAPS: usize = 64;
/// Channels per depthwise chunk (weights and parameters prepared per chunk).
const DW_CHUNK: usize = 256;
const DW_BLOCKS: usize = DW_CHUNK / 32;

/// # Safety
///
/// AVX-512 VNNI/F/BW/VL; slices as checked by `check_dwconv`;
/// `1 <= kh·kw <= DW_MAX_TAPS`.
#[target_feature(enable = "avx2,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dw_impl(
    input: *const i8,
    w: *const u8,
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: *mut i8,
) {
    // Constant tap counts unroll the tap loops.
    match g.kh * g.kw {
        9 => dw_body(input, w, g, zp_in, rq, q, out, 9),
        25 => dw_body(input, w, g, zp_in, rq, q, out, 25),
        t => dw_body(input, w, g, zp_in, rq, q, out, t),
    }
}

/// Lane `j` of the `lo` (`hi`) accumulator holds this channel of a block.
#[inline(always)]
fn dw_lane_channel(j: usize, hi: bool) -> usize {
    8 * (j / 4) + j % 4 + if hi { 4 } else { 0 }
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
    let z = _mm512_setzero_si512();
    let o = OutV::new(q);
    let zpv = _mm512_set1_epi16(zp_in as i16);
    // Written for every (pair, block) of a chunk before it is read.
    let mut wt: [MaybeUninit<[__m512i; 2]>; DW_MAX_TAPS / 2 * DW_BLOCKS] =
        [const { MaybeUninit::uninit() }; DW_MAX_TAPS / 2 * DW_BLOCKS];
    let mut rqs: [MaybeUninit<[Rq16; 2]>; DW_BLOCKS] = [const { MaybeUninit::uninit() }; DW_BLOCKS];
    let mut toff = [0isize; DW_MAX_TAPS];
    let mut offs = [0isize; DW_MAX_TAPS];
    for t in 0..taps {
        toff[t] = (((t / g.kw) * g.iw + t % g.kw) * c) as isize;
    }
    let mut c0 = 0;
    while c0 < c {
        let cc = (c - c0).min(DW_CHUNK);
        let nb = cc.div_ceil(32);
        for b in 0..nb {
            let ch = c0 + 32 * b;
            let mask = lane_mask(c - ch);
            for pi in 0..pairs {
                let w0 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(
                    mask,
                    w.add(2 * pi * c + ch) as *const i8,
                ));
                let w1 = if 2 * pi + 1 < taps {
                    _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(
                        mask,
                        w.add((2 * pi + 1) * c + ch) as *const i8,
                    ))
                } else {
                    z
                };
                wt[pi * nb + b]
                    .write([_mm512_unpacklo_epi16(w0, w1), _mm512_unpackhi_epi16(w0, w1)]);
            }
            let mut lo = [ChannelRequant {
                mult: 0,
                shift: 31,
                bias: 0,
            }; 16];
            let mut hi = lo;
            for j in 0..16 {
                let (cl, chh) = (dw_lane_channel(j, false), dw_lane_channel(j, true));
                if ch + cl < c {
                    lo[j] = rq[ch + cl];
                }
                if ch + chh < c {
                    hi[j] = rq[ch + chh];
                }
            }
            rqs[b].write([Rq16::new(&lo), Rq16::new(&hi)]);
        }
        for oy in 0..g.oh {
            let iy0 = (oy * g.sh) as isize - g.pt as isize;
            let rows_in = iy0 >= 0 && iy0 + g.kh as isize <= g.ih as isize;
            for ox in 0..g.ow {
                let ix0 = (ox * g.sw) as isize - g.pl as isize;
                let interior = rows_in && ix0 >= 0 && ix0 + g.kw as isize <= g.iw as isize;
                let base = (iy0 * g.iw as isize + ix0) * c as isize;
                if !interior {
                    for t in 0..taps {
                        let (iy, ix) = (iy0 + (t / g.kw) as isize, ix0 + (t % g.kw) as isize);
                        offs[t] = if iy < 0 || ix < 0 || iy >= g.ih as isize || ix >= g.iw as isize
                        {
                            -1
                        } else {
                            base + toff[t]
                        };
                    }
                }
                let dst = out.add((oy * g.ow + ox) * c);
                for b in 0..nb {
                    let ch = c0 + 32 * b;
                    let mask = lane_mask(c - ch);
                    let src = input.add(ch);
                    let (mut al, mut ah) = (z, z);
                    for pi in 0..pairs {
                        let (t0, t1) = (2 * pi, 2 * pi + 1);
                        let (x0, x1);
                        if interior {
                            x0 = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(
                                mask,
                                src.offset(base + toff[t0]),
                            ));
                            x1 = if t1 < taps {
                                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(
                                    mask,
                                    src.offset(base + toff[t1]),
                                ))
                            } else {
                                z
                            };
                        } else {
                            x0 = if offs[t0] < 0 {
                                zpv
                            } else {
                                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(
                                    mask,
                                    src.offset(offs[t0]),
                                ))
                            };
                            x1 = if t1 >= taps {
                                z
                            } else if offs[t1] < 0 {
                                zpv
                            } else {
                                _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(
                                    mask,
                                    src.offset(offs[t1]),
                                ))
                            };
                        }
                        let [wl, wh] = wt[pi * nb + b].assume_init();
                        al = _mm512_dpwssd_epi32(al, _mm512_unpacklo_epi16(x0, x1), wl);
                        ah = _mm512_dpwssd_epi32(ah, _mm512_unpackhi_epi16(x0, x1), wh);
                    }
                    let [rl, rh] = rqs[b].assume_init_ref();
                    let l = requant16(al, rl, &o);
                    let h = requant16(ah, rh, &o);
                    let v = _mm256_set_m128i(_mm_unpackhi_epi32(l, h), _mm_unpacklo_epi32(l, h));
                    _mm256_mask_storeu_epi8(dst.add(ch), mask, v);
                }
            }
        }
        c0 += cc;
    }
}

/// Mask of the first `min(n, 32)` lanes.
#[inline(always)]
fn lane_mask(n: usize) -> __mmask32 {
    if n >= 32 {
        !0
    } else {
        (1u32 << n) - 1
    }
}
