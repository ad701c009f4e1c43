//! The builder that opens a log: segment size, durability, recovery mode,
//! retention, limits, permissions; and the validation of those choices.
//! Opening itself belongs to the layers above (`impl Options { fn open }`
//! is in [`crate::log`]), so this module depends on nothing but the
//! vocabulary and the storage seam.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::format::{FRAME_OVERHEAD, SEGMENT_HEADER_LEN};
use crate::storage::Storage;

/// When an append is on stable storage, and so what a crash can take.
///
/// | mode | `append` returns once the record is | process crash loses | power loss loses |
/// | --- | --- | --- | --- |
/// | `EveryAppend` | on stable storage (`fdatasync`) | nothing acknowledged | nothing acknowledged |
/// | `Interval(d)` | in the operating system | nothing acknowledged | at most the last `d` (plus the sync in flight) |
/// | `Buffered` | in this process's memory | what was not flushed | what was not synced |
///
/// Whatever the mode, [`EventLog::sync`](crate::EventLog::sync) returning
/// `Ok` means every record appended before the call is on stable storage,
/// and a crash never leaves a gap, a damaged record or a record that was not
/// appended: recovery cuts the log back to its longest intact prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Every append (or batch) is on stable storage when it returns.
    /// Concurrent appenders share one `fdatasync` (group commit), and
    /// [`EventLog::append_batch`](crate::EventLog::append_batch) pays one per batch. The default.
    EveryAppend,
    /// Every append reaches the operating system before it returns, so a
    /// process crash loses nothing; a background thread runs `fdatasync`
    /// every interval, which bounds what a power loss can take.
    Interval(Duration),
    /// Appends collect in an in-process buffer that is written out when it
    /// fills, on [`EventLog::flush`](crate::EventLog::flush),
    /// [`EventLog::sync`](crate::EventLog::sync) or
    /// [`EventLog::close`](crate::EventLog::close), when the last handle is
    /// dropped, and when a reader of this process asks for a buffered record.
    /// The fastest mode; a process crash loses what was still buffered.
    Buffered,
}

/// What opening a log does when it finds damaged records in data that was
/// already durable (a torn tail left by a crash is always cut off, since it
/// was never acknowledged as durable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecoveryMode {
    /// Refuse to open with [`Error::Corrupt`], naming the file and byte
    /// position; nothing is changed on disk. The default.
    #[default]
    Strict,
    /// Cut the newest segment back to the last intact record before the
    /// damage and open; the cut bytes are kept in a `.damaged` file beside
    /// the segment and the loss is reported in
    /// [`RecoveryReport`](crate::RecoveryReport). Damage in older
    /// (sealed) segments is still reported when it is read.
    TruncateAtFirstCorruption,
}

/// How to open a log: a builder whose [`open`](Options::open) does the I/O.
///
/// ```
/// use std::time::Duration;
/// use backbone::{Durability, EventLog, Options};
///
/// let dir = tempfile::tempdir().unwrap();
/// let log: EventLog<String> = Options::new()
///     .segment_bytes(8 << 20)
///     .durability(Durability::Interval(Duration::from_millis(50)))
///     .retention_bytes(1 << 30)
///     .open(dir.path())?;
/// # Ok::<(), backbone::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    pub(crate) segment_bytes: u64,
    /// `None`: 1 MiB, or what fits in a segment if that is less.
    max_record_bytes: Option<u32>,
    pub(crate) durability: Durability,
    pub(crate) recovery: RecoveryMode,
    pub(crate) retention_bytes: Option<u64>,
    pub(crate) retention_age: Option<Duration>,
    pub(crate) retention_hard_bytes: Option<u64>,
    pub(crate) index_interval_bytes: u32,
    pub(crate) buffer_bytes: usize,
    pub(crate) read_only: bool,
    pub(crate) file_mode: u32,
    pub(crate) max_open_segments: usize,
    pub(crate) close_timeout: Duration,
    pub(crate) event: EventDecl,
    /// `None`: on unless the durability is `Buffered`.
    preallocate: Option<bool>,
    pub(crate) storage: Storage,
}

/// An event type with a stable name and version, for
/// [`Options::event`].
///
/// ```
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// struct Checkout { order_id: u64 }
///
/// impl backbone::Event for Checkout {
///     const NAME: &'static str = "shop.Checkout";
///     const VERSION: u32 = 1;
/// }
///
/// # let dir = tempfile::tempdir().unwrap();
/// let log: backbone::EventLog<Checkout> =
///     backbone::Options::new().event::<Checkout>().open(dir.path())?;
/// # Ok::<(), backbone::Error>(())
/// ```
pub trait Event {
    /// The name recorded in the log; keep it stable.
    const NAME: &'static str;
    /// Raise it when the shape of the event changes.
    const VERSION: u32;
}

