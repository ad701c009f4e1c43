//! The untyped walk over a log's frames from one offset to an end, segment
//! by segment, that typed cursors and subscriptions are built on.
//!
//! A cursor reads only under a [`Pin`], and lets go of the segment it reads
//! (and so of its map) with [`RawCursor::unpin`] at the end of each batch,
//! remembering where it was: no map of a log's files outlives the log's
//! lock, however long a cursor lives.

use std::ops::Range;
use std::sync::Arc;

use super::segment::{ReadFrame, Segment};
use super::{Pin, Store};
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{Frame, RECORDS_START};
use crate::record::{Start, Timestamp};

/// Records copied out of the maps by [`RawCursor::copy_frames`], verified:
/// one buffer of the bytes copied (runs of whole frames, or payloads), so
/// a batch costs two allocations reused batch after batch, and where each
/// record's payload lies in it. A typed cursor decodes from it after
/// letting go of its pin; a bridge sends the payloads as they are.
#[derive(Debug, Default)]
pub(crate) struct FrameBatch {
    pub(crate) bytes: Vec<u8>,
    pub(crate) records: Vec<CopiedFrame>,
}

/// One record of a [`FrameBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CopiedFrame {
    pub(crate) offset: u64,
    pub(crate) timestamp: Timestamp,
    pub(crate) source_time: Option<Timestamp>,
    /// Where its payload lies in [`FrameBatch::bytes`].
    pub(crate) payload: Range<usize>,
}

impl FrameBatch {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.records.clear();
    }

    /// The payload of `record`, one of this batch's.
    #[inline]
    pub(crate) fn payload(&self, record: &CopiedFrame) -> &[u8] {
        &self.bytes[record.payload.clone()]
    }

    /// Copies `frame`'s payload in and notes the record.
    #[inline]
    fn push(&mut self, frame: &Frame<'_>) {
        self.bytes.extend_from_slice(frame.payload);
        self.note(frame, self.bytes.len());
    }

    /// Notes the record in `frame`, whose payload ends at `payload_end` in
    /// `bytes` (copied already, or about to be).
    #[inline]
    pub(super) fn note(&mut self, frame: &Frame<'_>, payload_end: usize) {
        self.records.push(CopiedFrame {
            offset: frame.offset,
            timestamp: Timestamp::from_micros(frame.timestamp),
            source_time: frame.source_time.map(Timestamp::from_micros),
            payload: payload_end - frame.payload.len()..payload_end,
        });
    }
}

/// Walks frames from one offset to an end.
#[derive(Debug)]
pub(crate) struct RawCursor {
    /// The offset of the next frame.
    pub(crate) next: u64,
    /// Where the walk stops (exclusive).
    pub(crate) end: u64,
    /// The segment being read and the byte position of `next` in it.
    at: Option<(Arc<Segment>, u64)>,
    /// Where `at` was when the cursor was unpinned: a segment's base and the
    /// position of `next` in it.
    resume: Option<(u64, u64)>,
    pending: Option<Error>,
    /// Reported once the cursor reaches its end: records were appended
    /// past it that a failed write lost.
    trailing: Option<Error>,
    done: bool,
}

impl RawCursor {
    /// A cursor from `start` to the end the log has now.
    pub(crate) fn new(store: &Store, start: Start) -> RawCursor {
        let mut cursor = RawCursor {
            next: 0,
            end: 0,
            at: None,
            resume: None,
            pending: None,
            trailing: None,
            done: false,
        };
        // What cannot be made readable (a follower meeting a damaged next
        // segment) is reported after the records that can.
        let end = match store.readable_end() {
            Ok(end) => end,
            Err(e) => {
                cursor.trailing = Some(e);
                store.notifier().end()
            }
        };
        let first = store.first_offset();
        let next = match start {
            Start::Beginning => first,
            Start::End => end,
            Start::Offset(offset) if offset < first => {
                cursor.pending = Some(Error::OffsetTruncated {
                    requested: offset,
                    first,
                });
                offset
            }
            // Past every offset given out, appends still in flight
            // included.
            Start::Offset(offset) if offset > end.max(store.next_offset()) => {
                cursor.pending = Some(Error::OffsetOutOfRange {
                    requested: offset,
                    next: end.max(store.next_offset()),
                });
                end
            }
            Start::Offset(offset) => offset.min(end),
            Start::Timestamp(ts) => match store.offset_for_time(ts.as_micros()) {
                Ok(offset) => offset,
                Err(e) => {
                    cursor.pending = Some(e);
                    end
                }
            },
        };
        cursor.next = next;
        cursor.end = end;
        if cursor.trailing.is_none() {
            cursor.trailing = store.lost_tail();
        }
        cursor
    }

    /// A cursor for a subscription: like [`RawCursor::new`], except that
    /// the end moves with [`extend_to`](RawCursor::extend_to).
    pub(crate) fn subscription(store: &Store, start: Start) -> RawCursor {
        let mut cursor = RawCursor::new(store, start);
        // A subscription waits at the end for what comes next; a writer
        // failure reaches it as the end of the log.
        cursor.trailing = None;
        // A start given out to an append still in flight is waited for.
        if let Start::Offset(offset) = start {
            if offset > cursor.next && cursor.pending.is_none() {
                cursor.next = offset;
            }
        }
        cursor
    }

    /// An error that waits to be reported before any record (a start
    /// outside the log), taken out of the cursor.
    pub(crate) fn take_pending(&mut self) -> Option<Error> {
        self.pending.take()
    }

