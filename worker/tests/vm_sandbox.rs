//! Packages that attack the sandbox itself, in real VMs (TCG): each ends with its
//! package-fault outcome, decided once (`pyti-vm-run` never retries; the master retries
//! farm faults only, and these are not). The fixtures are built by the test from
//! `guest/tests/fixtures/` and touch only loopback and `.invalid` names.
//!
//! The fixtures run as targets of one `pyti-vm-run` per test, two VMs at a time, and a
//! fixture does several things where they end in the same outcome, to keep the added
//! test time down.

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
        "[config]\ntotal_vms = 2\n\n[platform linux-debian]\nvms = 2\naccel = tcg\nrun_timeout_s = 2400\n",
    )
    .unwrap();
    let recipes = dir.join("recipes");
    std::fs::create_dir_all(&recipes).unwrap();
    std::fs::write(
        recipes.join("install.toml"),
        "description = \"install and import, short timeouts\"\n\n\
         [[task]]\nkind = \"install\"\ntimeout_s = 900\n\n\
         [[task]]\nkind = \"import\"\ntimeout_s = 40\n",
    )
    .unwrap();
    std::fs::write(
        recipes.join("spy.toml"),
        "description = \"every phase that runs package code, traced\"\n\n\
         [[task]]\nkind = \"install\"\ntimeout_s = 900\n\n\
         [[task]]\nkind = \"import\"\ntimeout_s = 120\n\n\
         [[task]]\nkind = \"behaviour\"\ntimeout_s = 120\n\n\
         [[task]]\nkind = \"tests\"\ntimeout_s = 900\n",
    )
    .unwrap();
    path
}

/// Runs `pyti-vm-run` on the fixtures' sdists with `recipe`; the results, one per
/// fixture, and the exit code.
fn run_fixtures(fixtures: &[&str], recipe: &str) -> (Option<i32>, Vec<serde_json::Value>) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
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
        .args(["--recipe", recipe, "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    let all = all.as_array().expect("one results dict per target").clone();
    assert_eq!(all.len(), fixtures.len(), "{stderr}");
    (out.status.code(), all)
}

fn of<'a>(all: &'a [serde_json::Value], fixture: &str) -> &'a serde_json::Value {
    all.iter()
        .find(|r| r["job"]["project_name"] == format!("pyti-{fixture}"))
        .unwrap_or_else(|| panic!("no results for {fixture}"))
}

fn behaviour(results: &serde_json::Value) -> &serde_json::Value {
    let task = results["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "behaviour")
        .expect("a behaviour task");
    &task["metrics"]["behaviour"]
}

fn reasons(results: &serde_json::Value) -> Vec<String> {
    behaviour(results)["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["detail"].as_str().unwrap().to_owned())
        .collect()
}

/// Code that hides from sandboxes, steals a planted key, or misbehaves only when its
/// own tests call its console script: each is seen, in the phase it happened in.
#[test]
fn the_sandbox_passes_for_a_machine_and_every_phase_is_traced() {
    let (code, all) = run_fixtures(&["spy", "sneaky"], "spy");
    assert_eq!(code, Some(1));
    for results in &all {
        assert_follows_results_schema(results);
        assert!(outcome_of(results).is_package_fault(), "{results:#}");
    }
    // Our host name and user do not look like a sandbox's, so the spy did its deed:
    // it found the planted key and sent it inside a DNS name, which is exfiltration.
    let spy = of(&all, "spy");
    assert_eq!(outcome_of(spy), Outcome::HarmfulBehaviour, "{spy:#}");
    let thefts = behaviour(spy)["exfiltration"].as_array().unwrap();
    assert!(
        thefts.iter().any(|t| t["decoy"] == "aws credentials"
            && t["detail"].as_str().unwrap().contains(".pyti-spy.invalid")),
        "{thefts:#?}"
    );
    assert!(
        thefts.iter().any(|t| t["decoy"] == "aws credentials"
            && t["detail"].as_str().unwrap().contains("/.aws/credentials")),
        "the read of the decoy is named too: {thefts:#?}"
    );
    // Harm only in the console script its tests run: found, and named as the tests'.
    let sneaky = of(&all, "sneaky");
    assert_eq!(outcome_of(sneaky), Outcome::HarmfulBehaviour, "{sneaky:#}");
    let why = reasons(sneaky);
    assert!(why.iter().any(|r| r.ends_with("during tests")), "{why:#?}");
    assert!(
        why.iter().all(|r| r.ends_with("during tests")),
        "the --help run and the install were clean: {why:#?}"
    );
    let import = &sneaky["tasks"][1]["metrics"]["import"];
    assert_eq!(
        import["console_scripts"][0]["name"], "pyti-sneaky",
        "{import:#}"
    );
}

fn outcome_of(results: &serde_json::Value) -> Outcome {
    serde_json::from_value(results["outcome"].clone()).unwrap()
}

#[test]
fn attacks_on_the_sandbox_end_as_package_faults_once() {
    let (code, all) = run_fixtures(&["tamper", "forkbomb", "diskfill", "sleeper"], "install");
    assert_eq!(code, Some(1));
    let results = |fixture: &str| of(&all, fixture);
    for results in &all {
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
    // It forged the results and went for the power switch: both denied, both seen.
    expect(
        "tamper",
        Outcome::SandboxTampering,
        "/io/results/results.json",
    );
    expect("tamper", Outcome::SandboxTampering, "/proc/sysrq-trigger");
    expect("forkbomb", Outcome::ResourceExhaustion, "fork bomb");
    expect("diskfill", Outcome::ResourceExhaustion, "filled the disk");
    expect("sleeper", Outcome::TaskTimeout, "import");
    let sleeper = &results("sleeper")["tasks"][1];
    assert_eq!(sleeper["status"], "timed_out", "{sleeper:#}");
}
