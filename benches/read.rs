//! Reading: replay from offset 0, typed (`EventLog<Checkout>`, decoding
//! every record; also with the `Bincode` codec, under feature `bincode`)
//! and raw (`EventLog<Vec<u8>, Raw>` over the same postcard bytes, no
//! decoding), and random point reads with `get`.

mod common;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use backbone::{Codec, Durability, EventLog, Options, Raw, Start};
use common::{checkout, open, quick, Checkout};

const N: u64 = 200_000;

/// Replays `log` from offset 0, decoding every record.
fn replay_qty<C: Codec<Checkout>>(log: &EventLog<Checkout, C>) -> u64 {
    let mut qty = 0u64;
    for rec in log.read(Start::Beginning) {
        qty += u64::from(rec.unwrap().value.qty);
    }
    qty
}

fn read(c: &mut Criterion) {
    let events: Vec<Checkout> = (0..N).map(checkout).collect();
    let typed_dir = tempfile::tempdir().unwrap();
    let typed = open(typed_dir.path(), Durability::Buffered);
    for chunk in events.chunks(1024) {
        typed.append_batch(chunk).unwrap();
    }
    typed.sync().unwrap();

    let raw_dir = tempfile::tempdir().unwrap();
    let raw: EventLog<Vec<u8>, Raw> = Options::new()
        .durability(Durability::Buffered)
        .open_with_codec(raw_dir.path(), Raw)
        .unwrap();
    let bytes: Vec<Vec<u8>> = events
        .iter()
        .map(|e| postcard::to_stdvec(e).unwrap())
        .collect();
    for chunk in bytes.chunks(1024) {
        raw.append_batch(chunk).unwrap();
    }
    raw.sync().unwrap();

    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(N));
    group.bench_function("typed_from_0", |b| b.iter(|| replay_qty(&typed)));
    #[cfg(feature = "bincode")]
    let bincode_dir = tempfile::tempdir().unwrap();
    #[cfg(feature = "bincode")]
    {
        let typed: EventLog<Checkout, backbone::Bincode> = Options::new()
            .durability(Durability::Buffered)
            .open_with_codec(bincode_dir.path(), backbone::Bincode)
            .unwrap();
        for chunk in events.chunks(1024) {
            typed.append_batch(chunk).unwrap();
        }
        typed.sync().unwrap();
        group.bench_function("typed_from_0_bincode", |b| b.iter(|| replay_qty(&typed)));
    }
    group.bench_function("raw_from_0", |b| {
        b.iter(|| {
            let mut len = 0usize;
            for rec in raw.read(Start::Beginning) {
                len += rec.unwrap().value.len();
            }
            len
        })
    });
    group.finish();

    let mut group = c.benchmark_group("get");
    group.throughput(Throughput::Elements(1));
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    group.bench_function("random_typed", |b| {
        b.iter_batched(
            || {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 17) % N
            },
            |offset| typed.get(offset).unwrap().unwrap().value.qty,
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = quick(2);
    targets = read
}
criterion_main!(benches);
