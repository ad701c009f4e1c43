//! The comparison program of issue 5: one retail `Checkout` workload run on
//! backbone, on the machine's own limits and on what a user would pick
//! instead (SQLite, the `commitlog` crate, NATS JetStream, Redis Streams),
//! all in the same run. Stream jobs and tables run in alternation with the
//! hand-written code they replace (a read + `append_batch` loop, a
//! `HashMap` fold, a plain subscription, a table rebuilt from scratch); the
//! table's restart after a SIGKILL kills a child process, this program run
//! again with `COMPARE_CHILD=table`. Prints a Markdown table of medians and
//! ratios, writes them as JSON and draws them as an SVG bar chart.
//!
//! ```text
//! cargo run --release -p compare -- [--events N] [--reps R] [--out DIR]
//! ```
//!
//! See `--help` for the other knobs (caps for the slow, round-trip-bound
//! workloads, `--only` to run a subset).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use backbone::stream::{Lateness, Table, Window, Windowed};
use backbone::{Durability, EventLog, Options, Start, SubscribeOptions, Timestamp};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error + Send + Sync>;
type R<T> = std::result::Result<T, Error>;

fn err(e: impl std::fmt::Debug) -> Error {
    format!("{e:?}").into()
}

// ---- the workload -----------------------------------------------------------

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
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

fn decode(bytes: &[u8]) -> R<Checkout> {
    Ok(postcard::from_bytes(bytes)?)
}

const BATCH: usize = 256;
/// The pace of the latency runs, in events per second.
const PACE: u64 = 50_000;

struct Data {
    values: Vec<Checkout>,
    bytes: Vec<Vec<u8>>,
    /// Pseudo-random offsets for the point reads.
    gets: Vec<u64>,
}

impl Data {
    fn new(n: u64, gets: u64) -> Data {
        let values: Vec<Checkout> = (0..n).map(checkout).collect();
        let bytes = values
            .iter()
            .map(|v| postcard::to_stdvec(v).expect("encode"))
            .collect();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let gets = (0..gets)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 17) % n
            })
            .collect();
        Data {
            values,
            bytes,
            gets,
        }
    }
    fn payload_bytes(&self) -> u64 {
        self.bytes.iter().map(|b| b.len() as u64).sum()
    }
}

// ---- configuration ----------------------------------------------------------

struct Config {
    events: u64,
    reps: usize,
    out: PathBuf,
    /// Events for the brokers' pipelined workloads.
    broker_events: u64,
    /// Events for workloads that pay one round trip or one fsync per event.
    slow_events: u64,
    /// Events of each paced latency run.
    paced_events: u64,
    gets: u64,
    only: Option<Vec<String>>,
    workloads: Option<String>,
}

const HELP: &str = "\
compare: backbone against the machine's limits and the alternatives, one run

USAGE: cargo run --release -p compare -- [OPTIONS]

  --events N          events per workload (default 1000000)
  --reps R            repetitions; medians are reported (default 3)
  --out DIR           where latest.json, latest.md and latest.svg go
                      (default compare/results)
  --broker-events N   events for NATS and Redis pipelined runs (default min(events, 200000))
  --slow-events N     events for one-fsync-or-round-trip-per-event runs, per thread
                      (default min(events, 5000))
  --paced-events N    events of each 50k/s latency run (default min(events, 100000))
  --gets N            random point reads (default min(events, 200000))
  --only LIST         comma-separated systems: limits,backbone,sqlite,commitlog,nats,redis
                      (backbone brings its stream rows' limits along; nats brings the
                      rows of backbone::nats::Mirror against direct publishes)
  --workloads TEXT    only the workloads whose name contains TEXT (e.g. 'fresh',
                      'replay', 'stream', 'table', 'mirror'); a row measured in
                      alternation with its limit brings that limit along; 'group commit'
                      (or any of its rows' names, e.g. '4 threads') runs the 1-, 4- and
                      8-thread EveryAppend rows and their fdatasync-per-record limits
                      together, in max(R, 5) runs

  The NATS rows start a nats-server: $BACKBONE_NATS_SERVER, else the one scripts/test
  installs (target/nats-venv/bin/nats-server), else one on the PATH that is 2.12 or
  newer (an older one runs all but the mirror rows).
";

fn parse_args() -> R<Config> {
    let mut args = std::env::args().skip(1);
    let mut opts: BTreeMap<String, String> = BTreeMap::new();
    while let Some(a) = args.next() {
        if a == "-h" || a == "--help" {
            print!("{HELP}");
            std::process::exit(0);
        }
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}; see --help").into());
        };
        let value = args
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        opts.insert(name.to_owned(), value);
    }
    let num = |name: &str, default: u64| -> R<u64> {
        match opts.get(name) {
            Some(v) => Ok(v.replace('_', "").parse()?),
            None => Ok(default),
        }
    };
    let events = num("events", 1_000_000)?.max(BATCH as u64);
    let config = Config {
        events,
        reps: num("reps", 3)?.max(1) as usize,
        out: opts
            .get("out")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")),
        broker_events: num("broker-events", events.min(200_000))?.max(BATCH as u64),
        slow_events: num("slow-events", events.min(5_000))?.max(1),
        paced_events: num("paced-events", events.min(100_000))?.max(1),
        gets: num("gets", events.min(200_000))?.max(1),
        only: opts
            .get("only")
            .map(|s| s.split(',').map(|x| x.trim().to_owned()).collect()),
        workloads: opts.get("workloads").cloned(),
    };
    for key in opts.keys() {
        if ![
            "events",
            "reps",
            "out",
            "broker-events",
            "slow-events",
            "paced-events",
            "gets",
            "only",
            "workloads",
        ]
        .contains(&key.as_str())
        {
            return Err(format!("unknown option --{key}; see --help").into());
        }
    }
    Ok(config)
}

impl Config {
    fn runs(&self, system: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|s| s == system))
    }
}

// ---- measurements -----------------------------------------------------------

/// One repetition of one workload.
#[derive(Clone, Debug, Default)]
struct Sample {
    events: u64,
    secs: f64,
    fsyncs: Option<u64>,
    /// Latency percentiles in microseconds: p50, p99, p99.9, max.
    latency: Option<[f64; 4]>,
    /// The largest backlog seen by a subscriber (records).
    max_lag: Option<u64>,
    /// What else this repetition measured, for the row's note.
    extra: Option<String>,
    /// The p99 latency of the in-memory limit measured just before this
    /// repetition, on the same events: the row's ratio is the median of
    /// the per-repetition ratios, so that the machine's state (these
    /// machines are shared) weighs on both sides alike.
    paired_p99: Option<f64>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.events as f64 / self.secs
    }
}

#[derive(Serialize, Clone, Debug)]
struct Row {
    system: String,
    workload: String,
    /// The limit this row is compared with, by its `system · workload` label.
    limit: Option<String>,
    events: u64,
    /// Median over repetitions.
    events_per_sec: f64,
    samples: Vec<f64>,
    ratio_to_limit: Option<f64>,
    /// `ratio_to_limit` is this row's time over its limit's, for the same
    /// work (lower is better), rather than a rate or a p99 ratio.
    ratio_is_time: bool,
    fsyncs: Option<u64>,
    latency_us: Option<Latency>,
    max_lag: Option<u64>,
    note: String,
}

#[derive(Serialize, Clone, Copy, Debug)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Bench<'a> {
    config: &'a Config,
    rows: Vec<Row>,
}

impl Bench<'_> {
    /// Whether `--workloads` selects `workload`.
    fn selected(&self, workload: &str) -> bool {
        self.config
            .workloads
            .as_ref()
            .is_none_or(|only| workload.contains(only.as_str()))
    }

    /// Runs `f` `reps` times and records the medians.
    fn run(
        &mut self,
        system: &str,
        workload: &str,
        limit: Option<(&str, &str)>,
        note: &str,
        mut f: impl FnMut() -> R<Sample>,
    ) {
        if !self.selected(workload) {
            return;
        }
        let mut samples = Vec::new();
        for _ in 0..self.config.reps {
            match f() {
                Ok(s) => samples.push(s),
                Err(e) => {
                    eprintln!("  {system} / {workload}: FAILED: {e}");
                    return;
                }
            }
        }
        self.record(system, workload, limit, note, samples);
    }

    /// Runs a row and its limit in alternating repetitions: each call of
    /// `f` measures the limit, then the row, on the same setup, so that
    /// the machine's state (these machines are shared) weighs on both
    /// alike. Records the limit's row, then this one's (their ratio is
    /// that of their medians, or, for latency rows that set `paired_p99`,
    /// the median of the per-repetition p99 ratios). `--workloads` selects
    /// the pair by this row's workload. Returns this row, if it ran.
    fn run_pair(
        &mut self,
        system: &str,
        workload: &str,
        note: &str,
        limit: ((&str, &str), &str),
        mut f: impl FnMut() -> R<(Sample, Sample)>,
    ) -> Option<&mut Row> {
        let ((limit_system, limit_workload), limit_note) = limit;
        if !self.selected(workload) {
            return None;
        }
        let (mut limits, mut samples) = (Vec::new(), Vec::new());
        for _ in 0..self.config.reps {
            match f() {
                Ok((l, s)) => {
                    limits.push(l);
                    samples.push(s);
                }
                Err(e) => {
                    eprintln!("  {system} / {workload} (and its limit): FAILED: {e}");
                    return None;
                }
            }
        }
        self.record(limit_system, limit_workload, None, limit_note, limits);
        self.record(
            system,
            workload,
            Some((limit_system, limit_workload)),
            note,
            samples,
        );
        self.rows.last_mut()
    }

    /// Records a row of the medians of `samples` (at least one).
    fn record(
        &mut self,
        system: &str,
        workload: &str,
        limit: Option<(&str, &str)>,
        note: &str,
        samples: Vec<Sample>,
    ) {
        let rates: Vec<f64> = samples.iter().map(Sample::rate).collect();
        let eps = median(rates.clone());
        let fsyncs = samples[0].fsyncs;
        let latency = if samples.iter().all(|s| s.latency.is_some()) {
            let pick = |i: usize| median(samples.iter().map(|s| s.latency.unwrap()[i]).collect());
            Some(Latency {
                p50: pick(0),
                p99: pick(1),
                p999: pick(2),
                max: pick(3),
            })
        } else {
            None
        };
        let max_lag = samples.iter().filter_map(|s| s.max_lag).max();
        let paired = samples
            .iter()
            .map(|s| Some(s.latency?[1] / s.paired_p99?))
            .collect::<Option<Vec<f64>>>()
            .map(median);
        let extras: Vec<&str> = samples.iter().filter_map(|s| s.extra.as_deref()).collect();
        let note = if extras.is_empty() {
            note.to_owned()
        } else {
            format!("{note}; per run: {}", extras.join(" / "))
        };
        let row = Row {
            system: system.to_owned(),
            workload: workload.to_owned(),
            limit: limit.map(|(s, w)| format!("{s} · {w}")),
            events: samples[0].events,
            events_per_sec: eps,
            samples: rates,
            ratio_to_limit: paired,
            ratio_is_time: false,
            fsyncs,
            latency_us: latency,
            max_lag,
            note,
        };
        let lat = latency
            .map(|l| format!(", p99 {:.1} µs", l.p99))
            .unwrap_or_default();
        eprintln!("  {system} / {workload}: {} events/s{lat}", human(eps));
        self.rows.push(row);
    }

    fn finish(&mut self) {
        let by_label: BTreeMap<String, (f64, Option<Latency>)> = self
            .rows
            .iter()
            .map(|r| {
                (
                    format!("{} · {}", r.system, r.workload),
                    (r.events_per_sec, r.latency_us),
                )
            })
            .collect();
        for row in &mut self.rows {
            if row.ratio_to_limit.is_some() {
                // Paired with its limit, repetition by repetition (rate
                // rows that set their ratio say how in their own note).
                if row.latency_us.is_none() {
                    continue;
                }
                row.note = format!(
                    "{}; p99 ratio: median over the repetitions of each against a limit run just before it",
                    row.note
                );
                continue;
            }
            if let Some(limit) = &row.limit {
                if let Some((eps, lat)) = by_label.get(limit) {
                    row.ratio_to_limit = match (row.latency_us, lat) {
                        // For latency rows the ratio is of p99s (lower is better).
                        (Some(mine), Some(theirs)) => Some(mine.p99 / theirs.p99),
                        // The same work on both sides: the ratio of times.
                        _ if row.ratio_is_time => Some(eps / row.events_per_sec),
                        _ => Some(row.events_per_sec / eps),
                    };
                }
            }
        }
    }
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn timed(events: u64, f: impl FnOnce() -> R<()>) -> R<Sample> {
    let t = Instant::now();
    f()?;
    Ok(Sample {
        events,
        secs: t.elapsed().as_secs_f64(),
        ..Sample::default()
    })
}

fn tmp() -> R<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("compare-").tempdir()?)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

fn percentiles(h: &Histogram<u64>) -> [f64; 4] {
    let us = |v: u64| v as f64 / 1000.0;
    [
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    ]
}

/// Waits until `deadline` by sleeping, leaving the cores to the receivers
/// (on two cores, spinning here would delay them). A sleep overshoots by
/// tens of microseconds, so the pace holds on average, in small bursts.
fn pace_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

// ---- the machine's limits ---------------------------------------------------

const LIMITS: &str = "limit";
const W_SINGLE: &str = "append single";
const W_BATCH: &str = "append batch 256";
const W_DURABLE: &str = "durable append batch 256";
const W_DURABLE_1: &str = "durable append single, 1 thread";
const W_DURABLE_4: &str = "durable append single, 4 threads";
const W_DURABLE_8: &str = "durable append single, 8 threads";
/// What `--workloads` also knows the 1-, 4- and 8-thread rows and their
/// limits by: they run together, back to back within each run.
const W_GROUP_COMMIT: &str = "group commit";
const W_DURABLE_FRESH: &str = "durable append batch 256, fresh log";
const W_REPLAY_BINCODE: &str = "replay from 0, bincode codec";
const W_REPLAY: &str = "replay from 0";
const W_GET: &str = "random get";
const W_FANOUT: &str = "fan-out 4 subs, throughput";
const W_FANOUT_16: &str = "fan-out 16 subs, throughput (deliveries)";
const W_FANOUT_3: &str = "fan-out 3 subs, throughput";
const W_FANOUT_STALLED: &str = "fan-out 3 subs + 1 stalled, throughput";
const W_FANOUT_DURABLE: &str = "fan-out 4 subs, throughput, EveryAppend batches";
const W_LATENCY: &str = "fan-out 4 subs @50k/s, latency";
const W_LATENCY_16: &str = "fan-out 16 subs @50k/s, latency";
const W_LATENCY_SELECT: &str = "fan-out 4 subs @50k/s, latency, select!";
const W_MANY_LOGS: &str = "1,000 logs, Interval(50 ms), 1 subscription each";

