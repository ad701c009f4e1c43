//! The read-only follower: a handle that reads a log another process (or
//! another handle) writes, picking up new records, new segments and
//! segments the writer's retention removed, without ever writing.

use std::sync::Arc;

use super::tail;
use super::Store;
use crate::error::{Error, Result};
use crate::format;

impl Store {
    /// Picks up records and segments another process wrote, and segments it
    /// removed; publishes the new end to waiting readers.
    pub(crate) fn refresh(&self) -> Result<()> {
        let _guard = self.maintenance.lock();
        let _pin = self.pin()?;
        loop {
            let Some(active) = self.segments.newest() else {
                return Ok(());
            };
            if active.follow() {
                self.notifier.publish(active.next());
            }
            let entries = self
                .options
                .storage
                .list(&self.dir)
                .map_err(|e| Error::io("list", &self.dir, e))?;
            let mut on_disk: Vec<(u64, u64)> = entries
                .iter()
                .filter_map(|e| {
                    let name = e.name.to_str()?;
                    Some((
                        format::parse_numbered_name(name, format::SEGMENT_EXT)?,
                        e.len,
                    ))
                })
                .collect();
            on_disk.sort_unstable();
            if let Some(&(oldest, _)) = on_disk.first() {
                self.segments.forget_below(oldest);
            }
            let next_base = active.next();
            let Some(&(base, len)) = on_disk.iter().find(|s| s.0 > active.base) else {
                return Ok(());
            };
            if base != next_base {
                // The writer rolled, but this handle has not seen the end of
                // the old segment yet; it will on a later refresh.
                return Ok(());
            }
            let Some(segment) = tail::open_followed(&self.options, &self.dir, base, len)? else {
                return Ok(());
            };
            let segment = Arc::new(segment);
            self.segments.push(segment.clone());
            self.notifier.publish(segment.next());
        }
    }
}
