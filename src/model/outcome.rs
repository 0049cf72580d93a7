//! The protocol's `Outcome` is the wire form of the one outcome enum,
//! [`pyti_guest::outcome::Outcome`]: this is the only place the two meet.

pub use pyti_guest::outcome::Outcome;

use crate::proto;

impl From<Outcome> for proto::Outcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Passed => Self::Passed,
            Outcome::InstallFailed => Self::InstallFailed,
            Outcome::ImportFailed => Self::ImportFailed,
            Outcome::TestsFailed => Self::TestsFailed,
            Outcome::HarmfulBehaviour => Self::HarmfulBehaviour,
            Outcome::QualityFailed => Self::QualityFailed,
            Outcome::ResolutionFailed => Self::ResolutionFailed,
            Outcome::SuspiciousBehaviour => Self::SuspiciousBehaviour,
            Outcome::WroteOutsideEnvironment => Self::WroteOutsideEnvironment,
            Outcome::VmBootFailed => Self::VmBootFailed,
            Outcome::Deadline => Self::Deadline,
            Outcome::DiskError => Self::DiskError,
            Outcome::WorkerLost => Self::WorkerLost,
            Outcome::IndexUnreachable => Self::IndexUnreachable,
            Outcome::AgentError => Self::AgentError,
            Outcome::InputMismatch => Self::InputMismatch,
            Outcome::CpuUnsupported => Self::CpuUnsupported,
            Outcome::Cancelled => Self::Cancelled,
            Outcome::SandboxTampering => Self::SandboxTampering,
            Outcome::ResourceExhaustion => Self::ResourceExhaustion,
            Outcome::TaskTimeout => Self::TaskTimeout,
        }
    }
}

impl proto::Outcome {
    /// The domain outcome; `None` for `OUTCOME_UNSPECIFIED` (no outcome yet).
    pub fn domain(self) -> Option<Outcome> {
        Outcome::ALL
            .into_iter()
            .find(|o| proto::Outcome::from(*o) == self)
    }

    /// True for the farm's faults (see [`Outcome::is_farm_fault`]); an unspecified
    /// outcome is not one.
    pub fn is_farm_fault(self) -> bool {
        self.domain().is_some_and(Outcome::is_farm_fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_names_follow_the_domain_names() {
        for outcome in Outcome::ALL {
            let wire = proto::Outcome::from(outcome);
            assert_eq!(
                wire.as_str_name(),
                format!("OUTCOME_{}", outcome.as_str().to_uppercase()),
            );
            assert_eq!(wire.domain(), Some(outcome));
        }
    }

    #[test]
    fn every_protocol_outcome_but_unspecified_has_a_domain_outcome() {
        for value in 0..100 {
            let Ok(wire) = proto::Outcome::try_from(value) else {
                continue;
            };
            assert_eq!(
                wire.domain().is_none(),
                wire == proto::Outcome::Unspecified,
                "{wire:?}"
            );
        }
        assert!(!proto::Outcome::Unspecified.is_farm_fault());
        assert!(proto::Outcome::VmBootFailed.is_farm_fault());
    }
}
