//! Compiles an export into the firmware.
//!
//! Inputs (environment):
//! - `GRAFTNET_EXPORT_DIR`: an export directory (`backbone.gnb`, `*.gnp`).
//!   The boards' `.cargo/config.toml` default it to `targets/target/export/mnv2`,
//!   which `targets/qemu-test.sh` writes.
//! - `GRAFTNET_SELFTEST` (default `$GRAFTNET_EXPORT_DIR/selftest.json`): the
//!   host's results on sample inputs, written by
//!   `graftnet-host-ref selftest` (targets/host-ref). When the variable is
//!   unset and the export has no `selftest.json` (an export served with
//!   `targets/mcu-serve.sh`), the firmware has no samples: the service runs,
//!   the self-test reports that it has nothing to compare and fails.
//! - `GRAFTNET_PATCHES` (default `export`): `export` puts every `*.gnp` of the
//!   export into the patch partition image; `none` an empty partition (a
//!   service that starts with the backbone alone and gets its tasks by
//!   upload).
//! - `GRAFTNET_VERIFY_KEY` (with feature `verify` only, and then required):
//!   the public key the firmware checks signatures with, as a file
//!   (`KEY.pub` from `graftnet keygen`) or its 64 hex digits. Compiled in
//!   as `VERIFY_KEY`; the backbone and every patch of the export must
//!   carry its signature (`graftnet export --sign`), or the build fails.
//!
//! Outputs (in `OUT_DIR`): `backbone.gnb` (placed in flash, used in place),
//! `patches.bin` (the patch partition image, see `src/partition.rs`; also
//! flashable on its own), the sample inputs and expected int8 scores, and
//! `generated.rs` with the sizes the firmware allocates (arena, parameter
//! table), all taken from the blobs. Every blob is validated here with the
//! runtime's own parser, so a bad export fails the build, not the board.

use std::path::{Path, PathBuf};

use graftnet::{Backbone, Patch, VerifyKey};
use serde_json::Value;

#[path = "src/partition.rs"]
#[allow(dead_code)]
mod partition;

fn fail(msg: impl AsRef<str>) -> ! {
    eprintln!("error: {}", msg.as_ref());
    panic!("{}", msg.as_ref());
}

fn read(p: &Path) -> Vec<u8> {
    println!("cargo:rerun-if-changed={}", p.display());
    std::fs::read(p).unwrap_or_else(|e| fail(format!("reading {}: {e}", p.display())))
}

