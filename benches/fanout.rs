//! Live fan-out: one appender, 1, 4, 16 and 64 caught-up subscribers, each
//! receiving every record decoded (default `SubscribeOptions`).
//!
//! - `fanout/throughput/N`: criterion's time per appended event, counted
//!   until every subscriber holds it (so elements/s is the rate each
//!   subscriber sees); `fanout/throughput/3+1stalled` adds a subscriber
//!   that never reads to three that do.
//! - latency (printed, not a criterion measurement): appends paced at
//!   50,000 events/s, and for each record the time from the `append` call
//!   to a subscriber holding the decoded record, as p50/p99/p99.9/max from
//!   an HDR histogram over all subscribers; `fanout/latency/4-select`
//!   receives in a `select!` over `ready()`. Runs only under `cargo bench`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use hdrhistogram::Histogram;

use backbone::{Durability, Start, SubscribeOptions};
use common::{benching, checkout, open, quick, selected, Checkout};

const SUBSCRIBERS: [usize; 4] = [1, 4, 16, 64];
const PACE: u64 = 50_000;
const PACED_EVENTS: usize = 50_000;

/// How the subscribers of a run receive.
#[derive(Clone, Copy)]
struct Subscribers {
    /// Subscribers that receive every record.
    live: usize,
    /// Subscribers that never receive anything.
    stalled: usize,
    /// Receive in a `select!` over `ready()`, then `try_recv`.
    select: bool,
}

impl Subscribers {
    fn live(live: usize) -> Subscribers {
        Subscribers {
            live,
            stalled: 0,
            select: false,
        }
    }
}

/// Appends `events` (paced at `pace` events/s if given) to a fresh
/// `Buffered` log with the `subs` subscribers; returns the time from the
/// first append until every live subscriber holds the last record, and the
/// latencies.
fn run(subs: Subscribers, events: &[Checkout], pace: Option<u64>) -> (Duration, Histogram<u64>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::Buffered);
    let n = events.len();
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let _stalled: Vec<_> = (0..subs.stalled)
        .map(|_| log.subscribe(Start::Beginning).unwrap())
        .collect();
    let handles: Vec<_> = (0..subs.live)
        .map(|_| {
            let sub = log
                .subscribe_with(SubscribeOptions::new(Start::Beginning))
                .unwrap();
            let sent = sent.clone();
            let select = subs.select;
            std::thread::spawn(move || {
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
                let mut take = |rec: backbone::Record<Checkout>, expected: &mut u64| {
                    let now = base.elapsed().as_nanos() as u64;
                    assert_eq!(rec.offset, *expected);
                    let at = sent[rec.offset as usize].load(Ordering::Acquire);
                    h.saturating_record(now.saturating_sub(at).max(1));
                    std::hint::black_box(&rec.value);
                    *expected += 1;
                };
                let mut expected = 0;
                while expected < n as u64 {
                    if select {
                        backbone::channel::select! {
                            recv(sub.ready()) -> _ => {
                                while let Some(rec) = sub.try_recv().unwrap() {
                                    take(rec, &mut expected);
                                }
                            }
                        }
                    } else {
                        take(sub.recv().unwrap(), &mut expected);
                    }
                }
                h
            })
        })
        .collect();
    let start = Instant::now();
    for (i, event) in events.iter().enumerate() {
        if let Some(rate) = pace {
            let due = start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate);
            // Sleep, leaving the cores to the subscribers; the pace holds on
            // average, in small bursts.
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        sent[i].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        log.append(event).unwrap();
    }
    log.flush().unwrap();
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    for h in handles {
        all.add(h.join().unwrap()).unwrap();
    }
    let elapsed = start.elapsed();
    log.close().unwrap();
    (elapsed, all)
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout/throughput");
    group.throughput(Throughput::Elements(1));
    let stalled = Subscribers {
        live: 3,
        stalled: 1,
        select: false,
    };
    let runs = SUBSCRIBERS
        .map(|n| (n.to_string(), Subscribers::live(n)))
        .into_iter()
        .chain([("3".to_owned(), Subscribers::live(3))])
        .chain([("3+1stalled".to_owned(), stalled)]);
    for (name, subs) in runs {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let events: Vec<Checkout> = (0..iters).map(checkout).collect();
                run(subs, &events, None).0
            })
        });
    }
    group.finish();
}

fn latency() {
    let events: Vec<Checkout> = (0..PACED_EVENTS as u64).map(checkout).collect();
    let select = Subscribers {
        select: true,
        ..Subscribers::live(4)
    };
    let runs = SUBSCRIBERS
        .map(|n| (n.to_string(), Subscribers::live(n)))
        .into_iter()
        .chain([("4-select".to_owned(), select)]);
    for (name, subs) in runs {
        let name = format!("fanout/latency/{name}");
        if !selected(&name) {
            continue;
        }
        let (elapsed, h) = run(subs, &events, Some(PACE));
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{name:<24} {PACED_EVENTS} events at {PACE}/s ({:.0}/s achieved): append → decoded record \
             p50 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs",
            PACED_EVENTS as f64 / elapsed.as_secs_f64(),
            us(0.5),
            us(0.99),
            us(0.999),
            h.max() as f64 / 1000.0,
        );
    }
}

fn main() {
    let mut c = quick(3);
    throughput(&mut c);
    if benching() {
        latency();
    }
    c.final_summary();
}
