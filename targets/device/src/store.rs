//! The resident tasks of a Linux device: the patches it serves, in memory,
//! and their files in the export directory, which uploads change.
//!
//! Contracts (`targets/protocol/PROTOCOL.md`, "Upload, resume, commit"):
//! - A patch is checked before it is stored ([`validate`]): framing and
//!   CRC (`Patch::parse`), the signature when a key is set, the name inside
//!   it, the backbone fingerprint, and a trial `Engine::apply`. A patch that
//!   fails changes nothing, on disk or in memory.
//! - Files change atomically: a patch (and `manifest.json`, when the
//!   directory has one) is written to a temporary file in the same
//!   directory, `fsync`ed, renamed over its name, and the directory is
//!   `fsync`ed. A crash at any point leaves the previous task set or the
//!   new one on disk: the patch is renamed into place before the manifest
//!   lists it, and unlisted before it is removed, so a restart never serves
//!   a half-written patch (a patch file the manifest does not list yet is
//!   reported and not served; `export.rs`).
//! - The memory copy is changed last, only after the files are in place.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use graftnet::{Backbone, Engine, Patch, Requant, VerifyKey};
use graftnet_protocol::{ErrorCode, Failure, MAX_TASKS};

/// What the device keeps of a patch besides its bytes.
pub struct PatchMeta {
    /// the task name (the name inside the patch)
    pub name: String,
    /// classes of the task
    pub classes: u16,
    /// the patch's task version
    pub version: u32,
}

impl PatchMeta {
    /// The name, classes and version of a parsed patch.
    pub fn of(p: &Patch<'_>) -> Self {
        PatchMeta { name: p.name().to_string(), classes: p.classes(), version: p.task_version() }
    }
}

/// One resident patch.
pub struct StoredTask {
    /// the task name (the name inside the patch)
    pub name: String,
    /// its file in the export directory
    pub file: PathBuf,
    /// the whole file (signature trailer included)
    pub bytes: Vec<u8>,
    /// classes of the task
    pub classes: u16,
    /// the patch's task version
    pub version: u32,
}

impl StoredTask {
    /// A resident task: a patch's facts, its file and the file's bytes.
    pub fn new(meta: PatchMeta, file: PathBuf, bytes: Vec<u8>) -> Self {
        StoredTask { name: meta.name, file, bytes, classes: meta.classes, version: meta.version }
    }

    /// The patch view (the bytes were checked when they were stored; this
    /// re-runs the cheap framing checks and the CRC).
    pub fn patch(&self) -> Result<Patch<'_>, Failure> {
        Patch::parse(&self.bytes).map_err(|e| Failure::format(&e))
    }
}

/// The resident patches and the directory they live in.
pub struct PatchStore {
    dir: PathBuf,
    tasks: Vec<StoredTask>,
}

impl PatchStore {
    /// A store over `dir` holding `tasks` (already validated).
    pub fn new(dir: &Path, tasks: Vec<StoredTask>) -> Self {
        PatchStore { dir: dir.to_path_buf(), tasks }
    }

    /// The resident patches, in the order they were loaded or added.
    pub fn tasks(&self) -> &[StoredTask] {
        &self.tasks
    }

    /// The task called `name`.
    pub fn get(&self, name: &str) -> Option<&StoredTask> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// Drops tasks from memory (not from disk): those `keep` refuses.
    pub fn retain(&mut self, keep: impl FnMut(&StoredTask) -> bool) {
        self.tasks.retain(keep);
    }

