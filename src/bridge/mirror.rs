//! [`Mirror`]: publishes a local log's durable records to JetStream, each
//! exactly once and in offset order, on the subject `<subject>.<log-id>`.
//!
//! One atomic batch is in flight at a time, chained to the subject's last
//! stored message by `Nats-Expected-Last-Subject-Sequence` (see
//! [`batch`](super::batch)): a batch is stored whole right after the
//! previous one or refused, so no failure mid-pipeline can leave a gap, a
//! repeat or a reordering on the subject. The mirror's position (the next
//! offset to publish) advances only when a batch is acknowledged; it is
//! kept as a registered reader of the log (retention keeps what the
//! mirror has not published) and, on every start and after every failure,
//! checked against the last message on the subject, which is the true
//! position: the mirror resumes right after it, however long ago it was
//! published, so the guarantee does not rest on JetStream's duplicate
//! window.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType};
use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use parking_lot::Mutex;

use super::batch::{BatchPublisher, Refused, MAX_BATCH};
use super::control::{BridgeStatus, Control};
use super::{
    check_stream_name, check_subject, default_stream_name, nats_error, stream_not_found,
    wait_connected, Backoff, Connect, Fault, Retention, CODEC_HEADER, EVENT_HEADER, LOG_ID_HEADER,
    OFFSET_HEADER, SOURCE_TIME_HEADER, TIMESTAMP_HEADER,
};
use crate::codec::{Codec, Postcard};
use crate::error::{Error, Result};
use crate::log::encoded::FrameBatch;
use crate::log::EventLog;
use crate::record::{LogId, ReaderKind};

/// Mirrors of this process, by log directory and subject: two would race
/// on one subject and one reader file.
static RUNNING: Mutex<Vec<(PathBuf, String)>> = Mutex::new(Vec::new());

/// A mirror of a local log to JetStream, configured; [`start`](Mirror::start)
/// runs it.
///
/// ```no_run
/// use backbone::nats::{Mirror, Retention};
/// use backbone::EventLog;
/// # fn main() -> backbone::Result<()> {
/// let checkouts: EventLog<String> = EventLog::open("data/checkouts")?;
/// let mirror = Mirror::new(&checkouts, "nats://127.0.0.1:4222", "shop.checkouts")?
///     .replicas(3)
///     .retention(Retention::Limits)
///     .start()?;
/// checkouts.append(&"order 1".to_string())?;
/// println!("{} records behind", mirror.lag());
/// mirror.stop();
/// mirror.join()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Mirror<T, C = Postcard> {
    log: EventLog<T, C>,
    url: String,
    subject: String,
    stream: Option<String>,
    name: Option<String>,
    connect: Connect,
    replicas: usize,
    retention: Retention,
    max_age: Duration,
    duplicate_window: Duration,
    create_stream: bool,
    batch_size: usize,
    max_batch_bytes: usize,
    ack_timeout: Duration,
    backoff: (Duration, Duration),
}

