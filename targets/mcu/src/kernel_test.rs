//! The kernel self-test on the target: `graftnet::kernels::selftest` (every
//! entry against the scalar reference, bit for bit, on shape tables and
//! seeded random cases) for every kernel table of this build besides the
//! reference, and a check that `Kernels::best()` picks the fastest one. On
//! a Cortex-M4 or M7 that is the `dsp` table; a build without it fails,
//! because the test would otherwise pass with nothing tested.
//!
//! [`bench`] then times one inference of the base task with each table on
//! a clock the board supplies (SysTick on the boards), and checks that the
//! tables agree on the scores.

use core::fmt::Write;

use graftnet::kernels::selftest::{self, Scratch};
use graftnet::kernels::Kernels;
use graftnet::{Backbone, ChannelRequant, Engine};

use crate::{sample_input_i8, BACKBONE, INPUT_LEN, MAX_CLASSES, SAMPLES};

/// The table a Cortex-M4/M7 build must pick.
pub const EXPECTED_BEST: &str = "dsp";

/// Runs the self-test on every table but the reference, printing to `out`;
/// `true` if every case of every table matched and [`Kernels::best`] is
/// [`EXPECTED_BEST`].
pub fn run<W: Write>(out: &mut W, board: &str, scratch: &mut Scratch) -> bool {
    let best = Kernels::best();
    let _ = write!(out, "graftnet kernel self-test on {board}: tables");
    for k in Kernels::available() {
        let _ = write!(out, " {}", k.name);
    }
    let _ = writeln!(out, "; best: {}", best.name);
    let mut passed = best.name == EXPECTED_BEST;
    if !passed {
        let _ = writeln!(
            out,
            "  Kernels::best() is '{}', expected '{EXPECTED_BEST}': FAILED",
            best.name
        );
    }
    for k in Kernels::available().filter(|k| k.name != "scalar") {
        let n = &k.names;
        let _ = writeln!(
            out,
            "  {}: {}, {}, {}, {}",
            k.name, n.pointwise, n.conv, n.fc, n.dwconv
        );
        match selftest::run(k, scratch) {
            Ok(sum) => {
                let _ = writeln!(out, "  {}: {sum} identical to scalar", k.name);
            }
            Err(e) => {
                let _ = writeln!(out, "  MISMATCH: {e}");
                passed = false;
            }
        }
    }
    let _ = writeln!(
        out,
        "kernel self-test {}",
        if passed { "passed" } else { "FAILED" }
    );
    passed
}

/// Times one inference of the base task with each table (after one
/// untimed run); `ticks` reads a down-counting 24-bit clock (SysTick).
/// `true` if every table gives the same scores.
pub fn bench<W: Write>(
    out: &mut W,
    arena: &mut [i8],
    params: &mut [ChannelRequant],
    ticks: &mut dyn FnMut() -> u32,
) -> bool {
    let bb = match Backbone::parse(&BACKBONE.0) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(out, "backbone: {e}");
            return false;
        }
    };
    let mut engine = match Engine::new(&bb, arena, params) {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(out, "engine: {e}");
            return false;
        }
    };
    let i = SAMPLES.iter().position(|s| s.task == "base").unwrap_or(0);
    let mut x = [0i8; INPUT_LEN];
    for (d, &s) in x.iter_mut().zip(sample_input_i8(i)) {
        *d = s as i8;
    }
    let mut first = [0i8; MAX_CLASSES];
    let mut same = true;
    let mut scalar_ticks = 0;
    for (n, k) in Kernels::available().enumerate() {
        engine.set_kernels(k);
        if engine.run(&x).is_err() {
            let _ = writeln!(out, "  {}: inference failed", k.name);
            return false;
        }
        bench_mark();
        let t0 = ticks();
        let scores = match engine.run(&x) {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out, "  {}: {e}", k.name);
                return false;
            }
        };
        let dt = t0.wrapping_sub(ticks()) & 0x00ff_ffff;
        bench_mark();
        let q = scores.quantized();
        if n == 0 {
            first[..q.len()].copy_from_slice(q);
            scalar_ticks = dt;
        } else {
            same &= first[..q.len()] == *q;
        }
        let _ = writeln!(
            out,
            "  inference (base task, sample #{}) with {:<7}: {:>9} SysTick ticks{}",
            SAMPLES[i].index,
            k.name,
            dt,
            if n > 0 && dt > 0 {
                // one decimal, integers only
                let r = scalar_ticks as u64 * 10 / dt as u64;
                Speedup(r)
            } else {
                Speedup(0)
            }
        );
    }
    if !same {
        let _ = writeln!(out, "  the tables' scores differ: FAILED");
    }
    same
}

/// Called right before and after each timed inference: an instruction
/// counter can stop at its address (a qemu TCG plugin, say) and count the
/// instructions in between.
#[inline(never)]
#[no_mangle]
pub extern "C" fn graftnet_bench_mark() {
    core::hint::black_box(());
}

fn bench_mark() {
    graftnet_bench_mark();
}

/// `x` tenths, printed as ", 1.2x the scalar table's speed" (nothing for 0).
struct Speedup(u64);

impl core::fmt::Display for Speedup {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.0 == 0 {
            return Ok(());
        }
        write!(f, " ({}.{}x fewer than scalar)", self.0 / 10, self.0 % 10)
    }
}
