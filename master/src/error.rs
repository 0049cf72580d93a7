//! The master crate's error type, and the one place it becomes a gRPC status.

use tonic::{Code, Status};

use crate::broker::BrokerError;
use crate::store::StoreError;

/// Errors of the master.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or job model error from the shared crate.
    #[error(transparent)]
    Model(#[from] pyti::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Server reflection could not be set up.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// RabbitMQ failed or refused.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// No job has this id.
    #[error("no job {0}")]
    JobNotFound(String),
    /// No registered worker offers what the job needs.
    #[error("no registered worker offers platform {requirement}; the farm offers: {}; set queue_without_capacity (pyti submit --queue-anyway) to queue it for workers yet to come", if offers.is_empty() { "nothing (no worker registered)".to_owned() } else { offers.join(", ") })]
    NoCapacity {
        /// `platform[variants]` as asked.
        requirement: String,
        /// What registered workers offer.
        offers: Vec<String>,
    },
    /// The package index does not know the project.
    #[error("project {project:?} is not on the package index {index}")]
    UnknownProject { project: String, index: String },
    /// The project has no release that could be tested.
    #[error("project {project:?} has no release that is neither yanked nor a pre-release on {index}; give project_version")]
    NoRelease { project: String, index: String },
    /// The package index could not be asked.
    #[error("cannot resolve the latest version of {project:?} from {url}: {message}")]
    IndexUnreachable {
        project: String,
        url: String,
        message: String,
    },
    /// The job ended already; nothing more can happen to it.
    #[error("job {job_id} has already ended ({state})")]
    JobEnded { job_id: String, state: String },
    /// No worker has this id.
    #[error("no registered worker {0}")]
    WorkerNotFound(String),
    /// A worker's control plane did not answer.
    #[error("worker {worker_id} at {address} did not answer: {message}")]
    WorkerUnreachable {
        worker_id: String,
        address: String,
        message: String,
    },
    /// A request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// TLS or token set-up failed.
    #[error("{0}")]
    Trust(String),
    /// The caller may not do this (to this job, as this worker).
    #[error("{0}")]
    Denied(String),
    /// A worker spoke of an attempt the job has left behind.
    #[error("{0}")]
    StaleAttempt(String),
    /// A request went past a limit.
    #[error("{0}")]
    TooLarge(String),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::Model(pyti::Error::JobInvalid { .. } | pyti::Error::JobSyntax { .. })
            | Error::BadRequest(_) => Code::InvalidArgument,
            Error::Model(_) | Error::Transport(_) | Error::Reflection(_) | Error::Trust(_) => {
                Code::Internal
            }
            Error::Denied(_) => Code::PermissionDenied,
            Error::StaleAttempt(_) => Code::FailedPrecondition,
            Error::TooLarge(_) => Code::ResourceExhausted,
            Error::Store(_) | Error::Broker(_) | Error::IndexUnreachable { .. } => {
                Code::Unavailable
            }
            Error::WorkerUnreachable { .. } => Code::Unavailable,
            Error::JobNotFound(_) | Error::UnknownProject { .. } | Error::WorkerNotFound(_) => {
                Code::NotFound
            }
            Error::NoCapacity { .. } | Error::NoRelease { .. } | Error::JobEnded { .. } => {
                Code::FailedPrecondition
            }
        };
        Status::new(code, error.to_string())
    }
}
