//! The engine: a backbone, a caller-owned arena and parameter table, and the
//! active task.
//!
//! Contracts:
//! - No heap. The arena (`Backbone::arena_len()` bytes) holds activations at
//!   the offsets planned at export; the parameter table
//!   (`Backbone::params_len()` entries) holds the integer requantization
//!   parameters of the active task.
//! - [`Engine::apply`] is a task switch. It validates the patch completely
//!   against the backbone first, then derives the task's parameters from its
//!   16-bit codes (see `quant`). A patch that fails leaves the previous task
//!   active, byte for byte (a failed derivation re-derives the previous task,
//!   which is deterministic).
//! - Resident tasks: [`Patch`] is a `Copy` view, so patches kept in flash
//!   are checked once (`Patch::parse`: checksum and framing, at boot) and the
//!   views kept; switching between them is `apply` alone. It costs about
//!   1 µs per 500 conv channels on a desktop core (MobileNetV2-1.0
//!   S/B+logits: 17,056 channels, ~35 µs, under 1 % of a 5 ms inference;
//!   `BENCHMARKS.md`) and needs no memory beyond the one parameter table.
//!   A patch from untrusted bytes goes through `Patch::parse` first, every
//!   time (a few µs more: the checksum runs on carry-less multiply or CRC
//!   instructions where the CPU has them).
//! - Signed blobs only (feature `verify`): `Engine::new_verified` takes
//!   the public key at set-up, checks the backbone's signature, and makes
//!   `apply` refuse every patch that does not carry the key's signature
//!   (`FormatError::Unsigned`, `WrongKey`, `BadSignature`) before looking
//!   at its content; the active task stays. A patch checked by
//!   `Patch::parse_verified` with the same key is not checked again, so
//!   resident patches cost one verification each, at boot. Without a key
//!   the engine behaves exactly as before and ignores signature trailers.
//! - A patch is always applied over the backbone's base task, never over the
//!   previous patch: results do not depend on the order of switches.
//! - The patch bytes are used in place (DW kernels, classifier weights), so
//!   the engine borrows them for as long as the task is active.
//!
//! No panics from `Engine::new`, `apply`, `apply_newer`, `run`, `run_f32`
//! and `quantize_input`. The blob parsers and the streaming loader
//! (`format/`) are held to it by `deny` lints; this module and the kernels
//! by the following argument. (The same lints would flag about 45 index
//! expressions here and 180 in the kernels, every one of them covered by
//! one of these points.) Every slice index here goes into one of four
//! tables, each sized before the engine exists:
//! 1. The arena. `new` refuses an arena shorter than
//!    `Backbone::arena_len()`. `Backbone::parse` checks every tensor's
//!    `arena_off + capacity` against that length and every alias against
//!    its root, so `arena[off..off + len]` is inside for every tensor.
//! 2. The parameter table. `new` refuses one shorter than `params_len()`,
//!    which parse computes as the sum of `param_slots` over the ops.
//!    `derive` and `execute` walk the ops in the same order with the same
//!    `param_slots`, so each op's block is inside, and each op kind indexes
//!    only within its own block (a conv slots 0..=cout, Add/Concat/Mul
//!    0..=2, GlobalAvgPool 0..=1, AvgPool 0..=kh·kw-1, the others 0).
//! 3. The input. `run`, `run_f32` and `quantize_input` compare its length
//!    with the input tensor's `c·h·w` first and return `InputSize`.
//! 4. The tensor-quantization payload, read through `tq_of`, which checks
//!    the length and falls back to (1, 0).
//!
//! The kernels assert slice lengths against the geometry (their
//! contract). Parse validated the same geometry for every op, and a patch
//! only replaces values of validated shapes (`validate_task`), so those
//! asserts cannot fire for a parsed backbone and an accepted patch. The
//! fuzz targets (`runtime/fuzz`) put this argument to work: more than 13
//! million executions through parse, `new`, `apply` and `run`, including
//! re-sealed mutants that reach the deep checks, and no panic after the
//! two fixes recorded in `runtime/fuzz/README.md`.

use crate::error::{FormatError, RunError};
use crate::format::backbone::{param_slots, Backbone, OpInfo, TensorInfo};
use crate::format::entry::{Entry, EntryIter, EntryKind, Luts, Rows};
use crate::format::patch::Patch;
#[cfg(feature = "verify")]
use crate::format::signature::VerifyKey;
use crate::format::{rd_f32, Act, OpKind, NONE};
use crate::kernels::{scalar, ConvGeom, Kernels, OutQ};
#[cfg(feature = "std")]
mod parallel;

use crate::quant::{
    quantize_multiplier, quantize_value, round_half_away, ChannelParams, ConvChannels,
};

