//! The dependency closure, solved with pubgrub over metadata read from the index.
//!
//! pubgrub asks synchronously for versions and dependencies; the index is async. The
//! solver therefore runs on a blocking thread ([`resolve`] uses `spawn_blocking`) and
//! blocks on the client for each answer, while every new dependency it sees starts a
//! prefetch of that project's page and newest metadata on the runtime, so the network
//! round trips of one level of the graph overlap.
//!
//! Extras follow uv's encoding: `Extra(name, extra)` at version v depends on
//! `Project(name) == v` plus the requirements the extra enables, so pubgrub keeps both on
//! the same version. Requires-Python and yanked files are handled when versions are
//! listed (see `selection`); markers are evaluated against the guest's environment.
//!
//! Releases that only exist as sdists whose metadata predates PEP 643 have no trusted
//! `Requires-Dist`. They resolve with what their `PKG-INFO` says (usually nothing) and are
//! reported in [`Resolution::requirements_unknown`]; a first guest pass builds their
//! metadata and the caller resolves again with [`RequirementsOverride`]s (docs/pypidownload.md).

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use pep440_rs::Version;
use pep508_rs::{ExtraName, MarkerEnvironment, Requirement, VerbatimUrl, VersionOrUrl};
use pubgrub::{
    DefaultStringReporter, Dependencies, DependencyConstraints, DependencyProvider,
    PackageResolutionStatistics, PubGrubError, Ranges, Reporter,
};
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::task::JoinSet;

use super::client::IndexClient;
use super::coremeta::CoreMetadata;
use super::error::{Error, Result};
use super::index::{normalize_name, IndexFile};
use super::selection::{Release, Releases};
use super::tags::{TagRanking, TargetEnv};

/// Requirements learnt elsewhere (a guest pass) for a release whose metadata is not
/// authoritative; they replace its `Requires-Dist`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequirementsOverride {
    /// Project name.
    pub name: String,
    /// Release version.
    pub version: String,
    /// PEP 508 requirements, as in `Requires-Dist`.
    pub requires_dist: Vec<String>,
}

/// A node of the pubgrub graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Package {
    /// The request itself (label shown in explanations).
    Root(String),
    /// A project by normalised name.
    Project(String),
    /// A project with one extra enabled.
    Extra(String, String),
}

impl fmt::Display for Package {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Package::Root(label) => write!(f, "{label}"),
            Package::Project(name) => write!(f, "{name}"),
            Package::Extra(name, extra) => write!(f, "{name}[{extra}]"),
        }
    }
}

/// One project of a resolved closure.
#[derive(Debug, Clone)]
pub struct ResolvedPackage {
    /// Normalised name.
    pub name: String,
    /// Chosen version.
    pub version: Version,
    /// Chosen file.
    pub file: IndexFile,
    /// Whether its `Requires-Dist` was authoritative (or overridden).
    pub requirements_known: bool,
}

/// The outcome of one resolution.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Every project of the closure, sorted by name.
    pub packages: Vec<ResolvedPackage>,
    /// `name==version` of sdist-only releases whose requirements are not known.
    pub requirements_unknown: Vec<String>,
}

/// What a resolution is asked to do.
#[derive(Debug, Clone)]
pub struct ResolveInput {
    /// Label of the root in explanations, e.g. `requests==2.32.3`.
    pub label: String,
    /// Top-level requirements.
    pub requirements: Vec<Requirement<VerbatimUrl>>,
    /// Whether top-level projects are checked for the specific errors (not found,
    /// version not found, only yanked, no file) before solving.
    pub explain_top_level: bool,
    /// Replacement requirements for releases with unknown metadata.
    pub overrides: Vec<RequirementsOverride>,
    /// A local file standing for its project: the index is never asked about it.
    pub local: Option<LocalRoot>,
}

/// A project whose only release is a local file (the distribution under test).
#[derive(Debug, Clone)]
pub struct LocalRoot {
    /// Normalised name.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// The file, as stored in the cache.
    pub file: IndexFile,
    /// Its `Requires-Dist` lines.
    pub requires_dist: Vec<String>,
    /// Whether they are authoritative (PEP 643 for sdists).
    pub requirements_known: bool,
    /// How it is named in messages, e.g. `foo 1.0 (local file foo-1.0.tar.gz)`.
    pub label: String,
}

