//! Competing consumers ([`WorkGroup`]) under SIGKILL of the whole worker
//! process at random moments, with a poison record that aborts the process
//! and flaky workers that drop or sit on their tasks.
//!
//! A child process opens a real log of `u64` records (value = offset),
//! joins the work group `workers` with `ack_timeout` 200 ms,
//! `max_deliveries` 3 and a dead-letter log in a sibling directory, and
//! runs four worker threads until the parent kills it. State accumulates
//! across kills: every life continues the same group on the same log (the
//! parent appends more records when few are left to do). After the last
//! kill, lives run without a kill until one finishes the whole log
//! (`lag() == 0`).
//!
//! The child (`child_work_group_worker`, this test binary run again with
//! `--exact child_work_group_worker` and `BACKBONE_GROUP_DIR` set) prints:
//!
//! - `START <lag> <log end> .` once it holds the group;
//! - `HANDLED <offset> <delivery> .` when a worker received a task;
//! - `DROPPED <offset> <delivery> .` when a flaky worker lets its task go
//!   without an answer (a dead worker: the record comes back after the ack
//!   timeout, in this life or the next);
//! - `STALL <offset> <delivery> .` when a flaky worker sits on its task for
//!   longer than the ack timeout before acking it (a hung worker: the
//!   record goes to another worker meanwhile, and one of the two acks is
//!   refused);
//! - `ACKED <offset> .` after `ack` returned `Ok`;
//! - `LATE <offset> <delivery> .` after `ack` returned `AlreadyAcked`;
//! - `DONE <lag> .` (last life only) when the group has nothing left;
//!   `STUCK <lag> <in flight> .` if its lag stopped moving for 20 s;
//!   `FAIL <why> .` on an unexpected error.
//!
//! The trailing `.` tells a whole line from one a kill cut short. A worker
//! that receives the poison record (value 777) prints `HANDLED` and, 20 ms
//! later, calls `std::process::abort()`: the whole process dies.
//!
//! The parent checks each life against the group's own durable state,
//! which it reads itself (read-only) after every life: the group's log
//! `{log}/workers.group/` of [`GroupEvent`]s, appended under the group's
//! lock (so its order is the order things happened), and the dead-letter
//! log. The group removes whole sealed segments of its log below a
//! snapshot, possibly events of the life just ended, so the parent reads a
//! copy that keeps them: hard links to every segment file, taken after
//! every life (see `shadow_group_log`); it sees every event, and a skipped
//! offset fails the test. What it checks, and why it is sound:
//!
//! - **Acknowledged at most once:** no offset has two finishing events
//!   (`Acked`/`DeadLettered`) in the group's log, and no offset is printed
//!   `ACKED` twice over all lives. `ACKED` is printed only after `ack`
//!   returned `Ok`, and each `ACKED` line in life L has its `Acked` event in
//!   the log, written in life L: an ack that returned `Ok` is durable.
//! - **Never delivered after an ack:** no `Delivered` event of an offset
//!   follows its finishing event, and no offset is `HANDLED` in a life
//!   after a life that printed it `ACKED`. A worker sees a task only after
//!   its `Delivered` event was appended (the group writes it first), and
//!   every `HANDLED <o> <d>` line of life L must be the `d`-th `Delivered`
//!   event of `o` in the log, written in life L: delivery numbers are the
//!   durable count, never repeat across lives, and never go back.
//! - **Handled before acked:** an `Acked` event of life L follows a
//!   `Delivered` event and a `HANDLED` line of the same offset in life L
//!   (the worker prints `HANDLED` before it acks).
//! - **An `ACKED` line may be missing** only for an ack in progress at a
//!   kill: the offset's `Acked` event is in a life that did not end by
//!   itself, and a life has at most one such per worker (a worker acks one
//!   task at a time). The clean last life prints every ack.
//! - **`AlreadyAcked` only when someone else finished it:** a `LATE` line
//!   of life L has its offset finished in life L, and either delivered at
//!   least twice in life L (the other delivery acked it) or dead-lettered.
//! - **The poison record ends in the dead-letter log:** it is delivered at
//!   most `max_deliveries` (3) times, in three different lives, every one
//!   of which died (aborted, or killed first); then it is set aside and the
//!   lives go on. A delivery count above 3 of any record fails the test (a
//!   record that would loop).
//! - **Dead letters:** the group writes the dead letter (an `EveryAppend`
//!   log, durable on return) *before* its own `DeadLettered` event (see
//!   `WorkGroup::take`). So every `DeadLettered` event of life L has a
//!   dead letter of life L, and a record is never dead-lettered without a
//!   dead letter. But a kill between the two leaves a dead letter while
//!   the group still counts the record unfinished with 3 deliveries, and
//!   the next life sets it aside again: a record can have more than one
//!   dead letter. What the code guarantees, and what is asserted: at least
//!   one dead letter; at most one per life; every one but the last comes
//!   from a life that was killed (the window between the two writes); none
//!   comes after the `DeadLettered` event. A dead-lettered record has
//!   exactly 3 `Delivered` events and no `ACKED` line; its payload decodes
//!   to its offset. Records other than the poison record may be set aside
//!   too, legitimately, when kills (or the poison's aborts) interrupt
//!   three of their deliveries; the same checks hold for them, and they
//!   are listed in the summary.
//! - **Snapshots:** every few thousand events the group appends a
//!   `Snapshot` of its whole state and a reopened group starts from it. The
//!   parent folds the events before it itself and requires the snapshot to
//!   be that state (its floor, done records above the floor, and the
//!   delivery count of every record delivered and not finished), since a
//!   snapshot that forgets a delivery loses it on the next crash.
//! - **At the end**, every offset of the log is finished exactly once (an
//!   `Acked` or a `DeadLettered` event), and the group opened by the
//!   parent has `lag() == 0`, nothing in flight and nothing to deliver.
//!
//! `sigkill_while_holding_past_a_snapshot_keeps_every_delivery` is the
//! deterministic case of the snapshot rule: a child takes 5,000 records
//! without acking any (crossing a snapshot), is killed, and every record
//! must come back exactly once, as its second delivery.
//!
//! `BACKBONE_GROUP_KILLS` sets the number of kills; by default the
//! campaign kills for 40 seconds, and at least 50 times.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backbone::{
    Codec, DeadLetter, Durability, Error, EventLog, GroupEvent, GroupOptions, Options, Postcard,
    Start, WorkGroup,
};
use common::{retry_locked, say, ChildOutput, ChildProcess, Rng};

