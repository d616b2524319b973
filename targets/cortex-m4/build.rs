//! Puts the board's memory.x where cortex-m-rt's link.x finds it.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    std::fs::copy("memory.x", out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-env=GRAFTNET_BOARD=Cortex-M4F, memory.x (qemu mps2-an386; 2 MB flash, 512 KB RAM)");
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=build.rs");
}
