//! [`Source`]: appends the records that mirrors published under one
//! subject tree (`<subject>.>`) into a local log, exactly once.
//!
//! It reads with an ordered consumer (nothing durable on the server: its
//! true position is in the local log) and appends each batch of messages
//! with a checkpoint holding the last JetStream stream sequence, through
//! the log's atomic append-and-commit: after any crash the log holds a
//! batch and its position or neither, and the source resumes right after
//! the sequence its last checkpoint holds. The checkpoint's state keeps,
//! per log id of origin, the next offset expected, so a message out of
//! order or missing (removed from the stream before this source read it)
//! is an error, never a silent hole.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use bytes::Bytes;
use futures_util::StreamExt;

use super::control::{BridgeStatus, Control};
use super::{
    check_stream_name, check_subject, default_stream_name, nats_error, stream_not_found,
    wait_connected, Backoff, Connect, Fault, CODEC_HEADER, EVENT_HEADER, LOG_ID_HEADER,
    OFFSET_HEADER, SOURCE_TIME_HEADER, TIMESTAMP_HEADER,
};
use crate::codec::{Codec, Postcard};
use crate::error::{Error, Result};
use crate::log::{Checkpoint, EventLog};
use crate::record::{LogId, SourcePosition, Timestamp};

/// A feed from JetStream into a local log, configured;
/// [`start`](Source::start) runs it.
///
/// ```no_run
/// use backbone::nats::Source;
/// use backbone::EventLog;
/// # fn main() -> backbone::Result<()> {
/// let remote_checkouts: EventLog<String> = EventLog::open("data/remote-checkouts")?;
/// let source = Source::new("nats://127.0.0.1:4222", "shop.checkouts", &remote_checkouts)?.start()?;
/// // ... remote_checkouts fills with what every machine's mirror publishes.
/// source.stop();
/// source.join()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Source<T, C = Postcard> {
    log: EventLog<T, C>,
    url: String,
    subject: String,
    stream: Option<String>,
    name: Option<String>,
    connect: Connect,
    batch_size: usize,
    linger: Duration,
    exclude_own: bool,
    backoff: (Duration, Duration),
}

impl<T: 'static, C: Codec<T>> Source<T, C> {
    /// A feed into `log` of every record published under `<subject>.>` on
    /// the JetStream server(s) at `url`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty URL or a bad subject;
    /// [`Error::ReadOnly`] for a read-only log handle.
    pub fn new(url: &str, subject: &str, log: &EventLog<T, C>) -> Result<Source<T, C>> {
        if url.trim().is_empty() {
            return Err(Error::InvalidArgument {
                name: "url",
                reason: "no server given".into(),
            });
        }
        check_subject(subject)?;
        if !log.is_writer() {
            return Err(Error::ReadOnly {
                path: log.path().to_path_buf(),
            });
        }
        Ok(Source {
            log: log.clone(),
            url: url.to_owned(),
            subject: subject.to_owned(),
            stream: None,
            name: None,
            connect: Connect::new(),
            batch_size: 1000,
            linger: Duration::from_millis(2),
            exclude_own: true,
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        })
    }

    /// The JetStream stream to read (default: the subject with `.`
    /// replaced by `_`, as [`Mirror`](super::Mirror) names it).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// The checkpoint name in the local log (default
    /// `nats-source.<stream>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Credentials, TLS and other connection options.
    pub fn connect(mut self, connect: Connect) -> Self {
        self.connect = connect;
        self
    }

    /// The most messages appended in one batch (default 1000).
    pub fn batch_size(mut self, messages: usize) -> Self {
        self.batch_size = messages.max(1);
        self
    }

    /// How long a batch waits for more messages once it has one (default
    /// 2 ms): latency against appends per sync.
    pub fn linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Whether records the local log itself published (its own mirror
    /// into the same subject tree) are skipped (default true): without,
    /// they would come back as copies.
    pub fn exclude_own(mut self, exclude: bool) -> Self {
        self.exclude_own = exclude;
        self
    }

    /// The retry back-off: from `min`, doubling to `max` (defaults 100 ms
    /// and 5 s), with jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Starts the feed on the bridges' shared runtime thread, resuming
    /// after the stream sequence of the log's last checkpoint of this
    /// source.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a stream name JetStream refuses;
    /// [`Error::InvalidName`]; the log's errors reading the checkpoint,
    /// and [`Error::Nats`] if it holds no position in this stream (a
    /// checkpoint of that name written by something else).
    pub fn start(self) -> Result<SourceHandle> {
        let stream = self
            .stream
            .clone()
            .unwrap_or_else(|| default_stream_name(&self.subject));
        check_stream_name(&stream)?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("nats-source.{stream}"));
        crate::name::validate(&name)?;
        let position_name = format!("nats:{stream}");
        let resume = Resumed::from_log(&self.log, &name, &position_name)?;
        let control = Arc::new(Control::new(resume.sequence));
        let pending = Arc::new(AtomicU64::new(0));
        let handle = SourceHandle {
            control: control.clone(),
            pending: pending.clone(),
            stream: stream.clone(),
            name: name.clone(),
        };
        let task = SourceTask {
            backoff: Backoff::new(self.backoff.0, self.backoff.1),
            own: self.log.log_id(),
            config: self,
            control,
            pending,
            stream,
            name,
            position_name,
            at: resume,
        };
        super::runtime::spawn(task.run())?;
        Ok(handle)
    }
}

