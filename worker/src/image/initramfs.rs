//! PyTI's own initramfs: a static busybox, the two modules that find the root disk, and
//! a fifteen-line `/init`.
//!
//! Debian's initramfs-tools image starts udev and runs its hook scripts, which under TCG
//! emulation costs seconds on every job before our init even starts. The guest always has
//! the same hardware (virtio disk on PCI, ext4 root), so its initramfs only has to load
//! `virtio_pci` and `virtio_blk`, mount `/dev/vda` and `switch_root`. The archive is
//! written here in the `newc` cpio format, uncompressed (it is about 2 MB and unpacks
//! faster than it would decompress under emulation).

use std::collections::BTreeMap;

/// Loads order of kernel modules: each module's dependencies (from `modules.dep`) come
/// before it, each module once. Returns paths relative to `/lib/modules/<release>/`.
pub fn module_load_order(modules_dep: &str, wanted: &[String]) -> Result<Vec<String>, String> {
    let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in modules_dep.lines() {
        let Some((module, rest)) = line.split_once(':') else {
            continue;
        };
        deps.insert(
            module.trim().to_owned(),
            rest.split_whitespace().map(str::to_owned).collect(),
        );
    }
    let by_name: BTreeMap<String, String> = deps
        .keys()
        .map(|path| (module_name(path), path.clone()))
        .collect();
    let mut order = Vec::new();
    for name in wanted {
        let path = by_name
            .get(&normalise(name))
            .ok_or_else(|| format!("module {name} is not in modules.dep"))?;
        visit(path, &deps, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    path: &str,
    deps: &BTreeMap<String, Vec<String>>,
    order: &mut Vec<String>,
    depth: usize,
) -> Result<(), String> {
    if depth > 64 {
        return Err(format!("module dependency loop at {path}"));
    }
    if order.iter().any(|p| p == path) {
        return Ok(());
    }
    // modules.dep lists dependencies so that the last one must be loaded first.
    for dep in deps.get(path).into_iter().flatten().rev() {
        visit(dep, deps, order, depth + 1)?;
    }
    order.push(path.to_owned());
    Ok(())
}

fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name of a `modules.dep` path (`kernel/fs/nls/nls_iso8859-1.ko` → `nls_iso8859_1`).
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    normalise(stem)
}

/// The initramfs `/init`: load `module_files` (in order, from `/modules/`), mount the
/// root disk and hand over to the `init=` of the kernel command line.
pub fn init_script(module_files: &[String], default_init: &str) -> String {
    let mut script = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev\n",
    );
    for file in module_files {
        script.push_str(&format!("insmod /modules/{file}\n"));
    }
    script.push_str(&format!(
        "init={default_init}\n\
         for word in $(cat /proc/cmdline); do case \"$word\" in init=*) init=\"${{word#init=}}\" ;; esac; done\n\
         n=0\n\
         while [ ! -b /dev/vda ] && [ $n -lt 400 ]; do usleep 25000; n=$((n+1)); done\n\
         if ! mount -t ext4 -o rw,noatime /dev/vda /root; then\n\
         \x20   echo \"pyti initramfs: cannot mount the root disk /dev/vda\" > /dev/console\n\
         \x20   poweroff -f\n\
         fi\n\
         umount /sys /proc\n\
         mount --move /dev /root/dev\n\
         exec switch_root /root \"$init\"\n"
    ));
    script
}

/// Writes a `newc` cpio archive (what the kernel unpacks as an initramfs).
#[derive(Debug, Default)]
pub struct CpioWriter {
    bytes: Vec<u8>,
    next_inode: u32,
}

/// `S_IFDIR`, `S_IFREG` and `S_IFCHR` file type bits.
const DIRECTORY: u32 = 0o040000;
const REGULAR: u32 = 0o100000;
const CHARACTER_DEVICE: u32 = 0o020000;

