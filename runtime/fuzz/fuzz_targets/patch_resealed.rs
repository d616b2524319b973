#![no_main]
//! See README.md and `graftnet_fuzz::patch_case`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| graftnet_fuzz::patch_case(data, true));