/// One entry of the parameter table: a fixed-point multiplier and an int32
/// bias (for conv channels; other ops store zero points in `bias`). The
/// first entry of each op's block holds the op's output zero point in
/// `bias` and its clamp bounds in `mult` (low) and `shift` (high).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requant {
    /// Q31 multiplier (signed)
    pub mult: i32,
    /// right shift
    pub shift: i32,
    /// bias added to the accumulator before scaling
    pub bias: i32,
}

/// The per-op entries of one task section that the engine consults.
#[derive(Clone, Copy, Default)]
struct OpEntries<'a> {
    scale: Option<&'a [u8]>,
    bias: Option<&'a [u8]>,
    weights: Option<&'a [u8]>,
    rows: Option<&'a [u8]>,
    lut: Option<&'a [u8]>,
}

/// Walks a sorted entry list op by op.
#[derive(Clone)]
struct Cursor<'a> {
    it: EntryIter<'a>,
    next: Option<Entry<'a>>,
}

impl<'a> Cursor<'a> {
    fn new(mut it: EntryIter<'a>) -> Self {
        let next = it.next();
        Cursor { it, next }
    }
    fn empty() -> Self {
        Cursor {
            it: EntryIter::new(&[], 0),
            next: None,
        }
    }
    /// Entries of op `i` (ops must be asked in increasing order).
    fn take(&mut self, i: u16) -> OpEntries<'a> {
        let mut e = OpEntries::default();
        while let Some(ent) = self.next {
            if ent.op == NONE || ent.op > i {
                break;
            }
            if ent.op == i {
                match ent.kind {
                    EntryKind::ScaleCodes => e.scale = Some(ent.payload),
                    EntryKind::BiasCodes => e.bias = Some(ent.payload),
                    EntryKind::Weights => e.weights = Some(ent.payload),
                    EntryKind::Rows => e.rows = Some(ent.payload),
                    EntryKind::Lut => e.lut = Some(ent.payload),
                    _ => {}
                }
            }
            self.next = self.it.next();
        }
        e
    }
}

fn tensor_quant(iter: EntryIter<'_>) -> Option<&[u8]> {
    iter.filter(|e| e.kind == EntryKind::TensorQuant)
        .map(|e| e.payload)
        .next()
}

/// Class scores of one inference, borrowed from the arena.
#[derive(Clone, Copy, Debug)]
pub struct Scores<'e> {
    q: &'e [i8],
    scale: f32,
    zp: i32,
    softmax: bool,
}

impl<'e> Scores<'e> {
    /// Number of classes.
    pub fn len(&self) -> usize {
        self.q.len()
    }
    /// No classes.
    pub fn is_empty(&self) -> bool {
        self.q.is_empty()
    }
    /// Raw int8 scores.
    pub fn quantized(&self) -> &'e [i8] {
        self.q
    }
    /// Quantization of the scores: `(scale, zero point)`.
    pub fn quant(&self) -> (f32, i32) {
        (self.scale, self.zp)
    }
    /// Dequantized score (logit) of class `i`.
    pub fn get(&self, i: usize) -> f32 {
        self.q
            .get(i)
            .map_or(0.0, |&q| crate::quant::dequantize(q, self.scale, self.zp))
    }
    /// The model ends in softmax (see [`Scores::probabilities`]).
    pub fn has_softmax(&self) -> bool {
        self.softmax
    }
    /// Index of the highest score (the first one on ties).
    pub fn argmax(&self) -> usize {
        let mut best = 0;
        for (i, &q) in self.q.iter().enumerate() {
            if q > self.q[best] {
                best = i;
            }
        }
        best
    }
    /// Writes dequantized scores into `out` (up to `len()` values); returns
    /// the number written.
    pub fn dequantize_into(&self, out: &mut [f32]) -> usize {
        let n = out.len().min(self.q.len());
        for (i, o) in out[..n].iter_mut().enumerate() {
            *o = self.get(i);
        }
        n
    }
}

/// Inference engine over one backbone. See the module doc.
pub struct Engine<'a, 'm> {
    bb: Backbone<'a>,
    arena: &'m mut [i8],
    params: &'m mut [Requant],
    patch: Option<Patch<'a>>,
    tq: &'a [u8],
    classes: u16,
    kernels: Kernels,
    threads: usize,
    /// Patches must carry this key's signature (`Engine::new_verified`).
    #[cfg(feature = "verify")]
    key: Option<VerifyKey>,
}