const CHILD: &str = "child_work_group_worker";
const HOLDER: &str = "child_work_group_holder";
const DIR_VAR: &str = "BACKBONE_GROUP_DIR";
const LIFE_VAR: &str = "BACKBONE_GROUP_LIFE";
const FINAL_VAR: &str = "BACKBONE_GROUP_FINAL";
const HOLD_VAR: &str = "BACKBONE_GROUP_HOLD_DIR";
const KILLS_VAR: &str = "BACKBONE_GROUP_KILLS";

const GROUP: &str = "workers";
/// The record whose handling aborts the worker's process.
const POISON: u64 = 777;
const MAX_DELIVERIES: u32 = 3;
const ACK_TIMEOUT: Duration = Duration::from_millis(200);
const WORKERS: u64 = 4;
/// Workers with this number or above are flaky: on a record's first
/// delivery they drop it one time in [`DROP_ONE_IN`] and sit on it one time
/// in [`STALL_ONE_IN`]. Only first deliveries, so that a record is set
/// aside only if kills interrupt at least two of its deliveries.
const FLAKY_FROM: u64 = 2;
const DROP_ONE_IN: u64 = 8;
const STALL_ONE_IN: u64 = 24;
/// How long a stalled worker sits on its task (past the ack timeout).
const STALL_MS: (u64, u64) = (210, 320);
/// How long the poison takes to bring the process down.
const POISON_FUSE: Duration = Duration::from_millis(20);

/// Records in the log at the start (values = offsets; the poison among
/// them); before each life, if fewer than [`MIN_AHEAD`] are unfinished,
/// the parent appends [`APPEND_MORE`].
const INITIAL_RECORDS: u64 = 3000;
const MIN_AHEAD: u64 = 1000;
const APPEND_MORE: u64 = 2000;
/// The group snapshots its state once a life has written 4096 events
/// (`SNAPSHOT_EVERY` in src/log/group.rs): the long lives are killed when
/// they have written about this many, and need this many records to do.
const NEAR_SNAPSHOT: (u64, u64) = (4000, 4400);
const LONG_LIFE_AHEAD: u64 = 3000;
/// A child that prints nothing for this long has stopped working.
const LINE_GAP: Duration = Duration::from_secs(5);

const TIME_BUDGET: Duration = Duration::from_secs(40);
const MIN_KILLS: usize = 50;
/// Generous bounds that only keep a broken run from hanging; nothing here
/// is a speed test.
const STARTUP: Duration = Duration::from_secs(30);
const NO_PROGRESS_LIMIT: Duration = Duration::from_secs(20);
const FINAL_LIFE_LIMIT: Duration = Duration::from_secs(600);

/// Records the holder takes without acking: more group events than the
/// group writes between two snapshots.
const HOLD_RECORDS: u64 = 5000;

fn source_dir(base: &Path) -> PathBuf {
    base.join("log")
}

fn dead_dir(base: &Path) -> PathBuf {
    base.join("dead")
}

fn group_dir(base: &Path) -> PathBuf {
    source_dir(base).join(format!("{GROUP}.group"))
}

fn open_source(base: &Path) -> backbone::Result<EventLog<u64>> {
    retry_locked(|| {
        Options::new()
            .durability(Durability::Buffered)
            .open::<u64>(source_dir(base))
    })
}

fn open_dead(base: &Path) -> backbone::Result<EventLog<DeadLetter>> {
    retry_locked(|| {
        Options::new()
            .durability(Durability::EveryAppend)
            .open::<DeadLetter>(dead_dir(base))
    })
}

