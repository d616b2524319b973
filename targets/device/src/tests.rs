//! The device's tests: bounded lines and connections, timeouts, signed
//! blobs, and the binary protocol over a socket, on a one-op backbone
//! written with the runtime's own emitters.

use super::*;
use graftnet::format::backbone::{seal, HeaderRepr, Layout, OpInfo, TensorInfo};
use graftnet::format::entry::{emit_entry, entry_len};
use graftnet::format::{Act, EntryClass, EntryKind, OpKind, NONE};
use graftnet::quant::{encode_bias, encode_scale_ceil};
use graftnet::Backbone;
use std::io::BufRead;
use std::os::unix::net::UnixStream;

#[test]
fn lines_are_bounded() {
    let max = 100;
    let mut long = vec![b'x'; max + 10];
    long.extend_from_slice(b"\n{\"a\":1}\r\nlast");
    let mut r = std::io::Cursor::new(long);
    let mut buf = Vec::new();
    assert!(matches!(
        read_line(&mut r, &mut buf, max).unwrap(),
        Line::TooLong
    ));
    assert!(matches!(
        read_line(&mut r, &mut buf, max).unwrap(),
        Line::Data
    ));
    assert_eq!(buf, b"{\"a\":1}");
    assert!(matches!(
        read_line(&mut r, &mut buf, max).unwrap(),
        Line::Data
    ));
    assert_eq!(buf, b"last");
    assert!(matches!(
        read_line(&mut r, &mut buf, max).unwrap(),
        Line::Eof
    ));
}

/// A one-op backbone (a fully connected classifier over a `c x h x w`
/// input, `classes` outputs), written with the runtime's own emitters.
fn tiny_backbone(c: u16, h: u16, w: u16, classes: u16) -> Vec<u8> {
    let n = c as usize * h as usize * w as usize;
    let k = classes as usize;
    let weights: Vec<u8> = (0..k * n)
        .map(|i| ((i * 37 % 255) as i32 - 127) as i8 as u8)
        .collect();
    let sums_off = weights.len().next_multiple_of(4);
    let mut wsec = weights.clone();
    wsec.resize(sums_off, 0);
    for ch in 0..k {
        let sum: i32 = weights[ch * n..(ch + 1) * n]
            .iter()
            .map(|&x| x as i8 as i32)
            .sum();
        wsec.extend_from_slice(&sum.to_le_bytes());
    }
    let scale = encode_scale_ceil(1.0 / 127.0, false).to_le_bytes();
    let scales: Vec<u8> = (0..k).flat_map(|_| scale).collect();
    let biases: Vec<u8> = (0..k)
        .flat_map(|_| encode_bias(0.0).to_le_bytes())
        .collect();
    let mut tq = Vec::new();
    for s in [1.0f32 / 64.0, 0.1] {
        tq.extend_from_slice(&s.to_le_bytes());
        tq.extend_from_slice(&[0; 4]);
    }
    let entries = [
        (EntryKind::ScaleCodes, EntryClass::Head, 0u16, scales),
        (EntryKind::BiasCodes, EntryClass::Head, 0, biases),
        (EntryKind::TensorQuant, EntryClass::Meta, NONE, tq),
    ];
    let task_len: usize = entries.iter().map(|e| entry_len(e.3.len())).sum();
    let lay = Layout::new(2, 1, task_len, wsec.len());
    let mut b = vec![0u8; lay.total_len];
    let out_off = n.next_multiple_of(16);
    HeaderRepr {
        total_len: lay.total_len as u32,
        fingerprint: 0,
        n_tensors: 2,
        n_ops: 1,
        input: 0,
        output: 1,
        head_op: 0,
        max_classes: classes,
        flags: 0,
        tensors_off: lay.tensors_off as u32,
        ops_off: lay.ops_off as u32,
        task_off: lay.task_off as u32,
        task_len: task_len as u32,
        weights_off: lay.weights_off as u32,
        weights_len: wsec.len() as u32,
        arena_len: (out_off + k) as u32,
        params_len: 1 + classes as u32,
        n_task_entries: entries.len() as u32,
    }
    .emit(&mut b);
    let t = |c, h, w, arena_off, capacity| TensorInfo {
        c,
        h,
        w,
        alias_of: NONE,
        arena_off,
        capacity,
    };
    t(c, h, w, 0, n as u32).emit(&mut b[lay.tensors_off..]);
    t(classes, 1, 1, out_off as u32, k as u32).emit(&mut b[lay.tensors_off + 16..]);
    OpInfo {
        kind: OpKind::Conv,
        act: Act::None,
        in0: 0,
        in1: NONE,
        out: 1,
        kh: h as u8,
        kw: w as u8,
        sh: 1,
        sw: 1,
        pads: [0; 4],
        groups: 1,
        flags: 0,
        weight_off: 0,
        sums_off: sums_off as u32,
        act_lo: f32::NEG_INFINITY,
        act_hi: f32::INFINITY,
    }
    .emit(&mut b[lay.ops_off..]);
    let mut at = lay.task_off;
    for (kind, class, op, payload) in &entries {
        at += emit_entry(&mut b[at..], *kind, *class, *op, payload);
    }
    b[lay.weights_off..].copy_from_slice(&wsec);
    seal(&mut b);
    b
}

