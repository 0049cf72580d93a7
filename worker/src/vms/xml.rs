//! Domain and snapshot XML, generated from a `VmConfig` by pure code.
//!
//! Everything a VM may or may not have (no network card, no USB, no balloon, what happens
//! on reboot or crash) is decided here, where a unit test can read it, instead of being
//! spread over libvirt calls.

use std::fmt::Write as _;

use super::accel::Accelerator;
use super::config::{DiskFormat, Hypervisor, VmConfig};

/// The `<domain type=...>` libvirt needs for a driver and accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// QEMU with hardware virtualisation.
    Kvm,
    /// QEMU with TCG emulation.
    Qemu,
    /// VirtualBox.
    Vbox,
    /// libvirt's test driver.
    Test,
}

impl DomainType {
    /// The domain type for a driver; the accelerator matters only for QEMU.
    pub fn for_hypervisor(hypervisor: Hypervisor, accelerator: Accelerator) -> Self {
        match (hypervisor, accelerator) {
            (Hypervisor::Qemu, Accelerator::Kvm) => Self::Kvm,
            (Hypervisor::Qemu, Accelerator::Tcg) => Self::Qemu,
            (Hypervisor::VirtualBox, _) => Self::Vbox,
            (Hypervisor::Test, _) => Self::Test,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Qemu => "qemu",
            Self::Vbox => "vbox",
            Self::Test => "test",
        }
    }
}

/// Escapes text for use in XML content and single- or double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
    out
}

