//! A read-only, codec-agnostic view of a log on disk: what its `META` says,
//! its segments, its records as bytes, its consumers' positions, its
//! checkpoints and registered readers, and a verification of every byte. The `backbone` command-line tool is built on
//! it; so can any program that needs to look at a log without knowing (or
//! having) its event type.
//!
//! An [`Inspector`] opens the log read-only: it takes no lock, changes
//! nothing on disk (a damaged index is rebuilt in memory only), and works on
//! a log another process is writing, seeing that writer's records once
//! they are durable.
//!
//! ```
//! use backbone::inspect::Inspector;
//! use backbone::{EventLog, Start};
//! # let dir = tempfile::tempdir().unwrap();
//! let log: EventLog<String> = EventLog::open(dir.path())?;
//! log.append(&"hello".to_string())?;
//! log.consumer("audit")?.commit(1)?;
//!
//! let inspector = Inspector::open(dir.path())?;
//! assert_eq!(inspector.meta().codec, "postcard");
//! let frame = inspector.frames(Start::Beginning).next().unwrap()?;
//! assert_eq!((frame.offset, &frame.payload[1..]), (0, &b"hello"[..]));
//! assert_eq!(inspector.consumers()?[0].position, Some(1));
//! assert!(inspector.verify()?.is_clean());
//! # Ok::<(), backbone::Error>(())
//! ```

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{decode_checkpoint_body, FORMAT_VERSION};
use crate::options::Options;
use crate::record::{LogId, ReaderKind, SourcePosition, Start, Timestamp};
use crate::store::{RawCursor, Store};

/// Frames read per pin of the log's maps, at most: the first batch holds
/// one frame and each next one twice as many.
const BATCH: usize = 256;

/// A read-only view of one log directory. See the [module](self) docs.
#[derive(Debug)]
pub struct Inspector {
    store: Arc<Store>,
}

/// What a log's `META` file records.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogMeta {
    /// The on-disk format version of the segments this build writes.
    pub format_version: u32,
    /// The version of the `META` file itself (1 or 2).
    pub meta_version: u32,
    /// The log's random id (`None` in a version-1 `META`).
    pub log_id: Option<LogId>,
    /// The codec of the records' payloads (`postcard`, `bincode`, `json`,
    /// `raw`, or a custom codec's name).
    pub codec: String,
    /// The event type recorded, as `(name, version)`; `None` if none is.
    pub event_type: Option<(String, u32)>,
    /// The Rust type name of the events, as the writer spelled it.
    pub type_name: String,
}

/// One segment file.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentInfo {
    /// The segment's file.
    pub path: PathBuf,
    /// The offset of its first record.
    pub base_offset: u64,
    /// The offset after its last record.
    pub end_offset: u64,
    /// The file's size (segments are created at their full size).
    pub file_bytes: u64,
    /// The bytes up to the end of its last record.
    pub used_bytes: u64,
    /// Whether its durable watermark says the writer stopped there (the
    /// segment is sealed, or the log was closed); `None` if the watermark
    /// slot is damaged.
    pub closed: Option<bool>,
    /// Entries in its index.
    pub index_entries: u64,
    /// Its format version (1 or 2), which decides its frame layout.
    pub format_version: u32,
}

/// One record, as bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RawRecord {
    /// Its offset.
    pub offset: u64,
    /// When it was appended.
    pub timestamp: Timestamp,
    /// The encoded event, as the log's codec wrote it.
    pub payload: Vec<u8>,
    /// The event time of the input it was derived from, if its writer
    /// recorded one (format version 2).
    pub source_time: Option<Timestamp>,
    /// The base offset of the segment that holds it.
    pub segment: u64,
    /// The byte position of its frame in that segment's file.
    pub position: u64,
}

/// A consumer's stored position.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// Its name.
    pub name: String,
    /// Its file.
    pub path: PathBuf,
    /// The committed position (`None` if the file could not be read).
    pub position: Option<u64>,
    /// How many commits made it (`None` if the file could not be read).
    pub generation: Option<u64>,
    /// Why the file could not be read.
    pub problem: Option<String>,
}

