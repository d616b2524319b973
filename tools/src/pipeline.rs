//! The export job: base and task ONNX models in, `backbone.gnb`, one
//! `NAME.gnp` per task and a `manifest.json` out.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use graftnet::format::EntryClass;
use indicatif::{ProgressBar, ProgressStyle};

use crate::bias_correction::{correct_biases, BiasCorrection};
use crate::data::{self, Dataset, Preprocess};
use crate::export::{self, OtherPolicy, PatchEntry};
use crate::head_patch;
use crate::import::{import_onnx_file, ImportOptions};
use crate::ir::Graph;
use crate::quantize::{self, QModel};
use crate::share_prefix::{self, SharedBase};
use crate::verify;

/// Name of the base task.
pub const BASE_TASK: &str = "base";

/// What `graftnet export` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub base: PathBuf,
    /// (name, model)
    pub tasks: Vec<(String, PathBuf)>,
    /// calibration data for the base, and for tasks without their own
    pub calib: PathBuf,
    /// per-task calibration data
    pub calib_tasks: BTreeMap<String, PathBuf>,
    pub out: PathBuf,
    /// (c, h, w) for models with dynamic input dimensions
    pub input_shape: Option<(usize, usize, usize)>,
    /// preprocessing for image-folder calibration data
    pub prep: Preprocess,
    /// use at most this many calibration samples per task (0 = all)
    pub calib_limit: usize,
    pub other: OtherPolicy,
    /// class labels per task
    pub labels: BTreeMap<String, Vec<String>>,
    /// show progress bars
    pub progress: bool,
    /// empirical bias correction (see [`crate::bias_correction`]) for the
    /// base and every task; `None` = off
    pub bias_correction: Option<BiasCorrection>,
    /// An existing backbone (`backbone.gnb` of an earlier export, possibly
    /// already on devices): write only patches that apply to it. The base
    /// model and its calibration must reproduce it byte for byte; the export
    /// fails, saying what differs, when they do not.
    pub backbone: Option<PathBuf>,
    /// Version written into every patch (0: unversioned); devices using
    /// `Engine::apply_newer` refuse a version older than one they accepted.
    pub task_version: u32,
    /// Sign the backbone and every patch written (`--sign KEY`): each file
    /// is the blob followed by its signature trailer (`FORMAT.md`,
    /// "Signatures"); without a key the files are byte-identical to an
    /// unsigned export.
    pub sign: Option<graftnet::SigningKey>,
    /// Every task keeps the base's int8 form for the ops it leaves
    /// unchanged (`--share-prefix`, see [`crate::share_prefix`]), so
    /// devices run those ops once for several tasks.
    pub share_prefix: bool,
}

/// One exported task.
#[derive(Clone, Debug)]
pub struct TaskReport {
    pub name: String,
    pub source: PathBuf,
    pub classes: usize,
    /// patch file (None for the base task)
    pub patch: Option<PathBuf>,
    pub patch_bytes: usize,
    pub bytes_by_class: Vec<(EntryClass, usize)>,
    pub entries: Vec<PatchEntry>,
    /// leading ops whose int8 form equals the base's (`Engine::run_tasks`
    /// runs them once for both; see `--share-prefix`)
    pub shared_ops: usize,
    /// the task brings its own head (`head_patch`)
    pub head: Option<head_patch::HeadReport>,
}

/// The export's results.
#[derive(Clone, Debug)]
pub struct ExportReport {
    pub backbone: PathBuf,
    pub backbone_bytes: usize,
    pub weights_bytes: usize,
    pub arena_bytes: usize,
    pub arena_lower_bound: usize,
    pub params_len: usize,
    /// ops in the backbone
    pub n_ops: usize,
    pub fingerprint: u64,
    pub tasks: Vec<TaskReport>,
    pub input_shape: (usize, usize, usize),
    /// `.gnp` files of an earlier export in the output directory that this
    /// export does not list, removed (see `remove_stale_patches`)
    pub removed: Vec<PathBuf>,
}

/// Reads a model and calibration data and quantizes it, exactly as every
/// export does (a base, a task, or a task exported alone).
pub fn quantize_model(
    graph: &Graph,
    calib: &Dataset,
    limit: usize,
    labels: Vec<String>,
    progress: Option<&ProgressBar>,
) -> Result<QModel> {
    quantize_model_with(graph, calib, limit, labels, progress, None)
}