/// Device name of the `index`-th disk on a bus prefix (`vd` + 0 = `vda`, 27 = `vdab`).
fn disk_target(prefix: &str, index: usize) -> String {
    let mut suffix = Vec::new();
    let mut n = index;
    loop {
        suffix.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    suffix.reverse();
    format!("{prefix}{}", String::from_utf8(suffix).unwrap_or_default())
}

/// The libvirt domain definition for `config`.
///
/// The guest gets no network card, no USB, no graphics and no memory balloon; reboot and
/// crash end the domain (a guest kernel panic with `panic=-1` therefore powers it off).
/// QEMU guests get virtio disks (`vda` = hard disk, `vdb` = first extra disk, ...) and a
/// `pc` machine; VirtualBox guests get SATA disks.
pub fn domain_xml(config: &VmConfig, domain_type: DomainType) -> String {
    let qemu = matches!(domain_type, DomainType::Kvm | DomainType::Qemu);
    let (bus, prefix) = match domain_type {
        DomainType::Vbox => ("sata", "sd"),
        _ => ("virtio", "vd"),
    };
    let mut x = String::new();
    let _ = writeln!(x, "<domain type='{}'>", domain_type.as_str());
    let _ = writeln!(x, "  <name>{}</name>", escape(&config.name));
    let _ = writeln!(x, "  <memory unit='MiB'>{}</memory>", config.memory_mib);
    let _ = writeln!(
        x,
        "  <currentMemory unit='MiB'>{}</currentMemory>",
        config.memory_mib
    );
    let _ = writeln!(x, "  <vcpu placement='static'>{}</vcpu>", config.vcpus);
    x.push_str("  <os>\n");
    if qemu {
        x.push_str("    <type arch='x86_64' machine='pc'>hvm</type>\n");
    } else {
        x.push_str("    <type arch='x86_64'>hvm</type>\n");
    }
    if let Some(kernel) = &config.kernel {
        let _ = writeln!(
            x,
            "    <kernel>{}</kernel>",
            escape(&kernel.kernel.to_string_lossy())
        );
        if let Some(initrd) = &kernel.initrd {
            let _ = writeln!(
                x,
                "    <initrd>{}</initrd>",
                escape(&initrd.to_string_lossy())
            );
        }
        let _ = writeln!(x, "    <cmdline>{}</cmdline>", escape(&kernel.cmdline));
    } else {
        if config.iso.is_some() {
            x.push_str("    <boot dev='cdrom'/>\n");
        }
        x.push_str("    <boot dev='hd'/>\n");
    }
    x.push_str("  </os>\n");
    x.push_str("  <features>\n    <acpi/>\n  </features>\n");
    // The most capable CPU the accelerator offers: wheels built for a newer baseline
    // (numpy 2.x) die of SIGILL on QEMU's default qemu64 model.
    match domain_type {
        DomainType::Kvm => x.push_str("  <cpu mode='host-passthrough'/>\n"),
        DomainType::Qemu => x.push_str("  <cpu mode='maximum' migratable='off'/>\n"),
        DomainType::Vbox | DomainType::Test => {}
    }
    x.push_str("  <clock offset='utc'/>\n");
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n");
    x.push_str("  <on_reboot>destroy</on_reboot>\n");
    x.push_str("  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");
    let disks = config.hard_disk.iter().chain(config.extra_disks.iter());
    for (index, disk) in disks.enumerate() {
        // The hard disk is a throw-away overlay: no need to honour guest flushes.
        let throwaway = index == 0 && config.hard_disk.is_some();
        write_disk(
            &mut x,
            &DiskXml {
                device: if throwaway { "disk unsafe" } else { "disk" },
                path: &disk.path.to_string_lossy(),
                format: disk.format,
                read_only: disk.read_only,
                bus,
                target: &disk_target(prefix, index),
                backing_file: disk.backing_file.as_deref().filter(|_| qemu),
            },
        );
    }
    if let Some(iso) = &config.iso {
        let (cd_bus, cd_target) = match domain_type {
            DomainType::Vbox => ("sata", disk_target("sd", 25)),
            _ => ("ide", "hdc".to_owned()),
        };
        write_disk(
            &mut x,
            &DiskXml {
                device: "cdrom",
                path: &iso.to_string_lossy(),
                format: DiskFormat::Raw,
                read_only: true,
                bus: cd_bus,
                target: &cd_target,
                backing_file: None,
            },
        );
    }
    if let Some(log) = &config.serial_log {
        let path = escape(&log.to_string_lossy());
        let _ = writeln!(
            x,
            "    <serial type='file'>\n      <source path='{path}'/>\n      <target port='0'/>\n    </serial>"
        );
        let _ = writeln!(
            x,
            "    <console type='file'>\n      <source path='{path}'/>\n      <target type='serial' port='0'/>\n    </console>"
        );
    }
    if qemu {
        x.push_str("    <controller type='usb' model='none'/>\n");
        x.push_str("    <memballoon model='none'/>\n");
    }
    x.push_str("  </devices>\n");
    x.push_str("</domain>\n");
    x
}

/// One `<disk>` element: `device` is `disk`, `disk <cache mode>` or `cdrom`.
struct DiskXml<'a> {
    device: &'a str,
    path: &'a str,
    format: DiskFormat,
    read_only: bool,
    bus: &'a str,
    target: &'a str,
    backing_file: Option<&'a std::path::Path>,
}

fn write_disk(x: &mut String, disk: &DiskXml<'_>) {
    let DiskXml {
        device,
        path,
        format,
        read_only,
        bus,
        target,
        backing_file,
    } = *disk;
    let (device, cache) = match device.split_once(' ') {
        Some((device, cache)) => (device, format!(" cache='{cache}'")),
        None => (device, String::new()),
    };
    let _ = writeln!(x, "    <disk type='file' device='{device}'>");
    let _ = writeln!(
        x,
        "      <driver name='qemu' type='{}'{cache}/>",
        format.as_str()
    );
    let _ = writeln!(x, "      <source file='{}'/>", escape(path));
    if let Some(base) = backing_file {
        // relabel='no': libvirt would otherwise chown the shared base to the qemu user,
        // and a file's owner can make it writable again.
        let _ = writeln!(
            x,
            "      <backingStore type='file'>\n        <format type='qcow2'/>\n        <source file='{}'>\n          <seclabel model='dac' relabel='no'/>\n        </source>\n        <backingStore/>\n      </backingStore>",
            escape(&base.to_string_lossy())
        );
    }
    let _ = writeln!(x, "      <target dev='{target}' bus='{bus}'/>");
    if read_only {
        x.push_str("      <readonly/>\n");
    }
    x.push_str("    </disk>\n");
}

