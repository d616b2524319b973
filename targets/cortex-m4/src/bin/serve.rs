//! The device service for a Cortex-M4 under qemu mps2-an386: the device
//! protocol (`targets/protocol/PROTOCOL.md`) on UART0, task patches in the
//! A/B slot store over the PATCHES region (`graftnet_mcu::service`).
//! Start it with `targets/mcu-serve.sh EXPORT SOCKET m4`.
//!
//! qemu models the mps2 code memory as RAM, so the slot store writes the
//! PATCHES region in place through `graftnet_mcu::flash::ram` with the
//! STM32H743's geometry (128 KB sectors, 32-byte flash words). The boot
//! banner goes to semihosting; a setup failure exits with failure.
#![no_std]
#![no_main]

use core::fmt::Write;

use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hio};
use graftnet_mcu::flash::ram::RamFlash;
use graftnet_mcu::uart::cmsdk::{CmsdkUart, UART0_BASE};
use graftnet_mcu::{ChannelRequant, ARENA_LEN, PARAMS_LEN};
use panic_semihosting as _;

const BOARD: &str = env!("GRAFTNET_BOARD");
/// The mps2-an386 system clock.
const CORE_HZ: u32 = 25_000_000;

#[entry]
fn main() -> ! {
    let arena = cortex_m::singleton!(: [i8; ARENA_LEN] = [0; ARENA_LEN]).unwrap();
    let params = cortex_m::singleton!(: [ChannelRequant; PARAMS_LEN] = [ChannelRequant { mult: 0, shift: 0, bias: 0 }; PARAMS_LEN]).unwrap();
    let p = cortex_m::Peripherals::take().unwrap();
    graftnet_mcu::clock::start(p.SYST, CORE_HZ);
    // SAFETY: qemu's code memory is RAM; the PATCHES region is written by
    // the store alone (the self-test's read-only view is not used here).
    let flash = unsafe {
        let (start, len) = graftnet_mcu::patch_region_mut();
        RamFlash::<{ 128 * 1024 }, 32>::new(start, len)
    };
    // SAFETY: UART0 of the mps2 map, used by nothing else.
    let mut uart = unsafe { CmsdkUart::new(UART0_BASE, CORE_HZ, 115_200) };
    let mut log = hio::hstdout().ok();
    let mut sink = Log(log.as_mut());
    let e = graftnet_mcu::service::run(
        flash,
        &mut uart,
        arena,
        params,
        BOARD,
        graftnet_mcu::clock::micros,
        &mut sink,
    );
    let _ = writeln!(sink, "graftnet service: {e}");
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Semihosting output, if the host gives any.
struct Log<'a>(Option<&'a mut hio::HostStream>);

impl Write for Log<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if let Some(o) = self.0.as_mut() {
            o.write_str(s)?;
        }
        Ok(())
    }
}

#[exception]
fn SysTick() {
    graftnet_mcu::clock::tick();
}
