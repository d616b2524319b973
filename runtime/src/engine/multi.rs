//! Several tasks on one input, the shared part once ([`Engine::run_tasks`]).
//!
//! Tasks of one backbone often run the same int8 ops for a long stretch: a
//! logits-only task differs from the base only in its classifier, a task
//! that adapted its last blocks only there (when exported with
//! `graftnet export --share-prefix`, which keeps the base's quantization
//! for every op the task leaves unchanged). `run_tasks` finds the longest
//! prefix of ops whose int8 behaviour every listed task shares, runs it
//! once, keeps the tensors the rest of the network reads (the *branch*) in
//! a caller-owned buffer, and for each task restores them and runs the
//! remaining ops.
//!
//! Shared means identical, not close: op `i` is in the prefix when every
//! task gives it byte-identical entries (scale and bias codes, weights,
//! replaced rows, tables, with the backbone's where a patch has none) and
//! the same quantization for the tensors it reads and writes. Those fix
//! the op's derived parameters, and the ops before it fix its inputs, so
//! each task's scores equal a separate `apply` + `run` of that task, bit
//! for bit, on every kernel table and thread count.
//!
//! Memory: nothing beyond the engine's arena and parameter table, and the
//! branch buffer ([`SharedPrefix::branch_len`] bytes, at most the arena).
//! The parameter table is re-derived per task from the first unshared op
//! on (the shared blocks are the same for all), and for the previously
//! active task once at the end.

use super::{check_finite, tensor_quant, tq_of, Cursor, Engine, OpEntries, Scores};
use crate::error::{Error, RunError};
use crate::format::backbone::{Backbone, TensorInfo};
use crate::format::patch::Patch;
use crate::format::NONE;

/// What the tasks of a [`Engine::run_tasks`] call share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedPrefix {
    /// Ops run once for all tasks (the first `ops` of the backbone).
    pub ops: usize,
    /// Ops in the backbone.
    pub of: usize,
    /// Bytes of the tensors kept at the branch point (the branch buffer
    /// `run_tasks` needs).
    pub branch_len: usize,
}

/// An input given to `run_tasks`.
#[derive(Clone, Copy)]
enum Input<'x> {
    /// int8 NHWC
    I8(&'x [i8]),
    /// float NCHW, quantized with each task's input quantization
    F32(&'x [f32]),
}

/// One task's view for comparing ops: its entry cursors, tensor
/// quantization and class count.
#[derive(Clone)]
struct TaskOps<'a> {
    base: Cursor<'a>,
    patch: Cursor<'a>,
    tq: &'a [u8],
    classes: u16,
    /// ops of the backbone it runs (`Some` cut: its own head follows)
    cut: usize,
}

fn same_entries(a: &OpEntries<'_>, b: &OpEntries<'_>) -> bool {
    a.scale == b.scale
        && a.bias == b.bias
        && a.weights == b.weights
        && a.rows == b.rows
        && a.lut == b.lut
}

