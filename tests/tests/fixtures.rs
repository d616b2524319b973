//! Models written from Rust (tract_onnx::pb + prost) in every export style:
//! structure, exactness of every patch kind, patch sizes and the arena plan
//! of MobileNetV2-1.0 at 224x224.

use std::path::{Path, PathBuf};

use graftnet::format::EntryClass;
use graftnet_fixtures::*;
use graftnet_tests::*;
use graftnet_tools::data::write_npy_f32;
use graftnet_tools::pipeline::{export, ExportOptions, ExportReport};

/// Writes `params` as ONNX into `dir/name.onnx`.
fn write(dir: &Path, name: &str, params: &NetParams, style: &ExportStyle) -> PathBuf {
    let p = dir.join(format!("{name}.onnx"));
    std::fs::write(&p, to_onnx(params, style)).unwrap();
    p
}

fn calib(dir: &Path, name: &str, p: &NetParams, n: usize, seed: u64) -> PathBuf {
    let [_, c, h, w] = p.input_shape();
    let path = dir.join(format!("{name}.npy"));
    write_npy_f32(&path, &[n, c, h, w], &random_inputs(n, c, h, w, seed)).unwrap();
    path
}

/// Exports base + tasks, then checks every task against the task model
/// exported alone on the same calibration data, bit for bit.
fn export_and_check(
    tag: &str,
    base: &NetParams,
    tasks: &[(&str, NetParams)],
    style: &ExportStyle,
) -> ExportReport {
    let dir = scratch(tag);
    let [_, c, h, w] = base.input_shape();
    let base_p = write(&dir, "base", base, style);
    let base_cal = calib(&dir, "calib-base", base, 8, 1);
    let mut opts = ExportOptions {
        base: base_p.clone(),
        calib: base_cal.clone(),
        out: dir.join("out"),
        ..Default::default()
    };
    for (i, (name, t)) in tasks.iter().enumerate() {
        let p = write(&dir, name, t, style);
        opts.tasks.push((name.to_string(), p));
        opts.calib_tasks.insert(
            name.to_string(),
            calib(&dir, &format!("calib-{name}"), t, 8, 100 + i as u64),
        );
    }
    let report = export(&opts).unwrap_or_else(|e| panic!("{tag}: export failed: {e:#}"));
    let backbone = std::fs::read(dir.join("out/backbone.gnb")).unwrap();
    let test_p = dir.join("test.npy");
    write_npy_f32(&test_p, &[6, c, h, w], &random_inputs(6, c, h, w, 999)).unwrap();
    let test = npy(&test_p, None);
    let all: Vec<(String, PathBuf, PathBuf)> =
        std::iter::once(("base".to_string(), base_p, base_cal))
            .chain(
                opts.tasks
                    .iter()
                    .map(|(n, p)| (n.clone(), p.clone(), opts.calib_tasks[n].clone())),
            )
            .collect();
    for (name, onnx, cal) in all {
        let alone = standalone_backbone(&onnx, &npy(&cal, None), None).unwrap();
        let want = scores(&alone, None, &test, 6);
        let patch =
            (name != "base").then(|| std::fs::read(dir.join(format!("out/{name}.gnp"))).unwrap());
        let got = scores(&backbone, patch.as_deref(), &test, 6);
        assert_eq!(
            got, want,
            "{tag}: task {name} differs from its standalone export"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    report
}

fn small_v2() -> NetParams {
    mobilenet_v2(&MobileNetV2Config {
        width: 0.35,
        resolution: 32,
        in_channels: 1,
        classes: 10,
        first_stride: 1,
        seed: 3,
    })
}

fn tasks_for(base: &NetParams) -> Vec<(&'static str, NetParams)> {
    vec![
        (
            "sb",
            derive_task(base, TaskKind::ScaleBias { classes: 7 }, 11),
        ),
        (
            "dw",
            derive_task(base, TaskKind::Depthwise { classes: 10 }, 12),
        ),
        (
            "logits",
            derive_task(base, TaskKind::Logits { classes: 3 }, 13),
        ),
    ]
}

fn class_bytes(r: &ExportReport, task: &str, class: EntryClass) -> usize {
    let t = r.tasks.iter().find(|t| t.name == task).unwrap();
    t.bytes_by_class
        .iter()
        .find(|(c, _)| *c == class)
        .map_or(0, |x| x.1)
}

#[test]
fn mobilenet_v2_every_export_style_is_exact() {
    let base = small_v2();
    let tasks = tasks_for(&base);
    let styles = [
        ("pytorch-folded", ExportStyle::default()),
        ("pytorch-unfolded", ExportStyle::unfolded()),
        (
            "paddle-constants",
            ExportStyle {
                weights_in_constants: true,
                head: HeadStyle::ReshapeMatMulAdd,
                ..ExportStyle::unfolded()
            },
        ),
        (
            "clip-attributes",
            ExportStyle {
                relu6_as: Relu6Style::ClipAttributes,
                ..Default::default()
            },
        ),
    ];
    for (tag, style) in styles {
        let r = export_and_check(&format!("v2-{tag}"), &base, &tasks, &style);
        // Each task's patch holds what its kind says and nothing it should not.
        assert!(class_bytes(&r, "sb", EntryClass::ScaleBias) > 0, "{tag}");
        assert_eq!(class_bytes(&r, "sb", EntryClass::Depthwise), 0, "{tag}");
        assert!(class_bytes(&r, "dw", EntryClass::Depthwise) > 0, "{tag}");
        assert_eq!(class_bytes(&r, "dw", EntryClass::ScaleBias), 0, "{tag}");
        assert_eq!(
            class_bytes(&r, "logits", EntryClass::ScaleBias)
                + class_bytes(&r, "logits", EntryClass::Depthwise),
            0,
            "{tag}"
        );
        for t in ["sb", "dw", "logits"] {
            assert!(class_bytes(&r, t, EntryClass::Head) > 0, "{tag} {t}");
            assert_eq!(class_bytes(&r, t, EntryClass::Other), 0, "{tag} {t}");
        }
    }
}

#[test]
fn mobilenet_v3_every_hardswish_style_is_exact() {
    let base = mobilenet_v3_small(&MobileNetV3Config {
        width: 0.5,
        resolution: 32,
        in_channels: 1,
        classes: 10,
        first_stride: 2,
        reduced_tail: true,
        seed: 5,
    });
    let tasks = tasks_for(&base);
    for (tag, style) in [
        ("hardsigmoid-mul", ExportStyle::default()),
        (
            "hardswish-op",
            ExportStyle {
                hardswish_as: HardSwishStyle::HardSwishOp,
                ..Default::default()
            },
        ),
        (
            "paddle-chain",
            ExportStyle {
                hardswish_as: HardSwishStyle::PaddleChain,
                weights_in_constants: true,
                ..ExportStyle::unfolded()
            },
        ),
    ] {
        export_and_check(&format!("v3-{tag}"), &base, &tasks, &style);
    }
}

/// MobileNetV2-1.0 at 224x224 with a 10-class head: the paper's patch sizes
/// and the arena plan against the live-tensor lower bound.
#[test]
fn mobilenet_v2_1_0_224_patch_sizes_and_arena() {
    let base = mobilenet_v2(&MobileNetV2Config {
        width: 1.0,
        resolution: 224,
        in_channels: 3,
        classes: 10,
        first_stride: 2,
        seed: 21,
    });
    let dir = scratch("v2-224");
    let style = ExportStyle::default();
    let mut opts = ExportOptions {
        base: write(&dir, "base", &base, &style),
        calib: calib(&dir, "calib", &base, 3, 1),
        out: dir.join("out"),
        ..Default::default()
    };
    let sb = derive_task(&base, TaskKind::ScaleBias { classes: 10 }, 31);
    let dw = derive_task(&base, TaskKind::Depthwise { classes: 10 }, 32);
    opts.tasks
        .push(("sb-logits".into(), write(&dir, "sb", &sb, &style)));
    opts.tasks
        .push(("dw-logits".into(), write(&dir, "dw", &dw, &style)));
    let r = export(&opts).unwrap();
    let sb_bytes = r.tasks[1].patch_bytes;
    let dw_bytes = r.tasks[2].patch_bytes;
    println!("MobileNetV2-1.0-224: backbone {} bytes; S/B+logits patch {} bytes {:?}; DW+logits patch {} bytes {:?}",
        r.backbone_bytes, sb_bytes, r.tasks[1].bytes_by_class, dw_bytes, r.tasks[2].bytes_by_class);
    println!(
        "arena {} bytes, live-tensor lower bound {} bytes ({:+.2} %)",
        r.arena_bytes,
        r.arena_lower_bound,
        100.0 * (r.arena_bytes as f64 / r.arena_lower_bound as f64 - 1.0)
    );
    assert!(
        sb_bytes <= 96 * 1024,
        "S/B+logits patch is {sb_bytes} bytes"
    );
    assert!(dw_bytes <= 96 * 1024, "DW+logits patch is {dw_bytes} bytes");
    assert!(
        r.arena_bytes as f64 <= 1.10 * r.arena_lower_bound as f64,
        "arena {} vs lower bound {}",
        r.arena_bytes,
        r.arena_lower_bound
    );
    // The patches run, and the S/B patch reproduces the S/B model exported alone.
    let backbone = std::fs::read(dir.join("out/backbone.gnb")).unwrap();
    let test = npy(&calib(&dir, "test", &base, 1, 77), None);
    let alone = standalone_backbone(&opts.tasks[0].1, &npy(&opts.calib, None), None).unwrap();
    let patch = std::fs::read(dir.join("out/sb-logits.gnp")).unwrap();
    assert_eq!(
        scores(&backbone, Some(&patch), &test, 1),
        scores(&alone, None, &test, 1)
    );
    // Two and three threads (row slabs of every large conv, stem included) give the same bytes.
    let bb = graftnet::Backbone::parse(&backbone).unwrap();
    let mut outs = Vec::new();
    for threads in [1, 2, 3] {
        let mut arena = vec![0i8; bb.arena_len()];
        let mut params = vec![graftnet::ChannelRequant::default(); bb.params_len()];
        let mut e = graftnet::Engine::new(&bb, &mut arena, &mut params).unwrap();
        e.set_threads(threads);
        e.apply(graftnet::Patch::parse(&patch).unwrap()).unwrap();
        outs.push(e.run_f32(test.sample(0)).unwrap().quantized().to_vec());
    }
    assert!(
        outs.iter().all(|o| o == &outs[0]),
        "threads change the result"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
