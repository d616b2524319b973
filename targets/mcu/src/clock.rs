//! A microsecond clock from SysTick, for the service's `us` figures.
//!
//! [`start`] runs SysTick from the core clock with a 1 ms period and enables
//! its exception; the board's `SysTick` exception handler calls [`tick`].
//! [`micros`] is the milliseconds counted plus the elapsed part of the
//! current period. Under qemu the figures are virtual time, not silicon
//! time.

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;

static MILLIS: AtomicU32 = AtomicU32::new(0);
static TICKS_PER_US: AtomicU32 = AtomicU32::new(1);

/// Starts the clock with a core clock of `core_hz`.
pub fn start(mut syst: SYST, core_hz: u32) {
    let per_ms = (core_hz / 1000).clamp(1, 0x0100_0000);
    TICKS_PER_US.store((core_hz / 1_000_000).max(1), Ordering::Relaxed);
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(per_ms - 1);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// One SysTick period passed (call from the `SysTick` exception).
pub fn tick() {
    MILLIS.fetch_add(1, Ordering::Relaxed);
}

/// Microseconds since [`start`].
pub fn micros() -> u64 {
    loop {
        let ms = MILLIS.load(Ordering::Acquire);
        let reload = SYST::get_reload();
        let cur = SYST::get_current();
        if MILLIS.load(Ordering::Acquire) == ms {
            let into = (reload - cur.min(reload)) / TICKS_PER_US.load(Ordering::Relaxed);
            return ms as u64 * 1000 + into as u64;
        }
    }
}
