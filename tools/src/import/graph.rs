//! The working graph (activations with static ONNX dims, [`WNode`]s with
//! [`WOp`]s) and the import driver [`Builder::import`]: input setup, node
//! walk, passes, emission.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use tract_onnx::pb;

use crate::ir::{Act, Conv, Graph, Pool, Shape, Unary};

use super::decode::{tensor_from_proto, topo_order, Attrs, Tensor};
use super::error::{Ctx, ImportError, Res};
use super::ImportOptions;

// ---------------------------------------------------------------------------
// Working graph
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub(super) enum Val {
    Const(Rc<Tensor>),
    Act(usize),
}

#[derive(Clone, Debug)]
pub(super) struct AVal {
    pub(super) name: String,
    /// ONNX dims, batch (if any) already 1.
    pub(super) dims: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum BOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum UOp {
    Relu,
    Clip(f32, f32),
    LeakyRelu(f32),
    HardSigmoid(f32, f32),
    HardSwish,
    Sigmoid,
    Tanh,
    Neg,
    Exp,
    Abs,
    Reciprocal,
    Elu(f32),
    Selu(f32, f32),
    Softsign,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Elt {
    U(UOp),
    /// Binary op of the activation and a scalar constant.
    BinC {
        op: BOp,
        c: f32,
        const_first: bool,
    },
    /// Binary op of two activations.
    Bin2(BOp),
}

#[derive(Clone, Debug)]
pub(super) enum WOp {
    Conv(Conv),
    Affine {
        scale: Vec<f32>,
        bias: Vec<f32>,
        act: Act,
    },
    /// BatchNormalization: `s = g / sqrt(var + eps)`.
    Bn {
        s: Vec<f32>,
        mean: Vec<f32>,
        beta: Vec<f32>,
    },
    /// Add/Sub/Mul/Div with a per-channel (`c.len() == C`) or scalar constant.
    Chan {
        op: BOp,
        c: Vec<f32>,
        const_first: bool,
    },
    Elt(Elt),
    Unary(Unary),
    Gap,
    AvgPool(Pool),
    MaxPool(Pool),
    Concat,
    /// Any memory-order-preserving reshape (Flatten, Reshape, Squeeze,
    /// Unsqueeze, order-preserving Transpose).
    Reshape,
    /// Spatial zero padding (top, left, bottom, right).
    Pad([usize; 4]),
    Softmax,
}

#[derive(Clone, Debug)]
pub(super) struct WNode {
    pub(super) name: String,
    pub(super) op_type: String,
    pub(super) op: WOp,
    pub(super) inputs: Vec<usize>,
    pub(super) output: usize,
    pub(super) alive: bool,
}

pub(super) struct Builder {
    pub(super) opset: i64,
    pub(super) vals: HashMap<String, Val>,
    pub(super) acts: Vec<AVal>,
    pub(super) nodes: Vec<WNode>,
    pub(super) input: usize,
    /// NHWC input: ONNX dims as declared (batch 1), for `Shape` of the input.
    pub(super) input_nhwc_dims: Option<Vec<usize>>,
    pub(super) output: usize,
    pub(super) output_softmax: bool,
}

pub(super) fn ir_shape_of(dims: &[usize]) -> Option<Shape> {
    match dims.len() {
        0 => Some(Shape::new(1, 1, 1)),
        1 => Some(Shape::new(dims[0], 1, 1)),
        2..=4 if dims[0] == 1 => {
            let mut s = [1usize; 3];
            s[..dims.len() - 1].copy_from_slice(&dims[1..]);
            Some(Shape::new(s[0], s[1], s[2]))
        }
        _ => None,
    }
}

pub(super) fn is_vector(s: Shape) -> bool {
    (s.c > 1) as u8 + (s.h > 1) as u8 + (s.w > 1) as u8 <= 1
}

impl Builder {
    pub(super) fn new(opset: i64) -> Builder {
        Builder {
            opset,
            vals: HashMap::new(),
            acts: Vec::new(),
            nodes: Vec::new(),
            input: 0,
            input_nhwc_dims: None,
            output: 0,
            output_softmax: false,
        }
    }

    pub(super) fn new_act(&mut self, ctx: &Ctx, name: &str, dims: Vec<usize>) -> Res<usize> {
        if ir_shape_of(&dims).is_none() {
            return Err(ctx.unsupported(format!(
                "produces a tensor of shape {dims:?}; only batch-1 tensors of rank <= 4 are supported"
            )));
        }
        self.acts.push(AVal {
            name: name.to_string(),
            dims,
        });
        let id = self.acts.len() - 1;
        self.vals.insert(name.to_string(), Val::Act(id));
        Ok(id)
    }

    pub(super) fn push(
        &mut self,
        ctx: &Ctx,
        op: WOp,
        inputs: Vec<usize>,
        out_name: &str,
        dims: Vec<usize>,
    ) -> Res<usize> {
        let out = self.new_act(ctx, out_name, dims)?;
        self.nodes.push(WNode {
            name: ctx.name.clone(),
            op_type: ctx.op.clone(),
            op,
            inputs,
            output: out,
            alive: true,
        });
        Ok(out)
    }

    pub(super) fn dims(&self, a: usize) -> &[usize] {
        &self.acts[a].dims
    }

    pub(super) fn producer(&self, v: usize) -> Option<usize> {
        self.nodes.iter().rposition(|n| n.alive && n.output == v)
    }

    /// Number of uses of `v` (the graph output counts as one).
    pub(super) fn uses(&self, v: usize) -> usize {
        let mut n = (v == self.output) as usize;
        for node in self.nodes.iter().filter(|n| n.alive) {
            n += node.inputs.iter().filter(|&&i| i == v).count();
        }
        n
    }

    pub(super) fn import(mut self, g: &pb::GraphProto, opts: &ImportOptions) -> Res<Graph> {
        // Initializers.
        let mut init_names = HashSet::new();
        for t in &g.initializer {
            let tensor = tensor_from_proto(t).map_err(ImportError::Malformed)?;
            init_names.insert(t.name.clone());
            self.vals
                .insert(t.name.clone(), Val::Const(Rc::new(tensor)));
        }
        // Nodes needed for the first output.
        let out_name = g
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| ImportError::Malformed("graph has no output".into()))?;
        let mut producer_of: HashMap<&str, usize> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                if !o.is_empty() {
                    producer_of.insert(o.as_str(), i);
                }
            }
        }
        let mut needed = vec![false; g.node.len()];
        let mut stack = vec![out_name.as_str()];
        let mut used_values: HashSet<&str> = HashSet::new();
        while let Some(v) = stack.pop() {
            if !used_values.insert(v) {
                continue;
            }
            if let Some(&p) = producer_of.get(v) {
                if !needed[p] {
                    needed[p] = true;
                    stack.extend(
                        g.node[p]
                            .input
                            .iter()
                            .filter(|s| !s.is_empty())
                            .map(|s| s.as_str()),
                    );
                }
            }
        }

