//! Synthetic ONNX test models, written from Rust.
//!
//! The shipped fixtures in `models/` come from PyTorch and are few; tests of
//! the importer, the patch differ and the quantizer need many more shapes of
//! the same thing: other widths, resolutions, class counts, task kinds and
//! the export styles other frameworks produce. This module builds them
//! without Python:
//!
//! 1. A parameter-level description, [`NetParams`]: every conv with its
//!    weights (OIHW), optional bias, batch norm and activation, grouped into
//!    blocks exactly as torchvision groups them ([`mobilenet_v2`],
//!    [`mobilenet_v3_small`], [`tiny_cnn`]). Module names are torchvision's
//!    (`features.3.conv.1.0`), so exported node and initializer names match
//!    what PyTorch writes.
//! 2. Fine-tuning, simulated at the parameter level ([`derive_task`]): an S/B
//!    task changes only batch-norm parameters and statistics, a DW task only
//!    depthwise kernels, a logits task only the classifier; each (except
//!    logits-only) also gets a new classifier. [`perturb_pointwise`] and
//!    [`drop_last_block`] make tasks that are *not* expressible as a patch.
//! 3. Export ([`to_onnx`]) in PyTorch's style (opset 13, IR 7, BN folded,
//!    `Clip` with `Constant` bounds, `Flatten` + `Gemm`, HardSwish as
//!    `HardSigmoid` + `Mul`) or in the variants other exporters write
//!    ([`ExportStyle`]).
//!
//! Contracts:
//! - Everything is deterministic: a seed and a module name determine each
//!   tensor (a tiny splitmix64 generator, no `rand`), so the same call gives
//!   the same bytes on every machine.
//! - Weights are random but *scaled like a trained net*: Kaiming-normal
//!   weights, batch norm gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1),
//!   var ~ U(0.5, 1.5), mean ~ N(0, 0.1); then one float forward pass over a
//!   few random images (in Rust, [`forward`]'s code) sets each layer's weight
//!   scale so its output has unit variance (LSUV) and adds each channel's
//!   measured mean to its batch-norm mean, as running statistics would.
//!   Without that, random statistics that do not match the activations let
//!   ranges drift by orders of magnitude over 50 layers. Logits of the mnv2
//!   family have an RMS near 1 on inputs in [-1, 1]; MobileNetV3 (SE gates,
//!   HardSwish, 1×1 maps at 32×32) varies more from input to input.
//! - Every export style computes the same function as the default (within
//!   float rounding), except [`Relu6Style::Relu`], which deliberately writes
//!   ReLU instead of ReLU6.
//! - These are test helpers: invalid requests (a depthwise index passed to
//!   [`perturb_pointwise`], an opset-10 style combined with a HardSwish op)
//!   panic with a message rather than return an error.

use std::collections::HashSet;

use prost::Message;
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
};

use crate::onnx_build::{
    attr_float, attr_int, attr_ints, attr_string, attr_tensor, f32_tensor, i64_tensor, node,
    value_info,
};
use crate::rng::Rng;

/// `n * c * h * w` values uniform in [-1, 1], NCHW order, seeded.
pub fn random_inputs(n: usize, c: usize, h: usize, w: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::for_name(seed, "random_inputs");
    (0..n * c * h * w).map(|_| rng.uniform(-1.0, 1.0)).collect()
}

// ---------------------------------------------------------------- parameters

/// Which generator built a net (decides PyTorch's operand order of residual
/// adds and the name of the pooling node).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    MobileNetV2,
    MobileNetV3Small,
    TinyCnn,
}

/// The nonlinearity after a conv (+ batch norm).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    None,
    Relu,
    Relu6,
    /// x · HardSigmoid(x)
    HardSwish,
    /// max(0, min(1, x/6 + 1/2)) (the squeeze-excite gate)
    HardSigmoid,
}

/// An inference-mode batch norm: y = gamma · (x − mean) / sqrt(var + eps) + beta.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// torchvision module path, e.g. `features.0.1`.
    pub module: String,
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f32,
    /// The ONNX attribute (1 − PyTorch's momentum); unused at inference.
    pub momentum: f32,
}

impl BatchNorm {
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }
}

/// One 2-D convolution, square kernel, "same" padding `(kernel − 1) / 2`,
/// followed by an optional batch norm and an activation.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    /// torchvision module path of the `Conv2d`, e.g. `features.1.conv.0.0`.
    pub module: String,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub groups: usize,
    /// OIHW: `[out_channels][in_channels / groups][kernel][kernel]`.
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub bn: Option<BatchNorm>,
    pub act: Activation,
    /// Module path of the activation (node scope), e.g. `features.0.2`.
    pub act_module: String,
}

impl ConvLayer {
    pub fn padding(&self) -> usize {
        (self.kernel - 1) / 2
    }

    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.out_channels,
            self.in_channels / self.groups,
            self.kernel,
            self.kernel,
        ]
    }

    /// torchvision's definition: grouped with one input channel per group.
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels
    }

    /// Weights per output channel.
    pub fn filter_len(&self) -> usize {
        self.weight.len() / self.out_channels
    }

    /// Weight and bias with the batch norm folded in, exactly as
    /// [`to_onnx`] writes them when `folded`: per output channel, in f32,
    /// s = gamma / sqrt(var + eps), W' = W · s, b' = (b − mean) · s + beta.
    /// Without a batch norm: the weight and the bias (zeros if none).
    pub fn folded(&self) -> (Vec<f32>, Vec<f32>) {
        let bias = self
            .bias
            .clone()
            .unwrap_or_else(|| vec![0.0; self.out_channels]);
        let Some(bn) = &self.bn else {
            return (self.weight.clone(), bias);
        };
        let per = self.filter_len();
        let mut w = self.weight.clone();
        let mut b = bias;
        for o in 0..self.out_channels {
            let s = bn.gamma[o] / (bn.var[o] + bn.eps).sqrt();
            for v in &mut w[o * per..(o + 1) * per] {
                *v *= s;
            }
            b[o] = (b[o] - bn.mean[o]) * s + bn.beta[o];
        }
        (w, b)
    }
}

/// Squeeze-and-excitation (torchvision `SqueezeExcitation`):
/// x · HardSigmoid(fc2(ReLU(fc1(GlobalAveragePool(x))))).
#[derive(Clone, Debug, PartialEq)]
pub struct SqueezeExcite {
    /// Module path, e.g. `features.4.block.2`.
    pub module: String,
    /// 1×1 conv with bias, `act` = Relu.
    pub fc1: ConvLayer,
    /// 1×1 conv with bias, `act` = HardSigmoid.
    pub fc2: ConvLayer,
}

/// One step of a [`Block`].
#[allow(clippy::large_enum_variant)] // a handful per net; plain matching beats boxing
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    Conv(ConvLayer),
    SqueezeExcite(SqueezeExcite),
}

/// One element of torchvision's `features` sequence: a single conv
/// (`Conv2dNormActivation`) or an inverted-residual block.
#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    /// Module path, e.g. `features.3`.
    pub module: String,
    pub layers: Vec<Layer>,
    /// The block's input is added to its output.
    pub residual: bool,
}

impl Block {
    fn for_each_name_mut(&mut self, f: &mut impl FnMut(&mut String)) {
        f(&mut self.module);
        for layer in &mut self.layers {
            match layer {
                Layer::Conv(c) => conv_names_mut(c, f),
                Layer::SqueezeExcite(se) => {
                    f(&mut se.module);
                    conv_names_mut(&mut se.fc1, f);
                    conv_names_mut(&mut se.fc2, f);
                }
            }
        }
    }
}

fn conv_names_mut(c: &mut ConvLayer, f: &mut impl FnMut(&mut String)) {
    f(&mut c.module);
    f(&mut c.act_module);
    if let Some(bn) = &mut c.bn {
        f(&mut bn.module);
    }
}

/// A fully connected layer, y = W x + b.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// Module path, e.g. `classifier.1`.
    pub module: String,
    pub in_features: usize,
    pub out_features: usize,
    /// `[out_features][in_features]` (PyTorch's layout).
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A hidden fully connected layer between pooling and the logits layer
/// (MobileNetV3's `classifier.0` + HardSwish). Part of the backbone.
#[derive(Clone, Debug, PartialEq)]
pub struct Hidden {
    pub linear: Linear,
    pub act: Activation,
    pub act_module: String,
}

/// A whole net: `blocks`, global average pooling, flatten, optional hidden
/// layer, classifier (the logits layer).
#[derive(Clone, Debug, PartialEq)]
pub struct NetParams {
    pub arch: Arch,
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub blocks: Vec<Block>,
    /// Scope of the pooling node: `""` when pooling is functional (mnv2's
    /// `adaptive_avg_pool2d`), `"avgpool"` for a module.
    pub pool_module: String,
    pub hidden: Option<Hidden>,
    pub classifier: Linear,
}

impl NetParams {
    /// `[1, C, H, W]`.
    pub fn input_shape(&self) -> [usize; 4] {
        [1, self.in_channels, self.height, self.width]
    }

    pub fn classes(&self) -> usize {
        self.classifier.out_features
    }

    /// Every conv in graph order (= the order of the ONNX `Conv` nodes),
    /// squeeze-excite convs included.
    pub fn convs(&self) -> Vec<&ConvLayer> {
        let mut out = Vec::new();
        for b in &self.blocks {
            for l in &b.layers {
                match l {
                    Layer::Conv(c) => out.push(c),
                    Layer::SqueezeExcite(se) => {
                        out.push(&se.fc1);
                        out.push(&se.fc2);
                    }
                }
            }
        }
        out
    }

