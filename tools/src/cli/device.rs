//! `graftnet device`: one host command for every board — an MCU on a serial
//! line, a Pi or Jetson on a socket — over the device protocol
//! (`targets/protocol/PROTOCOL.md`; the client is `graftnet_tools::device`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use graftnet_protocol::Input;
use graftnet_tools::data;
use graftnet_tools::device::{connect, Client};
use graftnet_tools::host::{scores_json, ExportDir};

use super::{manifest_prep, PrepArgs};

#[derive(Args)]
pub struct DeviceArgs {
    /// unix:PATH, tcp:HOST:PORT, serial:/dev/ttyX[@BAUD] (default 115200) or stdio:CMD
    #[arg(long, value_name = "SPEC")]
    connect: String,
    #[command(subcommand)]
    cmd: DeviceCmd,
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Protocol version, backbone fingerprint, runtime, tasks, memory, kernels.
    Info,
    /// The resident tasks (the active one marked).
    Tasks,
    /// Make a task active.
    Switch { task: String },
    /// Class scores of one input, per task (the active task without --task).
    Infer {
        /// a task to run, repeatable (at most 8; all on the same input)
        #[arg(long = "task")]
        tasks: Vec<String>,
        /// .npy of one sample (1,C,H,W) or an image file, as `graftnet run --input`
        #[arg(long)]
        input: PathBuf,
        /// the export directory (on the host) for image preprocessing and labels
        #[arg(long)]
        dir: Option<PathBuf>,
        #[command(flatten)]
        prep: PrepArgs,
        /// one JSON object per task, as `graftnet run --json` prints
        #[arg(long)]
        json: bool,
    },
    /// Send a patch (.gnp) and make it a resident task; resumes an interrupted upload.
    Upload {
        file: PathBuf,
        /// the task name (default: the name inside the patch)
        #[arg(long)]
        name: Option<String>,
        /// bytes per chunk (default: 1024 on serial lines, else the largest the device takes)
        #[arg(long)]
        chunk: Option<usize>,
    },
    /// Remove a resident task.
    Delete { task: String },
    /// Check the device against the host runtime: COUNT inferences alternating tasks, each bit-identical.
    ///
    /// Runs COUNT inferences on the device, alternating tasks over test
    /// sets, and checks every result against the host runtime on the same
    /// export (`graftnet run`'s code): bit-identical int8 scores and top-1.
    /// Exits 1 on any difference.
    Check {
        /// the export directory on the host the device's tasks came from
        #[arg(long)]
        dir: PathBuf,
        /// TASK=FILE.npy (N,C,H,W float32), repeatable; tasks alternate in this order
        #[arg(long = "data", value_parser = graftnet_tools::args::parse_kv, required = true)]
        data: Vec<(String, PathBuf)>,
        /// inferences in all
        #[arg(long, default_value_t = 200)]
        count: usize,
    },
    /// Round-trip overhead of an inference besides the inference itself (protocol, copies, socket).
    ///
    /// The median of (round trip − device time) over COUNT requests with a
    /// random int8 input, as a share of the device time.
    Bench {
        /// requests to time
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// the task (default: the device's active task)
        #[arg(long)]
        task: Option<String>,
        /// the device's protocol: postcard, or json (a `graftnet-device` in
        /// its default JSON-lines mode, with the same input as `input_i8`)
        #[arg(long, default_value = "postcard", value_parser = ["postcard", "json"])]
        protocol: String,
        /// C,H,W of the model (json only: that protocol has no Info)
        #[arg(long, value_parser = graftnet_tools::args::parse_triple)]
        shape: Option<(usize, usize, usize)>,
    },
}

