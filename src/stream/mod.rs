//! Stream processing: pipelines from one log into another that restart
//! exactly once. A [`Stream`] names a source log, a job name and where a
//! first run starts; operators ([`filter`](Stream::filter),
//! [`map`](Stream::map), [`flat_map`](Stream::flat_map),
//! [`inspect`](Stream::inspect)) shape its records; [`to`](Stream::to)
//! starts it as a [`Job`] writing into an output log.
//!
//! A job hands each batch of outputs to its output log together with a
//! checkpoint of its position in the source
//! ([`EventLog::append_committing`]), so after any crash the output holds
//! each batch whole or not at all, and a job started again under the same
//! name resumes after the last batch: its output equals that of one
//! uninterrupted run, provided its functions are deterministic (the same
//! input gives the same outputs). The job is built only on the public log
//! API; it never runs on the log's own threads.
//!
//! ```
//! use backbone::{EventLog, Start};
//! # let dir = tempfile::tempdir().unwrap();
//! let orders: EventLog<u32> = EventLog::open(dir.path().join("orders"))?;
//! let doubled: EventLog<u64> = EventLog::open(dir.path().join("doubled"))?;
//! orders.append_batch(&[1, 2, 3, 0])?;
//! let job = orders
//!     .stream("doubler", Start::Beginning)
//!     .filter(|n| *n > 0)
//!     .map(|n| u64::from(n) * 2)
//!     .to(&doubled)?;
//! job.wait_for(4)?; // every source record before offset 4 handled
//! job.stop();
//! job.join()?;
//! let values: Vec<u64> = doubled.read(Start::Beginning).map(|r| r.unwrap().value).collect();
//! assert_eq!(values, [2, 4, 6]);
//! # Ok::<(), backbone::Error>(())
//! ```

mod job;

pub use self::job::Job;

use crate::codec::Codec;
use crate::error::Result;
use crate::log::EventLog;
use crate::record::{Record, Start};

/// The operators of a stream, composed: each source record goes in, and
/// the outputs it makes are handed to `emit`.
type Pipeline<S, T> = Box<dyn FnMut(Record<S>, &mut dyn FnMut(T)) + Send>;

/// A pipeline from a source log, not yet started: operators are added by
/// value, and [`to`](Stream::to) starts it.
#[must_use = "a stream does nothing until it is started with `to`"]
pub struct Stream<S, T, C> {
    source: EventLog<S, C>,
    name: String,
    start: Start,
    batch: usize,
    pipeline: Pipeline<S, T>,
}

impl<S, T, C> std::fmt::Debug for Stream<S, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .field("start", &self.start)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl<S, C> EventLog<S, C>
where
    S: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    /// A stream of this log's records, for the job `name` (1 to 128 ASCII
    /// letters, digits, `_`, `-`, `.`; checked when it starts). The name
    /// makes it restartable: a job started again under it resumes where
    /// the last one committed, and `start` applies only to its first run.
    pub fn stream(&self, name: &str, start: Start) -> Stream<S, S, C> {
        Stream {
            source: self.clone(),
            name: name.to_owned(),
            start,
            batch: 1024,
            pipeline: Box::new(|record, emit| emit(record.value)),
        }
    }
}

impl<S, T, C> Stream<S, T, C>
where
    S: Send + 'static,
    T: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    fn then<U>(
        self,
        mut stage: impl FnMut(T, &mut dyn FnMut(U)) + Send + 'static,
    ) -> Stream<S, U, C> {
        let mut pipeline = self.pipeline;
        Stream {
            source: self.source,
            name: self.name,
            start: self.start,
            batch: self.batch,
            pipeline: Box::new(move |record, emit| {
                pipeline(record, &mut |value| stage(value, emit));
            }),
        }
    }

    /// Keeps the values for which `keep` is true.
    pub fn filter(self, mut keep: impl FnMut(&T) -> bool + Send + 'static) -> Stream<S, T, C> {
        self.then(move |value, emit| {
            if keep(&value) {
                emit(value);
            }
        })
    }

    /// Turns each value into another.
    pub fn map<U: Send + 'static>(
        self,
        mut f: impl FnMut(T) -> U + Send + 'static,
    ) -> Stream<S, U, C> {
        self.then(move |value, emit| emit(f(value)))
    }

    /// Turns each value into any number of others, in order.
    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        mut f: impl FnMut(T) -> I + Send + 'static,
    ) -> Stream<S, U, C> {
        self.then(move |value, emit| {
            for out in f(value) {
                emit(out);
            }
        })
    }

    /// Looks at each value as it passes (for logging or metrics).
    pub fn inspect(self, mut f: impl FnMut(&T) + Send + 'static) -> Stream<S, T, C> {
        self.then(move |value, emit| {
            f(&value);
            emit(value);
        })
    }

    /// At most this many source records per batch (default 1024): each
    /// batch is one committing append to the output.
    pub fn batch_size(mut self, records: usize) -> Stream<S, T, C> {
        self.batch = records.max(1);
        self
    }

    /// Starts the job, writing its outputs to `output`. See [`Job`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`](crate::Error::InvalidName);
    /// [`Error::JobRunning`](crate::Error::JobRunning) while a job of this
    /// name writes into `output` in this process; errors resuming from its
    /// checkpoint ([`Error::CheckpointAhead`](crate::Error::CheckpointAhead),
    /// [`Error::NotInCheckpoint`](crate::Error::NotInCheckpoint)) or
    /// reading or writing the logs.
    pub fn to<D: Codec<T> + Send + Sync + 'static>(self, output: &EventLog<T, D>) -> Result<Job> {
        Job::start(self, output.clone())
    }
}
