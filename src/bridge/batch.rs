//! JetStream atomic batch publishing (ADR-50, NATS 2.12 and later) over
//! the core client, which async-nats does not wrap: every message of a
//! batch carries `Nats-Batch-Id` and `Nats-Batch-Sequence`, the last one
//! `Nats-Batch-Commit: 1`, and the server stores the batch whole or not at
//! all. The first message also carries `Nats-Expected-Last-Subject-
//! Sequence`, so a batch lands only right after the message the mirror
//! last saw acknowledged on its subject: a batch sent again after a lost
//! acknowledgement, or one that overtakes a failed one, is refused rather
//! than stored twice or after a gap. This module owns the wire protocol
//! of one batch and how each refusal is classed; the mirror owns what to
//! send and what to do about a refusal.

use std::time::Duration;

use async_nats::header::{
    NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::{Client, HeaderMap, Subject, Subscriber};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::error::Error;

/// The most messages JetStream takes in one atomic batch.
pub(crate) const MAX_BATCH: usize = 1000;

/// How often a wait for an acknowledgement looks for a lost connection.
const LOSS_CHECK: Duration = Duration::from_millis(50);

/// Why a batch was not stored.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The subject's last message is not the one expected: another batch
    /// landed first (a resend after a lost acknowledgement, or a second
    /// mirror). Resync from the subject.
    WrongLastSequence,
    /// Anything a retry can mend: a timeout, a lost connection, a leader
    /// change, a duplicate, too many batches in flight.
    Transient(String),
    /// What no retry mends: the stream refuses atomic batches, a message
    /// is larger than the server takes.
    Permanent(Error),
}

/// Publishes atomic batches for one mirror: its own reply inbox, and a
/// batch id unique to this publisher (a random prefix and a count), so
/// that a batch abandoned by a killed process never meets a new one.
pub(crate) struct BatchPublisher {
    client: Client,
    inbox: String,
    replies: Subscriber,
    id_prefix: String,
    count: u64,
}

impl BatchPublisher {
    pub(crate) async fn new(client: Client) -> Result<BatchPublisher, String> {
        let inbox = client.new_inbox();
        let replies = client
            .subscribe(format!("{inbox}.>"))
            .await
            .map_err(|e| format!("subscribe to replies: {e}"))?;
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| format!("batch id: {e}"))?;
        Ok(BatchPublisher {
            client,
            inbox,
            replies,
            id_prefix: format!("{:016x}", u64::from_le_bytes(random)),
            count: 0,
        })
    }

    /// Publishes `messages` (headers without the batch's own, and
    /// payloads) to `subject` as one atomic batch that must follow stream
    /// sequence `expected_last` on the subject (0: the subject is empty),
    /// and returns the stream sequence of its last message once the
    /// server has stored it all.
    pub(crate) async fn publish(
        &mut self,
        subject: &Subject,
        messages: Vec<(HeaderMap, Bytes)>,
        expected_last: u64,
        timeout: Duration,
        connection_lost: impl Fn() -> bool,
    ) -> Result<u64, Refused> {
        let n = messages.len();
        assert!(n > 0 && n <= MAX_BATCH, "a batch of {n} messages");
        self.count += 1;
        let id = format!("{}-{}", self.id_prefix, self.count);
        let first_reply = Subject::from(format!("{}.{}.s", self.inbox, self.count));
        let commit_reply = Subject::from(format!("{}.{}.c", self.inbox, self.count));
        let sent = |e: async_nats::PublishError| Refused::Transient(format!("publish: {e}"));
        for (i, (mut headers, payload)) in messages.into_iter().enumerate() {
            headers.insert(NATS_BATCH_ID, id.as_str());
            headers.insert(NATS_BATCH_SEQUENCE, (i + 1).to_string());
            if i == 0 {
                headers.insert(
                    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    expected_last.to_string(),
                );
            }
            if i + 1 == n {
                headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
                self.client
                    .publish_with_reply_and_headers(
                        subject.clone(),
                        commit_reply.clone(),
                        headers,
                        payload,
                    )
                    .await
                    .map_err(sent)?;
            } else if i == 0 {
                // The server answers the first message (empty when it
                // opens the batch); the answer is checked, not awaited.
                self.client
                    .publish_with_reply_and_headers(
                        subject.clone(),
                        first_reply.clone(),
                        headers,
                        payload,
                    )
                    .await
                    .map_err(sent)?;
            } else {
                self.client
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                    .map_err(sent)?;
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // A connection lost with the batch in flight: its answer may
            // never come, and the resync tells whether it landed.
            if connection_lost() {
                return Err(Refused::Transient(format!(
                    "connection lost with batch {id} in flight"
                )));
            }
            let wait = (tokio::time::Instant::now() + LOSS_CHECK).min(deadline);
            let reply = match tokio::time::timeout_at(wait, self.replies.next()).await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(Refused::Transient("reply subscription ended".into())),
                Err(_) if wait < deadline => continue,
                Err(_) => {
                    return Err(Refused::Transient(format!(
                        "no acknowledgement of batch {id} within {timeout:?}"
                    )))
                }
            };
            // Answers to earlier batches (one that timed out) are stale.
            if reply.subject == first_reply {
                if reply.payload.is_empty() {
                    continue;
                }
                return Err(classify(&id, &reply.payload));
            }
            if reply.subject != commit_reply {
                continue;
            }
            if reply
                .status
                .is_some_and(|s| s.is_server_error() || s.as_u16() == 503)
            {
                return Err(Refused::Transient(format!(
                    "batch {id}: no JetStream responder ({:?})",
                    reply.status
                )));
            }
            return match serde_json::from_slice::<Response<PublishAck>>(&reply.payload) {
                Ok(Response::Ok(ack)) => Ok(ack.sequence),
                Ok(Response::Err { .. }) | Err(_) => Err(classify(&id, &reply.payload)),
            };
        }
    }
}

