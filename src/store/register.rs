//! Durable registers: named positions in a log, one small file each,
//! `{name}.consumer`, committed crash-safely. Consumers are built on them
//! in [`crate::log`]; the store knows only names and positions.
//!
//! A register file has two slots that commits fill in turn, each with a
//! generation number and a CRC. A commit writes the slot the previous
//! commit did not use and syncs it, so a crash mid-commit leaves the
//! previous position intact in the other slot; no rename or directory sync
//! is needed once the file exists.
//!
//! Whoever holds a register holds an exclusive lock on its file, so that a
//! consumer has one owner across processes too (a follower in another
//! process may own one: it commits only positions it has read, which its
//! writer has made durable). The file is therefore never replaced: a new
//! one is created empty by the lock and its 64 bytes written in place: its
//! slots, synced, then its header, synced, with the directory. A file
//! whose header is not whole (empty, zeros, or the start of a header and
//! zeros) is a register whose creation did not finish, read as absent.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::Store;
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{self, ConsumerError, ConsumerSlot};
use crate::name;
use crate::record::Start;
use crate::storage::{DirLock, File, OpenMode};

/// One open register.
#[derive(Debug)]
pub(crate) struct Register {
    name: String,
    path: PathBuf,
    file: File,
    /// The lock on the file: held as long as the register is, or until
    /// its log shuts down (a consumer outliving its log must not keep the
    /// name from the log's next open).
    lock: HeldLock,
    inner: Mutex<Inner>,
    /// The stored position and what it was clamped to, if it was outside
    /// the log when opened.
    clamped: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Inner {
    generation: u64,
    position: u64,
    /// A failed sync of this file: later commits are refused, as for the log.
    failed: Option<Arc<std::io::Error>>,
}

/// A register's lock, which its store can release at shutdown.
pub(crate) type HeldLock = Arc<Mutex<Option<DirLock>>>;

/// A register as stored on disk, for listings.
#[derive(Debug)]
pub(crate) struct RegisterEntry {
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    /// The committed position and the commit's generation, or the error
    /// reading the file met.
    pub(crate) slot: Result<(u64, u64)>,
}

impl Store {
    /// Opens the register `name` and takes its lock, creating it at
    /// `initial` (checked with [`Store::resolve`]) if it does not exist. A
    /// stored position outside the log is clamped into it, and says so.
    pub(crate) fn open_register(&self, name: &str, initial: Start) -> Result<Register> {
        name::validate(name)?;
        let options = &self.options;
        let storage = &options.storage;
        let path = self.register_path(name);
        let lock = self.lock_register(name, &path)?;
        let file = storage
            .open(&path, OpenMode::Existing, options.file_mode)
            .map_err(|e| Error::io("open", &path, e))?;
        let slot = match read_slot(&file, &path)? {
            Some((slot, bytes)) => {
                // The slot may come from the page cache of a commit whose
                // fdatasync failed ("fsyncgate"): writing it again and
                // syncing makes the position reported true on disk.
                file.write_at(&bytes, 0)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| Error::io("rewrite", &path, e))?;
                slot
            }
            None => {
                let created = self.resolve(initial).and_then(|position| {
                    let slot = ConsumerSlot {
                        generation: 0,
                        position,
                    };
                    // A stored position never points past records a power
                    // loss could take, from its first commit on.
                    self.durable_below(position)?;
                    self.init_register(&file, &path, &slot)?;
                    Ok(slot)
                });
                match created {
                    Ok(slot) => slot,
                    Err(e) => {
                        // Leave no empty file behind (it would read as
                        // absent anyway).
                        let _ = storage.remove(&path);
                        return Err(e);
                    }
                }
            }
        };
        // Past the end (a power loss took records a damaged disk had
        // acknowledged) it is clamped and says so. Below the first offset
        // it stays: retention forced out records it had not passed, and
        // its reads say so (`OffsetTruncated`) until it is moved on.
        let (first, next) = (self.first_offset(), self.next_offset());
        let position = slot.position.min(next.max(first));
        let clamped = (position != slot.position).then_some((slot.position, position));
        let lock: HeldLock = Arc::new(Mutex::new(Some(lock)));
        {
            let mut held = self.register_locks.lock();
            held.retain(|weak| weak.strong_count() > 0);
            held.push(Arc::downgrade(&lock));
        }
        Ok(Register {
            name: name.to_owned(),
            path,
            file,
            lock,
            inner: Mutex::new(Inner {
                generation: slot.generation,
                position,
                failed: None,
            }),
            clamped,
        })
    }

