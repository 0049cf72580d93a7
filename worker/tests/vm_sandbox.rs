//! Packages that attack the sandbox itself, in real VMs (TCG): each ends with its
//! package-fault outcome, decided once (`pyti-vm-run` never retries; the master retries
//! farm faults only, and these are not). The fixtures are built by the test from
//! `guest/tests/fixtures/` and touch only loopback and `.invalid` names.
//!
//! The fixtures run as targets of one `pyti-vm-run`, two VMs at a time, to keep the
//! added test time down.

use std::path::Path;
use std::process::Command;

use pyti_guest::outcome::Outcome;
use pyti_testkit::fixtures::build_sdist;
use pyti_testkit::schema::assert_follows_results_schema;
use pyti_testkit::vm::{static_agent, test_root};

/// A worker configuration with two VM slots and short task timeouts (the `install`
/// recipe overridden beside it).
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("pyti_config");
    std::fs::write(
        &path,
        "[config]\ntotal_vms = 2\n\n[platform linux-debian]\nvms = 2\naccel = tcg\nrun_timeout_s = 900\n",
    )
    .unwrap();
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::write(
        recipes.join("install.toml"),
        "description = \"install and import, short timeouts\"\n\n\
         [[task]]\nkind = \"install\"\ntimeout_s = 300\n\n\
         [[task]]\nkind = \"import\"\ntimeout_s = 40\n",
    )
    .unwrap();
    path
}

fn outcome_of(results: &serde_json::Value) -> Outcome {
    serde_json::from_value(results["outcome"].clone()).unwrap()
}

#[test]
fn attacks_on_the_sandbox_end_as_package_faults_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let fixtures = ["poweroff", "forge", "forkbomb", "diskfill", "sleeper"];
    let sdists: Vec<String> = fixtures
        .iter()
        .map(|f| build_sdist(f, dir.path()).display().to_string())
        .collect();
    let out = Command::new(env!("CARGO_BIN_EXE_pyti-vm-run"))
        .env("PYTI_SLAVE_ROOT", test_root())
        .arg("--agent")
        .arg(static_agent())
        .arg("--config")
        .arg(&config)
        .args(&sdists)
        .args(["--recipe", "install", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    let all = all.as_array().expect("one results dict per target");
    assert_eq!(all.len(), fixtures.len(), "{stderr}");
    let results = |fixture: &str| {
        all.iter()
            .find(|r| r["job"]["project_name"] == format!("pyti-{fixture}"))
            .unwrap_or_else(|| panic!("no results for {fixture}: {stderr}"))
    };
    for results in all {
        assert_follows_results_schema(results);
        assert!(outcome_of(results).is_package_fault(), "{results:#}");
        // The agent's own results: this run's job, with a nonce the package never saw.
        assert_ne!(results["job"]["job_id"], "forged", "{results:#}");
        assert!(
            results["nonce"].as_str().is_some_and(|n| n.len() == 32),
            "{results:#}"
        );
    }
    let expect = |fixture: &str, outcome: Outcome, says: &str| {
        let results = results(fixture);
        assert_eq!(outcome_of(results), outcome, "{fixture}: {results:#}");
        let detail = results["outcome_detail"].as_str().unwrap();
        assert!(
            detail.contains(says),
            "{fixture}: {says:?} not in {detail:?}"
        );
    };
    expect("poweroff", Outcome::SandboxTampering, "/proc/sysrq-trigger");
    expect(
        "forge",
        Outcome::SandboxTampering,
        "/io/results/results.json",
    );
    expect("forkbomb", Outcome::ResourceExhaustion, "fork bomb");
    expect("diskfill", Outcome::ResourceExhaustion, "filled the disk");
    expect("sleeper", Outcome::TaskTimeout, "import");
    let sleeper = &results("sleeper")["tasks"][1];
    assert_eq!(sleeper["status"], "timed_out", "{sleeper:#}");
}
