//! The exactly-once hand-off under SIGKILL at random moments. A child
//! process copies a source log into an output log through
//! `append_committing`: it resumes from the output's last checkpoint,
//! reads a batch of random size from the source, writes what the batch
//! maps to (some batches map to nothing) together with a checkpoint of the
//! next source offset and a running count as its state, and repeats until
//! the source is done. The parent kills it at random moments and starts it
//! again, until a life finishes; the output must then equal one
//! uninterrupted run: every output record once, in order, none missing,
//! and the checkpoint's count equal to the records written. Small
//! segments and a retention limit make the copy roll and drop old
//! segments, so checkpoints are carried forward many times under the
//! kills; half the campaign writes `Buffered` (a kill loses whole unwritten
//! batches), half `EveryAppend`.
//!
//! `BACKBONE_HANDOFF_KILLS` sets the number of kills per durability
//! (default 100; both campaigns run side by side in about 10 seconds).
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use backbone::{Checkpoint, Durability, EventLog, Options, Start};
use common::{retry_locked, say, ChildProcess, Rng};

const CHILD: &str = "child_handoff_kill";
const DIR_VAR: &str = "BACKBONE_HANDOFF_DIR";
const MODE_VAR: &str = "BACKBONE_HANDOFF_MODE";
const KILLS_VAR: &str = "BACKBONE_HANDOFF_KILLS";
const DEFAULT_KILLS: usize = 100;
const JOB: &str = "copy";
/// Records in the source; value `i` at offset `i`. Enough that the kills
/// land long before a life could finish the copy (see [`BATCH_SPIN`]).
const SOURCE_RECORDS: u64 = 60_000;
/// How long the child "works" on each batch (a busy wait), so that a life
/// of a few milliseconds copies a few hundred records, not the whole
/// source.
const BATCH_SPIN: Duration = Duration::from_micros(300);

/// What source value `v` becomes in the output: nothing for multiples of
/// 5, otherwise one record, and two for multiples of 3.
fn outputs(v: u64) -> Vec<u64> {
    match v {
        v if v % 5 == 0 => vec![],
        v if v % 3 == 0 => vec![v * 10, v * 10 + 1],
        v => vec![v * 10],
    }
}

fn output_options(buffered: bool) -> Options {
    let durability = if buffered {
        Durability::Buffered
    } else {
        Durability::EveryAppend
    };
    Options::new()
        .durability(durability)
        .segment_bytes(64 << 10)
        .retention_bytes(256 << 10)
}

fn open_output(dir: &Path, buffered: bool) -> EventLog<u64> {
    retry_locked(|| output_options(buffered).open(dir.join("output"))).expect("open the output")
}

fn open_source(dir: &Path) -> EventLog<u64> {
    Options::new()
        .read_only()
        .open(dir.join("source"))
        .expect("open the source")
}

/// Where the copy stands: the next source offset and the records written.
fn resume(source: &EventLog<u64>, output: &EventLog<u64>) -> (u64, u64) {
    match output.last_checkpoint(JOB).expect("last checkpoint") {
        Some(checkpoint) => {
            let next = checkpoint.position_in(source).expect("position");
            let written = u64::from_le_bytes(checkpoint.state().try_into().expect("8 bytes"));
            (next, written)
        }
        None => (0, 0),
    }
}

// ---- the child --------------------------------------------------------------

/// The copying job: runs only as a child of the campaign below (it returns
/// at once in a normal test run).
#[test]
fn child_handoff_kill() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let dir = Path::new(&dir);
    let buffered = std::env::var(MODE_VAR).expect("mode") == "buffered";
    let source = open_source(dir);
    let output = open_output(dir, buffered);
    let (mut next, mut written) = resume(&source, &output);
    say(format_args!("START {next} {written} ."));
    let mut rng = Rng::new(std::process::id().into());
    while next < SOURCE_RECORDS {
        let take = rng.range(1, 40) as usize;
        let t = std::time::Instant::now();
        while t.elapsed() < BATCH_SPIN {
            std::hint::spin_loop();
        }
        let batch: Vec<u64> = source
            .read(Start::Offset(next))
            .take(take)
            .map(|r| r.expect("read the source").value)
            .collect();
        let values: Vec<u64> = batch.iter().flat_map(|&v| outputs(v)).collect();
        next += batch.len() as u64;
        written += values.len() as u64;
        let checkpoint = Checkpoint::new(JOB)
            .source(&source, next)
            .expect("source position")
            .with_state(written.to_le_bytes().to_vec());
        output
            .append_committing(&values, &checkpoint)
            .expect("append committing");
    }
    output.close().expect("close");
    say(format_args!("DONE {written} ."));
}

// ---- the parent -------------------------------------------------------------

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
    let mut killed = 0;
    let mut lives = 0;
    let mut last_start = None;
    loop {
        lives += 1;
        let mut child = ChildProcess::spawn(CHILD, &env);
        let Some(start) = child.wait_for_line("START", Duration::from_secs(60)) else {
            panic!("{mode}: child did not start: {:?}", child.kill());
        };
        // A life's start never goes back: what a killed life committed
        // stays committed.
        let parsed: Vec<u64> = start
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let Some(previous) = last_start {
            assert!(
                parsed[0] >= previous,
                "{mode}: resumed behind an earlier life"
            );
        }
        last_start = Some(parsed[0]);
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

    let source = open_source(dir);
    let output = open_output(dir, buffered);
    let (next, written) = resume(&source, &output);
    assert_eq!(next, SOURCE_RECORDS, "{mode}: the copy finished");
    let expected: Vec<u64> = (0..SOURCE_RECORDS).flat_map(outputs).collect();
    assert_eq!(
        written,
        expected.len() as u64,
        "{mode}: the checkpoint's count"
    );
    assert_eq!(
        output.next_offset(),
        written,
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
    assert_eq!(output.verify().unwrap(), output.len());
    say(format_args!(
        "{mode}: {killed} kills over {lives} lives; {written} records, first kept {first}"
    ));
}

#[test]
fn the_hand_off_is_exactly_once_under_kills() {
    let every = std::thread::spawn(|| campaign(false, 0x4a11));
    campaign(true, 0xb0ff);
    every.join().expect("the every-append campaign");
}