/// Which event type a log is opened as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EventDecl {
    /// The Rust type's own name, version 1.
    Derived,
    Declared {
        name: String,
        version: u32,
    },
    /// No check.
    Any,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

/// The smallest segment that still holds a header and one small record.
const MIN_SEGMENT_BYTES: u64 = 256;
/// Positions inside a segment are stored as `u32` in the index.
const MAX_SEGMENT_BYTES: u64 = u32::MAX as u64;

impl Options {
    /// The defaults: 64 MiB segments, records up to 1 MiB,
    /// [`Durability::EveryAppend`], [`RecoveryMode::Strict`], no retention,
    /// files readable by their owner only.
    pub fn new() -> Options {
        Options {
            segment_bytes: 64 << 20,
            max_record_bytes: None,
            durability: Durability::EveryAppend,
            recovery: RecoveryMode::Strict,
            retention_bytes: None,
            retention_age: None,
            retention_hard_bytes: None,
            index_interval_bytes: 4096,
            buffer_bytes: 256 << 10,
            read_only: false,
            file_mode: 0o600,
            max_open_segments: 64,
            close_timeout: Duration::from_secs(5),
            event: EventDecl::Derived,
            preallocate: None,
            storage: Storage::os(),
        }
    }

    /// The size at which a segment file is sealed and a new one started
    /// (default 64 MiB; between 256 bytes and 4 GiB). Segment files are
    /// created at this size, so appends never change a file's length.
    pub fn segment_bytes(mut self, bytes: u64) -> Options {
        self.segment_bytes = bytes;
        self
    }

    /// The largest encoded record accepted (default 1 MiB, or the room in
    /// a segment when segments are smaller). Larger appends fail with
    /// [`Error::RecordTooLarge`] and write nothing. Must leave room for the
    /// record in a segment.
    pub fn max_record_bytes(mut self, bytes: u32) -> Options {
        self.max_record_bytes = Some(bytes);
        self
    }

    /// The record size limit in force.
    pub(crate) fn record_limit(&self) -> u32 {
        let room = self.segment_room();
        self.max_record_bytes
            .unwrap_or_else(|| (1 << 20).min(room.min(u64::from(u32::MAX)) as u32))
    }

    fn segment_room(&self) -> u64 {
        self.segment_bytes
            .saturating_sub((SEGMENT_HEADER_LEN + FRAME_OVERHEAD) as u64)
    }

    /// When appends reach stable storage (default
    /// [`Durability::EveryAppend`]).
    pub fn durability(mut self, durability: Durability) -> Options {
        self.durability = durability;
        self
    }

    /// What to do with damaged durable records found when opening (default
    /// [`RecoveryMode::Strict`]).
    pub fn recovery(mut self, recovery: RecoveryMode) -> Options {
        self.recovery = recovery;
        self
    }

    /// Keep at most about this many bytes: the oldest sealed segments are
    /// removed when a segment is sealed, when the log is opened, and on
    /// [`EventLog::apply_retention`](crate::EventLog::apply_retention). The
    /// active segment is never removed, and neither is a segment holding
    /// records a durable consumer has not committed past: a consumer that
    /// lags holds the log's size up (see
    /// [`retention_hard_bytes`](Options::retention_hard_bytes)).
    pub fn retention_bytes(mut self, bytes: u64) -> Options {
        self.retention_bytes = Some(bytes);
        self
    }

    /// Remove sealed segments whose records are all older than `age`, at the
    /// same moments as [`retention_bytes`](Options::retention_bytes), and
    /// like it never records a durable consumer has not committed past.
    pub fn retention_age(mut self, age: Duration) -> Options {
        self.retention_age = Some(age);
        self
    }

    /// A limit on size that overrides consumers: past it, the oldest sealed
    /// segments are removed even if a consumer has not passed them. Such a
    /// consumer then cannot miss it: its next read, subscription or
    /// commit fails with
    /// [`Error::OffsetTruncated`](crate::Error::OffsetTruncated) naming its
    /// position and the log's new first offset (the difference is what it
    /// lost), until it is moved on with
    /// [`Consumer::reset`](crate::Consumer::reset) or
    /// [`seek`](crate::Consumer::seek). No limit by default.
    pub fn retention_hard_bytes(mut self, bytes: u64) -> Options {
        self.retention_hard_bytes = Some(bytes);
        self
    }

