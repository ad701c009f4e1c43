//! The bridge to NATS JetStream (feature `nats`, public as
//! [`backbone::nats`](crate::nats)): a [`Mirror`] publishes a local log's
//! durable records to a JetStream subject exactly once and in order, and a
//! [`Source`] appends what mirrors published into a local log exactly
//! once. This module owns what both share: how to connect (URL, credentials,
//! TLS), the retry back-off, and the handle's view of a running bridge
//! (position, status, stop and join). It is built on the log's public API
//! and its crate-private encoded reads and appends; it never names the
//! stream layer, and its async client runs only on [`runtime`]'s thread.

mod batch;
mod control;
mod mirror;
mod runtime;
mod source;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, ClientError, ConnectErrorKind, ConnectOptions, Event, ServerError};

use crate::error::{Error, Result};

pub use self::control::BridgeStatus;
use self::control::Control;
pub use self::mirror::{Mirror, MirrorHandle};
pub use self::source::{Source, SourceHandle};

/// Header: the log id of the record's log (32 hex digits).
const LOG_ID_HEADER: &str = "Backbone-Log-Id";
/// Header: the record's offset in its log, in decimal.
const OFFSET_HEADER: &str = "Backbone-Offset";
/// Header: the record's append time, microseconds since the Unix epoch.
const TIMESTAMP_HEADER: &str = "Backbone-Timestamp";
/// Header: the record's source time, if it has one, as the timestamp.
const SOURCE_TIME_HEADER: &str = "Backbone-Source-Time";
/// Header: the log's event type, `name/version`, if it records one.
const EVENT_HEADER: &str = "Backbone-Event";
/// Header: the codec the payload is encoded with (`postcard`, `json`, …).
const CODEC_HEADER: &str = "Backbone-Codec";

/// How a bridge connects to NATS: what [`Mirror::connect`] and
/// [`Source::connect`] take. Everything is passed through to async-nats;
/// servers are given as the bridge's URL (several, comma-separated, for
/// a cluster).
#[derive(Clone, Default)]
pub struct Connect {
    credentials_file: Option<PathBuf>,
    user_password: Option<(String, String)>,
    token: Option<String>,
    nkey: Option<String>,
    tls_roots: Vec<PathBuf>,
    tls_client: Option<(PathBuf, PathBuf)>,
    require_tls: bool,
    tls_first: bool,
    name: Option<String>,
    request_timeout: Option<Duration>,
}

impl std::fmt::Debug for Connect {
    /// Shows which options are set, never a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("credentials_file", &self.credentials_file)
            .field("user", &self.user_password.as_ref().map(|(user, _)| user))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("nkey", &self.nkey.as_ref().map(|_| "<set>"))
            .field("tls_roots", &self.tls_roots)
            .field("tls_client", &self.tls_client)
            .field("require_tls", &self.require_tls)
            .field("tls_first", &self.tls_first)
            .field("name", &self.name)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Connect {
    /// No credentials, no TLS beyond what the URL asks (`tls://`).
    pub fn new() -> Connect {
        Connect::default()
    }

    /// Authenticates with a NATS credentials file (a user JWT and its
    /// nkey seed), as the `nats` tool's `--creds`.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Connect {
        self.credentials_file = Some(path.into());
        self
    }

    /// Authenticates with a user name and password.
    pub fn user_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Connect {
        self.user_password = Some((user.into(), password.into()));
        self
    }

    /// Authenticates with a token.
    pub fn token(mut self, token: impl Into<String>) -> Connect {
        self.token = Some(token.into());
        self
    }

    /// Authenticates with an nkey seed (`SU…`).
    pub fn nkey(mut self, seed: impl Into<String>) -> Connect {
        self.nkey = Some(seed.into());
        self
    }

    /// Trusts the CA certificates in this PEM file (may be given again).
    pub fn tls_root(mut self, path: impl Into<PathBuf>) -> Connect {
        self.tls_roots.push(path.into());
        self
    }

