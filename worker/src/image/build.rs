//! The build steps: debootstrap, configure the rootfs in a chroot, our own initramfs,
//! ext4 without mounting, qcow2 base, kernel and initramfs beside it.
//!
//! Each step logs its start and its elapsed time (the build takes about a minute with a
//! warm package cache, most of it debootstrap). The build happens in a scratch directory
//! that is renamed into place only when complete, under a lock, so a killed build leaves
//! nothing that looks like an image.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::info;

use super::agent::check_static_agent;
use super::initramfs;
use super::spec::{self, ImageSpec, Manifest, ManifestFile};
use super::{images_dir, GuestImage, ImageError};

/// Debian mirror used by debootstrap (overridable for local mirrors).
pub const MIRROR_ENV: &str = "PYTI_DEBIAN_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// The keyring debootstrap checks the archive's signatures with, named explicitly so
/// the image never depends on whatever default a host's debootstrap falls back to.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
const BASE_NAME: &str = "base.qcow2";
const KERNEL_NAME: &str = "vmlinuz";
const INITRD_NAME: &str = "initrd.img";
/// Free space the guest gets on its root file system beyond what the rootfs uses.
const ROOT_HEADROOM_BYTES: u64 = 3 << 30;

/// Returns the image for `platform` built with the agent at `agent`, building it unless
/// an identical one (same hash) is cached or `force` is set.
pub async fn ensure_image(
    root: &Path,
    platform: &str,
    agent: &Path,
    force: bool,
) -> Result<GuestImage, ImageError> {
    let root = root.to_owned();
    let platform = platform.to_owned();
    let agent = agent.to_owned();
    tokio::task::spawn_blocking(move || ensure_image_blocking(&root, &platform, &agent, force))
        .await
        .map_err(|e| ImageError::Step {
            step: "build task".into(),
            detail: e.to_string(),
        })?
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

fn ensure_image_blocking(
    root: &Path,
    platform: &str,
    agent: &Path,
    force: bool,
) -> Result<GuestImage, ImageError> {
    let image_spec = spec::spec_for(platform).ok_or_else(|| ImageError::UnknownPlatform {
        platform: platform.to_owned(),
        known: spec::PLATFORMS.join(", "),
    })?;
    check_static_agent(agent)?;
    let agent_sha256 = hash_file(agent)?;
    let hash = spec::image_hash(&image_spec, &agent_sha256);
    let images = images_dir(root);
    fs::create_dir_all(&images).map_err(io_error(&images))?;
    set_mode(&images, 0o755)?;
    let _lock = BuildLock::take(&images.join(".lock"))?;
    let dir = images.join(spec::image_dir_name(platform, &hash));
    if !force {
        if let Ok(image) = GuestImage::load(&dir) {
            if image.manifest.hash == hash && image.base().is_file() {
                info!(platform, image = %dir.display(), "Guest image is up to date; build skipped");
                return Ok(image);
            }
        }
    }
    check_can_build()?;
    let started = Instant::now();
    info!(platform, hash = &hash[..16], "Building guest image");
    let scratch = images.join(format!(".build-{}", spec::image_dir_name(platform, &hash)));
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(io_error(&scratch))?;
    }
    fs::create_dir_all(&scratch).map_err(io_error(&scratch))?;
    let inputs = BuildInputs {
        spec: &image_spec,
        agent,
        agent_sha256: &agent_sha256,
        hash: &hash,
    };
    let result = build_into(&scratch, &images, &inputs, started);
    let manifest = match result {
        Ok(manifest) => manifest,
        Err(error) => {
            let _ = fs::remove_dir_all(scratch.join("rootfs"));
            return Err(error);
        }
    };
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
    }
    fs::rename(&scratch, &dir).map_err(io_error(&dir))?;
    info!(
        platform,
        image = %dir.display(),
        build_s = format!("{:.1}", manifest.build_seconds),
        "Guest image built"
    );
    GuestImage::load(&dir)
}

/// Exclusive lock on the images directory while building (released when the file closes).
struct BuildLock {
    _file: fs::File,
}

impl BuildLock {
    fn take(path: &Path) -> Result<Self, ImageError> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io_error(path))?;
        // SAFETY: flock on a descriptor this struct owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_error(path)(std::io::Error::last_os_error()));
        }
        Ok(Self { _file: file })
    }
}

/// Refuses early, with what to do, when the build cannot work on this host.
fn check_can_build() -> Result<(), ImageError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let userns = fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            > 0
            && fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
                .map(|s| s.trim() == "1")
                .unwrap_or(true);
        let hint = if userns {
            "run it as root, or inside a user namespace where you are root: `unshare --map-root-user --mount pyti-worker image build`"
        } else {
            "run it as root (user namespaces are disabled on this host, so `unshare --map-root-user` is not an option)"
        };
        return Err(ImageError::NeedsRoot {
            hint: hint.to_owned(),
        });
    }
    if !Path::new(DEBIAN_KEYRING).is_file() {
        return Err(ImageError::MissingTool {
            tool: DEBIAN_KEYRING.to_owned(),
            package: "debian-archive-keyring".to_owned(),
        });
    }
    for (tool, package) in [
        ("debootstrap", "debootstrap"),
        ("chroot", "coreutils"),
        ("mkfs.ext4", "e2fsprogs"),
        ("qemu-img", "qemu-utils"),
    ] {
        if !on_path(tool) {
            return Err(ImageError::MissingTool {
                tool: tool.to_owned(),
                package: package.to_owned(),
            });
        }
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path))
}

