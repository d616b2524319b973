//! Backbone + patch is bit-identical to the task exported alone, for every
//! task of the shipped models, in any switch order.

use std::collections::BTreeMap;

use graftnet::{Backbone, ChannelRequant, Engine, Patch};
use graftnet_tests::*;
use graftnet_tools::pipeline::{export, ExportOptions};

struct Family {
    arch: &'static str,
    form: &'static str,
    /// (task file stem, data task)
    tasks: &'static [(&'static str, &'static str)],
}

const FAMILIES: &[Family] = &[
    Family {
        arch: "mnv2",
        form: "folded",
        tasks: &[
            ("mnist-sb", "mnist"),
            ("mnist-dw", "mnist"),
            ("fashion-updown-sb", "fashion-updown"),
            ("fashion-binary-logits", "fashion-binary"),
        ],
    },
    Family {
        arch: "mnv2",
        form: "unfolded",
        tasks: &[("mnist-sb", "mnist"), ("mnist-dw", "mnist")],
    },
    Family {
        arch: "mnv3",
        form: "folded",
        tasks: &[
            ("mnist-sb", "mnist"),
            ("fashion-updown-sb", "fashion-updown"),
        ],
    },
];

const N: usize = 48;

fn check_family(f: &Family) {
    let m = models();
    let data = m.join("data");
    let out = scratch(&format!("exact-{}-{}", f.arch, f.form));
    let mut opts = ExportOptions {
        base: m.join(f.arch).join(format!("base.{}.onnx", f.form)),
        calib: data.join("fashion_calib_x.npy"),
        out: out.clone(),
        ..Default::default()
    };
    for (t, d) in f.tasks {
        opts.tasks.push((
            t.to_string(),
            m.join(f.arch).join(format!("{t}.{}.onnx", f.form)),
        ));
        opts.calib_tasks
            .insert(t.to_string(), data.join(format!("{d}_calib_x.npy")));
    }
    let report = export(&opts).unwrap();
    let backbone = std::fs::read(out.join("backbone.gnb")).unwrap();
    // Reference: each task model exported alone, same calibration data.
    let mut expected: BTreeMap<&str, Vec<Vec<i8>>> = BTreeMap::new();
    let mut inputs = BTreeMap::new();
    for (t, d) in f.tasks.iter().copied().chain([("base", "fashion")]) {
        let onnx = if t == "base" {
            opts.base.clone()
        } else {
            m.join(f.arch).join(format!("{t}.{}.onnx", f.form))
        };
        let calib = npy(&data.join(format!("{d}_calib_x.npy")), None);
        let alone = standalone_backbone(&onnx, &calib, None).unwrap();
        let test = npy(&data.join(format!("{d}_test_x.npy")), None);
        let want = scores(&alone, None, &test, N);
        let patch = if t == "base" {
            None
        } else {
            Some(std::fs::read(out.join(format!("{t}.gnp"))).unwrap())
        };
        let got = scores(&backbone, patch.as_deref(), &test, N);
        assert_eq!(
            got, want,
            "{} {} task {t}: backbone + patch differs from the task exported alone",
            f.arch, f.form
        );
        expected.insert(t, want);
        inputs.insert(t, test);
    }
    // Any order, any number of times, on one engine.
    let bb = Backbone::parse(&backbone).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let patches: Vec<(&str, Vec<u8>)> = f
        .tasks
        .iter()
        .map(|(t, _)| (*t, std::fs::read(out.join(format!("{t}.gnp"))).unwrap()))
        .collect();
    let mut rng = Rng(7);
    for step in 0..3 * (patches.len() + 1) {
        let k = rng.below(patches.len() + 1);
        let name = if k == patches.len() {
            e.reset();
            "base"
        } else {
            e.apply(Patch::parse(&patches[k].1).unwrap()).unwrap();
            patches[k].0
        };
        let i = rng.below(N);
        let s = e
            .run_f32(inputs[name].sample(i))
            .unwrap()
            .quantized()
            .to_vec();
        assert_eq!(
            s, expected[name][i],
            "step {step}: task {name} after switches"
        );
    }
    assert!(report.tasks.len() == f.tasks.len() + 1);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn mnv2_folded_patches_are_exact() {
    check_family(&FAMILIES[0]);
}

#[test]
fn mnv2_unfolded_patches_are_exact() {
    check_family(&FAMILIES[1]);
}

#[test]
fn mnv3_folded_patches_are_exact() {
    check_family(&FAMILIES[2]);
}

/// Exports `arch`'s base with its mnist-sb task; returns (dir, backbone, patch, mnist test images).
fn mnist_sb_export(
    arch: &str,
    tag: &str,
) -> (
    std::path::PathBuf,
    Vec<u8>,
    Vec<u8>,
    graftnet_tools::data::Dataset,
) {
    let m = models();
    let data = m.join("data");
    let out = scratch(tag);
    let opts = ExportOptions {
        base: m.join(arch).join("base.folded.onnx"),
        tasks: vec![("mnist-sb".into(), m.join(arch).join("mnist-sb.folded.onnx"))],
        calib: data.join("fashion_calib_x.npy"),
        out: out.clone(),
        ..Default::default()
    };
    export(&opts).unwrap();
    let backbone = std::fs::read(out.join("backbone.gnb")).unwrap();
    let patch = std::fs::read(out.join("mnist-sb.gnp")).unwrap();
    (
        out,
        backbone,
        patch,
        npy(&data.join("mnist_test_x.npy"), None),
    )
}

/// Every kernel table this CPU supports gives the scalar reference's bytes
/// on whole real models (all shipped tasks).
#[test]
fn every_kernel_table_matches_scalar_end_to_end() {
    use graftnet::kernels::Kernels;
    for arch in ["mnv2", "mnv3"] {
        let (out, backbone, patch, test) = mnist_sb_export(arch, &format!("kernels-{arch}"));
        let bb = Backbone::parse(&backbone).unwrap();
        let run_with = |k: Kernels| -> Vec<Vec<i8>> {
            let mut arena = vec![0i8; bb.arena_len()];
            let mut params = vec![ChannelRequant::default(); bb.params_len()];
            let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
            e.set_kernels(k);
            e.apply(Patch::parse(&patch).unwrap()).unwrap();
            (0..32)
                .map(|i| e.run_f32(test.sample(i)).unwrap().quantized().to_vec())
                .collect()
        };
        let reference = run_with(Kernels::scalar());
        let mut tables = 0;
        for k in Kernels::available() {
            assert_eq!(
                run_with(k),
                reference,
                "{arch}: kernel table {} differs from scalar",
                k.name
            );
            tables += 1;
        }
        println!("{arch}: {tables} kernel tables match scalar");
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// Splitting convolutions (by rows, 1x1 ones by pixels) and elementwise ops
/// (residual adds, squeeze-excite multiplies, lookups: MobileNetV3) across
/// threads gives the single thread's bytes.
#[test]
fn threads_give_identical_results() {
    for arch in ["mnv2", "mnv3"] {
        let (out, backbone, patch, test) = mnist_sb_export(arch, &format!("threads-{arch}"));
        let bb = Backbone::parse(&backbone).unwrap();
        let run_with = |threads: usize| -> Vec<Vec<i8>> {
            let mut arena = vec![0i8; bb.arena_len()];
            let mut params = vec![ChannelRequant::default(); bb.params_len()];
            let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
            e.set_threads(threads);
            e.apply(Patch::parse(&patch).unwrap()).unwrap();
            (0..24)
                .map(|i| e.run_f32(test.sample(i)).unwrap().quantized().to_vec())
                .collect()
        };
        let one = run_with(1);
        for n in [2, 3, 5] {
            assert_eq!(run_with(n), one, "{arch}, {n} threads");
        }
        let _ = std::fs::remove_dir_all(&out);
    }
}

/// A MobileNetV3-small at 96x96 (fixture weights) is large enough for every
/// kind of split: stem and depthwise convs by rows, 1x1 convs by pixels,
/// HardSwish lookups, squeeze-excite multiplies and residual adds by pixel
/// ranges. Any thread count gives the single thread's bytes.
#[test]
fn threads_split_every_op_kind_identically() {
    use graftnet_fixtures::{
        mobilenet_v3_small, random_inputs, to_onnx, ExportStyle, MobileNetV3Config,
    };
    let params = mobilenet_v3_small(&MobileNetV3Config {
        width: 1.0,
        resolution: 96,
        in_channels: 3,
        classes: 10,
        first_stride: 2,
        reduced_tail: false,
        seed: 11,
    });
    let dir = scratch("threads-v3-96");
    let onnx = dir.join("v3.onnx");
    std::fs::write(&onnx, to_onnx(&params, &ExportStyle::default())).unwrap();
    let calib_p = dir.join("calib.npy");
    graftnet_tools::data::write_npy_f32(&calib_p, &[2, 3, 96, 96], &random_inputs(2, 3, 96, 96, 3))
        .unwrap();
    let backbone = standalone_backbone(&onnx, &npy(&calib_p, None), None).unwrap();
    let bb = Backbone::parse(&backbone).unwrap();
    let inputs = random_inputs(4, 3, 96, 96, 4);
    let run_with = |threads: usize| -> Vec<Vec<i8>> {
        let mut arena = vec![0i8; bb.arena_len()];
        let mut params = vec![ChannelRequant::default(); bb.params_len()];
        let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
        e.set_threads(threads);
        inputs
            .chunks(3 * 96 * 96)
            .map(|x| e.run_f32(x).unwrap().quantized().to_vec())
            .collect()
    };
    let one = run_with(1);
    for n in [2, 3, 4] {
        assert_eq!(run_with(n), one, "{n} threads");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every conv channel of every task, as the engine derives it on a switch
/// (the vectorized shortcut, `kernels::derive`), equals the formula of
/// `FORMAT.md` evaluated channel by channel (`ConvChannels::channel_exact`)
/// over the merged entries: the shortcut may change speed, never results.
#[test]
fn derived_parameters_follow_the_formula() {
    use graftnet::format::backbone::param_slots;
    use graftnet::format::entry::Rows;
    use graftnet::format::{EntryKind, OpKind};
    use graftnet::quant::ConvChannels;
    use graftnet_fixtures::*;
    use graftnet_tools::data::write_npy_f32;

    let dir = scratch("derive-formula");
    let base = tiny_cnn(11);
    let tasks = [
        (
            "sb",
            derive_task(&base, TaskKind::ScaleBias { classes: 5 }, 12),
        ),
        (
            "dw",
            derive_task(&base, TaskKind::Depthwise { classes: 4 }, 13),
        ),
    ];
    let style = ExportStyle::default();
    std::fs::write(dir.join("base.onnx"), to_onnx(&base, &style)).unwrap();
    for (n, p) in &tasks {
        std::fs::write(dir.join(format!("{n}.onnx")), to_onnx(p, &style)).unwrap();
    }
    let [_, c, h, w] = base.input_shape();
    let calib = random_inputs(8, c, h, w, 14);
    write_npy_f32(dir.join("calib.npy"), &[8, c, h, w], &calib).unwrap();
    let opts = ExportOptions {
        base: dir.join("base.onnx"),
        tasks: tasks
            .iter()
            .map(|(n, _)| (n.to_string(), dir.join(format!("{n}.onnx"))))
            .collect(),
        calib: dir.join("calib.npy"),
        out: dir.join("out"),
        ..Default::default()
    };
    export(&opts).unwrap();
    let backbone = std::fs::read(dir.join("out/backbone.gnb")).unwrap();
    let blobs: Vec<Vec<u8>> = tasks
        .iter()
        .map(|(n, _)| std::fs::read(dir.join(format!("out/{n}.gnp"))).unwrap())
        .collect();
    let bb = Backbone::parse(&backbone).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let code = |b: Option<&[u8]>, c: usize| {
        let b = b.expect("codes");
        u16::from_le_bytes([b[2 * c], b[2 * c + 1]])
    };
    let mut checked = 0;
    for k in 0..=blobs.len() {
        let patch = blobs.get(k).map(|b| Patch::parse(b).unwrap());
        match patch {
            Some(p) => e.apply(p).unwrap(),
            None => e.reset(),
        }
        // An entry of the patch replaces the base task's of the same (op, kind).
        let find = |op: usize, kind: EntryKind| {
            patch
                .iter()
                .flat_map(|p| p.entries())
                .chain(bb.base_entries())
                .find(|x| x.op as usize == op && x.kind == kind)
                .map(|x| x.payload)
        };
        let mut off = 0;
        for i in 0..bb.n_ops() {
            let op = bb.op(i);
            let cout = bb.cout(i, &op, e.classes() as u16);
            let cap = if i == bb.head_op() {
                bb.max_classes() as usize
            } else {
                cout
            };
            if op.kind.has_weights() {
                let row = bb.row_len(&op);
                let (s_in, zp_in) = e.tensor_quant(op.in0 as usize);
                let (s_out, _) = e.tensor_quant(op.out as usize);
                let cc = ConvChannels::new(s_in, s_out, zp_in);
                let (sc, bc) = (
                    find(i, EntryKind::ScaleCodes),
                    find(i, EntryKind::BiasCodes),
                );
                let weights = find(i, EntryKind::Weights);
                let rows = find(i, EntryKind::Rows).and_then(|r| Rows::new_checked(r, row));
                for ch in 0..cout {
                    let byte = |x: &u8| *x as i8 as i64;
                    let sum: i64 = match (rows.and_then(|r| r.find(ch as u16)), weights) {
                        (Some(r), _) => r.iter().map(byte).sum(),
                        (None, Some(w)) if op.kind == OpKind::DwConv => {
                            (0..row).map(|t| byte(&w[t * cout + ch])).sum()
                        }
                        (None, Some(w)) => w[ch * row..(ch + 1) * row].iter().map(byte).sum(),
                        (None, None) => bb.weight_sum(&op, ch) as i64,
                    };
                    let p = cc
                        .channel_exact(code(sc, ch), code(bc, ch), sum)
                        .expect("in range");
                    let want = ChannelRequant {
                        mult: p.mult,
                        shift: p.shift,
                        bias: p.bias,
                    };
                    assert_eq!(
                        e.params()[off + 1 + ch],
                        want,
                        "task {k} op {i} channel {ch}"
                    );
                    checked += 1;
                }
            }
            off += param_slots(&op, cap);
        }
        assert_eq!(off, bb.params_len());
    }
    assert!(checked > 100, "{checked}");
    let _ = std::fs::remove_dir_all(&dir);
}
