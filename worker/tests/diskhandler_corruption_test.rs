//! The reader over corrupted IO disks: valid images with bytes flipped, truncated, cluster
//! chains looped and entries rewritten, deterministically from fixed seeds. Whatever the
//! damage, the reader returns (Ok or Err), never panics, never loops, and never reports
//! more than the caps allow.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use pyti_testkit::rng::Rng;
use pyti_worker::diskhandler::{
    scan_image_bytes, DiskOperations, Error, FatKind, Geometry, Limit, ReadLimits,
};

/// Panics the FAT library raises inside the reader are caught there; keep them off stderr.
fn quiet_fatfs_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info
                .location()
                .is_some_and(|location| location.file().contains("fatfs"))
            {
                default(info);
            }
        }));
    });
}

fn limits() -> ReadLimits {
    ReadLimits {
        max_total_bytes: 2 << 20,
        max_file_bytes: 1 << 20,
        max_entries: 500,
        max_depth: 8,
        max_io_bytes: 64 << 20,
    }
}

/// A results tree like a guest leaves: logs, JSON, nested directories, long names.
fn image_with_results(geometry: Geometry) -> Vec<u8> {
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("io.img");
    let mut disk = DiskOperations::create_with_geometry(&path, geometry).unwrap();
    let mut rng = Rng::new(11);
    disk.write_file("results/results.json", br#"{"version": 1, "tasks": []}"#)
        .unwrap();
    for index in 0..12 {
        let length = rng.below(20_000) as usize;
        disk.write_file(
            &format!("results/logs/task-{index}-with-a-long-descriptive-name.log"),
            &rng.bytes(length),
        )
        .unwrap();
    }
    disk.write_file("results/strace/deep/er/trace.txt", &rng.bytes(70_000))
        .unwrap();
    disk.write_file("job.json", b"{}").unwrap();
    disk.close().unwrap();
    std::fs::read(&path).unwrap()
}

fn fat16_image() -> Vec<u8> {
    image_with_results(Geometry {
        fat: FatKind::Fat16,
        cluster_bytes: 512,
        total_sectors: 8192,
    })
}

fn fat32_image() -> Vec<u8> {
    image_with_results(Geometry {
        fat: FatKind::Fat32,
        cluster_bytes: 512,
        total_sectors: 70_000,
    })
}

/// What the tests need to know of a volume's layout, read from its boot sector.
struct Layout {
    fat_offset: usize,
    fat_width: usize,
    data_offset: usize,
    cluster_bytes: usize,
    clusters: usize,
}

fn layout(image: &[u8]) -> Layout {
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([image[at], image[at + 1]]));
    let u32_at = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
    let sector = u16_at(11);
    let fat16_sectors = u16_at(22);
    let fat_sectors = if fat16_sectors == 0 {
        u32_at(36)
    } else {
        fat16_sectors
    };
    let root_sectors = (u16_at(17) * 32).div_ceil(sector);
    let total = if u16_at(19) == 0 {
        u32_at(32)
    } else {
        u16_at(19)
    };
    let data_sector = u16_at(14) + usize::from(image[16]) * fat_sectors + root_sectors;
    Layout {
        fat_offset: u16_at(14) * sector,
        fat_width: if fat16_sectors == 0 { 4 } else { 2 },
        data_offset: data_sector * sector,
        cluster_bytes: sector * usize::from(image[13]),
        clusters: (total - data_sector) / usize::from(image[13]),
    }
}

impl Layout {
    fn entry(&self, cluster: usize) -> usize {
        self.fat_offset + cluster * self.fat_width
    }

    fn get(&self, image: &[u8], cluster: usize) -> usize {
        let at = self.entry(cluster);
        let mut raw = [0u8; 4];
        raw[..self.fat_width].copy_from_slice(&image[at..at + self.fat_width]);
        u32::from_le_bytes(raw) as usize & 0x0FFF_FFFF
    }

    fn set(&self, image: &mut [u8], cluster: usize, value: usize) {
        let at = self.entry(cluster);
        image[at..at + self.fat_width]
            .copy_from_slice(&(value as u32).to_le_bytes()[..self.fat_width]);
    }

    fn used_clusters(&self, image: &[u8]) -> Vec<usize> {
        (2..self.clusters + 2)
            .filter(|&cluster| self.get(image, cluster) != 0)
            .collect()
    }