/// Runs one build step, logging its duration; output goes to `<scratch>/<step>.log`.
fn step(scratch: &Path, name: &str, command: &mut Command) -> Result<(), ImageError> {
    let started = Instant::now();
    info!(step = name, "Image build step started");
    let log_path = scratch.join(format!("{name}.log"));
    let log = fs::File::create(&log_path).map_err(io_error(&log_path))?;
    let log_err = log.try_clone().map_err(io_error(&log_path))?;
    let status = command
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| ImageError::Step {
            step: name.to_owned(),
            detail: format!("cannot run {:?}: {e}", command.get_program()),
        })?;
    if !status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ImageError::Step {
            step: name.to_owned(),
            detail: format!(
                "{status}; last lines of {}:\n{}",
                log_path.display(),
                tail.join("\n")
            ),
        });
    }
    info!(
        step = name,
        elapsed_s = format!("{:.1}", started.elapsed().as_secs_f64()),
        "Image build step done"
    );
    Ok(())
}

fn chroot(rootfs: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("chroot");
    command
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LANG", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .arg(rootfs)
        .args(args);
    command
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), ImageError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_error(parent))?;
    }
    fs::write(path, text).map_err(io_error(path))?;
    set_mode(path, mode)
}

fn manifest_file(dir: &Path, name: &str) -> Result<ManifestFile, ImageError> {
    let path = dir.join(name);
    let bytes = fs::metadata(&path).map_err(io_error(&path))?.len();
    Ok(ManifestFile {
        name: name.to_owned(),
        bytes,
        sha256: hash_file(&path)?,
    })
}

/// What an image is built from, and the hash that names the result.
struct BuildInputs<'a> {
    spec: &'a ImageSpec,
    agent: &'a Path,
    agent_sha256: &'a str,
    hash: &'a str,
}

