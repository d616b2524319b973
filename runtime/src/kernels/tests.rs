//! Every entry of every kernel table against the scalar reference, bit for
//! bit: shape tables (0 where legal, 1, tile−1, tile, tile+1, primes; strides
//! 1 and 2; paddings; groups) and seeded random cases (zero points,
//! multipliers, shifts, biases, clamps). One macro call generates the tests
//! of a table; a table the CPU (or target) lacks is skipped, not failed.
//! Each kernel writes into a buffer longer than its output; the tail must
//! stay untouched.

extern crate std;

use std::vec;
use std::vec::Vec;

use super::selftest::{self, geom};
use super::{ConvFn, ConvGeom, Kernels, OutQ};
use crate::quant::ChannelRequant;
use crate::splitmix::SplitMix64 as Rng;

/// The host tests' buffers (heap-allocated; the self-test's
/// [`selftest::Cases`] fill fixed ones, and draw other values).
trait HostCases {
    fn bytes(&mut self, n: usize) -> Vec<i8>;
    fn weights(&mut self, n: usize) -> Vec<u8>;
}

impl HostCases for Rng {
    fn bytes(&mut self, n: usize) -> Vec<i8> {
        // Mostly uniform; every 4th buffer leans on the extremes (-128, 127).
        let extreme = self.next_u64().is_multiple_of(4);
        (0..n)
            .map(|_| {
                if extreme && self.next_u64().is_multiple_of(2) {
                    self.pick(&[-128i8, 127, -127, 0])
                } else {
                    self.next_u64() as i8
                }
            })
            .collect()
    }
    /// Weights: every other buffer in the exporter's range [−127, 127]
    /// (kernels may take faster paths then), the others any int8.
    fn weights(&mut self, n: usize) -> Vec<u8> {
        let symmetric = self.next_u64().is_multiple_of(2);
        self.bytes(n)
            .into_iter()
            .map(|b| if symmetric { b.max(-127) } else { b } as u8)
            .collect()
    }
}

/// Parameters the engine can derive ([`selftest::Cases::requant`], the
/// self-test's generator).
fn random_rq(r: &mut Rng, n: usize, wild: bool) -> Vec<ChannelRequant> {
    let mut v = vec![ChannelRequant::default(); n];
    selftest::Cases::requant(r, &mut v, wild);
    v
}

/// An output zero point and clamp ([`selftest::Cases::out_q`]).
fn random_q(r: &mut Rng) -> OutQ {
    selftest::Cases::out_q(r)
}

const CANARY: i8 = 0x5a;
const GUARD: usize = 67;

/// Runs `k` and the reference on one case and compares.
#[allow(clippy::too_many_arguments)]
fn check(
    what: &str,
    table: &str,
    k: ConvFn,
    reference: ConvFn,
    g: &ConvGeom,
    input: &[i8],
    w: &[u8],
    zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
) {
    let n = g.oh * g.ow * g.cout;
    let mut want = std::vec![CANARY; n + GUARD];
    let mut got = std::vec![CANARY; n + GUARD];
    reference(input, w, g, zp, rq, q, &mut want);
    k(input, w, g, zp, rq, q, &mut got);
    if got != want {
        let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
        let (p, c) = match (i.checked_div(g.cout), i.checked_rem(g.cout)) {
            (Some(p), Some(c)) => (p, c),
            _ => (0, 0),
        };
        panic!(
            "{table} {what}: mismatch at byte {i} (pixel {p}, channel {c}): got {} want {}\n{g:?} zp_in {zp} {q:?} rq[c] {:?}",
            got[i],
            want[i],
            rq.get(c)
        );
    }
}

/// One random case of a dense conv.
fn dense_case(r: &mut Rng, table: &str, what: &str, k: ConvFn, g: &ConvGeom, wild: bool) {
    let input = r.bytes(g.ih * g.iw * g.cin);
    let w = r.weights(g.cout * g.row_len());
    let rq = random_rq(r, g.cout, wild);
    let q = random_q(r);
    let zp = r.next_u64() as i8;
    check(
        what,
        table,
        k,
        super::scalar::conv,
        g,
        &input,
        &w,
        zp,
        &rq,
        q,
    );
}

