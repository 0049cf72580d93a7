//! A distribution file on the host's disk as the root of a resolution.
//!
//! Authors test a release before they upload it (`pyti-vm-run ./dist/foo-1.0.tar.gz`):
//! the file under test is local while its dependencies, tools and build backends still
//! come from the index. Its core metadata is read from the archive as data (wheel
//! `METADATA`, sdist `PKG-INFO` and `pyproject.toml`) with the same code that reads
//! downloaded archives, so nothing of the package runs on the host. The file is then
//! stored in the cache under its sha256 like any download: everything keyed by that hash
//! (metadata, build requirements, the blob) changes when the file changes, so a rebuilt
//! file is never mistaken for the previous one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use pep440_rs::{Version, VersionSpecifiers};
use pyti_guest::digest::sha256_file;
use serde::Serialize;

use super::archive;
use super::cache::Cache;
use super::coremeta::CoreMetadata;
use super::error::{Error, Result};
use super::index::{normalize_name, FileKind, IndexFile};
use super::tags::{TagRanking, TargetEnv, WheelName};

/// Whether a local file is a built wheel or a source distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalKind {
    /// A `.whl`.
    Wheel,
    /// A `.tar.gz`, `.tgz` or `.zip` sdist.
    Sdist,
}

/// A local wheel or sdist, read as data.
#[derive(Debug, Clone, Serialize)]
pub struct LocalDistribution {
    /// PEP 503 normalised project name.
    pub name: String,
    /// Release version (PEP 440).
    pub version: Version,
    /// Where the file is.
    pub path: PathBuf,
    /// The file's name.
    pub filename: String,
    /// Wheel or sdist.
    pub kind: LocalKind,
    /// sha256 of the file's bytes.
    pub sha256: String,
    /// The core metadata the resolver uses.
    pub metadata: CoreMetadata,
    /// The metadata text as read from the archive.
    #[serde(skip)]
    pub metadata_text: String,
    /// `[build-system].requires` of an sdist (the setuptools default without one);
    /// empty for wheels.
    pub build_requires: Vec<String>,
}

/// The kind of a local file from its name, or why it is not one this module reads.
pub fn local_kind(filename: &str) -> std::result::Result<LocalKind, String> {
    let lower = filename.to_ascii_lowercase();
    if lower.ends_with(".whl") {
        Ok(LocalKind::Wheel)
    } else if [".tar.gz", ".tgz", ".zip"]
        .iter()
        .any(|suffix| lower.ends_with(suffix))
    {
        Ok(LocalKind::Sdist)
    } else {
        Err(
            "unsupported file type: expected a wheel (.whl) or an sdist (.tar.gz, .tgz, .zip)"
                .into(),
        )
    }
}

/// Checks that the metadata's name and version agree with each other and with the file
/// name; returns the normalised name and the parsed version.
pub fn check_identity(
    filename: &str,
    kind: LocalKind,
    metadata: &CoreMetadata,
) -> std::result::Result<(String, Version), String> {
    let name = normalize_name(&metadata.name);
    let name_ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !name_ok {
        return Err(format!(
            "invalid project name {:?} in the metadata",
            metadata.name
        ));
    }
    let version = Version::from_str(&metadata.version).map_err(|e| {
        format!(
            "invalid version {:?} in the metadata: {e}",
            metadata.version
        )
    })?;
    let (file_name, file_version) = match kind {
        LocalKind::Wheel => {
            let wheel = WheelName::parse(filename).ok_or_else(|| {
                "the file name is not a wheel name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl)"
                    .to_string()
            })?;
            (normalize_name(&wheel.name), wheel.version)
        }
        LocalKind::Sdist => {
            let file = bare_file(filename);
            let file_version = file.version(&name).ok_or_else(|| {
                format!("the file name does not start with the project name {name:?} and a version (NAME-VERSION.tar.gz)")
            })?;
            (name.clone(), file_version.to_string())
        }
    };
    if file_name != name {
        return Err(format!(
            "the file name says project {file_name:?} but the metadata says {name:?}"
        ));
    }
    let parsed_file_version = Version::from_str(&file_version)
        .map_err(|e| format!("invalid version {file_version:?} in the file name: {e}"))?;
    if parsed_file_version != version {
        return Err(format!(
            "the file name says version {file_version} but the metadata says {}",
            metadata.version
        ));
    }
    Ok((name, version))
}

