//! The download cache one worker shares between all its VM slots.
//!
//! Several slots resolve at once, so every write goes to a temporary file in the cache's
//! own `tmp/` directory (same file system) and is renamed into place: readers see a whole
//! file or none, and two writers of the same content simply replace each other.
//!
//! Layout under the cache root:
//!
//! ```text
//! blobs/sha256/<2 hex>/<64 hex>   distribution files, named by their verified sha256
//! metadata/<64 hex>.metadata      core metadata of the distribution with that sha256
//! build/<64 hex>.json             build requirements read from that sdist
//! pages/<index key>/<name>.json   last project page fetched from an index (PEP 691 JSON)
//! pins/<key>                      sha256s a running job uses, one a line
//! tmp/                            partial writes, renamed when complete
//! ```
//!
//! Blobs, metadata and build requirements are immutable (keyed by content hash). Pages
//! change upstream; they are kept so that resolution can run with the index unreachable.
//!
//! Blobs are what takes space. Each use sets a blob's modification time, so
//! [`Cache::prune`] removes the least recently used first until the blobs fit a size
//! budget, and never one listed in a pin file: a running job pins its files (a
//! [`CachePin`], removed when dropped) and a `pyti-worker cache prune` run from a shell
//! sees the pins of the worker's running jobs.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use pyti_guest::digest::sha256_hex;

use super::error::{Error, Result};

/// A content-addressed cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// Temporary files older than this were left by a process that died mid-write.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Removes what crashed writers left in `tmp/`; young files may belong to a live writer.
fn remove_abandoned_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let abandoned = entry
            .metadata()
            .and_then(|metadata| metadata.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > ABANDONED_AFTER);
        if abandoned {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Cache {
    /// Opens (creating as needed) the cache at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for sub in ["blobs/sha256", "metadata", "build", "pages", "pins", "tmp"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io("creating cache directory", &dir, e))?;
        }
        remove_abandoned_temp_files(&root.join("tmp"));
        Ok(Cache { root })
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this sha256 lives (whether or not it exists).
    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        let sha256 = sha256.to_ascii_lowercase();
        let prefix = sha256.get(..2).unwrap_or("00");
        self.root.join("blobs/sha256").join(prefix).join(sha256)
    }

    /// The blob's path if it is present.
    pub fn blob(&self, sha256: &str) -> Option<PathBuf> {
        if !valid_hash(sha256) {
            return None;
        }
        let path = self.blob_path(sha256);
        if !path.is_file() {
            return None;
        }
        // A use makes the blob the most recently used (what pruning goes by); a
        // read-only cache still serves it.
        let _ = std::fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|file| file.set_modified(SystemTime::now()));
        Some(path)
    }

    /// A fresh temporary file inside the cache, for a writer that renames it later.
    pub fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        let dir = self.root.join("tmp");
        tempfile::NamedTempFile::new_in(&dir)
            .map_err(|e| Error::io("creating temporary file in", &dir, e))
    }

    /// Moves a completely written and verified temporary file to the blob's place.
    pub fn commit_blob(&self, temp: tempfile::NamedTempFile, sha256: &str) -> Result<PathBuf> {
        let path = self.blob_path(sha256);
        let parent = path.parent().expect("blob paths have a parent");
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io("creating cache directory", parent, e))?;
        temp.persist(&path)
            .map_err(|e| Error::io("moving download into the cache at", &path, e.error))?;
        Ok(path)
    }

    /// Writes bytes atomically to a path relative to the cache root.
    fn write_atomic(&self, relative: &Path, bytes: &[u8]) -> Result<()> {
        let path = self.root.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io("creating cache directory", parent, e))?;
        }
        let mut temp = self.temp_file()?;
        temp.write_all(bytes)
            .and_then(|()| temp.flush())
            .map_err(|e| Error::io("writing cache file", temp.path().to_path_buf(), e))?;
        temp.persist(&path)
            .map_err(|e| Error::io("writing cache file", &path, e.error))?;
        Ok(())
    }

    fn read(&self, relative: &Path) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(relative)).ok()
    }

    /// Core metadata stored for the distribution with this sha256.
    pub fn metadata(&self, dist_sha256: &str) -> Option<String> {
        if !valid_hash(dist_sha256) {
            return None;
        }
        self.read(&Path::new("metadata").join(format!("{dist_sha256}.metadata")))
            .and_then(|bytes| String::from_utf8(bytes).ok())
    }

    /// Stores core metadata for the distribution with this sha256.
    pub fn put_metadata(&self, dist_sha256: &str, text: &str) -> Result<()> {
        self.write_atomic(
            &Path::new("metadata").join(format!("{dist_sha256}.metadata")),
            text.as_bytes(),
        )
    }

    /// Build requirements stored for the sdist with this sha256.
    pub fn build_requirements(&self, dist_sha256: &str) -> Option<Vec<String>> {
        if !valid_hash(dist_sha256) {
            return None;
        }
        let bytes = self.read(&Path::new("build").join(format!("{dist_sha256}.json")))?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Stores the build requirements of the sdist with this sha256.
    pub fn put_build_requirements(&self, dist_sha256: &str, requirements: &[String]) -> Result<()> {
        let bytes = serde_json::to_vec(requirements).expect("strings serialise");
        self.write_atomic(
            &Path::new("build").join(format!("{dist_sha256}.json")),
            &bytes,
        )
    }

    fn page_path(index_url: &str, project: &str) -> PathBuf {
        let key = &sha256_hex(index_url.as_bytes())[..16];
        Path::new("pages").join(key).join(format!("{project}.json"))
    }

    /// The last project page fetched from this index, verbatim.
    pub fn page(&self, index_url: &str, project: &str) -> Option<Vec<u8>> {
        self.read(&Self::page_path(index_url, project))
    }

    /// The newest cached page of the project from any index. Used when the configured
    /// index cannot answer: files are still verified by the sha256 the page lists, so a
    /// page from another index (typically the same index under another URL) is safe.
    pub fn page_from_any_index(&self, project: &str) -> Option<Vec<u8>> {
        let pages = std::fs::read_dir(self.root.join("pages")).ok()?;
        let newest = pages
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.path().join(format!("{project}.json")))
            .filter_map(|path| Some((path.metadata().ok()?.modified().ok()?, path)))
            .max_by_key(|(modified, _)| *modified)?;
        std::fs::read(newest.1).ok()
    }

    /// Stores a project page fetched from this index.
    pub fn put_page(&self, index_url: &str, project: &str, bytes: &[u8]) -> Result<()> {
        self.write_atomic(&Self::page_path(index_url, project), bytes)
    }
}