impl<T: 'static, C: Codec<T>> Mirror<T, C> {
    /// A mirror of `log` to the JetStream server(s) at `url` (several,
    /// comma-separated, for a cluster), publishing to `<subject>.<log-id>`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an empty URL or a subject with
    /// wildcards, spaces or empty tokens; [`Error::InvalidOption`] if the
    /// log has no id yet (a version-1 log no writer of this version has
    /// opened).
    pub fn new(log: &EventLog<T, C>, url: &str, subject: &str) -> Result<Mirror<T, C>> {
        if url.trim().is_empty() {
            return Err(Error::InvalidArgument {
                name: "url",
                reason: "no server given".into(),
            });
        }
        check_subject(subject)?;
        if log.log_id().is_none() {
            return Err(Error::InvalidOption {
                name: "Mirror::new",
                reason: format!(
                    "{} has no log id yet: open it once with a writer",
                    log.path().display()
                ),
            });
        }
        Ok(Mirror {
            log: log.clone(),
            url: url.to_owned(),
            subject: subject.to_owned(),
            stream: None,
            name: None,
            connect: Connect::new(),
            replicas: 1,
            retention: Retention::Limits,
            max_age: Duration::ZERO,
            duplicate_window: Duration::from_secs(120),
            create_stream: true,
            batch_size: MAX_BATCH,
            max_batch_bytes: 8 << 20,
            ack_timeout: Duration::from_secs(2),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
        })
    }

    /// The JetStream stream the subject belongs to (default: the subject
    /// with `.` replaced by `_`).
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// The reader name the mirror registers on the log (default
    /// `nats-mirror.<stream>`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Credentials, TLS and other connection options.
    pub fn connect(mut self, connect: Connect) -> Self {
        self.connect = connect;
        self
    }

    /// Replicas of the stream, when the mirror creates it (default 1;
    /// 3 or 5 on a cluster).
    pub fn replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// The stream's retention, when the mirror creates it (default
    /// [`Retention::Limits`]). With `Interest` or `WorkQueue`, or a
    /// `max_age`, the subject's last message may be removed; exactly-once
    /// past the duplicate window then rests on the mirror's reader
    /// position in the log, which is made durable at least every second
    /// and whenever the mirror catches up.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.retention = retention;
        self
    }

    /// The longest the stream keeps a message, when the mirror creates it
    /// (default: no limit).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The stream's duplicate window, when the mirror creates it (default
    /// 2 minutes). The mirror does not rely on it.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Whether the mirror creates the stream if it does not exist, and
    /// turns on atomic batches in one that has them off (default true).
    /// Without, a missing stream or one without atomic batches is an
    /// error.
    pub fn create_stream(mut self, create: bool) -> Self {
        self.create_stream = create;
        self
    }

    /// The most records per atomic batch: 1 to 1000 (JetStream's limit,
    /// and the default). A batch also ends at 8 MiB of payload.
    pub fn batch_size(mut self, records: usize) -> Self {
        self.batch_size = records;
        self
    }

    /// How long a batch may wait for its acknowledgement before the
    /// mirror resyncs with the subject and sends again (default 2 s). A
    /// short wait is safe: a batch that lands after all is found by the
    /// resync, and a resend of it is refused by the subject's sequence
    /// check, never stored twice. It bounds the stall when a stream leader
    /// steps down with a batch in flight.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// The retry back-off: from `min`, doubling to `max` (defaults 100 ms
    /// and 5 s), with jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Starts the mirror on the bridges' shared runtime thread and
    /// returns its handle. It connects, creates or checks the stream, and
    /// resumes after the last message on its subject, in the background:
    /// connection problems show in [`MirrorHandle::status`], and what no
    /// retry mends ends the mirror with an error from
    /// [`MirrorHandle::join`].
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a batch size out of range, a stream
    /// name JetStream refuses, or when a mirror of this log to this
    /// subject already runs in this process or a reader of the mirror's
    /// name is registered on the log by something else;
    /// [`Error::InvalidName`] for a reader name that cannot be one.
    pub fn start(self) -> Result<MirrorHandle> {
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(Error::InvalidArgument {
                name: "batch_size",
                reason: format!("{} records: 1 to {MAX_BATCH}", self.batch_size),
            });
        }
        let stream = self
            .stream
            .clone()
            .unwrap_or_else(|| default_stream_name(&self.subject));
        check_stream_name(&stream)?;
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("nats-mirror.{stream}"));
        crate::name::validate(&name)?;
        let log_id = self.log.log_id().expect("checked by Mirror::new");
        let subject = format!("{}.{log_id}", self.subject);
        let location = format!("{}/{stream}/{subject}", servers_of(&self.url));
        let registered = self.registered_position(&name, &stream, &subject)?;
        let claim = Claim::take(self.log.path(), &subject)?;
        let position = registered.unwrap_or_else(|| self.log.first_offset());
        let control = Arc::new(Control::new(position));
        let log = self.log.clone();
        let handle = MirrorHandle {
            control: control.clone(),
            subject: subject.clone(),
            stream: stream.clone(),
            name: name.clone(),
            end: Box::new(move || log.next_offset()),
        };
        let task = MirrorTask {
            backoff: Backoff::new(self.backoff.0, self.backoff.1),
            config: self,
            control,
            stream,
            subject: Subject::from(subject),
            name,
            location,
            log_id,
            registered,
            published: None,
            _claim: claim,
        };
        super::runtime::spawn(task.run())?;
        Ok(handle)
    }

    /// The position the reader file of `name` holds for this mirror, if
    /// it was registered by a mirror to the same stream and subject;
    /// refuses a name another kind of reader holds.
    fn registered_position(&self, name: &str, stream: &str, subject: &str) -> Result<Option<u64>> {
        let ours = format!("/{stream}/{subject}");
        for reader in self.log.readers()? {
            if reader.name != name {
                continue;
            }
            let location = reader.location.to_string_lossy();
            return match reader.kind {
                ReaderKind::Mirror if location.ends_with(&ours) => Ok(reader.position),
                // A mirror to another stream under this name: its
                // position means nothing here; ours replaces it.
                ReaderKind::Mirror => Ok(None),
                _ if reader.position.is_none() => Ok(None),
                _ => Err(Error::InvalidArgument {
                    name: "name",
                    reason: format!(
                        "{} already has a reader named {name} committing to {location}; \
                         give the mirror another name",
                        self.log.path().display()
                    ),
                }),
            };
        }
        Ok(None)
    }
}

