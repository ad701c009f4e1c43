//! Live subscriptions across processes.
//!
//! - A durable consumer's process is SIGKILLed at random moments and
//!   restarted, again and again: every life resumes exactly at the last
//!   position a commit acknowledged, never handles a committed record
//!   again, and across all lives every record is handled, in order within
//!   a life, with no gap.
//! - A read-only handle in one process subscribes to a log a writer in
//!   another process appends to, and receives every record, in order,
//!   across segment rolls, within milliseconds (measured, not asserted).
//!
//! The children are this test binary run again on one test
//! (`--exact child_...`) with an environment variable that tells that test
//! what to do; without it those tests return at once.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use backbone::{EventLog, Options, Start, Timestamp};
use common::{
    checkout, open_raw, percentile, say, seq_payload, Checkout, ChildOutput, ChildProcess, Rng,
};

/// How long a child may take to start and open its log; generous, since
/// nothing here is a speed test.
const STARTUP: Duration = Duration::from_secs(30);

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---- a durable consumer, killed and restarted ------------------------------

const CONSUMER_DIR_VAR: &str = "BACKBONE_SUBPROC_CONSUMER_DIR";
const CONSUMER_LIFE_VAR: &str = "BACKBONE_SUBPROC_CONSUMER_LIFE";
const CONSUMER_FINISH_VAR: &str = "BACKBONE_SUBPROC_CONSUMER_FINISH";
/// How many times the parent kills the consumer (override for longer runs).
const KILLS_VAR: &str = "BACKBONE_SUBPROC_KILLS";
const DEFAULT_KILLS: u64 = 50;
const PREFILL: u64 = 20_000;
const CONSUMER_SEGMENT_BYTES: u64 = 128 << 10;
/// Order ids of records a child appends: `life * CHILD_IDS + n`; the
/// prefilled record `o` has order id `o`.
const CHILD_IDS: u64 = 1_000_000;

fn open_consumer_log(dir: &Path) -> EventLog<Checkout> {
    Options::new()
        .segment_bytes(CONSUMER_SEGMENT_BYTES)
        .max_record_bytes(1024)
        .open(dir)
        .expect("open the consumer's log")
}

/// Child: opens the log (`EveryAppend`), subscribes as consumer
/// `shipping`, says `READY <position> <next_offset>`, and handles records:
/// `GOT <offset> <order_id>` for each, and every `k` records (`k` varying)
/// `COMMITTING <o+1>`, `commit(o+1)`, `COMMIT <o+1>`. Meanwhile another
/// thread appends small batches at random moments, saying
/// `APPENDED <offset> <order_id>` for each acknowledged record. With
/// `FINISH` set it does not append, and once caught up commits what it
/// handled and says `DONE <position> <next_offset>`. Every line ends in
/// ` .`, so that the parent can tell a line the kill cut short.
#[test]
fn child_consumer() {
    let Some(dir) = std::env::var_os(CONSUMER_DIR_VAR) else {
        return;
    };
    let life = env_u64(CONSUMER_LIFE_VAR, 1);
    let finish = std::env::var_os(CONSUMER_FINISH_VAR).is_some();
    let log = open_consumer_log(Path::new(&dir));
    let shipping = log.consumer("shipping").expect("child consumer");
    let sub = shipping.subscribe().expect("child subscribe");
    say(format_args!(
        "READY {} {} .",
        sub.position(),
        log.next_offset()
    ));
    if !finish {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(life ^ 0xA99E);
            let mut n = 0;
            loop {
                std::thread::sleep(Duration::from_micros(rng.range(0, 4000)));
                let values: Vec<Checkout> = (0..rng.range(1, 4))
                    .map(|i| checkout(life * CHILD_IDS + n + i))
                    .collect();
                let range = log.append_batch(&values).expect("child append");
                for (o, v) in range.zip(&values) {
                    say(format_args!("APPENDED {o} {} .", v.order_id));
                }
                n += values.len() as u64;
            }
        });
    }
    let mut rng = Rng::new(life ^ 0xC0DE);
    let mut every = rng.range(1, 65);
    let mut since = 0;
    let mut last = None;
    loop {
        let wait = if finish {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(60)
        };
        let rec = match sub.recv_timeout(wait).expect("child recv") {
            Some(rec) => rec,
            None if finish && sub.lag() == 0 => break,
            None => continue,
        };
        say(format_args!("GOT {} {} .", rec.offset, rec.value.order_id));
        last = Some(rec.offset);
        since += 1;
        if since >= every {
            let position = rec.offset + 1;
            say(format_args!("COMMITTING {position} ."));
            sub.commit(position).expect("child commit");
            say(format_args!("COMMIT {position} ."));
            since = 0;
            every = rng.range(1, 65);
        }
    }
    if let Some(o) = last {
        if sub.position() != o + 1 {
            say(format_args!("COMMITTING {} .", o + 1));
            sub.commit(o + 1).expect("child commit");
            say(format_args!("COMMIT {} .", o + 1));
        }
    }
    say(format_args!(
        "DONE {} {} .",
        sub.position(),
        log.next_offset()
    ));
    sleep_forever();
}

