//! PyTI's shared ground: the generated protocol, the job model, configuration
//! helpers and the gRPC plumbing every server uses.

pub mod amqp;
pub mod config;
pub mod error;
pub mod grpc;
pub mod model;
pub mod proto;
pub mod redact;
pub mod telemetry;
pub mod trust;

pub use error::Error;
