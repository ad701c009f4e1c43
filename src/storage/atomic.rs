//! The file operations that must not be left half done by a crash: a file
//! written whole through a temporary, synced and renamed into place with
//! the directory synced; and a removal that tolerates a file already gone.

use std::path::Path;

use super::{OpenMode, Storage};
use crate::error::{Error, Result};

/// Writes `bytes` to `path` atomically: into `tmp` (replacing any stale
/// one), synced, renamed over `path`, and the directory `dir` synced. A
/// crash leaves either the old file or the new one, never a mix.
pub(crate) fn write_atomically(
    storage: &Storage,
    dir: &Path,
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<()> {
    remove_if_exists(storage, tmp)?;
    let file = storage
        .open(tmp, OpenMode::CreateNew, mode)
        .map_err(|e| Error::io("create", tmp, e))?;
    file.write_at(bytes, 0)
        .map_err(|e| Error::io("write", tmp, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", tmp, e))?;
    storage
        .rename(tmp, path)
        .map_err(|e| Error::io("rename", tmp, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Removes `path`; whether it existed.
pub(crate) fn remove_if_exists(storage: &Storage, path: &Path) -> Result<bool> {
    match storage.remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}
