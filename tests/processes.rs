//! Two processes on one log: the directory lock keeps a second writer
//! out (and goes away with the process that held it), and a read-only
//! follower in one process sees a writer in another append, record by
//! record, across segment rolls.
//!
//! The children are this test binary run again on one test
//! (`--exact child_...`) with an environment variable that tells that
//! test what to do; without it those tests return at once.
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use backbone::{Error, Options, Start};
use common::{open_raw, read_all, say, seq_payload, ChildProcess, Rng};

const LOCK_DIR_VAR: &str = "BACKBONE_LOCK_DIR";
const FOLLOW_DIR_VAR: &str = "BACKBONE_FOLLOW_DIR";
const FOLLOW_COUNT_VAR: &str = "BACKBONE_FOLLOW_COUNT";

/// How long a child may take to start and open its log; generous, since
/// nothing here is a speed test.
const STARTUP: Duration = Duration::from_secs(30);

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

// ---- the lock -----------------------------------------------------------------

/// Child: opens the log for writing, appends three records, says `READY`
/// and holds the log open until killed.
#[test]
fn child_lock_holder() {
    let Some(dir) = std::env::var_os(LOCK_DIR_VAR) else {
        return;
    };
    let log = open_raw(Path::new(&dir), Options::new()).expect("child open");
    log.append_batch(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .expect("child append");
    say(format_args!("READY {}", log.next_offset()));
    sleep_forever();
}

#[test]
fn a_writer_in_another_process_locks_the_log_until_it_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut child =
        ChildProcess::spawn("child_lock_holder", &[(LOCK_DIR_VAR, OsString::from(&dir))]);
    if child.wait_for_line("READY", STARTUP).is_none() {
        let out = child.kill();
        panic!("the child never became ready: {out:?}");
    }

    let t = Instant::now();
    let second = open_raw(&dir, Options::new());
    let refused_in = t.elapsed();
    assert!(
        matches!(second, Err(Error::Locked { .. })),
        "a second writer got {second:?}"
    );
    println!("second writer refused in {refused_in:?}");
    // Refused, not blocked: a try-lock answers at once. (Generous bound: a
    // loaded machine must not fail this.)
    assert!(
        refused_in < Duration::from_secs(5),
        "refusing took {refused_in:?}"
    );

    // Reading is still allowed while the writer holds the lock.
    let reader = open_raw(&dir, Options::new().read_only()).expect("read-only open");
    assert_eq!(reader.next_offset(), 3);
    drop(reader);

    let out = child.kill();
    assert!(out.was_killed(), "the child ended by itself: {out:?}");

    // The lock died with the process: a writer opens, and finds the data.
    let log = open_raw(&dir, Options::new()).expect("open after the holder died");
    assert_eq!(
        read_all(&log).unwrap(),
        vec![(0, b"a".to_vec()), (1, b"b".to_vec()), (2, b"c".to_vec())]
    );
    assert_eq!(log.append(&b"d".to_vec()).unwrap(), 3);
    log.close().unwrap();
}

// ---- a follower of a live writer ------------------------------------------------

/// Tiny segments: a roll every twenty records or so.
const FOLLOW_SEGMENT_BYTES: u64 = 4096;
const FOLLOW_MAX_EXTRA: u64 = 300;
const FOLLOW_RECORDS: u64 = 3000;

/// Child: opens the log, says `READY`, appends `BACKBONE_FOLLOW_COUNT`
/// records (record `i` is `seq_payload(i)`), in single appends and small
/// batches with short pauses, says `DONE` and idles until killed.
#[test]
fn child_follow_writer() {
    let Some(dir) = std::env::var_os(FOLLOW_DIR_VAR) else {
        return;
    };
    let count: u64 = std::env::var(FOLLOW_COUNT_VAR)
        .expect("count")
        .parse()
        .expect("count");
    let log = open_raw(
        Path::new(&dir),
        Options::new()
            .segment_bytes(FOLLOW_SEGMENT_BYTES)
            .max_record_bytes(1024),
    )
    .expect("child open");
    say(format_args!("READY"));
    let mut rng = Rng::new(7);
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
        assert_eq!(range, seq..seq + n);
        seq += n;
        if rng.one_in(8) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    say(format_args!("DONE {}", log.next_offset()));
    sleep_forever();
}

