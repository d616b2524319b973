//! Bad input gets a typed error that says what is wrong: never a panic,
//! never a half-applied task.

use std::path::PathBuf;

use graftnet::format::EntryKind;
use graftnet::{Backbone, ChannelRequant, Engine, FormatError, Patch};
use graftnet_fixtures::*;
use graftnet_tests::*;
use graftnet_tools::data::write_npy_f32;
use graftnet_tools::host::{ExportDir, UnknownTask};
use graftnet_tools::import::{import_onnx, ImportError, ImportOptions};
use graftnet_tools::pipeline::{export, ExportOptions};
use graftnet_tools::soak::entry_offsets;

/// A small exported model with two tasks: (dir, backbone, sb patch, dw patch).
fn small_export(tag: &str) -> (PathBuf, Vec<u8>, Vec<u8>, Vec<u8>) {
    let dir = scratch(tag);
    let base = tiny_cnn(1);
    let sb = derive_task(&base, TaskKind::ScaleBias { classes: 5 }, 2);
    let dw = derive_task(&base, TaskKind::Depthwise { classes: 4 }, 3);
    let s = ExportStyle::default();
    for (n, p) in [("base", &base), ("sb", &sb), ("dw", &dw)] {
        std::fs::write(dir.join(format!("{n}.onnx")), to_onnx(p, &s)).unwrap();
    }
    let [_, c, h, w] = base.input_shape();
    write_npy_f32(
        dir.join("calib.npy"),
        &[8, c, h, w],
        &random_inputs(8, c, h, w, 5),
    )
    .unwrap();
    let opts = ExportOptions {
        base: dir.join("base.onnx"),
        tasks: vec![
            ("sb".into(), dir.join("sb.onnx")),
            ("dw".into(), dir.join("dw.onnx")),
        ],
        calib: dir.join("calib.npy"),
        out: dir.join("out"),
        ..Default::default()
    };
    export(&opts).unwrap();
    let r = |f: &str| std::fs::read(dir.join("out").join(f)).unwrap();
    (dir.clone(), r("backbone.gnb"), r("sb.gnp"), r("dw.gnp"))
}

/// One random input of the backbone's shape.
fn input_for(back: &Backbone<'_>) -> Vec<f32> {
    let t = back.input();
    random_inputs(1, t.c as usize, t.h as usize, t.w as usize, 8)
}

/// Recomputes a blob's checksum after an edit (what a buggy writer or an
/// attacker would do); the field is the same in both blob kinds.
fn reseal(blob: &mut [u8]) {
    graftnet::format::patch::seal(blob);
}