    /// Lets the cursor read up to `end`.
    pub(crate) fn extend_to(&mut self, end: u64) {
        self.end = self.end.max(end);
    }

    /// Whether the walk has ended for good (an error ended it).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Whether an error waits to be reported before any record.
    pub(crate) fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// The segment being read (its base offset) and the byte position of
    /// the next frame in it, while pinned.
    pub(crate) fn place(&self) -> Option<(u64, u64)> {
        self.at.as_ref().map(|(segment, pos)| (segment.base, *pos))
    }

    /// Lets go of the segment being read, keeping the place in it.
    pub(crate) fn unpin(&mut self) {
        if let Some((segment, pos)) = self.at.take() {
            self.resume = Some((segment.base, pos));
        }
    }

    /// The next frame, handed to `f`; `None` at the end.
    pub(crate) fn next_frame<R>(
        &mut self,
        store: &Store,
        pin: &Pin<'_>,
        f: impl FnOnce(&Frame<'_>) -> R,
    ) -> Option<Result<R>> {
        if let Some(e) = self.pending.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.done {
            return None;
        }
        if self.next >= self.end {
            return self.trailing.take().map(|e| {
                self.done = true;
                Err(e)
            });
        }
        match self.step(store, pin, f) {
            Ok(value) => Some(Ok(value)),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// Copies the next records into `batch` (added to what it holds): at
    /// most `max_records`, stopping once the bytes copied (frame headers
    /// included) reach `max_bytes` (at least one record whatever its size)
    /// or at the end.
    /// Each frame is verified as [`next_frame`](RawCursor::next_frame)
    /// verifies it; an error comes after the records before it, which stay
    /// in `batch`.
    pub(crate) fn copy_frames(
        &mut self,
        store: &Store,
        pin: &Pin<'_>,
        max_records: usize,
        max_bytes: usize,
        batch: &mut FrameBatch,
    ) -> Result<()> {
        let (start_records, start_bytes) = (batch.records.len(), batch.bytes.len());
        loop {
            let copied = batch.records.len() - start_records;
            if copied >= max_records || batch.bytes.len() - start_bytes >= max_bytes {
                return Ok(());
            }
            // Within the segment being read, one walk copies the run.
            if let (Some((segment, pos)), false) = (&mut self.at, self.done) {
                let stop = self.end.min(self.next + (max_records - copied) as u64);
                if self.next < stop && self.next < segment.next() {
                    let room = max_bytes - (batch.bytes.len() - start_bytes);
                    let run = segment.copy_run(pos, &mut self.next, stop, room, batch);
                    if let Err(e) = run {
                        self.done = true;
                        return Err(e);
                    }
                    continue;
                }
            }
            // Everything else (a start to report, the next segment, the
            // end) takes the step at a time.
            match self.next_frame(store, pin, |frame| batch.push(frame)) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    }

    fn step<R>(
        &mut self,
        store: &Store,
        pin: &Pin<'_>,
        f: impl FnOnce(&Frame<'_>) -> R,
    ) -> Result<R> {
        loop {
            if let Some((segment, pos)) = &mut self.at {
                if self.next < segment.next() {
                    // The position moves in place: no reference counting
                    // per record.
                    let ReadFrame { value, next_pos } = segment.read(*pos, self.next, f)?;
                    *pos = next_pos;
                    self.next += 1;
                    return Ok(value);
                }
            }
            match &self.at {
                None => {
                    let segment = store
                        .segment_for(pin, self.next)?
                        .ok_or_else(|| truncated(store, self.next))?;
                    if self.next >= segment.next() {
                        return Err(gap(&segment, self.next, store));
                    }
                    let pos = match self.resume.take() {
                        Some((base, pos)) if base == segment.base => pos,
                        _ => segment.locate(self.next)?,
                    };
                    self.at = Some((segment, pos));
                }
                // A newest segment of no record was replaced whole by one
                // of the same base (its checkpoints compacted): read on in
                // the new one.
                Some((segment, _))
                    if self.next == segment.base
                        && store
                            .segment_for(pin, segment.base)?
                            .is_some_and(|current| !Arc::ptr_eq(&current, segment)) =>
                {
                    self.at = None;
                }
                // This segment is done: the next one must start exactly
                // where it ended.
                Some((segment, _)) => match store.segment_after(segment.base) {
                    Some(base) if base == self.next => {
                        let next = store
                            .segment_for(pin, base)?
                            .ok_or_else(|| truncated(store, self.next))?;
                        self.at = Some((next, RECORDS_START));
                    }
                    // Retention removed what came next while this cursor
                    // read an older segment.
                    _ if self.next < store.first_offset() => {
                        return Err(truncated(store, self.next));
                    }
                    _ => return Err(gap(segment, self.next, store)),
                },
            }
        }
    }
}

fn truncated(store: &Store, requested: u64) -> Error {
    Error::OffsetTruncated {
        requested,
        first: store.first_offset(),
    }
}

/// A segment ends at `end` but the log goes on elsewhere: segments are
/// missing or overlap.
fn gap(segment: &Segment, end: u64, store: &Store) -> Error {
    let found = store.segment_after(segment.base).unwrap_or(end);
    Error::Corrupt {
        path: segment.path.clone(),
        position: segment.limit(),
        offset: Some(end),
        kind: CorruptionKind::SegmentSequence {
            expected: end,
            found,
        },
    }
}
