//! `pyti-vm-run` as a user runs it: real PyPI, real libvirt VMs under TCG. Checks the
//! exit codes, the JSON against the results schema, and that nothing is left behind
//! (domain, overlay, run directory) after a failure, a deadline or a Ctrl-C.
//!
//! Needs root and libvirtd (scripts/setup-host.sh); the guest image is cached under
//! `$PYTI_TEST_ROOT`.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{domains_with_prefix, files_with_prefix, static_agent, test_root};

/// VM runs go one at a time: two cores do not boot several TCG guests quickly.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn vm_run_command(config: Option<&Path>, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pyti-vm-run"));
    command
        .env("PYTI_SLAVE_ROOT", test_root())
        .arg("--agent")
        .arg(static_agent());
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(args);
    command
}

fn vm_run(config: Option<&Path>, args: &[&str]) -> Output {
    vm_run_command(config, args)
        .output()
        .expect("pyti-vm-run runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Nothing of the run with process id `pid` is left: no domain, no overlay, no run dir.
fn assert_nothing_left(pid: u32) {
    let prefix = format!("pyti-vmrun{pid}-");
    assert_eq!(
        domains_with_prefix(&prefix),
        Vec::<String>::new(),
        "stray domains"
    );
    assert_eq!(
        files_with_prefix(&test_root().join("overlays"), &prefix),
        Vec::<String>::new(),
        "stray overlays"
    );
    let runs = files_with_prefix(&test_root().join("runs"), "");
    assert!(runs.is_empty(), "stray run directories: {runs:?}");
}

fn worker_config(dir: &Path, platform: &str) -> PathBuf {
    let path = dir.join("pyti_config");
    std::fs::write(
        &path,
        format!(
            "[config]\ntotal_vms = 1\n\n[platform linux-debian]\nvms = 1\naccel = tcg\n{platform}"
        ),
    )
    .unwrap();
    path
}

#[test]
fn rarfile_from_pypi_in_a_real_vm_with_json_that_follows_the_schema() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = vm_run(None, &["rarfile==4.2", "--recipe", "install", "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    for line in [
        "resolving and downloading rarfile==4.2",
        "booting VM",
        "task install started",
        "task import passed",
    ] {
        assert!(
            stderr.contains(line),
            "{line:?} missing from the progress: {stderr}"
        );
    }
    let results: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is the results dict");
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/results.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&results)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "results do not follow the schema: {errors:?}"
    );
    assert_eq!(results["job"]["project_name"], "rarfile");
    assert_eq!(results["job"]["project_version"], "4.2");
    assert_eq!(results["outcome"], "passed");
    let tasks: Vec<(&str, &str)> = results["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert_eq!(tasks, [("install", "passed"), ("import", "passed")]);
    let modules = &results["tasks"][1]["metrics"]["import"]["modules"];
    assert_eq!(modules[0]["module"], "rarfile");
    assert!(results["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["verified"] == true));
}

#[test]
fn bad_input_is_refused_before_anything_starts() {
    let out = vm_run(None, &["rar file"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not a valid PyPI project name"),
        "{}",
        text(&out.stderr)
    );
    let out = vm_run(None, &["rarfile==4.2", "--recipe", "everything"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("everything") && stderr.contains("behaviour"),
        "{stderr}"
    );
    let out = vm_run(None, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nothing to test"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_project_that_does_not_exist_is_the_package_fault() {
    let out = vm_run(
        None,
        &["pyti-no-such-project-4c1d2e", "--recipe", "install"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pyti-no-such-project-4c1d2e"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn an_image_that_cannot_boot_is_an_infrastructure_error_and_leaves_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // A copy of the real image whose kernel is garbage: the VM starts and never boots.
    let agent = static_agent();
    let image = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(pyti_worker::image::ensure_image(
            &test_root(),
            "linux-debian",
            &agent,
            false,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken-image");
    std::fs::create_dir(&broken).unwrap();
    for name in ["manifest.json", "initrd.img"] {
        std::fs::copy(image.dir.join(name), broken.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(image.base(), broken.join("base.qcow2")).unwrap();
    std::fs::write(broken.join("vmlinuz"), vec![0u8; 64 * 1024]).unwrap();
    let config = worker_config(
        dir.path(),
        &format!("image = {}\nrun_timeout_s = 20\n", broken.display()),
    );

    let child = vm_run_command(Some(&config), &["rarfile==4.2", "--recipe", "install"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("did not power off within 20 s") || stderr.contains("the VM did not start"),
        "no clear error: {stderr}"
    );
    assert_nothing_left(pid);
}

#[test]
fn a_deadline_destroys_the_vm_and_leaves_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let config = worker_config(dir.path(), "run_timeout_s = 10\n");
    let child = vm_run_command(Some(&config), &["rarfile==4.2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("did not power off within 10 s and was destroyed"),
        "{stderr}"
    );
    assert_nothing_left(pid);
}

#[test]
fn ctrl_c_mid_run_stops_the_vm_and_leaves_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = vm_run_command(None, &["rarfile==4.2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .expect("pyti-vm-run ended before the VM booted")
            .unwrap();
        seen.push(line.clone());
        if line.contains("task install started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the VM never started its tasks: {seen:?}"
        );
    }
    assert!(Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("interrupted: stopping the VMs and cleaning up")),
        "{rest:?}"
    );
    assert_nothing_left(pid);
}
