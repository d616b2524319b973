//! Per-layer int8 error against the float graph, for one model and input:
//! `cargo run --release -p graftnet-tests --example layer_error -- MODEL.onnx C,H,W [CALIB.npy]`
use graftnet::{Backbone, ChannelRequant, Engine};
use graftnet_tools::{float_eval, pipeline};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let v: Vec<usize> = a[2].split(',').map(|x| x.parse().unwrap()).collect();
    let shape = (v[0], v[1], v[2]);
    let g = pipeline::import(std::path::Path::new(&a[1]), Some(shape))?;
    let mean = [0.485, 0.456, 0.406];
    let std = [0.229, 0.224, 0.225];
    // GRAFTNET_PAGES=1: handwritten digit pages (square inputs) instead of
    // Fashion-MNIST pictures; GRAFTNET_BIAS_CORRECTION=N: correct on N samples.
    let pages = std::env::var_os("GRAFTNET_PAGES").is_some();
    let digits = if pages {
        graftnet_tests::mnist_digits()
    } else {
        vec![]
    };
    let data = |train: bool, n: usize| {
        if pages {
            graftnet_tests::digit_pages(
                &digits,
                n,
                if train { 1 } else { 2 },
                shape.0,
                shape.1,
                &mean,
                &std,
            )
        } else {
            let split = if train { "train" } else { "t10k" };
            graftnet_tests::fashion_pictures(split, 0..n, shape.0, shape.1, shape.2, &mean, &std)
        }
    };
    let calib = data(true, 48);
    let bc = std::env::var("GRAFTNET_BIAS_CORRECTION")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(|samples| graftnet_tools::bias_correction::BiasCorrection { samples });
    let q = pipeline::quantize_model_with(&g, &calib, 0, vec![], None, bc)?;
    let bb_blob = graftnet_tools::export::emit_backbone_with(&q, q.classes(), false)?;
    let bb = Backbone::parse(&bb_blob.bytes).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let test = data(false, 4);
    let x = test.sample(
        std::env::var("GRAFTNET_SAMPLE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let fl = float_eval::run(&g, x);
    e.run_f32(x).unwrap();
    for (t, qt) in q.tensors.iter().enumerate() {
        let Some(ir) = g.tensors.iter().position(|it| it.name == qt.name) else {
            continue;
        };
        let f = &fl[ir];
        let d = e.tensor_data(t);
        let (s, z) = e.tensor_quant(t);
        let sh = qt.shape;
        let (mut num, mut den) = (0f64, 0f64);
        for c in 0..sh.c {
            for p in 0..sh.h * sh.w {
                if p * sh.c + c >= d.len() || c * sh.h * sh.w + p >= f.len() {
                    continue;
                }
                let gain = qt.gains.get(c).map_or(1.0, |&g| g as f64);
                let dq = s as f64 * (d[p * sh.c + c] as i32 - z) as f64 / gain;
                let fv = f[c * sh.h * sh.w + p] as f64;
                num += (dq - fv).powi(2);
                den += fv * fv;
            }
        }
        let producer = q
            .ops
            .iter()
            .find(|o| o.out == t)
            .map(|o| format!("{} {}", o.kind.name(), o.name))
            .unwrap_or_default();
        if std::env::var("GRAFTNET_CHANNELS")
            .is_ok_and(|v| v.split(',').any(|x| x == t.to_string()))
        {
            for c in 0..sh.c {
                let (mut a, mut b, mut mx) = (0f64, 0f64, 0f64);
                for p in 0..sh.h * sh.w {
                    let gain = qt.gains.get(c).map_or(1.0, |&g| g as f64);
                    let dq = s as f64 * (d[p * sh.c + c] as i32 - z) as f64 / gain;
                    let fv = f[c * sh.h * sh.w + p] as f64;
                    a += (dq - fv).powi(2);
                    b += fv * fv;
                    mx = f64::max(mx, fv.abs());
                }
                let op = q.ops.iter().find(|o| o.out == t).unwrap();
                println!(
                    "     ch {c:>3} rel.err {:.4} rms {:.3} max {:.2} wcode {:#06x} bcode {:#06x}",
                    (a / b.max(1e-30)).sqrt(),
                    (b / (sh.h * sh.w) as f64).sqrt(),
                    mx,
                    op.scale_codes[c],
                    op.bias_codes[c]
                );
            }
        }
        let n = f.len().max(1) as f64;
        let rms = (den / n).sqrt();
        let noise = s as f64 / 12f64.sqrt();
        println!(
            "{t:>4} {:>12} rel.err {:.4} (floor {:.4})  scale {:.5} zp {:>4} rms {:.3} {}",
            format!("{}", sh),
            (num / den.max(1e-30)).sqrt(),
            noise / rms,
            s,
            z,
            rms,
            producer
        );
    }
    Ok(())
}