/// A running [`Source`]. Dropping it asks the source to stop (as
/// [`stop`](SourceHandle::stop)) without waiting.
pub struct SourceHandle {
    control: Arc<Control>,
    pending: Arc<AtomicU64>,
    stream: String,
    name: String,
}

impl SourceHandle {
    /// The JetStream stream sequence of the last message handled (appended,
    /// or skipped as the log's own); 0 before the first.
    pub fn position(&self) -> u64 {
        self.control.position()
    }

    /// Messages in the stream after the last one handled, as the server
    /// said with that message.
    pub fn lag(&self) -> u64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Connection, last retried error, retries.
    pub fn status(&self) -> BridgeStatus {
        self.control.status()
    }

    /// The JetStream stream read.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The checkpoint name in the local log.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the message with stream sequence `sequence` is handled
    /// (`true`), or `timeout` passes or the source stops first (`false`).
    ///
    /// # Errors
    ///
    /// [`Error::Nats`] if the source ended with an error first.
    pub fn wait_for(&self, sequence: u64, timeout: Duration) -> Result<bool> {
        self.control.wait_for(sequence, timeout)
    }

    /// Asks the source to finish the batch it appends and stop.
    pub fn stop(&self) {
        self.control.request_stop();
    }

    /// Waits for the source to end, and says how.
    ///
    /// # Errors
    ///
    /// What stopped it for good: [`Error::LogIdMismatch`] (a message's
    /// subject and log id header disagree), [`Error::Nats`] (a message of
    /// another codec or event type, one missing or out of order for its
    /// log of origin, a checkpoint of another stream), [`Error::Codec`]
    /// (a payload this log's codec cannot decode: nothing of its batch is
    /// appended), or an append error of the log.
    pub fn join(self) -> Result<()> {
        self.control.join()
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        self.control.request_stop();
    }
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle")
            .field("stream", &self.stream)
            .field("position", &self.position())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Where the source stands: the last stream sequence handled and, per log
/// of origin, the next offset expected from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Resumed {
    sequence: u64,
    next: BTreeMap<u128, u64>,
}

impl Resumed {
    fn from_log<T, C: Codec<T>>(
        log: &EventLog<T, C>,
        name: &str,
        position_name: &str,
    ) -> Result<Resumed> {
        let Some(checkpoint) = log.last_checkpoint(name)? else {
            return Ok(Resumed::default());
        };
        let sequence = checkpoint.positions().iter().find_map(|p| match p {
            SourcePosition::External { name, sequence } if name == position_name => Some(*sequence),
            _ => None,
        });
        let refuse = |reason: String| Error::Nats {
            op: "resume",
            reason,
        };
        let Some(sequence) = sequence else {
            return Err(refuse(format!(
                "checkpoint {name} in {} holds no position in {position_name}: \
                 give the source another name",
                log.path().display()
            )));
        };
        let next = decode_state(checkpoint.state()).ok_or_else(|| {
            refuse(format!(
                "checkpoint {name} in {} has a state this build cannot read",
                log.path().display()
            ))
        })?;
        Ok(Resumed { sequence, next })
    }
}

/// The per-origin offsets as a checkpoint state: a count (`u32`), then
/// per origin its log id (`u128`) and next offset (`u64`), little-endian.
fn encode_state(next: &BTreeMap<u128, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + next.len() * 24);
    out.extend_from_slice(&(next.len() as u32).to_le_bytes());
    for (id, offset) in next {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
    }
    out
}

fn decode_state(bytes: &[u8]) -> Option<BTreeMap<u128, u64>> {
    let count = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let rest = &bytes[4..];
    if rest.len() != count.checked_mul(24)? {
        return None;
    }
    Some(
        rest.chunks_exact(24)
            .map(|entry| {
                let id = u128::from_le_bytes(entry[..16].try_into().expect("16 bytes"));
                let next = u64::from_le_bytes(entry[16..].try_into().expect("8 bytes"));
                (id, next)
            })
            .collect(),
    )
}