fn build_into(
    scratch: &Path,
    images: &Path,
    inputs: &BuildInputs<'_>,
    started: Instant,
) -> Result<Manifest, ImageError> {
    let BuildInputs {
        spec: image_spec,
        agent,
        agent_sha256,
        hash,
    } = *inputs;
    let rootfs = scratch.join("rootfs");
    let cache = images.join("deb-cache");
    fs::create_dir_all(&cache).map_err(io_error(&cache))?;
    let mirror = std::env::var(MIRROR_ENV).unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    step(
        scratch,
        "debootstrap",
        Command::new("debootstrap")
            .arg(format!("--keyring={DEBIAN_KEYRING}"))
            .arg(format!("--variant={}", image_spec.variant))
            .arg(format!("--include={}", image_spec.packages.join(",")))
            .arg(format!("--cache-dir={}", cache.display()))
            .arg(&image_spec.suite)
            .arg(&rootfs)
            .arg(&mirror),
    )?;

    write_file(&rootfs.join("etc/hostname"), "pyti-guest\n", 0o644)?;
    // debootstrap copies the build host's resolver; the guest gets loopback instead, so a
    // package's DNS queries stay inside the VM and the monitor sees the names asked for.
    let resolv = rootfs.join("etc/resolv.conf");
    let _ = fs::remove_file(&resolv);
    write_file(&resolv, "nameserver 127.0.0.1\n", 0o644)?;
    write_file(
        &rootfs.join(spec::INIT_PATH.trim_start_matches('/')),
        spec::INIT_SCRIPT,
        0o755,
    )?;
    let agent_target = rootfs.join(spec::AGENT_PATH.trim_start_matches('/'));
    fs::copy(agent, &agent_target).map_err(io_error(&agent_target))?;
    set_mode(&agent_target, 0o755)?;
    step(
        scratch,
        "venv",
        &mut chroot(&rootfs, &["python3", "-m", "venv", spec::VENV_PATH]),
    )?;

    let boot = rootfs.join("boot");
    let kernel_file = fs::read_dir(&boot)
        .map_err(io_error(&boot))?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|name| spec::kernel_release_from_name(name).is_some())
        .ok_or_else(|| ImageError::Step {
            step: "kernel".into(),
            detail: format!("no vmlinuz-* in {}", boot.display()),
        })?;
    let kernel_release = spec::kernel_release_from_name(&kernel_file)
        .unwrap_or_default()
        .to_owned();
    let kernel_target = scratch.join(KERNEL_NAME);
    fs::copy(boot.join(&kernel_file), &kernel_target)
        .map_err(io_error(&boot.join(&kernel_file)))?;
    set_mode(&kernel_target, 0o644)?;
    let initramfs_started = Instant::now();
    let initrd = build_initramfs(&rootfs, &kernel_release, &image_spec.initramfs_modules)?;
    let initrd_target = scratch.join(INITRD_NAME);
    write_bytes(&initrd_target, &initrd)?;
    info!(
        step = "initramfs",
        bytes = initrd.len(),
        elapsed_s = format!("{:.1}", initramfs_started.elapsed().as_secs_f64()),
        "Image build step done"
    );

    let slim_started = Instant::now();
    for dir in [
        "boot",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
        "var/cache/apt/archives",
        "var/lib/apt/lists",
    ] {
        let path = rootfs.join(dir);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(io_error(&path))?;
            fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
    }
    info!(
        step = "slim",
        elapsed_s = format!("{:.1}", slim_started.elapsed().as_secs_f64()),
        "Image build step done"
    );

    let used = directory_bytes(&rootfs);
    let size_mib = (used + used / 4 + ROOT_HEADROOM_BYTES).div_ceil(1 << 20);
    let ext4 = scratch.join("root.ext4");
    let file = fs::File::create(&ext4).map_err(io_error(&ext4))?;
    file.set_len(size_mib << 20).map_err(io_error(&ext4))?;
    drop(file);
    step(
        scratch,
        "mkfs.ext4",
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "pyti-root", "-O", "^has_journal", "-d"])
            .arg(&rootfs)
            .arg(&ext4),
    )?;
    let cleanup_started = Instant::now();
    fs::remove_dir_all(&rootfs).map_err(io_error(&rootfs))?;
    info!(
        step = "remove rootfs",
        elapsed_s = format!("{:.1}", cleanup_started.elapsed().as_secs_f64()),
        "Image build step done"
    );
    let base = scratch.join(BASE_NAME);
    step(
        scratch,
        "qcow2",
        Command::new("qemu-img")
            .args(["convert", "-O", "qcow2"])
            .arg(&ext4)
            .arg(&base),
    )?;
    fs::remove_file(&ext4).map_err(io_error(&ext4))?;
    set_mode(&base, 0o444)?;
    set_mode(scratch, 0o755)?;
    info!(step = "manifest", "Hashing the image files");

    let manifest = Manifest {
        manifest_version: 1,
        platform: image_spec.platform.clone(),
        hash: hash.to_owned(),
        builder_version: spec::BUILDER_VERSION,
        spec: image_spec.clone(),
        agent_sha256: agent_sha256.to_owned(),
        kernel_release,
        cmdline: spec::kernel_cmdline(false),
        base: manifest_file(scratch, BASE_NAME)?,
        kernel: manifest_file(scratch, KERNEL_NAME)?,
        initrd: manifest_file(scratch, INITRD_NAME)?,
        built_at_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_seconds: started.elapsed().as_secs_f64(),
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| ImageError::Step {
        step: "manifest".into(),
        detail: e.to_string(),
    })?;
    write_file(&scratch.join("manifest.json"), &(text + "\n"), 0o644)?;
    Ok(manifest)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    fs::write(path, bytes).map_err(io_error(path))?;
    set_mode(path, 0o644)
}

/// PyTI's initramfs (see `initramfs.rs`) from the rootfs's busybox and kernel modules.
fn build_initramfs(
    rootfs: &Path,
    kernel_release: &str,
    modules: &[String],
) -> Result<Vec<u8>, ImageError> {
    let modules_dir = rootfs.join("usr/lib/modules").join(kernel_release);
    let dep_path = modules_dir.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).map_err(io_error(&dep_path))?;
    let order = initramfs::module_load_order(&dep, modules).map_err(|detail| ImageError::Step {
        step: "initramfs".into(),
        detail,
    })?;
    let busybox_path = rootfs.join("usr/bin/busybox");
    let busybox = fs::read(&busybox_path).map_err(io_error(&busybox_path))?;
    let mut cpio = initramfs::CpioWriter::new();
    for dir in ["bin", "dev", "proc", "sys", "root", "modules"] {
        cpio.directory(dir);
    }
    cpio.character_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    let mut files = Vec::new();
    for relative in &order {
        let path = modules_dir.join(relative);
        let bytes = fs::read(&path).map_err(io_error(&path))?;
        let file = relative.rsplit('/').next().unwrap_or(relative).to_owned();
        cpio.file(&format!("modules/{file}"), 0o644, &bytes);
        files.push(file);
    }
    let init = initramfs::init_script(&files, spec::INIT_PATH);
    cpio.file("init", 0o755, init.as_bytes());
    Ok(cpio.finish())
}

/// Apparent size of everything under `dir` (symlinks not followed).
fn directory_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut pending: Vec<PathBuf> = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

/// The sha256 of an image input, with the file named in the error.
fn hash_file(path: &Path) -> Result<String, ImageError> {
    pyti_guest::digest::sha256_file(path).map_err(|source| ImageError::Io {
        path: path.to_owned(),
        source,
    })
}
