//! The `tools/` set: what the recipe's tools need and what the set's sdists need to build.
//!
//! pip builds every sdist in its own isolated environment, so two sdists may need
//! different versions of one backend (setuptools<60 and setuptools>=64). Each distinct
//! list of requirements is therefore resolved on its own and the union of the files goes
//! to `tools/`, where pip's `--find-links` picks what each build asks for. A backend that
//! is itself only an sdist needs its own build requirements: the loop follows them until
//! no new list appears (bounded, since backends rarely nest more than once).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::try_join_all;
use pep508_rs::{Requirement, VerbatimUrl};

use super::client::IndexClient;
use super::closure::Request;
use super::error::{Error, Result};
use super::index::{FileKind, IndexFile};
use super::resolver::{self, ResolveInput, ResolvedPackage};
use super::tags::TargetEnv;

/// Rounds of "resolve, then look at the new sdists' build requirements".
const MAX_ROUNDS: usize = 4;

/// The resolved tools and build backends.
#[derive(Debug, Default)]
pub struct Tools {
    /// Every package, keyed by its file's sha256 (one entry per distinct file).
    pub packages: BTreeMap<String, ResolvedPackage>,
    /// `name==version` of tool releases whose requirements are unknown.
    pub requirements_unknown: BTreeSet<String>,
}

/// Resolves the request's tools and the build requirements of `sdists` (name, file),
/// following the build requirements of sdists found on the way.
pub async fn resolve_tools(
    client: &Arc<IndexClient>,
    target: &TargetEnv,
    request: &Request,
    sdists: Vec<(String, IndexFile)>,
) -> Result<Tools> {
    let mut tools = Tools::default();
    let mut seen_sdists: BTreeSet<String> = BTreeSet::new();
    let mut resolved_groups: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut groups: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    if !request.tools.is_empty() {
        groups.insert(request.tools.clone(), vec!["tools".into()]);
    }
    let mut pending = sdists;
    for _ in 0..MAX_ROUNDS {
        pending.retain(|(_, file)| seen_sdists.insert(file.filename.clone()));
        for (name, requires) in build_requirements(client, &pending).await? {
            if !requires.is_empty() && !resolved_groups.contains(&requires) {
                groups
                    .entry(requires)
                    .or_default()
                    .push(format!("build of {name}"));
            }
        }
        if groups.is_empty() {
            break;
        }
        let round = std::mem::take(&mut groups);
        resolved_groups.extend(round.keys().cloned());
        let resolutions = try_join_all(
            round
                .into_iter()
                .map(|(requires, users)| resolve_group(client, target, request, requires, users)),
        )
        .await?;
        pending = Vec::new();
        for resolution in resolutions {
            tools
                .requirements_unknown
                .extend(resolution.requirements_unknown);
            for package in resolution.packages {
                if package.file.kind() == FileKind::Sdist {
                    pending.push((package.name.clone(), package.file.clone()));
                }
                let key = package
                    .file
                    .sha256()
                    .unwrap_or(&package.file.filename)
                    .to_string();
                tools.packages.entry(key).or_insert(package);
            }
        }
    }
    Ok(tools)
}

async fn build_requirements(
    client: &Arc<IndexClient>,
    sdists: &[(String, IndexFile)],
) -> Result<Vec<(String, Vec<String>)>> {
    try_join_all(sdists.iter().map(|(name, file)| async move {
        client
            .build_requirements(name, file)
            .await
            .map(|requires| (name.clone(), requires))
    }))
    .await
}

async fn resolve_group(
    client: &Arc<IndexClient>,
    target: &TargetEnv,
    request: &Request,
    requires: Vec<String>,
    users: Vec<String>,
) -> Result<resolver::Resolution> {
    let requirements = requires
        .iter()
        .map(|line| {
            Requirement::<VerbatimUrl>::from_str(line).map_err(|e| Error::InvalidRequest {
                request: line.clone(),
                reason: format!("tool or build requirement of {}: {e}", users.join(", ")),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    resolver::resolve(
        client.clone(),
        target,
        ResolveInput {
            label: format!("{} ({})", requires.join(", "), users.join(", ")),
            requirements,
            explain_top_level: true,
            overrides: request.overrides.clone(),
            local: None,
        },
    )
    .await
}
