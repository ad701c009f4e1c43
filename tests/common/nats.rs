//! A real nats-server for the tests of the `nats` feature: one server
//! ([`NatsServer`]) or a JetStream cluster ([`NatsCluster`]), each server a
//! child process with its own ports, config file, JetStream store and log
//! in a temporary directory that goes when it is dropped.
//!
//! The binary comes from [`server_binary`]. `scripts/test` installs one
//! (2.12 or newer) and sets `BACKBONE_NATS_SERVER`; under a bare
//! `cargo test` a test without one skips:
//!
//! ```ignore
//! let Some(server) = NatsServer::start() else { return }; // notice on stderr
//! ```
//!
//! With `BACKBONE_NATS_REQUIRED=1` (set by `scripts/test`) a missing server
//! fails the test instead of skipping it, so CI cannot pass by skipping.
//!
//! Every server runs JetStream with `sync_interval: always`: it fsyncs each
//! write before acknowledging it, so a message acknowledged before a
//! SIGKILL ([`NatsServer::kill`]) is still there after
//! [`NatsServer::restart`]. The default (a sync every two minutes) would
//! let a kill lose acknowledged messages, and a test of the bridge's
//! delivery guarantees would then fail for reasons of the server's.
//!
//! The harness blocks (it starts processes and polls sockets); from an
//! async test, call it before entering the runtime or on a multi-threaded
//! runtime.
#![allow(dead_code)]

use std::env;
use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The oldest nats-server the tests accept, as (major, minor).
pub const MIN_VERSION: (u32, u32) = (2, 12);

/// The line a test prints on stderr when it skips for want of a server.
pub const SKIP_NOTICE: &str = "skipping: no nats-server >= 2.12 (run scripts/test)";

/// How long a started or restarted server has to accept clients and
/// report JetStream healthy.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`NatsServer::stop`] waits after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a cluster has to agree on a JetStream meta leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Fresh ports tried when a server finds one of its ports taken (another
/// process can take a port between our probe and the server's bind).
const START_ATTEMPTS: usize = 3;

/// The nats-server the tests run, if there is one:
/// `$BACKBONE_NATS_SERVER`, else `nats-venv/bin/nats-server` in the cargo
/// target directory (where `scripts/test` installs it), else the
/// `nats-server` first on the `PATH` if it is 2.12 or newer.
///
/// # Panics
///
/// If `BACKBONE_NATS_SERVER` names a binary that does not run or is older
/// than 2.12: a server asked for by name is never silently skipped.
pub fn server_binary() -> Option<PathBuf> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND.get_or_init(find_server_binary).clone()
}

fn find_server_binary() -> Option<PathBuf> {
    if let Some(named) = env::var_os("BACKBONE_NATS_SERVER").filter(|v| !v.is_empty()) {
        let named = PathBuf::from(named);
        match version(&named) {
            Some(v) if version_supported(v) => return Some(named),
            Some((major, minor, patch)) => panic!(
                "BACKBONE_NATS_SERVER={} is nats-server v{major}.{minor}.{patch}; \
                 the tests need {}.{} or newer",
                named.display(),
                MIN_VERSION.0,
                MIN_VERSION.1
            ),
            None => panic!(
                "BACKBONE_NATS_SERVER={} does not run as `nats-server --version`",
                named.display()
            ),
        }
    }
    let venv = target_dir()
        .join("nats-venv")
        .join("bin")
        .join("nats-server");
    if version(&venv).is_some_and(version_supported) {
        return Some(venv);
    }
    // The first one on the PATH, as a shell would run it (Debian's
    // /usr/sbin/nats-server is 2.9, too old for the tests).
    let on_path = env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.is_file())?;
    version(&on_path)
        .is_some_and(version_supported)
        .then_some(on_path)
}

/// The cargo target directory, where `scripts/test` puts its venv:
/// `$CARGO_TARGET_DIR` (which `scripts/test` makes absolute), else
/// `target/` in the package.
fn target_dir() -> PathBuf {
    let package = Path::new(env!("CARGO_MANIFEST_DIR"));
    match env::var_os("CARGO_TARGET_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => package.join(dir),
        None => package.join("target"),
    }
}

