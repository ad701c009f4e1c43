//! A loom model of the publish/wake protocol between appenders and the
//! delivery thread (src/engine.rs `next`, `wake_subscribers`,
//! `published_end`; src/subscribe.rs `Hub`, `deliver`, `Deliver::pump`).
//!
//! What the crate does, and what each model mirrors:
//!
//! - An appender (the I/O leader, holding the writer mutex) writes the
//!   records' bytes, then `self.next.store(end, Release)`, then
//!   `wake_subscribers()`: `hub.thread.get()` and `Thread::unpark`.
//! - The delivery thread loops: `end = next.load(Acquire)`
//!   (`subscription_end`), pumps every subscription up to `end`, and when
//!   no subscription made progress it parks: `park_timeout(IDLE = 1 s)`
//!   when every channel had room, `park_timeout(POLL_FULL = 1 ms)` when
//!   some channel was full (the receiver never wakes the delivery thread).
//!
//! A lost wakeup in the first case means a caught-up subscriber waits a
//! whole second for a record that is there, so these models treat the
//! `IDLE` park as `loom::thread::park()` with no timeout: loom then reports
//! any execution in which the delivery thread parks while records are
//! published and undelivered as a deadlock. The `POLL_FULL` park is a
//! timeout that always fires: `loom::thread::yield_now()`.
//!
//! Every model checks that each record is delivered exactly once, in
//! offset order, with the bytes that were written before it was published.
//! The `broken_*` models are the same protocol with one deliberate mistake
//! each, and must fail: they show the checks are not vacuous.
//!
//! Run (compiles the whole dependency graph with `--cfg loom`, so give it
//! its own target directory to leave the shared one alone):
//!
//! ```sh
//! CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom" \
//!     cargo test --release --test loom_handover
//! ```
#![cfg(loom)]

use loom::sync::atomic::{AtomicU64, Ordering};
use loom::sync::Mutex;
use loom::thread::{self, Thread};

/// The payload of record `offset`: never the cells' initial 0, so a read
/// of unpublished bytes shows.
fn value(offset: usize) -> u64 {
    100 + offset as u64
}

/// The deliberate mistakes of the `broken_*` models.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mistake {
    None,
    /// The appender wakes the delivery thread before it publishes.
    WakeBeforePublish,
    /// The delivery thread, woken from `park`, goes on with the end it
    /// loaded before it parked instead of loading it again.
    ParkWithoutRecheck,
    /// A full channel makes the delivery thread park with no timeout.
    FullParksForever,
}

/// One log as the protocol sees it.
struct Log {
    /// The records' bytes (the segment map), written before publishing.
    cells: Vec<AtomicU64>,
    /// `Engine::next`: offsets below it are published.
    next: AtomicU64,
    /// `Hub::thread`, set once the delivery thread runs. (A mutex is
    /// stronger than the crate's `OnceLock`, so it hides no interleaving a
    /// `OnceLock` would have.)
    thread: Mutex<Option<Thread>>,
    /// The writer mutex: publishes are serialized by it in the engine.
    writer: Mutex<()>,
    mistake: Mistake,
}

impl Log {
    fn new(capacity: usize, mistake: Mistake) -> Log {
        Log {
            cells: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicU64::new(0),
            thread: Mutex::new(None),
            writer: Mutex::new(()),
            mistake,
        }
    }

    /// `Engine::wake_subscribers` / `Hub::wake`.
    fn wake(&self) {
        if let Some(thread) = self.thread.lock().unwrap().as_ref() {
            thread.unpark();
        }
    }

    /// One append of one record, as the I/O leader does it: write, publish
    /// the new end, wake.
    fn append(&self) {
        let _w = self.writer.lock().unwrap();
        let at = self.next.load(Ordering::Relaxed) as usize;
        self.cells[at].store(value(at), Ordering::Relaxed);
        let end = at as u64 + 1;
        match self.mistake {
            Mistake::WakeBeforePublish => {
                self.wake();
                self.next.store(end, Ordering::Release);
            }
            _ => {
                self.next.store(end, Ordering::Release);
                self.wake();
            }
        }
    }

    /// Publishes `n` records before any thread of the model starts (the
    /// history a subscription catches up on).
    fn prefill(&self, n: usize) {
        for at in 0..n {
            self.cells[at].store(value(at), Ordering::Relaxed);
        }
        self.next.store(n as u64, Ordering::Release);
    }
}

