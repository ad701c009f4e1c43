//! A running job: the thread that drives a [`Stream`]'s operators over
//! batches of its source's records and commits each batch's outputs with
//! its source position and the operators' state, where its outputs go (an
//! output log, or a function with a checkpoint log of its own), its
//! dead-letter log, and the [`Job`] handle that watches and stops it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Waker;
use std::time::Instant;

use super::operator::{Event, Verdict};
use super::running::Claim;
use super::runtime::{Ending, Progress, Runtime, Step, Task};
use super::Stream;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::log::{Checkpoint, DeadLetter, EventLog, SubscribeOptions, Subscription};
use crate::record::{LogId, ReaderKind, Record, SourcePosition, Start, Timestamp};

/// The first byte of a job's checkpoint state: the operators' states
/// follow it.
const STATE_INLINE: u8 = 1;
/// The first byte of a stateful job's checkpoint state, alone: the
/// operators' states are in the checkpoint named `{name}.state` beside it,
/// written every [`STATE_EVERY`] batches at a source position at or below
/// the job's. Serializing every window of a job with each batch would cost
/// in proportion to its state, not to its input; instead a restart takes
/// that state and handles the records after it again, dropping the outputs
/// already committed.
const STATE_APART: u8 = 2;
/// How a job's state checkpoint's name ends.
pub(super) const STATE_SUFFIX: &str = ".state";
/// A stateful job writes its state every this many batches (and when it
/// stops): a restart handles at most that many batches again.
const STATE_EVERY: u64 = 16;

/// Where a job's outputs go, committed with its checkpoint.
pub(super) trait Output<T>: Send + 'static {
    fn last_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>>;

    /// The log whose checkpoints register the job as a reader of its
    /// sources (see [`registered_from`]).
    fn location(&self) -> &Path;

    /// Stores `checkpoint` alone (no outputs) where the job's go.
    fn store(&mut self, checkpoint: &Checkpoint) -> Result<()>;

    /// Hands on a batch's outputs (emptying `outputs`; `origins` holds the
    /// source record each came from) and commits `checkpoint` with them.
    fn commit(
        &mut self,
        outputs: &mut Vec<Event<T>>,
        origins: &[Origin],
        checkpoint: &Checkpoint,
    ) -> Result<()>;
}

/// The source record an output came from: the index of its source (in the
/// order the stream's sources were given) and its offset there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Origin {
    pub(super) source: usize,
    pub(super) offset: u64,
}

/// An output log: each batch's outputs, with their event times as source
/// times, in one committing append.
pub(super) struct LogOutput<T, D> {
    log: EventLog<T, D>,
    values: Vec<T>,
    times: Vec<Timestamp>,
}

impl<T, D> LogOutput<T, D> {
    pub(super) fn new(log: EventLog<T, D>) -> LogOutput<T, D> {
        LogOutput {
            log,
            values: Vec::new(),
            times: Vec::new(),
        }
    }
}

impl<T, D> Output<T> for LogOutput<T, D>
where
    T: Send + 'static,
    D: Codec<T> + Send + Sync + 'static,
{
    fn last_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>> {
        self.log.last_checkpoint(name)
    }

    fn location(&self) -> &Path {
        self.log.path()
    }

    fn store(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.log.append_committing(&[], checkpoint).map(drop)
    }

    fn commit(
        &mut self,
        outputs: &mut Vec<Event<T>>,
        _: &[Origin],
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        let events = outputs.drain(..).map(|e| (e.value, e.time));
        append_events(
            &self.log,
            &mut self.values,
            &mut self.times,
            events,
            checkpoint,
        )
    }
}

/// A function that takes each output, and a log of the job's own that
/// holds only its checkpoints.
pub(super) struct EachOutput<F> {
    checkpoints: EventLog<()>,
    f: F,
}

impl<F> EachOutput<F> {
    /// Where the checkpoints of job `name` on `source` go:
    /// `<source>.jobs/<name>`.
    pub(super) fn path<S, C: Codec<S>>(source: &EventLog<S, C>, name: &str) -> PathBuf {
        let mut dir = source.path().as_os_str().to_owned();
        dir.push(".jobs");
        Path::new(&dir).join(name)
    }

    pub(super) fn open(path: &Path, f: F) -> Result<EachOutput<F>> {
        let checkpoints = EventLog::open(path)?;
        Ok(EachOutput { checkpoints, f })
    }
}

