//! The untyped log: the list of segments, the single writer with its group
//! commit, durability levels, rolls, retention, and the lookups readers use.
//!
//! Concurrency design. One mutex guards the writer state. An append
//! encodes its frames into the shared pending buffer under the mutex and
//! then needs its records written (and, for `EveryAppend`, synced). The
//! first appender that finds no I/O in flight becomes the leader: it takes
//! the whole pending buffer, releases the mutex, issues one `pwrite` (and
//! one `fdatasync`), and on return publishes the new end and wakes everyone
//! whose records it covered. Appenders arriving meanwhile fill the next
//! buffer, so N concurrent appenders share one sync (group commit). Readers
//! never take the writer mutex: they read the published end from atomics
//! and frames from the segment's read-only map. Any failed write or sync
//! poisons the writer: no later call reports success until the log is
//! reopened.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::mem;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::codec::CodecError;
use crate::consumer::ConsumerState;
use crate::error::{Error, Result};
use crate::format::{
    self, encode_index_entry, seal_frame, Frame, Meta, Watermark, FRAME_OVERHEAD,
    SEGMENT_HEADER_LEN,
};
use crate::options::{Durability, Options};
use crate::recovery::{self, RecoveryReport};
use crate::retention;
use crate::segment::{IndexBuilder, Segment, SegmentConfig};
use crate::spare::Spares;
use crate::storage::DirLock;
use crate::subscribe::{Hub, Task};
use crate::time::now_micros;

const HEADER: u64 = SEGMENT_HEADER_LEN as u64;
/// The watermark slot is rewritten at most this often: each rewrite dirties
/// one more page for the next sync, and a stale watermark only means a
/// longer scan after a crash.
const WATERMARK_EVERY: Duration = Duration::from_millis(100);
/// How many times a sync round's leader yields to let woken appenders
/// join it, as long as each yield brought new records.
const GATHER_YIELDS: usize = 4;

