//! Int8 kernels: a complete table of scalar reference kernels, over which
//! ISA-specific kernels are plugged in entry by entry.
//!
//! Contract of every kernel: activations are NHWC int8; padded input cells
//! read as the input zero point (real 0); each output value is
//! `clamp(zp_out + requant(acc + bias[c]), lo, hi)` with the crate's one
//! rounding rule (`quant::apply_multiplier`). The scalar kernels define the
//! results; any other kernel must reproduce them bit for bit, for every
//! int8 input and weight (including −128) and every parameter the engine
//! derives (`1 <= shift <= 62`, `|bias| <= 2^30`, rows of at most 32768
//! weights; see `FORMAT.md`). Kernels check slice lengths against the
//! geometry and panic, like the scalar ones, when a slice is too short.
//!
//! Weight layouts are the blob's (`FORMAT.md`), used in place: dense
//! `[cout][kh][kw][cin/groups]`, depthwise `[kh][kw][c]`. Both GEMM operands
//! of a 1x1 convolution are therefore contiguous along the reduction axis
//! (a pixel's channels, a channel's weights), and the SIMD kernels are built
//! around that "dot-product" layout instead of packing weights, because the
//! weights live in flash or come from a patch and must not be copied per call.
//!
//! Tables ([`Kernels`]): `scalar` (reference, every target, `scalar.rs`),
//! `avx2` and `avx512vnni` (x86_64, `x86_64/`), `neon` and `dotprod`
//! (aarch64, `aarch64/`), `dsp` (Armv7E-M: Cortex-M4, M7, `armv7em/`). Each
//! ISA table has its own GEMM and depthwise kernels; the GEMM tiles share
//! the drivers of `gemm.rs` (im2col, fully connected rows), the SIMD adds
//! the 16-lane driver `add_blocks16`. [`Kernels::best`] picks once per
//! process; [`Kernels::by_name`] gives a table only when the
//! CPU supports it. CPU features are tokens ([`cpu`]): a token's existence
//! proves the feature, so a table built from one is safe to call.
//!
//! Stack use: the SIMD kernels keep scratch buffers on the stack (at most
//! about 64 KiB: an im2col block, padded weights and, with `dotprod`, a
//! 16 KiB block of re-arranged weights; about 10 KiB for `dsp`), never on a
//! heap.
//!
//! Outside the table, two task-switch kernels: [`derive`](mod@derive) (the conv
//! channels' requantization parameters when a patch is applied) and
//! [`crc32`] (the blobs' checksum). Their results never depend on the CPU;
//! see `README.md` next to this file.

pub mod cpu;
pub mod crc32;
pub mod derive;
pub mod scalar;

// The SIMD drivers; unused on targets with only the scalar table.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
mod gemm;

#[cfg(target_arch = "x86_64")]
mod x86_64;

#[cfg(target_arch = "aarch64")]
mod aarch64;

#[cfg(all(target_arch = "arm", graftnet_dsp))]
mod armv7em;

#[cfg(any(test, feature = "selftest"))]
#[doc(hidden)]
pub mod selftest;

#[cfg(test)]
mod tests;

use crate::quant::ChannelRequant;

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
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pt == 0
            && self.pl == 0
            && self.groups == 1
    }
    /// A dense conv whose kernel covers the whole, unpadded input and gives
    /// one output pixel: a fully connected layer (one dot product per output
    /// channel over the `[h][w][c]` input, which is the weight row's layout).
    pub fn is_fully_connected(&self) -> bool {
        self.kh == self.ih
            && self.kw == self.iw
            && self.oh == 1
            && self.ow == 1
            && self.pt == 0
            && self.pl == 0
            && self.groups == 1
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
pub type ConvFn = fn(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp_in: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
);
/// Depthwise convolution; weights `[kh][kw][c]`.
pub type DwConvFn = ConvFn;
/// Elementwise add of two tensors ([`scalar::add`]'s parameters:
/// `a, b, za, ma, zb, mb, shift, q, out`).
pub type AddFn = fn(&[i8], &[i8], i32, i32, i32, i32, i32, OutQ, &mut [i8]);

/// Parameters of an add: `[za, ma, zb, mb, shift]` (see [`scalar::add`]).
pub(crate) type AddParams = [i32; 5];

/// The driver of the SIMD adds: `simd` runs on the longest prefix of whole
/// 16-element blocks (the `a`, `b`, `out` it gets have that length) when
/// the parameters are ones the engine derives (int8 zero points, shift
/// 1..=62); [`scalar::add`] does the rest.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn add_blocks16(
    a: &[i8],
    b: &[i8],
    p: AddParams,
    q: OutQ,
    out: &mut [i8],
    simd: impl FnOnce(&[i8], &[i8], AddParams, OutQ, &mut [i8]),
) {
    let [za, ma, zb, mb, shift] = p;
    let n = out.len().min(a.len()).min(b.len());
    let i8s = -128..=127;
    let n16 = if (1..=62).contains(&shift) && i8s.contains(&za) && i8s.contains(&zb) {
        n & !15
    } else {
        0
    };
    simd(&a[..n16], &b[..n16], p, q, &mut out[..n16]);
    scalar::add(
        &a[n16..n],
        &b[n16..n],
        za,
        ma,
        zb,
        mb,
        shift,
        q,
        &mut out[n16..n],
    );
}

