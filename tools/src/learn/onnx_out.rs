//! Writes a trained [`Net`] as an ordinary ONNX model (opset 14, batch 1,
//! input `input` `[1, C, H, W]`, output `logits` `[1, classes]`), so a
//! learned task goes through `graftnet export` exactly like a task
//! fine-tuned elsewhere.
//!
//! Layout: nodes in the imported graph's order. A conv with batch-norm is
//! `Conv` (no bias) + `BatchNormalization` (scale, bias, running mean and
//! variance: the S/B patch as PyTorch's unfolded export writes it); other
//! convs keep their bias. The classifier is `Flatten` + `Gemm` (a PyTorch
//! `Linear`), whose output (or the model's final `Softmax`) is `logits`. Elementwise functions are written as ONNX ops
//! (`HardSwish` where alpha and beta are ONNX's, else `HardSigmoid`+`Mul`;
//! composite expressions as their elementary ops).

use prost::Message;
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto};

use super::net::{Layer, Net};
use crate::ir::{Act, Expr, Unary};
use crate::onnx_build::{attr_float, attr_int, attr_ints, f32_tensor, i64_tensor, value_info};

struct Writer {
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    next: usize,
}

impl Writer {
    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    fn init(&mut self, name: String, dims: &[usize], v: &[f32]) -> String {
        self.inits.push(f32_tensor(&name, dims, v));
        name
    }

    fn scalar(&mut self, v: f32) -> String {
        let n = self.fresh("const");
        self.init(n, &[], &[v])
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        out: Option<String>,
        attrs: Vec<tract_onnx::pb::AttributeProto>,
    ) -> String {
        let out = out.unwrap_or_else(|| self.fresh(&op.to_ascii_lowercase()));
        let name = self.fresh(op);
        self.nodes
            .push(crate::onnx_build::node(name, op, inputs, &out, attrs));
        out
    }

    fn act(&mut self, act: Act, x: String) -> String {
        match act {
            Act::None => x,
            Act::Relu => self.node("Relu", &[&x], None, vec![]),
            Act::Clip(lo, hi) => {
                let (l, h) = (self.scalar(lo), self.scalar(hi));
                self.node("Clip", &[&x, &l, &h], None, vec![])
            }
        }
    }

    fn unary(&mut self, u: &Unary, x: &str) -> String {
        match u {
            Unary::Relu => self.act(Act::Relu, x.to_string()),
            Unary::Clip(lo, hi) => self.act(Act::Clip(*lo, *hi), x.to_string()),
            Unary::HardSigmoid { alpha, beta } => self.node(
                "HardSigmoid",
                &[x],
                None,
                vec![attr_float("alpha", *alpha), attr_float("beta", *beta)],
            ),
            Unary::HardSwish { alpha, beta } if *alpha == 1.0 / 6.0 && *beta == 0.5 => {
                self.node("HardSwish", &[x], None, vec![])
            }
            Unary::HardSwish { alpha, beta } => {
                let h = self.unary(
                    &Unary::HardSigmoid {
                        alpha: *alpha,
                        beta: *beta,
                    },
                    x,
                );
                self.node("Mul", &[x, &h], None, vec![])
            }
            Unary::Sigmoid => self.node("Sigmoid", &[x], None, vec![]),
            Unary::Swish => {
                let s = self.node("Sigmoid", &[x], None, vec![]);
                self.node("Mul", &[x, &s], None, vec![])
            }
            Unary::Tanh => self.node("Tanh", &[x], None, vec![]),
            Unary::LeakyRelu { alpha } => {
                self.node("LeakyRelu", &[x], None, vec![attr_float("alpha", *alpha)])
            }
            Unary::Expr(e) => self.expr(e, x),
        }
    }

    fn expr(&mut self, e: &Expr, x: &str) -> String {
        let bin = |w: &mut Writer, op: &str, a: &Expr, b: &Expr| {
            let (a, b) = (w.expr(a, x), w.expr(b, x));
            w.node(op, &[&a, &b], None, vec![])
        };
        match e {
            Expr::X => x.to_string(),
            Expr::Const(c) => self.scalar(*c),
            Expr::Add(a, b) => bin(self, "Add", a, b),
            Expr::Sub(a, b) => bin(self, "Sub", a, b),
            Expr::Mul(a, b) => bin(self, "Mul", a, b),
            Expr::Div(a, b) => bin(self, "Div", a, b),
            Expr::Max(a, b) => bin(self, "Max", a, b),
            Expr::Min(a, b) => bin(self, "Min", a, b),
            Expr::Neg(a) => {
                let a = self.expr(a, x);
                self.node("Neg", &[&a], None, vec![])
            }
            Expr::Exp(a) => {
                let a = self.expr(a, x);
                self.node("Exp", &[&a], None, vec![])
            }
            Expr::Tanh(a) => {
                let a = self.expr(a, x);
                self.node("Tanh", &[&a], None, vec![])
            }
            Expr::Sigmoid(a) => {
                let a = self.expr(a, x);
                self.node("Sigmoid", &[&a], None, vec![])
            }
        }
    }
}

