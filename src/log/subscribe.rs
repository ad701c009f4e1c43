//! Live pub/sub: [`Subscription`]s that catch up from history and then
//! follow the log, each read on its subscriber's own thread.
//!
//! A subscription is a cursor over the log's segment maps. Whoever receives
//! from it (a thread in [`recv`](Subscription::recv), an async task, a
//! `select!` loop) reads the next records straight from the maps, decodes
//! them and applies the filter, on its own thread, the way a Chronicle Queue
//! tailer reads its mapped file. When it has read everything published it
//! registers with the store's notifier and sleeps; the append that
//! publishes more wakes it. There is no hand-over between history and the
//! live tail: a subscription is only ever "the next offset to read", whether
//! that record was appended a year ago or a microsecond ago, so every record
//! is delivered exactly once, in order.
//!
//! Why this design, measured against the others (a delivery thread per log
//! decoding for every subscriber into bounded channels, which this replaced;
//! a pool of delivery threads; decoding once and sharing an `Arc`): reading
//! on the subscriber's thread costs no thread per log or per subscription,
//! puts the decode on the consumer that wants it (so fan-out scales with the
//! subscribers' own cores instead of one thread's), needs no channel and no
//! copy per record, and makes a stalled subscriber cost nothing at all: it
//! is a position in the log, and the log is its buffer. Its memory is its
//! read-ahead batch, bounded by [`SubscribeOptions::capacity`] whatever its
//! lag. Decoding per subscriber (rather than once, shared) keeps the owned
//! `T` API and costs what the in-memory limit with one decode per receiver
//! costs.
//!
//! A subscription holds the log weakly: it never keeps the log open, it
//! holds a map only while it reads a batch (under the store's pin), and it
//! ends with [`Error::Closed`] once the log is closed or dropped.

use std::collections::VecDeque;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Wake;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;

use super::dead_letter::{DeadLetter, Undecodable};
use super::drain::{Progress, Subscribers};
use super::{decode_copied, Consumer, EventLog};
use crate::codec::{Codec, Postcard};
use crate::error::{Error, Result};
use crate::record::{Record, Start, Timestamp};
use crate::store::{CopiedFrame, FrameBatch, RawCursor, Register, Store, Waiter};

/// A filter on decoded values.
type Filter<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

/// How to subscribe: where to start, how far to read ahead, and a filter.
///
/// ```
/// use backbone::{EventLog, Start, SubscribeOptions};
/// # let dir = tempfile::tempdir().unwrap();
/// let log: EventLog<u32> = EventLog::open(dir.path())?;
/// let big = log.subscribe_with(
///     SubscribeOptions::new(Start::Beginning)
///         .capacity(4096)
///         .filter(|qty: &u32| *qty > 1),
/// )?;
/// log.append_batch(&[1, 5, 1, 7])?;
/// assert_eq!(big.recv()?.value, 5);
/// assert_eq!(big.recv()?.value, 7);
/// # Ok::<(), backbone::Error>(())
/// ```
pub struct SubscribeOptions<T> {
    start: Start,
    capacity: usize,
    filter: Option<Filter<T>>,
    undecodable: Undecodable,
}

impl<T> fmt::Debug for SubscribeOptions<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("start", &self.start)
            .field("capacity", &self.capacity)
            .field("filter", &self.filter.is_some())
            .field("undecodable", &self.undecodable)
            .finish()
    }
}

impl<T> SubscribeOptions<T> {
    /// Subscribe from `start`, reading ahead up to 64 records, with no
    /// filter.
    pub fn new(start: Start) -> SubscribeOptions<T> {
        SubscribeOptions {
            start,
            capacity: 64,
            filter: None,
            undecodable: Undecodable::Yield,
        }
    }

    /// How many records the subscription reads and decodes at a time, ahead
    /// of the receiver (default 64, at least 1). This bounds its memory
    /// whatever its lag; an idle subscription gives the space back. The
    /// default is small enough that what is decoded is still in cache when
    /// it is handed over, and large enough that the log's lock and segment
    /// lookup are paid once per many records.
    pub fn capacity(mut self, capacity: usize) -> SubscribeOptions<T> {
        self.capacity = capacity.max(1);
        self
    }

