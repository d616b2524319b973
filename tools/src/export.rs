//! From quantized models to blobs: arena planning, the backbone, and task
//! patches found by diffing a task's quantized model against the base's.
//!
//! Blob bytes are written only through the runtime's own `emit` functions
//! and layout rule (`graftnet::format`), so the format has one definition.

use anyhow::{bail, Result};
use graftnet::format::backbone::{self as bbf, HeaderRepr, Layout, OpInfo, TensorInfo};
use graftnet::format::entry::{emit_entry, emit_rows, entry_len, rows_payload_len};
use graftnet::format::patch::{self as pf};
use graftnet::format::{align_up, EntryClass, EntryKind, OpKind, ARENA_ALIGN, NONE};
use graftnet::quant::SCALE_SIGN;

use crate::quantize::{QModel, QOp};

/// What to do with a parameter change no patch kind covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OtherPolicy {
    /// Refuse the task, saying where it differs.
    #[default]
    Reject,
    /// Carry the whole changed tensor in the patch (class "other").
    Override,
}

/// One entry to be written.
#[derive(Clone, Debug, PartialEq)]
pub struct PatchEntry {
    pub kind: EntryKind,
    pub class: EntryClass,
    pub op: u16,
    pub payload: Vec<u8>,
}

impl PatchEntry {
    pub(crate) fn new(kind: EntryKind, class: EntryClass, op: u16, payload: Vec<u8>) -> Self {
        PatchEntry {
            kind,
            class,
            op,
            payload,
        }
    }
    /// Bytes the entry takes in a blob.
    pub fn len(&self) -> usize {
        entry_len(self.payload.len())
    }
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }
}

/// The arena plan and its lower bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaPlan {
    /// byte offset of each tensor
    pub offsets: Vec<usize>,
    /// bytes reserved for each tensor
    pub capacity: Vec<usize>,
    /// arena bytes
    pub arena_len: usize,
    /// the most bytes live at once (no plan can use less)
    pub lower_bound: usize,
}

/// Plans the arena: tensors live from the op that writes them to the last op
/// that reads them; buffers are placed greedily, largest first, at the
/// lowest 16-aligned offset that clashes with no buffer live at the same time.
/// With `share == false`, a plan in which no two tensors share memory (for
/// debugging: every tensor stays readable after a run).
pub fn plan_arena_with(q: &QModel, max_classes: usize, share: bool) -> ArenaPlan {
    let n = q.tensors.len();
    let n_ops = q.ops.len();
    let root = |t: usize| q.tensors[t].alias_of.unwrap_or(t);
    let mut start = vec![usize::MAX; n];
    let mut end = vec![0usize; n];
    let mut size = vec![0usize; n];
    let mut used = vec![false; n];
    for t in 0..n {
        let r = root(t);
        let mut s = q.tensors[t].shape.len();
        if t == q.output || r == root(q.output) {
            s = s.max(max_classes);
        }
        size[r] = size[r].max(s);
    }
    start[root(q.input)] = 0;
    used[root(q.input)] = true;
    for (i, op) in q.ops.iter().enumerate() {
        let o = root(op.out);
        start[o] = start[o].min(i);
        end[o] = end[o].max(i);
        used[o] = true;
        for t in [Some(op.in0), op.in1].into_iter().flatten() {
            let r = root(t);
            end[r] = end[r].max(i);
            start[r] = start[r].min(i);
            used[r] = true;
        }
    }
    let out = root(q.output);
    end[out] = n_ops;
    let mut order: Vec<usize> = (0..n).filter(|&t| used[t] && root(t) == t).collect();
    order.sort_by(|&a, &b| size[b].cmp(&size[a]).then(a.cmp(&b)));
    let mut offsets = vec![0usize; n];
    let mut placed: Vec<usize> = Vec::new();
    let mut arena_len = 0;
    for &t in &order {
        // Intervals already taken during t's lifetime, sorted by offset.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&p| !share || (start[p] <= end[t] && start[t] <= end[p]))
            .map(|&p| (offsets[p], offsets[p] + align_up(size[p], ARENA_ALIGN)))
            .collect();
        busy.sort();
        let need = align_up(size[t], ARENA_ALIGN);
        let mut off = 0;
        for (s, e) in busy {
            if off + need <= s {
                break;
            }
            off = off.max(e);
        }
        offsets[t] = off;
        arena_len = arena_len.max(off + need);
        placed.push(t);
    }
    let mut lower_bound = 0;
    for i in 0..n_ops.max(1) {
        let live: usize = order
            .iter()
            .filter(|&&t| start[t] <= i && i <= end[t])
            .map(|&t| size[t])
            .sum();
        lower_bound = lower_bound.max(live);
    }
    let mut capacity = vec![0usize; n];
    for t in 0..n {
        let r = root(t);
        offsets[t] = offsets[r];
        capacity[t] = if r == t {
            size[t]
        } else {
            q.tensors[t].shape.len()
        };
    }
    ArenaPlan {
        offsets,
        capacity,
        arena_len,
        lower_bound,
    }
}

