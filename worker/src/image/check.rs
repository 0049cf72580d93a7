//! `image check`: boot an image in self-test mode and read back what the guest reported.
//!
//! This proves an image independently of the agent: kernel, initramfs, root disk, init,
//! the IO disk, Python and the virtualenv template all have to work for
//! `results/selftest.json` to appear on the IO disk. The IO disk is made with
//! `mkfs.fat` and read with `mcopy` (dosfstools, mtools) until the pure-Rust
//! `diskhandler` replaces them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::info;

use pyti_guest::layout;

use super::{GuestImage, ImageError};
use crate::diskhandler::{DiskOperations, ReadLimits};
use crate::vms::{
    Accelerator, AcceleratorChoice, Connection, DiskSpec, Overlay, VirtualMachine, VmConfig,
};

/// What init writes to `results/selftest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelftestRecord {
    /// Always `selftest`.
    pub kind: String,
    /// `uname -r` in the guest.
    pub kernel_release: String,
    /// The guest's Python version.
    pub python_version: String,
    /// The virtualenv template path.
    pub venv: String,
    /// `sys.prefix` of the template's interpreter (equals `venv` when it works).
    pub venv_prefix: String,
    /// Guest clock when written (UTC).
    pub date: String,
    /// Seconds from kernel start to the record (guest clock).
    pub uptime_s: f64,
}

/// The outcome of a self-test boot.
#[derive(Debug, Clone, PartialEq)]
pub struct SelftestReport {
    /// The image directory.
    pub image: PathBuf,
    /// What the guest wrote.
    pub record: SelftestRecord,
    /// Host wall time from `start` until the VM was seen powered off.
    pub boot_to_poweroff: Duration,
    /// The accelerator used.
    pub accelerator: Option<Accelerator>,
    /// The guest's serial console output.
    pub console_log: PathBuf,
}

/// Parses and validates `selftest.json` bytes.
pub fn parse_selftest(bytes: &[u8]) -> Result<SelftestRecord, String> {
    let record: SelftestRecord =
        serde_json::from_slice(bytes).map_err(|e| format!("selftest.json is not valid: {e}"))?;
    if record.kind != "selftest" {
        return Err(format!("selftest.json has kind {:?}", record.kind));
    }
    if record.venv_prefix != record.venv {
        return Err(format!(
            "the virtualenv template does not work: {}",
            record.venv_prefix
        ));
    }
    Ok(record)
}

/// Creates an empty FAT IO disk of `size_mib` at `path` (with an empty `results/`).
pub fn make_fat_io_disk(path: &Path, size_mib: u64) -> Result<(), ImageError> {
    let _ = std::fs::remove_file(path);
    let mut disk = DiskOperations::create(path, size_mib << 20)?;
    disk.create_dir(layout::RESULTS_DIR)?;
    Ok(disk.close()?)
}

