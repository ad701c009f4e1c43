//! The bridge to NATS JetStream against a real nats-server (started by
//! the tests, `sync_interval: always`): mirror and source round trips,
//! restarts of the server and of the bridge, the duplicate window, several
//! logs in one subject tree, and the errors that keep a foreign position
//! from ever being a resume point.
#![cfg(feature = "nats")]

mod common;

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use backbone::nats::{Mirror, Source};
use backbone::{EventLog, Options};
use common::jetstream::{assert_log_on_subject, runtime, stored, values};
use common::nats::NatsServer;
use common::{checkout, Checkout};

const WAIT: Duration = Duration::from_secs(60);

fn open(dir: &Path) -> EventLog<Checkout> {
    Options::new().open(dir).unwrap()
}

#[test]
fn a_mirror_and_a_source_carry_100k_records_exactly_once() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = open(&dir.path().join("checkouts"));
    let remote = open(&dir.path().join("remote"));
    let appended: Vec<Checkout> = (0..100_000).map(checkout).collect();
    for chunk in appended[..50_000].chunks(1000) {
        local.append_batch(chunk).unwrap();
    }
    let mirror = Mirror::new(&local, &server.url(), "shop.checkouts")
        .unwrap()
        .start()
        .unwrap();
    let source = Source::new(&server.url(), "shop.checkouts", &remote)
        .unwrap()
        .start()
        .unwrap();
    // Appends go on while both run.
    for chunk in appended[50_000..].chunks(1000) {
        local.append_batch(chunk).unwrap();
    }
    assert!(mirror.wait_for(100_000, WAIT).unwrap(), "{mirror:?}");
    assert_eq!(mirror.lag(), 0);
    // One message per record on this stream: sequences 1..=100,000.
    assert!(source.wait_for(100_000, WAIT).unwrap(), "{source:?}");
    remote.flush().unwrap();
    let copied: Vec<Checkout> = values(&remote);
    assert_eq!(
        copied.len(),
        appended.len(),
        "{source:?} next {}",
        remote.next_offset()
    );
    assert!(
        copied == appended,
        "the source's log differs from the mirrored one"
    );
    let messages = stored(&server.url(), "shop_checkouts", "shop.checkouts.>");
    assert_log_on_subject(&messages, &local, 0, 100_000);
    assert_eq!(
        messages[0].subject,
        format!("shop.checkouts.{}", local.log_id().unwrap())
    );
    // The mirror's position is a registered reader of the local log.
    let reader = local
        .readers()
        .unwrap()
        .into_iter()
        .find(|r| r.name == "nats-mirror.shop_checkouts")
        .expect("the mirror registers as a reader");
    assert_eq!(reader.kind, backbone::ReaderKind::Mirror);
    mirror.stop();
    mirror.join().unwrap();
    source.stop();
    source.join().unwrap();
    let checkpoint = remote
        .last_checkpoint("nats-source.shop_checkouts")
        .unwrap()
        .unwrap();
    assert_eq!(
        checkpoint.positions(),
        &[backbone::SourcePosition::External {
            name: "nats:shop_checkouts".into(),
            sequence: 100_000
        }]
    );
}

/// Appends `n` checkouts numbered from the log's next offset.
fn append(log: &EventLog<Checkout>, n: u64) {
    let from = log.next_offset();
    let values: Vec<Checkout> = (from..from + n).map(checkout).collect();
    for chunk in values.chunks(1000) {
        log.append_batch(chunk).unwrap();
    }
}

fn mirror_until(mirror: &backbone::nats::MirrorHandle, offset: u64) {
    assert!(mirror.wait_for(offset, WAIT).unwrap(), "{mirror:?}");
}

