//! Stream jobs from one log into another: operators, positions and lag,
//! stop and join, restarts that resume exactly where the last batch was
//! committed, the first run's start pinned, and bad input (names, a job
//! started twice, a panicking function, a source closed under a job).

use std::time::Duration;

use backbone::{Error, EventLog, Start};

fn values<T: Clone>(log: &EventLog<T>) -> Vec<T>
where
    backbone::Postcard: backbone::Codec<T>,
{
    log.read(Start::Beginning)
        .map(|r| r.unwrap().value)
        .collect()
}

#[test]
fn operators_shape_the_output_and_the_job_reports_its_position() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u32> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<String> = EventLog::open(tmp.path().join("output")).unwrap();
    source.append_batch(&(0..100).collect::<Vec<_>>()).unwrap();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    let job = source
        .stream("shape", Start::Beginning)
        .filter(|n| n % 3 != 0)
        .flat_map(|n| vec![n; (n % 2 + 1) as usize])
        .inspect(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .map(|n| format!("#{n}"))
        .batch_size(7)
        .to(&output)
        .unwrap();
    job.wait_for(100).unwrap();
    assert_eq!(job.position(), 100);
    assert_eq!(job.lag(), 0);
    assert_eq!(job.name(), "shape");
    let expected: Vec<String> = (0..100u32)
        .filter(|n| n % 3 != 0)
        .flat_map(|n| vec![n; (n % 2 + 1) as usize])
        .map(|n| format!("#{n}"))
        .collect();
    assert_eq!(values(&output), expected);
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::Relaxed),
        expected.len() as u64
    );
    // Live: records appended while it runs follow.
    source.append(&101).unwrap();
    job.wait_for(101).unwrap();
    assert_eq!(values(&output).last().unwrap(), "#101");
    assert!(!job.is_finished());
    job.stop();
    job.join().unwrap();
}

#[test]
fn a_job_started_again_resumes_where_it_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    source.append_batch(&(0..50).collect::<Vec<_>>()).unwrap();
    let start = || {
        source
            .stream("tens", Start::Beginning)
            .map(|n| n * 10)
            .batch_size(8)
            .to(&output)
            .unwrap()
    };
    let job = start();
    job.wait_for(50).unwrap();
    job.stop(); // after its batch
    job.join().unwrap();
    source.append_batch(&(50..80).collect::<Vec<_>>()).unwrap();
    let job = start();
    assert!(job.position() >= 50);
    job.wait_for(80).unwrap();
    job.stop();
    job.join().unwrap();
    assert_eq!(values(&output), (0..80).map(|n| n * 10).collect::<Vec<_>>());
}

#[test]
fn a_first_run_from_the_end_is_pinned_where_it_started() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let job = source.stream("alerts", Start::End).to(&output).unwrap();
    assert_eq!(job.position(), 3);
    job.stop();
    job.join().unwrap();
    // Records appended while it was down are handled by its next run.
    source.append_batch(&[4, 5]).unwrap();
    let job = source.stream("alerts", Start::End).to(&output).unwrap();
    job.wait_for(5).unwrap();
    job.stop();
    job.join().unwrap();
    assert_eq!(values(&output), [4, 5]);
}

#[test]
fn names_are_checked_and_one_name_runs_once() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    for bad in ["", "../escape", "a/b", ".hidden"] {
        let started = source.stream(bad, Start::Beginning).to(&output);
        assert!(
            matches!(started, Err(Error::InvalidName { .. })),
            "{bad:?}: {started:?}"
        );
    }
    let job = source.stream("once", Start::Beginning).to(&output).unwrap();
    let twice = source.stream("once", Start::Beginning).to(&output);
    assert!(matches!(twice, Err(Error::JobRunning { .. })), "{twice:?}");
    job.stop();
    job.join().unwrap();
    // Free again once it ended.
    let again = source.stream("once", Start::Beginning).to(&output).unwrap();
    again.stop();
    again.join().unwrap();
}

