//! Per-run qcow2 overlays on a read-only base image: discarding the overlay is the rollback.
//!
//! A run writes only to its overlay, so a worker killed mid-run leaves a stale overlay
//! file (deleted at the next start, found by name prefix) and never a dirty base image.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::VmError;

/// A qcow2 overlay file backed by a base image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// The overlay file the VM writes to.
    pub path: PathBuf,
    /// The base image it is backed by (never written).
    pub base: PathBuf,
}

impl Overlay {
    /// Creates a fresh overlay at `path` on `base` (a qcow2 image), replacing any old one.
    pub async fn create(base: &Path, path: &Path) -> Result<Self, VmError> {
        if !base.is_file() {
            return Err(VmError::MissingFile {
                what: "base image",
                path: base.to_owned(),
            });
        }
        remove_if_present(path).await?;
        let output = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(base)
            .arg(path)
            .output()
            .await
            .map_err(|source| VmError::Command {
                command: "qemu-img create".into(),
                detail: format!("{source} (is qemu-utils installed?)"),
            })?;
        if !output.status.success() {
            return Err(VmError::Command {
                command: format!("qemu-img create -b {} {}", base.display(), path.display()),
                detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            base: base.to_owned(),
        })
    }

    /// Rollback: throws away everything the last run wrote and starts from the base again.
    pub async fn reset(&self) -> Result<(), VmError> {
        Self::create(&self.base, &self.path).await.map(|_| ())
    }

    /// Deletes the overlay file.
    pub async fn discard(self) -> Result<(), VmError> {
        remove_if_present(&self.path).await
    }
}

async fn remove_if_present(path: &Path) -> Result<(), VmError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VmError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Overlay files in `dir` whose names start with `prefix` (what a killed worker left).
pub fn stale_overlays(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_overlay_of(p, prefix))
        .collect();
    found.sort();
    found
}

fn is_overlay_of(path: &Path, prefix: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".qcow2"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_names_are_matched_by_prefix_and_extension() {
        assert!(is_overlay_of(
            Path::new("/o/pyti-w1-slot0.qcow2"),
            "pyti-w1-"
        ));
        assert!(!is_overlay_of(
            Path::new("/o/pyti-w2-slot0.qcow2"),
            "pyti-w1-"
        ));
        assert!(!is_overlay_of(
            Path::new("/o/pyti-w1-slot0.img"),
            "pyti-w1-"
        ));
    }

    #[tokio::test]
    async fn overlay_reset_discards_writes_and_leaves_base_alone() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("16M")
            .status()
            .unwrap();
        assert!(status.success());
        let base_bytes = std::fs::read(&base).unwrap();
        let overlay = Overlay::create(&base, &dir.path().join("pyti-t-0.qcow2"))
            .await
            .unwrap();
        let written = std::process::Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0xab 0 1M"])
            .arg(&overlay.path)
            .output()
            .expect("qemu-io (qemu-utils) is installed");
        assert!(
            written.status.success(),
            "{}",
            String::from_utf8_lossy(&written.stderr)
        );
        let written_len = std::fs::metadata(&overlay.path).unwrap().len();
        assert!(written_len > 1024 * 1024);
        overlay.reset().await.unwrap();
        assert!(std::fs::metadata(&overlay.path).unwrap().len() < 1024 * 1024);
        assert_eq!(std::fs::read(&base).unwrap(), base_bytes);
        assert_eq!(
            stale_overlays(dir.path(), "pyti-t-"),
            vec![overlay.path.clone()]
        );
        overlay.discard().await.unwrap();
        assert!(stale_overlays(dir.path(), "pyti-t-").is_empty());
    }
}