const L_FILE_SINGLE: (&str, &str) = ("limit", "BufWriter, one write per record");
const L_FILE_BATCH: (&str, &str) = ("limit", "BufWriter, one write per 256");
const L_ENCODE: (&str, &str) = ("limit", "postcard encode + BufWriter, one write per record");
const L_ENCODE_BATCH: (&str, &str) = ("limit", "postcard encode + BufWriter, one write per 256");
const L_FSYNC: (&str, &str) = ("limit", "write + fdatasync per 256");
/// [`L_FSYNC`] measured again, alternated with the fresh-log row.
const L_FSYNC_FRESH: (&str, &str) = (
    "limit",
    "write + fdatasync per 256, alternated with the fresh log",
);
const L_FSYNC_SINGLE: (&str, &str) = ("limit", "write + fdatasync per record");
const L_FSYNC_SINGLE_PRE: (&str, &str) = ("limit", "write + fdatasync per record, preallocated");
const L_REPLAY: (&str, &str) = ("limit", "BufReader replay of the bytes");
const L_REPLAY_DECODE: (&str, &str) = ("limit", "BufReader replay + decode");
const L_REPLAY_DECODE_ALT: (&str, &str) = (
    "limit",
    "BufReader replay + decode, alternated with the typed replay",
);
const L_GET: (&str, &str) = ("limit", "in-memory index + pread + decode");
const L_FANOUT: (&str, &str) = ("limit", "Vec + crossbeam fan-out to 4");
const L_FANOUT_16: (&str, &str) = ("limit", "Vec + crossbeam fan-out to 16 (deliveries)");
const L_LATENCY: (&str, &str) = ("limit", "Vec + crossbeam fan-out to 4 @50k/s");
const L_LATENCY_16: (&str, &str) = ("limit", "Vec + crossbeam fan-out to 16 @50k/s");

/// Writes the records as (u32 length, bytes) through a `BufWriter`.
fn write_file(path: &Path, data: &Data, batched: bool) -> R<()> {
    let mut w = BufWriter::with_capacity(256 << 10, File::create(path)?);
    if batched {
        let mut buf = Vec::with_capacity(BATCH * 64);
        for chunk in data.bytes.chunks(BATCH) {
            buf.clear();
            for b in chunk {
                buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
                buf.extend_from_slice(b);
            }
            w.write_all(&buf)?;
        }
    } else {
        for b in &data.bytes {
            w.write_all(&(b.len() as u32).to_le_bytes())?;
            w.write_all(b)?;
        }
    }
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(())
}

fn fsync_limit(data: &Data, prealloc: bool) -> R<Sample> {
    fsync_limit_with(&data.bytes, prealloc, BATCH)
}

/// Writes `records` as (u32 length, bytes), `per` records per write, each
/// write followed by an `fdatasync`; into a growing file, or with
/// `prealloc` over a file of zeros written and synced beforehand.
fn fsync_limit_with(records: &[Vec<u8>], prealloc: bool, per: usize) -> R<Sample> {
    let dir = tmp()?;
    let path = dir.path().join("fsync.bin");
    let file = File::create(&path)?;
    if prealloc {
        // Written and synced once, so the timed writes change no file size.
        let total: u64 = records.iter().map(|b| 4 + b.len() as u64).sum();
        let zeros = vec![0u8; 1 << 20];
        let mut left = total;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            (&file).write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
    }
    let mut buf = Vec::with_capacity(per * 64);
    let mut pos = 0u64;
    let mut fsyncs = 0;
    let mut s = timed(records.len() as u64, || {
        for chunk in records.chunks(per) {
            buf.clear();
            for b in chunk {
                buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
                buf.extend_from_slice(b);
            }
            file.write_all_at(&buf, pos)?;
            pos += buf.len() as u64;
            file.sync_data()?;
            fsyncs += 1;
        }
        Ok(())
    })?;
    s.fsyncs = Some(fsyncs);
    Ok(s)
}

/// The replay limit: the workload's bytes written as (u32 length, bytes)
/// records, read back through a `BufReader`, each decoded with `decoding`.
fn bufreader_replay(data: &Data, decoding: bool) -> R<Sample> {
    let n = data.bytes.len() as u64;
    let dir = tmp()?;
    let path = dir.path().join("f");
    write_file(&path, data, true)?;
    let mut count = 0u64;
    let mut sum = 0u64;
    let s = timed(n, || {
        let mut r = BufReader::with_capacity(256 << 10, File::open(&path)?);
        let mut len = [0u8; 4];
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match r.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.into()),
            }
            let l = u32::from_le_bytes(len) as usize;
            r.read_exact(&mut buf[..l])?;
            sum += if decoding {
                u64::from(decode(&buf[..l])?.qty)
            } else {
                u64::from(buf[0])
            };
            count += 1;
        }
        Ok(())
    })?;
    check(count == n && sum > 0, "replay count")?;
    Ok(s)
}

/// The encode-inclusive limits: each value postcard-encoded behind its u32
/// length into a reused buffer, `per` records to a `write` through a
/// `BufWriter`.
fn encode_and_write(path: &Path, values: &[Checkout], per: usize) -> R<()> {
    let mut w = BufWriter::with_capacity(256 << 10, File::create(path)?);
    let mut buf = Vec::with_capacity(per * 64);
    for chunk in values.chunks(per) {
        buf.clear();
        for v in chunk {
            let at = buf.len();
            buf.extend_from_slice(&[0; 4]);
            postcard::to_io(v, &mut buf)?;
            let len = (buf.len() - at - 4) as u32;
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        w.write_all(&buf)?;
    }
    w.into_inner().map_err(|e| e.into_error())?;
    Ok(())
}

fn limits(b: &mut Bench<'_>, data: &Data) {
    let n = data.bytes.len() as u64;
    b.run(L_FILE_SINGLE.0, L_FILE_SINGLE.1, None, "", || {
        let dir = tmp()?;
        timed(n, || write_file(&dir.path().join("f"), data, false))
    });
    let encode_limits = [
        (
            L_ENCODE,
            1,
            "encodes each Checkout into a reused buffer: the limit of backbone's Buffered single appends",
        ),
        (
            L_ENCODE_BATCH,
            BATCH,
            "encodes 256 Checkouts into a reused buffer, one write: the limit of backbone's Buffered batches",
        ),
    ];
    for (limit, per, note) in encode_limits {
        b.run(limit.0, limit.1, None, note, || {
            let dir = tmp()?;
            let path = dir.path().join("f");
            timed(n, || encode_and_write(&path, &data.values, per))
        });
    }
    b.run(L_FILE_BATCH.0, L_FILE_BATCH.1, None, "", || {
        let dir = tmp()?;
        timed(n, || write_file(&dir.path().join("f"), data, true))
    });
    b.run(
        L_FSYNC.0,
        L_FSYNC.1,
        None,
        "appending to a growing file",
        || fsync_limit(data, false),
    );
    b.run(
        LIMITS,
        "write + fdatasync per 256, preallocated",
        None,
        "overwriting a preallocated, synced file",
        || fsync_limit(data, true),
    );
    for (limit, decoding) in [(L_REPLAY, false), (L_REPLAY_DECODE, true)] {
        let note = if decoding {
            "decodes each Checkout"
        } else {
            "no decode"
        };
        b.run(limit.0, limit.1, None, note, || {
            bufreader_replay(data, decoding)
        });
    }
    b.run(L_GET.0, L_GET.1, None, "pread per get", || {
        let dir = tmp()?;
        let path = dir.path().join("f");
        write_file(&path, data, true)?;
        let mut index = Vec::with_capacity(data.bytes.len());
        let mut pos = 0u64;
        for b in &data.bytes {
            index.push((pos + 4, b.len() as u32));
            pos += 4 + b.len() as u64;
        }
        let file = File::open(&path)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut qty = 0u64;
        let s = timed(data.gets.len() as u64, || {
            for &g in &data.gets {
                let (at, len) = index[g as usize];
                let buf = &mut buf[..len as usize];
                file.read_exact_at(buf, at)?;
                qty += u64::from(decode(buf)?.qty);
            }
            Ok(())
        })?;
        check(qty > 0, "gets")?;
        Ok(s)
    });
    b.run(L_FANOUT.0, L_FANOUT.1, None, "decode per receiver", || {
        crossbeam_fanout(data, data.bytes.len(), None, 4)
    });
    b.run(
        L_FANOUT_16.0,
        L_FANOUT_16.1,
        None,
        "decode per receiver; deliveries per second, all receivers",
        || crossbeam_fanout(data, data.bytes.len(), None, 16),
    );
    let paced = (b.config.paced_events as usize).min(data.bytes.len());
    for (limit, receivers) in [(L_LATENCY, 4), (L_LATENCY_16, 16)] {
        b.run(
            limit.0,
            limit.1,
            None,
            &format!("{paced} events; decode per receiver"),
            || crossbeam_fanout(data, paced, Some(PACE), receivers),
        );
    }
}

fn check(ok: bool, what: &str) -> R<()> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}

/// The in-memory fan-out limit: a `Vec` of shared, pre-encoded records and
/// a bounded crossbeam channel per receiver; each receiver decodes. With
/// more than 4 receivers the rate counts deliveries (events × receivers).
fn crossbeam_fanout(data: &Data, n: usize, pace: Option<u64>, receivers: usize) -> R<Sample> {
    crossbeam_fanout_with(data, n, pace, receivers, false)
}

/// As [`crossbeam_fanout`]; with `select`, each receiver waits in a
/// `select!` over its channel and a shutdown channel, as a service does.
fn crossbeam_fanout_with(
    data: &Data,
    n: usize,
    pace: Option<u64>,
    receivers: usize,
    select: bool,
) -> R<Sample> {
    let base = Instant::now();
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    let (stop_tx, stop) = crossbeam_channel::bounded::<()>(1);
    for _ in 0..receivers {
        let (tx, rx) = crossbeam_channel::bounded::<(u64, Arc<[u8]>)>(1024);
        senders.push(tx);
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || -> R<(u64, Histogram<u64>)> {
            let mut h = hist();
            let mut count = 0;
            loop {
                let (sent, bytes) = if select {
                    crossbeam_channel::select! {
                        recv(rx) -> item => match item {
                            Ok(item) => item,
                            Err(_) => break,
                        },
                        recv(stop) -> _ => return Err("stopped early".into()),
                    }
                } else {
                    match rx.recv() {
                        Ok(item) => item,
                        Err(_) => break,
                    }
                };
                let value = decode(&bytes)?;
                let now = base.elapsed().as_nanos() as u64;
                h.saturating_record(now.saturating_sub(sent).max(1));
                std::hint::black_box(value);
                count += 1;
            }
            Ok((count, h))
        }));
    }
    let shared: Vec<Arc<[u8]>> = data.bytes[..n].iter().map(|b| Arc::from(&b[..])).collect();
    let start = Instant::now();
    let mut log: Vec<Arc<[u8]>> = Vec::with_capacity(n);
    for (i, bytes) in shared.iter().enumerate() {
        if let Some(rate) = pace {
            pace_until(start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate));
        }
        let sent = base.elapsed().as_nanos() as u64;
        log.push(bytes.clone());
        for tx in &senders {
            tx.send((sent, bytes.clone())).map_err(err)?;
        }
    }
    drop(senders);
    let mut all = hist();
    let _keep_stop_open = &stop_tx;
    for h in handles {
        let (count, h) = h.join().map_err(err)??;
        check(count == n as u64, "fan-out count")?;
        all.add(&h).map_err(err)?;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Sample {
        events: deliveries(n, receivers),
        secs,
        latency: pace.map(|_| percentiles(&all)),
        ..Sample::default()
    })
}

/// What a fan-out row counts: events for up to 4 receivers (each receives
/// at that rate), deliveries to all of them beyond.
fn deliveries(n: usize, receivers: usize) -> u64 {
    if receivers > 4 {
        (n * receivers) as u64
    } else {
        n as u64
    }
}

// ---- backbone -----------------------------------------------------------------

fn bb_open(dir: &Path, durability: Durability) -> R<EventLog<Checkout>> {
    Ok(Options::new().durability(durability).open(dir)?)
}

/// Segment size of the durable runs: small enough that each run starts in
/// a segment prepared ahead of time, as a long-running log's appends do.
const DURABLE_SEGMENT: u64 = 8 << 20;

/// An `EveryAppend` log warmed up to its steady state: appends (untimed)
/// until a roll has started a segment from a prepared spare, so that the
/// measured appends are not those of a fresh log's first segment, which is
/// created sparse. Returns the log and the offset the timed part starts at.
fn bb_durable(dir: &Path, data: &Data) -> R<(EventLog<Checkout>, u64)> {
    let log = Options::new()
        .durability(Durability::EveryAppend)
        .segment_bytes(DURABLE_SEGMENT)
        .open(dir)?;
    for chunk in data.values.chunks(BATCH).cycle() {
        if log.stats().preallocated_segments > 0 {
            break;
        }
        check(
            log.stats().segments < 64,
            "no prepared segment after 64 rolls",
        )?;
        log.append_batch(chunk)?;
    }
    // Leave the warm-up's tail in its own sync.
    log.sync()?;
    let base = log.next_offset();
    Ok((log, base))
}

