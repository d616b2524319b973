//! Kernel self-test without `std` or a heap: every entry of a kernel table
//! against the scalar reference, bit for bit, for targets where `cargo
//! test` cannot run. The Cortex-M firmwares (`targets/mcu`) run it under
//! qemu-system-arm for the `dsp` table; the host tests run it on every
//! table they have, and check that it catches broken kernels.
//!
//! Cases: shape tables (0 where legal, 1, tile−1, tile, tile+1, primes;
//! strides 1 and 2; asymmetric padding; groups; taps beyond a kernel's
//! limit, which fall back to scalar) and seeded random cases (zero points,
//! multipliers including 0, shifts 1..=62, biases up to 2^30, clamps, input
//! and weight buffers full of −128 and 127). Output buffers are longer than
//! the output; the tail must keep its canary. Buffers live in a [`Scratch`]
//! the caller places (`.bss` on an MCU), so the shapes are bounded by its
//! capacities; the case list is fixed (seeded), so a run always checks the
//! same cases. `tests.rs` remains the exhaustive host suite.
//!
//! Feature `selftest` (and `cfg(test)`); hidden from the docs, not a stable
//! API.

// A mismatch ends the run and is reported once; there is no heap to box it.
#![allow(clippy::result_large_err)]

use core::fmt;

use super::{scalar, ConvFn, ConvGeom, Kernels, OutQ};
use crate::quant::ChannelRequant;
use crate::splitmix::SplitMix64 as Rng;

/// Input bytes a case may use.
pub const INPUT_MAX: usize = 16 * 1024;
/// Weight bytes a case may use.
pub const WEIGHTS_MAX: usize = 64 * 1024;
/// Output bytes a case may use (plus [`GUARD`]).
pub const OUT_MAX: usize = 16 * 1024;
/// Output channels (requantization entries) a case may use.
pub const CHANNELS_MAX: usize = 512;
/// Bytes past the output that must stay untouched.
pub const GUARD: usize = 67;
const CANARY: i8 = 0x5a;

/// The buffers of a run (about 118 KiB).
pub struct Scratch {
    input: [i8; INPUT_MAX],
    w: [u8; WEIGHTS_MAX],
    rq: [ChannelRequant; CHANNELS_MAX],
    want: [i8; OUT_MAX + GUARD],
    got: [i8; OUT_MAX + GUARD],
}

impl Scratch {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        Scratch {
            input: [0; INPUT_MAX],
            w: [0; WEIGHTS_MAX],
            rq: [ChannelRequant {
                mult: 0,
                shift: 0,
                bias: 0,
            }; CHANNELS_MAX],
            want: [0; OUT_MAX + GUARD],
            got: [0; OUT_MAX + GUARD],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// Which entry of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// [`Kernels::pointwise`]
    Pointwise,
    /// [`Kernels::conv`]
    Conv,
    /// [`Kernels::fc`]
    Fc,
    /// [`Kernels::dwconv`]
    DwConv,
}

impl Entry {
    fn kernel(self, k: &Kernels) -> (ConvFn, &'static str) {
        match self {
            Entry::Pointwise => (k.pointwise, k.names.pointwise),
            Entry::Conv => (k.conv, k.names.conv),
            Entry::Fc => (k.fc, k.names.fc),
            Entry::DwConv => (k.dwconv, k.names.dwconv),
        }
    }
    fn index(self) -> usize {
        self as usize
    }
}

/// Cases run and passed, per entry (pointwise, conv, fc, dwconv).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// cases per [`Entry`], in declaration order
    pub cases: [usize; 4],
    /// multiply-accumulates of the kernel under test, over all cases
    pub macs: u64,
}

impl Summary {
    /// All cases.
    pub fn total(&self) -> usize {
        self.cases.iter().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [p, c, fc, dw] = self.cases;
        write!(
            f,
            "{} cases ({p} pointwise, {c} conv, {fc} fc, {dw} dwconv; {} MACs)",
            self.total(),
            self.macs
        )
    }
}

