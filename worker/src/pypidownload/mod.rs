//! Downloading a distribution and its dependency closure for a guest VM.
//!
//! The guest has no network, so everything it will install must be on its IO disk:
//! the distribution under test (`dist/`), its dependency closure (`wheels/`) and what
//! the recipe's tools and the sdists' build backends need (`tools/`). This module
//! decides that set on the host, for the guest's interpreter and platform, from index
//! data alone (PEP 691 pages, PEP 658 metadata, sdist `PKG-INFO`): package code never
//! runs here. Every byte is checked against the index's sha256 and kept in a
//! content-addressed cache shared by all VM slots; a pinned request that was resolved
//! once is served again from the cache without touching the network.
//!
//! Pieces: [`tags`] (target and wheel tags), [`index`] (PEP 691 pages), [`selection`]
//! (which file), [`coremeta`] and [`archive`] (metadata), [`localdist`] (a local file as the root), [`cache`], [`client`] (the index
//! shell), [`resolver`] (pubgrub), [`tools`] (the `tools/` set), [`checks`] (the `metadata` task), [`closure`] (the
//! whole step) and [`cli`] (`pyti-worker download`). Design notes: docs/pypidownload.md.

pub mod archive;
pub mod budget;
pub mod cache;
pub mod checks;
pub mod cli;
pub mod client;
pub mod closure;
pub mod coremeta;
pub mod error;
pub mod index;
pub mod localdist;
pub mod resolver;
pub mod selection;
pub mod tags;
pub mod tools;

pub use budget::Budgets;
pub use cache::{Cache, CachePin, CacheStats, PruneReport};
pub use checks::{CheckStatus, MetadataChecks};
pub use client::PYPI_SIMPLE;
pub use closure::{
    resolve_and_download, DownloadedFile, Request, ResolvedSet, Role, DEFAULT_TOOLS,
};
pub use error::{Error, Result};
pub use localdist::{local_distribution_metadata, LocalDistribution, LocalKind};
pub use resolver::RequirementsOverride;
pub use tags::TargetEnv;
