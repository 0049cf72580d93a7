//! `DiskOperations`: create, fill, list and read an IO disk image (the seed's API).
//!
//! One open image is one FAT file system over a [`GuardedStream`]. Every call into the FAT
//! library resets the read budget and runs under the panic guard, so even an image opened
//! read-write that the guest has since scribbled on fails with an error, not a hang.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fatfs::{Dir, FileSystem, FormatVolumeOptions, FsOptions};

use super::dotfix;
use super::extract::{display_path, open_host_file, split_image_path, Sink, Walker};
use super::geometry::{self, ContentSize, FatKind, Geometry, PlanError};
use super::guard::{catch_panic, Backing, Budget, GuardedStream};
use super::upload::{create_dirs, write_entry, Uploader};
use super::{Error, ExtractSummary, ReadLimits, Result};
use pyti_guest::layout::{RESULTS_DIR, RESULTS_SPACE_BYTES, VOLUME_LABEL};

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskEntry {
    /// Long file name as stored (not checked: see [`super::check_name`]).
    pub name: String,
    /// Size in bytes (0 for directories).
    pub size: u64,
    /// Whether the entry is a directory.
    pub is_dir: bool,
}

/// An open IO disk image.
pub struct DiskOperations<S: Backing = File> {
    image: PathBuf,
    file_system: Option<FileSystem<GuardedStream<S>>>,
    budget: Arc<Budget>,
    limits: ReadLimits,
    writable: bool,
    modified: bool,
    host_file: Option<File>,
}

/// Plans the geometry of an IO disk holding the host tree `staging_dir` plus `free_bytes`.
pub fn plan_for_tree(staging_dir: &Path, free_bytes: u64) -> Result<Geometry> {
    let mut content = ContentSize::empty();
    geometry::measure_tree(staging_dir, &mut content, true).map_err(|source| Error::Host {
        image: PathBuf::new(),
        action: "measure",
        host_path: staging_dir.to_path_buf(),
        source,
    })?;
    content.root_entries += geometry::entries_for_name(RESULTS_DIR);
    content.directory_entries.push(2);
    plan(&content, free_bytes, staging_dir)
}

fn plan(content: &ContentSize, free_bytes: u64, image: &Path) -> Result<Geometry> {
    geometry::plan_for_content(content, free_bytes).map_err(|error| Error::TooLarge {
        image: image.to_path_buf(),
        detail: match error {
            PlanError::FileTooLarge { bytes } => {
                format!("a file of {bytes} bytes is over FAT's 4 GiB limit")
            }
            PlanError::TooLarge { needed_bytes } => {
                format!("{needed_bytes} bytes is over FAT32's 2 TiB")
            }
        },
    })
}

/// Builds a complete IO disk at `image` from the host directory `staging_dir` (whose
/// entries become the root of the disk), sized for it plus `free_bytes` for results
/// (`None`: `layout::RESULTS_SPACE_BYTES`), with an empty `results/` if the staging
/// directory has none. The disk is flushed and closed.
pub fn build_io_disk(
    staging_dir: &Path,
    image: &Path,
    free_bytes: Option<u64>,
) -> Result<Geometry> {
    let geometry = plan_for_tree(staging_dir, free_bytes.unwrap_or(RESULTS_SPACE_BYTES))?;
    let mut disk = DiskOperations::create_with_geometry(image, geometry)?;
    disk.upload(staging_dir, "/")?;
    disk.create_dir(RESULTS_DIR)?;
    disk.close()?;
    Ok(geometry)
}

impl DiskOperations<File> {
    /// Creates (or replaces) a formatted, empty IO disk of about `size_bytes` at `image`.
    pub fn create(image: &Path, size_bytes: u64) -> Result<Self> {
        let geometry = geometry::plan_for_size(size_bytes).map_err(|_| Error::TooLarge {
            image: image.to_path_buf(),
            detail: format!("{size_bytes} bytes is not a size a FAT16 or FAT32 volume can have (2.2 MiB to 2 TiB)"),
        })?;
        Self::create_with_geometry(image, geometry)
    }

