//! Sizing of an IO disk: how many bytes a FAT volume needs to hold a given tree plus room
//! for the guest's results.
//!
//! The size is decided here, in pure code, so that it can be tested exhaustively: the FAT
//! type and cluster size are chosen explicitly (not left to the formatter's guess) and the
//! sector count is found with the same FAT-size formula the formatter uses, so the volume
//! that comes out has at least the clusters that were asked for.

use std::path::Path;

/// Bytes in one sector; the only sector size this module formats.
pub const SECTOR_BYTES: u64 = 512;

/// Bytes of one FAT directory entry (short name, long-name part, dot entry or label).
const DIR_ENTRY_BYTES: u64 = 32;

/// UTF-16 code units held by one long-file-name directory entry.
const LFN_CHARS_PER_ENTRY: u64 = 13;

/// Entries in the fixed root directory region of a FAT16 volume (the formatter's default).
const FAT16_ROOT_ENTRIES: u64 = 512;

/// FAT16 holds fewer than this many clusters (Microsoft's FAT specification).
const FAT16_MAX_CLUSTERS: u64 = 65_524;

/// FAT16 needs at least this many clusters, or readers take it for FAT12.
const FAT16_MIN_CLUSTERS: u64 = 4_085;

/// FAT32 needs at least this many clusters, or readers take it for FAT16.
const FAT32_MIN_CLUSTERS: u64 = 65_525;

/// The largest cluster count a FAT32 volume may have.
const FAT32_MAX_CLUSTERS: u64 = 0x0FFF_FFF4;

/// Largest file FAT can store (its size field is 32 bits).
pub const MAX_FILE_BYTES: u64 = u32::MAX as u64;

/// The FAT variant of a planned volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatKind {
    /// 16-bit FAT, fixed root directory region; used for small disks.
    Fat16,
    /// 32-bit FAT; used once the disk needs more than FAT16's clusters.
    Fat32,
}

/// The shape of a volume to format: FAT kind, cluster size and total sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// FAT variant.
    pub fat: FatKind,
    /// Bytes per cluster, a power of two from 512 to 32768.
    pub cluster_bytes: u32,
    /// Sectors in the whole volume (the image is this many times [`SECTOR_BYTES`]).
    pub total_sectors: u32,
}

impl Geometry {
    /// Size of the image file in bytes.
    pub fn image_bytes(&self) -> u64 {
        u64::from(self.total_sectors) * SECTOR_BYTES
    }

    /// Data clusters this geometry yields once formatted (same arithmetic as the formatter).
    pub fn data_clusters(&self) -> u64 {
        data_clusters(self.fat, self.cluster_bytes, u64::from(self.total_sectors))
    }
}

/// What a tree of files needs on a FAT volume, independent of the cluster size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContentSize {
    /// Size in bytes of every regular file.
    pub file_bytes: Vec<u64>,
    /// Directory entries (including long-name parts and the two dot entries) of every
    /// directory other than the root.
    pub directory_entries: Vec<u64>,
    /// Directory entries in the root directory (including the volume label).
    pub root_entries: u64,
}

impl ContentSize {
    /// An empty volume: only the volume label in the root.
    pub fn empty() -> Self {
        ContentSize {
            file_bytes: Vec::new(),
            directory_entries: Vec::new(),
            root_entries: 1,
        }
    }

    /// Total bytes of file content.
    pub fn content_bytes(&self) -> u64 {
        self.file_bytes.iter().sum()
    }

    /// Clusters needed for the content at the given cluster size, the root directory
    /// counted only when it lives in the data area (FAT32).
    fn clusters(&self, cluster_bytes: u64, fat: FatKind) -> u64 {
        let files: u64 = self
            .file_bytes
            .iter()
            .map(|bytes| bytes.div_ceil(cluster_bytes))
            .sum();
        let directories: u64 = self
            .directory_entries
            .iter()
            .map(|entries| (entries * DIR_ENTRY_BYTES).div_ceil(cluster_bytes).max(1))
            .sum();
        let root = match fat {
            FatKind::Fat16 => 0,
            FatKind::Fat32 => (self.root_entries * DIR_ENTRY_BYTES)
                .div_ceil(cluster_bytes)
                .max(1),
        };
        files + directories + root
    }
}

