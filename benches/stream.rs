//! Stream jobs against the hand-written code they replace, over the same
//! source, with the same batch size and output `Options`:
//!
//! - `map_filter/{job,loop}_{buffered,every_append}`: keep the checkouts
//!   of more than one item, map each to its stock delta, into an output
//!   log; the loop reads 1024 records at a time and appends them with
//!   `append_batch`.
//! - `window_count/{job,fold}`: count checkouts per SKU in one-second
//!   tumbling windows of their event time (their timestamps stretched so
//!   that the windows close during the run); the fold replays the source
//!   into a `HashMap` keyed by (SKU, window).
//!
//! Each iteration starts from a fresh output (or an empty map) and ends
//! when every source record is handled.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use backbone::stream::{Window, Windowed};
use backbone::{Durability, EventLog, Options, Start, Timestamp};
use common::{checkout, open, quick, Checkout};

const N: u64 = 100_000;
const BATCH: usize = 1024;

fn source() -> (tempfile::TempDir, EventLog<Checkout>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::Buffered);
    let events: Vec<Checkout> = (0..N).map(checkout).collect();
    for chunk in events.chunks(BATCH) {
        log.append_batch(chunk).unwrap();
    }
    log.sync().unwrap();
    (dir, log)
}

fn delta(c: Checkout) -> (String, i64) {
    (c.sku, -i64::from(c.qty))
}

fn output(durability: Durability) -> (tempfile::TempDir, EventLog<(String, i64)>) {
    let dir = tempfile::tempdir().unwrap();
    let log = Options::new()
        .durability(durability)
        .open(dir.path())
        .unwrap();
    (dir, log)
}

fn map_filter(c: &mut Criterion) {
    let (_dir, source) = source();
    let mut group = c.benchmark_group("map_filter");
    group.throughput(Throughput::Elements(N));
    for (name, durability) in [
        ("buffered", Durability::Buffered),
        ("every_append", Durability::EveryAppend),
    ] {
        group.bench_function(format!("job_{name}"), |b| {
            b.iter_custom(|iters| {
                time_job(
                    iters,
                    || output(durability),
                    |out| {
                        source
                            .stream("deltas", Start::Beginning)
                            .filter(|c| c.qty > 1)
                            .map(delta)
                            .batch_size(BATCH)
                            .to(out)
                    },
                )
            })
        });
        group.bench_function(format!("loop_{name}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (_out_dir, out) = output(durability);
                    let started = Instant::now();
                    let mut batch = Vec::with_capacity(BATCH);
                    let mut records = source.read(Start::Beginning).peekable();
                    while records.peek().is_some() {
                        batch.clear();
                        for record in records.by_ref().take(BATCH) {
                            let c = record.unwrap().value;
                            if c.qty > 1 {
                                batch.push(delta(c));
                            }
                        }
                        out.append_batch(&batch).unwrap();
                    }
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

/// The windowed bench's event time: the checkout's timestamp stretched a
/// hundredfold (the checkouts are 1 µs apart, so 100,000 of them span ten
/// one-second windows per SKU, and windows close as the job runs).
fn window_time(c: &Checkout) -> u64 {
    c.ts_micros * 100
}

fn window_of(c: &Checkout) -> u64 {
    window_time(c) / 1_000_000
}

/// `iters` runs of a job started by `start` on a fresh output from
/// `output`, each timed from its start until it has handled the whole
/// source.
fn time_job<T, D>(
    iters: u64,
    output: impl Fn() -> (D, EventLog<T>),
    start: impl Fn(&EventLog<T>) -> backbone::Result<backbone::stream::Job>,
) -> Duration
where
    backbone::Postcard: backbone::Codec<T>,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (_dir, out) = output();
        let started = Instant::now();
        let job = start(&out).unwrap();
        job.wait_for(N).unwrap();
        total += started.elapsed();
        job.stop();
        job.join().unwrap();
    }
    total
}

fn window_count(c: &mut Criterion) {
    let (_dir, source) = source();
    let mut group = c.benchmark_group("window_count");
    group.throughput(Throughput::Elements(N));
    group.bench_function("job", |b| {
        b.iter_custom(|iters| {
            time_job(
                iters,
                || {
                    let dir = tempfile::tempdir().unwrap();
                    let out: EventLog<Windowed<String, u64>> = Options::new()
                        .durability(Durability::Buffered)
                        .open(dir.path())
                        .unwrap();
                    (dir, out)
                },
                |out| {
                    source
                        .stream("per-sku", Start::Beginning)
                        .event_time(
                            |c| Timestamp::from_micros(window_time(c)),
                            backbone::stream::Lateness::none(),
                        )
                        .key_by(|c| c.sku.clone())
                        .window(Window::tumbling(Duration::from_secs(1)))
                        .count()
                        .stream()
                        .batch_size(BATCH)
                        .to(out)
                },
            )
        })
    });
    group.bench_function("fold", |b| {
        b.iter(|| {
            let mut counts: HashMap<(String, u64), u64> = HashMap::new();
            for record in source.read(Start::Beginning) {
                let c = record.unwrap().value;
                let window = window_of(&c);
                *counts.entry((c.sku, window)).or_default() += 1;
            }
            counts.len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick(3);
    targets = map_filter, window_count
}
criterion_main!(benches);
