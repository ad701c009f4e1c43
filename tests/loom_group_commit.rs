//! A loom model of the writer's group commit (src/engine.rs `append_with`,
//! `check_writable`, `commit`, `write_round`, `sync_round`, `poison`,
//! `background_sync`, `flush`, `sync_to`, `close`).
//!
//! What the crate does, and what the model mirrors:
//!
//! - One mutex guards the `Writer`; one condvar, `io_done`, is notified
//!   (`notify_all`) whenever I/O ends. An append places its frames in the
//!   shared buffer under the mutex (`append_with`, `place`) and then, per
//!   durability, calls `commit(end, durable)`.
//! - `commit` loops: poisoned → the poison error; covered → `Ok`; closed →
//!   `Closed`; records not yet written: wait if a write is in flight
//!   (`io_busy`) or, for a syncing round, a sync (`sync_busy`), else lead a
//!   `write_round` (a syncing one for `EveryAppend` or `durable`, after the
//!   "gather" step: yield while `placed` keeps growing, at most
//!   `GATHER_YIELDS` times, then look again); records written but not
//!   synced: wait if any I/O is in flight, else lead a `sync_round`. So at
//!   most one `fdatasync` is in flight.
//! - `write_round` marks `io_busy`, swaps out the buffer, captures `end =
//!   placed` and the position, unlocks (`MutexGuard::unlocked`), does one
//!   `pwrite` (+ `fdatasync`), re-locks, publishes `written = end` (and
//!   `durable = end`) or poisons, and `notify_all`s. `sync_round` does the
//!   same with `sync_busy`, its target captured as `written` before it
//!   unlocks, published only if it is above `durable`.
//! - `close` waits for another thread's close, marks the writer `closing`
//!   (from then on `check_writable` refuses appends, syncs and flushes with
//!   `Closed`), flushes and syncs what is placed (`commit(placed, true)`),
//!   waits for the I/O in flight, syncs, marks the writer closed,
//!   `notify_all`s and releases the directory lock.
//!
//! The "file" is two arrays of cells, one record per cell: what `pwrite`
//! stored (the page cache) and what a sync made durable (the disk). A sync
//! makes durable the cells written since the last sync. Faults follow the
//! crate's own simulator (src/storage/sim.rs): an injected failure of the
//! n-th file operation either stores nothing (a write) or is "fsyncgate" (a
//! sync): the cells written since the last sync stay readable but never
//! become durable, and a later sync succeeds. Recovery keeps the durable
//! records up to the first hole, so "durable" below means "in the durable
//! prefix".
//!
//! Every model checks, in every execution:
//!
//! - an `EveryAppend` append, a `sync` and a `close` return `Ok` only when
//!   their records are in the durable prefix (read at the return, under the
//!   writer mutex), an `Interval` append only when its records are in the
//!   file;
//! - every record is written exactly once, at its own position, and the
//!   writer never claims written records the file does not hold;
//! - the writer's `durable` never exceeds `written` and never goes back;
//! - every injected failure poisons the writer, and once a thread saw the
//!   poison error, each of its later calls returns it too (as does a last
//!   append after the model's threads are done);
//! - no deadlock (loom reports one when every thread waits).
//!
//! The `broken_*` models are the same protocol with one deliberate mistake
//! each, and must fail: they show the checks are not vacuous. Two of the
//! mistakes are the protocol as it was before these models found its races
//! (`CloseWithoutClosing`, `OverlappingSyncs`; see their docs).
//!
//! The gather step's `std::thread::yield_now` is a hint; loom's is stronger
//! (every other runnable thread runs first), so every scenario is explored
//! twice: with loom's yield, and with none (see `Log::gather_yield`).
//!
//! Not modelled: rolls (`roll`, `rolling`, the roll in `place`; segments
//! never fill here), the index, the watermark slot (a header write that
//! carries no record), subscribers and the published `next`, `Buffered`
//! appends that fill the buffer, `EINTR` and short writes (absorbed below
//! `write_at`), a failure of `close`'s own sync, and a failed write that
//! stored part of its data. Loom has no spurious condvar wakeups, so a
//! waiter wakes only after a `notify_all`.
//!
//! Run (compiles the whole dependency graph with `--cfg loom`, so give it
//! its own target directory to leave the shared one alone):
//!
//! ```sh
//! CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom" \
//!     cargo test --release --test loom_group_commit
//! ```
#![cfg(loom)]

