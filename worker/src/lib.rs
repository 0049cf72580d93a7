//! pyti-worker: runs PyTI jobs in throw-away libvirt VMs on one host and serves the
//! `WorkerControl` control plane.

pub mod capacity;
pub mod config;
pub mod control;
pub mod diskhandler;
pub mod error;
pub mod image;
pub mod manager;
pub mod masterlink;
pub mod progress;
pub mod pypidownload;
pub mod stateofvm;
pub mod summary;
pub mod vms;

pub use error::{Error, Result};