/// The newest checkpoint of one name, stored by a hand-off in this log.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointInfo {
    /// The reader's name.
    pub name: String,
    /// Where it stands in its sources; empty if the body does not decode.
    pub positions: Vec<SourcePosition>,
    /// Its own state's size in bytes.
    pub state_bytes: usize,
}

/// A reader registered on this log (`{name}.reader`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderInfo {
    /// Its name.
    pub name: String,
    /// What kind of reader it is, which says what `location` names.
    pub kind: ReaderKind,
    /// Where its true position lives: the log holding its checkpoint, or
    /// for a mirror `nats://<servers>/<stream>/<subject>`.
    pub location: PathBuf,
    /// The advisory copy of its position; `None` if the file could not be
    /// read.
    pub position: Option<u64>,
}

/// What kind of state an [`Attached`] log keeps for its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum AttachedKind {
    /// A work group's own log, `{name}.group/` inside the source's
    /// directory; its position is also a consumer of the same name.
    Group,
    /// A `for_each` job's checkpoint log, `<source>.jobs/{name}/`.
    Job,
    /// A table's changelog, `<source>.tables/{name}/changelog/`.
    Table,
}

/// A log kept beside (or inside) this one for a work group, a `for_each`
/// job or a table reading it, found by [`Inspector::attached`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Attached {
    /// The group's, job's or table's name.
    pub name: String,
    /// What it is.
    pub kind: AttachedKind,
    /// The directory of the log that holds its state (for a table, its
    /// changelog).
    pub log: PathBuf,
}

/// One damaged place found by [`Inspector::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Damage {
    /// The damaged file.
    pub path: PathBuf,
    /// The byte position of the damage in it.
    pub position: u64,
    /// The offset of the record expected there, if one is.
    pub offset: Option<u64>,
    /// What is wrong.
    pub kind: CorruptionKind,
}

impl Damage {
    /// The damage an [`Error::Corrupt`] names; any other error as it is.
    fn from_error(error: Error) -> Result<Damage> {
        match error {
            Error::Corrupt {
                path,
                position,
                offset,
                kind,
            } => Ok(Damage {
                path,
                position,
                offset,
                kind,
            }),
            other => Err(other),
        }
    }
}

/// What [`Inspector::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Segments checked.
    pub segments: usize,
    /// Records whose length, offset and checksum checked out.
    pub records: u64,
    /// Every damaged place: at most one per segment file (a segment cannot
    /// be read past its first damaged record), plus each index entry that
    /// points at no such record.
    pub damage: Vec<Damage>,
}

impl VerifyReport {
    /// Whether nothing damaged was found.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }
}

impl Inspector {
    /// Opens the log in `dir` for inspection, whatever its codec and event
    /// type.
    ///
    /// # Errors
    ///
    /// [`Error::NotALog`] when `dir` holds no log; [`Error::UnsupportedVersion`]
    /// and [`Error::Corrupt`] when the log cannot be opened; [`Error::Io`].
    pub fn open(dir: impl AsRef<Path>) -> Result<Inspector> {
        let options = Options::new().read_only();
        options.validate()?;
        let store = Store::open(options, dir.as_ref(), None)?;
        Ok(Inspector { store })
    }

    /// The log's directory.
    pub fn path(&self) -> &Path {
        self.store.dir()
    }

    /// What the log's `META` records.
    pub fn meta(&self) -> LogMeta {
        let meta = self.store.meta();
        LogMeta {
            format_version: FORMAT_VERSION,
            meta_version: meta.version,
            log_id: meta.log_id.map(LogId),
            codec: meta.codec.clone(),
            event_type: (!meta.event.is_none())
                .then(|| (meta.event.name.clone(), meta.event.version)),
            type_name: meta.type_name.clone(),
        }
    }

    /// The first offset in the log.
    pub fn first_offset(&self) -> u64 {
        self.store.first_offset()
    }

    /// The offset after the last record written so far (a writer in
    /// another process may be adding more).
    ///
    /// # Errors
    ///
    /// What following the writer met: [`Error::Corrupt`], [`Error::Io`].
    pub fn next_offset(&self) -> Result<u64> {
        self.store.readable_end()
    }

