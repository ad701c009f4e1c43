//! Zeros written ahead of the writer in a sparse active segment.
//!
//! A segment made from a spare (see [`super::spare`]) is zero-filled and
//! synced whole before its first record, so a sync after an append
//! persists data only. The first segment of a new log, a segment rolled
//! into before its spare was ready, and a sparse active segment found at
//! open are not: every `fdatasync` there also persists the file system's
//! allocation of the blocks the append touched, which halves the rate of
//! durable appends. Once the writer has written 1 MiB into such a segment
//! (a log that appends little never gets there, and pays nothing), this
//! module keeps a few MiB after the writer's position written with zeros,
//! on the shared background threads (the long-job lane): the writer's next
//! sync persists their allocation once, and the syncs after it persist
//! data only, as in a spare.
//!
//! The zeros never land on a record. The writer tells this module how far
//! each write reaches before making it ([`ZeroAhead::writing`]); zeros are
//! written in chunks under the same lock, each starting at or after every
//! position the writer has announced and at or after what is filled, and
//! the writer writes without the lock only below what is filled. Zeros are
//! also what the unwritten part of a sparse segment reads as, so the bytes
//! on disk mean the same with or without them, at any point of a crash.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::background::{self, Lane};
use crate::storage::{OpenMode, Storage};

/// How far past the writer the zeros reach once refilled.
pub(crate) const AHEAD: u64 = 4 << 20;
/// A refill starts when the writer comes this close to the end of the
/// zeros.
const LOW_WATER: u64 = 2 << 20;
/// Zeros start only once the writer has written this much into the
/// segment (or a sixteenth of a smaller segment): a log that appends a few
/// records (one of a thousand quiet logs, say) would otherwise pay, in its
/// next sync, for [`AHEAD`] bytes of zeros it may never reach, and a
/// thousand of them for gigabytes.
const START_AFTER: u64 = 1 << 20;

/// How much the writer writes into a segment of `capacity` bytes before
/// zeros are written ahead of it.
fn start_after(capacity: u64) -> u64 {
    START_AFTER.min(capacity / 16)
}
/// Zeros are written in pieces of this size, each under the lock.
const CHUNK: usize = 256 << 10;

/// The zero-filling of one log's active segment.
#[derive(Debug)]
pub(crate) struct ZeroAhead {
    storage: Storage,
    file_mode: u32,
    /// Every byte of the target segment below this is written (records or
    /// zeros); `u64::MAX` when there is nothing to fill.
    filled: AtomicU64,
    state: Mutex<State>,
    /// Notified when a fill job ends.
    idle: Condvar,
}

#[derive(Debug, Default)]
struct State {
    target: Option<Target>,
    /// The furthest position the writer has announced in the target.
    claim: u64,
    /// Where the writer began in the target.
    start: u64,
    /// A fill job is queued or writing.
    queued: bool,
    /// A fill job is writing (a shutdown waits for it).
    writing: bool,
    /// The log is closing: nothing more is written.
    closed: bool,
}

#[derive(Clone, Debug)]
struct Target {
    base: u64,
    path: PathBuf,
    capacity: u64,
}

impl ZeroAhead {
    pub(crate) fn new(storage: &Storage, file_mode: u32) -> ZeroAhead {
        ZeroAhead {
            storage: storage.clone(),
            file_mode,
            filled: AtomicU64::new(u64::MAX),
            state: Mutex::new(State::default()),
            idle: Condvar::new(),
        }
    }

    /// The writer appends to the segment at `base` (its file at `path`,
    /// `capacity` bytes) from byte `end` on. With `zeroed`, it is written
    /// whole already (made from a spare) and nothing is filled.
    pub(crate) fn retarget(&self, base: u64, path: PathBuf, capacity: u64, end: u64, zeroed: bool) {
        let mut state = self.state.lock();
        if zeroed || state.closed {
            state.target = None;
            self.filled.store(u64::MAX, Ordering::Release);
            return;
        }
        state.target = Some(Target {
            base,
            path,
            capacity,
        });
        state.claim = end;
        state.start = end;
        self.filled.store(end, Ordering::Release);
    }