fn u16s(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i8s(v: &[i8]) -> Vec<u8> {
    v.iter().map(|&x| x as u8).collect()
}

/// The whole-model entries of a task: the tensor quantization of `tq`'s
/// tensors, and `labels` when there are any.
pub(crate) fn whole_model_entries(tq: &QModel, labels: &[String]) -> Vec<PatchEntry> {
    let mut v = vec![PatchEntry::new(
        EntryKind::TensorQuant,
        EntryClass::Activations,
        NONE,
        tensor_quant_payload(tq),
    )];
    if !labels.is_empty() {
        v.push(PatchEntry::new(
            EntryKind::Labels,
            EntryClass::Meta,
            NONE,
            labels_payload(labels),
        ));
    }
    v
}

fn tensor_quant_payload(q: &QModel) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 * q.tensors.len());
    for t in &q.tensors {
        p.extend_from_slice(&t.scale.to_le_bytes());
        p.push(t.zp as u8);
        p.extend_from_slice(&[0, 0, 0]);
    }
    p
}

fn labels_payload(labels: &[String]) -> Vec<u8> {
    labels.join("\n").into_bytes()
}

/// The base task's entries (everything the runtime needs for every op).
fn base_entries(q: &QModel) -> Vec<PatchEntry> {
    let mut v = Vec::new();
    for (i, op) in q.ops.iter().enumerate() {
        let i = i as u16;
        if op.kind.has_weights() {
            v.push(PatchEntry::new(
                EntryKind::ScaleCodes,
                EntryClass::ScaleBias,
                i,
                u16s(&op.scale_codes),
            ));
            v.push(PatchEntry::new(
                EntryKind::BiasCodes,
                EntryClass::ScaleBias,
                i,
                u16s(&op.bias_codes),
            ));
        }
        if let Some(t) = &op.lut {
            v.push(PatchEntry::new(
                EntryKind::Lut,
                EntryClass::Activations,
                i,
                t.clone(),
            ));
        }
    }
    v.extend(whole_model_entries(q, &q.labels));
    v
}

fn write_entries(entries: &[PatchEntry], out: &mut [u8]) -> usize {
    let mut pos = 0;
    for e in entries {
        pos += emit_entry(&mut out[pos..], e.kind, e.class, e.op, &e.payload);
    }
    pos
}

/// A written backbone and what went into it.
#[derive(Clone, Debug)]
pub struct BackboneBlob {
    pub bytes: Vec<u8>,
    pub plan: ArenaPlan,
    pub weights_len: usize,
    pub task_len: usize,
    pub params_len: usize,
}

/// Writes the backbone blob for a quantized base model.
pub fn emit_backbone(q: &QModel, max_classes: usize) -> Result<BackboneBlob> {
    emit_backbone_with(q, max_classes, true)
}

