//! The fuzz targets' corpora replayed as ordinary tests (stable Rust, no libFuzzer):
//! every seed, every input a campaign kept, and every input that once crashed a parser
//! (`regressions/`) goes through the same body as in `worker/fuzz/fuzz_targets/`, so no
//! known input regresses without anyone running a campaign.

use std::path::{Path, PathBuf};

#[allow(dead_code, reason = "shared with the fuzz crate")]
#[path = "../fuzz/bodies.rs"]
mod bodies;

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        inputs.extend(entries.flatten().map(|entry| entry.path()));
    }
    inputs.sort();
    inputs
}

fn replay(target: &str) {
    let (_, body) = bodies::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz body named {target}"));
    let inputs = inputs(target);
    assert!(
        !inputs.is_empty(),
        "worker/fuzz/corpus/{target} holds no seed input"
    );
    for input in inputs {
        let data = std::fs::read(&input).unwrap();
        eprintln!("replaying {}", input.display());
        body(&data);
    }
}

macro_rules! replay_tests {
    ($($target:ident),* $(,)?) => {
        $(
            #[test]
            fn $target() {
                replay(stringify!($target));
            }
        )*

        #[test]
        fn every_fuzz_target_has_a_replay_test() {
            let tested = [$(stringify!($target)),*];
            for (name, _) in bodies::TARGETS {
                assert!(tested.contains(&name), "{name} is not replayed");
                let target = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fuzz/fuzz_targets")
                    .join(format!("{name}.rs"));
                assert!(target.is_file(), "{} is missing", target.display());
            }
        }
    };
}

replay_tests!(
    results_json,
    strace_lines,
    job_json,
    worker_ini,
    master_ini,
    sdist_tar_gz,
    sdist_zip,
    wheel,
    pep691_page,
    io_disk_reader,
);