    /// Deliver only values for which `keep` returns true. The filter runs on
    /// the receiving thread, before a record is handed over.
    pub fn filter(
        mut self,
        keep: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> SubscribeOptions<T> {
        self.filter = Some(Box::new(keep));
        self
    }

    /// What to do with a record that does not decode as a `T` (default:
    /// hand the error over and go on). See [`Undecodable`].
    pub fn undecodable(mut self, undecodable: Undecodable) -> SubscribeOptions<T> {
        self.undecodable = undecodable;
        self
    }
}

/// A live feed of a log's records: history from its start, then every new
/// record as it is appended, each exactly once and in offset order. From
/// [`EventLog::subscribe`].
///
/// Receive with [`recv`](Subscription::recv),
/// [`try_recv`](Subscription::try_recv),
/// [`recv_timeout`](Subscription::recv_timeout) or
/// [`iter`](Subscription::iter); in a `select!`, wait on
/// [`ready`](Subscription::ready) and then take what is there with
/// `try_recv`. With the `async` feature it is also a
/// `futures_core::Stream`. Records are read and decoded on the receiving
/// thread. The subscription ends with [`Error::Closed`] when the log is
/// closed or its last handle dropped (it does not keep the log open);
/// dropping the subscription releases everything it held.
pub struct Subscription<T, C = Postcard> {
    store: Weak<Store>,
    codec: Arc<C>,
    filter: Option<Filter<T>>,
    undecodable: Undecodable,
    capacity: usize,
    /// A consumer's automatic commits, for a [`ConsumerSubscription`].
    auto: Option<Mutex<AutoCommit>>,
    /// How far it has received, for a close to wait on.
    progress: Arc<Progress>,
    reader: Mutex<Reader<T>>,
    signal: Arc<Signal>,
    waiter: Arc<Waiter>,
    ready: Receiver<()>,
}

/// Bytes a subscription copies out per read at most (a record bigger than
/// this is copied alone): with `SubscribeOptions::capacity`, what bounds a
/// subscriber's read-ahead.
const READ_AHEAD_BYTES: usize = 256 * 1024;

/// The read side of a subscription.
struct Reader<T> {
    cursor: RawCursor,
    /// Records read and decoded but not yet handed over (nor filtered).
    batch: VecDeque<Result<Record<T>>>,
    /// Where a batch is copied under the pin before it is decoded (kept
    /// for its buffers).
    copied: FrameBatch,
    /// The subscription has ended: the log went, or an error ended it.
    ended: bool,
}

/// How a subscription is woken: a token on its `ready` channel (which
/// blocked receivers and `select!` loops wait on) and, for the async
/// `Stream`, the waker of the task that last found it empty.
#[derive(Debug)]
struct Signal {
    ready: Sender<()>,
    /// Threads blocked in a receive.
    sleepers: AtomicUsize,
    /// [`Subscription::ready`] was called: keep a token present whenever
    /// records may be waiting, for a `select!` loop.
    selecting: AtomicBool,
    /// [`Stopper::stop`] was called.
    stopped: AtomicBool,
    /// The task that last found it empty (an async `Stream`'s, or a stream
    /// runtime's), woken with the blocked receivers.
    task: Mutex<Option<std::task::Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.ready.try_send(());
        if let Some(task) = self.task.lock().take() {
            task.wake();
        }
    }
}

impl<T, C> fmt::Debug for Subscription<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reader = self.reader.lock();
        f.debug_struct("Subscription")
            .field("next", &reader.cursor.next)
            .field("read_ahead", &reader.batch.len())
            .field("ended", &reader.ended)
            .finish_non_exhaustive()
    }
}

/// What one look at the log found.
enum Look<T> {
    Item(Result<Record<T>>),
    /// Nothing to hand over now.
    Empty,
}

impl<T, C: Codec<T>> Subscription<T, C> {
    pub(crate) fn new(log: &EventLog<T, C>, options: SubscribeOptions<T>) -> Result<Self> {
        Subscription::open(log.store(), log.codec(), log.subscribers(), options, None)
    }

