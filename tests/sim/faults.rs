//! Fault injection on the crash simulator: failed syncs (fsyncgate), a full
//! disk, failures while rolling, committing a consumer or creating a log,
//! a read-only or forbidden directory, interrupted and short writes, and a
//! sweep that fails every storage operation of a short workload in turn.
//!
//! The invariant after any failure is the prefix property: reopened (on the
//! live storage, or on a crash image taken at the failure), the log holds
//! every acknowledged-durable record, every record it holds is the one
//! appended at that offset, and appends work again.

use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backbone::sim::{CrashMode, Fault, FaultKind, OpKind, SimStorage};
use backbone::{Durability, Error, EventLog, Options, Raw, RecoveryMode, Start};

type Log = EventLog<Vec<u8>, Raw>;

const DIR: &str = "/log";
const DURABILITIES: [Durability; 3] = [
    Durability::EveryAppend,
    Durability::Interval(Duration::from_secs(3600)),
    Durability::Buffered,
];

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn options(storage: &SimStorage, durability: Durability) -> Options {
    Options::new()
        .segment_bytes(512)
        .max_record_bytes(128)
        .index_interval_bytes(64)
        .durability(durability)
        .simulated(storage)
}

fn open(storage: &SimStorage, durability: Durability) -> backbone::Result<Log> {
    options(storage, durability).open_with_codec(DIR, Raw)
}

/// Record `i`: 100 bytes (so a 512-byte segment holds three), unique.
fn payload(i: u64) -> Vec<u8> {
    (0..100u64)
        .map(|j| (i.wrapping_mul(31) ^ j.wrapping_mul(7)) as u8)
        .collect()
}

fn fault(after: u64, kind: FaultKind, persistent: bool, only: Option<OpKind>) -> Fault {
    Fault {
        after,
        kind,
        persistent,
        only,
    }
}

/// The OS error number behind `e`, if any.
fn os_error(e: &Error) -> Option<i32> {
    let source = std::error::Error::source(e)?;
    if let Some(io) = source.downcast_ref::<io::Error>() {
        return io.raw_os_error();
    }
    source
        .downcast_ref::<Arc<io::Error>>()
        .and_then(|io| io.raw_os_error())
}

fn is_poisoned<T: std::fmt::Debug>(result: &backbone::Result<T>) -> bool {
    matches!(result, Err(Error::Poisoned { .. }))
}

/// The prefix invariant on an opened log: `acked <= next <= appended`,
/// every record equal to the one appended at its offset, no gap, no error.
fn check_prefix(log: &Log, acked: u64, attempted: &[Vec<u8>]) -> Result<(), String> {
    let (first, next) = (log.first_offset(), log.next_offset());
    ensure!(
        acked <= next,
        "acknowledged records lost: next_offset {next} < {acked} acknowledged durable"
    );
    ensure!(
        next <= attempted.len() as u64,
        "phantom records: next_offset {next} > {} appended",
        attempted.len()
    );
    ensure!(first <= next, "first_offset {first} > next_offset {next}");
    let records: Vec<_> = log
        .read(Start::Beginning)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("read: {e}"))?;
    ensure!(
        records.len() as u64 == next - first,
        "read {} records from [{first}, {next})",
        records.len()
    );
    for (i, rec) in records.iter().enumerate() {
        let offset = first + i as u64;
        ensure!(rec.offset == offset, "offset {} at {offset}", rec.offset);
        ensure!(
            rec.value == attempted[offset as usize],
            "record {offset} differs from the one appended"
        );
    }
    let verified = log.verify().map_err(|e| format!("verify: {e}"))?;
    ensure!(verified == next - first, "verify counted {verified}");
    Ok(())
}

/// Opens `storage`, checks the prefix invariant, and appends (and syncs)
/// one more record, which must get the next offset and read back.
fn reopen_and_check(
    storage: &SimStorage,
    durability: Durability,
    acked: u64,
    attempted: &[Vec<u8>],
) -> Result<Log, String> {
    let log = open(storage, durability).map_err(|e| format!("reopen failed: {e}"))?;
    check_prefix(&log, acked, attempted)?;
    let next = log.next_offset();
    let extra = payload(10_000 + next);
    let offset = log
        .append(&extra)
        .map_err(|e| format!("append after reopen: {e}"))?;
    ensure!(
        offset == next,
        "append after reopen got {offset}, not {next}"
    );
    log.sync().map_err(|e| format!("sync after reopen: {e}"))?;
    let back = log.get(offset).map_err(|e| format!("get: {e}"))?;
    ensure!(
        back.map(|r| r.value) == Some(extra),
        "the record appended after reopen does not read back"
    );
    Ok(log)
}

