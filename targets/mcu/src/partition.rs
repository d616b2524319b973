//! The patch partition: every task patch of a device in one flash region,
//! behind a small table, so patches can be replaced without reflashing the
//! firmware and the backbone.
//!
//! Layout (all integers little-endian, offsets from the partition start):
//!
//! ```text
//! header (16) | count entries (40 each) | zero pad to 64 | patch blobs, each at a multiple of 64
//! ```
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `GNPP` |
//! | 4..6 | version = 1 |
//! | 6..8 | entry count (u16) |
//! | 8..12 | image length: table and blobs (u32); the rest of the region is erased flash |
//! | 12..16 | CRC-32 of the table (header and entries), this field read as zero; the same CRC as the blobs (`FORMAT.md`) |
//!
//! Entry: `name` (32 bytes, the task name in UTF-8, zero padded; it must
//! equal the name inside the patch), `offset` (u32, a multiple of 64),
//! `length` (u32). Blobs lie inside the image and do not overlap the table.
//!
//! Names are 32 bytes rather than 16 because real task names are longer
//! (`fashion-binary-logits` has 21); a longer name is refused at build time.
//!
//! [`PatchTable::parse`] validates the header, the CRC and every entry's
//! bounds once; afterwards no accessor panics. The patch blobs themselves are
//! checked by `graftnet::Patch::parse` (their own CRC and framing) when used.
//!
//! This module is shared by the firmware (reader) and `build.rs` (writer), so
//! the layout has one definition.

use core::fmt;

/// Partition magic.
pub const MAGIC: [u8; 4] = *b"GNPP";
/// Layout version.
pub const VERSION: u16 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 16;
/// Bytes per table entry.
pub const ENTRY_LEN: usize = 40;
/// Bytes of an entry's name field.
pub const NAME_LEN: usize = 32;
/// Alignment of every blob (and of the table's end).
pub const BLOB_ALIGN: usize = 64;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: Range<usize> = 4..6;
    pub const COUNT: Range<usize> = 6..8;
    pub const IMAGE_LEN: Range<usize> = 8..12;
    pub const CHECKSUM: Range<usize> = 12..16;
    pub const NAME: Range<usize> = 0..32;
    pub const OFFSET: Range<usize> = 32..36;
    pub const LENGTH: Range<usize> = 36..40;
}

/// What is wrong with a partition.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionError {
    /// The region or image is shorter than its table says.
    Truncated {
        /// bytes needed
        need: u32,
        /// bytes there
        have: u32,
    },
    /// No `GNPP` magic (e.g. an erased region).
    BadMagic,
    /// A layout version this firmware does not read.
    UnsupportedVersion(u16),
    /// The table's CRC does not match.
    ChecksumMismatch {
        /// stored in the header
        stored: u32,
        /// computed
        computed: u32,
    },
    /// Entry `index` has a bad name, offset or length.
    BadEntry {
        /// entry index
        index: u16,
    },
    /// (writer) a task name longer than [`NAME_LEN`] bytes
    NameTooLong,
    /// (writer) the output buffer or the count field is too small
    TooLarge,
}

impl fmt::Display for PartitionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartitionError::Truncated { need, have } => write!(
                f,
                "patch partition truncated: need {need} bytes, have {have}"
            ),
            PartitionError::BadMagic => f.write_str("no patch partition (magic is not GNPP)"),
            PartitionError::UnsupportedVersion(v) => write!(
                f,
                "patch partition version {v} (this firmware reads {VERSION})"
            ),
            PartitionError::ChecksumMismatch { stored, computed } => {
                write!(
                    f,
                    "patch partition table CRC {stored:08x}, computed {computed:08x}"
                )
            }
            PartitionError::BadEntry { index } => {
                write!(f, "patch partition entry {index} is malformed")
            }
            PartitionError::NameTooLong => write!(f, "task name longer than {NAME_LEN} bytes"),
            PartitionError::TooLarge => f.write_str("patch partition does not fit"),
        }
    }
}

impl core::error::Error for PartitionError {}

