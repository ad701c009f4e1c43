//! The concurrency stress test (RELIABILITY.md §2.5, item 1): eight
//! appender threads append `(tid, seq)` records in random single and batch
//! sizes while eight live subscribers follow the log (five normal, two
//! slow ones whose small channels fill so they fall behind and catch up
//! from disk, and one consumer that drops its subscription and resubscribes
//! from its committed position every ~200 ms), with concurrent `sync`s and
//! consumer commits, and segments small enough to roll all the time.
//!
//! Checked afterwards:
//! - the log holds exactly the offsets `[0, N)`, `N = 8 × per-thread`, each
//!   record intact, and each appender's records at the offsets it was given;
//! - per appender, `seq` increases with the offset;
//! - every subscriber received exactly the log's sequence from its start:
//!   contiguous offsets, equal content, no loss, no duplicate;
//! - the resubscribing consumer handled every offset at least once, and
//!   each resubscription resumed exactly at its committed position;
//! - real-time order: no append that returned before another started got
//!   the larger offset (tickets from one shared counter before and after
//!   each call);
//! - `sync` made everything that had returned before it durable.
//!
//! `BACKBONE_STRESS_PER_THREAD` scales the run (records per appender in the
//! `Buffered` run; the `EveryAppend` run takes a tenth of it). Nothing
//! is asserted on timing: a subscriber that sees nothing new for a minute
//! stops and its missing records are reported as lost.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use backbone::{
    ConsumerSubscription, Durability, EventLog, Options, Raw, Start, SubscribeOptions, Subscription,
};
use common::Rng;

type Log = EventLog<Vec<u8>, Raw>;

const APPENDERS: usize = 8;
const NORMAL: usize = 5;
const SLOW: usize = 2;
const SUBSCRIBERS: usize = NORMAL + SLOW + 1;
/// Records per appender in the `Buffered` run, unless the environment says.
const DEFAULT_PER_THREAD: u64 = 25_000;
/// A subscriber that receives nothing for this long gives up (a hang).
const STALL: Duration = Duration::from_secs(60);
/// How long the resubscribing consumer keeps one subscription.
const RESUBSCRIBE_EVERY: Duration = Duration::from_millis(200);

