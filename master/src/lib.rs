//! pyti-master: takes job requests, stores them, queues them in RabbitMQ and
//! schedules them onto workers by the VM capacity they report.

pub mod broker;
pub mod capacity;
pub mod config;
pub mod convert;
pub mod dispatch;
pub mod error;
pub mod farm;
pub mod lifecycle;
pub mod pypi;
pub mod scheduler;
pub mod service;
pub mod store;

pub use error::{Error, Result};
pub use farm::{Farm, Settings};
