//! `graftnet-host-ref mcu`: drives the MCU firmware's device service (under
//! qemu, on a Unix socket from `targets/mcu-serve.sh`) through the binary
//! protocol (`targets/protocol`) and checks it against this host's runtime.
//!
//! 1. The device runs the export's backbone and (unless `--uploaded`)
//!    holds no patches; the two `--task`s are uploaded in chunks over the
//!    socket (or were, by `graftnet device upload`, with `--uploaded`).
//! 2. `--count` inferences alternate the two tasks over their test samples,
//!    float (NCHW f32) inputs, and every answer's int8 scores, quantization
//!    and dequantized scores (bit for bit) and top-1 must equal the host's.
//! 3. The patch of `--later` (exported afterwards against the same backbone,
//!    `graftnet export --backbone`) is uploaded and run on its samples.
//! 4. Refusals: malformed frames (garbage, bad COBS, an unknown variant,
//!    trailing bytes), a frame longer than the device's buffer, a truncated
//!    upload, an upload for another backbone, a corrupted chunk, a chunk at
//!    the wrong offset, an unknown task (switch and infer), an oversized and
//!    an undersized input, deleting `base`: each must get its typed error,
//!    and afterwards the active task and the resident set must be as before
//!    and an inference still identical to the host.
//!
//! Prints one JSON line of counts; fails on any difference.

use std::io::Write as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use graftnet_protocol::{
    call, encode, ErrorCode, FormatKind, FrameReader, FromStd, Input, Request, Response,
    PROTOCOL_VERSION,
};
use serde_json::json;

use super::Reference;

type Io = FromStd<UnixStream>;

/// A connection to the service.
struct Client {
    io: Io,
    rx: Vec<u8>,
    tx: Vec<u8>,
}

/// What a request got: its answer in owned form.
#[derive(Debug)]
enum Answer {
    // (read through `Debug`, in failure messages)
    #[allow(dead_code)]
    Ok(String),
    Refused(ErrorCode),
}

impl Client {
    fn connect(sock: &Path) -> Result<Self> {
        let t0 = Instant::now();
        let s = loop {
            match UnixStream::connect(sock) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() < Duration::from_secs(60) => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("connecting to {}", sock.display()))
                }
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut c = Client {
            io: FromStd(s),
            rx: vec![0; 64 * 1024],
            tx: vec![0; 64 * 1024],
        };
        // End any partial frame left on the line.
        c.io.0.write_all(&[0])?;
        Ok(c)
    }

    /// Sends `req`, returns `f(answer)`.
    fn call<R>(
        &mut self,
        req: &Request<'_>,
        f: impl FnOnce(Response<'_>) -> Result<R>,
    ) -> Result<R> {
        let mut reader = FrameReader::new(&mut self.rx);
        let r = call(&mut self.io, req, &mut self.tx, &mut reader).map_err(|e| anyhow!("{e}"))?;
        f(r)
    }

    /// Sends raw bytes (one frame, terminator included) and reads one answer.
    fn raw(&mut self, bytes: &[u8]) -> Result<Answer> {
        self.io.0.write_all(bytes)?;
        let mut reader = FrameReader::new(&mut self.rx);
        match reader.next(&mut self.io)? {
            Some(graftnet_protocol::Frame::Data(f)) => {
                summarize(graftnet_protocol::decode_response(f).map_err(|e| anyhow!("{e}"))?)
            }
            other => bail!("no answer frame to raw bytes: {other:?}"),
        }
    }

    fn ask(&mut self, req: &Request<'_>) -> Result<Answer> {
        self.call(req, summarize)
    }

    /// `(active task, resident tasks with their sizes)`.
    fn state(&mut self) -> Result<(String, Vec<(String, u32)>)> {
        self.call(&Request::Tasks, |r| match r {
            Response::Tasks(t) => Ok((
                t.active.to_string(),
                t.tasks
                    .iter()
                    .map(|e| (e.name.to_string(), e.bytes))
                    .collect(),
            )),
            other => bail!("Tasks answered {other:?}"),
        })
    }

    fn upload(&mut self, name: &str, blob: &[u8], chunk: usize) -> Result<Answer> {
        let mut off = 0;
        while off < blob.len() {
            let n = chunk.min(blob.len() - off);
            let req = Request::Upload {
                name,
                total_len: blob.len() as u32,
                offset: off as u32,
                chunk: &blob[off..off + n],
            };
            match self.ask(&req)? {
                Answer::Ok(_) => off += n,
                refused => return Ok(refused),
            }
        }
        self.ask(&Request::Commit { name })
    }

    /// Runs `task` on `x` (f32, NCHW): `(int8 scores, dequantized bits, top1)`.
    fn infer(&mut self, task: &str, x: &[f32]) -> Result<(Vec<i8>, Vec<u32>, usize)> {
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut tasks = heapless::Vec::new();
        tasks.push(task).map_err(|_| anyhow!("task list"))?;
        let req = Request::Infer {
            tasks,
            input: Input::F32(&bytes),
        };
        let out = self.call(&req, |r| match r {
            Response::Infer(v) if v.len() == 1 && v[0].task == task => {
                let s = &v[0];
                Ok((
                    s.scores.to_vec(),
                    s.dequantized().map(f32::to_bits).collect(),
                    s.top1 as usize,
                ))
            }
            other => bail!("Infer {task} answered {other:?}"),
        });
        out
    }
}