    /// Creates (or replaces) an empty IO disk big enough for `content` plus `free_bytes`.
    pub fn create_for_content(
        image: &Path,
        content: &ContentSize,
        free_bytes: u64,
    ) -> Result<Self> {
        Self::create_with_geometry(image, plan(content, free_bytes, image)?)
    }

    /// Creates (or replaces) an empty IO disk with exactly this geometry.
    pub fn create_with_geometry(image: &Path, geometry: Geometry) -> Result<Self> {
        let host_error = |action, source| Error::Host {
            image: image.to_path_buf(),
            action,
            host_path: image.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(image)
            .map_err(|source| host_error("create", source))?;
        file.set_len(geometry.image_bytes())
            .map_err(|source| host_error("size", source))?;
        let mut label = [b' '; 11];
        label[..VOLUME_LABEL.len()].copy_from_slice(VOLUME_LABEL.as_bytes());
        let options = FormatVolumeOptions::new()
            .fat_type(match geometry.fat {
                FatKind::Fat16 => fatfs::FatType::Fat16,
                FatKind::Fat32 => fatfs::FatType::Fat32,
            })
            .bytes_per_cluster(geometry.cluster_bytes)
            .total_sectors(geometry.total_sectors)
            .volume_label(label);
        let budget = Budget::new(u64::MAX);
        let stream = GuardedStream::new(&mut file, geometry.image_bytes(), true, budget);
        fatfs::format_volume(stream, options).map_err(|error| Error::Image {
            image: image.to_path_buf(),
            path_in_image: "/".to_string(),
            detail: format!("formatting failed: {error}"),
        })?;
        Self::open_file(image, file, true, ReadLimits::default())
    }

    /// Opens an existing image read-write. Reads from it are held to the default
    /// [`ReadLimits`]; change them with [`DiskOperations::set_limits`].
    pub fn open(image: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)
            .map_err(|source| Error::Host {
                image: image.to_path_buf(),
                action: "open",
                host_path: image.to_path_buf(),
                source,
            })?;
        Self::open_file(image, file, true, ReadLimits::default())
    }

    /// Opens an image the guest wrote, read-only, held to `limits`.
    pub fn open_read_only(image: &Path, limits: ReadLimits) -> Result<Self> {
        let file = open_host_file(image, image)?;
        Self::open_file(image, file, false, limits)
    }

    fn open_file(image: &Path, file: File, writable: bool, limits: ReadLimits) -> Result<Self> {
        let host_error = |source| Error::Host {
            image: image.to_path_buf(),
            action: "open",
            host_path: image.to_path_buf(),
            source,
        };
        let length = file.metadata().map_err(host_error)?.len();
        let host_file = Some(file.try_clone().map_err(host_error)?);
        let mut disk = DiskOperations::mount(image, file, length, writable, limits)?;
        disk.host_file = host_file;
        Ok(disk)
    }
}

impl DiskOperations<Cursor<Vec<u8>>> {
    /// Opens an image held in memory, read-only, held to `limits`.
    pub fn from_bytes(bytes: Vec<u8>, limits: ReadLimits) -> Result<Self> {
        let length = bytes.len() as u64;
        DiskOperations::mount(
            Path::new("<memory>"),
            Cursor::new(bytes),
            length,
            false,
            limits,
        )
    }
}

impl<S: Backing> DiskOperations<S> {
    fn mount(
        image: &Path,
        backing: S,
        length: u64,
        writable: bool,
        limits: ReadLimits,
    ) -> Result<Self> {
        let budget = Budget::new(limits.max_io_bytes);
        let stream = GuardedStream::new(backing, length, writable, budget.clone());
        let not_fat = |detail: String| Error::NotFat {
            image: image.to_path_buf(),
            detail,
        };
        // `FsOptions::new()` (stateless statics) is what makes the `Send` impl below sound.
        let file_system = catch_panic(|| FileSystem::new(stream, FsOptions::new()))
            .map_err(|message| not_fat(format!("the FAT reader failed ({message})")))?
            .map_err(|error| not_fat(error.to_string()))?;
        Ok(DiskOperations {
            image: image.to_path_buf(),
            file_system: Some(file_system),
            budget,
            limits,
            writable,
            modified: false,
            host_file: None,
        })
    }