fn dw_case(r: &mut Rng, table: &str, k: ConvFn, g: &ConvGeom, wild: bool) {
    let input = r.bytes(g.ih * g.iw * g.cout);
    let w = r.weights(g.kh * g.kw * g.cout);
    let rq = random_rq(r, g.cout, wild);
    let q = random_q(r);
    let zp = r.next_u64() as i8;
    check(
        "dwconv",
        table,
        k,
        super::scalar::dwconv,
        g,
        &input,
        &w,
        zp,
        &rq,
        q,
    );
}

// Tiles: AVX2 3x8 (k 8), AVX-512 VNNI 6x16 (k 16), NEON 4x4 (k 16),
// dotprod 4 pixels x 16 channels in steps of 4 bytes of k (k % 4 == 0, at
// least 4 pixels, k <= 1024; otherwise its 4x4), depthwise 16 channels in
// chunks of 128 (dotprod: 256).
const CIN: &[usize] = &[
    0, 1, 3, 4, 7, 8, 9, 12, 15, 16, 17, 20, 24, 28, 31, 32, 33, 44, 47, 64, 96,
];
const COUT: &[usize] = &[0, 1, 3, 4, 5, 7, 8, 9, 13, 15, 16, 17, 31, 32, 33];
const PIXELS: &[(usize, usize)] = &[
    (1, 1),
    (1, 2),
    (1, 3),
    (2, 2),
    (1, 5),
    (2, 3),
    (3, 3),
    (4, 4),
    (1, 7),
    (5, 5),
    (1, 13),
];

fn pointwise_shapes(k: Kernels) {
    let mut r = Rng(1);
    pointwise_grid(&mut r, k, CIN, COUT, PIXELS);
    // Long rows: the dotprod packed block holds k <= 1024.
    for &cin in &[1020, 1024, 1028] {
        for &cout in &[5, 16, 33] {
            let g = geom(2, 3, cin, cout, (1, 1), (1, 1), [0; 4], 1);
            dense_case(&mut r, k.name, "pointwise", k.pointwise, &g, true);
        }
    }
    pointwise_zero_pixels(&mut r, k);
}

/// Every `cin` x `cout` x pixels combination, as `pointwise` and as `conv`.
fn pointwise_grid(
    r: &mut Rng,
    k: Kernels,
    cins: &[usize],
    couts: &[usize],
    pixels: &[(usize, usize)],
) {
    for &cin in cins {
        for &cout in couts {
            for &(h, w) in pixels {
                let g = geom(h, w, cin, cout, (1, 1), (1, 1), [0; 4], 1);
                dense_case(r, k.name, "pointwise", k.pointwise, &g, false);
                dense_case(r, k.name, "conv(1x1)", k.conv, &g, true);
            }
        }
    }
}

fn pointwise_zero_pixels(r: &mut Rng, k: Kernels) {
    let g = ConvGeom {
        oh: 0,
        ow: 0,
        ..geom(1, 1, 8, 8, (1, 1), (1, 1), [0; 4], 1)
    };
    dense_case(r, k.name, "pointwise", k.pointwise, &g, false);
}

/// (cin, cout, kernel, stride, pads t l b r, groups)
type ConvCase = (
    usize,
    usize,
    (usize, usize),
    (usize, usize),
    [usize; 4],
    usize,
);

const CONV_CASES: &[ConvCase] = &[
    (3, 32, (3, 3), (2, 2), [1, 1, 1, 1], 1), // MobileNet stem
    (3, 16, (3, 3), (2, 2), [0, 0, 1, 1], 1), // TF "same" padding
    (3, 8, (3, 3), (1, 1), [1, 1, 1, 1], 1),
    (3, 17, (3, 3), (2, 2), [1, 1, 1, 1], 1),
    (1, 5, (3, 3), (1, 1), [1, 1, 1, 1], 1),
    (4, 7, (5, 5), (2, 2), [2, 2, 2, 2], 1),
    (8, 9, (2, 3), (1, 2), [0, 1, 0, 1], 1),
    (16, 16, (3, 3), (1, 1), [1, 1, 1, 1], 1),
    (17, 4, (3, 3), (2, 1), [2, 0, 0, 2], 1),
    (8, 8, (1, 1), (2, 2), [0, 0, 0, 0], 1), // strided 1x1
    (24, 33, (1, 1), (2, 1), [0, 0, 0, 0], 1),
    (8, 12, (1, 1), (1, 1), [0, 0, 0, 0], 2), // grouped 1x1
    (12, 12, (1, 1), (1, 1), [0, 0, 0, 0], 4),
    (8, 16, (3, 3), (1, 1), [1, 1, 1, 1], 2), // grouped 3x3
    (9, 6, (3, 3), (2, 2), [1, 1, 1, 1], 3),
    (6, 6, (1, 1), (1, 1), [1, 1, 1, 1], 1), // padded 1x1
    (64, 40, (3, 3), (1, 1), [1, 1, 1, 1], 1),
    (513, 3, (3, 3), (1, 1), [1, 1, 1, 1], 1), // weights too big to pad: scalar k tail
    (4000, 2, (3, 3), (1, 1), [1, 1, 1, 1], 1), // row 36000 > im2col block: reference path
];

