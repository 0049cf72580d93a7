//! Fixture distributions: the plain source trees under `guest/tests/fixtures/`, packed
//! into sdists by the tests that need them (the agent's host-mode tests and the VM
//! runs), so no archive is checked in.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::run_ok;

/// Where the fixture source trees are.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../guest/tests/fixtures");

/// Builds `pyti-<fixture>-1.0.tar.gz` (project `pyti-<fixture>`) from
/// `guest/tests/fixtures/<fixture>/` into `dest`, and returns its path.
pub fn build_sdist(fixture: &str, dest: &Path) -> PathBuf {
    let fixtures = Path::new(FIXTURES);
    let name = format!("pyti-{fixture}-1.0");
    let archive = dest.join(format!("{name}.tar.gz"));
    run_ok(
        Command::new("python3")
            .arg(fixtures.join("build_sdist.py"))
            .arg(fixtures.join(fixture))
            .arg(&name)
            .arg(&archive)
            .arg(format!("pyti-{fixture}")),
        &format!("building the {fixture} fixture sdist"),
    );
    archive
}
