//! The on-target self-test: every task on the compiled-in samples, compared
//! bit for bit with the host's results.
//!
//! The samples are visited round-robin over the tasks, so every inference
//! follows a task switch: a switch parses the task's patch in place from the
//! patch partition (CRC and framing) and applies it over the base task.
//! Each sample checks two things against the host: the int8 input the
//! engine's quantization produced from the float input, and the int8
//! scores. Output goes to any `core::fmt::Write` (semihosting on the boards).

#![cfg_attr(feature = "size-baseline", allow(dead_code, unused_imports))]

use core::fmt::Write;

use graftnet::{Backbone, Engine, Patch, Requant};

use crate::partition::PatchTable;
use crate::{patch_region, sample_input, sample_input_i8, sample_scores_i8, SAMPLES, SAMPLE_BYTES};
use crate::{ARENA_LEN, BACKBONE, INPUT_LEN, PARAMS_LEN};

/// Result of a self-test.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// inferences run
    pub runs: usize,
    /// inferences whose input quantization and scores equal the host's
    pub identical: usize,
    /// set-up failures (backbone, partition, patch)
    pub errors: usize,
}

impl Outcome {
    /// Every sample ran and matched the host.
    pub fn passed(&self) -> bool {
        self.errors == 0 && self.runs == SAMPLES.len() && self.identical == self.runs && self.runs > 0
    }
}

/// Position of sample `i` among the samples of its task.
fn rank(i: usize) -> usize {
    SAMPLES[..i].iter().filter(|s| s.task == SAMPLES[i].task).count()
}

/// Samples in round-robin order over the tasks.
fn round_robin() -> impl Iterator<Item = usize> {
    (0..SAMPLES.len()).flat_map(|k| (0..SAMPLES.len()).filter(move |&i| rank(i) == k))
}

/// Switches `engine` to `task` (`"base"` or a task of the partition).
fn switch<'a>(engine: &mut Engine<'a, '_>, table: &PatchTable<'a>, task: &str) -> Result<(), &'static str> {
    if engine.task_name() == task {
        return Ok(());
    }
    if task == "base" {
        engine.reset();
        return Ok(());
    }
    let blob = table.find(task).ok_or("task not in the patch partition")?;
    let patch = Patch::parse(blob).map_err(|_| "patch does not parse")?;
    engine.apply(patch).map_err(|_| "patch does not apply")
}

/// The size baseline (feature `size-baseline`): prints where the blobs are
/// and runs nothing, so the engine is not linked in.
#[cfg(feature = "size-baseline")]
pub fn run<W: Write>(out: &mut W, board: &str, arena: &mut [i8], params: &mut [Requant]) -> Outcome {
    let _ = writeln!(
        out,
        "graftnet size baseline on {board}: backbone {} bytes at {:p}, patch region at {:p}, arena {} bytes, {} parameters; no engine",
        BACKBONE.0.len(),
        BACKBONE.0.as_ptr(),
        patch_region().as_ptr(),
        arena.len(),
        params.len()
    );
    Outcome::default()
}

/// Runs the self-test, printing to `out`; `arena` and `params` must hold
/// [`ARENA_LEN`] bytes and [`PARAMS_LEN`] entries.
#[cfg(not(feature = "size-baseline"))]
pub fn run<W: Write>(out: &mut W, board: &str, arena: &mut [i8], params: &mut [Requant]) -> Outcome {
    let mut o = Outcome::default();
    let _ = writeln!(
        out,
        "graftnet self-test on {board}: backbone {} bytes in flash at {:p}, arena {ARENA_LEN} bytes + parameter table {PARAMS_LEN} x {} bytes in RAM, {} test samples ({} bytes of flash)",
        BACKBONE.0.len(),
        BACKBONE.0.as_ptr(),
        core::mem::size_of::<Requant>(),
        SAMPLES.len(),
        SAMPLE_BYTES
    );
    let bb = match Backbone::parse(&BACKBONE.0) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(out, "backbone: {e}");
            o.errors += 1;
            return o;
        }
    };
    let region = patch_region();
    let table = match PatchTable::parse(region) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(out, "patch partition at {:p}: {e}", region.as_ptr());
            o.errors += 1;
            return o;
        }
    };
    let _ = writeln!(
        out,
        "patch partition at {:p}: {} of {} bytes used, {} tasks",
        region.as_ptr(),
        table.image_len(),
        region.len(),
        table.len()
    );
    for (name, blob) in table.iter() {
        match Patch::parse(blob) {
            Ok(p) if p.name() == name && p.backbone_fingerprint() == bb.fingerprint() => {
                let _ = writeln!(out, "  task {name:<24} {:>6} bytes, {} classes", blob.len(), p.classes());
            }
            Ok(_) => {
                let _ = writeln!(out, "  task {name}: the patch names another task or backbone");
                o.errors += 1;
            }
            Err(e) => {
                let _ = writeln!(out, "  task {name}: {e}");
                o.errors += 1;
            }
        }
    }
    let mut engine = match Engine::new(&bb, arena, params) {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(out, "engine: {e}");
            o.errors += 1;
            return o;
        }
    };
    let k = engine.kernels();
    let n = k.names;
    let _ = writeln!(out, "kernels: {} ({}, {}, {}, {})", k.name, n.pointwise, n.conv, n.fc, n.dwconv);
    let mut x = [0f32; INPUT_LEN];
    let mut q = [0i8; INPUT_LEN];
    for i in round_robin() {
        let s = &SAMPLES[i];
        o.runs += 1;
        if let Err(e) = switch(&mut engine, &table, s.task) {
            let _ = writeln!(out, "  {:<24} #{:<3} {e}", s.task, s.index);
            continue;
        }
        for (j, v) in x.iter_mut().enumerate() {
            *v = sample_input(i, j);
        }
        if let Err(e) = engine.quantize_input(&x, &mut q) {
            let _ = writeln!(out, "  {:<24} #{:<3} {e}", s.task, s.index);
            continue;
        }
        let same_input = q.iter().zip(sample_input_i8(i)).all(|(&a, &b)| a as u8 == b);
        let scores = match engine.run(&q) {
            Ok(sc) => sc,
            Err(e) => {
                let _ = writeln!(out, "  {:<24} #{:<3} {e}", s.task, s.index);
                continue;
            }
        };
        let host = sample_scores_i8(i);
        let same_scores = scores.quantized().len() == host.len() && scores.quantized().iter().zip(host).all(|(&a, &b)| a as u8 == b);
        let top1 = scores.argmax();
        let verdict = if same_input && same_scores {
            o.identical += 1;
            "identical to host"
        } else if !same_input {
            "MISMATCH (input quantization)"
        } else {
            "MISMATCH (scores)"
        };
        let _ = writeln!(out, "  {:<24} #{:<3} class {top1} (host {}): {verdict}", s.task, s.index, s.top1);
        if !same_scores {
            let _ = writeln!(out, "    target {:?}", scores.quantized());
            let _ = write!(out, "    host   [");
            for (k, &b) in host.iter().enumerate() {
                let _ = write!(out, "{}{}", if k > 0 { ", " } else { "" }, b as i8);
            }
            let _ = writeln!(out, "]");
        }
    }
    let _ = writeln!(
        out,
        "{} of {} inferences identical to the host over {} tasks{}",
        o.identical,
        o.runs,
        1 + table.len(),
        if o.passed() { "" } else { ": FAILED" }
    );
    o
}
