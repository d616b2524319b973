//! Tasks that bring their own head (`format::head`): the backbone runs up
//! to the cut, then the patch's head network runs in a region of the same
//! arena with its parameters after the kept ops' blocks.
//!
//! The head network is run by an engine of its own over those two
//! regions (the same derivation and op loop as any backbone, one thread:
//! heads are small), built on the spot from borrowed slices, so the head
//! costs no memory beyond the arena and parameter table the caller gave.

use super::{tensor_quant, tq_of, Engine, Scores};
use crate::error::{FormatError, RunError};
use crate::format::entry::EntryKind;
use crate::format::head::Head;
use crate::format::patch::Patch;
use crate::format::NONE;

/// The head of the active task, placed.
#[derive(Clone, Copy, Debug)]
pub(super) struct ActiveHead<'a> {
    pub head: Head<'a>,
    /// first parameter-table slot of the head network
    pub params_off: usize,
}

impl<'a, 'm> Engine<'a, 'm> {
    /// The head `patch` brings, checked against this engine: its cut, its
    /// input against the task's quantization of the cut tensor, the arena
    /// and parameter table it needs, and no entry for an op it replaces.
    pub(super) fn check_head(
        &self,
        patch: &Patch<'a>,
    ) -> Result<Option<ActiveHead<'a>>, FormatError> {
        let mut found = None;
        for (i, e) in patch.entries().enumerate() {
            if e.kind == EntryKind::Head {
                found = Some((i, Head::parse(e.payload)?));
            }
        }
        let Some((entry, head)) = found else {
            return Ok(None);
        };
        let need_arena = head.check_against(&self.bb)?;
        if need_arena > self.arena.len() {
            return Err(FormatError::ArenaTooSmall {
                need: need_arena as u32,
                have: self.arena.len() as u32,
            });
        }
        let params_off = self.bb.params_len_before(head.cut_op as usize);
        let need_params = params_off + head.net.params_len();
        if need_params > self.params.len() {
            return Err(FormatError::ParamsTooSmall {
                need: need_params as u32,
                have: self.params.len() as u32,
            });
        }
        let bad = |what| FormatError::BadEntry {
            entry: entry as u32,
            op: head.cut_op,
            what,
        };
        if patch.classes() != head.net.base_classes() {
            return Err(bad(
                "the patch header's class count differs from its head's",
            ));
        }
        if patch.entries().any(|e| e.op != NONE && e.op >= head.cut_op) {
            return Err(bad("an entry targets an op the head replaces"));
        }
        // The head reads the cut tensor as the task quantized it.
        let task_tq = tensor_quant(patch.entries())
            .or_else(|| tensor_quant(self.bb.base_entries()))
            .unwrap_or(&[]);
        let head_tq = tensor_quant(head.net.base_entries()).unwrap_or(&[]);
        let (s0, z0) = tq_of(task_tq, head.cut_tensor as usize);
        let (s1, z1) = tq_of(head_tq, head.net.header().input as usize);
        if s0.to_bits() != s1.to_bits() || z0 != z1 {
            return Err(bad(
                "the head network's input quantization differs from the cut tensor's",
            ));
        }
        Ok(Some(ActiveHead { head, params_off }))
    }

    /// An engine over the head network's arena and parameter regions, its
    /// (only) task active; `derive` derives its parameters.
    fn head_engine(
        &mut self,
        h: &ActiveHead<'a>,
        derive: bool,
    ) -> Result<Engine<'a, '_>, RunError> {
        let net = h.head.net;
        let a0 = h.head.arena_off as usize;
        let p0 = h.params_off;
        // (sizes checked by `check_head`)
        let arena =
            self.arena
                .get_mut(a0..a0 + net.arena_len())
                .ok_or(RunError::ArenaTooSmall {
                    need: (a0 + net.arena_len()) as u32,
                    have: 0,
                })?;
        let params =
            self.params
                .get_mut(p0..p0 + net.params_len())
                .ok_or(RunError::ParamsTooSmall {
                    need: (p0 + net.params_len()) as u32,
                    have: 0,
                })?;
        if derive {
            let mut e = Engine::new(&net, arena, params)?;
            e.kernels = self.kernels;
            return Ok(e);
        }
        Ok(Engine {
            bb: net,
            arena,
            params,
            patch: None,
            tq: tensor_quant(net.base_entries()).unwrap_or(&[]),
            classes: net.base_classes(),
            kernels: self.kernels,
            threads: 1,
            head: None,
            #[cfg(feature = "verify")]
            key: None,
        })
    }

    /// Derives the head network's parameters (after the kept ops').
    pub(super) fn derive_head(&mut self) -> Result<(), RunError> {
        match self.head {
            Some(h) => self.head_engine(&h, true).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Copies the cut tensor into the head network's input and runs it.
    pub(super) fn run_head(&mut self, h: &ActiveHead<'a>) {
        let cut = self.bb.tensor(h.head.cut_tensor as usize);
        let dst = h.head.arena_off as usize + h.head.net.input().arena_off as usize;
        let src = cut.arena_off as usize;
        let n = cut.len();
        // (in the arena: `check_head`; the regions may overlap)
        if src + n <= self.arena.len() && dst + n <= self.arena.len() {
            self.arena.copy_within(src..src + n, dst);
        }
        if let Ok(mut e) = self.head_engine(h, false) {
            e.execute_ops(0, h.head.net.n_ops());
        }
    }

    /// The head network's scores (after `run_head`).
    pub(super) fn head_scores(&self, h: &ActiveHead<'a>) -> Scores<'_> {
        let net = &h.head.net;
        let out = net.output();
        let head_tq = tensor_quant(net.base_entries()).unwrap_or(&[]);
        let (scale, zp) = tq_of(head_tq, net.header().output as usize);
        let o = h.head.arena_off as usize + out.arena_off as usize;
        Scores {
            q: self.arena.get(o..o + self.classes as usize).unwrap_or(&[]),
            scale,
            zp,
            softmax: net.softmax(),
        }
    }

    /// Ops of the backbone the active task runs (all, or up to its cut).
    pub(super) fn kept_ops(&self) -> usize {
        self.head.map_or(self.bb.n_ops(), |h| {
            (h.head.cut_op as usize).min(self.bb.n_ops())
        })
    }
}
