//! The retail-checkout backbone: a whole event-driven shop in one process.
//!
//! - Producers that do not know their consumers: a web shop and a mobile
//!   app append checkouts, and shelf sensors append telemetry, each on its
//!   own thread.
//! - Shipping and contact services each follow the checkouts on their own,
//!   through durable consumers.
//! - The inventory service is a stream job: it folds checkouts into each
//!   SKU's stock and republishes every change as its own `inventory`
//!   stream; a table keeps the current stock queryable, and a reorder job
//!   raises restocks when stock runs low.
//! - Real-time analytics: sales per minute per product (tumbling windows on
//!   event time), and a business rule flagging customers with many orders
//!   in one minute.
//! - A data lake keeps every raw and derived event as JSON Lines files,
//!   exactly once across crashes.
//! - Plugged in mid-run: a loyalty service that starts from the beginning
//!   of history and catches up, and an alerting service that starts from
//!   now.
//!
//! Run it twice on the same `--dir` and the second run continues the same
//! history: offsets go on, and consumers, jobs and tables resume.
//!
//! ```text
//! cargo run --release --example retail_checkout
//! cargo run --release --example retail_checkout -- --orders 200000 --fresh
//! ```

mod events;
mod lake;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backbone::stream::{Job, Lateness, Table, Window, Windowed};
use backbone::{Durability, EventLog, Options, Start};
use clap::Parser;

