//! Competing consumers: a [`WorkGroup`] shares one log's records among any
//! number of worker threads. Each record goes to one worker at a time; the
//! worker acknowledges it ([`Task::ack`]) or rejects it for redelivery
//! ([`Task::reject`]), and a record whose worker does not answer within
//! the group's ack timeout (it died, or hangs) goes to another worker.
//! After [`GroupOptions::max_deliveries`] deliveries without an ack, a
//! record is set aside in the group's dead-letter log with the reason.
//!
//! The group's state is durable: every delivery and every ack is an event
//! in the group's own log, `{name}.group/` inside the source log's
//! directory (an [`EventLog`] of [`GroupEvent`], `EveryAppend`, so
//! concurrent workers share group commits). Reopened, the group replays it:
//! acked records stay done, records delivered but not acked are delivered
//! again (at-least-once), and delivery counts survive crashes, so a record
//! that crashes its workers ends in the dead-letter log instead of looping.
//! Each record is acknowledged exactly once: a second ack of it (a worker
//! whose delivery timed out and was given to another) is refused with
//! [`Error::AlreadyAcked`]. The group also keeps a consumer position of
//! its name (the offset below which every record is done), so retention
//! keeps what it has not finished and [`EventLog::consumers`] shows its
//! lag. The event log is compacted: a snapshot of the state is appended
//! every few thousand events and what came before it is removed.
//!
//! This is what Kafka's share groups, NATS work-queue consumers and Redis
//! consumer groups offer, for the workers of one process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Weak};
use std::task::Wake;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use super::dead_letter::{DeadLetter, DeadLetters};
use super::{decode, Consumer, EventLog};
use crate::codec::{Codec, Postcard};
use crate::error::{Error, Result};
use crate::options::{Durability, Options};
use crate::record::{Record, Start, Timestamp};
use crate::store::{Store, Waiter};

/// Events between two snapshots of a group's state.
const SNAPSHOT_EVERY: u64 = 4096;

/// One entry of a group's own log (`{name}.group/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GroupEvent {
    /// The record at this offset was handed to a worker.
    Delivered(u64),
    /// It was acknowledged.
    Acked(u64),
    /// It was set aside in the dead-letter log (or dropped, without one).
    DeadLettered(u64),
    /// The whole state: records below `floor` are done; of those at or
    /// above it, `done` are done and `attempts` counts deliveries of the
    /// others.
    Snapshot {
        /// Every record below this is done.
        floor: u64,
        /// Done records at or above `floor`.
        done: Vec<u64>,
        /// Deliveries of records not done, by offset.
        attempts: Vec<(u64, u32)>,
    },
}

/// How a [`WorkGroup`] hands out records.
#[derive(Clone)]
pub struct GroupOptions {
    ack_timeout: Duration,
    max_deliveries: u32,
    dead_letter: Option<DeadLetters>,
}

impl fmt::Debug for GroupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupOptions")
            .field("ack_timeout", &self.ack_timeout)
            .field("max_deliveries", &self.max_deliveries)
            .field("dead_letter", &self.dead_letter.is_some())
            .finish()
    }
}

impl Default for GroupOptions {
    fn default() -> Self {
        GroupOptions::new()
    }
}

impl GroupOptions {
    /// An ack timeout of 30 s, at most 5 deliveries, no dead-letter log
    /// (a record delivered 5 times without an ack is then dropped, and
    /// counted as done).
    pub fn new() -> GroupOptions {
        GroupOptions {
            ack_timeout: Duration::from_secs(30),
            max_deliveries: 5,
            dead_letter: None,
        }
    }

    /// How long a worker may hold a record before it is delivered again.
    pub fn ack_timeout(mut self, timeout: Duration) -> GroupOptions {
        self.ack_timeout = timeout;
        self
    }

    /// Deliveries of one record before it is set aside (at least 1).
    pub fn max_deliveries(mut self, deliveries: u32) -> GroupOptions {
        self.max_deliveries = deliveries.max(1);
        self
    }

    /// Where records go after too many deliveries, or that do not decode.
    pub fn dead_letter<C>(mut self, log: &EventLog<DeadLetter, C>) -> GroupOptions
    where
        C: Codec<DeadLetter> + Send + Sync + 'static,
    {
        self.dead_letter = Some(DeadLetters::new(log));
        self
    }
}

/// A record handed to one worker of a [`WorkGroup`]. Ack it when done,
/// reject it to have it delivered again; dropped without either, it is
/// delivered again after the ack timeout.
pub struct Task<T> {
    /// The record.
    pub record: Record<T>,
    /// How many times it has been delivered, this time included.
    pub delivery: u32,
    group: Weak<Shared>,
}

