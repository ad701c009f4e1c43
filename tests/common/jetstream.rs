//! Reading back what a bridge published, for the tests of the `nats`
//! feature: every message on a subject tree with the headers a mirror
//! sets, and the check that one log's messages are its offsets once each,
//! in order, with its bytes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use backbone::{EventLog, Start};
use futures_util::StreamExt;

use super::Checkout;

/// A message on the subject tree as the tests check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub subject: String,
    pub sequence: u64,
    pub log_id: String,
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// A runtime for the tests' own client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A client of `urls` (comma-separated, as a bridge takes them).
pub async fn client(urls: &str) -> async_nats::Client {
    let servers: Vec<&str> = urls.split(',').collect();
    async_nats::connect(servers.as_slice()).await.unwrap()
}

/// The stream's state and settings.
pub fn stream_info(urls: &str, stream: &str) -> jetstream::stream::Info {
    runtime().block_on(async {
        let js = jetstream::new(client(urls).await);
        let mut stream = js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().clone()
    })
}

/// Every message of `stream` under `filter`, in stream order, read with an
/// ordered consumer.
pub fn stored(urls: &str, stream: &str, filter: &str) -> Vec<Stored> {
    runtime().block_on(async {
        let js = jetstream::new(client(urls).await);
        let mut stream = js.get_stream(stream).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        if last == 0 {
            return out;
        }
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: filter.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(message)) = next else { break };
            let message = message.unwrap();
            let info = message.info().unwrap();
            let (sequence, pending) = (info.stream_sequence, info.pending);
            let headers = message.headers.clone().unwrap();
            out.push(Stored {
                subject: message.subject.to_string(),
                sequence,
                log_id: headers.get("Backbone-Log-Id").unwrap().to_string(),
                offset: headers
                    .get("Backbone-Offset")
                    .unwrap()
                    .as_str()
                    .parse()
                    .unwrap(),
                payload: message.payload.to_vec(),
            });
            if pending == 0 && sequence >= last {
                break;
            }
        }
        out
    })
}

/// Asserts that the messages of `log` among `messages` are its offsets
/// `from..to`, once each, in order, on its own subject, with its bytes
/// (postcard encodes one way).
pub fn assert_log_on_subject(messages: &[Stored], log: &EventLog<Checkout>, from: u64, to: u64) {
    let id = log.log_id().unwrap().to_string();
    let ours: Vec<&Stored> = messages.iter().filter(|m| m.log_id == id).collect();
    for m in &ours {
        assert!(
            m.subject.ends_with(&id),
            "{m:?} is not on its log's subject"
        );
    }
    let offsets: Vec<u64> = ours.iter().map(|m| m.offset).collect();
    let differences: Vec<(u64, u64)> = offsets
        .iter()
        .copied()
        .zip(from..)
        .filter(|(o, i)| o != i)
        .take(8)
        .collect();
    assert!(
        offsets.len() as u64 == to - from && differences.is_empty(),
        "the subject holds {} messages of {id} for offsets {from}..{to}: repeated, missing or \
         out of order; first (offset, expected) differences {differences:?}",
        offsets.len()
    );
    for (message, record) in ours.iter().zip(log.read(Start::Offset(from))) {
        let record = record.unwrap();
        let bytes = postcard::to_allocvec(&record.value).unwrap();
        assert!(
            message.payload == bytes,
            "payload of offset {} (stream sequence {}) is not the log's record {:?}",
            record.offset,
            message.sequence,
            record.value
        );
    }
}

/// Asserts that `messages` are all of `log`'s: its offsets
/// `0..log.next_offset()`, once each, in order, and nothing else.
pub fn assert_subject_holds(messages: &[Stored], log: &EventLog<Checkout>) {
    let id = log.log_id().unwrap().to_string();
    let others = messages.iter().filter(|m| m.log_id != id).count();
    assert_eq!(others, 0, "messages of another log on the subject tree");
    assert_log_on_subject(messages, log, 0, log.next_offset());
}

/// Every value of `log`, in order.
pub fn values(log: &EventLog<Checkout>) -> Vec<Checkout> {
    log.read(Start::Beginning)
        .map(|r| r.unwrap().value)
        .collect()
}

/// Sets its flag when dropped: stops a thread however a scope ends, a
/// failed assertion included.
pub struct SetOnDrop<'a>(pub &'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// An application appending to `log` until `stop`: 1 to 19 checkouts
/// numbered by offset, every 1 to 5 ms.
pub fn keep_appending(log: &EventLog<Checkout>, stop: &AtomicBool, seed: u64) {
    let mut rng = super::Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        let next = log.next_offset();
        let n = rng.range(1, 20);
        let batch: Vec<Checkout> = (next..next + n).map(super::checkout).collect();
        log.append_batch(&batch).unwrap();
        std::thread::sleep(Duration::from_micros(rng.range(1_000, 5_000)));
    }
}

/// Asserts that a source's log holds exactly the mirrored log's records.
pub fn assert_same_records(copied: &[Checkout], expected: &[Checkout]) {
    assert_eq!(
        copied.len(),
        expected.len(),
        "the source's log holds {} records, the mirrored log {}",
        copied.len(),
        expected.len()
    );
    assert!(
        copied == expected,
        "the source's log differs from the mirrored one"
    );
}
