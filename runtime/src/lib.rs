//! graftnet: one frozen int8 backbone, many kilobyte task patches.
//!
//! This crate is the on-device half of graftnet. It is `#![no_std]` and never
//! allocates: the caller owns every buffer (the activation arena, the
//! per-channel parameter table and any patch buffer), sized by numbers the
//! backbone blob carries.
//!
//! ```text
//! let bb = Backbone::parse(FLASH_BACKBONE)?;          // checked once, zero copy
//! let mut engine = Engine::new(&bb, &mut arena, &mut params)?;
//! engine.apply(Patch::parse(FLASH_PATCH)?)?;          // task switch
//! let scores = engine.run(&input_i8)?;
//! ```
//!
//! Module map (a folder per layer):
//! - [`format`]: the backbone (`.gnb`) and patch (`.gnp`) wire formats,
//!   parsed through checked views and written by the same code (`emit`).
//!   Normative spec: `FORMAT.md` next to this crate's `Cargo.toml`.
//! - [`quant`]: the 16-bit canonical codes for per-channel weight scales and
//!   biases, and the derivation of fixed-point requantization parameters.
//! - [`kernels`]: scalar reference int8 kernels; SIMD kernels plug in over them.
//! - [`engine`]: applies a patch over the backbone and runs inference.
//!
//! Features: `std` (host conveniences), `verify` (Ed25519-signed blobs:
//! `Backbone::parse_verified`, `Patch::parse_verified`,
//! `Engine::new_verified`; see [`format::signature`]).
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod engine;
pub mod error;
pub mod format;
pub mod kernels;
pub mod quant;

/// This crate's version (`Cargo.toml`), which devices report (the device
/// protocol's `Info.runtime`).
pub const RUNTIME_VERSION: &str = env!("CARGO_PKG_VERSION");

pub use engine::{Engine, Requant, Scores};
pub use error::{Error, FormatError, RunError};
pub use format::backbone::Backbone;
pub use format::patch::Patch;
#[cfg(feature = "verify")]
pub use format::signature::{SigningKey, VerifyKey};
