//! Which sealed segments retention removes, and when.
//!
//! Retention drops whole sealed segments, oldest first; the active segment
//! is never removed. A segment goes when the log is over its byte budget,
//! when every record in it is older than the age limit, or when every
//! record in it is below the offset given to `truncate_before`. The store
//! asks this policy about the oldest segment again and again until it says
//! keep, and removes the segments it gives up.

use super::Store;
use crate::error::{Error, Result};
use crate::format;
use crate::record::now_micros;
use crate::storage::remove_if_exists;

/// The limits a log was opened with, plus an explicit truncation point.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Policy {
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_age_micros: Option<u64>,
    pub(crate) before_offset: Option<u64>,
}

impl Policy {
    /// Whether to remove the oldest segment, `oldest_len` bytes long, whose
    /// records end where the next segment begins (`next_base`). `total` is
    /// the size of all segments. `next_first_ts` yields the timestamp of
    /// the next segment's first record: timestamps never decrease, so every
    /// record of the oldest segment is at most that old. Age therefore
    /// follows the records' own timestamps, and a clock that jumps back
    /// removes less, never more.
    pub(crate) fn drops_oldest(
        &self,
        oldest_len: u64,
        next_base: u64,
        total: u64,
        now_micros: u64,
        next_first_ts: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<bool> {
        if self.before_offset.is_some_and(|before| next_base <= before) {
            return Ok(true);
        }
        if self
            .max_bytes
            .is_some_and(|max| total > max && oldest_len > 0)
        {
            return Ok(true);
        }
        if let Some(age) = self.max_age_micros {
            if let Some(newest) = next_first_ts()? {
                return Ok(newest < now_micros.saturating_sub(age));
            }
        }
        Ok(false)
    }
}

impl Store {
    /// Removes sealed segments that retention (or `truncate_before`) no
    /// longer needs, oldest first. Returns how many were removed.
    pub(crate) fn apply_retention(&self, truncate_before: Option<u64>) -> Result<usize> {
        if self.writer.is_none() {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        let _guard = self.maintenance.lock();
        let pin = self.pin()?;
        let policy = Policy {
            max_bytes: self.options.retention_bytes,
            max_age_micros: self
                .options
                .retention_age
                .map(|age| age.as_micros().min(u128::from(u64::MAX)) as u64),
            before_offset: truncate_before,
        };
        let now = now_micros();
        let mut removed = 0;
        while let Some((oldest, second, total)) = self.segments.oldest() {
            let newer_first_ts = || -> Result<Option<u64>> {
                match self.segment_for(&pin, second)? {
                    Some(segment) => segment.first_timestamp(),
                    None => Ok(None),
                }
            };
            if !policy.drops_oldest(oldest.1, second, total, now, newer_first_ts)? {
                break;
            }
            self.remove_oldest(oldest.0)?;
            removed += 1;
        }
        Ok(removed)
    }

    fn remove_oldest(&self, base: u64) -> Result<()> {
        if !self.segments.remove_oldest(base) {
            return Ok(());
        }
        let storage = &self.options.storage;
        // Index first: a crash in between leaves a segment whose index is
        // rebuilt, never an index without its segment being trusted.
        remove_if_exists(storage, &self.dir.join(format::index_name(base)))?;
        remove_if_exists(storage, &self.dir.join(format::segment_name(base)))?;
        // One directory sync per removal, so that a crash can only bring
        // back the newest removals, never open a gap.
        storage
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn never() -> Result<Option<u64>> {
        panic!("the timestamp is not needed for this decision")
    }

    #[test]
    fn offset_truncation_drops_only_segments_wholly_below() {
        let policy = Policy {
            before_offset: Some(100),
            ..Policy::default()
        };
        assert!(policy.drops_oldest(10, 100, 10, 0, || Ok(None)).unwrap());
        assert!(!policy.drops_oldest(10, 101, 10, 0, || Ok(None)).unwrap());
    }

    #[test]
    fn byte_budget_drops_while_over() {
        let policy = Policy {
            max_bytes: Some(1000),
            ..Policy::default()
        };
        assert!(policy.drops_oldest(400, 5, 1001, 0, never).unwrap());
        assert!(!policy.drops_oldest(400, 5, 1000, 0, || Ok(None)).unwrap());
    }

    #[test]
    fn age_uses_the_next_segments_first_timestamp() {
        let policy = Policy {
            max_age_micros: Some(1_000),
            ..Policy::default()
        };
        let now = 10_000;
        assert!(policy
            .drops_oldest(1, 5, 1, now, || Ok(Some(8_999)))
            .unwrap());
        assert!(!policy
            .drops_oldest(1, 5, 1, now, || Ok(Some(9_000)))
            .unwrap());
        assert!(!policy.drops_oldest(1, 5, 1, now, || Ok(None)).unwrap());
        // A clock that went back before the records keeps everything.
        assert!(!policy.drops_oldest(1, 5, 1, 500, || Ok(Some(400))).unwrap());
    }
}
