//! Live subscriptions: history then the live tail, exactly once, in order;
//! slow subscribers that fall behind without blocking anyone; bounded
//! threads and memory; durable consumers; endings and errors.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use backbone::{Durability, Error, EventLog, Options, Start, SubscribeOptions};

fn open(dir: &std::path::Path, durability: Durability) -> EventLog<u64> {
    Options::new()
        .durability(durability)
        .segment_bytes(64 << 10)
        .max_record_bytes(1024)
        .open(dir)
        .unwrap()
}

/// A line from /proc/self/status, in kB or as a count (Linux only; the
/// tests that use it are skipped elsewhere).
fn proc_status(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn history_then_live_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::EveryAppend);
    log.append_batch(&(0..100).collect::<Vec<_>>()).unwrap();
    let sub = log.subscribe(Start::Beginning).unwrap();
    let from_end = log.subscribe(Start::End).unwrap();
    // A start past the end is refused (not waited for), as everywhere a
    // start is taken; the end itself is where the next append lands.
    assert!(matches!(
        log.subscribe(Start::Offset(150)),
        Err(Error::OffsetOutOfRange {
            requested: 150,
            next: 100
        })
    ));
    let future = log.subscribe(Start::Offset(100)).unwrap();
    for i in 100..200 {
        log.append(&i).unwrap();
    }
    for expected in 0..200 {
        let rec = sub.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!((rec.offset, rec.value), (expected, expected));
    }
    for expected in 100..200 {
        assert_eq!(from_end.recv().unwrap().offset, expected);
    }
    for expected in 100..200 {
        assert_eq!(future.recv().unwrap().offset, expected);
    }
    assert!(sub.try_recv().unwrap().is_none());
    assert_eq!(sub.lag(), 0);
}

#[test]
fn sixteen_subscribers_from_random_offsets_while_appends_go_on() {
    const TOTAL: u64 = 50_000;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::Buffered);
    log.append_batch(&(0..5_000).collect::<Vec<_>>()).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (log, done) = (log.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 5_000..TOTAL {
                log.append(&i).unwrap();
                if i % 100 == 0 {
                    log.flush().unwrap();
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            log.flush().unwrap();
            done.store(true, Ordering::Release);
        })
    };
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut consumers = Vec::new();
    for i in 0..16 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let start = match i % 4 {
            0 => Start::Beginning,
            1 => Start::End,
            // Anywhere up to the end (a start past it is an error).
            _ => Start::Offset(seed % (log.next_offset() + 1)),
        };
        // The earliest a subscription may start: for Start::End, the end
        // before subscribing (appends go on meanwhile).
        let earliest = match start {
            Start::Beginning => 0,
            Start::End => log.read(Start::End).position(),
            Start::Offset(o) => o,
            _ => unreachable!(),
        };
        let sub = log
            .subscribe_with(SubscribeOptions::new(start).capacity(64))
            .unwrap();
        let done = done.clone();
        consumers.push(std::thread::spawn(move || {
            let mut first_seen: Option<u64> = None;
            let mut next: Option<u64> = None;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match sub.recv_timeout(Duration::from_millis(100)).unwrap() {
                    Some(rec) => {
                        first_seen.get_or_insert(rec.offset);
                        let want = *next.get_or_insert(rec.offset);
                        assert_eq!(rec.offset, want, "gap or repeat");
                        assert_eq!(rec.value, rec.offset);
                        next = Some(want + 1);
                    }
                    None if done.load(Ordering::Acquire) && sub.lag() == 0 => break,
                    None => assert!(Instant::now() < deadline, "stalled: {sub:?}"),
                }
            }
            let first = first_seen.expect("the producer outlasts the subscribing");
            match start {
                Start::End => assert!(first >= earliest),
                _ => assert_eq!(first, earliest, "wrong first record"),
            }
            next
        }));
        std::thread::sleep(Duration::from_micros(300));
    }
    producer.join().unwrap();
    for consumer in consumers {
        // Every subscriber received a contiguous run from where it asked
        // to the last record.
        assert_eq!(consumer.join().unwrap(), Some(TOTAL));
    }
}

#[test]
fn every_subscriber_sees_exactly_its_start_offset_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::EveryAppend);
    log.append_batch(&(0..1000).collect::<Vec<_>>()).unwrap();
    for start in [0, 1, 499, 999, 1000] {
        let sub = log.subscribe(Start::Offset(start)).unwrap();
        if start == 1000 {
            log.append(&1000).unwrap();
        }
        assert_eq!(sub.recv().unwrap().offset, start);
    }
}

