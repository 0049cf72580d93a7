//! The download cache past its size budget: pruning removes the least recently used
//! files first, counts a use as recent, and never removes a file a running job pinned;
//! `pyti-worker cache stats|prune` show and do the same from a shell.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use pyti_worker::pypidownload::Cache;
use sha2::{Digest, Sha256};

const FILE_BYTES: usize = 100 << 10;

/// Ten distinct blobs, the first the least recently used.
fn fill(cache: &Cache) -> Vec<String> {
    (0..10u8)
        .map(|index| {
            let bytes = vec![index; FILE_BYTES];
            let hash = hex::encode(Sha256::digest(&bytes));
            let mut temp = cache.temp_file().unwrap();
            temp.write_all(&bytes).unwrap();
            let path = cache.commit_blob(temp, &hash).unwrap();
            let used = SystemTime::now() - Duration::from_secs(3600 * (10 - u64::from(index)));
            std::fs::File::options()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(used)
                .unwrap();
            hash
        })
        .collect()
}

fn cli(root: &Path, args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_pyti-worker"))
        .args(args)
        .env("PYTI_SLAVE_ROOT", root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "pyti-worker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn pruning_past_the_budget_keeps_a_running_jobs_files_and_the_recently_used() {
    let root = tempfile::tempdir().unwrap();
    let cache = Cache::open(root.path().join("cache/pypi")).unwrap();
    let hashes = fill(&cache);
    // A running job uses the two oldest files.
    let pin = cache
        .pin("job-1/1", hashes[..2].iter().map(String::as_str))
        .unwrap();
    // Another run just used the third: it is now the most recent.
    assert!(cache.blob(&hashes[2]).is_some());

    let stats = cli(root.path(), &["cache", "stats", "--json"]);
    assert_eq!(stats["blobs"], 10);
    assert_eq!(stats["blob_bytes"], 10 * FILE_BYTES);
    assert_eq!(stats["pinned_blobs"], 2);
    assert_eq!(stats["pins"], 1);

    let budget = (4 * FILE_BYTES).to_string();
    let pruned = cli(
        root.path(),
        &["cache", "prune", "--max-bytes", &budget, "--json"],
    );
    let removed: Vec<String> = serde_json::from_value(pruned["removed"].clone()).unwrap();
    assert_eq!(removed, hashes[3..9].to_vec(), "least recently used first");
    assert_eq!(pruned["kept_bytes"], 4 * FILE_BYTES);
    for kept in [0, 1, 2, 9] {
        assert!(
            cache.blob(&hashes[kept]).is_some(),
            "file {kept} was removed"
        );
    }

    // Past what pins allow: the pinned files stay, and the report says so.
    let report = cache.prune(0).unwrap();
    assert_eq!(report.removed.len(), 2);
    assert_eq!(report.pinned_over_budget, 2 * FILE_BYTES as u64);
    assert!(cache.blob(&hashes[0]).is_some() && cache.blob(&hashes[1]).is_some());

    // Once the job ended, its files go like any other.
    drop(pin);
    assert_eq!(cache.prune(0).unwrap().removed.len(), 2);
    assert_eq!(cache.stats().blobs, 0);
}
