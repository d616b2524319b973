//! Signed exports end to end through the `graftnet` binary, each command
//! its own process: `keygen`, `export --sign`, `sign`, and `--verify-key`
//! on `run`, `eval`, `bench` and `inspect`. A refused blob ends the
//! command with exit code 1 (never a panic's 101) and a message that says
//! which file and why.

use std::path::Path;

mod common;
use common::*;

fn flip(p: &Path, at_from_end: usize) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() - at_from_end;
    b[i] ^= 0x04;
    std::fs::write(p, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn keygen_export_sign_and_verify_through_the_binary() {
    let d = scratch("signing-cli");
    let m = models();
    let data = m.join("data");
    let key = d.join("device.key");
    let out = ok(&["keygen", "--out", s(&key)]);
    assert!(out.contains("key id"), "{out}");
    let pubkey = d.join("device.key.pub");
    let secret = std::fs::read_to_string(&key).unwrap();
    let public = std::fs::read_to_string(&pubkey).unwrap();
    assert!(
        secret.starts_with("# graftnet ed25519 secret key"),
        "{secret}"
    );
    assert!(
        public.starts_with("# graftnet ed25519 public key"),
        "{public}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the secret key is private: {mode:o}");
    }
    refused(&["keygen", "--out", s(&key)], "refusing to overwrite");

    // Export signed and unsigned.
    let (base, sb, logits) = (
        m.join("mnv2/base.folded.onnx"),
        m.join("mnv2/mnist-sb.folded.onnx"),
        m.join("mnv2/fashion-binary-logits.folded.onnx"),
    );
    let export = |dir: &Path, sign: Option<&Path>| {
        let mut a = vec![
            "export".to_string(),
            "--base".into(),
            s(&base).into(),
            "--task".into(),
            format!("mnist-sb={}", s(&sb)),
            "--task".into(),
            format!("fashion-binary-logits={}", s(&logits)),
            "--calib".into(),
            s(&data.join("fashion_calib_x.npy")).into(),
            "--out".into(),
            s(dir).into(),
        ];
        if let Some(k) = sign {
            a.push("--sign".into());
            a.push(s(k).into());
        }
        ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let signed = d.join("signed");
    let plain = d.join("plain");
    let out = export(&signed, Some(&key));
    assert!(
        out.contains("signed   the backbone and every patch with key"),
        "{out}"
    );
    export(&plain, None);
    for f in ["backbone.gnb", "mnist-sb.gnp", "fashion-binary-logits.gnp"] {
        let (a, b) = (
            std::fs::read(plain.join(f)).unwrap(),
            std::fs::read(signed.join(f)).unwrap(),
        );
        assert_eq!(b.len(), a.len() + 80, "{f}");
        assert_eq!(
            &b[..a.len()],
            a.as_slice(),
            "{f}: the blob's bytes are unchanged"
        );
    }

    // run --verify-key: the signed export runs, with the same scores as
    // the unsigned one without a key.
    let sample = d.join("one.npy");
    {
        let x = graftnet_tools::data::load_dataset(
            &data.join("mnist_test_x.npy"),
            None,
            &Default::default(),
        )
        .unwrap();
        let (c, h, w) = x.shape;
        graftnet_tools::data::write_npy_f32(&sample, &[1, c, h, w], x.sample(0)).unwrap();
    }
    let run = |dir: &Path, key: Option<&Path>| -> Vec<String> {
        let mut a = vec![
            "run",
            s(dir),
            "--task",
            "mnist-sb",
            "--input",
            s(&sample),
            "--json",
        ];
        if let Some(k) = key {
            a.extend(["--verify-key", s(k)]);
        }
        vec![ok(&a)]
    };
    assert_eq!(run(&signed, Some(&pubkey)), run(&plain, None));
    assert_eq!(run(&signed, None), run(&plain, None));

    // The unsigned export, a foreign key, the secret key by mistake.
    let run_args = |dir: &Path, k: &Path, task: &'static str| -> Vec<String> {
        [
            "run",
            s(dir),
            "--task",
            task,
            "--input",
            s(&sample),
            "--verify-key",
            s(k),
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let refused_run = |dir: &Path, k: &Path, task: &'static str, what: &str| {
        let a = run_args(dir, k, task);
        refused(&a.iter().map(String::as_str).collect::<Vec<_>>(), what)
    };
    let msg = refused_run(&plain, &pubkey, "mnist-sb", "is not signed");
    assert!(msg.contains("backbone.gnb"), "{msg}");
    let other = d.join("other.key");
    ok(&["keygen", "--out", s(&other)]);
    let other_pub = d.join("other.key.pub");
    refused_run(&signed, &other_pub, "base", "is signed with key");
    refused_run(&signed, &key, "base", "is a secret key");

    // A modified patch: refused with a key (the signature), and even
    // without one (its CRC); the other tasks still run.
    let bad = d.join("bad");
    copy_dir(&signed, &bad);
    flip(&bad.join("mnist-sb.gnp"), 500);
    let msg = refused_run(&bad, &pubkey, "mnist-sb", "bad signature");
    assert!(msg.contains("mnist-sb.gnp"), "{msg}");
    let a = run_args(&bad, &pubkey, "fashion-binary-logits");
    ok(&a.iter().map(String::as_str).collect::<Vec<_>>());
    // A modified signature (the trailer's last byte): only the key sees it.
    let bad2 = d.join("bad2");
    copy_dir(&signed, &bad2);
    flip(&bad2.join("backbone.gnb"), 1);
    refused_run(&bad2, &pubkey, "base", "bad signature");
    ok(&["run", s(&bad2), "--task", "base", "--input", s(&sample)]);

    // eval and inspect with the key.
    let ev = ok(&[
        "eval",
        s(&signed),
        "--task",
        "mnist-sb",
        "--data",
        s(&data.join("mnist_test_x.npy")),
        "--labels",
        s(&data.join("mnist_test_y.npy")),
        "--limit",
        "16",
        "--verify-key",
        s(&pubkey),
    ]);
    assert!(ev.contains("int8 top-1"), "{ev}");
    refused(
        &[
            "eval",
            s(&bad),
            "--task",
            "mnist-sb",
            "--data",
            s(&data.join("mnist_test_x.npy")),
            "--labels",
            s(&data.join("mnist_test_y.npy")),
            "--verify-key",
            s(&pubkey),
        ],
        "bad signature",
    );
    let js = ok(&[
        "inspect",
        s(&signed.join("mnist-sb.gnp")),
        "--verify-key",
        s(&pubkey),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert_eq!(v["signature"]["verified"], true, "{v}");
    assert!(v["signature"]["verify_us"].as_f64().unwrap() > 0.0);
    let text = ok(&["inspect", s(&plain.join("backbone.gnb"))]);
    assert!(text.contains("signature: none (unsigned)"), "{text}");
    refused(
        &[
            "inspect",
            s(&bad.join("mnist-sb.gnp")),
            "--verify-key",
            s(&pubkey),
        ],
        "bad signature",
    );

    // sign: an unsigned export becomes one the key accepts; --out leaves
    // the input as it was; a file that is no blob is refused.
    let resigned = d.join("resigned");
    copy_dir(&plain, &resigned);
    let out = ok(&[
        "sign",
        s(&resigned.join("backbone.gnb")),
        s(&resigned.join("mnist-sb.gnp")),
        s(&resigned.join("fashion-binary-logits.gnp")),
        "--key",
        s(&key),
    ]);
    assert_eq!(out.lines().count(), 3, "{out}");
    for f in ["backbone.gnb", "mnist-sb.gnp", "fashion-binary-logits.gnp"] {
        assert_eq!(
            std::fs::read(resigned.join(f)).unwrap(),
            std::fs::read(signed.join(f)).unwrap(),
            "{f}: Ed25519 signs deterministically"
        );
    }
    assert_eq!(run(&resigned, Some(&pubkey)), run(&plain, None));
    let copy = d.join("copy.gnp");
    ok(&[
        "sign",
        s(&plain.join("mnist-sb.gnp")),
        "--key",
        s(&other),
        "--out",
        s(&copy),
    ]);
    assert_eq!(
        std::fs::read(plain.join("mnist-sb.gnp")).unwrap().len() + 80,
        std::fs::read(&copy).unwrap().len()
    );
    refused(
        &["sign", s(&sample), "--key", s(&key)],
        "neither a graftnet backbone",
    );
    refused(
        &["sign", s(&bad.join("mnist-sb.gnp")), "--key", s(&key)],
        "not a valid patch",
    );
    refused(
        &["sign", s(&plain.join("mnist-sb.gnp")), "--key", s(&pubkey)],
        "is a public key",
    );

    // bench times the checks.
    let js = ok(&[
        "bench",
        s(&signed),
        "--iters",
        "2",
        "--json",
        "--verify-key",
        s(&pubkey),
    ]);
    let v: serde_json::Value = serde_json::from_str(&js).unwrap();
    assert!(v["verify_backbone_us"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["verify_patch_us"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["switch_from_signed_bytes_us"].as_f64().is_some(), "{v}");
    refused(
        &[
            "bench",
            s(&plain),
            "--iters",
            "2",
            "--verify-key",
            s(&pubkey),
        ],
        "is not signed",
    );
    let _ = std::fs::remove_dir_all(d);
}