fn group_options(dead: &EventLog<DeadLetter>) -> GroupOptions {
    GroupOptions::new()
        .ack_timeout(ACK_TIMEOUT)
        .max_deliveries(MAX_DELIVERIES)
        .dead_letter(dead)
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

/// Opens the group's log as its writer and lets go (the child is dead):
/// recovery, then the durable notice of everything it kept.
fn settle_group_log(base: &Path) {
    let dir = group_dir(base);
    if !dir.join("META").exists() {
        return;
    }
    let opened = Options::new()
        .segment_bytes(4 << 20)
        .open::<GroupEvent>(&dir);
    // (A child killed while creating the log leaves one that is not a log
    // yet: there is nothing to settle.)
    drop(opened);
}

/// Keeps a copy of the group's log that never loses an event: its `META`
/// and a hard link to each of its segment files, which outlives the
/// group's removal of the file. Returns the copy's directory (`None`
/// before the group's log exists). Called after every life, when no child
/// runs.
///
/// The group removes whole sealed segments below a snapshot. When one life
/// fills a segment and then snapshots, the sealed segment holds events of
/// that life the parent has not read yet; through the links it still can.
/// (A segment both started and removed within one life, more than 4 MiB of
/// events, would still be lost: the read of the copy would then skip
/// offsets, which `absorb` refuses.)
fn shadow_group_log(base: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let dir = group_dir(base);
    let shadow = base.join("group-shadow");
    if !dir.join("META").exists() {
        return None;
    }
    std::fs::create_dir_all(&shadow).expect("create the shadow directory");
    if !shadow.join("META").exists() {
        std::fs::copy(dir.join("META"), shadow.join("META")).expect("copy META");
    }
    for entry in std::fs::read_dir(&dir).expect("list the group's log") {
        let entry = entry.expect("list the group's log");
        let name = entry.file_name();
        // Segments, and `LOCK`: its writer's durable notice says how far a
        // reader may read (without it, only to the last watermark).
        if !name.to_string_lossy().ends_with(".seg") && name != "LOCK" {
            continue;
        }
        let linked = shadow.join(&name);
        let inode = entry.metadata().expect("stat a segment").ino();
        match std::fs::metadata(&linked) {
            Ok(m) if m.ino() == inode => continue,
            Ok(_) => std::fs::remove_file(&linked).expect("replace a stale link"),
            Err(_) => {}
        }
        std::fs::hard_link(entry.path(), &linked).expect("link a segment");
    }
    Some(shadow)
}

/// The records of the log in `dir` from offset `from` on, read without a
/// lock and without changing anything; `None` if the log is not there.
fn read_from<T>(dir: &Path, from: u64) -> Option<Vec<(u64, T)>>
where
    Postcard: Codec<T>,
{
    if !dir.exists() {
        return None;
    }
    let log = match Options::new().read_only().open::<T>(dir) {
        Ok(log) => log,
        // A child killed while creating the log can leave a directory
        // that is not a log yet; only acceptable before anything was read.
        Err(e) if from == 0 => {
            eprintln!("note: {} did not open yet: {e}", dir.display());
            return None;
        }
        Err(e) => panic!("open {} read-only: {e}", dir.display()),
    };
    assert!(
        log.first_offset() <= from,
        "{} now starts at {}, past {from}, the first record not read yet",
        dir.display(),
        log.first_offset()
    );
    let records = log
        .read(Start::Offset(from))
        .map(|r| r.map(|r| (r.offset, r.value)))
        .collect::<backbone::Result<Vec<_>>>()
        .unwrap_or_else(|e| panic!("read {} from {from}: {e}", dir.display()));
    Some(records)
}

// ---- the children -----------------------------------------------------------

/// Tells the parent and ends the child: an unexpected error.
fn fail(why: std::fmt::Arguments<'_>) -> ! {
    say(format_args!("FAIL {why} ."));
    std::process::exit(3);
}

/// One worker: receives, says so, then acks (or, if flaky, drops or sits
/// on the task first) until `stop`.
fn work(group: &WorkGroup<u64>, worker: u64, life: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(life.wrapping_mul(1 << 8) ^ worker ^ 0x06E0_0F00);
    let flaky = worker >= FLAKY_FROM;
    while !stop.load(Ordering::Relaxed) {
        let task = match group.recv_timeout(Duration::from_millis(50)) {
            Ok(Some(task)) => task,
            Ok(None) => continue,
            Err(e) => fail(format_args!("worker {worker} recv: {e}")),
        };
        let (offset, delivery, value) = (task.record.offset, task.delivery, task.record.value);
        say(format_args!("HANDLED {offset} {delivery} ."));
        if value != offset {
            fail(format_args!("record {offset} holds {value}"));
        }
        if value == POISON {
            std::thread::sleep(POISON_FUSE);
            std::process::abort();
        }
        if flaky && delivery == 1 && rng.one_in(DROP_ONE_IN) {
            say(format_args!("DROPPED {offset} {delivery} ."));
            drop(task);
            continue;
        }
        if flaky && delivery == 1 && rng.one_in(STALL_ONE_IN) {
            say(format_args!("STALL {offset} {delivery} ."));
            std::thread::sleep(Duration::from_millis(rng.range(STALL_MS.0, STALL_MS.1)));
        }
        match task.ack() {
            Ok(()) => say(format_args!("ACKED {offset} .")),
            Err(Error::AlreadyAcked { offset: o }) if o == offset => {
                say(format_args!("LATE {offset} {delivery} ."))
            }
            Err(e) => fail(format_args!("worker {worker} ack {offset}: {e}")),
        }
    }
}

/// The worker process: runs only as a child of the campaign below (it
/// returns at once in a normal test run). Its workers run until it is
/// killed, or, in a last life, until the group has nothing left.
#[test]
fn child_work_group_worker() {
    let Some(base) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let base = PathBuf::from(base);
    let life: u64 = std::env::var(LIFE_VAR)
        .expect("life")
        .parse()
        .expect("life");
    let last_life = std::env::var_os(FINAL_VAR).is_some();

    let log = open_source(&base).unwrap_or_else(|e| fail(format_args!("open the log: {e}")));
    let dead =
        open_dead(&base).unwrap_or_else(|e| fail(format_args!("open the dead-letter log: {e}")));
    let group = log
        .work_group(GROUP, group_options(&dead))
        .unwrap_or_else(|e| fail(format_args!("join the group: {e}")));
    say(format_args!(
        "START {} {} .",
        group.lag(),
        log.next_offset()
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let group = group.clone();
            let stop = stop.clone();
            std::thread::spawn(move || work(&group, w, life, &stop))
        })
        .collect();
    if !last_life {
        for w in workers {
            let _ = w.join();
        }
        fail(format_args!("a worker ended"));
    }

    // The last life: until everything is done.
    let mut last = group.lag();
    let mut since = Instant::now();
    loop {
        let lag = group.lag();
        if lag == 0 {
            break;
        }
        if lag != last {
            last = lag;
            since = Instant::now();
        } else if since.elapsed() > NO_PROGRESS_LIMIT {
            say(format_args!("STUCK {lag} {} .", group.in_flight()));
            std::process::exit(2);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a worker panicked");
    }
    say(format_args!("DONE {} .", group.lag()));
    drop(group);
    log.close().expect("close the log");
    dead.close().expect("close the dead-letter log");
}

/// The holder: takes every record of the log without acking any, says
/// how many, and waits to be killed.
#[test]
fn child_work_group_holder() {
    let Some(dir) = std::env::var_os(HOLD_VAR) else {
        return;
    };
    let log = retry_locked(|| {
        Options::new()
            .durability(Durability::Buffered)
            .open::<u64>(Path::new(&dir))
    })
    .unwrap_or_else(|e| fail(format_args!("open the log: {e}")));
    let group = log
        .work_group(
            GROUP,
            GroupOptions::new()
                .ack_timeout(Duration::from_secs(3600))
                .max_deliveries(MAX_DELIVERIES),
        )
        .unwrap_or_else(|e| fail(format_args!("join the group: {e}")));
    let mut held = Vec::new();
    loop {
        match group.recv_timeout(Duration::from_millis(300)) {
            Ok(Some(task)) => {
                if task.delivery != 1 || task.record.value != task.record.offset {
                    fail(format_args!("unexpected first task {task:?}"));
                }
                held.push(task);
            }
            Ok(None) => break,
            Err(e) => fail(format_args!("recv: {e}")),
        }
    }
    say(format_args!("HOLDING {} .", held.len()));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

// ---- the parent -------------------------------------------------------------

/// What a child said.
#[derive(Debug)]
enum Said {
    Start { end: u64 },
    Handled { offset: u64, delivery: u32 },
    Dropped { offset: u64, delivery: u32 },
    Stall { offset: u64, delivery: u32 },
    Acked { offset: u64 },
    Late { offset: u64, delivery: u32 },
    Done { lag: u64 },
    Stuck,
    Fail,
}

const WORDS: [&str; 9] = [
    "START", "HANDLED", "DROPPED", "STALL", "ACKED", "LATE", "DONE", "STUCK", "FAIL",
];

/// A whole line of the child's, or `None`.
fn parse(line: &str) -> Option<Said> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| -> Option<u64> { words.get(i)?.parse().ok() };
    let d = |i: usize| -> Option<u32> { words.get(i)?.parse().ok() };
    if words.last() != Some(&".") {
        return None;
    }
    Some(match (words[0], words.len()) {
        ("START", 4) => Said::Start { end: n(2)? },
        ("HANDLED", 4) => Said::Handled {
            offset: n(1)?,
            delivery: d(2)?,
        },
        ("DROPPED", 4) => Said::Dropped {
            offset: n(1)?,
            delivery: d(2)?,
        },
        ("STALL", 4) => Said::Stall {
            offset: n(1)?,
            delivery: d(2)?,
        },
        ("ACKED", 3) => Said::Acked { offset: n(1)? },
        ("LATE", 4) => Said::Late {
            offset: n(1)?,
            delivery: d(2)?,
        },
        ("DONE", 3) => Said::Done { lag: n(1)? },
        ("STUCK", 4) => Said::Stuck,
        ("FAIL", _) => Said::Fail,
        _ => return None,
    })
}

/// Whether `line` is (the beginning of) one of the child's lines, rather
/// than the test harness's own output.
fn looks_like_ours(line: &str) -> bool {
    let Some(first) = line.split_whitespace().next() else {
        return false;
    };
    WORDS.iter().any(|w| w.starts_with(first))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Finish {
    Acked,
    DeadLettered,
}

/// How a life ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LifeEnd {
    /// SIGKILL from the parent.
    Killed,
    /// The poison record's abort.
    Aborted,
    /// The last life: everything done, exited by itself.
    Finished,
    /// A last life that ended otherwise (`STUCK`, `FAIL`, another status):
    /// checked like a killed one, then the test fails.
    Failed,
}

/// Everything known about one offset of the log.
#[derive(Default, Debug)]
struct OffsetHistory {
    /// The life of each `Delivered` event, in order (the `k`-th delivery
    /// at index `k - 1`).
    deliveries: Vec<usize>,
    /// The finishing event, and its life.
    finish: Option<(Finish, usize)>,
    /// `HANDLED` lines: (life, delivery).
    handled: Vec<(usize, u32)>,
    /// Lives that printed `ACKED`.
    acked_lines: Vec<usize>,
    /// Lives whose dead-letter log got an entry for it.
    dead_letters: Vec<usize>,
}

#[derive(Default)]
struct Campaign {
    base: PathBuf,
    offsets: Vec<OffsetHistory>,
    /// The next offset to read of the group's log, and of the dead letters.
    group_read: u64,
    dead_read: u64,
    lives: Vec<LifeEnd>,
    kills: usize,
    /// Lives killed near the group's snapshot.
    long_lives: usize,
    aborts: usize,
    killed_in_startup: usize,
    torn_lines: usize,
    handled_lines: u64,
    acked_lines: u64,
    /// Acks whose `ACKED` line a kill prevented.
    silent_acks: u64,
    late_acks: u64,
    dropped: u64,
    stalls: u64,
    /// Deliveries after the first of a record in the same life (the ack
    /// timeout at work).
    in_life_redeliveries: u64,
    /// Deliveries after the first of a record in a later life.
    crash_redeliveries: u64,
    snapshots: u64,
    group_events: u64,
    appended: u64,
}

impl Campaign {
    fn history(&mut self, offset: u64, ctx: &dyn Fn() -> String) -> &mut OffsetHistory {
        assert!(
            offset < self.appended,
            "offset {offset} is past the log's end {}\n{}",
            self.appended,
            ctx()
        );
        &mut self.offsets[offset as usize]
    }

    /// The group's state as the events so far make it: its floor, the
    /// finished records above it, and the deliveries of unfinished ones.
    fn folded_state(&self) -> (u64, Vec<u64>, Vec<(u64, u32)>) {
        let floor = self
            .offsets
            .iter()
            .position(|h| h.finish.is_none())
            .unwrap_or(self.offsets.len()) as u64;
        let mut done = Vec::new();
        let mut attempts = Vec::new();
        for (o, h) in self.offsets.iter().enumerate().skip(floor as usize) {
            if h.finish.is_some() {
                done.push(o as u64);
            } else if !h.deliveries.is_empty() {
                attempts.push((o as u64, h.deliveries.len() as u32));
            }
        }
        (floor, done, attempts)
    }

    /// Reads what life `life` added to the group's log and the dead-letter
    /// log and checks it, then checks the life's lines against it.
    fn absorb(&mut self, life: usize, how: LifeEnd, out: &ChildOutput) {
        let tail = out.lines[out.lines.len().saturating_sub(12)..].join("\n");
        let ctx = || {
            format!(
                "life {life} ({how:?}); its last lines:\n{tail}\nstderr:\n{}",
                out.stderr
            )
        };
        self.lives.push(how);

        // 1. What the child said.
        let mut said = Vec::new();
        let mut reported = Vec::new();
        for (i, line) in out.lines.iter().enumerate() {
            match parse(line) {
                Some(Said::Fail) | Some(Said::Stuck) => reported.push(line.clone()),
                Some(s) => said.push(s),
                None if looks_like_ours(line) => {
                    assert_eq!(
                        i + 1,
                        out.lines.len(),
                        "a malformed line that is not the last: {line:?}\n{}",
                        ctx()
                    );
                    self.torn_lines += 1;
                }
                None => {}
            }
        }
        match said.first() {
            Some(Said::Start { end }) => assert_eq!(
                *end,
                self.appended,
                "the child saw another log end\n{}",
                ctx()
            ),
            Some(other) => panic!("the first line is not START: {other:?}\n{}", ctx()),
            None => self.killed_in_startup += 1,
        }

        // 2. The group's log: every event this life wrote. Its writer was
        // killed, perhaps between a sync and the durable notice after it
        // (a reader reads only what the notice says is durable): a writer's
        // open recovers the log, as the next life's would, and states what
        // it kept.
        settle_group_log(&self.base);
        let shadow = shadow_group_log(&self.base);
        let events = shadow.and_then(|dir| read_from::<GroupEvent>(&dir, self.group_read));
        let mut poison_deliveries = 0;
        for (at, event) in events.into_iter().flatten() {
            assert_eq!(at, self.group_read, "the group's log skipped an offset");
            self.group_read += 1;
            self.group_events += 1;
            let ectx = || {
                let mut shown = format!("{event:?}");
                if shown.len() > 300 {
                    shown.truncate(300);
                    shown.push_str("...");
                }
                format!("group event {at} ({shown})\n{}", ctx())
            };
            match &event {
                GroupEvent::Delivered(o) => {
                    let h = self.history(*o, &ectx);
                    assert!(
                        h.finish.is_none(),
                        "record {o} delivered again after it was finished ({:?})\n{}",
                        h.finish,
                        ectx()
                    );
                    if let Some(&prev) = h.deliveries.last() {
                        if prev == life {
                            self.in_life_redeliveries += 1;
                        } else {
                            self.crash_redeliveries += 1;
                        }
                    }
                    let h = self.history(*o, &ectx);
                    h.deliveries.push(life);
                    assert!(
                        h.deliveries.len() as u32 <= MAX_DELIVERIES,
                        "record {o} delivered {} times, past max_deliveries {MAX_DELIVERIES} \
                         (deliveries in lives {:?})\n{}",
                        h.deliveries.len(),
                        h.deliveries,
                        ectx()
                    );
                    if *o == POISON {
                        poison_deliveries += 1;
                    }
                }
                GroupEvent::Acked(o) | GroupEvent::DeadLettered(o) => {
                    let kind = match event {
                        GroupEvent::Acked(_) => Finish::Acked,
                        _ => Finish::DeadLettered,
                    };
                    let h = self.history(*o, &ectx);
                    assert!(
                        h.finish.is_none(),
                        "record {o} finished twice: {:?} in life {}, then {kind:?}\n{}",
                        h.finish.map(|f| f.0),
                        h.finish.map_or(0, |f| f.1),
                        ectx()
                    );
                    assert!(
                        !h.deliveries.is_empty(),
                        "record {o} finished ({kind:?}) without ever being delivered\n{}",
                        ectx()
                    );
                    h.finish = Some((kind, life));
                }
                GroupEvent::Snapshot {
                    floor,
                    done,
                    attempts,
                } => {
                    self.snapshots += 1;
                    let (want_floor, want_done, want_attempts) = self.folded_state();
                    let got: BTreeMap<u64, u32> = attempts.iter().copied().collect();
                    let want: BTreeMap<u64, u32> = want_attempts.iter().copied().collect();
                    let differ: Vec<String> = want
                        .keys()
                        .chain(got.keys())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .filter(|o| want.get(o) != got.get(o))
                        .map(|o| {
                            format!(
                                "record {o}: {} durable deliveries, the snapshot says {:?}",
                                want.get(o).copied().unwrap_or(0),
                                got.get(o)
                            )
                        })
                        .collect();
                    let done: BTreeSet<u64> = done.iter().copied().collect();
                    let want_done: BTreeSet<u64> = want_done.into_iter().collect();
                    let done_extra: Vec<_> = done.difference(&want_done).collect();
                    let done_missing: Vec<_> = want_done.difference(&done).collect();
                    assert!(
                        *floor == want_floor
                            && done_extra.is_empty()
                            && done_missing.is_empty()
                            && differ.is_empty(),
                        "the snapshot is not the state of the events before it: floor {floor} \
                         (the events say {want_floor}); done in the snapshot only \
                         {done_extra:?}, in the events only {done_missing:?}; delivery counts \
                         that differ: {differ:?}. A reopened group starts from the snapshot, \
                         so a crash now would lose what it lacks\n{}",
                        ectx()
                    );
                }
                other => panic!("an unknown group event {other:?}\n{}", ectx()),
            }
        }
        assert!(
            poison_deliveries <= 1,
            "the poison record was delivered {poison_deliveries} times in one life (it \
             aborts the process 20 ms after its delivery, well within the ack timeout)\n{}",
            ctx()
        );
        if poison_deliveries == 1 {
            assert_ne!(
                how,
                LifeEnd::Finished,
                "a life survived handing out the poison record\n{}",
                ctx()
            );
        }

        // 3. The dead letters this life wrote.
        let letters = read_from::<DeadLetter>(&dead_dir(&self.base), self.dead_read);
        for (at, letter) in letters.into_iter().flatten() {
            self.dead_read = at + 1;
            let lctx = || format!("dead letter {at} ({letter:?})\n{}", ctx());
            let value = <Postcard as Codec<u64>>::decode(&Postcard, &letter.payload)
                .unwrap_or_else(|e| panic!("its payload does not decode: {e}\n{}", lctx()));
            assert_eq!(value, letter.offset, "its payload\n{}", lctx());
            let h = self.history(letter.offset, &lctx);
            assert!(
                !h.dead_letters.contains(&life),
                "two dead letters for record {} in one life\n{}",
                letter.offset,
                lctx()
            );
            h.dead_letters.push(life);
        }

        // The child's own complaint (`FAIL`, or `STUCK`: nothing left to
        // hand out while records are unfinished), with the history of the
        // records not finished.
        if !reported.is_empty() {
            let unfinished: Vec<String> = self
                .offsets
                .iter()
                .enumerate()
                .filter(|(_, h)| h.finish.is_none())
                .take(10)
                .map(|(o, h)| format!("record {o}: {h:?}"))
                .collect();
            panic!(
                "the child reported: {}\nrecords not finished (first 10; `deliveries` are the \
                 lives of its durable Delivered events):\n{}\n{}",
                reported.join("\n"),
                unfinished.join("\n"),
                ctx()
            );
        }

        // 4. The lines, against the durable state.
        let mut seen_handled: BTreeSet<(u64, u32)> = BTreeSet::new();
        let mut handled_here: BTreeSet<u64> = BTreeSet::new();
        let mut acked_here: BTreeSet<u64> = BTreeSet::new();
        let mut saw_poison = false;
        let mut done_line = false;
        for s in &said {
            match *s {
                Said::Handled { offset, delivery } => {
                    self.handled_lines += 1;
                    let h = self.history(offset, &ctx);
                    assert!(
                        delivery >= 1 && h.deliveries.get(delivery as usize - 1) == Some(&life),
                        "HANDLED {offset} {delivery} in life {life}, but the group's log has \
                         delivery {delivery} of it in life {:?} (its deliveries were in lives \
                         {:?}; earlier HANDLED lines {:?})\n{}",
                        h.deliveries.get((delivery as usize).wrapping_sub(1)),
                        h.deliveries,
                        h.handled,
                        ctx()
                    );
                    assert!(
                        h.acked_lines.iter().all(|&l| l >= life),
                        "record {offset} handled in life {life} after life {:?} acked it\n{}",
                        h.acked_lines,
                        ctx()
                    );
                    assert!(
                        seen_handled.insert((offset, delivery))
                            && !h.handled.iter().any(|&(_, d)| d == delivery),
                        "delivery {delivery} of record {offset} was handed out twice\n{}",
                        ctx()
                    );
                    h.handled.push((life, delivery));
                    handled_here.insert(offset);
                    saw_poison |= offset == POISON;
                }
                Said::Dropped { offset, delivery } | Said::Stall { offset, delivery } => {
                    assert!(
                        seen_handled.contains(&(offset, delivery)),
                        "{s:?} before its HANDLED line\n{}",
                        ctx()
                    );
                    if matches!(s, Said::Dropped { .. }) {
                        self.dropped += 1;
                    } else {
                        self.stalls += 1;
                    }
                }
                Said::Acked { offset } => {
                    self.acked_lines += 1;
                    let h = self.history(offset, &ctx);
                    assert!(
                        h.acked_lines.is_empty(),
                        "record {offset} acked (ack returned Ok) twice: in lives {:?} and \
                         {life}\n{}",
                        h.acked_lines,
                        ctx()
                    );
                    assert_eq!(
                        h.finish,
                        Some((Finish::Acked, life)),
                        "ack of {offset} returned Ok in life {life}, but the group's log \
                         does not have its ack from this life\n{}",
                        ctx()
                    );
                    h.acked_lines.push(life);
                    acked_here.insert(offset);
                }
                Said::Late { offset, delivery } => {
                    self.late_acks += 1;
                    let h = self.history(offset, &ctx);
                    let here = h.deliveries.iter().filter(|&&l| l == life).count();
                    let ok = match h.finish {
                        Some((Finish::Acked, l)) => l == life && here >= 2,
                        Some((Finish::DeadLettered, l)) => l == life,
                        None => false,
                    };
                    assert!(
                        ok,
                        "delivery {delivery} of {offset} was refused as AlreadyAcked in life \
                         {life}, but nothing else finished it: finish {:?}, deliveries in \
                         lives {:?}\n{}",
                        h.finish,
                        h.deliveries,
                        ctx()
                    );
                }
                Said::Done { lag } => {
                    assert_eq!(lag, 0, "DONE with a lag\n{}", ctx());
                    done_line = true;
                }
                Said::Start { .. } | Said::Stuck | Said::Fail => {}
            }
        }
        assert_eq!(
            done_line,
            how == LifeEnd::Finished,
            "DONE and how the life ended disagree\n{}",
            ctx()
        );
        if how == LifeEnd::Aborted {
            assert!(
                saw_poison,
                "the life aborted without handling the poison record\n{}",
                ctx()
            );
        }

        // 5. What finished in this life.
        let mut silent = 0;
        for (o, h) in self.offsets.iter().enumerate() {
            let o = o as u64;
            match h.finish {
                Some((Finish::Acked, l)) if l == life => {
                    assert!(
                        handled_here.contains(&o),
                        "record {o} was acked in life {life} without a HANDLED line there\n{}",
                        ctx()
                    );
                    if !acked_here.contains(&o) {
                        silent += 1;
                    }
                }
                Some((Finish::DeadLettered, l)) if l == life => {
                    assert!(
                        h.dead_letters.contains(&life),
                        "record {o} was dead-lettered in life {life} without a dead letter \
                         (dead letters in lives {:?})\n{}",
                        h.dead_letters,
                        ctx()
                    );
                    assert_eq!(
                        h.deliveries.len() as u32,
                        MAX_DELIVERIES,
                        "record {o} was dead-lettered after {} deliveries (lives {:?})\n{}",
                        h.deliveries.len(),
                        h.deliveries,
                        ctx()
                    );
                    assert!(
                        h.acked_lines.is_empty(),
                        "record {o} was dead-lettered but acked in life {:?}\n{}",
                        h.acked_lines,
                        ctx()
                    );
                }
                _ => {}
            }
            // A dead letter without the group's event: only from a life
            // that a kill (or the poison) cut between the two writes, and
            // never after the event.
            if h.dead_letters.contains(&life) {
                match h.finish {
                    Some((Finish::DeadLettered, l)) => assert!(
                        l == life,
                        "a dead letter for record {o} in life {life}, after it was \
                         dead-lettered in life {l}\n{}",
                        ctx()
                    ),
                    Some((Finish::Acked, l)) => {
                        panic!("a dead letter for record {o}, acked in life {l}\n{}", ctx())
                    }
                    None => assert_ne!(
                        how,
                        LifeEnd::Finished,
                        "a dead letter for record {o} that the group does not count as \
                         dead-lettered, from a life that ended by itself\n{}",
                        ctx()
                    ),
                }
            }
        }
        if silent > 0 {
            assert_ne!(
                how,
                LifeEnd::Finished,
                "{silent} acks of a life that ended by itself were never printed\n{}",
                ctx()
            );
            assert!(
                silent <= WORKERS,
                "{silent} acks without an ACKED line in one life: more than one per worker\n{}",
                ctx()
            );
            self.silent_acks += silent;
        }
    }

    /// Appends records until at least `ahead` are unfinished.
    fn append_if_needed(&mut self, ahead: u64) {
        let finished = self.offsets.iter().filter(|h| h.finish.is_some()).count() as u64;
        if self.appended - finished >= ahead {
            return;
        }
        let more = (ahead - (self.appended - finished)).div_ceil(APPEND_MORE) * APPEND_MORE;
        let log = open_source(&self.base).expect("open the log to append");
        assert_eq!(log.next_offset(), self.appended, "the log's end moved");
        append_records(&log, more);
        log.close().expect("close");
        self.appended += more;
        self.offsets
            .resize_with(self.appended as usize, OffsetHistory::default);
    }
}

/// Waits until the child has printed `target` lines that each stand for
/// one event of the group's log (`HANDLED` follows a `Delivered` event,
/// `ACKED` an `Acked` one), or until it stops printing.
fn wait_for_events(child: &mut ChildProcess, target: u64) {
    let mut events = 0;
    while events < target {
        match child.wait_for_line("", LINE_GAP) {
            Some(line) if line.starts_with("HANDLED") || line.starts_with("ACKED") => events += 1,
            Some(_) => {}
            None => return,
        }
    }
}

fn kills_from_env() -> Option<usize> {
    std::env::var(KILLS_VAR).ok().map(|v| {
        v.trim()
            .parse()
            .expect("BACKBONE_GROUP_KILLS must be a number")
    })
}

fn spawn_life(base: &Path, life: usize, last: bool) -> ChildProcess {
    let mut env = vec![
        (DIR_VAR, OsString::from(base)),
        (LIFE_VAR, OsString::from(life.to_string())),
    ];
    if last {
        env.push((FINAL_VAR, OsString::from("1")));
    }
    ChildProcess::spawn(CHILD, &env)
}

/// SIGKILL at random moments, a poison record that aborts the process,
/// and workers that drop or sit on tasks: every record is handled before
/// it is acked, acknowledged exactly once and never delivered after its
/// ack; the poison record ends in the dead-letter log after 3 deliveries;
/// in the end every record is finished and the group's lag is 0.
#[test]
fn sigkill_work_group_acks_each_record_once() {
    let started = Instant::now();
    let target = kills_from_env();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().to_path_buf();
    let mut rng = Rng::new(0x0060_B00C);
    let mut c = Campaign {
        base: base.clone(),
        ..Campaign::default()
    };

    let log = open_source(&base).expect("create the log");
    append_records(&log, INITIAL_RECORDS);
    assert_eq!(log.get(POISON).unwrap().unwrap().value, POISON);
    log.close().expect("close");
    c.appended = INITIAL_RECORDS;
    c.offsets
        .resize_with(INITIAL_RECORDS as usize, OffsetHistory::default);

    let more_kills = |c: &Campaign| match target {
        Some(n) => c.kills < n,
        None => c.kills < MIN_KILLS || started.elapsed() < TIME_BUDGET,
    };
    while more_kills(&c) {
        let life = c.lives.len();
        // Mostly 20 to 150 ms into the work. One life in six is killed 0
        // to 30 ms after the spawn instead, and the kill may land while the
        // child starts, opens the logs or replays the group. One in eight
        // runs until the events it wrote are near the group's snapshot
        // interval (a group snapshots once a life has written that many),
        // so that kills also land just after a snapshot.
        let kind = rng.range(0, 24);
        c.append_if_needed(if kind < 3 { LONG_LIFE_AHEAD } else { MIN_AHEAD });
        let mut child = spawn_life(&base, life, false);
        let delay = if kind < 3 {
            c.long_lives += 1;
            wait_for_events(&mut child, rng.range(NEAR_SNAPSHOT.0, NEAR_SNAPSHOT.1));
            rng.range(0, 30)
        } else if kind < 7 {
            rng.range(0, 30)
        } else {
            let _ = child.wait_for_line("START", STARTUP);
            rng.range(20, 150)
        };
        std::thread::sleep(Duration::from_millis(delay));
        let out = child.kill();
        let how = if out.was_killed() {
            c.kills += 1;
            LifeEnd::Killed
        } else {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                out.status.signal(),
                Some(libc::SIGABRT),
                "life {life} ended by itself ({:?}); its lines:\n{}\nstderr:\n{}",
                out.status,
                out.lines.join("\n"),
                out.stderr
            );
            c.aborts += 1;
            LifeEnd::Aborted
        };
        c.absorb(life, how, &out);
    }

    // Lives without a kill until one finishes the log. The poison record
    // may abort some of them if the kills above did not use up its
    // deliveries; past that, a life that does not finish fails the test.
    let mut last_lives = 0;
    c.append_if_needed(MIN_AHEAD);
    loop {
        last_lives += 1;
        assert!(
            last_lives as u32 <= MAX_DELIVERIES + 1,
            "{} lives without a kill did not finish the log: the poison record keeps \
             aborting the process",
            last_lives - 1
        );
        let life = c.lives.len();
        let mut child = spawn_life(&base, life, true);
        let deadline = Instant::now() + FINAL_LIFE_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match child.wait_for_line("", left) {
                Some(line) if line.starts_with("DONE") => {
                    // Let it close its logs and exit: no line starts with
                    // NUL, so this returns when its stdout closes.
                    let _ = child.wait_for_line("\u{0}", STARTUP);
                    break;
                }
                Some(line) if line.starts_with("STUCK") || line.starts_with("FAIL") => break,
                Some(_) => {}
                None => break,
            }
        }
        let running = child.is_running();
        let out = child.kill();
        use std::os::unix::process::ExitStatusExt;
        let how = if out.status.success() {
            LifeEnd::Finished
        } else if out.status.signal() == Some(libc::SIGABRT) {
            c.aborts += 1;
            LifeEnd::Aborted
        } else {
            // STUCK / FAIL lines are reported by `absorb`.
            c.absorb(life, LifeEnd::Failed, &out);
            panic!(
                "the last life ended with {:?} (still running at the limit: {running}); its \
                 last lines:\n{}\nstderr:\n{}",
                out.status,
                out.lines[out.lines.len().saturating_sub(12)..].join("\n"),
                out.stderr
            );
        };
        c.absorb(life, how, &out);
        if how == LifeEnd::Finished {
            break;
        }
    }

    // Every record finished exactly once (`absorb` refuses a second
    // finish), the poison record in the dead-letter log.
    let unfinished: Vec<String> = c
        .offsets
        .iter()
        .enumerate()
        .filter(|(_, h)| h.finish.is_none())
        .take(10)
        .map(|(o, h)| format!("{o}: {h:?}"))
        .collect();
    assert!(
        unfinished.is_empty(),
        "records never finished:\n{}",
        unfinished.join("\n")
    );
    let poison = &c.offsets[POISON as usize];
    assert_eq!(
        poison.finish.map(|f| f.0),
        Some(Finish::DeadLettered),
        "the poison record: {poison:?}"
    );
    assert_eq!(poison.deliveries.len() as u32, MAX_DELIVERIES);
    assert!(!poison.dead_letters.is_empty());
    let poison_lives: BTreeSet<usize> = poison.deliveries.iter().copied().collect();
    assert_eq!(
        poison_lives.len() as u32,
        MAX_DELIVERIES,
        "the poison record's deliveries must be in different lives: {poison:?}"
    );
    for &l in &poison_lives {
        assert_ne!(c.lives[l], LifeEnd::Finished);
    }
    let mut dead_lettered = 0;
    let mut extra_dead_letters = 0;
    let mut collateral = Vec::new();
    for (o, h) in c.offsets.iter().enumerate() {
        match h.finish {
            Some((Finish::DeadLettered, l)) => {
                dead_lettered += 1;
                // Every dead letter but the one of the finishing life came
                // from an earlier life that did not end by itself.
                assert_eq!(h.dead_letters.last(), Some(&l), "record {o}: {h:?}");
                for &earlier in &h.dead_letters[..h.dead_letters.len() - 1] {
                    assert!(earlier < l && c.lives[earlier] != LifeEnd::Finished);
                    extra_dead_letters += 1;
                }
                if o as u64 != POISON {
                    collateral.push(o);
                }
            }
            Some((Finish::Acked, _)) => {
                assert!(h.dead_letters.is_empty(), "record {o}: {h:?}");
                assert!(h.acked_lines.len() <= 1, "record {o}: {h:?}");
            }
            None => unreachable!(),
        }
    }

    // The group, opened here: nothing left, nothing in flight.
    let log = open_source(&base).expect("open the log");
    let dead = open_dead(&base).expect("open the dead-letter log");
    let group = log
        .work_group(GROUP, group_options(&dead))
        .expect("join the group");
    assert_eq!(group.lag(), 0, "the group's lag after the last life");
    assert_eq!(group.in_flight(), 0);
    let left = group.recv_timeout(ACK_TIMEOUT * 2).expect("recv");
    assert!(left.is_none(), "a record delivered after the end: {left:?}");
    drop(group);
    assert_eq!(
        dead.next_offset(),
        c.dead_read,
        "the parent saw every dead letter"
    );
    log.close().expect("close");
    dead.close().expect("close");

    // The campaign exercised what it claims to.
    assert!(c.kills > 0 || target == Some(0));
    assert!(c.aborts >= 1, "the poison record never aborted a life");
    assert!(
        c.dropped > 0 && c.in_life_redeliveries > 0,
        "no redelivery after a drop"
    );
    assert!(c.stalls > 0 && c.late_acks > 0, "no ack was ever refused");

    println!(
        "work group kill campaign: lives {} (killed {}, of them near a snapshot {}, aborted by the poison record {}, \
         killed in startup {}) · records {} · group events {} · snapshots {} · HANDLED {} · \
         ACKED lines {} · acks a kill kept from being printed {} · AlreadyAcked {} · dropped \
         {} · stalled {} · redeliveries in a life {} / after a crash {} · dead-lettered {} \
         (besides the poison record: {:?}) · extra dead letters from a kill between the two \
         writes {} · torn last lines {} · {:.1?}",
        c.lives.len(),
        c.kills,
        c.long_lives,
        c.aborts,
        c.killed_in_startup,
        c.appended,
        c.group_events,
        c.snapshots,
        c.handled_lines,
        c.acked_lines,
        c.silent_acks,
        c.late_acks,
        c.dropped,
        c.stalls,
        c.in_life_redeliveries,
        c.crash_redeliveries,
        dead_lettered,
        collateral,
        extra_dead_letters,
        c.torn_lines,
        started.elapsed(),
    );
}

