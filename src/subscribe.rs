//! Live pub/sub: [`Subscription`]s that catch up from history and then
//! follow the log, fanned out over bounded channels by one delivery thread
//! per log.
//!
//! A subscription is a cursor and a bounded crossbeam channel. The log's
//! delivery thread (started with the first subscription) reads records for
//! every subscription from the segment maps, decodes each once per
//! subscriber, applies its filter, and `try_send`s into its channel. There
//! is no hand-over between history and the live tail: a subscription is
//! only ever "the next offset to deliver", whether that record was
//! appended a year ago or a microsecond ago, so every record is delivered
//! exactly once, in order. Appenders wake the thread when they publish new
//! records, so a caught-up subscriber waits for no polling interval. A full
//! channel makes the thread skip that subscriber (its cursor stays where it
//! is, and the log is its buffer), so a slow subscriber never blocks
//! producers or other subscribers, and its memory is bounded by its
//! channel capacity whatever its lag.

use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError, TrySendError};
use parking_lot::Mutex;

use crate::codec::{Codec, Postcard};
use crate::consumer::Consumer;
use crate::cursor::RawCursor;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::log::{EventLog, Record, Start};

/// Records one subscription may take per pass of the delivery thread, so a
/// subscriber catching up on history does not delay the live ones.
const PASS_BUDGET: usize = 1024;
/// How often the delivery thread looks again at subscribers whose channel
/// was full (a receive through the `Subscription` wakes it sooner; one
/// through `receiver()` does not), and how often a read-only handle looks
/// for another process's appends. Caught-up subscribers of a writer are
/// woken by the append.
const POLL_FULL: Duration = Duration::from_millis(1);
const IDLE: Duration = Duration::from_secs(1);

/// A filter on decoded values.
type Filter<T> = Box<dyn Fn(&T) -> bool + Send + Sync>;

/// How to subscribe: where to start, the channel's capacity, and a filter.
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
    /// Subscribe from `start`, with a channel of 1024 records and no filter.
    pub fn new(start: Start) -> SubscribeOptions<T> {
        SubscribeOptions {
            start,
            capacity: 1024,
            filter: None,
        }
    }

    /// How many decoded records may wait in the channel (default 1024, at
    /// least 1). This bounds the subscription's memory whatever its lag.
    pub fn capacity(mut self, capacity: usize) -> SubscribeOptions<T> {
        self.capacity = capacity.max(1);
        self
    }

    /// Deliver only values for which `keep` returns true. The filter runs on
    /// the delivery thread before the channel, so records it drops cost no
    /// channel slot.
    pub fn filter(
        mut self,
        keep: impl Fn(&T) -> bool + Send + Sync + 'static,
    ) -> SubscribeOptions<T> {
        self.filter = Some(Box::new(keep));
        self
    }
}

/// What a subscription and its delivery task share.
#[derive(Debug, Default)]
struct Shared {
    /// The next offset the delivery task will look at.
    dispatched: AtomicU64,
    /// The subscription was dropped: the task should go.
    dropped: AtomicBool,
    /// The delivery task found the channel full and waits for room: the
    /// next receive wakes it instead of leaving it to its next poll.
    full: AtomicBool,
    #[cfg(feature = "async")]
    waker: AtomicWaker,
}

impl Shared {
    #[inline]
    fn delivered(&self) {
        #[cfg(feature = "async")]
        self.waker.wake();
    }
}

/// A live feed of a log's records: history from its start, then every new
/// record as it is appended, each exactly once and in offset order. From
/// [`EventLog::subscribe`].
///
/// Receive with [`recv`](Subscription::recv),
/// [`try_recv`](Subscription::try_recv),
/// [`recv_timeout`](Subscription::recv_timeout) or
/// [`iter`](Subscription::iter), or select over
/// [`receiver`](Subscription::receiver) with `crossbeam_channel::select!`.
/// The subscription ends when the log is closed or its last handle dropped;
/// dropping the subscription releases everything it held. With the `async`
/// feature it is also a `futures_core::Stream`.
pub struct Subscription<T> {
    receiver: Receiver<Result<Record<T>>>,
    shared: Arc<Shared>,
    engine: Weak<Engine>,
    error: Mutex<Option<Error>>,
}

impl<T> fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field(
                "dispatched",
                &self.shared.dispatched.load(Ordering::Relaxed),
            )
            .field("queued", &self.receiver.len())
            .finish_non_exhaustive()
    }
}