    /// Takes the exclusive lock on register `name`'s file (creating the
    /// file, empty, if there is none).
    fn lock_register(&self, name: &str, path: &Path) -> Result<DirLock> {
        self.options
            .storage
            .try_lock(path, self.options.file_mode)
            .map_err(|e| Error::io("lock", path, e))?
            .map_err(|_| Error::ConsumerLocked {
                name: name.to_owned(),
                path: self.dir.clone(),
            })
    }

    /// Writes a new register's 64 bytes in place into its (locked, empty)
    /// file and makes them and its name durable.
    fn init_register(&self, file: &File, path: &Path, slot: &ConsumerSlot) -> Result<()> {
        // The slots first, then the header, each synced: until the header
        // is whole the file reads as a creation that did not finish,
        // however a crash tore the writes.
        let mut slots = vec![0u8; format::CONSUMER_FILE_LEN - format::CONSUMER_HEADER_LEN];
        let at = format::consumer_slot_at(slot.generation) - format::CONSUMER_HEADER_LEN;
        slots[at..at + format::CONSUMER_SLOT_LEN]
            .copy_from_slice(&format::encode_consumer_slot(slot));
        file.write_at(&slots, format::CONSUMER_HEADER_LEN as u64)
            .and_then(|()| file.sync_data())
            .and_then(|()| file.write_at(&format::encode_consumer_header(), 0))
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("write", path, e))?;
        self.options
            .storage
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync directory", &self.dir, e))
    }

    /// Removes the register `name`'s file (whoever holds it must have let
    /// go). Whether there was one.
    pub(crate) fn remove_register(&self, name: &str) -> Result<bool> {
        name::validate(name)?;
        if self.writer.is_none() {
            return Err(Error::ReadOnly {
                path: self.dir.clone(),
            });
        }
        let storage = &self.options.storage;
        let path = self.register_path(name);
        match storage.open(&path, OpenMode::ReadOnly, self.options.file_mode) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("open", &path, e)),
        }
        // Not from under another process's holder.
        let _lock = self.lock_register(name, &path)?;
        // (Held until the file is gone.)
        match storage.remove(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io("remove", &path, e)),
        }
        storage
            .sync_dir(&self.dir)
            .map_err(|e| Error::io("fsync", &self.dir, e))?;
        Ok(true)
    }

    fn register_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{}", format::CONSUMER_EXT))
    }

    /// Every register file of the log, read without opening any for
    /// writing, sorted by name.
    pub(crate) fn registers(&self) -> Result<Vec<RegisterEntry>> {
        let options = &self.options;
        let entries = options
            .storage
            .list(&self.dir)
            .map_err(|e| Error::io("list", &self.dir, e))?;
        let mut registers: Vec<RegisterEntry> = entries
            .iter()
            .filter_map(|e| {
                let name = e.name.to_str()?;
                let name = name.strip_suffix(format::CONSUMER_EXT)?.strip_suffix('.')?;
                name::validate(name).ok()?;
                let path = self.dir.join(e.name.clone());
                let slot = options
                    .storage
                    .open(&path, OpenMode::ReadOnly, options.file_mode)
                    .map_err(|e| Error::io("open", &path, e))
                    .and_then(|file| read_slot(&file, &path));
                let slot = match slot {
                    // A creation that did not finish: no register yet.
                    Ok(None) => return None,
                    Ok(Some((slot, _))) => Ok((slot.position, slot.generation)),
                    Err(e) => Err(e),
                };
                Some(RegisterEntry {
                    name: name.to_owned(),
                    path,
                    slot,
                })
            })
            .collect();
        registers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(registers)
    }
}