/// The shared state behind every handle of one open log.
#[derive(Debug)]
pub(crate) struct Engine {
    pub(crate) dir: PathBuf,
    pub(crate) options: Options,
    config: SegmentConfig,
    segments: RwLock<Segments>,
    writer: Mutex<Writer>,
    io_done: Condvar,
    /// Offsets `[first, next)` are readable.
    first: AtomicU64,
    next: AtomicU64,
    /// Offsets below `assigned` have been handed out (some may be buffered).
    assigned: AtomicU64,
    durable: AtomicU64,
    report: RecoveryReport,
    lock: Mutex<Option<DirLock>>,
    /// Serializes follower refreshes and retention runs.
    maintenance: Mutex<()>,
    shutdown: AtomicBool,
    syncer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The next segment's file, prepared while the active one fills.
    spares: Option<Arc<Spares>>,
    indexes_rebuilt: AtomicU64,
    syncs: AtomicU64,
    preallocated: AtomicU64,
    pub(crate) consumers: Mutex<HashMap<String, Weak<ConsumerState>>>,
    hub: OnceLock<Hub>,
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

#[derive(Debug)]
struct Writer {
    active: Arc<Segment>,
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
    last_ts: u64,
    /// Offsets below are written to the OS / on stable storage.
    written: u64,
    written_pos: u64,
    durable: u64,
    io_busy: bool,
    sync_busy: bool,
    rolling: bool,
    /// A spare segment was requested for the roll after the active one.
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

/// A snapshot of a log's shape, from [`EventLog::stats`](crate::EventLog::stats).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// The first offset still in the log.
    pub first_offset: u64,
    /// The offset the next append gets.
    pub next_offset: u64,
    /// Offsets below this are on stable storage (as far as this handle
    /// knows; a read-only handle reports what it can read).
    pub durable_offset: u64,
    /// Segment files.
    pub segments: usize,
    /// Sealed segments currently open (mapped).
    pub open_segments: usize,
    /// Bytes of segment files on disk (segments are preallocated).
    pub bytes: u64,
    /// Indexes rebuilt from their segments since the log was opened.
    pub indexes_rebuilt: u64,
    /// `fdatasync` calls on segment data since the log was opened: with
    /// group commit, fewer than the appends that waited for one.
    pub syncs: u64,
    /// Segments started from a file prepared ahead of time (see
    /// [`Options::preallocate`](crate::Options::preallocate)); the other
    /// rolls found none ready and created a sparse file.
    pub preallocated_segments: u64,
}

impl Engine {
    pub(crate) fn open(options: Options, dir: &Path, meta: Meta) -> Result<Arc<Engine>> {
        let recovered = recovery::recover(&options, dir, &meta)?;
        let config = recovery::segment_config(&options);
        let tail = recovered.tail;
        let active = Arc::new(recovered.active);
        let mut slots: Vec<Slot> = recovered
            .sealed
            .iter()
            .map(|&(base, len)| Slot {
                base,
                len,
                segment: None,
            })
            .collect();
        slots.push(Slot {
            base: active.base,
            len: active.capacity(),
            segment: Some(active.clone()),
        });
        let first = slots[0].base;
        let writer = Writer {
            active,
            buf: Vec::new(),
            spare: Vec::new(),
            buf_pos: tail.pos,
            index_buf: Vec::new(),
            index_spare: Vec::new(),
            index_assigned: tail.index_count,
            index_written: tail.index_count,
            index_builder: IndexBuilder::new(options.index_interval_bytes, tail.index_last_pos),
            placed: tail.next,
            last_ts: tail.last_ts,
            written: tail.next,
            written_pos: tail.pos,
            durable: tail.next,
            io_busy: false,
            sync_busy: false,
            rolling: false,
            spare_requested: false,
            last_watermark: Instant::now(),
            poisoned: None,
            closing: false,
            closed: false,
        };
        let engine = Arc::new(Engine {
            dir: dir.to_path_buf(),
            config,
            segments: RwLock::new(Segments {
                slots,
                opened: VecDeque::new(),
            }),
            writer: Mutex::new(writer),
            io_done: Condvar::new(),
            first: AtomicU64::new(first),
            next: AtomicU64::new(tail.next),
            assigned: AtomicU64::new(tail.next),
            durable: AtomicU64::new(tail.next),
            report: recovered.report,
            lock: Mutex::new(recovered.lock),
            maintenance: Mutex::new(()),
            shutdown: AtomicBool::new(false),
            syncer: Mutex::new(None),
            spares: options.preallocates().then(|| {
                let (bytes, mode) = (options.segment_bytes, options.file_mode);
                Arc::new(Spares::new(&options.storage, dir, bytes, mode))
            }),
            indexes_rebuilt: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            preallocated: AtomicU64::new(0),
            consumers: Mutex::new(HashMap::new()),
            hub: OnceLock::new(),
            options,
        });
        if !engine.options.read_only {
            // Retention that fails here is retried at the next roll; the
            // log itself opened fine.
            let _ = engine.apply_retention(None);
            if let Durability::Interval(every) = engine.options.durability {
                start_syncer(&engine, every)
                    .map_err(|e| Error::io("start the sync thread for", dir, e))?;
            }
        }
        Ok(engine)
    }

    pub(crate) fn report(&self) -> &RecoveryReport {
        &self.report
    }

    pub(crate) fn first_offset(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// The offset the next append gets.
    pub(crate) fn next_offset(&self) -> u64 {
        if self.options.read_only {
            return self.next.load(Ordering::Acquire);
        }
        self.assigned.load(Ordering::Acquire)
    }

    pub(crate) fn durable_offset(&self) -> u64 {
        if self.options.read_only {
            return self.next.load(Ordering::Acquire);
        }
        self.durable.load(Ordering::Acquire)
    }

    // ---- appending --------------------------------------------------------

    /// Appends `count` records, each encoded by `encode(i, out)` appending
    /// its payload to `out`. Either every record is placed or none is.
    pub(crate) fn append_with(
        &self,
        count: usize,
        expected: Option<u64>,
        codec: &'static str,
        mut encode: impl FnMut(usize, &mut Vec<u8>) -> std::result::Result<(), CodecError>,
    ) -> Result<Range<u64>> {
        let mut w = self.writer.lock();
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
        if count == 0 {
            return Ok(first..first);
        }
        let ts = now_micros().max(w.last_ts);
        let start = w.buf.len();
        let max = self.options.record_limit();
        // A panicking Serialize impl must not leave half a frame behind.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for i in 0..count {
                let frame = w.buf.len();
                w.buf.extend_from_slice(&[0; FRAME_OVERHEAD]);
                if let Err(source) = encode(i, &mut w.buf) {
                    return Err(Error::Codec {
                        codec,
                        offset: None,
                        source,
                    });
                }
                let size = w.buf.len() - frame - FRAME_OVERHEAD;
                if size > max as usize {
                    return Err(Error::RecordTooLarge { size, max });
                }
                seal_frame(&mut w.buf[frame..], first + i as u64, ts);
            }
            Ok(())
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
        if let Err(e) = self.place(&mut w, start, first) {
            // A roll failed midway: the frames placed before it were
            // written and published, the rest dropped.
            self.assigned.store(w.placed, Ordering::Release);
            return Err(e);
        }
        let end = first + count as u64;
        debug_assert_eq!(w.placed, end);
        self.assigned.store(end, Ordering::Release);
        match self.options.durability {
            Durability::EveryAppend => self.commit(&mut w, end, true),
            Durability::Interval(_) => self.commit(&mut w, end, false),
            Durability::Buffered => {
                if w.buf.len() >= self.options.buffer_bytes {
                    self.commit(&mut w, end, false)?;
                } else {
                    // Live subscribers see buffered appends: the delivery
                    // thread flushes them when it wakes.
                    self.wake_subscribers();
                }
                Ok(())
            }
        }
        .map(|()| first..end)
    }

