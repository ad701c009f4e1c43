//! Loom models of the store's concurrency, run on the code that ships: the
//! writer's group commit ([`Writer`]) over a model file, and the
//! [`Notifier`]'s publish/wake protocol. Under `cfg(loom)` the crate's
//! locks and atomics are loom's (`src/sync.rs`), so loom explores every
//! interleaving of these real functions.
//!
//! Run with (the whole dependency graph is compiled with `--cfg loom`, so it
//! gets a target directory of its own):
//!
//! ```sh
//! CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 RUSTFLAGS="--cfg loom" \
//!     cargo test --release --lib store::loom_tests
//! ```
//!
//! What every writer model checks, in every execution:
//!
//! - an `EveryAppend` append, a `sync` and a `close` return `Ok` only when
//!   their records are in the durable prefix of the file (read at the
//!   return); an `Interval` append only when its records are written;
//! - every record is written exactly once, at its own position, in order;
//! - a failed write or sync poisons the writer: every later call fails;
//! - nothing deadlocks (loom reports a deadlock when every thread waits).
//!
//! The `broken_*` models must fail: a file whose sync lies (reports success
//! without making anything durable) breaks the durability check, and a
//! reader that checks for new records before registering for a wake-up
//! loses one. They show the checks are not vacuous.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Wake, Waker};

use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use loom::sync::Mutex;
use loom::thread;

use super::notifier::{Notifier, Waiter};
use super::writer::{Active, Checkpoints, Failure, Host, Tail, Writer, WriterConfig};
use crate::error::Error;
use crate::format::{self, Layout, Scan, Watermark, RECORDS_START};
use crate::options::Durability;

/// What the model file does wrong, if anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// The `n`-th file operation (write or sync, from 1) fails with EIO. A
    /// failed sync is "fsyncgate": the bytes written since the last sync
    /// stay readable but never become durable.
    FailOp(u64),
    /// Every sync reports success and makes nothing durable.
    LyingSync,
}

/// A segment file as the writer sees it: what `pwrite` stored (the page
/// cache) and the prefix a sync made durable.
struct ModelFile {
    written: Mutex<Vec<u8>>,
    /// Bytes of `written` on stable storage.
    durable: AtomicU64,
    /// Bytes written since the last sync that a failed sync lost.
    lost_from: Mutex<Option<u64>>,
    ops: AtomicU64,
    fault: Fault,
    path: PathBuf,
}

impl ModelFile {
    fn new(fault: Fault) -> Arc<ModelFile> {
        Arc::new(ModelFile {
            written: Mutex::new(vec![0; RECORDS_START as usize]),
            durable: AtomicU64::new(RECORDS_START),
            lost_from: Mutex::new(None),
            ops: AtomicU64::new(0),
            fault,
            path: PathBuf::from("/model/00000000000000000000.seg"),
        })
    }

    fn fails(&self) -> bool {
        let op = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        self.fault == Fault::FailOp(op)
    }

    /// The records in the durable prefix (recovery keeps them).
    fn durable_records(&self) -> u64 {
        let written = self.written.lock().unwrap();
        let durable = self.durable.load(Ordering::SeqCst) as usize;
        let mut pos = RECORDS_START as usize;
        let mut records = 0;
        while let Scan::Frame(frame) =
            format::decode_frame(&written[pos..durable], 1 << 10, Layout::V2)
        {
            pos += frame.len;
            records += 1;
        }
        records
    }

    /// The records written, which must be exactly offsets `0..n` in order.
    fn written_records(&self) -> u64 {
        let written = self.written.lock().unwrap();
        let mut pos = RECORDS_START as usize;
        let mut records = 0;
        while let Scan::Frame(frame) = format::decode_frame(&written[pos..], 1 << 10, Layout::V2) {
            assert_eq!(frame.offset, records, "records out of order");
            assert_eq!(frame.payload, payload(records), "a record's bytes");
            pos += frame.len;
            records += 1;
        }
        assert_eq!(pos, written.len(), "bytes written that are no record");
        records
    }
}

impl Active for ModelFile {
    fn base(&self) -> u64 {
        0
    }

