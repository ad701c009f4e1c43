//! Append and replay throughput of the typed log, per durability mode.
//! The comparison with other engines and the machine's limits lives in the
//! `compare` bench (a later issue); these are the crate's own regressions.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde::{Deserialize, Serialize};

use backbone::{Durability, EventLog, Options, Start};

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Checkout {
    order_id: u64,
    customer_id: u64,
    sku: String,
    qty: u32,
    price_cents: u64,
    ts_micros: u64,
}

fn checkout(i: u64) -> Checkout {
    Checkout {
        order_id: i,
        customer_id: i % 9973,
        sku: format!("SKU-{:08}", i % 5000),
        qty: (i % 7) as u32 + 1,
        price_cents: 199 + i % 10_000,
        ts_micros: 1_700_000_000_000_000 + i,
    }
}

fn open(dir: &std::path::Path, durability: Durability) -> EventLog<Checkout> {
    Options::new()
        .durability(durability)
        .open(dir)
        .expect("open bench log")
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(1));
    let events: Vec<Checkout> = (0..256).map(checkout).collect();
    for (name, durability) in [
        ("single/buffered", Durability::Buffered),
        (
            "single/interval",
            Durability::Interval(std::time::Duration::from_millis(10)),
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), durability);
        let mut i = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                i += 1;
                log.append(&events[i % events.len()]).unwrap()
            })
        });
    }
    group.throughput(Throughput::Elements(events.len() as u64));
    for (name, durability) in [
        ("batch256/buffered", Durability::Buffered),
        ("batch256/every_append", Durability::EveryAppend),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path(), durability);
        group.bench_function(name, |b| b.iter(|| log.append_batch(&events).unwrap()));
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    const N: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::Buffered);
    let events: Vec<Checkout> = (0..N).map(checkout).collect();
    for chunk in events.chunks(1024) {
        log.append_batch(chunk).unwrap();
    }
    log.sync().unwrap();
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(N));
    group.bench_function("typed_from_0", |b| {
        b.iter(|| {
            log.read(Start::Beginning)
                .map(|r| r.unwrap().offset)
                .sum::<u64>()
        })
    });
    group.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    group.bench_function("random_get", |b| {
        b.iter_batched(
            || {
                i = (i * 6364136223846793005 + 1442695040888963407) % N;
                i
            },
            |offset| log.get(offset).unwrap().unwrap().offset,
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, append, replay);
criterion_main!(benches);
