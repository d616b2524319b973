//! Running an export directory on the host through the real runtime.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use graftnet::{Backbone, ChannelRequant, Engine, Patch, VerifyKey};

use crate::pipeline::BASE_TASK;

/// A task name the export does not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownTask {
    pub name: String,
    pub known: Vec<String>,
}

impl fmt::Display for UnknownTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown task '{}'; this export has: {}",
            self.name,
            self.known.join(", ")
        )
    }
}

impl std::error::Error for UnknownTask {}

/// An export directory loaded into memory.
#[derive(Clone, Debug)]
pub struct ExportDir {
    pub dir: PathBuf,
    pub backbone: Vec<u8>,
    /// task name -> patch bytes
    pub patches: BTreeMap<String, Vec<u8>>,
    pub manifest: Option<serde_json::Value>,
    /// `*.gnp` files in the directory that the manifest does not list, left
    /// out (see [`listed_patches`])
    pub ignored: Vec<PathBuf>,
    /// With a key (`--verify-key`), the backbone and every patch must carry
    /// its signature: `parse_backbone`, `patch` and `with_engine` refuse
    /// the others.
    pub verify_key: Option<VerifyKey>,
}

impl ExportDir {
    /// Reads `DIR/backbone.gnb` and the patches `DIR/manifest.json` lists
    /// (every `DIR/*.gnp` if there is no manifest; see [`listed_patches`]).
    pub fn open(dir: &Path) -> Result<Self> {
        let bbp = dir.join("backbone.gnb");
        let backbone = std::fs::read(&bbp).with_context(|| {
            format!(
                "reading {} (is {} an export directory?)",
                bbp.display(),
                dir.display()
            )
        })?;
        let manifest = match std::fs::read_to_string(dir.join("manifest.json")) {
            Ok(s) => Some(
                serde_json::from_str(&s)
                    .with_context(|| format!("parsing {}", dir.join("manifest.json").display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading {}", dir.join("manifest.json").display()))
            }
        };
        let (files, ignored) = listed_patches(dir, manifest.as_ref())?;
        let mut patches = BTreeMap::new();
        for p in files {
            let name = p
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            patches.insert(
                name,
                std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
            );
        }
        Ok(ExportDir {
            dir: dir.to_path_buf(),
            backbone,
            patches,
            manifest,
            ignored,
            verify_key: None,
        })
    }

    /// [`ExportDir::open`], then every blob used must carry `key`'s
    /// signature (none: as `open`).
    pub fn open_verified(dir: &Path, key: Option<VerifyKey>) -> Result<Self> {
        let mut d = Self::open(dir)?;
        d.verify_key = key;
        Ok(d)
    }

    /// One line per `*.gnp` file left out because the manifest does not
    /// list it (for the CLI to print on stderr).
    pub fn warnings(&self) -> Vec<String> {
        self.ignored
            .iter()
            .map(|p| {
                format!(
                    "{}: not listed in manifest.json (a stale or foreign patch); not served",
                    p.display()
                )
            })
            .collect()
    }

    /// Every task: `base` and one per patch.
    pub fn task_names(&self) -> Vec<String> {
        std::iter::once(BASE_TASK.to_string())
            .chain(self.patches.keys().cloned())
            .collect()
    }

    /// Parses the backbone.
    pub fn parse_backbone(&self) -> Result<Backbone<'_>> {
        match &self.verify_key {
            None => Backbone::parse(&self.backbone),
            Some(k) => Backbone::parse_verified(&self.backbone, k),
        }
        .map_err(|e| anyhow::anyhow!("{}: {e}", self.dir.join("backbone.gnb").display()))
    }

    /// The patch of `task` (`None` for the base task).
    pub fn patch(&self, task: &str) -> Result<Option<Patch<'_>>> {
        if task == BASE_TASK {
            return Ok(None);
        }
        let bytes = self.patches.get(task).ok_or_else(|| UnknownTask {
            name: task.to_string(),
            known: self.task_names(),
        })?;
        let p = match &self.verify_key {
            None => Patch::parse(bytes),
            Some(k) => Patch::parse_verified(bytes, k),
        }
        .map_err(|e| anyhow::anyhow!("{}: {e}", self.dir.join(format!("{task}.gnp")).display()))?;
        Ok(Some(p))
    }

    /// Runs `f` with an engine on which `task` is active.
    pub fn with_engine<R>(
        &self,
        task: &str,
        f: impl FnOnce(&mut Engine<'_, '_>) -> Result<R>,
    ) -> Result<R> {
        let patch = self.patch(task)?;
        self.with_tasks(&[], |engine, _| {
            if let Some(p) = patch {
                engine
                    .apply(p)
                    .map_err(|e| anyhow::anyhow!("applying task '{task}': {e}"))?;
            }
            f(engine)
        })
    }