impl LocalRoot {
    fn releases(&self) -> Releases {
        Releases {
            project: self.name.clone(),
            releases: vec![Release {
                version: self.version.clone(),
                files: vec![self.file.clone()],
                best: Some(self.file.clone()),
                best_allowing_yanked: Some(self.file.clone()),
                all_yanked: false,
            }],
        }
    }
}

struct Provider {
    client: Arc<IndexClient>,
    handle: Handle,
    target: TargetEnv,
    ranking: TagRanking,
    markers: MarkerEnvironment,
    input: ResolveInput,
    releases: RefCell<HashMap<String, Arc<Releases>>>,
    unknown: RefCell<BTreeSet<String>>,
    prefetches: Mutex<JoinSet<()>>,
    prefetched: RefCell<BTreeSet<String>>,
    required_by: RefCell<HashMap<String, String>>,
    prereleases_named: RefCell<BTreeSet<String>>,
}

impl Provider {
    fn releases(&self, project: &str) -> Result<Arc<Releases>> {
        if let Some(releases) = self.releases.borrow().get(project) {
            return Ok(releases.clone());
        }
        if let Some(local) = self.local(project) {
            let releases = Arc::new(local.releases());
            self.releases
                .borrow_mut()
                .insert(project.to_string(), releases.clone());
            return Ok(releases);
        }
        let page = self.handle.block_on(self.client.project_page(project))?;
        let releases = Arc::new(Releases::new(&page, &self.target, &self.ranking));
        self.releases
            .borrow_mut()
            .insert(project.to_string(), releases.clone());
        Ok(releases)
    }

    fn file_for(&self, project: &str, version: &Version) -> Result<IndexFile> {
        let releases = self.releases(project)?;
        releases
            .releases
            .iter()
            .find(|release| &release.version == version)
            .and_then(|release| {
                release
                    .best
                    .clone()
                    .or_else(|| release.best_allowing_yanked.clone())
            })
            .ok_or_else(|| Error::VersionNotFound {
                project: project.to_string(),
                requested: format!("=={version}"),
                nearest: vec![],
            })
    }

    fn local(&self, project: &str) -> Option<&LocalRoot> {
        self.input
            .local
            .as_ref()
            .filter(|local| local.name == project)
    }

    /// Starts fetching a project's page and newest metadata in the background.
    fn prefetch(&self, project: &str) {
        if self.local(project).is_some() {
            return;
        }
        if !self.prefetched.borrow_mut().insert(project.to_string()) {
            return;
        }
        let client = self.client.clone();
        let target = self.target.clone();
        let ranking = self.ranking.clone();
        let project = project.to_string();
        self.prefetches.lock().expect("not poisoned").spawn_on(
            async move {
                let Ok(page) = client.project_page(&project).await else {
                    return;
                };
                let releases = Releases::new(&page, &target, &ranking);
                if let Some((_, file)) = releases.choose(&Ranges::full()) {
                    let _ = client.metadata(&project, file).await;
                }
            },
            &self.handle,
        );
    }

    /// Adds the requirements that hold for `extras` to `constraints`.
    fn add_requirements(
        &self,
        parent: &str,
        parent_version: Option<&Version>,
        requirements: &[Requirement<VerbatimUrl>],
        extras: &[ExtraName],
        constraints: &mut DependencyConstraints<Package, Ranges<Version>>,
    ) -> Result<()> {
        for requirement in requirements {
            if !requirement.evaluate_markers(&self.markers, extras) {
                continue;
            }
            let name = normalize_name(requirement.name.as_ref());
            let range = match &requirement.version_or_url {
                None => Ranges::full(),
                Some(VersionOrUrl::VersionSpecifier(specifiers)) => {
                    if specifiers
                        .iter()
                        .any(|specifier| specifier.any_prerelease())
                    {
                        self.prereleases_named.borrow_mut().insert(name.clone());
                    }
                    Ranges::from(specifiers.clone())
                }
                Some(VersionOrUrl::Url(url)) => {
                    return Err(Error::InvalidMetadata {
                        project: parent.to_string(),
                        file: "Requires-Dist".into(),
                        reason: format!(
                        "direct URL requirement {name} @ {url} cannot be resolved from an index"
                    ),
                    })
                }
            };
            if let Some(version) = parent_version {
                let by = match self.local(parent) {
                    Some(local) => local.label.clone(),
                    None => format!("{parent} {version}"),
                };
                self.required_by
                    .borrow_mut()
                    .entry(name.clone())
                    .or_insert(by);
            }
            let mut packages = vec![Package::Project(name.clone())];
            packages.extend(
                requirement
                    .extras
                    .iter()
                    .map(|extra| Package::Extra(name.clone(), extra.to_string())),
            );
            for package in packages {
                if package == Package::Project(parent.to_string()) {
                    continue;
                }
                let merged = match constraints.get(&package) {
                    Some(existing) => existing.intersection(&range),
                    None => range.clone(),
                };
                constraints.insert(package, merged);
            }
            self.prefetch(&name);
        }
        Ok(())
    }

