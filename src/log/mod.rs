//! The typed public API: [`EventLog`], the handle to a log (append, read,
//! sync, consumers, subscriptions, retention, close), and the modules built
//! around it: [`Cursor`]s for replay, [`Consumer`]s (whose registry lives
//! here, not in the store) and live [`Subscription`]s (the fan-out).
//!
//! Everything here goes through the untyped [`Store`] below; this layer adds
//! the event type, the codec, and the lifecycle of handles: only `EventLog`
//! handles keep the log open, and the last one's drop shuts it down.
//! Consumers, cursors and subscriptions hold the store, not the log: once
//! it is closed or dropped they end with [`Error::Closed`].

mod checkpoint;
mod consumer;
mod cursor;
mod dead_letter;
mod drain;
#[cfg(feature = "nats")]
pub(crate) mod encoded;
mod group;
mod subscribe;

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

pub use self::checkpoint::{Checkpoint, ReaderStatus};
pub use self::consumer::{Consumer, ConsumerStatus};
pub use self::cursor::Cursor;
pub use self::dead_letter::{DeadLetter, DeadLetters, Undecodable};
pub use self::drain::CloseReport;
pub use self::group::{GroupEvent, GroupOptions, Task, WorkGroup};
pub use self::subscribe::{
    CommitPolicy, ConsumerOptions, ConsumerSubscription, Iter, Stopper, SubscribeOptions,
    Subscription,
};

use crate::codec::{Codec, CodecError, Postcard};
use crate::error::{Error, Result};
use crate::format::{short_type_name, EventType, Frame, Meta, CHECKSUM_CRC32, META_VERSION};
use crate::options::{EventDecl, Options};
use crate::record::{LogId, Record, Start, Timestamp};
use crate::store::{CopiedFrame, FrameBatch, RecoveryReport, Stats, Store};

use self::consumer::Registry;
use self::drain::Subscribers;

/// A durable, typed, append-only log of events of type `T`, stored in one
/// directory and encoded with codec `C`.
///
/// Handles are cheap to clone and can be shared between threads: every
/// clone is the same log. Offsets are dense and gapless from the first
/// record ever appended; each thread's appends keep their order.
///
/// ```
/// use backbone::{EventLog, Start};
/// # #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// # struct Checkout { order_id: u64, qty: u32 }
///
/// let dir = tempfile::tempdir().unwrap();
/// let log: EventLog<Checkout> = EventLog::open(dir.path())?;
/// let first = log.append(&Checkout { order_id: 1, qty: 2 })?;
/// let more = log.append_batch(&[
///     Checkout { order_id: 2, qty: 1 },
///     Checkout { order_id: 3, qty: 5 },
/// ])?;
/// assert_eq!((first, more), (0, 1..3));
///
/// let total: u32 = log
///     .read(Start::Beginning)
///     .map(|rec| rec.map(|rec| rec.value.qty))
///     .sum::<backbone::Result<u32>>()?;
/// assert_eq!(total, 8);
/// # Ok::<(), backbone::Error>(())
/// ```
pub struct EventLog<T, C = Postcard> {
    handle: Arc<Handle>,
    codec: Arc<C>,
    // `fn(T) -> T`: the handle stores no `T`, so it is `Send + Sync`
    // whatever `T` is.
    _marker: PhantomData<fn(T) -> T>,
}

/// What every clone of one open log shares. Its drop is the last handle's:
/// it shuts the log down.
#[derive(Debug)]
struct Handle {
    store: Arc<Store>,
    /// Who holds which consumer of this log.
    consumers: Registry,
    /// The live subscriptions, for a close to drain.
    subscribers: Arc<Subscribers>,
    /// Readers to register on their sources once their commits here are
    /// durable.
    readers: Mutex<checkpoint::PendingReaders>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.store.drop_last();
    }
}