use std::mem;

use loom::sync::{Condvar, Mutex, MutexGuard};
use loom::thread;

// `Call::Sync` stays qualified: it would shadow the `Sync` trait.
use Call::{Append, BackgroundSync, Close, Flush, SyncTo};
use Durability::{Buffered, EveryAppend, Interval};

/// src/engine.rs `GATHER_YIELDS`.
const GATHER_YIELDS: usize = 4;

/// The payload of record `offset`: never a cell's initial `None`, and a
/// record at the wrong position shows.
fn value(offset: u64) -> u64 {
    100 + offset
}

/// `Options::durability`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Durability {
    /// An append returns once its records are synced.
    EveryAppend,
    /// An append returns once its records are written; `background_sync`
    /// syncs them later.
    Interval,
    /// An append returns once its records are placed.
    Buffered,
}

/// The deliberate mistakes of the `broken_*` models.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mistake {
    None,
    /// `write_round` publishes `durable = placed` as it is when the leader
    /// re-locks, not the `end` it captured before unlocking.
    DurableFromPlacedAtRelock,
    /// A waiter in `commit` woken by `io_done` takes the wakeup for its
    /// condition (`if` instead of `while`) and returns.
    WakeWithoutRecheck,
    /// `write_round` forgets `io_done.notify_all()`.
    NoNotifyAfterWrite,
    /// `write_round` does not mark `io_busy`: two leaders at once.
    NoIoBusy,
    /// After the gather step the leader goes on to its write round without
    /// looking again (no `continue`), though another appender may have
    /// started one while it yielded.
    GatherWithoutRecheck,
    /// The close race this model found: `close` sets no `closing` flag, so
    /// an append placed while close's commit has the mutex released is
    /// left behind (`Buffered`: acknowledged and dropped; `EveryAppend`:
    /// written after `close` released the directory lock).
    CloseWithoutClosing,
    /// The sync race this model found: a syncing write round waits only
    /// for `io_busy` and a sync round only for `sync_busy`, so two
    /// `fdatasync`s can be in flight; Linux reports a writeback error to
    /// one of them only, and the other acknowledges records the failed one
    /// lost.
    OverlappingSyncs,
}

/// What a call returns when it fails (the model's `Error`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Error {
    /// `Error::Poisoned`.
    Poisoned,
    /// `Error::Closed`.
    Closed,
}

/// One call a model thread makes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Call {
    /// `append_with` of this many records (`append_batch`).
    Append(u64),
    /// `sync` (`sync_to(None)`).
    Sync,
    /// `sync_to(Some(target))`, as `Consumer::commit` calls it.
    SyncTo(u64),
    /// `flush`.
    Flush,
    /// One tick of the `Interval` sync thread: `background_sync`.
    BackgroundSync,
    /// `close`.
    Close,
}

/// The segment file.
#[derive(Debug, Default)]
struct File {
    /// What `pwrite` stored, by position (the page cache).
    cells: Vec<Option<u64>>,
    /// Positions written since the last sync.
    pending: Vec<usize>,
    /// What syncs made durable, by position (the disk).
    durable: Vec<Option<u64>>,
    /// File operations so far (writes and syncs, not `close`'s own sync).
    ops: usize,
    /// The file operation (1-based, counted in `ops`) that fails.
    fail_at: Option<usize>,
    /// Whether an injected failure happened.
    failed: bool,
    /// `close` returned: the directory lock is released, so no thread may
    /// do I/O on the log any more (checked only where asked).
    released: bool,
    check_released: bool,
}

impl File {
    /// Counts an operation; whether it is the one that fails.
    fn op(&mut self) -> bool {
        assert!(
            !(self.check_released && self.released),
            "close: I/O on the log after close released it"
        );
        self.ops += 1;
        let fail = self.fail_at == Some(self.ops);
        self.failed |= fail;
        fail
    }

