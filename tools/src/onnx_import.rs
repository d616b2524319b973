//! ONNX -> float graph IR ([`crate::ir`]).
//!
//! The protobuf is decoded with `tract_onnx::pb` (tract is only the decoder
//! here); everything else — constant folding, shape inference, fusion — is
//! done by this module, so the IR reflects exactly what the file says.
//!
//! Pipeline:
//! 1. Decode; collect initializers and `Constant` nodes as constant tensors;
//!    find the one real input (batch forced to 1, dynamic C/H/W taken from
//!    [`ImportOptions::input_shape`], an NHWC input read through
//!    `Transpose(perm=[0,3,1,2])` is taken as the transposed CHW tensor).
//! 2. Walk the nodes needed for the first graph output in topological order.
//!    A node whose inputs are all constant is evaluated (general constant
//!    folding, incl. `Shape` of an activation since shapes are static). Other
//!    nodes are lowered to a small working graph with static shapes.
//! 3. Fusions, in this order: `Pad` into the following `Conv` (at lowering);
//!    `BatchNormalization` and per-channel / scalar `Add`/`Sub`/`Mul`/`Div`
//!    into the preceding Conv (or ChannelAffine) when it is that tensor's sole
//!    consumer, else a standalone [`Op::ChannelAffine`]; `Relu`/`Clip` into
//!    the preceding Conv / ChannelAffine as [`Act`]; chains and DAGs of
//!    elementwise ops over a single activation and scalar constants into one
//!    [`Op::Unary`]; `Flatten`/`Reshape` + `Gemm`/`MatMul` (+ bias `Add`)
//!    into a fully-connected [`Conv`] reading the pre-flatten tensor; a final
//!    `Softmax` becomes [`Graph::output_softmax`].
//! 4. Dead-code elimination from the output and emission of the IR.
//!
//! Choices worth knowing:
//! - Clamps compose: `Relu`, `Clip`, and `Max`/`Min` with a scalar directly
//!   after a Conv/ChannelAffine (sole consumer) merge into one [`Act`]
//!   (TF's `Min(Relu(x), 6)` is `Act::Clip(0, 6)`); `Clip(0, +inf)` becomes
//!   [`Act::Relu`] (identical function, no infinite bound for the quantizer).
//! - `LogSoftmax` at the end also sets `output_softmax` (same top-1).
//! - Only the first graph output is kept; nodes it does not depend on are
//!   never looked at.
//! - Dilation != 1 is rejected (the runtime has no dilated kernels).
//! - BN folding uses exactly `s = g / sqrt(var + eps)`, `W' = W * s`,
//!   `b' = (b - mean) * s + beta` in f32, so folded and unfolded exports of
//!   the same model produce comparable weights.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::rc::Rc;

use prost::Message;
use tract_onnx::pb;

use crate::ir::{Act, Conv, Expr, Graph, Node, Op, Pool, Shape, TensorInfo, Unary};

/// Import options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// `(c, h, w)` of the input; required when the model declares dynamic
    /// channel/height/width dims, and overrides the declared shape otherwise.
    pub input_shape: Option<(usize, usize, usize)>,
}

/// Why an ONNX model could not be imported.
#[derive(Clone, Debug, PartialEq)]
pub enum ImportError {
    /// The file could not be read.
    Io(String),
    /// The bytes are not an ONNX protobuf.
    Decode(String),
    /// An operator with no equivalent in the IR.
    UnsupportedOp {
        node: String,
        op_type: String,
        why: String,
    },
    /// The input has dynamic dims and no `input_shape` was given.
    DynamicShape { input: String },
    /// A supported operator used with unsupported attributes or operands.
    Unsupported { node: String, why: String },
    /// The model is inconsistent (undefined values, wrong shapes, ...).
    Malformed(String),
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImportError::Io(m) => write!(f, "cannot read ONNX file: {m}"),
            ImportError::Decode(m) => write!(f, "cannot decode ONNX protobuf: {m}"),
            ImportError::UnsupportedOp { node, op_type, why } => {
                write!(f, "node '{node}' (op {op_type}) is not supported: {why}")
            }
            ImportError::DynamicShape { input } => write!(
                f,
                "input '{input}' has a dynamic shape; give its shape with --input-shape C,H,W"
            ),
            ImportError::Unsupported { node, why } => {
                write!(f, "node '{node}': unsupported: {why}")
            }
            ImportError::Malformed(m) => write!(f, "malformed ONNX model: {m}"),
        }
    }
}

impl std::error::Error for ImportError {}

type Res<T> = Result<T, ImportError>;

/// Import an ONNX file.
pub fn import_onnx_file(path: impl AsRef<Path>, opts: &ImportOptions) -> Res<Graph> {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).map_err(|e| ImportError::Io(format!("{}: {e}", path.display())))?;
    import_onnx(&bytes, opts)
}

/// Import an ONNX model from its serialized bytes.
pub fn import_onnx(bytes: &[u8], opts: &ImportOptions) -> Res<Graph> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| ImportError::Decode(e.to_string()))?;
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ImportError::Malformed("model has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(if model.opset_import.is_empty() { 1 } else { 21 });
    Builder::new(opset).import(graph, opts)
}

// ---------------------------------------------------------------------------
// Constant tensors
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    dims: Vec<usize>,
    data: Data,
}

fn numel(d: &[usize]) -> usize {
    d.iter().product()
}

fn strides(d: &[usize]) -> Vec<usize> {
    let mut s = vec![1; d.len()];
    for i in (0..d.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * d[i + 1];
    }
    s
}

