//! The segment set of one log: which segments exist, in offset order, which
//! of them are open (mapped), and the lookups from an offset or a time to a
//! segment.
//!
//! The newest segment is always open; sealed ones are opened on demand and
//! the least recently opened are closed beyond `max_open_segments`, so file
//! handles and mappings stay bounded whatever the log's size. A reader that
//! still holds a closed segment keeps it alive until it moves on.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use super::segment::{Segment, SegmentConfig};
use crate::error::Result;
use crate::storage::Storage;

/// Every segment of one log.
#[derive(Debug)]
pub(crate) struct SegmentSet {
    dir: PathBuf,
    storage: Storage,
    config: SegmentConfig,
    read_only: bool,
    max_open: usize,
    inner: RwLock<Segments>,
    /// The first offset of the oldest segment.
    first: AtomicU64,
    indexes_rebuilt: AtomicU64,
}

#[derive(Debug, Default)]
struct Segments {
    slots: Vec<Slot>,
    /// Sealed segments currently open, least recently opened first.
    opened: VecDeque<u64>,
}

#[derive(Debug)]
struct Slot {
    base: u64,
    len: u64,
    segment: Option<Arc<Segment>>,
}

/// The size of a log's segments, for [`Stats`](crate::Stats).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Extent {
    pub(crate) segments: usize,
    pub(crate) open: usize,
    pub(crate) bytes: u64,
}

impl SegmentSet {
    /// The set of `sealed` segments (base offset and file length, oldest
    /// first) followed by the open `newest`.
    pub(crate) fn new(
        storage: &Storage,
        dir: &Path,
        config: SegmentConfig,
        read_only: bool,
        max_open: usize,
        sealed: &[(u64, u64)],
        newest: Arc<Segment>,
    ) -> SegmentSet {
        let mut slots: Vec<Slot> = sealed
            .iter()
            .map(|&(base, len)| Slot {
                base,
                len,
                segment: None,
            })
            .collect();
        slots.push(Slot {
            base: newest.base,
            len: newest.capacity(),
            segment: Some(newest),
        });
        SegmentSet {
            dir: dir.to_path_buf(),
            storage: storage.clone(),
            config,
            read_only,
            max_open,
            first: AtomicU64::new(slots[0].base),
            inner: RwLock::new(Segments {
                slots,
                opened: VecDeque::new(),
            }),
            indexes_rebuilt: AtomicU64::new(0),
        }
    }