/// `tasks_expected.rs`: what `tasks_test` must find on the target,
/// computed here, on the build machine, by the same code (`#[path]`).
fn tasks_expected() {
    println!("cargo:rerun-if-changed=src/tasks_test.rs");
    println!("cargo:rerun-if-changed=../../runtime/fuzz/seeds");
    let bb = graftnet::Backbone::parse(tasks_test::BACKBONE)
        .unwrap_or_else(|e| fail(format!("tasks_test backbone: {e}")));
    let patches: Vec<graftnet::Patch<'_>> = tasks_test::PATCHES
        .iter()
        .map(|b| {
            graftnet::Patch::parse(b).unwrap_or_else(|e| fail(format!("tasks_test patch: {e}")))
        })
        .collect();
    let sizes = bb.engine_sizes(&patches);
    let mut arena = vec![0i8; sizes.arena];
    let mut params = vec![graftnet::ChannelRequant::default(); sizes.params];
    let mut branch = vec![0i8; sizes.arena];
    let mut input = vec![0i8; bb.input().len()];
    let o = tasks_test::run(&mut arena, &mut params, &mut branch, &mut input);
    if o.errors != 0 || o.identical != o.results || o.results == 0 {
        fail(format!("tasks_test on the build machine: {o:?}"));
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    std::fs::write(
        out.join("tasks_expected.rs"),
        format!(
            "/// FNV-1a of every score the build machine computed.\npub const EXPECTED_HASH: u64 = {:#x};\n\
             /// Results the build machine computed.\npub const EXPECTED_RESULTS: u32 = {};\n\
             /// Arena bytes for the seeds' tasks.\npub const ARENA: usize = {};\n\
             /// Parameter entries for the seeds' tasks.\npub const PARAMS: usize = {};\n\
             /// Input elements.\npub const INPUT: usize = {};\n",
            o.hash,
            o.results,
            sizes.arena,
            sizes.params,
            bb.input().len()
        ),
    )
    .unwrap();
}

#[path = "src/tasks_test.rs"]
mod tasks_test;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // On the host (`cargo test` of the slot store) nothing is compiled in:
    // lib.rs builds the export's items for bare-metal targets only.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("none") {
        return;
    }
    tasks_expected();
    println!("cargo:rerun-if-changed=src/partition.rs");
    println!("cargo:rerun-if-env-changed=GRAFTNET_EXPORT_DIR");
    println!("cargo:rerun-if-env-changed=GRAFTNET_SELFTEST");
    println!("cargo:rerun-if-env-changed=GRAFTNET_VERIFY_KEY");
    println!("cargo:rerun-if-env-changed=GRAFTNET_PATCHES");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let dir = match std::env::var_os("GRAFTNET_EXPORT_DIR") {
        Some(d) => PathBuf::from(d),
        None => fail(
            "GRAFTNET_EXPORT_DIR is not set: point it at an export directory (graftnet export ... --out DIR); \
             targets/qemu-test.sh makes one in targets/target/export/mnv2",
        ),
    };
    println!("cargo:rerun-if-changed={}", dir.display());

    let key = verify_key();

    // Backbone: validated, copied next to the generated code.
    let bb_bytes = read(&dir.join("backbone.gnb"));
    let bb = match &key {
        None => Backbone::parse(&bb_bytes),
        Some(k) => Backbone::parse_verified(&bb_bytes, k),
    }
    .unwrap_or_else(|e| fail(format!("{}: {e}", dir.join("backbone.gnb").display())));
    std::fs::write(out.join("backbone.gnb"), &bb_bytes).unwrap();

    // Patches: every *.gnp of the backbone, sorted by task name (none with
    // GRAFTNET_PATCHES=none).
    let with_patches = match std::env::var("GRAFTNET_PATCHES").as_deref() {
        Err(_) | Ok("export") => true,
        Ok("none") => false,
        Ok(v) => fail(format!("GRAFTNET_PATCHES={v}: expected `export` or `none`")),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| fail(format!("listing {}: {e}", dir.display())))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| with_patches && p.extension().is_some_and(|x| x == "gnp"))
        .collect();
    files.sort();
    let blobs: Vec<(PathBuf, Vec<u8>)> = files.into_iter().map(|p| (p.clone(), read(&p))).collect();
    let mut patches: Vec<(String, &[u8])> = Vec::new();
    for (p, b) in &blobs {
        let patch = match &key {
            None => Patch::parse(b),
            Some(k) => Patch::parse_verified(b, k),
        }
        .unwrap_or_else(|e| fail(format!("{}: {e}", p.display())));
        if patch.backbone_fingerprint() != bb.fingerprint() {
            fail(format!("{}: made for another backbone", p.display()));
        }
        patches.push((patch.name().to_string(), b.as_slice()));
    }
    patches.sort_by(|a, b| a.0.cmp(&b.0));
    let refs: Vec<(&str, &[u8])> = patches.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let len = partition::image_len(refs.iter().map(|p| p.1.len()));
    let mut image = vec![0u8; len];
    partition::emit(&refs, &mut image).unwrap_or_else(|e| fail(format!("patch partition: {e}")));
    // Round trip through the firmware's reader.
    let t = partition::PatchTable::parse(&image)
        .unwrap_or_else(|e| fail(format!("patch partition does not parse back: {e}")));
    assert!(
        t.iter().eq(refs.iter().copied()),
        "patch partition round trip"
    );
    std::fs::write(out.join("patches.bin"), &image).unwrap();

    // The host's results on sample inputs.
    let st_var = std::env::var_os("GRAFTNET_SELFTEST").map(PathBuf::from);
    let st_path = st_var.clone().unwrap_or_else(|| dir.join("selftest.json"));
    println!("cargo:rerun-if-changed={}", st_path.display());
    let fp = format!("{:016x}", bb.fingerprint());
    let st: Value = if st_var.is_none() && !st_path.exists() {
        println!(
            "cargo:warning={} does not exist: the firmware has no self-test samples",
            st_path.display()
        );
        serde_json::json!({ "fingerprint": fp, "samples": [] })
    } else {
        serde_json::from_slice(&read(&st_path))
            .unwrap_or_else(|e| fail(format!("{}: {e}", st_path.display())))
    };
    if st["fingerprint"].as_str() != Some(fp.as_str()) {
        fail(format!(
            "{}: results for backbone {}, the export is {fp}: rerun graftnet-host-ref selftest",
            st_path.display(),
            st["fingerprint"]
        ));
    }
    let n_in = bb.input().len();
    let max_classes = bb.max_classes() as usize;
    let samples = st["samples"]
        .as_array()
        .unwrap_or_else(|| fail("selftest: no samples"));
    let (mut f32s, mut i8s, mut scores) = (Vec::new(), Vec::new(), Vec::new());
    let mut rows = String::new();
    let known: Vec<&str> = std::iter::once("base")
        .chain(patches.iter().map(|p| p.0.as_str()))
        .collect();
    let mut left_out = 0;
    for s in samples {
        let task = s["task"]
            .as_str()
            .unwrap_or_else(|| fail("selftest: sample without task"));
        // GRAFTNET_PATCHES=none compiles no patches in: their samples
        // cannot run, only the base task's.
        if !with_patches && task != "base" {
            left_out += 1;
            continue;
        }
        if !known.contains(&task) {
            fail(format!("selftest: task '{task}' is not in the export"));
        }
        let nums = |k: &str| -> Vec<i64> {
            s[k].as_array()
                .unwrap_or_else(|| fail(format!("selftest: no {k}")))
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect()
        };
        let x = nums("input_f32_bits");
        let q = nums("input_i8");
        let y = nums("scores_i8");
        if x.len() != n_in || q.len() != n_in || y.is_empty() || y.len() > max_classes {
            fail("selftest: sample sizes do not match the backbone");
        }
        for v in x {
            f32s.extend_from_slice(&(v as u32).to_le_bytes());
        }
        i8s.extend(q.iter().map(|&v| v as i8 as u8));
        let mut padded = vec![0u8; max_classes];
        for (d, &v) in padded.iter_mut().zip(&y) {
            *d = v as i8 as u8;
        }
        scores.extend(padded);
        rows.push_str(&format!(
            "    SampleInfo {{ task: {task:?}, index: {}, classes: {}, top1: {} }},\n",
            s["index"].as_u64().unwrap_or(0),
            y.len(),
            s["top1"].as_u64().unwrap_or(0)
        ));
    }
    if left_out > 0 {
        println!("cargo:warning=GRAFTNET_PATCHES=none: {left_out} self-test samples of patch tasks left out");
    }
    std::fs::write(out.join("samples_f32.bin"), &f32s).unwrap();
    std::fs::write(out.join("samples_i8.bin"), &i8s).unwrap();
    std::fs::write(out.join("scores_i8.bin"), &scores).unwrap();

    let names: Vec<String> = patches.iter().map(|p| format!("{:?}", p.0)).collect();
    let smallest = patches.iter().map(|p| p.1.len()).min().unwrap_or(0);
    let key_items = match &key {
        None => String::new(),
        Some(k) => format!(
            "/// The public key every blob must be signed with (GRAFTNET_VERIFY_KEY).\npub const VERIFY_KEY: [u8; 32] = {:?};\n\
             /// Its key id.\npub const VERIFY_KEY_ID: &str = \"{}\";\n\
             /// Bytes of the smallest patch blob, trailer included (the self-test modifies a copy).\npub const SMALLEST_PATCH_LEN: usize = {smallest};\n",
            k.to_bytes(),
            k.id()
        ),
    };
    let gen = format!(
        "// Generated by targets/mcu/build.rs from {dir:?}.\n\
         /// Backbone blob bytes.\npub const BACKBONE_LEN: usize = {};\n\
         /// Activation arena bytes (the export's plan).\npub const ARENA_LEN: usize = {};\n\
         /// Parameter-table entries.\npub const PARAMS_LEN: usize = {};\n\
         /// Model input values (C*H*W).\npub const INPUT_LEN: usize = {n_in};\n\
         /// Largest class count of any task.\npub const MAX_CLASSES: usize = {max_classes};\n\
         /// Backbone fingerprint.\npub const FINGERPRINT: u64 = 0x{fp};\n\
         /// Bytes of the compiled-in patch partition image.\npub const PARTITION_IMAGE_LEN: usize = {len};\n\
         /// Tasks of the compiled-in partition (besides \"base\").\npub const PATCH_TASKS: [&str; {}] = [{}];\n\
         /// The host's results, one per sample.\npub const SAMPLES: [SampleInfo; {}] = [\n{rows}];\n{key_items}",
        bb_bytes.len(),
        bb.arena_len(),
        bb.params_len(),
        names.len(),
        names.join(", "),
        samples.len() - left_out,
    );
    std::fs::write(out.join("generated.rs"), gen).unwrap();
}