impl Tensor {
    fn f(dims: Vec<usize>, v: Vec<f32>) -> Tensor {
        Tensor {
            dims,
            data: Data::F(v),
        }
    }
    fn i(dims: Vec<usize>, v: Vec<i64>) -> Tensor {
        Tensor {
            dims,
            data: Data::I(v),
        }
    }
    fn len(&self) -> usize {
        match &self.data {
            Data::F(v) => v.len(),
            Data::I(v) => v.len(),
        }
    }
    fn is_float(&self) -> bool {
        matches!(self.data, Data::F(_))
    }
    fn f32s(&self) -> Vec<f32> {
        match &self.data {
            Data::F(v) => v.clone(),
            Data::I(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
    fn i64s(&self) -> Vec<i64> {
        match &self.data {
            Data::F(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I(v) => v.clone(),
        }
    }
    fn scalar_f32(&self) -> Option<f32> {
        if self.len() == 1 {
            Some(self.f32s()[0])
        } else {
            None
        }
    }
    /// Same data, new dims (same element count).
    fn reshaped(&self, dims: Vec<usize>) -> Tensor {
        Tensor {
            dims,
            data: self.data.clone(),
        }
    }
    /// Gather elements by flat index.
    fn gather_flat(&self, dims: Vec<usize>, idx: &[usize]) -> Tensor {
        match &self.data {
            Data::F(v) => Tensor::f(dims, idx.iter().map(|&i| v[i]).collect()),
            Data::I(v) => Tensor::i(dims, idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) & 1) as u32;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = if exp == 0 {
        if man == 0 {
            sign << 31
        } else {
            // subnormal: value = man * 2^-24
            let v = man as f32 * (1.0 / 16_777_216.0);
            return if sign == 1 { -v } else { v };
        }
    } else if exp == 31 {
        (sign << 31) | 0x7f80_0000 | (man << 13)
    } else {
        (sign << 31) | ((exp + 112) << 23) | (man << 13)
    };
    f32::from_bits(bits)
}

fn tensor_from_proto(t: &pb::TensorProto) -> Result<Tensor, String> {
    if t.data_location == Some(1) || !t.external_data.is_empty() {
        return Err(format!(
            "tensor '{}' uses external data, which is not supported",
            t.name
        ));
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("tensor '{}' has negative dim {d}", t.name));
        }
        dims.push(d as usize);
    }
    let n = numel(&dims);
    let raw = &t.raw_data;
    let chunks = |w: usize| -> Result<std::slice::ChunksExact<'_, u8>, String> {
        if raw.len() != n * w {
            return Err(format!(
                "tensor '{}': raw_data has {} bytes, expected {}",
                t.name,
                raw.len(),
                n * w
            ));
        }
        Ok(raw.chunks_exact(w))
    };
    let ints32 =
        |f: &dyn Fn(i32) -> i64| -> Vec<i64> { t.int32_data.iter().map(|&v| f(v)).collect() };
    let out = match t.data_type {
        1 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(4)?
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            } else {
                t.float_data.clone()
            },
        ),
        10 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                    .collect()
            } else {
                t.int32_data.iter().map(|&v| f16_to_f32(v as u16)).collect()
            },
        ),
        16 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
                    .collect()
            } else {
                t.int32_data
                    .iter()
                    .map(|&v| f32::from_bits((v as u32 & 0xffff) << 16))
                    .collect()
            },
        ),
        11 => Tensor::f(
            dims,
            if !raw.is_empty() {
                chunks(8)?
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect()
            } else {
                t.double_data.iter().map(|&v| v as f32).collect()
            },
        ),
        7 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(8)?
                    .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect()
            } else {
                t.int64_data.clone()
            },
        ),
        6 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(4)?
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect()
            } else {
                ints32(&|v| v as i64)
            },
        ),
        5 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect()
            } else {
                ints32(&|v| v as i16 as i64)
            },
        ),
        4 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(2)?
                    .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                    .collect()
            } else {
                ints32(&|v| v as u16 as i64)
            },
        ),
        3 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(1)?.map(|c| c[0] as i8 as i64).collect()
            } else {
                ints32(&|v| v as i8 as i64)
            },
        ),
        2 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(1)?.map(|c| c[0] as i64).collect()
            } else {
                ints32(&|v| v as u8 as i64)
            },
        ),
        9 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(1)?.map(|c| (c[0] != 0) as i64).collect()
            } else {
                ints32(&|v| (v != 0) as i64)
            },
        ),
        12 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(4)?
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                    .collect()
            } else {
                t.uint64_data.iter().map(|&v| v as i64).collect()
            },
        ),
        13 => Tensor::i(
            dims,
            if !raw.is_empty() {
                chunks(8)?
                    .map(|c| {
                        u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as i64
                    })
                    .collect()
            } else {
                t.uint64_data.iter().map(|&v| v as i64).collect()
            },
        ),
        dt => {
            let name = pb::tensor_proto::DataType::try_from(dt)
                .map(|d| d.as_str_name())
                .unwrap_or("unknown");
            return Err(format!(
                "tensor '{}' has unsupported data type {name} ({dt})",
                t.name
            ));
        }
    };
    if out.len() != n {
        return Err(format!(
            "tensor '{}' has {} values for dims {:?}",
            t.name,
            out.len(),
            out.dims
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------

struct Attrs<'a>(&'a [pb::AttributeProto]);

impl<'a> Attrs<'a> {
    fn get(&self, name: &str) -> Option<&'a pb::AttributeProto> {
        self.0.iter().find(|a| a.name == name)
    }
    fn int(&self, name: &str) -> Option<i64> {
        self.get(name).map(|a| a.i)
    }
    fn float(&self, name: &str) -> Option<f32> {
        self.get(name).map(|a| a.f)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn floats(&self, name: &str) -> Option<Vec<f32>> {
        self.get(name).map(|a| a.floats.clone())
    }
    fn string(&self, name: &str) -> Option<String> {
        self.get(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    fn tensor(&self, name: &str) -> Option<&'a pb::TensorProto> {
        self.get(name).and_then(|a| a.t.as_ref())
    }
}

// ---------------------------------------------------------------------------
// Working graph
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Val {
    Const(Rc<Tensor>),
    Act(usize),
}

#[derive(Clone, Debug)]
struct AVal {
    name: String,
    /// ONNX dims, batch (if any) already 1.
    dims: Vec<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum BOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum UOp {
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
enum Elt {
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
enum WOp {
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
struct WNode {
    name: String,
    op_type: String,
    op: WOp,
    inputs: Vec<usize>,
    output: usize,
    alive: bool,
}

struct Ctx {
    name: String,
    op: String,
}

impl Ctx {
    fn unsupported_op(&self, why: impl Into<String>) -> ImportError {
        ImportError::UnsupportedOp {
            node: self.name.clone(),
            op_type: self.op.clone(),
            why: why.into(),
        }
    }
    fn unsupported(&self, why: impl Into<String>) -> ImportError {
        ImportError::Unsupported {
            node: self.name.clone(),
            why: why.into(),
        }
    }
    fn malformed(&self, why: impl fmt::Display) -> ImportError {
        ImportError::Malformed(format!("node '{}' (op {}): {why}", self.name, self.op))
    }
}

struct Builder {
    opset: i64,
    vals: HashMap<String, Val>,
    acts: Vec<AVal>,
    nodes: Vec<WNode>,
    input: usize,
    /// NHWC input: ONNX dims as declared (batch 1), for `Shape` of the input.
    input_nhwc_dims: Option<Vec<usize>>,
    output: usize,
    output_softmax: bool,
}

fn ir_shape_of(dims: &[usize]) -> Option<Shape> {
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

fn is_vector(s: Shape) -> bool {
    (s.c > 1) as u8 + (s.h > 1) as u8 + (s.w > 1) as u8 <= 1
}

fn norm_axis(ctx: &Ctx, axis: i64, rank: usize) -> Res<usize> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(ctx.malformed(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Broadcast two shapes (numpy rules).
fn bcast_dims(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (i, o) in out.iter_mut().enumerate() {
        let da = if i + a.len() >= r {
            a[i + a.len() - r]
        } else {
            1
        };
        let db = if i + b.len() >= r {
            b[i + b.len() - r]
        } else {
            1
        };
        *o = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

/// For every flat index of `out`, the flat index of the broadcast input.
fn bcast_index(out: &[usize], inp: &[usize]) -> Vec<usize> {
    let r = out.len();
    let off = r - inp.len();
    let ist = strides(inp);
    let mut es = vec![0usize; r];
    for i in 0..inp.len() {
        if inp[i] != 1 {
            es[i + off] = ist[i];
        }
    }
    let n = numel(out);
    let mut idx = vec![0usize; r];
    let mut res = Vec::with_capacity(n);
    let mut cur = 0usize;
    for _ in 0..n {
        res.push(cur);
        let mut k = r;
        while k > 0 {
            k -= 1;
            idx[k] += 1;
            cur += es[k];
            if idx[k] < out[k] {
                break;
            }
            cur -= es[k] * out[k];
            idx[k] = 0;
        }
    }
    res
}

/// If a constant of dims `cd` broadcast against an activation of dims `xd`
/// varies only along the channel axis (and does not grow the activation),
/// the number of channels.
fn per_channel(xd: &[usize], cd: &[usize]) -> Option<usize> {
    let ch = if xd.len() >= 2 { 1 } else { 0 };
    if xd.is_empty() {
        return None;
    }
    let extra = cd.len().saturating_sub(xd.len());
    if cd[..extra].iter().any(|&d| d != 1) {
        return None;
    }
    let cd = &cd[extra..];
    let off = xd.len() - cd.len();
    for (i, &x) in xd.iter().enumerate() {
        let c = if i >= off { cd[i - off] } else { 1 };
        if i == ch {
            if c != x && c != 1 {
                return None;
            }
        } else if c != 1 {
            return None;
        }
    }
    Some(xd[ch])
}

/// Output size and pads (top, left, bottom, right) of a conv / pool window.
#[allow(clippy::too_many_arguments)]
fn window(
    ctx: &Ctx,
    hw: (usize, usize),
    k: (usize, usize),
    s: (usize, usize),
    auto_pad: &str,
    pads: Option<Vec<i64>>,
    ceil_mode: bool,
) -> Res<([usize; 4], (usize, usize))> {
    if hw.0 == 0 || hw.1 == 0 {
        return Err(ctx.malformed("empty input"));
    }
    let (ins, ks, ss) = ([hw.0, hw.1], [k.0, k.1], [s.0, s.1]);
    let mut p = [0usize; 4];
    let mut out = [0usize; 2];
    match auto_pad {
        "" | "NOTSET" => {
            if let Some(pv) = pads {
                if pv.len() != 4 {
                    return Err(ctx
                        .unsupported(format!("pads {pv:?} (expected 4 values for a 2-D window)")));
                }
                for (i, &v) in pv.iter().enumerate() {
                    if v < 0 {
                        return Err(ctx.unsupported(format!("negative pads {pv:?}")));
                    }
                    p[i] = v as usize;
                }
            }
            for a in 0..2 {
                let tot = ins[a] + p[a] + p[a + 2];
                if tot < ks[a] {
                    return Err(
                        ctx.malformed(format!("window {} larger than padded input {}", ks[a], tot))
                    );
                }
                let floor = (tot - ks[a]) / ss[a] + 1;
                if ceil_mode {
                    let mut ceil = (tot - ks[a]).div_ceil(ss[a]) + 1;
                    if (ceil - 1) * ss[a] >= ins[a] + p[a] {
                        ceil -= 1;
                    }
                    if ceil != floor {
                        return Err(ctx.unsupported("ceil_mode=1 (changes the output size here)"));
                    }
                }
                out[a] = floor;
            }
        }
        "VALID" => {
            for a in 0..2 {
                if ins[a] < ks[a] {
                    return Err(ctx.malformed("window larger than input"));
                }
                out[a] = (ins[a] - ks[a]) / ss[a] + 1;
            }
        }
        "SAME_UPPER" | "SAME_LOWER" => {
            for a in 0..2 {
                out[a] = ins[a].div_ceil(ss[a]);
                let need = (out[a] - 1) * ss[a] + ks[a];
                let tot = need.saturating_sub(ins[a]);
                let small = tot / 2;
                if auto_pad == "SAME_UPPER" {
                    p[a] = small;
                    p[a + 2] = tot - small;
                } else {
                    p[a] = tot - small;
                    p[a + 2] = small;
                }
            }
        }
        other => return Err(ctx.unsupported(format!("auto_pad '{other}'"))),
    }
    Ok((p, (out[0], out[1])))
}

fn pair(ctx: &Ctx, v: Option<Vec<i64>>, default: usize, what: &str) -> Res<(usize, usize)> {
    match v {
        None => Ok((default, default)),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x > 0) => Ok((v[0] as usize, v[1] as usize)),
        Some(v) => Err(ctx.unsupported(format!("{what} {v:?} (expected two positive values)"))),
    }
}

impl Builder {
    fn new(opset: i64) -> Builder {
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

    fn new_act(&mut self, ctx: &Ctx, name: &str, dims: Vec<usize>) -> Res<usize> {
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

    fn push(
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

    fn dims(&self, a: usize) -> &[usize] {
        &self.acts[a].dims
    }

    fn producer(&self, v: usize) -> Option<usize> {
        self.nodes.iter().rposition(|n| n.alive && n.output == v)
    }

    /// Number of uses of `v` (the graph output counts as one).
    fn uses(&self, v: usize) -> usize {
        let mut n = (v == self.output) as usize;
        for node in self.nodes.iter().filter(|n| n.alive) {
            n += node.inputs.iter().filter(|&&i| i == v).count();
        }
        n
    }

    fn import(mut self, g: &pb::GraphProto, opts: &ImportOptions) -> Res<Graph> {
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

    fn setup_input(
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

    // -----------------------------------------------------------------------
    // Lowering
    // -----------------------------------------------------------------------

    fn lower(&mut self, idx: usize, n: &pb::NodeProto) -> Res<()> {
        let name = if n.name.is_empty() {
            format!("{}#{}", n.op_type, idx)
        } else {
            n.name.clone()
        };
        let ctx = Ctx {
            name,
            op: n.op_type.clone(),
        };
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(
                ctx.unsupported_op(format!("operator domain '{}' is not supported", n.domain))
            );
        }
        let a = Attrs(&n.attribute);
        let mut ins: Vec<Option<Val>> = Vec::with_capacity(n.input.len());
        for s in &n.input {
            if s.is_empty() {
                ins.push(None);
            } else {
                ins.push(Some(self.vals.get(s).cloned().ok_or_else(|| {
                    ctx.malformed(format!("reads undefined value '{s}'"))
                })?));
            }
        }
        let out0 = n.output.first().cloned().unwrap_or_default();
        if out0.is_empty() {
            return Err(ctx.malformed("node has no output"));
        }
        if n.op_type == "Constant" {
            let t = constant_attr(&a).map_err(|why| ctx.unsupported(why))?;
            self.vals.insert(out0, Val::Const(Rc::new(t)));
            return Ok(());
        }
        let any_act = ins.iter().any(|v| matches!(v, Some(Val::Act(_))));
        if !any_act {
            let cins: Vec<Option<Rc<Tensor>>> = ins
                .iter()
                .map(|v| {
                    v.as_ref().map(|v| {
                        if let Val::Const(t) = v {
                            t.clone()
                        } else {
                            unreachable!()
                        }
                    })
                })
                .collect();
            if cins.iter().all(|v| v.is_none()) {
                return Err(ctx.unsupported_op("node without inputs (only Constant is supported)"));
            }
            let outs = eval_const(&ctx, &a, &cins, self.opset)?;
            for (name, t) in n.output.iter().zip(outs) {
                if !name.is_empty() {
                    self.vals.insert(name.clone(), Val::Const(Rc::new(t)));
                }
            }
            return Ok(());
        }
        self.lower_act(&ctx, &a, &ins, &out0)
    }

    fn act_in(&self, ctx: &Ctx, ins: &[Option<Val>], i: usize) -> Res<usize> {
        match ins.get(i) {
            Some(Some(Val::Act(a))) => Ok(*a),
            Some(Some(Val::Const(_))) => Err(ctx.unsupported(format!(
                "input {i} is a constant where an activation is expected"
            ))),
            _ => Err(ctx.malformed(format!("missing input {i}"))),
        }
    }

    fn const_in(&self, ctx: &Ctx, ins: &[Option<Val>], i: usize) -> Res<Rc<Tensor>> {
        match ins.get(i) {
            Some(Some(Val::Const(t))) => Ok(t.clone()),
            Some(Some(Val::Act(_))) => Err(ctx.unsupported(format!(
                "input {i} must be a constant (it is computed at run time)"
            ))),
            _ => Err(ctx.malformed(format!("missing input {i}"))),
        }
    }

    fn opt_const_in(&self, ctx: &Ctx, ins: &[Option<Val>], i: usize) -> Res<Option<Rc<Tensor>>> {
        match ins.get(i) {
            None | Some(None) => Ok(None),
            Some(Some(_)) => self.const_in(ctx, ins, i).map(Some),
        }
    }

    fn alias(&mut self, out: &str, v: usize) {
        self.vals.insert(out.to_string(), Val::Act(v));
    }

    fn lower_act(&mut self, ctx: &Ctx, a: &Attrs, ins: &[Option<Val>], out: &str) -> Res<()> {
        let opset = self.opset;
        match ctx.op.as_str() {
            "Identity" | "Dropout" => {
                let x = self.act_in(ctx, ins, 0)?;
                self.alias(out, x);
            }
            "Cast" | "CastLike" => {
                let x = self.act_in(ctx, ins, 0)?;
                let to = a.int("to").unwrap_or(1);
                if ctx.op == "Cast" && ![1, 10, 11, 16].contains(&to) {
                    return Err(ctx.unsupported(format!("cast of an activation to data type {to}")));
                }
                self.alias(out, x);
            }
            "Shape" | "Size" => {
                let x = self.act_in(ctx, ins, 0)?;
                let mut d: Vec<i64> = match (&self.input_nhwc_dims, x == self.input) {
                    (Some(nd), true) => nd.iter().map(|&v| v as i64).collect(),
                    _ => self.dims(x).iter().map(|&v| v as i64).collect(),
                };
                let t = if ctx.op == "Size" {
                    Tensor::i(vec![], vec![d.iter().product()])
                } else {
                    let r = d.len() as i64;
                    let clampi =
                        |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
                    let s = clampi(a.int("start").unwrap_or(0));
                    let e = clampi(a.int("end").unwrap_or(r));
                    d = if s < e { d[s..e].to_vec() } else { vec![] };
                    Tensor::i(vec![d.len()], d)
                };
                self.vals.insert(out.to_string(), Val::Const(Rc::new(t)));
            }
            "Conv" => self.lower_conv(ctx, a, ins, out)?,
            "BatchNormalization" => {
                let x = self.act_in(ctx, ins, 0)?;
                if a.int("training_mode").unwrap_or(0) != 0 {
                    return Err(ctx.unsupported("training_mode=1"));
                }
                if opset < 9 && a.int("spatial").unwrap_or(1) != 1 {
                    return Err(ctx.unsupported("spatial=0"));
                }
                let xd = self.dims(x).to_vec();
                if xd.len() < 2 {
                    return Err(ctx.unsupported(format!("input of rank {}", xd.len())));
                }
                let c = xd[1];
                let mut p = Vec::new();
                for i in 1..5 {
                    let t = self.const_in(ctx, ins, i)?;
                    if t.len() != c {
                        return Err(ctx.malformed(format!(
                            "parameter {i} has {} values for {c} channels",
                            t.len()
                        )));
                    }
                    p.push(t.f32s());
                }
                let eps = a.float("epsilon").unwrap_or(1e-5);
                let s: Vec<f32> = (0..c).map(|i| p[0][i] / (p[3][i] + eps).sqrt()).collect();
                let beta = p[1].clone();
                let mean = p[2].clone();
                self.push(ctx, WOp::Bn { s, mean, beta }, vec![x], out, xd)?;
            }
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" => {
                let present: Vec<&Val> = ins.iter().flatten().collect();
                if present.len() == 1 {
                    let x = self.act_in(ctx, ins, 0)?;
                    self.alias(out, x);
                    return Ok(());
                }
                if present.len() != 2 {
                    return Err(ctx.unsupported(format!("{} operands (only 2)", present.len())));
                }
                let op = match ctx.op.as_str() {
                    "Add" | "Sum" => BOp::Add,
                    "Sub" => BOp::Sub,
                    "Mul" => BOp::Mul,
                    "Div" => BOp::Div,
                    "Pow" => BOp::Pow,
                    "Max" => BOp::Max,
                    _ => BOp::Min,
                };
                match (present[0], present[1]) {
                    (Val::Act(x), Val::Act(y)) => {
                        let (x, y) = (*x, *y);
                        if op == BOp::Pow {
                            return Err(ctx.unsupported("Pow of two activations"));
                        }
                        let d = bcast_dims(self.dims(x), self.dims(y)).ok_or_else(|| {
                            ctx.malformed(format!(
                                "shapes {:?} and {:?} do not broadcast",
                                self.dims(x),
                                self.dims(y)
                            ))
                        })?;
                        self.push(ctx, WOp::Elt(Elt::Bin2(op)), vec![x, y], out, d)?;
                    }
                    (Val::Act(x), Val::Const(t)) => {
                        self.lower_bin_const(ctx, op, *x, t, false, out)?
                    }
                    (Val::Const(t), Val::Act(x)) => {
                        self.lower_bin_const(ctx, op, *x, t, true, out)?
                    }
                    _ => unreachable!(),
                }
            }
            "Relu" | "Clip" | "LeakyRelu" | "HardSigmoid" | "HardSwish" | "Sigmoid" | "Tanh"
            | "Neg" | "Exp" | "Abs" | "Reciprocal" | "Elu" | "Selu" | "Softsign" | "PRelu" => {
                let x = self.act_in(ctx, ins, 0)?;
                let u = match ctx.op.as_str() {
                    "Relu" => UOp::Relu,
                    "Clip" => {
                        let (lo, hi) = if opset < 11 {
                            (
                                a.float("min").unwrap_or(f32::NEG_INFINITY),
                                a.float("max").unwrap_or(f32::INFINITY),
                            )
                        } else {
                            let lo = self.opt_const_in(ctx, ins, 1)?;
                            let hi = self.opt_const_in(ctx, ins, 2)?;
                            let sc = |t: Option<Rc<Tensor>>, d: f32| -> Res<f32> {
                                match t {
                                    None => Ok(d),
                                    Some(t) => t
                                        .scalar_f32()
                                        .ok_or_else(|| ctx.unsupported("non-scalar Clip bound")),
                                }
                            };
                            (sc(lo, f32::NEG_INFINITY)?, sc(hi, f32::INFINITY)?)
                        };
                        UOp::Clip(lo, hi)
                    }
                    "LeakyRelu" => UOp::LeakyRelu(a.float("alpha").unwrap_or(0.01)),
                    "HardSigmoid" => UOp::HardSigmoid(
                        a.float("alpha").unwrap_or(0.2),
                        a.float("beta").unwrap_or(0.5),
                    ),
                    "HardSwish" => UOp::HardSwish,
                    "Sigmoid" => UOp::Sigmoid,
                    "Tanh" => UOp::Tanh,
                    "Neg" => UOp::Neg,
                    "Exp" => UOp::Exp,
                    "Abs" => UOp::Abs,
                    "Reciprocal" => UOp::Reciprocal,
                    "Elu" => UOp::Elu(a.float("alpha").unwrap_or(1.0)),
                    "Selu" => UOp::Selu(
                        a.float("alpha").unwrap_or(1.673_263_2),
                        a.float("gamma").unwrap_or(1.050_701),
                    ),
                    "Softsign" => UOp::Softsign,
                    _ => {
                        let slope = self.const_in(ctx, ins, 1)?;
                        match slope.scalar_f32() {
                            Some(s) => UOp::LeakyRelu(s),
                            None => {
                                return Err(ctx.unsupported(
                                    "PRelu with a per-channel slope (only a scalar slope)",
                                ));
                            }
                        }
                    }
                };
                let d = self.dims(x).to_vec();
                self.push(ctx, WOp::Elt(Elt::U(u)), vec![x], out, d)?;
            }
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                if d.len() != 4 {
                    return Err(ctx.unsupported(format!("input of rank {} (only NCHW)", d.len())));
                }
                let op = if ctx.op == "GlobalAveragePool" {
                    WOp::Gap
                } else {
                    WOp::MaxPool(Pool {
                        kh: d[2],
                        kw: d[3],
                        stride: (1, 1),
                        pads: [0; 4],
                        count_include_pad: false,
                    })
                };
                self.push(ctx, op, vec![x], out, vec![1, d[1], 1, 1])?;
            }
            "ReduceMean" | "ReduceMax" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let axes = match a.ints("axes") {
                    Some(v) => Some(v),
                    None => self.opt_const_in(ctx, ins, 1)?.map(|t| t.i64s()),
                };
                let keep = a.int("keepdims").unwrap_or(1) != 0;
                let mut ax: Vec<usize> = match axes {
                    Some(v) if !v.is_empty() => v
                        .iter()
                        .map(|&v| norm_axis(ctx, v, d.len()))
                        .collect::<Res<_>>()?,
                    _ if a.int("noop_with_empty_axes").unwrap_or(0) != 0 => vec![],
                    _ => (0..d.len()).collect(),
                };
                ax.sort();
                ax.dedup();
                // Only a reduction over the whole H x W plane (reducing size-1
                // dims is a no-op).
                let ok = d.len() == 4
                    && (0..2).all(|i| !ax.contains(&i) || d[i] == 1)
                    && (2..4).all(|i| ax.contains(&i) || d[i] == 1);
                if !ok {
                    return Err(ctx.unsupported(format!(
                        "{} over axes {:?} of a {:?} tensor (only over H and W)",
                        ctx.op, ax, d
                    )));
                }
                let od: Vec<usize> = if keep {
                    d.iter()
                        .enumerate()
                        .map(|(i, &v)| if ax.contains(&i) { 1 } else { v })
                        .collect()
                } else {
                    d.iter()
                        .enumerate()
                        .filter(|(i, _)| !ax.contains(i))
                        .map(|(_, &v)| v)
                        .collect()
                };
                if d[2] == 1 && d[3] == 1 {
                    if od == d {
                        self.alias(out, x);
                    } else {
                        self.push(ctx, WOp::Reshape, vec![x], out, od)?;
                    }
                    return Ok(());
                }
                let op = if ctx.op == "ReduceMean" {
                    WOp::Gap
                } else {
                    WOp::MaxPool(Pool {
                        kh: d[2],
                        kw: d[3],
                        stride: (1, 1),
                        pads: [0; 4],
                        count_include_pad: false,
                    })
                };
                if od == [1, d[1], 1, 1] {
                    self.push(ctx, op, vec![x], out, od)?;
                } else {
                    // keepdims=0: pool, then reshape (same memory order).
                    let tmp = format!("{out}#pooled");
                    let p = self.push(ctx, op, vec![x], &tmp, vec![1, d[1], 1, 1])?;
                    self.push(ctx, WOp::Reshape, vec![p], out, od)?;
                }
            }
            "AveragePool" | "MaxPool" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                if d.len() != 4 {
                    return Err(
                        ctx.unsupported(format!("input of rank {} (only 2-D pooling)", d.len()))
                    );
                }
                let k = a
                    .ints("kernel_shape")
                    .ok_or_else(|| ctx.malformed("missing kernel_shape"))?;
                let k = pair(ctx, Some(k), 1, "kernel_shape")?;
                let s = pair(ctx, a.ints("strides"), 1, "strides")?;
                let dil = pair(ctx, a.ints("dilations"), 1, "dilations")?;
                if dil != (1, 1) {
                    return Err(ctx.unsupported(format!("dilations {dil:?} (only 1)")));
                }
                let ceil = a.int("ceil_mode").unwrap_or(0) != 0;
                let ap = a.string("auto_pad").unwrap_or_default();
                let (pads, (oh, ow)) = window(ctx, (d[2], d[3]), k, s, &ap, a.ints("pads"), ceil)?;
                let pool = Pool {
                    kh: k.0,
                    kw: k.1,
                    stride: s,
                    pads,
                    count_include_pad: a.int("count_include_pad").unwrap_or(0) != 0,
                };
                let op = if ctx.op == "MaxPool" {
                    WOp::MaxPool(pool)
                } else {
                    WOp::AvgPool(pool)
                };
                self.push(ctx, op, vec![x], out, vec![1, d[1], oh, ow])?;
            }
            "Concat" => {
                let mut xs = Vec::new();
                for v in ins {
                    match v {
                        Some(Val::Act(x)) => xs.push(*x),
                        Some(Val::Const(t)) if t.len() == 0 => {}
                        Some(Val::Const(_)) => {
                            return Err(
                                ctx.unsupported("concatenation of an activation with a constant")
                            );
                        }
                        None => {}
                    }
                }
                if xs.len() == 1 {
                    self.alias(out, xs[0]);
                    return Ok(());
                }
                let d0 = self.dims(xs[0]).to_vec();
                let axis = norm_axis(
                    ctx,
                    a.int("axis").ok_or_else(|| ctx.malformed("missing axis"))?,
                    d0.len(),
                )?;
                let mut od = d0.clone();
                od[axis] = 0;
                for &x in &xs {
                    let d = self.dims(x);
                    if d.len() != d0.len() || (0..d.len()).any(|i| i != axis && d[i] != d0[i]) {
                        return Err(ctx.malformed(format!("concat of shapes {:?} and {:?}", d0, d)));
                    }
                    od[axis] += d[axis];
                }
                if axis != 1 || d0.len() < 2 {
                    return Err(ctx.unsupported(format!(
                        "concatenation along axis {axis} of {:?} tensors (only along channels)",
                        d0
                    )));
                }
                self.push(ctx, WOp::Concat, xs, out, od)?;
            }
            "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" | "Transpose" | "Expand" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let od: Vec<usize> = match ctx.op.as_str() {
                    "Flatten" => {
                        let ax = a.int("axis").unwrap_or(1);
                        let ax = if ax < 0 { ax + d.len() as i64 } else { ax } as usize;
                        if ax > d.len() {
                            return Err(ctx.malformed("axis out of range"));
                        }
                        vec![numel(&d[..ax]), numel(&d[ax..])]
                    }
                    "Reshape" => {
                        let shape = self.const_in(ctx, ins, 1)?.i64s();
                        reshape_dims(&d, &shape, a.int("allowzero").unwrap_or(0) != 0)
                            .map_err(|e| ctx.malformed(e))?
                    }
                    "Squeeze" => {
                        let axes = if opset < 13 {
                            a.ints("axes")
                        } else {
                            self.opt_const_in(ctx, ins, 1)?.map(|t| t.i64s())
                        };
                        squeeze_dims(&d, axes).map_err(|e| ctx.malformed(e))?
                    }
                    "Unsqueeze" => {
                        let axes = if opset < 13 {
                            a.ints("axes")
                                .ok_or_else(|| ctx.malformed("missing axes"))?
                        } else {
                            self.const_in(ctx, ins, 1)?.i64s()
                        };
                        unsqueeze_dims(&d, &axes).map_err(|e| ctx.malformed(e))?
                    }
                    "Expand" => {
                        let shape: Vec<usize> = self
                            .const_in(ctx, ins, 1)?
                            .i64s()
                            .iter()
                            .map(|&v| v.max(0) as usize)
                            .collect();
                        let od = bcast_dims(&d, &shape)
                            .ok_or_else(|| ctx.malformed("shapes do not broadcast"))?;
                        if numel(&od) != numel(&d) {
                            return Err(ctx.unsupported(format!(
                                "Expand of an activation from {d:?} to {od:?}"
                            )));
                        }
                        od
                    }
                    _ => {
                        let perm: Vec<usize> = match a.ints("perm") {
                            Some(p) => p
                                .iter()
                                .map(|&v| norm_axis(ctx, v, d.len()))
                                .collect::<Res<_>>()?,
                            None => (0..d.len()).rev().collect(),
                        };
                        if !is_perm(&perm, d.len()) {
                            return Err(ctx.malformed(format!("invalid perm {perm:?}")));
                        }
                        if perm.len() != d.len() {
                            return Err(ctx.malformed("perm length differs from the rank"));
                        }
                        if x == self.input && self.input_nhwc_dims.is_some() && perm == [0, 3, 1, 2]
                        {
                            self.alias(out, x);
                            return Ok(());
                        }
                        // Order-preserving iff the non-1 axes keep their order.
                        let moved: Vec<usize> =
                            perm.iter().copied().filter(|&p| d[p] != 1).collect();
                        if moved.windows(2).any(|w| w[0] > w[1]) {
                            return Err(ctx.unsupported(format!(
                                "Transpose {perm:?} of an activation of shape {d:?} changes the memory order"
                            )));
                        }
                        perm.iter().map(|&p| d[p]).collect()
                    }
                };
                if numel(&od) != numel(&d) {
                    return Err(ctx.malformed(format!("reshape of {d:?} to {od:?}")));
                }
                if od == d {
                    self.alias(out, x);
                } else {
                    self.push(ctx, WOp::Reshape, vec![x], out, od)?;
                }
            }
            "Gemm" => {
                let x = self.act_in(ctx, ins, 0)?;
                let b = self.const_in(ctx, ins, 1)?;
                let c = self.opt_const_in(ctx, ins, 2)?;
                if a.int("transA").unwrap_or(0) != 0 {
                    return Err(ctx.unsupported("Gemm with transA=1"));
                }
                let trans_b = a.int("transB").unwrap_or(0) != 0;
                let alpha = a.float("alpha").unwrap_or(1.0);
                let beta = a.float("beta").unwrap_or(1.0);
                let xd = self.dims(x).to_vec();
                if xd.len() != 2 || xd[0] != 1 || b.dims.len() != 2 {
                    return Err(ctx.unsupported(format!(
                        "Gemm of {:?} by {:?} (only a [1, K] activation)",
                        xd, b.dims
                    )));
                }
                let k = xd[1];
                let (bk, bn) = if trans_b {
                    (b.dims[1], b.dims[0])
                } else {
                    (b.dims[0], b.dims[1])
                };
                if bk != k {
                    return Err(ctx.malformed(format!("Gemm of {:?} by {:?}", xd, b.dims)));
                }
                let bv = b.f32s();
                let mut w = if trans_b { bv } else { transpose2(&bv, k, bn) };
                if alpha != 1.0 {
                    w.iter_mut().for_each(|v| *v *= alpha);
                }
                let mut bias = vec![0f32; bn];
                if let Some(c) = c {
                    let cv = c.f32s();
                    if cv.len() == bn && per_channel(&[1, bn], &c.dims).is_some() {
                        bias = cv;
                    } else if cv.len() == 1 {
                        bias = vec![cv[0]; bn];
                    } else {
                        return Err(ctx.unsupported(format!("Gemm bias of shape {:?}", c.dims)));
                    }
                    if beta != 1.0 {
                        bias.iter_mut().for_each(|v| *v *= beta);
                    }
                }
                self.lower_fc(ctx, x, w, bias, bn, vec![1, bn], out)?;
            }
            "MatMul" => {
                let x = match &ins.first() {
                    Some(Some(Val::Act(x))) => *x,
                    _ => return Err(ctx.unsupported("MatMul whose first operand is a constant")),
                };
                let b = match ins.get(1) {
                    Some(Some(Val::Const(t))) => t.clone(),
                    _ => return Err(ctx.unsupported(
                        "MatMul of two activations (the second operand must be a constant matrix)",
                    )),
                };
                let xd = self.dims(x).to_vec();
                let bd: Vec<usize> = {
                    let extra = b.dims.len().saturating_sub(2);
                    if b.dims[..extra].iter().any(|&v| v != 1) || b.dims.len() < 2 {
                        return Err(
                            ctx.unsupported(format!("MatMul by a constant of shape {:?}", b.dims))
                        );
                    }
                    b.dims[extra..].to_vec()
                };
                if xd.len() < 2 || numel(&xd[..xd.len() - 1]) != 1 || xd[xd.len() - 1] != bd[0] {
                    return Err(ctx.unsupported(format!(
                        "MatMul of {:?} by {:?} (only a vector times a matrix)",
                        xd, b.dims
                    )));
                }
                let (k, nn) = (bd[0], bd[1]);
                let w = transpose2(&b.f32s(), k, nn);
                let mut od = xd.clone();
                *od.last_mut().unwrap() = nn;
                self.lower_fc(ctx, x, w, vec![0.0; nn], nn, od, out)?;
            }
            "Softmax" | "LogSoftmax" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let default_axis = if opset < 13 { 1 } else { -1 };
                let axis = norm_axis(ctx, a.int("axis").unwrap_or(default_axis), d.len())?;
                let covered = if opset < 13 {
                    numel(&d[axis..])
                } else {
                    d[axis]
                };
                if covered != numel(&d) {
                    return Err(ctx.unsupported(format!(
                        "{} over axis {axis} of a {d:?} tensor (only over all classes)",
                        ctx.op
                    )));
                }
                self.push(ctx, WOp::Softmax, vec![x], out, d)?;
            }
            "Pad" => {
                let x = self.act_in(ctx, ins, 0)?;
                let d = self.dims(x).to_vec();
                let mode = a.string("mode").unwrap_or_else(|| "constant".into());
                if mode != "constant" {
                    return Err(ctx.unsupported(format!(
                        "Pad mode '{mode}' (only constant zero padding before a Conv)"
                    )));
                }
                let (pads, value) = if opset < 11 {
                    (
                        a.ints("pads")
                            .or_else(|| a.ints("paddings"))
                            .ok_or_else(|| ctx.malformed("missing pads"))?,
                        a.float("value").unwrap_or(0.0),
                    )
                } else {
                    let p = self.const_in(ctx, ins, 1)?.i64s();
                    let v = match self.opt_const_in(ctx, ins, 2)? {
                        Some(t) => t.scalar_f32().unwrap_or(f32::NAN),
                        None => 0.0,
                    };
                    (p, v)
                };
                let r = d.len();
                let mut full = vec![0i64; 2 * r];
                match self.opt_const_in(ctx, ins, 3)? {
                    Some(axes) => {
                        let axes = axes.i64s();
                        if pads.len() != 2 * axes.len() {
                            return Err(ctx.malformed("pads length does not match axes"));
                        }
                        for (i, &ax) in axes.iter().enumerate() {
                            let ax = norm_axis(ctx, ax, r)?;
                            full[ax] = pads[i];
                            full[ax + r] = pads[i + axes.len()];
                        }
                    }
                    None => {
                        if pads.len() != 2 * r {
                            return Err(ctx.malformed(format!("pads {pads:?} for rank {r}")));
                        }
                        full = pads;
                    }
                }
                if value != 0.0 {
                    return Err(
                        ctx.unsupported(format!("Pad with value {value} (only zero padding)"))
                    );
                }
                if full.iter().any(|&p| p < 0) {
                    return Err(ctx.unsupported(format!("negative pads {full:?}")));
                }
                if full.iter().all(|&p| p == 0) {
                    self.alias(out, x);
                    return Ok(());
                }
                if r != 4 || full[0] != 0 || full[1] != 0 || full[4] != 0 || full[5] != 0 {
                    return Err(ctx.unsupported(format!(
                        "Pad {full:?} of a {d:?} tensor (only spatial padding)"
                    )));
                }
                let p = [
                    full[2] as usize,
                    full[3] as usize,
                    full[6] as usize,
                    full[7] as usize,
                ];
                let od = vec![1, d[1], d[2] + p[0] + p[2], d[3] + p[1] + p[3]];
                self.push(ctx, WOp::Pad(p), vec![x], out, od)?;
            }
            "Upsample" | "Resize" => {
                return Err(ctx.unsupported_op("resampling has no equivalent in the graftnet IR"));
            }
            _ => {
                return Err(ctx.unsupported_op("no equivalent in the graftnet IR"));
            }
        }
        Ok(())
    }

    fn lower_bin_const(
        &mut self,
        ctx: &Ctx,
        op: BOp,
        x: usize,
        t: &Tensor,
        const_first: bool,
        out: &str,
    ) -> Res<()> {
        let xd = self.dims(x).to_vec();
        if let Some(c) = t.scalar_f32() {
            if op == BOp::Pow {
                if const_first {
                    return Err(ctx.unsupported("Pow with a constant base"));
                }
                if !(c == c.round() && (0.0..=4.0).contains(&c)) {
                    return Err(
                        ctx.unsupported(format!("Pow with exponent {c} (only 0, 1, 2, 3, 4)"))
                    );
                }
            }
            let op = if matches!(op, BOp::Add | BOp::Sub | BOp::Mul | BOp::Div)
                && !(op == BOp::Div && const_first)
            {
                WOp::Chan {
                    op,
                    c: vec![c],
                    const_first,
                }
            } else {
                WOp::Elt(Elt::BinC { op, c, const_first })
            };
            self.push(ctx, op, vec![x], out, xd)?;
            return Ok(());
        }
        match per_channel(&xd, &t.dims) {
            Some(_) if matches!(op, BOp::Add | BOp::Sub | BOp::Mul) || (op == BOp::Div && !const_first) => {
                self.push(ctx, WOp::Chan { op, c: t.f32s(), const_first }, vec![x], out, xd)?;
                Ok(())
            }
            _ => Err(ctx.unsupported(format!(
                "{} of an activation of shape {:?} with a constant of shape {:?} (only scalar or per-channel constants)",
                ctx.op, xd, t.dims
            ))),
        }
    }

    fn lower_conv(&mut self, ctx: &Ctx, a: &Attrs, ins: &[Option<Val>], out: &str) -> Res<()> {
        let x = self.act_in(ctx, ins, 0)?;
        let w = self.const_in(ctx, ins, 1)?;
        let b = self.opt_const_in(ctx, ins, 2)?;
        let xd = self.dims(x).to_vec();
        if xd.len() != 4 || w.dims.len() != 4 {
            return Err(ctx.unsupported(format!(
                "convolution of a {:?} input with a {:?} kernel (only 2-D convolution)",
                xd, w.dims
            )));
        }
        let (m, cpg, kh, kw) = (w.dims[0], w.dims[1], w.dims[2], w.dims[3]);
        let group = a.int("group").unwrap_or(1);
        if group < 1 {
            return Err(ctx.malformed(format!("group {group}")));
        }
        let group = group as usize;
        if cpg * group != xd[1] || m % group != 0 {
            return Err(ctx.malformed(format!(
                "weights {:?} with group {group} for {} input channels",
                w.dims, xd[1]
            )));
        }
        if let Some(ks) = a.ints("kernel_shape") {
            if ks != [kh as i64, kw as i64] {
                return Err(ctx.malformed(format!(
                    "kernel_shape {ks:?} differs from the weights {:?}",
                    w.dims
                )));
            }
        }
        let s = pair(ctx, a.ints("strides"), 1, "strides")?;
        let dil = pair(ctx, a.ints("dilations"), 1, "dilations")?;
        if dil != (1, 1) {
            return Err(ctx.unsupported(format!(
                "dilations {:?} (only 1 is supported)",
                [dil.0, dil.1]
            )));
        }
        let ap = a.string("auto_pad").unwrap_or_default();
        let (mut pads, (oh, ow)) =
            window(ctx, (xd[2], xd[3]), (kh, kw), s, &ap, a.ints("pads"), false)?;
        // Pad -> Conv.
        let mut src = x;
        if let Some(p) = self.producer(x) {
            if let WOp::Pad(pp) = self.nodes[p].op {
                src = self.nodes[p].inputs[0];
                for i in 0..4 {
                    pads[i] += pp[i];
                }
            }
        }
        let bias = match b {
            Some(b) => {
                if b.len() != m {
                    return Err(ctx.malformed(format!(
                        "bias has {} values for {m} output channels",
                        b.len()
                    )));
                }
                b.f32s()
            }
            None => vec![0.0; m],
        };
        let conv = Conv {
            cout: m,
            cin: xd[1],
            kh,
            kw,
            stride: s,
            pads,
            dilation: dil,
            groups: group,
            weight: w.f32s(),
            bias,
            act: Act::None,
        };
        self.push(ctx, WOp::Conv(conv), vec![src], out, vec![1, m, oh, ow])?;
        Ok(())
    }

    /// Fully connected layer: reads the tensor before any flatten/reshape.
    #[allow(clippy::too_many_arguments)]
    fn lower_fc(
        &mut self,
        ctx: &Ctx,
        x: usize,
        w: Vec<f32>,
        bias: Vec<f32>,
        n: usize,
        od: Vec<usize>,
        out: &str,
    ) -> Res<()> {
        let mut src = x;
        while let Some(p) = self.producer(src) {
            if matches!(self.nodes[p].op, WOp::Reshape) {
                src = self.nodes[p].inputs[0];
            } else {
                break;
            }
        }
        let s = ir_shape_of(self.dims(src)).expect("checked at creation");
        let k = s.len();
        if w.len() != n * k {
            return Err(ctx.malformed(format!("weights have {} values for {n} x {k}", w.len())));
        }
        let conv = Conv {
            cout: n,
            cin: s.c,
            kh: s.h,
            kw: s.w,
            stride: (1, 1),
            pads: [0; 4],
            dilation: (1, 1),
            groups: 1,
            weight: w,
            bias,
            act: Act::None,
        };
        self.push(ctx, WOp::Conv(conv), vec![src], out, od)?;
        Ok(())
    }

    // -----------------------------------------------------------------------
    // Passes
    // -----------------------------------------------------------------------

    /// BN / per-channel affine ops folded into the preceding Conv or
    /// ChannelAffine (sole consumer, no activation yet) or made standalone
    /// ChannelAffines; Relu/Clip fused as `Act`.
    fn fold_affine_pass(&mut self) -> Res<()> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let x = match self.nodes[i].inputs.first() {
                Some(&x) => x,
                None => continue,
            };
            let op = self.nodes[i].op.clone();
            let fold_target = self.producer(x).filter(|&p| {
                self.uses(x) == 1
                    && match &self.nodes[p].op {
                        WOp::Conv(c) => c.act == Act::None,
                        WOp::Affine { act, .. } => *act == Act::None,
                        _ => false,
                    }
            });
            match op {
                WOp::Bn { .. } | WOp::Chan { .. } => {
                    if let Some(p) = fold_target {
                        let out = self.nodes[i].output;
                        match &mut self.nodes[p].op {
                            WOp::Conv(c) => {
                                let rl = c.row_len();
                                apply_channel_op(&op, &mut c.weight, rl, &mut c.bias);
                            }
                            WOp::Affine { scale, bias, .. } => {
                                apply_channel_op(&op, scale, 1, bias)
                            }
                            _ => unreachable!(),
                        }
                        self.nodes[p].output = out;
                        self.nodes[i].alive = false;
                        continue;
                    }
                    let scalar = matches!(&op, WOp::Chan { c, .. } if c.len() == 1);
                    if scalar {
                        if let WOp::Chan {
                            op: bop,
                            c,
                            const_first,
                        } = op
                        {
                            self.nodes[i].op = WOp::Elt(Elt::BinC {
                                op: bop,
                                c: c[0],
                                const_first,
                            });
                        }
                    } else {
                        let ch = self.dims(x)[if self.dims(x).len() >= 2 { 1 } else { 0 }];
                        let mut scale = vec![1f32; ch];
                        let mut bias = vec![0f32; ch];
                        apply_channel_op(&op, &mut scale, 1, &mut bias);
                        self.nodes[i].op = WOp::Affine {
                            scale,
                            bias,
                            act: Act::None,
                        };
                    }
                }
                WOp::Elt(Elt::U(UOp::Relu | UOp::Clip(..)))
                | WOp::Elt(Elt::BinC {
                    op: BOp::Max | BOp::Min,
                    ..
                }) => {
                    // Clamps compose: fold into the producer's activation.
                    let Some(p) = self.producer(x).filter(|_| self.uses(x) == 1) else {
                        continue;
                    };
                    let cur = match &self.nodes[p].op {
                        WOp::Conv(c) => c.act,
                        WOp::Affine { act, .. } => *act,
                        _ => continue,
                    };
                    let (mut lo, mut hi) = match cur {
                        Act::None => (f32::NEG_INFINITY, f32::INFINITY),
                        Act::Relu => (0.0, f32::INFINITY),
                        Act::Clip(l, h) => (l, h),
                    };
                    match op {
                        WOp::Elt(Elt::U(UOp::Relu)) => lo = lo.max(0.0),
                        WOp::Elt(Elt::U(UOp::Clip(l, h))) => {
                            lo = lo.max(l);
                            hi = hi.min(h);
                        }
                        WOp::Elt(Elt::BinC {
                            op: BOp::Max, c, ..
                        }) => lo = lo.max(c),
                        WOp::Elt(Elt::BinC {
                            op: BOp::Min, c, ..
                        }) => hi = hi.min(c),
                        _ => unreachable!(),
                    }
                    if lo.is_nan() || hi.is_nan() || lo > hi {
                        continue;
                    }
                    let act = if lo == f32::NEG_INFINITY && hi == f32::INFINITY {
                        Act::None
                    } else if lo == 0.0 && hi == f32::INFINITY {
                        Act::Relu
                    } else {
                        Act::Clip(lo, hi)
                    };
                    match &mut self.nodes[p].op {
                        WOp::Conv(c) => c.act = act,
                        WOp::Affine { act: a, .. } => *a = act,
                        _ => unreachable!(),
                    }
                    self.nodes[p].output = self.nodes[i].output;
                    self.nodes[i].alive = false;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A Softmax producing the graph output (possibly followed by reshapes
    /// of the class vector) is dropped and recorded.
    fn softmax_tail(&mut self) {
        let mut v = self.output;
        let mut last_reshape = None;
        while let Some(p) = self.producer(v) {
            match self.nodes[p].op {
                WOp::Reshape => {
                    last_reshape = Some(p);
                    v = self.nodes[p].inputs[0];
                }
                WOp::Softmax => {
                    let src = self.nodes[p].inputs[0];
                    if self.uses(v) != 1 {
                        return;
                    }
                    match last_reshape {
                        None => self.output = src,
                        Some(r) => self.nodes[r].inputs[0] = src,
                    }
                    self.nodes[p].alive = false;
                    self.output_softmax = true;
                    return;
                }
                _ => return,
            }
        }
    }

    fn dce(&mut self) {
        let mut live_vals = HashSet::new();
        live_vals.insert(self.output);
        for i in (0..self.nodes.len()).rev() {
            if !self.nodes[i].alive {
                continue;
            }
            if live_vals.contains(&self.nodes[i].output) {
                for &v in &self.nodes[i].inputs {
                    live_vals.insert(v);
                }
            } else {
                self.nodes[i].alive = false;
            }
        }
    }

    /// Groups of elementwise nodes over one activation -> one Unary.
    fn expr_pass(&mut self) -> Res<()> {
        let n = self.nodes.len();
        let mut cand: Vec<bool> = self
            .nodes
            .iter()
            .map(|nd| nd.alive && matches!(nd.op, WOp::Elt(_)))
            .collect();
        let mut prod: HashMap<usize, usize> = HashMap::new();
        for (i, nd) in self.nodes.iter().enumerate() {
            if nd.alive {
                prod.insert(nd.output, i);
            }
        }
        let mut consumers: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, nd) in self.nodes.iter().enumerate() {
            if nd.alive {
                for &v in &nd.inputs {
                    consumers.entry(v).or_default().push(i);
                }
            }
        }
        let output = self.output;
        let mut root = vec![usize::MAX; n];
        let mut absorbed = vec![false; n];
        loop {
            let mut changed = false;
            for i in 0..n {
                absorbed[i] = cand[i]
                    && self.nodes[i].output != output
                    && consumers
                        .get(&self.nodes[i].output)
                        .is_some_and(|cs| cs.iter().all(|&c| cand[c]));
            }
            for i in 0..n {
                if !cand[i] {
                    continue;
                }
                let mut r = None;
                let mut same = true;
                for &v in &self.nodes[i].inputs {
                    let rv = match prod.get(&v) {
                        Some(&p) if cand[p] && absorbed[p] => root[p],
                        _ => v,
                    };
                    match r {
                        None => r = Some(rv),
                        Some(r0) if r0 != rv => same = false,
                        _ => {}
                    }
                }
                if same {
                    root[i] = r.unwrap();
                } else {
                    cand[i] = false;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // Materialize.
        let mut new_ops: Vec<(usize, Unary, usize)> = Vec::new();
        for i in 0..n {
            if cand[i] && !absorbed[i] {
                let e = self.build_expr(self.nodes[i].output, root[i], &prod);
                let u = to_unary(&e);
                new_ops.push((i, u, root[i]));
            }
        }
        for (i, u, r) in new_ops {
            self.nodes[i].op = WOp::Unary(u);
            self.nodes[i].inputs = vec![r];
        }
        Ok(())
    }

    /// Expression of value `v` in terms of `root`; every node between them is
    /// an absorbed elementwise node (guaranteed by the grouping).
    fn build_expr(&self, v: usize, root: usize, prod: &HashMap<usize, usize>) -> WExpr {
        if v == root {
            return WExpr::X;
        }
        let nd = &self.nodes[prod[&v]];
        let sub = |k: usize| Box::new(self.build_expr(nd.inputs[k], root, prod));
        match &nd.op {
            WOp::Elt(Elt::U(u)) => WExpr::U(*u, sub(0)),
            WOp::Elt(Elt::BinC { op, c, const_first }) => {
                if *const_first {
                    WExpr::B(*op, Box::new(WExpr::C(*c)), sub(0))
                } else {
                    WExpr::B(*op, sub(0), Box::new(WExpr::C(*c)))
                }
            }
            WOp::Elt(Elt::Bin2(op)) => WExpr::B(*op, sub(0), sub(1)),
            _ => unreachable!("non-elementwise node inside an expression group"),
        }
    }

    // -----------------------------------------------------------------------
    // Emission
    // -----------------------------------------------------------------------

    fn emit(&self) -> Res<Graph> {
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

fn transpose2(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

/// Apply a per-output-channel op to `(weights rows, bias)`.
fn apply_channel_op(op: &WOp, w: &mut [f32], row_len: usize, bias: &mut [f32]) {
    let n = bias.len();
    match op {
        WOp::Bn { s, mean, beta } => {
            for o in 0..n {
                for v in &mut w[o * row_len..(o + 1) * row_len] {
                    *v *= s[o];
                }
                bias[o] = (bias[o] - mean[o]) * s[o] + beta[o];
            }
        }
        WOp::Chan { op, c, const_first } => {
            for o in 0..n {
                let k = if c.len() == 1 { c[0] } else { c[o] };
                let row = &mut w[o * row_len..(o + 1) * row_len];
                match (op, const_first) {
                    (BOp::Add, _) => bias[o] += k,
                    (BOp::Sub, false) => bias[o] -= k,
                    (BOp::Sub, true) => {
                        row.iter_mut().for_each(|v| *v = -*v);
                        bias[o] = k - bias[o];
                    }
                    (BOp::Mul, _) => {
                        row.iter_mut().for_each(|v| *v *= k);
                        bias[o] *= k;
                    }
                    (BOp::Div, false) => {
                        row.iter_mut().for_each(|v| *v /= k);
                        bias[o] /= k;
                    }
                    _ => unreachable!("not an affine op"),
                }
            }
        }
        _ => unreachable!(),
    }
}

// ---------------------------------------------------------------------------
// Elementwise expressions
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum WExpr {
    X,
    C(f32),
    U(UOp, Box<WExpr>),
    B(BOp, Box<WExpr>, Box<WExpr>),
}

fn to_unary(e: &WExpr) -> Unary {
    use WExpr::*;
    match e {
        U(u, x) if **x == X => match *u {
            UOp::Relu => return Unary::Relu,
            UOp::Clip(lo, hi) if lo == 0.0 && hi == f32::INFINITY => return Unary::Relu,
            UOp::Clip(lo, hi) => return Unary::Clip(lo, hi),
            UOp::LeakyRelu(alpha) => return Unary::LeakyRelu { alpha },
            UOp::HardSigmoid(alpha, beta) => return Unary::HardSigmoid { alpha, beta },
            UOp::HardSwish => {
                return Unary::HardSwish {
                    alpha: 1.0 / 6.0,
                    beta: 0.5,
                }
            }
            UOp::Sigmoid => return Unary::Sigmoid,
            UOp::Tanh => return Unary::Tanh,
            _ => {}
        },
        B(BOp::Mul, a, b) => {
            let (a, b) = (&**a, &**b);
            for (p, q) in [(a, b), (b, a)] {
                if *p == X {
                    match q {
                        U(UOp::HardSigmoid(alpha, beta), y) if **y == X => {
                            return Unary::HardSwish {
                                alpha: *alpha,
                                beta: *beta,
                            };
                        }
                        U(UOp::Sigmoid, y) if **y == X => return Unary::Swish,
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
    Unary::Expr(lower_expr(e))
}

fn bx(e: Expr) -> Box<Expr> {
    Box::new(e)
}

fn lower_expr(e: &WExpr) -> Expr {
    match e {
        WExpr::X => Expr::X,
        WExpr::C(c) => Expr::Const(*c),
        WExpr::B(op, a, b) => {
            let (la, lb) = (lower_expr(a), lower_expr(b));
            match op {
                BOp::Add => Expr::Add(bx(la), bx(lb)),
                BOp::Sub => Expr::Sub(bx(la), bx(lb)),
                BOp::Mul => Expr::Mul(bx(la), bx(lb)),
                BOp::Div => Expr::Div(bx(la), bx(lb)),
                BOp::Max => Expr::Max(bx(la), bx(lb)),
                BOp::Min => Expr::Min(bx(la), bx(lb)),
                BOp::Pow => {
                    // Exponent validated at lowering: a constant in 0..=4.
                    let n = match **b {
                        WExpr::C(c) => c as u32,
                        _ => unreachable!(),
                    };
                    if n == 0 {
                        return Expr::Const(1.0);
                    }
                    let mut acc = la.clone();
                    for _ in 1..n {
                        acc = Expr::Mul(bx(acc), bx(la.clone()));
                    }
                    acc
                }
            }
        }
        WExpr::U(u, a) => {
            let x = lower_expr(a);
            let c = Expr::Const;
            match *u {
                UOp::Relu => Expr::Max(bx(x), bx(c(0.0))),
                UOp::Clip(lo, hi) => {
                    let mut y = x;
                    if lo > f32::NEG_INFINITY {
                        y = Expr::Max(bx(y), bx(c(lo)));
                    }
                    if hi < f32::INFINITY {
                        y = Expr::Min(bx(y), bx(c(hi)));
                    }
                    y
                }
                UOp::LeakyRelu(al) => {
                    let ax = Expr::Mul(bx(c(al)), bx(x.clone()));
                    if al <= 1.0 {
                        Expr::Max(bx(x), bx(ax))
                    } else {
                        Expr::Min(bx(x), bx(ax))
                    }
                }
                UOp::HardSigmoid(al, be) => hard_sigmoid(x, al, be),
                UOp::HardSwish => Expr::Mul(bx(x.clone()), bx(hard_sigmoid(x, 1.0 / 6.0, 0.5))),
                UOp::Sigmoid => Expr::Sigmoid(bx(x)),
                UOp::Tanh => Expr::Tanh(bx(x)),
                UOp::Neg => Expr::Neg(bx(x)),
                UOp::Exp => Expr::Exp(bx(x)),
                UOp::Abs => Expr::Max(bx(x.clone()), bx(Expr::Neg(bx(x)))),
                UOp::Reciprocal => Expr::Div(bx(c(1.0)), bx(x)),
                UOp::Elu(al) => elu(x, al),
                UOp::Selu(al, g) => Expr::Mul(bx(c(g)), bx(elu(x, al))),
                UOp::Softsign => Expr::Div(
                    bx(x.clone()),
                    bx(Expr::Add(
                        bx(c(1.0)),
                        bx(Expr::Max(bx(x.clone()), bx(Expr::Neg(bx(x))))),
                    )),
                ),
            }
        }
    }
}

fn hard_sigmoid(x: Expr, alpha: f32, beta: f32) -> Expr {
    let lin = Expr::Add(
        bx(Expr::Mul(bx(Expr::Const(alpha)), bx(x))),
        bx(Expr::Const(beta)),
    );
    Expr::Max(
        bx(Expr::Const(0.0)),
        bx(Expr::Min(bx(Expr::Const(1.0)), bx(lin))),
    )
}

/// `x > 0 ? x : alpha * (exp(x) - 1)` as `max(x, 0) + alpha * (exp(min(x, 0)) - 1)`.
fn elu(x: Expr, alpha: f32) -> Expr {
    let pos = Expr::Max(bx(x.clone()), bx(Expr::Const(0.0)));
    let neg = Expr::Mul(
        bx(Expr::Const(alpha)),
        bx(Expr::Sub(
            bx(Expr::Exp(bx(Expr::Min(bx(x), bx(Expr::Const(0.0)))))),
            bx(Expr::Const(1.0)),
        )),
    );
    Expr::Add(bx(pos), bx(neg))
}

// ---------------------------------------------------------------------------
// Graph order
// ---------------------------------------------------------------------------

fn topo_order(g: &pb::GraphProto, needed: &[bool], vals: &HashMap<String, Val>) -> Res<Vec<usize>> {
    let mut avail: HashSet<&str> = vals.keys().map(|s| s.as_str()).collect();
    let mut done = vec![false; g.node.len()];
    let mut order = Vec::new();
    let todo = needed.iter().filter(|&&b| b).count();
    // Repeated sweeps keep the file order when it is already topological.
    loop {
        let mut progress = false;
        for (i, n) in g.node.iter().enumerate() {
            if !needed[i] || done[i] {
                continue;
            }
            if n.input
                .iter()
                .all(|s| s.is_empty() || avail.contains(s.as_str()))
            {
                done[i] = true;
                order.push(i);
                progress = true;
                for o in &n.output {
                    avail.insert(o.as_str());
                }
            }
        }
        if order.len() == todo {
            return Ok(order);
        }
        if !progress {
            let (i, n) = g
                .node
                .iter()
                .enumerate()
                .find(|(i, _)| needed[*i] && !done[*i])
                .unwrap();
            let missing: Vec<&str> = n
                .input
                .iter()
                .filter(|s| !s.is_empty() && !avail.contains(s.as_str()))
                .map(|s| s.as_str())
                .collect();
            let name = if n.name.is_empty() {
                format!("{}#{}", n.op_type, i)
            } else {
                n.name.clone()
            };
            return Err(ImportError::Malformed(format!(
                "node '{name}' reads undefined value(s) {missing:?} (or the graph has a cycle)"
            )));
        }
    }
}

// ---------------------------------------------------------------------------
// Shape helpers
// ---------------------------------------------------------------------------

fn reshape_dims(d: &[usize], shape: &[i64], allowzero: bool) -> Result<Vec<usize>, String> {
    let total = numel(d);
    let mut out = Vec::with_capacity(shape.len());
    let mut infer = None;
    for (i, &s) in shape.iter().enumerate() {
        if s == -1 {
            if infer.is_some() {
                return Err(format!("reshape {shape:?} has two -1"));
            }
            infer = Some(i);
            out.push(1);
        } else if s == 0 && !allowzero {
            out.push(
                *d.get(i)
                    .ok_or_else(|| format!("reshape {shape:?}: 0 beyond the input rank"))?,
            );
        } else if s < 0 {
            return Err(format!("reshape {shape:?}: invalid dim"));
        } else {
            out.push(s as usize);
        }
    }
    if let Some(i) = infer {
        let rest = numel(&out);
        if rest == 0 || !total.is_multiple_of(rest) {
            return Err(format!("cannot reshape {d:?} to {shape:?}"));
        }
        out[i] = total / rest;
    }
    if numel(&out) != total {
        return Err(format!("cannot reshape {d:?} to {shape:?}"));
    }
    Ok(out)
}

fn squeeze_dims(d: &[usize], axes: Option<Vec<i64>>) -> Result<Vec<usize>, String> {
    match axes {
        None => Ok(d.iter().copied().filter(|&v| v != 1).collect()),
        Some(ax) if ax.is_empty() => Ok(d.iter().copied().filter(|&v| v != 1).collect()),
        Some(ax) => {
            let r = d.len() as i64;
            let ax: Vec<usize> = ax
                .iter()
                .map(|&a| (if a < 0 { a + r } else { a }) as usize)
                .collect();
            for &a in &ax {
                if a >= d.len() || d[a] != 1 {
                    return Err(format!("cannot squeeze axis {a} of {d:?}"));
                }
            }
            Ok(d.iter()
                .enumerate()
                .filter(|(i, _)| !ax.contains(i))
                .map(|(_, &v)| v)
                .collect())
        }
    }
}

fn unsqueeze_dims(d: &[usize], axes: &[i64]) -> Result<Vec<usize>, String> {
    let r = (d.len() + axes.len()) as i64;
    let mut ax: Vec<usize> = Vec::new();
    for &a in axes {
        let a = if a < 0 { a + r } else { a };
        if a < 0 || a >= r {
            return Err(format!("unsqueeze axis {a} out of range"));
        }
        ax.push(a as usize);
    }
    let mut out = Vec::with_capacity(r as usize);
    let mut it = d.iter();
    for i in 0..r as usize {
        if ax.contains(&i) {
            out.push(1);
        } else {
            out.push(*it.next().ok_or("unsqueeze axes repeat")?);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Constant folding
// ---------------------------------------------------------------------------

fn constant_attr(a: &Attrs) -> Result<Tensor, String> {
    if let Some(t) = a.tensor("value") {
        return tensor_from_proto(t);
    }
    if let Some(at) = a.get("value_float") {
        return Ok(Tensor::f(vec![], vec![at.f]));
    }
    if let Some(v) = a.floats("value_floats") {
        return Ok(Tensor::f(vec![v.len()], v));
    }
    if let Some(v) = a.int("value_int") {
        return Ok(Tensor::i(vec![], vec![v]));
    }
    if let Some(v) = a.ints("value_ints") {
        return Ok(Tensor::i(vec![v.len()], v));
    }
    Err("Constant without a supported value attribute (value, value_float(s), value_int(s))".into())
}

fn map_f(t: &Tensor, f: impl Fn(f32) -> f32) -> Tensor {
    Tensor::f(t.dims.clone(), t.f32s().into_iter().map(f).collect())
}

fn eval_binary(op: &str, a: &Tensor, b: &Tensor) -> Result<Tensor, String> {
    let od = bcast_dims(&a.dims, &b.dims)
        .ok_or_else(|| format!("shapes {:?} and {:?} do not broadcast", a.dims, b.dims))?;
    let ia = bcast_index(&od, &a.dims);
    let ib = bcast_index(&od, &b.dims);
    let cmp = matches!(
        op,
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual"
    );
    if a.is_float() || b.is_float() {
        let (av, bv) = (a.f32s(), b.f32s());
        let f: fn(f32, f32) -> f32 = match op {
            "Add" | "Sum" => |x, y| x + y,
            "Sub" => |x, y| x - y,
            "Mul" => |x, y| x * y,
            "Div" => |x, y| x / y,
            "Pow" => |x, y| x.powf(y),
            "Max" => |x: f32, y| x.max(y),
            "Min" => |x: f32, y| x.min(y),
            "Mod" => |x: f32, y| x % y,
            "Equal" => |x, y| (x == y) as i32 as f32,
            "Less" => |x, y| (x < y) as i32 as f32,
            "Greater" => |x, y| (x > y) as i32 as f32,
            "LessOrEqual" => |x, y| (x <= y) as i32 as f32,
            "GreaterOrEqual" => |x, y| (x >= y) as i32 as f32,
            _ => return Err(format!("cannot evaluate {op} on constants")),
        };
        let v: Vec<f32> = ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect();
        if cmp {
            return Ok(Tensor::i(od, v.into_iter().map(|x| x as i64).collect()));
        }
        return Ok(Tensor::f(od, v));
    }
    let (av, bv) = (a.i64s(), b.i64s());
    let f: fn(i64, i64) -> i64 = match op {
        "Add" | "Sum" => |x, y| x.wrapping_add(y),
        "Sub" => |x, y| x.wrapping_sub(y),
        "Mul" => |x, y| x.wrapping_mul(y),
        "Div" => |x, y| if y == 0 { 0 } else { x / y },
        "Pow" => |x, y| x.wrapping_pow(y.max(0) as u32),
        "Max" => |x, y| x.max(y),
        "Min" => |x, y| x.min(y),
        "Mod" => |x, y| if y == 0 { 0 } else { x.rem_euclid(y) },
        "Equal" => |x, y| (x == y) as i64,
        "Less" => |x, y| (x < y) as i64,
        "Greater" => |x, y| (x > y) as i64,
        "LessOrEqual" => |x, y| (x <= y) as i64,
        "GreaterOrEqual" => |x, y| (x >= y) as i64,
        "And" => |x, y| (x != 0 && y != 0) as i64,
        "Or" => |x, y| (x != 0 || y != 0) as i64,
        "Xor" => |x, y| ((x != 0) ^ (y != 0)) as i64,
        _ => return Err(format!("cannot evaluate {op} on constants")),
    };
    Ok(Tensor::i(
        od,
        ia.iter().zip(&ib).map(|(&i, &j)| f(av[i], bv[j])).collect(),
    ))
}

fn is_perm(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
}

fn transpose_nd(t: &Tensor, perm: &[usize]) -> Tensor {
    let d = &t.dims;
    let od: Vec<usize> = perm.iter().map(|&p| d[p]).collect();
    let st = strides(d);
    let pst: Vec<usize> = perm.iter().map(|&p| st[p]).collect();
    let n = numel(&od);
    let mut idx = vec![0usize; od.len()];
    let mut src = Vec::with_capacity(n);
    let mut cur = 0usize;
    for _ in 0..n {
        src.push(cur);
        let mut k = od.len();
        while k > 0 {
            k -= 1;
            idx[k] += 1;
            cur += pst[k];
            if idx[k] < od[k] {
                break;
            }
            cur -= pst[k] * od[k];
            idx[k] = 0;
        }
    }
    t.gather_flat(od, &src)
}

/// Select indices `sel[axis]` along every axis.
fn select_nd(t: &Tensor, sel: &[Vec<usize>]) -> Tensor {
    let od: Vec<usize> = sel.iter().map(|s| s.len()).collect();
    let st = strides(&t.dims);
    let n = numel(&od);
    let mut src = Vec::with_capacity(n);
    let mut idx = vec![0usize; od.len()];
    for _ in 0..n {
        src.push(
            idx.iter()
                .enumerate()
                .map(|(a, &i)| sel[a][i] * st[a])
                .sum(),
        );
        let mut k = od.len();
        while k > 0 {
            k -= 1;
            idx[k] += 1;
            if idx[k] < od[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    t.gather_flat(od, &src)
}

fn eval_const(ctx: &Ctx, a: &Attrs, ins: &[Option<Rc<Tensor>>], opset: i64) -> Res<Vec<Tensor>> {
    let bad = |m: String| ctx.unsupported_op(format!("cannot evaluate on constants: {m}"));
    let inp = |i: usize| -> Res<&Tensor> {
        ins.get(i)
            .and_then(|v| v.as_deref())
            .ok_or_else(|| ctx.malformed(format!("missing input {i}")))
    };
    let opt = |i: usize| -> Option<&Tensor> { ins.get(i).and_then(|v| v.as_deref()) };
    let x = inp(0)?;
    let t = match ctx.op.as_str() {
        "Identity" | "Dropout" => x.clone(),
        "Cast" | "CastLike" => {
            let to = if ctx.op == "CastLike" {
                if inp(1)?.is_float() {
                    1
                } else {
                    7
                }
            } else {
                a.int("to").unwrap_or(1)
            };
            match to {
                1 | 10 | 11 | 16 => Tensor::f(x.dims.clone(), x.f32s()),
                9 => Tensor::i(
                    x.dims.clone(),
                    x.f32s().iter().map(|&v| (v != 0.0) as i64).collect(),
                ),
                2..=7 | 12 | 13 => Tensor::i(x.dims.clone(), x.i64s()),
                _ => return Err(bad(format!("Cast to data type {to}"))),
            }
        }
        "Reshape" => {
            let shape = inp(1)?.i64s();
            x.reshaped(
                reshape_dims(&x.dims, &shape, a.int("allowzero").unwrap_or(0) != 0).map_err(bad)?,
            )
        }
        "Flatten" => {
            let ax = a.int("axis").unwrap_or(1);
            let ax = if ax < 0 { ax + x.dims.len() as i64 } else { ax } as usize;
            let ax = ax.min(x.dims.len());
            x.reshaped(vec![numel(&x.dims[..ax]), numel(&x.dims[ax..])])
        }
        "Squeeze" => {
            let axes = if opset < 13 {
                a.ints("axes")
            } else {
                opt(1).map(|t| t.i64s())
            };
            x.reshaped(squeeze_dims(&x.dims, axes).map_err(bad)?)
        }
        "Unsqueeze" => {
            let axes = if opset < 13 {
                a.ints("axes").unwrap_or_default()
            } else {
                inp(1)?.i64s()
            };
            x.reshaped(unsqueeze_dims(&x.dims, &axes).map_err(bad)?)
        }
        "Concat" => {
            let parts: Vec<&Tensor> = ins.iter().flatten().map(|t| &**t).collect();
            let r = parts[0].dims.len();
            let axis = norm_axis(ctx, a.int("axis").unwrap_or(0), r)?;
            let float = parts.iter().any(|p| p.is_float());
            if parts.iter().any(|p| {
                p.dims.len() != r || (0..r).any(|i| i != axis && p.dims[i] != parts[0].dims[i])
            }) {
                return Err(bad("concat of mismatched shapes".into()));
            }
            let mut od = parts[0].dims.clone();
            od[axis] = parts
                .iter()
                .map(|p| p.dims.get(axis).copied().unwrap_or(0))
                .sum();
            let outer = numel(&od[..axis]);
            let mut fv = Vec::new();
            let mut iv = Vec::new();
            for o in 0..outer {
                for p in &parts {
                    if p.dims.len() != r {
                        return Err(bad("concat of different ranks".into()));
                    }
                    let blk = numel(&p.dims[axis..]);
                    if float {
                        fv.extend_from_slice(&p.f32s()[o * blk..(o + 1) * blk]);
                    } else {
                        iv.extend_from_slice(&p.i64s()[o * blk..(o + 1) * blk]);
                    }
                }
            }
            if float {
                Tensor::f(od, fv)
            } else {
                Tensor::i(od, iv)
            }
        }
        "Slice" => {
            let r = x.dims.len();
            let (starts, ends, axes, steps) = if opset < 10 {
                (
                    a.ints("starts").unwrap_or_default(),
                    a.ints("ends").unwrap_or_default(),
                    a.ints("axes"),
                    None,
                )
            } else {
                (
                    inp(1)?.i64s(),
                    inp(2)?.i64s(),
                    opt(3).map(|t| t.i64s()),
                    opt(4).map(|t| t.i64s()),
                )
            };
            let axes = axes.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let steps = steps.unwrap_or_else(|| vec![1; starts.len()]);
            if ends.len() != starts.len()
                || axes.len() != starts.len()
                || steps.len() != starts.len()
            {
                return Err(bad("Slice starts/ends/axes/steps lengths differ".into()));
            }
            let mut sel: Vec<Vec<usize>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
            for k in 0..starts.len() {
                let ax = norm_axis(ctx, axes[k], r)?;
                let d = x.dims[ax] as i64;
                let step = steps[k];
                if step == 0 {
                    return Err(bad("slice step 0".into()));
                }
                let fix = |v: i64| if v < 0 { v + d } else { v };
                let (mut s, mut e) = (fix(starts[k]), fix(ends[k]));
                let mut v = Vec::new();
                if step > 0 {
                    s = s.clamp(0, d);
                    e = e.clamp(0, d);
                    let mut i = s;
                    while i < e {
                        v.push(i as usize);
                        i += step;
                    }
                } else {
                    s = s.clamp(-1, d - 1);
                    e = e.clamp(-1, d - 1);
                    let mut i = s;
                    while i > e {
                        v.push(i as usize);
                        i += step;
                    }
                }
                sel[ax] = v;
            }
            select_nd(x, &sel)
        }
        "Gather" => {
            let idx = inp(1)?;
            let r = x.dims.len();
            let axis = norm_axis(ctx, a.int("axis").unwrap_or(0), r)?;
            let d = x.dims[axis] as i64;
            let iv: Vec<usize> = idx
                .i64s()
                .iter()
                .map(|&i| {
                    let j = if i < 0 { i + d } else { i };
                    if j < 0 || j >= d {
                        Err(bad(format!("gather index {i} out of range")))
                    } else {
                        Ok(j as usize)
                    }
                })
                .collect::<Res<_>>()?;
            let outer = numel(&x.dims[..axis]);
            let inner = numel(&x.dims[axis + 1..]);
            let mut src = Vec::new();
            for o in 0..outer {
                for &j in &iv {
                    for k in 0..inner {
                        src.push((o * x.dims[axis] + j) * inner + k);
                    }
                }
            }
            let mut od = x.dims[..axis].to_vec();
            od.extend_from_slice(&idx.dims);
            od.extend_from_slice(&x.dims[axis + 1..]);
            x.gather_flat(od, &src)
        }
        "Shape" => {
            let d: Vec<i64> = x.dims.iter().map(|&v| v as i64).collect();
            let r = d.len() as i64;
            let clampi = |v: i64| -> usize { (if v < 0 { v + r } else { v }).clamp(0, r) as usize };
            let s = clampi(a.int("start").unwrap_or(0));
            let e = clampi(a.int("end").unwrap_or(r));
            let d = if s < e { d[s..e].to_vec() } else { vec![] };
            Tensor::i(vec![d.len()], d)
        }
        "Size" => Tensor::i(vec![], vec![x.len() as i64]),
        "Transpose" => {
            let perm: Vec<usize> = match a.ints("perm") {
                Some(p) => p
                    .iter()
                    .map(|&v| norm_axis(ctx, v, x.dims.len()))
                    .collect::<Res<_>>()?,
                None => (0..x.dims.len()).rev().collect(),
            };
            if !is_perm(&perm, x.dims.len()) {
                return Err(ctx.malformed(format!("invalid perm {perm:?}")));
            }
            transpose_nd(x, &perm)
        }
        "Expand" => {
            let shape: Vec<usize> = inp(1)?.i64s().iter().map(|&v| v.max(0) as usize).collect();
            let od =
                bcast_dims(&x.dims, &shape).ok_or_else(|| bad("shapes do not broadcast".into()))?;
            let idx = bcast_index(&od, &x.dims);
            x.gather_flat(od, &idx)
        }
        "ConstantOfShape" => {
            let shape: Vec<usize> = x.i64s().iter().map(|&v| v.max(0) as usize).collect();
            let n = numel(&shape);
            match a.tensor("value") {
                Some(v) => {
                    let v = tensor_from_proto(v).map_err(bad)?;
                    let idx = vec![0usize; n];
                    v.gather_flat(shape, &idx)
                }
                None => Tensor::f(shape, vec![0.0; n]),
            }
        }
        "Range" => {
            let (s, l, d) = (inp(0)?, inp(1)?, inp(2)?);
            if s.is_float() || l.is_float() || d.is_float() {
                let sc = |t: &Tensor| {
                    t.scalar_f32()
                        .ok_or_else(|| bad("Range inputs must be scalars".into()))
                };
                let (s, l, d) = (sc(s)?, sc(l)?, sc(d)?);
                if d == 0.0 {
                    return Err(bad("Range with delta 0".into()));
                }
                let n = (((l - s) / d).ceil()).max(0.0) as usize;
                Tensor::f(vec![n], (0..n).map(|i| s + i as f32 * d).collect())
            } else {
                if s.len() != 1 || l.len() != 1 || d.len() != 1 {
                    return Err(bad("Range inputs must be scalars".into()));
                }
                let (s, l, d) = (s.i64s()[0], l.i64s()[0], d.i64s()[0]);
                if d == 0 {
                    return Err(bad("Range with delta 0".into()));
                }
                let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
                Tensor::i(vec![n], (0..n).map(|i| s + i as i64 * d).collect())
            }
        }
        "Where" => {
            let (c, p, q) = (inp(0)?, inp(1)?, inp(2)?);
            let od = bcast_dims(&c.dims, &p.dims)
                .and_then(|d| bcast_dims(&d, &q.dims))
                .ok_or_else(|| bad("shapes do not broadcast".into()))?;
            let (ic, ip, iq) = (
                bcast_index(&od, &c.dims),
                bcast_index(&od, &p.dims),
                bcast_index(&od, &q.dims),
            );
            let cv = c.i64s();
            if p.is_float() || q.is_float() {
                let (pv, qv) = (p.f32s(), q.f32s());
                Tensor::f(
                    od.clone(),
                    (0..ic.len())
                        .map(|k| if cv[ic[k]] != 0 { pv[ip[k]] } else { qv[iq[k]] })
                        .collect(),
                )
            } else {
                let (pv, qv) = (p.i64s(), q.i64s());
                Tensor::i(
                    od.clone(),
                    (0..ic.len())
                        .map(|k| if cv[ic[k]] != 0 { pv[ip[k]] } else { qv[iq[k]] })
                        .collect(),
                )
            }
        }
        "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Sum" | "Mod" | "Equal"
        | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" | "Xor" => {
            let parts: Vec<&Tensor> = ins.iter().flatten().map(|t| &**t).collect();
            let mut acc = parts[0].clone();
            for p in &parts[1..] {
                acc = eval_binary(&ctx.op, &acc, p).map_err(bad)?;
            }
            acc
        }
        "Not" => Tensor::i(
            x.dims.clone(),
            x.i64s().iter().map(|&v| (v == 0) as i64).collect(),
        ),
        "Neg" => match &x.data {
            Data::I(v) => Tensor::i(x.dims.clone(), v.iter().map(|&v| -v).collect()),
            Data::F(_) => map_f(x, |v| -v),
        },
        "Abs" => match &x.data {
            Data::I(v) => Tensor::i(x.dims.clone(), v.iter().map(|&v| v.abs()).collect()),
            Data::F(_) => map_f(x, f32::abs),
        },
        "Sqrt" => map_f(x, f32::sqrt),
        "Reciprocal" => map_f(x, |v| 1.0 / v),
        "Exp" => map_f(x, f32::exp),
        "Log" => map_f(x, f32::ln),
        "Floor" => map_f(x, f32::floor),
        "Ceil" => map_f(x, f32::ceil),
        "Round" => map_f(x, f32::round_ties_even),
        "Relu" => map_f(x, |v| v.max(0.0)),
        "Sigmoid" => map_f(x, |v| 1.0 / (1.0 + (-v).exp())),
        "Tanh" => map_f(x, f32::tanh),
        "Sign" => map_f(x, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            }
        }),
        "Clip" => {
            let (lo, hi) = if opset < 11 {
                (
                    a.float("min").unwrap_or(f32::NEG_INFINITY),
                    a.float("max").unwrap_or(f32::INFINITY),
                )
            } else {
                (
                    opt(1)
                        .and_then(|t| t.scalar_f32())
                        .unwrap_or(f32::NEG_INFINITY),
                    opt(2).and_then(|t| t.scalar_f32()).unwrap_or(f32::INFINITY),
                )
            };
            match &x.data {
                Data::I(v) => Tensor::i(
                    x.dims.clone(),
                    v.iter()
                        .map(|&v| (v as f32).max(lo).min(hi) as i64)
                        .collect(),
                ),
                Data::F(_) => map_f(x, |v| v.max(lo).min(hi)),
            }
        }
        "ReduceProd" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceMean" => {
            let r = x.dims.len();
            let axes = match a.ints("axes") {
                Some(v) => Some(v),
                None if ctx.op == "ReduceSum" || opset >= 18 => opt(1).map(|t| t.i64s()),
                None => None,
            };
            let noop = a.int("noop_with_empty_axes").unwrap_or(0) != 0;
            let ax: Vec<usize> = match axes {
                Some(v) if !v.is_empty() => v
                    .iter()
                    .map(|&v| norm_axis(ctx, v, r))
                    .collect::<Res<_>>()?,
                _ if noop => vec![],
                _ => (0..r).collect(),
            };
            let keep = a.int("keepdims").unwrap_or(1) != 0;
            let kd: Vec<usize> = x
                .dims
                .iter()
                .enumerate()
                .map(|(i, &d)| if ax.contains(&i) { 1 } else { d })
                .collect();
            let kst = strides(&kd);
            let xst = strides(&x.dims);
            let n_out = numel(&kd);
            let xv = x.f32s();
            let init = match ctx.op.as_str() {
                "ReduceProd" => 1.0,
                "ReduceMax" => f32::NEG_INFINITY,
                "ReduceMin" => f32::INFINITY,
                _ => 0.0,
            };
            let mut acc = vec![init; n_out];
            for (flat, &v) in xv.iter().enumerate() {
                let mut o = 0;
                for k in 0..r {
                    let i = (flat / xst[k]) % x.dims[k];
                    if !ax.contains(&k) {
                        o += i * kst[k];
                    }
                }
                acc[o] = match ctx.op.as_str() {
                    "ReduceProd" => acc[o] * v,
                    "ReduceMax" => acc[o].max(v),
                    "ReduceMin" => acc[o].min(v),
                    _ => acc[o] + v,
                };
            }
            if ctx.op == "ReduceMean" {
                let cnt = (numel(&x.dims) / n_out.max(1)) as f32;
                acc.iter_mut().for_each(|v| *v /= cnt);
            }
            let od = if keep {
                kd
            } else {
                x.dims
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !ax.contains(i))
                    .map(|(_, &d)| d)
                    .collect()
            };
            if x.is_float() {
                Tensor::f(od, acc)
            } else {
                Tensor::i(od, acc.iter().map(|&v| v as i64).collect())
            }
        }
        "DequantizeLinear" => {
            let scale = inp(1)?;
            let zp = opt(2);
            let xv = x.f32s();
            let sv = scale.f32s();
            let zv = zp.map(|z| z.f32s()).unwrap_or_else(|| vec![0.0; sv.len()]);
            if sv.len() == 1 {
                Tensor::f(
                    x.dims.clone(),
                    xv.iter().map(|&v| (v - zv[0]) * sv[0]).collect(),
                )
            } else {
                let axis = norm_axis(ctx, a.int("axis").unwrap_or(1), x.dims.len())?;
                let inner = numel(&x.dims[axis + 1..]);
                let d = x.dims[axis];
                Tensor::f(
                    x.dims.clone(),
                    xv.iter()
                        .enumerate()
                        .map(|(i, &v)| {
                            let c = (i / inner) % d;
                            (v - zv[c]) * sv[c]
                        })
                        .collect(),
                )
            }
        }
        "Split" => {
            let r = x.dims.len();
            let axis = norm_axis(ctx, a.int("axis").unwrap_or(0), r)?;
            let d = x.dims[axis];
            let sizes: Vec<usize> = match a.ints("split").or_else(|| opt(1).map(|t| t.i64s())) {
                Some(s) => s.iter().map(|&v| v as usize).collect(),
                None => return Err(bad("Split without explicit sizes".into())),
            };
            if sizes.iter().sum::<usize>() != d {
                return Err(bad("split sizes do not add up".into()));
            }
            let mut outs = Vec::new();
            let mut start = 0;
            for s in sizes {
                let mut sel: Vec<Vec<usize>> = x.dims.iter().map(|&d| (0..d).collect()).collect();
                sel[axis] = (start..start + s).collect();
                outs.push(select_nd(x, &sel));
                start += s;
            }
            return Ok(outs);
        }
        _ => {
            return Err(ctx.unsupported_op(
                "no equivalent in the graftnet IR (and it cannot be evaluated on constants)",
            ))
        }
    };
    Ok(vec![t])
}

// ---------------------------------------------------------------------------
// Test support: building ONNX models in code.
// ---------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    pub fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: 2,
            i: v,
            ..Default::default()
        }
    }
    pub fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: 1,
            f: v,
            ..Default::default()
        }
    }
    pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: 7,
            ints: v.to_vec(),
            ..Default::default()
        }
    }
    pub fn attr_s(name: &str, v: &str) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: 3,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }
    pub fn attr_t(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            r#type: 4,
            t: Some(t),
            ..Default::default()
        }
    }
    pub fn tensor_f(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 1,
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        }
    }
    pub fn tensor_i64(name: &str, dims: &[i64], v: &[i64]) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: 7,
            int64_data: v.to_vec(),
            ..Default::default()
        }
    }

    /// Deterministic pseudo-random values in [-1, 1).
    pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    pub struct ModelBuilder {
        pub graph: pb::GraphProto,
        counter: usize,
    }

    fn value_info(name: &str, dims: &[i64]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = dims
            .iter()
            .map(|&d| Dimension {
                value: Some(if d < 0 {
                    Value::DimParam("N".into())
                } else {
                    Value::DimValue(d)
                }),
                ..Default::default()
            })
            .collect();
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Conv + BN + Relu6 (Clip with Constant min/max) + GAP + Flatten + Gemm.
    pub fn conv_bn_relu6_head() -> ModelBuilder {
        let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
        b.rinit("w", &[8, 3, 3, 3], 0.4);
        b.rinit("cb", &[8], 0.2);
        b.rinit("g", &[8], 1.0);
        b.rinit("be", &[8], 0.5);
        b.rinit("m", &[8], 0.3);
        b.init("v", &[8], &[0.5, 1.0, 1.5, 2.0, 0.25, 0.75, 1.25, 3.0]);
        b.node(
            "Conv",
            &["x", "w", "cb"],
            &["c"],
            vec![
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        );
        b.node(
            "BatchNormalization",
            &["c", "g", "be", "m", "v"],
            &["bn"],
            vec![attr_f("epsilon", 1e-5)],
        );
        b.constant("lo", tensor_f("", &[], &[0.0]));
        b.constant("hi", tensor_f("", &[], &[6.0]));
        b.node("Clip", &["bn", "lo", "hi"], &["r6"], vec![]);
        b.node("GlobalAveragePool", &["r6"], &["p"], vec![]);
        b.node("Flatten", &["p"], &["f"], vec![attr_i("axis", 1)]);
        b.rinit("fw", &[5, 8], 0.5);
        b.rinit("fb", &[5], 0.5);
        b.node(
            "Gemm",
            &["f", "fw", "fb"],
            &["y"],
            vec![
                attr_i("transB", 1),
                attr_f("alpha", 1.0),
                attr_f("beta", 1.0),
            ],
        );
        b
    }

    /// Paddle-style HardSwish `x * Clip(x + 3, 0, 6) / 6` between convs (opset 11).
    pub fn paddle_hardswish() -> ModelBuilder {
        let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
        b.rinit("w1", &[4, 3, 3, 3], 1.0);
        b.node(
            "Conv",
            &["x", "w1"],
            &["c1"],
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        );
        b.constant("three", tensor_f("", &[], &[3.0]));
        b.constant("zero", tensor_f("", &[], &[0.0]));
        b.constant("six", tensor_f("", &[], &[6.0]));
        b.constant("six2", tensor_f("", &[], &[6.0]));
        b.node("Add", &["c1", "three"], &["a"], vec![]);
        b.node("Clip", &["a", "zero", "six"], &["cl"], vec![]);
        b.node("Mul", &["c1", "cl"], &["m"], vec![]);
        b.node("Div", &["m", "six2"], &["h"], vec![]);
        b.rinit("w2", &[2, 4, 1, 1], 1.0);
        b.node("Conv", &["h", "w2"], &["y"], vec![]);
        b
    }

    /// Conv + Relu, then `Shape -> Slice -> Concat -> Reshape` flatten, MatMul + Add, Softmax.
    pub fn shape_flatten_matmul() -> ModelBuilder {
        let mut b = ModelBuilder::new("x", &[1, 3, 4, 4]);
        b.rinit("w", &[4, 3, 3, 3], 0.5);
        b.node(
            "Conv",
            &["x", "w"],
            &["c"],
            vec![
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        );
        b.node("Relu", &["c"], &["r"], vec![]);
        b.node("Shape", &["r"], &["s"], vec![]);
        b.init_i64("st", &[1], &[0]);
        b.init_i64("en", &[1], &[1]);
        b.init_i64("ax", &[1], &[0]);
        b.node("Slice", &["s", "st", "en", "ax"], &["s0"], vec![]);
        b.constant("m1", tensor_i64("", &[1], &[-1]));
        b.node("Concat", &["s0", "m1"], &["shp"], vec![attr_i("axis", 0)]);
        b.node("Reshape", &["r", "shp"], &["f"], vec![]);
        b.rinit("mw", &[16, 3], 0.5);
        b.rinit("mb", &[3], 0.5);
        b.node("MatMul", &["f", "mw"], &["mm"], vec![]);
        b.node("Add", &["mm", "mb"], &["logits"], vec![]);
        b.node("Softmax", &["logits"], &["y"], vec![attr_i("axis", -1)]);
        b
    }

    /// A bag of ops: BN, HardSwish, pools, concat, depthwise, LeakyRelu,
    /// residual Add, SE gate (gate first), ReduceMean head, Gemm (transB=0).
    pub fn misc_ops() -> ModelBuilder {
        let mut b = ModelBuilder::new("x", &[1, 4, 9, 9]);
        b.rinit("w1", &[4, 4, 3, 3], 0.5);
        b.node(
            "Conv",
            &["x", "w1"],
            &["c1"],
            vec![attr_ints("pads", &[1, 1, 1, 1])],
        );
        b.rinit("g", &[4], 1.0);
        b.rinit("be", &[4], 0.5);
        b.rinit("m", &[4], 0.3);
        b.init("v", &[4], &[0.5, 1.0, 1.5, 2.0]);
        b.node(
            "BatchNormalization",
            &["c1", "g", "be", "m", "v"],
            &["bn"],
            vec![],
        );
        b.node("HardSwish", &["bn"], &["h"], vec![]);
        b.node(
            "MaxPool",
            &["h"],
            &["mp"],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
            ],
        );
        b.node(
            "AveragePool",
            &["h"],
            &["ap"],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_s("auto_pad", "SAME_UPPER"),
            ],
        );
        b.node(
            "AveragePool",
            &["h"],
            &["ap2"],
            vec![
                attr_ints("kernel_shape", &[3, 3]),
                attr_ints("strides", &[2, 2]),
                attr_ints("pads", &[1, 1, 1, 1]),
                attr_i("count_include_pad", 1),
            ],
        );
        b.node(
            "Concat",
            &["mp", "ap", "ap2"],
            &["cat"],
            vec![attr_i("axis", 1)],
        );
        b.rinit("wd", &[12, 1, 3, 3], 0.5);
        b.rinit("bd", &[12], 0.5);
        b.node(
            "Conv",
            &["cat", "wd", "bd"],
            &["dw"],
            vec![attr_i("group", 12), attr_ints("pads", &[1, 1, 1, 1])],
        );
        b.node("LeakyRelu", &["dw"], &["lr"], vec![attr_f("alpha", 0.1)]);
        b.node("Add", &["lr", "cat"], &["res"], vec![]);
        b.node("GlobalAveragePool", &["res"], &["gp"], vec![]);
        b.rinit("ws1", &[3, 12, 1, 1], 0.5);
        b.node("Conv", &["gp", "ws1"], &["s1"], vec![]);
        b.node("Relu", &["s1"], &["s1r"], vec![]);
        b.rinit("ws2", &[12, 3, 1, 1], 0.5);
        b.rinit("bs2", &[1, 12, 1, 1], 0.5);
        b.node("Conv", &["s1r", "ws2"], &["s2"], vec![]);
        b.node("Add", &["s2", "bs2"], &["s2b"], vec![]);
        b.node(
            "HardSigmoid",
            &["s2b"],
            &["gate"],
            vec![attr_f("alpha", 0.2), attr_f("beta", 0.5)],
        );
        b.node("Mul", &["gate", "res"], &["se"], vec![]);
        b.rinit("wp", &[6, 12, 1, 1], 0.5);
        b.node(
            "Conv",
            &["se", "wp"],
            &["pw"],
            vec![attr_ints("strides", &[2, 2])],
        );
        b.init("sc", &[6, 1, 1], &[1.0, -2.0, 0.5, 3.0, 1.5, -0.5]);
        b.node("Mul", &["pw", "sc"], &["pws"], vec![]);
        b.node("Sigmoid", &["pws"], &["sg"], vec![]);
        b.node("Mul", &["pws", "sg"], &["sw"], vec![]);
        b.node(
            "ReduceMean",
            &["sw"],
            &["rm"],
            vec![attr_ints("axes", &[2, 3]), attr_i("keepdims", 0)],
        );
        b.rinit("gw", &[6, 7], 0.5);
        b.node("Gemm", &["rm", "gw"], &["gm"], vec![attr_f("alpha", 0.5)]);
        b.node("Tanh", &["gm"], &["y"], vec![]);
        b
    }

    impl ModelBuilder {
        /// `dims` < 0 are dynamic.
        pub fn new(input: &str, dims: &[i64]) -> Self {
            let graph = pb::GraphProto {
                name: "g".into(),
                input: vec![value_info(input, dims)],
                ..Default::default()
            };
            ModelBuilder { graph, counter: 0 }
        }
        pub fn init(&mut self, name: &str, dims: &[i64], v: &[f32]) {
            self.graph.initializer.push(tensor_f(name, dims, v));
        }
        pub fn init_i64(&mut self, name: &str, dims: &[i64], v: &[i64]) {
            self.graph.initializer.push(tensor_i64(name, dims, v));
        }
        /// Random initializer.
        pub fn rinit(&mut self, name: &str, dims: &[i64], scale: f32) {
            let n: i64 = dims.iter().product();
            self.counter += 1;
            let v: Vec<f32> = rand_vec(n as usize, 1000 + self.counter as u64)
                .iter()
                .map(|x| x * scale)
                .collect();
            self.init(name, dims, &v);
        }
        pub fn constant(&mut self, out: &str, t: pb::TensorProto) {
            self.node("Constant", &[], &[out], vec![attr_t("value", t)]);
        }
        pub fn node(
            &mut self,
            op: &str,
            ins: &[&str],
            outs: &[&str],
            attrs: Vec<pb::AttributeProto>,
        ) {
            self.counter += 1;
            self.graph.node.push(pb::NodeProto {
                name: format!("{op}_{}", self.counter),
                op_type: op.into(),
                input: ins.iter().map(|s| s.to_string()).collect(),
                output: outs.iter().map(|s| s.to_string()).collect(),
                attribute: attrs,
                ..Default::default()
            });
        }
        pub fn bytes(&self, output: &str, opset: i64) -> Vec<u8> {
            let mut g = self.graph.clone();
            g.output = vec![pb::ValueInfoProto {
                name: output.into(),
                ..Default::default()
            }];
            let m = pb::ModelProto {
                ir_version: 8,
                opset_import: vec![pb::OperatorSetIdProto {
                    domain: String::new(),
                    version: opset,
                }],
                producer_name: "graftnet-test".into(),
                graph: Some(g),
                ..Default::default()
            };
            m.encode_to_vec()
        }
        pub fn write_temp(&self, tag: &str, output: &str, opset: i64) -> std::path::PathBuf {
            let dir =
                std::env::temp_dir().join(format!("graftnet-tools-tests-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let p = dir.join(format!("{tag}.onnx"));
            std::fs::write(&p, self.bytes(output, opset)).unwrap();
            p
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }

    #[test]
    fn unsupported_op_names_node_and_op() {
        let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
        b.node("Relu", &["x"], &["r"], vec![]);
        b.graph.node.push(pb::NodeProto {
            name: "LSTM_3".into(),
            op_type: "LSTM".into(),
            input: vec!["r".into()],
            output: vec!["y".into()],
            ..Default::default()
        });
        let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
        assert!(
            matches!(&err, ImportError::UnsupportedOp { node, op_type, .. } if node == "LSTM_3" && op_type == "LSTM")
        );
        let msg = err.to_string();
        assert!(
            msg.contains("node 'LSTM_3' (op LSTM) is not supported"),
            "{msg}"
        );

        // Einsum on an activation, with an empty node name.
        let mut b = ModelBuilder::new("x", &[1, 3, 8, 8]);
        b.graph.node.push(pb::NodeProto {
            op_type: "Einsum".into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            attribute: vec![attr_s("equation", "nchw->nhwc")],
            ..Default::default()
        });
        let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("node 'Einsum#0' (op Einsum)"),
            "{err}"
        );
    }

    #[test]
    fn dynamic_shape_needs_input_shape() {
        let mut b = ModelBuilder::new("x", &[-1, 3, -1, -1]);
        b.node("Relu", &["x"], &["y"], vec![]);
        let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
        assert_eq!(err, ImportError::DynamicShape { input: "x".into() });
        assert!(err.to_string().contains("--input-shape"));
        let g = import_onnx(
            &b.bytes("y", 13),
            &ImportOptions {
                input_shape: Some((3, 5, 7)),
            },
        )
        .unwrap();
        assert_eq!(g.shape(g.input), Shape::new(3, 5, 7));
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].op, Op::Unary(Unary::Relu));
    }

    #[test]
    fn dilation_and_trans_a_are_rejected() {
        let mut b = ModelBuilder::new("x", &[1, 2, 8, 8]);
        b.rinit("w", &[2, 2, 3, 3], 0.5);
        b.node(
            "Conv",
            &["x", "w"],
            &["y"],
            vec![attr_ints("dilations", &[2, 2])],
        );
        let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ImportError::Unsupported { .. }), "{err}");
        assert!(err.to_string().contains("dilations"));

        let mut b = ModelBuilder::new("x", &[1, 4]);
        b.rinit("w", &[4, 3], 0.5);
        b.node("Gemm", &["x", "w"], &["y"], vec![attr_i("transA", 1)]);
        let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ImportError::Unsupported { .. }), "{err}");

        let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
        b.node("Concat", &["x", "x"], &["y"], vec![attr_i("axis", 2)]);
        let err = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ImportError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn decode_error() {
        let err = import_onnx(&[0xff, 0xff, 0xff], &ImportOptions::default()).unwrap_err();
        assert!(matches!(err, ImportError::Decode(_)));
    }

    #[test]
    fn conv_bn_clip_gap_flatten_gemm_structure() {
        let b = super::testutil::conv_bn_relu6_head();
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        // Conv(+BN+Clip) , GAP, FC conv.
        assert_eq!(
            g.nodes.len(),
            3,
            "{:#?}",
            g.nodes
                .iter()
                .map(|n| (&n.name, n.op.name()))
                .collect::<Vec<_>>()
        );
        match &g.nodes[0].op {
            Op::Conv(c) => assert_eq!(c.act, Act::Clip(0.0, 6.0)),
            o => panic!("{o:?}"),
        }
        assert_eq!(g.nodes[1].op, Op::GlobalAvgPool);
        match &g.nodes[2].op {
            Op::Conv(c) => {
                assert_eq!((c.cout, c.cin, c.kh, c.kw), (5, 8, 1, 1));
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(g.shape(g.output), Shape::new(5, 1, 1));
        assert!(!g.output_softmax);
    }

    #[test]
    fn bn_fold_formula_is_exact() {
        let mut b = ModelBuilder::new("x", &[1, 2, 3, 3]);
        b.init("w", &[2, 2, 1, 1], &[0.5, -1.0, 2.0, 0.25]);
        b.init("cb", &[2], &[0.1, -0.2]);
        b.init("g", &[2], &[1.5, 0.7]);
        b.init("be", &[2], &[0.3, -0.4]);
        b.init("m", &[2], &[0.05, 0.6]);
        b.init("v", &[2], &[0.9, 2.5]);
        b.node("Conv", &["x", "w", "cb"], &["c"], vec![]);
        b.node(
            "BatchNormalization",
            &["c", "g", "be", "m", "v"],
            &["y"],
            vec![attr_f("epsilon", 1e-3)],
        );
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        assert_eq!(g.nodes.len(), 1);
        let Op::Conv(c) = &g.nodes[0].op else {
            panic!()
        };
        let s0 = 1.5f32 / (0.9f32 + 1e-3).sqrt();
        let s1 = 0.7f32 / (2.5f32 + 1e-3).sqrt();
        assert_eq!(c.weight, vec![0.5 * s0, -s0, 2.0 * s1, 0.25 * s1]);
        assert_eq!(
            c.bias,
            vec![(0.1 - 0.05) * s0 + 0.3, (-0.2 - 0.6) * s1 - 0.4]
        );
        assert_eq!(g.tensors[g.output].name, "y");
    }

    #[test]
    fn standalone_bn_and_mul_gate() {
        // BN after an Add (no conv) -> ChannelAffine with Relu fused; SE-style gate.
        let mut b = ModelBuilder::new("x", &[1, 3, 4, 4]);
        b.rinit("g", &[3], 1.0);
        b.rinit("be", &[3], 1.0);
        b.rinit("m", &[3], 1.0);
        b.init("v", &[3], &[1.0, 2.0, 0.5]);
        b.node("Add", &["x", "x"], &["a"], vec![]);
        b.node(
            "BatchNormalization",
            &["a", "g", "be", "m", "v"],
            &["bn"],
            vec![],
        );
        b.node("Relu", &["bn"], &["r"], vec![]);
        b.node("GlobalAveragePool", &["r"], &["p"], vec![]);
        b.node("Sigmoid", &["p"], &["s"], vec![]);
        b.node("Mul", &["s", "r"], &["y"], vec![]);
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        // x + x is an elementwise expression of one tensor: Unary(Expr).
        assert_eq!(
            names,
            ["Unary", "ChannelAffine", "GlobalAvgPool", "Unary", "Mul"]
        );
        assert!(matches!(
            g.nodes[1].op,
            Op::ChannelAffine { act: Act::Relu, .. }
        ));
        assert_eq!(g.nodes[3].op, Op::Unary(Unary::Sigmoid));
        // Gate swapped to second position.
        let mul = &g.nodes[4];
        assert_eq!(g.shape(mul.inputs[0]), Shape::new(3, 4, 4));
        assert_eq!(g.shape(mul.inputs[1]), Shape::new(3, 1, 1));
    }

    #[test]
    fn hardswish_patterns() {
        // Mul(x, HardSigmoid(x)) -> HardSwish; Mul(Sigmoid(x), x) -> Swish.
        let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
        b.node(
            "HardSigmoid",
            &["x"],
            &["h"],
            vec![attr_f("alpha", 1.0 / 6.0)],
        );
        b.node("Mul", &["x", "h"], &["y"], vec![]);
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(
            g.nodes[0].op,
            Op::Unary(Unary::HardSwish {
                alpha: 1.0 / 6.0,
                beta: 0.5
            })
        );

        let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
        b.node("Sigmoid", &["x"], &["s"], vec![]);
        b.node("Mul", &["s", "x"], &["y"], vec![]);
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].op, Op::Unary(Unary::Swish));

        // Both in a row over one tensor: a single expression.
        let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
        b.node(
            "HardSigmoid",
            &["x"],
            &["h"],
            vec![attr_f("alpha", 1.0 / 6.0)],
        );
        b.node("Mul", &["x", "h"], &["a"], vec![]);
        b.node("Sigmoid", &["a"], &["s"], vec![]);
        b.node("Mul", &["s", "a"], &["y"], vec![]);
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        assert_eq!(g.nodes.len(), 1);
        let Op::Unary(Unary::Expr(e)) = &g.nodes[0].op else {
            panic!("{:?}", g.nodes[0].op)
        };
        for x in [-4.0f32, -1.0, 0.0, 0.7, 2.5, 5.0] {
            let a = x * (x / 6.0 + 0.5).clamp(0.0, 1.0);
            let want = a / (1.0 + (-a).exp());
            assert!((e.eval(x) - want).abs() < 1e-6);
        }

        // A value used outside the group is materialized.
        let mut b = ModelBuilder::new("x", &[1, 2, 4, 4]);
        b.node(
            "HardSigmoid",
            &["x"],
            &["h"],
            vec![attr_f("alpha", 1.0 / 6.0)],
        );
        b.node("Mul", &["x", "h"], &["a"], vec![]);
        b.node("GlobalAveragePool", &["a"], &["p"], vec![]);
        b.node("Sigmoid", &["p"], &["s"], vec![]);
        b.node("Mul", &["a", "s"], &["y"], vec![]);
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(names, ["Unary", "GlobalAvgPool", "Unary", "Mul"]);
    }

    #[test]
    fn paddle_hardswish_is_one_expr() {
        let b = super::testutil::paddle_hardswish();
        let g = import_onnx(&b.bytes("y", 11), &ImportOptions::default()).unwrap();
        let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(names, ["Conv", "Unary", "Conv"], "{:#?}", g.nodes);
        let Op::Unary(Unary::Expr(e)) = &g.nodes[1].op else {
            panic!("{:?}", g.nodes[1].op)
        };
        for x in [-5.0f32, -3.0, -1.0, 0.0, 0.5, 2.0, 3.0, 7.0] {
            let want = x * (x + 3.0).clamp(0.0, 6.0) / 6.0;
            assert!((e.eval(x) - want).abs() < 1e-6);
        }
    }

    #[test]
    fn shape_slice_concat_reshape_flatten_folds() {
        let b = super::testutil::shape_flatten_matmul();
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        let names: Vec<&str> = g.nodes.iter().map(|n| n.op.name()).collect();
        assert_eq!(names, ["Conv", "Conv"], "{:#?}", g.nodes);
        let Op::Conv(fc) = &g.nodes[1].op else {
            panic!()
        };
        assert_eq!((fc.cout, fc.cin, fc.kh, fc.kw), (3, 4, 2, 2));
        assert!(g.output_softmax);
    }

    #[test]
    fn nhwc_input_with_transpose() {
        let mut b = ModelBuilder::new("x", &[1, 6, 5, 3]);
        b.node(
            "Transpose",
            &["x"],
            &["t"],
            vec![attr_ints("perm", &[0, 3, 1, 2])],
        );
        b.rinit("w", &[4, 3, 3, 3], 0.3);
        b.node(
            "Conv",
            &["t", "w"],
            &["y"],
            vec![
                attr_s("auto_pad", "SAME_UPPER"),
                attr_ints("strides", &[2, 2]),
            ],
        );
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        assert_eq!(g.shape(g.input), Shape::new(3, 6, 5));
        assert_eq!(g.nodes.len(), 1);
        let Op::Conv(c) = &g.nodes[0].op else {
            panic!()
        };
        // in 6x5, k3, s2: out 3x3; total pad h = 2*2+3-6 = 1 -> (0,1); w = 2*2+3-5 = 2 -> (1,1)
        assert_eq!(c.pads, [0, 1, 1, 1]);
        assert_eq!(g.shape(g.output), Shape::new(4, 3, 3));
    }

    #[test]
    fn pad_fuses_into_conv_and_constant_node_forms() {
        let mut b = ModelBuilder::new("x", &[1, 2, 6, 6]);
        b.node(
            "Constant",
            &[],
            &["pads"],
            vec![pb::AttributeProto {
                name: "value_ints".into(),
                r#type: 7,
                ints: vec![0, 0, 1, 0, 0, 0, 0, 1],
                ..Default::default()
            }],
        );
        b.node("Pad", &["x", "pads"], &["p"], vec![]);
        b.rinit("w", &[2, 1, 3, 3], 0.5);
        b.node(
            "Conv",
            &["p", "w"],
            &["c"],
            vec![attr_i("group", 2), attr_ints("strides", &[2, 2])],
        );
        b.node("Constant", &[], &["lo"], vec![attr_f("value_float", 0.0)]);
        b.node("Clip", &["c", "lo", ""], &["y"], vec![]);
        let g = import_onnx(&b.bytes("y", 13), &ImportOptions::default()).unwrap();
        assert_eq!(g.nodes.len(), 1);
        let Op::Conv(c) = &g.nodes[0].op else {
            panic!()
        };
        assert_eq!(c.pads, [1, 0, 0, 1]);
        assert!(c.is_depthwise());
        assert_eq!(c.act, Act::Relu);
        assert_eq!(g.shape(g.output), Shape::new(2, 3, 3));
    }

    #[test]
    fn clip_attrs_for_old_opsets() {
        let mut b = ModelBuilder::new("x", &[1, 2, 3, 3]);
        b.rinit("w", &[2, 2, 1, 1], 0.5);
        b.node("Conv", &["x", "w"], &["c"], vec![]);
        b.node(
            "Clip",
            &["c"],
            &["y"],
            vec![attr_f("min", 0.0), attr_f("max", 6.0)],
        );
        let g = import_onnx(&b.bytes("y", 9), &ImportOptions::default()).unwrap();
        let Op::Conv(c) = &g.nodes[0].op else {
            panic!()
        };
        assert_eq!(c.act, Act::Clip(0.0, 6.0));
    }
}
