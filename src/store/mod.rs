//! The untyped log: bytes and offsets, and the durability protocol.
//!
//! A [`Store`] is one log directory opened for writing (or following): its
//! segment set, its single writer with group commit, tail recovery, the
//! read-only follower, retention, spare segments, the durable consumer
//! position files, the registered readers, and a [`Notifier`] through which readers waiting for new
//! records are woken. It never names an event type, a codec, a consumer or a
//! subscription: the typed API in [`crate::log`] is built on top of it, and
//! [`crate::inspect`] reads a log through it without knowing its type.
//!
//! Shutting down goes in one order, whoever asks (`close`, or the last
//! handle's drop): stop appends (committing what was placed, for `close`),
//! stop readers from using the segment maps (waiting for reads in flight)
//! and wake the ones waiting, stop this log's background jobs, drop every
//! map, and release the directory lock. No map of a log's files outlives the
//! lock: a reopen's recovery may cut the files under it.

mod ahead;
mod background;
mod cursor;
mod follower;
mod index;
#[cfg(all(test, loom))]
mod loom_tests;
mod notifier;
mod open;
mod readers;
mod register;
mod retention;
mod segment;
mod segments;
mod spare;
mod tail;
mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

pub(crate) use self::cursor::{CopiedFrame, FrameBatch, RawCursor};
pub(crate) use self::notifier::{Notifier, Waiter};
pub use self::open::RecoveryReport;
pub(crate) use self::register::Register;
pub(crate) use self::segment::Segment;

use self::ahead::ZeroAhead;
use self::background::Jobs;
use self::segment::SegmentConfig;
use self::segments::SegmentSet;
use self::spare::Spares;
use self::writer::{Checkpoints, Failure, Host, Writer, WriterConfig};
use crate::error::{Error, Result};
use crate::format::{self, Frame, Meta};
use crate::options::{Durability, Options};
use crate::record::{Start, Timestamp};
use crate::storage::{DirLock, File, OpenMode};

/// How often a read-only log is looked at again while readers wait for
/// another process's appends.
const FOLLOW_POLL: Duration = Duration::from_millis(1);

/// One open log, untyped.
#[derive(Debug)]
pub(crate) struct Store {
    dir: PathBuf,
    options: Options,
    meta: Meta,
    segments: SegmentSet,
    /// `None` for a read-only handle.
    writer: Option<Writer<Segment>>,
    notifier: Notifier,
    report: RecoveryReport,
    lock: Mutex<Option<DirLock>>,
    /// `LOCK`, where a writer leaves the durable notice for followers in
    /// other processes and a follower reads it (`None` if it cannot be
    /// opened: the notice is best effort).
    notice: Option<File>,
    /// The locks of the registers (consumers) opened through this handle,
    /// released at shutdown.
    register_locks: Mutex<Vec<Weak<Mutex<Option<DirLock>>>>>,
    /// The reader files this handle writes (`{name}.reader`).
    readers: Mutex<readers::ReaderFiles>,
    /// Serializes follower refreshes and retention runs.
    maintenance: Mutex<()>,
    /// Whether readers may use the segment maps. Readers hold it shared for
    /// a batch of reads; shutting down takes it exclusively, so it waits
    /// for the reads in flight and no later read starts.
    gate: RwLock<bool>,
    spares: Option<Arc<Spares>>,
    /// Zeros kept ahead of the writer in a sparse active segment.
    ahead: Option<Arc<ZeroAhead>>,
    /// The gate between this log and the shared background threads.
    jobs: Arc<Jobs>,
    this: Weak<Store>,
    /// An `Interval` sync is scheduled.
    sync_scheduled: AtomicBool,
    /// A poll of a read-only log is scheduled.
    follow_scheduled: AtomicBool,
    preallocated: AtomicU64,
}

/// Proof that the segment maps may be used: a reader holds one for a batch
/// of reads, and shutting down waits for it. See [`Store::pin`].
#[derive(Debug)]
pub(crate) struct Pin<'a>(#[allow(dead_code)] RwLockReadGuard<'a, bool>);

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