    /// `FileHandle::write_at`: `records` at position `pos`. A failure
    /// stores nothing.
    fn write(&mut self, pos: usize, records: &[u64]) -> Result<(), ()> {
        if self.op() {
            return Err(());
        }
        // One write round at a time, each at the end of the last: every
        // record is written once, in offset order, with no gap.
        assert_eq!(
            pos,
            self.cells.len(),
            "a write at position {pos} with the file ending at {}: \
             written twice, out of order or with a gap",
            self.cells.len()
        );
        for &v in records {
            self.pending.push(self.cells.len());
            self.cells.push(Some(v));
            self.durable.push(None);
        }
        Ok(())
    }

    /// `FileHandle::sync_data`. A failure is fsyncgate: what was pending
    /// is never written back.
    fn sync(&mut self) -> Result<(), ()> {
        let fail = self.op();
        let pending = mem::take(&mut self.pending);
        if fail {
            return Err(());
        }
        for p in pending {
            self.durable[p] = self.cells[p];
        }
        Ok(())
    }

    /// How many records, from the first, hold their own value in `cells`.
    fn written_prefix(&self) -> u64 {
        prefix(&self.cells)
    }

    /// How many records, from the first, are durable: what recovery after
    /// a power loss keeps.
    fn durable_prefix(&self) -> u64 {
        prefix(&self.durable)
    }
}

impl std::fmt::Display for File {
    /// The cells, `-` for none: `written [100, 101] durable [100, -]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |cells: &[Option<u64>]| {
            let cells: Vec<String> = cells
                .iter()
                .map(|c| c.map_or("-".to_string(), |v| v.to_string()))
                .collect();
            cells.join(", ")
        };
        write!(
            f,
            "written [{}] durable [{}] after {} file operations",
            show(&self.cells),
            show(&self.durable),
            self.ops
        )
    }
}

fn prefix(cells: &[Option<u64>]) -> u64 {
    cells
        .iter()
        .enumerate()
        .take_while(|&(i, &c)| c == Some(value(i as u64)))
        .count() as u64
}

/// `Writer`, the state under the writer mutex (one cell per record, so
/// positions are offsets).
#[derive(Debug, Default)]
struct Writer {
    /// Records placed but not yet handed to a write; they start at
    /// `buf_pos`.
    buf: Vec<u64>,
    buf_pos: usize,
    placed: u64,
    written: u64,
    durable: u64,
    io_busy: bool,
    sync_busy: bool,
    poisoned: bool,
    closing: bool,
    closed: bool,
}

type Guard<'a> = MutexGuard<'a, Writer>;

/// One open log as the group commit sees it (`Engine`).
struct Log {
    writer: Mutex<Writer>,
    io_done: Condvar,
    file: Mutex<File>,
    durability: Durability,
    mistake: Mistake,
    /// Check that `close` leaves nothing placed behind and that no I/O
    /// follows it (the close models).
    check_close: bool,
    /// See `gather_yield`.
    yield_to_others: bool,
}

impl Log {
    fn new(scenario: &Scenario, yield_to_others: bool) -> Log {
        Log {
            writer: Mutex::new(Writer::default()),
            io_done: Condvar::new(),
            file: Mutex::new(File {
                check_released: scenario.check_close,
                ..File::default()
            }),
            durability: scenario.durability,
            mistake: scenario.mistake,
            check_close: scenario.check_close,
            yield_to_others,
        }
    }

