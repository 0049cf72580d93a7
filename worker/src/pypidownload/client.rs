//! The thin shell that talks to an index: PyPI, a mirror, or a local directory.
//!
//! Everything it fetches passes through the [`Cache`]: project pages are stored after
//! each fetch so that a later run can resolve with the index unreachable; metadata and
//! distribution files are stored by content hash after their sha256 was checked, so
//! they are fetched at most once per worker. In [`Mode::CacheOnly`] nothing touches the
//! network and a miss is reported as [`Error::NotCached`]. When the configured index
//! cannot answer, a page cached from any index stands in (files stay verified by the
//! sha256 it lists). Concurrent requests for the same page, metadata or file are
//! answered by one fetch.
//!
//! A local index is a directory laid out like the JSON simple API:
//! `<dir>/<normalized-name>/index.json` holds the PEP 691 page, whose file URLs are
//! relative to that `index.json` (usually just the file name, stored next to it) or
//! absolute; `<file>.metadata` next to a file serves PEP 658 metadata when the page says
//! `"core-metadata"`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use pyti_guest::digest::{self, sha256_hex};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{OnceCell, Semaphore};
use url::Url;

use super::archive::{self, ArchiveError};
use super::budget::Budgets;
use super::cache::Cache;
use super::error::{Error, Result};
use super::index::{normalize_name, FileKind, IndexFile, ProjectPage, SIMPLE_JSON};

/// Largest project page or metadata file read from an index.
const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// Why `name` is not a plain file name, if it is not: it is joined into host paths.
pub fn unsafe_file_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name.starts_with('/') || name.starts_with('\\') {
        Some("an absolute path")
    } else if name.contains('/') || name.contains('\\') {
        Some("a path, not a file name")
    } else if name == "." || name == ".." || name.starts_with('.') {
        Some("a dot file or a parent directory")
    } else if name.chars().any(|c| c.is_control()) {
        Some("a name with control characters")
    } else if name.len() > 255 {
        Some("longer than 255 bytes")
    } else {
        None
    }
}

/// PyPI's JSON simple index.
pub const PYPI_SIMPLE: &str = "https://pypi.org/simple";

/// Whether the network may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fetch pages fresh (falling back to cached pages when the index is unreachable);
    /// fetch missing metadata and files.
    Online,
    /// Answer from the cache only.
    CacheOnly,
}

/// How transient failures are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in total, at least one.
    pub attempts: u32,
    /// Delay before the second attempt; doubles each time.
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Four attempts, 250 ms then 500 ms then 1 s apart.
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(250),
        }
    }
}

/// Where the index lives.
#[derive(Debug, Clone)]
enum Location {
    Http(Url),
    Directory(Url),
}

/// What a fetch of one URL produced.
enum Fetched {
    Found(Vec<u8>),
    NotFound,
}

/// Core metadata of one file, with where it came from.
#[derive(Debug, Clone)]
pub struct FileMetadata {
    /// The metadata text.
    pub text: String,
    /// Whether it was read from an sdist's `PKG-INFO`.
    pub from_sdist: bool,
}

