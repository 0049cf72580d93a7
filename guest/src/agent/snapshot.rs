//! File-system snapshots before and after an install: the seed's "files in weird places".
//!
//! strace sees writes only while it traces; a snapshot of the places a package should
//! never touch catches what the install task left behind by any route (a helper that
//! escaped tracing, a file written via a symlink). Paths, sizes and mtimes are enough:
//! the question is where, not what.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::behaviour::classify::is_within;
use crate::results::{FileChange, WrittenFile};

/// Most entries one snapshot records; past this the walk stops (and says so).
pub const MAX_SNAPSHOT_ENTRIES: usize = 500_000;

/// The roots a VM snapshot walks by default.
pub const DEFAULT_ROOTS: &[&str] = &[
    "/etc",
    "/root",
    "/home",
    "/tmp",
    "/var/tmp",
    "/var/spool",
    "/usr/local",
    "/usr/lib/python3",
    "/opt",
    "/srv",
];

/// Size and modification time of one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i128,
}

/// Every file and symlink under some roots, by absolute path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The entries.
    pub entries: BTreeMap<String, Stamp>,
    /// True when the walk stopped at [`MAX_SNAPSHOT_ENTRIES`].
    pub truncated: bool,
}

/// Walks `roots` without following symlinks, skipping anything within `excluded`.
/// Unreadable directories are skipped silently: the snapshot is best effort.
pub fn take(roots: &[PathBuf], excluded: &[PathBuf]) -> Snapshot {
    let excluded: Vec<String> = excluded.iter().map(|p| p.display().to_string()).collect();
    let mut snapshot = Snapshot::default();
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = stack.pop() {
        let text = path.display().to_string();
        if excluded.iter().any(|e| is_within(&text, e)) {
            continue;
        }
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if metadata.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|entry| entry.path()));
            }
            continue;
        }
        if snapshot.entries.len() >= MAX_SNAPSHOT_ENTRIES {
            snapshot.truncated = true;
            break;
        }
        let mtime_ns =
            i128::from(metadata.mtime()) * 1_000_000_000 + i128::from(metadata.mtime_nsec());
        snapshot.entries.insert(
            text,
            Stamp {
                size: metadata.len(),
                mtime_ns,
            },
        );
    }
    snapshot
}

/// Files that are new or changed in `after`, sorted by path.
pub fn changes(before: &Snapshot, after: &Snapshot) -> Vec<WrittenFile> {
    after
        .entries
        .iter()
        .filter_map(|(path, stamp)| {
            let change = match before.entries.get(path) {
                None => FileChange::Created,
                Some(old) if old != stamp => FileChange::Modified,
                Some(_) => return None,
            };
            Some(WrittenFile {
                path: path.clone(),
                size: stamp.size,
                change,
            })
        })
        .collect()
}

/// The roots to walk: the given ones, or [`DEFAULT_ROOTS`], keeping those that exist.
pub fn roots_or_default(given: &[PathBuf]) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = if given.is_empty() {
        DEFAULT_ROOTS.iter().map(PathBuf::from).collect()
    } else {
        given.to_vec()
    };
    roots
        .into_iter()
        .filter(|root| Path::new(root).exists())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(size: u64, mtime_ns: i128) -> Stamp {
        Stamp { size, mtime_ns }
    }

    #[test]
    fn changes_are_new_or_restamped_files() {
        let before = Snapshot {
            entries: [
                ("/a".to_string(), stamp(1, 10)),
                ("/b".to_string(), stamp(2, 20)),
                ("/c".to_string(), stamp(3, 30)),
            ]
            .into(),
            truncated: false,
        };
        let after = Snapshot {
            entries: [
                ("/a".to_string(), stamp(1, 10)),
                ("/b".to_string(), stamp(2, 21)),
                ("/d".to_string(), stamp(4, 40)),
            ]
            .into(),
            truncated: false,
        };
        assert_eq!(
            changes(&before, &after),
            vec![
                WrittenFile {
                    path: "/b".into(),
                    size: 2,
                    change: FileChange::Modified
                },
                WrittenFile {
                    path: "/d".into(),
                    size: 4,
                    change: FileChange::Created
                },
            ]
        );
    }

    #[test]
    fn walks_files_and_symlinks_and_honours_exclusions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("keep/deep")).unwrap();
        std::fs::create_dir_all(root.join("skip")).unwrap();
        std::fs::write(root.join("keep/deep/f"), b"12345").unwrap();
        std::fs::write(root.join("skip/g"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("keep/link")).unwrap();
        let before = take(&[root.to_path_buf()], &[root.join("skip")]);
        let paths: Vec<&String> = before.entries.keys().collect();
        let base = root.display().to_string();
        assert_eq!(
            paths,
            vec![&format!("{base}/keep/deep/f"), &format!("{base}/keep/link")]
        );
        assert_eq!(before.entries[&format!("{base}/keep/deep/f")].size, 5);

        std::fs::write(root.join("keep/new"), b"").unwrap();
        std::fs::write(root.join("skip/h"), b"").unwrap();
        let after = take(&[root.to_path_buf()], &[root.join("skip")]);
        let found: Vec<String> = changes(&before, &after)
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(found, vec![format!("{base}/keep/new")]);
    }
}
