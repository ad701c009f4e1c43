//! Golden logs of earlier format versions keep opening (tests/fixtures/).
//! A version-1 log is read as it is by a read-only handle, and a writer
//! rewrites its `META` as version 2 (a log id, the declared event type)
//! and starts a version-2 segment, without touching a record or a consumer
//! position. A version-2 log (checkpoints among its records) reads the
//! same with every later build.

use std::path::Path;

use backbone::inspect::Inspector;
use backbone::{Checkpoint, EventLog, Options, SourcePosition, Start};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Checkout {
    order_id: u64,
    sku: String,
    qty: u32,
}

fn expected(i: u64) -> Checkout {
    Checkout {
        order_id: i,
        sku: format!("SKU-{:04}", i % 37),
        qty: (i % 5 + 1) as u32,
    }
}

fn copy_fixture(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn assert_records(log: &EventLog<Checkout>) {
    let values: Vec<_> = log
        .read(Start::Beginning)
        .map(|rec| rec.unwrap())
        .map(|rec| (rec.offset, rec.value))
        .collect();
    assert_eq!(values.len(), 300);
    for (offset, value) in values {
        assert_eq!(value, expected(offset));
    }
}

#[test]
fn a_version_1_log_opens_read_only_as_it_is_and_is_upgraded_by_a_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    copy_fixture("v1-checkouts", &dir);
    let meta_before = std::fs::read(dir.join("META")).unwrap();

    // Read-only: everything readable, nothing changed, no id yet.
    {
        let log: EventLog<Checkout> = Options::new().read_only().open(&dir).unwrap();
        assert_records(&log);
        assert_eq!(log.log_id(), None);
        assert_eq!(log.event_type(), None);
        assert_eq!(log.recovery_report().meta_upgraded, None);
        let positions: Vec<_> = log
            .consumers()
            .unwrap()
            .into_iter()
            .map(|c| (c.name, c.position))
            .collect();
        assert_eq!(
            positions,
            [("email".to_owned(), 300), ("shipping".to_owned(), 120)]
        );
        let meta = Inspector::open(&dir).unwrap().meta();
        assert_eq!((meta.meta_version, meta.log_id), (1, None));
        assert_eq!(meta.type_name, "make_fixture::Checkout");
    }
    assert_eq!(std::fs::read(dir.join("META")).unwrap(), meta_before);

    // A writer: META becomes version 2, with an id and the event type;
    // the newest segment (version 1, holding records) is sealed and a
    // version-2 segment starts at the next offset. The older segments'
    // bytes are not touched.
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1-checkouts");
    let id = {
        let log: EventLog<Checkout> = EventLog::open(&dir).unwrap();
        assert_eq!(log.recovery_report().meta_upgraded, Some(1));
        assert!(log.recovery_report().segment_format_upgraded);
        let version = |name: &str| {
            let bytes = std::fs::read(dir.join(name)).unwrap();
            u32::from_le_bytes(bytes[8..12].try_into().unwrap())
        };
        assert_eq!(version("00000000000000000227.seg"), 1);
        assert_eq!(version("00000000000000000300.seg"), 2);
        for name in ["00000000000000000000.seg", "00000000000000000115.seg"] {
            assert_eq!(
                std::fs::read(dir.join(name)).unwrap(),
                std::fs::read(fixture.join(name)).unwrap(),
                "{name} changed"
            );
        }
        assert_eq!(log.event_type(), Some(("Checkout", 1)));
        let id = log.log_id().expect("a writer gives the log an id");
        assert_records(&log);
        assert_eq!(log.verify().unwrap(), 300);
        assert_eq!(log.consumer("shipping").unwrap().position(), 120);
        assert_eq!(log.append(&expected(300)).unwrap(), 300);
        log.close().unwrap();
        id
    };
    let meta = Inspector::open(&dir).unwrap().meta();
    assert_eq!(meta.meta_version, 2);
    assert_eq!(meta.log_id, Some(id));
    assert_eq!(meta.event_type, Some(("Checkout".to_owned(), 1)));

    // The id stays; the type is now checked; the log is read across the
    // version-1 and version-2 segments.
    let log: EventLog<Checkout> = EventLog::open(&dir).unwrap();
    assert_eq!(log.recovery_report().meta_upgraded, None);
    assert!(!log.recovery_report().segment_format_upgraded);
    assert_eq!(log.verify().unwrap(), 301);
    assert_eq!(log.log_id(), Some(id));
    assert_eq!(log.get(300).unwrap().unwrap().value, expected(300));
    drop(log);
    assert!(matches!(
        EventLog::<(u64, String, u32)>::open(&dir),
        Err(backbone::Error::EventTypeMismatch { .. })
    ));
}

/// The checkpoint stored after record `end` of the version-2 fixture.
fn fixture_checkpoint(end: u64) -> Checkpoint {
    Checkpoint::new("totals")
        .with_position(SourcePosition::External {
            name: "orders".into(),
            sequence: end,
        })
        .with_state(format!("total qty up to {end}").into_bytes())
}

fn v2_options() -> Options {
    Options::new()
        .segment_bytes(4096)
        .index_interval_bytes(512)
        .event_type("Checkout", 1)
}

/// Writes tests/fixtures/v2-checkouts again (run by hand with
/// `BACKBONE_MAKE_FIXTURE=dir cargo test --test fixtures make_v2_fixture`;
/// a golden log is made once, by the build that introduced its version).
#[test]
fn make_v2_fixture() {
    let Some(dir) = std::env::var_os("BACKBONE_MAKE_FIXTURE") else {
        return;
    };
    let log: EventLog<Checkout> = v2_options().open(Path::new(&dir)).unwrap();
    for start in (0..300).step_by(50) {
        let values: Vec<Checkout> = (start..start + 50).map(expected).collect();
        log.append_committing(&values, &fixture_checkpoint(start + 50))
            .unwrap();
    }
    log.consumer("shipping").unwrap().commit(120).unwrap();
    log.close().unwrap();
}

#[test]
fn a_version_2_log_with_checkpoints_opens_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    copy_fixture("v2-checkouts", &dir);
    {
        let log: EventLog<Checkout> = Options::new().read_only().open(&dir).unwrap();
        assert_records(&log);
        assert_eq!(
            log.last_checkpoint("totals").unwrap(),
            Some(fixture_checkpoint(300))
        );
        let meta = Inspector::open(&dir).unwrap().meta();
        assert_eq!(meta.meta_version, 2);
        assert_eq!(meta.event_type, Some(("Checkout".to_owned(), 1)));
    }
    let log: EventLog<Checkout> = v2_options().open(&dir).unwrap();
    let report = log.recovery_report();
    assert!(report.is_clean() && report.closed_cleanly, "{report:?}");
    assert!(!report.segment_format_upgraded);
    assert_eq!(log.verify().unwrap(), 300);
    assert_eq!(log.consumer("shipping").unwrap().position(), 120);
    assert!(
        std::fs::read_dir(&dir).unwrap().count() > 8,
        "several segments"
    );
    assert_records(&log);
    assert_eq!(
        log.last_checkpoint("totals").unwrap(),
        Some(fixture_checkpoint(300))
    );
}
