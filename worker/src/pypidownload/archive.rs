//! Reading metadata out of downloaded archives without running anything.
//!
//! When the index serves no PEP 658 metadata file, the only way to learn a release's
//! dependencies without executing its build is to open the archive: `*.dist-info/METADATA`
//! in a wheel, `PKG-INFO` and `pyproject.toml` at the top of an sdist. Archives are
//! untrusted input, so entries are size-capped and only read, never extracted.
//! These functions block; async callers wrap them in `spawn_blocking`.

use std::cell::Cell;
use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

/// Largest metadata or pyproject file read from an archive.
const MAX_ENTRY_BYTES: u64 = 8 << 20;

/// Below this many decompressed bytes the ratio is not looked at: small files of
/// repeated text compress far better than archives do.
const RATIO_FLOOR_BYTES: u64 = 16 << 20;

/// Most entries a zip sdist may list (its central directory is read whole).
const MAX_ZIP_ENTRIES: usize = 100_000;

/// How much an archive may expand while it is read: a `.tar.gz` is decompressed as a
/// stream and stopped as soon as either limit is passed, so a gzip bomb costs only
/// what the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveLimits {
    /// Most bytes decompressed from one archive. Default: 1 GiB.
    pub max_bytes: u64,
    /// Most decompressed bytes per compressed byte (above 16 MiB). Default: 200.
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        ArchiveLimits {
            max_bytes: 1 << 30,
            max_ratio: 200,
        }
    }
}

/// Why an archive could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// Damaged or not the format its name says.
    #[error("{0}")]
    Invalid(String),
    /// It expands past its limits (a decompression bomb, or simply too big).
    #[error("{0}")]
    TooLarge(String),
}

impl From<String> for ArchiveError {
    fn from(reason: String) -> Self {
        ArchiveError::Invalid(reason)
    }
}

/// A reader that counts what it yields and fails once the count passes the limits;
/// the count is shared so the caller can tell a limit from any other failure after
/// the archive library wrapped the error.
struct Budgeted<R> {
    inner: R,
    read: Rc<Cell<u64>>,
    allowed: u64,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        if self.read.get() > self.allowed {
            return Err(std::io::Error::other("decompressed size limit passed"));
        }
        Ok(n)
    }
}

impl ArchiveLimits {
    /// Decompressed bytes allowed for an archive of `compressed` bytes.
    pub fn allowed(&self, compressed: u64) -> u64 {
        let by_ratio = compressed
            .saturating_mul(self.max_ratio)
            .max(RATIO_FLOOR_BYTES);
        self.max_bytes.min(by_ratio)
    }

    fn too_large(&self, read: u64, compressed: u64) -> ArchiveError {
        ArchiveError::TooLarge(format!(
            "stopped after decompressing {read} bytes from {compressed}: past the limit of {} \
             bytes (at most {} bytes, at most {}x the compressed size; max_archive_bytes and \
             max_archive_ratio in [config])",
            self.allowed(compressed),
            self.max_bytes,
            self.max_ratio
        ))
    }
}

/// pip's build requirements for an sdist without `[build-system]` (PEP 518 default).
pub const DEFAULT_BUILD_REQUIRES: [&str; 2] = ["setuptools>=40.8.0", "wheel"];

/// What an sdist says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdistInfo {
    /// The top-level `PKG-INFO`, if present.
    pub pkg_info: Option<String>,
    /// `[build-system].requires` of `pyproject.toml`, or the setuptools default.
    pub build_requires: Vec<String>,
}

fn read_capped(reader: impl Read, name: &str) -> Result<String, String> {
    let mut text = String::new();
    reader
        .take(MAX_ENTRY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{name}: {e}"))?;
    if text.len() as u64 > MAX_ENTRY_BYTES {
        return Err(format!("{name} is larger than {MAX_ENTRY_BYTES} bytes"));
    }
    Ok(text)
}

/// Whether `path` is `<top>/<file>` exactly (one directory deep).
fn is_top_level(path: &str, file: &str) -> bool {
    let mut parts = path.trim_start_matches("./").split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(top), Some(name), None) if !top.is_empty() && name == file)
}