    fn lock(&self) -> Guard<'_> {
        self.writer.lock().unwrap()
    }

    /// `MutexGuard::unlocked`.
    fn unlocked<'a, R>(&'a self, w: Guard<'a>, f: impl FnOnce() -> R) -> (Guard<'a>, R) {
        drop(w);
        let r = f();
        (self.lock(), r)
    }

    /// The gather step's `std::thread::yield_now`, a hint the OS may
    /// ignore. Loom's `yield_now` is stronger: it runs every other runnable
    /// thread first. So each scenario is explored twice: with loom's yield,
    /// and with none (the mutex released and taken again, where loom may
    /// switch threads or not, within the preemption bound).
    fn gather_yield(&self) {
        if self.yield_to_others {
            thread::yield_now();
        }
    }

    /// `io_done.wait`.
    fn wait<'a>(&'a self, w: Guard<'a>) -> Guard<'a> {
        self.io_done.wait(w).unwrap()
    }

    fn call(&self, call: Call) -> Result<(), Error> {
        match call {
            Call::Append(count) => self.append(count),
            Call::Sync => self.sync_to(None),
            Call::SyncTo(target) => self.sync_to(Some(target)),
            Call::Flush => self.flush(),
            Call::BackgroundSync => {
                self.background_sync();
                Ok(())
            }
            Call::Close => self.close(),
        }
    }

    /// `check_writable` (without the wait for a roll: no rolls here).
    fn check_writable(&self, w: &Writer) -> Result<(), Error> {
        if w.closed {
            return Err(Error::Closed);
        }
        if w.poisoned {
            return Err(Error::Poisoned);
        }
        if w.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// `append_with`: place the records, then commit per durability.
    fn append(&self, count: u64) -> Result<(), Error> {
        let mut w = self.lock();
        self.check_writable(&w)?;
        let first = w.placed;
        let end = first + count;
        // `place`: frames go to the shared buffer, in offset order.
        for offset in first..end {
            w.buf.push(value(offset));
        }
        w.placed = end;
        let (w, result) = match self.durability {
            Durability::EveryAppend => self.commit(w, end, true),
            Durability::Interval => self.commit(w, end, false),
            // The buffer is never "full" here: the records stay placed.
            Durability::Buffered => (w, Ok(())),
        };
        if result.is_ok() {
            let file = self.file.lock().unwrap();
            match self.durability {
                Durability::EveryAppend => assert!(
                    file.durable_prefix() >= end,
                    "append of [{first}, {end}) acknowledged and not durable ({})",
                    *file
                ),
                Durability::Interval => assert!(
                    file.written_prefix() >= end,
                    "append of [{first}, {end}) acknowledged and not written ({})",
                    *file
                ),
                Durability::Buffered => {}
            }
        }
        drop(w);
        result
    }

    /// `sync_to`.
    fn sync_to(&self, target: Option<u64>) -> Result<(), Error> {
        let w = self.lock();
        self.check_writable(&w)?;
        let target = target.unwrap_or(w.placed).min(w.placed);
        let (w, result) = self.commit(w, target, true);
        if result.is_ok() {
            let file = self.file.lock().unwrap();
            assert!(
                file.durable_prefix() >= target,
                "sync to {target} acknowledged and not durable ({})",
                *file
            );
        }
        drop(w);
        result
    }

    /// `flush`.
    fn flush(&self) -> Result<(), Error> {
        let w = self.lock();
        self.check_writable(&w)?;
        let target = w.placed;
        self.commit(w, target, false).1
    }

    /// `background_sync`.
    fn background_sync(&self) {
        let mut w = self.lock();
        while w.io_busy && self.mistake != Mistake::OverlappingSyncs {
            w = self.wait(w);
        }
        if w.poisoned || w.closed || w.durable >= w.written || w.sync_busy {
            return;
        }
        drop(self.sync_round(w));
    }

    /// `commit`: waits until offsets below `target` are written (or
    /// synced, when `durable`), leading the I/O when nobody else is.
    fn commit<'a>(
        &'a self,
        mut w: Guard<'a>,
        target: u64,
        durable: bool,
    ) -> (Guard<'a>, Result<(), Error>) {
        let every_append = self.durability == Durability::EveryAppend;
        let mut yielded = false;
        loop {
            if w.poisoned {
                return (w, Err(Error::Poisoned));
            }
            if w.durable >= target || (!durable && w.written >= target) {
                return (w, Ok(()));
            }
            if w.closed {
                return (w, Err(Error::Closed));
            }
            let overlap = self.mistake == Mistake::OverlappingSyncs;
            if w.written < target {
                let syncing = durable || every_append;
                if w.io_busy || (syncing && w.sync_busy && !overlap) {
                    w = self.wait(w);
                    if self.mistake == Mistake::WakeWithoutRecheck {
                        return (w, Ok(()));
                    }
                } else if durable || every_append {
                    if !yielded {
                        // The gather step.
                        yielded = true;
                        for _ in 0..GATHER_YIELDS {
                            let placed = w.placed;
                            w = self.unlocked(w, || self.gather_yield()).0;
                            if w.placed == placed || w.io_busy {
                                break;
                            }
                        }
                        if self.mistake != Mistake::GatherWithoutRecheck {
                            continue;
                        }
                    }
                    w = self.write_round(w, true);
                } else {
                    w = self.write_round(w, false);
                }
            } else if w.sync_busy || (w.io_busy && !overlap) {
                w = self.wait(w);
                if self.mistake == Mistake::WakeWithoutRecheck {
                    return (w, Ok(()));
                }
            } else {
                w = self.sync_round(w);
            }
        }
    }

    /// `write_round`: writes every placed record with one `pwrite` (and
    /// syncs, if asked), with the mutex released during the I/O.
    fn write_round<'a>(&'a self, mut w: Guard<'a>, sync: bool) -> Guard<'a> {
        if self.mistake != Mistake::NoIoBusy {
            w.io_busy = true;
        }
        let data = mem::take(&mut w.buf);
        let pos = w.buf_pos;
        w.buf_pos = pos + data.len();
        let end = w.placed;
        // The write and the sync are two system calls: other I/O may come
        // between them.
        let (mut w, result) = self.unlocked(w, || {
            if !data.is_empty() {
                self.file.lock().unwrap().write(pos, &data)?;
            }
            if sync {
                self.file.lock().unwrap().sync()?;
            }
            Ok::<(), ()>(())
        });
        w.io_busy = false;
        match result {
            Ok(()) => {
                let durable = if sync {
                    match self.mistake {
                        Mistake::DurableFromPlacedAtRelock => w.placed,
                        _ => end,
                    }
                } else {
                    w.durable
                };
                self.publish(&mut w, end, durable);
            }
            Err(()) => self.poison(&mut w),
        }
        if self.mistake != Mistake::NoNotifyAfterWrite {
            self.io_done.notify_all();
        }
        w
    }

    /// `sync_round`: syncs what is already written, with the mutex
    /// released.
    fn sync_round<'a>(&'a self, mut w: Guard<'a>) -> Guard<'a> {
        w.sync_busy = true;
        let target = w.written;
        let (mut w, result) = self.unlocked(w, || self.file.lock().unwrap().sync());
        w.sync_busy = false;
        match result {
            Ok(()) => {
                if target > w.durable {
                    let written = w.written;
                    self.publish(&mut w, written, target);
                }
            }
            Err(()) => self.poison(&mut w),
        }
        self.io_done.notify_all();
        w
    }

    /// Publishes a round's result, checking what the writer claims.
    fn publish(&self, w: &mut Writer, written: u64, durable: u64) {
        assert!(
            durable >= w.durable,
            "durable went back from {} to {durable}",
            w.durable
        );
        assert!(
            written >= w.written,
            "written went back from {} to {written}",
            w.written
        );
        assert!(
            durable <= written,
            "durable {durable} published past written {written}"
        );
        let file = self.file.lock().unwrap();
        assert!(
            file.written_prefix() >= written,
            "claims written [0, {written}) with the file holding {}",
            *file
        );
        w.written = written;
        w.durable = durable;
    }

    /// `poison`.
    fn poison(&self, w: &mut Writer) {
        w.poisoned = true;
    }

    /// `close`.
    fn close(&self) -> Result<(), Error> {
        let mut w = self.lock();
        while w.closing && !w.closed && !w.poisoned {
            w = self.wait(w);
        }
        if w.closed {
            return Ok(());
        }
        self.check_writable(&w)?;
        if self.mistake != Mistake::CloseWithoutClosing {
            w.closing = true;
        }
        let target = w.placed;
        let (mut w, result) = self.commit(w, target, true);
        result?;
        while w.io_busy || w.sync_busy {
            w = self.wait(w);
        }
        {
            // The watermark write carries no record; then the sync, under
            // the writer mutex (never an injected failure here).
            let mut file = self.file.lock().unwrap();
            assert!(
                file.durable_prefix() >= target,
                "close acknowledged with [0, {target}) not durable ({})",
                *file
            );
            let pending = mem::take(&mut file.pending);
            for p in pending {
                file.durable[p] = file.cells[p];
            }
        }
        if self.check_close {
            assert!(
                w.durable == w.placed,
                "close: marks the log closed with [{}, {}) placed and not durable",
                w.durable,
                w.placed
            );
        }
        w.closed = true;
        self.io_done.notify_all();
        drop(w);
        // `release` and `*self.lock.lock() = None`.
        self.file.lock().unwrap().released = true;
        Ok(())
    }
}