/// Directory entries one name takes: its long-name parts plus the short entry.
pub fn entries_for_name(name: &str) -> u64 {
    let units = name.encode_utf16().count() as u64;
    units.div_ceil(LFN_CHARS_PER_ENTRY) + 1
}

/// Adds to `size` what the host tree under `dir` needs (recursively). `dir` itself is the
/// root of the volume when `is_root`, otherwise a subdirectory already counted in its parent.
pub fn measure_tree(dir: &Path, size: &mut ContentSize, is_root: bool) -> std::io::Result<()> {
    let mut entries = if is_root { size.root_entries } else { 2 };
    let mut subdirectories = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        entries += entries_for_name(&name.to_string_lossy());
        let metadata = std::fs::metadata(entry.path())?;
        if metadata.is_dir() {
            subdirectories.push(entry.path());
        } else {
            size.file_bytes.push(metadata.len());
        }
    }
    if is_root {
        size.root_entries = entries;
    } else {
        size.directory_entries.push(entries);
    }
    for subdirectory in subdirectories {
        measure_tree(&subdirectory, size, false)?;
    }
    Ok(())
}

/// Sectors of one FAT, by the formula fatfs uses when it formats (rounded towards a
/// bigger FAT), so that our cluster count matches what the formatted volume has.
fn sectors_per_fat(fat: FatKind, cluster_bytes: u32, total_sectors: u64) -> u64 {
    let (reserved, root) = overhead_sectors(fat);
    let sectors_per_cluster = u64::from(cluster_bytes) / SECTOR_BYTES;
    let bits_per_entry = match fat {
        FatKind::Fat16 => 16,
        FatKind::Fat32 => 32,
    };
    let t0 = total_sectors.saturating_sub(reserved + root);
    let t1 = t0 + 2 * sectors_per_cluster;
    let t2 = u64::from(cluster_bytes) * 8 / bits_per_entry + 2;
    t1.div_ceil(t2)
}

/// Reserved sectors and root directory sectors the formatter lays out for a FAT kind.
fn overhead_sectors(fat: FatKind) -> (u64, u64) {
    match fat {
        FatKind::Fat16 => (1, FAT16_ROOT_ENTRIES * DIR_ENTRY_BYTES / SECTOR_BYTES),
        FatKind::Fat32 => (8, 0),
    }
}

fn data_clusters(fat: FatKind, cluster_bytes: u32, total_sectors: u64) -> u64 {
    let (reserved, root) = overhead_sectors(fat);
    let fat_sectors = 2 * sectors_per_fat(fat, cluster_bytes, total_sectors);
    let data = total_sectors.saturating_sub(reserved + root + fat_sectors);
    data / (u64::from(cluster_bytes) / SECTOR_BYTES)
}

/// The smallest sector count giving at least `clusters` data clusters.
fn sectors_for_clusters(fat: FatKind, cluster_bytes: u32, clusters: u64) -> u64 {
    let (reserved, root) = overhead_sectors(fat);
    let sectors_per_cluster = u64::from(cluster_bytes) / SECTOR_BYTES;
    let mut total = reserved + root + clusters * sectors_per_cluster;
    loop {
        let have = data_clusters(fat, cluster_bytes, total);
        if have >= clusters {
            return total;
        }
        total += (clusters - have) * sectors_per_cluster;
    }
}

/// Why no geometry fits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// More than a FAT32 volume (2 TiB of 512-byte sectors) can hold.
    TooLarge { needed_bytes: u64 },
    /// A single file over FAT's 4 GiB - 1 limit.
    FileTooLarge { bytes: u64 },
}

/// Clusters of slack added to every plan, for estimates that come out a little short
/// (e.g. a directory growing one cluster more than its entries need).
fn slack_clusters(clusters: u64) -> u64 {
    16 + clusters / 100
}