#[test]
fn a_restart_after_the_duplicate_window_publishes_nothing_twice() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = open(&dir.path().join("checkouts"));
    append(&local, 3_000);
    let start = || {
        Mirror::new(&local, &server.url(), "shop.late")
            .unwrap()
            .duplicate_window(Duration::from_millis(500))
            .start()
            .unwrap()
    };
    let mirror = start();
    mirror_until(&mirror, 3_000);
    mirror.stop();
    mirror.join().unwrap();
    // The reader file lags: as if the process had crashed before writing
    // it. Only the subject's last message says where to resume.
    assert!(local.delete_reader("nats-mirror.shop_late").unwrap());
    std::thread::sleep(Duration::from_millis(1_500));
    append(&local, 1_000);
    let mirror = start();
    mirror_until(&mirror, 4_000);
    mirror.stop();
    mirror.join().unwrap();
    let messages = stored(&server.url(), "shop_late", "shop.late.>");
    assert_log_on_subject(&messages, &local, 0, 4_000);
}

#[test]
fn messages_removed_by_max_age_are_not_published_again() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = open(&dir.path().join("checkouts"));
    append(&local, 2_000);
    let start = || {
        Mirror::new(&local, &server.url(), "shop.aged")
            .unwrap()
            .max_age(Duration::from_secs(1))
            .duplicate_window(Duration::from_millis(500))
            .start()
            .unwrap()
    };
    let mirror = start();
    mirror_until(&mirror, 2_000);
    mirror.stop();
    mirror.join().unwrap();
    // Every message expires: the subject no longer says where the mirror
    // stood; its reader position in the log (synced when it stopped) does.
    let deadline = std::time::Instant::now() + WAIT;
    while !stored(&server.url(), "shop_aged", "shop.aged.>").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "messages never expired"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    append(&local, 500);
    let mirror = start();
    mirror_until(&mirror, 2_500);
    mirror.stop();
    mirror.join().unwrap();
    let messages = stored(&server.url(), "shop_aged", "shop.aged.>");
    assert_log_on_subject(&messages, &local, 2_000, 2_500);
}

#[test]
fn two_logs_mirror_into_one_subject_tree_and_one_source_reads_both() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let east = open(&dir.path().join("east"));
    let west = open(&dir.path().join("west"));
    let all = open(&dir.path().join("all"));
    let url = server.url();
    let east_mirror = Mirror::new(&east, &url, "shop.orders")
        .unwrap()
        .start()
        .unwrap();
    // The second mirror names its own reader: one stream, two logs.
    let west_mirror = Mirror::new(&west, &url, "shop.orders")
        .unwrap()
        .start()
        .unwrap();
    let source = Source::new(&url, "shop.orders", &all)
        .unwrap()
        .start()
        .unwrap();
    for _ in 0..10 {
        append(&east, 700);
        append(&west, 300);
    }
    mirror_until(&east_mirror, 7_000);
    mirror_until(&west_mirror, 3_000);
    assert!(source.wait_for(10_000, WAIT).unwrap(), "{source:?}");
    all.flush().unwrap();
    let messages = stored(&url, "shop_orders", "shop.orders.>");
    assert_eq!(messages.len(), 10_000);
    assert_log_on_subject(&messages, &east, 0, 7_000);
    assert_log_on_subject(&messages, &west, 0, 3_000);
    // The source's log holds each record once, each log's in its order.
    let copied: Vec<Checkout> = values(&all);
    assert_eq!(copied.len(), 10_000);
    let mut east_seen = Vec::new();
    let mut west_seen = Vec::new();
    for (message, value) in messages.iter().zip(&copied) {
        assert_eq!(postcard::to_allocvec(value).unwrap(), message.payload);
        if message.log_id == east.log_id().unwrap().to_string() {
            east_seen.push(value.clone());
        } else {
            west_seen.push(value.clone());
        }
    }
    assert!(east_seen == values(&east) && west_seen == values(&west));
    for handle in [east_mirror, west_mirror] {
        handle.stop();
        handle.join().unwrap();
    }
    source.stop();
    source.join().unwrap();
}