/// Runs `f(socket path)` against a device serving `backbone` with
/// `limits` on a Unix socket; the server is stopped afterwards.
fn with_device(backbone: &[u8], limits: Limits, f: impl FnOnce(&Path, &Mutex<Server<'_>>)) {
    with_device_as(backbone, |_| Mode::json(limits, 16), f)
}

/// [`with_device`] with the protocol and limits `mode` gives for the server.
fn with_device_as(
    backbone: &[u8],
    mode: impl FnOnce(&Mutex<Server<'_>>) -> Mode,
    f: impl FnOnce(&Path, &Mutex<Server<'_>>),
) {
    let bb = Backbone::parse(backbone).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "graftnet-device-sock-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let srv = Mutex::new(Server::new(
        bb,
        PatchStore::new(&dir, vec![]),
        None,
        "test".into(),
        DEFAULT_MAX_PATCH,
    ));
    let path = dir.join("s.sock");
    let listener = bind(&path).unwrap();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (srv, stop) = (&srv, &stop);
        let mode = mode(srv);
        s.spawn(move || serve_socket(srv, listener.incoming(), mode, stop));
        // Stops the server even when `f` panics (else the scope would wait forever).
        struct Stop<'x>(&'x AtomicBool, &'x Path);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
                let _ = UnixStream::connect(self.1); // wakes the accept loop
            }
        }
        let _stop = Stop(stop, &path);
        f(&path, srv);
    });
    let _ = std::fs::remove_dir_all(dir);
}

fn client(p: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let c = UnixStream::connect(p).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = BufReader::new(c.try_clone().unwrap());
    (c, r)
}

fn ask(c: &mut (UnixStream, BufReader<UnixStream>), line: &str) -> serde_json::Value {
    writeln!(c.0, "{line}").unwrap();
    read_json(&mut c.1)
}

