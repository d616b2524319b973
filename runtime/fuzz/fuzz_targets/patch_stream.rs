#![no_main]
//! See README.md and `graftnet_fuzz::stream_case`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| graftnet_fuzz::stream_case(data));