/// The model's shared state lives for the whole execution and is never
/// dropped (as in tests/loom_handover.rs: loom's `Arc` panics when dropped
/// during the unwinding of a failed execution, which aborts the binary).
fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// One configuration to explore.
#[derive(Clone, Copy)]
struct Scenario {
    durability: Durability,
    mistake: Mistake,
    /// Calls the model's main thread makes before the others start.
    setup: &'static [Call],
    /// The calls of each thread, in order.
    threads: &'static [&'static [Call]],
    /// The file operation after the setup's (1-based) that fails.
    fail: Option<usize>,
    check_close: bool,
}

impl Scenario {
    fn new(durability: Durability, threads: &'static [&'static [Call]]) -> Scenario {
        Scenario {
            durability,
            mistake: Mistake::None,
            setup: &[],
            threads,
            fail: None,
            check_close: false,
        }
    }

    fn mistake(self, mistake: Mistake) -> Scenario {
        Scenario { mistake, ..self }
    }

    fn setup(self, setup: &'static [Call]) -> Scenario {
        Scenario { setup, ..self }
    }

    fn fail(self, n: usize) -> Scenario {
        Scenario {
            fail: Some(n),
            ..self
        }
    }

    fn check_close(self) -> Scenario {
        Scenario {
            check_close: true,
            ..self
        }
    }

    /// Explores every execution, with each of the two readings of the
    /// gather step's yield (see `Log::gather_yield`).
    fn check(self) {
        self.explore(true);
        self.explore(false);
    }

    fn explore(self, yield_to_others: bool) {
        loom::model(move || {
            let log = leak(Log::new(&self, yield_to_others));
            for &call in self.setup {
                assert_eq!(log.call(call), Ok(()), "setup call {call:?}");
            }
            {
                let mut file = log.file.lock().unwrap();
                file.fail_at = self.fail.map(|n| file.ops + n);
            }
            let threads: Vec<_> = self
                .threads
                .iter()
                .map(|&calls| thread::spawn(move || run(log, calls)))
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let (failed, closed) = {
                let w = log.lock();
                let file = log.file.lock().unwrap();
                assert_eq!(
                    file.failed, w.poisoned,
                    "an injected failure did not poison the writer, or a poison without one"
                );
                assert!(w.durable <= w.written && w.written <= w.placed);
                if self.durability == Durability::EveryAppend && !w.poisoned && !w.closed {
                    // Every append returned, so every record is durable.
                    assert_eq!(file.durable_prefix(), w.placed, "{}", *file);
                }
                (file.failed, w.closed)
            };
            // A call after the threads are done (`check_writable` looks at
            // `closed` first).
            if closed {
                assert_eq!(log.append(1), Err(Error::Closed), "an append after close");
            } else if failed {
                assert_eq!(
                    log.append(1),
                    Err(Error::Poisoned),
                    "an append after the failure"
                );
            }
        });
    }
}

