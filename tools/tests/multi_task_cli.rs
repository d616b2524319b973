//! Several tasks through the `graftnet` binary: `export --share-prefix`,
//! `run --task A --task B --json` (one object per task under `results`,
//! each equal to a single-task `run --json`), `bench --tasks`.

mod common;
use common::*;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{e}: {s}"))
}

#[test]
fn run_and_bench_several_tasks_in_one_pass() {
    let d = scratch("multi-cli");
    let m = models();
    let data = m.join("data");
    let out = d.join("export");
    let (base, sb, logits) = (
        m.join("mnv2/base.folded.onnx"),
        m.join("mnv2/mnist-sb.folded.onnx"),
        m.join("mnv2/fashion-binary-logits.folded.onnx"),
    );
    let (calib, calib_b, calib_m) = (
        data.join("fashion_calib_x.npy"),
        data.join("fashion-binary_calib_x.npy"),
        data.join("mnist_calib_x.npy"),
    );
    ok(&[
        "export",
        "--base",
        s(&base),
        "--task",
        &format!("mnist-sb={}", s(&sb)),
        "--task",
        &format!("logits={}", s(&logits)),
        "--calib",
        s(&calib),
        "--calib-task",
        &format!("logits={}", s(&calib_b)),
        "--calib-task",
        &format!("mnist-sb={}", s(&calib_m)),
        "--share-prefix",
        "--out",
        s(&out),
    ]);
    // One test image as (1, C, H, W).
    let input = d.join("one.npy");
    let ds = graftnet_tools::data::load_dataset(
        &data.join("fashion_test_x.npy"),
        None,
        &Default::default(),
    )
    .unwrap();
    let (c, h, w) = ds.shape;
    graftnet_tools::data::write_npy_f32(&input, &[1, c, h, w], ds.sample(7)).unwrap();
    let run = |tasks: &[&str]| -> serde_json::Value {
        let mut a = vec!["run", s(&out), "--input", s(&input), "--json"];
        for t in tasks {
            a.extend(["--task", t]);
        }
        json(&ok(&a))
    };
    let together = run(&["base", "logits", "mnist-sb", "logits"]);
    let results = together["results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    for r in results {
        let alone = run(&[r["task"].as_str().unwrap()]);
        assert_eq!(r, &alone, "one pass vs alone");
    }
    // The S/B task changes the first layer: nothing shared with it.
    assert_eq!(together["shared_ops"], 0);
    let pair = run(&["base", "logits"]);
    let ops = pair["ops"].as_u64().unwrap();
    assert_eq!(
        pair["shared_ops"].as_u64(),
        Some(ops - 1),
        "all but the head"
    );
    // With threads the same.
    let mut a = vec![
        "run",
        s(&out),
        "--input",
        s(&input),
        "--json",
        "--threads",
        "2",
    ];
    a.extend(["--task", "base", "--task", "logits"]);
    assert_eq!(json(&ok(&a)), pair);
    let b = json(&ok(&[
        "bench",
        s(&out),
        "--tasks",
        "base,logits",
        "--iters",
        "3",
        "--json",
    ]));
    assert_eq!(b["tasks"], serde_json::json!(["base", "logits"]));
    assert_eq!(b["multi_shared_ops"].as_u64(), Some(ops - 1));
    assert!(b["multi_ms"].as_f64().unwrap() > 0.0);
    // Unknown task: a clear refusal.
    refused(
        &[
            "run",
            s(&out),
            "--input",
            s(&input),
            "--task",
            "base",
            "--task",
            "nope",
        ],
        "nope",
    );
    let _ = std::fs::remove_dir_all(&d);
}
