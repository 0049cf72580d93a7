//! The seam between the farm protocol and whatever runs a job: the worker's VM
//! pipeline in production, an immediate result in benchmarks and tests.

use std::future::Future;

use pyti::proto::{self, Outcome, QueuedJob};
use tokio_util::sync::CancellationToken;

/// Everything one attempt of a job produced, as the runner hands it back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobReport {
    /// How the attempt ended. Farm faults (VM did not boot, deadline, disk error, ...)
    /// make the master retry the job; package faults end it.
    pub outcome: Outcome,
    /// One entry per task of the recipe (`job_id` and `attempt` are filled in by the
    /// farm module).
    pub tasks: Vec<proto::TaskResult>,
    /// Task logs: name (as in `TaskResult.log_name`) and content.
    pub logs: Vec<(String, Vec<u8>)>,
    /// The whole results dict as JSON.
    pub results_json: String,
    /// Farm error in words, when the outcome is a farm fault.
    pub error: String,
    /// Hash of the guest image used.
    pub image_hash: String,
    /// The guest's Python version.
    pub python_version: String,
    /// The version actually tested.
    pub resolved_version: String,
}

/// Runs jobs the farm hands to this worker.
pub trait JobRunner: Send + Sync + 'static {
    /// Whether the job can start now (a VM slot of its platform and variants is free).
    /// `Err(reason)` gives the job back to the master, which places it elsewhere. The
    /// farm module already checks the configured slots; this is for what only the
    /// runner knows (a broken slot, a missing image). Default: yes.
    fn can_run(&self, job: &QueuedJob) -> Result<(), String> {
        let _ = job;
        Ok(())
    }

    /// Runs one attempt of `job` to the end and reports what it produced. When
    /// `cancel` fires (a user cancelled the job, or the master says it no longer runs
    /// here), stop the VM and return soon, with `Outcome::Cancelled`.
    fn run(
        &self,
        job: QueuedJob,
        cancel: CancellationToken,
    ) -> impl Future<Output = JobReport> + Send;
}
