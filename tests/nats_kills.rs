#![cfg(feature = "nats")]
//! The NATS bridge under crashes, against a real nats-server
//! (`sync_interval: always`, so what it acknowledged survives its own
//! SIGKILL):
//!
//! - a child process appending to a log and mirroring it is SIGKILLed at
//!   random moments and started again, over and over; the subject must
//!   end up holding every offset of the log once, in order, with the
//!   log's bytes;
//! - a child process running a source into its own log is SIGKILLed the
//!   same way while a mirror in the parent keeps filling the stream; the
//!   source's log must end up holding the mirrored log's records once, in
//!   order;
//! - the server itself is SIGKILLed, kept down and restarted under the
//!   same store and port, three times, while a mirror and a source run in
//!   this process and the log keeps growing.
//!
//! The child lives alternate the log's durability (`EveryAppend`,
//! `Buffered`, `Interval`): a kill takes back what a buffered life had
//! not synced, and the records appended after it take those offsets with
//! other payloads, so a bridge that let an unsynced record out would show
//! as a payload the log does not hold.
//!
//! `BACKBONE_NATS_KILL_SECS` (default 40) is the mirror campaign's time
//! budget; the source campaign gets three quarters of it. Each kills at
//! least 50 times, however long that takes.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backbone::nats::{Mirror, Source};
use backbone::{Durability, EventLog, Options, SourcePosition};
use common::jetstream::{
    assert_same_records, assert_subject_holds, keep_appending, stored, stream_info, values,
    SetOnDrop,
};
use common::nats::NatsServer;
use common::{checkout, retry_locked, say, Checkout, ChildProcess, Rng};

const WAIT: Duration = Duration::from_secs(60);
const SECS_VAR: &str = "BACKBONE_NATS_KILL_SECS";
const DEFAULT_SECS: u64 = 40;
const MIN_KILLS: usize = 50;

const DIR_VAR: &str = "BACKBONE_NATS_KILL_DIR";
const URL_VAR: &str = "BACKBONE_NATS_KILL_URL";
const LIFE_VAR: &str = "BACKBONE_NATS_KILL_LIFE";
/// `kill` (a life to be killed) or `final` (the life that finishes).
const ROLE_VAR: &str = "BACKBONE_NATS_KILL_ROLE";
/// For the source's final life: the stream sequence to reach.
const UNTIL_VAR: &str = "BACKBONE_NATS_KILL_UNTIL";

const MIRROR_CHILD: &str = "child_nats_mirror_kill";
const SOURCE_CHILD: &str = "child_nats_source_kill";
const MIRROR_SUBJECT: &str = "kills.mirror";
const SOURCE_SUBJECT: &str = "kills.source";

/// The record a child appends at `offset` in life `life`: the offset is
/// the order id, the life the customer, so that a record lost to a kill
/// and appended again at its offset by a later life has other bytes.
fn record(offset: u64, life: u64) -> Checkout {
    Checkout {
        customer_id: life,
        ..checkout(offset)
    }
}

/// Asserts that `values` are records `0..` (order id = offset).
fn assert_values_are_offsets(values: &[Checkout], what: &str) {
    let wrong = values
        .iter()
        .enumerate()
        .find(|(i, v)| v.order_id != *i as u64 || v.sku != checkout(*i as u64).sku);
    assert!(wrong.is_none(), "{what}: record out of place: {wrong:?}");
}

fn durability(life: u64) -> Durability {
    match life % 3 {
        0 => Durability::EveryAppend,
        1 => Durability::Buffered,
        _ => Durability::Interval(Duration::from_millis(20)),
    }
}

fn env_u64(name: &str) -> u64 {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is set"))
        .parse()
        .unwrap_or_else(|_| panic!("{name} is a number"))
}

fn budget() -> Duration {
    Duration::from_secs(
        std::env::var(SECS_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_SECS),
    )
}

/// The numbers after the first word of a child's line.
fn numbers(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .skip(1)
        .map_while(|w| w.parse().ok())
        .collect()
}

