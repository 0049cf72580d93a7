//! An attempt's results: stored with the job's transition in one store call, then
//! told to watchers; a farm fault with attempts left queues the job again.

use super::{JobEvent, Jobs};
use crate::error::Result;
use crate::lifecycle::{self, Finish};
use crate::store::{AttemptResults, StoreOutcome};

/// What became of reported results (they are durable either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsStored {
    /// They had been stored before; nothing changed.
    pub duplicate: bool,
}

impl Jobs {
    /// Stores the results a worker reported for one attempt and moves the job on;
    /// answers once they are durable. `stored_at_ms` is set here, by the master's
    /// clock.
    pub async fn record_results(&self, mut results: AttemptResults) -> Result<ResultsStored> {
        let job = self.job(&results.job_id).await?;
        results.stored_at_ms = self.runtime.now_ms();
        let fate = lifecycle::finish(
            results.outcome,
            results.attempt,
            self.settings.max_attempts,
            job.cancel_requested,
        );
        let transition = lifecycle::after_results(&job, &results, fate, results.stored_at_ms);
        let job = match self.store.store_results(&results, &transition).await? {
            StoreOutcome::Duplicate => return Ok(ResultsStored { duplicate: true }),
            StoreOutcome::Stored(job) => *job,
        };
        self.workers.forget(&job.job_id);
        for task in results.tasks {
            self.announce(JobEvent::Task {
                job_id: job.job_id.clone(),
                attempt: results.attempt,
                task,
            });
        }
        self.announce(JobEvent::Job(job.clone()));
        if fate == Finish::Retry {
            if let Err(error) = self.publish_to_platform(&job, &transition.reason).await {
                tracing::error!(job_id = %job.job_id, %error, "Retry not queued; it will be at the next start");
            }
        }
        self.signals.wake();
        Ok(ResultsStored { duplicate: false })
    }
}
