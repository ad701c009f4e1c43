//! Keyed windows over event time: which windows a value falls in
//! ([`Window`]), when a value is too late for them ([`Lateness`], the
//! watermark), when results go out ([`Emit`]), and the operator that folds
//! values into per-key, per-window aggregates and emits them as
//! [`Windowed`] records.
//!
//! The watermark is the largest event time the operator has seen minus the
//! allowed lateness. A value with an event time below it is late: it is
//! counted, sent to the job's dead-letter log if there is one, and never
//! folded into a window that may already have been emitted. A time window
//! closes once the watermark reaches its end. Everything depends only on
//! the order of the values, never on the clock, the batches or restarts:
//! a job's windows come out the same from one run or from many.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::operator::{read_state, write_state, Event, Operator, Verdict};
use super::Stream;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::record::Timestamp;

/// The windows of a keyed stream.
///
/// Time windows (`tumbling`, `hopping`) are aligned to the Unix epoch and
/// hold values with `start <= event time < end`. A session holds a key's
/// values while no two consecutive ones are more than `gap` apart; its
/// `start` and `end` are its first and last event times. A count window
/// holds a key's next `n` values in arrival order, whatever their times;
/// its `start` and `end` are the smallest and largest event times in it,
/// and lateness does not apply to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window(Kind);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Hopping { size: u64, step: u64 },
    Session { gap: u64 },
    Count { n: u64 },
}

impl Window {
    /// Windows of `size` one after the other: each value falls in one.
    pub fn tumbling(size: Duration) -> Window {
        let size = micros(size);
        Window(Kind::Hopping { size, step: size })
    }

    /// Windows of `size` starting every `step` (at most `size`): a value
    /// falls in `size / step` of them.
    pub fn hopping(size: Duration, step: Duration) -> Window {
        Window(Kind::Hopping {
            size: micros(size),
            step: micros(step),
        })
    }

    /// Sessions per key that end after `gap` without a value.
    pub fn session(gap: Duration) -> Window {
        Window(Kind::Session { gap: micros(gap) })
    }

    /// Windows of `n` values per key.
    pub fn count(n: u64) -> Window {
        Window(Kind::Count { n })
    }

    /// Refuses windows that would hold nothing or leave values out.
    fn check(self) -> Result<Window> {
        let refuse = |reason: &str| {
            Err(Error::InvalidArgument {
                name: "window",
                reason: reason.to_owned(),
            })
        };
        match self.0 {
            Kind::Hopping { size: 0, .. } => refuse("a window's size must be at least 1 µs"),
            Kind::Hopping { step: 0, .. } => {
                refuse("a hopping window's step must be at least 1 µs")
            }
            Kind::Hopping { size, step } if step > size => {
                refuse("a hopping window's step must not be larger than its size")
            }
            Kind::Session { gap: 0 } => refuse("a session's gap must be at least 1 µs"),
            Kind::Count { n: 0 } => refuse("a count window must hold at least one value"),
            _ => Ok(self),
        }
    }

    fn describe(self) -> String {
        match self.0 {
            Kind::Hopping { size, step } => format!("window:hopping({size},{step})"),
            Kind::Session { gap } => format!("window:session({gap})"),
            Kind::Count { n } => format!("window:count({n})"),
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// How far behind the largest event time seen a value may be and still
/// count: the watermark is that time minus the lateness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lateness(pub(super) Duration);

impl Lateness {
    /// No value may be older than one already seen.
    pub fn none() -> Lateness {
        Lateness(Duration::ZERO)
    }

    /// Values up to `by` older than the newest seen still count.
    pub fn bounded(by: Duration) -> Lateness {
        Lateness(by)
    }
}

/// When a window's result is emitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Emit {
    /// Once, when the window closes (the watermark passes its end; a
    /// session once the gap has passed; a count window at its `n`th value).
    #[default]
    OnClose,
    /// After every value the window takes: the result so far, each time.
    /// (A session's values are held until the watermark passes them, so
    /// its updates come out that much later.)
    OnUpdate,
}

/// The result of one window for one key: the value type of a windowed
/// aggregate's output log.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Windowed<K, V> {
    /// The key.
    pub key: K,
    /// Where the window starts (see [`Window`]).
    pub start: Timestamp,
    /// Where it ends (see [`Window`]).
    pub end: Timestamp,
    /// The aggregate.
    pub value: V,
}

/// A stream whose values have a key: [`window`](KeyedStream::window) groups
/// them.
#[must_use = "a stream does nothing until it is started"]
pub struct KeyedStream<S, K, T, C> {
    stream: Stream<S, (K, T), C>,
}

impl<S, K, T, C> std::fmt::Debug for KeyedStream<S, K, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream")
            .field("stream", &self.stream)
            .finish()
    }
}

