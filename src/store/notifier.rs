//! The end of what readers may read, and the readers waiting for it to move.
//!
//! The store publishes its readable end here and knows nothing about who
//! waits: a waiting reader registers a [`Waiter`] (any `std::task::Waker`,
//! so a parked thread, a channel or an async task alike), the way a
//! crossbeam channel flavor reaches its waiters only through its waker.
//!
//! The protocol needs no lock on the publishing side when nobody waits: the
//! end and a "someone waits" bit share one atomic word. A publisher swaps in
//! the new end and wakes the queued waiters only if the bit was set; a
//! reader queues its waiter, then sets the bit with a read-modify-write that
//! also returns the current end, and sleeps only if that end has nothing new
//! for it. Both sides modify the same word, so their operations are totally
//! ordered: either the publish comes later and sees the bit (and the queued
//! waiter), or the reader's registration comes later and sees the new end.
//! A loom model checks this (`src/store/loom_tests.rs`).

use std::sync::Arc;
use std::task::Waker;

use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering};

/// Bit 0 of the state word: at least one waiter is queued.
const WAITING: u64 = 1;

/// The readable end of one log, and its queue of waiting readers.
#[derive(Debug)]
pub(crate) struct Notifier {
    /// `end << 1 | WAITING`.
    state: AtomicU64,
    waiters: Mutex<Vec<Arc<Waiter>>>,
}

/// One reader's way of being woken. A waiter is queued at most once until
/// it is woken; registering it again meanwhile costs one atomic swap.
#[derive(Debug)]
pub(crate) struct Waiter {
    queued: AtomicBool,
    waker: Waker,
}

impl Waiter {
    pub(crate) fn new(waker: Waker) -> Arc<Waiter> {
        Arc::new(Waiter {
            queued: AtomicBool::new(false),
            waker,
        })
    }
}

impl Notifier {
    pub(crate) fn new(end: u64) -> Notifier {
        Notifier {
            state: AtomicU64::new(end << 1),
            waiters: Mutex::new(Vec::new()),
        }
    }

    /// Offsets below this are readable.
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.state.load(Ordering::Acquire) >> 1
    }

    /// Publishes a new readable end (never lower than the last one) and
    /// wakes every queued waiter.
    #[inline]
    pub(crate) fn publish(&self, end: u64) {
        if self.state.swap(end << 1, Ordering::AcqRel) & WAITING != 0 {
            self.wake_all();
        }
    }

    /// Wakes every queued waiter without moving the end: something they may
    /// act on changed (records were buffered, or the log is closing).
    #[inline]
    pub(crate) fn wake(&self) {
        if self.take_waiting() {
            self.wake_all();
        }
    }

    /// Takes the "someone waits" bit: whether a waiter was queued since the
    /// last publish or wake. A caller that gets `true` owes the queued
    /// waiters a [`wake_queued`](Notifier::wake_queued) (a publish no
    /// longer sees the bit).
    pub(crate) fn take_waiting(&self) -> bool {
        self.state.fetch_and(!WAITING, Ordering::AcqRel) & WAITING != 0
    }

    /// Wakes every queued waiter, after [`take_waiting`](Notifier::take_waiting).
    pub(crate) fn wake_queued(&self) {
        self.wake_all();
    }

    /// Whether a waiter is queued (and no publish or wake has come since).
    pub(crate) fn is_waited_on(&self) -> bool {
        self.state.load(Ordering::Acquire) & WAITING != 0
    }

    /// Queues `waiter` to be woken by the next publish or wake, and returns
    /// the readable end as of the registration: a reader that finds nothing
    /// new below it may sleep until its waker fires.
    pub(crate) fn register(&self, waiter: &Arc<Waiter>) -> u64 {
        if !waiter.queued.swap(true, Ordering::AcqRel) {
            self.waiters.lock().push(waiter.clone());
        }
        self.state.fetch_or(WAITING, Ordering::AcqRel) >> 1
    }

    /// Takes a waiter that will not wait again (its reader is gone) off the
    /// queue, so that readers coming and going never grow it.
    pub(crate) fn deregister(&self, waiter: &Arc<Waiter>) {
        if waiter.queued.load(Ordering::Acquire) {
            self.waiters.lock().retain(|w| !Arc::ptr_eq(w, waiter));
        }
    }

    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock());
        for waiter in waiters {
            // Cleared before the wake, so a reader that wakes and waits
            // again queues itself again.
            waiter.queued.store(false, Ordering::Release);
            waiter.waker.wake_by_ref();
        }
    }
}
