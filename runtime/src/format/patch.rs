//! Patch blob (`.gnp`): one task as a set of entries over a backbone.
//!
//! ```text
//! header (48 B) | task name (UTF-8) | zero pad to 4 | entries
//! ```
//!
//! [`Patch::parse`] checks the header, the checksum and the entry framing;
//! the entries are checked against a backbone's graph when the patch is
//! applied (`Engine::apply`), before anything changes. A patch is used in
//! place: from flash, or streamed into a caller buffer by [`Patch::read`].

use super::entry::{read_raw, EntryIter};
use super::signature::Trailer;
#[cfg(feature = "verify")]
use super::signature::{VerifyKey, PUBLIC_KEY_LEN, TRAILER_LEN};
use super::{
    align_up, blob_checksum, rd_u16, rd_u32, rd_u64, wr_u16, wr_u32, wr_u64, PATCH_MAGIC, VERSION,
};
use crate::error::FormatError;

/// Header field offsets.
pub mod field {
    #![allow(missing_docs)]
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const HEADER_LEN: usize = 6;
    pub const TOTAL_LEN: usize = 8;
    pub const CHECKSUM: usize = 12;
    pub const BACKBONE: usize = 16;
    pub const N_ENTRIES: usize = 24;
    pub const CLASSES: usize = 28;
    pub const NAME_LEN: usize = 30;
    pub const ENTRIES_OFF: usize = 32;
    pub const FLAGS: usize = 36;
    /// u32 task version (0: unversioned), formerly reserved.
    pub const TASK_VERSION: usize = 40;
    pub const RESERVED: usize = 44;
}

/// Header length.
pub const HEADER_LEN: usize = 48;
/// Longest task name.
pub const MAX_NAME_LEN: usize = 255;

/// Header values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderRepr {
    /// total blob length
    pub total_len: u32,
    /// fingerprint of the backbone this patch belongs to
    pub backbone: u64,
    /// number of entries
    pub n_entries: u32,
    /// classes of the task
    pub classes: u16,
    /// task-name length in bytes
    pub name_len: u16,
    /// offset of the entries
    pub entries_off: u32,
    /// The task's version, increasing with every release of the task
    /// (0: unversioned). See [`crate::Engine::apply_newer`].
    pub task_version: u32,
}

impl HeaderRepr {
    /// Offset of the entries for a name of `name_len` bytes.
    pub const fn entries_off(name_len: usize) -> usize {
        align_up(HEADER_LEN + name_len, 4)
    }
    /// Writes the header (checksum left zero: see [`seal`]).
    ///
    /// # Panics
    /// If `blob` is shorter than [`HEADER_LEN`].
    #[allow(clippy::indexing_slicing)]
    pub fn emit(&self, blob: &mut [u8]) {
        let b = &mut blob[..HEADER_LEN];
        b.fill(0);
        b[field::MAGIC].copy_from_slice(&PATCH_MAGIC);
        wr_u16(b, field::VERSION, VERSION);
        wr_u16(b, field::HEADER_LEN, HEADER_LEN as u16);
        wr_u32(b, field::TOTAL_LEN, self.total_len);
        wr_u64(b, field::BACKBONE, self.backbone);
        wr_u32(b, field::N_ENTRIES, self.n_entries);
        wr_u16(b, field::CLASSES, self.classes);
        wr_u16(b, field::NAME_LEN, self.name_len);
        wr_u32(b, field::ENTRIES_OFF, self.entries_off);
        wr_u32(b, field::TASK_VERSION, self.task_version);
    }
}

/// Fills in the checksum of a fully written patch.
///
/// # Panics
/// If `blob` is shorter than [`HEADER_LEN`].
pub fn seal(blob: &mut [u8]) {
    let crc = blob_checksum(blob);
    wr_u32(blob, field::CHECKSUM, crc);
}

/// A parsed patch borrowed from its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Patch<'a> {
    blob: &'a [u8],
    hdr: HeaderRepr,
    trailer: Option<Trailer<'a>>,
    /// The public key whose signature `parse_verified` checked.
    #[cfg(feature = "verify")]
    verified: Option<[u8; PUBLIC_KEY_LEN]>,
}