/// One answer per key, computed once even when several tasks ask at the same time (the
/// resolver and its prefetches often want the same page or file together). Failures are
/// not remembered, so a later call tries again.
#[derive(Debug)]
struct InFlight<T> {
    cells: Mutex<HashMap<String, Arc<OnceCell<T>>>>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            cells: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> InFlight<T> {
    async fn get_or_try_init<F: std::future::Future<Output = Result<T>>>(
        &self,
        key: &str,
        init: impl FnOnce() -> F,
    ) -> Result<T> {
        let cell = self
            .cells
            .lock()
            .expect("not poisoned")
            .entry(key.to_string())
            .or_default()
            .clone();
        cell.get_or_try_init(init).await.cloned()
    }
}

/// A client for one index, sharing one cache.
#[derive(Debug)]
pub struct IndexClient {
    location: Location,
    index_key: String,
    http: reqwest::Client,
    cache: Cache,
    mode: Mode,
    retry: RetryPolicy,
    downloads: Semaphore,
    /// `None` remembers that the index has no such project (a 404 is an answer).
    pages: InFlight<Option<Arc<ProjectPage>>>,
    metadata: InFlight<FileMetadata>,
    blobs: InFlight<PathBuf>,
    stale_pages: Mutex<Vec<String>>,
    fetched: Mutex<std::collections::HashSet<String>>,
    budgets: Budgets,
    /// Bytes fetched by this client (files and archives), against `budgets.max_bytes`.
    downloaded: AtomicU64,
}

impl IndexClient {
    /// A client for `index` (an http(s) URL, a `file:` URL or a directory path).
    pub fn new(index: &str, cache: Cache, mode: Mode, parallel_downloads: usize) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidIndex {
            location: index.to_string(),
            reason,
        };
        let location = match Url::parse(index) {
            Ok(url) if url.scheme() == "http" || url.scheme() == "https" => {
                let mut url = url;
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                Location::Http(url)
            }
            Ok(url) if url.scheme() == "file" => Location::Directory(directory_url(url)),
            Ok(url) if url.scheme().len() > 1 => {
                return Err(invalid(format!("unsupported scheme {:?}", url.scheme())))
            }
            _ => {
                let path = std::path::absolute(index).map_err(|e| invalid(e.to_string()))?;
                if !path.is_dir() {
                    return Err(invalid("not a directory".into()));
                }
                Location::Directory(directory_url(
                    Url::from_directory_path(&path)
                        .map_err(|()| invalid("not an absolute path".into()))?,
                ))
            }
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("pyti-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let index_key = match &location {
            Location::Http(url) | Location::Directory(url) => url.to_string(),
        };
        Ok(IndexClient {
            location,
            index_key,
            http,
            cache,
            mode,
            retry: RetryPolicy::default(),
            downloads: Semaphore::new(parallel_downloads.max(1)),
            pages: InFlight::default(),
            metadata: InFlight::default(),
            blobs: InFlight::default(),
            stale_pages: Mutex::new(Vec::new()),
            fetched: Mutex::new(Default::default()),
            budgets: Budgets::default(),
            downloaded: AtomicU64::new(0),
        })
    }

    /// Replaces the budgets.
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The index URL as configured (normalised), for messages and cache keys.
    pub fn index_url(&self) -> &str {
        &self.index_key
    }

    /// The cache this client fills.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The mode of this client.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Projects whose page came from the cache because the index was unreachable.
    pub fn stale_pages(&self) -> Vec<String> {
        self.stale_pages.lock().expect("not poisoned").clone()
    }

    /// Whether this client downloaded the blob with this sha256 (rather than finding it cached).
    pub fn downloaded_here(&self, sha256: &str) -> bool {
        self.fetched
            .lock()
            .expect("not poisoned")
            .contains(&sha256.to_ascii_lowercase())
    }

    fn page_url(&self, project: &str) -> Url {
        match &self.location {
            Location::Http(base) => base
                .join(&format!("{project}/"))
                .expect("names are URL-safe"),
            Location::Directory(base) => base
                .join(&format!("{project}/index.json"))
                .expect("names are URL-safe"),
        }
    }

    fn cached_page(&self, project: &str) -> Option<Vec<u8>> {
        self.cache
            .page(&self.index_key, project)
            .or_else(|| self.cache.page_from_any_index(project))
    }

    /// The project page (PEP 691), from memory, the network, or the cache as the mode says.
    pub async fn project_page(&self, project: &str) -> Result<Arc<ProjectPage>> {
        self.pages
            .get_or_try_init(project, || self.load_page(project))
            .await?
            .ok_or_else(|| Error::ProjectNotFound {
                project: project.to_string(),
                index: self.index_key.clone(),
                required_by: None,
            })
    }