/// The snapshot definition for `create_snapshot(name, description)`.
pub fn snapshot_xml(name: &str, description: &str) -> String {
    format!(
        "<domainsnapshot>\n  <name>{}</name>\n  <description>{}</description>\n</domainsnapshot>\n",
        escape(name),
        escape(description)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vms::config::{DirectKernelBoot, DiskSpec};

    fn pyti_config() -> VmConfig {
        let mut config = VmConfig::new("pyti-w1-linux-debian-0");
        config.memory_mib = 768;
        config.vcpus = 2;
        config.hard_disk = Some(DiskSpec::overlay(
            "/r/overlays/slot0.qcow2",
            "/r/images/x/base.qcow2",
        ));
        config.extra_disks = vec![DiskSpec::new("/r/io/job-1.img")];
        config.kernel = Some(DirectKernelBoot {
            kernel: "/r/images/x/vmlinuz".into(),
            initrd: Some("/r/images/x/initrd.img".into()),
            cmdline: "console=ttyS0 root=/dev/vda rw".into(),
        });
        config.serial_log = Some("/r/logs/slot0.log".into());
        config
    }

    #[test]
    fn disk_targets_count_like_linux() {
        assert_eq!(disk_target("vd", 0), "vda");
        assert_eq!(disk_target("vd", 1), "vdb");
        assert_eq!(disk_target("vd", 25), "vdz");
        assert_eq!(disk_target("vd", 26), "vdaa");
        assert_eq!(disk_target("vd", 27), "vdab");
        assert_eq!(disk_target("sd", 52), "sdba");
    }

    #[test]
    fn escape_covers_markup() {
        assert_eq!(escape("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
        assert_eq!(escape("/plain/path"), "/plain/path");
    }

    #[test]
    fn tcg_domain_has_caps_disks_kernel_and_no_network() {
        let xml = domain_xml(&pyti_config(), DomainType::Qemu);
        assert!(xml.starts_with("<domain type='qemu'>"));
        assert!(xml.contains("<memory unit='MiB'>768</memory>"));
        assert!(xml.contains("<vcpu placement='static'>2</vcpu>"));
        assert!(xml.contains("<kernel>/r/images/x/vmlinuz</kernel>"));
        assert!(xml.contains("<initrd>/r/images/x/initrd.img</initrd>"));
        assert!(xml.contains("<cmdline>console=ttyS0 root=/dev/vda rw</cmdline>"));
        assert!(!xml.contains("<boot dev="));
        let overlay = xml.find("/r/overlays/slot0.qcow2").unwrap();
        let io = xml.find("/r/io/job-1.img").unwrap();
        assert!(overlay < io, "hard disk must come first (vda)");
        assert!(xml.contains("type='qcow2'"));
        assert!(xml.contains("type='raw'"));
        assert!(xml.contains("<target dev='vda' bus='virtio'/>"));
        assert!(xml.contains("<target dev='vdb' bus='virtio'/>"));
        assert!(!xml.contains("<interface"), "no network card by default");
        assert!(xml.contains("<controller type='usb' model='none'/>"));
        assert!(xml.contains("<memballoon model='none'/>"));
        assert!(xml.contains("<on_reboot>destroy</on_reboot>"));
        assert!(xml.contains("<on_crash>destroy</on_crash>"));
        assert!(xml.contains("<source path='/r/logs/slot0.log'/>"));
        assert!(!xml.contains("host-passthrough"));
        assert!(xml.contains("<cpu mode='maximum' migratable='off'/>"));
        assert!(xml.contains("machine='pc'"));
        let backing = xml.find("<backingStore type='file'>").unwrap();
        let base = xml.find("<source file='/r/images/x/base.qcow2'>").unwrap();
        let no_relabel = xml.find("<seclabel model='dac' relabel='no'/>").unwrap();
        assert!(overlay < backing && backing < base && base < no_relabel && no_relabel < io);
        assert_eq!(
            xml.matches("<backingStore").count(),
            2,
            "base has no backing"
        );
    }

    #[test]
    fn kvm_domain_passes_the_host_cpu_through() {
        let xml = domain_xml(&pyti_config(), DomainType::Kvm);
        assert!(xml.starts_with("<domain type='kvm'>"));
        assert!(xml.contains("<cpu mode='host-passthrough'/>"));
    }

    #[test]
    fn iso_live_boot_boots_cdrom_first() {
        let mut config = VmConfig::new("live");
        config.iso = Some("/isos/live.iso".into());
        config.hard_disk = Some(DiskSpec::new("/d/disk.qcow2"));
        let xml = domain_xml(&config, DomainType::Qemu);
        let cdrom = xml.find("<boot dev='cdrom'/>").unwrap();
        let hd = xml.find("<boot dev='hd'/>").unwrap();
        assert!(cdrom < hd);
        assert!(xml.contains("device='cdrom'"));
        assert!(xml.contains("<target dev='hdc' bus='ide'/>"));
        assert!(xml.contains("<readonly/>"));
        assert!(!xml.contains("<kernel>"));
    }

    #[test]
    fn vbox_uses_sata_and_no_qemu_only_devices() {
        let mut config = pyti_config();
        config.kernel = None;
        let xml = domain_xml(&config, DomainType::Vbox);
        assert!(xml.starts_with("<domain type='vbox'>"));
        assert!(xml.contains("<target dev='sda' bus='sata'/>"));
        assert!(xml.contains("<target dev='sdb' bus='sata'/>"));
        assert!(!xml.contains("memballoon"));
        assert!(
            !xml.contains("backingStore"),
            "only QEMU understands qcow2 chains"
        );
        assert!(!xml.contains("machine='pc'"));
    }

    #[test]
    fn test_driver_domain() {
        let xml = domain_xml(&pyti_config(), DomainType::Test);
        assert!(xml.starts_with("<domain type='test'>"));
    }

    #[test]
    fn hostile_names_and_paths_are_escaped() {
        let mut config = pyti_config();
        config.name = "a</name><x>".into();
        config.hard_disk = Some(DiskSpec::new("/tmp/'><evil/>"));
        let xml = domain_xml(&config, DomainType::Qemu);
        assert!(!xml.contains("<evil/>"));
        assert!(!xml.contains("<x>"));
        assert!(xml.contains("&lt;/name&gt;"));
    }

    #[test]
    fn domain_type_follows_driver_and_accelerator() {
        assert_eq!(
            DomainType::for_hypervisor(Hypervisor::Qemu, Accelerator::Kvm),
            DomainType::Kvm
        );
        assert_eq!(
            DomainType::for_hypervisor(Hypervisor::Qemu, Accelerator::Tcg),
            DomainType::Qemu
        );
        assert_eq!(
            DomainType::for_hypervisor(Hypervisor::VirtualBox, Accelerator::Kvm),
            DomainType::Vbox
        );
        assert_eq!(
            DomainType::for_hypervisor(Hypervisor::Test, Accelerator::Tcg),
            DomainType::Test
        );
    }

    #[test]
    fn snapshot_xml_escapes_description() {
        let xml = snapshot_xml("clean", "before <job> & after");
        assert!(xml.contains("<name>clean</name>"));
        assert!(xml.contains("before &lt;job&gt; &amp; after"));
    }
}
