//! Board UARTs as `embedded_io::{Read, Write}`, polled (no interrupts, no
//! DMA): what the service ([`crate::service`]) speaks the device protocol
//! over.
//!
//! - [`cmsdk`]: the ARM CMSDK APB UART of the MPS2 boards, which qemu's
//!   `mps2-an386` and `mps2-an500` model (UART0 at `0x4000_4000`, on
//!   qemu's first `-serial`). Tested under qemu.
//! - [`stm32h7`]: USART3 of an STM32H743 (the NUCLEO-H743ZI2's ST-LINK
//!   virtual COM port, PD8/PD9). Register-level, built but **not tested**:
//!   no board here.
//!
//! `read` blocks until at least one byte arrived and then returns what is
//! there without waiting further, as embedded-io's contract asks; `write`
//! blocks per byte on a full transmitter.

pub mod cmsdk;
pub mod stm32h7;

/// A UART never fails a read or write here (overruns are cleared, and a
/// lost byte shows up as a malformed frame, which the protocol answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Never {}

impl core::fmt::Display for Never {
    fn fmt(&self, _: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {}
    }
}

impl core::error::Error for Never {}

impl embedded_io::Error for Never {
    fn kind(&self) -> embedded_io::ErrorKind {
        match *self {}
    }
}