impl<'a, 'm> Engine<'a, 'm> {
    /// Sets up the engine with the base task active.
    pub fn new(
        bb: &Backbone<'a>,
        arena: &'m mut [i8],
        params: &'m mut [Requant],
    ) -> Result<Self, RunError> {
        if arena.len() < bb.arena_len() {
            return Err(RunError::ArenaTooSmall {
                need: bb.arena_len() as u32,
                have: arena.len() as u32,
            });
        }
        if params.len() < bb.params_len() {
            return Err(RunError::ParamsTooSmall {
                need: bb.params_len() as u32,
                have: params.len() as u32,
            });
        }
        let tq = tensor_quant(bb.base_entries()).unwrap_or(&[]);
        let mut e = Engine {
            bb: *bb,
            arena,
            params,
            patch: None,
            tq,
            classes: bb.base_classes(),
            kernels: Kernels::best(),
            threads: 1,
            #[cfg(feature = "verify")]
            key: None,
        };
        e.derive()?;
        Ok(e)
    }

    /// [`Engine::new`] for a device that runs signed blobs only (feature
    /// `verify`): the backbone must carry `key`'s signature (checked here
    /// unless `Backbone::parse_verified` checked it with the same key),
    /// and every patch [`Engine::apply`] is given must too, or it is
    /// refused ([`FormatError::Unsigned`], [`FormatError::WrongKey`],
    /// [`FormatError::BadSignature`]) and the active task stays.
    #[cfg(feature = "verify")]
    pub fn new_verified(
        bb: &Backbone<'a>,
        arena: &'m mut [i8],
        params: &'m mut [Requant],
        key: &VerifyKey,
    ) -> Result<Self, crate::Error> {
        bb.verify(key)?;
        let mut e = Self::new(bb, arena, params)?;
        e.key = Some(*key);
        Ok(e)
    }

    /// The key patches must be signed with (`Engine::new_verified`).
    #[cfg(feature = "verify")]
    pub fn verify_key(&self) -> Option<&VerifyKey> {
        self.key.as_ref()
    }

    /// Uses another kernel table (e.g. `Kernels::scalar()` to compare).
    pub fn set_kernels(&mut self, k: Kernels) {
        self.kernels = k;
    }
    /// Splits each large convolution across `n` threads (std only; 1, the
    /// default, runs everything on the calling thread). Results do not
    /// depend on the thread count.
    #[cfg(feature = "std")]
    pub fn set_threads(&mut self, n: usize) {
        self.threads = n.clamp(1, 64);
    }

