//! CRC-32 kernels: the blobs' checksum (`FORMAT.md`, "Integrity") with the
//! CPU's carry-less multiply or CRC instructions.
//!
//! The algorithm is the normative one — IEEE 802.3, reflected, polynomial
//! `0xEDB88320` — and the slicing-by-8 tables of [`crate::checksum`] define
//! it; a kernel only computes the same register faster. Each kernel takes
//! the running CRC register (before the final inversion) and a prefix of the
//! data, and returns the register after it:
//!
//! - `x86_64_pclmul_crc32_fold4` (PCLMULQDQ + SSE4.1): folds four 128-bit
//!   lanes at a time by `x^512` and `x^544` modulo the polynomial, then one
//!   lane, then a Barrett reduction to 32 bits (Intel, "Fast CRC Computation
//!   for Generic Polynomials Using PCLMULQDQ", the bit-reflected variant; the
//!   constants are those of zlib, Linux and `crc32fast`). Whole 16-byte
//!   blocks, at least 64 bytes.
//! - `aarch64_crc32_x8` (the `crc` extension: Cortex-A72, A76, A78AE):
//!   `crc32x` over whole 8-byte words.
//!
//! [`fold`] picks the kernel (CPU feature tokens, see [`super::cpu`]) and
//! says how much it consumed; the table finishes the tail. Why it matters:
//! `Patch::parse` checks ~90 KB for an S/B+logits patch of MobileNetV2, and
//! the tables run at about 1 byte per ns.
#![allow(unsafe_code)]

