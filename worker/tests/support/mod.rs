//! Helpers for the tests that boot real VMs: the shared test root (where the guest
//! image is cached between runs) and the static guest agent.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest tests' script that packs a fixture directory into an sdist.
const FIXTURE_BUILDER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../guest/tests/fixtures/build_sdist.py"
);

/// libvirt connection of the VM tests.
pub const URI: &str = "qemu:///system";

/// Where VM tests keep images and caches: `$PYTI_TEST_ROOT` or `/var/tmp/pyti-test-root`.
pub fn test_root() -> PathBuf {
    std::env::var_os("PYTI_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pyti-test-root"))
}

/// Builds the static guest agent (a no-op when it is up to date) and returns its path.
pub fn static_agent() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
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
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let agent = target.join("x86_64-unknown-linux-gnu/release/pyti-guest");
    pyti_worker::image::agent::check_static_agent(&agent).expect("the agent is static");
    agent
}

/// libvirt domains whose name starts with `prefix`.
pub fn domains_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-c", URI, "list", "--all", "--name"])
        .output()
        .expect("virsh runs");
    assert!(
        out.status.success(),
        "virsh list: {}",
        String::from_utf8_lossy(&out.stderr)
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

/// Builds `pyti-<fixture>-1.0.tar.gz` from the guest's fixture sources
/// (`guest/tests/fixtures/<fixture>/`) into `dest`, and returns its path.
pub fn build_fixture_sdist(fixture: &str, dest: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest/tests/fixtures")
        .join(fixture);
    let name = format!("pyti-{fixture}-1.0");
    let archive = dest.join(format!("{name}.tar.gz"));
    let status = Command::new("python3")
        .arg(FIXTURE_BUILDER)
        .arg(&source)
        .arg(&name)
        .arg(&archive)
        .arg(format!("pyti-{fixture}"))
        .status()
        .expect("python3 runs");
    assert!(
        status.success(),
        "building the {fixture} fixture sdist failed"
    );
    archive
}
