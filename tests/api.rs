//! The public contract of `EventLog`, `Options`, `Consumer` and `Cursor`,
//! exercised on real files.

mod common;

use std::time::Duration;

use backbone::{Durability, Error, EventLog, Options, Raw, Record, Start, Timestamp};
use common::{checkout, open_raw, payload, read_all, segment_files, Checkout};

/// The calls of the contract, as written, run for real.
#[test]
fn the_quick_start_contract_works() -> Result<(), Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkouts");
    let log: EventLog<Checkout> = EventLog::open(&path)?;
    drop(log);
    let log: EventLog<Checkout> = Options::new()
        .segment_bytes(64 << 20)
        .durability(Durability::EveryAppend)
        .open(&path)?;
    let (a, b, c, e) = (checkout(1), checkout(2), checkout(3), checkout(4));
    let off: u64 = log.append(&checkout(0))?;
    assert_eq!(off, 0);
    let range: std::ops::Range<u64> = log.append_batch(&[a, b, c])?;
    assert_eq!(range, 1..4);
    let rec: Option<Record<Checkout>> = log.get(off)?;
    let rec = rec.expect("record 0");
    assert_eq!((rec.offset, rec.value), (0, checkout(0)));
    assert!(rec.timestamp <= Timestamp::now());
    let mut seen = Vec::new();
    for rec in log.read(Start::Beginning) {
        let rec = rec?;
        seen.push(rec.value);
    }
    assert_eq!(seen, (0..4).map(checkout).collect::<Vec<_>>());
    log.sync()?;
    let (first, next) = (log.first_offset(), log.next_offset());
    assert_eq!((first, next), (0, 4));
    log.append_expected(next, &[e])?;
    assert!(matches!(
        log.append_expected(next, &[checkout(9)]),
        Err(Error::Conflict {
            expected: 4,
            actual: 5
        })
    ));
    let inventory = log.consumer("inventory")?;
    inventory.commit(off + 1)?;
    let resume_at: u64 = inventory.position();
    assert_eq!(resume_at, 1);
    assert_eq!(log.len(), 5);
    assert!(!log.is_empty());
    Ok(())
}

#[test]
fn records_and_positions_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log: EventLog<Checkout> = EventLog::open(dir.path()).unwrap();
        for i in 0..100 {
            assert_eq!(log.append(&checkout(i)).unwrap(), i);
        }
        log.consumer("shipping").unwrap().commit(42).unwrap();
        log.close().unwrap();
    }
    let log: EventLog<Checkout> = EventLog::open(dir.path()).unwrap();
    assert!(
        log.recovery_report().is_clean(),
        "{:?}",
        log.recovery_report()
    );
    assert_eq!(log.next_offset(), 100);
    assert_eq!(log.get(57).unwrap().unwrap().value, checkout(57));
    assert_eq!(log.consumer("shipping").unwrap().position(), 42);
    assert_eq!(log.append(&checkout(100)).unwrap(), 100);
}

#[test]
fn reads_start_where_asked() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<Checkout> = EventLog::open(dir.path()).unwrap();
    let before = Timestamp::now();
    log.append_batch(&(0..10).map(checkout).collect::<Vec<_>>())
        .unwrap();
    std::thread::sleep(Duration::from_millis(5));
    let middle = Timestamp::now();
    std::thread::sleep(Duration::from_millis(5));
    log.append_batch(&(10..20).map(checkout).collect::<Vec<_>>())
        .unwrap();
    let offsets = |start| {
        log.read(start)
            .map(|r| r.unwrap().offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(Start::Beginning), (0..20).collect::<Vec<_>>());
    assert_eq!(offsets(Start::Offset(15)), (15..20).collect::<Vec<_>>());
    assert_eq!(offsets(Start::End), Vec::<u64>::new());
    assert_eq!(offsets(Start::Offset(20)), Vec::<u64>::new());
    // Past the end is an error, the cursor's one item, as everywhere a
    // start is taken.
    let past: Vec<_> = log.read(Start::Offset(u64::MAX)).collect();
    assert!(
        matches!(
            &past[..],
            [Err(Error::OffsetOutOfRange {
                requested: u64::MAX,
                next: 20
            })]
        ),
        "{past:?}"
    );
    assert!(matches!(
        log.subscribe(Start::Offset(21)),
        Err(Error::OffsetOutOfRange {
            requested: 21,
            next: 20
        })
    ));
    assert_eq!(
        offsets(Start::Timestamp(before)),
        (0..20).collect::<Vec<_>>()
    );
    assert_eq!(
        offsets(Start::Timestamp(middle)),
        (10..20).collect::<Vec<_>>()
    );
    let future = Timestamp::from_micros(Timestamp::now().as_micros() + 60_000_000);
    assert_eq!(offsets(Start::Timestamp(future)), Vec::<u64>::new());
    assert!(log.get(20).unwrap().is_none());
    assert!(log.get(u64::MAX).unwrap().is_none());
}

