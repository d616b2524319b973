//! Several tasks on one input (`Engine::run_tasks`): each task's scores
//! equal a separate `apply` + `run` of that task, on every kernel table
//! and thread count, with and without `export --share-prefix`; the shared
//! prefix is as long as the tasks allow; bad task lists are refused with
//! the active task unchanged.

use graftnet::kernels::Kernels;
use graftnet::{Backbone, ChannelRequant, Engine, Error, Patch, RunError};
use graftnet_tests::*;
use graftnet_tools::pipeline::{export, ExportOptions};

const TASKS: [(&str, &str); 4] = [
    ("mnist-sb", "mnist"),
    ("mnist-dw", "mnist"),
    ("fashion-updown-sb", "fashion-updown"),
    ("fashion-binary-logits", "fashion-binary"),
];

/// Exports the MobileNetV2 test models; returns (dir, backbone, patches by
/// TASKS order).
fn export_mnv2(tag: &str, share_prefix: bool) -> (std::path::PathBuf, Vec<u8>, Vec<Vec<u8>>) {
    let m = models();
    let data = m.join("data");
    let out = scratch(tag);
    let mut opts = ExportOptions {
        base: m.join("mnv2/base.folded.onnx"),
        calib: data.join("fashion_calib_x.npy"),
        out: out.clone(),
        share_prefix,
        ..Default::default()
    };
    for (t, d) in TASKS {
        opts.tasks
            .push((t.into(), m.join(format!("mnv2/{t}.folded.onnx"))));
        opts.calib_tasks
            .insert(t.into(), data.join(format!("{d}_calib_x.npy")));
    }
    export(&opts).unwrap();
    let bb = std::fs::read(out.join("backbone.gnb")).unwrap();
    let patches = TASKS
        .iter()
        .map(|(t, _)| std::fs::read(out.join(format!("{t}.gnp"))).unwrap())
        .collect();
    (out, bb, patches)
}

/// Task lists (indices into TASKS; `None` = base) covering: all tasks,
/// base with a logits task, a task twice, one task, different orders.
fn lists() -> Vec<Vec<Option<usize>>> {
    vec![
        vec![Some(0), Some(1), Some(2), Some(3), None],
        vec![None, Some(3)],
        vec![Some(3), None, Some(3)],
        vec![Some(0), Some(0)],
        vec![Some(2)],
        vec![Some(1), Some(0), None],
    ]
}

/// For each list, kernel table and thread count: `run_tasks_f32` and
/// `run_tasks` (int8) against separate runs. Returns the shared-prefix
/// length of each list.
fn check_exact(bb_bytes: &[u8], patches: &[Vec<u8>]) -> Vec<usize> {
    let bb = Backbone::parse(bb_bytes).unwrap();
    let parsed: Vec<Patch<'_>> = patches.iter().map(|p| Patch::parse(p).unwrap()).collect();
    let inputs = npy(&models().join("data/fashion_test_x.npy"), None);
    let task = |k: Option<usize>| k.map(|i| parsed[i]);
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut branch = vec![0i8; bb.arena_len()];
    let mut prefixes = Vec::new();
    // Separate runs: float input, and int8 input quantized once with the
    // base's input quantization.
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    e.set_kernels(Kernels::scalar());
    let samples = [0usize, 5, 17];
    let mut int8_inputs = Vec::new();
    for &s in &samples {
        let mut q = vec![0i8; bb.input().len()];
        e.quantize_input(inputs.sample(s), &mut q).unwrap();
        int8_inputs.push(q);
    }
    let mut separate = |k: Option<usize>, s: usize| -> (Vec<i8>, Vec<i8>) {
        match task(k) {
            Some(p) => e.apply(p).unwrap(),
            None => e.reset(),
        }
        let f = e
            .run_f32(inputs.sample(samples[s]))
            .unwrap()
            .quantized()
            .to_vec();
        let i = e.run(&int8_inputs[s]).unwrap().quantized().to_vec();
        (f, i)
    };
    let mut want = std::collections::BTreeMap::new();
    for k in std::iter::once(None).chain((0..patches.len()).map(Some)) {
        for s in 0..samples.len() {
            want.insert((k, s), separate(k, s));
        }
    }
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let mut tables = 0;
    for kt in Kernels::available() {
        tables += 1;
        for threads in [1, 2, 3] {
            e.set_kernels(kt);
            e.set_threads(threads);
            for list in lists() {
                let ts: Vec<Option<Patch<'_>>> = list.iter().map(|&k| task(k)).collect();
                for s in 0..samples.len() {
                    let mut got = Vec::new();
                    let sp = e
                        .run_tasks_f32(inputs.sample(samples[s]), &ts, &mut branch, |k, sc| {
                            got.push((k, sc.quantized().to_vec()))
                        })
                        .unwrap();
                    let mut got8 = Vec::new();
                    e.run_tasks(&int8_inputs[s], &ts, &mut branch, |k, sc| {
                        got8.push((k, sc.quantized().to_vec()))
                    })
                    .unwrap();
                    assert_eq!(got.len(), list.len());
                    for (j, &k) in list.iter().enumerate() {
                        let (wf, wi) = &want[&(k, s)];
                        let ctx = format!(
                            "kernels {}, {threads} threads, list {list:?}, task {k:?}, sample {s}, prefix {} of {}",
                            kt.name, sp.ops, sp.of
                        );
                        assert_eq!(got[j], (j, wf.clone()), "f32 input: {ctx}");
                        assert_eq!(got8[j], (j, wi.clone()), "int8 input: {ctx}");
                    }
                    if threads == 1 && s == 0 && tables == 1 {
                        prefixes.push(sp.ops);
                    }
                }
                // The active task (base) is unchanged after the call.
                assert_eq!(e.task_name(), "base");
            }
        }
    }
    println!(
        "{tables} kernel tables; prefixes {prefixes:?} of {} ops",
        bb.n_ops()
    );
    prefixes
}

