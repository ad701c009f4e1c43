//! Replay from any start: [`Cursor`], the iterator that
//! [`EventLog::read`] returns, and the untyped walk over segments beneath
//! it.

use std::fmt;
use std::sync::Arc;

use crate::codec::{Codec, Postcard};
use crate::engine::Engine;
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{Frame, SEGMENT_HEADER_LEN};
use crate::log::{EventLog, Record, Start};
use crate::segment::{ReadFrame, Segment};

/// An iterator over a log's records from a [`Start`] up to the end the log
/// had when the cursor was made, from [`EventLog::read`].
///
/// Each item is a `Result`: a record that fails to decode is an
/// [`Error::Codec`] and the cursor goes on past it; damaged bytes are an
/// [`Error::Corrupt`] and end the iteration.
pub struct Cursor<T, C = Postcard> {
    log: EventLog<T, C>,
    raw: RawCursor,
}

impl<T, C> fmt::Debug for Cursor<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("next", &self.raw.next)
            .field("end", &self.raw.end)
            .finish_non_exhaustive()
    }
}

impl<T, C: Codec<T>> Cursor<T, C> {
    pub(crate) fn new(log: EventLog<T, C>, start: Start) -> Cursor<T, C> {
        let raw = RawCursor::new(&log.engine, start);
        Cursor { log, raw }
    }

    /// The offset of the record the next call to `next` yields.
    pub fn position(&self) -> u64 {
        self.raw.next
    }

    /// The offset where this cursor stops.
    pub fn end(&self) -> u64 {
        self.raw.end
    }
}

impl<T, C: Codec<T>> Iterator for Cursor<T, C> {
    type Item = Result<Record<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        let log = &self.log;
        self.raw
            .next_frame(&log.engine, |frame| log.decode(frame))
            .map(|read| read.and_then(|decoded| decoded))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left =
            usize::try_from(self.raw.end.saturating_sub(self.raw.next)).unwrap_or(usize::MAX);
        (0, Some(left))
    }
}

/// Walks frames from one offset to an end, segment by segment.
pub(crate) struct RawCursor {
    pub(crate) next: u64,
    pub(crate) end: u64,
    at: Option<(Arc<Segment>, u64)>,
    pending: Option<Error>,
    /// Reported once the cursor reaches its end: records were appended
    /// past it that a failed write lost.
    trailing: Option<Error>,
    done: bool,
}

impl RawCursor {
    pub(crate) fn new(engine: &Engine, start: Start) -> RawCursor {
        let mut cursor = RawCursor {
            next: 0,
            end: 0,
            at: None,
            pending: None,
            trailing: None,
            done: false,
        };
        let end = match engine.readable_end() {
            Ok(end) => end,
            Err(e) => {
                cursor.pending = Some(e);
                return cursor;
            }
        };
        let first = engine.first_offset();
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
            Start::Offset(offset) => offset.min(end),
            Start::Timestamp(ts) => match engine.offset_for_time(ts.as_micros()) {
                Ok(offset) => offset,
                Err(e) => {
                    cursor.pending = Some(e);
                    end
                }
            },
        };
        cursor.next = next;
        cursor.end = end;
        cursor.trailing = engine.lost_tail();
        cursor
    }

    /// A cursor for a subscription: like [`RawCursor::new`], except that a
    /// start past the end waits there instead of being clamped, and the end
    /// moves with [`extend_to`](RawCursor::extend_to).
    pub(crate) fn subscription(engine: &Engine, start: Start) -> RawCursor {
        let mut cursor = RawCursor::new(engine, start);
        // A subscription waits at the end for what comes next; a writer
        // failure reaches it as the end of the log.
        cursor.trailing = None;
        if let Start::Offset(offset) = start {
            if offset > cursor.next {
                cursor.next = offset;
            }
        }
        cursor
    }

    /// Lets the cursor read up to `end`.
    pub(crate) fn extend_to(&mut self, end: u64) {
        self.end = self.end.max(end);
    }

    /// The next frame, handed to `f`.
    pub(crate) fn next_frame<R>(
        &mut self,
        engine: &Engine,
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
        match self.step(engine, f) {
            Ok(value) => Some(Ok(value)),
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn step<R>(&mut self, engine: &Engine, f: impl FnOnce(&Frame<'_>) -> R) -> Result<R> {
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
                    let segment = engine
                        .segment_for(self.next)?
                        .ok_or(Error::OffsetTruncated {
                            requested: self.next,
                            first: engine.first_offset(),
                        })?;
                    if self.next >= segment.next() {
                        return Err(gap(&segment, self.next, engine));
                    }
                    let pos = segment.locate(self.next)?;
                    self.at = Some((segment, pos));
                }
                // This segment is done: the next one must start exactly
                // where it ended.
                Some((segment, _)) => match engine.segment_after(segment.base) {
                    Some(base) if base == self.next => {
                        let next = engine.segment_for(base)?.ok_or(Error::OffsetTruncated {
                            requested: self.next,
                            first: engine.first_offset(),
                        })?;
                        self.at = Some((next, SEGMENT_HEADER_LEN as u64));
                    }
                    // Retention removed what came next while this cursor
                    // read an older segment.
                    _ if self.next < engine.first_offset() => {
                        return Err(Error::OffsetTruncated {
                            requested: self.next,
                            first: engine.first_offset(),
                        })
                    }
                    _ => return Err(gap(segment, self.next, engine)),
                },
            }
        }
    }
}

/// A segment ends at `end` but the log goes on elsewhere: segments are
/// missing or overlap.
fn gap(segment: &Segment, end: u64, engine: &Engine) -> Error {
    let found = engine.segment_after(segment.base).unwrap_or(end);
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