    /// Mutable [`NetParams::convs`], same order.
    pub fn convs_mut(&mut self) -> Vec<&mut ConvLayer> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            for l in &mut b.layers {
                match l {
                    Layer::Conv(c) => out.push(c),
                    Layer::SqueezeExcite(se) => {
                        out.push(&mut se.fc1);
                        out.push(&mut se.fc2);
                    }
                }
            }
        }
        out
    }

    /// Indices into [`NetParams::convs`] of the convs that are not depthwise
    /// (valid arguments of [`perturb_pointwise`]).
    pub fn non_depthwise_conv_indices(&self) -> Vec<usize> {
        self.convs()
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_depthwise())
            .map(|(i, _)| i)
            .collect()
    }

    pub fn batch_norms(&self) -> Vec<&BatchNorm> {
        self.convs()
            .into_iter()
            .filter_map(|c| c.bn.as_ref())
            .collect()
    }

    /// Sum of batch-norm channels (the S/B patch holds two values each).
    pub fn bn_channels(&self) -> usize {
        self.batch_norms().iter().map(|b| b.channels()).sum()
    }

    /// Weights of all depthwise kernels (the DW patch).
    pub fn depthwise_params(&self) -> usize {
        self.convs()
            .iter()
            .filter(|c| c.is_depthwise())
            .map(|c| c.weight.len())
            .sum()
    }

    /// Trainable parameters as PyTorch counts them: conv weights and
    /// biases, batch-norm gamma and beta (running statistics excluded),
    /// linear weights and biases.
    pub fn param_count(&self) -> usize {
        let convs: usize = self
            .convs()
            .iter()
            .map(|c| {
                c.weight.len()
                    + c.bias.as_ref().map_or(0, Vec::len)
                    + c.bn.as_ref().map_or(0, |b| 2 * b.channels())
            })
            .sum();
        let lin = |l: &Linear| l.weight.len() + l.bias.len();
        convs + self.hidden.as_ref().map_or(0, |h| lin(&h.linear)) + lin(&self.classifier)
    }

    /// Features entering the logits layer.
    pub fn features(&self) -> usize {
        self.classifier.in_features
    }

    /// Entries of PyTorch's state dict (used only for `onnx::` numbering).
    fn state_dict_len(&self) -> usize {
        let convs: usize = self
            .convs()
            .iter()
            .map(|c| 1 + c.bias.is_some() as usize + 5 * c.bn.is_some() as usize)
            .sum();
        convs + 2 + 2 * self.hidden.is_some() as usize
    }
}

// ---------------------------------------------------------------- generators

/// torchvision's `_make_divisible(v, divisor)` (min_value = divisor).
fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as i64;
    let mut new_v = d.max((v + divisor as f64 / 2.0) as i64 / d * d);
    if (new_v as f64) < 0.9 * v {
        new_v += d;
    }
    new_v as usize
}

/// The f64 Python would hold for a width written as this f32 literal
/// (0.35f32 -> 0.35, not 0.3499999940395355), so channel rounding matches
/// torchvision on edge cases.
fn py_float(w: f32) -> f64 {
    format!("{w}").parse().expect("f32 Display parses as f64")
}

/// Builds layers with random weights (Kaiming normal, fan-in; the scale is
/// then set by [`calibrate`]) and batch norms with random statistics.
struct Init {
    seed: u64,
    eps: f32,
    momentum: f32,
}

impl Init {
    fn new(seed: u64, eps: f32, momentum: f32) -> Self {
        Init {
            seed,
            eps,
            momentum,
        }
    }

    fn batch_norm(&self, module: &str, n: usize) -> BatchNorm {
        let mut r = Rng::for_name(self.seed, module);
        BatchNorm {
            module: module.to_string(),
            gamma: (0..n).map(|_| r.uniform(0.5, 1.5)).collect(),
            beta: (0..n).map(|_| r.normal(0.0, 0.1)).collect(),
            mean: (0..n).map(|_| r.normal(0.0, 0.1)).collect(),
            var: (0..n).map(|_| r.uniform(0.5, 1.5)).collect(),
            eps: self.eps,
            momentum: self.momentum,
        }
    }

    /// A conv; `bn` names the batch-norm module (None: no batch norm).
    fn conv(
        &mut self,
        module: String,
        bn: Option<String>,
        act_module: String,
        (cin, cout, kernel, stride, groups): (usize, usize, usize, usize, usize),
        act: Activation,
        bias: bool,
    ) -> ConvLayer {
        let fan_in = (cin / groups * kernel * kernel) as f64;
        let mut r = Rng::for_name(self.seed, &format!("{module}.weight"));
        let weight = r.normals(
            cout * (cin / groups) * kernel * kernel,
            (2.0 / fan_in).sqrt(),
        );
        let bias = bias.then(|| {
            let mut r = Rng::for_name(self.seed, &format!("{module}.bias"));
            r.normals(cout, 0.1)
        });
        let bn = bn.map(|m| self.batch_norm(&m, cout));
        ConvLayer {
            module,
            in_channels: cin,
            out_channels: cout,
            kernel,
            stride,
            groups,
            weight,
            bias,
            bn,
            act,
            act_module,
        }
    }

    /// torchvision `Conv2dNormActivation` at module path `m`:
    /// conv `m.0`, batch norm `m.1`, activation `m.2`.
    fn conv_bn_act(
        &mut self,
        m: &str,
        shape: (usize, usize, usize, usize, usize),
        act: Activation,
    ) -> ConvLayer {
        self.conv(
            format!("{m}.0"),
            Some(format!("{m}.1")),
            format!("{m}.2"),
            shape,
            act,
            false,
        )
    }

    fn squeeze_excite(&mut self, m: &str, channels: usize, squeeze: usize) -> SqueezeExcite {
        let fc1 = self.conv(
            format!("{m}.fc1"),
            None,
            format!("{m}.activation"),
            (channels, squeeze, 1, 1, 1),
            Activation::Relu,
            true,
        );
        let fc2 = self.conv(
            format!("{m}.fc2"),
            None,
            format!("{m}.scale_activation"),
            (squeeze, channels, 1, 1, 1),
            Activation::HardSigmoid,
            true,
        );
        SqueezeExcite {
            module: m.to_string(),
            fc1,
            fc2,
        }
    }

    fn linear(&mut self, module: &str, fin: usize, fout: usize) -> Linear {
        let mut r = Rng::for_name(self.seed, &format!("{module}.weight"));
        let weight = r.normals(fout * fin, (1.0 / fin as f64).sqrt());
        let mut r = Rng::for_name(self.seed, &format!("{module}.bias"));
        let bias = r.normals(fout, 0.05);
        Linear {
            module: module.to_string(),
            in_features: fin,
            out_features: fout,
            weight,
            bias,
        }
    }
}

/// Configuration of [`mobilenet_v2`].
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetV2Config {
    /// `width_mult` (0.35, 0.5, 0.75, 1.0, 1.4 ...).
    pub width: f32,
    /// Input height and width.
    pub resolution: usize,
    pub in_channels: usize,
    pub classes: usize,
    /// Stride of the stem conv (torchvision: 2; the shipped fixtures: 1).
    pub first_stride: usize,
    pub seed: u64,
}

impl Default for MobileNetV2Config {
    /// torchvision's `mobilenet_v2()`: width 1.0, 224×224 RGB, 1000 classes.
    fn default() -> Self {
        MobileNetV2Config {
            width: 1.0,
            resolution: 224,
            in_channels: 3,
            classes: 1000,
            first_stride: 2,
            seed: 0,
        }
    }
}

/// torchvision's `mobilenet_v2(width_mult)`, structure and names exactly
/// (stem with `in_channels` and `first_stride`), random weights.
/// 52 convs (17 depthwise), each with a batch norm (eps 1e-5), ReLU6,
/// residual adds where stride is 1 and channels match.
pub fn mobilenet_v2(cfg: &MobileNetV2Config) -> NetParams {
    const SETTINGS: [(usize, usize, usize, usize); 7] = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let w = py_float(cfg.width);
    let mut init = Init::new(cfg.seed, 1e-5, 0.9);
    let mut input_channel = make_divisible(32.0 * w, 8);
    let last_channel = make_divisible(1280.0 * w.max(1.0), 8);
    let relu6 = Activation::Relu6;

    let mut blocks = vec![Block {
        module: "features.0".into(),
        layers: vec![Layer::Conv(init.conv_bn_act(
            "features.0",
            (cfg.in_channels, input_channel, 3, cfg.first_stride, 1),
            relu6,
        ))],
        residual: false,
    }];
    for (t, c, n, s) in SETTINGS {
        let out = make_divisible(c as f64 * w, 8);
        for i in 0..n {
            let stride = if i == 0 { s } else { 1 };
            let hidden = input_channel * t;
            let m = format!("features.{}", blocks.len());
            let mut layers = Vec::new();
            let mut j = 0;
            if t != 1 {
                layers.push(Layer::Conv(init.conv_bn_act(
                    &format!("{m}.conv.{j}"),
                    (input_channel, hidden, 1, 1, 1),
                    relu6,
                )));
                j += 1;
            }
            layers.push(Layer::Conv(init.conv_bn_act(
                &format!("{m}.conv.{j}"),
                (hidden, hidden, 3, stride, hidden),
                relu6,
            )));
            j += 1;
            // Project: a bare nn.Conv2d at conv.j, its BatchNorm2d at conv.j+1.
            layers.push(Layer::Conv(init.conv(
                format!("{m}.conv.{j}"),
                Some(format!("{m}.conv.{}", j + 1)),
                String::new(),
                (hidden, out, 1, 1, 1),
                Activation::None,
                false,
            )));
            let residual = stride == 1 && input_channel == out;
            blocks.push(Block {
                module: m,
                layers,
                residual,
            });
            input_channel = out;
        }
    }
    let m = format!("features.{}", blocks.len());
    blocks.push(Block {
        module: m.clone(),
        layers: vec![Layer::Conv(init.conv_bn_act(
            &m,
            (input_channel, last_channel, 1, 1, 1),
            relu6,
        ))],
        residual: false,
    });
    let classifier = init.linear("classifier.1", last_channel, cfg.classes);
    let mut p = NetParams {
        arch: Arch::MobileNetV2,
        in_channels: cfg.in_channels,
        height: cfg.resolution,
        width: cfg.resolution,
        blocks,
        pool_module: String::new(),
        hidden: None,
        classifier,
    };
    calibrate(&mut p, cfg.seed);
    p
}