impl Store {
    /// Opens (or creates) the log in `dir`. `meta` is what a new log's
    /// `META` says and what an existing log's must match; `None` opens a
    /// log of any codec (read-only handles only).
    pub(crate) fn open(options: Options, dir: &Path, meta: Option<&Meta>) -> Result<Arc<Store>> {
        debug_assert!(meta.is_some() || options.read_only);
        let opened = open::open(&options, dir, meta)?;
        let config = SegmentConfig::of(&options);
        let mut tail = opened.tail;
        let notice_mode = if options.read_only {
            OpenMode::ReadOnly
        } else {
            OpenMode::Existing
        };
        let notice = options
            .storage
            .open(&dir.join(format::LOCK_FILE), notice_mode, options.file_mode)
            .ok();
        if options.read_only {
            // A follower hands out only what the writer made durable, from
            // its first read on.
            let durable = writer_durable(notice.as_ref(), &opened.meta, &opened.active);
            tail.next = opened.active.cap_to(durable);
        }
        let active = Arc::new(opened.active);
        let (active_base, active_path, active_capacity) =
            (active.base, active.path.clone(), active.capacity());
        let active_alloc = active.file.allocated_len();
        let segments = SegmentSet::new(
            &options.storage,
            dir,
            config,
            options.read_only,
            options.max_open_segments,
            &opened.sealed,
            active.clone(),
        );
        let writer = (!options.read_only).then(|| {
            let config = WriterConfig {
                durability: options.durability,
                buffer_bytes: options.buffer_bytes,
                record_limit: options.record_limit(),
                index_interval: options.index_interval_bytes,
            };
            Writer::new(config, active, tail)
        });
        let spares = options.preallocates().then(|| {
            let (bytes, mode) = (options.segment_bytes, options.file_mode);
            Arc::new(Spares::new(&options.storage, dir, bytes, mode))
        });
        let ahead = options.preallocates().then(|| {
            let ahead = ZeroAhead::new(&options.storage, options.file_mode);
            // A segment whose blocks are all allocated (made from a spare)
            // needs no zeros; the file system says (`None`: it cannot).
            let zeroed = active_alloc.is_some_and(|allocated| allocated >= active_capacity);
            ahead.retarget(active_base, active_path, active_capacity, tail.pos, zeroed);
            Arc::new(ahead)
        });
        let store = Arc::new_cyclic(|this| Store {
            dir: dir.to_path_buf(),
            notice,
            readers: Mutex::default(),
            register_locks: Mutex::default(),
            meta: opened.meta,
            segments,
            writer,
            notifier: Notifier::new(tail.next),
            report: opened.report,
            lock: Mutex::new(opened.lock),
            maintenance: Mutex::new(()),
            gate: RwLock::new(true),
            spares,
            ahead,
            jobs: Arc::new(Jobs::default()),
            this: this.clone(),
            sync_scheduled: AtomicBool::new(false),
            follow_scheduled: AtomicBool::new(false),
            preallocated: AtomicU64::new(0),
            options,
        });
        if !store.options.read_only {
            // Everything recovery kept is durable.
            Host::durable(&*store, tail.next);
            // Retention that fails here is retried at the next roll; the
            // log itself opened fine.
            let _ = store.apply_retention(None);
        }
        Ok(store)
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the log's `META` says.
    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    pub(crate) fn report(&self) -> &RecoveryReport {
        &self.report
    }

    pub(crate) fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    pub(crate) fn first_offset(&self) -> u64 {
        self.segments.first()
    }

    /// The offset the next append gets; for a read-only handle, the end of
    /// what it has seen.
    pub(crate) fn next_offset(&self) -> u64 {
        match &self.writer {
            Some(writer) => writer.assigned(),
            None => self.notifier.end(),
        }
    }

    pub(crate) fn durable_offset(&self) -> u64 {
        match &self.writer {
            Some(writer) => writer.durable(),
            None => self.notifier.end(),
        }
    }

    /// A follower's view of how far the writer has made the log durable:
    /// the writer's notice in `LOCK`, or, without a valid one (an older
    /// writer), the newest segment's watermark (at most 100 ms old), or
    /// its base.
    pub(crate) fn writer_durable(&self) -> u64 {
        match self.segments.newest() {
            Some(newest) => writer_durable(self.notice.as_ref(), &self.meta, &newest),
            None => 0,
        }
    }

    fn writer(&self) -> Result<&Writer<Segment>> {
        self.writer.as_ref().ok_or_else(|| Error::ReadOnly {
            path: self.dir.clone(),
        })
    }

    /// Lets a reader use the segment maps until the pin is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the log has shut down.
    pub(crate) fn pin(&self) -> Result<Pin<'_>> {
        let open = self.gate.read();
        if !*open {
            return Err(Error::Closed);
        }
        Ok(Pin(open))
    }

