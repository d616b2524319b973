//! Export of [`NetParams`] to ONNX ([`to_onnx`]) in PyTorch's style or the
//! variants other exporters write ([`ExportStyle`]).

use std::collections::HashSet;

use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

use crate::onnx_build::{
    attr_float, attr_int, attr_ints, attr_tensor, f32_tensor, i64_tensor, node, value_info,
};

use super::params::*;

/// How ReLU6 is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relu6Style {
    /// `Clip(x, min, max)` with `Constant` node bounds (opset ≥ 11; PyTorch).
    ClipConstInputs,
    /// `Clip` with `min`/`max` attributes; the model is written at opset 10.
    ClipAttributes,
    /// Plain `Relu` (a different function: no upper clamp).
    Relu,
}

/// How the layers after pooling are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadStyle {
    /// `Flatten(axis=1)` then `Gemm(transB=1)` (PyTorch).
    FlattenGemm,
    /// `Reshape` to a constant `[1, -1]`, then `MatMul` with the weight
    /// transposed to `[features, classes]`, then `Add` bias (Paddle, TF).
    ReshapeMatMulAdd,
}

/// How HardSwish is written (MobileNetV3 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HardSwishStyle {
    /// `HardSigmoid(alpha=1/6)` then `Mul` with the input (PyTorch, opset 13).
    HardSigmoidMul,
    /// The `HardSwish` op; the model is written at opset 14.
    HardSwishOp,
    /// x · Clip(x + 3, 0, 6) / 6 with `Constant` scalars (Paddle).
    PaddleChain,
}

/// Export options of [`to_onnx`]. `Default` is PyTorch's
/// `torch.onnx.export(..., opset_version=13)` of an eval-mode model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportStyle {
    /// Batch norm folded into the preceding conv (weights and a bias,
    /// see [`ConvLayer::folded`]); otherwise bias-free convs followed by
    /// `BatchNormalization` nodes (PyTorch with
    /// `training=PRESERVE, do_constant_folding=False`).
    pub folded: bool,
    /// Weights as `Constant` nodes at the start of the graph instead of
    /// initializers (Paddle style); value names are unchanged.
    pub weights_in_constants: bool,
    pub relu6_as: Relu6Style,
    pub head: HeadStyle,
    pub hardswish_as: HardSwishStyle,
}

impl Default for ExportStyle {
    fn default() -> Self {
        ExportStyle {
            folded: true,
            weights_in_constants: false,
            relu6_as: Relu6Style::ClipConstInputs,
            head: HeadStyle::FlattenGemm,
            hardswish_as: HardSwishStyle::HardSigmoidMul,
        }
    }
}

impl ExportStyle {
    /// PyTorch's unfolded export: `BatchNormalization` nodes kept.
    pub fn unfolded() -> Self {
        ExportStyle {
            folded: false,
            ..Self::default()
        }
    }

    /// The opset the model is written at: 10 with Clip attributes, 14 with
    /// the HardSwish op, else 13.
    pub fn opset(&self) -> i64 {
        if self.relu6_as == Relu6Style::ClipAttributes {
            10
        } else if self.hardswish_as == HardSwishStyle::HardSwishOp {
            14
        } else {
            13
        }
    }
}

/// PyTorch's node scope for a module path: `features.1.conv.0.0` ->
/// `/features/features.1/conv/conv.0/conv.0.0`; `""` -> `""`.
fn scope_of(module: &str) -> String {
    let mut out = String::new();
    let mut seg = String::new();
    for part in module.split('.').filter(|p| !p.is_empty()) {
        if part.bytes().all(|b| b.is_ascii_digit()) && !seg.is_empty() {
            seg = format!("{seg}.{part}");
        } else {
            seg = part.to_string();
        }
        out.push('/');
        out.push_str(&seg);
    }
    out
}

/// Accumulates nodes and tensors with PyTorch's naming.
pub struct Graph {
    pub style: ExportStyle,
    pub opset: i64,
    pub nodes: Vec<NodeProto>,
    pub weight_nodes: Vec<NodeProto>,
    pub named_inits: Vec<TensorProto>,
    pub anon_inits: Vec<TensorProto>,
    pub used: HashSet<String>,
    pub anon_next: usize,
}

