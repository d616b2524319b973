//! `graftnet learn`: the paper's method — train only a model patch (batch
//! norm scales and biases, depthwise kernels, the classifier, or
//! everything) through a frozen backbone — in Rust, on a CPU, for one task
//! or several together. The result is an ordinary ONNX task model that
//! `graftnet export` turns into a patch. See `tools/LEARN.md` for the
//! choices (why hand-written kernels and not candle/burn, batch-norm
//! statistics, schedule) and the measured results.
//!
//! Layers: [`kernels`] (convolution and elementwise numerics, forward and
//! backward), [`norm`] (batch-norm and other per-channel passes), [`par`]
//! (deterministic threading), [`net`] (the trainable
//! network built from an imported graph), [`train`] (the loop),
//! [`onnx_out`] (the writer), [`cli`] (the command).

// Tile loops (used by `kernels` and `norm`): plain index loops over slices cut to one length, with
// scalars in locals, so LLVM vectorizes them (the zip chains they replace
// compiled to scalar code reloading pointers every element). Each is
// compiled three times: for the baseline x86-64 (SSE2), with AVX2 and with
// AVX-512F enabled, chosen at run time. Rust never fuses a multiply and an
// add on its own and the loops keep one accumulator per element (no
// horizontal sums), so all three give the same bits.

/// Defines `fn $name` with AVX-512F and AVX2 builds of the same body
/// picked at run time on x86-64.
macro_rules! tile_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[inline(never)]
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512f") {
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                fn wide512($($a: $t),*) $body
                // SAFETY: the CPU has AVX-512F (checked just above);
                // `wide512` is the same safe code compiled for it.
                return unsafe { wide512($($a),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                fn wide($($a: $t),*) $body
                // SAFETY: the CPU has AVX2 (checked just above); `wide` is
                // the same safe code compiled for it.
                return unsafe { wide($($a),*) };
            }
            $body
        }
    };
}

pub mod cli;
pub mod kernels;
pub mod net;
pub mod norm;
pub mod onnx_out;
pub mod par;
pub mod train;

#[cfg(test)]
mod tests;

pub use net::{BnInit, Mode, Net, PatchKind};
pub use train::{Augment, Optimizer, TrainConfig};
