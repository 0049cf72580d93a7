use super::*;

fn invalid_fields(result: Result<JobSpec>) -> Vec<FieldError> {
    match result {
        Err(Error::JobInvalid { errors, .. }) => errors,
        other => panic!("expected JobInvalid, got {other:?}"),
    }
}

#[test]
fn the_seed_example_parses() {
    let text = include_str!("../../../examples/rarfile.json");
    let spec = JobSpec::from_json(text, "rarfile.json").unwrap();
    assert_eq!(
        spec,
        JobSpec {
            project_name: "rarfile".into(),
            project_version: "4.2".into(),
            recipe_identifier: "recipe".into(),
            platform_identifier: "linux-debian".into(),
            platform_variants: vec![],
        }
    );
}

#[test]
fn null_and_missing_variants_are_the_same() {
    let with_null = r#"{"project_name": "rarfile", "platform_variants": null}"#;
    let missing = r#"{"project_name": "rarfile"}"#;
    let a = JobSpec::from_json(with_null, "a").unwrap();
    let b = JobSpec::from_json(missing, "b").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.project_version, "");
    assert_eq!(a.recipe_identifier, DEFAULT_RECIPE);
    assert_eq!(a.platform_identifier, DEFAULT_PLATFORM);
}

#[test]
fn python_null_is_a_syntax_error_that_suggests_null() {
    let text = "{\n  \"project_name\": \"rarfile\",\n  \"platform_variants\": Null\n}\n";
    let err = JobSpec::from_json(text, "job.json").unwrap_err();
    match &err {
        Error::JobSyntax {
            line, column, hint, ..
        } => {
            assert_eq!(*line, 3);
            assert!(*column >= 24, "column {column}");
            assert_eq!(hint.as_deref(), Some("Null is not JSON: write null"));
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(
        shown.starts_with("job.json: invalid JSON at line 3, column "),
        "{shown}"
    );
    assert!(shown.contains("write null"), "{shown}");
}

#[test]
fn other_syntax_errors_give_line_and_column() {
    let err = JobSpec::from_json("{\n \"project_name\": \"x\",\n}", "j").unwrap_err();
    assert!(
        matches!(
            err,
            Error::JobSyntax {
                line: 3,
                column: 1,
                hint: None,
                ..
            }
        ),
        "{err:?}"
    );
    let err = JobSpec::from_json("  ", "j").unwrap_err();
    assert!(
        matches!(err, Error::JobSyntax { hint: Some(ref h), .. } if h == "the file is empty"),
        "{err:?}"
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"{
        "project_name": "",
        "project_version": "4.x",
        "recipe_identifier": "Full Recipe",
        "platform_identifier": "Linux_Debian",
        "platform_variants": ["python3.11", 3, "BAD variant"],
        "project_nmae": "typo"
    }"#;
    let errors = invalid_fields(JobSpec::from_json(text, "j"));
    let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "(root)",
            "platform_variants",
            "project_name",
            "project_version",
            "recipe_identifier",
            "platform_identifier",
            "platform_variants"
        ],
        "{errors:?}"
    );
    assert!(
        errors[0].message.contains("did you mean \"project_name\""),
        "{}",
        errors[0].message
    );
    assert!(errors[1]
        .message
        .contains("item 1 must be a string, not a number"));
    assert!(errors[2].message.contains("must not be empty"));
    assert!(errors[3].message.contains("not a PEP 440 version"));
}

#[test]
fn bad_project_names_are_named() {
    let errors = invalid_fields(JobSpec::from_json(r#"{"project_name": "rar file!"}"#, "j"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "project_name");
    assert!(errors[0].message.contains("not a valid PyPI project name"));
    let errors = invalid_fields(JobSpec::from_json(r#"{"project_version": "1.0"}"#, "j"));
    assert_eq!(
        errors[0].message,
        "is required (the PyPI project to test, e.g. \"rarfile\")"
    );
    let errors = invalid_fields(JobSpec::from_json(r#"{"project_name": null}"#, "j"));
    assert_eq!(errors.len(), 2, "{errors:?}");
}

#[test]
fn wrong_types_and_non_objects() {
    let errors = invalid_fields(JobSpec::from_json(
        r#"{"project_name": 5, "platform_variants": "x"}"#,
        "j",
    ));
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors
        .iter()
        .any(|e| e.message == "must be a string, not a number"));
    assert!(errors.iter().any(|e| e
        .message
        .contains("must be a list of strings or null, not a string")));
    let errors = invalid_fields(JobSpec::from_json("[1]", "j"));
    assert!(errors[0].message.contains("not a list"));
}

#[test]
fn normalisation() {
    let text = r#"{"project_name": "Zope.Interface", "project_version": "1.0.0rc1",
                   "platform_variants": ["python3.11", "arch=x86_64", "python3.11"]}"#;
    let spec = JobSpec::from_json(text, "j").unwrap();
    assert_eq!(spec.project_name, "zope-interface");
    assert_eq!(spec.project_version, "1.0.0rc1");
    assert_eq!(spec.platform_variants, ["arch=x86_64", "python3.11"]);
    let spec = JobSpec::from_json(
        r#"{"project_name": "x", "project_version": "1.0-RC1"}"#,
        "j",
    )
    .unwrap();
    assert_eq!(spec.project_version, "1.0rc1");
}

#[test]
fn requirement_shorthand() {
    let spec = JobSpec::from_requirement("rarfile==4.2", None, None, &[]).unwrap();
    assert_eq!(spec.requirement(), "rarfile==4.2");
    let spec = JobSpec::from_requirement(
        "rarfile",
        Some("install"),
        Some("linux-debian-12"),
        &["python3.11".into()],
    )
    .unwrap();
    assert_eq!(spec.requirement(), "rarfile");
    assert_eq!(spec.recipe_identifier, "install");
    assert_eq!(spec.platform_identifier, "linux-debian-12");
    let errors = invalid_fields(JobSpec::from_requirement("rarfile>=4", None, None, &[]));
    assert!(errors[0].message.contains("ranges and extras are not jobs"));
}

#[test]
fn proto_round_trip_validates() {
    let spec = JobSpec::from_requirement("rarfile==4.2", None, None, &[]).unwrap();
    let wire: proto::JobSpec = spec.clone().into();
    assert_eq!(JobSpec::try_from(wire).unwrap(), spec);
    let bad = proto::JobSpec {
        project_name: String::new(),
        ..Default::default()
    };
    assert!(matches!(
        JobSpec::try_from(bad),
        Err(Error::JobInvalid { .. })
    ));
}

#[test]
fn pretty_json_parses_back() {
    let spec = JobSpec::from_requirement("docopt==0.6.2", None, None, &["a".into()]).unwrap();
    assert_eq!(
        JobSpec::from_json(&spec.to_json_pretty(), "j").unwrap(),
        spec
    );
}
