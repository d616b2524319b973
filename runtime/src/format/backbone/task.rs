//! Validation of a task section — the backbone's base task, or a patch
//! body — against the graph: entry framing and order, targets, payload
//! sizes, code ranges and completeness. `Backbone::parse` runs it on the
//! base task, `Engine::apply` on every patch before anything changes.

use super::{Backbone, TaskSummary};
use crate::error::FormatError;
use crate::format::entry::{read_raw, EntryClass, EntryIter, EntryKind, Luts, Rows};
use crate::format::{rd_f32, rd_u16, OpKind, NONE};

impl<'a> Backbone<'a> {
    /// Validates a task section (the base task, or a patch body) against this
    /// graph. `base` requires every per-op entry the runtime needs; a patch
    /// may carry any subset, in strictly increasing (op, kind) order.
    pub fn validate_task(
        &self,
        bytes: &[u8],
        count: u32,
        base: bool,
    ) -> Result<TaskSummary, FormatError> {
        let n_ops = self.hdr.n_ops;
        // Pass 1: headers, order, classes.
        let mut pos = 0usize;
        let mut prev: Option<(u16, u8)> = None;
        let mut classes: Option<u16> = None;
        let mut has_tq = false;
        for e in 0..count {
            let raw = read_raw(bytes, pos).ok_or(FormatError::BadEntry {
                entry: e,
                op: NONE,
                what: "entry runs past the end of its section",
            })?;
            let bad = |what| FormatError::BadEntry {
                entry: e,
                op: raw.op,
                what,
            };
            let kind = EntryKind::from_u8(raw.kind).ok_or(bad("unknown entry kind"))?;
            EntryClass::from_u8(raw.class).ok_or(bad("unknown entry class"))?;
            let key = (raw.op, raw.kind);
            if prev.is_some_and(|p| p >= key) {
                return Err(bad(
                    "entries are not in strictly increasing (op, kind) order",
                ));
            }
            prev = Some(key);
            match kind {
                EntryKind::TensorQuant | EntryKind::Labels | EntryKind::Head => {
                    if base && kind == EntryKind::Head {
                        return Err(bad("a base task cannot replace the head"));
                    }
                    if raw.op != NONE {
                        return Err(bad("whole-model entry must target op 0xffff"));
                    }
                }
                _ => {
                    if raw.op >= n_ops {
                        return Err(bad("target op out of range"));
                    }
                }
            }
            if kind == EntryKind::Classes {
                if raw.op != self.hdr.head_op || raw.payload.len() != 4 {
                    return Err(bad(
                        "classes entry must target the head op with a 4-byte payload",
                    ));
                }
                let c = rd_u16(raw.payload, 0);
                if c == 0 {
                    return Err(bad("zero classes"));
                }
                if c > self.hdr.max_classes {
                    return Err(FormatError::TooManyClasses {
                        classes: c,
                        max: self.hdr.max_classes,
                    });
                }
                classes = Some(c);
            }
            if kind == EntryKind::TensorQuant {
                has_tq = true;
                if raw.payload.len() != 8 * self.hdr.n_tensors as usize {
                    return Err(bad("tensor-quant payload must hold 8 bytes per tensor"));
                }
                for t in 0..self.hdr.n_tensors as usize {
                    let s = rd_f32(raw.payload, 8 * t);
                    if !(s.is_finite() && s > 0.0) {
                        return Err(bad("a tensor scale is zero, negative or not finite"));
                    }
                }
            }
            pos = raw.next;
        }
        if pos != bytes.len() {
            return Err(FormatError::BadLayout {
                section: "task entries",
            });
        }
        if !has_tq && base {
            return Err(FormatError::BadEntry {
                entry: 0,
                op: NONE,
                what: "base task lacks tensor quantization",
            });
        }
        let head_out = self.tensor(self.hdr.output as usize).c;
        let classes = classes.unwrap_or(head_out);
        if base && classes != head_out {
            return Err(FormatError::BadEntry {
                entry: 0,
                op: self.hdr.head_op,
                what: "base task class count differs from the output tensor",
            });
        }
        let head_changes = classes != head_out;
        // Pass 2: payload sizes per target op, and completeness.
        let mut it = EntryIter::new(bytes, count);
        let mut next = it.next();
        let mut e_idx = 0u32;
        for i in 0..n_ops {
            let op = self.op(i as usize);
            let cout = self.cout(i as usize, &op, classes);
            let row = if op.kind.has_weights() {
                self.row_len(&op)
            } else {
                0
            };
            let (mut sc, mut bc, mut wt, mut lut) = (false, false, false, false);
            while let Some(ent) = next {
                if ent.op == NONE || ent.op < i {
                    next = it.next();
                    e_idx += 1;
                    continue;
                }
                if ent.op > i {
                    break;
                }
                let bad = |what| FormatError::BadEntry {
                    entry: e_idx,
                    op: i,
                    what,
                };
                let conv = op.kind.has_weights();
                match ent.kind {
                    EntryKind::ScaleCodes | EntryKind::BiasCodes => {
                        if !conv {
                            return Err(bad("per-channel codes target an op without weights"));
                        }
                        if ent.payload.len() != 2 * cout {
                            return Err(bad(
                                "per-channel codes must hold 2 bytes per output channel",
                            ));
                        }
                        let scale = ent.kind == EntryKind::ScaleCodes;
                        if let Some((c, code, what)) = code_problem(ent.payload, scale) {
                            return Err(FormatError::BadCode {
                                entry: e_idx,
                                op: i,
                                channel: c as u16,
                                code,
                                what,
                            });
                        }
                        if scale {
                            sc = true
                        } else {
                            bc = true
                        }
                    }
                    EntryKind::Weights => {
                        if !conv {
                            return Err(bad("weights target an op without weights"));
                        }
                        if ent.payload.len() != cout * row {
                            return Err(bad(
                                "weights payload size differs from the op's weight tensor",
                            ));
                        }
                        wt = true;
                    }
                    EntryKind::Rows => {
                        if !conv {
                            return Err(bad("rows target an op without weights"));
                        }
                        let rows = Rows::new_checked(ent.payload, row)
                            .ok_or(bad("malformed rows payload"))?;
                        let mut last: Option<u16> = None;
                        for r in 0..rows.len() {
                            let c = rows.channel(r);
                            if c as usize >= cout || last.is_some_and(|l| l >= c) {
                                return Err(bad("row channels out of range or not ascending"));
                            }
                            last = Some(c);
                        }
                    }
                    EntryKind::Lut => {
                        let channels = self.tensor(op.out as usize).c as usize;
                        if op.kind != OpKind::Lut
                            || Luts::new_checked(ent.payload, channels).is_none()
                        {
                            return Err(bad(
                                "lookup table must target a lut op and hold 256 bytes, or per-channel tables with every index in range",
                            ));
                        }
                        lut = true;
                    }
                    EntryKind::Classes => {}
                    EntryKind::TensorQuant | EntryKind::Labels | EntryKind::Head => {
                        return Err(bad("misplaced entry"))
                    }
                }
                next = it.next();
                e_idx += 1;
            }
            let is_head = i == self.hdr.head_op;
            if base || (is_head && head_changes) {
                let need_codes = op.kind.has_weights();
                if need_codes && !(sc && bc) {
                    return Err(FormatError::BadEntry {
                        entry: e_idx,
                        op: i,
                        what: "missing scale or bias codes for a conv op",
                    });
                }
                if is_head && head_changes && !wt {
                    return Err(FormatError::BadEntry {
                        entry: e_idx,
                        op: i,
                        what: "a new class count needs new classifier weights",
                    });
                }
                if base && op.kind == OpKind::Lut && !lut {
                    return Err(FormatError::BadEntry {
                        entry: e_idx,
                        op: i,
                        what: "missing lookup table",
                    });
                }
            }
        }
        Ok(TaskSummary { classes })
    }
}

/// The first out-of-range code of a scale- or bias-codes payload:
/// `(channel, code, what)`. Runs on every task switch, so the common case
/// is one branch-free pass (vectorized) and the search only on failure.
fn code_problem(payload: &[u8], scale: bool) -> Option<(usize, u16, &'static str)> {
    let problem = |code: u16| {
        if scale {
            crate::quant::scale_code_problem(code)
        } else {
            crate::quant::bias_code_problem(code)
        }
    };
    let codes = payload.chunks_exact(2).map(|b| match *b {
        [lo, hi] => u16::from_le_bytes([lo, hi]),
        _ => 0,
    });
    let any = codes
        .clone()
        .fold(false, |acc, c| acc | problem(c).is_some());
    if !any {
        return None;
    }
    codes
        .enumerate()
        .find_map(|(c, code)| problem(code).map(|what| (c, code, what)))
}
