//! Graceful close: the registry of a log's live subscriptions and how far
//! each has received ([`Subscribers`]), the wait that lets them receive
//! what was appended before a close, and what it found ([`CloseReport`]).
//!
//! A subscription publishes its progress (the offset after the last record
//! it handed over, or looked at and filtered out) in one atomic that only
//! it writes. [`EventLog::close`](crate::EventLog::close) refuses appends,
//! makes everything appended durable, then waits (up to
//! [`Options::close_timeout`](crate::Options::close_timeout)) until every
//! live subscription's progress has reached the final end, and only then
//! ends them. Dropping the last handle does not wait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How far one subscription has received.
#[derive(Debug)]
pub(crate) struct Progress {
    /// Records below this were handed over (or filtered out or skipped).
    received: AtomicU64,
}

impl Progress {
    /// Everything below `offset` was received. Only the subscription
    /// writes it, under its reader's lock and never backwards, so a plain
    /// store does (a read-modify-write per record would cost fan-out).
    pub(crate) fn reached(&self, offset: u64) {
        self.received.store(offset, Ordering::Release);
    }
}

/// The live subscriptions of one log.
#[derive(Debug, Default)]
pub(crate) struct Subscribers {
    live: Mutex<Vec<Weak<Progress>>>,
}

impl Subscribers {
    /// Registers a subscription that starts at `start`.
    pub(crate) fn join(&self, start: u64) -> Arc<Progress> {
        let progress = Arc::new(Progress {
            received: AtomicU64::new(start),
        });
        let mut live = self.live.lock();
        live.retain(|p| p.strong_count() > 0);
        live.push(Arc::downgrade(&progress));
        progress
    }

    /// Waits until every live subscription has received everything below
    /// `end`, or `timeout` has passed.
    pub(crate) fn drain(&self, end: u64, timeout: Duration) -> CloseReport {
        let deadline = Instant::now() + timeout;
        // Short sleeps, growing: a close is rare, and its wait must not
        // cost the subscribers anything on their path.
        let mut pause = Duration::from_micros(100);
        loop {
            let behind = self.behind(end);
            if behind.is_empty() || Instant::now() >= deadline {
                let subscriptions = self
                    .live
                    .lock()
                    .iter()
                    .filter(|p| p.strong_count() > 0)
                    .count();
                return CloseReport {
                    drained: subscriptions - behind.len(),
                    missed: behind,
                };
            }
            std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// For each live subscription short of `end`, how many records it has
    /// not received.
    fn behind(&self, end: u64) -> Vec<u64> {
        self.live
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| end.saturating_sub(p.received.load(Ordering::Acquire)))
            .filter(|&missed| missed > 0)
            .collect()
    }
}

/// What [`EventLog::close`](crate::EventLog::close) found: the live
/// subscriptions that received every record appended before it, and how
/// many records each of the others had not received when
/// [`Options::close_timeout`](crate::Options::close_timeout) ran out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Live subscriptions that received everything.
    pub drained: usize,
    /// For each live subscription that did not, the records it missed.
    pub missed: Vec<u64>,
}

impl CloseReport {
    /// Whether every live subscription received everything.
    pub fn is_complete(&self) -> bool {
        self.missed.is_empty()
    }
}
