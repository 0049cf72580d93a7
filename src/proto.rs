//! The generated `pyti.v1` protocol, included once and re-exported.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// Messages and services of `proto/pyti/v1`.
pub mod v1 {
    tonic::include_proto!("pyti.v1");
}

pub use v1::*;

/// The encoded file descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pyti_descriptor");
