//! Issue 13: a long randomized run of one engine over a shipped model's
//! export (`graftnet soak`) finds no result that differs from the per-task
//! reference, and every corrupted patch it tries is refused.

use graftnet::{Backbone, ChannelRequant, Engine, Patch};
use graftnet_tests::*;
use graftnet_tools::host::ExportDir;
use graftnet_tools::pipeline::{export, ExportOptions};
use graftnet_tools::rng::Rng;
use graftnet_tools::soak::{flip_bits, reseal_mutation, soak, truncate, Mutation, SoakOptions};

/// tests/models/mnv2 (folded) with its four tasks, exported to a scratch dir.
fn mnv2_export(tag: &str) -> std::path::PathBuf {
    let m = models();
    let data = m.join("data");
    let out = scratch(tag);
    let mut opts = ExportOptions {
        base: m.join("mnv2/base.folded.onnx"),
        calib: data.join("fashion_calib_x.npy"),
        out: out.join("export"),
        ..Default::default()
    };
    for (t, d) in [
        ("mnist-sb", "mnist"),
        ("mnist-dw", "mnist"),
        ("fashion-updown-sb", "fashion-updown"),
        ("fashion-binary-logits", "fashion-binary"),
    ] {
        opts.tasks
            .push((t.to_string(), m.join(format!("mnv2/{t}.folded.onnx"))));
        opts.calib_tasks
            .insert(t.to_string(), data.join(format!("{d}_calib_x.npy")));
    }
    export(&opts).unwrap();
    out
}

#[test]
fn ten_thousand_iterations_without_a_mismatch() {
    let dir = mnv2_export("soak");
    let d = ExportDir::open(&dir.join("export")).unwrap();
    let r = soak(
        &d,
        &SoakOptions {
            iters: 10_000,
            seed: 13,
            ..Default::default()
        },
    )
    .unwrap();
    println!("{}", r.to_json());
    assert_eq!(r.iterations, 10_000);
    assert_eq!(r.mismatches, 0, "{:?}", r.failures);
    assert_eq!(r.accepted, 0, "{:?}", r.failures);
    // Every kind of step happened, many times.
    assert!(
        r.inferences > 5_000 && r.switches > 2_000 && r.rejected > 2_000,
        "{r}"
    );
    // The fashion test images as inputs instead of random ones.
    let r = soak(
        &d,
        &SoakOptions {
            iters: 1_000,
            seed: 14,
            data: Some(models().join("data/fashion_test_x.npy")),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.ok() && r.inferences > 0, "{r}: {:?}", r.failures);
    let _ = std::fs::remove_dir_all(dir);
}

/// Each corruption the soak makes is refused by the runtime, and the
/// engine's task and parameters stay as they were.
#[test]
fn every_soak_corruption_is_refused() {
    let dir = mnv2_export("soak-corruptions");
    let d = ExportDir::open(&dir.join("export")).unwrap();
    let bb = Backbone::parse(&d.backbone).unwrap();
    let sb = Patch::parse(&d.patches["mnist-sb"]).unwrap();
    let mut rng = Rng::new(5);
    let mut made = Vec::new();
    for blob in d.patches.values() {
        for _ in 0..50 {
            made.push(flip_bits(blob, &mut rng));
            made.push(truncate(blob, &mut rng));
        }
        for m in Mutation::ALL {
            for _ in 0..10 {
                made.push(
                    reseal_mutation(blob, bb.n_ops(), m, &mut rng)
                        .unwrap_or_else(|| panic!("{m:?} found nothing to change")),
                );
            }
        }
    }
    let mut arena = vec![0i8; bb.arena_len()];
    let mut params = vec![ChannelRequant::default(); bb.params_len()];
    let mut e = Engine::new(&bb, &mut arena, &mut params).unwrap();
    e.apply(sb).unwrap();
    let before = e.params().to_vec();
    for c in &made {
        if let Ok(p) = Patch::parse(&c.bytes) {
            assert!(e.apply(p).is_err(), "accepted: {}", c.what);
        }
        assert_eq!(e.task_name(), "mnist-sb", "{}", c.what);
    }
    assert_eq!(e.params(), before.as_slice());
    let _ = std::fs::remove_dir_all(dir);
}