/// The delivery thread with one subscription whose channel never fills:
/// delivers `total` records, then stops (the real thread goes on forever;
/// stopping is how the model ends). Returns what it delivered.
fn deliver_unbounded(log: &Log, total: usize) -> Vec<u64> {
    let mut cursor = 0;
    let mut out = Vec::new();
    let mut end = log.next.load(Ordering::Acquire) as usize;
    loop {
        assert!(end <= total, "published past the end of the model");
        let mut progressed = false;
        while cursor < end {
            out.push(log.cells[cursor].load(Ordering::Relaxed));
            cursor += 1;
            progressed = true;
        }
        if cursor == total {
            return out;
        }
        if !progressed {
            // park_timeout(IDLE): waiting out the second is the bug.
            thread::park();
            if log.mistake == Mistake::ParkWithoutRecheck {
                // Goes on with the end it saw before it slept.
                continue;
            }
        }
        end = log.next.load(Ordering::Acquire) as usize;
    }
}

/// Starts the delivery thread and registers it, as `Hub::add` does for
/// the first subscription.
fn start_delivery(
    log: &'static Log,
    run: impl FnOnce(&Log) -> Vec<u64> + Send + 'static,
) -> thread::JoinHandle<Vec<u64>> {
    let handle = thread::spawn(move || run(log));
    *log.thread.lock().unwrap() = Some(handle.thread().clone());
    handle
}

/// The model's shared state lives for the whole execution and is never
/// dropped: loom's own `Arc` panics when it is dropped during the unwinding
/// of a failed execution (a second panic, which aborts the test binary and
/// so would break the `should_panic` models).
fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

fn expected(total: usize) -> Vec<u64> {
    (0..total).map(value).collect()
}

/// One appender, two appends, a caught-up delivery thread already running.
fn one_appender(mistake: Mistake) {
    loom::model(move || {
        let log = leak(Log::new(2, mistake));
        let delivery = start_delivery(log, |log| deliver_unbounded(log, 2));
        let appender = {
            thread::spawn(move || {
                log.append();
                log.append();
            })
        };
        appender.join().unwrap();
        assert_eq!(delivery.join().unwrap(), expected(2));
    });
}

/// Two appenders (serialized by the writer mutex, each waking on its own)
/// and the delivery thread catching up on one record of history.
fn two_appenders(mistake: Mistake) {
    loom::model(move || {
        let log = leak(Log::new(3, mistake));
        log.prefill(1);
        let delivery = start_delivery(log, |log| deliver_unbounded(log, 3));
        let appenders: Vec<_> = (0..2)
            .map(|_| thread::spawn(move || log.append()))
            .collect();
        for a in appenders {
            a.join().unwrap();
        }
        assert_eq!(delivery.join().unwrap(), expected(3));
    });
}

#[test]
fn one_appender_no_lost_wakeup_exactly_once_in_order() {
    one_appender(Mistake::None);
}

#[test]
fn two_appenders_and_history_no_lost_wakeup_exactly_once_in_order() {
    two_appenders(Mistake::None);
}

#[test]
#[should_panic(expected = "deadlock")]
fn broken_wake_before_publish_loses_a_wakeup() {
    one_appender(Mistake::WakeBeforePublish);
}

#[test]
#[should_panic(expected = "deadlock")]
fn broken_park_without_recheck_loses_a_wakeup() {
    one_appender(Mistake::ParkWithoutRecheck);
}

// ---- a full channel -------------------------------------------------------

/// An empty channel slot.
const EMPTY: u64 = u64::MAX;

/// A bounded channel of capacity 1: `try_send` fills the empty slot or
/// fails (Full); the receiver blocks until the slot is filled (crossbeam
/// parks a receiver and the sender wakes it; a sender is never woken by a
/// receiver).
struct Channel {
    slot: AtomicU64,
    receiver: Mutex<Option<Thread>>,
}