    fn open(
        store: &Arc<Store>,
        codec: &Arc<C>,
        subscribers: &Subscribers,
        options: SubscribeOptions<T>,
        auto: Option<AutoCommit>,
    ) -> Result<Self> {
        if store.is_shut_down() {
            return Err(Error::Closed);
        }
        let mut cursor = RawCursor::subscription(store, options.start);
        // A start outside the log is the caller's to hear about now.
        if let Some(e) = cursor.take_pending() {
            return Err(e);
        }
        let (sender, ready) = crossbeam_channel::bounded(1);
        let signal = Arc::new(Signal {
            ready: sender,
            sleepers: AtomicUsize::new(0),
            selecting: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        // A first token, so that a `select!` before the first receive
        // fires and its `try_recv` looks.
        let _ = signal.ready.try_send(());
        let waiter = Waiter::new(std::task::Waker::from(signal.clone()));
        store.notifier().join(&waiter);
        Ok(Subscription {
            store: Arc::downgrade(store),
            codec: codec.clone(),
            filter: options.filter,
            undecodable: options.undecodable,
            capacity: options.capacity,
            auto: auto.map(Mutex::new),
            progress: subscribers.join(cursor.next),
            reader: Mutex::new(Reader {
                cursor,
                batch: VecDeque::new(),
                copied: FrameBatch::default(),
                ended: false,
            }),
            signal,
            waiter,
            ready,
        })
    }

    /// Waits for the next record.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the subscription has ended (the log was closed
    /// or dropped); [`Error::Codec`] for a record that does not decode (the
    /// subscription goes on); [`Error::Corrupt`], [`Error::OffsetTruncated`]
    /// or [`Error::Io`] met while reading, after which it ends.
    pub fn recv(&self) -> Result<Record<T>> {
        self.recv_until(None)?.ok_or(Error::Closed)
    }

    /// Waits at most `timeout` for the next record; `Ok(None)` on timeout.
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscription::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Record<T>>> {
        self.recv_until(Some(Instant::now() + timeout))
    }

    /// The next record if one is there, `Ok(None)` if none is. After
    /// `Ok(None)` the [`ready`](Subscription::ready) channel gets a token
    /// when more may have come.
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscription::recv).
    pub fn try_recv(&self) -> Result<Option<Record<T>>> {
        self.look_or_arm(|| {})
    }

    /// The next record if one is there; else arms for a wake-up (calling
    /// `register` first) and looks once more, so that a record published
    /// in between is seen either here or by the wake-up it sends.
    fn look_or_arm(&self, register: impl Fn()) -> Result<Option<Record<T>>> {
        loop {
            match self.look()? {
                Look::Item(item) => return item.map(Some),
                Look::Empty => {}
            }
            register();
            if !self.arm() {
                return Ok(None);
            }
        }
    }

    /// A blocking iterator over records: each item is what
    /// [`recv`](Subscription::recv) returns, and it ends when the
    /// subscription ends (after an error that ends it, or at
    /// [`Error::Closed`], which it does not yield).
    pub fn iter(&self) -> Iter<'_, T, C> {
        Iter {
            subscription: self,
            done: false,
        }
    }

    /// A channel that gets a token whenever records may be waiting (or the
    /// subscription may have ended), for `crossbeam_channel::select!`
    /// (re-exported as `backbone::channel`): when it fires, take what is
    /// there with [`try_recv`](Subscription::try_recv) until `Ok(None)`. A
    /// token can be stale; `try_recv` then finds nothing, which is fine.
    ///
    /// ```
    /// use backbone::channel::{bounded, select};
    /// use backbone::{EventLog, Start};
    /// # let dir = tempfile::tempdir().unwrap();
    /// let log: EventLog<u32> = EventLog::open(dir.path())?;
    /// let sub = log.subscribe(Start::Beginning)?;
    /// let (_stop_tx, stop) = bounded::<()>(1);
    /// log.append(&7)?;
    /// select! {
    ///     recv(sub.ready()) -> _ => {
    ///         while let Some(rec) = sub.try_recv()? {
    ///             assert_eq!(rec.value, 7);
    ///         }
    ///     }
    ///     recv(stop) -> _ => {}
    /// }
    /// # Ok::<(), backbone::Error>(())
    /// ```
    pub fn ready(&self) -> &Receiver<()> {
        self.signal.selecting.store(true, Ordering::Relaxed);
        &self.ready
    }

    /// A handle that asks this subscription to stop, from any thread: it
    /// hands over the records it has already read ahead (at most its
    /// capacity), reads no more, and then ends with [`Error::Closed`] (an
    /// `iter()` loop ends). A receiver blocked waiting wakes. For a
    /// service's graceful shutdown; a consumer subscription with an
    /// automatic [`CommitPolicy`] commits what was handled when dropped.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let log: backbone::EventLog<u32> = backbone::EventLog::open(dir.path())?;
    /// let sub = log.subscribe(backbone::Start::End)?;
    /// let stop = sub.stopper();
    /// let service = std::thread::spawn(move || sub.iter().count());
    /// stop.stop();
    /// assert_eq!(service.join().unwrap(), 0);
    /// # Ok::<(), backbone::Error>(())
    /// ```
    pub fn stopper(&self) -> Stopper {
        Stopper {
            signal: self.signal.clone(),
        }
    }