impl<T, F> Output<T> for EachOutput<F>
where
    T: Send + 'static,
    F: FnMut(T) + Send + 'static,
{
    fn last_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>> {
        self.checkpoints.last_checkpoint(name)
    }

    fn location(&self) -> &Path {
        self.checkpoints.path()
    }

    fn store(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        self.checkpoints
            .append_committing(&[], checkpoint)
            .map(drop)
    }

    fn commit(
        &mut self,
        outputs: &mut Vec<Event<T>>,
        _: &[Origin],
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        for event in outputs.drain(..) {
            (self.f)(event.value);
        }
        self.checkpoints
            .append_committing(&[], checkpoint)
            .map(drop)
    }
}

/// Appends `events` (values with their event times, as source times) to
/// `log` with `checkpoint`, through the scratch vectors `values` and
/// `times`.
fn append_events<T, D: Codec<T>>(
    log: &EventLog<T, D>,
    values: &mut Vec<T>,
    times: &mut Vec<Timestamp>,
    events: impl IntoIterator<Item = (T, Timestamp)>,
    checkpoint: &Checkpoint,
) -> Result<()> {
    values.clear();
    times.clear();
    for (value, time) in events {
        values.push(value);
        times.push(time);
    }
    log.append_derived(values, times, Some(checkpoint))
        .map(drop)
}

/// Several output logs, each value going to the one its route chose. Each
/// log gets every batch's checkpoint (with the batch's values for it); a
/// crash between two of a batch's appends leaves the logs at different
/// positions, so the job resumes from the furthest behind, and hands a log
/// only the values of source records at or past its own position.
pub(super) struct BranchOutput<T, D> {
    logs: Vec<EventLog<T, D>>,
    /// The job's sources, by log id, in order.
    sources: Vec<LogId>,
    /// Each log's position in each source: values from source records
    /// below it are already there.
    from: Vec<Vec<u64>>,
    values: Vec<T>,
    times: Vec<Timestamp>,
}

impl<T, D: Codec<T>> BranchOutput<T, D> {
    /// The outputs of job `name` reading `sources`, each at the position it
    /// committed.
    pub(super) fn new(
        logs: Vec<EventLog<T, D>>,
        sources: Vec<LogId>,
        name: &str,
    ) -> Result<BranchOutput<T, D>> {
        let mut from = Vec::with_capacity(logs.len());
        for log in &logs {
            let committed = log.last_checkpoint(name)?;
            from.push(positions_in(committed.as_ref(), &sources));
        }
        Ok(BranchOutput {
            from,
            logs,
            sources,
            values: Vec::new(),
            times: Vec::new(),
        })
    }
}

impl<T, D> BranchOutput<T, D> {
    /// The output whose checkpoints register the job on its sources: the
    /// last, which each batch reaches last, so its position is never past
    /// another output's and retention never drops what a restart (from
    /// the output furthest behind) reads again.
    fn registering(&self) -> &EventLog<T, D> {
        &self.logs[self.logs.len() - 1]
    }
}

/// `checkpoint` without its registrations on its sources: the same
/// positions and state, for a log whose commits must not move the job's
/// advisory position there (a dead-letter log, which commits a batch
/// before its outputs do; a branch output other than the last).
fn unregistered(checkpoint: &Checkpoint) -> Checkpoint {
    checkpoint
        .positions()
        .iter()
        .fold(Checkpoint::new(checkpoint.name()), |c, p| {
            c.with_position(p.clone())
        })
        .with_state(checkpoint.state())
}

/// Refuses job or table `name` on `source` when a reader of that name
/// (or of its state checkpoint's) is registered there from another log
/// than `location` that still exists: a hand-off, job or table of the
/// same name elsewhere, whose advisory position (which retention follows)
/// the two would overwrite in turn.
pub(super) fn registered_from<S, C: Codec<S>>(
    source: &EventLog<S, C>,
    name: &str,
    location: &Path,
) -> Result<()> {
    let state = format!("{name}{STATE_SUFFIX}");
    for reader in source.readers()? {
        let ours = reader.name == name || reader.name == state;
        // A registration that cannot be read says nothing of where it
        // came from (its next commit rewrites it); one from a log that is
        // gone (an output deleted to start over) is retired.
        let unknown = reader.position.is_none();
        let gone = reader.kind == ReaderKind::Checkpoint && !reader.location.is_dir();
        if !ours || unknown || gone || same_dir(&reader.location, location) {
            continue;
        }
        return Err(Error::InvalidArgument {
            name: "name",
            reason: format!(
                "{} already has a reader named {} committing to {}; choose another name, \
                 or retire that one with delete_reader",
                source.path().display(),
                reader.name,
                reader.location.display()
            ),
        });
    }
    Ok(())
}

/// Whether two paths name one directory (as written, or once resolved).
fn same_dir(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(a), Ok(b)) if a == b
        )
}