/// One model thread: its calls in order. Once a call returned the poison
/// error, every later one returns it too.
fn run(log: &Log, calls: &[Call]) {
    let mut poisoned = false;
    for &call in calls {
        let result = log.call(call);
        if poisoned && call != Call::BackgroundSync {
            assert_eq!(
                result,
                Err(Error::Poisoned),
                "{call:?} after the poison error"
            );
        }
        poisoned |= result == Err(Error::Poisoned);
    }
}

// ---- EveryAppend: appenders sharing syncs ----------------------------------

const TWO_APPENDERS: &[&[Call]] = &[&[Append(1)], &[Append(1)]];
const ONE_AND_TWO: &[&[Call]] = &[&[Append(1)], &[Append(1), Append(1)]];
const BATCH_AND_ONE: &[&[Call]] = &[&[Append(2)], &[Append(1)]];
const THREE_APPENDERS: &[&[Call]] = &[&[Append(1)], &[Append(1)], &[Append(1)]];

#[test]
fn every_append_two_appenders() {
    Scenario::new(EveryAppend, TWO_APPENDERS).check();
}

#[test]
fn every_append_one_append_and_two_appends() {
    Scenario::new(EveryAppend, ONE_AND_TWO).check();
}

#[test]
fn every_append_batch_and_one() {
    Scenario::new(EveryAppend, BATCH_AND_ONE).check();
}