#[test]
fn timestamps_never_decrease() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = Options::new()
        .durability(Durability::Buffered)
        .open(dir.path())
        .unwrap();
    for i in 0..5000 {
        log.append(&i).unwrap();
    }
    let stamps: Vec<Timestamp> = log
        .read(Start::Beginning)
        .map(|r| r.unwrap().timestamp)
        .collect();
    assert_eq!(stamps.len(), 5000);
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]));
}

#[test]
fn segments_roll_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::new()
            .segment_bytes(4096)
            .max_record_bytes(1000)
            .index_interval_bytes(256)
            .durability(Durability::Buffered)
            .max_open_segments(2)
    };
    let log = open_raw(dir.path(), options()).unwrap();
    let expected: Vec<(u64, Vec<u8>)> = (0..2000).map(|i| (i, payload(7, i))).collect();
    for (i, p) in &expected {
        assert_eq!(log.append(p).unwrap(), *i);
    }
    log.sync().unwrap();
    assert!(segment_files(dir.path()).len() > 10);
    assert_eq!(read_all(&log).unwrap(), expected);
    // Random reads open sealed segments on demand, with a bounded number
    // of them open at once.
    for i in (0..2000).rev().step_by(37) {
        assert_eq!(log.get(i).unwrap().unwrap().value, payload(7, i));
    }
    assert!(log.stats().open_segments <= 2, "{:?}", log.stats());
    assert_eq!(log.verify().unwrap(), 2000);
    drop(log);
    let log = open_raw(dir.path(), options()).unwrap();
    assert_eq!(read_all(&log).unwrap(), expected);
    // A batch that does not fit spans segments.
    let batch: Vec<Vec<u8>> = (0..200).map(|i| payload(9, i)).collect();
    let range = log.append_batch(&batch).unwrap();
    assert_eq!(range, 2000..2200);
    let tail: Vec<Vec<u8>> = log
        .read(Start::Offset(2000))
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(tail, batch);
}

#[test]
fn oversized_and_unencodable_values_write_nothing() {
    struct Fails;
    impl serde::Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refuses to serialize"))
        }
    }
    impl<'de> serde::Deserialize<'de> for Fails {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Ok(Fails)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let big = open_raw(
        &dir.path().join("big"),
        Options::new().max_record_bytes(100),
    )
    .unwrap();
    big.append(&vec![1; 10]).unwrap();
    assert!(matches!(
        big.append(&vec![0; 101]),
        Err(Error::RecordTooLarge {
            size: 101,
            max: 100
        })
    ));
    assert!(matches!(
        big.append_batch(&[vec![2; 5], vec![0; 500]]),
        Err(Error::RecordTooLarge { .. })
    ));
    assert_eq!(big.append(&vec![3; 100]).unwrap(), 1);
    assert_eq!(
        read_all(&big).unwrap(),
        vec![(0, vec![1; 10]), (1, vec![3; 100])]
    );

    let fails: EventLog<Fails> = EventLog::open(dir.path().join("fails")).unwrap();
    let err = fails.append(&Fails).unwrap_err();
    assert!(matches!(err, Error::Codec { offset: None, .. }), "{err:?}");
    assert!(err.to_string().contains("encode"));
    assert_eq!(fails.next_offset(), 0);
    drop(fails);
    let reopened: EventLog<u8> = Options::new()
        .any_event_type()
        .open(dir.path().join("fails"))
        .unwrap();
    assert_eq!(reopened.next_offset(), 0);
}

