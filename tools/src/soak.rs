//! `graftnet soak`: a long randomized run of one engine over an export, for
//! unattended devices (issue 13).
//!
//! Contracts:
//! - The reference is computed first, once per task, each on a fresh engine
//!   (`ExportDir::with_engine`): the int8 scores of a fixed set of inputs.
//!   The soak then drives one long-lived engine through a seeded random
//!   sequence of task switches (`Engine::apply`, or `Engine::reset` for the
//!   base task), inferences and attempted switches to corrupted patches.
//!   Every inference must equal the active task's reference bit for bit,
//!   whatever came before it.
//! - A corrupted patch must be refused (by `Patch::parse` or
//!   `Engine::apply`) and must leave the active task as it was: the task
//!   name is checked, and an inference follows every refusal.
//! - Corruptions are only of kinds that a correct runtime must refuse:
//!   one or two flipped bits (CRC-32 detects every such error at any patch
//!   length), truncation (the header's total length), and re-sealed
//!   mutations (checksum recomputed, so only the structural and range checks
//!   stand between them and the engine) of fields whose changed value is
//!   invalid by `runtime/FORMAT.md`: the version, the backbone fingerprint,
//!   an entry's kind or target op, a saturated scale code, a non-finite or
//!   saturated bias code, a tensor scale that is not finite and positive.
//!   Random re-sealed byte changes are not used: many of them (a weight
//!   byte) are valid patches.
//! - The engine borrows every patch it is handed for its own lifetime, so
//!   the re-sealed corruptions are made up front, a pool of
//!   [`RESEALED_PER_PATCH`] per patch, and picked from at random; flips and
//!   truncations (refused at parse, before the engine sees them) are made
//!   fresh at every use.
//! - Deterministic for a seed, an export and an input set (the thread count
//!   changes timing only).

use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, ensure, Result};
use clap::Args;
use graftnet::format::entry::entry_len;
use graftnet::format::EntryKind;
use graftnet::{ChannelRequant, Engine, Patch};
use serde_json::json;

use crate::data::{self, Preprocess};
use crate::host::ExportDir;
use crate::pipeline::BASE_TASK;
use crate::rng::{random_inputs, Rng};

/// Re-sealed corruptions made per patch before the run (see the module doc).
pub const RESEALED_PER_PATCH: usize = 64;

/// `graftnet soak DIR --iters N --seed S`.
#[derive(Args, Clone, Debug)]
pub struct SoakArgs {
    /// export directory (backbone.gnb, manifest.json, *.gnp)
    pub dir: PathBuf,
    /// iterations (each a switch, an inference, or a corrupted-patch attempt)
    #[arg(long, default_value_t = 10_000)]
    pub iters: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// threads per inference
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// inputs: the first samples of this .npy (N,C,H,W) instead of random ones
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// how many inputs the reference holds per task
    #[arg(long, default_value_t = 16)]
    pub inputs: usize,
    #[arg(long)]
    pub json: bool,
}

impl SoakArgs {
    /// Runs the soak and prints its report; an error if anything failed.
    pub fn run(self) -> Result<()> {
        let d = ExportDir::open(&self.dir)?;
        for w in d.warnings() {
            eprintln!("graftnet: warning: {w}");
        }
        let opts = SoakOptions {
            iters: self.iters,
            seed: self.seed,
            threads: self.threads,
            inputs: self.inputs,
            data: self.data,
        };
        let r = soak(&d, &opts)?;
        if self.json {
            println!("{}", r.to_json());
        } else {
            println!("{r}");
        }
        for f in r.failures.iter().take(20) {
            eprintln!("graftnet soak: {f}");
        }
        if !r.ok() {
            bail!(
                "soak failed: {} mismatches, {} corrupted patches accepted",
                r.mismatches,
                r.accepted
            );
        }
        Ok(())
    }
}

/// What to soak.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub iters: u64,
    pub seed: u64,
    pub threads: usize,
    /// inputs per task in the reference
    pub inputs: usize,
    /// take the inputs from this `.npy` instead of random ones
    pub data: Option<PathBuf>,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            iters: 10_000,
            seed: 1,
            threads: 1,
            inputs: 16,
            data: None,
        }
    }
}

/// Counts of a soak run.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    pub iterations: u64,
    pub inferences: u64,
    /// successful task switches (patches applied and resets)
    pub switches: u64,
    /// corrupted patches refused
    pub rejected: u64,
    /// inferences that differed from the reference
    pub mismatches: u64,
    /// corrupted patches accepted
    pub accepted: u64,
    pub seconds: f64,
    /// one line per mismatch or accepted corruption (the first 100)
    pub failures: Vec<String>,
}