impl<T, C> Clone for EventLog<T, C> {
    fn clone(&self) -> Self {
        EventLog {
            handle: self.handle.clone(),
            codec: self.codec.clone(),
            _marker: PhantomData,
        }
    }
}

impl<T, C> fmt::Debug for EventLog<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLog")
            .field("dir", &self.store().dir())
            .field("first_offset", &self.store().first_offset())
            .field("next_offset", &self.store().next_offset())
            .finish_non_exhaustive()
    }
}

impl<T> EventLog<T, Postcard>
where
    Postcard: Codec<T>,
{
    /// Opens (or creates) the log in `dir` with the default [`Options`].
    ///
    /// # Errors
    ///
    /// As [`Options::open`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Options::new().open(dir)
    }
}

impl Options {
    /// Opens (or creates) the log in `dir` with the default codec,
    /// [`Postcard`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for contradictory options;
    /// [`Error::Locked`] when the log is already open for writing, in this
    /// process or another;
    /// [`Error::NotALog`] when `dir` holds files that are not a log;
    /// [`Error::CodecMismatch`], [`Error::UnsupportedVersion`] and
    /// [`Error::Corrupt`] for logs this handle cannot read; [`Error::Io`].
    pub fn open<T>(self, dir: impl AsRef<Path>) -> Result<EventLog<T, Postcard>>
    where
        Postcard: Codec<T>,
    {
        self.open_with_codec(dir, Postcard)
    }

    /// Opens (or creates) the log in `dir`, encoding values with `codec`.
    ///
    /// # Errors
    ///
    /// As [`open`](Options::open).
    pub fn open_with_codec<T, C: Codec<T>>(
        self,
        dir: impl AsRef<Path>,
        codec: C,
    ) -> Result<EventLog<T, C>> {
        self.validate()?;
        let type_name = std::any::type_name::<T>();
        let event = match (&self.event, codec.name()) {
            // Raw bytes are whatever the application says they are.
            (EventDecl::Any, _) | (_, "raw") => EventType::none(),
            (EventDecl::Declared { name, version }, _) => EventType {
                name: name.clone(),
                version: *version,
            },
            (EventDecl::Derived, _) => EventType {
                name: short_type_name(type_name),
                version: 1,
            },
        };
        let meta = Meta {
            version: META_VERSION,
            log_id: None,
            checksum: CHECKSUM_CRC32,
            codec: codec.name().to_owned(),
            event,
            type_name: type_name.to_owned(),
        };
        let store = Store::open(self, dir.as_ref(), Some(&meta))?;
        Ok(EventLog {
            handle: Arc::new(Handle {
                store,
                consumers: Mutex::new(HashMap::new()),
                subscribers: Arc::default(),
                readers: Mutex::default(),
            }),
            codec: Arc::new(codec),
            _marker: PhantomData,
        })
    }
}

impl<T, C> EventLog<T, C> {
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.handle.store
    }

    pub(crate) fn codec(&self) -> &Arc<C> {
        &self.codec
    }
}

impl<T, C: Codec<T>> EventLog<T, C> {
    /// Appends one event and returns its offset. With the default
    /// [`Durability::EveryAppend`](crate::Durability::EveryAppend) the record
    /// is on stable storage when this returns.
    ///
    /// # Errors
    ///
    /// [`Error::Codec`] or [`Error::RecordTooLarge`] (nothing written, the
    /// log unchanged); [`Error::Poisoned`] after an I/O failure;
    /// [`Error::ReadOnly`], [`Error::Closed`].
    pub fn append(&self, value: &T) -> Result<u64> {
        let codec = &*self.codec;
        self.store()
            .append(1, None, None, None, |_, out| encode(codec, value, out))
            .map(|range| range.start)
    }

    /// Appends several events at once and returns their offsets. They are
    /// consecutive, and the batch costs one write (and one sync). The whole
    /// batch is encoded and checked before any of it is written: a value
    /// that fails to encode or is too large fails the batch and writes
    /// nothing.
    ///
    /// # Errors
    ///
    /// As [`append`](EventLog::append).
    pub fn append_batch(&self, values: &[T]) -> Result<Range<u64>> {
        self.append_at(None, values)
    }

