//! PyTI worker: runs jobs from the master in throw-away libvirt VMs on one host.

pub mod diskhandler;
