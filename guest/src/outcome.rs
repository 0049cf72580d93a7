//! How a job ended: the one closed set of outcomes, shared by the guest (which decides
//! most of them), the worker (which adds what only the host sees) and the master
//! (which retries farm faults and never package faults).
//!
//! There used to be three lists (this enum, the protocol's, and the master's own list
//! of what to retry) and their names drifted; now the protocol's `Outcome` converts
//! from this one in exactly one place (`pyti::model::outcome`), a test there checks
//! that every name matches, and [`Outcome::is_farm_fault`] is the only list of farm
//! faults.

use serde::{Deserialize, Serialize};

/// How a job ended (stable snake_case strings in `results.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every task passed.
    Passed,
    /// Package: pip could not install it.
    InstallFailed,
    /// Package: a top-level module does not import.
    ImportFailed,
    /// Package: its own tests fail.
    TestsFailed,
    /// Package: the behaviour verdict is malicious.
    HarmfulBehaviour,
    /// Package: the quality checkers found problems over the recipe's threshold.
    #[serde(alias = "quality_issues")]
    QualityFailed,
    /// Package: the project, version or a dependency cannot be resolved (set by the host).
    ResolutionFailed,
    /// Package: the behaviour verdict is suspicious.
    SuspiciousBehaviour,
    /// Package: installing wrote files outside the environment.
    WroteOutsideEnvironment,
    /// Farm: the VM did not boot (set by the host).
    #[serde(alias = "vm_did_not_boot")]
    VmBootFailed,
    /// Farm: the whole VM ran past the platform's deadline before package code ran, or
    /// the host could not tell (a task past its own timeout is [`Outcome::TaskTimeout`]).
    Deadline,
    /// Farm: the IO disk or its job could not be read or written.
    DiskError,
    /// Farm: the worker went away mid-job (set by the master).
    WorkerLost,
    /// Farm: the package index could not be reached (set by the host).
    IndexUnreachable,
    /// Farm: the agent could not run a task or crashed.
    AgentError,
    /// Farm: an input file on the IO disk does not match its announced sha256.
    InputMismatch,
    /// Farm: the package met an instruction the guest CPU does not have (SIGILL); the
    /// platform's fault, naming the missing CPU features.
    CpuUnsupported,
    /// Nobody's fault: stopped on request.
    Cancelled,
    /// Package: it attacked the sandbox itself (powered the VM off or killed the agent
    /// while its code ran, forged or oversized the results, touched the IO disk or the
    /// power switch).
    SandboxTampering,
    /// Package: it exhausted the guest (a fork bomb at the process limit, a full disk,
    /// memory until the OOM killer).
    ResourceExhaustion,
    /// Package: a task ran past its own timeout (a hang in its code, not the farm's).
    TaskTimeout,
}

impl Outcome {
    /// Every outcome, in protocol order.
    pub const ALL: [Outcome; 21] = [
        Outcome::Passed,
        Outcome::InstallFailed,
        Outcome::ImportFailed,
        Outcome::TestsFailed,
        Outcome::HarmfulBehaviour,
        Outcome::QualityFailed,
        Outcome::ResolutionFailed,
        Outcome::SuspiciousBehaviour,
        Outcome::WroteOutsideEnvironment,
        Outcome::VmBootFailed,
        Outcome::Deadline,
        Outcome::DiskError,
        Outcome::WorkerLost,
        Outcome::IndexUnreachable,
        Outcome::AgentError,
        Outcome::InputMismatch,
        Outcome::CpuUnsupported,
        Outcome::Cancelled,
        Outcome::SandboxTampering,
        Outcome::ResourceExhaustion,
        Outcome::TaskTimeout,
    ];

    /// True for the farm's faults: retried, never counted against the package.
    pub fn is_farm_fault(self) -> bool {
        matches!(
            self,
            Outcome::VmBootFailed
                | Outcome::Deadline
                | Outcome::DiskError
                | Outcome::WorkerLost
                | Outcome::IndexUnreachable
                | Outcome::AgentError
                | Outcome::InputMismatch
                | Outcome::CpuUnsupported
        )
    }

    /// True for the package's own faults: final, never retried.
    pub fn is_package_fault(self) -> bool {
        !matches!(self, Outcome::Passed | Outcome::Cancelled) && !self.is_farm_fault()
    }

    /// The stable name (`passed`, `vm_boot_failed`, ...), as in `results.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::InstallFailed => "install_failed",
            Outcome::ImportFailed => "import_failed",
            Outcome::TestsFailed => "tests_failed",
            Outcome::HarmfulBehaviour => "harmful_behaviour",
            Outcome::QualityFailed => "quality_failed",
            Outcome::ResolutionFailed => "resolution_failed",
            Outcome::SuspiciousBehaviour => "suspicious_behaviour",
            Outcome::WroteOutsideEnvironment => "wrote_outside_environment",
            Outcome::VmBootFailed => "vm_boot_failed",
            Outcome::Deadline => "deadline",
            Outcome::DiskError => "disk_error",
            Outcome::WorkerLost => "worker_lost",
            Outcome::IndexUnreachable => "index_unreachable",
            Outcome::AgentError => "agent_error",
            Outcome::InputMismatch => "input_mismatch",
            Outcome::CpuUnsupported => "cpu_unsupported",
            Outcome::Cancelled => "cancelled",
            Outcome::SandboxTampering => "sandbox_tampering",
            Outcome::ResourceExhaustion => "resource_exhaustion",
            Outcome::TaskTimeout => "task_timeout",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        for outcome in Outcome::ALL {
            assert_eq!(
                serde_json::to_value(outcome).unwrap(),
                serde_json::Value::String(outcome.as_str().to_owned())
            );
        }
    }

    #[test]
    fn every_outcome_is_exactly_one_of_farm_package_or_neither() {
        let farm: Vec<Outcome> = Outcome::ALL
            .into_iter()
            .filter(|o| o.is_farm_fault())
            .collect();
        assert_eq!(
            farm,
            vec![
                Outcome::VmBootFailed,
                Outcome::Deadline,
                Outcome::DiskError,
                Outcome::WorkerLost,
                Outcome::IndexUnreachable,
                Outcome::AgentError,
                Outcome::InputMismatch,
                Outcome::CpuUnsupported,
            ]
        );
        for outcome in Outcome::ALL {
            assert!(!(outcome.is_farm_fault() && outcome.is_package_fault()));
        }
        assert!(!Outcome::Passed.is_package_fault());
        assert!(!Outcome::Cancelled.is_package_fault());
        for attack in [
            Outcome::SandboxTampering,
            Outcome::ResourceExhaustion,
            Outcome::TaskTimeout,
        ] {
            assert!(attack.is_package_fault(), "{attack}");
        }
    }

    #[test]
    fn old_names_still_read() {
        let old: Outcome = serde_json::from_str("\"quality_issues\"").unwrap();
        assert_eq!(old, Outcome::QualityFailed);
        let old: Outcome = serde_json::from_str("\"vm_did_not_boot\"").unwrap();
        assert_eq!(old, Outcome::VmBootFailed);
    }
}
