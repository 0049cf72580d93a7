//! The recipe's `metadata` task (DESIGN.md §6): static checks computed on the host from
//! what was downloaded (core metadata and the index's file list), never by running code.
//!
//! They live beside the download because that is where the inputs are: the release's
//! files, their tags and yank status exist only on the index page, and the core metadata
//! was already fetched to resolve.

use serde::Serialize;

use super::coremeta::CoreMetadata;
use super::index::{FileKind, IndexFile};
use super::tags::{TagRanking, TargetEnv};

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Nothing to report.
    Pass,
    /// Worth telling the author; does not stop installation.
    Warn,
    /// The release is unfit for the target (yanked, wrong Python).
    Fail,
}

/// One check with its status and a sentence explaining it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Pass, warn or fail.
    pub status: CheckStatus,
    /// What was found.
    pub message: String,
}

fn check(status: CheckStatus, message: impl Into<String>) -> Check {
    Check {
        status,
        message: message.into(),
    }
}

/// The `metadata` task's results for one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetadataChecks {
    /// Project name as the metadata spells it.
    pub name: String,
    /// Release version.
    pub version: String,
    /// `Metadata-Version`.
    pub metadata_version: String,
    /// `License-Expression`, else the first line of `License`, else the licence classifiers.
    pub license: Option<String>,
    /// Every `Classifier`.
    pub classifiers: Vec<String>,
    /// `Requires-Python`.
    pub python_requires: Option<String>,
    /// `Description-Content-Type`.
    pub readme_content_type: Option<String>,
    /// Length in bytes of the long description.
    pub readme_length: usize,
    /// Every tag of every wheel of the release.
    pub wheel_tags: Vec<String>,
    /// The file chosen for the target.
    pub chosen_file: String,
    /// Whether the chosen file is yanked.
    pub yanked: bool,
    /// The yank reason, if given.
    pub yanked_reason: Option<String>,
    /// Licence check.
    pub license_check: Check,
    /// Readme check.
    pub readme_check: Check,
    /// Classifiers check.
    pub classifiers_check: Check,
    /// `Requires-Python` check.
    pub python_requires_check: Check,
    /// Wheel availability and tags check.
    pub wheel_tags_check: Check,
    /// Yank check.
    pub yanked_check: Check,
}

impl MetadataChecks {
    /// The worst status of all checks.
    pub fn overall(&self) -> CheckStatus {
        [
            &self.license_check,
            &self.readme_check,
            &self.classifiers_check,
            &self.python_requires_check,
            &self.wheel_tags_check,
            &self.yanked_check,
        ]
        .iter()
        .map(|c| c.status)
        .max_by_key(|status| match status {
            CheckStatus::Pass => 0,
            CheckStatus::Warn => 1,
            CheckStatus::Fail => 2,
        })
        .unwrap_or(CheckStatus::Pass)
    }
}

