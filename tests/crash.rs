//! The process-crash (SIGKILL) harness: a child process appends, commits,
//! rolls segments and applies retention on a real log, the parent kills it
//! at a random moment, opens the log itself and checks that nothing the
//! child was told is durable went missing, and that nothing else appeared.
//! State accumulates across kills: every child continues the same log.
//!
//! `BACKBONE_CRASH_KILLS` sets the number of kills of the `EveryAppend`
//! campaign (default 1,000, the CI tier; the `Interval` campaign runs a
//! quarter of it).
//!
//! The child (`child_crash_writer`) is this test binary run again with
//! `--exact child_crash_writer` and `BACKBONE_CRASH_DIR` set; it prints:
//!
//! - `PH <phase>` before an operation that rolls (`roll`), rolls and
//!   removes old segments (`retention`), or commits the consumer
//!   (`commit`), and `PH open` before it opens the log;
//! - `ACK <first_offset> <count>` after an append (or batch) returned `Ok`;
//! - `COMMIT <offset>` after `consumer.commit(offset)` returned `Ok`;
//! - `MISS ...` if an append rolled (or not) against its prediction, which
//!   would make the phase figures wrong.
//!
//! The phase of a kill is that of the last `PH` line when nothing was
//! acknowledged after it: the child was in (or just past) that operation.
//! Otherwise it is `append`; `startup` if the child printed nothing.
//!
//! A kill can leave a torn tail even though each group commit is a single
//! `pwrite`: Linux checks for a fatal signal between the pages of a write
//! and returns early, so the batch being written is cut at a page
//! boundary. Recovery must cut it (it was never acknowledged); the harness
//! counts these and checks that no more than one batch is ever cut.
#![cfg(unix)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use backbone::{Durability, EventLog, Options, Raw, Start};
use common::{
    mix64, open_raw, retry_locked, say, segment_files, seq_of, seq_payload, ChildProcess, Rng,
};

const CHILD: &str = "child_crash_writer";
const DIR_VAR: &str = "BACKBONE_CRASH_DIR";
const MODE_VAR: &str = "BACKBONE_CRASH_MODE";
const RUN_VAR: &str = "BACKBONE_CRASH_RUN";
const KILLS_VAR: &str = "BACKBONE_CRASH_KILLS";

/// Small segments, so that a child rolls several times per life.
const SEGMENT_BYTES: u64 = 64 << 10;
/// Payloads are 8 to 8 + `MAX_EXTRA` bytes, about 1 KiB on average.
const MAX_EXTRA: u64 = 2000;
/// From docs/FORMAT.md: the child predicts its rolls with them.
const SEGMENT_HEADER: u64 = 64;
const FRAME_OVERHEAD: u64 = 28;
/// One step in this many commits the consumer.
const COMMIT_ONE_IN: u64 = 6;
/// The largest batch the child appends, and so the largest single write.
const MAX_BATCH: u64 = 16;
const MAX_BATCH_BYTES: u64 = MAX_BATCH * (FRAME_OVERHEAD + 8 + MAX_EXTRA);
const CONSUMER: &str = "c";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    EveryAppend,
    Interval,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::EveryAppend => "every",
            Mode::Interval => "interval",
        }
    }

    fn parse(name: &str) -> Mode {
        match name {
            "every" => Mode::EveryAppend,
            "interval" => Mode::Interval,
            other => panic!("unknown mode {other:?}"),
        }
    }

    fn options(self) -> Options {
        let durability = match self {
            Mode::EveryAppend => Durability::EveryAppend,
            Mode::Interval => Durability::Interval(Duration::from_millis(50)),
        };
        Options::new()
            .segment_bytes(SEGMENT_BYTES)
            .max_record_bytes(4096)
            .durability(durability)
    }
}

/// Even lives keep four segments, so every roll also removes the oldest;
/// odd lives keep many, so their rolls are plain rolls (and the next even
/// life's open removes what they added).
fn retention_bytes(run: u64) -> u64 {
    if run.is_multiple_of(2) {
        4 * SEGMENT_BYTES
    } else {
        1024 * SEGMENT_BYTES
    }
}

// ---- the child --------------------------------------------------------------

