//! The root crate's one error type: what can be wrong with a job or a config file.

use std::fmt;
use std::path::PathBuf;

/// One problem with one field of a job, e.g. `project_version: "4.x" is not a PEP 440 version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON key (or CLI argument) that is wrong.
    pub field: &'static str,
    /// What is wrong with it and, where possible, what to write instead.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Errors of the shared model and of configuration files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job file is not valid JSON.
    #[error("{source_name}: invalid JSON at line {line}, column {column}: {message}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    JobSyntax {
        /// File name or `<stdin>`.
        source_name: String,
        line: usize,
        column: usize,
        message: String,
        /// A suggestion, e.g. "JSON writes null in lower case: use null".
        hint: Option<String>,
    },
    /// The job is JSON but some fields are wrong; every one is listed.
    #[error("{source_name}: invalid job: {}", .errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    JobInvalid {
        /// File name, `<stdin>` or `<request>`.
        source_name: String,
        errors: Vec<FieldError>,
    },
    /// A configuration file could not be read.
    #[error("{}: cannot read configuration: {source}", path.display())]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is not valid INI.
    #[error("{}: not a valid INI file: {message}", path.display())]
    ConfigSyntax { path: PathBuf, message: String },
    /// A configuration value is wrong.
    #[error("{}: [{section}] {key}: {message}", path.display())]
    ConfigValue {
        path: PathBuf,
        section: String,
        key: String,
        message: String,
    },
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