#[test]
fn a_stalled_subscriber_blocks_nobody_and_catches_up_in_bounded_memory() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = Options::new()
        .durability(Durability::Buffered)
        .segment_bytes(8 << 20)
        .open(dir.path())
        .unwrap();
    let stalled = log
        .subscribe_with(SubscribeOptions::new(Start::Beginning).capacity(256))
        .unwrap();
    let live = log.subscribe(Start::Beginning).unwrap();
    let live_reader = std::thread::spawn(move || {
        let mut next = 0;
        while next < N {
            let rec = live.recv_timeout(Duration::from_secs(60)).unwrap().unwrap();
            assert_eq!(rec.offset, next);
            next += 1;
        }
    });
    let anon_before = proc_status("RssAnon:");
    // The producer finishes while the stalled subscriber reads nothing.
    let batch: Vec<u64> = (0..1000).collect();
    for chunk in 0..N / 1000 {
        let range = log.append_batch(&batch).unwrap();
        assert_eq!(range.start, chunk * 1000);
    }
    log.flush().unwrap();
    live_reader.join().unwrap();
    // It has read nothing: reading happens on the receiving thread.
    assert_eq!(stalled.lag(), N);
    if let (Some(before), Some(after)) = (anon_before, proc_status("RssAnon:")) {
        // 1M records are ~30 MiB on disk; the stalled subscriber may hold
        // at most its 256-record read-ahead. Allow generous slack for the
        // allocator and the test harness.
        assert!(
            after.saturating_sub(before) < 24 * 1024,
            "anonymous memory grew by {} KiB",
            after - before
        );
    }
    for expected in 0..N {
        let rec = stalled
            .recv_timeout(Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!(rec.offset, expected);
    }
    assert_eq!(stalled.lag(), 0);
}

/// The crate's threads in this process: its background pool's, by name.
fn crate_threads() -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("backbone-"))
            .count(),
    )
}

/// The crate starts no thread per log or per subscription: a monolith may
/// hold hundreds of logs. Its background pool (a timer, twelve sync threads,
/// two for spare segments: README) is shared by the whole process.
#[test]
fn threads_started_by_the_crate_stay_within_the_pool_bound() {
    const POOL: usize = 15;
    let dir = tempfile::tempdir().unwrap();
    let logs: Vec<EventLog<u64>> = (0..200)
        .map(|i| {
            Options::new()
                .durability(Durability::Interval(Duration::from_millis(5)))
                .segment_bytes(64 << 10)
                .open(dir.path().join(format!("log-{i}")))
                .unwrap()
        })
        .collect();
    let subs: Vec<_> = logs
        .iter()
        .flat_map(|log| (0..5).map(|_| log.subscribe(Start::Beginning).unwrap()))
        .collect();
    // Enough appends to roll (spare segments are prepared in the
    // background) and to need interval syncs everywhere.
    let batch: Vec<u64> = (0..200).collect();
    for _ in 0..30 {
        for log in &logs {
            log.append_batch(&batch).unwrap();
        }
    }
    for (i, sub) in subs.iter().enumerate() {
        for expected in 0..6000 {
            let rec = sub.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(rec.map(|r| r.offset), Some(expected), "subscription {i}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while logs.iter().any(|log| log.durable_offset() < 6000) {
        assert!(Instant::now() < deadline, "interval syncs fell behind");
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Some(threads) = crate_threads() {
        assert!(
            (1..=POOL).contains(&threads),
            "{threads} threads for 200 logs and 1,000 subscriptions"
        );
    }
}

#[test]
fn filters_run_before_records_are_handed_over() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::Buffered);
    let rare = log
        .subscribe_with(
            SubscribeOptions::new(Start::Beginning)
                .capacity(1)
                .filter(|v: &u64| v.is_multiple_of(1000)),
        )
        .unwrap();
    log.append_batch(&(0..10_000).collect::<Vec<_>>()).unwrap();
    log.flush().unwrap();
    let got: Vec<u64> = (0..10)
        .map(|_| {
            rare.recv_timeout(Duration::from_secs(10))
                .unwrap()
                .unwrap()
                .value
        })
        .collect();
    assert_eq!(got, (0..10).map(|i| i * 1000).collect::<Vec<_>>());
}

#[test]
fn durable_consumers_resume_after_their_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::EveryAppend);
    log.append_batch(&(0..500).collect::<Vec<_>>()).unwrap();
    let mut handled = Vec::new();
    // Three lives of the shipping service, each "killed" mid-stream: it
    // stops without committing what it handled after its last commit.
    for life in 0..3u64 {
        let shipping = log.consumer("shipping").unwrap().subscribe().unwrap();
        let resume = shipping.position();
        let mut uncommitted = Vec::new();
        for _ in 0..(120 + life * 7) {
            let rec = shipping.recv().unwrap();
            uncommitted.push(rec.offset);
            if rec.offset % 10 == 9 {
                shipping.commit(rec.offset + 1).unwrap();
                handled.append(&mut uncommitted);
            }
        }
        assert!(handled.first().is_none_or(|&f| f == 0));
        assert_eq!(
            uncommitted.first().copied().unwrap_or(resume),
            resume.max(uncommitted.first().copied().unwrap_or(resume))
        );
        drop(shipping);
    }
    let committed = log.consumer("shipping").unwrap().position();
    assert_eq!(handled, (0..committed).collect::<Vec<_>>());
    // A restarted process sees the same position.
    drop(log);
    let log = open(dir.path(), Durability::EveryAppend);
    let shipping = log.consumer("shipping").unwrap().subscribe().unwrap();
    assert_eq!(shipping.position(), committed);
    assert_eq!(shipping.recv().unwrap().offset, committed);
}