/// A keyed stream grouped into windows: an aggregate
/// ([`aggregate`](WindowedStream::aggregate),
/// [`count`](WindowedStream::count), [`reduce`](WindowedStream::reduce))
/// makes its results.
#[must_use = "a stream does nothing until it is started"]
pub struct WindowedStream<S, K, T, C> {
    stream: Stream<S, (K, T), C>,
    window: Window,
}

impl<S, K, T, C> std::fmt::Debug for WindowedStream<S, K, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedStream")
            .field("stream", &self.stream)
            .field("window", &self.window)
            .finish()
    }
}

/// A windowed aggregate: choose when results go out with
/// [`emit`](Aggregated::emit) (by default on close), then start it with
/// [`to`](Aggregated::to) or go on with [`stream`](Aggregated::stream).
#[must_use = "a stream does nothing until it is started"]
pub struct Aggregated<S, K, V, C> {
    emit: Emit,
    build: Build<S, K, V, C>,
}

/// Makes an aggregate's stream once its emit mode is known.
type Build<S, K, V, C> = Box<dyn FnOnce(Emit) -> Stream<S, Windowed<K, V>, C>>;

impl<S, K, V, C> std::fmt::Debug for Aggregated<S, K, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Aggregated")
            .field("emit", &self.emit)
            .finish_non_exhaustive()
    }
}

impl<S, T, C> Stream<S, T, C>
where
    S: Send + 'static,
    T: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    /// Gives each value a key, for windows per key.
    pub fn key_by<K: Send + 'static>(
        self,
        mut key: impl FnMut(&T) -> K + Send + 'static,
    ) -> KeyedStream<S, K, T, C> {
        KeyedStream {
            stream: self.map(move |value| (key(&value), value)),
        }
    }
}

impl<S, K, T, C> KeyedStream<S, K, T, C>
where
    S: Send + 'static,
    K: Send + 'static,
    T: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    /// Groups each key's values into windows.
    pub fn window(self, window: Window) -> WindowedStream<S, K, T, C> {
        WindowedStream {
            stream: self.stream,
            window,
        }
    }
}

impl<S, K, T, C> WindowedStream<S, K, T, C>
where
    S: Send + 'static,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + 'static,
    T: Serialize + DeserializeOwned + Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    /// Folds each window's values into an aggregate that starts as
    /// `init()`. The aggregates are part of the job's state checkpoint
    /// (written every 16 batches and when it stops), so they are
    /// serialized then.
    pub fn aggregate<A>(
        self,
        init: impl FnMut() -> A + Send + 'static,
        fold: impl FnMut(&mut A, &T) + Send + 'static,
    ) -> Aggregated<S, K, A, C>
    where
        A: Clone + Serialize + DeserializeOwned + Send + 'static,
    {
        let WindowedStream { stream, window } = self;
        Aggregated {
            emit: Emit::OnClose,
            build: Box::new(move |emit| {
                let lateness = super::micros_of(stream.lateness);
                match window.check() {
                    Ok(window) => stream
                        .then_operator(WindowOperator::new(window, lateness, emit, init, fold)),
                    Err(e) => stream.invalid(e),
                }
            }),
        }
    }

    /// Counts each window's values.
    pub fn count(self) -> Aggregated<S, K, u64, C> {
        self.aggregate(|| 0u64, |n, _| *n += 1)
    }

    /// Combines each window's values with `f`, the first one as it is.
    pub fn reduce(self, mut f: impl FnMut(T, &T) -> T + Send + 'static) -> Aggregated<S, K, T, C>
    where
        T: Clone,
    {
        let inner = self.aggregate(
            || None::<T>,
            move |acc, value| {
                *acc = Some(match acc.take() {
                    Some(acc) => f(acc, value),
                    None => value.clone(),
                });
            },
        );
        Aggregated {
            emit: inner.emit,
            build: Box::new(move |emit| {
                (inner.build)(emit).flat_map(|w: Windowed<K, Option<T>>| {
                    // Every window holds at least one value.
                    w.value.map(|value| Windowed {
                        key: w.key,
                        start: w.start,
                        end: w.end,
                        value,
                    })
                })
            }),
        }
    }
}