/// What the parent knows across the consumer's lives.
#[derive(Default)]
struct ConsumerBook {
    /// The position the last acknowledged commit stored.
    acked: u64,
    /// A commit that was started and not acknowledged when the child died.
    in_flight: Option<u64>,
    /// Offset -> order id, from every record handled or appended.
    ids: HashMap<u64, u64>,
    /// How many times each offset was handled, over all lives.
    handled: Vec<u32>,
    /// Offsets appended (and acknowledged) by the children.
    appended: Vec<u64>,
    lives: u64,
    kills_before_ready: u64,
    kills_in_history: u64,
    kills_in_live_tail: u64,
    resumed_at_in_flight: u64,
    commits: u64,
    gots: u64,
}

impl ConsumerBook {
    fn id(&mut self, offset: u64, id: u64, what: &str, life: u64) {
        if let Some(old) = self.ids.insert(offset, id) {
            assert_eq!(
                old, id,
                "life {life}: {what} offset {offset} with order id {id}, earlier {old}"
            );
        }
        if offset < PREFILL {
            assert_eq!(
                id, offset,
                "life {life}: prefilled record {offset} has id {id}"
            );
        }
    }

    /// Checks one life's output; returns the `DONE` line's numbers if any.
    fn life(&mut self, life: u64, out: &ChildOutput) -> Option<(u64, u64)> {
        self.lives += 1;
        let ctx = || format!("life {life}: {:?}\nstderr: {}", out.status, out.stderr);
        let mut next_got: Option<u64> = None;
        let mut done = None;
        let mut ready = false;
        let mut last_id = 0;
        for line in &out.lines {
            // A line cut short by the kill has no end mark: it did not
            // happen, as far as the parent knows.
            let Some(line) = line.strip_suffix(" .") else {
                continue;
            };
            let mut words = line.split_whitespace();
            let tag = words.next().unwrap_or("");
            let nums: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
            match tag {
                "READY" => {
                    let position = nums[0];
                    ready = true;
                    // Exactly the last acknowledged commit, unless a commit
                    // was in flight when the previous life died: then
                    // either one (the kill came before or after its sync).
                    if Some(position) == self.in_flight {
                        self.resumed_at_in_flight += 1;
                    } else {
                        assert_eq!(
                            position,
                            self.acked,
                            "resumed at {position}, but the last acknowledged \
                             commit was {} (in flight: {:?}); {}",
                            self.acked,
                            self.in_flight,
                            ctx()
                        );
                    }
                    self.acked = position;
                    self.in_flight = None;
                    next_got = Some(position);
                }
                "GOT" => {
                    let (offset, id) = (nums[0], nums[1]);
                    let want = next_got.expect("GOT before READY");
                    assert_eq!(
                        offset,
                        want,
                        "life {life}: handled {offset}, expected {want} (resumed \
                         exactly after the commit, in order, no gap); {}",
                        ctx()
                    );
                    assert!(
                        offset >= self.acked,
                        "life {life}: handled {offset} again after committing {}",
                        self.acked
                    );
                    self.id(offset, id, "handled", life);
                    if self.handled.len() <= offset as usize {
                        self.handled.resize(offset as usize + 1, 0);
                    }
                    self.handled[offset as usize] += 1;
                    self.gots += 1;
                    last_id = id;
                    next_got = Some(offset + 1);
                }
                "COMMITTING" => {
                    assert_eq!(Some(nums[0]), next_got, "{}", ctx());
                    self.in_flight = Some(nums[0]);
                }
                "COMMIT" => {
                    assert_eq!(Some(nums[0]), self.in_flight, "{}", ctx());
                    self.acked = nums[0];
                    self.in_flight = None;
                    self.commits += 1;
                }
                "APPENDED" => {
                    self.id(nums[0], nums[1], "appended", life);
                    self.appended.push(nums[0]);
                }
                "DONE" => done = Some((nums[0], nums[1])),
                _ => {}
            }
        }
        if !ready {
            self.kills_before_ready += 1;
        } else if last_id >= CHILD_IDS {
            self.kills_in_live_tail += 1;
        } else {
            self.kills_in_history += 1;
        }
        done
    }
}

