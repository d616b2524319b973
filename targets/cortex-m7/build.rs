//! Puts the board's memory map where cortex-m-rt's link.x finds it, as
//! `OUT_DIR/memory.x`: `memory-mps2-an500.x` (qemu) or the file
//! `GRAFTNET_MEMORY_X` names (`memory-stm32h743.x` for an STM32H743; see
//! stm32h743.toml). The package has no `memory.x` of its own on purpose: the
//! linker looks in the package directory first.

use std::path::{Path, PathBuf};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let name =
        std::env::var("GRAFTNET_MEMORY_X").unwrap_or_else(|_| "memory-mps2-an500.x".to_string());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(&name);
    std::fs::copy(&src, out.join("memory.x")).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let board = if name.contains("stm32h743") {
        "STM32H743 (2 MB flash, 512 KB AXI SRAM)"
    } else {
        "qemu mps2-an500; 2 MB flash, 512 KB RAM"
    };
    // The service binary picks the STM32H743's USART3 and flash controller
    // instead of qemu's CMSDK UART and RAM-backed flash.
    println!("cargo::rustc-check-cfg=cfg(graftnet_stm32h743)");
    if name.contains("stm32h743") {
        println!("cargo:rustc-cfg=graftnet_stm32h743");
    }
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-env=GRAFTNET_BOARD=Cortex-M7F, {name} ({board})");
    println!("cargo:rerun-if-env-changed=GRAFTNET_MEMORY_X");
    println!("cargo:rerun-if-changed={}", src.display());
    println!("cargo:rerun-if-changed=build.rs");
}