/// The deterministic case of the snapshot rule: a worker process takes
/// more records than the group writes events between two snapshots,
/// acking none, and is killed. Reopened, the group must hand every one of
/// them out again, exactly once, as its second delivery: the deliveries
/// are durable before the worker sees them, snapshot or not.
#[test]
fn sigkill_while_holding_past_a_snapshot_keeps_every_delivery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = retry_locked(|| {
        Options::new()
            .durability(Durability::Buffered)
            .open::<u64>(&dir)
    })
    .expect("create the log");
    append_records(&log, HOLD_RECORDS);
    log.close().expect("close");

    let mut child = ChildProcess::spawn(HOLDER, &[(HOLD_VAR, OsString::from(&dir))]);
    let line = child.wait_for_line("HOLDING", FINAL_LIFE_LIMIT);
    let out = child.kill();
    assert!(
        out.was_killed() && line.as_deref() == Some(&*format!("HOLDING {HOLD_RECORDS} .")),
        "the holder did not take every record: {line:?}, {:?}\n{}\nstderr:\n{}",
        out.status,
        out.lines.join("\n"),
        out.stderr
    );

    // What the group wrote: one delivery of each record, and a snapshot.
    let events =
        read_from::<GroupEvent>(&dir.join(format!("{GROUP}.group")), 0).expect("the group's log");
    let mut delivered = vec![0u32; HOLD_RECORDS as usize];
    let mut snapshots = Vec::new();
    for (at, event) in &events {
        match event {
            GroupEvent::Delivered(o) => delivered[*o as usize] += 1,
            GroupEvent::Snapshot { .. } => snapshots.push(*at),
            other => panic!("unexpected event {at}: {other:?}"),
        }
    }
    assert!(
        delivered.iter().all(|&n| n == 1),
        "deliveries {delivered:?}"
    );
    assert!(
        !snapshots.is_empty(),
        "{HOLD_RECORDS} deliveries wrote no snapshot: raise HOLD_RECORDS past the \
         group's snapshot interval"
    );

    // Reopened: every record again, once, as delivery 2.
    let log = retry_locked(|| {
        Options::new()
            .durability(Durability::Buffered)
            .open::<u64>(&dir)
    })
    .expect("open the log");
    let group = log
        .work_group(
            GROUP,
            GroupOptions::new()
                .ack_timeout(Duration::from_secs(3600))
                .max_deliveries(MAX_DELIVERIES),
        )
        .expect("join the group");
    assert_eq!(group.lag(), HOLD_RECORDS);
    let mut got: BTreeMap<u64, u32> = BTreeMap::new();
    let mut tasks = Vec::new();
    while let Some(task) = group
        .recv_timeout(Duration::from_millis(300))
        .expect("recv")
    {
        assert!(
            got.insert(task.record.offset, task.delivery).is_none(),
            "record {} handed out twice after the restart",
            task.record.offset
        );
        tasks.push(task);
    }
    // Ack what came, then see what is left.
    for task in tasks {
        task.ack().expect("ack");
    }
    let missing: Vec<u64> = (0..HOLD_RECORDS).filter(|o| !got.contains_key(o)).collect();
    let wrong: Vec<(u64, u32)> = got
        .iter()
        .filter(|(_, &d)| d != 2)
        .map(|(&o, &d)| (o, d))
        .collect();
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "after a kill with {HOLD_RECORDS} records delivered once and none acked (the group's \
         log holds one Delivered event of each, and snapshots at {snapshots:?}), the reopened \
         group never hands out {missing:?} again (with everything else acked, its lag stays \
         {} and nothing is in flight: {}), and hands out with a delivery count other than 2: \
         {wrong:?}",
        group.lag(),
        group.in_flight()
    );
    assert_eq!(group.lag(), 0);
    drop(group);
    log.close().expect("close");
}