#[test]
fn reading_with_the_wrong_type_names_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log: EventLog<String> = EventLog::open(dir.path()).unwrap();
        log.append(&"a string, not a checkout".to_string()).unwrap();
    }
    // The recorded event type catches it at open, naming both types.
    let err = EventLog::<Checkout>::open(dir.path()).unwrap_err();
    match &err {
        Error::EventTypeMismatch {
            expected, found, ..
        } => assert_eq!(
            (expected.as_str(), found.as_str()),
            ("Checkout version 1", "String version 1")
        ),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("any_event_type"), "{err}");
    // Opened anyway, the record does not decode: the error names the
    // offset, the recorded type and the codec's own cause.
    let log: EventLog<Checkout> = Options::new().any_event_type().open(dir.path()).unwrap();
    match log.get(0) {
        Err(
            e @ Error::Codec {
                offset: Some(0), ..
            },
        ) => {
            let text = e.to_string();
            assert!(
                text.contains("offset 0") && text.contains("String version 1"),
                "{text}"
            );
        }
        other => panic!("expected a decode error at offset 0, got {other:?}"),
    }
    let first = log.read(Start::Beginning).next().unwrap();
    assert!(matches!(
        first,
        Err(Error::Codec {
            offset: Some(0),
            ..
        })
    ));
}

#[test]
fn another_codec_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open_raw(dir.path(), Options::new()).unwrap());
    let err = EventLog::<Vec<u8>>::open(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::CodecMismatch { expected, found, .. } if expected == "postcard" && found == "raw"),
        "{err:?}"
    );
}

#[test]
fn a_second_writer_is_locked_out_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u32> = EventLog::open(dir.path()).unwrap();
    let second = EventLog::<u32>::open(dir.path());
    assert!(matches!(second, Err(Error::Locked { .. })), "{second:?}");
    let reader: EventLog<u32> = Options::new().read_only().open(dir.path()).unwrap();
    assert!(matches!(reader.append(&1), Err(Error::ReadOnly { .. })));
    let clone = log.clone();
    log.close().unwrap();
    assert!(matches!(clone.append(&1), Err(Error::Closed)));
    EventLog::<u32>::open(dir.path()).unwrap();
}

#[test]
fn a_directory_that_is_not_a_log_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"my files").unwrap();
    let err = EventLog::<u32>::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::NotALog { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().display().to_string()));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);

    let garbage = tempfile::tempdir().unwrap();
    std::fs::write(garbage.path().join("META"), b"definitely not backbone").unwrap();
    let err = EventLog::<u32>::open(garbage.path()).unwrap_err();
    assert!(
        matches!(err, Error::NotALog { ref path, .. } if path.ends_with("META")),
        "{err:?}"
    );
}

#[test]
fn consumer_names_cannot_escape_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u32> = EventLog::open(dir.path().join("log")).unwrap();
    for name in [
        "../escape",
        "a/b",
        "",
        "..",
        "nul\0",
        "x".repeat(200).as_str(),
    ] {
        assert!(
            matches!(log.consumer(name), Err(Error::InvalidName { .. })),
            "{name:?} accepted"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn consumers_commit_durably_and_refuse_positions_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u32> = Options::new()
        .durability(Durability::Buffered)
        .open(dir.path())
        .unwrap();
    log.append_batch(&[1, 2, 3]).unwrap();
    let shipping = log.consumer("shipping").unwrap();
    assert_eq!(shipping.position(), 0);
    assert!(matches!(
        shipping.commit(4),
        Err(Error::OffsetOutOfRange {
            requested: 4,
            next: 3
        })
    ));
    shipping.commit(2).unwrap();
    // Committing a position syncs the records below it, even when Buffered.
    assert!(log.durable_offset() >= 2);
    let same = shipping.clone();
    assert_eq!(same.position(), 2);
    let values: Vec<u32> = same.read().map(|r| r.unwrap().value).collect();
    assert_eq!(values, vec![3]);
    shipping.seek(1).unwrap();
    assert_eq!(same.position(), 1, "clones of one consumer share it");
}

#[test]
fn buffered_appends_are_readable_in_process_and_flushed_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log: EventLog<u64> = Options::new()
            .durability(Durability::Buffered)
            .open(dir.path())
            .unwrap();
        for i in 0..10 {
            log.append(&i).unwrap();
        }
        assert_eq!(log.get(9).unwrap().unwrap().value, 9);
        assert_eq!(log.read(Start::Beginning).count(), 10);
        log.append(&10).unwrap();
    }
    let log: EventLog<u64> = EventLog::open(dir.path()).unwrap();
    assert_eq!(log.next_offset(), 11);
}

