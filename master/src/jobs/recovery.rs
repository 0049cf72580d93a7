//! Jobs that lost their queue message: after the master restarted, after RabbitMQ came
//! back, and jobs a worker gave back (or that expired in a worker's queue).

use std::sync::Arc;
use std::time::Duration;

use pyti::proto::JobState;

use super::Jobs;
use crate::error::Result;
use crate::store::{JobFilter, JobRow, Transition, LIVE_STATES};

/// How long to wait before publishing again while RabbitMQ is away.
const REQUEUE_RETRY: Duration = Duration::from_secs(2);

impl Jobs {
    /// After a start: records where the store has jobs placed (assigned or running
    /// on a worker) in the capacity table, and returns the jobs the store has as
    /// waiting, for [`Jobs::requeue`]: a crash may have come between storing and
    /// publishing them (duplicates are dropped later).
    pub(crate) async fn recover(&self) -> Result<Vec<JobRow>> {
        let mut waiting = Vec::new();
        for job in self.all_in(&LIVE_STATES).await? {
            self.signals.want_platform(&job.spec.platform_identifier);
            let platform = &job.spec.platform_identifier;
            match job.state {
                JobState::Submitted | JobState::Queued => waiting.push(job),
                JobState::Assigned => self.workers.assign(&job.worker_id, &job.job_id, platform),
                JobState::Running => self.workers.started(&job.worker_id, &job.job_id, platform),
                _ => {}
            }
        }
        Ok(waiting)
    }

    /// Every job in one of `states`, newest first, read a page at a time.
    async fn all_in(&self, states: &[JobState]) -> Result<Vec<JobRow>> {
        let mut jobs = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .list_jobs(&JobFilter {
                    states: states.to_vec(),
                    limit: 1000,
                    before_job_id: before.clone(),
                    ..Default::default()
                })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.job_id.clone());
            jobs.extend(page);
        }
        Ok(jobs)
    }

    /// After RabbitMQ came back: a publish that failed while it was away left its job
    /// waiting with no message, so every waiting job is queued again (in a task).
    pub(crate) async fn requeue_all_waiting(self: &Arc<Self>) {
        match self.all_in(&[JobState::Submitted, JobState::Queued]).await {
            Ok(waiting) => self.runtime.spawn(Arc::clone(self).requeue(waiting)),
            Err(error) => tracing::warn!(%error, "Cannot list waiting jobs to queue them again"),
        }
    }

    /// Publishes `waiting` jobs to their platform queues, retrying while RabbitMQ is
    /// away, until done or shutdown.
    pub(crate) async fn requeue(self: Arc<Self>, waiting: Vec<JobRow>) {
        for job in waiting {
            while let Err(error) = self
                .publish_to_platform(&job, "queued again after a restart")
                .await
            {
                tracing::warn!(job_id = %job.job_id, %error, "Cannot queue a waiting job again; retrying");
                tokio::select! {
                    () = self.runtime.cancelled() => return,
                    () = tokio::time::sleep(REQUEUE_RETRY) => {}
                }
            }
            if job.state == JobState::Submitted {
                let queued =
                    Transition::of(&job, JobState::Queued, "queued", self.runtime.now_ms());
                if let Err(error) = self.transition(&queued).await {
                    tracing::warn!(job_id = %job.job_id, %error, "Queued job not recorded as such");
                }
            }
        }
    }

    /// A worker gave `attempt` of `job_id` back (or it expired in a worker's queue):
    /// queue the job for its platform again, and give that worker a pause from the
    /// platform. `Ok(false)` means the message was stale and is dropped.
    pub(crate) async fn handle_returned(&self, job_id: &str, attempt: u32) -> Result<bool> {
        let job = self.job(job_id).await?;
        if job.attempt != attempt
            || !matches!(
                job.state,
                JobState::Submitted | JobState::Queued | JobState::Assigned
            )
        {
            return Ok(false);
        }
        let given_by = job.worker_id.clone();
        let reason = if given_by.is_empty() {
            "given back by a worker".to_owned()
        } else {
            format!("given back by {given_by}")
        };
        let job = if job.state == JobState::Assigned {
            let mut back = Transition::of(
                &job,
                JobState::Queued,
                reason.clone(),
                self.runtime.now_ms(),
            );
            back.worker_id = String::new();
            match self.transition(&back).await? {
                Some(job) => job,
                None => return Ok(false),
            }
        } else {
            job
        };
        self.workers
            .given_back(&job.job_id, &given_by, &job.spec.platform_identifier);
        self.publish_to_platform(&job, &reason).await?;
        self.signals.wake();
        Ok(true)
    }
}
