//! The end of what readers may read, and the readers waiting for it to move.
//!
//! The store publishes its readable end here and knows nothing about who
//! waits: a reader joins with a [`Waiter`] (any `std::task::Waker`, so a
//! parked thread, a channel or an async task alike), the way a crossbeam
//! channel flavor reaches its waiters only through its waker.
//!
//! The protocol takes no lock on either side of a wake-up: the end and a
//! "someone waits" bit share one atomic word, and each waiter has a flag of
//! its own. A reader about to sleep raises its flag, then sets the bit with
//! a read-modify-write that also returns the current end, and sleeps only if
//! that end has nothing new for it. A publisher swaps in the new end and, if
//! the bit was set, wakes every waiter whose flag is raised. Both sides
//! modify the same word, so their operations are totally ordered: either the
//! publish comes later and sees the bit (and, through it, the flag), or the
//! registration comes later and sees the new end. Only joining and leaving
//! take a lock (for the list of waiters), which a publish takes shared. A
//! loom model checks this (`src/store/loom_tests.rs`).

use std::sync::Arc;
use std::task::Waker;

use crate::sync::{AtomicBool, AtomicU64, Ordering, RwLock};

/// Bit 0 of the state word: a waiter raised its flag since the last wake.
const WAITING: u64 = 1;

/// The readable end of one log, and the readers that may wait for it.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// `end << 1 | WAITING`.
    state: AtomicU64,
    waiters: RwLock<Vec<Arc<Waiter>>>,
}

/// One reader's way of being woken.
#[derive(Debug)]
pub(crate) struct Waiter {
    /// The reader waits (or is about to): the next wake is for it.
    waiting: AtomicBool,
    waker: Waker,
}

impl Waiter {
    pub(crate) fn new(waker: Waker) -> Arc<Waiter> {
        Arc::new(Waiter {
            waiting: AtomicBool::new(false),
            waker,
        })
    }
}

impl Notifier {
    pub(crate) fn new(end: u64) -> Notifier {
        Notifier {
            state: AtomicU64::new(end << 1),
            waiters: RwLock::new(Vec::new()),
        }
    }

    /// Offsets below this are readable.
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> 1
    }

    /// Publishes a new readable end (never lower than the last one) and
    /// wakes the waiters.
    #[inline]
    pub(crate) fn publish(&self, end: u64) {
        if self.state.swap(end << 1, Ordering::AcqRel) & WAITING != 0 {
            self.wake_all();
        }
    }

    /// Wakes the waiters without moving the end: something they may act on
    /// changed (the log is closing, say).
    #[inline]
    pub(crate) fn wake(&self) {
        if self.take_waiting() {
            self.wake_all();
        }
    }

    /// Takes the "someone waits" bit: whether a waiter raised its flag since
    /// the last publish or wake. A caller that gets `true` owes the waiters
    /// a [`wake_queued`](Notifier::wake_queued) (a publish no longer sees
    /// the bit).
    pub(crate) fn take_waiting(&self) -> bool {
        self.state.fetch_and(!WAITING, Ordering::AcqRel) & WAITING != 0
    }

    /// Wakes the waiters, after [`take_waiting`](Notifier::take_waiting).
    pub(crate) fn wake_queued(&self) {
        self.wake_all();
    }

    /// Whether a waiter raised its flag since the last publish or wake.
    pub(crate) fn is_waited_on(&self) -> bool {
        self.state.load(Ordering::Acquire) & WAITING != 0
    }

    /// Lets `waiter` be woken from now on (see [`register`](Notifier::register)).
    pub(crate) fn join(&self, waiter: &Arc<Waiter>) {
        self.waiters.write().push(waiter.clone());
    }

    /// Forgets a waiter whose reader is gone.
    pub(crate) fn leave(&self, waiter: &Arc<Waiter>) {
        self.waiters.write().retain(|w| !Arc::ptr_eq(w, waiter));
    }

    /// Marks `waiter` (which has joined) as waiting, to be woken by the
    /// next publish or wake, and returns the readable end as of the
    /// registration: a reader that finds nothing new below it may sleep
    /// until its waker fires.
    pub(crate) fn register(&self, waiter: &Waiter) -> u64 {
        waiter.waiting.store(true, Ordering::Release);
        self.state.fetch_or(WAITING, Ordering::AcqRel) >> 1
    }

    fn wake_all(&self) {
        for waiter in self.waiters.read().iter() {
            // A cheap look first: most of a busy log's readers are reading,
            // not waiting.
            if waiter.waiting.load(Ordering::Acquire)
                && waiter.waiting.swap(false, Ordering::AcqRel)
            {
                waiter.waker.wake_by_ref();
            }
        }
    }
}
