//! Shared set-up of the agent tests: the tools wheels, a venv template, fixture sdists
//! built from the plain files under `tests/fixtures/`, and running the agent binary in
//! private namespaces so fixtures never touch the host.

#![allow(dead_code, reason = "each test binary uses a part of these helpers")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use pyti_guest::job::{describe_inputs, GuestJob, JOB_SCHEMA_VERSION};
use pyti_guest::recipe::Recipe;
use pyti_guest::recipe::TaskKind;
use pyti_guest::results::{parse_results, Results, ResultsLimits, TaskResult};
use pyti_testkit::fixtures::build_sdist;
use pyti_testkit::process::run_ok;
use pyti_testkit::schema::assert_follows_results_schema;

/// The interpreter of the guest image (Debian bookworm's), also present on the host.
pub const PYTHON: &str = "/usr/bin/python3";

/// Scratch space of this test binary under the target directory.
pub fn scratch() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pyti-guest");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// pytest, pycodestyle, pyflakes, setuptools and wheel as wheels, downloaded once with
/// the host's pip into a cache under the target directory (test set-up, not a fixture).
pub fn tools_dir() -> &'static Path {
    static TOOLS: OnceLock<PathBuf> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let dir = scratch().join("tools-cache");
        let complete = dir.join(".complete");
        if !complete.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            run_ok(
                Command::new("python3")
                    .args([
                        "-m",
                        "pip",
                        "download",
                        "--quiet",
                        "--only-binary=:all:",
                        "-d",
                    ])
                    .arg(&dir)
                    .args(["pytest", "pycodestyle", "pyflakes", "setuptools", "wheel"]),
                "downloading the tools",
            );
            std::fs::write(&complete, b"").unwrap();
        }
        dir
    })
}

/// A ready virtualenv, as the guest image has at /opt/pyti/venv.
pub fn venv_template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = scratch().join("venv-template");
        if !dir.join("bin/python").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            run_ok(
                Command::new(PYTHON).args(["-m", "venv"]).arg(&dir),
                "creating the venv template",
            );
        }
        dir
    })
}

/// One finished agent run.
pub struct Run {
    /// What the agent wrote, read back with the host's strict reader.
    pub results: Results,
    /// The IO directory (results/ inside).
    pub io: tempfile::TempDir,
    /// The HOME the agent and the package saw.
    pub home: tempfile::TempDir,
}

impl Run {
    /// The result of one task.
    pub fn task(&self, kind: TaskKind) -> &TaskResult {
        self.results
            .tasks
            .iter()
            .find(|t| t.name == kind)
            .unwrap_or_else(|| panic!("no {kind} task in {:#?}", self.results))
    }

    /// The HOME path as text.
    pub fn home_path(&self, name: &str) -> String {
        self.home.path().join(name).display().to_string()
    }
}

/// A directory under the scratch space, kept after the test when `PYTI_GUEST_KEEP` is set.
fn temp(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(scratch())
        .unwrap();
    dir.disable_cleanup(std::env::var_os("PYTI_GUEST_KEEP").is_some());
    dir
}

/// Runs the agent over a fixture with a recipe, in private mount, network and pid
/// namespaces: loopback up, `/etc/cron.d` a private tmpfs, `/etc/resolv.conf` pointing
/// at 127.0.0.1, HOME a temporary directory holding a fake `~/.ssh/id_rsa`.
pub fn run_fixture(fixture: &str, recipe: Recipe) -> Run {
    run_fixture_as(fixture, recipe, false)
}