/// Configuration of [`mobilenet_v3_small`].
#[derive(Clone, Debug, PartialEq)]
pub struct MobileNetV3Config {
    /// `width_mult`.
    pub width: f32,
    pub resolution: usize,
    pub in_channels: usize,
    pub classes: usize,
    /// Stride of the stem conv (torchvision: 2).
    pub first_stride: usize,
    /// torchvision's `reduced_tail`: halves the channels of the last stage.
    pub reduced_tail: bool,
    pub seed: u64,
}

impl Default for MobileNetV3Config {
    /// torchvision's `mobilenet_v3_small()`.
    fn default() -> Self {
        MobileNetV3Config {
            width: 1.0,
            resolution: 224,
            in_channels: 3,
            classes: 1000,
            first_stride: 2,
            reduced_tail: false,
            seed: 0,
        }
    }
}

/// torchvision's `mobilenet_v3_small(width_mult, reduced_tail)`, structure
/// and names exactly, random weights: batch norm eps 1e-3 (momentum 0.01),
/// ReLU / HardSwish, squeeze-excite with HardSigmoid gates, classifier
/// Linear → HardSwish → (Dropout) → Linear; only the last Linear is the
/// logits layer ([`NetParams::classifier`]), the first is
/// [`NetParams::hidden`].
pub fn mobilenet_v3_small(cfg: &MobileNetV3Config) -> NetParams {
    let w = py_float(cfg.width);
    let rd = if cfg.reduced_tail { 2 } else { 1 };
    let adjust = |c: usize| make_divisible(c as f64 * w, 8);
    use Activation::{HardSwish as HS, Relu as RE};
    // input, kernel, expanded, out, use_se, activation, stride (nominal)
    let settings: [(usize, usize, usize, usize, bool, Activation, usize); 11] = [
        (16, 3, 16, 16, true, RE, 2),
        (16, 3, 72, 24, false, RE, 2),
        (24, 3, 88, 24, false, RE, 1),
        (24, 5, 96, 40, true, HS, 2),
        (40, 5, 240, 40, true, HS, 1),
        (40, 5, 240, 40, true, HS, 1),
        (40, 5, 120, 48, true, HS, 1),
        (48, 5, 144, 48, true, HS, 1),
        (48, 5, 288, 96 / rd, true, HS, 2), // 288 is not reduced (torchvision)
        (96 / rd, 5, 576 / rd, 96 / rd, true, HS, 1),
        (96 / rd, 5, 576 / rd, 96 / rd, true, HS, 1),
    ];
    let last_channel = adjust(1024 / rd);
    let mut init = Init::new(cfg.seed, 1e-3, 0.99);

    let first = adjust(settings[0].0);
    let mut blocks = vec![Block {
        module: "features.0".into(),
        layers: vec![Layer::Conv(init.conv_bn_act(
            "features.0",
            (cfg.in_channels, first, 3, cfg.first_stride, 1),
            HS,
        ))],
        residual: false,
    }];
    for (cin, k, exp, cout, use_se, act, stride) in settings {
        let (cin, exp, cout) = (adjust(cin), adjust(exp), adjust(cout));
        let m = format!("features.{}", blocks.len());
        let mut layers = Vec::new();
        let mut j = 0;
        if exp != cin {
            layers.push(Layer::Conv(init.conv_bn_act(
                &format!("{m}.block.{j}"),
                (cin, exp, 1, 1, 1),
                act,
            )));
            j += 1;
        }
        layers.push(Layer::Conv(init.conv_bn_act(
            &format!("{m}.block.{j}"),
            (exp, exp, k, stride, exp),
            act,
        )));
        j += 1;
        if use_se {
            let squeeze = make_divisible((exp / 4) as f64, 8);
            layers.push(Layer::SqueezeExcite(init.squeeze_excite(
                &format!("{m}.block.{j}"),
                exp,
                squeeze,
            )));
            j += 1;
        }
        layers.push(Layer::Conv(init.conv_bn_act(
            &format!("{m}.block.{j}"),
            (exp, cout, 1, 1, 1),
            Activation::None,
        )));
        let residual = stride == 1 && cin == cout;
        blocks.push(Block {
            module: m,
            layers,
            residual,
        });
    }
    let lastconv_in = adjust(settings[10].3);
    let lastconv_out = 6 * lastconv_in;
    let m = format!("features.{}", blocks.len());
    blocks.push(Block {
        module: m.clone(),
        layers: vec![Layer::Conv(init.conv_bn_act(
            &m,
            (lastconv_in, lastconv_out, 1, 1, 1),
            HS,
        ))],
        residual: false,
    });
    let hidden_linear = init.linear("classifier.0", lastconv_out, last_channel);
    let classifier = init.linear("classifier.3", last_channel, cfg.classes);
    let mut p = NetParams {
        arch: Arch::MobileNetV3Small,
        in_channels: cfg.in_channels,
        height: cfg.resolution,
        width: cfg.resolution,
        blocks,
        pool_module: "avgpool".into(),
        hidden: Some(Hidden {
            linear: hidden_linear,
            act: HS,
            act_module: "classifier.1".into(),
        }),
        classifier,
    };
    calibrate(&mut p, cfg.seed);
    p
}

/// A small MobileNetV2-like net for fast tests: input 1×3×16×16, 5 classes.
/// `features.0` conv 3→8 stride 2; `features.1` depthwise 8 + project 8→16;
/// `features.2` expand 16→32, depthwise 32, project 32→16, residual add;
/// `features.3` conv 16→32; pool; `classifier.1` 32→5. 7 convs (2
/// depthwise), all with batch norm and ReLU6 except the projections.
pub fn tiny_cnn(seed: u64) -> NetParams {
    let mut init = Init::new(seed, 1e-5, 0.9);
    let relu6 = Activation::Relu6;
    let project = |init: &mut Init, m: &str, j: usize, cin: usize, cout: usize| {
        Layer::Conv(init.conv(
            format!("{m}.conv.{j}"),
            Some(format!("{m}.conv.{}", j + 1)),
            String::new(),
            (cin, cout, 1, 1, 1),
            Activation::None,
            false,
        ))
    };
    let stem = init.conv_bn_act("features.0", (3, 8, 3, 2, 1), relu6);
    let b1 = vec![
        Layer::Conv(init.conv_bn_act("features.1.conv.0", (8, 8, 3, 1, 8), relu6)),
        project(&mut init, "features.1", 1, 8, 16),
    ];
    let b2 = vec![
        Layer::Conv(init.conv_bn_act("features.2.conv.0", (16, 32, 1, 1, 1), relu6)),
        Layer::Conv(init.conv_bn_act("features.2.conv.1", (32, 32, 3, 1, 32), relu6)),
        project(&mut init, "features.2", 2, 32, 16),
    ];
    let last = init.conv_bn_act("features.3", (16, 32, 1, 1, 1), relu6);
    let classifier = init.linear("classifier.1", 32, 5);
    let block = |m: &str, layers, residual| Block {
        module: m.into(),
        layers,
        residual,
    };
    let mut p = NetParams {
        arch: Arch::TinyCnn,
        in_channels: 3,
        height: 16,
        width: 16,
        blocks: vec![
            block("features.0", vec![Layer::Conv(stem)], false),
            block("features.1", b1, false),
            block("features.2", b2, true),
            block("features.3", vec![Layer::Conv(last)], false),
        ],
        pool_module: String::new(),
        hidden: None,
        classifier,
    };
    calibrate(&mut p, seed);
    p
}

// ---------------------------------------------------------------- float forward

/// Activations of one image, `[C][H][W]`.
struct Fmap {
    c: usize,
    h: usize,
    w: usize,
    data: Vec<f32>,
}

fn second_moment(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>() / v.len().max(1) as f64
}