impl<T: fmt::Debug> fmt::Debug for Task<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("record", &self.record)
            .field("delivery", &self.delivery)
            .finish_non_exhaustive()
    }
}

impl<T> Task<T> {
    /// Acknowledges the record, durably: it is never delivered again.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyAcked`] if it was acknowledged already (this
    /// delivery timed out and another worker acked it); [`Error::Closed`]
    /// once the group is gone; the group log's write errors.
    pub fn ack(self) -> Result<()> {
        let shared = self.group.upgrade().ok_or(Error::Closed)?;
        shared.ack(self.record.offset)
    }

    /// Gives the record back for delivery to a worker now.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyAcked`] if it is done; [`Error::Closed`] once the
    /// group is gone.
    pub fn reject(self) -> Result<()> {
        let shared = self.group.upgrade().ok_or(Error::Closed)?;
        shared.reject(self.record.offset)
    }
}

/// A named group of competing workers over one log, from
/// [`EventLog::work_group`]. Clone it to share it between worker threads;
/// a second `work_group` call for the same name while it lives fails, as
/// for consumers.
///
/// ```
/// use backbone::{EventLog, GroupOptions};
/// use std::time::Duration;
/// # let dir = tempfile::tempdir().unwrap();
/// let orders: EventLog<u64> = EventLog::open(dir.path())?;
/// orders.append_batch(&[1, 2, 3])?;
/// let group = orders.work_group("fulfil", GroupOptions::new().ack_timeout(Duration::from_secs(10)))?;
/// let workers: Vec<_> = (0..2)
///     .map(|_| {
///         let group = group.clone();
///         std::thread::spawn(move || -> backbone::Result<u64> {
///             let mut sum = 0;
///             while let Some(task) = group.recv_timeout(Duration::from_millis(50))? {
///                 sum += task.record.value;
///                 task.ack()?;
///             }
///             Ok(sum)
///         })
///     })
///     .collect();
/// let total: u64 = workers.into_iter().map(|w| w.join().unwrap().unwrap()).sum();
/// assert_eq!((total, group.lag()), (6, 0));
/// # Ok::<(), backbone::Error>(())
/// ```
pub struct WorkGroup<T, C = Postcard> {
    shared: Arc<Shared>,
    codec: Arc<C>,
    _marker: std::marker::PhantomData<fn(T) -> T>,
}

impl<T, C> Clone for WorkGroup<T, C> {
    fn clone(&self) -> Self {
        WorkGroup {
            shared: self.shared.clone(),
            codec: self.codec.clone(),
            _marker: std::marker::PhantomData,
        }
    }
}

impl<T, C> fmt::Debug for WorkGroup<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.state.lock();
        f.debug_struct("WorkGroup")
            .field("floor", &state.floor)
            .field("in_flight", &state.in_flight.len())
            .finish_non_exhaustive()
    }
}

/// What every clone of one group shares.
struct Shared {
    source: Arc<Store>,
    events: EventLog<GroupEvent>,
    /// The group's position as a consumer of the source (its floor).
    position: Consumer<(), Postcard>,
    options: GroupOptions,
    state: Mutex<State>,
    changed: Arc<Signal>,
    waiter: Arc<Waiter>,
}

/// Wakes waiting workers: an append to the source, an ack or a reject.
#[derive(Default)]
struct Signal {
    lock: Mutex<()>,
    cond: Condvar,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _guard = self.lock.lock();
        self.cond.notify_all();
    }
}

#[derive(Debug, Default)]
struct State {
    /// Every record below this is done.
    floor: u64,
    /// Done records at or above `floor`.
    done: BTreeSet<u64>,
    /// Deliveries so far of records not done.
    attempts: HashMap<u64, u32>,
    /// Records handed out, with the time their ack is due.
    in_flight: BTreeMap<u64, Instant>,
    /// Records to hand out again.
    again: BTreeSet<u64>,
    /// The next record never handed out.
    fresh: u64,
    /// Events since the last snapshot.
    since_snapshot: u64,
}

impl State {
    fn apply(&mut self, event: &GroupEvent) {
        match event {
            GroupEvent::Delivered(offset) => {
                if *offset >= self.floor && !self.done.contains(offset) {
                    *self.attempts.entry(*offset).or_default() += 1;
                }
                self.fresh = self.fresh.max(offset + 1);
            }
            GroupEvent::Acked(offset) | GroupEvent::DeadLettered(offset) => self.finish(*offset),
            GroupEvent::Snapshot {
                floor,
                done,
                attempts,
            } => {
                self.floor = *floor;
                self.done = done.iter().copied().collect();
                self.attempts = attempts.iter().copied().collect();
                self.fresh = self
                    .fresh
                    .max(*floor)
                    .max(self.done.last().map_or(0, |o| o + 1))
                    .max(self.attempts.keys().max().map_or(0, |o| o + 1));
            }
        }
    }

