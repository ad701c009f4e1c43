//! `backbone::inspect` on logs made with the public API: registered
//! readers, their true positions, and the logs kept for groups, jobs and
//! tables.

use std::path::PathBuf;

use backbone::inspect::{AttachedKind, Inspector};
use backbone::{Checkpoint, EventLog};

#[test]
fn it_finds_a_readers_true_position_and_the_logs_attached_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (source_dir, output_dir) = (dir.path().join("orders"), dir.path().join("totals"));
    let source: EventLog<u64> = EventLog::open(&source_dir).unwrap();
    let output: EventLog<u64> = EventLog::open(&output_dir).unwrap();
    source.append_batch(&[1, 2, 3, 4]).unwrap();
    let checkpoint = Checkpoint::new("summer")
        .source(&source, 3)
        .unwrap()
        .with_state(vec![9; 5]);
    output.append_committing(&[6], &checkpoint).unwrap();
    source.sync().unwrap();
    // Logs kept for a group, a for_each job and a table, and a stray
    // directory that is none of them.
    std::fs::create_dir_all(source_dir.join("workers.group")).unwrap();
    std::fs::create_dir_all(source_dir.join("stray")).unwrap();
    std::fs::create_dir_all(dir.path().join("orders.jobs/mailer")).unwrap();
    std::fs::create_dir_all(dir.path().join("orders.tables/stock/changelog")).unwrap();

    let inspector = Inspector::open(&source_dir).unwrap();
    let readers = inspector.readers().unwrap();
    assert_eq!(readers.len(), 1, "{readers:?}");
    assert_eq!(readers[0].name, "summer");
    assert_eq!(inspector.reader_position(&readers[0]).unwrap(), Some(3));
    // A reader whose log is gone has no true position to find.
    let mut gone = readers[0].clone();
    gone.location = dir.path().join("gone");
    assert_eq!(inspector.reader_position(&gone).unwrap(), None);

    let holder = Inspector::open(&output_dir).unwrap();
    let found = holder.checkpoint("summer").unwrap().unwrap();
    assert_eq!(found.state_bytes, 5);
    assert_eq!(found.positions.len(), 1);
    assert_eq!(holder.checkpoint("other").unwrap(), None);

    let attached: Vec<(String, AttachedKind, PathBuf)> = inspector
        .attached()
        .unwrap()
        .into_iter()
        .map(|a| (a.name, a.kind, a.log))
        .collect();
    assert_eq!(
        attached,
        [
            (
                "workers".to_owned(),
                AttachedKind::Group,
                source_dir.join("workers.group")
            ),
            (
                "mailer".to_owned(),
                AttachedKind::Job,
                dir.path().join("orders.jobs/mailer")
            ),
            (
                "stock".to_owned(),
                AttachedKind::Table,
                dir.path().join("orders.tables/stock/changelog")
            ),
        ]
    );
    assert!(holder.attached().unwrap().is_empty());
}
