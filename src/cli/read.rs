//! The read-only commands: `ls`, `stat`, `tail`, `dump`, `verify` and the
//! listing of `consumers`. Each opens logs with an [`Inspector`], which
//! takes no lock and writes nothing.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::inspect::{AttachedKind, Inspector, RawRecord, SegmentInfo};
use crate::{ReaderKind, Start, Timestamp};

use super::output::{open_failed, parse_time, size, sparkline, Failure, Out, Printer};
use super::registry::Registry;
use super::{Format, EXIT_DAMAGED, EXIT_ERROR, EXIT_OK};

/// How deep `ls` looks under its directory.
const LS_DEPTH: usize = 5;
/// Points of `stat`'s append-rate chart.
const RATE_POINTS: u64 = 40;
/// How often `tail -f` looks for new records.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub(super) fn open(path: &Path) -> Result<Inspector, Failure> {
    Inspector::open(path).map_err(|e| open_failed(path, e))
}

/// The record at `offset`, if the log still has it.
fn record_at(log: &Inspector, offset: u64) -> Result<Option<RawRecord>, Failure> {
    Ok(log.frames(Start::Offset(offset)).next().transpose()?)
}

/// What `ls` and `stat` say about every log.
struct Summary {
    first: u64,
    next: u64,
    bytes: u64,
    times: Option<(Timestamp, Timestamp)>,
    consumers: Vec<(String, Option<u64>)>,
}

impl Summary {
    fn of(log: &Inspector, segments: &[SegmentInfo]) -> Result<Summary, Failure> {
        let (first, next) = (log.first_offset(), log.next_offset()?);
        let times = if next > first {
            let oldest = record_at(log, first)?;
            let newest = record_at(log, next - 1)?;
            oldest.zip(newest).map(|(a, b)| (a.timestamp, b.timestamp))
        } else {
            None
        };
        Ok(Summary {
            first,
            next,
            bytes: segments.iter().map(|s| s.file_bytes).sum(),
            times,
            consumers: log
                .consumers()?
                .into_iter()
                .map(|c| (c.name, c.position))
                .collect(),
        })
    }