#[test]
fn a_panicking_function_stops_the_job_and_commits_nothing_of_its_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let job = source
        .stream("fragile", Start::Beginning)
        .batch_size(1)
        .map(|n| {
            assert!(n != 3, "three is not allowed");
            n
        })
        .to(&output)
        .unwrap();
    assert!(matches!(job.wait_for(3), Err(Error::JobFailed { .. })));
    match job.join() {
        Err(Error::JobFailed { name, reason }) => {
            assert_eq!(name, "fragile");
            assert!(reason.contains("three is not allowed"), "{reason}");
        }
        other => panic!("expected JobFailed, got {other:?}"),
    }
    assert_eq!(values(&output), [1, 2]);
    // Fixed, it resumes at the record that failed.
    let job = source
        .stream("fragile", Start::Beginning)
        .map(|n| n * 100)
        .to(&output)
        .unwrap();
    job.wait_for(3).unwrap();
    job.stop();
    job.join().unwrap();
    assert_eq!(values(&output), [1, 2, 300]);
}

#[test]
fn a_source_closed_under_a_running_job_ends_it_with_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    source.append(&1).unwrap();
    let job = source
        .stream("closing", Start::Beginning)
        .to(&output)
        .unwrap();
    job.wait_for(1).unwrap();
    source.clone().close().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !job.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(job.join(), Err(Error::Closed)));
}

// ---- event time, windows, dead letters, for_each -------------------------

use backbone::stream::{Emit, Lateness, Window, Windowed};
use backbone::{DeadLetter, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Checkout {
    sku: String,
    qty: u32,
    ts: Timestamp,
}

fn at(secs: u64) -> Timestamp {
    Timestamp::from_micros(secs * 1_000_000)
}

fn checkout(sku: &str, qty: u32, secs: u64) -> Checkout {
    Checkout {
        sku: sku.to_owned(),
        qty,
        ts: at(secs),
    }
}

#[test]
fn sales_per_minute_per_product_as_the_issue_writes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let checkouts: EventLog<Checkout> = EventLog::open(tmp.path().join("checkouts")).unwrap();
    let sales_per_minute: EventLog<Windowed<String, u64>> =
        EventLog::open(tmp.path().join("sales-per-minute")).unwrap();
    let dead: EventLog<DeadLetter> = EventLog::open(tmp.path().join("dead")).unwrap();
    checkouts
        .append_batch(&[
            checkout("apple", 2, 10),
            checkout("pear", 1, 20),
            checkout("apple", 3, 59),
            checkout("apple", 4, 61), // watermark 56
            checkout("pear", 5, 58),  // out of order, within 5 s
            checkout("apple", 6, 66), // watermark 61: the first minute closes
            checkout("pear", 7, 30),  // late: 30 < 61
            checkout("apple", 1, 130),
        ])
        .unwrap();
    let per_minute = checkouts
        .stream("sales-per-minute", Start::Beginning)
        .dead_letter(&dead)
        .event_time(|c| c.ts, Lateness::bounded(Duration::from_secs(5)))
        .key_by(|c| c.sku.clone())
        .window(Window::tumbling(Duration::from_secs(60)))
        .aggregate(|| 0u64, |sum, c| *sum += c.qty as u64)
        .emit(Emit::OnClose)
        .to(&sales_per_minute)
        .unwrap();
    per_minute.wait_for(8).unwrap();
    let figures = per_minute.figures();
    per_minute.stop();
    per_minute.join().unwrap();
    let results: Vec<_> = sales_per_minute
        .read(Start::Beginning)
        .map(|r| r.unwrap())
        .collect();
    let windowed = |sku: &str, start: u64, value: u64| Windowed {
        key: sku.to_owned(),
        start: at(start),
        end: at(start + 60),
        value,
    };
    assert_eq!(
        results.iter().map(|r| r.value.clone()).collect::<Vec<_>>(),
        [
            windowed("apple", 0, 5),
            windowed("pear", 0, 6),
            windowed("apple", 60, 10)
        ]
    );
    // Each result carries the newest event time of its window.
    let times: Vec<_> = results.iter().map(|r| r.source_time).collect();
    assert_eq!(times, [Some(at(59)), Some(at(58)), Some(at(66))]);
    assert_eq!(figures.late, 1);
    assert_eq!(figures.handled, 8);
    assert_eq!(figures.outputs, 3);
    let letters: Vec<_> = dead
        .read(Start::Beginning)
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].offset, 6);
    assert!(
        letters[0].reason.starts_with("late"),
        "{}",
        letters[0].reason
    );
}

