//! `graftnet-host-ref`: the host side of the board tests.
//!
//! Every expected result comes from the `graftnet` runtime running on the
//! build host (the same code `graftnet run` / `graftnet eval` use, through
//! `graftnet_tools::host::ExportDir`), so "identical to host" on a board means
//! bit-identical int8 scores to this machine's runtime.
//!
//! - `selftest`: the first N test samples of every task, with their int8
//!   (NHWC) quantized inputs and the expected int8 scores. The MCU firmware
//!   build (`targets/mcu/build.rs`) compiles this file in.
//! - `requests`: a JSON-lines request stream for `graftnet-device` (random
//!   tasks, random samples, float and int8 inputs, malformed requests mixed
//!   in) and the expected response of every line.
//! - `check`: compares a response stream with the expected lines.
//! - `socket`: sends requests over a device's Unix socket and checks the
//!   answers.
//! - `mcu`: drives the MCU firmware's device service over its Unix socket
//!   (binary protocol): uploads, inferences against the host, typed
//!   refusals (`mcu.rs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use graftnet_tools::data::{load_dataset, Dataset, Preprocess};
use graftnet_tools::host::ExportDir;

mod mcu;

#[derive(Parser)]
#[command(name = "graftnet-host-ref", about = "Host reference results for the graftnet board tests")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Drives the MCU service (targets/mcu-serve.sh) over its socket: see src/mcu.rs.
    Mcu {
        #[arg(long)]
        socket: PathBuf,
        /// the export the service runs (its backbone, the two tasks' patches)
        #[arg(long)]
        dir: PathBuf,
        #[arg(long = "data", value_parser = parse_kv)]
        data: Vec<(String, PathBuf)>,
        /// the two tasks to upload and alternate
        #[arg(long = "task")]
        tasks: Vec<String>,
        /// an export of one more patch, made later against the same backbone
        #[arg(long)]
        later: PathBuf,
        #[arg(long, default_value_t = 200)]
        count: usize,
        /// the two tasks were uploaded already (by `graftnet device upload`)
        #[arg(long)]
        uploaded: bool,
        #[arg(long, default_value_t = 1024)]
        chunk: usize,
    },
    /// Expected int8 results of the first N samples of every task (for the MCU firmware).
    Selftest {
        /// export directory (backbone.gnb + *.gnp)
        #[arg(long)]
        dir: PathBuf,
        /// TASK=DATA.npy (N,C,H,W float32), one per task including "base"
        #[arg(long = "data", value_parser = parse_kv)]
        data: Vec<(String, PathBuf)>,
        /// samples per task
        #[arg(long, default_value_t = 4)]
        per_task: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// A request stream for graftnet-device and the expected response of every line.
    Requests {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long = "data", value_parser = parse_kv)]
        data: Vec<(String, PathBuf)>,
        /// valid requests (malformed ones come on top)
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// one malformed request after every N valid ones (0: none)
        #[arg(long, default_value_t = 250)]
        malformed_every: usize,
        /// share of valid requests that send "input_i8" instead of "input"
        #[arg(long, default_value_t = 0.25)]
        i8_share: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// where to write the requests (JSON lines)
        #[arg(long)]
        requests: PathBuf,
        /// where to write the expected responses (JSON lines, one per request line)
        #[arg(long)]
        expected: PathBuf,
    },
    /// Checks a response stream against the expected lines; exits 1 on any difference.
    Check {
        #[arg(long)]
        expected: PathBuf,
        #[arg(long)]
        responses: PathBuf,
    },
    /// Sends requests over a graftnet-device Unix socket and checks the answers.
    Socket {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long)]
        requests: PathBuf,
        #[arg(long)]
        expected: PathBuf,
        /// start at line N
        #[arg(long, default_value_t = 0)]
        skip: usize,
        /// send at most N lines
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
}

fn parse_kv(s: &str) -> Result<(String, PathBuf), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected TASK=PATH, got '{s}'"))?;
    Ok((k.to_string(), PathBuf::from(v)))
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Selftest { dir, data, per_task, out } => selftest(&dir, &data, per_task, &out),
        Cmd::Requests { dir, data, count, malformed_every, i8_share, seed, requests, expected } => {
            make_requests(&dir, &data, count, malformed_every, i8_share, seed, &requests, &expected)
        }
        Cmd::Check { expected, responses } => check_files(&expected, &responses),
        Cmd::Socket { socket, requests, expected, skip, limit } => check_socket(&socket, &requests, &expected, skip, limit),
        Cmd::Mcu { socket, dir, data, tasks, later, count, uploaded, chunk } => {
            mcu::run(&socket, &dir, &data, &tasks, &later, count, uploaded, chunk)
        }
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The result of one task on one sample, computed on the host.
#[derive(Clone, Debug)]
struct HostResult {
    input_i8: Vec<i8>,
    scores_i8: Vec<i8>,
    scores: Vec<f32>,
    top1: usize,
}

