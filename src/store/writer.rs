//! The single writer of a log: placing frames, group commit, rolls, and the
//! durability levels.
//!
//! One mutex guards the writer state. An append encodes its frames into the
//! shared pending buffer under the mutex and then needs its records written
//! (and, for `EveryAppend`, synced). The first appender that finds no I/O in
//! flight becomes the leader: it takes the whole pending buffer, releases
//! the mutex, issues one `pwrite` (and one `fdatasync`), and on return
//! publishes the new end through the notifier and wakes everyone whose
//! records it covered. Appenders arriving meanwhile fill the next buffer, so
//! N concurrent appenders share one sync (group commit). Readers never take
//! the writer mutex: they read the published end and the segment's
//! read-only map. Any failed write or sync poisons the writer: no later call
//! reports success until the log is reopened.
//!
//! A committing append ([`Writer::append`] with a checkpoint) places the
//! checkpoint's control frames first and its records after them, all in
//! one segment and one write, so the batch is all or nothing on disk. The
//! writer keeps the newest checkpoint of every name and carries them into
//! each new segment at a roll, so the newest segment always holds them all:
//! finding one never reaches back further, and retention never removes one.
//!
//! The writer is generic over its active segment ([`Active`]) and reaches
//! the rest of the store (new segments, retention, background syncs) through
//! [`Host`], so that the loom models in `src/store/loom_tests.rs` run this
//! very code over a model file. Its locks and atomics come from
//! [`crate::sync`] for the same reason.

use std::collections::BTreeMap;
use std::io;
use std::mem;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::index::IndexBuilder;
use super::notifier::Notifier;
use crate::error::{Error, Result};
use crate::format::{
    self, encode_index_entry, seal_frame, FrameKind, Layout, Watermark, FRAME_OVERHEAD,
    SOURCE_TIME_LEN,
};
use crate::options::Durability;
use crate::record::{now_micros, Timestamp};
use crate::sync::{self, AtomicU64, Condvar, Mutex, MutexGuard, Ordering};

/// The watermark slot is rewritten at most this often: each rewrite dirties
/// one more page for the next sync, and a stale watermark only means a
/// longer scan after a crash.
const WATERMARK_EVERY: Duration = Duration::from_millis(100);

/// A `Buffered` or `Interval` writer asks the OS to start writing the
/// active segment out each time this much more of it is written
/// (`sync_file_range` on Linux). Otherwise a `Buffered` segment's data
/// waits in the page cache for the sync that seals it at the roll, which
/// then writes up to a whole segment while every append waits: 38-40 ms
/// for a 64 MiB segment on the README's machine (an `Interval` log's, up to
/// an interval's worth). (RocksDB's `bytes_per_sync` does the same.)
const WRITEBACK_BYTES: u64 = 1 << 20;
/// The page size the writeback stretches are rounded down to.
const WRITEBACK_PAGE: u64 = 4096;
/// How many times, at most, a sync round's leader yields to let the
/// appenders the last round let go place their next records first. (The
/// loom models explore every interleaving of each yield: a smaller bound
/// keeps them to minutes and checks the same code.)
#[cfg(not(loom))]
const GATHER_YIELDS: usize = 16;
#[cfg(loom)]
const GATHER_YIELDS: usize = 4;

/// The segment the writer appends to.
pub(crate) trait Active: Send + Sync {
    /// The offset of its first record.
    fn base(&self) -> u64;
    /// Its size: no frame may end past it.
    fn capacity(&self) -> u64;
    /// Its file, for errors.
    fn path(&self) -> &Path;
    /// Its index file, for errors.
    fn index_path(&self) -> &Path;
    /// Writes frames at byte position `pos`.
    fn write(&self, frames: &[u8], pos: u64) -> io::Result<()>;
    /// Writes encoded index entries from entry number `at`.
    fn write_index(&self, entries: &[u8], at: u64) -> io::Result<()>;
    /// `fdatasync` of the segment file.
    fn sync(&self) -> io::Result<()>;
    /// Asks the OS to start writing bytes `from..to` of the segment file
    /// to disk, without waiting: a hint that makes nothing durable.
    fn start_writeback(&self, from: u64, to: u64) -> io::Result<()>;
    /// Writes the durable-watermark slot (everything before `mark.pos` is
    /// already on stable storage).
    fn write_watermark(&self, mark: &Watermark) -> io::Result<()>;
    /// Makes frames up to byte `limit`, offsets below `next` and the first
    /// `index_count` index entries visible to readers.
    fn publish(&self, limit: u64, next: u64, index_count: u64);
}

