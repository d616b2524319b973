//! Kernel timings per table on MobileNetV2-1.0-224 layer shapes.
//!
//! `cargo bench -p graftnet [-- FILTER]` (plain `harness = false` binary,
//! `std::time`). Prints one line per (layer, table): median µs over the
//! repetitions, GMAC/s, and the speedup over the scalar table. `FILTER`
//! keeps layers whose name contains it; `--quick` runs fewer repetitions.
//!
//! The bench is a std program, so it detects CPU features itself and builds
//! the tables from tokens (`new_unchecked` after detection): it does not
//! need the crate's `std` feature.

use std::hint::black_box;
use std::time::Instant;

use graftnet::kernels::{ConvFn, ConvGeom, Kernels, OutQ};
use graftnet::ChannelRequant;

fn tables() -> Vec<Kernels> {
    #[allow(unused_mut)]
    let mut v = vec![Kernels::scalar()];
    #[cfg(target_arch = "x86_64")]
    {
        use graftnet::kernels::cpu::{Avx2, Avx512Vnni};
        if is_x86_feature_detected!("avx2") {
            // SAFETY: detected just above.
            v.push(Kernels::avx2(unsafe { Avx2::new_unchecked() }));
        }
        if is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
        {
            // SAFETY: detected just above.
            v.push(Kernels::avx512vnni(unsafe { Avx512Vnni::new_unchecked() }));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use graftnet::kernels::cpu::{Dotprod, Neon};
        if std::arch::is_aarch64_feature_detected!("neon") {
            // SAFETY: detected just above.
            v.push(Kernels::neon(unsafe { Neon::new_unchecked() }));
        }
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            // SAFETY: detected just above.
            v.push(Kernels::dotprod(unsafe { Dotprod::new_unchecked() }));
        }
    }
    v
}

#[derive(Clone, Copy)]
enum Op {
    Pointwise,
    Conv,
    Dw,
    Fc,
}

struct Layer {
    name: String,
    op: Op,
    g: ConvGeom,
}

fn layer(name: &str, op: Op, hw: usize, cin: usize, cout: usize, k: usize, s: usize) -> Layer {
    let p = k / 2;
    let oh = (hw + 2 * p - k) / s + 1;
    let groups = if matches!(op, Op::Dw) { cin } else { 1 };
    let (kk, oo) = if matches!(op, Op::Fc) {
        (hw, 1)
    } else {
        (k, oh)
    };
    let pad = if matches!(op, Op::Fc) { 0 } else { p };
    Layer {
        name: name.to_string(),
        op,
        g: ConvGeom {
            ih: hw,
            iw: hw,
            cin,
            oh: oo,
            ow: oo,
            cout,
            kh: kk,
            kw: kk,
            sh: s,
            sw: s,
            pt: pad,
            pl: pad,
            groups,
        },
    }
}

fn layers() -> Vec<Layer> {
    use Op::*;
    vec![
        layer("stem 3x3s2 224x224x3->32", Conv, 224, 3, 32, 3, 2),
        layer("dw 3x3s1 112x112x32", Dw, 112, 32, 32, 3, 1),
        layer("pw 112x112 32->16", Pointwise, 112, 32, 16, 1, 1),
        layer("pw 112x112 16->96", Pointwise, 112, 16, 96, 1, 1),
        layer("dw 3x3s2 112x112x96", Dw, 112, 96, 96, 3, 2),
        layer("pw 56x56 96->24", Pointwise, 56, 96, 24, 1, 1),
        layer("pw 56x56 24->144", Pointwise, 56, 24, 144, 1, 1),
        layer("dw 3x3s1 56x56x144", Dw, 56, 144, 144, 3, 1),
        layer("pw 56x56 144->24", Pointwise, 56, 144, 24, 1, 1),
        layer("dw 3x3s2 56x56x144", Dw, 56, 144, 144, 3, 2),
        layer("pw 28x28 32->192", Pointwise, 28, 32, 192, 1, 1),
        layer("dw 3x3s1 28x28x192", Dw, 28, 192, 192, 3, 1),
        layer("pw 28x28 192->32", Pointwise, 28, 192, 32, 1, 1),
        layer("pw 14x14 64->384", Pointwise, 14, 64, 384, 1, 1),
        layer("dw 3x3s1 14x14x384", Dw, 14, 384, 384, 3, 1),
        layer("pw 14x14 384->64", Pointwise, 14, 384, 64, 1, 1),
        layer("pw 14x14 96->576", Pointwise, 14, 96, 576, 1, 1),
        layer("dw 3x3s1 14x14x576", Dw, 14, 576, 576, 3, 1),
        layer("pw 7x7 160->960", Pointwise, 7, 160, 960, 1, 1),
        layer("dw 3x3s1 7x7x960", Dw, 7, 960, 960, 3, 1),
        layer("pw 7x7 960->320", Pointwise, 7, 960, 320, 1, 1),
        layer("pw 7x7 320->1280", Pointwise, 7, 320, 1280, 1, 1),
        layer("fc 1280->1000", Fc, 1, 1280, 1000, 1, 1),
    ]
}