    /// Stores validated patch `bytes` (`meta` describes them) as task
    /// `meta.name` (`NAME.gnp`), replacing a task of that name, atomically
    /// (module doc). Returns the stored task's index in [`Self::tasks`].
    pub fn commit(&mut self, meta: PatchMeta, bytes: Vec<u8>) -> Result<usize, Failure> {
        let name = meta.name.clone();
        let old = self.tasks.iter().position(|t| t.name == name);
        // `base` is not in the table; the table's capacity is MAX_TASKS with it.
        if old.is_none() && self.tasks.len() + 1 >= MAX_TASKS {
            return Err(Failure::with(
                ErrorCode::StorageFull,
                format_args!("this device keeps at most {} tasks besides base; delete one first", MAX_TASKS - 1),
            ));
        }
        let file = self.dir.join(format!("{name}.gnp"));
        let storage = |e: std::io::Error| Failure::with(ErrorCode::Storage, format_args!("{}: {e}", file.display()));
        write_atomic(&file, &bytes).map_err(storage)?;
        let old_file = old.map(|i| self.tasks[i].file.clone()).filter(|f| *f != file);
        self.update_manifest(|tasks| {
            tasks.retain(|t| t["name"] != name.as_str());
            tasks.push(serde_json::json!({"name": name, "patch": format!("{name}.gnp"), "uploaded": true}));
        })
        .map_err(|e| Failure::with(ErrorCode::Storage, format_args!("manifest.json: {e}")))?;
        if let Some(f) = old_file {
            // The task was served from another file name; it is unlisted now.
            let _ = std::fs::remove_file(f);
        }
        let t = StoredTask::new(meta, file, bytes);
        Ok(match old {
            Some(i) => {
                self.tasks[i] = t;
                i
            }
            None => {
                self.tasks.push(t);
                self.tasks.len() - 1
            }
        })
    }

    /// Removes task `name` from the manifest (if any), then its file, then
    /// from memory.
    pub fn delete(&mut self, name: &str) -> Result<(), Failure> {
        let Some(i) = self.tasks.iter().position(|t| t.name == name) else {
            return Err(Failure::with(ErrorCode::UnknownTask, format_args!("no task '{name}' on this device")));
        };
        let file = self.tasks[i].file.clone();
        let fname = file.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
        self.update_manifest(|tasks| tasks.retain(|t| t["patch"] != fname.as_str()))
            .map_err(|e| Failure::with(ErrorCode::Storage, format_args!("manifest.json: {e}")))?;
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Failure::with(ErrorCode::Storage, format_args!("{}: {e}", file.display()))),
        }
        sync_dir(&self.dir).map_err(|e| Failure::with(ErrorCode::Storage, format_args!("{}: {e}", self.dir.display())))?;
        self.tasks.remove(i);
        Ok(())
    }

    /// Rewrites `manifest.json` atomically with `edit` applied to its
    /// `tasks` list; nothing when the directory has no manifest (then every
    /// `*.gnp` is served).
    fn update_manifest(&self, edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> std::io::Result<()> {
        let p = self.dir.join("manifest.json");
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut m: serde_json::Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        let mut tasks = m.get("tasks").and_then(|t| t.as_array()).cloned().unwrap_or_default();
        edit(&mut tasks);
        m["tasks"] = serde_json::Value::Array(tasks);
        let out = serde_json::to_string_pretty(&m).map_err(std::io::Error::other)?;
        write_atomic(&p, out.as_bytes())
    }
}

/// Checks uploaded bytes as a patch for task `name` on backbone `bb` (module
/// doc), with a trial apply on a scratch engine over `arena`/`params`.
pub fn validate<'p>(
    bytes: &'p [u8],
    name: &str,
    bb: &Backbone<'_>,
    key: Option<&VerifyKey>,
    arena: &mut [i8],
    params: &mut [Requant],
) -> Result<Patch<'p>, Failure> {
    let p = match key {
        None => Patch::parse(bytes),
        Some(k) => Patch::parse_verified(bytes, k),
    }
    .map_err(|e| Failure::format(&e))?;
    if p.name() != name {
        return Err(Failure::with(
            ErrorCode::InvalidName,
            format_args!("the patch is task '{}', uploaded as '{name}'", p.name()),
        ));
    }
    if p.backbone_fingerprint() != bb.fingerprint() {
        let e = graftnet::FormatError::WrongBackbone { expected: bb.fingerprint(), found: p.backbone_fingerprint() };
        return Err(Failure::format(&e));
    }
    let mut e = Engine::new(bb, arena, params).map_err(|e| Failure::run(&e))?;
    e.apply(p).map_err(|e| Failure::format(&e))?;
    Ok(p)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same
/// directory, `fsync`, rename over `path`, `fsync` of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let fname = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{fname}.tmp-{}", std::process::id()));
    let res = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporary() {
        let d = std::env::temp_dir().join(format!("graftnet-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("x.gnp");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [std::ffi::OsString::from("x.gnp")]);
        // A directory that does not exist: an error, nothing written.
        assert!(write_atomic(&d.join("nope/x.gnp"), b"z").is_err());
        let _ = std::fs::remove_dir_all(d);
    }
}
