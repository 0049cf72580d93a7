//! The manager as the master link's [`JobExecutor`]: a job from the master's queue runs
//! through the same pipeline as `pyti-vm-run`, in the slot the link leased for it, and
//! what it produced becomes the [`AttemptReport`] for the master (protocol outcome,
//! task results, logs, the results dict).

use std::path::Path;

use pyti::model::JobSpec;
use pyti::proto::{self, Outcome, QueuedJob};
use pyti_guest::results::{Results, TaskStatus};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::{release_unused, JobRequest, Manager, RunError, RunReport};
use crate::masterlink::{AttemptReport, JobExecutor};
use crate::stateofvm::SlotLease;

/// Largest log sent to the master per task (the guest caps its logs too).
const MAX_LOG_BYTES: u64 = 8 << 20;

impl JobExecutor for Manager {
    async fn run(
        &self,
        job: QueuedJob,
        lease: SlotLease,
        cancel: CancellationToken,
    ) -> AttemptReport {
        let spec = match JobSpec::try_from(job.spec.clone().unwrap_or_default()) {
            Ok(spec) => spec,
            Err(error) => {
                release_unused(lease, &job.job_id);
                return AttemptReport {
                    outcome: Outcome::ResolutionFailed,
                    error: error.to_string(),
                    ..Default::default()
                };
            }
        };
        let request = JobRequest {
            job_id: job.job_id.clone(),
            attempt: job.attempt,
            spec,
            local_distribution: None,
        };
        let result = Manager::run(self, &request, lease, None, cancel).await;
        let report = match &result {
            Ok(run) => report_of_run(run),
            Err(error) => report_of_error(error),
        };
        let run_dir = self.config.root.join("runs").join(&job.job_id);
        match tokio::fs::remove_dir_all(&run_dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                warn!(job_id = %job.job_id, path = %run_dir.display(), %error, "The run directory could not be removed")
            }
        }
        report
    }
}

/// The master's report of a run that produced results.
pub fn report_of_run(run: &RunReport) -> AttemptReport {
    let results = &run.results;
    AttemptReport {
        outcome: results.outcome.into(),
        tasks: results.tasks.iter().map(task_result).collect(),
        logs: read_logs(&run.results_dir, results),
        results_json: serde_json::to_string(results).unwrap_or_default(),
        error: if results.outcome.is_farm_fault() {
            results.outcome_detail.clone()
        } else {
            String::new()
        },
        image_hash: results.platform.image_hash.clone().unwrap_or_default(),
        python_version: results.platform.python_version.clone().unwrap_or_default(),
        resolved_version: run.resolved.distribution.version.clone(),
    }
}

/// The master's report of a run that produced no results.
pub fn report_of_error(error: &RunError) -> AttemptReport {
    AttemptReport {
        outcome: error.outcome().into(),
        error: error.to_string(),
        ..Default::default()
    }
}

fn task_result(task: &pyti_guest::results::TaskResult) -> proto::TaskResult {
    let status = match task.status {
        TaskStatus::Passed => proto::TaskStatus::Passed,
        TaskStatus::Failed => proto::TaskStatus::Failed,
        TaskStatus::Error => proto::TaskStatus::Error,
        TaskStatus::Skipped => proto::TaskStatus::Skipped,
        TaskStatus::TimedOut => proto::TaskStatus::TimedOut,
    };
    proto::TaskResult {
        task: task.name.as_str().to_owned(),
        status: status as i32,
        duration_s: task.duration_s,
        metrics_json: task
            .metrics
            .as_ref()
            .and_then(|m| serde_json::to_string(m).ok())
            .unwrap_or_default(),
        log_name: task.log.clone().unwrap_or_default(),
        summary: task.message.clone(),
        ..Default::default()
    }
}

/// The task logs the results name, read from the run's results directory (already
/// copied off the IO disk under the reader's caps).
fn read_logs(results_dir: &Path, results: &Results) -> Vec<(String, Vec<u8>)> {
    let mut logs = Vec::new();
    for name in results.tasks.iter().filter_map(|t| t.log.as_deref()) {
        let path = results_dir.join(name);
        if !path.starts_with(results_dir) || name.contains("..") {
            continue;
        }
        // Never more than the cap in memory, however large the file is.
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&path).and_then(|file| {
            std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_LOG_BYTES), &mut bytes)
        });
        if read.is_ok() {
            logs.push((name.to_owned(), bytes));
        }
    }
    logs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_outcomes_by_fault() {
        let deadline = RunError::Deadline {
            seconds: 10,
            console_log: "c".into(),
        };
        assert_eq!(report_of_error(&deadline).outcome, Outcome::Deadline);
        assert!(report_of_error(&deadline).error.contains("10 s"));
        assert_eq!(
            report_of_error(&RunError::Cancelled).outcome,
            Outcome::Cancelled
        );
        let not_found = RunError::Download(crate::pypidownload::Error::ProjectNotFound {
            project: "x".into(),
            index: "i".into(),
            required_by: None,
        });
        assert_eq!(
            report_of_error(&not_found).outcome,
            Outcome::ResolutionFailed
        );
        let agent = RunError::AgentFailed {
            record: String::new(),
            console_log: "c".into(),
        };
        assert_eq!(report_of_error(&agent).outcome, Outcome::AgentError);
    }
}
