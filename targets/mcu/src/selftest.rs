//! The on-target self-test: every task on the compiled-in samples, compared
//! bit for bit with the host's results.
//!
//! The samples are visited round-robin over the tasks, so every inference
//! follows a task switch: a switch parses the task's patch in place from the
//! patch partition (CRC and framing) and applies it over the base task.
//! Each sample checks two things against the host: the int8 input the
//! engine's quantization produced from the float input, and the int8
//! scores. Output goes to any `core::fmt::Write` (semihosting on the boards).
//!
//! With feature `verify` the firmware runs signed blobs only: the backbone
//! and every patch are verified once at boot against the compiled-in
//! [`crate::VERIFY_KEY`] (`Backbone::parse_verified`,
//! `Patch::parse_verified`, `Engine::new_verified`), and a switch applies
//! the verified view (no second check). Then it checks the refusals on a
//! copy of the smallest patch in RAM: modified (and its CRC resealed, as
//! an attacker would) → `BadSignature` from both `parse_verified` and
//! `Engine::apply`, with the active task unchanged; the patch without its
//! trailer → `Unsigned`.

#![cfg_attr(feature = "size-baseline", allow(dead_code, unused_imports))]

use core::fmt::Write;

use graftnet::{Backbone, ChannelRequant, Engine, Patch};

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
        self.errors == 0
            && self.runs == SAMPLES.len()
            && self.identical == self.runs
            && self.runs > 0
    }
}

/// Position of sample `i` among the samples of its task.
fn rank(i: usize) -> usize {
    SAMPLES[..i]
        .iter()
        .filter(|s| s.task == SAMPLES[i].task)
        .count()
}

/// Samples in round-robin order over the tasks.
fn round_robin() -> impl Iterator<Item = usize> {
    (0..SAMPLES.len()).flat_map(|k| (0..SAMPLES.len()).filter(move |&i| rank(i) == k))
}

/// Parses a patch of the partition: checked against the key (feature
/// `verify`), or its CRC and framing.
fn parse_patch(blob: &[u8]) -> Result<Patch<'_>, graftnet::FormatError> {
    #[cfg(feature = "verify")]
    return Patch::parse_verified(blob, &verify_key()?);
    #[cfg(not(feature = "verify"))]
    Patch::parse(blob)
}

/// The compiled-in public key.
#[cfg(feature = "verify")]
fn verify_key() -> Result<graftnet::VerifyKey, graftnet::FormatError> {
    graftnet::VerifyKey::from_bytes(&crate::VERIFY_KEY)
}

/// Switches `engine` to `task` (`"base"` or a task of the partition). With
/// feature `verify`, `views` holds the patches verified at boot (a switch
/// applies the view; a signature is checked once); without it, the patch
/// is parsed in place (CRC and framing) at every switch.
fn switch<'a>(
    engine: &mut Engine<'a, '_>,
    table: &PatchTable<'a>,
    views: &[Option<Patch<'a>>],
    task: &str,
) -> Result<(), &'static str> {
    if engine.task_name() == task {
        return Ok(());
    }
    if task == "base" {
        engine.reset();
        return Ok(());
    }
    let i = table
        .iter()
        .position(|(n, _)| n == task)
        .ok_or("task not in the patch partition")?;
    let patch = match views.get(i).copied().flatten() {
        Some(p) => p,
        None => Patch::parse(table.find(task).ok_or("task not in the patch partition")?)
            .map_err(|_| "patch does not parse")?,
    };
    engine.apply(patch).map_err(|_| "patch does not apply")
}

/// Feature `verify`: a modified and an unsigned copy of `blob` (the
/// smallest patch) are refused, by `parse_verified` and by `apply` on an
/// engine with the key, and the active task stays. Returns the failures.
#[cfg(feature = "verify")]
fn check_refusals<W: Write>(
    out: &mut W,
    bb: &Backbone<'_>,
    arena: &mut [i8],
    params: &mut [ChannelRequant],
    blob: &[u8],
) -> usize {
    use graftnet::format::signature::TRAILER_LEN;
    use graftnet::FormatError;
    fn expect<W: Write>(
        out: &mut W,
        what: &str,
        got: Result<(), FormatError>,
        want: FormatError,
    ) -> usize {
        let ok = got == Err(want);
        let _ = writeln!(out, "  refused {what}: {}", if ok { "yes" } else { "NO" });
        usize::from(!ok)
    }
    let Ok(key) = verify_key() else { return 1 };
    let n = blob.len().saturating_sub(TRAILER_LEN);
    let unsigned = blob.get(..n).unwrap_or(&[]);
    let mut buf = [0u8; crate::SMALLEST_PATCH_LEN];
    let Some(copy) = buf.get_mut(..blob.len()) else {
        return 1;
    };
    copy.copy_from_slice(blob);
    // One byte of the last entry changed, the CRC resealed: only the
    // signature tells.
    if let Some(b) = copy.get_mut(n.saturating_sub(1)) {
        *b ^= 0x01;
    }
    if let Some(content) = copy.get_mut(..n) {
        graftnet::format::patch::seal(content);
    }
    let copy: &[u8] = copy;
    let mut errors = 0;
    errors += expect(
        out,
        "unsigned patch (parse_verified)",
        Patch::parse_verified(unsigned, &key).map(|_| ()),
        FormatError::Unsigned,
    );
    errors += expect(
        out,
        "modified patch (parse_verified)",
        Patch::parse_verified(copy, &key).map(|_| ()),
        FormatError::BadSignature,
    );
    let Ok(mut engine) = Engine::new_verified(bb, arena, params, &key) else {
        return errors + 1;
    };
    let before = engine.task_name();
    let (Ok(modified), Ok(plain)) = (Patch::parse(copy), Patch::parse(unsigned)) else {
        let _ = writeln!(out, "  the modified or unsigned copy does not parse");
        return errors + 1;
    };
    errors += expect(
        out,
        "modified patch (Engine::apply)",
        engine.apply(modified),
        FormatError::BadSignature,
    );
    errors += expect(
        out,
        "unsigned patch (Engine::apply)",
        engine.apply(plain),
        FormatError::Unsigned,
    );
    let same = engine.task_name() == before;
    let _ = writeln!(
        out,
        "  active task unchanged: {}",
        if same { "yes" } else { "NO" }
    );
    errors + usize::from(!same)
}

