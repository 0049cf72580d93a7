//! The tables both stores create, and the conversions between their columns and the
//! store's types.

use pyti::proto::{JobState, Outcome, TaskStatus};

use crate::store::{JobFilter, LIVE_STATES};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    project_name TEXT NOT NULL,
    project_version TEXT NOT NULL,
    recipe_identifier TEXT NOT NULL,
    platform_identifier TEXT NOT NULL,
    platform_variants TEXT NOT NULL,
    resolved_version TEXT NOT NULL,
    state BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    worker_id TEXT NOT NULL,
    outcome BIGINT NOT NULL,
    submitted_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    lease_deadline_ms BIGINT,
    cancel_requested BIGINT NOT NULL,
    lease_id TEXT NOT NULL DEFAULT '',
    submitted_by TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE TABLE IF NOT EXISTS job_history (
    id {SERIAL_KEY},
    job_id TEXT NOT NULL,
    state BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    reason TEXT NOT NULL,
    worker_id TEXT NOT NULL,
    attempt BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_history_by_job ON job_history (job_id);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    worker_id TEXT NOT NULL,
    outcome BIGINT NOT NULL,
    results_json TEXT NOT NULL,
    error TEXT NOT NULL,
    stored_at_ms BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE TABLE IF NOT EXISTS task_results (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    task TEXT NOT NULL,
    status BIGINT NOT NULL,
    duration_s DOUBLE PRECISION NOT NULL,
    metrics_json TEXT NOT NULL,
    log_name TEXT NOT NULL,
    summary TEXT NOT NULL,
    position BIGINT NOT NULL,
    PRIMARY KEY (job_id, attempt, task)
);
CREATE TABLE IF NOT EXISTS logs (
    job_id TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    log_name TEXT NOT NULL,
    data {BYTES} NOT NULL,
    PRIMARY KEY (job_id, attempt, log_name)
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    control_address TEXT NOT NULL,
    capacity {BYTES} NOT NULL,
    registered_at_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS submit_keys (
    submit_key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT,
    revoked_at_ms BIGINT
);
";

/// Columns added after the first release, for stores made before them: (table, column
/// definition).
pub(super) const ADDED_COLUMNS: [(&str, &str); 2] = [
    ("jobs", "lease_id TEXT NOT NULL DEFAULT ''"),
    ("jobs", "submitted_by TEXT NOT NULL DEFAULT ''"),
];

pub(super) const JOB_COLUMNS: &str = "job_id, project_name, project_version, recipe_identifier, \
    platform_identifier, platform_variants, resolved_version, state, attempt, worker_id, \
    outcome, submitted_at_ms, updated_at_ms, lease_deadline_ms, cancel_requested, lease_id, submitted_by";

pub(super) fn state_of(value: i64) -> JobState {
    i32::try_from(value)
        .ok()
        .and_then(|v| JobState::try_from(v).ok())
        .unwrap_or(JobState::Unspecified)
}

pub(super) fn outcome_of(value: i64) -> Outcome {
    i32::try_from(value)
        .ok()
        .and_then(|v| Outcome::try_from(v).ok())
        .unwrap_or(Outcome::Unspecified)
}

pub(super) fn status_of(value: i64) -> TaskStatus {
    i32::try_from(value)
        .ok()
        .and_then(|v| TaskStatus::try_from(v).ok())
        .unwrap_or(TaskStatus::Unspecified)
}

pub(super) fn attempt_of(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// The `WHERE` clause and its text parameters for `filter`, numbered from `$1`.
pub(super) fn filter_clause(filter: &JobFilter) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut texts = Vec::new();
    if !filter.states.is_empty() {
        let states: Vec<String> = filter
            .states
            .iter()
            .map(|s| (*s as i32).to_string())
            .collect();
        conditions.push(format!("state IN ({})", states.join(", ")));
    }
    for (column, value) in [
        ("project_name", &filter.project_name),
        ("worker_id", &filter.worker_id),
    ] {
        if !value.is_empty() {
            texts.push(value.clone());
            conditions.push(format!("{column} = ${}", texts.len()));
        }
    }
    if let Some(before) = &filter.before_job_id {
        texts.push(before.clone());
        conditions.push(format!("job_id < ${}", texts.len()));
    }
    let clause = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    (clause, texts)
}

pub(super) fn live_states_list() -> String {
    LIVE_STATES
        .iter()
        .map(|s| (*s as i32).to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
