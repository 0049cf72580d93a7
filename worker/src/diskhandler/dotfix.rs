//! Repair of the `.` and `..` entries the FAT library writes into new directories.
//!
//! fatfs 0.3 writes the two dot entries of a new directory through its long-name path, so
//! each gets a long-file-name entry in front of it (`[LFN] . [LFN] ..` instead of `. ..`),
//! and on FAT32 the `..` of a top-level directory holds the root's cluster instead of 0.
//! Linux reads that, but `fsck.fat` calls it corrupt and would rewrite our directories,
//! which we do not want a guest or an operator to see. Later fatfs versions fix it, but
//! are not released; so, after we wrote a disk, this walks its directory tree (it is our
//! own, trusted, disk, but the walk is bounded anyway) and rewrites those slots in place.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};

const ENTRY: usize = 32;
const ATTRIBUTE_LONG_NAME: u8 = 0x0F;
const ATTRIBUTE_DIRECTORY: u8 = 0x10;
const ATTRIBUTE_VOLUME: u8 = 0x08;
const DELETED: u8 = 0xE5;
const DOT: &[u8; 11] = b".          ";
const DOT_DOT: &[u8; 11] = b"..         ";

/// Where things are on the volume, from its boot sector.
struct Layout {
    cluster_bytes: u64,
    fat_offset: u64,
    fat32: bool,
    root_region: Option<(u64, u64)>,
    root_cluster: u32,
    data_offset: u64,
    total_clusters: u32,
}

fn invalid(detail: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.to_string())
}

fn u16_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u32_at(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([
        bytes[at],
        bytes[at + 1],
        bytes[at + 2],
        bytes[at + 3],
    ]))
}

impl Layout {
    fn parse(boot: &[u8; 512]) -> io::Result<Layout> {
        let bytes_per_sector = u16_at(boot, 11);
        let sectors_per_cluster = u64::from(boot[13]);
        let reserved = u16_at(boot, 14);
        let fats = u64::from(boot[16]);
        let root_entries = u16_at(boot, 17);
        let total = match u16_at(boot, 19) {
            0 => u32_at(boot, 32),
            small => small,
        };
        let fat16_sectors = u16_at(boot, 22);
        let fat_sectors = if fat16_sectors == 0 {
            u32_at(boot, 36)
        } else {
            fat16_sectors
        };
        if bytes_per_sector == 0 || sectors_per_cluster == 0 {
            return Err(invalid("boot sector has a zero sector or cluster size"));
        }
        let root_sectors = (root_entries * ENTRY as u64).div_ceil(bytes_per_sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        let total_clusters = total.saturating_sub(data_sector) / sectors_per_cluster;
        let fat32 = fat16_sectors == 0;
        Ok(Layout {
            cluster_bytes: bytes_per_sector * sectors_per_cluster,
            fat_offset: reserved * bytes_per_sector,
            fat32,
            root_region: (!fat32).then_some((
                (reserved + fats * fat_sectors) * bytes_per_sector,
                root_sectors * bytes_per_sector,
            )),
            root_cluster: if fat32 { u32_at(boot, 44) as u32 } else { 0 },
            data_offset: data_sector * bytes_per_sector,
            total_clusters: u32::try_from(total_clusters)
                .map_err(|_| invalid("too many clusters"))?,
        })
    }

    fn valid_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster < self.total_clusters.saturating_add(2)
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + u64::from(cluster - 2) * self.cluster_bytes
    }

    fn next_cluster<D: Read + Seek>(&self, disk: &mut D, cluster: u32) -> io::Result<Option<u32>> {
        let width = if self.fat32 { 4 } else { 2 };
        disk.seek(SeekFrom::Start(
            self.fat_offset + u64::from(cluster) * width,
        ))?;
        let mut raw = [0u8; 4];
        disk.read_exact(&mut raw[..width as usize])?;
        let value = if self.fat32 {
            u32::from_le_bytes(raw) & 0x0FFF_FFFF
        } else {
            u32::from(u16::from_le_bytes([raw[0], raw[1]]))
        };
        Ok(self.valid_cluster(value).then_some(value))
    }

    /// Offsets and lengths of the pieces of a directory, stopping at a loop.
    fn directory_pieces<D: Read + Seek>(
        &self,
        disk: &mut D,
        first: Option<u32>,
        visited: &mut HashSet<u32>,
    ) -> io::Result<Vec<(u64, u64)>> {
        let Some(mut cluster) = first else {
            return Ok(self.root_region.into_iter().collect());
        };
        let mut pieces = Vec::new();
        while self.valid_cluster(cluster) && visited.insert(cluster) {
            pieces.push((self.cluster_offset(cluster), self.cluster_bytes));
            match self.next_cluster(disk, cluster)? {
                Some(next) => cluster = next,
                None => break,
            }
        }
        Ok(pieces)
    }
}

fn first_cluster(entry: &[u8], fat32: bool) -> u32 {
    let low = u16_at(entry, 26) as u32;
    let high = if fat32 { u16_at(entry, 20) as u32 } else { 0 };
    (high << 16) | low
}