#[test]
fn rejected_records_go_to_the_dead_letter_log_once_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    let dead: EventLog<DeadLetter> = EventLog::open(tmp.path().join("dead")).unwrap();
    source.append_batch(&(0..40).collect::<Vec<_>>()).unwrap();
    let start = || {
        source
            .stream("picky", Start::Beginning)
            .dead_letter(&dead)
            .try_map(|n| {
                if n % 7 == 3 {
                    Err(format!("{n} is unlucky"))
                } else {
                    Ok(n)
                }
            })
            .map(|n| {
                assert!(n % 10 != 9, "nine-ish");
                n + 1000
            })
            .batch_size(6)
            .to(&output)
            .unwrap()
    };
    let job = start();
    job.wait_for(40).unwrap();
    job.stop();
    job.join().unwrap();
    // A restart from an earlier point (as after a crash between the dead
    // letters' commit and the outputs') writes no dead letter twice.
    let rejected = |n: u64| n % 7 == 3 || n % 10 == 9;
    source.append_batch(&(40..60).collect::<Vec<_>>()).unwrap();
    let job = start();
    job.wait_for(60).unwrap();
    let figures = job.figures();
    job.stop();
    job.join().unwrap();
    assert_eq!(
        figures.dead_letters,
        (40..60).filter(|&n| rejected(n)).count() as u64
    );
    let expected: Vec<u64> = (0..60)
        .filter(|&n| !rejected(n))
        .map(|n| n + 1000)
        .collect();
    assert_eq!(values(&output), expected);
    let letters = values(&dead);
    let offsets: Vec<u64> = letters.iter().map(|l| l.offset).collect();
    assert_eq!(
        offsets,
        (0..60).filter(|&n| rejected(n)).collect::<Vec<_>>()
    );
    for letter in &letters {
        let n = letter.offset;
        if n % 7 == 3 {
            assert_eq!(letter.reason, format!("{n} is unlucky"));
        } else {
            assert!(letter.reason.contains("nine-ish"), "{}", letter.reason);
        }
        // The record's bytes, in the source's codec.
        let value: u64 = postcard::from_bytes(&letter.payload).unwrap();
        assert_eq!(value, n);
    }
}

#[test]
fn a_second_stage_windows_on_the_first_stages_event_times() {
    let tmp = tempfile::tempdir().unwrap();
    let checkouts: EventLog<Checkout> = EventLog::open(tmp.path().join("checkouts")).unwrap();
    let quantities: EventLog<(String, u32)> = EventLog::open(tmp.path().join("qty")).unwrap();
    let counts: EventLog<Windowed<String, u64>> =
        EventLog::open(tmp.path().join("counts")).unwrap();
    checkouts
        .append_batch(&[
            checkout("a", 1, 5),
            checkout("a", 1, 15),
            checkout("a", 1, 25),
            checkout("b", 1, 26),
        ])
        .unwrap();
    let first = checkouts
        .stream("quantities", Start::Beginning)
        .event_time(|c| c.ts, Lateness::none())
        .map(|c| (c.sku, c.qty))
        .to(&quantities)
        .unwrap();
    first.wait_for(4).unwrap();
    first.stop();
    first.join().unwrap();
    let stamped: Vec<_> = quantities
        .read(Start::Beginning)
        .map(|r| r.unwrap().event_time())
        .collect();
    assert_eq!(stamped, [at(5), at(15), at(25), at(26)]);
    // No event_time here: the source times are the event times.
    let second = quantities
        .stream("counts", Start::Beginning)
        .key_by(|(sku, _)| sku.clone())
        .window(Window::tumbling(Duration::from_secs(10)))
        .count()
        .to(&counts)
        .unwrap();
    second.wait_for(4).unwrap();
    second.stop();
    second.join().unwrap();
    let windows: Vec<_> = values(&counts)
        .into_iter()
        .map(|w| (w.key, w.start, w.value))
        .collect();
    assert_eq!(
        windows,
        [("a".to_owned(), at(0), 1), ("a".to_owned(), at(10), 1)]
    );
}

