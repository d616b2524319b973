//! The A/B slot store: the device's task set in the PATCHES flash region,
//! replaced as a whole, so that a power cut at any instant leaves either the
//! previous task set or the new one, complete and valid.
//!
//! # Layout
//!
//! The region is split into two halves, slot A and slot B, each a whole
//! number of flash erase sectors (on an STM32H743 the 256 KB region is two
//! 128 KB sectors, so nothing finer is possible there). A slot holds
//!
//! ```text
//! patch partition image (partition.rs: GNPP table, blobs)   erased   commit record (last 64 bytes)
//! ```
//!
//! The commit record (little-endian) makes the slot's image a task set:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `GNPS` |
//! | 4..6 | version = 1 |
//! | 6..8 | zero |
//! | 8..12 | generation (u32): one more than the set it replaced |
//! | 12..16 | image length (u32) |
//! | 16..20 | CRC-32 of the image's `image length` bytes as they are in flash (gaps between blobs are erased, 0xFF) |
//! | 20..60 | zero |
//! | 60..64 | CRC-32 of bytes 0..60 |
//!
//! [`SlotStore::mount`] takes the slot whose record is intact, whose image
//! CRC matches and whose every patch validates (CRC and framing by
//! `graftnet::Patch::parse`, with feature `verify` and a key the signature by
//! `Patch::parse_verified`; the backbone fingerprint; the name in the table
//! equals the name in the patch) with the highest generation. If neither slot
//! has such a record, a valid patch partition at the start of slot A with all
//! its patches valid is the set (generation 0): that is the image
//! `build.rs` compiles in (`patches.bin`), so a firmware flashed with tasks
//! starts with them and the first change goes to slot B. A build-time
//! partition larger than a slot (less its record) is not a set the store can
//! keep, and the store starts empty. Otherwise the set is empty.
//!
//! # Changes
//!
//! Every change writes a complete new set into the *inactive* slot, never
//! touching the active one: erase the slot (its last sector first, so an old
//! record goes before anything else), write the table, copy the patches that
//! stay from the active slot, then (an upload) stream the new patch in
//! chunks; validate the new image from flash exactly as `mount` will; and
//! only then write the 64-byte commit record with the next generation. The
//! record is the single atomic step: until it is complete the old set wins
//! (a torn record fails its CRC), after it the new one does. The old set
//! stays intact in the other slot until the next change erases it.
//!
//! - [`SlotStore::upload`]`(name, total_len, offset, chunk)`: offset 0
//!   starts an upload (replacing the task of that name, if any); later
//!   chunks must continue where the held bytes end (the error says where,
//!   so a client can resume); the header is checked as soon as 48 bytes are
//!   held (another backbone, a length that does not match the upload is
//!   refused at once). Returns the bytes held. An upload in progress lives in
//!   RAM: it resumes across a broken connection, not across a reset.
//! - [`SlotStore::commit`]: validate and write the record.
//! - [`SlotStore::delete`]: a new set without the task.
//!
//! A failed validation discards the staged slot; the active set is
//! unchanged. The generation is a u32; at `u32::MAX` changes are refused.
//!
//! # Contract with readers
//!
//! The firmware reads patches in place (the engine keeps a view into flash),
//! so it must not keep a view into the inactive slot across a change: after
//! [`SlotStore::commit`] or [`SlotStore::delete`] it re-reads its task from
//! [`SlotStore::blob_range`] (the old slot is erased by the *next* change).
//! Ranges are offsets from the region start.
//!
//! Geometry: `WRITE_SIZE` must divide 64 (the blob alignment), each slot
//! must be a multiple of `ERASE_SIZE` and hold at least the table of
//! `N` tasks and the record; [`SlotStore::mount`] checks it.
//!
//! A simulated NOR flash with random power cuts (`tests/slots.rs`) checks
//! all of this on the host.

use core::fmt;
use core::ops::Range;

