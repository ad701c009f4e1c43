//! Replay from any start: [`Cursor`], the iterator that
//! [`EventLog::read`](super::EventLog::read) returns.
//!
//! A cursor reads and decodes records in batches, each under one pin of the
//! store's maps ([`Store::pin`](crate::store::Store::pin)), and holds no map
//! between batches: closing the log (from any handle) ends it with
//! [`Error::Closed`] rather than leaving it reading files whose lock is
//! gone.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::decode;
use crate::codec::{Codec, Postcard};
use crate::error::Result;
use crate::record::{Record, Start};
use crate::store::{RawCursor, Store};

/// Records a cursor decodes per batch, at most. The first batch holds one
/// record and each next one twice as many, so that reading one record
/// (`read(Start::Offset(o)).next()`) decodes one.
const BATCH: usize = 64;

/// An iterator over a log's records from a [`Start`] up to the end the log
/// had when the cursor was made, from [`EventLog::read`](super::EventLog::read).
///
/// Each item is a `Result`: a record that fails to decode is an
/// [`Error::Codec`](crate::Error::Codec) and the cursor goes on past it;
/// damaged bytes are an [`Error::Corrupt`](crate::Error::Corrupt) and end
/// the iteration, as does [`Error::Closed`](crate::Error::Closed) once the
/// log is closed or its last handle dropped (a cursor does not keep the log
/// open).
pub struct Cursor<T, C = Postcard> {
    store: Arc<Store>,
    codec: Arc<C>,
    raw: RawCursor,
    /// Decoded records not yet yielded, with their offsets.
    batch: VecDeque<(u64, Result<Record<T>>)>,
    /// How many records the next batch reads.
    batch_len: usize,
    ended: bool,
}

impl<T, C> fmt::Debug for Cursor<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cursor")
            .field("position", &self.position())
            .field("end", &self.raw.end)
            .finish_non_exhaustive()
    }
}

impl<T, C> Cursor<T, C> {
    /// The offset of the record the next call to `next` yields.
    pub fn position(&self) -> u64 {
        self.batch
            .front()
            .map_or(self.raw.next, |(offset, _)| *offset)
    }

    /// The offset where this cursor stops.
    pub fn end(&self) -> u64 {
        self.raw.end
    }
}

impl<T, C: Codec<T>> Cursor<T, C> {
    pub(crate) fn new(store: Arc<Store>, codec: Arc<C>, start: Start) -> Cursor<T, C> {
        let raw = RawCursor::new(&store, start);
        Cursor {
            store,
            codec,
            raw,
            batch: VecDeque::new(),
            batch_len: 1,
            ended: false,
        }
    }

    /// Reads and decodes the next batch under one pin.
    fn fill(&mut self) {
        let store = &self.store;
        let pin = match store.pin() {
            Ok(pin) => pin,
            Err(e) => {
                self.ended = true;
                self.batch.push_back((self.raw.next, Err(e)));
                return;
            }
        };
        let codec = &*self.codec;
        let event = &store.meta().event;
        let len = self.batch_len;
        self.batch_len = (len * 2).min(BATCH);
        for _ in 0..len {
            let offset = self.raw.next;
            match self
                .raw
                .next_frame(store, &pin, |frame| decode(codec, frame, event))
            {
                Some(Ok(decoded)) => self.batch.push_back((offset, decoded)),
                Some(Err(e)) => {
                    self.batch.push_back((offset, Err(e)));
                    break;
                }
                None => break,
            }
        }
        self.raw.unpin();
        if self.raw.is_done() || self.batch.is_empty() {
            self.ended = true;
        }
    }
}

impl<T, C: Codec<T>> Iterator for Cursor<T, C> {
    type Item = Result<Record<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.batch.is_empty() && !self.ended {
            self.fill();
        }
        self.batch.pop_front().map(|(_, item)| item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.raw.end.saturating_sub(self.raw.next) as usize + self.batch.len();
        (0, Some(left))
    }
}
