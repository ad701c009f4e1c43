//! A stream job under SIGKILL at random moments: a child process runs a
//! filter + flat_map job from a source log into an output log and is
//! killed and started again under the same name until a life finishes the
//! source. The output must equal one uninterrupted run: every value once,
//! in order, none missing. Half the campaign writes the output `Buffered`,
//! half `EveryAppend`; small segments and a retention limit make the output
//! roll and drop old segments under the kills.
//!
//! `BACKBONE_STREAM_KILLS` sets the number of kills per durability
//! (default 60; both campaigns run side by side in a few seconds).
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use backbone::{Durability, EventLog, Options, Start};
use common::{retry_locked, say, ChildProcess, Rng};

const CHILD: &str = "child_stream_kill";
const DIR_VAR: &str = "BACKBONE_STREAM_DIR";
const MODE_VAR: &str = "BACKBONE_STREAM_MODE";
const KILLS_VAR: &str = "BACKBONE_STREAM_KILLS";
const DEFAULT_KILLS: usize = 60;
const JOB: &str = "copy";
const SOURCE_RECORDS: u64 = 60_000;

/// What source value `v` becomes: nothing for multiples of 5, two records
/// for multiples of 3, else one.
fn outputs(v: u64) -> Vec<u64> {
    match v {
        v if v % 5 == 0 => vec![],
        v if v % 3 == 0 => vec![v * 10, v * 10 + 1],
        v => vec![v * 10],
    }
}

fn open_output(dir: &Path, buffered: bool) -> EventLog<u64> {
    let durability = if buffered {
        Durability::Buffered
    } else {
        Durability::EveryAppend
    };
    retry_locked(|| {
        Options::new()
            .durability(durability)
            .segment_bytes(64 << 10)
            .retention_bytes(256 << 10)
            .open(dir.join("output"))
    })
    .expect("open the output")
}

/// The job: runs only as a child of the campaign below.
#[test]
fn child_stream_kill() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let buffered = std::env::var(MODE_VAR).expect("mode") == "buffered";
    let source: EventLog<u64> = Options::new()
        .read_only()
        .open(dir.join("source"))
        .expect("open the source");
    let output = open_output(dir, buffered);
    // Small batches, each a little slow: the kills land mid-copy.
    let job = source
        .stream(JOB, Start::Beginning)
        .filter(|v| v % 5 != 0)
        .flat_map(|v| {
            let t = std::time::Instant::now();
            while t.elapsed() < Duration::from_micros(5) {
                std::hint::spin_loop();
            }
            outputs(v)
        })
        .batch_size(25)
        .to(&output)
        .expect("start the job");
    say(format_args!("START {} .", job.position()));
    job.wait_for(SOURCE_RECORDS).expect("the job finishes");
    job.stop();
    job.join().expect("join");
    output.close().expect("close");
    say(format_args!("DONE ."));
}

fn campaign(buffered: bool, seed: u64) {
    let kills = std::env::var(KILLS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    {
        let source: EventLog<u64> = EventLog::open(dir.join("source")).unwrap();
        let values: Vec<u64> = (0..SOURCE_RECORDS).collect();
        for chunk in values.chunks(5_000) {
            source.append_batch(chunk).unwrap();
        }
        source.close().unwrap();
    }
    let mode = if buffered { "buffered" } else { "every-append" };
    let env = [
        (DIR_VAR, OsString::from(dir)),
        (MODE_VAR, OsString::from(mode)),
    ];
    let mut rng = Rng::new(seed);
    let (mut killed, mut lives, mut last_start) = (0, 0, 0);
    loop {
        lives += 1;
        let mut child = ChildProcess::spawn(CHILD, &env);
        let Some(start) = child.wait_for_line("START", Duration::from_secs(60)) else {
            panic!("{mode}: child did not start: {:?}", child.kill());
        };
        let position: u64 = start
            .split_whitespace()
            .nth(1)
            .and_then(|w| w.parse().ok())
            .expect("a position");
        assert!(
            position >= last_start,
            "{mode}: resumed behind an earlier life"
        );
        last_start = position;
        if killed < kills {
            std::thread::sleep(Duration::from_micros(rng.range(200, 15_000)));
            let out = child.kill();
            if out.was_killed() {
                killed += 1;
                continue;
            }
            assert!(out.status.success(), "{mode}: child failed: {out:?}");
            break;
        }
        let done = child.wait_for_line("DONE", Duration::from_secs(120));
        let out = child.kill();
        assert!(
            done.is_some(),
            "{mode}: the last life did not finish: {out:?}"
        );
        break;
    }
    let output = open_output(dir, buffered);
    let expected: Vec<u64> = (0..SOURCE_RECORDS).flat_map(outputs).collect();
    assert_eq!(
        output.next_offset(),
        expected.len() as u64,
        "{mode}: no record twice, none missing"
    );
    let first = output.first_offset();
    assert!(
        first > 0,
        "{mode}: retention removed old segments under the kills"
    );
    let kept: Vec<u64> = output
        .read(Start::Beginning)
        .map(|r| r.expect("read the output").value)
        .collect();
    assert_eq!(
        kept,
        expected[first as usize..],
        "{mode}: the output in order"
    );
    say(format_args!(
        "{mode}: {killed} kills over {lives} lives; {} records, first kept {first}",
        expected.len()
    ));
}

#[test]
fn a_stream_job_is_exactly_once_under_kills() {
    let every = std::thread::spawn(|| campaign(false, 0x5eed));
    campaign(true, 0xfeed);
    every.join().expect("the every-append campaign");
}
