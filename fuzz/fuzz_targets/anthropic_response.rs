//! cargo-fuzz target `anthropic_response` (see fuzz/common.rs).
#![no_main]

#[path = "../common.rs"]
mod common;

libfuzzer_sys::fuzz_target!(|data: &[u8]| common::anthropic_response(data));
