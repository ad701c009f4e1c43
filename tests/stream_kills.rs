//! A stream job under SIGKILL at random moments: a child process runs a
//! filter + flat_map job from a source log into an output log and is
//! killed and started again under the same name until a life finishes the
//! source. The output must equal one uninterrupted run: every value once,
//! in order, none missing. Half the campaign writes the output `Buffered`,
//! half `EveryAppend`; small segments and a retention limit make the output
//! roll and drop old segments under the kills.
//!
//! A second pipeline keys the values, windows them on an event time of
//! their own (out of order, within the allowed lateness) and sums each
//! window; its output must equal that of the same job run once without a
//! kill: the same results at the same offsets with the same source times.
//!
//! A third keeps a table of sums per key; after the final run, the table
//! loaded from its snapshot and changelog must hold every source value
//! exactly once.
//!
//! Each campaign kills for `BACKBONE_STREAM_KILL_SECS` (default 20) and at
//! least `BACKBONE_STREAM_KILLS` times per durability and pipeline
//! (default 60 for the copy, 50 for the windows and the table); the
//! source starts with 60,000 values and grows by 200 before each life, so
//! every life has work when it is killed. The campaigns run side by side.
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use backbone::stream::{Lateness, Table, TableOptions, Window, Windowed};
use backbone::{Durability, EventLog, Options, Record, Start, Timestamp};
use common::{retry_locked, say, ChildProcess, Rng};

const CHILD: &str = "child_stream_kill";
const DIR_VAR: &str = "BACKBONE_STREAM_DIR";
const MODE_VAR: &str = "BACKBONE_STREAM_MODE";
const PIPELINE_VAR: &str = "BACKBONE_STREAM_PIPELINE";
const KILLS_VAR: &str = "BACKBONE_STREAM_KILLS";
const SECS_VAR: &str = "BACKBONE_STREAM_KILL_SECS";
const DEFAULT_SECS: u64 = 20;
/// Values appended to the source before each life that is to be killed.
const GROW: u64 = 200;
const DEFAULT_KILLS: usize = 60;
const DEFAULT_WINDOW_KILLS: usize = 50;
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

/// The windowed pipeline's event time for source value `v`: a millisecond
/// per value, up to 4 ms out of order.
fn event_time(v: u64) -> Timestamp {
    Timestamp::from_micros(v * 1_000 + (v * 7_919 % 4_000))
}

/// The windowed pipeline, writing into `output`.
fn start_windows(
    source: &EventLog<u64>,
    output: &EventLog<Windowed<u64, u64>>,
    slow: bool,
) -> backbone::stream::Job {
    source
        .stream(JOB, Start::Beginning)
        .event_time(
            |v| event_time(*v),
            Lateness::bounded(Duration::from_millis(3)),
        )
        .inspect(move |_| {
            let t = std::time::Instant::now();
            while slow && t.elapsed() < Duration::from_micros(5) {
                std::hint::spin_loop();
            }
        })
        .key_by(|v| v % 7)
        .window(Window::tumbling(Duration::from_millis(50)))
        .aggregate(|| 0u64, |sum, v| *sum += v)
        .stream()
        .batch_size(25)
        .to(output)
        .expect("start the job")
}