/// How a parent ends a life to be killed: a SIGKILL some time after its
/// START line (`after_start_ms`, uniformly) (or, one time in eight, a few milliseconds after the spawn,
/// during the log's open and recovery). Returns the START line's numbers
/// if it printed one. A life that ended by itself fails the test: it only
/// ends when killed.
fn kill_life(
    child: ChildProcess,
    rng: &mut Rng,
    what: &str,
    after_start_ms: (u64, u64),
) -> Option<Vec<u64>> {
    let mut child = child;
    let mut start = None;
    if rng.one_in(8) {
        std::thread::sleep(Duration::from_micros(rng.range(500, 30_000)));
    } else {
        let Some(line) = child.wait_for_line("START", WAIT) else {
            panic!("{what}: the child did not start: {:?}", child.kill());
        };
        start = Some(numbers(&line));
        let (lo, hi) = after_start_ms;
        std::thread::sleep(Duration::from_micros(rng.range(lo * 1000, hi * 1000)));
    }
    let out = child.kill();
    if !out.was_killed() {
        panic!("{what}: the child ended before its kill: {out:?}");
    }
    if start.is_none() {
        // It may have printed START before the kill.
        start = out
            .lines
            .iter()
            .find(|l| l.starts_with("START"))
            .map(|l| numbers(l));
    }
    start
}

/// Lets a final life run to its end: its DONE line (`None` if it never
/// came, or the child then failed) and how it ended.
fn finish_life(mut child: ChildProcess) -> (Option<String>, common::ChildOutput) {
    let done = child.wait_for_line("DONE", Duration::from_secs(120));
    // After DONE it stops its bridge and closes its log, then exits.
    let deadline = Instant::now() + WAIT;
    while done.is_some() && child.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.kill();
    (done.filter(|_| out.status.success()), out)
}

// ---- 1. the mirror killed over and over --------------------------------------

/// A life of the mirror campaign: opens the log, starts the mirror,
/// appends records in small batches until killed (or, as the final life,
/// appends a last batch and waits for the mirror to catch up).
#[test]
fn child_nats_mirror_kill() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let url = std::env::var(URL_VAR).expect("the server's url");
    let life = env_u64(LIFE_VAR);
    let last = std::env::var(ROLE_VAR).expect("role") == "final";
    let log: EventLog<Checkout> = retry_locked(|| {
        Options::new()
            .durability(durability(life))
            .open(Path::new(&dir).join("log"))
    })
    .expect("open the log");
    let mut rng = Rng::new(u64::from(std::process::id()) ^ (life << 32));
    // Small batches make many publishes per life: more kills land between
    // a batch's send and its acknowledgement. (They also let the subject
    // fall behind the log, which the final life, with the default of 1000,
    // catches up.)
    let batch_size = if last {
        1000
    } else {
        [1, 7, 50, 1000][rng.range(0, 4) as usize]
    };
    let mirror = Mirror::new(&log, &url, MIRROR_SUBJECT)
        .expect("the mirror")
        .batch_size(batch_size)
        .start()
        .expect("start the mirror");
    say(format_args!(
        "START {} {} {} {batch_size} .",
        log.next_offset(),
        log.durable_offset(),
        mirror.position()
    ));
    if last {
        let next = log.next_offset();
        let values: Vec<Checkout> = (next..next + 100).map(|o| record(o, life)).collect();
        log.append_batch(&values).expect("append");
        let end = log.next_offset();
        let waited = Instant::now();
        while !mirror
            .wait_for(end, Duration::from_secs(5))
            .expect("the mirror runs")
        {
            say(format_args!(
                "PROGRESS {} {} {:?} .",
                mirror.position(),
                mirror.lag(),
                mirror.status()
            ));
            assert!(
                waited.elapsed() < WAIT,
                "the mirror did not catch up: {mirror:?}"
            );
        }
        assert_eq!(mirror.lag(), 0, "{mirror:?}");
        say(format_args!(
            "DONE {end} {} {} .",
            mirror.position(),
            mirror.status().retries
        ));
        mirror.stop();
        mirror.join().expect("the mirror ends cleanly");
        log.close().expect("close the log");
        return;
    }
    loop {
        let next = log.next_offset();
        let n = rng.range(1, 30);
        let values: Vec<Checkout> = (next..next + n).map(|o| record(o, life)).collect();
        log.append_batch(&values).expect("append");
        if rng.one_in(40) {
            std::thread::sleep(Duration::from_millis(rng.range(10, 60)));
        } else {
            std::thread::sleep(Duration::from_micros(rng.range(0, 2_000)));
        }
    }
}