impl<S, K, V, C> Aggregated<S, K, V, C>
where
    S: Send + 'static,
    K: Send + 'static,
    V: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    /// When results go out (default [`Emit::OnClose`]).
    pub fn emit(mut self, emit: Emit) -> Aggregated<S, K, V, C> {
        self.emit = emit;
        self
    }

    /// The results as a stream, for more operators.
    pub fn stream(self) -> Stream<S, Windowed<K, V>, C> {
        (self.build)(self.emit)
    }

    /// Starts the job, writing the results to `output`. See
    /// [`Stream::to`].
    ///
    /// # Errors
    ///
    /// As [`Stream::to`]; [`Error::InvalidArgument`] for a window that
    /// holds nothing (a zero size, gap or count, a step larger than the
    /// size).
    pub fn to<D: Codec<Windowed<K, V>> + Send + Sync + 'static>(
        self,
        output: &crate::log::EventLog<Windowed<K, V>, D>,
    ) -> Result<super::Job> {
        self.stream().to(output)
    }
}

/// One open time window of one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Slot<A> {
    acc: A,
    end: u64,
    /// The largest event time folded in: the result's event time.
    newest: u64,
    /// When it opened, among all windows: results of windows closing
    /// together go out in this order.
    seq: u64,
}

/// A key's open session.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Session<A> {
    acc: A,
    first: u64,
    last: u64,
    seq: u64,
}

/// A key's open count window.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Counted<A> {
    acc: A,
    n: u64,
    first: u64,
    newest: u64,
}

/// Everything the operator holds, as it is written to a checkpoint: maps
/// as lists, windows in the order they opened, so that a restored operator
/// closes them in the same order.
#[derive(Serialize, Deserialize)]
struct Saved<K, T, A> {
    newest_seen: Option<u64>,
    next_seq: u64,
    slots: Vec<(K, u64, Slot<A>)>,
    sessions: Vec<(K, Session<A>)>,
    held: Vec<(u64, u64, K, T)>,
    counted: Vec<(K, Counted<A>)>,
}

/// The windowed aggregate operator, for every kind of window.
struct WindowOperator<K, T, A, I, F> {
    window: Window,
    lateness: u64,
    emit: Emit,
    init: I,
    fold: F,
    /// The largest event time seen.
    newest_seen: Option<u64>,
    next_seq: u64,
    /// Time windows by key and start, and the order they close in.
    /// (Each key's open windows by start: a lookup by `&K` needs no
    /// clone of the key, and a key has few windows open at once.)
    slots: HashMap<K, Vec<(u64, Slot<A>)>>,
    closing: BTreeMap<(u64, u64), (K, u64)>,
    /// Sessions by key, the order they close in (by last time + gap), and
    /// the values held until the watermark passes them, by time.
    sessions: HashMap<K, Session<A>>,
    session_closing: BTreeMap<(u64, u64), K>,
    held: BTreeMap<(u64, u64), (K, T)>,
    counted: HashMap<K, Counted<A>>,
}