/// What went wrong in the writer's I/O: the operation, the file, the error.
pub(crate) type Failure = (&'static str, PathBuf, io::Error);

/// The rest of the store, as the writer needs it.
pub(crate) trait Host<A> {
    /// The readable end, and the readers waiting for it.
    fn notifier(&self) -> &Notifier;
    /// Starts the segment after the active one at offset `base`, holding
    /// the control frames `initial` (the carried checkpoints): created with
    /// them durable, its directory entry durable, and added to the segment
    /// set.
    fn next_segment(
        &self,
        base: u64,
        last_ts: u64,
        initial: &[u8],
    ) -> std::result::Result<Arc<A>, Failure>;
    /// The newest whole checkpoint of each name in the active segment (its
    /// published frames), by name: body bytes.
    fn checkpoints(&self) -> Result<Checkpoints>;
    /// A segment was sealed: retention may remove old ones.
    fn rolled(&self);
    /// The active segment is half full: the next one may be prepared.
    fn half_full(&self);
    /// Records were written that no sync covers (`Interval`): a background
    /// sync is due within the interval.
    fn unsynced(&self);
    /// Offsets below `next` are durable now: a notice for followers in
    /// other processes (best effort; it is not a durability record).
    fn durable(&self, next: u64);
    /// Frames are about to be written to the segment at `base` up to byte
    /// `end` (the space after them may be being prepared).
    fn writing(&self, _base: u64, _end: u64) {}
}

/// The newest checkpoint body of each name.
pub(crate) type Checkpoints = BTreeMap<String, Vec<u8>>;

/// What the writer is configured with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WriterConfig {
    pub(crate) durability: Durability,
    pub(crate) buffer_bytes: usize,
    pub(crate) record_limit: u32,
    pub(crate) index_interval: u32,
}

/// Where the writer resumes in the active segment after opening.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tail {
    pub(crate) pos: u64,
    pub(crate) next: u64,
    pub(crate) last_ts: u64,
    pub(crate) index_count: u64,
    pub(crate) index_last_pos: Option<u64>,
}

/// The writer of one log.
#[derive(Debug)]
pub(crate) struct Writer<A> {
    config: WriterConfig,
    state: Mutex<State<A>>,
    io_done: Condvar,
    /// Offsets below are handed out (some may still be buffered).
    assigned: AtomicU64,
    /// Offsets below are on stable storage.
    durable: AtomicU64,
    /// `fdatasync` calls on segment data.
    syncs: AtomicU64,
    /// Appends placed so far, and how many of the first of them a sync
    /// has covered whole (frames that take no offset included, which the
    /// offsets alone cannot tell).
    appends: AtomicU64,
    durable_appends: AtomicU64,
}

#[derive(Debug)]
struct State<A> {
    /// `None` once the writer has closed and let go of its segment.
    active: Option<Arc<A>>,
    /// Frames placed but not yet handed to a write; they start at `buf_pos`.
    buf: Vec<u8>,
    spare: Vec<u8>,
    buf_pos: u64,
    index_buf: Vec<u8>,
    index_spare: Vec<u8>,
    /// Index entries of the active segment: assigned, and handed to writes.
    index_assigned: u64,
    index_written: u64,
    index_builder: IndexBuilder,
    /// The offset after the last placed frame.
    placed: u64,
    /// Where the active segment's own frames start (after the checkpoints
    /// carried into it).
    segment_start: u64,
    /// The newest checkpoint of each name, once known: loaded from the
    /// active segment at the first committing append or roll (unless the
    /// writer started it empty), then kept current.
    checkpoints: Option<Checkpoints>,
    last_ts: u64,
    /// Offsets below are written to the OS / on stable storage.
    written: u64,
    /// Appends whose frames are all written (see `Writer::appends`).
    written_appends: u64,
    written_pos: u64,
    /// Where the OS was last asked to start writing the active segment
    /// out (see [`WRITEBACK_BYTES`]).
    writeback_pos: u64,
    durable: u64,
    io_busy: bool,
    sync_busy: bool,
    rolling: bool,
    /// Appenders waiting for a sync whose records are in `buf`, not yet
    /// handed to a write round.
    gathered: usize,
    /// How many appenders the last sync round carried: it let them go, and
    /// they come back with their next records.
    riders: usize,
    /// The next segment was asked for, for the roll after the active one.
    spare_requested: bool,
    last_watermark: Instant,
    poisoned: Option<Poison>,
    /// `close` has begun: no new appends, syncs or flushes are taken, so
    /// that what close commits is everything ever placed.
    closing: bool,
    closed: bool,
}

#[derive(Clone, Debug)]
struct Poison {
    op: &'static str,
    path: PathBuf,
    source: Arc<io::Error>,
}

impl Poison {
    fn error(&self) -> Error {
        Error::Poisoned {
            op: self.op,
            path: self.path.clone(),
            source: self.source.clone(),
        }
    }
}

/// How the writer was left by [`Writer::stop`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Everything placed is durable and the closed watermark is written: the
    /// next open spares itself the search past the end.
    Clean,
    /// Records were not durable (or the writer had failed): the next open
    /// recovers as after a crash.
    AsCrashed,
}

