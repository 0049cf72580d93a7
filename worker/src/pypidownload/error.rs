//! Errors of the download step, each naming the project and what was asked, so
//! an operator reading a failed job can tell a typo from a broken index.

use std::path::PathBuf;

/// Everything that can go wrong while resolving and downloading a closure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The index has no page for the project.
    #[error(
        "project {project:?}{} was not found on the index {index} (check the spelling)",
        required_by.as_ref().map(|by| format!(" (required by {by})")).unwrap_or_default()
    )]
    ProjectNotFound {
        /// Normalised project name.
        project: String,
        /// Index URL or directory asked.
        index: String,
        /// The release that depends on it, when it is not the request itself.
        required_by: Option<String>,
    },

    /// No release matches the requested version.
    #[error(
        "project {project:?} has no version matching {requested:?}; nearest existing versions: {}",
        if nearest.is_empty() { "none".to_string() } else { nearest.join(", ") }
    )]
    VersionNotFound {
        /// Normalised project name.
        project: String,
        /// The version specifier that was asked.
        requested: String,
        /// Existing versions closest to the request.
        nearest: Vec<String>,
    },

    /// Matching releases exist but every one of their files is yanked (PEP 592).
    #[error(
        "project {project:?}: every file of the versions matching {requested:?} is yanked ({versions}); pin one with == to use it anyway"
    )]
    OnlyYanked {
        /// Normalised project name.
        project: String,
        /// The version specifier that was asked.
        requested: String,
        /// The yanked versions that matched.
        versions: String,
    },

    /// A release exists but none of its files installs on the target.
    #[error(
        "project {project:?} version {version}: no file for {target} (files: {}); no compatible wheel and no sdist",
        files.join(", ")
    )]
    NoFileForPlatform {
        /// Normalised project name.
        project: String,
        /// The release that was chosen.
        version: String,
        /// The target environment, e.g. `cp311 manylinux_2_36_x86_64`.
        target: String,
        /// The files that exist for that release.
        files: Vec<String>,
    },

    /// The requirements of the closure contradict each other.
    #[error("cannot resolve the dependencies of {request}: {explanation}")]
    ResolutionImpossible {
        /// The top-level request, e.g. `requests==2.32.3`.
        request: String,
        /// pubgrub's derivation, listing the conflicting requirements.
        explanation: String,
    },

    /// The index could not be reached (after retries) and the cache cannot answer.
    #[error("index {url} is unreachable while looking up project {project:?}: {reason}; nothing cached can answer instead")]
    IndexUnreachable {
        /// Normalised project name.
        project: String,
        /// The URL that failed.
        url: String,
        /// The last transport error.
        reason: String,
    },

    /// The index answered with an unexpected HTTP status.
    #[error("project {project:?}: {url} answered HTTP {status}")]
    HttpStatus {
        /// Normalised project name.
        project: String,
        /// The URL that failed.
        url: String,
        /// The HTTP status code.
        status: u16,
    },

    /// Downloaded bytes do not match the sha256 the index announced.
    #[error("project {project:?}: {file} has sha256 {actual} but the index says {expected}; the download was discarded")]
    HashMismatch {
        /// Normalised project name.
        project: String,
        /// File name.
        file: String,
        /// sha256 announced by the index.
        expected: String,
        /// sha256 of the bytes received.
        actual: String,
    },

    /// The index lists a file without a sha256, so its bytes cannot be verified.
    #[error(
        "project {project:?}: the index {index} gives no sha256 for {file}; refusing unverifiable bytes"
    )]
    MissingHash {
        /// The index URL.
        index: String,
        /// Normalised project name.
        project: String,
        /// File name.
        file: String,
    },

    /// A file name on a project page is not a plain file name (a path, `..`, empty).
    #[error("project {project:?}: the index {index} lists the file name {file:?}, which is {reason}; refusing the page (a hostile or broken index)")]
    UnsafeFileName {
        /// The index URL.
        index: String,
        /// Normalised project name.
        project: String,
        /// The file name as listed.
        file: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A file on a project page is not a wheel or sdist of that project.
    #[error("project {project:?}: the index {index} lists {file:?}, {reason}; refusing to use it")]
    ForeignFile {
        /// The index URL.
        index: String,
        /// Normalised project name.
        project: String,
        /// The file name as listed.
        file: String,
        /// Whose it is, or why it is no distribution name.
        reason: String,
    },

    /// A file URL leaves the index's scheme family (`file://` from an HTTP index).
    #[error("the index {index} points {file:?} at {url}: {reason}; refusing to fetch it")]
    UrlNotAllowed {
        /// The index URL.
        index: String,
        /// The file name.
        file: String,
        /// The URL it points at.
        url: String,
        /// Which indexes may give such a URL.
        reason: String,
    },

    /// The resolved set has more files than the budget allows.
    #[error("{request}: the resolved set has {files} files, more than the limit of {limit}; raise max_closure_files in [config] if this closure is genuine")]
    ClosureTooLarge {
        /// The request.
        request: String,
        /// Files in the set.
        files: usize,
        /// The limit.
        limit: usize,
    },

    /// The download step fetched more bytes than the budget allows.
    #[error("project {project:?}: downloading {file} passes the limit of {limit} bytes for one job (already {downloaded}); raise max_download_bytes in [config] if this closure is genuine")]
    DownloadTooLarge {
        /// Normalised project name.
        project: String,
        /// The file being downloaded.
        file: String,
        /// Bytes fetched so far, this file included.
        downloaded: u64,
        /// The limit.
        limit: u64,
    },

    /// Resolution and download took longer than the budget allows.
    #[error("{request}: resolving and downloading took longer than {limit_s} s; the index is too slow or the closure too large (max_resolution_s in [config])")]
    ResolutionTimeout {
        /// The request.
        request: String,
        /// The limit in seconds.
        limit_s: u64,
    },

    /// An sdist expands past the archive limits while it is read (a decompression bomb).
    #[error("project {project:?}: {file} is refused: {reason}")]
    ArchiveTooLarge {
        /// Normalised project name.
        project: String,
        /// File name.
        file: String,
        /// How far it got and which limit it passed.
        reason: String,
    },

    /// The project page of the index is malformed.
    #[error("project {project:?}: the index page {url} is not valid PEP 691 JSON: {reason}")]
    InvalidIndexPage {
        /// Normalised project name.
        project: String,
        /// Page URL.
        url: String,
        /// What is wrong.
        reason: String,
    },

    /// Core metadata or an sdist could not be read.
    #[error("project {project:?}: cannot read metadata of {file}: {reason}")]
    InvalidMetadata {
        /// Normalised project name.
        project: String,
        /// File name.
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// The request string is not `NAME`, `NAME==VERSION` or a PEP 508 requirement.
    #[error("invalid request {request:?}: {reason}")]
    InvalidRequest {
        /// The request as given.
        request: String,
        /// What is wrong.
        reason: String,
    },

    /// The target environment cannot be built from what was given.
    #[error("invalid target environment: {0}")]
    InvalidTarget(String),

    /// The index URL is neither http(s), file: nor a directory path.
    #[error("invalid index location {location:?}: {reason}")]
    InvalidIndex {
        /// What was configured.
        location: String,
        /// What is wrong.
        reason: String,
    },

    /// A local wheel or sdist given as the distribution under test cannot be used.
    #[error("local distribution {}: {reason}", path.display())]
    LocalDistribution {
        /// The file as given.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A file of the cache or the destination could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "writing cache file".
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },

    /// A bug or a panic inside this module.
    #[error("internal error: {0}")]
    Internal(String),

    /// Internal: the cache-only pass could not answer; the caller goes online.
    #[error("not in the cache: {0}")]
    NotCached(String),
}

impl Error {
    /// Wraps an I/O error with the action and path it concerns.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Whether retrying later could help (index down, transport failure).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::IndexUnreachable { .. } => true,
            Error::HttpStatus { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_project_and_the_request() {
        let error = Error::VersionNotFound {
            project: "rarfile".into(),
            requested: "==9.9".into(),
            nearest: vec!["4.2".into(), "4.1".into()],
        };
        let text = error.to_string();
        assert!(
            text.contains("\"rarfile\"") && text.contains("==9.9") && text.contains("4.2, 4.1")
        );
        let none = Error::VersionNotFound {
            project: "x".into(),
            requested: "==1".into(),
            nearest: vec![],
        };
        assert!(none.to_string().ends_with("none"));
    }

    #[test]
    fn only_transport_failures_are_transient() {
        let unreachable = Error::IndexUnreachable {
            project: "a".into(),
            url: "u".into(),
            reason: "r".into(),
        };
        assert!(unreachable.is_transient());
        let status = |status| Error::HttpStatus {
            project: "a".into(),
            url: "u".into(),
            status,
        };
        assert!(status(503).is_transient());
        assert!(!status(404).is_transient());
        assert!(!Error::InvalidTarget("x".into()).is_transient());
    }
}
