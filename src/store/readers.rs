//! Readers registered on this log (`{name}.reader`): who hands its records
//! on elsewhere, where their true positions live, and an advisory copy of
//! each position, written after each of their commits without a sync (it
//! may lag, never lead). Retention keeps what the lowest of them has not
//! passed, as it does for durable consumers; monitoring reads their lag.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::PathBuf;

use super::Store;
use crate::error::{Error, Result};
use crate::format::{self, ConsumerSlot, ReaderError, READER_EXT};
use crate::name;
use crate::storage::{remove_if_exists, write_atomically, File, OpenMode};

/// The reader files this handle writes, by name: the open file, the
/// location it names and the generation of its newest slot.
pub(crate) type ReaderFiles = HashMap<String, (File, String, u64)>;

/// One registered reader, as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReaderEntry {
    pub(crate) name: String,
    pub(crate) kind: u8,
    /// Where its true position lives (for a hand-off: the output log).
    pub(crate) location: String,
    /// Its advisory position; `None` if the file cannot be read (then
    /// retention keeps everything: what it needs is unknown).
    pub(crate) position: Option<u64>,
}

impl Store {
    fn reader_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.{READER_EXT}"))
    }

    /// Records that reader `name`, whose true position lives at
    /// `location`, has committed `position` on this log: creates its file
    /// the first time (durably), then rewrites the next slot in place.
    pub(crate) fn note_reader(&self, name: &str, location: &str, position: u64) -> Result<()> {
        self.note_reader_of_kind(format::READER_CHECKPOINT, name, location, position)
    }

    /// [`note_reader`](Store::note_reader) for a reader of `kind` (a
    /// `format::READER_*`).
    pub(crate) fn note_reader_of_kind(
        &self,
        kind: u8,
        name: &str,
        location: &str,
        position: u64,
    ) -> Result<()> {
        name::validate(name)?;
        let mut files = self.readers.lock();
        // The same location: only the next slot changes. Another (a job
        // that starts over into a new output): the file is written whole.
        if let Some((file, _, generation)) = files
            .get_mut(name)
            .filter(|(_, registered, _)| registered == location)
        {
            let slot = ConsumerSlot {
                generation: *generation + 1,
                position,
            };
            let at = format::consumer_slot_at(slot.generation) as u64;
            let path = self.reader_path(name);
            file.write_at(&format::encode_consumer_slot(&slot), at)
                .map_err(|e| Error::io("write", &path, e))?;
            *generation = slot.generation;
            return Ok(());
        }
        let path = self.reader_path(name);
        let storage = &self.options.storage;
        let generation = match self.read_reader(&path) {
            Ok(found) => found.slot.generation + 1,
            Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => 0,
            // A damaged file is replaced whole.
            Err(_) => 0,
        };
        let slot = ConsumerSlot {
            generation,
            position,
        };
        let bytes = format::encode_reader_file(kind, location, &slot);
        let tmp = path.with_extension(format!("{READER_EXT}.{}", format::TMP_EXT));
        write_atomically(
            storage,
            &self.dir,
            &path,
            &tmp,
            &bytes,
            self.options.file_mode,
        )?;
        let file = storage
            .open(&path, OpenMode::Existing, self.options.file_mode)
            .map_err(|e| Error::io("open", &path, e))?;
        files.insert(name.to_owned(), (file, location.to_owned(), generation));
        Ok(())
    }

    /// Makes the newest position noted for reader `name` by this handle
    /// durable (reader files are otherwise never synced); nothing if this
    /// handle noted none.
    #[cfg(feature = "nats")]
    pub(crate) fn sync_reader(&self, name: &str) -> Result<()> {
        let files = self.readers.lock();
        if let Some((file, _, _)) = files.get(name) {
            file.sync_data()
                .map_err(|e| Error::io("fsync", self.reader_path(name), e))?;
        }
        Ok(())
    }

    fn read_reader(&self, path: &std::path::Path) -> Result<format::ReaderFile> {
        let file = self
            .options
            .storage
            .open(path, OpenMode::ReadOnly, self.options.file_mode)
            .map_err(|e| Error::io("open", path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", path, e))?;
        // Header, slots, and a location of at most 64 KiB.
        let mut bytes = vec![0u8; len.min(1 << 17) as usize];
        file.read_at(&mut bytes, 0)
            .map_err(|e| Error::io("read", path, e))?;
        format::decode_reader_file(&bytes).map_err(|e| match e {
            ReaderError::Version(found) => Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: format::READER_VERSION,
            },
            ReaderError::Damaged => Error::Corrupt {
                path: path.to_path_buf(),
                position: 0,
                offset: None,
                kind: crate::error::CorruptionKind::BadHeader,
            },
        })
    }

    /// Every registered reader of the log, read from disk, sorted by name.
    pub(crate) fn reader_entries(&self) -> Result<Vec<ReaderEntry>> {
        let entries = self
            .options
            .storage
            .list(&self.dir)
            .map_err(|e| Error::io("list", &self.dir, e))?;
        let mut readers: Vec<ReaderEntry> = entries
            .iter()
            .filter_map(|e| {
                let file_name = e.name.to_str()?;
                let name = file_name.strip_suffix(READER_EXT)?.strip_suffix('.')?;
                name::validate(name).ok()?;
                let found = self.read_reader(&self.dir.join(file_name)).ok();
                Some(ReaderEntry {
                    name: name.to_owned(),
                    kind: found.as_ref().map_or(0, |f| f.kind),
                    location: found
                        .as_ref()
                        .map(|f| f.location.clone())
                        .unwrap_or_default(),
                    position: found.map(|f| f.slot.position),
                })
            })
            .collect();
        readers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(readers)
    }

    /// Removes reader `name`'s registration (it no longer holds back
    /// retention); whether there was one.
    pub(crate) fn remove_reader(&self, name: &str) -> Result<bool> {
        name::validate(name)?;
        self.readers.lock().remove(name);
        let path = self.reader_path(name);
        let removed = remove_if_exists(&self.options.storage, &path)?;
        if removed {
            self.options
                .storage
                .sync_dir(&self.dir)
                .map_err(|e| Error::io("fsync directory", &self.dir, e))?;
        }
        Ok(removed)
    }
}
