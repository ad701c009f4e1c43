//! Helpers shared by the integration tests.
#![allow(dead_code)]

/// Reading back what a bridge published.
#[cfg(feature = "nats")]
pub mod jetstream;
/// A real nats-server (or cluster) for the tests of the `nats` feature.
pub mod nats;

use std::path::Path;

use backbone::{EventLog, Options, Raw, Start};
use serde::{Deserialize, Serialize};

/// The retail event the crate is built around.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Checkout {
    pub order_id: u64,
    pub customer_id: u64,
    pub sku: String,
    pub qty: u32,
    pub price_cents: u64,
}

pub fn checkout(i: u64) -> Checkout {
    Checkout {
        order_id: i,
        customer_id: i % 97,
        sku: format!("SKU-{:06}", i % 1000),
        qty: (i % 5) as u32 + 1,
        price_cents: 100 + i,
    }
}

/// The payload of record `i` in byte-level tests: recognisable, of varying
/// length, and different for every index.
pub fn payload(seed: u64, i: u64) -> Vec<u8> {
    let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let len = 1 + (i * 7 + seed) % 40;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Every record of a log, as `(offset, payload)`, or the first error.
pub fn read_all(log: &EventLog<Vec<u8>, Raw>) -> backbone::Result<Vec<(u64, Vec<u8>)>> {
    log.read(Start::Beginning)
        .map(|rec| rec.map(|rec| (rec.offset, rec.value)))
        .collect()
}

pub fn open_raw(dir: &Path, options: Options) -> backbone::Result<EventLog<Vec<u8>, Raw>> {
    options.open_with_codec(dir, Raw)
}

/// Segment files of a real log directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

// ---- helpers of the crash, process and concurrency tests -----------------

/// A 64-bit mix (splitmix64's finalizer): a deterministic hash of `x`.
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The payload a writer appends as its record number `seq`: `seq` as 8
/// little-endian bytes, then `0..=max_extra` bytes derived from a hash of
/// `seq`. A verifier recomputes it from the first 8 bytes of what it reads.
pub fn seq_payload(seq: u64, max_extra: u64) -> Vec<u8> {
    let mut x = mix64(seq ^ 0x5EED_BAC4_B0E0_0001) | 1;
    let extra = x % (max_extra + 1);
    let mut out = Vec::with_capacity(8 + extra as usize);
    out.extend_from_slice(&seq.to_le_bytes());
    for _ in 0..extra {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push((x >> 24) as u8);
    }
    out
}

/// The writer sequence number at the start of a [`seq_payload`].
pub fn seq_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

/// A small deterministic generator for workloads (xorshift64*).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(mix64(seed) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64().is_multiple_of(n)
    }
}

/// A copy of this test binary running one test as a child process (the
/// self-exec trick: no extra binary to build). The child test reads its
/// instructions from the environment variables given, and does nothing
/// when they are absent. It speaks to the parent in stdout lines.
pub struct ChildProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl ChildProcess {
    /// Runs the test `test_name` of this binary in a child process with
    /// the extra environment `env`.
    pub fn spawn(test_name: &str, env: &[(&str, std::ffi::OsString)]) -> ChildProcess {
        use std::io::{BufRead, Read};
        use std::process::{Command, Stdio};

        let exe = std::env::current_exe().expect("the test binary's path");
        let mut command = Command::new(exe);
        command
            .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn the child test process");
        let out = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = std::sync::mpsc::channel();
        // Drain both pipes continuously, so the child never blocks on a
        // full pipe (which would change what it is doing when killed).
        let stdout = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(mut line) = line else { break };
                // libtest writes `test <name> ... ` without a newline
                // before the test runs: the child's first line follows it.
                if line.starts_with("test ") {
                    if let Some(at) = line.find(" ... ") {
                        line = line[at + 5..].to_owned();
                    }
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        ChildProcess {
            child,
            lines,
            seen: Vec::new(),
            stdout: Some(stdout),
            stderr: Some(stderr),
        }
    }

    /// Waits up to `timeout` for a stdout line starting with `prefix` and
    /// returns it; `None` on timeout or if the child closed its stdout.
    pub fn wait_for_line(&mut self, prefix: &str, timeout: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the child with SIGKILL (if it still runs), waits for it, and
    /// returns how it ended with every stdout line it wrote and its stderr.
    pub fn kill(mut self) -> ChildOutput {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait for the child");
        if let Some(stdout) = self.stdout.take() {
            stdout.join().expect("stdout reader");
        }
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().expect("stderr reader"))
            .unwrap_or_default();
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.lines.try_iter());
        ChildOutput {
            status,
            lines,
            stderr,
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // A failing parent must not leave its child running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a killed child left: its exit status, stdout lines and stderr.
#[derive(Debug)]
pub struct ChildOutput {
    pub status: std::process::ExitStatus,
    pub lines: Vec<String>,
    pub stderr: String,
}

impl ChildOutput {
    /// Whether the child died of SIGKILL (and so did not exit by itself).
    #[cfg(unix)]
    pub fn was_killed(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        self.status.signal() == Some(9)
    }
}

/// Writes one line to stdout and flushes it, for a child process talking
/// to its parent. A parent that went away ends the child.
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if out.write_fmt(line).is_err() || out.write_all(b"\n").is_err() || out.flush().is_err() {
        std::process::exit(0);
    }
}

/// The `p`-th percentile (0..=100) of sorted `values`.
pub fn percentile<T: Copy>(sorted: &[T], p: usize) -> T {
    let i = (sorted.len() * p / 100).min(sorted.len() - 1);
    sorted[i]
}

/// splitmix64: the generator of the seeded damage and power-loss
/// campaigns (a different sequence from [`Rng`], so their seeds keep
/// naming the same cases).
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `lo..=hi`.
    pub fn range_inclusive(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Opens with `open`, retrying briefly while another process holds the
/// log's lock. Test parents run campaigns side by side on threads, and a
/// child forked for one campaign holds copies of the parent's open files
/// until it execs, the lock of another campaign's log among them if the
/// parent had that log open just then. A lock a killed child really kept
/// outlasts the retries (2 s) and fails the campaign.
#[allow(dead_code)]
pub fn retry_locked<T>(mut open: impl FnMut() -> backbone::Result<T>) -> backbone::Result<T> {
    let mut tries = 0;
    loop {
        match open() {
            Err(backbone::Error::Locked {
                in_this_process: false,
                ..
            }) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The binary of `example`, built first by the cargo running this test
/// when there is one.
pub fn example_binary(example: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // .../target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lies in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("{example}{}", std::env::consts::EXE_SUFFIX));
    if let Some(cargo) = option_env!("CARGO") {
        let mut build = std::process::Command::new(cargo);
        build.args(["build", "--quiet", "--example", example]);
        // The features this test was built with, so that the example is
        // built against the same library build (no second compile).
        let features: Vec<&str> = [
            ("async", cfg!(feature = "async")),
            ("bincode", cfg!(feature = "bincode")),
            ("cli", cfg!(feature = "cli")),
            ("json", cfg!(feature = "json")),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect();
        if !features.is_empty() {
            build.arg("--features").arg(features.join(","));
        }
        build.current_dir(env!("CARGO_MANIFEST_DIR"));
        if let Some(target_dir) = profile_dir.parent() {
            build.arg("--target-dir").arg(target_dir);
        }
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cargo build --example {example} failed");
    }
    assert!(
        binary.exists(),
        "the example binary {} is missing: build it with `cargo build --example {example}` \
         (in the profile of this test), or run `cargo test` without selecting targets",
        binary.display()
    );
    binary
}