    fn finish(&mut self, offset: u64) {
        self.attempts.remove(&offset);
        self.in_flight.remove(&offset);
        self.again.remove(&offset);
        if offset >= self.floor {
            self.done.insert(offset);
        }
        while self.done.remove(&self.floor) {
            self.floor += 1;
        }
        self.fresh = self.fresh.max(self.floor);
    }

    fn is_done(&self, offset: u64) -> bool {
        offset < self.floor || self.done.contains(&offset)
    }

    fn snapshot(&self) -> GroupEvent {
        let mut attempts: Vec<_> = self.attempts.iter().map(|(&o, &n)| (o, n)).collect();
        attempts.sort_unstable();
        GroupEvent::Snapshot {
            floor: self.floor,
            done: self.done.iter().copied().collect(),
            attempts,
        }
    }
}

/// The name of a group's own log inside the source's directory.
fn events_dir(source: &Store, name: &str) -> std::path::PathBuf {
    source.dir().join(format!("{name}.group"))
}

impl<T, C: Codec<T>> WorkGroup<T, C> {
    pub(crate) fn open(log: &EventLog<T, C>, name: &str, options: GroupOptions) -> Result<Self> {
        // The group's position is a consumer of its name: it takes the
        // name (one holder), and retention respects it.
        let position = Consumer::take(log, name, Start::Beginning, Arc::new(Postcard))?;
        let source = log.store().clone();
        let events: EventLog<GroupEvent> = Options::new()
            .durability(Durability::EveryAppend)
            .segment_bytes(4 << 20)
            .file_mode(source.file_mode())
            .close_timeout(Duration::ZERO)
            .open(events_dir(&source, name))?;
        let mut state = State {
            floor: position.position(),
            fresh: position.position(),
            ..State::default()
        };
        for event in events.read(Start::Beginning) {
            let event = event?.value;
            state.apply(&event);
            // Counted across lives, so that a group that restarts often
            // still snapshots and compacts its log.
            state.since_snapshot = match event {
                GroupEvent::Snapshot { .. } => 0,
                _ => state.since_snapshot + 1,
            };
        }
        state.fresh = state.fresh.max(state.floor);
        // Delivered and never answered before the restart: again.
        state.again = state.attempts.keys().copied().collect();
        let changed = Arc::new(Signal::default());
        let waiter = Waiter::new(std::task::Waker::from(changed.clone()));
        source.notifier().join(&waiter);
        Ok(WorkGroup {
            shared: Arc::new(Shared {
                source,
                events,
                position,
                options,
                state: Mutex::new(state),
                changed,
                waiter,
            }),
            codec: log.codec().clone(),
            _marker: std::marker::PhantomData,
        })
    }

    /// Waits for a record to work on.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the source log is closed; errors reading the
    /// source or writing the group's log. A record that does not decode is
    /// set aside (or dropped, without a dead-letter log) and the next one
    /// is waited for.
    pub fn recv(&self) -> Result<Task<T>> {
        loop {
            if let Some(task) = self.recv_timeout(Duration::from_secs(3600))? {
                return Ok(task);
            }
        }
    }

