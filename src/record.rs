//! The vocabulary of reading: a [`Record`] read from a log, where a read
//! [`Start`]s, and record timestamps ([`Timestamp`], microseconds since the
//! Unix epoch).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// One record read from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record<T> {
    /// Its position in the log.
    pub offset: u64,
    /// When it was appended.
    pub timestamp: Timestamp,
    /// For a record derived from another (a stream job's output), the event
    /// time of the input it came from; `None` for a record appended
    /// directly. See [`event_time`](Record::event_time).
    pub source_time: Option<Timestamp>,
    /// The event.
    pub value: T,
}

impl<T> Record<T> {
    /// A record as a read would return it: for a service's unit tests,
    /// which hand records to the code under test without a log.
    pub fn new(offset: u64, timestamp: Timestamp, value: T) -> Record<T> {
        Record {
            offset,
            timestamp,
            source_time: None,
            value,
        }
    }

    /// The same record with a source time, as a derived record has.
    pub fn with_source_time(mut self, source_time: Timestamp) -> Record<T> {
        self.source_time = Some(source_time);
        self
    }

    /// When the event happened, as far as the log knows: the source time
    /// of a derived record, else the time it was appended. Stream jobs
    /// window on it unless told otherwise, so a second stage windows on
    /// the time of the original event, not on when the first stage ran.
    pub fn event_time(&self) -> Timestamp {
        self.source_time.unwrap_or(self.timestamp)
    }

    /// The same record with its value changed by `f`.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Record<U> {
        Record {
            offset: self.offset,
            timestamp: self.timestamp,
            source_time: self.source_time,
            value: f(self.value),
        }
    }
}

/// A log's random 128-bit id
/// ([`EventLog::log_id`](crate::EventLog::log_id)), made when the log is
/// created; it prints as 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogId(pub u128);

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Where a reader stands in one of its sources, as a checkpoint stores it
/// ([`EventLog::append_committing`](crate::EventLog::append_committing)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SourcePosition {
    /// A backbone log, by its [`LogId`]: the next offset to read from it.
    Log {
        /// The source log's id.
        log_id: LogId,
        /// The next offset to read.
        offset: u64,
    },
    /// A sequence number in another system (a JetStream stream sequence,
    /// a file's line number), under a name the caller chooses: the last
    /// sequence handled, or the next, as the caller defines.
    External {
        /// The caller's name for the source (at most 65535 bytes).
        name: String,
        /// The sequence.
        sequence: u64,
    },
}

/// What a registered reader is, by where its true position lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReaderKind {
    /// A hand-off, stream job or table: a checkpoint in another log.
    Checkpoint,
    /// A NATS JetStream mirror: the last message on its subject.
    Mirror,
    /// A kind this build does not know (a newer build wrote it).
    Unknown(u8),
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Start {
    /// The first record still in the log.
    Beginning,
    /// After the last record: a read yields nothing, a subscription only
    /// new records.
    End,
    /// The record at this offset. An offset outside the log is an error
    /// wherever a `Start` is taken: below the first offset (removed by
    /// retention) [`Error::OffsetTruncated`](crate::Error::OffsetTruncated),
    /// past the end [`Error::OffsetOutOfRange`](crate::Error::OffsetOutOfRange)
    /// (the end itself, the next offset, is allowed: a subscription from it
    /// waits for the next append). A read yields the error as its one item.
    Offset(u64),
    /// The first record appended at or after this time.
    Timestamp(Timestamp),
}

/// When a record was appended: microseconds since the Unix epoch, taken
/// from the system clock and never decreasing within a log (a clock that
/// steps back repeats the last timestamp until it catches up).
///
/// It prints as a UTC time in RFC 3339 form with microseconds
/// (`2026-12-04T03:19:40.123456Z`), converts to and from [`SystemTime`],
/// and serializes as its number of microseconds.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp(now_micros())
    }

    /// A timestamp `micros` microseconds after the Unix epoch.
    pub const fn from_micros(micros: u64) -> Timestamp {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.0)
    }
}