/// Names of the kernels a table holds, `isa_op_types_tile` (for reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelNames {
    /// name of [`Kernels::pointwise`]
    pub pointwise: &'static str,
    /// name of [`Kernels::conv`]
    pub conv: &'static str,
    /// name of [`Kernels::dwconv`]
    pub dwconv: &'static str,
    /// name of [`Kernels::fc`]
    pub fc: &'static str,
}

/// The kernel table. [`Kernels::scalar`] is the reference; [`Kernels::best`]
/// is the fastest table for this CPU (chosen once).
#[derive(Clone, Copy)]
pub struct Kernels {
    /// name of the table ("scalar", "avx2", "avx512vnni", "neon", "dotprod", "dsp")
    pub name: &'static str,
    /// 1x1 stride-1 dense convolution ([`ConvGeom::is_pointwise`])
    pub pointwise: ConvFn,
    /// any dense / grouped convolution
    pub conv: ConvFn,
    /// depthwise convolution
    pub dwconv: DwConvFn,
    /// fully connected layer ([`ConvGeom::is_fully_connected`])
    pub fc: ConvFn,
    /// elementwise (residual) add; `*_add_i8_16` in `avx512vnni`, `neon`
    /// and `dotprod`, the scalar one in `scalar`, `avx2` and `dsp`
    pub add: AddFn,
    /// the kernels' names
    pub names: KernelNames,
}

impl core::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kernels")
            .field("name", &self.name)
            .field("names", &self.names)
            .finish()
    }
}

/// Every table name, fastest last (the order [`Kernels::best`] tries in reverse).
pub const TABLE_NAMES: [&str; 6] = ["scalar", "dsp", "neon", "dotprod", "avx2", "avx512vnni"];

/// Environment variable that overrides [`Kernels::best`] (with `std`).
pub const ENV_KERNELS: &str = "GRAFTNET_KERNELS";

impl Kernels {
    /// The scalar reference table.
    pub const fn scalar() -> Self {
        Kernels {
            name: "scalar",
            pointwise: scalar::conv,
            conv: scalar::conv,
            dwconv: scalar::dwconv,
            fc: scalar::conv,
            add: scalar::add,
            names: KernelNames {
                pointwise: "scalar_conv_i8i32",
                conv: "scalar_conv_i8i32",
                dwconv: "scalar_dwconv_i8i32",
                fc: "scalar_conv_i8i32",
            },
        }
    }

    /// The AVX2 table (x86_64).
    #[cfg(target_arch = "x86_64")]
    pub fn avx2(t: cpu::Avx2) -> Self {
        x86_64::avx2::table(t)
    }

    /// The AVX-512 VNNI table (x86_64).
    #[cfg(target_arch = "x86_64")]
    pub fn avx512vnni(t: cpu::Avx512Vnni) -> Self {
        x86_64::avx512vnni::table(t)
    }

    /// The NEON table (aarch64, e.g. Cortex-A72).
    #[cfg(target_arch = "aarch64")]
    pub fn neon(t: cpu::Neon) -> Self {
        aarch64::table(t)
    }

