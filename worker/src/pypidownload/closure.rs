//! The whole download step of a job: resolve the distribution's closure and the tools'
//! closures, download every file (verified, cached), run the host-side metadata checks,
//! and lay the files out for the IO disk.
//!
//! A pinned request is first tried in cache-only mode: if the pages, metadata and files
//! of an earlier run are all in the cache, the same resolution is replayed from them and
//! the network is never touched (a worker keeps working while PyPI is down). Anything
//! missing sends the step online.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::try_join_all;
use pep508_rs::{Requirement, VerbatimUrl, VersionOrUrl};
use pyti_guest::layout;
use serde::{Deserialize, Serialize};

use super::budget::Budgets;
use super::cache::Cache;
use super::checks::{run_checks, MetadataChecks};
use super::client::{unsafe_file_name, IndexClient, Mode, PYPI_SIMPLE};
use super::coremeta::CoreMetadata;
use super::error::{Error, Result};
use super::index::{normalize_name, FileKind, IndexFile};
use super::localdist::{local_distribution_metadata, local_kind};
use super::resolver::{self, LocalRoot, RequirementsOverride, ResolveInput};
use super::selection::{best_file, pinned_version};
use super::tags::{TagRanking, TargetEnv};
use super::tools;

/// What the recipe's tools need in the guest when the request does not say otherwise.
pub const DEFAULT_TOOLS: [&str; 3] = ["pytest", "pycodestyle", "pyflakes"];

/// One download request: a distribution, where to find it and what else to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// `NAME`, `NAME==VERSION` or any PEP 508 requirement without URL or marker.
    pub requirement: String,
    /// Index: an http(s) URL of a JSON simple index, a `file:` URL or a directory path.
    /// Default: PyPI.
    pub index_url: String,
    /// Requirements of the recipe's tools, resolved into `tools/`. Default: [`DEFAULT_TOOLS`].
    pub tools: Vec<String>,
    /// Requirements learnt by a guest pass for releases with unknown metadata.
    pub overrides: Vec<RequirementsOverride>,
    /// Whether to fetch the distribution's sdist too (for its tests and sources) when it
    /// installs from a wheel. Default: true.
    pub include_sources: bool,
    /// Files downloaded at once. Default: 8.
    pub parallel_downloads: usize,
    /// A local wheel or sdist to test instead of a release of the index: it is the root
    /// of the resolution (its dependencies still come from the index) and `requirement`
    /// is only a label. Default: none.
    #[serde(default)]
    pub local_distribution: Option<PathBuf>,
    /// What the step may cost. Default: [`Budgets::default`].
    #[serde(default)]
    pub budgets: Budgets,
}

impl Request {
    /// A request for `requirement` from PyPI with the default tools.
    pub fn new(requirement: impl Into<String>) -> Self {
        Request {
            requirement: requirement.into(),
            index_url: PYPI_SIMPLE.to_string(),
            tools: DEFAULT_TOOLS.iter().map(|t| t.to_string()).collect(),
            overrides: Vec::new(),
            include_sources: true,
            parallel_downloads: 8,
            local_distribution: None,
            budgets: Budgets::default(),
        }
    }

    /// A request testing the local wheel or sdist at `path`, its dependencies and tools
    /// from PyPI.
    pub fn local(path: impl Into<PathBuf>) -> Self {
        Request::new("").with_local_distribution(path)
    }

    /// A request from a command-line argument: the local wheel or sdist it names (an
    /// existing file, or a path with a `/`, ending in `.whl`, `.tar.gz`, `.tgz` or
    /// `.zip`), else a requirement on PyPI.
    pub fn from_argument(argument: &str) -> Self {
        let argument = argument.trim();
        let is_path = local_kind(argument).is_ok()
            && !argument.contains("://")
            && !argument.contains(" @ ")
            && (argument.contains('/') || Path::new(argument).is_file());
        if is_path {
            Request::local(argument)
        } else {
            Request::new(argument)
        }
    }

    /// The same request with the local file at `path` as the distribution under test.
    pub fn with_local_distribution(mut self, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        self.requirement = path.display().to_string();
        self.local_distribution = Some(path);
        self
    }

