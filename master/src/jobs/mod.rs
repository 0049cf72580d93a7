//! Jobs and their leases: what users ask (submit, look at, list, watch, cancel,
//! results) and what workers tell (start, renew, results), over the store.
//!
//! [`Jobs`] is the one owner of job state: every change goes through
//! [`Jobs::transition`], which applies a conditional store transition and tells the
//! watchers. The rule that keeps it crash-safe: the store is changed first and a
//! message is published after; a crash in between is repaired at start-up by
//! publishing every job the store has as waiting (see `recovery`). Duplicate messages
//! that this can make are harmless, because every consumer of a message checks the
//! job's state and attempt in the store and drops what no longer matches.

mod leases;
mod recovery;
mod results;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use pyti::model::JobSpec;
use pyti::proto::{JobState, Outcome};
use tokio::sync::broadcast;

pub use leases::{LeaseKey, Renewal, Start};
pub use results::ResultsStored;
pub use watch::JobEvent;

use crate::broker::{Broker, QueueKind};
use crate::convert;
use crate::dispatch::DispatchSignals;
use crate::error::{Error, Result};
use crate::master::Settings;
use crate::runtime::Runtime;
use crate::store::{AttemptResults, JobFilter, JobRow, Store, Transition};
use crate::workers::Workers;

/// A job to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// What to test.
    pub spec: JobSpec,
    /// Queue it even when no registered worker offers its platform.
    pub queue_without_capacity: bool,
    /// A retried submission with the same key (scoped by the caller) gets the job
    /// the first one made; empty: none.
    pub idempotency_key: String,
    /// Who submits it ([`pyti::trust::Principal::owner`]): who may cancel it.
    pub submitted_by: String,
}

/// Which jobs `list` returns, one page at a time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Only these states (empty = all).
    pub states: Vec<JobState>,
    /// Only this project (empty = all).
    pub project_name: String,
    /// Only this worker (empty = all).
    pub worker_id: String,
    /// At most this many (0 = 50; at most 1000).
    pub page_size: u32,
    /// The previous page's `next_page_token` (empty = the first page).
    pub page_token: String,
}

/// One page of jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobRow>,
    /// Where the next page starts; empty at the end.
    pub next_page_token: String,
}

/// A job and the results of its latest stored attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct JobResults {
    /// The job now.
    pub job: JobRow,
    /// Its latest stored results, if any.
    pub stored: Option<AttemptResults>,
}

/// The job store's owner: state transitions, leases, results and their watchers.
pub struct Jobs {
    store: Arc<dyn Store>,
    broker: Broker,
    workers: Arc<Workers>,
    signals: DispatchSignals,
    runtime: Runtime,
    settings: Settings,
    events: broadcast::Sender<JobEvent>,
    http: reqwest::Client,
    /// Open `WatchJob` streams (at most [`watch::MAX_WATCHERS`]).
    watchers: Arc<std::sync::atomic::AtomicUsize>,
}

