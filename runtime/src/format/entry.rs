//! Task entries: the unit both a patch body and the backbone's base task are
//! made of.
//!
//! An entry is an 8-byte header followed by its payload, padded with zeros to
//! a multiple of 4 bytes:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | kind ([`EntryKind`]) |
//! | 1 | class ([`EntryClass`], what the exporter found; informative) |
//! | 2..4 | target op (`0xffff` for whole-model entries) |
//! | 4..8 | payload length in bytes (without padding) |
//!
//! [`EntryIter`] walks a section that has been validated
//! (`Backbone::validate_task`); it stops rather than panics if handed bytes
//! that were not.

use super::{align_up, in_bounds, rd_u16, wr_u16, wr_u32};

/// Entry header length.
pub const HEADER_LEN: usize = 8;

/// What an entry holds.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum EntryKind {
    /// Per-tensor activation quantization for every tensor: `n_tensors` x
    /// (`scale: f32`, `zp: i8`, 3 zero bytes).
    TensorQuant = 1,
    /// Per-output-channel weight-scale codes (`u16` each, see `quant`).
    ScaleCodes = 2,
    /// Per-output-channel bias codes (binary16 each).
    BiasCodes = 3,
    /// The op's whole int8 weight tensor, in the kernel layout.
    Weights = 4,
    /// Replacement weight rows for some output channels: `count: u16`,
    /// 2 zero bytes, `count` ascending channel indices (`u16`, padded to 4),
    /// then `count` rows of `row_len` bytes.
    Rows = 5,
    /// A lookup table: 256 bytes (index = input byte as `u8`, i.e.
    /// `q as u8`) for every channel, or per-channel tables ([`Luts`]).
    Lut = 6,
    /// The classifier's class count (`u16`, 2 zero bytes); target = head op.
    Classes = 7,
    /// Class labels, UTF-8, separated by `\n`.
    Labels = 8,
    /// A head network replacing the backbone's ops from a cut on
    /// (whole-model; [`super::head`]).
    Head = 10,
}

impl EntryKind {
    /// From the header byte.
    pub fn from_u8(b: u8) -> Option<EntryKind> {
        Some(match b {
            1 => EntryKind::TensorQuant,
            2 => EntryKind::ScaleCodes,
            3 => EntryKind::BiasCodes,
            4 => EntryKind::Weights,
            5 => EntryKind::Rows,
            6 => EntryKind::Lut,
            7 => EntryKind::Classes,
            8 => EntryKind::Labels,
            10 => EntryKind::Head,
            _ => return None,
        })
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::TensorQuant => "tensor-quant",
            EntryKind::ScaleCodes => "scale-codes",
            EntryKind::BiasCodes => "bias-codes",
            EntryKind::Weights => "weights",
            EntryKind::Rows => "rows",
            EntryKind::Lut => "lut",
            EntryKind::Classes => "classes",
            EntryKind::Labels => "labels",
            EntryKind::Head => "head-network",
        }
    }
}

/// Why the exporter emitted an entry ("K for the Price of 1" patch kinds).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum EntryClass {
    /// Labels and other metadata.
    Meta = 0,
    /// Activation ranges (per-tensor quantization, lookup tables).
    Activations = 1,
    /// Batch-norm scale and bias (per-channel codes, rounding-fixup rows).
    ScaleBias = 2,
    /// Depthwise kernels.
    Depthwise = 3,
    /// The classifier.
    Head = 4,
    /// Anything else, carried as a whole-tensor override by policy.
    Other = 5,
}

impl EntryClass {
    /// Every class, in report order (patch kinds first).
    pub const ALL: [EntryClass; 6] = [
        EntryClass::ScaleBias,
        EntryClass::Depthwise,
        EntryClass::Head,
        EntryClass::Activations,
        EntryClass::Other,
        EntryClass::Meta,
    ];
    /// From the header byte.
    pub fn from_u8(b: u8) -> Option<EntryClass> {
        Some(match b {
            0 => EntryClass::Meta,
            1 => EntryClass::Activations,
            2 => EntryClass::ScaleBias,
            3 => EntryClass::Depthwise,
            4 => EntryClass::Head,
            5 => EntryClass::Other,
            _ => return None,
        })
    }
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            EntryClass::Meta => "meta",
            EntryClass::Activations => "activation ranges",
            EntryClass::ScaleBias => "S/B",
            EntryClass::Depthwise => "DW",
            EntryClass::Head => "head",
            EntryClass::Other => "other",
        }
    }
}

