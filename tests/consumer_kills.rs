//! Consumers with automatic commit policies under SIGKILL at random
//! moments. A child process takes a durable consumer of a real log,
//! subscribes with `CommitPolicy::Every(7)` or `CommitPolicy::Interval(5ms)`
//! and handles records until the parent kills it; the parent then reads
//! the stored position and checks it against what the child said it had
//! handled, and starts the next life from there. State accumulates across
//! kills: every child continues the same consumer on the same log.
//!
//! The rule under test (see `CommitPolicy`): an automatic commit covers
//! only records the caller is done with, and a record counts as handled
//! once the caller asks for the one after it. So after a kill:
//!
//! - the stored position never leads what the child reported handled;
//! - with `Every(n)` the replay is bounded, exactly as derived at
//!   [`check_every`];
//! - each life starts at the stored position and receives the records in
//!   order from there, and over all lives every record below the final
//!   position was handled at least once.
//!
//! `BACKBONE_CONSUMER_KILLS` sets the number of kills per policy (default
//! 300 each; the two campaigns run side by side, in about 30 seconds).
//!
//! The child (`child_consumer_kill`) is this test binary run again with
//! `--exact child_consumer_kill` and `BACKBONE_CONSUMER_DIR` set. It prints
//! `START <position> .` once it holds the consumer, and `HANDLED <offset>
//! <value> .` after handling each record (handling is a short busy wait,
//! then the print itself), before it asks for the next one. The trailing
//! `.` tells a whole line from one a kill cut short.
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use backbone::{CommitPolicy, Durability, EventLog, Options};
use common::{retry_locked, say, ChildProcess, Rng};

const CHILD: &str = "child_consumer_kill";
const DIR_VAR: &str = "BACKBONE_CONSUMER_DIR";
const POLICY_VAR: &str = "BACKBONE_CONSUMER_POLICY";
const KILLS_VAR: &str = "BACKBONE_CONSUMER_KILLS";
const DEFAULT_KILLS: usize = 300;
const CONSUMER: &str = "killed";

/// The `n` of the `Every` campaign.
const EVERY: u64 = 7;
/// The period of the `Interval` campaign.
const INTERVAL: Duration = Duration::from_millis(5);

/// How long the child "handles" a record: a busy wait, so that a life of
/// at most 80 ms handles at most a few thousand records and never comes
/// near the end of the log (see [`MIN_AHEAD`]).
const HANDLE_SPIN: Duration = Duration::from_micros(20);
/// Records in the log at the start of a campaign (values = offsets).
const INITIAL_RECORDS: u64 = 20_000;
/// Before each life, the parent makes sure at least this many records lie
/// past the stored position, appending [`APPEND_MORE`] when fewer do.
const MIN_AHEAD: u64 = 20_000;
const APPEND_MORE: u64 = 20_000;
/// How long a child may take to start and take its consumer; generous,
/// since nothing here is a speed test.
const STARTUP: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Every,
    Interval,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Policy::Every => "every",
            Policy::Interval => "interval",
        }
    }

    fn parse(name: &str) -> Policy {
        match name {
            "every" => Policy::Every,
            "interval" => Policy::Interval,
            other => panic!("unknown policy {other:?}"),
        }
    }

    fn commit_policy(self) -> CommitPolicy {
        match self {
            Policy::Every => CommitPolicy::Every(EVERY),
            Policy::Interval => CommitPolicy::Interval(INTERVAL),
        }
    }
}

/// Opens the campaign's log (the two campaigns run side by side in one
/// parent: see `retry_locked`).
fn open_log(dir: &Path) -> backbone::Result<EventLog<u64>> {
    retry_locked(|| {
        Options::new()
            .durability(Durability::Buffered)
            .open::<u64>(dir)
    })
}

// ---- the child --------------------------------------------------------------

/// The consumer: runs only as a child of the campaigns below (it returns
/// at once in a normal test run) and handles records until it is killed.
#[test]
fn child_consumer_kill() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let policy = Policy::parse(&std::env::var(POLICY_VAR).expect("policy"));
    let log = open_log(Path::new(&dir)).expect("child open");
    let consumer = log.consumer(CONSUMER).expect("child consumer");
    say(format_args!("START {} .", consumer.position()));
    let sub = consumer
        .subscribe_with(policy.commit_policy())
        .expect("child subscribe");
    loop {
        // Asking for the next record hands the previous one back as
        // handled: only now may an automatic commit cover it.
        let record = sub.recv().expect("child recv");
        let t = Instant::now();
        while t.elapsed() < HANDLE_SPIN {
            std::hint::spin_loop();
        }
        say(format_args!("HANDLED {} {} .", record.offset, record.value));
    }
}