use events::{
    Channel, Checkout, Flag, Restock, ShelfReading, StockLevel, INITIAL_STOCK, LARGE_ORDER_CENTS,
    REORDER_AT, RESTOCK_QTY, WAREHOUSES,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A thread that ends with its findings.
type Worker<S> = JoinHandle<Result<S, Error>>;

#[derive(Parser, Debug)]
#[command(about = "Run the event-driven shop: producers, services, stream jobs, a data lake")]
struct Args {
    /// Orders to append in this run (half from the web shop, half from
    /// the mobile app).
    #[arg(long, default_value_t = 100_000)]
    orders: u64,
    /// Where the shop's logs go (default: a directory under the system's
    /// temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Delete the shop's data first and start from an empty history.
    #[arg(long)]
    fresh: bool,
    /// Orders per append_batch call of each producer (one fsync each).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Seed of the generated traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Size at which the data lake starts a new file.
    #[arg(long, default_value_t = 4 << 20)]
    lake_file_bytes: u64,
}

/// The shop's logs.
struct Shop {
    checkouts: EventLog<Checkout>,
    telemetry: EventLog<ShelfReading>,
    inventory: EventLog<StockLevel>,
    restocks: EventLog<Restock>,
    sales: EventLog<Windowed<String, u64>>,
    flags: EventLog<Flag>,
}

impl Shop {
    /// Closes every log: what a derived log holds is synced, and the jobs
    /// that write it are registered on their sources.
    fn close(self) -> Result<(), Error> {
        self.checkouts.close()?;
        self.telemetry.close()?;
        self.inventory.close()?;
        self.restocks.close()?;
        self.sales.close()?;
        self.flags.close()?;
        Ok(())
    }

    fn open(dir: &Path) -> backbone::Result<Shop> {
        // Producers' batches are on disk when append_batch returns; derived
        // logs are rebuilt from their sources if a crash takes their tail.
        // 8 MiB segments: a demo's worth of data, not the default 64 MiB.
        let segments = Options::new().segment_bytes(8 << 20);
        let durable = segments.clone().durability(Durability::EveryAppend);
        let derived = segments.durability(Durability::Buffered);
        Ok(Shop {
            checkouts: durable.clone().open(dir.join("checkouts"))?,
            telemetry: durable.open(dir.join("telemetry"))?,
            inventory: derived.clone().open(dir.join("inventory"))?,
            restocks: derived.clone().open(dir.join("restocks"))?,
            sales: derived.clone().open(dir.join("sales-per-minute"))?,
            flags: derived.open(dir.join("flags"))?,
        })
    }
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("backbone-retail-checkout"));
    if args.fresh && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let shop = Shop::open(&dir)?;
    let history = shop.checkouts.next_offset();
    println!(
        "shop: {} ({history} orders already in history)",
        dir.display()
    );
    let first_order = next_order_id(&shop.checkouts)?;

    let jobs = Jobs::start(&shop)?;
    let stock: Table<String, i64> = shop.inventory.table(
        "stock",
        |level: &StockLevel| level.sku.clone(),
        |stock: &mut i64, level| *stock = level.after,
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let shipping = shipping(&shop.checkouts, &stop)?;
    let contact = contact(&shop.checkouts, &stop)?;
    let lake_done = Arc::new(AtomicBool::new(false));
    let lake = data_lake(&shop, &dir.join("lake"), args.lake_file_bytes, &lake_done)?;

    // The producers take order ids (the order's place in the shop's
    // history, which sets its event time) a batch at a time.
    let started = Instant::now();
    let next_order = Arc::new(AtomicU64::new(first_order));
    let end_order = first_order + args.orders;
    let web = produce(&shop.checkouts, &args, Channel::Web, &next_order, end_order);
    let mobile = produce(
        &shop.checkouts,
        &args,
        Channel::Mobile,
        &next_order,
        end_order,
    );
    let sensors = sense(&shop.telemetry, &args);

    // Plugged in mid-run: loyalty from the beginning, alerting from now.
    while next_order.load(Ordering::Relaxed) < first_order + args.orders / 2 && !web.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let loyalty = loyalty(&shop.checkouts, &stop)?;
    let alerting = alerting(&shop.checkouts, &stop)?;
    let alerting_from = alerting.1;

    let web = web.join().expect("web shop")?;
    let mobile = mobile.join().expect("mobile app")?;
    let readings = sensors.join().expect("shelf sensors")?;
    let produced = started.elapsed();

    // Drain: every job, table and service catches up, then stops.
    let end = shop.checkouts.next_offset();
    jobs.wait_for(&shop, end)?;
    stock.wait_for(shop.inventory.next_offset())?;
    wait_for_consumer(&shop.checkouts, "shipping", end);
    wait_for_consumer(&shop.checkouts, "contact", end);
    wait_for_consumer(&shop.checkouts, "loyalty", end);
    stop.store(true, Ordering::Release);
    let parcels = shipping.join().expect("shipping")?;
    let thanked = contact.join().expect("contact")?;
    let points = loyalty.join().expect("loyalty")?;
    let large = alerting.0.join().expect("alerting")?;
    let figures = jobs.stop()?;
    lake_done.store(true, Ordering::Release);
    let lake = lake.join().expect("data lake")?;
    let drained = started.elapsed();

    report(&Report {
        dir: &dir,
        shop: &shop,
        args: &args,
        web,
        mobile,
        readings,
        produced,
        drained,
        parcels,
        thanked,
        points,
        large,
        alerting_from,
        figures,
        stock: &stock,
        lake,
    })?;
    stock.stop();
    stock.join()?;
    drop(stock);
    shop.close()
}

/// The id after the highest in the log. The producers append their
/// batches side by side, so the highest id is among the last few batches
/// (not always the last record), and a run killed with a batch taken but
/// not appended leaves a gap there, never a duplicate after it.
fn next_order_id(log: &EventLog<Checkout>) -> backbone::Result<u64> {
    let end = log.next_offset();
    let tail = end.saturating_sub(1 << 15).max(log.first_offset());
    let mut next = 0;
    for record in log.read(Start::Offset(tail)) {
        next = next.max(record?.value.order_id + 1);
    }
    Ok(next)
}

/// One producer: takes the next `batch` order ids below `end` until there
/// are none, and appends them as checkouts from `channel`.
fn produce(
    log: &EventLog<Checkout>,
    args: &Args,
    channel: Channel,
    next_order: &Arc<AtomicU64>,
    end: u64,
) -> Worker<u64> {
    let (log, next_order) = (log.clone(), next_order.clone());
    let (seed, batch) = (args.seed, args.batch.max(1) as u64);
    std::thread::spawn(move || {
        let mut appended = 0;
        loop {
            let first = next_order.fetch_add(batch, Ordering::Relaxed);
            if first >= end {
                return Ok(appended);
            }
            let checkouts: Vec<Checkout> = (first..end.min(first + batch))
                .map(|n| events::checkout(seed, n, channel))
                .collect();
            log.append_batch(&checkouts)?;
            appended += checkouts.len() as u64;
        }
    })
}

/// The shelf sensors: a reading for every ten orders.
fn sense(log: &EventLog<ShelfReading>, args: &Args) -> Worker<u64> {
    let log = log.clone();
    let (from, count, seed) = (log.next_offset(), args.orders / 10, args.seed);
    std::thread::spawn(move || {
        let readings: Vec<ShelfReading> = (from..from + count)
            .map(|n| events::reading(seed, n))
            .collect();
        for chunk in readings.chunks(256) {
            log.append_batch(chunk)?;
        }
        Ok(count)
    })
}

/// A job's line in the report.
struct JobLine {
    name: String,
    position: u64,
    lag: u64,
    outputs: u64,
    late: u64,
}

/// The stream jobs: named, so a second run resumes each where it stopped.
struct Jobs {
    inventory: Job,
    reorder: Job,
    sales: Job,
    suspicious: Job,
}

impl Jobs {
    fn start(shop: &Shop) -> backbone::Result<Jobs> {
        // Stock per SKU, republished change by change; a level that falls
        // below the reorder point is due a restock, counted as delivered.
        let inventory = shop
            .checkouts
            .stream("inventory", Start::Beginning)
            .scan(HashMap::<String, i64>::new(), |stock, c: Checkout| {
                let level = stock.entry(c.sku.clone()).or_insert(INITIAL_STOCK);
                let before = *level;
                *level -= i64::from(c.qty);
                let restock_due = before >= REORDER_AT && *level < REORDER_AT;
                let after = *level;
                if restock_due {
                    *level += RESTOCK_QTY;
                }
                Some(StockLevel {
                    sku: c.sku,
                    order_id: c.order_id,
                    before,
                    after,
                    restock_due,
                })
            })
            .to(&shop.inventory)?;
        let reorder = shop
            .inventory
            .stream("reorder", Start::Beginning)
            .filter(|level| level.restock_due)
            .map(|level| Restock {
                sku: level.sku,
                qty: RESTOCK_QTY,
                after_order: level.order_id,
            })
            .to(&shop.restocks)?;
        let minute = Duration::from_secs(60);
        let sales = shop
            .checkouts
            .stream("sales-per-minute", Start::Beginning)
            .event_time(Checkout::event_time, Lateness::bounded(minute))
            .key_by(|c| c.sku.clone())
            .window(Window::tumbling(minute))
            .aggregate(|| 0u64, |units, c| *units += u64::from(c.qty))
            .to(&shop.sales)?;
        let suspicious = shop
            .checkouts
            .stream("suspicious-orders", Start::Beginning)
            .event_time(Checkout::event_time, Lateness::bounded(minute))
            .key_by(|c| c.customer_id)
            .window(Window::tumbling(minute))
            .count()
            .stream()
            .filter(|w| w.value >= 5)
            .map(|w| Flag {
                customer_id: w.key,
                orders: w.value,
                minute_start_micros: w.start.as_micros(),
            })
            .to(&shop.flags)?;
        Ok(Jobs {
            inventory,
            reorder,
            sales,
            suspicious,
        })
    }

    fn wait_for(&self, shop: &Shop, end: u64) -> backbone::Result<()> {
        self.inventory.wait_for(end)?;
        self.sales.wait_for(end)?;
        self.suspicious.wait_for(end)?;
        self.reorder.wait_for(shop.inventory.next_offset())
    }

    /// Stops every job (each writes its state), with each one's figures.
    fn stop(self) -> backbone::Result<Vec<JobLine>> {
        let mut figures = Vec::new();
        for job in [self.inventory, self.reorder, self.sales, self.suspicious] {
            let f = job.figures();
            figures.push(JobLine {
                name: job.name().to_owned(),
                position: f.position,
                lag: f.lag,
                outputs: f.outputs,
                late: f.late,
            });
            job.stop();
            job.join()?;
        }
        Ok(figures)
    }
}

/// Waits until consumer `name` has committed `end`.
fn wait_for_consumer(log: &EventLog<Checkout>, name: &str, end: u64) {
    while log
        .consumers()
        .ok()
        .and_then(|all| all.into_iter().find(|c| c.name == name))
        .is_some_and(|c| c.position < end)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A service following the checkouts through durable consumer `name`
/// (created at `start` the first time): hands each new checkout to `f`,
/// commits as it goes, and returns `f`'s result once stopped and caught up.
fn service<S: Send + 'static>(
    log: &EventLog<Checkout>,
    name: &str,
    start: Start,
    stop: &Arc<AtomicBool>,
    mut state: S,
    mut f: impl FnMut(&mut S, Checkout) + Send + 'static,
) -> backbone::Result<Worker<S>> {
    let consumer = log.consumer_with(name, start)?;
    let (log, stop) = (log.clone(), stop.clone());
    Ok(std::thread::spawn(move || {
        let subscription = consumer.subscribe()?;
        let mut next = consumer.position();
        loop {
            match subscription.recv_timeout(Duration::from_millis(5))? {
                Some(record) => {
                    f(&mut state, record.value);
                    next = record.offset + 1;
                    if next % 1024 == 0 {
                        subscription.commit(next)?;
                    }
                }
                None => {
                    // Idle: everything handed over is handled.
                    subscription.commit(next)?;
                    if stop.load(Ordering::Acquire) && next >= log.next_offset() {
                        return Ok(state);
                    }
                }
            }
        }
    }))
}

/// Shipping: parcels per warehouse.
fn shipping(
    log: &EventLog<Checkout>,
    stop: &Arc<AtomicBool>,
) -> backbone::Result<Worker<[u64; WAREHOUSES as usize]>> {
    service(
        log,
        "shipping",
        Start::Beginning,
        stop,
        [0; WAREHOUSES as usize],
        |parcels, c| {
            parcels[(c.customer_id % WAREHOUSES) as usize] += 1;
        },
    )
}

/// Contact: a thank-you message per order.
fn contact(log: &EventLog<Checkout>, stop: &Arc<AtomicBool>) -> backbone::Result<Worker<u64>> {
    service(log, "contact", Start::Beginning, stop, 0u64, |sent, _| {
        *sent += 1
    })
}

/// Loyalty, plugged in mid-run: a point per dollar, from the first order.
fn loyalty(log: &EventLog<Checkout>, stop: &Arc<AtomicBool>) -> backbone::Result<Worker<u64>> {
    service(log, "loyalty", Start::Beginning, stop, 0u64, |points, c| {
        *points += c.total_cents() / 100;
    })
}

/// Alerting, plugged in mid-run: large orders from now on (a live
/// subscription, no stored position). Also returns where it started.
fn alerting(
    log: &EventLog<Checkout>,
    stop: &Arc<AtomicBool>,
) -> backbone::Result<(Worker<(u64, u64)>, u64)> {
    // "From now": the end of the log as this service starts.
    let from = log.next_offset();
    let subscription = log.subscribe(Start::Offset(from))?;
    let (log, stop) = (log.clone(), stop.clone());
    let handle = std::thread::spawn(move || {
        let (mut seen, mut large) = (0u64, 0u64);
        let mut next = from;
        loop {
            match subscription.recv_timeout(Duration::from_millis(5))? {
                Some(record) => {
                    seen += 1;
                    next = record.offset + 1;
                    if record.value.total_cents() > LARGE_ORDER_CENTS {
                        large += 1;
                    }
                }
                None if stop.load(Ordering::Acquire) && next >= log.next_offset() => {
                    return Ok((seen, large));
                }
                None => {}
            }
        }
    });
    Ok((handle, from))
}

/// The data lake: one thread writing every log's sink in turn.
fn data_lake(
    shop: &Shop,
    lake: &Path,
    file_bytes: u64,
    done: &Arc<AtomicBool>,
) -> Result<Worker<(u64, u64)>, Error> {
    let open = |e: Box<dyn std::error::Error>| -> Error { e.to_string().into() };
    let mut sinks: Vec<Box<dyn lake::Step + Send>> = vec![
        Box::new(lake::Sink::open(&shop.checkouts, lake, "checkouts", file_bytes).map_err(open)?),
        Box::new(lake::Sink::open(&shop.telemetry, lake, "telemetry", file_bytes).map_err(open)?),
        Box::new(lake::Sink::open(&shop.inventory, lake, "inventory", file_bytes).map_err(open)?),
        Box::new(lake::Sink::open(&shop.restocks, lake, "restocks", file_bytes).map_err(open)?),
        Box::new(
            lake::Sink::open(&shop.sales, lake, "sales-per-minute", file_bytes).map_err(open)?,
        ),
        Box::new(lake::Sink::open(&shop.flags, lake, "flags", file_bytes).map_err(open)?),
    ];
    let done = done.clone();
    Ok(std::thread::spawn(move || {
        loop {
            let last = done.load(Ordering::Acquire);
            let mut wrote = false;
            for sink in &mut sinks {
                wrote |= sink.step(last)?;
            }
            if last && !wrote {
                break;
            }
            if !wrote {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let (mut files, mut lines) = (0, 0);
        for sink in &sinks {
            let (f, l) = sink.files()?;
            files += f;
            lines += l;
        }
        Ok((files, lines))
    }))
}

struct Report<'a> {
    dir: &'a Path,
    shop: &'a Shop,
    args: &'a Args,
    web: u64,
    mobile: u64,
    readings: u64,
    produced: Duration,
    drained: Duration,
    parcels: [u64; WAREHOUSES as usize],
    thanked: u64,
    points: u64,
    large: (u64, u64),
    alerting_from: u64,
    figures: Vec<JobLine>,
    stock: &'a Table<String, i64>,
    lake: (u64, u64),
}

fn report(r: &Report<'_>) -> Result<(), Error> {
    let shop = r.shop;
    let orders = r.web + r.mobile;
    let secs = r.produced.as_secs_f64().max(1e-9);
    println!();
    println!("== this run");
    println!(
        "orders appended: {orders} (web {}, mobile {})",
        r.web, r.mobile
    );
    println!("orders per second: {:.0}", orders as f64 / secs);
    println!("shelf readings appended: {}", r.readings);
    println!("all caught up after: {:.2} s", r.drained.as_secs_f64());
    println!();
    println!("== the logs (whole history)");
    let units: u64 = shop
        .checkouts
        .read(Start::Beginning)
        .map(|r| r.map(|r| u64::from(r.value.qty)))
        .sum::<backbone::Result<u64>>()?;
    println!(
        "checkouts: {} ({units} units)",
        shop.checkouts.next_offset()
    );
    println!("telemetry: {}", shop.telemetry.next_offset());
    println!("inventory changes: {}", shop.inventory.next_offset());
    println!("restocks: {}", shop.restocks.next_offset());
    let windowed: u64 = shop
        .sales
        .read(Start::Beginning)
        .map(|r| r.map(|r| r.value.value))
        .sum::<backbone::Result<u64>>()?;
    println!(
        "sales-per-minute windows: {} ({windowed} units in closed minutes)",
        shop.sales.next_offset()
    );
    println!("flagged customer-minutes: {}", shop.flags.next_offset());
    println!();
    println!("== services");
    println!("shipping: parcels per warehouse this run {:?}", r.parcels);
    println!("contact: thank-you messages this run: {}", r.thanked);
    println!("loyalty: points granted this run: {}", r.points);
    println!(
        "alerting: orders seen from offset {}: {} ({} large)",
        r.alerting_from, r.large.0, r.large.1
    );
    for c in shop.checkouts.consumers()? {
        println!("consumer {}: at {} (lag {})", c.name, c.position, c.lag);
    }
    for job in &r.figures {
        println!(
            "job {}: at {}, {} outputs and {} late records this run, lag {}",
            job.name, job.position, job.outputs, job.late, job.lag
        );
    }
    let (sku, on_hand) = ("SKU-0042".to_owned(), r.stock.get("SKU-0042"));
    println!(
        "table stock: {} SKUs at inventory offset {}; {sku} on hand: {}",
        r.stock.len(),
        r.stock.position(),
        on_hand.map_or("unknown".to_owned(), |n| n.to_string())
    );
    println!("lake: {} files, {} lines", r.lake.0, r.lake.1);
    println!();
    println!("== where the data lies");
    println!(
        "logs: {}/{{checkouts,telemetry,inventory,restocks,sales-per-minute,flags}}",
        r.dir.display()
    );
    println!("lake: {}/lake/<log>/<first offset>.jsonl", r.dir.display());
    println!("look at it: backbone ls {}", r.dir.display());
    println!(
        "            backbone tail {} -n 5",
        r.dir.join("checkouts").display()
    );
    println!(
        "run again (the history goes on): cargo run --release --example retail_checkout -- --dir {} --orders {}",
        r.dir.display(),
        r.args.orders
    );
    Ok(())
}
