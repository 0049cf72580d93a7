//! Fuzzes `bodies::sdist_tar_gz` (see bodies.rs).

#![no_main]

#[allow(dead_code, reason = "each target uses one body of the shared file")]
#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::sdist_tar_gz(data));
