//! The exactly-once hand-off: a [`Checkpoint`] (a reader's name, where it
//! stands in its sources, and state of its own) stored in the same batch as
//! the records it produced, with
//! [`EventLog::append_committing`](crate::EventLog::append_committing).
//! Either the batch is in the log whole (outputs and positions) or not at
//! all, so a reader that resumes from
//! [`last_checkpoint`](crate::EventLog::last_checkpoint) neither repeats
//! nor skips a record, across any crash.
//!
//! A checkpoint made with [`Checkpoint::source`] also registers its reader
//! on each source log (`{name}.reader` there), with an advisory copy of its
//! position written once the commit is durable: the source's retention
//! then keeps what the reader has not passed, and
//! [`EventLog::readers`](crate::EventLog::readers) shows its lag.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::format::{decode_checkpoint_body, encode_checkpoint_body};
use crate::log::EventLog;
use crate::record::{LogId, ReaderKind, SourcePosition};
use crate::store::Store;

/// Where a reader stands in its sources, stored with the records it wrote.
///
/// ```
/// use backbone::{Checkpoint, EventLog, Start};
/// # let dir = tempfile::tempdir().unwrap();
/// # let orders: EventLog<u32> = EventLog::open(dir.path().join("orders"))?;
/// # let totals: EventLog<u64> = EventLog::open(dir.path().join("totals"))?;
/// # orders.append_batch(&[3, 4, 5])?;
/// // Resume where the last committed batch left off (the beginning the
/// // first time).
/// let from = match totals.last_checkpoint("totals")? {
///     Some(checkpoint) => checkpoint.position_in(&orders)?,
///     None => orders.first_offset(),
/// };
/// let batch: Vec<_> = orders.read(Start::Offset(from)).collect::<Result<_, _>>()?;
/// let outputs: Vec<u64> = batch.iter().map(|r| u64::from(r.value) * 100).collect();
/// let next = batch.last().map_or(from, |r| r.offset + 1);
/// // The outputs and the new position land together, or not at all.
/// let checkpoint = Checkpoint::new("totals").source(&orders, next)?;
/// totals.append_committing(&outputs, &checkpoint)?;
/// assert_eq!(totals.last_checkpoint("totals")?.unwrap().position_in(&orders)?, 3);
/// # Ok::<(), backbone::Error>(())
/// ```
#[derive(Clone)]
pub struct Checkpoint {
    name: String,
    positions: Vec<SourcePosition>,
    state: Vec<u8>,
    /// The source logs of this process named by [`Checkpoint::source`],
    /// with the positions given, to register the reader on them. Not part
    /// of what is stored, nor of equality.
    sources: Vec<(Arc<Store>, u64)>,
}

impl PartialEq for Checkpoint {
    fn eq(&self, other: &Checkpoint) -> bool {
        (&self.name, &self.positions, &self.state) == (&other.name, &other.positions, &other.state)
    }
}

impl Eq for Checkpoint {}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("name", &self.name)
            .field("positions", &self.positions)
            .field("state", &self.state)
            .finish()
    }
}

/// A reader registered on a log, as [`EventLog::readers`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderStatus {
    /// Its name (its checkpoint's).
    pub name: String,
    /// What kind of reader it is, which says what `location` names.
    pub kind: ReaderKind,
    /// Where its true position lives: for a [`ReaderKind::Checkpoint`],
    /// the directory of the log holding its checkpoint; for a
    /// [`ReaderKind::Mirror`], `nats://<servers>/<stream>/<subject>`.
    pub location: std::path::PathBuf,
    /// The advisory copy of its position (the next offset it reads), which
    /// may lag the true one; `None` if its file cannot be read.
    pub position: Option<u64>,
    /// Records appended that it has not passed, by that copy.
    pub lag: Option<u64>,
}

/// Reader registrations waiting for their commit to be durable.
#[derive(Debug, Default)]
pub(crate) struct PendingReaders {
    waiting: Vec<PendingReader>,
}

#[derive(Debug)]
struct PendingReader {
    /// The output log's append ticket of the commit.
    ticket: u64,
    name: String,
    sources: Vec<(Arc<Store>, u64)>,
}

impl PendingReaders {
    /// Queues the registrations of `checkpoint`, committed under `ticket`
    /// in `output`, and writes every queued one whose commit `output` has
    /// made durable (an advisory position never leads the true one). A
    /// registration that cannot be written is dropped: it is advisory, and
    /// a later commit writes it again.
    pub(crate) fn committed(&mut self, output: &Store, ticket: u64, checkpoint: &Checkpoint) {
        if !checkpoint.sources.is_empty() {
            self.waiting.push(PendingReader {
                ticket,
                name: checkpoint.name.clone(),
                sources: checkpoint.sources.clone(),
            });
        }
        self.flush(output);
    }