    /// Records appended that this subscriber has not received yet (records
    /// its filter drops count as received once looked at). Zero once the
    /// log is gone.
    pub fn lag(&self) -> u64 {
        let Some(store) = self.store.upgrade() else {
            return 0;
        };
        let reader = self.reader.lock();
        store.next_offset().saturating_sub(reader.cursor.next) + reader.batch.len() as u64
    }

    /// The next record if one is there; if none is, `Ok(None)`, and
    /// `waker` is woken when more may have come (for a task that must not
    /// block its thread: a stream runtime's).
    pub(crate) fn poll_record(&self, waker: &std::task::Waker) -> Result<Option<Record<T>>> {
        self.look_or_arm(|| *self.signal.task.lock() = Some(waker.clone()))
    }

    /// Moves up to `max` records into `out` (at least one, or none if
    /// none is there; then `waker` is woken when more may have come), for
    /// a stream runtime's task: one lock for the whole batch, where
    /// [`poll_record`](Subscription::poll_record) takes one per record.
    /// An error is returned only when it comes first: records taken before
    /// it are handed over, and it is next.
    pub(crate) fn poll_batch(
        &self,
        waker: &std::task::Waker,
        out: &mut Vec<Record<T>>,
        max: usize,
    ) -> Result<usize> {
        if self.auto.is_some() || self.filter.is_some() {
            // Each record handed over has its own bookkeeping.
            let mut taken = 0;
            while taken < max {
                match self.poll_record(waker)? {
                    Some(record) => out.push(record),
                    None => break,
                }
                taken += 1;
            }
            return Ok(taken);
        }
        loop {
            let taken = self.take_many(out, max)?;
            if taken > 0 {
                return Ok(taken);
            }
            *self.signal.task.lock() = Some(waker.clone());
            if !self.arm() {
                return Ok(0);
            }
        }
    }

    /// [`look`](Subscription::look) for up to `max` records at once, for a
    /// subscription with neither a filter nor automatic commits.
    fn take_many(&self, out: &mut Vec<Record<T>>, max: usize) -> Result<usize> {
        let mut reader = self.reader.lock();
        let mut taken = 0;
        while taken < max {
            let Some(item) = reader.batch.pop_front() else {
                let ended = reader.ended || self.signal.stopped.load(Ordering::Acquire);
                if ended && taken == 0 {
                    // Asked to stop: what was read ahead was handed over.
                    reader.ended = true;
                    return Err(Error::Closed);
                }
                if ended || !self.read_batch(&mut reader) {
                    if taken == 0 {
                        // Everything below the cursor was handed over.
                        self.progress.reached(reader.cursor.next);
                    }
                    break;
                }
                continue;
            };
            let offset = offset_of(&item);
            match item {
                Ok(record) => {
                    out.push(record);
                    taken += 1;
                }
                Err(e) if taken > 0 => {
                    // Handed over next, after the records before it.
                    reader.batch.push_front(Err(e));
                    break;
                }
                Err(e) => {
                    if let Some(offset) = offset {
                        self.progress.reached(offset + 1);
                    }
                    return Err(e);
                }
            }
        }
        if taken == 0 {
            return Ok(0);
        }
        if let Some(last) = out.last() {
            self.progress.reached(last.offset + 1);
        }
        self.pass_on(&reader);
        Ok(taken)
    }

