//! The soak test (the plan's §2.7, scaled to this crate): two logs on a real
//! disk, one with `Durability::Interval(10ms)` and one with `EveryAppend`,
//! four appender threads at a fixed rate (two per log) with payloads of
//! 64 B to 4 KiB, 8 MiB segments and a 64 MiB retention so segments are
//! removed all the time; on the `Interval` log eight subscribers: six live,
//! one slow (it pauses, so it falls behind and catches up from history),
//! one that drops its subscription and resubscribes from its committed
//! consumer position every few seconds. Every subscriber commits a consumer
//! position every second.
//!
//! Asserted: no event lost (every subscriber sees dense offsets, each
//! payload intact, and per window of 4096 offsets the same count and
//! checksum as the appenders wrote there); a subscriber that falls behind
//! retention (`Error::OffsetTruncated`) is counted and fails the run;
//! memory bounded (`RssAnon` after the warm-up, a third of the run capped
//! at two minutes and until retention runs on both logs, or two thirds of
//! the run at the latest, grows by
//! less than 32 MiB);
//! file descriptors and mappings flat; each log directory at most retention
//! plus two segments. A dashboard line reports the figures.
//!
//! Knobs: `SOAK_SECONDS` (default 60), `SOAK_RATE_INTERVAL` and
//! `SOAK_RATE_EVERY` (events per second per appender on each log).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backbone::{Durability, Error, EventLog, Options, Raw};
use common::mix64;

type Log = EventLog<Vec<u8>, Raw>;

const SEGMENT: u64 = 8 << 20;
const RETENTION: u64 = 64 << 20;
/// Offsets per checksum window.
const WINDOW: u64 = 4096;
const RSS_GROWTH_MAX: u64 = 32 << 20;
const FD_SLACK: u64 = 16;
const MAPS_SLACK: u64 = 64;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- payloads: self-verifying, 64 B to 4 KiB -------------------------------

/// The payload appender `writer` appends as its record `seq`: the writer,
/// the sequence number, then bytes derived from both.
fn payload(writer: u8, seq: u64) -> Vec<u8> {
    let mut x = mix64(u64::from(writer) << 56 ^ seq) | 1;
    let len = 64 + (x % (4096 - 64 + 1)) as usize;
    let mut out = Vec::with_capacity(len);
    out.push(writer);
    out.extend_from_slice(&seq.to_le_bytes());
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    out
}

fn intact(p: &[u8]) -> bool {
    if p.len() < 9 {
        return false;
    }
    let seq = u64::from_le_bytes(p[1..9].try_into().expect("8 bytes"));
    payload(p[0], seq) == p
}

/// The contribution of the record at `offset` to its window's checksum:
/// binds the payload to its offset, so a lost, duplicated, reordered or
/// misplaced record changes the sum.
fn term(offset: u64, p: &[u8]) -> u64 {
    mix64(offset ^ u64::from(crc32fast::hash(p)) << 32)
}

/// Per window: how many records, and the wrapping sum of their terms.
type Windows = BTreeMap<u64, (u64, u64)>;

fn add(windows: &mut Windows, offset: u64, p: &[u8]) {
    let w = windows.entry(offset / WINDOW).or_default();
    w.0 += 1;
    w.1 = w.1.wrapping_add(term(offset, p));
}

// ---- latency histogram (fixed memory) ---------------------------------------

struct Histogram {
    buckets: Vec<u64>,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: vec![0; 1024 + 64 * 54],
        }
    }

    fn bucket(us: u64) -> usize {
        if us < 1024 {
            return us as usize;
        }
        let log = 63 - u64::from(us.leading_zeros());
        let mantissa = (us >> (log - 6)) & 63;
        1024 + (log as usize - 10) * 64 + mantissa as usize
    }

    fn lower(bucket: usize) -> u64 {
        if bucket < 1024 {
            return bucket as u64;
        }
        let log = (bucket - 1024) / 64 + 10;
        let mantissa = ((bucket - 1024) % 64) as u64;
        (1 << log) | mantissa << (log - 6)
    }

    fn record(&mut self, us: u64) {
        let last = self.buckets.len() - 1;
        self.buckets[Self::bucket(us).min(last)] += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    fn percentile(&self, p: f64) -> u64 {
        let total: u64 = self.buckets.iter().sum();
        let target = ((total as f64) * p / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Self::lower(i);
            }
        }
        0
    }
}

// ---- process figures from /proc ------------------------------------------------

fn rss_anon() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

fn fd_count() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

fn maps_count() -> u64 {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |m| m.lines().count() as u64)
}

/// User plus system CPU time of this process, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the command: state is field 0, utime 11, stime 12.
    field(11) + field(12)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

// ---- the run -----------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Live,
    Slow,
    Resubscriber,
}