impl<K, T, A, I, F> WindowOperator<K, T, A, I, F>
where
    K: Hash + Eq + Clone,
    A: Clone,
    I: FnMut() -> A,
    F: FnMut(&mut A, &T),
{
    fn new(window: Window, lateness: u64, emit: Emit, init: I, fold: F) -> Self {
        WindowOperator {
            window,
            lateness,
            emit,
            init,
            fold,
            newest_seen: None,
            next_seq: 0,
            slots: HashMap::new(),
            closing: BTreeMap::new(),
            sessions: HashMap::new(),
            session_closing: BTreeMap::new(),
            held: BTreeMap::new(),
            counted: HashMap::new(),
        }
    }

    fn watermark(&self) -> Option<u64> {
        self.newest_seen.map(|t| t.saturating_sub(self.lateness))
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq - 1
    }

    fn result(key: K, start: u64, end: u64, newest: u64, acc: A) -> Event<Windowed<K, A>> {
        Event {
            value: Windowed {
                key,
                start: Timestamp::from_micros(start),
                end: Timestamp::from_micros(end),
                value: acc,
            },
            time: Timestamp::from_micros(newest),
        }
    }

    fn on_time_window(
        &mut self,
        size: u64,
        step: u64,
        key: K,
        value: &T,
        t: u64,
        out: &mut dyn FnMut(Event<Windowed<K, A>>),
    ) {
        // Starts of the windows that hold `t`, oldest first.
        let last = t - t % step;
        let mut start = (t + 1).saturating_sub(size).div_ceil(step) * step;
        while start <= last {
            let end = start.saturating_add(size);
            let open = self.slots.get_mut(&key).and_then(|windows| {
                let i = windows.iter().position(|(s, _)| *s == start)?;
                Some(&mut windows[i].1)
            });
            let slot = match open {
                Some(slot) => slot,
                None => {
                    let seq = self.seq();
                    self.closing.insert((end, seq), (key.clone(), start));
                    let acc = (self.init)();
                    let windows = self.slots.entry(key.clone()).or_default();
                    windows.push((
                        start,
                        Slot {
                            acc,
                            end,
                            newest: t,
                            seq,
                        },
                    ));
                    &mut windows.last_mut().expect("just pushed").1
                }
            };
            (self.fold)(&mut slot.acc, value);
            slot.newest = slot.newest.max(t);
            if self.emit == Emit::OnUpdate {
                out(Self::result(
                    key.clone(),
                    start,
                    end,
                    slot.newest,
                    slot.acc.clone(),
                ));
            }
            start += step;
        }
    }

    fn close_time_windows(&mut self, watermark: u64, out: &mut dyn FnMut(Event<Windowed<K, A>>)) {
        while let Some(entry) = self.closing.first_entry() {
            if entry.key().0 > watermark {
                break;
            }
            let (key, start) = entry.remove();
            let windows = self
                .slots
                .get_mut(&key)
                .expect("every closing entry has its slot");
            let i = windows
                .iter()
                .position(|(s, _)| *s == start)
                .expect("every closing entry has its slot");
            let (_, slot) = windows.swap_remove(i);
            if windows.is_empty() {
                self.slots.remove(&key);
            }
            if self.emit == Emit::OnClose {
                out(Self::result(key, start, slot.end, slot.newest, slot.acc));
            }
        }
    }

    /// Folds the held values the watermark has passed into their sessions,
    /// oldest first, closing each session the gap has passed first.
    fn release_sessions(
        &mut self,
        gap: u64,
        watermark: u64,
        out: &mut dyn FnMut(Event<Windowed<K, A>>),
    ) {
        while let Some(entry) = self.held.first_entry() {
            let t = entry.key().0;
            if t > watermark {
                break;
            }
            let (key, value) = entry.remove();
            self.close_sessions(t, out);
            let session = match self.sessions.remove(&key) {
                Some(mut session) => {
                    self.session_closing
                        .remove(&(session.last.saturating_add(gap), session.seq));
                    session.last = session.last.max(t);
                    session
                }
                None => Session {
                    acc: (self.init)(),
                    first: t,
                    last: t,
                    seq: self.seq(),
                },
            };
            let mut session = session;
            (self.fold)(&mut session.acc, &value);
            if self.emit == Emit::OnUpdate {
                out(Self::result(
                    key.clone(),
                    session.first,
                    session.last,
                    session.last,
                    session.acc.clone(),
                ));
            }
            self.session_closing
                .insert((session.last.saturating_add(gap), session.seq), key.clone());
            self.sessions.insert(key, session);
        }
        self.close_sessions(watermark, out);
    }

    /// Closes the sessions whose gap has passed by `now` (no value at or
    /// after `now` can join them).
    fn close_sessions(&mut self, now: u64, out: &mut dyn FnMut(Event<Windowed<K, A>>)) {
        while let Some(entry) = self.session_closing.first_entry() {
            if entry.key().0 >= now {
                break;
            }
            let key = entry.remove();
            let session = self
                .sessions
                .remove(&key)
                .expect("every closing session is open");
            if self.emit == Emit::OnClose {
                out(Self::result(
                    key,
                    session.first,
                    session.last,
                    session.last,
                    session.acc,
                ));
            }
        }
    }

    fn on_count(
        &mut self,
        n: u64,
        key: K,
        value: &T,
        t: u64,
        out: &mut dyn FnMut(Event<Windowed<K, A>>),
    ) {
        let init = &mut self.init;
        let counted = self.counted.entry(key.clone()).or_insert_with(|| Counted {
            acc: init(),
            n: 0,
            first: t,
            newest: t,
        });
        (self.fold)(&mut counted.acc, value);
        counted.n += 1;
        counted.first = counted.first.min(t);
        counted.newest = counted.newest.max(t);
        let full = counted.n == n;
        if self.emit == Emit::OnUpdate {
            out(Self::result(
                key.clone(),
                counted.first,
                counted.newest,
                counted.newest,
                counted.acc.clone(),
            ));
        }
        if full {
            let counted = self.counted.remove(&key).expect("just updated");
            if self.emit == Emit::OnClose {
                out(Self::result(
                    key,
                    counted.first,
                    counted.newest,
                    counted.newest,
                    counted.acc,
                ));
            }
        }
    }
}