#[test]
fn for_each_hands_every_output_over_and_resumes_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let checkouts: EventLog<u64> = EventLog::open(tmp.path().join("checkouts")).unwrap();
    checkouts
        .append_batch(&(1..=10).collect::<Vec<_>>())
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let audit = {
        let seen = seen.clone();
        move |n: u64| seen.lock().unwrap().push(n)
    };
    // As the issue writes it: the job runs on when its handle is dropped.
    checkouts
        .stream("audit", Start::Beginning)
        .filter(|n| n % 2 == 0)
        .for_each(audit.clone())
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(*seen.lock().unwrap(), [2, 4, 6, 8, 10]);
    // Started again under its name while it runs: refused.
    let twice = checkouts
        .stream("audit", Start::Beginning)
        .for_each(audit.clone());
    assert!(matches!(twice, Err(Error::JobRunning { .. })), "{twice:?}");
    // Its checkpoints live beside the source, in a log of their own.
    let checkpoints: EventLog<()> = backbone::Options::new()
        .read_only()
        .open(tmp.path().join("checkouts.jobs").join("audit"))
        .unwrap();
    assert!(checkpoints.last_checkpoint("audit").unwrap().is_some());
    assert!(checkpoints.is_empty());
    drop(checkpoints);

    // With its handle kept: stopped, and started again, it goes on after
    // what it handed over.
    let again = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let start = || {
        let again = again.clone();
        checkouts
            .stream("audit-2", Start::Beginning)
            .for_each(move |n| again.lock().unwrap().push(n))
            .unwrap()
    };
    let job = start();
    job.wait_for(10).unwrap();
    job.stop();
    job.join().unwrap();
    checkouts.append_batch(&[11, 12]).unwrap();
    let job = start();
    job.wait_for(12).unwrap();
    job.stop();
    job.join().unwrap();
    assert_eq!(*again.lock().unwrap(), (1..=12).collect::<Vec<_>>());
}

#[test]
fn scan_keeps_its_state_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("running-total")).unwrap();
    let start = || {
        source
            .stream("total", Start::Beginning)
            .scan(0u64, |total, n| {
                *total += n;
                (n % 2 == 0).then_some(*total)
            })
            .batch_size(3)
            .to(&output)
            .unwrap()
    };
    let mut expected = Vec::new();
    let mut total = 0;
    for round in 0..5u64 {
        let batch: Vec<u64> = (round * 10..round * 10 + 10).collect();
        for &n in &batch {
            total += n;
            if n % 2 == 0 {
                expected.push(total);
            }
        }
        source.append_batch(&batch).unwrap();
        let job = start();
        job.wait_for(source.next_offset()).unwrap();
        job.stop();
        job.join().unwrap();
    }
    assert_eq!(values(&output), expected);
}