    /// The first offset still in the log.
    pub(crate) fn first(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    pub(crate) fn indexes_rebuilt(&self) -> u64 {
        self.indexes_rebuilt.load(Ordering::Relaxed)
    }

    /// The segment holding `offset`, opening it if needed; `None` if the
    /// offset is below the first segment (or the set was cleared).
    pub(crate) fn segment_for(&self, offset: u64) -> Result<Option<Arc<Segment>>> {
        {
            let segments = self.inner.read();
            let i = segments.slots.partition_point(|s| s.base <= offset);
            if i == 0 {
                return Ok(None);
            }
            if let Some(segment) = &segments.slots[i - 1].segment {
                return Ok(Some(segment.clone()));
            }
        }
        let mut segments = self.inner.write();
        let i = segments.slots.partition_point(|s| s.base <= offset);
        if i == 0 {
            return Ok(None);
        }
        if let Some(segment) = &segments.slots[i - 1].segment {
            return Ok(Some(segment.clone()));
        }
        let base = segments.slots[i - 1].base;
        // Not the last slot: the newest segment is always open.
        let expected_end = segments.slots[i].base;
        let (segment, rebuilt) = Segment::open_sealed(
            &self.storage,
            &self.dir,
            base,
            expected_end,
            self.read_only,
            &self.config,
        )?;
        if rebuilt {
            self.indexes_rebuilt.fetch_add(1, Ordering::Relaxed);
        }
        let segment = Arc::new(segment);
        segments.slots[i - 1].segment = Some(segment.clone());
        segments.opened.push_back(base);
        self.evict(&mut segments);
        Ok(Some(segment))
    }

    /// Closes the least recently opened sealed segments beyond the limit.
    fn evict(&self, segments: &mut Segments) {
        while segments.opened.len() > self.max_open {
            let base = segments.opened.pop_front().expect("non-empty");
            let last = segments.slots.len() - 1;
            if let Ok(i) = segments.slots.binary_search_by_key(&base, |s| s.base) {
                if i != last {
                    segments.slots[i].segment = None;
                }
            }
        }
    }

    /// The base offset of the segment after the one starting at `base`.
    pub(crate) fn segment_after(&self, base: u64) -> Option<u64> {
        let segments = self.inner.read();
        let i = segments.slots.partition_point(|s| s.base <= base);
        segments.slots.get(i).map(|s| s.base)
    }

    /// The base offsets of every segment, oldest first.
    pub(crate) fn bases(&self) -> Vec<u64> {
        self.inner.read().slots.iter().map(|s| s.base).collect()
    }

    /// The newest segment.
    pub(crate) fn newest(&self) -> Option<Arc<Segment>> {
        self.inner.read().slots.last()?.segment.clone()
    }

    /// Adds a new newest segment; the one before it is sealed and joins the
    /// segments that may be closed. One of the newest's base replaces it.
    pub(crate) fn push(&self, segment: Arc<Segment>) {
        let mut segments = self.inner.write();
        if let Some(newest) = segments.slots.last_mut() {
            if newest.base == segment.base {
                // A newest segment of no record, replaced whole.
                newest.len = segment.capacity();
                newest.segment = Some(segment);
                return;
            }
        }
        if let Some(previous) = segments.slots.last().map(|s| s.base) {
            segments.opened.push_back(previous);
        }
        segments.slots.push(Slot {
            base: segment.base,
            len: segment.capacity(),
            segment: Some(segment),
        });
        self.evict(&mut segments);
    }

    /// For retention: the oldest segment (base and length), the base of the
    /// one after it, and the size of all; `None` with fewer than two.
    pub(crate) fn oldest(&self) -> Option<((u64, u64), u64, u64)> {
        let segments = self.inner.read();
        if segments.slots.len() < 2 {
            return None;
        }
        let total = segments.slots.iter().map(|s| s.len).sum();
        let oldest = &segments.slots[0];
        Some(((oldest.base, oldest.len), segments.slots[1].base, total))
    }

    /// Forgets the oldest segment if it starts at `base` (its files are the
    /// caller's to remove); returns whether it did.
    pub(crate) fn remove_oldest(&self, base: u64) -> bool {
        let mut segments = self.inner.write();
        if segments.slots.len() < 2 || segments.slots[0].base != base {
            return false;
        }
        segments.slots.remove(0);
        segments.opened.retain(|&b| b != base);
        self.first.store(segments.slots[0].base, Ordering::Release);
        true
    }

    /// Follower mode: forgets the segments below `oldest`, which the writer
    /// removed (the newest is kept whatever happens).
    pub(crate) fn forget_below(&self, oldest: u64) {
        let mut segments = self.inner.write();
        let gone = segments.slots.partition_point(|s| s.base < oldest);
        let gone = gone.min(segments.slots.len() - 1);
        if gone > 0 {
            segments.slots.drain(..gone);
            self.first.store(segments.slots[0].base, Ordering::Release);
        }
    }

    /// Drops every segment this set holds open, so that no map of the log's
    /// files outlives its lock. Lookups find nothing afterwards.
    pub(crate) fn clear(&self) {
        let mut segments = self.inner.write();
        segments.slots.clear();
        segments.opened.clear();
    }

    pub(crate) fn extent(&self) -> Extent {
        let segments = self.inner.read();
        Extent {
            segments: segments.slots.len(),
            open: segments.opened.len(),
            bytes: segments.slots.iter().map(|s| s.len).sum(),
        }
    }

    /// The offset of the first record with a timestamp of at least `micros`
    /// (`end` if there is none).
    pub(crate) fn offset_for_time(&self, micros: u64, end: u64) -> Result<u64> {
        let bases = self.bases();
        // The last segment whose first record is older than `micros` holds
        // the answer, or else its successor starts with it.
        let (mut lo, mut hi) = (0usize, bases.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let older = match self.segment_for(bases[mid])? {
                Some(segment) => segment.first_timestamp()?.is_some_and(|ts| ts < micros),
                None => true,
            };
            if older {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        if lo == 0 {
            return Ok(self.first().max(bases.first().copied().unwrap_or(0)));
        }
        let Some(segment) = self.segment_for(bases[lo - 1])? else {
            return Ok(self.first());
        };
        match segment.locate_time(micros)? {
            Some((_, offset)) => Ok(offset.min(end)),
            None => Ok(bases.get(lo).copied().unwrap_or(end).min(end)),
        }
    }
}