    fn capacity(&self) -> u64 {
        1 << 20
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn index_path(&self) -> &Path {
        &self.path
    }

    fn write(&self, frames: &[u8], pos: u64) -> io::Result<()> {
        if self.fails() {
            return Err(io::Error::from_raw_os_error(5));
        }
        let mut written = self.written.lock().unwrap();
        assert_eq!(pos as usize, written.len(), "a write not at the end");
        written.extend_from_slice(frames);
        Ok(())
    }

    fn write_index(&self, _entries: &[u8], _at: u64) -> io::Result<()> {
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let end = self.written.lock().unwrap().len() as u64;
        if self.fails() {
            let mut lost = self.lost_from.lock().unwrap();
            lost.get_or_insert(self.durable.load(Ordering::SeqCst));
            return Err(io::Error::from_raw_os_error(5));
        }
        if self.fault == Fault::LyingSync {
            return Ok(());
        }
        // What a failed sync lost never becomes durable, so the durable
        // prefix stops there.
        let end = match *self.lost_from.lock().unwrap() {
            Some(lost) => lost,
            None => end,
        };
        self.durable.fetch_max(end, Ordering::SeqCst);
        Ok(())
    }

    fn start_writeback(&self, _from: u64, _to: u64) -> io::Result<()> {
        Ok(())
    }

    fn write_watermark(&self, _mark: &Watermark) -> io::Result<()> {
        Ok(())
    }

    fn publish(&self, _limit: u64, _next: u64, _index_count: u64) {}
}

struct ModelHost {
    notifier: Notifier,
}

impl Host<ModelFile> for ModelHost {
    fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    fn next_segment(
        &self,
        _base: u64,
        _last_ts: u64,
        _initial: &[u8],
    ) -> Result<Arc<ModelFile>, Failure> {
        unreachable!("the model file never fills")
    }

    fn checkpoints(&self) -> crate::error::Result<Checkpoints> {
        Ok(Checkpoints::new())
    }

    fn rolled(&self) {}

    fn half_full(&self) {}

    fn unsynced(&self) {}

    fn durable(&self, _next: u64) {}
}

fn payload(offset: u64) -> Vec<u8> {
    vec![offset as u8 + 1; 3]
}

/// One call a model thread makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// Appends a batch of this many records.
    Append(u64),
    Sync,
    /// Makes offsets below this durable.
    SyncTo(u64),
    Flush,
    /// The `Interval` background sync.
    BackgroundSync,
    Close,
}

use Call::{Append, BackgroundSync, Close, Flush, Sync, SyncTo};

struct Log {
    writer: Writer<ModelFile>,
    host: ModelHost,
    file: Arc<ModelFile>,
    durability: Durability,
    /// The file's length when a `close` returned `Ok`: nothing may be
    /// written after it.
    closed_at: Mutex<Option<usize>>,
}

impl Log {
    fn new(durability: Durability, fault: Fault) -> Arc<Log> {
        let file = ModelFile::new(fault);
        let config = WriterConfig {
            durability,
            buffer_bytes: 1 << 10,
            record_limit: 1 << 10,
            index_interval: 1 << 20,
        };
        let tail = Tail {
            pos: RECORDS_START,
            next: 0,
            last_ts: 0,
            index_count: 0,
            index_last_pos: None,
        };
        Arc::new(Log {
            writer: Writer::new(config, file.clone(), tail),
            host: ModelHost {
                notifier: Notifier::new(0),
            },
            file,
            durability,
            closed_at: Mutex::new(None),
        })
    }

    /// Makes `call` and checks what its result promises.
    fn call(&self, call: Call) -> crate::Result<()> {
        let placed_before = self.writer.assigned();
        let result = match call {
            Append(n) => self
                .writer
                .append(&self.host, n as usize, None, None, None, |i, out| {
                    // Under the writer's lock the next offset to assign is
                    // `assigned`: each record's bytes name its offset.
                    out.extend_from_slice(&payload(self.writer.assigned() + i as u64));
                    Ok(())
                })
                .map(|range| match self.durability {
                    Durability::EveryAppend => self.assert_durable(range.end, call),
                    Durability::Interval(_) => self.assert_written(range.end, call),
                    _ => {}
                }),
            Sync => self
                .writer
                .sync_to(&self.host, None)
                .map(|_| self.assert_durable(placed_before, call)),
            SyncTo(target) => self
                .writer
                .sync_to(&self.host, Some(target))
                .map(|_| self.assert_durable(target.min(placed_before), call)),
            Flush => self
                .writer
                .flush(&self.host)
                .map(|()| self.assert_written(placed_before, call)),
            BackgroundSync => {
                self.writer.background_sync(&self.host);
                Ok(())
            }
            Close => self.writer.close(&self.host).map(|()| {
                self.assert_durable(self.writer.assigned(), call);
                *self.closed_at.lock().unwrap() = Some(self.file.written.lock().unwrap().len());
            }),
        };
        // The writer never claims more than the file holds.
        let claimed = self.writer.durable();
        assert!(
            claimed <= self.file.durable_records(),
            "{call:?}: claims {claimed} durable"
        );
        result
    }

    fn assert_durable(&self, end: u64, call: Call) {
        let have = self.file.durable_records();
        assert!(
            have >= end,
            "{call:?}: acknowledged {end} records, {have} durable"
        );
    }

    fn assert_written(&self, end: u64, call: Call) {
        let have = self.file.written_records();
        assert!(
            have >= end,
            "{call:?}: acknowledged {end} records, {have} written"
        );
    }

