use super::*;
use crate::behaviour::{Observations, Phase, TraceContext};

fn task(name: TaskKind, status: TaskStatus, metrics: Option<TaskMetrics>) -> TaskResult {
    TaskResult {
        name,
        status,
        duration_s: 1.5,
        timeout_s: 60,
        log: Some(format!("logs/{name}.log")),
        message: format!("{name} message"),
        metrics,
        platform_fault: None,
        package_fault: None,
    }
}

fn behaviour(trace: &str) -> TaskMetrics {
    let mut observations = Observations::default();
    let context = TraceContext {
        home: "/h".into(),
        environment_roots: vec!["/w".into()],
        initial_cwd: "/w".into(),
        decoys: Vec::new(),
    };
    observations.read_trace(trace, Phase::Install, &context);
    TaskMetrics::Behaviour(observations.report())
}

const KEY_READ: &str =
    r#"1 10:00:00.000000 openat(AT_FDCWD</w>, "/h/.ssh/id_rsa", O_RDONLY) = 3</h/.ssh/id_rsa>"#;
const SHELL: &str =
    r#"1 10:00:00.000000 execve("/bin/sh", ["sh", "-c", "x"], 0x1 /* 1 var */) = 0"#;
const WRITE: &str =
    r#"1 10:00:00.000000 openat(AT_FDCWD</w>, "/h/marker", O_WRONLY|O_CREAT, 0644) = 3</h/marker>"#;

fn install_metrics(weird: u64) -> TaskMetrics {
    TaskMetrics::Install(InstallMetrics {
        installed_from: "dist/x-1.0.tar.gz".into(),
        pip_exit_code: Some(0),
        installed_file_count: 1,
        installed_files: vec!["x/__init__.py".into()],
        weird_place_count: weird,
        weird_places: (0..weird)
            .map(|i| WrittenFile {
                path: format!("/h/{i}"),
                size: 1,
                change: FileChange::Created,
            })
            .collect(),
    })
}

fn sample() -> Results {
    Results {
        schema_version: RESULTS_SCHEMA_VERSION,
        job: JobIdentity {
            job_id: "j".into(),
            attempt: 1,
            project_name: "x".into(),
            project_version: "1.0".into(),
            recipe_identifier: "recipe".into(),
            platform_identifier: "debian-12".into(),
            platform_variants: vec!["small".into()],
        },
        platform: GuestPlatform {
            python_version: Some("3.11.2".into()),
            kernel: Some("6.1.0".into()),
            machine: "x86_64".into(),
            image_hash: None,
            agent_version: "0.1.0".into(),
            cpu: Some(crate::cpu::parse_cpuinfo(
                "model name\t: QEMU TCG CPU\nflags\t\t: fpu cmov cx8 fxsr mmx syscall sse sse2\n",
            )),
        },
        inputs: vec![InputCheck {
            path: "dist/x-1.0.tar.gz".into(),
            role: InputRole::Sdist,
            sha256: "0".repeat(64),
            verified: true,
        }],
        tasks: vec![
            task(
                TaskKind::Install,
                TaskStatus::Passed,
                Some(install_metrics(1)),
            ),
            task(
                TaskKind::Import,
                TaskStatus::Failed,
                Some(TaskMetrics::Import(ImportMetrics {
                    modules: vec![ModuleImport {
                        module: "x".into(),
                        ok: false,
                        error: Some("ImportError: y".into()),
                    }],
                    console_scripts: Vec::new(),
                })),
            ),
            task(
                TaskKind::Behaviour,
                TaskStatus::Failed,
                Some(behaviour(&format!("{KEY_READ}\n{SHELL}\n{WRITE}"))),
            ),
            task(
                TaskKind::Tests,
                TaskStatus::Failed,
                Some(TaskMetrics::Tests(TestsMetrics {
                    passed: 1,
                    failed: 1,
                    errors: 0,
                    skipped: 0,
                    source: "junit".into(),
                    exit_code: Some(1),
                })),
            ),
            task(
                TaskKind::Quality,
                TaskStatus::Failed,
                Some(TaskMetrics::Quality(QualityMetrics {
                    files: 1,
                    lines: 10,
                    pycodestyle: ToolCounts {
                        total: 1,
                        by_code: [("E225".to_string(), 1)].into(),
                    },
                    pyflakes: ToolCounts::default(),
                    score: 9.0,
                })),
            ),
            task(
                TaskKind::Metadata,
                TaskStatus::Passed,
                Some(TaskMetrics::Metadata(
                    [("licence".to_string(), serde_json::json!("MIT"))].into(),
                )),
            ),
        ],
        outcome: Outcome::HarmfulBehaviour,
        outcome_detail: "why".into(),
        duration_s: 3.0,
        nonce: Some("n".repeat(32)),
    }
}