/// What one subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    name: String,
    first: Option<u64>,
    next: u64,
    received: u64,
    windows: Windows,
    /// Offsets skipped or repeated, payloads damaged, errors.
    problems: Vec<String>,
    truncated: u64,
    resubscribes: u64,
    max_lag_events: u64,
    max_lag_micros: u64,
}

impl Seen {
    fn take(&mut self, offset: u64, p: &[u8]) {
        if self.first.is_none() {
            self.first = Some(offset);
            self.next = offset;
        }
        if offset != self.next && self.problems.len() < 10 {
            self.problems.push(format!(
                "{}: offset {offset} where {} was next",
                self.name, self.next
            ));
        }
        if !intact(p) && self.problems.len() < 10 {
            self.problems
                .push(format!("{}: damaged payload at {offset}", self.name));
        }
        add(&mut self.windows, offset, p);
        self.next = offset + 1;
        self.received += 1;
    }
}

struct Shared {
    stop_appending: AtomicBool,
    /// Set once the appenders stopped: the end every subscriber must reach.
    end: AtomicU64,
    max_lag: AtomicU64,
}

fn subscriber(log: Log, i: usize, kind: Kind, shared: Arc<Shared>) -> Seen {
    let name = format!("sub{i}");
    let consumer = log.consumer(&name).expect("consumer");
    let mut seen = Seen {
        name: format!("{name} ({kind:?})"),
        ..Seen::default()
    };
    let mut sub = Some(consumer.subscribe().expect("subscribe"));
    let (mut last_commit, mut last_resubscribe) = (Instant::now(), Instant::now());
    let (mut paused_at, mut n) = (Instant::now(), 0u64);
    loop {
        let end = shared.end.load(Ordering::Acquire);
        if seen.first.is_some() && seen.next >= end {
            break;
        }
        let s = sub.as_ref().expect("subscribed");
        match s.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(rec)) => {
                seen.take(rec.offset, &rec.value);
                n += 1;
                if n.is_multiple_of(256) {
                    let lag = s.lag();
                    seen.max_lag_events = seen.max_lag_events.max(lag);
                    shared.max_lag.fetch_max(lag, Ordering::Relaxed);
                    let behind = now_micros().saturating_sub(rec.timestamp.as_micros());
                    seen.max_lag_micros = seen.max_lag_micros.max(behind);
                }
            }
            Ok(None) => {}
            Err(Error::OffsetTruncated { requested, first }) => {
                seen.truncated += 1;
                seen.problems.push(format!(
                    "{}: fell behind retention at {requested} (log starts at {first})",
                    seen.name
                ));
                break;
            }
            Err(e) => {
                seen.problems.push(format!("{}: {e}", seen.name));
                break;
            }
        }
        if last_commit.elapsed() >= Duration::from_secs(1) {
            if seen.first.is_some() {
                if let Err(e) = consumer.commit(seen.next) {
                    seen.problems.push(format!("{}: commit: {e}", seen.name));
                }
            }
            last_commit = Instant::now();
        }
        match kind {
            Kind::Slow => {
                if n.is_multiple_of(32) {
                    thread::sleep(Duration::from_micros(500));
                }
                // Every 5 s, stop for 2 s: the channel fills, the delivery
                // thread leaves it behind, and it catches up from history.
                if paused_at.elapsed() >= Duration::from_secs(5) {
                    thread::sleep(Duration::from_secs(2));
                    paused_at = Instant::now();
                }
            }
            Kind::Resubscriber if last_resubscribe.elapsed() >= Duration::from_secs(3) => {
                if seen.first.is_some() {
                    consumer
                        .commit(seen.next)
                        .expect("commit before resubscribing");
                }
                drop(sub.take());
                thread::sleep(Duration::from_millis(200));
                let again = consumer.subscribe().expect("resubscribe");
                if seen.first.is_some() && again.position() != seen.next {
                    seen.problems.push(format!(
                        "{}: resubscribed at {}, committed {}",
                        seen.name,
                        again.position(),
                        seen.next
                    ));
                }
                sub = Some(again);
                seen.resubscribes += 1;
                last_resubscribe = Instant::now();
            }
            _ => {}
        }
    }
    seen
}

struct Appended {
    windows: Windows,
    latency: Histogram,
    count: u64,
    behind: u64,
}

fn appender(log: Log, writer: u8, rate: u64, shared: Arc<Shared>) -> Appended {
    let mut out = Appended {
        windows: Windows::new(),
        latency: Histogram::new(),
        count: 0,
        behind: 0,
    };
    let period = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let mut due = Instant::now();
    let mut seq = 0u64;
    while !shared.stop_appending.load(Ordering::Acquire) {
        let p = payload(writer, seq);
        let started = Instant::now();
        let offset = log.append(&p).expect("append");
        out.latency.record(started.elapsed().as_micros() as u64);
        add(&mut out.windows, offset, &p);
        out.count += 1;
        seq += 1;
        due += period;
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        } else if now - due > Duration::from_millis(100) {
            // Far behind the schedule: note it, and do not burst to catch up.
            out.behind += 1;
            due = now;
        }
    }
    out
}