fn backbone(b: &mut Bench<'_>, data: &Data) {
    let n = data.values.len() as u64;
    let sys = "backbone";
    b.run(sys, W_SINGLE, Some(L_ENCODE), "Buffered", || {
        let dir = tmp()?;
        let log = bb_open(dir.path(), Durability::Buffered)?;
        let s = timed(n, || {
            for v in &data.values {
                log.append(v)?;
            }
            log.flush()?;
            Ok(())
        })?;
        log.close()?;
        Ok(s)
    });
    b.run(sys, W_BATCH, Some(L_ENCODE_BATCH), "Buffered", || {
        let dir = tmp()?;
        let log = bb_open(dir.path(), Durability::Buffered)?;
        let s = timed(n, || {
            for chunk in data.values.chunks(BATCH) {
                log.append_batch(chunk)?;
            }
            log.flush()?;
            Ok(())
        })?;
        log.close()?;
        Ok(s)
    });
    b.run(
        sys,
        W_DURABLE,
        Some(L_FSYNC),
        "EveryAppend; 8 MiB segments, after warm-up",
        || {
            let dir = tmp()?;
            let (log, _) = bb_durable(dir.path(), data)?;
            let syncs = log.stats().syncs;
            let mut s = timed(n, || {
                for chunk in data.values.chunks(BATCH) {
                    log.append_batch(chunk)?;
                }
                Ok(())
            })?;
            s.fsyncs = Some(log.stats().syncs - syncs);
            log.close()?;
            Ok(s)
        },
    );
    fresh_durable(b, data);
    group_commit(b, data);
    b.run_pair(
        sys,
        W_REPLAY,
        "typed: decodes each Checkout; vs limit: ratio of the medians; alternated with \
         BufReader replay + decode",
        (
            L_REPLAY_DECODE_ALT,
            "decodes each Checkout (as the 'BufReader replay + decode' row), run just before \
             each typed replay",
        ),
        || {
            let limit = bufreader_replay(data, true)?;
            let dir = tmp()?;
            let log = bb_open(dir.path(), Durability::Buffered)?;
            for chunk in data.values.chunks(BATCH) {
                log.append_batch(chunk)?;
            }
            log.close()?;
            let log = bb_open(dir.path(), Durability::Buffered)?;
            let mut count = 0;
            let mut s = timed(n, || {
                for rec in log.read(Start::Beginning) {
                    count += u64::from(rec?.value.qty > 0);
                }
                Ok(())
            })?;
            check(count == n, "replay count")?;
            s.extra = Some(format!("{:.2}×", s.rate() / limit.rate()));
            Ok((limit, s))
        },
    );
    b.run(sys, W_GET, Some(L_GET), "typed get(offset)", || {
        let dir = tmp()?;
        let log = bb_open(dir.path(), Durability::Buffered)?;
        for chunk in data.values.chunks(BATCH) {
            log.append_batch(chunk)?;
        }
        log.close()?;
        let log = bb_open(dir.path(), Durability::Buffered)?;
        let mut qty = 0u64;
        let s = timed(data.gets.len() as u64, || {
            for &g in &data.gets {
                let rec = log.get(g)?.ok_or("missing record")?;
                qty += u64::from(rec.value.qty);
            }
            Ok(())
        })?;
        check(qty > 0, "gets")?;
        Ok(s)
    });
    let all = data.values.len();
    let fanout = FanOut::new(all);
    b.run(sys, W_FANOUT, Some(L_FANOUT), &fanout.note(), || {
        bb_fanout(data, &fanout)
    });
    let sixteen = FanOut {
        subs: 16,
        ..FanOut::new(all)
    };
    b.run(sys, W_FANOUT_16, Some(L_FANOUT_16), &sixteen.note(), || {
        bb_fanout(data, &sixteen)
    });
    let three = FanOut {
        subs: 3,
        ..FanOut::new(all)
    };
    b.run(sys, W_FANOUT_3, None, &three.note(), || {
        bb_fanout(data, &three)
    });
    let stalled = FanOut {
        subs: 3,
        stalled: 1,
        ..FanOut::new(all)
    };
    b.run(
        sys,
        W_FANOUT_STALLED,
        Some((sys, W_FANOUT_3)),
        &stalled.note(),
        || bb_fanout(data, &stalled),
    );
    let durable = FanOut {
        durability: Durability::EveryAppend,
        batch: BATCH,
        ..FanOut::new(all)
    };
    b.run(sys, W_FANOUT_DURABLE, None, &durable.note(), || {
        bb_fanout(data, &durable)
    });
    let paced = (b.config.paced_events as usize).min(all);
    let latency = FanOut {
        pace: Some(PACE),
        ..FanOut::new(paced)
    };
    b.run(sys, W_LATENCY, Some(L_LATENCY), &latency.note(), || {
        bb_fanout(data, &latency)
    });
    let latency_16 = FanOut {
        subs: 16,
        ..latency
    };
    b.run(
        sys,
        W_LATENCY_16,
        Some(L_LATENCY_16),
        &latency_16.note(),
        || bb_fanout(data, &latency_16),
    );
    let select = FanOut {
        select: true,
        ..latency
    };
    b.run(
        sys,
        W_LATENCY_SELECT,
        Some(L_LATENCY),
        &select.note(),
        || bb_fanout(data, &select),
    );
    b.run(
        sys,
        W_MANY_LOGS,
        None,
        "10 appends/s per log for 5 s; latency is (record durable - append returned)",
        || many_logs(1000, Duration::from_millis(50), 10, Duration::from_secs(5)),
    );
}

/// Durable batch-256 appends on a fresh log, as a user's first run meets
/// them: default options (64 MiB segments), no warm-up, the `open` that
/// creates the log timed with the appends; alternated with write +
/// fdatasync per 256 records on a growing file.
fn fresh_durable(b: &mut Bench<'_>, data: &Data) {
    let n = data.values.len() as u64;
    b.run_pair(
        "backbone",
        W_DURABLE_FRESH,
        "EveryAppend, default Options (64 MiB segments, spare segments prepared as by \
         default); timed: the open that creates the log, then append_batch per 256 \
         (close untimed); vs limit: ratio of the medians",
        (
            L_FSYNC_FRESH,
            "appending to a growing file (as the 'write + fdatasync per 256' row), run just before each \
             fresh-log repetition",
        ),
        || {
            let limit = fsync_limit(data, false)?;
            let dir = tmp()?;
            let mut opened = None;
            let mut open_secs = 0.0;
            let mut s = timed(n, || {
                let t = Instant::now();
                let log: EventLog<Checkout> = Options::new()
                    .durability(Durability::EveryAppend)
                    .open(dir.path())?;
                open_secs = t.elapsed().as_secs_f64();
                for chunk in data.values.chunks(BATCH) {
                    log.append_batch(chunk)?;
                }
                opened = Some(log);
                Ok(())
            })?;
            let log = opened.ok_or("no log")?;
            let stats = log.stats();
            check(stats.next_offset == n, "offsets")?;
            s.fsyncs = Some(stats.syncs);
            s.extra = Some(format!(
                "{:.2}× (open {:.1} ms, {} segment{}, {} prepared)",
                s.rate() / limit.rate(),
                open_secs * 1e3,
                stats.segments,
                if stats.segments == 1 { "" } else { "s" },
                stats.preallocated_segments,
            ));
            log.close()?;
            Ok((limit, s))
        },
    );
}

/// Runs of the group-commit rows: the ratios are medians over them.
const GROUP_RUNS: usize = 5;

/// Group commit: `EveryAppend` single appends from 1, 4 and 8 threads,
/// measured back to back within each run (each on its own warmed-up log)
/// after write + fdatasync per record on a growing and on a preallocated
/// file. The 4- and 8-thread rows' ratios are medians of the per-run
/// ratios to that run's 1-thread rate; the 1-thread row's, of its per-run
/// ratios to the growing file's limit.
fn group_commit(b: &mut Bench<'_>, data: &Data) {
    let names = [
        W_GROUP_COMMIT,
        W_DURABLE_1,
        W_DURABLE_4,
        W_DURABLE_8,
        L_FSYNC_SINGLE.1,
        L_FSYNC_SINGLE_PRE.1,
    ];
    if !names.iter().any(|w| b.selected(w)) {
        return;
    }
    let slow = (b.config.slow_events as usize).min(data.values.len());
    let runs = b.config.reps.max(GROUP_RUNS);
    let threads = [1usize, 4, 8];
    let mut limit = Vec::new();
    let mut limit_pre = Vec::new();
    let mut rows: Vec<Vec<Sample>> = vec![Vec::new(); threads.len()];
    for _ in 0..runs {
        let run = || -> R<(Sample, Sample, Vec<Sample>)> {
            let l = fsync_limit_with(&data.bytes[..slow], false, 1)?;
            let p = fsync_limit_with(&data.bytes[..slow], true, 1)?;
            let t = threads
                .iter()
                .map(|&t| bb_threads(data, t, slow))
                .collect::<R<Vec<_>>>()?;
            Ok((l, p, t))
        };
        match run() {
            Ok((l, p, t)) => {
                limit.push(l);
                limit_pre.push(p);
                for (row, s) in rows.iter_mut().zip(t) {
                    row.push(s);
                }
            }
            Err(e) => {
                eprintln!("  backbone / {W_GROUP_COMMIT}: FAILED: {e}");
                return;
            }
        }
    }
    let per_sync = |s: &Sample| s.events as f64 / s.fsyncs.unwrap_or(0).max(1) as f64;
    // Per-run ratios: the 1-thread rate to the limit, 4 and 8 threads to 1.
    let one: Vec<f64> = rows[0].iter().map(Sample::rate).collect();
    let mut ratios: Vec<Vec<f64>> = Vec::new();
    for (k, row) in rows.iter_mut().enumerate() {
        let mut r = Vec::new();
        for (i, s) in row.iter_mut().enumerate() {
            let (ratio, of) = if k == 0 {
                (s.rate() / limit[i].rate(), "limit")
            } else {
                (s.rate() / one[i], "1 thread")
            };
            let pre = if k == 0 {
                format!(", {:.2}× preallocated", s.rate() / limit_pre[i].rate())
            } else {
                String::new()
            };
            s.extra = Some(format!(
                "{ratio:.2}× {of}{pre}, {:.2} records/sync",
                per_sync(s)
            ));
            r.push(ratio);
        }
        ratios.push(r);
    }
    let common = format!(
        "EveryAppend, single appends; {slow} events per thread; 8 MiB segments, after \
         warm-up; 1, 4 and 8 threads back to back in each of {runs} runs"
    );
    b.record(
        L_FSYNC_SINGLE.0,
        L_FSYNC_SINGLE.1,
        None,
        &format!("appending to a growing file; {slow} records, before each group-commit run"),
        limit,
    );
    b.record(
        L_FSYNC_SINGLE_PRE.0,
        L_FSYNC_SINGLE_PRE.1,
        None,
        &format!(
            "overwriting a preallocated, synced file; {slow} records, before each group-commit run"
        ),
        limit_pre,
    );
    for (k, (samples, r)) in rows.into_iter().zip(ratios).enumerate() {
        let (workload, limit) = match threads[k] {
            1 => (W_DURABLE_1, L_FSYNC_SINGLE),
            4 => (W_DURABLE_4, ("backbone", W_DURABLE_1)),
            _ => (W_DURABLE_8, ("backbone", W_DURABLE_1)),
        };
        let syncs: Vec<f64> = samples.iter().map(per_sync).collect();
        let what = if k == 0 {
            "the limit's rate in the same run".to_owned()
        } else {
            "the 1-thread rate in the same run".to_owned()
        };
        let note = format!(
            "{common}; vs limit: median over the runs of each run's rate over {what} \
             (the first figure of each run below); records per sync: median {:.2}",
            median(syncs),
        );
        b.record("backbone", workload, Some(limit), &note, samples);
        if let Some(row) = b.rows.last_mut() {
            row.ratio_to_limit = Some(median(r.clone()));
            eprintln!(
                "    vs {} · {}: {:.2}× (median of the per-run ratios)",
                limit.0,
                limit.1,
                median(r.clone()),
            );
        }
    }
}

/// `EveryAppend` single appends of `slow` events from each of `threads`
/// threads on a warmed-up log; `fsyncs` counts the log's syncs.
fn bb_threads(data: &Data, threads: usize, slow: usize) -> R<Sample> {
    let dir = tmp()?;
    let (log, base) = bb_durable(dir.path(), data)?;
    let syncs = log.stats().syncs;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let log = log.clone();
            let barrier = barrier.clone();
            let values: Vec<Checkout> = data.values[..slow]
                .iter()
                .map(|v| Checkout {
                    order_id: v.order_id + (t * slow) as u64,
                    ..v.clone()
                })
                .collect();
            std::thread::spawn(move || -> R<()> {
                barrier.wait();
                for v in &values {
                    log.append(v)?;
                }
                Ok(())
            })
        })
        .collect();
    let mut s = timed((threads * slow) as u64, || {
        barrier.wait();
        for h in handles {
            h.join().map_err(err)??;
        }
        Ok(())
    })?;
    s.fsyncs = Some(log.stats().syncs - syncs);
    check(
        log.next_offset() == base + (threads * slow) as u64,
        "offsets",
    )?;
    log.close()?;
    Ok(s)
}

/// One fan-out run of backbone.
#[derive(Clone, Copy, Debug)]
struct FanOut {
    /// Events appended.
    n: usize,
    /// Subscribers that receive everything.
    subs: usize,
    /// Subscribers that never receive anything.
    stalled: usize,
    /// Events per second, or as fast as possible.
    pace: Option<u64>,
    durability: Durability,
    /// Events per append call.
    batch: usize,
    /// Subscribers wait in `select!` on `ready()` and take with `try_recv`.
    select: bool,
}

impl FanOut {
    fn new(n: usize) -> FanOut {
        FanOut {
            n,
            subs: 4,
            stalled: 0,
            pace: None,
            durability: Durability::Buffered,
            batch: 1,
            select: false,
        }
    }

    fn note(&self) -> String {
        let mut note = format!(
            "{:?}, {}, {} live subscribers (default SubscribeOptions)",
            self.durability,
            if self.batch > 1 {
                format!("batches of {}", self.batch)
            } else {
                "single appends".to_owned()
            },
            self.subs
        );
        if self.stalled > 0 {
            note += &format!(", {} that never reads", self.stalled);
        }
        if self.select {
            note += ", each in a select! over ready() and a shutdown channel";
        }
        if self.pace.is_some() {
            note += &format!("; {} events; append call → decoded record", self.n);
        } else if self.subs > 4 {
            note += "; deliveries per second, all subscribers";
        }
        note
    }
}

