//! Which sealed segments retention removes, and when.
//!
//! Retention drops whole sealed segments, oldest first; the active segment
//! is never removed. A segment goes when every record in it is below the
//! offset given to `truncate_before`; when the log is over its hard byte
//! limit; or, if no durable register (a consumer's position) still needs
//! one of its records, when the log is over its byte budget or every record
//! in it is older than the age limit. The store asks this policy about the
//! oldest segment again and again until it says keep, and removes the
//! segments it gives up.

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
    /// Past this, segments go whoever still needs them.
    pub(crate) hard_max_bytes: Option<u64>,
}

impl Policy {
    /// Whether to remove the oldest segment, `oldest_len` bytes long, whose
    /// records end where the next segment begins (`next_base`). `total` is
    /// the size of all segments. `next_first_ts` yields the timestamp of
    /// the next segment's first record: timestamps never decrease, so every
    /// record of the oldest segment is at most that old. Age therefore
    /// follows the records' own timestamps, and a clock that jumps back
    /// removes less, never more. `needed_from` yields the lowest position a
    /// register still needs (`None`: none does); the byte budget and the
    /// age limit keep what it needs, the hard limit does not.
    pub(crate) fn drops_oldest(
        &self,
        oldest_len: u64,
        next_base: u64,
        total: u64,
        now_micros: u64,
        next_first_ts: impl FnOnce() -> Result<Option<u64>>,
        needed_from: impl FnOnce() -> Result<Option<u64>>,
    ) -> Result<bool> {
        if self.before_offset.is_some_and(|before| next_base <= before) {
            return Ok(true);
        }
        if self
            .hard_max_bytes
            .is_some_and(|max| total > max && oldest_len > 0)
        {
            return Ok(true);
        }
        let over_budget = self
            .max_bytes
            .is_some_and(|max| total > max && oldest_len > 0);
        let too_old = !over_budget
            && match self.max_age_micros {
                Some(age) => {
                    next_first_ts()?.is_some_and(|newest| newest < now_micros.saturating_sub(age))
                }
                None => false,
            };
        if !over_budget && !too_old {
            return Ok(false);
        }
        Ok(needed_from()?.is_none_or(|needed| needed >= next_base))
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
            hard_max_bytes: self.options.retention_hard_bytes,
        };
        let now = now_micros();
        // Read once per pass, and only if a limit asks: the registers'
        // files are the truth (another process's consumers included).
        let mut needed: Option<Option<u64>> = None;
        let mut removed = 0;
        while let Some((oldest, second, total)) = self.segments.oldest() {
            let newer_first_ts = || -> Result<Option<u64>> {
                match self.segment_for(&pin, second)? {
                    Some(segment) => segment.first_timestamp(),
                    None => Ok(None),
                }
            };
            let needed_from = || -> Result<Option<u64>> {
                if needed.is_none() {
                    needed = Some(self.lowest_register_position()?);
                }
                Ok(needed.expect("just read"))
            };
            if !policy.drops_oldest(oldest.1, second, total, now, newer_first_ts, needed_from)? {
                break;
            }
            self.remove_oldest(oldest.0)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The lowest position a register (a durable consumer) or a registered
    /// reader stores (`None` without either). One whose file cannot be read
    /// needs everything: what it needs is unknown.
    fn lowest_register_position(&self) -> Result<Option<u64>> {
        let consumers = self
            .registers()?
            .into_iter()
            .map(|entry| entry.slot.map_or(0, |(position, _)| position));
        let readers = self
            .reader_entries()?
            .into_iter()
            .map(|entry| entry.position.unwrap_or(0));
        Ok(consumers.chain(readers).min())
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

    fn nobody() -> Result<Option<u64>> {
        Ok(None)
    }

    #[test]
    fn offset_truncation_drops_only_segments_wholly_below() {
        let policy = Policy {
            before_offset: Some(100),
            ..Policy::default()
        };
        assert!(policy
            .drops_oldest(10, 100, 10, 0, || Ok(None), never)
            .unwrap());
        assert!(!policy
            .drops_oldest(10, 101, 10, 0, || Ok(None), nobody)
            .unwrap());
    }

    #[test]
    fn byte_budget_drops_while_over() {
        let policy = Policy {
            max_bytes: Some(1000),
            ..Policy::default()
        };
        assert!(policy.drops_oldest(400, 5, 1001, 0, never, nobody).unwrap());
        assert!(!policy
            .drops_oldest(400, 5, 1000, 0, || Ok(None), nobody)
            .unwrap());
    }

    #[test]
    fn age_uses_the_next_segments_first_timestamp() {
        let policy = Policy {
            max_age_micros: Some(1_000),
            ..Policy::default()
        };
        let now = 10_000;
        assert!(policy
            .drops_oldest(1, 5, 1, now, || Ok(Some(8_999)), nobody)
            .unwrap());
        assert!(!policy
            .drops_oldest(1, 5, 1, now, || Ok(Some(9_000)), nobody)
            .unwrap());
        assert!(!policy
            .drops_oldest(1, 5, 1, now, || Ok(None), nobody)
            .unwrap());
        // A clock that went back before the records keeps everything.
        assert!(!policy
            .drops_oldest(1, 5, 1, 500, || Ok(Some(400)), nobody)
            .unwrap());
    }

    #[test]
    fn registers_hold_back_the_budget_and_the_age_limit_but_not_the_hard_limit() {
        let soft = Policy {
            max_bytes: Some(1000),
            max_age_micros: Some(1_000),
            ..Policy::default()
        };
        let needs = |from| move || -> Result<Option<u64>> { Ok(Some(from)) };
        // Over budget and old, but a register is at 4, inside [0, 5).
        assert!(!soft
            .drops_oldest(400, 5, 5000, 10_000, || Ok(Some(1)), needs(4))
            .unwrap());
        // Past it: the segment goes.
        assert!(soft
            .drops_oldest(400, 5, 5000, 10_000, || Ok(Some(1)), needs(5))
            .unwrap());
        let hard = Policy {
            hard_max_bytes: Some(2000),
            ..soft
        };
        assert!(hard
            .drops_oldest(400, 5, 5000, 10_000, never, never)
            .unwrap());
        assert!(!hard
            .drops_oldest(400, 5, 1500, 10_000, || Ok(Some(9_999)), needs(4))
            .unwrap());
    }
}
