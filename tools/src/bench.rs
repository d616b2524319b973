//! `graftnet bench DIR [--task NAME] [--threads N] [--iters K] [--kernels T] [--json]`:
//! host timings of an export directory through the real runtime.
//!
//! What is measured, on one core:
//! - inference: `Engine::run` on an int8 input (median and p90 ms over
//!   `iters` runs after warm-up), with the chosen kernel table (`--kernels
//!   NAME`, `all` for every table this CPU runs; default `Kernels::best()`,
//!   which honours `GRAFTNET_KERNELS`). Scores are checked bit-identical to
//!   the scalar table's.
//! - task switch (median µs), cycling through the export's patches:
//!   `switch_us` is `Engine::apply` of a patch verified earlier and kept as
//!   a `Patch` view (the switch between resident tasks, e.g. patches in
//!   flash checked once at boot), also as a percentage of the inference
//!   median (`switch_percent_of_inference`); `switch_from_bytes_us` is
//!   `Patch::parse` + `Engine::apply` (a switch from unverified bytes, e.g.
//!   a patch just received), `patch_parse_us` the parse alone;
//! - with `--verify-key KEY.pub` (every blob must be signed with it, or
//!   the bench refuses the export): the signature check alone
//!   (`VerifyKey::verify`: SHA-512 of the content and one Ed25519
//!   verification) of the backbone (`verify_backbone_us`, median) and of
//!   each patch (`verify_patch_us`, median over the patches), and a switch
//!   from signed bytes (`Patch::parse_verified` + `Engine::apply`,
//!   `switch_from_signed_bytes_us`); resident patches are then
//!   `parse_verified` once, so `switch_us` stays `apply` alone;
//! - memory the caller provides: arena + parameter table + patch bytes (the
//!   backbone stays in flash / mmap and is reported separately);
//! - for comparison, loading the same task as a whole model: the task's
//!   ONNX (manifest `source`) quantized on its own into a per-task backbone,
//!   then `Backbone::parse` + `Engine::new` (median µs; the quantization is
//!   not timed); and tract's load + optimize of that ONNX plus its fp32
//!   inference time.
//!
//! Intended as a module of the `graftnet` binary (`mod bench;` in
//! `main.rs`): it names the library as `graftnet_tools`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use graftnet::format::OpKind;
use graftnet::kernels::Kernels;
use graftnet::{Backbone, ChannelRequant, Engine, Patch, VerifyKey};
use serde_json::{json, Value};

use graftnet_tools::host::ExportDir;
use graftnet_tools::pipeline::BASE_TASK;

/// Arguments of `graftnet bench`.
#[derive(Clone, Debug)]
pub struct BenchArgs {
    /// export directory (`backbone.gnb`, `*.gnp`, `manifest.json`)
    pub dir: PathBuf,
    /// every blob must carry this key's signature; the checks are timed
    pub verify_key: Option<VerifyKey>,
    /// task to time inference on (default: the base task)
    pub task: Option<String>,
    /// worker threads (each large convolution is split into row slabs)
    pub threads: usize,
    /// timed inference runs (after warm-up)
    pub iters: usize,
    /// print one JSON object instead of a table
    pub json: bool,
    /// kernel table name (`scalar`, `avx2`, `avx512vnni`, `neon`, `dotprod`)
    /// or `all`; default `Kernels::best()`
    pub kernels: Option<String>,
    /// time these tasks together (`Engine::run_tasks`) as `multi_ms`; the
    /// single-task figure is then the first of them (unless `task` says)
    pub tasks: Vec<String>,
}

/// Sorted-sample statistics in milliseconds.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (pick(0.5), pick(0.9), v.iter().sum::<f64>() / v.len() as f64)
}

