//! The dot-product-layout GEMM: tiles of 4 pixels × 4 output channels,
//! for NEON and for dotprod shapes the packed GEMM does not take.

#![allow(unsafe_code)]
// Fixed-size register tiles read best as indexed loops.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;
use core::ptr;

use crate::kernels::gemm::Gemm;
use crate::quant::ChannelRequant;

use super::dot::{Mac, Sdot, Smull, SmullSmlal};
use super::gemm_packed::{gemm_packed, PK_BYTES, PK_MIN_PIXELS, PK_N};
use super::requant::{load_n, pack8, requant4, short_requant, OutV, Rq4};

pub(super) const MR: usize = 4;

/// `n` (< 16) bytes zero-extended to 16 (8 bytes: one `ldr d`).
///
/// # Safety
///
/// NEON; `src..src+n` readable.
#[inline(always)]
pub(super) unsafe fn load_tail(src: *const i8, n: usize) -> int8x16_t {
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
pub(super) unsafe fn tile<M: Mac, const R: usize, const PLAIN: bool>(
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
pub(super) unsafe fn gemm_neon(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    gemm_body::<SmullSmlal, Smull>(p, out, ldo)
}

/// Whether any of the 4 rows holds −128 in its first `k` bytes.
///
/// # Safety
///
/// NEON; `k` bytes readable at every row.
#[inline(always)]
pub(super) unsafe fn has_min(rows: &[*const i8; 4], k: usize) -> bool {
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
pub(super) unsafe fn gemm_dotprod(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    if p.m < PK_MIN_PIXELS || p.k % 4 != 0 || p.k * PK_N > PK_BYTES {
        gemm_body::<Sdot, Sdot>(p, out, ldo)
    } else {
        gemm_packed(p, out, ldo)
    }
}

/// `F` is used for weight blocks without −128, `M` for the others.
///
/// # Safety
///
/// As [`gemm_neon`], and the CPU runs `F` and `M`.
#[inline(always)]
pub(super) unsafe fn gemm_body<F: Mac, M: Mac>(p: &Gemm<'_>, out: *mut i8, ldo: usize) {
    let (n, k) = (p.n, p.k);
    let w0 = p.w.as_ptr() as *const i8;
    let mut n0 = 0;
    while n0 < n {
        let nr = (n - n0).min(4);
        let mut rows = [w0; 4];
        let mut chq = [ChannelRequant {
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
pub(super) unsafe fn gemm_cols<M: Mac, const SHORT: bool, const PLAIN: bool>(
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
