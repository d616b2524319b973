//! graftnet on a Cortex-M MCU: what the board firmwares
//! (`targets/cortex-m4`, `targets/cortex-m7`) share.
//!
//! Memory map (the boards' `memory.x`):
//! - **FLASH**: code, and the backbone ([`BACKBONE`], section
//!   `.rodata.graftnet_backbone`, 64-byte aligned), used in place: the engine
//!   reads weights straight from flash, nothing is copied to RAM.
//! - **PATCHES**: a separate flash region holding the patch partition
//!   ([`partition`]): a table and every task's `.gnp`. The firmware reads it
//!   through the region's linker symbols ([`patch_region`]), not through the
//!   image compiled in, so a partition flashed on its own
//!   (`patches.bin`) replaces the tasks without touching the firmware.
//! - **RAM**: the activation arena ([`ARENA_LEN`] bytes) and the parameter
//!   table ([`PARAMS_LEN`] entries), sizes taken from the backbone at build
//!   time, plus the stack. No heap.
//!
//! `build.rs` compiles in the export named by `GRAFTNET_EXPORT_DIR` and the
//! host's results on sample inputs; [`selftest`] runs every task on them on
//! the target and compares bit for bit; [`kernel_test`] checks the kernel
//! tables against the scalar reference.
//!
//! On the host (`cargo test` in this folder) the crate builds without an
//! export: only [`partition`] and [`slots`], the A/B slot store, which its
//! power-cut tests (`tests/slots.rs`) exercise on a simulated NOR flash.
#![no_std]

#[cfg(target_os = "none")]
mod board;
#[cfg(target_os = "none")]
pub mod clock;
#[cfg(target_os = "none")]
pub mod flash;
#[cfg(target_os = "none")]
pub mod kernel_test;
pub mod partition;
#[cfg(target_os = "none")]
pub mod selftest;
#[cfg(target_os = "none")]
pub mod service;
pub mod slots;
#[cfg(target_os = "none")]
pub mod stack;
#[cfg(target_os = "none")]
pub mod tasks_test;
#[cfg(target_os = "none")]
pub mod uart;

#[cfg(target_os = "none")]
pub use board::*;
#[cfg(target_os = "none")]
pub(crate) use board::{sample_input, sample_input_i8, sample_scores_i8};
pub use graftnet::{kernels, ChannelRequant};
