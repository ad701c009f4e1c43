//! What the scenario examples (`iot_trigger`, `recommendations`) share:
//! the flags that say where their logs live and which traffic they
//! simulate, opening their logs, a live watcher, a small seeded random
//! source, and the closing report.
//!
//! The report is one `key: value` line per figure, after a line
//! `== report ==`: aligned for a person, and split at the first `:` by a
//! program (`tests/scenario_examples.rs` checks the figures against what
//! the input implies).

use std::fmt::Display;
use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use backbone::{Codec, Durability, EventLog, Options, Postcard, Start};

/// Where an example keeps its logs, and the seed of its simulated traffic.
#[derive(clap::Args, Debug)]
pub struct Place {
    /// The directory holding the example's logs (default: one under the
    /// system's temp dir). Run again on the same directory, the example
    /// continues the same history.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Delete the directory first and start from an empty history.
    #[arg(long)]
    pub fresh: bool,
    /// Seed of the simulated traffic: the same seed on the same history
    /// gives the same events.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A scenario's directory, the log its producers append to and the log a
/// job derives from it.
pub type ScenarioLogs<S, D> = (PathBuf, EventLog<S>, EventLog<D>);

impl Place {
    /// Opens the scenario's two logs in its directory (`default_name`
    /// under the temp dir unless `--dir` says otherwise, emptied first
    /// with `--fresh`): `source`, which producers append to one record or
    /// one small batch at a time, and `derived`, which a job derives from
    /// it; and says what history they already hold. Returns the directory
    /// and the logs.
    ///
    /// The source is written to the operating system at once and synced
    /// every 20 ms, so a power loss takes back at most the last 20 ms of
    /// it (a job's checkpoint syncs it below the job's position first);
    /// the derived log is durable with each batch the job commits.
    /// Segments are small, since the examples keep little.
    pub fn open<S, D>(
        &self,
        default_name: &str,
        source: &str,
        derived: &str,
    ) -> Result<ScenarioLogs<S, D>, Box<dyn std::error::Error>>
    where
        Postcard: Codec<S> + Codec<D>,
    {
        let dir = self
            .dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(default_name));
        if self.fresh && dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let options = Options::new().segment_bytes(1 << 20);
        let source_log: EventLog<S> = options
            .clone()
            .durability(Durability::Interval(Duration::from_millis(20)))
            .open(dir.join(source))?;
        let derived_log: EventLog<D> = options.open(dir.join(derived))?;
        println!(
            "history in {}: {source} {}..{}, {derived} {}..{}",
            dir.display(),
            source_log.first_offset(),
            source_log.next_offset(),
            derived_log.first_offset(),
            derived_log.next_offset()
        );
        Ok((dir, source_log, derived_log))
    }
}

/// A service that watches `log` live from its end on: it prints the first
/// `show` records as they arrive (`label: describe(value)`), and counts
/// every record until the log is closed, when its thread returns the
/// count.
pub fn watch<T>(
    log: &EventLog<T>,
    label: &'static str,
    show: u64,
    describe: impl Fn(&T) -> String + Send + 'static,
) -> backbone::Result<JoinHandle<u64>>
where
    T: Send + 'static,
    Postcard: Codec<T>,
{
    let sub = log.subscribe(Start::Offset(log.next_offset()))?;
    Ok(std::thread::spawn(move || {
        let mut received = 0u64;
        for rec in sub.iter() {
            let Ok(rec) = rec else { break };
            if received < show {
                println!("{label}: {}", describe(&rec.value));
            }
            received += 1;
        }
        received
    }))
}

/// A seeded xorshift64* generator: the same seed and stream give the same
/// numbers on every machine, which is all a simulation needs.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// The generator for `stream` (a device, a listener, a run) of `seed`.
    pub fn new(seed: u64, stream: u64) -> Rng {
        // splitmix64 of the pair, so that nearby seeds and streams give
        // unrelated sequences; xorshift must never hold zero.
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True `percent` times in a hundred.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The closing report: figures in the order they were added.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<(String, String)>,
}

impl Report {
    /// Adds the figure `key` (no spaces: a program reads it).
    pub fn add(&mut self, key: &str, value: impl Display) {
        debug_assert!(!key.contains(char::is_whitespace));
        self.rows.push((key.to_owned(), value.to_string()));
    }

    /// Ends a scenario: adds each log's offset range (`<name>_offsets`,
    /// `first..next`) and segments, and where the data lies; closes the
    /// logs, which lets the watcher take every record appended before,
    /// then ends its subscription; adds what it received
    /// (`<watcher>_received`), and prints the report. The logs' jobs and
    /// tables must have stopped.
    pub fn finish<S, D>(
        mut self,
        (dir, source, derived): ScenarioLogs<S, D>,
        names: [&str; 2],
        (watcher, watched): (&str, JoinHandle<u64>),
    ) -> backbone::Result<()>
    where
        Postcard: Codec<S> + Codec<D>,
    {
        for (name, stats) in names.iter().zip([source.stats(), derived.stats()]) {
            self.add(
                &format!("{name}_offsets"),
                format_args!("{}..{}", stats.first_offset, stats.next_offset),
            );
            self.add(&format!("{name}_segments"), stats.segments);
        }
        self.add("data", dir.display());
        source.close()?;
        derived.close()?;
        let received = watched.join().expect("the watcher's thread");
        self.add(&format!("{watcher}_received"), received);
        self.print();
        Ok(())
    }

    /// Prints the report under its heading.
    fn print(&self) {
        let width = self
            .rows
            .iter()
            .map(|(key, _)| key.len())
            .max()
            .unwrap_or(0)
            + 1;
        println!("== report ==");
        for (key, value) in &self.rows {
            println!("{:<width$} {value}", format!("{key}:"));
        }
    }
}