fn conv_shapes(k: Kernels) {
    let mut r = Rng(2);
    let sizes = [(1, 1), (2, 2), (3, 3), (4, 5), (7, 7), (8, 9), (13, 6)];
    conv_grid(&mut r, k, CONV_CASES, &sizes, 100_000);
    // The MobileNetV2 stem at full size.
    let g = geom(224, 224, 3, 32, (3, 3), (2, 2), [1, 1, 1, 1], 1);
    dense_case(&mut r, k.name, "conv", k.conv, &g, false);
}

/// Every case at every input size whose input holds at most `max_input`
/// values.
fn conv_grid(
    r: &mut Rng,
    k: Kernels,
    cases: &[ConvCase],
    sizes: &[(usize, usize)],
    max_input: usize,
) {
    for &(cin, cout, ks, s, pad, groups) in cases {
        for &(h, w) in sizes {
            if cin * h * w > max_input {
                continue;
            }
            let g = geom(h, w, cin, cout, ks, s, pad, groups);
            dense_case(r, k.name, "conv", k.conv, &g, true);
            if g.is_pointwise() {
                dense_case(r, k.name, "pointwise", k.pointwise, &g, true);
            }
        }
    }
}

/// (h, w, c, cout) of fully connected layers.
const FC_CASES: &[(usize, usize, usize, usize)] = &[
    (1, 1, 1280, 10),
    (1, 1, 1280, 1000),
    (1, 1, 1, 1),
    (1, 1, 7, 3),
    (3, 3, 7, 5),
    (7, 7, 32, 17),
    (2, 2, 3, 1),
    (1, 1, 16, 16),
    (1, 1, 17, 33),
    (4, 4, 64, 9),
];

fn fc_shapes(k: Kernels) {
    fc_grid(&mut Rng(3), k, FC_CASES);
}

fn fc_grid(r: &mut Rng, k: Kernels, cases: &[(usize, usize, usize, usize)]) {
    for &(h, w, c, cout) in cases {
        let g = geom(h, w, c, cout, (h, w), (1, 1), [0; 4], 1);
        assert!(g.is_fully_connected());
        dense_case(r, k.name, "fc", k.fc, &g, true);
        dense_case(r, k.name, "conv(fc)", k.conv, &g, true);
        if g.is_pointwise() {
            dense_case(r, k.name, "pointwise(fc)", k.pointwise, &g, true);
        }
    }
}

/// (kernel, stride, pads t l b r) of depthwise convolutions.
type DwCase = ((usize, usize), (usize, usize), [usize; 4]);

const DW_CASES: &[DwCase] = &[
    ((3, 3), (1, 1), [1, 1, 1, 1]),
    ((3, 3), (2, 2), [1, 1, 1, 1]),
    ((3, 3), (2, 2), [0, 0, 1, 1]),
    ((3, 3), (1, 1), [0, 0, 0, 0]),
    ((5, 5), (1, 1), [2, 2, 2, 2]),
    ((5, 5), (2, 2), [2, 2, 2, 2]),
    ((1, 1), (1, 1), [0, 0, 0, 0]),
    ((2, 3), (1, 2), [1, 0, 0, 1]),
    ((7, 7), (1, 1), [3, 3, 3, 3]),
    ((9, 9), (1, 1), [4, 4, 4, 4]), // 81 taps: reference path
];