#[test]
fn a_read_only_follower_sees_every_record_of_a_live_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut child = ChildProcess::spawn(
        "child_follow_writer",
        &[
            (FOLLOW_DIR_VAR, OsString::from(&dir)),
            (FOLLOW_COUNT_VAR, OsString::from(FOLLOW_RECORDS.to_string())),
        ],
    );
    if child.wait_for_line("READY", STARTUP).is_none() {
        let out = child.kill();
        panic!("the child never became ready: {out:?}");
    }
    let log = open_raw(
        &dir,
        Options::new()
            .read_only()
            .segment_bytes(FOLLOW_SEGMENT_BYTES)
            .max_record_bytes(1024),
    )
    .expect("read-only open");

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0u64;
    let mut last_next = log.next_offset();
    let mut next_increases = 0;
    let mut rounds = 0u64;
    let mut by_get = 0u64;
    while seen < FOLLOW_RECORDS {
        assert!(
            Instant::now() < deadline,
            "after 30 s the follower has seen {seen} of {FOLLOW_RECORDS} records \
             (next_offset {})",
            log.next_offset()
        );
        if !child.is_running() {
            let out = child.kill();
            panic!("the writer died: {out:?}");
        }
        rounds += 1;
        let before = seen;
        if rounds.is_multiple_of(3) {
            // Random reads, one offset at a time, until one is not there yet.
            while let Some(rec) = log.get(seen).unwrap_or_else(|e| panic!("get({seen}): {e}")) {
                assert_eq!(rec.offset, seen);
                assert!(
                    rec.value == seq_payload(seen, FOLLOW_MAX_EXTRA),
                    "get({seen}) returned other bytes than were appended"
                );
                seen += 1;
                by_get += 1;
            }
        } else {
            for rec in log.read(Start::Offset(seen)) {
                let rec = rec.unwrap_or_else(|e| panic!("read at {seen}: {e}"));
                assert_eq!(rec.offset, seen, "the follower skipped or repeated");
                assert!(
                    rec.value == seq_payload(seen, FOLLOW_MAX_EXTRA),
                    "record {seen} differs from what was appended"
                );
                seen += 1;
            }
        }
        let next = log.next_offset();
        assert!(
            next >= last_next,
            "next_offset went back: {last_next} -> {next}"
        );
        assert!(
            next >= seen,
            "read {seen} records but next_offset is {next}"
        );
        if next > last_next {
            next_increases += 1;
        }
        last_next = next;
        if seen == before {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(seen, FOLLOW_RECORDS);
    assert!(
        next_increases > 0,
        "the follower's next_offset never moved while it followed"
    );
    println!(
        "follower: {seen} records ({by_get} by get) in {rounds} rounds, \
         next_offset grew {next_increases} times, {} segments",
        log.stats().segments
    );
    // The follower can read the last records as soon as they are written,
    // before the writer's append has returned and it has said so.
    let done = child.wait_for_line("DONE", STARTUP);
    let out = child.kill();
    assert!(out.was_killed(), "the writer ended by itself: {out:?}");
    assert_eq!(
        done.as_deref(),
        Some(format!("DONE {FOLLOW_RECORDS}").as_str()),
        "{out:?}"
    );
    assert_eq!(log.verify().unwrap(), FOLLOW_RECORDS);
}

// ---- a consumer owned by another process --------------------------------------

const CONSUMER_DIR_VAR: &str = "BACKBONE_CONSUMER_OWNER_DIR";

/// Child: follows the log read-only, takes consumer `audit`, reads what is
/// there, commits past it, says `HOLDING <position>` and holds the
/// consumer until killed.
#[test]
fn child_consumer_owner() {
    let Some(dir) = std::env::var_os(CONSUMER_DIR_VAR) else {
        return;
    };
    let log = open_raw(Path::new(&dir), Options::new().read_only()).expect("child open");
    let consumer = log.consumer("audit").expect("child consumer");
    let read = consumer.read().count() as u64;
    consumer.commit(read).expect("child commit");
    say(format_args!("HOLDING {read}"));
    sleep_forever();
}

#[test]
fn a_consumer_owned_by_a_follower_in_another_process_is_held_until_it_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let log = open_raw(&dir, Options::new()).unwrap();
    log.append_batch(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])
        .unwrap();
    let mut child = ChildProcess::spawn(
        "child_consumer_owner",
        &[(CONSUMER_DIR_VAR, OsString::from(&dir))],
    );
    let Some(line) = child.wait_for_line("HOLDING", STARTUP) else {
        panic!("the child never took the consumer: {:?}", child.kill());
    };
    assert_eq!(line, "HOLDING 3");
    // The writer's process sees its position and cannot take it.
    let listed = log.consumers().unwrap();
    assert_eq!((listed[0].name.as_str(), listed[0].position), ("audit", 3));
    assert!(matches!(
        log.consumer("audit"),
        Err(Error::ConsumerLocked { .. })
    ));
    let out = child.kill();
    assert!(out.was_killed(), "the child ended by itself: {out:?}");
    // The lock died with the process; the position it committed stays.
    let audit = log.consumer("audit").expect("free once the owner is gone");
    assert_eq!(audit.position(), 3);
}