#[test]
fn a_mirror_killed_over_and_over_publishes_each_record_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let began = Instant::now();
    let budget = budget();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut rng = Rng::new(0x0a75_0001);
    let (mut kills, mut lives) = (0usize, 0u64);
    let mut last_start: Option<Vec<u64>> = None;
    // Lives after which the mirror's registered position had moved on.
    let mut progressed = 0;
    let env = |life: u64, role: &str| {
        [
            (DIR_VAR, OsString::from(dir)),
            (URL_VAR, OsString::from(server.url())),
            (LIFE_VAR, OsString::from(life.to_string())),
            (ROLE_VAR, OsString::from(role)),
        ]
    };
    while kills < MIN_KILLS || began.elapsed() < budget {
        lives += 1;
        let child = ChildProcess::spawn(MIRROR_CHILD, &env(lives, "kill"));
        let start = kill_life(child, &mut rng, "mirror", (2, 400));
        kills += 1;
        if let Some(start) = start {
            // [next offset, durable offset, mirror position] at the start:
            // the durable offset and the mirror's position never go back.
            if let Some(before) = &last_start {
                assert!(
                    start[1] >= before[1] && start[2] >= before[2],
                    "life {lives} started behind an earlier one: {start:?} after {before:?}"
                );
                progressed += usize::from(start[2] > before[2]);
            }
            last_start = Some(start);
        }
    }
    lives += 1;
    let child = ChildProcess::spawn(MIRROR_CHILD, &env(lives, "final"));
    let (done, out) = finish_life(child);
    let done = numbers(&done.unwrap_or_else(|| panic!("the final life failed: {out:?}")));

    let log: EventLog<Checkout> = retry_locked(|| Options::new().open(dir.join("log"))).unwrap();
    let end = log.next_offset();
    assert_eq!(done[0], end, "the final life's end is the log's");
    let kept = values(&log);
    assert_eq!(kept.len() as u64, end);
    assert_values_are_offsets(&kept, "the mirrored log");
    let messages = stored(&server.url(), "kills_mirror", "kills.mirror.>");
    assert_subject_holds(&messages, &log);
    let reader = log
        .readers()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "nats-mirror.kills_mirror")
        .expect("the mirror's reader");
    assert_eq!(reader.position, Some(end), "the reader file's position");
    say(format_args!(
        "mirror under kills: {kills} kills over {lives} lives in {:.1?} ({progressed} \
         lives found the mirror further on than the one before); {end} records published \
         once each ({} retries in the final life)",
        began.elapsed(),
        done[2]
    ));
}

// ---- 2. the source killed over and over --------------------------------------

/// A life of the source campaign: opens its log, starts the source, and
/// runs until killed (or, as the final life, until the stream sequence in
/// `UNTIL_VAR` is appended).
#[test]
fn child_nats_source_kill() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let url = std::env::var(URL_VAR).expect("the server's url");
    let life = env_u64(LIFE_VAR);
    let last = std::env::var(ROLE_VAR).expect("role") == "final";
    // Every other life buffers its appends: a kill then takes back whole
    // batches with their checkpoints.
    let durability = if life.is_multiple_of(2) {
        Durability::EveryAppend
    } else {
        Durability::Buffered
    };
    let log: EventLog<Checkout> = retry_locked(|| {
        Options::new()
            .durability(durability)
            .open(Path::new(&dir).join("remote"))
    })
    .expect("open the source's log");
    let sequence = log
        .last_checkpoint("nats-source.kills_source")
        .expect("the checkpoint")
        .map_or(0, |c| match c.positions() {
            [SourcePosition::External { sequence, .. }] => *sequence,
            other => panic!("the checkpoint holds {other:?}"),
        });
    let mut rng = Rng::new(u64::from(std::process::id()) ^ (life << 32));
    let source = Source::new(&url, SOURCE_SUBJECT, &log)
        .expect("the source")
        .batch_size(rng.range(1, 200) as usize)
        .start()
        .expect("start the source");
    say(format_args!("START {} {sequence} .", log.next_offset()));
    if !last {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    let until = env_u64(UNTIL_VAR);
    assert!(
        source.wait_for(until, WAIT).expect("the source runs"),
        "the source did not reach sequence {until}: {source:?}"
    );
    let retries = source.status().retries;
    source.stop();
    source.join().expect("the source ends cleanly");
    say(format_args!("DONE {} {retries} .", log.next_offset()));
    log.close().expect("close the source's log");
}