fn open_output<T>(dir: &Path, buffered: bool) -> EventLog<T>
where
    backbone::Postcard: backbone::Codec<T>,
{
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

/// Where the job resumes: its last checkpoint in `output`, as this life
/// found it on disk. (Not `Job::position()` after the start: the job may
/// have handled batches by then, and with a `Buffered` output those are
/// in memory only, which a kill may take back.)
fn resume_point<T>(source: &EventLog<u64>, output: &EventLog<T>) -> u64
where
    backbone::Postcard: backbone::Codec<T>,
{
    match output.last_checkpoint(JOB).expect("the checkpoint") {
        Some(checkpoint) => checkpoint.position_in(source).expect("its position"),
        None => 0,
    }
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
    if std::env::var(PIPELINE_VAR).expect("pipeline") == "table" {
        let durability = if buffered {
            Durability::Buffered
        } else {
            Durability::EveryAppend
        };
        let changelog = Options::new()
            .durability(durability)
            .segment_bytes(64 << 10);
        // Where it resumes: what an earlier life made durable.
        let loaded = Table::<u64, u64>::load(&source, JOB);
        let resumes = loaded.as_ref().map_or(0, |(_, at)| *at);
        let table: Table<u64, u64> = source
            .table_with(
                JOB,
                |v| v % 97,
                |sum: &mut u64, v| {
                    let t = std::time::Instant::now();
                    while t.elapsed() < Duration::from_micros(5) {
                        std::hint::spin_loop();
                    }
                    *sum += v;
                },
                TableOptions::new().batch_size(25).changelog(changelog),
            )
            .expect("start the table");
        say(format_args!("START {resumes} . {:?}", loaded.err()));
        table
            .wait_for(source.next_offset())
            .expect("the table catches up");
        table.stop();
        table.join().expect("join");
        // The last handle closes the changelog: a `Buffered` one writes out
        // what it holds.
        drop(table);
        say(format_args!("DONE ."));
        return;
    }
    if std::env::var(PIPELINE_VAR).expect("pipeline") == "windows" {
        let output = open_output(dir, buffered);
        let resumes = resume_point(&source, &output);
        let job = start_windows(&source, &output, true);
        say(format_args!("START {resumes} ."));
        job.wait_for(source.next_offset())
            .expect("the job finishes");
        job.stop();
        job.join().expect("join");
        output.close().expect("close");
        say(format_args!("DONE ."));
        return;
    }
    let output = open_output(dir, buffered);
    let resumes = resume_point(&source, &output);
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
    say(format_args!("START {resumes} ."));
    job.wait_for(source.next_offset())
        .expect("the job finishes");
    job.stop();
    job.join().expect("join");
    output.close().expect("close");
    say(format_args!("DONE ."));
}

#[derive(Clone, Copy, PartialEq)]
enum Pipeline {
    Copy,
    Windows,
    Table,
}

fn campaign(pipeline: Pipeline, buffered: bool, seed: u64) {
    let kills = std::env::var(KILLS_VAR)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(match pipeline {
            Pipeline::Copy => DEFAULT_KILLS,
            Pipeline::Windows | Pipeline::Table => DEFAULT_WINDOW_KILLS,
        });
    let budget = Duration::from_secs(
        std::env::var(SECS_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SECS),
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let grow = |from: u64, to: u64| {
        // A child another test forks can hold a copy of the lock until it
        // execs: retry (as open_output does).
        let source: EventLog<u64> = retry_locked(|| EventLog::open(dir.join("source"))).unwrap();
        let values: Vec<u64> = (from..to).collect();
        for chunk in values.chunks(5_000) {
            source.append_batch(chunk).unwrap();
        }
        source.close().unwrap();
    };
    grow(0, SOURCE_RECORDS);
    let mut total = SOURCE_RECORDS;
    let mode = if buffered { "buffered" } else { "every-append" };
    let name = match pipeline {
        Pipeline::Copy => "copy",
        Pipeline::Windows => "windows",
        Pipeline::Table => "table",
    };
    let env = [
        (DIR_VAR, OsString::from(dir)),
        (MODE_VAR, OsString::from(mode)),
        (PIPELINE_VAR, OsString::from(name)),
    ];
    let mut rng = Rng::new(seed);
    let (mut killed, mut lives, mut last_start) = (0, 0, 0);
    let started = std::time::Instant::now();
    loop {
        lives += 1;
        let killing = killed < kills || started.elapsed() < budget;
        if killing && lives > 1 {
            grow(total, total + GROW);
            total += GROW;
        }
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
            "{mode}: resumed behind an earlier life: {position} < {last_start}: {start}"
        );
        last_start = position;
        if killing {
            std::thread::sleep(Duration::from_micros(rng.range(200, 15_000)));
            let out = child.kill();
            if out.was_killed() {
                killed += 1;
            } else {
                // It finished first: the next life has new values.
                assert!(out.status.success(), "{mode}: child failed: {out:?}");
            }
            continue;
        }
        let done = child.wait_for_line("DONE", Duration::from_secs(120));
        let out = child.kill();
        assert!(
            done.is_some(),
            "{mode}: the last life did not finish: {out:?}"
        );
        break;
    }
    if pipeline == Pipeline::Windows {
        return check_windows(dir, buffered, total, killed, lives);
    }
    if pipeline == Pipeline::Table {
        return check_table(dir, buffered, total, killed, lives);
    }
    let output = open_output(dir, buffered);
    let expected: Vec<u64> = (0..total).flat_map(outputs).collect();
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

/// The windowed output after the kills against one uninterrupted run.
fn check_windows(dir: &Path, buffered: bool, total: u64, killed: usize, lives: usize) {
    let mode = if buffered { "buffered" } else { "every-append" };
    let once = tempfile::tempdir().unwrap();
    let expected: Vec<Record<Windowed<u64, u64>>> = {
        let source: EventLog<u64> =
            retry_locked(|| EventLog::open(once.path().join("source"))).unwrap();
        let values: Vec<u64> = (0..total).collect();
        source.append_batch(&values).unwrap();
        // No retention here: every result is compared.
        let output: EventLog<Windowed<u64, u64>> =
            retry_locked(|| EventLog::open(once.path().join("output"))).unwrap();
        let job = start_windows(&source, &output, false);
        job.wait_for(total).unwrap();
        job.stop();
        job.join().unwrap();
        output.read(Start::Beginning).map(|r| r.unwrap()).collect()
    };
    assert!(expected.len() > 1_000, "{mode}: windows were emitted");
    let output: EventLog<Windowed<u64, u64>> = open_output(dir, buffered);
    assert_eq!(
        output.next_offset(),
        expected.last().unwrap().offset + 1,
        "{mode}: no window twice, none missing"
    );
    let first = output.first_offset();
    let strip = |r: Record<Windowed<u64, u64>>| (r.offset, r.source_time, r.value);
    let kept: Vec<_> = output
        .read(Start::Beginning)
        .map(|r| strip(r.expect("read the output")))
        .collect();
    let expected: Vec<_> = expected
        .into_iter()
        .filter(|r| r.offset >= first)
        .map(strip)
        .collect();
    let differs = kept.iter().zip(&expected).position(|(a, b)| a != b);
    assert!(
        kept == expected,
        "{mode}: the windows as one run makes them: {} kept, {} expected, first difference at {differs:?}: {:?} against {:?}",
        kept.len(),
        expected.len(),
        differs.map(|i| &kept[i]),
        differs.map(|i| &expected[i]),
    );
    say(format_args!(
        "{mode} windows: {killed} kills over {lives} lives; {} results, first kept {first}",
        kept.len()
    ));
}

/// The table after the kills: every source value folded in exactly once.
fn check_table(dir: &Path, buffered: bool, total: u64, killed: usize, lives: usize) {
    let mode = if buffered { "buffered" } else { "every-append" };
    let source: EventLog<u64> =
        retry_locked(|| Options::new().read_only().open(dir.join("source"))).unwrap();
    let (table, position) = Table::<u64, u64>::load(&source, JOB).expect("load the table");
    assert_eq!(position, total, "{mode}: the table caught up");
    let mut expected = std::collections::HashMap::new();
    for v in 0..total {
        *expected.entry(v % 97).or_insert(0u64) += v;
    }
    assert!(table == expected, "{mode}: each value folded in once");
    say(format_args!(
        "{mode} table: {killed} kills over {lives} lives; {} keys",
        table.len()
    ));
}

#[test]
fn a_table_is_exactly_once_under_kills() {
    let every = std::thread::spawn(|| campaign(Pipeline::Table, false, 0x7ab1e));
    campaign(Pipeline::Table, true, 0x7ab1f);
    every.join().expect("the every-append campaign");
}

#[test]
fn a_stream_job_is_exactly_once_under_kills() {
    let every = std::thread::spawn(|| campaign(Pipeline::Copy, false, 0x5eed));
    campaign(Pipeline::Copy, true, 0xfeed);
    every.join().expect("the every-append campaign");
}

#[test]
fn a_windowed_job_is_exactly_once_under_kills() {
    let every = std::thread::spawn(|| campaign(Pipeline::Windows, false, 0x3eed));
    campaign(Pipeline::Windows, true, 0xbeed);
    every.join().expect("the every-append campaign");
}
