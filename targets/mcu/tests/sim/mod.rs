//! A simulated NOR flash for the slot-store tests, with power cuts.
//!
//! NOR rules: erase sets a whole `E`-byte sector to 0xFF; a write covers
//! whole `W`-byte units at `W`-aligned offsets and can only clear bits
//! (`new = old & data`); a unit that is not erased cannot be written again
//! (the STM32H7 refuses it, its flash words carry ECC), so a store that
//! writes a unit twice fails here too.
//!
//! Power cuts: [`SimFlash::cut_at`] makes operation `k` (counting every
//! `write` call and every sector of an `erase` from power-on) the last one:
//! a write then programs a random number of its units and leaves the next
//! one partly programmed (random bits of it still 1), an erase leaves the
//! sector partly erased and partly random garbage. That operation and every
//! later one fail with [`SimError::PowerCut`] until [`SimFlash::reboot`].
//! The randomness comes from a seeded generator, so a failure reproduces.

use embedded_storage::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use graftnet_mcu::slots::MappedFlash;

/// SplitMix64: small, seeded, good enough to pick cut points and garbage.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimError {
    PowerCut,
    NotAligned,
    OutOfBounds,
    /// a write to a unit that is not erased
    NotErased,
}

impl NorFlashError for SimError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimError::NotAligned => NorFlashErrorKind::NotAligned,
            SimError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
            SimError::PowerCut | SimError::NotErased => NorFlashErrorKind::Other,
        }
    }
}

/// What an operation was, for choosing cut points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// a write of this many bytes at this offset
    Write { at: u32, len: u32 },
    /// the erase of the sector at this offset
    Erase { at: u32 },
}

#[derive(Clone)]
pub struct SimFlash<const E: usize, const W: usize> {
    pub mem: Vec<u8>,
    /// operations since power-on
    pub ops: u64,
    /// every operation since power-on (kept when `trace` is set)
    pub trace: Option<Vec<Op>>,
    cut_at: Option<u64>,
    dead: bool,
    rng: Rng,
    /// writes refused for a unit that was not erased (must stay 0)
    pub double_writes: u64,
}

impl<const E: usize, const W: usize> SimFlash<E, W> {
    /// A flash of `len` bytes, erased.
    pub fn new(len: usize, seed: u64) -> Self {
        SimFlash {
            mem: vec![0xff; len],
            ops: 0,
            trace: None,
            cut_at: None,
            dead: false,
            rng: Rng::new(seed),
            double_writes: 0,
        }
    }

    /// Power fails during operation `k` (0-based, from now).
    pub fn cut_at(&mut self, k: u64) {
        self.cut_at = Some(self.ops + k);
    }

    /// Power is back: operations work again, no cut is pending.
    pub fn reboot(&mut self) {
        self.dead = false;
        self.cut_at = None;
        self.ops = 0;
    }

    /// Whether power failed.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Counts an operation; `true` if it is the one power fails in.
    fn tick(&mut self, op: Op) -> Result<bool, SimError> {
        if self.dead {
            return Err(SimError::PowerCut);
        }
        if let Some(t) = self.trace.as_mut() {
            t.push(op);
        }
        let cut = self.cut_at == Some(self.ops);
        self.ops += 1;
        Ok(cut)
    }
}

impl<const E: usize, const W: usize> ErrorType for SimFlash<E, W> {
    type Error = SimError;
}

impl<const E: usize, const W: usize> ReadNorFlash for SimFlash<E, W> {
    const READ_SIZE: usize = 1;

    fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        if self.dead {
            return Err(SimError::PowerCut);
        }
        let s = offset as usize;
        let src = self
            .mem
            .get(s..s + bytes.len())
            .ok_or(SimError::OutOfBounds)?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.mem.len()
    }
}

impl<const E: usize, const W: usize> NorFlash for SimFlash<E, W> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        let (from, to) = (from as usize, to as usize);
        if from % E != 0 || to % E != 0 || from > to {
            return Err(SimError::NotAligned);
        }
        if to > self.mem.len() {
            return Err(SimError::OutOfBounds);
        }
        for sector in (from..to).step_by(E) {
            if self.tick(Op::Erase { at: sector as u32 })? {
                // Cut: the sector is part erased, part garbage.
                let split = self.rng.below(E as u64 + 1) as usize;
                for i in 0..E {
                    self.mem[sector + i] = if i < split { 0xff } else { self.rng.byte() };
                }
                self.dead = true;
                return Err(SimError::PowerCut);
            }
            self.mem[sector..sector + E].fill(0xff);
        }
        Ok(())
    }

    fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        let at = offset as usize;
        if !at.is_multiple_of(W) || !bytes.len().is_multiple_of(W) {
            return Err(SimError::NotAligned);
        }
        if at + bytes.len() > self.mem.len() {
            return Err(SimError::OutOfBounds);
        }
        let cut = self.tick(Op::Write {
            at: offset,
            len: bytes.len() as u32,
        })?;
        if self.mem[at..at + bytes.len()]
            .chunks(W)
            .any(|u| u.iter().any(|&b| b != 0xff))
        {
            self.double_writes += 1;
            return Err(SimError::NotErased);
        }
        let units = bytes.len() / W;
        let done = if cut {
            self.rng.below(units as u64 + 1) as usize
        } else {
            units
        };
        for (m, &b) in self.mem[at..at + done * W].iter_mut().zip(bytes) {
            *m &= b;
        }
        if cut {
            // The unit being programmed when power failed: some of its bits.
            if done < units {
                let unit = done * W..(done + 1) * W;
                for (m, &b) in self.mem[at + unit.start..at + unit.end]
                    .iter_mut()
                    .zip(&bytes[unit])
                {
                    *m &= b | self.rng.byte();
                }
            }
            self.dead = true;
            return Err(SimError::PowerCut);
        }
        Ok(())
    }
}

impl<const E: usize, const W: usize> MappedFlash for SimFlash<E, W> {
    fn contents(&self) -> &[u8] {
        &self.mem
    }
}
