//! The STM32H743 flash controller for the PATCHES region: bank 2 sectors 6
//! and 7 (`0x081C_0000`, 2 x 128 KB; `memory-stm32h743.x`).
//!
//! **Not tested on silicon** (no board here). Per RM0433 (bank 2 registers
//! at `0x5200_2100`): unlock with the two keys in `KEYR2`; a sector erase
//! sets `SER`, the sector number (`SNB`) and `START` in `CR2` and waits
//! until `SR2` shows neither `BSY` nor `QW`; programming sets `PG` and
//! writes each 32-byte flash word as eight 32-bit stores, then waits for
//! `QW` to clear. Error flags in `SR2` are cleared through `CCR2` and
//! reported as `Other`. A flash word is written once between erases (it
//! carries ECC), which the slot store guarantees. With the data cache on,
//! the region would need invalidating after an erase or write; the
//! firmware runs with caches off.

use core::ptr::{read_volatile, write_volatile};

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

use crate::slots::MappedFlash;

/// Start of the region (bank 2, sector 6).
pub const BASE: usize = 0x081C_0000;
/// Bytes of the region (sectors 6 and 7).
pub const LEN: usize = 256 * 1024;
const FIRST_SECTOR: u32 = 6;
const SECTOR: usize = 128 * 1024;
const FLASH_WORD: usize = 32;

const FLASH: usize = 0x5200_2000;
const KEYR2: usize = FLASH + 0x104;
const CR2: usize = FLASH + 0x10C;
const SR2: usize = FLASH + 0x110;
const CCR2: usize = FLASH + 0x114;
const CR_LOCK: u32 = 1 << 0;
const CR_PG: u32 = 1 << 1;
const CR_SER: u32 = 1 << 2;
const CR_PSIZE_X64: u32 = 0b11 << 4;
const CR_START: u32 = 1 << 7;
const SR_BSY: u32 = 1 << 0;
const SR_QW: u32 = 1 << 2;
/// WRPERR, PGSERR, STRBERR, INCERR, OPERR, RDPERR, RDSERR, SNECCERR, DBECCERR
const SR_ERRORS: u32 =
    1 << 17 | 1 << 18 | 1 << 19 | 1 << 21 | 1 << 22 | 1 << 23 | 1 << 24 | 1 << 25 | 1 << 26;

/// A refused or failed operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum H7FlashError {
    /// offset or length not a multiple of the unit
    NotAligned,
    /// outside sectors 6 and 7 of bank 2
    OutOfBounds,
    /// the controller set an error flag (`SR2` bits)
    Controller(u32),
}

impl NorFlashError for H7FlashError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            H7FlashError::NotAligned => NorFlashErrorKind::NotAligned,
            H7FlashError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            H7FlashError::Controller(_) => NorFlashErrorKind::Other,
        }
    }
}

/// Sectors 6 and 7 of bank 2.
pub struct Stm32h7Flash {
    _private: (),
}

/// # Safety
/// `a` is a flash controller register.
unsafe fn rd(a: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { read_volatile(a as *const u32) }
}

/// # Safety
/// `a` is a flash controller register.
unsafe fn wr(a: usize, v: u32) {
    // SAFETY: the caller's contract.
    unsafe { write_volatile(a as *mut u32, v) }
}

impl Stm32h7Flash {
    /// Unlocks bank 2 for the store.
    ///
    /// # Safety
    /// Must run on an STM32H743 whose bank-2 sectors 6 and 7 nothing else
    /// programs or erases, and whose code does not run from those sectors.
    pub unsafe fn new() -> Self {
        // SAFETY: RM0433's unlock sequence on the chip the caller names.
        unsafe {
            if rd(CR2) & CR_LOCK != 0 {
                wr(KEYR2, 0x4567_0123);
                wr(KEYR2, 0xCDEF_89AB);
            }
        }
        Stm32h7Flash { _private: () }
    }

    /// Waits for the controller, then reports and clears its error flags.
    fn wait(&self) -> Result<(), H7FlashError> {
        // SAFETY: controller registers (`new`'s contract).
        unsafe {
            while rd(SR2) & (SR_BSY | SR_QW) != 0 {}
            let err = rd(SR2) & SR_ERRORS;
            if err != 0 {
                wr(CCR2, err);
                return Err(H7FlashError::Controller(err));
            }
        }
        Ok(())
    }

    fn check(offset: u32, len: usize, unit: usize) -> Result<usize, H7FlashError> {
        let at = offset as usize;
        if !at.is_multiple_of(unit) || !len.is_multiple_of(unit) {
            return Err(H7FlashError::NotAligned);
        }
        if at.checked_add(len).is_none_or(|end| end > LEN) {
            return Err(H7FlashError::OutOfBounds);
        }
        Ok(at)
    }
}

impl ErrorType for Stm32h7Flash {
    type Error = H7FlashError;
}

impl ReadNorFlash for Stm32h7Flash {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), H7FlashError> {
        let at = Self::check(offset, bytes.len(), 1)?;
        bytes.copy_from_slice(&self.contents()[at..at + bytes.len()]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        LEN
    }
}

impl NorFlash for Stm32h7Flash {
    const WRITE_SIZE: usize = FLASH_WORD;
    const ERASE_SIZE: usize = SECTOR;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), H7FlashError> {
        let len = (to as usize)
            .checked_sub(from as usize)
            .ok_or(H7FlashError::NotAligned)?;
        let at = Self::check(from, len, SECTOR)?;
        for s in (at..at + len).step_by(SECTOR) {
            let snb = FIRST_SECTOR + (s / SECTOR) as u32;
            self.wait()?;
            // SAFETY: controller registers (`new`'s contract).
            unsafe {
                wr(CR2, CR_SER | CR_PSIZE_X64 | snb << 8);
                wr(CR2, CR_SER | CR_PSIZE_X64 | snb << 8 | CR_START);
            }
            let r = self.wait();
            // SAFETY: as above.
            unsafe { wr(CR2, 0) };
            r?;
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), H7FlashError> {
        let at = Self::check(offset, bytes.len(), FLASH_WORD)?;
        self.wait()?;
        // SAFETY: controller registers (`new`'s contract).
        unsafe { wr(CR2, CR_PG | CR_PSIZE_X64) };
        let mut r = Ok(());
        for (i, word) in bytes.chunks_exact(FLASH_WORD).enumerate() {
            let dst = (BASE + at + i * FLASH_WORD) as *mut u32;
            for (k, w) in word.chunks_exact(4).enumerate() {
                let v = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
                // SAFETY: `check` kept the flash word inside the region;
                // with PG set, stores to it program the flash.
                unsafe { write_volatile(dst.add(k), v) };
            }
            r = self.wait();
            if r.is_err() {
                break;
            }
        }
        // SAFETY: as above.
        unsafe { wr(CR2, 0) };
        r
    }
}

impl MappedFlash for Stm32h7Flash {
    fn contents(&self) -> &[u8] {
        // SAFETY: the region is memory-mapped flash, readable for the
        // program's life; it changes only through `erase`/`write`, which
        // take `&mut self` while this slice borrows `&self`.
        unsafe { core::slice::from_raw_parts(BASE as *const u8, LEN) }
    }
}
