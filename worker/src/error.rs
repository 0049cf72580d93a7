//! The worker crate's error type.

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration or job model error from the shared crate.
    #[error(transparent)]
    Model(#[from] pyti::Error),
    /// A libvirt or VM operation failed.
    #[error(transparent)]
    Vm(#[from] crate::vms::VmError),
    /// The VM slot pool refused a change.
    #[error(transparent)]
    Slot(#[from] crate::stateofvm::SlotError),
    /// Building or finding a guest image failed.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Server reflection could not be set up.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