#[test]
fn a_foreign_message_on_the_mirrors_subject_is_never_a_resume_point() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = open(&dir.path().join("checkouts"));
    append(&local, 10);
    let mirror = Mirror::new(&local, &server.url(), "shop.spoof")
        .unwrap()
        .start()
        .unwrap();
    mirror_until(&mirror, 10);
    mirror.stop();
    mirror.join().unwrap();
    // Someone else publishes on this log's subject.
    let subject = format!("shop.spoof.{}", local.log_id().unwrap());
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Backbone-Log-Id", "0123456789abcdef0123456789abcdef");
        headers.insert("Backbone-Offset", "10");
        js.publish_with_headers(subject, headers, "x".into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    append(&local, 10);
    let mirror = Mirror::new(&local, &server.url(), "shop.spoof")
        .unwrap()
        .start()
        .unwrap();
    match mirror.join() {
        Err(backbone::Error::LogIdMismatch { found, .. }) => {
            assert_eq!(found, "0123456789abcdef0123456789abcdef")
        }
        other => panic!("expected LogIdMismatch, got {other:?}"),
    }
}

#[test]
fn a_log_behind_its_subject_is_refused_and_a_new_log_gets_a_new_subject() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkouts");
    let old_copy = dir.path().join("old-copy");
    {
        let local = open(&path);
        append(&local, 100);
        local.close().unwrap();
    }
    copy_dir(&path, &old_copy);
    let local = open(&path);
    append(&local, 100);
    let first_id = local.log_id().unwrap();
    let mirror = Mirror::new(&local, &server.url(), "shop.restore")
        .unwrap()
        .start()
        .unwrap();
    mirror_until(&mirror, 200);
    mirror.stop();
    mirror.join().unwrap();
    drop(local);
    // The log restored from an older copy: the subject holds offsets the
    // log does not have.
    std::fs::remove_dir_all(&path).unwrap();
    copy_dir(&old_copy, &path);
    let restored = open(&path);
    assert_eq!(restored.log_id(), Some(first_id));
    let mirror = Mirror::new(&restored, &server.url(), "shop.restore")
        .unwrap()
        .start()
        .unwrap();
    match mirror.join() {
        Err(backbone::Error::CheckpointAhead { stored, next, .. }) => {
            assert_eq!((stored, next), (200, 100))
        }
        other => panic!("expected CheckpointAhead, got {other:?}"),
    }
    drop(restored);
    // Deleted and created again: a new id, a new subject; the old
    // messages stay as they were.
    std::fs::remove_dir_all(&path).unwrap();
    let fresh = open(&path);
    assert_ne!(fresh.log_id(), Some(first_id));
    append(&fresh, 50);
    let mirror = Mirror::new(&fresh, &server.url(), "shop.restore")
        .unwrap()
        .start()
        .unwrap();
    mirror_until(&mirror, 50);
    mirror.stop();
    mirror.join().unwrap();
    let messages = stored(&server.url(), "shop_restore", "shop.restore.>");
    assert_eq!(messages.len(), 250);
    assert_log_on_subject(&messages, &fresh, 0, 50);
    let old: Vec<u64> = messages
        .iter()
        .filter(|m| m.log_id == first_id.to_string())
        .map(|m| m.offset)
        .collect();
    assert!(old.iter().copied().eq(0..200));
}