use embedded_storage::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};
use graftnet::format::signature::TRAILER_LEN;
use graftnet::format::Crc32;
use graftnet::{FormatError, Patch};
use heapless::{String, Vec};

use crate::partition::{self, PatchTable, TableEntry, BLOB_ALIGN, NAME_LEN};

/// Bytes of the commit record at the end of each slot.
pub const RECORD_LEN: usize = 64;
/// Commit record magic.
pub const RECORD_MAGIC: [u8; 4] = *b"GNPS";
/// Commit record version.
pub const RECORD_VERSION: u16 = 1;
/// Most tasks a store may be built for (its table must fit [`TABLE_BUF`]).
pub const MAX_TASKS: usize = 24;
/// Bytes of the stack buffer a table is built in.
const TABLE_BUF: usize = 1024;
/// Bytes copied per flash read/write when a patch moves between slots.
const COPY_LEN: usize = 256;
/// The name no patch may take: the backbone's own task.
pub const BASE_TASK: &str = "base";

mod record {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: Range<usize> = 4..6;
    pub const GENERATION: Range<usize> = 8..12;
    pub const IMAGE_LEN: Range<usize> = 12..16;
    pub const IMAGE_CRC: Range<usize> = 16..20;
    pub const CRC: Range<usize> = 60..64;
}

/// A flash whose contents can also be read in place (memory-mapped
/// internal flash, or RAM standing in for it), so patches are validated and
/// run without copies.
pub trait MappedFlash: NorFlash {
    /// The whole flash, as it reads now.
    fn contents(&self) -> &[u8];
}

/// What went wrong in the store. Every error leaves the active task set as
/// it was.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotError {
    /// The flash reported an error (or power failed).
    Flash(NorFlashErrorKind),
    /// The region cannot be split into two slots of whole erase sectors
    /// holding a table and a record, or the write size does not divide 64.
    Geometry,
    /// A task name that is empty, longer than 32 bytes, contains NUL or is
    /// `base`.
    BadName,
    /// No task of that name.
    UnknownTask,
    /// The task table is full.
    TableFull {
        /// tasks the store holds at most
        capacity: u16,
    },
    /// The new set does not fit a slot.
    NoSpace {
        /// bytes the new image needs (with the record)
        need: u32,
        /// bytes of a slot
        have: u32,
    },
    /// A chunk or commit for an upload that is not in progress (never
    /// started, for another name or length, or discarded by a failure or
    /// another change): start again at offset 0.
    NoUpload,
    /// A chunk that does not continue the upload: send from `held`.
    OutOfOrder {
        /// bytes held
        held: u32,
    },
    /// A chunk past the upload's declared length.
    Overrun {
        /// the declared length
        total: u32,
    },
    /// Commit before every byte arrived.
    Incomplete {
        /// bytes held
        held: u32,
        /// bytes declared
        total: u32,
    },
    /// The upload's length is not the patch's (its header's total length,
    /// or that plus a signature trailer).
    LengthMismatch {
        /// length the upload declared
        upload: u32,
        /// length the patch header declares
        patch: u32,
    },
    /// The patch names another task than the upload.
    NameMismatch,
    /// The patch does not validate (CRC, framing, signature, backbone).
    Patch(FormatError),
    /// The generation counter is exhausted.
    Exhausted,
}

