//! USART3 of an STM32H743 (NUCLEO-H743ZI2: the ST-LINK virtual COM port on
//! PD8 = TX, PD9 = RX, alternate function 7), polled, 8N1.
//!
//! **Not tested on silicon** (no board here); it follows RM0433: RCC
//! enables GPIOD (`AHB4ENR` bit 3) and USART3 (`APB1LENR` bit 18), the pins
//! go to AF7, `BRR` = kernel clock / baud (the reset kernel clock is the
//! 64 MHz HSI through PCLK1), `CR1` = UE | RE | TE. An overrun (`ISR.ORE`)
//! is cleared (`ICR.ORECF`) so reception goes on; the lost byte shows up
//! as a malformed frame, which the protocol answers.

use core::ptr::{read_volatile, write_volatile};

use super::Never;

const RCC: usize = 0x5802_4400;
const RCC_AHB4ENR: usize = RCC + 0x0E0;
const RCC_APB1LENR: usize = RCC + 0x0E8;
const GPIOD: usize = 0x5802_0C00;
const GPIO_MODER: usize = 0x00;
const GPIO_AFRH: usize = 0x24;
/// USART3 registers.
pub const USART3_BASE: usize = 0x4000_4800;
const CR1: usize = 0x00;
const BRR: usize = 0x0C;
const ISR: usize = 0x1C;
const ICR: usize = 0x20;
const RDR: usize = 0x24;
const TDR: usize = 0x28;
const ISR_ORE: u32 = 1 << 3;
const ISR_RXNE: u32 = 1 << 5;
const ISR_TXE: u32 = 1 << 7;

/// # Safety
/// `a` is a mapped peripheral register.
unsafe fn rd(a: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { read_volatile(a as *const u32) }
}

/// # Safety
/// `a` is a mapped peripheral register.
unsafe fn wr(a: usize, v: u32) {
    // SAFETY: the caller's contract.
    unsafe { write_volatile(a as *mut u32, v) }
}

/// USART3 on PD8/PD9, polled.
pub struct Stm32h7Usart3 {
    _private: (),
}

impl Stm32h7Usart3 {
    /// Clocks and configures USART3 and its pins for `baud` with a USART
    /// kernel clock of `kernel_hz`.
    ///
    /// # Safety
    /// Must run on an STM32H743 with nothing else using RCC's `AHB4ENR` /
    /// `APB1LENR`, GPIOD pins 8 and 9, or USART3 at the same time.
    pub unsafe fn new(kernel_hz: u32, baud: u32) -> Self {
        // SAFETY: the registers of RM0433 on the chip the caller names.
        unsafe {
            wr(RCC_AHB4ENR, rd(RCC_AHB4ENR) | 1 << 3);
            wr(RCC_APB1LENR, rd(RCC_APB1LENR) | 1 << 18);
            let _ = rd(RCC_APB1LENR); // the clock is on before the next access
            let moder = rd(GPIOD + GPIO_MODER) & !(0xF << 16);
            wr(GPIOD + GPIO_MODER, moder | 0b1010 << 16);
            let afrh = rd(GPIOD + GPIO_AFRH) & !0xFF;
            wr(GPIOD + GPIO_AFRH, afrh | 0x77);
            wr(USART3_BASE + CR1, 0);
            wr(USART3_BASE + BRR, kernel_hz / baud.max(1));
            wr(USART3_BASE + CR1, 1 | 1 << 2 | 1 << 3);
        }
        Stm32h7Usart3 { _private: () }
    }

    fn isr(&self) -> u32 {
        // SAFETY: USART3 was set up by `new`.
        let isr = unsafe { rd(USART3_BASE + ISR) };
        if isr & ISR_ORE != 0 {
            // SAFETY: as above; ICR bit 3 clears the overrun.
            unsafe { wr(USART3_BASE + ICR, ISR_ORE) };
        }
        isr
    }
}

impl embedded_io::ErrorType for Stm32h7Usart3 {
    type Error = Never;
}

impl embedded_io::Read for Stm32h7Usart3 {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Never> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.isr() & ISR_RXNE == 0 {}
        let mut n = 0;
        while n < buf.len() && self.isr() & ISR_RXNE != 0 {
            // SAFETY: USART3 was set up by `new`; reading RDR takes the byte.
            buf[n] = unsafe { rd(USART3_BASE + RDR) } as u8;
            n += 1;
        }
        Ok(n)
    }
}

impl embedded_io::Write for Stm32h7Usart3 {
    fn write(&mut self, buf: &[u8]) -> Result<usize, Never> {
        for &b in buf {
            while self.isr() & ISR_TXE == 0 {}
            // SAFETY: USART3 was set up by `new`.
            unsafe { wr(USART3_BASE + TDR, b as u32) };
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> Result<(), Never> {
        Ok(())
    }
}