fn bb_fanout(data: &Data, run: &FanOut) -> R<Sample> {
    let paired_p99 = match run.pace {
        Some(pace) => crossbeam_fanout_with(data, run.n, Some(pace), run.subs, run.select)?
            .latency
            .map(|l| l[1]),
        None => None,
    };
    let n = run.n;
    let dir = tmp()?;
    let log = bb_open(dir.path(), run.durability)?;
    let base = Instant::now();
    // When each append was called, by offset (a single appender from 0).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let max_lag = Arc::new(AtomicU64::new(0));
    let stalled: Vec<_> = (0..run.stalled)
        .map(|_| log.subscribe(Start::Beginning))
        .collect::<Result<_, _>>()?;
    let (stop_tx, stop) = backbone::channel::bounded::<()>(1);
    let mut handles = Vec::new();
    for _ in 0..run.subs {
        let sub = log.subscribe_with(SubscribeOptions::new(Start::Beginning))?;
        let sent = sent.clone();
        let max_lag = max_lag.clone();
        let select = run.select;
        let stop = stop.clone();
        handles.push(std::thread::spawn(move || -> R<Histogram<u64>> {
            let mut h = hist();
            let mut next = 0u64;
            let mut take = |rec: backbone::Record<Checkout>, next: &mut u64| -> R<()> {
                let now = base.elapsed().as_nanos() as u64;
                check(rec.offset == *next, "subscription order")?;
                let at = sent[rec.offset as usize].load(Ordering::Acquire);
                h.saturating_record(now.saturating_sub(at).max(1));
                std::hint::black_box(&rec.value);
                if next.is_multiple_of(1024) {
                    max_lag.fetch_max(sub.lag(), Ordering::Relaxed);
                }
                *next += 1;
                Ok(())
            };
            while next < n as u64 {
                if select {
                    backbone::channel::select! {
                        recv(sub.ready()) -> _ => {
                            while let Some(rec) = sub.try_recv()? {
                                take(rec, &mut next)?;
                            }
                        }
                        recv(stop) -> _ => return Err("stopped early".into()),
                    }
                } else {
                    take(sub.recv()?, &mut next)?;
                }
            }
            Ok(h)
        }));
    }
    let start = Instant::now();
    for (i, chunk) in data.values[..n].chunks(run.batch).enumerate() {
        let first = i * run.batch;
        if let Some(rate) = run.pace {
            pace_until(start + Duration::from_nanos(first as u64 * 1_000_000_000 / rate));
        }
        let now = base.elapsed().as_nanos() as u64;
        for at in &sent[first..first + chunk.len()] {
            at.store(now, Ordering::Release);
        }
        if run.batch == 1 {
            log.append(&chunk[0])?;
        } else {
            log.append_batch(chunk)?;
        }
    }
    log.flush()?;
    let mut all = hist();
    for h in handles {
        all.add(&h.join().map_err(err)??).map_err(err)?;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(stop_tx);
    check(
        stalled.iter().all(|s| s.lag() == n as u64),
        "a stalled subscriber received nothing",
    )?;
    log.close()?;
    Ok(Sample {
        events: deliveries(n, run.subs),
        secs,
        latency: run.pace.map(|_| percentiles(&all)),
        max_lag: Some(max_lag.load(Ordering::Relaxed)),
        paired_p99,
        ..Sample::default()
    })
}

/// The crate's threads in this process (its background pool's, by name).
fn crate_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("backbone-"))
        .count()
}