    /// Threads used per inference.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The kernel table in use.
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }
    /// The backbone.
    pub fn backbone(&self) -> &Backbone<'a> {
        &self.bb
    }
    /// The active patch (`None`: the base task).
    pub fn patch(&self) -> Option<&Patch<'a>> {
        self.patch.as_ref()
    }
    /// Name of the active task (`"base"` without a patch).
    pub fn task_name(&self) -> &'a str {
        match &self.patch {
            Some(p) => p.name(),
            None => "base",
        }
    }
    /// Classes of the active task.
    pub fn classes(&self) -> usize {
        self.classes as usize
    }
    /// The active task's parameter table (for inspection and tests).
    pub fn params(&self) -> &[Requant] {
        &self.params[..self.bb.params_len()]
    }

    /// [`Engine::apply`], refusing a patch whose task version is below
    /// `min_version`: the highest version the caller has accepted for this
    /// task name before, which the caller persists (in flash, a file) so a
    /// device never rolls back to an older release of a task. On error
    /// nothing changes.
    pub fn apply_newer(&mut self, patch: Patch<'a>, min_version: u32) -> Result<(), FormatError> {
        if patch.task_version() < min_version {
            return Err(FormatError::OlderVersion {
                version: patch.task_version(),
                min: min_version,
            });
        }
        self.apply(patch)
    }

    /// Switches to the task in `patch`. On error nothing changes.
    ///
    /// On an engine made by `Engine::new_verified` the patch's signature
    /// is checked first (at once for a patch from `Patch::parse_verified`
    /// with the same key; else its whole content is verified here).
    pub fn apply(&mut self, patch: Patch<'a>) -> Result<(), FormatError> {
        #[cfg(feature = "verify")]
        if let Some(key) = &self.key {
            patch.verify(key)?;
        }
        if patch.backbone_fingerprint() != self.bb.fingerprint() {
            return Err(FormatError::WrongBackbone {
                expected: self.bb.fingerprint(),
                found: patch.backbone_fingerprint(),
            });
        }
        let summary = self
            .bb
            .validate_task(patch.entry_bytes(), patch.n_entries(), false)?;
        if summary.classes != patch.classes() {
            return Err(FormatError::BadEntry {
                entry: 0,
                op: self.bb.header().head_op,
                what: "the patch header's class count differs from its task's",
            });
        }
        let prev = (self.patch, self.tq, self.classes);
        self.patch = Some(patch);
        self.tq = tensor_quant(patch.entries())
            .or_else(|| tensor_quant(self.bb.base_entries()))
            .unwrap_or(&[]);
        self.classes = summary.classes;
        if let Err(RunError::BadQuantization { op }) = self.derive() {
            let entry = self.entry_at_fault(&patch, op);
            (self.patch, self.tq, self.classes) = prev;
            // The previous task derived before, so it derives again.
            let _ = self.derive();
            return Err(FormatError::BadEntry {
                entry,
                op,
                what: "quantization parameters out of range",
            });
        }
        Ok(())
    }

    /// The entry of `patch` (active, its derivation failed at `op`) that
    /// makes `op` fail: the patch's tensor quantization if `op` derives with
    /// the base's instead, else the patch's first entry for `op` (its codes
    /// or weights), else the tensor quantization. Only on the error path.
    fn entry_at_fault(&mut self, patch: &Patch<'a>, op: u16) -> u32 {
        let index_of = |pred: &dyn Fn(&Entry<'_>) -> bool| {
            patch.entries().position(|e| pred(&e)).map(|i| i as u32)
        };
        let tq_entry = index_of(&|e| e.kind == EntryKind::TensorQuant);
        let op_entry = index_of(&|e| e.op == op);
        let patched_tq = self.tq;
        let base_tq = tensor_quant(self.bb.base_entries()).unwrap_or(&[]);
        let scales_at_fault = tq_entry.is_some() && {
            self.tq = base_tq;
            let with_base_tq = self.derive();
            self.tq = patched_tq;
            with_base_tq != Err(RunError::BadQuantization { op })
        };
        let entry = if scales_at_fault {
            tq_entry
        } else {
            op_entry.or(tq_entry)
        };
        entry.unwrap_or(0)
    }

    /// Switches back to the base task.
    pub fn reset(&mut self) {
        self.patch = None;
        self.tq = tensor_quant(self.bb.base_entries()).unwrap_or(&[]);
        self.classes = self.bb.base_classes();
        let _ = self.derive();
    }

    /// `(scale, zero point)` of tensor `t` under the active task.
    pub fn tensor_quant(&self, t: usize) -> (f32, i32) {
        tq_of(self.tq, t)
    }

    /// The int8 contents (NHWC) of tensor `t` after the last run, for
    /// debugging and per-layer comparisons.
    pub fn tensor_data(&self, t: usize) -> &[i8] {
        let info = self.bb.tensor(t);
        let len = if t == self.bb.header().output as usize {
            self.classes as usize
        } else {
            info.len()
        };
        let s = info.arena_off as usize;
        self.arena.get(s..s + len).unwrap_or(&[])
    }

    /// Input quantization `(scale, zero point)` of the active task.
    pub fn input_quant(&self) -> (f32, i32) {
        self.tensor_quant(self.bb.header().input as usize)
    }

    /// Quantizes a float input given in NCHW order (`c*h*w` values) into
    /// `out` (NHWC int8), with the active task's input quantization; NaN or
    /// an infinity is refused ([`RunError::NonFiniteInput`]).
    pub fn quantize_input(&self, x_chw: &[f32], out: &mut [i8]) -> Result<(), RunError> {
        let t = self.bb.input();
        let n = t.len();
        if x_chw.len() != n || out.len() != n {
            return Err(RunError::InputSize {
                expected: n as u32,
                got: x_chw.len() as u32,
            });
        }
        check_finite(x_chw)?;
        let (s, zp) = self.input_quant();
        let (c, hw) = (t.c as usize, t.h as usize * t.w as usize);
        for ch in 0..c {
            for p in 0..hw {
                out[p * c + ch] = quantize_value(x_chw[ch * hw + p] as f64, s as f64, zp) as i8;
            }
        }
        Ok(())
    }

    /// Runs one inference on a float NCHW input (quantized in place). NaN or
    /// an infinity in the input is refused ([`RunError::NonFiniteInput`]).
    pub fn run_f32(&mut self, x_chw: &[f32]) -> Result<Scores<'_>, RunError> {
        let t = self.bb.input();
        let off = t.arena_off as usize;
        let n = t.len();
        if x_chw.len() != n {
            return Err(RunError::InputSize {
                expected: n as u32,
                got: x_chw.len() as u32,
            });
        }
        check_finite(x_chw)?;
        let (s, zp) = self.input_quant();
        let (c, hw) = (t.c as usize, t.h as usize * t.w as usize);
        let dst = &mut self.arena[off..off + n];
        for ch in 0..c {
            for p in 0..hw {
                dst[p * c + ch] = quantize_value(x_chw[ch * hw + p] as f64, s as f64, zp) as i8;
            }
        }
        self.execute()
    }

    /// Runs one inference on an int8 NHWC input.
    pub fn run(&mut self, input: &[i8]) -> Result<Scores<'_>, RunError> {
        let t = self.bb.input();
        let n = t.len();
        if input.len() != n {
            return Err(RunError::InputSize {
                expected: n as u32,
                got: input.len() as u32,
            });
        }
        let off = t.arena_off as usize;
        self.arena[off..off + n].copy_from_slice(input);
        self.execute()
    }

    fn cursors(&self) -> (Cursor<'a>, Cursor<'a>) {
        let base = Cursor::new(self.bb.base_entries());
        let patch = match &self.patch {
            Some(p) => Cursor::new(p.entries()),
            None => Cursor::empty(),
        };
        (base, patch)
    }

    fn merged(base: &mut Cursor<'a>, patch: &mut Cursor<'a>, i: u16) -> OpEntries<'a> {
        let b = base.take(i);
        let p = patch.take(i);
        OpEntries {
            scale: p.scale.or(b.scale),
            bias: p.bias.or(b.bias),
            weights: p.weights.or(b.weights),
            rows: p.rows.or(b.rows),
            lut: p.lut.or(b.lut),
        }
    }

    fn out_q(&self, op: &OpInfo) -> OutQ {
        out_q_of(self.tq, op)
    }

    /// Derives the parameter table of the active task.
    fn derive(&mut self) -> Result<(), RunError> {
        let (mut base, mut patch) = self.cursors();
        let mut off = 0usize;
        for i in 0..self.bb.n_ops() {
            let op = self.bb.op(i);
            let ent = Self::merged(&mut base, &mut patch, i as u16);
            let cout = self.bb.cout(i, &op, self.classes);
            let slots_cap = param_slots(
                &op,
                if i == self.bb.head_op() {
                    self.bb.max_classes() as usize
                } else {
                    cout
                },
            );
            let q = self.out_q(&op);
            let (s_in, zp_in) = self.tensor_quant(op.in0 as usize);
            let (s_out, _) = self.tensor_quant(op.out as usize);
            let (s_b, zp_b) = if op.in1 != NONE {
                self.tensor_quant(op.in1 as usize)
            } else {
                (1.0, 0)
            };
            let mq_same = self.tensor_quant(op.in0 as usize) == self.tensor_quant(op.out as usize);
            let bad = RunError::BadQuantization { op: i as u16 };
            let block = &mut self.params[off..off + slots_cap];
            block[0] = Requant {
                mult: q.lo,
                shift: q.hi,
                bias: q.zp,
            };
            let mq = |m: f64| quantize_multiplier(m).ok_or(bad);
            match op.kind {
                OpKind::Conv | OpKind::DwConv => {
                    let cc = ConvChannels::new(s_in, s_out, zp_in);
                    let codes = (ent.scale.unwrap_or(&[]), ent.bias.unwrap_or(&[]));
                    let row = self.bb.row_len(&op);
                    let out = &mut block[1..1 + cout];
                    let ok = match ent.weights {
                        None => derive_channels(&cc, codes, self.bb.op_weight_sums(&op), out),
                        Some(w) => derive_channels_over(&cc, codes, op.kind, w, row, out),
                    };
                    if !ok {
                        return Err(bad);
                    }
                    // Replaced rows: the kernel reads the row instead, so the
                    // channel's bias folds in the row's sum.
                    if let Some(r) = ent.rows.and_then(|r| Rows::new_checked(r, row)) {
                        for i in 0..r.len() {
                            let c = r.channel(i) as usize;
                            let sum = r.row(i).iter().map(|&w| w as i8 as i32).sum();
                            match (out.get_mut(c), derive_one(&cc, codes, c, sum)) {
                                (Some(slot), Some(p)) => *slot = p,
                                (None, _) => {}
                                (_, None) => return Err(bad),
                            }
                        }
                    }
                }
                OpKind::Add | OpKind::Concat => {
                    let ma = s_in as f64 / s_out as f64;
                    let mb = s_b as f64 / s_out as f64;
                    if op.kind == OpKind::Add {
                        let big = mq(if ma >= mb { ma } else { mb })?;
                        let small = if ma >= mb { mb } else { ma };
                        let other = round_half_away(small * crate::quant::pow2(big.shift));
                        let (pa, pb) = if ma >= mb {
                            (big.mult, other as i32)
                        } else {
                            (other as i32, big.mult)
                        };
                        block[1] = Requant {
                            mult: pa,
                            shift: big.shift,
                            bias: zp_in,
                        };
                        block[2] = Requant {
                            mult: pb,
                            shift: big.shift,
                            bias: zp_b,
                        };
                    } else {
                        let a = mq(ma)?;
                        let b = mq(mb)?;
                        block[1] = Requant {
                            mult: a.mult,
                            shift: a.shift,
                            bias: zp_in,
                        };
                        block[2] = Requant {
                            mult: b.mult,
                            shift: b.shift,
                            bias: zp_b,
                        };
                    }
                }
                OpKind::Mul => {
                    let m = mq(s_in as f64 * s_b as f64 / s_out as f64)?;
                    block[1] = Requant {
                        mult: m.mult,
                        shift: m.shift,
                        bias: zp_in,
                    };
                    block[2] = Requant {
                        mult: 0,
                        shift: 0,
                        bias: zp_b,
                    };
                }
                OpKind::GlobalAvgPool => {
                    let a = self.bb.tensor(op.in0 as usize);
                    let hw = a.h as f64 * a.w as f64;
                    let m = mq(s_in as f64 / (s_out as f64 * hw))?;
                    block[1] = Requant {
                        mult: m.mult,
                        shift: m.shift,
                        bias: zp_in,
                    };
                }
                OpKind::AvgPool => {
                    for (n, slot) in block.iter_mut().enumerate().skip(1) {
                        let m = mq(s_in as f64 / (s_out as f64 * n as f64))?;
                        *slot = Requant {
                            mult: m.mult,
                            shift: m.shift,
                            bias: zp_in,
                        };
                    }
                }
                OpKind::MaxPool => {
                    if !mq_same {
                        return Err(bad);
                    }
                }
                OpKind::Lut => {}
            }
            off += slots_cap;
        }
        Ok(())
    }

    fn execute(&mut self) -> Result<Scores<'_>, RunError> {
        #[cfg(feature = "std")]
        if self.threads > 1 {
            parallel::execute(self, self.threads);
            return Ok(self.scores());
        }
        let (mut base, mut patch) = self.cursors();
        let mut off = 0usize;
        let kernels = self.kernels;
        let view = TaskView {
            bb: &self.bb,
            tq: self.tq,
            classes: self.classes,
            params: self.params,
        };
        for i in 0..self.bb.n_ops() {
            let (run, slots) = view.prepare(i, &mut base, &mut patch, off);
            let (a, b, out) = split_io(self.arena, &run.ta, run.tb.as_ref(), &run.to, run.out_len);
            run_op(&kernels, &run, a, b, out);
            off += slots;
        }
        Ok(self.scores())
    }

    fn scores(&self) -> Scores<'_> {
        let t = self.bb.output();
        let (scale, zp) = self.tensor_quant(self.bb.header().output as usize);
        let o = t.arena_off as usize;
        Scores {
            q: &self.arena[o..o + self.classes as usize],
            scale,
            zp,
            softmax: self.bb.softmax(),
        }
    }
}