/// Builds a wheel from a fixture's sdist with the template's pip, its build backend
/// from the tools cache, as a publisher would upload next to the sdist.
pub fn build_wheel(sdist: &Path, dest: &Path) {
    run_ok(
        Command::new(venv_template().join("bin/python"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", scratch())
            .args([
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-cache-dir",
                "--no-deps",
            ])
            .args(["--no-index", "--find-links"])
            .arg(tools_dir())
            .arg("-w")
            .arg(dest)
            .arg(sdist),
        "building the fixture wheel",
    );
}

/// [`run_fixture`], with a wheel next to the sdist in `dist/` when `wheel` is set.
pub fn run_fixture_as(fixture: &str, recipe: Recipe, wheel: bool) -> Run {
    let io = temp(&format!("io-{fixture}-"));
    let home = temp(&format!("home-{fixture}-"));
    let work = temp(&format!("work-{fixture}-"));
    std::fs::create_dir_all(home.path().join(".ssh")).unwrap();
    std::fs::write(
        home.path().join(".ssh/id_rsa"),
        "-----BEGIN FAKE KEY FOR PYTI TESTS-----\n",
    )
    .unwrap();
    for dir in ["dist", "wheels", "tools"] {
        std::fs::create_dir_all(io.path().join(dir)).unwrap();
    }
    let sdist = build_sdist(fixture, &io.path().join("dist"));
    if wheel {
        build_wheel(&sdist, &io.path().join("dist"));
    }
    for entry in std::fs::read_dir(tools_dir()).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".whl") {
            std::fs::copy(
                entry.path(),
                io.path().join("tools").join(entry.file_name()),
            )
            .unwrap();
        }
    }
    let mut job = host_job(fixture, recipe, io.path());
    job.image_hash = Some("host-mode".into());
    std::fs::write(io.path().join("job.json"), job.to_json_pretty()).unwrap();
    let resolv = work.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.1\n").unwrap();
    let script = "set -e; ip link set lo up; mount -t tmpfs pyti-cron /etc/cron.d; \
                  mount --bind \"$0\" /etc/resolv.conf; exec \"$@\"";
    let output = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--kill-child",
            "--",
            "sh",
            "-c",
            script,
        ])
        .arg(&resolv)
        .arg(env!("CARGO_BIN_EXE_pyti-guest"))
        .arg("run")
        .args(["--outside-vm", "yes"])
        .arg("--io")
        .arg(io.path())
        .arg("--work")
        .arg(work.path().join("agent"))
        .arg("--home")
        .arg(home.path())
        .arg("--snapshot-root")
        .arg(home.path())
        .arg("--snapshot-root")
        .arg("/etc/cron.d")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the agent failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(io.path().join("results/results.json")).unwrap();
    validate_against_schema(&bytes);
    let results = parse_results(&bytes, &ResultsLimits::default()).unwrap();
    Run { results, io, home }
}

/// Checks results bytes against `schemas/results.schema.json`.
fn validate_against_schema(bytes: &[u8]) {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap();
    assert_follows_results_schema(&value);
}

/// Runs the agent binary directly (no namespaces: only for jobs that run no package
/// code) and reads back what it wrote.
pub fn run_agent_plain(io: &Path, extra: &[&str]) -> Results {
    let work = temp("work-plain-");
    let output = Command::new(env!("CARGO_BIN_EXE_pyti-guest"))
        .arg("run")
        .args(["--outside-vm", "yes"])
        .arg("--io")
        .arg(io)
        .arg("--work")
        .arg(work.path())
        .args(extra)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the agent failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bytes = std::fs::read(io.join("results/results.json")).unwrap();
    validate_against_schema(&bytes);
    parse_results(&bytes, &ResultsLimits::default()).unwrap()
}

/// A temporary IO directory holding a fixture's sdist and a `job.json` for `recipe`.
pub fn io_with_job(fixture: &str, recipe: Recipe) -> (tempfile::TempDir, GuestJob) {
    let io = temp(&format!("io-{fixture}-"));
    std::fs::create_dir_all(io.path().join("dist")).unwrap();
    build_sdist(fixture, &io.path().join("dist"));
    let mut job = host_job(fixture, recipe, io.path());
    job.attempt = 2;
    job.platform_variants = vec!["plain".into()];
    std::fs::write(io.path().join("job.json"), job.to_json_pretty()).unwrap();
    (io, job)
}

/// The first attempt of a job for `fixture`'s sdist with `recipe` on the host (the
/// venv template and the host's Python), its inputs as they are in `io` now.
fn host_job(fixture: &str, recipe: Recipe, io: &Path) -> GuestJob {
    GuestJob {
        schema_version: JOB_SCHEMA_VERSION,
        job_id: format!("test-{fixture}"),
        attempt: 1,
        project_name: format!("pyti-{fixture}"),
        project_version: "1.0".into(),
        recipe_identifier: recipe.identifier.clone(),
        platform_identifier: "host".into(),
        platform_variants: Vec::new(),
        recipe,
        inputs: describe_inputs(io).unwrap(),
        image_hash: None,
        venv_template: Some(venv_template().display().to_string()),
        python: Some(PYTHON.into()),
        nonce: None,
    }
}