fn time_ms(f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

/// Multiply-accumulates of one inference (conv and depthwise ops).
fn macs(bb: &Backbone<'_>, classes: u16) -> u64 {
    (0..bb.n_ops()).map(|i| macs_of_op(bb, i, classes)).sum()
}

/// Multiply-accumulates of op `i` (0 for ops that are not convolutions).
fn macs_of_op(bb: &Backbone<'_>, i: usize, classes: u16) -> u64 {
    let op = bb.op(i);
    let o = bb.tensor(op.out as usize);
    let px = o.h as u64 * o.w as u64;
    match op.kind {
        OpKind::Conv => px * bb.cout(i, &op, classes) as u64 * bb.row_len(&op) as u64,
        OpKind::DwConv => px * o.c as u64 * op.kh as u64 * op.kw as u64,
        _ => 0,
    }
}

/// Deterministic pseudo-random floats in [-1, 1).
fn random_input(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

struct TableResult {
    name: &'static str,
    names: graftnet::kernels::KernelNames,
    median_ms: f64,
    p90_ms: f64,
    mean_ms: f64,
    matches_scalar: bool,
}

fn time_inference(
    ex: &ExportDir,
    task: &str,
    k: Kernels,
    threads: usize,
    input: &[f32],
    iters: usize,
    reference: Option<&[i8]>,
) -> Result<(TableResult, Vec<i8>)> {
    ex.with_engine(task, |e| {
        e.set_kernels(k);
        e.set_threads(threads);
        let n = e.backbone().input().len();
        let mut x = vec![0i8; n];
        e.quantize_input(input, &mut x)
            .map_err(|err| anyhow!("{err}"))?;
        let scores = e
            .run(&x)
            .map_err(|err| anyhow!("{err}"))?
            .quantized()
            .to_vec();
        let warm = (iters / 10).clamp(2, 20);
        for _ in 0..warm {
            e.run(&x).map_err(|err| anyhow!("{err}"))?;
        }
        let mut t = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            t.push(time_ms(&mut || {
                e.run(std::hint::black_box(&x))
                    .map_err(|err| anyhow!("{err}"))?;
                Ok(())
            })?);
        }
        let (median_ms, p90_ms, mean_ms) = stats(t);
        let matches_scalar = reference.is_none_or(|r| r == scores.as_slice());
        Ok((
            TableResult {
                name: k.name,
                names: k.names,
                median_ms,
                p90_ms,
                mean_ms,
                matches_scalar,
            },
            scores,
        ))
    })
}

/// `Engine::run_tasks` on several tasks at once.
struct MultiResult {
    tasks: Vec<String>,
    median_ms: f64,
    p90_ms: f64,
    shared: graftnet::SharedPrefix,
    /// multiply-accumulates of the shared ops (once) and of every task's rest
    macs: u64,
}

/// Times `Engine::run_tasks` over `tasks` (int8 input quantized with the
/// base's input quantization); checks each task's scores equal a separate
/// `apply` + `run`.
fn time_multi(
    ex: &ExportDir,
    tasks: &[String],
    k: Kernels,
    threads: usize,
    input: &[f32],
    iters: usize,
) -> Result<MultiResult> {
    ex.with_tasks(tasks, |e, list| {
        e.set_kernels(k);
        e.set_threads(threads);
        let mut x = vec![0i8; e.backbone().input().len()];
        e.quantize_input(input, &mut x)
            .map_err(|err| anyhow!("{err}"))?;
        let mut branch = vec![0i8; e.backbone().arena_len()];
        let mut together = Vec::new();
        let shared = e
            .run_tasks(&x, list, &mut branch, |_, sc| {
                together.push(sc.quantized().to_vec())
            })
            .map_err(|err| anyhow!("{err}"))?;
        for ((t, p), got) in tasks.iter().zip(list).zip(&together) {
            match p {
                Some(p) => e.apply(*p).map_err(|err| anyhow!("{t}: {err}"))?,
                None => e.reset(),
            }
            let alone = e
                .run(&x)
                .map_err(|err| anyhow!("{err}"))?
                .quantized()
                .to_vec();
            if &alone != got {
                bail!("task '{t}': run_tasks gives scores that differ from a separate run");
            }
        }
        e.reset();
        let mut run = || -> Result<()> {
            e.run_tasks(std::hint::black_box(&x), list, &mut branch, |_, sc| {
                std::hint::black_box(sc.argmax());
            })
            .map_err(|err| anyhow!("{err}"))?;
            Ok(())
        };
        for _ in 0..(iters / 10).clamp(2, 20) {
            run()?;
        }
        let mut t = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            t.push(time_ms(&mut run)?);
        }
        let (median_ms, p90_ms, _) = stats(t);
        let bb = e.backbone();
        let op_macs = |i: usize, classes: u16| macs_of_op(bb, i, classes);
        let mut total: u64 = (0..shared.ops).map(|i| op_macs(i, bb.base_classes())).sum();
        for p in list {
            let classes = p.map_or(bb.base_classes(), |p| p.classes());
            total += (shared.ops..bb.n_ops())
                .map(|i| op_macs(i, classes))
                .sum::<u64>();
        }
        Ok(MultiResult {
            tasks: tasks.to_vec(),
            median_ms,
            p90_ms,
            shared,
            macs: total,
        })
    })
}