fn dwconv_shapes(k: Kernels) {
    let mut r = Rng(4);
    let chans = [
        1, 7, 8, 15, 16, 17, 31, 32, 33, 48, 127, 128, 129, 144, 200, 255, 256, 257, 300,
    ];
    let sizes = [(1, 1), (2, 2), (3, 3), (4, 5), (7, 7), (8, 8)];
    dw_grid(&mut r, k, &chans, DW_CASES, &sizes);
}

fn dw_grid(r: &mut Rng, k: Kernels, chans: &[usize], cases: &[DwCase], sizes: &[(usize, usize)]) {
    for &c in chans {
        for &(ks, s, pad) in cases {
            for &(h, w) in sizes {
                let g = geom(h, w, c, c, ks, s, pad, c);
                dw_case(r, k.name, k.dwconv, &g, c % 3 == 0);
            }
        }
    }
    let g = ConvGeom {
        oh: 0,
        ow: 0,
        ..geom(3, 3, 16, 16, (3, 3), (1, 1), [1; 4], 16)
    };
    dw_case(r, k.name, k.dwconv, &g, false);
}

/// The elementwise add against [`super::scalar::add`]: lengths around the
/// 16-element tile, any zero points, multipliers and shifts the engine may
/// derive (and a few it may not, which must fall back, not differ).
fn add_cases(k: Kernels, seed: u64, cases: usize) {
    let mut r = Rng(seed);
    let lens = [
        0,
        1,
        7,
        15,
        16,
        17,
        31,
        32,
        33,
        47,
        64,
        100,
        1001,
        3136 * 24,
    ];
    for i in 0..cases {
        let n = if i < lens.len() {
            lens[i]
        } else {
            r.range(0, 300) as usize
        };
        let a = r.bytes(n);
        let b = r.bytes(n);
        let zp = |r: &mut Rng| {
            if r.next_u64() & 7 == 0 {
                r.range(-300, 300) as i32
            } else {
                r.range(-128, 127) as i32
            }
        };
        let (za, zb) = (zp(&mut r), zp(&mut r));
        let mult = |r: &mut Rng| match r.next_u64() % 4 {
            0 => r.range(i32::MIN as i64 + 1, i32::MAX as i64) as i32,
            1 => r.range(0, 1 << 20) as i32,
            _ => r.range(1 << 30, (1i64 << 31) - 1) as i32,
        };
        let (ma, mb) = (mult(&mut r), mult(&mut r));
        let shift = if r.next_u64() & 1 == 0 {
            r.range(1, 62)
        } else {
            r.range(31, 45)
        } as i32;
        let q = random_q(&mut r);
        let mut want = std::vec![CANARY; n + GUARD];
        let mut got = std::vec![CANARY; n + GUARD];
        super::scalar::add(&a, &b, za, ma, zb, mb, shift, q, &mut want[..n]);
        (k.add)(&a, &b, za, ma, zb, mb, shift, q, &mut got[..n]);
        assert!(
            got == want,
            "{} add: n {n} za {za} ma {ma} zb {zb} mb {mb} shift {shift} {q:?}",
            k.name
        );
    }
}

/// Bounds of the random shapes: channels (per group for dense convs) and
/// input height / width.
#[derive(Clone, Copy)]
struct Limits {
    channels: i64,
    size: i64,
}

/// The shapes of the full tables.
const FULL: Limits = Limits {
    channels: 40,
    size: 9,
};

fn random_dense(k: Kernels, seed: u64, cases: usize, lim: Limits) {
    let mut r = Rng(seed);
    for _ in 0..cases {
        let groups = r.pick(&[1, 1, 1, 1, 2, 3]);
        let cin = groups * r.range(1, lim.channels) as usize;
        let cout = groups * r.range(1, lim.channels) as usize;
        let kh = r.range(1, 4) as usize;
        let kw = r.range(1, 4) as usize;
        let s = (r.range(1, 2) as usize, r.range(1, 2) as usize);
        let pad = [0; 4].map(|_| r.range(0, 2) as usize);
        let (ih, iw) = (r.range(1, lim.size) as usize, r.range(1, lim.size) as usize);
        let g = geom(ih, iw, cin, cout, (kh, kw), s, pad, groups);
        dense_case(&mut r, k.name, "conv", k.conv, &g, true);
        if g.is_pointwise() {
            dense_case(&mut r, k.name, "pointwise", k.pointwise, &g, true);
        }
        let fc = geom(ih, iw, cin, cout, (ih, iw), (1, 1), [0; 4], 1);
        dense_case(&mut r, k.name, "fc", k.fc, &fc, true);
        let pw = geom(ih, iw, cin, cout, (1, 1), (1, 1), [0; 4], 1);
        dense_case(&mut r, k.name, "pointwise", k.pointwise, &pw, true);
    }
}

