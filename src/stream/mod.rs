//! Stream processing: pipelines from one log into another that restart
//! exactly once. A [`Stream`] names a source log, a job name and where a
//! first run starts; operators ([`filter`](Stream::filter),
//! [`map`](Stream::map), [`flat_map`](Stream::flat_map),
//! [`try_map`](Stream::try_map), [`inspect`](Stream::inspect),
//! [`scan`](Stream::scan), and keyed [`Window`]s with their aggregates)
//! shape its records; [`to`](Stream::to) starts it as a [`Job`] writing
//! into an output log, and [`for_each`](Stream::for_each) as one that
//! hands each result to a function.
//!
//! Every value carries an event time: the record's
//! [`event_time`](crate::Record::event_time) unless
//! [`event_time`](Stream::event_time) says otherwise. Outputs carry their
//! input's event time as their source time, so a job reading a job's
//! output windows on the time of the original events.
//!
//! A job hands each batch of outputs to its output log together with a
//! checkpoint of its position in the source
//! ([`EventLog::append_committing`]), so after any crash the output holds
//! each batch whole or not at all, and a job started again under the same
//! name resumes after the last batch: its output equals that of one
//! uninterrupted run, provided its functions are deterministic (the same
//! input gives the same outputs). The job is built only on the public log
//! API, and runs a batch at a time on a [`Runtime`] (a fixed pool of
//! threads, one per core by default), never on the log's own threads.
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
mod join;
mod operator;
mod running;
mod runtime;
mod table;
mod window;
pub use self::table::{Table, TableChange, TableOptions};

pub use self::job::{Job, JobFigures};
pub use self::runtime::Runtime;
pub use self::window::{Aggregated, Emit, KeyedStream, Lateness, Window, Windowed, WindowedStream};

use std::fmt::Display;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use self::job::{BranchOutput, DeadLetterLog, EachOutput, LogOutput};
use self::operator::{
    read_state, write_state, BoxedOperator, Chain, Event, Operator, Stage, Verdict,
};
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::log::{DeadLetter, EventLog};
use crate::record::{Start, Timestamp};

/// A pipeline from a source log, not yet started: operators are added by
/// value, and [`to`](Stream::to) or [`for_each`](Stream::for_each) starts
/// it.
#[must_use = "a stream does nothing until it is started with `to` or `for_each`"]
pub struct Stream<S, T, C> {
    /// The logs it reads: the one it was made from, then those merged in.
    sources: Vec<EventLog<S, C>>,
    name: String,
    start: Start,
    batch: usize,
    /// The lateness set by `event_time`, for the windows after it.
    lateness: Duration,
    dead_letters: Option<DeadLetterLog>,
    /// A bad argument to an operator, reported when the job starts.
    invalid: Option<Error>,
    /// Where the job runs (the shared runtime if `None`).
    runtime: Option<Runtime>,
    operator: BoxedOperator<S, T>,
}

impl<S, T, C> std::fmt::Debug for Stream<S, T, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("name", &self.name)
            .field("start", &self.start)
            .field("batch", &self.batch)
            .field("lateness", &self.lateness)
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
            sources: vec![self.clone()],
            name: name.to_owned(),
            start,
            batch: 1024,
            lateness: Duration::ZERO,
            dead_letters: None,
            invalid: None,
            runtime: None,
            operator: Box::new(Stage(
                |event: Event<S>, _: &Verdict, out: &mut dyn FnMut(Event<S>)| out(event),
            )),
        }
    }
}