fn set_first_cluster(entry: &mut [u8], cluster: u32) {
    entry[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    entry[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
}

/// Rewrites the dot entries at the start of a directory's first cluster (see the module
/// docs); returns whether anything changed.
fn repair_head(head: &mut [u8; 4 * ENTRY], parent_cluster: u32) -> bool {
    fn is(head: &[u8; 4 * ENTRY], slot: usize, name: &[u8; 11]) -> bool {
        &head[slot * ENTRY..slot * ENTRY + 11] == name
            && head[slot * ENTRY + 11] & ATTRIBUTE_DIRECTORY != 0
    }
    fn long(head: &[u8; 4 * ENTRY], slot: usize) -> bool {
        head[slot * ENTRY + 11] == ATTRIBUTE_LONG_NAME
    }
    let original = *head;
    if long(head, 0) && is(head, 1, DOT) && long(head, 2) && is(head, 3, DOT_DOT) {
        head.copy_within(ENTRY..2 * ENTRY, 0);
        head.copy_within(3 * ENTRY..4 * ENTRY, ENTRY);
        for slot in 2..4 {
            head[slot * ENTRY..(slot + 1) * ENTRY].fill(0);
            head[slot * ENTRY] = DELETED;
        }
    }
    if is(head, 0, DOT) && is(head, 1, DOT_DOT) {
        set_first_cluster(&mut head[ENTRY..2 * ENTRY], parent_cluster);
    }
    *head != original
}

/// Walks the directory tree of the FAT volume on `disk` and repairs the dot entries of
/// every directory; returns how many directories were rewritten.
pub(crate) fn repair_dot_entries<D: Read + Write + Seek>(disk: &mut D) -> io::Result<u64> {
    let mut boot = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut boot)?;
    let layout = Layout::parse(&boot)?;
    let mut visited = HashSet::new();
    let root = layout.fat32.then_some(layout.root_cluster);
    let mut pending = vec![(root, true)];
    let mut repaired = 0;
    while let Some((first, is_root)) = pending.pop() {
        let pieces = layout.directory_pieces(disk, first, &mut visited)?;
        let parent_for_children = if is_root { 0 } else { first.unwrap_or(0) };
        'pieces: for (offset, length) in pieces {
            let mut bytes = vec![0u8; length as usize];
            disk.seek(SeekFrom::Start(offset))?;
            disk.read_exact(&mut bytes)?;
            for entry in bytes.chunks_exact(ENTRY) {
                match entry[0] {
                    0 => break 'pieces,
                    DELETED => continue,
                    _ => {}
                }
                let attributes = entry[11];
                let name = &entry[..11];
                if attributes == ATTRIBUTE_LONG_NAME
                    || attributes & ATTRIBUTE_VOLUME != 0
                    || attributes & ATTRIBUTE_DIRECTORY == 0
                    || name == DOT
                    || name == DOT_DOT
                {
                    continue;
                }
                let cluster = first_cluster(entry, layout.fat32);
                if !layout.valid_cluster(cluster) || visited.contains(&cluster) {
                    continue;
                }
                let mut head = [0u8; 4 * ENTRY];
                let head_offset = layout.cluster_offset(cluster);
                disk.seek(SeekFrom::Start(head_offset))?;
                disk.read_exact(&mut head)?;
                if repair_head(&mut head, parent_for_children) {
                    disk.seek(SeekFrom::Start(head_offset))?;
                    disk.write_all(&head)?;
                    repaired += 1;
                }
                pending.push((Some(cluster), false));
            }
        }
    }
    disk.flush()?;
    Ok(repaired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short(name: &[u8; 11], attributes: u8, cluster: u32) -> [u8; ENTRY] {
        let mut entry = [0u8; ENTRY];
        entry[..11].copy_from_slice(name);
        entry[11] = attributes;
        set_first_cluster(&mut entry, cluster);
        entry
    }

    fn long() -> [u8; ENTRY] {
        let mut entry = [0xFFu8; ENTRY];
        entry[0] = 0x41;
        entry[11] = ATTRIBUTE_LONG_NAME;
        entry
    }

    #[test]
    fn long_name_entries_before_dot_entries_are_removed_and_dot_dot_points_to_the_parent() {
        let mut head = [0u8; 4 * ENTRY];
        head[..ENTRY].copy_from_slice(&long());
        head[ENTRY..2 * ENTRY].copy_from_slice(&short(DOT, ATTRIBUTE_DIRECTORY, 9));
        head[2 * ENTRY..3 * ENTRY].copy_from_slice(&long());
        head[3 * ENTRY..].copy_from_slice(&short(DOT_DOT, ATTRIBUTE_DIRECTORY, 2));
        assert!(repair_head(&mut head, 0));
        assert_eq!(&head[..ENTRY], &short(DOT, ATTRIBUTE_DIRECTORY, 9));
        assert_eq!(
            &head[ENTRY..2 * ENTRY],
            &short(DOT_DOT, ATTRIBUTE_DIRECTORY, 0)
        );
        assert_eq!((head[2 * ENTRY], head[3 * ENTRY]), (DELETED, DELETED));
        assert!(!repair_head(&mut head, 0), "a repaired head stays as it is");
    }

    #[test]
    fn well_formed_heads_and_other_content_are_left_alone() {
        let mut head = [0u8; 4 * ENTRY];
        head[..ENTRY].copy_from_slice(&short(DOT, ATTRIBUTE_DIRECTORY, 9));
        head[ENTRY..2 * ENTRY].copy_from_slice(&short(DOT_DOT, ATTRIBUTE_DIRECTORY, 5));
        head[2 * ENTRY..3 * ENTRY].copy_from_slice(&short(b"FILE    TXT", 0x20, 12));
        assert!(!repair_head(&mut head, 5));
        let mut data = [0x41u8; 4 * ENTRY];
        assert!(!repair_head(&mut data, 0));
    }
}