    fn check_writable(&self, w: &mut MutexGuard<'_, Writer>) -> Result<()> {
        if self.options.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
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
    /// rolling to a new segment where one does not fit.
    fn place(&self, w: &mut MutexGuard<'_, Writer>, mut at: usize, mut offset: u64) -> Result<()> {
        while at < w.buf.len() {
            let len = 8 + u64::from(format::read_u32(&w.buf, at).expect("placed frame"));
            let pos = w.buf_pos + at as u64;
            if pos + len > w.active.capacity() {
                let tail = w.buf.split_off(at);
                // The roll publishes the frames placed so far; the offset
                // the next append gets must not lag behind what readers
                // then see (a consumer could not commit past a record it
                // was given).
                self.assigned.store(offset, Ordering::Release);
                self.roll(w, offset)?;
                at = w.buf.len();
                w.buf.extend_from_slice(&tail);
                continue;
            }
            let ts = format::read_u64(&w.buf, at + 16).expect("placed frame");
            let base = w.active.base;
            if let Some(entry) = w.index_builder.observe(base, pos, offset, ts) {
                w.index_buf.extend_from_slice(&encode_index_entry(&entry));
                w.index_assigned += 1;
            }
            at += len as usize;
            offset += 1;
            w.placed = offset;
        }
        Ok(())
    }

    /// Waits until offsets below `target` are written (or synced, when
    /// `durable`), leading the I/O when nobody else is.
    fn commit(&self, w: &mut MutexGuard<'_, Writer>, target: u64, durable: bool) -> Result<()> {
        let every_append = self.options.durability == Durability::EveryAppend;
        let mut yielded = false;
        loop {
            if let Some(poison) = &w.poisoned {
                return Err(poison.error());
            }
            if w.durable >= target || (!durable && w.written >= target) {
                return Ok(());
            }
            if w.closed {
                // Cannot happen while `close` refuses new work first; never
                // write to a closed log, whose lock may be another's now.
                return Err(Error::Closed);
            }
            if w.written < target {
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
                        // last round just woke place their next records, so
                        // this round carries them too (group commit): yield
                        // while records keep arriving, a few times at most.
                        // A yield costs microseconds; the sync, milliseconds.
                        yielded = true;
                        for _ in 0..GATHER_YIELDS {
                            let placed = w.placed;
                            MutexGuard::unlocked(w, std::thread::yield_now);
                            if w.placed == placed || w.io_busy {
                                break;
                            }
                        }
                        continue;
                    }
                    self.write_round(w, true);
                } else {
                    self.write_round(w, false);
                }
            } else if w.sync_busy || w.io_busy || w.rolling {
                // Waiting for `io_busy` too: that round may be syncing.
                self.io_done.wait(w);
            } else {
                self.sync_round(w);
            }
        }
    }

