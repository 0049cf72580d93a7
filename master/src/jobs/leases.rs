//! Leases: a worker that starts a job holds it for a lease it renews; a lease that
//! lapses (the worker went quiet) puts the job back in its queue, or ends it.

use std::sync::Arc;

use pyti::proto::JobState;

use super::Jobs;
use crate::broker::QueueKind;
use crate::clock::millis;
use crate::convert;
use crate::error::{Error, Result};
use crate::lifecycle;
use crate::store::{JobRow, Millis, Transition};

/// Which attempt of which job a worker speaks of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKey {
    /// The worker.
    pub worker_id: String,
    /// The job.
    pub job_id: String,
    /// The attempt it holds.
    pub attempt: u32,
    /// The lease id its queue message carried.
    pub lease_id: String,
}

/// The answer to a worker that took a job off its queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Run it; the lease lapses at this time unless renewed.
    Proceed {
        /// When the lease lapses (ms since the epoch).
        lease_deadline_ms: Option<Millis>,
    },
    /// Do not run it, for this reason.
    Refuse(String),
}

/// The answer to a lease renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Renewal {
    /// The new deadline; `None` when the attempt no longer runs there.
    pub lease_deadline_ms: Option<Millis>,
    /// Stop the job: it was cancelled, or no longer runs this attempt there.
    pub cancelled: bool,
}

impl Jobs {
    /// Whether the worker of `key` holds that attempt of the job: the one it is
    /// assigned to, at its current attempt (or, when `starting`, a job not yet placed
    /// on any worker). A stale attempt is [`Error::StaleAttempt`], anything else
    /// [`Error::Denied`]; neither changes the job.
    pub async fn check_holder(&self, key: &LeaseKey, starting: bool) -> Result<()> {
        let job = self.job(&key.job_id).await?;
        if key.attempt < job.attempt {
            return Err(Error::StaleAttempt(format!(
                "attempt {} of job {} is stale: the job is on attempt {}; drop it",
                key.attempt, key.job_id, job.attempt
            )));
        }
        let unplaced = starting
            && job.worker_id.is_empty()
            && matches!(job.state, JobState::Submitted | JobState::Queued);
        let lease_held = job.lease_id.is_empty() || job.lease_id == key.lease_id;
        if key.attempt != job.attempt
            || !(job.worker_id == key.worker_id || unplaced)
            || !lease_held
        {
            return Err(Error::Denied(format!(
                "worker {} does not hold attempt {} of job {} (it is {} on {})",
                key.worker_id,
                key.attempt,
                key.job_id,
                job.state.as_str_name(),
                if job.worker_id.is_empty() {
                    "no worker"
                } else {
                    &job.worker_id
                }
            )));
        }
        Ok(())
    }

    fn lease_deadline(&self) -> Millis {
        self.runtime.now_ms() + millis(self.settings.lease)
    }

    /// A worker took a job off its queue: record RUNNING with a lease, or say why not.
    pub async fn start(&self, key: &LeaseKey) -> Result<Start> {
        for _ in 0..5 {
            let job = self.job(&key.job_id).await?;
            if job.attempt != key.attempt {
                return Ok(Start::Refuse(format!(
                    "attempt {} is stale: the job is on attempt {}",
                    key.attempt, job.attempt
                )));
            }
            if job.cancel_requested {
                return Ok(Start::Refuse("cancelled".to_owned()));
            }
            if let Some(answer) = self.try_start(&job, key).await? {
                return Ok(answer);
            }
        }
        Ok(Start::Refuse("the job kept changing state".to_owned()))
    }

    /// One try at starting `job` as it was read; `None` when it changed meanwhile.
    async fn try_start(&self, job: &JobRow, key: &LeaseKey) -> Result<Option<Start>> {
        let deadline = self.lease_deadline();
        match job.state {
            JobState::Submitted | JobState::Queued | JobState::Assigned => {
                let mut start = Transition::of(
                    job,
                    JobState::Running,
                    format!("started by {}", key.worker_id),
                    self.runtime.now_ms(),
                );
                start.worker_id.clone_from(&key.worker_id);
                start.lease_deadline_ms = Some(deadline);
                let Some(job) = self.transition(&start).await? else {
                    return Ok(None);
                };
                self.workers
                    .started(&key.worker_id, &job.job_id, &job.spec.platform_identifier);
                self.signals.wake();
                Ok(Some(Start::Proceed {
                    lease_deadline_ms: Some(deadline),
                }))
            }
            JobState::Running if job.worker_id == key.worker_id => {
                // A retried StartJob from the worker that runs it.
                let renewed = self
                    .store
                    .renew_lease(&job.job_id, job.attempt, &job.worker_id, deadline)
                    .await?;
                Ok(renewed.map(|job| Start::Proceed {
                    lease_deadline_ms: job.lease_deadline_ms,
                }))
            }
            JobState::Running => Ok(Some(Start::Refuse(format!(
                "already running on {}",
                job.worker_id
            )))),
            state => Ok(Some(Start::Refuse(format!(
                "job is {}",
                state.as_str_name()
            )))),
        }
    }

    /// Extends a running job's lease; tells the worker to stop when the job was
    /// cancelled or no longer runs this attempt there.
    pub async fn renew(&self, key: &LeaseKey) -> Result<Renewal> {
        let deadline = self.lease_deadline();
        let renewed = self
            .store
            .renew_lease(&key.job_id, key.attempt, &key.worker_id, deadline)
            .await?;
        Ok(match renewed {
            Some(job) => Renewal {
                lease_deadline_ms: Some(deadline),
                cancelled: job.cancel_requested,
            },
            None => {
                self.job(&key.job_id).await?;
                Renewal {
                    lease_deadline_ms: None,
                    cancelled: true,
                }
            }
        })
    }

    /// Every running job whose lease lapsed before `now`: queued again with the next
    /// attempt, dead past the attempt limit, cancelled if that was asked. Returns how
    /// many jobs it moved.
    pub async fn reap_lapsed_leases(&self, now: Millis) -> Result<usize> {
        let mut moved = 0;
        for job in self.store.lapsed_leases(now).await? {
            let transition = lifecycle::after_lapse(&job, self.settings.max_attempts, now);
            let Some(after) = self.transition(&transition).await? else {
                continue;
            };
            moved += 1;
            self.workers.forget(&after.job_id);
            tracing::warn!(job_id = %after.job_id, worker_id = %job.worker_id, state = after.state.as_str_name(), "Lease lapsed");
            match after.state {
                JobState::Queued => self.publish_to_platform(&after, &transition.reason).await?,
                JobState::Dead => {
                    let queue = self.broker.topology.dead_queue();
                    let message = convert::queued(&after, &transition.reason);
                    self.broker
                        .publish(&queue, QueueKind::Plain, &message)
                        .await?;
                }
                _ => {}
            }
        }
        if moved > 0 {
            self.signals.wake();
        }
        Ok(moved)
    }

    /// Reaps lapsed leases by the master's clock every `reap_interval` until shutdown.
    pub(crate) async fn reap_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.settings.reap_interval);
        loop {
            tokio::select! {
                () = self.runtime.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.reap_lapsed_leases(self.runtime.now_ms()).await {
                tracing::warn!(%error, "Looking for lapsed leases failed");
            }
        }
    }
}