/// The positions a job's checkpoint holds in `sources` (0 where it holds
/// none).
fn positions_in(checkpoint: Option<&Checkpoint>, sources: &[LogId]) -> Vec<u64> {
    sources
        .iter()
        .map(|&id| {
            checkpoint
                .into_iter()
                .flat_map(Checkpoint::positions)
                .find_map(|p| match p {
                    SourcePosition::Log { log_id, offset } if *log_id == id => Some(*offset),
                    _ => None,
                })
                .unwrap_or(0)
        })
        .collect()
}

impl<T, D> Output<(usize, T)> for BranchOutput<T, D>
where
    T: Send + 'static,
    D: Codec<T> + Send + Sync + 'static,
{
    fn last_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>> {
        // A job's checkpoints are ordered in every source at once (each
        // batch moves none back), so the sum of positions orders them.
        let mut behind: Option<(u64, Checkpoint)> = None;
        for log in &self.logs {
            if let Some(checkpoint) = log.last_checkpoint(name)? {
                let sum = positions_in(Some(&checkpoint), &self.sources).iter().sum();
                if behind.as_ref().is_none_or(|(b, _)| sum < *b) {
                    behind = Some((sum, checkpoint));
                }
            }
        }
        Ok(behind.map(|(_, checkpoint)| checkpoint))
    }

    fn location(&self) -> &Path {
        self.registering().path()
    }

    fn store(&mut self, checkpoint: &Checkpoint) -> Result<()> {
        let quiet = unregistered(checkpoint);
        let last = self.logs.len() - 1;
        for (i, log) in self.logs.iter().enumerate() {
            log.append_committing(&[], if i == last { checkpoint } else { &quiet })?;
        }
        Ok(())
    }

    fn commit(
        &mut self,
        outputs: &mut Vec<Event<(usize, T)>>,
        origins: &[Origin],
        checkpoint: &Checkpoint,
    ) -> Result<()> {
        let mut routed: Vec<Vec<(T, Timestamp)>> = self.logs.iter().map(|_| Vec::new()).collect();
        for (event, origin) in outputs.drain(..).zip(origins) {
            let (i, value) = event.value;
            if origin.offset >= self.from[i][origin.source] {
                routed[i].push((value, event.time));
            }
        }
        let positions = positions_in(Some(checkpoint), &self.sources);
        let quiet = unregistered(checkpoint);
        let last = self.logs.len() - 1;
        for (i, ((log, values), from)) in
            self.logs.iter().zip(routed).zip(&mut self.from).enumerate()
        {
            let ahead = from.iter().any(|&f| f > 0)
                && positions.iter().zip(from.iter()).all(|(p, f)| p <= f);
            if ahead {
                // Ahead of the job: it has this batch already, and its
                // checkpoint must not go back.
                continue;
            }
            let checkpoint = if i == last { checkpoint } else { &quiet };
            append_events(log, &mut self.values, &mut self.times, values, checkpoint)?;
            from.clone_from(&positions);
        }
        Ok(())
    }
}

/// A job's dead-letter log: the records its functions rejected or that
/// came too late, committed (with the job's position) before the batch's
/// outputs, so a restart knows which it has already written.
pub(super) struct DeadLetterLog(Box<dyn LetterSink>);

trait LetterSink: Send {
    fn append(&self, letters: &[DeadLetter], checkpoint: &Checkpoint) -> Result<()>;
    fn last_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>>;
}

impl<D> LetterSink for EventLog<DeadLetter, D>
where
    D: Codec<DeadLetter> + Send + Sync + 'static,
{
    fn append(&self, letters: &[DeadLetter], checkpoint: &Checkpoint) -> Result<()> {
        self.append_committing(letters, checkpoint).map(drop)
    }

    fn last_checkpoint(&self, name: &str) -> Result<Option<Checkpoint>> {
        EventLog::last_checkpoint(self, name)
    }
}

impl DeadLetterLog {
    pub(super) fn new<D>(log: EventLog<DeadLetter, D>) -> DeadLetterLog
    where
        D: Codec<DeadLetter> + Send + Sync + 'static,
    {
        DeadLetterLog(Box::new(log))
    }
}

/// A job's counts since this run started, for [`Job::figures`].
#[derive(Debug)]
struct Counts {
    /// Source records handled, outputs committed, late records and dead
    /// letters written.
    handled: AtomicU64,
    outputs: AtomicU64,
    late: AtomicU64,
    dead_letters: AtomicU64,
    started: Instant,
}