/// Reads `inner` (e.g. `results/selftest.json`) from a FAT image the guest wrote, with
/// the hostile-input caps of the IO disk reader.
pub fn read_fat_file(image: &Path, inner: &str) -> Result<Vec<u8>, ImageError> {
    let scratch = tempfile::tempdir().map_err(|source| ImageError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let dest = scratch.path().join("file");
    let mut disk = DiskOperations::open_read_only(image, ReadLimits::default())?;
    disk.download(inner, &dest)?;
    std::fs::read(&dest).map_err(|source| ImageError::Io { path: dest, source })
}

/// Boots `image` in self-test mode on `connection`, waits up to `timeout` for it to power
/// off, and returns what the guest wrote. Scratch files go to `work_dir` (which must be
/// reachable by the hypervisor's user); the VM and its overlay are removed afterwards.
pub async fn selftest(
    image: &GuestImage,
    connection: &Connection,
    work_dir: &Path,
    accelerator: AcceleratorChoice,
    timeout: Duration,
) -> Result<SelftestReport, ImageError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "pyti-selftest-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    std::fs::create_dir_all(work_dir).map_err(|source| ImageError::Io {
        path: work_dir.to_owned(),
        source,
    })?;
    let overlay = Overlay::create(&image.base(), &work_dir.join(format!("{name}.qcow2"))).await?;
    let io_disk = work_dir.join(format!("{name}-io.img"));
    let console_log = work_dir.join(format!("{name}-console.log"));
    let disk = io_disk.clone();
    tokio::task::spawn_blocking(move || make_fat_io_disk(&disk, 16))
        .await
        .map_err(|e| ImageError::Step {
            step: "mkfs.fat".into(),
            detail: e.to_string(),
        })??;
    let mut config = VmConfig::new(&name);
    config.hard_disk = Some(DiskSpec::overlay(&overlay.path, &overlay.base));
    config.extra_disks = vec![DiskSpec::new(&io_disk)];
    config.kernel = Some(image.direct_boot(true));
    config.serial_log = Some(console_log.clone());
    config.accelerator = accelerator;

    let booted = boot_until_off(connection, &config, timeout).await;
    if let Err(error) = overlay.discard().await {
        tracing::warn!(%error, "The self-test overlay could not be removed");
    }
    let (boot_to_poweroff, used_accelerator) = booted?;
    let disk = io_disk.clone();
    let selftest_file = layout::in_results(layout::SELFTEST_FILE);
    let bytes = tokio::task::spawn_blocking(move || read_fat_file(&disk, &selftest_file))
        .await
        .map_err(|e| ImageError::Step {
            step: "mcopy".into(),
            detail: e.to_string(),
        })?;
    let failed = |reason: String| ImageError::Selftest {
        image: image.dir.clone(),
        reason: format!("{reason} (guest console: {})", console_log.display()),
    };
    let record = parse_selftest(&bytes.map_err(|e| failed(e.to_string()))?).map_err(failed)?;
    let _ = std::fs::remove_file(&io_disk);
    info!(
        image = %image.dir.display(),
        boot_to_poweroff_s = format!("{:.2}", boot_to_poweroff.as_secs_f64()),
        guest_uptime_s = record.uptime_s,
        "Image self-test passed"
    );
    Ok(SelftestReport {
        image: image.dir.clone(),
        record,
        boot_to_poweroff,
        accelerator: used_accelerator,
        console_log,
    })
}

/// Defines, starts and waits for the VM; the domain is removed whatever happens.
async fn boot_until_off(
    connection: &Connection,
    config: &VmConfig,
    timeout: Duration,
) -> Result<(Duration, Option<Accelerator>), ImageError> {
    let vm = VirtualMachine::define(connection, config).await?;
    let started = Instant::now();
    let result = async {
        vm.start().await?;
        vm.wait_for_poweroff(started + timeout).await
    }
    .await;
    let elapsed = started.elapsed();
    vm.undefine().await?;
    result?;
    Ok((elapsed, vm.accelerator()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selftest_record_is_validated() {
        let good = br#"{"kind":"selftest","kernel_release":"6.1.0-50-cloud-amd64","python_version":"3.11.2","venv":"/opt/pyti/venv","venv_prefix":"/opt/pyti/venv","date":"2026-11-26T08:09:04Z","uptime_s":6.79}"#;
        let record = parse_selftest(good).unwrap();
        assert_eq!(record.python_version, "3.11.2");
        assert!((record.uptime_s - 6.79).abs() < 1e-9);
        let broken_venv = String::from_utf8_lossy(good).replace(
            r#""venv_prefix":"/opt/pyti/venv""#,
            r#""venv_prefix":"Error: No such file""#,
        );
        assert!(parse_selftest(broken_venv.as_bytes())
            .unwrap_err()
            .contains("virtualenv"));
        let wrong_kind = String::from_utf8_lossy(good).replace("\"selftest\"", "\"other\"");
        assert!(parse_selftest(wrong_kind.as_bytes()).is_err());
        assert!(parse_selftest(b"not json").is_err());
    }

    #[test]
    fn fat_io_disk_round_trip_with_mtools() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("io.img");
        make_fat_io_disk(&image, 16).unwrap();
        let source = dir.path().join("hello.json");
        std::fs::write(&source, b"{\"hi\":1}").unwrap();
        let status = std::process::Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&image)
            .arg(&source)
            .arg("::hello.json")
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(read_fat_file(&image, "hello.json").unwrap(), b"{\"hi\":1}");
        assert!(read_fat_file(&image, "missing.json").is_err());
    }
}
