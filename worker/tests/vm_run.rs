//! `pyti-vm-run` as a user runs it: real PyPI, real libvirt VMs under TCG. Checks the
//! exit codes, the JSON against the results schema, and that nothing is left behind
//! (domain, overlay, run directory) after a failure, a deadline or a Ctrl-C.
//!
//! Needs root and libvirtd (scripts/setup-host.sh); the guest image is cached under
//! `$PYTI_TEST_ROOT`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyti_testkit::fixtures::build_sdist;
use pyti_testkit::schema::assert_follows_results_schema;
use pyti_testkit::vm::{domains_with_prefix, files_with_prefix, static_agent, test_root};

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

/// [`vm_run`] with `config`, and the process id its domains and overlays are named by.
fn vm_run_with_pid(config: &Path, args: &[&str]) -> (u32, Output) {
    let child = vm_run_command(Some(config), args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    (pid, child.wait_with_output().unwrap())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that the run ended with exit code `code`, saying `says` on stderr.
fn assert_exit(out: &Output, code: i32, says: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(says), "{says:?} missing: {stderr}");
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
    assert_follows_results_schema(&results);
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
    assert_exit(&out, 2, "not a valid PyPI project name");
    let out = vm_run(None, &["rarfile==4.2", "--recipe", "everything"]);
    assert_exit(&out, 2, "everything");
    assert_exit(&out, 2, "behaviour");
    let out = vm_run(None, &[]);
    assert_exit(&out, 2, "nothing to test");
}

#[test]
fn a_project_that_does_not_exist_is_the_package_fault() {
    let out = vm_run(
        None,
        &["pyti-no-such-project-4c1d2e", "--recipe", "install"],
    );
    assert_exit(&out, 1, "pyti-no-such-project-4c1d2e");
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

    let (pid, out) = vm_run_with_pid(&config, &["rarfile==4.2", "--recipe", "install"]);
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
    let (pid, out) = vm_run_with_pid(&config, &["rarfile==4.2"]);
    assert_exit(&out, 3, "did not power off within 10 s and was destroyed");
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

fn task<'a>(results: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    results["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no {name} task"))
}

/// The text `field` of each item of the JSON array `items` (items without it left out).
fn texts<'a>(items: &'a serde_json::Value, field: &str) -> Vec<&'a str> {
    items
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|item| item[field].as_str())
        .collect()
}

