//! VM engine figures, each against a baseline measured in the same run:
//! - rollback: discard + recreate the qcow2 overlay, vs copying the base image;
//! - boot to self-test through libvirt, vs the same boot with a bare `qemu-system-x86_64`;
//! - image: cached lookup vs a cold build (`--cold` rebuilds; otherwise the cold time is
//!   the one recorded in the manifest when the image was built).
//!
//! Run: `cargo bench -p pyti-worker --bench vm [-- --cold]` as root with libvirtd running.
//! Uses `$PYTI_TEST_ROOT` (default /var/tmp/pyti-test-root) and the static agent at
//! `$PYTI_GUEST_AGENT` or target/x86_64-unknown-linux-gnu/release/pyti-guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pyti_worker::image::{self, check, GuestImage};
use pyti_worker::vms::{AcceleratorChoice, Connection, Overlay};

fn mean(samples: &[Duration]) -> f64 {
    samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64
}

fn report(name: &str, measured: &[Duration], baseline_name: &str, baseline: &[Duration]) {
    let (m, b) = (mean(measured), mean(baseline));
    println!(
        "{name:<34} {m:>9.3} s   {baseline_name:<30} {b:>9.3} s   ratio {:.3}",
        m / b
    );
}

fn bare_qemu_boot(image: &GuestImage, overlay: &Path, io_disk: &Path) -> Duration {
    check::make_fat_io_disk(io_disk, 16).unwrap();
    let started = Instant::now();
    let status = Command::new("qemu-system-x86_64")
        .args(["-machine", "pc,accel=tcg", "-m", "1024", "-smp", "1"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "null"])
        .arg("-kernel")
        .arg(image.kernel())
        .arg("-initrd")
        .arg(image.initrd())
        .arg("-append")
        .arg(image.direct_boot(true).cmdline)
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=qcow2,cache=unsafe",
            overlay.display()
        ))
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=raw", io_disk.display()))
        .status()
        .expect("qemu-system-x86_64 runs");
    let elapsed = started.elapsed();
    assert!(status.success());
    let record = check::read_fat_file(io_disk, "results/selftest.json").unwrap();
    check::parse_selftest(&record).expect("bare boot wrote a self-test record");
    elapsed
}

#[tokio::main]
async fn main() {
    let cold = std::env::args().any(|a| a == "--cold");
    let root = std::env::var_os("PYTI_TEST_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pyti-test-root"));
    let agent = std::env::var_os("PYTI_GUEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-unknown-linux-gnu/release/pyti-guest")
        });

    let started = Instant::now();
    let image = image::ensure_image(&root, "linux-debian", &agent, cold)
        .await
        .expect("image (build the static agent first, see worker/tests/boot.rs)");
    let cold_build = if cold {
        started.elapsed()
    } else {
        Duration::from_secs_f64(image.manifest.build_seconds)
    };
    let mut cached = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        image::ensure_image(&root, "linux-debian", &agent, false)
            .await
            .unwrap();
        cached.push(t.elapsed());
    }

    let work = root.join("bench");
    std::fs::create_dir_all(&work).unwrap();
    let overlay = Overlay::create(&image.base(), &work.join("pyti-bench-0.qcow2"))
        .await
        .unwrap();
    let mut resets = Vec::new();
    let mut copies = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        overlay.reset().await.unwrap();
        resets.push(t.elapsed());
        let t = Instant::now();
        std::fs::copy(image.base(), work.join("full-copy.qcow2")).unwrap();
        copies.push(t.elapsed());
    }
    let _ = std::fs::remove_file(work.join("full-copy.qcow2"));

    let connection = Connection::open("qemu:///system").await.unwrap();
    let mut libvirt_boots = Vec::new();
    let mut bare_boots = Vec::new();
    let mut guest_uptimes = Vec::new();
    for _ in 0..2 {
        let report = check::selftest(
            &image,
            &connection,
            &work,
            AcceleratorChoice::Tcg,
            Duration::from_secs(240),
        )
        .await
        .unwrap();
        libvirt_boots.push(report.boot_to_poweroff);
        guest_uptimes.push(Duration::from_secs_f64(report.record.uptime_s));
        overlay.reset().await.unwrap();
        bare_boots.push(bare_qemu_boot(
            &image,
            &overlay.path,
            &work.join("bare-io.img"),
        ));
        overlay.reset().await.unwrap();
    }
    overlay.discard().await.unwrap();

    println!("PyTI VM engine figures (image {})", image.dir.display());
    report(
        "image: cached ensure_image",
        &cached,
        if cold {
            "cold build (this run)"
        } else {
            "cold build (manifest)"
        },
        &[cold_build],
    );
    report(
        "rollback: overlay discard+recreate",
        &resets,
        "copy of the base image",
        &copies,
    );
    report(
        "boot to self-test, libvirt (TCG)",
        &libvirt_boots,
        "same boot, bare qemu-system",
        &bare_boots,
    );
    report(
        "guest uptime at self-test",
        &guest_uptimes,
        "host wall time, libvirt boot",
        &libvirt_boots,
    );
}