impl<'a> Patch<'a> {
    /// Checks the header, checksum and entry framing.
    ///
    /// A signature trailer after the patch (`FORMAT.md`, "Signatures") is
    /// recognized ([`Patch::signature`]) but not checked: see
    /// `Patch::parse_verified`, or an engine made with
    /// `Engine::new_verified`, which checks it in `apply`.
    pub fn parse(blob: &'a [u8]) -> Result<Self, FormatError> {
        let (hdr, content) = check_content(blob)?;
        Self::parse_content(content, hdr, Trailer::find(blob, content.len()))
    }

    /// [`Patch::parse`] of a patch that must carry `key`'s signature,
    /// checked first (after the fixed header fields that locate it), so
    /// nothing else of an unauthenticated patch is parsed. Errors:
    /// [`FormatError::Unsigned`], [`FormatError::WrongKey`],
    /// [`FormatError::BadSignature`], then any of `parse`'s. The view
    /// remembers the key, so `Engine::apply` on an engine with the same
    /// key does not check the signature again: patches kept in flash are
    /// verified once, at boot.
    #[cfg(feature = "verify")]
    pub fn parse_verified(blob: &'a [u8], key: &VerifyKey) -> Result<Self, FormatError> {
        let content = locate(blob)?;
        let trailer = Trailer::find(blob, content.len());
        key.verify(content, trailer)?;
        let (hdr, content) = check_content(content)?;
        let mut p = Self::parse_content(content, hdr, trailer)?;
        p.verified = Some(key.to_bytes());
        Ok(p)
    }

    /// Checks that the patch carries `key`'s signature (at once if
    /// `parse_verified` checked it with this key).
    #[cfg(feature = "verify")]
    pub fn verify(&self, key: &VerifyKey) -> Result<(), FormatError> {
        if self.verified == Some(key.to_bytes()) {
            return Ok(());
        }
        key.verify(self.blob, self.trailer)
    }

