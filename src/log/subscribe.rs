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

use super::{decode, Consumer, EventLog};
use crate::codec::{Codec, Postcard};
use crate::error::{Error, Result};
use crate::record::{Record, Start};
use crate::store::{RawCursor, Store, Waiter};

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
}

impl<T> fmt::Debug for SubscribeOptions<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscribeOptions")
            .field("start", &self.start)
            .field("capacity", &self.capacity)
            .field("filter", &self.filter.is_some())
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
    capacity: usize,
    reader: Mutex<Reader<T>>,
    signal: Arc<Signal>,
    waiter: Arc<Waiter>,
    ready: Receiver<()>,
}

/// The read side of a subscription.
struct Reader<T> {
    cursor: RawCursor,
    /// Records read and decoded but not yet handed over (nor filtered).
    batch: VecDeque<Result<Record<T>>>,
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
    #[cfg(feature = "async")]
    task: Mutex<Option<std::task::Waker>>,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.ready.try_send(());
        #[cfg(feature = "async")]
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
        let store = log.store();
        if store.is_shut_down() {
            return Err(Error::Closed);
        }
        let cursor = RawCursor::subscription(store, options.start);
        let (sender, ready) = crossbeam_channel::bounded(1);
        let signal = Arc::new(Signal {
            ready: sender,
            sleepers: AtomicUsize::new(0),
            selecting: AtomicBool::new(false),
            #[cfg(feature = "async")]
            task: Mutex::new(None),
        });
        // A first token, so that a `select!` before the first receive
        // fires and its `try_recv` looks.
        let _ = signal.ready.try_send(());
        let waiter = Waiter::new(std::task::Waker::from(signal.clone()));
        store.notifier().join(&waiter);
        Ok(Subscription {
            store: Arc::downgrade(store),
            codec: log.codec().clone(),
            filter: options.filter,
            capacity: options.capacity,
            reader: Mutex::new(Reader {
                cursor,
                batch: VecDeque::new(),
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
        loop {
            match self.look()? {
                Look::Item(item) => return item.map(Some),
                Look::Empty => {}
            }
            // Nothing now: queue for a wake-up before looking once more, so
            // that a record published in between is seen either here or by
            // the token it sends.
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
        let mut reader = self.reader.lock();
        loop {
            if let Some(item) = reader.batch.pop_front() {
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
            if !self.read_batch(&mut reader) {
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
        let codec = &*self.codec;
        while reader.batch.len() < self.capacity {
            match reader
                .cursor
                .next_frame(&store, &pin, |frame| decode(codec, frame))
            {
                // A record that does not decode is reported; the ones after
                // it still come.
                Some(Ok(decoded)) => reader.batch.push_back(decoded),
                Some(Err(e)) => {
                    reader.batch.push_back(Err(e));
                    reader.ended = true;
                    break;
                }
                None => break,
            }
        }
        reader.cursor.unpin();
        true
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
/// [`Consumer::subscribe`]. It commits when told to
/// ([`commit`](ConsumerSubscription::commit)), and derefs to the
/// [`Subscription`] for receiving.
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
    pub(crate) fn new(consumer: &Consumer<T, C>) -> Result<Self> {
        let start = Start::Offset(consumer.position());
        let subscription = Subscription::new(consumer.log(), SubscribeOptions::new(start))?;
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

    /// The plain subscription, giving up the consumer.
    pub fn into_subscription(self) -> Subscription<T, C> {
        self.subscription
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
