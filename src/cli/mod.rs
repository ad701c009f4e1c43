//! The `backbone` command-line tool, as a library function: an operator's
//! view of logs on disk (`ls`, `stat`, `tail`, `dump`, `verify`) and the
//! few changes an operator makes by hand (`consumers set|delete`,
//! `truncate`). Behind the `cli` feature.
//!
//! It is built on [`inspect`](crate::inspect) and the public log API only,
//! so it reads any log without knowing its event type: payloads print as
//! JSON when the log's codec is JSON, and as hex otherwise. An application
//! whose logs use the default codec (postcard) ships its own small binary
//! with its event types registered, and its events print as JSON:
//!
//! ```no_run
//! use backbone::cli::Registry;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Checkout { order_id: u64, sku: String }
//!
//! impl backbone::Event for Checkout {
//!     const NAME: &'static str = "shop.Checkout";
//!     const VERSION: u32 = 1;
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     backbone::cli::main_with(Registry::new().register::<Checkout>())
//! }
//! ```
//!
//! Read-only commands never write: they use [`Inspector`](crate::inspect::Inspector),
//! take no lock and work while a writer runs. `consumers set|delete` and
//! `truncate` open the log for writing, so they refuse while a writer
//! holds it.
//!
//! This module owns argument parsing, the commands and their output; it
//! names nothing of the crate below the public API.

mod output;
mod read;
mod registry;
mod write;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use registry::Registry;

use output::{Failure, Out};

/// Exit status: the command did what it was asked.
const EXIT_OK: u8 = 0;
/// Exit status: an error, or a change refused (the message says which).
const EXIT_ERROR: u8 = 1;
/// Exit status: `verify` found damage.
const EXIT_DAMAGED: u8 = 3;

const AFTER_HELP: &str = "\
Examples:
  backbone ls data/                       every log under data/, with counts and sizes
  backbone stat data/checkouts --json     one log in detail, as JSON
  backbone tail -f data/checkouts         the last records, then new ones as they come
  backbone dump data/checkouts --since 10m --format json | jq .
  backbone verify data/checkouts          check every checksum and index entry
  backbone consumers data/checkouts set shipping 1200
  backbone truncate data/checkouts --before 50000

Read-only commands (ls, stat, tail, dump, verify, consumers without a change)
take no lock and work while a writer runs. consumers set|delete and truncate
take the writer's lock, and refuse while a writer holds it.