impl SoakReport {
    /// No mismatch and no corruption accepted.
    pub fn ok(&self) -> bool {
        self.mismatches == 0 && self.accepted == 0
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "inferences": self.inferences,
            "switches": self.switches,
            "rejected": self.rejected,
            "mismatches": self.mismatches,
            "accepted": self.accepted,
            "iterations": self.iterations,
            "seconds": self.seconds,
        })
    }

    fn fail(&mut self, what: String) {
        if self.failures.len() < 100 {
            self.failures.push(what);
        }
    }
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "soak: {} iterations in {:.1} s: {} inferences, {} switches, {} corrupted patches rejected; {} mismatches, {} corrupted patches accepted: {}",
            self.iterations,
            self.seconds,
            self.inferences,
            self.switches,
            self.rejected,
            self.mismatches,
            self.accepted,
            if self.ok() { "ok" } else { "FAILED" }
        )
    }
}

/// Offset of each entry of a parsed patch in its blob.
pub fn entry_offsets(p: &Patch<'_>) -> Vec<usize> {
    let mut pos = p.header().entries_off as usize;
    p.entries()
        .map(|e| {
            let at = pos;
            pos += entry_len(e.payload.len());
            at
        })
        .collect()
}

/// Re-sealed corruptions of a valid patch that the runtime must refuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// header version (not 1)
    Version,
    /// backbone fingerprint (another backbone's)
    Fingerprint,
    /// an entry's kind byte (no such kind)
    EntryKind,
    /// an entry's target op (no such op)
    EntryOp,
    /// a channel's scale code (saturated)
    ScaleCode,
    /// a channel's bias code (infinite, NaN or saturated)
    BiasCode,
    /// a tensor's scale (zero, negative, or not finite)
    TensorScale,
}

impl Mutation {
    pub const ALL: [Mutation; 7] = [
        Mutation::Version,
        Mutation::Fingerprint,
        Mutation::EntryKind,
        Mutation::EntryOp,
        Mutation::ScaleCode,
        Mutation::BiasCode,
        Mutation::TensorScale,
    ];
}

