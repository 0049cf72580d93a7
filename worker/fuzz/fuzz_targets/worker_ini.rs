//! Fuzzes `bodies::worker_ini` (see bodies.rs).

#![no_main]

#[allow(dead_code, reason = "each target uses one body of the shared file")]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::worker_ini(data));
