//! What services need around the log: handles that do not keep a log open,
//! one holder per consumer name, commits that never move back, where a
//! consumer starts, listing and deleting consumers, automatic commit
//! policies, records that do not decode, and the small conveniences
//! (`last`, `Record::new`, `Timestamp`'s display).

mod common;

use std::sync::mpsc;
use std::time::Duration;

use backbone::{
    Codec, CodecError, CommitPolicy, ConsumerOptions, DeadLetter, Durability, Error, EventLog,
    Options, Record, Start, SubscribeOptions, Timestamp, Undecodable,
};

fn open(dir: &std::path::Path) -> EventLog<u64> {
    Options::new()
        .durability(Durability::Buffered)
        .open(dir)
        .unwrap()
}

/// Runs `f` on a thread and waits at most `limit` for it: a test of "this
/// ends" must fail, not hang, when it does not.
fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("did not finish within {limit:?}"))
}

// ---- lifecycle --------------------------------------------------------------

#[test]
fn consumers_cursors_and_subscriptions_do_not_keep_the_log_open() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_batch(&[1, 2, 3]).unwrap();
    let consumer = log.consumer("shipping").unwrap();
    let sub = consumer.subscribe().unwrap();
    let mut cursor = log.read(Start::Beginning);
    assert_eq!(cursor.next().unwrap().unwrap().value, 1);
    // The service drains what is there, then waits in `iter()`.
    let waiting = std::thread::spawn(move || {
        let received: Vec<u64> = sub.iter().map(|rec| rec.unwrap().value).collect();
        (received, sub.recv())
    });
    std::thread::sleep(Duration::from_millis(50));
    drop(log);

    // The subscription ends with `Closed` once the last log handle is gone,
    // after every record it had.
    let (received, after) = within(Duration::from_secs(10), move || waiting.join().unwrap());
    assert_eq!(received, vec![1, 2, 3]);
    assert!(matches!(after, Err(Error::Closed)), "{after:?}");
    // The log can be opened again while the consumer and the cursor live.
    let again = open(dir.path());
    assert_eq!(again.next_offset(), 3);
    // They are closed for good: they belong to the log that is gone.
    assert!(matches!(consumer.commit(1), Err(Error::Closed)));
    assert!(matches!(consumer.log(), Err(Error::Closed)));
    assert!(matches!(cursor.next(), Some(Err(Error::Closed))));
    assert!(cursor.next().is_none());
    // A new holder takes the name on the new log.
    again.consumer("shipping").unwrap().commit(2).unwrap();
}

#[test]
fn a_second_open_in_the_same_process_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let second = Options::new().open::<u64>(dir.path());
    match second {
        Err(
            e @ Error::Locked {
                in_this_process: true,
                ..
            },
        ) => assert!(
            e.to_string().contains("already open in this process"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
    drop(log);
    open(dir.path());
}

// ---- graceful close ---------------------------------------------------------------

#[test]
fn close_lets_live_subscriptions_receive_everything_appended_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let slow = log.subscribe(Start::Beginning).unwrap();
    let consumer = log.consumer("shipping").unwrap();
    let durable = consumer.subscribe_with(CommitPolicy::Every(1)).unwrap();
    log.append_batch(&(0..200).collect::<Vec<_>>()).unwrap();
    let slow = std::thread::spawn(move || {
        let mut got = Vec::new();
        for rec in slow.iter() {
            got.push(rec.unwrap().value);
            std::thread::sleep(Duration::from_micros(500));
        }
        got
    });
    let durable = std::thread::spawn(move || {
        durable.iter().fold(0usize, |n, r| {
            r.unwrap();
            n + 1
        })
    });
    std::thread::sleep(Duration::from_millis(5));
    let report = log.close().unwrap();
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.drained, 2);
    assert_eq!(slow.join().unwrap(), (0..200).collect::<Vec<_>>());
    assert_eq!(durable.join().unwrap(), 200);
    // The consumer committed as it went: record 199 counts as handled once
    // the next was asked for, which may come after the close (then its
    // commit fails and 199 is replayed after a restart: at-least-once).
    assert!(
        (199..=200).contains(&consumer.position()),
        "{}",
        consumer.position()
    );
}

