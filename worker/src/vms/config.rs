//! What a VM is made of, as plain data: the seed's config dict in typed form.
//!
//! Kept apart from libvirt so the domain XML can be decided (and tested) without a
//! hypervisor; `xml.rs` turns these into a domain definition.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::accel::AcceleratorChoice;
use super::VmError;

/// Which libvirt driver a connection URI talks to; it decides the domain type and disk buses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    /// `qemu:///system`, `qemu:///session` (KVM or TCG).
    Qemu,
    /// `vbox:///session`, the seed's VirtualBox.
    VirtualBox,
    /// `test:///default`, libvirt's in-memory driver (state machine tests only).
    Test,
}

impl Hypervisor {
    /// The driver named by a libvirt connection URI (`qemu:///system`, `qemu+ssh://h/system`,
    /// `vbox:///session`, `test:///default`); other drivers are refused.
    pub fn from_uri(uri: &str) -> Result<Self, VmError> {
        let scheme = uri.split_once(':').map(|(s, _)| s).unwrap_or("");
        let driver = scheme.split('+').next().unwrap_or("");
        match driver {
            "qemu" => Ok(Self::Qemu),
            "vbox" => Ok(Self::VirtualBox),
            "test" => Ok(Self::Test),
            _ => Err(VmError::UnsupportedUri {
                uri: uri.to_owned(),
            }),
        }
    }
}

/// Image format of a disk file, as libvirt's `<driver type=...>` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// Plain raw image (the IO disk as built).
    Raw,
    /// QEMU copy-on-write (base images and per-run overlays).
    Qcow2,
    /// VirtualBox disk image.
    Vdi,
    /// VMware disk image.
    Vmdk,
}

impl DiskFormat {
    /// The name libvirt and qemu-img use for this format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
            Self::Vdi => "vdi",
            Self::Vmdk => "vmdk",
        }
    }

    /// Format guessed from a file extension (`.qcow2`, `.vdi`, `.vmdk`; anything else is raw).
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("qcow2") => Self::Qcow2,
            Some("vdi") => Self::Vdi,
            Some("vmdk") => Self::Vmdk,
            _ => Self::Raw,
        }
    }
}

/// One disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Absolute path of the image file.
    pub path: PathBuf,
    /// Image format.
    pub format: DiskFormat,
    /// Attach read-only (the guest cannot write it).
    #[serde(default)]
    pub read_only: bool,
    /// For a qcow2 overlay: its read-only qcow2 base. Named in the domain so libvirt
    /// never relabels (chowns) the shared base for one VM.
    #[serde(default)]
    pub backing_file: Option<PathBuf>,
}

impl DiskSpec {
    /// A writable disk whose format is guessed from the file extension.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let format = DiskFormat::from_path(&path);
        Self {
            path,
            format,
            read_only: false,
            backing_file: None,
        }
    }

    /// A qcow2 overlay on a qcow2 `base` (the per-run system disk).
    pub fn overlay(path: impl Into<PathBuf>, base: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: DiskFormat::Qcow2,
            read_only: false,
            backing_file: Some(base.into()),
        }
    }
}

/// Direct kernel boot: the hypervisor loads kernel and initrd itself, no bootloader in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectKernelBoot {
    /// Kernel image (vmlinuz).
    pub kernel: PathBuf,
    /// Initial ramdisk, if the kernel needs modules to find its root.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// Everything that defines one VM; `VirtualMachine::define` turns it into a libvirt domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Domain name, unique on the connection (slots use a worker-specific prefix).
    pub name: String,
    /// Guest memory in MiB (a hard cap: the guest never gets more). Default 1024.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Virtual CPUs. Default 1.
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    /// ISO image for a live boot (attached as a CD-ROM and booted first).
    #[serde(default)]
    pub iso: Option<PathBuf>,
    /// The system disk (for PyTI: the per-run qcow2 overlay on the base image).
    #[serde(default)]
    pub hard_disk: Option<DiskSpec>,
    /// Kernel, initrd and command line for direct kernel boot.
    #[serde(default)]
    pub kernel: Option<DirectKernelBoot>,
    /// Further disks after the hard disk, in order (the IO disk is the first of them).
    #[serde(default)]
    pub extra_disks: Vec<DiskSpec>,
    /// File that receives everything the guest writes to its first serial port.
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    /// KVM or TCG for QEMU connections (ignored by other drivers). Default auto.
    #[serde(default)]
    pub accelerator: AcceleratorChoice,
}

