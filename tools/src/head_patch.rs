//! Exporting a task whose network differs from the base only after a cut
//! (a hidden layer before the classifier, another head): the patch carries
//! the replacement ops whole as a head network (`graftnet::format::head`,
//! `FORMAT.md` "Patches that bring their own head").
//!
//! The cut is the first op where the task's quantized ops stop matching
//! the base's (kind, connections, geometry, tensor shapes), at the latest
//! the base's classifier. The task's ops from there on must read, from
//! before the cut, exactly one tensor (the *cut tensor*), which the base
//! still reads at or after the cut (so it is live there). The ops before
//! the cut become ordinary entries (S/B codes, rows, DW weights, tables,
//! against the base), the ops after it a small backbone of their own,
//! quantized exactly as in the task exported alone, so backbone + patch
//! equals the task exported alone, bit for bit.

use anyhow::{bail, Context, Result};
use graftnet::format::{EntryClass, EntryKind, NONE};

use crate::export::{self, OtherPolicy, PatchEntry};
use crate::quantize::{QModel, QOp};

/// Connections and geometry of an op (what must match before the cut).
fn geom(o: &QOp) -> impl PartialEq + '_ {
    (
        o.kind, o.act, o.in0, o.in1, o.out, o.kh, o.kw, o.sh, o.sw, o.pads, o.groups, o.flags,
    )
}

/// The first op of `task` that does not match `base`'s (at most the
/// base's classifier).
pub fn cut_op(base: &QModel, task: &QModel) -> usize {
    let shapes_same = |b: &QOp, t: &QOp| {
        let sh = |q: &QModel, i: Option<usize>| i.map(|i| q.tensors.get(i).map(|x| x.shape));
        sh(base, Some(b.in0)) == sh(task, Some(t.in0))
            && sh(base, b.in1) == sh(task, t.in1)
            && sh(base, Some(b.out)) == sh(task, Some(t.out))
    };
    (0..base.head_op.min(task.ops.len()))
        .find(|&i| {
            geom(&base.ops[i]) != geom(&task.ops[i]) || !shapes_same(&base.ops[i], &task.ops[i])
        })
        .unwrap_or(base.head_op.min(task.ops.len()))
}