/// Runs every check over a release's metadata, its files and the file chosen for `target`.
pub fn run_checks(
    metadata: &CoreMetadata,
    release_files: &[IndexFile],
    chosen: &IndexFile,
    target: &TargetEnv,
) -> MetadataChecks {
    let license_classifiers: Vec<&str> = metadata
        .classifiers
        .iter()
        .filter(|c| c.starts_with("License ::"))
        .map(String::as_str)
        .collect();
    let license_text = metadata
        .license
        .as_deref()
        .map(|text| text.lines().next().unwrap_or("").trim().to_string())
        .filter(|text| !text.is_empty() && !text.eq_ignore_ascii_case("UNKNOWN"));
    let license = metadata
        .license_expression
        .clone()
        .or(license_text)
        .or_else(|| (!license_classifiers.is_empty()).then(|| license_classifiers.join("; ")));
    let license_check = match &license {
        Some(found) => check(CheckStatus::Pass, format!("licence declared: {found}")),
        None => check(
            CheckStatus::Warn,
            "no License-Expression, License or licence classifier",
        ),
    };

    let readme_check = if metadata.description_length == 0 {
        check(CheckStatus::Warn, "no long description (readme)")
    } else if metadata.description_content_type.is_none() {
        check(
            CheckStatus::Pass,
            format!(
                "readme of {} bytes without Description-Content-Type (read as reStructuredText)",
                metadata.description_length
            ),
        )
    } else {
        check(
            CheckStatus::Pass,
            format!("readme of {} bytes", metadata.description_length),
        )
    };

    let (major, minor) = target.python_minor();
    let target_classifier = format!("Programming Language :: Python :: {major}.{minor}");
    let python_versions: Vec<&String> = metadata
        .classifiers
        .iter()
        .filter(|c| {
            c.strip_prefix("Programming Language :: Python :: ")
                .is_some_and(|rest| {
                    rest.contains('.') && rest.chars().all(|ch| ch.is_ascii_digit() || ch == '.')
                })
        })
        .collect();
    let classifiers_check = if metadata.classifiers.is_empty() {
        check(CheckStatus::Warn, "no classifiers")
    } else if !python_versions.is_empty() && !python_versions.contains(&&target_classifier) {
        check(
            CheckStatus::Warn,
            format!(
                "{} classifiers; Python {major}.{minor} is not among the listed versions",
                metadata.classifiers.len()
            ),
        )
    } else {
        check(
            CheckStatus::Pass,
            format!("{} classifiers", metadata.classifiers.len()),
        )
    };

    let python = target.python_version();
    let python_requires_check = match &metadata.requires_python {
        None => check(CheckStatus::Warn, "no Requires-Python"),
        Some(spec) => match spec.parse::<pep440_rs::VersionSpecifiers>() {
            Err(error) => check(
                CheckStatus::Warn,
                format!("Requires-Python {spec:?} does not parse: {error}"),
            ),
            Ok(specifiers) if !specifiers.contains(&python) => check(
                CheckStatus::Fail,
                format!(
                    "Requires-Python {spec} excludes the guest's Python {}",
                    target.python_full_version
                ),
            ),
            Ok(_) => check(
                CheckStatus::Pass,
                format!(
                    "Requires-Python {spec} accepts Python {}",
                    target.python_full_version
                ),
            ),
        },
    };

    let ranking = TagRanking::new(target);
    let mut wheel_tags: Vec<String> = Vec::new();
    let mut compatible_wheel = false;
    let mut has_sdist = false;
    for file in release_files {
        match file.kind() {
            FileKind::Wheel(wheel) => {
                compatible_wheel |= ranking.rank(&wheel).is_some();
                wheel_tags.extend(wheel.tags());
            }
            FileKind::Sdist => has_sdist = true,
            FileKind::Other => {}
        }
    }
    wheel_tags.sort();
    wheel_tags.dedup();
    let wheel_tags_check = if wheel_tags.is_empty() {
        check(CheckStatus::Warn, "no wheel: the guest builds the sdist")
    } else if !compatible_wheel {
        check(
            CheckStatus::Warn,
            format!(
                "{} wheel tags, none for {}: the guest builds the sdist",
                wheel_tags.len(),
                target.describe()
            ),
        )
    } else if !has_sdist {
        check(
            CheckStatus::Warn,
            "wheels only, no sdist: tests and quality checks have no sources",
        )
    } else {
        check(
            CheckStatus::Pass,
            format!(
                "{} wheel tags, one fits {}",
                wheel_tags.len(),
                target.describe()
            ),
        )
    };

    let yanked_check = if chosen.is_yanked() {
        check(
            CheckStatus::Fail,
            format!(
                "{} is yanked{}",
                chosen.filename,
                chosen
                    .yank_reason()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ),
        )
    } else {
        check(CheckStatus::Pass, "not yanked")
    };

    MetadataChecks {
        name: metadata.name.clone(),
        version: metadata.version.clone(),
        metadata_version: metadata.metadata_version.clone(),
        license,
        classifiers: metadata.classifiers.clone(),
        python_requires: metadata.requires_python.clone(),
        readme_content_type: metadata.description_content_type.clone(),
        readme_length: metadata.description_length,
        wheel_tags,
        chosen_file: chosen.filename.clone(),
        yanked: chosen.is_yanked(),
        yanked_reason: chosen.yank_reason().map(str::to_string),
        license_check,
        readme_check,
        classifiers_check,
        python_requires_check,
        wheel_tags_check,
        yanked_check,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pypidownload::index::ProjectPage;

    fn files(names: &[(&str, bool)]) -> Vec<IndexFile> {
        let entries: Vec<String> = names
            .iter()
            .map(|(name, yanked)| {
                format!(
                    r#"{{"filename":"{name}","url":"{name}","yanked":{}}}"#,
                    if *yanked { "\"bad\"" } else { "false" }
                )
            })
            .collect();
        ProjectPage::parse(
            format!(r#"{{"name":"demo","files":[{}]}}"#, entries.join(",")).as_bytes(),
        )
        .unwrap()
        .files
    }

    #[test]
    fn a_tidy_release_passes_everything() {
        let metadata = CoreMetadata::parse(
            "Metadata-Version: 2.4\nName: demo\nVersion: 1.0\nLicense-Expression: MIT\n\
Classifier: Programming Language :: Python :: 3.11\nRequires-Python: >=3.9\n\
Description-Content-Type: text/markdown\n\n# Demo\n",
        )
        .unwrap();
        let release = files(&[
            ("demo-1.0-py3-none-any.whl", false),
            ("demo-1.0.tar.gz", false),
        ]);
        let checks = run_checks(&metadata, &release, &release[0], &TargetEnv::default());
        assert_eq!(checks.overall(), CheckStatus::Pass, "{checks:#?}");
        assert_eq!(checks.license.as_deref(), Some("MIT"));
        assert_eq!(checks.wheel_tags, vec!["py3-none-any"]);
        assert!(!checks.yanked);
        let json = serde_json::to_value(&checks).unwrap();
        assert_eq!(json["yanked_check"]["status"], "pass");
    }

    #[test]
    fn an_old_sdist_only_release_warns_and_a_yanked_one_fails() {
        let metadata = CoreMetadata::parse(
            "Metadata-Version: 1.1\nName: docopt\nVersion: 0.6.2\nLicense: UNKNOWN\n\
Classifier: License :: OSI Approved :: MIT License\nClassifier: Programming Language :: Python :: 2.7\n",
        )
        .unwrap();
        let release = files(&[("docopt-0.6.2.tar.gz", true)]);
        let checks = run_checks(&metadata, &release, &release[0], &TargetEnv::default());
        assert_eq!(
            checks.license.as_deref(),
            Some("License :: OSI Approved :: MIT License")
        );
        assert_eq!(checks.readme_check.status, CheckStatus::Warn);
        assert_eq!(checks.classifiers_check.status, CheckStatus::Warn);
        assert_eq!(checks.python_requires_check.status, CheckStatus::Warn);
        assert_eq!(checks.wheel_tags_check.status, CheckStatus::Warn);
        assert_eq!(checks.yanked_check.status, CheckStatus::Fail);
        assert_eq!(checks.yanked_reason.as_deref(), Some("bad"));
        assert_eq!(checks.overall(), CheckStatus::Fail);
    }

    #[test]
    fn requires_python_excluding_the_guest_fails_and_foreign_wheels_warn() {
        let metadata = CoreMetadata::parse(
            "Name: x\nVersion: 1\nRequires-Python: >=3.12\nLicense: BSD\nClassifier: A\n\nreadme",
        )
        .unwrap();
        let release = files(&[
            ("x-1-cp312-cp312-win_amd64.whl", false),
            ("x-1.tar.gz", false),
        ]);
        let checks = run_checks(&metadata, &release, &release[1], &TargetEnv::default());
        assert_eq!(checks.python_requires_check.status, CheckStatus::Fail);
        assert_eq!(checks.wheel_tags_check.status, CheckStatus::Warn);
        assert!(checks.wheel_tags_check.message.contains("none for cp311"));
        assert_eq!(checks.license.as_deref(), Some("BSD"));
    }
}