/// [`emit_backbone`]; `share_arena == false` gives every tensor its own
/// arena bytes (see [`plan_arena_with`]).
pub fn emit_backbone_with(
    q: &QModel,
    max_classes: usize,
    share_arena: bool,
) -> Result<BackboneBlob> {
    if q.tensors.len() >= NONE as usize || q.ops.len() >= NONE as usize {
        bail!(
            "the model has {} tensors and {} ops; the format holds at most 65534 of each",
            q.tensors.len(),
            q.ops.len()
        );
    }
    let max_classes = max_classes.max(q.classes());
    if max_classes > u16::MAX as usize {
        bail!("{max_classes} classes exceed the format's limit of 65535");
    }
    for t in &q.tensors {
        let s = t.shape;
        if s.c > u16::MAX as usize || s.h > u16::MAX as usize || s.w > u16::MAX as usize {
            bail!(
                "tensor '{}' has shape {s}; each dimension must be below 65536",
                t.name
            );
        }
    }
    let plan = plan_arena_with(q, max_classes, share_arena);
    // Weight section: per conv op, weights (16-aligned) then int32 sums (4-aligned).
    let mut weights: Vec<u8> = Vec::new();
    let mut woff = vec![(0u32, 0u32); q.ops.len()];
    for (i, op) in q.ops.iter().enumerate() {
        if !op.kind.has_weights() {
            continue;
        }
        weights.resize(align_up(weights.len(), 16), 0);
        let w = weights.len();
        weights.extend(i8s(&op.weights));
        weights.resize(align_up(weights.len(), 4), 0);
        let s = weights.len();
        for c in 0..op.cout() {
            let sum: i32 = op.row(c).iter().map(|&x| x as i32).sum();
            weights.extend_from_slice(&sum.to_le_bytes());
        }
        woff[i] = (w as u32, s as u32);
    }
    let entries = base_entries(q);
    let task_len: usize = entries.iter().map(|e| e.len()).sum();
    let layout = Layout::new(q.tensors.len(), q.ops.len(), task_len, weights.len());
    let mut blob = vec![0u8; layout.total_len];
    let mut params_len = 0;
    for (i, t) in q.tensors.iter().enumerate() {
        let rec = TensorInfo {
            c: t.shape.c as u16,
            h: t.shape.h as u16,
            w: t.shape.w as u16,
            alias_of: t.alias_of.map_or(NONE, |a| a as u16),
            arena_off: plan.offsets[i] as u32,
            capacity: plan.capacity[i] as u32,
        };
        rec.emit(&mut blob[layout.tensors_off + i * bbf::TENSOR_LEN..]);
    }
    for (i, op) in q.ops.iter().enumerate() {
        let rec = op_record(op, woff[i]);
        let cout = if i == q.head_op {
            max_classes
        } else {
            q.tensors[op.out].shape.c
        };
        params_len += bbf::param_slots(&rec, cout);
        rec.emit(&mut blob[layout.ops_off + i * bbf::OP_LEN..]);
    }
    write_entries(
        &entries,
        &mut blob[layout.task_off..layout.task_off + task_len],
    );
    blob[layout.weights_off..].copy_from_slice(&weights);
    let hdr = HeaderRepr {
        total_len: layout.total_len as u32,
        fingerprint: 0,
        n_tensors: q.tensors.len() as u16,
        n_ops: q.ops.len() as u16,
        input: q.input as u16,
        output: q.output as u16,
        head_op: q.head_op as u16,
        max_classes: max_classes as u16,
        flags: if q.softmax { bbf::FLAG_SOFTMAX } else { 0 },
        tensors_off: layout.tensors_off as u32,
        ops_off: layout.ops_off as u32,
        task_off: layout.task_off as u32,
        task_len: task_len as u32,
        weights_off: layout.weights_off as u32,
        weights_len: weights.len() as u32,
        arena_len: plan.arena_len as u32,
        params_len: params_len as u32,
        n_task_entries: entries.len() as u32,
    };
    hdr.emit(&mut blob);
    bbf::seal(&mut blob);
    Ok(BackboneBlob {
        bytes: blob,
        plan,
        weights_len: weights.len(),
        task_len,
        params_len,
    })
}