    fn recv_until(&self, deadline: Option<Instant>) -> Result<Option<Record<T>>> {
        loop {
            match self.look()? {
                Look::Item(item) => return item.map(Some),
                Look::Empty => {}
            }
            if !self.arm() {
                self.signal.sleepers.fetch_add(1, Ordering::AcqRel);
                let slept = match deadline {
                    None => self
                        .ready
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected),
                    Some(deadline) => self.ready.recv_deadline(deadline),
                };
                self.signal.sleepers.fetch_sub(1, Ordering::AcqRel);
                if let Err(RecvTimeoutError::Timeout) = slept {
                    return Ok(None);
                }
            }
        }
    }

    /// Hands over the next record that passes the filter, reading a batch
    /// when none is read ahead. `Err(Closed)` once the subscription ended.
    fn look(&self) -> Result<Look<T>> {
        // Asking for the next record hands the previous one back as handled.
        let mut auto = self.auto.as_ref().map(|auto| auto.lock());
        if let Some(auto) = &mut auto {
            auto.asked()?;
        }
        let mut reader = self.reader.lock();
        loop {
            if let Some(item) = reader.batch.pop_front() {
                if let Some(auto) = &mut auto {
                    auto.looked_at(&item);
                }
                if let Some(offset) = offset_of(&item) {
                    self.progress.reached(offset + 1);
                }
                if let (Ok(record), Some(keep)) = (&item, &self.filter) {
                    if !keep(&record.value) {
                        continue;
                    }
                }
                self.pass_on(&reader);
                return Ok(Look::Item(item));
            }
            if reader.ended {
                return Err(Error::Closed);
            }
            if self.signal.stopped.load(Ordering::Acquire) {
                // Asked to stop: what was read ahead was handed over.
                reader.ended = true;
                return Err(Error::Closed);
            }
            if !self.read_batch(&mut reader) {
                // Nothing read ahead: everything below the cursor was
                // handed over, filtered out or skipped.
                self.progress.reached(reader.cursor.next);
                if let Some(auto) = &mut auto {
                    auto.skipped_to(reader.cursor.next);
                    drop(reader);
                    auto.idle()?;
                }
                return Ok(Look::Empty);
            }
        }
    }

    /// Reads and decodes the records published past the cursor, up to the
    /// capacity, under one pin. Whether it read anything (or ended).
    fn read_batch(&self, reader: &mut Reader<T>) -> bool {
        let Some(store) = self.store.upgrade() else {
            reader.ended = true;
            return true;
        };
        let mut end = store.notifier().end();
        if reader.cursor.next >= end {
            // Caught up with what is published: buffered appends are written
            // out, and a follower looks for the writer's new records.
            end = match store.readable_end() {
                Ok(end) => end,
                // What was published before a failure was read; the failure
                // (a follower meeting a damaged segment, say) ends the
                // subscription.
                Err(e) if store.notifier().end() <= reader.cursor.next => {
                    reader.batch.push_back(Err(e));
                    reader.ended = true;
                    return true;
                }
                Err(_) => store.notifier().end(),
            };
        }
        reader.cursor.extend_to(end);
        if reader.cursor.next >= reader.cursor.end
            && !reader.cursor.has_pending()
            && !store.is_shut_down()
        {
            return false;
        }
        let pin = match store.pin() {
            Ok(pin) => pin,
            Err(_) => {
                reader.ended = true;
                return true;
            }
        };
        let read_before = reader.cursor.next;
        // Copied (and verified) under the pin, decoded after it: a slow
        // decode or a dead-letter append never holds the pin.
        let Reader {
            cursor,
            batch,
            copied,
            ended,
        } = reader;
        copied.clear();
        let room = self.capacity.saturating_sub(batch.len()).max(1);
        let read = cursor.copy_frames(&store, &pin, room, READ_AHEAD_BYTES, copied);
        cursor.unpin();
        drop(pin);
        let codec = &*self.codec;
        let event = &store.meta().event;
        for record in &copied.records {
            match decode_copied(codec, copied, record, event) {
                Ok(record) => batch.push_back(Ok(record)),
                Err(e) => {
                    let undecoded = Undecoded::new(e, record, copied, &self.undecodable);
                    match self.set_aside(&store, undecoded) {
                        // Skipped: the ones after it still come.
                        Ok(None) => {}
                        // Handed over; the ones after it still come.
                        Ok(Some(e)) => batch.push_back(Err(e)),
                        // Not set aside: nothing after it may be handed
                        // over.
                        Err(e) => {
                            batch.push_back(Err(e));
                            *ended = true;
                            return true;
                        }
                    }
                }
            }
        }
        if let Err(e) = read {
            batch.push_back(Err(e));
            *ended = true;
        }
        // Records skipped with nothing to hand over still count as read.
        read_before != reader.cursor.next || !reader.batch.is_empty() || reader.ended
    }

    /// Applies [`Undecodable`] to a record that did not decode: the error to
    /// hand over (`Ok(Some)`), nothing (`Ok(None)`: skipped or set aside),
    /// or the error that stops the subscription before it (`Err`).
    fn set_aside(&self, store: &Store, undecoded: Undecoded) -> Result<Option<Error>> {
        match &self.undecodable {
            Undecodable::Yield => Ok(Some(undecoded.error)),
            Undecodable::Skip => Ok(None),
            Undecodable::DeadLetter(sink) => {
                let letter = DeadLetter::new(
                    store.dir().display().to_string(),
                    undecoded.offset,
                    undecoded.timestamp,
                    error_chain(&undecoded.error),
                    undecoded.payload,
                );
                sink.append(&letter).map(|_| None)
            }
        }
    }

    /// Queues this subscription for a wake-up and looks once more: whether
    /// there may be something to read now (so the caller looks again
    /// rather than sleep).
    fn arm(&self) -> bool {
        let Some(store) = self.store.upgrade() else {
            return true;
        };
        let end = store.notifier().register(&self.waiter);
        store.follow_soon();
        let mut reader = self.reader.lock();
        if reader.batch.capacity() > 64 && reader.batch.is_empty() {
            // An idle subscription gives back its read-ahead space.
            reader.batch.shrink_to(64);
        }
        // Published past the cursor, buffered appends to write out, or an
        // end to report.
        end > reader.cursor.next
            || self.signal.stopped.load(Ordering::Acquire)
            || store.has_unflushed()
            || reader.cursor.has_pending()
            || reader.ended
            || store.is_shut_down()
    }

    /// After handing a record over: when others wait on this subscription
    /// (a second receiving thread, a `select!` loop) and more is read
    /// ahead, make sure one of them looks.
    fn pass_on(&self, reader: &Reader<T>) {
        let signal = &self.signal;
        if !reader.batch.is_empty()
            && (signal.sleepers.load(Ordering::Acquire) > 0
                || signal.selecting.load(Ordering::Relaxed))
        {
            let _ = signal.ready.try_send(());
        }
    }
}

