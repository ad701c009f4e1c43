//! The synchronization primitives of the code that loom checks: the writer's
//! group commit and the notifier. Under `cfg(loom)` they are loom's models,
//! otherwise the standard library's, behind one small API, so the models
//! in `src/store/loom_tests.rs` run the code that ships rather than a copy
//! of it.
//!
//! The API is the standard library's with two conveniences: a lock that
//! ignores poisoning (a panic while holding one of these locks leaves the
//! protected state consistent: the writer restores its buffer before it
//! resumes a panic), and [`MutexGuard::unlocked`], which releases a lock for
//! the length of a closure, as the writer does around its I/O.

use std::ops::{Deref, DerefMut};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(loom)]
use loom::sync as imp;
#[cfg(not(loom))]
use std::sync as imp;

/// Gives way to other threads (loom explores the interleavings).
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// A mutual-exclusion lock.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T> {
    inner: imp::Mutex<T>,
}

/// The guard of a locked [`Mutex`].
pub(crate) struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
    /// `None` only inside [`MutexGuard::unlocked`] and [`Condvar::wait`].
    guard: Option<imp::MutexGuard<'a, T>>,
}

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Mutex<T> {
        Mutex {
            inner: imp::Mutex::new(value),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        MutexGuard {
            lock: self,
            guard: Some(lock(&self.inner)),
        }
    }
}

fn lock<T>(inner: &imp::Mutex<T>) -> imp::MutexGuard<'_, T> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> MutexGuard<'_, T> {
    /// Runs `f` with the lock released, and takes it again.
    pub(crate) fn unlocked<R>(guard: &mut Self, f: impl FnOnce() -> R) -> R {
        drop(guard.guard.take());
        let result = f();
        guard.guard = Some(lock(&guard.lock.inner));
        result
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held outside unlocked()")
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held outside unlocked()")
    }
}

/// A reader-writer lock.
#[derive(Debug, Default)]
pub(crate) struct RwLock<T> {
    inner: imp::RwLock<T>,
}

impl<T> RwLock<T> {
    pub(crate) fn new(value: T) -> RwLock<T> {
        RwLock {
            inner: imp::RwLock::new(value),
        }
    }

    pub(crate) fn read(&self) -> imp::RwLockReadGuard<'_, T> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write(&self) -> imp::RwLockWriteGuard<'_, T> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A condition variable for a [`Mutex`].
#[derive(Debug, Default)]
pub(crate) struct Condvar {
    inner: imp::Condvar,
}

impl Condvar {
    pub(crate) fn new() -> Condvar {
        Condvar {
            inner: imp::Condvar::new(),
        }
    }

    /// Releases the lock, waits for a notification (or a spurious wake-up),
    /// and takes the lock again.
    pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        let held = guard.guard.take().expect("held outside unlocked()");
        let held = self.inner.wait(held).unwrap_or_else(|e| e.into_inner());
        guard.guard = Some(held);
    }

    pub(crate) fn notify_all(&self) {
        self.inner.notify_all();
    }
}
