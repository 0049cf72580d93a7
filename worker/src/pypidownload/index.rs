//! The PEP 691 JSON form of a project page, the one data structure every index
//! (PyPI, a mirror, a local directory) answers with.
//!
//! Kept apart from the client so the page can be parsed, cached and reasoned about
//! without any transport: the cache stores pages verbatim and re-parses them here.

use std::collections::HashMap;

use pep440_rs::{Version, VersionSpecifiers};
use serde::{Deserialize, Serialize};
use std::str::FromStr;

use super::tags::WheelName;

/// `Accept` header asking for the JSON simple API (PEP 691).
pub const SIMPLE_JSON: &str = "application/vnd.pypi.simple.v1+json";

/// PEP 503 normalisation: lower case, runs of `-`, `_`, `.` become one `-`.
pub fn normalize_name(name: &str) -> String {
    let mut normalized = String::with_capacity(name.len());
    let mut last_was_separator = false;
    for character in name.trim().chars() {
        if matches!(character, '-' | '_' | '.') {
            if !last_was_separator {
                normalized.push('-');
            }
            last_was_separator = true;
        } else {
            normalized.push(character.to_ascii_lowercase());
            last_was_separator = false;
        }
    }
    normalized
}

/// A project page (`/simple/<name>/`) in PEP 691 JSON form.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProjectPage {
    /// Normalised project name.
    pub name: String,
    /// Every file of every release.
    pub files: Vec<IndexFile>,
    /// Versions listed by the index (PEP 700), including releases without files.
    #[serde(default)]
    pub versions: Vec<String>,
}

/// `yanked`: `false`, `true` or a reason string (PEP 592 as mapped by PEP 691).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Yanked {
    /// Yanked or not, without reason.
    Flag(bool),
    /// Yanked with this reason.
    Reason(String),
}

/// `core-metadata`: `false`, `true` or a hash dictionary (PEP 658/714).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum CoreMetadata {
    /// Served (without hash) or not.
    Flag(bool),
    /// Served, with the hashes of the metadata file.
    Hashes(HashMap<String, String>),
}

/// One file of a project page.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexFile {
    /// File name, e.g. `requests-2.32.3-py3-none-any.whl`.
    pub filename: String,
    /// Absolute or page-relative URL.
    pub url: String,
    /// Hashes by algorithm name.
    #[serde(default)]
    pub hashes: HashMap<String, String>,
    /// `Requires-Python` of the file.
    #[serde(rename = "requires-python", default)]
    pub requires_python: Option<String>,
    /// PEP 592 yank status.
    #[serde(default)]
    pub yanked: Option<Yanked>,
    /// PEP 714 key for the core metadata file.
    #[serde(
        rename = "core-metadata",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub core_metadata: Option<CoreMetadata>,
    /// Pre-PEP 714 key for the same thing, still served by some mirrors.
    #[serde(
        rename = "data-dist-info-metadata",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub dist_info_metadata: Option<CoreMetadata>,
    /// Size in bytes (PEP 700).
    #[serde(default)]
    pub size: Option<u64>,
}

/// What a file is, as far as installing goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    /// A wheel with its parsed name.
    Wheel(WheelName),
    /// A source distribution (`.tar.gz`, `.zip`, `.tar.bz2`, `.tgz`).
    Sdist,
    /// Eggs, installers and other files nothing here installs.
    Other,
}

impl IndexFile {
    /// The file's sha256, if the index gave one.
    pub fn sha256(&self) -> Option<&str> {
        self.hashes.get("sha256").map(String::as_str)
    }

    /// Whether the file is yanked.
    pub fn is_yanked(&self) -> bool {
        matches!(
            self.yanked,
            Some(Yanked::Flag(true)) | Some(Yanked::Reason(_))
        )
    }

    /// The yank reason, if any was given.
    pub fn yank_reason(&self) -> Option<&str> {
        match &self.yanked {
            Some(Yanked::Reason(reason)) => Some(reason),
            _ => None,
        }
    }

    /// Whether a `<url>.metadata` file is served, and its sha256 when known.
    pub fn metadata_available(&self) -> (bool, Option<String>) {
        match self
            .core_metadata
            .as_ref()
            .or(self.dist_info_metadata.as_ref())
        {
            Some(CoreMetadata::Flag(flag)) => (*flag, None),
            Some(CoreMetadata::Hashes(hashes)) => (true, hashes.get("sha256").cloned()),
            None => (false, None),
        }
    }

    /// Wheel, sdist or something else, from the file name.
    pub fn kind(&self) -> FileKind {
        let lower = self.filename.to_ascii_lowercase();
        if let Some(wheel) = WheelName::parse(&self.filename) {
            FileKind::Wheel(wheel)
        } else if [".tar.gz", ".zip", ".tar.bz2", ".tgz", ".tar.xz"]
            .iter()
            .any(|suffix| lower.ends_with(suffix))
        {
            FileKind::Sdist
        } else {
            FileKind::Other
        }
    }

