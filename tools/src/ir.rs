//! Float graph IR: what the importer produces from an ONNX file and what the
//! quantizer consumes.
//!
//! Contract:
//! - Batch is 1. Every activation tensor is `(c, h, w)`; a flat vector of `n`
//!   values is `(n, 1, 1)`. Float data is stored in ONNX order (CHW).
//! - `nodes` are topologically sorted; every tensor except the graph input is
//!   produced by exactly one node.
//! - Weights live inside the nodes (already folded: BatchNormalization is
//!   merged into the Conv before it, or kept as a per-channel affine
//!   [`Op::ChannelAffine`] when no Conv precedes it).
//! - A fully-connected layer is a [`Conv`] whose kernel covers the whole
//!   input map (`kh == h`, `kw == w`, no padding): the ONNX `Flatten` + `Gemm`
//!   pair maps onto it without reordering weights, because ONNX flattens
//!   `(c, h, w)` in exactly OIHW order.
//! - Activations that follow a Conv are fused into it as [`Act`]; anything
//!   elementwise and unary that stands alone is an [`Op::Unary`].

use std::fmt;

/// Activation tensor shape, batch 1: channels, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Shape {
    pub fn new(c: usize, h: usize, w: usize) -> Self {
        Shape { c, h, w }
    }
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.c, self.h, self.w)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// ONNX value name (of the last node folded into the producer).
    pub name: String,
    pub shape: Shape,
}

/// Clamp fused into a Conv (or standing alone as a unary).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    None,
    Relu,
    /// `Clip(lo, hi)`; ReLU6 is `Clip(0, 6)`.
    Clip(f32, f32),
}

impl Act {
    pub fn apply(&self, x: f32) -> f32 {
        match *self {
            Act::None => x,
            Act::Relu => x.max(0.0),
            Act::Clip(lo, hi) => x.max(lo).min(hi),
        }
    }
}

/// Elementwise unary functions, realised as 256-entry lookup tables at int8.
#[derive(Clone, Debug, PartialEq)]
pub enum Unary {
    Relu,
    Clip(f32, f32),
    /// `max(0, min(1, alpha * x + beta))`
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    /// `x * HardSigmoid(x)` (ONNX HardSwish is alpha = 1/6, beta = 0.5)
    HardSwish {
        alpha: f32,
        beta: f32,
    },
    Sigmoid,
    /// `x * sigmoid(x)`
    Swish,
    Tanh,
    LeakyRelu {
        alpha: f32,
    },
    /// Any composition of elementwise ops over one tensor and scalar constants
    /// (e.g. Paddle's HardSwish `x * clip(x + 3, 0, 6) / 6`).
    Expr(Expr),
}

/// Elementwise expression over one input `x` and scalar constants.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    X,
    Const(f32),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Max(Box<Expr>, Box<Expr>),
    Min(Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Exp(Box<Expr>),
    Tanh(Box<Expr>),
    Sigmoid(Box<Expr>),
}

impl Expr {
    pub fn eval(&self, x: f32) -> f32 {
        match self {
            Expr::X => x,
            Expr::Const(c) => *c,
            Expr::Add(a, b) => a.eval(x) + b.eval(x),
            Expr::Sub(a, b) => a.eval(x) - b.eval(x),
            Expr::Mul(a, b) => a.eval(x) * b.eval(x),
            Expr::Div(a, b) => a.eval(x) / b.eval(x),
            Expr::Max(a, b) => a.eval(x).max(b.eval(x)),
            Expr::Min(a, b) => a.eval(x).min(b.eval(x)),
            Expr::Neg(a) => -a.eval(x),
            Expr::Exp(a) => a.eval(x).exp(),
            Expr::Tanh(a) => a.eval(x).tanh(),
            Expr::Sigmoid(a) => 1.0 / (1.0 + (-a.eval(x)).exp()),
        }
    }
}

