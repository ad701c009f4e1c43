//! Spare segment files, written ahead of the roll that needs them.
//!
//! An `fdatasync` after an append into a sparse file must also persist the
//! file system's allocation of the blocks the append touched (ext4 journals
//! the extent change with it), which costs durable appends about half their
//! rate. So while the active segment fills, this module fills a spare file
//! of segment size with zeros and syncs it, on the process's shared
//! background threads (the long-job lane of [`super::background`]); the roll
//! then writes the new segment's header into the spare, syncs it and
//! renames it into place, and every later sync in that segment persists
//! data only. A spare holds only zeros, which is what the unwritten part of
//! a sparse segment reads as, so the on-disk format is the same either way.
//! A spare left behind by a crash is a `.tmp` file, which recovery removes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::background::{self, Lane};
use crate::format;
use crate::storage::{File, OpenMode, Storage};

/// Zeros are written in pieces of this size, so that closing the log stops
/// a preparation in flight within one write.
const CHUNK: u64 = 1 << 20;

/// The spare file of one log directory and its preparation.
#[derive(Debug)]
pub(crate) struct Spares {
    path: PathBuf,
    storage: Storage,
    capacity: u64,
    file_mode: u32,
    state: Mutex<State>,
    /// Notified when a preparation ends.
    prepared: Condvar,
    cancel: AtomicBool,
}

#[derive(Debug)]
enum State {
    Idle,
    /// Waiting for a background thread: nothing written yet.
    Queued,
    Preparing,
    Ready(File),
    /// A preparation failed (a full disk, say): the log goes on with sparse
    /// segments rather than spend more space or I/O on spares.
    Disabled,
}

impl Spares {
    pub(crate) fn new(storage: &Storage, dir: &Path, capacity: u64, file_mode: u32) -> Spares {
        Spares {
            path: dir.join(format!("{}.{}", format::SPARE_FILE, format::TMP_EXT)),
            storage: storage.clone(),
            capacity,
            file_mode,
            state: Mutex::new(State::Idle),
            prepared: Condvar::new(),
            cancel: AtomicBool::new(false),
        }
    }

    /// The path the spare has until a roll renames it.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Starts preparing a spare unless one is ready or on its way. On real
    /// storage the work runs on the shared background threads; on the
    /// simulator it runs here, so that a simulated run stays a
    /// deterministic sequence of storage operations.
    pub(crate) fn request(self: &Arc<Self>) {
        {
            let mut state = self.state.lock();
            if !matches!(*state, State::Idle) || self.cancel.load(Ordering::Acquire) {
                return;
            }
            *state = State::Queued;
        }
        if self.storage.is_simulated() {
            self.run();
            return;
        }
        let spares = self.clone();
        background::run(Lane::Long, Box::new(move || spares.run()));
    }

    /// The preparation job: does nothing unless it is still wanted, which
    /// [`shutdown`](Spares::shutdown) decides under the same lock, so that
    /// no job touches the directory once its log has let go of it (a new
    /// handle of the same log may be preparing its own spare there).
    fn run(&self) {
        {
            let mut state = self.state.lock();
            if !matches!(*state, State::Queued) || self.cancel.load(Ordering::Acquire) {
                return;
            }
            *state = State::Preparing;
        }
        let result = self.prepare();
        self.finish(result);
    }

    /// The ready spare, if there is one; the roll does not wait for one in
    /// preparation (it creates a sparse segment instead).
    pub(crate) fn take(&self) -> Option<File> {
        let mut state = self.state.lock();
        match std::mem::replace(&mut *state, State::Idle) {
            State::Ready(file) => Some(file),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Stops a preparation in flight, waits for it to end and removes the
    /// spare file: nothing of the log is in it. A preparation still queued
    /// behind other logs' work is not waited for: it will do nothing.
    pub(crate) fn shutdown(&self) {
        self.cancel.store(true, Ordering::Release);
        let mut state = self.state.lock();
        while matches!(*state, State::Preparing) {
            self.prepared.wait(&mut state);
        }
        let state = std::mem::replace(&mut *state, State::Disabled);
        if let State::Ready(file) = state {
            drop(file);
            // Best effort: a spare left behind is removed by the next open.
            let _ = self.storage.remove(&self.path);
        }
    }

    fn prepare(&self) -> io::Result<File> {
        match self.storage.remove(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let file = self
            .storage
            .open(&self.path, OpenMode::CreateNew, self.file_mode)?;
        let mut at = 0;
        while at < self.capacity {
            if self.cancel.load(Ordering::Acquire) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "log closing"));
            }
            let len = (self.capacity - at).min(CHUNK);
            file.write_zeros(at, len)?;
            at += len;
        }
        file.sync_data()?;
        Ok(file)
    }

    fn finish(&self, result: io::Result<File>) {
        let mut state = self.state.lock();
        match result {
            Ok(file) if !self.cancel.load(Ordering::Acquire) => *state = State::Ready(file),
            // Closing, or failed: a preparation that failed removes what it
            // wrote, so a full disk is not made fuller by it.
            _ => {
                *state = State::Disabled;
                // Removed before the state is visible as no longer
                // preparing, so a shutdown waiting for it finds it gone.
                let _ = self.storage.remove(&self.path);
            }
        }
        self.prepared.notify_all();
    }
}