    /// A request from a job's project name and version (empty version: latest).
    pub fn from_job(project_name: &str, project_version: &str) -> Self {
        if project_version.trim().is_empty() {
            Request::new(project_name.trim())
        } else {
            Request::new(format!(
                "{}=={}",
                project_name.trim(),
                project_version.trim()
            ))
        }
    }

    /// The same request under other budgets.
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// The same request against another index.
    pub fn with_index(mut self, index_url: impl Into<String>) -> Self {
        self.index_url = index_url.into();
        self
    }

    /// The requirement parsed, or why it cannot be.
    pub fn parsed(&self) -> Result<Requirement<VerbatimUrl>> {
        if self.local_distribution.is_some() {
            return Err(Error::InvalidRequest {
                request: self.requirement.clone(),
                reason: "a request for a local file has no requirement to parse".into(),
            });
        }
        let invalid = |reason: String| Error::InvalidRequest {
            request: self.requirement.clone(),
            reason,
        };
        let requirement =
            Requirement::<VerbatimUrl>::from_str(self.requirement.trim()).map_err(|e| {
                invalid(format!(
                    "not NAME[==VERSION] nor a PEP 508 requirement: {e}"
                ))
            })?;
        if matches!(requirement.version_or_url, Some(VersionOrUrl::Url(_))) {
            return Err(invalid(
                "URL requirements are not downloaded from an index".into(),
            ));
        }
        if !requirement.marker.is_true() {
            return Err(invalid(
                "markers make no sense on the requested distribution".into(),
            ));
        }
        Ok(requirement)
    }
}

/// Why a file is in the set, which decides its directory on the IO disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The distribution under test, as installed (`dist/`).
    Distribution,
    /// The distribution's sdist, for its tests and sources (`dist/`).
    Sources,
    /// A dependency (`wheels/`).
    Dependency,
    /// A tool or build backend (`tools/`).
    Tool,
}

impl Role {
    /// The IO disk directory of this role.
    pub fn directory(self) -> &'static str {
        match self {
            Role::Distribution | Role::Sources => layout::DIST_DIR,
            Role::Dependency => layout::WHEELS_DIR,
            Role::Tool => layout::TOOLS_DIR,
        }
    }
}

/// One verified file of the set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadedFile {
    /// Normalised project name.
    pub name: String,
    /// Release version.
    pub version: String,
    /// File name as on the index.
    pub filename: String,
    /// Verified sha256.
    pub sha256: String,
    /// Why it is here.
    pub role: Role,
    /// Size in bytes.
    pub size: u64,
    /// Where it lives in the cache.
    pub cache_path: PathBuf,
    /// Where it was placed under the destination, when one was given.
    pub path: Option<PathBuf>,
    /// Whether it was already in the cache before this run.
    pub from_cache: bool,
}

/// Everything a job needs from the index, resolved and downloaded.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedSet {
    /// The request as given.
    pub request: String,
    /// The target it was resolved for.
    pub target: TargetEnv,
    /// The index used.
    pub index_url: String,
    /// The distribution under test.
    pub distribution: DownloadedFile,
    /// Its sdist, when the distribution installs from a wheel and an sdist exists.
    pub sources: Option<DownloadedFile>,
    /// The dependency closure, without the distribution.
    pub dependencies: Vec<DownloadedFile>,
    /// Tools and build backends.
    pub tools: Vec<DownloadedFile>,
    /// `name==version` of sdist-only releases whose requirements are unknown (PEP 643):
    /// a guest pass must report them (docs/pypidownload.md).
    pub requirements_unknown: Vec<String>,
    /// Host-side `metadata` checks of the distribution.
    pub metadata: MetadataChecks,
    /// Whether the whole set was answered from the cache without the network.
    pub offline: bool,
    /// Projects whose page was taken from the cache because the index was unreachable.
    pub stale_pages: Vec<String>,
}

impl ResolvedSet {
    /// Every file of the set: distribution, sources, dependencies, tools.
    pub fn files(&self) -> impl Iterator<Item = &DownloadedFile> {
        std::iter::once(&self.distribution)
            .chain(self.sources.iter())
            .chain(self.dependencies.iter())
            .chain(self.tools.iter())
    }

