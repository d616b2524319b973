//! The ARM CMSDK APB UART (MPS2 boards; qemu `mps2-an386`/`mps2-an500`).
//!
//! Registers (32-bit, from the base): `DATA` 0x00, `STATE` 0x04 (bit 0:
//! transmit buffer full, bit 1: receive buffer full), `CTRL` 0x08 (bit 0:
//! transmit enable, bit 1: receive enable), `INTSTATUS` 0x0C, `BAUDDIV`
//! 0x10 (clock / baud, at least 16). qemu moves bytes as fast as the host
//! socket does; the baud divisor only matters on hardware.

use core::ptr::{read_volatile, write_volatile};

use super::Never;

/// UART0 of the MPS2 memory map.
pub const UART0_BASE: usize = 0x4000_4000;

const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const STATE_RX_FULL: u32 = 1 << 1;
const CTRL_TX_EN: u32 = 1 << 0;
const CTRL_RX_EN: u32 = 1 << 1;

/// A CMSDK UART, polled.
pub struct CmsdkUart {
    base: usize,
}

impl CmsdkUart {
    /// Enables the UART at `base` with `clock_hz / baud` as divisor.
    ///
    /// # Safety
    /// `base` must be a CMSDK UART's register block that nothing else uses
    /// while this value lives.
    pub unsafe fn new(base: usize, clock_hz: u32, baud: u32) -> Self {
        let u = CmsdkUart { base };
        let div = (clock_hz / baud.max(1)).max(16);
        // SAFETY: the caller gives us the register block (above).
        unsafe {
            u.wr(BAUDDIV, div);
            u.wr(CTRL, CTRL_TX_EN | CTRL_RX_EN);
        }
        u
    }

    /// # Safety
    /// `off` is one of the registers above.
    unsafe fn rd(&self, off: usize) -> u32 {
        // SAFETY: `base + off` is a register of the block `new` was given.
        unsafe { read_volatile((self.base + off) as *const u32) }
    }

    /// # Safety
    /// `off` is one of the registers above.
    unsafe fn wr(&self, off: usize, v: u32) {
        // SAFETY: as for `rd`.
        unsafe { write_volatile((self.base + off) as *mut u32, v) }
    }

    fn rx_ready(&self) -> bool {
        // SAFETY: STATE is a register of the block.
        unsafe { self.rd(STATE) & STATE_RX_FULL != 0 }
    }
}

impl embedded_io::ErrorType for CmsdkUart {
    type Error = Never;
}

impl embedded_io::Read for CmsdkUart {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Never> {
        if buf.is_empty() {
            return Ok(0);
        }
        while !self.rx_ready() {}
        let mut n = 0;
        while n < buf.len() && self.rx_ready() {
            // SAFETY: DATA is a register of the block; reading it takes the byte.
            buf[n] = unsafe { self.rd(DATA) } as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for CmsdkUart {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Never> {
        for &b in buf {
            // SAFETY: STATE and DATA are registers of the block.
            unsafe {
                while self.rd(STATE) & STATE_TX_FULL != 0 {}
                self.wr(DATA, b as u32);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Never> {
        Ok(())
    }
}