/// Direct convolution without bias (zero padding `(k − 1) / 2`).
fn conv2d(x: &Fmap, c: &ConvLayer) -> Fmap {
    let (k, s, pad) = (c.kernel, c.stride, c.padding());
    let oh = (x.h + 2 * pad - k) / s + 1;
    let ow = (x.w + 2 * pad - k) / s + 1;
    let cin_g = c.in_channels / c.groups;
    let cout_g = c.out_channels / c.groups;
    assert_eq!(x.c, c.in_channels, "{}: input channels", c.module);
    let mut y = vec![0.0f32; c.out_channels * oh * ow];
    for o in 0..c.out_channels {
        let g = o / cout_g;
        let yo = &mut y[o * oh * ow..(o + 1) * oh * ow];
        for ci in 0..cin_g {
            let xc = &x.data[(g * cin_g + ci) * x.h * x.w..][..x.h * x.w];
            for ky in 0..k {
                for kx in 0..k {
                    let wv = c.weight[((o * cin_g + ci) * k + ky) * k + kx];
                    // Output columns whose input column ox·s + kx − pad is inside.
                    let lo = (pad.saturating_sub(kx)).div_ceil(s);
                    let hi = (x.w + pad).saturating_sub(kx).div_ceil(s).min(ow);
                    for oy in 0..oh {
                        let iy = oy * s + ky;
                        if iy < pad || iy - pad >= x.h {
                            continue;
                        }
                        let row = &xc[(iy - pad) * x.w..][..x.w];
                        let yrow = &mut yo[oy * ow..][..ow];
                        for ox in lo..hi {
                            yrow[ox] += wv * row[ox * s + kx - pad];
                        }
                    }
                }
            }
        }
    }
    Fmap {
        c: c.out_channels,
        h: oh,
        w: ow,
        data: y,
    }
}

fn activate(act: Activation, v: &mut [f32]) {
    for x in v {
        *x = match act {
            Activation::None => *x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::HardSwish => *x * (*x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::HardSigmoid => (*x / 6.0 + 0.5).clamp(0.0, 1.0),
        };
    }
}

/// What [`run_float`] does besides computing.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Only compute.
    Eval,
    /// Data-dependent init of a new net, layer by layer (in the spirit of
    /// LSUV): each batch-normed conv's weights get one scale per layer for
    /// unit variance (averaged over channels) and its batch-norm means are
    /// shifted by the measured channel means; convs without batch norm and
    /// linear layers get one scale per layer for a unit second moment.
    Init,
    /// An S/B task (the seed): new gamma and beta for every batch norm,
    /// statistics re-estimated on the batch, as after real S/B fine-tuning.
    /// Weights are not touched. Only blocks from the second number on.
    TaskStats(u64, usize),
}

/// Per-channel mean and variance of a batch of maps.
fn channel_stats(ys: &[Fmap]) -> Vec<(f64, f64)> {
    let plane = ys[0].h * ys[0].w;
    let n = (plane * ys.len()) as f64;
    (0..ys[0].c)
        .map(|o| {
            let (mut s1, mut s2) = (0.0f64, 0.0f64);
            for y in ys {
                for &v in &y.data[o * plane..(o + 1) * plane] {
                    s1 += f64::from(v);
                    s2 += f64::from(v) * f64::from(v);
                }
            }
            let mean = s1 / n;
            (mean, (s2 / n - mean * mean).max(0.0))
        })
        .collect()
}

/// The S/B change of one batch norm, given the measured statistics of its
/// input under the task (see [`derive_task`]).
fn task_batch_norm(bn: &mut BatchNorm, stats: &[(f64, f64)], seed: u64) {
    let mut r = Rng::for_name(seed, &format!("task.sb.{}", bn.module));
    // The base's variances are relative to a layer average of 1.
    let layer_var = stats.iter().map(|s| s.1).sum::<f64>() / stats.len() as f64;
    let layer_var = if layer_var > 1e-12 { layer_var } else { 1.0 };
    for (i, &(mean, var)) in stats.iter().enumerate() {
        bn.gamma[i] *= r.uniform(0.55, 1.4);
        if r.unit() < 0.05 {
            bn.gamma[i] = -bn.gamma[i];
        }
        bn.beta[i] += r.normal(0.0, 0.1);
        bn.mean[i] = (mean + f64::from(r.normal(0.0, 0.1)) * layer_var.sqrt()) as f32;
        bn.var[i] = (f64::from(bn.var[i]) * layer_var * f64::from(r.uniform(0.7, 1.4))) as f32;
        if r.unit() < 0.02 {
            // Constant on the task's data: running variance exactly 0. The
            // fused scale gamma/sqrt(eps) stays moderate on this data.
            bn.var[i] = 0.0;
            let g =
                f64::from(bn.eps).sqrt() * f64::from(r.uniform(0.5, 2.0)) / var.max(1e-12).sqrt();
            bn.gamma[i] = (g as f32).copysign(bn.gamma[i]);
        }
    }
}

/// Runs `p` on a batch of images (each `[C][H][W]`); returns their logits.
/// `mode` may change the parameters on the way (see [`Mode`]).
fn run_float(p: &mut NetParams, inputs: &[Vec<f32>], mode: Mode) -> Vec<Vec<f32>> {
    fn scale(v: &mut [f32], f: f64) {
        v.iter_mut().for_each(|x| *x = (f64::from(*x) * f) as f32);
    }
    fn conv(c: &mut ConvLayer, xs: &[Fmap], mode: Mode) -> Vec<Fmap> {
        let mut ys: Vec<Fmap> = xs.iter().map(|x| conv2d(x, c)).collect();
        let plane = ys[0].h * ys[0].w;
        match (mode, &mut c.bn) {
            (Mode::Init, Some(_)) => {
                let stats = channel_stats(&ys);
                // One scale per layer (per-channel scales from a few samples
                // overfit on 1×1 maps).
                let var = stats.iter().map(|s| s.1).sum::<f64>() / c.out_channels as f64;
                let f = if var > 1e-12 { 1.0 / var.sqrt() } else { 1.0 };
                scale(&mut c.weight, f);
                ys.iter_mut().for_each(|y| scale(&mut y.data, f));
                let bn = c.bn.as_mut().expect("matched Some");
                for (m, (mean, _)) in bn.mean.iter_mut().zip(&stats) {
                    *m += (mean * f) as f32;
                }
            }
            (Mode::Init, None) => {
                let m2 = ys.iter().map(|y| second_moment(&y.data)).sum::<f64>() / ys.len() as f64;
                let f = 1.0 / m2.max(1e-12).sqrt();
                scale(&mut c.weight, f);
                ys.iter_mut().for_each(|y| scale(&mut y.data, f));
            }
            (Mode::TaskStats(seed, _), Some(bn)) => task_batch_norm(bn, &channel_stats(&ys), seed),
            _ => {}
        }
        for y in &mut ys {
            for o in 0..y.c {
                let v = &mut y.data[o * plane..(o + 1) * plane];
                let b = c.bias.as_ref().map_or(0.0, |b| b[o]);
                let (s, t) = match &c.bn {
                    Some(bn) => {
                        let s = bn.gamma[o] / (bn.var[o] + bn.eps).sqrt();
                        (s, bn.beta[o] - bn.mean[o] * s)
                    }
                    None => (1.0, 0.0),
                };
                for x in v.iter_mut() {
                    *x = (*x + b) * s + t;
                }
                activate(c.act, v);
            }
        }
        ys
    }
    fn pool(x: &Fmap) -> Fmap {
        let plane = x.h * x.w;
        let data = (0..x.c)
            .map(|c| x.data[c * plane..(c + 1) * plane].iter().sum::<f32>() / plane as f32)
            .collect();
        Fmap {
            c: x.c,
            h: 1,
            w: 1,
            data,
        }
    }
    fn linear(l: &mut Linear, xs: &[Vec<f32>], mode: Mode) -> Vec<Vec<f32>> {
        let mat = |l: &Linear, x: &[f32]| -> Vec<f32> {
            (0..l.out_features)
                .map(|o| {
                    let row = &l.weight[o * l.in_features..(o + 1) * l.in_features];
                    row.iter().zip(x).map(|(w, v)| w * v).sum::<f32>()
                })
                .collect()
        };
        let mut ys: Vec<Vec<f32>> = xs.iter().map(|x| mat(l, x)).collect();
        if mode == Mode::Init {
            let m2 = ys.iter().map(|y| second_moment(y)).sum::<f64>() / ys.len() as f64;
            let f = (1.0 / m2.max(1e-12).sqrt()) as f32;
            l.weight.iter_mut().for_each(|w| *w *= f);
            ys = xs.iter().map(|x| mat(l, x)).collect();
        }
        for y in &mut ys {
            y.iter_mut().zip(&l.bias).for_each(|(v, b)| *v += b);
        }
        ys
    }

    let [_, c, h, w] = p.input_shape();
    let mut xs: Vec<Fmap> = inputs
        .iter()
        .map(|input| {
            assert_eq!(input.len(), c * h * w, "one image is C·H·W values");
            Fmap {
                c,
                h,
                w,
                data: input.clone(),
            }
        })
        .collect();
    let outer = mode;
    for (bi, block) in p.blocks.iter_mut().enumerate() {
        let mode = match outer {
            Mode::TaskStats(_, first) if bi < first => Mode::Eval,
            m => m,
        };
        let skip: Option<Vec<Vec<f32>>> = block
            .residual
            .then(|| xs.iter().map(|x| x.data.clone()).collect());
        for layer in &mut block.layers {
            xs = match layer {
                Layer::Conv(cv) => conv(cv, &xs, mode),
                Layer::SqueezeExcite(se) => {
                    let pooled: Vec<Fmap> = xs.iter().map(pool).collect();
                    let s = conv(&mut se.fc1, &pooled, mode);
                    let gates = conv(&mut se.fc2, &s, mode);
                    for (x, gate) in xs.iter_mut().zip(&gates) {
                        let plane = x.h * x.w;
                        for (ch, g) in gate.data.iter().enumerate() {
                            x.data[ch * plane..(ch + 1) * plane]
                                .iter_mut()
                                .for_each(|v| *v *= g);
                        }
                    }
                    xs
                }
            };
        }
        if let Some(skip) = skip {
            for (x, s) in xs.iter_mut().zip(&skip) {
                x.data.iter_mut().zip(s).for_each(|(v, s)| *v += s);
            }
        }
    }
    let mut vs: Vec<Vec<f32>> = xs.iter().map(|x| pool(x).data).collect();
    if let Some(hd) = &mut p.hidden {
        vs = linear(&mut hd.linear, &vs, mode);
        vs.iter_mut().for_each(|v| activate(hd.act, v));
    }
    linear(&mut p.classifier, &vs, mode)
}

