//! Running an export directory on the host through the real runtime.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use graftnet::{Backbone, Engine, Patch, Requant};

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
}

impl ExportDir {
    /// Reads `DIR/backbone.gnb` and every `DIR/*.gnp`.
    pub fn open(dir: &Path) -> Result<Self> {
        let bbp = dir.join("backbone.gnb");
        let backbone = std::fs::read(&bbp).with_context(|| {
            format!(
                "reading {} (is {} an export directory?)",
                bbp.display(),
                dir.display()
            )
        })?;
        let mut patches = BTreeMap::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "gnp") {
                let name = p.file_stem().unwrap().to_string_lossy().to_string();
                patches.insert(
                    name,
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
                );
            }
        }
        let manifest = std::fs::read_to_string(dir.join("manifest.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok());
        Ok(ExportDir {
            dir: dir.to_path_buf(),
            backbone,
            patches,
            manifest,
        })
    }

    /// Every task: `base` and one per patch.
    pub fn task_names(&self) -> Vec<String> {
        std::iter::once(BASE_TASK.to_string())
            .chain(self.patches.keys().cloned())
            .collect()
    }

    /// Parses the backbone.
    pub fn parse_backbone(&self) -> Result<Backbone<'_>> {
        Backbone::parse(&self.backbone)
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
        let p = Patch::parse(bytes).map_err(|e| {
            anyhow::anyhow!("{}: {e}", self.dir.join(format!("{task}.gnp")).display())
        })?;
        Ok(Some(p))
    }

    /// Runs `f` with an engine on which `task` is active.
    pub fn with_engine<R>(
        &self,
        task: &str,
        f: impl FnOnce(&mut Engine<'_, '_>) -> Result<R>,
    ) -> Result<R> {
        let bb = self.parse_backbone()?;
        let patch = self.patch(task)?;
        let mut arena = vec![0i8; bb.arena_len()];
        let mut params = vec![Requant::default(); bb.params_len()];
        let mut engine =
            Engine::new(&bb, &mut arena, &mut params).map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(p) = patch {
            engine
                .apply(p)
                .map_err(|e| anyhow::anyhow!("applying task '{task}': {e}"))?;
        }
        f(&mut engine)
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
