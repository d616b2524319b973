//! Loads an ONNX model with tract, optimizes it, and runs it `--runs N` times
//! on one deterministic input. Used to count tract's dynamic aarch64
//! instructions per inference under qemu (`scripts/tract_icount.sh`):
//! count(--runs 2) - count(--runs 1) is one inference, since loading and
//! optimizing cancel.
//!
//! usage: tract-icount MODEL.onnx [--runs N] [--shape 1,3,224,224]

use tract_onnx::prelude::*;

fn usage() -> ! {
    eprintln!("usage: tract-icount MODEL.onnx [--runs N] [--shape 1,3,224,224]");
    std::process::exit(2);
}

fn main() -> TractResult<()> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut runs: usize = 1;
    let mut shape: Option<Vec<usize>> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage()),
            "--shape" => {
                let s = args.next().unwrap_or_else(|| usage());
                shape = Some(
                    s.split(',')
                        .map(|d| d.trim().parse().unwrap_or_else(|_| usage()))
                        .collect(),
                );
            }
            "-h" | "--help" => usage(),
            _ if path.is_none() => path = Some(a),
            _ => usage(),
        }
    }
    let path = path.unwrap_or_else(|| usage());

    let mut model = tract_onnx::onnx().model_for_path(&path)?;
    // Use the model's own input shape when it is concrete; otherwise --shape
    // (default 1,3,224,224).
    let declared: Option<Vec<usize>> = model
        .input_fact(0)?
        .shape
        .as_concrete_finite()
        .ok()
        .flatten()
        .map(|s| s.to_vec());
    let shape = match (shape, declared) {
        (Some(s), _) => s,
        (None, Some(s)) => s,
        (None, None) => vec![1, 3, 224, 224],
    };
    model.set_input_fact(0, f32::fact(shape.clone()).into())?;
    let plan = model.into_optimized()?.into_runnable()?;

    // Deterministic input in [-1, 1): a fixed integer hash of the index.
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n as u32)
        .map(|i| {
            let h = i.wrapping_mul(2654435761).rotate_left(13) ^ 0x5bd1_e995;
            (h >> 24) as f32 / 128.0 - 1.0
        })
        .collect();
    let input: TValue = Tensor::from_shape(&shape, &data)?.into();

    let mut last = None;
    for _ in 0..runs {
        let out = plan.run(tvec!(input.clone()))?;
        last = Some(out);
    }
    let Some(out) = last else {
        println!("runs=0");
        return Ok(());
    };
    let scores: Vec<f32> = out[0].to_plain_array_view::<f32>()?.iter().copied().collect();
    // FNV-1a over the f32 bit patterns, and the argmax.
    let mut h: u32 = 0x811c_9dc5;
    for v in &scores {
        for b in v.to_bits().to_le_bytes() {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
    }
    let argmax = scores
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |m, (i, &v)| if v > m.1 { (i, v) } else { m })
        .0;
    let sum: f64 = scores.iter().map(|&v| v as f64).sum();
    println!(
        "shape={:?} runs={} outputs={} checksum={:08x} sum={:.6} argmax={}",
        shape,
        runs,
        scores.len(),
        h,
        sum,
        argmax
    );
    Ok(())
}