/// Whether the distribution installs on `target`: a wheel's tags must fit, and the
/// metadata's `Requires-Python` must accept the guest's interpreter.
pub fn check_target(
    filename: &str,
    kind: LocalKind,
    metadata: &CoreMetadata,
    target: &TargetEnv,
) -> std::result::Result<(), String> {
    if kind == LocalKind::Wheel {
        let wheel = WheelName::parse(filename)
            .ok_or_else(|| "the file name is not a wheel name".to_string())?;
        if TagRanking::new(target).rank(&wheel).is_none() {
            return Err(format!(
                "the wheel's tags ({}) do not fit the guest ({}, Python {})",
                wheel.tags().join(", "),
                target.describe(),
                target.python_full_version
            ));
        }
    }
    if let Some(spec) = metadata
        .requires_python
        .as_deref()
        .filter(|s| !s.trim().is_empty())
    {
        let specifiers = VersionSpecifiers::from_str(spec)
            .map_err(|e| format!("Requires-Python {spec:?} does not parse: {e}"))?;
        if !specifiers.contains(&target.python_version()) {
            return Err(format!(
                "Requires-Python {spec} excludes the guest's Python {}",
                target.python_full_version
            ));
        }
    }
    Ok(())
}

/// An index entry with only a name, for the name-based helpers of [`IndexFile`].
fn bare_file(filename: &str) -> IndexFile {
    IndexFile {
        filename: filename.to_string(),
        url: filename.to_string(),
        hashes: HashMap::new(),
        requires_python: None,
        yanked: None,
        core_metadata: None,
        dist_info_metadata: None,
        size: None,
    }
}

/// Reads the core metadata of a local wheel or sdist without running any of its code.
/// Blocking; async callers use `spawn_blocking`.
pub fn local_distribution_metadata(path: &Path) -> Result<LocalDistribution> {
    let invalid = |reason: String| Error::LocalDistribution {
        path: path.to_path_buf(),
        reason,
    };
    let filename = path
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| invalid("the path has no file name in UTF-8".into()))?
        .to_string();
    let kind = local_kind(&filename).map_err(invalid)?;
    if !path.is_file() {
        return Err(invalid(if path.exists() {
            "not a regular file".into()
        } else {
            "no such file".into()
        }));
    }
    let (text, build_requires) = match kind {
        LocalKind::Wheel => (
            archive::read_wheel_metadata(path)
                .map_err(|e| invalid(format!("not a readable wheel: {e}")))?,
            Vec::new(),
        ),
        LocalKind::Sdist => {
            let info = archive::read_sdist(path, &filename)
                .map_err(|e| invalid(format!("not a readable sdist: {e}")))?;
            let text = info.pkg_info.ok_or_else(|| {
                invalid("the sdist has no top-level PKG-INFO (NAME-VERSION/PKG-INFO)".into())
            })?;
            (text, info.build_requires)
        }
    };
    let metadata = CoreMetadata::parse(&text).map_err(|e| invalid(format!("metadata: {e}")))?;
    let (name, version) = check_identity(&filename, kind, &metadata).map_err(invalid)?;
    let sha256 = sha256_file(path).map_err(|e| Error::io("reading local distribution", path, e))?;
    Ok(LocalDistribution {
        name,
        version,
        path: path.to_path_buf(),
        filename,
        kind,
        sha256,
        metadata,
        metadata_text: text,
        build_requires,
    })
}

impl LocalDistribution {
    /// Refuses the file when it cannot install on `target` (wheel tags, Requires-Python).
    pub fn check_target(&self, target: &TargetEnv) -> Result<()> {
        check_target(&self.filename, self.kind, &self.metadata, target).map_err(|reason| {
            Error::LocalDistribution {
                path: self.path.clone(),
                reason,
            }
        })
    }

    /// How the distribution appears in messages, e.g. `foo 1.0 (local file foo-1.0.tar.gz)`.
    pub fn label(&self) -> String {
        format!(
            "{} {} (local file {})",
            self.name, self.version, self.filename
        )
    }