    /// Writes every placed frame with one `pwrite` (and syncs, if asked),
    /// with the mutex released during the I/O.
    fn write_round(&self, w: &mut MutexGuard<'_, Writer>, sync: bool) {
        w.io_busy = true;
        let spare = mem::take(&mut w.spare);
        let data = mem::replace(&mut w.buf, spare);
        let spare = mem::take(&mut w.index_spare);
        let index = mem::replace(&mut w.index_buf, spare);
        let segment = w.active.clone();
        let pos = w.buf_pos;
        let end_pos = pos + data.len() as u64;
        w.buf_pos = end_pos;
        let index_at = w.index_written;
        let index_count = w.index_assigned;
        w.index_written = index_count;
        let end = w.placed;
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
        let (result, mut data, mut index) = MutexGuard::unlocked(w, || {
            let result = (|| {
                if !data.is_empty() {
                    segment
                        .file
                        .write_at(&data, pos)
                        .map_err(|e| ("write", e))?;
                }
                if !index.is_empty() {
                    segment
                        .index
                        .write(&index, index_at)
                        .map_err(|e| ("write index", e))?;
                }
                if sync {
                    segment.file.sync_data().map_err(|e| ("fdatasync", e))?;
                    self.syncs.fetch_add(1, Ordering::Relaxed);
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
                segment.index.publish(index_count);
                segment.publish(end_pos, end);
                w.written = end;
                w.written_pos = end_pos;
                if sync {
                    w.durable = end;
                    self.durable.store(end, Ordering::Release);
                }
                self.next.store(end, Ordering::Release);
                self.wake_subscribers();
                if !w.spare_requested && end_pos * 2 >= segment.capacity() {
                    if let Some(spares) = &self.spares {
                        w.spare_requested = true;
                        spares.request();
                    }
                }
            }
            Err((op, e)) => self.poison(w, op, &segment.path, e),
        }
        self.io_done.notify_all();
    }

    /// Syncs what is already written, with the mutex released.
    fn sync_round(&self, w: &mut MutexGuard<'_, Writer>) {
        w.sync_busy = true;
        let segment = w.active.clone();
        let target = w.written;
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
            segment.file.sync_data().map_err(|e| ("fdatasync", e))?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
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
                if target > w.durable {
                    w.durable = target;
                    self.durable.store(target, Ordering::Release);
                }
            }
            Err((op, e)) => self.poison(w, op, &segment.path, e),
        }
        self.io_done.notify_all();
    }

    fn poison(&self, w: &mut Writer, op: &'static str, path: &Path, error: io::Error) {
        if w.poisoned.is_none() {
            w.poisoned = Some(Poison {
                op,
                path: path.to_path_buf(),
                source: Arc::new(error),
            });
        }
    }

    /// Seals the active segment at offset `seal_next` (everything placed
    /// before it written and synced, so durability stays prefix-closed
    /// across segments) and starts a new one there.
    fn roll(&self, w: &mut MutexGuard<'_, Writer>, seal_next: u64) -> Result<()> {
        w.rolling = true;
        while w.io_busy || w.sync_busy {
            self.io_done.wait(w);
        }
        let result = self.roll_exclusive(w, seal_next);
        w.rolling = false;
        if let Err((op, path, e)) = result {
            self.poison(w, op, &path, e);
        }
        self.io_done.notify_all();
        if let Some(poison) = &w.poisoned {
            return Err(poison.error());
        }
        // Retention problems do not fail the append that rolled; they are
        // retried at the next roll and reported by `apply_retention`.
        let _ = self.apply_retention(None);
        Ok(())
    }

    fn roll_exclusive(
        &self,
        w: &mut MutexGuard<'_, Writer>,
        seal_next: u64,
    ) -> std::result::Result<(), (&'static str, PathBuf, io::Error)> {
        if let Some(poison) = &w.poisoned {
            let source = io::Error::new(poison.source.kind(), poison.source.to_string());
            return Err((poison.op, poison.path.clone(), source));
        }
        let old = w.active.clone();
        let fail = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e| (op, path, e)
        };
        let end_pos = w.buf_pos + w.buf.len() as u64;
        if !w.buf.is_empty() {
            old.file
                .write_at(&w.buf, w.buf_pos)
                .map_err(fail("write", &old.path))?;
        }
        if !w.index_buf.is_empty() {
            old.index
                .write(&w.index_buf, w.index_written)
                .map_err(fail("write index", &old.index_path))?;
        }
        old.file.sync_data().map_err(fail("fdatasync", &old.path))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        old.index.publish(w.index_assigned);
        old.seal(end_pos, seal_next);
        let mark = Watermark {
            pos: end_pos,
            next: seal_next,
            last_ts: w.last_ts,
            closed: true,
        };
        old.write_watermark(&mark)
            .map_err(fail("write header of", &old.path))?;
        w.buf.clear();
        w.index_buf.clear();
        w.written = seal_next;
        w.durable = seal_next;
        self.durable.store(seal_next, Ordering::Release);
        self.next.store(seal_next, Ordering::Release);
        self.wake_subscribers();

        let storage = &self.options.storage;
        let spare = self.spares.as_ref().and_then(|spares| {
            let file = spares.take()?;
            Some((file, spares.path()))
        });
        w.spare_requested = false;
        let from_spare = spare.is_some();
        let new = Segment::create(
            storage,
            &self.dir,
            seal_next,
            self.options.segment_bytes,
            w.last_ts,
            &self.config,
            spare,
        )
        .map_err(|e| match e {
            Error::Io { op, path, source } => (op, path, source),
            other => (
                "create",
                self.dir.clone(),
                io::Error::other(other.to_string()),
            ),
        })?;
        // The new file's directory entry must be durable before any record
        // in it is acknowledged.
        storage
            .sync_dir(&self.dir)
            .map_err(fail("fsync directory", &self.dir))?;
        if from_spare {
            self.preallocated.fetch_add(1, Ordering::Relaxed);
        }
        let new = Arc::new(new);
        {
            let mut segments = self.segments.write();
            segments.slots.push(Slot {
                base: seal_next,
                len: new.capacity(),
                segment: Some(new.clone()),
            });
            segments.opened.push_back(old.base);
            self.evict(&mut segments);
        }
        w.active = new;
        w.buf_pos = HEADER;
        w.written_pos = HEADER;
        w.index_assigned = 0;
        w.index_written = 0;
        w.index_builder = IndexBuilder::new(self.options.index_interval_bytes, None);
        w.last_watermark = Instant::now();
        Ok(())
    }