/// The writer: runs only as a child of the campaigns below (it returns at
/// once in a normal test run) and loops until it is killed.
#[test]
fn child_crash_writer() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let mode = Mode::parse(&std::env::var(MODE_VAR).expect("mode"));
    let run: u64 = std::env::var(RUN_VAR).expect("run").parse().expect("run");
    let retention = retention_bytes(run);

    say(format_args!("PH open"));
    // The two campaigns run side by side in one parent (see retry_locked).
    let options = mode.options().retention_bytes(retention);
    let log = retry_locked(|| open_raw(dir, options.clone())).expect("child open");
    let consumer = log.consumer(CONSUMER).expect("child consumer");
    let next = log.next_offset();
    let mut seq = if next > log.first_offset() {
        let last = log.get(next - 1).expect("get").expect("last record");
        seq_of(&last.value).expect("a sequence number") + 1
    } else {
        next
    };
    let mut pos = active_segment_pos(&log, dir);
    say(format_args!("READY {next} {seq}"));

    let mut rng = Rng::new(mix64(run) ^ mode as u64);
    loop {
        if rng.one_in(COMMIT_ONE_IN) {
            let to = log.next_offset();
            say(format_args!("PH commit"));
            consumer.commit(to).expect("commit");
            say(format_args!("COMMIT {to}"));
            continue;
        }
        let count = if rng.one_in(3) {
            rng.range(2, MAX_BATCH + 1)
        } else {
            1
        };
        let values: Vec<Vec<u8>> = (seq..seq + count)
            .map(|s| seq_payload(s, MAX_EXTRA))
            .collect();
        // Where the frames go: a frame that does not fit rolls the segment
        // and goes first in the new one.
        let mut end = pos;
        let mut rolls = false;
        for value in &values {
            let len = FRAME_OVERHEAD + value.len() as u64;
            if end + len > SEGMENT_BYTES {
                rolls = true;
                end = SEGMENT_HEADER;
            }
            end += len;
        }
        let before = log.stats();
        if rolls {
            if (before.segments as u64 + 1) * SEGMENT_BYTES > retention {
                say(format_args!("PH retention"));
            } else {
                say(format_args!("PH roll"));
            }
        }
        let range = if count == 1 {
            let at = log.append(&values[0]).expect("append");
            at..at + 1
        } else {
            log.append_batch(&values).expect("append_batch")
        };
        say(format_args!("ACK {} {}", range.start, count));
        let after = log.stats();
        let rolled = after.segments != before.segments || after.first_offset != before.first_offset;
        if rolled != rolls {
            say(format_args!(
                "MISS predicted roll {rolls}, rolled {rolled}: {before:?} -> {after:?}"
            ));
        }
        pos = end;
        seq += count;
    }
}

/// The byte position after the last record of the newest segment.
fn active_segment_pos(log: &EventLog<Vec<u8>, Raw>, dir: &Path) -> u64 {
    let newest = segment_files(dir).pop().expect("a segment");
    let base: u64 = newest
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("a segment file name");
    log.read(Start::Offset(base))
        .map(|rec| FRAME_OVERHEAD + rec.expect("read the active segment").value.len() as u64)
        .sum::<u64>()
        + SEGMENT_HEADER
}

// ---- the parent -------------------------------------------------------------

/// What the parent knows from every child so far.
#[derive(Default)]
struct Campaign {
    kills: usize,
    /// The end of the highest acknowledged append, over every life.
    acked_end: u64,
    acked_records: u64,
    /// The highest committed consumer position reported.
    committed: u64,
    open_times: Vec<Duration>,
    phases: BTreeMap<String, usize>,
    torn_tails: usize,
    unclean_opens: usize,
    mispredictions: usize,
}

fn kills_from_env(default: usize) -> usize {
    match std::env::var(KILLS_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .expect("BACKBONE_CRASH_KILLS must be a number"),
        Err(_) => default,
    }
}

fn campaign(mode: Mode, kills: usize, seed: u64) -> Campaign {
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut rng = Rng::new(seed);
    let mut c = Campaign::default();
    for kill in 0..kills {
        let child = ChildProcess::spawn(
            CHILD,
            &[
                (DIR_VAR, OsString::from(&dir)),
                (MODE_VAR, OsString::from(mode.name())),
                (RUN_VAR, OsString::from(kill.to_string())),
            ],
        );
        let delay = if rng.one_in(10) {
            rng.range(50, 500)
        } else {
            rng.range(2, 50)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let out = child.kill();
        let tail = out.lines[out.lines.len().saturating_sub(8)..].join("\n");
        assert!(
            out.was_killed(),
            "kill {kill}: the child ended by itself ({:?})\nstdout tail:\n{tail}\nstderr:\n{}",
            out.status,
            out.stderr
        );
        c.kills += 1;
        let mut phase = "startup";
        for line in &out.lines {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("PH") => phase = line[3..].trim(),
                Some("READY") => phase = "append",
                Some("ACK") => {
                    let first: u64 = words.next().unwrap().parse().unwrap();
                    let count: u64 = words.next().unwrap().parse().unwrap();
                    c.acked_end = c.acked_end.max(first + count);
                    c.acked_records += count;
                    phase = "append";
                }
                Some("COMMIT") => {
                    let to: u64 = words.next().unwrap().parse().unwrap();
                    c.committed = c.committed.max(to);
                    phase = "append";
                }
                Some("MISS") => {
                    eprintln!("kill {kill}: {line}");
                    c.mispredictions += 1;
                }
                _ => {}
            }
        }
        *c.phases.entry(phase.to_owned()).or_default() += 1;
        verify(&dir, mode, kill, &mut c, &tail);
    }

    let mut times = c.open_times.clone();
    times.sort();
    let phases: Vec<String> = c.phases.iter().map(|(p, n)| format!("{p} {n}")).collect();
    println!(
        "crash campaign ({mode:?}): kills {}/{} survived · acked records {} · acked lost 0 · \
         phantom/garbage 0 · gaps 0 · open p50/p99/max {:?}/{:?}/{:?} · \
         phase at kill: {} · torn tails {} · unclean opens {} · mispredicted rolls {} · {:.1?}",
        c.kills,
        kills,
        c.acked_records,
        common::percentile(&times, 50),
        common::percentile(&times, 99),
        times.last().unwrap(),
        phases.join(", "),
        c.torn_tails,
        c.unclean_opens,
        c.mispredictions,
        started.elapsed(),
    );
    c
}