    /// Path of the image file.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Caps applied to reads from now on.
    pub fn set_limits(&mut self, limits: ReadLimits) {
        self.limits = limits;
    }

    /// Free bytes left on the volume.
    pub fn free_bytes(&mut self) -> Result<u64> {
        self.guarded("/", |_, file_system| {
            let stats = file_system
                .stats()
                .map_err(|error| (error, "/".to_string()))?;
            Ok(u64::from(stats.free_clusters()) * u64::from(stats.cluster_size()))
        })
    }

    /// Runs `work` on the file system with a fresh read budget, turning panics, an
    /// exhausted budget and library errors into [`Error`]s naming `path_in_image`.
    fn guarded<T>(
        &mut self,
        path_in_image: &str,
        work: impl FnOnce(
            &mut Walker<'_>,
            &FileSystem<GuardedStream<S>>,
        ) -> Result<T, (io::Error, String)>,
    ) -> Result<T> {
        self.guarded_result(path_in_image, |walker, file_system| {
            Ok(work(walker, file_system))
        })
    }

    /// Like [`Self::guarded`] for work that returns module errors as well as library errors.
    fn guarded_result<T>(
        &mut self,
        path_in_image: &str,
        work: impl FnOnce(
            &mut Walker<'_>,
            &FileSystem<GuardedStream<S>>,
        ) -> Result<Result<T, (io::Error, String)>>,
    ) -> Result<T> {
        let shown = format!("/{}", path_in_image.trim_matches('/'));
        let path_in_image = shown.as_str();
        let file_system = self.file_system.as_ref().ok_or_else(|| Error::Image {
            image: self.image.clone(),
            path_in_image: path_in_image.to_string(),
            detail: "the disk was left unusable by an earlier failure".to_string(),
        })?;
        self.budget.reset(self.limits.max_io_bytes);
        let mut walker = Walker::new(self.image.clone(), &self.limits);
        let outcome = catch_panic(|| work(&mut walker, file_system));
        let budget_exhausted = self.budget.exhausted();
        let spent = self.budget.spent();
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(message) => {
                // Dropping the file system unmounts it, which on this volume may panic again.
                let broken = self.file_system.take();
                let _ = catch_panic(move || drop(broken));
                return Err(Error::Corrupt {
                    image: self.image.clone(),
                    path_in_image: path_in_image.to_string(),
                    detail: format!("the FAT reader failed ({message})"),
                });
            }
        };
        if budget_exhausted {
            return Err(Error::LimitExceeded {
                image: self.image.clone(),
                path_in_image: path_in_image.to_string(),
                limit: super::Limit::IoBytes,
                value: spent,
                max: self.limits.max_io_bytes,
            });
        }
        outcome?.map_err(|(error, path)| {
            if error.kind() == io::ErrorKind::NotFound {
                Error::NotFound {
                    image: self.image.clone(),
                    path_in_image: path,
                }
            } else {
                Error::Image {
                    image: self.image.clone(),
                    path_in_image: path,
                    detail: error.to_string(),
                }
            }
        })
    }

    fn check_path<'p>(&self, path_in_image: &'p str) -> Result<Vec<&'p str>> {
        split_image_path(path_in_image).map_err(|(name, problem)| Error::UnsafeName {
            image: self.image.clone(),
            path_in_image: path_in_image.to_string(),
            name,
            problem,
        })
    }

    fn require_writable(&mut self, action: &'static str) -> Result<()> {
        if self.writable {
            self.modified = true;
            Ok(())
        } else {
            Err(Error::ReadOnly {
                image: self.image.clone(),
                action,
            })
        }
    }

    /// Creates the directory `path_in_image` and any missing parents (like `mkdir -p`).
    pub fn create_dir(&mut self, path_in_image: &str) -> Result<()> {
        self.require_writable("create a directory")?;
        let components = self.check_path(path_in_image)?;
        self.guarded(path_in_image, |_, file_system| {
            create_dirs(file_system.root_dir(), &components).map(|_| ())
        })
    }

    /// Copies the host file or directory `host_path` to `dest_in_image` (a directory is
    /// copied recursively, into `dest_in_image`; `"/"` is the root). Missing parent
    /// directories are created, existing files replaced.
    pub fn upload(&mut self, host_path: &Path, dest_in_image: &str) -> Result<()> {
        self.require_writable("upload")?;
        let components = self.check_path(dest_in_image)?;
        let image = self.image.clone();
        let metadata = fs::metadata(host_path).map_err(|source| Error::Host {
            image: image.clone(),
            action: "read",
            host_path: host_path.to_path_buf(),
            source,
        })?;
        self.guarded_result(dest_in_image, |_, file_system| {
            let mut uploader = Uploader {
                image: &image,
                buffer: vec![0; 256 * 1024],
            };
            if metadata.is_dir() {
                let dir = match create_dirs(file_system.root_dir(), &components) {
                    Ok(dir) => dir,
                    Err(error) => return Ok(Err(error)),
                };
                uploader.upload_dir(
                    &dir,
                    host_path,
                    &display_path("", components.join("/").as_str()),
                )
            } else {
                let Some((name, parents)) = components.split_last() else {
                    return Err(Error::Image {
                        image: image.clone(),
                        path_in_image: "/".to_string(),
                        detail: "a file needs a name, not the root".to_string(),
                    });
                };
                let dir = match create_dirs(file_system.root_dir(), parents) {
                    Ok(dir) => dir,
                    Err(error) => return Ok(Err(error)),
                };
                uploader.upload_file(
                    &dir,
                    host_path,
                    name,
                    &display_path("", &components.join("/")),
                )
            }
        })
    }

    /// Writes `bytes` to the file `dest_in_image` (parents created, existing file replaced).
    pub fn write_file(&mut self, dest_in_image: &str, bytes: &[u8]) -> Result<()> {
        self.require_writable("write a file")?;
        let components = self.check_path(dest_in_image)?;
        let Some((name, parents)) = components.split_last() else {
            return Err(Error::Image {
                image: self.image.clone(),
                path_in_image: "/".to_string(),
                detail: "a file needs a name, not the root".to_string(),
            });
        };
        let path = display_path("", &components.join("/"));
        self.guarded(dest_in_image, |_, file_system| {
            let dir = create_dirs(file_system.root_dir(), parents)?;
            write_entry(&dir, name, &path, &mut &bytes[..], &mut vec![0; 64 * 1024])
        })
    }

    /// Lists the directory `dir_in_image` (without `.` and `..`), at most
    /// [`ReadLimits::max_entries`] entries.
    pub fn list(&mut self, dir_in_image: &str) -> Result<Vec<DiskEntry>> {
        let components = self.check_path(dir_in_image)?;
        self.guarded_result(dir_in_image, |walker, file_system| {
            let dir = match open_dirs(file_system.root_dir(), &components) {
                Ok(dir) => dir,
                Err(error) => return Ok(Err(error)),
            };
            let mut entries = Vec::new();
            for entry in dir.iter() {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(error) => return Ok(Err((error, dir_in_image.to_string()))),
                };
                let name = entry.file_name();
                if entry.is_dir() && (name == "." || name == "..") {
                    continue;
                }
                walker.count_entry(&display_path(dir_in_image, &name))?;
                let size = if entry.is_dir() { 0 } else { entry.len() };
                entries.push(DiskEntry {
                    name,
                    size,
                    is_dir: entry.is_dir(),
                });
            }
            Ok(Ok(entries))
        })
    }

    /// Copies the file or directory `path_in_image` to `host_dest` under the current
    /// [`ReadLimits`] (see [`super::read_results`] for the rules).
    pub fn download(&mut self, path_in_image: &str, host_dest: &Path) -> Result<ExtractSummary> {
        self.walk(path_in_image, &Sink::Host(host_dest))
    }

    /// Reads every file under `path_in_image` under the current [`ReadLimits`], writing
    /// nothing: checks that a guest-written tree is readable and within the caps.
    pub fn scan(&mut self, path_in_image: &str) -> Result<ExtractSummary> {
        self.walk(path_in_image, &Sink::Discard)
    }

    fn walk(&mut self, path_in_image: &str, sink: &Sink<'_>) -> Result<ExtractSummary> {
        let components = self.check_path(path_in_image)?;
        let image = self.image.clone();
        let shown = display_path("", &components.join("/"));
        self.guarded_result(path_in_image, |walker, file_system| {
            let root = file_system.root_dir();
            let Some((name, parents)) = components.split_last() else {
                walker.copy_tree(root, "/", sink)?;
                return Ok(Ok(walker.summary));
            };
            let parent = match open_dirs(root, parents) {
                Ok(dir) => dir,
                Err(error) => return Ok(Err(error)),
            };
            for entry in parent.iter() {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(error) => return Ok(Err((error, shown.clone()))),
                };
                if entry.file_name().to_lowercase() != name.to_lowercase() {
                    continue;
                }
                walker.count_entry(&shown)?;
                if entry.is_dir() {
                    walker.copy_tree(entry.to_dir(), &shown, sink)?;
                } else {
                    walker.copy_file(&entry, &shown, sink)?;
                }
                return Ok(Ok(walker.summary));
            }
            Err(Error::NotFound {
                image: image.clone(),
                path_in_image: shown.clone(),
            })
        })
    }

    /// Writes out everything (to the host's page cache: a VM started next sees it; no
    /// fsync, a disk half-written when the host crashes is rebuilt anyway) and closes the
    /// image. Dropping a disk does the same, minus the error report: call this after writing.
    pub fn close(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        let Some(file_system) = self.file_system.take() else {
            return Ok(());
        };
        self.budget.reset(self.limits.max_io_bytes);
        let image = self.image.clone();
        let failed = |detail: String| Error::Image {
            image: image.clone(),
            path_in_image: "/".to_string(),
            detail,
        };
        let writable = self.writable;
        let unmount = || {
            if writable {
                // Counting the free clusters fills FAT32's FSInfo summary, which fsck expects.
                file_system.stats()?;
            }
            file_system.unmount()
        };
        catch_panic(unmount)
            .map_err(|message| failed(format!("closing failed ({message})")))?
            .map_err(|error| failed(format!("closing failed: {error}")))?;
        if let (true, Some(mut file)) = (self.modified, self.host_file.as_ref()) {
            dotfix::repair_dot_entries(&mut file)
                .map_err(|error| failed(format!("repairing directory entries failed: {error}")))?;
        }
        Ok(())
    }
}