/// [`quantize_model`], then the empirical bias correction when asked.
pub fn quantize_model_with(
    graph: &Graph,
    calib: &Dataset,
    limit: usize,
    labels: Vec<String>,
    progress: Option<&ProgressBar>,
    bias_correction: Option<BiasCorrection>,
) -> Result<QModel> {
    quantize_shared(graph, calib, limit, labels, progress, bias_correction, None).map(|r| r.q)
}

/// A model quantized by [`quantize_shared`].
pub struct Quantized {
    /// its calibration ranges (the base's, for unchanged tensors, when
    /// shared)
    pub ranges: quantize::Ranges,
    /// before bias correction (`None` without it: the same as `q`)
    pub uncorrected: Option<QModel>,
    /// as exported
    pub q: QModel,
}

impl Quantized {
    /// The base for tasks exported with `--share-prefix`.
    pub fn as_shared_base<'b>(&'b self, graph: &'b Graph) -> SharedBase<'b> {
        SharedBase {
            graph,
            ranges: &self.ranges,
            q: self.uncorrected.as_ref().unwrap_or(&self.q),
            corrected: &self.q,
        }
    }
}

/// [`quantize_model_with`]; with `shared`, the task keeps the base's
/// int8 form wherever it does not differ (`share_prefix`).
pub fn quantize_shared(
    graph: &Graph,
    calib: &Dataset,
    limit: usize,
    labels: Vec<String>,
    progress: Option<&ProgressBar>,
    bias_correction: Option<BiasCorrection>,
    shared: Option<&SharedBase<'_>>,
) -> Result<Quantized> {
    let n = if limit == 0 {
        calib.len()
    } else {
        calib.len().min(limit)
    };
    let shape = graph.shape(graph.input);
    if (shape.c, shape.h, shape.w) != calib.shape {
        bail!(
            "calibration data has samples of shape {:?} (c,h,w), the model input is {}",
            calib.shape,
            shape
        );
    }
    let tick = |k: usize| {
        if let Some(p) = progress {
            p.set_position(k as u64);
        }
    };
    if let Some(p) = progress {
        p.set_length(n as u64);
        p.set_position(0);
    }
    let mut ranges = quantize::calibrate(graph, (0..n).map(|i| calib.sample(i)), &tick)?;
    if let Some(s) = shared {
        share_prefix::share_ranges(s, graph, &mut ranges);
    }
    let mut q = quantize::quantize(graph, &ranges, labels)?;
    let frozen = match shared {
        Some(s) => share_prefix::freeze_prefix(s, &mut q),
        None => vec![false; q.ops.len()],
    };
    let mut uncorrected = None;
    if let Some(bc) = bias_correction {
        uncorrected = Some(q.clone());
        let bc = BiasCorrection {
            samples: bc.samples.min(n),
        };
        if let Some(p) = progress {
            p.set_length(
                q.ops
                    .iter()
                    .zip(&frozen)
                    .filter(|(o, &f)| {
                        !f && matches!(
                            o.kind,
                            graftnet::format::OpKind::Conv | graftnet::format::OpKind::DwConv
                        )
                    })
                    .count() as u64,
            );
            p.set_position(0);
            p.set_message(format!("{} (bias correction)", p.message()));
        }
        correct_biases(graph, &mut q, calib, bc, &frozen, &tick).context("bias correction")?;
    }
    Ok(Quantized {
        ranges,
        uncorrected,
        q,
    })
}

fn bar(enabled: bool, msg: String) -> Option<ProgressBar> {
    if !enabled {
        return None;
    }
    let p = ProgressBar::new(0);
    p.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} calibration samples")
            .unwrap()
            .progress_chars("=> "),
    );
    p.set_message(msg);
    Some(p)
}

/// Imports one ONNX model.
pub fn import(path: &Path, input_shape: Option<(usize, usize, usize)>) -> Result<Graph> {
    import_onnx_file(path, &ImportOptions { input_shape })
        .with_context(|| format!("importing {}", path.display()))
}