/// The version `binary --version` reports, or `None` if it does not run
/// or says something else.
fn version(binary: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

/// The version in `nats-server --version`'s output (`nats-server: v2.15.1`;
/// a suffix such as `-RC.1` is ignored).
pub fn parse_version(text: &str) -> Option<(u32, u32, u32)> {
    let v = text
        .split_whitespace()
        .find_map(|word| word.strip_prefix('v'))?;
    let mut parts = v.split('.').map(|part| {
        let digits = part.len() - part.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        part[..digits].parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

/// Whether the tests accept a server of `version`.
pub fn version_supported(version: (u32, u32, u32)) -> bool {
    (version.0, version.1) >= MIN_VERSION
}

/// What a test does without a server: skip with [`SKIP_NOTICE`], or fail
/// under `BACKBONE_NATS_REQUIRED=1`.
fn skip<T>() -> Option<T> {
    if env::var_os("BACKBONE_NATS_REQUIRED").is_some_and(|v| v == "1") {
        panic!(
            "BACKBONE_NATS_REQUIRED=1 but there is no nats-server >= {}.{}: set \
             BACKBONE_NATS_SERVER to one, put one on the PATH, or run scripts/test, \
             which installs one",
            MIN_VERSION.0, MIN_VERSION.1
        );
    }
    eprintln!("{SKIP_NOTICE}");
    None
}

/// `n` distinct free ports on 127.0.0.1, none handed out before in this
/// process (the tests of one binary start servers side by side).
///
/// They are picked at random below the system's ephemeral port range, not
/// by binding port 0, which hands out ports from that range: there an
/// outgoing connection of any process (a client of another server, say)
/// can be given a killed server's port before it restarts on it. Below the
/// range only another listener can take it. A port is free if it can be
/// bound; the bind is dropped before the server binds it.
fn free_ports(n: usize) -> Vec<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    // Every probe stays bound until all ports are picked, so they differ.
    let mut held = Vec::new();
    let mut ports = Vec::new();
    let mut tries = 0;
    while ports.len() < n {
        let (port, listener) = match below_ephemeral_ports() {
            Some((low, high)) if tries < 10_000 => {
                tries += 1;
                let port = low + (random() % u64::from(high - low)) as u16;
                match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
                    Ok(listener) => (port, listener),
                    Err(_) => continue,
                }
            }
            // No room below the range (or all taken): any port the system
            // gives.
            _ => {
                let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .expect("bind a probe port on 127.0.0.1");
                let port = listener.local_addr().expect("probe port's address").port();
                (port, listener)
            }
        };
        if !given.contains(&port) {
            given.push(port);
            ports.push(port);
        }
        held.push(listener);
    }
    ports
}

/// The 10,000 ports below the system's ephemeral range (Linux:
/// 22768..32768 by default), if that range is known and starts high
/// enough.
fn below_ephemeral_ports() -> Option<(u16, u16)> {
    let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = range.split_whitespace().next()?.parse().ok()?;
    (low >= 11_024).then(|| (low - 10_000, low))
}

/// A random number, different at each call.
fn random() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()))
}

/// The last `lines` lines of the file at `path` (empty if unreadable).
fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `GET path` over HTTP/1.0 to 127.0.0.1:`port`: the status and body, or
/// `None` if the exchange failed.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .ok()?;
    // HTTP/1.0: the server closes the connection after the body.
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The INFO line a NATS server sends a client that connects to
/// 127.0.0.1:`port` (the protocol begins with it), or `None`.
fn read_info(port: u16) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") && line.len() < 64 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            _ => return None,
        }
    }
    let line = String::from_utf8(line).ok()?;
    line.starts_with("INFO ")
        .then(|| line.trim_end().to_owned())
}

/// Sends SIGTERM to `child`, which must not have been waited for.
// The crate denies unsafe code, and this file is also compiled into its
// unit-test build (through tests/sim): kill(2) is the one exception here.
#[allow(unsafe_code)]
fn sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    // `pid` is our own child, which has not been waited for (the caller
    // just found it running and holds its `Child`), so it is still our
    // child's pid, or its zombie's: never another process's.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// One nats-server with JetStream, run as a child process.