/// The first difference from the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// the table
    pub table: &'static str,
    /// the kernel's name
    pub kernel: &'static str,
    /// the entry
    pub entry: Entry,
    /// the case's number (0-based, over the whole run)
    pub case: usize,
    /// geometry
    pub geom: ConvGeom,
    /// input zero point
    pub zp_in: i8,
    /// output quantization
    pub q: OutQ,
    /// byte of the output buffer (at or past the output: the guard tail)
    pub index: usize,
    /// the requantization of that byte's channel (`None` in the guard tail)
    pub rq: Option<ChannelRequant>,
    /// what the kernel wrote
    pub got: i8,
    /// what the reference wrote
    pub want: i8,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = &self.geom;
        let n = g.oh * g.ow * g.cout;
        write!(
            f,
            "{} {} ({:?}) case {}: byte {}{}: got {} want {}; {:?} zp_in {} {:?} rq {:?}",
            self.table,
            self.kernel,
            self.entry,
            self.case,
            self.index,
            if self.index >= n { " (guard tail)" } else { "" },
            self.got,
            self.want,
            g,
            self.zp_in,
            self.q,
            self.rq
        )
    }
}

/// The case generator of the self-test and of the host tests (`tests.rs`):
/// inputs, weights, requantization and output parameters, drawn from the
/// crate's one generator.
pub(crate) trait Cases {
    /// Fills `out` with int8 values (see [`Rng`]'s impl).
    fn bytes(&mut self, out: &mut [i8]);
    /// Fills `out` with weights.
    fn weights(&mut self, out: &mut [u8]);
    /// Fills `out` with requantization parameters.
    fn requant(&mut self, out: &mut [ChannelRequant], wild: bool);
    /// An output zero point and clamp.
    fn out_q(&mut self) -> OutQ;
}

impl Cases for Rng {
    /// Mostly uniform; every 4th buffer leans on the extremes, every 16th
    /// is all −128 or all 127 (the largest accumulators).
    fn bytes(&mut self, out: &mut [i8]) {
        match self.next_u64() % 16 {
            0 => out.fill(if self.next_u64().is_multiple_of(2) {
                -128
            } else {
                127
            }),
            1..=3 => {
                for b in out.iter_mut() {
                    *b = if self.next_u64().is_multiple_of(2) {
                        self.pick(&[-128i8, 127, -127, 0])
                    } else {
                        self.next_u64() as i8
                    };
                }
            }
            _ => out.iter_mut().for_each(|b| *b = self.next_u64() as i8),
        }
    }
    /// Every other buffer in the exporter's range [−127, 127], the others
    /// any int8.
    fn weights(&mut self, out: &mut [u8]) {
        let symmetric = self.next_u64().is_multiple_of(2);
        let mut b = [0i8; 64];
        for chunk in out.chunks_mut(64) {
            let b = &mut b[..chunk.len()];
            self.bytes(b);
            for (o, &v) in chunk.iter_mut().zip(b.iter()) {
                *o = if symmetric { v.max(-127) } else { v } as u8;
            }
        }
    }
    /// Parameters the engine can derive: `|mult|` in `[2^30, 2^31)` or 0,
    /// shift 1..=62 (mostly 31..=45), `|bias| <= 2^30`.
    fn requant(&mut self, out: &mut [ChannelRequant], wild: bool) {
        for r in out {
            let mag = self.range(1 << 30, (1i64 << 31) - 1);
            let mult = match self.next_u64() % 16 {
                0 => 0,
                1..=5 => -mag,
                _ => mag,
            } as i32;
            let shift = if wild && self.next_u64().is_multiple_of(3) {
                self.range(1, 62)
            } else {
                self.range(31, 45)
            } as i32;
            let bias = match self.next_u64() % 8 {
                0 => self.range(-(1 << 30), 1 << 30),
                1 => 0,
                _ => self.range(-100_000, 100_000),
            } as i32;
            *r = ChannelRequant { mult, shift, bias };
        }
    }
    fn out_q(&mut self) -> OutQ {
        let zp = self.range(-128, 127) as i32;
        match self.next_u64() % 3 {
            0 => OutQ {
                zp,
                lo: -128,
                hi: 127,
            },
            1 => OutQ {
                zp,
                lo: zp.max(-128),
                hi: self.range(zp as i64, 127) as i32,
            },
            _ => {
                let lo = self.range(-128, 127) as i32;
                OutQ {
                    zp,
                    lo,
                    hi: self.range(lo as i64, 127) as i32,
                }
            }
        }
    }
}

