//! `graftnet device` against the Linux device service (`graftnet-device
//! --protocol postcard`, run in-process on a Unix socket over a directory
//! that starts with a backbone and no patches): every command, scores
//! identical to `graftnet run --json`, and the refusals of issue 11 ("Done
//! means", point 2) — malformed frames, a truncated upload, an upload for
//! another backbone, a corrupted chunk, an unknown task, an oversized
//! input — each a typed error, with the service up and the active task
//! unchanged afterwards.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{graftnet, ok, s};
use graftnet_protocol::{ErrorCode, FormatKind, Input};
use graftnet_tools::device::{Client, Refused};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The refusal inside `r`'s error.
fn refused<T: std::fmt::Debug>(r: anyhow::Result<T>) -> Refused {
    let e = r.expect_err("expected a refusal");
    e.downcast_ref::<Refused>()
        .unwrap_or_else(|| panic!("not a refusal: {e:#}"))
        .clone()
}

/// A device serving `dir` on a Unix socket in this process, until dropped.
struct Device {
    sock: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Device {
    fn start(dir: &Path, sock: &Path) -> Self {
        let _ = std::fs::remove_file(sock);
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (dir, st) = (dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            graftnet_device::with_export(&dir, None, graftnet_device::HOST, 1 << 20, |srv| {
                let mode = graftnet_device::Mode::postcard(
                    srv,
                    graftnet_device::Limits {
                        max_connections: 4,
                        timeout: Duration::from_secs(60),
                        max_request: 1 << 20,
                    },
                );
                graftnet_device::serve_socket(srv, listener.incoming(), mode, &st);
            })
            .unwrap();
        });
        Device {
            sock: sock.to_path_buf(),
            stop,
            thread: Some(thread),
        }
    }

    fn spec(&self) -> String {
        format!("unix:{}", self.sock.display())
    }

