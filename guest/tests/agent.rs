//! Every fixture distribution through the agent binary in host mode (private
//! namespaces), with the exact findings each one must produce.

mod support;

use std::collections::BTreeMap;

use pyti_guest::behaviour::classify::{PersistenceKind, ProgramKind, SensitiveKind};
use pyti_guest::behaviour::{BehaviourReport, DnsLookup, Phase, Rule, Verdict};
use pyti_guest::recipe::{Recipe, RecipeBook, TaskKind, TaskSpec};
use pyti_guest::results::{
    FileChange, ImportMetrics, InstallMetrics, ModuleImport, Outcome, QualityMetrics, TaskMetrics,
    TaskStatus, TestsMetrics,
};
use support::{run_fixture, run_fixture_as, Run};

fn full_recipe() -> Recipe {
    RecipeBook::embedded().get("recipe").unwrap().clone()
}

fn statuses(run: &Run) -> Vec<(TaskKind, TaskStatus)> {
    run.results
        .tasks
        .iter()
        .map(|t| (t.name, t.status))
        .collect()
}

fn install(run: &Run) -> &InstallMetrics {
    match &run.task(TaskKind::Install).metrics {
        Some(TaskMetrics::Install(metrics)) => metrics,
        other => panic!("install metrics: {other:?}"),
    }
}

fn behaviour(run: &Run) -> &BehaviourReport {
    match &run.task(TaskKind::Behaviour).metrics {
        Some(TaskMetrics::Behaviour(report)) => report,
        other => panic!("behaviour metrics: {other:?}"),
    }
}

fn tests(run: &Run) -> &TestsMetrics {
    match &run.task(TaskKind::Tests).metrics {
        Some(TaskMetrics::Tests(metrics)) => metrics,
        other => panic!("tests metrics: {other:?}"),
    }
}

fn quality(run: &Run) -> &QualityMetrics {
    match &run.task(TaskKind::Quality).metrics {
        Some(TaskMetrics::Quality(metrics)) => metrics,
        other => panic!("quality metrics: {other:?}"),
    }
}

fn counts(run: &Run) -> (u64, u64, u64, u64) {
    let t = tests(run);
    (t.passed, t.failed, t.errors, t.skipped)
}

