//! The stream the FAT library reads through, and the last-resort panic guard around it.
//!
//! The FAT library trusts the file system it reads: a cluster chain that loops back on
//! itself makes a directory endless, and some corrupt values make it overflow arithmetic
//! and panic. What the guest wrote is hostile, so every byte the library reads passes a
//! budget here (each call costs at least [`MIN_CALL_COST`], so loops that read nothing new
//! still run out), and every call into the library runs under `catch_unwind`. The stream
//! also refuses writes when the image was opened read-only, and keeps a small read cache
//! that survives seeks, which the library issues before nearly every access.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Budget units charged for every read or seek call, whatever its length.
pub const MIN_CALL_COST: u64 = 64;

/// Bytes of one aligned block of the read cache.
const CACHE_BYTES: usize = 64 * 1024;

/// Blocks in the read cache: enough for the FAT, a directory and the data being read,
/// which the library visits in turn for every cluster.
const CACHE_BLOCKS: usize = 4;

/// Shared between a [`GuardedStream`] and its owner: the budget and whether it ran out.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicU64,
    spent: AtomicU64,
    exhausted: AtomicBool,
}

impl Budget {
    /// A budget of `limit` units.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(Budget {
            limit: AtomicU64::new(limit),
            spent: AtomicU64::new(0),
            exhausted: AtomicBool::new(false),
        })
    }

    /// Starts over with a new limit (used once per top-level operation).
    pub fn reset(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
        self.spent.store(0, Ordering::Relaxed);
        self.exhausted.store(false, Ordering::Relaxed);
    }

    /// Whether a call was refused because the budget ran out since the last reset.
    pub fn exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Relaxed)
    }

    /// Units spent since the last reset.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Relaxed)
    }

    fn charge(&self, bytes: usize) -> io::Result<()> {
        let cost = (bytes as u64).max(MIN_CALL_COST);
        let spent = self.spent.fetch_add(cost, Ordering::Relaxed) + cost;
        if spent > self.limit.load(Ordering::Relaxed) {
            self.exhausted.store(true, Ordering::Relaxed);
            return Err(io::Error::other("IO disk read budget exhausted"));
        }
        Ok(())
    }
}

/// A seekable byte store with a known length: a file or an in-memory image.
pub trait Backing: Read + Write + Seek {}
impl<T: Read + Write + Seek> Backing for T {}

/// The stream handed to the FAT library: budgeted, optionally read-only, read-cached.
pub struct GuardedStream<S: Backing> {
    inner: S,
    writable: bool,
    budget: Arc<Budget>,
    position: u64,
    length: u64,
    inner_position: Option<u64>,
    cache: Vec<CacheBlock>,
    clock: u64,
}

/// One aligned block of the image kept in memory.
struct CacheBlock {
    start: u64,
    bytes: Vec<u8>,
    last_used: u64,
}

impl CacheBlock {
    fn holds(&self, offset: u64) -> bool {
        offset >= self.start && offset < self.start + self.bytes.len() as u64
    }
}

impl<S: Backing> GuardedStream<S> {
    /// Wraps `inner` (positioned anywhere) sized `length` bytes.
    pub fn new(inner: S, length: u64, writable: bool, budget: Arc<Budget>) -> Self {
        GuardedStream {
            inner,
            writable,
            budget,
            position: 0,
            length,
            inner_position: None,
            cache: Vec::with_capacity(CACHE_BLOCKS),
            clock: 0,
        }
    }

    fn seek_inner(&mut self, offset: u64) -> io::Result<()> {
        if self.inner_position != Some(offset) {
            self.inner.seek(SeekFrom::Start(offset))?;
            self.inner_position = Some(offset);
        }
        Ok(())
    }

    /// Index of the cache block holding `offset`, reading it in (over the least recently
    /// used block) if needed.
    fn cache_block(&mut self, offset: u64) -> io::Result<usize> {
        self.clock += 1;
        if let Some(index) = self.cache.iter().position(|block| block.holds(offset)) {
            self.cache[index].last_used = self.clock;
            return Ok(index);
        }
        let index = if self.cache.len() < CACHE_BLOCKS {
            self.cache.push(CacheBlock {
                start: 0,
                bytes: Vec::new(),
                last_used: 0,
            });
            self.cache.len() - 1
        } else {
            let oldest = self
                .cache
                .iter()
                .enumerate()
                .min_by_key(|(_, block)| block.last_used);
            oldest.map_or(0, |(index, _)| index)
        };
        let start = offset - offset % CACHE_BYTES as u64;
        let end = (start + CACHE_BYTES as u64).min(self.length);
        let mut bytes = std::mem::take(&mut self.cache[index].bytes);
        bytes.resize((end - start) as usize, 0);
        self.seek_inner(start)?;
        let mut filled = 0;
        while filled < bytes.len() {
            match self.inner.read(&mut bytes[filled..]) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    self.inner_position = None;
                    self.cache.swap_remove(index);
                    return Err(error);
                }
            }
        }
        bytes.truncate(filled);
        self.inner_position = Some(start + filled as u64);
        self.cache[index] = CacheBlock {
            start,
            bytes,
            last_used: self.clock,
        };
        Ok(index)
    }
}

impl<S: Backing> Read for GuardedStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.budget.charge(buf.len())?;
        if buf.is_empty() || self.position >= self.length {
            return Ok(0);
        }
        let wanted = buf.len().min((self.length - self.position) as usize);
        let position = self.position;
        if wanted >= CACHE_BYTES && !self.cache.iter().any(|block| block.holds(position)) {
            self.seek_inner(position)?;
            let read = self.inner.read(&mut buf[..wanted]);
            let read = read.inspect_err(|_| self.inner_position = None)?;
            self.inner_position = Some(position + read as u64);
            self.position += read as u64;
            return Ok(read);
        }
        let index = self.cache_block(position)?;
        let block = &self.cache[index];
        if !block.holds(position) {
            return Ok(0);
        }
        let available = &block.bytes[(position - block.start) as usize..];
        let read = wanted.min(available.len());
        buf[..read].copy_from_slice(&available[..read]);
        self.position += read as u64;
        Ok(read)
    }
}