#[test]
fn close_refuses_appends_at_once_and_reports_what_a_stuck_subscriber_missed() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = Options::new()
        .durability(Durability::Buffered)
        // Long enough for the receiving subscriber on a loaded machine; the
        // stuck one makes the close wait all of it.
        .close_timeout(Duration::from_secs(2))
        .open(dir.path())
        .unwrap();
    log.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();
    // Nobody receives from this one while the close waits.
    let stuck = log.subscribe(Start::Beginning).unwrap();
    assert_eq!(stuck.recv().unwrap().value, 0);
    let caught_up = log.subscribe(Start::End).unwrap();
    let caught_up = std::thread::spawn(move || {
        caught_up.iter().fold(0usize, |n, r| {
            r.unwrap();
            n + 1
        })
    });
    let other = log.clone();
    let closing = std::thread::spawn(move || log.close().unwrap());
    // While the close waits for the stuck subscriber, appends are refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match other.append(&99) {
            Err(Error::Closed) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "appends never refused"
        );
    }
    let report = closing.join().unwrap();
    assert_eq!(report.drained, 1, "{report:?}");
    assert_eq!(report.missed.len(), 1, "{report:?}");
    // The one that kept receiving got every append that got in before the
    // close; the stuck one had received record 0 of those and the ten.
    let appended_after = caught_up.join().unwrap() as u64;
    assert_eq!(report.missed[0], 9 + appended_after, "{report:?}");
    // It ends now, after what it had read ahead.
    let rest: Vec<_> = stuck.iter().collect();
    assert!(rest.iter().all(|r| r.is_ok()));
    assert!(rest.len() < 64);
    assert!(matches!(other.append(&1), Err(Error::Closed)));
}

#[test]
fn dropping_the_last_handle_never_waits_for_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    let log: EventLog<u64> = Options::new()
        .close_timeout(Duration::from_secs(3600))
        .open(dir.path())
        .unwrap();
    log.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();
    let stuck = log.subscribe(Start::Beginning).unwrap();
    within(Duration::from_secs(30), move || drop(log));
    assert!(stuck.iter().all(|r| r.is_ok()));
}

#[test]
fn a_stopped_subscription_hands_over_what_it_holds_then_ends() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_batch(&(0..100).collect::<Vec<_>>()).unwrap();
    let consumer = log.consumer("email").unwrap();
    let sub = consumer
        .subscribe_with(
            ConsumerOptions::new()
                .commit(CommitPolicy::OnDrop)
                .capacity(8),
        )
        .unwrap();
    assert_eq!(sub.recv().unwrap().value, 0);
    sub.stopper().stop();
    // The first read took one record and read ahead up to eight; those come,
    // then the end, though 100 are in the log.
    let rest: Vec<u64> = sub.iter().map(|r| r.unwrap().value).collect();
    assert!(rest.len() <= 8, "{rest:?}");
    assert_eq!(rest, (1..=rest.len() as u64).collect::<Vec<_>>());
    drop(sub);
    // Record 0 and the ones read ahead were handled (the iterator asked for
    // the one after the last and met the end).
    assert_eq!(consumer.position(), rest.len() as u64 + 1);

    // A receiver blocked waiting wakes and ends.
    let idle = log.subscribe(Start::End).unwrap();
    let stop = idle.stopper();
    let waiting = std::thread::spawn(move || idle.recv());
    std::thread::sleep(Duration::from_millis(20));
    stop.stop();
    let got = within(Duration::from_secs(10), move || waiting.join().unwrap());
    assert!(matches!(got, Err(Error::Closed)), "{got:?}");
}

// ---- one holder per consumer -------------------------------------------------

#[test]
fn a_consumer_name_has_one_holder_and_commits_never_move_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();
    let email = log.consumer("email").unwrap();
    let clone = email.clone();
    assert!(matches!(
        log.consumer("email"),
        Err(Error::ConsumerInUse { ref name }) if name == "email"
    ));
    // Another handle of the same log is the same log.
    assert!(matches!(
        log.clone().consumer_with("email", Start::End),
        Err(Error::ConsumerInUse { .. })
    ));

    clone.commit(6).unwrap();
    let behind = email.commit(2);
    assert!(
        matches!(
            behind,
            Err(Error::CommitBehind {
                position: 6,
                requested: 2,
                ..
            })
        ),
        "{behind:?}"
    );
    assert_eq!(email.position(), 6);
    email.commit(6).unwrap();
    // Moving back is asked for by name.
    email.seek(2).unwrap();
    assert_eq!(clone.position(), 2);
    assert_eq!(email.reset(Start::End).unwrap(), 10);
    assert_eq!(email.reset(Start::Beginning).unwrap(), 0);
    assert!(matches!(
        email.seek(11),
        Err(Error::OffsetOutOfRange {
            requested: 11,
            next: 10
        })
    ));

    // A subscription holds the consumer too.
    let sub = email.subscribe().unwrap();
    drop((email, clone));
    assert!(matches!(
        log.consumer("email"),
        Err(Error::ConsumerInUse { .. })
    ));
    drop(sub);
    let again = log.consumer("email").unwrap();
    assert_eq!(again.position(), 0);
}