        // The input.
        let real_inputs: Vec<&pb::ValueInfoProto> = g
            .input
            .iter()
            .filter(|i| !init_names.contains(&i.name) && used_values.contains(i.name.as_str()))
            .collect();
        if real_inputs.len() != 1 {
            return Err(ImportError::Malformed(format!(
                "the output depends on {} graph inputs ({}); exactly one is supported",
                real_inputs.len(),
                real_inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let inp = real_inputs[0];
        self.setup_input(g, inp, &needed, opts)?;

        // Topological order of the needed nodes (stable w.r.t. file order).
        let order = topo_order(g, &needed, &self.vals)?;
        for i in order {
            self.lower(i, &g.node[i])?;
        }

        // The output.
        self.output = match self.vals.get(&out_name) {
            Some(Val::Act(a)) => *a,
            Some(Val::Const(_)) => {
                return Err(ImportError::Malformed(format!(
                    "output '{out_name}' is a constant"
                )));
            }
            None => {
                return Err(ImportError::Malformed(format!(
                    "output '{out_name}' is never produced"
                )))
            }
        };
        if self.output == self.input {
            return Err(ImportError::Malformed("the output is the input".into()));
        }

        self.dce();
        self.fold_affine_pass()?;
        self.softmax_tail();
        self.dce();
        self.expr_pass()?;
        self.dce();
        self.emit()
    }

    pub(super) fn setup_input(
        &mut self,
        g: &pb::GraphProto,
        inp: &pb::ValueInfoProto,
        needed: &[bool],
        opts: &ImportOptions,
    ) -> Res<()> {
        let ctx = Ctx {
            name: inp.name.clone(),
            op: "input".into(),
        };
        let mut dims: Vec<Option<usize>> = Vec::new();
        if let Some(pb::type_proto::Value::TensorType(t)) =
            inp.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            if ![0, 1, 10, 11, 16].contains(&t.elem_type) {
                return Err(ImportError::Unsupported {
                    node: inp.name.clone(),
                    why: format!(
                        "input element type {} (only floating-point inputs)",
                        t.elem_type
                    ),
                });
            }
            if let Some(s) = &t.shape {
                for d in &s.dim {
                    dims.push(match d.value {
                        Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => {
                            Some(v as usize)
                        }
                        _ => None,
                    });
                }
            }
        }
        if dims.is_empty() {
            if opts.input_shape.is_none() {
                return Err(ImportError::DynamicShape {
                    input: inp.name.clone(),
                });
            }
            dims = vec![None; 4];
        }
        // NHWC input used only through Transpose(perm=[0,3,1,2]).
        let consumers: Vec<&pb::NodeProto> = g
            .node
            .iter()
            .enumerate()
            .filter(|(i, n)| needed[*i] && n.input.contains(&inp.name))
            .map(|(_, n)| n)
            .collect();
        let nhwc = dims.len() == 4
            && !consumers.is_empty()
            && consumers.iter().all(|n| {
                n.op_type == "Transpose"
                    && Attrs(&n.attribute).ints("perm").as_deref() == Some(&[0, 3, 1, 2][..])
            });
        if let Some(b) = dims.first().copied().flatten() {
            if b != 1 && dims.len() >= 2 {
                return Err(
                    ctx.unsupported(format!("input batch size {b}; only batch 1 is supported"))
                );
            }
        }
        let mut d: Vec<usize> = Vec::with_capacity(dims.len());
        if let Some((c, h, w)) = opts.input_shape {
            if dims.len() != 4 {
                return Err(ctx.unsupported(format!(
                    "input has rank {}; --input-shape applies to 4-D inputs only",
                    dims.len()
                )));
            }
            d = vec![1, c, h, w];
        } else {
            for (i, v) in dims.iter().enumerate() {
                match v {
                    Some(v) => d.push(*v),
                    None if i == 0 && dims.len() >= 2 => d.push(1),
                    None => {
                        return Err(ImportError::DynamicShape {
                            input: inp.name.clone(),
                        })
                    }
                }
            }
            if nhwc {
                d = vec![1, d[3], d[1], d[2]];
            }
        }
        if nhwc {
            self.input_nhwc_dims = Some(vec![1, d[2], d[3], d[1]]);
        }
        self.input = self.new_act(&ctx, &inp.name, d)?;
        Ok(())
    }
}