impl fmt::Display for SlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlotError::Flash(k) => write!(f, "flash error: {k:?}"),
            SlotError::Geometry => {
                f.write_str("the patch region cannot hold two slots of whole erase sectors")
            }
            SlotError::BadName => write!(
                f,
                "a task name is 1 to {NAME_LEN} bytes of UTF-8 without NUL, and not `{BASE_TASK}`"
            ),
            SlotError::UnknownTask => f.write_str("no such task"),
            SlotError::TableFull { capacity } => {
                write!(f, "the task table is full ({capacity} tasks)")
            }
            SlotError::NoSpace { need, have } => {
                write!(f, "the task set needs {need} bytes, a slot has {have}")
            }
            SlotError::NoUpload => {
                f.write_str("no such upload in progress; start again at offset 0")
            }
            SlotError::OutOfOrder { held } => write!(
                f,
                "chunk out of order: {held} bytes held, continue from there"
            ),
            SlotError::Overrun { total } => {
                write!(f, "chunk past the upload's length of {total} bytes")
            }
            SlotError::Incomplete { held, total } => {
                write!(f, "upload incomplete: {held} of {total} bytes")
            }
            SlotError::LengthMismatch { upload, patch } => {
                write!(f, "the upload is {upload} bytes, the patch header says {patch} (plus an optional {TRAILER_LEN}-byte signature)")
            }
            SlotError::NameMismatch => f.write_str("the patch names another task than the upload"),
            SlotError::Patch(e) => write!(f, "patch refused: {e}"),
            SlotError::Exhausted => f.write_str("generation counter exhausted"),
        }
    }
}

impl core::error::Error for SlotError {}

impl From<FormatError> for SlotError {
    fn from(e: FormatError) -> Self {
        SlotError::Patch(e)
    }
}

fn flash_err<E: NorFlashError>(e: E) -> SlotError {
    SlotError::Flash(e.kind())
}

/// What a patch must be to enter the store: made for this backbone, and
/// with feature `verify` and a key, signed with it.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// fingerprint of the backbone in flash
    pub fingerprint: u64,
    /// the key every patch must be signed with (`None`: CRC and framing only)
    #[cfg(feature = "verify")]
    pub key: Option<graftnet::VerifyKey>,
}

impl Policy {
    /// Patches for the backbone `fingerprint`, unsigned or signed.
    pub fn new(fingerprint: u64) -> Self {
        Policy {
            fingerprint,
            #[cfg(feature = "verify")]
            key: None,
        }
    }

    /// Patches for `fingerprint`, signed with `key`.
    #[cfg(feature = "verify")]
    pub fn signed(fingerprint: u64, key: graftnet::VerifyKey) -> Self {
        Policy {
            fingerprint,
            key: Some(key),
        }
    }

    /// Parses `blob` as the patch of task `name`: CRC, framing, signature
    /// (with a key), backbone, name, and no bytes besides the patch and its
    /// signature trailer. The view is what the engine applies.
    pub fn check<'a>(&self, name: &str, blob: &'a [u8]) -> Result<Patch<'a>, SlotError> {
        #[cfg(feature = "verify")]
        let p = match &self.key {
            Some(k) => Patch::parse_verified(blob, k)?,
            None => Patch::parse(blob)?,
        };
        #[cfg(not(feature = "verify"))]
        let p = Patch::parse(blob)?;
        if p.backbone_fingerprint() != self.fingerprint {
            return Err(FormatError::WrongBackbone {
                expected: self.fingerprint,
                found: p.backbone_fingerprint(),
            }
            .into());
        }
        if p.name() != name {
            return Err(SlotError::NameMismatch);
        }
        let content = p.bytes().len();
        let exact = blob.len() == content
            || (blob.len() == content + TRAILER_LEN && p.signature().is_some());
        if !exact {
            return Err(SlotError::LengthMismatch {
                upload: blob.len() as u32,
                patch: content as u32,
            });
        }
        Ok(p)
    }

    /// The early check of an upload on its first 48 bytes.
    fn check_header(&self, header: &[u8], upload_len: u32) -> Result<(), SlotError> {
        let content = Patch::required_len(header)? as u32;
        if upload_len != content && upload_len != content.saturating_add(TRAILER_LEN as u32) {
            return Err(SlotError::LengthMismatch {
                upload: upload_len,
                patch: content,
            });
        }
        let at = graftnet::format::patch::field::BACKBONE;
        let found = header
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        if found != self.fingerprint {
            return Err(FormatError::WrongBackbone {
                expected: self.fingerprint,
                found,
            }
            .into());
        }
        Ok(())
    }
}