/// Microseconds in `d`, saturating.
fn micros_of(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

impl<S, T, C> Stream<S, T, C>
where
    S: Send + 'static,
    T: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
{
    fn then_operator<U: 'static>(self, operator: impl Operator<T, U> + 'static) -> Stream<S, U, C> {
        Stream {
            sources: self.sources,
            name: self.name,
            start: self.start,
            batch: self.batch,
            lateness: self.lateness,
            dead_letters: self.dead_letters,
            invalid: self.invalid,
            runtime: self.runtime,
            operator: Box::new(Chain {
                first: self.operator,
                second: Box::new(operator),
            }),
        }
    }

    fn then<U: 'static>(
        self,
        stage: impl FnMut(Event<T>, &Verdict, &mut dyn FnMut(Event<U>)) + Send + 'static,
    ) -> Stream<S, U, C> {
        self.then_operator(Stage(stage))
    }

    /// The same stream, to fail with `error` when it starts.
    fn invalid<U>(mut self, error: Error) -> Stream<S, U, C>
    where
        U: Send + 'static,
    {
        self.invalid.get_or_insert(error);
        self.then(|_, _, _| {})
    }

    /// Keeps the values for which `keep` is true.
    pub fn filter(self, mut keep: impl FnMut(&T) -> bool + Send + 'static) -> Stream<S, T, C> {
        self.then(move |event, _, out| {
            if keep(&event.value) {
                out(event);
            }
        })
    }

    /// Turns each value into another.
    pub fn map<U: Send + 'static>(
        self,
        mut f: impl FnMut(T) -> U + Send + 'static,
    ) -> Stream<S, U, C> {
        self.then(move |event, _, out| {
            out(Event {
                value: f(event.value),
                time: event.time,
            })
        })
    }

    /// Turns each value into another, or rejects it: the source record it
    /// came from then goes to the [`dead_letter`](Stream::dead_letter) log
    /// with the error's text (and nothing of it to the output), or, without
    /// one, the job stops with [`Error::JobFailed`].
    pub fn try_map<U: Send + 'static, E: Display>(
        self,
        mut f: impl FnMut(T) -> std::result::Result<U, E> + Send + 'static,
    ) -> Stream<S, U, C> {
        self.then(move |event, verdict, out| match f(event.value) {
            Ok(value) => out(Event {
                value,
                time: event.time,
            }),
            Err(e) => verdict.reject(e.to_string()),
        })
    }

    /// Turns each value into any number of others, in order.
    pub fn flat_map<U: Send + 'static, I: IntoIterator<Item = U>>(
        self,
        mut f: impl FnMut(T) -> I + Send + 'static,
    ) -> Stream<S, U, C> {
        self.then(move |event, _, out| {
            for value in f(event.value) {
                out(Event {
                    value,
                    time: event.time,
                });
            }
        })
    }

    /// Looks at each value as it passes (for logging or metrics).
    pub fn inspect(self, mut f: impl FnMut(&T) + Send + 'static) -> Stream<S, T, C> {
        self.then(move |event, _, out| {
            f(&event.value);
            out(event);
        })
    }

    /// Sets each value's event time to `time(value)`, and how late a value
    /// may come for the windows after this ([`Lateness`]). Without it, a
    /// value's event time is its record's
    /// [`event_time`](crate::Record::event_time), with no lateness.
    pub fn event_time<E: Into<Timestamp>>(
        self,
        mut time: impl FnMut(&T) -> E + Send + 'static,
        lateness: Lateness,
    ) -> Stream<S, T, C> {
        let mut stream = self.then(move |event: Event<T>, _, out| {
            let time = time(&event.value).into();
            out(Event {
                value: event.value,
                time,
            });
        });
        stream.lateness = lateness.0;
        stream
    }

    /// A running state: `f` updates it with each value and may emit a
    /// value made from it. The state starts as `init` and is part of the
    /// job's checkpoint (written every 16 batches and when it stops).
    pub fn scan<A, U>(
        self,
        init: A,
        f: impl FnMut(&mut A, T) -> Option<U> + Send + 'static,
    ) -> Stream<S, U, C>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        U: Send + 'static,
    {
        self.then_operator(Scan { state: init, f })
    }

    /// Adds `other` as a source: its records go through this whole
    /// pipeline (the operators added before the merge too), interleaved
    /// with the other sources' in batches as they arrive. The job's
    /// checkpoint holds its position in each source, so it resumes in
    /// each where it stopped; which source's records come first in a
    /// batch depends on when they arrived, so a merged job's output holds
    /// each source's outputs exactly once and in that source's order, but
    /// their interleaving may differ from one run to another. The sources
    /// are part of the job: a job started again must merge the same logs
    /// (a checkpoint without one of them is [`Error::NotInCheckpoint`]).
    /// Merging a log twice is [`Error::InvalidArgument`] when the job
    /// starts.
    pub fn merge(mut self, other: &EventLog<S, C>) -> Stream<S, T, C> {
        self.sources.push(other.clone());
        self
    }

    /// Sends the source records a user function rejects
    /// ([`try_map`](Stream::try_map), or a panic) and the records that come
    /// too late for their window to `log` as [`DeadLetter`]s (with the
    /// reason and the record's bytes), and goes on, instead of stopping.
    /// Each dead letter is written once, across restarts: the dead letters
    /// of a batch are committed before its outputs.
    pub fn dead_letter<D>(mut self, log: &EventLog<DeadLetter, D>) -> Stream<S, T, C>
    where
        D: Codec<DeadLetter> + Send + Sync + 'static,
    {
        self.dead_letters = Some(DeadLetterLog::new(log.clone()));
        self
    }

    /// Runs the job on `runtime` instead of the shared one
    /// ([`Runtime::shared`]).
    pub fn on(mut self, runtime: &Runtime) -> Stream<S, T, C> {
        self.runtime = Some(runtime.clone());
        self
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
    /// [`Error::InvalidName`]; [`Error::InvalidArgument`] for a bad
    /// operator argument (a window that holds nothing);
    /// [`Error::JobRunning`] while a job of this name writes into `output`
    /// in this process; errors resuming from its checkpoint
    /// ([`Error::CheckpointAhead`], [`Error::NotInCheckpoint`], a state
    /// written by another pipeline) or reading or writing the logs.
    pub fn to<D: Codec<T> + Send + Sync + 'static>(self, output: &EventLog<T, D>) -> Result<Job> {
        let output = output.clone();
        Job::start(self, output.path().to_path_buf(), move || {
            Ok(LogOutput::new(output))
        })
    }

    /// Starts the job, writing each output to one of `outputs`: the one at
    /// the index `route` gives it. An index past the end rejects the
    /// source record (see [`try_map`](Stream::try_map)). Every batch
    /// commits to each output with its values for it; after a crash
    /// between two of them, the job resumes from the output furthest
    /// behind and gives each output only what it does not have, so each
    /// holds what one uninterrupted run would give it.
    ///
    /// # Errors
    ///
    /// As [`to`](Stream::to); [`Error::InvalidArgument`] for no outputs.
    pub fn branch<D: Codec<T> + Send + Sync + 'static>(
        self,
        outputs: &[&EventLog<T, D>],
        mut route: impl FnMut(&T) -> usize + Send + 'static,
    ) -> Result<Job> {
        let Some(first) = outputs.first() else {
            return Err(Error::InvalidArgument {
                name: "outputs",
                reason: "a branch needs at least one output".to_owned(),
            });
        };
        let path = first.path().to_path_buf();
        let logs: Vec<EventLog<T, D>> = outputs.iter().map(|&log| log.clone()).collect();
        let count = logs.len();
        let routed = self.then(move |event: Event<T>, verdict, out| {
            let i = route(&event.value);
            if i < count {
                out(Event {
                    value: (i, event.value),
                    time: event.time,
                });
            } else {
                verdict.reject(format!("routed to output {i} of {count}"));
            }
        });
        let name = routed.name.clone();
        let sources = routed.sources.iter().filter_map(EventLog::log_id).collect();
        Job::start(routed, path, move || {
            BranchOutput::new(logs, sources, &name)
        })
    }

    /// Starts the job, handing each output to `f` in order, at least once:
    /// the job's checkpoints (position and operator state) go to a log of
    /// their own, `<source>.jobs/<name>`, after `f` has had a batch, so
    /// after a crash `f` sees the outputs of the batch in flight again.
    ///
    /// # Errors
    ///
    /// As [`to`](Stream::to), and opening the checkpoint log.
    pub fn for_each(self, f: impl FnMut(T) + Send + 'static) -> Result<Job> {
        crate::name::validate(&self.name)?;
        let path = EachOutput::<()>::path(&self.sources[0], &self.name);
        Job::start(self, path.clone(), move || EachOutput::open(&path, f))
    }
}

/// The operator of [`Stream::scan`].
struct Scan<A, F> {
    state: A,
    f: F,
}

impl<T, U, A, F> Operator<T, U> for Scan<A, F>
where
    A: Serialize + DeserializeOwned + Send,
    F: FnMut(&mut A, T) -> Option<U> + Send,
{
    fn on_record(&mut self, input: Event<T>, _: &Verdict, out: &mut dyn FnMut(Event<U>)) {
        if let Some(value) = (self.f)(&mut self.state, input.value) {
            out(Event {
                value,
                time: input.time,
            });
        }
    }

    fn snapshot(&self, out: &mut Vec<u8>) -> Result<()> {
        write_state("scan", &self.state, out)
    }

    fn restore(&mut self, state: &mut &[u8]) -> Result<()> {
        self.state = read_state("scan", state)?;
        Ok(())
    }
}