fn op_record(op: &QOp, (weight_off, sums_off): (u32, u32)) -> OpInfo {
    OpInfo {
        kind: op.kind,
        act: op.act,
        in0: op.in0 as u16,
        in1: op.in1.map_or(NONE, |t| t as u16),
        out: op.out as u16,
        kh: op.kh as u8,
        kw: op.kw as u8,
        sh: op.sh as u8,
        sw: op.sw as u8,
        pads: [
            op.pads[0] as u8,
            op.pads[1] as u8,
            op.pads[2] as u8,
            op.pads[3] as u8,
        ],
        groups: op.groups as u16,
        flags: op.flags,
        weight_off,
        sums_off,
        act_lo: op.act_lo,
        act_hi: op.act_hi,
    }
}

/// Relative residual below which a task's weight row counts as the base's
/// row times a per-channel factor (batch norm folded at export).
pub const FACTOR_TOLERANCE: f64 = 1e-3;

/// `Some(k)` when `t ~= k * b` (per-channel factor), else `None`.
fn channel_factor(t: &[f32], b: &[f32]) -> Option<f64> {
    let (mut tb, mut bb, mut tt) = (0f64, 0f64, 0f64);
    for (&x, &y) in t.iter().zip(b) {
        tb += x as f64 * y as f64;
        bb += y as f64 * y as f64;
        tt += x as f64 * x as f64;
    }
    if tt == 0.0 {
        return Some(0.0);
    }
    if bb == 0.0 {
        return None;
    }
    let k = tb / bb;
    let mut r = 0f64;
    for (&x, &y) in t.iter().zip(b) {
        let d = x as f64 - k * y as f64;
        r += d * d;
    }
    if (r / tt).sqrt() < FACTOR_TOLERANCE {
        Some(k)
    } else {
        None
    }
}

/// Finds the patch that turns `base` into `task`: both are quantized models
/// of the same architecture. Errors say where the task differs beyond what a
/// patch may express.
pub fn diff(
    base: &QModel,
    task: &QModel,
    policy: OtherPolicy,
    task_name: &str,
) -> Result<Vec<PatchEntry>> {
    let fail = |what: String| -> anyhow::Error {
        anyhow::anyhow!(
            "task '{task_name}' differs from the base beyond what a patch may express: {what}"
        )
    };
    if base.ops.len() != task.ops.len() || base.tensors.len() != task.tensors.len() {
        let n = base.ops.len().min(task.ops.len());
        let at = (0..n)
            .find(|&i| base.ops[i].kind != task.ops[i].kind || base.ops[i].in0 != task.ops[i].in0)
            .unwrap_or(n);
        let node = task
            .ops
            .get(at)
            .or(base.ops.get(at))
            .map_or("<end>", |o| o.name.as_str());
        return Err(fail(format!(
            "the graphs have {} vs {} ops and {} vs {} tensors (first difference at op {at}, node '{node}')",
            base.ops.len(),
            task.ops.len(),
            base.tensors.len(),
            task.tensors.len()
        )));
    }
    if base.head_op != task.head_op || base.output != task.output || base.input != task.input {
        return Err(fail(
            "the classifier or the graph input/output is a different node".into(),
        ));
    }
    for (t, (a, b)) in base.tensors.iter().zip(&task.tensors).enumerate() {
        if (a.shape != b.shape && t != base.output) || a.alias_of != b.alias_of {
            return Err(fail(format!(
                "tensor {t} ('{}') has shape {} in the base and {} in the task",
                b.name, a.shape, b.shape
            )));
        }
    }
    let mut out = op_entries(base, task, base.ops.len(), policy, task_name)?;
    out.extend(whole_model_entries(task, &task.labels));
    out.sort_by_key(|e| (e.op, e.kind as u8));
    Ok(out)
}