    fn files_mut(&mut self) -> impl Iterator<Item = &mut DownloadedFile> {
        std::iter::once(&mut self.distribution)
            .chain(self.sources.iter_mut())
            .chain(self.dependencies.iter_mut())
            .chain(self.tools.iter_mut())
    }
}

/// Resolves the request's closure and its tools for `target`, downloads every file into
/// `cache` and, with a `dest`, places them under `dest/{dist,wheels,tools}/`, all within
/// the request's time budget.
pub async fn resolve_and_download(
    request: &Request,
    target: &TargetEnv,
    cache: &Cache,
    dest: Option<&Path>,
) -> Result<ResolvedSet> {
    let limit = request.budgets.max_resolution();
    tokio::time::timeout(
        limit,
        resolve_and_download_untimed(request, target, cache, dest),
    )
    .await
    .map_err(|_| Error::ResolutionTimeout {
        request: request.requirement.clone(),
        limit_s: request.budgets.max_resolution_s,
    })?
}

async fn resolve_and_download_untimed(
    request: &Request,
    target: &TargetEnv,
    cache: &Cache,
    dest: Option<&Path>,
) -> Result<ResolvedSet> {
    let local = match &request.local_distribution {
        Some(path) => Some(prepare_local(path, target, cache).await?),
        None => None,
    };
    let requirement = match &local {
        Some(local) => local_requirement(local)?,
        None => request.parsed()?,
    };
    // A local file is an exact release: its metadata is keyed by its sha256.
    let pinned = local.is_some()
        || match &requirement.version_or_url {
            Some(VersionOrUrl::VersionSpecifier(specifiers)) => {
                pinned_version(specifiers).is_some()
            }
            _ => false,
        };
    let local = local.as_ref();
    let mut set = None;
    if pinned {
        match run(request, &requirement, local, target, cache, Mode::CacheOnly).await {
            Ok(found) => set = Some(found),
            Err(error) => {
                tracing::debug!(request = %request.requirement, %error, "cache cannot answer, going online")
            }
        }
    }
    let mut set = match set {
        Some(set) => set,
        None => run(request, &requirement, local, target, cache, Mode::Online).await?,
    };
    if let Some(dest) = dest {
        place(&mut set, dest).await?;
    }
    Ok(set)
}

/// Reads, checks and caches the local file of a request, as the resolver's root.
async fn prepare_local(path: &Path, target: &TargetEnv, cache: &Cache) -> Result<LocalRoot> {
    let path = path.to_path_buf();
    let target = target.clone();
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || {
        let local = local_distribution_metadata(&path)?;
        local.check_target(&target)?;
        for line in &local.metadata.requires_dist {
            Requirement::<VerbatimUrl>::from_str(line).map_err(|e| Error::LocalDistribution {
                path: path.clone(),
                reason: format!("Requires-Dist {line:?} does not parse: {e}"),
            })?;
        }
        let file = local.store(&cache)?;
        Ok(LocalRoot {
            label: local.label(),
            requirements_known: local.requirements_known(),
            requires_dist: local.metadata.requires_dist.clone(),
            name: local.name,
            version: local.version,
            file,
        })
    })
    .await
    .map_err(|e| Error::Internal(format!("reading the local distribution failed: {e}")))?
}

/// `name==version` of a local root, the resolution's top-level requirement.
fn local_requirement(local: &LocalRoot) -> Result<Requirement<VerbatimUrl>> {
    Requirement::<VerbatimUrl>::from_str(&format!("{}=={}", local.name, local.version))
        .map_err(|e| Error::Internal(format!("{} does not make a requirement: {e}", local.label)))
}