/// Plans a volume holding `content` plus at least `free_bytes` free for the guest.
///
/// FAT16 with the smallest cluster (512 B .. 4 KiB) that keeps the count under FAT16's limit
/// when the content is small and the root directory fits its fixed region; FAT32 with
/// 4 KiB clusters (larger only past 1 TiB) otherwise. Small volumes are padded up to the
/// minimum cluster count of their FAT kind, so the smallest disk is about 2 MiB.
pub fn plan_for_content(content: &ContentSize, free_bytes: u64) -> Result<Geometry, PlanError> {
    if let Some(&bytes) = content
        .file_bytes
        .iter()
        .find(|&&bytes| bytes > MAX_FILE_BYTES)
    {
        return Err(PlanError::FileTooLarge { bytes });
    }
    let needed = |cluster_bytes: u32, fat: FatKind| {
        let cluster = u64::from(cluster_bytes);
        let clusters = content.clusters(cluster, fat) + free_bytes.div_ceil(cluster);
        clusters + slack_clusters(clusters)
    };
    if content.root_entries <= FAT16_ROOT_ENTRIES {
        for cluster_bytes in [512u32, 1024, 2048, 4096] {
            let clusters = needed(cluster_bytes, FatKind::Fat16);
            if clusters < FAT16_MAX_CLUSTERS - 64 {
                return Ok(fit(
                    FatKind::Fat16,
                    cluster_bytes,
                    clusters.max(FAT16_MIN_CLUSTERS + 64),
                ));
            }
        }
    }
    for cluster_bytes in [4096u32, 8192, 16384, 32768] {
        let clusters = needed(cluster_bytes, FatKind::Fat32);
        if clusters <= FAT32_MAX_CLUSTERS {
            let geometry = fit(
                FatKind::Fat32,
                cluster_bytes,
                clusters.max(FAT32_MIN_CLUSTERS + 64),
            );
            if geometry.total_sectors == u32::MAX {
                break;
            }
            return Ok(geometry);
        }
    }
    Err(PlanError::TooLarge {
        needed_bytes: content.content_bytes().saturating_add(free_bytes),
    })
}

/// Plans a volume of about `image_bytes` (rounded down to whole sectors), with the FAT kind
/// and cluster size [`plan_for_content`] would pick for a volume that large.
pub fn plan_for_size(image_bytes: u64) -> Result<Geometry, PlanError> {
    let total_sectors = image_bytes / SECTOR_BYTES;
    let candidates = [
        (FatKind::Fat16, 512u32),
        (FatKind::Fat16, 1024),
        (FatKind::Fat16, 2048),
        (FatKind::Fat16, 4096),
        (FatKind::Fat32, 4096),
        (FatKind::Fat16, 8192),
        (FatKind::Fat32, 8192),
        (FatKind::Fat32, 16384),
        (FatKind::Fat32, 32768),
    ];
    if total_sectors > u64::from(u32::MAX) {
        return Err(PlanError::TooLarge {
            needed_bytes: image_bytes,
        });
    }
    for (fat, cluster_bytes) in candidates {
        let clusters = data_clusters(fat, cluster_bytes, total_sectors);
        let (min, max) = match fat {
            FatKind::Fat16 => (FAT16_MIN_CLUSTERS, FAT16_MAX_CLUSTERS),
            FatKind::Fat32 => (FAT32_MIN_CLUSTERS, FAT32_MAX_CLUSTERS),
        };
        if (min..=max).contains(&clusters) {
            return Ok(Geometry {
                fat,
                cluster_bytes,
                total_sectors: total_sectors as u32,
            });
        }
    }
    Err(PlanError::TooLarge {
        needed_bytes: image_bytes,
    })
}

