//! Materialized tables: the contract of issue 12 (`get`, `wait_for`,
//! `changes`), restarts that fold only the records after the checkpoint
//! (counted through the fold function), what a damaged or leftover
//! snapshot does to a start, a table rebuilt by another reader from its
//! snapshot and changelog, and bad input (names, a table started twice, a
//! panicking fold, the key limit, a source closed under a table).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backbone::stream::{Table, TableChange, TableOptions};
use backbone::{CorruptionKind, Error, EventLog, Options, Start};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StockDelta {
    sku: String,
    delta: i64,
}

/// The `i`th update of a run over `keys` keys: keys are visited in a
/// scattered order, and deltas are positive and negative.
fn update(i: u64, keys: u64) -> StockDelta {
    StockDelta {
        sku: format!("sku-{}", i.wrapping_mul(7919) % keys),
        delta: (i % 13) as i64 - 6,
    }
}

/// Appends updates `from..to` in batches, returning the log's end.
fn append_updates(log: &EventLog<StockDelta>, from: u64, to: u64, keys: u64) -> u64 {
    let mut end = log.next_offset();
    let mut i = from;
    while i < to {
        let batch: Vec<StockDelta> = (i..to.min(i + 10_000)).map(|i| update(i, keys)).collect();
        end = log.append_batch(&batch).unwrap().end;
        i += batch.len() as u64;
    }
    end
}

/// The table computed directly.
fn expected(to: u64, keys: u64) -> HashMap<String, i64> {
    let mut stock = HashMap::new();
    for i in 0..to {
        let d = update(i, keys);
        *stock.entry(d.sku).or_default() += d.delta;
    }
    stock
}

/// The stock table, with a fold that counts its calls in `folds`.
fn stock_table(
    log: &EventLog<StockDelta>,
    folds: &Arc<AtomicU64>,
    options: TableOptions,
) -> backbone::Result<Table<String, i64>> {
    let folds = folds.clone();
    log.table_with(
        "stock",
        |d| d.sku.clone(),
        move |s: &mut i64, d| {
            folds.fetch_add(1, Ordering::Relaxed);
            *s += d.delta;
        },
        options,
    )
}

fn table_dir(source: &Path, name: &str) -> PathBuf {
    let mut tables = source.as_os_str().to_owned();
    tables.push(".tables");
    PathBuf::from(tables).join(name)
}

/// Small changelog segments, so that snapshots also compact it.
fn small_segments() -> TableOptions {
    TableOptions::new().changelog(Options::new().segment_bytes(256 << 10))
}

#[test]
fn the_contract_snippet_works() -> backbone::Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let stock_deltas: EventLog<StockDelta> = EventLog::open(tmp.path().join("stock-deltas"))?;
    stock_deltas.append_batch(&[
        StockDelta {
            sku: "sku-42".into(),
            delta: 10,
        },
        StockDelta {
            sku: "sku-7".into(),
            delta: 3,
        },
    ])?;

    let stock: Table<String, i64> =
        stock_deltas.table("stock", |d| d.sku.clone(), |s: &mut i64, d| *s += d.delta)?;
    let offset = stock_deltas.append(&StockDelta {
        sku: "sku-42".into(),
        delta: -4,
    })? + 1;
    stock.wait_for(offset)?;
    let on_hand: Option<i64> = stock.get("sku-42");
    assert_eq!(on_hand, Some(6));
    assert_eq!(stock.get("sku-7"), Some(3));
    assert_eq!(stock.get("sku-0"), None);
    assert_eq!(
        (stock.name(), stock.position(), stock.lag()),
        ("stock", 3, 0)
    );
    assert_eq!((stock.len(), stock.is_empty()), (2, false));
    assert!(!stock.is_finished());

    // The changelog as a subscription: its last value per key is the table.
    let changes = stock.changes(Start::Beginning)?;
    let mut last: HashMap<String, i64> = HashMap::new();
    while let Some(change) = changes.recv_timeout(Duration::from_millis(200))? {
        let TableChange { key, value } = change.value;
        last.insert(key, value);
    }
    assert_eq!(last, stock.to_map());
    // And live: a change made now follows.
    let offset = stock_deltas.append(&StockDelta {
        sku: "sku-7".into(),
        delta: 1,
    })? + 1;
    stock.wait_for(offset)?;
    let change = changes
        .recv_timeout(Duration::from_secs(10))?
        .expect("a live change");
    assert_eq!(
        change.value,
        TableChange {
            key: "sku-7".to_owned(),
            value: 4
        }
    );
    assert_eq!(stock.get("sku-7"), Some(4));

    stock.stop();
    stock.join()?;
    // Stopped, it still answers.
    assert_eq!(stock.get("sku-42"), Some(6));
    assert!(stock.is_finished());
    Ok(())
}