#[test]
fn run_tasks_equals_separate_runs_on_every_kernel_table_and_thread_count() {
    let (out, bb, patches) = export_mnv2("multi-plain", false);
    let n_ops = Backbone::parse(&bb).unwrap().n_ops();
    let prefixes = check_exact(&bb, &patches);
    // The same task twice, or one task, shares the whole network.
    assert_eq!(prefixes[3], n_ops);
    assert_eq!(prefixes[4], n_ops);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn share_prefix_logits_task_shares_everything_but_its_head() {
    let (out, bb, patches) = export_mnv2("multi-share", true);
    let b = Backbone::parse(&bb).unwrap();
    let prefixes = check_exact(&bb, &patches);
    // base + logits-only task: every op before the classifier is shared.
    assert_eq!(prefixes[1], b.head_op(), "base + logits task");
    assert_eq!(prefixes[2], b.head_op(), "logits, base, logits");
    // S/B tasks change the first conv's batch norm: nothing to share.
    assert_eq!(prefixes[0], 0);
    let _ = std::fs::remove_dir_all(&out);
}

/// A patch for another backbone, a short branch buffer or a wrong input
/// size: a typed error, no scores, and the active task unchanged.
#[test]
fn bad_task_lists_are_refused_and_leave_the_active_task() {
    let (out, bb_bytes, patches) = export_mnv2("multi-errors", false);
    let bb = Backbone::parse(&bb_bytes).unwrap();
    let logits = Patch::parse(&patches[3]).unwrap();
    // the same task for another backbone: a different fingerprint
    let mut foreign = patches[0].clone();
    let fp_off = graftnet::format::patch::field::BACKBONE;
    foreign[fp_off] ^= 1;
    graftnet::format::patch::seal(&mut foreign);
    let foreign = Patch::parse(&foreign).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    e.apply(logits).unwrap();
    let x = npy(&models().join("data/fashion_test_x.npy"), None);
    let before = e.run_f32(x.sample(1)).unwrap().quantized().to_vec();
    let need = e.shared_prefix(&[None, Some(logits)]).unwrap().branch_len;
    let mut branch = vec![0i8; bb.arena_len()];
    let mut calls = 0;
    let r = e.run_tasks_f32(x.sample(1), &[None, Some(foreign)], &mut branch, |_, _| {
        calls += 1
    });
    assert!(
        matches!(
            r,
            Err(Error::Format(graftnet::FormatError::WrongBackbone { .. }))
        ),
        "{r:?}"
    );
    let r = e.run_tasks_f32(
        x.sample(1),
        &[None, Some(logits)],
        &mut branch[..need - 1],
        |_, _| calls += 1,
    );
    assert_eq!(
        r,
        Err(Error::Run(RunError::BranchTooSmall {
            need: need as u32,
            have: need as u32 - 1
        }))
    );
    let r = e.run_tasks_f32(&x.sample(1)[1..], &[None], &mut branch, |_, _| calls += 1);
    assert!(
        matches!(r, Err(Error::Run(RunError::InputSize { .. }))),
        "{r:?}"
    );
    let mut nan = x.sample(1).to_vec();
    nan[3] = f32::NAN;
    let r = e.run_tasks_f32(&nan, &[None], &mut branch, |_, _| calls += 1);
    assert!(
        matches!(r, Err(Error::Run(RunError::NonFiniteInput { index: 3 }))),
        "{r:?}"
    );
    assert_eq!(calls, 0);
    assert_eq!(e.task_name(), "fashion-binary-logits");
    assert_eq!(e.run_f32(x.sample(1)).unwrap().quantized(), &before[..]);
    // An empty list does nothing.
    let sp = e
        .run_tasks_f32(x.sample(1), &[], &mut [], |_, _| calls += 1)
        .unwrap();
    assert_eq!((sp.ops, sp.branch_len, calls), (0, 0, 0));
    let _ = std::fs::remove_dir_all(&out);
}
