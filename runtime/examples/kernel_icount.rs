//! Runs one kernel of a table on one layer shape `--runs N` times: the
//! program to count a layer's instructions with (`aarch64-icount`, runs 2
//! minus runs 1), as `infer` does for a whole inference.
//!
//! ```text
//! kernel_icount TABLE (pw|conv|dw|fc) H W CIN COUT K STRIDE [--runs N]
//! ```
//!
//! Square kernel `K`, padding `K / 2`, random data, requantization shift 38.

use graftnet::kernels::{ConvGeom, Kernels, OutQ};
use graftnet::ChannelRequant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .map_or(1, |s| s.parse().expect("--runs N"));
    let n = |i: usize| -> usize { args[i].parse().expect("a number") };
    let k = Kernels::by_name(&args[0]).expect("table not available");
    let (h, w, cin, cout, ks, s) = (n(2), n(3), n(4), n(5), n(6), n(7));
    let dw = args[1] == "dw";
    let pad = ks / 2;
    let (oh, ow) = ((h + 2 * pad - ks) / s + 1, (w + 2 * pad - ks) / s + 1);
    let g = ConvGeom {
        ih: h,
        iw: w,
        cin,
        oh: if args[1] == "fc" { 1 } else { oh },
        ow: if args[1] == "fc" { 1 } else { ow },
        cout,
        kh: ks,
        kw: ks,
        sh: s,
        sw: s,
        pt: if args[1] == "fc" { 0 } else { pad },
        pl: if args[1] == "fc" { 0 } else { pad },
        groups: if dw { cin } else { 1 },
    };
    let f = match args[1].as_str() {
        "pw" => k.pointwise,
        "conv" => k.conv,
        "dw" => k.dwconv,
        _ => k.fc,
    };
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let wlen = if dw {
        ks * ks * cin
    } else {
        cout * g.row_len()
    };
    let input: Vec<i8> = (0..h * w * cin).map(|_| rnd() as i8).collect();
    let wt: Vec<u8> = (0..wlen).map(|_| (rnd() % 255) as u8 ^ 0x80).collect();
    let rq: Vec<ChannelRequant> = (0..cout)
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
    let mut out = vec![0i8; g.oh * g.ow * cout];
    for _ in 0..runs {
        f(&input, &wt, &g, 3, &rq, q, &mut out);
    }
    let sum = out.iter().fold(0u32, |h, &x| {
        h.wrapping_mul(31).wrapping_add(x as u8 as u32)
    });
    println!("{} {} checksum {sum:08x}", k.name, args[1]);
}
