//! The storage seam: every byte the log reads or writes, every file it creates,
//! renames, removes, syncs, locks or maps goes through this module.
//!
//! It owns the choice of backend and the few file operations that must be
//! atomic ([`write_atomically`]); framing, batching and the durability
//! protocol live above it, so one group commit is one `write_at` and the seam
//! adds no copies. Two backends exist: [`os`] (real files,
//! `pwrite`, `fdatasync`, `flock`, read-only `mmap`) and, for tests only, the
//! fault-injecting simulator in `sim`, which models what a crash or power
//! loss leaves on disk. Dispatch is a `match` over an enum; without the `sim`
//! feature the enum has one variant and the match compiles away.

mod atomic;
pub(crate) mod os;
#[cfg(any(test, fuzzing, backbone_sim))]
pub mod sim;

pub(crate) use atomic::{remove_if_exists, write_atomically};

use std::ffi::OsString;
use std::io;
use std::ops::Deref;
use std::path::Path;

/// The zeros [`File::write_zeros`] writes at a time. Linux gives a buffered
/// write page-cache folios as large as the write, and ext4 (with large
/// folios, as on Linux 6.18) walks every block of a folio on each later
/// write into it: a 60-byte `pwrite` into zeros written 1 MiB at a time
/// took 1.2 µs on the README's machine, into zeros written 16 KiB at a
/// time 0.31 µs, as into a sparse file. Segments are zero-filled ahead of
/// the records that single appends then write a few dozen bytes at a time.
/// (Filling 64 MiB this way took 46–48 ms there, against 40–42 ms in 1 MiB
/// writes and 69–71 ms in 4 KiB ones.)
static ZERO_WRITE: [u8; 16 << 10] = [0; 16 << 10];

/// How [`Storage::open`] opens a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// Create a new file for reading and writing; fail if it exists.
    CreateNew,
    /// Open an existing file for reading and writing.
    Existing,
    /// Open an existing file for reading only.
    ReadOnly,
}

/// One entry of a directory listing: a regular file and its length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DirEntry {
    pub(crate) name: OsString,
    pub(crate) len: u64,
}

/// The storage backend a log runs on.
#[derive(Clone, Debug)]
pub(crate) enum Storage {
    Os(os::OsStorage),
    #[cfg(any(test, fuzzing, backbone_sim))]
    Sim(sim::SimStorage),
}

/// An open file of some backend.
#[derive(Debug)]
pub(crate) enum File {
    Os(os::OsFile),
    #[cfg(any(test, fuzzing, backbone_sim))]
    Sim(sim::SimFile),
}

/// A read-only view of a file's first `len` bytes, kept coherent with later
/// `write_at` calls on the same file (the page cache is unified on Linux;
/// the simulator reads its live image).
#[derive(Debug)]
pub(crate) enum Map {
    Os(os::OsMap),
    #[cfg(any(test, fuzzing, backbone_sim))]
    Sim(sim::SimMap),
}

/// A held exclusive lock on a log directory; released on drop.
#[derive(Debug)]
pub(crate) enum DirLock {
    // Held for its `Drop`, which releases the lock.
    Os(#[allow(dead_code)] os::OsLock),
    #[cfg(any(test, fuzzing, backbone_sim))]
    Sim(#[allow(dead_code)] sim::SimLock),
}

/// Who holds a lock that [`Storage::try_lock`] could not take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LockHolder {
    /// This process (another open of the same log).
    ThisProcess,
    OtherProcess,
}

/// Borrowed bytes of a [`Map`].
pub(crate) enum MapRef<'a> {
    Os(&'a [u8]),
    #[cfg(any(test, fuzzing, backbone_sim))]
    Sim(parking_lot::MappedRwLockReadGuard<'a, [u8]>),
}

impl MapRef<'_> {
    /// Ends the borrow now. With the simulator the borrow holds a lock on
    /// the file, which a write to the same file would wait for.
    #[inline]
    pub(crate) fn release(self) {}
}

impl Deref for MapRef<'_> {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            MapRef::Os(bytes) => bytes,
            #[cfg(any(test, fuzzing, backbone_sim))]
            MapRef::Sim(guard) => guard,
        }
    }
}

macro_rules! dispatch {
    ($value:expr, $enum:ident, $inner:ident => $body:expr) => {
        match $value {
            $enum::Os($inner) => $body,
            #[cfg(any(test, fuzzing, backbone_sim))]
            $enum::Sim($inner) => $body,
        }
    };
}

impl Storage {
    pub(crate) fn os() -> Storage {
        Storage::Os(os::OsStorage)
    }

    /// Whether this is the crash simulator, whose runs must stay one
    /// deterministic sequence of storage operations (no background I/O).
    pub(crate) fn is_simulated(&self) -> bool {
        !matches!(self, Storage::Os(_))
    }