/// The payload of record `seq` of appender `tid`: `tid` and `seq` in
/// little-endian, then 0 to 24 bytes derived from both, so that records
/// vary in size and a damaged or misplaced payload is recognised.
fn event(tid: u32, seq: u64) -> Vec<u8> {
    let mut x = common::mix64(key(tid, seq)) | 1;
    let extra = x % 25;
    let mut out = Vec::with_capacity(12 + extra as usize);
    out.extend_from_slice(&tid.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    for _ in 0..extra {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out
}

/// `(tid, seq)` packed into one number.
fn key(tid: u32, seq: u64) -> u64 {
    (u64::from(tid) << 48) | seq
}

/// The key of a payload if it is exactly what [`event`] makes, else `None`.
fn parse(payload: &[u8]) -> Option<u64> {
    let tid = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(payload.get(4..12)?.try_into().ok()?);
    (usize::try_from(tid).ok()? < APPENDERS && payload == event(tid, seq).as_slice())
        .then(|| key(tid, seq))
}

/// A payload that is not any appender's record.
const GARBAGE: u64 = u64::MAX;

fn per_thread() -> u64 {
    match std::env::var("BACKBONE_STRESS_PER_THREAD") {
        Ok(v) => v
            .parse()
            .expect("BACKBONE_STRESS_PER_THREAD: a number of records"),
        Err(_) => DEFAULT_PER_THREAD,
    }
}

/// One append call: its offsets, and the tickets taken just before it
/// started and just after it returned.
#[derive(Clone, Copy, Debug)]
struct Call {
    first: u64,
    end: u64,
    began: u64,
    returned: u64,
    tid: u32,
    seq: u64,
}

/// What a plain subscriber received, `(offset, key)` in arrival order.
struct Received {
    name: String,
    /// The offset it had to start at (for `Start::End`, the lowest
    /// acceptable: see `start_max`).
    start: u64,
    /// For `Start::End`, the highest offset the subscription may have
    /// started at; otherwise `start`.
    start_max: u64,
    records: Vec<(u64, u64)>,
    /// The largest lag seen (sampled every 100 records).
    max_lag: u64,
    error: Option<String>,
}

/// What the resubscribing consumer saw.
struct Resubscriber {
    /// Per offset, how many times it was handled.
    handled: Vec<u32>,
    sessions: u64,
    commits: u64,
    /// Resumed elsewhere than the committed position, or a gap or step
    /// back within one subscription.
    order_violations: u64,
    mismatches: u64,
    /// Commits of a position just past a record it had received that the
    /// log refused.
    refused_commits: u64,
    error: Option<String>,
}

/// Counts over every check, for the dashboard.
#[derive(Default, Debug)]
struct Tally {
    ordering: u64,
    lost: u64,
    duplicates: u64,
    mismatches: u64,
    deliveries: u64,
}

#[derive(Clone, Copy)]
enum Kind {
    /// `Start::Beginning`, subscribed before the appends start.
    FromBeginning,
    /// `Start::Offset(k)` with `k` the log's end once a quarter is in.
    FromOffset,
    /// `Start::End` once half the records are in.
    FromEnd,
    /// From the beginning, with a channel of this capacity, and 1 ms of
    /// sleep every 100 records.
    Slow(usize),
}

fn stress(durability: Durability, per_thread: u64, segment_bytes: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let options = Options::new()
        .segment_bytes(segment_bytes)
        .max_record_bytes(1024)
        // Few open segments: a lagging subscriber makes them reopen.
        .max_open_segments(8)
        .durability(durability);
    let log: Log = options.clone().open_with_codec(tmp.path(), Raw).unwrap();
    let total = APPENDERS as u64 * per_thread;
    let started = Instant::now();

    // Everyone waits here: appenders, the seven plain subscribers, the
    // resubscriber and the main thread.
    let barrier = Arc::new(Barrier::new(APPENDERS + SUBSCRIBERS + 1));
    let clock = Arc::new(AtomicU64::new(0));
    // The highest end of an append that has returned.
    let returned_end = Arc::new(AtomicU64::new(0));

    let appenders: Vec<JoinHandle<Vec<Call>>> = (0..APPENDERS)
        .map(|tid| {
            let (log, barrier) = (log.clone(), barrier.clone());
            let (clock, returned_end) = (clock.clone(), returned_end.clone());
            std::thread::spawn(move || {
                let tid = tid as u32;
                let mut rng = Rng::new(0x57E5 + u64::from(tid));
                let mut calls = Vec::new();
                barrier.wait();
                let mut seq = 0;
                let mut burst = 0;
                while seq < per_thread {
                    // Bursts at full speed, then a pause: subscribers fall
                    // behind in the bursts and catch up in the pauses.
                    if burst == 0 {
                        std::thread::sleep(Duration::from_millis(rng.range(10, 45)));
                        burst = rng.range(20, 200);
                    }
                    let n = if rng.one_in(3) {
                        rng.range(2, 17).min(per_thread - seq)
                    } else {
                        1
                    };
                    let batch: Vec<Vec<u8>> = (seq..seq + n).map(|s| event(tid, s)).collect();
                    let began = clock.fetch_add(1, Ordering::SeqCst);
                    let range = if n == 1 {
                        let at = log.append(&batch[0]).unwrap();
                        at..at + 1
                    } else {
                        log.append_batch(&batch).unwrap()
                    };
                    let returned = clock.fetch_add(1, Ordering::SeqCst);
                    returned_end.fetch_max(range.end, Ordering::SeqCst);
                    calls.push(Call {
                        first: range.start,
                        end: range.end,
                        began,
                        returned,
                        tid,
                        seq,
                    });
                    seq += n;
                    burst = burst.saturating_sub(n);
                }
                calls
            })
        })
        .collect();

    let kinds = [
        Kind::FromBeginning,
        Kind::FromBeginning,
        Kind::FromBeginning,
        Kind::FromOffset,
        Kind::FromEnd,
        Kind::Slow(16),
        Kind::Slow(128),
    ];
    let subscribers: Vec<JoinHandle<Received>> = kinds
        .iter()
        .enumerate()
        .map(|(i, &kind)| {
            let (log, barrier, returned_end) = (log.clone(), barrier.clone(), returned_end.clone());
            std::thread::spawn(move || subscriber(i, kind, &log, &barrier, &returned_end, total))
        })
        .collect();
    let resubscriber = {
        let (log, barrier) = (log.clone(), barrier.clone());
        std::thread::spawn(move || resubscribe(&log, &barrier, total))
    };

    // Meanwhile: syncs, and commits of other consumers.
    let done = Arc::new(AtomicBool::new(false));
    let syncer = {
        let (log, done, returned_end) = (log.clone(), done.clone(), returned_end.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !done.load(Ordering::Acquire) {
                let before = returned_end.load(Ordering::SeqCst);
                log.sync().unwrap();
                let durable = log.durable_offset();
                assert!(
                    durable >= before,
                    "sync returned with durable offset {durable}, below {before} already returned"
                );
                rounds += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            rounds
        })
    };
    let committer = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = Rng::new(0xC0);
            let consumers: Vec<_> = (0..4)
                .map(|i| log.consumer(&format!("audit-{i}")).unwrap())
                .collect();
            let mut commits = 0u64;
            while !done.load(Ordering::Acquire) {
                let consumer = &consumers[rng.range(0, 4) as usize];
                let next = log.next_offset();
                // Mostly forward to the end, sometimes back (a replay).
                if rng.one_in(4) {
                    let to = rng.range(0, next + 1);
                    consumer.seek(to).unwrap();
                    assert_eq!(consumer.position(), to, "{}", consumer.name());
                }
                let to = next.max(consumer.position());
                consumer.commit(to).unwrap();
                assert_eq!(consumer.position(), to, "{}", consumer.name());
                assert!(
                    log.durable_offset() >= to,
                    "commit({to}) left records unsynced"
                );
                commits += 1;
                std::thread::sleep(Duration::from_millis(3));
            }
            // Reopened from their files, they hold what was last committed.
            let last: Vec<u64> = consumers.iter().map(|c| c.position()).collect();
            drop(consumers);
            for (i, &position) in last.iter().enumerate() {
                let consumer = log.consumer(&format!("audit-{i}")).unwrap();
                assert_eq!(consumer.position(), position, "audit-{i} reopened");
            }
            commits
        })
    };

    barrier.wait();
    let mut calls: Vec<Call> = appenders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let appended = started.elapsed();
    let received: Vec<Received> = subscribers.into_iter().map(|h| h.join().unwrap()).collect();
    let resubscribed = resubscriber.join().unwrap();
    done.store(true, Ordering::Release);
    let sync_rounds = syncer.join().unwrap();
    let commits = committer.join().unwrap();
    let elapsed = started.elapsed();

    let mut tally = Tally::default();

    // The log: exactly [0, N), every record intact, each appender's in the
    // order it appended them.
    assert_eq!(
        (log.first_offset(), log.next_offset()),
        (0, total),
        "{durability:?}"
    );
    let mut at_offset: Vec<u64> = Vec::with_capacity(total as usize);
    let mut next_seq = [0u64; APPENDERS];
    for (i, rec) in log.read(Start::Beginning).enumerate() {
        let rec = rec.unwrap();
        assert_eq!(rec.offset, i as u64, "the log's offsets are not contiguous");
        let k = parse(&rec.value).unwrap_or(GARBAGE);
        if k == GARBAGE {
            tally.mismatches += 1;
            eprintln!("{durability:?}: the record at {i} is no appender's");
        } else {
            let (tid, seq) = ((k >> 48) as usize, k & ((1 << 48) - 1));
            if seq != next_seq[tid] {
                tally.ordering += 1;
                eprintln!(
                    "{durability:?}: at offset {i}, appender {tid}'s record {seq}, expected {}",
                    next_seq[tid]
                );
            }
            next_seq[tid] = seq + 1;
        }
        at_offset.push(k);
    }
    assert_eq!(at_offset.len() as u64, total, "the log reads short");
    assert!(
        next_seq.iter().all(|&n| n == per_thread),
        "{durability:?}: {next_seq:?}"
    );

    // Each call's offsets hold its records; the calls tile the log.
    calls.sort_unstable_by_key(|c| c.first);
    let mut expected = 0;
    for c in &calls {
        assert_eq!(
            c.first, expected,
            "{durability:?}: ranges overlap or leave a gap"
        );
        for (i, offset) in (c.first..c.end).enumerate() {
            if at_offset[offset as usize] != key(c.tid, c.seq + i as u64) {
                tally.mismatches += 1;
                eprintln!(
                    "{durability:?}: offset {offset} was returned to appender {} for its \
                     record {} but holds another",
                    c.tid,
                    c.seq + i as u64
                );
            }
        }
        expected = c.end;
    }
    assert_eq!(expected, total);

    // Real-time order: walking down from the highest offset, remember the
    // earliest return among the calls above; a call that started after it
    // and got a lower offset is an inversion.
    let mut earliest_return_above = u64::MAX;
    for c in calls.iter().rev() {
        if earliest_return_above < c.began {
            tally.ordering += 1;
            eprintln!(
                "{durability:?}: the call at offset {} started at ticket {}, after a call \
                 with a higher offset returned at ticket {earliest_return_above}",
                c.first, c.began
            );
        }
        earliest_return_above = earliest_return_above.min(c.returned);
    }

    // Every subscriber: exactly the log's sequence from its start.
    for r in &received {
        check_subscriber(r, &at_offset, &mut tally);
    }

    // The resubscriber: every offset at least once, never backwards.
    let r = &resubscribed;
    if let Some(e) = &r.error {
        eprintln!("resubscriber: ended by {e}");
        tally.lost += 1;
    }
    let missed = r.handled.iter().filter(|&&n| n == 0).count() as u64;
    if missed > 0 {
        let first = r.handled.iter().position(|&n| n == 0).unwrap_or(0);
        eprintln!("resubscriber: {missed} offsets never handled, the first {first}");
    }
    tally.lost += missed;
    tally.ordering += r.order_violations;
    tally.mismatches += r.mismatches;
    let handled: u64 = r.handled.iter().map(|&n| u64::from(n)).sum();
    tally.deliveries += handled;
    let redelivered = handled - (total - missed);

    let segments = log.stats().segments;
    let lags: Vec<String> = received
        .iter()
        .map(|r| format!("{} {}", r.name, r.max_lag))
        .collect();
    println!(
        "stress {durability:?}: max lag per subscriber (records): {}",
        lags.join(", ")
    );
    println!(
        "stress {durability:?}: {APPENDERS} appenders x {SUBSCRIBERS} subscribers \
         ({NORMAL} normal, {SLOW} slow, 1 resubscribing: {} subscriptions, {} commits, \
         {redelivered} redelivered, {} commits refused) · events: {total} · deliveries: {} · segments: {segments} \
         · syncs: {sync_rounds} · other commits: {commits} · ordering violations: {} · \
         lost: {} · duplicates: {} · content mismatches: {} · appends {:.1?}, all {:.1?}",
        r.sessions,
        r.commits,
        r.refused_commits,
        tally.deliveries,
        tally.ordering,
        tally.lost,
        tally.duplicates,
        tally.mismatches,
        appended,
        elapsed,
    );
    assert_eq!(
        (
            tally.ordering,
            tally.lost,
            tally.duplicates,
            tally.mismatches
        ),
        (0, 0, 0, 0),
        "{durability:?}: (ordering violations, lost, duplicates, content mismatches)"
    );
    assert_eq!(
        r.refused_commits, 0,
        "{durability:?}: the log refused commits just past records it had delivered"
    );
    assert!(r.sessions > 1, "the consumer never resubscribed");
    assert!(sync_rounds > 0 && commits > 0);
    assert!(
        segments > 10,
        "only {segments} segments: no rolls under load"
    );

    // And it all survives a clean close and reopen.
    assert_eq!(log.verify().unwrap(), total);
    log.close().unwrap();
    let log: Log = options.open_with_codec(tmp.path(), Raw).unwrap();
    assert!(
        log.recovery_report().is_clean(),
        "{:?}",
        log.recovery_report()
    );
    assert_eq!((log.first_offset(), log.next_offset()), (0, total));
    assert_eq!(log.consumer("resub").unwrap().position(), total);
    let reread = log
        .read(Start::Beginning)
        .map(|rec| parse(&rec.unwrap().value).unwrap_or(GARBAGE));
    assert!(
        reread.eq(at_offset.iter().copied()),
        "the reopened log differs"
    );
}

