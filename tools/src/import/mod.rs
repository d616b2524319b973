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
//!
//! Files, in pipeline order: `decode` (protobuf tensors, attributes, node
//! order), `graph` (the working graph and the driver), `lower` (one node
//! at a time), `shape` and `fold` (shape inference, constant folding),
//! `fuse` (the passes of step 3), `emit` (step 4), `error`.
//!
//! [`Act`]: crate::ir::Act
//! [`Act::Relu`]: crate::ir::Act::Relu
//! [`Conv`]: crate::ir::Conv
//! [`Op::ChannelAffine`]: crate::ir::Op::ChannelAffine
//! [`Op::Unary`]: crate::ir::Op::Unary
//! [`Graph::output_softmax`]: crate::ir::Graph::output_softmax

mod decode;
mod emit;
mod error;
mod fold;
mod fuse;
mod graph;
mod lower;
mod shape;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::path::Path;

use prost::Message;
use tract_onnx::pb;

use crate::ir::Graph;

use error::Res;
use graph::Builder;

pub use error::ImportError;

/// Import options.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// `(c, h, w)` of the input; required when the model declares dynamic
    /// channel/height/width dims, and overrides the declared shape otherwise.
    pub input_shape: Option<(usize, usize, usize)>,
}

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