fn load_calib(path: &Path, prep: &Preprocess, shape: (usize, usize, usize)) -> Result<Dataset> {
    let mut prep = prep.clone();
    if prep.size.is_none() {
        prep.size = Some((shape.1, shape.2));
    }
    prep.channels = shape.0;
    data::load_dataset(path, None, &prep)
        .with_context(|| format!("loading calibration data {}", path.display()))
}

/// Runs the export job.
pub fn export(opts: &ExportOptions) -> Result<ExportReport> {
    let mut names: Vec<&str> = vec![BASE_TASK];
    for (n, _) in &opts.tasks {
        if names.contains(&n.as_str()) {
            bail!("task name '{n}' is given twice (the base model is task '{BASE_TASK}')");
        }
        if n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.') {
            bail!("task name '{n}' cannot be a file name");
        }
        names.push(n);
    }
    for k in opts.calib_tasks.keys() {
        if !names.contains(&k.as_str()) {
            bail!("--calib-task names '{k}', which is not a task");
        }
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    let base_graph = import(&opts.base, opts.input_shape)?;
    let s = base_graph.shape(base_graph.input);
    let shape = (s.c, s.h, s.w);
    let calib_for = |name: &str| opts.calib_tasks.get(name).unwrap_or(&opts.calib).clone();
    let mut cache: BTreeMap<PathBuf, Dataset> = BTreeMap::new();
    let mut get_calib = |p: PathBuf| -> Result<Dataset> {
        if !cache.contains_key(&p) {
            let d = load_calib(&p, &opts.prep, shape)?;
            cache.insert(p.clone(), d);
        }
        Ok(cache[&p].clone())
    };
    let labels = |name: &str| opts.labels.get(name).cloned().unwrap_or_default();
    let pb = bar(opts.progress, BASE_TASK.to_string());
    let base = quantize_shared(
        &base_graph,
        &get_calib(calib_for(BASE_TASK))?,
        opts.calib_limit,
        labels(BASE_TASK),
        pb.as_ref(),
        opts.bias_correction,
        None,
    )?;
    let shared = opts.share_prefix.then(|| base.as_shared_base(&base_graph));
    let base_q = &base.q;
    if let Some(p) = pb {
        p.finish();
    }
    let mut tasks_q = Vec::new();
    for (name, path) in &opts.tasks {
        let g = import(path, opts.input_shape)?;
        let pb = bar(opts.progress, name.clone());
        let q = quantize_shared(
            &g,
            &get_calib(calib_for(name))?,
            opts.calib_limit,
            labels(name),
            pb.as_ref(),
            opts.bias_correction,
            shared.as_ref(),
        )
        .with_context(|| format!("quantizing task '{name}'"))?
        .q;
        if let Some(p) = pb {
            p.finish();
        }
        tasks_q.push((name.clone(), path.clone(), q));
    }
    let max_classes = tasks_q
        .iter()
        .map(|(_, _, q)| q.classes())
        .chain([base_q.classes()])
        .max()
        .unwrap_or(1);
    let existing = match &opts.backbone {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading the backbone {}", p.display()))?,
        ),
        None => None,
    };
    let bb = match &existing {
        None => export::emit_backbone(base_q, max_classes)?,
        Some(old) => {
            let path = opts.backbone.as_deref().unwrap_or(Path::new(""));
            let old_bb = graftnet::Backbone::parse(old)
                .map_err(|e| anyhow::anyhow!("{}: not a valid backbone: {e}", path.display()))?;
            let capacity = usize::from(old_bb.max_classes());
            if let Some((name, _, q)) = tasks_q.iter().find(|(_, _, q)| q.classes() > capacity) {
                bail!(
                    "task '{name}' has {} classes but the backbone {} holds at most {capacity}; export the backbone again with this task (devices must then re-flash it)",
                    q.classes(),
                    path.display()
                );
            }
            let bb = export::emit_backbone(base_q, capacity)?;
            // A signed backbone is compared by its content.
            if bb.bytes.as_slice() != old_bb.bytes() {
                bail!(
                    "the base model {} with its calibration data does not reproduce the backbone {}: {}. Export with the same --base, --calib, --calib-limit, --bias-correction and --input-shape as the export that wrote it",
                    opts.base.display(),
                    path.display(),
                    describe_backbone_difference(old, &bb.bytes)
                );
            }
            bb
        }
    };
    // (A backbone that does not parse fails `check_export` below.)
    let fingerprint = graftnet::Backbone::parse(&bb.bytes).map_or(0, |b| b.fingerprint());
    let mut patches = Vec::new();
    let mut heads = BTreeMap::new();
    for (name, _, q) in &tasks_q {
        let entries = match export::diff(base_q, q, opts.other, name) {
            Ok(e) => e,
            // A task that differs after a cut brings its own head.
            Err(diff_err) => {
                match head_patch::head_entries(base_q, q, opts.other, name, bb.plan.arena_len) {
                    Ok((e, rep)) => {
                        heads.insert(name.clone(), rep);
                        e
                    }
                    Err(head_err) => {
                        bail!("{diff_err:#}\n(nor as a patch with its own head: {head_err:#})")
                    }
                }
            }
        };
        let blob = export::emit_patch(name, fingerprint, q.classes(), &entries, opts.task_version)?;
        patches.push((entries, blob));
    }
    // Nothing is written unless the runtime takes all of it.
    let checked: Vec<(&str, &QModel, &[u8])> = tasks_q
        .iter()
        .zip(&patches)
        .map(|((name, _, q), (_, blob))| (name.as_str(), q, blob.as_slice()))
        .collect();
    let shared = verify::check_export(base_q, &bb.bytes, &checked)?;
    // Signed: content + trailer, checked against the key before writing.
    let signed = |blob: &[u8], what: &str| -> Result<Vec<u8>> {
        let Some(key) = &opts.sign else {
            return Ok(blob.to_vec());
        };
        let out = crate::signing::sign_blob(blob, key)?;
        crate::signing::verify_blob(&out, &key.verify_key()).map_err(|e| {
            anyhow::anyhow!("{what}: signed, but the signature does not verify: {e}")
        })?;
        Ok(out)
    };
    let bb_file = match (&existing, &opts.sign) {
        // Reusing a backbone without signing: write it as it was (its
        // trailer, if any, stays).
        (Some(old), None) => old.clone(),
        _ => signed(&bb.bytes, "backbone")?,
    };
    let bb_path = opts.out.join("backbone.gnb");
    std::fs::write(&bb_path, &bb_file).with_context(|| format!("writing {}", bb_path.display()))?;
    let mut reports = vec![TaskReport {
        name: BASE_TASK.into(),
        source: opts.base.clone(),
        classes: base_q.classes(),
        patch: None,
        patch_bytes: 0,
        bytes_by_class: vec![],
        entries: vec![],
        shared_ops: shared.n_ops,
        head: None,
    }];
    for (((name, path, q), (entries, blob)), &shared_ops) in
        tasks_q.iter().zip(patches).zip(&shared.tasks)
    {
        let p = opts.out.join(format!("{name}.gnp"));
        let blob = signed(&blob, name)?;
        std::fs::write(&p, &blob).with_context(|| format!("writing {}", p.display()))?;
        reports.push(TaskReport {
            name: name.clone(),
            source: path.clone(),
            classes: q.classes(),
            patch: Some(p),
            patch_bytes: blob.len(),
            bytes_by_class: export::bytes_by_class(&entries),
            entries,
            shared_ops,
            head: heads.remove(name),
        });
    }
    let mut report = ExportReport {
        backbone: bb_path,
        backbone_bytes: bb_file.len(),
        weights_bytes: bb.weights_len,
        arena_bytes: bb.plan.arena_len,
        arena_lower_bound: bb.plan.lower_bound,
        params_len: bb.params_len,
        n_ops: shared.n_ops,
        fingerprint,
        tasks: reports,
        input_shape: shape,
        removed: vec![],
    };
    let listed = write_manifest(opts, &report)?;
    report.removed = remove_stale_patches(&opts.out, &listed)?;
    Ok(report)
}

