//! Patches that bring their own head: a MobileNetV2 task with an
//! FC-ReLU-FC head (32 hidden units) is exported as a patch carrying its
//! head network; backbone + patch is bit-identical to the task exported
//! alone, in any switch order and in `run_tasks`; an engine too small for
//! the head, a corrupted head and a head op the runtime cannot run are
//! refused with typed errors (the active task stays).

use graftnet::{Backbone, ChannelRequant, Engine, FormatError, Patch};
use graftnet_fixtures::{
    derive_task, mobilenet_v2, random_inputs, to_onnx, ExportStyle, MobileNetV2Config, TaskKind,
};
use graftnet_tests::*;
use graftnet_tools::pipeline::{export, ExportOptions};
use prost::Message;

struct Setup {
    dir: std::path::PathBuf,
    calib: std::path::PathBuf,
    base: std::path::PathBuf,
    head: std::path::PathBuf,
    sb: std::path::PathBuf,
}

fn setup(tag: &str) -> Setup {
    let dir = scratch(tag);
    let base = mobilenet_v2(&MobileNetV2Config {
        width: 0.35,
        resolution: 32,
        in_channels: 3,
        classes: 10,
        first_stride: 1,
        seed: 3,
    });
    let style = ExportStyle::default();
    let write = |name: &str, p| {
        let f = dir.join(name);
        std::fs::write(&f, to_onnx(p, &style)).unwrap();
        f
    };
    let head_task = derive_task(
        &base,
        TaskKind::HiddenHead {
            hidden: 32,
            classes: 5,
        },
        9,
    );
    let sb_task = derive_task(&base, TaskKind::ScaleBias { classes: 10 }, 8);
    let calib = dir.join("calib.npy");
    graftnet_tools::data::write_npy_f32(&calib, &[6, 3, 32, 32], &random_inputs(6, 3, 32, 32, 5))
        .unwrap();
    Setup {
        base: write("base.onnx", &base),
        head: write("head.onnx", &head_task),
        sb: write("sb.onnx", &sb_task),
        calib,
        dir,
    }
}

fn export_tasks(
    s: &Setup,
    tasks: &[(&str, &std::path::Path)],
) -> graftnet_tools::pipeline::ExportReport {
    let opts = ExportOptions {
        base: s.base.clone(),
        tasks: tasks
            .iter()
            .map(|(n, p)| (n.to_string(), p.to_path_buf()))
            .collect(),
        calib: s.calib.clone(),
        out: s.dir.join("export"),
        ..Default::default()
    };
    export(&opts).unwrap()
}