    /// Waits at most `timeout` for a record to work on; `Ok(None)` on
    /// timeout.
    ///
    /// # Errors
    ///
    /// As [`recv`](WorkGroup::recv).
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<Task<T>>> {
        let deadline = Instant::now() + timeout;
        let shared = &self.shared;
        loop {
            if shared.source.is_shut_down() {
                return Err(Error::Closed);
            }
            // Queued for a wake-up before looking, so that an append in
            // between is not missed.
            let published = shared.source.notifier().register(&shared.waiter);
            shared.source.follow_soon();
            let end = shared.source.readable_end()?.max(published);
            if let Some(task) = self.take(end)? {
                return Ok(Some(task));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let due = shared
                .state
                .lock()
                .in_flight
                .values()
                .min()
                .copied()
                .unwrap_or(deadline);
            let until = deadline.min(due).min(now + Duration::from_millis(100));
            let mut guard = shared.changed.lock.lock();
            shared.changed.cond.wait_until(&mut guard, until);
        }
    }

    /// Hands out the next record due, if any: one to deliver again, else
    /// the next fresh one below `end`.
    fn take(&self, end: u64) -> Result<Option<Task<T>>> {
        let shared = &self.shared;
        loop {
            let mut state = shared.state.lock();
            let now = Instant::now();
            let expired: Vec<u64> = state
                .in_flight
                .iter()
                .filter(|(_, due)| **due <= now)
                .map(|(&offset, _)| offset)
                .collect();
            for offset in expired {
                state.in_flight.remove(&offset);
                state.again.insert(offset);
            }
            let offset = match state.again.pop_first() {
                Some(offset) => offset,
                None if state.fresh < end => {
                    let offset = state.fresh;
                    state.fresh += 1;
                    offset
                }
                None => return Ok(None),
            };
            if state.is_done(offset) {
                continue;
            }
            let attempts = state.attempts.get(&offset).copied().unwrap_or(0);
            let event_type = &shared.source.meta().event;
            let exhausted = attempts >= shared.options.max_deliveries;
            let read = shared.source.get(offset, |frame| {
                let decoded = decode(&*self.codec, frame, event_type);
                // The bytes are copied only for a dead letter.
                let payload = if exhausted || decoded.is_err() {
                    frame.payload.to_vec()
                } else {
                    Vec::new()
                };
                (decoded, payload, frame.timestamp)
            })?;
            let Some((decoded, payload, timestamp)) = read else {
                // Removed by retention's hard limit: lost to the group.
                shared.finish(&mut state, offset, GroupEvent::DeadLettered(offset))?;
                continue;
            };
            let reason = match &decoded {
                _ if exhausted => Some(format!(
                    "delivered {attempts} times without an ack (max_deliveries {})",
                    shared.options.max_deliveries
                )),
                Err(e) => Some(e.to_string()),
                Ok(_) => None,
            };
            if let Some(reason) = reason {
                if let Some(dead_letter) = &shared.options.dead_letter {
                    dead_letter.append(&DeadLetter::new(
                        shared.source.dir().display().to_string(),
                        offset,
                        Timestamp::from_micros(timestamp),
                        reason,
                        payload,
                    ))?;
                }
                shared.finish(&mut state, offset, GroupEvent::DeadLettered(offset))?;
                continue;
            }
            // Durable before the worker sees it: a crash counts it.
            shared.events.append(&GroupEvent::Delivered(offset))?;
            let delivery = attempts + 1;
            state.attempts.insert(offset, delivery);
            state
                .in_flight
                .insert(offset, now + shared.options.ack_timeout);
            // Only now: a snapshot taken here must include this delivery.
            shared.events_written(&mut state)?;
            drop(state);
            return Ok(Some(Task {
                record: decoded.expect("checked above"),
                delivery,
                group: Arc::downgrade(shared),
            }));
        }
    }

    /// Records of the log not done yet (not acked, nor set aside).
    pub fn lag(&self) -> u64 {
        let state = self.shared.state.lock();
        let end = self.shared.source.next_offset();
        end.saturating_sub(state.floor)
            .saturating_sub(state.done.range(state.floor..end).count() as u64)
    }

    /// Records handed out and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.shared.state.lock().in_flight.len()
    }
}

impl Shared {
    fn ack(&self, offset: u64) -> Result<()> {
        let mut state = self.state.lock();
        if state.is_done(offset) {
            return Err(Error::AlreadyAcked { offset });
        }
        self.finish(&mut state, offset, GroupEvent::Acked(offset))?;
        drop(state);
        self.changed.wake_by_ref();
        Ok(())
    }

    fn reject(&self, offset: u64) -> Result<()> {
        let mut state = self.state.lock();
        if state.is_done(offset) {
            return Err(Error::AlreadyAcked { offset });
        }
        state.in_flight.remove(&offset);
        state.again.insert(offset);
        drop(state);
        self.changed.wake_by_ref();
        Ok(())
    }

    /// Records `event` (an ack or a setting aside) durably, then marks the
    /// record done.
    fn finish(&self, state: &mut State, offset: u64, event: GroupEvent) -> Result<()> {
        self.events.append(&event)?;
        state.finish(offset);
        self.events_written(state)
    }

    /// Counts an event; every so often, snapshots the state, removes the
    /// events before the snapshot, and stores the floor as the group's
    /// consumer position.
    fn events_written(&self, state: &mut State) -> Result<()> {
        state.since_snapshot += 1;
        if state.since_snapshot < SNAPSHOT_EVERY {
            return Ok(());
        }
        state.since_snapshot = 0;
        let at = self.events.append(&state.snapshot())?;
        self.events.truncate_before(at)?;
        self.position
            .commit(state.floor.max(self.position.position()))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.source.notifier().leave(&self.waiter);
        // Best effort: the floor makes retention and listings current; the
        // group's own log is the truth either way.
        let floor = self.state.lock().floor;
        if floor > self.position.position() {
            let _ = self.position.commit(floor);
        }
    }
}