impl<T, C> Drop for Subscription<T, C> {
    fn drop(&mut self) {
        if let Some(store) = self.store.upgrade() {
            store.notifier().leave(&self.waiter);
        }
        if let Some(auto) = &self.auto {
            let mut auto = auto.lock();
            if auto.policy != CommitPolicy::Explicit {
                // Nobody is left to hear of a failure: the position stays
                // where it was, and the records after it are replayed.
                let _ = auto.commit();
            }
        }
    }
}

/// Asks a [`Subscription`] to stop, from any thread: see
/// [`Subscription::stopper`].
#[derive(Clone, Debug)]
pub struct Stopper {
    signal: Arc<Signal>,
}

impl Stopper {
    /// Asks the subscription to hand over what it holds and end.
    pub fn stop(&self) {
        self.signal.stopped.store(true, Ordering::Release);
        self.signal.wake_by_ref();
    }
}

/// The offset an item handed over stands for: a record's, or that of a
/// record that did not decode.
fn offset_of<T>(item: &Result<Record<T>>) -> Option<u64> {
    match item {
        Ok(record) => Some(record.offset),
        Err(Error::Codec {
            offset: Some(offset),
            ..
        }) => Some(*offset),
        Err(_) => None,
    }
}

/// A record that did not decode, with what setting it aside needs.
struct Undecoded {
    error: Error,
    offset: u64,
    timestamp: Timestamp,
    /// The payload, copied only for a dead-letter log.
    payload: Vec<u8>,
}

impl Undecoded {
    fn new(
        error: Error,
        record: &CopiedFrame,
        batch: &FrameBatch,
        undecodable: &Undecodable,
    ) -> Undecoded {
        let keep_bytes = matches!(undecodable, Undecodable::DeadLetter(_));
        Undecoded {
            error,
            offset: record.offset,
            timestamp: record.timestamp,
            payload: if keep_bytes {
                batch.payload(record).to_vec()
            } else {
                Vec::new()
            },
        }
    }
}

/// An error and its causes, as one line.
fn error_chain(error: &Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// When a [`ConsumerSubscription`] commits its consumer's position by
/// itself.
///
/// Automatic commits cover only records the caller is done with: a record
/// counts as handled once the caller asks for the one after it (the next
/// `recv`, `try_recv` or `iter()` step). The record being handled when the
/// process dies is therefore never committed, and is delivered again after
/// a restart: at-least-once, with a replay bounded by the policy (up to `n`
/// records, or the records of one interval, plus the one in hand).
/// Commits are durable (see [`Consumer::commit`]); a failed automatic
/// commit is returned by the receive that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitPolicy {
    /// Only [`ConsumerSubscription::commit`] commits.
    Explicit,
    /// Commit after every `n` handled records, and on drop.
    Every(u64),
    /// Commit the handled records at most this often, whenever the
    /// subscription has caught up with the log, and on drop.
    Interval(Duration),
    /// Commit the handled records when the subscription is dropped.
    OnDrop,
}