/// Every task's test data, and a host engine run per (task, sample), cached.
struct Reference {
    dir: ExportDir,
    data: BTreeMap<String, (PathBuf, Dataset)>,
    cache: BTreeMap<(String, usize), HostResult>,
}

impl Reference {
    fn open(dir: &Path, data: &[(String, PathBuf)]) -> Result<Self> {
        let d = ExportDir::open(dir)?;
        let bb = d.parse_backbone()?;
        let t = bb.input();
        let shape = (t.c as usize, t.h as usize, t.w as usize);
        let mut sets = BTreeMap::new();
        for (task, p) in data {
            let ds = load_dataset(p, None, &Preprocess::default())?;
            ensure!(ds.shape == shape, "{}: samples are {:?} (c,h,w), the model takes {:?}", p.display(), ds.shape, shape);
            ensure!(!ds.is_empty(), "{}: no samples", p.display());
            sets.insert(task.clone(), (p.clone(), ds));
        }
        for task in d.task_names() {
            ensure!(sets.contains_key(&task), "no --data for task '{task}' (give --data {task}=FILE.npy)");
        }
        for task in sets.keys() {
            ensure!(d.task_names().contains(task), "--data names task '{task}', which {} does not have", dir.display());
        }
        Ok(Reference { dir: d, data: sets, cache: BTreeMap::new() })
    }

    fn tasks(&self) -> Vec<String> {
        self.dir.task_names()
    }

    fn n_samples(&self, task: &str) -> usize {
        self.data[task].1.len()
    }

    fn sample(&self, task: &str, i: usize) -> &[f32] {
        self.data[task].1.sample(i)
    }

    /// Runs `task` on sample `i` both ways (float input quantized by the
    /// engine; int8 input) and insists they agree.
    fn result(&mut self, task: &str, i: usize) -> Result<HostResult> {
        if let Some(r) = self.cache.get(&(task.to_string(), i)) {
            return Ok(r.clone());
        }
        let x = self.data[task].1.sample(i).to_vec();
        let r = self.dir.with_engine(task, |e| {
            let mut q = vec![0i8; x.len()];
            e.quantize_input(&x, &mut q).map_err(|e| anyhow::anyhow!("{e}"))?;
            let s = e.run_f32(&x).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut scores = vec![0f32; s.len()];
            s.dequantize_into(&mut scores);
            let (scores_i8, top1) = (s.quantized().to_vec(), s.argmax());
            let s2 = e.run(&q).map_err(|e| anyhow::anyhow!("{e}"))?;
            ensure!(s2.quantized() == scores_i8.as_slice(), "task {task} sample {i}: int8 and float inputs disagree on the host");
            Ok(HostResult { input_i8: q, scores_i8, scores, top1 })
        })?;
        self.cache.insert((task.to_string(), i), r.clone());
        Ok(r)
    }
}

