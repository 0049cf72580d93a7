//! Writing host files into an open IO disk: the FAT side of `upload` and `write_file`.
//!
//! Kept apart from `operations` because it is the trusted direction (host to image): it
//! checks what FAT cannot store (names differing only in case, files over 4 GiB, links to
//! directories) before the FAT library sees it, and reports failures with the image path.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use fatfs::Dir;

use super::extract::{display_path, open_host_file};
use super::geometry;
use super::guard::{Backing, GuardedStream};
use super::{Error, Result};

/// Opens or creates the directories `components` below `dir`.
pub(crate) fn create_dirs<'fs, S: Backing>(
    dir: Dir<'fs, GuardedStream<S>>,
    components: &[&str],
) -> Result<Dir<'fs, GuardedStream<S>>, (io::Error, String)> {
    let mut current = dir;
    for (depth, component) in components.iter().enumerate() {
        current = current
            .create_dir(component)
            .map_err(|error| (error, display_path("", &components[..=depth].join("/"))))?;
    }
    Ok(current)
}

/// Creates (or truncates) `name` in `dir` and fills it from `source`.
pub(crate) fn write_entry<S: Backing>(
    dir: &Dir<'_, GuardedStream<S>>,
    name: &str,
    path_in_image: &str,
    source: &mut dyn Read,
    buffer: &mut [u8],
) -> Result<(), (io::Error, String)> {
    let failed = |error| (error, path_in_image.to_string());
    let mut file = dir.create_file(name).map_err(failed)?;
    file.truncate().map_err(failed)?;
    loop {
        let read = match source.read(buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                return Err((
                    io::Error::new(error.kind(), format!("reading the host file: {error}")),
                    path_in_image.to_string(),
                ))
            }
        };
        file.write_all(&buffer[..read]).map_err(failed)?;
    }
    file.flush().map_err(failed)
}

/// Copies host files and directories into an open image.
pub(crate) struct Uploader<'i> {
    pub(crate) image: &'i Path,
    pub(crate) buffer: Vec<u8>,
}

impl Uploader<'_> {
    fn host_error(&self, action: &'static str, path: &Path, source: io::Error) -> Error {
        Error::Host {
            image: self.image.to_path_buf(),
            action,
            host_path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn upload_file<S: Backing>(
        &mut self,
        dir: &Dir<'_, GuardedStream<S>>,
        host_path: &Path,
        name: &str,
        path_in_image: &str,
    ) -> Result<Result<(), (io::Error, String)>> {
        let mut source = open_host_file(self.image, host_path)?;
        let length = source
            .metadata()
            .map_err(|error| self.host_error("read", host_path, error))?
            .len();
        if length > geometry::MAX_FILE_BYTES {
            return Err(Error::TooLarge {
                image: self.image.to_path_buf(),
                detail: format!(
                    "{} is {length} bytes, over FAT's 4 GiB limit",
                    host_path.display()
                ),
            });
        }
        Ok(write_entry(
            dir,
            name,
            path_in_image,
            &mut source,
            &mut self.buffer,
        ))
    }

    pub(crate) fn upload_dir<S: Backing>(
        &mut self,
        dir: &Dir<'_, GuardedStream<S>>,
        host_dir: &Path,
        path_in_image: &str,
    ) -> Result<Result<(), (io::Error, String)>> {
        let mut children = Vec::new();
        let listing =
            fs::read_dir(host_dir).map_err(|error| self.host_error("list", host_dir, error))?;
        for entry in listing {
            let entry = entry.map_err(|error| self.host_error("list", host_dir, error))?;
            let host_path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                return Err(self.host_error(
                    "copy",
                    &host_path,
                    io::Error::new(io::ErrorKind::InvalidData, "the name is not UTF-8"),
                ));
            };
            let file_type = entry
                .file_type()
                .map_err(|error| self.host_error("read", &host_path, error))?;
            let is_dir = if file_type.is_symlink() {
                let target = fs::metadata(&host_path)
                    .map_err(|error| self.host_error("follow link", &host_path, error))?;
                if target.is_dir() {
                    return Err(self.host_error(
                        "copy",
                        &host_path,
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "links to directories are not copied",
                        ),
                    ));
                }
                false
            } else {
                file_type.is_dir()
            };
            children.push((name, host_path, is_dir));
        }
        children.sort();
        let mut seen = HashSet::new();
        for (name, host_path, _) in &children {
            if !seen.insert(name.to_lowercase()) {
                return Err(self.host_error("copy", host_path, io::Error::new(io::ErrorKind::AlreadyExists, "another name in this directory differs only in case, which FAT cannot keep apart")));
            }
        }
        for (name, host_path, is_dir) in children {
            let child_path = display_path(path_in_image, &name);
            let outcome = if is_dir {
                match dir.create_dir(&name) {
                    Ok(child) => self.upload_dir(&child, &host_path, &child_path)?,
                    Err(error) => Err((error, child_path)),
                }
            } else {
                self.upload_file(dir, &host_path, &name, &child_path)?
            };
            if outcome.is_err() {
                return Ok(outcome);
            }
        }
        Ok(Ok(()))
    }
}
