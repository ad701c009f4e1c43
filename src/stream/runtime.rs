//! The threads stream jobs and tables run on: a [`Runtime`] is a fixed
//! pool of worker threads and a queue of tasks ready to take a step. A
//! task (a job or a table's driver) does one batch per step and, when its
//! source has nothing new, leaves a waker with the source's subscription
//! and is not looked at again until a record arrives or it is asked to
//! stop. So any number of jobs share the pool, a busy job gets its turn
//! after each batch, and an idle one costs no thread and no polling.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Wake, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

/// What a step of a task did.
pub(super) enum Step {
    /// It did some work and may have more: it goes back in the queue.
    Again,
    /// It has nothing to do: the waker it was given wakes it.
    Wait,
    /// It is finished.
    Done,
}

/// A job or a table driver, stepped by the runtime's workers.
pub(super) trait Task: Send {
    /// One batch, or nothing if there is none (then `waker` is left where
    /// the next record will wake it).
    fn step(&mut self, waker: &Waker) -> Step;

    /// The task panicked outside its user functions' guard (a bug): it
    /// ends with this reason.
    fn abort(&mut self, reason: String);
}

/// A pool of threads that runs stream jobs and tables.
///
/// [`Runtime::shared`] is the process-wide one every job and table uses
/// unless given another ([`Stream::on`](super::Stream::on)): one thread per
/// core. A runtime of your own bounds what a set of jobs may use; dropping
/// its last handle stops its threads once they finish their current step,
/// and the jobs still on it end (their [`join`](super::Job::join) says
/// why) with what they committed kept.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
    /// Stops the threads when the last handle goes.
    _owner: Arc<Owner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("threads", &self.inner.threads)
            .finish_non_exhaustive()
    }
}

struct Inner {
    threads: usize,
    queue: Mutex<VecDeque<Arc<Cell>>>,
    ready: Condvar,
    shutdown: AtomicBool,
    /// Every task started, to end them all at shutdown (a waiting task is
    /// held only by the waker it left with its source).
    cells: Mutex<Vec<Weak<Cell>>>,
}

/// Stops the workers when dropped.
struct Owner {
    inner: Arc<Inner>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.ready.notify_all();
        let workers =
            std::mem::take(&mut *self.workers.lock().unwrap_or_else(PoisonError::into_inner));
        let me = std::thread::current().id();
        for worker in workers {
            // (A task that drops the last handle runs on a worker, which
            // cannot wait for itself.)
            if worker.thread().id() != me {
                let _ = worker.join();
            }
        }
        // The tasks still on it end now (dropping them says so to their
        // handles).
        self.inner
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let cells = std::mem::take(
            &mut *self
                .inner
                .cells
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for cell in cells.iter().filter_map(Weak::upgrade) {
            let task = cell
                .task
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            drop(task);
        }
    }
}

/// One task and whether it is in the queue.
struct Cell {
    task: Mutex<Option<Box<dyn Task>>>,
    queued: AtomicBool,
    runtime: Weak<Inner>,
}

impl Wake for Cell {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(runtime) = self.runtime.upgrade() {
            runtime
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(self.clone());
            runtime.ready.notify_one();
        }
    }
}

static SHARED: OnceLock<Runtime> = OnceLock::new();

impl Runtime {
    /// A runtime of `threads` worker threads (at least one).
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a thread cannot be started.
    pub fn new(threads: usize) -> Result<Runtime> {
        let threads = threads.max(1);
        let inner = Arc::new(Inner {
            threads,
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            shutdown: AtomicBool::new(false),
            cells: Mutex::new(Vec::new()),
        });
        let owner = Arc::new(Owner {
            inner: inner.clone(),
            workers: Mutex::new(Vec::new()),
        });
        for i in 0..threads {
            let worker_inner = inner.clone();
            let worker = std::thread::Builder::new()
                .name(format!("backbone-stream-{i}"))
                .spawn(move || work(&worker_inner))
                .map_err(|e| Error::io("spawn a stream runtime thread", "backbone-stream", e))?;
            owner
                .workers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(worker);
        }
        Ok(Runtime {
            inner,
            _owner: owner,
        })
    }