impl<T> Subscription<T> {
    /// Waits for the next record.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the subscription has ended (the log was closed
    /// or dropped); [`Error::Codec`] for a record that does not decode (the
    /// subscription goes on); [`Error::Corrupt`], [`Error::OffsetTruncated`]
    /// or [`Error::Io`] met while reading, after which it ends.
    pub fn recv(&self) -> Result<Record<T>> {
        match self.receiver.recv() {
            Ok(item) => self.received(item),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Wakes the delivery thread if it is waiting for room in this channel.
    #[inline]
    fn received<R>(&self, item: R) -> R {
        if self.shared.full.load(Ordering::Relaxed)
            && self.shared.full.swap(false, Ordering::AcqRel)
        {
            if let Some(engine) = self.engine.upgrade() {
                engine.wake_subscribers();
            }
        }
        item
    }

    /// The next record if one is waiting, `Ok(None)` if none is.
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscription::recv).
    pub fn try_recv(&self) -> Result<Option<Record<T>>> {
        match self.receiver.try_recv() {
            Ok(item) => self.received(item).map(Some),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Error::Closed),
        }
    }

    /// Waits at most `timeout` for the next record; `Ok(None)` on timeout.
    ///
    /// # Errors
    ///
    /// As [`recv`](Subscription::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Record<T>>> {
        match self.receiver.recv_timeout(timeout) {
            Ok(item) => self.received(item).map(Some),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }

    /// A blocking iterator over records. It ends when the subscription ends,
    /// or at the first error, which [`take_error`](Subscription::take_error)
    /// then returns.
    pub fn iter(&self) -> Iter<'_, T> {
        Iter { subscription: self }
    }

    /// The error that ended [`iter`](Subscription::iter), if one did.
    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().take()
    }

    /// The channel the records arrive on, for `crossbeam_channel::select!`.
    /// Each message is what [`recv`](Subscription::recv) would return; the
    /// channel disconnects when the subscription ends.
    pub fn receiver(&self) -> &Receiver<Result<Record<T>>> {
        &self.receiver
    }

    /// Records appended that this subscriber has not received yet: those not
    /// yet looked at, plus those waiting in its channel (records its filter
    /// dropped count as received). Zero once the log is gone.
    pub fn lag(&self) -> u64 {
        let Some(engine) = self.engine.upgrade() else {
            return 0;
        };
        let dispatched = self.shared.dispatched.load(Ordering::Acquire);
        engine.next_offset().saturating_sub(dispatched) + self.receiver.len() as u64
    }
}

impl<T> Drop for Subscription<T> {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::Release);
        if let Some(engine) = self.engine.upgrade() {
            engine.wake_subscribers();
        }
    }
}

/// The blocking iterator of [`Subscription::iter`].
pub struct Iter<'a, T> {
    subscription: &'a Subscription<T>,
}

impl<T> fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iter").finish_non_exhaustive()
    }
}

impl<T> Iterator for Iter<'_, T> {
    type Item = Record<T>;

    fn next(&mut self) -> Option<Record<T>> {
        match self.subscription.recv() {
            Ok(record) => Some(record),
            Err(Error::Closed) => None,
            Err(e) => {
                *self.subscription.error.lock() = Some(e);
                None
            }
        }
    }
}

impl<'a, T> IntoIterator for &'a Subscription<T> {
    type Item = Record<T>;
    type IntoIter = Iter<'a, T>;

    fn into_iter(self) -> Iter<'a, T> {
        self.iter()
    }
}

/// A subscription that resumes after a consumer's committed position and
/// commits as it goes, from [`Consumer::subscribe`]. It derefs to the
/// [`Subscription`] for receiving.
pub struct ConsumerSubscription<T, C = Postcard> {
    subscription: Subscription<T>,
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
    type Target = Subscription<T>;

    fn deref(&self) -> &Subscription<T> {
        &self.subscription
    }
}

impl<T, C: Codec<T>> ConsumerSubscription<T, C> {
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
    pub fn into_subscription(self) -> Subscription<T> {
        self.subscription
    }
}

