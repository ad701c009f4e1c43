//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use backbone::{EventLog, Options, Raw, Start};
use serde::{Deserialize, Serialize};

/// The retail event the crate is built around.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    pub order_id: u64,
    pub customer_id: u64,
    pub sku: String,
    pub qty: u32,
    pub price_cents: u64,
}

pub fn checkout(i: u64) -> Checkout {
    Checkout {
        order_id: i,
        customer_id: i % 97,
        sku: format!("SKU-{:06}", i % 1000),
        qty: (i % 5) as u32 + 1,
        price_cents: 100 + i,
    }
}

/// The payload of record `i` in byte-level tests: recognisable, of varying
/// length, and different for every index.
pub fn payload(seed: u64, i: u64) -> Vec<u8> {
    let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let len = 1 + (i * 7 + seed) % 40;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every record of a log, as `(offset, payload)`, or the first error.
pub fn read_all(log: &EventLog<Vec<u8>, Raw>) -> backbone::Result<Vec<(u64, Vec<u8>)>> {
    log.read(Start::Beginning)
        .map(|rec| rec.map(|rec| (rec.offset, rec.value)))
        .collect()
}

pub fn open_raw(dir: &Path, options: Options) -> backbone::Result<EventLog<Vec<u8>, Raw>> {
    options.open_with_codec(dir, Raw)
}

/// Segment files of a real log directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}
