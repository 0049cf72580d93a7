//! The seam between the master link and whatever runs a job: the worker's VM pipeline
//! (`manager`) in production; in the farm's own tests and benchmarks, an executor that
//! runs no VM but holds the same slot lease.

use std::future::Future;

use pyti::proto::{self, Outcome, QueuedJob};
use tokio_util::sync::CancellationToken;

use crate::stateofvm::SlotLease;

/// Everything one attempt of a job produced, as it goes to the master.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttemptReport {
    /// How the attempt ended. Farm faults (VM did not boot, deadline, disk error, ...)
    /// make the master retry the job; package faults end it.
    pub outcome: Outcome,
    /// One entry per task of the recipe (`job_id` and `attempt` are filled in by the
    /// master link).
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

/// Runs the jobs the master hands to this worker.
pub trait JobExecutor: Send + Sync + 'static {
    /// Whether the job can run here at all, beyond what its lease already proves (a
    /// ready slot of its platform, which offers its variants). `Err(reason)` gives the
    /// job back to the master, which places it elsewhere. Default: yes.
    fn can_run(&self, _job: &QueuedJob) -> Result<(), String> {
        Ok(())
    }

    /// Runs one attempt of `job` in the slot `lease` holds (taken, preparing, when the
    /// delivery was accepted) and reports what it produced. The executor walks the
    /// lease through the slot states and finishes it: `release` once the slot is rolled
    /// back, `mark_broken` when it cannot be (a lease dropped unfinished breaks its
    /// slot). When `cancel` fires (a user cancelled the job, or the master says it no
    /// longer runs here), stop and return soon, with `Outcome::Cancelled`.
    fn run(
        &self,
        job: QueuedJob,
        lease: SlotLease,
        cancel: CancellationToken,
    ) -> impl Future<Output = AttemptReport> + Send;
}
