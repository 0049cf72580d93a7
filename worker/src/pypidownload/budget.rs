//! What one download step may cost: files, bytes, time, and how far an archive may
//! expand. An index is a stranger's server; without limits one page could make a
//! worker download a whole mirror, or one sdist fill its disk. Each limit has its own
//! error naming the `[config]` key that raises it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::archive::ArchiveLimits;

/// The limits of one download step. The defaults fit the largest real closures
/// (scientific stacks with tools: about a hundred files, a few GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Budgets {
    /// Most files in the resolved set (distribution, sources, dependencies, tools).
    /// Default: 500.
    pub max_files: usize,
    /// Most bytes downloaded by one step (files and the archives read for metadata).
    /// Default: 4 GiB.
    pub max_bytes: u64,
    /// Longest resolution and download, in seconds. Default: 900.
    pub max_resolution_s: u64,
    /// How far an sdist may expand while it is read.
    pub archive: ArchiveLimits,
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            max_files: 500,
            max_bytes: 4 << 30,
            max_resolution_s: 900,
            archive: ArchiveLimits::default(),
        }
    }
}

impl Budgets {
    /// The time limit as a duration.
    pub fn max_resolution(&self) -> Duration {
        Duration::from_secs(self.max_resolution_s)
    }
}
