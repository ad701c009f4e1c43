//! Replay from any start: [`Cursor`], the iterator that
//! [`EventLog::read`](super::EventLog::read) returns.
//!
//! A cursor copies records out of the store's maps in batches, each under
//! one pin ([`Store::pin`](crate::store::Store::pin)) and verified as it is
//! copied, then decodes them one at a time as they are asked for, straight
//! into the value `next` returns. It holds no map between batches: closing
//! the log (from any handle) ends it with [`Error::Closed`] rather than
//! leaving it reading files whose lock is gone. A slow consumer's decode
//! never holds the pin either.

use std::fmt;
use std::sync::Arc;

use super::decode_copied;
use crate::codec::{Codec, Postcard};
use crate::error::{Error, Result};
use crate::record::{Record, Start};
use crate::store::{FrameBatch, RawCursor, Store};

/// Records a cursor copies per batch, at most. The first batch holds one
/// record and each next one twice as many, so that reading one record
/// (`read(Start::Offset(o)).next()`) copies one.
const BATCH: usize = 64;
/// Bytes a batch copies, at most (a record bigger than this is copied
/// alone), so that a cursor over large records holds little.
const BATCH_BYTES: usize = 256 * 1024;

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
    /// Records copied and verified, not yet decoded.
    batch: FrameBatch,
    /// The next record of `batch` to decode.
    at: usize,
    /// What ended the last copy, reported after its records.
    error: Option<Error>,
    /// How many records the next batch copies.
    batch_len: usize,
    ended: bool,
    _value: std::marker::PhantomData<fn() -> T>,
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
            .records
            .get(self.at)
            .map_or(self.raw.next, |record| record.offset)
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
            batch: FrameBatch::default(),
            at: 0,
            error: None,
            batch_len: 1,
            ended: false,
            _value: std::marker::PhantomData,
        }
    }

    /// Copies the next batch under one pin.
    fn fill(&mut self) {
        self.batch.clear();
        self.at = 0;
        let store = &*self.store;
        let pin = match store.pin() {
            Ok(pin) => pin,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        let len = self.batch_len;
        self.batch_len = (len * 2).min(BATCH);
        let copied = self
            .raw
            .copy_frames(store, &pin, len, BATCH_BYTES, &mut self.batch);
        self.raw.unpin();
        drop(pin);
        if let Err(e) = copied {
            self.error = Some(e);
        } else if self.raw.is_done() || self.batch.records.is_empty() {
            self.ended = true;
        }
    }
}

impl<T, C: Codec<T>> Iterator for Cursor<T, C> {
    type Item = Result<Record<T>>;

    // Inlined into the caller's loop even where it is large: the record is
    // returned by value, and out of line it is moved once more through
    // memory (a few percent of a replay of small events).
    #[inline(always)]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(record) = self.batch.records.get(self.at) {
                self.at += 1;
                let event = &self.store.meta().event;
                return Some(decode_copied(&*self.codec, &self.batch, record, event));
            }
            if let Some(e) = self.error.take() {
                self.ended = true;
                return Some(Err(e));
            }
            if self.ended {
                return None;
            }
            self.fill();
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let copied = self.batch.records.len() - self.at;
        let left = self.raw.end.saturating_sub(self.raw.next) as usize + copied;
        (0, Some(left))
    }
}
