//! Durable named read positions: [`Consumer`], the registry of who holds
//! which consumer of a log, and the listing of a log's consumers
//! ([`ConsumerStatus`]) that monitoring reads without owning any.
//!
//! A consumer's position is a durable register of the store
//! ([`Register`]): one small file, `{name}.consumer`, committed
//! crash-safely. A name has one holder at a time: the first
//! [`EventLog::consumer`] call takes it, its clones share it, and a second
//! call while any of them lives is refused, so two services can never
//! move one position back and forth or both receive every record. A
//! consumer holds the log's store, not the log: it never keeps the log
//! open, and once the log is closed or its last handle dropped, everything
//! it does fails with [`Error::Closed`].

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use super::drain::Subscribers;
use super::subscribe::ConsumerOptions;
use super::{ConsumerSubscription, Cursor, EventLog, Handle};
use crate::codec::{Codec, Postcard};
use crate::error::{Error, Result};
use crate::name;
use crate::record::Start;
use crate::store::{Register, Store};

/// The consumers held on one log, by name. An entry whose register is gone
/// (every clone of its consumer dropped) is free.
pub(crate) type Registry = Mutex<HashMap<String, Weak<Register>>>;

/// A durable, named read position in a log, from [`EventLog::consumer`] or
/// [`EventLog::consumer_with`].
///
/// The position is the offset of the next record the consumer wants: after
/// handling record `o`, commit `o + 1`. Commits only move it forward;
/// [`seek`](Consumer::seek) and [`reset`](Consumer::reset) move it anywhere
/// on purpose. Clones share the one position. A consumer does not keep the
/// log open.
pub struct Consumer<T, C = Postcard> {
    store: Arc<Store>,
    codec: Arc<C>,
    handle: Weak<Handle>,
    subscribers: Arc<Subscribers>,
    register: Arc<Register>,
    _marker: PhantomData<fn(T) -> T>,
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
            store: self.store.clone(),
            codec: self.codec.clone(),
            handle: self.handle.clone(),
            subscribers: self.subscribers.clone(),
            register: self.register.clone(),
            _marker: PhantomData,
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

    /// Records appended that this consumer has not committed past.
    pub fn lag(&self) -> u64 {
        self.store.next_offset().saturating_sub(self.position())
    }

    /// If the stored position was past the log's end when the consumer was
    /// opened (a disk that lost acknowledged records), the stored value and
    /// the end it was clamped to. A position below the first offset (a hard
    /// retention limit removed records it had not passed) is not clamped:
    /// reads from it fail with
    /// [`Error::OffsetTruncated`] until it is moved on.
    pub fn clamped(&self) -> Option<(u64, u64)> {
        self.register.clamped()
    }

    /// A handle to the log this consumer reads, while the log is open. The
    /// handle keeps the log open as long as it lives, like any other.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] once the log was closed or its last handle dropped.
    pub fn log(&self) -> Result<EventLog<T, C>> {
        let handle = self.handle.upgrade().ok_or(Error::Closed)?;
        if self.store.is_shut_down() {
            return Err(Error::Closed);
        }
        Ok(EventLog {
            handle,
            codec: self.codec.clone(),
            _marker: PhantomData,
        })
    }

    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub(crate) fn codec(&self) -> &Arc<C> {
        &self.codec
    }

    pub(crate) fn register(&self) -> &Arc<Register> {
        &self.register
    }

    pub(crate) fn subscribers(&self) -> &Subscribers {
        &self.subscribers
    }
}

impl<T, C: Codec<T>> Consumer<T, C> {
    /// Takes the consumer `name` of `log`, creating it at `start` if it has
    /// no stored position yet.
    pub(crate) fn open(log: &EventLog<T, C>, name: &str, start: Start) -> Result<Consumer<T, C>> {
        Consumer::take(log, name, start, log.codec().clone())
    }
}

impl<T, C> Consumer<T, C> {
    /// Takes the consumer `name` of `log` (whose event type may differ
    /// from `T`: a work group keeps its position as a consumer of `()`).
    pub(crate) fn take<U, D>(
        log: &EventLog<U, D>,
        name: &str,
        start: Start,
        codec: Arc<C>,
    ) -> Result<Consumer<T, C>> {
        name::validate(name)?;
        let mut registry = log.registry().lock();
        refuse_if_held(&registry, name)?;
        registry.retain(|_, held| held.strong_count() > 0);
        let register = Arc::new(log.store().open_register(name, start)?);
        registry.insert(name.to_owned(), Arc::downgrade(&register));
        drop(registry);
        Ok(Consumer {
            store: log.store().clone(),
            codec,
            handle: Arc::downgrade(&log.handle),
            subscribers: log.subscribers().clone(),
            register,
            _marker: PhantomData,
        })
    }
}