    /// Runs `f` with an engine (the base task active) and the patches of
    /// `tasks` (`None` for the base task), checked.
    pub fn with_tasks<'s, R>(
        &'s self,
        tasks: &[String],
        f: impl FnOnce(&mut Engine<'s, '_>, &[Option<Patch<'s>>]) -> Result<R>,
    ) -> Result<R> {
        let bb = self.parse_backbone()?;
        let list: Vec<Option<Patch<'s>>> =
            tasks.iter().map(|t| self.patch(t)).collect::<Result<_>>()?;
        let sizes = self.engine_sizes()?;
        let mut arena = vec![0i8; sizes.arena];
        let mut params = vec![ChannelRequant::default(); sizes.params];
        let mut engine = match &self.verify_key {
            None => Engine::new(&bb, &mut arena, &mut params).map_err(graftnet::Error::from),
            Some(k) => Engine::new_verified(&bb, &mut arena, &mut params, k),
        }
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        f(&mut engine, &list)
    }

    /// Arena and parameter table for an engine that runs every task of the
    /// export (more than the backbone's when a patch brings its own head).
    pub fn engine_sizes(&self) -> Result<graftnet::format::head::EngineSizes> {
        let bb = self.parse_backbone()?;
        let all: Vec<Patch<'_>> = self
            .patches
            .values()
            .filter_map(|b| Patch::parse(b).ok())
            .collect();
        Ok(bb.engine_sizes(&all))
    }

    /// Runs every task of `tasks` on one float NCHW input in one pass
    /// (`Engine::run_tasks_f32`: the ops they share once); returns each
    /// task's dequantized scores and top-1, and what they shared.
    /// `threads` as `Engine::set_threads`.
    pub fn run_tasks(
        &self,
        tasks: &[String],
        x_chw: &[f32],
        threads: usize,
    ) -> Result<(Vec<TaskScores>, graftnet::SharedPrefix)> {
        self.with_tasks(tasks, |e, list| {
            e.set_threads(threads);
            let mut branch = vec![0i8; e.backbone().arena_len()];
            let mut out = Vec::with_capacity(list.len());
            let sp = e
                .run_tasks_f32(x_chw, list, &mut branch, |_, sc| {
                    let mut v = vec![0f32; sc.len()];
                    sc.dequantize_into(&mut v);
                    out.push((v, sc.argmax()));
                })
                .map_err(|err| anyhow::anyhow!("running tasks {}: {err}", tasks.join(", ")))?;
            Ok((out, sp))
        })
    }

    /// Labels of a task, if the export carries them.
    pub fn labels(&self, task: &str) -> Vec<String> {
        use graftnet::format::EntryKind;
        let from = |it: graftnet::format::entry::EntryIter<'_>| {
            it.filter(|e| e.kind == EntryKind::Labels)
                .map(|e| {
                    String::from_utf8_lossy(e.payload)
                        .split('\n')
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .next()
        };
        if let Ok(Some(p)) = self.patch(task) {
            if let Some(l) = from(p.entries()) {
                return l;
            }
            return vec![];
        }
        self.parse_backbone()
            .ok()
            .and_then(|bb| from(bb.base_entries()))
            .unwrap_or_default()
    }
}

/// The patch files of export directory `dir`: `(served, ignored)`.
///
/// With a `manifest.json` (every `graftnet export` writes one) the served
/// files are exactly the ones its `tasks[].patch` names, and any other
/// `*.gnp` in the directory is ignored: a patch left from an earlier export
/// into the same directory still matches the backbone's fingerprint, and
/// serving it would bring back a task the export dropped. A listed file
/// that is missing is an error. Without a manifest (a directory assembled
/// by hand) every `*.gnp` is served.
pub fn listed_patches(
    dir: &Path,
    manifest: Option<&serde_json::Value>,
) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let mut present = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "gnp") {
            present.push(p);
        }
    }
    present.sort();
    let Some(m) = manifest else {
        return Ok((present, vec![]));
    };
    let mut listed = Vec::new();
    let tasks = m.get("tasks").and_then(|t| t.as_array());
    for file in tasks
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("patch")?.as_str())
    {
        // A plain file name in the directory, nothing else.
        let plain = Path::new(file).file_name().is_some_and(|n| n == file);
        if !plain || !file.ends_with(".gnp") {
            bail!(
                "{}: lists patch '{file}', which is not a .gnp file name in the directory",
                dir.join("manifest.json").display()
            );
        }
        let p = dir.join(file);
        if !present.contains(&p) {
            bail!(
                "{}: lists patch '{file}', which is missing",
                dir.join("manifest.json").display()
            );
        }
        listed.push(p);
    }
    listed.sort();
    let ignored = present
        .into_iter()
        .filter(|p| !listed.contains(p))
        .collect();
    Ok((listed, ignored))
}

/// One task's dequantized scores and top-1 class.
pub type TaskScores = (Vec<f32>, usize);

/// Top-1 index of a float vector (first on ties).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// One task's result as `graftnet run --json` prints it (and `graftnet
/// device infer --json`, so the two compare line for line): `task`,
/// `scores` (dequantized), `top1`, and `label` (`null` without labels).
pub fn scores_json(
    task: &str,
    scores: &[f32],
    top1: usize,
    labels: &[String],
) -> serde_json::Value {
    serde_json::json!({"task": task, "scores": scores, "top1": top1, "label": labels.get(top1)})
}