/// Says where two backbones differ, for the `--backbone` refusal.
fn describe_backbone_difference(old: &[u8], new: &[u8]) -> String {
    let (Ok(a), Ok(b)) = (
        graftnet::Backbone::parse(old),
        graftnet::Backbone::parse(new),
    ) else {
        return "the backbones differ".into();
    };
    let mut what = vec![format!(
        "fingerprint {:016x} (device) vs {:016x} (this export)",
        a.fingerprint(),
        b.fingerprint()
    )];
    if (a.n_ops(), a.n_tensors()) != (b.n_ops(), b.n_tensors()) {
        what.push(format!(
            "{} ops / {} tensors vs {} / {} (another architecture)",
            a.n_ops(),
            a.n_tensors(),
            b.n_ops(),
            b.n_tensors()
        ));
    } else if let Some(i) = (0..a.n_ops()).find(|&i| a.op(i) != b.op(i)) {
        what.push(format!("op {i} differs (geometry or quantization)"));
    }
    if a.weights() != b.weights() {
        what.push("the int8 weights differ (another base model)".into());
    } else {
        what.push(
            "the base task's quantization (activation ranges, scales, biases) differs: other calibration data or options"
                .into(),
        );
    }
    what.join("; ")
}

/// Removes the `.gnp` files in `out` that the manifest does not list: left
/// from an earlier export into the same directory, they would still carry
/// a matching fingerprint if the backbone is unchanged, and a loader
/// listing the directory would serve a task the manifest no longer has.
/// Returns the files removed.
fn remove_stale_patches(out: &Path, listed: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let written: Vec<&Path> = listed.iter().map(PathBuf::as_path).collect();
    let mut removed = Vec::new();
    for e in std::fs::read_dir(out).with_context(|| format!("listing {}", out.display()))? {
        let p = e
            .with_context(|| format!("listing {}", out.display()))?
            .path();
        if p.extension().is_some_and(|x| x == "gnp") && !written.contains(&p.as_path()) {
            std::fs::remove_file(&p)
                .with_context(|| format!("removing the stale patch {}", p.display()))?;
            removed.push(p);
        }
    }
    removed.sort();
    Ok(removed)
}

