//! The latest version of a project, for jobs that leave `project_version` empty.
//!
//! The master records the version it resolved, so a job's results always say what was
//! tested even when PyPI publishes a new release while the job waits in a queue.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

use crate::error::{Error, Result};

/// The parts of PyPI's JSON API (`/pypi/NAME/json`) that matter here.
#[derive(Debug, Deserialize)]
pub struct ProjectPage {
    /// Files per version.
    #[serde(default)]
    pub releases: BTreeMap<String, Vec<ReleaseFile>>,
}

/// One file of a release.
#[derive(Debug, Deserialize)]
pub struct ReleaseFile {
    /// Withdrawn by its maintainers.
    #[serde(default)]
    pub yanked: bool,
}

/// The JSON API URL of `project` for an index configured as `index_url`: the simple
/// index `https://pypi.org/simple` has its JSON API at `https://pypi.org/pypi`.
pub fn json_api_url(index_url: &str, project: &str) -> String {
    let base = index_url.trim_end_matches('/');
    let base = base.strip_suffix("/simple").unwrap_or(base);
    format!("{base}/pypi/{project}/json")
}

/// The highest version with at least one file, none of whose files are all yanked,
/// that is neither a pre-release nor a development release.
pub fn latest_version(page: &ProjectPage) -> Option<String> {
    page.releases
        .iter()
        .filter(|(_, files)| !files.is_empty() && files.iter().any(|f| !f.yanked))
        .filter_map(|(v, _)| pep440_rs::Version::from_str(v).ok().map(|p| (p, v)))
        .filter(|(p, _)| !p.any_prerelease())
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(p, _)| p.to_string())
}

/// Asks the index for the latest version of `project` (already in normal form).
pub async fn resolve_latest(
    http: &reqwest::Client,
    index_url: &str,
    project: &str,
) -> Result<String> {
    let url = json_api_url(index_url, project);
    let unreachable = |message: String| Error::IndexUnreachable {
        project: project.to_owned(),
        url: url.clone(),
        message,
    };
    let response = http
        .get(&url)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(Error::UnknownProject {
            project: project.to_owned(),
            index: index_url.to_owned(),
        });
    }
    if !response.status().is_success() {
        return Err(unreachable(format!("HTTP {}", response.status())));
    }
    let page: ProjectPage = response
        .json()
        .await
        .map_err(|e| unreachable(format!("unexpected answer: {e}")))?;
    latest_version(&page).ok_or_else(|| Error::NoRelease {
        project: project.to_owned(),
        index: index_url.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_api_next_to_the_simple_index() {
        assert_eq!(
            json_api_url("https://pypi.org/simple/", "rarfile"),
            "https://pypi.org/pypi/rarfile/json"
        );
        assert_eq!(
            json_api_url("http://127.0.0.1:8000", "x"),
            "http://127.0.0.1:8000/pypi/x/json"
        );
    }

    #[test]
    fn latest_skips_yanked_empty_and_pre_releases() {
        let page: ProjectPage = serde_json::from_str(
            r#"{"releases": {
                "1.0": [{"yanked": false}],
                "1.10": [{"yanked": false}, {"yanked": true}],
                "2.0": [{"yanked": true}],
                "2.1": [],
                "3.0rc1": [{"yanked": false}],
                "3.0.dev2": [{"yanked": false}],
                "1.9": [{}],
                "not-a-version": [{"yanked": false}]
            }}"#,
        )
        .unwrap();
        assert_eq!(latest_version(&page).as_deref(), Some("1.10"));
        let none: ProjectPage = serde_json::from_str(r#"{"releases": {"1.0b1": [{}]}}"#).unwrap();
        assert_eq!(latest_version(&none), None);
    }
}