#[test]
fn unsupported_op_names_node_and_op() {
    let err = import_onnx(&unsupported_op_model(), &ImportOptions::default()).unwrap_err();
    match &err {
        ImportError::UnsupportedOp { node, op_type, .. } => {
            assert_eq!(node, "weird_node");
            assert_eq!(op_type, "Einsum");
        }
        e => panic!("expected UnsupportedOp, got {e:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("weird_node") && msg.contains("Einsum"),
        "{msg}"
    );
}

#[test]
fn patch_for_another_backbone_is_rejected() {
    let (d1, bb1, sb1, _) = small_export("wrong-bb-1");
    let (d2, bb2, _, _) = {
        // Same architecture, other weights: a different backbone.
        let dir = scratch("wrong-bb-2");
        let base = tiny_cnn(9);
        std::fs::write(
            dir.join("base.onnx"),
            to_onnx(&base, &ExportStyle::default()),
        )
        .unwrap();
        let [_, c, h, w] = base.input_shape();
        write_npy_f32(
            dir.join("calib.npy"),
            &[4, c, h, w],
            &random_inputs(4, c, h, w, 5),
        )
        .unwrap();
        export(&ExportOptions {
            base: dir.join("base.onnx"),
            calib: dir.join("calib.npy"),
            out: dir.join("out"),
            ..Default::default()
        })
        .unwrap();
        (
            dir.clone(),
            std::fs::read(dir.join("out/backbone.gnb")).unwrap(),
            (),
            (),
        )
    };
    let bb = Backbone::parse(&bb2).unwrap();
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    let err = e.apply(Patch::parse(&sb1).unwrap()).unwrap_err();
    assert!(matches!(err, FormatError::WrongBackbone { .. }), "{err:?}");
    assert!(err.to_string().contains("made for backbone"), "{err}");
    assert_eq!(e.task_name(), "base");
    let _ = Backbone::parse(&bb1).unwrap();
    let _ = (std::fs::remove_dir_all(d1), std::fs::remove_dir_all(d2));
}

#[test]
fn truncated_and_bit_flipped_blobs_are_rejected() {
    let (dir, bb, sb, _) = small_export("corrupt");
    for blob_kind in ["backbone", "patch"] {
        let blob = if blob_kind == "backbone" { &bb } else { &sb };
        let parse = |b: &[u8]| -> Result<(), FormatError> {
            if blob_kind == "backbone" {
                Backbone::parse(b).map(|_| ())
            } else {
                Patch::parse(b).map(|_| ())
            }
        };
        parse(blob).unwrap();
        // Every truncation.
        for n in 0..blob.len() {
            let e = parse(&blob[..n]).unwrap_err();
            assert!(
                matches!(e, FormatError::Truncated { .. }),
                "{blob_kind} cut to {n}: {e:?}"
            );
        }
        // Bit flips all over the blob.
        let mut rng = Rng(3);
        for _ in 0..2000 {
            let mut b = blob.clone();
            let bit = rng.below(b.len() * 8);
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(
                parse(&b).is_err(),
                "{blob_kind}: flipped bit {bit} was accepted"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Corruption that keeps a valid checksum (a buggy writer, or an attacker):
/// the structural checks must catch it, and whatever they accept must run
/// without panicking.
#[test]
fn resealed_corruption_never_panics() {
    let (dir, bb, sb, _) = small_export("reseal");
    let input = vec![0.25f32; Backbone::parse(&bb).unwrap().input().len()];
    let mut rng = Rng(11);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..3000 {
        let target_patch = round % 2 == 1;
        let mut b = if target_patch { sb.clone() } else { bb.clone() };
        let flips = 1 + rng.below(4);
        for _ in 0..flips {
            // Avoid the weight bytes mostly: corrupt headers, records and entries.
            let limit = if target_patch {
                b.len()
            } else {
                b.len().min(4096)
            };
            let i = 16 + rng.below(limit - 16);
            b[i] = (rng.next_u64() & 0xff) as u8;
        }
        reseal(&mut b);
        let outcome = std::panic::catch_unwind(|| {
            let (bbb, pb) = if target_patch {
                (bb.as_slice(), Some(b.as_slice()))
            } else {
                (b.as_slice(), None)
            };
            let Ok(back) = Backbone::parse(bbb) else {
                return false;
            };
            let mut arena = vec![0i8; back.arena_len()];
            let mut params = vec![ChannelRequant::default(); back.params_len()];
            let Ok(mut e) = Engine::new(&back, &mut arena, &mut params) else {
                return false;
            };
            if let Some(p) = pb {
                let Ok(p) = Patch::parse(p) else { return false };
                if e.apply(p).is_err() {
                    return false;
                }
            }
            let _ = e.run_f32(&input);
            true
        });
        match outcome {
            Ok(true) => accepted += 1,
            Ok(false) => rejected += 1,
            Err(_) => panic!(
                "round {round}: corrupted {} made the runtime panic",
                if target_patch { "patch" } else { "backbone" }
            ),
        }
    }
    println!("resealed corruption: {accepted} accepted and ran, {rejected} rejected with an error");
    assert!(rejected > 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn failed_apply_leaves_the_previous_task_active() {
    let (dir, bb, sb, dw) = small_export("failed-apply");
    let back = Backbone::parse(&bb).unwrap();
    let input = input_for(&back);
    let mut arena = vec![0i8; back.arena_len()];
    let mut params = vec![ChannelRequant::default(); back.params_len()];
    let mut e = Engine::new(&back, &mut arena, &mut params).unwrap();
    e.apply(Patch::parse(&sb).unwrap()).unwrap();
    let before_params = e.params().to_vec();
    let before = e.run_f32(&input).unwrap().quantized().to_vec();

    // 1. Structurally bad: a per-channel entry resized (resealed so that it parses).
    let p = Patch::parse(&dw).unwrap();
    let mut bad = dw.clone();
    let off = p.header().entries_off as usize;
    bad[off + 2] = 0xee; // first entry's target op -> out of range
    reseal(&mut bad);
    let err = e.apply(Patch::parse(&bad).unwrap()).unwrap_err();
    assert!(matches!(err, FormatError::BadEntry { .. }), "{err:?}");

    // 2. Valid structure, but a tensor scale that makes a multiplier overflow:
    //    fails while deriving, after validation.
    let mut bad2 = dw.clone();
    let p2 = Patch::parse(&dw).unwrap();
    let mut pos = p2.header().entries_off as usize;
    let tq_entry = p2
        .entries()
        .position(|e| e.kind == EntryKind::TensorQuant)
        .unwrap() as u32;
    assert!(tq_entry > 0);
    for ent in p2.entries() {
        if ent.kind == EntryKind::TensorQuant {
            let out_t = back.header().output as usize;
            let at = pos + 8 + 8 * out_t; // the output tensor's scale
            bad2[at..at + 4].copy_from_slice(&1e-30f32.to_le_bytes());
        }
        pos += graftnet::format::entry::entry_len(ent.payload.len());
    }
    reseal(&mut bad2);
    let err2 = e.apply(Patch::parse(&bad2).unwrap()).unwrap_err();
    assert!(err2.to_string().contains("out of range"), "{err2}");
    // The entry at fault is named, not "entry 0" (issue 13, finding 5): the
    // head op fails only with the patch's activation scales.
    assert!(
        matches!(err2, FormatError::BadEntry { entry, .. } if entry == tq_entry),
        "{err2:?}, tensor-quant entry {tq_entry}"
    );

    assert_eq!(e.task_name(), "sb");
    assert_eq!(
        e.params(),
        before_params.as_slice(),
        "parameters changed by a failed apply"
    );
    assert_eq!(
        e.run_f32(&input).unwrap().quantized(),
        before.as_slice(),
        "results changed by a failed apply"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn task_beyond_a_patch_says_where() {
    let dir = scratch("beyond");
    let base = tiny_cnn(1);
    let s = ExportStyle::default();
    let pw = base.non_depthwise_conv_indices()[1];
    let changed = perturb_pointwise(&base, pw, 4);
    let dropped = drop_last_block(&base);
    for (n, p) in [
        ("base", &base),
        ("changed", &changed),
        ("dropped", &dropped),
    ] {
        std::fs::write(dir.join(format!("{n}.onnx")), to_onnx(p, &s)).unwrap();
    }
    let [_, c, h, w] = base.input_shape();
    write_npy_f32(
        dir.join("calib.npy"),
        &[4, c, h, w],
        &random_inputs(4, c, h, w, 5),
    )
    .unwrap();
    let opts = |task: &str| ExportOptions {
        base: dir.join("base.onnx"),
        tasks: vec![(task.into(), dir.join(format!("{task}.onnx")))],
        calib: dir.join("calib.npy"),
        out: dir.join(format!("out-{task}")),
        ..Default::default()
    };
    let e = format!("{:#}", export(&opts("changed")).unwrap_err());
    assert!(
        e.contains("beyond what a patch may express") && e.contains("op ") && e.contains("node '"),
        "{e}"
    );
    assert!(e.contains("--other override"), "{e}");
    // With the override policy the change is carried whole, as "other".
    let mut o = opts("changed");
    o.other = graftnet_tools::export::OtherPolicy::Override;
    let r = export(&o).unwrap();
    assert!(r.tasks[1]
        .bytes_by_class
        .iter()
        .any(|(c, b)| *c == graftnet::format::EntryClass::Other && *b > 0));
    let e = format!("{:#}", export(&opts("dropped")).unwrap_err());
    assert!(
        e.contains("beyond what a patch may express") && e.contains("ops"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unknown_task_name_lists_the_tasks() {
    let (dir, _, _, _) = small_export("unknown-task");
    let d = ExportDir::open(&dir.join("out")).unwrap();
    let err = d.with_engine("nope", |_| Ok(())).unwrap_err();
    let u = err
        .downcast_ref::<UnknownTask>()
        .expect("typed UnknownTask");
    assert_eq!(u.known, vec!["base", "dw", "sb"]);
    assert!(err.to_string().contains("unknown task 'nope'"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn patches_stream_through_embedded_io() {
    let (dir, bb, sb, _) = small_export("stream");
    let back = Backbone::parse(&bb).unwrap();
    let input = input_for(&back);
    let want = scores(&bb, Some(&sb), &npy_from(&dir, &back, &input), 1)[0].clone();
    let mut buf = vec![0u8; sb.len()];
    let mut reader: &[u8] = &sb;
    let p = Patch::read(&mut reader, &mut buf).unwrap();
    let mut arena = vec![0i8; back.arena_len()];
    let mut params = vec![ChannelRequant::default(); back.params_len()];
    let mut e = Engine::new(&back, &mut arena, &mut params).unwrap();
    e.apply(p).unwrap();
    assert_eq!(e.run_f32(&input).unwrap().quantized(), want.as_slice());
    // Too small a buffer, and a stream that ends early.
    let mut small = vec![0u8; sb.len() - 1];
    let mut reader: &[u8] = &sb;
    assert!(matches!(
        Patch::read(&mut reader, &mut small),
        Err(FormatError::BufferTooSmall { .. })
    ));
    let mut reader: &[u8] = &sb[..sb.len() - 3];
    let mut buf2 = vec![0u8; sb.len()];
    assert_eq!(
        Patch::read(&mut reader, &mut buf2).unwrap_err(),
        FormatError::Io
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn npy_from(
    dir: &std::path::Path,
    back: &Backbone<'_>,
    x: &[f32],
) -> graftnet_tools::data::Dataset {
    let t = back.input();
    let p = dir.join("one.npy");
    write_npy_f32(&p, &[1, t.c as usize, t.h as usize, t.w as usize], x).unwrap();
    npy(&p, None)
}

/// Recomputes a backbone's fingerprint and checksum after an edit (what a
/// buggy writer or an attacker would do).
fn reseal_backbone(blob: &mut [u8]) {
    graftnet::format::backbone::seal(blob);
}

/// Issue 13, finding 1: the 80-byte header `"GNBB" 01 00 50 00` + 72 zero
/// bytes (total length 0) made `Backbone::parse` index past the slice, and
/// `graftnet inspect` / `run` exit 101. Now a typed error, and the CLI says
/// what is wrong.
#[test]
fn header_shorter_than_itself_is_a_typed_error() {
    let mut blob = vec![0u8; 80];
    blob[..8].copy_from_slice(&[b'G', b'N', b'B', b'B', 0x01, 0x00, 0x50, 0x00]);
    assert_eq!(
        Backbone::parse(&blob).unwrap_err(),
        FormatError::TooShort {
            declared: 0,
            min: 80
        }
    );
    let dir = scratch("short-header");
    std::fs::write(dir.join("backbone.gnb"), &blob).unwrap();
    let e = graftnet_tools::inspect::inspect(&dir.join("backbone.gnb"), None, false).unwrap_err();
    assert!(e.to_string().contains("total length of 0 bytes"), "{e}");
    let d = ExportDir::open(&dir).unwrap();
    let e = d.with_engine("base", |_| Ok(())).unwrap_err();
    assert!(e.to_string().contains("total length of 0 bytes"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13, finding 2: a re-sealed backbone declaring a 4 GiB arena was
/// accepted (and a loader allocated it). The arena may be at most all
/// tensors side by side (16-aligned), a tensor's capacity at most its
/// shape or the class capacity; the exporter's own plans stay inside.
#[test]
fn declared_arena_and_capacities_are_bounded_by_the_graph() {
    let (dir, bb, _, _) = small_export("arena");
    let back = Backbone::parse(&bb).unwrap();
    let side_by_side: u64 = (0..back.n_tensors())
        .map(|i| back.tensor(i))
        .filter(|t| t.alias_of == graftnet::format::NONE)
        .map(|t| (t.capacity as u64 + 15) & !15)
        .sum();
    assert!(back.arena_len() as u64 <= side_by_side);
    let with_arena = |n: u32| {
        let mut b = bb.clone();
        b[64..68].copy_from_slice(&n.to_le_bytes());
        reseal_backbone(&mut b);
        b
    };
    Backbone::parse(&with_arena(side_by_side as u32)).expect("the bound itself is allowed");
    for n in [side_by_side as u32 + 16, 1 << 31, u32::MAX] {
        assert_eq!(
            Backbone::parse(&with_arena(n)).unwrap_err(),
            FormatError::Oversized {
                what: "arena",
                declared: n,
                max: side_by_side
            }
        );
    }
    // Growing a tensor's capacity with the arena does not get around it.
    let mut b = with_arena(u32::MAX);
    let t0 = back.tensor(0);
    b[80 + 12..80 + 16].copy_from_slice(&(1u32 << 30).to_le_bytes());
    reseal_backbone(&mut b);
    let e = Backbone::parse(&b).unwrap_err();
    assert!(
        matches!(e, FormatError::Oversized { what: "tensor capacity", declared, max }
            if declared == 1 << 30 && max == (t0.len() as u64).max(back.max_classes() as u64)),
        "{e:?}"
    );
    assert!(e.to_string().contains("never needs more than"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13, finding 5: scale codes at the top of their range and bias
/// codes of ±Inf, NaN or the saturated ±65504 were applied and run. They
/// are refused with the entry, op, channel and code, and the active task
/// stays as it was. The all-zero scale code (a dead channel) is valid.
#[test]
fn out_of_range_codes_are_refused_and_leave_the_task_active() {
    let (dir, bb, sb, _) = small_export("codes");
    let back = Backbone::parse(&bb).unwrap();
    let input = input_for(&back);
    let mut arena = vec![0i8; back.arena_len()];
    let mut params = vec![ChannelRequant::default(); back.params_len()];
    let mut e = Engine::new(&back, &mut arena, &mut params).unwrap();
    e.apply(Patch::parse(&sb).unwrap()).unwrap();
    let before_params = e.params().to_vec();
    let before = e.run_f32(&input).unwrap().quantized().to_vec();
    let p = Patch::parse(&sb).unwrap();
    let offsets = entry_offsets(&p);
    let entries: Vec<_> = p.entries().collect();
    let with_code = |kind: EntryKind, channel: usize, code: u16| {
        let i = entries.iter().position(|x| x.kind == kind).unwrap();
        let mut b = sb.clone();
        let at = offsets[i] + 8 + 2 * channel;
        b[at..at + 2].copy_from_slice(&code.to_le_bytes());
        reseal(&mut b);
        (i as u32, entries[i].op, b)
    };
    let cases = [
        (EntryKind::ScaleCodes, 0x7fff),
        (EntryKind::ScaleCodes, 0xffff),
        (EntryKind::BiasCodes, 0x7c00), // +Inf
        (EntryKind::BiasCodes, 0xfc00), // -Inf
        (EntryKind::BiasCodes, 0x7e00), // NaN
        (EntryKind::BiasCodes, 0x7bff), // 65504, saturated
        (EntryKind::BiasCodes, 0xfbff), // -65504
    ];
    // (The engine borrows every patch it is handed, so they outlive the loop.)
    let bads: Vec<_> = cases.iter().map(|&(k, c)| with_code(k, 1, c)).collect();
    for (&(kind, code), (entry, op, bad)) in cases.iter().zip(&bads) {
        let (entry, op) = (*entry, *op);
        let err = e.apply(Patch::parse(bad).unwrap()).unwrap_err();
        assert!(
            matches!(err, FormatError::BadCode { entry: en, op: o, channel: 1, code: c, .. }
                if en == entry && o == op && c == code),
            "{kind:?} {code:#06x}: {err:?}"
        );
        assert!(err.to_string().contains("channel 1"), "{err}");
        assert_eq!(e.task_name(), "sb");
        assert_eq!(e.params(), before_params.as_slice());
        assert_eq!(e.run_f32(&input).unwrap().quantized(), before.as_slice());
    }
    let (_, _, dead) = with_code(EntryKind::ScaleCodes, 1, 0x0000);
    e.apply(Patch::parse(&dead).unwrap())
        .expect("scale code 0 is what an all-zero channel gets");
    // The base task inside the backbone is held to the same rule.
    let mut b = bb.clone();
    let (mut pos, task_off) = (0usize, back.header().task_off as usize);
    for ent in back.base_entries() {
        if ent.kind == EntryKind::BiasCodes {
            let at = task_off + pos + 8;
            b[at..at + 2].copy_from_slice(&0x7c00u16.to_le_bytes());
            break;
        }
        pos += graftnet::format::entry::entry_len(ent.payload.len());
    }
    reseal_backbone(&mut b);
    assert!(matches!(
        Backbone::parse(&b),
        Err(FormatError::BadCode {
            channel: 0,
            code: 0x7c00,
            ..
        })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes a tiny model and `calib` as its calibration set; returns the
/// export options (base only).
fn tiny_with_calib(tag: &str, calib: impl Fn(&mut Vec<f32>)) -> (PathBuf, ExportOptions) {
    let dir = scratch(tag);
    let base = tiny_cnn(1);
    std::fs::write(
        dir.join("base.onnx"),
        to_onnx(&base, &ExportStyle::default()),
    )
    .unwrap();
    let [_, c, h, w] = base.input_shape();
    let mut x = random_inputs(4, c, h, w, 5);
    calib(&mut x);
    write_npy_f32(dir.join("calib.npy"), &[4, c, h, w], &x).unwrap();
    let opts = ExportOptions {
        base: dir.join("base.onnx"),
        calib: dir.join("calib.npy"),
        out: dir.join("out"),
        ..Default::default()
    };
    (dir, opts)
}

/// Issue 13, finding 3: NaN or infinite calibration data exported with
/// exit 0 (all-NaN silently, a single bad value unnoticed). The export now
/// fails naming the file and the first bad value, and writes nothing.
#[test]
fn exporter_refuses_non_finite_calibration_data() {
    let n_per = |o: &ExportOptions| {
        let d = graftnet_tools::data::read_npy(&o.calib).unwrap();
        d.shape[1] * d.shape[2] * d.shape[3]
    };
    for (tag, at, v) in [
        ("calib-nan-one", Some(77usize), f32::NAN),
        ("calib-inf-one", Some(5), f32::INFINITY),
        ("calib-ninf-one", Some(0), f32::NEG_INFINITY),
        ("calib-nan-all", None, f32::NAN),
    ] {
        let (dir, o) = tiny_with_calib(tag, |x| match at {
            Some(i) => x[i] = v,
            None => x.iter_mut().for_each(|y| *y = v),
        });
        let first = at.unwrap_or(0);
        let e = format!("{:#}", export(&o).unwrap_err());
        assert!(
            e.contains("calib.npy") && e.contains(&format!("flat index {first} ")),
            "{tag}: {e}"
        );
        assert!(e.contains("not finite"), "{e}");
        let n = n_per(&o);
        assert!(
            e.contains(&format!("position [{}, ", first / n)),
            "{tag}: {e}"
        );
        assert!(
            !o.out.join("backbone.gnb").exists(),
            "{tag}: wrote a backbone"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Issue 13, finding 3: calibration values of 3e38 exported with exit 0 a
/// backbone that `inspect` and `run` refuse ("quantization parameters out
/// of range"). The export runs the runtime on its blobs first and fails,
/// naming the op and its tensors, without writing anything.
#[test]
fn exporter_refuses_what_the_runtime_would_refuse() {
    let (dir, o) = tiny_with_calib("calib-huge", |x| x.iter_mut().for_each(|y| *y *= 3e38));
    let e = format!("{:#}", export(&o).unwrap_err());
    assert!(e.contains("the runtime would refuse this export"), "{e}");
    assert!(e.contains("is node '") && e.contains("scale"), "{e}");
    assert!(!o.out.join("backbone.gnb").exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13, finding 3: NaN or an infinity in an input is refused by the
/// runtime (`RunError::NonFiniteInput`) and by `graftnet run`'s loader,
/// which names the file and the value.
#[test]
fn non_finite_inputs_are_refused() {
    let (dir, bb, _, _) = small_export("input-nan");
    let back = Backbone::parse(&bb).unwrap();
    let mut arena = vec![0i8; back.arena_len()];
    let mut params = vec![ChannelRequant::default(); back.params_len()];
    let mut e = Engine::new(&back, &mut arena, &mut params).unwrap();
    let good = input_for(&back);
    let want = e.run_f32(&good).unwrap().quantized().to_vec();
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = good.clone();
        x[3] = v;
        assert_eq!(
            e.run_f32(&x).unwrap_err(),
            graftnet::RunError::NonFiniteInput { index: 3 }
        );
        let mut q = vec![0i8; x.len()];
        assert_eq!(
            e.quantize_input(&x, &mut q).unwrap_err(),
            graftnet::RunError::NonFiniteInput { index: 3 }
        );
    }
    assert_eq!(e.run_f32(&good).unwrap().quantized(), want.as_slice());
    let t = back.input();
    let mut x = good.clone();
    x[3] = f32::NAN;
    let p = dir.join("nan.npy");
    write_npy_f32(&p, &[1, t.c as usize, t.h as usize, t.w as usize], &x).unwrap();
    let err = graftnet_tools::data::load_input(&p, &Default::default()).unwrap_err();
    assert!(
        err.to_string().contains("nan.npy") && err.to_string().contains("flat index 3 "),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 13, finding 4: exporting into an existing directory rewrote the
/// manifest but left old `.gnp` files, which still matched the fingerprint
/// and were served. The export removes them (and says so), and the loader
/// serves only what the manifest lists.
#[test]
fn stale_patches_are_removed_and_never_served() {
    let (dir, _, _, dw) = small_export("stale");
    let out = dir.join("out");
    // Export again into the same directory, without the dw task.
    let opts = ExportOptions {
        base: dir.join("base.onnx"),
        tasks: vec![("sb".into(), dir.join("sb.onnx"))],
        calib: dir.join("calib.npy"),
        out: out.clone(),
        ..Default::default()
    };
    let r = export(&opts).unwrap();
    assert_eq!(r.removed, vec![out.join("dw.gnp")]);
    assert!(!out.join("dw.gnp").exists());
    let d = ExportDir::open(&out).unwrap();
    assert_eq!(d.task_names(), vec!["base", "sb"]);
    assert!(d.ignored.is_empty());
    // A stale copy put back by hand still matches the backbone...
    std::fs::write(out.join("dw.gnp"), &dw).unwrap();
    let bb = std::fs::read(out.join("backbone.gnb")).unwrap();
    assert_eq!(
        Patch::parse(&dw).unwrap().backbone_fingerprint(),
        Backbone::parse(&bb).unwrap().fingerprint()
    );
    // ...but is not served.
    let d = ExportDir::open(&out).unwrap();
    assert_eq!(d.task_names(), vec!["base", "sb"]);
    assert_eq!(d.ignored, vec![out.join("dw.gnp")]);
    assert!(d.warnings()[0].contains("not listed in manifest.json"));
    let err = d.with_engine("dw", |_| Ok(())).unwrap_err();
    assert!(err.downcast_ref::<UnknownTask>().is_some(), "{err}");
    // A listed patch that is missing is an error, not a smaller task list.
    std::fs::remove_file(out.join("sb.gnp")).unwrap();
    let err = ExportDir::open(&out).unwrap_err();
    assert!(
        err.to_string().contains("'sb.gnp', which is missing"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A patch carries its task's version; a device that persisted the highest
/// version it accepted refuses an older release (a rollback) and keeps its
/// task, and the version costs unversioned patches no byte.
#[test]
fn older_task_versions_are_refused_and_leave_the_task_active() {
    let (dir, bb, sb_v0, dw) = small_export("task-version");
    let v5 = dir.join("v5");
    export(&ExportOptions {
        base: dir.join("base.onnx"),
        tasks: vec![("sb".into(), dir.join("sb.onnx"))],
        calib: dir.join("calib.npy"),
        out: v5.clone(),
        task_version: 5,
        ..Default::default()
    })
    .unwrap();
    let sb_v5 = std::fs::read(v5.join("sb.gnp")).unwrap();
    assert_eq!(std::fs::read(v5.join("backbone.gnb")).unwrap(), bb);
    // Only the version field differs (and the checksum over it).
    let diff: Vec<usize> = (0..sb_v0.len()).filter(|&i| sb_v0[i] != sb_v5[i]).collect();
    assert!(
        diff.iter()
            .all(|&i| (12..16).contains(&i) || (40..44).contains(&i)),
        "{diff:?}"
    );
    let (p0, p5) = (Patch::parse(&sb_v0).unwrap(), Patch::parse(&sb_v5).unwrap());
    assert_eq!((p0.task_version(), p5.task_version()), (0, 5));

    let back = Backbone::parse(&bb).unwrap();
    let mut arena = vec![0i8; back.arena_len()];
    let mut params = vec![ChannelRequant::default(); back.params_len()];
    let mut e = Engine::new(&back, &mut arena, &mut params).unwrap();
    let x = input_for(&back);
    e.apply(Patch::parse(&dw).unwrap()).unwrap();
    let before = e.run_f32(&x).unwrap().quantized().to_vec();
    match e.apply_newer(p5, 6) {
        Err(FormatError::OlderVersion { version: 5, min: 6 }) => {}
        other => panic!("expected OlderVersion, got {other:?}"),
    }
    assert_eq!(e.task_name(), "dw");
    assert_eq!(e.run_f32(&x).unwrap().quantized(), &before[..]);
    e.apply_newer(p5, 5).unwrap();
    assert_eq!(e.task_name(), "sb");
    assert!(
        e.apply_newer(p0, 1).is_err(),
        "an unversioned patch is version 0"
    );
}