#[test]
fn every_append_three_appenders() {
    Scenario::new(EveryAppend, THREE_APPENDERS).check();
}

#[test]
fn every_append_two_appends_each() {
    Scenario::new(
        EveryAppend,
        &[&[Append(1), Append(1)], &[Append(1), Append(1)]],
    )
    .check();
}

#[test]
fn every_append_batch_and_two_appenders() {
    Scenario::new(EveryAppend, &[&[Append(2)], &[Append(1)], &[Append(1)]]).check();
}

/// The n-th file operation fails, for each n the executions reach (three
/// appends do at most six: a write and a sync each).
#[test]
fn every_append_failure_poisons_and_acknowledges_nothing_undurable() {
    for n in 1..=6 {
        Scenario::new(EveryAppend, ONE_AND_TWO).fail(n).check();
    }
}

#[test]
fn every_append_three_appenders_with_a_failure() {
    for n in 1..=6 {
        Scenario::new(EveryAppend, THREE_APPENDERS).fail(n).check();
    }
}

// ---- close -------------------------------------------------------------------

const APPENDS_AND_CLOSE: &[&[Call]] = &[&[Append(1), Append(1)], &[Close]];

/// An appender races `close`: each append is durable or fails with
/// `Closed`, `close` returns with what was placed before it durable, and a
/// later append fails with `Closed`. (That nothing placed is left behind
/// and no I/O follows `close` is checked by `every_append_close_leaves_no_append_behind`.)
#[test]
fn every_append_close_while_appending() {
    Scenario::new(EveryAppend, APPENDS_AND_CLOSE).check();
}

const TWO_APPENDERS_AND_CLOSE: &[&[Call]] = &[&[Append(1)], &[Append(1)], &[Close]];

#[test]
fn every_append_close_while_two_appenders_append() {
    Scenario::new(EveryAppend, TWO_APPENDERS_AND_CLOSE).check();
}

#[test]
fn every_append_close_while_appending_with_a_failure() {
    for n in 1..=4 {
        Scenario::new(EveryAppend, APPENDS_AND_CLOSE)
            .fail(n)
            .check();
    }
}

// ---- Interval and Buffered: sync rounds ---------------------------------------

const APPENDS_AND_SYNC: &[&[Call]] = &[&[Append(1), Append(1)], &[Call::Sync]];
const APPENDS_AND_BACKGROUND_SYNC: &[&[Call]] =
    &[&[Append(1), Append(1)], &[BackgroundSync, BackgroundSync]];

/// `Interval` appends (a write round each) with a concurrent `sync`: a
/// sync round runs while a write is in flight.
#[test]
fn interval_appends_and_sync() {
    Scenario::new(Interval, APPENDS_AND_SYNC).check();
}

#[test]
fn interval_appends_and_sync_with_a_failure() {
    for n in 1..=3 {
        Scenario::new(Interval, APPENDS_AND_SYNC).fail(n).check();
    }
}

#[test]
fn interval_appends_and_background_sync_with_a_failure() {
    Scenario::new(Interval, APPENDS_AND_BACKGROUND_SYNC).check();
    for n in 1..=3 {
        Scenario::new(Interval, APPENDS_AND_BACKGROUND_SYNC)
            .fail(n)
            .check();
    }
}

/// Record 0 written, record 1 buffered; a `sync_to(1)` (a sync round) and a
/// `sync` (a syncing write round) are called at once: one waits for the
/// other's `fdatasync`.
const WRITTEN_AND_BUFFERED: &[Call] = &[Append(1), Flush, Append(1)];
const TWO_SYNCS: &[&[Call]] = &[&[SyncTo(1)], &[Call::Sync]];

#[test]
fn buffered_sync_round_and_write_round_at_once() {
    Scenario::new(Buffered, TWO_SYNCS)
        .setup(WRITTEN_AND_BUFFERED)
        .check();
}

// ---- broken models: each must fail ---------------------------------------------

