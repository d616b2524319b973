//! Sets `cfg(graftnet_dsp)` when the target executes the Armv7E-M DSP
//! instructions (`smlad`, `sxtb16`, ...), which enables the `dsp` kernel
//! table (`src/kernels/armv7em/dsp.rs`).
//!
//! The source of truth is `cfg(target_feature = "dsp")`. A stable compiler
//! does not report arm target features at all (they are unstable), so when
//! cargo passes none for an arm target, the target name decides: every
//! `thumbv7em-*` core (Cortex-M4, M7) has the DSP extension.

use std::env;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(graftnet_dsp)");
    println!("cargo::rerun-if-changed=build.rs");
    if env::var("CARGO_CFG_TARGET_ARCH").as_deref() != Ok("arm") {
        return;
    }
    let features = env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let features: Vec<&str> = features.split(',').collect();
    let reported = features
        .iter()
        .any(|f| matches!(*f, "v6" | "v7" | "thumb2"));
    let dsp = if reported {
        features.contains(&"dsp")
    } else {
        env::var("TARGET").is_ok_and(|t| t.starts_with("thumbv7em-"))
    };
    if dsp {
        println!("cargo::rustc-cfg=graftnet_dsp");
    }
}