/// Task-switch timings (median µs over the rounds).
struct SwitchTimes {
    /// `Engine::apply` of a patch verified earlier (`Patch::parse` once, the
    /// `Patch` view kept): the switch between resident tasks.
    apply_us: f64,
    /// `Patch::parse` alone (checksum, header, entry framing).
    parse_us: f64,
    /// `Patch::parse` + `Engine::apply`: a switch from unverified bytes.
    from_bytes_us: f64,
    /// the largest patch, bytes
    max_patch: usize,
    /// `Patch::parse_verified` + `Engine::apply` (with a verification key)
    from_signed_bytes_us: Option<f64>,
}

/// Signature checks alone (median µs): the backbone, and each patch.
struct VerifyTimes {
    key_id: String,
    backbone_us: f64,
    backbone_bytes: usize,
    /// median over every patch's own median
    patch_us: Option<f64>,
    max_patch_us: Option<f64>,
    max_patch_bytes: usize,
}

/// Times `VerifyKey::verify` on the backbone (`rounds` times) and on each
/// patch (`rounds` times each); the blobs were checked to parse.
fn time_verify(ex: &ExportDir, key: &VerifyKey, rounds: usize) -> Result<VerifyTimes> {
    let bb = ex.parse_backbone()?;
    let median = |content: &[u8], trailer| -> Result<f64> {
        let mut t = Vec::with_capacity(rounds);
        for _ in 0..rounds.max(1) {
            let t0 = Instant::now();
            key.verify(std::hint::black_box(content), trailer)
                .map_err(|err| anyhow!("{err}"))?;
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok(stats(t).0)
    };
    let backbone_us = median(bb.bytes(), bb.signature())?;
    let mut per_patch = Vec::new();
    let mut largest = (0usize, None);
    for name in ex.patches.keys() {
        let p = ex.patch(name)?.ok_or_else(|| anyhow!("no patch"))?;
        let us = median(p.bytes(), p.signature())?;
        per_patch.push(us);
        if p.bytes().len() >= largest.0 {
            largest = (p.bytes().len(), Some(us));
        }
    }
    Ok(VerifyTimes {
        key_id: key.id().to_string(),
        backbone_us,
        backbone_bytes: bb.bytes().len(),
        patch_us: (!per_patch.is_empty()).then(|| stats(per_patch).0),
        max_patch_us: largest.1,
        max_patch_bytes: largest.0,
    })
}

/// Times task switches, cycling through the export's patches: a switch
/// between resident, already verified patches, and one from bytes.
fn time_switch(ex: &ExportDir, rounds: usize) -> Result<Option<SwitchTimes>> {
    if ex.patches.is_empty() {
        return Ok(None);
    }
    let bb = ex.parse_backbone()?;
    let sizes = ex.engine_sizes()?;
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![ChannelRequant::default(); sizes.params];
    let (mut arena2, mut params2) = (arena.clone(), params.clone());
    let mut e = match &ex.verify_key {
        None => Engine::new(&bb, &mut arena, &mut params).map_err(graftnet::Error::from),
        Some(k) => Engine::new_verified(&bb, &mut arena, &mut params, k),
    }
    .map_err(|err| anyhow!("{err}"))?;
    let blobs: Vec<&Vec<u8>> = ex.patches.values().collect();
    // Verified once, as at boot from flash; a switch is then `apply` alone.
    let resident = blobs
        .iter()
        .map(|b| match &ex.verify_key {
            None => Patch::parse(b),
            Some(k) => Patch::parse_verified(b, k),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("{err}"))?;
    let n = rounds.max(blobs.len() * 3);
    // Every apply re-derives the whole task, so re-applying the active
    // patch (an export with one patch) costs what a real switch does.
    let time = |f: &mut dyn FnMut(usize) -> Result<()>| -> Result<f64> {
        let mut t = Vec::with_capacity(n);
        for r in 0..n {
            let t0 = Instant::now();
            f(r % blobs.len())?;
            t.push(t0.elapsed().as_secs_f64() * 1e6);
        }
        Ok(stats(t).0)
    };
    let apply_us = time(&mut |i| {
        e.apply(resident[i]).map_err(|err| anyhow!("{err}"))?;
        Ok(())
    })?;
    let parse_us = time(&mut |i| {
        std::hint::black_box(Patch::parse(blobs[i]).map_err(|err| anyhow!("{err}"))?);
        Ok(())
    })?;
    let from_signed_bytes_us = match &ex.verify_key {
        None => None,
        Some(k) => Some(time(&mut |i| {
            let p = Patch::parse_verified(blobs[i], k).map_err(|err| anyhow!("{err}"))?;
            e.apply(p).map_err(|err| anyhow!("{err}"))?;
            Ok(())
        })?),
    };
    // Without the signature (an engine with a key would check it in `apply`).
    let from_bytes_us = match &ex.verify_key {
        None => time(&mut |i| {
            let p = Patch::parse(blobs[i]).map_err(|err| anyhow!("{err}"))?;
            e.apply(p).map_err(|err| anyhow!("{err}"))?;
            Ok(())
        })?,
        Some(_) => {
            let mut plain =
                Engine::new(&bb, &mut arena2, &mut params2).map_err(|err| anyhow!("{err}"))?;
            time(&mut |i| {
                let p = Patch::parse(blobs[i]).map_err(|err| anyhow!("{err}"))?;
                plain.apply(p).map_err(|err| anyhow!("{err}"))?;
                Ok(())
            })?
        }
    };
    Ok(Some(SwitchTimes {
        apply_us,
        parse_us,
        from_bytes_us,
        max_patch: blobs.iter().map(|b| b.len()).max().unwrap_or(0),
        from_signed_bytes_us,
    }))
}

/// The ONNX a task was exported from (manifest `source`), resolved.
fn task_source(ex: &ExportDir, task: &str) -> Option<PathBuf> {
    let tasks = ex.manifest.as_ref()?.get("tasks")?.as_array()?;
    let t = tasks
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some(task))?;
    let p = PathBuf::from(t.get("source")?.as_str()?);
    let p = if p.is_relative() && !p.exists() {
        ex.dir.join(&p)
    } else {
        p
    };
    p.exists().then_some(p)
}

/// Builds the task's own backbone (quantized alone, random calibration)
/// and times `Backbone::parse` + `Engine::new` on it (median µs).
fn time_full_load(onnx: &Path, input_shape: (usize, usize, usize)) -> Result<(f64, usize)> {
    use graftnet_tools::data::Dataset;
    use graftnet_tools::{export, pipeline};
    let graph = pipeline::import(onnx, Some(input_shape))?;
    let (c, h, w) = input_shape;
    let calib = Dataset {
        shape: input_shape,
        samples: random_input(4 * c * h * w, 7),
        labels: None,
        class_names: None,
    };
    let q = pipeline::quantize_model(&graph, &calib, 0, vec![], None)?;
    let blob = export::emit_backbone(&q, q.classes())?;
    let bytes = blob.bytes;
    let probe =
        Backbone::parse(&bytes).map_err(|e| anyhow!("per-task backbone does not parse: {e}"))?;
    let mut arena = vec![0i8; probe.arena_len()];
    let mut params = vec![ChannelRequant::default(); probe.params_len()];
    let mut t = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        let bb = Backbone::parse(std::hint::black_box(&bytes)).map_err(|e| anyhow!("{e}"))?;
        let e = Engine::new(&bb, &mut arena, &mut params).map_err(|e| anyhow!("{e}"))?;
        std::hint::black_box(e.classes());
        t.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    Ok((stats(t).0, bytes.len()))
}

/// tract: load + optimize (ms, one run) and fp32 inference (median ms).
fn time_tract(
    onnx: &Path,
    input_shape: (usize, usize, usize),
    input: &[f32],
    iters: usize,
) -> Result<(f64, f64)> {
    use graftnet_tools::reference::TractModel;
    let t0 = Instant::now();
    let m = TractModel::load(onnx, Some(input_shape))?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    for _ in 0..2 {
        m.run(input)?;
    }
    let mut t = Vec::new();
    for _ in 0..iters.clamp(3, 20) {
        t.push(time_ms(&mut || {
            m.run(std::hint::black_box(input))?;
            Ok(())
        })?);
    }
    Ok((load_ms, stats(t).0))
}

/// Runs `graftnet bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    let ex = ExportDir::open_verified(&args.dir, args.verify_key)?;
    for w in ex.warnings() {
        eprintln!("graftnet: warning: {w}");
    }
    let task = args
        .task
        .clone()
        .or_else(|| args.tasks.first().cloned())
        .unwrap_or_else(|| BASE_TASK.to_string());
    for t in std::iter::once(&task).chain(&args.tasks) {
        if t != BASE_TASK && !ex.patches.contains_key(t) {
            bail!(
                "unknown task '{t}'; this export has: {}",
                ex.task_names().join(", ")
            );
        }
    }
    let tables: Vec<Kernels> = match args.kernels.as_deref() {
        None => vec![Kernels::best()],
        Some("all") => Kernels::available().collect(),
        Some(name) => vec![Kernels::by_name(name).ok_or_else(|| {
            anyhow!(
                "kernel table '{name}' is not available on this CPU (available: {})",
                Kernels::available()
                    .map(|k| k.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?],
    };
    let bb = ex.parse_backbone()?;
    let t_in = bb.input();
    let input_shape = (t_in.c as usize, t_in.h as usize, t_in.w as usize);
    let input = random_input(t_in.len(), 1);
    let iters = args.iters.max(1);
    let classes = ex.with_engine(&task, |e| Ok(e.classes() as u16))?;
    let total_macs = macs(&bb, classes);

    let threads_used = args.threads.max(1);
    let (_, reference) = time_inference(&ex, &task, Kernels::scalar(), 1, &input, 1, None)?;
    let mut results = Vec::new();
    for k in &tables {
        let (r, _) = time_inference(
            &ex,
            &task,
            *k,
            threads_used,
            &input,
            iters,
            Some(&reference),
        )?;
        if !r.matches_scalar {
            bail!(
                "kernel table '{}' gives scores that differ from the scalar reference",
                r.name
            );
        }
        results.push(r);
    }
    let main = results.last().unwrap();
    let multi = if args.tasks.is_empty() {
        None
    } else {
        let k = *tables.last().unwrap();
        Some(time_multi(
            &ex,
            &args.tasks,
            k,
            threads_used,
            &input,
            iters,
        )?)
    };

    let switch = time_switch(&ex, 200)?;
    let verify = match &ex.verify_key {
        Some(k) => Some(time_verify(&ex, k, 20)?),
        None => None,
    };
    let params_bytes = bb.params_len() * std::mem::size_of::<ChannelRequant>();
    let patch_bytes = if task == BASE_TASK {
        switch.as_ref().map_or(0, |s| s.max_patch)
    } else {
        ex.patches[&task].len()
    };
    let peak = bb.arena_len() + params_bytes + patch_bytes;

    let source = task_source(&ex, &task);
    let full = match &source {
        Some(p) => time_full_load(p, input_shape)
            .with_context(|| format!("building a per-task backbone from {}", p.display())),
        None => Err(anyhow!(
            "the manifest names no readable source ONNX for task '{task}'"
        )),
    };
    let tract = match &source {
        Some(p) => time_tract(p, input_shape, &input, iters),
        None => Err(anyhow!("no source ONNX")),
    };

    if args.json {
        let mut per = serde_json::Map::new();
        for r in &results {
            per.insert(
                r.name.to_string(),
                json!({"median_ms": r.median_ms, "p90_ms": r.p90_ms, "mean_ms": r.mean_ms,
                       "kernels": [r.names.pointwise, r.names.conv, r.names.dwconv, r.names.fc]}),
            );
        }
        let v = json!({
            "dir": args.dir.to_string_lossy(),
            "task": task,
            "kernels": main.name,
            "kernel_names": {"pointwise": main.names.pointwise, "conv": main.names.conv, "dwconv": main.names.dwconv, "fc": main.names.fc},
            "median_ms": main.median_ms,
            "p90_ms": main.p90_ms,
            "mean_ms": main.mean_ms,
            "iters": iters,
            "threads": threads_used,
            "threads_requested": args.threads,
            "macs": total_macs,
            "gmacs_per_s": total_macs as f64 / main.median_ms / 1e6,
            "matches_scalar": results.iter().all(|r| r.matches_scalar),
            "per_table": per,
            "switch_us": switch.as_ref().map(|s| s.apply_us),
            "switch_from_bytes_us": switch.as_ref().map(|s| s.from_bytes_us),
            "patch_parse_us": switch.as_ref().map(|s| s.parse_us),
            "switch_from_signed_bytes_us": switch.as_ref().and_then(|s| s.from_signed_bytes_us),
            "verify_key_id": verify.as_ref().map(|v| v.key_id.clone()),
            "verify_backbone_us": verify.as_ref().map(|v| v.backbone_us),
            "verify_backbone_bytes": verify.as_ref().map(|v| v.backbone_bytes),
            "verify_patch_us": verify.as_ref().and_then(|v| v.patch_us),
            "verify_largest_patch_us": verify.as_ref().and_then(|v| v.max_patch_us),
            "verify_largest_patch_bytes": verify.as_ref().map(|v| v.max_patch_bytes),
            "switch_percent_of_inference": switch.as_ref().map(|s| s.apply_us / 10.0 / main.median_ms),
            "arena_bytes": bb.arena_len(),
            "params_bytes": params_bytes,
            "patch_bytes": patch_bytes,
            "peak_bytes": peak,
            "backbone_bytes": ex.backbone.len(),
            "full_model_load_us": full.as_ref().ok().map(|f| f.0),
            "full_model_backbone_bytes": full.as_ref().ok().map(|f| f.1),
            "full_model_error": full.as_ref().err().map(|e| format!("{e:#}")),
            "tract_load_ms": tract.as_ref().ok().map(|t| t.0),
            "tract_median_ms": tract.as_ref().ok().map(|t| t.1),
            "tract_error": tract.as_ref().err().map(|e| format!("{e:#}")),
            "input_shape": [input_shape.0, input_shape.1, input_shape.2],
        });
        let mut v = v;
        if let (Some(m), Some(obj)) = (&multi, v.as_object_mut()) {
            let extra = json!({
                "tasks": m.tasks,
                "multi_ms": m.median_ms,
                "multi_p90_ms": m.p90_ms,
                "multi_over_single": m.median_ms / main.median_ms,
                "multi_shared_ops": m.shared.ops,
                "multi_ops": m.shared.of,
                "multi_branch_bytes": m.shared.branch_len,
                "multi_macs": m.macs,
            });
            if let Some(e) = extra.as_object() {
                obj.extend(e.clone());
            }
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "export   {}  (task '{task}', input {}x{}x{}, {:.1} M MACs)",
        args.dir.display(),
        input_shape.0,
        input_shape.1,
        input_shape.2,
        total_macs as f64 / 1e6
    );
    println!("threads  {threads_used}");
    println!(
        "{:<12} {:>10} {:>10} {:>9}  kernels (pointwise / conv / dwconv / fc)",
        "table", "median ms", "p90 ms", "GMAC/s"
    );
    for r in &results {
        println!(
            "{:<12} {:>10.3} {:>10.3} {:>9.1}  {} / {} / {} / {}",
            r.name,
            r.median_ms,
            r.p90_ms,
            total_macs as f64 / r.median_ms / 1e6,
            r.names.pointwise,
            r.names.conv,
            r.names.dwconv,
            r.names.fc
        );
    }
    if let Some(m) = &multi {
        println!(
            "multi    {:.3} ms median ({:.3} p90) for {} tasks in one pass = {:.2}x one inference; \
             {} of {} ops shared, branch {} B, {:.1} M MACs ({})",
            m.median_ms,
            m.p90_ms,
            m.tasks.len(),
            m.median_ms / main.median_ms,
            m.shared.ops,
            m.shared.of,
            m.shared.branch_len,
            m.macs as f64 / 1e6,
            m.tasks.join(", ")
        );
    }
    match &switch {
        Some(s) => println!(
            "switch   {:.1} us median = {:.2} % of one inference (Engine::apply of a verified resident patch, {} patch(es))\n         \
             from bytes {:.1} us median (Patch::parse + Engine::apply; parse alone {:.1} us)",
            s.apply_us,
            s.apply_us / 10.0 / main.median_ms,
            ex.patches.len(),
            s.from_bytes_us,
            s.parse_us,
        ),
        None => println!("switch   - (no patches in this export)"),
    }
    if let Some(us) = switch.as_ref().and_then(|s| s.from_signed_bytes_us) {
        println!(
            "         from signed bytes {us:.1} us median (Patch::parse_verified + Engine::apply)"
        );
    }
    if let Some(v) = &verify {
        println!(
            "verify   key {}: backbone {:.1} us ({} B), patch {} median{} (signature check alone: SHA-512 + Ed25519)",
            v.key_id,
            v.backbone_us,
            v.backbone_bytes,
            v.patch_us.map_or("-".to_string(), |u| format!("{u:.1} us")),
            v.max_patch_us.map_or(String::new(), |u| format!(
                ", largest ({} B) {u:.1} us",
                v.max_patch_bytes
            )),
        );
    }
    println!(
        "memory   {} B = arena {} + params {} + patch {}   (backbone {} B stays in flash)",
        peak,
        bb.arena_len(),
        params_bytes,
        patch_bytes,
        ex.backbone.len()
    );
    match &full {
        Ok((us, n)) => println!("full     {us:.1} us: Backbone::parse + Engine::new of the task as its own model ({n} B backbone)"),
        Err(e) => println!("full     - ({e:#})"),
    }
    match &tract {
        Ok((load, inf)) => {
            println!("tract    load+optimize {load:.1} ms, fp32 inference {inf:.3} ms median")
        }
        Err(e) => println!("tract    - ({e:#})"),
    }
    Ok(())
}