/// A head patch's entries, when `task` differs from `base` after a cut:
/// the ops before the cut against the base, the tensor quantization of
/// the base's tensors under the task, and the head network.
pub fn head_entries(
    base: &QModel,
    task: &QModel,
    policy: OtherPolicy,
    task_name: &str,
    arena_len: usize,
) -> Result<(Vec<PatchEntry>, HeadReport)> {
    let k = cut_op(base, task);
    let fail = |what: String| {
        anyhow::anyhow!("task '{task_name}' cannot be a patch with its own head: {what}")
    };
    if k == 0 {
        return Err(fail("it differs from the base from its first op".into()));
    }
    // Tensors the head ops read from before the cut.
    let produced_after: Vec<usize> = task.ops[k..].iter().map(|o| o.out).collect();
    let root = |t: usize| task.tensors[t].alias_of.unwrap_or(t);
    let mut outside: Vec<usize> = Vec::new();
    for o in &task.ops[k..] {
        for t in std::iter::once(o.in0).chain(o.in1) {
            if !produced_after.contains(&root(t)) && !outside.contains(&t) {
                outside.push(t);
            }
        }
    }
    let [cut] = outside[..] else {
        return Err(fail(format!(
            "its ops after op {k} (node '{}') read {} tensors from before it; a head reads exactly one",
            task.ops[k].name,
            outside.len()
        )));
    };
    if cut >= base.tensors.len() || base.tensors[cut].shape != task.tensors[cut].shape {
        return Err(fail(format!(
            "the tensor its head reads ('{}') is not the base's",
            task.tensors[cut].name
        )));
    }
    let live = base.ops[k..]
        .iter()
        .any(|o| o.in0 == cut || o.in1 == Some(cut));
    if !live {
        return Err(fail(format!(
            "the base does not read '{}' after op {k}, so it is not kept there",
            task.tensors[cut].name
        )));
    }
    // The head network: the cut tensor as its input, then the task's ops.
    let mut map: Vec<Option<usize>> = vec![None; task.tensors.len()];
    let mut tensors = Vec::new();
    let mut add = |t: usize, map: &mut Vec<Option<usize>>| -> usize {
        if let Some(i) = map[t] {
            return i;
        }
        let mut x = task.tensors[t].clone();
        x.alias_of = None;
        tensors.push(x);
        map[t] = Some(tensors.len() - 1);
        tensors.len() - 1
    };
    add(cut, &mut map);
    let mut ops = Vec::new();
    for o in &task.ops[k..] {
        let mut h = o.clone();
        h.in0 = add(o.in0, &mut map);
        h.in1 = o.in1.map(|t| add(t, &mut map));
        h.out = add(o.out, &mut map);
        ops.push(h);
    }
    // Aliases inside the head keep pointing at their (mapped) roots.
    for (t, m) in map.iter().enumerate() {
        if let (Some(i), Some(a)) = (m, task.tensors[t].alias_of) {
            tensors[*i].alias_of = map[a];
        }
    }
    let output = map[task.output].context("the task's output is not written after the cut")?;
    let head_op = task
        .head_op
        .checked_sub(k)
        .filter(|&h| h < ops.len())
        .context("the task's classifier lies before the cut")?;
    let head = QModel {
        tensors,
        ops,
        input: 0,
        output,
        head_op,
        softmax: task.softmax,
        labels: task.labels.clone(),
    };
    let net = export::emit_backbone(&head, head.classes())
        .with_context(|| format!("task '{task_name}': writing its head network"))?;
    if net.plan.arena_len > arena_len {
        bail!(
            "task '{task_name}': its head network needs {} bytes of arena, more than the backbone's {arena_len}",
            net.plan.arena_len
        );
    }
    let mut out = export::op_entries(base, task, k, policy, task_name)?;
    // The base's tensors under the task: its quantization where the task
    // has the tensor (before the cut), the base's elsewhere (unused).
    let mut tq = base.clone();
    for (t, x) in tq.tensors.iter_mut().enumerate() {
        let used = task.ops[..k]
            .iter()
            .any(|o| o.in0 == t || o.in1 == Some(t) || o.out == t)
            || t == cut
            || t == task.input;
        if used {
            x.scale = task.tensors[t].scale;
            x.zp = task.tensors[t].zp;
        }
    }
    out.extend(export::whole_model_entries(&tq, &task.labels));
    let mut payload = Vec::with_capacity(8 + net.bytes.len());
    payload.extend_from_slice(&(k as u16).to_le_bytes());
    payload.extend_from_slice(&(cut as u16).to_le_bytes());
    payload.extend_from_slice(&0u32.to_le_bytes()); // arena_off
    payload.extend_from_slice(&net.bytes);
    out.push(PatchEntry::new(
        EntryKind::Head,
        EntryClass::Head,
        NONE,
        payload,
    ));
    out.sort_by_key(|e| (e.op, e.kind as u8));
    let report = HeadReport {
        cut_op: k,
        cut_node: task.ops[k].name.clone(),
        ops: head
            .ops
            .iter()
            .map(|o| format!("{} ({})", o.name, o.kind.name()))
            .collect(),
        params_len: net.params_len,
        arena_len: net.plan.arena_len,
    };
    Ok((out, report))
}

/// What a head patch replaces, for reports.
#[derive(Clone, Debug)]
pub struct HeadReport {
    /// the backbone runs ops `0..cut_op`
    pub cut_op: usize,
    /// the task's node at the cut
    pub cut_node: String,
    /// the head network's ops: `node (kind)`
    pub ops: Vec<String>,
    pub params_len: usize,
    pub arena_len: usize,
}