    /// The signature trailer after the patch, if any (not verified by
    /// `parse`).
    pub fn signature(&self) -> Option<Trailer<'a>> {
        self.trailer
    }

    /// The rest of `parse`, on the content (`total_len` bytes).
    fn parse_content(
        blob: &'a [u8],
        hdr: HeaderRepr,
        trailer: Option<Trailer<'a>>,
    ) -> Result<Self, FormatError> {
        let stored = rd_u32(blob, field::CHECKSUM);
        let computed = blob_checksum(blob);
        if stored != computed {
            return Err(FormatError::ChecksumMismatch { stored, computed });
        }
        let name = blob
            .get(HEADER_LEN..HEADER_LEN + hdr.name_len as usize)
            .unwrap_or(&[]);
        if core::str::from_utf8(name).is_err() {
            return Err(FormatError::BadLayout {
                section: "name (not UTF-8)",
            });
        }
        // Framing: exactly n_entries entries fill the rest.
        let body = blob.get(hdr.entries_off as usize..).unwrap_or(&[]);
        let mut pos = 0;
        for e in 0..hdr.n_entries {
            let raw = read_raw(body, pos).ok_or(FormatError::BadEntry {
                entry: e,
                op: super::NONE,
                what: "entry runs past the end of the patch",
            })?;
            pos = raw.next;
        }
        if pos != body.len() {
            return Err(FormatError::BadLayout { section: "entries" });
        }
        Ok(Patch {
            blob,
            hdr,
            trailer,
            #[cfg(feature = "verify")]
            verified: None,
        })
    }

    /// Streams a patch from `reader` into `buf` and parses it there.
    pub fn read<R: embedded_io::Read>(
        reader: &mut R,
        buf: &'a mut [u8],
    ) -> Result<Self, FormatError> {
        let have = buf.len() as u32;
        let Some(head) = buf.get_mut(..HEADER_LEN) else {
            return Err(FormatError::BufferTooSmall {
                need: HEADER_LEN as u32,
                have,
            });
        };
        reader.read_exact(head).map_err(|_| FormatError::Io)?;
        // `check_fixed` proved total >= entries_off >= HEADER_LEN.
        let total = check_fixed(head)?.total_len as usize;
        let Some(rest) = buf.get_mut(HEADER_LEN..total) else {
            return Err(FormatError::BufferTooSmall {
                need: total as u32,
                have,
            });
        };
        reader.read_exact(rest).map_err(|_| FormatError::Io)?;
        let buf: &'a [u8] = buf;
        Patch::parse(buf.get(..total).unwrap_or(&[]))
    }

    /// Streams a signed patch (the patch and its 80-byte trailer) from
    /// `reader` into `buf` and parses it there with
    /// `Patch::parse_verified`. A reader that ends where the trailer
    /// should begin gives [`FormatError::Unsigned`] (an unsigned patch);
    /// `buf` needs [`Patch::required_len`] + `TRAILER_LEN` bytes.
    #[cfg(feature = "verify")]
    pub fn read_verified<R: embedded_io::Read>(
        reader: &mut R,
        buf: &'a mut [u8],
        key: &VerifyKey,
    ) -> Result<Self, FormatError> {
        let have = buf.len() as u32;
        let Some(head) = buf.get_mut(..HEADER_LEN) else {
            return Err(FormatError::BufferTooSmall {
                need: (HEADER_LEN + TRAILER_LEN) as u32,
                have,
            });
        };
        reader.read_exact(head).map_err(|_| FormatError::Io)?;
        let total = check_fixed(head)?.total_len as usize;
        let signed = total.saturating_add(TRAILER_LEN);
        let Some(rest) = buf.get_mut(HEADER_LEN..total) else {
            return Err(FormatError::BufferTooSmall {
                need: signed as u32,
                have,
            });
        };
        reader.read_exact(rest).map_err(|_| FormatError::Io)?;
        let Some(trailer) = buf.get_mut(total..signed) else {
            return Err(FormatError::BufferTooSmall {
                need: signed as u32,
                have,
            });
        };
        reader.read_exact(trailer).map_err(|e| match e {
            embedded_io::ReadExactError::UnexpectedEof => FormatError::Unsigned,
            embedded_io::ReadExactError::Other(_) => FormatError::Io,
        })?;
        let buf: &'a [u8] = buf;
        Patch::parse_verified(buf.get(..signed).unwrap_or(&[]), key)
    }

    /// Bytes a streamed patch needs, from its first 48 bytes (without a
    /// signature trailer: add `TRAILER_LEN` for a signed one).
    pub fn required_len(header: &[u8]) -> Result<usize, FormatError> {
        Ok(check_fixed(header)?.total_len as usize)
    }

    /// The whole blob (its `total_len` bytes, without a signature trailer).
    pub fn bytes(&self) -> &'a [u8] {
        self.blob
    }
    /// Header values.
    pub fn header(&self) -> &HeaderRepr {
        &self.hdr
    }
    /// Task name.
    pub fn name(&self) -> &'a str {
        let b = self
            .blob
            .get(HEADER_LEN..HEADER_LEN + self.hdr.name_len as usize)
            .unwrap_or(&[]);
        core::str::from_utf8(b).unwrap_or("")
    }
    /// Fingerprint of the backbone the patch was made for.
    pub fn backbone_fingerprint(&self) -> u64 {
        self.hdr.backbone
    }
    /// Class count of the task.
    pub fn classes(&self) -> u16 {
        self.hdr.classes
    }
    /// The entry section.
    pub fn entry_bytes(&self) -> &'a [u8] {
        self.blob
            .get(self.hdr.entries_off as usize..)
            .unwrap_or(&[])
    }
    /// The entries.
    pub fn entries(&self) -> EntryIter<'a> {
        EntryIter::new(self.entry_bytes(), self.hdr.n_entries)
    }
    /// Number of entries.
    pub fn n_entries(&self) -> u32 {
        self.hdr.n_entries
    }

    /// The task's version (0: unversioned).
    pub fn task_version(&self) -> u32 {
        self.hdr.task_version
    }
}

/// The fixed header fields and the content (`total_len` bytes).
fn check_content(blob: &[u8]) -> Result<(HeaderRepr, &[u8]), FormatError> {
    let hdr = check_fixed(blob)?;
    // `check_fixed` proved HEADER_LEN + name_len <= entries_off <= total_len.
    let Some(content) = blob.get(..hdr.total_len as usize) else {
        return Err(FormatError::Truncated {
            need: hdr.total_len,
            have: blob.len() as u32,
        });
    };
    Ok((hdr, content))
}

/// The content (`total_len` bytes) by the fields that locate it: magic,
/// version, header and total length. What `parse_verified` checks before
/// the signature.
#[cfg(feature = "verify")]
fn locate(blob: &[u8]) -> Result<&[u8], FormatError> {
    check_magic(blob)?;
    let total_len = rd_u32(blob, field::TOTAL_LEN);
    if (total_len as usize) < HEADER_LEN {
        return Err(FormatError::TooShort {
            declared: total_len,
            min: HEADER_LEN as u32,
        });
    }
    blob.get(..total_len as usize)
        .ok_or(FormatError::Truncated {
            need: total_len,
            have: blob.len() as u32,
        })
}