fn codes(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

/// Every task of the full recipe in order, with the given statuses.
fn expect_statuses(run: &Run, expected: [TaskStatus; 6]) {
    let kinds = TaskKind::ALL;
    let expected: Vec<(TaskKind, TaskStatus)> = kinds.into_iter().zip(expected).collect();
    assert_eq!(statuses(run), expected, "{:#?}", run.results.tasks);
}

use TaskStatus::{Failed, Passed, Skipped, TimedOut};

fn assert_clean_behaviour(run: &Run) {
    let report = behaviour(run);
    assert_eq!(report.verdict, Verdict::Clean, "{:#?}", report.reasons);
    assert!(report.reasons.is_empty());
    assert!(report.network.is_empty() && report.dns.is_empty());
    assert!(report.sensitive_reads.is_empty() && report.persistence.is_empty());
    assert!(
        report.writes_outside.is_empty(),
        "{:#?}",
        report.writes_outside
    );
    assert!(
        report
            .processes
            .iter()
            .all(|p| matches!(p.kind, ProgramKind::Expected | ProgramKind::Other)),
        "{:#?}",
        report.processes
    );
}

#[test]
fn clean_fixture_passes_every_task() {
    let run = run_fixture("clean", full_recipe());
    expect_statuses(&run, [Passed, Passed, Passed, Passed, Passed, Skipped]);
    assert_eq!(
        run.results.outcome,
        Outcome::Passed,
        "{}",
        run.results.outcome_detail
    );
    assert!(run.results.inputs.iter().all(|i| i.verified));
    assert!(run
        .results
        .platform
        .python_version
        .as_deref()
        .unwrap()
        .starts_with("3."));
    assert_eq!(
        run.results.platform.image_hash.as_deref(),
        Some("host-mode")
    );

    let installed = install(&run);
    assert_eq!(installed.installed_from, "dist/pyti-clean-1.0.tar.gz");
    assert_eq!(installed.pip_exit_code, Some(0));
    assert!(installed
        .installed_files
        .contains(&"pyti_clean/__init__.py".to_string()));
    assert_eq!(
        installed.weird_place_count, 0,
        "{:#?}",
        installed.weird_places
    );
    assert_eq!(
        run.task(TaskKind::Import).metrics,
        Some(TaskMetrics::Import(ImportMetrics {
            modules: vec![ModuleImport {
                module: "pyti_clean".into(),
                ok: true,
                error: None
            }],
            console_scripts: Vec::new(),
        }))
    );
    assert_clean_behaviour(&run);
    assert_eq!(behaviour(&run).install_exit_code, Some(0));
    assert_eq!(behaviour(&run).import_exit_code, Some(0));
    assert_eq!(counts(&run), (2, 0, 0, 0));
    assert_eq!(tests(&run).source, "junit");
    let quality = quality(&run);
    assert_eq!((quality.pycodestyle.total, quality.pyflakes.total), (0, 0));
    assert_eq!(quality.score, 10.0);
    for task in &run.results.tasks[..5] {
        let log = task.log.as_ref().expect("a log per task");
        assert!(run.io.path().join("results").join(log).is_file(), "{log}");
    }
    assert_eq!(run.task(TaskKind::Metadata).log, None);
}

#[test]
fn a_wheel_is_installed_and_the_sdist_tested() {
    let run = run_fixture_as("clean", full_recipe(), true);
    expect_statuses(&run, [Passed, Passed, Passed, Passed, Passed, Skipped]);
    assert_eq!(run.results.outcome, Outcome::Passed);
    assert_eq!(
        install(&run).installed_from,
        "dist/pyti_clean-1.0-py3-none-any.whl"
    );
    let roles: Vec<&str> = run
        .results
        .inputs
        .iter()
        .filter(|i| i.path.starts_with("dist/"))
        .map(|i| i.path.as_str())
        .collect();
    assert_eq!(
        roles,
        vec![
            "dist/pyti-clean-1.0.tar.gz",
            "dist/pyti_clean-1.0-py3-none-any.whl"
        ]
    );
    assert_clean_behaviour(&run);
    assert_eq!(counts(&run), (2, 0, 0, 0));
    assert_eq!(quality(&run).files, 2);
}

#[test]
fn failing_test_is_reported_as_tests_failed() {
    let run = run_fixture("failing", full_recipe());
    expect_statuses(&run, [Passed, Passed, Passed, Failed, Passed, Skipped]);
    assert_eq!(run.results.outcome, Outcome::TestsFailed);
    assert_eq!(counts(&run), (1, 1, 0, 0));
    assert_clean_behaviour(&run);
}

#[test]
fn install_failure_is_reported_and_dependent_tasks_skipped() {
    let run = run_fixture("installfail", full_recipe());
    expect_statuses(&run, [Failed, Skipped, Passed, Skipped, Passed, Skipped]);
    assert_eq!(run.results.outcome, Outcome::InstallFailed);
    assert_ne!(install(&run).pip_exit_code, Some(0));
    assert_eq!(install(&run).weird_place_count, 0);
    assert_clean_behaviour(&run);
    assert_ne!(behaviour(&run).install_exit_code, Some(0));
    let log = std::fs::read_to_string(run.io.path().join("results/logs/install.log")).unwrap();
    assert!(log.contains("this distribution refuses to build"), "{log}");
}

#[test]
fn import_failure_names_the_module_and_its_error() {
    let run = run_fixture("importfail", full_recipe());
    expect_statuses(&run, [Passed, Failed, Passed, Skipped, Passed, Skipped]);
    assert_eq!(run.results.outcome, Outcome::ImportFailed);
    assert_eq!(
        run.task(TaskKind::Import).metrics,
        Some(TaskMetrics::Import(ImportMetrics {
            modules: vec![ModuleImport {
                module: "pyti_importfail".into(),
                ok: false,
                error: Some(
                    "RuntimeError: pyti fixture: this module refuses to be imported".into()
                ),
            }],
            console_scripts: Vec::new(),
        }))
    );
    assert_clean_behaviour(&run);
    // The behaviour is the import task's own traced import, which failed.
    assert_eq!(behaviour(&run).import_exit_code, Some(1));
}

#[test]
fn an_invalid_opcode_trap_is_the_platform_s_fault_naming_the_cpu() {
    let run = run_fixture(
        "sigill",
        pyti_guest::recipe::RecipeBook::embedded()
            .get("install")
            .unwrap()
            .clone(),
    );
    let import = run.task(TaskKind::Import);
    assert_eq!(import.status, TaskStatus::Error, "{}", import.message);
    let fault = import.platform_fault.as_deref().unwrap_or_default();
    assert!(
        fault.contains("SIGILL") && fault.contains("x86-64-v"),
        "{fault}"
    );
    assert!(
        fault.contains("python"),
        "names the trapped process: {fault}"
    );
    assert_eq!(run.results.outcome, Outcome::CpuUnsupported);
    assert!(run.results.outcome.is_farm_fault());
    let cpu = run
        .results
        .platform
        .cpu
        .as_ref()
        .expect("the CPU is recorded");
    assert!(!cpu.flags.is_empty() && cpu.x86_64_level >= 1, "{cpu:?}");
}

#[test]
fn a_self_sent_sigill_stays_the_package_s_import_failure() {
    let run = run_fixture(
        "fakesigill",
        pyti_guest::recipe::RecipeBook::embedded()
            .get("install")
            .unwrap()
            .clone(),
    );
    let import = run.task(TaskKind::Import);
    assert_eq!(import.status, TaskStatus::Failed, "{}", import.message);
    assert_eq!(import.platform_fault, None);
    assert_eq!(run.results.outcome, Outcome::ImportFailed);
}

#[test]
fn writes_outside_the_environment_are_found_by_snapshot_and_trace() {
    let run = run_fixture("weird", full_recipe());
    expect_statuses(&run, [Passed, Passed, Failed, Skipped, Passed, Skipped]);
    assert_eq!(
        run.task(TaskKind::Tests).message,
        "pytest collected no tests"
    );
    assert_eq!(run.results.outcome, Outcome::WroteOutsideEnvironment);
    let marker = run.home_path("pyti-weird-marker.txt");
    let weird: Vec<(&str, FileChange)> = install(&run)
        .weird_places
        .iter()
        .map(|w| (w.path.as_str(), w.change))
        .collect();
    assert_eq!(weird, vec![(marker.as_str(), FileChange::Created)]);
    let report = behaviour(&run);
    assert_eq!(report.verdict, Verdict::Suspicious);
    let written: Vec<&str> = report
        .writes_outside
        .iter()
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(written, vec![marker.as_str()]);
    assert!(!report.reasons.is_empty());
    assert!(report
        .reasons
        .iter()
        .all(|r| r.rule == Rule::WriteOutsideEnvironment && r.detail.contains(&marker)));
    assert!(report.network.is_empty() && report.sensitive_reads.is_empty());
}

#[test]
fn pep8_errors_are_counted_by_code() {
    let run = run_fixture("pep8", full_recipe());
    expect_statuses(&run, [Passed, Passed, Passed, Passed, Failed, Skipped]);
    assert_eq!(run.results.outcome, Outcome::QualityFailed);
    let quality = quality(&run);
    assert_eq!(
        quality.pycodestyle.by_code,
        codes(&[
            ("E201", 1),
            ("E202", 1),
            ("E203", 1),
            ("E225", 1),
            ("E302", 1)
        ])
    );
    assert_eq!(quality.pycodestyle.total, 5);
    assert_eq!(quality.pyflakes.total, 0);
    assert!(quality.score < 10.0);
    assert_eq!(counts(&run), (1, 0, 0, 0));
}

#[test]
fn hostile_fixture_is_malicious_with_every_attempt_listed() {
    let run = run_fixture("hostile", full_recipe());
    expect_statuses(&run, [Passed, Passed, Failed, Skipped, Passed, Skipped]);
    assert_eq!(run.results.outcome, Outcome::HarmfulBehaviour);
    let report = behaviour(&run);
    assert_eq!(report.verdict, Verdict::Malicious);
    assert_eq!(
        report.dns,
        vec![DnsLookup {
            phase: Phase::Install,
            server: "127.0.0.1:53".into(),
            name: Some("pyti-fixture.invalid".into())
        }]
    );
    let network: Vec<(&str, &str, u16, &str)> = report
        .network
        .iter()
        .map(|n| {
            (
                n.syscall.as_str(),
                n.address.as_str(),
                n.port,
                n.result.as_str(),
            )
        })
        .collect();
    assert_eq!(network, vec![("connect", "127.0.0.1", 9, "ECONNREFUSED")]);
    let key = run.home_path(".ssh/id_rsa");
    let sensitive: Vec<(&str, SensitiveKind, &str)> = report
        .sensitive_reads
        .iter()
        .map(|r| (r.path.as_str(), r.kind, r.result.as_str()))
        .collect();
    assert_eq!(sensitive, vec![(key.as_str(), SensitiveKind::SshKey, "ok")]);
    let shells: Vec<&Vec<String>> = report
        .processes
        .iter()
        .filter(|p| !matches!(p.kind, ProgramKind::Expected | ProgramKind::Other))
        .map(|p| &p.argv)
        .collect();
    assert_eq!(
        shells,
        vec![&vec![
            "sh".to_string(),
            "-c".into(),
            "echo pyti-fixture".into()
        ]]
    );
    let persistence: Vec<(&str, PersistenceKind, &str)> = report
        .persistence
        .iter()
        .map(|p| (p.path.as_str(), p.kind, p.result.as_str()))
        .collect();
    assert_eq!(
        persistence,
        vec![("/etc/cron.d/pyti-fixture", PersistenceKind::Cron, "ok")]
    );
    let mut rules: Vec<(Verdict, Rule)> = report
        .reasons
        .iter()
        .map(|r| (r.severity, r.rule))
        .collect();
    rules.dedup();
    assert_eq!(
        rules,
        vec![
            (Verdict::Malicious, Rule::SensitiveFileRead),
            (Verdict::Malicious, Rule::Persistence),
            (Verdict::Suspicious, Rule::NetworkAttempt),
            (Verdict::Suspicious, Rule::DnsLookup),
            (Verdict::Suspicious, Rule::ShellSpawned),
        ]
    );
    let weird: Vec<&str> = install(&run)
        .weird_places
        .iter()
        .map(|w| w.path.as_str())
        .collect();
    assert_eq!(weird, vec!["/etc/cron.d/pyti-fixture"]);
}

#[test]
fn network_use_at_import_time_is_traced_in_the_import_phase() {
    let recipe = RecipeBook::embedded().get("behaviour").unwrap().clone();
    let run = run_fixture("importnet", recipe);
    assert_eq!(statuses(&run), vec![(TaskKind::Behaviour, Failed)]);
    assert_eq!(run.results.outcome, Outcome::SuspiciousBehaviour);
    let report = behaviour(&run);
    assert_eq!(report.verdict, Verdict::Suspicious);
    let network: Vec<(Phase, &str, u16, &str)> = report
        .network
        .iter()
        .map(|n| (n.phase, n.address.as_str(), n.port, n.result.as_str()))
        .collect();
    assert_eq!(
        network,
        vec![(Phase::Import, "127.0.0.1", 9, "ECONNREFUSED")]
    );
    let rules: Vec<Rule> = report.reasons.iter().map(|r| r.rule).collect();
    assert_eq!(rules, vec![Rule::NetworkAttempt]);
    assert_eq!(report.import_exit_code, Some(0));
}

#[test]
fn a_hanging_task_times_out_and_the_next_one_still_runs() {
    let recipe = Recipe {
        identifier: "hangcheck".into(),
        description: "install, a test suite with a short deadline, quality".into(),
        tasks: vec![
            TaskSpec {
                kind: TaskKind::Install,
                timeout_s: 600,
            },
            TaskSpec {
                kind: TaskKind::Tests,
                timeout_s: 20,
            },
            TaskSpec {
                kind: TaskKind::Quality,
                timeout_s: 600,
            },
        ],
    };
    let run = run_fixture("hang", recipe);
    assert_eq!(
        statuses(&run),
        vec![
            (TaskKind::Install, Passed),
            (TaskKind::Tests, TimedOut),
            (TaskKind::Quality, Passed)
        ]
    );
    // A task past its own timeout is the package's hang, not the farm's.
    assert_eq!(run.results.outcome, Outcome::TaskTimeout);
    assert!(run.results.outcome.is_package_fault());
    assert!(run
        .task(TaskKind::Tests)
        .message
        .contains("deadline of 20 s"));
    let log = std::fs::read_to_string(run.io.path().join("results/logs/tests.log")).unwrap();
    assert!(log.contains("killed at the deadline"), "{log}");
}