fn read_json(r: &mut BufReader<UnixStream>) -> serde_json::Value {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

fn request(id: u32, n: usize) -> String {
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
    serde_json::json!({"id": id, "task": "base", "input": x}).to_string()
}

fn limits(max_connections: usize, timeout_ms: u64) -> Limits {
    Limits {
        max_connections,
        timeout: Duration::from_millis(timeout_ms),
        ..Limits::for_input(16)
    }
}

#[test]
fn request_size_limit_follows_the_model_input() {
    assert_eq!(max_request_bytes(16), 32 * 16 + 65536);
    assert_eq!(max_request_bytes(3 * 224 * 224), 4_882_432);
    for (c, h, w) in [(1, 4, 4), (3, 8, 8)] {
        let b = tiny_backbone(c, h, w, 3);
        let n = Backbone::parse(&b).unwrap().input().len();
        assert_eq!(n, c as usize * h as usize * w as usize);
        assert_eq!(Limits::for_input(n).max_request, 32 * n + 65536);
    }
    // A valid request padded to the limit is served; one byte more is
    // refused unparsed, and the connection carries on.
    let b = tiny_backbone(1, 4, 4, 3);
    let lim = Limits::for_input(16);
    with_device(&b, lim, |p, _| {
        let mut c = client(p);
        let base = request(1, 16);
        let pad = |len: usize| {
            format!(
                "{}{}}}",
                &base[..base.len() - 1],
                " ".repeat(len - base.len())
            )
        };
        let v = ask(&mut c, &pad(lim.max_request));
        assert_eq!(v["id"], 1, "{v}");
        assert!(v["scores"].is_array(), "{v}");
        let v = ask(&mut c, &pad(lim.max_request + 1));
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains(&format!("longer than {} bytes", lim.max_request)),
            "{v}"
        );
        assert_eq!(ask(&mut c, &request(3, 16))["id"], 3);
    });
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let b = tiny_backbone(1, 4, 4, 3);
    with_device(&b, limits(2, 10_000), |p, _| {
        let mut a = client(p);
        let mut c = client(p);
        assert_eq!(ask(&mut a, &request(1, 16))["id"], 1);
        assert_eq!(ask(&mut c, &request(2, 16))["id"], 2);
        let mut third = client(p);
        let v = read_json(&mut third.1);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("too many connections"),
            "{v}"
        );
        let mut rest = String::new();
        assert_eq!(
            third.1.read_line(&mut rest).unwrap_or(0),
            0,
            "closed after the error: {rest:?}"
        );
        // The two served ones still are; once one leaves, a new one is served.
        assert_eq!(ask(&mut a, &request(3, 16))["id"], 3);
        drop(c);
        let t0 = Instant::now();
        loop {
            // (Refused: the write may fail, or the line read is the error.)
            let mut d = client(p);
            let _ = writeln!(d.0, "{}", request(4, 16));
            let mut s = String::new();
            let _ = d.1.read_line(&mut s);
            if s.contains("\"id\":4") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "no slot freed: {s}");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

#[test]
fn idle_and_slow_connections_time_out() {
    let b = tiny_backbone(1, 4, 4, 3);
    with_device(&b, limits(4, 300), |p, _| {
        // Idle from the start.
        let t0 = Instant::now();
        let mut idle = client(p);
        let v = read_json(&mut idle.1);
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("no complete request line within"),
            "{v}"
        );
        let mut rest = String::new();
        assert_eq!(idle.1.read_line(&mut rest).unwrap_or(0), 0);
        assert!(t0.elapsed() < Duration::from_secs(5));
        // Served, then idle.
        let mut c = client(p);
        assert_eq!(ask(&mut c, &request(1, 16))["id"], 1);
        assert!(read_json(&mut c.1)["error"].is_string());
        // Trickling a line: the deadline is per line, not per read.
        let mut slow = client(p);
        let line = request(2, 16);
        let mut timed_out = false;
        for chunk in line.as_bytes().chunks(4) {
            if slow.0.write_all(chunk).is_err() {
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut s = String::new();
        let _ = slow.1.read_line(&mut s);
        assert!(timed_out || s.contains("no complete request line"), "{s}");
    });
}

#[test]
fn a_slow_client_does_not_hold_up_another() {
    let b = tiny_backbone(1, 4, 4, 3);
    with_device(&b, limits(4, 10_000), |p, srv| {
        // A partial line, never finished.
        let mut slow = client(p);
        let line = request(1, 16);
        slow.0
            .write_all(&line.as_bytes()[..line.len() / 2])
            .unwrap();
        let mut fast = client(p);
        let t0 = Instant::now();
        assert_eq!(ask(&mut fast, &request(2, 16))["id"], 2);
        assert!(t0.elapsed() < Duration::from_secs(5));
        // Parsing happens outside the engine lock: while it is held, a
        // malformed request is still answered.
        let guard = srv.lock().unwrap();
        let v = ask(&mut fast, r#"{"id": 3, "task": "base", "input": [1, 2]}"#);
        assert_eq!(v["id"], 3);
        assert!(v["error"].as_str().unwrap().contains("has 2 values"), "{v}");
        drop(guard);
        slow.0
            .write_all(&line.as_bytes()[line.len() / 2..])
            .unwrap();
        slow.0.write_all(b"\n").unwrap();
        assert_eq!(read_json(&mut slow.1)["id"], 1);
    });
}

/// A patch with no entries (the base task under another name) for the
/// backbone with fingerprint `fp`.
fn empty_patch(name: &str, fp: u64) -> Vec<u8> {
    use graftnet::format::patch::{seal, HeaderRepr};
    let off = HeaderRepr::entries_off(name.len());
    let mut b = vec![0u8; off];
    HeaderRepr {
        total_len: off as u32,
        backbone: fp,
        n_entries: 0,
        classes: 3,
        name_len: name.len() as u16,
        entries_off: off as u32,
        task_version: 0,
    }
    .emit(&mut b);
    b[48..48 + name.len()].copy_from_slice(name.as_bytes());
    seal(&mut b);
    b
}

fn signed(blob: &[u8], key: &graftnet::SigningKey) -> Vec<u8> {
    let mut v = blob.to_vec();
    v.extend_from_slice(&key.sign(blob));
    v
}

/// `--verify-key`: an unsigned, foreign or modified patch is left out
/// with a warning that says why; such a backbone stops the start.
/// Without the key everything is served as before.
#[test]
fn verify_key_refuses_unsigned_foreign_and_modified_blobs() {
    let d = std::env::temp_dir().join(format!("graftnet-device-verify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let key = graftnet::SigningKey::from_seed(&[9; 32]);
    let other = graftnet::SigningKey::from_seed(&[10; 32]);
    let bb = tiny_backbone(1, 4, 4, 3);
    let fp = Backbone::parse(&bb).unwrap().fingerprint();
    std::fs::write(d.join("backbone.gnb"), signed(&bb, &key)).unwrap();
    std::fs::write(d.join("good.gnp"), signed(&empty_patch("good", fp), &key)).unwrap();
    std::fs::write(d.join("plain.gnp"), empty_patch("plain", fp)).unwrap();
    std::fs::write(
        d.join("foreign.gnp"),
        signed(&empty_patch("foreign", fp), &other),
    )
    .unwrap();
    let mut modified = signed(&empty_patch("modified", fp), &key);
    modified[48] ^= b'm' ^ b'n'; // the name: "nodified"
    let n = modified.len() - graftnet::format::signature::TRAILER_LEN;
    graftnet::format::patch::seal(&mut modified[..n]);
    std::fs::write(d.join("modified.gnp"), &modified).unwrap();
    let hex: String = key
        .verify_key()
        .to_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        d.join("key.pub"),
        format!("# graftnet ed25519 public key\n{hex}\n"),
    )
    .unwrap();
    std::fs::write(d.join("key"), "# graftnet ed25519 secret key\n00\n").unwrap();

    let vk = read_verify_key(&d.join("key.pub")).unwrap();
    assert!(read_verify_key(&d.join("key"))
        .unwrap_err()
        .contains("is a secret key"));
    let x = ExportBytes::read(&d).unwrap();
    let back = x.backbone(Some(&vk)).unwrap();
    let (ok, warnings) = x.patches(&back, Some(&vk));
    assert_eq!(
        ok.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        ["good"]
    );
    assert_eq!(ok[0].1, d.join("good.gnp"));
    let says = |file: &str, what: &str| {
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(file) && w.contains(what)),
            "{file}: {what}: {warnings:?}"
        );
    };
    says("plain.gnp", "is not signed");
    says("foreign.gnp", "is signed with key");
    says("modified.gnp", "bad signature");
    // The server refuses the tasks left out; the good one runs.
    let tasks = ok
        .iter()
        .map(|(_, f, p)| StoredTask::new(PatchMeta::of(p), f.to_path_buf(), p.bytes().to_vec()))
        .collect();
    let srv = Mutex::new(Server::new(
        back,
        PatchStore::new(&d, tasks),
        Some(vk),
        "test".into(),
        DEFAULT_MAX_PATCH,
    ));
    let x16: Vec<f32> = vec![0.5; 16];
    let ask = |task: &str| {
        respond(
            &srv,
            16,
            &serde_json::json!({"id": 1, "task": task, "input": x16}).to_string(),
        )
        .unwrap()
    };
    assert!(ask("good").contains("\"top1\""), "{}", ask("good"));
    assert!(
        ask("plain").contains("unknown task 'plain'"),
        "{}",
        ask("plain")
    );
    // Without a key: every patch (the modified one's CRC was resealed).
    let back2 = x.backbone(None).unwrap();
    let (all, w2) = x.patches(&back2, None);
    assert_eq!(all.len(), 4, "{w2:?}");
    // An unsigned or modified backbone stops the start.
    std::fs::write(d.join("backbone.gnb"), &bb).unwrap();
    let x = ExportBytes::read(&d).unwrap();
    let e = x.backbone(Some(&vk)).err().unwrap().to_string();
    assert!(
        e.contains("backbone.gnb") && e.contains("is not signed"),
        "{e}"
    );
    let mut bad = signed(&bb, &key);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(d.join("backbone.gnb"), &bad).unwrap();
    let x = ExportBytes::read(&d).unwrap();
    assert!(x
        .backbone(Some(&vk))
        .err()
        .unwrap()
        .to_string()
        .contains("bad signature"));
    assert!(x.backbone(None).is_ok());
    // The flag.
    let args = parse_args(
        ["--dir", "x", "--verify-key", "k.pub"]
            .into_iter()
            .map(String::from),
    )
    .unwrap()
    .unwrap();
    assert_eq!(args.verify_key.as_deref(), Some(Path::new("k.pub")));
    assert!(parse_args(["--dir", "x", "--verify-key"].into_iter().map(String::from)).is_err());
    let _ = std::fs::remove_dir_all(d);
}

/// The binary protocol over the socket: info, upload in chunks and commit
/// (the file lands in the directory), tasks, a two-task inference whose
/// scores dequantize to the JSON path's bits, and a malformed frame and an
/// unknown task refused with the connection still served.
#[test]
fn binary_protocol_over_a_socket() {
    use graftnet_protocol::{call, ErrorCode, FrameReader, FromStd, Input, Request, Response};
    let b = tiny_backbone(1, 4, 4, 3);
    let fp = Backbone::parse(&b).unwrap().fingerprint();
    let lim = limits(4, 10_000);
    with_device_as(
        &b,
        |srv| Mode::postcard(srv, lim),
        |p, srv| {
            let mut io = FromStd(UnixStream::connect(p).unwrap());
            let (mut tx, mut rxb) = (vec![0u8; 4096], vec![0u8; 4096]);
            let mut rx = FrameReader::new(&mut rxb);
            match call(&mut io, &Request::Info, &mut tx, &mut rx).unwrap() {
                Response::Info(i) => {
                    assert_eq!(
                        (i.protocol, i.input, i.backbone, i.tasks, i.active),
                        (1, [1, 4, 4], fp, 1, "base")
                    );
                    assert_eq!(i.max_frame as usize, binary::max_frame(16));
                }
                r => panic!("{r:?}"),
            }
            let patch = empty_patch("t", fp);
            let total = patch.len() as u32;
            for (off, chunk) in [(0, &patch[..10]), (10, &patch[10..])] {
                let r = call(
                    &mut io,
                    &Request::Upload {
                        name: "t",
                        total_len: total,
                        offset: off,
                        chunk,
                    },
                    &mut tx,
                    &mut rx,
                )
                .unwrap();
                assert_eq!(
                    r,
                    Response::Upload {
                        name: "t",
                        total_len: total,
                        held: off + chunk.len() as u32
                    }
                );
            }
            {
                let r = call(&mut io, &Request::Commit { name: "t" }, &mut tx, &mut rx).unwrap();
                assert!(
                    matches!(&r, Response::Committed(e) if e.name == "t" && e.bytes == total),
                    "{r:?}"
                );
            }
            let dir = p.parent().unwrap();
            assert_eq!(std::fs::read(dir.join("t.gnp")).unwrap(), patch);
            match call(&mut io, &Request::Tasks, &mut tx, &mut rx).unwrap() {
                Response::Tasks(t) => assert_eq!(
                    t.tasks.iter().map(|e| e.name).collect::<Vec<_>>(),
                    ["base", "t"]
                ),
                r => panic!("{r:?}"),
            }
            let x: Vec<f32> = (0..16).map(|i| (i % 5) as f32 * 0.3 - 0.6).collect();
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let tasks = heapless::Vec::from_slice(&["t", "base"]).unwrap();
            let got: Vec<(String, Vec<f32>, usize)> = match call(
                &mut io,
                &Request::Infer {
                    tasks,
                    input: Input::F32(&bytes),
                },
                &mut tx,
                &mut rx,
            )
            .unwrap()
            {
                Response::Infer(v) => v
                    .iter()
                    .map(|s| {
                        (
                            s.task.to_string(),
                            s.dequantized().collect(),
                            s.top1 as usize,
                        )
                    })
                    .collect(),
                r => panic!("{r:?}"),
            };
            for (task, scores, top1) in &got {
                let line = serde_json::json!({"id": 1, "task": task, "input": x}).to_string();
                let v: serde_json::Value =
                    serde_json::from_str(&srv.lock().unwrap().handle_line(&line).unwrap()).unwrap();
                let json_scores: Vec<f32> = v["scores"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_f64().unwrap() as f32)
                    .collect();
                assert_eq!(
                    (&json_scores, v["top1"].as_u64().unwrap() as usize),
                    (scores, *top1),
                    "{task}"
                );
            }
            use embedded_io::Write as _;
            io.write_all(&[0x42, 0x42, 0x00]).unwrap();
            {
                // The garbage's answer comes first, then the switch's.
                let r = call(&mut io, &Request::Switch { task: "nope" }, &mut tx, &mut rx);
                assert!(
                    matches!(
                        r,
                        Ok(Response::Error {
                            code: ErrorCode::Malformed,
                            ..
                        })
                    ),
                    "{r:?}"
                );
            }
            {
                let f = match rx.next(&mut io).unwrap() {
                    Some(graftnet_protocol::Frame::Data(f)) => f,
                    other => panic!("{other:?}"),
                };
                let r = graftnet_protocol::decode_response(f).unwrap();
                assert!(
                    matches!(
                        r,
                        Response::Error {
                            code: ErrorCode::UnknownTask,
                            ..
                        }
                    ),
                    "{r:?}"
                );
            }
            let r = call(&mut io, &Request::Info, &mut tx, &mut rx).unwrap();
            assert!(
                matches!(&r, Response::Info(i) if i.active == "base"),
                "{r:?}"
            );
        },
    );
}

/// `"tasks": [..]`: several tasks in one pass, one result object per task,
/// each equal to the same task asked alone; bad lists are refused with the
/// request's id and the connection carries on.
#[test]
fn json_tasks_run_in_one_pass_and_match_single_requests() {
    let b = tiny_backbone(1, 4, 4, 3);
    with_device(&b, limits(4, 5000), |path, _| {
        let mut c = client(path);
        let x: Vec<f32> = (0..16).map(|i| (i % 5) as f32 * 0.3 - 0.6).collect();
        let alone = ask(
            &mut c,
            &serde_json::json!({"id": 1, "task": "base", "input": x}).to_string(),
        );
        let both = ask(
            &mut c,
            &serde_json::json!({"id": 2, "tasks": ["base", "base"], "input": x}).to_string(),
        );
        assert_eq!(both["id"], 2);
        let results = both["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{both}"));
        assert_eq!(results.len(), 2);
        for r in results {
            assert_eq!(r["task"], "base");
            assert_eq!(r["scores"], alone["scores"]);
            assert_eq!(r["top1"], alone["top1"]);
        }
        for (line, what) in [
            (
                serde_json::json!({"id": 3, "tasks": [], "input": x}),
                "tasks",
            ),
            (
                serde_json::json!({"id": 4, "tasks": ["base"], "task": "base", "input": x}),
                "not both",
            ),
            (
                serde_json::json!({"id": 5, "tasks": ["base", "nope"], "input": x}),
                "nope",
            ),
            (
                serde_json::json!({"id": 6, "tasks": "base", "input": x}),
                "list",
            ),
        ] {
            let r = ask(&mut c, &line.to_string());
            assert_eq!(r["id"], line["id"], "{r}");
            let e = r["error"].as_str().unwrap_or_else(|| panic!("{r}"));
            assert!(e.contains(what), "{e}");
        }
        // still serving
        let again = ask(
            &mut c,
            &serde_json::json!({"id": 7, "task": "base", "input": x}).to_string(),
        );
        assert_eq!(again["scores"], alone["scores"]);
    });
}