/// A corrupted copy of a patch and what was done to it.
#[derive(Clone, Debug)]
pub struct Corrupted {
    pub bytes: Vec<u8>,
    pub what: String,
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// One or two flipped bits (the checksum is left as it was).
pub fn flip_bits(patch: &[u8], rng: &mut Rng) -> Corrupted {
    let mut b = patch.to_vec();
    let mut bits = vec![below(rng, b.len() * 8)];
    if rng.next_u64() & 1 == 1 {
        let other = below(rng, b.len() * 8);
        if other != bits[0] {
            bits.push(other);
        }
    }
    for &bit in &bits {
        b[bit / 8] ^= 1 << (bit % 8);
    }
    Corrupted {
        bytes: b,
        what: format!("bits {bits:?} flipped"),
    }
}

/// The patch cut short (anywhere from 0 bytes to one byte less).
pub fn truncate(patch: &[u8], rng: &mut Rng) -> Corrupted {
    let n = below(rng, patch.len());
    Corrupted {
        bytes: patch[..n].to_vec(),
        what: format!("truncated to {n} of {} bytes", patch.len()),
    }
}

/// Mutation `m` at a random place of `patch` (for a backbone of `n_ops`
/// ops), re-sealed; `None` if the patch has nothing `m` could change (no
/// bias codes, say). `patch` must parse.
pub fn reseal_mutation(
    patch: &[u8],
    n_ops: usize,
    m: Mutation,
    rng: &mut Rng,
) -> Option<Corrupted> {
    let p = Patch::parse(patch).ok()?;
    let offsets = entry_offsets(&p);
    let entries: Vec<_> = p.entries().collect();
    let mut b = patch.to_vec();
    // A random entry of `kind`: (its offset, its payload length).
    let mut entry_of = |kind: Option<EntryKind>| {
        let at: Vec<usize> = (0..entries.len())
            .filter(|&i| kind.is_none_or(|k| entries[i].kind == k))
            .collect();
        (!at.is_empty()).then(|| {
            let i = at[below(rng, at.len())];
            (offsets[i], entries[i].payload.len())
        })
    };
    let what = match m {
        Mutation::Version => {
            let v = 2 + below(rng, 0xfffe) as u16;
            b[4..6].copy_from_slice(&v.to_le_bytes());
            format!("version set to {v}")
        }
        Mutation::Fingerprint => {
            let x = rng.next_u64() | 1;
            for (i, byte) in x.to_le_bytes().iter().enumerate() {
                b[16 + i] ^= byte;
            }
            format!("fingerprint xor {x:#018x}")
        }
        Mutation::EntryKind => {
            let (at, _) = entry_of(None)?;
            // 0 and everything above the last kind (8, labels) is unknown.
            let k = [0u8, 9, 10, 0x7f, 0xff][below(rng, 5)];
            b[at] = k;
            format!("entry at byte {at}: kind set to {k}")
        }
        Mutation::EntryOp => {
            let (at, _) = entry_of(None)?;
            let op = (n_ops + below(rng, 0xffff - n_ops)) as u16;
            b[at + 2..at + 4].copy_from_slice(&op.to_le_bytes());
            format!("entry at byte {at}: target op set to {op} (backbone has {n_ops})")
        }
        Mutation::ScaleCode => {
            let (at, len) = entry_of(Some(EntryKind::ScaleCodes))?;
            let c = below(rng, len / 2);
            let code = [0x7fffu16, 0xffff][below(rng, 2)];
            b[at + 8 + 2 * c..at + 10 + 2 * c].copy_from_slice(&code.to_le_bytes());
            format!("scale codes at byte {at}: channel {c} set to {code:#06x}")
        }
        Mutation::BiasCode => {
            let (at, len) = entry_of(Some(EntryKind::BiasCodes))?;
            let c = below(rng, len / 2);
            let code = [0x7c00u16, 0xfc00, 0x7e00, 0xfe00, 0x7bff, 0xfbff][below(rng, 6)];
            b[at + 8 + 2 * c..at + 10 + 2 * c].copy_from_slice(&code.to_le_bytes());
            format!("bias codes at byte {at}: channel {c} set to {code:#06x}")
        }
        Mutation::TensorScale => {
            let (at, len) = entry_of(Some(EntryKind::TensorQuant))?;
            let t = below(rng, len / 8);
            let s = [0.0f32, -1.0, f32::NAN, f32::INFINITY, -0.0][below(rng, 5)];
            b[at + 8 + 8 * t..at + 12 + 8 * t].copy_from_slice(&s.to_le_bytes());
            format!("tensor quantization at byte {at}: tensor {t} scale set to {s}")
        }
    };
    graftnet::format::patch::seal(&mut b);
    Some(Corrupted {
        bytes: b,
        what: format!("re-sealed, {what}"),
    })
}

/// The inputs of the reference: `n` samples (NCHW floats).
fn reference_inputs(
    d: &ExportDir,
    opts: &SoakOptions,
    shape: (usize, usize, usize),
) -> Result<Vec<Vec<f32>>> {
    let (c, h, w) = shape;
    let n = opts.inputs.max(1);
    let flat = match &opts.data {
        Some(p) => {
            let ds = data::load_dataset(p, None, &Preprocess::default())?;
            ensure!(
                ds.shape == shape,
                "{}: samples of shape {:?} (c,h,w); the model of {} takes {:?}",
                p.display(),
                ds.shape,
                d.dir.display(),
                shape
            );
            ensure!(!ds.is_empty(), "{}: no samples", p.display());
            (0..n.min(ds.len()))
                .flat_map(|i| ds.sample(i).to_vec())
                .collect()
        }
        None => random_inputs(n, c, h, w, opts.seed),
    };
    Ok(flat.chunks(c * h * w).map(<[f32]>::to_vec).collect())
}

/// Runs a soak on export `d`. Errors are for set-up problems (an export
/// that does not load); what the soak finds is in the report.
pub fn soak(d: &ExportDir, opts: &SoakOptions) -> Result<SoakReport> {
    let bb = d.parse_backbone()?;
    let t = bb.input();
    let inputs = reference_inputs(d, opts, (t.c as usize, t.h as usize, t.w as usize))?;
    let tasks = d.task_names();
    // Reference: every task on a fresh engine.
    let mut reference: Vec<Vec<Vec<i8>>> = Vec::new();
    for task in &tasks {
        reference.push(d.with_engine(task, |e| {
            inputs
                .iter()
                .map(|x| {
                    e.run_f32(x)
                        .map(|s| s.quantized().to_vec())
                        .map_err(|err| anyhow::anyhow!("task '{task}': {err}"))
                })
                .collect()
        })?);
    }
    // tasks[0] is the base task; tasks[k] for k > 0 has patch `patches[k-1]`.
    debug_assert_eq!(tasks[0], BASE_TASK);
    let mut patches = Vec::new();
    for task in &tasks[1..] {
        patches.push(d.patch(task)?.expect("a task other than base has a patch"));
    }
    let blobs: Vec<&[u8]> = tasks[1..].iter().map(|t| d.patches[t].as_slice()).collect();
    let mut rng = Rng::for_name(opts.seed, "soak");
    let mut resealed: Vec<Corrupted> = Vec::new();
    for blob in &blobs {
        let mut made = 0;
        for _ in 0..RESEALED_PER_PATCH * 4 {
            if made == RESEALED_PER_PATCH {
                break;
            }
            let m = Mutation::ALL[below(&mut rng, Mutation::ALL.len())];
            if let Some(c) = reseal_mutation(blob, bb.n_ops(), m, &mut rng) {
                resealed.push(c);
                made += 1;
            }
        }
    }

    let sizes = d.engine_sizes()?;
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![ChannelRequant::default(); sizes.params];
    let mut e = Engine::new(&bb, &mut arena, &mut params).map_err(|e| anyhow::anyhow!("{e}"))?;
    e.set_threads(opts.threads);
    let mut r = SoakReport::default();
    let mut active = 0usize; // index into `tasks`
    let t0 = Instant::now();
    for it in 0..opts.iters {
        r.iterations += 1;
        let roll = below(&mut rng, 100);
        if roll < 50 {
            infer(
                &mut e, &inputs, &reference, &tasks, active, &mut rng, &mut r, it,
            );
        } else if roll < 75 {
            let k = below(&mut rng, tasks.len());
            if k == 0 {
                e.reset();
            } else if let Err(err) = e.apply(patches[k - 1]) {
                bail!("iteration {it}: task '{}' refused: {err}", tasks[k]);
            }
            active = k;
            r.switches += 1;
        } else if !blobs.is_empty() {
            // (refused, what was done); flips and truncations are refused
            // by `Patch::parse` or count as accepted without reaching the
            // engine, which could not borrow them.
            let (refused, what) = match below(&mut rng, 3) {
                0 => {
                    let c = flip_bits(blobs[below(&mut rng, blobs.len())], &mut rng);
                    (Patch::parse(&c.bytes).is_err(), c.what)
                }
                1 => {
                    let c = truncate(blobs[below(&mut rng, blobs.len())], &mut rng);
                    (Patch::parse(&c.bytes).is_err(), c.what)
                }
                _ if !resealed.is_empty() => {
                    let c = &resealed[below(&mut rng, resealed.len())];
                    let refused = match Patch::parse(&c.bytes) {
                        Err(_) => true,
                        Ok(p) => e.apply(p).is_err(),
                    };
                    (refused, c.what.clone())
                }
                _ => continue,
            };
            if refused {
                r.rejected += 1;
                if e.task_name() != tasks[active] {
                    r.mismatches += 1;
                    r.fail(format!(
                        "iteration {it}: after refusing a corrupted patch ({}) the active task is '{}', not '{}'",
                        what,
                        e.task_name(),
                        tasks[active]
                    ));
                }
            } else {
                r.accepted += 1;
                r.fail(format!(
                    "iteration {it}: a corrupted patch was accepted ({}), task '{}' was active",
                    what, tasks[active]
                ));
                // Back to the task the soak expects.
                if active == 0 {
                    e.reset();
                } else if let Err(err) = e.apply(patches[active - 1]) {
                    bail!("iteration {it}: task '{}' refused: {err}", tasks[active]);
                }
            }
            infer(
                &mut e, &inputs, &reference, &tasks, active, &mut rng, &mut r, it,
            );
        }
    }
    r.seconds = t0.elapsed().as_secs_f64();
    Ok(r)
}

/// One inference on a random reference input, checked against the active
/// task's reference.
#[allow(clippy::too_many_arguments)]
fn infer(
    e: &mut Engine<'_, '_>,
    inputs: &[Vec<f32>],
    reference: &[Vec<Vec<i8>>],
    tasks: &[String],
    active: usize,
    rng: &mut Rng,
    r: &mut SoakReport,
    it: u64,
) {
    let i = below(rng, inputs.len());
    r.inferences += 1;
    let ok = match e.run_f32(&inputs[i]) {
        Ok(s) => s.quantized() == reference[active][i].as_slice(),
        Err(err) => {
            r.fail(format!(
                "iteration {it}: task '{}', input {i}: {err}",
                tasks[active]
            ));
            r.mismatches += 1;
            return;
        }
    };
    if !ok {
        r.mismatches += 1;
        r.fail(format!(
            "iteration {it}: task '{}' (engine says '{}'), input {i}: scores differ from the reference",
            tasks[active],
            e.task_name()
        ));
    }
}
