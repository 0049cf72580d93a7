//! Protocol messages to the master's plain types and back: the only place the two
//! meet. The gRPC services (`service`), the worker control client and the stored
//! capacity blob call these; the core never handles a prost message.

use std::collections::BTreeMap;

use prost::Message;
use pyti::model::JobSpec;
use pyti::proto::{self, JobState};
use tokio_stream::{Stream, StreamExt};

use crate::dispatch::Queued;
use crate::error::{Error, Result};
use crate::jobs::{
    JobEvent, JobPage, JobResults, LeaseKey, ListQuery, Renewal, ResultsStored, Start, Submission,
};
use crate::scheduler::Requirement;
use crate::store::{AttemptResults, HistoryRow, JobRow, Millis, TaskRow};
use crate::workers::{Capacity, PlatformCapacity, Registered, Registration, WorkerView};

/// A protobuf timestamp for `ms` since the epoch.
pub fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Milliseconds since the epoch of a protobuf timestamp (sub-millisecond dropped).
pub fn millis(at: &prost_types::Timestamp) -> Millis {
    at.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(at.nanos.div_euclid(1_000_000)))
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
        submitted_by: row.submitted_by.clone(),
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
pub fn results(results: &JobResults) -> proto::JobResults {
    let job = Some(job(&results.job));
    let Some(stored) = &results.stored else {
        return proto::JobResults {
            job,
            ..Default::default()
        };
    };
    proto::JobResults {
        job,
        tasks: stored
            .tasks
            .iter()
            .map(|t| task(&stored.job_id, stored.attempt, t))
            .collect(),
        results_json: stored.results_json.clone(),
        log_names: stored.logs.iter().map(|(name, _)| name.clone()).collect(),
    }
}

/// A job to submit, validated.
pub fn submission(request: proto::SubmitJobRequest) -> Result<Submission> {
    if request.idempotency_key.len() > MAX_KEY_BYTES {
        return Err(Error::BadRequest(format!(
            "idempotency_key is {} bytes; at most {MAX_KEY_BYTES}",
            request.idempotency_key.len()
        )));
    }
    Ok(Submission {
        spec: JobSpec::try_from(request.spec.unwrap_or_default())?,
        queue_without_capacity: request.queue_without_capacity,
        idempotency_key: request.idempotency_key,
        // The service fills in the caller: a request field could claim anyone.
        submitted_by: String::new(),
    })
}

/// The longest idempotency key a `SubmitJob` may carry.
pub const MAX_KEY_BYTES: usize = 128;

/// Which jobs a `ListJobs` request asks for.
pub fn list_query(request: &proto::ListJobsRequest) -> Result<ListQuery> {
    let mut states = Vec::new();
    for s in &request.states {
        match JobState::try_from(*s) {
            Ok(state) if state != JobState::Unspecified => states.push(state),
            _ => return Err(Error::BadRequest(format!("states: {s} is not a job state"))),
        }
    }
    Ok(ListQuery {
        states,
        project_name: request.project_name.clone(),
        worker_id: request.worker_id.clone(),
        page_size: request.page_size,
        page_token: request.page_token.clone(),
    })
}

/// The `ListJobs` answer for a page.
pub fn job_page(page: &JobPage) -> proto::ListJobsResponse {
    proto::ListJobsResponse {
        jobs: page.jobs.iter().map(job).collect(),
        next_page_token: page.next_page_token.clone(),
    }
}

/// The `WatchJob` message for an event.
pub fn event(event: &JobEvent) -> proto::JobEvent {
    use proto::job_event::Event;
    let event = match event {
        JobEvent::Job(row) => Event::Job(job(row)),
        JobEvent::Task {
            job_id,
            attempt,
            task: row,
        } => Event::TaskResult(task(job_id, *attempt, row)),
    };
    proto::JobEvent { event: Some(event) }
}

/// The job and attempt a worker speaks of when it starts one.
pub fn start_key(request: &proto::StartJobRequest) -> LeaseKey {
    LeaseKey {
        worker_id: request.worker_id.clone(),
        job_id: request.job_id.clone(),
        attempt: request.attempt,
        lease_id: request.lease_id.clone(),
    }
}

