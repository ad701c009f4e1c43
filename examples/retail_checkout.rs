//! The retail-checkout backbone: a web shop's checkout appends one event per
//! order, and independent services consume the log on their own terms.
//!
//! - `inventory` keeps current stock per SKU;
//! - `shipping` counts parcels per warehouse;
//! - `analytics`, a service "plugged in later", replays all of history.
//!
//! Each service has a durable consumer position, so running the example
//! again appends a new day of orders and every service resumes where it
//! stopped, handling only what is new.
//!
//! ```text
//! cargo run --release --example retail_checkout
//! cargo run --release --example retail_checkout -- --orders 200000 --fresh
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use backbone::{Durability, EventLog, Options, Start};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// One completed checkout: an immutable fact about an order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Checkout {
    order_id: u64,
    customer_id: u64,
    sku: String,
    qty: u32,
    price_cents: u64,
    ts_micros: u64,
}

#[derive(Parser, Debug)]
#[command(about = "Append a day of checkouts and let three services consume them")]
struct Args {
    /// Orders to append in this run.
    #[arg(long, default_value_t = 100_000)]
    orders: u64,
    /// The log directory (default: a directory under the system's temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Delete the log first and start from an empty history.
    #[arg(long)]
    fresh: bool,
    /// Orders per append_batch call (one fsync each).
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

const SKUS: u64 = 500;
const WAREHOUSES: u64 = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = args
        .dir
        .unwrap_or_else(|| std::env::temp_dir().join("backbone-retail-checkout"));
    if args.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    let log: EventLog<Checkout> = Options::new()
        .segment_bytes(16 << 20)
        .durability(Durability::EveryAppend)
        .open(&dir)?;
    let report = log.recovery_report();
    println!(
        "log: {} ({} orders already in history)",
        dir.display(),
        log.len()
    );
    if !report.is_clean() {
        println!("recovery: {report:?}");
    }

    // The checkout service: every batch is on disk when append_batch returns.
    let started = Instant::now();
    let first_order = log.next_offset();
    let mut batch = Vec::with_capacity(args.batch.max(1));
    for order_id in first_order..first_order + args.orders {
        batch.push(checkout(order_id));
        if batch.len() == batch.capacity() {
            log.append_batch(&batch)?;
            batch.clear();
        }
    }
    log.append_batch(&batch)?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "checkout: appended {} orders in {:.2} s ({:.0} orders/s, durable to offset {})",
        args.orders,
        secs,
        args.orders as f64 / secs.max(1e-9),
        log.durable_offset()
    );

    // Inventory: current stock per SKU, resuming from its committed position.
    let inventory = log.consumer("inventory")?;
    let mut sold: BTreeMap<String, u64> = BTreeMap::new();
    let mut handled = 0u64;
    for rec in inventory.read() {
        let rec = rec?;
        *sold.entry(rec.value.sku.clone()).or_default() += u64::from(rec.value.qty);
        handled += 1;
    }
    inventory.commit(log.next_offset())?;
    let best = sold.iter().max_by_key(|(_, qty)| **qty);
    println!(
        "inventory: handled {handled} new orders; best seller this run: {}",
        best.map_or("none".to_string(), |(sku, qty)| format!(
            "{sku} ({qty} units)"
        ))
    );

    // Shipping: parcels per warehouse, committing as it goes.
    let shipping = log.consumer("shipping")?;
    let mut parcels = [0u64; WAREHOUSES as usize];
    let mut since_commit = 0;
    for rec in shipping.read() {
        let rec = rec?;
        parcels[(rec.value.customer_id % WAREHOUSES) as usize] += 1;
        since_commit += 1;
        if since_commit == 10_000 {
            shipping.commit(rec.offset + 1)?;
            since_commit = 0;
        }
    }
    shipping.commit(log.next_offset())?;
    println!("shipping: parcels per warehouse this run {parcels:?}");

    // Analytics, plugged in later: replays the whole history, whoever wrote it.
    let replay = Instant::now();
    let (mut orders, mut revenue_cents) = (0u64, 0u64);
    for rec in log.read(Start::Beginning) {
        let rec = rec?;
        orders += 1;
        revenue_cents += rec.value.price_cents * u64::from(rec.value.qty);
    }
    println!(
        "analytics: replayed {orders} orders in {:.2} s, revenue ${}.{:02}",
        replay.elapsed().as_secs_f64(),
        revenue_cents / 100,
        revenue_cents % 100
    );
    assert_eq!(orders, log.len(), "a replay sees every order in the log");

    let stats = log.stats();
    println!(
        "log: offsets {}..{}, {} segments, {:.1} MiB on disk; consumers at inventory={} shipping={}",
        stats.first_offset,
        stats.next_offset,
        stats.segments,
        stats.bytes as f64 / (1 << 20) as f64,
        inventory.position(),
        shipping.position()
    );
    log.close()?;
    Ok(())
}

/// A deterministic stand-in for the shop's traffic.
fn checkout(order_id: u64) -> Checkout {
    let mix = order_id.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    Checkout {
        order_id,
        customer_id: mix % 50_000,
        sku: format!("SKU-{:06}", (mix >> 20) % SKUS),
        qty: (mix >> 40) as u32 % 4 + 1,
        price_cents: 299 + (mix >> 8) % 20_000,
        ts_micros: 1_767_225_600_000_000 + order_id * 1_000,
    }
}
