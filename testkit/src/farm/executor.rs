//! The executor of test workers: it runs no VM, but holds a real slot lease and walks
//! it through the states a VM run takes, so capacity, draining and cancelling behave
//! as in production.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyti::proto::{self, Outcome, QueuedJob};
use pyti_worker::masterlink::{AttemptReport, JobExecutor};
use pyti_worker::stateofvm::SlotLease;
use tokio_util::sync::CancellationToken;

/// One run of a test executor: which worker ran which attempt of which job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub worker_id: String,
    pub job_id: String,
    pub attempt: u32,
}

/// The runs of every test worker that shares it, in the order they began.
#[derive(Debug, Clone, Default)]
pub struct Runs(Arc<Mutex<Vec<RunRecord>>>);

impl Runs {
    /// The runs so far.
    pub fn list(&self) -> Vec<RunRecord> {
        self.0.lock().expect("runs lock").clone()
    }

    fn push(&self, run: RunRecord) {
        self.0.lock().expect("runs lock").push(run);
    }
}

/// What a test worker does with the jobs it is handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Waits this long (or until cancelled), then reports the job passed.
    RunFor(Duration),
    /// Gives back every job, as a worker whose VMs all broke would.
    Refuse,
}

/// The executor of a test worker.
pub(crate) struct TestExecutor {
    pub(crate) worker_id: String,
    pub(crate) behaviour: Behaviour,
    pub(crate) runs: Runs,
    /// Bytes of padding in each results dict (to test large results).
    pub(crate) results_padding: usize,
}

impl TestExecutor {
    fn duration(&self) -> Duration {
        match self.behaviour {
            Behaviour::RunFor(duration) => duration,
            Behaviour::Refuse => Duration::ZERO,
        }
    }

    /// What the run reports: one passed install task with its log, or cancelled.
    fn report(&self, job: QueuedJob, cancelled: bool) -> AttemptReport {
        let spec = job.spec.unwrap_or_default();
        AttemptReport {
            outcome: if cancelled {
                Outcome::Cancelled
            } else {
                Outcome::Passed
            },
            tasks: vec![proto::TaskResult {
                task: "install".into(),
                status: proto::TaskStatus::Passed as i32,
                duration_s: self.duration().as_secs_f64(),
                metrics_json: "{}".into(),
                log_name: "install.log".into(),
                summary: format!("ran on {}", self.worker_id),
                ..Default::default()
            }],
            logs: vec![(
                "install.log".into(),
                format!("installed {} on {}\n", spec.project_name, self.worker_id).into_bytes(),
            )],
            results_json: format!(
                "{{\"version\":1,\"worker\":\"{}\",\"padding\":\"{}\"}}",
                self.worker_id,
                "x".repeat(self.results_padding)
            ),
            resolved_version: spec.project_version,
            ..Default::default()
        }
    }
}

impl JobExecutor for TestExecutor {
    fn can_run(&self, _job: &QueuedJob) -> Result<(), String> {
        match self.behaviour {
            Behaviour::Refuse => Err("every VM of this test worker is broken".to_owned()),
            Behaviour::RunFor(_) => Ok(()),
        }
    }

    async fn run(
        &self,
        job: QueuedJob,
        lease: SlotLease,
        cancel: CancellationToken,
    ) -> AttemptReport {
        self.runs.push(RunRecord {
            worker_id: self.worker_id.clone(),
            job_id: job.job_id.clone(),
            attempt: job.attempt,
        });
        lease.running().unwrap();
        let cancelled = tokio::select! {
            () = cancel.cancelled() => true,
            () = tokio::time::sleep(self.duration()) => false,
        };
        if !cancelled {
            lease.collecting().unwrap();
        }
        lease.rolling_back().unwrap();
        lease.release().unwrap();
        self.report(job, cancelled)
    }
}
