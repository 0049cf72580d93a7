//! The real thing: build (or reuse) the guest image, boot it through libvirt under TCG
//! with an IO disk, let the guest write to the IO disk and power off, read the result on
//! the host, and check that the base image did not change by a single byte.
//!
//! Needs root (debootstrap), libvirtd with QEMU (`qemu:///system`), debootstrap,
//! e2fsprogs, qemu-utils, dosfstools and mtools. The image is cached under
//! `$PYTI_TEST_ROOT` (default `/var/tmp/pyti-test-root`) and rebuilt only when its
//! inputs change.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pyti_testkit::process::run_ok;
use pyti_testkit::vm::{static_agent, test_root, URI};
use pyti_worker::image::{self, check, cli, GuestImage};
use pyti_worker::vms::{
    Accelerator, AcceleratorChoice, Connection, DiskSpec, Overlay, VirtualMachine, VmConfig,
};

fn sh(command: &mut Command) -> Vec<u8> {
    run_ok(command, "a FAT tool").stdout
}

fn fat_disk(path: &Path) {
    let _ = std::fs::remove_file(path);
    sh(Command::new("mkfs.fat")
        .args(["-C", "-n", "PYTIIO"])
        .arg(path)
        .arg("16384"));
}

fn fat_read(image: &Path, inner: &str) -> Vec<u8> {
    sh(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-n")
        .arg("-i")
        .arg(image)
        .arg(format!("::{inner}"))
        .arg("-"))
}

fn fat_list(image: &Path, inner: &str) -> String {
    String::from_utf8(sh(Command::new("mdir")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(image)
        .arg(format!("::{inner}"))))
    .unwrap()
}

/// The VM this test boots again and again: `image` on `overlay`, named `name`, its
/// IO disks and console logs in `work`.
struct TestVm<'a> {
    connection: &'a Connection,
    image: &'a GuestImage,
    overlay: &'a Overlay,
    work: &'a Path,
    name: &'a str,
}