/// One of the two slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// the first half of the region
    A,
    /// the second half
    B,
}

impl Slot {
    fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
}

/// A task of the set: its name and where its patch lies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// task name (as in the patch)
    pub name: String<NAME_LEN>,
    /// offset of the patch from the region start
    pub offset: u32,
    /// bytes of the patch (with its signature trailer, if any)
    pub len: u32,
}

impl Task {
    /// The patch's bytes, as offsets from the region start.
    pub fn range(&self) -> Range<usize> {
        self.offset as usize..self.offset as usize + self.len as usize
    }
}

/// A task set: what [`SlotStore::mount`] found or a change committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSet<const N: usize> {
    /// generation (0: the build-time partition, or nothing)
    pub generation: u32,
    /// the slot it lives in (`None`: the empty set, in no slot)
    pub slot: Option<Slot>,
    /// its tasks, in table order
    pub tasks: Vec<Task, N>,
}

/// An upload being received into the staged slot.
#[derive(Debug)]
struct Upload {
    name: String<NAME_LEN>,
    total: u32,
    held: u32,
    /// region offset of the patch
    at: u32,
    /// bytes held but not yet written (`held % 64` of them)
    pending: [u8; BLOB_ALIGN],
}

/// A new set being written into the inactive slot.
#[derive(Debug)]
struct Staging<const N: usize> {
    slot: Slot,
    tasks: Vec<Task, N>,
    image_len: u32,
    upload: Option<Upload>,
}

/// The store over flash `F` (the PATCHES region, offsets from its start)
/// with room for `N` tasks.
pub struct SlotStore<F, const N: usize> {
    flash: F,
    policy: Policy,
    slot_len: u32,
    active: TaskSet<N>,
    staging: Option<Staging<N>>,
}

impl<F: MappedFlash, const N: usize> SlotStore<F, N> {
    /// Refuses, at compile time, an `N` whose table does not fit the buffer.
    const TABLE_FITS: () = assert!(N <= MAX_TASKS && partition::table_len(N) <= TABLE_BUF);

    /// Finds the active task set on `flash` (see the module doc). Content
    /// that is not a valid set is not an error (the store starts from the
    /// other slot or empty); a flash error or an unusable geometry is.
    pub fn mount(flash: F, policy: Policy) -> Result<Self, SlotError> {
        #[allow(clippy::let_unit_value)]
        let () = Self::TABLE_FITS;
        let total = flash.capacity();
        let slot_len = total / 2;
        let geometry_ok = F::WRITE_SIZE > 0
            && BLOB_ALIGN.is_multiple_of(F::WRITE_SIZE)
            && F::ERASE_SIZE > 0
            && slot_len.is_multiple_of(F::ERASE_SIZE)
            && slot_len.is_multiple_of(BLOB_ALIGN)
            && slot_len >= partition::table_len(N) + RECORD_LEN
            && u32::try_from(total).is_ok();
        if !geometry_ok {
            return Err(SlotError::Geometry);
        }
        let mut store = SlotStore {
            flash,
            policy,
            slot_len: slot_len as u32,
            active: TaskSet {
                generation: 0,
                slot: None,
                tasks: Vec::new(),
            },
            staging: None,
        };
        let a = store.committed(Slot::A)?;
        let b = store.committed(Slot::B)?;
        store.active = match (a, b) {
            (Some(a), Some(b)) => {
                if b.generation > a.generation {
                    b
                } else {
                    a
                }
            }
            (Some(s), None) | (None, Some(s)) => s,
            (None, None) => store.seed().unwrap_or(TaskSet {
                generation: 0,
                slot: None,
                tasks: Vec::new(),
            }),
        };
        Ok(store)
    }

    /// The active task set.
    pub fn active(&self) -> &TaskSet<N> {
        &self.active
    }

    /// The active set's tasks.
    pub fn tasks(&self) -> &[Task] {
        &self.active.tasks
    }