/// Refuses NaN and infinities in a float input: a sensor or preprocessing
/// fault should surface, not become an arbitrary int8 value and a
/// confident class.
fn check_finite(x: &[f32]) -> Result<(), RunError> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(RunError::NonFiniteInput { index: i as u32 }),
        None => Ok(()),
    }
}

fn tq_of(tq: &[u8], t: usize) -> (f32, i32) {
    if 8 * t + 8 <= tq.len() {
        (rd_f32(tq, 8 * t), tq[8 * t + 4] as i8 as i32)
    } else {
        (1.0, 0)
    }
}

fn out_q_of(tq: &[u8], op: &OpInfo) -> OutQ {
    let (s, zp) = tq_of(tq, op.out as usize);
    let (lo, hi) = match op.act {
        Act::None => (-128, 127),
        Act::Clamp => (
            quantize_value(op.act_lo as f64, s as f64, zp),
            quantize_value(op.act_hi as f64, s as f64, zp),
        ),
    };
    OutQ { zp, lo, hi }
}

fn geom_of(bb: &Backbone<'_>, op: &OpInfo, cout: usize) -> ConvGeom {
    let a = bb.tensor(op.in0 as usize);
    let o = bb.tensor(op.out as usize);
    ConvGeom {
        ih: a.h as usize,
        iw: a.w as usize,
        cin: a.c as usize,
        oh: o.h as usize,
        ow: o.w as usize,
        cout,
        kh: op.kh as usize,
        kw: op.kw as usize,
        sh: op.sh as usize,
        sw: op.sw as usize,
        pt: op.pads[0] as usize,
        pl: op.pads[1] as usize,
        groups: op.groups.max(1) as usize,
    }
}