#[test]
fn positions_and_lag_are_listed_without_taking_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();
    let shipping = log.consumer("shipping").unwrap();
    shipping.commit(4).unwrap();
    log.consumer("analytics").unwrap().commit(9).unwrap();
    let alerting = log.consumer_with("alerting", Start::End).unwrap();
    assert_eq!((alerting.position(), alerting.lag()), (10, 0));

    let listed: Vec<_> = log
        .consumers()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.position, c.lag, c.held))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("alerting".to_owned(), 10, 0, true),
            ("analytics".to_owned(), 9, 1, false),
            ("shipping".to_owned(), 4, 6, true),
        ]
    );

    // Deleting: refused while held, done when free.
    assert!(matches!(
        log.delete_consumer("shipping"),
        Err(Error::ConsumerInUse { .. })
    ));
    assert!(log.delete_consumer("analytics").unwrap());
    assert!(!log.delete_consumer("analytics").unwrap());
    assert!(matches!(
        log.delete_consumer("../escape"),
        Err(Error::InvalidName { .. })
    ));
    let names: Vec<_> = log
        .consumers()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["alerting", "shipping"]);
    // A deleted consumer starts afresh.
    assert_eq!(
        log.consumer_with("analytics", Start::Offset(3))
            .unwrap()
            .position(),
        3
    );
}

#[test]
fn a_new_consumer_starts_where_asked_and_an_existing_one_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_batch(&(0..5).collect::<Vec<_>>()).unwrap();
    let before = Timestamp::now();
    std::thread::sleep(Duration::from_millis(2));
    log.append_batch(&(5..8).collect::<Vec<_>>()).unwrap();

    let cases = [
        ("from-beginning", Start::Beginning, 0),
        ("from-end", Start::End, 8),
        ("from-offset", Start::Offset(6), 6),
        ("from-time", Start::Timestamp(before), 5),
    ];
    for (name, start, position) in cases {
        let consumer = log.consumer_with(name, start).unwrap();
        assert_eq!(consumer.position(), position, "{name}");
        // The stored position is durable from the start.
        drop(consumer);
        assert_eq!(
            log.consumer_with(name, Start::Beginning)
                .unwrap()
                .position(),
            position,
            "{name} resumes where it was, whatever the start says"
        );
    }
    assert!(matches!(
        log.consumer_with("too-far", Start::Offset(9)),
        Err(Error::OffsetOutOfRange {
            requested: 9,
            next: 8
        })
    ));
    assert!(log.consumers().unwrap().iter().all(|c| c.name != "too-far"));
    // A consumer made at the end of a Buffered log made those records
    // durable: its position never points past what a power loss keeps.
    log.append(&8).unwrap();
    log.consumer_with("late", Start::End).unwrap();
    assert_eq!(log.durable_offset(), 9);
}

// ---- commit policies ------------------------------------------------------------

#[test]
fn automatic_commits_cover_only_records_whose_successor_was_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();

    // Every(3): a commit each third record handed back.
    let consumer = log.consumer("every").unwrap();
    let sub = consumer.subscribe_with(CommitPolicy::Every(3)).unwrap();
    let mut positions = Vec::new();
    for _ in 0..7 {
        sub.recv().unwrap();
        positions.push(consumer.position());
    }
    // Received 0..=6; asking for 3 handed back 0, 1, 2 (commit 3); asking
    // for 6 handed back 3, 4, 5 (commit 6). Record 6 is in hand.
    assert_eq!(positions, [0, 0, 0, 3, 3, 3, 6]);
    drop(sub);
    // Dropping commits what was handed back, not the record in hand.
    assert_eq!(consumer.position(), 6);

    // OnDrop: nothing until the drop.
    let on_drop = log.consumer("on-drop").unwrap();
    let sub = on_drop.subscribe_with(CommitPolicy::OnDrop).unwrap();
    for _ in 0..5 {
        sub.recv().unwrap();
    }
    assert_eq!(on_drop.position(), 0);
    drop(sub);
    assert_eq!(on_drop.position(), 4);

    // Interval: commits when caught up with the log.
    let interval = log.consumer("interval").unwrap();
    let sub = interval
        .subscribe_with(CommitPolicy::Interval(Duration::from_secs(3600)))
        .unwrap();
    let got: Vec<u64> = std::iter::from_fn(|| sub.try_recv().unwrap())
        .map(|rec| rec.value)
        .collect();
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    assert_eq!(interval.position(), 10, "caught up: everything handed back");

    // Explicit: only `commit` commits, drop or not.
    let explicit = log.consumer("explicit").unwrap();
    let sub = explicit.subscribe().unwrap();
    for _ in 0..5 {
        sub.recv().unwrap();
    }
    sub.commit(2).unwrap();
    drop(sub);
    assert_eq!(explicit.position(), 2);
    // The stored positions survive a reopen.
    drop((consumer, on_drop, interval, explicit));
    drop(log);
    let log = open(dir.path());
    let stored: Vec<_> = log
        .consumers()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.position))
        .collect();
    assert_eq!(
        stored,
        [
            ("every".to_owned(), 6),
            ("explicit".to_owned(), 2),
            ("interval".to_owned(), 10),
            ("on-drop".to_owned(), 4)
        ]
    );
}

