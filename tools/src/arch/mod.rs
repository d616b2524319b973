//! Network architectures built in Rust, with random weights, and their ONNX
//! export: what `graftnet learn --arch` starts from, and the base of the
//! synthetic test models (the `graftnet-fixtures` crate, `tools/fixtures/`,
//! derives task models from these and writes them with [`to_onnx`]).
//!
//! 1. A parameter-level description, [`NetParams`]: every conv with its
//!    weights (OIHW), optional bias, batch norm and activation, grouped into
//!    blocks exactly as torchvision groups them ([`mobilenet_v2`],
//!    [`mobilenet_v3_small`]). Module names are torchvision's
//!    (`features.3.conv.1.0`), so exported node and initializer names match
//!    what PyTorch writes.
//! 2. Export ([`to_onnx`]) in PyTorch's style (opset 13, IR 7, BN folded,
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
//!   few random images ([`run_float`]) sets each layer's weight scale so its
//!   output has unit variance (LSUV) and adds each channel's measured mean
//!   to its batch-norm mean, as running statistics would. Without that,
//!   random statistics that do not match the activations let ranges drift
//!   by orders of magnitude over 50 layers. Logits of the mnv2 family have
//!   an RMS near 1 on inputs in [-1, 1]; MobileNetV3 (SE gates, HardSwish,
//!   1×1 maps at 32×32) varies more from input to input.
//! - Every export style computes the same function as the default (within
//!   float rounding), except [`Relu6Style::Relu`], which deliberately writes
//!   ReLU instead of ReLU6.
//! - Invalid requests (an opset-10 style combined with a HardSwish op)
//!   panic with a message rather than return an error: the styles other
//!   than the default serve tests.
//! - [`Init`], [`run_float`]'s [`Mode::TaskStats`] and the writer's
//!   [`Graph`] are public for `graftnet-fixtures` (tiny nets, simulated S/B
//!   fine-tuning, a model with an unsupported op); `graftnet` itself uses
//!   the architectures, [`calibrate`] and [`to_onnx`].

mod float;
mod init;
mod onnx;
mod params;

pub use float::{calibrate, calibration_batch, run_float, Mode};
pub use init::*;
pub use onnx::*;
pub use params::*;
