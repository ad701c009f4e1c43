//! The exactly-once hand-off: `append_committing` stores a checkpoint in
//! the same batch as the records it covers, `last_checkpoint` finds the
//! newest whole one, and reads never see checkpoints. The torn-batch
//! recovery rule, carried checkpoints across rolls and retention, and the
//! errors a resume must not paper over.

mod common;

use std::path::Path;
use std::time::Duration;

use backbone::{
    Checkpoint, CorruptionKind, Durability, Error, EventLog, Options, SourcePosition, Start,
};

fn positions(checkpoint: &Checkpoint) -> Vec<SourcePosition> {
    checkpoint.positions().to_vec()
}

#[test]
fn a_committed_batch_holds_records_and_checkpoint_and_reads_skip_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u32> = EventLog::open(tmp.path().join("source")).unwrap();
    let out: EventLog<u64> = EventLog::open(tmp.path().join("out")).unwrap();
    source.append_batch(&[1, 2, 3, 4]).unwrap();
    assert_eq!(out.last_checkpoint("job").unwrap(), None);

    let first = Checkpoint::new("job")
        .source(&source, 2)
        .unwrap()
        .with_state(b"two".to_vec());
    assert_eq!(out.append_committing(&[10, 20], &first).unwrap(), 0..2);
    out.append(&99).unwrap();
    // A batch of no record moves the position on alone.
    let second = Checkpoint::new("job").source(&source, 3).unwrap();
    assert_eq!(out.append_committing(&[], &second).unwrap(), 3..3);
    let third = Checkpoint::new("job")
        .source(&source, 4)
        .unwrap()
        .with_position(SourcePosition::External {
            name: "orders-stream".into(),
            sequence: 77,
        })
        .with_state(b"four".to_vec());
    assert_eq!(out.append_committing(&[40], &third).unwrap(), 3..4);

    let stored = out.last_checkpoint("job").unwrap().expect("stored");
    assert_eq!(stored, third);
    assert_eq!(stored.position_in(&source).unwrap(), 4);
    assert_eq!(stored.state(), b"four");
    assert_eq!(out.last_checkpoint("other").unwrap(), None);

    // Offsets are dense over the control frames; every read path sees
    // records only.
    let read: Vec<_> = out
        .read(Start::Beginning)
        .map(|r| r.map(|r| (r.offset, r.value)))
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(read, [(0, 10), (1, 20), (2, 99), (3, 40)]);
    assert_eq!(out.len(), 4);
    assert_eq!(out.get(3).unwrap().unwrap().value, 40);
    assert_eq!(out.last().unwrap().unwrap().value, 40);
    let sub = out.subscribe(Start::Offset(2)).unwrap();
    assert_eq!(sub.recv().unwrap().value, 99);
    assert_eq!(sub.recv().unwrap().value, 40);
    let consumer = out.consumer("reader").unwrap();
    let values: Vec<u64> = consumer.read().map(|r| r.unwrap().value).collect();
    assert_eq!(values, [10, 20, 99, 40]);
    assert_eq!(out.verify().unwrap(), 4);
    drop((sub, consumer));

    // After a reopen (and by a follower) the newest checkpoint is found by
    // scanning the newest segment.
    let dir = out.path().to_path_buf();
    out.close().unwrap();
    let follower: EventLog<u64> = Options::new().read_only().open(&dir).unwrap();
    assert_eq!(
        follower.last_checkpoint("job").unwrap(),
        Some(third.clone())
    );
    drop(follower);
    let out: EventLog<u64> = EventLog::open(&dir).unwrap();
    assert!(out.recovery_report().is_clean());
    assert_eq!(out.last_checkpoint("job").unwrap(), Some(third));
    assert_eq!(out.append(&5).unwrap(), 4);
}

