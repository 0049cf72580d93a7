//! What each fuzz target does with one input, shared by the libFuzzer targets
//! (`fuzz_targets/*.rs`, nightly, cargo-fuzz) and the corpus replay that runs with the
//! ordinary tests (`worker/tests/fuzz_corpus.rs`, stable): an input that once broke a
//! parser, or that a campaign found interesting, is checked on every test run.
//!
//! Every body must return normally for any input: an `Err` is fine, a panic, a hang
//! or an answer past its caps is the bug being looked for.

use std::io::Cursor;
use std::path::Path;

use pyti_guest::behaviour::{Observations, Phase, TraceContext};
use pyti_guest::results::{parse_results, ResultsLimits};
use pyti_worker::diskhandler::scan_image_bytes;
use pyti_worker::pypidownload::archive::{self, ArchiveLimits};
use pyti_worker::pypidownload::client::unsafe_file_name;
use pyti_worker::pypidownload::index::{normalize_name, ProjectPage};

/// What a target does with one input.
pub type Body = fn(&[u8]);

/// Every target, by name: the corpus directory and the `fuzz_targets/` file share it.
pub const TARGETS: [(&str, Body); 10] = [
    ("results_json", results_json),
    ("strace_lines", strace_lines),
    ("job_json", job_json),
    ("worker_ini", worker_ini),
    ("master_ini", master_ini),
    ("sdist_tar_gz", sdist_tar_gz),
    ("sdist_zip", sdist_zip),
    ("wheel", wheel),
    ("pep691_page", pep691_page),
    ("io_disk_reader", io_disk_reader),
];

/// The results dict a guest writes: parsed under the default caps; what parses
/// serialises and parses again to the same value.
pub fn results_json(data: &[u8]) {
    let limits = ResultsLimits::default();
    if let Ok(results) = parse_results(data, &limits) {
        assert!(results.tasks.len() <= limits.max_tasks);
        let again = serde_json::to_vec(&results).expect("parsed results serialise");
        let reparsed = parse_results(
            &again,
            &ResultsLimits {
                max_bytes: usize::MAX,
                ..limits
            },
        );
        assert!(reparsed.is_ok(), "{reparsed:?}");
    }
}

/// strace output of one phase, as the behaviour monitor reads it.
pub fn strace_lines(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let context = TraceContext {
        home: "/home/pyti".into(),
        environment_roots: vec!["/opt/pyti/venv".into(), "/tmp/pyti-work".into()],
        initial_cwd: "/tmp/pyti-work".into(),
    };
    let mut observations = Observations::default();
    observations.read_trace(&text, Phase::Install, &context);
    for line in text.lines().take(64) {
        let _ = pyti_guest::behaviour::strace::parse_line(line);
    }
}

/// `job.json` as the guest reads it, and the seed's job file as `pyti validate` does.
pub fn job_json(data: &[u8]) {
    let _ = pyti_guest::job::GuestJob::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pyti::model::JobSpec::from_json(text, "fuzz.json");
    }
}

fn ini(data: &[u8]) -> Option<pyti::config::IniFile> {
    let text = std::str::from_utf8(data).ok()?;
    pyti::config::IniFile::parse(text, Path::new("fuzz.ini")).ok()
}

/// The worker's INI file.
pub fn worker_ini(data: &[u8]) {
    if let Some(file) = ini(data) {
        let _ = pyti_worker::config::WorkerConfig::from_ini(&file, &|_| None);
    }
}

/// The master's INI file.
pub fn master_ini(data: &[u8]) {
    if let Some(file) = ini(data) {
        let _ = pyti_master::config::MasterConfig::from_ini(&file, &|_| None);
    }
}

/// Limits small enough that a campaign's inputs stay fast, with the same checks.
fn archive_limits() -> ArchiveLimits {
    ArchiveLimits {
        max_bytes: 32 << 20,
        max_ratio: 200,
    }
}

/// A `.tar.gz` sdist, read for `PKG-INFO` and `pyproject.toml`.
pub fn sdist_tar_gz(data: &[u8]) {
    let _ = archive::read_sdist_from(
        Cursor::new(data),
        data.len() as u64,
        "fuzz-1.0.tar.gz",
        &archive_limits(),
    );
}