impl Register {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The committed position.
    pub(crate) fn position(&self) -> u64 {
        self.inner.lock().position
    }

    /// If the stored position was outside the log when opened, the stored
    /// value and the value it was clamped to.
    pub(crate) fn clamped(&self) -> Option<(u64, u64)> {
        self.clamped
    }

    /// Stores `position` durably: when this returns, a crash or power loss
    /// keeps it. Records of `store` below `position` are synced first, so a
    /// stored position never points past records that a power loss could
    /// take. A position below the committed one is refused unless
    /// `backwards` allows it; the committed position itself is a no-op.
    pub(crate) fn commit(&self, store: &Store, position: u64, backwards: bool) -> Result<()> {
        if store.is_shut_down() {
            return Err(Error::Closed);
        }
        let file = &self.file;
        if self.lock.lock().is_none() {
            return Err(Error::Closed);
        }
        let current = self.position();
        if position < current && !backwards {
            return Err(Error::CommitBehind {
                name: self.name.clone(),
                position: current,
                requested: position,
            });
        }
        if position != current {
            let first = store.first_offset();
            if position < first {
                return Err(Error::OffsetTruncated {
                    requested: position,
                    first,
                });
            }
            let next = store.next_offset();
            if position > next {
                return Err(Error::OffsetOutOfRange {
                    requested: position,
                    next,
                });
            }
        }
        // (A follower's records are all durable already.)
        store.durable_below(position)?;
        if position == current {
            return Ok(());
        }
        let mut inner = self.inner.lock();
        if let Some(source) = &inner.failed {
            return Err(Error::Poisoned {
                op: "fdatasync",
                path: self.path.clone(),
                source: source.clone(),
            });
        }
        // Again under the lock: a clone's commit may have gone first.
        if position < inner.position && !backwards {
            return Err(Error::CommitBehind {
                name: self.name.clone(),
                position: inner.position,
                requested: position,
            });
        }
        let generation = inner.generation + 1;
        let slot = format::encode_consumer_slot(&ConsumerSlot {
            generation,
            position,
        });
        file.write_at(&slot, format::consumer_slot_at(generation) as u64)
            .map_err(|e| Error::io("write", &self.path, e))?;
        if let Err(e) = file.sync_data() {
            let source = Arc::new(e);
            inner.failed = Some(source.clone());
            return Err(Error::Poisoned {
                op: "fdatasync",
                path: self.path.clone(),
                source,
            });
        }
        inner.generation = generation;
        inner.position = position;
        Ok(())
    }
}

/// The newest valid slot of a register file, and the file's bytes; `None`
/// for an empty or all-zero file (a creation that did not finish).
fn read_slot(file: &File, path: &Path) -> Result<Option<(ConsumerSlot, Vec<u8>)>> {
    let len = file.len().map_err(|e| Error::io("stat", path, e))?;
    let mut bytes = vec![0u8; len.min(format::CONSUMER_FILE_LEN as u64) as usize];
    file.read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read", path, e))?;
    // Its header is written last, once its slots are durable: a header
    // that is not there whole (zeros, or the start of one and zeros) is a
    // creation that did not finish, whatever its slots hold.
    let header = format::encode_consumer_header();
    let head = &bytes[..bytes.len().min(format::CONSUMER_HEADER_LEN)];
    let whole = head.len() == header.len() && head == header;
    let torn = head
        .iter()
        .zip(header)
        .position(|(found, want)| *found != want)
        .is_some_and(|cut| head[cut..].iter().all(|&b| b == 0));
    if !whole && (torn || head.len() < header.len() && head == &header[..head.len()]) {
        return Ok(None);
    }
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
            supported: format::CONSUMER_VERSION,
        },
        ConsumerError::NoValidSlot => corrupt(CorruptionKind::HeaderChecksum),
    })?;
    Ok(Some((slot, bytes)))
}