impl From<SystemTime> for Timestamp {
    /// Times before the epoch become the epoch.
    fn from(time: SystemTime) -> Timestamp {
        let micros = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros().min(u128::from(u64::MAX)) as u64);
        Timestamp(micros)
    }
}

impl From<Timestamp> for SystemTime {
    fn from(time: Timestamp) -> SystemTime {
        time.to_system_time()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = self.0 % 1_000_000;
        let secs = self.0 / 1_000_000;
        let (days, secs_of_day) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            secs_of_day / 3600,
            secs_of_day / 60 % 60,
            secs_of_day % 60
        )
    }
}

/// The proleptic Gregorian date `days` days after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days that are not negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The wall clock in microseconds since the epoch (the epoch for a clock
/// set before it), read once per append: in whole seconds and microseconds,
/// without the 128-bit arithmetic of `Duration::as_micros`.
///
/// On Unix it asks `clock_gettime(CLOCK_REALTIME)` directly: the same clock
/// `SystemTime::now` reads, without the checked `timespec` arithmetic of
/// `SystemTime` and `duration_since`, a third of the read's cost (about 10 ns
/// of 33 per append on the machine of the README's table).
#[inline]
pub(crate) fn now_micros() -> u64 {
    #[cfg(unix)]
    {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable `timespec` for the call, and
        // `CLOCK_REALTIME` is a clock every Unix has; the call writes only
        // `now`.
        #[allow(unsafe_code)]
        let failed = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) } != 0;
        // A clock before the epoch (or a failed read, which POSIX allows
        // only for an unknown clock) reads as the epoch, as below.
        if failed || now.tv_sec < 0 {
            return 0;
        }
        (now.tv_sec as u64)
            .saturating_mul(1_000_000)
            .saturating_add(now.tv_nsec as u64 / 1_000)
    }
    #[cfg(not(unix))]
    {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
            d.as_secs()
                .saturating_mul(1_000_000)
                .saturating_add(u64::from(d.subsec_micros()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system_micros() -> u64 {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        u64::try_from(since.as_micros()).unwrap()
    }

    #[test]
    fn the_append_clock_reads_the_wall_clock() {
        // `now_micros` reads the clock `SystemTime` reads, by its own path:
        // a reading taken between two of `SystemTime`'s lies between them
        // (with a millisecond's slack for a clock stepped meanwhile).
        for _ in 0..100 {
            let before = system_micros();
            let now = now_micros();
            let after = system_micros();
            assert!(
                before <= now + 1_000 && now <= after + 1_000,
                "{before} <= {now} <= {after}"
            );
        }
    }

    #[test]
    fn converts_to_and_from_system_time() {
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        assert_eq!(Timestamp::from(t.to_system_time()), t);
        assert_eq!(
            Timestamp::from(UNIX_EPOCH - Duration::from_secs(1)),
            Timestamp(0)
        );
        assert!(Timestamp::now() > t);
        assert_eq!(SystemTime::from(t), t.to_system_time());
    }

    #[test]
    fn prints_as_rfc3339_utc() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1_700_000_000_123_456, "2023-11-14T22:13:20.123456Z"),
            // A leap day, and the last microsecond of a leap year.
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (1_609_459_199_999_999, "2020-12-31T23:59:59.999999Z"),
            (4_102_444_800_000_001, "2100-01-01T00:00:00.000001Z"),
        ];
        for (micros, text) in cases {
            assert_eq!(Timestamp::from_micros(micros).to_string(), text);
        }
        // The largest timestamp still prints.
        assert!(Timestamp::from_micros(u64::MAX).to_string().ends_with('Z'));
    }

    #[test]
    fn records_can_be_built_and_mapped() {
        let rec = Record::new(7, Timestamp::from_micros(5), "seven");
        assert_eq!(
            rec.clone().map(str::len),
            Record::new(7, Timestamp::from_micros(5), 5)
        );
    }
}