    fn cluster_offset(&self, cluster: usize) -> usize {
        self.data_offset + (cluster - 2) * self.cluster_bytes
    }

    /// Clusters of the directories: those starting with a `.` entry.
    fn directory_clusters(&self, image: &[u8]) -> Vec<usize> {
        self.used_clusters(image)
            .into_iter()
            .filter(|&cluster| &image[self.cluster_offset(cluster)..][..12] == b".          \x10")
            .collect()
    }
}

/// One random kind of damage, chosen and placed by `rng`, on an image laid out as `layout`
/// (an earlier damage may have truncated it: what no longer exists is left alone).
fn corrupt(
    image: &mut Vec<u8>,
    layout: &Layout,
    used: &[usize],
    directories: &[usize],
    rng: &mut Rng,
) {
    let pick = |items: &[usize], rng: &mut Rng| items[rng.below(items.len() as u64) as usize];
    let metadata_end = (layout.data_offset + 64 * layout.cluster_bytes).min(image.len());
    let fat_end = layout.entry(layout.clusters + 2);
    match rng.below(7) {
        0 => {
            for _ in 0..=rng.below(16) {
                let at = rng.below(metadata_end as u64) as usize;
                if at < image.len() {
                    image[at] ^= 1 << rng.below(8);
                }
            }
        }
        1 => {
            let length = rng.below(image.len() as u64) as usize;
            image.truncate(length);
        }
        2 | 3 if image.len() >= fat_end => {
            for _ in 0..=rng.below(4) {
                let (from, to) = (pick(used, rng), pick(used, rng));
                layout.set(image, from, to);
            }
        }
        4 => {
            let cluster = pick(directories, rng);
            let entry = layout.cluster_offset(cluster)
                + 32 * rng.below((layout.cluster_bytes / 32) as u64) as usize;
            let field = [20usize, 26, 28][rng.below(3) as usize];
            let value = [
                0u32,
                1,
                0xFFFF_FFFF,
                rng.next_u64() as u32,
                layout.clusters as u32 + 2,
            ][rng.below(5) as usize];
            let width = if field == 28 { 4 } else { 2 };
            if entry + 32 <= image.len() {
                image[entry + field..entry + field + width]
                    .copy_from_slice(&value.to_le_bytes()[..width]);
            }
        }
        5 => {
            let at = 11 + rng.below(40) as usize;
            if at < image.len() {
                image[at] = rng.next_u64() as u8;
            }
        }
        _ => {
            let start = layout.cluster_offset(pick(directories, rng));
            let noise = rng.bytes(layout.cluster_bytes);
            if start + layout.cluster_bytes <= image.len() {
                image[start..start + layout.cluster_bytes].copy_from_slice(&noise);
            }
        }
    }
}

/// Rounds per image, scaled by `PYTI_CORRUPTION_ROUNDS_SCALE` (default 1) for longer runs.
fn rounds(default: u64) -> u64 {
    let scale = std::env::var("PYTI_CORRUPTION_ROUNDS_SCALE")
        .ok()
        .and_then(|scale| scale.parse().ok());
    default * scale.unwrap_or(1)
}

fn assert_reader_survives(base: &[u8], seed: u64, rounds: u64) {
    quiet_fatfs_panics();
    let limits = limits();
    let layout = layout(base);
    let used = layout.used_clusters(base);
    let directories = layout.directory_clusters(base);
    assert!(directories.len() >= 4, "{directories:?}");
    let (mut ok, mut failed) = (0, 0);
    for round in 0..rounds {
        let mut rng = Rng::new(seed * 1_000_003 + round);
        let mut image = base.to_vec();
        for _ in 0..=rng.below(3) {
            corrupt(&mut image, &layout, &used, &directories, &mut rng);
        }
        let outcome =
            panic::catch_unwind(AssertUnwindSafe(|| scan_image_bytes(image, "/", &limits)));
        match outcome {
            Err(_) => panic!("the reader panicked on round {round} of seed {seed}"),
            Ok(Ok(summary)) => {
                assert!(
                    summary.bytes <= limits.max_total_bytes,
                    "round {round}: {summary:?}"
                );
                assert!(
                    summary.files + summary.directories <= limits.max_entries,
                    "round {round}: {summary:?}"
                );
                ok += 1;
            }
            Ok(Err(error)) => {
                assert!(error.to_string().contains("IO disk <memory>"), "{error}");
                failed += 1;
            }
        }
    }
    assert!(
        ok > 0 && failed > 0,
        "corruptions should give both outcomes: {ok} ok, {failed} failed"
    );
}