/// The parts of an engine an inference reads (everything but the arena).
#[derive(Clone, Copy)]
struct TaskView<'x, 'a> {
    bb: &'x Backbone<'a>,
    tq: &'a [u8],
    classes: u16,
    params: &'x [Requant],
}

impl<'x, 'a: 'x> TaskView<'x, 'a> {
    /// Resolves everything op `i` needs under the active task.
    fn prepare(
        &self,
        i: usize,
        base: &mut Cursor<'a>,
        patch: &mut Cursor<'a>,
        off: usize,
    ) -> (OpRun<'x>, usize) {
        let bb = self.bb;
        let op = bb.op(i);
        let b = base.take(i as u16);
        let p = patch.take(i as u16);
        let ent = OpEntries {
            scale: p.scale.or(b.scale),
            bias: p.bias.or(b.bias),
            weights: p.weights.or(b.weights),
            rows: p.rows.or(b.rows),
            lut: p.lut.or(b.lut),
        };
        let cout = bb.cout(i, &op, self.classes);
        let slots = param_slots(
            &op,
            if i == bb.head_op() {
                bb.max_classes() as usize
            } else {
                cout
            },
        );
        let to = bb.tensor(op.out as usize);
        let out_len = if i == bb.head_op() {
            cout * to.h as usize * to.w as usize
        } else {
            to.len()
        };
        let weights = if op.kind.has_weights() {
            ent.weights.unwrap_or_else(|| bb.op_weights(&op))
        } else {
            &[]
        };
        let run = OpRun {
            op,
            ent,
            weights,
            block: &self.params[off..off + slots],
            g: geom_of(bb, &op, cout),
            q: out_q_of(self.tq, &op),
            zp_in: tq_of(self.tq, op.in0 as usize).1,
            ta: bb.tensor(op.in0 as usize),
            tb: if op.in1 != NONE {
                Some(bb.tensor(op.in1 as usize))
            } else {
                None
            },
            to,
            out_len,
            cout,
        };
        (run, slots)
    }
}