impl<A: Active> Writer<A> {
    pub(crate) fn new(config: WriterConfig, active: Arc<A>, tail: Tail) -> Writer<A> {
        let state = State {
            active: Some(active),
            buf: Vec::new(),
            spare: Vec::new(),
            buf_pos: tail.pos,
            index_buf: Vec::new(),
            index_spare: Vec::new(),
            index_assigned: tail.index_count,
            index_written: tail.index_count,
            index_builder: IndexBuilder::new(config.index_interval, tail.index_last_pos),
            placed: tail.next,
            segment_start: format::RECORDS_START,
            checkpoints: (tail.pos == format::RECORDS_START).then(Checkpoints::new),
            last_ts: tail.last_ts,
            written: tail.next,
            written_appends: 0,
            written_pos: tail.pos,
            writeback_pos: tail.pos,
            durable: tail.next,
            io_busy: false,
            sync_busy: false,
            rolling: false,
            gathered: 0,
            riders: 0,
            spare_requested: false,
            last_watermark: Instant::now(),
            poisoned: None,
            closing: false,
            closed: false,
        };
        Writer {
            config,
            state: Mutex::new(state),
            io_done: Condvar::new(),
            assigned: AtomicU64::new(tail.next),
            durable: AtomicU64::new(tail.next),
            syncs: AtomicU64::new(0),
            appends: AtomicU64::new(0),
            durable_appends: AtomicU64::new(0),
        }
    }

    /// Appends placed so far: a ticket for [`durable_appends`]. Read after
    /// an append returns, it covers that append (and perhaps later ones).
    ///
    /// [`durable_appends`]: Writer::durable_appends
    pub(crate) fn appends(&self) -> u64 {
        self.appends.load(Ordering::Acquire)
    }

    /// How many of the first appends are durable whole.
    pub(crate) fn durable_appends(&self) -> u64 {
        self.durable_appends.load(Ordering::Acquire)
    }

    /// The offset the next append gets.
    pub(crate) fn assigned(&self) -> u64 {
        self.assigned.load(Ordering::Acquire)
    }