// ---- records that do not decode ----------------------------------------------------

/// A producer with a bug: it claims to write postcard but writes whatever
/// bytes it is given.
struct BuggyPostcard;

impl Codec<Vec<u8>> for BuggyPostcard {
    fn name(&self) -> &'static str {
        "postcard"
    }

    fn encode(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// A log of `u64` (postcard) with two records that are not `u64`s: at
/// offsets 1 and 3, bytes that end too early for a varint.
fn log_with_two_bad_records(dir: &std::path::Path) {
    // It claims the log's own type, too.
    let raw: EventLog<Vec<u8>, BuggyPostcard> = Options::new()
        .event_type("u64", 1)
        .open_with_codec(dir, BuggyPostcard)
        .unwrap();
    let good = |v: u64| postcard::to_allocvec(&v).unwrap();
    raw.append_batch(&[good(10), vec![0x80], good(12), vec![0xff, 0xff], good(14)])
        .unwrap();
}

#[test]
fn an_undecodable_record_is_handed_over_skipped_or_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    log_with_two_bad_records(&events);
    let log: EventLog<u64> = Options::new().open(&events).unwrap();

    // Yield (the default): the error comes in the record's place, and the
    // subscription goes on.
    let sub = log.subscribe(Start::Beginning).unwrap();
    let got: Vec<_> = (0..5)
        .map(|_| match sub.recv() {
            Ok(rec) => Ok(rec.value),
            Err(Error::Codec {
                offset: Some(o), ..
            }) => Err(o),
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(got, [Ok(10), Err(1), Ok(12), Err(3), Ok(14)]);

    // Skip.
    let sub = log
        .subscribe_with(SubscribeOptions::new(Start::Beginning).undecodable(Undecodable::Skip))
        .unwrap();
    let got: Vec<_> = std::iter::from_fn(|| sub.try_recv().unwrap())
        .map(|rec| (rec.offset, rec.value))
        .collect();
    assert_eq!(got, [(0, 10), (2, 12), (4, 14)]);

    // Dead letters: set aside with their bytes and the reason.
    let dead: EventLog<DeadLetter> = EventLog::open(dir.path().join("dead")).unwrap();
    let sub = log
        .subscribe_with(
            SubscribeOptions::new(Start::Beginning).undecodable(Undecodable::dead_letter(&dead)),
        )
        .unwrap();
    let got: Vec<_> = std::iter::from_fn(|| sub.try_recv().unwrap())
        .map(|rec| rec.value)
        .collect();
    assert_eq!(got, [10, 12, 14]);
    let letters: Vec<DeadLetter> = dead
        .read(Start::Beginning)
        .map(|rec| rec.unwrap().value)
        .collect();
    assert_eq!(letters.len(), 2);
    assert_eq!(
        letters
            .iter()
            .map(|l| (l.offset, l.payload.clone()))
            .collect::<Vec<_>>(),
        [(1, vec![0x80]), (3, vec![0xff, 0xff])]
    );
    assert!(letters.iter().all(|l| l.source.ends_with("events")));
    assert!(
        letters[0].reason.contains("postcard") && letters[0].reason.contains("offset 1"),
        "{}",
        letters[0].reason
    );
    let stored = backbone::inspect::Inspector::open(&events)
        .unwrap()
        .frames(Start::Offset(3))
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(letters[1].timestamp, stored.timestamp);

    // A consumer that skips them counts them as handled: caught up, an
    // Interval policy commits the whole log.
    let consumer = log.consumer("tolerant").unwrap();
    let sub = consumer
        .subscribe_with(
            ConsumerOptions::new()
                .commit(CommitPolicy::Interval(Duration::from_secs(3600)))
                .undecodable(Undecodable::Skip),
        )
        .unwrap();
    let got: Vec<u64> = std::iter::from_fn(|| sub.try_recv().unwrap())
        .map(|rec| rec.value)
        .collect();
    assert_eq!(got, [10, 12, 14]);
    assert_eq!(consumer.position(), 5);
}

#[test]
fn a_dead_letter_log_that_fails_stops_the_subscription_before_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    log_with_two_bad_records(&events);
    let log: EventLog<u64> = Options::new().open(&events).unwrap();
    let dead: EventLog<DeadLetter> = EventLog::open(dir.path().join("dead")).unwrap();
    let sub = log
        .subscribe_with(
            SubscribeOptions::new(Start::Beginning).undecodable(Undecodable::dead_letter(&dead)),
        )
        .unwrap();
    dead.clone().close().unwrap();
    assert_eq!(sub.recv().unwrap().value, 10);
    // Offset 1 could not be set aside: the error, then the end; never 12.
    assert!(matches!(sub.recv(), Err(Error::Closed)));
    assert!(matches!(sub.try_recv(), Err(Error::Closed)));
}

// ---- small things ---------------------------------------------------------------

#[test]
fn the_last_record_is_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert!(log.last().unwrap().is_none());
    log.append_batch(&[7, 8, 9]).unwrap();
    let last = log.last().unwrap().unwrap();
    assert_eq!((last.offset, last.value), (2, 9));
    // A service's unit test builds records by hand.
    let made = Record::new(2, last.timestamp, 9u64);
    assert_eq!(made, last);
    // Timestamps print as UTC times and convert to SystemTime and back.
    let shown = last.timestamp.to_string();
    assert!(
        shown.starts_with("20") && shown.ends_with('Z') && shown.len() == 27,
        "{shown}"
    );
    let system: std::time::SystemTime = last.timestamp.into();
    assert_eq!(Timestamp::from(system), last.timestamp);
}