#[test]
fn a_second_mirror_of_one_log_to_one_subject_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let local = open(&dir.path().join("checkouts"));
    // No server needed: the refusal comes before any connection.
    let first = Mirror::new(&local, "nats://127.0.0.1:1", "shop.twice")
        .unwrap()
        .start()
        .unwrap();
    let second = Mirror::new(&local, "nats://127.0.0.1:1", "shop.twice")
        .unwrap()
        .start();
    assert!(matches!(
        second,
        Err(backbone::Error::InvalidArgument { .. })
    ));
    // Unreachable server: the mirror retries and says so.
    std::thread::sleep(Duration::from_millis(300));
    let status = first.status();
    assert!(!status.connected && !status.finished, "{status:?}");
    first.stop();
    first.join().unwrap();
    // Once it has ended, the subject is free again.
    let again = Mirror::new(&local, "nats://127.0.0.1:1", "shop.twice")
        .unwrap()
        .start()
        .unwrap();
    again.stop();
    again.join().unwrap();
    for bad in ["", "shop.*", "shop..x"] {
        assert!(
            Mirror::new(&local, "nats://127.0.0.1:1", bad).is_err(),
            "{bad:?}"
        );
    }
    assert!(Mirror::new(&local, "nats://127.0.0.1:1", "s")
        .unwrap()
        .batch_size(1001)
        .start()
        .is_err());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_source_refuses_a_stream_created_again() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let local = open(&dir.path().join("checkouts"));
    let copy = open(&dir.path().join("copy"));
    append(&local, 100);
    let mirror = Mirror::new(&local, &url, "shop.again")
        .unwrap()
        .start()
        .unwrap();
    mirror_until(&mirror, 100);
    mirror.stop();
    mirror.join().unwrap();
    let source = Source::new(&url, "shop.again", &copy)
        .unwrap()
        .start()
        .unwrap();
    assert!(source.wait_for(100, WAIT).unwrap());
    source.stop();
    source.join().unwrap();
    // The stream deleted and made again: its sequences start over.
    runtime().block_on(async {
        let js = jetstream::new(async_nats::connect(url.clone()).await.unwrap());
        js.delete_stream("shop_again").await.unwrap();
    });
    append(&local, 10);
    let mirror = Mirror::new(&local, &url, "shop.again")
        .unwrap()
        .start()
        .unwrap();
    mirror_until(&mirror, 110);
    mirror.stop();
    mirror.join().unwrap();
    assert_eq!(stored(&url, "shop_again", "shop.again.>").len(), 10);
    let source = Source::new(&url, "shop.again", &copy)
        .unwrap()
        .start()
        .unwrap();
    match source.join() {
        Err(backbone::Error::Nats {
            op: "resume",
            reason,
        }) => {
            assert!(reason.contains("created again"), "{reason}")
        }
        other => panic!("expected a refusal to resume, got {other:?}"),
    }
    assert_eq!(copy.next_offset(), 100, "nothing appended");
}

#[cfg(feature = "json")]
#[test]
fn a_source_refuses_records_of_another_codec() {
    let Some(server) = NatsServer::start() else {
        return;
    };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    // A log of another codec: refused before anything is appended.
    let json: EventLog<Checkout, backbone::Json> = Options::new()
        .open_with_codec(dir.path().join("json"), backbone::Json)
        .unwrap();
    json.append(&checkout(1)).unwrap();
    let mirror = Mirror::new(&json, &url, "shop.mixed")
        .unwrap()
        .start()
        .unwrap();
    mirror_until(&mirror, 1);
    let other = open(&dir.path().join("other"));
    let source = Source::new(&url, "shop.mixed", &other)
        .unwrap()
        .start()
        .unwrap();
    match source.join() {
        Err(backbone::Error::Nats {
            op: "source",
            reason,
        }) => {
            assert!(reason.contains("json"), "{reason}")
        }
        other => panic!("expected a codec refusal, got {other:?}"),
    }
    assert_eq!(other.next_offset(), 0);
}

#[test]
fn credentials_pass_through_and_a_refusal_ends_the_bridge() {
    let Some(server) = NatsServer::start_with("authorization { user: alice, password: s3cret }")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let local = open(&dir.path().join("checkouts"));
    append(&local, 100);
    let mirror = Mirror::new(&local, &server.url(), "shop.auth")
        .unwrap()
        .connect(backbone::nats::Connect::new().user_password("alice", "s3cret"))
        .start()
        .unwrap();
    mirror_until(&mirror, 100);
    mirror.stop();
    mirror.join().unwrap();
    let copy = open(&dir.path().join("copy"));
    let source = Source::new(&server.url(), "shop.auth", &copy)
        .unwrap()
        .connect(backbone::nats::Connect::new().user_password("alice", "wrong"))
        .start()
        .unwrap();
    match source.join() {
        Err(backbone::Error::Nats {
            op: "connect",
            reason,
        }) => {
            assert!(reason.contains("authorization"), "{reason}")
        }
        other => panic!("expected the credentials refused, got {other:?}"),
    }
    // The password never reaches the reader file or a Debug print.
    let debug = format!(
        "{:?}",
        backbone::nats::Connect::new().user_password("alice", "s3cret")
    );
    assert!(
        debug.contains("alice") && !debug.contains("s3cret"),
        "{debug}"
    );
}