pub(crate) fn subscribe<T, C>(
    log: &EventLog<T, C>,
    options: SubscribeOptions<T>,
) -> Result<Subscription<T>>
where
    T: Send + 'static,
    C: Codec<T>,
{
    let engine = &log.engine;
    let cursor = RawCursor::subscription(engine, options.start);
    let (sender, receiver) = crossbeam_channel::bounded(options.capacity);
    let shared = Arc::new(Shared::default());
    shared.dispatched.store(cursor.next, Ordering::Release);
    let task = Deliver {
        cursor,
        codec: log.codec.clone(),
        filter: options.filter,
        sender,
        pending: None,
        shared: shared.clone(),
        finished: false,
    };
    engine.add_subscriber(Box::new(task))?;
    Ok(Subscription {
        receiver,
        shared,
        engine: Arc::downgrade(engine),
        error: Mutex::new(None),
    })
}

pub(crate) fn subscribe_consumer<T, C>(
    consumer: &Consumer<T, C>,
) -> Result<ConsumerSubscription<T, C>>
where
    T: Send + 'static,
    C: Codec<T>,
{
    let start = Start::Offset(consumer.position());
    let subscription = subscribe(consumer.log(), SubscribeOptions::new(start))?;
    Ok(ConsumerSubscription {
        subscription,
        consumer: consumer.clone(),
    })
}

/// What one pass over a subscription did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pump {
    /// Delivered at least one record.
    Sent,
    /// Could not deliver: the channel is full.
    Full,
    /// Nothing more to deliver until the log grows.
    CaughtUp,
    /// The subscription is over (dropped, or ended by an error).
    Finished,
}

/// One subscription's delivery, as the untyped delivery thread sees it.
pub(crate) trait Task: Send {
    fn pump(&mut self, engine: &Engine, end: u64) -> Pump;
}

struct Deliver<T, C> {
    cursor: RawCursor,
    codec: Arc<C>,
    filter: Option<Filter<T>>,
    sender: Sender<Result<Record<T>>>,
    /// A record read but not yet accepted by the full channel.
    pending: Option<Result<Record<T>>>,
    shared: Arc<Shared>,
    /// An error that ends the subscription was read; it goes out last.
    finished: bool,
}

impl<T: Send, C: Codec<T>> Task for Deliver<T, C> {
    fn pump(&mut self, engine: &Engine, end: u64) -> Pump {
        if self.shared.dropped.load(Ordering::Acquire) {
            return Pump::Finished;
        }
        self.cursor.extend_to(end);
        let mut sent = 0;
        loop {
            if let Some(item) = self.pending.take() {
                match self.sender.try_send(item) {
                    Ok(()) => {
                        sent += 1;
                        self.shared.delivered();
                        if self.finished {
                            return Pump::Finished;
                        }
                    }
                    Err(TrySendError::Full(item)) => {
                        self.pending = Some(item);
                        self.shared.full.store(true, Ordering::Release);
                        return if sent > 0 { Pump::Sent } else { Pump::Full };
                    }
                    Err(TrySendError::Disconnected(_)) => return Pump::Finished,
                }
            }
            if sent >= PASS_BUDGET {
                return Pump::Sent;
            }
            let codec = &*self.codec;
            let next = self
                .cursor
                .next_frame(engine, |frame| match codec.decode(frame.payload) {
                    Ok(value) => Ok(Record {
                        offset: frame.offset,
                        timestamp: crate::time::Timestamp::from_micros(frame.timestamp),
                        value,
                    }),
                    Err(source) => Err(Error::Codec {
                        codec: codec.name(),
                        offset: Some(frame.offset),
                        source,
                    }),
                });
            self.shared
                .dispatched
                .store(self.cursor.next, Ordering::Release);
            match next {
                None => return if sent > 0 { Pump::Sent } else { Pump::CaughtUp },
                Some(Ok(Ok(record))) => {
                    if self.filter.as_ref().is_none_or(|keep| keep(&record.value)) {
                        self.pending = Some(Ok(record));
                    }
                }
                // A record that does not decode is reported; the ones after
                // it still come.
                Some(Ok(Err(e))) => self.pending = Some(Err(e)),
                Some(Err(e)) => {
                    self.pending = Some(Err(e));
                    self.finished = true;
                }
            }
        }
    }
}

impl<T, C> Drop for Deliver<T, C> {
    fn drop(&mut self) {
        // The sender goes with the task: wake an async receiver so it sees
        // the end.
        self.shared.delivered();
    }
}

