//! Runs inferences of an exported backbone (and optional patch) with a
//! chosen kernel table: the program `BENCHMARKS.md` counts aarch64
//! instructions of (under `aarch64-icount`) and times natively.
//!
//! ```text
//! cargo run --release -p graftnet --features std --example infer -- \
//!     BACKBONE.gnb [--patch TASK.gnp] [--kernels NAME] [--runs N] [--skip ENTRIES]
//! ```
//!
//! The input is a fixed pseudo-random int8 tensor. Prints the table, the
//! argmax and a checksum of the scores (identical for every table), and the
//! wall time per run. Instruction counts per inference: run with `--runs 1`
//! and `--runs 2` and subtract (start-up, file reading and parsing cancel).
//!
//! `--skip pointwise,conv,dwconv,fc` (any subset) replaces those entries of
//! the table by a kernel that writes nothing: the scores are then wrong, but
//! the difference in instructions is what the skipped kernels cost (a
//! profile by kernel without a profiler; `--skip all` leaves the engine's
//! own scalar ops).

use std::time::Instant;

use graftnet::kernels::{ConvGeom, Kernels, OutQ};
use graftnet::{Backbone, ChannelRequant, Engine, Patch};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    let mut bb_path = None;
    let (mut patch_path, mut kernels, mut runs) = (None, None, 1usize);
    let mut skip = String::new();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--patch" => patch_path = it.next().cloned(),
            "--kernels" => kernels = it.next().cloned(),
            "--runs" => runs = it.next().and_then(|s| s.parse().ok()).expect("--runs N"),
            "--skip" => skip = it.next().cloned().expect("--skip ENTRIES"),
            _ => bb_path = Some(a.clone()),
        }
    }
    let bb_path =
        bb_path.expect("usage: infer BACKBONE.gnb [--patch P.gnp] [--kernels NAME] [--runs N]");
    let bb_bytes = std::fs::read(&bb_path).expect("reading the backbone");
    let patch_bytes = patch_path.map(|p| std::fs::read(p).expect("reading the patch"));
    let bb = Backbone::parse(&bb_bytes).expect("backbone");
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).expect("engine");
    if let Some(p) = &patch_bytes {
        e.apply(Patch::parse(p).expect("patch")).expect("apply");
    }
    let mut k = match kernels.as_deref() {
        Some(name) => Kernels::by_name(name)
            .unwrap_or_else(|| panic!("kernel table '{name}' is not available here")),
        None => Kernels::best(),
    };
    for entry in skip.split(',').filter(|s| !s.is_empty()) {
        let all = entry == "all";
        if all || entry == "pointwise" {
            k.pointwise = nothing;
        }
        if all || entry == "conv" {
            k.conv = nothing;
        }
        if all || entry == "dwconv" {
            k.dwconv = nothing;
        }
        if all || entry == "fc" {
            k.fc = nothing;
        }
    }
    e.set_kernels(k);
    let n = e.backbone().input().len();
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let input: Vec<i8> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 56) as i8
        })
        .collect();
    let (mut best, mut sum) = (0, 0u32);
    let t0 = Instant::now();
    for _ in 0..runs {
        let scores = e.run(&input).expect("run");
        best = scores.argmax();
        sum = scores.quantized().iter().fold(0u32, |h, &q| {
            h.wrapping_mul(31).wrapping_add(q as u8 as u32)
        });
    }
    let ms = t0.elapsed().as_secs_f64() * 1e3 / runs.max(1) as f64;
    println!(
        "kernels {} argmax {best} checksum {sum:08x} runs {runs} {ms:.3} ms/run",
        k.name
    );
}

/// A kernel that writes nothing (`--skip`).
fn nothing(_: &[i8], _: &[u8], _: &ConvGeom, _: i8, _: &[ChannelRequant], _: OutQ, _: &mut [i8]) {}