// ---- declared event types and the log id -----------------------------------------------

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Checkout {
    order_id: u64,
}

#[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
struct Refund {
    order_id: u64,
}

impl backbone::Event for Refund {
    const NAME: &'static str = "shop.Refund";
    const VERSION: u32 = 4;
}

#[test]
fn a_log_records_its_event_type_and_refuses_another() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkouts");
    let log: EventLog<Checkout> = EventLog::open(&path).unwrap();
    // Undeclared: the type's own name, without its module path.
    assert_eq!(log.event_type(), Some(("Checkout", 1)));
    log.append(&Checkout { order_id: 1 }).unwrap();
    drop(log);
    // A same-shaped type of another name is refused at open, naming both.
    let err = EventLog::<Refund>::open(&path).unwrap_err();
    match &err {
        Error::EventTypeMismatch {
            expected, found, ..
        } => assert_eq!(
            (expected.as_str(), found.as_str()),
            ("Refund version 1", "Checkout version 1")
        ),
        other => panic!("{other:?}"),
    }
    // Opened anyway, it decodes: the codecs do not know names.
    let anyway: EventLog<Refund> = Options::new().any_event_type().open(&path).unwrap();
    assert_eq!(
        anyway.get(0).unwrap().unwrap().value,
        Refund { order_id: 1 }
    );
    assert_eq!(anyway.event_type(), Some(("Checkout", 1)));
}

#[test]
fn declared_versions_move_forward_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refunds");
    let open = |options: Options| options.open::<Refund>(&path);
    let log = open(Options::new().event::<Refund>()).unwrap();
    assert_eq!(log.event_type(), Some(("shop.Refund", 4)));
    drop(log);
    // The same declaration reopens; an older version is refused; a newer
    // one is recorded, after which the older is refused.
    drop(open(Options::new().event_type("shop.Refund", 4)).unwrap());
    assert!(matches!(
        open(Options::new().event_type("shop.Refund", 3)),
        Err(Error::EventTypeMismatch { .. })
    ));
    let newer = open(Options::new().event_type("shop.Refund", 5)).unwrap();
    assert_eq!(newer.recovery_report().meta_upgraded, Some(2));
    assert_eq!(newer.event_type(), Some(("shop.Refund", 5)));
    drop(newer);
    assert!(matches!(
        open(Options::new().event::<Refund>()),
        Err(Error::EventTypeMismatch { .. })
    ));
    // Another name, whatever the version.
    assert!(matches!(
        open(Options::new().event_type("shop.Return", 9)),
        Err(Error::EventTypeMismatch { .. })
    ));
    // Bad declarations are refused before touching the disk.
    for (name, version) in [("", 1), ("shop.Refund", 0), ("a\nb", 1)] {
        let fresh = dir.path().join("never");
        let result = Options::new()
            .event_type(name, version)
            .open::<Refund>(&fresh);
        assert!(
            matches!(
                result,
                Err(Error::InvalidOption {
                    name: "event_type",
                    ..
                })
            ),
            "{name:?} {version}: {result:?}"
        );
        assert!(!fresh.exists());
    }
}

#[test]
fn every_log_gets_its_own_id_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = open(&dir.path().join("a"));
    let b = open(&dir.path().join("b"));
    let (id_a, id_b) = (a.log_id().unwrap(), b.log_id().unwrap());
    assert_ne!(id_a, id_b);
    assert_eq!(id_a.to_string().len(), 32);
    drop(a);
    assert_eq!(open(&dir.path().join("a")).log_id(), Some(id_a));
    // A log deleted and created again is another log.
    std::fs::remove_dir_all(dir.path().join("a")).unwrap();
    assert_ne!(open(&dir.path().join("a")).log_id(), Some(id_a));
}

// ---- retention and consumers ----------------------------------------------------------