impl Unary {
    // `max` then `min`, not `clamp`: `clamp` panics when the bounds cross
    // (an ONNX Clip may say so) and passes NaN through where these give a
    // bound; the float references are defined this way.
    #[allow(clippy::manual_clamp)]
    pub fn apply(&self, x: f32) -> f32 {
        match self {
            Unary::Relu => x.max(0.0),
            Unary::Clip(lo, hi) => x.max(*lo).min(*hi),
            Unary::HardSigmoid { alpha, beta } => (*alpha * x + *beta).max(0.0).min(1.0),
            Unary::HardSwish { alpha, beta } => x * (*alpha * x + *beta).max(0.0).min(1.0),
            Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Unary::Swish => x / (1.0 + (-x).exp()),
            Unary::Tanh => x.tanh(),
            Unary::LeakyRelu { alpha } => {
                if x >= 0.0 {
                    x
                } else {
                    *alpha * x
                }
            }
            Unary::Expr(e) => e.eval(x),
        }
    }
}

/// Convolution (any kernel, stride, padding, groups) or fully connected.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv {
    pub cout: usize,
    /// Input channels of the whole layer (not per group).
    pub cin: usize,
    pub kh: usize,
    pub kw: usize,
    /// (stride_h, stride_w)
    pub stride: (usize, usize),
    /// top, left, bottom, right
    pub pads: [usize; 4],
    /// (dilation_h, dilation_w); only (1, 1) is supported by the runtime.
    pub dilation: (usize, usize),
    pub groups: usize,
    /// `[cout][cin / groups][kh][kw]` (ONNX OIHW)
    pub weight: Vec<f32>,
    /// `[cout]` (zeros when the model has none)
    pub bias: Vec<f32>,
    pub act: Act,
}

impl Conv {
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.cin && self.cout == self.cin
    }
    /// Weights of one output channel.
    pub fn row_len(&self) -> usize {
        (self.cin / self.groups) * self.kh * self.kw
    }
}

/// kxk pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    /// top, left, bottom, right
    pub pads: [usize; 4],
    /// AveragePool only: padded cells count in the divisor.
    pub count_include_pad: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Conv(Conv),
    /// Per-channel `y = x * scale[c] + bias[c]`, then `act` (a BatchNormalization
    /// not preceded by a Conv).
    ChannelAffine {
        scale: Vec<f32>,
        bias: Vec<f32>,
        act: Act,
    },
    /// `a + b`, same shape.
    Add,
    /// `a * b`: same shape, or `b` is `(c, 1, 1)` broadcast over `a`
    /// (squeeze-and-excitation gate).
    Mul,
    Unary(Unary),
    GlobalAvgPool,
    AvgPool(Pool),
    MaxPool(Pool),
    /// Along channels.
    Concat,
    /// Same element count, same memory order (e.g. `(c,1,1)` <-> `(c,1,1)`).
    Reshape,
}

impl Op {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv(c) if c.is_depthwise() => "DepthwiseConv",
            Op::Conv(_) => "Conv",
            Op::ChannelAffine { .. } => "ChannelAffine",
            Op::Add => "Add",
            Op::Mul => "Mul",
            Op::Unary(_) => "Unary",
            Op::GlobalAvgPool => "GlobalAvgPool",
            Op::AvgPool(_) => "AvgPool",
            Op::MaxPool(_) => "MaxPool",
            Op::Concat => "Concat",
            Op::Reshape => "Reshape",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// ONNX node name (or `op_type#index` when the export left it empty).
    pub name: String,
    pub op: Op,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// A whole float model, batch 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub tensors: Vec<TensorInfo>,
    pub nodes: Vec<Node>,
    pub input: usize,
    pub output: usize,
    /// The ONNX graph ended in Softmax over the classes; the runtime applies it
    /// to dequantized scores (it does not change the top-1).
    pub output_softmax: bool,
}

impl Graph {
    pub fn shape(&self, t: usize) -> Shape {
        self.tensors[t].shape
    }
}
