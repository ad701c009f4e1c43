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
    drop(job); // stops it, after its batch
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
    drop(job);
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
    drop(job);
    // Free again once it ended.
    let again = source.stream("once", Start::Beginning).to(&output).unwrap();
    drop(again);
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
    drop(job);
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
