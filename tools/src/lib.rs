//! graftnet-tools: the offline side of graftnet (import, quantize, diff, emit)
//! and the host runner.

pub mod args;
pub mod bias_correction;
pub mod data;
pub mod device;
pub mod export;
pub mod fixtures;
pub mod float_eval;
pub mod host;
pub mod inspect;
pub mod ir;
pub mod learn;
pub mod onnx_build;
pub mod onnx_import;
pub mod pipeline;
pub mod quantize;
pub mod reference;
pub mod rng;
pub mod signing;
pub mod soak;
pub mod verify;