#[test]
fn a_killed_consumer_resumes_after_its_last_commit() {
    let started = Instant::now();
    let kills = env_u64(KILLS_VAR, DEFAULT_KILLS);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    {
        let log = open_consumer_log(&dir);
        let all: Vec<Checkout> = (0..PREFILL).map(checkout).collect();
        for chunk in all.chunks(1000) {
            log.append_batch(chunk).unwrap();
        }
        log.close().unwrap();
    }
    let mut book = ConsumerBook::default();
    let mut rng = Rng::new(0x5111_9915);
    let spawn = |life: u64, finish: bool| {
        let mut env = vec![
            (CONSUMER_DIR_VAR, OsString::from(&dir)),
            (CONSUMER_LIFE_VAR, OsString::from(life.to_string())),
        ];
        if finish {
            env.push((CONSUMER_FINISH_VAR, OsString::from("1")));
        }
        ChildProcess::spawn("child_consumer", &env)
    };
    for life in 1..=kills {
        let mut child = spawn(life, false);
        if rng.one_in(8) {
            // Any moment, opening included.
            std::thread::sleep(Duration::from_millis(rng.range(0, 40)));
        } else {
            if child.wait_for_line("READY", STARTUP).is_none() {
                let out = child.kill();
                panic!("life {life}: the child never became ready: {out:?}");
            }
            // After a random number of handled records, or a random time
            // once it is caught up and following the live tail.
            let deadline = Instant::now() + Duration::from_millis(rng.range(5, 400));
            let records = rng.range(0, 1200);
            for _ in 0..records {
                let left = deadline.saturating_duration_since(Instant::now());
                if child.wait_for_line("GOT", left).is_none() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_micros(rng.range(0, 2000)));
        }
        let out = child.kill();
        assert!(out.was_killed(), "life {life} ended by itself: {out:?}");
        assert!(book.life(life, &out).is_none());
    }

    // A last life, left to finish: it handles the rest and commits.
    let mut child = spawn(kills + 1, true);
    let done = child.wait_for_line("DONE", Duration::from_secs(120));
    let out = child.kill();
    assert!(done.is_some(), "the last life did not finish: {out:?}");
    let (position, end) = book.life(kills + 1, &out).expect("DONE");
    assert_eq!(position, end, "the last life did not consume everything");
    assert_eq!(book.acked, end);

    // Every offset handled at least once, over all lives; every record a
    // child acknowledged is in the log and was handled.
    assert_eq!(
        book.handled.len() as u64,
        end,
        "handled offsets vs the log's end"
    );
    let missing: Vec<usize> = (0..book.handled.len())
        .filter(|&o| book.handled[o] == 0)
        .collect();
    assert!(missing.is_empty(), "never handled: {missing:?}");
    for &o in &book.appended {
        assert!(
            o < end,
            "acknowledged append {o} is not in the log (end {end})"
        );
    }

    // The log itself agrees, and every record is the one handled.
    let log = open_consumer_log(&dir);
    assert_eq!(log.next_offset(), end);
    assert_eq!(log.consumer("shipping").unwrap().position(), end);
    for rec in log.read(Start::Beginning) {
        let rec = rec.unwrap();
        assert_eq!(book.ids.get(&rec.offset), Some(&rec.value.order_id));
    }
    log.close().unwrap();

    let again = book.handled.iter().filter(|&&n| n > 1).count();
    let most = book.handled.iter().copied().max().unwrap_or(0);
    println!(
        "durable consumer: {} lives ({kills} SIGKILLs: {} before READY, {} while \
         catching up on history, {} in the live tail), {end} records ({PREFILL} \
         prefilled, {} appended by the children), {} handled in all, {} commits \
         acknowledged; {again} uncommitted records handled again (at most {most} \
         times); {} restarts resumed at a commit that was in flight when killed; {:?}",
        book.lives,
        book.kills_before_ready,
        book.kills_in_history,
        book.kills_in_live_tail,
        book.appended.len(),
        book.gots,
        book.commits,
        book.resumed_at_in_flight,
        started.elapsed()
    );
}