/// The logits `params` computes for one image (`input`: `[C][H][W]`), in
/// plain f32 Rust: the function every [`to_onnx`] export of `params`
/// computes (except [`Relu6Style::Relu`]), independent of any ONNX runtime.
pub fn forward(params: &NetParams, input: &[f32]) -> Vec<f32> {
    run_float(&mut params.clone(), &[input.to_vec()], Mode::Eval).remove(0)
}

/// A batch of random images for data-dependent steps: enough values per
/// channel on the last (1×1 or 2×2) maps of a 32×32 net, two images at 96+.
fn calibration_batch(p: &NetParams, seed: u64) -> Vec<Vec<f32>> {
    let [_, c, h, w] = p.input_shape();
    let n = (16384 / (h * w).max(1)).clamp(2, 16) as u64;
    (0..n)
        .map(|i| random_inputs(1, c, h, w, seed ^ 0xca1b ^ (i << 32)))
        .collect()
}

/// Sets weight scales and batch-norm means from data ([`Mode::Init`]):
/// with batch-norm statistics that do not match the activations, nothing
/// else keeps a 50-layer net's activations in range.
fn calibrate(p: &mut NetParams, seed: u64) {
    let xs = calibration_batch(p, seed);
    run_float(p, &xs, Mode::Init);
}

// ---------------------------------------------------------------- tasks

/// What a simulated fine-tuning trains (the paper's patch kinds); every
/// kind ends with a new classifier of `classes` outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// Every batch norm's gamma, beta and statistics (S/B + logits).
    ScaleBias { classes: usize },
    /// Every depthwise kernel (DW + logits).
    Depthwise { classes: usize },
    /// Only the classifier.
    Logits { classes: usize },
    /// The batch norms of the last `blocks` blocks (S/B + logits on the
    /// tail, the rest of the network the base's: a task that shares a long
    /// prefix with the base).
    ScaleBiasTail { blocks: usize, classes: usize },
    /// A new head: a hidden fully connected layer of `hidden` units and a
    /// ReLU between the pooling and a new classifier (FC-ReLU-FC); the
    /// rest of the network the base's (a patch that brings its own head).
    HiddenHead { hidden: usize, classes: usize },
}

/// A task model derived from `base` as fine-tuning would leave it; all
/// parameters outside the patch are bit-identical to the base's.
///
/// - `ScaleBias`: every batch-norm channel gets a new gamma (×U(0.55, 1.4),
///   about 5 % with the sign flipped) and beta (+N(0, 0.1)); then, as after
///   real S/B training, the statistics are re-estimated on random inputs,
///   layer by layer: mean = measured channel mean + noise, var = the base's
///   var rescaled by the measured layer variance, ×U(0.7, 1.4). About 2 %
///   of channels get var exactly 0 and |gamma| ≈ sqrt(eps) (a channel that
///   is constant on the task's data; the fused scale gamma/sqrt(eps) stays
///   moderate). At least one negative gamma and one zero variance per net.
/// - `Depthwise`: every depthwise kernel gets elementwise noise of 30 % of
///   the layer's RMS, then its norm restored (per output channel): not a
///   per-channel factor, and activation ranges stay the base's. Batch norm
///   untouched.
/// - `Logits`: nothing else changes.
pub fn derive_task(base: &NetParams, kind: TaskKind, seed: u64) -> NetParams {
    let mut p = base.clone();
    let (kind, first) = match kind {
        TaskKind::ScaleBiasTail { blocks, classes } => (
            TaskKind::ScaleBias { classes },
            p.blocks.len().saturating_sub(blocks),
        ),
        k => (k, 0),
    };
    let classes = match kind {
        TaskKind::ScaleBias { classes } => {
            let xs = calibration_batch(&p, seed);
            run_float(&mut p, &xs, Mode::TaskStats(seed, first));
            let bns = p.batch_norms();
            let any_neg = bns.iter().any(|b| b.gamma.iter().any(|&g| g < 0.0));
            let any_zero = bns.iter().any(|b| b.var.contains(&0.0));
            let first_module = p.blocks.get(first).map(|b| b.module.clone());
            let mut convs = p.convs_mut();
            // (the first batch norm this task changes)
            let in_tail = |c: &&mut &mut ConvLayer| {
                first == 0
                    || first_module
                        .as_deref()
                        .is_some_and(|m| c.module == m || c.module.starts_with(&format!("{m}.")))
            };
            if let Some(bn) = convs.iter_mut().filter(in_tail).find_map(|c| c.bn.as_mut()) {
                if !any_neg {
                    bn.gamma[0] = -bn.gamma[0];
                }
                if !any_zero {
                    // Same fused scale, now from gamma / sqrt(eps).
                    let i = bn.channels() - 1;
                    bn.gamma[i] *= (bn.eps / (bn.var[i] + bn.eps)).sqrt();
                    bn.var[i] = 0.0;
                }
            }
            classes
        }
        TaskKind::Depthwise { classes } => {
            for c in p.convs_mut() {
                if c.is_depthwise() {
                    let mut r = Rng::for_name(seed, &format!("task.dw.{}", c.module));
                    let per = c.filter_len();
                    for k in c.weight.chunks_mut(per) {
                        // Turn each kernel (norm kept, so ranges stay).
                        let norm =
                            |k: &[f32]| k.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
                        let before = norm(k);
                        add_noise(k, 0.3, &mut r);
                        let f = before / norm(k).max(1e-30);
                        k.iter_mut().for_each(|v| *v = (f64::from(*v) * f) as f32);
                    }
                }
            }
            classes
        }
        TaskKind::Logits { classes } => classes,
        TaskKind::ScaleBiasTail { classes, .. } => classes,
        TaskKind::HiddenHead { hidden, classes } => {
            // He-scaled, so the hidden layer keeps the features' scale.
            // It reads the pooled features (replacing a hidden layer the
            // base may have).
            let fin = p
                .hidden
                .as_ref()
                .map_or(p.features(), |h| h.linear.in_features);
            let mut r = Rng::for_name(seed, "task.head.0");
            let std = (2.0 / fin as f64).sqrt();
            p.hidden = Some(Hidden {
                linear: Linear {
                    module: "head.0".into(),
                    in_features: fin,
                    out_features: hidden,
                    weight: r.normals(hidden * fin, std),
                    bias: r.normals(hidden, 0.05),
                },
                act: Activation::Relu,
                act_module: "head.1".into(),
            });
            // (the new classifier reads the hidden units)
            p.classifier.in_features = hidden;
            classes
        }
    };
    p.classifier = new_classifier(&p, classes, seed);
    p
}

/// Adds N(0, (rel · RMS(w))²) to every element.
fn add_noise(w: &mut [f32], rel: f64, r: &mut Rng) {
    let rms = (w.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / w.len() as f64).sqrt();
    for v in w {
        *v += r.normal(0.0, rel * rms.max(1e-3));
    }
}

fn new_classifier(p: &NetParams, classes: usize, seed: u64) -> Linear {
    let fin = p.features();
    let module = p.classifier.module.clone();
    let mut r = Rng::for_name(seed, &format!("task.{module}"));
    // Scale like the base's classifier, so logits stay comparable.
    let rms = (p
        .classifier
        .weight
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        / p.classifier.weight.len() as f64)
        .sqrt();
    Linear {
        module,
        in_features: fin,
        out_features: classes,
        weight: r.normals(classes * fin, rms),
        bias: r.normals(classes, 0.05),
    }
}

/// `params` with conv `layer_index` (an index into [`NetParams::convs`])
/// changed by elementwise noise (20 % of the layer's RMS): not a
/// per-channel factor, so no patch kind explains it. Everything else
/// (including its batch norm) is unchanged.
///
/// # Panics
/// If the index is out of range or names a depthwise conv.
pub fn perturb_pointwise(params: &NetParams, layer_index: usize, seed: u64) -> NetParams {
    let mut p = params.clone();
    let mut convs = p.convs_mut();
    let n = convs.len();
    let c = convs
        .get_mut(layer_index)
        .unwrap_or_else(|| panic!("conv index {layer_index} out of range (net has {n} convs)"));
    assert!(
        !c.is_depthwise(),
        "conv {layer_index} ({}) is depthwise; pick one of non_depthwise_conv_indices()",
        c.module
    );
    let mut r = Rng::for_name(seed, &format!("perturb.{}", c.module));
    add_noise(&mut c.weight, 0.2, &mut r);
    p
}