/// A line of /proc/self/status, in kB or as a count.
fn proc_status(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `logs` logs opened with `Durability::Interval(interval)` and one live
/// subscription each (default options), each appended to `per_sec` times a
/// second for `secs`. Measures the threads the crate started and the memory
/// the logs and subscriptions take, and the latency from an append's return
/// to its record being durable (polled every millisecond), against the
/// target of twice the interval plus one `fdatasync`, measured here too.
fn many_logs(logs: usize, interval: Duration, per_sec: u64, secs: Duration) -> R<Sample> {
    let dir = tmp()?;
    let fsync = {
        let path = dir.path().join("fsync-probe");
        let file = File::create(&path)?;
        let mut times = Vec::new();
        for i in 0..20u64 {
            file.write_all_at(&[1; 64], i * 4096)?;
            let t = Instant::now();
            file.sync_data()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        median(times)
    };
    let rss_before = proc_status("VmRSS:").unwrap_or(0);
    let mut opened = Vec::with_capacity(logs);
    for i in 0..logs {
        let log: EventLog<u64> = Options::new()
            .durability(Durability::Interval(interval))
            .open(dir.path().join(format!("log-{i:04}")))?;
        let sub = log.subscribe(Start::Beginning)?;
        opened.push((log, sub));
    }
    let rss_open = proc_status("VmRSS:").unwrap_or(0);
    // Appenders spread over two threads; each log gets `per_sec` appends a
    // second, its pending ones queued with the time their append returned.
    type Pending = std::sync::Mutex<std::collections::VecDeque<(u64, Instant)>>;
    let pending: Arc<Vec<Pending>> = Arc::new((0..logs).map(|_| Pending::default()).collect());
    let opened = Arc::new(opened);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let total = (secs.as_secs_f64() * per_sec as f64) as u64;
    let start = Instant::now();
    let appenders: Vec<_> = (0..2)
        .map(|part| {
            let (opened, pending) = (opened.clone(), pending.clone());
            std::thread::spawn(move || -> R<u64> {
                let mut appended = 0;
                for round in 0..total {
                    pace_until(start + Duration::from_nanos(round * 1_000_000_000 / per_sec));
                    for i in (part..opened.len()).step_by(2) {
                        let offset = opened[i].0.append(&round)?;
                        pending[i]
                            .lock()
                            .map_err(err)?
                            .push_back((offset, Instant::now()));
                        appended += 1;
                    }
                }
                Ok(appended)
            })
        })
        .collect();
    // The subscriptions are read too, by two threads, so that they are not
    // only idle.
    let readers: Vec<_> = (0..2)
        .map(|part| {
            let (opened, stop) = (opened.clone(), stop.clone());
            std::thread::spawn(move || -> R<u64> {
                let mut received = 0;
                while !stop.load(Ordering::Acquire) {
                    for i in (part..opened.len()).step_by(2) {
                        while opened[i].1.try_recv()?.is_some() {
                            received += 1;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(received)
            })
        })
        .collect();
    let mut durable = hist();
    let mut waiting = true;
    while waiting {
        waiting = !appenders.iter().all(|a| a.is_finished());
        for (i, (log, _)) in opened.iter().enumerate() {
            let done = log.durable_offset();
            let mut queue = pending[i].lock().map_err(err)?;
            while queue.front().is_some_and(|(offset, _)| *offset < done) {
                let (_, returned) = queue.pop_front().expect("peeked");
                durable.saturating_record(returned.elapsed().as_nanos().max(1) as u64);
            }
            waiting |= !queue.is_empty();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut appended = 0;
    for a in appenders {
        appended += a.join().map_err(err)??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let threads = crate_threads();
    let rss_end = proc_status("VmRSS:").unwrap_or(0);
    stop.store(true, Ordering::Release);
    let mut received = 0;
    for r in readers {
        received += r.join().map_err(err)??;
    }
    check(durable.len() == appended, "every append became durable")?;
    let p99_ms = durable.value_at_quantile(0.99) as f64 / 1e6;
    let target_ms = 2.0 * interval.as_secs_f64() * 1e3 + fsync / 1e3;
    Ok(Sample {
        events: appended,
        secs: elapsed,
        latency: Some(percentiles(&durable)),
        extra: Some(format!(
            "{threads} crate threads in the process, \
             +{:.1} MiB resident after opening, +{:.1} MiB at the end, \
             {received} records received, durable p99 {p99_ms:.1} ms against a target of \
             {target_ms:.1} ms (2 × interval + one fdatasync of {:.2} ms)",
            rss_open.saturating_sub(rss_before) as f64 / 1024.0,
            rss_end.saturating_sub(rss_before) as f64 / 1024.0,
            fsync / 1e3,
        )),
        ..Sample::default()
    })
}

// ---- backbone: stream jobs and tables -------------------------------------------
//
// Each job runs side by side with the hand-written code it replaces, in
// alternating repetitions (`Bench::run_pair`), with the same `Options` and
// the same batch size on both sides.

const W_STREAM_MAP: &str = "stream map+filter job, Buffered output";
const W_STREAM_MAP_DURABLE: &str = "stream map+filter job, EveryAppend output";
const W_STREAM_WINDOW: &str = "stream windowed count, tumbling 1 s per SKU";
const W_STREAM_LATENCY: &str = "stream job end-to-end @50k/s, latency";
const W_STREAM_LATENCY_DURABLE: &str = "stream job end-to-end @2k/s, EveryAppend source, latency";
const W_TABLE_RESTART: &str = "stream table restart after SIGKILL, 100k keys";

const L_STREAM_LOOP: (&str, &str) = (
    "limit",
    "read + append_batch loop, same work, Buffered output",
);
const L_STREAM_LOOP_DURABLE: (&str, &str) = (
    "limit",
    "read + append_batch loop, same work, EveryAppend output",
);
const L_STREAM_FOLD: (&str, &str) = ("limit", "replay + HashMap fold by (SKU, second)");
const L_STREAM_SUBSCRIPTION: (&str, &str) = ("backbone", "plain subscription @50k/s, latency");
const L_STREAM_SUBSCRIPTION_DURABLE: (&str, &str) = (
    "backbone",
    "plain subscription @2k/s, EveryAppend source, latency",
);
/// The pace of the latency pair with a durable source: single
/// `EveryAppend` appends cost an fdatasync each.
const DURABLE_PACE: u64 = 2_000;
/// Events of that pair.
const DURABLE_PACED_EVENTS: usize = 5_000;
const L_TABLE_REBUILD: (&str, &str) = ("backbone", "stream table full rebuild, 100k keys");

/// Source records per batch, for the jobs and their hand-written loops.
const STREAM_BATCH: usize = 1024;
/// Events of the map+filter pair with EveryAppend outputs (at most).
const STREAM_DURABLE_EVENTS: u64 = 200_000;
/// Keys of the table rows; their updates are `--events`.
const TABLE_KEYS: u64 = 100_000;
/// Seed of the table rows' kill points (xorshift).
const TABLE_SEED: u64 = 0x2545_F491_4F6C_DD1D;
/// Set to `table` in the environment of the child process the table rows
/// kill; [`CHILD_DIR_ENV`] names its updates log.
const CHILD_ENV: &str = "COMPARE_CHILD";
const CHILD_DIR_ENV: &str = "COMPARE_CHILD_DIR";

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// What the map+filter job and its loop make of a checkout of more than
/// one item: its stock delta.
fn stock_delta(c: Checkout) -> (String, i64) {
    (c.sku, -i64::from(c.qty))
}

/// A Buffered log of `values`, synced, so that no job's checkpoint waits
/// for its source to be made durable.
fn stream_source(dir: &Path, values: &[Checkout]) -> R<EventLog<Checkout>> {
    let log = bb_open(dir, Durability::Buffered)?;
    for chunk in values.chunks(STREAM_BATCH) {
        log.append_batch(chunk)?;
    }
    log.sync()?;
    Ok(log)
}

/// The source in `slot`, written on first use (only if a row runs).
fn lazy_source<'a>(
    slot: &'a mut Option<(tempfile::TempDir, EventLog<Checkout>)>,
    values: &[Checkout],
) -> R<&'a EventLog<Checkout>> {
    if slot.is_none() {
        let dir = tmp()?;
        let log = stream_source(dir.path(), values)?;
        *slot = Some((dir, log));
    }
    Ok(&slot.as_ref().ok_or("no source")?.1)
}

fn stream(b: &mut Bench<'_>, data: &Data) {
    let sys = "backbone";
    let n = data.values.len() as u64;
    let mut source = None;
    let durable = STREAM_DURABLE_EVENTS.min(n);
    let mut small_source = None;
    for (workload, limit, durability, events) in [
        (W_STREAM_MAP, L_STREAM_LOOP, Durability::Buffered, n),
        (
            W_STREAM_MAP_DURABLE,
            L_STREAM_LOOP_DURABLE,
            Durability::EveryAppend,
            durable,
        ),
    ] {
        let options = format!(
            "{durability:?} output logs (fresh each run), batches of {STREAM_BATCH}; \
             from a synced Buffered source of {events} checkouts"
        );
        b.run_pair(
            sys,
            workload,
            &format!(
                "job: filter(qty > 1).map(to (sku, -qty)).batch_size({STREAM_BATCH}).to(output), \
                 timed from its start to wait_for(end); {options}"
            ),
            (
                limit,
                &format!(
                    "read(Start::Beginning), {STREAM_BATCH} records at a time, the same \
                     filter and map, append_batch; {options}"
                ),
            ),
            || {
                let slot = if events == n {
                    &mut source
                } else {
                    &mut small_source
                };
                let log = lazy_source(slot, &data.values[..events as usize])?;
                map_filter_pair(log, durability)
            },
        );
    }
    let seconds = data.values.last().map_or(0, |c| window_time(c) / 1_000_000)
        - data
            .values
            .first()
            .map_or(0, |c| window_time(c) / 1_000_000)
        + 1;
    let window_note = format!(
        "Buffered output, batches of {STREAM_BATCH}; event time: the checkout's ts_micros \
         stretched tenfold (10 µs apart), {seconds} s in all, so a window per SKU and second \
         is emitted as each second closes"
    );
    b.run_pair(
        sys,
        W_STREAM_WINDOW,
        &format!(
            "job: event_time(ts_micros × 10, Lateness::none()).key_by(sku)\
             .window(tumbling 1 s).count(), emitted on close; {window_note}"
        ),
        (
            L_STREAM_FOLD,
            "read(Start::Beginning), counts in a HashMap<(String, u64), u64>",
        ),
        || window_pair(lazy_source(&mut source, &data.values)?),
    );
    drop((source, small_source));
    let paced = (b.config.paced_events as usize).min(data.values.len());
    let durable_paced = DURABLE_PACED_EVENTS.min(data.values.len());
    for (workload, limit, durability, events, pace, why) in [
        (
            W_STREAM_LATENCY,
            L_STREAM_SUBSCRIPTION,
            Durability::Buffered,
            paced,
            PACE,
            "fsyncs: the source's, which each batch's checkpoint makes durable first (the \
             exactly-once rule: a source durable below every committed position)",
        ),
        (
            W_STREAM_LATENCY_DURABLE,
            L_STREAM_SUBSCRIPTION_DURABLE,
            Durability::EveryAppend,
            durable_paced,
            DURABLE_PACE,
            "fsyncs: the source's, one per append; a checkpoint finds the source durable \
             already",
        ),
    ] {
        let latency_options = format!(
            "single appends of {events} events at {}k/s to a {durability:?} source, one \
             subscriber (default SubscribeOptions); append call → record received",
            pace / 1000
        );
        b.run_pair(
            sys,
            workload,
            &format!(
                "the map+filter job (batches of {STREAM_BATCH}, order id carried along) into a \
                 Buffered output log, the subscriber on the output (the records the job keeps, \
                 6 in 7); {latency_options}; {why}"
            ),
            (
                limit,
                &format!("the subscriber on the source; {latency_options}"),
            ),
            || {
                let plain = stream_latency(data, events, pace, durability, false)?;
                let mut job = stream_latency(data, events, pace, durability, true)?;
                job.paired_p99 = plain.latency.map(|l| l[1]);
                Ok((plain, job))
            },
        );
    }
    let keys = TABLE_KEYS.min(n);
    let table_note = format!(
        "Table<u64, i64> of {keys} keys folding {n} updates (key i % {keys}, adding a delta), \
         default TableOptions (EveryAppend changelog in 4 MiB segments, batches of 1024)"
    );
    let mut rng = TABLE_SEED;
    if let Some(row) = b.run_pair(
        sys,
        W_TABLE_RESTART,
        &format!(
            "a child process catching up from the first update is SIGKILLed at a random point \
             (fixed seed) past 90% applied; timed: table() again and wait_for(end); \
             events/s: updates covered per second; vs limit: its time over the rebuild's; \
             {table_note}"
        ),
        (
            L_TABLE_REBUILD,
            &format!(
                "a fresh table under a new name, from the first update to wait_for(end), \
                 on the same log just before each restart; {table_note}"
            ),
        ),
        || table_pair(n, keys, &mut rng),
    ) {
        row.ratio_is_time = true;
    }
}

/// One repetition of a map+filter pair: the loop, then the job, each into
/// a fresh output log.
fn map_filter_pair(source: &EventLog<Checkout>, durability: Durability) -> R<(Sample, Sample)> {
    let n = source.next_offset();
    let output = |dir: &Path| -> R<EventLog<(String, i64)>> {
        Ok(Options::new().durability(durability).open(dir)?)
    };
    let dir = tmp()?;
    let out = output(dir.path())?;
    let syncs = out.stats().syncs;
    let mut looped = timed(n, || {
        let mut batch = Vec::with_capacity(STREAM_BATCH);
        let mut records = source.read(Start::Beginning).peekable();
        while records.peek().is_some() {
            batch.clear();
            for record in records.by_ref().take(STREAM_BATCH) {
                let c = record?.value;
                if c.qty > 1 {
                    batch.push(stock_delta(c));
                }
            }
            out.append_batch(&batch)?;
        }
        Ok(())
    })?;
    looped.fsyncs = Some(out.stats().syncs - syncs);
    let expected = out.next_offset();
    out.close()?;
    drop(dir);

    let dir = tmp()?;
    let out = output(dir.path())?;
    let syncs = out.stats().syncs;
    let mut job = None;
    let mut s = timed(n, || {
        let started = source
            .stream("stock-deltas", Start::Beginning)
            .filter(|c| c.qty > 1)
            .map(stock_delta)
            .batch_size(STREAM_BATCH)
            .to(&out)?;
        started.wait_for(n)?;
        job = Some(started);
        Ok(())
    })?;
    s.fsyncs = Some(out.stats().syncs - syncs);
    let job = job.ok_or("no job")?;
    job.stop();
    job.join()?;
    check(
        out.next_offset() == expected,
        "the job's outputs are the loop's",
    )?;
    out.close()?;
    Ok((looped, s))
}

/// One repetition of the windowed count pair: the fold, then the job.
fn window_pair(source: &EventLog<Checkout>) -> R<(Sample, Sample)> {
    let n = source.next_offset();
    let mut windows = 0;
    let fold = timed(n, || {
        let mut counts: HashMap<(String, u64), u64> = HashMap::new();
        for record in source.read(Start::Beginning) {
            let c = record?.value;
            let second = window_time(&c) / 1_000_000;
            *counts.entry((c.sku, second)).or_default() += 1;
        }
        windows = counts.len();
        Ok(())
    })?;
    check(windows > 0, "windows folded")?;
    let dir = tmp()?;
    let out: EventLog<Windowed<String, u64>> = bb_options(Durability::Buffered).open(dir.path())?;
    let mut job = None;
    let mut s = timed(n, || {
        let started = source
            .stream("per-sku", Start::Beginning)
            .event_time(|c| Timestamp::from_micros(window_time(c)), Lateness::none())
            .key_by(|c| c.sku.clone())
            .window(Window::tumbling(Duration::from_secs(1)))
            .count()
            .stream()
            .batch_size(STREAM_BATCH)
            .to(&out)?;
        started.wait_for(n)?;
        job = Some(started);
        Ok(())
    })?;
    let job = job.ok_or("no job")?;
    let figures = job.figures();
    job.stop();
    job.join()?;
    check(figures.late == 0, "no late checkout")?;
    s.extra = Some(format!("{} of {windows} windows emitted", figures.outputs));
    out.close()?;
    Ok((fold, s))
}

/// The windowed rows' event time: the checkout's timestamp, stretched
/// tenfold (the checkouts are 1 µs apart; 10 µs gives the windows of a
/// busy shop, 100,000 checkouts a second, so a million span ten windows
/// per SKU and most close during the run).
fn window_time(c: &Checkout) -> u64 {
    c.ts_micros * 10
}

fn bb_options(durability: Durability) -> Options {
    Options::new().durability(durability)
}

/// One paced latency run of the stream rows: `n` single appends at `pace`
/// a second to a fresh source of `durability`, received by one subscriber:
/// on the source itself, or, `through_job`, on the output of the map+filter
/// job (carrying the order id, which is the source offset).
fn stream_latency(
    data: &Data,
    n: usize,
    pace: u64,
    durability: Durability,
    through_job: bool,
) -> R<Sample> {
    let dir = tmp()?;
    let source = bb_open(&dir.path().join("checkouts"), durability)?;
    let out: EventLog<(u64, String, i64)> =
        bb_options(Durability::Buffered).open(dir.path().join("deltas"))?;
    let base = Instant::now();
    // When each append was called, by offset (a single appender from 0).
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let values = &data.values[..n];
    let (job, receiver) = if through_job {
        let job = source
            .stream("live-deltas", Start::Beginning)
            .filter(|c| c.qty > 1)
            .map(|c| (c.order_id, c.sku, -i64::from(c.qty)))
            .batch_size(STREAM_BATCH)
            .to(&out)?;
        let kept = values.iter().filter(|c| c.qty > 1).count();
        let sub = out.subscribe(Start::Beginning)?;
        (Some(job), receive(sub, kept, &sent, base, |d| d.0))
    } else {
        let sub = source.subscribe(Start::Beginning)?;
        (None, receive(sub, n, &sent, base, |c| c.order_id))
    };
    let (syncs, out_syncs) = (source.stats().syncs, out.stats().syncs);
    let start = Instant::now();
    for (i, v) in values.iter().enumerate() {
        pace_until(start + Duration::from_nanos(i as u64 * 1_000_000_000 / pace));
        sent[i].store(base.elapsed().as_nanos() as u64, Ordering::Release);
        source.append(v)?;
    }
    source.flush()?;
    let h = receiver.join().map_err(err)??;
    let secs = start.elapsed().as_secs_f64();
    let source_syncs = source.stats().syncs - syncs;
    let extra = match job {
        Some(job) => {
            job.stop();
            job.join()?;
            Some(format!("{} output fsyncs", out.stats().syncs - out_syncs))
        }
        None => None,
    };
    out.close()?;
    source.close()?;
    Ok(Sample {
        events: n as u64,
        secs,
        fsyncs: Some(source_syncs),
        latency: Some(percentiles(&h)),
        extra,
        ..Sample::default()
    })
}

/// A thread receiving `expected` records from `sub`, recording for each
/// the time since its source append was called (`sent`, by the source
/// offset `offset` finds in the value).
fn receive<T: Serialize + serde::de::DeserializeOwned + Send + 'static>(
    sub: backbone::Subscription<T>,
    expected: usize,
    sent: &Arc<Vec<AtomicU64>>,
    base: Instant,
    offset: fn(&T) -> u64,
) -> std::thread::JoinHandle<R<Histogram<u64>>> {
    let sent = sent.clone();
    std::thread::spawn(move || {
        let mut h = hist();
        for _ in 0..expected {
            let rec = sub.recv()?;
            let now = base.elapsed().as_nanos() as u64;
            let at = sent
                .get(offset(&rec.value) as usize)
                .ok_or("offset out of range")?
                .load(Ordering::Acquire);
            h.saturating_record(now.saturating_sub(at).max(1));
        }
        Ok(h)
    })
}

/// An update of the table rows: (key, delta).
type Update = (u64, i64);

fn updates_log(dir: &Path) -> R<EventLog<Update>> {
    Ok(bb_options(Durability::Buffered).open(dir)?)
}

fn stock_table(source: &EventLog<Update>, name: &str) -> R<Table<u64, i64>> {
    Ok(source.table(
        name,
        |u: &Update| u.0,
        |total: &mut i64, u: Update| *total += u.1,
    )?)
}

/// A child process; killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One repetition of the table pair: writes `n` updates over `keys` keys,
/// lets a child process build the table `stock` and SIGKILLs it at a
/// random point past 90% applied; then times a fresh table `rebuild`
/// (the limit) and the restart of `stock`, on the same log, and checks
/// both against the fold of the updates.
fn table_pair(n: u64, keys: u64, rng: &mut u64) -> R<(Sample, Sample)> {
    let dir = tmp()?;
    let path = dir.path().join("updates");
    let updates: Vec<Update> = (0..n).map(|i| (i % keys, (i % 7) as i64 - 3)).collect();
    let mut expected = vec![0i64; keys as usize];
    for &(key, delta) in &updates {
        expected[key as usize] += delta;
    }
    let log = updates_log(&path)?;
    for chunk in updates.chunks(STREAM_BATCH) {
        log.append_batch(chunk)?;
    }
    log.close()?;

    let target = n - n / 10 + xorshift(rng) % (n / 10).max(1);
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, "table")
            .env(CHILD_DIR_ENV, &path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?,
    );
    let mut lines = BufReader::new(child.0.stdout.take().ok_or("no stdout")?).lines();
    let mut seen = 0;
    while seen < target {
        let line = lines
            .next()
            .ok_or("the table's child process ended before it was killed")??;
        if line != "end" {
            seen = line.parse()?;
        }
    }
    child.0.kill()?;
    child.0.wait()?;
    drop(child);

    let source = updates_log(&path)?;
    check(source.next_offset() == n, "updates kept")?;
    let verify = |table: &Table<u64, i64>| {
        let map = table.to_map();
        check(
            map.len() == keys as usize && map.iter().all(|(k, v)| expected[*k as usize] == *v),
            "the table holds the fold of the updates",
        )
    };
    let mut table = None;
    let rebuild = timed(n, || {
        let fresh = stock_table(&source, "rebuild")?;
        fresh.wait_for(n)?;
        table = Some(fresh);
        Ok(())
    })?;
    let fresh = table.take().ok_or("no table")?;
    verify(&fresh)?;
    fresh.stop();
    fresh.join()?;
    drop(fresh);

    let (mut resumed_at, mut loaded) = (0, Duration::ZERO);
    let mut restart = timed(n, || {
        let t = Instant::now();
        let again = stock_table(&source, "stock")?;
        loaded = t.elapsed();
        resumed_at = again.position();
        again.wait_for(n)?;
        table = Some(again);
        Ok(())
    })?;
    let again = table.take().ok_or("no table")?;
    verify(&again)?;
    again.stop();
    again.join()?;
    drop(again);
    source.close()?;
    restart.extra = Some(format!(
        "killed once it reported {seen}{}, resumed at {resumed_at}: {:.0} ms ({:.0} ms in \
         table(), then {} updates) against {:.0} ms",
        if seen >= n {
            " (the end: it had applied every update)"
        } else {
            ""
        },
        restart.secs * 1e3,
        loaded.as_secs_f64() * 1e3,
        n - resumed_at,
        rebuild.secs * 1e3,
    ));
    Ok((rebuild, restart))
}

/// The table rows' child process: opens the table `stock` of the updates
/// log in `$COMPARE_CHILD_DIR` and lets it catch up, printing its position
/// whenever it moves and `end` (again every 100 ms) once it has applied
/// every update, until it is killed or its parent stops reading.
fn table_child() -> R<()> {
    let dir = PathBuf::from(std::env::var_os(CHILD_DIR_ENV).ok_or("no COMPARE_CHILD_DIR")?);
    let source = updates_log(&dir)?;
    let end = source.next_offset();
    let table = stock_table(&source, "stock")?;
    let mut out = std::io::stdout().lock();
    let mut last = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(600) {
        let at = table.position();
        if last != Some(at) {
            writeln!(out, "{at}")?;
            out.flush()?;
            last = Some(at);
        }
        if at >= end {
            writeln!(out, "end")?;
            out.flush()?;
            std::thread::sleep(Duration::from_millis(100));
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    Err("not killed within 10 minutes".into())
}

// ---- SQLite -----------------------------------------------------------------

fn sqlite_open(path: &Path, synchronous: &str) -> R<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    check(mode.eq_ignore_ascii_case("wal"), "WAL mode")?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous={synchronous};
         CREATE TABLE IF NOT EXISTS log (offset INTEGER PRIMARY KEY, payload BLOB NOT NULL);"
    ))?;
    Ok(conn)
}

const INSERT: &str = "INSERT INTO log (offset, payload) VALUES (?1, ?2)";

fn sqlite_batches(conn: &mut rusqlite::Connection, data: &Data) -> R<()> {
    for (c, chunk) in data.bytes.chunks(BATCH).enumerate() {
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare_cached(INSERT)?;
            for (i, bytes) in chunk.iter().enumerate() {
                st.execute(rusqlite::params![(c * BATCH + i) as i64, bytes])?;
            }
        }
        tx.commit()?;
    }
    Ok(())
}

fn sqlite(b: &mut Bench<'_>, data: &Data) {
    let n = data.bytes.len() as u64;
    let sys = "SQLite";
    b.run(
        sys,
        W_SINGLE,
        Some(L_FILE_SINGLE),
        "WAL, synchronous=OFF, autocommit per insert",
        || {
            let dir = tmp()?;
            let conn = sqlite_open(&dir.path().join("db"), "OFF")?;
            timed(n, || {
                let mut st = conn.prepare_cached(INSERT)?;
                for (i, bytes) in data.bytes.iter().enumerate() {
                    st.execute(rusqlite::params![i as i64, bytes])?;
                }
                Ok(())
            })
        },
    );
    b.run(
        sys,
        W_BATCH,
        Some(L_FILE_BATCH),
        "WAL, synchronous=OFF, one transaction per 256",
        || {
            let dir = tmp()?;
            let mut conn = sqlite_open(&dir.path().join("db"), "OFF")?;
            timed(n, || sqlite_batches(&mut conn, data))
        },
    );
    b.run(
        sys,
        W_DURABLE,
        Some(L_FSYNC),
        "WAL, synchronous=FULL, one transaction per 256",
        || {
            let dir = tmp()?;
            let mut conn = sqlite_open(&dir.path().join("db"), "FULL")?;
            timed(n, || sqlite_batches(&mut conn, data))
        },
    );
    b.run(
        sys,
        W_REPLAY,
        Some(L_REPLAY),
        "SELECT ... ORDER BY offset, decode",
        || {
            let dir = tmp()?;
            let path = dir.path().join("db");
            sqlite_batches(&mut sqlite_open(&path, "OFF")?, data)?;
            let conn = sqlite_open(&path, "OFF")?;
            let mut count = 0;
            let s = timed(n, || {
                let mut st = conn.prepare("SELECT payload FROM log ORDER BY offset")?;
                let mut rows = st.query([])?;
                while let Some(row) = rows.next()? {
                    let bytes = row.get_ref(0)?.as_blob()?;
                    count += u64::from(decode(bytes)?.qty > 0);
                }
                Ok(())
            })?;
            check(count == n, "replay count")?;
            Ok(s)
        },
    );
    b.run(
        sys,
        W_GET,
        Some(L_GET),
        "SELECT ... WHERE offset = ?, decode",
        || {
            let dir = tmp()?;
            let path = dir.path().join("db");
            sqlite_batches(&mut sqlite_open(&path, "OFF")?, data)?;
            let conn = sqlite_open(&path, "OFF")?;
            let mut qty = 0u64;
            let s = timed(data.gets.len() as u64, || {
                let mut st = conn.prepare_cached("SELECT payload FROM log WHERE offset = ?1")?;
                for &g in &data.gets {
                    qty += st.query_row([g as i64], |row| {
                        let bytes = row.get_ref(0)?.as_blob()?;
                        Ok(u64::from(decode(bytes).map(|c| c.qty).unwrap_or(0)))
                    })?;
                }
                Ok(())
            })?;
            check(qty > 0, "gets")?;
            Ok(s)
        },
    );
}

// ---- commitlog ----------------------------------------------------------------

fn commitlog(b: &mut Bench<'_>, data: &Data) {
    use commitlog::message::{MessageBuf, MessageSet};
    use commitlog::{CommitLog, LogOptions, ReadLimit};
    let n = data.bytes.len() as u64;
    let sys = "commitlog";
    let open = |dir: &Path| -> R<CommitLog> { CommitLog::new(LogOptions::new(dir)).map_err(err) };
    let write_batches = |log: &mut CommitLog, flush: bool| -> R<u64> {
        let mut buf = MessageBuf::default();
        let mut flushes = 0;
        for chunk in data.bytes.chunks(BATCH) {
            buf.clear();
            for bytes in chunk {
                buf.push(bytes).map_err(err)?;
            }
            log.append(&mut buf).map_err(err)?;
            if flush {
                log.flush()?;
                flushes += 1;
            }
        }
        Ok(flushes)
    };
    b.run(sys, W_SINGLE, Some(L_FILE_SINGLE), "append_msg", || {
        let dir = tmp()?;
        let mut log = open(dir.path())?;
        timed(n, || {
            for bytes in &data.bytes {
                log.append_msg(bytes).map_err(err)?;
            }
            log.flush()?;
            Ok(())
        })
    });
    b.run(
        sys,
        W_BATCH,
        Some(L_FILE_BATCH),
        "append(MessageBuf of 256)",
        || {
            let dir = tmp()?;
            let mut log = open(dir.path())?;
            timed(n, || {
                write_batches(&mut log, false)?;
                log.flush()?;
                Ok(())
            })
        },
    );
    b.run(
        sys,
        "append batch 256 + flush()",
        None,
        "NOT durable: flush() per 256 msyncs the index only, never fsyncs the segment",
        || {
            let dir = tmp()?;
            let mut log = open(dir.path())?;
            timed(n, || write_batches(&mut log, true).map(drop))
        },
    );
    b.run(
        sys,
        W_REPLAY,
        Some(L_REPLAY),
        "read(offset, 1 MiB) loop, decode",
        || {
            let dir = tmp()?;
            let mut log = open(dir.path())?;
            write_batches(&mut log, false)?;
            log.flush()?;
            drop(log);
            let log = open(dir.path())?;
            let mut count = 0u64;
            let s = timed(n, || {
                let mut next = 0;
                while next < n {
                    let msgs = log.read(next, ReadLimit::max_bytes(1 << 20)).map_err(err)?;
                    let before = count;
                    for m in msgs.iter() {
                        count += u64::from(decode(m.payload())?.qty > 0);
                        next = m.offset() + 1;
                    }
                    check(count > before, "commitlog read progress")?;
                }
                Ok(())
            })?;
            check(count == n, "replay count")?;
            Ok(s)
        },
    );
    b.run(
        sys,
        W_GET,
        Some(L_GET),
        "read(offset, 128 B), decode",
        || {
            let dir = tmp()?;
            let mut log = open(dir.path())?;
            write_batches(&mut log, false)?;
            log.flush()?;
            drop(log);
            let log = open(dir.path())?;
            let mut qty = 0u64;
            let s = timed(data.gets.len() as u64, || {
                for &g in &data.gets {
                    let msgs = log.read(g, ReadLimit::max_bytes(128)).map_err(err)?;
                    let m = msgs.iter().next().ok_or("missing message")?;
                    check(m.offset() == g, "commitlog offset")?;
                    qty += u64::from(decode(m.payload())?.qty);
                }
                Ok(())
            })?;
            check(qty > 0, "gets")?;
            Ok(s)
        },
    );
}

// ---- typed replay with bincode: backbone against commitlog ------------------------

/// The crate's `Bincode` codec's encoding: bincode 2 with its standard
/// configuration, through its serde API.
fn bincode_encode(v: &Checkout) -> R<Vec<u8>> {
    Ok(bincode::serde::encode_to_vec(
        v,
        bincode::config::standard(),
    )?)
}

/// Decodes as `backbone::Bincode` does, trailing bytes refused.
fn bincode_decode(bytes: &[u8]) -> R<Checkout> {
    let (v, used): (Checkout, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    check(used == bytes.len(), "bincode: trailing bytes")?;
    Ok(v)
}

/// Typed replay of the whole workload with bincode on both sides: a
/// backbone log opened with `backbone::Bincode`, and commitlog holding the
/// same events encoded as that codec does, read as the postcard commitlog
/// row reads. With both systems selected the two run in alternating
/// repetitions (commitlog first) and the backbone row's ratio is to
/// commitlog's; otherwise whichever is selected runs alone.
fn bincode_replay(b: &mut Bench<'_>, data: &Data) {
    let (bb, cl) = (b.config.runs("backbone"), b.config.runs("commitlog"));
    if !(bb || cl) || !b.selected(W_REPLAY_BINCODE) {
        return;
    }
    let encoded: Vec<Vec<u8>> = match data.values.iter().map(bincode_encode).collect() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("  {W_REPLAY_BINCODE}: FAILED to encode: {e}");
            return;
        }
    };
    let bytes = encoded.iter().map(|e| e.len() as u64).sum::<u64>() as f64 / encoded.len() as f64;
    let bb_note = format!(
        "typed: Options::new().open_with_codec(dir, backbone::Bincode), read(Start::Beginning), \
         decodes each Checkout ({bytes:.1} bytes on average with bincode)"
    );
    let cl_note = format!(
        "read(offset, 1 MiB) loop, decode with bincode::serde standard() (backbone::Bincode's \
         encoding, {bytes:.1} bytes on average)"
    );
    let cl_replay = || commitlog_replay(&encoded, bincode_decode);
    let bb_replay = || bb_bincode_replay(data);
    if bb && cl {
        b.run_pair(
            "backbone",
            W_REPLAY_BINCODE,
            &format!("{bb_note}; vs limit: ratio of the medians; alternated with commitlog"),
            (("commitlog", W_REPLAY_BINCODE), &cl_note),
            || {
                let c = cl_replay()?;
                let mut s = bb_replay()?;
                s.extra = Some(format!("{:.2}×", s.rate() / c.rate()));
                Ok((c, s))
            },
        );
    } else if bb {
        b.run(
            "backbone",
            W_REPLAY_BINCODE,
            Some(("commitlog", W_REPLAY_BINCODE)),
            &bb_note,
            bb_replay,
        );
    } else {
        b.run("commitlog", W_REPLAY_BINCODE, None, &cl_note, cl_replay);
    }
}

fn bb_bincode_replay(data: &Data) -> R<Sample> {
    let n = data.values.len() as u64;
    let dir = tmp()?;
    let open = || -> R<EventLog<Checkout, backbone::Bincode>> {
        Ok(Options::new()
            .durability(Durability::Buffered)
            .open_with_codec(dir.path(), backbone::Bincode)?)
    };
    let log = open()?;
    for chunk in data.values.chunks(BATCH) {
        log.append_batch(chunk)?;
    }
    log.close()?;
    let log = open()?;
    let mut count = 0;
    let s = timed(n, || {
        for rec in log.read(Start::Beginning) {
            count += u64::from(rec?.value.qty > 0);
        }
        Ok(())
    })?;
    check(count == n, "replay count")?;
    log.close()?;
    Ok(s)
}

/// commitlog replay of `payloads` written in batches of 256, each decoded
/// with `decode`: the loop of the postcard `replay from 0` row.
fn commitlog_replay(payloads: &[Vec<u8>], decode: fn(&[u8]) -> R<Checkout>) -> R<Sample> {
    use commitlog::message::{MessageBuf, MessageSet};
    use commitlog::{CommitLog, LogOptions, ReadLimit};
    let n = payloads.len() as u64;
    let dir = tmp()?;
    let open = || -> R<CommitLog> { CommitLog::new(LogOptions::new(dir.path())).map_err(err) };
    let mut log = open()?;
    let mut buf = MessageBuf::default();
    for chunk in payloads.chunks(BATCH) {
        buf.clear();
        for bytes in chunk {
            buf.push(bytes).map_err(err)?;
        }
        log.append(&mut buf).map_err(err)?;
    }
    log.flush()?;
    drop(log);
    let log = open()?;
    let mut count = 0u64;
    let s = timed(n, || {
        let mut next = 0;
        while next < n {
            let msgs = log.read(next, ReadLimit::max_bytes(1 << 20)).map_err(err)?;
            let before = count;
            for m in msgs.iter() {
                count += u64::from(decode(m.payload())?.qty > 0);
                next = m.offset() + 1;
            }
            check(count > before, "commitlog read progress")?;
        }
        Ok(())
    })?;
    check(count == n, "replay count")?;
    Ok(s)
}

// ---- servers: NATS JetStream and Redis Streams ----------------------------------

fn find_binary(name: &str) -> Option<PathBuf> {
    binaries(name).next()
}

/// Every file called `name` on the PATH, then in the sbin directories.
fn binaries(name: &str) -> impl Iterator<Item = PathBuf> + '_ {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .collect::<Vec<_>>()
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(move |d| d.join(name))
        .filter(|p| p.is_file())
}

