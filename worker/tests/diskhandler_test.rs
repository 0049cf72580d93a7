//! The IO disk against real tools: round trips through our FAT writer and reader,
//! mtools as the independent FAT implementation (what Linux's vfat writes is what we
//! read), qemu-img for conversions, and guest-written trees that break the rules.

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use pyti_guest::layout::RESULTS_SPACE_BYTES;
use pyti_testkit::process::run_ok;
use pyti_testkit::rng::Rng;
use pyti_testkit::trees::{assert_same_tree, snapshot};
use pyti_worker::diskhandler::{
    build_io_disk, convert_image, read_results, DiskEntry, DiskOperations, Error, ImageFormat,
    Limit, NameProblem, ReadLimits,
};
use support::{write_job_tree, WHEEL_NAMES};

const MIB: u64 = 1024 * 1024;

fn run(command: &mut Command) -> String {
    let command = command
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8");
    let output = run_ok(command, "a disk tool");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn tree_size(root: &Path) -> u64 {
    snapshot(root)
        .values()
        .flatten()
        .map(|bytes| bytes.len() as u64)
        .sum()
}

#[test]
fn a_tree_with_long_names_and_binary_content_comes_back_identical() {
    let work = tempfile::tempdir().unwrap();
    let staging = work.path().join("staging");
    write_job_tree(&staging, 1);
    let image = work.path().join("io.img");
    build_io_disk(&staging, &image, Some(4 * MIB)).unwrap();

    let back = work.path().join("back");
    let summary = read_results(&image, "/", &back, &ReadLimits::default()).unwrap();
    assert_eq!(summary.bytes, tree_size(&staging));
    fs::create_dir(staging.join("results")).unwrap();
    assert_same_tree(&staging, &back);

    let mut disk = DiskOperations::open(&image).unwrap();
    let mut wheels = disk.list("wheels").unwrap();
    wheels.sort_by(|a, b| a.name.cmp(&b.name));
    let mut expected: Vec<DiskEntry> = WHEEL_NAMES
        .iter()
        .map(|name| DiskEntry {
            name: name.to_string(),
            size: fs::metadata(staging.join("wheels").join(name))
                .unwrap()
                .len(),
            is_dir: false,
        })
        .collect();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(wheels, expected);
    let root: Vec<_> = disk
        .list("/")
        .unwrap()
        .into_iter()
        .map(|entry| (entry.name, entry.is_dir))
        .collect();
    assert!(root.contains(&("results".to_string(), true)), "{root:?}");

    let single = work.path().join("single.whl");
    disk.download(&format!("/wheels/{}", WHEEL_NAMES[0]), &single)
        .unwrap();
    assert_eq!(
        fs::read(&single).unwrap(),
        fs::read(staging.join("wheels").join(WHEEL_NAMES[0])).unwrap()
    );
    assert!(matches!(
        disk.download("/wheels/none.whl", &work.path().join("x")),
        Err(Error::NotFound { .. })
    ));
    disk.close().unwrap();
}

#[test]
fn upload_replaces_files_creates_parents_and_takes_a_single_file() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("io.img");
    let mut disk = DiskOperations::create(&image, 8 * MIB).unwrap();
    let long = work.path().join("long.bin");
    fs::write(&long, Rng::new(3).bytes(100_000)).unwrap();
    let short = work.path().join("short.bin");
    fs::write(&short, b"short").unwrap();

    disk.upload(&long, "/a/b/c/file-with-a-rather-long-name.bin")
        .unwrap();
    disk.upload(&short, "a/b/c/file-with-a-rather-long-name.bin")
        .unwrap();
    disk.write_file("job.json", b"{}").unwrap();
    let free_before_close = disk.free_bytes().unwrap();
    disk.close().unwrap();
    assert_fsck_clean(&image);

    let mut disk = DiskOperations::open_read_only(&image, ReadLimits::default()).unwrap();
    assert_eq!(disk.free_bytes().unwrap(), free_before_close);
    let listing = disk.list("a/b/c").unwrap();
    assert_eq!(
        listing,
        vec![DiskEntry {
            name: "file-with-a-rather-long-name.bin".into(),
            size: 5,
            is_dir: false
        }]
    );
    let out = work.path().join("out");
    disk.download("/", &out).unwrap();
    assert_eq!(
        fs::read(out.join("a/b/c/file-with-a-rather-long-name.bin")).unwrap(),
        b"short"
    );
    assert_eq!(fs::read(out.join("job.json")).unwrap(), b"{}");
    assert!(matches!(
        disk.write_file("x", b"1"),
        Err(Error::ReadOnly { .. })
    ));
}