#[test]
#[should_panic(expected = "published past written")]
fn broken_durable_from_placed_at_relock() {
    Scenario::new(EveryAppend, TWO_APPENDERS)
        .mistake(Mistake::DurableFromPlacedAtRelock)
        .check();
}

#[test]
#[should_panic(expected = "acknowledged and not durable")]
fn broken_wake_without_recheck() {
    Scenario::new(EveryAppend, TWO_APPENDERS)
        .mistake(Mistake::WakeWithoutRecheck)
        .check();
}

#[test]
#[should_panic(expected = "deadlock")]
fn broken_no_notify_after_write() {
    Scenario::new(EveryAppend, TWO_APPENDERS)
        .mistake(Mistake::NoNotifyAfterWrite)
        .check();
}

#[test]
#[should_panic(expected = "claims written")]
fn broken_no_io_busy() {
    Scenario::new(EveryAppend, TWO_APPENDERS)
        .mistake(Mistake::NoIoBusy)
        .check();
}

#[test]
#[should_panic(expected = "claims written")]
fn broken_gather_without_recheck() {
    Scenario::new(EveryAppend, TWO_APPENDERS)
        .mistake(Mistake::GatherWithoutRecheck)
        .check();
}

#[test]
#[should_panic(expected = "close:")]
fn broken_close_without_closing_every_append() {
    Scenario::new(EveryAppend, APPENDS_AND_CLOSE)
        .check_close()
        .mistake(Mistake::CloseWithoutClosing)
        .check();
}

#[test]
#[should_panic(expected = "close:")]
fn broken_close_without_closing_buffered() {
    Scenario::new(Buffered, APPENDS_AND_CLOSE)
        .check_close()
        .mistake(Mistake::CloseWithoutClosing)
        .check();
}

#[test]
#[should_panic(expected = "acknowledged and not durable")]
fn broken_overlapping_syncs_buffered() {
    for n in 1..=3 {
        Scenario::new(Buffered, TWO_SYNCS)
            .setup(WRITTEN_AND_BUFFERED)
            .fail(n)
            .mistake(Mistake::OverlappingSyncs)
            .check();
    }
}

#[test]
#[should_panic(expected = "acknowledged and not durable")]
fn broken_overlapping_syncs_interval() {
    for n in 1..=4 {
        Scenario::new(Interval, INTERVAL_SYNCS)
            .fail(n)
            .mistake(Mistake::OverlappingSyncs)
            .check();
    }
}

// ---- the races these models found, fixed ------------------------------------------

/// `close` used to commit up to `placed` as it was when it began, while an
/// append could place more records when close's commit had the mutex
/// released: `close` then marked the log closed and released the directory
/// lock with them unwritten, and the appender went on to write on the
/// closed log. Now `close` marks the writer `closing` first, which
/// `check_writable` refuses: `close` leaves nothing placed behind and no
/// I/O follows it.
#[test]
fn every_append_close_leaves_no_append_behind() {
    Scenario::new(EveryAppend, APPENDS_AND_CLOSE)
        .check_close()
        .check();
}

/// The same race in `Buffered` mode dropped an acknowledged append (placed
/// while close's write round was in flight).
#[test]
fn buffered_close_keeps_every_acknowledged_append() {
    Scenario::new(Buffered, APPENDS_AND_CLOSE)
        .check_close()
        .check();
}

/// A sync round and a syncing write round (`Buffered`: a consumer
/// commit's `sync_to` and a `sync`) with a failure at each file operation:
/// the second sync waits for the first, which poisons the writer when it
/// fails.
#[test]
fn buffered_concurrent_syncs_with_a_failure() {
    for n in 1..=3 {
        Scenario::new(Buffered, TWO_SYNCS)
            .setup(WRITTEN_AND_BUFFERED)
            .fail(n)
            .check();
    }
}

/// The same in `Interval` mode: two appenders, the background sync (a sync
/// round) and a `sync` that finds the second appender's record placed and
/// not yet written (a syncing write round).
const INTERVAL_SYNCS: &[&[Call]] = &[&[Append(1)], &[Append(1)], &[BackgroundSync], &[Call::Sync]];

#[test]
fn interval_background_sync_and_sync_with_a_failure() {
    for n in 1..=4 {
        Scenario::new(Interval, INTERVAL_SYNCS).fail(n).check();
    }
}