    fn requirements_of(
        &self,
        project: &str,
        version: &Version,
    ) -> Result<Option<Vec<Requirement<VerbatimUrl>>>> {
        let override_lines = self.input.overrides.iter().find(|o| {
            normalize_name(&o.name) == project
                && Version::from_str(&o.version).is_ok_and(|v| &v == version)
        });
        let file = self.file_for(project, version)?;
        let (lines, known) = match (override_lines, self.local(project)) {
            (Some(found), _) => (found.requires_dist.clone(), true),
            (None, Some(local)) => (local.requires_dist.clone(), local.requirements_known),
            (None, None) => {
                let fetched = self.handle.block_on(self.client.metadata(project, &file))?;
                let metadata = match CoreMetadata::parse(&fetched.text) {
                    Ok(metadata) => metadata,
                    Err(reason) => {
                        tracing::warn!(project, %version, reason, "unreadable metadata, skipping this version");
                        return Ok(None);
                    }
                };
                let known = metadata.requirements_known(fetched.from_sdist);
                (metadata.requires_dist, known)
            }
        };
        if !known {
            self.unknown
                .borrow_mut()
                .insert(format!("{project}=={version}"));
        }
        let mut parsed = Vec::new();
        for line in lines {
            match Requirement::<VerbatimUrl>::from_str(&line) {
                Ok(requirement) => parsed.push(requirement),
                Err(error) => {
                    tracing::warn!(project, %version, line, %error, "unparsable Requires-Dist, skipping this version");
                    return Ok(None);
                }
            }
        }
        Ok(Some(parsed))
    }
}

impl DependencyProvider for Provider {
    type P = Package;
    type V = Version;
    type VS = Ranges<Version>;
    type M = String;
    type Priority = (u32, std::cmp::Reverse<usize>);
    type Err = Error;

    fn prioritize(
        &self,
        package: &Package,
        range: &Ranges<Version>,
        statistics: &PackageResolutionStatistics,
    ) -> Self::Priority {
        let candidates = match package {
            Package::Root(_) => 0,
            Package::Project(name) | Package::Extra(name, _) => self
                .releases
                .borrow()
                .get(name)
                .map(|r| {
                    r.releases
                        .iter()
                        .filter(|release| range.contains(&release.version))
                        .count()
                })
                .unwrap_or(usize::MAX),
        };
        (statistics.conflict_count(), std::cmp::Reverse(candidates))
    }

    fn choose_version(
        &self,
        package: &Package,
        range: &Ranges<Version>,
    ) -> Result<Option<Version>> {
        match package {
            Package::Root(_) => Ok(Some(Version::new([0]))),
            Package::Project(name) | Package::Extra(name, _) => match self.releases(name) {
                Ok(releases) => {
                    let prereleases = self.prereleases_named.borrow().contains(name);
                    Ok(releases
                        .choose_with(range, prereleases)
                        .map(|(release, _)| release.version.clone()))
                }
                Err(Error::ProjectNotFound { project, index, .. }) => Err(Error::ProjectNotFound {
                    required_by: self.required_by.borrow().get(&project).cloned(),
                    project,
                    index,
                }),
                Err(error) => Err(error),
            },
        }
    }