    /// Presents this client certificate and key (PEM files): mutual TLS.
    pub fn tls_client(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Connect {
        self.tls_client = Some((cert.into(), key.into()));
        self
    }

    /// Refuses a server that does not speak TLS.
    pub fn require_tls(mut self, required: bool) -> Connect {
        self.require_tls = required;
        self
    }

    /// Starts TLS before the NATS handshake (servers with
    /// `handshake_first`).
    pub fn tls_first(mut self) -> Connect {
        self.tls_first = true;
        self
    }

    /// The connection's name, as the server's monitoring shows it.
    pub fn name(mut self, name: impl Into<String>) -> Connect {
        self.name = Some(name.into());
        self
    }

    /// How long a JetStream request (a stream lookup, a resync) may take
    /// before it counts as failed and is retried (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Connect {
        self.request_timeout = Some(timeout);
        self
    }

    /// async-nats's options: these, plus reconnecting for ever (a bridge
    /// outlives any outage; its handle shows it) and retrying the first
    /// connect.
    async fn options(&self, default_name: &str) -> Result<ConnectOptions> {
        let refused = |reason: String| Error::Nats {
            op: "connect options",
            reason,
        };
        let mut options = match &self.credentials_file {
            Some(path) => ConnectOptions::with_credentials_file(path)
                .await
                .map_err(|e| refused(format!("credentials file {}: {e}", path.display())))?,
            None => ConnectOptions::new(),
        };
        if let Some((user, password)) = &self.user_password {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nkey {
            options = options.nkey(seed.clone());
        }
        for root in &self.tls_roots {
            options = options.add_root_certificates(root.clone());
        }
        if let Some((cert, key)) = &self.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.tls_first {
            options = options.tls_first();
        }
        Ok(options
            .require_tls(self.require_tls)
            .name(self.name.as_deref().unwrap_or(default_name))
            .request_timeout(Some(self.request_timeout.unwrap_or(Duration::from_secs(5))))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((50u64 << attempts.min(6)).min(2_000))
            }))
    }
}

impl Connect {
    /// A client for `url`, whose connection events reach `control`: the
    /// handle's status shows the connection and the client's last error,
    /// and a refusal of the credentials ends the bridge.
    async fn client(&self, url: &str, name: &str, control: &Arc<Control>) -> Result<Client> {
        let events = control.clone();
        let options = self.options(name).await?.event_callback(move |event| {
            let control = events.clone();
            async move {
                match event {
                    Event::Connected => control.set_connected(true),
                    Event::Disconnected => control.disconnected(),
                    Event::ClientError(ClientError::Other(error)) => {
                        let refused = [
                            ConnectErrorKind::AuthorizationViolation.to_string(),
                            ConnectErrorKind::Authentication.to_string(),
                        ];
                        if refused.contains(&error) {
                            control.refuse(&error);
                        } else {
                            control.note_error(&error);
                        }
                    }
                    Event::ServerError(ServerError::AuthorizationViolation) => {
                        control.refuse("authorization violation")
                    }
                    other => control.note_error(&other.to_string()),
                }
            }
        });
        // async-nats takes a list as a list, not as one comma-separated
        // string.
        let servers: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        async_nats::connect_with_options(servers, options)
            .await
            .map_err(|e| nats_error("connect", e))
    }
}

