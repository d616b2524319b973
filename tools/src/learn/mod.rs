//! `graftnet learn`: the paper's method — train only a model patch (batch
//! norm scales and biases, depthwise kernels, the classifier, or
//! everything) through a frozen backbone — in Rust, on a CPU, for one task
//! or several together. The result is an ordinary ONNX task model that
//! `graftnet export` turns into a patch. See `tools/LEARN.md` for the
//! choices (why hand-written kernels and not candle/burn, batch-norm
//! statistics, schedule) and the measured results.
//!
//! Layers: [`kernels`] (forward/backward numerics), [`net`] (the trainable
//! network built from an imported graph), [`train`] (the loop),
//! [`onnx_out`] (the writer), [`cli`] (the command).

pub mod cli;
pub mod kernels;
pub mod net;
pub mod onnx_out;
pub mod par;
pub mod train;

#[cfg(test)]
mod tests;

pub use net::{BnInit, Mode, Net, PatchKind};
pub use train::{Augment, Optimizer, TrainConfig};
