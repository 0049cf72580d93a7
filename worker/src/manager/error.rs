//! Why a job run produced no results, sorted into whose fault it is: the farm's
//! (retried, never blamed on the package), the package's or request's (never retried),
//! or nobody's (cancelled).

use std::path::{Path, PathBuf};

use pyti_guest::outcome::Outcome;

use crate::diskhandler;
use crate::image::ImageError;
use crate::pypidownload;
use crate::stateofvm::SlotError;
use crate::vms::VmError;

/// Whose fault a failed run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The farm failed (VM, disk, index unreachable, agent): retry elsewhere.
    Farm,
    /// What was asked cannot be tested (no such project or version, no file for the
    /// platform, unsatisfiable dependencies): retrying changes nothing.
    Package,
    /// The request names something this worker does not offer (recipe, platform).
    Request,
    /// Stopped on request.
    Cancelled,
}

/// Errors of one job run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Resolving or downloading from the index failed.
    #[error(transparent)]
    Download(#[from] pypidownload::Error),
    /// Writing or reading the IO disk failed.
    #[error(transparent)]
    Disk(#[from] diskhandler::Error),
    /// A libvirt operation failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// The VM could not be started.
    #[error("the VM did not start: {0}")]
    Boot(#[source] VmError),
    /// The guest image is missing or could not be built.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The VM slot pool refused.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The job for the guest could not be made.
    #[error(transparent)]
    Job(#[from] pyti_guest::job::JobError),
    /// The recipe is unknown or invalid.
    #[error(transparent)]
    Recipe(#[from] pyti_guest::recipe::RecipeError),
    /// What the guest wrote is not a valid results dict.
    #[error("the guest's results.json was refused: {0}")]
    Results(#[from] pyti_guest::results::ResultsError),
    /// A host file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The VM ran past the platform's wall-time limit and was destroyed.
    #[error("the VM did not power off within {seconds} s and was destroyed (guest console: {})", console_log.display())]
    Deadline {
        /// The limit (`run_timeout_s`).
        seconds: u32,
        /// The guest's console log.
        console_log: PathBuf,
    },
    /// The VM powered off without ever starting the agent (a boot failure).
    #[error("the VM powered off before the agent started (guest console: {})", console_log.display())]
    NoAgent {
        /// The guest's console log.
        console_log: PathBuf,
    },
    /// The agent ended without writing results.
    #[error("the guest agent wrote no results: {record} (guest console: {})", console_log.display())]
    AgentFailed {
        /// The init's agent-error record, if any.
        record: String,
        /// The guest's console log.
        console_log: PathBuf,
    },
    /// The package attacked the sandbox: the VM went off or the agent ended while
    /// package code ran, or the results or the console carry what the agent did not
    /// write. A package fault, never retried.
    #[error("sandbox tampering: {detail} (guest console: {})", console_log.display())]
    Tampering {
        /// What the host saw.
        detail: String,
        /// The guest's console log.
        console_log: PathBuf,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// No platform of that name on this worker.
    #[error("this worker offers no platform {platform:?} (it offers: {})", offered.join(", "))]
    UnknownPlatform {
        /// The platform asked for.
        platform: String,
        /// What the worker offers.
        offered: Vec<String>,
    },
    /// The platform lacks variants the job asks for.
    #[error("platform {platform} does not offer the variants {} (it offers: {})", missing.join(", "), if offered.is_empty() { "none".to_owned() } else { offered.join(", ") })]
    UnknownVariants {
        /// The platform.
        platform: String,
        /// Variants asked for and not offered.
        missing: Vec<String>,
        /// Variants the platform offers.
        offered: Vec<String>,
    },
    /// The VM of a slot could not be removed: the slot is broken.
    #[error("rolling back VM slot {slot} failed: {detail}")]
    Rollback {
        /// The slot.
        slot: String,
        /// What failed.
        detail: String,
    },
    /// The platform has no guest image (libvirt's test driver boots nothing).
    #[error("platform {platform} runs on {hypervisor}, which boots no guest: it cannot run jobs")]
    NoImage {
        /// The platform.
        platform: String,
        /// Its hypervisor URI.
        hypervisor: String,
    },
    /// A background task failed.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RunError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// The outcome a run that ended with this error has: the one taxonomy decides
    /// whose fault it is.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Cancelled => Outcome::Cancelled,
            // A download that failed on the farm's side (the index, the cache, a
            // corrupted transfer) is retried; anything else is what was asked.
            Self::Download(e) if e.is_transient() => Outcome::IndexUnreachable,
            Self::Download(
                pypidownload::Error::Io { .. }
                | pypidownload::Error::Internal(_)
                | pypidownload::Error::HashMismatch { .. },
            ) => Outcome::IndexUnreachable,
            Self::Download(_) => Outcome::ResolutionFailed,
            Self::Deadline { .. } => Outcome::Deadline,
            Self::Tampering { .. } => Outcome::SandboxTampering,
            Self::Boot(_) | Self::NoAgent { .. } | Self::Image(_) => Outcome::VmBootFailed,
            Self::Disk(_) | Self::Io { .. } => Outcome::DiskError,
            _ => Outcome::AgentError,
        }
    }

    /// Whose fault this is.
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Recipe(_) | Self::UnknownPlatform { .. } | Self::UnknownVariants { .. } => {
                FailureKind::Request
            }
            _ => match self.outcome() {
                Outcome::Cancelled => FailureKind::Cancelled,
                farm if farm.is_farm_fault() => FailureKind::Farm,
                _ => FailureKind::Package,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampering_is_the_package_s_fault_and_an_agent_failure_the_farm_s() {
        let console_log = PathBuf::from("console.log");
        let tampering = RunError::Tampering {
            detail: "the VM powered off while task install ran package code".into(),
            console_log: console_log.clone(),
        };
        assert_eq!(tampering.outcome(), Outcome::SandboxTampering);
        assert_eq!(tampering.kind(), FailureKind::Package);
        let agent = RunError::AgentFailed {
            record: String::new(),
            console_log,
        };
        assert_eq!(agent.kind(), FailureKind::Farm);
    }
}