fn summarize(r: Response<'_>) -> Result<Answer> {
    Ok(match r {
        Response::Error { code, .. } => Answer::Refused(code),
        other => Answer::Ok(format!("{other:?}")),
    })
}

#[derive(Default)]
struct Counts {
    inferences: usize,
    identical: usize,
    refusals_expected: usize,
    refusals_typed: usize,
}

/// One inference compared with the host.
fn check_one(
    c: &mut Client,
    r: &mut Reference,
    task: &str,
    i: usize,
    n: &mut Counts,
) -> Result<()> {
    let x = r.sample(task, i).to_vec();
    let h = r.result(task, i)?;
    let (q, bits, top1) = c.infer(task, &x)?;
    n.inferences += 1;
    let host_bits: Vec<u32> = h.scores.iter().map(|v| v.to_bits()).collect();
    if q == h.scores_i8 && bits == host_bits && top1 == h.top1 {
        n.identical += 1;
    } else {
        eprintln!(
            "MISMATCH {task} #{i}: device {q:?} top1 {top1}, host {:?} top1 {}",
            h.scores_i8, h.top1
        );
    }
    Ok(())
}

/// A refusal check: `got` must be refused with a code `want` accepts, and
/// the state must not change.
fn expect(
    c: &mut Client,
    what: &str,
    got: Answer,
    want: impl Fn(&ErrorCode) -> bool,
    before: &(String, Vec<(String, u32)>),
    n: &mut Counts,
) -> Result<()> {
    n.refusals_expected += 1;
    let after = c.state()?;
    match &got {
        Answer::Refused(code) if want(code) && after == *before => {
            n.refusals_typed += 1;
            eprintln!("  {what}: {code:?}, state unchanged");
        }
        _ => eprintln!("  {what}: FAILED, answered {got:?}; state {before:?} -> {after:?}"),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub fn run(
    sock: &Path,
    dir: &Path,
    data: &[(String, PathBuf)],
    tasks: &[String],
    later: &Path,
    count: usize,
    uploaded: bool,
    chunk: usize,
) -> Result<bool> {
    ensure!(tasks.len() == 2, "give two --task names");
    let mut r = Reference::open(dir, data)?;
    let mut c = Client::connect(sock)?;
    let fp = r.dir.parse_backbone()?.fingerprint();
    let (protocol, backbone, input_len, max_frame) = c.call(&Request::Info, |r| match r {
        Response::Info(i) => Ok((
            i.protocol,
            i.backbone,
            i.input.iter().map(|&v| v as usize).product::<usize>(),
            i.max_frame as usize,
        )),
        other => bail!("Info answered {other:?}"),
    })?;
    ensure!(protocol == PROTOCOL_VERSION && backbone == fp, "device: protocol {protocol}, backbone {backbone:016x}; expected {PROTOCOL_VERSION}, {fp:016x}");
    let blob = |d: &Path, t: &str| {
        std::fs::read(d.join(format!("{t}.gnp")))
            .with_context(|| format!("{}/{t}.gnp", d.display()))
    };
    let mut n = Counts::default();

    // 1. the two patches
    if !uploaded {
        let (active, resident) = c.state()?;
        ensure!(
            active == "base" && resident.len() == 1,
            "the device should start with the backbone alone, has {resident:?}"
        );
        for t in tasks {
            match c.upload(t, &blob(dir, t)?, chunk)? {
                Answer::Ok(_) => eprintln!("uploaded {t}"),
                Answer::Refused(code) => bail!("upload of {t} refused: {code:?}"),
            }
        }
    }
    let (_, resident) = c.state()?;
    for t in tasks {
        ensure!(
            resident.iter().any(|(n, _)| n == t),
            "task {t} is not resident: {resident:?}"
        );
    }

    // 2. inferences alternating the tasks
    let t0 = Instant::now();
    for k in 0..count {
        let task = &tasks[k % 2];
        let i = (k / 2) % r.n_samples(task);
        check_one(&mut c, &mut r, task, i, &mut n)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "{} of {} inferences identical to the host ({:.1} ms each over the socket)",
        n.identical,
        n.inferences,
        1e3 * secs / count.max(1) as f64
    );

    // 3. a patch exported later against the same backbone
    let later_task = std::fs::read_dir(later)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "gnp"))
        .ok_or_else(|| anyhow!("no .gnp in {}", later.display()))?;
    let later_name = later_task
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let later_data: Vec<(String, PathBuf)> = data
        .iter()
        .filter(|(t, _)| *t == later_name || t == "base")
        .cloned()
        .collect();
    let mut rl = Reference::open(later, &later_data)?;
    match c.upload(&later_name, &std::fs::read(&later_task)?, chunk)? {
        Answer::Ok(_) => eprintln!("uploaded {later_name} (exported later)"),
        Answer::Refused(code) => bail!("upload of {later_name} refused: {code:?}"),
    }
    let later_runs = 8.min(rl.n_samples(&later_name));
    for i in 0..later_runs {
        check_one(&mut c, &mut rl, &later_name, i, &mut n)?;
    }

    // 4. refusals, each leaving the state as it was
    check_one(&mut c, &mut r, &tasks[0], 0, &mut n)?;
    let before = c.state()?;
    let a = c.raw(&[0x07, 0x55, 0x12, 0x99, 0x03, 0x01, 0x02, 0])?;
    expect(
        &mut c,
        "garbage frame",
        a,
        |e| *e == ErrorCode::Malformed,
        &before,
        &mut n,
    )?;
    let a = c.raw(&[0x09, 0x01, 0])?; // COBS says 8 more bytes, the frame has 1
    expect(
        &mut c,
        "bad COBS",
        a,
        |e| *e == ErrorCode::Malformed,
        &before,
        &mut n,
    )?;
    let a = c.raw(&[0x02, 0x63, 0])?; // variant 99
    expect(
        &mut c,
        "unknown request variant",
        a,
        |e| *e == ErrorCode::Malformed,
        &before,
        &mut n,
    )?;
    let mut frame = vec![0u8; 16];
    let len = encode(&Request::Tasks, &mut frame)
        .map_err(|e| anyhow!("{e:?}"))?
        .len();
    let mut trailing = frame[..len - 1].to_vec();
    trailing[0] += 1; // the COBS block grows by one byte: a trailing 0x07
    trailing.extend_from_slice(&[0x07, 0]);
    let a = c.raw(&trailing)?;
    expect(
        &mut c,
        "trailing bytes",
        a,
        |e| *e == ErrorCode::Malformed,
        &before,
        &mut n,
    )?;
    let mut big = vec![0x41u8; max_frame + 100];
    big.push(0);
    let a = c.raw(&big)?;
    expect(
        &mut c,
        "frame longer than the device's buffer",
        a,
        |e| matches!(e, ErrorCode::FrameTooLarge { .. }),
        &before,
        &mut n,
    )?;

    let p = blob(dir, &tasks[1])?;
    let half = p.len() / 2;
    let a = c.ask(&Request::Upload {
        name: &tasks[1],
        total_len: p.len() as u32,
        offset: 0,
        chunk: &p[..half],
    })?;
    ensure!(matches!(a, Answer::Ok(_)), "first half of an upload: {a:?}");
    let a = c.ask(&Request::Commit { name: &tasks[1] })?;
    expect(
        &mut c,
        "truncated upload, committed",
        a,
        |e| matches!(e, ErrorCode::UploadIncomplete { .. }),
        &before,
        &mut n,
    )?;
    let a = c.ask(&Request::Upload {
        name: &tasks[1],
        total_len: p.len() as u32,
        offset: half as u32 + 16,
        chunk: &p[half + 16..],
    })?;
    expect(
        &mut c,
        "chunk at the wrong offset",
        a,
        |e| matches!(e, ErrorCode::OffsetMismatch { .. }),
        &before,
        &mut n,
    )?;

    let mut other = p.clone();
    let at = graftnet::format::patch::field::BACKBONE;
    other[at] ^= 0x5a;
    graftnet::format::patch::seal(
        &mut other[..graftnet::Patch::parse(&p)
            .map_err(|e| anyhow!("{e}"))?
            .bytes()
            .len()],
    );
    let a = c.upload("other-backbone", &other, chunk)?;
    expect(
        &mut c,
        "upload for another backbone",
        a,
        |e| matches!(e, ErrorCode::WrongBackbone { .. }),
        &before,
        &mut n,
    )?;

    let mut corrupt = p.clone();
    corrupt[p.len() * 2 / 3] ^= 0x01;
    let a = c.upload("corrupted", &corrupt, chunk)?;
    expect(
        &mut c,
        "corrupted chunk",
        a,
        |e| *e == ErrorCode::Format(FormatKind::ChecksumMismatch),
        &before,
        &mut n,
    )?;

    let a = c.ask(&Request::Switch {
        task: "no-such-task",
    })?;
    expect(
        &mut c,
        "switch to an unknown task",
        a,
        |e| *e == ErrorCode::UnknownTask,
        &before,
        &mut n,
    )?;
    let x = r.sample(&tasks[0], 0).to_vec();
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut names = heapless::Vec::new();
    let _ = names.push("no-such-task");
    let a = c.ask(&Request::Infer {
        tasks: names,
        input: Input::F32(&bytes),
    })?;
    expect(
        &mut c,
        "infer an unknown task",
        a,
        |e| *e == ErrorCode::UnknownTask,
        &before,
        &mut n,
    )?;
    let long = vec![0i8; input_len + 1];
    let a = c.ask(&Request::Infer {
        tasks: heapless::Vec::new(),
        input: Input::I8(&long),
    })?;
    expect(
        &mut c,
        "oversized input",
        a,
        |e| matches!(e, ErrorCode::InputSize { .. }),
        &before,
        &mut n,
    )?;
    let a = c.ask(&Request::Infer {
        tasks: heapless::Vec::new(),
        input: Input::F32(&bytes[..bytes.len() - 4]),
    })?;
    expect(
        &mut c,
        "undersized input",
        a,
        |e| matches!(e, ErrorCode::InputSize { .. }),
        &before,
        &mut n,
    )?;
    let huge = vec![0i8; max_frame + 16];
    let a = c.ask(&Request::Infer {
        tasks: heapless::Vec::new(),
        input: Input::I8(&huge),
    })?;
    expect(
        &mut c,
        "input larger than a frame",
        a,
        |e| matches!(e, ErrorCode::FrameTooLarge { .. }),
        &before,
        &mut n,
    )?;
    let a = c.ask(&Request::Delete { name: "base" })?;
    expect(
        &mut c,
        "delete base",
        a,
        |e| *e == ErrorCode::Protected,
        &before,
        &mut n,
    )?;
    // Still serving, same answers.
    check_one(&mut c, &mut r, &tasks[0], 1, &mut n)?;
    // A delete: the task goes, the others stay and still run.
    n.refusals_expected += 1;
    let deleted = matches!(c.ask(&Request::Delete { name: &tasks[1] })?, Answer::Ok(_));
    let (_, resident) = c.state()?;
    let gone =
        !resident.iter().any(|(t, _)| *t == tasks[1]) && resident.len() + 1 == before.1.len();
    let mut names = heapless::Vec::new();
    let _ = names.push(tasks[1].as_str());
    let refused = matches!(
        c.ask(&Request::Infer {
            tasks: names,
            input: Input::F32(&bytes)
        })?,
        Answer::Refused(ErrorCode::UnknownTask)
    );
    if deleted && gone && refused {
        n.refusals_typed += 1;
        eprintln!("  delete {}: gone, then UnknownTask", tasks[1]);
    } else {
        eprintln!(
            "  delete {}: FAILED (answered: {deleted}, gone: {gone}, refused after: {refused})",
            tasks[1]
        );
    }
    check_one(&mut c, &mut r, &tasks[0], 2, &mut n)?;

    let ok = n.identical == n.inferences
        && n.inferences >= count
        && n.refusals_typed == n.refusals_expected;
    println!(
        "{}",
        json!({"inferences": n.inferences, "identical": n.identical, "later_task": later_name, "refusals_expected": n.refusals_expected,
               "refusals_typed": n.refusals_typed, "seconds": secs, "passed": ok})
    );
    Ok(ok)
}