/// The servers of a URL list as a location names them: without schemes
/// and credentials (a reader file is no place for a password).
fn servers_of(url: &str) -> String {
    let servers: Vec<&str> = url
        .split(',')
        .map(|server| {
            let server = server.trim();
            let server = server.split_once("://").map_or(server, |(_, rest)| rest);
            server.rsplit_once('@').map_or(server, |(_, host)| host)
        })
        .collect();
    format!("nats://{}", servers.join(","))
}

/// This process's claim on mirroring one log to one subject, released
/// when the task ends.
struct Claim(PathBuf, String);

impl Claim {
    fn take(dir: &std::path::Path, subject: &str) -> Result<Claim> {
        let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        let mut running = RUNNING.lock();
        if running.iter().any(|(d, s)| *d == dir && s == subject) {
            return Err(Error::InvalidArgument {
                name: "subject",
                reason: format!(
                    "a mirror of {} to {subject} already runs in this process",
                    dir.display()
                ),
            });
        }
        running.push((dir.clone(), subject.to_owned()));
        Ok(Claim(dir, subject.to_owned()))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        RUNNING
            .lock()
            .retain(|(d, s)| !(*d == self.0 && *s == self.1));
    }
}

/// A running [`Mirror`]. Dropping it asks the mirror to stop (as
/// [`stop`](MirrorHandle::stop)) without waiting.
pub struct MirrorHandle {
    control: Arc<Control>,
    subject: String,
    stream: String,
    name: String,
    end: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl MirrorHandle {
    /// The next offset to publish: every record below it is stored in
    /// JetStream, acknowledged.
    pub fn position(&self) -> u64 {
        self.control.position()
    }

    /// Records of the log not yet acknowledged by JetStream (those not
    /// yet durable included: they leave once they are).
    pub fn lag(&self) -> u64 {
        (self.end)().saturating_sub(self.position())
    }

    /// Connection, last retried error, retries.
    pub fn status(&self) -> BridgeStatus {
        self.control.status()
    }

    /// The subject the mirror publishes to: `<subject>.<log-id>`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The JetStream stream.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The reader name registered on the log.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until every record below `offset` is acknowledged (`true`),
    /// or `timeout` passes or the mirror stops first (`false`).
    ///
    /// # Errors
    ///
    /// [`Error::Nats`] if the mirror ended with an error first.
    pub fn wait_for(&self, offset: u64, timeout: Duration) -> Result<bool> {
        self.control.wait_for(offset, timeout)
    }

    /// Asks the mirror to finish the batch in flight and stop.
    pub fn stop(&self) {
        self.control.request_stop();
    }

    /// Waits for the mirror to end, and says how.
    ///
    /// # Errors
    ///
    /// What stopped it for good: [`Error::LogIdMismatch`] (its subject
    /// holds another log's records), [`Error::CheckpointAhead`] (the
    /// subject holds offsets the local log does not: it lost records, or
    /// is an older copy), [`Error::OffsetTruncated`] (records it had not
    /// published were removed from the log), [`Error::Nats`] (the stream
    /// refuses atomic batches or does not exist, a record is larger than
    /// the server takes, credentials refused), or a read error of the log.
    pub fn join(self) -> Result<()> {
        self.control.join()
    }
}

impl Drop for MirrorHandle {
    fn drop(&mut self) {
        self.control.request_stop();
    }
}

impl std::fmt::Debug for MirrorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MirrorHandle")
            .field("subject", &self.subject)
            .field("position", &self.position())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl From<Refused> for Fault {
    fn from(refused: Refused) -> Fault {
        match refused {
            Refused::WrongLastSequence => Fault::Transient(
                "the subject's last message is not the one expected (a batch landed after all, \
                 or another mirror publishes there); resyncing"
                    .into(),
            ),
            Refused::Transient(reason) => Fault::Transient(reason),
            Refused::Permanent(e) => Fault::Permanent(e),
        }
    }
}

struct MirrorTask<T, C> {
    config: Mirror<T, C>,
    control: Arc<Control>,
    stream: String,
    subject: Subject,
    name: String,
    location: String,
    log_id: LogId,
    /// The position the reader file held at start, if any.
    registered: Option<u64>,
    /// The position acknowledged in this run, if any.
    published: Option<u64>,
    backoff: Backoff,
    _claim: Claim,
}

/// Where a session resumes: the next offset and the stream sequence of the
/// subject's last message (0: none).
struct Resume {
    next: u64,
    last_sequence: u64,
}

impl<T: 'static, C: Codec<T>> MirrorTask<T, C> {
    async fn run(mut self) {
        let outcome = self.run_sessions().await;
        // The log handle and the claim on the subject go before the end
        // is reported: a `join` that returns leaves neither behind.
        let control = self.control.clone();
        drop(self);
        control.set_connected(false);
        control.finish(outcome);
    }

