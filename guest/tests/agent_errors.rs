//! The agent leaves a results file whatever goes wrong: no job, a damaged input, a
//! missing tool. None of these runs package code, so they run without namespaces.

mod support;

use pyti_guest::recipe::{RecipeBook, TaskKind};
use pyti_guest::results::Results;
use pyti_guest::results::{Outcome, TaskStatus};
use support::{io_with_job, run_agent_plain};

/// Asserts that the agent saw a disk error, its detail saying `says`.
fn assert_disk_error(results: &Results, says: &str) {
    assert_eq!(results.outcome, Outcome::DiskError);
    let detail = &results.outcome_detail;
    assert!(detail.contains(says), "{says:?} missing: {detail}");
}

#[test]
fn no_job_json_is_a_disk_error_with_a_results_file() {
    let io = tempfile::tempdir_in(support::scratch()).unwrap();
    let results = run_agent_plain(io.path(), &[]);
    assert_disk_error(&results, "job.json");
    assert_eq!(results.job.job_id, "unknown");
    assert!(results.tasks.is_empty());
}

#[test]
fn an_invalid_job_json_names_the_field() {
    let recipe = RecipeBook::embedded().get("install").unwrap().clone();
    let (io, job) = io_with_job("clean", recipe);
    let text = job
        .to_json_pretty()
        .replace("\"attempt\": 2", "\"attempt\": \"two\"");
    std::fs::write(io.path().join("job.json"), text).unwrap();
    let results = run_agent_plain(io.path(), &[]);
    assert_disk_error(&results, "attempt");
}

#[test]
fn a_damaged_input_runs_no_task() {
    let recipe = RecipeBook::embedded().get("install").unwrap().clone();
    let (io, job) = io_with_job("clean", recipe);
    let sdist = io.path().join(&job.inputs[0].path);
    let mut bytes = std::fs::read(&sdist).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&sdist, bytes).unwrap();
    let results = run_agent_plain(io.path(), &[]);
    assert_eq!(results.outcome, Outcome::InputMismatch);
    assert!(results.outcome.is_farm_fault());
    assert!(results.tasks.is_empty());
    assert_eq!(results.inputs.len(), 1);
    assert!(!results.inputs[0].verified);
    assert_eq!(results.job.attempt, 2);
    assert_eq!(results.job.platform_variants, vec!["plain"]);
}

#[test]
fn a_missing_tracer_is_an_agent_error_not_a_package_fault() {
    let recipe = RecipeBook::embedded().get("behaviour").unwrap().clone();
    let (io, _job) = io_with_job("clean", recipe);
    let results = run_agent_plain(io.path(), &["--strace", "/nonexistent/strace"]);
    assert_eq!(results.outcome, Outcome::AgentError);
    assert_eq!(results.tasks.len(), 1);
    assert_eq!(results.tasks[0].name, TaskKind::Behaviour);
    assert_eq!(results.tasks[0].status, TaskStatus::Error);
    assert!(results.tasks[0].message.contains("/nonexistent/strace"));
    assert_eq!(results.tasks[0].log.as_deref(), Some("logs/behaviour.log"));
}