#[test]
fn the_disk_is_sized_for_its_content_plus_the_free_space_and_not_much_more() {
    let work = tempfile::tempdir().unwrap();
    let staging = work.path().join("staging");
    write_job_tree(&staging, 2);
    let content = tree_size(&staging);
    for free in [0, 3 * MIB, RESULTS_SPACE_BYTES] {
        let image = work.path().join(format!("io-{free}.img"));
        let geometry = build_io_disk(&staging, &image, Some(free)).unwrap();
        let image_bytes = fs::metadata(&image).unwrap().len();
        assert_eq!(image_bytes, geometry.image_bytes());
        let mut disk = DiskOperations::open(&image).unwrap();
        let left = disk.free_bytes().unwrap();
        assert!(left >= free, "{left} bytes free, {free} asked for");
        let fits = content + free;
        assert!(
            image_bytes >= fits,
            "{image_bytes} bytes cannot hold {fits}"
        );
        assert!(
            image_bytes <= fits + fits / 20 + 4 * MIB,
            "{image_bytes} bytes is far more than {fits} needs"
        );
        let results = work.path().join(format!("results-{free}"));
        fs::write(&results, Rng::new(4).bytes((free.min(8 * MIB)) as usize)).unwrap();
        disk.upload(&results, "results/guest-output.bin").unwrap();
        disk.close().unwrap();
    }
}

#[test]
fn names_fat_cannot_store_are_errors_naming_the_host_file_or_the_image_path() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("io.img");
    let mut disk = DiskOperations::create(&image, 4 * MIB).unwrap();
    let staging = work.path().join("staging");
    fs::create_dir(&staging).unwrap();
    fs::write(staging.join("what?.whl"), b"x").unwrap();
    let error = disk.upload(&staging, "wheels").unwrap_err();
    assert!(error.to_string().contains("/wheels/what?.whl"), "{error}");

    fs::remove_file(staging.join("what?.whl")).unwrap();
    fs::write(staging.join("Wheel.whl"), b"x").unwrap();
    fs::write(staging.join("wheel.WHL"), b"y").unwrap();
    let error = disk.upload(&staging, "wheels").unwrap_err();
    assert!(matches!(&error, Error::Host { .. }), "{error}");
    assert!(
        error.to_string().contains("differs only in case"),
        "{error}"
    );
}

#[test]
fn a_full_disk_is_an_error_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("io.img");
    let mut disk = DiskOperations::create(&image, 3 * MIB).unwrap();
    let big = work.path().join("big.bin");
    fs::write(&big, vec![1u8; 4 * MIB as usize]).unwrap();
    let error = disk.upload(&big, "wheels/big.bin").unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("io.img") && message.contains("/wheels/big.bin"),
        "{message}"
    );
}

/// Patches the first UTF-16LE occurrence of `from` in the image to `to` (same length): the
/// long name changes while its checksum (over the short name) stays valid.
fn rename_in_image(image: &Path, from: &str, to: &str) {
    let encode =
        |text: &str| -> Vec<u8> { text.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let (from, to) = (encode(from), encode(to));
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(image).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|window| window == from.as_slice())
        .unwrap();
    bytes[at..at + to.len()].copy_from_slice(&to);
    fs::write(image, bytes).unwrap();
}

#[test]
fn guest_names_that_could_escape_are_refused() {
    let cases = [
        ("..", NameProblem::DotName),
        ("ab/cd", NameProblem::Slash),
        (r"..\..", NameProblem::Backslash),
        ("ab\0cd", NameProblem::Nul),
        ("ab\u{1b}cd", NameProblem::ControlCharacter),
    ];
    for (hostile, problem) in cases {
        let work = tempfile::tempdir().unwrap();
        let image = work.path().join("io.img");
        let mut disk = DiskOperations::create(&image, 4 * MIB).unwrap();
        let placeholder = "Q".repeat(hostile.encode_utf16().count());
        disk.write_file(&format!("results/{placeholder}"), b"escape")
            .unwrap();
        disk.close().unwrap();
        rename_in_image(&image, &placeholder, hostile);

        let out = work.path().join("out");
        let error = read_results(&image, "results", &out, &ReadLimits::default()).unwrap_err();
        match &error {
            Error::UnsafeName {
                name,
                problem: found,
                path_in_image,
                ..
            } => {
                assert_eq!((name.as_str(), *found), (hostile, problem));
                assert_eq!(path_in_image, "/results");
            }
            other => panic!("{hostile:?}: expected an unsafe name error, got {other}"),
        }
        assert!(!work.path().join("escape").exists());
        assert_eq!(
            fs::read_dir(&out).unwrap().count(),
            0,
            "{hostile:?} left something behind"
        );
    }
}

