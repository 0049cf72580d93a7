//! What becomes of a job when an attempt ends or its lease lapses: pure decisions,
//! and the store transitions that record them. `jobs` applies them.

use pyti::proto::{JobState, Outcome};

use crate::store::{AttemptResults, JobRow, Millis, Transition, LIVE_STATES};

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
        Outcome::Deadline | Outcome::TaskTimeout => Finish::End(JobState::TimedOut),
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

/// The transition that records the results `report` of an attempt of `job`, whose fate they
/// decided: the job ends in a state, or goes back to QUEUED for its next attempt.
/// It applies from any live state: results are worth more than a lease that lapsed.
pub fn after_results(
    job: &JobRow,
    report: &AttemptResults,
    fate: Finish,
    at_ms: Millis,
) -> Transition {
    let mut transition = Transition::of(job, JobState::Queued, String::new(), at_ms);
    transition.from = LIVE_STATES.to_vec();
    transition.from_attempt = None;
    transition.lease_deadline_ms = None;
    transition.cancel_requested = false;
    match fate {
        Finish::End(state) => {
            transition.to = state;
            transition.outcome = report.outcome;
            transition.worker_id.clone_from(&report.worker_id);
            let error = if report.error.is_empty() {
                String::new()
            } else {
                format!(": {}", report.error)
            };
            transition.reason = format!(
                "results of attempt {} stored ({}){error}",
                report.attempt,
                report.outcome.as_str_name(),
            );
        }
        Finish::Retry => {
            transition.attempt = job.attempt.max(report.attempt) + 1;
            transition.worker_id = String::new();
            transition.lease_id = String::new();
            transition.outcome = Outcome::Unspecified;
            transition.reason = format!(
                "farm fault on {} ({}): {}; queued again",
                report.worker_id,
                report.outcome.as_str_name(),
                report.error
            );
        }
    }
    transition
}

/// The transition of a running `job` whose lease lapsed (see [`lapse`]).
pub fn after_lapse(job: &JobRow, max_attempts: u32, at_ms: Millis) -> Transition {
    let mut transition = Transition::of(job, JobState::Queued, String::new(), at_ms);
    transition.lease_deadline_ms = None;
    transition.cancel_requested = false;
    match lapse(job, max_attempts) {
        Finish::End(JobState::Cancelled) => {
            transition.to = JobState::Cancelled;
            transition.outcome = Outcome::Cancelled;
            transition.reason = format!("cancelled; {} stopped renewing its lease", job.worker_id);
        }
        Finish::End(state) => {
            transition.to = state;
            transition.outcome = Outcome::WorkerLost;
            transition.reason = format!(
                "lease lapsed on {} at attempt {} of {max_attempts}: dead",
                job.worker_id, job.attempt
            );
        }
        Finish::Retry => {
            transition.attempt = job.attempt + 1;
            transition.worker_id = String::new();
            transition.lease_id = String::new();
            transition.reason = format!("lease lapsed on {}; queued again", job.worker_id);
        }
    }
    transition
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
        // Attacks on the sandbox are the package's: final on the first attempt.
        for attack in [
            Outcome::SandboxTampering,
            Outcome::ResourceExhaustion,
            Outcome::TaskTimeout,
        ] {
            assert_ne!(finish(attack, 1, 3, false), Finish::Retry, "{attack:?}");
        }
        assert_eq!(
            finish(Outcome::TaskTimeout, 1, 3, false),
            Finish::End(JobState::TimedOut)
        );
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

    fn running_job() -> JobRow {
        JobRow {
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
            lease_id: String::new(),
            submitted_by: String::new(),
            history: vec![],
        }
    }

    #[test]
    fn lapsed_leases_retry_then_die() {
        let mut job = running_job();
        assert_eq!(lapse(&job, 2), Finish::Retry);
        job.attempt = 2;
        assert_eq!(lapse(&job, 2), Finish::End(JobState::Dead));
        job.cancel_requested = true;
        assert_eq!(lapse(&job, 2), Finish::End(JobState::Cancelled));
    }

    #[test]
    fn a_lapse_queues_the_next_attempt_or_ends_the_job() {
        let mut job = running_job();
        let again = after_lapse(&job, 2, 77);
        assert_eq!(
            (again.to, again.attempt, again.worker_id.as_str()),
            (JobState::Queued, 2, "")
        );
        assert_eq!(
            (again.from_attempt, again.lease_deadline_ms),
            (Some(1), None)
        );
        assert_eq!(again.at_ms, 77);
        assert_eq!(again.reason, "lease lapsed on w; queued again");
        job.attempt = 2;
        let dead = after_lapse(&job, 2, 78);
        assert_eq!(
            (dead.to, dead.outcome),
            (JobState::Dead, Outcome::WorkerLost)
        );
        assert_eq!(dead.reason, "lease lapsed on w at attempt 2 of 2: dead");
        job.cancel_requested = true;
        let cancelled = after_lapse(&job, 2, 79);
        assert_eq!(
            (cancelled.to, cancelled.outcome, cancelled.cancel_requested),
            (JobState::Cancelled, Outcome::Cancelled, false)
        );
    }

    #[test]
    fn results_end_the_job_or_queue_the_next_attempt() {
        let job = running_job();
        let report = AttemptResults {
            job_id: "j".into(),
            attempt: 1,
            worker_id: "w".into(),
            outcome: Outcome::VmBootFailed,
            results_json: String::new(),
            error: "no boot".into(),
            tasks: vec![],
            logs: vec![],
            stored_at_ms: 5,
        };
        let retry = after_results(&job, &report, Finish::Retry, 5);
        assert_eq!(
            (retry.to, retry.attempt, retry.outcome, retry.from_attempt),
            (JobState::Queued, 2, Outcome::Unspecified, None)
        );
        assert_eq!(retry.from, LIVE_STATES.to_vec());
        assert_eq!(
            retry.reason,
            "farm fault on w (OUTCOME_VM_BOOT_FAILED): no boot; queued again"
        );
        let end = after_results(&job, &report, Finish::End(JobState::Failed), 6);
        assert_eq!(
            (end.to, end.attempt, end.outcome, end.worker_id.as_str()),
            (JobState::Failed, 1, Outcome::VmBootFailed, "w")
        );
        assert_eq!(
            end.reason,
            "results of attempt 1 stored (OUTCOME_VM_BOOT_FAILED): no boot"
        );
    }
}