// SAFETY: the only parts of `FileSystem` that are not `Send` are the `&'static dyn` code-page
// converter and time provider in its options. `mount` always uses `FsOptions::new()`, whose
// two are fatfs's stateless statics (`LossyOemCpConverter`, `DefaultTimeProvider`: unit
// structs), so sharing them between threads cannot race. Everything else a disk holds
// (`RefCell`s, the stream, an `Arc` budget) is `Send`; the disk is still not `Sync`.
unsafe impl<S: Backing + Send> Send for DiskOperations<S> {}

impl<S: Backing> Drop for DiskOperations<S> {
    fn drop(&mut self) {
        if let Err(error) = self.finish() {
            tracing::warn!(%error, "IO disk not closed cleanly");
        }
    }
}

/// Opens the directories `components` below `dir` (case-insensitively, as FAT does).
fn open_dirs<'fs, S: Backing>(
    dir: Dir<'fs, GuardedStream<S>>,
    components: &[&str],
) -> Result<Dir<'fs, GuardedStream<S>>, (io::Error, String)> {
    let mut current = dir;
    for (depth, component) in components.iter().enumerate() {
        current = current
            .open_dir(component)
            .map_err(|error| (error, display_path("", &components[..=depth].join("/"))))?;
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_disk_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<DiskOperations>();
        assert_send::<Error>();
    }
}
