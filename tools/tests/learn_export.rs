//! End-to-end through the shipped `graftnet` binary, each command its own
//! process: `learn` writes ONNX that `export` turns into the patch kind it
//! trained; `export --backbone` adds a task to a backbone written by an
//! earlier run, bit-exactly as if exported together, and refuses a base or
//! calibration that does not reproduce that backbone.

use std::path::{Path, PathBuf};

mod common;
use common::*;

/// Learns each patch kind on the MNIST fixture digits from the shipped
/// MobileNetV2 base, exports them together, and checks which entry kinds
/// each patch carries.
#[test]
fn learned_tasks_export_as_the_patch_kind_they_trained() {
    let m = models();
    let d = scratch("learn-export");
    let base = m.join("mnv2/base.folded.onnx");
    let (train_x, train_y) = (
        m.join("data/mnist_test_x.npy"),
        m.join("data/mnist_test_y.npy"),
    );
    let mut tasks = vec![];
    for kind in ["logits", "sb+logits", "dw+logits"] {
        let out = d.join(format!("{}.onnx", kind.replace('+', "-")));
        let j = ok(&[
            "learn",
            "--base",
            s(&base),
            "--train",
            s(&train_x),
            "--train-labels",
            s(&train_y),
            "--val",
            s(&train_x),
            "--val-labels",
            s(&train_y),
            "--patch",
            kind,
            "--epochs",
            "1",
            "--batch",
            "32",
            "--threads",
            "2",
            "--out",
            s(&out),
            "--json",
        ]);
        let j: serde_json::Value = serde_json::from_str(j.trim()).expect("one JSON object");
        for key in [
            "patch",
            "epochs",
            "train_images",
            "images_per_s",
            "val_top1",
            "trainable_params",
        ] {
            assert!(!j[key].is_null(), "learn --json lacks {key}: {j}");
        }
        assert_eq!(j["patch"], kind);
        assert_eq!(j["train_images"], 192);
        tasks.push((kind, out));
    }
    let exp = d.join("export");
    let mut args: Vec<String> = [
        "export",
        "--base",
        s(&base),
        "--calib",
        s(&m.join("data/fashion_calib_x.npy")),
        "--out",
        s(&exp),
        "--json",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    for (kind, p) in &tasks {
        let name = kind.replace('+', "-");
        args.push("--task".into());
        args.push(format!("{name}={}", p.display()));
        args.push("--calib-task".into());
        args.push(format!(
            "{name}={}",
            m.join("data/mnist_calib_x.npy").display()
        ));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let j: serde_json::Value = serde_json::from_str(ok(&refs).trim()).unwrap();
    let kinds = |name: &str| -> Vec<String> {
        let t = j["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap();
        t["bytes_by_class"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap() > 0)
            .map(|(k, _)| k.clone())
            .collect()
    };
    for (name, want, not) in [
        ("logits", "head", vec!["S/B", "DW", "other"]),
        ("sb-logits", "S/B", vec!["DW", "other"]),
        ("dw-logits", "DW", vec!["S/B", "other"]),
    ] {
        let k = kinds(name);
        assert!(k.iter().any(|x| x == want), "{name}: {k:?}");
        assert!(k.iter().any(|x| x == "head"), "{name}: {k:?}");
        for n in not {
            assert!(!k.iter().any(|x| x == n), "{name} carries {n}: {k:?}");
        }
    }
}

#[test]
fn a_task_exported_later_applies_to_the_earlier_backbone() {
    let m = models();
    let d = scratch("backbone-later");
    let base = m.join("mnv2/base.folded.onnx");
    let calib = m.join("data/fashion_calib_x.npy");
    let task = |name: &str, file: &str, calib: &str| {
        vec![
            "--task".to_string(),
            format!("{name}={}", m.join("mnv2").join(file).display()),
            "--calib-task".to_string(),
            format!("{name}={}", m.join("data").join(calib).display()),
        ]
    };
    let export = |out: &Path, extra: Vec<String>| -> (bool, String, String) {
        let mut a: Vec<String> = vec![
            "export".into(),
            "--base".into(),
            s(&base).into(),
            "--calib".into(),
            s(&calib).into(),
            "--out".into(),
            s(out).into(),
        ];
        a.extend(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let (code, out, err) = graftnet(&refs);
        (code == 0, out, err)
    };
    // Together, in one run.
    let together = d.join("together");
    let mut both = task("mnist", "mnist-sb.folded.onnx", "mnist_calib_x.npy");
    both.extend(task(
        "updown",
        "fashion-updown-sb.folded.onnx",
        "fashion-updown_calib_x.npy",
    ));
    assert!(export(&together, both).0);
    // First the backbone with one task; later, in another process, a second task.
    let first = d.join("first");
    assert!(
        export(
            &first,
            task("mnist", "mnist-sb.folded.onnx", "mnist_calib_x.npy")
        )
        .0
    );
    let later = d.join("later");
    let mut extra = task(
        "updown",
        "fashion-updown-sb.folded.onnx",
        "fashion-updown_calib_x.npy",
    );
    extra.extend(["--backbone".into(), s(&first.join("backbone.gnb")).into()]);
    let (success, _, err) = export(&later, extra.clone());
    assert!(success, "{err}");
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert_eq!(
        read(later.join("updown.gnp")),
        read(together.join("updown.gnp")),
        "the later patch is byte-identical to the one exported together"
    );
    assert_eq!(
        read(later.join("backbone.gnb")),
        read(first.join("backbone.gnb"))
    );
    // The earlier export's directory gains the task and keeps its own.
    let (success, _, err) = export(&first, extra.clone());
    assert!(success, "{err}");
    let manifest = std::fs::read_to_string(first.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"mnist\"") && manifest.contains("\"updown\""));
    assert!(first.join("mnist.gnp").is_file() && first.join("updown.gnp").is_file());
    // The later patch runs on the earlier backbone: same scores as together.
    let sample = m.join("data/fashion-updown_test_x.npy");
    let one = d.join("one.npy");
    {
        let arr = graftnet_tools::data::read_npy(&sample).unwrap();
        let x = arr.as_f32().unwrap();
        graftnet_tools::data::write_npy_f32(&one, &[1, 1, 32, 32], &x[..1024]).unwrap();
    }
    let run = |dir: &Path| {
        ok(&[
            "run",
            s(dir),
            "--task",
            "updown",
            "--input",
            s(&one),
            "--json",
        ])
    };
    assert_eq!(run(&first), run(&together));

    // Another calibration set, or another base, is refused with a reason.
    let mut wrong_calib = extra.clone();
    wrong_calib.extend(["--calib-limit".into(), "16".into()]);
    let (success, _, err) = export(&d.join("bad1"), wrong_calib);
    assert!(!success);
    assert!(
        err.contains("does not reproduce") && err.contains("calibration"),
        "{err}"
    );
    let mut a: Vec<String> = vec![
        "export".into(),
        "--base".into(),
        s(&m.join("mnv2/mnist-dw.folded.onnx")).into(),
        "--calib".into(),
        s(&calib).into(),
        "--out".into(),
        s(&d.join("bad2")).into(),
    ];
    a.extend(extra);
    let refs: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, _, err) = graftnet(&refs);
    assert_ne!(code, 0);
    assert!(
        err.contains("does not reproduce") && err.contains("weights"),
        "{err}"
    );
}

/// `learn --export DIR` writes the learned task as a patch for the backbone
/// an earlier export left in DIR, which keeps its tasks.
#[test]
fn learn_export_adds_a_patch_to_an_existing_export() {
    let m = models();
    let d = scratch("learn-into");
    let base = m.join("mnv2/base.folded.onnx");
    let dir = d.join("export");
    ok(&[
        "export",
        "--base",
        s(&base),
        "--calib",
        s(&m.join("data/fashion_calib_x.npy")),
        "--task",
        &format!("mnist-sb={}", m.join("mnv2/mnist-sb.folded.onnx").display()),
        "--calib-task",
        &format!("mnist-sb={}", m.join("data/mnist_calib_x.npy").display()),
        "--out",
        s(&dir),
    ]);
    let before = std::fs::read(dir.join("backbone.gnb")).unwrap();
    let j = ok(&[
        "learn",
        "--base",
        s(&base),
        "--train",
        s(&m.join("data/mnist_test_x.npy")),
        "--train-labels",
        s(&m.join("data/mnist_test_y.npy")),
        "--patch",
        "sb+logits",
        "--epochs",
        "1",
        "--out",
        s(&d.join("digits.onnx")),
        "--export",
        s(&dir),
        "--calib",
        s(&m.join("data/mnist_calib_x.npy")),
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(j.trim()).unwrap();
    assert_eq!(j["patches"][0]["task"], "digits", "{j}");
    assert_eq!(std::fs::read(dir.join("backbone.gnb")).unwrap(), before);
    assert!(dir.join("digits.gnp").is_file() && dir.join("mnist-sb.gnp").is_file());
    let one = d.join("one.npy");
    let arr = graftnet_tools::data::read_npy(m.join("data/mnist_test_x.npy")).unwrap();
    graftnet_tools::data::write_npy_f32(&one, &[1, 1, 32, 32], &arr.as_f32().unwrap()[..1024])
        .unwrap();
    for task in ["digits", "mnist-sb"] {
        let out = ok(&["run", s(&dir), "--task", task, "--input", s(&one), "--json"]);
        assert!(out.contains("\"top1\""), "{out}");
    }
}