#[test]
fn checkpoint_names_and_positions_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u32> = EventLog::open(tmp.path().join("source")).unwrap();
    let other: EventLog<u32> = EventLog::open(tmp.path().join("other")).unwrap();
    let out: EventLog<u32> = EventLog::open(tmp.path().join("out")).unwrap();
    source.append_batch(&[1, 2]).unwrap();

    for bad in ["", "../x", "a b", ".hidden"] {
        let result = out.append_committing(&[1], &Checkpoint::new(bad));
        assert!(
            matches!(result, Err(Error::InvalidName { .. })),
            "{bad:?}: {result:?}"
        );
        assert!(matches!(
            out.last_checkpoint(bad),
            Err(Error::InvalidName { .. })
        ));
    }
    assert_eq!(out.len(), 0, "a refused batch writes nothing");

    // A position past the source's end cannot be taken.
    assert!(matches!(
        Checkpoint::new("job").source(&source, 3),
        Err(Error::OffsetOutOfRange {
            requested: 3,
            next: 2
        })
    ));
    let at_two = Checkpoint::new("job").source(&source, 2).unwrap();
    out.append_committing(&[7], &at_two).unwrap();
    let stored = out.last_checkpoint("job").unwrap().unwrap();
    // Another log (or this one created again) is not a resume point.
    assert!(matches!(
        stored.position_in(&other),
        Err(Error::NotInCheckpoint { .. })
    ));
    // A stored position past the source's end is an error naming both.
    let ahead = Checkpoint::new("job").with_position(SourcePosition::Log {
        log_id: source.log_id().unwrap(),
        offset: 9,
    });
    match ahead.position_in(&source) {
        Err(Error::CheckpointAhead { stored, next, .. }) => assert_eq!((stored, next), (9, 2)),
        other => panic!("expected CheckpointAhead, got {other:?}"),
    }
    assert_ne!(source.log_id(), other.log_id());
    assert_eq!(positions(&stored).len(), 1);
}

#[test]
fn a_source_position_is_made_durable_before_it_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u32> = Options::new()
        .durability(Durability::Interval(Duration::from_secs(3600)))
        .open(tmp.path().join("source"))
        .unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let before = source.durable_offset();
    assert!(before < 3, "the hour-long interval has not synced yet");
    let checkpoint = Checkpoint::new("job").source(&source, 3).unwrap();
    assert!(source.durable_offset() >= 3);
    assert_eq!(checkpoint.positions().len(), 1);
}

#[test]
fn a_large_state_is_chunked_and_checkpoints_survive_rolls_and_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let options = || {
        Options::new()
            .segment_bytes(16 << 10)
            .max_record_bytes(2 << 10)
            .retention_bytes(64 << 10)
    };
    let out: EventLog<u64> = options().open(&dir).unwrap();
    // A state of three frames' worth.
    let big: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let big_one = Checkpoint::new("big")
        .with_position(SourcePosition::External {
            name: "s".into(),
            sequence: 1,
        })
        .with_state(big.clone());
    out.append_committing(&[1, 2, 3], &big_one).unwrap();
    assert_eq!(out.last_checkpoint("big").unwrap(), Some(big_one.clone()));
    // Many more batches under another name: the log rolls many times and
    // retention removes the segment where "big" was written.
    let mut last = None;
    for i in 0..400u64 {
        let small = Checkpoint::new("small").with_position(SourcePosition::External {
            name: "s".into(),
            sequence: i,
        });
        out.append_committing(&[i; 10], &small).unwrap();
        last = Some(small);
    }
    assert!(out.first_offset() > 0, "retention removed old segments");
    assert!(common::segment_files(&dir).len() > 2);
    assert_eq!(out.last_checkpoint("big").unwrap(), Some(big_one.clone()));
    assert_eq!(out.last_checkpoint("small").unwrap(), last);
    // Every record is still read as a record, in order.
    let first = out.first_offset();
    let read: Vec<u64> = out
        .read(Start::Beginning)
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(read, (first..out.next_offset()).collect::<Vec<_>>());
    assert_eq!(out.verify().unwrap(), out.len());
    drop(out);
    // Reopened without a close: found again by the scan of the newest
    // segment, and carried on at the next roll.
    let out: EventLog<u64> = options().open(&dir).unwrap();
    assert_eq!(out.last_checkpoint("big").unwrap(), Some(big_one.clone()));
    for i in 0..100u64 {
        out.append_batch(&[i; 20]).unwrap();
    }
    assert_eq!(out.last_checkpoint("big").unwrap(), Some(big_one));
    assert_eq!(out.last_checkpoint("small").unwrap(), last);
}

