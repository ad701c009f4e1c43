//! What a service does with a record that does not decode: [`Undecodable`]
//! says whether a subscription hands the error over, skips the record, or
//! sets it aside in a dead-letter log as a [`DeadLetter`] and goes on.
//!
//! A record that never decodes (written by an older type, or by a buggy
//! producer) would otherwise stop a consumer at that offset for good: it
//! cannot commit past what it did not handle. A dead-letter log keeps the
//! record's bytes and the reason, so nothing is lost and someone can look
//! at it later.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::EventLog;
use crate::codec::Codec;
use crate::error::Result;
use crate::record::Timestamp;

/// A record set aside: where it came from, why, and its bytes unchanged.
/// The value type of a dead-letter log (`EventLog<DeadLetter>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DeadLetter {
    /// The directory of the log the record came from.
    pub source: String,
    /// Its offset there.
    pub offset: u64,
    /// Its timestamp there.
    pub timestamp: Timestamp,
    /// Why it was set aside (for an undecodable record, the codec's error).
    pub reason: String,
    /// The record's payload as stored, in the source log's codec.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    /// A dead letter for the record at `offset` of the log in `source`.
    pub fn new(
        source: impl Into<String>,
        offset: u64,
        timestamp: Timestamp,
        reason: impl Into<String>,
        payload: Vec<u8>,
    ) -> DeadLetter {
        DeadLetter {
            source: source.into(),
            offset,
            timestamp,
            reason: reason.into(),
            payload,
        }
    }
}

/// Appends a dead letter somewhere, returning its offset there.
type Sink = Arc<dyn Fn(&DeadLetter) -> Result<u64> + Send + Sync>;

/// What a subscription does with a record that does not decode as its
/// type, set with
/// [`SubscribeOptions::undecodable`](crate::SubscribeOptions::undecodable).
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Undecodable {
    /// Hand the [`Error::Codec`](crate::Error::Codec) over in place of the
    /// record, and go on after it (the default). A consumer that commits
    /// automatically counts it as handled once the next record is asked
    /// for.
    #[default]
    Yield,
    /// Skip the record, as if it had been handled.
    Skip,
    /// Append a [`DeadLetter`] to a log, then skip the record. If the
    /// append fails, the subscription hands that error over and ends there,
    /// so the record is never lost.
    DeadLetter(DeadLetters),
}

impl Undecodable {
    /// Set undecodable records aside in `log` (which the subscription keeps
    /// open while it lives).
    pub fn dead_letter<C>(log: &EventLog<DeadLetter, C>) -> Undecodable
    where
        C: Codec<DeadLetter> + Send + Sync + 'static,
    {
        Undecodable::DeadLetter(DeadLetters::new(log))
    }
}

impl fmt::Debug for Undecodable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Undecodable::Yield => f.write_str("Yield"),
            Undecodable::Skip => f.write_str("Skip"),
            Undecodable::DeadLetter(_) => f.write_str("DeadLetter(..)"),
        }
    }
}

/// Where [`Undecodable::DeadLetter`] appends: made by
/// [`Undecodable::dead_letter`].
#[derive(Clone)]
pub struct DeadLetters {
    sink: Sink,
}

impl DeadLetters {
    /// Appends to `log` (kept open while this lives).
    pub(crate) fn new<C>(log: &EventLog<DeadLetter, C>) -> DeadLetters
    where
        C: Codec<DeadLetter> + Send + Sync + 'static,
    {
        let log = log.clone();
        DeadLetters {
            sink: Arc::new(move |letter| log.append(letter)),
        }
    }

    pub(crate) fn append(&self, letter: &DeadLetter) -> Result<u64> {
        (self.sink)(letter)
    }
}

impl fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetters").finish_non_exhaustive()
    }
}
