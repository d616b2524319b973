//! `graftnet export --share-prefix`: a task keeps the base's int8 form for
//! every op it leaves unchanged, so devices can run those ops once for
//! several tasks (`Engine::run_tasks`).
//!
//! Without it every task is calibrated on its own data: even a task whose
//! weights equal the base's up to its classifier gets its own activation
//! ranges, hence its own scales, gains, tables and corrected biases
//! everywhere, and shares no op with the base or with another task. With
//! it:
//! - an IR tensor is *unchanged* when it is the graph input or the output
//!   of a node whose op (weights included, compared exactly) and inputs
//!   are the base's, and all of whose inputs are unchanged: its float
//!   values equal the base's on every input;
//! - unchanged tensors take the base's calibration ranges (observed and
//!   chosen, per tensor and per channel), so they quantize, gain and
//!   tabulate exactly as in the base;
//! - a quantized op whose every field equals the base's (before bias
//!   correction), with the same quantization of the tensors it reads and
//!   writes, and whose inputs come from such ops, is *frozen*: it takes
//!   the base's corrected biases and bias correction leaves it alone.
//!
//! The patch then carries only the ops after the first change (for a
//! logits-only task: the classifier) and the tensor quantization, and the
//! runtime finds the frozen prefix shared. The cost is accuracy where the
//! task's data differ from the base's calibration data; `graftnet eval`
//! measures it per task (README, "Several tasks on one input").

use crate::ir::Graph;
use crate::quantize::{QModel, QOp, Ranges};

/// The base as a task is quantized against under `--share-prefix`.
pub struct SharedBase<'b> {
    pub graph: &'b Graph,
    pub ranges: &'b Ranges,
    /// before bias correction (the same as `corrected` without it)
    pub q: &'b QModel,
    /// as exported
    pub corrected: &'b QModel,
}

/// IR tensors of `task` whose float values equal `base`'s for every input
/// (see the module doc).
pub fn unchanged_tensors(base: &Graph, task: &Graph) -> Vec<bool> {
    let mut same = vec![false; task.tensors.len()];
    let same_input = base.input == task.input
        && base.tensors.get(base.input).map(|t| t.shape) == Some(task.shape(task.input));
    if !same_input {
        return same;
    }
    same[task.input] = true;
    for (i, n) in task.nodes.iter().enumerate() {
        let Some(b) = base.nodes.get(i) else { break };
        let shape_same = base.tensors.get(b.output).map(|t| t.shape) == Some(task.shape(n.output));
        if b.op == n.op
            && b.inputs == n.inputs
            && b.output == n.output
            && shape_same
            && n.inputs
                .iter()
                .all(|&t| same.get(t).copied().unwrap_or(false))
        {
            same[n.output] = true;
        }
    }
    same
}

/// Gives the unchanged tensors of a task's calibration `ranges` the base's.
pub fn share_ranges(shared: &SharedBase<'_>, task: &Graph, ranges: &mut Ranges) {
    let same = unchanged_tensors(shared.graph, task);
    let b = shared.ranges;
    for (t, _) in same.iter().enumerate().filter(|(_, &s)| s) {
        ranges.min[t] = b.min[t];
        ranges.max[t] = b.max[t];
        ranges.lo[t] = b.lo[t];
        ranges.hi[t] = b.hi[t];
        ranges.ch_min[t] = b.ch_min[t].clone();
        ranges.ch_max[t] = b.ch_max[t].clone();
    }
}

/// Ops of the task's `q` (quantized with shared ranges, not yet bias
/// corrected) that are frozen (module doc); for each, the base's corrected
/// bias codes are copied in.
pub fn freeze_prefix(shared: &SharedBase<'_>, q: &mut QModel) -> Vec<bool> {
    let base = shared.q;
    let mut frozen = vec![false; q.ops.len()];
    if base.ops.len() != q.ops.len() || base.tensors.len() != q.tensors.len() {
        return frozen;
    }
    let tensor_same = |t: usize| {
        let (a, b) = (&base.tensors[t], &q.tensors[t]);
        a.shape == b.shape
            && a.scale.to_bits() == b.scale.to_bits()
            && a.zp == b.zp
            && a.gains == b.gains
            && a.alias_of == b.alias_of
    };
    // A tensor is computed by frozen ops alone: the input, an alias of
    // such a tensor, or the output of a frozen op.
    let mut ready = vec![false; q.tensors.len()];
    ready[q.input] = tensor_same(q.input);
    let resolve = |ready: &[bool], t: usize| -> bool {
        let mut t = t;
        for _ in 0..q.tensors.len() {
            if ready[t] {
                return true;
            }
            match q.tensors[t].alias_of {
                Some(a) => t = a,
                None => return false,
            }
        }
        false
    };
    for (i, (a, b)) in base.ops.iter().zip(&q.ops).enumerate() {
        let inputs_ready = resolve(&ready, b.in0) && b.in1.is_none_or(|t| resolve(&ready, t));
        // (node names may differ between the two files)
        let same = same_op(a, b)
            && i != q.head_op
            && tensor_same(b.in0)
            && b.in1.is_none_or(tensor_same)
            && tensor_same(b.out);
        if inputs_ready && same {
            frozen[i] = true;
            ready[b.out] = true;
        }
    }
    for (i, f) in frozen.iter().enumerate() {
        if *f {
            q.ops[i].bias_codes = shared.corrected.ops[i].bias_codes.clone();
        }
    }
    frozen
}

/// Two quantized ops are the same but for their node names.
fn same_op(a: &QOp, b: &QOp) -> bool {
    let renamed = QOp {
        name: a.name.clone(),
        ..b.clone()
    };
    renamed == *a
}