/// One op, resolved for the active task.
struct OpRun<'x> {
    op: OpInfo,
    ent: OpEntries<'x>,
    weights: &'x [u8],
    block: &'x [Requant],
    g: ConvGeom,
    q: OutQ,
    zp_in: i32,
    ta: TensorInfo,
    tb: Option<TensorInfo>,
    to: TensorInfo,
    out_len: usize,
    cout: usize,
}

/// A conv op over output rows `[oy0, oy1)`: the geometry of that slab and
/// the offset of the first input row it reads. Any kernel computes the slab
/// exactly as it would inside the whole output (padding rows included).
#[cfg(feature = "std")]
fn row_slab(g: &ConvGeom, oy0: usize, oy1: usize) -> (ConvGeom, usize) {
    let start = (oy0 * g.sh) as isize - g.pt as isize;
    let (r0, pt) = if start < 0 {
        (0, (-start) as usize)
    } else {
        (start as usize, 0)
    };
    (
        ConvGeom {
            ih: g.ih - r0,
            oh: oy1 - oy0,
            pt,
            ..*g
        },
        r0 * g.iw * g.cin,
    )
}

/// Runs a conv op's kernel, then its replaced rows, on `a` -> `out` with
/// geometry `g` (the whole op or a row slab of it).
fn run_conv(k: &Kernels, r: &OpRun<'_>, g: &ConvGeom, a: &[i8], out: &mut [i8]) {
    let rq = &r.block[1..1 + r.cout];
    let dw = r.op.kind == OpKind::DwConv;
    let f = if dw {
        k.dwconv
    } else if g.is_fully_connected() {
        k.fc
    } else if g.is_pointwise() {
        k.pointwise
    } else {
        k.conv
    };
    let zp = r.zp_in as i8;
    f(a, r.weights, g, zp, rq, r.q, out);
    if let Some(rows) = r.ent.rows.and_then(|x| Rows::new_checked(x, g.row_len())) {
        for i in 0..rows.len() {
            let c = rows.channel(i) as usize;
            if dw {
                scalar::dwconv_channel(a, rows.row(i), g, c, zp, &rq[c], r.q, out);
            } else {
                scalar::conv_channel(a, rows.row(i), g, c, zp, &rq[c], r.q, out);
            }
        }
    }
}

/// Runs one whole op.
fn run_op(k: &Kernels, r: &OpRun<'_>, a: &[i8], b: &[i8], out: &mut [i8]) {
    let (block, q) = (r.block, r.q);
    match r.op.kind {
        OpKind::Conv | OpKind::DwConv => run_conv(k, r, &r.g, a, out),
        OpKind::Add => (k.add)(
            a,
            b,
            block[1].bias,
            block[1].mult,
            block[2].bias,
            block[2].mult,
            block[1].shift,
            q,
            out,
        ),
        OpKind::Mul => scalar::mul(
            a,
            b,
            r.to.c as usize,
            block[1].bias,
            block[2].bias,
            block[1].mult,
            block[1].shift,
            q,
            out,
        ),
        OpKind::Lut => {
            // Validated at parse (`Backbone::parse` / `Patch::parse`).
            match r
                .ent
                .lut
                .and_then(|p| Luts::new_checked(p, r.to.c as usize))
            {
                Some(l) if l.is_shared() => scalar::lut(a, l.tables(), out),
                Some(l) => scalar::lut_channels(a, l.index(), l.tables(), out),
                None => scalar::lut(a, &[0; 256], out),
            }
        }
        OpKind::GlobalAvgPool => scalar::global_avg_pool(
            a,
            r.ta.h as usize * r.ta.w as usize,
            r.ta.c as usize,
            &block[1],
            q,
            out,
        ),
        OpKind::AvgPool => {
            let include = r.op.flags & crate::format::backbone::OP_FLAG_COUNT_INCLUDE_PAD != 0;
            scalar::pool(a, &r.g, Some((&block[1..], include)), q, out)
        }
        OpKind::MaxPool => scalar::pool(a, &r.g, None, q, out),
        OpKind::Concat => {
            let cb = r.tb.map_or(0, |t| t.c as usize);
            scalar::concat(a, r.ta.c as usize, &block[1], b, cb, &block[2], q, out)
        }
    }
}