fn random_dw(k: Kernels, seed: u64, cases: usize, lim: Limits) {
    let mut r = Rng(seed);
    for _ in 0..cases {
        // Depthwise channels run in tiles of 16 (up to 256): 7.5x the
        // dense bound reaches past them.
        let c = r.range(1, lim.channels * 15 / 2) as usize;
        let kh = r.pick(&[1, 3, 3, 3, 5]);
        let kw = if r.next_u64().is_multiple_of(4) {
            r.range(1, 5) as usize
        } else {
            kh
        };
        let s = r.pick(&[(1, 1), (2, 2), (1, 2)]);
        let pad = [0; 4].map(|_| r.range(0, 2) as usize);
        let (ih, iw) = (
            r.range(1, lim.size + 1) as usize,
            r.range(1, lim.size + 1) as usize,
        );
        let g = geom(ih, iw, c, c, (kh, kw), s, pad, c);
        dw_case(&mut r, k.name, k.dwconv, &g, true);
    }
}

macro_rules! kernel_tests {
    ($($table:ident: $built:meta),* $(,)?) => {$(
        mod $table {
            use super::*;

            fn table() -> Option<Kernels> {
                let k = Kernels::by_name(stringify!($table));
                if k.is_none() {
                    std::eprintln!("skipped: kernel table '{}' is not supported on this CPU/target", stringify!($table));
                }
                k
            }
            #[test]
            #[cfg_attr(not($built), ignore = "kernel table not built for this target")]
            #[cfg_attr(all($built, miri), ignore = "full shape tables: minutes under Miri; see `miri`")]
            fn pointwise_shapes() {
                table().map(super::pointwise_shapes);
            }
            #[test]
            #[cfg_attr(not($built), ignore = "kernel table not built for this target")]
            #[cfg_attr(all($built, miri), ignore = "full shape tables: minutes under Miri; see `miri`")]
            fn conv_shapes() {
                table().map(super::conv_shapes);
            }
            #[test]
            #[cfg_attr(not($built), ignore = "kernel table not built for this target")]
            #[cfg_attr(all($built, miri), ignore = "full shape tables: minutes under Miri; see `miri`")]
            fn fc_shapes() {
                table().map(super::fc_shapes);
            }
            #[test]
            #[cfg_attr(not($built), ignore = "kernel table not built for this target")]
            #[cfg_attr(all($built, miri), ignore = "full shape tables: minutes under Miri; see `miri`")]
            fn dwconv_shapes() {
                table().map(super::dwconv_shapes);
            }
            #[test]
            #[cfg_attr(not($built), ignore = "kernel table not built for this target")]
            #[cfg_attr(all($built, miri), ignore = "full shape tables: minutes under Miri; see `miri`")]
            fn random_dense() {
                table().map(|k| super::random_dense(k, 11, 300, FULL));
            }
            #[test]
            #[cfg_attr(not($built), ignore = "kernel table not built for this target")]
            #[cfg_attr(all($built, miri), ignore = "full shape tables: minutes under Miri; see `miri`")]
            fn random_dwconv() {
                table().map(|k| super::random_dw(k, 12, 300, FULL));
            }
            #[test]
            #[cfg_attr(not($built), ignore = "kernel table not built for this target")]
            #[cfg_attr(all($built, miri), ignore = "full shape tables: minutes under Miri; see `miri`")]
            fn add() {
                table().map(|k| super::add_cases(k, 13, 300));
            }
        }
    )*};
}

// A table is built for its architecture only; elsewhere its tests are
// reported as ignored, not as passed. Where it is built but the CPU lacks
// the feature (dotprod under `qemu-aarch64 -cpu cortex-a72`, AVX-512 VNNI on
// an older x86), the test prints "skipped" and passes: libtest cannot
// ignore at run time.
kernel_tests!(
    scalar: all(),
    avx2: target_arch = "x86_64",
    avx512vnni: target_arch = "x86_64",
    neon: target_arch = "aarch64",
    dotprod: target_arch = "aarch64",
    dsp: all(target_arch = "arm", graftnet_dsp),
);