impl<K, T, A, I, F> Operator<(K, T), Windowed<K, A>> for WindowOperator<K, T, A, I, F>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send,
    T: Serialize + DeserializeOwned + Send,
    A: Clone + Serialize + DeserializeOwned + Send,
    I: FnMut() -> A + Send,
    F: FnMut(&mut A, &T) + Send,
{
    fn on_record(
        &mut self,
        input: Event<(K, T)>,
        verdict: &Verdict,
        out: &mut dyn FnMut(Event<Windowed<K, A>>),
    ) {
        let t = input.time.as_micros();
        let (key, value) = input.value;
        if let Kind::Count { n } = self.window.0 {
            return self.on_count(n, key, &value, t, out);
        }
        if let Some(watermark) = self.watermark() {
            if t < watermark {
                verdict.late(format!(
                    "late: event time {} is behind the watermark {}",
                    Timestamp::from_micros(t),
                    Timestamp::from_micros(watermark)
                ));
                return;
            }
        }
        self.newest_seen = Some(self.newest_seen.map_or(t, |seen| seen.max(t)));
        let watermark = self.watermark().expect("a time was just seen");
        match self.window.0 {
            Kind::Hopping { size, step } => {
                self.on_time_window(size, step, key, &value, t, out);
                self.close_time_windows(watermark, out);
            }
            Kind::Session { gap } => {
                let seq = self.seq();
                self.held.insert((t, seq), (key, value));
                self.release_sessions(gap, watermark, out);
            }
            Kind::Count { .. } => unreachable!("handled above"),
        }
    }

    fn snapshot(&self, out: &mut Vec<u8>) -> Result<()> {
        let mut slots: Vec<_> = self
            .closing
            .values()
            .map(|(key, start)| {
                let slot = self.slots[key]
                    .iter()
                    .find(|(s, _)| s == start)
                    .map(|(_, slot)| slot)
                    .expect("every closing entry has its slot");
                (key, *start, slot)
            })
            .collect();
        slots.sort_by_key(|(_, _, slot)| slot.seq);
        let mut sessions: Vec<_> = self.sessions.iter().collect();
        sessions.sort_by_key(|(_, s)| s.seq);
        let held: Vec<_> = self
            .held
            .iter()
            .map(|(&(t, seq), (key, value))| (t, seq, key, value))
            .collect();
        let mut counted: Vec<_> = self.counted.iter().collect();
        // Count windows never close together: any fixed order will do.
        counted.sort_by_key(|(_, c)| (c.first, c.newest, c.n));
        #[derive(Serialize)]
        struct SavedRef<'a, K, T, A> {
            newest_seen: Option<u64>,
            next_seq: u64,
            slots: Vec<(&'a K, u64, &'a Slot<A>)>,
            sessions: Vec<(&'a K, &'a Session<A>)>,
            held: Vec<(u64, u64, &'a K, &'a T)>,
            counted: Vec<(&'a K, &'a Counted<A>)>,
        }
        let saved = SavedRef {
            newest_seen: self.newest_seen,
            next_seq: self.next_seq,
            slots,
            sessions,
            held,
            counted,
        };
        write_state(&self.window.describe(), &saved, out)
    }

    fn restore(&mut self, state: &mut &[u8]) -> Result<()> {
        let saved: Saved<K, T, A> = read_state(&self.window.describe(), state)?;
        self.newest_seen = saved.newest_seen;
        self.next_seq = saved.next_seq;
        let gap = match self.window.0 {
            Kind::Session { gap } => gap,
            _ => 0,
        };
        for (key, start, slot) in saved.slots {
            self.closing
                .insert((slot.end, slot.seq), (key.clone(), start));
            self.slots.entry(key).or_default().push((start, slot));
        }
        for (key, session) in saved.sessions {
            self.session_closing
                .insert((session.last.saturating_add(gap), session.seq), key.clone());
            self.sessions.insert(key, session);
        }
        for (t, seq, key, value) in saved.held {
            self.held.insert((t, seq), (key, value));
        }
        self.counted.extend(saved.counted);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    type Sums = WindowOperator<char, u64, u64, fn() -> u64, fn(&mut u64, &u64)>;

    fn op(window: Window, lateness: u64, emit: Emit) -> Sums {
        WindowOperator::new(window, lateness, emit, || 0, |sum, v| *sum += *v)
    }

    type Out = Vec<(char, u64, u64, u64)>;

    /// Feeds (key, value, time in seconds) and returns the results as
    /// (key, start s, end s, sum), and the late values.
    fn feed<I, F>(
        op: &mut WindowOperator<char, u64, u64, I, F>,
        input: &[(char, u64, u64)],
    ) -> (Out, Vec<u64>)
    where
        I: FnMut() -> u64 + Send,
        F: FnMut(&mut u64, &u64) + Send,
    {
        let verdict = Verdict::default();
        let mut results = Vec::new();
        let mut late = Vec::new();
        for &(key, value, secs) in input {
            let event = Event {
                value: (key, value),
                time: Timestamp::from_micros(secs * S),
            };
            op.on_record(event, &verdict, &mut |e| {
                let w = e.value;
                results.push((
                    w.key,
                    w.start.as_micros() / S,
                    w.end.as_micros() / S,
                    w.value,
                ));
            });
            if verdict.take().0.is_some() {
                late.push(value);
            }
        }
        (results, late)
    }

    #[test]
    fn tumbling_windows_close_when_the_watermark_passes_their_end() {
        let mut w = op(
            Window::tumbling(Duration::from_secs(10)),
            2 * S,
            Emit::OnClose,
        );
        let (out, late) = feed(
            &mut w,
            &[
                ('a', 1, 1),
                ('b', 2, 3),
                ('a', 3, 9),
                ('a', 4, 11), // watermark 9: nothing closes
                ('b', 5, 9),  // out of order, within lateness
                ('a', 6, 12), // watermark 10: [0,10) closes
                ('b', 7, 7),  // late (7 < 10)
                ('a', 8, 25), // watermark 23: [10,20) closes
            ],
        );
        assert_eq!(out, [('a', 0, 10, 4), ('b', 0, 10, 7), ('a', 10, 20, 10)]);
        assert_eq!(late, [7]);
    }

    #[test]
    fn hopping_windows_each_take_the_value() {
        let mut w = op(
            Window::hopping(Duration::from_secs(10), Duration::from_secs(5)),
            0,
            Emit::OnClose,
        );
        // (Windows start at the epoch: none starts before it.)
        let (out, late) = feed(
            &mut w,
            &[('k', 1, 3), ('k', 2, 7), ('k', 4, 12), ('k', 8, 30)],
        );
        assert_eq!(out, [('k', 0, 10, 3), ('k', 5, 15, 6), ('k', 10, 20, 4)]);
        assert!(late.is_empty());
    }

    #[test]
    fn updates_go_out_after_every_value() {
        let mut w = op(Window::tumbling(Duration::from_secs(10)), 0, Emit::OnUpdate);
        let (out, _) = feed(&mut w, &[('a', 1, 1), ('a', 2, 2), ('a', 3, 12)]);
        assert_eq!(out, [('a', 0, 10, 1), ('a', 0, 10, 3), ('a', 10, 20, 3)]);
    }

    #[test]
    fn sessions_merge_values_within_the_gap_even_out_of_order() {
        let mut w = op(
            Window::session(Duration::from_secs(5)),
            10 * S,
            Emit::OnClose,
        );
        let (out, late) = feed(
            &mut w,
            &[
                ('a', 1, 100),
                ('a', 2, 108), // 8 s after: a new session, unless 104 comes
                ('a', 4, 104), // bridges 100 and 108
                ('b', 8, 106),
                ('a', 16, 130), // watermark 120: b's (gap over at 111) and a's (113) close
                ('a', 32, 112), // late: 112 < 120
            ],
        );
        assert_eq!(out, [('b', 106, 106, 8), ('a', 100, 108, 7)]);
        assert_eq!(late, [32]);
    }

    #[test]
    fn count_windows_close_at_n_values_whatever_the_times() {
        let mut w = op(Window::count(2), 0, Emit::OnClose);
        let (out, late) = feed(
            &mut w,
            &[('a', 1, 50), ('b', 2, 10), ('a', 4, 5), ('a', 8, 1)],
        );
        assert_eq!(out, [('a', 5, 50, 5)]);
        assert!(late.is_empty());
    }

    #[test]
    fn a_restored_operator_goes_on_as_if_never_stopped() {
        for window in [
            Window::tumbling(Duration::from_secs(10)),
            Window::hopping(Duration::from_secs(10), Duration::from_secs(3)),
            Window::session(Duration::from_secs(4)),
            Window::count(3),
        ] {
            let input: Vec<(char, u64, u64)> = (0..200u64)
                .map(|i| {
                    let key = ['x', 'y', 'z'][(i * 7 % 3) as usize];
                    (key, i, i * 2 + (i * 13 % 11))
                })
                .collect();
            let (whole, whole_late) = feed(&mut op(window, 5 * S, Emit::OnClose), &input);
            for cut in [1, 57, 150] {
                let mut first = op(window, 5 * S, Emit::OnClose);
                let (mut out, mut late) = feed(&mut first, &input[..cut]);
                let mut state = Vec::new();
                first.snapshot(&mut state).unwrap();
                let mut second = op(window, 5 * S, Emit::OnClose);
                let mut rest = state.as_slice();
                second.restore(&mut rest).unwrap();
                assert!(rest.is_empty());
                let (more, more_late) = feed(&mut second, &input[cut..]);
                out.extend(more);
                late.extend(more_late);
                assert_eq!(out, whole, "{window:?} cut at {cut}");
                assert_eq!(late, whole_late);
            }
            // Another window's state is refused.
            let mut state = Vec::new();
            op(window, 0, Emit::OnClose).snapshot(&mut state).unwrap();
            let other = op(Window::count(99), 0, Emit::OnClose).restore(&mut state.as_slice());
            assert!(other.is_err());
        }
    }

    #[test]
    fn windows_that_hold_nothing_are_refused() {
        for bad in [
            Window::tumbling(Duration::ZERO),
            Window::hopping(Duration::from_secs(1), Duration::from_secs(2)),
            Window::hopping(Duration::from_secs(1), Duration::ZERO),
            Window::session(Duration::ZERO),
            Window::count(0),
        ] {
            assert!(matches!(bad.check(), Err(Error::InvalidArgument { .. })));
        }
    }
}