fn statuses(results: &serde_json::Value) -> Vec<(String, String)> {
    results["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_owned(),
                t["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn expected(statuses: &[(&str, &str)]) -> Vec<(String, String)> {
    statuses
        .iter()
        .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
        .collect()
}

#[test]
fn a_clean_local_sdist_passes_every_task_in_a_vm() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let sdist = build_sdist("clean", dir.path());
    let out = vm_run(None, &[sdist.to_str().unwrap(), "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stderr}\n{}",
        text(&out.stdout)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results["outcome"], "passed");
    assert_eq!(
        statuses(&results),
        expected(&[
            ("install", "passed"),
            ("import", "passed"),
            ("behaviour", "passed"),
            ("tests", "passed"),
            ("quality", "passed"),
            ("metadata", "passed")
        ])
    );
    // The same findings as the agent's host-mode test of this fixture.
    let install = &task(&results, "install")["metrics"]["install"];
    assert_eq!(install["installed_from"], "dist/pyti-clean-1.0.tar.gz");
    assert_eq!(install["weird_place_count"], 0);
    assert_eq!(
        task(&results, "import")["metrics"]["import"]["modules"],
        serde_json::json!([{"module": "pyti_clean", "ok": true, "error": null}])
    );
    assert_eq!(
        task(&results, "behaviour")["metrics"]["behaviour"]["verdict"],
        "clean"
    );
    let tests = &task(&results, "tests")["metrics"]["tests"];
    assert_eq!(
        (tests["passed"].as_u64(), tests["failed"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(
        task(&results, "quality")["metrics"]["quality"]["score"],
        10.0
    );
    assert_eq!(
        results["platform"]["python_version"]
            .as_str()
            .map(|v| v.starts_with("3.11")),
        Some(true)
    );
}

#[test]
fn a_failing_test_suite_gives_exit_code_1() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let sdist = build_sdist("failing", dir.path());
    let output = dir.path().join("kept");
    let out = vm_run(
        None,
        &[
            sdist.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{stdout}",
        text(&out.stderr)
    );
    assert!(stdout.contains("outcome: tests_failed"), "{stdout}");
    assert!(
        stdout.contains("1 passed, 1 failed, 0 errors, 0 skipped"),
        "{stdout}"
    );
    let kept: serde_json::Value =
        serde_json::from_slice(&std::fs::read(output.join("results.json")).unwrap()).unwrap();
    assert_eq!(kept["outcome"], "tests_failed");
    assert!(output.join("logs/tests.log").is_file());
    assert!(output.join("console.log").is_file());
}

#[test]
fn the_hostile_fixture_is_malicious_in_a_vm_as_in_host_mode() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let sdist = build_sdist("hostile", dir.path());
    let out = vm_run(
        None,
        &[sdist.to_str().unwrap(), "--recipe", "behaviour", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results["outcome"], "harmful_behaviour");
    let report = &task(&results, "behaviour")["metrics"]["behaviour"];
    assert_eq!(report["verdict"], "malicious");
    let network: Vec<(String, u64)> = report["network"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["address"].as_str().unwrap().to_owned(),
                n["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        network.contains(&("127.0.0.1".to_owned(), 9)),
        "{network:?}"
    );
    let dns = texts(&report["dns"], "name");
    assert_eq!(dns, ["pyti-fixture.invalid"], "{}", report["dns"]);
    // The package runs as its own user, whose home holds a planted (decoy) key.
    let sensitive = texts(&report["sensitive_reads"], "path");
    assert_eq!(sensitive.len(), 1, "{sensitive:?}");
    assert!(
        sensitive[0].starts_with("/home/") && sensitive[0].ends_with("/.ssh/id_rsa"),
        "{sensitive:?}"
    );
    let thefts = texts(&report["exfiltration"], "decoy");
    assert_eq!(thefts, ["ssh key"], "{}", report["exfiltration"]);
    let processes: Vec<String> = report["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["argv"].to_string())
        .collect();
    assert!(
        processes
            .iter()
            .any(|p| p.contains("\"sh\"") && p.contains("\"-c\"")),
        "{processes:?}"
    );
    let persistence = texts(&report["persistence"], "path");
    assert_eq!(persistence, ["/etc/cron.d/pyti-fixture"]);
}

#[test]
fn several_targets_run_in_parallel_on_the_slots() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pyti_config");
    std::fs::write(
        &path,
        "[config]\ntotal_vms = 2\n\n[platform linux-debian]\nvms = 2\naccel = tcg\n",
    )
    .unwrap();
    let out = vm_run(
        Some(&path),
        &[
            "rarfile==4.2",
            "docopt==0.6.2",
            "--recipe",
            "install",
            "--json",
        ],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut projects: Vec<&str> = results
        .as_array()
        .expect("an array for several targets")
        .iter()
        .map(|r| r["job"]["project_name"].as_str().unwrap())
        .collect();
    projects.sort_unstable();
    assert_eq!(projects, ["docopt", "rarfile"]);
    // docopt 0.6.2 is a setup.py-only sdist: built into a wheel in the guest, it lists
    // its files and its module imports.
    let docopt = results
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["job"]["project_name"] == "docopt")
        .unwrap();
    let installed = &task(docopt, "install")["metrics"]["install"];
    let files: Vec<&str> = installed["installed_files"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        files.iter().any(|f| f.ends_with("docopt.py")),
        "{installed:#}"
    );
    assert_eq!(
        task(docopt, "import")["metrics"]["import"]["modules"][0]["module"],
        "docopt",
        "{docopt:#}"
    );
    assert_eq!(task(docopt, "import")["status"], "passed", "{docopt:#}");
    // Both VMs were up at once: each slot booted, and the second boot began before the
    // first job ended.
    let booting: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("booting VM"))
        .collect();
    assert_eq!(booting.len(), 2, "{stderr}");
    assert!(
        booting.iter().any(|l| l.ends_with("linux-debian-0"))
            && booting.iter().any(|l| l.ends_with("linux-debian-1")),
        "{booting:?}"
    );
    let first_end = stderr
        .lines()
        .position(|l| l.contains("collect done"))
        .unwrap();
    let second_boot = stderr
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("booting VM"))
        .nth(1)
        .unwrap()
        .0;
    assert!(
        second_boot < first_end,
        "the second VM started only after the first job ended:\n{stderr}"
    );
}

/// numpy 2.x wheels need a newer x86-64 level than QEMU's default CPU model; on it the
/// import died of SIGILL and every numpy user looked broken. The guest now gets the
/// most capable model the accelerator offers, and the results say which.
#[test]
fn numpy_2_installs_and_imports_on_the_guest_cpu() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = vm_run(None, &["numpy==2.4.6", "--recipe", "install", "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results["outcome"], "passed", "{results:#}");
    assert_eq!(results["tasks"][1]["status"], "passed", "{results:#}");
    let cpu = &results["platform"]["cpu"];
    assert!(cpu["x86_64_level"].as_u64().unwrap() >= 2, "{cpu:#}");
    assert!(
        cpu["model"].as_str().is_some_and(|m| !m.is_empty()),
        "{cpu:#}"
    );
}