#[test]
fn interval_mode_syncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = Options::new()
        .durability(Durability::Interval(Duration::from_millis(5)))
        .open(dir.path())
        .unwrap();
    log.append_batch(&[1, 2, 3]).unwrap();
    assert_eq!(log.get(2).unwrap().unwrap().value, 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.durable_offset() < 3 {
        assert!(std::time::Instant::now() < deadline, "never synced");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn retention_drops_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new()
        .segment_bytes(4096)
        .max_record_bytes(1024)
        .durability(Durability::Buffered)
        .retention_bytes(5 * 4096);
    let log = open_raw(dir.path(), options).unwrap();
    for i in 0..3000 {
        log.append(&payload(1, i)).unwrap();
    }
    log.sync().unwrap();
    let stats = log.stats();
    assert!(stats.segments <= 6, "{stats:?}");
    assert!(stats.bytes <= 6 * 4096);
    let first = log.first_offset();
    assert!(first > 0);
    assert!(log.get(first - 1).unwrap().is_none());
    assert_eq!(log.get(first).unwrap().unwrap().value, payload(1, first));
    let below = log.read(Start::Offset(first - 1)).next().unwrap();
    assert!(
        matches!(below, Err(Error::OffsetTruncated { .. })),
        "{below:?}"
    );
    let all = read_all(&log).unwrap();
    assert_eq!(all.len() as u64, 3000 - first);
    assert_eq!(all[0].0, first);
}

#[test]
fn truncate_before_and_age_retention() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::new()
            .segment_bytes(1024)
            .max_record_bytes(512)
            .durability(Durability::Buffered)
    };
    let log = open_raw(dir.path(), options()).unwrap();
    for i in 0..500 {
        log.append(&payload(2, i)).unwrap();
    }
    log.flush().unwrap();
    let first = log.truncate_before(250).unwrap();
    assert!(first <= 250 && first > 150, "first offset {first}");
    assert_eq!(log.get(250).unwrap().unwrap().value, payload(2, 250));
    drop(log);
    std::thread::sleep(Duration::from_millis(20));
    let aged = open_raw(
        dir.path(),
        options().retention_age(Duration::from_millis(10)),
    )
    .unwrap();
    // Everything is older than 10 ms: all sealed segments go, the active stays.
    assert_eq!(aged.stats().segments, 1);
    assert_eq!(aged.next_offset(), 500);
}