impl Graph {
    pub fn new(style: ExportStyle, anon_start: usize) -> Self {
        Graph {
            style,
            opset: style.opset(),
            nodes: Vec::new(),
            weight_nodes: Vec::new(),
            named_inits: Vec::new(),
            anon_inits: Vec::new(),
            used: HashSet::new(),
            anon_next: anon_start,
        }
    }

    /// Adds a node named `<scope>/<Op>` (`_1`, `_2` ... on repeats) with one
    /// output `<name>_output_0`; returns the output.
    pub fn node(
        &mut self,
        scope: &str,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> String {
        let base = format!("{scope}/{op}");
        let mut name = base.clone();
        let mut k = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        let out = format!("{name}_output_0");
        self.nodes.push(node(name, op, inputs, &out, attrs));
        out
    }

    fn const_scalar(&mut self, scope: &str, v: f32) -> String {
        self.node(
            scope,
            "Constant",
            &[],
            vec![attr_tensor("value", f32_tensor("", &[], &[v]))],
        )
    }

    /// A parameter tensor: initializer (named ones before `onnx::` ones, as
    /// PyTorch orders them) or a `Constant` node.
    pub fn param(&mut self, t: TensorProto, anonymous: bool) -> String {
        let name = t.name.clone();
        if self.style.weights_in_constants {
            let node_name = format!("Constant_{}", self.weight_nodes.len());
            let value = TensorProto {
                name: String::new(),
                ..t
            };
            self.weight_nodes.push(NodeProto {
                name: node_name,
                op_type: "Constant".into(),
                output: vec![name.clone()],
                attribute: vec![attr_tensor("value", value)],
                ..Default::default()
            });
        } else if anonymous {
            self.anon_inits.push(t);
        } else {
            self.named_inits.push(t);
        }
        name
    }

    /// `onnx::<Op>_<n>` names for tensors the exporter computed.
    fn anon_name(&mut self, op: &str) -> String {
        let n = self.anon_next;
        self.anon_next += 1;
        format!("onnx::{op}_{n}")
    }

    fn clip(&mut self, scope: &str, x: &str, lo: f32, hi: f32) -> String {
        if self.opset < 11 {
            let attrs = vec![attr_float("max", hi), attr_float("min", lo)];
            self.node(scope, "Clip", &[x], attrs)
        } else {
            let a = self.const_scalar(scope, lo);
            let b = self.const_scalar(scope, hi);
            self.node(scope, "Clip", &[x, &a, &b], vec![])
        }
    }

    fn activation(&mut self, act: Activation, module: &str, x: String) -> String {
        let scope = scope_of(module);
        let hsig = || vec![attr_float("alpha", 1.0 / 6.0)];
        match act {
            Activation::None => x,
            Activation::Relu => self.node(&scope, "Relu", &[&x], vec![]),
            Activation::Relu6 => match self.style.relu6_as {
                Relu6Style::Relu => self.node(&scope, "Relu", &[&x], vec![]),
                _ => self.clip(&scope, &x, 0.0, 6.0),
            },
            Activation::HardSigmoid => self.node(&scope, "HardSigmoid", &[&x], hsig()),
            Activation::HardSwish => match self.style.hardswish_as {
                HardSwishStyle::HardSigmoidMul => {
                    let h = self.node(&scope, "HardSigmoid", &[&x], hsig());
                    self.node(&scope, "Mul", &[&x, &h], vec![])
                }
                HardSwishStyle::HardSwishOp => {
                    assert!(
                        self.opset >= 14,
                        "HardSwishOp needs opset 14, but Relu6Style::ClipAttributes forces opset 10"
                    );
                    self.node(&scope, "HardSwish", &[&x], vec![])
                }
                HardSwishStyle::PaddleChain => {
                    let three = self.const_scalar(&scope, 3.0);
                    let shifted = self.node(&scope, "Add", &[&x, &three], vec![]);
                    let clipped = self.clip(&scope, &shifted, 0.0, 6.0);
                    let prod = self.node(&scope, "Mul", &[&x, &clipped], vec![]);
                    let six = self.const_scalar(&scope, 6.0);
                    self.node(&scope, "Div", &[&prod, &six], vec![])
                }
            },
        }
    }

    pub fn conv(&mut self, c: &ConvLayer, x: &str) -> String {
        let dims = c.weight_shape();
        let fold = self.style.folded && c.bn.is_some();
        let mut inputs = vec![x.to_string()];
        if fold {
            let (w, b) = c.folded();
            let wn = self.anon_name("Conv");
            let bn = self.anon_name("Conv");
            self.anon_next += 1;
            inputs.push(self.param(f32_tensor(&wn, &dims, &w), true));
            inputs.push(self.param(f32_tensor(&bn, &[c.out_channels], &b), true));
        } else {
            let wn = format!("{}.weight", c.module);
            inputs.push(self.param(f32_tensor(&wn, &dims, &c.weight), false));
            if let Some(b) = &c.bias {
                let bn = format!("{}.bias", c.module);
                inputs.push(self.param(f32_tensor(&bn, &[c.out_channels], b), false));
            }
        }
        let (k, s, p) = (c.kernel as i64, c.stride as i64, c.padding() as i64);
        let attrs = vec![
            attr_ints("dilations", &[1, 1]),
            attr_int("group", c.groups as i64),
            attr_ints("kernel_shape", &[k, k]),
            attr_ints("pads", &[p, p, p, p]),
            attr_ints("strides", &[s, s]),
        ];
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let mut y = self.node(&scope_of(&c.module), "Conv", &refs, attrs);
        if let (Some(bn), false) = (&c.bn, fold) {
            let n = [c.out_channels];
            let m = &bn.module;
            let scale = self.param(f32_tensor(&format!("{m}.weight"), &n, &bn.gamma), false);
            let bias = self.param(f32_tensor(&format!("{m}.bias"), &n, &bn.beta), false);
            let mean = self.param(
                f32_tensor(&format!("{m}.running_mean"), &n, &bn.mean),
                false,
            );
            let var = self.param(f32_tensor(&format!("{m}.running_var"), &n, &bn.var), false);
            let attrs = vec![
                attr_float("epsilon", bn.eps),
                attr_float("momentum", bn.momentum),
            ];
            y = self.node(
                &scope_of(m),
                "BatchNormalization",
                &[&y, &scale, &bias, &mean, &var],
                attrs,
            );
        }
        self.activation(c.act, &c.act_module, y)
    }

    fn squeeze_excite(&mut self, se: &SqueezeExcite, x: &str) -> String {
        let scope = scope_of(&se.module);
        let pooled = self.node(
            &scope_of(&format!("{}.avgpool", se.module)),
            "GlobalAveragePool",
            &[x],
            vec![],
        );
        let h = self.conv(&se.fc1, &pooled);
        let gate = self.conv(&se.fc2, &h);
        self.node(&scope, "Mul", &[&gate, x], vec![])
    }

    /// `x` is 2-D `[1, in_features]`.
    pub fn linear(&mut self, l: &Linear, x: &str) -> String {
        let scope = scope_of(&l.module);
        let bias = f32_tensor(&format!("{}.bias", l.module), &[l.out_features], &l.bias);
        match self.style.head {
            HeadStyle::FlattenGemm => {
                let w = self.param(
                    f32_tensor(
                        &format!("{}.weight", l.module),
                        &[l.out_features, l.in_features],
                        &l.weight,
                    ),
                    false,
                );
                let b = self.param(bias, false);
                let attrs = vec![
                    attr_float("alpha", 1.0),
                    attr_float("beta", 1.0),
                    attr_int("transB", 1),
                ];
                self.node(&scope, "Gemm", &[x, &w, &b], attrs)
            }
            HeadStyle::ReshapeMatMulAdd => {
                let mut wt = vec![0.0; l.weight.len()];
                for o in 0..l.out_features {
                    for i in 0..l.in_features {
                        wt[i * l.out_features + o] = l.weight[o * l.in_features + i];
                    }
                }
                let name = self.anon_name("MatMul");
                let w = self.param(
                    f32_tensor(&name, &[l.in_features, l.out_features], &wt),
                    true,
                );
                let b = self.param(bias, false);
                let y = self.node(&scope, "MatMul", &[x, &w], vec![]);
                self.node(&scope, "Add", &[&y, &b], vec![])
            }
        }
    }

    /// `[1, C, 1, 1]` -> `[1, C]`.
    pub fn flatten(&mut self, x: &str) -> String {
        match self.style.head {
            HeadStyle::FlattenGemm => self.node("", "Flatten", &[x], vec![attr_int("axis", 1)]),
            HeadStyle::ReshapeMatMulAdd => {
                let shape = self.node(
                    "",
                    "Constant",
                    &[],
                    vec![attr_tensor("value", i64_tensor("", &[2], &[1, -1]))],
                );
                self.node("", "Reshape", &[x, &shape], vec![])
            }
        }
    }

    /// Renames the value `from` to `to` everywhere.
    pub fn rename_value(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            for v in n.input.iter_mut().chain(n.output.iter_mut()) {
                if v == from {
                    *v = to.to_string();
                }
            }
        }
    }

