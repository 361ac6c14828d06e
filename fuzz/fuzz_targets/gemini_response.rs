//! cargo-fuzz target `gemini_response` (see fuzz/common.rs).
#![no_main]

#[path = "../common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::gemini_response(data));