// ---- a read-only subscriber of another process's writer ----------------------

const FOLLOW_DIR_VAR: &str = "BACKBONE_SUBPROC_FOLLOW_DIR";
const FOLLOW_COUNT_VAR: &str = "BACKBONE_SUBPROC_FOLLOW_COUNT";
/// Tiny segments: a roll every twenty records or so.
const FOLLOW_SEGMENT_BYTES: u64 = 4096;
const FOLLOW_MAX_EXTRA: u64 = 300;
const FOLLOW_RECORDS: u64 = 3000;

fn follow_options() -> Options {
    Options::new()
        .segment_bytes(FOLLOW_SEGMENT_BYTES)
        .max_record_bytes(1024)
}

/// Child: opens the log, says `READY`, appends `FOLLOW_COUNT` records
/// (record `i` is `seq_payload(i)`) in single appends and small batches,
/// with short and occasional longer pauses, saying `ACK <offset> <micros>`
/// for each acknowledged record (the wall clock once `append` returned);
/// then `DONE <next_offset>`, and idles until killed.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(FOLLOW_DIR_VAR) else {
        return;
    };
    let count = env_u64(FOLLOW_COUNT_VAR, FOLLOW_RECORDS);
    let log = open_raw(Path::new(&dir), follow_options()).expect("child open");
    say(format_args!("READY"));
    let mut rng = Rng::new(11);
    let mut seq = 0;
    while seq < count {
        let n = if rng.one_in(4) {
            rng.range(2, 9).min(count - seq)
        } else {
            1
        };
        let values: Vec<Vec<u8>> = (seq..seq + n)
            .map(|s| seq_payload(s, FOLLOW_MAX_EXTRA))
            .collect();
        let range = log.append_batch(&values).expect("child append");
        let acked = Timestamp::now().as_micros();
        assert_eq!(range, seq..seq + n);
        for o in range {
            say(format_args!("ACK {o} {acked}"));
        }
        seq += n;
        if rng.one_in(50) {
            // Long enough for the subscriber to catch up and go idle.
            std::thread::sleep(Duration::from_millis(rng.range(2, 20)));
        } else if rng.one_in(8) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    say(format_args!("DONE {}", log.next_offset()));
    sleep_forever();
}

/// Signed microseconds as p50/p99/max, for printing.
fn spread(mut v: Vec<i64>) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.sort_unstable();
    format!(
        "p50 {} us, p99 {} us, max {} us (n = {})",
        percentile(&v, 50),
        percentile(&v, 99),
        v[v.len() - 1],
        v.len()
    )
}

