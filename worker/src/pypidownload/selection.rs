//! Which release and which file of a project page the guest gets, decided in pure code.
//!
//! pip's rules, restated so the resolver and the error messages agree on them: a file
//! is usable when its tags fit the guest (best tag rank wins; a wheel beats the sdist),
//! its `Requires-Python` accepts the guest's interpreter and it is not yanked, unless
//! the version is pinned exactly (PEP 592). Pre-releases are only taken when nothing
//! else fits.

use pep440_rs::{Operator, Version, VersionSpecifiers};
use pubgrub::Ranges;

use super::error::Error;
use super::index::{FileKind, IndexFile, ProjectPage};
use super::tags::{TagRanking, TargetEnv};

/// One release of a project with the file the guest would get.
#[derive(Debug, Clone)]
pub struct Release {
    /// The release version.
    pub version: Version,
    /// Every file of the release.
    pub files: Vec<IndexFile>,
    /// Best usable non-yanked file.
    pub best: Option<IndexFile>,
    /// Best usable file when yanked files are allowed (exact pins).
    pub best_allowing_yanked: Option<IndexFile>,
    /// Whether every file of the release is yanked.
    pub all_yanked: bool,
}

/// The releases of one project for one target, newest first.
#[derive(Debug, Clone)]
pub struct Releases {
    /// Normalised project name.
    pub project: String,
    /// Releases, newest first.
    pub releases: Vec<Release>,
}

/// The best usable file among `files` for the target, or `None`.
pub fn best_file<'a>(
    files: impl IntoIterator<Item = &'a IndexFile>,
    ranking: &TagRanking,
    python: &Version,
    allow_yanked: bool,
) -> Option<&'a IndexFile> {
    let mut best: Option<(usize, &IndexFile)> = None;
    for file in files {
        if (file.is_yanked() && !allow_yanked) || !file.accepts_python(python) {
            continue;
        }
        let score = match file.kind() {
            // Build tags break ties: a higher build number is preferred.
            FileKind::Wheel(wheel) => match ranking.rank(&wheel) {
                Some(rank) => {
                    rank * 1000 + 999
                        - wheel
                            .build
                            .and_then(|b| b.parse::<usize>().ok())
                            .unwrap_or(0)
                            .min(999)
                }
                None => continue,
            },
            FileKind::Sdist if file.filename.ends_with(".tar.gz") => usize::MAX - 1,
            FileKind::Sdist => usize::MAX,
            FileKind::Other => continue,
        };
        if best.is_none_or(|(best_score, _)| score < best_score) {
            best = Some((score, file));
        }
    }
    best.map(|(_, file)| file)
}

impl Releases {
    /// Groups a page's files by release and picks each release's file for the target.
    pub fn new(page: &ProjectPage, target: &TargetEnv, ranking: &TagRanking) -> Self {
        let python = target.python_version();
        let releases = page
            .releases()
            .into_iter()
            .map(|(version, files)| Release {
                best: best_file(files.iter().copied(), ranking, &python, false).cloned(),
                best_allowing_yanked: best_file(files.iter().copied(), ranking, &python, true)
                    .cloned(),
                all_yanked: files.iter().all(|file| file.is_yanked()),
                files: files.into_iter().cloned().collect(),
                version,
            })
            .collect();
        Releases {
            project: page.name.clone(),
            releases,
        }
    }

    /// The newest release inside `range` with a usable file, avoiding pre-releases when a
    /// final release fits; yanked files only when the range is a single version.
    pub fn choose(&self, range: &Ranges<Version>) -> Option<(&Release, &IndexFile)> {
        self.choose_with(range, false)
    }