#[test]
fn retention_keeps_what_a_consumer_has_not_passed_unless_a_hard_limit_forces_it_out() {
    let dir = tempfile::tempdir().unwrap();
    let options = || {
        Options::new()
            .segment_bytes(4096)
            .durability(Durability::Buffered)
            .retention_bytes(2 * 4096)
    };
    let log: EventLog<Vec<u8>> = options().open(dir.path()).unwrap();
    let slow = log.consumer("slow").unwrap();
    for i in 0..200u8 {
        log.append(&vec![i; 100]).unwrap();
    }
    log.apply_retention().unwrap();
    // The byte budget is long exceeded, but "slow" is at 0.
    assert_eq!(log.first_offset(), 0);
    assert!(log.stats().segments > 3);
    // Once it moves on, what it passed goes.
    slow.commit(150).unwrap();
    log.apply_retention().unwrap();
    let first = log.first_offset();
    assert!(first > 0 && first <= 150, "{first}");
    drop((slow, log));

    // A hard limit removes records even a consumer still needs, and the
    // consumer cannot miss it.
    let log: EventLog<Vec<u8>> = options()
        .retention_hard_bytes(3 * 4096)
        .open(dir.path())
        .unwrap();
    let slow = log.consumer("slow").unwrap();
    for i in 0..200u8 {
        log.append(&vec![i; 100]).unwrap();
    }
    log.apply_retention().unwrap();
    let first = log.first_offset();
    assert!(first > 150, "{first}");
    assert_eq!(slow.position(), 150, "its position is not moved silently");
    assert!(matches!(
        slow.subscribe(),
        Err(Error::OffsetTruncated { requested: 150, first: f }) if f == first
    ));
    let mut read = slow.read();
    assert!(matches!(
        read.next(),
        Some(Err(Error::OffsetTruncated { requested: 150, .. }))
    ));
    drop(slow);
    // It stays so across a reopen, until it is moved on.
    drop(log);
    let log: EventLog<Vec<u8>> = options()
        .retention_hard_bytes(3 * 4096)
        .open(dir.path())
        .unwrap();
    let slow = log.consumer("slow").unwrap();
    assert_eq!((slow.position(), slow.clamped()), (150, None));
    assert!(slow.subscribe().is_err());
    assert_eq!(slow.reset(Start::Beginning).unwrap(), first);
    assert_eq!(slow.subscribe().unwrap().recv().unwrap().offset, first);
}

// ---- competing consumers --------------------------------------------------------------

use backbone::{GroupOptions, WorkGroup};

#[test]
fn a_work_group_shares_records_among_workers_each_acked_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("orders"));
    log.append_batch(&(0..500).collect::<Vec<_>>()).unwrap();
    let group = log.work_group("fulfil", GroupOptions::new()).unwrap();
    assert!(matches!(
        log.work_group("fulfil", GroupOptions::new()),
        Err(Error::ConsumerInUse { .. })
    ));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let group: WorkGroup<u64> = group.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                // Generous: an idle wait this long means the work is done,
                // even when another worker's ack waits on a slow fsync.
                while let Some(task) = group.recv_timeout(Duration::from_secs(2)).unwrap() {
                    mine.push(task.record.value);
                    task.ack().unwrap();
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<u64> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..500).collect::<Vec<_>>(),
        "each record to one worker"
    );
    assert_eq!((group.lag(), group.in_flight()), (0, 0));
    // New records go on being shared.
    log.append(&500).unwrap();
    let task = group
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!((task.record.offset, task.delivery), (500, 1));
    task.ack().unwrap();
    // Its position is listed like a consumer's, for monitoring and retention.
    drop(group);
    let listed = log.consumers().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].name.as_str(), listed[0].position),
        ("fulfil", 501)
    );
}

#[test]
fn unanswered_and_rejected_records_come_again_then_go_to_the_dead_letter_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("orders"));
    let dead: EventLog<DeadLetter> = EventLog::open(dir.path().join("dead")).unwrap();
    log.append_batch(&[10, 11]).unwrap();
    // Long enough that the dropped delivery cannot expire before record 1
    // is handed out, even on a loaded machine.
    let options = GroupOptions::new()
        .ack_timeout(Duration::from_millis(500))
        .max_deliveries(3)
        .dead_letter(&dead);
    let group: WorkGroup<u64> = log.work_group("g", options.clone()).unwrap();
    // Record 0: rejected, then dropped unanswered (a worker that died),
    // then rejected again: three deliveries, then set aside.
    let first = group.recv().unwrap();
    assert_eq!((first.record.offset, first.delivery), (0, 1));
    first.reject().unwrap();
    let again = group.recv().unwrap();
    assert_eq!((again.record.offset, again.delivery), (0, 2));
    drop(again);
    // Record 1 is handed out meanwhile; the dropped one comes back after
    // its ack timeout.
    let other = group.recv().unwrap();
    assert_eq!(other.record.offset, 1);
    let third = group
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!((third.record.offset, third.delivery), (0, 3));
    third.reject().unwrap();
    other.ack().unwrap();
    // A fourth delivery is not made: the record goes to the dead letters.
    assert!(group
        .recv_timeout(Duration::from_millis(100))
        .unwrap()
        .is_none());
    let letters: Vec<DeadLetter> = dead
        .read(Start::Beginning)
        .map(|r| r.unwrap().value)
        .collect();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].offset, 0);
    assert!(
        letters[0].reason.contains("3 times"),
        "{}",
        letters[0].reason
    );
    assert_eq!(group.lag(), 0);

    // Durable: reopened, nothing comes again.
    drop(group);
    let group: WorkGroup<u64> = log.work_group("g", options).unwrap();
    assert_eq!(group.lag(), 0);
    assert!(group
        .recv_timeout(Duration::from_millis(50))
        .unwrap()
        .is_none());
}

