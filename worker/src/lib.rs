//! pyti-worker: runs PyTI jobs in libvirt VMs on one host and serves the
//! `WorkerControl` control plane.

pub mod config;
pub mod control;
pub mod error;
pub mod farm;

pub use error::{Error, Result};