// ---- the parent -------------------------------------------------------------

/// What a child said.
enum Said {
    Start(u64),
    Handled { offset: u64, value: u64 },
}

/// A whole `START`/`HANDLED` line, or `None`.
fn parse(line: &str) -> Option<Said> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["START", position, "."] => Some(Said::Start(position.parse().ok()?)),
        ["HANDLED", offset, value, "."] => Some(Said::Handled {
            offset: offset.parse().ok()?,
            value: value.parse().ok()?,
        }),
        _ => None,
    }
}

/// Whether `line` is (the beginning of) a child's line, rather than the
/// test harness's own output ("running 1 test", blank lines).
fn looks_like_ours(line: &str) -> bool {
    let Some(first) = line.split_whitespace().next() else {
        return false;
    };
    "START".starts_with(first)
        || "HANDLED".starts_with(first)
        || first == "START"
        || first == "HANDLED"
}

/// What the parent knows after every life so far.
#[derive(Default)]
struct Campaign {
    kills: usize,
    /// How many times each offset was reported handled, over every life.
    handled: Vec<u32>,
    /// Records reported handled, over every life (replays included).
    handled_records: u64,
    /// Records reported handled again after a restart.
    replayed: u64,
    /// The largest replay of one life.
    max_replay: u64,
    /// Lives that handled at least one record.
    handling_lives: usize,
    /// Lives killed before they said `START`.
    killed_in_startup: usize,
    /// Lives whose last line a kill cut short.
    torn_lines: usize,
    /// Lives after which the position moved forward.
    advancing_lives: usize,
    /// `Every`: kills after which the position was the one the receive in
    /// progress at the kill commits (and not the one before it).
    commit_in_flight: usize,
    /// Lives that handled the whole log (they then wait in `recv`).
    caught_up: usize,
    appended: u64,
}

/// What one life reported, checked against what it was given.
struct Life {
    /// The stored position before the life.
    start: u64,
    /// Records it reported handled: `start..start + count`, in order.
    count: u64,
}

fn kills_from_env() -> usize {
    match std::env::var(KILLS_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .expect("BACKBONE_CONSUMER_KILLS must be a number"),
        Err(_) => DEFAULT_KILLS,
    }
}

/// Appends `count` records whose values are their offsets.
fn append_records(log: &EventLog<u64>, count: u64) {
    let from = log.next_offset();
    let values: Vec<u64> = (from..from + count).collect();
    for chunk in values.chunks(1000) {
        let range = log.append_batch(chunk).expect("append");
        assert_eq!(range.start, chunk[0], "values must equal offsets");
    }
}

/// The consumer's stored position, read without taking the consumer (0
/// before a child first took it).
fn stored_position(log: &EventLog<u64>) -> u64 {
    let consumers = log.consumers().expect("list the consumers");
    match consumers.iter().find(|c| c.name == CONSUMER) {
        Some(status) => {
            assert!(!status.held, "the parent holds the consumer: {status:?}");
            status.position
        }
        None => 0,
    }
}

