//! What the benchmarks share: the retail `Checkout` workload and short
//! criterion settings (a whole `cargo bench` should take a few minutes on
//! two cores).

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use backbone::{Durability, EventLog, Options};
use criterion::Criterion;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Checkout {
    pub order_id: u64,
    pub customer_id: u64,
    pub sku: String,
    pub qty: u32,
    pub price_cents: u64,
    pub ts_micros: u64,
}

pub fn checkout(i: u64) -> Checkout {
    Checkout {
        order_id: i,
        customer_id: i % 9973,
        sku: format!("SKU-{:08}", i % 5000),
        qty: (i % 7) as u32 + 1,
        price_cents: 199 + i % 10_000,
        ts_micros: 1_700_000_000_000_000 + i,
    }
}

pub fn open(dir: &Path, durability: Durability) -> EventLog<Checkout> {
    Options::new()
        .durability(durability)
        .open(dir)
        .expect("open bench log")
}

/// Short runs: 10 samples, 1 s of warm-up, `secs` of measurement.
pub fn quick(secs: u64) -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(secs))
        .configure_from_args()
}

/// Whether this is a real `cargo bench` run (criterion gets `--bench`),
/// rather than `cargo test --benches`, which runs each bench once.
pub fn benching() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Whether a name filter given on the command line selects `name`.
pub fn selected(name: &str) -> bool {
    let mut args = std::env::args().skip(1).peekable();
    let mut filters = Vec::new();
    while let Some(a) = args.next() {
        if a.starts_with("--") {
            // Options with a value, as criterion takes them.
            if matches!(
                a.as_str(),
                "--save-baseline"
                    | "--baseline"
                    | "--load-baseline"
                    | "--sample-size"
                    | "--warm-up-time"
                    | "--measurement-time"
                    | "--profile-time"
                    | "--output-format"
                    | "--plotting-backend"
                    | "--color"
                    | "--nresamples"
                    | "--noise-threshold"
                    | "--confidence-level"
                    | "--significance-level"
            ) {
                args.next();
            }
            continue;
        }
        filters.push(a);
    }
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}
