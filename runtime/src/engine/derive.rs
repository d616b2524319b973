//! Deriving a task's parameter table: from the backbone's weight sums, the
//! task's 16-bit scale and bias codes and its tensor quantization to the
//! integer requantization parameters the kernels read (the work of a task
//! switch).

use super::Engine;
use crate::error::RunError;
use crate::format::entry::Rows;
use crate::format::{OpKind, NONE};
use crate::quant::ChannelRequant;
use crate::quant::{quantize_multiplier, round_half_away, ChannelParams, ConvChannels};

impl<'a, 'm> Engine<'a, 'm> {
    /// Derives the parameter table of the active task.
    pub(super) fn derive(&mut self) -> Result<(), RunError> {
        self.derive_from(0)
    }

    /// Derives the blocks of ops `first..` only (the blocks before it
    /// already hold the active task's values: `run_tasks`).
    pub(super) fn derive_from(&mut self, first: usize) -> Result<(), RunError> {
        let (mut base, mut patch) = self.cursors();
        let mut off = self.param_offset(first);
        for i in first..self.kept_ops() {
            let op = self.bb.op(i);
            let ent = Self::merged(&mut base, &mut patch, i as u16);
            let cout = self.bb.cout(i, &op, self.classes);
            let slots_cap = self.op_slots(i, &op);
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
            block[0] = ChannelRequant::op_header(q.zp, q.lo, q.hi);
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
                        block[1] = ChannelRequant {
                            mult: pa,
                            shift: big.shift,
                            bias: zp_in,
                        };
                        block[2] = ChannelRequant {
                            mult: pb,
                            shift: big.shift,
                            bias: zp_b,
                        };
                    } else {
                        let a = mq(ma)?;
                        let b = mq(mb)?;
                        block[1] = ChannelRequant {
                            mult: a.mult,
                            shift: a.shift,
                            bias: zp_in,
                        };
                        block[2] = ChannelRequant {
                            mult: b.mult,
                            shift: b.shift,
                            bias: zp_b,
                        };
                    }
                }
                OpKind::Mul => {
                    let m = mq(s_in as f64 * s_b as f64 / s_out as f64)?;
                    block[1] = ChannelRequant {
                        mult: m.mult,
                        shift: m.shift,
                        bias: zp_in,
                    };
                    block[2] = ChannelRequant {
                        mult: 0,
                        shift: 0,
                        bias: zp_b,
                    };
                }
                OpKind::GlobalAvgPool => {
                    let a = self.bb.tensor(op.in0 as usize);
                    let hw = a.h as f64 * a.w as f64;
                    let m = mq(s_in as f64 / (s_out as f64 * hw))?;
                    block[1] = ChannelRequant {
                        mult: m.mult,
                        shift: m.shift,
                        bias: zp_in,
                    };
                }
                OpKind::AvgPool => {
                    for (n, slot) in block.iter_mut().enumerate().skip(1) {
                        let m = mq(s_in as f64 / (s_out as f64 * n as f64))?;
                        *slot = ChannelRequant {
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
}

/// The scale and bias codes of a conv op (2 bytes per channel each).
type Codes<'x> = (&'x [u8], &'x [u8]);

fn code(b: &[u8], c: usize) -> u16 {
    b.get(2 * c..2 * c + 2)
        .map_or(0, |x| u16::from_le_bytes([x[0], x[1]]))
}

fn requant(p: ChannelParams) -> ChannelRequant {
    ChannelRequant {
        mult: p.mult,
        shift: p.shift,
        bias: p.bias,
    }
}

/// Channel `c` of a conv op whose kernel reads weights summing to `sum`.
fn derive_one(cc: &ConvChannels, codes: Codes<'_>, c: usize, sum: i32) -> Option<ChannelRequant> {
    cc.channel(code(codes.0, c), code(codes.1, c), sum)
        .map(requant)
}

/// Every channel of a conv op that reads the backbone's weights (`sums`:
/// the backbone's per-channel int32 sums): the hot loop of a task switch,
/// run by the derivation kernel. Returns false if a channel's multiplier is
/// out of range.
fn derive_channels(
    cc: &ConvChannels,
    codes: Codes<'_>,
    sums: &[u8],
    out: &mut [ChannelRequant],
) -> bool {
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
    out: &mut [ChannelRequant],
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