    /// Whether its `Requires-Dist` can be trusted (PEP 643 for sdists).
    pub fn requirements_known(&self) -> bool {
        self.metadata
            .requirements_known(self.kind == LocalKind::Sdist)
    }

    /// Copies the file into the cache under its sha256 and records its metadata and
    /// build requirements there; returns the index entry the resolver uses for it.
    /// Blocking.
    pub fn store(&self, cache: &Cache) -> Result<IndexFile> {
        if cache.blob(&self.sha256).is_none() {
            let mut temp = cache.temp_file()?;
            let mut source = std::fs::File::open(&self.path)
                .map_err(|e| Error::io("reading local distribution", &self.path, e))?;
            std::io::copy(&mut source, temp.as_file_mut())
                .map_err(|e| Error::io("copying into the cache", temp.path().to_path_buf(), e))?;
            let copied = sha256_file(temp.path())
                .map_err(|e| Error::io("reading", temp.path().to_path_buf(), e))?;
            if copied != self.sha256 {
                return Err(Error::LocalDistribution {
                    path: self.path.clone(),
                    reason: "the file changed while it was being read".into(),
                });
            }
            cache.commit_blob(temp, &self.sha256)?;
        }
        cache.put_metadata(&self.sha256, &self.metadata_text)?;
        if self.kind == LocalKind::Sdist {
            cache.put_build_requirements(&self.sha256, &self.build_requires)?;
        }
        let blob = cache.blob_path(&self.sha256);
        let url = url::Url::from_file_path(&blob).map_err(|()| {
            Error::Internal(format!("cache path {} is not absolute", blob.display()))
        })?;
        let mut file = bare_file(&self.filename);
        file.url = url.to_string();
        file.hashes.insert("sha256".into(), self.sha256.clone());
        file.requires_python = self.metadata.requires_python.clone();
        debug_assert!(!matches!(file.kind(), FileKind::Other));
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(name: &str, version: &str, extra: &str) -> CoreMetadata {
        CoreMetadata::parse(&format!(
            "Metadata-Version: 2.2\nName: {name}\nVersion: {version}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn only_wheels_and_sdists_are_accepted() {
        assert_eq!(local_kind("a-1.0-py3-none-any.whl"), Ok(LocalKind::Wheel));
        for sdist in ["a-1.0.tar.gz", "a-1.0.tgz", "A-1.0.ZIP"] {
            assert_eq!(local_kind(sdist), Ok(LocalKind::Sdist), "{sdist}");
        }
        for other in ["a-1.0.tar.bz2", "a-1.0.egg", "a-1.0.exe", "README"] {
            assert!(
                local_kind(other).unwrap_err().contains("unsupported"),
                "{other}"
            );
        }
    }

    #[test]
    fn names_and_versions_must_agree() {
        let meta = metadata("PyTI_LocalDemo", "1.0", "");
        let (name, version) = check_identity(
            "pyti_localdemo-1.0-py3-none-any.whl",
            LocalKind::Wheel,
            &meta,
        )
        .unwrap();
        assert_eq!(name, "pyti-localdemo");
        assert_eq!(version.to_string(), "1.0");
        assert!(check_identity("pyti-localdemo-1.0.tar.gz", LocalKind::Sdist, &meta).is_ok());
        assert!(check_identity("pyti_localdemo-1.0.0.tgz", LocalKind::Sdist, &meta).is_ok());

        let wrong_version = check_identity(
            "pyti_localdemo-2.0-py3-none-any.whl",
            LocalKind::Wheel,
            &meta,
        )
        .unwrap_err();
        assert!(wrong_version.contains("version 2.0"), "{wrong_version}");
        let wrong_name =
            check_identity("other-1.0-py3-none-any.whl", LocalKind::Wheel, &meta).unwrap_err();
        assert!(wrong_name.contains("\"other\""), "{wrong_name}");
        let sdist_name = check_identity("other-1.0.tar.gz", LocalKind::Sdist, &meta).unwrap_err();
        assert!(sdist_name.contains("project name"), "{sdist_name}");
        assert!(
            check_identity("pyti_localdemo.whl", LocalKind::Wheel, &meta)
                .unwrap_err()
                .contains("not a wheel name")
        );

        let bad_version = metadata("demo", "one", "");
        assert!(
            check_identity("demo-one.tar.gz", LocalKind::Sdist, &bad_version)
                .unwrap_err()
                .contains("invalid version")
        );
        let bad_name = metadata("demo pkg!", "1.0", "");
        assert!(
            check_identity("demo-1.0.tar.gz", LocalKind::Sdist, &bad_name)
                .unwrap_err()
                .contains("invalid project name")
        );
    }

    #[test]
    fn a_zip_sdist_is_read_and_stored_under_its_sha256() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("PyTI_LocalDemo-1.0.zip");
        {
            let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
            let options = zip::write::SimpleFileOptions::default();
            zip.start_file("PyTI_LocalDemo-1.0/PKG-INFO", options)
                .unwrap();
            zip.write_all(
                b"Metadata-Version: 2.1\nName: PyTI_LocalDemo\nVersion: 1.0\nRequires-Dist: six\n",
            )
            .unwrap();
            zip.finish().unwrap();
        }
        let local = local_distribution_metadata(&path).unwrap();
        assert_eq!(local.name, "pyti-localdemo");
        assert_eq!(local.kind, LocalKind::Sdist);
        assert_eq!(local.metadata.requires_dist, vec!["six"]);
        assert_eq!(local.build_requires, archive::DEFAULT_BUILD_REQUIRES);
        // Metadata 2.1 in an sdist: its requirements need a guest pass (PEP 643).
        assert!(!local.requirements_known());
        assert_eq!(
            local.label(),
            "pyti-localdemo 1.0 (local file PyTI_LocalDemo-1.0.zip)"
        );

        let cache = Cache::open(dir.path().join("cache")).unwrap();
        let file = local.store(&cache).unwrap();
        assert_eq!(file.sha256(), Some(local.sha256.as_str()));
        assert_eq!(file.kind(), FileKind::Sdist);
        assert_eq!(file.version("pyti-localdemo").unwrap(), local.version);
        let blob = cache.blob(&local.sha256).unwrap();
        assert_eq!(std::fs::read(blob).unwrap(), std::fs::read(&path).unwrap());
        assert_eq!(cache.metadata(&local.sha256).unwrap(), local.metadata_text);
        assert_eq!(
            cache.build_requirements(&local.sha256).unwrap(),
            local.build_requires
        );
    }

    #[test]
    fn wheel_tags_and_requires_python_must_fit_the_guest() {
        let target = TargetEnv::default();
        let plain = metadata("demo", "1.0", "");
        for fits in [
            "demo-1.0-py3-none-any.whl",
            "demo-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "demo-1.0-cp38-abi3-manylinux_2_28_x86_64.whl",
        ] {
            assert!(
                check_target(fits, LocalKind::Wheel, &plain, &target).is_ok(),
                "{fits}"
            );
        }
        for misfit in [
            "demo-1.0-cp39-cp39-win_amd64.whl",
            "demo-1.0-cp311-cp311-macosx_11_0_arm64.whl",
            "demo-1.0-py2-none-any.whl",
        ] {
            let reason = check_target(misfit, LocalKind::Wheel, &plain, &target).unwrap_err();
            assert!(
                reason.contains("do not fit") && reason.contains("cp311"),
                "{reason}"
            );
        }
        assert!(check_target("demo-1.0.tar.gz", LocalKind::Sdist, &plain, &target).is_ok());
        let new_python = metadata("demo", "1.0", "Requires-Python: >=3.12\n");
        let reason =
            check_target("demo-1.0.tar.gz", LocalKind::Sdist, &new_python, &target).unwrap_err();
        assert!(
            reason.contains(">=3.12") && reason.contains("3.11.2"),
            "{reason}"
        );
        let garbage = metadata("demo", "1.0", "Requires-Python: >=three\n");
        assert!(
            check_target("demo-1.0.tar.gz", LocalKind::Sdist, &garbage, &target)
                .unwrap_err()
                .contains("does not parse")
        );
    }
}