#[test]
fn a_read_only_subscriber_follows_a_writer_in_another_process() {
    let count = env_u64(FOLLOW_COUNT_VAR, FOLLOW_RECORDS);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut child = ChildProcess::spawn(
        "child_writer",
        &[
            (FOLLOW_DIR_VAR, OsString::from(&dir)),
            (FOLLOW_COUNT_VAR, OsString::from(count.to_string())),
        ],
    );
    if child.wait_for_line("READY", STARTUP).is_none() {
        let out = child.kill();
        panic!("the writer never became ready: {out:?}");
    }
    let log = open_raw(&dir, follow_options().read_only()).expect("read-only open");
    let sub = log
        .subscribe(Start::Beginning)
        .expect("read-only subscribe");

    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    // (offset, append timestamp, receive time), in microseconds.
    let mut got: Vec<(u64, u64, u64)> = Vec::with_capacity(count as usize);
    while (got.len() as u64) < count {
        assert!(
            Instant::now() < deadline,
            "after 30 s the subscriber has {} of {count} records (log next_offset {})",
            got.len(),
            log.next_offset()
        );
        let Some(rec) = sub
            .recv_timeout(Duration::from_millis(100))
            .unwrap_or_else(|e| panic!("subscription error after {} records: {e}", got.len()))
        else {
            if !child.is_running() {
                let out = child.kill();
                panic!("the writer died: {out:?}");
            }
            continue;
        };
        let now = Timestamp::now().as_micros();
        let want = got.len() as u64;
        assert_eq!(rec.offset, want, "skipped or repeated a record");
        assert!(
            rec.value == seq_payload(want, FOLLOW_MAX_EXTRA),
            "record {want} differs from what was appended"
        );
        got.push((rec.offset, rec.timestamp.as_micros(), now));
    }
    let took = started.elapsed();
    // Nothing more than was written.
    assert!(
        sub.recv_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none(),
        "received a record past the last one written"
    );
    let segments = log.stats().segments;

    if child
        .wait_for_line("DONE", Duration::from_secs(30))
        .is_none()
    {
        let out = child.kill();
        panic!("the writer did not finish: {out:?}");
    }
    let out = child.kill();
    assert!(out.was_killed(), "the writer ended by itself: {out:?}");
    let acks: HashMap<u64, u64> = out
        .lines
        .iter()
        .filter_map(|l| {
            let mut w = l.strip_prefix("ACK ")?.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
        })
        .collect();
    assert_eq!(acks.len() as u64, count, "acknowledged offsets");
    assert!(
        out.lines.iter().any(|l| l == &format!("DONE {count}")),
        "{out:?}"
    );

    // Delays: from the record's own timestamp (taken when its append
    // began) and from the writer's acknowledgement, to receipt here. The
    // second may be negative: a follower sees a record once it is written,
    // possibly before its fdatasync returns. "After a pause" are records
    // appended after the writer slept 2 ms or more, when the subscriber
    // was caught up and idle.
    let mut from_timestamp = Vec::new();
    let mut from_ack = Vec::new();
    let mut after_pause = Vec::new();
    let mut previous_ts = None;
    for &(offset, ts, received) in &got {
        let delay = received as i64 - ts as i64;
        from_timestamp.push(delay);
        from_ack.push(received as i64 - acks[&offset] as i64);
        if previous_ts.is_some_and(|p: u64| ts >= p + 2000) {
            after_pause.push(delay);
        }
        previous_ts = Some(ts);
    }
    println!(
        "read-only subscriber: {count} records across {segments} segments in {took:?}, \
         in order, each once\n  delay from append timestamp: {}\n  delay from \
         writer's ack: {}\n  delay after a pause (idle subscriber): {}",
        spread(from_timestamp),
        spread(from_ack),
        spread(after_pause)
    );
}
