//! graftnet-tools: the offline side of graftnet (import, quantize, diff, emit)
//! and the host runner.

pub mod arch;
pub mod args;
pub mod bias_correction;
pub mod data;
pub mod export;
pub mod float_eval;
pub mod head_patch;
pub mod host;
pub mod import;
pub mod inspect;
pub mod ir;
pub mod learn;
pub mod onnx_build;
pub mod pipeline;
pub mod quantize;
pub mod reference;
pub mod rng;
pub mod share_prefix;
pub mod signing;
pub mod soak;
pub mod verify;