    /// Appends `values` only if the log's next offset is `expected`:
    /// optimistic concurrency for writers that decide what to append from
    /// what they read.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let log: backbone::EventLog<u32> = backbone::EventLog::open(dir.path())?;
    /// let next = log.next_offset();
    /// log.append_expected(next, &[1])?;
    /// let stale = log.append_expected(next, &[2]);
    /// assert!(matches!(stale, Err(backbone::Error::Conflict { expected: 0, actual: 1 })));
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] if the log is at another offset (nothing
    /// written); otherwise as [`append`](EventLog::append).
    pub fn append_expected(&self, expected: u64, values: &[T]) -> Result<Range<u64>> {
        self.append_at(Some(expected), values)
    }

    fn append_at(&self, expected: Option<u64>, values: &[T]) -> Result<Range<u64>> {
        let codec = &*self.codec;
        self.store()
            .append(values.len(), expected, None, None, |i, out| {
                encode(codec, &values[i], out)
            })
    }

    /// Appends records derived from others: each value with the event time
    /// of the input it came from at the same index of `source_times`
    /// ([`Record::source_time`]), and, with a `checkpoint`, committing it
    /// in the same batch as [`append_committing`](EventLog::append_committing)
    /// does. A source time costs 8 bytes in the record's frame.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if `source_times` is not as long as
    /// `values` (nothing written); otherwise as
    /// [`append_committing`](EventLog::append_committing).
    pub fn append_derived(
        &self,
        values: &[T],
        source_times: &[Timestamp],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Range<u64>> {
        if source_times.len() != values.len() {
            return Err(Error::InvalidArgument {
                name: "source_times",
                reason: format!(
                    "{} source times for {} values",
                    source_times.len(),
                    values.len()
                ),
            });
        }
        self.append_with(values, Some(source_times), checkpoint)
    }

    /// Appends `values` and stores `checkpoint` with them, in one batch
    /// that is all or nothing: after any crash the log holds both the
    /// records and the checkpoint, or neither. A reader that hands records
    /// from its sources to this log commits its positions this way and
    /// resumes from [`last_checkpoint`](EventLog::last_checkpoint):
    /// exactly once, with no duplicate and no gap. The batch costs one
    /// write and one sync, like [`append_batch`](EventLog::append_batch);
    /// `values` may be empty (the reader moved on without output).
    ///
    /// The checkpoint is a control frame: reads, subscriptions and
    /// consumers never return it, and it takes no offset. The newest
    /// checkpoint of each name is kept whatever retention removes.
    ///
    /// # Errors
    ///
    /// As [`append_batch`](EventLog::append_batch) (nothing written);
    /// [`Error::InvalidName`] for a bad checkpoint name;
    /// [`Error::BatchTooLarge`] if the batch does not fit in one segment.
    pub fn append_committing(&self, values: &[T], checkpoint: &Checkpoint) -> Result<Range<u64>> {
        self.append_with(values, None, Some(checkpoint))
    }

    fn append_with(
        &self,
        values: &[T],
        source_times: Option<&[Timestamp]>,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Range<u64>> {
        let body = checkpoint.map(Checkpoint::encode_body).transpose()?;
        let codec = &*self.codec;
        let stored = checkpoint.zip(body.as_deref()).map(|(c, b)| (c.name(), b));
        let range = self
            .store()
            .append(values.len(), None, stored, source_times, |i, out| {
                encode(codec, &values[i], out)
            })?;
        if let Some(checkpoint) = checkpoint {
            let ticket = self.store().append_ticket();
            self.handle
                .readers
                .lock()
                .committed(self.store(), ticket, checkpoint);
        }
        Ok(range)
    }

    /// The newest checkpoint named `name` stored by
    /// [`append_committing`](EventLog::append_committing), or `None` if
    /// there is none.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; [`Error::Closed`]; [`Error::Corrupt`] if the
    /// stored checkpoint's body does not decode.
    pub fn last_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>> {
        crate::name::validate(name)?;
        let Some(body) = self.store().last_checkpoint(name)? else {
            return Ok(None);
        };
        match Checkpoint::decode(name, &body) {
            Some(checkpoint) => Ok(Some(checkpoint)),
            None => Err(Error::Corrupt {
                path: self.path().to_path_buf(),
                position: 0,
                offset: None,
                kind: crate::error::CorruptionKind::BadControl,
            }),
        }
    }

    /// The record at `offset`, or `None` if there is none: not appended yet,
    /// or removed by retention (`offset < first_offset()`).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if the record's bytes fail validation;
    /// [`Error::Codec`] if it does not decode as a `T`; [`Error::Io`].
    pub fn get(&self, offset: u64) -> Result<Option<Record<T>>> {
        self.store()
            .get(offset, |frame| {
                decode(&*self.codec, frame, &self.store().meta().event)
            })?
            .transpose()
    }

    /// Reads the log from `start` up to its end at the time of the call.
    /// The iterator holds no lock: appends go on while it runs, and a
    /// segment removed by retention under it is read to its end safely.
    ///
    /// A start outside the log makes the cursor yield one error
    /// ([`Error::OffsetTruncated`] or [`Error::OffsetOutOfRange`]; see
    /// [`Start::Offset`]).
    pub fn read(&self, start: Start) -> Cursor<T, C> {
        Cursor::new(self.store().clone(), self.codec.clone(), start)
    }

    /// The last record in the log, if it holds any.
    ///
    /// # Errors
    ///
    /// As [`get`](EventLog::get).
    pub fn last(&self) -> Result<Option<Record<T>>> {
        self.store().readable_end()?;
        match self.next_offset() {
            next if next > self.first_offset() => self.get(next - 1),
            _ => Ok(None),
        }
    }

    /// A live subscription from `start`: every record from there on,
    /// history first, then each new record as it is appended, exactly once
    /// and in order. See [`Subscription`].
    ///
    /// ```
    /// use backbone::{EventLog, Start};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let log: EventLog<String> = EventLog::open(dir.path())?;
    /// log.append(&"before".to_string())?;
    /// let sub = log.subscribe(Start::Beginning)?;
    /// log.append(&"after".to_string())?;
    /// assert_eq!(sub.recv()?.value, "before");
    /// assert_eq!(sub.recv()?.value, "after");
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] if the log was closed; [`Error::OffsetTruncated`]
    /// or [`Error::OffsetOutOfRange`] for a start outside the log (a start
    /// at the end, [`Start::End`] or `Start::Offset(next_offset())`, waits
    /// for the next append). Errors met while reading arrive through the
    /// subscription.
    pub fn subscribe(&self, start: Start) -> Result<Subscription<T, C>> {
        self.subscribe_with(SubscribeOptions::new(start))
    }

    /// A live subscription with a start, a read-ahead capacity and a filter.
    ///
    /// # Errors
    ///
    /// As [`subscribe`](EventLog::subscribe).
    pub fn subscribe_with(&self, options: SubscribeOptions<T>) -> Result<Subscription<T, C>> {
        Subscription::new(self, options)
    }

    /// Makes every record appended so far durable, whatever the
    /// durability mode.
    ///
    /// # Errors
    ///
    /// [`Error::Poisoned`] if this or an earlier write or sync failed;
    /// [`Error::ReadOnly`], [`Error::Closed`].
    pub fn sync(&self) -> Result<()> {
        self.store().sync_to(None).map(drop)
    }

    /// Hands [`Durability::Buffered`](crate::Durability::Buffered) appends to
    /// the operating system (so they survive a process crash) and makes
    /// them visible to readers. A no-op in the other modes.
    ///
    /// # Errors
    ///
    /// As [`sync`](EventLog::sync).
    pub fn flush(&self) -> Result<()> {
        self.store().flush()
    }

    /// The first offset in the log (it grows when retention removes
    /// segments).
    pub fn first_offset(&self) -> u64 {
        self.store().first_offset()
    }

    /// The offset the next append gets. For a read-only handle, the end of
    /// what it has seen of the writer's appends.
    pub fn next_offset(&self) -> u64 {
        self.store().next_offset()
    }

    /// Offsets below this are on stable storage.
    pub fn durable_offset(&self) -> u64 {
        self.store().durable_offset()
    }

    /// The number of records in the log.
    pub fn len(&self) -> u64 {
        self.next_offset() - self.first_offset()
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log's random 128-bit id, made when it was created: two logs
    /// never share one, and a log deleted and created again gets a new one.
    /// `None` only for a read-only handle of a log no writer of this
    /// version has opened yet (a version-1 log).
    pub fn log_id(&self) -> Option<LogId> {
        self.store().meta().log_id.map(LogId)
    }

    /// The event type recorded in the log, as `(name, version)`; `None`
    /// when it records none (a log of [`Raw`](crate::Raw) bytes, or one
    /// opened with [`Options::any_event_type`] since it was created).
    pub fn event_type(&self) -> Option<(&str, u32)> {
        let event = &self.store().meta().event;
        (!event.is_none()).then_some((event.name.as_str(), event.version))
    }

    /// The log's directory.
    pub fn path(&self) -> &Path {
        self.store().dir()
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Stats {
        self.store().stats()
    }

    /// What opening the log found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        self.store().report()
    }

    /// Takes the durable, named read position `name`, creating it at the
    /// log's first offset if it does not exist yet. A name has one holder
    /// at a time: clone the returned [`Consumer`] to share it; a second
    /// call while it (or a clone, or a subscription of it) lives fails.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let log: backbone::EventLog<u32> = backbone::EventLog::open(dir.path())?;
    /// log.append_batch(&[10, 20, 30])?;
    /// let inventory = log.consumer("inventory")?;
    /// for rec in inventory.read() {
    ///     let rec = rec?;
    ///     // ... update stock ...
    ///     inventory.commit(rec.offset + 1)?;
    /// }
    /// assert_eq!(inventory.position(), 3);
    /// assert!(matches!(
    ///     log.consumer("inventory"),
    ///     Err(backbone::Error::ConsumerInUse { .. })
    /// ));
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ConsumerInUse`] while another holder has it;
    /// [`Error::InvalidName`] unless the name is 1 to 128 ASCII letters,
    /// digits, `_`, `-` or `.` (not first); [`Error::Corrupt`] if both
    /// copies of its stored position are damaged; [`Error::Closed`];
    /// [`Error::Io`].
    pub fn consumer(&self, name: &str) -> Result<Consumer<T, C>> {
        self.consumer_with(name, Start::Beginning)
    }

    /// As [`consumer`](EventLog::consumer), but a consumer that does not
    /// exist yet starts at `start`: `Start::End` for a service that wants
    /// only what happens from now on, `Start::Beginning` for one that
    /// catches up with all of history. An existing consumer resumes from
    /// its committed position whatever `start` says.
    ///
    /// ```
    /// use backbone::Start;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let log: backbone::EventLog<u32> = backbone::EventLog::open(dir.path())?;
    /// log.append_batch(&[1, 2, 3])?;
    /// let alerting = log.consumer_with("alerting", Start::End)?;
    /// assert_eq!(alerting.position(), 3);
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`consumer`](EventLog::consumer); for a new consumer,
    /// [`Error::OffsetTruncated`] or [`Error::OffsetOutOfRange`] for a start
    /// outside the log.
    pub fn consumer_with(&self, name: &str, start: Start) -> Result<Consumer<T, C>> {
        if self.store().is_shut_down() {
            return Err(Error::Closed);
        }
        Consumer::open(self, name, start)
    }

    /// Joins (or creates) the work group `name`: competing workers that
    /// share this log's records, each record acknowledged once (see
    /// [`WorkGroup`]). The group's position is a consumer of the same name.
    ///
    /// # Errors
    ///
    /// [`Error::ConsumerInUse`] while another handle holds the name;
    /// [`Error::InvalidName`]; errors opening the group's own log.
    pub fn work_group(&self, name: &str, options: GroupOptions) -> Result<WorkGroup<T, C>> {
        if self.store().is_shut_down() {
            return Err(Error::Closed);
        }
        WorkGroup::open(self, name, options)
    }

    /// Every consumer of this log with its committed position and lag,
    /// sorted by name, read without taking any (for monitoring).
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] if both copies of a stored position are damaged;
    /// [`Error::Io`].
    pub fn consumers(&self) -> Result<Vec<ConsumerStatus>> {
        consumer::list(self.store(), self.registry())
    }

    /// Deletes the consumer `name` and its stored position. Whether it
    /// existed.
    ///
    /// # Errors
    ///
    /// [`Error::ConsumerInUse`] while a [`Consumer`] holds it;
    /// [`Error::InvalidName`]; [`Error::ReadOnly`]; [`Error::Io`].
    pub fn delete_consumer(&self, name: &str) -> Result<bool> {
        consumer::delete(self.store(), self.registry(), name)
    }

    /// The readers registered on this log: each hand-off (and, later, job,
    /// table and mirror) that reads it and commits its position elsewhere
    /// ([`Checkpoint::source`]), with the advisory copy of its position.
    /// Retention keeps what the lowest of them has not passed.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the directory cannot be listed.
    pub fn readers(&self) -> Result<Vec<ReaderStatus>> {
        let next = self.store().next_offset();
        Ok(self
            .store()
            .reader_entries()?
            .into_iter()
            .map(|entry| ReaderStatus {
                kind: crate::format::reader_kind(entry.kind),
                lag: entry.position.map(|p| next.saturating_sub(p)),
                name: entry.name,
                location: entry.location.into(),
                position: entry.position,
            })
            .collect())
    }

    /// Removes the registration of reader `name` (a hand-off retired for
    /// good), so that it no longer holds back retention. Whether there
    /// was one. A reader that commits again registers again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; [`Error::Io`].
    pub fn delete_reader(&self, name: &str) -> Result<bool> {
        self.store().remove_reader(name)
    }

    /// Removes whole sealed segments whose records are all below `offset`
    /// and returns the new first offset (which may stay below `offset`:
    /// the segment holding it is kept whole).
    ///
    /// # Errors
    ///
    /// [`Error::ReadOnly`]; [`Error::Io`] if a file cannot be removed.
    pub fn truncate_before(&self, offset: u64) -> Result<u64> {
        self.store().apply_retention(Some(offset))?;
        Ok(self.first_offset())
    }

    /// Applies the retention limits now (they are also applied on open and
    /// whenever a segment is sealed). Returns how many segments were
    /// removed.
    ///
    /// # Errors
    ///
    /// As [`truncate_before`](EventLog::truncate_before).
    pub fn apply_retention(&self) -> Result<usize> {
        self.store().apply_retention(None)
    }

    /// Reads and checks every record in the log (lengths, checksums,
    /// offsets, segment sequence), which opening does not. Returns how many
    /// records it checked.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the first damaged file and position.
    pub fn verify(&self) -> Result<u64> {
        self.store().verify()
    }

    /// Closes the log gracefully: refuses appends from its first instant,
    /// flushes and syncs everything appended, lets live subscriptions
    /// receive every record appended before it (waiting up to
    /// [`Options::close_timeout`], default 5 s), then ends them, records a
    /// clean shutdown so the next open is quick, and releases the log: its
    /// files and its directory lock. Every clone of this handle is closed
    /// with it: later appends and reads through any of them fail with
    /// [`Error::Closed`]. The report says which subscriptions received
    /// everything and what the others missed. (Dropping the last handle
    /// shuts the log down too, without waiting for a sync or for
    /// subscribers; see [`RecoveryReport::closed_cleanly`].)
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let log: backbone::EventLog<u32> = backbone::EventLog::open(dir.path())?;
    /// let sub = log.subscribe(backbone::Start::Beginning)?;
    /// log.append_batch(&[1, 2, 3])?;
    /// let service = std::thread::spawn(move || sub.iter().count());
    /// let report = log.close()?;
    /// assert!(report.is_complete());
    /// assert_eq!(service.join().unwrap(), 3);
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`sync`](EventLog::sync). A close that fails leaves the log open:
    /// what was acknowledged stays readable, and the last handle's drop
    /// releases it.
    pub fn close(self) -> Result<CloseReport> {
        let subscribers = &self.handle.subscribers;
        let timeout = self.store().close_timeout();
        let report = self.store().close(|end| subscribers.drain(end, timeout))?;
        // Everything is durable now: the last reader registrations too.
        self.handle.readers.lock().flush(self.store());
        Ok(report)
    }
}

