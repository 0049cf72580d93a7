//! Stored rows to protocol messages and back, at the gRPC edge.

use pyti::proto;

use crate::store::{AttemptResults, HistoryRow, JobRow, Millis, TaskRow};

/// A protobuf timestamp for `ms` since the epoch.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the epoch now.
pub fn now_ms() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// The protocol view of a stored job.
pub fn job(row: &JobRow) -> proto::Job {
    proto::Job {
        job_id: row.job_id.clone(),
        spec: Some(row.spec.clone().into()),
        state: row.state as i32,
        attempt: row.attempt,
        worker_id: row.worker_id.clone(),
        submitted_at: Some(timestamp(row.submitted_at_ms)),
        updated_at: Some(timestamp(row.updated_at_ms)),
        history: row.history.iter().map(history).collect(),
        outcome: row.outcome as i32,
        resolved_version: row.resolved_version.clone(),
        lease_deadline: row.lease_deadline_ms.map(timestamp),
    }
}

fn history(row: &HistoryRow) -> proto::StateChange {
    proto::StateChange {
        state: row.state as i32,
        at: Some(timestamp(row.at_ms)),
        reason: row.reason.clone(),
        worker_id: row.worker_id.clone(),
        attempt: row.attempt,
    }
}

/// The protocol view of one stored task result.
pub fn task(job_id: &str, attempt: u32, row: &TaskRow) -> proto::TaskResult {
    proto::TaskResult {
        job_id: job_id.to_owned(),
        attempt,
        task: row.task.clone(),
        status: row.status as i32,
        duration_s: row.duration_s,
        metrics_json: row.metrics_json.clone(),
        log_name: row.log_name.clone(),
        summary: row.summary.clone(),
    }
}

/// A task result as stored.
pub fn task_row(message: &proto::TaskResult) -> TaskRow {
    TaskRow {
        task: message.task.clone(),
        status: message.status(),
        duration_s: message.duration_s,
        metrics_json: message.metrics_json.clone(),
        log_name: message.log_name.clone(),
        summary: message.summary.clone(),
    }
}

/// The protocol view of a job and its stored results.
pub fn results(job_row: &JobRow, stored: Option<&AttemptResults>) -> proto::JobResults {
    let Some(stored) = stored else {
        return proto::JobResults {
            job: Some(job(job_row)),
            ..Default::default()
        };
    };
    proto::JobResults {
        job: Some(job(job_row)),
        tasks: stored
            .tasks
            .iter()
            .map(|t| task(&stored.job_id, stored.attempt, t))
            .collect(),
        results_json: stored.results_json.clone(),
        log_names: stored.logs.iter().map(|(name, _)| name.clone()).collect(),
    }
}

/// The state's name as people read it.
pub fn state_name(state: proto::JobState) -> &'static str {
    state.as_str_name()
}