impl Jobs {
    /// Jobs over `store`, placed on `workers`.
    pub(crate) fn new(
        store: Arc<dyn Store>,
        broker: Broker,
        workers: Arc<Workers>,
        signals: DispatchSignals,
        runtime: Runtime,
        settings: &Settings,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("pyti-master/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::BadRequest(format!("HTTP client: {e}")))?;
        Ok(Self {
            store,
            broker,
            workers,
            signals,
            runtime,
            settings: settings.clone(),
            events: broadcast::channel(4096).0,
            http,
            watchers: Arc::default(),
        })
    }

    /// Applies a transition and tells watchers; `None` when its condition failed.
    async fn transition(&self, transition: &Transition) -> Result<Option<JobRow>> {
        let job = self.store.transition(transition).await?;
        if let Some(job) = &job {
            self.announce(JobEvent::Job(job.clone()));
        }
        Ok(job)
    }

    fn announce(&self, event: JobEvent) {
        // No watcher is fine.
        let _ = self.events.send(event);
    }

    /// Publishes `job` to its platform queue.
    async fn publish_to_platform(&self, job: &JobRow, reason: &str) -> Result<()> {
        self.signals.want_platform(&job.spec.platform_identifier);
        let queue = self
            .broker
            .topology
            .platform_queue(&job.spec.platform_identifier);
        self.broker
            .publish(&queue, QueueKind::Plain, &convert::queued(job, reason))
            .await?;
        Ok(())
    }

    /// Validates, stores and queues a job; answers once both are durable.
    pub async fn submit(&self, submission: Submission) -> Result<JobRow> {
        let Submission {
            spec,
            queue_without_capacity,
            idempotency_key,
            submitted_by,
        } = submission;
        if !queue_without_capacity {
            self.workers.check_offered(&spec)?;
        }
        let resolved_version = if spec.project_version.is_empty() {
            crate::pypi::resolve_latest(&self.http, &self.settings.index_url, &spec.project_name)
                .await?
        } else {
            String::new()
        };
        let now = self.runtime.now_ms();
        let job = JobRow {
            job_id: uuid::Uuid::now_v7().to_string(),
            spec,
            resolved_version,
            state: JobState::Submitted,
            attempt: 1,
            worker_id: String::new(),
            outcome: Outcome::Unspecified,
            submitted_at_ms: now,
            updated_at_ms: now,
            lease_deadline_ms: None,
            cancel_requested: false,
            lease_id: String::new(),
            submitted_by,
            history: Vec::new(),
        };
        if idempotency_key.is_empty() {
            self.store.insert_job(&job, "submitted").await?;
        } else if let Some(existing) = self
            .store
            .insert_job_once(&job, "submitted", &idempotency_key)
            .await?
        {
            // A retry of a submission that made its job already.
            return self.job(&existing).await;
        }
        self.announce(JobEvent::Job(job.clone()));
        if let Err(error) = self.publish_to_platform(&job, "submitted").await {
            let failed = Transition::of(
                &job,
                JobState::Failed,
                format!("could not be queued: {error}"),
                self.runtime.now_ms(),
            );
            self.transition(&failed).await?;
            return Err(error);
        }
        let queued = Transition::of(&job, JobState::Queued, "queued", self.runtime.now_ms());
        match self.transition(&queued).await? {
            Some(job) => Ok(job),
            // The dispatcher was quicker and assigned it already.
            None => self.job(&job.job_id).await,
        }
    }

    /// A job with its history.
    pub async fn job(&self, job_id: &str) -> Result<JobRow> {
        self.store
            .get_job(job_id)
            .await?
            .ok_or_else(|| Error::JobNotFound(job_id.to_owned()))
    }

    /// One page of jobs.
    pub async fn list(&self, query: &ListQuery) -> Result<JobPage> {
        let limit = match query.page_size {
            0 => 50,
            n => n.min(1000),
        };
        let before_job_id = if query.page_token.is_empty() {
            None
        } else if uuid::Uuid::parse_str(&query.page_token).is_ok() {
            Some(query.page_token.clone())
        } else {
            return Err(Error::BadRequest(format!(
                "page_token {:?} is not one a ListJobs answer gave",
                query.page_token
            )));
        };
        let mut jobs = self
            .store
            .list_jobs(&JobFilter {
                states: query.states.clone(),
                project_name: pyti::model::names::normalize_project_name(&query.project_name),
                worker_id: query.worker_id.clone(),
                limit: limit + 1,
                before_job_id,
            })
            .await?;
        let next_page_token = if jobs.len() > limit as usize {
            jobs.truncate(limit as usize);
            jobs.last().map(|j| j.job_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(JobPage {
            jobs,
            next_page_token,
        })
    }

    /// Cancels a job: a waiting one at once, a running one through its worker.
    pub async fn cancel(&self, job_id: &str, reason: &str) -> Result<JobRow> {
        let reason = if reason.is_empty() {
            "cancelled by a user"
        } else {
            reason
        };
        for _ in 0..5 {
            let job = self.job(job_id).await?;
            let now = self.runtime.now_ms();
            match job.state {
                JobState::Submitted | JobState::Queued | JobState::Assigned => {
                    let mut cancel = Transition::of(&job, JobState::Cancelled, reason, now);
                    cancel.outcome = Outcome::Cancelled;
                    if let Some(job) = self.transition(&cancel).await? {
                        self.workers.forget(job_id);
                        return Ok(job);
                    }
                }
                // Asked before: nothing changes, so nothing is recorded.
                JobState::Running if job.cancel_requested => return Ok(job),
                JobState::Running => {
                    let mut flag = Transition::of(
                        &job,
                        JobState::Running,
                        format!("cancel requested: {reason}"),
                        now,
                    );
                    flag.cancel_requested = true;
                    if let Some(job) = self.transition(&flag).await? {
                        let told = self
                            .workers
                            .cancel_job(&job.worker_id, job_id, reason)
                            .await;
                        if let Err(error) = told {
                            tracing::warn!(job_id, %error, "Worker not told to cancel; the lease will lapse");
                        }
                        return Ok(job);
                    }
                }
                state => {
                    return Err(Error::JobEnded {
                        job_id: job_id.to_owned(),
                        state: state.as_str_name().to_owned(),
                    })
                }
            }
        }
        Err(Error::BadRequest(format!(
            "job {job_id} kept changing state; try again"
        )))
    }

    /// A job with the results of its latest stored attempt.
    pub async fn results(&self, job_id: &str) -> Result<JobResults> {
        let job = self.job(job_id).await?;
        let stored = self.store.get_results(job_id).await?;
        Ok(JobResults { job, stored })
    }

    /// Records the dispatcher's choice of `worker_id` for `attempt` of `job_id`;
    /// `None` when the job no longer waits for it (cancelled, started, a stale or
    /// duplicate message). A job ASSIGNED already is assigned afresh only from a
    /// `redelivered` message: the master that assigned it died before acking it.
    pub(crate) async fn assign(
        &self,
        job_id: &str,
        attempt: u32,
        worker_id: &str,
        redelivered: bool,
    ) -> Result<Option<JobRow>> {
        let Some(job) = self.store.get_job(job_id).await? else {
            return Ok(None);
        };
        let placeable = match job.state {
            JobState::Submitted | JobState::Queued => true,
            JobState::Assigned => redelivered,
            _ => false,
        };
        if job.attempt != attempt || !placeable {
            return Ok(None);
        }
        if job.state == JobState::Assigned && job.worker_id != worker_id {
            self.workers.unassign(&job.worker_id, job_id);
        }
        let mut assign = Transition::of(
            &job,
            JobState::Assigned,
            format!("assigned to {worker_id}"),
            self.runtime.now_ms(),
        );
        assign.worker_id = worker_id.to_owned();
        assign.lease_id = uuid::Uuid::new_v4().simple().to_string();
        // SubmitJob may be recording QUEUED right now: both are fine to assign from.
        assign.from = vec![JobState::Submitted, JobState::Queued, job.state];
        self.transition(&assign).await
    }

    /// Puts an `assigned` job back to QUEUED: its message never reached the worker.
    pub(crate) async fn undo_assignment(&self, assigned: &JobRow, why: &str) {
        let mut back = Transition::of(
            assigned,
            JobState::Queued,
            format!("not assigned: {why}"),
            self.runtime.now_ms(),
        );
        back.worker_id = String::new();
        back.lease_id = String::new();
        if let Err(error) = self.transition(&back).await {
            tracing::warn!(job_id = %assigned.job_id, %error, "Assignment not undone; a redelivery will redo it");
        }
    }
}
