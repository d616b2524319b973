//! The architectures ([`mobilenet_v2`], [`mobilenet_v3_small`]) with random
//! weights scaled like a trained net ([`Init`], then [`calibrate`]).

use crate::rng::Rng;

use super::float::calibrate;
use super::params::*;

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
pub struct Init {
    seed: u64,
    eps: f32,
    momentum: f32,
}

impl Init {
    pub fn new(seed: u64, eps: f32, momentum: f32) -> Self {
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
    pub fn conv(
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
    pub fn conv_bn_act(
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

    pub fn linear(&mut self, module: &str, fin: usize, fout: usize) -> Linear {
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