    /// As [`Releases::choose`]; with `prereleases` (a requirement named a pre-release,
    /// as in `>=3.0b1`) pre-releases compete with final releases, as pip does.
    pub fn choose_with(
        &self,
        range: &Ranges<Version>,
        prereleases: bool,
    ) -> Option<(&Release, &IndexFile)> {
        let pinned = range.as_singleton().is_some();
        fn usable<'a>(
            release: &'a Release,
            range: &Ranges<Version>,
            pinned: bool,
        ) -> Option<&'a IndexFile> {
            if !range.contains(&release.version) {
                return None;
            }
            if pinned {
                release.best_allowing_yanked.as_ref()
            } else {
                release.best.as_ref()
            }
        }
        let stable = self
            .releases
            .iter()
            .filter(|release| prereleases || !release.version.any_prerelease())
            .find_map(|release| usable(release, range, pinned).map(|file| (release, file)));
        stable.or_else(|| {
            self.releases
                .iter()
                .find_map(|release| usable(release, range, pinned).map(|file| (release, file)))
        })
    }

    /// Explains why nothing in `specifiers` can be chosen for the top-level request, with
    /// the most specific error; `None` when [`Releases::choose`] would succeed.
    pub fn explain_failure(
        &self,
        specifiers: &VersionSpecifiers,
        target: &TargetEnv,
    ) -> Option<Error> {
        let range = Ranges::from(specifiers.clone());
        if self.choose(&range).is_some() {
            return None;
        }
        let requested = if specifiers.is_empty() {
            "latest".to_string()
        } else {
            specifiers.to_string()
        };
        let matching: Vec<&Release> = self
            .releases
            .iter()
            .filter(|release| range.contains(&release.version))
            .collect();
        if matching.is_empty() {
            return Some(Error::VersionNotFound {
                project: self.project.clone(),
                requested,
                nearest: self.nearest(specifiers),
            });
        }
        if matching.iter().all(|release| release.all_yanked) {
            return Some(Error::OnlyYanked {
                project: self.project.clone(),
                requested,
                versions: matching
                    .iter()
                    .map(|release| release.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let release = matching
            .iter()
            .find(|release| !release.all_yanked)
            .unwrap_or(&matching[0]);
        let python = target.python_version();
        let mut files: Vec<String> = release
            .files
            .iter()
            .map(|file| match &file.requires_python {
                Some(spec) if !file.accepts_python(&python) => {
                    format!("{} (Requires-Python {spec})", file.filename)
                }
                _ => file.filename.clone(),
            })
            .collect();
        files.truncate(12);
        Some(Error::NoFileForPlatform {
            project: self.project.clone(),
            version: release.version.to_string(),
            target: format!(
                "{} (Python {})",
                target.describe(),
                target.python_full_version
            ),
            files,
        })
    }

    /// Up to five existing versions nearest to what was asked: around the pinned or
    /// bounding version, or the newest ones.
    pub fn nearest(&self, specifiers: &VersionSpecifiers) -> Vec<String> {
        let mut versions: Vec<&Version> = self.releases.iter().map(|r| &r.version).collect();
        versions.sort();
        let anchor = specifiers
            .iter()
            .next()
            .map(|specifier| specifier.version().clone());
        let position = match anchor {
            Some(anchor) => versions.partition_point(|version| **version < anchor),
            None => versions.len(),
        };
        let start = position.saturating_sub(3);
        let end = (position + 2).min(versions.len());
        let start = start.min(end.saturating_sub(5));
        versions[start..end]
            .iter()
            .rev()
            .map(|v| v.to_string())
            .collect()
    }
}

/// The version of an exact pin (`==1.2`, `===1.2`), `None` for ranges and wildcards.
pub fn pinned_version(specifiers: &VersionSpecifiers) -> Option<Version> {
    match specifiers.iter().collect::<Vec<_>>().as_slice() {
        [only] if matches!(only.operator(), Operator::Equal | Operator::ExactEqual) => {
            Some(only.version().clone())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn page(files: &[(&str, Option<&str>, bool)]) -> ProjectPage {
        let files: Vec<String> = files
            .iter()
            .map(|(name, requires, yanked)| {
                format!(
                    r#"{{"filename":"{name}","url":"{name}","hashes":{{"sha256":"00"}},"yanked":{yanked}{}}}"#,
                    requires.map(|r| format!(r#","requires-python":"{r}""#)).unwrap_or_default()
                )
            })
            .collect();
        ProjectPage::parse(format!(r#"{{"name":"demo","files":[{}]}}"#, files.join(",")).as_bytes())
            .unwrap()
    }

    fn releases(files: &[(&str, Option<&str>, bool)]) -> Releases {
        let target = TargetEnv::default();
        Releases::new(&page(files), &target, &TagRanking::new(&target))
    }

    fn spec(text: &str) -> VersionSpecifiers {
        VersionSpecifiers::from_str(text).unwrap()
    }

    fn chosen(releases: &Releases, text: &str) -> Option<String> {
        releases
            .choose(&Ranges::from(spec(text)))
            .map(|(_, file)| file.filename.clone())
    }

    #[test]
    fn best_wheel_beats_generic_wheel_and_sdist() {
        let releases = releases(&[
            ("demo-1.0.tar.gz", None, false),
            ("demo-1.0-py3-none-any.whl", None, false),
            (
                "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                None,
                false,
            ),
            (
                "demo-1.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                None,
                false,
            ),
            (
                "demo-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
                None,
                false,
            ),
            ("demo-1.0-cp311-cp311-win_amd64.whl", None, false),
        ]);
        assert_eq!(
            chosen(&releases, "").unwrap(),
            "demo-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
        );
    }

    #[test]
    fn sdist_is_the_fallback_and_tar_gz_beats_zip() {
        let releases = releases(&[
            ("demo-1.0.zip", None, false),
            ("demo-1.0.tar.gz", None, false),
            (
                "demo-1.0-cp312-cp312-manylinux_2_28_x86_64.whl",
                None,
                false,
            ),
        ]);
        assert_eq!(chosen(&releases, "").unwrap(), "demo-1.0.tar.gz");
    }

    #[test]
    fn yanked_only_when_pinned_and_prereleases_only_as_last_resort() {
        let releases = releases(&[
            ("demo-1.0-py3-none-any.whl", None, false),
            ("demo-2.0-py3-none-any.whl", None, true),
            ("demo-3.0b1-py3-none-any.whl", None, false),
        ]);
        assert_eq!(chosen(&releases, "").unwrap(), "demo-1.0-py3-none-any.whl");
        assert_eq!(
            chosen(&releases, "==2.0").unwrap(),
            "demo-2.0-py3-none-any.whl"
        );
        assert_eq!(
            chosen(&releases, ">=2.0").unwrap(),
            "demo-3.0b1-py3-none-any.whl"
        );
        assert_eq!(chosen(&releases, ">1.0,<3.0a0"), None);
        let range = Ranges::from(spec(">=1.0"));
        assert_eq!(
            releases
                .choose_with(&range, false)
                .unwrap()
                .0
                .version
                .to_string(),
            "1.0"
        );
        assert_eq!(
            releases
                .choose_with(&range, true)
                .unwrap()
                .0
                .version
                .to_string(),
            "3.0b1"
        );
    }

    #[test]
    fn requires_python_excludes_files() {
        let releases = releases(&[
            ("demo-1.0-py3-none-any.whl", Some(">=3.8"), false),
            ("demo-2.0-py3-none-any.whl", Some(">=3.12"), false),
        ]);
        assert_eq!(chosen(&releases, "").unwrap(), "demo-1.0-py3-none-any.whl");
        let error = releases
            .explain_failure(&spec("==2.0"), &TargetEnv::default())
            .unwrap();
        assert!(matches!(error, Error::NoFileForPlatform { .. }), "{error}");
        assert!(
            error.to_string().contains("Requires-Python >=3.12"),
            "{error}"
        );
    }

    #[test]
    fn failures_are_explained_with_the_most_specific_error() {
        let releases = releases(&[
            ("demo-0.9-py3-none-any.whl", None, false),
            ("demo-1.0-py3-none-any.whl", None, false),
            ("demo-1.1-py3-none-any.whl", None, false),
            ("demo-2.0-py3-none-any.whl", None, true),
            ("demo-3.0-cp311-cp311-win_amd64.whl", None, false),
        ]);
        let target = TargetEnv::default();
        assert!(releases.explain_failure(&spec("==1.0"), &target).is_none());
        match releases.explain_failure(&spec("==1.0.5"), &target).unwrap() {
            Error::VersionNotFound {
                nearest, requested, ..
            } => {
                assert_eq!(requested, "==1.0.5");
                assert_eq!(nearest, vec!["2.0", "1.1", "1.0", "0.9"]);
            }
            other => panic!("{other}"),
        }
        assert!(matches!(
            releases
                .explain_failure(&spec(">=2.0,<3"), &target)
                .unwrap(),
            Error::OnlyYanked { .. }
        ));
        assert!(matches!(
            releases.explain_failure(&spec(">=3"), &target).unwrap(),
            Error::NoFileForPlatform { .. }
        ));
    }

    #[test]
    fn only_exact_pins_count_as_pinned() {
        assert_eq!(pinned_version(&spec("==1.2")).unwrap().to_string(), "1.2");
        assert_eq!(pinned_version(&spec("===1.2")).unwrap().to_string(), "1.2");
        assert_eq!(pinned_version(&spec("==1.*")), None);
        assert_eq!(pinned_version(&spec(">=1.2")), None);
        assert_eq!(pinned_version(&spec("==1.2,!=1.3")), None);
        assert_eq!(pinned_version(&spec("")), None);
    }
}