/// One message's part of a batch.
struct Incoming {
    sequence: u64,
    pending: u64,
    /// `None`: the log's own record, skipped.
    record: Option<(Bytes, Timestamp)>,
}

struct SourceTask<T, C> {
    config: Source<T, C>,
    control: Arc<Control>,
    pending: Arc<AtomicU64>,
    stream: String,
    name: String,
    position_name: String,
    own: Option<LogId>,
    at: Resumed,
    backoff: Backoff,
}

impl<T: 'static, C: Codec<T>> SourceTask<T, C> {
    async fn run(mut self) {
        let outcome = self.run_sessions().await;
        // The log handle goes before the end is reported.
        let control = self.control.clone();
        drop(self);
        control.set_connected(false);
        control.finish(outcome);
    }

    async fn run_sessions(&mut self) -> Result<()> {
        let name = format!("backbone source {}", self.name);
        let client = self
            .config
            .connect
            .client(&self.config.url, &name, &self.control)
            .await?;
        let js = jetstream::new(client.clone());
        loop {
            if self.control.stop_requested() {
                return Ok(());
            }
            match self.session(&client, &js).await {
                Ok(()) => return Ok(()),
                Err(Fault::Permanent(e)) => return Err(e),
                Err(Fault::Transient(reason)) => {
                    self.backoff.pause(&self.control, &reason).await;
                }
            }
        }
    }

    /// Reads from the stream after the position, appending batch after
    /// batch, until stopped (`Ok`) or a failure.
    async fn session(
        &mut self,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> std::result::Result<(), Fault> {
        if !wait_connected(client, &self.control).await? {
            return Ok(());
        }
        let mut stream = match js.get_stream(&self.stream).await {
            Ok(stream) => stream,
            Err(e) if stream_not_found(&e) => {
                return Err(Fault::Transient(format!(
                    "stream {} does not exist (yet): {e}",
                    self.stream
                )))
            }
            Err(e) => {
                return Err(Fault::Transient(format!(
                    "find stream {}: {e}",
                    self.stream
                )))
            }
        };
        let state = stream
            .info()
            .await
            .map_err(|e| Fault::Transient(format!("stream info: {e}")))?
            .state
            .clone();
        if state.last_sequence < self.at.sequence {
            return Err(Fault::Permanent(Error::Nats {
                op: "resume",
                reason: format!(
                    "stream {} ends at sequence {}, but {} already holds its messages up to {}: \
                     the stream was deleted and created again; start a source under a new name",
                    self.stream,
                    state.last_sequence,
                    self.config.log.path().display(),
                    self.at.sequence
                ),
            }));
        }
        if self.at.sequence > 0 && state.first_sequence > self.at.sequence + 1 {
            return Err(Fault::Permanent(Error::Nats {
                op: "resume",
                reason: format!(
                    "stream {} now starts at sequence {}: messages {} to {} were removed before \
                     this source read them",
                    self.stream,
                    state.first_sequence,
                    self.at.sequence + 1,
                    state.first_sequence - 1
                ),
            }));
        }
        let deliver_policy = DeliverPolicy::ByStartSequence {
            start_sequence: self.at.sequence + 1,
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: format!("{}.>", self.config.subject),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| Fault::Transient(format!("create the consumer: {e}")))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| Fault::Transient(format!("read the stream: {e}")))?;
        let mut batch: Vec<Incoming> = Vec::with_capacity(self.config.batch_size);
        loop {
            // The first message of a batch: wait for it (or a stop).
            let first = tokio::select! {
                message = messages.next() => message,
                _ = self.control.wake.notified() => return Ok(()),
            };
            if self.control.stop_requested() {
                return Ok(());
            }
            let message = match first {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(Fault::Transient(format!("read the stream: {e}"))),
                None => return Err(Fault::Transient("the stream's messages ended".into())),
            };
            batch.push(self.check(&message).map_err(Fault::Permanent)?);
            let deadline = tokio::time::Instant::now() + self.config.linger;
            while batch.len() < self.config.batch_size {
                match tokio::time::timeout_at(deadline, messages.next()).await {
                    Ok(Some(Ok(message))) => {
                        batch.push(self.check(&message).map_err(Fault::Permanent)?)
                    }
                    // What was gathered is appended first.
                    Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
                }
            }
            self.append(&mut batch).await?;
            self.backoff.reset();
        }
    }

    /// Checks a message against the rules of the subject tree and the
    /// local log, and the per-origin order, advancing the expected offset.
    fn check(&mut self, message: &async_nats::jetstream::Message) -> Result<Incoming> {
        let refuse = |reason: String| Error::Nats {
            op: "source",
            reason,
        };
        let info = message
            .info()
            .map_err(|e| refuse(format!("a message without its stream position: {e}")))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let subject = message.subject.as_str();
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str())
        };
        let token = subject
            .strip_prefix(self.config.subject.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .unwrap_or("");
        let found = header(LOG_ID_HEADER).unwrap_or("");
        let origin = u128::from_str_radix(token, 16)
            .ok()
            .filter(|_| token.len() == 32 && found == token);
        let Some(origin) = origin else {
            return Err(Error::LogIdMismatch {
                subject: subject.to_owned(),
                expected: token.to_owned(),
                found: found.to_owned(),
            });
        };
        let codec = self.config.log.codec_name();
        if header(CODEC_HEADER) != Some(codec) {
            return Err(refuse(format!(
                "message {sequence} on {subject} is encoded with {:?}, this log with {codec}",
                header(CODEC_HEADER)
            )));
        }
        if let Some((name, _)) = self.config.log.event_type() {
            let theirs = header(EVENT_HEADER)
                .and_then(|e| e.rsplit_once('/'))
                .map(|e| e.0);
            if theirs != Some(name) {
                return Err(refuse(format!(
                    "message {sequence} on {subject} holds events {:?}, this log {name}",
                    header(EVENT_HEADER)
                )));
            }
        }
        let number = |name: &str| header(name).and_then(|v| v.parse::<u64>().ok());
        let Some(offset) = number(OFFSET_HEADER) else {
            return Err(refuse(format!(
                "message {sequence} on {subject} has no {OFFSET_HEADER} header"
            )));
        };
        if let Some(&expected) = self.at.next.get(&origin) {
            if offset != expected {
                return Err(refuse(format!(
                    "message {sequence} on {subject} holds offset {offset} where {expected} \
                     was next: {}",
                    if offset > expected {
                        "records are missing (removed from the stream before this source read them?)"
                    } else {
                        "a record repeats or is out of order"
                    }
                )));
            }
        }
        self.at.next.insert(origin, offset + 1);
        if self.exclude(origin) {
            return Ok(Incoming {
                sequence,
                pending,
                record: None,
            });
        }
        let time = number(SOURCE_TIME_HEADER)
            .or_else(|| number(TIMESTAMP_HEADER))
            .map_or_else(Timestamp::now, Timestamp::from_micros);
        Ok(Incoming {
            sequence,
            pending,
            record: Some((message.payload.clone(), time)),
        })
    }

    fn exclude(&self, origin: u128) -> bool {
        self.config.exclude_own && self.own.is_some_and(|own| own.0 == origin)
    }

    /// Appends the batch's records with the checkpoint, off the runtime
    /// thread (the append may sync).
    async fn append(&mut self, batch: &mut Vec<Incoming>) -> std::result::Result<(), Fault> {
        let last = batch.last().expect("a batch has a message");
        let (sequence, pending) = (last.sequence, last.pending);
        let (payloads, times): (Vec<Bytes>, Vec<Timestamp>) = batch
            .drain(..)
            .filter_map(|incoming| incoming.record)
            .unzip();
        let checkpoint = Checkpoint::new(self.name.clone())
            .with_position(SourcePosition::External {
                name: self.position_name.clone(),
                sequence,
            })
            .with_state(encode_state(&self.at.next));
        let log = self.config.log.clone();
        tokio::task::spawn_blocking(move || {
            let slices: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
            log.append_encoded_committing(&slices, &times, &checkpoint)
        })
        .await
        .map_err(|e| Fault::Permanent(nats_error("append", e)))?
        .map_err(Fault::Permanent)?;
        self.at.sequence = sequence;
        self.pending.store(pending, Ordering::Relaxed);
        self.control.advance(sequence);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_refuses_damage() {
        let next: BTreeMap<u128, u64> = [(7u128 << 100, 5u64), (3, u64::MAX)].into();
        let bytes = encode_state(&next);
        assert_eq!(decode_state(&bytes), Some(next));
        assert_eq!(
            decode_state(&encode_state(&BTreeMap::new())),
            Some(BTreeMap::new())
        );
        assert_eq!(decode_state(&bytes[..bytes.len() - 1]), None);
        assert_eq!(decode_state(&[]), None);
        let mut long = bytes.clone();
        long[0] = 200;
        assert_eq!(decode_state(&long), None);
    }
}