    /// One thread's calls: after a poison error, every call but the
    /// background sync returns it too.
    fn run(&self, calls: &[Call]) {
        let mut poisoned = false;
        for &call in calls {
            let result = self.call(call);
            if poisoned && call != BackgroundSync {
                assert!(
                    matches!(result, Err(Error::Poisoned { .. })),
                    "{call:?} after the poison error: {result:?}"
                );
            }
            match result {
                Ok(()) | Err(Error::Poisoned { .. } | Error::Closed) => {}
                // Close's last sync (of the closed watermark, after every
                // record was made durable) failed: the log is closed anyway.
                Err(Error::Io { .. }) if call == Close => {}
                Err(e) => panic!("{call:?}: unexpected {e:?}"),
            }
            poisoned |= matches!(result, Err(Error::Poisoned { .. }));
        }
    }

    /// After the model's threads: each record in the file once, in order;
    /// nothing written after a close; a failed log refuses more.
    fn finish(&self) {
        self.file.written_records();
        if let Some(len) = *self.closed_at.lock().unwrap() {
            let now = self.file.written.lock().unwrap().len();
            assert_eq!(now, len, "bytes written after close returned");
        }
    }
}

struct Scenario {
    durability: Durability,
    fault: Fault,
    setup: &'static [Call],
    threads: &'static [&'static [Call]],
}

