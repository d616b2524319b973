//! The PATCHES flash region as an `embedded-storage` NorFlash that the slot
//! store ([`crate::slots`]) writes.
//!
//! - [`ram`]: memory that behaves as NOR flash (erase to 0xFF, writes only
//!   clear bits, whole write units). Under qemu the PATCHES region lies in
//!   the mps2 boards' code memory, which qemu models as RAM, so the firmware
//!   writes it in place with the geometry of the STM32H743 (128 KB sectors,
//!   32-byte flash words). Writes do not survive a qemu restart, as they
//!   would not survive a reflash.
//! - [`stm32h7`]: the STM32H743's flash controller, bank 2 sectors 6 and 7.
//!   Register-level and **not tested on silicon**; it builds with the
//!   STM32H743 layout (`--config stm32h743.toml`).
//!
//! Both are also readable in place ([`crate::slots::MappedFlash`]): the
//! engine runs patches from flash without copies.

pub mod ram;
pub mod stm32h7;