    /// Whether the log has shut down (no read can start).
    pub(crate) fn is_shut_down(&self) -> bool {
        !*self.gate.read()
    }

    // ---- appending --------------------------------------------------------

    /// Appends `count` records, each encoded by `encode(i, out)` appending
    /// its payload to `out`. Either every record is placed or none is; an
    /// error from `encode` is returned as it is. With a `checkpoint` (name,
    /// body), it is stored in the same batch, which is then all or nothing.
    pub(crate) fn append(
        &self,
        count: usize,
        expected: Option<u64>,
        checkpoint: Option<(&str, &[u8])>,
        source_times: Option<&[Timestamp]>,
        encode: impl FnMut(usize, &mut Vec<u8>) -> Result<()>,
    ) -> Result<Range<u64>> {
        self.writer()?
            .append(self, count, expected, checkpoint, source_times, encode)
    }

    /// The body of the newest whole checkpoint named `name`, if there is
    /// one. A writer knows it (after one scan of the active segment, the
    /// first time); a follower scans the newest segment.
    pub(crate) fn last_checkpoint(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let _pin = self.pin()?;
        match &self.writer {
            Some(writer) => writer.checkpoint(self, name),
            None => Ok(self.follower_checkpoints()?.remove(name)),
        }
    }

    /// The newest checkpoint of every name, by name (a follower's view:
    /// the newest segment holds them all).
    pub(crate) fn follower_checkpoints(&self) -> Result<Checkpoints> {
        let _pin = self.pin()?;
        self.refresh()?;
        match self.segments.newest() {
            Some(segment) => segment.checkpoints(),
            None => Ok(Checkpoints::new()),
        }
    }

    /// Writes out buffered appends (`Buffered` mode) so readers see them.
    pub(crate) fn flush(&self) -> Result<()> {
        match &self.writer {
            Some(writer) => writer.flush(self),
            None => Ok(()),
        }
    }

    /// Makes records below `target` (default: all appended) durable.
    pub(crate) fn sync_to(&self, target: Option<u64>) -> Result<u64> {
        self.writer()?.sync_to(self, target)
    }

    /// A ticket for the appends placed so far, and whether a ticket's
    /// appends are all durable (frames that take no offset included).
    /// Whether this handle writes the log (a follower only reads).
    #[cfg(feature = "nats")]
    pub(crate) fn is_writer(&self) -> bool {
        self.writer.is_some()
    }

    pub(crate) fn append_ticket(&self) -> u64 {
        self.writer.as_ref().map_or(0, Writer::appends)
    }

    pub(crate) fn ticket_durable(&self, ticket: u64) -> bool {
        self.writer
            .as_ref()
            .is_none_or(|writer| writer.durable_appends() >= ticket)
    }

    /// Makes records below `target` durable if this handle writes the log
    /// and they are not yet (a sync only when needed). A follower has
    /// nothing to do: it hands out only durable records.
    pub(crate) fn durable_below(&self, target: u64) -> Result<()> {
        match &self.writer {
            Some(writer) if writer.durable() < target => self.sync_to(Some(target)).map(drop),
            _ => Ok(()),
        }
    }

    // ---- shutting down ----------------------------------------------------

    /// Flushes and syncs everything appended, records a clean shutdown so
    /// the next open is quick, and releases the log (see the module doc).
    /// A close that fails (the writer was poisoned, or its last sync failed)
    /// releases nothing: what was acknowledged stays readable through the
    /// other handles, and the last handle's drop releases the log.
    ///
    /// Between the writer's close and the release, `drain` is called with
    /// the log's final end: readers can still read (appends are refused),
    /// so the layer above can let its subscribers finish.
    pub(crate) fn close<R>(&self, drain: impl FnOnce(u64) -> R) -> Result<R> {
        if let Some(writer) = &self.writer {
            writer.close(self)?;
        }
        let drained = drain(self.notifier.end());
        self.release();
        Ok(drained)
    }