/// A job's figures, as [`Job::figures`] reads them.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct JobFigures {
    /// The next source offset the job will handle (in the log the stream
    /// was made from).
    pub position: u64,
    /// Its position in each of its sources, in the order they were
    /// [`merge`](Stream::merge)d.
    pub positions: Vec<u64>,
    /// Source records not yet handled, in all its sources.
    pub lag: u64,
    /// Source records handled since this run started.
    pub handled: u64,
    /// Outputs committed since this run started.
    pub outputs: u64,
    /// Records that came too late for their window, since this run
    /// started (each also a dead letter, if the job has a dead-letter log).
    pub late: u64,
    /// Dead letters written since this run started.
    pub dead_letters: u64,
    /// Source records handled per second, on average since this run
    /// started.
    pub rate: f64,
}

/// A job started by [`Stream::to`] or [`Stream::for_each`], running until
/// it is stopped, fails, or its source or output log is closed. It runs on
/// a [`Runtime`](super::Runtime)'s threads (the shared one unless
/// [`Stream::on`] says otherwise), a batch at a time, and takes none while
/// its source has nothing new.
///
/// Dropping the handle leaves the job running, as dropping a thread's
/// `JoinHandle` does: it runs until a log it uses is closed or the process
/// ends (what it committed stays committed, and a job started again under
/// its name resumes there). Keep the handle to [`stop`](Job::stop) it and
/// [`join`](Job::join) it, which reports how it ended. The job keeps its
/// logs open while it runs, and its name taken: starting it again in this
/// process while it runs is [`Error::JobRunning`].
pub struct Job {
    name: String,
    progress: Arc<Progress>,
    counts: Arc<Counts>,
    /// Its sources' ids, in order.
    sources: Vec<LogId>,
    /// The end of source `i`.
    source_end: Box<dyn Fn(usize) -> u64 + Send + Sync>,
    /// Wakes the job's task (to see its stop flag).
    waker: Waker,
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

/// A job's parts, as its task holds them.
struct Parts<S, T, C, O> {
    stream: Stream<S, T, C>,
    output: O,
    /// Per source: dead letters for offsets below this are already
    /// written.
    letters_from: Vec<u64>,
}

/// A running job, as the runtime steps it: a batch per step.
struct JobTask<S, T, C: Codec<S>, O> {
    parts: Parts<S, T, C, O>,
    progress: Arc<Progress>,
    counts: Arc<Counts>,
    /// One per source, in order.
    subscriptions: Vec<Subscription<S, C>>,
    /// Per source: the next offset to read.
    next: Vec<u64>,
    /// Per source: outputs of records below this were committed before a
    /// restart; handled again (to rebuild the state), they are dropped.
    replayed_below: Vec<u64>,
    /// The source a batch takes from first, in turn, so that a busy
    /// source cannot keep the others out.
    turn: usize,
    /// Whether the operators keep state, written apart every
    /// [`STATE_EVERY`] batches; batches since it was last written.
    stateful: bool,
    since_state: u64,
    records: Vec<Record<S>>,
    /// The batch's runs of records, in order: the source, and how many
    /// records of `records` came from it.
    runs: Vec<(usize, usize)>,
    outputs: Vec<Event<T>>,
    /// The source record each output came from.
    origins: Vec<Origin>,
    letters: Vec<DeadLetter>,
    verdict: Verdict,
    /// The job's name, held while it runs.
    _claim: Claim,
    /// Last: says how it ended once everything above is let go.
    ending: Ending,
}

impl Job {
    /// Starts `stream` as a job committing where `output` (made once the
    /// name is known to be free) does, in the log at `path`.
    pub(super) fn start<S, T, C, O>(
        stream: Stream<S, T, C>,
        path: PathBuf,
        output: impl FnOnce() -> Result<O>,
    ) -> Result<Job>
    where
        S: Send + 'static,
        T: Send + 'static,
        C: Codec<S> + Send + Sync + 'static,
        O: Output<T>,
    {
        crate::name::validate(&stream.name)?;
        if stream.name.ends_with(STATE_SUFFIX) {
            return Err(Error::InvalidName {
                name: stream.name.clone(),
                reason: "a job's name must not end in \".state\": its state checkpoint's does",
            });
        }
        let mut stream = stream;
        if let Some(invalid) = stream.invalid.take() {
            return Err(invalid);
        }
        let mut sources = Vec::with_capacity(stream.sources.len());
        for source in &stream.sources {
            let Some(id) = source.log_id() else {
                return Err(Error::InvalidOption {
                    name: "stream",
                    reason: format!(
                        "{} has no log id yet: open it once with a writer",
                        source.path().display()
                    ),
                });
            };
            if sources.contains(&id) {
                return Err(Error::InvalidArgument {
                    name: "merge",
                    reason: format!("{} is a source twice", source.path().display()),
                });
            }
            sources.push(id);
        }
        let claim = Claim::take(&stream.name, &path)?;
        let runtime = match stream.runtime.take() {
            Some(runtime) => runtime,
            None => Runtime::shared()?,
        };
        // Where it resumes, found before it starts: a bad checkpoint is the
        // caller's error at once.
        let output = output()?;
        for source in &stream.sources {
            registered_from(source, &stream.name, output.location())?;
        }
        let mut parts = Parts {
            output,
            letters_from: vec![0; stream.sources.len()],
            stream,
        };
        let Resume {
            next,
            replay_from,
            stateful,
        } = resume(&mut parts)?;
        let mut subscriptions = Vec::with_capacity(next.len());
        for (source, &from) in parts.stream.sources.iter().zip(&replay_from) {
            subscriptions.push(source.subscribe_with(
                SubscribeOptions::new(Start::Offset(from)).capacity(parts.stream.batch.min(4096)),
            )?);
        }
        let progress = Arc::new(Progress::new(&parts.stream.name, &next));
        let counts = Arc::new(Counts {
            handled: AtomicU64::new(0),
            outputs: AtomicU64::new(0),
            late: AtomicU64::new(0),
            dead_letters: AtomicU64::new(0),
            started: Instant::now(),
        });
        let name = parts.stream.name.clone();
        let logs = parts.stream.sources.clone();
        let batch = parts.stream.batch;
        let task = JobTask {
            parts,
            progress: progress.clone(),
            counts: counts.clone(),
            subscriptions,
            next: replay_from,
            replayed_below: next,
            turn: 0,
            stateful,
            since_state: 0,
            records: Vec::with_capacity(batch.min(4096)),
            runs: Vec::new(),
            outputs: Vec::new(),
            origins: Vec::new(),
            letters: Vec::new(),
            verdict: Verdict::default(),
            _claim: claim,
            ending: Ending::new(progress.clone()),
        };
        let waker = runtime.spawn(Box::new(task));
        Ok(Job {
            name,
            progress,
            counts,
            sources,
            source_end: Box::new(move |i| logs[i].next_offset()),
            waker,
        })
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next source offset the job will handle: every record below it
    /// has been handled and its outputs committed. For a job that
    /// [`merge`](Stream::merge)s several logs, its position in the log
    /// the stream was made from ([`position_in`](Job::position_in) gives
    /// the others).
    pub fn position(&self) -> u64 {
        self.progress.position(0)
    }

    /// The job's position in `source`, or `None` if it does not read it.
    pub fn position_in<S, C: Codec<S>>(&self, source: &EventLog<S, C>) -> Option<u64> {
        self.source_index(source).map(|i| self.progress.position(i))
    }

    fn source_index<S, C: Codec<S>>(&self, source: &EventLog<S, C>) -> Option<usize> {
        let id = source.log_id()?;
        self.sources.iter().position(|&s| s == id)
    }

    /// Source records not yet handled, in all its sources.
    pub fn lag(&self) -> u64 {
        (0..self.sources.len())
            .map(|i| (self.source_end)(i).saturating_sub(self.progress.position(i)))
            .sum()
    }

    /// The job's position, lag, counts and rate.
    pub fn figures(&self) -> JobFigures {
        let handled = self.counts.handled.load(Ordering::Relaxed);
        let secs = self.counts.started.elapsed().as_secs_f64();
        JobFigures {
            position: self.position(),
            positions: (0..self.sources.len())
                .map(|i| self.progress.position(i))
                .collect(),
            lag: self.lag(),
            handled,
            outputs: self.counts.outputs.load(Ordering::Relaxed),
            late: self.counts.late.load(Ordering::Relaxed),
            dead_letters: self.counts.dead_letters.load(Ordering::Relaxed),
            rate: if secs > 0.0 {
                handled as f64 / secs
            } else {
                0.0
            },
        }
    }

    /// Whether the job has ended (stopped, failed, or its logs closed).
    pub fn is_finished(&self) -> bool {
        self.progress.ended().is_some()
    }

    /// Waits until the job has handled (and committed) every source record
    /// below `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::JobFailed`] if the job ends first.
    pub fn wait_for(&self, offset: u64) -> Result<()> {
        self.progress.wait_for(0, offset)
    }

    /// Waits until the job has handled (and committed) every record below
    /// `offset` in `source`, one of the logs it
    /// [`merge`](Stream::merge)s.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] if the job does not read `source`;
    /// [`Error::JobFailed`] if the job ends first.
    pub fn wait_for_in<S, C: Codec<S>>(&self, source: &EventLog<S, C>, offset: u64) -> Result<()> {
        let Some(i) = self.source_index(source) else {
            return Err(Error::InvalidArgument {
                name: "source",
                reason: format!(
                    "job {} does not read {}",
                    self.name,
                    source.path().display()
                ),
            });
        };
        self.progress.wait_for(i, offset)
    }

    /// Asks the job to finish its current batch and stop.
    pub fn stop(&self) {
        self.progress.request_stop();
        self.waker.wake_by_ref();
    }

    /// Waits for the job to end and says how it ended.
    ///
    /// # Errors
    ///
    /// What stopped it: [`Error::JobFailed`] for a panic or rejection in a
    /// user function without a dead-letter log (nothing of that batch is
    /// committed), or the error of a read or an append ([`Error::Closed`]
    /// when a log was closed under it).
    pub fn join(self) -> Result<()> {
        self.progress.join()
    }
}

/// Where a job resumes, and where it reads from to get there, per source.
struct Resume {
    /// After its last committed batch.
    next: Vec<u64>,
    /// Where its state was written (at or below `next`); the records from
    /// here to `next` are handled again, their outputs dropped.
    replay_from: Vec<u64>,
    stateful: bool,
}

/// The positions `checkpoint` holds in each of the stream's sources.
fn positions<S, T, C: Codec<S>>(
    stream: &Stream<S, T, C>,
    checkpoint: &Checkpoint,
) -> Result<Vec<u64>> {
    stream
        .sources
        .iter()
        .map(|source| checkpoint.position_in(source))
        .collect()
}

/// Where a job resumes: after its last checkpoint, with the operators'
/// state taken from it (or from the state checkpoint beside it), or, on
/// its first run, at `start` in each source, committed at once (an empty
/// batch) so that a restart resumes there, not at a later `Start::End`.
fn resume<S, T, C, O>(parts: &mut Parts<S, T, C, O>) -> Result<Resume>
where
    C: Codec<S>,
    O: Output<T>,
{
    let stream = &mut parts.stream;
    let state_name = format!("{}{STATE_SUFFIX}", stream.name);
    if let Some(letters) = &stream.dead_letters {
        if let Some(checkpoint) = letters.0.last_checkpoint(&stream.name)? {
            parts.letters_from = positions(stream, &checkpoint)?;
        }
    }
    if let Some(checkpoint) = parts.output.last_checkpoint(&stream.name)? {
        let next = positions(stream, &checkpoint)?;
        if checkpoint.state() != [STATE_APART] {
            restore(stream, checkpoint.state())?;
            let stateful = is_stateful(stream)?;
            if stateful {
                // (Written inline by an older version: from now on apart.)
                parts.output.store(&state_checkpoint(stream, &next)?)?;
            }
            return Ok(Resume {
                replay_from: next.clone(),
                next,
                stateful,
            });
        }
        let state = parts.output.last_checkpoint(&state_name)?;
        let Some(state) = state else {
            return Err(Error::InvalidArgument {
                name: "checkpoint state",
                reason: format!("job {}: its state checkpoint is missing", stream.name),
            });
        };
        let replay_from = positions(stream, &state)?;
        if let Some((from, to)) = replay_from.iter().zip(&next).find(|(from, to)| from > to) {
            return Err(Error::InvalidArgument {
                name: "checkpoint state",
                reason: format!(
                    "job {}: its state stands at {from}, past its position {to}",
                    stream.name
                ),
            });
        }
        restore(stream, state.state())?;
        return Ok(Resume {
            next,
            replay_from,
            stateful: true,
        });
    }
    let mut next = Vec::with_capacity(stream.sources.len());
    for source in &stream.sources {
        next.push(match stream.start {
            Start::Beginning => source.first_offset(),
            Start::End => source.next_offset(),
            Start::Offset(offset) => offset,
            Start::Timestamp(_) => match source.read(stream.start).next() {
                Some(record) => record?.offset,
                None => source.next_offset(),
            },
        });
    }
    let stateful = is_stateful(stream)?;
    if stateful {
        parts.output.store(&state_checkpoint(stream, &next)?)?;
    }
    let checkpoint = checkpoint(stream, &next, stateful)?;
    parts.output.commit(&mut Vec::new(), &[], &checkpoint)?;
    Ok(Resume {
        replay_from: next.clone(),
        next,
        stateful,
    })
}

/// Whether the operators keep any state.
fn is_stateful<S, T, C>(stream: &Stream<S, T, C>) -> Result<bool> {
    let mut state = Vec::new();
    stream.operator.snapshot(&mut state)?;
    Ok(!state.is_empty())
}

/// A checkpoint named `name` at `next` in each source (each made durable
/// below it first), holding `state`.
fn positioned<S, T, C: Codec<S>>(
    stream: &Stream<S, T, C>,
    name: String,
    next: &[u64],
    state: Vec<u8>,
) -> Result<Checkpoint> {
    let mut checkpoint = Checkpoint::new(name);
    for (source, &next) in stream.sources.iter().zip(next) {
        checkpoint = checkpoint.source(source, next)?;
    }
    Ok(checkpoint.with_state(state))
}

/// The checkpoint of a job at `next`: its positions in the sources and,
/// unless it keeps its state apart, its operators' state.
fn checkpoint<S, T, C: Codec<S>>(
    stream: &Stream<S, T, C>,
    next: &[u64],
    apart: bool,
) -> Result<Checkpoint> {
    let state = if apart {
        vec![STATE_APART]
    } else {
        let mut state = vec![STATE_INLINE];
        stream.operator.snapshot(&mut state)?;
        state
    };
    positioned(stream, stream.name.clone(), next, state)
}

/// The state checkpoint of a job whose operators have handled every
/// source record below `next`.
fn state_checkpoint<S, T, C: Codec<S>>(
    stream: &Stream<S, T, C>,
    next: &[u64],
) -> Result<Checkpoint> {
    let mut state = vec![STATE_INLINE];
    stream.operator.snapshot(&mut state)?;
    positioned(
        stream,
        format!("{}{STATE_SUFFIX}", stream.name),
        next,
        state,
    )
}

fn restore<S, T, C>(stream: &mut Stream<S, T, C>, state: &[u8]) -> Result<()> {
    let bad = |reason: &str| Error::InvalidArgument {
        name: "checkpoint state",
        reason: format!("job {}: {reason}", stream.name),
    };
    let Some((&version, mut rest)) = state.split_first() else {
        // A job that committed before operators had state.
        return Ok(());
    };
    if version != STATE_INLINE {
        return Err(bad(&format!("state version {version} is not known")));
    }
    stream.operator.restore(&mut rest)?;
    if !rest.is_empty() {
        return Err(bad(
            "the state has bytes no operator took: another pipeline wrote it",
        ));
    }
    Ok(())
}

impl<S, T, C, O> Task for JobTask<S, T, C, O>
where
    S: Send + 'static,
    T: Send + 'static,
    C: Codec<S> + Send + Sync + 'static,
    O: Output<T>,
{
    fn step(&mut self, waker: &Waker) -> Step {
        if self.progress.stop_requested() {
            // A restart then has nothing to handle again.
            let replayed = self
                .next
                .iter()
                .zip(&self.replayed_below)
                .all(|(n, r)| n >= r);
            let stored = if self.stateful && self.since_state > 0 && replayed {
                self.store_state()
            } else {
                Ok(())
            };
            self.finish(stored);
            return Step::Done;
        }
        match self.batch(waker) {
            Ok(true) => Step::Again,
            Ok(false) => Step::Wait,
            Err(e) => {
                self.finish(Err(e));
                Step::Done
            }
        }
    }

    fn abort(&mut self, reason: String) {
        let name = self.parts.stream.name.clone();
        self.finish(Err(Error::JobFailed { name, reason }));
    }
}

impl<S, T, C: Codec<S>, O> JobTask<S, T, C, O> {
    fn finish(&mut self, result: Result<()>) {
        self.ending.set(result);
    }
}

impl<S, T, C, O> JobTask<S, T, C, O>
where
    C: Codec<S>,
    O: Output<T>,
{
    /// Takes a batch of records, from each source in turn; whether there
    /// were any (if not, every source has `waker` to wake the job).
    fn take_batch(&mut self, waker: &Waker) -> Result<bool> {
        let max = self.parts.stream.batch;
        let sources = self.subscriptions.len();
        self.runs.clear();
        for k in 0..sources {
            let room = max - self.records.len();
            if room == 0 {
                break;
            }
            let i = (self.turn + k) % sources;
            let taken = self.subscriptions[i].poll_batch(waker, &mut self.records, room)?;
            if taken > 0 {
                self.runs.push((i, taken));
            }
        }
        self.turn = (self.turn + 1) % sources;
        Ok(!self.records.is_empty())
    }

    /// A batch of source records through the operators, its outputs, the
    /// source positions and the operators' state committed together;
    /// whether there was one.
    fn batch(&mut self, waker: &Waker) -> Result<bool> {
        if !self.take_batch(waker)? {
            return Ok(false);
        }
        let JobTask {
            parts,
            counts,
            records,
            runs,
            outputs,
            origins,
            letters,
            verdict,
            replayed_below,
            ..
        } = self;
        let stream = &mut parts.stream;
        let mut end = self.next.clone();
        let count = records.len() as u64;
        let mut late = 0;
        let mut taken = records.drain(..);
        for &(source, run) in runs.iter() {
            for record in taken.by_ref().take(run) {
                let (offset, timestamp) = (record.offset, record.timestamp);
                end[source] = offset + 1;
                let event = Event {
                    time: record.event_time(),
                    value: record.value,
                };
                let mark = outputs.len();
                let operator = &mut stream.operator;
                let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    operator.on_record(event, verdict, &mut |out| outputs.push(out));
                }));
                let (too_late, rejected) = verdict.take();
                let rejected = match handled {
                    Ok(()) => rejected,
                    Err(panic) => Some(panic_message(panic.as_ref())),
                };
                origins.resize(outputs.len(), Origin { source, offset });
                let reason = match (rejected, too_late) {
                    (Some(reason), _) => {
                        outputs.truncate(mark);
                        origins.truncate(mark);
                        if stream.dead_letters.is_none() {
                            return Err(Error::JobFailed {
                                name: stream.name.clone(),
                                reason,
                            });
                        }
                        reason
                    }
                    (None, Some(reason)) => {
                        late += 1;
                        reason
                    }
                    (None, None) => continue,
                };
                let written = parts.letters_from[source].max(replayed_below[source]);
                if stream.dead_letters.is_some() && offset >= written {
                    let log = &stream.sources[source];
                    letters.push(dead_letter(log, offset, timestamp, reason)?);
                }
            }
        }
        drop(taken);
        if end.iter().zip(replayed_below.iter()).all(|(e, r)| e <= r) {
            // Handled again only to rebuild the state: all of it was
            // committed before.
            outputs.clear();
            origins.clear();
            self.next = end;
            return Ok(true);
        }
        let replaying = self
            .next
            .iter()
            .zip(replayed_below.iter())
            .any(|(n, r)| n < r);
        if replaying {
            drop_committed(outputs, origins, replayed_below);
        }
        let checkpoint = checkpoint(stream, &end, self.stateful)?;
        if let Some(dead) = &stream.dead_letters {
            if !letters.is_empty() {
                dead.0.append(letters, &unregistered(&checkpoint))?;
                counts
                    .dead_letters
                    .fetch_add(letters.len() as u64, Ordering::Relaxed);
                letters.clear();
            }
        }
        let made = outputs.len() as u64;
        parts.output.commit(outputs, origins, &checkpoint)?;
        origins.clear();
        counts.handled.fetch_add(count, Ordering::Relaxed);
        counts.outputs.fetch_add(made, Ordering::Relaxed);
        counts.late.fetch_add(late, Ordering::Relaxed);
        for (source, (&new, old)) in end.iter().zip(&self.next).enumerate() {
            if new != *old {
                self.progress.advance(source, new);
            }
        }
        self.next = end;
        self.since_state += 1;
        if self.stateful && self.since_state >= STATE_EVERY {
            self.store_state()?;
        }
        Ok(true)
    }

    /// Writes the operators' state (as of `next`) apart.
    fn store_state(&mut self) -> Result<()> {
        let checkpoint = state_checkpoint(&self.parts.stream, &self.next)?;
        self.parts.output.store(&checkpoint)?;
        self.since_state = 0;
        Ok(())
    }
}