///
/// It listens for clients on 127.0.0.1:[`port`](Self::port) and serves
/// monitoring on 127.0.0.1:[`monitor_port`](Self::monitor_port). Its
/// config file, store ([`store_dir`](Self::store_dir)) and log (stdout and
/// stderr of every run, [`log`](Self::log)) live in its own temporary
/// directory. Dropping it kills the process and removes the directory.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    name: String,
    port: u16,
    monitor_port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until it is ready (it sends clients its
    /// INFO line and its monitoring endpoint reports JetStream healthy).
    ///
    /// `None` if there is no [`server_binary`]: the test should return (a
    /// notice is on stderr).
    ///
    /// # Panics
    ///
    /// If there is no server and `BACKBONE_NATS_REQUIRED=1`, or if the
    /// server does not start or get ready within 10 s (the message holds
    /// the tail of its log).
    pub fn start() -> Option<NatsServer> {
        NatsServer::start_with("")
    }

    /// [`start`](Self::start) with `config_extra` appended to the config
    /// file at the top level (for example `max_payload: 2MB`). It must not
    /// repeat `server_name`, `listen`, `http` or `jetstream`.
    pub fn start_with(config_extra: &str) -> Option<NatsServer> {
        let Some(binary) = server_binary() else {
            return skip();
        };
        let mut attempt = 1;
        loop {
            let ports = free_ports(2);
            let (port, monitor_port) = (ports[0], ports[1]);
            let mut server =
                NatsServer::configure(&binary, "backbone", port, monitor_port, config_extra);
            server.spawn();
            match server.wait_ready() {
                Ok(()) => return Some(server),
                Err(why) if server.port_taken() && attempt < START_ATTEMPTS => {
                    eprintln!("nats harness: {why}; trying other ports");
                    attempt += 1;
                }
                Err(why) => server.fail(&why),
            }
        }
    }

    /// A server with its directory and config file written, not started.
    fn configure(
        binary: &Path,
        name: &str,
        port: u16,
        monitor_port: u16,
        config_extra: &str,
    ) -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("backbone-nats-")
            .tempdir()
            .expect("create the server's temporary directory");
        let store = dir.path().join("js");
        let store = store.to_str().expect("a UTF-8 temporary directory");
        assert!(
            !store.contains(['"', '\\']),
            "the store path {store} would need quoting in the config"
        );
        let config = format!(
            "# Written by the test harness (tests/common/nats.rs).\n\
             server_name: {name}\n\
             listen: 127.0.0.1:{port}\n\
             http: 127.0.0.1:{monitor_port}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
             {config_extra}\n"
        );
        fs::write(dir.path().join("nats.conf"), config).expect("write the server's config file");
        NatsServer {
            binary: binary.to_owned(),
            name: name.to_owned(),
            port,
            monitor_port,
            dir,
            child: None,
        }
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port; the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The HTTP monitoring port (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_port(&self) -> u16 {
        self.monitor_port
    }

    /// The `server_name` in its config (`n1`, `n2`, ... in a cluster).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its JetStream store directory; the same across restarts.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("js")
    }

    /// Its config file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    /// The file that collects its stdout and stderr, over all its runs.
    pub fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Everything it has logged, over all its runs (the harness marks each
    /// start and stop with a `==== harness:` line).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The body of `GET path` on its monitoring port (for example `/jsz`),
    /// or `None` unless it answered 200.
    pub fn monitor(&self, path: &str) -> Option<String> {
        match http_get(self.monitor_port, path)? {
            (200, body) => Some(body),
            _ => None,
        }
    }

    /// Whether its process is running (one that exited is reaped).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL and waits for it: a crash, with no
    /// chance to flush or say goodbye to clients. Nothing if it is not
    /// running.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(status)) = child.try_wait() {
            self.mark(&format!("had exited: {status}"));
            return;
        }
        let _ = child.kill();
        let _ = child.wait();
        self.mark("killed (SIGKILL)");
    }

    /// Stops the process gracefully: SIGTERM, then up to 5 s for it to
    /// exit, then SIGKILL. Nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            sigterm(&child);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                sleep(Duration::from_millis(10));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                self.mark("no exit 5 s after SIGTERM: killed (SIGKILL)");
            }
        }
        let status = child.wait();
        self.mark(&format!("stopped: {status:?}"));
    }

    /// Starts it again on the same ports with the same store (stopping it
    /// gracefully first if it runs) and waits until it is ready.
    ///
    /// # Panics
    ///
    /// If it does not get ready within 10 s (for example because another
    /// process listens on its port); the message holds the tail of its log.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                // Another process can hold the port for a moment (while it
                // probes whether the port is free, as `free_ports` does).
                Err(_) if self.port_taken() && Instant::now() < deadline => {
                    self.kill();
                    sleep(Duration::from_millis(100));
                }
                Err(why) => self.fail(&why),
            }
        }
    }

    /// The `meta_cluster` object of its `/jsz`, if it answers with one.
    fn meta_cluster(&self) -> Option<serde_json::Value> {
        let mut jsz: serde_json::Value = serde_json::from_str(&self.monitor("/jsz")?).ok()?;
        Some(jsz.get_mut("meta_cluster")?.take())
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.mark("starting");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("open the server's log file");
        let stdout = log.try_clone().expect("clone the log file's handle");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_file())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// Waits until the server sends an INFO line to a new client and its
    /// `/healthz?js-enabled-only=true` answers 200: JetStream can refuse
    /// requests for a moment after the client port opens.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut info = false;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("{} exited during startup: {status}", self.name));
            }
            if !info {
                info = read_info(self.port).is_some();
            }
            if info
                && http_get(self.monitor_port, "/healthz?js-enabled-only=true")
                    .is_some_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let what = if info {
                    "JetStream healthy"
                } else {
                    "accepting clients"
                };
                return Err(format!(
                    "{} not {what} {} s after its start",
                    self.name,
                    READY_TIMEOUT.as_secs()
                ));
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// Whether its last run failed because a port of its was taken.
    fn port_taken(&self) -> bool {
        let log = self.log();
        let last_run = log.rsplit("==== harness: starting").next().unwrap_or("");
        last_run.contains("address already in use")
    }

    /// Kills it and panics with `why`, its config and the tail of its log.
    fn fail(&mut self, why: &str) -> ! {
        self.kill();
        panic!(
            "nats-server {} ({}): {why}\n--- {}\n{}\n--- last lines of {}\n{}",
            self.name,
            self.binary.display(),
            self.config_file().display(),
            fs::read_to_string(self.config_file()).unwrap_or_default(),
            self.log_file().display(),
            tail(&self.log_file(), 40)
        );
    }

    /// Appends a `==== harness:` line to its log, to tell its runs apart.
    fn mark(&self, what: &str) {
        if let Ok(mut log) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
        {
            let _ = writeln!(log, "==== harness: {what} {}", self.name);
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // A failing test must not leave its server running; the temporary
        // directory goes after this.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A JetStream cluster of nats-servers on 127.0.0.1, named `n1`, `n2`, ...
/// (cluster `backbone-test`), each routed to all the others, each with its
/// own ports, store and log, all with `sync_interval: always`.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers and waits until each is ready and all agree on a
    /// JetStream meta leader.
    ///
    /// `None` if there is no [`server_binary`], as for
    /// [`NatsServer::start`].
    ///
    /// # Panics
    ///
    /// As [`NatsServer::start`], or if no meta leader is agreed on within
    /// 20 s.
    pub fn start(n: usize) -> Option<NatsCluster> {
        assert!(n >= 1, "a cluster needs a node");
        let binary = server_binary().or_else(skip)?;
        let mut attempt = 1;
        loop {
            let ports = free_ports(3 * n);
            let (clients, rest) = ports.split_at(n);
            let (monitors, routes) = rest.split_at(n);
            let mut nodes: Vec<NatsServer> = (0..n)
                .map(|i| {
                    let others: Vec<String> = (0..n)
                        .filter(|&j| j != i)
                        .map(|j| format!("nats-route://127.0.0.1:{}", routes[j]))
                        .collect();
                    let cluster = format!(
                        "cluster {{\n  name: \"backbone-test\"\n  listen: 127.0.0.1:{}\n  \
                         routes: [{}]\n}}",
                        routes[i],
                        others.join(", ")
                    );
                    let name = format!("n{}", i + 1);
                    NatsServer::configure(&binary, &name, clients[i], monitors[i], &cluster)
                })
                .collect();
            // All at once: the nodes find each other through their routes.
            for node in &mut nodes {
                node.spawn();
            }
            let failed = nodes
                .iter_mut()
                .enumerate()
                .find_map(|(i, node)| node.wait_ready().err().map(|why| (i, why)));
            let Some((i, why)) = failed else {
                let mut cluster = NatsCluster { nodes };
                cluster.wait_for_meta_leader();
                return Some(cluster);
            };
            if nodes.iter().any(NatsServer::port_taken) && attempt < START_ATTEMPTS {
                eprintln!("nats harness: {why}; trying other ports");
                attempt += 1;
                continue;
            }
            nodes[i].fail(&why);
        }
    }

    /// The client URLs of all nodes, comma-separated (as a bridge's URL
    /// takes them): a client fails over between them.
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }

    /// Node `i` (0-based; its `server_name` is `n{i+1}`), to stop, kill or
    /// restart it. After a restart, [`wait_for_meta_leader`] waits until
    /// it has rejoined.
    ///
    /// [`wait_for_meta_leader`]: Self::wait_for_meta_leader
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// How many nodes it has, running or not.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Waits until the cluster has formed around a JetStream meta leader,
    /// and returns the leader's index: every running node reports the same
    /// leader (in `/jsz`), the leader is running, counts all the nodes in
    /// the meta group (stopped ones too), and sees every other running
    /// node as current. A node can report a leader that stopped for a
    /// moment, and a leader can be elected before the last node joined:
    /// hence the conditions after the first.
    ///
    /// # Panics
    ///
    /// If that does not happen within 20 s (for example with a majority of
    /// the nodes stopped); the message holds what each node reported.
    pub fn wait_for_meta_leader(&mut self) -> usize {
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let why = match self.formed() {
                Ok(leader) => return leader,
                Err(why) => why,
            };
            if Instant::now() >= deadline {
                let mut report = String::new();
                for node in &mut self.nodes {
                    let meta = if node.is_running() {
                        node.meta_cluster()
                            .map_or("no /jsz".into(), |m| m.to_string())
                    } else {
                        "not running".into()
                    };
                    report += &format!(
                        "\n--- {}: {meta}\n--- last lines of {}\n{}",
                        node.name,
                        node.log_file().display(),
                        tail(&node.log_file(), 15)
                    );
                }
                panic!(
                    "the JetStream cluster did not form within {} s: {why}{report}",
                    LEADER_TIMEOUT.as_secs()
                );
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// The meta leader's index if the cluster has formed (see
    /// [`wait_for_meta_leader`](Self::wait_for_meta_leader)), else why not.
    fn formed(&mut self) -> Result<usize, String> {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        let mut leader = None;
        for &i in &running {
            let node = &self.nodes[i];
            let reported = node
                .meta_cluster()
                .and_then(|meta| Some(meta.get("leader")?.as_str()?.to_owned()))
                .filter(|name| !name.is_empty())
                .ok_or_else(|| format!("{} knows no meta leader", node.name))?;
            match &leader {
                None => leader = Some(reported),
                Some(first) if *first == reported => {}
                Some(first) => {
                    return Err(format!(
                        "{} reports meta leader {reported}, another node {first}",
                        node.name
                    ))
                }
            }
        }
        let leader = leader.ok_or("no node is running")?;
        let at = running
            .iter()
            .copied()
            .find(|&i| self.nodes[i].name == leader)
            .ok_or_else(|| format!("the meta leader {leader} is not running"))?;
        let meta = self.nodes[at]
            .meta_cluster()
            .ok_or_else(|| format!("the meta leader {leader} has no /jsz"))?;
        let size = meta.get("cluster_size").and_then(|v| v.as_u64());
        if size != Some(self.nodes.len() as u64) {
            return Err(format!(
                "the meta leader {leader} counts {size:?} nodes, not {}",
                self.nodes.len()
            ));
        }
        let replicas = meta.get("replicas").and_then(|v| v.as_array());
        for &i in &running {
            let name = &self.nodes[i].name;
            let current = replicas.is_some_and(|replicas| {
                replicas
                    .iter()
                    .any(|r| r["name"] == name.as_str() && r["current"] == true)
            });
            if i != at && !current {
                return Err(format!(
                    "the meta leader {leader} does not see {name} current"
                ));
            }
        }
        Ok(at)
    }
}