    async fn run_sessions(&mut self) -> Result<()> {
        let name = format!("backbone mirror {}", self.name);
        let client = self
            .config
            .connect
            .client(&self.config.url, &name, &self.control)
            .await?;
        let mut publisher: Option<BatchPublisher> = None;
        loop {
            if self.control.stop_requested() {
                return Ok(());
            }
            match self.session(&client, &mut publisher).await {
                Ok(()) => return Ok(()),
                Err(Fault::Permanent(e)) => return Err(e),
                Err(Fault::Transient(reason)) => {
                    self.backoff.pause(&self.control, &reason).await;
                }
            }
        }
    }

    /// Connects the stream, resyncs with the subject and publishes until
    /// stopped (`Ok`) or a failure.
    async fn session(
        &mut self,
        client: &Client,
        publisher: &mut Option<BatchPublisher>,
    ) -> std::result::Result<(), Fault> {
        if !wait_connected(client, &self.control).await? {
            return Ok(());
        }
        let js = jetstream::new(client.clone());
        let stream = self.ensure_stream(&js).await?;
        let mut at = self.resync(&stream).await?;
        self.control.advance(at.next);
        self.note_position(at.next, true);
        if publisher.is_none() {
            *publisher = Some(
                BatchPublisher::new(client.clone())
                    .await
                    .map_err(Fault::Transient)?,
            );
        }
        let publisher = publisher.as_mut().expect("just made");
        let mut batch = FrameBatch::default();
        let mut idle = Duration::from_millis(1);
        let mut last_sync = tokio::time::Instant::now();
        let mut unsynced = false;
        loop {
            if self.control.stop_requested() {
                if unsynced {
                    self.note_position(at.next, true);
                }
                return Ok(());
            }
            let log = &self.config.log;
            let durable = log.durable_offset();
            if durable <= at.next {
                if unsynced {
                    self.note_position(at.next, true);
                    unsynced = false;
                    last_sync = tokio::time::Instant::now();
                }
                if log.next_offset() > durable && log.is_writer() {
                    // Records wait for a sync to leave: ask for one.
                    let log = log.clone();
                    tokio::task::spawn_blocking(move || log.sync())
                        .await
                        .map_err(|e| Fault::Permanent(nats_error("sync the log", e)))?
                        .map_err(Fault::Permanent)?;
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(idle) => {}
                    _ = self.control.wake.notified() => {}
                }
                idle = (idle * 2).min(Duration::from_millis(20));
                continue;
            }
            idle = Duration::from_millis(1);
            log.read_encoded(
                at.next,
                durable,
                self.config.batch_size,
                self.config.max_batch_bytes,
                &mut batch,
            )
            .map_err(Fault::Permanent)?;
            let Some(last) = batch.records.last().map(|r| r.offset) else {
                // Nothing readable below the watermark: the records were
                // removed under the mirror.
                return Err(Fault::Permanent(Error::OffsetTruncated {
                    requested: at.next,
                    first: log.first_offset(),
                }));
            };
            let messages = self.messages(&mut batch);
            let disconnects = self.control.disconnects();
            let control = &self.control;
            let published = tokio::time::timeout(
                self.config.ack_timeout,
                publisher.publish(
                    &self.subject,
                    messages,
                    at.last_sequence,
                    self.config.ack_timeout,
                    || control.disconnects() != disconnects,
                ),
            )
            .await
            .unwrap_or_else(|_| {
                Err(Refused::Transient(format!(
                    "publish did not finish within {:?}",
                    self.config.ack_timeout
                )))
            })?;
            at = Resume {
                next: last + 1,
                last_sequence: published,
            };
            self.published = Some(at.next);
            self.control.advance(at.next);
            self.backoff.reset();
            let sync = last_sync.elapsed() >= Duration::from_secs(1);
            self.note_position(at.next, sync);
            if sync {
                last_sync = tokio::time::Instant::now();
            }
            unsynced = !sync;
        }
    }

