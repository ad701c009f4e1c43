//! The real backend: files on the local filesystem through `std::fs`,
//! positional I/O (`pread`/`pwrite`), `fdatasync`, `flock` through
//! `File::try_lock`, and read-only shared memory maps from `memmap2`.
//!
//! This is the only module of the crate that touches the filesystem, and it
//! holds the crate's `unsafe` blocks that do (the map, and on Linux the
//! writeback hint's `sync_file_range`), two of the three places where the
//! crate-wide `deny(unsafe_code)` is lifted (the third is the append clock).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{LockHolder, OpenMode};

/// Real files on the local filesystem.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct OsStorage;

/// An open regular file.
#[derive(Debug)]
pub(crate) struct OsFile {
    file: fs::File,
}

/// A read-only shared map of a file's first bytes.
#[derive(Debug)]
pub(crate) enum OsMap {
    /// `mmap` refuses zero-length maps.
    Empty,
    Mapped(memmap2::Mmap),
}

impl OsStorage {
    pub(crate) fn open(&self, path: &Path, open: OpenMode, mode: u32) -> io::Result<OsFile> {
        let mut options = fs::OpenOptions::new();
        match open {
            OpenMode::CreateNew => options.read(true).write(true).create_new(true),
            OpenMode::Existing => options.read(true).write(true),
            OpenMode::ReadOnly => options.read(true),
        };
        set_mode(&mut options, mode);
        Ok(OsFile {
            file: options.open(path)?,
        })
    }

    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    pub(crate) fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, u64)>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                // Removed between readdir and stat (retention in a writer
                // process, seen from a read-only follower).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if meta.is_file() {
                out.push((entry.file_name(), meta.len()));
            }
        }
        Ok(out)
    }

    pub(crate) fn create_dir_all(&self, dir: &Path, mode: u32) -> io::Result<()> {
        let mut builder = fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            // Directories need the search bit wherever the files are readable.
            builder.mode(mode | ((mode & 0o444) >> 2));
        }
        #[cfg(not(unix))]
        let _ = mode;
        builder.create(dir)
    }

    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        #[cfg(unix)]
        {
            fs::File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            // Windows cannot open a directory as a file; NTFS journals
            // directory entries itself.
            let _ = dir;
            Ok(())
        }
    }

    pub(crate) fn try_lock(
        &self,
        path: &Path,
        mode: u32,
    ) -> io::Result<Result<OsLock, LockHolder>> {
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        set_mode(&mut options, mode);
        let file = options.open(path)?;
        // The lock file exists now, so it has a canonical path: the key of
        // this process's own locks.
        let key = fs::canonicalize(path)?;
        let mut held = HELD.lock();
        if held.contains(&key) {
            return Ok(Err(LockHolder::ThisProcess));
        }
        match file.try_lock() {
            Ok(()) => {
                held.insert(key.clone());
                Ok(Ok(OsLock { _file: file, key }))
            }
            Err(fs::TryLockError::WouldBlock) => Ok(Err(LockHolder::OtherProcess)),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// The lock files this process holds, by canonical path: `flock` alone
/// says only that a lock is held, and a second open of a log in the
/// process that has it open deserves its own message.
static HELD: parking_lot::Mutex<BTreeSet<PathBuf>> = parking_lot::Mutex::new(BTreeSet::new());

/// A held `flock` on a lock file; released (and forgotten) on drop.
#[derive(Debug)]
pub(crate) struct OsLock {
    // Held for its `Drop`, which releases the lock.
    _file: fs::File,
    key: PathBuf,
}

impl Drop for OsLock {
    fn drop(&mut self) {
        HELD.lock().remove(&self.key);
    }
}

#[cfg(unix)]
fn set_mode(options: &mut fs::OpenOptions, mode: u32) {
    use std::os::unix::fs::OpenOptionsExt;
    options.mode(mode);
}

#[cfg(not(unix))]
fn set_mode(_options: &mut fs::OpenOptions, _mode: u32) {}

impl OsFile {
    pub(crate) fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    pub(crate) fn allocated_len(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            // `st_blocks` counts 512-byte units, whatever the block size.
            self.file.metadata().ok().map(|m| m.blocks() * 512)
        }
        #[cfg(not(unix))]
        {
            None
        }
    }

    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.read_exact_at(buf, offset)
        }
        #[cfg(windows)]
        {
            use std::os::windows::fs::FileExt;
            let mut done = 0;
            while done < buf.len() {
                match self.file.seek_read(&mut buf[done..], offset + done as u64) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileExt;
            self.file.write_all_at(buf, offset)
        }
        #[cfg(windows)]
        {
            use std::os::windows::fs::FileExt;
            let mut done = 0;
            while done < buf.len() {
                match self.file.seek_write(&buf[done..], offset + done as u64) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }

    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux: starts writing the
    /// range's dirty pages to disk and returns without waiting. A hint: it
    /// makes nothing durable (no metadata, no device cache flush), and a
    /// write error it starts is still reported by the next `fdatasync`
    /// (only a call that waits checks the file's error state). Elsewhere it
    /// does nothing.
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use std::os::fd::AsRawFd;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
                return Err(io::ErrorKind::InvalidInput.into());
            };
            // SAFETY: the descriptor is this file's own, open for the whole
            // call (`self.file` is borrowed); the call reads and writes no
            // memory of ours.
            #[allow(unsafe_code)]
            let rc = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset,
                    len,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = (offset, len);
        Ok(())
    }

    pub(crate) fn map(&self, len: u64) -> io::Result<OsMap> {
        if len == 0 {
            return Ok(OsMap::Empty);
        }
        let len = usize::try_from(len)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "map larger than memory"))?;
        // SAFETY: memmap2 requires that the mapped file is not truncated or
        // modified by others while the map lives, or reads may see changing
        // bytes or fault (SIGBUS). 1. The map is read-only, so no Rust
        // reference we create is ever written through by us. 2. Every file
        // we map belongs to a log directory that this process holds the
        // write lock of, or that a read-only handle follows; this crate only
        // appends to mapped files (pwrite past the published end, which
        // readers never read) and never shrinks a file while it is mapped
        // (recovery truncates before mapping; retention unlinks, which keeps
        // the pages alive). 3. Bytes read through the map are treated as
        // untrusted input: bounds-checked, length-checked and CRC-validated
        // before use. Modifying a log's files from outside while it is open
        // is documented as unsupported.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::MmapOptions::new().len(len).map(&self.file)? };
        Ok(OsMap::Mapped(map))
    }
}

impl OsMap {
    #[inline]
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            OsMap::Empty => &[],
            OsMap::Mapped(map) => map,
        }
    }

    #[inline]
    pub(crate) fn len(&self) -> u64 {
        self.bytes().len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writeback_hint_changes_no_byte_and_refuses_a_range_past_i64() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let file = OsStorage.open(&path, OpenMode::CreateNew, 0o644).unwrap();
        let bytes: Vec<u8> = (0..3 * 4096 + 100).map(|i| (i % 251) as u8).collect();
        file.write_at(&bytes, 0).unwrap();
        file.start_writeback(0, 2 * 4096).unwrap();
        // A stretch past the end is no error (Linux writes what exists).
        file.start_writeback(4096, 1 << 20).unwrap();
        let mut back = vec![0; bytes.len()];
        file.read_at(&mut back, 0).unwrap();
        assert_eq!(back, bytes);
        assert_eq!(file.len().unwrap(), bytes.len() as u64);
        let err = file.start_writeback(u64::MAX, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