/// The job and attempt a worker speaks of when it renews a lease.
pub fn renew_key(request: &proto::RenewLeaseRequest) -> LeaseKey {
    LeaseKey {
        worker_id: request.worker_id.clone(),
        job_id: request.job_id.clone(),
        attempt: request.attempt,
        lease_id: request.lease_id.clone(),
    }
}

/// The `StartJob` answer.
pub fn start_response(start: Start) -> proto::StartJobResponse {
    match start {
        Start::Proceed { lease_deadline_ms } => proto::StartJobResponse {
            proceed: true,
            reason: String::new(),
            lease_deadline: lease_deadline_ms.map(timestamp),
        },
        Start::Refuse(reason) => proto::StartJobResponse {
            proceed: false,
            reason,
            lease_deadline: None,
        },
    }
}

/// The `RenewLease` answer.
pub fn renew_response(renewal: &Renewal) -> proto::RenewLeaseResponse {
    proto::RenewLeaseResponse {
        lease_deadline: renewal.lease_deadline_ms.map(timestamp),
        cancelled: renewal.cancelled,
    }
}

/// A token as listed (never its secret or hash).
pub fn token_info(row: &crate::store::TokenRow) -> proto::TokenInfo {
    proto::TokenInfo {
        name: row.name.clone(),
        role: row.role.clone(),
        token_id: row.token_id.clone(),
        created_at: Some(timestamp(row.created_at_ms)),
        expires_at: row.expires_at_ms.map(timestamp),
        revoked: row.revoked_at_ms.is_some(),
    }
}

/// At most this many messages in one `ReportResults` stream.
pub const MAX_RESULTS_MESSAGES: usize = 20_000;
/// At most this many bytes (task results, logs, the results dict) in one stream.
pub const MAX_RESULTS_BYTES: usize = 64 * 1024 * 1024;

/// The header a `ReportResults` stream must open with.
pub async fn results_header(
    stream: &mut (impl Stream<Item = std::result::Result<proto::ResultsMessage, tonic::Status>> + Unpin),
) -> Result<proto::ResultsHeader> {
    use proto::results_message::Message as M;
    match stream.next().await {
        Some(Ok(proto::ResultsMessage {
            message: Some(M::Header(header)),
        })) => Ok(header),
        Some(Err(status)) => Err(Error::BadRequest(format!(
            "results stream broke: {}",
            status.message()
        ))),
        _ => Err(Error::BadRequest(
            "a results stream needs a header first and a final record last".to_owned(),
        )),
    }
}

/// The rest of a `ReportResults` stream after `header`, checked message by message:
/// more than [`MAX_RESULTS_MESSAGES`] messages or [`MAX_RESULTS_BYTES`] bytes end it
/// with [`Error::TooLarge`] at once, before the rest is read.
pub async fn gather_results(
    header: proto::ResultsHeader,
    mut stream: impl Stream<Item = std::result::Result<proto::ResultsMessage, tonic::Status>> + Unpin,
) -> Result<AttemptResults> {
    use proto::results_message::Message as M;
    let mut last = None;
    let mut tasks = Vec::new();
    let mut logs: BTreeMap<String, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    let mut results_json = Vec::new();
    let (mut count, mut bytes) = (1_usize, 0_usize);
    while let Some(message) = stream.next().await {
        let message = message
            .map_err(|s| Error::BadRequest(format!("results stream broke: {}", s.message())))?;
        count += 1;
        bytes += prost::Message::encoded_len(&message);
        if count > MAX_RESULTS_MESSAGES || bytes > MAX_RESULTS_BYTES {
            return Err(Error::TooLarge(format!(
                "results of job {} attempt {} pass the limit of {MAX_RESULTS_MESSAGES} messages or {} MiB; not stored",
                header.job_id,
                header.attempt,
                MAX_RESULTS_BYTES >> 20
            )));
        }
        match message.message {
            Some(M::Header(_)) => {
                return Err(Error::BadRequest(
                    "a results stream has one header, first".to_owned(),
                ))
            }
            Some(M::TaskResult(task)) => tasks.push(task_row(&task)),
            Some(M::LogChunk(chunk)) => {
                let chunks = logs.entry(chunk.log_name).or_default();
                chunks.insert(chunk.offset, chunk.data);
            }
            Some(M::ResultsJsonChunk(chunk)) => results_json.extend_from_slice(&chunk),
            Some(M::Final(f)) => last = Some(f),
            None => {}
        }
    }
    let Some(last) = last else {
        return Err(Error::BadRequest(
            "a results stream needs a header first and a final record last".to_owned(),
        ));
    };
    let results_json = if results_json.is_empty() {
        last.results_json.clone()
    } else {
        String::from_utf8(results_json)
            .map_err(|_| Error::BadRequest("the results dict is not UTF-8".to_owned()))?
    };
    Ok(AttemptResults {
        outcome: last.outcome(),
        job_id: header.job_id,
        attempt: header.attempt,
        worker_id: header.worker_id,
        results_json,
        error: last.error,
        tasks,
        logs: logs
            .into_iter()
            .map(|(name, chunks)| (name, chunks.into_values().flatten().collect()))
            .collect(),
        stored_at_ms: 0,
    })
}