    /// The writer is about to write the segment at `base` up to byte `end`.
    /// Below what is filled it writes without a lock; past it, it claims
    /// the bytes first, so no chunk of zeros starts before `end`. Starts a
    /// refill when the writer comes near the end of the zeros.
    pub(crate) fn writing(self: &Arc<Self>, base: u64, end: u64) {
        let filled = self.filled.load(Ordering::Acquire);
        if end.saturating_add(LOW_WATER) <= filled {
            return;
        }
        let mut state = self.state.lock();
        let Some(capacity) = state
            .target
            .as_ref()
            .filter(|t| t.base == base)
            .map(|t| t.capacity)
        else {
            return;
        };
        state.claim = state.claim.max(end);
        if state.queued || state.closed || end >= capacity {
            return;
        }
        if end < state.start.saturating_add(start_after(capacity)) {
            return;
        }
        state.queued = true;
        drop(state);
        if self.storage.is_simulated() {
            // A simulated run stays one deterministic sequence of storage
            // operations, as spares do.
            self.fill();
            return;
        }
        let ahead = self.clone();
        background::run(Lane::Long, Box::new(move || ahead.fill()));
    }

    /// The fill job: zeros from what is filled (or the writer's claim) to
    /// [`AHEAD`] past it, chunk by chunk. Best effort: a
    /// failure leaves the segment sparse, as it would be without this.
    fn fill(&self) {
        {
            let mut state = self.state.lock();
            if state.closed {
                state.queued = false;
                return;
            }
            state.writing = true;
        }
        let result = self.fill_chunks();
        let mut state = self.state.lock();
        state.queued = false;
        state.writing = false;
        if result.is_err() {
            // A full disk, say: spend no more space or I/O on zeros.
            state.target = None;
            self.filled.store(u64::MAX, Ordering::Release);
        }
        self.idle.notify_all();
    }

    fn fill_chunks(&self) -> io::Result<()> {
        let (target, goal) = {
            let state = self.state.lock();
            let Some(target) = state.target.clone() else {
                return Ok(());
            };
            if state.closed {
                return Ok(());
            }
            let from = self.filled.load(Ordering::Acquire).max(state.claim);
            (
                target.clone(),
                from.saturating_add(AHEAD).min(target.capacity),
            )
        };
        let file = self
            .storage
            .open(&target.path, OpenMode::Existing, self.file_mode)?;
        loop {
            let state = self.state.lock();
            let same = state.target.as_ref().is_some_and(|t| t.base == target.base);
            if state.closed || !same {
                return Ok(());
            }
            let start = self.filled.load(Ordering::Acquire).max(state.claim);
            if start >= goal {
                break;
            }
            let end = goal.min(start + CHUNK as u64);
            // Under the lock: the writer cannot claim these bytes while
            // they are written.
            file.write_zeros(start, end - start)?;
            self.filled.store(end, Ordering::Release);
            drop(state);
        }
        // No sync here. A failed sync drops every unsynced write of the
        // file (fsyncgate), the writer's records included, and reports it
        // only to the call that failed: the writer would sync afterwards
        // without an error and count lost records as durable. The
        // writer's next sync makes the zeros durable with its records, and
        // every sync after that persists data only.
        Ok(())
    }

