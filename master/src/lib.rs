//! pyti-master: takes job requests, stores them, queues them in RabbitMQ and
//! schedules them onto workers by the VM capacity they report.

pub mod broker;
pub mod clock;
pub mod config;
pub mod convert;
pub mod dispatch;
pub mod error;
pub mod jobs;
pub mod lifecycle;
pub mod master;
pub mod pypi;
pub mod runtime;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod tokens;
pub mod workers;

pub use error::{Error, Result};
pub use master::{Master, Settings};