    /// The permission bits of the log's files.
    pub(crate) fn file_mode(&self) -> u32 {
        self.options.file_mode
    }

    /// How long a close lets subscribers drain.
    pub(crate) fn close_timeout(&self) -> Duration {
        self.options.close_timeout
    }

    /// The last handle is going: stops the writer without waiting for a
    /// sync (see `Writer::stop`), and releases the log.
    pub(crate) fn drop_last(&self) {
        // Background syncs first: the writer stops cleanly only with no
        // I/O in flight.
        self.jobs.close();
        if let Some(writer) = &self.writer {
            writer.stop(self);
        }
        self.release();
    }

    /// Stops readers and background work, drops every map, releases the
    /// lock. Idempotent.
    fn release(&self) {
        *self.gate.write() = false;
        self.notifier.wake();
        self.jobs.close();
        if let Some(spares) = &self.spares {
            spares.shutdown();
        }
        if let Some(ahead) = &self.ahead {
            ahead.shutdown();
        }
        if let Some(writer) = &self.writer {
            writer.release();
        }
        self.segments.clear();
        for held in self.register_locks.lock().drain(..) {
            if let Some(lock) = held.upgrade() {
                *lock.lock() = None;
            }
        }
        *self.lock.lock() = None;
    }

    // ---- reading ----------------------------------------------------------