/// One entry, borrowed from its blob.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    /// Kind.
    pub kind: EntryKind,
    /// Class.
    pub class: EntryClass,
    /// Target op (`0xffff` for whole-model entries).
    pub op: u16,
    /// Payload, without padding.
    pub payload: &'a [u8],
}

/// Iterator over an entry section.
#[derive(Clone, Debug)]
pub struct EntryIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> EntryIter<'a> {
    /// Walks `count` entries in `bytes`.
    pub fn new(bytes: &'a [u8], count: u32) -> Self {
        EntryIter {
            bytes,
            pos: 0,
            left: count,
        }
    }
}

/// Result of reading one raw entry header.
pub(crate) struct RawEntry<'a> {
    pub kind: u8,
    pub class: u8,
    pub op: u16,
    pub payload: &'a [u8],
    pub next: usize,
}

pub(crate) fn read_raw(bytes: &[u8], pos: usize) -> Option<RawEntry<'_>> {
    if !in_bounds(pos, HEADER_LEN, bytes.len()) {
        return None;
    }
    let [kind, class, o0, o1, l0, l1, l2, l3] = super::rd::<HEADER_LEN>(bytes, pos);
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    let start = pos + HEADER_LEN;
    let payload = bytes.get(start..start.checked_add(len)?)?;
    let next = start.checked_add(align_up(len, 4))?;
    Some(RawEntry {
        kind,
        class,
        op: u16::from_le_bytes([o0, o1]),
        payload,
        next: next.min(bytes.len()),
    })
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Entry<'a>;
    fn next(&mut self) -> Option<Entry<'a>> {
        if self.left == 0 {
            return None;
        }
        let raw = read_raw(self.bytes, self.pos)?;
        self.left -= 1;
        self.pos = raw.next;
        Some(Entry {
            kind: EntryKind::from_u8(raw.kind)?,
            class: EntryClass::from_u8(raw.class)?,
            op: raw.op,
            payload: raw.payload,
        })
    }
}

/// Bytes an entry with `payload_len` payload bytes takes (header + padding).
pub const fn entry_len(payload_len: usize) -> usize {
    HEADER_LEN + align_up(payload_len, 4)
}

/// Writes one entry at the start of `out` (which must hold
/// `entry_len(payload.len())` bytes) and returns the bytes written.
///
/// # Panics
/// If `out` is too short.
#[allow(clippy::indexing_slicing)]
pub fn emit_entry(
    out: &mut [u8],
    kind: EntryKind,
    class: EntryClass,
    op: u16,
    payload: &[u8],
) -> usize {
    let n = entry_len(payload.len());
    let out = &mut out[..n];
    out.fill(0);
    out[0] = kind as u8;
    out[1] = class as u8;
    wr_u16(out, 2, op);
    wr_u32(out, 4, payload.len() as u32);
    out[HEADER_LEN..HEADER_LEN + payload.len()].copy_from_slice(payload);
    n
}

/// `Rows` payload length for `count` rows of `row_len` bytes.
pub const fn rows_payload_len(count: usize, row_len: usize) -> usize {
    4 + align_up(2 * count, 4) + count * row_len
}

/// View of a validated `Rows` payload.
#[derive(Clone, Copy, Debug)]
pub struct Rows<'a> {
    payload: &'a [u8],
    count: usize,
    row_len: usize,
}

impl<'a> Rows<'a> {
    /// Checks a `Rows` payload for `row_len`-byte rows; `None` if malformed.
    pub fn new_checked(payload: &'a [u8], row_len: usize) -> Option<Self> {
        if payload.len() < 4 {
            return None;
        }
        let count = rd_u16(payload, 0) as usize;
        if payload.len() != rows_payload_len(count, row_len) {
            return None;
        }
        Some(Rows {
            payload,
            count,
            row_len,
        })
    }
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.count
    }
    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Channel of row `i`.
    pub fn channel(&self, i: usize) -> u16 {
        rd_u16(self.payload, 4 + 2 * i)
    }
    /// Weights of row `i` (`i < len()`, else empty).
    pub fn row(&self, i: usize) -> &'a [u8] {
        let start = 4 + align_up(2 * self.count, 4) + i.saturating_mul(self.row_len);
        self.payload
            .get(start..start.saturating_add(self.row_len))
            .unwrap_or(&[])
    }
    /// Row for `channel`, if replaced.
    pub fn find(&self, channel: u16) -> Option<&'a [u8]> {
        (0..self.count)
            .find(|&i| self.channel(i) == channel)
            .map(|i| self.row(i))
    }
}

