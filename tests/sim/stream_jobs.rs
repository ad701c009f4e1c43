//! Stream jobs and tables under the power-loss simulator. A keyed,
//! windowed aggregate and a table of sums run on their runtime while the
//! disk is crashed under them, at random moments, in every crash mode. On
//! each image the producer appends again what the crash took from the
//! source (values are offsets, so the same values), the job or table is
//! started again under its name and runs to the end, and then:
//!
//! - the windowed output equals that of one uninterrupted run with no
//!   crash: the same results at the same offsets with the same source
//!   times (its window state came back from the checkpoint that committed
//!   with the outputs, never from a later or an earlier one);
//! - the table holds every source value folded in exactly once.

use std::collections::HashMap;
use std::time::Duration;

use backbone::sim::{CrashMode, SimStorage};
use backbone::stream::{Job, Lateness, Table, TableOptions, Window, Windowed};
use backbone::{Durability, EventLog, Options, Record, Start, Timestamp};

use super::common::SplitMix as Rng;

const SOURCE: &str = "/source";
const OUTPUT: &str = "/output";
const RECORDS: u64 = 400;

fn options(storage: &SimStorage, durability: Durability) -> Options {
    Options::new()
        .segment_bytes(4096)
        .max_record_bytes(512)
        .index_interval_bytes(256)
        .durability(durability)
        .close_timeout(Duration::ZERO)
        .simulated(storage)
}

/// The source on `storage`, filled up to `RECORDS` values (value =
/// offset), appended in batches of 10.
fn source(storage: &SimStorage) -> EventLog<u64> {
    let source: EventLog<u64> = options(storage, Durability::Interval(Duration::from_secs(3600)))
        .open(SOURCE)
        .expect("open the source");
    fill(&source, RECORDS);
    source
}

fn fill(source: &EventLog<u64>, until: u64) {
    while source.next_offset() < until {
        let start = source.next_offset();
        let values: Vec<u64> = (start..(start + 10).min(until)).collect();
        source.append_batch(&values).expect("produce");
    }
}

/// The windowed job: sums per key (`v % 5`) over 40 ms tumbling windows
/// of an event time a millisecond per value, up to 3 ms out of order.
fn windows(source: &EventLog<u64>, output: &EventLog<Windowed<u64, u64>>) -> Job {
    source
        .stream("windows", Start::Beginning)
        .event_time(
            |v| Timestamp::from_micros(v * 1_000 + (v * 7_919 % 3_000)),
            Lateness::bounded(Duration::from_millis(3)),
        )
        .key_by(|v| v % 5)
        .window(Window::tumbling(Duration::from_millis(40)))
        .aggregate(|| 0u64, |sum, v| *sum += v)
        .stream()
        .batch_size(7)
        .to(output)
        .expect("start the job")
}

type Results = Vec<(u64, Option<Timestamp>, Windowed<u64, u64>)>;

fn results(output: &EventLog<Windowed<u64, u64>>) -> Results {
    output
        .read(Start::Beginning)
        .map(|r| {
            let r: Record<_> = r.expect("read the output");
            (r.offset, r.source_time, r.value)
        })
        .collect()
}

/// The windowed job run to the end on `storage`.
fn finish_windows(storage: &SimStorage, durability: Durability) -> Results {
    let source = source(storage);
    let output = options(storage, durability)
        .open(OUTPUT)
        .expect("open the output");
    let job = windows(&source, &output);
    job.wait_for(RECORDS).expect("the job finishes");
    job.stop();
    job.join().expect("join");
    results(&output)
}

#[test]
fn a_windowed_job_is_exactly_once_on_every_crash_image() {
    let once = finish_windows(&SimStorage::new(), Durability::EveryAppend);
    assert!(once.len() > 20, "windows were emitted: {}", once.len());
    let mut images = 0;
    for seed in 0..12u64 {
        for durability in [Durability::EveryAppend, Durability::Buffered] {
            let mut rng = Rng(seed);
            let storage = SimStorage::new();
            let crash_at = rng.range_inclusive(0, RECORDS);
            {
                let source = source(&storage);
                let output = options(&storage, durability).open(OUTPUT).unwrap();
                let job = windows(&source, &output);
                job.wait_for(crash_at).unwrap();
                let mut images_here = Vec::new();
                for (i, mode) in CrashMode::ALL.into_iter().enumerate() {
                    images_here.push((mode, storage.crash(seed * 8 + i as u64, mode)));
                }
                job.stop();
                job.join().unwrap();
                for (mode, image) in images_here {
                    let found = finish_windows(&image, durability);
                    assert!(
                        found == once,
                        "seed {seed} {durability:?} {mode:?}, crashed at {crash_at}: \
                         {} results, {} expected",
                        found.len(),
                        once.len()
                    );
                    images += 1;
                }
            }
        }
    }
    assert_eq!(images, 12 * 2 * CrashMode::ALL.len());
}

fn table(storage: &SimStorage, source: &EventLog<u64>, durability: Durability) -> Table<u64, u64> {
    source
        .table_with(
            "sums",
            |v| v % 7,
            |sum: &mut u64, v| *sum += v,
            TableOptions::new()
                .batch_size(9)
                .changelog(options(storage, durability)),
        )
        .expect("start the table")
}

#[test]
fn a_table_is_exactly_once_on_every_crash_image() {
    let mut expected: HashMap<u64, u64> = HashMap::new();
    for v in 0..RECORDS {
        *expected.entry(v % 7).or_default() += v;
    }
    let mut images = 0;
    for seed in 0..12u64 {
        for durability in [Durability::EveryAppend, Durability::Buffered] {
            let mut rng = Rng(seed ^ 0x7ab1e);
            let storage = SimStorage::new();
            let crash_at = rng.range_inclusive(0, RECORDS);
            let source = source(&storage);
            let sums = table(&storage, &source, durability);
            sums.wait_for(crash_at).unwrap();
            let mut images_here = Vec::new();
            for (i, mode) in CrashMode::ALL.into_iter().enumerate() {
                images_here.push((mode, storage.crash(seed * 8 + i as u64, mode)));
            }
            sums.stop();
            sums.join().unwrap();
            drop((sums, source));
            for (mode, image) in images_here {
                let source = self::source(&image);
                let sums = table(&image, &source, durability);
                sums.wait_for(RECORDS).unwrap();
                assert!(
                    sums.to_map() == expected,
                    "seed {seed} {durability:?} {mode:?}, crashed at {crash_at}"
                );
                sums.stop();
                sums.join().unwrap();
                images += 1;
            }
        }
    }
    assert_eq!(images, 12 * 2 * CrashMode::ALL.len());
}
