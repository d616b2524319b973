//! Emission of the IR [`Graph`] from the fused working graph.

use std::collections::HashMap;

use crate::ir::{Graph, Node, Op, TensorInfo};

use super::error::{Ctx, ImportError, Res};
use super::graph::{ir_shape_of, is_vector, BOp, Builder, Elt, WOp};

impl Builder {
    pub(super) fn emit(&self) -> Res<Graph> {
        let mut tid: HashMap<usize, usize> = HashMap::new();
        let mut tensors = Vec::new();
        let ish = ir_shape_of(self.dims(self.input)).unwrap();
        tensors.push(TensorInfo {
            name: self.acts[self.input].name.clone(),
            shape: ish,
        });
        tid.insert(self.input, 0);
        let mut nodes = Vec::new();
        let mut names_seen: HashMap<String, usize> = HashMap::new();
        for nd in self.nodes.iter().filter(|n| n.alive) {
            let ctx = Ctx {
                name: nd.name.clone(),
                op: nd.op_type.clone(),
            };
            let oshape = ir_shape_of(self.dims(nd.output)).unwrap();
            let mut inputs = Vec::new();
            let op = match &nd.op {
                WOp::Conv(c) => Op::Conv(c.clone()),
                WOp::Affine { scale, bias, act } => Op::ChannelAffine {
                    scale: scale.clone(),
                    bias: bias.clone(),
                    act: *act,
                },
                WOp::Unary(u) => Op::Unary(u.clone()),
                WOp::Gap => Op::GlobalAvgPool,
                WOp::AvgPool(p) => Op::AvgPool(*p),
                WOp::MaxPool(p) => Op::MaxPool(*p),
                WOp::Concat => Op::Concat,
                WOp::Reshape => {
                    let mut src = nd.inputs[0];
                    while let Some(p) = self.producer(src) {
                        if matches!(self.nodes[p].op, WOp::Reshape) {
                            src = self.nodes[p].inputs[0];
                        } else {
                            break;
                        }
                    }
                    let ss = ir_shape_of(self.dims(src)).unwrap();
                    if !(is_vector(ss) && is_vector(oshape)) {
                        return Err(ctx.unsupported(format!(
                            "reshape of a {} tensor to {:?} (only vectors, or a flatten in front of Gemm/MatMul)",
                            ss,
                            self.dims(nd.output)
                        )));
                    }
                    inputs.push(src);
                    Op::Reshape
                }
                WOp::Elt(Elt::Bin2(op)) => {
                    let (a, b) = (nd.inputs[0], nd.inputs[1]);
                    let (sa, sb) = (
                        ir_shape_of(self.dims(a)).unwrap(),
                        ir_shape_of(self.dims(b)).unwrap(),
                    );
                    match op {
                        BOp::Add if sa == sb && oshape == sa => {
                            inputs = vec![a, b];
                            Op::Add
                        }
                        BOp::Mul if sa == sb && oshape == sa => {
                            inputs = vec![a, b];
                            Op::Mul
                        }
                        BOp::Mul if sb.h == 1 && sb.w == 1 && sb.c == sa.c && oshape == sa => {
                            inputs = vec![a, b];
                            Op::Mul
                        }
                        BOp::Mul if sa.h == 1 && sa.w == 1 && sa.c == sb.c && oshape == sb => {
                            inputs = vec![b, a];
                            Op::Mul
                        }
                        BOp::Add | BOp::Mul => {
                            return Err(ctx.unsupported(format!(
                                "{:?} of activations of shapes {:?} and {:?} (only same shape{})",
                                op,
                                self.dims(a),
                                self.dims(b),
                                if *op == BOp::Mul {
                                    ", or a per-channel gate"
                                } else {
                                    ""
                                }
                            )));
                        }
                        _ => {
                            return Err(ctx.unsupported(format!(
                                "{:?} of two different activations (only Add and Mul)",
                                op
                            )));
                        }
                    }
                }
                WOp::Pad(_) => {
                    return Err(
                        ctx.unsupported("Pad is only supported directly in front of a Conv")
                    );
                }
                WOp::Softmax => {
                    return Err(ctx.unsupported(
                        "Softmax is only supported as the last op, over the classes",
                    ));
                }
                WOp::Bn { .. } | WOp::Chan { .. } | WOp::Elt(_) => {
                    unreachable!("resolved by the passes")
                }
            };
            if inputs.is_empty() {
                inputs = nd.inputs.clone();
            }
            let ins: Vec<usize> = inputs
                .iter()
                .map(|v| {
                    tid.get(v).copied().ok_or_else(|| {
                        ImportError::Malformed(format!(
                            "node '{}' is not in topological order",
                            nd.name
                        ))
                    })
                })
                .collect::<Res<_>>()?;
            // IR consistency checks.
            match &op {
                Op::Conv(c) => {
                    let is = tensors[ins[0]].shape;
                    if is.c != c.cin {
                        return Err(ImportError::Malformed(format!(
                            "node '{}': conv expects {} channels, input is {}",
                            nd.name, c.cin, is
                        )));
                    }
                }
                Op::ChannelAffine { scale, .. } if scale.len() != oshape.c => {
                    return Err(ctx.unsupported(format!("per-channel op on a {oshape} tensor")));
                }
                _ => {}
            }
            let id = tensors.len();
            tensors.push(TensorInfo {
                name: self.acts[nd.output].name.clone(),
                shape: oshape,
            });
            tid.insert(nd.output, id);
            let mut name = nd.name.clone();
            let cnt = names_seen.entry(name.clone()).or_insert(0);
            *cnt += 1;
            if *cnt > 1 {
                name = format!("{name}#{}", *cnt - 1);
            }
            nodes.push(Node {
                name,
                op,
                inputs: ins,
                output: id,
            });
        }
        let output = *tid
            .get(&self.output)
            .ok_or_else(|| ImportError::Malformed("output not produced".into()))?;
        Ok(Graph {
            tensors,
            nodes,
            input: 0,
            output,
            output_softmax: self.output_softmax,
        })
    }
}