    /// Bytes of records between two entries of the sparse offset and time
    /// index (default 4096). Smaller is faster to seek and larger on disk.
    pub fn index_interval_bytes(mut self, bytes: u32) -> Options {
        self.index_interval_bytes = bytes;
        self
    }

    /// The in-process write buffer of [`Durability::Buffered`] (default
    /// 256 KiB): appends are written out when it fills.
    pub fn buffer_bytes(mut self, bytes: usize) -> Options {
        self.buffer_bytes = bytes;
        self
    }

    /// Declares the event type of the log: a stable name and a version,
    /// recorded in the log when it is created and checked at every open.
    /// Opening a log recorded under another name, or under a higher version
    /// of this one, is [`Error::EventTypeMismatch`]; opening it with a
    /// higher version records the new version (older builds of the
    /// application then refuse the log rather than misread it). Without a
    /// declaration the name is the Rust type's own name without its module
    /// path (`Checkout` for `app::shop::Checkout`), version 1: it survives
    /// moving the type between modules, but not renaming it. The [`Raw`]
    /// codec and [`inspect`](crate::inspect) skip the check.
    ///
    /// The check is by name only: the codecs do not describe the shape of
    /// a value, so two types that serialize alike decode into each other.
    /// Declare a new version when the shape changes, and keep reading the
    /// old records: with postcard, add fields only at the end, as
    /// `#[serde(default)] Option`s (old records decode with `None`), or
    /// make the event an enum of its versions from the start, so that each
    /// record says which one it is:
    ///
    /// ```
    /// use backbone::{EventLog, Options};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, Debug, PartialEq)]
    /// enum Checkout {
    ///     V1 { order_id: u64 },
    ///     // Added later, with version 2 declared: V1 records still decode.
    ///     V2 { order_id: u64, coupon: Option<String> },
    /// }
    ///
    /// # let dir = tempfile::tempdir().unwrap();
    /// let v1: EventLog<Checkout> = Options::new()
    ///     .event_type("shop.Checkout", 1)
    ///     .open(dir.path())?;
    /// v1.append(&Checkout::V1 { order_id: 7 })?;
    /// drop(v1);
    /// let v2: EventLog<Checkout> = Options::new()
    ///     .event_type("shop.Checkout", 2)
    ///     .open(dir.path())?;
    /// assert_eq!(v2.get(0)?.unwrap().value, Checkout::V1 { order_id: 7 });
    /// // A build that still declares version 1 now refuses the log.
    /// drop(v2);
    /// let old = Options::new().event_type("shop.Checkout", 1).open::<Checkout>(dir.path());
    /// assert!(matches!(old, Err(backbone::Error::EventTypeMismatch { .. })));
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// [`Raw`]: crate::Raw
    pub fn event_type(mut self, name: impl Into<String>, version: u32) -> Options {
        self.event = EventDecl::Declared {
            name: name.into(),
            version,
        };
        self
    }

    /// Declares the event type from `E`'s [`Event`] implementation: as
    /// [`event_type`](Options::event_type)`(E::NAME, E::VERSION)`.
    pub fn event<E: Event>(self) -> Options {
        self.event_type(E::NAME, E::VERSION)
    }

    /// Opens the log whatever event type it records (and records none for
    /// a new log).
    pub fn any_event_type(mut self) -> Options {
        self.event = EventDecl::Any;
        self
    }

    /// How long [`EventLog::close`](crate::EventLog::close) lets live
    /// subscriptions receive the records appended before it, at most,
    /// before it ends them (default 5 s; zero ends them at once). Dropping
    /// the last handle never waits.
    pub fn close_timeout(mut self, timeout: Duration) -> Options {
        self.close_timeout = timeout;
        self
    }

    /// Open for reading only: no lock is taken, nothing on disk is changed,
    /// and another process may be writing the log at the same time. Readers
    /// see the writer's new records once the writer has made them durable
    /// (at once with `EveryAppend`; at its syncs with `Interval`; at its
    /// `sync` and `close` with `Buffered`), so nothing a follower hands on
    /// can be taken back by a power loss. Appends fail with
    /// [`Error::ReadOnly`].
    pub fn read_only(mut self) -> Options {
        self.read_only = true;
        self
    }

    /// Unix permission bits for the files the log creates (default `0o600`,
    /// owner only; directories get the matching search bits). Ignored on
    /// other platforms.
    pub fn file_mode(mut self, mode: u32) -> Options {
        self.file_mode = mode & 0o777;
        self
    }