impl Channel {
    fn try_send(&self, v: u64) -> bool {
        let sent = self
            .slot
            .compare_exchange(EMPTY, v, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if sent {
            if let Some(r) = self.receiver.lock().unwrap().as_ref() {
                r.unpark();
            }
        }
        sent
    }

    fn recv(&self) -> u64 {
        loop {
            let v = self.slot.swap(EMPTY, Ordering::AcqRel);
            if v != EMPTY {
                return v;
            }
            thread::park();
        }
    }
}

/// The delivery thread with one subscription of capacity 1, as
/// `Deliver::pump` does it: a record read but refused by the full channel
/// stays `pending`, the cursor stays, and the thread polls again after
/// `POLL_FULL`. Stops once `total` records went into the channel.
fn deliver_bounded(log: &Log, channel: &Channel, total: usize) {
    let mut cursor = 0;
    let mut pending: Option<u64> = None;
    let mut sent_total = 0;
    loop {
        let end = log.next.load(Ordering::Acquire) as usize;
        let mut sent = 0;
        let mut full = false;
        loop {
            if let Some(v) = pending.take() {
                if channel.try_send(v) {
                    sent += 1;
                } else {
                    pending = Some(v);
                    full = true;
                    break;
                }
            }
            if cursor >= end {
                break;
            }
            pending = Some(log.cells[cursor].load(Ordering::Relaxed));
            cursor += 1;
        }
        sent_total += sent;
        if sent_total == total {
            return;
        }
        if sent == 0 {
            if full && log.mistake != Mistake::FullParksForever {
                // park_timeout(POLL_FULL): the timeout fires.
                thread::yield_now();
            } else {
                thread::park();
            }
        }
    }
}

/// Two records of history and one live append through a channel of
/// capacity 1: the delivery thread meets a full channel, the receiver
/// drains it without waking the delivery thread.
fn full_channel(mistake: Mistake) {
    loom::model(move || {
        let log = leak(Log::new(3, mistake));
        log.prefill(2);
        let channel = leak(Channel {
            slot: AtomicU64::new(EMPTY),
            receiver: Mutex::new(None),
        });
        let receiver =
            { thread::spawn(move || (0..3).map(|_| channel.recv()).collect::<Vec<_>>()) };
        *channel.receiver.lock().unwrap() = Some(receiver.thread().clone());
        let delivery = {
            start_delivery(log, move |log| {
                deliver_bounded(log, channel, 3);
                Vec::new()
            })
        };
        let appender = { thread::spawn(move || log.append()) };
        appender.join().unwrap();
        delivery.join().unwrap();
        assert_eq!(receiver.join().unwrap(), expected(3));
    });
}

#[test]
fn full_channel_polls_and_delivers_exactly_once_in_order() {
    full_channel(Mistake::None);
}

#[test]
#[should_panic(expected = "deadlock")]
fn broken_full_channel_without_poll_stalls() {
    full_channel(Mistake::FullParksForever);
}

// ---- the first subscription -----------------------------------------------

/// The regression story: the first subscription starts the delivery thread
/// while an appender runs. `Hub::add` used to spawn the thread and only then
/// store it in `Hub::thread`, and `Hub::wake` did nothing while it was
/// unset. An append published in between woke nobody, and a delivery
/// thread that had already looked at the end parked for `IDLE` (1 s) with
/// the record undelivered. This model of that code must stall.
#[test]
#[should_panic(expected = "deadlock")]
fn broken_register_after_spawn_misses_a_wakeup() {
    loom::model(|| {
        let log = leak(Log::new(1, Mistake::None));
        let appender = { thread::spawn(move || log.append()) };
        let delivery = start_delivery(log, |log| deliver_unbounded(log, 1));
        appender.join().unwrap();
        assert_eq!(delivery.join().unwrap(), expected(1));
    });
}

/// The fix, as the crate now does it: `Hub::add` holds the lock that
/// `wake` takes while it spawns the thread and registers it, so an append
/// either finds the thread registered, or published before the thread was
/// spawned (and the thread's first look sees it). Only the cold path of
/// `wake` (no thread registered yet) takes that lock.
#[test]
fn first_subscription_registered_under_the_wake_lock_is_not_missed() {
    loom::model(|| {
        let log = leak(Log::new(1, Mistake::None));
        let appender = thread::spawn(move || log.append());
        let delivery = {
            let mut registered = log.thread.lock().unwrap();
            let handle = thread::spawn(move || deliver_unbounded(log, 1));
            *registered = Some(handle.thread().clone());
            handle
        };
        appender.join().unwrap();
        assert_eq!(delivery.join().unwrap(), expected(1));
    });
}