#[test]
fn a_source_killed_over_and_over_appends_each_message_once() {
    const FIRST: u64 = 50_000;
    /// Records the parent appends (and mirrors) before each life.
    const GROW: u64 = 300;
    let Some(server) = NatsServer::start() else {
        return;
    };
    let began = Instant::now();
    let budget = budget() * 3 / 4;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let local: EventLog<Checkout> = Options::new().open(dir.join("local")).unwrap();
    let append = |count: u64| {
        let next = local.next_offset();
        let values: Vec<Checkout> = (next..next + count).map(checkout).collect();
        for chunk in values.chunks(1000) {
            local.append_batch(chunk).unwrap();
        }
    };
    append(FIRST);
    let mirror = Mirror::new(&local, &server.url(), SOURCE_SUBJECT)
        .unwrap()
        .start()
        .unwrap();
    assert!(mirror.wait_for(FIRST, WAIT).unwrap(), "{mirror:?}");
    let mut rng = Rng::new(0x0a75_0002);
    let (mut kills, mut lives) = (0usize, 0u64);
    let mut last_start: Option<Vec<u64>> = None;
    // Lives after which the source's checkpoint had moved on.
    let mut progressed = 0;
    let env = |life: u64, role: &str, until: u64| {
        [
            (DIR_VAR, OsString::from(dir)),
            (URL_VAR, OsString::from(server.url())),
            (LIFE_VAR, OsString::from(life.to_string())),
            (ROLE_VAR, OsString::from(role)),
            (UNTIL_VAR, OsString::from(until.to_string())),
        ]
    };
    while kills < MIN_KILLS || began.elapsed() < budget {
        lives += 1;
        // New messages for each life, published while it runs.
        append(GROW);
        let child = ChildProcess::spawn(SOURCE_CHILD, &env(lives, "kill", 0));
        // Longer lives: a source needs a moment to connect and create its
        // consumer before it appends anything.
        let start = kill_life(child, &mut rng, "source", (20, 700));
        kills += 1;
        if let Some(start) = start {
            // [next offset, checkpoint sequence]: one stream, one log, so
            // the checkpoint's sequence is the records appended.
            assert_eq!(
                start[0], start[1],
                "life {lives}: the log and its checkpoint disagree"
            );
            if let Some(before) = &last_start {
                assert!(
                    start[1] >= before[1],
                    "life {lives} started behind an earlier one: {start:?} after {before:?}"
                );
                progressed += usize::from(start[1] > before[1]);
            }
            last_start = Some(start);
        }
    }
    let total = local.next_offset();
    assert!(mirror.wait_for(total, WAIT).unwrap(), "{mirror:?}");
    assert_eq!(mirror.lag(), 0);
    let until = stream_info(&server.url(), "kills_source")
        .state
        .last_sequence;
    assert_eq!(until, total, "one message per record on the stream");
    lives += 1;
    let child = ChildProcess::spawn(SOURCE_CHILD, &env(lives, "final", until));
    let (done, out) = finish_life(child);
    let done = numbers(&done.unwrap_or_else(|| panic!("the final life failed: {out:?}")));
    mirror.stop();
    mirror.join().unwrap();

    let remote: EventLog<Checkout> =
        retry_locked(|| Options::new().open(dir.join("remote"))).unwrap();
    assert_eq!(remote.next_offset(), done[0]);
    let copied: Vec<Checkout> = values(&remote);
    let expected: Vec<Checkout> = values(&local);
    assert_eq!(expected.len() as u64, total);
    assert_values_are_offsets(&copied, "the source's log");
    assert_same_records(&copied, &expected);
    let checkpoint = remote
        .last_checkpoint("nats-source.kills_source")
        .unwrap()
        .unwrap();
    assert_eq!(
        checkpoint.positions(),
        &[SourcePosition::External {
            name: "nats:kills_source".into(),
            sequence: total
        }]
    );
    let messages = stored(&server.url(), "kills_source", "kills.source.>");
    assert_subject_holds(&messages, &local);
    say(format_args!(
        "source under kills: {kills} kills over {lives} lives in {:.1?} ({progressed} \
         lives found the checkpoint further on than the one before); {total} records \
         appended once each ({} retries in the final life)",
        began.elapsed(),
        done[1]
    ));
}

// ---- 3. the server killed and restarted ----------------------------------------

