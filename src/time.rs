//! Record timestamps: microseconds since the Unix epoch, as [`Timestamp`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