/// The delivery side of a log: the tasks waiting to be picked up, and the
/// thread that runs them.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    inbox: Mutex<Vec<Box<dyn Task>>>,
    /// Set once the thread runs; read lock-free on every publish.
    thread: OnceLock<Thread>,
    /// Held while spawning, and then to join the thread.
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for dyn Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Task")
    }
}

impl Hub {
    /// Queues a task and makes sure the delivery thread runs.
    pub(crate) fn add(&self, engine: &Arc<Engine>, task: Box<dyn Task>) -> Result<()> {
        self.inbox.lock().push(task);
        if let Some(running) = self.thread.get() {
            running.unpark();
            return Ok(());
        }
        let mut spawned = self.handle.lock();
        if self.thread.get().is_none() {
            let weak = Arc::downgrade(engine);
            let handle = std::thread::Builder::new()
                .name("backbone-deliver".into())
                .spawn(move || deliver(weak))
                .map_err(|e| Error::io("start the delivery thread for", &engine.dir, e))?;
            let _ = self.thread.set(handle.thread().clone());
            *spawned = Some(handle);
        }
        Ok(())
    }

    /// Waits for the delivery thread to finish, once the log is shut down.
    /// (A filter that owns a handle may drop the last one on that thread
    /// itself, which must not wait for itself.)
    pub(crate) fn join(&self) {
        let handle = self.handle.lock().take();
        if let Some(handle) = handle {
            handle.thread().unpark();
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }

    /// Wakes the delivery thread, if there is one.
    #[inline]
    pub(crate) fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
            return;
        }
        // The first subscription is starting the thread: `add` holds this
        // lock until the thread is registered, so an append published
        // meanwhile either wakes it here or was published before the thread
        // took its first look. (Found by the loom model in
        // tests/loom_handover.rs: without this, such a record waited for
        // the idle timeout.)
        let _registering = self.handle.lock();
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// The delivery thread: passes over every subscription until the log is
/// closed or gone, sleeping when there is nothing to do.
fn deliver(engine: Weak<Engine>) {
    let mut tasks: Vec<Box<dyn Task>> = Vec::new();
    loop {
        let Some(engine) = engine.upgrade() else {
            // The last handle is gone: dropping the tasks drops their
            // senders, which ends every subscription.
            return;
        };
        tasks.append(&mut engine.hub().inbox.lock());
        let closing = engine.is_shut_down();
        let end = match engine.subscription_end() {
            Ok(end) => end,
            // The writer failed; records already published still go out.
            Err(_) => engine.published_end(),
        };
        let mut progressed = false;
        let mut waiting_for_space = false;
        tasks.retain_mut(|task| match task.pump(&engine, end) {
            Pump::Sent => {
                progressed = true;
                true
            }
            Pump::Full => {
                waiting_for_space = true;
                true
            }
            Pump::CaughtUp => true,
            Pump::Finished => false,
        });
        if closing {
            return;
        }
        let poll = engine.options.read_only || waiting_for_space;
        drop(engine);
        if !progressed {
            std::thread::park_timeout(if poll { POLL_FULL } else { IDLE });
        }
    }
}

/// A waker slot for the async `Stream`: the delivery thread wakes whatever
/// task last polled an empty channel.
#[cfg(feature = "async")]
#[derive(Debug, Default)]
struct AtomicWaker {
    registered: AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
}

#[cfg(feature = "async")]
impl AtomicWaker {
    fn register(&self, waker: &std::task::Waker) {
        let mut slot = self.waker.lock();
        match &*slot {
            Some(current) if current.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
        self.registered.store(true, Ordering::Release);
    }

    #[inline]
    fn wake(&self) {
        if self.registered.swap(false, Ordering::AcqRel) {
            if let Some(waker) = self.waker.lock().take() {
                waker.wake();
            }
        }
    }
}

#[cfg(feature = "async")]
impl<T> futures_core::Stream for Subscription<T> {
    type Item = Result<Record<T>>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        // Register before the second look, so a record delivered between
        // the two looks wakes this task instead of being missed.
        for attempt in 0..2 {
            match self.receiver.try_recv() {
                Ok(item) => return Poll::Ready(Some(self.received(item))),
                Err(TryRecvError::Disconnected) => return Poll::Ready(None),
                Err(TryRecvError::Empty) if attempt == 0 => self.shared.waker.register(cx.waker()),
                Err(TryRecvError::Empty) => {}
            }
        }
        Poll::Pending
    }
}