/// A plain subscriber: subscribes as its kind says and receives until the
/// last offset arrives (or nothing has come for [`STALL`]).
fn subscriber(
    i: usize,
    kind: Kind,
    log: &Log,
    barrier: &Barrier,
    returned_end: &AtomicU64,
    total: u64,
) -> Received {
    let wait_for = |records: u64| {
        while returned_end.load(Ordering::SeqCst) < records {
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let (name, sub, start, start_max) = match kind {
        Kind::FromBeginning => {
            let sub = log.subscribe(Start::Beginning).unwrap();
            barrier.wait();
            (format!("normal-{i}"), sub, 0, 0)
        }
        Kind::Slow(capacity) => {
            let sub = log
                .subscribe_with(SubscribeOptions::new(Start::Beginning).capacity(capacity))
                .unwrap();
            barrier.wait();
            (format!("slow-{i}"), sub, 0, 0)
        }
        Kind::FromOffset => {
            barrier.wait();
            wait_for(total / 4);
            let at = log.next_offset();
            let sub = log.subscribe(Start::Offset(at)).unwrap();
            (format!("from-offset-{at}"), sub, at, at)
        }
        Kind::FromEnd => {
            barrier.wait();
            wait_for(total / 2);
            // Everything that had returned is before the end it starts at;
            // nothing appended after the call is.
            let low = returned_end.load(Ordering::SeqCst);
            let sub = log.subscribe(Start::End).unwrap();
            let high = log.next_offset();
            ("from-end".to_owned(), sub, low, high)
        }
    };
    let slow = matches!(kind, Kind::Slow(_));
    let mut out = Received {
        name,
        start,
        start_max,
        records: Vec::with_capacity((total - start) as usize),
        max_lag: 0,
        error: None,
    };
    out.error = receive(&sub, total, slow, &mut out);
    out
}

/// Receives into `out` until the offset `total - 1` arrives; returns what
/// ended it early.
fn receive(
    sub: &Subscription<Vec<u8>, Raw>,
    total: u64,
    slow: bool,
    out: &mut Received,
) -> Option<String> {
    let records = &mut out.records;
    if out.start_max >= total {
        // Subscribed at the very end: there is nothing to wait for, but
        // nothing may arrive either.
        return match sub.recv_timeout(Duration::from_millis(50)) {
            Ok(None) => None,
            Ok(Some(rec)) => {
                records.push((rec.offset, parse(&rec.value).unwrap_or(GARBAGE)));
                None
            }
            Err(e) => Some(e.to_string()),
        };
    }
    let mut progress = Instant::now();
    loop {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(rec)) => {
                progress = Instant::now();
                records.push((rec.offset, parse(&rec.value).unwrap_or(GARBAGE)));
                if records.len().is_multiple_of(100) {
                    out.max_lag = out.max_lag.max(sub.lag());
                    if slow {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                if rec.offset + 1 >= total {
                    return None;
                }
            }
            Ok(None) if progress.elapsed() > STALL => {
                return Some(format!(
                    "stalled: nothing for {STALL:?} after {} records",
                    records.len()
                ))
            }
            Ok(None) => {}
            Err(e) => return Some(e.to_string()),
        }
    }
}

/// Compares what a subscriber received with the log from its start.
fn check_subscriber(r: &Received, log: &[u64], tally: &mut Tally) {
    let total = log.len() as u64;
    tally.deliveries += r.records.len() as u64;
    if let Some(e) = &r.error {
        eprintln!("{}: ended by {e}", r.name);
    }
    // Where it started: known, or (from the end) its first record's offset,
    // which must lie in the window the subscribe call allows.
    let start = match r.records.first() {
        Some(&(first, _)) if r.start < r.start_max => {
            if !(r.start..=r.start_max).contains(&first) {
                tally.ordering += 1;
                eprintln!(
                    "{}: started at {first}, outside {}..={}",
                    r.name, r.start, r.start_max
                );
            }
            first.clamp(r.start, r.start_max)
        }
        Some(_) => r.start,
        // Nothing arrived: only right if it started at the very end.
        None => r.start_max,
    };
    let mut seen = vec![false; (total - start.min(total)) as usize];
    let mut expected = start;
    let mut reported = 0;
    for &(offset, k) in &r.records {
        let mut complain = |what: String| {
            if reported < 5 {
                eprintln!("{}: {what}", r.name);
            }
            reported += 1;
        };
        if offset != expected {
            tally.ordering += 1;
            complain(format!("offset {offset} where {expected} was due"));
        }
        expected = offset + 1;
        if offset < start || offset >= total {
            tally.ordering += 1;
            complain(format!("offset {offset} outside {start}..{total}"));
            continue;
        }
        let slot = &mut seen[(offset - start) as usize];
        if *slot {
            tally.duplicates += 1;
            complain(format!("offset {offset} again"));
        }
        *slot = true;
        if k != log[offset as usize] {
            tally.mismatches += 1;
            complain(format!("offset {offset} differs from the log"));
        }
    }
    let lost = seen.iter().filter(|&&s| !s).count() as u64;
    if lost > 0 {
        let first = seen.iter().position(|&s| !s).unwrap_or(0) as u64 + start;
        eprintln!(
            "{}: {lost} records from {start} never arrived, the first {first}",
            r.name
        );
    }
    tally.lost += lost;
}

/// The consumer that keeps leaving: subscribes from its committed
/// position, handles records for ~200 ms (or a random number of them),
/// committing now and then, drops the subscription (and with it every
/// handle of the consumer, so the next one reads its position from its
/// file) and starts again, until it has handled the last record.
fn resubscribe(log: &Log, barrier: &Barrier, total: u64) -> Resubscriber {
    let mut rng = Rng::new(0x2E5);
    let mut out = Resubscriber {
        handled: vec![0; total as usize],
        sessions: 0,
        commits: 0,
        order_violations: 0,
        mismatches: 0,
        refused_commits: 0,
        error: None,
    };
    let mut committed = 0u64;
    let mut first_session = Some(log.consumer("resub").unwrap().subscribe().unwrap());
    barrier.wait();
    let mut progress = Instant::now();
    'sessions: loop {
        let sub = match first_session.take() {
            Some(sub) => sub,
            None => log.consumer("resub").unwrap().subscribe().unwrap(),
        };
        out.sessions += 1;
        let position = sub.position();
        if position != committed {
            out.order_violations += 1;
            eprintln!("resubscriber: resumed at {position}, committed {committed}");
        }
        let mut next = position;
        if next >= total {
            break;
        }
        let session = Instant::now();
        let budget = rng.range(total / 64 + 1, total / 8 + 2);
        let mut in_session = 0;
        loop {
            match sub.recv_timeout(Duration::from_millis(20)) {
                Ok(Some(rec)) => {
                    progress = Instant::now();
                    if rec.offset != next {
                        out.order_violations += 1;
                        eprintln!("resubscriber: offset {} where {next} was due", rec.offset);
                    }
                    next = rec.offset + 1;
                    match out.handled.get_mut(rec.offset as usize) {
                        Some(n) => *n += 1,
                        None => out.order_violations += 1,
                    }
                    if parse(&rec.value).is_none() {
                        out.mismatches += 1;
                    }
                    in_session += 1;
                    if next >= total || rng.one_in(256) {
                        commit(&sub, next, &mut committed, &mut out);
                    }
                    if next >= total {
                        break 'sessions;
                    }
                }
                Ok(None) if progress.elapsed() > STALL => {
                    out.error = Some(format!("stalled at {next}"));
                    break 'sessions;
                }
                Ok(None) => {}
                Err(e) => {
                    out.error = Some(e.to_string());
                    break 'sessions;
                }
            }
            if session.elapsed() >= RESUBSCRIBE_EVERY || in_session >= budget {
                // Half the time it leaves with records handled but not
                // committed: they come again.
                if rng.one_in(2) {
                    commit(&sub, next, &mut committed, &mut out);
                }
                break;
            }
        }
    }
    out
}

/// Commits `position`, just past a record the consumer received: the log
/// holds that record, so the commit must be accepted.
fn commit(
    sub: &ConsumerSubscription<Vec<u8>, Raw>,
    position: u64,
    committed: &mut u64,
    out: &mut Resubscriber,
) {
    match sub.commit(position) {
        Ok(()) => {
            *committed = position;
            out.commits += 1;
        }
        Err(e) => {
            out.refused_commits += 1;
            if out.refused_commits <= 5 {
                eprintln!(
                    "resubscriber: commit({position}) after receiving record {} refused: {e:?}",
                    position - 1
                );
            }
        }
    }
}

/// Most of the run: buffered appends, which are fast, so the subscribers
/// and the rolls see the most traffic.
#[test]
fn stress_buffered() {
    stress(Durability::Buffered, per_thread(), 64 << 10);
}

/// Group commit: every append synced, concurrent appenders sharing syncs.
#[test]
fn stress_every_append() {
    stress(
        Durability::EveryAppend,
        (per_thread() / 10).max(1),
        16 << 10,
    );
}
