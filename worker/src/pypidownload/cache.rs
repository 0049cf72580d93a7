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
//! tmp/                            partial writes, renamed when complete
//! ```
//!
//! Blobs, metadata and build requirements are immutable (keyed by content hash). Pages
//! change upstream; they are kept so that resolution can run with the index unreachable.

use std::io::Write;
use std::path::{Path, PathBuf};

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
        for sub in ["blobs/sha256", "metadata", "build", "pages", "tmp"] {
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
        path.is_file().then_some(path)
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
