//! `pyti-worker download`: resolve and download one request outside any job, to pre-warm
//! a worker's cache or to see what a failed install was given.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::cache::Cache;
use super::client::PYPI_SIMPLE;
use super::closure::{resolve_and_download, Request, ResolvedSet, DEFAULT_TOOLS};
use super::tags::TargetEnv;

/// Arguments of `pyti-worker download`.
#[derive(Debug, Clone, Args)]
pub struct DownloadArgs {
    /// What to download: NAME, NAME==VERSION, a PEP 508 requirement, or the path of a local
    /// wheel or sdist (its dependencies and tools then come from the index).
    pub requirement: String,
    /// Place the files under DIR/dist, DIR/wheels and DIR/tools.
    #[arg(long, value_name = "DIR")]
    pub dest: Option<PathBuf>,
    /// The guest's Python version (MAJOR.MINOR or MAJOR.MINOR.MICRO).
    #[arg(long, default_value = "3.11")]
    pub python: String,
    /// Print the resolved set as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Index: JSON simple index URL, file: URL or directory.
    #[arg(long, env = "PYTI_INDEX_URL", default_value = PYPI_SIMPLE)]
    pub index_url: String,
    /// Tools to resolve into tools/ (repeat the option; default pytest, pycodestyle, pyflakes).
    #[arg(long = "tool", value_name = "REQUIREMENT")]
    pub tools: Vec<String>,
}

/// Runs the command with the cache at `cache_root` and prints the set to stdout.
pub async fn run(
    args: DownloadArgs,
    cache_root: &Path,
    budgets: super::budget::Budgets,
) -> anyhow::Result<()> {
    let target = TargetEnv::cpython(&args.python)?;
    let cache = Cache::open(cache_root)?;
    let mut request = Request::from_argument(&args.requirement)
        .with_index(args.index_url.clone())
        .with_budgets(budgets);
    request.tools = if args.tools.is_empty() {
        DEFAULT_TOOLS.iter().map(|t| t.to_string()).collect()
    } else {
        args.tools.clone()
    };
    let set = resolve_and_download(&request, &target, &cache, args.dest.as_deref()).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&set)?);
    } else {
        print!("{}", table(&set));
    }
    Ok(())
}

/// `pyti-worker cache`: what the download cache holds, and pruning it by hand.
#[derive(Debug, Clone, Subcommand)]
pub enum CacheCommand {
    /// Files, bytes and what running jobs pin.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove least recently used files until the cache fits the budget (never a file
    /// a running job uses).
    Prune {
        /// The budget in bytes (default: cache_max_bytes of the configuration).
        #[arg(long, value_name = "BYTES")]
        max_bytes: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a cache command on the cache at `cache_root`; `budget` is the configured size.
pub fn run_cache(command: CacheCommand, cache_root: &Path, budget: u64) -> anyhow::Result<()> {
    let cache = Cache::open(cache_root)?;
    match command {
        CacheCommand::Stats { json } => {
            let stats = cache.stats();
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "{}: {} files, {} bytes (budget {budget}); {} files, {} bytes pinned by {} running jobs; {} metadata and page files, {} bytes",
                    cache_root.display(),
                    stats.blobs,
                    stats.blob_bytes,
                    stats.pinned_blobs,
                    stats.pinned_bytes,
                    stats.pins,
                    stats.other_files,
                    stats.other_bytes
                );
            }
        }
        CacheCommand::Prune { max_bytes, json } => {
            let report = cache.prune(max_bytes.unwrap_or(budget))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "removed {} files, {} bytes; {} bytes kept{}",
                    report.removed.len(),
                    report.freed_bytes,
                    report.kept_bytes,
                    if report.pinned_over_budget > 0 {
                        format!(
                            " ({} bytes over the budget are used by running jobs)",
                            report.pinned_over_budget
                        )
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    Ok(())
}

/// The resolved set as an aligned text table, one file per line.
pub fn table(set: &ResolvedSet) -> String {
    let rows: Vec<[String; 6]> = set
        .files()
        .map(|file| {
            [
                format!("{:?}", file.role).to_lowercase(),
                file.name.clone(),
                file.version.clone(),
                file.filename.clone(),
                file.sha256.clone(),
                if file.from_cache {
                    "cache"
                } else {
                    "downloaded"
                }
                .to_string(),
            ]
        })
        .collect();
    let header = ["role", "name", "version", "file", "sha256", "source"].map(str::to_string);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(
        out,
        "{} files for {} from {}{}; metadata checks: {:?}",
        rows.len(),
        set.target.describe(),
        set.index_url,
        if set.offline {
            " (cache only, no network)"
        } else {
            ""
        },
        set.metadata.overall()
    );
    if !set.requirements_unknown.is_empty() {
        let _ = writeln!(
            out,
            "requirements unknown (old sdist metadata, to be reported by a guest pass): {}",
            set.requirements_unknown.join(", ")
        );
    }
    out
}
