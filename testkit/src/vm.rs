//! What the tests that boot real VMs share: the test root, where guest images are
//! cached between runs (keyed by content hash, so every worktree can share it), the
//! static guest agent baked into them, and checks that nothing was left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_ok;

/// libvirt connection of the VM tests.
pub const URI: &str = "qemu:///system";

/// Where VM tests keep images and caches: `$PYTI_TEST_ROOT` or `/var/tmp/pyti-test-root`.
pub fn test_root() -> PathBuf {
    std::env::var_os("PYTI_TEST_ROOT")
        .map_or_else(|| PathBuf::from("/var/tmp/pyti-test-root"), PathBuf::from)
}

/// Builds the static guest agent (a no-op when it is up to date) and returns its path,
/// under `$CARGO_TARGET_DIR` when that is set (else the workspace's `target/`).
pub fn static_agent() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the testkit sits in the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--release",
            "-p",
            "pyti-guest",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the static pyti-guest failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from);
    let agent = target.join("x86_64-unknown-linux-gnu/release/pyti-guest");
    pyti_worker::image::agent::check_static_agent(&agent).expect("the agent is static");
    agent
}

/// libvirt domains whose name starts with `prefix`.
pub fn domains_with_prefix(prefix: &str) -> Vec<String> {
    let out = run_ok(
        Command::new("virsh").args(["-c", URI, "list", "--all", "--name"]),
        "listing libvirt domains",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Files directly in `dir` whose name starts with `prefix` (none when `dir` is missing).
pub fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}
