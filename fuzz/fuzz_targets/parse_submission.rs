//! Fuzz target: see `src/checks.rs` for the property (`submission`).
#![no_main]

#[path = "../src/checks.rs"]
#[allow(dead_code)] // each target uses one of the properties
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::submission(data));
