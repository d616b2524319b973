//! The device service for a Cortex-M7: the device protocol
//! (`targets/protocol/PROTOCOL.md`) on the board UART, task patches in the
//! A/B slot store over the PATCHES region (`graftnet_mcu::service`).
//!
//! - qemu `mps2-an500` (default; `targets/mcu-serve.sh EXPORT SOCKET m7`):
//!   CMSDK UART0, the PATCHES region written in place as RAM with the
//!   STM32H743's geometry (`graftnet_mcu::flash::ram`), banner over
//!   semihosting.
//! - STM32H743 (`--config stm32h743.toml`, cfg `graftnet_stm32h743` from
//!   build.rs): USART3 (the NUCLEO's virtual COM port, 115200 8N1, on the
//!   reset 64 MHz HSI clock) and the flash controller on bank 2 sectors 6-7.
//!   Both drivers are register-level and **untested on silicon**; no banner
//!   (semihosting faults without a debugger).
#![no_std]
#![no_main]

use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::debug;
use graftnet_mcu::{ChannelRequant, ARENA_LEN, PARAMS_LEN};
use panic_semihosting as _;

const BOARD: &str = env!("GRAFTNET_BOARD");
/// The core clock at reset: mps2-an500's 25 MHz, the STM32H743's 64 MHz HSI.
#[cfg(not(graftnet_stm32h743))]
const CORE_HZ: u32 = 25_000_000;
#[cfg(graftnet_stm32h743)]
const CORE_HZ: u32 = 64_000_000;

#[entry]
fn main() -> ! {
    let arena = cortex_m::singleton!(: [i8; ARENA_LEN] = [0; ARENA_LEN]).unwrap();
    let params = cortex_m::singleton!(: [ChannelRequant; PARAMS_LEN] = [ChannelRequant { mult: 0, shift: 0, bias: 0 }; PARAMS_LEN]).unwrap();
    let p = cortex_m::Peripherals::take().unwrap();
    graftnet_mcu::clock::start(p.SYST, CORE_HZ);
    #[cfg(not(graftnet_stm32h743))]
    let e = {
        use graftnet_mcu::flash::ram::RamFlash;
        use graftnet_mcu::uart::cmsdk::{CmsdkUart, UART0_BASE};
        // SAFETY: qemu's code memory is RAM; the PATCHES region is written by
        // the store alone (the self-test's read-only view is not used here).
        let flash = unsafe {
            let (start, len) = graftnet_mcu::patch_region_mut();
            RamFlash::<{ 128 * 1024 }, 32>::new(start, len)
        };
        // SAFETY: UART0 of the mps2 map, used by nothing else.
        let mut uart = unsafe { CmsdkUart::new(UART0_BASE, CORE_HZ, 115_200) };
        let mut log = Log(cortex_m_semihosting::hio::hstdout().ok());
        let e = graftnet_mcu::service::run(
            flash,
            &mut uart,
            arena,
            params,
            BOARD,
            graftnet_mcu::clock::micros,
            &mut log,
        );
        use core::fmt::Write;
        let _ = writeln!(log, "graftnet service: {e}");
        e
    };
    #[cfg(graftnet_stm32h743)]
    let e = {
        use graftnet_mcu::flash::stm32h7::Stm32h7Flash;
        use graftnet_mcu::uart::stm32h7::Stm32h7Usart3;
        // SAFETY: an STM32H743 running from bank 1 and bank 2 sectors 0-5
        // (memory-stm32h743.x); sectors 6-7 belong to the store alone.
        let flash = unsafe { Stm32h7Flash::new() };
        // SAFETY: USART3 and PD8/PD9 are used by nothing else.
        let mut uart = unsafe { Stm32h7Usart3::new(CORE_HZ, 115_200) };
        graftnet_mcu::service::run(
            flash,
            &mut uart,
            arena,
            params,
            BOARD,
            graftnet_mcu::clock::micros,
            &mut NoLog,
        )
    };
    let _ = e;
    debug::exit(debug::EXIT_FAILURE);
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Semihosting output, if the host gives any.
#[cfg(not(graftnet_stm32h743))]
struct Log(Option<cortex_m_semihosting::hio::HostStream>);

#[cfg(not(graftnet_stm32h743))]
impl core::fmt::Write for Log {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        if let Some(o) = self.0.as_mut() {
            o.write_str(s)?;
        }
        Ok(())
    }
}

/// No console on the real board.
#[cfg(graftnet_stm32h743)]
struct NoLog;

#[cfg(graftnet_stm32h743)]
impl core::fmt::Write for NoLog {
    fn write_str(&mut self, _: &str) -> core::fmt::Result {
        Ok(())
    }
}

#[exception]
fn SysTick() {
    graftnet_mcu::clock::tick();
}