#[test]
fn a_reader_inside_a_removed_segment_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new()
        .segment_bytes(2048)
        .max_record_bytes(512)
        .durability(Durability::Buffered);
    let log = open_raw(dir.path(), options).unwrap();
    for i in 0..400 {
        log.append(&payload(3, i)).unwrap();
    }
    log.flush().unwrap();
    let mut cursor = log.read(Start::Beginning);
    let first = cursor.next().unwrap().unwrap();
    assert_eq!(first.offset, 0);
    log.truncate_before(300).unwrap();
    assert!(log.first_offset() > 50);
    // The cursor holds the first segment and reads it to its end; the
    // segments after it that were removed too are reported, not skipped.
    let mut next = 1;
    for rec in cursor {
        match rec {
            Ok(rec) => {
                assert_eq!((rec.offset, rec.value), (next, payload(3, next)));
                next += 1;
            }
            Err(Error::OffsetTruncated { requested, first }) => {
                assert_eq!(requested, next);
                assert!(first > requested);
                return;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    panic!("the cursor skipped removed records silently");
}

#[cfg(unix)]
#[test]
fn files_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let log: EventLog<u32> = EventLog::open(&path).unwrap();
    log.append(&1).unwrap();
    log.consumer("c").unwrap().commit(1).unwrap();
    for entry in std::fs::read_dir(&path).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{:?} has mode {mode:o}", entry.file_name());
    }
    let dir_mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700);
}

#[test]
fn empty_batches_and_empty_payloads_are_fine() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<()> = EventLog::open(dir.path()).unwrap();
    assert_eq!(log.append_batch(&[]).unwrap(), 0..0);
    assert_eq!(log.append(&()).unwrap(), 0);
    assert_eq!(log.append_batch(&[(), ()]).unwrap(), 1..3);
    assert_eq!(log.read(Start::Beginning).count(), 3);
    let raw = open_raw(&dir.path().join("raw"), Options::new()).unwrap();
    raw.append(&Vec::new()).unwrap();
    assert_eq!(read_all(&raw).unwrap(), vec![(0, vec![])]);
}

#[test]
fn invalid_options_are_refused_before_touching_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let err = Options::new()
        .segment_bytes(100)
        .open::<u32>(&path)
        .unwrap_err();
    assert!(matches!(
        err,
        Error::InvalidOption {
            name: "segment_bytes",
            ..
        }
    ));
    assert!(!path.exists());
    let _ = Raw;
}

/// Opening reads the directory listing and the newest segment's tail only:
/// after a clean close nothing is scanned and no sealed segment is opened,
/// however long the log.
#[test]
fn opening_does_not_read_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::new()
            .segment_bytes(64 << 10)
            .durability(Durability::Buffered)
    };
    let log = open_raw(dir.path(), options()).unwrap();
    for i in 0..40_000 {
        log.append(&payload(5, i)).unwrap();
    }
    log.close().unwrap();
    let segments = segment_files(dir.path()).len();
    assert!(segments > 20, "{segments} segments");
    let log = open_raw(dir.path(), options()).unwrap();
    let report = log.recovery_report();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.scanned_bytes, 0);
    assert_eq!(log.stats().open_segments, 0, "a sealed segment was opened");
    assert_eq!(log.next_offset(), 40_000);
    // Without a clean close (the handle is dropped, so no final watermark),
    // recovery scans what was written since the watermark: at most the
    // newest segment.
    for i in 40_000..41_000 {
        log.append(&payload(5, i)).unwrap();
    }
    drop(log);
    let log = open_raw(dir.path(), options()).unwrap();
    let scanned = log.recovery_report().scanned_bytes;
    assert!(
        scanned > 0 && scanned <= 64 << 10,
        "scanned {scanned} bytes"
    );
    assert_eq!(log.stats().open_segments, 0);
    assert_eq!(log.get(40_999).unwrap().unwrap().value, payload(5, 40_999));
}

#[test]
fn a_batch_costs_one_sync_and_stats_count_them() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = EventLog::open(dir.path()).unwrap();
    let before = log.stats().syncs;
    log.append_batch(&(0..256).collect::<Vec<_>>()).unwrap();
    assert_eq!(log.stats().syncs - before, 1);
    log.append(&1).unwrap();
    assert_eq!(log.stats().syncs - before, 2);
}