/// Checks the length, magic, version and header length.
fn check_magic(b: &[u8]) -> Result<(), FormatError> {
    if b.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            need: HEADER_LEN as u32,
            have: b.len() as u32,
        });
    }
    let magic: [u8; 4] = super::rd(b, field::MAGIC.start);
    if magic != PATCH_MAGIC {
        return Err(FormatError::BadMagic {
            expected: PATCH_MAGIC,
            found: magic,
        });
    }
    let version = rd_u16(b, field::VERSION);
    if version != VERSION {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: VERSION,
        });
    }
    if rd_u16(b, field::HEADER_LEN) as usize != HEADER_LEN {
        return Err(FormatError::BadLayout { section: "header" });
    }
    Ok(())
}

/// Checks the fixed header fields (no checksum).
fn check_fixed(b: &[u8]) -> Result<HeaderRepr, FormatError> {
    check_magic(b)?;
    let hdr = HeaderRepr {
        total_len: rd_u32(b, field::TOTAL_LEN),
        backbone: rd_u64(b, field::BACKBONE),
        n_entries: rd_u32(b, field::N_ENTRIES),
        classes: rd_u16(b, field::CLASSES),
        name_len: rd_u16(b, field::NAME_LEN),
        entries_off: rd_u32(b, field::ENTRIES_OFF),
        task_version: rd_u32(b, field::TASK_VERSION),
    };
    if hdr.name_len as usize > MAX_NAME_LEN
        || hdr.entries_off as usize != HeaderRepr::entries_off(hdr.name_len as usize)
    {
        return Err(FormatError::BadLayout { section: "name" });
    }
    if (hdr.total_len as usize) < hdr.entries_off as usize {
        return Err(FormatError::TooShort {
            declared: hdr.total_len,
            min: hdr.entries_off,
        });
    }
    Ok(hdr)
}

#[cfg(test)]
#[allow(clippy::indexing_slicing, clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A patch header whose total length is below its header and name:
    /// a typed error (it was `BadLayout`), never a slice past the end.
    #[test]
    fn total_length_below_the_header_is_refused() {
        let mut blob = [0u8; 48];
        blob[..8].copy_from_slice(b"GNPT\x01\x00\x30\x00");
        blob[field::ENTRIES_OFF..field::ENTRIES_OFF + 4].copy_from_slice(&48u32.to_le_bytes());
        for declared in 0..48u32 {
            blob[8..12].copy_from_slice(&declared.to_le_bytes());
            assert_eq!(
                Patch::parse(&blob).unwrap_err(),
                FormatError::TooShort { declared, min: 48 }
            );
            let mut reader: &[u8] = &blob;
            let mut buf = [0u8; 64];
            assert_eq!(
                Patch::read(&mut reader, &mut buf).unwrap_err(),
                FormatError::TooShort { declared, min: 48 }
            );
        }
        // The smallest valid patch: no name, no entries.
        blob[8..12].copy_from_slice(&48u32.to_le_bytes());
        seal(&mut blob);
        assert_eq!(Patch::parse(&blob).unwrap().n_entries(), 0);
    }

    #[test]
    fn task_version_round_trips_and_defaults_to_zero() {
        for v in [0u32, 1, 7, u32::MAX] {
            let name = b"digits";
            let off = HeaderRepr::entries_off(name.len());
            let mut blob = [0u8; 64];
            let hdr = HeaderRepr {
                total_len: off as u32,
                backbone: 0x1234,
                n_entries: 0,
                classes: 10,
                name_len: name.len() as u16,
                entries_off: off as u32,
                task_version: v,
            };
            hdr.emit(&mut blob);
            blob[HEADER_LEN..HEADER_LEN + name.len()].copy_from_slice(name);
            let blob = &mut blob[..off];
            seal(blob);
            let p = Patch::parse(blob).unwrap();
            assert_eq!(p.task_version(), v);
            if v == 0 {
                // Unversioned patches keep the bytes they always had.
                assert!(blob[field::TASK_VERSION..field::TASK_VERSION + 4]
                    .iter()
                    .all(|&b| b == 0));
            }
        }
    }
}