    /// The process-wide runtime: one thread per core
    /// ([`std::thread::available_parallelism`]), started the first time a
    /// job or table needs it, and never stopped.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if its threads cannot be started.
    pub fn shared() -> Result<Runtime> {
        if let Some(runtime) = SHARED.get() {
            return Ok(runtime.clone());
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let runtime = Runtime::new(threads)?;
        Ok(SHARED.get_or_init(|| runtime).clone())
    }

    /// How many worker threads it has.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Starts `task`: it takes its first step soon. The waker returned
    /// wakes it (to look at its stop flag, say).
    pub(super) fn spawn(&self, task: Box<dyn Task>) -> Waker {
        let cell = Arc::new(Cell {
            task: Mutex::new(Some(task)),
            queued: AtomicBool::new(false),
            runtime: Arc::downgrade(&self.inner),
        });
        {
            let mut cells = self
                .inner
                .cells
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            cells.retain(|c| c.strong_count() > 0);
            cells.push(Arc::downgrade(&cell));
        }
        let waker = Waker::from(cell.clone());
        waker.wake_by_ref();
        waker
    }
}

/// A worker: takes the next ready task and steps it, until shut down.
fn work(inner: &Inner) {
    loop {
        let cell = {
            let mut queue = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if inner.shutdown.load(Ordering::Acquire) {
                    return;
                }
                if let Some(cell) = queue.pop_front() {
                    break cell;
                }
                queue = inner
                    .ready
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        // Out of the queue: a wake from now on queues it again, so one
        // that comes during the step is not lost.
        cell.queued.store(false, Ordering::Release);
        let waker = Waker::from(cell.clone());
        let mut slot = cell.task.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(task) = slot.as_mut() else {
            continue;
        };
        let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.step(&waker)));
        match step {
            Ok(Step::Again) => {
                drop(slot);
                // Back in the queue, waking another worker only if others
                // wait there too: this one takes the queue's next task
                // now, so a lone busy task does not wake an idle thread
                // (which finds nothing) after each batch.
                if !cell.queued.swap(true, Ordering::AcqRel) {
                    let mut queue = inner.queue.lock().unwrap_or_else(PoisonError::into_inner);
                    queue.push_back(cell);
                    if queue.len() > 1 {
                        inner.ready.notify_one();
                    }
                }
            }
            Ok(Step::Wait) => {}
            Ok(Step::Done) => *slot = None,
            Err(panic) => {
                task.abort(super::job::panic_message(panic.as_ref()));
                *slot = None;
            }
        }
    }
}

/// How long a waiter sleeps before it looks again on its own (a wake-up
/// it missed costs at most this).
const POLL: Duration = Duration::from_millis(20);

/// What a running task (a job or a table's driver) shares with its
/// handles: the next offset it will handle in each of its sources, its
/// stop flag, and how it ended.
#[derive(Debug)]
pub(super) struct Progress {
    name: String,
    /// Per source, in the order the task was given them.
    positions: Box<[AtomicU64]>,
    stop: AtomicBool,
    /// Per source, the lowest offset a [`wait_for`](Progress::wait_for)
    /// waits for (`u64::MAX` for none): the task wakes waiters only when
    /// it reaches it, not after every batch.
    wanted: Box<[AtomicU64]>,
    /// Wakes waiters when a position reaches what they want or the task
    /// ends.
    moved: Condvar,
    /// `Some` once the task has ended: why, if it failed.
    ended: Mutex<Option<Option<String>>>,
    /// How it ended, for the first `join`.
    result: Mutex<Option<Result<()>>>,
}

