//! CPU features as tokens: holding an [`Avx2`] (say) proves that the running
//! CPU executes AVX2, which is what makes the kernel tables built from it
//! safe to call.
//!
//! `try_new()` detects: at run time with `std` (`is_x86_feature_detected!`,
//! `is_aarch64_feature_detected!`), else from the compile-time target
//! features (`-C target-cpu=...` / `-C target-feature=+...`). On bare metal,
//! where neither knows the part, `unsafe new_unchecked()` asserts it.

macro_rules! token {
    ($(#[$doc:meta])* $name:ident, $arch:literal, [$($feat:tt),+], $detect:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name(());

        #[cfg(target_arch = $arch)]
        impl $name {
            /// Detects the feature; `None` when the CPU lacks it.
            pub fn try_new() -> Option<Self> {
                #[cfg(feature = "std")]
                {
                    if true $(&& std::arch::$detect!($feat))+ {
                        return Some($name(()));
                    }
                    None
                }
                #[cfg(not(feature = "std"))]
                {
                    if true $(&& cfg!(target_feature = $feat))+ {
                        Some($name(()))
                    } else {
                        None
                    }
                }
            }
            /// The token without detection.
            ///
            /// # Safety
            ///
            /// The running CPU must support every feature this token stands
            /// for; kernels built from the token execute those instructions.
            #[allow(unsafe_code)] // declaring the contract; nothing unsafe happens here
            pub unsafe fn new_unchecked() -> Self {
                $name(())
            }
        }
    };
}

token!(
    /// x86_64 AVX2.
    Avx2, "x86_64", ["avx2"], is_x86_feature_detected
);
token!(
    /// x86_64 AVX-512 with VNNI (`vpdpbusd`), plus the F/BW/VL subsets and
    /// AVX2 the kernels also use (Ice Lake, Zen 4 and later).
    Avx512Vnni, "x86_64", ["avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni"], is_x86_feature_detected
);
token!(
    /// aarch64 Advanced SIMD (baseline on every aarch64 Linux target).
    Neon, "aarch64", ["neon"], is_aarch64_feature_detected
);
token!(
    /// aarch64 dot product (`sdot`; Cortex-A76, A78AE, A55 and later).
    Dotprod, "aarch64", ["neon", "dotprod"], is_aarch64_feature_detected
);

token!(
    /// x86_64 carry-less multiply (`pclmulqdq`) with SSE4.1: the CRC-32
    /// kernel (every x86_64 CPU since about 2010).
    Pclmul, "x86_64", ["sse2", "sse4.1", "pclmulqdq"], is_x86_feature_detected
);
token!(
    /// aarch64 CRC32 instructions (`crc32x`; Cortex-A53, A72, A76 and later).
    Crc, "aarch64", ["crc"], is_aarch64_feature_detected
);

#[cfg(target_arch = "x86_64")]
impl Avx512Vnni {
    /// An AVX-512 VNNI CPU also runs AVX2.
    pub fn avx2(self) -> Avx2 {
        Avx2(())
    }
}

#[cfg(target_arch = "aarch64")]
impl Dotprod {
    /// A dotprod CPU also runs NEON.
    pub fn neon(self) -> Neon {
        Neon(())
    }
}

/// Armv7E-M DSP extension (`smlad`, `sxtb16`, `smmul`, `pkhbt`, `qadd`:
/// Cortex-M4, M7, and M33/M55 built with DSP).
///
/// Detected at compile time only, with or without `std`: Rust has no stable
/// run-time detection on arm. The runtime's `build.rs` sets
/// `cfg(graftnet_dsp)` from `cfg(target_feature = "dsp")`; a stable
/// compiler does not report arm target features, so there `build.rs` falls
/// back to the target name (every `thumbv7em-*` core has DSP). The crate
/// is then compiled for a DSP core as a whole.
#[derive(Clone, Copy, Debug)]
pub struct Dsp(());

#[cfg(target_arch = "arm")]
impl Dsp {
    /// The token when the crate is compiled for a DSP core (see the type
    /// doc); `None` otherwise.
    pub fn try_new() -> Option<Self> {
        if cfg!(graftnet_dsp) {
            Some(Dsp(()))
        } else {
            None
        }
    }
    /// The token without detection.
    ///
    /// # Safety
    ///
    /// The running CPU must execute the DSP instructions. Without
    /// `cfg(graftnet_dsp)` there is no DSP table to build from it.
    #[allow(unsafe_code)] // declaring the contract; nothing unsafe happens here
    pub unsafe fn new_unchecked() -> Self {
        Dsp(())
    }
}