/// What the cache holds, for `pyti-worker cache stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// Distribution files.
    pub blobs: usize,
    /// Their bytes.
    pub blob_bytes: u64,
    /// Distribution files a running job uses.
    pub pinned_blobs: usize,
    /// Their bytes.
    pub pinned_bytes: u64,
    /// Jobs holding pins.
    pub pins: usize,
    /// Metadata, build requirement and page files (small, never pruned).
    pub other_files: usize,
    /// Their bytes.
    pub other_bytes: u64,
}

/// What one prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// sha256 of each removed blob, least recently used first.
    pub removed: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Blob bytes left.
    pub kept_bytes: u64,
    /// Bytes over the budget that could not go because running jobs use them.
    pub pinned_over_budget: u64,
}

/// The blobs one running job uses, kept from pruning until this is dropped.
#[derive(Debug)]
pub struct CachePin {
    path: PathBuf,
}

impl Drop for CachePin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct BlobEntry {
    sha256: String,
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

fn files_under(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(metadata) = entry.metadata() else {
            continue;
        };
        if metadata.is_dir() {
            files_under(&entry.path(), out);
        } else if metadata.is_file() {
            out.push((entry.path(), metadata));
        }
    }
}

impl Cache {
    /// Pins `sha256s` for the job `key` (any string; it names the pin file by its hash)
    /// until the returned guard is dropped.
    pub fn pin<'a>(
        &self,
        key: &str,
        sha256s: impl IntoIterator<Item = &'a str>,
    ) -> Result<CachePin> {
        let name = &sha256_hex(key.as_bytes())[..32];
        let mut text = String::new();
        for sha256 in sha256s {
            text.push_str(&sha256.to_ascii_lowercase());
            text.push('\n');
        }
        self.write_atomic(&Path::new("pins").join(name), text.as_bytes())?;
        Ok(CachePin {
            path: self.root.join("pins").join(name),
        })
    }

    /// Removes every pin: what a worker does at start, when no job of its runs.
    pub fn clear_pins(&self) -> Result<()> {
        let dir = self.root.join("pins");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating cache directory", &dir, e))
    }

    fn pinned(&self) -> (HashSet<String>, usize) {
        let mut pinned = HashSet::new();
        let mut pins = 0;
        if let Ok(entries) = std::fs::read_dir(self.root.join("pins")) {
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    pins += 1;
                    pinned.extend(text.lines().filter(|l| valid_hash(l)).map(str::to_string));
                }
            }
        }
        (pinned, pins)
    }

    fn blob_entries(&self) -> Vec<BlobEntry> {
        let mut files = Vec::new();
        files_under(&self.root.join("blobs/sha256"), &mut files);
        files
            .into_iter()
            .filter_map(|(path, metadata)| {
                let sha256 = path.file_name()?.to_str()?.to_string();
                valid_hash(&sha256).then(|| BlobEntry {
                    sha256,
                    bytes: metadata.len(),
                    used: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    path,
                })
            })
            .collect()
    }

    /// What the cache holds.
    pub fn stats(&self) -> CacheStats {
        let (pinned, pins) = self.pinned();
        let mut stats = CacheStats {
            pins,
            ..CacheStats::default()
        };
        for blob in self.blob_entries() {
            stats.blobs += 1;
            stats.blob_bytes += blob.bytes;
            if pinned.contains(&blob.sha256) {
                stats.pinned_blobs += 1;
                stats.pinned_bytes += blob.bytes;
            }
        }
        let mut others = Vec::new();
        for sub in ["metadata", "build", "pages"] {
            files_under(&self.root.join(sub), &mut others);
        }
        stats.other_files = others.len();
        stats.other_bytes = others.iter().map(|(_, m)| m.len()).sum();
        stats
    }

    /// Removes least recently used blobs until the blobs take at most `max_bytes`,
    /// never one a running job pinned.
    pub fn prune(&self, max_bytes: u64) -> Result<PruneReport> {
        let (pinned, _) = self.pinned();
        let mut blobs = self.blob_entries();
        blobs.sort_by(|a, b| a.used.cmp(&b.used).then(a.sha256.cmp(&b.sha256)));
        let mut total: u64 = blobs.iter().map(|b| b.bytes).sum();
        let mut report = PruneReport::default();
        for blob in blobs {
            if total <= max_bytes {
                break;
            }
            if pinned.contains(&blob.sha256) {
                continue;
            }
            match std::fs::remove_file(&blob.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing cached file", &blob.path, e)),
            }
            total -= blob.bytes;
            report.freed_bytes += blob.bytes;
            report.removed.push(blob.sha256);
        }
        report.kept_bytes = total;
        report.pinned_over_budget = total.saturating_sub(max_bytes);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_metadata_and_pages_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let hash = sha256_hex(b"wheel bytes");
        assert!(cache.blob(&hash).is_none());
        let mut temp = cache.temp_file().unwrap();
        temp.write_all(b"wheel bytes").unwrap();
        let path = cache.commit_blob(temp, &hash).unwrap();
        assert_eq!(cache.blob(&hash), Some(path.clone()));
        assert_eq!(std::fs::read(path).unwrap(), b"wheel bytes");
        assert!(cache.blob("../../etc/passwd").is_none());

        cache.put_metadata(&hash, "Name: a\n").unwrap();
        assert_eq!(cache.metadata(&hash).as_deref(), Some("Name: a\n"));
        cache
            .put_build_requirements(&hash, &["setuptools".into()])
            .unwrap();
        assert_eq!(cache.build_requirements(&hash).unwrap(), vec!["setuptools"]);
        cache
            .put_page("https://pypi.org/simple", "a", b"{}")
            .unwrap();
        assert_eq!(cache.page("https://pypi.org/simple", "a").unwrap(), b"{}");
        assert!(cache.page("https://mirror/simple", "a").is_none());
        assert_eq!(cache.page_from_any_index("a").unwrap(), b"{}");
        assert!(cache.page_from_any_index("b").is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
    }

    #[test]
    fn opening_removes_only_abandoned_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let old = dir.path().join("tmp/old");
        let young = dir.path().join("tmp/young");
        std::fs::write(&old, b"x").unwrap();
        std::fs::write(&young, b"x").unwrap();
        let two_days_ago = std::time::SystemTime::now() - 2 * ABANDONED_AFTER;
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();
        drop(cache);
        Cache::open(dir.path()).unwrap();
        assert!(!old.exists());
        assert!(young.exists());
    }

    #[test]
    fn concurrent_writers_of_one_blob_leave_one_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let content = vec![7u8; 1 << 20];
        let hash = sha256_hex(&content);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    let mut temp = cache.temp_file().unwrap();
                    temp.write_all(&content).unwrap();
                    cache.commit_blob(temp, &hash).unwrap();
                });
            }
        });
        assert_eq!(
            sha256_hex(&std::fs::read(cache.blob(&hash).unwrap()).unwrap()),
            hash
        );
    }
}