#[test]
fn a_job_resumed_by_another_pipeline_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let job = source
        .stream("stateful", Start::Beginning)
        .scan(0u64, |sum, n| {
            *sum += n;
            Some(*sum)
        })
        .to(&output)
        .unwrap();
    job.wait_for(3).unwrap();
    job.stop();
    job.join().unwrap();
    let other = source
        .stream("stateful", Start::Beginning)
        .key_by(|n| *n)
        .window(Window::count(2))
        .count()
        .stream()
        .map(|w| w.value)
        .to(&output);
    assert!(
        matches!(other, Err(Error::InvalidArgument { .. })),
        "{other:?}"
    );
    let bad_window = source
        .stream("bad-window", Start::Beginning)
        .key_by(|n| *n)
        .window(Window::tumbling(Duration::ZERO))
        .count()
        .stream()
        .map(|w| w.value)
        .to(&output);
    assert!(
        matches!(bad_window, Err(Error::InvalidArgument { .. })),
        "{bad_window:?}"
    );
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    customer_id: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Customer {
    id: u32,
    city: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Shipment {
    order: u32,
    city: Option<String>,
}

impl Shipment {
    fn new(order: Order, customer: Customer) -> Shipment {
        Shipment {
            order: order.id,
            city: Some(customer.city),
        }
    }
}

#[test]
#[allow(clippy::redundant_closure)] // the join is written as the issue writes it
fn a_stream_joins_a_table_and_a_left_join_keeps_the_misses() {
    use backbone::stream::Table;
    let tmp = tempfile::tempdir().unwrap();
    let checkouts: EventLog<Order> = EventLog::open(tmp.path().join("orders")).unwrap();
    let customer_log: EventLog<Customer> = EventLog::open(tmp.path().join("customers")).unwrap();
    let shipments: EventLog<Shipment> = EventLog::open(tmp.path().join("shipments")).unwrap();
    let all: EventLog<Shipment> = EventLog::open(tmp.path().join("all")).unwrap();
    let end = customer_log
        .append_batch(&[
            Customer {
                id: 1,
                city: "Oslo".into(),
            },
            Customer {
                id: 2,
                city: "Lima".into(),
            },
        ])
        .unwrap()
        .end;
    let customers: Table<u32, Customer> = customer_log
        .table("by-id", |c| c.id, |slot: &mut Customer, c| *slot = c)
        .unwrap();
    customers.wait_for(end).unwrap();
    checkouts
        .append_batch(&[
            Order {
                id: 10,
                customer_id: 1,
            },
            Order {
                id: 11,
                customer_id: 3,
            },
            Order {
                id: 12,
                customer_id: 2,
            },
        ])
        .unwrap();
    let shipments_job = checkouts
        .stream("enrich", Start::Beginning)
        .join(
            &customers,
            |c| c.customer_id,
            |c, cust| Shipment::new(c, cust),
        )
        .to(&shipments)
        .unwrap();
    let all_job = checkouts
        .stream("enrich-all", Start::Beginning)
        .left_join(
            &customers,
            |c| c.customer_id,
            |c, cust| Shipment {
                order: c.id,
                city: cust.map(|c| c.city),
            },
        )
        .to(&all)
        .unwrap();
    for job in [shipments_job, all_job] {
        job.wait_for(3).unwrap();
        job.stop();
        job.join().unwrap();
    }
    let city = |s: &str| Some(s.to_owned());
    assert_eq!(
        values(&shipments),
        [
            Shipment {
                order: 10,
                city: city("Oslo")
            },
            Shipment {
                order: 12,
                city: city("Lima")
            }
        ]
    );
    assert_eq!(
        values(&all),
        [
            Shipment {
                order: 10,
                city: city("Oslo")
            },
            Shipment {
                order: 11,
                city: None
            },
            Shipment {
                order: 12,
                city: city("Lima")
            }
        ]
    );
}

#[test]
fn many_jobs_and_a_table_share_a_runtime_of_one_thread() {
    use backbone::stream::{Runtime, Table, TableOptions};
    let tmp = tempfile::tempdir().unwrap();
    let runtime = Runtime::new(1).unwrap();
    assert_eq!(runtime.threads(), 1);
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let outputs: Vec<EventLog<u64>> = (0..12)
        .map(|i| EventLog::open(tmp.path().join(format!("out-{i}"))).unwrap())
        .collect();
    let jobs: Vec<_> = outputs
        .iter()
        .enumerate()
        .map(|(i, out)| {
            source
                .stream(&format!("job-{i}"), Start::Beginning)
                .map(move |n| n + i as u64)
                .batch_size(16)
                .on(&runtime)
                .to(out)
                .unwrap()
        })
        .collect();
    let sums: Table<u64, u64> = source
        .table_with(
            "sums",
            |n| n % 3,
            |sum: &mut u64, n| *sum += n,
            TableOptions::new().runtime(&runtime),
        )
        .unwrap();
    // Live appends reach every one of them, a batch at a time in turn.
    for chunk in (0..200u64).collect::<Vec<_>>().chunks(50) {
        source.append_batch(chunk).unwrap();
    }
    for job in &jobs {
        job.wait_for(200).unwrap();
    }
    sums.wait_for(200).unwrap();
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(
            values(out),
            (0..200).map(|n| n + i as u64).collect::<Vec<_>>()
        );
    }
    assert_eq!(sums.get(&0), Some((0..200).filter(|n| n % 3 == 0).sum()));
    for job in jobs {
        job.stop();
        job.join().unwrap();
    }
    sums.stop();
    sums.join().unwrap();
}