/// How a consumer subscribes ([`Consumer::subscribe_with`]): its
/// [`CommitPolicy`], what to do with undecodable records, and its
/// read-ahead. A `CommitPolicy` converts into one with the other settings
/// at their defaults.
///
/// ```
/// use backbone::{CommitPolicy, ConsumerOptions, Undecodable};
/// # let dir = tempfile::tempdir().unwrap();
/// # let log: backbone::EventLog<u32> = backbone::EventLog::open(dir.path())?;
/// let shipping = log.consumer("shipping")?;
/// let sub = shipping.subscribe_with(
///     ConsumerOptions::new()
///         .commit(CommitPolicy::Every(100))
///         .undecodable(Undecodable::Skip),
/// )?;
/// # Ok::<(), backbone::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    policy: CommitPolicy,
    undecodable: Undecodable,
    capacity: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions::new()
    }
}

impl ConsumerOptions {
    /// Explicit commits, undecodable records handed over as errors, a
    /// read-ahead of 64 records.
    pub fn new() -> ConsumerOptions {
        ConsumerOptions {
            policy: CommitPolicy::Explicit,
            undecodable: Undecodable::Yield,
            capacity: 64,
        }
    }

    /// When to commit (default [`CommitPolicy::Explicit`]).
    pub fn commit(mut self, policy: CommitPolicy) -> ConsumerOptions {
        self.policy = policy;
        self
    }

    /// What to do with a record that does not decode; a skipped or
    /// dead-lettered record counts as handled.
    pub fn undecodable(mut self, undecodable: Undecodable) -> ConsumerOptions {
        self.undecodable = undecodable;
        self
    }

    /// As [`SubscribeOptions::capacity`].
    pub fn capacity(mut self, capacity: usize) -> ConsumerOptions {
        self.capacity = capacity.max(1);
        self
    }
}

impl From<CommitPolicy> for ConsumerOptions {
    fn from(policy: CommitPolicy) -> ConsumerOptions {
        ConsumerOptions::new().commit(policy)
    }
}

/// A consumer subscription's record of what was handled, and its
/// automatic commits.
struct AutoCommit {
    store: Arc<Store>,
    register: Arc<Register>,
    policy: CommitPolicy,
    /// The offset of the record handed over last, until the next is asked
    /// for.
    delivered: Option<u64>,
    /// Records below this are handled (or were skipped).
    handled: u64,
    /// Records handled since the last commit.
    uncommitted: u64,
    last_commit: Instant,
}

impl AutoCommit {
    fn new(consumer_store: Arc<Store>, register: Arc<Register>, policy: CommitPolicy) -> Self {
        let handled = register.position();
        AutoCommit {
            store: consumer_store,
            register,
            policy,
            delivered: None,
            handled,
            uncommitted: 0,
            last_commit: Instant::now(),
        }
    }

    /// The caller asks for the next record: the one it had is handled.
    fn asked(&mut self) -> Result<()> {
        if let Some(offset) = self.delivered.take() {
            self.handled = self.handled.max(offset + 1);
            self.uncommitted += 1;
        }
        let due = match self.policy {
            CommitPolicy::Every(n) => self.uncommitted >= n.max(1),
            CommitPolicy::Interval(every) => {
                self.uncommitted > 0 && self.last_commit.elapsed() >= every
            }
            CommitPolicy::Explicit | CommitPolicy::OnDrop => false,
        };
        if due {
            self.commit()?;
        }
        Ok(())
    }

    /// `item` is handed over (or dropped by the filter).
    fn looked_at<T>(&mut self, item: &Result<Record<T>>) {
        // An error that ends the subscription is not a record handled.
        self.delivered = offset_of(item);
    }

    /// Nothing is read ahead and the cursor is at `next`: what lies below
    /// it and was not handed over was skipped.
    fn skipped_to(&mut self, next: u64) {
        if self.delivered.is_none() && next > self.handled {
            self.handled = next;
            self.uncommitted += 1;
        }
    }