    fn json(&self, log: &Inspector) -> Value {
        let meta = log.meta();
        json!({
            "path": log.path(),
            "codec": meta.codec,
            "event_type": meta.event_type.map(|(name, version)| json!({"name": name, "version": version})),
            "first_offset": self.first,
            "next_offset": self.next,
            "records": self.next - self.first,
            "bytes": self.bytes,
            "first_timestamp": self.times.map(|t| t.0.to_string()),
            "last_timestamp": self.times.map(|t| t.1.to_string()),
            "consumers": self.consumers.iter().map(|(name, position)| json!({
                "name": name,
                "position": position,
                "lag": position.map(|p| self.next.saturating_sub(p)),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Every directory holding a `META` at most `depth` levels under `dir`
/// (`dir` included), sorted.
fn find_logs(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) -> Result<(), Failure> {
    if dir.join("META").is_file() {
        found.push(dir.to_path_buf());
    }
    if depth == 0 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::new(format!("cannot list {}: {e}", dir.display())))?;
    let mut subdirs: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| entry.path())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        // A subdirectory that cannot be listed is skipped, not fatal.
        let _ = find_logs(&sub, depth - 1, found);
    }
    Ok(())
}

pub(super) fn ls(dir: &Path, as_json: bool, out: &mut Out) -> Result<u8, Failure> {
    if !dir.is_dir() {
        return Err(match dir.exists() {
            true => Failure::new(format!("{} is not a directory", dir.display())),
            false => Failure::new(format!("{}: no such file or directory", dir.display())),
        });
    }
    let mut paths = Vec::new();
    find_logs(dir, LS_DEPTH, &mut paths)?;
    let mut status = EXIT_OK;
    let mut rows = Vec::new();
    for path in &paths {
        let summary = open(path).and_then(|log| Ok((Summary::of(&log, &log.segments()?)?, log)));
        match summary {
            Ok(pair) => rows.push(pair),
            Err(Failure::Message(message)) => {
                eprintln!("backbone: {message}");
                status = EXIT_ERROR;
            }
            Err(Failure::Pipe) => return Err(Failure::Pipe),
        }
    }
    if as_json {
        let logs: Vec<Value> = rows.iter().map(|(s, log)| s.json(log)).collect();
        writeln!(out, "{}", Value::Array(logs))?;
        return Ok(status);
    }
    if rows.is_empty() {
        eprintln!("backbone: no logs under {}", dir.display());
        return Ok(status);
    }
    let style = out.style;
    writeln!(
        out,
        "{}",
        style.bold(&format!(
            "{:<32} {:>10} {:>10} {:>21} {:<55} CONSUMERS",
            "LOG", "RECORDS", "SIZE", "OFFSETS", "TIMES"
        ))
    )?;
    for (s, log) in &rows {
        let shown = log.path().strip_prefix(dir).unwrap_or(log.path());
        let shown = match shown.as_os_str().is_empty() {
            true => ".".to_owned(),
            false => shown.display().to_string(),
        };
        let times = s
            .times
            .map_or_else(|| "-".to_owned(), |(a, b)| format!("{a} .. {b}"));
        let consumers: Vec<String> = s
            .consumers
            .iter()
            .map(|(name, position)| match position {
                Some(p) => format!("{name}@{p}"),
                None => format!("{name}@?"),
            })
            .collect();
        writeln!(
            out,
            "{:<32} {:>10} {:>10} {:>21} {:<55} {}",
            shown,
            s.next - s.first,
            size(s.bytes),
            format!("{}..{}", s.first, s.next),
            times,
            if consumers.is_empty() {
                "-".to_owned()
            } else {
                consumers.join(" ")
            }
        )?;
    }
    Ok(status)
}

/// The append rate over the log's time span, in records a second: the span
/// cut into equal spans of time, each counted by finding (timestamps never
/// decrease along a log) the first record at or after its start. Empty
/// when the records span no time.
fn append_rate(log: &Inspector, first: u64, next: u64) -> Result<Vec<f64>, Failure> {
    let time = |offset| -> Result<Option<u64>, Failure> {
        Ok(record_at(log, offset)?.map(|r| r.timestamp.as_micros()))
    };
    let (Some(start), Some(end)) = (time(first)?, time(next.saturating_sub(1))?) else {
        return Ok(Vec::new());
    };
    if next - first < 2 || end <= start {
        return Ok(Vec::new());
    }
    let span = end - start;
    // The first offset in `lo..next` with a timestamp at or after `at`.
    let first_at = |mut lo: u64, at: u64| -> Result<u64, Failure> {
        let mut hi = next;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match time(mid)? {
                Some(t) if t < at => lo = mid + 1,
                _ => hi = mid,
            }
        }
        Ok(lo)
    };
    let mut bounds = vec![first];
    for i in 1..RATE_POINTS {
        let at = start + span * i / RATE_POINTS;
        let from = *bounds.last().expect("one at least");
        bounds.push(first_at(from, at)?);
    }
    bounds.push(next);
    let seconds = span as f64 / 1e6 / RATE_POINTS as f64;
    Ok(bounds
        .windows(2)
        .map(|w| (w[1] - w[0]) as f64 / seconds)
        .collect())
}

pub(super) fn stat(path: &Path, as_json: bool, out: &mut Out) -> Result<u8, Failure> {
    let log = open(path)?;
    let segments = log.segments()?;
    let summary = Summary::of(&log, &segments)?;
    let meta = log.meta();
    let readers = readers(&log)?;
    let attached = log.attached()?;
    let checkpoints = log.checkpoints()?;
    let rates = append_rate(&log, summary.first, summary.next)?;
    if as_json {
        let mut value = summary.json(&log);
        value["log_id"] = json!(meta.log_id.map(|id| id.to_string()));
        value["type_name"] = json!(meta.type_name);
        value["format_version"] = json!(meta.format_version);
        value["meta_version"] = json!(meta.meta_version);
        value["segments"] = segments
            .iter()
            .map(|s| {
                json!({
                    "path": s.path,
                    "base_offset": s.base_offset,
                    "end_offset": s.end_offset,
                    "file_bytes": s.file_bytes,
                    "used_bytes": s.used_bytes,
                    "closed": s.closed,
                    "index_entries": s.index_entries,
                    "index_file": s.path.with_extension("idx").is_file(),
                    "format_version": s.format_version,
                })
            })
            .collect();
        value["readers"] = readers.iter().map(|r| r.json(summary.next)).collect();
        value["attached"] = attached
            .iter()
            .map(|a| json!({"name": a.name, "kind": kind_name(a.kind), "log": a.log}))
            .collect();
        value["checkpoints"] = checkpoints
            .iter()
            .map(|c| json!({"name": c.name, "positions": c.positions.len(), "state_bytes": c.state_bytes}))
            .collect();
        value["append_rate"] = json!(rates);
        writeln!(out, "{value}")?;
        return Ok(EXIT_OK);
    }
    let style = out.style;
    let heading = |text: &str| style.bold(text);
    writeln!(out, "{} {}", heading("log"), log.path().display())?;
    writeln!(
        out,
        "  codec {}, event type {}, Rust type {}",
        meta.codec,
        meta.event_type
            .map_or_else(|| "none".to_owned(), |(n, v)| format!("{n} v{v}")),
        meta.type_name
    )?;
    writeln!(
        out,
        "  id {}, META version {}, format version {}",
        meta.log_id
            .map_or_else(|| "none".to_owned(), |id| id.to_string()),
        meta.meta_version,
        meta.format_version
    )?;
    writeln!(
        out,
        "  records {} (offsets {}..{}), {} on disk",
        summary.next - summary.first,
        summary.first,
        summary.next,
        size(summary.bytes)
    )?;
    if let Some((a, b)) = summary.times {
        writeln!(out, "  appended {a} .. {b}")?;
    }
    if !rates.is_empty() {
        let max = rates.iter().copied().fold(0.0, f64::max);
        writeln!(
            out,
            "  append rate {} (up to {max:.0} records/s, oldest to newest)",
            sparkline(&rates)
        )?;
    }
    writeln!(out, "{} {}", heading("segments"), segments.len())?;
    for s in &segments {
        let index = match (s.path.with_extension("idx").is_file(), s.index_entries) {
            (true, n) => format!("index {n} entries"),
            (false, _) => style.yellow("index missing (rebuilt when read)"),
        };
        let state = match s.closed {
            Some(true) => "sealed".to_owned(),
            Some(false) => "active".to_owned(),
            None => style.red("watermark damaged"),
        };
        writeln!(
            out,
            "  {} offsets {}..{}, {} of {}, {state}, {index}, v{}",
            s.path.file_name().unwrap_or_default().to_string_lossy(),
            s.base_offset,
            s.end_offset,
            size(s.used_bytes),
            size(s.file_bytes),
            s.format_version
        )?;
    }
    write_positions(&log, &summary, &readers, out)?;
    if !checkpoints.is_empty() {
        writeln!(out, "{}", heading("checkpoints stored here"))?;
        for c in &checkpoints {
            writeln!(
                out,
                "  {} ({} source positions, {} state)",
                c.name,
                c.positions.len(),
                size(c.state_bytes as u64)
            )?;
        }
    }
    Ok(EXIT_OK)
}

fn kind_name(kind: AttachedKind) -> &'static str {
    match kind {
        AttachedKind::Group => "group",
        AttachedKind::Job => "job",
        _ => "table",
    }
}

/// A reader registered on a log, with its true position where found.
pub(super) struct Reader {
    pub(super) name: String,
    pub(super) kind: &'static str,
    pub(super) location: PathBuf,
    pub(super) advisory: Option<u64>,
    pub(super) true_position: Option<u64>,
}

impl Reader {
    /// The position it needs kept: the true one if known.
    pub(super) fn position(&self) -> Option<u64> {
        self.true_position.or(self.advisory)
    }

    fn json(&self, next: u64) -> Value {
        json!({
            "name": self.name,
            "kind": self.kind,
            "location": self.location,
            "advisory_position": self.advisory,
            "position": self.true_position,
            "lag": self.position().map(|p| next.saturating_sub(p)),
        })
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The readers registered on `log`, each with its kind (a table, a
/// `for_each` job, another job or a hand-off) and true position.
pub(super) fn readers(log: &Inspector) -> Result<Vec<Reader>, Failure> {
    let attached = log.attached()?;
    let mut found = Vec::new();
    for reader in log.readers()? {
        let kind = attached
            .iter()
            .find(|a| same_path(&a.log, &reader.location))
            .map_or(
                if reader.kind == ReaderKind::Mirror {
                    "mirror"
                } else if reader.name.ends_with(".state") {
                    "job state"
                } else {
                    "reader"
                },
                |a| kind_name(a.kind),
            );
        // A reader whose log cannot be read still shows, by its advisory
        // copy; a mirror's true position is on its JetStream subject.
        let true_position = match reader.kind {
            ReaderKind::Mirror => None,
            _ => log.reader_position(&reader).unwrap_or(None),
        };
        found.push(Reader {
            name: reader.name,
            kind,
            location: reader.location,
            advisory: reader.position,
            true_position,
        });
    }
    Ok(found)
}

/// The consumers, groups and readers of `log` with their positions and lag.
fn write_positions(
    log: &Inspector,
    summary: &Summary,
    readers: &[Reader],
    out: &mut Out,
) -> Result<(), Failure> {
    let style = out.style;
    let groups: Vec<String> = log
        .attached()?
        .into_iter()
        .filter(|a| a.kind == AttachedKind::Group)
        .map(|a| a.name)
        .collect();
    let lag = |p: Option<u64>| {
        p.map_or_else(
            || "?".to_owned(),
            |p| summary.next.saturating_sub(p).to_string(),
        )
    };
    writeln!(
        out,
        "{}",
        style.bold(&format!(
            "{:<24} {:<10} {:>12} {:>10}  WHERE",
            "CONSUMER", "KIND", "POSITION", "LAG"
        ))
    )?;
    if summary.consumers.is_empty() && readers.is_empty() {
        writeln!(out, "  {}", style.dim("(none)"))?;
    }
    for (name, position) in &summary.consumers {
        let kind = if groups.contains(name) {
            "group"
        } else {
            "consumer"
        };
        writeln!(
            out,
            "{:<24} {:<10} {:>12} {:>10}  {}",
            name,
            kind,
            position.map_or_else(|| style.red("unreadable"), |p| p.to_string()),
            lag(*position),
            log.path().display()
        )?;
    }
    for r in readers {
        writeln!(
            out,
            "{:<24} {:<10} {:>12} {:>10}  {}",
            r.name,
            r.kind,
            r.position()
                .map_or_else(|| style.red("unknown"), |p| p.to_string()),
            lag(r.position()),
            r.location.display()
        )?;
    }
    Ok(())
}

pub(super) fn consumers(path: &Path, out: &mut Out) -> Result<u8, Failure> {
    let log = open(path)?;
    let summary = Summary::of(&log, &[])?;
    let readers = readers(&log)?;
    write_positions(&log, &summary, &readers, out)?;
    Ok(EXIT_OK)
}

/// Where `dump` starts and stops.
#[derive(Debug)]
pub(super) struct Range {
    pub(super) from: Option<u64>,
    pub(super) since: Option<String>,
    pub(super) to: Option<String>,
}

/// Whether `record` is past a `--to` bound.
enum Bound {
    None,
    Offset(u64),
    Time(Timestamp),
}

impl Bound {
    fn parse(text: Option<&str>) -> Result<Bound, Failure> {
        Ok(match text {
            None => Bound::None,
            Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => Bound::Offset(
                t.parse()
                    .map_err(|_| Failure::new(format!("{t} is not an offset")))?,
            ),
            Some(t) => Bound::Time(parse_time(t)?),
        })
    }

    fn passed(&self, record: &RawRecord) -> bool {
        match *self {
            Bound::None => false,
            Bound::Offset(end) => record.offset >= end,
            Bound::Time(end) => record.timestamp >= end,
        }
    }
}

/// The log at `path` and a printer of its records in `format`.
fn open_printing<'a>(
    path: &Path,
    format: Format,
    registry: &'a Registry,
) -> Result<(Inspector, Printer<'a>), Failure> {
    let log = open(path)?;
    let printer = Printer {
        meta: log.meta(),
        registry,
        format,
    };
    Ok((log, printer))
}

pub(super) fn dump(
    path: &Path,
    range: Range,
    format: Format,
    registry: &Registry,
    out: &mut Out,
) -> Result<u8, Failure> {
    let (log, printer) = open_printing(path, format, registry)?;
    let end = Bound::parse(range.to.as_deref())?;
    let start = match (range.from, range.since) {
        (Some(offset), _) => {
            let (first, next) = (log.first_offset(), log.next_offset()?);
            if offset < first || offset > next {
                return Err(Failure::new(format!(
                    "offset {offset} is not in {} (it holds offsets {first}..{next})",
                    path.display()
                )));
            }
            Start::Offset(offset)
        }
        (None, Some(time)) => Start::Timestamp(parse_time(&time)?),
        (None, None) => Start::Beginning,
    };
    for record in log.frames(start) {
        let record = record?;
        if end.passed(&record) {
            break;
        }
        printer.print(out, &record)?;
    }
    Ok(EXIT_OK)
}

pub(super) fn tail(
    path: &Path,
    count: u64,
    follow: bool,
    format: Format,
    registry: &Registry,
    out: &mut Out,
) -> Result<u8, Failure> {
    let (log, printer) = open_printing(path, format, registry)?;
    let mut next = log.next_offset()?;
    let start = next.saturating_sub(count).max(log.first_offset());
    let mut from = Start::Offset(start);
    loop {
        for record in log.frames(from) {
            let record = record?;
            next = record.offset + 1;
            printer.print(out, &record)?;
        }
        if !follow {
            return Ok(EXIT_OK);
        }
        out.flush()?;
        // Wait for the writer: `next_offset` follows it.
        while log.next_offset()? <= next {
            std::thread::sleep(FOLLOW_POLL);
        }
        from = Start::Offset(next);
    }
}

pub(super) fn verify(path: &Path, out: &mut Out) -> Result<u8, Failure> {
    let log = open(path)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} segments {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let report = log.verify_with(|done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report?;
    let style = out.style;
    for damage in &report.damage {
        let offset = damage
            .offset
            .map_or_else(String::new, |o| format!(" (record {o})"));
        writeln!(
            out,
            "{} {} at byte {}{offset}: {}",
            style.red("damaged:"),
            damage.path.display(),
            damage.position,
            damage.kind
        )?;
    }
    if report.is_clean() {
        writeln!(
            out,
            "{} {} records in {} segments checked",
            style.green("ok:"),
            report.records,
            report.segments
        )?;
        Ok(EXIT_OK)
    } else {
        writeln!(
            out,
            "{} damaged places; {} records in {} segments checked",
            report.damage.len(),
            report.records,
            report.segments
        )?;
        Ok(EXIT_DAMAGED)
    }
}
