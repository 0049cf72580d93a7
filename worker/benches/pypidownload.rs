//! Time to resolve and download `requests==2.32.3`'s closure for CPython 3.11 manylinux
//! x86_64, cold (empty cache) and warm (same cache), next to `pip download` of the same
//! set measured in the same run (cold: `--no-cache-dir`; warm: a filled pip cache).
//!
//! Run: `cargo bench -p pyti-worker --bench pypidownload` (needs PyPI and python3 -m pip).
//! `PYTI_BENCH_ROUNDS` sets the rounds per measurement (default 3); medians are printed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pyti_worker::pypidownload::{resolve_and_download, Cache, Request, TargetEnv};

const REQUIREMENT: &str = "requests==2.32.3";

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn pip_download(dest: &Path, cache: Option<&Path>) -> Duration {
    let mut command = Command::new("python3");
    command
        .args(["-m", "pip", "download", "--quiet", "--only-binary=:all:"])
        .args([
            "--python-version",
            "3.11",
            "--platform",
            "manylinux_2_36_x86_64",
        ])
        .arg("--dest")
        .arg(dest)
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("PIP_FIND_LINKS");
    match cache {
        Some(dir) => command.arg("--cache-dir").arg(dir),
        None => command.arg("--no-cache-dir"),
    };
    command.arg(REQUIREMENT);
    let start = Instant::now();
    let status = command.status().expect("python3 -m pip runs");
    let elapsed = start.elapsed();
    assert!(status.success(), "pip download failed");
    elapsed
}

async fn ours(cache: &Cache, dest: &Path) -> (Duration, usize, bool) {
    let mut request = Request::new(REQUIREMENT);
    request.tools = vec![];
    request.include_sources = false;
    let start = Instant::now();
    let set = resolve_and_download(&request, &TargetEnv::default(), cache, Some(dest))
        .await
        .expect("requests resolves");
    (start.elapsed(), set.files().count(), set.offline)
}

fn main() {
    let rounds: usize = std::env::var("PYTI_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut ours_cold, mut ours_warm, mut pip_cold, mut pip_warm) =
        (vec![], vec![], vec![], vec![]);
    let mut files = 0;
    for _ in 0..rounds {
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(cache_dir.path()).unwrap();
        let (cold, count, offline) =
            runtime.block_on(ours(&cache, tempfile::tempdir().unwrap().path()));
        assert!(!offline);
        files = count;
        ours_cold.push(cold);
        let (warm, _, offline) =
            runtime.block_on(ours(&cache, tempfile::tempdir().unwrap().path()));
        assert!(offline, "the warm run must be served from the cache");
        ours_warm.push(warm);

        pip_cold.push(pip_download(tempfile::tempdir().unwrap().path(), None));
        let pip_cache = tempfile::tempdir().unwrap();
        pip_download(tempfile::tempdir().unwrap().path(), Some(pip_cache.path()));
        pip_warm.push(pip_download(
            tempfile::tempdir().unwrap().path(),
            Some(pip_cache.path()),
        ));
    }
    let (ours_cold, ours_warm, pip_cold, pip_warm) = (
        median(ours_cold),
        median(ours_warm),
        median(pip_cold),
        median(pip_warm),
    );
    println!("resolve + download {REQUIREMENT} ({files} files), median of {rounds} rounds");
    println!(
        "  pypidownload cold (empty cache): {:>9.1} ms",
        ours_cold.as_secs_f64() * 1e3
    );
    println!(
        "  pip download cold (--no-cache-dir): {:>6.1} ms",
        pip_cold.as_secs_f64() * 1e3
    );
    println!(
        "  ratio cold pypidownload/pip: {:.3}",
        ours_cold.as_secs_f64() / pip_cold.as_secs_f64()
    );
    println!(
        "  pypidownload warm (cache, no network): {:>5.1} ms",
        ours_warm.as_secs_f64() * 1e3
    );
    println!(
        "  pip download warm (filled pip cache): {:>6.1} ms",
        pip_warm.as_secs_f64() * 1e3
    );
    println!(
        "  ratio warm pypidownload/pip: {:.3}",
        ours_warm.as_secs_f64() / pip_warm.as_secs_f64()
    );
}