/// The oldest nats-server with atomic batches (ADR-50), which the mirror
/// rows need.
const NATS_ATOMIC_BATCHES: (u32, u32) = (2, 12);

/// The nats-server to start and its version: `$BACKBONE_NATS_SERVER`, else
/// `nats-venv/bin/nats-server` in the cargo target directory (where
/// `scripts/test` installs one), else the first `nats-server` on the PATH
/// (then in the sbin directories) that is 2.12 or newer. Without any of
/// these, an older one (Debian's is 2.9) still runs the publish and replay
/// rows; the mirror rows are then skipped.
fn find_nats_server() -> Option<(PathBuf, (u32, u32, u32))> {
    if let Some(named) = std::env::var_os("BACKBONE_NATS_SERVER").filter(|v| !v.is_empty()) {
        let named = PathBuf::from(named);
        let version = nats_version(&named);
        if version.is_none() {
            eprintln!(
                "NOTE: BACKBONE_NATS_SERVER={} does not run as `nats-server --version`",
                named.display()
            );
        }
        return version.map(|v| (named, v));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|v| !v.is_empty())
        .map_or_else(|| workspace.join("target"), |dir| workspace.join(dir));
    let venv = target.join("nats-venv").join("bin").join("nats-server");
    let mut older = None;
    for binary in std::iter::once(venv).chain(binaries("nats-server")) {
        match nats_version(&binary) {
            Some(v) if (v.0, v.1) >= NATS_ATOMIC_BATCHES => return Some((binary, v)),
            Some(v) => {
                older.get_or_insert((binary, v));
            }
            None => {}
        }
    }
    older
}

/// The version `binary --version` reports (`nats-server: v2.15.1`).
fn nats_version(binary: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|part| {
        let digits = part.len() - part.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        part[..digits].parse::<u32>().ok()
    });
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