pub fn run(a: DeviceArgs) -> Result<()> {
    if let DeviceCmd::Bench {
        count,
        task,
        protocol,
        shape,
    } = &a.cmd
    {
        if protocol == "json" {
            let shape = shape.context("bench --protocol json needs --shape C,H,W")?;
            return bench_json(&a.connect, *count, task.as_deref().unwrap_or("base"), shape);
        }
    }
    let mut c = Client::connect(&a.connect)?;
    match a.cmd {
        DeviceCmd::Info => {
            let i = &c.info;
            println!("device:     {}", i.device);
            println!("protocol:   {}", i.protocol);
            println!("runtime:    graftnet {}", i.runtime);
            println!("backbone:   {:016x}", i.backbone);
            println!(
                "input:      {}x{}x{} (c,h,w)",
                i.input[0], i.input[1], i.input[2]
            );
            println!("classes:    at most {}", i.max_classes);
            println!(
                "memory:     arena {} bytes, parameter table {} entries",
                i.arena_len, i.params_len
            );
            println!("kernels:    {}", i.kernels);
            println!("tasks:      {} resident, '{}' active", i.tasks, i.active);
            println!(
                "limits:     frames up to {} bytes, patches up to {} bytes",
                i.max_frame, i.max_patch
            );
        }
        DeviceCmd::Tasks => {
            let (tasks, active) = c.tasks()?;
            for t in tasks {
                let mark = if t.name == active { '*' } else { ' ' };
                println!(
                    "{mark} {:<32} {:>5} classes  version {:<4} {:>9} bytes",
                    t.name, t.classes, t.version, t.bytes
                );
            }
        }
        DeviceCmd::Switch { task } => {
            c.switch(&task)?;
            println!("active task: {task}");
        }
        DeviceCmd::Infer {
            tasks,
            input,
            dir,
            prep,
            json,
        } => {
            let [ch, h, w] = c.info.input.map(|d| d as usize);
            let shape = (ch, h, w);
            let export = dir.as_deref().map(ExportDir::open).transpose()?;
            let p = match &export {
                Some(d) => manifest_prep(d, &prep, shape),
                None => prep.to_prep(Some(shape)),
            };
            let (s, x) = data::load_input(&input, &p)?;
            if s != shape {
                bail!(
                    "input {} has shape {s:?} (c,h,w); the device's model takes {shape:?}",
                    input.display()
                );
            }
            let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
            let names: Vec<&str> = tasks.iter().map(String::as_str).collect();
            for r in c.infer(&names, Input::F32(&bytes))? {
                let labels = export
                    .as_ref()
                    .map(|d| d.labels(&r.task))
                    .unwrap_or_default();
                if json {
                    println!("{}", scores_json(&r.task, &r.scores, r.top1, &labels));
                } else {
                    let label = labels
                        .get(r.top1)
                        .map(|l| format!(" ({l})"))
                        .unwrap_or_default();
                    println!(
                        "task {}: top-1 class {}{label} ({} µs on the device)",
                        r.task, r.top1, r.us
                    );
                    for (i, s) in r.scores.iter().enumerate() {
                        println!(
                            "  {:>3} {:>10.4} {}",
                            i,
                            s,
                            labels.get(i).map(String::as_str).unwrap_or("")
                        );
                    }
                }
            }
        }
        DeviceCmd::Upload { file, name, chunk } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let name = match name {
                Some(n) => n,
                None => graftnet::Patch::parse(&bytes)
                    .map(|p| p.name().to_string())
                    .map_err(|e| {
                        anyhow::anyhow!("{}: {e} (give --name to send it anyway)", file.display())
                    })?,
            };
            let chunk = chunk.unwrap_or(if a.connect.starts_with("serial:") {
                1024
            } else {
                usize::MAX
            });
            let t0 = Instant::now();
            let res = c.upload(&name, &bytes, chunk, |held, total| {
                eprint!("\rgraftnet: uploading '{name}': {held}/{total} bytes");
            });
            eprintln!();
            let t = res?;
            println!(
                "task '{}' committed: {} classes, version {}, {} bytes in {:.2} s",
                t.name,
                t.classes,
                t.version,
                t.bytes,
                t0.elapsed().as_secs_f64()
            );
        }
        DeviceCmd::Delete { task } => {
            c.delete(&task)?;
            println!("task '{task}' deleted");
        }
        DeviceCmd::Check { dir, data, count } => check(&mut c, &dir, &data, count)?,
        DeviceCmd::Bench { count, task, .. } => {
            let x = random_i8(c.info.n_input());
            let names: Vec<&str> = task.iter().map(String::as_str).collect();
            c.infer(&names, Input::I8(&x))?; // warm-up (and the task switch)
            let mut samples = Vec::with_capacity(count);
            for _ in 0..count {
                let t0 = Instant::now();
                let r = c.infer(&names, Input::I8(&x))?;
                let rtt = t0.elapsed().as_secs_f64() * 1e6;
                samples.push((rtt, r[0].us as f64));
            }
            report("postcard", &c.info.device, x.len(), &samples);
        }
    }
    Ok(())
}