    pub fn into_model(self, input: (&str, &[usize]), output: (&str, &[usize])) -> ModelProto {
        let mut nodes = self.weight_nodes;
        nodes.extend(self.nodes);
        let mut initializer = self.named_inits;
        initializer.extend(self.anon_inits);
        let graph = GraphProto {
            name: "main_graph".into(),
            node: nodes,
            initializer,
            input: vec![value_info(input.0, input.1)],
            output: vec![value_info(output.0, output.1)],
            ..Default::default()
        };
        ModelProto {
            ir_version: if self.opset >= 14 { 8 } else { 7 },
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: self.opset,
            }],
            producer_name: "pytorch".into(),
            producer_version: "2.15.0".into(),
            doc_string: "graftnet test fixture: synthetic weights (tools/src/fixtures.rs)".into(),
            graph: Some(graph),
            ..Default::default()
        }
    }
}

/// Serialized ONNX model of `params`: input `input` `[1, C, H, W]` float,
/// output `logits` `[1, classes]`, node and initializer names as PyTorch's
/// exporter writes them (`/features/features.0/features.0.0/Conv`,
/// `onnx::Conv_<n>` for folded tensors, `features.0.1.running_var` ...).
///
/// # Panics
/// If the net contains HardSwish and the style asks for both
/// `Relu6Style::ClipAttributes` (opset 10) and `HardSwishStyle::HardSwishOp`
/// (opset 14).
pub fn to_onnx(params: &NetParams, style: &ExportStyle) -> Vec<u8> {
    let n_convs = params.convs().len();
    let mut g = Graph::new(*style, 1 + params.state_dict_len() + 4 * n_convs);
    let mut x = "input".to_string();
    for block in &params.blocks {
        let block_in = x.clone();
        for layer in &block.layers {
            x = match layer {
                Layer::Conv(c) => g.conv(c, &x),
                Layer::SqueezeExcite(se) => g.squeeze_excite(se, &x),
            };
        }
        if block.residual {
            let scope = scope_of(&block.module);
            // PyTorch's operand order: mnv2 `x + self.conv(x)`,
            // mnv3 `result += input`.
            x = match params.arch {
                Arch::MobileNetV3Small => g.node(&scope, "Add", &[&x, &block_in], vec![]),
                _ => g.node(&scope, "Add", &[&block_in, &x], vec![]),
            };
        }
    }
    x = g.node(
        &scope_of(&params.pool_module),
        "GlobalAveragePool",
        &[&x],
        vec![],
    );
    x = g.flatten(&x);
    if let Some(h) = &params.hidden {
        x = g.linear(&h.linear, &x);
        x = g.activation(h.act, &h.act_module, x);
    }
    x = g.linear(&params.classifier, &x);
    g.rename_value(&x, "logits");
    g.into_model(
        ("input", &params.input_shape()),
        ("logits", &[1, params.classes()]),
    )
    .encode_to_vec()
}
