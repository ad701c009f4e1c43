//! The shop's events (immutable facts) and the deterministic traffic that
//! stands in for its customers and shelves.

use backbone::Timestamp;
use serde::{Deserialize, Serialize};

/// Stock each SKU starts with, and where a restock is raised.
pub const INITIAL_STOCK: i64 = 60;
pub const REORDER_AT: i64 = 20;
/// What a restock delivers.
pub const RESTOCK_QTY: i64 = 100;
pub const SKUS: u64 = 500;
pub const WAREHOUSES: u64 = 4;
/// Event time between two orders: 20 orders a second, a busy shop.
pub const ORDER_EVERY_MICROS: u64 = 50_000;
/// Where the shop's event time starts (2026-01-01).
pub const DAY_ZERO_MICROS: u64 = 1_767_225_600_000_000;
/// An order above this is one the alerting service looks at.
pub const LARGE_ORDER_CENTS: u64 = 50_000;

/// Where a checkout came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    Web,
    Mobile,
}

/// One completed checkout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Checkout {
    pub order_id: u64,
    pub channel: Channel,
    pub customer_id: u64,
    pub sku: String,
    pub qty: u32,
    pub price_cents: u64,
    pub ts_micros: u64,
}

impl Checkout {
    /// When the order was placed, for the windows.
    pub fn event_time(&self) -> Timestamp {
        Timestamp::from_micros(self.ts_micros)
    }

    pub fn total_cents(&self) -> u64 {
        self.price_cents * u64::from(self.qty)
    }
}

/// A shelf sensor's reading: the weight of what is left on a shelf.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ShelfReading {
    pub shelf: u32,
    pub sku: String,
    pub grams: u32,
    pub ts_micros: u64,
}

/// A change of one SKU's stock, as the inventory service republishes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StockLevel {
    pub sku: String,
    pub order_id: u64,
    pub before: i64,
    pub after: i64,
    /// The level fell below the reorder point with this order: a restock
    /// is due (and the inventory counts it as delivered).
    pub restock_due: bool,
}

/// A restock the reorder service raises.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Restock {
    pub sku: String,
    pub qty: i64,
    pub after_order: u64,
}

/// A customer with many orders in one minute, as the business rule sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Flag {
    pub customer_id: u64,
    pub orders: u64,
    pub minute_start_micros: u64,
}

fn mix(seed: u64, n: u64) -> u64 {
    let mut x = n
        .wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 29)
}

/// Order `n` of the shop's history (its id), the same for a given seed
/// whichever run makes it. One order in 63 groups of eight is a burst: the
/// same customer orders eight times within half a second, which the
/// business rule flags unless a minute's end splits it.
pub fn checkout(seed: u64, n: u64, channel: Channel) -> Checkout {
    let m = mix(seed, n);
    let burst = (n / 8).is_multiple_of(63);
    Checkout {
        order_id: n,
        channel,
        customer_id: if burst { 1_000_000 + n / 8 } else { m % 20_000 },
        sku: format!("SKU-{:04}", (m >> 20) % SKUS),
        qty: (m >> 40) as u32 % 4 + 1,
        price_cents: 299 + (m >> 8) % 20_000,
        ts_micros: DAY_ZERO_MICROS + n * ORDER_EVERY_MICROS,
    }
}

/// Reading `n` of the shelf sensors.
pub fn reading(seed: u64, n: u64) -> ShelfReading {
    let m = mix(seed ^ 0x5E45_0125, n);
    ShelfReading {
        shelf: (m % 50) as u32,
        sku: format!("SKU-{:04}", (m >> 16) % SKUS),
        grams: (m >> 32) as u32 % 20_000,
        ts_micros: DAY_ZERO_MICROS + n * ORDER_EVERY_MICROS * 10,
    }
}