/// Issue 12: "A table of 1,000,000 updates restarts from its checkpoint
/// replaying only the records after it (counted by the test through the
/// fold function)."
fn restarts_in_proportion_to_what_is_new(updates: u64, keys: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let source_dir = tmp.path().join("stock-deltas");
    let log: EventLog<StockDelta> = EventLog::open(&source_dir).unwrap();
    let end = append_updates(&log, 0, updates, keys);

    let folds = Arc::new(AtomicU64::new(0));
    let table = stock_table(&log, &folds, small_segments()).unwrap();
    table.wait_for(end).unwrap();
    assert_eq!(folds.load(Ordering::Relaxed), updates);
    assert_eq!(table.to_map(), expected(updates, keys));
    assert_eq!(table.len() as u64, keys);

    // Snapshots were written and the changelog compacted below them; a
    // reader rebuilds the same table from the snapshot plus the tail.
    let dir = table_dir(&source_dir, "stock");
    assert!(dir.join("snapshot").exists());
    let changelog: EventLog<TableChange<String, i64>> = Options::new()
        .read_only()
        .open(dir.join("changelog"))
        .unwrap();
    assert!(
        changelog.first_offset() > 0,
        "the changelog was never compacted"
    );
    assert!(
        changelog.len() < updates / 2,
        "{} changes kept of {updates}",
        changelog.len()
    );
    drop(changelog);
    let (loaded, position) = Table::<String, i64>::load(&log, "stock").unwrap();
    assert_eq!(position, end);
    assert_eq!(loaded, table.to_map());

    table.stop();
    table.join().unwrap();
    drop(table);

    let end = append_updates(&log, updates, updates + 1000, keys);
    let folds = Arc::new(AtomicU64::new(0));
    let table = stock_table(&log, &folds, small_segments()).unwrap();
    table.wait_for(end).unwrap();
    // Nothing more is folded once it is idle.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(folds.load(Ordering::Relaxed), 1000);
    assert_eq!(table.to_map(), expected(updates + 1000, keys));
    drop(table);
}

#[test]
fn a_restart_folds_only_the_records_after_its_checkpoint() {
    restarts_in_proportion_to_what_is_new(200_000, 20_000);
}

/// The figure; a few seconds.
#[test]
fn a_table_of_a_million_updates_restarts_folding_only_whats_new() {
    restarts_in_proportion_to_what_is_new(1_000_000, 100_000);
}

#[test]
fn dropping_a_table_mid_stream_loses_and_repeats_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let log: EventLog<StockDelta> = EventLog::open(tmp.path().join("deltas")).unwrap();
    let end = append_updates(&log, 0, 50_000, 1000);
    let folds = Arc::new(AtomicU64::new(0));
    let options = || TableOptions::new().batch_size(64);
    // Dropped without `stop`, while it is still applying records.
    let table = stock_table(&log, &folds, options()).unwrap();
    while table.position() < 1000 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let stopped_at = table.position();
    drop(table);
    let first_run = folds.load(Ordering::Relaxed);
    assert!(first_run >= stopped_at, "{first_run} < {stopped_at}");
    let table = stock_table(&log, &folds, options()).unwrap();
    // The next run starts where the last committed batch ended.
    assert_eq!(table.position(), first_run);
    table.wait_for(end).unwrap();
    assert_eq!(folds.load(Ordering::Relaxed), end);
    assert_eq!(table.to_map(), expected(50_000, 1000));
}

#[test]
fn a_damaged_snapshot_is_an_error_and_a_leftover_tmp_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let source_dir = tmp.path().join("deltas");
    let log: EventLog<StockDelta> = EventLog::open(&source_dir).unwrap();
    // More changes than keys, and than the snapshot threshold (4096): a
    // snapshot is due.
    let end = append_updates(&log, 0, 20_000, 5_000);
    let folds = Arc::new(AtomicU64::new(0));
    let table = stock_table(&log, &folds, TableOptions::new()).unwrap();
    table.wait_for(end).unwrap();
    drop(table);
    let snapshot = table_dir(&source_dir, "stock").join("snapshot");
    let good = std::fs::read(&snapshot).expect("a snapshot was written");

    // A flipped byte in its entries.
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x10;
    std::fs::write(&snapshot, &bad).unwrap();
    let started = stock_table(&log, &folds, TableOptions::new());
    match started {
        Err(
            ref e @ Error::Corrupt {
                ref path, ref kind, ..
            },
        ) => {
            assert_eq!(path, &snapshot);
            assert!(matches!(kind, CorruptionKind::Checksum { .. }), "{kind:?}");
            assert!(e.is_corruption());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        Table::<String, i64>::load(&log, "stock"),
        Err(Error::Corrupt { .. })
    ));
    // Cut short, and with bad magic: errors too.
    std::fs::write(&snapshot, &good[..good.len() - 3]).unwrap();
    assert!(matches!(
        stock_table(&log, &folds, TableOptions::new()),
        Err(Error::Corrupt { .. })
    ));
    std::fs::write(&snapshot, b"not a snapshot at all, not even close").unwrap();
    assert!(matches!(
        stock_table(&log, &folds, TableOptions::new()),
        Err(Error::Corrupt {
            kind: CorruptionKind::BadMagic,
            ..
        })
    ));

    // Restored, plus a half-written `snapshot.tmp` a crash left: the tmp
    // is removed and the table starts from the good snapshot.
    std::fs::write(&snapshot, &good).unwrap();
    let tmp_file = snapshot.with_file_name("snapshot.tmp");
    std::fs::write(&tmp_file, &good[..good.len() / 3]).unwrap();
    let folds = Arc::new(AtomicU64::new(0));
    let table = stock_table(&log, &folds, TableOptions::new()).unwrap();
    assert!(!tmp_file.exists());
    assert_eq!(table.position(), end);
    assert_eq!(table.to_map(), expected(20_000, 5_000));
    assert_eq!(folds.load(Ordering::Relaxed), 0);
}