async fn run(
    request: &Request,
    requirement: &Requirement<VerbatimUrl>,
    local: Option<&LocalRoot>,
    target: &TargetEnv,
    cache: &Cache,
    mode: Mode,
) -> Result<ResolvedSet> {
    let client = Arc::new(
        IndexClient::new(
            &request.index_url,
            cache.clone(),
            mode,
            request.parallel_downloads,
        )?
        .with_budgets(request.budgets),
    );
    let root_name = normalize_name(requirement.name.as_ref());
    let main = resolver::resolve(
        client.clone(),
        target,
        ResolveInput {
            label: match local {
                Some(local) => local.label.clone(),
                None => request.requirement.trim().to_string(),
            },
            requirements: vec![requirement.clone()],
            explain_top_level: true,
            overrides: request.overrides.clone(),
            local: local.cloned(),
        },
    )
    .await?;
    let root = main
        .packages
        .iter()
        .find(|package| package.name == root_name)
        .ok_or_else(|| Error::Internal(format!("{root_name} is missing from its own resolution")))?
        .clone();

    // The index's copy of a local project is never looked at.
    let release_files: Vec<IndexFile> = match local {
        Some(local) => vec![local.file.clone()],
        None => client
            .project_page(&root_name)
            .await?
            .files
            .iter()
            .filter(|file| file.version(&root_name).as_ref() == Some(&root.version))
            .cloned()
            .collect(),
    };
    let sources = match root.file.kind() {
        _ if local.is_some() => None,
        FileKind::Sdist => None,
        _ if !request.include_sources => None,
        _ => {
            let sdists = release_files
                .iter()
                .filter(|file| file.kind() == FileKind::Sdist);
            best_file(
                sdists,
                &TagRanking::new(target),
                &target.python_version(),
                true,
            )
            .cloned()
        }
    };

    let mut sdists: Vec<(String, IndexFile)> = main
        .packages
        .iter()
        .filter(|package| package.file.kind() == FileKind::Sdist)
        .map(|package| (package.name.clone(), package.file.clone()))
        .collect();
    if let Some(file) = &sources {
        sdists.push((root_name.clone(), file.clone()));
    }
    let tools = tools::resolve_tools(&client, target, request, sdists).await?;
    let tool_packages = tools.packages;
    let mut requirements_unknown: BTreeSet<String> =
        main.requirements_unknown.iter().cloned().collect();
    requirements_unknown.extend(tools.requirements_unknown);

    let files = main.packages.len() + usize::from(sources.is_some()) + tool_packages.len();
    if files > request.budgets.max_files {
        return Err(Error::ClosureTooLarge {
            request: request.requirement.clone(),
            files,
            limit: request.budgets.max_files,
        });
    }

    let fetch = |role: Role, name: String, version: String, file: IndexFile| {
        let client = client.clone();
        async move {
            let (cache_path, _) = client.download(&name, &file).await?;
            let sha256 = file.sha256().unwrap_or_default().to_ascii_lowercase();
            let size = tokio::fs::metadata(&cache_path)
                .await
                .map_err(|e| Error::io("reading size of", &cache_path, e))?
                .len();
            Ok::<_, Error>(DownloadedFile {
                from_cache: !client.downloaded_here(&sha256),
                name,
                version,
                filename: file.filename.clone(),
                sha256,
                role,
                size,
                cache_path,
                path: None,
            })
        }
    };
    let distribution = fetch(
        Role::Distribution,
        root.name.clone(),
        root.version.to_string(),
        root.file.clone(),
    );
    let sources_download = async {
        match &sources {
            Some(file) => fetch(
                Role::Sources,
                root.name.clone(),
                root.version.to_string(),
                file.clone(),
            )
            .await
            .map(Some),
            None => Ok(None),
        }
    };
    let dependencies = try_join_all(
        main.packages
            .iter()
            .filter(|package| package.name != root_name)
            .map(|package| {
                fetch(
                    Role::Dependency,
                    package.name.clone(),
                    package.version.to_string(),
                    package.file.clone(),
                )
            }),
    );
    let tools = try_join_all(tool_packages.values().map(|package| {
        fetch(
            Role::Tool,
            package.name.clone(),
            package.version.to_string(),
            package.file.clone(),
        )
    }));
    let (mut distribution, sources, dependencies, mut tools) =
        futures_util::try_join!(distribution, sources_download, dependencies, tools)?;
    if local.is_some() {
        distribution.from_cache = false;
    }
    tools.sort_by(|a, b| a.name.cmp(&b.name).then(a.filename.cmp(&b.filename)));

    let fetched = client.metadata(&root_name, &root.file).await?;
    let metadata = CoreMetadata::parse(&fetched.text).map_err(|reason| Error::InvalidMetadata {
        project: root_name.clone(),
        file: root.file.filename.clone(),
        reason,
    })?;
    let mut checks = run_checks(&metadata, &release_files, &root.file, target);
    if local.is_some() {
        checks.yanked_check.message = "a local file, not on the index: cannot be yanked".into();
    }

    Ok(ResolvedSet {
        request: request.requirement.clone(),
        target: target.clone(),
        index_url: client.index_url().to_string(),
        distribution,
        sources,
        dependencies,
        tools,
        requirements_unknown: requirements_unknown.into_iter().collect(),
        metadata: checks,
        offline: mode == Mode::CacheOnly,
        stale_pages: client.stale_pages(),
    })
}