#[test]
fn a_batch_that_cannot_fit_in_a_segment_is_refused_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let out: EventLog<Vec<u8>> = Options::new()
        .segment_bytes(8 << 10)
        .open(tmp.path().join("out"))
        .unwrap();
    out.append(&vec![1; 100]).unwrap();
    let values = vec![vec![7u8; 1000]; 10];
    let result = out.append_committing(&values, &Checkpoint::new("job"));
    assert!(
        matches!(result, Err(Error::BatchTooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(out.next_offset(), 1, "nothing of the batch was written");
    assert_eq!(out.last_checkpoint("job").unwrap(), None);
    // One that fits only in a new segment rolls first and stays whole.
    let fits = vec![vec![7u8; 1000]; 7];
    out.append_committing(&fits, &Checkpoint::new("job"))
        .unwrap();
    assert_eq!(out.next_offset(), 8);
    assert_eq!(out.verify().unwrap(), 8);
    assert!(out.last_checkpoint("job").unwrap().is_some());
}

/// The bytes of the newest segment file of `dir`.
fn newest_segment(dir: &Path) -> std::path::PathBuf {
    common::segment_files(dir).pop().expect("a segment")
}

#[test]
fn a_batch_torn_by_a_crash_is_cut_whole_with_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    // Nothing is synced in the hour, so dropping the log leaves it as a
    // crash does (the drop writes out what it has, without the closed
    // mark), and the next open scans every frame.
    let options = || Options::new().durability(Durability::Interval(Duration::from_secs(3600)));
    let whole = Checkpoint::new("job").with_position(SourcePosition::External {
        name: "s".into(),
        sequence: 1,
    });
    let torn = Checkpoint::new("job").with_position(SourcePosition::External {
        name: "s".into(),
        sequence: 2,
    });
    {
        let out: EventLog<Vec<u8>> = options().open(&dir).unwrap();
        out.append_committing(&[vec![1; 50], vec![2; 50]], &whole)
            .unwrap();
        out.append_committing(&[vec![3; 50], vec![4; 50], vec![5; 50]], &torn)
            .unwrap();
        assert_eq!(out.last_checkpoint("job").unwrap(), Some(torn.clone()));
    }
    // Tear the last write: its last record's final bytes never reached
    // the disk.
    let segment = newest_segment(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    bytes[end - 20..end].fill(0);
    std::fs::write(&segment, &bytes).unwrap();

    let out: EventLog<Vec<u8>> = options().open(&dir).unwrap();
    let report = out.recovery_report();
    assert_eq!(
        report.damage,
        Some(CorruptionKind::TornBatch {
            records: 3,
            found: 2
        })
    );
    assert!(report.damaged_copy.is_some());
    assert_eq!(out.next_offset(), 2, "the whole batch is gone");
    assert_eq!(out.last_checkpoint("job").unwrap(), Some(whole));
    let values: Vec<Vec<u8>> = out
        .read(Start::Beginning)
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(values, [vec![1; 50], vec![2; 50]]);
    // The log goes on from the cut.
    out.append_committing(&[vec![9; 5]], &torn).unwrap();
    assert_eq!(out.next_offset(), 3);
    assert_eq!(out.last_checkpoint("job").unwrap(), Some(torn));
}

#[test]
fn a_follower_hands_out_only_what_its_writer_made_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("source");
    let writer: EventLog<u32> = Options::new()
        .durability(Durability::Interval(Duration::from_secs(3600)))
        .open(&dir)
        .unwrap();
    let follower: EventLog<u32> = Options::new().read_only().open(&dir).unwrap();
    writer.append_batch(&[1, 2, 3, 4]).unwrap();
    // Written, not durable: the follower does not hand them out yet.
    assert_eq!(follower.read(Start::Beginning).count(), 0);
    assert_eq!(follower.next_offset(), 0);
    writer.sync().unwrap();
    let values: Vec<u32> = follower
        .read(Start::Beginning)
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(values, [1, 2, 3, 4]);
    assert_eq!(follower.durable_offset(), 4);

    // A live subscription of the follower receives records as the writer
    // syncs them.
    let sub = follower.subscribe(Start::Offset(4)).unwrap();
    writer.append_batch(&[5, 6]).unwrap();
    assert!(matches!(
        sub.recv_timeout(Duration::from_millis(200)),
        Ok(None)
    ));
    writer.sync().unwrap();
    assert_eq!(sub.recv().unwrap().value, 5);
    assert_eq!(sub.recv().unwrap().value, 6);
    // So a follower's position is always a durable one.
    let checkpoint = Checkpoint::new("job").source(&follower, 6).unwrap();
    assert_eq!(checkpoint.position_in(&follower).unwrap(), 6);
    assert!(Checkpoint::new("job").source(&follower, 7).is_err());
}

#[test]
fn a_hand_off_registers_on_its_source_and_retention_keeps_what_it_has_not_passed() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = Options::new()
        .segment_bytes(8 << 10)
        .retention_bytes(16 << 10)
        .open(tmp.path().join("source"))
        .unwrap();
    let out_dir = tmp.path().join("out");
    let out: EventLog<u64> = EventLog::open(&out_dir).unwrap();
    source.append_batch(&[0; 10]).unwrap();
    assert_eq!(source.readers().unwrap(), []);
    // The reader commits at 5 (it has handed on records 0..5).
    let at_five = Checkpoint::new("copy").source(&source, 5).unwrap();
    out.append_committing(&[1], &at_five).unwrap();
    let readers = source.readers().unwrap();
    assert_eq!(readers.len(), 1);
    assert_eq!(readers[0].name, "copy");
    assert_eq!(readers[0].position, Some(5));
    assert_eq!(readers[0].lag, Some(source.next_offset() - 5));
    assert_eq!(readers[0].location, out_dir);
    // Retention keeps what it has not passed, however far over the limit.
    for i in 0..100u64 {
        source.append_batch(&[i; 10]).unwrap();
    }
    source.apply_retention().unwrap();
    assert!(source.first_offset() <= 5);
    assert!(source.stats().bytes > 16 << 10);
    // As it moves on, retention follows.
    let end = source.next_offset();
    let moved = Checkpoint::new("copy").source(&source, end).unwrap();
    out.append_committing(&[2], &moved).unwrap();
    assert_eq!(source.readers().unwrap()[0].position, Some(end));
    source.apply_retention().unwrap();
    assert!(source.first_offset() > 5);
    // Deleted, it holds nothing back.
    assert!(source.delete_reader("copy").unwrap());
    assert_eq!(source.readers().unwrap(), []);
    assert!(!source.delete_reader("copy").unwrap());
}