#[test]
fn the_server_killed_and_restarted_mid_stream_loses_and_repeats_nothing() {
    const ROUNDS: usize = 3;
    let Some(mut server) = NatsServer::start() else {
        return;
    };
    let began = Instant::now();
    let url = server.url();
    let tmp = tempfile::tempdir().unwrap();
    let local: EventLog<Checkout> = Options::new().open(tmp.path().join("local")).unwrap();
    let remote: EventLog<Checkout> = Options::new().open(tmp.path().join("remote")).unwrap();
    let mirror = Mirror::new(&local, &url, "outage.checkouts")
        .unwrap()
        .start()
        .unwrap();
    let source = Source::new(&url, "outage.checkouts", &remote)
        .unwrap()
        .start()
        .unwrap();
    let stop = AtomicBool::new(false);
    let mut rounds = Vec::new();
    std::thread::scope(|scope| {
        // Stops the appender however this scope ends, a failed assertion
        // included (the scope joins it before the panic goes on).
        let _stop = SetOnDrop(&stop);
        // The application keeps appending throughout.
        let appender = scope.spawn(|| keep_appending(&local, &stop, 0x0a75_0003));
        for round in 0..ROUNDS {
            // Traffic flows before the crash.
            std::thread::sleep(Duration::from_millis(700));
            let (m, s) = (mirror.position() + 1, source.position() + 1);
            assert!(
                mirror.wait_for(m, WAIT).unwrap() && source.wait_for(s, WAIT).unwrap(),
                "round {round}: no progress: {mirror:?} {source:?}"
            );
            let retries = (mirror.status().retries, source.status().retries);
            let lag_at_kill = mirror.lag();
            server.kill();
            let down = Instant::now();
            // Down for 1.5 s: the bridges notice, the log keeps growing.
            let (mut mirror_noticed, mut source_noticed) = (false, false);
            while down.elapsed() < Duration::from_millis(1500) {
                let (m, s) = (mirror.status(), source.status());
                mirror_noticed |= !m.connected || m.retries > retries.0;
                source_noticed |= !s.connected || s.retries > retries.1;
                std::thread::sleep(Duration::from_millis(10));
            }
            let lag_down = mirror.lag();
            let mirror_status = mirror.status();
            assert!(
                mirror_noticed && source_noticed,
                "round {round}: the bridges did not notice the server's death: \
                 {mirror:?} {source:?}"
            );
            assert!(
                lag_down > lag_at_kill && lag_down > 50,
                "round {round}: the mirror's lag did not grow while the server was down: \
                 {lag_at_kill} at the kill, {lag_down} after"
            );
            server.restart();
            let up = Instant::now();
            // Caught up again (with the appends still going).
            let target = local.durable_offset();
            assert!(
                mirror.wait_for(target, WAIT).unwrap(),
                "round {round}: the mirror did not recover: {mirror:?}"
            );
            let recovered = up.elapsed();
            rounds.push((lag_at_kill, lag_down, mirror_status, recovered));
        }
        stop.store(true, Ordering::Relaxed);
        appender.join().unwrap();
    });
    let outages_took = began.elapsed();
    let total = local.next_offset();
    assert!(mirror.wait_for(total, WAIT).unwrap(), "{mirror:?}");
    assert_eq!(mirror.lag(), 0, "{mirror:?}");
    // One stream, one log: sequence n is offset n - 1.
    assert!(source.wait_for(total, WAIT).unwrap(), "{source:?}");
    let (mirror_retries, source_retries) = (mirror.status().retries, source.status().retries);
    mirror.stop();
    mirror.join().unwrap();
    source.stop();
    source.join().unwrap();

    let messages = stored(&url, "outage_checkouts", "outage.checkouts.>");
    assert_subject_holds(&messages, &local);
    let expected: Vec<Checkout> = values(&local);
    assert_values_are_offsets(&expected, "the mirrored log");
    remote.flush().unwrap();
    let copied: Vec<Checkout> = values(&remote);
    assert_same_records(&copied, &expected);
    for (i, (at_kill, down, status, recovered)) in rounds.iter().enumerate() {
        say(format_args!(
            "outage {i}: lag {at_kill} at the kill, {down} after 1.5 s down \
             (connected {}, retries {}); caught up {recovered:.1?} after the restart",
            status.connected, status.retries
        ));
    }
    say(format_args!(
        "server killed {ROUNDS} times in {outages_took:.1?}, checked by {:.1?}: {total} \
         records published and appended once each (retries: mirror {mirror_retries}, source \
         {source_retries})",
        began.elapsed()
    ));
}