/// Places every file under `dest/<role directory>/<filename>`: a hard link to the cache
/// when possible (same file system), a copy otherwise.
async fn place(set: &mut ResolvedSet, dest: &Path) -> Result<()> {
    // The client refused unsafe names already; a name that is a path still never
    // leaves `dest`.
    if let Some(file) = set
        .files()
        .find(|file| unsafe_file_name(&file.filename).is_some())
    {
        return Err(Error::Internal(format!(
            "refusing to place {:?} under {}",
            file.filename,
            dest.display()
        )));
    }
    let plan: Vec<(PathBuf, PathBuf)> = set
        .files()
        .map(|file| {
            (
                file.cache_path.clone(),
                dest.join(file.role.directory()).join(&file.filename),
            )
        })
        .collect();
    let placed = plan
        .iter()
        .map(|(_, target)| target.clone())
        .collect::<Vec<_>>();
    tokio::task::spawn_blocking(move || {
        for (source, target) in plan {
            let parent = target.parent().expect("joined paths have a parent");
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("creating destination directory", parent, e))?;
            let _ = std::fs::remove_file(&target);
            if std::fs::hard_link(&source, &target).is_err() {
                std::fs::copy(&source, &target)
                    .map_err(|e| Error::io("copying into destination", &target, e))?;
            }
        }
        Ok::<_, Error>(())
    })
    .await
    .map_err(|e| Error::Internal(format!("placing files failed: {e}")))??;
    for (file, path) in set.files_mut().zip(placed) {
        file.path = Some(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_name_the_problem() {
        assert_eq!(Request::from_job("rarfile", "").requirement, "rarfile");
        assert_eq!(
            Request::from_job(" rarfile ", "4.2").requirement,
            "rarfile==4.2"
        );
        assert!(Request::new("requests[socks]>=2").parsed().is_ok());
        for bad in [
            "",
            "==1.0",
            "pkg @ https://example.org/pkg.whl",
            "pkg; python_version < '3'",
        ] {
            let error = Request::new(bad).parsed().unwrap_err();
            assert!(
                matches!(error, Error::InvalidRequest { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn local_requests_carry_the_path_and_older_requests_still_deserialise() {
        let request = Request::local("dist/foo-1.0.tar.gz");
        assert_eq!(
            request.local_distribution.as_deref(),
            Some(Path::new("dist/foo-1.0.tar.gz"))
        );
        assert_eq!(request.requirement, "dist/foo-1.0.tar.gz");
        assert_eq!(request.index_url, PYPI_SIMPLE);
        assert!(matches!(
            request.parsed(),
            Err(Error::InvalidRequest { .. })
        ));
        for (argument, local) in [
            ("./dist/foo-1.0.tar.gz", true),
            ("/abs/foo-1.0-py3-none-any.whl", true),
            ("dist/foo-1.0.zip", true),
            ("rarfile==4.2", false),
            ("rarfile", false),
            ("pkg @ https://example.org/pkg-1.0-py3-none-any.whl", false),
            ("dist/README", false),
        ] {
            let request = Request::from_argument(argument);
            assert_eq!(request.local_distribution.is_some(), local, "{argument}");
            assert_eq!(request.requirement, argument);
        }
        let mut old = serde_json::to_value(Request::new("rarfile==4.2")).unwrap();
        old.as_object_mut().unwrap().remove("local_distribution");
        let old: Request = serde_json::from_value(old).unwrap();
        assert_eq!(old.local_distribution, None);
    }

    #[test]
    fn roles_map_to_io_disk_directories() {
        assert_eq!(Role::Distribution.directory(), "dist");
        assert_eq!(Role::Sources.directory(), "dist");
        assert_eq!(Role::Dependency.directory(), "wheels");
        assert_eq!(Role::Tool.directory(), "tools");
    }
}