#[test]
fn dropping_a_runtime_ends_its_jobs_with_what_they_committed() {
    use backbone::stream::Runtime;
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let runtime = Runtime::new(2).unwrap();
    let job = source
        .stream("short-lived", Start::Beginning)
        .on(&runtime)
        .to(&output)
        .unwrap();
    job.wait_for(3).unwrap();
    drop(runtime);
    match job.join() {
        Err(Error::JobFailed { reason, .. }) => assert!(reason.contains("runtime"), "{reason}"),
        other => panic!("expected JobFailed, got {other:?}"),
    }
    assert_eq!(values(&output), [1, 2, 3]);
    // On the shared runtime, under the same name, it goes on.
    let job = source
        .stream("short-lived", Start::Beginning)
        .to(&output)
        .unwrap();
    source.append(&4).unwrap();
    job.wait_for(4).unwrap();
    job.stop();
    job.join().unwrap();
    assert_eq!(values(&output), [1, 2, 3, 4]);
}

#[test]
fn a_branch_resumes_each_output_where_it_stands() {
    let tmp = tempfile::tempdir().unwrap();
    let open = |name: &str| -> EventLog<u64> { EventLog::open(tmp.path().join(name)).unwrap() };
    let (source, evens, odds, scratch) = (open("source"), open("evens"), open("odds"), open("x"));
    let start = |outputs: &[&EventLog<u64>], until: u64| {
        let job = source
            .stream("split", Start::Beginning)
            .map(|n| n * 10)
            .batch_size(4)
            .branch(outputs, |n| (n / 10 % 2) as usize)
            .unwrap();
        job.wait_for(until).unwrap();
        job.stop();
        job.join().unwrap();
    };
    source.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();
    start(&[&evens, &odds], 10);
    // As a crash between a batch's two appends leaves them: `evens` ahead
    // (here moved on alone, its odd values going elsewhere).
    // (A job whose outputs change is refused until its registration on
    // the source, from its last output, is retired.)
    source.append_batch(&(10..20).collect::<Vec<_>>()).unwrap();
    assert!(source.delete_reader("split").unwrap());
    start(&[&evens, &scratch], 20);
    assert!(source.delete_reader("split").unwrap());
    source.append_batch(&(20..30).collect::<Vec<_>>()).unwrap();
    start(&[&evens, &odds], 30);
    // Each holds what one uninterrupted run gives it: nothing twice.
    let tens = |r: u64| {
        (0..30)
            .filter(|n| n % 2 == r)
            .map(|n| n * 10)
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&evens), tens(0));
    assert_eq!(values(&odds), tens(1));
    // A route past the outputs rejects the record: without a dead-letter
    // log, the job stops on it.
    let job = source
        .stream("bad-route", Start::Beginning)
        .branch(&[&scratch], |_| 3)
        .unwrap();
    assert!(matches!(job.join(), Err(Error::JobFailed { .. })));
    let none = source
        .stream("none", Start::Beginning)
        .branch::<backbone::Postcard>(&[], |_| 0);
    assert!(matches!(none, Err(Error::InvalidArgument { .. })));
}

/// Splits merged outputs by their source (the tens digit names it) and
/// checks each source's part is all its records, in order, once.
fn assert_each_source_once_in_order(outputs: &[u64], sources: &[std::ops::Range<u64>]) {
    for (i, range) in sources.iter().enumerate() {
        let from_it: Vec<u64> = outputs
            .iter()
            .filter(|&&v| v / 1_000_000 == i as u64)
            .map(|&v| v % 1_000_000)
            .collect();
        assert_eq!(from_it, range.clone().collect::<Vec<_>>(), "source {i}");
    }
    let total: u64 = sources.iter().map(|r| r.end - r.start).sum();
    assert_eq!(outputs.len() as u64, total);
}