    /// Offsets below are on stable storage.
    pub(crate) fn durable(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The error that poisoned the writer, if one did.
    pub(crate) fn poison(&self) -> Option<Error> {
        self.state.lock().poisoned.as_ref().map(Poison::error)
    }

    /// Closes the writer for good, whatever state `close` or `stop` left
    /// it in (a failed close leaves it open), and lets go of the active
    /// segment and its map once no I/O on it is in flight.
    pub(crate) fn release(&self) {
        let mut w = self.state.lock();
        w.closing = true;
        while w.io_busy || w.sync_busy || w.rolling {
            self.io_done.wait(&mut w);
        }
        w.closed = true;
        w.active = None;
        self.io_done.notify_all();
    }

    // ---- appending --------------------------------------------------------

    /// Appends `count` records, each encoded by `encode(i, out)` appending
    /// its payload to `out`. Either every record is placed or none is. With
    /// a `checkpoint` (name, body), its control frames go first and the
    /// whole batch into one segment.
    pub(crate) fn append(
        &self,
        host: &impl Host<A>,
        count: usize,
        expected: Option<u64>,
        checkpoint: Option<(&str, &[u8])>,
        source_times: Option<&[Timestamp]>,
        mut encode: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
    ) -> Result<Range<u64>> {
        debug_assert!(source_times.is_none_or(|times| times.len() == count));
        let mut w = self.state.lock();
        self.check_writable(&mut w)?;
        if let Some(expected) = expected {
            if expected != w.placed {
                return Err(Error::Conflict {
                    expected,
                    actual: w.placed,
                });
            }
        }
        let first = w.placed;
        if count == 0 && checkpoint.is_none() {
            return Ok(first..first);
        }
        let ts = now_micros().max(w.last_ts);
        let start = w.buf.len();
        let max = self.config.record_limit;
        if let Some((name, body)) = checkpoint {
            if w.checkpoints.is_none() {
                w.checkpoints = Some(host.checkpoints()?);
            }
            let too_large = || Error::RecordTooLarge {
                size: body.len(),
                max,
            };
            let records = u32::try_from(count).map_err(|_| too_large())?;
            let chunks =
                format::encode_checkpoint(name, records, body, max).ok_or_else(too_large)?;
            // What every new segment will carry, with this one: at most half
            // of a segment (new segments grow past `segment_bytes` when they
            // must, to hold a record of the largest size beside them).
            let size = |name: &str, body: &[u8]| {
                format::checkpoint_frames_len(name, body.len(), max, FRAME_OVERHEAD)
            };
            let known = w.checkpoints.as_ref().expect("loaded above");
            let carried: u64 = known
                .iter()
                .filter(|(known, _)| known.as_str() != name)
                .map(|(name, body)| size(name, body))
                .sum::<u64>()
                + size(name, body);
            let room = (w.active().capacity() - format::RECORDS_START) / 2;
            if carried > room {
                return Err(Error::CheckpointsTooLarge {
                    bytes: carried,
                    max: room,
                });
            }
            seal_control_frames(&mut w.buf, &chunks, first, ts);
        }
        // A panicking Serialize impl must not leave half a frame behind.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            seal_frames(&mut w.buf, count, first, ts, max, source_times, &mut encode)
        }));
        match encoded {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                w.buf.truncate(start);
                return Err(e);
            }
            Err(panic) => {
                w.buf.truncate(start);
                drop(w);
                std::panic::resume_unwind(panic);
            }
        }
        w.last_ts = ts;
        if let Err(e) = self.place(host, &mut w, start, first, checkpoint.is_some()) {
            // A roll failed midway: the frames placed before it were
            // written and published, the rest dropped. (A committing batch
            // is placed whole or not at all.)
            self.assigned.store(w.placed, Ordering::Release);
            return Err(e);
        }
        if let Some((name, body)) = checkpoint {
            let known = w.checkpoints.get_or_insert_with(Checkpoints::new);
            known.insert(name.to_owned(), body.to_vec());
        }
        // (Under the lock: a write round that takes the buffer after this
        // point sees this append's count. Only appends change the count,
        // all of them under the lock, so it needs no read-modify-write.)
        let ticket = self.appends.load(Ordering::Relaxed) + 1;
        self.appends.store(ticket, Ordering::Release);
        let end = first + count as u64;
        debug_assert_eq!(w.placed, end);
        self.assigned.store(end, Ordering::Release);
        match self.config.durability {
            Durability::EveryAppend => self.commit(host, &mut w, end, ticket, true),
            Durability::Interval(_) => self.commit(host, &mut w, end, ticket, false),
            Durability::Buffered => {
                if w.buf.len() >= self.config.buffer_bytes {
                    self.commit(host, &mut w, end, ticket, false)
                } else if host.notifier().is_waited_on() && host.notifier().take_waiting() {
                    // A reader has caught up and waits: write the buffer out
                    // now, so the record reaches it as an `Interval` append
                    // would. (Readers that fall behind leave appends to
                    // collect in the buffer.) The write round's publish no
                    // longer sees the waiting bit, so the waiters are woken
                    // here (after the writer's lock is released, so that
                    // other appenders need not wait for the wake-ups),
                    // whatever the write's outcome.
                    let written = self.commit(host, &mut w, end, ticket, false);
                    drop(w);
                    host.notifier().wake_queued();
                    written
                } else {
                    Ok(())
                }
            }
        }
        .map(|()| first..end)
    }

    fn check_writable(&self, w: &mut MutexGuard<'_, State<A>>) -> Result<()> {
        while w.rolling {
            self.io_done.wait(w);
        }
        if w.closed {
            return Err(Error::Closed);
        }
        if let Some(poison) = &w.poisoned {
            return Err(poison.error());
        }
        if w.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// Gives the frames in `buf[at..]` their positions and index entries,
    /// rolling to a new segment where one does not fit. An `atomic` batch
    /// (a checkpoint's) goes into one segment whole: it rolls first if the
    /// active segment has no room for all of it.
    fn place(
        &self,
        host: &impl Host<A>,
        w: &mut MutexGuard<'_, State<A>>,
        mut at: usize,
        mut offset: u64,
        atomic: bool,
    ) -> Result<()> {
        if atomic {
            let size = (w.buf.len() - at) as u64;
            if w.buf_pos + at as u64 + size > w.active().capacity() {
                if w.buf_pos + at as u64 > w.segment_start {
                    let tail = w.buf.split_off(at);
                    self.assigned.store(offset, Ordering::Release);
                    self.roll(host, w, offset)?;
                    at = w.buf.len();
                    w.buf.extend_from_slice(&tail);
                }
                let room = w.active().capacity() - (w.buf_pos + at as u64);
                if size > room {
                    w.buf.truncate(at);
                    return Err(Error::BatchTooLarge { size, max: room });
                }
            }
        }
        while at < w.buf.len() {
            let len = format::frame_len_field(&w.buf, at).expect("placed frame");
            let size = format::frame_size(len);
            let pos = w.buf_pos + at as u64;
            if pos + size > w.active().capacity() {
                if pos <= w.segment_start {
                    // Even a new segment has no room: the checkpoints
                    // carried into it leave less than a record's limit.
                    w.buf.truncate(at);
                    return Err(Error::RecordTooLarge {
                        size: size as usize,
                        max: (w.active().capacity() - pos) as u32,
                    });
                }
                let tail = w.buf.split_off(at);
                // The roll publishes the frames placed so far; the offset
                // the next append gets must not lag behind what readers
                // then see (a consumer could not commit past a record it
                // was given).
                self.assigned.store(offset, Ordering::Release);
                self.roll(host, w, offset)?;
                at = w.buf.len();
                w.buf.extend_from_slice(&tail);
                continue;
            }
            if format::frame_kind_field(&w.buf, at, Layout::V2) == Some(FrameKind::Record) {
                let ts = format::frame_timestamp_field(&w.buf, at).expect("placed frame");
                let base = w.active().base();
                if let Some(entry) = w.index_builder.observe(base, pos, offset, ts) {
                    w.index_buf.extend_from_slice(&encode_index_entry(&entry));
                    w.index_assigned += 1;
                }
                offset += 1;
            }
            at += size as usize;
            w.placed = offset;
        }
        Ok(())
    }

    /// Waits until offsets below `target`, and the first `ticket` appends
    /// whole (frames that take no offset included), are written (or synced,
    /// when `durable`), leading the I/O when nobody else is.
    fn commit(
        &self,
        host: &impl Host<A>,
        w: &mut MutexGuard<'_, State<A>>,
        target: u64,
        ticket: u64,
        durable: bool,
    ) -> Result<()> {
        let every_append = self.config.durability == Durability::EveryAppend;
        if durable || every_append {
            w.gathered += 1;
        }
        let mut yielded = false;
        loop {
            if let Some(poison) = &w.poisoned {
                return Err(poison.error());
            }
            let written = w.written >= target && w.written_appends >= ticket;
            let synced = w.durable >= target && self.durable_appends() >= ticket;
            if synced || (!durable && written) {
                return Ok(());
            }
            if w.closed {
                // Cannot happen while `close` refuses new work first; never
                // write to a closed log, whose lock may be another's now.
                return Err(Error::Closed);
            }
            if !written {
                // At most one fdatasync is in flight: of two concurrent
                // syncs of one file, Linux reports a writeback error to
                // only one, and the other would acknowledge records the
                // failed one lost.
                let syncing = durable || every_append;
                if w.io_busy || w.rolling || (syncing && w.sync_busy) {
                    self.io_done.wait(w);
                } else if syncing {
                    if !yielded {
                        // Before paying for a sync, let the appenders the
                        // last round let go place their next records, so
                        // this round carries them too (group commit): yield
                        // to them until as many have placed records as that
                        // round carried, a bounded number of times (one
                        // that does not come back costs this round its
                        // yields, and the next round expects fewer). A lone
                        // appender, or a group that formed while the last
                        // sync ran, yields once. A yield costs a
                        // microsecond; the sync, a hundred or more.
                        yielded = true;
                        for _ in 0..GATHER_YIELDS {
                            let placed = w.placed;
                            if w.io_busy {
                                break;
                            }
                            MutexGuard::unlocked(w, sync::yield_now);
                            // Records still arriving, or fewer appenders
                            // back than the last round carried: go on.
                            if w.placed == placed && w.gathered >= w.riders {
                                break;
                            }
                        }
                        continue;
                    }
                    self.write_round(host, w, true);
                } else {
                    self.write_round(host, w, false);
                }
            } else if w.sync_busy || w.io_busy || w.rolling {
                // Waiting for `io_busy` too: that round may be syncing.
                self.io_done.wait(w);
            } else {
                self.sync_round(host, w);
            }
        }
    }

    /// Writes every placed frame with one `pwrite` (and syncs, if asked),
    /// with the mutex released during the I/O.
    fn write_round(&self, host: &impl Host<A>, w: &mut MutexGuard<'_, State<A>>, sync: bool) {
        w.io_busy = true;
        let carried = mem::take(&mut w.gathered);
        if sync {
            w.riders = carried;
        }
        let spare = mem::take(&mut w.spare);
        let data = mem::replace(&mut w.buf, spare);
        let spare = mem::take(&mut w.index_spare);
        let index = mem::replace(&mut w.index_buf, spare);
        let segment = w.active().clone();
        let pos = w.buf_pos;
        let end_pos = pos + data.len() as u64;
        w.buf_pos = end_pos;
        let index_at = w.index_written;
        let index_count = w.index_assigned;
        w.index_written = index_count;
        let end = w.placed;
        // Every append counted so far has its frames written once this
        // round's are (an append counts itself before it lets go of the
        // lock after placing its frames).
        let appends = self.appends.load(Ordering::Acquire);
        let mark = Watermark {
            pos: end_pos,
            next: end,
            last_ts: w.last_ts,
            closed: false,
        };
        let write_mark = sync && w.last_watermark.elapsed() >= WATERMARK_EVERY;
        if write_mark {
            w.last_watermark = Instant::now();
        }
        let writeback = self.writeback_due(w, end_pos, sync);
        let (result, mut data, mut index) = MutexGuard::unlocked(w, || {
            let result = (|| {
                if !data.is_empty() {
                    host.writing(segment.base(), end_pos);
                    segment.write(&data, pos).map_err(|e| ("write", e))?;
                }
                if !index.is_empty() {
                    segment
                        .write_index(&index, index_at)
                        .map_err(|e| ("write index", e))?;
                }
                if let Some((from, to)) = writeback {
                    // Only a hint: if it fails, nothing is lost, and the
                    // sync that seals the segment reports any write error.
                    let _ = segment.start_writeback(from, to);
                }
                if sync {
                    segment.sync().map_err(|e| ("fdatasync", e))?;
                    self.syncs.fetch_add(1, Ordering::Relaxed);
                    // Outside the lock, like the sync: only one sync is in
                    // flight, so notices go out in order.
                    host.durable(end);
                    if write_mark {
                        segment
                            .write_watermark(&mark)
                            .map_err(|e| ("write header of", e))?;
                    }
                }
                Ok::<(), (&'static str, io::Error)>(())
            })();
            (result, data, index)
        });
        w.io_busy = false;
        data.clear();
        index.clear();
        w.spare = data;
        w.index_spare = index;
        match result {
            Ok(()) => {
                segment.publish(end_pos, end, index_count);
                w.written = end;
                w.written_appends = w.written_appends.max(appends);
                w.written_pos = end_pos;
                if sync {
                    w.durable = end;
                    self.durable.store(end, Ordering::Release);
                    self.durable_appends.fetch_max(appends, Ordering::AcqRel);
                }
                host.notifier().publish(end);
                if !w.spare_requested && end_pos * 2 >= segment.capacity() {
                    w.spare_requested = true;
                    host.half_full();
                }
                if w.durable < w.written
                    && matches!(self.config.durability, Durability::Interval(_))
                {
                    host.unsynced();
                }
            }
            Err((op, e)) => set_poison(w, op, segment.path(), e),
        }
        self.io_done.notify_all();
    }

    /// The stretch of the active segment a write round up to `end_pos`
    /// asks the OS to start writing out, if one is due: unless every
    /// append syncs, every [`WRITEBACK_BYTES`], whole pages only (the last
    /// one is still being filled).
    fn writeback_due(
        &self,
        w: &mut MutexGuard<'_, State<A>>,
        end_pos: u64,
        sync: bool,
    ) -> Option<(u64, u64)> {
        if sync || self.config.durability == Durability::EveryAppend {
            return None;
        }
        let to = end_pos - end_pos % WRITEBACK_PAGE;
        if to < w.writeback_pos + WRITEBACK_BYTES {
            return None;
        }
        let from = mem::replace(&mut w.writeback_pos, to);
        Some((from, to))
    }

    /// Syncs what is already written, with the mutex released.
    fn sync_round(&self, host: &impl Host<A>, w: &mut MutexGuard<'_, State<A>>) {
        w.sync_busy = true;
        let segment = w.active().clone();
        let target = w.written;
        // No write runs alongside a sync round: what is written now is
        // what it makes durable.
        let appends = w.written_appends;
        let mark = Watermark {
            pos: w.written_pos,
            next: target,
            last_ts: w.last_ts,
            closed: false,
        };
        let write_mark = w.last_watermark.elapsed() >= WATERMARK_EVERY;
        if write_mark {
            w.last_watermark = Instant::now();
        }
        let result = MutexGuard::unlocked(w, || {
            segment.sync().map_err(|e| ("fdatasync", e))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
            host.durable(target);
            if write_mark {
                segment
                    .write_watermark(&mark)
                    .map_err(|e| ("write header of", e))?;
            }
            Ok::<(), (&'static str, io::Error)>(())
        });
        w.sync_busy = false;
        match result {
            Ok(()) => {
                self.durable_appends.fetch_max(appends, Ordering::AcqRel);
                if target > w.durable {
                    w.durable = target;
                    self.durable.store(target, Ordering::Release);
                }
            }
            Err((op, e)) => set_poison(w, op, segment.path(), e),
        }
        self.io_done.notify_all();
    }

    /// Seals the active segment at offset `seal_next` (everything placed
    /// before it written and synced, so durability stays prefix-closed
    /// across segments) and starts a new one there.
    fn roll(
        &self,
        host: &impl Host<A>,
        w: &mut MutexGuard<'_, State<A>>,
        seal_next: u64,
    ) -> Result<()> {
        w.rolling = true;
        while w.io_busy || w.sync_busy {
            self.io_done.wait(w);
        }
        // The newest checkpoints move into the new segment: known ones
        // are all in the active segment's published frames until now.
        // Any failure here would lose them: the log stops taking writes.
        let cannot_carry = |w: &mut MutexGuard<'_, State<A>>, why: String| {
            let path = w.active().path().to_path_buf();
            set_poison(w, "carry the checkpoints of", &path, io::Error::other(why));
            w.rolling = false;
            self.io_done.notify_all();
            Err(w.poisoned.as_ref().expect("just set").error())
        };
        let known = match w.checkpoints.take() {
            Some(known) => known,
            None => match host.checkpoints() {
                Ok(known) => known,
                Err(e) => return cannot_carry(w, e.to_string()),
            },
        };
        let mut carried = Vec::new();
        for (name, body) in &known {
            // (None only if `max_record_bytes` was lowered below a
            // checkpoint chunk's fixed part since it was written.)
            let Some(chunks) = format::encode_checkpoint(name, 0, body, self.config.record_limit)
            else {
                let why = format!("checkpoint {name:?} does not fit max_record_bytes");
                return cannot_carry(w, why);
            };
            seal_control_frames(&mut carried, &chunks, seal_next, w.last_ts);
        }
        w.checkpoints = Some(known);
        let result = self
            .seal_active(host, w, seal_next)
            .and_then(|()| host.next_segment(seal_next, w.last_ts, &carried));
        w.rolling = false;
        match result {
            Ok(new) => {
                let start = format::RECORDS_START + carried.len() as u64;
                w.active = Some(new);
                w.buf_pos = start;
                w.written_pos = start;
                w.writeback_pos = start;
                w.segment_start = start;
                w.index_assigned = 0;
                w.index_written = 0;
                w.index_builder = IndexBuilder::new(self.config.index_interval, None);
                w.spare_requested = false;
                w.last_watermark = Instant::now();
            }
            Err((op, path, e)) => set_poison(w, op, &path, e),
        }
        self.io_done.notify_all();
        if let Some(poison) = &w.poisoned {
            return Err(poison.error());
        }
        // Retention problems do not fail the append that rolled; they are
        // retried at the next roll and reported by `apply_retention`.
        host.rolled();
        Ok(())
    }

    /// The first half of a roll: writes and syncs what is placed in the
    /// active segment, publishes its final extent and marks it closed.
    fn seal_active(
        &self,
        host: &impl Host<A>,
        w: &mut MutexGuard<'_, State<A>>,
        seal_next: u64,
    ) -> std::result::Result<(), Failure> {
        if let Some(poison) = &w.poisoned {
            let source = io::Error::new(poison.source.kind(), poison.source.to_string());
            return Err((poison.op, poison.path.clone(), source));
        }
        let old = w.active().clone();
        let fail = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e| (op, path, e)
        };
        let end_pos = w.buf_pos + w.buf.len() as u64;
        if !w.buf.is_empty() {
            host.writing(old.base(), end_pos);
            old.write(&w.buf, w.buf_pos)
                .map_err(fail("write", old.path()))?;
        }
        if !w.index_buf.is_empty() {
            old.write_index(&w.index_buf, w.index_written)
                .map_err(fail("write index", old.index_path()))?;
        }
        old.sync().map_err(fail("fdatasync", old.path()))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        old.publish(end_pos, seal_next, w.index_assigned);
        let mark = Watermark {
            pos: end_pos,
            next: seal_next,
            last_ts: w.last_ts,
            closed: true,
        };
        old.write_watermark(&mark)
            .map_err(fail("write header of", old.path()))?;
        w.buf.clear();
        w.index_buf.clear();
        w.written = seal_next;
        w.durable = seal_next;
        self.durable.store(seal_next, Ordering::Release);
        // Every counted append placed before the seal is in the old
        // segment, synced.
        let appends = self.appends.load(Ordering::Acquire);
        w.written_appends = w.written_appends.max(appends);
        self.durable_appends.fetch_max(appends, Ordering::AcqRel);
        host.durable(seal_next);
        host.notifier().publish(seal_next);
        Ok(())
    }

    /// The body of the newest checkpoint named `name`, if there is one.
    pub(crate) fn checkpoint(&self, host: &impl Host<A>, name: &str) -> Result<Option<Vec<u8>>> {
        let mut w = self.state.lock();
        self.check_writable(&mut w)?;
        if w.checkpoints.is_none() {
            w.checkpoints = Some(host.checkpoints()?);
        }
        Ok(w.checkpoints
            .as_ref()
            .and_then(|known| known.get(name).cloned()))
    }

    /// Writes out buffered appends (`Buffered` mode) so readers see them.
    pub(crate) fn flush(&self, host: &impl Host<A>) -> Result<()> {
        let mut w = self.state.lock();
        self.check_writable(&mut w)?;
        let target = w.placed;
        let ticket = self.appends();
        self.commit(host, &mut w, target, ticket, false)
    }

    /// Makes records below `target` (default: all appended) durable, and
    /// returns the offset it made durable up to.
    pub(crate) fn sync_to(&self, host: &impl Host<A>, target: Option<u64>) -> Result<u64> {
        let mut w = self.state.lock();
        self.check_writable(&mut w)?;
        // Everything appended (checkpoints of no record too), or the
        // records below an explicit target.
        let ticket = if target.is_none() { self.appends() } else { 0 };
        let target = target.unwrap_or(w.placed).min(w.placed);
        self.commit(host, &mut w, target, ticket, true)?;
        Ok(target)
    }

    /// The background `fdatasync` of `Durability::Interval`: covers
    /// everything written when it starts.
    pub(crate) fn background_sync(&self, host: &impl Host<A>) {
        let mut w = self.state.lock();
        // A sync in flight may have started before the records this one is
        // for were written: wait for it and look again.
        while w.io_busy || w.rolling || w.sync_busy {
            self.io_done.wait(&mut w);
        }
        if w.poisoned.is_some() || w.closed || w.durable >= w.written {
            return;
        }
        self.sync_round(host, &mut w);
    }

    /// Flushes and syncs everything placed, writes the closed watermark and
    /// syncs it. Appends are refused from the start; a second close (from
    /// another clone) waits for the first one's outcome.
    pub(crate) fn close(&self, host: &impl Host<A>) -> Result<()> {
        let mut w = self.state.lock();
        while w.closing && !w.closed && w.poisoned.is_none() {
            self.io_done.wait(&mut w);
        }
        if w.closed {
            return Ok(());
        }
        self.check_writable(&mut w)?;
        w.closing = true;
        let target = w.placed;
        let ticket = self.appends();
        self.commit(host, &mut w, target, ticket, true)?;
        while w.io_busy || w.sync_busy {
            self.io_done.wait(&mut w);
        }
        let mark = Watermark {
            pos: w.written_pos,
            next: w.written,
            last_ts: w.last_ts,
            closed: true,
        };
        let active = w.active().clone();
        let result = active.write_watermark(&mark).and_then(|()| active.sync());
        w.closed = true;
        self.io_done.notify_all();
        result.map_err(|e| Error::io("fdatasync", active.path(), e))
    }

    /// Stops the writer without blocking on a sync, for the last handle's
    /// drop: buffered appends are written out (they reach the OS, not the
    /// disk), and if then everything written is durable, the closed
    /// watermark is written (not synced: the data before it already is, so
    /// whenever it reaches the disk it is true) so that the next open is as
    /// quick as after a close. Otherwise the log is left as a crash leaves
    /// it, which the next open handles.
    pub(crate) fn stop(&self, host: &impl Host<A>) -> Stopped {
        let mut w = self.state.lock();
        // No appender is left (the last handle is going), and the
        // background jobs of this log have been waited for; a close in
        // another thread cannot be in progress either.
        if w.closed || w.poisoned.is_some() {
            w.closed = true;
            return Stopped::AsCrashed;
        }
        w.closing = true;
        if !w.buf.is_empty() && !w.io_busy && !w.rolling {
            self.write_round(host, &mut w, false);
        }
        let clean = w.poisoned.is_none()
            && w.buf.is_empty()
            && !w.io_busy
            && !w.sync_busy
            && w.durable == w.placed
            && self.durable_appends() >= self.appends()
            && {
                let mark = Watermark {
                    pos: w.written_pos,
                    next: w.written,
                    last_ts: w.last_ts,
                    closed: true,
                };
                w.active().write_watermark(&mark).is_ok()
            };
        w.closed = true;
        self.io_done.notify_all();
        if clean {
            Stopped::Clean
        } else {
            Stopped::AsCrashed
        }
    }
}