impl Scenario {
    fn new(durability: Durability, threads: &'static [&'static [Call]]) -> Scenario {
        Scenario {
            durability,
            fault: Fault::None,
            setup: &[],
            threads,
        }
    }

    fn fault(mut self, fault: Fault) -> Scenario {
        self.fault = fault;
        self
    }

    fn setup(mut self, calls: &'static [Call]) -> Scenario {
        self.setup = calls;
        self
    }

    fn check(self) {
        let Scenario {
            durability,
            fault,
            setup,
            threads,
        } = self;
        loom::model(move || {
            let log = Log::new(durability, fault);
            log.run(setup);
            let handles: Vec<_> = threads
                .iter()
                .map(|&calls| {
                    let log = log.clone();
                    thread::spawn(move || log.run(calls))
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            log.finish();
        });
    }
}

const EVERY: Durability = Durability::EveryAppend;
const INTERVAL: Durability = Durability::Interval(std::time::Duration::from_secs(1));
const BUFFERED: Durability = Durability::Buffered;

const TWO_APPENDERS: &[&[Call]] = &[&[Append(1)], &[Append(1)]];
const ONE_AND_TWO: &[&[Call]] = &[&[Append(1)], &[Append(1), Append(1)]];
const BATCH_AND_ONE: &[&[Call]] = &[&[Append(2)], &[Append(1)]];
const THREE_APPENDERS: &[&[Call]] = &[&[Append(1)], &[Append(1)], &[Append(1)]];
const APPENDS_AND_CLOSE: &[&[Call]] = &[&[Append(1), Append(1)], &[Close]];
const TWO_APPENDERS_AND_CLOSE: &[&[Call]] = &[&[Append(1)], &[Append(1)], &[Close]];
const APPENDS_AND_SYNC: &[&[Call]] = &[&[Append(1), Append(1)], &[Sync]];
const APPENDS_AND_BACKGROUND_SYNC: &[&[Call]] =
    &[&[Append(1), Append(1)], &[BackgroundSync, BackgroundSync]];
const INTERVAL_SYNCS: &[&[Call]] = &[&[Append(1)], &[Append(1)], &[BackgroundSync], &[Sync]];
/// Record 0 written, record 1 buffered; then a sync round (`sync_to(1)`)
/// and a syncing write round (`sync`) at once.
const WRITTEN_AND_BUFFERED: &[Call] = &[Append(1), Flush, Append(1)];
const TWO_SYNCS: &[&[Call]] = &[&[SyncTo(1)], &[Sync]];

#[test]
fn every_append_concurrent_appenders_share_syncs() {
    Scenario::new(EVERY, TWO_APPENDERS).check();
    Scenario::new(EVERY, ONE_AND_TWO).check();
    Scenario::new(EVERY, BATCH_AND_ONE).check();
}

#[test]
fn every_append_three_appenders() {
    Scenario::new(EVERY, THREE_APPENDERS).check();
}

/// The n-th file operation fails, for each n the executions reach (three
/// appends do at most six: a write and a sync each).
#[test]
fn every_append_a_failure_poisons_and_acknowledges_nothing_undurable() {
    for n in 1..=6 {
        Scenario::new(EVERY, ONE_AND_TWO)
            .fault(Fault::FailOp(n))
            .check();
    }
}

/// An appender races `close`: each append is durable or fails with
/// `Closed`, `close` returns with everything placed durable, and nothing
/// is written after it returns.
#[test]
fn every_append_close_while_appending() {
    Scenario::new(EVERY, APPENDS_AND_CLOSE).check();
    Scenario::new(EVERY, TWO_APPENDERS_AND_CLOSE).check();
    for n in 1..=4 {
        Scenario::new(EVERY, APPENDS_AND_CLOSE)
            .fault(Fault::FailOp(n))
            .check();
    }
}

#[test]
fn buffered_close_keeps_every_acknowledged_append() {
    Scenario::new(BUFFERED, APPENDS_AND_CLOSE).check();
}

/// `Interval` appends (a write round each) with a concurrent `sync` or
/// background sync: a sync round runs while a write is in flight.
#[test]
fn interval_appends_and_syncs() {
    Scenario::new(INTERVAL, APPENDS_AND_SYNC).check();
    Scenario::new(INTERVAL, APPENDS_AND_BACKGROUND_SYNC).check();
    for n in 1..=3 {
        Scenario::new(INTERVAL, APPENDS_AND_SYNC)
            .fault(Fault::FailOp(n))
            .check();
        Scenario::new(INTERVAL, APPENDS_AND_BACKGROUND_SYNC)
            .fault(Fault::FailOp(n))
            .check();
    }
}

/// Two appenders, the background sync and a `sync`, with a failure at each
/// file operation: at most one `fdatasync` is in flight, so a failed one is
/// never followed by a successful one that acknowledges what it lost.
#[test]
fn interval_background_sync_and_sync_with_a_failure() {
    for n in 1..=4 {
        Scenario::new(INTERVAL, INTERVAL_SYNCS)
            .fault(Fault::FailOp(n))
            .check();
    }
}

#[test]
fn buffered_sync_round_and_write_round_at_once() {
    Scenario::new(BUFFERED, TWO_SYNCS)
        .setup(WRITTEN_AND_BUFFERED)
        .check();
    for n in 1..=3 {
        Scenario::new(BUFFERED, TWO_SYNCS)
            .setup(WRITTEN_AND_BUFFERED)
            .fault(Fault::FailOp(n))
            .check();
    }
}

#[test]
#[should_panic(expected = "durable")]
fn broken_a_lying_sync_is_caught() {
    Scenario::new(EVERY, TWO_APPENDERS)
        .fault(Fault::LyingSync)
        .check();
}

// ---- the notifier ---------------------------------------------------------------

/// Wakes a parked loom thread.
struct Unpark(loom::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A reader waits for offsets `0..target` the way subscriptions do: look,
/// register, look again, and only then sleep. A lost wake-up leaves it
/// parked forever, which loom reports as a deadlock.
fn read_until(notifier: &Notifier, target: u64, register_first: bool) {
    let waiter = Waiter::new(Waker::from(Arc::new(Unpark(thread::current()))));
    notifier.join(&waiter);
    loop {
        if notifier.end() >= target {
            return;
        }
        if register_first {
            if notifier.register(&waiter) >= target {
                return;
            }
        } else {
            // The mistake: the decision to sleep rests on a look taken
            // before registering.
            let seen = notifier.end();
            notifier.register(&waiter);
            if seen >= target {
                return;
            }
        }
        thread::park();
    }
}

fn notifier_model(readers: usize, publishes: u64, register_first: bool) {
    loom::model(move || {
        let notifier = Arc::new(Notifier::new(0));
        let handles: Vec<_> = (0..readers)
            .map(|_| {
                let notifier = notifier.clone();
                thread::spawn(move || read_until(&notifier, publishes, register_first))
            })
            .collect();
        for end in 1..=publishes {
            notifier.publish(end);
        }
        for handle in handles {
            handle.join().unwrap();
        }
    });
}

#[test]
fn a_waiting_reader_is_always_woken_by_a_publish() {
    notifier_model(1, 2, true);
    notifier_model(2, 1, true);
}

#[test]
fn a_wake_without_a_new_end_wakes_waiters_too() {
    loom::model(|| {
        let notifier = Arc::new(Notifier::new(0));
        let flag = Arc::new(AtomicBool::new(false));
        let reader = {
            let (notifier, flag) = (notifier.clone(), flag.clone());
            thread::spawn(move || {
                let waiter = Waiter::new(Waker::from(Arc::new(Unpark(thread::current()))));
                notifier.join(&waiter);
                while !flag.load(Ordering::SeqCst) {
                    notifier.register(&waiter);
                    if flag.load(Ordering::SeqCst) {
                        return;
                    }
                    thread::park();
                }
            })
        };
        flag.store(true, Ordering::SeqCst);
        notifier.wake();
        reader.join().unwrap();
    });
}

#[test]
#[should_panic]
fn broken_a_reader_that_looks_before_registering_can_sleep_forever() {
    notifier_model(1, 1, false);
}
