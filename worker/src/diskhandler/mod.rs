//! The IO disk: how a job goes into a VM and how its results come back out.
//!
//! The guest has no network card, so everything it needs (the job, the distribution, its
//! dependency closure as wheels, the tools) travels on a second virtual disk, and the guest
//! leaves its results and logs on the same disk before it powers off. That disk is a raw
//! FAT image labelled `PYTIIO`, written and read here in pure Rust: no root, no loop mount,
//! no FUSE, so a worker runs unprivileged and a guest's file system is never mounted on the
//! host. Hypervisors that want another container format get a `qemu-img` conversion.
//!
//! Layout: `job.json`, `dist/`, `wheels/`, `tools/`, `results/` (written by the guest);
//! the names and the results space are `pyti_guest::layout`'s, shared with the guest.
//!
//! Everything read back after the guest ran is hostile input: [`ReadLimits`] caps what the
//! reader copies, names that could escape the destination are refused, and a corrupt file
//! system gives an [`Error`], never a panic or an endless loop (see `guard`).
//!
//! All calls block; async callers wrap them in `tokio::task::spawn_blocking`.

mod convert;
mod dotfix;
mod extract;
mod geometry;
mod guard;
mod operations;
mod upload;

use std::fmt;
use std::io;
use std::path::PathBuf;

pub use convert::{convert_image, ImageFormat};
pub use extract::{
    check_name, read_results, scan_image_bytes, ExtractSummary, NameProblem, ReadLimits,
};
pub use geometry::{ContentSize, FatKind, Geometry, MAX_FILE_BYTES, SECTOR_BYTES};
pub use operations::{build_io_disk, plan_for_tree, DiskEntry, DiskOperations};

/// Which cap of [`ReadLimits`] a guest-written disk went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// [`ReadLimits::max_total_bytes`].
    TotalBytes,
    /// [`ReadLimits::max_file_bytes`].
    FileBytes,
    /// [`ReadLimits::max_entries`].
    Entries,
    /// [`ReadLimits::max_depth`].
    Depth,
    /// [`ReadLimits::max_io_bytes`].
    IoBytes,
}

impl fmt::Display for Limit {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Limit::TotalBytes => "total size of the files",
            Limit::FileBytes => "size of one file",
            Limit::Entries => "number of files and directories",
            Limit::Depth => "directory depth",
            Limit::IoBytes => "bytes read from the image (file system loops or is corrupt)",
        })
    }
}

/// What went wrong with an IO disk; every message names the image and the path in it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file or directory could not be read, created or written.
    #[error("IO disk {image}: cannot {action} {host_path}: {source}")]
    Host {
        image: PathBuf,
        action: &'static str,
        host_path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image holds no FAT file system this reader accepts.
    #[error("IO disk {image}: not a usable FAT file system: {detail}")]
    NotFat { image: PathBuf, detail: String },
    /// An operation on a path inside the image failed (disk full, bad name, read error).
    #[error("IO disk {image}: {path_in_image}: {detail}")]
    Image {
        image: PathBuf,
        path_in_image: String,
        detail: String,
    },
    /// The file system contradicts itself (chains shorter than sizes, reader panics).
    #[error("IO disk {image}: {path_in_image}: corrupt file system: {detail}; discard this disk")]
    Corrupt {
        image: PathBuf,
        path_in_image: String,
        detail: String,
    },
    /// Nothing at that path inside the image.
    #[error("IO disk {image}: {path_in_image}: no such file or directory")]
    NotFound {
        image: PathBuf,
        path_in_image: String,
    },
    /// A name in the image (or a destination given by the caller) is not safe to use.
    #[error("IO disk {image}: {path_in_image}: name {name:?} refused: {problem}")]
    UnsafeName {
        image: PathBuf,
        path_in_image: String,
        name: String,
        problem: NameProblem,
    },
    /// What the guest wrote goes over one of the [`ReadLimits`].
    #[error("IO disk {image}: {path_in_image}: {limit} over the limit ({value} > {max})")]
    LimitExceeded {
        image: PathBuf,
        path_in_image: String,
        limit: Limit,
        value: u64,
        max: u64,
    },
    /// The content cannot be stored on a FAT volume.
    #[error("IO disk {image}: content does not fit on a FAT volume: {detail}")]
    TooLarge { image: PathBuf, detail: String },
    /// The image was opened read-only.
    #[error("IO disk {image}: opened read-only, cannot {action}")]
    ReadOnly {
        image: PathBuf,
        action: &'static str,
    },
    /// `qemu-img` could not be started.
    #[error("cannot run {program} to convert IO disk {image} (install the qemu-utils package): {source}")]
    QemuImgMissing {
        program: String,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `qemu-img convert` ran and failed.
    #[error("qemu-img could not convert IO disk {image} ({from}) to {target} ({to}): {status}: {stderr}")]
    Conversion {
        image: PathBuf,
        target: PathBuf,
        from: ImageFormat,
        to: ImageFormat,
        status: String,
        stderr: String,
    },
}

/// Result of an IO disk operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
