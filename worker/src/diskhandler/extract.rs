//! Reading what the guest wrote: a copy of a subtree of the IO disk to the host, under caps.
//!
//! The guest is the party under test, so its disk is hostile input. The reader here copies
//! only regular files and directories, refuses any name that could leave the destination or
//! means something else on the host, counts every byte and entry against [`ReadLimits`]
//! before it writes, creates host files with `create_new` (never through an existing path or
//! link), and checks that each file holds as many bytes as its entry claims.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use fatfs::{Dir, DirEntry};

use super::guard::{Backing, GuardedStream};
use super::operations::DiskOperations;
use super::{Error, Limit, Result};

/// Caps on what is read back from a guest-written disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadLimits {
    /// Sum of the sizes of all files copied. Default 1 GiB.
    pub max_total_bytes: u64,
    /// Size of any one file. Default 512 MiB.
    pub max_file_bytes: u64,
    /// Files plus directories seen. Default 20 000.
    pub max_entries: u64,
    /// Directories below the starting one. Default 16.
    pub max_depth: u32,
    /// Bytes the FAT reader may read from the image in one operation (each call counts at
    /// least 64), whatever the file system claims: this is what stops a looping cluster
    /// chain. Default 4 × `max_total_bytes` + 256 MiB.
    pub max_io_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        let max_total_bytes = 1 << 30;
        ReadLimits {
            max_total_bytes,
            max_file_bytes: 512 << 20,
            max_entries: 20_000,
            max_depth: 16,
            max_io_bytes: 4 * max_total_bytes + (256 << 20),
        }
    }
}

impl ReadLimits {
    /// No caps: only for disks this host wrote and nobody else touched.
    pub fn unlimited() -> Self {
        ReadLimits {
            max_total_bytes: u64::MAX,
            max_file_bytes: u64::MAX,
            max_entries: u64::MAX,
            max_depth: u32::MAX,
            max_io_bytes: u64::MAX,
        }
    }
}

/// What was copied (or, for a scan, would have been).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractSummary {
    /// Regular files.
    pub files: u64,
    /// Directories below the starting one.
    pub directories: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Why a name from the image (or a destination path) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    /// The empty name.
    Empty,
    /// `.` or `..` where a real entry was expected.
    DotName,
    /// Contains `/`.
    Slash,
    /// Contains `\`, a separator elsewhere.
    Backslash,
    /// Contains NUL.
    Nul,
    /// Contains another control character.
    ControlCharacter,
    /// Holds UTF-16 that does not decode (shown as U+FFFD).
    Undecodable,
    /// Longer than 255 bytes of UTF-8.
    TooLong,
}

impl fmt::Display for NameProblem {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            NameProblem::Empty => "empty name",
            NameProblem::DotName => "'.' and '..' are not file names",
            NameProblem::Slash => "contains '/'",
            NameProblem::Backslash => "contains '\\'",
            NameProblem::Nul => "contains NUL",
            NameProblem::ControlCharacter => "contains a control character",
            NameProblem::Undecodable => "contains characters that do not decode",
            NameProblem::TooLong => "longer than 255 bytes",
        })
    }
}

/// Accepts a single path component that is safe to create on the host as it is.
pub fn check_name(name: &str) -> Result<(), NameProblem> {
    if name.is_empty() {
        return Err(NameProblem::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameProblem::DotName);
    }
    if name.len() > 255 {
        return Err(NameProblem::TooLong);
    }
    for character in name.chars() {
        match character {
            '/' => return Err(NameProblem::Slash),
            '\\' => return Err(NameProblem::Backslash),
            '\0' => return Err(NameProblem::Nul),
            '\u{FFFD}' => return Err(NameProblem::Undecodable),
            other if other.is_control() => return Err(NameProblem::ControlCharacter),
            _ => {}
        }
    }
    Ok(())
}

/// Splits a `/`-separated path inside the image into checked components; `""` and `"/"`
/// are the root (no components).
pub(crate) fn split_image_path(path: &str) -> Result<Vec<&str>, (String, NameProblem)> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('/')
        .map(|component| {
            check_name(component)
                .map(|()| component)
                .map_err(|problem| (component.to_string(), problem))
        })
        .collect()
}

