//! Guest images: built by the worker itself from Debian packages, cached by content hash.
//!
//! A job's result is only comparable with another's if both ran in the same guest, so
//! the image is not something an operator downloads and tweaks: the worker builds it
//! from a spec (`spec.rs`), names it by the hash of that spec and of the agent
//! baked in, and rebuilds only when that hash changes. Each image directory holds a
//! read-only qcow2 base (runs write to per-run overlays, see `vms::overlay`), the kernel
//! and initramfs for direct kernel boot, and `manifest.json`.
//!
//! Layout: `<worker root>/images/<platform>-<hash16>/{base.qcow2,vmlinuz,initrd.img,manifest.json}`,
//! plus `images/deb-cache/` (downloaded .debs, reused by the next build).

pub mod agent;
mod build;
pub mod check;
pub mod cli;
pub mod initramfs;
pub mod spec;

use std::path::{Path, PathBuf};

pub use build::ensure_image;
pub use spec::{ImageSpec, Manifest};

/// Everything that can go wrong while building, finding or checking an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The platform has no image spec.
    #[error("unknown guest platform {platform:?}: this worker can build {known}")]
    UnknownPlatform {
        /// The platform asked for.
        platform: String,
        /// The platforms that exist.
        known: String,
    },
    /// The build needs root (or a user namespace) and has neither.
    #[error("building a guest image needs root: {hint}")]
    NeedsRoot {
        /// What the operator can do.
        hint: String,
    },
    /// A required host tool is missing.
    #[error("{tool} not found on PATH: install the Debian package {package}")]
    MissingTool {
        /// The program.
        tool: String,
        /// The package that provides it.
        package: String,
    },
    /// The agent binary is missing or unusable.
    #[error("guest agent {}: {reason}", path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "pyti-guest".into()))]
    Agent {
        /// The file considered, if any.
        path: Option<PathBuf>,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A build step failed.
    #[error("image build step {step} failed: {detail}")]
    Step {
        /// The step (debootstrap, mkfs.ext4, ...).
        step: String,
        /// The command's error output or the reason.
        detail: String,
    },
    /// No image has been built for the platform.
    #[error("no guest image for platform {platform:?} under {root}: run `pyti-worker image build --platform {platform}`")]
    NotBuilt {
        /// The platform.
        platform: String,
        /// The images directory searched.
        root: PathBuf,
    },
    /// A manifest is unreadable.
    #[error("image manifest {path} is unreadable: {reason}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// The self-test boot did not produce a valid record.
    #[error("self-test of image {image} failed: {reason}")]
    Selftest {
        /// The image directory.
        image: PathBuf,
        /// What went wrong (console log path included).
        reason: String,
    },
    /// Driving the VM failed.
    #[error(transparent)]
    Vm(#[from] crate::vms::VmError),
    /// Writing or reading an IO disk failed.
    #[error(transparent)]
    Disk(#[from] crate::diskhandler::Error),
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A built image, as found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestImage {
    /// The image directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl GuestImage {
    /// The read-only qcow2 base image.
    pub fn base(&self) -> PathBuf {
        self.dir.join(&self.manifest.base.name)
    }

    /// The kernel for direct boot.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join(&self.manifest.kernel.name)
    }

    /// The initramfs.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join(&self.manifest.initrd.name)
    }

    /// Direct kernel boot settings for a run (`selftest` selects the self-test mode).
    pub fn direct_boot(&self, selftest: bool) -> crate::vms::DirectKernelBoot {
        crate::vms::DirectKernelBoot {
            kernel: self.kernel(),
            initrd: Some(self.initrd()),
            cmdline: spec::kernel_cmdline(selftest),
        }
    }

    /// Loads the image in `dir` from its manifest.
    pub fn load(dir: &Path) -> Result<Self, ImageError> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ImageError::Io {
            path: path.clone(),
            source,
        })?;
        let manifest = serde_json::from_str(&text).map_err(|e| ImageError::Manifest {
            path,
            reason: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
        })
    }
}

/// `<worker root>/images`.
pub fn images_dir(root: &Path) -> PathBuf {
    root.join("images")
}

/// Every complete image under the worker root (directories with a readable manifest),
/// newest first.
pub fn list_images(root: &Path) -> Vec<GuestImage> {
    let Ok(entries) = std::fs::read_dir(images_dir(root)) else {
        return Vec::new();
    };
    let mut images: Vec<GuestImage> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            spec::PLATFORMS
                .iter()
                .any(|platform| spec::is_image_dir_of(p, platform))
        })
        .filter_map(|p| GuestImage::load(&p).ok())
        .collect();
    images.sort_by_key(|image| std::cmp::Reverse(image.manifest.built_at_unix_s));
    images
}

/// The newest image of `platform`.
pub fn latest_image(root: &Path, platform: &str) -> Result<GuestImage, ImageError> {
    list_images(root)
        .into_iter()
        .find(|image| image.manifest.platform == platform)
        .ok_or_else(|| ImageError::NotBuilt {
            platform: platform.to_owned(),
            root: images_dir(root),
        })
}
