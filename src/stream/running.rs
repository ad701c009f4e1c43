//! The names of the jobs and tables running in this process: two drivers
//! of one name committing into one place must not race on one checkpoint,
//! so the second start is refused ([`Error::JobRunning`]) instead.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::error::{Error, Result};

/// Where each running driver commits, and under which name.
static RUNNING: Mutex<BTreeSet<(PathBuf, String)>> = Mutex::new(BTreeSet::new());

/// A driver's hold on its name where it commits, released when dropped.
#[derive(Debug)]
pub(super) struct Claim((PathBuf, String));

impl Claim {
    /// Takes `name` at `path`, or says it is taken.
    pub(super) fn take(name: &str, path: &Path) -> Result<Claim> {
        let key = (path.to_path_buf(), name.to_owned());
        let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
        if !running.insert(key.clone()) {
            return Err(Error::JobRunning {
                name: name.to_owned(),
                path: key.0,
            });
        }
        Ok(Claim(key))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}
