//! The data-lake sink: every record of a log as a line of JSON, in files
//! rolled by size that any tool can read, exactly once across crashes.
//!
//! A file holds the records from its first offset (its name) on. It is
//! written as `<first>.jsonl.tmp`, synced, renamed to `<first>.jsonl`, and
//! the directory synced, before the sink's consumer commits the offset
//! after its last record. So after a crash, a `.tmp` is discarded, and a
//! finished file at or past the committed position (renamed, not yet
//! committed) is removed: its records are written again, once.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use backbone::{Consumer, EventLog, Start};
use serde::Serialize;

/// One log's sink, at its consumer's committed position.
pub struct Sink<T> {
    log: EventLog<T>,
    consumer: Consumer<T>,
    dir: PathBuf,
    max_bytes: u64,
    /// The file being written: its first offset, the writer, bytes so far,
    /// and the offset after its last record.
    open: Option<(u64, BufWriter<File>, u64, u64)>,
}

/// A sink of any event type, for the lake's thread to step in turn.
pub trait Step {
    /// Writes what is new, finishing each file that reaches its size, and
    /// the last one too when `last`. Whether it wrote anything.
    fn step(&mut self, last: bool) -> std::io::Result<bool>;
    /// Files and records the sink has in the lake.
    fn files(&self) -> std::io::Result<(u64, u64)>;
}

#[derive(Serialize)]
struct Line<'a, T> {
    offset: u64,
    timestamp_micros: u64,
    event: &'a T,
}

impl<T> Sink<T>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    /// The sink of `log` into `<lake>/<name>/`, recovered: files its
    /// consumer did not commit are removed.
    pub fn open(
        log: &EventLog<T>,
        lake: &Path,
        name: &str,
        max_bytes: u64,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        let dir = lake.join(name);
        fs::create_dir_all(&dir)?;
        let consumer = log.consumer_with("lake", Start::Beginning)?;
        let committed = consumer.position();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let first = name
                .strip_suffix(".jsonl")
                .and_then(|n| n.parse::<u64>().ok());
            let uncommitted = match first {
                Some(first) => first >= committed,
                None => name.ends_with(".tmp"),
            };
            if uncommitted {
                fs::remove_file(&path)?;
            }
        }
        sync_dir(&dir)?;
        Ok(Sink {
            log: log.clone(),
            consumer,
            dir,
            max_bytes,
            open: None,
        })
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let Some((first, writer, _, next)) = self.open.take() else {
            return Ok(());
        };
        let file = writer.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let done = self.dir.join(format!("{first:020}.jsonl"));
        fs::rename(tmp_path(&self.dir, first), &done)?;
        sync_dir(&self.dir)?;
        self.consumer.commit(next).map_err(std::io::Error::other)
    }
}

impl<T> Step for Sink<T>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    fn step(&mut self, last: bool) -> std::io::Result<bool> {
        let from = self
            .open
            .as_ref()
            .map_or_else(|| self.consumer.position(), |open| open.3);
        let mut wrote = false;
        for record in self.log.read(Start::Offset(from)).take(4096) {
            let record = record.map_err(std::io::Error::other)?;
            if self.open.is_none() {
                let file = File::create(tmp_path(&self.dir, record.offset))?;
                self.open = Some((record.offset, BufWriter::new(file), 0, record.offset));
            }
            let (_, writer, bytes, next) = self.open.as_mut().expect("just opened");
            let line = serde_json::to_vec(&Line {
                offset: record.offset,
                timestamp_micros: record.timestamp.as_micros(),
                event: &record.value,
            })
            .map_err(std::io::Error::other)?;
            writer.write_all(&line)?;
            writer.write_all(b"\n")?;
            *bytes += line.len() as u64 + 1;
            *next = record.offset + 1;
            wrote = true;
            if *bytes >= self.max_bytes {
                self.finish()?;
            }
        }
        if last && !wrote {
            self.finish()?;
        }
        Ok(wrote)
    }

    fn files(&self) -> std::io::Result<(u64, u64)> {
        let (mut files, mut lines) = (0, 0);
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "jsonl") {
                files += 1;
                lines += fs::read(&path)?.iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
        Ok((files, lines))
    }
}

fn tmp_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.jsonl.tmp"))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
