//! What workers tell the master about jobs, and what the master does when they go
//! quiet: start (lease), renew, results, lapsed leases, given-back jobs, and recovery
//! after the master itself restarted.

use std::collections::BTreeMap;
use std::sync::Arc;

use pyti::proto::{self, JobState, Outcome, QueuedJob};
use tokio_stream::{Stream, StreamExt};

use crate::broker::QueueKind;
use crate::convert::{self, now_ms};
use crate::error::{Error, Result};
use crate::farm::Farm;
use crate::store::{
    AttemptResults, JobFilter, JobRow, Millis, StoreOutcome, Transition, LIVE_STATES,
};

/// How long a worker that gave a job back gets no job of that platform.
pub const GIVE_BACK_PAUSE_MS: Millis = 5_000;

/// What becomes of a job whose attempt ended with `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The job ends in this state.
    End(JobState),
    /// A farm fault with attempts left: queue it again with the next attempt.
    Retry,
}

/// Decides a job's fate from the outcome of an attempt: farm faults are retried while
/// attempts remain, package faults never are.
pub fn finish(outcome: Outcome, attempt: u32, max_attempts: u32, cancel_requested: bool) -> Finish {
    if cancel_requested || outcome == Outcome::Cancelled {
        return Finish::End(JobState::Cancelled);
    }
    match outcome {
        Outcome::Passed => Finish::End(JobState::Succeeded),
        farm if farm.is_farm_fault() && attempt < max_attempts => Finish::Retry,
        Outcome::Deadline => Finish::End(JobState::TimedOut),
        _ => Finish::End(JobState::Failed),
    }
}

/// What becomes of a running job whose lease lapsed.
pub fn lapse(job: &JobRow, max_attempts: u32) -> Finish {
    if job.cancel_requested {
        Finish::End(JobState::Cancelled)
    } else if job.attempt >= max_attempts {
        Finish::End(JobState::Dead)
    } else {
        Finish::Retry
    }
}

/// Results gathered from one `ReportResults` stream.
#[derive(Debug, Default)]
struct Gathered {
    header: Option<proto::ResultsHeader>,
    tasks: Vec<proto::TaskResult>,
    logs: BTreeMap<String, BTreeMap<u64, Vec<u8>>>,
    last: Option<proto::FinalRecord>,
}

impl Farm {
    /// A worker took `job_id` off its queue: record RUNNING with a lease, or say why not.
    pub async fn start_job(
        &self,
        request: &proto::StartJobRequest,
    ) -> Result<proto::StartJobResponse> {
        let refuse = |reason: String| proto::StartJobResponse {
            proceed: false,
            reason,
            lease_deadline: None,
        };
        for _ in 0..5 {
            let job = self.job(&request.job_id).await?;
            if job.attempt != request.attempt {
                return Ok(refuse(format!(
                    "attempt {} is stale: the job is on attempt {}",
                    request.attempt, job.attempt
                )));
            }
            if job.cancel_requested {
                return Ok(refuse("cancelled".to_owned()));
            }
            let deadline = now_ms() + self.lease_ms();
            match job.state {
                JobState::Submitted | JobState::Queued | JobState::Assigned => {
                    let mut start = Transition::of(
                        &job,
                        JobState::Running,
                        format!("started by {}", request.worker_id),
                        now_ms(),
                    );
                    start.worker_id.clone_from(&request.worker_id);
                    start.lease_deadline_ms = Some(deadline);
                    if let Some(job) = self.transition(&start).await? {
                        self.table.lock().expect("table lock").started(
                            &request.worker_id,
                            &job.job_id,
                            &job.spec.platform_identifier,
                        );
                        self.wake_dispatcher.notify_one();
                        return Ok(proto::StartJobResponse {
                            proceed: true,
                            reason: String::new(),
                            lease_deadline: Some(convert::timestamp(deadline)),
                        });
                    }
                }
                JobState::Running if job.worker_id == request.worker_id => {
                    // A retried StartJob from the worker that runs it.
                    if let Some(job) = self
                        .store
                        .renew_lease(&job.job_id, job.attempt, &job.worker_id, deadline)
                        .await?
                    {
                        return Ok(proto::StartJobResponse {
                            proceed: true,
                            reason: String::new(),
                            lease_deadline: job.lease_deadline_ms.map(convert::timestamp),
                        });
                    }
                }
                JobState::Running => {
                    return Ok(refuse(format!("already running on {}", job.worker_id)))
                }
                state => return Ok(refuse(format!("job is {}", convert::state_name(state)))),
            }
        }
        Ok(refuse("the job kept changing state".to_owned()))
    }

