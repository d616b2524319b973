//! An export directory on the device: `backbone.gnb`, `manifest.json` and
//! the `*.gnp` patches the manifest lists.
//!
//! The backbone is memory-mapped (read in place, like the MCU reads it
//! from flash: a 3.5 MB MobileNetV2-1.0 backbone costs no copy and no heap,
//! only the pages inferences touch) and borrowed by the engine for the
//! process lifetime; replace `backbone.gnb` by renaming a new file over it,
//! never by writing into it, while a device runs. The patches are read
//! into memory (uploads replace them while the device runs; `store.rs`).
//! Patches that fail to parse, or that belong to another backbone, are
//! reported and left out; the device serves the rest.
//!
//! With a verification key (`--verify-key`), the backbone and every patch
//! must carry its signature (`runtime/FORMAT.md`, "Signatures"): an
//! unsigned, foreign or modified backbone stops the start, and such a
//! patch is reported and left out like any other patch that does not
//! parse. Accepted patches are verified here once; task switches then do
//! not check them again.
//!
//! The manifest decides which patches exist: a `.gnp` it does not list (left
//! from an earlier export into the same directory, which still matches the
//! backbone's fingerprint) is reported and not served, and a listed one that
//! is missing stops the start. Without a `manifest.json` (a directory
//! assembled by hand) every `*.gnp` is served.

use std::fmt;
use std::path::{Path, PathBuf};

use graftnet::{Backbone, Patch, VerifyKey};
use memmap2::Mmap;

/// The task name of the backbone's own (base) task.
pub use graftnet_protocol::BASE_TASK;

/// The blob bytes of an export directory.
pub struct ExportBytes {
    /// the directory
    pub dir: PathBuf,
    /// `backbone.gnb`, mapped read-only
    pub backbone: Mmap,
    /// `(file, bytes)` of every `*.gnp` the manifest lists, sorted by file name
    pub patches: Vec<(PathBuf, Vec<u8>)>,
    /// `*.gnp` files the manifest does not list: not read, not served
    pub ignored: Vec<PathBuf>,
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

/// The patch files of export directory `dir`: `(served, ignored)`, each
/// sorted. See the module doc.
pub fn listed_patches(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), LoadError> {
    let mut present = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| LoadError(format!("listing {}: {e}", dir.display())))?;
    for ent in rd {
        let p = ent.map_err(|e| LoadError(format!("listing {}: {e}", dir.display())))?.path();
        if p.extension().is_some_and(|x| x == "gnp") {
            present.push(p);
        }
    }
    present.sort();
    let mp = dir.join("manifest.json");
    let text = match std::fs::read_to_string(&mp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((present, vec![])),
        Err(e) => return Err(LoadError(format!("reading {}: {e}", mp.display()))),
    };
    let m: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| LoadError(format!("{}: {e}", mp.display())))?;
    let mut listed = Vec::new();
    let tasks = m.get("tasks").and_then(|t| t.as_array());
    for file in tasks.into_iter().flatten().filter_map(|t| t.get("patch")?.as_str()) {
        // A plain file name in the directory, nothing else.
        let plain = Path::new(file).file_name().is_some_and(|n| n == file);
        if !plain || !file.ends_with(".gnp") {
            return Err(LoadError(format!("{}: lists patch '{file}', which is not a .gnp file name in the directory", mp.display())));
        }
        let p = dir.join(file);
        if !present.contains(&p) {
            return Err(LoadError(format!("{}: lists patch '{file}', which is missing", mp.display())));
        }
        listed.push(p);
    }
    listed.sort();
    let ignored = present.into_iter().filter(|p| !listed.contains(p)).collect();
    Ok((listed, ignored))
}

impl ExportBytes {
    /// Reads `dir/backbone.gnb` and the patches `dir/manifest.json` lists
    /// (every `dir/*.gnp` without a manifest).
    pub fn read(dir: &Path) -> Result<Self, LoadError> {
        let bbp = dir.join("backbone.gnb");
        let backbone = map(&bbp)
            .map_err(|e| LoadError(format!("reading {}: {e} (is {} an export directory?)", bbp.display(), dir.display())))?;
        let (files, ignored) = listed_patches(dir)?;
        let mut patches = Vec::new();
        for p in files {
            let b = std::fs::read(&p).map_err(|e| LoadError(format!("reading {}: {e}", p.display())))?;
            patches.push((p, b));
        }
        Ok(ExportBytes { dir: dir.to_path_buf(), backbone, patches, ignored })
    }