/// Drops the outputs (and their origins) of source records below
/// `committed` in their source: a restart handled them again only to
/// rebuild its state. The rest keep their order.
fn drop_committed<T>(outputs: &mut Vec<Event<T>>, origins: &mut Vec<Origin>, committed: &[u64]) {
    let mut kept = 0;
    for i in 0..outputs.len() {
        if origins[i].offset >= committed[origins[i].source] {
            outputs.swap(kept, i);
            origins.swap(kept, i);
            kept += 1;
        }
    }
    outputs.truncate(kept);
    origins.truncate(kept);
}

/// The dead letter of the source record at `offset`: its bytes as stored,
/// read again (the value went into the operators).
fn dead_letter<S, C: Codec<S>>(
    source: &EventLog<S, C>,
    offset: u64,
    timestamp: Timestamp,
    reason: String,
) -> Result<DeadLetter> {
    let mut payload = Vec::new();
    if let Some(record) = source.get(offset)? {
        source
            .codec()
            .encode(&record.value, &mut payload)
            .map_err(|e| Error::Codec {
                codec: source.codec().name(),
                offset: Some(offset),
                event_type: None,
                source: e,
            })?;
    }
    Ok(DeadLetter::new(
        source.path().display().to_string(),
        offset,
        timestamp,
        reason,
        payload,
    ))
}

pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => format!("a user function panicked: {message}"),
        (_, Some(message)) => format!("a user function panicked: {message}"),
        _ => "a user function panicked".to_owned(),
    }
}
