//! An attempt's results: stored with the job's transition in one store call, then
//! told to watchers; a farm fault with attempts left queues the job again.

use pyti::proto::Outcome;

use super::{JobEvent, Jobs};
use crate::error::Result;
use crate::lifecycle::{self, Finish};
use crate::store::{AttemptResults, StoreOutcome, TaskRow};

/// Everything a worker reported about one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultsReport {
    /// The job.
    pub job_id: String,
    /// The attempt.
    pub attempt: u32,
    /// The worker that ran it.
    pub worker_id: String,
    /// How it ended.
    pub outcome: Outcome,
    /// The whole results dict.
    pub results_json: String,
    /// Farm error in words (empty for none).
    pub error: String,
    /// Task results.
    pub tasks: Vec<TaskRow>,
    /// Logs: name → content.
    pub logs: Vec<(String, Vec<u8>)>,
}

/// What became of reported results (they are durable either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResultsStored {
    /// They had been stored before; nothing changed.
    pub duplicate: bool,
}

impl Jobs {
    /// Stores the results of one attempt and moves the job on; answers once they are
    /// durable.
    pub async fn record_results(&self, report: ResultsReport) -> Result<ResultsStored> {
        let job = self.job(&report.job_id).await?;
        let now = self.runtime.now_ms();
        let fate = lifecycle::finish(
            report.outcome,
            report.attempt,
            self.settings.max_attempts,
            job.cancel_requested,
        );
        let transition = lifecycle::after_results(&job, &report, fate, now);
        let results = AttemptResults {
            job_id: report.job_id,
            attempt: report.attempt,
            worker_id: report.worker_id,
            outcome: report.outcome,
            results_json: report.results_json,
            error: report.error,
            tasks: report.tasks,
            logs: report.logs,
            stored_at_ms: now,
        };
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
