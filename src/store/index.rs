//! The sparse offset and time index of one segment: a rebuildable cache.
//!
//! Every `index_interval_bytes` of records, the writer notes where a record
//! starts, its offset and its timestamp (`{base:020}.idx`, entries of 16
//! bytes after a 32-byte header). Lookups binary-search these entries and
//! scan forward from the entry found. The index is never trusted: an entry
//! that does not lead to a valid frame with the expected offset makes the
//! reader fall back to scanning from the segment start, and a missing,
//! damaged or non-monotonic index file is rebuilt from the segment. It is
//! written without `fdatasync`, since a crash can only make it stale, and
//! staleness is detected.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::format::{
    decode_index_entry, encode_index_entry, index_entry_at, IndexEntry, FRAME_OVERHEAD,
    INDEX_ENTRY_LEN, INDEX_HEADER_LEN, RECORDS_START,
};
use crate::storage::{File, Map};

/// The entries of one segment's index, mapped from its file or held in
/// memory when the file could not be written (read-only handles).
#[derive(Debug)]
pub(crate) struct Index {
    file: Option<File>,
    bytes: IndexBytes,
    /// Entries `[0, count)` are published and monotonic. Lookups see at
    /// most what the bytes hold: a writer may publish entries it wrote past
    /// the end of the map (the file grows), which stay unused.
    count: AtomicU64,
}

#[derive(Debug)]
enum IndexBytes {
    Mapped(Map),
    /// Rebuilt in memory by a read-only handle, which may not rewrite the
    /// file; never written to.
    Memory(Vec<u8>),
}

impl Index {
    /// An index over a mapped file whose first `count` entries are valid.
    pub(crate) fn mapped(file: File, map: Map, count: u64) -> Index {
        Index {
            file: Some(file),
            bytes: IndexBytes::Mapped(map),
            count: AtomicU64::new(count),
        }
    }

    /// An index held in memory only (no file to write to).
    pub(crate) fn memory(entries: &[IndexEntry]) -> Index {
        let mut bytes = Vec::with_capacity(entries.len() * INDEX_ENTRY_LEN);
        for entry in entries {
            bytes.extend_from_slice(&encode_index_entry(entry));
        }
        Index {
            file: None,
            count: AtomicU64::new(entries.len() as u64),
            bytes: IndexBytes::Memory(bytes),
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn with_entries<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let count = self.count() as usize;
        match &self.bytes {
            IndexBytes::Mapped(map) => {
                let bytes = map.bytes();
                let end = (INDEX_HEADER_LEN + count * INDEX_ENTRY_LEN).min(bytes.len());
                f(bytes.get(INDEX_HEADER_LEN..end).unwrap_or(&[]))
            }
            IndexBytes::Memory(bytes) => {
                let end = (count * INDEX_ENTRY_LEN).min(bytes.len());
                f(&bytes[..end])
            }
        }
    }

    /// The last entry for which `before(entry)` holds, assuming `before` is
    /// true for a prefix of the entries (they are monotonic).
    fn last_where(&self, before: impl Fn(&IndexEntry) -> bool) -> Option<IndexEntry> {
        self.with_entries(|bytes| {
            let entry = |i: usize| decode_index_entry(&bytes[i * INDEX_ENTRY_LEN..]);
            let (mut lo, mut hi) = (0usize, bytes.len() / INDEX_ENTRY_LEN);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                match entry(mid) {
                    Some(e) if before(&e) => lo = mid + 1,
                    _ => hi = mid,
                }
            }
            lo.checked_sub(1).and_then(entry)
        })
    }

    /// Every published entry, for verification.
    pub(crate) fn entries(&self) -> Vec<IndexEntry> {
        self.with_entries(|bytes| {
            bytes
                .chunks_exact(INDEX_ENTRY_LEN)
                .filter_map(decode_index_entry)
                .collect()
        })
    }

    /// The entry to start scanning from for relative offset `rel`.
    pub(crate) fn seek_offset(&self, rel: u32) -> Option<IndexEntry> {
        self.last_where(|e| e.rel_offset <= rel)
    }

    /// The entry to start scanning from for the first record with a
    /// timestamp of at least `micros`.
    pub(crate) fn seek_time(&self, micros: u64) -> Option<IndexEntry> {
        self.last_where(|e| e.timestamp < micros)
    }

    /// Writes encoded entries starting at entry number `at`. They become
    /// visible to lookups only through [`publish`](Index::publish). Only
    /// the writer's active segment is written to, and its index is always a
    /// file; an index without one (a read-only handle's) is not extended,
    /// which only costs lookups a longer scan, since entries are a cache.
    pub(crate) fn write(&self, entries: &[u8], at: u64) -> std::io::Result<()> {
        match &self.file {
            Some(file) => file.write_at(entries, index_entry_at(at)),
            None => Ok(()),
        }
    }

    /// Makes entries `[0, count)` visible to lookups.
    pub(crate) fn publish(&self, count: u64) {
        self.count.store(count, Ordering::Release);
    }
}

/// Decides which records get an index entry: the first of a segment, and
/// then one at least every `interval` bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IndexBuilder {
    interval: u64,
    last_pos: Option<u64>,
}