fn default_memory_mib() -> u64 {
    1024
}

fn default_vcpus() -> u32 {
    1
}

impl VmConfig {
    /// A config with defaults for everything but the name.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            memory_mib: default_memory_mib(),
            vcpus: default_vcpus(),
            iso: None,
            hard_disk: None,
            kernel: None,
            extra_disks: Vec::new(),
            serial_log: None,
            accelerator: AcceleratorChoice::Auto,
        }
    }

    /// Rejects configs libvirt would accept but that cannot work (empty name, zero memory, ...).
    pub fn validate(&self) -> Result<(), VmError> {
        let invalid = |field: &str, reason: &str| VmError::InvalidConfig {
            vm: self.name.clone(),
            field: field.to_owned(),
            reason: reason.to_owned(),
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "name",
                "must be non-empty and use only ASCII letters, digits, '-', '_' and '.'",
            ));
        }
        if self.memory_mib < 64 {
            return Err(invalid("memory_mib", "must be at least 64"));
        }
        if self.vcpus == 0 {
            return Err(invalid("vcpus", "must be at least 1"));
        }
        if self.hard_disk.is_none() && self.iso.is_none() && self.kernel.is_none() {
            return Err(invalid(
                "hard_disk",
                "nothing to boot: give a hard disk, an ISO or a kernel",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_names_driver() {
        assert_eq!(
            Hypervisor::from_uri("qemu:///system").unwrap(),
            Hypervisor::Qemu
        );
        assert_eq!(
            Hypervisor::from_uri("qemu+ssh://host/system").unwrap(),
            Hypervisor::Qemu
        );
        assert_eq!(
            Hypervisor::from_uri("vbox:///session").unwrap(),
            Hypervisor::VirtualBox
        );
        assert_eq!(
            Hypervisor::from_uri("test:///default").unwrap(),
            Hypervisor::Test
        );
        assert!(Hypervisor::from_uri("xen:///system").is_err());
        assert!(Hypervisor::from_uri("").is_err());
    }

    #[test]
    fn disk_format_from_extension() {
        assert_eq!(DiskSpec::new("/a/b.qcow2").format, DiskFormat::Qcow2);
        assert_eq!(DiskSpec::new("/a/b.vdi").format, DiskFormat::Vdi);
        assert_eq!(DiskSpec::new("/a/b.vmdk").format, DiskFormat::Vmdk);
        assert_eq!(DiskSpec::new("/a/io.img").format, DiskFormat::Raw);
        assert_eq!(DiskSpec::new("/a/noext").format, DiskFormat::Raw);
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = VmConfig::new("pyti-a");
        config.hard_disk = Some(DiskSpec::new("/x.qcow2"));
        assert!(config.validate().is_ok());
        let bad_name = VmConfig {
            name: "a b".into(),
            ..config.clone()
        };
        assert!(bad_name
            .validate()
            .unwrap_err()
            .to_string()
            .contains("name"));
        let no_memory = VmConfig {
            memory_mib: 0,
            ..config.clone()
        };
        assert!(no_memory
            .validate()
            .unwrap_err()
            .to_string()
            .contains("memory_mib"));
        let no_cpu = VmConfig {
            vcpus: 0,
            ..config.clone()
        };
        assert!(no_cpu.validate().unwrap_err().to_string().contains("vcpus"));
        let nothing = VmConfig::new("pyti-b");
        assert!(nothing
            .validate()
            .unwrap_err()
            .to_string()
            .contains("nothing to boot"));
    }

    #[test]
    fn config_parses_from_json_with_defaults_and_rejects_unknown_keys() {
        let config: VmConfig = serde_json::from_str(
            r#"{"name":"vm1","hard_disk":{"path":"/d.qcow2","format":"qcow2"}}"#,
        )
        .unwrap();
        assert_eq!(config.memory_mib, 1024);
        assert_eq!(config.vcpus, 1);
        assert_eq!(config.accelerator, AcceleratorChoice::Auto);
        let err = serde_json::from_str::<VmConfig>(r#"{"name":"vm1","memroy":5}"#).unwrap_err();
        assert!(err.to_string().contains("memroy"));
    }
}
