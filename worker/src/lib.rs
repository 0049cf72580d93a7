//! PyTI worker: runs jobs in throw-away libvirt VMs on one host.

pub mod image;
pub mod stateofvm;
pub mod vms;