    /// Writes out buffered appends (`Buffered` mode) so readers see them.
    pub(crate) fn flush(&self) -> Result<()> {
        if self.options.read_only {
            return Ok(());
        }
        let mut w = self.writer.lock();
        self.check_writable(&mut w)?;
        let target = w.placed;
        self.commit(&mut w, target, false)
    }

    /// Makes every record appended so far durable.
    pub(crate) fn sync(&self) -> Result<u64> {
        self.sync_to(None)
    }

    /// Makes records below `target` (default: all appended) durable.
    pub(crate) fn sync_to(&self, target: Option<u64>) -> Result<u64> {
        if self.options.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        let mut w = self.writer.lock();
        self.check_writable(&mut w)?;
        let target = target.unwrap_or(w.placed).min(w.placed);
        self.commit(&mut w, target, true)?;
        Ok(target)
    }

    /// The background `fdatasync` of `Durability::Interval`.
    fn background_sync(&self) {
        let mut w = self.writer.lock();
        while w.io_busy || w.rolling {
            self.io_done.wait(&mut w);
        }
        if w.poisoned.is_some() || w.closed || w.durable >= w.written || w.sync_busy {
            return;
        }
        self.sync_round(&mut w);
    }

    /// Flushes, syncs, records a clean watermark and releases the lock.
    pub(crate) fn close(&self) -> Result<()> {
        if self.options.read_only {
            self.shutdown.store(true, Ordering::Release);
            self.wake_subscribers();
            return Ok(());
        }
        let mut w = self.writer.lock();
        // Another thread's close in progress: wait for its outcome.
        while w.closing && !w.closed && w.poisoned.is_none() {
            self.io_done.wait(&mut w);
        }
        if w.closed {
            return Ok(());
        }
        self.check_writable(&mut w)?;
        w.closing = true;
        let target = w.placed;
        self.commit(&mut w, target, true)?;
        while w.io_busy || w.sync_busy {
            self.io_done.wait(&mut w);
        }
        let mark = Watermark {
            pos: w.written_pos,
            next: w.written,
            last_ts: w.last_ts,
            closed: true,
        };
        let active = w.active.clone();
        let result = active
            .write_watermark(&mark)
            .and_then(|()| active.file.sync_data());
        w.closed = true;
        self.io_done.notify_all();
        drop(w);
        self.release();
        *self.lock.lock() = None;
        result.map_err(|e| Error::io("fdatasync", &active.path, e))
    }