/// Classes a refusal (a JetStream error reply) of batch `id`.
fn classify(id: &str, payload: &[u8]) -> Refused {
    use async_nats::jetstream::ErrorCode;
    let error = match serde_json::from_slice::<Response<PublishAck>>(payload) {
        Ok(Response::Err { error }) => error,
        _ => {
            return Refused::Transient(format!(
                "batch {id}: unexpected reply {:?}",
                String::from_utf8_lossy(&payload[..payload.len().min(200)])
            ))
        }
    };
    let code = error.error_code();
    if code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE {
        return Refused::WrongLastSequence;
    }
    let permanent = [
        ErrorCode::ATOMIC_PUBLISH_DISABLED,
        ErrorCode::ATOMIC_PUBLISH_UNSUPPORTED_HEADER,
        ErrorCode::ATOMIC_PUBLISH_TOO_LARGE_BATCH,
        ErrorCode::ATOMIC_PUBLISH_INVALID_BATCH_ID,
        ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM,
        ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM,
    ];
    if permanent.contains(&code) {
        return Refused::Permanent(Error::Nats {
            op: "atomic batch publish",
            reason: error.to_string(),
        });
    }
    Refused::Transient(format!("batch {id}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_classed_by_their_error_code() {
        let reply = |code: u32| {
            format!(r#"{{"error":{{"code":400,"err_code":{code},"description":"x"}}}}"#)
        };
        assert!(matches!(
            classify("b", reply(10071).as_bytes()),
            Refused::WrongLastSequence
        ));
        assert!(matches!(
            classify("b", reply(10174).as_bytes()),
            Refused::Permanent(Error::Nats { .. })
        ));
        assert!(matches!(
            classify("b", reply(10054).as_bytes()),
            Refused::Permanent(_)
        ));
        // A duplicate inside the batch, too many in flight: resync, retry.
        for code in [10201, 10210, 10176] {
            assert!(matches!(
                classify("b", reply(code).as_bytes()),
                Refused::Transient(_)
            ));
        }
        assert!(matches!(classify("b", b"not json"), Refused::Transient(_)));
    }
}