    /// Every segment, oldest first.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] for a segment whose header is damaged;
    /// [`Error::Io`].
    pub fn segments(&self) -> Result<Vec<SegmentInfo>> {
        self.store.readable_end()?;
        let pin = self.store.pin()?;
        let mut segments = Vec::new();
        for base in self.store.segment_bases() {
            let Some(segment) = self.store.segment_for(&pin, base)? else {
                continue;
            };
            segments.push(SegmentInfo {
                path: segment.path.clone(),
                base_offset: segment.base,
                end_offset: segment.next(),
                file_bytes: segment.capacity(),
                used_bytes: segment.limit(),
                closed: segment.watermark().map(|w| w.closed),
                index_entries: segment.index.count(),
                format_version: segment.layout().version(),
            });
        }
        Ok(segments)
    }

    /// The records from `start` to the end the log has now, as bytes.
    pub fn frames(&self, start: Start) -> Frames<'_> {
        Frames {
            store: &self.store,
            raw: RawCursor::new(&self.store, start),
            batch: VecDeque::new(),
            batch_len: 1,
            ended: false,
        }
    }

    /// Every consumer of the log and its stored position, by name.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the directory cannot be listed. A consumer file that
    /// cannot be read is listed with its [`problem`](ConsumerInfo::problem).
    pub fn consumers(&self) -> Result<Vec<ConsumerInfo>> {
        Ok(self
            .store
            .registers()?
            .into_iter()
            .map(|entry| {
                let (slot, problem) = match entry.slot {
                    Ok(slot) => (Some(slot), None),
                    Err(problem) => (None, Some(problem.to_string())),
                };
                ConsumerInfo {
                    name: entry.name,
                    path: entry.path,
                    position: slot.map(|(position, _)| position),
                    generation: slot.map(|(_, generation)| generation),
                    problem,
                }
            })
            .collect())
    }

    /// The newest checkpoint of every name stored in this log, by name.
    ///
    /// # Errors
    ///
    /// [`Error::Io`]; [`Error::Corrupt`] from the newest segment.
    pub fn checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        Ok(self
            .store
            .follower_checkpoints()?
            .into_iter()
            .map(|(name, body)| {
                let (positions, state) = decode_checkpoint_body(&body).unwrap_or_default();
                CheckpointInfo {
                    name,
                    positions,
                    state_bytes: state.len(),
                }
            })
            .collect())
    }

    /// The readers registered on this log, by name.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the directory cannot be listed.
    pub fn readers(&self) -> Result<Vec<ReaderInfo>> {
        Ok(self
            .store
            .reader_entries()?
            .into_iter()
            .map(|entry| ReaderInfo {
                name: entry.name,
                kind: crate::format::reader_kind(entry.kind),
                location: entry.location.into(),
                position: entry.position,
            })
            .collect())
    }

    /// The newest checkpoint named `name` stored in this log, if any (see
    /// [`checkpoints`](Inspector::checkpoints)).
    ///
    /// # Errors
    ///
    /// As [`checkpoints`](Inspector::checkpoints).
    pub fn checkpoint(&self, name: &str) -> Result<Option<CheckpointInfo>> {
        Ok(self.checkpoints()?.into_iter().find(|c| c.name == name))
    }

    /// The true position of `reader`, a reader registered on this log
    /// ([`readers`](Inspector::readers)): the next offset of this log that
    /// its checkpoint, in the log at its
    /// [`location`](ReaderInfo::location), records for this log's id.
    /// `None` when that log, the checkpoint or a position for this log is
    /// missing (the advisory [`position`](ReaderInfo::position) is then
    /// all there is), or this log records no id (a version-1 `META`).
    ///
    /// # Errors
    ///
    /// What opening the reader's log and reading its checkpoints met,
    /// other than its absence ([`Error::NotALog`]).
    pub fn reader_position(&self, reader: &ReaderInfo) -> Result<Option<u64>> {
        let Some(own) = self.meta().log_id else {
            return Ok(None);
        };
        let holder = match Inspector::open(&reader.location) {
            Ok(holder) => holder,
            Err(Error::NotALog { .. }) => return Ok(None),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let Some(checkpoint) = holder.checkpoint(&reader.name)? else {
            return Ok(None);
        };
        Ok(checkpoint.positions.iter().find_map(|p| match p {
            SourcePosition::Log { log_id, offset } if *log_id == own => Some(*offset),
            _ => None,
        }))
    }

    /// The logs that work groups, `for_each` jobs and tables reading this
    /// log keep for themselves: `{name}.group/` inside its directory,
    /// `<dir>.jobs/{name}/` and `<dir>.tables/{name}/changelog/` beside
    /// it. Sorted by kind, then name. Jobs that write an output log keep
    /// their checkpoints there, and are found among the
    /// [`readers`](Inspector::readers) instead.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if a directory that exists cannot be listed.
    pub fn attached(&self) -> Result<Vec<Attached>> {
        let dir = self.path();
        let mut found = Vec::new();
        for (name, path) in subdirectories(dir)? {
            if let Some(group) = name.strip_suffix(".group") {
                found.push(Attached {
                    name: group.to_owned(),
                    kind: AttachedKind::Group,
                    log: path,
                });
            }
        }
        let sibling = |suffix: &str| {
            let mut name = dir.file_name().unwrap_or_default().to_owned();
            name.push(suffix);
            dir.with_file_name(name)
        };
        for (name, path) in subdirectories(&sibling(".jobs"))? {
            found.push(Attached {
                name,
                kind: AttachedKind::Job,
                log: path,
            });
        }
        for (name, path) in subdirectories(&sibling(".tables"))? {
            found.push(Attached {
                name,
                kind: AttachedKind::Table,
                log: path.join("changelog"),
            });
        }
        found.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        Ok(found)
    }

    /// Reads every record of every segment (lengths, offsets, checksums,
    /// and that each segment ends where the next begins) and checks every
    /// index entry against the record it points at. Damage in one segment
    /// does not stop the check of the others.
    ///
    /// # Errors
    ///
    /// Only for what stops the check itself: [`Error::Io`], or a segment
    /// that cannot be opened at all (its damaged header is reported as
    /// [`Error::Corrupt`]).
    pub fn verify(&self) -> Result<VerifyReport> {
        self.verify_with(|_, _| {})
    }

    /// As [`verify`](Inspector::verify), calling `progress(checked, total)`
    /// after each segment is checked: for a progress display.
    ///
    /// # Errors
    ///
    /// As [`verify`](Inspector::verify).
    pub fn verify_with(&self, mut progress: impl FnMut(usize, usize)) -> Result<VerifyReport> {
        self.store.readable_end()?;
        let pin = self.store.pin()?;
        let mut report = VerifyReport::default();
        let bases = self.store.segment_bases();
        let total = bases.len();
        for (done, base) in bases.into_iter().enumerate() {
            if done > 0 {
                progress(done, total);
            }
            let segment = match self.store.segment_for(&pin, base) {
                Ok(Some(segment)) => segment,
                Ok(None) => continue,
                Err(e) => {
                    report.segments += 1;
                    report.damage.push(Damage::from_error(e)?);
                    continue;
                }
            };
            report.segments += 1;
            match segment.verify() {
                Ok(records) => report.records += records,
                Err(e) => {
                    let damage = Damage::from_error(e)?;
                    report.records += damage.offset.map_or(0, |o| o.saturating_sub(base));
                    report.damage.push(damage);
                }
            }
            for entry in segment.bad_index_entries() {
                report.damage.push(Damage {
                    path: segment.index_path.clone(),
                    position: crate::format::index_entry_at(entry),
                    offset: None,
                    kind: CorruptionKind::IndexEntry { entry },
                });
            }
        }
        progress(total, total);
        Ok(report)
    }
}