    fn stop_syncer(&self) {
        self.shutdown.store(true, Ordering::Release);
        let syncer = self.syncer.lock().take();
        if let Some(handle) = syncer {
            handle.thread().unpark();
            // Waits at most for the background sync in flight, so that no
            // thread of this log outlives its last handle.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    /// The last handle is going: stop the background threads and wait for
    /// them, so the directory lock and every file of the log are released
    /// in the caller's thread, before a reopen can race with them.
    pub(crate) fn release(&self) {
        self.stop_syncer();
        if let Some(spares) = &self.spares {
            spares.shutdown();
        }
        self.wake_subscribers();
        if let Some(hub) = self.hub.get() {
            hub.join();
        }
    }

    // ---- subscriptions -----------------------------------------------------

    pub(crate) fn hub(&self) -> &Hub {
        self.hub.get_or_init(Hub::default)
    }

    pub(crate) fn add_subscriber(self: &Arc<Self>, task: Box<dyn Task>) -> Result<()> {
        self.hub().add(self, task)
    }

    /// Tells the delivery thread that records were published (cheap when
    /// there is no subscription: one atomic load).
    #[inline]
    pub(crate) fn wake_subscribers(&self) {
        if let Some(hub) = self.hub.get() {
            hub.wake();
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }

    /// The end the delivery thread delivers up to: flushes `Buffered`
    /// appends and picks up another process's appends when following.
    pub(crate) fn subscription_end(&self) -> Result<u64> {
        if self.is_shut_down() {
            return Ok(self.published_end());
        }
        self.readable_end()
    }

    pub(crate) fn published_end(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    // ---- reading ----------------------------------------------------------

    /// The end of what a reader starting now may read: flushes `Buffered`
    /// appends, and picks up another process's appends when following.
    pub(crate) fn readable_end(&self) -> Result<u64> {
        if self.options.read_only {
            self.refresh()?;
        } else if self.options.durability == Durability::Buffered
            && self.assigned.load(Ordering::Acquire) > self.next.load(Ordering::Acquire)
        {
            match self.flush() {
                // What was published before the failure stays readable.
                Ok(()) | Err(Error::Poisoned { .. } | Error::Closed) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.next.load(Ordering::Acquire))
    }

    /// Makes `offset` readable if it has been appended (flushing or
    /// following as needed); returns whether it is.
    pub(crate) fn make_readable(&self, offset: u64) -> Result<bool> {
        if offset < self.next.load(Ordering::Acquire) {
            return Ok(true);
        }
        if self.options.read_only || offset < self.assigned.load(Ordering::Acquire) {
            self.readable_end()?;
            if offset >= self.next.load(Ordering::Acquire)
                && offset < self.assigned.load(Ordering::Acquire)
            {
                if let Some(lost) = self.lost_tail() {
                    return Err(lost);
                }
            }
        }
        Ok(offset < self.next.load(Ordering::Acquire))
    }

    /// When the writer failed with `Buffered` appends acknowledged but never
    /// written, the failure, which reads of those offsets report instead of
    /// "no such record". (In the other modes an append whose write failed
    /// returned the error itself and was never acknowledged.)
    pub(crate) fn lost_tail(&self) -> Option<Error> {
        if self.options.read_only
            || self.options.durability != Durability::Buffered
            || self.assigned.load(Ordering::Acquire) <= self.next.load(Ordering::Acquire)
        {
            return None;
        }
        self.writer.lock().poisoned.as_ref().map(Poison::error)
    }

    /// The segment holding `offset`, opening it if needed; `None` if the
    /// offset is below the first segment.
    pub(crate) fn segment_for(&self, offset: u64) -> Result<Option<Arc<Segment>>> {
        {
            let segments = self.segments.read();
            let i = segments.slots.partition_point(|s| s.base <= offset);
            if i == 0 {
                return Ok(None);
            }
            if let Some(segment) = &segments.slots[i - 1].segment {
                return Ok(Some(segment.clone()));
            }
        }
        let mut segments = self.segments.write();
        let i = segments.slots.partition_point(|s| s.base <= offset);
        if i == 0 {
            return Ok(None);
        }
        if let Some(segment) = &segments.slots[i - 1].segment {
            return Ok(Some(segment.clone()));
        }
        let base = segments.slots[i - 1].base;
        // Not the last slot: the active segment is always open.
        let expected_end = segments.slots[i].base;
        let (segment, rebuilt) = Segment::open_sealed(
            &self.options.storage,
            &self.dir,
            base,
            expected_end,
            self.options.read_only,
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
    /// Readers still holding one keep it alive until they move on.
    fn evict(&self, segments: &mut Segments) {
        while segments.opened.len() > self.options.max_open_segments {
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
        let segments = self.segments.read();
        let i = segments.slots.partition_point(|s| s.base <= base);
        segments.slots.get(i).map(|s| s.base)
    }

    /// Reads the record at `offset` and hands its frame to `f`; `None` if
    /// the offset is not in the log.
    pub(crate) fn get<R>(&self, offset: u64, f: impl FnOnce(&Frame<'_>) -> R) -> Result<Option<R>> {
        if offset < self.first_offset() || !self.make_readable(offset)? {
            return Ok(None);
        }
        let Some(segment) = self.segment_for(offset)? else {
            return Ok(None);
        };
        if offset >= segment.next() {
            // Between a segment's end and the next base: the log is damaged.
            return Ok(None);
        }
        let pos = segment.locate(offset)?;
        Ok(Some(segment.read(pos, offset, f)?.value))
    }

    /// The offset of the first record with a timestamp of at least `micros`
    /// (the end of the log if there is none).
    pub(crate) fn offset_for_time(&self, micros: u64) -> Result<u64> {
        let end = self.readable_end()?;
        let bases: Vec<u64> = self.segments.read().slots.iter().map(|s| s.base).collect();
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
            return Ok(self.first_offset().max(bases.first().copied().unwrap_or(0)));
        }
        let Some(segment) = self.segment_for(bases[lo - 1])? else {
            return Ok(self.first_offset());
        };
        match segment.locate_time(micros)? {
            Some((_, offset)) => Ok(offset.min(end)),
            None => Ok(bases.get(lo).copied().unwrap_or(end).min(end)),
        }
    }

    /// Follower mode: picks up records and segments another process wrote,
    /// and segments it removed.
    pub(crate) fn refresh(&self) -> Result<()> {
        let _guard = self.maintenance.lock();
        loop {
            let active = {
                let segments = self.segments.read();
                segments.slots.last().and_then(|s| s.segment.clone())
            };
            let Some(active) = active else {
                return Ok(());
            };
            if active.follow() {
                self.next.store(active.next(), Ordering::Release);
            }
            let entries = self
                .options
                .storage
                .list(&self.dir)
                .map_err(|e| Error::io("list", &self.dir, e))?;
            let mut on_disk: Vec<(u64, u64)> = entries
                .iter()
                .filter_map(|e| {
                    let name = e.name.to_str()?;
                    Some((
                        format::parse_numbered_name(name, format::SEGMENT_EXT)?,
                        e.len,
                    ))
                })
                .collect();
            on_disk.sort_unstable();
            self.forget_removed(&on_disk);
            let next_base = active.next();
            let Some(&(base, len)) = on_disk.iter().find(|s| s.0 > active.base) else {
                return Ok(());
            };
            if base != next_base {
                // The writer rolled, but this handle has not seen the end of
                // the old segment yet; it will on a later refresh.
                return Ok(());
            }
            let Some(segment) = recovery::open_followed(&self.options, &self.dir, base, len)?
            else {
                return Ok(());
            };
            active.seal(active.limit(), active.next());
            let segment = Arc::new(segment);
            {
                let mut segments = self.segments.write();
                segments.slots.push(Slot {
                    base,
                    len,
                    segment: Some(segment.clone()),
                });
                segments.opened.push_back(active.base);
                self.evict(&mut segments);
            }
            self.next.store(segment.next(), Ordering::Release);
        }
    }

    /// Follower mode: drops the slots of segments the writer removed.
    fn forget_removed(&self, on_disk: &[(u64, u64)]) {
        let Some(&(oldest, _)) = on_disk.first() else {
            return;
        };
        let mut segments = self.segments.write();
        let gone = segments.slots.partition_point(|s| s.base < oldest);
        let gone = gone.min(segments.slots.len() - 1);
        if gone > 0 {
            segments.slots.drain(..gone);
            self.first.store(segments.slots[0].base, Ordering::Release);
        }
    }

    // ---- retention ----------------------------------------------------------

    /// Removes sealed segments that retention (or `truncate_before`) no
    /// longer needs, oldest first. Returns how many were removed.
    pub(crate) fn apply_retention(&self, truncate_before: Option<u64>) -> Result<usize> {
        if self.options.read_only {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        let _guard = self.maintenance.lock();
        let policy = retention::Policy {
            max_bytes: self.options.retention_bytes,
            max_age_micros: self
                .options
                .retention_age
                .map(|age| age.as_micros().min(u128::from(u64::MAX)) as u64),
            before_offset: truncate_before,
        };
        let now = now_micros();
        let mut removed = 0;
        loop {
            let (oldest, second, total) = {
                let segments = self.segments.read();
                if segments.slots.len() < 2 {
                    break;
                }
                let total: u64 = segments.slots.iter().map(|s| s.len).sum();
                (
                    (segments.slots[0].base, segments.slots[0].len),
                    segments.slots[1].base,
                    total,
                )
            };
            let newer_first_ts = || -> Result<Option<u64>> {
                match self.segment_for(second)? {
                    Some(segment) => segment.first_timestamp(),
                    None => Ok(None),
                }
            };
            if !policy.drops_oldest(oldest.1, second, total, now, newer_first_ts)? {
                break;
            }
            self.remove_oldest(oldest.0)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn remove_oldest(&self, base: u64) -> Result<()> {
        {
            let mut segments = self.segments.write();
            if segments.slots.first().map(|s| s.base) != Some(base) {
                return Ok(());
            }
            segments.slots.remove(0);
            segments.opened.retain(|&b| b != base);
            self.first.store(segments.slots[0].base, Ordering::Release);
        }
        let storage = &self.options.storage;
        // Index first: a crash in between leaves a segment whose index is
        // rebuilt, never an index without its segment being trusted.
        recovery::remove_if_exists(storage, &self.dir.join(format::index_name(base)))?;
        recovery::remove_if_exists(storage, &self.dir.join(format::segment_name(base)))?;
        // One directory sync per removal, so that a crash can only bring
        // back the newest removals, never open a gap.
        storage
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))
    }

    pub(crate) fn stats(&self) -> Stats {
        let segments = self.segments.read();
        Stats {
            first_offset: self.first_offset(),
            next_offset: self.next_offset(),
            durable_offset: self.durable_offset(),
            segments: segments.slots.len(),
            open_segments: segments.opened.len(),
            bytes: segments.slots.iter().map(|s| s.len).sum(),
            indexes_rebuilt: self.indexes_rebuilt.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            preallocated_segments: self.preallocated.load(Ordering::Relaxed),
        }
    }

    /// Checks every record of every segment: lengths, checksums, offsets
    /// and the segment sequence. Returns the number of records checked.
    pub(crate) fn verify(&self) -> Result<u64> {
        self.readable_end()?;
        let bases: Vec<u64> = self.segments.read().slots.iter().map(|s| s.base).collect();
        let mut records = 0;
        for base in bases {
            match self.segment_for(base)? {
                Some(segment) if segment.base == base => records += segment.verify()?,
                // Removed by retention meanwhile.
                _ => continue,
            }
        }
        Ok(records)
    }
}

impl Drop for Engine {
    /// Best effort, never blocking on a sync: writes out `Buffered`
    /// appends so a clean exit keeps them (they reach the OS, not the disk).
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::Release);
        if let Some(handle) = self.syncer.get_mut().take() {
            handle.thread().unpark();
        }
        self.wake_subscribers();
        if let Some(spares) = &self.spares {
            spares.shutdown();
        }
        if self.options.read_only {
            return;
        }
        let mut w = self.writer.lock();
        if w.poisoned.is_none() && !w.closed && !w.buf.is_empty() && !w.io_busy && !w.rolling {
            self.write_round(&mut w, false);
        }
    }
}

fn start_syncer(engine: &Arc<Engine>, every: Duration) -> io::Result<()> {
    let weak = Arc::downgrade(engine);
    let handle = std::thread::Builder::new()
        .name("backbone-sync".into())
        .spawn(move || loop {
            std::thread::park_timeout(every);
            let Some(engine) = weak.upgrade() else {
                return;
            };
            if engine.shutdown.load(Ordering::Acquire) {
                return;
            }
            engine.background_sync();
        })?;
    *engine.syncer.lock() = Some(handle);
    Ok(())
}
