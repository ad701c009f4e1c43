//! The vocabulary of reading: a [`Record`] read from a log, where a read
//! [`Start`]s, and record timestamps ([`Timestamp`], microseconds since the
//! Unix epoch).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One record read from a log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record<T> {
    /// Its position in the log.
    pub offset: u64,
    /// When it was appended.
    pub timestamp: Timestamp,
    /// The event.
    pub value: T,
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
    /// The record at this offset. Past the end, a read yields nothing;
    /// below the first offset (removed by retention), it yields
    /// [`Error::OffsetTruncated`](crate::Error::OffsetTruncated).
    Offset(u64),
    /// The first record appended at or after this time.
    Timestamp(Timestamp),
}

/// When a record was appended: microseconds since the Unix epoch, taken
/// from the system clock and never decreasing within a log (a clock that
/// steps back repeats the last timestamp until it catches up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

pub(crate) fn now_micros() -> u64 {
    Timestamp::from(SystemTime::now()).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_to_and_from_system_time() {
        let t = Timestamp::from_micros(1_700_000_000_123_456);
        assert_eq!(Timestamp::from(t.to_system_time()), t);
        assert_eq!(
            Timestamp::from(UNIX_EPOCH - Duration::from_secs(1)),
            Timestamp(0)
        );
        assert!(Timestamp::now() > t);
    }
}