/// The subdirectories of `dir` by name, sorted; none if `dir` does not
/// exist.
fn subdirectories(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if let Some(name) = entry.file_name().to_str() {
                found.push((name.to_owned(), entry.path()));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// The records of a log as bytes, from [`Inspector::frames`].
///
/// Damaged bytes end the iteration with [`Error::Corrupt`] naming the file
/// and position.
#[derive(Debug)]
pub struct Frames<'a> {
    store: &'a Store,
    raw: RawCursor,
    batch: VecDeque<Result<RawRecord>>,
    /// How many frames the next batch reads.
    batch_len: usize,
    ended: bool,
}

impl Frames<'_> {
    fn fill(&mut self) {
        let pin = match self.store.pin() {
            Ok(pin) => pin,
            Err(e) => {
                self.ended = true;
                self.batch.push_back(Err(e));
                return;
            }
        };
        let len = self.batch_len;
        self.batch_len = (len * 2).min(BATCH);
        for _ in 0..len {
            let read = self.raw.next_frame(self.store, &pin, |frame| RawRecord {
                offset: frame.offset,
                timestamp: Timestamp::from_micros(frame.timestamp),
                payload: frame.payload.to_vec(),
                source_time: frame.source_time.map(Timestamp::from_micros),
                segment: 0,
                position: frame.len as u64,
            });
            match read {
                Some(Ok(mut record)) => {
                    // The cursor now stands after the frame it read.
                    let (segment, after) = self.raw.place().expect("a frame was just read");
                    record.segment = segment;
                    record.position = after - record.position;
                    self.batch.push_back(Ok(record));
                }
                Some(Err(e)) => {
                    self.batch.push_back(Err(e));
                    self.ended = true;
                    break;
                }
                None => {
                    self.ended = true;
                    break;
                }
            }
        }
        self.raw.unpin();
    }
}