/// Allocated bytes of a file (written blocks; a sparse file has few).
fn allocated(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn durable_logs_prepare_each_next_segment_ahead_of_time() {
    const SEGMENT: u64 = 256 << 10;
    let dir = tempfile::tempdir().unwrap();
    let spare = dir.path().join("spare.tmp");
    let options = || Options::new().segment_bytes(SEGMENT).max_record_bytes(4096);
    let log = open_raw(dir.path(), options()).unwrap();
    let record = vec![7u8; 4000];
    let (mut expected, mut prepared) = (0, 0);
    for roll in 1..=3 {
        // Past half of the active segment a spare is prepared; wait until
        // it is complete, then fill the segment up so that it rolls.
        while !spare.exists() {
            log.append_batch(&[record.clone(), record.clone()]).unwrap();
            expected += 2;
        }
        let waited = std::time::Instant::now();
        while std::fs::metadata(&spare).map_or(0, |m| m.len()) < SEGMENT
            && waited.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        let before = log.stats().preallocated_segments;
        while segment_files(dir.path()).len() <= roll {
            log.append(&record).unwrap();
            expected += 1;
        }
        // A segment made from a spare has every block written already;
        // a sparse one holds only what its one record took.
        if log.stats().preallocated_segments > before {
            prepared += 1;
            let newest = segment_files(dir.path()).pop().unwrap();
            assert!(allocated(&newest) >= SEGMENT, "roll {roll}");
        }
    }
    assert!(prepared >= 1, "no roll used a prepared segment");
    assert_eq!(log.verify().unwrap(), expected);
    log.close().unwrap();
    assert!(!spare.exists(), "closing removes the spare");
    let log = open_raw(dir.path(), options()).unwrap();
    assert_eq!(read_all(&log).unwrap().len() as u64, expected);
    assert!(
        log.recovery_report().is_clean(),
        "{:?}",
        log.recovery_report()
    );
}

#[test]
fn buffered_logs_and_the_option_off_prepare_nothing() {
    for options in [
        Options::new().durability(Durability::Buffered),
        Options::new().preallocate(false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = open_raw(dir.path(), options.segment_bytes(64 << 10)).unwrap();
        for i in 0..100 {
            log.append(&vec![1u8; 1000]).unwrap();
            assert!(!dir.path().join("spare.tmp").exists(), "after {i}");
        }
        log.sync().unwrap();
        let mut files = segment_files(dir.path());
        assert!(files.len() > 1);
        assert_eq!(log.stats().preallocated_segments, 0);
        assert!(allocated(&files.pop().unwrap()) < 64 << 10, "sparse");
    }
}

#[test]
fn odd_directories_are_refused_with_the_reason() {
    use std::os::unix::ffi::OsStrExt;
    let not_utf8 = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");

    // A name that is not UTF-8 is someone else's file: a log keeps it and
    // opens; a directory that is not a log is refused untouched.
    let dir = tempfile::tempdir().unwrap();
    let log = open_raw(dir.path(), Options::new()).unwrap();
    log.append(&b"kept".to_vec()).unwrap();
    log.close().unwrap();
    std::fs::write(dir.path().join(not_utf8), b"x").unwrap();
    let log = open_raw(dir.path(), Options::new()).unwrap();
    assert_eq!(log.get(0).unwrap().unwrap().value, b"kept");
    drop(log);
    assert!(dir.path().join(not_utf8).exists());
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join(not_utf8), b"x").unwrap();
    let err = open_raw(other.path(), Options::new()).unwrap_err();
    assert!(matches!(err, Error::NotALog { .. }), "{err:?}");

    // Read-only: an empty directory is not created into a log.
    let empty = tempfile::tempdir().unwrap();
    let err = open_raw(empty.path(), Options::new().read_only()).unwrap_err();
    assert!(
        matches!(err, Error::NotALog { reason, .. } if reason.contains("no META")),
        "{err:?}"
    );
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);

    // Read-only: a log whose segment files are all gone.
    for segment in segment_files(dir.path()) {
        std::fs::remove_file(segment).unwrap();
    }
    let err = open_raw(dir.path(), Options::new().read_only()).unwrap_err();
    assert!(
        matches!(err, Error::NotALog { reason, .. } if reason.contains("no segment")),
        "{err:?}"
    );

    // A META file larger than 1 MiB is refused before it is read; one of
    // exactly 1 MiB is read (and refused for what it holds).
    for (len, want) in [
        (2 << 20, "too large"),
        ((1 << 20) + 1, "too large"),
        (1 << 20, "magic"),
    ] {
        let big = tempfile::tempdir().unwrap();
        std::fs::write(big.path().join("META"), vec![0u8; len]).unwrap();
        let err = open_raw(big.path(), Options::new()).unwrap_err();
        assert!(
            matches!(err, Error::NotALog { reason, .. } if reason.contains(want)),
            "{len}: {err:?}"
        );
    }
}