/// A `.zip` sdist.
pub fn sdist_zip(data: &[u8]) {
    let _ = archive::read_sdist_from(
        Cursor::new(data),
        data.len() as u64,
        "fuzz-1.0.zip",
        &archive_limits(),
    );
}

/// A wheel, read for `.dist-info/METADATA`, and that metadata parsed.
pub fn wheel(data: &[u8]) {
    if let Ok(text) = archive::read_wheel_metadata_from(Cursor::new(data)) {
        let _ = pyti_worker::pypidownload::coremeta::CoreMetadata::parse(&text);
    }
}

/// A PEP 691 project page and everything the resolver asks of its files.
pub fn pep691_page(data: &[u8]) {
    let Ok(page) = ProjectPage::parse(data) else {
        return;
    };
    let project = normalize_name(&page.name);
    for file in page.files.iter().take(256) {
        let unsafe_name = unsafe_file_name(&file.filename);
        if unsafe_name.is_none() {
            assert!(!file.filename.contains('/'));
            assert!(Path::new(&file.filename).file_name().is_some());
        }
        let _ = file.kind();
        let _ = file.version(&project);
        let _ = file.sha256();
        let _ = file.metadata_available();
        let _ = file.is_yanked();
    }
    let _ = page.releases();
}

/// A damaged IO disk read back as a guest left it: an input whose first byte is 0 is
/// a whole image; any other is a list of 5-byte patches (`offset: u32 LE, value: u8`)
/// to a small valid FAT16 IO disk (offset `0xFFFFFFFF` truncates it to `value` x 16 KiB).
pub fn io_disk_reader(data: &[u8]) {
    let image = match data.split_first() {
        Some((0, rest)) => rest.to_vec(),
        _ => io_disk::patched(data),
    };
    let limits = io_disk::limits();
    if let Ok(summary) = scan_image_bytes(image, "/", &limits) {
        assert!(summary.bytes <= limits.max_total_bytes);
        assert!(summary.files + summary.directories <= limits.max_entries);
    }
}

mod io_disk {
    use std::sync::OnceLock;

    use pyti_worker::diskhandler::{DiskOperations, FatKind, Geometry, ReadLimits};

    static BASE_IMAGE: OnceLock<Vec<u8>> = OnceLock::new();

    pub(super) fn limits() -> ReadLimits {
        ReadLimits {
            max_total_bytes: 1 << 20,
            max_file_bytes: 512 << 10,
            max_entries: 256,
            max_depth: 8,
            max_io_bytes: 16 << 20,
        }
    }

    /// A small FAT16 IO disk with a results tree like a guest leaves.
    fn build_base_image() -> Vec<u8> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("base.img");
        let geometry = Geometry {
            fat: FatKind::Fat16,
            cluster_bytes: 512,
            total_sectors: 4400,
        };
        let mut disk =
            DiskOperations::create_with_geometry(&path, geometry).expect("create base image");
        disk.write_file("job.json", b"{\"project_name\": \"rarfile\"}")
            .expect("write");
        disk.write_file("results/results.json", b"{\"version\": 1}")
            .expect("write");
        for index in 0..6u8 {
            let body = vec![b'a' + index; 700 * usize::from(index) + 13];
            disk.write_file(
                &format!("results/logs/task-{index}-with-a-long-name.log"),
                &body,
            )
            .expect("write");
        }
        disk.write_file("results/strace/deep/trace.txt", &[7u8; 3000])
            .expect("write");
        disk.close().expect("close");
        std::fs::read(&path).expect("read base image")
    }

    pub(super) fn patched(data: &[u8]) -> Vec<u8> {
        let mut image = BASE_IMAGE.get_or_init(build_base_image).clone();
        for patch in data.chunks_exact(5) {
            let offset = u32::from_le_bytes([patch[0], patch[1], patch[2], patch[3]]);
            if offset == u32::MAX {
                image.truncate(usize::from(patch[4]) * 16 * 1024);
            } else if let Some(byte) = image.get_mut(offset as usize % 200_000) {
                *byte = patch[4];
            }
        }
        image
    }
}