#[test]
fn callers_paths_are_checked_and_existing_host_files_or_links_are_never_written_through() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("io.img");
    let mut disk = DiskOperations::create(&image, 4 * MIB).unwrap();
    disk.write_file("results/log.txt", b"guest log").unwrap();
    assert!(matches!(
        disk.write_file("results/../../etc/passwd", b"x"),
        Err(Error::UnsafeName {
            problem: NameProblem::DotName,
            ..
        })
    ));
    disk.close().unwrap();

    let outside = work.path().join("outside.txt");
    fs::write(&outside, b"untouched").unwrap();
    let out = work.path().join("out");
    fs::create_dir(&out).unwrap();
    symlink(&outside, out.join("log.txt")).unwrap();
    let error = read_results(&image, "results", &out, &ReadLimits::default()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Host {
                action: "create",
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(fs::read(&outside).unwrap(), b"untouched");

    let link_dest = work.path().join("link-dest");
    symlink(work.path(), &link_dest).unwrap();
    let error = read_results(&image, "results", &link_dest, &ReadLimits::default()).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Host {
                action: "create directory",
                ..
            }
        ),
        "{error}"
    );
    assert!(!work.path().join("log.txt").exists());
}

fn limited_image(work: &Path) -> std::path::PathBuf {
    let image = work.join("io.img");
    let mut disk = DiskOperations::create(&image, 8 * MIB).unwrap();
    for index in 0..30 {
        disk.write_file(
            &format!("results/many/file-{index:02}.log"),
            &vec![b'x'; 1000],
        )
        .unwrap();
    }
    disk.write_file("results/big.bin", &vec![7u8; 200_000])
        .unwrap();
    disk.create_dir("results/d1/d2/d3/d4").unwrap();
    disk.close().unwrap();
    image
}

fn limit_of(error: &Error) -> (Limit, u64) {
    match error {
        Error::LimitExceeded { limit, max, .. } => (*limit, *max),
        other => panic!("expected a limit error, got {other}"),
    }
}

#[test]
fn caps_on_files_size_total_depth_and_io_are_enforced() {
    let work = tempfile::tempdir().unwrap();
    let image = limited_image(work.path());
    let read = |limits: ReadLimits, name: &str| {
        read_results(&image, "results", &work.path().join(name), &limits)
    };

    let all = read(ReadLimits::default(), "all").unwrap();
    assert_eq!((all.files, all.directories, all.bytes), (31, 5, 230_000));

    let few = ReadLimits {
        max_entries: 20,
        ..ReadLimits::default()
    };
    assert_eq!(
        limit_of(&read(few, "few").unwrap_err()),
        (Limit::Entries, 20)
    );
    let small_files = ReadLimits {
        max_file_bytes: 100_000,
        ..ReadLimits::default()
    };
    let error = read(small_files, "small-files").unwrap_err();
    assert_eq!(limit_of(&error), (Limit::FileBytes, 100_000));
    assert!(error.to_string().contains("/results/big.bin"), "{error}");
    let small_total = ReadLimits {
        max_total_bytes: 210_000,
        ..ReadLimits::default()
    };
    assert_eq!(
        limit_of(&read(small_total, "small-total").unwrap_err()),
        (Limit::TotalBytes, 210_000)
    );
    let shallow = ReadLimits {
        max_depth: 3,
        ..ReadLimits::default()
    };
    assert_eq!(
        limit_of(&read(shallow, "shallow").unwrap_err()),
        (Limit::Depth, 3)
    );
    let little_io = ReadLimits {
        max_io_bytes: 50_000,
        ..ReadLimits::default()
    };
    assert_eq!(
        limit_of(&read(little_io, "little-io").unwrap_err()),
        (Limit::IoBytes, 50_000)
    );

    let mut disk = DiskOperations::open_read_only(
        &image,
        ReadLimits {
            max_entries: 10,
            ..ReadLimits::default()
        },
    )
    .unwrap();
    assert_eq!(
        limit_of(&disk.list("results/many").unwrap_err()),
        (Limit::Entries, 10)
    );
    disk.set_limits(ReadLimits::default());
    assert_eq!(disk.list("results/many").unwrap().len(), 30);
}

#[test]
fn a_file_that_is_not_fat_is_refused_clearly() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("garbage.img");
    fs::write(&image, Rng::new(9).bytes(1 << 20)).unwrap();
    let error = read_results(
        &image,
        "/",
        &work.path().join("out"),
        &ReadLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(error, Error::NotFat { .. }), "{error}");
    assert!(error.to_string().contains("garbage.img"));
    let missing = read_results(
        &work.path().join("none.img"),
        "/",
        &work.path().join("out"),
        &ReadLimits::default(),
    );
    assert!(matches!(missing, Err(Error::Host { action: "read", .. })));
}