/// Without META, a directory is made a log only if it holds nothing but
/// files a log itself leaves there: a consumer's position, a `.damaged`
/// copy, a lock or a temporary file. Any other file means it is someone
/// else's directory.
#[test]
fn a_directory_without_meta_holding_only_log_files_becomes_a_log() {
    for names in [
        &["LOCK", "META.tmp"][..],
        &["billing.consumer"],
        &["00000000000000000000.64.damaged"],
        &[
            "billing.consumer",
            "00000000000000000000.64.damaged",
            "LOCK",
        ],
    ] {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let log = open_raw(dir.path(), Options::new()).unwrap_or_else(|e| panic!("{names:?}: {e}"));
        assert_eq!(log.append(&b"first".to_vec()).unwrap(), 0, "{names:?}");
        log.close().unwrap();
        assert!(dir.path().join("META").exists(), "{names:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("billing.consumer"), b"x").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
    let err = open_raw(dir.path(), Options::new()).unwrap_err();
    assert!(
        matches!(err, Error::NotALog { reason, .. } if reason.contains("other files")),
        "{err:?}"
    );
}

#[test]
fn opening_creates_only_what_is_missing() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();

    // A read-only open of a missing directory creates nothing.
    let missing = tmp.path().join("missing");
    let err = open_raw(&missing, Options::new().read_only()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(!missing.exists());

    // A creation that stopped after taking the lock (LOCK and META.tmp, no
    // META) is finished by the next open.
    let half = tmp.path().join("half");
    std::fs::create_dir(&half).unwrap();
    std::fs::write(half.join("LOCK"), b"").unwrap();
    std::fs::write(half.join("META.tmp"), b"torn").unwrap();
    let log = open_raw(&half, Options::new()).unwrap();
    log.append(&b"first".to_vec()).unwrap();
    log.close().unwrap();
    assert!(!half.join("META.tmp").exists());

    // Reopening an existing log leaves its META alone (same inode: not
    // rewritten and renamed over).
    let meta = std::fs::metadata(half.join("META")).unwrap().ino();
    let log = open_raw(&half, Options::new()).unwrap();
    assert_eq!(log.get(0).unwrap().unwrap().value, b"first");
    log.close().unwrap();
    assert_eq!(std::fs::metadata(half.join("META")).unwrap().ino(), meta);
}

/// A follower that lists the directory while the writer creates a segment
/// can see the new file shorter than a header, or with a header of zeros
/// (created, not yet written). Either is "not yet": the follower keeps
/// reading what it has, and picks the segment up once it is complete.
#[test]
fn a_follower_waits_for_a_segment_that_is_still_being_created() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options::new().segment_bytes(4096).max_record_bytes(512);
    let log = open_raw(dir.path(), options()).unwrap();
    for i in 0..10 {
        log.append(&payload(9, i)).unwrap();
    }
    log.close().unwrap();
    let before = segment_files(dir.path()).len();
    let follower = open_raw(dir.path(), options().read_only()).unwrap();
    let next = dir.path().join(format!("{:020}.seg", 10));
    for partial in [vec![0u8; 10], vec![0u8; 64], vec![0u8; 4096]] {
        std::fs::write(&next, &partial).unwrap();
        let records = read_all(&follower).unwrap();
        assert_eq!(records.len(), 10, "{} bytes", partial.len());
        assert_eq!(follower.next_offset(), 10);
        // A follower opened now, too, ends at the complete segments.
        let late = open_raw(dir.path(), options().read_only()).unwrap();
        assert_eq!(read_all(&late).unwrap(), records);
        assert!(next.exists(), "a follower removes nothing");
    }
    // The writer finds the same file as an unfinished create, removes it
    // and starts the segment again; the follower then reads on.
    let log = open_raw(dir.path(), options()).unwrap();
    assert!(log
        .recovery_report()
        .removed_files
        .iter()
        .any(|p| p.ends_with(next.file_name().unwrap())));
    for i in 10..200 {
        log.append(&payload(9, i)).unwrap();
    }
    assert!(
        segment_files(dir.path()).len() > before + 1,
        "the writer rolled"
    );
    let records = read_all(&follower).unwrap();
    assert_eq!(records.len(), 200);
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!((*offset, value), (i as u64, &payload(9, i as u64)));
    }
    log.close().unwrap();
}