    /// One warning per `*.gnp` left out because the manifest does not list it.
    pub fn warnings(&self) -> Vec<String> {
        self.ignored
            .iter()
            .map(|p| format!("{}: not listed in manifest.json (a stale or foreign patch); not served", p.display()))
            .collect()
    }

    /// Parses the backbone; with `key`, it must carry that key's signature.
    pub fn backbone(&self, key: Option<&VerifyKey>) -> Result<Backbone<'_>, LoadError> {
        match key {
            None => Backbone::parse(&self.backbone),
            Some(k) => Backbone::parse_verified(&self.backbone, k),
        }
        .map_err(|e| LoadError(format!("{}: {e}", self.dir.join("backbone.gnb").display())))
    }

    /// Parses every patch that belongs to `bb` (and, with `key`, carries
    /// that key's signature). Returns the usable ones by task name (with
    /// their files) and a warning for each file left out.
    pub fn patches<'a>(&'a self, bb: &Backbone<'_>, key: Option<&VerifyKey>) -> (Vec<(String, &'a Path, Patch<'a>)>, Vec<String>) {
        let mut ok: Vec<(String, &'a Path, Patch<'a>)> = Vec::new();
        let mut warnings = Vec::new();
        for (path, bytes) in &self.patches {
            let parsed = match key {
                None => Patch::parse(bytes),
                Some(k) => Patch::parse_verified(bytes, k),
            };
            let p = match parsed {
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
            } else if name == BASE_TASK || ok.iter().any(|(n, ..)| *n == name) {
                warnings.push(format!("{}: task name '{name}' is taken; skipped", path.display()));
            } else {
                if path.file_stem().is_some_and(|s| s != name.as_str()) {
                    warnings.push(format!("{}: serves task '{name}' (the name inside the patch)", path.display()));
                }
                ok.push((name, path, p));
            }
        }
        (ok, warnings)
    }
}

/// Maps `path` read-only.
#[allow(unsafe_code)]
fn map(path: &Path) -> std::io::Result<Mmap> {
    let f = std::fs::File::open(path)?;
    // SAFETY: the mapping is read-only and the file is not written while the
    // device runs (module doc: a new backbone is renamed over the old file,
    // which leaves this mapping on the old file's contents). A file
    // truncated under the mapping could fault the process (SIGBUS), not
    // produce a wrong result silently.
    unsafe { Mmap::map(&f) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("graftnet-device-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Issue 13, finding 4: a `.gnp` left from an earlier export is not
    /// served when the manifest does not list it; without a manifest every
    /// `.gnp` is; a listed file that is missing is an error.
    #[test]
    fn only_patches_the_manifest_lists_are_served() {
        let d = scratch("manifest");
        for f in ["backbone.gnb", "a.gnp", "stale.gnp"] {
            std::fs::write(d.join(f), f).unwrap();
        }
        let x = ExportBytes::read(&d).unwrap();
        assert_eq!(x.patches.len(), 2, "no manifest: every .gnp");
        std::fs::write(
            d.join("manifest.json"),
            r#"{"tasks": [{"name": "base", "patch": null}, {"name": "a", "patch": "a.gnp"}]}"#,
        )
        .unwrap();
        let x = ExportBytes::read(&d).unwrap();
        assert_eq!(x.patches, vec![(d.join("a.gnp"), b"a.gnp".to_vec())]);
        assert_eq!(x.ignored, vec![d.join("stale.gnp")]);
        assert!(x.warnings()[0].contains("not listed in manifest.json"));
        std::fs::remove_file(d.join("a.gnp")).unwrap();
        let e = ExportBytes::read(&d).err().unwrap();
        assert!(e.0.contains("'a.gnp', which is missing"), "{e}");
        std::fs::write(d.join("manifest.json"), r#"{"tasks": [{"name": "x", "patch": "../x.gnp"}]}"#).unwrap();
        let e = ExportBytes::read(&d).err().unwrap();
        assert!(e.0.contains("not a .gnp file name"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }
}
