//! The results schema (`schemas/results.schema.json`) as the tests check it: the
//! agent's output in host mode and `pyti-vm-run --json` must both follow it.

/// Asserts that `results` follows the results schema, listing every violation.
pub fn assert_follows_results_schema(results: &serde_json::Value) {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../schemas/results.schema.json"))
            .expect("the results schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the results schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(results)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "results do not follow the schema: {errors:#?}"
    );
}