    /// The batch's records as messages: payloads as stored (one buffer,
    /// sliced), and the headers that say where each came from.
    fn messages(&self, batch: &mut FrameBatch) -> Vec<(HeaderMap, Bytes)> {
        let log = &self.config.log;
        let event = log
            .event_type()
            .map(|(name, version)| format!("{name}/{version}"));
        let codec = log.codec_name();
        let log_id = self.log_id.to_string();
        let bytes = Bytes::from(std::mem::take(&mut batch.bytes));
        batch
            .records
            .iter()
            .map(|record| {
                let mut headers = HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("{log_id}:{}", record.offset),
                );
                headers.insert(LOG_ID_HEADER, log_id.as_str());
                headers.insert(OFFSET_HEADER, record.offset.to_string());
                headers.insert(TIMESTAMP_HEADER, record.timestamp.as_micros().to_string());
                if let Some(time) = record.source_time {
                    headers.insert(SOURCE_TIME_HEADER, time.as_micros().to_string());
                }
                if let Some(event) = &event {
                    headers.insert(EVENT_HEADER, event.as_str());
                }
                headers.insert(CODEC_HEADER, codec);
                (headers, bytes.slice(record.payload.clone()))
            })
            .collect()
    }

    /// Writes the position to the mirror's reader file (advisory: a
    /// failure is retried by the next batch), made durable with `sync`.
    fn note_position(&self, position: u64, sync: bool) {
        let _ = self
            .config
            .log
            .note_mirror(&self.name, &self.location, position, sync);
    }

    /// The stream, created or checked.
    async fn ensure_stream(
        &self,
        js: &jetstream::Context,
    ) -> std::result::Result<jetstream::stream::Stream, Fault> {
        let config = &self.config;
        match js.get_stream(&self.stream).await {
            Ok(mut stream) => {
                let info = stream
                    .info()
                    .await
                    .map_err(|e| Fault::Transient(format!("stream info: {e}")))?
                    .clone();
                if !info
                    .config
                    .subjects
                    .iter()
                    .any(|pattern| subject_matches(pattern, &self.subject))
                {
                    return Err(Fault::Permanent(Error::Nats {
                        op: "check the stream",
                        reason: format!(
                            "stream {} does not take subject {} (its subjects: {:?})",
                            self.stream, self.subject, info.config.subjects
                        ),
                    }));
                }
                if !info.config.allow_atomic_publish {
                    if !config.create_stream {
                        return Err(Fault::Permanent(Error::Nats {
                            op: "check the stream",
                            reason: format!(
                                "stream {} does not allow atomic batches (allow_atomic), which \
                                 the mirror needs to keep the subject gap-free",
                                self.stream
                            ),
                        }));
                    }
                    let mut updated = info.config.clone();
                    updated.allow_atomic_publish = true;
                    js.update_stream(&updated)
                        .await
                        .map_err(|e| stream_fault("allow atomic batches", e))?;
                }
                Ok(stream)
            }
            Err(e) if stream_not_found(&e) => {
                if !config.create_stream {
                    return Err(Fault::Permanent(nats_error("find the stream", e)));
                }
                js.get_or_create_stream(Config {
                    name: self.stream.clone(),
                    subjects: vec![format!("{}.>", config.subject)],
                    storage: StorageType::File,
                    retention: config.retention.to_nats(),
                    num_replicas: config.replicas,
                    max_age: config.max_age,
                    duplicate_window: config.duplicate_window,
                    allow_atomic_publish: true,
                    ..Default::default()
                })
                .await
                .map_err(|e| stream_fault("create the stream", e))
            }
            Err(e) => Err(Fault::Transient(format!(
                "find stream {}: {e}",
                self.stream
            ))),
        }
    }

    /// Where to resume: after the subject's last message, or at the
    /// reader file's position if that is further (retention removed the
    /// messages after it), with the checks that make a foreign or
    /// impossible position an error.
    async fn resync(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> std::result::Result<Resume, Fault> {
        let log = &self.config.log;
        let (after_last, last_sequence) =
            match stream.get_last_raw_message_by_subject(&self.subject).await {
                Ok(message) => {
                    let header = |name: &str| {
                        message
                            .headers
                            .get(name)
                            .map(|value| value.as_str().to_owned())
                    };
                    let found = header(LOG_ID_HEADER).unwrap_or_default();
                    if found != self.log_id.to_string() {
                        return Err(Fault::Permanent(Error::LogIdMismatch {
                            subject: self.subject.to_string(),
                            expected: self.log_id.to_string(),
                            found,
                        }));
                    }
                    let Some(offset) = header(OFFSET_HEADER).and_then(|o| o.parse::<u64>().ok())
                    else {
                        return Err(Fault::Permanent(Error::Nats {
                            op: "resync",
                            reason: format!(
                                "message {} on {} has no {OFFSET_HEADER} header",
                                message.sequence, self.subject
                            ),
                        }));
                    };
                    (Some(offset + 1), message.sequence)
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => (None, 0),
                Err(e) => return Err(Fault::Transient(format!("resync: {e}"))),
            };
        // The furthest of what the subject, the reader file and this run
        // know was acknowledged (retention may have removed messages
        // after the subject's last); with none of them (a first start),
        // the log's first record.
        let next = [after_last, self.registered, self.published]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_else(|| log.first_offset());
        let end = log.next_offset();
        if next > end {
            return Err(Fault::Permanent(Error::CheckpointAhead {
                name: self.name.clone(),
                source_log: log.path().to_path_buf(),
                stored: next,
                next: end,
            }));
        }
        let first = log.first_offset();
        if next < first {
            return Err(Fault::Permanent(Error::OffsetTruncated {
                requested: next,
                first,
            }));
        }
        Ok(Resume {
            next,
            last_sequence,
        })
    }
}

/// A refused stream creation or update as a fault: the stream's settings
/// (a name taken with other settings, overlapping subjects, replicas a
/// single server cannot have) are permanent; anything else (a timeout, no
/// leader yet, a node down) is retried.
fn stream_fault(op: &'static str, e: async_nats::jetstream::context::CreateStreamError) -> Fault {
    use async_nats::jetstream::context::CreateStreamErrorKind as Kind;
    use async_nats::jetstream::ErrorCode;
    let settings = [
        ErrorCode::STREAM_NAME_EXIST,
        ErrorCode::STREAM_SUBJECT_OVERLAP,
        ErrorCode::STREAM_INVALID_CONFIG,
        ErrorCode::STREAM_REPLICAS_NOT_SUPPORTED,
        ErrorCode::BAD_REQUEST,
    ];
    match e.kind() {
        Kind::JetStream(error) if settings.contains(&error.error_code()) => {
            Fault::Permanent(nats_error(op, e))
        }
        Kind::EmptyStreamName | Kind::InvalidStreamName | Kind::DomainAndExternalSet => {
            Fault::Permanent(nats_error(op, e))
        }
        _ => Fault::Transient(format!("{op}: {e}")),
    }
}

/// Whether the NATS subject pattern `pattern` (`*` one token, `>` the
/// rest) matches `subject`.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for part in pattern.split('.') {
        match (part, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(t)) if p == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_patterns_match_as_nats_does() {
        assert!(subject_matches("shop.checkouts.>", "shop.checkouts.ab12"));
        assert!(subject_matches("shop.>", "shop.checkouts.ab12"));
        assert!(subject_matches("shop.*.ab12", "shop.checkouts.ab12"));
        assert!(subject_matches(">", "a"));
        assert!(!subject_matches("shop.checkouts.>", "shop.checkouts"));
        assert!(!subject_matches("shop.checkouts", "shop.checkouts.ab12"));
        assert!(!subject_matches("shop.*", "shop.checkouts.ab12"));
        assert!(!subject_matches("orders.>", "shop.checkouts.ab12"));
    }

    #[test]
    fn locations_name_servers_without_credentials() {
        assert_eq!(
            servers_of("nats://alice:secret@a:4222, tls://b:4222"),
            "nats://a:4222,b:4222"
        );
        assert_eq!(servers_of("127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
