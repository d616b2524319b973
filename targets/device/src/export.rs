//! An export directory on the device: `backbone.gnb` and every `*.gnp` beside it.
//!
//! The blobs are read into memory once at start-up (a ~0.5 MB backbone; an
//! mmap would save the copy but not the page-ins, which happen anyway on the
//! first inference) and borrowed by the engine for the process lifetime.
//! Patches that fail to parse, or that belong to another backbone, are
//! reported and left out; the device serves the rest.

use std::fmt;
use std::path::{Path, PathBuf};

use graftnet::{Backbone, Patch};

/// The task name of the backbone's own (base) task.
pub const BASE_TASK: &str = "base";

/// The blob bytes of an export directory.
pub struct ExportBytes {
    /// the directory
    pub dir: PathBuf,
    /// `backbone.gnb`
    pub backbone: Vec<u8>,
    /// `(file, bytes)` of every `*.gnp`, sorted by file name
    pub patches: Vec<(PathBuf, Vec<u8>)>,
}

/// A start-up failure, with the file it concerns.
#[derive(Debug)]
pub struct LoadError(pub String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

impl ExportBytes {
    /// Reads `dir/backbone.gnb` and every `dir/*.gnp`.
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let bbp = dir.join("backbone.gnb");
        let backbone = std::fs::read(&bbp)
            .map_err(|e| LoadError(format!("reading {}: {e} (is {} an export directory?)", bbp.display(), dir.display())))?;
        let mut patches = Vec::new();
        let rd = std::fs::read_dir(dir).map_err(|e| LoadError(format!("listing {}: {e}", dir.display())))?;
        for ent in rd {
            let p = ent.map_err(|e| LoadError(format!("listing {}: {e}", dir.display())))?.path();
            if p.extension().is_some_and(|x| x == "gnp") {
                let b = std::fs::read(&p).map_err(|e| LoadError(format!("reading {}: {e}", p.display())))?;
                patches.push((p, b));
            }
        }
        patches.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ExportBytes { dir: dir.to_path_buf(), backbone, patches })
    }

    /// Parses the backbone.
    pub fn backbone(&self) -> Result<Backbone<'_>, LoadError> {
        Backbone::parse(&self.backbone).map_err(|e| LoadError(format!("{}: {e}", self.dir.join("backbone.gnb").display())))
    }

    /// Parses every patch that belongs to `bb`. Returns the usable ones by task
    /// name and a warning for each file left out.
    pub fn patches<'a>(&'a self, bb: &Backbone<'_>) -> (Vec<(String, Patch<'a>)>, Vec<String>) {
        let mut ok: Vec<(String, Patch<'a>)> = Vec::new();
        let mut warnings = Vec::new();
        for (path, bytes) in &self.patches {
            let p = match Patch::parse(bytes) {
                Ok(p) => p,
                Err(e) => {
                    warnings.push(format!("{}: {e}; skipped", path.display()));
                    continue;
                }
            };
            let name = p.name().to_string();
            if p.backbone_fingerprint() != bb.fingerprint() {
                warnings.push(format!(
                    "{}: made for backbone {:016x}, this is {:016x}; skipped",
                    path.display(),
                    p.backbone_fingerprint(),
                    bb.fingerprint()
                ));
            } else if name == BASE_TASK || ok.iter().any(|(n, _)| *n == name) {
                warnings.push(format!("{}: task name '{name}' is taken; skipped", path.display()));
            } else {
                if path.file_stem().is_some_and(|s| s != name.as_str()) {
                    warnings.push(format!("{}: serves task '{name}' (the name inside the patch)", path.display()));
                }
                ok.push((name, p));
            }
        }
        (ok, warnings)
    }
}