Exit status: 0 success; 1 an error or a refused change; 2 bad usage;
3 verify found damage.";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "backbone",
    version,
    about = "Look at backbone event logs on disk, and adjust their consumers and retention",
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How `dump` and `tail` print each record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// `OFFSET TIMESTAMP PAYLOAD`, the payload as JSON when it can be
    /// decoded, as hex otherwise.
    Text,
    /// One JSON object per line: offset, timestamp, and `value` (decoded)
    /// or `hex`.
    Json,
    /// `OFFSET TIMESTAMP HEX`.
    Hex,
    /// The payloads' bytes only, each followed by a newline.
    Raw,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The logs under a directory: records, sizes, offset and time ranges, consumers.
    #[command(after_help = "Example:\n  backbone ls data/ --json")]
    Ls {
        /// The directory to search (up to 5 levels deep).
        dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One log in detail: settings, segments, index, consumers, readers, append rate.
    #[command(after_help = "Example:\n  backbone stat data/checkouts")]
    Stat {
        /// The log's directory.
        log: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The last records of a log; with -f, then every new one.
    #[command(after_help = "Examples:\n  backbone tail data/checkouts -n 20\n  \
        backbone tail -f data/checkouts --format json")]
    Tail {
        /// The log's directory.
        log: PathBuf,
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 10)]
        count: u64,
        /// Keep printing records as a writer appends them (until interrupted).
        #[arg(short, long)]
        follow: bool,
        /// How to print each record.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Records with their offset and timestamp.
    #[command(
        after_help = "Examples:\n  backbone dump data/checkouts --from 100 --to 200\n  \
        backbone dump data/checkouts --since 2026-05-01T12:00:00Z --format json\n  \
        backbone dump data/checkouts --since 15m --to 1h\n\n\
        TIME is an RFC 3339 UTC time (2026-05-01T12:00:00Z, 2026-05-01T12:00:00.25Z),\n\
        a date (2026-05-01), a span before now (90s, 15m, 2h, 3d), or @MICROSECONDS\n\
        since the Unix epoch."
    )]
    Dump {
        /// The log's directory.
        log: PathBuf,
        /// Start at this offset.
        #[arg(long, value_name = "OFFSET", conflicts_with = "since")]
        from: Option<u64>,
        /// Start at the first record appended at or after this time.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        /// Stop before this offset, or before the first record at or after
        /// this time (a TIME as for --since).
        #[arg(long, value_name = "OFFSET|TIME")]
        to: Option<String>,
        /// How to print each record.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Check every record's checksum and every index entry; report each damaged place.
    #[command(after_help = "Exit status: 0 clean, 3 damage found, 1 the check could not run.")]
    Verify {
        /// The log's directory.
        log: PathBuf,
    },
    /// Consumers, work groups, jobs and tables reading a log, with positions and lag;
    /// or move or delete a consumer.
    #[command(after_help = "Examples:\n  backbone consumers data/checkouts\n  \
        backbone consumers data/checkouts set shipping 1200\n  \
        backbone consumers data/checkouts delete old-mailer\n\n\
        set and delete take the writer's lock. They refuse a job, table or hand-off\n\
        (its position lives in the log named) and a work group's consumer.")]
    Consumers {
        /// The log's directory.
        log: PathBuf,
        #[command(subcommand)]
        change: Option<ConsumerChange>,
    },
    /// Remove whole segments whose records all lie below an offset.
    #[command(
        after_help = "Example:\n  backbone truncate data/checkouts --before 50000\n\n\
        The segment holding OFFSET is kept whole, so the new first offset may be lower.\n\
        Refuses to pass a consumer's or reader's position unless given --force, and\n\
        then lists what each of them loses. Takes the writer's lock."
    )]
    Truncate {
        /// The log's directory.
        log: PathBuf,
        /// Remove the records below this offset (whole segments only).
        #[arg(long, value_name = "OFFSET")]
        before: u64,
        /// Remove them even if consumers or readers have not read them.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConsumerChange {
    /// Move a consumer to OFFSET (the next record it reads), creating it if need be.
    Set {
        /// The consumer's name.
        name: String,
        /// Its new position.
        offset: u64,
    },
    /// Delete a consumer and its stored position.
    Delete {
        /// The consumer's name.
        name: String,
    },
}

/// Runs the `backbone` tool with the process's arguments, printing
/// payloads of the event types in `registry` as JSON, and returns the
/// exit status to end the process with. Never panics on bad input: every
/// failure is a message on stderr and a non-zero status.
pub fn main_with(registry: Registry) -> ExitCode {
    run(std::env::args_os(), &registry)
}

/// As [`main_with`], with the arguments given (the first one is the
/// program's name).
pub fn run<I, A>(args: I, registry: &Registry) -> ExitCode
where
    I: IntoIterator<Item = A>,
    A: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with status 0, usage errors to
            // stderr with status 2; a closed pipe is no error.
            let _ = e.print();
            return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
        }
    };
    let mut out = Out::stdout();
    let result = dispatch(cli.command, registry, &mut out).and_then(|code| {
        out.flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Pipe) => ExitCode::from(EXIT_OK),
        Err(Failure::Message(message)) => {
            let _ = out.flush();
            eprintln!("backbone: {message}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn dispatch(command: Command, registry: &Registry, out: &mut Out) -> Result<u8, Failure> {
    match command {
        Command::Ls { dir, json } => read::ls(&dir, json, out),
        Command::Stat { log, json } => read::stat(&log, json, out),
        Command::Tail {
            log,
            count,
            follow,
            format,
        } => read::tail(&log, count, follow, format, registry, out),
        Command::Dump {
            log,
            from,
            since,
            to,
            format,
        } => read::dump(&log, read::Range { from, since, to }, format, registry, out),
        Command::Verify { log } => read::verify(&log, out),
        Command::Consumers { log, change } => match change {
            None => read::consumers(&log, out),
            Some(ConsumerChange::Set { name, offset }) => {
                write::set_consumer(&log, &name, offset, out)
            }
            Some(ConsumerChange::Delete { name }) => write::delete_consumer(&log, &name, out),
        },
        Command::Truncate { log, before, force } => write::truncate(&log, before, force, out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