/// The scale and bias codes of a conv op (2 bytes per channel each).
type Codes<'x> = (&'x [u8], &'x [u8]);

fn code(b: &[u8], c: usize) -> u16 {
    b.get(2 * c..2 * c + 2)
        .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
}

fn requant(p: ChannelParams) -> Requant {
    Requant {
        mult: p.mult,
        shift: p.shift,
        bias: p.bias,
    }
}

/// Channel `c` of a conv op whose kernel reads weights summing to `sum`.
fn derive_one(cc: &ConvChannels, codes: Codes<'_>, c: usize, sum: i32) -> Option<Requant> {
    cc.channel(code(codes.0, c), code(codes.1, c), sum)
        .map(requant)
}

/// Every channel of a conv op that reads the backbone's weights (`sums`:
/// the backbone's per-channel int32 sums): the hot loop of a task switch,
/// run by the derivation kernel. Returns false if a channel's multiplier is
/// out of range.
fn derive_channels(cc: &ConvChannels, codes: Codes<'_>, sums: &[u8], out: &mut [Requant]) -> bool {
    crate::kernels::derive::conv_channels(cc, codes.0, codes.1, sums, out)
}

/// Every channel of a conv op that reads a whole weight tensor `w` of
/// `kind`'s layout from the patch (a new classifier, DW kernels): the
/// weight sums of each block of channels first, then the kernel.
fn derive_channels_over(
    cc: &ConvChannels,
    codes: Codes<'_>,
    kind: OpKind,
    w: &[u8],
    row: usize,
    out: &mut [Requant],
) -> bool {
    use crate::kernels::derive::{conv_channels, BLOCK};
    let cout = out.len();
    let mut ok = true;
    for (blk, slots) in out.chunks_mut(BLOCK).enumerate() {
        let (c0, n) = (blk * BLOCK, slots.len());
        let mut sums = [0i32; BLOCK];
        if kind == OpKind::DwConv {
            // [kh][kw][c]: tap k of channel c at k·cout + c.
            for k in 0..row {
                if let Some(taps) = w.get(k * cout + c0..k * cout + c0 + n) {
                    for (s, &x) in sums.iter_mut().zip(taps) {
                        *s += x as i8 as i32;
                    }
                }
            }
        } else {
            for (j, s) in sums[..n].iter_mut().enumerate() {
                let c = c0 + j;
                *s = w
                    .get(c * row..(c + 1) * row)
                    .map_or(0, |r| r.iter().map(|&x| x as i8 as i32).sum());
            }
        }
        let mut bytes = [0u8; 4 * BLOCK];
        for (b, s) in bytes.chunks_exact_mut(4).zip(&sums) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        let (sc, bc) = (
            codes.0.get(2 * c0..2 * (c0 + n)).unwrap_or(&[]),
            codes.1.get(2 * c0..2 * (c0 + n)).unwrap_or(&[]),
        );
        ok &= conv_channels(cc, sc, bc, &bytes[..4 * n], slots);
    }
    ok
}

/// Borrows the inputs and the output of an op from the arena at once. The
/// backbone's validation guarantees the output overlaps neither input.
fn split_io<'x>(
    arena: &'x mut [i8],
    a: &TensorInfo,
    b: Option<&TensorInfo>,
    o: &TensorInfo,
    out_len: usize,
) -> (&'x [i8], &'x [i8], &'x mut [i8]) {
    let o0 = o.arena_off as usize;
    let o1 = o0 + o.capacity as usize;
    let (lo, hi) = arena.split_at_mut(o0);
    let (out, rest) = hi.split_at_mut(o.capacity as usize);
    let lo: &'x [i8] = lo;
    let rest: &'x [i8] = rest;
    let pick = |t: &TensorInfo| -> &'x [i8] {
        let s = t.arena_off as usize;
        let n = t.len();
        if s + n <= o0 {
            &lo[s..s + n]
        } else {
            let s = s - o1;
            &rest[s..s + n]
        }
    };
    let ia = pick(a);
    let ib = match b {
        Some(t) => pick(t),
        None => &[],
    };
    (ia, ib, &mut out[..out_len])
}