/// The size baseline (feature `size-baseline`): prints where the blobs are
/// and runs nothing, so the engine is not linked in.
#[cfg(feature = "size-baseline")]
pub fn run<W: Write>(
    out: &mut W,
    board: &str,
    arena: &mut [i8],
    params: &mut [ChannelRequant],
) -> Outcome {
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
pub fn run<W: Write>(
    out: &mut W,
    board: &str,
    arena: &mut [i8],
    params: &mut [ChannelRequant],
) -> Outcome {
    let mut o = Outcome::default();
    let _ = writeln!(
        out,
        "graftnet self-test on {board}: backbone {} bytes in flash at {:p}, arena {ARENA_LEN} bytes + parameter table {PARAMS_LEN} x {} bytes in RAM, {} test samples ({} bytes of flash)",
        BACKBONE.0.len(),
        BACKBONE.0.as_ptr(),
        core::mem::size_of::<ChannelRequant>(),
        SAMPLES.len(),
        SAMPLE_BYTES
    );
    #[cfg(not(feature = "verify"))]
    let bb = Backbone::parse(&BACKBONE.0);
    #[cfg(feature = "verify")]
    let bb = verify_key().and_then(|k| Backbone::parse_verified(&BACKBONE.0, &k));
    let bb = match bb {
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
    #[cfg(feature = "verify")]
    let _ = writeln!(
        out,
        "signatures required: key {} (backbone verified)",
        crate::VERIFY_KEY_ID
    );
    let mut views: [Option<Patch<'_>>; crate::PATCH_TASKS.len()] = [None; crate::PATCH_TASKS.len()];
    for (i, (name, blob)) in table.iter().enumerate() {
        match parse_patch(blob) {
            Ok(p) if p.name() == name && p.backbone_fingerprint() == bb.fingerprint() => {
                let signed = if cfg!(feature = "verify") {
                    ", signature verified"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "  task {name:<24} {:>6} bytes, {} classes{signed}",
                    blob.len(),
                    p.classes()
                );
                if cfg!(feature = "verify") {
                    if let Some(v) = views.get_mut(i) {
                        *v = Some(p);
                    }
                }
            }
            Ok(_) => {
                let _ = writeln!(
                    out,
                    "  task {name}: the patch names another task or backbone"
                );
                o.errors += 1;
            }
            Err(e) => {
                let _ = writeln!(out, "  task {name}: {e}");
                o.errors += 1;
            }
        }
    }
    #[cfg(feature = "verify")]
    {
        let smallest = table.iter().map(|(_, b)| b).min_by_key(|b| b.len());
        if let Some(blob) = smallest {
            o.errors += check_refusals(out, &bb, arena, params, blob);
        }
    }
    #[cfg(not(feature = "verify"))]
    let engine = Engine::new(&bb, arena, params);
    #[cfg(feature = "verify")]
    let engine = match verify_key() {
        Ok(k) => Engine::new_verified(&bb, arena, params, &k),
        Err(e) => Err(e.into()),
    };
    let mut engine = match engine {
        Ok(e) => e,
        Err(e) => {
            let _ = writeln!(out, "engine: {e}");
            o.errors += 1;
            return o;
        }
    };
    let k = engine.kernels();
    let n = k.names;
    let _ = writeln!(
        out,
        "kernels: {} ({}, {}, {}, {})",
        k.name, n.pointwise, n.conv, n.fc, n.dwconv
    );
    let mut x = [0f32; INPUT_LEN];
    let mut q = [0i8; INPUT_LEN];
    for i in round_robin() {
        let s = &SAMPLES[i];
        o.runs += 1;
        if let Err(e) = switch(&mut engine, &table, &views, s.task) {
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
        let same_input = q
            .iter()
            .zip(sample_input_i8(i))
            .all(|(&a, &b)| a as u8 == b);
        let scores = match engine.run(&q) {
            Ok(sc) => sc,
            Err(e) => {
                let _ = writeln!(out, "  {:<24} #{:<3} {e}", s.task, s.index);
                continue;
            }
        };
        let host = sample_scores_i8(i);
        let same_scores = scores.quantized().len() == host.len()
            && scores
                .quantized()
                .iter()
                .zip(host)
                .all(|(&a, &b)| a as u8 == b);
        let top1 = scores.argmax();
        let verdict = if same_input && same_scores {
            o.identical += 1;
            "identical to host"
        } else if !same_input {
            "MISMATCH (input quantization)"
        } else {
            "MISMATCH (scores)"
        };
        let _ = writeln!(
            out,
            "  {:<24} #{:<3} class {top1} (host {}): {verdict}",
            s.task, s.index, s.top1
        );
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