/// Joins image path components for messages: `/results/log.txt`.
pub(crate) fn display_path(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Copies `path_in_image` (file or directory) of the image at `image` to `host_dest`, under
/// `limits`, opening the image read-only. `host_dest` must not exist for a file; for a
/// directory it is created if missing and no file in it is overwritten. On error, what was
/// already copied stays: discard `host_dest`.
pub fn read_results(
    image: &Path,
    path_in_image: &str,
    host_dest: &Path,
    limits: &ReadLimits,
) -> Result<ExtractSummary> {
    let mut disk = DiskOperations::open_read_only(image, limits.clone())?;
    disk.download(path_in_image, host_dest)
}

/// Runs the reader over an image held in memory, reading every file under `path_in_image`
/// and writing nothing: the entry point for fuzzing and corruption tests.
pub fn scan_image_bytes(
    image: Vec<u8>,
    path_in_image: &str,
    limits: &ReadLimits,
) -> Result<ExtractSummary> {
    let mut disk = DiskOperations::from_bytes(image, limits.clone())?;
    disk.scan(path_in_image)
}

/// Where the walker puts what it reads.
pub(crate) enum Sink<'a> {
    /// Into this host path.
    Host(&'a Path),
    /// Nowhere; content is read and counted only.
    Discard,
}

/// State of one bounded walk over a guest-written tree.
pub(crate) struct Walker<'l> {
    pub(crate) image: PathBuf,
    pub(crate) limits: &'l ReadLimits,
    pub(crate) summary: ExtractSummary,
    entries: u64,
    buffer: Vec<u8>,
}

impl<'l> Walker<'l> {
    pub(crate) fn new(image: PathBuf, limits: &'l ReadLimits) -> Self {
        Walker {
            image,
            limits,
            summary: ExtractSummary::default(),
            entries: 0,
            buffer: vec![0; 256 * 1024],
        }
    }

    fn limit(&self, path_in_image: &str, limit: Limit, value: u64, max: u64) -> Error {
        Error::LimitExceeded {
            image: self.image.clone(),
            path_in_image: path_in_image.to_string(),
            limit,
            value,
            max,
        }
    }

    fn host_error(&self, action: &'static str, host_path: &Path, source: io::Error) -> Error {
        Error::Host {
            image: self.image.clone(),
            action,
            host_path: host_path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn image_error(&self, path_in_image: &str, source: &io::Error) -> Error {
        Error::Image {
            image: self.image.clone(),
            path_in_image: path_in_image.to_string(),
            detail: source.to_string(),
        }
    }

    /// Counts one more file or directory against the entry cap.
    pub(crate) fn count_entry(&mut self, path_in_image: &str) -> Result<()> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(self.limit(
                path_in_image,
                Limit::Entries,
                self.entries,
                self.limits.max_entries,
            ));
        }
        Ok(())
    }

    /// Copies one file entry to `sink`, checking caps first and the byte count after.
    pub(crate) fn copy_file<S: Backing>(
        &mut self,
        entry: &DirEntry<'_, GuardedStream<S>>,
        path_in_image: &str,
        sink: &Sink<'_>,
    ) -> Result<()> {
        let declared = entry.len();
        if declared > self.limits.max_file_bytes {
            return Err(self.limit(
                path_in_image,
                Limit::FileBytes,
                declared,
                self.limits.max_file_bytes,
            ));
        }
        let total = self.summary.bytes + declared;
        if total > self.limits.max_total_bytes {
            return Err(self.limit(
                path_in_image,
                Limit::TotalBytes,
                total,
                self.limits.max_total_bytes,
            ));
        }
        let mut output = match sink {
            Sink::Host(path) => Some(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|source| self.host_error("create", path, source))?,
            ),
            Sink::Discard => None,
        };
        let mut input = entry.to_file();
        let mut copied = 0u64;
        loop {
            let filled = fill(&mut input, &mut self.buffer)
                .map_err(|error| self.image_error(path_in_image, &error))?;
            copied += filled as u64;
            if filled == 0 || copied > declared {
                break;
            }
            if let (Some(file), Sink::Host(path)) = (output.as_mut(), sink) {
                file.write_all(&self.buffer[..filled])
                    .map_err(|source| self.host_error("write", path, source))?;
            }
        }
        if copied != declared {
            return Err(Error::Corrupt {
                image: self.image.clone(),
                path_in_image: path_in_image.to_string(),
                detail: format!(
                    "the entry says {declared} bytes but its cluster chain holds {copied}"
                ),
            });
        }
        if let (Some(file), Sink::Host(path)) = (output.as_mut(), sink) {
            file.flush()
                .map_err(|source| self.host_error("write", path, source))?;
        }
        self.summary.files += 1;
        self.summary.bytes += declared;
        Ok(())
    }

    /// Copies the tree under `start` (already counted) to `sink`, breadth by explicit stack.
    pub(crate) fn copy_tree<'fs, S: Backing>(
        &mut self,
        start: Dir<'fs, GuardedStream<S>>,
        start_path: &str,
        sink: &Sink<'_>,
    ) -> Result<()> {
        if let Sink::Host(path) = sink {
            create_host_dir(path, true)
                .map_err(|source| self.host_error("create directory", path, source))?;
        }
        let mut pending = vec![(start, start_path.to_string(), sink_path(sink), 0u32)];
        while let Some((dir, dir_path, host_dir, depth)) = pending.pop() {
            for entry in dir.iter() {
                let entry = entry.map_err(|error| self.image_error(&dir_path, &error))?;
                let name = entry.file_name();
                if entry.is_dir() && (name == "." || name == "..") {
                    continue;
                }
                let path_in_image = display_path(&dir_path, &name);
                self.count_entry(&path_in_image)?;
                check_name(&name).map_err(|problem| Error::UnsafeName {
                    image: self.image.clone(),
                    path_in_image: dir_path.clone(),
                    name: name.clone(),
                    problem,
                })?;
                let host_path = host_dir.as_ref().map(|dir| dir.join(&name));
                if entry.is_dir() {
                    if depth + 1 > self.limits.max_depth {
                        return Err(self.limit(
                            &path_in_image,
                            Limit::Depth,
                            u64::from(depth) + 1,
                            u64::from(self.limits.max_depth),
                        ));
                    }
                    if let Some(path) = &host_path {
                        create_host_dir(path, false)
                            .map_err(|source| self.host_error("create directory", path, source))?;
                    }
                    self.summary.directories += 1;
                    pending.push((entry.to_dir(), path_in_image, host_path, depth + 1));
                } else {
                    let child_sink = match &host_path {
                        Some(path) => Sink::Host(path),
                        None => Sink::Discard,
                    };
                    self.copy_file(&entry, &path_in_image, &child_sink)?;
                }
            }
        }
        Ok(())
    }
}

