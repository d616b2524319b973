//! Several tasks in one pass and a task with its own head, on the target:
//! the tiny network of the runtime's fuzz seeds (`runtime/fuzz/seeds`: a
//! MobileNetV3-small-like net with S/B, DW and logits patches and one that
//! brings its own FC-ReLU-FC head) on fixed int8 inputs. Every task is run
//! alone (`apply` + `run`) and all of them together (`Engine::run_tasks`),
//! the two must agree bit for bit, and a hash of every score must equal the
//! one `build.rs` computed with the same code on the build machine
//! ([`EXPECTED_HASH`]): results identical to the host's.
//!
//! Shared by the firmware and `build.rs` (`#[path]`), so the computation
//! has one definition.

use graftnet::{Backbone, ChannelRequant as Requant, Engine, Patch};

/// The tiny network (a fuzz seed; in flash).
pub static BACKBONE: &[u8] = include_bytes!("../../../runtime/fuzz/seeds/backbone/tiny.gnb");
/// Its patches: S/B, DW, logits, and one that brings its own head.
pub static PATCHES: [&[u8]; 4] = [
    include_bytes!("../../../runtime/fuzz/seeds/patch/tiny-sb.gnp"),
    include_bytes!("../../../runtime/fuzz/seeds/patch/tiny-dw.gnp"),
    include_bytes!("../../../runtime/fuzz/seeds/patch/tiny-logits.gnp"),
    include_bytes!("../../../runtime/fuzz/seeds/patch/tiny-head.gnp"),
];
/// Inputs run per task.
pub const INPUTS: u32 = 4;

#[cfg(target_os = "none")]
include!(concat!(env!("OUT_DIR"), "/tasks_expected.rs"));

/// What a run found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// task results computed alone
    pub results: u32,
    /// of them, equal to the same task's result from `run_tasks`
    pub identical: u32,
    /// FNV-1a (64-bit) over every task's scores, in order
    pub hash: u64,
    /// shared prefix of the base + logits + head `run_tasks` call (ops)
    pub shared_ops: u32,
    /// failures: parse, engine, apply, or the two `run_tasks` calls
    /// disagreeing
    pub errors: u32,
}

fn fnv(mut h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Input `k`: a fixed pseudo-random int8 image.
fn input(k: u32, i: usize) -> i8 {
    ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(k * 977) >> 13) as i8
}

/// Runs the check with the caller's memory: `arena` and `params` at least
/// `Backbone::engine_sizes` of the seeds, `branch` at least the arena,
/// `input_buf` the input tensor's length.
pub fn run(
    arena: &mut [i8],
    params: &mut [Requant],
    branch: &mut [i8],
    input_buf: &mut [i8],
) -> Outcome {
    let mut o = Outcome {
        hash: 0xcbf2_9ce4_8422_2325,
        ..Outcome::default()
    };
    let Ok(bb) = Backbone::parse(BACKBONE) else {
        o.errors += 1;
        return o;
    };
    let mut patches = [None; 4];
    for (slot, blob) in patches.iter_mut().zip(PATCHES) {
        match Patch::parse(blob) {
            Ok(p) => *slot = Some(p),
            Err(_) => o.errors += 1,
        }
    }
    let Ok(mut e) = Engine::new(&bb, arena, params) else {
        o.errors += 1;
        return o;
    };
    // Every task: the base (None) and the four patches.
    let tasks: [Option<Patch<'_>>; 5] = [None, patches[0], patches[1], patches[2], patches[3]];
    let n = bb.input().len();
    let Some(x) = input_buf.get_mut(..n) else {
        o.errors += 1;
        return o;
    };
    for k in 0..INPUTS {
        for (i, v) in x.iter_mut().enumerate() {
            *v = input(k, i);
        }
        // Together first: `run_tasks` leaves the active task (the base).
        // All five (the S/B task changes the first layer: nothing shared),
        // then base, logits and head (everything before the head shared).
        let mut together = [0u64; 5];
        let r = e.run_tasks(x, &tasks, branch, |j, s| {
            if let Some(t) = together.get_mut(j) {
                *t = fnv(
                    0xcbf2_9ce4_8422_2325,
                    s.quantized().iter().map(|&q| q as u8),
                );
            }
        });
        if r.is_err() {
            o.errors += 1;
        }
        let pair = [tasks[0], tasks[3], tasks[4]];
        let mut again = [0u64; 3];
        let r = e.run_tasks(x, &pair, branch, |j, s| {
            if let Some(t) = again.get_mut(j) {
                *t = fnv(
                    0xcbf2_9ce4_8422_2325,
                    s.quantized().iter().map(|&q| q as u8),
                );
            }
        });
        match r {
            Ok(sp) => o.shared_ops = sp.ops as u32,
            Err(_) => o.errors += 1,
        }
        if again != [together[0], together[3], together[4]] {
            o.errors += 1;
        }
        for (j, t) in tasks.iter().enumerate() {
            let applied = match t {
                Some(p) => e.apply(*p).is_ok(),
                None => {
                    e.reset();
                    true
                }
            };
            if !applied {
                o.errors += 1;
                continue;
            }
            let Ok(s) = e.run(x) else {
                o.errors += 1;
                continue;
            };
            let alone = fnv(
                0xcbf2_9ce4_8422_2325,
                s.quantized().iter().map(|&q| q as u8),
            );
            o.hash = fnv(o.hash, s.quantized().iter().map(|&q| q as u8));
            o.results += 1;
            if together.get(j) == Some(&alone) {
                o.identical += 1;
            }
        }
        e.reset();
    }
    o
}

/// Runs the check on the target and prints one line to `out`; `true` when
/// every task alone equals its `run_tasks` result and the scores hash to
/// what the build machine computed.
#[cfg(target_os = "none")]
pub fn check<W: core::fmt::Write>(
    out: &mut W,
    arena: &mut [i8],
    params: &mut [Requant],
    branch: &mut [i8],
    input: &mut [i8],
) -> bool {
    let o = run(arena, params, branch, input);
    let passed = o.errors == 0
        && o.results == EXPECTED_RESULTS
        && o.identical == o.results
        && o.hash == EXPECTED_HASH;
    let _ = writeln!(
        out,
        "tasks: {} results (5 tasks incl. one with its own head, {INPUTS} inputs), {} equal to run_tasks (shared prefix {} ops), hash {:#018x} (host {EXPECTED_HASH:#018x}): {}",
        o.results,
        o.identical,
        o.shared_ops,
        o.hash,
        if passed { "identical to the host" } else { "FAILED" }
    );
    passed
}