/// The `ReportResults` answer: the results of `key` are durable.
pub fn results_ack(job_id: String, attempt: u32, stored: ResultsStored) -> proto::ResultsAck {
    proto::ResultsAck {
        job_id,
        attempt,
        stored: true,
        duplicate: stored.duplicate,
    }
}

/// One platform's slots as `$to` from `$from`, which names its fields alike (the
/// protocol's and the master's type).
macro_rules! platform_capacity {
    ($to:path, $from:expr) => {{
        let p = $from;
        $to {
            platform: p.platform.clone(),
            variants: p.variants.clone(),
            total: p.total,
            ready: p.ready,
            preparing: p.preparing,
            running: p.running,
            collecting: p.collecting,
            rolling_back: p.rolling_back,
            broken: p.broken,
        }
    }};
}

/// A worker's capacity report.
pub fn capacity(message: proto::Capacity) -> Capacity {
    Capacity {
        worker_id: message.worker_id,
        platforms: message
            .platforms
            .into_iter()
            .map(|p| platform_capacity!(PlatformCapacity, p))
            .collect(),
        draining: message.draining,
        at_ms: message.at.as_ref().map(millis),
    }
}

/// The protocol form of a capacity report.
pub fn capacity_message(capacity: &Capacity) -> proto::Capacity {
    proto::Capacity {
        worker_id: capacity.worker_id.clone(),
        platforms: capacity
            .platforms
            .iter()
            .map(|p| platform_capacity!(proto::PlatformCapacity, p))
            .collect(),
        draining: capacity.draining,
        at: capacity.at_ms.map(timestamp),
    }
}

/// A capacity report as the store keeps it (an encoded `pyti.v1.Capacity`).
pub fn capacity_blob(capacity: &Capacity) -> Vec<u8> {
    capacity_message(capacity).encode_to_vec()
}

/// A stored capacity report; an unreadable one reads as no capacity (the worker's
/// stream replaces it once it answers).
pub fn capacity_from_blob(blob: &[u8]) -> Capacity {
    capacity(proto::Capacity::decode(blob).unwrap_or_default())
}

/// A worker's `Register` request.
pub fn registration(request: proto::RegisterRequest) -> Registration {
    Registration {
        worker_id: request.worker_id,
        control_address: request.control_address,
        capacity: capacity(request.capacity.unwrap_or_default()),
    }
}

/// The `Register` answer.
pub fn registered(registered: Registered) -> proto::RegisterResponse {
    proto::RegisterResponse {
        queue_name: registered.queue_name,
        lease_renew_interval_s: u32::try_from(registered.renew_every.as_secs())
            .unwrap_or(u32::MAX)
            .max(1),
    }
}

