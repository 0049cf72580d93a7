//! PyTI worker: the pieces that run jobs in throw-away VMs on one host.

pub mod pypidownload;