impl<S: Backing> Write for GuardedStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "IO disk is open read-only",
            ));
        }
        let position = self.position;
        self.seek_inner(position)?;
        let written = self
            .inner
            .write(buf)
            .inspect_err(|_| self.inner_position = None)?;
        let end = position + written as u64;
        for block in &mut self.cache {
            let block_end = block.start + block.bytes.len() as u64;
            if position < block_end && end > block.start {
                let from = position.max(block.start);
                let to = end.min(block_end);
                let source = &buf[(from - position) as usize..(to - position) as usize];
                let target = (from - block.start) as usize..(to - block.start) as usize;
                block.bytes[target].copy_from_slice(source);
            }
        }
        self.inner_position = Some(end);
        self.position = end;
        self.length = self.length.max(end);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<S: Backing> Seek for GuardedStream<S> {
    fn seek(&mut self, target: SeekFrom) -> io::Result<u64> {
        self.budget.charge(0)?;
        let position = match target {
            SeekFrom::Start(offset) => Some(offset),
            SeekFrom::End(delta) => self.length.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        let position = position.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the IO disk",
            )
        })?;
        self.position = position;
        Ok(position)
    }
}

/// Runs `work`, turning a panic inside it (the FAT library on a corrupt volume) into
/// `Err` with the panic message.
pub fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    panic::catch_unwind(AssertUnwindSafe(work)).map_err(|payload| {
        if let Some(message) = payload.downcast_ref::<&str>() {
            (*message).to_string()
        } else if let Some(message) = payload.downcast_ref::<String>() {
            message.clone()
        } else {
            "panic without a message".to_string()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn stream(bytes: Vec<u8>, limit: u64, writable: bool) -> GuardedStream<Cursor<Vec<u8>>> {
        let length = bytes.len() as u64;
        GuardedStream::new(Cursor::new(bytes), length, writable, Budget::new(limit))
    }

    #[test]
    fn reads_anywhere_including_across_cache_blocks_and_past_the_end() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut guarded = stream(bytes.clone(), u64::MAX, false);
        for (offset, length) in [
            (0, 10),
            (65_530, 20),
            (1000, 100_000),
            (199_990, 50),
            (5, 0),
        ] {
            guarded.seek(SeekFrom::Start(offset)).unwrap();
            let mut buf = vec![0; length];
            let mut got = Vec::new();
            loop {
                let read = guarded.read(&mut buf).unwrap();
                if read == 0 || got.len() >= length {
                    break;
                }
                got.extend_from_slice(&buf[..read]);
            }
            let end = (offset as usize + length).min(bytes.len());
            assert_eq!(&got[..end - offset as usize], &bytes[offset as usize..end]);
        }
    }

    #[test]
    fn alternating_reads_of_distant_regions_and_writes_to_cached_blocks_stay_consistent() {
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut expected = bytes.clone();
        let mut guarded = stream(bytes, u64::MAX, true);
        for round in 0..50u64 {
            for region in [0u64, 300_000, 600_000, 750_000, 450_000] {
                let offset = region + round * 4096;
                guarded.seek(SeekFrom::Start(offset)).unwrap();
                let mut chunk = [0u8; 100];
                guarded.read_exact(&mut chunk).unwrap();
                let at = offset as usize;
                assert_eq!(&chunk[..], &expected[at..at + 100], "offset {offset}");
                if round % 7 == 0 {
                    guarded.seek(SeekFrom::Start(offset + 50)).unwrap();
                    guarded.write_all(&[round as u8; 10]).unwrap();
                    expected[at + 50..at + 60].fill(round as u8);
                }
            }
        }
    }

    #[test]
    fn writes_update_the_cache_and_read_only_streams_refuse_them() {
        let mut guarded = stream(vec![0; 1000], u64::MAX, true);
        let mut byte = [0];
        guarded.read_exact(&mut byte).unwrap();
        guarded.seek(SeekFrom::Start(10)).unwrap();
        guarded.write_all(b"abc").unwrap();
        guarded.seek(SeekFrom::Start(9)).unwrap();
        let mut back = [0; 5];
        guarded.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"\0abc\0");

        let mut read_only = stream(vec![0; 1000], u64::MAX, false);
        let error = read_only.write(b"x").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn every_call_costs_budget_and_an_exhausted_budget_fails_reads_and_seeks() {
        let mut guarded = stream(vec![7; 1000], 10 * MIN_CALL_COST, false);
        let budget = guarded.budget.clone();
        for _ in 0..10 {
            guarded.seek(SeekFrom::Start(0)).unwrap();
        }
        assert_eq!(budget.spent(), 10 * MIN_CALL_COST);
        assert!(!budget.exhausted());
        assert!(guarded.read(&mut [0; 4]).is_err());
        assert!(budget.exhausted());
        assert!(guarded.seek(SeekFrom::Start(0)).is_err());
        budget.reset(MIN_CALL_COST);
        assert!(guarded.seek(SeekFrom::Start(0)).is_ok());
    }

    #[test]
    fn panics_become_errors_with_their_message() {
        assert_eq!(catch_panic(|| 5), Ok(5));
        let message = catch_panic(|| -> u8 { panic!("attempt to subtract with overflow") });
        assert_eq!(
            message,
            Err("attempt to subtract with overflow".to_string())
        );
    }
}