#[test]
fn a_merge_reads_every_source_once_and_resumes_in_each() {
    let tmp = tempfile::tempdir().unwrap();
    let web: EventLog<u64> = EventLog::open(tmp.path().join("web")).unwrap();
    let mobile: EventLog<u64> = EventLog::open(tmp.path().join("mobile")).unwrap();
    let kiosk: EventLog<u64> = EventLog::open(tmp.path().join("kiosk")).unwrap();
    let output: EventLog<u64> = EventLog::open(tmp.path().join("output")).unwrap();
    // Each source's values say which source they came from.
    let fill = |log: &EventLog<u64>, source: u64, range: std::ops::Range<u64>| {
        let values: Vec<u64> = range.map(|n| source * 1_000_000 + n).collect();
        log.append_batch(&values).unwrap();
    };
    fill(&web, 0, 0..300);
    fill(&mobile, 1, 0..40);
    let start = || {
        web.stream("all-checkouts", Start::Beginning)
            .merge(&mobile)
            .merge(&kiosk)
            .batch_size(16)
            .to(&output)
            .unwrap()
    };
    let job = start();
    job.wait_for(300).unwrap();
    job.wait_for_in(&mobile, 40).unwrap();
    assert_eq!(job.position_in(&mobile), Some(40));
    assert_eq!(job.position_in(&kiosk), Some(0));
    assert_eq!(job.figures().positions, vec![300, 40, 0]);
    assert_eq!(job.lag(), 0);
    // A source that is not one: a typed error, not a wait for ever.
    assert!(matches!(
        job.wait_for_in(&output, 1),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(job.position_in(&output), None);
    // Live records from every source follow.
    fill(&kiosk, 2, 0..5);
    fill(&mobile, 1, 40..60);
    job.wait_for_in(&kiosk, 5).unwrap();
    job.wait_for_in(&mobile, 60).unwrap();
    job.stop();
    job.join().unwrap();
    assert_each_source_once_in_order(&values(&output), &[0..300, 0..60, 0..5]);

    // Started again: each source resumes at its own position.
    fill(&web, 0, 300..310);
    fill(&kiosk, 2, 5..25);
    let job = start();
    job.wait_for(310).unwrap();
    job.wait_for_in(&kiosk, 25).unwrap();
    job.stop();
    job.join().unwrap();
    assert_each_source_once_in_order(&values(&output), &[0..310, 0..60, 0..25]);

    // The sources are part of the job: without one of them it is refused.
    let without_kiosk = web
        .stream("all-checkouts", Start::Beginning)
        .merge(&mobile)
        .to(&output);
    let without_kiosk = without_kiosk.expect("a checkpoint with more sources resumes");
    without_kiosk.stop();
    without_kiosk.join().unwrap();
    let other: EventLog<u64> = EventLog::open(tmp.path().join("other")).unwrap();
    other.append(&1).unwrap();
    let with_another = web
        .stream("all-checkouts", Start::Beginning)
        .merge(&mobile)
        .merge(&other)
        .to(&output);
    assert!(matches!(with_another, Err(Error::NotInCheckpoint { .. })));
    // A log merged twice is refused when the job starts.
    let twice = web
        .stream("twice", Start::Beginning)
        .merge(&web)
        .to(&output);
    assert!(matches!(twice, Err(Error::InvalidArgument { .. })));
}

#[test]
fn a_windowed_count_over_a_merge_counts_every_source() {
    let tmp = tempfile::tempdir().unwrap();
    let web: EventLog<(String, u64)> = EventLog::open(tmp.path().join("web")).unwrap();
    let mobile: EventLog<(String, u64)> = EventLog::open(tmp.path().join("mobile")).unwrap();
    let output: EventLog<Windowed<String, u64>> =
        EventLog::open(tmp.path().join("output")).unwrap();
    // Events at seconds 0..120, alternately from web and mobile.
    for sec in 0..120u64 {
        let log = if sec % 2 == 0 { &web } else { &mobile };
        log.append(&("sku-1".to_owned(), sec)).unwrap();
    }
    let job = web
        .stream("per-minute", Start::Beginning)
        .merge(&mobile)
        .event_time(
            |(_, sec)| Timestamp::from_micros(sec * 1_000_000),
            Lateness::bounded(Duration::from_secs(120)),
        )
        .key_by(|(sku, _)| sku.clone())
        .window(Window::tumbling(Duration::from_secs(60)))
        .count()
        .to(&output)
        .unwrap();
    job.wait_for(60).unwrap();
    job.wait_for_in(&mobile, 60).unwrap();
    assert!(values(&output).is_empty(), "no window closed yet");
    // An event far enough ahead closes both minutes, each counted from
    // both sources.
    web.append(&("sku-1".to_owned(), 250)).unwrap();
    job.wait_for(61).unwrap();
    job.stop();
    job.join().unwrap();
    let windows = values(&output);
    let counts: Vec<(Timestamp, u64)> = windows.iter().map(|w| (w.start, w.value)).collect();
    assert_eq!(
        counts,
        vec![
            (Timestamp::from_micros(0), 60),
            (Timestamp::from_micros(60_000_000), 60)
        ]
    );
}

#[test]
fn a_job_registers_one_reader_from_one_log_and_a_name_taken_elsewhere_is_refused() {
    use backbone::DeadLetter;
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let low: EventLog<u64> = EventLog::open(tmp.path().join("low")).unwrap();
    let high: EventLog<u64> = EventLog::open(tmp.path().join("high")).unwrap();
    let dead: EventLog<DeadLetter> = EventLog::open(tmp.path().join("dead")).unwrap();
    source.append_batch(&(0..100).collect::<Vec<_>>()).unwrap();
    let job = source
        .stream("split", Start::Beginning)
        .try_map(|n| if n % 10 == 9 { Err("nines") } else { Ok(n) })
        .dead_letter(&dead)
        .batch_size(8)
        .branch(&[&low, &high], |n| usize::from(*n >= 50))
        .unwrap();
    job.wait_for(100).unwrap();
    job.stop();
    job.join().unwrap();
    assert_eq!(dead.next_offset(), 10);
    // One registration, from the output each batch reaches last: neither
    // the dead letters (committed first) nor the first output move it.
    let readers = source.readers().unwrap();
    let split: Vec<_> = readers.iter().filter(|r| r.name == "split").collect();
    assert_eq!(split.len(), 1, "{readers:?}");
    assert_eq!(split[0].location, high.path());
    assert_eq!(split[0].position, Some(100));

    // A table or another job of that name on the same source, committing
    // elsewhere, is refused: the two would overwrite one registration.
    let table = source.table("split", |n: &u64| *n % 3, |sum: &mut u64, n| *sum += n);
    assert!(matches!(table, Err(Error::InvalidArgument { .. })));
    let other: EventLog<u64> = EventLog::open(tmp.path().join("other")).unwrap();
    let again = source.stream("split", Start::Beginning).to(&other);
    assert!(matches!(again, Err(Error::InvalidArgument { .. })));
    // The job itself starts again as before.
    let job = source
        .stream("split", Start::Beginning)
        .try_map(|n| if n % 10 == 9 { Err("nines") } else { Ok(n) })
        .dead_letter(&dead)
        .branch(&[&low, &high], |n| usize::from(*n >= 50))
        .unwrap();
    job.stop();
    job.join().unwrap();
    // Retired, the name is free.
    assert!(source.delete_reader("split").unwrap());
    let table = source
        .table("split", |n: &u64| *n % 3, |sum: &mut u64, n| *sum += n)
        .unwrap();
    table.wait_for(100).unwrap();
    assert_eq!(table.get(&0), Some((0..100).filter(|n| n % 3 == 0).sum()));
}

#[test]
fn a_job_whose_old_output_is_gone_starts_over_under_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    source.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();
    for round in 0..2 {
        // A fresh output each round, the last one deleted: the job starts
        // over, and its registration moves to the new output.
        let dir = tmp.path().join(format!("output-{round}"));
        let output: EventLog<u64> = EventLog::open(&dir).unwrap();
        let job = source.stream("copy", Start::Beginning).to(&output).unwrap();
        job.wait_for(10).unwrap();
        job.stop();
        job.join().unwrap();
        assert_eq!(values(&output), (0..10).collect::<Vec<_>>());
        output.close().unwrap();
        let readers = source.readers().unwrap();
        assert_eq!(readers[0].location, dir);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