fn campaign(policy: Policy, kills: usize, seed: u64) -> Campaign {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut rng = Rng::new(seed);
    let mut c = Campaign::default();

    let log = open_log(&dir).expect("create the log");
    append_records(&log, INITIAL_RECORDS);
    c.appended = INITIAL_RECORDS;
    log.close().expect("close");
    let mut position = 0;
    let mut end = INITIAL_RECORDS;

    for kill in 0..kills {
        let mut child = ChildProcess::spawn(
            CHILD,
            &[
                (DIR_VAR, OsString::from(&dir)),
                (POLICY_VAR, OsString::from(policy.name())),
            ],
        );
        // Mostly a moment 5 to 80 ms into handling records; one kill in
        // five comes 0 to 20 ms after the spawn instead, and may land
        // while the child starts, opens the log, takes the consumer or
        // subscribes.
        let delay = if rng.one_in(5) {
            rng.range(0, 20)
        } else {
            let _ = child.wait_for_line("START", STARTUP);
            rng.range(5, 80)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let out = child.kill();
        let tail = out.lines[out.lines.len().saturating_sub(8)..].join("\n");
        let ctx = || {
            format!(
                "kill {kill} ({policy:?}), stored position before the life {position}, \
                 log end {end}; child's last lines:\n{tail}\nstderr:\n{}",
                out.stderr
            )
        };
        assert!(
            out.was_killed(),
            "the child ended by itself ({:?})\n{}",
            out.status,
            ctx()
        );
        c.kills += 1;

        // What the child said: `START` with the position the parent read,
        // then the records from there on, in order, each once.
        let life = {
            let mut started_at = None;
            let mut count = 0;
            for (i, line) in out.lines.iter().enumerate() {
                match parse(line) {
                    Some(Said::Start(at)) => {
                        assert!(started_at.is_none(), "a second START\n{}", ctx());
                        assert_eq!(
                            at,
                            position,
                            "the child started at another position than the stored one\n{}",
                            ctx()
                        );
                        started_at = Some(at);
                    }
                    Some(Said::Handled { offset, value }) => {
                        assert!(started_at.is_some(), "HANDLED before START\n{}", ctx());
                        assert_eq!(
                            offset,
                            position + count,
                            "a life must receive the records in order from its stored \
                             position {position}: record {count} of this life\n{}",
                            ctx()
                        );
                        assert_eq!(value, offset, "record {offset} holds {value}\n{}", ctx());
                        count += 1;
                    }
                    None if looks_like_ours(line) => {
                        // Only the last line can have been cut by the kill.
                        assert_eq!(
                            i + 1,
                            out.lines.len(),
                            "a malformed line that is not the last: {line:?}\n{}",
                            ctx()
                        );
                        c.torn_lines += 1;
                    }
                    None => {}
                }
            }
            if started_at.is_none() {
                c.killed_in_startup += 1;
            }
            Life {
                start: position,
                count,
            }
        };

        // Record what was handled.
        let life_end = life.start + life.count;
        if c.handled.len() < life_end as usize {
            c.handled.resize(life_end as usize, 0);
        }
        let mut replay = 0;
        for o in life.start..life_end {
            let seen = &mut c.handled[o as usize];
            if *seen > 0 {
                replay += 1;
            }
            *seen += 1;
        }
        c.handled_records += life.count;
        c.replayed += replay;
        c.max_replay = c.max_replay.max(replay);
        if life.count > 0 {
            c.handling_lives += 1;
        }
        if life_end == end {
            c.caught_up += 1;
        }

        // The position the kill left.
        let log = open_log(&dir).unwrap_or_else(|e| panic!("open after a kill: {e}\n{}", ctx()));
        assert_eq!(
            log.next_offset(),
            end,
            "the log's end moved: the child only reads\n{}",
            ctx()
        );
        let stored = stored_position(&log);
        let held_position = log
            .consumer(CONSUMER)
            .expect("take the consumer")
            .position();
        assert_eq!(
            held_position,
            stored,
            "the consumer's position differs from its listing\n{}",
            ctx()
        );
        let ctx = || format!("position after the kill {stored}\n{}", ctx());

        // Commits only move forward.
        assert!(
            stored >= life.start,
            "the stored position went back from {}\n{}",
            life.start,
            ctx()
        );
        // Never leads what was handled: every offset below the stored
        // position was reported handled, in this life or an earlier one.
        assert!(
            stored <= life_end,
            "the stored position leads what was handled: the child reported \
             {}..{life_end} handled\n{}",
            life.start,
            ctx()
        );
        if let Some(o) = (0..stored).find(|&o| c.handled[o as usize] == 0) {
            panic!(
                "record {o} below the stored position was never handled\n{}",
                ctx()
            );
        }
        if policy == Policy::Every {
            let in_flight =
                check_every(&life, stored, EVERY).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
            c.commit_in_flight += usize::from(in_flight);
        }
        if stored > life.start {
            c.advancing_lives += 1;
        }

        position = stored;
        if end - position < MIN_AHEAD {
            append_records(&log, APPEND_MORE);
            end += APPEND_MORE;
            c.appended += APPEND_MORE;
            assert_eq!(log.next_offset(), end);
        }
        log.close().expect("close");
    }

    // At least once: every record below the final position was handled.
    let final_position = position;
    assert!(
        c.handled.len() as u64 >= final_position,
        "final position {final_position} past every record handled ({})",
        c.handled.len()
    );
    let never = (0..final_position)
        .filter(|&o| c.handled[o as usize] == 0)
        .count();
    assert_eq!(
        never, 0,
        "{never} records below the final position {final_position} were never handled"
    );

    let in_flight = match policy {
        Policy::Every => format!(" · kills with a commit in flight {}", c.commit_in_flight),
        Policy::Interval => String::new(),
    };
    println!(
        "consumer kill campaign ({policy:?}): kills {} · records handled {} (log {} records) · \
         final position {final_position} · replayed records {} · max replay {} · \
         lives handling records {} · killed in startup {} · torn last lines {} · \
         lives advancing the position {}{in_flight} · caught up {} · {:.1?}",
        c.kills,
        c.handled_records,
        c.appended,
        c.replayed,
        c.max_replay,
        c.handling_lives,
        c.killed_in_startup,
        c.torn_lines,
        c.advancing_lives,
        c.caught_up,
        started.elapsed(),
    );
    c
}

/// The `Every(n)` bound, exactly. Number a life's receives from 0: receive
/// `i` returns record `start + i`, and before it looks for that record it
/// counts record `start + i - 1` (the one handed over by receive `i - 1`)
/// as handled, so `i` records are handled and, since the subscription
/// began with none uncommitted and each commit resets the count, it
/// commits `start + i` exactly when `i` is a positive multiple of `n`. The
/// commit finishes before the receive returns.
///
/// The child printed `HANDLED` for `count` records, so receives
/// `0..count` returned, and receive `count` may have begun (the child asks
/// for the next record right after printing) but not receive `count + 1`
/// (that needs `HANDLED` of record `start + count`, which a whole line
/// would have shown, and a torn line means the print had not finished).
/// A commit writes one slot of the consumer's file, so a kill leaves the
/// old position or the new one. The stored position is therefore
/// `start + n * floor((count - 1) / n)` (the last commit of a receive that
/// returned; `start` when `count` is 0), or `start + n * floor(count / n)`
/// if receive `count` committed before the kill. Both are at most
/// `start + count` and at least `start + count - n`: at most `n` records
/// reported handled are replayed.
///
/// Returns whether the position is the second (the in-flight commit).
fn check_every(life: &Life, stored: u64, n: u64) -> Result<bool, String> {
    let returned = life.start + n * (life.count.saturating_sub(1) / n);
    let in_flight = life.start + n * (life.count / n);
    if stored == returned {
        Ok(false)
    } else if stored == in_flight {
        Ok(true)
    } else {
        Err(format!(
            "Every({n}): after {} records handled from {}, the stored position must be \
             {returned} (the last commit of a receive that returned) or {in_flight} (the \
             receive in flight committed); it is {stored}",
            life.count, life.start
        ))
    }
}

/// SIGKILL at random moments under `CommitPolicy::Every(7)`: the stored
/// position never leads what was handled, lags it by at most the policy's
/// bound, and every record below it was handled at least once.
#[test]
fn sigkill_every_commits_only_handled_records() {
    let kills = kills_from_env();
    let c = campaign(Policy::Every, kills, 0xC0_FFEE_0007);
    assert!(c.handling_lives > 0, "no life handled a record");
    assert!(
        c.advancing_lives > 0,
        "the stored position never moved forward"
    );
    // Implied by `check_every`, stated for the summary's reader.
    assert!(
        c.max_replay <= EVERY,
        "a replay of {} records",
        c.max_replay
    );
}

/// The same under `CommitPolicy::Interval(5ms)`: the stored position never
/// leads what was handled, and over the campaign it advances.
#[test]
fn sigkill_interval_commits_only_handled_records() {
    let kills = kills_from_env();
    let c = campaign(Policy::Interval, kills, 0xC0_FFEE_0005);
    assert!(c.handling_lives > 0, "no life handled a record");
    assert!(
        c.advancing_lives > 0,
        "the stored position never moved forward"
    );
}