/// Writes a `Rows` payload (`out.len() == rows_payload_len(..)`).
///
/// # Panics
/// If `out` or `rows` is too short.
#[allow(clippy::indexing_slicing)]
pub fn emit_rows(out: &mut [u8], channels: &[u16], rows: &[u8], row_len: usize) {
    out.fill(0);
    wr_u16(out, 0, channels.len() as u16);
    for (i, &c) in channels.iter().enumerate() {
        wr_u16(out, 4 + 2 * i, c);
    }
    let start = 4 + align_up(2 * channels.len(), 4);
    out[start..start + channels.len() * row_len].copy_from_slice(&rows[..channels.len() * row_len]);
}

/// `Lut` payload length for per-channel tables: `count` tables shared by
/// `channels` channels.
pub const fn luts_payload_len(count: usize, channels: usize) -> usize {
    4 + align_up(channels, 4) + 256 * count
}

/// View of a validated `Lut` payload: either one 256-byte table for every
/// channel, or per-channel tables: `count: u16` (1..=255), 2 zero bytes,
/// one table index per channel (`u8`, `< count`) zero-padded to 4, then
/// `count` tables of 256 bytes; element `q` of channel `c` reads table
/// `index[c]` at `q as u8`.
#[derive(Clone, Copy, Debug)]
pub struct Luts<'a> {
    /// per-channel table index (empty: one table for all)
    index: &'a [u8],
    tables: &'a [u8],
}

impl<'a> Luts<'a> {
    /// Checks a `Lut` payload for a tensor of `channels` channels; `None`
    /// if malformed (wrong length, no tables, an index past the tables).
    pub fn new_checked(payload: &'a [u8], channels: usize) -> Option<Self> {
        if payload.len() == 256 {
            return Some(Luts {
                index: &[],
                tables: payload,
            });
        }
        if payload.len() < 4 || channels == 0 {
            return None;
        }
        let count = rd_u16(payload, 0) as usize;
        if count == 0 || count > 255 || payload.len() != luts_payload_len(count, channels) {
            return None;
        }
        let index = payload.get(4..4 + channels)?;
        if index.iter().any(|&t| t as usize >= count) {
            return None;
        }
        Some(Luts {
            index,
            tables: payload.get(4 + align_up(channels, 4)..)?,
        })
    }
    /// One table for every channel (not per-channel).
    pub fn is_shared(&self) -> bool {
        self.index.is_empty()
    }
    /// Per-channel table indices (empty when [`Luts::is_shared`]).
    pub fn index(&self) -> &'a [u8] {
        self.index
    }
    /// The tables, 256 bytes each.
    pub fn tables(&self) -> &'a [u8] {
        self.tables
    }
}

/// Writes a per-channel `Lut` payload (`out.len() ==
/// luts_payload_len(tables.len() / 256, index.len())`).
///
/// # Panics
/// If `out` is too short.
#[allow(clippy::indexing_slicing)]
pub fn emit_luts(out: &mut [u8], index: &[u8], tables: &[u8]) {
    out.fill(0);
    wr_u16(out, 0, (tables.len() / 256) as u16);
    out[4..4 + index.len()].copy_from_slice(index);
    let start = 4 + align_up(index.len(), 4);
    out[start..start + tables.len()].copy_from_slice(tables);
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::kernels::scalar;

    /// Per-channel tables: emitted, parsed back, run over two pixels of
    /// three channels; a bad index, a zero count or a wrong length is
    /// refused.
    #[test]
    fn per_channel_tables_round_trip_and_reject_malformed_payloads() {
        let index = [1u8, 0, 1];
        let mut tables = [0u8; 512];
        for q in 0..256 {
            tables[q] = q as u8; // identity
            tables[256 + q] = (q as u8).wrapping_neg(); // negation
        }
        let mut p = [0u8; luts_payload_len(2, 3)];
        emit_luts(&mut p, &index, &tables);
        let l = Luts::new_checked(&p, 3).unwrap();
        assert!(!l.is_shared());
        assert_eq!(l.index(), &index);
        let a = [1i8, 2, 3, -4, 5, -6];
        let mut out = [0i8; 6];
        scalar::lut_channels(&a, l.index(), l.tables(), &mut out);
        assert_eq!(out, [-1, 2, -3, 4, 5, 6]);
        assert!(Luts::new_checked(&tables[..256], 3).unwrap().is_shared());
        assert!(Luts::new_checked(&p, 5).is_none(), "channel count differs");
        let mut bad = p;
        bad[4 + 2] = 2; // index past the tables
        assert!(Luts::new_checked(&bad, 3).is_none());
        let mut bad = p;
        bad[0] = 0; // no tables
        assert!(Luts::new_checked(&bad, 3).is_none());
        assert!(Luts::new_checked(&p[..p.len() - 1], 3).is_none());
    }
}
