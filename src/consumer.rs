//! Durable named read positions: [`Consumer`].
//!
//! Each consumer is one small file, `{name}.consumer`, with two slots that
//! commits fill in turn, each with a generation number and a CRC. A commit
//! writes the slot the previous commit did not use and syncs it, so a crash
//! mid-commit leaves the previous position intact in the other slot; no
//! rename or directory sync is needed after the file exists.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::codec::{Codec, Postcard};
use crate::cursor::Cursor;
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{self, ConsumerError, ConsumerSlot};
use crate::log::{EventLog, Start};
use crate::name;
use crate::recovery;
use crate::storage::{File, OpenMode};
use crate::subscribe::ConsumerSubscription;

/// A durable, named read position in a log, from [`EventLog::consumer`].
///
/// The position is the offset of the next record the consumer wants: after
/// handling record `o`, commit `o + 1`. A consumer created for the first
/// time starts at the log's first offset.
pub struct Consumer<T, C = Postcard> {
    log: EventLog<T, C>,
    state: Arc<ConsumerState>,
}

/// What every handle of one consumer shares.
pub(crate) struct ConsumerState {
    name: String,
    path: PathBuf,
    file: Option<File>,
    inner: Mutex<Inner>,
    /// The stored position and what it was clamped to, if it was outside
    /// the log when opened.
    clamped: Option<(u64, u64)>,
}

struct Inner {
    generation: u64,
    position: u64,
    /// A failed sync of this file: later commits are refused, as for the log.
    failed: Option<Arc<std::io::Error>>,
}

impl fmt::Debug for ConsumerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerState")
            .field("name", &self.name)
            .field("position", &self.inner.lock().position)
            .finish_non_exhaustive()
    }
}

impl<T, C> fmt::Debug for Consumer<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.state.name)
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

impl<T, C> Clone for Consumer<T, C> {
    fn clone(&self) -> Self {
        Consumer {
            log: self.log.clone(),
            state: self.state.clone(),
        }
    }
}

impl<T, C> Consumer<T, C> {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The committed position: the offset of the next record to handle.
    pub fn position(&self) -> u64 {
        self.state.inner.lock().position
    }

    /// If the stored position was outside the log when the consumer was
    /// opened (below the first offset after retention, or past the end
    /// after a power loss took unsynced records), the stored value and the
    /// value it was clamped to.
    pub fn clamped(&self) -> Option<(u64, u64)> {
        self.state.clamped
    }
}

impl<T, C: Codec<T>> Consumer<T, C> {
    pub(crate) fn open(log: EventLog<T, C>, name: &str) -> Result<Consumer<T, C>> {
        name::validate(name)?;
        let engine = &log.engine;
        let mut registry = engine.consumers.lock();
        if let Some(state) = registry.get(name).and_then(Weak::upgrade) {
            drop(registry);
            return Ok(Consumer { log, state });
        }
        registry.retain(|_, state| state.strong_count() > 0);
        let state = Arc::new(open_state(&log, name)?);
        registry.insert(name.to_owned(), Arc::downgrade(&state));
        drop(registry);
        Ok(Consumer { log, state })
    }

    /// Stores `position` durably: when this returns, a crash or power loss
    /// keeps it. Records below `position` are synced first, so a stored
    /// position never points past records that a power loss could take.
    /// Positions may move backwards (to replay).
    ///
    /// # Errors
    ///
    /// [`Error::OffsetOutOfRange`] past the log's end; [`Error::ReadOnly`];
    /// [`Error::Poisoned`] after a failed sync of the log or of this
    /// consumer's file; [`Error::Io`].
    pub fn commit(&self, position: u64) -> Result<()> {
        let engine = &self.log.engine;
        let next = engine.next_offset();
        if position > next {
            return Err(Error::OffsetOutOfRange {
                requested: position,
                next,
            });
        }
        let file = match &self.state.file {
            Some(file) if !engine.options.read_only => file,
            _ => {
                return Err(Error::ReadOnly {
                    path: engine.dir.clone(),
                })
            }
        };
        if position > engine.durable_offset() {
            engine.sync_to(Some(position))?;
        }
        let mut inner = self.state.inner.lock();
        if let Some(source) = &inner.failed {
            return Err(Error::Poisoned {
                op: "fdatasync",
                path: self.state.path.clone(),
                source: source.clone(),
            });
        }
        let generation = inner.generation + 1;
        let slot = format::encode_consumer_slot(&ConsumerSlot {
            generation,
            position,
        });
        let written = file
            .write_at(&slot, format::consumer_slot_at(generation) as u64)
            .map_err(|e| Error::io("write", &self.state.path, e));
        written?;
        if let Err(e) = file.sync_data() {
            let source = Arc::new(e);
            inner.failed = Some(source.clone());
            return Err(Error::Poisoned {
                op: "fdatasync",
                path: self.state.path.clone(),
                source,
            });
        }
        inner.generation = generation;
        inner.position = position;
        Ok(())
    }