/// The build requirements in a `pyproject.toml` text (default when absent).
pub fn build_requires(pyproject: Option<&str>) -> Result<Vec<String>, String> {
    let default = || {
        DEFAULT_BUILD_REQUIRES
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let Some(text) = pyproject else {
        return Ok(default());
    };
    let value: toml::Value = toml::from_str(text).map_err(|e| format!("pyproject.toml: {e}"))?;
    let Some(requires) = value
        .get("build-system")
        .and_then(|table| table.get("requires"))
    else {
        return Ok(default());
    };
    let list = requires
        .as_array()
        .ok_or("pyproject.toml: [build-system].requires is not a list")?;
    list.iter()
        .map(|item| {
            item.as_str().map(str::to_string).ok_or_else(|| {
                "pyproject.toml: [build-system].requires holds a non-string".to_string()
            })
        })
        .collect()
}

/// Reads `PKG-INFO` and the build requirements from a `.tar.gz`/`.tgz` or `.zip` sdist,
/// with the default [`ArchiveLimits`].
pub fn read_sdist(path: &Path, filename: &str) -> Result<SdistInfo, String> {
    read_sdist_limited(path, filename, &ArchiveLimits::default()).map_err(|e| e.to_string())
}

/// [`read_sdist`] under `limits`.
pub fn read_sdist_limited(
    path: &Path,
    filename: &str,
    limits: &ArchiveLimits,
) -> Result<SdistInfo, ArchiveError> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let compressed = file
        .metadata()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    read_sdist_from(file, compressed, filename, limits)
}

/// Reads an sdist of `compressed` bytes from `reader` (a file, or bytes in memory).
pub fn read_sdist_from(
    reader: impl Read + Seek,
    compressed: u64,
    filename: &str,
    limits: &ArchiveLimits,
) -> Result<SdistInfo, ArchiveError> {
    let mut pkg_info = None;
    let mut pyproject = None;
    let lower = filename.to_ascii_lowercase();
    if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
        let read = Rc::new(Cell::new(0));
        let budgeted = Budgeted {
            inner: flate2::read::GzDecoder::new(reader),
            read: Rc::clone(&read),
            allowed: limits.allowed(compressed),
        };
        let walked = (|| -> Result<(), String> {
            let mut archive = tar::Archive::new(budgeted);
            for entry in archive.entries().map_err(|e| e.to_string())? {
                let entry = entry.map_err(|e| e.to_string())?;
                let name = entry
                    .path()
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .into_owned();
                if is_top_level(&name, "PKG-INFO") && pkg_info.is_none() {
                    pkg_info = Some(read_capped(entry, &name)?);
                } else if is_top_level(&name, "pyproject.toml") && pyproject.is_none() {
                    pyproject = Some(read_capped(entry, &name)?);
                }
            }
            Ok(())
        })();
        if read.get() > limits.allowed(compressed) {
            return Err(limits.too_large(read.get(), compressed));
        }
        walked?;
    } else if lower.ends_with(".zip") {
        let mut archive = zip::ZipArchive::new(reader).map_err(|e| e.to_string())?;
        if archive.len() > MAX_ZIP_ENTRIES {
            return Err(ArchiveError::TooLarge(format!(
                "the zip lists {} entries, more than {MAX_ZIP_ENTRIES}",
                archive.len()
            )));
        }
        for index in 0..archive.len() {
            let entry = archive.by_index(index).map_err(|e| e.to_string())?;
            let name = entry.name().to_string();
            if is_top_level(&name, "PKG-INFO") && pkg_info.is_none() {
                pkg_info = Some(read_capped(entry, &name)?);
            } else if is_top_level(&name, "pyproject.toml") && pyproject.is_none() {
                pyproject = Some(read_capped(entry, &name)?);
            }
        }
    } else {
        return Err(ArchiveError::Invalid(format!(
            "unsupported sdist format {filename:?} (only .tar.gz and .zip are read)"
        )));
    }
    Ok(SdistInfo {
        pkg_info,
        build_requires: build_requires(pyproject.as_deref())?,
    })
}

/// Reads `<name>.dist-info/METADATA` from a wheel.
pub fn read_wheel_metadata(path: &Path) -> Result<String, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    read_wheel_metadata_from(file)
}