fn rd_u16(b: &[u8], r: core::ops::Range<usize>) -> u16 {
    u16::from_le_bytes([b[r.start], b[r.start + 1]])
}

fn rd_u32(b: &[u8], r: core::ops::Range<usize>) -> u32 {
    u32::from_le_bytes([b[r.start], b[r.start + 1], b[r.start + 2], b[r.start + 3]])
}

const fn align_up(n: usize) -> usize {
    n.div_ceil(BLOB_ALIGN) * BLOB_ALIGN
}

/// Bytes of the table (header and `count` entries), padded to [`BLOB_ALIGN`].
pub const fn table_len(count: usize) -> usize {
    align_up(HEADER_LEN + count * ENTRY_LEN)
}

/// A validated partition table over the partition's bytes.
#[derive(Clone, Copy, Debug)]
pub struct PatchTable<'a> {
    image: &'a [u8],
    count: u16,
}

impl<'a> PatchTable<'a> {
    /// Validates the table at the start of `region` (the whole flash region;
    /// only the image it announces is read).
    pub fn parse(region: &'a [u8]) -> Result<Self, PartitionError> {
        let have = region.len() as u32;
        if region.len() < HEADER_LEN {
            return Err(PartitionError::Truncated {
                need: HEADER_LEN as u32,
                have,
            });
        }
        if region[field::MAGIC] != MAGIC {
            return Err(PartitionError::BadMagic);
        }
        let version = rd_u16(region, field::VERSION);
        if version != VERSION {
            return Err(PartitionError::UnsupportedVersion(version));
        }
        let count = rd_u16(region, field::COUNT);
        let image_len = rd_u32(region, field::IMAGE_LEN) as usize;
        let entries_end = HEADER_LEN + count as usize * ENTRY_LEN;
        if image_len < entries_end {
            return Err(PartitionError::Truncated {
                need: entries_end as u32,
                have: image_len as u32,
            });
        }
        if image_len > region.len() {
            return Err(PartitionError::Truncated {
                need: image_len as u32,
                have,
            });
        }
        let image = &region[..image_len];
        let stored = rd_u32(image, field::CHECKSUM);
        let computed = graftnet::format::blob_checksum(&image[..entries_end]);
        if stored != computed {
            return Err(PartitionError::ChecksumMismatch { stored, computed });
        }
        let t = PatchTable { image, count };
        for i in 0..count {
            let e = t.raw_entry(i as usize);
            let off = rd_u32(e, field::OFFSET) as usize;
            let len = rd_u32(e, field::LENGTH) as usize;
            let bad = PartitionError::BadEntry { index: i };
            let in_bounds = off.is_multiple_of(BLOB_ALIGN)
                && off >= entries_end
                && off.checked_add(len).is_some_and(|end| end <= image_len);
            if !in_bounds || name_of(e).is_none() {
                return Err(bad);
            }
        }
        Ok(t)
    }

    fn raw_entry(&self, i: usize) -> &'a [u8] {
        let s = HEADER_LEN + i * ENTRY_LEN;
        &self.image[s..s + ENTRY_LEN]
    }

    /// Number of patches.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// No patches.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the image (table and blobs).
    pub fn image_len(&self) -> usize {
        self.image.len()
    }

    /// Entry `i` as `(task name, patch blob)`; `None` past the end.
    pub fn get(&self, i: usize) -> Option<(&'a str, &'a [u8])> {
        if i >= self.len() {
            return None;
        }
        let e = self.raw_entry(i);
        let off = rd_u32(e, field::OFFSET) as usize;
        let len = rd_u32(e, field::LENGTH) as usize;
        Some((name_of(e).unwrap_or(""), &self.image[off..off + len]))
    }

    /// The blob of task `name`.
    pub fn find(&self, name: &str) -> Option<&'a [u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, b)| b)
    }

    /// Every `(task name, patch blob)`, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// The name field of an entry: UTF-8, not empty, zero padded.
fn name_of(e: &[u8]) -> Option<&str> {
    let n = &e[field::NAME];
    let len = n.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
    if len == 0 || n[len..].iter().any(|&b| b != 0) {
        return None;
    }
    core::str::from_utf8(&n[..len]).ok()
}

