//! The two wire formats: backbone (`.gnb`) and patch (`.gnp`).
//!
//! Both are read through checked views: [`Backbone`](backbone::Backbone) and
//! [`Patch`](patch::Patch) borrow the blob (`&'a [u8]`: flash, an mmap or a
//! caller's buffer, which `Patch::read` can fill from an `embedded_io`
//! stream) and are made only by `parse` (or `parse_verified`), which
//! validates every offset, length and index once. That is the only
//! constructor: there is no unchecked one, and no smoltcp-style view generic
//! over `T: AsRef<[u8]>` with `new_unchecked` / `check_len` (a borrowed
//! slice has served every caller). Header field offsets are `const` ranges
//! in each blob's `mod field`, each header a validated `HeaderRepr` with
//! `emit`, and entry payloads have small checked views of their own
//! (`entry::Rows::new_checked`, `entry::Luts::new_checked`). After a
//! successful parse no accessor panics: every slice taken later was
//! bounds-checked at parse time.
//! The writers (`emit`) live next to the readers so the format has exactly one
//! definition. Normative spec: `runtime/FORMAT.md`.
//!
//! All integers are little-endian. Offsets are from the start of the blob.
//!
//! # No panics on any input
//!
//! The parsers take bytes from flash, a file or a radio link, so no input
//! may make them (or a later accessor) panic. Clippy enforces it for this
//! module tree: `indexing_slicing`, `unwrap_used`, `expect_used` and
//! `panic` are denied. Every read goes through `get` (a missing range is a
//! typed error, or an empty slice / zero field where an earlier check has
//! already ruled it out), field reads through `rd_*`, which read zero
//! rather than panic, and fixed-size records through `&[u8; N]` arrays with
//! constant indices. The allowed exceptions are narrow: the writers
//! (`emit`, `seal`, `wr_*`), which fill buffers their caller sized by the
//! layout rule and say so under `# Panics`; and the tests. (The CRC
//! tables, indexed by a byte masked to `0..256`, live in [`crate::checksum`]
//! under the same lints.)
//!
//! Arithmetic on header values cannot overflow either: lengths and offsets
//! are `u32`, section offsets follow from them by [`backbone::Layout::new`],
//! which saturates (a sum past `usize` on a 32-bit target gives an offset
//! no blob has, and is refused), range ends are formed with `checked_add` /
//! `saturating_add` or after `in_bounds`, and sizes that can pass 2^32
//! before they are validated (`c·h·w`, all tensors side by side) are
//! computed in `u64`. Declared sizes a loader allocates from (arena,
//! parameter table) are bounded by the graph, so a hostile header cannot
//! ask for gigabytes.

#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

pub mod backbone;
pub mod entry;
pub mod head;
pub mod patch;
pub mod signature;

pub use crate::checksum::crc32_table_update;
pub use entry::{EntryClass, EntryKind};

use crate::checksum;

/// Backbone magic.
pub const BACKBONE_MAGIC: [u8; 4] = *b"GNBB";
/// Patch magic.
pub const PATCH_MAGIC: [u8; 4] = *b"GNPT";
/// Format version this build reads and writes.
pub const VERSION: u16 = 1;
/// Alignment of the backbone's weight section (bytes), so SIMD kernels can
/// read weights in place from flash or an mmap.
pub const WEIGHT_ALIGN: usize = 64;
/// Alignment of every activation tensor in the arena (bytes).
pub const ARENA_ALIGN: usize = 16;
/// "No tensor" marker in op records.
pub const NONE: u16 = 0xffff;

/// Op kinds (op record byte 0).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum OpKind {
    /// Convolution with groups 1 or grouped (not depthwise), any kernel,
    /// stride and padding; also fully connected (kernel = whole input map).
    /// Weights `[cout][kh][kw][cin/groups]`.
    Conv = 1,
    /// Depthwise convolution (groups = cin = cout). Weights `[kh][kw][c]`.
    DwConv = 2,
    /// `a + b`, same shape.
    Add = 3,
    /// `a * b`, same shape or `b` is `(c,1,1)` broadcast.
    Mul = 4,
    /// Elementwise 256-entry lookup table.
    Lut = 5,
    /// Global average pooling to `(c,1,1)`.
    GlobalAvgPool = 6,
    /// k x k average pooling.
    AvgPool = 7,
    /// k x k max pooling (output quantization equals input's).
    MaxPool = 8,
    /// Channel concat of two inputs.
    Concat = 9,
}

impl OpKind {
    /// From the record byte.
    pub fn from_u8(b: u8) -> Option<OpKind> {
        Some(match b {
            1 => OpKind::Conv,
            2 => OpKind::DwConv,
            3 => OpKind::Add,
            4 => OpKind::Mul,
            5 => OpKind::Lut,
            6 => OpKind::GlobalAvgPool,
            7 => OpKind::AvgPool,
            8 => OpKind::MaxPool,
            9 => OpKind::Concat,
            _ => return None,
        })
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Conv => "conv",
            OpKind::DwConv => "dwconv",
            OpKind::Add => "add",
            OpKind::Mul => "mul",
            OpKind::Lut => "lut",
            OpKind::GlobalAvgPool => "gap",
            OpKind::AvgPool => "avgpool",
            OpKind::MaxPool => "maxpool",
            OpKind::Concat => "concat",
        }
    }
    /// Conv-like ops carry weights and per-channel codes.
    pub fn has_weights(self) -> bool {
        matches!(self, OpKind::Conv | OpKind::DwConv)
    }
}