    fn client(&self) -> Client {
        Client::connect(&self.spec()).unwrap()
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::os::unix::net::UnixStream::connect(&self.sock);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Exports the mnv2 test models (base, mnist-sb, mnist-dw,
/// fashion-binary-logits) to `out`.
fn export(out: &Path) {
    let m = root().join("tests/models/mnv2");
    let d = root().join("tests/models/data");
    let task = |n: &str| format!("{n}={}", s(&m.join(format!("{n}.folded.onnx"))));
    let (a, b, c) = (
        task("mnist-sb"),
        task("mnist-dw"),
        task("fashion-binary-logits"),
    );
    let (base, calib) = (m.join("base.folded.onnx"), d.join("fashion_calib_x.npy"));
    ok(&[
        "export",
        "--base",
        s(&base),
        "--task",
        &a,
        "--task",
        &b,
        "--task",
        &c,
        "--calib",
        s(&calib),
        "--out",
        s(out),
    ]);
}

/// Sample `i` of a test set as a one-sample .npy (1,C,H,W).
fn sample(data: &str, i: usize, out: &Path) -> PathBuf {
    let a = graftnet_tools::data::read_npy(root().join("tests/models/data").join(data)).unwrap();
    let n: usize = a.shape[1..].iter().product();
    let x = a.as_f32().unwrap();
    let mut shape = a.shape.clone();
    shape[0] = 1;
    let p = out.join(format!("{data}-{i}.npy"));
    graftnet_tools::data::write_npy_f32(&p, &shape, &x[i * n..(i + 1) * n]).unwrap();
    p
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn device_protocol_end_to_end() {
    let work = std::env::temp_dir().join(format!("graftnet-device-proto-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let exp = work.join("export");
    export(&exp);
    // The device starts with the backbone and no patches.
    let dev_dir = work.join("device");
    std::fs::create_dir_all(&dev_dir).unwrap();
    std::fs::copy(exp.join("backbone.gnb"), dev_dir.join("backbone.gnb")).unwrap();
    let dev = Device::start(&dev_dir, &work.join("d.sock"));
    let spec = dev.spec();
    let c = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["device".to_string(), "--connect".into(), spec.clone()];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    };
    let run = |args: &[&str]| ok(&c(args).iter().map(String::as_str).collect::<Vec<_>>());

    let info = run(&["info"]);
    let fp = graftnet::Backbone::parse(&std::fs::read(exp.join("backbone.gnb")).unwrap())
        .unwrap()
        .fingerprint();
    assert!(info.contains(&format!("backbone:   {fp:016x}")), "{info}");
    assert!(
        info.contains("tasks:      1 resident, 'base' active"),
        "{info}"
    );
    assert!(info.contains("protocol:   1"), "{info}");

    // Upload two patches with the CLI (small chunks: many requests, resumable path).
    for t in ["mnist-sb", "mnist-dw"] {
        let out = run(&[
            "upload",
            s(&exp.join(format!("{t}.gnp"))),
            "--chunk",
            "4096",
        ]);
        assert!(out.contains(&format!("task '{t}' committed")), "{out}");
        assert!(dev_dir.join(format!("{t}.gnp")).is_file());
    }
    let tasks = run(&["tasks"]);
    assert_eq!(tasks.lines().count(), 3, "{tasks}");

    // Scores: identical to `graftnet run --json` for the same export and input.
    let inputs = [
        sample("mnist_test_x.npy", 0, &work),
        sample("mnist_test_x.npy", 1, &work),
        sample("fashion_test_x.npy", 0, &work),
    ];
    let mut n_compared = 0;
    for x in &inputs {
        for t in ["mnist-sb", "base", "mnist-dw"] {
            let want = json_lines(&ok(&[
                "run",
                s(&exp),
                "--task",
                t,
                "--input",
                s(x),
                "--json",
            ]));
            let got = json_lines(&run(&[
                "infer",
                "--task",
                t,
                "--input",
                s(x),
                "--json",
                "--dir",
                s(&exp),
            ]));
            assert_eq!(got, want, "{t} on {}", x.display());
            n_compared += 1;
        }
        // Several tasks on one input in one request: the same results.
        let multi = json_lines(&run(&[
            "infer",
            "--task",
            "mnist-dw",
            "--task",
            "base",
            "--task",
            "mnist-sb",
            "--input",
            s(x),
            "--json",
            "--dir",
            s(&exp),
        ]));
        let single: Vec<_> = ["mnist-dw", "base", "mnist-sb"]
            .iter()
            .map(|t| {
                json_lines(&ok(&[
                    "run",
                    s(&exp),
                    "--task",
                    t,
                    "--input",
                    s(x),
                    "--json",
                ]))
                .remove(0)
            })
            .collect();
        assert_eq!(multi, single);
    }
    assert_eq!(n_compared, 9);

    // Refusals: each typed, the service up, the active task unchanged.
    let mut cl = dev.client();
    cl.switch("mnist-sb").unwrap();
    let before = cl.tasks().unwrap();
    assert_eq!(before.1, "mnist-sb");
    let n = cl.info.n_input();
    let check_unchanged = |cl: &mut Client| {
        assert_eq!(
            cl.tasks().unwrap(),
            before,
            "the task set and the active task are unchanged"
        );
    };
    // Malformed frames: garbage, a truncated frame, a frame beyond max_frame.
    assert_eq!(
        cl.raw(&[0x13, 0x37, 0xff, 0x00]).unwrap().code,
        ErrorCode::Malformed
    );
    let mut f = vec![0u8; 64];
    let frame = graftnet_protocol::encode(
        &graftnet_protocol::Request::Switch { task: "mnist-dw" },
        &mut f,
    )
    .unwrap()
    .to_vec();
    let mut truncated = frame[..frame.len() - 4].to_vec();
    truncated.push(0);
    assert_eq!(cl.raw(&truncated).unwrap().code, ErrorCode::Malformed);
    let max = cl.info.max_frame;
    let huge = vec![0x55u8; max as usize + 10]
        .into_iter()
        .chain([0])
        .collect::<Vec<_>>();
    assert_eq!(
        cl.raw(&huge).unwrap().code,
        ErrorCode::FrameTooLarge { max }
    );
    check_unchanged(&mut cl);
    // An unknown task.
    assert_eq!(refused(cl.switch("nope")).code, ErrorCode::UnknownTask);
    assert_eq!(
        refused(cl.infer(&["mnist-dw", "nope"], Input::I8(&vec![0; n]))).code,
        ErrorCode::UnknownTask
    );
    check_unchanged(&mut cl);
    // An oversized input (and a short one).
    let r = refused(cl.infer(&[], Input::I8(&vec![0; n + 1])));
    assert_eq!(
        r.code,
        ErrorCode::InputSize {
            expected: n as u32,
            got: n as u32 + 1
        }
    );
    assert_eq!(
        refused(cl.infer(&[], Input::F32(&[0; 12]))).code,
        ErrorCode::InputSize {
            expected: n as u32,
            got: 3
        }
    );
    check_unchanged(&mut cl);
    // A truncated upload: half the bytes, then commit.
    let logits = std::fs::read(exp.join("fashion-binary-logits.gnp")).unwrap();
    let total = logits.len() as u32;
    let half = logits.len() / 2;
    assert_eq!(
        cl.upload_chunk("fashion-binary-logits", total, 0, &logits[..half])
            .unwrap(),
        half as u32
    );
    let r = refused(cl.commit("fashion-binary-logits"));
    assert_eq!(
        r.code,
        ErrorCode::UploadIncomplete {
            held: half as u32,
            total_len: total
        }
    );
    // A chunk at the wrong offset, and one past the end.
    assert_eq!(
        refused(cl.upload_chunk("fashion-binary-logits", total, 7, &logits[7..20])).code,
        ErrorCode::OffsetMismatch { held: half as u32 }
    );
    assert_eq!(
        refused(cl.upload_chunk("fashion-binary-logits", total, half as u32, &logits[..])).code,
        ErrorCode::TooLarge { max: total }
    );
    check_unchanged(&mut cl);
    // Resume on a new connection from what the device holds, then commit.
    drop(cl);
    let mut cl = dev.client();
    assert_eq!(
        cl.upload_chunk("fashion-binary-logits", total, 0, &[])
            .unwrap(),
        half as u32
    );
    let t = cl
        .upload("fashion-binary-logits", &logits, 1000, |_, _| {})
        .unwrap();
    assert_eq!((t.name.as_str(), t.bytes), ("fashion-binary-logits", total));
    let mut before = before;
    before.0 = cl.tasks().unwrap().0;
    assert_eq!(before.0.len(), 4);
    let check_unchanged = |cl: &mut Client| {
        assert_eq!(
            cl.tasks().unwrap(),
            before,
            "the task set and the active task are unchanged"
        );
    };
    // A corrupted chunk: one byte flipped in transit.
    let sb = std::fs::read(exp.join("mnist-sb.gnp")).unwrap();
    let mut bad = sb.clone();
    bad[sb.len() / 2] ^= 0x40;
    let r = refused(cl.upload("mnist-sb", &bad, 1 << 20, |_, _| {}));
    assert_eq!(
        r.code,
        ErrorCode::Format(FormatKind::ChecksumMismatch),
        "{}",
        r.detail
    );
    check_unchanged(&mut cl);
    assert_eq!(
        std::fs::read(dev_dir.join("mnist-sb.gnp")).unwrap(),
        sb,
        "the stored patch is untouched"
    );
    // An upload for another backbone (a valid blob, resealed).
    let mut foreign = sb.clone();
    let p = graftnet::Patch::parse(&sb).unwrap();
    graftnet::format::patch::HeaderRepr {
        backbone: fp ^ 1,
        ..*p.header()
    }
    .emit(&mut foreign);
    graftnet::format::patch::seal(&mut foreign);
    let r = refused(cl.upload("mnist-sb", &foreign, 1 << 20, |_, _| {}));
    assert_eq!(
        r.code,
        ErrorCode::WrongBackbone {
            expected: fp,
            found: fp ^ 1
        }
    );
    // Not a patch at all, and a patch uploaded under another name.
    assert_eq!(
        refused(cl.upload("junk", &[7u8; 100], 64, |_, _| {})).code,
        ErrorCode::Format(FormatKind::BadMagic)
    );
    assert_eq!(
        refused(cl.upload("other", &sb, 1 << 20, |_, _| {})).code,
        ErrorCode::InvalidName
    );
    assert_eq!(
        refused(cl.upload("../x", &sb, 1 << 20, |_, _| {})).code,
        ErrorCode::InvalidName
    );
    check_unchanged(&mut cl);
    let stray: Vec<_> = std::fs::read_dir(&dev_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !stray
            .iter()
            .any(|f| f.contains("tmp") || f.starts_with("junk") || f.starts_with("other")),
        "{stray:?}"
    );
    // The service is still up for the CLI, and refusals end it with exit 1.
    let (code, _, err) = graftnet(
        &c(&["switch", "nope"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown task 'nope'"), "{err}");
    // Delete: the task, its file.
    run(&["delete", "mnist-dw"]);
    assert!(!dev_dir.join("mnist-dw.gnp").exists());
    assert_eq!(refused(cl.switch("mnist-dw")).code, ErrorCode::UnknownTask);
    assert_eq!(refused(cl.delete("base")).code, ErrorCode::Protected);
    drop(cl);
    drop(dev);
    // A restart serves what was committed: `graftnet run` on the device's
    // directory gives the export's results.
    let x = &inputs[0];
    for t in ["mnist-sb", "fashion-binary-logits"] {
        let want = ok(&["run", s(&exp), "--task", t, "--input", s(x), "--json"]);
        let got = ok(&["run", s(&dev_dir), "--task", t, "--input", s(x), "--json"]);
        let (w, g) = (json_lines(&want), json_lines(&got));
        assert_eq!(
            (&g[0]["scores"], &g[0]["top1"]),
            (&w[0]["scores"], &w[0]["top1"]),
            "{t}"
        );
    }
    let _ = std::fs::remove_dir_all(work);
}