#[test]
fn closing_or_dropping_the_log_ends_every_subscription() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::EveryAppend);
    log.append_batch(&[1, 2, 3]).unwrap();
    let sub = log.subscribe(Start::Beginning).unwrap();
    let reader =
        std::thread::spawn(move || sub.iter().map(|r| r.unwrap().value).collect::<Vec<_>>());
    std::thread::sleep(Duration::from_millis(50));
    log.close().unwrap();
    assert_eq!(reader.join().unwrap(), vec![1, 2, 3]);

    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::EveryAppend);
    let sub = log.subscribe(Start::End).unwrap();
    drop(log);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match sub.recv_timeout(Duration::from_millis(100)) {
            Err(Error::Closed) => break,
            Ok(None) => assert!(Instant::now() < deadline, "never ended"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // An ended subscription's iterator yields nothing, not an error.
    assert!(sub.iter().next().is_none());
}

#[test]
fn dropped_subscriptions_release_their_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::Buffered);
    for _ in 0..200 {
        drop(log.subscribe(Start::Beginning).unwrap());
    }
    let kept = log.subscribe(Start::Beginning).unwrap();
    log.append(&7).unwrap();
    assert_eq!(kept.recv().unwrap().value, 7);
}

#[test]
fn a_select_over_the_receiver_works() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::EveryAppend);
    let sub = log.subscribe(Start::Beginning).unwrap();
    let (shutdown_tx, shutdown) = backbone::channel::bounded::<()>(1);
    // A select before anything is appended finds nothing, and the next one
    // wakes up for the append made from another thread meanwhile.
    backbone::channel::select! {
        recv(sub.ready()) -> _ => assert!(sub.try_recv().unwrap().is_none()),
        recv(shutdown) -> _ => panic!("shutdown first"),
    }
    let appender = {
        let log = log.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            log.append(&42).unwrap();
        })
    };
    let mut got = Vec::new();
    while got.is_empty() {
        backbone::channel::select! {
            recv(sub.ready()) -> _ => {
                while let Some(rec) = sub.try_recv().unwrap() {
                    got.push(rec.value);
                }
            }
            recv(shutdown) -> _ => panic!("shutdown first"),
            default(Duration::from_secs(10)) => panic!("no wake-up for the append"),
        }
    }
    assert_eq!(got, [42]);
    appender.join().unwrap();
    shutdown_tx.send(()).unwrap();
}

#[test]
fn a_read_only_handle_follows_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let writer = open(dir.path(), Durability::EveryAppend);
    writer.append(&0).unwrap();
    let reader: EventLog<u64> = Options::new().read_only().open(dir.path()).unwrap();
    let sub = reader.subscribe(Start::Beginning).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(2));
    let producer = {
        let (stop, barrier) = (stop.clone(), barrier.clone());
        std::thread::spawn(move || {
            barrier.wait();
            let mut i = 1;
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                writer.append(&i).unwrap();
                i += 1;
            }
            i
        })
    };
    barrier.wait();
    let mut seen = HashSet::new();
    let mut next = 0;
    while next < 2000 {
        let rec = sub.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(rec.offset, next);
        assert_eq!(rec.value, next);
        assert!(seen.insert(rec.offset));
        next += 1;
    }
    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
}

#[cfg(feature = "async")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_is_a_stream() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), Durability::EveryAppend);
    let mut sub = log.subscribe(Start::Beginning).unwrap();
    let producer = {
        let log = log.clone();
        tokio::task::spawn_blocking(move || {
            for i in 0..1000u64 {
                log.append(&i).unwrap();
            }
        })
    };
    for expected in 0..1000 {
        let rec = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .expect("a record within 30 s")
            .expect("the stream goes on")
            .unwrap();
        assert_eq!(rec.offset, expected);
    }
    producer.await.unwrap();
    log.close().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .unwrap();
    assert!(end.is_none(), "the stream ends when the log closes");
}
