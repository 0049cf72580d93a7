//! What goes into a guest image, and the hash that names it.
//!
//! The image directory is named by a hash of everything that shaped its content (builder
//! version, the init script, the package list, the suite, the kernel modules, the agent
//! binary), so "is the cached image still right?" is a string comparison and a changed
//! input can never be served a stale image.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bump when the build steps change in a way that changes the image.
pub const BUILDER_VERSION: u32 = 3;

/// PID 1 of the guest (installed as `/usr/local/sbin/pyti-init`).
pub const INIT_SCRIPT: &str = include_str!("pyti-init.sh");

/// Where the init script lives in the guest.
pub const INIT_PATH: &str = "/usr/local/sbin/pyti-init";

/// Where the agent lives in the guest.
pub const AGENT_PATH: &str = "/usr/local/bin/pyti-guest";

/// The virtualenv template made at build time (creating one costs ~26 s under TCG).
pub const VENV_PATH: &str = "/opt/pyti/venv";

/// The guest's interpreter (Debian's `python3` package).
pub const PYTHON_PATH: &str = "/usr/bin/python3";

/// How to build one platform's image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSpec {
    /// Platform identifier, e.g. `linux-debian`.
    pub platform: String,
    /// Debian suite.
    pub suite: String,
    /// debootstrap variant.
    pub variant: String,
    /// Packages added to the variant.
    pub packages: Vec<String>,
    /// Kernel modules the initramfs loads to reach the root disk (with their dependencies).
    pub initramfs_modules: Vec<String>,
}

/// The platforms this builder knows, by identifier.
pub fn spec_for(platform: &str) -> Option<ImageSpec> {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
    match platform {
        "linux-debian" => Some(ImageSpec {
            platform: platform.to_owned(),
            suite: "bookworm".into(),
            variant: "minbase".into(),
            packages: strings(&[
                "python3",
                "python3-venv",
                "strace",
                "linux-image-cloud-amd64",
                "initramfs-tools",
                "busybox-static",
            ]),
            initramfs_modules: strings(&["virtio_pci", "virtio_blk"]),
        }),
        _ => None,
    }
}

/// Identifiers of every platform `spec_for` knows.
pub const PLATFORMS: &[&str] = &["linux-debian"];

/// The image hash (64 hex digits) of a spec built with a given agent.
pub fn image_hash(spec: &ImageSpec, agent_sha256: &str) -> String {
    let mut hasher = Sha256::new();
    let mut field = |name: &str, value: &str| {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update((value.len() as u64).to_le_bytes());
        hasher.update(value.as_bytes());
    };
    field("builder", &BUILDER_VERSION.to_string());
    field("init", INIT_SCRIPT);
    field("platform", &spec.platform);
    field("suite", &spec.suite);
    field("variant", &spec.variant);
    field("packages", &spec.packages.join(","));
    field("modules", &spec.initramfs_modules.join(","));
    field("venv", VENV_PATH);
    field(
        "initramfs-init",
        &super::initramfs::init_script(&[], INIT_PATH),
    );
    field("agent", agent_sha256);
    pyti_guest::digest::hex(&hasher.finalize())
}

/// Directory name of an image: `<platform>-<first 16 hex digits of the hash>`.
pub fn image_dir_name(platform: &str, hash: &str) -> String {
    format!("{platform}-{}", &hash[..16.min(hash.len())])
}

/// The kernel command line for direct kernel boot of an image.
///
/// `panic=-1` turns a guest kernel panic (including PID 1 dying) into a reboot, which the
/// domain turns into power-off; `pyti.selftest=1` makes init write a self-test record
/// instead of running the agent.
pub fn kernel_cmdline(selftest: bool) -> String {
    let mut line = format!(
        "console=ttyS0 root=/dev/vda rw init={INIT_PATH} panic=-1 quiet loglevel=3 fsck.mode=skip"
    );
    if selftest {
        line.push_str(" pyti.selftest=1");
    }
    line
}

/// A file of a built image, as recorded in its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// File name inside the image directory.
    pub name: String,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256, hex.
    pub sha256: String,
}

/// `manifest.json` of a built image: what built it and what came out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub manifest_version: u32,
    /// Platform identifier.
    pub platform: String,
    /// The image hash (see `image_hash`).
    pub hash: String,
    /// `BUILDER_VERSION` at build time.
    pub builder_version: u32,
    /// The spec the image was built from. The key stays `recipe` so manifests written
    /// before the rename still load.
    #[serde(rename = "recipe")]
    pub spec: ImageSpec,
    /// SHA-256 of the agent binary baked in.
    pub agent_sha256: String,
    /// Guest kernel release (`uname -r`).
    pub kernel_release: String,
    /// Kernel command line for a normal run (self-test adds `pyti.selftest=1`).
    pub cmdline: String,
    /// The read-only qcow2 base image.
    pub base: ManifestFile,
    /// The kernel for direct boot.
    pub kernel: ManifestFile,
    /// The initramfs.
    pub initrd: ManifestFile,
    /// Build end, seconds since the Unix epoch.
    pub built_at_unix_s: u64,
    /// How long the build took, seconds.
    pub build_seconds: f64,
}

