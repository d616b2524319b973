//! CRC-32 (IEEE 802.3, reflected, polynomial `0xEDB88320`), the blobs'
//! checksum (`FORMAT.md`, "Integrity"): its definition, the slicing-by-8
//! tables. A leaf module: it imports nothing from the crate. The CPU's CRC
//! kernels ([`crate::kernels::crc32`]) compute the same register faster and
//! fall back to these tables; [`crate::format::Crc32`] puts the two
//! together.
//!
//! No input makes it panic: table indices are bytes masked to `0..256`
//! (the same clippy lints as `format/` deny everything else).

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// Slicing-by-8 tables: `CRC_TABLES[0]` is the classic byte table,
/// `CRC_TABLES[k][i]` advances `CRC_TABLES[k-1][i]` by one more zero byte.
// Evaluated at compile time: an index out of bounds fails the build.
#[allow(clippy::indexing_slicing)]
pub(crate) const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
};

/// The CRC-32 register (before the final inversion) after `data`, by the
/// slicing-by-8 tables: the definition every CRC kernel reproduces.
pub fn crc32_table_update(reg: u32, data: &[u8]) -> u32 {
    // Table `k` at the low byte of `x`: the index is below 256 by the mask.
    #[inline(always)]
    #[allow(clippy::indexing_slicing)]
    fn tab(k: usize, x: u32) -> u32 {
        CRC_TABLES[k & 7][(x & 0xff) as usize]
    }
    let mut c = reg;
    let mut chunks = data.chunks_exact(8);
    for b in &mut chunks {
        let w = u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
        let one = w as u32 ^ c;
        let two = (w >> 32) as u32;
        c = tab(7, one)
            ^ tab(6, one >> 8)
            ^ tab(5, one >> 16)
            ^ tab(4, one >> 24)
            ^ tab(3, two)
            ^ tab(2, two >> 8)
            ^ tab(1, two >> 16)
            ^ tab(0, two >> 24);
    }
    for &b in chunks.remainder() {
        c = tab(0, c ^ b as u32) ^ (c >> 8);
    }
    c
}
