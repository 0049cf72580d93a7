//! Fuzzes the reader of guest-written IO disks: it must return Ok or Err within its caps,
//! never panic (panics of the FAT library are caught by the reader by design) and never hang.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pyti_worker::diskhandler::{scan_image_bytes, DiskOperations, FatKind, Geometry, ReadLimits};

static BASE_IMAGE: OnceLock<Vec<u8>> = OnceLock::new();

fn limits() -> ReadLimits {
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
    let path = std::env::temp_dir().join(format!("pyti-fuzz-base-{}.img", std::process::id()));
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
    for index in 0..6 {
        let body = vec![b'a' + index as u8; 700 * index + 13];
        disk.write_file(
            &format!("results/logs/task-{index}-with-a-long-name.log"),
            &body,
        )
        .expect("write");
    }
    disk.write_file("results/strace/deep/trace.txt", &[7u8; 3000])
        .expect("write");
    disk.close().expect("close");
    let bytes = std::fs::read(&path).expect("read base image");
    let _ = std::fs::remove_file(&path);
    bytes
}

fn patched(data: &[u8]) -> Vec<u8> {
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

fuzz_target!(
    init: {
        let abort_on_panic = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.location().is_some_and(|location| location.file().contains("fatfs")) {
                abort_on_panic(info);
            }
        }));
    },
    |data: &[u8]| {
        let image = match data.split_first() {
            Some((0, rest)) => rest.to_vec(),
            _ => patched(data),
        };
        let limits = limits();
        if let Ok(summary) = scan_image_bytes(image, "/", &limits) {
            assert!(summary.bytes <= limits.max_total_bytes);
            assert!(summary.files + summary.directories <= limits.max_entries);
        }
    }
);
