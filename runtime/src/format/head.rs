//! Patches that bring their own head (entry kind [`EntryKind::Head`]).
//!
//! A task whose network equals the backbone's up to a *cut* tensor (say the
//! pooled features) and then differs — a hidden layer before the
//! classifier, another number of outputs — carries its replacement ops
//! whole: the entry's payload is a small backbone blob of its own (the
//! *head network*, `FORMAT.md`, validated by [`Backbone::parse`]: tensors,
//! ops, weights, their quantization), whose input is the cut tensor. The
//! engine runs the backbone's ops before `cut_op`, copies the cut tensor
//! into the head network's input and runs the head network in a region of
//! the same arena, its parameters in the parameter table after the blocks
//! of the ops it keeps.
//!
//! Payload (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | `cut_op`: the backbone runs ops `0..cut_op` |
//! | 2..4 | `cut_tensor`: the backbone tensor the head reads |
//! | 4..8 | `arena_off`: where the head network's arena starts in the engine's arena |
//! | 8.. | the head network: a backbone blob, its `total_len` bytes |
//!
//! [`EntryKind::Head`]: super::EntryKind::Head

use super::backbone::Backbone;
use super::{rd_u16, rd_u32};
use crate::error::FormatError;

/// Bytes before the head network in a head entry's payload.
pub const HEAD_FIELDS_LEN: usize = 8;

/// A parsed head entry.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// The backbone runs ops `0..cut_op`; the head replaces the rest.
    pub cut_op: u16,
    /// The backbone tensor the head network takes as its input.
    pub cut_tensor: u16,
    /// Byte offset of the head network's arena in the engine's arena.
    pub arena_off: u32,
    /// The head network (validated).
    pub net: Backbone<'a>,
}

impl<'a> Head<'a> {
    /// Parses a head entry's payload; the head network is validated in
    /// full (`Backbone::parse`: checksum, layout, graph, base task).
    pub fn parse(payload: &'a [u8]) -> Result<Self, FormatError> {
        let Some(net) = payload.get(HEAD_FIELDS_LEN..) else {
            return Err(FormatError::Truncated {
                need: HEAD_FIELDS_LEN as u32,
                have: payload.len() as u32,
            });
        };
        let net = Backbone::parse(net)?;
        // The network fills the rest of the payload exactly.
        if net.bytes().len() + HEAD_FIELDS_LEN != payload.len() {
            return Err(FormatError::BadLayout {
                section: "head network",
            });
        }
        Ok(Head {
            cut_op: rd_u16(payload, 0),
            cut_tensor: rd_u16(payload, 2),
            arena_off: rd_u32(payload, 4),
            net,
        })
    }

    /// Checks the head against the backbone it extends: the cut lies in
    /// the graph; the cut tensor is written before the cut (or is the
    /// input) and is still live there — an op at or after the cut reads
    /// it, so the backbone's arena plan keeps it intact up to the cut and
    /// `Engine::run_tasks` keeps it at a branch point — and it has the head
    /// network's input shape. Returns the bytes of the engine arena the
    /// head needs (`arena_off` + its arena).
    pub fn check_against(&self, bb: &Backbone<'_>) -> Result<usize, FormatError> {
        let bad = |what| FormatError::BadEntry {
            entry: 0,
            op: self.cut_op,
            what,
        };
        if self.cut_op as usize > bb.n_ops() || self.cut_tensor as usize >= bb.n_tensors() {
            return Err(bad("head cut op or tensor out of range"));
        }
        let cut = bb.tensor(self.cut_tensor as usize);
        let root = match cut.alias_of {
            super::NONE => self.cut_tensor,
            a => a,
        };
        let written =
            root == bb.header().input || (0..self.cut_op as usize).any(|j| bb.op(j).out == root);
        if !written {
            return Err(bad("the head reads a tensor no op before its cut writes"));
        }
        let read_later = (self.cut_op as usize..bb.n_ops()).any(|j| {
            let op = bb.op(j);
            op.in0 == self.cut_tensor || op.in1 == self.cut_tensor
        });
        if !read_later {
            return Err(bad(
                "the cut tensor is not live at the cut (no op from the cut on reads it)",
            ));
        }
        let inp = self.net.input();
        if (inp.c, inp.h, inp.w) != (cut.c, cut.h, cut.w) {
            return Err(bad(
                "the head network's input shape differs from the cut tensor",
            ));
        }
        Ok((self.arena_off as usize).saturating_add(self.net.arena_len()))
    }
}

/// What an engine needs to run a set of tasks: arena bytes and
/// parameter-table entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineSizes {
    /// arena bytes
    pub arena: usize,
    /// parameter-table entries
    pub params: usize,
}

impl<'a> Backbone<'a> {
    /// Parameter-table entries of ops `0..op` (their blocks precede op
    /// `op`'s; the classifier's block has room for `max_classes`).
    pub fn params_len_before(&self, op: usize) -> usize {
        (0..op.min(self.n_ops()))
            .map(|i| {
                let o = self.op(i);
                let cout = if i == self.head_op() {
                    self.max_classes() as usize
                } else {
                    self.tensor(o.out as usize).c as usize
                };
                super::backbone::param_slots(&o, cout)
            })
            .sum()
    }

    /// The arena and parameter table an engine needs for the base task and
    /// every task in `patches` (more than `arena_len()` / `params_len()`
    /// when a patch brings its own head). A patch whose head does not
    /// parse counts as the base (`Engine::apply` refuses it).
    pub fn engine_sizes(&self, patches: &[super::patch::Patch<'_>]) -> EngineSizes {
        let mut s = EngineSizes {
            arena: self.arena_len(),
            params: self.params_len(),
        };
        for p in patches {
            for e in p.entries() {
                if e.kind != super::EntryKind::Head {
                    continue;
                }
                if let Ok(h) = Head::parse(e.payload) {
                    let arena = (h.arena_off as usize).saturating_add(h.net.arena_len());
                    let params = self
                        .params_len_before(h.cut_op as usize)
                        .saturating_add(h.net.params_len());
                    s.arena = s.arena.max(arena);
                    s.params = s.params.max(params);
                }
            }
        }
        s
    }
}