impl TestVm<'_> {
    /// Boots with a fresh IO disk (in self-test mode, or with `cmdline_extra` added to
    /// the kernel command line); returns the IO disk and the wall time.
    async fn boot(&self, selftest: bool, cmdline_extra: &str) -> (PathBuf, Duration) {
        let TestVm {
            connection,
            image,
            overlay,
            work,
            name,
        } = *self;
        let io_disk = work.join(format!("{name}-io.img"));
        fat_disk(&io_disk);
        let mut config = VmConfig::new(name);
        config.memory_mib = 1024;
        config.vcpus = 1;
        config.hard_disk = Some(DiskSpec::overlay(&overlay.path, &overlay.base));
        config.extra_disks = vec![DiskSpec::new(&io_disk)];
        let mut kernel = image.direct_boot(selftest);
        if !cmdline_extra.is_empty() {
            kernel.cmdline = format!("{} {cmdline_extra}", kernel.cmdline);
        }
        config.kernel = Some(kernel);
        config.serial_log = Some(work.join(format!("{name}-console.log")));
        config.accelerator = AcceleratorChoice::Tcg;
        connection.cleanup_stale(name).await.unwrap();
        let vm = VirtualMachine::define(connection, &config).await.unwrap();
        assert_eq!(vm.accelerator(), Some(Accelerator::Tcg));
        let started = tokio::time::Instant::now();
        vm.start().await.unwrap();
        let waited = vm
            .wait_for_poweroff(started + Duration::from_secs(240))
            .await;
        let elapsed = started.elapsed();
        vm.undefine().await.unwrap();
        if let Err(error) = waited {
            let console = std::fs::read_to_string(work.join(format!("{name}-console.log")))
                .unwrap_or_default();
            panic!("guest did not power off: {error}\nconsole:\n{console}");
        }
        (io_disk, elapsed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_boots_writes_to_the_io_disk_and_leaves_the_base_untouched() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test builds the guest image with debootstrap and needs root"
    );
    let root = test_root();
    let agent = static_agent();

    let build_started = Instant::now();
    let image = image::ensure_image(&root, "linux-debian", &agent, false)
        .await
        .expect("guest image builds");
    let build_time = build_started.elapsed();
    let base_before = pyti_guest::digest::sha256_file(&image.base()).unwrap();
    let base_meta = |path: &Path| {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).unwrap();
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    };
    let owner_before = base_meta(&image.base());
    assert_eq!(owner_before.2, 0o444, "the base is read-only");
    assert_eq!(
        base_before, image.manifest.base.sha256,
        "base matches its manifest"
    );

    let cached_started = Instant::now();
    let again = image::ensure_image(&root, "linux-debian", &agent, false)
        .await
        .unwrap();
    let cached_time = cached_started.elapsed();
    assert_eq!(again.dir, image.dir, "an unchanged recipe reuses the image");

    let connection = Connection::open(URI)
        .await
        .expect("libvirtd must be running (virtlogd -d; libvirtd -d)");
    let work = root.join("test-runs");
    std::fs::create_dir_all(&work).unwrap();

    // 1. Self-test mode: init writes results/selftest.json and powers off.
    let overlay = Overlay::create(&image.base(), &work.join("pyti-boottest-0.qcow2"))
        .await
        .unwrap();
    let vm = TestVm {
        connection: &connection,
        image: &image,
        overlay: &overlay,
        work: &work,
        name: "pyti-boottest-0",
    };
    let (io_disk, boot_time) = vm.boot(true, "").await;
    let record = check::parse_selftest(&fat_read(&io_disk, "results/selftest.json"))
        .expect("the guest wrote a valid self-test record");
    assert_eq!(record.kernel_release, image.manifest.kernel_release);
    assert!(record.python_version.starts_with("3."), "{record:?}");
    assert_eq!(record.venv, "/opt/pyti/venv");

    // 2. Rollback: discard the overlay and start again from the base.
    let rollback_started = Instant::now();
    overlay.reset().await.unwrap();
    let rollback_time = rollback_started.elapsed();

    // 3. Agent mode with an agent that dies without writing results.json (`/bin/false`
    //    in its place): init must leave an error record on the IO disk and power off.
    let (io_disk, agent_boot_time) = vm.boot(false, "pyti.agent=/bin/false").await;
    let listing = fat_list(&io_disk, "results");
    assert!(
        listing.to_lowercase().contains("agent-error.json"),
        "{listing}"
    );
    assert!(
        !listing.to_lowercase().contains("results.json"),
        "{listing}"
    );
    let error: serde_json::Value =
        serde_json::from_slice(&fat_read(&io_disk, "results/agent-error.json")).unwrap();
    assert_eq!(error["kind"], "agent-error");
    assert!(error["exit_status"].is_number(), "{error}");
    assert!(error["error"].as_str().unwrap().contains("results.json"));
    overlay.discard().await.unwrap();

    // 4. `pyti-worker image check` boots the same image through the library path.
    cli::run(
        &root,
        cli::ImageCommand::Check {
            platform: "linux-debian".into(),
            uri: URI.into(),
            accelerator: AcceleratorChoice::Tcg,
            timeout_s: 240,
        },
    )
    .await
    .expect("image check passes");

    let base_after = pyti_guest::digest::sha256_file(&image.base()).unwrap();
    assert_eq!(base_before, base_after, "the base image must never change");
    assert_eq!(
        base_meta(&image.base()),
        owner_before,
        "libvirt must not relabel the shared base"
    );

    eprintln!(
        "figures: image ensure {:.1} s (manifest build {:.1} s), cached lookup {:.3} s, \
         selftest boot-to-poweroff {:.1} s (guest uptime at self-test {:.1} s), \
         agent boot-to-poweroff {:.1} s, overlay rollback {:.3} s",
        build_time.as_secs_f64(),
        image.manifest.build_seconds,
        cached_time.as_secs_f64(),
        boot_time.as_secs_f64(),
        record.uptime_s,
        agent_boot_time.as_secs_f64(),
        rollback_time.as_secs_f64()
    );
}
