//! The threads the store shares across every log of the process.
//!
//! A monolith may hold hundreds of logs (one per topic or aggregate type), so
//! no log starts a thread of its own. Their background work runs on one
//! process-wide pool, started on first use, that never runs user code:
//!
//! - one timer thread, which holds jobs until they are due (the `Interval`
//!   syncs, and the polls of read-only logs that readers wait on);
//! - up to [`SYNC_THREADS`] threads for short jobs (a sync, a poll): many,
//!   because one log's `fdatasync` must not delay another log's deadline;
//! - up to [`PREP_THREADS`] threads for long jobs (writing a spare segment's
//!   zeros), kept apart so that they never hold up a sync.
//!
//! Threads are started as work arrives and none is free, up to these bounds,
//! and then stay for the life of the process: fifteen in all, whatever the
//! number of logs. Twelve for syncs, because a process with a thousand
//! `Interval` logs each appended to ten times a second needs about ten
//! thousand `fdatasync`s a second, and concurrent syncs of different files
//! share the file system's journal commits: measured on ext4, twelve
//! threads sync about twice as many files a second as four.
//!
//! A job belongs to one log through its [`Jobs`] gate: the log's last handle
//! closes the gate and waits for the log's jobs in flight, so no work of a
//! log runs after its files are released.

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

/// Threads for short jobs.
pub(crate) const SYNC_THREADS: usize = 12;
/// Threads for long jobs.
pub(crate) const PREP_THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

/// Which threads run a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Short jobs: syncs, polls.
    Short,
    /// Long jobs: preparing spare segments.
    Long,
}

/// Runs `job` on the pool's `lane` as soon as a thread is free.
pub(crate) fn run(lane: Lane, job: Job) {
    pool().lane(lane).push(job);
}

/// Runs `job` on the short lane once `at` has come.
pub(crate) fn run_at(at: Instant, job: Job) {
    pool().timer.push(at, job);
}

struct Pool {
    timer: Timer,
    short: Queue,
    long: Queue,
}

impl Pool {
    fn lane(&self, lane: Lane) -> &Queue {
        match lane {
            Lane::Short => &self.short,
            Lane::Long => &self.long,
        }
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        timer: Timer::default(),
        short: Queue::new("backbone-sync", SYNC_THREADS),
        long: Queue::new("backbone-prep", PREP_THREADS),
    })
}

/// A queue of jobs and the threads that take them.
struct Queue {
    name: &'static str,
    max: usize,
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: std::collections::VecDeque<Job>,
    idle: usize,
    threads: usize,
}

impl Queue {
    fn new(name: &'static str, max: usize) -> Queue {
        Queue {
            name,
            max,
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
        }
    }

    fn push(&'static self, job: Job) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.jobs.push_back(job);
        if state.idle > 0 {
            self.ready.notify_one();
            return;
        }
        if state.threads < self.max {
            let spawned = std::thread::Builder::new()
                .name(self.name.into())
                .spawn(move || self.work());
            // Without a new thread the job waits for a busy one.
            if spawned.is_ok() {
                state.threads += 1;
            }
        }
    }

    fn work(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                // A job never panics by design (it runs store code only);
                // one that did must not take the pool's thread with it.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            state.idle += 1;
            state = self.ready.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
        }
    }
}

/// Jobs held until they are due.
#[derive(Default)]
struct Timer {
    due: Mutex<BinaryHeap<Due>>,
    changed: Condvar,
    started: OnceLock<()>,
    seq: AtomicUsize,
}

struct Due {
    at: Instant,
    seq: usize,
    job: Job,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// Reversed, so that the heap's top is the earliest job.
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Timer {
    fn push(&'static self, at: Instant, job: Job) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Due { at, seq, job });
        self.changed.notify_one();
        self.started.get_or_init(|| {
            // Without a timer thread, due jobs run on the short lane's
            // threads when they are pushed: late rather than never.
            if std::thread::Builder::new()
                .name("backbone-timer".into())
                .spawn(move || self.work())
                .is_err()
            {
                self.flush_all();
            }
        });
    }

    fn work(&self) {
        let mut due = self.due.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while due.peek().is_some_and(|d| d.at <= now) {
                let job = due.pop().expect("peeked").job;
                run(Lane::Short, job);
            }
            due = match due.peek().map(|d| d.at) {
                Some(at) => {
                    self.changed
                        .wait_timeout(due, at - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(due).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    fn flush_all(&self) {
        let jobs = std::mem::take(&mut *self.due.lock().unwrap_or_else(|e| e.into_inner()));
        for due in jobs {
            run(Lane::Short, due.job);
        }
    }
}

/// The gate between one log and the pool: jobs run only while it is open,
/// and [`close`](Jobs::close) waits for the ones in flight.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    state: Mutex<JobsState>,
    idle: Condvar,
}

#[derive(Debug, Default)]
struct JobsState {
    closed: bool,
    running: usize,
}

impl Jobs {
    /// Runs `f` if the gate is open, counting it as in flight meanwhile.
    pub(crate) fn enter<R>(&self, f: impl FnOnce() -> R) -> Option<R> {
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.closed {
                return None;
            }
            state.running += 1;
        }
        let result = f();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.running -= 1;
        if state.running == 0 {
            self.idle.notify_all();
        }
        Some(result)
    }

    /// Closes the gate and waits for the jobs in flight. (Jobs run store
    /// code only and never hold a log's handles, so a job is never the one
    /// closing its own gate.)
    pub(crate) fn close(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.closed = true;
        while state.running > 0 {
            state = self.idle.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}