#[test]
fn a_delivery_that_timed_out_cannot_be_acked_twice() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(&dir.path().join("orders"));
    log.append(&1).unwrap();
    let group: WorkGroup<u64> = log
        .work_group(
            "g",
            GroupOptions::new().ack_timeout(Duration::from_millis(20)),
        )
        .unwrap();
    let slow = group.recv().unwrap();
    let fast = group
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    assert_eq!((slow.record.offset, fast.record.offset), (0, 0));
    assert_eq!(fast.delivery, 2);
    fast.ack().unwrap();
    assert!(matches!(slow.ack(), Err(Error::AlreadyAcked { offset: 0 })));
}

#[test]
fn a_reopened_group_delivers_again_what_was_in_flight_and_keeps_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders");
    let log = open(&path);
    log.append_batch(&(0..10).collect::<Vec<_>>()).unwrap();
    {
        let group: WorkGroup<u64> = log.work_group("g", GroupOptions::new()).unwrap();
        for _ in 0..5 {
            group.recv().unwrap().ack().unwrap();
        }
        // Two handed out and never answered: the process "dies".
        let held = (group.recv().unwrap(), group.recv().unwrap());
        std::mem::forget(held);
    }
    drop(log);
    let log = open(&path);
    let group: WorkGroup<u64> = log.work_group("g", GroupOptions::new()).unwrap();
    assert_eq!(group.lag(), 5);
    let mut got = Vec::new();
    while let Some(task) = group.recv_timeout(Duration::from_secs(1)).unwrap() {
        got.push((task.record.offset, task.delivery));
        task.ack().unwrap();
    }
    assert_eq!(got, [(5, 2), (6, 2), (7, 1), (8, 1), (9, 1)]);
}

#[test]
fn a_group_replays_through_its_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders");
    let log = open(&path);
    log.append_batch(&(0..2600).collect::<Vec<_>>()).unwrap();
    {
        // 2,500 deliveries and acks: 5,000 events, a snapshot among them.
        let group: WorkGroup<u64> = log.work_group("g", GroupOptions::new()).unwrap();
        for _ in 0..2500 {
            group.recv().unwrap().ack().unwrap();
        }
        let held: Vec<_> = (0..3).map(|_| group.recv().unwrap()).collect();
        std::mem::forget(held);
    }
    let group: WorkGroup<u64> = log.work_group("g", GroupOptions::new()).unwrap();
    assert_eq!(group.lag(), 100);
    let first = group.recv().unwrap();
    assert_eq!((first.record.offset, first.delivery), (2500, 2));
    let mut rest = 0;
    first.ack().unwrap();
    while let Some(task) = group.recv_timeout(Duration::from_secs(1)).unwrap() {
        assert!(task.record.offset > 2500);
        task.ack().unwrap();
        rest += 1;
    }
    assert_eq!((rest, group.lag()), (99, 0));
}

#[test]
fn a_delivery_that_triggers_a_snapshot_is_in_it() {
    // The 4,096th event of a group's log is a snapshot's trigger; here it
    // is a delivery, which the snapshot must count (it once did not, and
    // the record was never delivered again after a restart).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orders");
    let log = open(&path);
    log.append_batch(&(0..4100).collect::<Vec<_>>()).unwrap();
    {
        let group: WorkGroup<u64> = log.work_group("g", GroupOptions::new()).unwrap();
        let held: Vec<_> = (0..4100).map(|_| group.recv().unwrap()).collect();
        std::mem::forget(held);
    }
    let group: WorkGroup<u64> = log.work_group("g", GroupOptions::new()).unwrap();
    let mut again = Vec::new();
    while let Some(task) = group.recv_timeout(Duration::from_secs(1)).unwrap() {
        again.push((task.record.offset, task.delivery));
        task.ack().unwrap();
    }
    assert_eq!(again, (0..4100).map(|o| (o, 2)).collect::<Vec<_>>());
    assert_eq!(group.lag(), 0);
}

// ---- consumers in other processes -------------------------------------------------