/// Fused activation (op record byte 1): the output is clamped to the int8
/// images of `[act_lo, act_hi]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Act {
    /// No clamp beyond int8.
    None = 0,
    /// Clamp to `[act_lo, act_hi]` (ReLU: `[0, inf]`, ReLU6: `[0, 6]`).
    Clamp = 1,
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), streaming form:
/// the CPU's CRC kernel ([`crate::kernels::crc32::fold`]) where one applies,
/// the tables of [`crate::checksum`] (the definition) for the rest.
#[derive(Clone, Copy, Debug)]
pub struct Crc32(u32);

impl Crc32 {
    /// Empty state.
    pub const fn new() -> Self {
        Crc32(0xffff_ffff)
    }
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        // A CRC kernel (carry-less multiply, CRC instructions) takes what it
        // can; the tables define the result and do the rest.
        let (c, done) = crate::kernels::crc32::fold(self.0, data);
        self.0 = checksum::crc32_table_update(c, data.get(done..).unwrap_or(&[]));
    }
    /// Final value.
    pub fn finish(self) -> u32 {
        !self.0
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

/// CRC-32 of a whole blob whose checksum field is at `12..16`, read as zero.
/// (A slice too short to hold the field, which no parser passes, gives the
/// CRC of its first 12 bytes and four zeros.)
pub fn blob_checksum(blob: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(blob.get(..12).unwrap_or(blob));
    c.update(&[0; 4]);
    c.update(blob.get(16..).unwrap_or(&[]));
    c.finish()
}

/// FNV-1a 64: the backbone fingerprint, over everything after the header.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

// Little-endian field access. Readers get offsets that the parse step has
// already proven to be in bounds; should a check ever miss
// one, the field reads as zero (which later checks refuse) instead of
// panicking. Writers fill buffers their caller sized by the layout rule.
#[inline]
pub(crate) fn rd<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b.get(at..at.saturating_add(N))
        .and_then(|s| s.try_into().ok())
        .unwrap_or([0; N])
}
#[inline]
pub(crate) fn rd_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(rd(b, at))
}
#[inline]
pub(crate) fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(rd(b, at))
}
#[inline]
pub(crate) fn rd_i32(b: &[u8], at: usize) -> i32 {
    rd_u32(b, at) as i32
}
#[inline]
pub(crate) fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(rd(b, at))
}
#[inline]
pub(crate) fn rd_f32(b: &[u8], at: usize) -> f32 {
    f32::from_bits(rd_u32(b, at))
}
/// # Panics
/// If `b` is shorter than `at + N` (a writer's sizing bug).
#[inline]
#[allow(clippy::indexing_slicing)]
fn wr<const N: usize>(b: &mut [u8], at: usize, v: [u8; N]) {
    b[at..at + N].copy_from_slice(&v);
}
#[inline]
pub(crate) fn wr_u16(b: &mut [u8], at: usize, v: u16) {
    wr(b, at, v.to_le_bytes());
}
#[inline]
pub(crate) fn wr_u32(b: &mut [u8], at: usize, v: u32) {
    wr(b, at, v.to_le_bytes());
}
#[inline]
pub(crate) fn wr_u64(b: &mut [u8], at: usize, v: u64) {
    wr(b, at, v.to_le_bytes());
}

/// Rounds `n` up to a multiple of `a` (a power of two); saturates to the
/// largest multiple of `a` instead of overflowing.
pub const fn align_up(n: usize, a: usize) -> usize {
    n.saturating_add(a - 1) & !(a - 1)
}

/// `[lo, hi)` lies inside `len` bytes.
pub(crate) fn in_bounds(off: usize, n: usize, len: usize) -> bool {
    off.checked_add(n).is_some_and(|end| end <= len)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_vector() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.finish(), 0xCBF4_3926);
        // Slicing and streaming agree with the bytewise definition.
        let data: [u8; 77] = core::array::from_fn(|i| (i * 37 + 11) as u8);
        let mut bytewise = 0xffff_ffffu32;
        for &b in &data {
            bytewise =
                checksum::CRC_TABLES[0][((bytewise ^ b as u32) & 0xff) as usize] ^ (bytewise >> 8);
        }
        for split in [0, 1, 7, 8, 9, 40, 77] {
            let mut c = Crc32::new();
            c.update(&data[..split]);
            c.update(&data[split..]);
            assert_eq!(c.finish(), !bytewise);
        }
        // Over the CRC kernel's whole blocks and a tail: the same register.
        let data: [u8; 1200] = core::array::from_fn(|i| ((i * 131 + 7) ^ (i >> 3)) as u8);
        let mut c = Crc32::new();
        c.update(&data);
        assert_eq!(c.finish(), !crc32_table_update(0xffff_ffff, &data));
    }

    #[test]
    fn fnv_known_vector() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }
}