#[test]
fn outcomes_follow_the_precedence() {
    use TaskKind::*;
    use TaskStatus::*;
    let passed = |kind| task(kind, Passed, None);
    let cases: Vec<(Vec<TaskResult>, Outcome)> = vec![
        (
            vec![passed(Install), passed(Import), passed(Tests)],
            Outcome::Passed,
        ),
        (vec![], Outcome::Passed),
        (
            vec![task(Install, Failed, None), task(Import, Skipped, None)],
            Outcome::InstallFailed,
        ),
        (
            vec![passed(Install), task(Import, Failed, None)],
            Outcome::ImportFailed,
        ),
        (
            vec![passed(Install), task(Tests, Failed, None)],
            Outcome::TestsFailed,
        ),
        (
            vec![passed(Install), task(Tests, TimedOut, None)],
            Outcome::TaskTimeout,
        ),
        (
            vec![passed(Install), task(Quality, Error, None)],
            Outcome::AgentError,
        ),
        (
            vec![passed(Install), task(Quality, Failed, None)],
            Outcome::QualityFailed,
        ),
        (
            vec![
                task(Install, Failed, None),
                task(Behaviour, Failed, Some(behaviour(KEY_READ))),
            ],
            Outcome::HarmfulBehaviour,
        ),
        (
            vec![
                task(Behaviour, Failed, Some(behaviour(SHELL))),
                task(Tests, Failed, None),
            ],
            Outcome::TestsFailed,
        ),
        (
            vec![task(Behaviour, Failed, Some(behaviour(SHELL)))],
            Outcome::SuspiciousBehaviour,
        ),
        (
            vec![task(
                Behaviour,
                Failed,
                Some(behaviour(&format!("{SHELL}\n{WRITE}"))),
            )],
            Outcome::SuspiciousBehaviour,
        ),
        (
            vec![task(Behaviour, Failed, Some(behaviour(WRITE)))],
            Outcome::WroteOutsideEnvironment,
        ),
        (
            vec![
                task(Install, Passed, Some(install_metrics(2))),
                task(Quality, Failed, None),
            ],
            Outcome::WroteOutsideEnvironment,
        ),
        (
            vec![task(Install, Failed, None), task(Tests, TimedOut, None)],
            Outcome::InstallFailed,
        ),
    ];
    for (tasks, expected) in cases {
        let (outcome, detail) = decide_outcome(&tasks);
        assert_eq!(outcome, expected, "{tasks:?}");
        assert!(!detail.is_empty());
    }
}

#[test]
fn results_round_trip_through_the_strict_reader() {
    let results = sample();
    let bytes = serde_json::to_vec(&results).unwrap();
    assert_eq!(
        parse_results(&bytes, &ResultsLimits::default()).unwrap(),
        results
    );
}

#[test]
fn the_sample_matches_the_json_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/results.schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let value = serde_json::to_value(sample()).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    let mut bad = value.clone();
    bad["tasks"][0]["status"] = serde_json::json!("fine");
    assert!(!validator.is_valid(&bad));
    let mut bad = value;
    bad["surprise"] = serde_json::json!(1);
    assert!(!validator.is_valid(&bad));
}

fn refuse(bytes: &[u8], limits: &ResultsLimits) -> String {
    parse_results(bytes, limits).unwrap_err().to_string()
}