#[test]
fn the_reader_survives_corrupted_fat16_images() {
    assert_reader_survives(&fat16_image(), 1, rounds(400));
}

#[test]
fn the_reader_survives_corrupted_fat32_images() {
    assert_reader_survives(&fat32_image(), 2, rounds(120));
}

#[test]
fn an_intact_image_scans_completely() {
    for image in [fat16_image(), fat32_image()] {
        let summary = scan_image_bytes(image, "/", &limits()).unwrap();
        assert_eq!((summary.files, summary.directories), (15, 5));
    }
}

fn results_directory(image: &[u8], layout: &Layout) -> usize {
    let directories = layout.directory_clusters(image);
    let root_entries = &image[..layout.data_offset + layout.cluster_bytes];
    let short_entry = root_entries
        .windows(12)
        .position(|window| window == b"RESULTS    \x10")
        .unwrap();
    let cluster = usize::from(u16::from_le_bytes([
        image[short_entry + 26],
        image[short_entry + 27],
    ]));
    assert!(
        directories.contains(&cluster),
        "results is not at cluster {cluster}"
    );
    cluster
}

fn chain(image: &[u8], layout: &Layout, first: usize) -> Vec<usize> {
    let mut chain = vec![first];
    while (2..layout.clusters + 2).contains(&layout.get(image, *chain.last().unwrap())) {
        chain.push(layout.get(image, *chain.last().unwrap()));
    }
    chain
}

#[test]
fn a_directory_whose_chain_loops_onto_itself_stops_at_the_entry_cap() {
    quiet_fatfs_panics();
    for mut image in [fat16_image(), fat32_image()] {
        let layout = layout(&image);
        let results = results_directory(&image, &layout);
        let chain = chain(&image, &layout, results);
        for &cluster in &chain {
            let start = layout.cluster_offset(cluster);
            for entry in (start..start + layout.cluster_bytes).step_by(32) {
                if image[entry] == 0 {
                    image[entry] = 0xE5;
                }
            }
        }
        layout.set(&mut image, *chain.last().unwrap(), results);
        let error = scan_image_bytes(image, "/results", &limits()).unwrap_err();
        assert!(
            matches!(
                error,
                Error::LimitExceeded {
                    limit: Limit::Entries | Limit::IoBytes,
                    ..
                }
            ),
            "{error}"
        );
    }
}

#[test]
fn a_looping_directory_of_deleted_entries_stops_at_the_io_budget() {
    quiet_fatfs_panics();
    let mut image = fat16_image();
    let layout = layout(&image);
    let results = results_directory(&image, &layout);
    let chain = chain(&image, &layout, results);
    for &cluster in &chain {
        let start = layout.cluster_offset(cluster);
        for entry in (start..start + layout.cluster_bytes).step_by(32) {
            if cluster != results || entry >= start + 64 {
                image[entry] = 0xE5;
            }
        }
    }
    layout.set(&mut image, *chain.last().unwrap(), results);
    let small_budget = ReadLimits {
        max_io_bytes: 4 << 20,
        ..limits()
    };
    let error = scan_image_bytes(image, "/results", &small_budget).unwrap_err();
    assert!(
        matches!(
            error,
            Error::LimitExceeded {
                limit: Limit::IoBytes,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_file_longer_than_its_cluster_chain_is_reported_corrupt() {
    let image = fat16_image();
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("io.img");
    std::fs::write(&path, &image).unwrap();
    let mut disk = DiskOperations::open(&path).unwrap();
    disk.write_file("results/short.txt", b"0123456789").unwrap();
    disk.close().unwrap();
    let mut image = std::fs::read(&path).unwrap();
    let short_entry = image
        .windows(11)
        .position(|window| window == b"SHORT   TXT")
        .unwrap();
    image[short_entry + 28..short_entry + 32].copy_from_slice(&100_000u32.to_le_bytes());
    let error = scan_image_bytes(image, "/results/short.txt", &limits()).unwrap_err();
    assert!(
        matches!(&error, Error::Corrupt { path_in_image, .. } if path_in_image == "/results/short.txt"),
        "{error}"
    );
}