#[test]
fn names_are_checked_and_one_name_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let log: EventLog<StockDelta> = EventLog::open(tmp.path().join("deltas")).unwrap();
    let folds = Arc::new(AtomicU64::new(0));
    for bad in ["", "../x", "a/b", ".hidden", "x\0y"] {
        let started = log.table(bad, |d| d.sku.clone(), |s: &mut i64, d| *s += d.delta);
        assert!(
            matches!(started, Err(Error::InvalidName { .. })),
            "{bad:?}: {started:?}"
        );
        assert!(matches!(
            Table::<String, i64>::load(&log, bad),
            Err(Error::InvalidName { .. })
        ));
    }
    assert!(!tmp.path().join("x").exists());
    let table = stock_table(&log, &folds, TableOptions::new()).unwrap();
    let twice = stock_table(&log, &folds, TableOptions::new());
    assert!(matches!(twice, Err(Error::JobRunning { .. })), "{twice:?}");
    // A clone is the same table; once every handle is gone, the name is
    // free again.
    let clone = table.clone();
    drop(table);
    assert!(matches!(
        stock_table(&log, &folds, TableOptions::new()),
        Err(Error::JobRunning { .. })
    ));
    drop(clone);
    let again = stock_table(&log, &folds, TableOptions::new()).unwrap();
    drop(again);
}

#[test]
fn a_panicking_fold_stops_the_table_and_nothing_of_its_batch_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let log: EventLog<StockDelta> = EventLog::open(tmp.path().join("deltas")).unwrap();
    let poison = 500;
    let deltas: Vec<StockDelta> = (0..1000)
        .map(|i| StockDelta {
            sku: format!("sku-{}", i % 10),
            delta: if i == poison { 1_000_000 } else { 1 },
        })
        .collect();
    let end = log.append_batch(&deltas).unwrap().end;
    let fragile = |d: &StockDelta| d.delta < 1000;
    let table = log
        .table_with(
            "stock",
            |d| d.sku.clone(),
            move |s: &mut i64, d| {
                assert!(fragile(&d), "delta too large");
                *s += d.delta;
            },
            TableOptions::new().batch_size(64),
        )
        .unwrap();
    assert!(matches!(table.wait_for(end), Err(Error::JobFailed { .. })));
    match table.join() {
        Err(Error::JobFailed { name, reason }) => {
            assert_eq!(name, "stock");
            assert!(reason.contains("delta too large"), "{reason}");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    // A second join reports the same failure.
    assert!(matches!(table.join(), Err(Error::JobFailed { .. })));
    // The table shows exactly the batches committed before the failed one:
    // none of the failed batch's records, even those folded before the
    // panic.
    let position = table.position();
    assert!(position <= poison, "{position}");
    let sum = |map: &HashMap<String, i64>| map.values().sum::<i64>();
    assert_eq!(sum(&table.to_map()), position as i64);
    assert_eq!(
        Table::<String, i64>::load(&log, "stock").unwrap().1,
        position
    );
    drop(table);

    // Fixed, it resumes at the failed batch's first record.
    let folds = Arc::new(AtomicU64::new(0));
    let counted = folds.clone();
    let table = log
        .table(
            "stock",
            |d| d.sku.clone(),
            move |s: &mut i64, d| {
                counted.fetch_add(1, Ordering::Relaxed);
                *s += d.delta.min(1);
            },
        )
        .unwrap();
    table.wait_for(end).unwrap();
    assert_eq!(folds.load(Ordering::Relaxed), end - position);
    assert_eq!(sum(&table.to_map()), 1000);
    for i in 0..10 {
        assert_eq!(table.get(&format!("sku-{i}")), Some(100));
    }
}

#[test]
fn a_table_past_its_key_limit_stops_and_goes_on_with_a_higher_one() {
    let tmp = tempfile::tempdir().unwrap();
    let log: EventLog<u32> = EventLog::open(tmp.path().join("numbers")).unwrap();
    let end = log
        .append_batch(&(0..40).collect::<Vec<u32>>())
        .unwrap()
        .end;
    let start = |max_keys| {
        log.table_with(
            "distinct",
            |n| *n,
            |count: &mut u32, _| *count += 1,
            TableOptions::new().max_keys(max_keys).batch_size(8),
        )
    };
    let table = start(20).unwrap();
    assert!(matches!(table.wait_for(end), Err(Error::JobFailed { .. })));
    match table.join() {
        Err(Error::TableTooLarge { name, keys, max }) => {
            assert_eq!((name.as_str(), max), ("distinct", 20));
            assert!(keys > 20, "{keys}");
        }
        other => panic!("expected TableTooLarge, got {other:?}"),
    }
    assert!(table.len() <= 20);
    assert_eq!(table.len() as u64, table.position());
    drop(table);
    let table = start(100).unwrap();
    table.wait_for(end).unwrap();
    assert_eq!(table.len(), 40);
    drop(table);
    // A limit below what was committed refuses to start.
    assert!(matches!(
        start(10),
        Err(Error::TableTooLarge {
            keys: 40,
            max: 10,
            ..
        })
    ));
}

#[test]
fn a_source_closed_under_a_running_table_ends_it_with_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = EventLog::open(tmp.path().join("numbers")).unwrap();
    log.append(&1).unwrap();
    let table: Table<u64, u64> = log
        .table("sums", |n| n % 2, |s: &mut u64, n| *s += n)
        .unwrap();
    table.wait_for(1).unwrap();
    log.clone().close().unwrap();
    assert!(matches!(table.wait_for(2), Err(Error::JobFailed { .. })));
    assert!(matches!(table.join(), Err(Error::Closed)));
    assert_eq!(table.get(&1), Some(1));
}