    fn lease_ms(&self) -> Millis {
        i64::try_from(self.settings.lease.as_millis()).unwrap_or(i64::MAX)
    }

    /// Extends a running job's lease; tells the worker to stop when the job was
    /// cancelled or no longer runs this attempt there.
    pub async fn renew_lease(
        &self,
        request: &proto::RenewLeaseRequest,
    ) -> Result<proto::RenewLeaseResponse> {
        let deadline = now_ms() + self.lease_ms();
        let renewed = self
            .store
            .renew_lease(
                &request.job_id,
                request.attempt,
                &request.worker_id,
                deadline,
            )
            .await?;
        Ok(match renewed {
            Some(job) => proto::RenewLeaseResponse {
                lease_deadline: Some(convert::timestamp(deadline)),
                cancelled: job.cancel_requested,
            },
            None => {
                self.job(&request.job_id).await?;
                proto::RenewLeaseResponse {
                    lease_deadline: None,
                    cancelled: true,
                }
            }
        })
    }

    /// Stores the results a worker streams; answers once they are durable.
    pub async fn report_results(
        &self,
        mut stream: impl Stream<Item = std::result::Result<proto::ResultsMessage, tonic::Status>>
            + Unpin,
    ) -> Result<proto::ResultsAck> {
        use proto::results_message::Message;
        let mut gathered = Gathered::default();
        while let Some(message) = stream.next().await {
            let message = message
                .map_err(|s| Error::BadRequest(format!("results stream broke: {}", s.message())))?;
            match message.message {
                Some(Message::Header(header)) => gathered.header = Some(header),
                Some(Message::TaskResult(task)) => gathered.tasks.push(task),
                Some(Message::LogChunk(chunk)) => {
                    gathered
                        .logs
                        .entry(chunk.log_name)
                        .or_default()
                        .insert(chunk.offset, chunk.data);
                }
                Some(Message::Final(last)) => gathered.last = Some(last),
                None => {}
            }
        }
        let (Some(header), Some(last)) = (gathered.header, gathered.last) else {
            return Err(Error::BadRequest(
                "a results stream needs a header first and a final record last".to_owned(),
            ));
        };
        let job = self.job(&header.job_id).await?;
        let outcome = last.outcome();
        let now = now_ms();
        let results = AttemptResults {
            job_id: header.job_id.clone(),
            attempt: header.attempt,
            worker_id: header.worker_id.clone(),
            outcome,
            results_json: last.results_json,
            error: last.error.clone(),
            tasks: gathered.tasks.iter().map(convert::task_row).collect(),
            logs: gathered
                .logs
                .into_iter()
                .map(|(name, chunks)| (name, chunks.into_values().flatten().collect()))
                .collect(),
            stored_at_ms: now,
        };
        let fate = finish(
            outcome,
            header.attempt,
            self.settings.max_attempts,
            job.cancel_requested,
        );
        let mut transition = Transition::of(&job, JobState::Queued, String::new(), now);
        transition.from = LIVE_STATES.to_vec();
        transition.from_attempt = None;
        transition.lease_deadline_ms = None;
        transition.cancel_requested = false;
        match fate {
            Finish::End(state) => {
                transition.to = state;
                transition.outcome = outcome;
                transition.worker_id.clone_from(&header.worker_id);
                transition.reason = format!(
                    "results of attempt {} stored ({}){}",
                    header.attempt,
                    outcome.as_str_name(),
                    if last.error.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", last.error)
                    }
                );
            }
            Finish::Retry => {
                transition.attempt = job.attempt.max(header.attempt) + 1;
                transition.worker_id = String::new();
                transition.outcome = Outcome::Unspecified;
                transition.reason = format!(
                    "farm fault on {} ({}): {}; queued again",
                    header.worker_id,
                    outcome.as_str_name(),
                    last.error
                );
            }
        }
        let stored = self.store.store_results(&results, &transition).await?;
        let duplicate = match stored {
            StoreOutcome::Duplicate => true,
            StoreOutcome::Stored(job) => {
                self.table.lock().expect("table lock").forget(&job.job_id);
                for task in &gathered.tasks {
                    self.announce_task(&job.job_id, task.clone());
                }
                self.announce(&job);
                if fate == Finish::Retry {
                    if let Err(error) = self.publish_to_platform(&job, &transition.reason).await {
                        tracing::error!(job_id = %job.job_id, %error, "Retry not queued; it will be at the next start");
                    }
                }
                self.wake_dispatcher.notify_one();
                false
            }
        };
        Ok(proto::ResultsAck {
            job_id: header.job_id,
            attempt: header.attempt,
            stored: true,
            duplicate,
        })
    }

    /// Every running job whose lease lapsed before `now`: queued again with the next
    /// attempt, dead past the attempt limit, cancelled if that was asked. Returns how
    /// many jobs it moved.
    pub async fn reap_lapsed_leases(&self, now: Millis) -> Result<usize> {
        let mut moved = 0;
        for job in self.store.lapsed_leases(now).await? {
            let mut transition = Transition::of(&job, JobState::Queued, String::new(), now);
            transition.lease_deadline_ms = None;
            transition.cancel_requested = false;
            let fate = lapse(&job, self.settings.max_attempts);
            match fate {
                Finish::End(JobState::Cancelled) => {
                    transition.to = JobState::Cancelled;
                    transition.outcome = Outcome::Cancelled;
                    transition.reason =
                        format!("cancelled; {} stopped renewing its lease", job.worker_id);
                }
                Finish::End(state) => {
                    transition.to = state;
                    transition.outcome = Outcome::WorkerLost;
                    transition.reason = format!(
                        "lease lapsed on {} at attempt {} of {}: dead",
                        job.worker_id, job.attempt, self.settings.max_attempts
                    );
                }
                Finish::Retry => {
                    transition.attempt = job.attempt + 1;
                    transition.worker_id = String::new();
                    transition.reason = format!("lease lapsed on {}; queued again", job.worker_id);
                }
            }
            let Some(after) = self.transition(&transition).await? else {
                continue;
            };
            moved += 1;
            self.table.lock().expect("table lock").forget(&after.job_id);
            tracing::warn!(job_id = %after.job_id, worker_id = %job.worker_id, state = after.state.as_str_name(), "Lease lapsed");
            match after.state {
                JobState::Queued => self.publish_to_platform(&after, &transition.reason).await?,
                JobState::Dead => {
                    let queue = self.broker.topology.dead_queue();
                    self.broker
                        .publish(
                            &queue,
                            QueueKind::Plain,
                            &Farm::queued(&after, &transition.reason),
                        )
                        .await?;
                }
                _ => {}
            }
        }
        if moved > 0 {
            self.wake_dispatcher.notify_one();
        }
        Ok(moved)
    }

    /// Runs `reap_lapsed_leases` every `reap_interval` until shutdown.
    pub(crate) async fn reap_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.reap_interval);
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.reap_lapsed_leases(now_ms()).await {
                tracing::warn!(%error, "Looking for lapsed leases failed");
            }
        }
    }

    /// A worker gave `message` back (or it expired in a worker's queue): queue the job
    /// for its platform again. `Ok(false)` means the message was stale and is dropped.
    pub(crate) async fn handle_returned(&self, message: &QueuedJob) -> Result<bool> {
        let job = self.job(&message.job_id).await?;
        if job.attempt != message.attempt
            || !matches!(
                job.state,
                JobState::Submitted | JobState::Queued | JobState::Assigned
            )
        {
            return Ok(false);
        }
        let given_by = job.worker_id.clone();
        let reason = format!(
            "given back by {}",
            if given_by.is_empty() {
                "a worker"
            } else {
                &given_by
            }
        );
        let job = if job.state == JobState::Assigned {
            let mut back = Transition::of(&job, JobState::Queued, reason.clone(), now_ms());
            back.worker_id = String::new();
            match self.transition(&back).await? {
                Some(job) => job,
                None => return Ok(false),
            }
        } else {
            job
        };
        {
            let mut table = self.table.lock().expect("table lock");
            table.forget(&job.job_id);
            if !given_by.is_empty() {
                table.pause(
                    &given_by,
                    &job.spec.platform_identifier,
                    now_ms() + GIVE_BACK_PAUSE_MS,
                );
            }
        }
        self.publish_to_platform(&job, &reason).await?;
        self.wake_dispatcher.notify_one();
        Ok(true)
    }

    /// After a start: rebuilds the capacity table from registered workers and live
    /// jobs, and returns the jobs the store has as waiting: they are queued again (a
    /// crash may have come between storing and publishing; duplicates are dropped
    /// later) by [`Farm::requeue_waiting`].
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<Vec<JobRow>> {
        for worker in self.store.workers().await? {
            self.restore_worker(&worker);
        }
        let mut waiting = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .list_jobs(&JobFilter {
                    states: LIVE_STATES.to_vec(),
                    limit: 1000,
                    before_job_id: before.clone(),
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.job_id.clone());
            for job in page {
                self.want_platform(&job.spec.platform_identifier);
                let platform = job.spec.platform_identifier.clone();
                match job.state {
                    JobState::Submitted | JobState::Queued => waiting.push(job),
                    JobState::Assigned => {
                        self.table.lock().expect("table lock").assign(
                            &job.worker_id,
                            &job.job_id,
                            &platform,
                        );
                    }
                    JobState::Running => {
                        self.table.lock().expect("table lock").started(
                            &job.worker_id,
                            &job.job_id,
                            &platform,
                        );
                    }
                    _ => {}
                }
            }
        }
        Ok(waiting)
    }

    /// Every job the store has as waiting for a queue (SUBMITTED or QUEUED).
    pub(crate) async fn waiting_jobs(&self) -> Result<Vec<JobRow>> {
        let mut waiting = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .list_jobs(&JobFilter {
                    states: vec![JobState::Submitted, JobState::Queued],
                    limit: 1000,
                    before_job_id: before.clone(),
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.job_id.clone());
            waiting.extend(page);
        }
        Ok(waiting)
    }

    /// Publishes `waiting` jobs to their platform queues, retrying while RabbitMQ is
    /// away, until done or shutdown.
    pub(crate) async fn requeue_waiting(self: Arc<Self>, waiting: Vec<JobRow>) {
        for job in waiting {
            loop {
                let published = self
                    .publish_to_platform(&job, "queued again after a restart")
                    .await;
                match published {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(job_id = %job.job_id, %error, "Cannot queue a waiting job again; retrying");
                        tokio::select! {
                            () = self.shutdown.cancelled() => return,
                            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                        }
                    }
                }
            }
            if job.state == JobState::Submitted {
                let queued = Transition::of(&job, JobState::Queued, "queued", now_ms());
                if let Err(error) = self.transition(&queued).await {
                    tracing::warn!(job_id = %job.job_id, %error, "Queued job not recorded as such");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_faults_end_farm_faults_retry_until_the_limit() {
        assert_eq!(
            finish(Outcome::Passed, 1, 3, false),
            Finish::End(JobState::Succeeded)
        );
        assert_eq!(
            finish(Outcome::InstallFailed, 1, 3, false),
            Finish::End(JobState::Failed)
        );
        assert_eq!(
            finish(Outcome::HarmfulBehaviour, 1, 3, false),
            Finish::End(JobState::Failed)
        );
        assert_eq!(finish(Outcome::VmBootFailed, 1, 3, false), Finish::Retry);
        assert_eq!(
            finish(Outcome::VmBootFailed, 3, 3, false),
            Finish::End(JobState::Failed)
        );
        assert_eq!(finish(Outcome::Deadline, 2, 3, false), Finish::Retry);
        assert_eq!(
            finish(Outcome::Deadline, 3, 3, false),
            Finish::End(JobState::TimedOut)
        );
        assert_eq!(
            finish(Outcome::Passed, 1, 3, true),
            Finish::End(JobState::Cancelled)
        );
        assert_eq!(
            finish(Outcome::Cancelled, 1, 3, false),
            Finish::End(JobState::Cancelled)
        );
        assert_eq!(
            finish(Outcome::Unspecified, 1, 3, false),
            Finish::End(JobState::Failed)
        );
    }

    #[test]
    fn lapsed_leases_retry_then_die() {
        let mut job = JobRow {
            job_id: "j".into(),
            spec: pyti::model::JobSpec::from_requirement("x", None, None, &[]).unwrap(),
            resolved_version: String::new(),
            state: JobState::Running,
            attempt: 1,
            worker_id: "w".into(),
            outcome: Outcome::Unspecified,
            submitted_at_ms: 0,
            updated_at_ms: 0,
            lease_deadline_ms: Some(0),
            cancel_requested: false,
            history: vec![],
        };
        assert_eq!(lapse(&job, 2), Finish::Retry);
        job.attempt = 2;
        assert_eq!(lapse(&job, 2), Finish::End(JobState::Dead));
        job.cancel_requested = true;
        assert_eq!(lapse(&job, 2), Finish::End(JobState::Cancelled));
    }
}