/// Crash images of `storage` in `modes`, seeds `0..seeds` for the random
/// ones, each reopened and checked. Returns how many were checked.
fn check_crash_images(
    storage: &SimStorage,
    durability: Durability,
    acked: u64,
    attempted: &[Vec<u8>],
    modes: &[CrashMode],
    seeds: u64,
) -> Result<u64, String> {
    let mut states = 0;
    for &mode in modes {
        let seeds = match mode {
            CrashMode::PowerLossOrdered | CrashMode::PowerLossReorder => seeds,
            _ => 1,
        };
        for seed in 0..seeds {
            let image = storage.crash(seed, mode);
            image.set_capacity(None);
            reopen_and_check(&image, durability, acked, attempted)
                .map_err(|e| format!("{mode:?} seed {seed}: {e}"))?;
            states += 1;
        }
    }
    Ok(states)
}

// ---- EIO on fdatasync ---------------------------------------------------------

/// A failed `fdatasync` poisons the log: the failing call and every later
/// append, batch, sync, flush and close fail with `Poisoned`, even once the
/// device works again; earlier records stay readable; reopening (on the
/// live storage or after a power loss) keeps every acknowledged record and
/// appends work again.
#[test]
fn eio_on_fdatasync_poisons_the_log_until_reopened() {
    let mut problems = Vec::new();
    for durability in DURABILITIES {
        let ctx = |e: String| format!("{durability:?}: {e}");
        let s = SimStorage::new();
        let log = open(&s, durability).unwrap();
        let mut attempted: Vec<Vec<u8>> = Vec::new();
        for i in 0..5 {
            assert_eq!(log.append(&payload(i)).unwrap(), i);
            attempted.push(payload(i));
        }
        log.sync().unwrap();
        let acked = 5;
        s.inject(fault(1, FaultKind::Eio, false, Some(OpKind::SyncData)));
        let failed = if durability == Durability::EveryAppend {
            attempted.push(payload(5));
            log.append(&payload(5)).map(drop)
        } else {
            // Record 5 still fits in the second segment: no roll, no sync.
            for i in 5..6 {
                assert_eq!(log.append(&payload(i)).unwrap(), i);
                attempted.push(payload(i));
            }
            log.sync()
        };
        let Err(err) = failed else {
            panic!("{durability:?}: the call whose fdatasync failed returned Ok");
        };
        assert!(
            matches!(
                err,
                Error::Poisoned {
                    op: "fdatasync",
                    ..
                }
            ),
            "{durability:?}: {err:?}"
        );
        assert_eq!(os_error(&err), Some(5), "{durability:?}: {err:?}");
        assert!(
            err.to_string().contains(DIR),
            "{durability:?}: {err} names no path"
        );

        s.clear_faults();
        let next = log.next_offset();
        assert!(
            is_poisoned(&log.append(&payload(50))),
            "{durability:?}: append"
        );
        assert!(
            is_poisoned(&log.append_batch(&[payload(51), payload(52)])),
            "{durability:?}: append_batch"
        );
        assert!(
            is_poisoned(&log.append_expected(next, &[payload(53)])),
            "{durability:?}: append_expected"
        );
        assert!(is_poisoned(&log.sync()), "{durability:?}: sync");
        assert!(is_poisoned(&log.flush()), "{durability:?}: flush");
        let consumer = log.consumer("after-failure").unwrap();
        assert!(
            is_poisoned(&consumer.commit(next)),
            "{durability:?}: a commit that needs the unsynced records durable"
        );
        drop(consumer);
        assert!(is_poisoned(&log.clone().close()), "{durability:?}: close");

        // Reads of what was acknowledged still work.
        for i in 0..acked {
            let rec = log
                .get(i)
                .unwrap_or_else(|e| panic!("{durability:?}: get({i}): {e}"));
            assert_eq!(rec.map(|r| r.value), Some(payload(i)), "{durability:?}");
        }
        // (A failing read is collected, not fatal, so the reopen checks
        // below still run.)
        // A Buffered append acknowledged before the failure but never
        // written is reported at the end of the read, as the failure; no
        // record is ever skipped silently.
        let mut read = Vec::new();
        let mut trailing = None;
        for item in log.read(Start::Beginning) {
            match item {
                Ok(rec) if trailing.is_none() => read.push(rec),
                Ok(rec) => problems.push(format!(
                    "{durability:?}: record {} after the error",
                    rec.offset
                )),
                Err(e) => trailing = Some(e),
            }
        }
        assert!(read.len() as u64 >= acked, "{durability:?}");
        for rec in &read {
            assert_eq!(rec.value, attempted[rec.offset as usize], "{durability:?}");
        }
        match trailing {
            None => {}
            Some(Error::Poisoned { .. }) if durability == Durability::Buffered => {}
            Some(e) => problems.push(format!(
                "{durability:?}: read(Beginning) of the acknowledged records after the \
                 failed sync: {e}"
            )),
        }

        let image = s.crash(7, CrashMode::PowerLossNothing);
        let ordered = s.crash(7, CrashMode::PowerLossOrdered);
        drop(log);
        reopen_and_check(&image, durability, acked, &attempted)
            .unwrap_or_else(|e| panic!("{}", ctx(format!("after PowerLossNothing: {e}"))));
        reopen_and_check(&ordered, durability, acked, &attempted)
            .unwrap_or_else(|e| panic!("{}", ctx(format!("after PowerLossOrdered: {e}"))));
        reopen_and_check(&s, durability, acked, &attempted)
            .unwrap_or_else(|e| panic!("{}", ctx(format!("live storage: {e}"))));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- ENOSPC ---------------------------------------------------------------------

fn used(s: &SimStorage) -> u64 {
    s.files().iter().map(|(_, len)| len).sum()
}

/// With the disk full, the append that needs a new segment fails with
/// `StorageFull`, nothing torn is ever visible, later appends are refused,
/// and with more room a reopened log holds every acknowledged record.
#[test]
fn enospc_fails_appends_without_losing_or_tearing_records() {
    let mut problems = Vec::new();
    for durability in DURABILITIES {
        for batch in [1usize, 4] {
            let ctx = format!("{durability:?}, batches of {batch}");
            let s = SimStorage::new();
            let log = open(&s, durability).unwrap();
            // Room for about two more segments and their indexes.
            s.set_capacity(Some(used(&s) + 1600));
            let mut attempted: Vec<Vec<u8>> = Vec::new();
            let mut acked = 0;
            let err = loop {
                assert!(attempted.len() < 1000, "{ctx}: the disk never filled");
                let start = attempted.len() as u64;
                let values: Vec<_> = (start..start + batch as u64).map(payload).collect();
                attempted.extend(values.iter().cloned());
                match log.append_batch(&values) {
                    Ok(range) => {
                        assert_eq!(range, start..start + batch as u64, "{ctx}");
                        if durability == Durability::EveryAppend {
                            acked = range.end;
                        }
                    }
                    Err(e) => break e,
                }
                // A sync now and then makes the other modes acknowledge too.
                if attempted.len().is_multiple_of(5) {
                    match log.sync() {
                        Ok(()) => acked = attempted.len() as u64,
                        Err(e) => break e,
                    }
                }
            };
            assert!(
                matches!(err, Error::Poisoned { .. } | Error::Io { .. }),
                "{ctx}: {err:?}"
            );
            assert_eq!(
                err.io_kind(),
                Some(ErrorKind::StorageFull),
                "{ctx}: {err:?}"
            );
            assert!(err.to_string().contains(DIR), "{ctx}: {err}");

            // Nothing torn is visible, and what is visible is what was
            // appended; the log's offsets agree with what readers see.
            let read: Vec<_> = log
                .read(Start::Beginning)
                .collect::<Result<Vec<_>, _>>()
                .unwrap_or_else(|e| panic!("{ctx}: read after ENOSPC: {e}"));
            assert!(read.len() as u64 >= acked, "{ctx}");
            for (i, rec) in read.iter().enumerate() {
                assert_eq!(rec.offset, i as u64, "{ctx}");
                assert_eq!(rec.value, attempted[i], "{ctx}: record {i}");
            }
            if log.next_offset() != read.len() as u64 {
                problems.push(format!(
                    "{ctx}: next_offset() is {} but readers see {} records after the \
                     failed roll",
                    log.next_offset(),
                    read.len()
                ));
            }
            let refused = log.append(&payload(999));
            assert!(
                refused.is_err(),
                "{ctx}: an append after ENOSPC: {refused:?}"
            );
            // A consumer cannot be created on a full disk either, cleanly.
            if let Err(e) = log.consumer("late") {
                assert_eq!(e.io_kind(), Some(ErrorKind::StorageFull), "{ctx}: {e:?}");
            }

            let images: Vec<_> = (0..20)
                .map(|seed| s.crash(seed, CrashMode::PowerLossOrdered))
                .collect();
            drop(log);
            s.set_capacity(None);
            let log = reopen_and_check(&s, durability, acked, &attempted)
                .unwrap_or_else(|e| panic!("{ctx}: live storage: {e}"));
            let late = log
                .consumer("late")
                .unwrap_or_else(|e| panic!("{ctx}: consumer after ENOSPC: {e}"));
            late.commit(1).unwrap();
            drop((late, log));
            for (seed, image) in images.iter().enumerate() {
                image.set_capacity(None);
                reopen_and_check(image, durability, acked, &attempted)
                    .unwrap_or_else(|e| panic!("{ctx}: PowerLossOrdered seed {seed}: {e}"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- failures while rolling to a new segment ------------------------------------

/// Runs appends of `payload(i)` from `from` until one fails; returns the
/// error, if any, having recorded every attempted record.
fn append_until_error(
    log: &Log,
    durability: Durability,
    range: std::ops::Range<u64>,
    attempted: &mut Vec<Vec<u8>>,
    acked: &mut u64,
) -> Option<Error> {
    for i in range {
        attempted.push(payload(i));
        match log.append(&payload(i)) {
            Ok(offset) => {
                assert_eq!(offset, i);
                if durability == Durability::EveryAppend {
                    *acked = i + 1;
                }
            }
            Err(e) => return Some(e),
        }
    }
    None
}

/// A failure at any step of creating the next segment (its open, its
/// preallocation, its header write and sync, the directory sync) fails the
/// append cleanly, poisons the log, and loses nothing acknowledged.
#[test]
fn failures_while_rolling_to_a_new_segment() {
    let kinds = [
        OpKind::Open,
        OpKind::SetLen,
        OpKind::Write,
        OpKind::SyncData,
        OpKind::SyncDir,
        OpKind::Map,
        OpKind::Remove,
    ];
    let mut cases = 0;
    let mut states = 0;
    for durability in DURABILITIES {
        for kind in kinds {
            for after in 1..=4 {
                let ctx = format!("{durability:?}, {kind:?} #{after} of the roll");
                let s = SimStorage::new();
                let log = open(&s, durability).unwrap();
                let mut attempted = Vec::new();
                let mut acked = 0;
                // Three records fill the first segment; the fourth rolls.
                assert!(
                    append_until_error(&log, durability, 0..3, &mut attempted, &mut acked)
                        .is_none()
                );
                log.sync().unwrap();
                acked = 3;
                s.inject(fault(after, FaultKind::Eio, false, Some(kind)));
                let err = append_until_error(&log, durability, 3..7, &mut attempted, &mut acked);
                let err = err.or_else(|| log.sync().err());
                if let Some(err) = &err {
                    assert!(err.to_string().contains(DIR), "{ctx}: {err}");
                    s.clear_faults();
                    assert!(
                        log.append(&payload(100)).is_err() && log.sync().is_err(),
                        "{ctx}: the log accepted writes after {err:?}"
                    );
                } else {
                    acked = attempted.len() as u64;
                }
                states += check_crash_images(&s, durability, acked, &attempted, &CrashMode::ALL, 8)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                drop(log);
                s.clear_faults();
                reopen_and_check(&s, durability, acked, &attempted)
                    .unwrap_or_else(|e| panic!("{ctx}: live storage: {e}"));
                cases += 1;
            }
        }
    }
    println!("roll failures: {cases} cases, {states} crash states checked");
}

// ---- failures committing a consumer ----------------------------------------------

/// A consumer commit whose write or sync fails returns `Err`; after a
/// failed sync later commits are refused; reopened, the position is the
/// previous or the new one, never anything else.
#[test]
fn failed_consumer_commits_keep_the_old_or_the_new_position() {
    let mut states = 0;
    for durability in DURABILITIES {
        for kind in [OpKind::SyncData, OpKind::Write] {
            let ctx = format!("{durability:?}, {kind:?} fails");
            let s = SimStorage::new();
            let log = open(&s, durability).unwrap();
            let values: Vec<_> = (0..8).map(payload).collect();
            log.append_batch(&values).unwrap();
            log.sync().unwrap();
            let consumer = log.consumer("shipping").unwrap();
            consumer.commit(2).unwrap();
            s.inject(fault(1, FaultKind::Eio, false, Some(kind)));
            let err = consumer.commit(6).expect_err(&ctx);
            assert!(err.to_string().contains("shipping"), "{ctx}: {err}");
            assert_eq!(os_error(&err), Some(5), "{ctx}: {err:?}");
            s.clear_faults();
            assert_eq!(consumer.position(), 2, "{ctx}: a failed commit moved it");
            if kind == OpKind::SyncData {
                assert!(
                    is_poisoned(&consumer.commit(5)),
                    "{ctx}: a commit after the failed sync"
                );
                assert_eq!(consumer.position(), 2, "{ctx}");
            }
            let images: Vec<_> = CrashMode::ALL
                .iter()
                .flat_map(|&mode| (0..16).map(move |seed| (mode, seed)))
                .map(|(mode, seed)| ((mode, seed), s.crash(seed, mode)))
                .collect();
            drop((consumer, log));
            let check = |storage: &SimStorage, what: &str| {
                let log = open(storage, durability)
                    .unwrap_or_else(|e| panic!("{ctx}, {what}: reopen: {e}"));
                check_prefix(&log, 8, &values).unwrap_or_else(|e| panic!("{ctx}, {what}: {e}"));
                let consumer = log
                    .consumer("shipping")
                    .unwrap_or_else(|e| panic!("{ctx}, {what}: consumer: {e}"));
                let position = consumer.position();
                assert!(
                    position == 2 || position == 6,
                    "{ctx}, {what}: position {position}, committed 2 then tried 6"
                );
                consumer
                    .commit(7)
                    .unwrap_or_else(|e| panic!("{ctx}, {what}: commit after reopen: {e}"));
            };
            for ((mode, seed), image) in &images {
                check(image, &format!("{mode:?} seed {seed}"));
                states += 1;
            }
            check(&s, "live storage");
        }
    }
    println!("consumer commit failures: {states} crash states checked");
}

// ---- failures while creating a log ----------------------------------------------

fn op_count_of_first_open(durability: Durability) -> u64 {
    let s = SimStorage::new();
    let log = open(&s, durability).unwrap();
    let ops = s.op_count();
    drop(log);
    ops
}

/// A failure at every single storage operation of the very first open (the
/// META file, the first segment, its index, the directory syncs) makes
/// `open` return an error naming the log's path; a later open on the same
/// storage, or on a power-loss image of it, succeeds and the log works.
#[test]
fn failures_while_creating_a_log() {
    let durability = Durability::EveryAppend;
    let total = op_count_of_first_open(durability);
    let mut failed_opens = 0;
    let mut states = 0;
    for n in 1..=total {
        for kind in [FaultKind::Eio, FaultKind::Enospc] {
            let ctx = format!("{kind:?} at op {n} of {total} of the first open");
            let s = SimStorage::new();
            s.inject(Fault::new(n, kind));
            match open(&s, durability) {
                Ok(log) => {
                    // The fault hit something open could do without.
                    reopen_and_check_live(log, &ctx);
                    continue;
                }
                Err(e) => {
                    failed_opens += 1;
                    assert!(e.to_string().contains(DIR), "{ctx}: {e} names no path");
                    assert!(e.io_kind().is_some(), "{ctx}: {e:?} hides the I/O error");
                }
            }
            states += check_crash_images(&s, durability, 0, &[], &CrashMode::ALL, 16)
                .unwrap_or_else(|e| panic!("{ctx}: {e}"));
            reopen_and_check(&s, durability, 0, &[])
                .unwrap_or_else(|e| panic!("{ctx}: the next open: {e}"));
        }
    }
    println!(
        "first-open failures: {total} operations x 2 errors, {failed_opens} failed opens, \
         {states} crash states checked"
    );
}

fn reopen_and_check_live(log: Log, ctx: &str) {
    log.append(&payload(0))
        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    log.sync().unwrap_or_else(|e| panic!("{ctx}: {e}"));
}

// ---- a read-only or forbidden directory -----------------------------------------

/// `EROFS` and `EACCES` at open are a clear error naming the path, with the
/// matching `io_kind`, and nothing is created.
#[test]
fn read_only_and_forbidden_directories_refuse_to_open() {
    let cases = [
        (FaultKind::Erofs, ErrorKind::ReadOnlyFilesystem),
        (FaultKind::Eacces, ErrorKind::PermissionDenied),
    ];
    for (kind, io_kind) in cases {
        // Everything fails.
        let s = SimStorage::new();
        s.inject(fault(1, kind, true, None));
        let err = open(&s, Durability::EveryAppend).expect_err("open");
        assert_eq!(err.io_kind(), Some(io_kind), "{kind:?}: {err:?}");
        assert!(err.to_string().contains(DIR), "{kind:?}: {err}");
        assert!(s.files().is_empty(), "{kind:?}: created {:?}", s.files());

        // Only creating fails (the directory cannot be made).
        let s = SimStorage::new();
        s.inject(fault(1, kind, true, Some(OpKind::CreateDir)));
        let err = open(&s, Durability::EveryAppend).expect_err("open");
        assert_eq!(err.io_kind(), Some(io_kind), "{kind:?}: {err:?}");
        assert!(err.to_string().contains(DIR), "{kind:?}: {err}");
        assert!(s.files().is_empty(), "{kind:?}: created {:?}", s.files());

        // An existing log whose files can no longer be opened.
        let s = SimStorage::new();
        let log = open(&s, Durability::EveryAppend).unwrap();
        log.append(&payload(0)).unwrap();
        log.close().unwrap();
        let before = s.files();
        s.inject(fault(1, kind, true, Some(OpKind::Open)));
        let err = open(&s, Durability::EveryAppend).expect_err("open");
        assert_eq!(err.io_kind(), Some(io_kind), "{kind:?}: {err:?}");
        assert!(err.to_string().contains(DIR), "{kind:?}: {err}");
        assert_eq!(s.files(), before, "{kind:?}: files changed");
        s.clear_faults();
        reopen_and_check(&s, Durability::EveryAppend, 1, &[payload(0)])
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }
}

// ---- EINTR and short writes -----------------------------------------------------

/// Interrupted and short writes are retried: every append succeeds, across
/// rolls and batches, and reads back exactly, before and after a reopen.
#[test]
fn eintr_and_short_writes_are_absorbed() {
    for durability in DURABILITIES {
        for kind in [FaultKind::Eintr, FaultKind::ShortWrite] {
            for every in [1, 3] {
                let ctx = format!("{durability:?}, {kind:?} on every write from #{every}");
                let s = SimStorage::new();
                s.inject(fault(every, kind, true, Some(OpKind::Write)));
                let log = open(&s, durability).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
                let mut attempted = Vec::new();
                for i in 0..10 {
                    attempted.push(payload(i));
                    let offset = log
                        .append(&payload(i))
                        .unwrap_or_else(|e| panic!("{ctx}: append {i}: {e}"));
                    assert_eq!(offset, i, "{ctx}");
                }
                let batch: Vec<_> = (10..17).map(payload).collect();
                attempted.extend(batch.iter().cloned());
                assert_eq!(log.append_batch(&batch).unwrap(), 10..17, "{ctx}");
                log.sync().unwrap_or_else(|e| panic!("{ctx}: sync: {e}"));
                let consumer = log.consumer("c").unwrap();
                consumer
                    .commit(9)
                    .unwrap_or_else(|e| panic!("{ctx}: commit: {e}"));
                check_prefix(&log, 17, &attempted).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert!(log.stats().segments > 2, "{ctx}: no roll");
                let image = s.crash(1, CrashMode::PowerLossNothing);
                drop((consumer, log));
                for storage in [&image, &s] {
                    let log = reopen_and_check(storage, durability, 17, &attempted)
                        .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    assert_eq!(log.consumer("c").unwrap().position(), 9, "{ctx}");
                }
            }
        }
    }
}

// ---- fail the N-th storage operation, for every N -------------------------------

/// What a workload achieved before its first error.
#[derive(Debug, Default)]
struct Progress {
    attempted: Vec<Vec<u8>>,
    acked: u64,
    /// `Some(first)` once `truncate_before` returned it.
    truncated: Option<u64>,
    /// Whether the commit of position 5 was attempted, and whether it
    /// returned `Ok`.
    commit: Option<bool>,
    /// Whether the consumer was asked for (its file may exist).
    consumer: bool,
    error: Option<String>,
}

const COMMIT_AT: u64 = 5;
const TRUNCATE_AT: u64 = 4;

/// The workload: open, appends with rolls, a batch, sync, a consumer and its
/// commit, truncate_before, one more append, close; stops at the first
/// error. Returns the log (if open succeeded and it was not closed).
fn workload(s: &SimStorage, durability: Durability, p: &mut Progress) -> Option<Log> {
    let log = match open(s, durability) {
        Ok(log) => log,
        Err(e) => {
            p.error = Some(format!("open: {e}"));
            return None;
        }
    };
    macro_rules! step {
        ($what:expr, $call:expr) => {
            match $call {
                Ok(value) => value,
                Err(e) => {
                    p.error = Some(format!("{}: {e}", $what));
                    return Some(log);
                }
            }
        };
    }
    let every = durability == Durability::EveryAppend;
    for i in 0..7 {
        p.attempted.push(payload(i));
        step!("append", log.append(&payload(i)));
        if every {
            p.acked = i + 1;
        }
    }
    let batch: Vec<_> = (7..11).map(payload).collect();
    p.attempted.extend(batch.iter().cloned());
    step!("append_batch", log.append_batch(&batch));
    if every {
        p.acked = 11;
    }
    step!("sync", log.sync());
    p.acked = 11;
    p.consumer = true;
    let consumer = step!("consumer", log.consumer("c"));
    p.commit = Some(false);
    step!("commit", consumer.commit(COMMIT_AT));
    p.commit = Some(true);
    drop(consumer);
    let first = step!("truncate_before", log.truncate_before(TRUNCATE_AT));
    p.truncated = Some(first);
    p.attempted.push(payload(11));
    step!("append", log.append(&payload(11)));
    if every {
        p.acked = 12;
    }
    step!("close", log.clone().close());
    p.acked = 12;
    Some(log)
}

/// The prefix invariant after a failure at any point of the workload, plus
/// what it says of the first offset and the consumer.
fn check_after_failure(
    storage: &SimStorage,
    durability: Durability,
    p: &Progress,
) -> Result<(), String> {
    let log = open(storage, durability).map_err(|e| format!("reopen failed: {e}"))?;
    check_prefix(&log, p.acked, &p.attempted)?;
    let (first, next) = (log.first_offset(), log.next_offset());
    match p.truncated {
        Some(expected) => ensure!(
            first == expected,
            "first offset {first}, but truncate_before returned {expected}"
        ),
        None => ensure!(
            first <= TRUNCATE_AT,
            "first offset {first}: more was removed than truncate_before({TRUNCATE_AT}) may"
        ),
    }
    if p.consumer {
        let consumer = log.consumer("c").map_err(|e| format!("consumer: {e}"))?;
        let position = consumer.position();
        ensure!(
            position <= next,
            "consumer at {position} past the end {next}"
        );
        match p.commit {
            Some(true) => ensure!(
                position == COMMIT_AT,
                "consumer at {position}, but commit({COMMIT_AT}) returned Ok"
            ),
            _ => ensure!(
                position == first || position == COMMIT_AT,
                "consumer at {position}: neither its creation ({first}) nor {COMMIT_AT}"
            ),
        }
        drop(consumer);
    }
    drop(log);
    reopen_and_check(storage, durability, p.acked, &p.attempted).map(drop)
}

#[test]
fn every_storage_operation_of_a_workload_can_fail() {
    let started = Instant::now();
    let (mut runs, mut stopped, mut states) = (0, 0, 0);
    for durability in DURABILITIES {
        let clean = SimStorage::new();
        let mut progress = Progress::default();
        let log = workload(&clean, durability, &mut progress);
        assert!(
            progress.error.is_none(),
            "{durability:?}: the workload fails without faults: {:?}",
            progress.error
        );
        drop(log);
        let total = clean.op_count();
        for n in 1..=total {
            for persistent in [false, true] {
                let ctx = format!(
                    "{durability:?}, EIO at op {n} of {total}{}",
                    if persistent {
                        " and every later op"
                    } else {
                        ""
                    }
                );
                let s = SimStorage::new();
                s.inject(fault(n, FaultKind::Eio, persistent, None));
                let mut p = Progress::default();
                let log = workload(&s, durability, &mut p);
                runs += 1;
                stopped += u64::from(p.error.is_some());
                // A power loss at the failure.
                for seed in 0..8 {
                    let image = s.crash(seed, CrashMode::PowerLossOrdered);
                    check_after_failure(&image, durability, &p).unwrap_or_else(|e| {
                        panic!(
                            "{ctx}, stopped by {:?}, PowerLossOrdered seed {seed}: {e}",
                            p.error
                        )
                    });
                    states += 1;
                }
                let image = s.crash(n, CrashMode::PowerLossReorder);
                check_after_failure(&image, durability, &p).unwrap_or_else(|e| {
                    panic!("{ctx}, stopped by {:?}, PowerLossReorder: {e}", p.error)
                });
                states += 1;
                // Or the process goes on and reopens on the live storage.
                drop(log);
                s.clear_faults();
                check_after_failure(&s, durability, &p)
                    .unwrap_or_else(|e| panic!("{ctx}, stopped by {:?}, live: {e}", p.error));
            }
        }
    }
    println!(
        "fail-the-N-th-op sweep: {runs} runs ({stopped} stopped by the fault), \
         {states} crash states checked in {:.2?}",
        started.elapsed()
    );
}

/// A directory that cannot be listed is an error, never taken for a new,
/// empty log (which would write a fresh `META` over the log's). Found by
/// mutation testing: no test failed when any listing error was treated
/// like a missing directory.
#[test]
fn a_log_directory_that_cannot_be_listed_is_an_error() {
    let storage = SimStorage::new();
    let log = open(&storage, Durability::EveryAppend).unwrap();
    log.append(&payload(0)).unwrap();
    log.close().unwrap();
    for kind in [FaultKind::Eio, FaultKind::Eacces] {
        storage.inject(fault(1, kind, false, Some(OpKind::List)));
        let err = open(&storage, Durability::EveryAppend).unwrap_err();
        assert!(
            matches!(err, Error::Io { op: "list", .. }),
            "{kind:?}: {err:?}"
        );
        let log = open(&storage, Durability::EveryAppend).unwrap();
        assert_eq!(log.get(0).unwrap().unwrap().value, payload(0), "{kind:?}");
        log.close().unwrap();
    }
}

/// The salvage mode cuts the log at the first damaged record, so it must
/// tell damage from a failure to read: an I/O error while it checks the
/// sealed segments is an error, and nothing is cut. Found by mutation
/// testing: no test failed when every error counted as damage.
#[test]
fn the_salvage_mode_cuts_at_damage_never_at_an_io_error() {
    let storage = SimStorage::new();
    let log = open(&storage, Durability::EveryAppend).unwrap();
    for i in 0..20 {
        log.append(&payload(i)).unwrap();
    }
    assert!(log.stats().segments > 3, "{:?}", log.stats());
    log.close().unwrap();
    let salvage = || {
        options(&storage, Durability::EveryAppend).recovery(RecoveryMode::TruncateAtFirstCorruption)
    };
    // The n-th open of a file and every later one fail, for each n the
    // salvage open reaches: whatever it was reading, nothing is cut.
    let mut failed = 0;
    for n in 1..=40 {
        storage.inject(fault(n, FaultKind::Eio, true, Some(OpKind::Open)));
        let result = salvage().open_with_codec::<Vec<u8>, _>(DIR, Raw);
        storage.clear_faults();
        match result {
            Ok(log) => {
                drop(log);
                break;
            }
            Err(err) => {
                assert!(matches!(err, Error::Io { .. }), "open {n}: {err:?}");
                failed += 1;
            }
        }
        let log = open(&storage, Durability::EveryAppend).unwrap();
        assert_eq!(
            log.next_offset(),
            20,
            "open {n}: the failed salvage cut the log"
        );
        for i in 0..20 {
            assert_eq!(
                log.get(i).unwrap().unwrap().value,
                payload(i),
                "open {n}: record {i}"
            );
        }
    }
    assert!(failed > 3, "the salvage open made only {failed} opens");
}

/// Recovery cuts a torn tail only once its bytes are saved in a durable
/// `.damaged` copy. When the copy cannot be written (here, a full disk),
/// opening fails naming the copy and cuts nothing; once there is room,
/// it opens, saves and cuts. Before, a failed copy was skipped and the
/// bytes were cut anyway.
#[test]
fn a_torn_tail_is_cut_only_after_its_copy_is_saved() {
    let storage = SimStorage::new();
    let log = open(&storage, Durability::EveryAppend).unwrap();
    log.append(&payload(0)).unwrap();
    log.append(&payload(1)).unwrap();
    log.close().unwrap();
    let seg = std::path::Path::new(DIR).join(format!("{:020}.seg", 0));
    let mut bytes = storage.read_file(&seg).unwrap();
    // docs/FORMAT.md: a 64-byte segment header, then version-2 frames of
    // 28 bytes plus the payload (100 bytes here).
    let end = 64 + 2 * (28 + 100);
    assert!(bytes[end..].iter().all(|&b| b == 0), "records end at {end}");
    bytes[end..end + 30].fill(0xC3);
    storage.write_file(&seg, &bytes);
    let copy = std::path::Path::new(DIR).join(format!("{:020}.{end}.damaged", 0));

    // Fail the n-th operation of each kind the copy needs, for every n up
    // to the copy's own: each failed open leaves the segment uncut, and
    // one of them is the copy's.
    for (op, kind) in [
        (OpKind::Open, FaultKind::Enospc),
        (OpKind::Write, FaultKind::Enospc),
        (OpKind::SyncData, FaultKind::Eio),
    ] {
        let mut hit = false;
        for n in 1..=20 {
            storage.write_file(&seg, &bytes);
            if storage.read_file(&copy).is_some() {
                storage.remove_file_durably(&copy);
            }
            storage.inject(fault(n, kind, false, Some(op)));
            let opened = open(&storage, Durability::EveryAppend);
            storage.clear_faults();
            let err = match opened {
                // A failure recovery can absorb (an index it rebuilds):
                // then the copy was saved before the cut.
                Ok(log) => {
                    assert_eq!(
                        storage.read_file(&copy),
                        Some(vec![0xC3; 30]),
                        "{op:?} #{n}"
                    );
                    drop(log);
                    continue;
                }
                Err(err) => err,
            };
            assert_eq!(
                storage.read_file(&seg).unwrap(),
                bytes,
                "{op:?} #{n}: nothing cut"
            );
            if let Error::Io { op: what, path, .. } = &err {
                if *what == "save the cut tail to" {
                    assert_eq!(*path, copy, "{op:?} #{n}");
                    hit = true;
                    break;
                }
            }
        }
        assert!(hit, "{op:?}: no failure reached the copy");
    }
    let log = open(&storage, Durability::EveryAppend).unwrap();
    let report = log.recovery_report();
    assert_eq!(report.damaged_copy.as_deref(), Some(copy.as_path()));
    assert_eq!(storage.read_file(&copy).unwrap(), vec![0xC3; 30]);
    assert_eq!(log.next_offset(), 2);
    assert_eq!(log.get(1).unwrap().unwrap().value, payload(1));
}