    /// The release version, from the file name (wheel) or the name prefix (sdist).
    pub fn version(&self, project: &str) -> Option<Version> {
        let text = match self.kind() {
            FileKind::Wheel(wheel) => wheel.version,
            FileKind::Sdist => sdist_version(&self.filename, project)?,
            FileKind::Other => return None,
        };
        Version::from_str(&text).ok()
    }

    /// Whether the file's `Requires-Python` accepts the interpreter (absent or unparsable: yes,
    /// as pip does).
    pub fn accepts_python(&self, python: &Version) -> bool {
        match &self.requires_python {
            Some(spec) if !spec.trim().is_empty() => VersionSpecifiers::from_str(spec)
                .map(|specifiers| specifiers.contains(python))
                .unwrap_or(true),
            _ => true,
        }
    }
}

/// Version part of an sdist name `<name>-<version>.<ext>`, matching the normalised project.
fn sdist_version(filename: &str, project: &str) -> Option<String> {
    let lower = filename.to_ascii_lowercase();
    let stem_length = [".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip"]
        .iter()
        .find(|suffix| lower.ends_with(*suffix))
        .map(|suffix| filename.len() - suffix.len())?;
    let stem = &filename[..stem_length];
    // The name may itself contain dashes: try every split, keep the one whose name matches.
    stem.match_indices('-').find_map(|(index, _)| {
        (normalize_name(&stem[..index]) == project).then(|| stem[index + 1..].to_string())
    })
}

impl ProjectPage {
    /// Parses a PEP 691 JSON page.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut page: ProjectPage = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        page.name = normalize_name(&page.name);
        Ok(page)
    }

    /// Files grouped by release version, newest release first.
    pub fn releases(&self) -> Vec<(Version, Vec<&IndexFile>)> {
        let mut by_version: std::collections::BTreeMap<Version, Vec<&IndexFile>> =
            Default::default();
        for file in &self.files {
            if let Some(version) = file.version(&self.name) {
                by_version.entry(version).or_default().push(file);
            }
        }
        by_version.into_iter().rev().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_as_pep_503() {
        assert_eq!(normalize_name("Charset_Normalizer"), "charset-normalizer");
        assert_eq!(normalize_name("zope.interface"), "zope-interface");
        assert_eq!(normalize_name("a-_.b"), "a-b");
        assert_eq!(normalize_name(" Django "), "django");
    }

    #[test]
    fn pages_parse_with_both_metadata_keys_and_yank_forms() {
        let page = ProjectPage::parse(
            br#"{"meta":{"api-version":"1.1"},"name":"Demo_Pkg","versions":["1.0","2.0"],"files":[
            {"filename":"demo_pkg-1.0-py3-none-any.whl","url":"a.whl","hashes":{"sha256":"aa"},
             "core-metadata":{"sha256":"bb"},"yanked":false},
            {"filename":"demo-pkg-1.0.tar.gz","url":"b","hashes":{},"data-dist-info-metadata":true,
             "yanked":"broken build","requires-python":">=3.12"},
            {"filename":"demo_pkg-2.0-py2.py3-none-any.whl","url":"c","hashes":{"sha256":"cc"}},
            {"filename":"demo_pkg-2.0.win32.exe","url":"d","hashes":{}}]}"#,
        )
        .unwrap();
        assert_eq!(page.name, "demo-pkg");
        let wheel = &page.files[0];
        assert_eq!(wheel.metadata_available(), (true, Some("bb".into())));
        assert!(!wheel.is_yanked());
        let sdist = &page.files[1];
        assert_eq!(sdist.kind(), FileKind::Sdist);
        assert_eq!(sdist.metadata_available(), (true, None));
        assert!(sdist.is_yanked());
        assert_eq!(sdist.yank_reason(), Some("broken build"));
        assert!(!sdist.accepts_python(&Version::from_str("3.11.2").unwrap()));
        assert!(wheel.accepts_python(&Version::from_str("3.11.2").unwrap()));
        assert_eq!(sdist.version("demo-pkg").unwrap().to_string(), "1.0");
        assert_eq!(page.files[2].metadata_available(), (false, None));
        assert_eq!(page.files[3].kind(), FileKind::Other);
        let releases = page.releases();
        assert_eq!(releases[0].0.to_string(), "2.0");
        assert_eq!(releases[1].1.len(), 2);
    }

    #[test]
    fn sdist_versions_survive_dashes_in_names() {
        assert_eq!(
            sdist_version("python-dateutil-2.9.0.tar.gz", "python-dateutil").as_deref(),
            Some("2.9.0")
        );
        assert_eq!(
            sdist_version("docopt-0.6.2.tar.gz", "docopt").as_deref(),
            Some("0.6.2")
        );
        assert_eq!(
            sdist_version("Foo_Bar-1.0.zip", "foo-bar").as_deref(),
            Some("1.0")
        );
        assert_eq!(sdist_version("other-1.0.zip", "foo"), None);
    }
}