/// Kernel release from a `/boot/vmlinuz-<release>` file name.
pub fn kernel_release_from_name(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix("vmlinuz-")
        .filter(|release| !release.is_empty())
}

/// True when `path`'s file name is an image directory of `platform`.
pub fn is_image_dir_of(path: &Path, platform: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(platform))
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|hash| hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use pyti_guest::layout;

    #[test]
    fn known_platform_has_the_packages_the_guest_needs() {
        let spec = spec_for("linux-debian").unwrap();
        for package in [
            "python3",
            "python3-venv",
            "strace",
            "linux-image-cloud-amd64",
        ] {
            assert!(spec.packages.iter().any(|p| p == package), "{package}");
        }
        for module in ["virtio_pci", "virtio_blk"] {
            assert!(spec.initramfs_modules.iter().any(|m| m == module));
        }
        assert!(spec_for("windows").is_none());
        assert!(PLATFORMS.iter().all(|p| spec_for(p).is_some()));
    }

    #[test]
    fn hash_changes_with_every_input_and_only_then() {
        let spec = spec_for("linux-debian").unwrap();
        let base = image_hash(&spec, "aa");
        assert_eq!(base, image_hash(&spec, "aa"));
        assert_eq!(base.len(), 64);
        assert_ne!(base, image_hash(&spec, "ab"));
        let mut other = spec.clone();
        other.suite = "trixie".into();
        assert_ne!(base, image_hash(&other, "aa"));
        let mut other = spec.clone();
        other.packages.push("git".into());
        assert_ne!(base, image_hash(&other, "aa"));
        let mut other = spec.clone();
        other.initramfs_modules.pop();
        assert_ne!(base, image_hash(&other, "aa"));
        // Field boundaries are unambiguous: moving a character between fields changes it.
        let mut a = spec.clone();
        a.packages = vec!["ab".into(), "c".into()];
        let mut b = spec.clone();
        b.packages = vec!["a".into(), "bc".into()];
        assert_ne!(image_hash(&a, "x"), image_hash(&b, "x"));
    }

    #[test]
    fn image_dirs_are_named_and_recognised() {
        let hash = "0123456789abcdef0123";
        let name = image_dir_name("linux-debian", hash);
        assert_eq!(name, "linux-debian-0123456789abcdef");
        assert!(is_image_dir_of(Path::new(&name), "linux-debian"));
        assert!(!is_image_dir_of(Path::new(&name), "linux"));
        assert!(!is_image_dir_of(
            Path::new("linux-debian-xyz"),
            "linux-debian"
        ));
        assert!(!is_image_dir_of(
            Path::new(".build-linux-debian-0123456789abcdef"),
            "linux-debian"
        ));
    }

    #[test]
    fn cmdline_boots_our_init_and_selects_selftest() {
        let normal = kernel_cmdline(false);
        assert!(normal.contains("init=/usr/local/sbin/pyti-init"));
        assert!(normal.contains("root=/dev/vda"));
        assert!(normal.contains("console=ttyS0"));
        assert!(normal.contains("panic=-1"));
        assert!(!normal.contains("pyti.selftest"));
        assert!(kernel_cmdline(true).ends_with(" pyti.selftest=1"));
    }

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(
            kernel_release_from_name("vmlinuz-6.1.0-50-cloud-amd64"),
            Some("6.1.0-50-cloud-amd64")
        );
        assert_eq!(kernel_release_from_name("vmlinuz-"), None);
        assert_eq!(kernel_release_from_name("initrd.img-6.1"), None);
    }

    #[test]
    fn init_script_always_powers_off_and_records_agent_failure() {
        assert!(INIT_SCRIPT.starts_with("#!/bin/sh"));
        assert!(INIT_SCRIPT.contains("echo o > /proc/sysrq-trigger"));
        assert!(INIT_SCRIPT.contains("results/agent-error.json"));
        assert!(INIT_SCRIPT.contains("results/results.json"));
        assert!(INIT_SCRIPT.contains("results/selftest.json"));
        assert!(INIT_SCRIPT.contains(&format!("agent={AGENT_PATH}")));
        assert!(INIT_SCRIPT.contains("\"$agent\" run --io /io"));
        assert!(INIT_SCRIPT.contains(VENV_PATH));
        assert!(INIT_SCRIPT.contains("modprobe -qa vfat"));
        // The script spells the IO disk's layout itself: it must be the shared one.
        for name in [
            layout::RESULTS_FILE,
            layout::AGENT_ERROR_FILE,
            layout::SELFTEST_FILE,
        ] {
            assert!(INIT_SCRIPT.contains(&format!("/io/{}", layout::in_results(name))));
        }
    }
}