    /// Writes every queued registration whose commit `output` has made
    /// durable.
    pub(crate) fn flush(&mut self, output: &Store) {
        let location = output.dir().display().to_string();
        self.waiting.retain(|pending| {
            if !output.ticket_durable(pending.ticket) {
                return true;
            }
            for (source, position) in &pending.sources {
                let _ = source.note_reader(&pending.name, &location, *position);
            }
            false
        });
        // Only the newest waiting registration of a name and source
        // matters; bound the queue whatever the output's sync rate.
        if self.waiting.len() > 64 {
            self.waiting.drain(..self.waiting.len() - 64);
        }
    }
}

impl Checkpoint {
    /// An empty checkpoint for the reader `name` (1 to 128 ASCII letters,
    /// digits, `_`, `-` and `.`; checked when it is stored).
    pub fn new(name: impl Into<String>) -> Checkpoint {
        Checkpoint {
            name: name.into(),
            positions: Vec::new(),
            state: Vec::new(),
            sources: Vec::new(),
        }
    }

    /// Adds the position `next` (the next offset to read) in the source
    /// log `source`, by its log id, after making the source durable below
    /// it: a crash can then never take back a source record whose output
    /// is already committed. A writer's handle syncs if it must; a
    /// read-only handle (the source is written by another process) hands
    /// out only records its writer has made durable, so it has nothing to
    /// do.
    ///
    /// # Errors
    ///
    /// [`Error::OffsetOutOfRange`] for a position past the source's end;
    /// the source's sync errors; [`Error::InvalidOption`] if the source has
    /// no log id yet (a version-1 log that no writer of this version has
    /// opened).
    pub fn source<T, C: crate::Codec<T>>(
        self,
        source: &EventLog<T, C>,
        next: u64,
    ) -> Result<Checkpoint> {
        let end = source.next_offset();
        if next > end {
            return Err(Error::OffsetOutOfRange {
                requested: next,
                next: end,
            });
        }
        let Some(log_id) = source.log_id() else {
            return Err(Error::InvalidOption {
                name: "Checkpoint::source",
                reason: format!(
                    "{} has no log id yet: open it once with a writer",
                    source.path().display()
                ),
            });
        };
        source.store().durable_below(next)?;
        let mut checkpoint = self.with_position(SourcePosition::Log {
            log_id,
            offset: next,
        });
        checkpoint.sources.push((source.store().clone(), next));
        Ok(checkpoint)
    }

    /// Adds a position as it is, for sources that are not logs of this
    /// process (an external system's sequence, or a log position the
    /// caller made durable itself).
    pub fn with_position(mut self, position: SourcePosition) -> Checkpoint {
        self.positions.push(position);
        self
    }

    /// Sets the reader's own state (an operator's snapshot), stored with
    /// the positions. Large states are split over several frames.
    pub fn with_state(mut self, state: impl Into<Vec<u8>>) -> Checkpoint {
        self.state = state.into();
        self
    }

    /// The reader's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The positions, in the order they were added.
    pub fn positions(&self) -> &[SourcePosition] {
        &self.positions
    }

    /// The reader's own state.
    pub fn state(&self) -> &[u8] {
        &self.state
    }

    /// The position stored for the log `source` (found by its log id):
    /// where a resuming reader reads from.
    ///
    /// # Errors
    ///
    /// [`Error::NotInCheckpoint`] if the checkpoint holds no position in
    /// this log (another log, or one deleted and created again);
    /// [`Error::CheckpointAhead`] if the position is past the source's
    /// end, which no resume may paper over.
    pub fn position_in<T, C: crate::Codec<T>>(&self, source: &EventLog<T, C>) -> Result<u64> {
        let log_id = source.log_id().unwrap_or(LogId(0));
        let stored = self.positions.iter().find_map(|position| match position {
            SourcePosition::Log { log_id: id, offset } if *id == log_id => Some(*offset),
            _ => None,
        });
        let Some(stored) = stored else {
            return Err(Error::NotInCheckpoint {
                name: self.name.clone(),
                source_log: source.path().to_path_buf(),
                log_id: log_id.to_string(),
            });
        };
        let next = source.store().readable_end()?;
        if stored > next {
            return Err(Error::CheckpointAhead {
                name: self.name.clone(),
                source_log: source.path().to_path_buf(),
                stored,
                next,
            });
        }
        Ok(stored)
    }

    /// The checkpoint's body as stored: positions, then state.
    pub(crate) fn encode_body(&self) -> Result<Vec<u8>> {
        crate::name::validate(&self.name)?;
        for position in &self.positions {
            if let SourcePosition::External { name, .. } = position {
                if name.len() > usize::from(u16::MAX) {
                    return Err(Error::InvalidName {
                        name: name.chars().take(64).collect(),
                        reason: "an external source's name is longer than 65535 bytes",
                    });
                }
            }
        }
        Ok(encode_checkpoint_body(&self.positions, &self.state))
    }

    /// The checkpoint `name` from a stored body; `None` if the body does
    /// not decode (its frames passed their checksums: crafted bytes).
    pub(crate) fn decode(name: &str, body: &[u8]) -> Option<Checkpoint> {
        let (positions, state) = decode_checkpoint_body(body)?;
        Some(Checkpoint {
            name: name.to_owned(),
            positions,
            state,
            sources: Vec::new(),
        })
    }
}