    async fn load_page(&self, project: &str) -> Result<Option<Arc<ProjectPage>>> {
        let url = self.page_url(project);
        let bytes = match self.mode {
            Mode::CacheOnly => self
                .cached_page(project)
                .ok_or_else(|| Error::NotCached(format!("project page of {project}")))?,
            Mode::Online => match self.fetch(project, &url, true).await {
                Ok(Fetched::Found(bytes)) => {
                    self.cache.put_page(&self.index_key, project, &bytes)?;
                    bytes
                }
                Ok(Fetched::NotFound) => return Ok(None),
                Err(error @ Error::IndexUnreachable { .. }) => match self.cached_page(project) {
                    Some(bytes) => {
                        tracing::warn!(project, %error, "index unreachable, using the cached project page");
                        self.stale_pages
                            .lock()
                            .expect("not poisoned")
                            .push(project.to_string());
                        bytes
                    }
                    None => return Err(error),
                },
                Err(error) => return Err(error),
            },
        };
        let page = ProjectPage::parse(&bytes).map_err(|reason| Error::InvalidIndexPage {
            project: project.to_string(),
            url: url.to_string(),
            reason,
        })?;
        // A path in a file name is never an accident: the whole page is distrusted.
        if let Some((file, reason)) = page
            .files
            .iter()
            .find_map(|file| Some((file, unsafe_file_name(&file.filename)?)))
        {
            return Err(Error::UnsafeFileName {
                index: self.index_key.clone(),
                project: project.to_string(),
                file: file.filename.clone(),
                reason: reason.to_string(),
            });
        }
        Ok(Some(Arc::new(page)))
    }

    /// The absolute URL of a file listed on a project page.
    pub fn file_url(&self, project: &str, file: &IndexFile) -> Result<Url> {
        self.page_url(project)
            .join(&file.url)
            .map_err(|e| Error::InvalidIndexPage {
                project: project.to_string(),
                url: file.url.clone(),
                reason: format!("file URL: {e}"),
            })
    }

