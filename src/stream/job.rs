//! A running job: the thread that drives a [`Stream`]'s operators over
//! batches of its source's records and commits each batch's outputs with
//! its source position, and the [`Job`] handle that watches and stops it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::Stream;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::log::{Checkpoint, EventLog};
use crate::record::Start;

/// How long the job waits for a source record before it looks at its stop
/// flag again.
const POLL: Duration = Duration::from_millis(20);

/// The jobs running in this process, by output log and name: two jobs of
/// one name must not race on one checkpoint.
static RUNNING: Mutex<BTreeSet<(PathBuf, String)>> = Mutex::new(BTreeSet::new());

/// What the job's thread and its handle share.
#[derive(Debug, Default)]
struct Shared {
    /// The next source offset the job will handle.
    position: AtomicU64,
    stop: AtomicBool,
    /// Wakes `wait_for` when the position moves or the job ends.
    moved: Condvar,
    /// `Some` once the job has ended: why, if it failed.
    ended: Mutex<Option<Option<String>>>,
}

/// A job started by [`Stream::to`], running until it is stopped, fails, or
/// its source or output log is closed. Each job has a thread of its own,
/// for now; a bounded runtime shared by jobs and tables is to replace it.
///
/// Dropping the handle stops the job after its current batch and waits for
/// it (what it committed stays committed); [`stop`](Job::stop) and
/// [`join`](Job::join) do the same and report how it ended. The job keeps
/// its source and output logs open while it runs.
pub struct Job {
    name: String,
    shared: Arc<Shared>,
    source_end: Box<dyn Fn() -> u64 + Send + Sync>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("position", &self.position())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Releases a job's name when its thread ends, however it ends.
struct Running((PathBuf, String));

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

impl Job {
    pub(super) fn start<S, T, C, D>(stream: Stream<S, T, C>, output: EventLog<T, D>) -> Result<Job>
    where
        S: Send + 'static,
        T: Send + 'static,
        C: Codec<S> + Send + Sync + 'static,
        D: Codec<T> + Send + Sync + 'static,
    {
        crate::name::validate(&stream.name)?;
        let key = (output.path().to_path_buf(), stream.name.clone());
        if !RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            return Err(Error::JobRunning {
                name: stream.name.clone(),
                path: key.0,
            });
        }
        let running = Running(key);
        let shared = Arc::new(Shared::default());
        // Where it resumes, found before the thread starts: a bad
        // checkpoint is the caller's error at once.
        let next = match resume(&stream, &output) {
            Ok(next) => next,
            Err(e) => {
                drop(running);
                return Err(e);
            }
        };
        shared.position.store(next, Ordering::Release);
        let name = stream.name.clone();
        let source = stream.source.clone();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("backbone-job-{name}"))
            .spawn(move || {
                let _running = running;
                let result = run(stream, &output, &thread_shared, next);
                let failure = result.as_ref().err().map(ToString::to_string);
                *thread_shared
                    .ended
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(failure);
                thread_shared.moved.notify_all();
                result
            })
            .map_err(|e| Error::io("spawn a thread for job", PathBuf::from(&name), e))?;
        Ok(Job {
            name,
            shared,
            source_end: Box::new(move || source.next_offset()),
            thread: Some(thread),
        })
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next source offset the job will handle: every record below it
    /// has been handled and its outputs committed.
    pub fn position(&self) -> u64 {
        self.shared.position.load(Ordering::Acquire)
    }

    /// Source records not yet handled.
    pub fn lag(&self) -> u64 {
        (self.source_end)().saturating_sub(self.position())
    }

    /// Whether the job has ended (stopped, failed, or its logs closed).
    pub fn is_finished(&self) -> bool {
        self.ended().is_some()
    }