impl<'a, 'm> Engine<'a, 'm> {
    /// What `tasks` share on this backbone: the number of leading ops whose
    /// int8 behaviour is identical for all of them, and the branch buffer
    /// [`Engine::run_tasks`] needs. Checks every patch as
    /// [`Engine::apply`] does (signature on an engine with a key, backbone,
    /// entries); nothing changes.
    pub fn shared_prefix(&self, tasks: &[Option<Patch<'a>>]) -> Result<SharedPrefix, Error> {
        let n = self.bb.n_ops();
        let Some((first, rest)) = tasks.split_first() else {
            return Ok(SharedPrefix {
                ops: 0,
                of: n,
                branch_len: 0,
            });
        };
        // Every task against the first, op by op, walking each task's
        // entries once.
        let a0 = self.task_ops(first)?;
        // (a task with its own head keeps the backbone's ops up to its cut)
        let mut ops = a0.cut.min(n);
        for t in rest {
            let mut b = self.task_ops(t)?;
            let mut a = a0.clone();
            let mut i = 0;
            while i < ops && self.same_op(i, &mut a, &mut b) {
                i += 1;
            }
            ops = i;
        }
        Ok(SharedPrefix {
            ops,
            of: n,
            branch_len: branch_ranges(&self.bb, ops).map(|(_, len)| len).sum(),
        })
    }

    /// Runs every task of `tasks` on one int8 NHWC `input`, the ops they
    /// share once (see the module doc), and calls `each(k, scores)` with
    /// task `k`'s scores, in order. `branch` holds the tensors kept at the
    /// branch point: at least [`SharedPrefix::branch_len`] bytes
    /// ([`Engine::shared_prefix`] says how many before the call).
    ///
    /// The active task is the same before and after. Every patch is checked
    /// first as [`Engine::apply`] does; on an error no scores are given,
    /// except for a task whose quantization fails to derive, which stops
    /// the call after the tasks before it were given.
    pub fn run_tasks<F>(
        &mut self,
        input: &[i8],
        tasks: &[Option<Patch<'a>>],
        branch: &mut [i8],
        each: F,
    ) -> Result<SharedPrefix, Error>
    where
        F: FnMut(usize, Scores<'_>),
    {
        self.run_tasks_impl(Input::I8(input), tasks, branch, each)
    }

    /// [`Engine::run_tasks`] on a float NCHW input, quantized with each
    /// task's input quantization (once when the tasks share it). NaN or an
    /// infinity is refused ([`RunError::NonFiniteInput`]).
    pub fn run_tasks_f32<F>(
        &mut self,
        x_chw: &[f32],
        tasks: &[Option<Patch<'a>>],
        branch: &mut [i8],
        each: F,
    ) -> Result<SharedPrefix, Error>
    where
        F: FnMut(usize, Scores<'_>),
    {
        check_finite(x_chw)?;
        self.run_tasks_impl(Input::F32(x_chw), tasks, branch, each)
    }

    fn run_tasks_impl<F>(
        &mut self,
        input: Input<'_>,
        tasks: &[Option<Patch<'a>>],
        branch: &mut [i8],
        mut each: F,
    ) -> Result<SharedPrefix, Error>
    where
        F: FnMut(usize, Scores<'_>),
    {
        let t = self.bb.input();
        let got = match input {
            Input::I8(x) => x.len(),
            Input::F32(x) => x.len(),
        };
        if got != t.len() {
            return Err(RunError::InputSize {
                expected: t.len() as u32,
                got: got as u32,
            }
            .into());
        }
        let sp = self.shared_prefix(tasks)?;
        if tasks.is_empty() {
            return Ok(sp);
        }
        if branch.len() < sp.branch_len {
            return Err(RunError::BranchTooSmall {
                need: sp.branch_len as u32,
                have: branch.len() as u32,
            }
            .into());
        }
        let prev = (self.patch, self.tq, self.classes, self.head);
        let result = self.run_each(input, tasks, &sp, branch, &mut each);
        // Back to the task that was active (it derived before, so it
        // derives again).
        (self.patch, self.tq, self.classes, self.head) = prev;
        let _ = self.derive();
        result.map(|()| sp)
    }

    fn run_each(
        &mut self,
        input: Input<'_>,
        tasks: &[Option<Patch<'a>>],
        sp: &SharedPrefix,
        branch: &mut [i8],
        each: &mut dyn FnMut(usize, Scores<'_>),
    ) -> Result<(), Error> {
        for (k, patch) in tasks.iter().enumerate() {
            // (checked by `shared_prefix`: the header's class count is the
            // task's)
            let classes = patch.map_or(self.bb.base_classes(), |p| p.classes());
            let head = match patch {
                Some(p) => self.check_head(p)?,
                None => None,
            };
            // Task 0 derives everything; the others the unshared ops.
            let first = if k == 0 { 0 } else { sp.ops };
            self.switch(*patch, classes, head, first)?;
            if k == 0 {
                self.load_input(input)?;
                self.execute_ops(0, sp.ops);
                self.keep_branch(sp.ops, branch, true);
            } else {
                self.keep_branch(sp.ops, branch, false);
                if sp.ops == 0 {
                    // Nothing shared: the input may quantize differently.
                    self.load_input(input)?;
                }
            }
            self.execute_from(sp.ops);
            each(k, self.scores());
        }
        Ok(())
    }

    /// Puts the input into the arena under the active task.
    fn load_input(&mut self, input: Input<'_>) -> Result<(), RunError> {
        let t = self.bb.input();
        let off = t.arena_off as usize;
        let dst = self
            .arena
            .get_mut(off..off + t.len())
            .ok_or(RunError::InputSize {
                expected: t.len() as u32,
                got: 0,
            })?;
        match input {
            Input::I8(x) if x.len() == dst.len() => dst.copy_from_slice(x),
            Input::F32(x) => {
                let (s, zp) = tq_of(self.tq, self.bb.header().input as usize);
                let (c, hw) = (t.c as usize, t.h as usize * t.w as usize);
                super::quantize_nchw(x, s, zp, c, hw, dst)?;
            }
            Input::I8(x) => {
                return Err(RunError::InputSize {
                    expected: dst.len() as u32,
                    got: x.len() as u32,
                })
            }
        }
        Ok(())
    }

    /// Copies the branch tensors at op `at` into `branch` (`save`) or back
    /// into the arena.
    fn keep_branch(&mut self, at: usize, branch: &mut [i8], save: bool) {
        let mut pos = 0;
        let bb = self.bb;
        for (off, len) in branch_ranges(&bb, at) {
            let (Some(a), Some(b)) = (
                self.arena.get_mut(off..off + len),
                branch.get_mut(pos..pos + len),
            ) else {
                return;
            };
            if save {
                b.copy_from_slice(a);
            } else {
                a.copy_from_slice(b);
            }
            pos += len;
        }
    }

    /// Cursors, tensor quantization and classes of a task (`None`: the
    /// base), its patch checked.
    fn task_ops(&self, patch: &Option<Patch<'a>>) -> Result<TaskOps<'a>, Error> {
        let base_tq = || tensor_quant(self.bb.base_entries()).unwrap_or(&[]);
        Ok(match patch {
            None => TaskOps {
                base: Cursor::new(self.bb.base_entries()),
                patch: Cursor::empty(),
                tq: base_tq(),
                classes: self.bb.base_classes(),
                cut: self.bb.n_ops(),
            },
            Some(p) => {
                let (classes, head) = self.check(p)?;
                TaskOps {
                    classes,
                    base: Cursor::new(self.bb.base_entries()),
                    patch: Cursor::new(p.entries()),
                    tq: tensor_quant(p.entries()).unwrap_or_else(base_tq),
                    cut: head.map_or(self.bb.n_ops(), |h| h.head.cut_op as usize),
                }
            }
        })
    }

    /// Op `i` behaves the same under both tasks (their cursors are at op
    /// `i`).
    fn same_op(&self, i: usize, a: &mut TaskOps<'a>, b: &mut TaskOps<'a>) -> bool {
        let ea = Self::merged(&mut a.base, &mut a.patch, i as u16);
        let eb = Self::merged(&mut b.base, &mut b.patch, i as u16);
        let op = self.bb.op(i);
        let tensors = [op.in0, op.in1, op.out];
        let quant_same = tensors.iter().filter(|&&t| t != NONE).all(|&t| {
            let (sa, za) = tq_of(a.tq, t as usize);
            let (sb, zb) = tq_of(b.tq, t as usize);
            sa.to_bits() == sb.to_bits() && za == zb
        });
        let classes_same = i != self.bb.head_op() || a.classes == b.classes;
        let kept = i < a.cut && i < b.cut;
        kept && same_entries(&ea, &eb) && quant_same && classes_same
    }
}

/// Arena ranges `(offset, bytes)` of the tensors live at op `at`:
/// written before it (or the input) and read by it or an op after it.
/// Each once, in op order.
fn branch_ranges<'x>(bb: &'x Backbone<'_>, at: usize) -> impl Iterator<Item = (usize, usize)> + 'x {
    let n = bb.n_ops();
    let reads = move |i: usize| {
        let op = bb.op(i);
        [op.in0, op.in1].into_iter().filter(|&t| t != NONE)
    };
    // (op, slot, tensor) of every read at or after `at`, each tensor
    // at its first read
    (at.min(n)..n)
        .flat_map(move |i| reads(i).enumerate().map(move |(s, t)| (i, s, t)))
        .filter(move |&(i, s, t)| {
            let read_earlier =
                (at..i).any(|j| reads(j).any(|u| u == t)) || (s == 1 && bb.op(i).in0 == t);
            !read_earlier && written_before(bb, t, at)
        })
        .map(move |(_, _, t)| {
            let info: TensorInfo = bb.tensor(t as usize);
            (info.arena_off as usize, info.len())
        })
}

/// Tensor `t` (or the tensor it aliases) is the input or the output of
/// an op before `at`.
fn written_before(bb: &Backbone<'_>, t: u16, at: usize) -> bool {
    let mut root = t;
    // Aliases point at a root (validated at parse); bounded walk.
    for _ in 0..bb.n_tensors() {
        let a = bb.tensor(root as usize).alias_of;
        if a == NONE {
            break;
        }
        root = a;
    }
    root == bb.header().input || (0..at).any(|j| bb.op(j).out == root)
}