fn open_log(dir: &Path, durability: Durability) -> Log {
    Options::new()
        .segment_bytes(SEGMENT)
        .retention_bytes(RETENTION)
        .durability(durability)
        .open_with_codec(dir, Raw)
        .expect("open the soak log")
}

#[test]
fn soak() {
    let seconds = env_u64("SOAK_SECONDS", 60);
    let rate_interval = env_u64("SOAK_RATE_INTERVAL", 3000);
    let rate_every = env_u64("SOAK_RATE_EVERY", 750);
    let warmup = Duration::from_secs((seconds / 3).clamp(5, 120));
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b) = (tmp.path().join("interval"), tmp.path().join("every-append"));
    let log_a = open_log(&dir_a, Durability::Interval(Duration::from_millis(10)));
    let log_b = open_log(&dir_b, Durability::EveryAppend);
    let shared = Arc::new(Shared {
        stop_appending: AtomicBool::new(false),
        end: AtomicU64::new(u64::MAX),
        max_lag: AtomicU64::new(0),
    });
    let started = Instant::now();
    let cpu_start = cpu_ticks();

    let subscribers: Vec<_> = (0..8)
        .map(|i| {
            let kind = match i {
                6 => Kind::Slow,
                7 => Kind::Resubscriber,
                _ => Kind::Live,
            };
            let (log, shared) = (log_a.clone(), shared.clone());
            thread::spawn(move || subscriber(log, i, kind, shared))
        })
        .collect();
    let appenders: Vec<_> = (0..4u8)
        .map(|w| {
            let (log, rate) = if w < 2 {
                (log_a.clone(), rate_interval)
            } else {
                (log_b.clone(), rate_every)
            };
            let shared = shared.clone();
            thread::spawn(move || appender(log, w, rate, shared))
        })
        .collect();

    // Sample once a second.
    let mut warm: Option<(u64, u64, u64)> = None;
    let (mut rss_max, mut fds_max, mut maps_max) = (0u64, 0u64, 0u64);
    let (mut disk_a_max, mut disk_b_max) = (0u64, 0u64);
    let mut rss_samples = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        thread::sleep(Duration::from_secs(1));
        let (rss, fds, maps) = (rss_anon(), fd_count(), maps_count());
        disk_a_max = disk_a_max.max(dir_bytes(&dir_a));
        disk_b_max = disk_b_max.max(dir_bytes(&dir_b));
        // Warm once the time is up and retention runs on both logs (handles
        // and disk grow until the first segment is removed).
        let retaining = log_a.first_offset() > 0 && log_b.first_offset() > 0;
        let late = started.elapsed() >= Duration::from_secs(seconds * 2 / 3);
        if started.elapsed() >= warmup && (retaining || late || warm.is_some()) {
            if warm.is_none() {
                warm = Some((rss, fds, maps));
            }
            rss_max = rss_max.max(rss);
            fds_max = fds_max.max(fds);
            maps_max = maps_max.max(maps);
            rss_samples += 1;
        }
    }
    let (rss_end, fds_end, maps_end) = (rss_anon(), fd_count(), maps_count());
    shared.stop_appending.store(true, Ordering::Release);
    let appended: Vec<Appended> = appenders
        .into_iter()
        .map(|t| t.join().expect("appender"))
        .collect();
    let elapsed = started.elapsed();
    let cpu = cpu_ticks() - cpu_start;
    log_a.sync().expect("sync");
    shared.end.store(log_a.next_offset(), Ordering::Release);
    let seen: Vec<Seen> = subscribers
        .into_iter()
        .map(|t| t.join().expect("subscriber"))
        .collect();

    // The truth, from the appenders: per window of the Interval log.
    let mut truth = Windows::new();
    for a in &appended[..2] {
        for (w, (n, sum)) in &a.windows {
            let t = truth.entry(*w).or_default();
            t.0 += n;
            t.1 = t.1.wrapping_add(*sum);
        }
    }
    let end = log_a.next_offset();
    let mut problems: Vec<String> = Vec::new();
    let mut lost = 0u64;
    let mut checked_windows = 0u64;
    for s in &seen {
        problems.extend(s.problems.iter().cloned());
        let first = s.first.unwrap_or(end);
        if s.next < end {
            lost += end - s.next;
            problems.push(format!("{}: stopped at {} of {end}", s.name, s.next));
        }
        if s.received != s.next - first {
            problems.push(format!(
                "{}: received {} records over [{first}, {})",
                s.name, s.received, s.next
            ));
        }
        // Whole windows inside the subscriber's range must match exactly.
        for (w, got) in &s.windows {
            let (lo, hi) = (w * WINDOW, (w + 1) * WINDOW);
            if lo < first || hi > s.next {
                continue;
            }
            checked_windows += 1;
            let expected = truth.get(w).copied().unwrap_or_default();
            if *got != expected {
                lost += expected.0.abs_diff(got.0).max(1);
                problems.push(format!(
                    "{}: window {w} has {} records, checksum {:#x}; the appenders wrote {} ({:#x})",
                    s.name, got.0, got.1, expected.0, expected.1
                ));
            }
        }
    }
    let truncated: u64 = seen.iter().map(|s| s.truncated).sum();
    let mut latency_a = Histogram::new();
    let mut latency_b = Histogram::new();
    for (i, a) in appended.iter().enumerate() {
        if i < 2 {
            latency_a.merge(&a.latency);
        } else {
            latency_b.merge(&a.latency);
        }
    }
    let events: u64 = appended.iter().map(|a| a.count).sum();
    let behind: u64 = appended.iter().map(|a| a.behind).sum();
    let (rss_warm, fds_warm, maps_warm) = warm.unwrap_or((rss_end, fds_end, maps_end));
    let rss_growth = rss_max.saturating_sub(rss_warm);
    let ticks_per_sec = 100.0; // USER_HZ on Linux
    let cpu_pct = cpu as f64 / ticks_per_sec / elapsed.as_secs_f64() * 100.0;
    let disk_bound = RETENTION + 2 * SEGMENT;
    let max_lag_events = seen.iter().map(|s| s.max_lag_events).max().unwrap_or(0);
    let max_lag_ms = seen.iter().map(|s| s.max_lag_micros).max().unwrap_or(0) / 1000;
    let slow = &seen[6];
    println!(
        "soak {}s · {events} events ({:.0}/s; Interval log {}, EveryAppend log {}) · \
         8 subscribers · lost: {lost} · fell behind retention: {truncated} · \
         windows checked: {checked_windows} · RSS growth after warm-up: {:+.1} MiB \
         (warm {:.1} MiB, {rss_samples} samples) · fds: {fds_warm} -> {fds_end} (max {fds_max}) · \
         maps: {maps_warm} -> {maps_end} (max {maps_max}) · max lag: {max_lag_events} events / \
         {max_lag_ms} ms (slow subscriber {} events / {} ms) · resubscribes: {} · \
         append p50/p99: Interval {}/{} µs, EveryAppend {}/{} µs · disk max: {:.1} / {:.1} MiB \
         (bound {:.0} MiB) · first offset {} · CPU {cpu_pct:.0}% of one core · behind schedule: {behind}",
        elapsed.as_secs(),
        events as f64 / elapsed.as_secs_f64(),
        log_a.next_offset(),
        log_b.next_offset(),
        rss_growth as f64 / (1 << 20) as f64,
        rss_warm as f64 / (1 << 20) as f64,
        slow.max_lag_events,
        slow.max_lag_micros / 1000,
        seen[7].resubscribes,
        latency_a.percentile(50.0),
        latency_a.percentile(99.0),
        latency_b.percentile(50.0),
        latency_b.percentile(99.0),
        disk_a_max as f64 / (1 << 20) as f64,
        disk_b_max as f64 / (1 << 20) as f64,
        disk_bound as f64 / (1 << 20) as f64,
        log_a.first_offset(),
    );
    let mut failures = problems;
    if lost > 0 || truncated > 0 {
        failures.push(format!("lost {lost}, fell behind retention {truncated}"));
    }
    if rss_growth >= RSS_GROWTH_MAX {
        failures.push(format!(
            "RssAnon grew by {rss_growth} bytes after the warm-up"
        ));
    }
    if fds_max > fds_warm + FD_SLACK || fds_end > fds_warm + FD_SLACK {
        failures.push(format!(
            "open fds not flat: {fds_warm} after warm-up, max {fds_max}, end {fds_end}"
        ));
    }
    if maps_max > maps_warm + MAPS_SLACK || maps_end > maps_warm + MAPS_SLACK {
        failures.push(format!(
            "mappings not flat: {maps_warm} after warm-up, max {maps_max}, end {maps_end}"
        ));
    }
    for (name, max) in [("interval", disk_a_max), ("every-append", disk_b_max)] {
        if max > disk_bound {
            failures.push(format!(
                "log {name} reached {max} bytes on disk, over retention + 2 segments ({disk_bound})"
            ));
        }
    }
    if seconds >= 30 && log_a.first_offset() == 0 {
        failures.push("retention never removed a segment: the run is too small".into());
    }
    assert!(failures.is_empty(), "soak failed:\n{}", failures.join("\n"));
}