/// The entries of ops `0..n_ops` that turn `base` into `task` (both with
/// the same ops there): codes, rows, weights, tables. Errors say where the
/// task differs beyond what a patch may express.
pub(crate) fn op_entries(
    base: &QModel,
    task: &QModel,
    n_ops: usize,
    policy: OtherPolicy,
    task_name: &str,
) -> Result<Vec<PatchEntry>> {
    let fail = |what: String| -> anyhow::Error {
        anyhow::anyhow!(
            "task '{task_name}' differs from the base beyond what a patch may express: {what}"
        )
    };
    let mut out = Vec::new();
    for (i, (b, t)) in base.ops.iter().zip(&task.ops).enumerate().take(n_ops) {
        let where_ = |what: &str| {
            fail(format!(
                "op {i} (node '{}', {}): {what}",
                t.name,
                t.kind.name()
            ))
        };
        let geom = |o: &QOp| {
            (
                o.kind, o.act, o.in0, o.in1, o.out, o.kh, o.kw, o.sh, o.sw, o.pads, o.groups,
                o.flags,
            )
        };
        if geom(b) != geom(t) {
            return Err(where_("kind, connections or geometry differ"));
        }
        if b.act_lo.to_bits() != t.act_lo.to_bits() || b.act_hi.to_bits() != t.act_hi.to_bits() {
            return Err(where_("the activation function differs"));
        }
        if b.kind == OpKind::Lut && b.unary != t.unary {
            return Err(where_("the elementwise function differs"));
        }
        let op = i as u16;
        if let (Some(lb), Some(lt)) = (&b.lut, &t.lut) {
            if lb != lt {
                out.push(PatchEntry::new(
                    EntryKind::Lut,
                    EntryClass::Activations,
                    op,
                    lt.clone(),
                ));
            }
        }
        if !b.kind.has_weights() {
            continue;
        }
        let is_head = i == base.head_op;
        let same_shape = b.weights.len() == t.weights.len();
        let codes = |class: EntryClass, out: &mut Vec<PatchEntry>, scale: &[u16]| {
            if scale != b.scale_codes.as_slice() {
                out.push(PatchEntry::new(
                    EntryKind::ScaleCodes,
                    class,
                    op,
                    u16s(scale),
                ));
            }
            if t.bias_codes != b.bias_codes {
                out.push(PatchEntry::new(
                    EntryKind::BiasCodes,
                    class,
                    op,
                    u16s(&t.bias_codes),
                ));
            }
        };
        if is_head {
            if !same_shape
                || b.weights != t.weights
                || b.scale_codes != t.scale_codes
                || b.bias_codes != t.bias_codes
            {
                out.push(PatchEntry::new(
                    EntryKind::ScaleCodes,
                    EntryClass::Head,
                    op,
                    u16s(&t.scale_codes),
                ));
                out.push(PatchEntry::new(
                    EntryKind::BiasCodes,
                    EntryClass::Head,
                    op,
                    u16s(&t.bias_codes),
                ));
                if b.weights != t.weights {
                    out.push(PatchEntry::new(
                        EntryKind::Weights,
                        EntryClass::Head,
                        op,
                        i8s(&t.weights),
                    ));
                }
                if t.cout() != b.cout() {
                    let mut p = (t.cout() as u16).to_le_bytes().to_vec();
                    p.extend_from_slice(&[0, 0]);
                    out.push(PatchEntry::new(EntryKind::Classes, EntryClass::Head, op, p));
                }
            }
            continue;
        }
        if b.weights == t.weights {
            codes(EntryClass::ScaleBias, &mut out, &t.scale_codes);
            continue;
        }
        // Is every output channel the base's row times a factor?
        let row = t.row_len();
        let cout = t.cout();
        let factors: Option<Vec<f64>> = (0..cout)
            .map(|c| {
                channel_factor(
                    &t.float_rows[c * row..(c + 1) * row],
                    &b.float_rows[c * row..(c + 1) * row],
                )
            })
            .collect();
        if let Some(k) = factors {
            // S/B: reuse the base's int8 weights, negated where k < 0; rows
            // that rounding moved are carried whole.
            let mut scale = t.scale_codes.clone();
            let mut chans = Vec::new();
            let mut rows = Vec::new();
            for c in 0..cout {
                let neg = k[c] < 0.0;
                let qb = b.row(c);
                let qt = t.row(c);
                let eff: Vec<i8> = qb.iter().map(|&x| if neg { -x } else { x }).collect();
                if neg {
                    scale[c] |= SCALE_SIGN;
                }
                if eff != qt {
                    chans.push(c as u16);
                    rows.extend(qt.iter().map(|&x| (if neg { -x } else { x }) as u8));
                }
            }
            let rows_len = rows_payload_len(chans.len(), row);
            if rows_len < t.weights.len() {
                codes(EntryClass::ScaleBias, &mut out, &scale);
                if !chans.is_empty() {
                    let mut p = vec![0u8; rows_len];
                    emit_rows(&mut p, &chans, &rows, row);
                    out.push(PatchEntry::new(
                        EntryKind::Rows,
                        EntryClass::ScaleBias,
                        op,
                        p,
                    ));
                }
            } else {
                codes(EntryClass::ScaleBias, &mut out, &t.scale_codes);
                out.push(PatchEntry::new(
                    EntryKind::Weights,
                    EntryClass::ScaleBias,
                    op,
                    i8s(&t.weights),
                ));
            }
            continue;
        }
        let class = if t.kind == OpKind::DwConv {
            EntryClass::Depthwise
        } else if policy == OtherPolicy::Override {
            EntryClass::Other
        } else {
            return Err(where_(
                "weights changed beyond a per-output-channel factor (not batch norm, not depthwise, not the classifier); export with --other override to carry the whole tensor",
            ));
        };
        codes(class, &mut out, &t.scale_codes);
        out.push(PatchEntry::new(
            EntryKind::Weights,
            class,
            op,
            i8s(&t.weights),
        ));
    }
    Ok(out)
}

