//! The crate's one error type, [`Error`], and its `Result` alias.
//!
//! Every fallible call returns [`Error`]. Variants carry the data needed to
//! act on them (the file, the byte position, the offsets involved, expected
//! and found values); the underlying cause, when there is one, is available
//! through [`std::error::Error::source`].

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// `Result<T, backbone::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `backbone`.
///
/// The enum is `#[non_exhaustive]`: match the variants you act on and keep a
/// catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system I/O call failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What the log was doing, such as `"write"` or `"fdatasync"`.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The error the operating system reported.
        #[source]
        source: io::Error,
    },

    /// The log is open for writing elsewhere: in this process (every
    /// handle of one log comes from one open; clone the [`EventLog`](crate::EventLog)),
    /// or in another process.
    #[error("log {} is {}", path.display(), if *in_this_process {
        "already open in this process (clone the EventLog that opened it)"
    } else {
        "open for writing in another process"
    })]
    Locked {
        /// The log directory.
        path: PathBuf,
        /// Whether this process holds it.
        in_this_process: bool,
    },

    /// A write was attempted through a handle opened with
    /// [`Options::read_only`](crate::Options::read_only).
    #[error("log {} is open read-only", path.display())]
    ReadOnly {
        /// The log directory.
        path: PathBuf,
    },

    /// The log was closed with [`EventLog::close`](crate::EventLog::close).
    #[error("log is closed")]
    Closed,

    /// An earlier write or sync failed, so the log refuses writes until it is
    /// reopened. Retrying a failed `fdatasync` can report success for data
    /// the kernel already dropped (PostgreSQL's "fsyncgate"), so the log
    /// never retries: reopening recovers the last durable state.
    #[error("log refuses writes since {op} of {} failed; reopen it", path.display())]
    Poisoned {
        /// The operation that failed.
        op: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The original failure.
        #[source]
        source: Arc<io::Error>,
    },

    /// An encoded record is larger than
    /// [`Options::max_record_bytes`](crate::Options::max_record_bytes).
    /// Nothing was written.
    #[error("record of {size} bytes exceeds max_record_bytes ({max})")]
    RecordTooLarge {
        /// The encoded size of the record.
        size: usize,
        /// The configured limit.
        max: u32,
    },

    /// A committing append's batch (its checkpoint and records) does not
    /// fit in one segment, which it must to be all or nothing: split it, or
    /// raise `Options::segment_bytes`. Nothing was written.
    #[error(
        "a committing batch of {size} bytes does not fit in one segment ({max} bytes are free)"
    )]
    BatchTooLarge {
        /// The batch's bytes on disk.
        size: u64,
        /// The room in the segment it would have to fit in.
        max: u64,
    },

    /// The codec failed to encode a value (`offset` is `None`; nothing was
    /// written) or to decode the record at `offset` (the log was written
    /// with another type or codec, or the type changed incompatibly).
    #[error("{codec} codec failed to {} {}{}: {source}", if offset.is_some() { "decode" } else { "encode" }, DisplayOffset(*offset), DisplayEvent(event_type.as_deref()))]
    Codec {
        /// The codec's name.
        codec: &'static str,
        /// The offset of the record that failed to decode.
        offset: Option<u64>,
        /// The event type recorded in the log, when it has one.
        event_type: Option<String>,
        /// The codec's own error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Bytes on disk fail validation: a checksum, a length, a header, an
    /// offset that does not continue the sequence. The log never returns
    /// such bytes as a record.
    #[error("corrupt log file {} at byte {position}: {kind}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// The byte position of the damage in that file.
        position: u64,
        /// The offset of the record expected at that position, when known.
        offset: Option<u64>,
        /// What is wrong.
        kind: CorruptionKind,
    },

    /// A file was written by a newer version of the on-disk format.
    #[error("{} has format version {found}; this build reads version {supported}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// The directory exists and holds files, but it is not a backbone log.
    /// The log never writes into such a directory.
    #[error("{} is not a backbone log: {reason}", path.display())]
    NotALog {
        /// The directory or file that gave it away.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },

    /// The log was written with another codec than the one it is opened with.
    #[error("log {} was written with the {found} codec, not {expected}", path.display())]
    CodecMismatch {
        /// The log directory.
        path: PathBuf,
        /// The codec of this handle.
        expected: String,
        /// The codec recorded in the log.
        found: String,
    },

    /// The log records another event type than the one it is opened with
    /// (see [`Options::event_type`](crate::Options::event_type)).
    #[error("log {} holds events of type {found}, not {expected}: declare the log's own type with Options::event_type (a higher version of the same name upgrades the log), or open it anyway with Options::any_event_type", path.display())]
    EventTypeMismatch {
        /// The log directory.
        path: PathBuf,
        /// The event type (name and version) of this handle.
        expected: String,
        /// The event type recorded in the log.
        found: String,
    },

    /// [`EventLog::append_expected`](crate::EventLog::append_expected) found
    /// the log at another offset than expected. Nothing was written.
    #[error("append expected the log to be at offset {expected}, but it is at {actual}")]
    Conflict {
        /// The offset the caller expected the next record to get.
        expected: u64,
        /// The offset the next record would have got.
        actual: u64,
    },

    /// The requested offset was removed by retention.
    #[error("offset {requested} was removed by retention; the log starts at {first}")]
    OffsetTruncated {
        /// The offset asked for.
        requested: u64,
        /// The first offset still in the log.
        first: u64,
    },

    /// The requested offset is past the end of the log.
    #[error("offset {requested} is past the end of the log (next offset {next})")]
    OffsetOutOfRange {
        /// The offset asked for.
        requested: u64,
        /// The offset the next appended record will get.
        next: u64,
    },

    /// A consumer name is held by another [`Consumer`](crate::Consumer) of
    /// this log: a named consumer has one holder at a time (its clones
    /// share it). Reading its position needs no ownership
    /// ([`EventLog::consumers`](crate::EventLog::consumers)).
    #[error("consumer {name:?} is already held by another Consumer of this log (clone that one to share it)")]
    ConsumerInUse {
        /// The consumer's name.
        name: String,
    },

    /// A consumer is held by another process following or writing the log
    /// (or by another open of the log in this process): its file is locked.
    #[error("consumer {name:?} of log {} is held by another process (or another open of the log)", path.display())]
    ConsumerLocked {
        /// The consumer's name.
        name: String,
        /// The log's directory.
        path: PathBuf,
    },

    /// A commit would move a consumer's position backwards. Commits only
    /// move forward; [`Consumer::seek`](crate::Consumer::seek) moves back on
    /// purpose.
    #[error("commit of {requested} would move consumer {name:?} back from {position}; seek moves it back on purpose")]
    CommitBehind {
        /// The consumer's name.
        name: String,
        /// Its committed position.
        position: u64,
        /// The position the commit asked for.
        requested: u64,
    },

    /// A work group's record was acknowledged (or set aside) already: a
    /// delivery that timed out was given to another worker, which finished
    /// it first.
    #[error("the record at offset {offset} was acknowledged already")]
    AlreadyAcked {
        /// The record's offset.
        offset: u64,
    },

    /// The newest checkpoints of all names would take more than half a
    /// segment: they are carried into every new segment, which must hold
    /// records too. Nothing was written. Store less state per checkpoint,
    /// use fewer names, or raise `Options::segment_bytes`.
    #[error(
        "the newest checkpoints would take {bytes} bytes, more than half a segment ({max} bytes)"
    )]
    CheckpointsTooLarge {
        /// Their bytes on disk with this checkpoint.
        bytes: u64,
        /// Half the room of a segment.
        max: u64,
    },

    /// A checkpoint stands past the end of one of its source logs: the
    /// source lost records (a power loss took back records that were not
    /// durable, or it was restored from an older copy) that the reader had
    /// already handed on. Never a silent resume point.
    #[error("checkpoint {name:?} stands at offset {stored} of log {}, past its end (next offset {next})", source_log.display())]
    CheckpointAhead {
        /// The checkpoint's name.
        name: String,
        /// The source log's directory.
        source_log: PathBuf,
        /// The offset the checkpoint holds.
        stored: u64,
        /// The source's next offset.
        next: u64,
    },

    /// A checkpoint holds no position in this source log: another log, or
    /// this one deleted and created again (which gives it a new id).
    #[error("checkpoint {name:?} holds no position in log {} (id {log_id})", source_log.display())]
    NotInCheckpoint {
        /// The checkpoint's name.
        name: String,
        /// The log asked about: its directory.
        source_log: PathBuf,
        /// The log's id, as [`LogId`](crate::LogId) prints it.
        log_id: String,
    },

    /// A job of this name already writes into this output log in this
    /// process: two would race on one checkpoint.
    #[error("job {name:?} is already running into {}", path.display())]
    JobRunning {
        /// The job's name.
        name: String,
        /// The output log's directory.
        path: PathBuf,
    },

    /// A job stopped: a user function panicked (nothing of that batch was
    /// committed), or it ended before what was waited for.
    #[error("job {name:?} failed: {reason}")]
    JobFailed {
        /// The job's name.
        name: String,
        /// What happened.
        reason: String,
    },

    /// A table would hold more keys than its limit
    /// ([`TableOptions::max_keys`](crate::stream::TableOptions::max_keys),
    /// default 10 million): it stopped before the batch that would pass
    /// it, committing nothing of that batch. Started again with a higher
    /// limit, it goes on from there.
    #[error("table {name:?} would hold {keys} keys, more than its limit of {max}")]
    TableTooLarge {
        /// The table's name.
        name: String,
        /// The keys it would hold.
        keys: usize,
        /// The limit.
        max: usize,
    },

    /// A NATS server or JetStream refused or failed a bridge's operation
    /// for good (a bridge retries what a retry can mend, and reports only
    /// this on its handle's `join`): authentication, a stream's settings,
    /// a message from elsewhere that breaks the bridge's rules.
    #[error("NATS {op}: {reason}")]
    Nats {
        /// What the bridge was doing.
        op: &'static str,
        /// What went wrong, as the server or client said it.
        reason: String,
    },

    /// A JetStream subject that carries one log's records holds another
    /// log's: a position found there is never a resume point.
    #[error("subject {subject} holds records of log {found}, not of log {expected}")]
    LogIdMismatch {
        /// The subject.
        subject: String,
        /// The local log's id.
        expected: String,
        /// The id found in the message.
        found: String,
    },

    /// A name that becomes a file name (a consumer's) is not allowed.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What rule it breaks.
        reason: &'static str,
    },

    /// An argument of a call is out of range or contradicts another.
    #[error("invalid argument {name}: {reason}")]
    InvalidArgument {
        /// The argument.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// An option is out of range or contradicts another.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// The option.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// What is wrong with bytes that failed validation, in [`Error::Corrupt`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CorruptionKind {
    /// The file does not start with the expected magic bytes.
    BadMagic,
    /// A header's checksum does not match its contents.
    HeaderChecksum,
    /// A header's fields contradict the file name or each other.
    BadHeader,
    /// A record's checksum does not match its bytes.
    Checksum {
        /// The checksum stored in the frame.
        stored: u32,
        /// The checksum of the bytes found.
        computed: u32,
    },
    /// A record's length field is impossible (over the maximum record size
    /// or past the end of the file).
    Length {
        /// The length found.
        len: u32,
    },
    /// A valid record holds another offset than the one expected at this
    /// position (a misdirected or stale write).
    OffsetMismatch {
        /// The offset expected here.
        expected: u64,
        /// The offset found.
        found: u64,
    },
    /// A region that should hold records is zeroed.
    Zeroed,
    /// A sealed segment ends before the offset where the next segment starts.
    SegmentTruncated {
        /// The offset the segment should end at.
        expected_end: u64,
        /// The offset it ends at.
        found_end: u64,
    },
    /// Segment base offsets leave a gap or overlap.
    SegmentSequence {
        /// The base offset expected.
        expected: u64,
        /// The base offset found.
        found: u64,
    },
    /// An index entry does not point at a record with its offset and
    /// timestamp. The index is a cache: reads do not trust it and fall back
    /// to a scan; only a verification reports this.
    IndexEntry {
        /// The entry's number in its index file.
        entry: u64,
    },
    /// A version-2 frame whose checksum holds but whose kind, flags or
    /// reserved bytes this build does not know (a later build's frame, or
    /// crafted bytes).
    UnknownFrame {
        /// The kind byte found.
        kind: u8,
        /// The flags byte found.
        flags: u8,
    },
    /// A control frame whose checksum holds but whose payload this build
    /// cannot read (a checkpoint's fields contradict each other).
    BadControl,
    /// A checkpoint's batch ends before the records (or checkpoint chunks)
    /// it states: the torn last write of a crash, cut whole by recovery.
    TornBatch {
        /// The records the checkpoint says follow it.
        records: u32,
        /// The records found after it.
        found: u32,
    },
    /// A table's snapshot whose checksum holds but whose entries do not
    /// decode as the table's key and value types, or repeat a key.
    BadSnapshot,
}