/// The Miri-sized set: the same case generators on small shapes (a few
/// seconds each under Miri), over every table this target runs, which under
/// Miri is the scalar one alone (Miri detects no SIMD features, and the
/// SIMD kernels' intrinsics are not what it checks). Runs natively too, so
/// it never rots:
///
/// ```text
/// cargo +nightly miri test -p graftnet --lib -- format kernels::tests::miri
/// ```
///
/// Miri checks what the native tests cannot: no out-of-bounds or
/// uninitialized read, no arithmetic overflow (debug assertions on) in the
/// reference kernels at every edge the big tables exercise (zero channels,
/// zero pixels, padding on every side, strides, groups, weight −128,
/// extreme multipliers, shifts and biases).
mod miri {
    use super::*;

    const SMALL: Limits = Limits {
        channels: 6,
        size: 4,
    };

    fn tables() -> impl Iterator<Item = Kernels> {
        Kernels::available()
    }

    #[test]
    fn miri_pointwise() {
        for k in tables() {
            let mut r = Rng(21);
            pointwise_grid(
                &mut r,
                k,
                &[0, 1, 3, 8, 17],
                &[0, 1, 5, 16],
                &[(1, 1), (2, 3)],
            );
            pointwise_zero_pixels(&mut r, k);
        }
    }

    #[test]
    fn miri_conv() {
        for k in tables() {
            // The full table's cases with at most 1200 weights per output
            // pixel (stem, "same" padding, 5x5, 2x3, strided and grouped).
            let cases: Vec<ConvCase> = CONV_CASES
                .iter()
                .copied()
                .filter(|&(cin, cout, (kh, kw), _, _, g)| cin * cout / g * kh * kw <= 1200)
                .collect();
            conv_grid(&mut Rng(22), k, &cases, &[(1, 1), (2, 5)], 17 * 15);
        }
    }

    #[test]
    fn miri_fc() {
        for k in tables() {
            let cases: Vec<_> = FC_CASES
                .iter()
                .copied()
                .filter(|&(h, w, c, cout)| h * w * c * cout <= 2000)
                .collect();
            fc_grid(&mut Rng(23), k, &cases);
        }
    }

    #[test]
    fn miri_dwconv() {
        for k in tables() {
            dw_grid(&mut Rng(24), k, &[1, 17], DW_CASES, &[(1, 1), (2, 5)]);
        }
    }

    #[test]
    fn miri_add() {
        for k in tables() {
            // The fixed lengths up to 1001 (not the 75,264-element one).
            add_cases(k, 25, 13);
        }
    }

    #[test]
    fn miri_random() {
        for k in tables() {
            random_dense(k, 26, 8, SMALL);
            random_dw(k, 27, 8, SMALL);
        }
    }
}

/// The no-std self-test (`selftest.rs`, what the MCU firmwares run) passes
/// on every table this CPU has.
#[test]
#[cfg_attr(
    miri,
    ignore = "the self-test's shape tables: minutes under Miri; see `miri`"
)]
fn selftest_every_table() {
    let mut s = std::boxed::Box::new(super::selftest::Scratch::new());
    for k in Kernels::available() {
        match super::selftest::run(k, &mut s) {
            Ok(sum) => std::eprintln!("{}: {sum}", k.name),
            Err(e) => panic!("{e}"),
        }
    }
}

// Kernels that are wrong in one corner each: the self-test must catch every
// one of them, so a table with such a bug cannot pass on the MCU.

/// Flips the last output byte.
fn broken_last_byte(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    super::scalar::conv(input, w, g, zp, rq, q, out);
    let n = g.oh * g.ow * g.cout;
    if n > 0 {
        out[n - 1] ^= 1;
    }
}

/// Writes one byte past the output.
fn broken_guard(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    super::scalar::dwconv(input, w, g, zp, rq, q, out);
    out[g.oh * g.ow * g.cout] = 0;
}

/// Rounds wrong for shifts below 31 (multipliers >= 1).
fn broken_small_shift(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    let rq: Vec<ChannelRequant> = rq
        .iter()
        .map(|r| ChannelRequant {
            shift: if r.shift < 31 { r.shift + 1 } else { r.shift },
            ..*r
        })
        .collect();
    super::scalar::conv(input, w, g, zp, &rq, q, out);
}