/// A structurally different net: `params` without its last residual block
/// (all other weights identical), later `features.N` renumbered the way
/// PyTorch renumbers a `Sequential` after `del features[i]`.
///
/// # Panics
/// If the net has no residual block.
pub fn drop_last_block(params: &NetParams) -> NetParams {
    let mut p = params.clone();
    let i = p
        .blocks
        .iter()
        .rposition(|b| b.residual)
        .expect("drop_last_block: the net has no residual block");
    p.blocks.remove(i);
    for (k, b) in p.blocks.iter_mut().enumerate().skip(i) {
        let (from, to) = (format!("features.{}", k + 1), format!("features.{k}"));
        b.for_each_name_mut(&mut |s: &mut String| {
            if s == &from || s.starts_with(&format!("{from}.")) {
                *s = format!("{to}{}", &s[from.len()..]);
            }
        });
    }
    p
}

// ---------------------------------------------------------------- export

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
struct Graph {
    style: ExportStyle,
    opset: i64,
    nodes: Vec<NodeProto>,
    weight_nodes: Vec<NodeProto>,
    named_inits: Vec<TensorProto>,
    anon_inits: Vec<TensorProto>,
    used: HashSet<String>,
    anon_next: usize,
}

impl Graph {
    fn new(style: ExportStyle, anon_start: usize) -> Self {
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
    fn node(
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
    fn param(&mut self, t: TensorProto, anonymous: bool) -> String {
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

    fn conv(&mut self, c: &ConvLayer, x: &str) -> String {
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
    fn linear(&mut self, l: &Linear, x: &str) -> String {
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
    fn flatten(&mut self, x: &str) -> String {
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
    fn rename_value(&mut self, from: &str, to: &str) {
        for n in &mut self.nodes {
            for v in n.input.iter_mut().chain(n.output.iter_mut()) {
                if v == from {
                    *v = to.to_string();
                }
            }
        }
    }

    fn into_model(self, input: (&str, &[usize]), output: (&str, &[usize])) -> ModelProto {
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

/// A small conv net (input `[1, 3, 16, 16]`, 4 classes) with an `Einsum`
/// node named `weird_node` in the middle: a 1×1 conv written as
/// `nchw,oc->nohw`, valid ONNX that tract runs but graftnet does not
/// support. Conv → Clip → Relu → Einsum → Relu → Conv (depthwise) → Clip
/// → GlobalAveragePool → Flatten → Gemm.
pub fn unsupported_op_model() -> Vec<u8> {
    let p = tiny_cnn(7);
    let stem = p.convs()[0].clone();
    let dw = p.convs()[1].clone();
    let mut g = Graph::new(ExportStyle::default(), 100);
    let x = g.conv(&stem, "input");
    let x = g.node("/features/features.0", "Relu", &[&x], vec![]);
    let mut r = Rng::for_name(7, "weird_node.weight");
    let w = r.normals(8 * 8, (2.0f64 / 8.0).sqrt());
    let w = g.param(f32_tensor("weird.weight", &[8, 8], &w), false);
    g.used.insert("weird_node".into());
    g.nodes.push(NodeProto {
        name: "weird_node".into(),
        op_type: "Einsum".into(),
        input: vec![x, w],
        output: vec!["weird_node_output_0".into()],
        attribute: vec![attr_string("equation", "nchw,oc->nohw")],
        ..Default::default()
    });
    let x = g.node(
        "/features/features.1",
        "Relu",
        &["weird_node_output_0"],
        vec![],
    );
    let x = g.conv(&dw, &x);
    let x = g.node("", "GlobalAveragePool", &[&x], vec![]);
    let x = g.flatten(&x);
    let mut r = Rng::for_name(7, "classifier.1");
    let head = Linear {
        module: "classifier.1".into(),
        in_features: 8,
        out_features: 4,
        weight: r.normals(32, 0.5),
        bias: r.normals(4, 0.05),
    };
    let x = g.linear(&head, &x);
    g.rename_value(&x, "logits");
    g.into_model(("input", &[1, 3, 16, 16]), ("logits", &[1, 4]))
        .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use tract_onnx::prelude::*;

    fn run(bytes: &[u8], input: &[f32], shape: [usize; 4]) -> Vec<f32> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .expect("tract loads the model");
        let x = tract_ndarray::Array4::from_shape_vec(shape, input.to_vec()).unwrap();
        let out = model
            .run(tvec!(Tensor::from(x).into()))
            .expect("tract runs the model");
        let y: Vec<f32> = out[0]
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect();
        assert!(y.iter().all(|v| v.is_finite()), "non-finite logits {y:?}");
        y
    }

    fn run_net(p: &NetParams, style: &ExportStyle, seed: u64) -> Vec<f32> {
        let [n, c, h, w] = p.input_shape();
        let y = run(
            &to_onnx(p, style),
            &random_inputs(n, c, h, w, seed),
            p.input_shape(),
        );
        assert_eq!(y.len(), p.classes());
        y
    }

    /// max |a − b| / max |b|.
    fn rel(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        d / b.iter().map(|v| v.abs()).fold(1e-6, f32::max)
    }

    fn spread(v: &[f32]) -> f32 {
        let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
        let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        hi - lo
    }

    fn decode(bytes: &[u8]) -> ModelProto {
        ModelProto::decode(bytes).unwrap()
    }

    fn op_counts(m: &ModelProto) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for n in &m.graph.as_ref().unwrap().node {
            *c.entry(n.op_type.clone()).or_insert(0) += 1;
        }
        c
    }

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    /// The shipped fixtures' architectures.
    fn mnv2_035(seed: u64) -> NetParams {
        mobilenet_v2(&MobileNetV2Config {
            width: 0.35,
            resolution: 32,
            in_channels: 1,
            classes: 10,
            first_stride: 1,
            seed,
        })
    }

    fn mnv3_05(seed: u64) -> NetParams {
        mobilenet_v3_small(&MobileNetV3Config {
            width: 0.5,
            resolution: 32,
            in_channels: 1,
            classes: 10,
            first_stride: 2,
            reduced_tail: true,
            seed,
        })
    }

    /// W_task[c] = k_c · W_base[c] for every output channel (relative
    /// residual below 1e-5)?
    fn is_channel_factor(base: &[f32], task: &[f32], out_channels: usize) -> bool {
        let per = base.len() / out_channels;
        (0..out_channels).all(|o| {
            let (b, t) = (&base[o * per..(o + 1) * per], &task[o * per..(o + 1) * per]);
            let bb: f64 = b.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
            let k = b
                .iter()
                .zip(t)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum::<f64>()
                / bb;
            let res: f64 = b
                .iter()
                .zip(t)
                .map(|(&x, &y)| (f64::from(y) - k * f64::from(x)).powi(2))
                .sum();
            let tt: f64 = t.iter().map(|&y| f64::from(y) * f64::from(y)).sum();
            res.sqrt() <= 1e-5 * tt.sqrt().max(1e-30)
        })
    }

    #[test]
    fn mnv2_1_0_224_matches_torchvision_counts_and_runs() {
        let p = mobilenet_v2(&MobileNetV2Config::default());
        assert_eq!(p.batch_norms().len(), 52);
        assert_eq!(p.bn_channels(), 17_056);
        assert_eq!(p.param_count(), 3_504_872); // torchvision mobilenet_v2()
        assert_eq!(p.depthwise_params(), 64_224);
        assert_eq!(p.convs().iter().filter(|c| c.is_depthwise()).count(), 17);
        assert_eq!(p.features(), 1280);
        let y = run_net(&p, &ExportStyle::default(), 1);
        assert!(spread(&y) > 1e-2, "logits nearly equal: {}", spread(&y));
        assert!(y.iter().all(|v| v.abs() < 1e3));
    }

    #[test]
    fn shipped_architectures_have_shipped_counts() {
        // models/README.md: mnv2 and mnv3 parameter tables.
        let p = mnv2_035(0);
        assert_eq!(p.param_count(), 408_650);
        assert_eq!(p.bn_channels(), 7_040);
        assert_eq!(p.depthwise_params(), 23_472);
        assert_eq!(p.classifier.weight.len() + p.classifier.bias.len(), 12_810);
        assert_eq!(p.convs().len(), 52);
        assert_eq!(p.blocks.iter().filter(|b| b.residual).count(), 10);

        let p = mnv3_05(0);
        assert_eq!(p.param_count(), 171_506);
        assert_eq!(p.bn_channels(), 2_280);
        assert_eq!(p.depthwise_params(), 22_264);
        assert_eq!(p.convs().len(), 52);
        assert_eq!(p.batch_norms().len(), 34);
        assert_eq!(p.convs().iter().filter(|c| c.is_depthwise()).count(), 11);
        let h = &p.hidden.as_ref().unwrap().linear;
        assert_eq!(h.weight.len() + h.bias.len(), 37_120);
        assert_eq!(p.classifier.weight.len() + p.classifier.bias.len(), 2_570);

        // torchvision mobilenet_v3_small() and mobilenet_v2(width_mult=0.5).
        let p = mobilenet_v3_small(&MobileNetV3Config::default());
        assert_eq!(p.param_count(), 2_542_856);
        let p = mobilenet_v2(&MobileNetV2Config {
            width: 0.5,
            ..Default::default()
        });
        assert_eq!(p.param_count(), 1_968_680);
    }

    fn norm_name(s: &str) -> String {
        if s.starts_with("onnx::") {
            s.trim_end_matches(|c: char| c.is_ascii_digit()).to_string()
        } else {
            s.to_string()
        }
    }

    /// Everything but weight values and `onnx::` numbers.
    fn structure(m: &ModelProto) -> Vec<String> {
        let g = m.graph.as_ref().unwrap();
        let mut out = vec![format!("ir {} opset {:?}", m.ir_version, m.opset_import)];
        out.push(format!("in {:?} out {:?}", g.input, g.output));
        for n in &g.node {
            let attrs: Vec<String> = n
                .attribute
                .iter()
                .map(|a| {
                    let t = a.t.as_ref().map(|t| (t.data_type, &t.dims, &t.raw_data));
                    format!(
                        "{} {} {} {} {:?} {:?}",
                        a.name, a.r#type, a.i, a.f, a.ints, t
                    )
                })
                .collect();
            out.push(format!(
                "{} {} {:?} {:?} {:?}",
                n.op_type,
                n.name,
                n.input.iter().map(|s| norm_name(s)).collect::<Vec<_>>(),
                n.output,
                attrs
            ));
        }
        for t in &g.initializer {
            out.push(format!(
                "init {} {:?} {}",
                norm_name(&t.name),
                t.dims,
                t.data_type
            ));
        }
        out
    }

    fn assert_same_structure(ours: &[u8], shipped: &str) {
        let path = format!("{}/../tests/models/{shipped}", env!("CARGO_MANIFEST_DIR"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (a, b) = (structure(&decode(ours)), structure(&decode(&bytes)));
        assert_eq!(a.len(), b.len(), "{shipped}: entry count");
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "{shipped}");
        }
    }

    #[test]
    fn default_exports_match_pytorch_exports_structurally() {
        let v2 = mnv2_035(3);
        assert_same_structure(
            &to_onnx(&v2, &ExportStyle::default()),
            "mnv2/base.folded.onnx",
        );
        assert_same_structure(
            &to_onnx(&v2, &ExportStyle::unfolded()),
            "mnv2/base.unfolded.onnx",
        );
        let v3 = mnv3_05(3);
        assert_same_structure(
            &to_onnx(&v3, &ExportStyle::default()),
            "mnv3/base.folded.onnx",
        );
    }

    #[test]
    fn export_metadata_and_names() {
        let p = mnv2_035(0);
        let m = decode(&to_onnx(&p, &ExportStyle::default()));
        assert_eq!((m.ir_version, m.opset_import[0].version), (7, 13));
        assert_eq!(m.producer_name, "pytorch");
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.input[0].name, "input");
        assert_eq!(g.output[0].name, "logits");
        assert_eq!(g.node[0].name, "/features/features.0/features.0.0/Conv");
        let names: HashSet<_> = g.node.iter().map(|n| &n.name).collect();
        assert_eq!(names.len(), g.node.len(), "node names unique");
        let mut produced = HashSet::new();
        for n in &g.node {
            for o in &n.output {
                assert!(produced.insert(o.clone()), "value {o} produced twice");
            }
        }
        let inits: HashSet<_> = g.initializer.iter().map(|t| &t.name).collect();
        assert_eq!(inits.len(), g.initializer.len());
        assert!(produced.contains("logits"));
        // Op counts of models/README.md.
        let folded = counts(&[
            ("Add", 10),
            ("Clip", 35),
            ("Constant", 70),
            ("Conv", 52),
            ("Flatten", 1),
            ("Gemm", 1),
            ("GlobalAveragePool", 1),
        ]);
        assert_eq!(op_counts(&m), folded);
        let mut unfolded = folded.clone();
        unfolded.insert("BatchNormalization".into(), 52);
        assert_eq!(
            op_counts(&decode(&to_onnx(&p, &ExportStyle::unfolded()))),
            unfolded
        );
        let m3 = decode(&to_onnx(&mnv3_05(0), &ExportStyle::default()));
        let want = counts(&[
            ("Add", 7),
            ("Conv", 52),
            ("Flatten", 1),
            ("Gemm", 2),
            ("GlobalAveragePool", 10),
            ("HardSigmoid", 28),
            ("Mul", 28),
            ("Relu", 14),
        ]);
        assert_eq!(op_counts(&m3), want);
    }

    #[test]
    fn exports_compute_the_float_forward() {
        for p in [mnv2_035(8), mnv3_05(8), tiny_cnn(8)] {
            let [n, c, h, w] = p.input_shape();
            let x = random_inputs(n, c, h, w, 3);
            let want = forward(&p, &x);
            for style in [ExportStyle::default(), ExportStyle::unfolded()] {
                let got = run(&to_onnx(&p, &style), &x, p.input_shape());
                assert!(
                    rel(&got, &want) < 1e-4,
                    "{:?} {style:?}: {}",
                    p.arch,
                    rel(&got, &want)
                );
            }
        }
    }

    #[test]
    fn deterministic() {
        let a = to_onnx(&mnv2_035(5), &ExportStyle::default());
        let b = to_onnx(&mnv2_035(5), &ExportStyle::default());
        assert_eq!(a, b);
        assert_ne!(a, to_onnx(&mnv2_035(6), &ExportStyle::default()));
        assert_eq!(random_inputs(1, 1, 4, 4, 9), random_inputs(1, 1, 4, 4, 9));
        let x = random_inputs(2, 3, 8, 8, 1);
        assert_eq!(x.len(), 384);
        assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert!(x.iter().any(|&v| v < -0.9) && x.iter().any(|&v| v > 0.9));
    }

    #[test]
    fn mnv2_styles_agree() {
        let p = mnv2_035(11);
        let base = run_net(&p, &ExportStyle::default(), 2);
        assert!(spread(&base) > 1e-2, "{base:?}");
        // Input dependence: another input gives other logits.
        let other = run_net(&p, &ExportStyle::default(), 3);
        assert!(rel(&other, &base) > 1e-2, "{base:?} vs {other:?}");

        let unfolded = run_net(&p, &ExportStyle::unfolded(), 2);
        assert!(
            rel(&unfolded, &base) < 1e-3,
            "unfolded {}",
            rel(&unfolded, &base)
        );
        let d = ExportStyle::default();
        let variants = [
            ExportStyle {
                weights_in_constants: true,
                ..d
            },
            ExportStyle {
                relu6_as: Relu6Style::ClipAttributes,
                ..d
            },
            ExportStyle {
                head: HeadStyle::ReshapeMatMulAdd,
                ..d
            },
            ExportStyle {
                hardswish_as: HardSwishStyle::PaddleChain,
                ..d
            },
        ];
        for s in variants {
            let y = run_net(&p, &s, 2);
            assert!(rel(&y, &base) < 1e-4, "{s:?}: {}", rel(&y, &base));
        }
        let all = ExportStyle {
            folded: false,
            weights_in_constants: true,
            relu6_as: Relu6Style::ClipAttributes,
            head: HeadStyle::ReshapeMatMulAdd,
            hardswish_as: HardSwishStyle::PaddleChain,
        };
        let m = decode(&to_onnx(&p, &all));
        assert_eq!(m.opset_import[0].version, 10);
        assert!(m.graph.as_ref().unwrap().initializer.is_empty());
        let y = run_net(&p, &all, 2);
        assert!(rel(&y, &base) < 1e-3, "all {}", rel(&y, &base));
        // ReLU instead of ReLU6 is another function; it must still run.
        let relu = ExportStyle {
            relu6_as: Relu6Style::Relu,
            ..d
        };
        assert!(!op_counts(&decode(&to_onnx(&p, &relu))).contains_key("Clip"));
        run_net(&p, &relu, 2);
    }

    #[test]
    fn mnv3_styles_agree() {
        let p = mnv3_05(12);
        let base = run_net(&p, &ExportStyle::default(), 4);
        assert!(spread(&base) > 1e-2, "{base:?}");
        let other = run_net(&p, &ExportStyle::default(), 5);
        assert!(rel(&other, &base) > 1e-2, "{base:?} vs {other:?}");
        let unfolded = run_net(&p, &ExportStyle::unfolded(), 4);
        assert!(
            rel(&unfolded, &base) < 1e-3,
            "unfolded {}",
            rel(&unfolded, &base)
        );
        let d = ExportStyle::default();
        let hswish = ExportStyle {
            hardswish_as: HardSwishStyle::HardSwishOp,
            ..d
        };
        let m = decode(&to_onnx(&p, &hswish));
        assert_eq!((m.ir_version, m.opset_import[0].version), (8, 14));
        assert_eq!(op_counts(&m)["HardSwish"], 19); // 16 in blocks, stem, last conv, classifier
        let variants = [
            hswish,
            ExportStyle {
                hardswish_as: HardSwishStyle::PaddleChain,
                ..d
            },
            ExportStyle {
                hardswish_as: HardSwishStyle::PaddleChain,
                relu6_as: Relu6Style::ClipAttributes,
                ..d
            },
            ExportStyle {
                head: HeadStyle::ReshapeMatMulAdd,
                ..d
            },
            ExportStyle {
                weights_in_constants: true,
                ..d
            },
        ];
        for s in variants {
            let y = run_net(&p, &s, 4);
            assert!(rel(&y, &base) < 1e-4, "{s:?}: {}", rel(&y, &base));
        }
        let all = ExportStyle {
            folded: false,
            weights_in_constants: true,
            relu6_as: Relu6Style::ClipConstInputs,
            head: HeadStyle::ReshapeMatMulAdd,
            hardswish_as: HardSwishStyle::HardSwishOp,
        };
        let y = run_net(&p, &all, 4);
        assert!(rel(&y, &base) < 1e-3, "all {}", rel(&y, &base));
    }

    #[test]
    #[should_panic(expected = "opset 14")]
    fn hardswish_op_at_opset_10_is_refused() {
        let s = ExportStyle {
            relu6_as: Relu6Style::ClipAttributes,
            hardswish_as: HardSwishStyle::HardSwishOp,
            ..Default::default()
        };
        to_onnx(&mnv3_05(0), &s);
    }

    /// Checks the patch invariants of `task` against `base` and runs it.
    fn check_task(base: &NetParams, kind: TaskKind) {
        let task = derive_task(base, kind, 77);
        let (bc, tc) = (base.convs(), task.convs());
        assert_eq!(bc.len(), tc.len());
        let classes = match kind {
            TaskKind::ScaleBias { classes }
            | TaskKind::Depthwise { classes }
            | TaskKind::Logits { classes }
            | TaskKind::ScaleBiasTail { classes, .. }
            | TaskKind::HiddenHead { classes, .. } => classes,
        };
        // Batch norms the task changes.
        let tail: Vec<&str> = match kind {
            TaskKind::ScaleBiasTail { blocks, .. } => base.blocks[base.blocks.len() - blocks..]
                .iter()
                .map(|b| b.module.as_str())
                .collect(),
            _ => vec![],
        };
        let sb_changes = |module: &str| match kind {
            TaskKind::ScaleBias { .. } => true,
            TaskKind::ScaleBiasTail { .. } => {
                tail.iter().any(|m| module.starts_with(&format!("{m}.")))
            }
            _ => false,
        };
        assert_eq!(task.classes(), classes);
        assert_ne!(task.classifier.weight, base.classifier.weight);
        assert_eq!(task.hidden, base.hidden);
        for (b, t) in bc.iter().zip(&tc) {
            let dw_changed = matches!(kind, TaskKind::Depthwise { .. }) && b.is_depthwise();
            if dw_changed {
                assert!(
                    b.weight.iter().zip(&t.weight).all(|(x, y)| x != y),
                    "{}",
                    t.module
                );
                assert!(!is_channel_factor(&b.weight, &t.weight, b.out_channels));
            } else {
                assert_eq!(b.weight, t.weight, "{}", t.module);
            }
            assert_eq!(b.bias, t.bias);
            match (sb_changes(&b.module), &b.bn, &t.bn) {
                (true, Some(x), Some(y)) => {
                    for i in 0..x.channels() {
                        assert_ne!(x.gamma[i], y.gamma[i]);
                        assert_ne!(x.beta[i], y.beta[i]);
                        assert_ne!(x.mean[i], y.mean[i]);
                        assert_ne!(x.var[i], y.var[i]);
                    }
                    // DESIGN.md: folded S/B weights differ by a per-channel factor.
                    let (fb, ft) = (b.folded().0, t.folded().0);
                    assert!(is_channel_factor(&fb, &ft, b.out_channels), "{}", t.module);
                    assert_ne!(b.folded().1, t.folded().1);
                }
                _ => assert_eq!(b.bn, t.bn),
            }
        }
        if let TaskKind::ScaleBias { .. } | TaskKind::ScaleBiasTail { .. } = kind {
            let bns = task.batch_norms();
            assert!(bns.iter().any(|b| b.gamma.iter().any(|&g| g < 0.0)));
            assert!(bns.iter().any(|b| b.var.contains(&0.0)));
        }
        let folded = run_net(&task, &ExportStyle::default(), 6);
        let unfolded = run_net(&task, &ExportStyle::unfolded(), 6);
        assert!(
            rel(&unfolded, &folded) < 1e-3,
            "{kind:?}: {}",
            rel(&unfolded, &folded)
        );
        assert!(spread(&folded) > 1e-2, "{kind:?}: {folded:?}");
    }

    #[test]
    fn task_kinds_mnv2() {
        let base = mnv2_035(21);
        check_task(&base, TaskKind::ScaleBias { classes: 10 });
        check_task(&base, TaskKind::Depthwise { classes: 10 });
        check_task(&base, TaskKind::Logits { classes: 2 });
        check_task(
            &base,
            TaskKind::ScaleBiasTail {
                blocks: 2,
                classes: 10,
            },
        );
        let sb = derive_task(&base, TaskKind::ScaleBias { classes: 10 }, 77);
        let bns = sb.batch_norms();
        let neg: usize = bns
            .iter()
            .map(|b| b.gamma.iter().filter(|&&g| g < 0.0).count())
            .sum();
        let zero: usize = bns
            .iter()
            .map(|b| b.var.iter().filter(|&&v| v == 0.0).count())
            .sum();
        // About 5 % and 2 % of 7,040 channels.
        assert!((200..500).contains(&neg), "{neg}");
        assert!((70..220).contains(&zero), "{zero}");
    }

    #[test]
    fn task_kinds_mnv3() {
        let base = mnv3_05(22);
        check_task(&base, TaskKind::ScaleBias { classes: 10 });
        check_task(&base, TaskKind::Depthwise { classes: 7 });
        check_task(&base, TaskKind::Logits { classes: 10 });
    }

    #[test]
    fn task_kinds_tiny() {
        let base = tiny_cnn(1);
        check_task(&base, TaskKind::ScaleBias { classes: 5 });
        check_task(&base, TaskKind::Depthwise { classes: 3 });
        check_task(&base, TaskKind::Logits { classes: 5 });
    }

    #[test]
    fn perturb_pointwise_is_not_a_patch() {
        let base = mnv2_035(31);
        let idx = base.non_depthwise_conv_indices();
        assert_eq!(idx.len(), 35);
        let i = idx[20];
        let t = perturb_pointwise(&base, i, 5);
        for (k, (b, c)) in base.convs().iter().zip(t.convs()).enumerate() {
            if k == i {
                assert_ne!(b.weight, c.weight);
                assert!(!is_channel_factor(&b.weight, &c.weight, b.out_channels));
                assert!(!is_channel_factor(
                    &b.folded().0,
                    &c.folded().0,
                    b.out_channels
                ));
                assert_eq!(b.bn, c.bn);
            } else {
                assert_eq!(*b, c);
            }
        }
        assert_eq!(t.classifier, base.classifier);
        let y = run_net(&t, &ExportStyle::default(), 1);
        assert!(rel(&y, &run_net(&base, &ExportStyle::default(), 1)) > 1e-4);
    }

    #[test]
    #[should_panic(expected = "depthwise")]
    fn perturb_pointwise_refuses_depthwise() {
        let base = tiny_cnn(0);
        perturb_pointwise(&base, 1, 0);
    }

    #[test]
    fn drop_last_block_changes_structure() {
        let base = mnv2_035(41);
        let d = drop_last_block(&base);
        assert_eq!(d.blocks.len(), base.blocks.len() - 1);
        assert_eq!(d.convs().len(), 49);
        // features.16 (160 -> 160, residual) removed; 17 and 18 renumbered.
        assert_eq!(d.blocks[16].module, "features.16");
        let c = d.convs();
        assert_eq!(c.last().unwrap().module, "features.17.0");
        assert_eq!(
            c.last().unwrap().bn.as_ref().unwrap().module,
            "features.17.1"
        );
        assert_eq!(c.last().unwrap().act_module, "features.17.2");
        assert_eq!(
            c.last().unwrap().weight,
            base.convs().last().unwrap().weight
        );
        let m = decode(&to_onnx(&d, &ExportStyle::default()));
        let g = m.graph.unwrap();
        assert!(g
            .node
            .iter()
            .any(|n| n.name == "/features/features.17/features.17.0/Conv"));
        assert!(!g
            .node
            .iter()
            .any(|n| n.name.starts_with("/features/features.18")));
        run_net(&d, &ExportStyle::default(), 1);
        run_net(&d, &ExportStyle::unfolded(), 1);
        let d3 = drop_last_block(&mnv3_05(0));
        assert_eq!(d3.blocks.len(), 12);
        run_net(&d3, &ExportStyle::default(), 1);
    }

    #[test]
    fn tiny_cnn_shape() {
        let p = tiny_cnn(3);
        assert_eq!(p.input_shape(), [1, 3, 16, 16]);
        assert_eq!(p.convs().len(), 7);
        assert_eq!(p.convs().iter().filter(|c| c.is_depthwise()).count(), 2);
        let y = run_net(&p, &ExportStyle::default(), 1);
        assert_eq!(y.len(), 5);
        assert!(spread(&y) > 1e-2);
        let u = run_net(&p, &ExportStyle::unfolded(), 1);
        assert!(rel(&u, &y) < 1e-3);
    }

    #[test]
    fn unsupported_op_model_has_weird_einsum() {
        let bytes = unsupported_op_model();
        let m = decode(&bytes);
        let g = m.graph.as_ref().unwrap();
        let n = g.node.iter().find(|n| n.name == "weird_node").unwrap();
        assert_eq!(n.op_type, "Einsum");
        assert!(g.node.iter().position(|n| n.name == "weird_node").unwrap() > 1);
        assert!(g.node.iter().rposition(|n| n.op_type == "Conv").unwrap() > 3);
        let y = run(&bytes, &random_inputs(1, 3, 16, 16, 0), [1, 3, 16, 16]);
        assert_eq!(y.len(), 4);
    }
}