/// Dropping the last handle is what most Rust code does instead of calling
/// `close()`. It used to leave the log as a crash would, so the next open
/// searched the newest segment's rest, rewrote its tail and rebuilt its
/// index (40 to 70 ms for a small log, against a few after a close). A drop
/// now records a clean shutdown whenever every record is durable, and says
/// in the next open's report when it could not.
#[test]
fn a_drop_with_every_record_durable_is_as_clean_as_a_close() {
    let cases = [
        ("EveryAppend", Durability::EveryAppend, false, true),
        (
            "Interval, synced",
            Durability::Interval(Duration::from_secs(60)),
            true,
            true,
        ),
        (
            "Interval, not synced yet",
            Durability::Interval(Duration::from_secs(60)),
            false,
            false,
        ),
        ("Buffered, synced", Durability::Buffered, true, true),
        ("Buffered, not synced", Durability::Buffered, false, false),
    ];
    for (what, durability, sync, clean) in cases {
        let dir = tempfile::tempdir().unwrap();
        let options = || Options::new().durability(durability);
        let log = open_raw(dir.path(), options()).unwrap();
        for i in 0..100 {
            log.append(&payload(3, i)).unwrap();
        }
        if sync {
            log.sync().unwrap();
        }
        drop(log);
        let log = open_raw(dir.path(), options()).unwrap();
        let report = log.recovery_report();
        assert_eq!(report.closed_cleanly, clean, "{what}: {report:?}");
        assert!(report.is_clean(), "{what}: {report:?}");
        if clean {
            assert_eq!(report.scanned_bytes, 0, "{what}: nothing to scan");
        }
        // Nothing was lost either way: the records reached the OS.
        let records = read_all(&log).unwrap();
        assert_eq!(records.len(), 100, "{what}");
        log.close().unwrap();
        let log = open_raw(dir.path(), options()).unwrap();
        assert!(log.recovery_report().closed_cleanly, "{what}: after close");
    }
}

#[test]
fn derived_records_keep_their_source_times_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let times = [
        backbone::Timestamp::from_micros(5),
        backbone::Timestamp::from_micros(3),
    ];
    {
        let log: EventLog<u64> = EventLog::open(dir.path()).unwrap();
        log.append(&1).unwrap();
        log.append_derived(&[10, 20], &times, None).unwrap();
        let read: Vec<_> = log
            .read(Start::Beginning)
            .map(|r| r.unwrap().source_time)
            .collect();
        assert_eq!(read, [None, Some(times[0]), Some(times[1])]);
        log.close().unwrap();
    }
    let log: EventLog<u64> = EventLog::open(dir.path()).unwrap();
    assert_eq!(log.next_offset(), 3);
    let read: Vec<_> = log
        .read(Start::Beginning)
        .map(|r| {
            let r = r.unwrap();
            (r.value, r.source_time)
        })
        .collect();
    assert_eq!(
        read,
        [(1, None), (10, Some(times[0])), (20, Some(times[1]))]
    );
    assert_eq!(log.get(2).unwrap().unwrap().event_time(), times[1]);
    assert_eq!(log.verify().unwrap(), 3);
    let mismatched = log.append_derived(&[1], &[], None);
    assert!(matches!(
        mismatched,
        Err(backbone::Error::InvalidArgument { .. })
    ));
}