/// The key from `GRAFTNET_VERIFY_KEY` (a `KEY.pub` file or 64 hex digits)
/// when the firmware is built with feature `verify`; `None` without it.
/// A key without the feature, or the feature without a key, fails the
/// build: neither should silently give a firmware that does not check.
fn verify_key() -> Option<VerifyKey> {
    let feature = std::env::var_os("CARGO_FEATURE_VERIFY").is_some();
    let var = std::env::var("GRAFTNET_VERIFY_KEY")
        .ok()
        .filter(|v| !v.is_empty());
    let v = match (feature, var) {
        (false, None) => return None,
        (false, Some(_)) => fail(
            "GRAFTNET_VERIFY_KEY is set, but the firmware is built without feature `verify` (it would not check signatures): \
             build with --features verify, or unset GRAFTNET_VERIFY_KEY",
        ),
        (true, None) => fail(
            "feature `verify` needs GRAFTNET_VERIFY_KEY: the public key (KEY.pub from `graftnet keygen`, or its 64 hex digits) \
             the firmware checks signatures with",
        ),
        (true, Some(v)) => v,
    };
    let text = if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        v.clone()
    } else {
        let p = Path::new(&v);
        println!("cargo:rerun-if-changed={}", p.display());
        std::fs::read_to_string(p).unwrap_or_else(|e| fail(format!("GRAFTNET_VERIFY_KEY={v}: {e}")))
    };
    if text.contains("secret key") {
        fail(format!(
            "GRAFTNET_VERIFY_KEY={v} is a secret key; give the public key (KEY.pub)"
        ));
    }
    let bytes = graftnet::format::signature::key_from_text(&text)
        .unwrap_or_else(|e| fail(format!("GRAFTNET_VERIFY_KEY={v}: {e}")));
    Some(
        VerifyKey::from_bytes(&bytes)
            .unwrap_or_else(|e| fail(format!("GRAFTNET_VERIFY_KEY={v}: {e}"))),
    )
}
