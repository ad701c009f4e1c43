//! What a running bridge task and its handle share: the position the task
//! has reached, its connection and error status, the request to stop, and
//! how it ended. The handle waits on a condition variable (never on the
//! runtime), so the sync API is safe to call from anywhere, a caller's own
//! async runtime included.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use crate::error::{Error, Result};

/// A running bridge's health, as its handle's `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeStatus {
    /// Whether the client is connected to a server now.
    pub connected: bool,
    /// The last error the bridge met and retried (a lost server, a
    /// timed-out acknowledgement), if any since it last made progress.
    pub last_error: Option<String>,
    /// How many times it has retried since it started.
    pub retries: u64,
    /// Whether the task has ended (stopped, or failed for good: `join`
    /// says which).
    pub finished: bool,
}

#[derive(Debug)]
pub(crate) struct Control {
    /// The position the task has committed (its meaning is the bridge's).
    position: AtomicU64,
    connected: AtomicBool,
    /// Connections lost so far: a batch in flight across a loss is not
    /// waited for.
    disconnects: AtomicU64,
    stop: AtomicBool,
    /// Wakes the task out of an idle wait or a back-off when stopped.
    pub(crate) wake: Notify,
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct State {
    last_error: Option<String>,
    /// Why the server refused the client for good (its credentials).
    refusal: Option<String>,
    retries: u64,
    finished: bool,
    /// How the task ended, until `join` takes it.
    outcome: Option<Result<()>>,
}

impl Control {
    pub(crate) fn new(position: u64) -> Control {
        Control {
            position: AtomicU64::new(position),
            connected: AtomicBool::new(false),
            disconnects: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            wake: Notify::new(),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn position(&self) -> u64 {
        self.position.load(Ordering::Acquire)
    }

    /// The task moved on to `position`: the last error is mended.
    pub(crate) fn advance(&self, position: u64) {
        self.position.store(position, Ordering::Release);
        let mut state = self.state.lock();
        state.last_error = None;
        self.changed.notify_all();
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// The client lost its connection (it reconnects by itself).
    pub(crate) fn disconnected(&self) {
        self.disconnects.fetch_add(1, Ordering::AcqRel);
        self.connected.store(false, Ordering::Relaxed);
    }

    /// How many connections were lost so far.
    pub(crate) fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Acquire)
    }

    /// The task met `error` and will retry.
    pub(crate) fn retrying(&self, error: &str) {
        let mut state = self.state.lock();
        state.last_error = Some(error.to_owned());
        state.retries += 1;
    }

    /// The client met `error` (it reconnects by itself).
    pub(crate) fn note_error(&self, error: &str) {
        self.state.lock().last_error = Some(error.to_owned());
    }

    /// The server refused the client's credentials: no retry mends it.
    pub(crate) fn refuse(&self, error: &str) {
        let mut state = self.state.lock();
        state.last_error = Some(error.to_owned());
        state.refusal = Some(error.to_owned());
        self.wake.notify_one();
    }

    pub(crate) fn refusal(&self) -> Option<String> {
        self.state.lock().refusal.clone()
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    pub(crate) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The task ended with `outcome`.
    pub(crate) fn finish(&self, outcome: Result<()>) {
        let mut state = self.state.lock();
        if let Err(e) = &outcome {
            state.last_error = Some(e.to_string());
        }
        state.finished = true;
        state.outcome = Some(outcome);
        self.changed.notify_all();
    }

    pub(crate) fn status(&self) -> BridgeStatus {
        let state = self.state.lock();
        BridgeStatus {
            connected: self.connected.load(Ordering::Relaxed),
            last_error: state.last_error.clone(),
            retries: state.retries,
            finished: state.finished,
        }
    }

    /// Waits until the position reaches `target` (true), the task ends
    /// (its error, or false if it stopped cleanly), or `timeout` passes
    /// (false).
    pub(crate) fn wait_for(&self, target: u64, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock();
        loop {
            if self.position() >= target {
                return Ok(true);
            }
            if state.finished {
                return match &state.outcome {
                    Some(Err(e)) => Err(Error::Nats {
                        op: "bridge",
                        reason: e.to_string(),
                    }),
                    _ => Ok(false),
                };
            }
            if self.changed.wait_until(&mut state, deadline).timed_out() {
                return Ok(self.position() >= target);
            }
        }
    }

    /// Waits for the task to end and takes how it ended (a second join
    /// finds `Ok`).
    pub(crate) fn join(&self) -> Result<()> {
        let mut state = self.state.lock();
        while !state.finished {
            self.changed.wait(&mut state);
        }
        state.outcome.take().unwrap_or(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wait_for_sees_progress_the_end_and_timeouts() {
        let control = Arc::new(Control::new(0));
        assert!(!control.wait_for(5, Duration::from_millis(10)).unwrap());
        let task = control.clone();
        let t = std::thread::spawn(move || {
            task.retrying("server gone");
            task.advance(7);
        });
        assert!(control.wait_for(5, Duration::from_secs(10)).unwrap());
        t.join().unwrap();
        let status = control.status();
        assert_eq!((status.retries, status.last_error), (1, None));
        control.finish(Err(Error::Nats {
            op: "publish",
            reason: "refused".into(),
        }));
        assert!(control.wait_for(9, Duration::from_secs(10)).is_err());
        assert!(control.status().finished);
        assert!(control.join().is_err());
        assert!(control.join().is_ok(), "the outcome is taken once");
    }
}