/// Runs the best CRC kernel this CPU has over a prefix of `data`; returns
/// the register after that prefix and the prefix's length (0 when no kernel
/// applies: the caller's table does everything).
#[inline]
pub fn fold(reg: u32, data: &[u8]) -> (u32, usize) {
    #[cfg(target_arch = "x86_64")]
    if data.len() >= 64 {
        if let Some(t) = super::cpu::Pclmul::try_new() {
            let n = data.len() & !15;
            return (x86_64_pclmul_crc32_fold4(t, reg, &data[..n]), n);
        }
    }
    #[cfg(target_arch = "aarch64")]
    if data.len() >= 8 {
        if let Some(t) = super::cpu::Crc::try_new() {
            let n = data.len() & !7;
            return (aarch64_crc32_x8(t, reg, &data[..n]), n);
        }
    }
    let _ = data; // no kernel on this target
    (reg, 0)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    // Fold constants (bit-reflected, each `x^k mod P` shifted one bit):
    // K1/K2 fold by 512/576 bits (four lanes), K3/K4 by 128/192 bits (one
    // lane), K5 reduces 96 -> 64 bits; P_X = P(x), U_PRIME = floor(x^64/P).
    const K1: i64 = 0x1_5444_2bd4;
    const K2: i64 = 0x1_c6e4_1596;
    const K3: i64 = 0x1_7519_97d0;
    const K4: i64 = 0x0_ccaa_009e;
    const K5: i64 = 0x1_63cd_6124;
    const P_X: i64 = 0x1_db71_0641;
    const U_PRIME: i64 = 0x1_f701_1641;

    /// # Safety
    ///
    /// The CPU must run PCLMULQDQ and SSE4.1; `data.len()` is a multiple of
    /// 16 and at least 64.
    #[target_feature(enable = "pclmulqdq", enable = "sse2", enable = "sse4.1")]
    pub(super) unsafe fn fold4(reg: u32, data: &[u8]) -> u32 {
        let n = data.len() / 16;
        // SAFETY (every `load`): blocks `0..n` lie inside `data`.
        let mut x3 = _mm_xor_si128(unsafe { load(data, 0) }, _mm_cvtsi32_si128(reg as i32));
        let mut x2 = unsafe { load(data, 1) };
        let mut x1 = unsafe { load(data, 2) };
        let mut x0 = unsafe { load(data, 3) };
        let mut i = 4;
        let k1k2 = _mm_set_epi64x(K2, K1);
        while i + 4 <= n {
            x3 = reduce128(x3, unsafe { load(data, i) }, k1k2);
            x2 = reduce128(x2, unsafe { load(data, i + 1) }, k1k2);
            x1 = reduce128(x1, unsafe { load(data, i + 2) }, k1k2);
            x0 = reduce128(x0, unsafe { load(data, i + 3) }, k1k2);
            i += 4;
        }
        let k3k4 = _mm_set_epi64x(K4, K3);
        let mut x = reduce128(x3, x2, k3k4);
        x = reduce128(x, x1, k3k4);
        x = reduce128(x, x0, k3k4);
        while i < n {
            x = reduce128(x, unsafe { load(data, i) }, k3k4);
            i += 1;
        }
        // 128 -> 64 bits, then Barrett reduction to the 32-bit register.
        let low32 = _mm_set_epi32(0, 0, 0, !0);
        let x = _mm_xor_si128(_mm_clmulepi64_si128(x, k3k4, 0x10), _mm_srli_si128(x, 8));
        let x = _mm_xor_si128(
            _mm_clmulepi64_si128(_mm_and_si128(x, low32), _mm_set_epi64x(0, K5), 0x00),
            _mm_srli_si128(x, 4),
        );
        let pu = _mm_set_epi64x(U_PRIME, P_X);
        let t1 = _mm_clmulepi64_si128(_mm_and_si128(x, low32), pu, 0x10);
        let t2 = _mm_clmulepi64_si128(_mm_and_si128(t1, low32), pu, 0x00);
        _mm_extract_epi32(_mm_xor_si128(x, t2), 1) as u32
    }

    /// Block `i` (16 bytes) of `d`.
    ///
    /// # Safety
    ///
    /// `16 * (i + 1) <= d.len()`.
    #[inline(always)]
    unsafe fn load(d: &[u8], i: usize) -> __m128i {
        debug_assert!(16 * (i + 1) <= d.len());
        // SAFETY: in bounds by the contract; `loadu` needs no alignment.
        unsafe { _mm_loadu_si128(d.as_ptr().add(16 * i) as *const __m128i) }
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq", enable = "sse2")]
    fn reduce128(a: __m128i, b: __m128i, keys: __m128i) -> __m128i {
        let t1 = _mm_clmulepi64_si128(a, keys, 0x00);
        let t2 = _mm_clmulepi64_si128(a, keys, 0x11);
        _mm_xor_si128(_mm_xor_si128(b, t1), t2)
    }
}

/// CRC register after `data` (a multiple of 16 bytes, at least 64).
#[cfg(target_arch = "x86_64")]
fn x86_64_pclmul_crc32_fold4(_: super::cpu::Pclmul, reg: u32, data: &[u8]) -> u32 {
    if data.len() < 64 || !data.len().is_multiple_of(16) {
        return crate::checksum::crc32_table_update(reg, data);
    }
    // SAFETY: the token proves PCLMULQDQ and SSE4.1; the length was checked.
    unsafe { x86::fold4(reg, data) }
}

/// CRC register after `data` (whole 8-byte words; a tail is ignored).
#[cfg(target_arch = "aarch64")]
fn aarch64_crc32_x8(_: super::cpu::Crc, reg: u32, data: &[u8]) -> u32 {
    #[target_feature(enable = "crc")]
    fn words(reg: u32, data: &[u8]) -> u32 {
        let mut c = reg;
        for w in data.chunks_exact(8) {
            let v = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
            c = core::arch::aarch64::__crc32d(c, v);
        }
        c
    }
    // SAFETY: the token proves the `crc` extension.
    unsafe { words(reg, data) }
}

#[cfg(test)]
mod tests {
    use crate::checksum::crc32_table_update;

    /// Every length around the kernels' block sizes, at every alignment,
    /// against the tables.
    #[test]
    fn kernels_match_the_tables() {
        let data: [u8; 1200] = core::array::from_fn(|i| ((i * 131 + 7) ^ (i >> 3)) as u8);
        for start in 0..17 {
            for len in (0..300).chain([511, 512, 513, 1000, 1183]) {
                if start + len > data.len() {
                    continue;
                }
                let d = &data[start..start + len];
                for reg in [0xffff_ffffu32, 0, 0x1234_5678] {
                    let want = crc32_table_update(reg, d);
                    let (r, n) = super::fold(reg, d);
                    assert_eq!(crc32_table_update(r, &d[n..]), want, "{start} {len}");
                }
            }
        }
    }
}
