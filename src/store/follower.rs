//! The read-only follower: a handle that reads a log another process (or
//! another handle) writes, picking up new records, new segments and
//! segments the writer's retention removed, without ever writing. It hands
//! out only records its writer has made durable (the writer's notice in
//! `LOCK`), so nothing it passes on can be taken back by a power loss.

use std::sync::Arc;

use super::segment::Segment;
use super::tail;
use super::Store;
use crate::error::{Error, Result};
use crate::format;
use crate::storage::OpenMode;

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
            if active.follow(self.writer_durable()) {
                self.notifier.publish(active.next());
            }
            if self.recycled(&active)? {
                continue;
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
            segment.cap_to(self.writer_durable());
            let segment = Arc::new(segment);
            self.segments.push(segment.clone());
            self.notifier.publish(segment.next());
        }
    }

    /// Whether the newest segment, holding no record, was replaced whole
    /// by its writer (a segment of checkpoints only, compacted: see
    /// `Store::next_segment`); if so, the new file is opened in its place.
    /// The old one's closed mark says it was sealed with no record; the
    /// file now under its name says whether it is another.
    fn recycled(&self, active: &Arc<Segment>) -> Result<bool> {
        let sealed_empty =
            active.next() == active.base && active.watermark().is_some_and(|mark| mark.closed);
        if !sealed_empty {
            return Ok(false);
        }
        let path = self.dir.join(format::segment_name(active.base));
        let storage = &self.options.storage;
        let Ok(file) = storage.open(&path, OpenMode::ReadOnly, self.options.file_mode) else {
            return Ok(false);
        };
        let mut header = [0u8; format::SEGMENT_HEADER_LEN];
        if file.read_at(&mut header, 0).is_err()
            || format::decode_watermark(&header) == active.watermark()
        {
            return Ok(false);
        }
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        let Some(segment) = tail::open_followed(&self.options, &self.dir, active.base, len)? else {
            return Ok(false);
        };
        segment.cap_to(self.writer_durable());
        let segment = Arc::new(segment);
        self.segments.push(segment.clone());
        self.notifier.publish(segment.next());
        Ok(true)
    }
}
