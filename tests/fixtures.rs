//! Golden logs of earlier format versions keep opening (tests/fixtures/).
//! A version-1 log is read as it is by a read-only handle, and a writer
//! rewrites its `META` as version 2 (a log id, the declared event type)
//! without touching a record or a consumer position.

use std::path::Path;

use backbone::inspect::Inspector;
use backbone::{EventLog, Options, Start};
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

    // A writer: META becomes version 2, with an id and the event type.
    let id = {
        let log: EventLog<Checkout> = EventLog::open(&dir).unwrap();
        assert_eq!(log.recovery_report().meta_upgraded, Some(1));
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

    // The id stays; the type is now checked.
    let log: EventLog<Checkout> = EventLog::open(&dir).unwrap();
    assert_eq!(log.recovery_report().meta_upgraded, None);
    assert_eq!(log.log_id(), Some(id));
    assert_eq!(log.get(300).unwrap().unwrap().value, expected(300));
    drop(log);
    assert!(matches!(
        EventLog::<(u64, String, u32)>::open(&dir),
        Err(backbone::Error::EventTypeMismatch { .. })
    ));
}