/// Waits until `client` is connected: `Ok(true)`; `Ok(false)` on a stop;
/// an error if the server refused the credentials (for good) or after 2 s
/// without a connection (to be retried).
async fn wait_connected(client: &Client, control: &Control) -> std::result::Result<bool, Fault> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        if let Some(refusal) = control.refusal() {
            return Err(Fault::Permanent(Error::Nats {
                op: "connect",
                reason: refusal,
            }));
        }
        if client.connection_state() == State::Connected {
            control.set_connected(true);
            return Ok(true);
        }
        if control.stop_requested() {
            return Ok(false);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Fault::Transient("not connected to a NATS server".into()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Why a session of a bridge ended.
enum Fault {
    /// Retry after the back-off: the message goes to the status.
    Transient(String),
    /// End the bridge with this error.
    Permanent(Error),
}

/// How a JetStream stream keeps messages (the stream's `retention`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retention {
    /// Until the stream's limits (age, size, count) remove them: the one
    /// that keeps a mirror's last message, which its exactly-once resume
    /// reads. The default.
    #[default]
    Limits,
    /// While some consumer of the stream has not acknowledged them.
    Interest,
    /// Until one consumer acknowledges them.
    WorkQueue,
}

impl Retention {
    fn to_nats(self) -> async_nats::jetstream::stream::RetentionPolicy {
        use async_nats::jetstream::stream::RetentionPolicy;
        match self {
            Retention::Limits => RetentionPolicy::Limits,
            Retention::Interest => RetentionPolicy::Interest,
            Retention::WorkQueue => RetentionPolicy::WorkQueue,
        }
    }
}

/// The retry back-off: from `min`, doubling to `max`, with ±20% jitter so
/// that many bridges cut off together do not come back in step.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next retry (and doubles the one after).
    fn delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        let mut noise = [0u8; 2];
        let _ = getrandom::fill(&mut noise);
        let permille = 800 + u64::from(u16::from_le_bytes(noise)) % 401;
        delay * permille as u32 / 1000
    }

    /// After a failure a retry can mend: shows `reason` on the handle and
    /// waits the next delay, or less if a stop (or a refusal) wakes the
    /// bridge.
    async fn pause(&mut self, control: &Control, reason: &str) {
        control.retrying(reason);
        let delay = self.delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = control.wake.notified() => {}
        }
    }

    /// After a success: the next failure waits `min` again.
    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// The stream name a subject gets by default: its dots turned to
/// underscores (stream names may not hold dots).
fn default_stream_name(subject: &str) -> String {
    subject.replace('.', "_")
}

/// Refuses a subject a bridge cannot use: empty, with wildcards or
/// spaces, or with an empty token.
fn check_subject(subject: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(Error::InvalidArgument {
            name: "subject",
            reason: format!("{subject:?} {reason}"),
        })
    };
    if subject.is_empty() {
        return bad("is empty");
    }
    if subject.split('.').any(str::is_empty) {
        return bad("has an empty token");
    }
    if subject
        .chars()
        .any(|c| c == '*' || c == '>' || c.is_whitespace() || c.is_control())
    {
        return bad("holds a wildcard, a space or a control character");
    }
    Ok(())
}

/// Refuses a stream name JetStream would refuse.
fn check_stream_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        })
    {
        return Err(Error::InvalidArgument {
            name: "stream",
            reason: format!(
                "{name:?} is not a JetStream stream name (1 to 255 characters, none of . * > / \\ or spaces)"
            ),
        });
    }
    Ok(())
}

/// Whether JetStream answered a stream lookup with "stream not found".
fn stream_not_found(e: &async_nats::jetstream::context::GetStreamError) -> bool {
    use async_nats::jetstream::context::GetStreamErrorKind;
    matches!(e.kind(), GetStreamErrorKind::JetStream(error)
        if error.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND)
}

/// A NATS error as the crate's: for errors a bridge gives up on.
fn nats_error(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Nats {
        op,
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_and_stream_names_are_checked() {
        assert!(check_subject("shop.checkouts").is_ok());
        for bad in [
            "",
            "shop..checkouts",
            "shop.*",
            "shop.>",
            "shop checkouts",
            ".shop",
        ] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
        assert_eq!(default_stream_name("shop.checkouts"), "shop_checkouts");
        assert!(check_stream_name("shop_checkouts").is_ok());
        for bad in ["", "a.b", "a b", "a/b", "a*"] {
            assert!(check_stream_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| backoff.delay()).collect();
        let nominal = [100, 200, 400, 400, 400];
        for (delay, nominal) in delays.iter().zip(nominal) {
            let ms = delay.as_millis() as u64;
            assert!(
                ms >= nominal * 8 / 10 && ms <= nominal * 12 / 10,
                "{ms} ms for {nominal}"
            );
        }
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(120));
    }
}