/// `p` as an absolute path where it exists (the manifest records where an
/// export's inputs were, for `export --backbone` and `learn --export`).
fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Writes `manifest.json`; returns the patch files it lists.
fn write_manifest(opts: &ExportOptions, r: &ExportReport) -> Result<Vec<PathBuf>> {
    use serde_json::json;
    let mut tasks: Vec<_> = r
        .tasks
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "patch": t.patch.as_ref().map(|p| p.file_name().unwrap().to_string_lossy().to_string()),
                "classes": t.classes,
                "source": absolute(&t.source).to_string_lossy(),
                "patch_bytes": t.patch_bytes,
                "labels": opts.labels.get(&t.name).cloned().unwrap_or_default(),
            })
        })
        .collect();
    // Adding tasks to an existing backbone's directory keeps its other tasks.
    if opts.backbone.is_some() {
        let old = std::fs::read_to_string(opts.out.join("manifest.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .filter(|m| m["fingerprint"] == json!(format!("{:016x}", r.fingerprint)));
        if let Some(old_tasks) = old.as_ref().and_then(|m| m["tasks"].as_array()) {
            for t in old_tasks {
                let name = t["name"].as_str().unwrap_or_default();
                let file_ok = t["patch"]
                    .as_str()
                    .is_some_and(|p| opts.out.join(p).is_file());
                if file_ok && !r.tasks.iter().any(|n| n.name == name) {
                    tasks.push(t.clone());
                }
            }
        }
    }
    let m = json!({
        "format": "graftnet-export/1",
        "backbone": "backbone.gnb",
        "fingerprint": format!("{:016x}", r.fingerprint),
        "input_shape": [r.input_shape.0, r.input_shape.1, r.input_shape.2],
        "preprocess": { "mean": opts.prep.mean, "std": opts.prep.std },
        "calib": absolute(&opts.calib).to_string_lossy(),
        "calib_limit": opts.calib_limit,
        "bias_correction": opts.bias_correction.map_or(0, |b| b.samples),
        "tasks": tasks,
    });
    let mut m = m;
    if let Some(k) = &opts.sign {
        // Only in signed exports: an unsigned export's manifest is unchanged.
        m["signed_by"] = json!(k.verify_key().id().to_string());
    }
    let p = opts.out.join("manifest.json");
    std::fs::write(&p, serde_json::to_string_pretty(&m)?)
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(tasks
        .iter()
        .filter_map(|t| t["patch"].as_str().map(|f| opts.out.join(f)))
        .collect())
}
