//! graftnet self-test firmware for a Cortex-M4 (qemu mps2-an386).
//!
//! Runs every task of the compiled-in export on the host's sample inputs,
//! prints the classes over semihosting and exits with success only if every
//! result is bit-identical to the host runtime's. The program itself is
//! `graftnet_mcu::selftest`; this file owns the memory: the arena and the
//! parameter table are `singleton!` buffers in .bss, sized by build-time
//! constants taken from the backbone. The stack is painted at reset
//! (cortex-m-rt `paint-stack`) so its high-water mark can be reported.
#![no_std]
#![no_main]

use core::fmt::Write;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio};
use graftnet_mcu::{ChannelRequant, ARENA_LEN, PARAMS_LEN};
use panic_semihosting as _;

const BOARD: &str = env!("GRAFTNET_BOARD");

#[entry]
fn main() -> ! {
    let arena = cortex_m::singleton!(: [i8; ARENA_LEN] = [0; ARENA_LEN]).unwrap();
    let params = cortex_m::singleton!(: [ChannelRequant; PARAMS_LEN] = [ChannelRequant { mult: 0, shift: 0, bias: 0 }; PARAMS_LEN]).unwrap();
    let mut passed = false;
    if let Ok(mut out) = hio::hstdout() {
        passed = graftnet_mcu::selftest::run(&mut out, BOARD, arena, params).passed();
        let (used, size) = graftnet_mcu::stack::high_water();
        let _ = writeln!(out, "stack: {used} of {size} bytes used");
    }
    debug::exit(if passed {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}