    /// Stops filling for good and waits for a job that is writing to end
    /// (one still queued behind other logs' work will do nothing): no zeros
    /// are written once the log has let go of its files.
    pub(crate) fn shutdown(&self) {
        let mut state = self.state.lock();
        state.closed = true;
        state.target = None;
        self.filled.store(u64::MAX, Ordering::Release);
        while state.writing {
            self.idle.wait(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The writer's side, as the store's writer does it: announce, then
    /// write, sequentially, with records of `len` bytes of a pattern.
    fn write_records(ahead: &Arc<ZeroAhead>, file: &crate::storage::File, from: u64, to: u64) {
        let mut pos = from;
        let mut i = 0u64;
        while pos < to {
            let len = (1 + (i * 7919) % 9000).min(to - pos);
            let bytes: Vec<u8> = (0..len).map(|k| 1 + ((pos + k) % 251) as u8).collect();
            ahead.writing(7, pos + len);
            file.write_at(&bytes, pos).unwrap();
            pos += len;
            i += 1;
        }
    }

    /// A sparse segment file of `capacity` bytes in `dir`, and a
    /// `ZeroAhead` for it (not yet targeted).
    fn sparse_segment(
        dir: &std::path::Path,
        capacity: u64,
    ) -> (PathBuf, crate::storage::File, Arc<ZeroAhead>) {
        let storage = Storage::os();
        let path = dir.join("segment");
        let file = storage.open(&path, OpenMode::CreateNew, 0o644).unwrap();
        file.set_len(capacity).unwrap();
        (path, file, Arc::new(ZeroAhead::new(&storage, 0o644)))
    }

    /// Waits for the queued fill job, if any, to end.
    fn wait_for_fills(ahead: &ZeroAhead) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while ahead.state.lock().queued {
            assert!(Instant::now() < deadline, "a fill never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn zeros_run_ahead_of_the_writer_and_never_land_on_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 24 << 20;
        let (path, file, ahead) = sparse_segment(dir.path(), capacity);
        let start = 4096;
        ahead.retarget(7, path.clone(), capacity, start, false);
        // The writer races the fill jobs over most of the segment.
        let written_to = 20 << 20;
        write_records(&ahead, &file, start, written_to);
        // Wait for the last fill to end, then check every byte.
        wait_for_fills(&ahead);
        let filled = ahead.filled.load(Ordering::Acquire);
        assert!(
            filled > written_to && filled <= written_to + AHEAD + CHUNK as u64,
            "filled to {filled}, written to {written_to}"
        );
        let mut bytes = vec![0u8; capacity as usize];
        file.read_at(&mut bytes, 0).unwrap();
        for (pos, &byte) in bytes
            .iter()
            .enumerate()
            .take(written_to as usize)
            .skip(start as usize)
        {
            let want = 1 + (pos as u64 % 251) as u8;
            assert_eq!(byte, want, "byte {pos} was overwritten");
        }
        assert!(bytes[written_to as usize..].iter().all(|&b| b == 0));
        // The zeros are allocated: the file has blocks past the records.
        if let Some(allocated) = file.allocated_len() {
            assert!(
                allocated >= filled - 64 * 1024,
                "{allocated} bytes allocated"
            );
        }
        // After a shutdown nothing is written any more.
        ahead.shutdown();
        ahead.writing(7, capacity - 1);
        assert!(!ahead.state.lock().queued);
    }

    #[test]
    fn a_log_that_writes_little_gets_no_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let capacity = 32 << 20;
        let (path, file, ahead) = sparse_segment(dir.path(), capacity);
        ahead.retarget(7, path, capacity, 4096, false);
        ahead.writing(7, 4096 + start_after(capacity) - 1);
        assert!(!ahead.state.lock().queued);
        assert_eq!(file.allocated_len().unwrap_or(0), 0);
        ahead.writing(7, 4096 + start_after(capacity));
        wait_for_fills(&ahead);
        let filled = ahead.filled.load(Ordering::Acquire);
        assert_eq!(filled, 4096 + start_after(capacity) + AHEAD);
        ahead.shutdown();
    }

    #[test]
    fn a_zeroed_segment_or_another_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _file, ahead) = sparse_segment(dir.path(), 8 << 20);
        ahead.retarget(7, path.clone(), 8 << 20, 4096, true);
        ahead.writing(7, 4096 + start_after(8 << 20));
        assert!(!ahead.state.lock().queued);
        ahead.retarget(7, path, 8 << 20, 4096, false);
        // Writes to another segment (the one before a roll) start nothing.
        ahead.writing(3, 4096 + start_after(8 << 20));
        assert!(!ahead.state.lock().queued);
        ahead.shutdown();
    }
}