/// Reads `<name>.dist-info/METADATA` from a wheel's bytes in `reader`.
pub fn read_wheel_metadata_from(reader: impl Read + Seek) -> Result<String, String> {
    let mut archive = zip::ZipArchive::new(reader).map_err(|e| e.to_string())?;
    let name = archive
        .file_names()
        .find(|name| {
            let mut parts = name.split('/');
            matches!((parts.next(), parts.next(), parts.next()), (Some(dir), Some("METADATA"), None) if dir.ends_with(".dist-info"))
        })
        .map(str::to_string)
        .ok_or("the wheel has no .dist-info/METADATA")?;
    let entry = archive.by_name(&name).map_err(|e| e.to_string())?;
    read_capped(entry, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn build_requirements_default_to_setuptools() {
        assert_eq!(build_requires(None).unwrap(), DEFAULT_BUILD_REQUIRES);
        assert_eq!(
            build_requires(Some("[tool.black]\nx = 1\n")).unwrap(),
            DEFAULT_BUILD_REQUIRES
        );
        assert_eq!(
            build_requires(Some("[build-system]\nrequires = [\"hatchling>=1.8\"]\nbuild-backend = \"hatchling.build\"\n")).unwrap(),
            vec!["hatchling>=1.8"]
        );
        assert!(build_requires(Some("[build-system]\nrequires = \"x\"\n")).is_err());
        assert!(build_requires(Some("not toml [")).is_err());
    }

    #[test]
    fn top_level_means_one_directory_deep() {
        assert!(is_top_level("docopt-0.6.2/PKG-INFO", "PKG-INFO"));
        assert!(is_top_level("./docopt-0.6.2/PKG-INFO", "PKG-INFO"));
        assert!(!is_top_level(
            "docopt-0.6.2/docopt.egg-info/PKG-INFO",
            "PKG-INFO"
        ));
        assert!(!is_top_level("PKG-INFO", "PKG-INFO"));
    }

    #[test]
    fn sdists_and_wheels_are_read_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let tar_path = dir.path().join("demo-1.0.tar.gz");
        {
            let encoder = flate2::write::GzEncoder::new(
                File::create(&tar_path).unwrap(),
                flate2::Compression::fast(),
            );
            let mut builder = tar::Builder::new(encoder);
            for (name, text) in [
                (
                    "demo-1.0/PKG-INFO",
                    "Metadata-Version: 2.2\nName: demo\nVersion: 1.0\n",
                ),
                ("demo-1.0/demo.egg-info/PKG-INFO", "Name: wrong\n"),
                (
                    "demo-1.0/pyproject.toml",
                    "[build-system]\nrequires = [\"flit_core\"]\n",
                ),
            ] {
                let mut header = tar::Header::new_gnu();
                header.set_size(text.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                builder
                    .append_data(&mut header, name, text.as_bytes())
                    .unwrap();
            }
            builder.into_inner().unwrap().finish().unwrap();
        }
        let info = read_sdist(&tar_path, "demo-1.0.tar.gz").unwrap();
        assert!(info.pkg_info.unwrap().contains("Name: demo"));
        assert_eq!(info.build_requires, vec!["flit_core"]);

        let zip_path = dir.path().join("demo-1.0-py3-none-any.whl");
        {
            let mut writer = zip::ZipWriter::new(File::create(&zip_path).unwrap());
            let options = zip::write::SimpleFileOptions::default();
            writer.start_file("demo/__init__.py", options).unwrap();
            writer
                .start_file("demo-1.0.dist-info/METADATA", options)
                .unwrap();
            writer
                .write_all(b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
                .unwrap();
            writer.finish().unwrap();
        }
        assert!(read_wheel_metadata(&zip_path)
            .unwrap()
            .contains("Version: 1.0"));
        let sdist_zip = read_sdist(&zip_path, "demo-1.0.zip").unwrap();
        assert_eq!(sdist_zip.pkg_info, None);
        assert_eq!(sdist_zip.build_requires, DEFAULT_BUILD_REQUIRES);
        assert!(read_sdist(&zip_path, "demo-1.0.tar.bz2").is_err());
        assert!(read_wheel_metadata(&tar_path).is_err());
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_first_limit_it_passes() {
        let expanded: u64 = 40 << 20;
        let mut bytes = Vec::new();
        {
            let encoder = flate2::write::GzEncoder::new(&mut bytes, flate2::Compression::best());
            let mut builder = tar::Builder::new(encoder);
            let mut header = tar::Header::new_gnu();
            header.set_size(expanded);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(
                    &mut header,
                    "bomb-1.0/zeros",
                    std::io::repeat(0).take(expanded),
                )
                .unwrap();
            builder.into_inner().unwrap().finish().unwrap();
        }
        let read = |limits: ArchiveLimits| {
            read_sdist_from(
                std::io::Cursor::new(&bytes),
                bytes.len() as u64,
                "bomb-1.0.tar.gz",
                &limits,
            )
        };
        // The absolute limit.
        let error = read(ArchiveLimits {
            max_bytes: 1 << 20,
            max_ratio: 1_000_000,
        })
        .unwrap_err();
        assert!(
            matches!(&error, ArchiveError::TooLarge(reason) if reason.contains("past the limit of 1048576")),
            "{error}"
        );
        // The ratio (above its 16 MiB floor): about 1000:1 here.
        let error = read(ArchiveLimits {
            max_bytes: 1 << 30,
            max_ratio: 200,
        })
        .unwrap_err();
        assert!(matches!(&error, ArchiveError::TooLarge(_)), "{error}");
        // Generous limits read it to the end.
        let info = read(ArchiveLimits {
            max_bytes: 1 << 30,
            max_ratio: 1_000_000,
        })
        .unwrap();
        assert_eq!(info.pkg_info, None);
    }
}