/// `graftnet device check` (see its help).
fn check(
    c: &mut Client,
    dir: &std::path::Path,
    data: &[(String, PathBuf)],
    count: usize,
) -> Result<()> {
    let d = ExportDir::open(dir)?;
    let [ch, h, w] = c.info.input.map(|d| d as usize);
    let prep = data::Preprocess {
        size: Some((h, w)),
        channels: ch,
        ..data::Preprocess::default()
    };
    let sets = data
        .iter()
        .map(|(t, f)| Ok((t.as_str(), data::load_dataset(f, None, &prep)?)))
        .collect::<Result<Vec<_>>>()?;
    if let Some((t, ds)) = sets
        .iter()
        .find(|(_, ds)| ds.shape != (ch, h, w) || ds.is_empty())
    {
        bail!(
            "{t}: the data holds {} samples of {:?}; the device takes {:?}",
            ds.len(),
            ds.shape,
            (ch, h, w)
        );
    }
    // Which sample each request uses: request i runs task i % k on its
    // set's sample (i / k) % len.
    let k = sets.len();
    let pick = |i: usize| (i % k, (i / k) % sets[i % k].1.len());
    // The host's results, one engine per task.
    let mut want: Vec<Vec<(Vec<i8>, usize)>> = vec![Vec::new(); k];
    for (j, (t, ds)) in sets.iter().enumerate() {
        let n = (0..count)
            .filter(|&i| pick(i).0 == j)
            .map(|i| pick(i).1 + 1)
            .max()
            .unwrap_or(0);
        want[j] = d.with_engine(t, |e| {
            (0..n)
                .map(|s| {
                    let sc = e
                        .run_f32(ds.sample(s))
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    Ok((sc.quantized().to_vec(), sc.argmax()))
                })
                .collect()
        })?;
    }
    let mut identical = 0;
    let mut device_us = Vec::with_capacity(count);
    for i in 0..count {
        let (j, si) = pick(i);
        let bytes: Vec<u8> = sets[j]
            .1
            .sample(si)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let r = c.infer(&[sets[j].0], Input::F32(&bytes))?;
        let (q, top1) = &want[j][si];
        if r.len() == 1 && r[0].quantized == *q && r[0].top1 == *top1 {
            identical += 1;
        } else {
            eprintln!(
                "graftnet: request {i} ({} sample {si}): device {:?}, host {:?} top-1 {top1}",
                sets[j].0,
                r.first(),
                q
            );
        }
        device_us.extend(r.first().map(|r| r.us));
    }
    device_us.sort_unstable();
    let med = device_us.get(device_us.len() / 2).copied().unwrap_or(0);
    println!(
        "{{\"identical\":{identical},\"count\":{count},\"tasks\":{},\"device_median_us\":{med}}}",
        serde_json::to_string(&sets.iter().map(|s| s.0).collect::<Vec<_>>())?
    );
    if identical != count {
        bail!(
            "{} of {count} results differ from the host's",
            count - identical
        );
    }
    Ok(())
}

/// A fixed pseudo-random int8 input (the overhead does not depend on values).
fn random_i8(n: usize) -> Vec<i8> {
    let mut r = graftnet_tools::rng::Rng::new(7);
    (0..n).map(|_| (r.next_u64() >> 56) as u8 as i8).collect()
}

/// The same measurement over JSON lines: `{"id", "task", "input_i8"}`
/// requests, the device's `us` as its time.
fn bench_json(
    spec: &str,
    count: usize,
    task: &str,
    (c, h, w): (usize, usize, usize),
) -> Result<()> {
    let s = connect(spec)?;
    let mut s = BufReader::new(s);
    let x = random_i8(c * h * w);
    let line = format!(
        "{{\"id\":1,\"task\":{},\"input_i8\":{}}}\n",
        serde_json::Value::from(task),
        serde_json::to_string(&x)?
    );
    let mut samples = Vec::with_capacity(count);
    let mut resp = String::new();
    for i in 0..=count {
        let t0 = Instant::now();
        s.get_mut().write_all(line.as_bytes())?;
        s.get_mut().flush()?;
        resp.clear();
        s.read_line(&mut resp)?;
        let rtt = t0.elapsed().as_secs_f64() * 1e6;
        let v: serde_json::Value =
            serde_json::from_str(&resp).with_context(|| format!("answer: {resp:.200}"))?;
        let Some(us) = v["us"].as_f64() else {
            bail!("the device refused: {}", v["error"]);
        };
        if i > 0 {
            samples.push((rtt, us));
        }
    }
    report("json lines", "graftnet-device", x.len(), &samples);
    Ok(())
}

/// Prints the medians of round trip, device time and their difference.
fn report(protocol: &str, device: &str, n: usize, samples: &[(f64, f64)]) {
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let rtt = med(samples.iter().map(|s| s.0).collect());
    let dev = med(samples.iter().map(|s| s.1).collect());
    let over = med(samples.iter().map(|s| s.0 - s.1).collect());
    println!(
        "{protocol}: {} requests of {n} int8 values to {device}: round trip {rtt:.0} µs, device {dev:.0} µs, overhead {over:.0} µs = {:.2} % of the device time (medians)",
        samples.len(),
        100.0 * over / dev.max(1.0)
    );
}