/// Appends a control frame for each payload in `chunks` to `buf`, with the
/// offset of the record after them and timestamp `ts`.
fn seal_control_frames(buf: &mut Vec<u8>, chunks: &[Vec<u8>], next: u64, ts: u64) {
    for chunk in chunks {
        let frame = buf.len();
        buf.extend_from_slice(&[0; FRAME_OVERHEAD]);
        buf.extend_from_slice(chunk);
        seal_frame(&mut buf[frame..], next, ts, FrameKind::Control, None);
    }
}

/// Encodes `count` records at the end of `buf` as frames with offsets from
/// `first` and timestamp `ts` (and the source time at the same index of
/// `source_times`), each payload written in place by `encode`.
fn seal_frames(
    buf: &mut Vec<u8>,
    count: usize,
    first: u64,
    ts: u64,
    max: u32,
    source_times: Option<&[Timestamp]>,
    encode: &mut impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    for i in 0..count {
        let frame = buf.len();
        let source_time = source_times.map(|times| times[i].as_micros());
        let header = FRAME_OVERHEAD + source_time.map_or(0, |_| SOURCE_TIME_LEN);
        buf.resize(frame + header, 0);
        encode(i, buf)?;
        let size = buf.len() - frame - header;
        if size > max as usize {
            return Err(Error::RecordTooLarge { size, max });
        }
        seal_frame(
            &mut buf[frame..],
            first + i as u64,
            ts,
            FrameKind::Record,
            source_time,
        );
    }
    Ok(())
}

impl<A> State<A> {
    /// The active segment. Every path that does I/O runs only while the
    /// writer is open (`check_writable` and `commit` refuse a closed one),
    /// and only [`Writer::release`] of a closed writer takes it away.
    fn active(&self) -> &Arc<A> {
        self.active
            .as_ref()
            .expect("an open writer has an active segment")
    }
}

fn set_poison<A>(w: &mut State<A>, op: &'static str, path: &Path, error: io::Error) {
    if w.poisoned.is_none() {
        w.poisoned = Some(Poison {
            op,
            path: path.to_path_buf(),
            source: Arc::new(error),
        });
    }
}