/// Bytes of the image of `blobs` (lengths).
pub fn image_len(blob_lens: impl Iterator<Item = usize> + Clone) -> usize {
    let n = blob_lens.clone().count();
    let mut end = table_len(n);
    for len in blob_lens {
        end = align_up(end) + len;
    }
    end
}

/// One entry of a table [`emit_table`] writes: a task name and where its
/// blob lies in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableEntry<'a> {
    /// task name (1 to [`NAME_LEN`] bytes of UTF-8, no NUL)
    pub name: &'a str,
    /// offset of the blob from the image start (a multiple of [`BLOB_ALIGN`])
    pub offset: u32,
    /// blob length
    pub length: u32,
}

/// Offset of the blob after one ending at `end`: the layout rule of [`emit`].
pub const fn next_blob_offset(end: usize) -> usize {
    align_up(end)
}

/// Writes the table (header and entries, zero padded to [`table_len`]) of
/// an image of `image_len` bytes with `count` blobs, lying where `entries`
/// say, into `out` (at least [`table_len`] bytes); returns the bytes written.
/// The blobs themselves are the caller's: [`emit`] copies them from RAM, the
/// slot store (`slots.rs`) streams them into flash after the table.
pub fn emit_table<'e>(
    count: usize,
    entries: impl IntoIterator<Item = TableEntry<'e>>,
    image_len: usize,
    out: &mut [u8],
) -> Result<usize, PartitionError> {
    let count16 = u16::try_from(count).map_err(|_| PartitionError::TooLarge)?;
    let len = table_len(count);
    if out.len() < len || u32::try_from(image_len).is_err() {
        return Err(PartitionError::TooLarge);
    }
    let out = &mut out[..len];
    out.fill(0);
    out[field::MAGIC].copy_from_slice(&MAGIC);
    out[field::VERSION].copy_from_slice(&VERSION.to_le_bytes());
    out[field::COUNT].copy_from_slice(&count16.to_le_bytes());
    out[field::IMAGE_LEN].copy_from_slice(&(image_len as u32).to_le_bytes());
    let mut n = 0;
    for t in entries {
        if n == count {
            return Err(PartitionError::TooLarge);
        }
        if t.name.is_empty() || t.name.len() > NAME_LEN || t.name.as_bytes().contains(&0) {
            return Err(PartitionError::NameTooLong);
        }
        let e = &mut out[HEADER_LEN + n * ENTRY_LEN..HEADER_LEN + (n + 1) * ENTRY_LEN];
        e[..t.name.len()].copy_from_slice(t.name.as_bytes());
        e[field::OFFSET].copy_from_slice(&t.offset.to_le_bytes());
        e[field::LENGTH].copy_from_slice(&t.length.to_le_bytes());
        n += 1;
    }
    if n != count {
        return Err(PartitionError::TooLarge);
    }
    let crc = graftnet::format::blob_checksum(&out[..HEADER_LEN + count * ENTRY_LEN]);
    out[field::CHECKSUM].copy_from_slice(&crc.to_le_bytes());
    Ok(len)
}

/// Writes the image of `patches` (`(task name, blob)`) into `out` (at least
/// [`image_len`] bytes, zero filled); returns its length.
pub fn emit(patches: &[(&str, &[u8])], out: &mut [u8]) -> Result<usize, PartitionError> {
    let need = image_len(patches.iter().map(|p| p.1.len()));
    if out.len() < need || u32::try_from(need).is_err() {
        return Err(PartitionError::TooLarge);
    }
    out[..need].fill(0);
    let entries = patches
        .iter()
        .scan(table_len(patches.len()), |end, (name, blob)| {
            let at = next_blob_offset(*end);
            *end = at + blob.len();
            Some(TableEntry {
                name,
                offset: at as u32,
                length: blob.len() as u32,
            })
        });
    emit_table(patches.len(), entries.clone(), need, out)?;
    for (t, (_, blob)) in entries.zip(patches) {
        let at = t.offset as usize;
        out[at..at + blob.len()].copy_from_slice(blob);
    }
    Ok(need)
}