#[test]
fn the_reader_refuses_hostile_input() {
    let limits = ResultsLimits::default();
    let good = serde_json::to_value(sample()).unwrap();

    let small = ResultsLimits {
        max_bytes: 10,
        ..limits
    };
    assert!(refuse(b"{\"schema_version\": 1}", &small).contains("the limit is 10"));
    assert!(refuse(b"not json", &limits).contains("does not parse"));
    assert!(refuse(b"[]", &limits).contains("schema_version None"));
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    assert!(refuse(deep.as_bytes(), &limits).contains("does not parse"));

    let mut version = good.clone();
    version["schema_version"] = serde_json::json!(RESULTS_SCHEMA_VERSION + 1);
    assert!(
        refuse(version.to_string().as_bytes(), &limits).contains(&format!(
            "schema_version Some(Number({}))",
            RESULTS_SCHEMA_VERSION + 1
        ))
    );

    let mut unknown = good.clone();
    unknown["tasks"][0]["extra"] = serde_json::json!(true);
    assert!(refuse(unknown.to_string().as_bytes(), &limits).contains("unknown field `extra`"));

    let mut wrong_type = good.clone();
    wrong_type["duration_s"] = serde_json::json!("3");
    assert!(refuse(wrong_type.to_string().as_bytes(), &limits).contains("does not parse"));

    let mut long = good.clone();
    long["outcome_detail"] = serde_json::json!("x".repeat(300));
    let short = ResultsLimits {
        max_string_bytes: 200,
        ..limits
    };
    assert_eq!(
        refuse(long.to_string().as_bytes(), &short),
        "results.json at /outcome_detail: a string of 300 bytes; the limit is 200"
    );

    let few = ResultsLimits {
        max_items: 1,
        ..limits
    };
    let error = refuse(good.to_string().as_bytes(), &few);
    assert!(error.contains("members; the limit is 1"), "{error}");

    let mut many = good.clone();
    let tasks = many["tasks"].as_array().unwrap().clone();
    many["tasks"] = serde_json::Value::Array(tasks.iter().cycle().take(40).cloned().collect());
    assert!(refuse(many.to_string().as_bytes(), &limits).contains("/tasks: 40 tasks"));
}

#[test]
fn metadata_metrics_are_free_form_but_everything_else_is_closed() {
    let mut value = serde_json::to_value(sample()).unwrap();
    value["tasks"][5]["metrics"]["metadata"]["anything"] = serde_json::json!({"nested": [1, 2]});
    assert!(parse_results(value.to_string().as_bytes(), &ResultsLimits::default()).is_ok());
    value["tasks"][0]["metrics"] = serde_json::json!({"fuzz": {}});
    assert!(parse_results(value.to_string().as_bytes(), &ResultsLimits::default()).is_err());
}

#[test]
fn damaged_files_are_refused_without_panicking() {
    let bytes = serde_json::to_vec(&sample()).unwrap();
    let limits = ResultsLimits::default();
    for length in 0..bytes.len() {
        assert!(
            parse_results(&bytes[..length], &limits).is_err(),
            "prefix {length}"
        );
    }
    for position in (0..bytes.len()).step_by(7) {
        for replacement in [b'"', b'{', b']', b'9', 0xff] {
            let mut damaged = bytes.clone();
            damaged[position] = replacement;
            let _ = parse_results(&damaged, &limits);
        }
    }
}

#[test]
fn a_platform_fault_is_the_farm_s_unless_the_package_is_malicious() {
    let mut import = task(TaskKind::Import, TaskStatus::Error, None);
    import.platform_fault = Some("python3[7] in numpy.so died of SIGILL".into());
    let (outcome, detail) = decide_outcome(&[
        task(TaskKind::Install, TaskStatus::Passed, None),
        import.clone(),
    ]);
    assert_eq!(outcome, Outcome::CpuUnsupported);
    assert!(detail.contains("SIGILL"), "{detail}");
    assert!(outcome.is_farm_fault());
    let (outcome, _) = decide_outcome(&[task(TaskKind::Install, TaskStatus::Failed, None), import]);
    assert_eq!(outcome, Outcome::InstallFailed);
}

#[test]
fn results_of_the_previous_schema_version_still_read() {
    let mut value = serde_json::to_value(sample()).unwrap();
    value["schema_version"] = 1.into();
    value["platform"].as_object_mut().unwrap().remove("cpu");
    let read = parse_results(
        &serde_json::to_vec(&value).unwrap(),
        &ResultsLimits::default(),
    )
    .unwrap();
    assert_eq!(read.platform.cpu, None);
    value["schema_version"] = 4.into();
    assert!(matches!(
        parse_results(
            &serde_json::to_vec(&value).unwrap(),
            &ResultsLimits::default()
        ),
        Err(ResultsError::Version { .. })
    ));
}