impl IndexBuilder {
    pub(crate) fn new(interval: u32, last_pos: Option<u64>) -> IndexBuilder {
        IndexBuilder {
            interval: u64::from(interval.max(1)),
            last_pos,
        }
    }

    #[inline]
    pub(crate) fn observe(
        &mut self,
        base: u64,
        pos: u64,
        offset: u64,
        ts: u64,
    ) -> Option<IndexEntry> {
        if let Some(last) = self.last_pos {
            if pos < last + self.interval {
                return None;
            }
        }
        self.last_pos = Some(pos);
        Some(IndexEntry {
            rel_offset: (offset - base) as u32,
            pos: pos as u32,
            timestamp: ts,
        })
    }
}

/// Counts the leading entries of `bytes` (the part after the header) that
/// are plausible for a segment whose records end at `limit`: strictly
/// increasing offsets and positions, non-decreasing timestamps, positions
/// inside the record area. An all-zero entry ends the index.
pub(crate) fn valid_prefix(bytes: &[u8], limit: u64) -> u64 {
    let mut count = 0;
    let mut previous: Option<IndexEntry> = None;
    for entry in bytes
        .chunks_exact(INDEX_ENTRY_LEN)
        .map_while(decode_index_entry)
    {
        let pos = u64::from(entry.pos);
        if pos < RECORDS_START || pos >= limit {
            break;
        }
        if let Some(p) = previous {
            if entry.rel_offset <= p.rel_offset
                || entry.pos <= p.pos
                || entry.timestamp < p.timestamp
            {
                break;
            }
        }
        previous = Some(entry);
        count += 1;
    }
    count
}

/// The index file size that holds every entry a segment of `capacity` bytes
/// can need: at most one entry per record and per `interval` bytes.
pub(crate) fn file_len_for(capacity: u64, interval: u32) -> u64 {
    let by_interval = capacity / u64::from(interval.max(1));
    let by_records = capacity / FRAME_OVERHEAD as u64;
    INDEX_HEADER_LEN as u64 + (by_interval.min(by_records) + 2) * INDEX_ENTRY_LEN as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u32) -> Vec<IndexEntry> {
        (0..n)
            .map(|i| IndexEntry {
                rel_offset: i * 10,
                pos: 64 + i * 1000,
                timestamp: u64::from(i) * 100,
            })
            .collect()
    }

    #[test]
    fn seeks_find_the_last_entry_at_or_before() {
        let index = Index::memory(&entries(50));
        assert_eq!(index.seek_offset(0).map(|e| e.rel_offset), Some(0));
        assert_eq!(index.seek_offset(9).map(|e| e.rel_offset), Some(0));
        assert_eq!(index.seek_offset(10).map(|e| e.rel_offset), Some(10));
        assert_eq!(index.seek_offset(10_000).map(|e| e.rel_offset), Some(490));
        assert_eq!(index.seek_time(0), None);
        assert_eq!(index.seek_time(101).map(|e| e.timestamp), Some(100));
        assert_eq!(index.seek_time(100).map(|e| e.timestamp), Some(0));
        assert_eq!(Index::memory(&[]).seek_offset(5), None);
    }

    #[test]
    fn valid_prefix_stops_at_the_first_implausible_entry() {
        let mut bytes = Vec::new();
        for e in entries(5) {
            bytes.extend_from_slice(&encode_index_entry(&e));
        }
        assert_eq!(valid_prefix(&bytes, 1 << 20), 5);
        assert_eq!(valid_prefix(&bytes, 64 + 2500), 3, "entry past the end");
        // Entry 3 (offset 30, position 3064, time 300) made to go back in
        // offset, in position, or in time: the prefix ends before it.
        for (at, value, what) in [
            (0, 5u64, "offset"),
            (4, 1064, "position"),
            (8, 99, "timestamp"),
        ] {
            let mut regress = bytes.clone();
            let field = 3 * 16 + at;
            let width = if at == 8 { 8 } else { 4 };
            regress[field..field + width].copy_from_slice(&value.to_le_bytes()[..width]);
            assert_eq!(valid_prefix(&regress, 1 << 20), 3, "{what} goes back");
        }
        let mut same_time = bytes.clone();
        same_time[3 * 16 + 8..3 * 16 + 16].copy_from_slice(&200u64.to_le_bytes());
        assert_eq!(valid_prefix(&same_time, 1 << 20), 5, "equal times are fine");
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 32]);
        assert_eq!(valid_prefix(&zeros, 1 << 20), 5);
    }

    #[test]
    fn a_memory_index_is_not_extended_by_writes() {
        let index = Index::memory(&entries(3));
        let more = encode_index_entry(&entries(4)[3]);
        index.write(&more, 3).unwrap();
        index.publish(4);
        assert_eq!(index.count(), 4);
        assert_eq!(index.seek_offset(35).map(|e| e.rel_offset), Some(20));
    }

    #[test]
    fn unpublished_entries_are_invisible() {
        let index = Index::memory(&entries(3));
        index.publish(1);
        assert_eq!(index.seek_offset(25).map(|e| e.rel_offset), Some(0));
        index.publish(3);
        assert_eq!(index.seek_offset(25).map(|e| e.rel_offset), Some(20));
    }
}