    /// The subscription caught up with the log.
    fn idle(&mut self) -> Result<()> {
        if matches!(self.policy, CommitPolicy::Interval(_)) && self.uncommitted > 0 {
            self.commit()?;
        }
        Ok(())
    }

    /// Commits what was handled, if that moves the position forward.
    fn commit(&mut self) -> Result<()> {
        if self.handled > self.register.position() {
            self.register.commit(&self.store, self.handled, false)?;
        }
        self.uncommitted = 0;
        self.last_commit = Instant::now();
        Ok(())
    }
}

/// The blocking iterator of [`Subscription::iter`].
pub struct Iter<'a, T, C = Postcard> {
    subscription: &'a Subscription<T, C>,
    done: bool,
}

impl<T, C> fmt::Debug for Iter<'_, T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl<T, C: Codec<T>> Iterator for Iter<'_, T, C> {
    type Item = Result<Record<T>>;

    fn next(&mut self) -> Option<Result<Record<T>>> {
        if self.done {
            return None;
        }
        match self.subscription.recv() {
            Ok(record) => Some(Ok(record)),
            Err(Error::Closed) => {
                self.done = true;
                None
            }
            Err(e @ Error::Codec { .. }) => Some(Err(e)),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a, T, C: Codec<T>> IntoIterator for &'a Subscription<T, C> {
    type Item = Result<Record<T>>;
    type IntoIter = Iter<'a, T, C>;

    fn into_iter(self) -> Iter<'a, T, C> {
        self.iter()
    }
}

/// A subscription that resumes after a consumer's committed position, from
/// [`Consumer::subscribe`] or [`Consumer::subscribe_with`]. It commits when
/// told to ([`commit`](ConsumerSubscription::commit)) or as its
/// [`CommitPolicy`] says, and derefs to the [`Subscription`] for receiving.
pub struct ConsumerSubscription<T, C = Postcard> {
    subscription: Subscription<T, C>,
    consumer: Consumer<T, C>,
}

impl<T, C> fmt::Debug for ConsumerSubscription<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerSubscription")
            .field("consumer", &self.consumer)
            .field("subscription", &self.subscription)
            .finish()
    }
}

impl<T, C> Deref for ConsumerSubscription<T, C> {
    type Target = Subscription<T, C>;

    fn deref(&self) -> &Subscription<T, C> {
        &self.subscription
    }
}

impl<T, C: Codec<T>> ConsumerSubscription<T, C> {
    pub(crate) fn new(consumer: &Consumer<T, C>, options: ConsumerOptions) -> Result<Self> {
        let auto = AutoCommit::new(
            consumer.store().clone(),
            consumer.register().clone(),
            options.policy,
        );
        let start = Start::Offset(consumer.position());
        let subscription = Subscription::open(
            consumer.store(),
            consumer.codec(),
            consumer.subscribers(),
            SubscribeOptions::new(start)
                .capacity(options.capacity)
                .undecodable(options.undecodable),
            Some(auto),
        )?;
        Ok(ConsumerSubscription {
            subscription,
            consumer: consumer.clone(),
        })
    }

    /// Stores the consumer's position durably (see [`Consumer::commit`]):
    /// after handling record `o`, commit `o + 1`.
    ///
    /// # Errors
    ///
    /// As [`Consumer::commit`].
    pub fn commit(&self, position: u64) -> Result<()> {
        self.consumer.commit(position)
    }

    /// The consumer's committed position.
    pub fn position(&self) -> u64 {
        self.consumer.position()
    }

    /// The consumer behind this subscription.
    pub fn consumer(&self) -> &Consumer<T, C> {
        &self.consumer
    }

    /// The plain subscription, giving up the consumer (and its automatic
    /// commits: nothing more is committed, not even on drop).
    pub fn into_subscription(self) -> Subscription<T, C> {
        let mut subscription = self.subscription;
        subscription.auto = None;
        subscription
    }
}

#[cfg(feature = "async")]
impl<T, C: Codec<T>> futures_core::Stream for Subscription<T, C> {
    type Item = Result<Record<T>>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        loop {
            match self.look() {
                Ok(Look::Item(item)) => return Poll::Ready(Some(item)),
                Err(_) => return Poll::Ready(None),
                Ok(Look::Empty) => {}
            }
            // Register the task before arming, so that a record published
            // after the look wakes it instead of being missed.
            *self.signal.task.lock() = Some(cx.waker().clone());
            if !self.arm() {
                return Poll::Pending;
            }
        }
    }
}