    fn ended(&self) -> Option<Option<String>> {
        self.shared
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until the job has handled (and committed) every source record
    /// below `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::JobFailed`] if the job ends first.
    pub fn wait_for(&self, offset: u64) -> Result<()> {
        let mut ended = self
            .shared
            .ended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if self.position() >= offset {
                return Ok(());
            }
            if let Some(why) = &*ended {
                return Err(Error::JobFailed {
                    name: self.name.clone(),
                    reason: why.clone().unwrap_or_else(|| "it stopped first".to_owned()),
                });
            }
            ended = self
                .shared
                .moved
                .wait_timeout(ended, POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Asks the job to finish its current batch and stop.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    /// Waits for the job to end and says how it ended.
    ///
    /// # Errors
    ///
    /// What stopped it: [`Error::JobFailed`] for a panic in a user
    /// function (nothing of that batch is committed), or the error of a
    /// read or an append ([`Error::Closed`] when a log was closed under
    /// it).
    pub fn join(mut self) -> Result<()> {
        self.wait()
    }

    fn wait(&mut self) -> Result<()> {
        match self.thread.take() {
            Some(thread) => thread.join().unwrap_or_else(|_| {
                Err(Error::JobFailed {
                    name: self.name.clone(),
                    reason: "the job's thread panicked".to_owned(),
                })
            }),
            None => Ok(()),
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        self.stop();
        let _ = self.wait();
    }
}

/// Where a job resumes: after its last checkpoint in `output`, or, on its
/// first run, at `start`, committed at once (an empty batch) so that a
/// restart resumes there, not at a later `Start::End`.
fn resume<S, T, C, D>(stream: &Stream<S, T, C>, output: &EventLog<T, D>) -> Result<u64>
where
    C: Codec<S>,
    D: Codec<T>,
{
    let source = &stream.source;
    if let Some(checkpoint) = output.last_checkpoint(&stream.name)? {
        return checkpoint.position_in(source);
    }
    let next = match stream.start {
        Start::Beginning => source.first_offset(),
        Start::End => source.next_offset(),
        Start::Offset(offset) => offset,
        Start::Timestamp(_) => match source.read(stream.start).next() {
            Some(record) => record?.offset,
            None => source.next_offset(),
        },
    };
    let checkpoint = Checkpoint::new(stream.name.clone()).source(source, next)?;
    output.append_committing(&[], &checkpoint)?;
    Ok(next)
}

/// The job's loop: a batch of source records through the operators, its
/// outputs and the source position committed together, until stopped.
fn run<S, T, C, D>(
    stream: Stream<S, T, C>,
    output: &EventLog<T, D>,
    shared: &Shared,
    mut next: u64,
) -> Result<()>
where
    C: Codec<S>,
    D: Codec<T>,
{
    let Stream {
        source,
        name,
        batch,
        mut pipeline,
        ..
    } = stream;
    let subscription = source.subscribe(Start::Offset(next))?;
    let mut records = Vec::with_capacity(batch.min(4096));
    let mut outputs = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        let Some(first) = subscription.recv_timeout(POLL)? else {
            continue;
        };
        records.push(first);
        while records.len() < batch {
            match subscription.try_recv()? {
                Some(record) => records.push(record),
                None => break,
            }
        }
        let end = records.last().map_or(next, |r| r.offset + 1);
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for record in records.drain(..) {
                pipeline(record, &mut |value| outputs.push(value));
            }
        }));
        if let Err(panic) = handled {
            return Err(Error::JobFailed {
                name,
                reason: panic_message(panic.as_ref()),
            });
        }
        let checkpoint = Checkpoint::new(name.clone()).source(&source, end)?;
        output.append_committing(&outputs, &checkpoint)?;
        outputs.clear();
        next = end;
        shared.position.store(next, Ordering::Release);
        shared.moved.notify_all();
    }
    Ok(())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => format!("a user function panicked: {message}"),
        (_, Some(message)) => format!("a user function panicked: {message}"),
        _ => "a user function panicked".to_owned(),
    }
}
