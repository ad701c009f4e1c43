//! What the commands print and how: a stdout that ends quietly when the
//! reader of a pipe goes away, colour only on a terminal, the failure type
//! every command returns, and the small formatters (sizes, hex, times).

use std::fmt::Write as _;
use std::io::{self, BufWriter, IsTerminal, Stdout, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::inspect::RawRecord;
use crate::{Error, Timestamp};

use super::registry::Registry;
use super::Format;
use crate::inspect::LogMeta;

/// Why a command stopped.
#[derive(Debug)]
pub(super) enum Failure {
    /// Whoever read our output closed it: stop quietly.
    Pipe,
    /// A message for stderr; the status is non-zero.
    Message(String),
}

impl Failure {
    pub(super) fn new(message: impl Into<String>) -> Failure {
        Failure::Message(message.into())
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::Pipe
        } else {
            Failure::Message(format!("writing the output failed: {e}"))
        }
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Message(describe(&e))
    }
}

/// `e` and its causes, on one line.
pub(super) fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let _ = write!(text, ": {c}");
        cause = c.source();
    }
    if let Error::Corrupt { .. } = e {
        text.push_str(" (run `backbone verify` on the log for every damaged place)");
    }
    text
}

/// The error of opening the log `path` for a command, with the path and a
/// hint for the common mistakes.
pub(super) fn open_failed(path: &Path, e: Error) -> Failure {
    match &e {
        Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
            Failure::new(format!("{}: no such file or directory", path.display()))
        }
        Error::NotALog { .. } => Failure::new(format!(
            "{} (a log is a directory holding a META file; `backbone ls` finds them)",
            describe(&e)
        )),
        _ => Failure::from(e),
    }
}

/// Buffered stdout, with colour when it is a terminal.
pub(super) struct Out {
    inner: BufWriter<Stdout>,
    pub(super) style: Style,
}

impl Out {
    pub(super) fn stdout() -> Out {
        let stdout = io::stdout();
        let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
        Out {
            inner: BufWriter::new(stdout),
            style: Style { colour },
        }
    }

    pub(super) fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// ANSI styles, or nothing when stdout is not a terminal.
#[derive(Clone, Copy, Debug)]
pub(super) struct Style {
    colour: bool,
}

impl Style {
    fn paint(self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    pub(super) fn bold(self, text: &str) -> String {
        self.paint("1", text)
    }

    pub(super) fn dim(self, text: &str) -> String {
        self.paint("2", text)
    }

    pub(super) fn red(self, text: &str) -> String {
        self.paint("31", text)
    }

    pub(super) fn green(self, text: &str) -> String {
        self.paint("32", text)
    }

    pub(super) fn yellow(self, text: &str) -> String {
        self.paint("33", text)
    }
}

/// `bytes` as a human size: `512 B`, `4.0 KiB`, `64.0 MiB`.
pub(super) fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(super) fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(text, "{b:02x}");
    }
    text
}

/// Prints records for `dump` and `tail`.
pub(super) struct Printer<'a> {
    pub(super) meta: LogMeta,
    pub(super) registry: &'a Registry,
    pub(super) format: Format,
}

impl Printer<'_> {
    pub(super) fn print(&self, out: &mut Out, record: &RawRecord) -> io::Result<()> {
        let value = || self.registry.decode(&self.meta, &record.payload);
        match self.format {
            Format::Text => {
                let payload = value().map_or_else(|| hex(&record.payload), |v| v.to_string());
                let (offset, time) = (record.offset.to_string(), record.timestamp.to_string());
                let style = out.style;
                writeln!(
                    out,
                    "{} {} {payload}",
                    style.bold(&offset),
                    style.dim(&time)
                )
            }
            Format::Json => {
                let mut line = serde_json::json!({
                    "offset": record.offset,
                    "timestamp": record.timestamp.to_string(),
                });
                match value() {
                    Some(v) => line["value"] = v,
                    None => line["hex"] = hex(&record.payload).into(),
                }
                if let Some(time) = record.source_time {
                    line["source_time"] = time.to_string().into();
                }
                writeln!(out, "{line}")
            }
            Format::Hex => writeln!(
                out,
                "{} {} {}",
                record.offset,
                record.timestamp,
                hex(&record.payload)
            ),
            Format::Raw => {
                out.write_all(&record.payload)?;
                out.write_all(b"\n")
            }
        }
    }
}