/// Serialises `net` (its current weights and running statistics).
pub fn to_onnx(net: &Net, producer: &str) -> Vec<u8> {
    let mut w = Writer {
        nodes: vec![],
        inits: vec![],
        next: 0,
    };
    let mut names: Vec<String> = (0..net.shapes.len()).map(|t| format!("t{t}")).collect();
    names[net.input] = "input".into();
    for (i, node) in net.nodes.iter().enumerate() {
        let p = format!("n{i}");
        let ins: Vec<String> = node.inputs.iter().map(|&t| names[t].clone()).collect();
        let out = match &node.layer {
            Layer::Conv {
                spec,
                w: wt,
                b,
                act,
                ..
            } if i == net.head => {
                // The classifier: Flatten + Gemm, as PyTorch writes a Linear.
                let flat = w.node("Flatten", &[&ins[0]], None, vec![attr_int("axis", 1)]);
                let wn = w.init(format!("{p}.weight"), &[spec.cout, spec.row_len()], &wt.v);
                let bname = w.init(format!("{p}.bias"), &[spec.cout], &b.v);
                let y = w.node(
                    "Gemm",
                    &[&flat, &wn, &bname],
                    None,
                    vec![attr_int("transB", 1)],
                );
                w.act(*act, y)
            }
            Layer::Conv {
                spec,
                w: wt,
                b,
                bn,
                act,
                ..
            } => {
                let dims = [spec.cout, spec.cin / spec.groups, spec.kh, spec.kw];
                let wn = w.init(format!("{p}.weight"), &dims, &wt.v);
                let attrs = vec![
                    attr_ints("dilations", &[1, 1]),
                    attr_int("group", spec.groups as i64),
                    attr_ints("kernel_shape", &[spec.kh as i64, spec.kw as i64]),
                    attr_ints("pads", &spec.pads.map(|v| v as i64)),
                    attr_ints("strides", &[spec.sh as i64, spec.sw as i64]),
                ];
                let y = match bn {
                    None => {
                        let bname = w.init(format!("{p}.bias"), &[spec.cout], &b.v);
                        w.node("Conv", &[&ins[0], &wn, &bname], None, attrs)
                    }
                    Some(bn) => {
                        let z = w.node("Conv", &[&ins[0], &wn], None, attrs);
                        let c = [spec.cout];
                        let g = w.init(format!("{p}.bn.weight"), &c, &bn.gamma.v);
                        let bb = w.init(format!("{p}.bn.bias"), &c, &bn.beta.v);
                        let m = w.init(format!("{p}.bn.running_mean"), &c, &bn.mean);
                        let v = w.init(format!("{p}.bn.running_var"), &c, &bn.var);
                        w.node(
                            "BatchNormalization",
                            &[&z, &g, &bb, &m, &v],
                            None,
                            vec![attr_float("epsilon", bn.eps)],
                        )
                    }
                };
                w.act(*act, y)
            }
            Layer::Affine { s, b, act } => {
                // Per-channel affine as an inference batch-norm with unit
                // statistics (mean 0, var 1 - eps, so 1/sqrt(var + eps) = 1
                // up to rounding).
                let c = [s.v.len()];
                let eps = 1e-5f32;
                let g = w.init(format!("{p}.weight"), &c, &s.v);
                let bb = w.init(format!("{p}.bias"), &c, &b.v);
                let m = w.init(format!("{p}.running_mean"), &c, &vec![0.0; c[0]]);
                let v = w.init(format!("{p}.running_var"), &c, &vec![1.0 - eps; c[0]]);
                let y = w.node(
                    "BatchNormalization",
                    &[&ins[0], &g, &bb, &m, &v],
                    None,
                    vec![attr_float("epsilon", eps)],
                );
                w.act(*act, y)
            }
            Layer::Add => w.node("Add", &[&ins[0], &ins[1]], None, vec![]),
            Layer::Mul => w.node("Mul", &[&ins[0], &ins[1]], None, vec![]),
            Layer::Unary(u) => w.unary(u, &ins[0]),
            Layer::GlobalAvgPool => w.node("GlobalAveragePool", &[&ins[0]], None, vec![]),
            Layer::Concat => {
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                w.node("Concat", &refs, None, vec![attr_int("axis", 1)])
            }
            Layer::Reshape => {
                let (c, h, wd) = net.shapes[node.output];
                let sn = w.fresh("shape");
                w.inits
                    .push(i64_tensor(&sn, &[4], &[1, c as i64, h as i64, wd as i64]));
                w.node("Reshape", &[&ins[0], &sn], None, vec![])
            }
        };
        names[node.output] = out;
    }
    let classes = net.classes();
    let flat_name = if net.softmax {
        None
    } else {
        Some("logits".to_string())
    };
    let mut y = w.node(
        "Flatten",
        &[&names[net.output].clone()],
        flat_name,
        vec![attr_int("axis", 1)],
    );
    if net.softmax {
        y = w.node(
            "Softmax",
            &[&y],
            Some("logits".into()),
            vec![attr_int("axis", 1)],
        );
    }
    debug_assert_eq!(y, "logits");
    let (c, h, wd) = net.input_shape();
    let model = ModelProto {
        ir_version: 7,
        producer_name: producer.into(),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: 14,
        }],
        graph: Some(GraphProto {
            name: "graftnet-learn".into(),
            node: w.nodes,
            initializer: w.inits,
            input: vec![value_info("input", &[1, c, h, wd])],
            output: vec![value_info("logits", &[1, classes])],
            ..Default::default()
        }),
        ..Default::default()
    };
    model.encode_to_vec()
}