impl<T, C: Codec<T>> Consumer<T, C> {
    /// Stores `position` durably: when this returns, a crash or power loss
    /// keeps it. Records below `position` are synced first, so a stored
    /// position never points past records that a power loss could take.
    /// Committing the current position again does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::CommitBehind`] below the committed position (nothing
    /// stored; [`seek`](Consumer::seek) moves back on purpose);
    /// [`Error::OffsetOutOfRange`] past the log's end;
    /// [`Error::ReadOnly`]; [`Error::Closed`];
    /// [`Error::Poisoned`] after a failed sync of the log or of this
    /// consumer's file; [`Error::Io`].
    pub fn commit(&self, position: u64) -> Result<()> {
        self.register.commit(&self.store, position, false)
    }

    /// Moves the position to `position`, forwards or backwards (to replay),
    /// durably, as [`commit`](Consumer::commit) does.
    ///
    /// # Errors
    ///
    /// [`Error::OffsetTruncated`] below the log's first offset,
    /// [`Error::OffsetOutOfRange`] past its end; otherwise as
    /// [`commit`](Consumer::commit).
    pub fn seek(&self, position: u64) -> Result<()> {
        self.register.commit(&self.store, position, true)
    }

    /// Moves the position to where `start` points now (the beginning, the
    /// end, an offset, the first record at or after a time) and returns it.
    ///
    /// # Errors
    ///
    /// As [`seek`](Consumer::seek).
    pub fn reset(&self, start: Start) -> Result<u64> {
        let position = self.store.resolve(start)?;
        self.seek(position)?;
        Ok(position)
    }

    /// A live subscription from the committed position, committing only
    /// when told to ([`CommitPolicy::Explicit`](super::CommitPolicy::Explicit)): after a restart, the
    /// consumer resumes with the first record it had not committed.
    ///
    /// # Errors
    ///
    /// As [`EventLog::subscribe`].
    pub fn subscribe(&self) -> Result<ConsumerSubscription<T, C>> {
        self.subscribe_with(ConsumerOptions::new())
    }

    /// A live subscription from the committed position with `options`: a
    /// [`CommitPolicy`](super::CommitPolicy) to commit by itself, what to do with records that
    /// do not decode, a read-ahead (see [`ConsumerOptions`]).
    ///
    /// ```
    /// use backbone::CommitPolicy;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let log: backbone::EventLog<u32> = backbone::EventLog::open(dir.path())?;
    /// log.append_batch(&[1, 2, 3])?;
    /// let shipping = log.consumer("shipping")?;
    /// let sub = shipping.subscribe_with(CommitPolicy::Every(2))?;
    /// sub.recv()?;
    /// sub.recv()?;
    /// sub.recv()?; // asking for the third hands back the first two
    /// assert_eq!(shipping.position(), 2);
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`EventLog::subscribe`].
    pub fn subscribe_with(
        &self,
        options: impl Into<ConsumerOptions>,
    ) -> Result<ConsumerSubscription<T, C>> {
        ConsumerSubscription::new(self, options.into())
    }

    /// Reads the log from the committed position to its current end.
    pub fn read(&self) -> Cursor<T, C> {
        Cursor::new(
            self.store.clone(),
            self.codec.clone(),
            Start::Offset(self.position()),
        )
    }
}

/// One consumer of a log as [`EventLog::consumers`] lists it: read from its
/// file, without taking it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerStatus {
    /// Its name.
    pub name: String,
    /// Its committed position.
    pub position: u64,
    /// Records appended that it has not committed past.
    pub lag: u64,
    /// Whether a [`Consumer`] of this log, in this process, holds it now.
    pub held: bool,
}

/// The consumers of the log behind `store`, sorted by name.
pub(crate) fn list(store: &Store, registry: &Registry) -> Result<Vec<ConsumerStatus>> {
    let next = store.next_offset();
    let registry = registry.lock();
    store
        .registers()?
        .into_iter()
        .map(|entry| {
            let held = registry.get(&entry.name);
            let live = held.and_then(Weak::upgrade);
            // A held consumer's position is the one in memory: its file may
            // be mid-commit.
            let position = match &live {
                Some(register) => register.position(),
                None => entry.slot?.0,
            };
            Ok(ConsumerStatus {
                name: entry.name,
                position,
                lag: next.saturating_sub(position),
                held: live.is_some(),
            })
        })
        .collect()
}

/// Removes the consumer `name` of the log behind `store`, unless it is
/// held. Whether there was one.
pub(crate) fn delete(store: &Store, registry: &Registry, name: &str) -> Result<bool> {
    name::validate(name)?;
    let registry = registry.lock();
    refuse_if_held(&registry, name)?;
    store.remove_register(name)
}

/// [`Error::ConsumerInUse`] if a live [`Consumer`] holds `name`.
fn refuse_if_held(registry: &HashMap<String, Weak<Register>>, name: &str) -> Result<()> {
    match registry.get(name) {
        Some(held) if held.strong_count() > 0 => Err(Error::ConsumerInUse {
            name: name.to_owned(),
        }),
        _ => Ok(()),
    }
}
