//! pyti-master: takes job requests, stores them, queues them in RabbitMQ and
//! schedules them onto workers by the VM capacity they report.

pub mod config;
pub mod error;
pub mod service;

pub use error::{Error, Result};
