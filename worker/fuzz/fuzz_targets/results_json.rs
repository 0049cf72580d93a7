//! Fuzzes `bodies::results_json` (see bodies.rs).

#![no_main]

#[allow(dead_code, reason = "each target uses one body of the shared file")]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::results_json(data));
