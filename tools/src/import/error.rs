//! Import errors: what went wrong, naming the ONNX node and op ([`Ctx`]).

use std::fmt;

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

pub(super) type Res<T> = Result<T, ImportError>;

pub(super) struct Ctx {
    pub(super) name: String,
    pub(super) op: String,
}

impl Ctx {
    pub(super) fn unsupported_op(&self, why: impl Into<String>) -> ImportError {
        ImportError::UnsupportedOp {
            node: self.name.clone(),
            op_type: self.op.clone(),
            why: why.into(),
        }
    }
    pub(super) fn unsupported(&self, why: impl Into<String>) -> ImportError {
        ImportError::Unsupported {
            node: self.name.clone(),
            why: why.into(),
        }
    }
    pub(super) fn malformed(&self, why: impl fmt::Display) -> ImportError {
        ImportError::Malformed(format!("node '{}' (op {}): {why}", self.name, self.op))
    }
}