    /// A live subscription from the committed position: after a restart,
    /// the consumer resumes with the first record it had not committed.
    ///
    /// # Errors
    ///
    /// As [`EventLog::subscribe`].
    pub fn subscribe(&self) -> Result<ConsumerSubscription<T, C>>
    where
        T: Send + 'static,
    {
        crate::subscribe::subscribe_consumer(self)
    }

    /// Reads the log from the committed position to its current end.
    pub fn read(&self) -> Cursor<T, C> {
        self.log.read(Start::Offset(self.position()))
    }

    /// The log this consumer reads.
    pub fn log(&self) -> &EventLog<T, C> {
        &self.log
    }
}

fn open_state<T, C>(log: &EventLog<T, C>, name: &str) -> Result<ConsumerState> {
    let engine = &log.engine;
    let options = &engine.options;
    let storage = &options.storage;
    let path = engine.dir.join(format!("{name}.{}", format::CONSUMER_EXT));
    let mode = if options.read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::Existing
    };
    let (file, slot) = match storage.open(&path, mode, options.file_mode) {
        Ok(file) => {
            let (slot, bytes) = read_slot(&file, &path)?;
            if !options.read_only {
                // The slot may come from the page cache of a commit whose
                // fdatasync failed ("fsyncgate"): writing it again and
                // syncing makes the position reported true on disk.
                file.write_at(&bytes, 0)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| Error::io("rewrite", &path, e))?;
            }
            (Some(file), slot)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let slot = ConsumerSlot {
                generation: 0,
                position: engine.first_offset(),
            };
            if options.read_only {
                (None, slot)
            } else {
                let mut bytes = vec![0u8; format::CONSUMER_FILE_LEN];
                bytes[..format::CONSUMER_HEADER_LEN]
                    .copy_from_slice(&format::encode_consumer_header());
                let at = format::consumer_slot_at(0);
                bytes[at..at + format::CONSUMER_SLOT_LEN]
                    .copy_from_slice(&format::encode_consumer_slot(&slot));
                let tmp =
                    path.with_extension(format!("{}.{}", format::CONSUMER_EXT, format::TMP_EXT));
                recovery::write_atomically(
                    storage,
                    &engine.dir,
                    &path,
                    &tmp,
                    &bytes,
                    options.file_mode,
                )?;
                let file = storage
                    .open(&path, OpenMode::Existing, options.file_mode)
                    .map_err(|e| Error::io("open", &path, e))?;
                (Some(file), slot)
            }
        }
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let (first, next) = (engine.first_offset(), engine.next_offset());
    let position = slot.position.clamp(first, next.max(first));
    let clamped = (position != slot.position).then_some((slot.position, position));
    Ok(ConsumerState {
        name: name.to_owned(),
        path,
        file,
        inner: Mutex::new(Inner {
            generation: slot.generation,
            position,
            failed: None,
        }),
        clamped,
    })
}

/// The newest valid slot of a consumer file, and the file's bytes.
fn read_slot(file: &File, path: &std::path::Path) -> Result<(ConsumerSlot, Vec<u8>)> {
    let len = file.len().map_err(|e| Error::io("stat", path, e))?;
    let mut bytes = vec![0u8; len.min(format::CONSUMER_FILE_LEN as u64) as usize];
    file.read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read", path, e))?;
    let corrupt = |kind| Error::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        offset: None,
        kind,
    };
    let slot = format::decode_consumer(&bytes).map_err(|e| match e {
        ConsumerError::Magic => corrupt(CorruptionKind::BadMagic),
        ConsumerError::Version(found) => Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: format::FORMAT_VERSION,
        },
        ConsumerError::NoValidSlot => corrupt(CorruptionKind::HeaderChecksum),
    })?;
    Ok((slot, bytes))
}