impl<T, C> EventLog<T, C> {
    /// The consumer registry: who holds which consumer of this log.
    pub(crate) fn registry(&self) -> &Registry {
        &self.handle.consumers
    }

    /// The live subscriptions.
    pub(crate) fn subscribers(&self) -> &Arc<Subscribers> {
        &self.handle.subscribers
    }
}

/// Encodes `value`, naming the codec in the error.
fn encode<T, C: Codec<T>>(codec: &C, value: &T, out: &mut Vec<u8>) -> Result<()> {
    codec.encode(value, out).map_err(|source| Error::Codec {
        codec: codec.name(),
        offset: None,
        event_type: None,
        source,
    })
}

/// Decodes the record in `frame`, naming the codec, the offset and the
/// log's recorded event type in the error.
#[inline]
pub(crate) fn decode<T, C: Codec<T>>(
    codec: &C,
    frame: &Frame<'_>,
    event: &EventType,
) -> Result<Record<T>> {
    let timestamp = Timestamp::from_micros(frame.timestamp);
    let source_time = frame.source_time.map(Timestamp::from_micros);
    decode_record(
        codec,
        frame.payload,
        frame.offset,
        timestamp,
        source_time,
        event,
    )
}

/// Decodes a record copied out of the maps (see [`decode`]).
#[inline]
pub(crate) fn decode_copied<T, C: Codec<T>>(
    codec: &C,
    batch: &FrameBatch,
    record: &CopiedFrame,
    event: &EventType,
) -> Result<Record<T>> {
    let payload = batch.payload(record);
    let (offset, timestamp, source_time) = (record.offset, record.timestamp, record.source_time);
    decode_record(codec, payload, offset, timestamp, source_time, event)
}

#[inline]
fn decode_record<T, C: Codec<T>>(
    codec: &C,
    payload: &[u8],
    offset: u64,
    timestamp: Timestamp,
    source_time: Option<Timestamp>,
    event: &EventType,
) -> Result<Record<T>> {
    match codec.decode(payload) {
        Ok(value) => Ok(Record {
            offset,
            timestamp,
            source_time,
            value,
        }),
        Err(source) => Err(codec_error(codec.name(), offset, event, source)),
    }
}

/// Kept out of line: the decode loop's hot path has no error to build.
#[cold]
fn codec_error(codec: &'static str, offset: u64, event: &EventType, source: CodecError) -> Error {
    Error::Codec {
        codec,
        offset: Some(offset),
        event_type: (!event.is_none()).then(|| event.to_string()),
        source,
    }
}
