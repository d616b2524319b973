//! Memory that behaves as NOR flash: what the slot store writes under qemu.
//!
//! `E`-byte sectors erase to 0xFF; writes cover whole `W`-byte units at
//! `W`-aligned offsets and only clear bits (`new = old & data`), as on real
//! NOR flash, so the store runs the same code paths as on a chip.

use core::ptr::{read_volatile, write_volatile};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

use crate::slots::MappedFlash;

/// Why an operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamFlashError {
    /// offset or length not a multiple of the write or erase unit
    NotAligned,
    /// past the end of the region
    OutOfBounds,
}

impl NorFlashError for RamFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            RamFlashError::NotAligned => NorFlashErrorKind::NotAligned,
            RamFlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
        }
    }
}

/// `len` bytes of RAM at `base` as NOR flash with `E`-byte sectors and
/// `W`-byte write units.
pub struct RamFlash<const E: usize, const W: usize> {
    base: *mut u8,
    len: usize,
}

impl<const E: usize, const W: usize> RamFlash<E, W> {
    /// The region `base..base + len`.
    ///
    /// # Safety
    /// The region must be writable memory that lives for the program and
    /// that nothing else writes; other readers may hold shared slices of
    /// parts of it only while this value does not write those parts (the
    /// slot store writes only its inactive slot; the service keeps views of
    /// the active one).
    pub unsafe fn new(base: *mut u8, len: usize) -> Self {
        RamFlash { base, len }
    }

    fn check(&self, offset: u32, len: usize, unit: usize) -> Result<usize, RamFlashError> {
        let at = offset as usize;
        if !at.is_multiple_of(unit) || !len.is_multiple_of(unit) {
            return Err(RamFlashError::NotAligned);
        }
        if at.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(RamFlashError::OutOfBounds);
        }
        Ok(at)
    }
}

impl<const E: usize, const W: usize> ErrorType for RamFlash<E, W> {
    type Error = RamFlashError;
}

impl<const E: usize, const W: usize> ReadNorFlash for RamFlash<E, W> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), RamFlashError> {
        let at = self.check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.contents()[at..at + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.len
    }
}

impl<const E: usize, const W: usize> NorFlash for RamFlash<E, W> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), RamFlashError> {
        let len = (to as usize)
            .checked_sub(from as usize)
            .ok_or(RamFlashError::NotAligned)?;
        let at = self.check(from, len, E)?;
        for i in at..at + len {
            // SAFETY: `check` kept `i` inside the region `new` was given.
            unsafe { write_volatile(self.base.add(i), 0xff) };
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), RamFlashError> {
        let at = self.check(offset, bytes.len(), W)?;
        for (i, &b) in bytes.iter().enumerate() {
            // SAFETY: `check` kept `at + i` inside the region.
            unsafe {
                let p = self.base.add(at + i);
                write_volatile(p, read_volatile(p) & b);
            }
        }
        Ok(())
    }
}

impl<const E: usize, const W: usize> MappedFlash for RamFlash<E, W> {
    fn contents(&self) -> &[u8] {
        // SAFETY: the region is readable memory for the program's life
        // (`new`); the slice lives as long as `&self`, during which this
        // value does not write (writes take `&mut self`).
        unsafe { core::slice::from_raw_parts(self.base, self.len) }
    }
}
