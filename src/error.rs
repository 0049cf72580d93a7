//! The root crate's error type.

/// Errors of the shared model and configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Placeholder until the model lands.
    #[error("{0}")]
    Other(String),
}
