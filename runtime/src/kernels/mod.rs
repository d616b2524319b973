//! Int8 kernels: a complete table of scalar reference kernels, over which
//! ISA-specific kernels are plugged in entry by entry.
//!
//! Contract of every kernel: activations are NHWC int8; padded input cells
//! read as the input zero point (real 0); each output value is
//! `clamp(zp_out + requant(acc + bias[c]), lo, hi)` with the crate's one
//! rounding rule (`quant::apply_multiplier`). The scalar kernels define the
//! results; any other kernel must reproduce them bit for bit.

pub mod scalar;

use crate::engine::Requant;

/// Geometry of a convolution (NHWC, batch 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// input height
    pub ih: usize,
    /// input width
    pub iw: usize,
    /// input channels
    pub cin: usize,
    /// output height
    pub oh: usize,
    /// output width
    pub ow: usize,
    /// output channels
    pub cout: usize,
    /// kernel height
    pub kh: usize,
    /// kernel width
    pub kw: usize,
    /// stride (h)
    pub sh: usize,
    /// stride (w)
    pub sw: usize,
    /// padding top
    pub pt: usize,
    /// padding left
    pub pl: usize,
    /// groups
    pub groups: usize,
}

impl ConvGeom {
    /// A 1x1, stride-1, unpadded, dense conv: a GEMM over pixels.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.pt == 0 && self.pl == 0 && self.groups == 1
    }
    /// Weights per output channel.
    pub fn row_len(&self) -> usize {
        self.cin / self.groups * self.kh * self.kw
    }
}

/// Output quantization of an op: zero point and clamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutQ {
    /// zero point
    pub zp: i32,
    /// lowest output value
    pub lo: i32,
    /// highest output value
    pub hi: i32,
}

/// Dense / grouped convolution; weights `[cout][kh][kw][cin/groups]`.
pub type ConvFn = fn(input: &[i8], w: &[u8], g: &ConvGeom, zp_in: i8, rq: &[Requant], q: OutQ, out: &mut [i8]);
/// Depthwise convolution; weights `[kh][kw][c]`.
pub type DwConvFn = ConvFn;

/// The kernel table. [`Kernels::scalar`] is the reference; [`Kernels::best`]
/// is the fastest table for this CPU (chosen once).
#[derive(Clone, Copy)]
pub struct Kernels {
    /// name of the table ("scalar", ...)
    pub name: &'static str,
    /// 1x1 stride-1 dense convolution
    pub pointwise: ConvFn,
    /// any dense / grouped convolution
    pub conv: ConvFn,
    /// depthwise convolution
    pub dwconv: DwConvFn,
}

impl core::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kernels").field("name", &self.name).finish()
    }
}

impl Kernels {
    /// The scalar reference table.
    pub const fn scalar() -> Self {
        Kernels {
            name: "scalar",
            pointwise: scalar::conv,
            conv: scalar::conv,
            dwconv: scalar::dwconv,
        }
    }
    /// The best table for the running CPU.
    pub fn best() -> Self {
        Self::scalar()
    }
}