#[test]
fn a_follower_owns_a_consumer_by_its_file_lock_and_commits_only_durable_positions() {
    let dir = tempfile::tempdir().unwrap();
    let writer: EventLog<u64> = Options::new()
        .durability(Durability::Interval(Duration::from_secs(3600)))
        .open(dir.path())
        .unwrap();
    writer.append_batch(&[1, 2, 3, 4]).unwrap();
    writer.sync().unwrap();
    writer.append(&5).unwrap();
    // Another open of the log (here a follower handle; in practice another
    // process) owns "audit".
    let follower: EventLog<u64> = Options::new().read_only().open(dir.path()).unwrap();
    let audit = follower.consumer("audit").unwrap();
    let seen: Vec<u64> = audit.read().map(|r| r.unwrap().value).collect();
    assert_eq!(seen, [1, 2, 3, 4], "record 5 is not durable yet");
    audit.commit(4).unwrap();
    // Only positions it could have read: what the writer made durable.
    assert!(matches!(
        audit.commit(5),
        Err(Error::OffsetOutOfRange {
            requested: 5,
            next: 4
        })
    ));
    // The writer's side sees it, cannot take it, nor delete it.
    let listed = writer.consumers().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].position), ("audit", 4));
    assert!(
        matches!(writer.consumer("audit"), Err(Error::ConsumerLocked { ref name, .. }) if name == "audit")
    );
    assert!(matches!(
        writer.delete_consumer("audit"),
        Err(Error::ConsumerLocked { .. })
    ));
    // Once the owner lets go, the name is free, at the position it left.
    drop(audit);
    let taken = writer.consumer("audit").unwrap();
    assert_eq!(taken.position(), 4);
    drop(taken);
    drop(follower);
    assert!(writer.delete_consumer("audit").unwrap());
    assert_eq!(writer.consumers().unwrap(), []);
}

#[test]
fn an_unfinished_consumer_creation_reads_as_no_consumer() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.append_batch(&[1, 2, 3]).unwrap();
    // A crash between creating the file and writing it leaves it empty.
    std::fs::write(dir.path().join("half.consumer"), b"").unwrap();
    std::fs::write(dir.path().join("zeros.consumer"), [0u8; 64]).unwrap();
    assert_eq!(log.consumers().unwrap(), []);
    let half = log.consumer_with("half", Start::End).unwrap();
    assert_eq!(half.position(), 3);
    half.commit(3).unwrap();
    drop(half);
    assert_eq!(log.consumers().unwrap().len(), 1);
    // A start the log cannot give leaves no file behind.
    assert!(log.consumer_with("far", Start::Offset(99)).is_err());
    assert!(!dir.path().join("far.consumer").exists());
}

#[test]
fn a_follower_process_can_run_a_work_group() {
    let dir = tempfile::tempdir().unwrap();
    let writer: EventLog<u64> = EventLog::open(dir.path()).unwrap();
    writer.append_batch(&[10, 11, 12]).unwrap();
    // Another open of the log (in practice another process) shares out its
    // records; the group's own log lives beside the writer's files.
    let follower: EventLog<u64> = Options::new().read_only().open(dir.path()).unwrap();
    let group = follower
        .work_group("pickers", backbone::GroupOptions::new())
        .unwrap();
    let mut handled = Vec::new();
    for _ in 0..3 {
        let task = group
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
        handled.push(task.record.value);
        task.ack().unwrap();
    }
    assert_eq!(handled, [10, 11, 12]);
    assert_eq!(group.lag(), 0);
    // Its floor is a consumer the writer's side sees.
    drop(group);
    let listed = writer.consumers().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "pickers");
}

#[test]
fn a_hand_off_whose_records_a_hard_limit_forced_out_is_told_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let source: EventLog<u64> = Options::new()
        .segment_bytes(4096)
        .retention_bytes(3 * 4096)
        .retention_hard_bytes(3 * 4096)
        .open(dir.path().join("source"))
        .unwrap();
    let out: EventLog<u64> = EventLog::open(dir.path().join("out")).unwrap();
    source.append_batch(&[1, 2, 3]).unwrap();
    let checkpoint = backbone::Checkpoint::new("copy")
        .source(&source, 1)
        .unwrap();
    out.append_committing(&[1], &checkpoint).unwrap();
    for i in 0..2000u64 {
        source.append(&i).unwrap();
    }
    let first = source.first_offset();
    assert!(first > 1, "the hard limit forced out what the reader needs");
    let stored = out.last_checkpoint("copy").unwrap().unwrap();
    let resume = stored.position_in(&source).unwrap();
    match source.subscribe(Start::Offset(resume)) {
        Err(Error::OffsetTruncated {
            requested,
            first: now,
        }) => assert_eq!((requested, now), (1, first)),
        other => panic!("expected OffsetTruncated, got {:?}", other.map(drop)),
    }
}