/// Writes a patch blob.
pub fn emit_patch(
    name: &str,
    backbone_fingerprint: u64,
    classes: usize,
    entries: &[PatchEntry],
    task_version: u32,
) -> Result<Vec<u8>> {
    if name.len() > pf::MAX_NAME_LEN {
        bail!(
            "task name '{name}' is longer than {} bytes",
            pf::MAX_NAME_LEN
        );
    }
    let entries_off = pf::HeaderRepr::entries_off(name.len());
    let body: usize = entries.iter().map(|e| e.len()).sum();
    let total = entries_off + body;
    let mut blob = vec![0u8; total];
    let hdr = pf::HeaderRepr {
        total_len: total as u32,
        backbone: backbone_fingerprint,
        n_entries: entries.len() as u32,
        classes: classes as u16,
        name_len: name.len() as u16,
        entries_off: entries_off as u32,
        task_version,
    };
    hdr.emit(&mut blob);
    blob[pf::HEADER_LEN..pf::HEADER_LEN + name.len()].copy_from_slice(name.as_bytes());
    write_entries(entries, &mut blob[entries_off..]);
    pf::seal(&mut blob);
    Ok(blob)
}

/// Bytes per entry class of a patch, for reports.
pub fn bytes_by_class(entries: &[PatchEntry]) -> Vec<(EntryClass, usize)> {
    EntryClass::ALL
        .iter()
        .map(|&c| {
            (
                c,
                entries
                    .iter()
                    .filter(|e| e.class == c)
                    .map(|e| e.len())
                    .sum(),
            )
        })
        .collect()
}