fn free_port() -> R<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A server this program started; killed when dropped.
struct Server {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(
    binary: &Path,
    args: impl FnOnce(u16, &Path) -> Vec<String>,
    ready: impl Fn(u16) -> bool,
) -> R<Server> {
    let dir = tmp()?;
    let port = free_port()?;
    let child = Command::new(binary)
        .args(args(port, dir.path()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut server = Server {
        child,
        port,
        _dir: dir,
    };
    for _ in 0..200 {
        if let Some(status) = server.child.try_wait()? {
            return Err(format!("{} exited: {status}", binary.display()).into());
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() && ready(port) {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = server.child.kill();
    Err(format!("{} did not start on 127.0.0.1:{port}", binary.display()).into())
}

/// A nats-server with JetStream on loopback, its store in its temporary
/// directory; with `sync_always`, `sync_interval: always` (an fsync before
/// each acknowledgement) from a config file there, else the server's
/// default (a sync every 2 minutes).
fn start_nats(binary: &Path, sync_always: bool) -> R<Server> {
    let conf = tmp()?;
    let conf_file = conf.path().join("nats.conf");
    std::fs::write(&conf_file, "jetstream {\n  sync_interval: always\n}\n")?;
    let server = start_server(
        binary,
        |port, dir| {
            let mut args = vec![
                "-a".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-js".into(),
                "-sd".into(),
                dir.display().to_string(),
            ];
            if sync_always {
                args.extend(["-c".into(), conf_file.display().to_string()]);
            }
            args
        },
        |_| true,
    )?;
    // The server reads its config file at start only.
    drop(conf);
    Ok(server)
}

fn nats(b: &mut Bench<'_>, data: &Data) {
    let Some((binary, binary_version)) = find_nats_server() else {
        eprintln!(
            "NOTE: nats-server not found; NATS JetStream skipped (set BACKBONE_NATS_SERVER, \
             run scripts/test once to install one, or apt-get install nats-server)"
        );
        return;
    };
    let server = match start_nats(&binary, false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("NOTE: NATS JetStream skipped: {e}");
            return;
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("NOTE: NATS JetStream skipped: {e}");
            return;
        }
    };
    let url = format!("nats://127.0.0.1:{}", server.port);
    let client = match rt.block_on(async_nats::connect(&url)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("NOTE: NATS JetStream skipped: {e}");
            return;
        }
    };
    let _runtime = rt.enter();
    let js = async_nats::jetstream::new(client);
    let version = rt.block_on(async {
        let c = async_nats::connect(&url).await.ok()?;
        c.flush().await.ok()?;
        Some(c.server_info().version.clone())
    });
    let sys = "NATS JetStream";
    let big = (b.config.broker_events as usize).min(data.bytes.len());
    let slow = (b.config.slow_events as usize).min(data.bytes.len());
    let seq = AtomicU64::new(0);
    let note_v = version
        .map(|v| format!("nats-server {v}, "))
        .unwrap_or_default();
    // A fresh stream per repetition.
    let new_stream = |js: &async_nats::jetstream::Context| {
        let name = format!("CHECKOUT{}", seq.fetch_add(1, Ordering::Relaxed));
        let js = js.clone();
        async move {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.new")],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(err)?;
            R::Ok(name)
        }
    };
    let publish =
        |js: &async_nats::jetstream::Context, subject: String, n: usize, window: usize| {
            let js = js.clone();
            async move {
                let mut pending = Vec::with_capacity(window);
                for bytes in &data.bytes[..n] {
                    pending.push(
                        js.publish(subject.clone(), bytes.clone().into())
                            .await
                            .map_err(err)?,
                    );
                    if pending.len() == window {
                        for ack in pending.drain(..) {
                            ack.await.map_err(err)?;
                        }
                    }
                }
                for ack in pending.drain(..) {
                    ack.await.map_err(err)?;
                }
                R::Ok(())
            }
        };
    b.run(
        sys,
        W_SINGLE,
        Some(L_FILE_SINGLE),
        &format!("{note_v}file storage; publish, await ack; {slow} events"),
        || {
            rt.block_on(async {
                let name = new_stream(&js).await?;
                let t = Instant::now();
                publish(&js, format!("{name}.new"), slow, 1).await?;
                Ok(Sample {
                    events: slow as u64,
                    secs: t.elapsed().as_secs_f64(),
                    ..Sample::default()
                })
            })
        },
    );
    b.run(
        sys,
        W_BATCH,
        Some(L_FILE_BATCH),
        &format!("256 publishes in flight, then their acks; {big} events; not fsynced per ack"),
        || {
            rt.block_on(async {
                let name = new_stream(&js).await?;
                let t = Instant::now();
                publish(&js, format!("{name}.new"), big, BATCH).await?;
                Ok(Sample {
                    events: big as u64,
                    secs: t.elapsed().as_secs_f64(),
                    ..Sample::default()
                })
            })
        },
    );
    b.run(
        sys,
        W_REPLAY,
        Some(L_REPLAY),
        &format!("ordered pull consumer, decode; {big} events"),
        || {
            rt.block_on(async {
                use futures_util::StreamExt;
                let name = new_stream(&js).await?;
                publish(&js, format!("{name}.new"), big, BATCH).await?;
                let stream = js.get_stream(&name).await.map_err(err)?;
                let t = Instant::now();
                let consumer = stream
                    .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
                        deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
                    .map_err(err)?;
                let mut messages = consumer.messages().await.map_err(err)?;
                let mut count = 0;
                while count < big {
                    let m = tokio::time::timeout(Duration::from_secs(30), messages.next())
                        .await
                        .map_err(|_| "NATS replay timed out")?
                        .ok_or("NATS replay ended early")?
                        .map_err(err)?;
                    count += usize::from(decode(&m.payload)?.qty > 0);
                }
                Ok(Sample {
                    events: big as u64,
                    secs: t.elapsed().as_secs_f64(),
                    ..Sample::default()
                })
            })
        },
    );
    mirror_rows(b, data, &rt, &binary, binary_version, &server);
    drop(js);
    drop(rt);
    drop(server);
}

// ---- the NATS bridge: backbone::nats::Mirror against direct publishes ---------

const W_MIRROR: &str = "mirror to JetStream (backbone::nats::Mirror), server default sync";
const W_MIRROR_ALWAYS: &str = "mirror to JetStream (backbone::nats::Mirror), sync_interval always";
const L_DIRECT: (&str, &str) = (
    "NATS JetStream",
    "async-nats direct, pipelined acks (window 256), server default sync",
);
const L_DIRECT_ALWAYS: (&str, &str) = (
    "NATS JetStream",
    "async-nats direct, pipelined acks (window 256), sync_interval always",
);
/// Acknowledgements the direct publisher keeps in flight.
const DIRECT_WINDOW: usize = 256;
/// Records per atomic batch of the mirror (JetStream's most, the default).
const MIRROR_BATCH: usize = 1000;
/// The event type the mirrored log records (its Backbone-Event header).
const MIRROR_EVENT: (&str, u32) = ("compare.Checkout", 1);

/// The mirror pairs, on the server started with its default sync and on a
/// second one with `sync_interval: always`: each repetition mirrors one
/// synced log of checkouts to a fresh stream, and publishes the same
/// records with the same headers directly to another fresh stream, the two
/// in alternating order.
fn mirror_rows(
    b: &mut Bench<'_>,
    data: &Data,
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    version: (u32, u32, u32),
    default_server: &Server,
) {
    let settings = [
        (
            W_MIRROR,
            L_DIRECT,
            false,
            "server default sync (sync_interval 2 min: acknowledged before fsync)",
        ),
        (
            W_MIRROR_ALWAYS,
            L_DIRECT_ALWAYS,
            true,
            "sync_interval always (fsynced before each acknowledgement)",
        ),
    ];
    if !settings.iter().any(|(w, ..)| b.selected(w)) {
        return;
    }
    let (major, minor, patch) = version;
    if (major, minor) < NATS_ATOMIC_BATCHES {
        eprintln!(
            "NOTE: mirror rows skipped: {} is nats-server {major}.{minor}.{patch}, without \
             atomic batches (2.12 or newer: set BACKBONE_NATS_SERVER or run scripts/test)",
            binary.display()
        );
        return;
    }
    let n = (b.config.broker_events as usize).min(data.bytes.len());
    let mut setup = match MirrorSetup::new(data, n) {
        Ok(setup) => setup,
        Err(e) => {
            eprintln!("  mirror rows: FAILED to prepare the log: {e}");
            return;
        }
    };
    let mut always = None;
    for (workload, limit, sync_always, sync) in settings {
        if !b.selected(workload) {
            continue;
        }
        let port = if sync_always {
            match start_nats(binary, true) {
                Ok(server) => always.insert(server).port,
                Err(e) => {
                    eprintln!("NOTE: {workload} skipped: {e}");
                    continue;
                }
            }
        } else {
            default_server.port
        };
        let url = format!("nats://127.0.0.1:{port}");
        if let Err(e) = rt.block_on(jetstream_ready(&url)) {
            eprintln!("NOTE: {workload} skipped: {e}");
            continue;
        }
        let common = format!(
            "nats-server {major}.{minor}.{patch}, {sync}; {n} checkouts (postcard) with headers \
             Nats-Msg-Id, Backbone-Log-Id, -Offset, -Timestamp, -Event, -Codec (the same values \
             on both sides, checked); each repetition a fresh stream (file storage, 1 replica, \
             limits retention, 2 min duplicate window, atomic publish allowed) and a new \
             connection, both timed; the two alternate, first one then the other"
        );
        b.run_pair(
            "backbone",
            workload,
            &format!(
                "Mirror::new(..).batch_size({MIRROR_BATCH}).start() until wait_for({n}) returns, \
                 on a Buffered log holding the {n} records, synced: atomic batches of \
                 {MIRROR_BATCH}, one in flight; vs limit: its rate over the direct publishes'; \
                 {common}"
            ),
            (
                limit,
                &format!(
                    "jetstream::Context::publish_with_headers, at most {DIRECT_WINDOW} \
                     acknowledgements in flight (the oldest awaited when full); payloads \
                     prepared as Bytes beforehand, headers built per message; {common}"
                ),
            ),
            || setup.pair(rt, &url),
        );
    }
    drop(always);
    setup.close();
}

/// Waits until the server at `url` answers JetStream requests.
async fn jetstream_ready(url: &str) -> R<()> {
    let client = async_nats::connect(url).await.map_err(err)?;
    let js = async_nats::jetstream::new(client);
    let mut last = None;
    for _ in 0..100 {
        match js.query_account().await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("JetStream not ready at {url}: {last:?}").into())
}

/// The stream a mirror creates for `subject` (as `Mirror`'s defaults make
/// it); the direct publishes go to one made the same way.
fn mirror_stream_config(name: &str, subject: &str) -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream;
    stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{subject}.>")],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: 1,
        max_age: Duration::ZERO,
        duplicate_window: Duration::from_secs(120),
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// The log the mirror rows mirror, and its records as the direct
/// publisher sends them.
struct MirrorSetup {
    log: EventLog<Checkout>,
    _dir: tempfile::TempDir,
    log_id: String,
    event: String,
    codec: &'static str,
    /// Each record's payload as stored (postcard) and its append time (µs).
    records: Vec<(bytes::Bytes, u64)>,
    /// Repetitions so far: names the streams and picks which side goes
    /// first.
    reps: usize,
}

impl MirrorSetup {
    fn new(data: &Data, n: usize) -> R<MirrorSetup> {
        let dir = tmp()?;
        let log: EventLog<Checkout> = Options::new()
            .durability(Durability::Buffered)
            .event_type(MIRROR_EVENT.0, MIRROR_EVENT.1)
            .open(dir.path())?;
        for chunk in data.values[..n].chunks(BATCH) {
            log.append_batch(chunk)?;
        }
        log.sync()?;
        check(
            log.durable_offset() == n as u64,
            "the mirrored log is synced",
        )?;
        let log_id = log.log_id().ok_or("the log has no id")?.to_string();
        let mut records = Vec::with_capacity(n);
        for (record, bytes) in log.read(Start::Beginning).zip(&data.bytes[..n]) {
            let record = record?;
            check(
                record.offset == records.len() as u64,
                "the log's offsets start at 0",
            )?;
            check(
                postcard::to_stdvec(&record.value)? == *bytes,
                "the log's payloads are the workload's bytes",
            )?;
            records.push((
                bytes::Bytes::from(bytes.clone()),
                record.timestamp.as_micros(),
            ));
        }
        check(records.len() == n, "every record read back")?;
        Ok(MirrorSetup {
            log,
            _dir: dir,
            log_id,
            event: format!("{}/{}", MIRROR_EVENT.0, MIRROR_EVENT.1),
            codec: <backbone::Postcard as backbone::Codec<Checkout>>::name(&backbone::Postcard),
            records,
            reps: 0,
        })
    }

    /// One repetition: the direct publishes (the limit) and the mirror,
    /// each to a fresh stream, in alternating order; then checks that both
    /// streams hold every record and end with the same message, and
    /// deletes them.
    fn pair(&mut self, rt: &tokio::runtime::Runtime, url: &str) -> R<(Sample, Sample)> {
        let rep = self.reps;
        self.reps += 1;
        let n = self.records.len() as u64;
        let direct = (format!("DIRECT_{rep}"), format!("direct.r{rep}"));
        let mirrored = (format!("MIRROR_{rep}"), format!("mirror.r{rep}"));
        let direct_first = rep.is_multiple_of(2);
        let (direct_sample, mirror_sample) = if direct_first {
            let d = self.direct(rt, url, &direct.0, &direct.1)?;
            (d, self.mirror(url, &mirrored.0, &mirrored.1)?)
        } else {
            let m = self.mirror(url, &mirrored.0, &mirrored.1)?;
            (self.direct(rt, url, &direct.0, &direct.1)?, m)
        };
        let mut mirror_sample = mirror_sample;
        mirror_sample.extra = Some(format!(
            "{:.0}%{}",
            100.0 * mirror_sample.rate() / direct_sample.rate(),
            if direct_first { " (direct first)" } else { "" }
        ));
        rt.block_on(async {
            let client = async_nats::connect(url).await.map_err(err)?;
            let js = async_nats::jetstream::new(client);
            let mut last = Vec::new();
            for (stream, subject) in [&direct, &mirrored] {
                let subject = format!("{subject}.{}", self.log_id);
                let mut s = js.get_stream(stream).await.map_err(err)?;
                let state = s.info().await.map_err(err)?.state.clone();
                check(state.messages == n, "the stream holds every record")?;
                let message = s
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .map_err(err)?;
                let mut headers: Vec<(String, String)> = message
                    .headers
                    .iter()
                    .filter(|(name, _)| {
                        let name = name.to_string();
                        !name.starts_with("Nats-Batch") && !name.starts_with("Nats-Expected")
                    })
                    .flat_map(|(name, values)| {
                        values
                            .iter()
                            .map(move |v| (name.to_string(), v.as_str().to_owned()))
                    })
                    .collect();
                headers.sort();
                last.push((headers, message.payload));
                js.delete_stream(stream).await.map_err(err)?;
            }
            check(
                last[0] == last[1],
                "the direct and mirrored streams end with the same headers and payload",
            )?;
            check(
                last[0].0.len() == 6,
                "six headers (Nats-Msg-Id and five Backbone-*)",
            )?;
            R::Ok(())
        })?;
        Ok((direct_sample, mirror_sample))
    }

    /// The mirror of the log to `<subject>.<log-id>` in a new `stream`:
    /// timed from `Mirror::new` until every record is acknowledged.
    fn mirror(&self, url: &str, stream: &str, subject: &str) -> R<Sample> {
        let n = self.records.len() as u64;
        let t = Instant::now();
        let mirror = backbone::nats::Mirror::new(&self.log, url, subject)?
            .stream(stream)
            .batch_size(MIRROR_BATCH)
            .start()?;
        let done = mirror.wait_for(n, Duration::from_secs(600))?;
        let secs = t.elapsed().as_secs_f64();
        if !done {
            return Err(format!("the mirror did not catch up: {mirror:?}").into());
        }
        mirror.stop();
        mirror.join()?;
        Ok(Sample {
            events: n,
            secs,
            ..Sample::default()
        })
    }

    /// The records with the mirror's headers, published directly to
    /// `<subject>.<log-id>` in a new `stream` with at most
    /// [`DIRECT_WINDOW`] acknowledgements in flight: timed from the
    /// connect until the last acknowledgement.
    fn direct(
        &self,
        rt: &tokio::runtime::Runtime,
        url: &str,
        stream: &str,
        subject: &str,
    ) -> R<Sample> {
        use async_nats::header::NATS_MESSAGE_ID;
        let n = self.records.len() as u64;
        rt.block_on(async {
            let t = Instant::now();
            let client = async_nats::connect(url).await.map_err(err)?;
            let js = async_nats::jetstream::new(client);
            js.create_stream(mirror_stream_config(stream, subject))
                .await
                .map_err(err)?;
            let subject = async_nats::Subject::from(format!("{subject}.{}", self.log_id));
            let mut acks = std::collections::VecDeque::with_capacity(DIRECT_WINDOW);
            for (offset, (payload, micros)) in self.records.iter().enumerate() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(NATS_MESSAGE_ID, format!("{}:{offset}", self.log_id));
                headers.insert("Backbone-Log-Id", self.log_id.as_str());
                headers.insert("Backbone-Offset", offset.to_string());
                headers.insert("Backbone-Timestamp", micros.to_string());
                headers.insert("Backbone-Event", self.event.as_str());
                headers.insert("Backbone-Codec", self.codec);
                if acks.len() == DIRECT_WINDOW {
                    let ack: async_nats::jetstream::context::PublishAckFuture =
                        acks.pop_front().ok_or("no ack")?;
                    ack.await.map_err(err)?;
                }
                acks.push_back(
                    js.publish_with_headers(subject.clone(), headers, payload.clone())
                        .await
                        .map_err(err)?,
                );
            }
            for ack in acks {
                ack.await.map_err(err)?;
            }
            Ok(Sample {
                events: n,
                secs: t.elapsed().as_secs_f64(),
                ..Sample::default()
            })
        })
    }

    fn close(self) {
        let _ = self.log.close();
    }
}

fn redis_bench(b: &mut Bench<'_>, data: &Data) {
    let Some(binary) = find_binary("redis-server") else {
        eprintln!(
            "NOTE: redis-server not found; Redis Streams skipped (apt-get install redis-server)"
        );
        return;
    };
    let ping = |port: u16| {
        redis::Client::open(format!("redis://127.0.0.1:{port}/"))
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    };
    let server = match start_server(
        &binary,
        |port, dir| {
            [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &dir.display().to_string(),
            ]
            .map(String::from)
            .to_vec()
        },
        ping,
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("NOTE: Redis Streams skipped: {e}");
            return;
        }
    };
    let connect = || -> R<redis::Connection> {
        Ok(redis::Client::open(format!("redis://127.0.0.1:{}/", server.port))?.get_connection()?)
    };
    let mut con = match connect() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("NOTE: Redis Streams skipped: {e}");
            return;
        }
    };
    let version: String = redis::cmd("INFO")
        .arg("server")
        .query::<String>(&mut con)
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("redis_version:")
                    .map(|v| v.trim().to_owned())
            })
        })
        .unwrap_or_default();
    let sys = "Redis Streams";
    let big = (b.config.broker_events as usize).min(data.bytes.len());
    let slow = (b.config.slow_events as usize).min(data.bytes.len());
    let seq = AtomicU64::new(0);
    let key = || format!("checkout{}", seq.fetch_add(1, Ordering::Relaxed));
    let xadd_pipelined = |con: &mut redis::Connection, key: &str, n: usize| -> R<()> {
        for chunk in data.bytes[..n].chunks(BATCH) {
            let mut p = redis::pipe();
            for bytes in chunk {
                p.cmd("XADD")
                    .arg(key)
                    .arg("*")
                    .arg("p")
                    .arg(&bytes[..])
                    .ignore();
            }
            p.query::<()>(con)?;
        }
        Ok(())
    };
    let cleanup = |con: &mut redis::Connection, key: &str| {
        let _ = redis::cmd("DEL").arg(key).query::<()>(con);
    };
    b.run(
        sys,
        W_SINGLE,
        Some(L_FILE_SINGLE),
        &format!("redis {version}, no persistence; XADD round trip each; {slow} events"),
        || {
            let k = key();
            let s = timed(slow as u64, || {
                for bytes in &data.bytes[..slow] {
                    redis::cmd("XADD")
                        .arg(&k)
                        .arg("*")
                        .arg("p")
                        .arg(&bytes[..])
                        .query::<String>(&mut con)?;
                }
                Ok(())
            })?;
            cleanup(&mut con, &k);
            Ok(s)
        },
    );
    b.run(
        sys,
        W_BATCH,
        Some(L_FILE_BATCH),
        &format!("no persistence; pipelines of 256 XADD; {big} events"),
        || {
            let k = key();
            let s = timed(big as u64, || xadd_pipelined(&mut con, &k, big))?;
            cleanup(&mut con, &k);
            Ok(s)
        },
    );
    b.run(
        sys,
        W_REPLAY,
        Some(L_REPLAY),
        &format!("XRANGE pages of 1000, decode; {big} events"),
        || {
            let k = key();
            xadd_pipelined(&mut con, &k, big)?;
            let mut count = 0u64;
            let s = timed(big as u64, || {
                let mut from = "-".to_owned();
                loop {
                    let page: redis::Value = redis::cmd("XRANGE")
                        .arg(&k)
                        .arg(&from)
                        .arg("+")
                        .arg("COUNT")
                        .arg(1000)
                        .query(&mut con)?;
                    let entries = match page {
                        redis::Value::Array(entries) => entries,
                        other => return Err(format!("XRANGE returned {other:?}").into()),
                    };
                    if entries.is_empty() {
                        break;
                    }
                    for entry in &entries {
                        let redis::Value::Array(parts) = entry else {
                            return Err("XRANGE entry".into());
                        };
                        let id: String = redis::from_redis_value_ref(&parts[0])?;
                        let redis::Value::Array(fields) = &parts[1] else {
                            return Err("XRANGE fields".into());
                        };
                        let bytes: Vec<u8> = redis::from_redis_value_ref(&fields[1])?;
                        count += u64::from(decode(&bytes)?.qty > 0);
                        from = format!("({id}");
                    }
                }
                Ok(())
            })?;
            check(count == big as u64, "Redis replay count")?;
            cleanup(&mut con, &k);
            Ok(s)
        },
    );
    // Durable: AOF with appendfsync always. Redis fsyncs once per event-loop
    // pass, so a pipeline of 256 costs about one fsync.
    let aof = redis::cmd("CONFIG")
        .arg("SET")
        .arg("appendfsync")
        .arg("always")
        .query::<()>(&mut con)
        .and_then(|()| {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("appendonly")
                .arg("yes")
                .query::<()>(&mut con)
        });
    if let Err(e) = aof {
        eprintln!("NOTE: Redis durable run skipped: {e}");
        return;
    }
    // Enabling the AOF at run time starts a rewrite; wait for it.
    for _ in 0..100 {
        let info: String = redis::cmd("INFO")
            .arg("persistence")
            .query(&mut con)
            .unwrap_or_default();
        if info.contains("aof_rewrite_in_progress:0") && info.contains("aof_enabled:1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    b.run(
        sys,
        W_DURABLE,
        Some(L_FSYNC),
        &format!("AOF, appendfsync always; pipelines of 256 XADD; {big} events"),
        || {
            let k = key();
            let s = timed(big as u64, || xadd_pipelined(&mut con, &k, big))?;
            cleanup(&mut con, &k);
            Ok(s)
        },
    );
    drop(server);
}