fn macs(l: &Layer) -> f64 {
    let g = &l.g;
    let per = if matches!(l.op, Op::Dw) {
        g.kh * g.kw
    } else {
        g.row_len()
    };
    (g.oh * g.ow * g.cout * per) as f64
}

fn kernel(k: &Kernels, op: Op) -> (ConvFn, &'static str) {
    match op {
        Op::Pointwise => (k.pointwise, k.names.pointwise),
        Op::Conv => (k.conv, k.names.conv),
        Op::Dw => (k.dwconv, k.names.dwconv),
        Op::Fc => (k.fc, k.names.fc),
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let quick = args.iter().any(|a| a == "--quick");
    let filter = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_default();
    let tables = tables();
    println!(
        "tables: {}",
        tables.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
    );
    println!(
        "{:<28} {:<12} {:>10} {:>8} {:>8}  kernel",
        "layer", "table", "median us", "GMAC/s", "speedup"
    );
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut totals = vec![0f64; tables.len()];
    for l in layers().iter().filter(|l| l.name.contains(&filter)) {
        let g = l.g;
        let cin = if matches!(l.op, Op::Dw) {
            g.cout
        } else {
            g.cin
        };
        let wlen = if matches!(l.op, Op::Dw) {
            g.kh * g.kw * g.cout
        } else {
            g.cout * g.row_len()
        };
        let input: Vec<i8> = (0..g.ih * g.iw * cin).map(|_| rnd() as i8).collect();
        let w: Vec<u8> = (0..wlen).map(|_| (rnd() % 255) as u8 ^ 0x80).collect();
        let rq: Vec<ChannelRequant> = (0..g.cout)
            .map(|_| ChannelRequant {
                mult: (1 << 30) + (rnd() % (1 << 30)) as i32,
                shift: 38,
                bias: (rnd() % 2000) as i32 - 1000,
            })
            .collect();
        let q = OutQ {
            zp: -128,
            lo: -128,
            hi: 127,
        };
        let mut out = vec![0i8; g.oh * g.ow * g.cout];
        let mut reference = None;
        let mut scalar_us = 0.0;
        for (ti, k) in tables.iter().enumerate() {
            let (f, name) = kernel(k, l.op);
            f(&input, &w, &g, 3, &rq, q, &mut out);
            match &reference {
                None => reference = Some(out.clone()),
                Some(r) => assert!(r == &out, "{} {}: differs from scalar", l.name, k.name),
            }
            // Aim for ~0.2 s per (layer, table), at least 3 repetitions.
            let t0 = Instant::now();
            f(black_box(&input), &w, &g, 3, &rq, q, &mut out);
            let once = t0.elapsed().as_secs_f64();
            let budget = if quick { 0.03 } else { 0.2 };
            let reps = ((budget / once.max(1e-7)) as usize).clamp(3, 2000);
            let mut times: Vec<f64> = (0..reps)
                .map(|_| {
                    let t = Instant::now();
                    f(
                        black_box(&input),
                        black_box(&w),
                        &g,
                        3,
                        &rq,
                        q,
                        black_box(&mut out),
                    );
                    t.elapsed().as_secs_f64()
                })
                .collect();
            times.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let us = times[times.len() / 2] * 1e6;
            if ti == 0 {
                scalar_us = us;
            }
            totals[ti] += us;
            println!(
                "{:<28} {:<12} {:>10.1} {:>8.2} {:>7.1}x  {}",
                l.name,
                k.name,
                us,
                macs(l) / us / 1e3,
                scalar_us / us,
                name
            );
        }
    }
    println!();
    for (k, t) in tables.iter().zip(&totals) {
        println!(
            "total {:<12} {:>10.1} us  ({:.1}x vs scalar)",
            k.name,
            t,
            totals[0] / t
        );
    }
}