impl CpioWriter {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.next_inode += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.next_inode,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime: fixed, so equal inputs give equal archives
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // checksum (unused by newc)
        );
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.bytes.len() % 4 != 0 {
            self.bytes.push(0);
        }
    }

    /// Adds a directory (`name` without a leading slash).
    pub fn directory(&mut self, name: &str) {
        self.entry(name, DIRECTORY | 0o755, &[], (0, 0));
    }

    /// Adds a regular file with permission bits `permissions`.
    pub fn file(&mut self, name: &str, permissions: u32, data: &[u8]) {
        self.entry(name, REGULAR | (permissions & 0o7777), data, (0, 0));
    }

    /// Adds a character device node.
    pub fn character_device(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, CHARACTER_DEVICE | 0o600, &[], (major, minor));
    }

    /// Ends the archive and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        while self.bytes.len() % 512 != 0 {
            self.bytes.push(0);
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/nls/nls_iso8859-1.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/fat/fat.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko
";

    fn names(order: &[String]) -> Vec<String> {
        order.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let wanted = vec!["virtio_pci".to_owned(), "virtio_blk".to_owned()];
        let order = module_load_order(DEP, &wanted).unwrap();
        assert_eq!(
            names(&order),
            [
                "virtio",
                "virtio_ring",
                "virtio_pci_modern_dev",
                "virtio_pci_legacy_dev",
                "virtio_pci",
                "virtio_blk"
            ]
        );
        assert_eq!(order[0], "kernel/drivers/virtio/virtio.ko");
    }

    #[test]
    fn dashes_and_underscores_are_the_same_module() {
        let order = module_load_order(DEP, &["nls_iso8859_1".to_owned()]).unwrap();
        assert_eq!(order, ["kernel/fs/nls/nls_iso8859-1.ko"]);
        let order = module_load_order(DEP, &["vfat".to_owned()]).unwrap();
        assert_eq!(names(&order), ["fat", "vfat"]);
    }

    #[test]
    fn unknown_modules_and_loops_are_errors() {
        let err = module_load_order(DEP, &["virtio_net".to_owned()]).unwrap_err();
        assert!(err.contains("virtio_net"));
        let looped = "a.ko: b.ko\nb.ko: a.ko\n";
        assert!(module_load_order(looped, &["a".to_owned()]).is_err());
    }

    #[test]
    fn init_loads_modules_mounts_root_and_switches() {
        let script = init_script(
            &["virtio.ko".into(), "virtio_blk.ko".into()],
            "/usr/local/sbin/pyti-init",
        );
        assert!(script.starts_with("#!/bin/busybox sh\n"));
        let first = script.find("insmod /modules/virtio.ko").unwrap();
        let second = script.find("insmod /modules/virtio_blk.ko").unwrap();
        let mount = script.find("mount -t ext4").unwrap();
        let switch = script.find("exec switch_root /root \"$init\"").unwrap();
        assert!(first < second && second < mount && mount < switch);
        assert!(script.contains("init=/usr/local/sbin/pyti-init\n"));
        assert!(script.contains("poweroff -f"));
    }

    /// One archive entry: name, mode, data, device numbers.
    type Entry = (String, u32, Vec<u8>, (u32, u32));

    /// Reads back the entries of a newc archive.
    fn parse(bytes: &[u8]) -> Vec<Entry> {
        let field = |at: usize, index: usize| {
            let start = at + 6 + index * 8;
            u32::from_str_radix(std::str::from_utf8(&bytes[start..start + 8]).unwrap(), 16).unwrap()
        };
        let align = |n: usize| (n + 3) & !3;
        let mut entries = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701");
            let mode = field(at, 1);
            let size = field(at, 6) as usize;
            let rdev = (field(at, 9), field(at, 10));
            let name_size = field(at, 11) as usize;
            let name_at = at + 110;
            let name = String::from_utf8(bytes[name_at..name_at + name_size - 1].to_vec()).unwrap();
            let data_at = align(name_at + name_size);
            let data = bytes[data_at..data_at + size].to_vec();
            at = align(data_at + size);
            if name == "TRAILER!!!" {
                break;
            }
            entries.push((name, mode, data, rdev));
        }
        entries
    }

    #[test]
    fn cpio_round_trips() {
        let mut cpio = CpioWriter::new();
        cpio.directory("bin");
        cpio.file("init", 0o755, b"#!/bin/busybox sh\n");
        cpio.file("bin/odd", 0o644, b"12345");
        cpio.character_device("dev/console", 5, 1);
        let bytes = cpio.finish();
        assert_eq!(bytes.len() % 512, 0);
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].0, "bin");
        assert_eq!(entries[0].1, 0o040755);
        assert_eq!(
            entries[1],
            (
                "init".into(),
                0o100755,
                b"#!/bin/busybox sh\n".to_vec(),
                (0, 0)
            )
        );
        assert_eq!(entries[2].2, b"12345");
        assert_eq!(entries[3].0, "dev/console");
        assert_eq!(entries[3].1, 0o020600);
        assert_eq!(entries[3].3, (5, 1));
    }
}
