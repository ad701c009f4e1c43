//! The one asynchronous runtime every bridge of the process runs on: a
//! single thread, `backbone-nats`, started by the first bridge and kept
//! for the life of the process. NATS traffic is waiting, not computing,
//! so one thread carries every mirror and source; the log layer's
//! threads never run it, and the sync API never blocks on it (a handle
//! waits on its own condition variable, not in `block_on`, which would
//! panic inside a caller's own runtime).

use parking_lot::Mutex;
use std::future::Future;
use tokio::runtime::{Builder, Handle};

use crate::error::{Error, Result};

static RUNTIME: Mutex<Option<Handle>> = Mutex::new(None);

/// Spawns `task` on the bridges' runtime, starting the runtime if this is
/// the first bridge.
pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    handle()?.spawn(task);
    Ok(())
}

fn handle() -> Result<Handle> {
    let mut slot = RUNTIME.lock();
    if let Some(handle) = &*slot {
        return Ok(handle.clone());
    }
    let runtime = Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the NATS runtime", "", e))?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("backbone-nats".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .map_err(|e| Error::io("spawn thread backbone-nats", "", e))?;
    *slot = Some(handle.clone());
    Ok(handle)
}
