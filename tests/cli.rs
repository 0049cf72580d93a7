//! The `pyti` command line as a user meets it.

use std::io::Write;
use std::process::{Command, Stdio};

fn pyti(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pyti"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn validate_prints_the_normalised_seed_example() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/rarfile.json");
    let (code, stdout, _) = pyti(&["validate", example], None);
    assert_eq!(code, 0);
    let job: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(job["project_name"], "rarfile");
    assert_eq!(job["project_version"], "4.2");
    assert_eq!(job["platform_variants"], serde_json::json!([]));
}

#[test]
fn validate_lists_every_error_and_fails() {
    let job = r#"{"project_name": "rar file", "project_version": "four", "platform_identifier": "Linux"}"#;
    let (code, stdout, stderr) = pyti(&["validate", "-"], Some(job));
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(stderr.starts_with("<stdin>: 3 errors:"), "{stderr}");
    for field in ["project_name:", "project_version:", "platform_identifier:"] {
        assert!(stderr.contains(field), "{field} missing from {stderr}");
    }
}

#[test]
fn validate_explains_the_seeds_null() {
    let job = "{\n  \"project_name\": \"rarfile\",\n  \"platform_variants\": Null\n}";
    let (code, _, stderr) = pyti(&["validate", "-"], Some(job));
    assert_eq!(code, 1);
    assert!(stderr.contains("line 3, column"), "{stderr}");
    assert!(stderr.contains("Null is not JSON: write null"), "{stderr}");
}

#[test]
fn validate_names_a_missing_file() {
    let (code, _, stderr) = pyti(&["validate", "/nonexistent/job.json"], None);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot read job file /nonexistent/job.json"),
        "{stderr}"
    );
}

#[test]
fn submit_checks_the_job_before_calling_the_master() {
    let (code, _, stderr) = pyti(
        &[
            "--master",
            "http://127.0.0.1:9",
            "submit",
            "rarfile==not-a-version",
        ],
        None,
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("project_version"), "{stderr}");
    let (code, _, stderr) = pyti(
        &["--master", "http://127.0.0.1:9", "submit", "rarfile==4.2"],
        None,
    );
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot reach the master at http://127.0.0.1:9"),
        "{stderr}"
    );
}