#[test]
fn a_first_run_is_pinned_where_it_started() {
    // The first run commits its start at once: a restart goes on from the
    // records it has not applied, even with nothing applied yet.
    let tmp = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = EventLog::open(tmp.path().join("numbers")).unwrap();
    // Before it ever ran, there is nothing to load, and loading creates
    // nothing.
    let never = Table::<u64, u64>::load(&log, "sums");
    assert_eq!(
        never.unwrap_err().io_kind(),
        Some(std::io::ErrorKind::NotFound)
    );
    assert!(!table_dir(&tmp.path().join("numbers"), "sums").exists());
    let table: Table<u64, u64> = log
        .table("sums", |n| n % 2, |s: &mut u64, n| *s += n)
        .unwrap();
    assert_eq!((table.position(), table.is_empty()), (0, true));
    drop(table);
    assert_eq!(
        Table::<u64, u64>::load(&log, "sums").unwrap(),
        (HashMap::new(), 0)
    );
    let end = log.append_batch(&[1, 2, 3, 4, 5]).unwrap().end;
    let table: Table<u64, u64> = log
        .table("sums", |n| n % 2, |s: &mut u64, n| *s += n)
        .unwrap();
    table.wait_for(end).unwrap();
    assert_eq!(table.to_map(), HashMap::from([(0, 6), (1, 9)]));
}

#[test]
fn tables_and_their_changes_can_be_shared_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Table<String, i64>>();
    assert_send_sync::<TableChange<String, i64>>();
    assert_send_sync::<TableOptions>();
}

#[test]
fn a_changes_subscriber_that_compaction_overtook_is_told() {
    // Compaction removes changelog segments a snapshot holds, whoever has
    // not read them: the subscriber learns it, and `Table::load` gives the
    // whole table.
    let tmp = tempfile::tempdir().unwrap();
    let log: EventLog<StockDelta> = EventLog::open(tmp.path().join("deltas")).unwrap();
    let folds = Arc::new(AtomicU64::new(0));
    let table = stock_table(&log, &folds, small_segments()).unwrap();
    let changes = table.changes(Start::Beginning).unwrap();
    let end = append_updates(&log, 0, 100_000, 5000);
    table.wait_for(end).unwrap();
    let overtaken = changes.recv_timeout(Duration::from_secs(1));
    assert!(
        matches!(overtaken, Err(Error::OffsetTruncated { requested: 0, .. })),
        "{overtaken:?}"
    );
    let (loaded, position) = Table::<String, i64>::load(&log, "stock").unwrap();
    assert_eq!((loaded, position), (expected(100_000, 5000), end));
}