    fn file_sha256<'a>(&self, project: &str, file: &'a IndexFile) -> Result<&'a str> {
        file.sha256().ok_or_else(|| Error::MissingHash {
            index: self.index_key.clone(),
            project: project.to_string(),
            file: file.filename.clone(),
        })
    }

    /// Checks a listed file before anything of it is used, fetched or written: a plain
    /// name, a wheel or sdist of `project`, a sha256. Returns the sha256.
    pub fn validate_file(&self, project: &str, file: &IndexFile) -> Result<String> {
        let project = normalize_name(project);
        if let Some(reason) = unsafe_file_name(&file.filename) {
            return Err(Error::UnsafeFileName {
                index: self.index_key.clone(),
                project,
                file: file.filename.clone(),
                reason: reason.to_string(),
            });
        }
        let foreign = |reason: String| Error::ForeignFile {
            index: self.index_key.clone(),
            project: project.clone(),
            file: file.filename.clone(),
            reason,
        };
        match file.kind() {
            FileKind::Wheel(wheel) if normalize_name(&wheel.name) != project => {
                return Err(foreign(format!(
                    "a wheel of project {:?}",
                    normalize_name(&wheel.name)
                )))
            }
            FileKind::Wheel(_) => {}
            FileKind::Sdist if file.version(&project).is_none() => {
                return Err(foreign(format!("an sdist not named {project}-<version>")))
            }
            FileKind::Sdist => {}
            FileKind::Other => {
                return Err(foreign("neither a wheel nor an sdist name".into()));
            }
        }
        let sha256 = self.file_sha256(&project, file)?.to_ascii_lowercase();
        if !(sha256.len() == 64 && sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(foreign(format!(
                "whose sha256 {sha256:?} is not 64 hex digits"
            )));
        }
        Ok(sha256)
    }

    /// The URL to fetch a listed file from, if it is in the index's scheme family
    /// (`file:` only from a local index).
    pub fn fetch_url(&self, project: &str, file: &IndexFile) -> Result<Url> {
        let url = self.file_url(project, file)?;
        let refused = match (&self.location, url.scheme()) {
            (_, "http" | "https") => None,
            (Location::Directory(_), "file") => None,
            (Location::Http(_), scheme) => Some(format!(
                "a {scheme}: URL is only taken from a local (file:) index"
            )),
            (Location::Directory(_), scheme) => {
                Some(format!("{scheme}: is no scheme files are fetched with"))
            }
        };
        if let Some(reason) = refused {
            return Err(Error::UrlNotAllowed {
                index: self.index_key.clone(),
                file: file.filename.clone(),
                url: url.to_string(),
                reason,
            });
        }
        Ok(url)
    }

    /// Reads an sdist under the archive limits, telling a bomb from a damaged file.
    fn read_sdist_blocking(
        &self,
        project: &str,
        file: &IndexFile,
        path: PathBuf,
    ) -> impl FnOnce() -> Result<archive::SdistInfo> + Send + 'static {
        let (project, filename, limits) = (
            project.to_string(),
            file.filename.clone(),
            self.budgets.archive,
        );
        move || {
            archive::read_sdist_limited(&path, &filename, &limits).map_err(|error| match error {
                ArchiveError::TooLarge(reason) => Error::ArchiveTooLarge {
                    project,
                    file: filename,
                    reason,
                },
                ArchiveError::Invalid(reason) => Error::InvalidMetadata {
                    project,
                    file: filename,
                    reason,
                },
            })
        }
    }

    /// Core metadata of a file: cached by the file's sha256, else the PEP 658 file, else
    /// read from the downloaded archive (which then stays in the cache).
    pub async fn metadata(&self, project: &str, file: &IndexFile) -> Result<FileMetadata> {
        let sha256 = self.validate_file(project, file)?;
        self.metadata
            .get_or_try_init(&sha256, || self.load_metadata(project, file, &sha256))
            .await
    }

    async fn load_metadata(
        &self,
        project: &str,
        file: &IndexFile,
        sha256: &str,
    ) -> Result<FileMetadata> {
        let from_sdist = matches!(file.kind(), FileKind::Sdist);
        if let Some(text) = self.cache.metadata(sha256) {
            return Ok(FileMetadata { text, from_sdist });
        }
        if self.mode == Mode::CacheOnly {
            return Err(Error::NotCached(format!("metadata of {}", file.filename)));
        }
        let invalid = |reason: String| Error::InvalidMetadata {
            project: project.to_string(),
            file: file.filename.clone(),
            reason,
        };
        let (served, metadata_sha256) = file.metadata_available();
        // Metadata without a hash is read from the verified archive instead.
        let text = if served && metadata_sha256.is_some() {
            let url = Url::parse(&format!("{}.metadata", self.fetch_url(project, file)?))
                .map_err(|e| invalid(e.to_string()))?;
            match self.fetch(project, &url, false).await? {
                Fetched::Found(bytes) => {
                    if let Some(expected) = metadata_sha256 {
                        let actual = sha256_hex(&bytes);
                        if !actual.eq_ignore_ascii_case(&expected) {
                            return Err(Error::HashMismatch {
                                project: project.to_string(),
                                file: format!("{}.metadata", file.filename),
                                expected,
                                actual,
                            });
                        }
                    }
                    Some(String::from_utf8(bytes).map_err(|e| invalid(e.to_string()))?)
                }
                Fetched::NotFound => None,
            }
        } else {
            None
        };
        let text = match text {
            Some(text) => text,
            None => {
                let (path, _) = self.download(project, file).await?;
                let read = if from_sdist {
                    let info =
                        tokio::task::spawn_blocking(self.read_sdist_blocking(project, file, path))
                            .await
                            .map_err(|e| invalid(e.to_string()))??;
                    (info.pkg_info, Some(info.build_requires))
                } else {
                    let text =
                        tokio::task::spawn_blocking(move || archive::read_wheel_metadata(&path))
                            .await
                            .map_err(|e| invalid(e.to_string()))?
                            .map_err(invalid)?;
                    (Some(text), None)
                };
                if let (true, Some(requires)) = (from_sdist, &read.1) {
                    self.cache.put_build_requirements(sha256, requires)?;
                }
                read.0
                    .ok_or_else(|| invalid("the sdist has no top-level PKG-INFO".into()))?
            }
        };
        self.cache.put_metadata(sha256, &text)?;
        Ok(FileMetadata { text, from_sdist })
    }

    /// `[build-system].requires` of an sdist (downloading it if needed).
    pub async fn build_requirements(&self, project: &str, file: &IndexFile) -> Result<Vec<String>> {
        let sha256 = self.validate_file(project, file)?;
        if let Some(requires) = self.cache.build_requirements(&sha256) {
            return Ok(requires);
        }
        let (path, _) = self.download(project, file).await?;
        let info = tokio::task::spawn_blocking(self.read_sdist_blocking(project, file, path))
            .await
            .map_err(|e| Error::Internal(format!("reading {}: {e}", file.filename)))??;
        self.cache
            .put_build_requirements(&sha256, &info.build_requires)?;
        Ok(info.build_requires)
    }

    /// The file's path in the cache, downloading and verifying it first if needed;
    /// the flag says whether it was already cached.
    pub async fn download(&self, project: &str, file: &IndexFile) -> Result<(PathBuf, bool)> {
        let expected = self.validate_file(project, file)?;
        if let Some(path) = self.cache.blob(&expected) {
            return Ok((path, true));
        }
        if self.mode == Mode::CacheOnly {
            return Err(Error::NotCached(file.filename.clone()));
        }
        let path = self
            .blobs
            .get_or_try_init(&expected, || self.fetch_blob(project, file, &expected))
            .await?;
        Ok((path, false))
    }

    async fn fetch_blob(&self, project: &str, file: &IndexFile, expected: &str) -> Result<PathBuf> {
        let _permit = self
            .downloads
            .acquire()
            .await
            .expect("the semaphore is never closed");
        if let Some(path) = self.cache.blob(expected) {
            return Ok(path);
        }
        let url = self.fetch_url(project, file)?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.download_once(project, file, &url, expected).await {
                Err(error) if error.is_transient() && attempt < self.retry.attempts => {
                    tracing::warn!(project, file = %file.filename, attempt, %error, "download failed, retrying");
                    tokio::time::sleep(self.retry.first_backoff * 2u32.pow(attempt - 1)).await;
                }
                other => return other,
            }
        }
    }

    async fn download_once(
        &self,
        project: &str,
        file: &IndexFile,
        url: &Url,
        expected: &str,
    ) -> Result<PathBuf> {
        let temp = self.cache.temp_file()?;
        let temp_path = temp.path().to_path_buf();
        let std_file = temp
            .reopen()
            .map_err(|e| Error::io("opening", &temp_path, e))?;
        let mut writer = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let write_error = |e| Error::io("writing download to", temp_path.clone(), e);
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| Error::InvalidIndexPage {
                project: project.to_string(),
                url: url.to_string(),
                reason: "file URL without a local path".into(),
            })?;
            let bytes = match tokio::fs::read(&path).await {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::HttpStatus {
                        project: project.to_string(),
                        url: url.to_string(),
                        status: 404,
                    })
                }
                Err(e) => return Err(Error::io("reading index file", path, e)),
            };
            self.count_bytes(project, file, bytes.len())?;
            hasher.update(&bytes);
            writer.write_all(&bytes).await.map_err(write_error)?;
        } else {
            let response = self.send(project, url, false).await?;
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| unreachable_error(project, url, &e))?;
                self.count_bytes(project, file, chunk.len())?;
                hasher.update(&chunk);
                writer.write_all(&chunk).await.map_err(write_error)?;
            }
        }
        writer.flush().await.map_err(write_error)?;
        writer.sync_all().await.map_err(write_error)?;
        let actual = digest::hex(&hasher.finalize());
        if actual != expected {
            return Err(Error::HashMismatch {
                project: project.to_string(),
                file: file.filename.clone(),
                expected: expected.to_string(),
                actual,
            });
        }
        let path = self.cache.commit_blob(temp, expected)?;
        self.fetched
            .lock()
            .expect("not poisoned")
            .insert(expected.to_string());
        Ok(path)
    }

    /// Adds `bytes` to what this client fetched; past the budget, the download stops.
    fn count_bytes(&self, project: &str, file: &IndexFile, bytes: usize) -> Result<()> {
        let bytes = bytes as u64;
        let downloaded = self.downloaded.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if downloaded > self.budgets.max_bytes {
            return Err(Error::DownloadTooLarge {
                project: project.to_string(),
                file: file.filename.clone(),
                downloaded,
                limit: self.budgets.max_bytes,
            });
        }
        Ok(())
    }

    async fn send(&self, project: &str, url: &Url, page: bool) -> Result<reqwest::Response> {
        let mut request = self.http.get(url.clone());
        if page {
            request = request.header(reqwest::header::ACCEPT, SIMPLE_JSON);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable_error(project, url, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::HttpStatus {
                project: project.to_string(),
                url: url.to_string(),
                status: status.as_u16(),
            });
        }
        Ok(response)
    }

    /// Fetches a small document (page or metadata) with retries; 404 is an answer.
    async fn fetch(&self, project: &str, url: &Url, page: bool) -> Result<Fetched> {
        if url.scheme() == "file" {
            let path = url.to_file_path().map_err(|()| Error::InvalidIndex {
                location: url.to_string(),
                reason: "file URL without a local path".into(),
            })?;
            return match tokio::fs::read(&path).await {
                Ok(bytes) => Ok(Fetched::Found(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Fetched::NotFound),
                Err(e) => Err(Error::io("reading index file", path, e)),
            };
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let response = self.send(project, url, page).await?;
                let mut stream = response.bytes_stream();
                let mut bytes = Vec::new();
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk.map_err(|e| unreachable_error(project, url, &e))?;
                    if bytes.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                        return Err(Error::InvalidIndexPage {
                            project: project.to_string(),
                            url: url.to_string(),
                            reason: format!("larger than {MAX_DOCUMENT_BYTES} bytes"),
                        });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(bytes)
            }
            .await;
            match result {
                Ok(bytes) => return Ok(Fetched::Found(bytes)),
                Err(Error::HttpStatus {
                    status: 404 | 410, ..
                }) => return Ok(Fetched::NotFound),
                Err(error) if error.is_transient() && attempt < self.retry.attempts => {
                    tracing::warn!(project, %url, attempt, %error, "index request failed, retrying");
                    tokio::time::sleep(self.retry.first_backoff * 2u32.pow(attempt - 1)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

fn directory_url(url: Url) -> Url {
    if url.path().ends_with('/') {
        url
    } else {
        let mut url = url;
        url.set_path(&format!("{}/", url.path()));
        url
    }
}

fn unreachable_error(project: &str, url: &Url, error: &reqwest::Error) -> Error {
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        reason.push_str(": ");
        reason.push_str(&inner.to_string());
        source = inner.source();
    }
    Error::IndexUnreachable {
        project: project.to_string(),
        url: url.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_pass() {
        for plain in [
            "six-1.16.0-py2.py3-none-any.whl",
            "docopt-0.6.2.tar.gz",
            "a..b-1.0.zip",
        ] {
            assert_eq!(unsafe_file_name(plain), None, "{plain}");
        }
        for (name, reason) in [
            ("", "empty"),
            ("/etc/passwd", "an absolute path"),
            ("\\\\server\\x.whl", "an absolute path"),
            ("../x-1.0.tar.gz", "a path, not a file name"),
            ("dist/x-1.0.tar.gz", "a path, not a file name"),
            ("..", "a dot file or a parent directory"),
            (".hidden-1.0.tar.gz", "a dot file or a parent directory"),
            ("x\n-1.0.tar.gz", "a name with control characters"),
        ] {
            assert_eq!(unsafe_file_name(name), Some(reason), "{name:?}");
        }
        assert!(unsafe_file_name(&"a".repeat(256)).is_some());
    }
}