impl Progress {
    /// The progress of task `name`, at `positions` in its sources.
    pub(super) fn new(name: &str, positions: &[u64]) -> Progress {
        Progress {
            name: name.to_owned(),
            positions: positions.iter().map(|&p| AtomicU64::new(p)).collect(),
            stop: AtomicBool::new(false),
            wanted: positions.iter().map(|_| AtomicU64::new(u64::MAX)).collect(),
            moved: Condvar::new(),
            ended: Mutex::new(None),
            result: Mutex::new(None),
        }
    }

    /// The next offset the task will handle in source `source`.
    pub(super) fn position(&self, source: usize) -> u64 {
        self.positions[source].load(Ordering::Acquire)
    }

    /// The task has handled every record below `position` in source
    /// `source`.
    pub(super) fn advance(&self, source: usize, position: u64) {
        self.positions[source].store(position, Ordering::SeqCst);
        if position >= self.wanted[source].load(Ordering::SeqCst) {
            self.wanted[source].store(u64::MAX, Ordering::SeqCst);
            // Taking the lock orders this wake-up after a waiter's check
            // of the position, so it cannot fall between that check and
            // its wait.
            drop(self.lock_ended());
            self.moved.notify_all();
        }
    }

    pub(super) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    pub(super) fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    fn lock_ended(&self) -> std::sync::MutexGuard<'_, Option<Option<String>>> {
        self.ended.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Some` once the task has ended: its failure's text, if it failed.
    pub(super) fn ended(&self) -> Option<Option<String>> {
        self.lock_ended().clone()
    }

    /// Waits until the task has handled every record below `offset` in
    /// source `source`; [`Error::JobFailed`] if it ends first.
    pub(super) fn wait_for(&self, source: usize, offset: u64) -> Result<()> {
        let mut ended = self.lock_ended();
        loop {
            // Asked for before the position is read: an `advance` past
            // `offset` either is seen here or sees the request.
            self.wanted[source].fetch_min(offset, Ordering::SeqCst);
            if self.positions[source].load(Ordering::SeqCst) >= offset {
                return Ok(());
            }
            if let Some(why) = &*ended {
                return Err(Error::JobFailed {
                    name: self.name.clone(),
                    reason: why.clone().unwrap_or_else(|| "it stopped first".to_owned()),
                });
            }
            ended = self
                .moved
                .wait_timeout(ended, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for the task to end.
    pub(super) fn wait_ended(&self) {
        let mut ended = self.lock_ended();
        while ended.is_none() {
            ended = self
                .moved
                .wait(ended)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits for the task to end and says how: the first call gets its
    /// result, a later one [`Error::JobFailed`] with a failure's text.
    pub(super) fn join(&self) -> Result<()> {
        self.wait_ended();
        let first = self
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match (first, self.ended()) {
            (Some(result), _) => result,
            (None, Some(Some(reason))) => Err(Error::JobFailed {
                name: self.name.clone(),
                reason,
            }),
            (None, _) => Ok(()),
        }
    }

    fn end(&self, result: Result<()>) {
        let mut ended = self.lock_ended();
        if ended.is_some() {
            return;
        }
        *ended = Some(result.as_ref().err().map(ToString::to_string));
        *self.result.lock().unwrap_or_else(PoisonError::into_inner) = Some(result);
        self.moved.notify_all();
    }
}

/// How a task ended, said to its handles when the task is dropped: as the
/// last of its fields, after every log it held is let go, so that a
/// `join` (or the drop of a table's last handle) returns only when the
/// job or table can be started again at once.
pub(super) struct Ending {
    progress: Arc<Progress>,
    result: Option<Result<()>>,
}

impl Ending {
    pub(super) fn new(progress: Arc<Progress>) -> Ending {
        Ending {
            progress,
            result: None,
        }
    }

    /// Sets how it ended (the first result set stands).
    pub(super) fn set(&mut self, result: Result<()>) {
        self.result.get_or_insert(result);
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        // No result: its runtime was shut down under it.
        let result = self.result.take().unwrap_or_else(|| {
            Err(Error::JobFailed {
                name: self.progress.name.clone(),
                reason: "its runtime was shut down".to_owned(),
            })
        });
        self.progress.end(result);
    }
}
