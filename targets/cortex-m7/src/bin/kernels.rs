//! Kernel self-test firmware for a Cortex-M7: every kernel table of the build
//! (the `dsp` table) against the scalar reference, bit for bit
//! (`graftnet_mcu::kernel_test`), then one timed inference per table
//! (SysTick; under qemu with `-icount shift=0` a tick is a fixed number of
//! instructions, not silicon time). Prints over semihosting and exits with
//! success only if every case matched.
#![no_std]
#![no_main]

use cortex_m::peripheral::syst::SystClkSource;
use cortex_m::peripheral::SYST;
use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hio};
use graftnet_mcu::kernels::selftest::Scratch;
use graftnet_mcu::{ChannelRequant, ARENA_LEN, PARAMS_LEN};
use panic_semihosting as _;

const BOARD: &str = env!("GRAFTNET_BOARD");

#[entry]
fn main() -> ! {
    let scratch = cortex_m::singleton!(: Scratch = Scratch::new()).unwrap();
    let arena = cortex_m::singleton!(: [i8; ARENA_LEN] = [0; ARENA_LEN]).unwrap();
    let params = cortex_m::singleton!(: [ChannelRequant; PARAMS_LEN] = [ChannelRequant { mult: 0, shift: 0, bias: 0 }; PARAMS_LEN]).unwrap();
    let mut syst = cortex_m::Peripherals::take().unwrap().SYST;
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(0x00ff_ffff);
    syst.clear_current();
    syst.enable_counter();
    let mut passed = false;
    if let Ok(mut out) = hio::hstdout() {
        passed = graftnet_mcu::kernel_test::run(&mut out, BOARD, scratch);
        // Several tasks in one pass and a task with its own head, against
        // the build machine's results (graftnet_mcu::tasks_test).
        use graftnet_mcu::tasks_test as tt;
        let t_arena = cortex_m::singleton!(: [i8; tt::ARENA] = [0; tt::ARENA]).unwrap();
        let t_branch = cortex_m::singleton!(: [i8; tt::ARENA] = [0; tt::ARENA]).unwrap();
        let t_input = cortex_m::singleton!(: [i8; tt::INPUT] = [0; tt::INPUT]).unwrap();
        let t_params = cortex_m::singleton!(: [ChannelRequant; tt::PARAMS] = [ChannelRequant { mult: 0, shift: 0, bias: 0 }; tt::PARAMS]).unwrap();
        passed &= tt::check(&mut out, t_arena, t_params, t_branch, t_input);
        passed &= graftnet_mcu::kernel_test::bench(&mut out, arena, params, &mut SYST::get_current);
    }
    debug::exit(if passed {
        debug::EXIT_SUCCESS
    } else {
        debug::EXIT_FAILURE
    });
    #[allow(clippy::empty_loop)]
    loop {}
}