/// The geometry of a conv case (`pad`: top, left, bottom, right), shared
/// with the host tests.
#[allow(clippy::too_many_arguments)]
pub(crate) fn geom(
    ih: usize,
    iw: usize,
    cin: usize,
    cout: usize,
    k: (usize, usize),
    s: (usize, usize),
    pad: [usize; 4],
    groups: usize,
) -> ConvGeom {
    let [pt, pl, pb, pr] = pad;
    let out =
        |i: usize, p: usize, k: usize, s: usize| if i + p >= k { (i + p - k) / s + 1 } else { 0 };
    ConvGeom {
        ih,
        iw,
        cin,
        oh: out(ih, pt + pb, k.0, s.0),
        ow: out(iw, pl + pr, k.1, s.1),
        cout,
        kh: k.0,
        kw: k.1,
        sh: s.0,
        sw: s.1,
        pt,
        pl,
        groups,
    }
}

/// Runs the cases of one table.
struct Run<'a> {
    s: &'a mut Scratch,
    k: Kernels,
    sum: Summary,
}

impl Run<'_> {
    /// One random case of `entry` with geometry `g`; cases that do not fit
    /// the scratch buffers are left out (the same ones on every run).
    fn case(
        &mut self,
        r: &mut Rng,
        entry: Entry,
        g: &ConvGeom,
        wild: bool,
    ) -> Result<(), Mismatch> {
        let dw = entry == Entry::DwConv;
        let (n_in, n_w) = if dw {
            (g.ih * g.iw * g.cout, g.kh * g.kw * g.cout)
        } else {
            (g.ih * g.iw * g.cin, g.cout * g.row_len())
        };
        let n_out = g.oh * g.ow * g.cout;
        if n_in > INPUT_MAX || n_w > WEIGHTS_MAX || n_out > OUT_MAX || g.cout > CHANNELS_MAX {
            return Ok(());
        }
        let s = &mut *self.s;
        r.bytes(&mut s.input[..n_in]);
        r.weights(&mut s.w[..n_w]);
        r.requant(&mut s.rq[..g.cout], wild);
        let q = r.out_q();
        let zp = r.next_u64() as i8;
        let reference = if dw { scalar::dwconv } else { scalar::conv };
        let (kernel, name) = entry.kernel(&self.k);
        let (input, w, rq) = (&s.input[..n_in], &s.w[..n_w], &s.rq[..g.cout]);
        let want = &mut s.want[..n_out + GUARD];
        let got = &mut s.got[..n_out + GUARD];
        want.fill(CANARY);
        got.fill(CANARY);
        reference(input, w, g, zp, rq, q, want);
        kernel(input, w, g, zp, rq, q, got);
        let case = self.sum.total();
        if let Some(i) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
            return Err(Mismatch {
                table: self.k.name,
                kernel: name,
                entry,
                case,
                geom: *g,
                zp_in: zp,
                q,
                index: i,
                rq: if i < n_out {
                    Some(rq[i % g.cout])
                } else {
                    None
                },
                got: got[i],
                want: want[i],
            });
        }
        self.sum.cases[entry.index()] += 1;
        let per_out = if dw { g.kh * g.kw } else { g.row_len() };
        self.sum.macs += (n_out * per_out) as u64;
        Ok(())
    }

    fn pointwise_shapes(&mut self) -> Result<(), Mismatch> {
        let mut r = Rng(1);
        // DSP tiles 2x2 / 1x4 over k steps of 4; SIMD tiles up to 6x16.
        for &cin in &[0, 1, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33] {
            for &cout in &[0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 17] {
                for &(h, w) in &[(1, 1), (1, 2), (1, 3), (2, 2), (1, 5), (3, 3), (1, 7)] {
                    let g = geom(h, w, cin, cout, (1, 1), (1, 1), [0; 4], 1);
                    self.case(&mut r, Entry::Pointwise, &g, false)?;
                    self.case(&mut r, Entry::Conv, &g, true)?;
                }
            }
        }
        // zero pixels
        let g = ConvGeom {
            oh: 0,
            ow: 0,
            ..geom(1, 1, 8, 8, (1, 1), (1, 1), [0; 4], 1)
        };
        self.case(&mut r, Entry::Pointwise, &g, false)
    }

    fn conv_shapes(&mut self) -> Result<(), Mismatch> {
        let mut r = Rng(2);
        // (cin, cout, kernel, stride, pads t l b r, groups)
        type Case = (
            usize,
            usize,
            (usize, usize),
            (usize, usize),
            [usize; 4],
            usize,
        );
        let cases: &[Case] = &[
            (3, 32, (3, 3), (2, 2), [1, 1, 1, 1], 1), // MobileNet stem
            (3, 16, (3, 3), (2, 2), [0, 0, 1, 1], 1), // TF "same" padding
            (3, 8, (3, 3), (1, 1), [1, 1, 1, 1], 1),
            (3, 17, (3, 3), (2, 2), [1, 1, 1, 1], 1),
            (1, 5, (3, 3), (1, 1), [1, 1, 1, 1], 1),
            (4, 7, (5, 5), (2, 2), [2, 2, 2, 2], 1),
            (8, 9, (2, 3), (1, 2), [0, 1, 0, 1], 1),
            (17, 4, (3, 3), (2, 1), [2, 0, 0, 2], 1),
            (8, 8, (1, 1), (2, 2), [0, 0, 0, 0], 1), // strided 1x1
            (24, 33, (1, 1), (2, 1), [0, 0, 0, 0], 1),
            (8, 12, (1, 1), (1, 1), [0, 0, 0, 0], 2), // grouped 1x1
            (12, 12, (1, 1), (1, 1), [0, 0, 0, 0], 4),
            (8, 16, (3, 3), (1, 1), [1, 1, 1, 1], 2), // grouped 3x3
            (9, 6, (3, 3), (2, 2), [1, 1, 1, 1], 3),
            (6, 6, (1, 1), (1, 1), [1, 1, 1, 1], 1), // padded 1x1
            (32, 24, (3, 3), (1, 1), [1, 1, 1, 1], 1),
            (301, 3, (3, 3), (1, 1), [1, 1, 1, 1], 1), // weights too big to pad: scalar k tail
            (1000, 1, (3, 3), (1, 1), [1, 1, 1, 1], 1), // row 9000: beyond an 8 KiB im2col block
        ];
        for &(cin, cout, ks, s, pad, groups) in cases {
            for &(h, w) in &[(1, 1), (2, 2), (3, 3), (4, 5), (7, 7), (8, 9)] {
                let g = geom(h, w, cin, cout, ks, s, pad, groups);
                self.case(&mut r, Entry::Conv, &g, true)?;
                if g.is_pointwise() {
                    self.case(&mut r, Entry::Pointwise, &g, true)?;
                }
            }
        }
        // The stem of a 32x32 MobileNetV2 and a longer stripe.
        let g = geom(32, 32, 3, 16, (3, 3), (2, 2), [1, 1, 1, 1], 1);
        self.case(&mut r, Entry::Conv, &g, false)?;
        let g = geom(3, 200, 3, 8, (3, 3), (1, 1), [1, 1, 1, 1], 1);
        self.case(&mut r, Entry::Conv, &g, true)
    }

    fn fc_shapes(&mut self) -> Result<(), Mismatch> {
        let mut r = Rng(3);
        for &(h, w, c, cout) in &[
            (1, 1, 1280, 10),
            (1, 1, 448, 100),
            (1, 1, 1, 1),
            (1, 1, 7, 3),
            (3, 3, 7, 5),
            (2, 2, 3, 1),
            (1, 1, 16, 16),
            (1, 1, 17, 33),
            (1, 1, 5, 6),
            (4, 4, 64, 9),
        ] {
            let g = geom(h, w, c, cout, (h, w), (1, 1), [0; 4], 1);
            self.case(&mut r, Entry::Fc, &g, true)?;
            self.case(&mut r, Entry::Conv, &g, true)?;
            if g.is_pointwise() {
                self.case(&mut r, Entry::Pointwise, &g, true)?;
            }
        }
        Ok(())
    }

    fn dwconv_shapes(&mut self) -> Result<(), Mismatch> {
        let mut r = Rng(4);
        // DSP: 4 channels per step, chunks of 64; SIMD: 16 per register.
        let chans = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17, 63, 64, 65, 67, 129];
        type Case = ((usize, usize), (usize, usize), [usize; 4]);
        let cases: &[Case] = &[
            ((3, 3), (1, 1), [1, 1, 1, 1]),
            ((3, 3), (2, 2), [1, 1, 1, 1]),
            ((3, 3), (2, 2), [0, 0, 1, 1]),
            ((3, 3), (1, 1), [0, 0, 0, 0]),
            ((5, 5), (2, 2), [2, 2, 2, 2]),
            ((1, 1), (1, 1), [0, 0, 0, 0]),
            ((2, 3), (1, 2), [1, 0, 0, 1]),
            ((7, 7), (1, 1), [3, 3, 3, 3]), // 49 taps: the DSP kernel's scalar path
        ];
        for &c in &chans {
            for &(ks, s, pad) in cases {
                for &(h, w) in &[(1, 1), (2, 2), (3, 3), (4, 5), (7, 7)] {
                    let g = geom(h, w, c, c, ks, s, pad, c);
                    self.case(&mut r, Entry::DwConv, &g, c % 3 == 0)?;
                }
            }
        }
        let g = ConvGeom {
            oh: 0,
            ow: 0,
            ..geom(3, 3, 16, 16, (3, 3), (1, 1), [1; 4], 16)
        };
        self.case(&mut r, Entry::DwConv, &g, false)
    }

    fn random_dense(&mut self, seed: u64, cases: usize) -> Result<(), Mismatch> {
        let mut r = Rng(seed);
        for _ in 0..cases {
            let groups = r.pick(&[1, 1, 1, 1, 2, 3]);
            let cin = groups * r.range(1, 24) as usize;
            let cout = groups * r.range(1, 24) as usize;
            let (kh, kw) = (r.range(1, 4) as usize, r.range(1, 4) as usize);
            let s = (r.range(1, 2) as usize, r.range(1, 2) as usize);
            let pad = [0; 4].map(|_| r.range(0, 2) as usize);
            let (ih, iw) = (r.range(1, 8) as usize, r.range(1, 8) as usize);
            let g = geom(ih, iw, cin, cout, (kh, kw), s, pad, groups);
            self.case(&mut r, Entry::Conv, &g, true)?;
            if g.is_pointwise() {
                self.case(&mut r, Entry::Pointwise, &g, true)?;
            }
            let fc = geom(ih, iw, cin, cout, (ih, iw), (1, 1), [0; 4], 1);
            self.case(&mut r, Entry::Fc, &fc, true)?;
            let pw = geom(ih, iw, cin, cout, (1, 1), (1, 1), [0; 4], 1);
            self.case(&mut r, Entry::Pointwise, &pw, true)?;
        }
        Ok(())
    }

    fn random_dw(&mut self, seed: u64, cases: usize) -> Result<(), Mismatch> {
        let mut r = Rng(seed);
        for _ in 0..cases {
            let c = r.range(1, 150) as usize;
            let kh = r.pick(&[1, 3, 3, 3, 5]);
            let kw = if r.next_u64().is_multiple_of(4) {
                r.range(1, 5) as usize
            } else {
                kh
            };
            let s = r.pick(&[(1, 1), (2, 2), (1, 2)]);
            let pad = [0; 4].map(|_| r.range(0, 2) as usize);
            let (ih, iw) = (r.range(1, 9) as usize, r.range(1, 9) as usize);
            let g = geom(ih, iw, c, c, (kh, kw), s, pad, c);
            self.case(&mut r, Entry::DwConv, &g, true)?;
        }
        Ok(())
    }
}

/// Seeded random cases per kind (dense: each draws a conv, an fc and a
/// pointwise case; depthwise).
pub const RANDOM_CASES: usize = 200;

/// Runs every case of the self-test on table `k`; the first mismatch ends
/// the run.
pub fn run(k: Kernels, s: &mut Scratch) -> Result<Summary, Mismatch> {
    let mut run = Run {
        s,
        k,
        sum: Summary::default(),
    };
    run.pointwise_shapes()?;
    run.conv_shapes()?;
    run.fc_shapes()?;
    run.dwconv_shapes()?;
    run.random_dense(11, RANDOM_CASES)?;
    run.random_dw(12, RANDOM_CASES)?;
    Ok(run.sum)
}
