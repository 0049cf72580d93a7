//! What tests ask a farm through its gRPC services, and the waits built on it: each
//! polls with a limit and panics saying what did not happen.

use std::collections::BTreeMap;
use std::time::Duration;

use super::trust::Authed;
use super::PLATFORM;
use crate::wait::wait_until;
use pyti::proto::job_service_client::JobServiceClient;
use pyti::proto::worker_registry_client::WorkerRegistryClient;
use pyti::proto::{self, JobState};

/// Job service client.
pub type Jobs = JobServiceClient<Authed>;
/// Worker registry client.
pub type Registry = WorkerRegistryClient<Authed>;
/// Token service client.
pub type Tokens = proto::token_service_client::TokenServiceClient<Authed>;

/// A job spec for the `recipe` recipe.
pub fn spec(project: &str, version: &str, platform: &str, variants: &[&str]) -> proto::JobSpec {
    proto::JobSpec {
        project_name: project.to_owned(),
        project_version: version.to_owned(),
        recipe_identifier: "recipe".to_owned(),
        platform_identifier: platform.to_owned(),
        platform_variants: variants.iter().map(|v| (*v).to_owned()).collect(),
    }
}

/// Submits `spec`; with `queue_anyway`, queued even when no worker offers what it
/// needs.
pub async fn try_submit(
    jobs: &mut Jobs,
    spec: proto::JobSpec,
    queue_anyway: bool,
) -> Result<proto::Job, tonic::Status> {
    jobs.submit_job(proto::SubmitJobRequest {
        spec: Some(spec),
        queue_without_capacity: queue_anyway,
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().job.expect("SubmitJob returns the job"))
}

/// Submits `spec`, which the master must accept.
pub async fn submit(jobs: &mut Jobs, spec: proto::JobSpec) -> proto::Job {
    let project = spec.project_name.clone();
    try_submit(jobs, spec, false)
        .await
        .unwrap_or_else(|e| panic!("submitting {project}: {e}"))
}

/// Submits `count` jobs `<stem>-0`, `<stem>-1`, ... version 1.0 on [`PLATFORM`]; their ids.
pub async fn submit_batch(jobs: &mut Jobs, stem: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    for n in 0..count {
        let job = submit(jobs, spec(&format!("{stem}-{n}"), "1.0", PLATFORM, &[])).await;
        ids.push(job.job_id);
    }
    ids
}

/// The answer to a call that must succeed; panics naming the call otherwise.
fn answer<T>(call: Result<tonic::Response<T>, tonic::Status>, what: &str) -> T {
    call.unwrap_or_else(|e| panic!("{what}: {e}")).into_inner()
}

/// The job `job_id` as the master has it now.
pub async fn get_job(jobs: &mut Jobs, job_id: &str) -> proto::Job {
    let job_id = job_id.to_owned();
    let call = jobs.get_job(proto::GetJobRequest { job_id }).await;
    answer(call, "GetJob")
}

/// The results of `job_id`: tasks, log names, the results dict, the job.
pub async fn get_results(jobs: &mut Jobs, job_id: &str) -> proto::JobResults {
    let job_id = job_id.to_owned();
    let call = jobs.get_results(proto::GetResultsRequest { job_id }).await;
    answer(call, "GetResults")
}

/// What a worker sends to report an attempt with no tasks: the header naming the job,
/// then `last`.
pub fn results_report(
    job_id: &str,
    attempt: u32,
    worker_id: &str,
    last: proto::FinalRecord,
) -> Vec<proto::ResultsMessage> {
    use proto::results_message::Message;
    vec![
        proto::ResultsMessage {
            message: Some(Message::Header(proto::ResultsHeader {
                job_id: job_id.to_owned(),
                attempt,
                worker_id: worker_id.to_owned(),
                ..Default::default()
            })),
        },
        proto::ResultsMessage {
            message: Some(Message::Final(last)),
        },
    ]
}

/// Asserts that a call was refused with `code`, its message saying `says`.
pub fn assert_refused(status: &tonic::Status, code: tonic::Code, says: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{}", status.message());
}

/// The jobs recorded RUNNING on `worker_id` (on any worker when it is empty).
pub async fn running_on(jobs: &mut Jobs, worker_id: &str) -> Vec<proto::Job> {
    let request = proto::ListJobsRequest {
        states: vec![JobState::Running as i32],
        worker_id: worker_id.to_owned(),
        ..Default::default()
    };
    answer(jobs.list_jobs(request).await, "ListJobs").jobs
}

/// The workers the master knows.
pub async fn list_workers(registry: &mut Registry) -> Vec<proto::WorkerInfo> {
    let call = registry.list_workers(proto::ListWorkersRequest {}).await;
    answer(call, "ListWorkers").workers
}

/// Whether `job` has ended (succeeded, failed, timed out, cancelled or dead).
pub fn has_ended(job: &proto::Job) -> bool {
    matches!(
        job.state(),
        JobState::Succeeded
            | JobState::Failed
            | JobState::TimedOut
            | JobState::Cancelled
            | JobState::Dead
    )
}

/// Polls until every job in `ids` has ended, or panics after `limit` showing the
/// ones that had not; the ended jobs by id.
pub async fn wait_ended(
    jobs: &mut Jobs,
    ids: &[String],
    limit: Duration,
) -> BTreeMap<String, proto::Job> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut ended = BTreeMap::new();
        let mut open = Vec::new();
        for id in ids {
            if let Ok(job) = jobs
                .get_job(proto::GetJobRequest { job_id: id.clone() })
                .await
            {
                let job = job.into_inner();
                if has_ended(&job) {
                    ended.insert(id.clone(), job);
                } else {
                    open.push(job);
                }
            }
        }
        if ended.len() == ids.len() {
            return ended;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} jobs ended within {limit:?}: {open:#?}",
            ended.len(),
            ids.len(),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`wait_ended`] for one job; the job as it ended.
pub async fn wait_job_ended(jobs: &mut Jobs, job_id: &str, limit: Duration) -> proto::Job {
    let mut ended = wait_ended(jobs, &[job_id.to_owned()], limit).await;
    ended.remove(job_id).expect("the job ended")
}

/// Polls until the job `job_id` is as `check` wants it, or panics after `limit` saying
/// that `what` did not happen.
pub async fn wait_job<F>(jobs: &Jobs, job_id: &str, what: &str, limit: Duration, check: F)
where
    F: Fn(&proto::Job) -> bool,
{
    wait_until(what, limit, || {
        let mut jobs = jobs.clone();
        let check = &check;
        async move { check(&get_job(&mut jobs, job_id).await) }
    })
    .await;
}

/// Waits until a worker registered `platform`: a probe for a variant nobody offers is
/// refused with the list of what the farm offers, which then names the platform.
pub async fn wait_offered(jobs: &Jobs, platform: &str, limit: Duration) {
    wait_until(&format!("a worker offering {platform}"), limit, || {
        let mut jobs = jobs.clone();
        async move {
            let probe = spec("probe", "1.0", platform, &["nothing"]);
            try_submit(&mut jobs, probe, false)
                .await
                .expect_err("nobody offers the variant `nothing`")
                .message()
                .contains(&format!("{platform}[]"))
        }
    })
    .await;
}

/// Waits until exactly `count` jobs are recorded RUNNING on `worker_id`.
pub async fn wait_running_on(jobs: &Jobs, worker_id: &str, count: usize, limit: Duration) {
    wait_until(
        &format!("{count} job(s) running on {worker_id}"),
        limit,
        || {
            let mut jobs = jobs.clone();
            async move { running_on(&mut jobs, worker_id).await.len() == count }
        },
    )
    .await;
}

/// Waits until the master holds `worker_id` as connected (its capacity stream is up).
pub async fn wait_connected(registry: &Registry, worker_id: &str, limit: Duration) {
    wait_until(&format!("{worker_id} connected"), limit, || {
        let mut registry = registry.clone();
        async move {
            list_workers(&mut registry)
                .await
                .iter()
                .any(|w| w.worker_id == worker_id && w.connected)
        }
    })
    .await;
}