#[test]
fn an_advisory_position_is_written_only_once_its_commit_is_durable() {
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = EventLog::open(tmp.path().join("source")).unwrap();
    let out: EventLog<u64> = Options::new()
        .durability(Durability::Buffered)
        .open(tmp.path().join("out"))
        .unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let checkpoint = Checkpoint::new("copy").source(&source, 2).unwrap();
    out.append_committing(&[10], &checkpoint).unwrap();
    // Not durable in the output yet: the source must not count on it.
    assert_eq!(source.readers().unwrap(), []);
    out.sync().unwrap();
    let later = Checkpoint::new("copy").source(&source, 3).unwrap();
    out.append_committing(&[20], &later).unwrap();
    // The first commit is durable now; the second is not yet.
    assert_eq!(source.readers().unwrap()[0].position, Some(2));
    out.close().unwrap();
    assert_eq!(source.readers().unwrap()[0].position, Some(3));
}

#[test]
fn inspect_shows_checkpoints_readers_and_segment_versions() {
    use backbone::inspect::Inspector;
    let tmp = tempfile::tempdir().unwrap();
    let source: EventLog<u32> = EventLog::open(tmp.path().join("source")).unwrap();
    let out_dir = tmp.path().join("out");
    let out: EventLog<u32> = EventLog::open(&out_dir).unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let checkpoint = Checkpoint::new("job")
        .source(&source, 3)
        .unwrap()
        .with_state(vec![7; 10]);
    out.append_committing(&[6], &checkpoint).unwrap();

    let inspected = Inspector::open(&out_dir).unwrap();
    let checkpoints = inspected.checkpoints().unwrap();
    assert_eq!(checkpoints.len(), 1);
    assert_eq!(checkpoints[0].name, "job");
    assert_eq!(checkpoints[0].positions, checkpoint.positions());
    assert_eq!(checkpoints[0].state_bytes, 10);
    assert!(inspected
        .segments()
        .unwrap()
        .iter()
        .all(|s| s.format_version == 2));
    // Records only, as bytes; the checkpoint takes no offset.
    let frames: Vec<_> = inspected
        .frames(Start::Beginning)
        .map(|f| f.unwrap().offset)
        .collect();
    assert_eq!(frames, [0]);

    let readers = Inspector::open(source.path()).unwrap().readers().unwrap();
    assert_eq!(readers.len(), 1);
    assert_eq!(
        (readers[0].name.as_str(), readers[0].position),
        ("job", Some(3))
    );
    assert_eq!(readers[0].location, out_dir);
}