impl Iterator for Frames<'_> {
    type Item = Result<RawRecord>;

    fn next(&mut self) -> Option<Result<RawRecord>> {
        if self.batch.is_empty() && !self.ended {
            self.fill();
        }
        self.batch.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Meta;

    /// A log written through the store, as the typed API would with the
    /// `Raw` codec.
    fn raw_log(dir: &Path) -> Arc<Store> {
        let options = Options::new()
            .segment_bytes(4096)
            .max_record_bytes(512)
            .index_interval_bytes(256);
        let meta = Meta {
            version: crate::format::META_VERSION,
            log_id: None,
            checksum: crate::format::CHECKSUM_CRC32,
            codec: "raw".into(),
            event: crate::format::EventType::none(),
            type_name: "Vec<u8>".into(),
        };
        Store::open(options, dir, Some(&meta)).unwrap()
    }

    /// A raw log of 300 records of 40 bytes: several segments.
    fn raw_log_of_300(dir: &Path) -> Arc<Store> {
        let log = raw_log(dir);
        append(
            &log,
            &(0..300u32).map(|i| vec![i as u8; 40]).collect::<Vec<_>>(),
        );
        log
    }

    fn append(log: &Store, payloads: &[Vec<u8>]) {
        log.append(payloads.len(), None, None, None, |i, out| {
            out.extend_from_slice(&payloads[i]);
            Ok(())
        })
        .unwrap();
    }

    #[test]
    fn it_sees_segments_frames_and_consumers_of_any_codec() {
        let dir = tempfile::tempdir().unwrap();
        let log = raw_log(dir.path());
        let payloads: Vec<Vec<u8>> = (0..200u32).map(|i| vec![i as u8; 40]).collect();
        append(&log, &payloads);
        log.open_register("shipping", crate::Start::Beginning)
            .unwrap()
            .commit(&log, 120, false)
            .unwrap();
        // Open while the writer holds the log: inspection takes no lock.
        let inspector = Inspector::open(dir.path()).unwrap();
        assert_eq!(inspector.meta().codec, "raw");
        assert_eq!(inspector.meta().format_version, FORMAT_VERSION);
        assert_eq!(inspector.next_offset().unwrap(), 200);
        let segments = inspector.segments().unwrap();
        assert!(segments.len() > 2, "{segments:?}");
        assert_eq!(segments[0].base_offset, 0);
        for pair in segments.windows(2) {
            assert_eq!(pair[0].end_offset, pair[1].base_offset);
            assert_eq!(pair[0].closed, Some(true), "sealed: {:?}", pair[0]);
        }
        assert_eq!(segments.last().unwrap().end_offset, 200);
        let frames: Vec<RawRecord> = inspector
            .frames(Start::Offset(10))
            .collect::<Result<_>>()
            .unwrap();
        assert_eq!(frames.len(), 190);
        for frame in &frames {
            assert_eq!(frame.payload, payloads[frame.offset as usize]);
            // The position names the frame's bytes in its segment file.
            let file = &segments
                .iter()
                .find(|s| s.base_offset == frame.segment)
                .unwrap()
                .path;
            let bytes = std::fs::read(file).unwrap();
            let at = frame.position as usize;
            assert_eq!(&bytes[at + 8..at + 16], &frame.offset.to_le_bytes());
        }
        let consumers = inspector.consumers().unwrap();
        assert_eq!(consumers.len(), 1);
        assert_eq!(
            (consumers[0].name.as_str(), consumers[0].position),
            ("shipping", Some(120))
        );
        let report = inspector.verify().unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.records, 200);
        assert_eq!(report.segments, segments.len());
        // Nothing was written by inspecting.
        drop(inspector);
        append(&log, &[vec![1]]);
        assert_eq!(log.next_offset(), 201);
    }

    #[test]
    fn verify_reports_every_damaged_segment_and_index_entry() {
        let dir = tempfile::tempdir().unwrap();
        let log = raw_log_of_300(dir.path());
        log.close(drop).unwrap();
        let segments = Inspector::open(dir.path()).unwrap().segments().unwrap();
        assert!(segments.len() >= 3);
        // A flipped payload byte in the first and the second segment, and
        // an index entry of the first pointing one byte off.
        let mut damaged = Vec::new();
        for segment in &segments[..2] {
            let mut bytes = std::fs::read(&segment.path).unwrap();
            let at = 64 + 24 + 5;
            bytes[at] ^= 0xff;
            std::fs::write(&segment.path, &bytes).unwrap();
            damaged.push(segment.path.clone());
        }
        let index = segments[0].path.with_extension("idx");
        let mut bytes = std::fs::read(&index).unwrap();
        let entry = 2;
        let at = crate::format::index_entry_at(entry) as usize + 4;
        let pos = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&(pos + 1).to_le_bytes());
        std::fs::write(&index, &bytes).unwrap();

        let report = Inspector::open(dir.path()).unwrap().verify().unwrap();
        assert_eq!(report.segments, segments.len());
        let found: Vec<(PathBuf, u64, CorruptionKind)> = report
            .damage
            .iter()
            .map(|d| (d.path.clone(), d.position, d.kind.clone()))
            .collect();
        assert_eq!(found.len(), 3, "{found:?}");
        for path in &damaged {
            assert!(
                found.iter().any(|(p, pos, kind)| p == path
                    && *pos == 64
                    && matches!(kind, CorruptionKind::Checksum { .. })),
                "{} not reported: {found:?}",
                path.display()
            );
        }
        assert!(found.contains(&(
            index,
            crate::format::index_entry_at(entry),
            CorruptionKind::IndexEntry { entry }
        )));
    }

    #[test]
    fn verify_with_reports_progress_per_segment() {
        let dir = tempfile::tempdir().unwrap();
        let _log = raw_log_of_300(dir.path());
        let inspector = Inspector::open(dir.path()).unwrap();
        let segments = inspector.segments().unwrap().len();
        let mut seen = Vec::new();
        let report = inspector
            .verify_with(|done, total| seen.push((done, total)))
            .unwrap();
        assert!(report.is_clean());
        let expected: Vec<(usize, usize)> = (1..=segments).map(|d| (d, segments)).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_directory_that_is_not_a_log_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Inspector::open(dir.path()),
            Err(Error::NotALog { .. })
        ));
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        assert!(matches!(
            Inspector::open(dir.path()),
            Err(Error::NotALog { .. })
        ));
        assert!(Inspector::open(dir.path().join("missing")).is_err());
    }
}