#[test]
fn mtools_reads_what_we_write() {
    let work = tempfile::tempdir().unwrap();
    let staging = work.path().join("staging");
    write_job_tree(&staging, 5);
    for free in [2 * MIB, RESULTS_SPACE_BYTES] {
        let image = work.path().join(format!("io-{free}.img"));
        build_io_disk(&staging, &image, Some(free)).unwrap();
        let label = run(Command::new("mlabel")
            .arg("-i")
            .arg(&image)
            .args(["-s", "::"]));
        assert!(label.contains("PYTIIO"), "{label}");
        let listing = run(Command::new("mdir")
            .arg("-i")
            .arg(&image)
            .args(["-b", "::/wheels"]));
        for name in WHEEL_NAMES {
            assert!(
                listing.contains(name),
                "mdir does not show {name}: {listing}"
            );
        }
        let out = work.path().join(format!("mcopy-{free}"));
        fs::create_dir(&out).unwrap();
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&image)
            .args([
                "-s",
                "-n",
                "-m",
                "::/job.json",
                "::/dist",
                "::/wheels",
                "::/tools",
            ])
            .arg(&out));
        assert_same_tree(&staging, &out);
        assert_fsck_clean(&image);

        let guest_results = work.path().join(format!("guest-{free}"));
        write_job_tree(&guest_results, 50);
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&image)
            .args(["-s", "-n"])
            .arg(guest_results.join("tools"))
            .arg("::/results/"));
        let back = work.path().join(format!("results-{free}"));
        read_results(&image, "results", &back, &ReadLimits::default()).unwrap();
        fs::remove_dir_all(guest_results.join("dist")).unwrap();
        fs::remove_dir_all(guest_results.join("wheels")).unwrap();
        fs::remove_file(guest_results.join("job.json")).unwrap();
        assert_same_tree(&guest_results, &back);
    }
}

/// `fsck.fat -n` finds nothing to repair and prints nothing but its banner and summary.
fn assert_fsck_clean(image: &Path) {
    let report = run(Command::new("fsck.fat").arg("-n").arg(image));
    assert_eq!(report.lines().count(), 2, "fsck.fat has remarks: {report}");
}

#[test]
fn we_read_what_mtools_writes() {
    let work = tempfile::tempdir().unwrap();
    let results = work.path().join("results");
    write_job_tree(&results, 6);
    for (sectors, fat32) in [(16_384u32, false), (140_000, true)] {
        let image = work.path().join(format!("mtools-{sectors}.img"));
        let mut format = Command::new("mformat");
        format
            .arg("-i")
            .arg(&image)
            .args(["-C", "-T", &sectors.to_string(), "-v", "PYTIIO"]);
        if fat32 {
            format.arg("-F");
        }
        run(format.arg("::"));
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&image)
            .args(["-s", "-n"])
            .arg(&results)
            .arg("::/"));
        let out = work.path().join(format!("back-{sectors}"));
        read_results(&image, "results", &out, &ReadLimits::default()).unwrap();
        assert_same_tree(&results, &out);
    }
}

fn qemu_img_info_format(image: &Path) -> String {
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image));
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    info["format"].as_str().unwrap().to_string()
}

#[test]
fn conversion_to_qcow2_vdi_and_vmdk_keeps_the_content() {
    let work = tempfile::tempdir().unwrap();
    let staging = work.path().join("staging");
    write_job_tree(&staging, 7);
    let raw = work.path().join("io.img");
    build_io_disk(&staging, &raw, Some(2 * MIB)).unwrap();
    for format in [ImageFormat::Qcow2, ImageFormat::Vdi, ImageFormat::Vmdk] {
        let converted = work.path().join(format!("io.{}", format.extension()));
        convert_image(&raw, ImageFormat::Raw, &converted, format).unwrap();
        assert_eq!(qemu_img_info_format(&converted), format.qemu_name());
        run(Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", format.qemu_name()])
            .arg(&raw)
            .arg(&converted));

        let back = work.path().join(format!("back-{format}.img"));
        convert_image(&converted, format, &back, ImageFormat::Raw).unwrap();
        assert_eq!(
            fs::read(&back).unwrap(),
            fs::read(&raw).unwrap(),
            "{format} round trip"
        );
        let out = work.path().join(format!("out-{format}"));
        read_results(&back, "/", &out, &ReadLimits::default()).unwrap();
        fs::create_dir_all(staging.join("results")).unwrap();
        assert_same_tree(&staging, &out);
    }
}

#[tokio::test]
async fn an_open_disk_moves_into_spawn_blocking() {
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("io.img");
    let disk = DiskOperations::create(&image, 4 * MIB).unwrap();
    let written = tokio::task::spawn_blocking(move || {
        let mut disk = disk;
        disk.write_file("job.json", b"{}").unwrap();
        disk
    })
    .await
    .unwrap();
    let listing = tokio::task::spawn_blocking(move || {
        let mut disk = written;
        let listing = disk.list("/").unwrap();
        disk.close().unwrap();
        listing
    })
    .await
    .unwrap();
    assert_eq!(
        listing,
        vec![DiskEntry {
            name: "job.json".into(),
            size: 2,
            is_dir: false
        }]
    );
}
