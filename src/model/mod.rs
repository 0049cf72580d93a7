//! Plain Rust types for what PyTI talks about, kept apart from the generated protocol
//! so business logic never handles prost structs; conversions live at the edge.

pub mod jobspec;
pub mod names;
pub mod outcome;

pub use crate::error::FieldError;
pub use jobspec::JobSpec;
pub use outcome::Outcome;