// ---- output -------------------------------------------------------------------

#[derive(Serialize)]
struct Machine {
    nproc: usize,
    cpu: String,
    kernel: String,
    tmp_dir: String,
    tmp_filesystem: String,
}

fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    let tmp_dir = std::env::temp_dir();
    let tmp_filesystem = filesystem(&tmp_dir).unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        kernel,
        tmp_dir: tmp_dir.display().to_string(),
        tmp_filesystem,
    }
}

/// The filesystem type and device of the mount holding `path`, from
/// /proc/self/mounts (the longest matching mount point).
fn filesystem(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = File::open("/proc/self/mounts").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in BufReader::new(mounts).lines() {
        let line = line.ok()?;
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        if path.starts_with(f[1]) && best.as_ref().is_none_or(|(len, _)| f[1].len() > *len) {
            best = Some((f[1].len(), format!("{} ({} on {})", f[2], f[0], f[1])));
        }
    }
    best.map(|(_, s)| s)
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| system | workload | events | events/s (median) | vs limit | fsyncs | latency p50 / p99 / p99.9 µs | note |\n\
         | --- | --- | ---: | ---: | ---: | ---: | --- | --- |\n",
    );
    for r in rows {
        let ratio = match (r.ratio_to_limit, r.latency_us) {
            (Some(x), Some(_)) => format!("p99 {x:.2}×"),
            (Some(x), None) if r.ratio_is_time => format!("time {:.1}%", x * 100.0),
            (Some(x), None) => format!("{:.0}%", x * 100.0),
            (None, _) => String::new(),
        };
        let lat = r
            .latency_us
            .map(|l| format!("{:.1} / {:.1} / {:.1}", l.p50, l.p99, l.p999))
            .unwrap_or_default();
        let mut note = r.note.clone();
        if let Some(lag) = r.max_lag {
            note = format!("{note}; max lag {lag}");
        }
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.system,
            r.workload,
            r.events,
            human(r.events_per_sec),
            ratio,
            r.fsyncs.map(|f| f.to_string()).unwrap_or_default(),
            lat,
            note.trim_start_matches("; "),
        ));
    }
    s
}

fn chart(rows: &[Row], path: &Path, title: &str) -> R<()> {
    use plotters::prelude::*;
    // Latency rows have no bar; the table rows count a table's updates, not
    // checkouts, per second, and are left out with the rebuild they are
    // compared with.
    let timed_limits: Vec<&str> = rows
        .iter()
        .filter(|r| r.ratio_is_time)
        .filter_map(|r| r.limit.as_deref())
        .collect();
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.latency_us.is_none()
                && !r.ratio_is_time
                && !timed_limits.contains(&format!("{} · {}", r.system, r.workload).as_str())
        })
        .collect();
    let n = rows.len();
    if n == 0 {
        return Ok(());
    }
    let max = rows.iter().map(|r| r.events_per_sec).fold(1.0, f64::max);
    let min = rows.iter().map(|r| r.events_per_sec).fold(max, f64::min);
    let lo = 10f64.powf((min / 2.0).log10().floor());
    let hi = 10f64.powf((max * 3.0).log10().ceil());
    let height = 90 + 24 * n as u32;
    let root = SVGBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} · {}", r.system, r.workload))
        .collect();
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(400)
        .build_cartesian_2d((lo..hi).log_scale(), (0..n).into_segmented())
        .map_err(err)?;
    c.configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < n => labels[n - 1 - *i].clone(),
            _ => String::new(),
        })
        .x_desc("events per second (log scale)")
        .x_label_formatter(&|x| human(*x))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(err)?;
    let colour = |system: &str| match system {
        "backbone" => RGBColor(0x1f, 0x77, 0xb4),
        "limit" => RGBColor(0x99, 0x99, 0x99),
        "SQLite" => RGBColor(0xff, 0x7f, 0x0e),
        "commitlog" => RGBColor(0x2c, 0xa0, 0x2c),
        "NATS JetStream" => RGBColor(0x94, 0x67, 0xbd),
        _ => RGBColor(0xd6, 0x27, 0x28),
    };
    c.draw_series(rows.iter().enumerate().map(|(k, r)| {
        let i = n - 1 - k;
        let mut bar = Rectangle::new(
            [
                (lo, SegmentValue::Exact(i)),
                (r.events_per_sec, SegmentValue::Exact(i + 1)),
            ],
            colour(&r.system).filled(),
        );
        bar.set_margin(3, 3, 0, 0);
        bar
    }))
    .map_err(err)?;
    c.draw_series(rows.iter().enumerate().map(|(k, r)| {
        Text::new(
            human(r.events_per_sec),
            (r.events_per_sec * 1.08, SegmentValue::CenterOf(n - 1 - k)),
            ("sans-serif", 12).into_font(),
        )
    }))
    .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

#[derive(Serialize)]
struct Report<'a> {
    command: String,
    events: u64,
    reps: usize,
    broker_events: u64,
    slow_events: u64,
    paced_events: u64,
    gets: u64,
    payload_bytes_per_event: f64,
    backbone_bytes_per_event: Option<f64>,
    machine: Machine,
    unix_time: u64,
    rows: &'a [Row],
}

/// Bytes allocated on disk per event by a backbone log of the whole workload.
fn backbone_bytes_per_event(data: &Data) -> R<f64> {
    let dir = tmp()?;
    let log = bb_open(dir.path(), Durability::Buffered)?;
    for chunk in data.values.chunks(BATCH) {
        log.append_batch(chunk)?;
    }
    log.close()?;
    // Segments are preallocated sparse files: count allocated blocks
    // (segments, indexes and metadata), not file lengths.
    let mut used = 0u64;
    for entry in std::fs::read_dir(dir.path())? {
        use std::os::unix::fs::MetadataExt;
        used += entry?.metadata()?.blocks() * 512;
    }
    Ok(used as f64 / data.values.len() as f64)
}

fn main() -> R<()> {
    if let Some(child) = std::env::var_os(CHILD_ENV) {
        return match child.to_str() {
            Some("table") => table_child(),
            _ => Err(format!("{CHILD_ENV}={child:?} is not a child this program runs").into()),
        };
    }
    let config = parse_args()?;
    let command = std::iter::once("cargo run --release -p compare --".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let m = machine();
    eprintln!(
        "compare: {} events, {} repetitions, medians; {} cores, {}; temp dir {} on {}",
        config.events, config.reps, m.nproc, m.cpu, m.tmp_dir, m.tmp_filesystem
    );
    let data = Data::new(config.events, config.gets);
    let payload = data.payload_bytes() as f64 / data.bytes.len() as f64;
    eprintln!("Checkout payload: {payload:.1} bytes on average (postcard)");
    let mut bench = Bench {
        config: &config,
        rows: Vec::new(),
    };
    if config.runs("limits") {
        eprintln!("limits:");
        limits(&mut bench, &data);
    }
    let mut bb_bytes = None;
    if config.runs("backbone") {
        eprintln!("backbone:");
        backbone(&mut bench, &data);
        eprintln!("backbone stream jobs and tables:");
        stream(&mut bench, &data);
        bb_bytes = backbone_bytes_per_event(&data).ok();
    }
    if config.runs("sqlite") {
        eprintln!("SQLite (rusqlite, bundled {}):", rusqlite::version());
        sqlite(&mut bench, &data);
    }
    if config.runs("commitlog") {
        eprintln!("commitlog:");
        commitlog(&mut bench, &data);
    }
    if config.runs("backbone") || config.runs("commitlog") {
        eprintln!("typed replay with bincode:");
        bincode_replay(&mut bench, &data);
    }
    if config.runs("nats") {
        eprintln!("NATS JetStream:");
        nats(&mut bench, &data);
    }
    if config.runs("redis") {
        eprintln!("Redis Streams:");
        redis_bench(&mut bench, &data);
    }
    bench.finish();
    let rows = bench.rows;

    std::fs::create_dir_all(&config.out)?;
    let table = markdown(&rows);
    println!("{table}");
    let md = format!(
        "Command: `{command}`\n\nMachine: {} cores, {}, Linux {}, temp dir on {}\n\n{table}",
        m.nproc, m.cpu, m.kernel, m.tmp_filesystem
    );
    std::fs::write(config.out.join("latest.md"), md)?;
    let report = Report {
        command,
        events: config.events,
        reps: config.reps,
        broker_events: config.broker_events,
        slow_events: config.slow_events,
        paced_events: config.paced_events,
        gets: config.gets,
        payload_bytes_per_event: payload,
        backbone_bytes_per_event: bb_bytes,
        machine: m,
        unix_time: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        rows: &rows,
    };
    let json = config.out.join("latest.json");
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)?;
    let svg = config.out.join("latest.svg");
    let title = format!(
        "Checkout events/s, medians of {} runs ({} cores, {})",
        config.reps, report.machine.nproc, report.machine.cpu
    );
    chart(&rows, &svg, &title)?;
    eprintln!("wrote {}, {} and latest.md", json.display(), svg.display());
    if let Some(b) = bb_bytes {
        eprintln!("bytes on disk per event: backbone {b:.1}, payload {payload:.1}");
    }
    Ok(())
}