#[test]
fn a_head_patch_equals_the_task_exported_alone() {
    let s = setup("head-exact");
    let report = export_tasks(&s, &[("head", &s.head), ("sb", &s.sb)]);
    let head = report.tasks.iter().find(|t| t.name == "head").unwrap();
    let h = head.head.as_ref().expect("exported as a head patch");
    println!(
        "cut at op {} ({}), head ops {:?}, patch {} bytes",
        h.cut_op, h.cut_node, h.ops, head.patch_bytes
    );
    assert_eq!(h.ops.len(), 2, "FC+ReLU, FC: {:?}", h.ops);
    assert!(report
        .tasks
        .iter()
        .find(|t| t.name == "sb")
        .unwrap()
        .head
        .is_none());
    let out = s.dir.join("export");
    let backbone = std::fs::read(out.join("backbone.gnb")).unwrap();
    let patch = std::fs::read(out.join("head.gnp")).unwrap();
    let sb = std::fs::read(out.join("sb.gnp")).unwrap();
    let calib = npy(&s.calib, None);
    let alone = standalone_backbone(&s.head, &calib, None).unwrap();
    let inputs = graftnet_tools::data::Dataset {
        shape: (3, 32, 32),
        samples: random_inputs(12, 3, 32, 32, 77),
        labels: None,
        class_names: None,
    };
    let want = scores(&alone, None, &inputs, 12);
    let got = scores(&backbone, Some(&patch), &inputs, 12);
    assert_eq!(got, want, "backbone + head patch vs the task alone");
    assert!(want.iter().all(|v| v.len() == 5));
    // Any order on one engine, and all tasks in one pass.
    let bb = Backbone::parse(&backbone).unwrap();
    let p_head = Patch::parse(&patch).unwrap();
    let p_sb = Patch::parse(&sb).unwrap();
    let sizes = bb.engine_sizes(&[p_head, p_sb]);
    assert!(
        sizes.params > bb.params_len(),
        "the head needs more parameter slots"
    );
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![ChannelRequant::default(); sizes.params];
    let mut branch = vec![0i8; sizes.arena];
    let sb_want = scores(&backbone, Some(&sb), &inputs, 12);
    let base_want = scores(&backbone, None, &inputs, 12);
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    for threads in [1, 3] {
        e.set_threads(threads);
        for (step, i) in (0..12).enumerate() {
            let x = inputs.sample(i);
            match step % 3 {
                0 => e.apply(p_head).unwrap(),
                1 => e.apply(p_sb).unwrap(),
                _ => e.reset(),
            }
            let got = e.run_f32(x).unwrap().quantized().to_vec();
            let expected = [&want, &sb_want, &base_want][step % 3];
            assert_eq!(got, expected[i], "step {step}, {threads} threads");
            let mut all = Vec::new();
            e.run_tasks_f32(
                x,
                &[Some(p_head), None, Some(p_sb), Some(p_head)],
                &mut branch,
                |_, sc| all.push(sc.quantized().to_vec()),
            )
            .unwrap();
            assert_eq!(
                all,
                vec![
                    want[i].clone(),
                    base_want[i].clone(),
                    sb_want[i].clone(),
                    want[i].clone()
                ]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&s.dir);
}

#[test]
fn a_head_patch_that_does_not_fit_or_is_corrupted_is_refused() {
    let s = setup("head-refused");
    export_tasks(&s, &[("head", &s.head)]);
    let out = s.dir.join("export");
    let backbone = std::fs::read(out.join("backbone.gnb")).unwrap();
    let patch = std::fs::read(out.join("head.gnp")).unwrap();
    let bb = Backbone::parse(&backbone).unwrap();
    let p = Patch::parse(&patch).unwrap();
    let sizes = bb.engine_sizes(&[p]);
    let x = random_inputs(1, 3, 32, 32, 4);
    // Parameter table of the backbone's size only.
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let before = e.run_f32(&x).unwrap().quantized().to_vec();
    assert_eq!(
        e.apply(p).unwrap_err(),
        FormatError::ParamsTooSmall {
            need: sizes.params as u32,
            have: bb.params_len() as u32
        }
    );
    assert_eq!(e.task_name(), "base");
    assert_eq!(e.run_f32(&x).unwrap().quantized(), &before[..]);
    // A corrupted head network (a weight byte, the patch resealed as an
    // attacker would): its own checksum refuses it.
    let mut bad = patch.clone();
    let n = bad.len();
    bad[n - 200] ^= 0x40;
    graftnet::format::patch::seal(&mut bad);
    let mut params = vec![ChannelRequant::default(); sizes.params];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let r = Patch::parse(&bad).and_then(|q| e.apply(q));
    assert!(
        matches!(r, Err(FormatError::ChecksumMismatch { .. })),
        "{r:?}"
    );
    assert_eq!(e.task_name(), "base");
    let _ = std::fs::remove_dir_all(&s.dir);
}

/// A head op the runtime cannot run is refused at export, naming the node
/// and the op.
#[test]
fn a_head_with_an_unsupported_op_is_refused_at_export() {
    let s = setup("head-unsupported");
    let mut m = tract_onnx::pb::ModelProto::decode(&std::fs::read(&s.head).unwrap()[..]).unwrap();
    let g = m.graph.as_mut().unwrap();
    let node = g
        .node
        .iter_mut()
        .find(|n| n.op_type == "Relu" && n.name.contains("head"))
        .expect("the head's ReLU");
    node.op_type = "Celu".into();
    let name = node.name.clone();
    let bad = s.dir.join("bad-head.onnx");
    std::fs::write(&bad, m.encode_to_vec()).unwrap();
    let opts = ExportOptions {
        base: s.base.clone(),
        tasks: vec![("bad".into(), bad)],
        calib: s.calib.clone(),
        out: s.dir.join("export"),
        ..Default::default()
    };
    let err = format!("{:#}", export(&opts).unwrap_err());
    assert!(err.contains(&name) && err.contains("Celu"), "{err}");
    let _ = std::fs::remove_dir_all(&s.dir);
}