    /// How many sealed segments may be open (mapped) at once (default 64).
    /// More are opened on demand and the least recently opened are closed,
    /// so file handles and mappings stay bounded whatever the log size.
    pub fn max_open_segments(mut self, count: usize) -> Options {
        self.max_open_segments = count;
        self
    }

    /// Whether to write each next segment's blocks (zeros) ahead of time,
    /// on a background thread, while the active segment fills (default: on
    /// for [`Durability::EveryAppend`] and [`Durability::Interval`], off for
    /// [`Durability::Buffered`]). A sync after an append then persists the
    /// data only, not also the allocation of the blocks it touched, which
    /// on ext4 about doubles the rate of durable appends. The cost is one
    /// extra segment of disk space and writing each segment's bytes twice.
    pub fn preallocate(mut self, preallocate: bool) -> Options {
        self.preallocate = Some(preallocate);
        self
    }

    /// Whether segments are prepared ahead of time.
    pub(crate) fn preallocates(&self) -> bool {
        !self.read_only
            && self
                .preallocate
                .unwrap_or(self.durability != Durability::Buffered)
    }

    /// Runs the log on the crash-simulating, fault-injecting storage (feature
    /// `sim`; for this crate's tests only, never for production data).
    #[cfg(any(test, fuzzing, backbone_sim))]
    pub fn simulated(mut self, storage: &crate::sim::SimStorage) -> Options {
        self.storage = Storage::Sim(storage.clone());
        self
    }

    /// The storage the log's files go through, for the files a stream
    /// table keeps beside its changelog.
    pub(crate) fn storage(&self) -> &Storage {
        &self.storage
    }

    /// The permission bits new files are created with.
    pub(crate) fn created_file_mode(&self) -> u32 {
        self.file_mode
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(Error::InvalidOption { name, reason });
        if let EventDecl::Declared { name, version } = &self.event {
            if name.is_empty() || name.len() > 1024 || name.chars().any(char::is_control) {
                return invalid(
                    "event_type",
                    format!(
                        "the name must be 1 to 1024 bytes with no control characters: {name:?}"
                    ),
                );
            }
            if *version == 0 {
                return invalid("event_type", "versions start at 1".into());
            }
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return invalid(
                "segment_bytes",
                format!(
                    "{} is outside {MIN_SEGMENT_BYTES}..={MAX_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            );
        }
        let room = self.segment_room();
        if u64::from(self.record_limit()) > room {
            return invalid(
                "max_record_bytes",
                format!(
                    "{} does not fit in a segment of {} bytes (at most {room})",
                    self.record_limit(),
                    self.segment_bytes
                ),
            );
        }
        if self.index_interval_bytes == 0 {
            return invalid("index_interval_bytes", "must be at least 1".into());
        }
        if let Durability::Interval(every) = self.durability {
            if every.is_zero() {
                return invalid(
                    "durability",
                    "Interval(0) would sync continuously; use EveryAppend".into(),
                );
            }
        }
        if self.max_open_segments == 0 {
            return invalid("max_open_segments", "must be at least 1".into());
        }
        if self.file_mode & 0o600 != 0o600 {
            return invalid(
                "file_mode",
                format!("{:#o} must let the owner read and write", self.file_mode),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Options::new().validate().unwrap();
    }

    #[test]
    fn contradictions_are_refused_with_the_option_named() {
        let cases = [
            (Options::new().segment_bytes(10), "segment_bytes"),
            (Options::new().segment_bytes(1 << 40), "segment_bytes"),
            (
                Options::new().segment_bytes(4096).max_record_bytes(4096),
                "max_record_bytes",
            ),
            (
                Options::new().index_interval_bytes(0),
                "index_interval_bytes",
            ),
            (
                Options::new().durability(Durability::Interval(Duration::ZERO)),
                "durability",
            ),
            (Options::new().max_open_segments(0), "max_open_segments"),
            (Options::new().file_mode(0o400), "file_mode"),
        ];
        for (options, expected) in cases {
            match options.validate() {
                Err(Error::InvalidOption { name, .. }) => assert_eq!(name, expected),
                other => panic!("{expected}: expected InvalidOption, got {other:?}"),
            }
        }
    }

    #[test]
    fn the_default_record_limit_shrinks_to_fit_small_segments() {
        assert_eq!(Options::new().record_limit(), 1 << 20);
        let small = Options::new().segment_bytes(4096);
        small.validate().unwrap();
        assert_eq!(small.record_limit(), 4096 - 92);
    }

    #[test]
    fn a_record_of_exactly_the_room_left_is_allowed() {
        let options = Options::new()
            .segment_bytes(4096)
            .max_record_bytes(4096 - 92);
        options.validate().unwrap();
    }
}