    /// The dotprod (SDOT) table (aarch64, Cortex-A76 and later); depthwise
    /// other than 3x3 and the add are NEON's.
    #[cfg(target_arch = "aarch64")]
    pub fn dotprod(t: cpu::Dotprod) -> Self {
        aarch64::dotprod_table(t)
    }

    /// The Armv7E-M DSP table (`smlad`; Cortex-M4, M7).
    #[cfg(all(target_arch = "arm", graftnet_dsp))]
    pub fn dsp(t: cpu::Dsp) -> Self {
        armv7em::dsp::table(t)
    }

    /// The table called `name` if this CPU supports it (`None` for unknown
    /// names and for ISAs this CPU or target lacks).
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "scalar" => Some(Self::scalar()),
            #[cfg(target_arch = "x86_64")]
            "avx2" => cpu::Avx2::try_new().map(Self::avx2),
            #[cfg(target_arch = "x86_64")]
            "avx512vnni" => cpu::Avx512Vnni::try_new().map(Self::avx512vnni),
            #[cfg(target_arch = "aarch64")]
            "neon" => cpu::Neon::try_new().map(Self::neon),
            #[cfg(target_arch = "aarch64")]
            "dotprod" => cpu::Dotprod::try_new().map(Self::dotprod),
            #[cfg(all(target_arch = "arm", graftnet_dsp))]
            "dsp" => cpu::Dsp::try_new().map(Self::dsp),
            _ => None,
        }
    }

    /// Every table this CPU supports, reference first, fastest last.
    pub fn available() -> impl Iterator<Item = Kernels> {
        TABLE_NAMES.iter().filter_map(|n| Self::by_name(n))
    }

    /// The fastest table this CPU supports, chosen once per process. With
    /// `std`, the environment variable `GRAFTNET_KERNELS` (a table name)
    /// overrides the choice when that table is supported.
    pub fn best() -> Self {
        use core::sync::atomic::{AtomicUsize, Ordering};
        // 0: not chosen yet; else 1 + index into TABLE_NAMES.
        static CHOSEN: AtomicUsize = AtomicUsize::new(0);
        let i = CHOSEN.load(Ordering::Relaxed);
        if i != 0 {
            if let Some(k) = Self::by_name(TABLE_NAMES[i - 1]) {
                return k;
            }
        }
        let k = Self::choose();
        let idx = TABLE_NAMES.iter().position(|n| *n == k.name).unwrap_or(0);
        CHOSEN.store(idx + 1, Ordering::Relaxed);
        k
    }

    fn choose() -> Self {
        #[cfg(feature = "std")]
        if let Ok(name) = std::env::var(ENV_KERNELS) {
            if let Some(k) = Self::by_name(name.trim()) {
                return k;
            }
        }
        let mut best = Self::scalar();
        for k in Self::available() {
            best = k;
        }
        best
    }
}

/// Panics unless the slices hold what a dense / grouped conv of geometry `g`
/// reads and writes. The SIMD kernels call this before any unchecked access.
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn check_conv(input: &[i8], w: &[u8], g: &ConvGeom, rq: &[ChannelRequant], out: &[i8]) {
    assert!(
        g.groups >= 1 && g.cin.is_multiple_of(g.groups) && g.cout.is_multiple_of(g.groups),
        "conv: groups must divide the channels"
    );
    assert!(input.len() >= g.ih * g.iw * g.cin, "conv: input too short");
    assert!(w.len() >= g.cout * g.row_len(), "conv: weights too short");
    assert!(
        rq.len() >= g.cout,
        "conv: too few requantization parameters"
    );
    assert!(out.len() >= g.oh * g.ow * g.cout, "conv: output too short");
}

/// Panics unless the slices hold what a depthwise conv of geometry `g` reads
/// and writes (channels `g.cout`, weights `[kh][kw][c]`).
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
pub(crate) fn check_dwconv(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    rq: &[ChannelRequant],
    out: &[i8],
) {
    let c = g.cout;
    assert!(input.len() >= g.ih * g.iw * c, "dwconv: input too short");
    assert!(w.len() >= g.kh * g.kw * c, "dwconv: weights too short");
    assert!(rq.len() >= c, "dwconv: too few requantization parameters");
    assert!(out.len() >= g.oh * g.ow * c, "dwconv: output too short");
}