/// The `ListWorkers` entry of a worker.
pub fn worker_info(worker: &WorkerView) -> proto::WorkerInfo {
    proto::WorkerInfo {
        worker_id: worker.worker_id.clone(),
        control_address: worker.control_address.clone(),
        capacity: Some(capacity_message(&worker.capacity)),
        registered_at: Some(timestamp(worker.registered_at_ms)),
        last_seen: Some(timestamp(worker.last_seen_ms)),
        assigned_not_started: worker.assigned_not_started,
        connected: worker.connected,
    }
}

/// The queue message that carries `job` (for its platform, a worker or the dead
/// queue), the version filled in when the request left it to the master.
pub fn queued(job: &JobRow, reason: &str) -> proto::QueuedJob {
    let mut spec: proto::JobSpec = job.spec.clone().into();
    if spec.project_version.is_empty() {
        spec.project_version.clone_from(&job.resolved_version);
    }
    proto::QueuedJob {
        job_id: job.job_id.clone(),
        spec: Some(spec),
        attempt: job.attempt,
        submitted_at: Some(timestamp(job.submitted_at_ms)),
        reason: reason.to_owned(),
        lease_id: job.lease_id.clone(),
    }
}

/// What the dispatcher needs of a queue message (a `QueuedJob`); `None` when the
/// bytes are not one.
pub fn queued_of(data: &[u8]) -> Option<Queued> {
    let message = proto::QueuedJob::decode(data).ok()?;
    let spec = message.spec.unwrap_or_default();
    Some(Queued {
        job_id: message.job_id,
        attempt: message.attempt,
        requirement: Requirement::new(&spec.platform_identifier, &spec.platform_variants),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_to_the_millisecond() {
        for ms in [0, 1, 999, 1_000, 1_734_000_123_456, -1, -1_001] {
            assert_eq!(millis(&timestamp(ms)), ms, "{ms}");
        }
    }

    #[test]
    fn capacity_survives_the_protocol_and_the_store() {
        let message = proto::Capacity {
            worker_id: "w1".into(),
            platforms: vec![proto::PlatformCapacity {
                platform: "linux-debian".into(),
                variants: vec!["python3.11".into()],
                total: 9,
                ready: 1,
                preparing: 2,
                running: 3,
                collecting: 1,
                rolling_back: 1,
                broken: 1,
            }],
            draining: true,
            at: Some(timestamp(1_734_000_123_456)),
        };
        let domain = capacity(message.clone());
        assert_eq!(capacity_message(&domain), message);
        assert_eq!(capacity_from_blob(&capacity_blob(&domain)), domain);
        assert_eq!(
            capacity_from_blob(b"\xff not protobuf"),
            Capacity::default()
        );
    }

    #[test]
    fn a_queued_job_message_names_its_job_attempt_and_requirement() {
        let spec = JobSpec::from_requirement("x==1", None, Some("linux-debian"), &[]).unwrap();
        let row = JobRow {
            job_id: "j".into(),
            spec,
            resolved_version: String::new(),
            state: JobState::Queued,
            attempt: 3,
            worker_id: String::new(),
            outcome: proto::Outcome::Unspecified,
            submitted_at_ms: 0,
            updated_at_ms: 0,
            lease_deadline_ms: None,
            cancel_requested: false,
            lease_id: String::new(),
            submitted_by: String::new(),
            history: vec![],
        };
        let message = queued(&row, "why").encode_to_vec();
        assert_eq!(
            queued_of(&message),
            Some(Queued {
                job_id: "j".into(),
                attempt: 3,
                requirement: Requirement::new("linux-debian", &[]),
            })
        );
        assert_eq!(queued_of(b"\xff not protobuf"), None);
    }

    #[test]
    fn list_queries_refuse_unknown_states() {
        let request = proto::ListJobsRequest {
            states: vec![JobState::Running as i32, 0],
            ..Default::default()
        };
        let error = list_query(&request).unwrap_err();
        assert_eq!(error.to_string(), "states: 0 is not a job state");
        let request = proto::ListJobsRequest {
            states: vec![JobState::Running as i32],
            page_size: 7,
            ..Default::default()
        };
        let query = list_query(&request).unwrap();
        assert_eq!(
            (query.states, query.page_size),
            (vec![JobState::Running], 7)
        );
    }
}