    /// The end of what a reader starting now may read: flushes `Buffered`
    /// appends, and picks up another process's appends when following.
    pub(crate) fn readable_end(&self) -> Result<u64> {
        match &self.writer {
            None => self.refresh()?,
            Some(writer) => {
                if self.options.durability == Durability::Buffered
                    && writer.assigned() > self.notifier.end()
                {
                    match writer.flush(self) {
                        // What was published before the failure stays
                        // readable.
                        Ok(()) | Err(Error::Poisoned { .. } | Error::Closed) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(self.notifier.end())
    }

    /// Whether `Buffered` appends wait in the writer's buffer, unpublished
    /// until a reader (or a flush) writes them out.
    pub(crate) fn has_unflushed(&self) -> bool {
        self.options.durability == Durability::Buffered
            && self
                .writer
                .as_ref()
                .is_some_and(|w| w.assigned() > self.notifier.end())
    }

    /// Makes `offset` readable if it has been appended (flushing or
    /// following as needed); returns whether it is.
    pub(crate) fn make_readable(&self, offset: u64) -> Result<bool> {
        if offset < self.notifier.end() {
            return Ok(true);
        }
        if self.writer.is_none() || offset < self.next_offset() {
            self.readable_end()?;
            if offset >= self.notifier.end() && offset < self.next_offset() {
                if let Some(lost) = self.lost_tail() {
                    return Err(lost);
                }
            }
        }
        Ok(offset < self.notifier.end())
    }

    /// When the writer failed with `Buffered` appends acknowledged but never
    /// written, the failure, which reads of those offsets report instead of
    /// "no such record". (In the other modes an append whose write failed
    /// returned the error itself and was never acknowledged.)
    pub(crate) fn lost_tail(&self) -> Option<Error> {
        let writer = self.writer.as_ref()?;
        if self.options.durability != Durability::Buffered
            || writer.assigned() <= self.notifier.end()
        {
            return None;
        }
        writer.poison()
    }

    /// The segment holding `offset`, opening it if needed; `None` if the
    /// offset is below the first segment.
    pub(crate) fn segment_for(&self, _pin: &Pin<'_>, offset: u64) -> Result<Option<Arc<Segment>>> {
        self.segments.segment_for(offset)
    }

    /// The base offsets of every segment, oldest first.
    pub(crate) fn segment_bases(&self) -> Vec<u64> {
        self.segments.bases()
    }

    /// The base offset of the segment after the one starting at `base`.
    pub(crate) fn segment_after(&self, base: u64) -> Option<u64> {
        self.segments.segment_after(base)
    }

    /// Reads the record at `offset` and hands its frame to `f`; `None` if
    /// the offset is not in the log.
    pub(crate) fn get<R>(&self, offset: u64, f: impl FnOnce(&Frame<'_>) -> R) -> Result<Option<R>> {
        if offset < self.first_offset() || !self.make_readable(offset)? {
            return Ok(None);
        }
        let pin = self.pin()?;
        let Some(segment) = self.segment_for(&pin, offset)? else {
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
    /// The offset `start` names, checked against the log as it is now:
    /// below the first offset is [`Error::OffsetTruncated`], past the end
    /// [`Error::OffsetOutOfRange`].
    pub(crate) fn resolve(&self, start: Start) -> Result<u64> {
        let end = self.readable_end()?;
        let first = self.first_offset();
        match start {
            Start::Beginning => Ok(first),
            Start::End => Ok(end),
            Start::Offset(offset) if offset < first => Err(Error::OffsetTruncated {
                requested: offset,
                first,
            }),
            Start::Offset(offset) if offset > end.max(self.next_offset()) => {
                Err(Error::OffsetOutOfRange {
                    requested: offset,
                    next: end.max(self.next_offset()),
                })
            }
            Start::Offset(offset) => Ok(offset),
            Start::Timestamp(ts) => self.offset_for_time(ts.as_micros()),
        }
    }

    pub(crate) fn offset_for_time(&self, micros: u64) -> Result<u64> {
        let end = self.readable_end()?;
        let _pin = self.pin()?;
        self.segments.offset_for_time(micros, end)
    }

    pub(crate) fn stats(&self) -> Stats {
        let extent = self.segments.extent();
        Stats {
            first_offset: self.first_offset(),
            next_offset: self.next_offset(),
            durable_offset: self.durable_offset(),
            segments: extent.segments,
            open_segments: extent.open,
            bytes: extent.bytes,
            indexes_rebuilt: self.segments.indexes_rebuilt(),
            syncs: self.writer.as_ref().map_or(0, Writer::syncs),
            preallocated_segments: self.preallocated.load(Ordering::Relaxed),
        }
    }

    /// Checks every record of every segment: lengths, checksums, offsets
    /// and the segment sequence. Returns the number of records checked.
    pub(crate) fn verify(&self) -> Result<u64> {
        self.readable_end()?;
        let pin = self.pin()?;
        let mut records = 0;
        for base in self.segments.bases() {
            match self.segment_for(&pin, base)? {
                Some(segment) if segment.base == base => records += segment.verify()?,
                // Removed by retention meanwhile.
                _ => continue,
            }
        }
        Ok(records)
    }

    // ---- background work ----------------------------------------------------

    /// Runs `job` on the shared threads once `at` has come, if this log is
    /// still open then.
    fn background(&self, at: Instant, job: impl FnOnce(&Store) + Send + 'static) {
        let (this, jobs) = (self.this.clone(), self.jobs.clone());
        let run = Box::new(move || {
            let store = jobs.enter(|| {
                let store = this.upgrade()?;
                job(&store);
                Some(store)
            });
            // Dropped outside the gate: if it was the last reference, the
            // store's drop closes the gate, which waits for running jobs.
            drop(store);
        });
        background::run_at(at, run);
    }

    /// Readers wait on a read-only log: looks at it again soon, and keeps
    /// looking while anyone waits.
    pub(crate) fn follow_soon(&self) {
        if self.writer.is_some() || self.follow_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        self.background(Instant::now() + FOLLOW_POLL, |store| {
            store.follow_scheduled.store(false, Ordering::Release);
            // An error reaches the readers when they look themselves.
            let _ = store.refresh();
            if store.notifier.is_waited_on() {
                store.follow_soon();
            }
        });
    }
}

impl Drop for Store {
    /// The typed API shuts a log down when its last handle goes (see
    /// [`Store::drop_last`]); a store held without one (an inspector's) is
    /// shut down here. Shutting down twice is harmless.
    fn drop(&mut self) {
        self.drop_last();
    }
}

/// How far a log's writer has made it durable, as a follower learns it: the
/// writer's notice in `LOCK`, or, without a valid one (an older writer),
/// the newest segment's watermark (at most 100 ms old), or its base.
fn writer_durable(notice: Option<&File>, meta: &Meta, newest: &Segment) -> u64 {
    let mut bytes = [0u8; format::NOTICE_LEN];
    let noticed = notice.and_then(|file| {
        file.read_at(&mut bytes, 0).ok()?;
        format::decode_notice(&bytes, meta.log_id?)
    });
    noticed.unwrap_or_else(|| newest.watermark().map_or(newest.base, |w| w.next))
}

impl Host<Segment> for Store {
    fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    fn next_segment(
        &self,
        base: u64,
        last_ts: u64,
        initial: &[u8],
    ) -> std::result::Result<Arc<Segment>, Failure> {
        let storage = &self.options.storage;
        // Room for the carried checkpoints and a record of the largest size
        // (with a source time) beside them: a segment grows past
        // `segment_bytes` when it must.
        let largest = u64::from(self.options.record_limit())
            + (format::FRAME_OVERHEAD + format::SOURCE_TIME_LEN) as u64;
        let capacity = self
            .options
            .segment_bytes
            .max(format::RECORDS_START + initial.len() as u64 + largest);
        // A newest segment that holds no record (only checkpoints, all but
        // the newest of each name superseded) is replaced whole by one of
        // the same base that carries the newest: written beside it and
        // renamed over it, so a crash leaves one or the other.
        let recycling = self.segments.newest().is_some_and(|s| s.base == base);
        let recycled_tmp = self.dir.join(format!(
            "{}.{}",
            format::segment_name(base),
            format::TMP_EXT
        ));
        let spare = if recycling {
            let fail = |op: &'static str| {
                let path = recycled_tmp.clone();
                move |e| (op, path, e)
            };
            match storage.remove(&recycled_tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(fail("remove")(e));
                }
                _ => {}
            }
            let file = storage
                .open(&recycled_tmp, OpenMode::CreateNew, self.options.file_mode)
                .map_err(fail("create"))?;
            file.set_len(capacity).map_err(fail("preallocate"))?;
            Some((file, recycled_tmp.as_path()))
        } else if capacity == self.options.segment_bytes {
            self.spares.as_ref().and_then(|spares| {
                let file = spares.take()?;
                Some((file, spares.path()))
            })
        } else {
            None
        };
        let from_spare = spare.is_some() && !recycling;
        let config = SegmentConfig::of(&self.options);
        let new = Segment::create(
            storage, &self.dir, base, capacity, last_ts, &config, spare, initial,
        )
        .map_err(|e| match e {
            Error::Io { op, path, source } => (op, path, source),
            other => (
                "create",
                self.dir.clone(),
                std::io::Error::other(other.to_string()),
            ),
        })?;
        // The new file's directory entry must be durable before any record
        // in it is acknowledged.
        storage
            .sync_dir(&self.dir)
            .map_err(|e| ("fsync directory", self.dir.clone(), e))?;
        if from_spare {
            self.preallocated.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(ahead) = &self.ahead {
            let end = format::RECORDS_START + initial.len() as u64;
            ahead.retarget(base, new.path.clone(), capacity, end, from_spare);
        }
        let new = Arc::new(new);
        self.segments.push(new.clone());
        Ok(new)
    }

    fn checkpoints(&self) -> Result<Checkpoints> {
        match self.segments.newest() {
            Some(segment) => segment.checkpoints(),
            None => Ok(Checkpoints::new()),
        }
    }

    fn durable(&self, next: u64) {
        if let (Some(file), Some(log_id)) = (&self.notice, self.meta.log_id) {
            // Best effort: a follower that cannot read it falls back to the
            // segment watermarks.
            let _ = file.write_at(&format::encode_notice(next, log_id), 0);
        }
    }

    fn rolled(&self) {
        let _ = self.apply_retention(None);
    }

    fn writing(&self, base: u64, end: u64) {
        if let Some(ahead) = &self.ahead {
            ahead.writing(base, end);
        }
    }

    fn half_full(&self) {
        if let Some(spares) = &self.spares {
            spares.request();
        }
    }

    fn unsynced(&self) {
        let Durability::Interval(every) = self.options.durability else {
            return;
        };
        if self.sync_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        self.background(Instant::now() + every, |store| {
            // Cleared first: records written from now on schedule the next
            // sync, since this one may start before they are written.
            store.sync_scheduled.store(false, Ordering::Release);
            if let Some(writer) = &store.writer {
                writer.background_sync(store);
            }
        });
    }
}