impl fmt::Display for CorruptionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptionKind::BadMagic => f.write_str("bad magic bytes"),
            CorruptionKind::HeaderChecksum => f.write_str("header checksum mismatch"),
            CorruptionKind::BadHeader => f.write_str("inconsistent header"),
            CorruptionKind::Checksum { stored, computed } => {
                write!(
                    f,
                    "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
                )
            }
            CorruptionKind::Length { len } => write!(f, "impossible record length {len}"),
            CorruptionKind::OffsetMismatch { expected, found } => {
                write!(f, "expected offset {expected}, found {found}")
            }
            CorruptionKind::Zeroed => f.write_str("zeroed region where records were expected"),
            CorruptionKind::SegmentTruncated {
                expected_end,
                found_end,
            } => write!(
                f,
                "sealed segment ends at offset {found_end}, expected {expected_end}"
            ),
            CorruptionKind::SegmentSequence { expected, found } => {
                write!(f, "segment starts at offset {found}, expected {expected}")
            }
            CorruptionKind::IndexEntry { entry } => {
                write!(f, "index entry {entry} points at no such record")
            }
            CorruptionKind::UnknownFrame { kind, flags } => write!(
                f,
                "a frame of kind {kind} with flags {flags:#04x}, which this build does not know"
            ),
            CorruptionKind::BadControl => f.write_str("a control frame this build cannot read"),
            CorruptionKind::BadSnapshot => {
                f.write_str("a table snapshot whose entries do not decode")
            }
            CorruptionKind::TornBatch { records, found } => write!(
                f,
                "a checkpoint's batch ends early: it states {records} records, {found} follow"
            ),
        }
    }
}

struct DisplayOffset(Option<u64>);

impl fmt::Display for DisplayOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, "the record at offset {offset}"),
            None => f.write_str("a value"),
        }
    }
}

/// ` of a log of {type}`, when the log records its event type.
struct DisplayEvent<'a>(Option<&'a str>);

impl fmt::Display for DisplayEvent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(event) => write!(f, " of a log of {event}"),
            None => Ok(()),
        }
    }
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The I/O error kind, if this error came from the operating system.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            Error::Io { source, .. } => Some(source.kind()),
            Error::Poisoned { source, .. } => Some(source.kind()),
            _ => None,
        }
    }

    /// Whether the log found damaged bytes (`Corrupt` or a format version it
    /// cannot read).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::Corrupt { .. } | Error::UnsupportedVersion { .. }
        )
    }
}
