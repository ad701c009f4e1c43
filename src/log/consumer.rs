//! Durable named read positions: [`Consumer`], and the registry of the
//! consumers open on a log.
//!
//! A consumer's position is a durable register of the store
//! ([`Register`]): one small file, `{name}.consumer`, committed
//! crash-safely. Every handle of one log that asks for the same name shares
//! one register, through the registry the log's handles share.

use std::fmt;
use std::sync::Arc;

use super::{ConsumerSubscription, Cursor, EventLog};
use crate::codec::{Codec, Postcard};
use crate::error::Result;
use crate::name;
use crate::record::Start;
use crate::store::Register;

/// A durable, named read position in a log, from [`EventLog::consumer`].
///
/// The position is the offset of the next record the consumer wants: after
/// handling record `o`, commit `o + 1`. A consumer created for the first
/// time starts at the log's first offset.
pub struct Consumer<T, C = Postcard> {
    log: EventLog<T, C>,
    register: Arc<Register>,
}

impl<T, C> fmt::Debug for Consumer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.register.name())
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

impl<T, C> Clone for Consumer<T, C> {
    fn clone(&self) -> Self {
        Consumer {
            log: self.log.clone(),
            register: self.register.clone(),
        }
    }
}

impl<T, C> Consumer<T, C> {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        self.register.name()
    }

    /// The committed position: the offset of the next record to handle.
    pub fn position(&self) -> u64 {
        self.register.position()
    }

    /// If the stored position was outside the log when the consumer was
    /// opened (below the first offset after retention, or past the end
    /// after a power loss took unsynced records), the stored value and the
    /// value it was clamped to.
    pub fn clamped(&self) -> Option<(u64, u64)> {
        self.register.clamped()
    }

    /// The log this consumer reads.
    pub fn log(&self) -> &EventLog<T, C> {
        &self.log
    }
}

impl<T, C: Codec<T>> Consumer<T, C> {
    pub(crate) fn open(log: EventLog<T, C>, name: &str) -> Result<Consumer<T, C>> {
        name::validate(name)?;
        let mut registry = log.consumers().lock();
        if let Some(register) = registry.get(name).and_then(std::sync::Weak::upgrade) {
            drop(registry);
            return Ok(Consumer { log, register });
        }
        registry.retain(|_, register| register.strong_count() > 0);
        let register = Arc::new(log.store().open_register(name)?);
        registry.insert(name.to_owned(), Arc::downgrade(&register));
        drop(registry);
        Ok(Consumer { log, register })
    }

    /// Stores `position` durably: when this returns, a crash or power loss
    /// keeps it. Records below `position` are synced first, so a stored
    /// position never points past records that a power loss could take.
    /// Positions may move backwards (to replay).
    ///
    /// # Errors
    ///
    /// [`Error::OffsetOutOfRange`](crate::Error::OffsetOutOfRange) past the
    /// log's end; [`Error::ReadOnly`](crate::Error::ReadOnly);
    /// [`Error::Poisoned`](crate::Error::Poisoned) after a failed sync of
    /// the log or of this consumer's file; [`Error::Io`](crate::Error::Io).
    pub fn commit(&self, position: u64) -> Result<()> {
        self.register.commit(self.log.store(), position)
    }

    /// A live subscription from the committed position: after a restart,
    /// the consumer resumes with the first record it had not committed.
    ///
    /// # Errors
    ///
    /// As [`EventLog::subscribe`].
    pub fn subscribe(&self) -> Result<ConsumerSubscription<T, C>> {
        ConsumerSubscription::new(self)
    }

    /// Reads the log from the committed position to its current end.
    pub fn read(&self) -> Cursor<T, C> {
        self.log.read(Start::Offset(self.position()))
    }
}
