//! cargo-fuzz target `gemini_stream` (see fuzz/common.rs).
#![no_main]

#[path = "../common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::gemini_stream(data));