/// Reads into `buffer` until it is full or the input ends (the FAT library returns at most
/// one cluster per call; writing the host file in bigger pieces saves system calls).
fn fill(input: &mut impl Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn sink_path(sink: &Sink<'_>) -> Option<PathBuf> {
    match sink {
        Sink::Host(path) => Some(path.to_path_buf()),
        Sink::Discard => None,
    }
}

/// Creates a host directory; the top one may exist already (but not as a link or a file),
/// the ones below must be new.
fn create_host_dir(path: &Path, may_exist: bool) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(error) if may_exist && error.kind() == io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(path)?.is_dir() {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ))
            }
        }
        Err(error) if may_exist && error.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(path)
        }
        Err(error) => Err(error),
    }
}

/// Opens a host file for reading, naming it in the error.
pub(crate) fn open_host_file(image: &Path, path: &Path) -> Result<File> {
    File::open(path).map_err(|source| Error::Host {
        image: image.to_path_buf(),
        action: "read",
        host_path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "job.json",
            "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
            "..hidden",
            "a..b",
            ".bashrc",
            "日本語.txt",
            "with space",
            &"x".repeat(255),
        ] {
            assert_eq!(check_name(name), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn names_that_escape_or_mean_something_else_are_refused() {
        let cases = [
            ("", NameProblem::Empty),
            (".", NameProblem::DotName),
            ("..", NameProblem::DotName),
            ("../etc", NameProblem::Slash),
            ("/etc", NameProblem::Slash),
            ("a/b", NameProblem::Slash),
            ("..\\..\\x", NameProblem::Backslash),
            ("c:\\x", NameProblem::Backslash),
            ("nul\0byte", NameProblem::Nul),
            ("bell\u{7}", NameProblem::ControlCharacter),
            ("line\nbreak", NameProblem::ControlCharacter),
            ("del\u{7f}", NameProblem::ControlCharacter),
            ("bad\u{FFFD}", NameProblem::Undecodable),
        ];
        for (name, problem) in cases {
            assert_eq!(check_name(name), Err(problem), "{name:?}");
        }
        assert_eq!(check_name(&"é".repeat(128)), Err(NameProblem::TooLong));
    }

    #[test]
    fn image_paths_split_into_checked_components() {
        assert_eq!(split_image_path(""), Ok(vec![]));
        assert_eq!(split_image_path("/"), Ok(vec![]));
        assert_eq!(split_image_path("/results/"), Ok(vec!["results"]));
        assert_eq!(
            split_image_path("wheels/a.whl"),
            Ok(vec!["wheels", "a.whl"])
        );
        assert_eq!(
            split_image_path("results/../x"),
            Err(("..".to_string(), NameProblem::DotName))
        );
        assert_eq!(
            split_image_path("a//b"),
            Err((String::new(), NameProblem::Empty))
        );
        assert_eq!(
            split_image_path("a\\b"),
            Err(("a\\b".to_string(), NameProblem::Backslash))
        );
    }

    #[test]
    fn default_limits_are_the_documented_ones() {
        let limits = ReadLimits::default();
        assert_eq!(limits.max_total_bytes, 1 << 30);
        assert_eq!(limits.max_file_bytes, 512 << 20);
        assert_eq!(limits.max_entries, 20_000);
        assert_eq!(limits.max_depth, 16);
        assert_eq!(limits.max_io_bytes, (4 << 30) + (256 << 20));
    }

    #[test]
    fn display_paths_join_with_one_slash() {
        assert_eq!(display_path("/", "results"), "/results");
        assert_eq!(display_path("/results", "log"), "/results/log");
    }
}
