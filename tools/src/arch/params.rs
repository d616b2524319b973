//! The parameter-level description of a network: [`NetParams`], blocks and
//! layers as torchvision groups them, with torchvision's module names.

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
    pub fn for_each_name_mut(&mut self, f: &mut impl FnMut(&mut String)) {
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
    pub(super) fn state_dict_len(&self) -> usize {
        let convs: usize = self
            .convs()
            .iter()
            .map(|c| 1 + c.bias.is_some() as usize + 5 * c.bn.is_some() as usize)
            .sum();
        convs + 2 + 2 * self.hidden.is_some() as usize
    }
}