/// The smallest volume of this kind and cluster size with `clusters` data clusters,
/// saturating at the largest sector count FAT can address.
fn fit(fat: FatKind, cluster_bytes: u32, clusters: u64) -> Geometry {
    let sectors = sectors_for_clusters(fat, cluster_bytes, clusters);
    Geometry {
        fat,
        cluster_bytes,
        total_sectors: u32::try_from(sectors).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn content(files: &[u64]) -> ContentSize {
        ContentSize {
            file_bytes: files.to_vec(),
            directory_entries: vec![2 + 6 * files.len() as u64],
            root_entries: 3,
        }
    }

    #[test]
    fn long_names_take_one_entry_per_thirteen_units_plus_the_short_entry() {
        assert_eq!(entries_for_name("a"), 2);
        assert_eq!(entries_for_name("abcdefghijklm"), 2);
        assert_eq!(entries_for_name("abcdefghijklmn"), 3);
        let wheel = "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";
        assert_eq!(
            entries_for_name(wheel),
            (wheel.len() as u64).div_ceil(13) + 1
        );
    }

    #[test]
    fn planned_volume_holds_content_plus_free_space_and_is_not_much_larger() {
        let cases: &[(&[u64], u64)] = &[
            (&[], 0),
            (&[1], 0),
            (&[10 * MIB, 3 * MIB + 1, 17], 256 * MIB),
            (&[40 * MIB; 3], 0),
            (&[100 * MIB; 20], 256 * MIB),
            (&[4095; 3000], 8 * MIB),
            (&[0; 10], 1),
        ];
        for (files, free) in cases {
            let content = content(files);
            let geometry = plan_for_content(&content, *free).unwrap();
            let cluster = u64::from(geometry.cluster_bytes);
            let needed = content.clusters(cluster, geometry.fat) + free.div_ceil(cluster);
            assert!(
                geometry.data_clusters() >= needed,
                "{geometry:?} too small for {files:?}"
            );
            let useful = (needed * cluster).max(8 * MIB);
            assert!(
                geometry.image_bytes() <= useful + useful / 20 + MIB,
                "{geometry:?} absurdly large for {files:?} + {free}"
            );
            let (min, max) = match geometry.fat {
                FatKind::Fat16 => (FAT16_MIN_CLUSTERS, FAT16_MAX_CLUSTERS),
                FatKind::Fat32 => (FAT32_MIN_CLUSTERS, FAT32_MAX_CLUSTERS),
            };
            assert!(
                (min..=max).contains(&geometry.data_clusters()),
                "{geometry:?}"
            );
        }
    }

    #[test]
    fn small_content_gets_fat16_and_large_content_fat32() {
        assert_eq!(
            plan_for_content(&content(&[MIB]), 0).unwrap().fat,
            FatKind::Fat16
        );
        assert_eq!(
            plan_for_content(&content(&[MIB]), 256 * MIB).unwrap().fat,
            FatKind::Fat32
        );
        let mut crowded_root = content(&[1]);
        crowded_root.root_entries = 600;
        assert_eq!(
            plan_for_content(&crowded_root, 0).unwrap().fat,
            FatKind::Fat32
        );
    }

    #[test]
    fn files_over_four_gib_and_volumes_over_two_tib_are_refused() {
        assert_eq!(
            plan_for_content(&content(&[MAX_FILE_BYTES + 1]), 0),
            Err(PlanError::FileTooLarge {
                bytes: MAX_FILE_BYTES + 1
            })
        );
        assert!(matches!(
            plan_for_content(&content(&[MAX_FILE_BYTES; 600]), 0),
            Err(PlanError::TooLarge { .. })
        ));
        assert!(matches!(
            plan_for_size(3 << 40),
            Err(PlanError::TooLarge { .. })
        ));
    }

    #[test]
    fn plan_for_size_keeps_the_size_and_picks_a_valid_cluster_count() {
        for kib in (2200..600 * 1024).step_by(1021).chain([64 << 20, 1 << 30]) {
            let geometry = plan_for_size(kib * 1024).unwrap();
            assert_eq!(geometry.image_bytes(), kib * 1024);
            if kib < 250 * 1024 {
                assert_eq!(geometry.fat, FatKind::Fat16, "{kib} KiB");
            } else if kib > 260 * 1024 {
                assert_eq!(geometry.fat, FatKind::Fat32, "{kib} KiB");
            }
        }
        assert!(plan_for_size(MIB).is_err());
    }
}