    fn get_dependencies(
        &self,
        package: &Package,
        version: &Version,
    ) -> Result<Dependencies<Package, Ranges<Version>, String>> {
        let mut constraints = DependencyConstraints::default();
        match package {
            Package::Root(label) => {
                // Not a project name, so the request never counts as depending on itself.
                let parent = format!("request {label}");
                self.add_requirements(
                    &parent,
                    None,
                    &self.input.requirements,
                    &[],
                    &mut constraints,
                )?;
            }
            Package::Project(name) => match self.requirements_of(name, version)? {
                Some(requirements) => self.add_requirements(
                    name,
                    Some(version),
                    &requirements,
                    &[],
                    &mut constraints,
                )?,
                None => {
                    return Ok(Dependencies::Unavailable(
                        "its metadata cannot be read".into(),
                    ))
                }
            },
            Package::Extra(name, extra) => {
                constraints.insert(
                    Package::Project(name.clone()),
                    Ranges::singleton(version.clone()),
                );
                let extra_name =
                    ExtraName::from_str(extra).map_err(|e| Error::InvalidMetadata {
                        project: name.clone(),
                        file: "extra".into(),
                        reason: e.to_string(),
                    })?;
                match self.requirements_of(name, version)? {
                    Some(requirements) => self.add_requirements(
                        name,
                        Some(version),
                        &requirements,
                        &[extra_name],
                        &mut constraints,
                    )?,
                    None => {
                        return Ok(Dependencies::Unavailable(
                            "its metadata cannot be read".into(),
                        ))
                    }
                }
            }
        }
        Ok(Dependencies::Available(constraints))
    }
}

/// Resolves the closure of `input` for `target`; blocks the calling thread, which must
/// not be a runtime worker (use [`resolve`] from async code).
pub fn resolve_blocking(
    client: Arc<IndexClient>,
    handle: Handle,
    target: &TargetEnv,
    input: ResolveInput,
) -> Result<Resolution> {
    let provider = Provider {
        client,
        handle,
        ranking: TagRanking::new(target),
        markers: target.marker_environment(),
        target: target.clone(),
        input,
        releases: RefCell::new(HashMap::new()),
        unknown: RefCell::new(BTreeSet::new()),
        prefetches: Mutex::new(JoinSet::new()),
        prefetched: RefCell::new(BTreeSet::new()),
        required_by: RefCell::new(HashMap::new()),
        prereleases_named: RefCell::new(BTreeSet::new()),
    };
    for requirement in &provider.input.requirements {
        provider.prefetch(&normalize_name(requirement.name.as_ref()));
    }
    if provider.input.explain_top_level {
        for requirement in &provider.input.requirements {
            let name = normalize_name(requirement.name.as_ref());
            let releases = provider.releases(&name)?;
            let specifiers = match &requirement.version_or_url {
                Some(VersionOrUrl::VersionSpecifier(specifiers)) => specifiers.clone(),
                _ => pep440_rs::VersionSpecifiers::empty(),
            };
            if let Some(error) = releases.explain_failure(&specifiers, target) {
                return Err(error);
            }
        }
    }
    let root = Package::Root(provider.input.label.clone());
    let solved = pubgrub::resolve(&provider, root, Version::new([0]));
    provider
        .prefetches
        .lock()
        .expect("not poisoned")
        .abort_all();
    let selected = match solved {
        Ok(selected) => selected,
        Err(PubGrubError::NoSolution(mut tree)) => {
            tree.collapse_no_versions();
            return Err(Error::ResolutionImpossible {
                request: provider.input.label.clone(),
                explanation: DefaultStringReporter::report(&tree),
            });
        }
        Err(PubGrubError::ErrorChoosingVersion { source, .. })
        | Err(PubGrubError::ErrorRetrievingDependencies { source, .. })
        | Err(PubGrubError::ErrorInShouldCancel(source)) => return Err(source),
    };
    let unknown = provider.unknown.borrow().clone();
    let mut packages = Vec::new();
    for (package, version) in selected {
        if let Package::Project(name) = package {
            let file = provider.file_for(&name, &version)?;
            let requirements_known = !unknown.contains(&format!("{name}=={version}"));
            packages.push(ResolvedPackage {
                name,
                version,
                file,
                requirements_known,
            });
        }
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Resolution {
        packages,
        requirements_unknown: unknown.into_iter().collect(),
    })
}

/// Async wrapper of [`resolve_blocking`]: runs the solver on a blocking thread.
pub async fn resolve(
    client: Arc<IndexClient>,
    target: &TargetEnv,
    input: ResolveInput,
) -> Result<Resolution> {
    let handle = Handle::current();
    let target = target.clone();
    tokio::task::spawn_blocking(move || resolve_blocking(client, handle, &target, input))
        .await
        .map_err(|e| Error::Internal(format!("the resolver thread failed: {e}")))?
}