/// Opens the log the child left and checks it against what the child said.
fn verify(dir: &Path, mode: Mode, kill: usize, c: &mut Campaign, tail: &str) {
    let ctx = || format!("kill {kill} ({mode:?}); child's last lines:\n{tail}");
    let t = Instant::now();
    // (Retried while a child forked for the other campaign holds a copy
    // of the lock: see retry_locked.)
    let opened = retry_locked(|| open_raw(dir, mode.options()));
    c.open_times.push(t.elapsed());
    let log = match opened {
        Ok(log) => log,
        Err(e) => panic!("open after a SIGKILL failed: {e} ({e:?})\n{}", ctx()),
    };
    let report = log.recovery_report().clone();
    if report.truncated_bytes > 0 {
        // One group commit is one `pwrite`, but Linux stops a write at a
        // page boundary when a fatal signal arrives, so a kill can tear the
        // last (unacknowledged) batch. Never more than that one write.
        println!(
            "kill {kill}: recovery cut {} bytes: {report:?}",
            report.truncated_bytes
        );
        assert!(
            report.truncated_bytes <= MAX_BATCH_BYTES,
            "recovery cut {} bytes, more than one batch\n{}",
            report.truncated_bytes,
            ctx()
        );
        c.torn_tails += 1;
    }
    if !report.is_clean() {
        c.unclean_opens += 1;
        if c.unclean_opens <= 3 {
            println!("kill {kill}: recovery report {report:?}");
        }
    }

    let (first, next) = (log.first_offset(), log.next_offset());
    assert!(
        next >= c.acked_end,
        "acknowledged appends lost: next_offset {next} < acknowledged end {}\n{}",
        c.acked_end,
        ctx()
    );
    let mut expected = first;
    for rec in log.read(Start::Beginning) {
        let rec = rec.unwrap_or_else(|e| panic!("read at {expected}: {e}\n{}", ctx()));
        assert_eq!(rec.offset, expected, "offsets not contiguous\n{}", ctx());
        let seq = seq_of(&rec.value)
            .unwrap_or_else(|| panic!("record {expected}: short payload\n{}", ctx()));
        // Every child continues the sequence of the one before, from an
        // empty log: the sequence number is the offset.
        assert_eq!(
            seq,
            expected,
            "record {expected} holds sequence number {seq}\n{}",
            ctx()
        );
        assert!(
            rec.value == seq_payload(seq, MAX_EXTRA),
            "record {expected}: payload differs from what was appended\n{}",
            ctx()
        );
        expected += 1;
    }
    assert_eq!(
        expected,
        next,
        "read ended at {expected}, next_offset is {next}\n{}",
        ctx()
    );
    let checked = log
        .verify()
        .unwrap_or_else(|e| panic!("verify: {e}\n{}", ctx()));
    assert_eq!(checked, next - first, "verify counted otherwise\n{}", ctx());

    let position = log.consumer(CONSUMER).expect("consumer").position();
    assert!(
        position >= c.committed.max(first) && position <= next,
        "consumer at {position}, last COMMIT {}, log {first}..{next}\n{}",
        c.committed,
        ctx()
    );
    log.close().expect("close");
}

/// SIGKILL at random moments under `EveryAppend`: nothing acknowledged is
/// lost, nothing else appears, and kills land in rolls, retention and
/// consumer commits, not only in plain appends.
#[test]
fn sigkill_loses_no_acknowledged_append_every_append() {
    let kills = kills_from_env(1000);
    let c = campaign(Mode::EveryAppend, kills, 0xC0FFEE);
    assert_eq!(c.mispredictions, 0, "the child's phase labels are wrong");
    let needed = kills * 3 / 200;
    for phase in ["roll", "retention", "commit"] {
        let seen = c.phases.get(phase).copied().unwrap_or(0);
        assert!(
            seen >= needed,
            "insufficient coverage: {seen} kills in phase {phase}, {needed} needed \
             (phases: {:?})",
            c.phases
        );
    }
    assert!(c.acked_records > 0, "no append was ever acknowledged");
}

/// The same under `Interval(50ms)`: an append that returned has reached
/// the operating system, so a process crash loses none of them.
#[test]
fn sigkill_loses_no_returned_append_interval() {
    let kills = (kills_from_env(1000) / 4).max(1);
    let c = campaign(Mode::Interval, kills, 0xBADC0DE);
    assert_eq!(c.mispredictions, 0, "the child's phase labels are wrong");
    assert!(c.acked_records > 0, "no append was ever acknowledged");
}