/// Parses a TIME argument: an RFC 3339 UTC time, a date, a span before
/// now (`90s`, `15m`, `2h`, `3d`) or `@MICROS`.
pub(super) fn parse_time(text: &str) -> Result<Timestamp, Failure> {
    parse_time_at(text, SystemTime::now()).ok_or_else(|| {
        Failure::new(format!(
            "cannot read {text:?} as a time: give an RFC 3339 UTC time \
             (2026-05-01T12:00:00Z), a date (2026-05-01), a span before now \
             (90s, 15m, 2h, 3d) or @MICROSECONDS"
        ))
    })
}

fn parse_time_at(text: &str, now: SystemTime) -> Option<Timestamp> {
    let text = text.trim();
    if let Some(micros) = text.strip_prefix('@') {
        return micros.parse().ok().map(Timestamp::from_micros);
    }
    if let Some(unit) = text.chars().last() {
        let count = &text[..text.len() - unit.len_utf8()];
        if !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit()) {
            let secs = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return None,
            };
            let ago = Duration::from_secs(count.parse::<u64>().ok()?.checked_mul(secs)?);
            return Some(Timestamp::from(now.checked_sub(ago)?));
        }
    }
    parse_rfc3339(text)
}

/// `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, as UTC.
fn parse_rfc3339(text: &str) -> Option<Timestamp> {
    let (date, time) = match text.split_once(['T', 't', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year: u64 = parts.next()?.parse().ok()?;
    let month: u64 = parts.next()?.parse().ok()?;
    let day: u64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let mut micros = days_from_civil(year, month, day)? * 86_400 * 1_000_000;
    if let Some(time) = time {
        let time = time.strip_suffix(['Z', 'z'])?;
        let (clock, fraction) = match time.split_once('.') {
            Some((clock, fraction)) => (clock, fraction),
            None => (time, ""),
        };
        let mut fields = clock.split(':');
        let hour: u64 = fields.next()?.parse().ok()?;
        let minute: u64 = fields.next()?.parse().ok()?;
        let second: u64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let fraction: u64 = format!("{fraction:0<6}")[..6].parse().ok()?;
        micros += (hour * 3600 + minute * 60 + second) * 1_000_000 + fraction;
    }
    Some(Timestamp::from_micros(micros))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`), for dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let y = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// A one-line chart of `values`, scaled to the largest.
pub(super) fn sparkline(values: &[f64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|&v| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        let at = |t: &str| parse_time_at(t, SystemTime::UNIX_EPOCH + Duration::from_secs(10_000));
        // Round trips through the timestamps' own display.
        let stamp = Timestamp::from_micros(1_777_000_123_456_789);
        assert_eq!(at(&stamp.to_string()), Some(stamp));
        assert_eq!(
            at("1970-01-02"),
            Some(Timestamp::from_micros(86_400_000_000))
        );
        assert_eq!(
            at("1970-01-01T00:00:01.5Z"),
            Some(Timestamp::from_micros(1_500_000))
        );
        assert_eq!(
            at("2000-03-01T00:00:00Z").unwrap().as_micros(),
            951_868_800_000_000
        );
        assert_eq!(at("90s"), Some(Timestamp::from_micros(9_910_000_000)));
        assert_eq!(at("2h"), Some(Timestamp::from_micros(2_800_000_000)));
        assert_eq!(at("@42"), Some(Timestamp::from_micros(42)));
        for bad in [
            "",
            "yesterday",
            "5w",
            "2026-13-01",
            "2026-01-01T25:00:00Z",
            "1d1",
            "1969-12-31",
        ] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes_and_sparklines_read_well() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(64 << 20), "64.0 MiB");
        assert_eq!(sparkline(&[0.0, 1.0, 2.0]), "▁▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
    }
}
