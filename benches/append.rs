//! Append throughput of the typed log: single events and batches of 256,
//! each durability mode, from 1 and from 4 appending threads, and
//! `EveryAppend` single events from 8. With `EveryAppend` and 4 or 8
//! threads the figure shows group commit: concurrent appenders share one
//! `fdatasync`. `append/fresh` measures durable batches on new logs, the
//! `open` that creates each one included: a log's first segment, which
//! did not come from a prepared spare. The comparison with other engines
//! and the machine's limits is the `compare` workspace member.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use backbone::{Durability, EventLog};
use common::{checkout, open, quick, Checkout};

const BATCH: usize = 256;

fn modes() -> [(&'static str, Durability); 3] {
    [
        ("buffered", Durability::Buffered),
        ("interval", Durability::Interval(Duration::from_millis(10))),
        ("every_append", Durability::EveryAppend),
    ]
}

/// `iters` appends (or batches) spread over `threads` threads, timed from
/// a common start to the last thread's end.
fn concurrent(log: &EventLog<Checkout>, threads: usize, iters: u64, batch: bool) -> Duration {
    let per_thread = iters.div_ceil(threads as u64);
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let events: Vec<Checkout> = (0..BATCH as u64)
                    .map(|i| checkout(t as u64 * 1_000_000 + i))
                    .collect();
                barrier.wait();
                for i in 0..per_thread {
                    if batch {
                        log.append_batch(&events).unwrap();
                    } else {
                        log.append(&events[i as usize % BATCH]).unwrap();
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    // Per requested iteration, whatever the rounding up.
    start
        .elapsed()
        .mul_f64(iters as f64 / (per_thread * threads as u64) as f64)
}

fn append(c: &mut Criterion) {
    let events: Vec<Checkout> = (0..BATCH as u64).map(checkout).collect();
    for threads in [1usize, 4, 8] {
        let mut group = c.benchmark_group(format!("append/{threads}t"));
        for (mode, durability) in modes() {
            // Eight threads only for group commit.
            if threads == 8 && durability != Durability::EveryAppend {
                continue;
            }
            let dir = tempfile::tempdir().unwrap();
            let log = open(dir.path(), durability);
            group.throughput(Throughput::Elements(1));
            group.bench_function(format!("single/{mode}"), |b| {
                if threads == 1 {
                    let mut i = 0;
                    b.iter(|| {
                        i += 1;
                        log.append(&events[i % BATCH]).unwrap()
                    })
                } else {
                    b.iter_custom(|iters| concurrent(&log, threads, iters, false))
                }
            });
            if threads == 8 {
                log.close().unwrap();
                continue;
            }
            group.throughput(Throughput::Elements(BATCH as u64));
            group.bench_function(format!("batch256/{mode}"), |b| {
                if threads == 1 {
                    b.iter(|| log.append_batch(&events).unwrap())
                } else {
                    b.iter_custom(|iters| concurrent(&log, threads, iters, true))
                }
            });
            log.close().unwrap();
        }
        group.finish();
    }

    let mut group = c.benchmark_group("append/fresh");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("batch256/every_append", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                // At most 1,000 batches (about 15 MiB) per log: all of them
                // in its first segment.
                let batches = left.min(1_000);
                left -= batches;
                let dir = tempfile::tempdir().unwrap();
                let start = Instant::now();
                let log = open(dir.path(), Durability::EveryAppend);
                for _ in 0..batches {
                    log.append_batch(&events).unwrap();
                }
                elapsed += start.elapsed();
                log.close().unwrap();
            }
            elapsed
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick(2);
    targets = append
}
criterion_main!(benches);
