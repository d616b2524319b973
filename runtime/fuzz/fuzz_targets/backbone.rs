#![no_main]
//! See README.md and `graftnet_fuzz::backbone_case`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| graftnet_fuzz::backbone_case(data, false));
