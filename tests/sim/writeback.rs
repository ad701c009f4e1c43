//! Writeback hints: a `Buffered` or `Interval` writer asks the OS to start
//! writing its active segment out as it fills, so that the sync that seals
//! a segment at the roll finds little left to write; an `EveryAppend`
//! writer syncs as it goes and sends none. The simulator records the hints
//! (they change nothing on disk or in a crash image, so the crash suites
//! cover them as they are).

use std::collections::BTreeMap;
use std::time::Duration;

use backbone::sim::{SimStorage, Writeback};
use backbone::{Durability, EventLog, Options, Raw};

const SEGMENT: u64 = 4 << 20;
const HINT_EVERY: u64 = 1 << 20;
const PAGE: u64 = 4096;
/// The first byte after a segment's header.
const RECORDS_START: u64 = 64;

/// Appends about `bytes` of 1,000-byte records in batches of 16, then
/// closes the log, and returns the hints sent, by file.
fn hints_of(durability: Durability, bytes: u64) -> BTreeMap<u64, Vec<Writeback>> {
    let storage = SimStorage::new();
    let log: EventLog<Vec<u8>, Raw> = Options::new()
        .segment_bytes(SEGMENT)
        .durability(durability)
        .simulated(&storage)
        .open_with_codec("/log", Raw)
        .unwrap();
    let batch: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 1000]).collect();
    for _ in 0..bytes / 16_000 {
        log.append_batch(&batch).unwrap();
    }
    log.close().unwrap();
    let mut by_file: BTreeMap<u64, Vec<Writeback>> = BTreeMap::new();
    for hint in storage.writebacks() {
        by_file.entry(hint.file).or_default().push(hint);
    }
    by_file
}

#[test]
fn writers_that_do_not_sync_each_append_hint_each_segment_every_mebibyte() {
    for durability in [
        Durability::Buffered,
        Durability::Interval(Duration::from_secs(3600)),
    ] {
        // 14 MiB over 4 MiB segments: three sealed, one active at close.
        let by_file = hints_of(durability, 14 << 20);
        assert!(
            by_file.len() >= 4,
            "{durability:?}: hints in {} segments",
            by_file.len()
        );
        for hints in by_file.values() {
            // Each segment's hints start where its records do and follow on
            // from each other, in stretches of at least a mebibyte that end
            // on a page boundary (the page being filled is left alone).
            assert!(
                hints[0].from >= RECORDS_START && hints[0].from < PAGE,
                "{hints:?}"
            );
            for pair in hints.windows(2) {
                assert_eq!(pair[0].to, pair[1].from, "{hints:?}");
            }
            for hint in hints {
                assert!(hint.to - hint.from >= HINT_EVERY, "{hint:?}");
                assert_eq!(hint.to % PAGE, 0, "{hint:?}");
                assert!(hint.to <= SEGMENT, "{hint:?}");
            }
        }
        // A full segment is hinted up to its last mebibyte and a page: the
        // sync that seals it has at most that much left to write.
        let full = by_file.values().filter(|hints| {
            hints
                .last()
                .is_some_and(|last| last.to + HINT_EVERY + PAGE >= SEGMENT - 2_000)
        });
        assert!(full.count() >= 3, "{durability:?}: {by_file:?}");
    }
}

#[test]
fn a_writer_that_syncs_each_append_sends_no_hints() {
    let by_file = hints_of(Durability::EveryAppend, 6 << 20);
    assert!(by_file.is_empty(), "{by_file:?}");
}
