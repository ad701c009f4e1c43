//! The threads stream jobs and tables run on: a [`Runtime`] is a fixed
//! pool of worker threads and a queue of tasks ready to take a step. A
//! task (a job or a table's driver) does one batch per step and, when its
//! source has nothing new, leaves a waker with the source's subscription
//! and is not looked at again until a record arrives or it is asked to
//! stop. So any number of jobs share the pool, a busy job gets its turn
//! after each batch, and an idle one costs no thread and no polling.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Wake, Waker};
use std::thread::JoinHandle;

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
                waker.wake();
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

/// Where a task reports how it ended.
pub(super) trait Ends {
    fn end(&self, result: Result<()>);
}

/// How a task ended, said to its handles when the task is dropped: as the
/// last of its fields, after every log it held is let go, so that a
/// `join` (or the drop of a table's last handle) returns only when the
/// job or table can be started again at once.
pub(super) struct Ending<E: Ends + ?Sized> {
    ends: Arc<E>,
    name: String,
    result: Option<Result<()>>,
}

impl<E: Ends + ?Sized> Ending<E> {
    pub(super) fn new(ends: Arc<E>, name: &str) -> Ending<E> {
        Ending {
            ends,
            name: name.to_owned(),
            result: None,
        }
    }

    /// Sets how it ended (the first result set stands).
    pub(super) fn set(&mut self, result: Result<()>) {
        self.result.get_or_insert(result);
    }
}

impl<E: Ends + ?Sized> Drop for Ending<E> {
    fn drop(&mut self) {
        // No result: its runtime was shut down under it.
        let result = self.result.take().unwrap_or_else(|| {
            Err(Error::JobFailed {
                name: self.name.clone(),
                reason: "its runtime was shut down".to_owned(),
            })
        });
        self.ends.end(result);
    }
}