    /// The task `name` of the active set.
    pub fn task(&self, name: &str) -> Option<&Task> {
        self.active.tasks.iter().find(|t| t.name == name)
    }

    /// Where task `name`'s patch lies (offsets from the region start).
    pub fn blob_range(&self, name: &str) -> Option<Range<usize>> {
        self.task(name).map(Task::range)
    }

    /// The active patch of task `name`, parsed (and verified) in place.
    pub fn patch(&self, name: &str) -> Result<Patch<'_>, SlotError> {
        let r = self.blob_range(name).ok_or(SlotError::UnknownTask)?;
        let blob = self.flash.contents().get(r).ok_or(SlotError::UnknownTask)?;
        self.policy.check(name, blob)
    }

    /// The upload in progress: `(task name, bytes held, bytes declared)`.
    pub fn upload_state(&self) -> Option<(&str, u32, u32)> {
        let u = self.staging.as_ref()?.upload.as_ref()?;
        Some((u.name.as_str(), u.held, u.total))
    }

    /// Bytes of one slot.
    pub fn slot_len(&self) -> u32 {
        self.slot_len
    }

    /// The largest patch the store takes: a slot less its record, a full
    /// table and one blob alignment (a patch that size fits only alone).
    pub fn max_patch(&self) -> u32 {
        self.slot_len - (RECORD_LEN + partition::table_len(N) + BLOB_ALIGN) as u32
    }

    /// The policy patches are checked with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The flash (for its contents; writing it behind the store's back
    /// voids the guarantees).
    pub fn flash(&self) -> &F {
        &self.flash
    }

    /// Gives the flash back.
    pub fn into_flash(self) -> F {
        self.flash
    }

    /// Receives `chunk` at `offset` of the `total_len`-byte patch of task
    /// `name`; returns the bytes held. See the module doc.
    pub fn upload(
        &mut self,
        name: &str,
        total_len: u32,
        offset: u32,
        chunk: &[u8],
    ) -> Result<u32, SlotError> {
        if offset == 0 {
            self.staging = None;
            if total_len < graftnet::format::patch::HEADER_LEN as u32 {
                return Err(SlotError::LengthMismatch {
                    upload: total_len,
                    patch: graftnet::format::patch::HEADER_LEN as u32,
                });
            }
            let name = task_name(name)?;
            let mut tasks: Vec<Task, N> = self
                .active
                .tasks
                .iter()
                .filter(|t| t.name != name)
                .cloned()
                .collect();
            tasks
                .push(Task {
                    name: name.clone(),
                    offset: 0,
                    len: total_len,
                })
                .map_err(|_| SlotError::TableFull { capacity: N as u16 })?;
            let mut staging = self.stage(tasks, true)?;
            let at = staging.tasks.last().map_or(0, |t| t.offset);
            staging.upload = Some(Upload {
                name,
                total: total_len,
                held: 0,
                at,
                pending: [0xff; BLOB_ALIGN],
            });
            self.staging = Some(staging);
        }
        let r = self.receive(name, total_len, offset, chunk);
        if matches!(
            r,
            Err(SlotError::Flash(_) | SlotError::Patch(_) | SlotError::LengthMismatch { .. })
        ) {
            self.staging = None;
        }
        r
    }

    fn receive(
        &mut self,
        name: &str,
        total_len: u32,
        offset: u32,
        chunk: &[u8],
    ) -> Result<u32, SlotError> {
        let Some(Staging {
            upload: Some(u), ..
        }) = self.staging.as_mut()
        else {
            return Err(SlotError::NoUpload);
        };
        if u.name != name || u.total != total_len {
            return Err(SlotError::NoUpload);
        }
        if offset != u.held {
            return Err(SlotError::OutOfOrder { held: u.held });
        }
        let end = u
            .held
            .checked_add(chunk.len() as u32)
            .filter(|&e| e <= u.total);
        if end.is_none() {
            return Err(SlotError::Overrun { total: u.total });
        }
        let header_len = graftnet::format::patch::HEADER_LEN as u32;
        let mut rest = chunk;
        while !rest.is_empty() {
            let fill = (u.held as usize) % BLOB_ALIGN;
            let n = rest.len().min(BLOB_ALIGN - fill);
            u.pending[fill..fill + n].copy_from_slice(&rest[..n]);
            let was = u.held;
            u.held += n as u32;
            rest = &rest[n..];
            if was < header_len && u.held >= header_len {
                self.policy
                    .check_header(&u.pending[..header_len as usize], u.total)?;
            }
            if fill + n == BLOB_ALIGN {
                let at = u.at + u.held - BLOB_ALIGN as u32;
                self.flash.write(at, &u.pending).map_err(flash_err)?;
                u.pending = [0xff; BLOB_ALIGN];
            }
        }
        Ok(u.held)
    }

    /// Makes the completed upload of `name` the active set (see the module
    /// doc); on any error the active set stays.
    pub fn commit(&mut self, name: &str) -> Result<(), SlotError> {
        self.commit_with(name, |_| Ok(()))
    }

    /// [`SlotStore::commit`] with one more check: after the new image
    /// validated, `check` gets the uploaded patch's bytes as they are in
    /// flash (for a trial `Engine::apply`, say) and its error refuses the
    /// commit before the record is written.
    pub fn commit_with(
        &mut self,
        name: &str,
        check: impl FnOnce(&[u8]) -> Result<(), SlotError>,
    ) -> Result<(), SlotError> {
        let staging = match self.staging.take() {
            Some(s) if s.upload.as_ref().is_some_and(|u| u.name == name) => s,
            other => {
                self.staging = other;
                return Err(SlotError::NoUpload);
            }
        };
        let Some(u) = staging.upload.as_ref() else {
            return Err(SlotError::NoUpload);
        };
        if u.held != u.total {
            let e = SlotError::Incomplete {
                held: u.held,
                total: u.total,
            };
            self.staging = Some(staging);
            return Err(e);
        }
        let tail = (u.held as usize) % BLOB_ALIGN;
        if tail > 0 {
            let padded = tail.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
            let at = u.at + u.held - tail as u32;
            self.flash
                .write(at, &u.pending[..padded])
                .map_err(flash_err)?;
        }
        let range = staging.tasks.last().map(Task::range).unwrap_or(0..0);
        self.seal(staging, |contents| {
            check(contents.get(range).unwrap_or(&[]))
        })
    }

    /// Removes task `name`: a new set without it (an upload in progress is
    /// discarded, since it shares the inactive slot).
    pub fn delete(&mut self, name: &str) -> Result<(), SlotError> {
        if self.task(name).is_none() {
            return Err(if task_name(name).is_err() {
                SlotError::BadName
            } else {
                SlotError::UnknownTask
            });
        }
        self.staging = None;
        let tasks: Vec<Task, N> = self
            .active
            .tasks
            .iter()
            .filter(|t| t.name != name)
            .cloned()
            .collect();
        let staging = self.stage(tasks, false)?;
        self.seal(staging, |_| Ok(()))
    }

    /// Drops an upload in progress (the inactive slot is simply left as is).
    pub fn abort_upload(&mut self) {
        self.staging = None;
    }

    fn slot_start(&self, s: Slot) -> u32 {
        match s {
            Slot::A => 0,
            Slot::B => self.slot_len,
        }
    }

    /// Erases the inactive slot and writes `tasks`' table and the patches
    /// that stay; with `upload`, the last task is the one being uploaded: it
    /// gets its place and nothing else.
    fn stage(&mut self, mut tasks: Vec<Task, N>, upload: bool) -> Result<Staging<N>, SlotError> {
        let slot = self.active.slot.map_or(Slot::B, Slot::other);
        let start = self.slot_start(slot);
        // Lay out: table, then each patch at the next 64-byte boundary.
        let mut end = partition::table_len(tasks.len());
        let mut sources: Vec<Option<u32>, N> = Vec::new();
        let kept = tasks.len() - usize::from(upload);
        for (i, t) in tasks.iter_mut().enumerate() {
            let at = partition::next_blob_offset(end);
            end = at + t.len as usize;
            let src = if i < kept {
                self.active
                    .tasks
                    .iter()
                    .find(|a| a.name == t.name)
                    .map(|a| a.offset)
            } else {
                None
            };
            // (a task is in `tasks` once; Vec capacity equals tasks')
            let _ = sources.push(src);
            t.offset = start + at as u32;
        }
        let have = self.slot_len;
        let need = (end + RECORD_LEN) as u32;
        if end + RECORD_LEN > have as usize {
            return Err(SlotError::NoSpace { need, have });
        }
        let mut table = [0u8; TABLE_BUF];
        let entries = tasks.iter().map(|t| TableEntry {
            name: t.name.as_str(),
            offset: t.offset - start,
            length: t.len,
        });
        let table_len = partition::emit_table(tasks.len(), entries, end, &mut table)
            .map_err(|_| SlotError::BadName)?;
        // Erase, last sector first: the old record goes before anything else.
        let mut sector = start + self.slot_len;
        while sector > start {
            sector -= F::ERASE_SIZE as u32;
            self.flash
                .erase(sector, sector + F::ERASE_SIZE as u32)
                .map_err(flash_err)?;
        }
        self.flash
            .write(start, &table[..table_len])
            .map_err(flash_err)?;
        for (t, src) in tasks.iter().zip(&sources) {
            if let Some(src) = *src {
                self.copy(src, t.offset, t.len)?;
            }
        }
        Ok(Staging {
            slot,
            tasks,
            image_len: end as u32,
            upload: None,
        })
    }

    /// Copies `len` bytes of a patch from `from` to the erased `to`.
    fn copy(&mut self, from: u32, to: u32, len: u32) -> Result<(), SlotError> {
        let mut buf = [0xffu8; COPY_LEN];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_LEN as u32) as usize;
            buf.fill(0xff);
            self.flash
                .read(from + done, &mut buf[..n])
                .map_err(flash_err)?;
            let padded = n.div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
            self.flash
                .write(to + done, &buf[..padded])
                .map_err(flash_err)?;
            done += n as u32;
        }
        Ok(())
    }

    /// Validates the staged image from flash, runs `check`, and writes the
    /// record.
    fn seal(
        &mut self,
        staging: Staging<N>,
        check: impl FnOnce(&[u8]) -> Result<(), SlotError>,
    ) -> Result<(), SlotError> {
        let generation = self
            .active
            .generation
            .checked_add(1)
            .ok_or(SlotError::Exhausted)?;
        let start = self.slot_start(staging.slot);
        let set = TaskSet {
            generation,
            slot: Some(staging.slot),
            tasks: staging.tasks,
        };
        let image = self.image(start, staging.image_len)?;
        let crc = crc32(image);
        // The image must read back as mount will read it.
        let found = self.parse_set(start, staging.image_len, generation, staging.slot)?;
        if found.tasks != set.tasks {
            return Err(SlotError::Flash(NorFlashErrorKind::Other));
        }
        check(self.flash.contents())?;
        let mut rec = [0u8; RECORD_LEN];
        rec[record::MAGIC].copy_from_slice(&RECORD_MAGIC);
        rec[record::VERSION].copy_from_slice(&RECORD_VERSION.to_le_bytes());
        rec[record::GENERATION].copy_from_slice(&generation.to_le_bytes());
        rec[record::IMAGE_LEN].copy_from_slice(&staging.image_len.to_le_bytes());
        rec[record::IMAGE_CRC].copy_from_slice(&crc.to_le_bytes());
        let rc = crc32(&rec[..record::CRC.start]);
        rec[record::CRC].copy_from_slice(&rc.to_le_bytes());
        self.flash
            .write(start + self.slot_len - RECORD_LEN as u32, &rec)
            .map_err(flash_err)?;
        if self.committed(staging.slot)?.as_ref() != Some(&set) {
            return Err(SlotError::Flash(NorFlashErrorKind::Other));
        }
        self.active = set;
        Ok(())
    }

    /// `len` bytes of the image at `start`, in place.
    fn image(&self, start: u32, len: u32) -> Result<&[u8], SlotError> {
        let r = start as usize..start as usize + len as usize;
        self.flash.contents().get(r).ok_or(SlotError::Geometry)
    }

    /// The set committed in `slot`, if its record and image are valid.
    fn committed(&self, slot: Slot) -> Result<Option<TaskSet<N>>, SlotError> {
        let start = self.slot_start(slot);
        let at = (start + self.slot_len) as usize - RECORD_LEN;
        let rec = self
            .flash
            .contents()
            .get(at..at + RECORD_LEN)
            .ok_or(SlotError::Geometry)?;
        let rd = |r: Range<usize>| {
            u32::from_le_bytes([
                rec[r.start],
                rec[r.start + 1],
                rec[r.start + 2],
                rec[r.start + 3],
            ])
        };
        let intact = rec[record::MAGIC] == RECORD_MAGIC
            && rec[record::VERSION] == RECORD_VERSION.to_le_bytes()
            && rd(record::CRC) == crc32(&rec[..record::CRC.start]);
        let image_len = rd(record::IMAGE_LEN);
        if !intact || image_len as usize + RECORD_LEN > self.slot_len as usize {
            return Ok(None);
        }
        let image = self.image(start, image_len)?;
        if crc32(image) != rd(record::IMAGE_CRC) {
            return Ok(None);
        }
        Ok(self
            .parse_set(start, image_len, rd(record::GENERATION), slot)
            .ok())
    }

    /// The build-time partition at the start of slot A, if it is a valid set
    /// that fits the slot.
    fn seed(&self) -> Option<TaskSet<N>> {
        let region = self
            .flash
            .contents()
            .get(..self.slot_len as usize - RECORD_LEN)?;
        let t = PatchTable::parse(region).ok()?;
        self.parse_set(0, t.image_len() as u32, 0, Slot::A).ok()
    }

    /// Parses the image at `start` and checks every patch of it.
    fn parse_set(
        &self,
        start: u32,
        image_len: u32,
        generation: u32,
        slot: Slot,
    ) -> Result<TaskSet<N>, SlotError> {
        let image = self.image(start, image_len)?;
        let table = PatchTable::parse(image).map_err(|_| {
            SlotError::Patch(FormatError::BadLayout {
                section: "slot table",
            })
        })?;
        if table.image_len() != image_len as usize {
            return Err(SlotError::Patch(FormatError::BadLayout {
                section: "slot table",
            }));
        }
        let mut tasks: Vec<Task, N> = Vec::new();
        for (name, blob) in table.iter() {
            let name = task_name(name)?;
            if tasks.iter().any(|t| t.name == name) {
                return Err(SlotError::BadName);
            }
            self.policy.check(&name, blob)?;
            let offset = start + (blob.as_ptr() as usize - image.as_ptr() as usize) as u32;
            tasks
                .push(Task {
                    name,
                    offset,
                    len: blob.len() as u32,
                })
                .map_err(|_| SlotError::TableFull { capacity: N as u16 })?;
        }
        Ok(TaskSet {
            generation,
            slot: Some(slot),
            tasks,
        })
    }
}

/// A valid task name as the table stores it.
fn task_name(name: &str) -> Result<String<NAME_LEN>, SlotError> {
    if name.is_empty() || name == BASE_TASK || name.as_bytes().contains(&0) {
        return Err(SlotError::BadName);
    }
    String::try_from(name).map_err(|_| SlotError::BadName)
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = Crc32::new();
    c.update(data);
    c.finish()
}