/// Reads weight −128 as −127.
fn broken_min_weight(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    let w: Vec<u8> = w
        .iter()
        .map(|&b| if b == 0x80 { 0x81 } else { b })
        .collect();
    super::scalar::dwconv(input, &w, g, zp, rq, q, out);
}

/// Pads with 0 instead of the input zero point.
fn broken_padding(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    _zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    super::scalar::conv(input, w, g, 0, rq, q, out);
}

/// Clips biases to 2^29.
fn broken_big_bias(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    let rq: Vec<ChannelRequant> = rq
        .iter()
        .map(|r| ChannelRequant {
            bias: r.bias.clamp(-(1 << 29), 1 << 29),
            ..*r
        })
        .collect();
    super::scalar::conv(input, w, g, zp, &rq, q, out);
}

/// Clamps the output to [-127, 127] (misses the −128 extreme of the clamp).
fn broken_clamp(
    input: &[i8],
    w: &[u8],
    g: &ConvGeom,
    zp: i8,
    rq: &[ChannelRequant],
    q: OutQ,
    out: &mut [i8],
) {
    let n = g.oh * g.ow * g.cout;
    super::scalar::conv(input, w, g, zp, rq, q, out);
    for b in &mut out[..n] {
        *b = (*b).max(-127);
    }
}

#[test]
#[cfg_attr(
    miri,
    ignore = "the self-test's shape tables: minutes under Miri; see `miri`"
)]
fn selftest_catches_broken_kernels() {
    use super::selftest::Entry;
    let mut s = std::boxed::Box::new(super::selftest::Scratch::new());
    let base = Kernels::scalar();
    let cases: [(&str, Kernels, Entry); 9] = [
        (
            "last byte (pointwise)",
            Kernels {
                pointwise: broken_last_byte,
                ..base
            },
            Entry::Pointwise,
        ),
        (
            "last byte (fc)",
            Kernels {
                fc: broken_last_byte,
                ..base
            },
            Entry::Fc,
        ),
        (
            "last byte (conv)",
            Kernels {
                conv: broken_last_byte,
                ..base
            },
            Entry::Conv,
        ),
        (
            "guard tail (dwconv)",
            Kernels {
                dwconv: broken_guard,
                ..base
            },
            Entry::DwConv,
        ),
        (
            "small shifts (pointwise)",
            Kernels {
                pointwise: broken_small_shift,
                ..base
            },
            Entry::Pointwise,
        ),
        (
            "weight -128 (dwconv)",
            Kernels {
                dwconv: broken_min_weight,
                ..base
            },
            Entry::DwConv,
        ),
        (
            "padding (conv)",
            Kernels {
                conv: broken_padding,
                ..base
            },
            Entry::Conv,
        ),
        (
            "big bias (fc)",
            Kernels {
                fc: broken_big_bias,
                ..base
            },
            Entry::Fc,
        ),
        (
            "clamp (conv)",
            Kernels {
                conv: broken_clamp,
                ..base
            },
            Entry::Conv,
        ),
    ];
    for (what, k, entry) in cases {
        match super::selftest::run(k, &mut s) {
            Ok(sum) => panic!("the self-test passed a broken kernel ({what}): {sum}"),
            Err(e) => {
                assert_eq!(e.entry, entry, "{what}: {e}");
                std::eprintln!("caught {what}: {e}");
            }
        }
    }
}

#[test]
fn tables_and_names() {
    assert_eq!(Kernels::by_name("scalar").unwrap().name, "scalar");
    assert!(Kernels::by_name("nonsense").is_none());
    let all: Vec<_> = Kernels::available().map(|k| k.name).collect();
    assert_eq!(all[0], "scalar");
    let best = Kernels::best();
    assert!(all.contains(&best.name));
    for k in Kernels::available() {
        for n in [k.names.pointwise, k.names.conv, k.names.dwconv, k.names.fc] {
            assert!(
                n.starts_with(k.name) || n.starts_with("avx2") || n.starts_with("neon"),
                "{n}"
            );
        }
    }
    #[cfg(target_arch = "aarch64")]
    assert!(Kernels::by_name("neon").is_some());
    #[cfg(not(target_arch = "x86_64"))]
    assert!(Kernels::by_name("avx2").is_none());
}