fn selftest(dir: &Path, data: &[(String, PathBuf)], per_task: usize, out: &Path) -> Result<bool> {
    let mut r = Reference::open(dir, data)?;
    let bb_bytes = r.dir.backbone.clone();
    let bb = graftnet::Backbone::parse(&bb_bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut samples = Vec::new();
    for task in r.tasks() {
        let n = per_task.min(r.n_samples(&task));
        for i in 0..n {
            let x: Vec<u32> = r.sample(&task, i).iter().map(|v| v.to_bits()).collect();
            let h = r.result(&task, i)?;
            samples.push(json!({
                "task": task, "source": r.data[&task].0.file_name().map(|s| s.to_string_lossy().to_string()), "index": i,
                "input_f32_bits": x, "input_i8": h.input_i8, "scores_i8": h.scores_i8, "top1": h.top1,
            }));
        }
    }
    let doc = json!({
        "format": "graftnet-selftest/1",
        "fingerprint": format!("{:016x}", bb.fingerprint()),
        "input_len": bb.input().len(),
        "samples": samples,
    });
    std::fs::write(out, serde_json::to_string(&doc)?).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("{}: {} samples over {} tasks", out.display(), doc["samples"].as_array().map_or(0, Vec::len), r.tasks().len());
    Ok(true)
}

/// splitmix64: a small deterministic generator (the stream must be the same
/// on every host for a given seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Malformed request kinds, used in turn.
const MALFORMED: [&str; 9] = [
    "truncated-json",
    "not-an-object",
    "unknown-task",
    "input-too-short",
    "input-too-long",
    "input-i8-out-of-range",
    "input-not-numbers",
    "no-input",
    "no-task",
];

fn malformed_line(kind: &str, id: u64, task: &str, x: &[f32]) -> (String, Value) {
    let xs = &x[..x.len() - 1];
    let line = match kind {
        "truncated-json" => format!("{{\"id\": {id}, \"task\": \"{task}\", \"input\": [0.5, 0.25,"),
        "not-an-object" => "[1, 2, 3]".to_string(),
        "unknown-task" => json!({"id": id, "task": "no-such-task", "input": x}).to_string(),
        "input-too-short" => json!({"id": id, "task": task, "input": xs}).to_string(),
        "input-too-long" => {
            let mut v = x.to_vec();
            v.push(0.0);
            json!({"id": id, "task": task, "input": v}).to_string()
        }
        "input-i8-out-of-range" => {
            let mut v: Vec<i64> = vec![0; x.len()];
            v[3] = 200;
            json!({"id": id, "task": task, "input_i8": v}).to_string()
        }
        "input-not-numbers" => {
            let mut v: Vec<Value> = x.iter().map(|&f| json!(f)).collect();
            v[5] = json!("five");
            json!({"id": id, "task": task, "input": v}).to_string()
        }
        "no-input" => json!({"id": id, "task": task}).to_string(),
        "no-task" => json!({"id": id, "input": x}).to_string(),
        _ => unreachable!(),
    };
    // A line that is not a JSON object cannot carry an id back.
    let rid = if matches!(kind, "truncated-json" | "not-an-object") { Value::Null } else { json!(id) };
    (line, json!({"id": rid, "error": kind}))
}

#[allow(clippy::too_many_arguments)]
fn make_requests(
    dir: &Path,
    data: &[(String, PathBuf)],
    count: usize,
    malformed_every: usize,
    i8_share: f64,
    seed: u64,
    req_path: &Path,
    exp_path: &Path,
) -> Result<bool> {
    let mut r = Reference::open(dir, data)?;
    let tasks = r.tasks();
    // The device reads numbers as f64 and narrows them to f32: make sure every
    // sample survives that trip exactly, so the host runs the same input.
    for t in &tasks {
        for i in 0..r.n_samples(t) {
            for &v in r.sample(t, i) {
                let back = serde_json::from_str::<Value>(&serde_json::to_string(&v)?)?.as_f64().unwrap() as f32;
                ensure!(back.to_bits() == v.to_bits(), "sample value {v} does not survive JSON");
            }
        }
    }
    let mut rng = Rng(seed);
    let mut req = BufWriter::new(File::create(req_path).with_context(|| format!("creating {}", req_path.display()))?);
    let mut exp = BufWriter::new(File::create(exp_path).with_context(|| format!("creating {}", exp_path.display()))?);
    let mut id: u64 = 0;
    let mut n_bad = 0usize;
    for k in 0..count {
        if malformed_every > 0 && k > 0 && k % malformed_every == 0 {
            let kind = MALFORMED[n_bad % MALFORMED.len()];
            n_bad += 1;
            id += 1;
            let t = &tasks[rng.below(tasks.len())];
            let (line, e) = malformed_line(kind, id, t, r.sample(t, 0));
            writeln!(req, "{line}")?;
            writeln!(exp, "{e}")?;
        }
        id += 1;
        let task = tasks[rng.below(tasks.len())].clone();
        let i = rng.below(r.n_samples(&task));
        let use_i8 = rng.unit() < i8_share;
        let h = r.result(&task, i)?;
        let line = if use_i8 {
            json!({"id": id, "task": task, "input_i8": h.input_i8}).to_string()
        } else {
            // f32 shortest round-trip text, as the device would print it (checked above).
            let x = serde_json::to_string(r.sample(&task, i))?;
            format!("{{\"id\":{id},\"task\":{},\"input\":{x}}}", json!(task))
        };
        writeln!(req, "{line}")?;
        writeln!(exp, "{}", json!({"id": id, "task": task, "top1": h.top1, "scores": h.scores, "scores_i8": h.scores_i8, "sample": i, "i8": use_i8}))?;
    }
    req.flush()?;
    exp.flush()?;
    eprintln!(
        "{}: {count} requests over {} tasks + {n_bad} malformed; expected results in {}",
        req_path.display(),
        tasks.len(),
        exp_path.display()
    );
    Ok(true)
}

/// Tallies of one comparison.
#[derive(Default, Debug)]
struct Tally {
    valid: usize,
    identical: usize,
    mismatched: usize,
    errors_expected: usize,
    errors_answered: usize,
    missing: usize,
    latency_us_sum: f64,
    latency_n: usize,
    first_problems: Vec<String>,
}

impl Tally {
    fn problem(&mut self, s: String) {
        if self.first_problems.len() < 10 {
            self.first_problems.push(s);
        }
    }

    fn compare(&mut self, line: usize, exp: &Value, got: Option<&Value>) {
        let Some(got) = got else {
            self.missing += 1;
            self.problem(format!("line {line}: no response"));
            return;
        };
        if exp.get("error").is_some() {
            self.errors_expected += 1;
            let ok = got.get("error").is_some_and(Value::is_string) && got.get("id") == exp.get("id") && got.get("scores").is_none();
            if ok {
                self.errors_answered += 1;
            } else {
                self.problem(format!("line {line}: expected an error response for {} with id {}, got {got}", exp["error"], exp["id"]));
            }
            return;
        }
        self.valid += 1;
        let same = got.get("id") == exp.get("id")
            && got.get("task") == exp.get("task")
            && got.get("top1") == exp.get("top1")
            && f32s(got.get("scores")).is_some_and(|g| Some(g) == f32s(exp.get("scores")))
            && got.get("error").is_none();
        if same {
            self.identical += 1;
        } else {
            self.mismatched += 1;
            self.problem(format!("line {line}: expected {exp}, got {got}"));
        }
        if let Some(us) = got.get("us").and_then(Value::as_f64) {
            self.latency_us_sum += us;
            self.latency_n += 1;
        }
    }

    fn ok(&self) -> bool {
        self.mismatched == 0 && self.missing == 0 && self.errors_answered == self.errors_expected && self.valid == self.identical
    }

    fn report(&self, what: &str) -> bool {
        for p in &self.first_problems {
            eprintln!("  {p}");
        }
        let mean = if self.latency_n > 0 { self.latency_us_sum / self.latency_n as f64 } else { 0.0 };
        println!(
            "{}",
            json!({"check": what, "ok": self.ok(), "valid": self.valid, "identical": self.identical, "mismatched": self.mismatched,
                   "errors_expected": self.errors_expected, "errors_answered": self.errors_answered, "missing": self.missing,
                   "mean_us": (mean * 10.0).round() / 10.0})
        );
        self.ok()
    }
}

/// A JSON array of numbers as f32 (the device prints f32 scores; the
/// expected file holds them widened to f64: both narrow back exactly).
fn f32s(v: Option<&Value>) -> Option<Vec<u32>> {
    v?.as_array()?.iter().map(|x| x.as_f64().map(|f| (f as f32).to_bits())).collect()
}

fn read_lines(p: &Path) -> Result<Vec<String>> {
    let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
    BufReader::new(f).lines().map(|l| l.context("reading")).collect()
}

fn check_files(exp_path: &Path, resp_path: &Path) -> Result<bool> {
    let exp = read_lines(exp_path)?;
    let resp = read_lines(resp_path)?;
    let mut t = Tally::default();
    if resp.len() > exp.len() {
        t.problem(format!("{} responses for {} requests", resp.len(), exp.len()));
        t.mismatched += resp.len() - exp.len();
    }
    // graftnet-device answers stdin requests one at a time, in order.
    for (i, e) in exp.iter().enumerate() {
        let e: Value = serde_json::from_str(e)?;
        let g = match resp.get(i) {
            Some(s) => match serde_json::from_str::<Value>(s) {
                Ok(v) => Some(v),
                Err(err) => {
                    t.problem(format!("line {i}: response is not JSON ({err}): {s:.200}"));
                    t.mismatched += 1;
                    continue;
                }
            },
            None => None,
        };
        t.compare(i, &e, g.as_ref());
    }
    Ok(t.report(&resp_path.display().to_string()))
}

fn check_socket(sock: &Path, req_path: &Path, exp_path: &Path, skip: usize, limit: usize) -> Result<bool> {
    use std::os::unix::net::UnixStream;
    let req = read_lines(req_path)?;
    let exp = read_lines(exp_path)?;
    if req.len() != exp.len() {
        bail!("{} requests but {} expected lines", req.len(), exp.len());
    }
    let stream = UnixStream::connect(sock).with_context(|| format!("connecting to {}", sock.display()))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut w = BufWriter::new(stream.try_clone()?);
    let mut r = BufReader::new(stream);
    let mut t = Tally::default();
    for (i, (q, e)) in req.iter().zip(&exp).enumerate().skip(skip).take(limit) {
        writeln!(w, "{q}")?;
        w.flush()?;
        let mut s = String::new();
        let got = match r.read_line(&mut s) {
            Ok(0) | Err(_) => None,
            Ok(_) => serde_json::from_str::<Value>(&s).ok(),
        };
        t.compare(i, &serde_json::from_str(e)?, got.as_ref());
    }
    Ok(t.report(&format!("socket {} lines {skip}..{}", sock.display(), skip + limit)))
}
