//! Helpers shared by the tools' end-to-end tests: the `graftnet` binary
//! run as its own process, the repo's test models, scratch directories.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("graftnet-tools-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `graftnet ARGS`; returns (exit code, stdout, stderr).
pub fn graftnet(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_graftnet"))
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run graftnet");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn ok(args: &[&str]) -> String {
    let (code, out, err) = graftnet(args);
    assert_eq!(code, 0, "graftnet {args:?} failed:\n{err}\n{out}");
    out
}

/// The command fails cleanly (exit code 1, no panic) with `what` in its
/// message; returns the message.
pub fn refused(args: &[&str], what: &str) -> String {
    let (code, out, err) = graftnet(args);
    assert_eq!(code, 1, "graftnet {args:?}: exit code {code}\n{err}\n{out}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(what),
        "graftnet {args:?}: expected '{what}' in:\n{err}"
    );
    err
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