    /// Opens `path`; new files get the Unix permission bits `mode`.
    pub(crate) fn open(&self, path: &Path, open: OpenMode, mode: u32) -> io::Result<File> {
        match self {
            Storage::Os(s) => s.open(path, open, mode).map(File::Os),
            #[cfg(any(test, fuzzing, backbone_sim))]
            Storage::Sim(s) => s.open(path, open).map(File::Sim),
        }
    }

    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        dispatch!(self, Storage, s => s.remove(path))
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        dispatch!(self, Storage, s => s.rename(from, to))
    }

    /// The regular files in `dir`, unsorted.
    pub(crate) fn list(&self, dir: &Path) -> io::Result<Vec<DirEntry>> {
        let entries = dispatch!(self, Storage, s => s.list(dir))?;
        Ok(entries
            .into_iter()
            .map(|(name, len)| DirEntry { name, len })
            .collect())
    }

    pub(crate) fn create_dir_all(&self, dir: &Path, mode: u32) -> io::Result<()> {
        match self {
            Storage::Os(s) => s.create_dir_all(dir, mode),
            #[cfg(any(test, fuzzing, backbone_sim))]
            Storage::Sim(s) => s.create_dir_all(dir),
        }
    }

    /// Makes the directory's entries (creates, renames, removes) durable.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        dispatch!(self, Storage, s => s.sync_dir(dir))
    }

    /// Takes the exclusive lock file `path` without blocking; when it is
    /// held, says by whom (the simulator is one process).
    pub(crate) fn try_lock(
        &self,
        path: &Path,
        mode: u32,
    ) -> io::Result<Result<DirLock, LockHolder>> {
        match self {
            Storage::Os(s) => Ok(s.try_lock(path, mode)?.map(DirLock::Os)),
            #[cfg(any(test, fuzzing, backbone_sim))]
            Storage::Sim(s) => Ok(s
                .try_lock(path)?
                .map(DirLock::Sim)
                .ok_or(LockHolder::ThisProcess)),
        }
    }
}

impl File {
    pub(crate) fn len(&self) -> io::Result<u64> {
        dispatch!(self, File, f => f.len())
    }

    /// The bytes the file system has allocated to the file, if the backend
    /// can tell (`st_blocks` on Unix): holes take none, and read as zeros.
    pub(crate) fn allocated_len(&self) -> Option<u64> {
        match self {
            File::Os(f) => f.allocated_len(),
            // The simulator stores holes as zeros: it cannot tell.
            #[cfg(any(test, fuzzing, backbone_sim))]
            File::Sim(_) => None,
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`, or fails.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        dispatch!(self, File, f => f.read_at(buf, offset))
    }

    /// Writes all of `buf` at `offset` (retrying short writes and `EINTR`).
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        dispatch!(self, File, f => f.write_at(buf, offset))
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        dispatch!(self, File, f => f.set_len(len))
    }

    /// Writes `len` zero bytes at `offset`: on real files in page-cache
    /// friendly pieces of [`ZERO_WRITE`] bytes, on the simulator in one
    /// write (one operation, as the callers' chunks always were).
    pub(crate) fn write_zeros(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            File::Os(f) => {
                let mut at = offset;
                let end = offset + len;
                while at < end {
                    let piece = (end - at).min(ZERO_WRITE.len() as u64) as usize;
                    f.write_at(&ZERO_WRITE[..piece], at)?;
                    at += piece as u64;
                }
                Ok(())
            }
            #[cfg(any(test, fuzzing, backbone_sim))]
            File::Sim(f) => f.write_at(&vec![0; len as usize], offset),
        }
    }

    /// `fdatasync`: the file's data, and the metadata needed to read it back.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        dispatch!(self, File, f => f.sync_data())
    }

    /// Starts writing `len` bytes from `offset` to disk without waiting: a
    /// hint that makes nothing durable, so that a later `sync_data` has
    /// little left to write. The simulator records it and changes nothing:
    /// a crash keeps what it would have kept without the hint.
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            File::Os(f) => f.start_writeback(offset, len),
            #[cfg(any(test, fuzzing, backbone_sim))]
            File::Sim(f) => {
                f.start_writeback(offset, len);
                Ok(())
            }
        }
    }

    /// Maps the first `len` bytes read-only. `len` must not exceed the file's
    /// length, and the file must not shrink below `len` while the map lives.
    pub(crate) fn map(&self, len: u64) -> io::Result<Map> {
        match self {
            File::Os(f) => f.map(len).map(Map::Os),
            #[cfg(any(test, fuzzing, backbone_sim))]
            File::Sim(f) => f.map(len).map(Map::Sim),
        }
    }
}

impl Map {
    #[inline]
    pub(crate) fn bytes(&self) -> MapRef<'_> {
        match self {
            Map::Os(m) => MapRef::Os(m.bytes()),
            #[cfg(any(test, fuzzing, backbone_sim))]
            Map::Sim(m) => MapRef::Sim(m.bytes()),
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> u64 {
        dispatch!(self, Map, m => m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeros land on exactly `offset..offset + len`, in pieces or not, and
    /// a fill past the end grows the file.
    #[test]
    fn write_zeros_covers_its_range_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let sim = sim::SimStorage::new();
        sim.create_dir_all(Path::new("/d")).unwrap();
        let files = [
            Storage::os()
                .open(&dir.path().join("f"), OpenMode::CreateNew, 0o644)
                .unwrap(),
            File::Sim(sim.open(Path::new("/d/f"), OpenMode::CreateNew).unwrap()),
        ];
        for file in files {
            let ones = vec![1u8; 100_000];
            file.write_at(&ones, 0).unwrap();
            // Three whole pieces and a part of one, from an odd offset.
            let (offset, len) = (1_001, 3 * ZERO_WRITE.len() as u64 + 77);
            file.write_zeros(offset, len).unwrap();
            file.write_zeros(99_990, 20).unwrap();
            assert_eq!(file.len().unwrap(), 100_010);
            let mut back = vec![9u8; 100_010];
            file.read_at(&mut back, 0).unwrap();
            let end = (offset + len) as usize;
            assert!(back[..1_001].iter().all(|&b| b == 1));
            assert!(back[1_001..end].iter().all(|&b| b == 0));
            assert!(back[end..99_990].iter().all(|&b| b == 1));
            assert!(back[99_990..].iter().all(|&b| b == 0));
        }
    }
}
