//! What opening a log does: recognise (or refuse) the directory, take the
//! lock, tidy what a crash left behind, find the newest complete segment,
//! and hand it to tail recovery ([`super::tail`]). The result is reported in
//! a [`RecoveryReport`].
//!
//! Opening is O(1) in the size of the log: sealed segments are only listed
//! (their records are checked when read), and only the newest one is
//! scanned, from its durable watermark. With
//! [`RecoveryMode::TruncateAtFirstCorruption`] every sealed segment is
//! verified first and the log cut at the first damaged record.

use std::path::{Path, PathBuf};

use super::segment::{check_header, Segment, SegmentConfig};
use super::tail;
use super::writer::Tail;
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    self, decode_meta, encode_meta, Layout, Meta, MetaError, SegmentHeader, Watermark,
    RECORDS_START,
};
use crate::options::{Options, RecoveryMode};
use crate::storage::{
    remove_if_exists, write_atomically, DirEntry, DirLock, File, LockHolder, OpenMode, Storage,
};

/// What opening the log found and repaired.
///
/// A clean open after [`EventLog::close`](crate::EventLog::close) reports
/// nothing; after a crash it typically reports a cut torn tail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Bytes of the newest segment scanned to find its end.
    pub scanned_bytes: u64,
    /// The segment whose tail was cut, if any.
    pub truncated_segment: Option<PathBuf>,
    /// The byte position where it was cut.
    pub truncated_at: Option<u64>,
    /// How many non-zero bytes were cut off.
    pub truncated_bytes: u64,
    /// The damage found where the log was cut (`None` when the cut bytes
    /// were an unfinished write that left no frame at all).
    pub damage: Option<CorruptionKind>,
    /// Where the cut bytes were saved, for forensics.
    pub damaged_copy: Option<PathBuf>,
    /// Files removed: unfinished segment creates, orphaned indexes,
    /// temporary files, and with
    /// [`RecoveryMode::TruncateAtFirstCorruption`] the segments after the
    /// first damaged record.
    pub removed_files: Vec<PathBuf>,
    /// Indexes rebuilt from their segments because they were missing or
    /// damaged.
    pub rebuilt_indexes: Vec<PathBuf>,
    /// How the log was left: `true` when its last writer closed it, or
    /// dropped its last handle with every record durable (so nothing was
    /// written past its records); `false` after a crash, or a drop with
    /// records not yet durable (a `Buffered` log not synced, an `Interval`
    /// log before its sync), which recovery handles as a crash.
    pub closed_cleanly: bool,
    /// `META` was rewritten by this open: from the version given here (a
    /// version-1 log gets version 2 and a log id), or to record the event
    /// type (or the newer version of it) the log was opened with.
    pub meta_upgraded: Option<u32>,
    /// The newest segment was a version-1 segment: new records now go into
    /// a version-2 segment (it was sealed where its records end and the
    /// next one started; or, holding no record, rewritten as version 2).
    /// The log's older segments stay version 1 and are read as they are.
    pub segment_format_upgraded: bool,
}

impl RecoveryReport {
    /// Whether opening found nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.truncated_segment.is_none()
            && self.removed_files.is_empty()
            && self.rebuilt_indexes.is_empty()
    }
}

/// What opening hands to the store.
pub(crate) struct Opened {
    pub(crate) lock: Option<DirLock>,
    /// What `META` says (the one just written, for a new log).
    pub(crate) meta: Meta,
    /// Sealed segments, oldest first: base offset and file length.
    pub(crate) sealed: Vec<(u64, u64)>,
    pub(crate) active: Segment,
    pub(crate) tail: Tail,
    pub(crate) report: RecoveryReport,
}

/// What the directory holds, by kind.
#[derive(Default)]
struct Listing {
    meta: bool,
    segments: Vec<(u64, u64)>,
    indexes: Vec<u64>,
    temporaries: Vec<String>,
    /// Names this crate does not recognise.
    foreign: Vec<String>,
}

fn classify(entries: Vec<DirEntry>) -> Listing {
    let mut listing = Listing::default();
    for entry in entries {
        let Some(name) = entry.name.to_str() else {
            listing
                .foreign
                .push(entry.name.to_string_lossy().into_owned());
            continue;
        };
        if name == format::META_FILE {
            listing.meta = true;
        } else if name == format::LOCK_FILE
            || name.ends_with(format::CONSUMER_EXT)
            || name.ends_with(format::DAMAGED_EXT)
        {
            // Ours; consumers are opened on demand, damaged copies are kept
            // for the operator.
        } else if let Some(base) = format::parse_numbered_name(name, format::SEGMENT_EXT) {
            listing.segments.push((base, entry.len));
        } else if let Some(base) = format::parse_numbered_name(name, format::INDEX_EXT) {
            listing.indexes.push(base);
        } else if name.ends_with(&format!(".{}", format::TMP_EXT)) {
            listing.temporaries.push(name.to_owned());
        } else {
            listing.foreign.push(name.to_owned());
        }
    }
    listing.segments.sort_unstable();
    listing
}

/// Opens the directory as a log: the whole of opening but building the
/// store around the result. `meta` is what a new log's `META` says and what
/// an existing one's must match; `None` (read-only handles only) opens a
/// log of any codec.
pub(crate) fn open(options: &Options, dir: &Path, meta: Option<&Meta>) -> Result<Opened> {
    let storage = &options.storage;
    let config = SegmentConfig::of(options);
    let mut report = RecoveryReport::default();
    let (lock, listing, found) = take_directory(options, dir, meta)?;
    let meta = match (found, meta) {
        (Some(found), asked) => {
            let upgraded = upgrade_meta(&found, asked)?;
            match upgraded {
                Some(upgraded) if !options.read_only => {
                    write_meta(storage, dir, &upgraded, options.file_mode)?;
                    report.meta_upgraded = Some(found.version);
                    upgraded
                }
                _ => found,
            }
        }
        (None, Some(meta)) => {
            // (A read-only open of a directory without META was refused.)
            let meta = Meta {
                log_id: Some(new_log_id(dir)?),
                ..meta.clone()
            };
            write_meta(storage, dir, &meta, options.file_mode)?;
            meta
        }
        (None, None) => {
            return Err(Error::NotALog {
                path: dir.join(format::META_FILE),
                reason: "there is no META file",
            })
        }
    };
    let opened = |sealed, (active, tail), report| Opened {
        lock,
        meta,
        sealed,
        active,
        tail,
        report,
    };
    let mut segments = listing.segments;
    if !options.read_only {
        tidy(
            storage,
            dir,
            listing.temporaries,
            &listing.indexes,
            &segments,
            &mut report,
        )?;
    }
    let scan_all =
        options.recovery == RecoveryMode::TruncateAtFirstCorruption && !options.read_only;
    // Where a new first segment starts if no segment is left.
    let mut fresh_base = 0;
    if scan_all {
        if let Some(cut) =
            cut_at_first_damaged_sealed(storage, dir, &mut segments, &config, &mut report)?
        {
            fresh_base = cut;
        }
    }
    let Some((base, len)) =
        drop_unfinished_creates(options, dir, &mut segments, &mut fresh_base, &mut report)?
    else {
        if options.read_only {
            return Err(Error::NotALog {
                path: dir.to_path_buf(),
                reason: "it has no segment files",
            });
        }
        let first = create_first(options, dir, fresh_base, &config)?;
        return Ok(opened(Vec::new(), first, report));
    };
    let mut sealed = segments[..segments.len() - 1].to_vec();
    let (mut active, mut tail) = tail::recover(
        storage,
        dir,
        base,
        len,
        scan_all,
        options,
        &config,
        &mut report,
    )?;
    if !options.read_only && active.layout() == Layout::V1 {
        (active, tail) = upgrade_active(options, dir, active, tail, &config, &mut sealed)?;
        report.segment_format_upgraded = true;
    }
    if !options.read_only {
        // Always: the newest segment's directory entry may never have been
        // synced (a roll that failed after creating it), and records
        // acknowledged from now on must not vanish with it.
        storage
            .sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(opened(sealed, (active, tail), report))
}

/// A writer appends version-2 frames only, and no segment mixes versions:
/// a recovered version-1 newest segment is sealed where its records end
/// (recovery synced them) and a version-2 segment starts at the next
/// offset, as a roll would. One that holds no record gets a version-2
/// header in place instead (two segments cannot share a base, and removing
/// it first could leave a log with no segment to say where offsets go on):
/// the 64-byte header is one sector, written and synced whole, and is then
/// opened again as any newest segment is.
fn upgrade_active(
    options: &Options,
    dir: &Path,
    active: Segment,
    tail: Tail,
    config: &SegmentConfig,
    sealed: &mut Vec<(u64, u64)>,
) -> Result<(Segment, Tail)> {
    let storage = &options.storage;
    if tail.next == active.base && tail.pos == RECORDS_START {
        let header = format::encode_segment_header(
            &SegmentHeader {
                base: active.base,
                layout: Layout::V2,
            },
            &Watermark {
                pos: RECORDS_START,
                next: tail.next,
                last_ts: tail.last_ts,
                closed: false,
            },
        );
        let path = active.path.clone();
        let io = |op| {
            let path = path.clone();
            move |e| Error::io(op, path, e)
        };
        active
            .file
            .write_at(&header, 0)
            .map_err(io("write header of"))?;
        active.file.sync_data().map_err(io("fdatasync"))?;
        let (base, len) = (active.base, active.capacity());
        drop(active);
        let mut report = RecoveryReport::default();
        return tail::recover(storage, dir, base, len, false, options, config, &mut report);
    }
    // Sealed as a roll seals: the closed mark at the end of its records
    // (recovery synced them, so the mark is true whenever it lands).
    let mark = Watermark {
        pos: tail.pos,
        next: tail.next,
        last_ts: tail.last_ts,
        closed: true,
    };
    active
        .file
        .write_at(
            &format::encode_watermark(&mark),
            format::WATERMARK_AT as u64,
        )
        .map_err(|e| Error::io("write header of", &active.path, e))?;
    sealed.push((active.base, active.capacity()));
    drop(active);
    let new = Segment::create(
        storage,
        dir,
        tail.next,
        options.segment_bytes,
        tail.last_ts,
        config,
        None,
        &[],
    )?;
    let tail = Tail {
        pos: RECORDS_START,
        next: tail.next,
        last_ts: tail.last_ts,
        index_count: 0,
        index_last_pos: None,
    };
    Ok((new, tail))
}

/// Starts a log with no segment left (a new one, or one whose only
/// segments were unfinished creates) with an empty segment at `base`.
fn create_first(
    options: &Options,
    dir: &Path,
    base: u64,
    config: &SegmentConfig,
) -> Result<(Segment, Tail)> {
    let storage = &options.storage;
    let active = Segment::create(
        storage,
        dir,
        base,
        options.segment_bytes,
        0,
        config,
        None,
        &[],
    )?;
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))?;
    let tail = Tail {
        pos: RECORDS_START,
        next: base,
        last_ts: 0,
        index_count: 0,
        index_last_pos: None,
    };
    Ok((active, tail))
}

/// Lists the directory (creating it for a writer), refuses one that is not
/// a log before creating anything in it, and takes the writer's lock.
/// Returns the lock, the listing taken under it, and what `META` says if
/// there is one.
fn take_directory(
    options: &Options,
    dir: &Path,
    meta: Option<&Meta>,
) -> Result<(Option<DirLock>, Listing, Option<Meta>)> {
    let storage = &options.storage;
    let entries = match storage.list(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !options.read_only => {
            storage
                .create_dir_all(dir, options.file_mode)
                .map_err(|e| Error::io("create directory", dir, e))?;
            Vec::new()
        }
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let listing = classify(entries);
    let found = check_meta(storage, dir, &listing, meta, options)?;
    if options.read_only {
        return Ok((None, listing, found));
    }
    let path = dir.join(format::LOCK_FILE);
    let lock = storage
        .try_lock(&path, options.file_mode)
        .map_err(|e| Error::io("lock", &path, e))?
        .map_err(|holder| Error::Locked {
            path: dir.to_path_buf(),
            in_this_process: holder == LockHolder::ThisProcess,
        })?;
    // List again under the lock: another writer may have changed the
    // directory between the first listing and taking the lock.
    let entries = storage.list(dir).map_err(|e| Error::io("list", dir, e))?;
    let listing = classify(entries);
    let found = check_meta(storage, dir, &listing, meta, options)?;
    Ok((Some(lock), listing, found))
}

/// Removes what a crash left behind: temporary files, and indexes whose
/// segment is gone.
fn tidy(
    storage: &Storage,
    dir: &Path,
    temporaries: Vec<String>,
    indexes: &[u64],
    segments: &[(u64, u64)],
    report: &mut RecoveryReport,
) -> Result<()> {
    for name in temporaries {
        remove(storage, &dir.join(name), report)?;
    }
    for &base in indexes {
        if segments.binary_search_by_key(&base, |s| s.0).is_err() {
            remove(storage, &dir.join(format::index_name(base)), report)?;
        }
    }
    Ok(())
}

/// Drops the newest segments whose create never finished (a missing, zeroed
/// or torn header in front of nothing but zeros: they cannot hold an
/// acknowledged record, since the header is synced before the first one),
/// and returns the newest complete segment, if any. A new first segment is
/// recreated at the base of the last one dropped, so no offset is reused.
fn drop_unfinished_creates(
    options: &Options,
    dir: &Path,
    segments: &mut Vec<(u64, u64)>,
    fresh_base: &mut u64,
    report: &mut RecoveryReport,
) -> Result<Option<(u64, u64)>> {
    let storage = &options.storage;
    while let Some(&(base, len)) = segments.last() {
        let path = dir.join(format::segment_name(base));
        let mut header = [0u8; format::SEGMENT_HEADER_LEN];
        let complete = len >= RECORDS_START && {
            let file = storage
                .open(&path, OpenMode::ReadOnly, options.file_mode)
                .map_err(|e| Error::io("open", &path, e))?;
            file.read_at(&mut header, 0)
                .map_err(|e| Error::io("read", &path, e))?;
            // A header that is missing, zeroed or torn (bad magic or CRC):
            // the create may not have finished.
            let torn = match format::decode_segment_header(&header) {
                Err(format::HeaderError::Incomplete) => Some(CorruptionKind::Zeroed),
                Err(format::HeaderError::Corrupt(
                    kind @ (CorruptionKind::BadMagic | CorruptionKind::HeaderChecksum),
                )) => Some(kind),
                _ => None,
            };
            if let Some(kind) = torn.clone() {
                if holds_data(&file, len).map_err(|e| Error::io("read", &path, e))? {
                    // The header is synced before any record is written, so
                    // a damaged header in front of records is damage, not
                    // an unfinished create.
                    return Err(Error::Corrupt {
                        path,
                        position: 0,
                        offset: None,
                        kind,
                    });
                }
            }
            torn.is_none()
        };
        if complete {
            check_header(&header, &path, base)?;
            return Ok(Some((base, len)));
        }
        segments.pop();
        if !options.read_only {
            remove_segment(storage, dir, base, report)?;
            *fresh_base = base;
        }
    }
    Ok(None)
}

/// Checks the directory's `META` (if it has one) against `meta`, or
/// accepts any codec when `meta` is `None`; returns what `META` says.
fn check_meta(
    storage: &Storage,
    dir: &Path,
    listing: &Listing,
    meta: Option<&Meta>,
    options: &Options,
) -> Result<Option<Meta>> {
    let path = dir.join(format::META_FILE);
    if !listing.meta {
        if !listing.segments.is_empty() || !listing.indexes.is_empty() {
            return Err(Error::NotALog {
                path,
                reason: "segment files without a META file",
            });
        }
        if !listing.foreign.is_empty() {
            return Err(Error::NotALog {
                path: dir.to_path_buf(),
                reason: "the directory holds other files and no META file",
            });
        }
        if options.read_only {
            return Err(Error::NotALog {
                path,
                reason: "there is no META file",
            });
        }
        return Ok(None);
    }
    let file = storage
        .open(&path, OpenMode::ReadOnly, options.file_mode)
        .map_err(|e| Error::io("open", &path, e))?;
    let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
    if len > 1 << 20 {
        return Err(Error::NotALog {
            path,
            reason: "its META file is too large",
        });
    }
    let mut bytes = vec![0; len as usize];
    file.read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read", &path, e))?;
    let found = match decode_meta(&bytes) {
        Ok(found) => found,
        Err(MetaError::Magic) => {
            return Err(Error::NotALog {
                path,
                reason: "its META file does not start with the backbone magic",
            })
        }
        Err(MetaError::Version(found)) => {
            return Err(Error::UnsupportedVersion {
                path,
                found,
                supported: format::META_VERSION,
            })
        }
        Err(MetaError::Damaged) => {
            return Err(Error::Corrupt {
                path,
                position: 0,
                offset: None,
                kind: CorruptionKind::HeaderChecksum,
            })
        }
    };
    if let Some(meta) = meta {
        if found.codec != meta.codec {
            return Err(Error::CodecMismatch {
                path: dir.to_path_buf(),
                expected: meta.codec.clone(),
                found: found.codec,
            });
        }
        // A log whose type was never recorded takes the asked one; an
        // older version of the same name is upgraded by the writer.
        let (asked, recorded) = (&meta.event, &found.event);
        if !asked.is_none()
            && !recorded.is_none()
            && (asked.name != recorded.name || asked.version < recorded.version)
        {
            return Err(Error::EventTypeMismatch {
                path: dir.to_path_buf(),
                expected: asked.to_string(),
                found: recorded.to_string(),
            });
        }
    }
    Ok(Some(found))
}

/// What a writer rewrites an existing log's `META` as, if anything: a
/// version-1 `META` becomes version 2 (with a new log id), and a log with
/// no recorded event type, or an older version of the asked one, records
/// the asked one.
fn upgrade_meta(found: &Meta, asked: Option<&Meta>) -> Result<Option<Meta>> {
    let mut upgraded = found.clone();
    upgraded.version = format::META_VERSION;
    if upgraded.log_id.is_none() {
        upgraded.log_id = Some(new_log_id(Path::new(""))?);
    }
    if let Some(asked) = asked {
        if !asked.event.is_none()
            && (found.event.is_none() || asked.event.version > found.event.version)
        {
            upgraded.event = asked.event.clone();
            upgraded.type_name = asked.type_name.clone();
        }
    }
    Ok((upgraded != *found).then_some(upgraded))
}

/// A random 128-bit log id, from the operating system's generator.
fn new_log_id(dir: &Path) -> Result<u128> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::io("read random bytes for", dir, std::io::Error::other(e)))?;
    Ok(u128::from_le_bytes(bytes))
}

/// Writes `META` atomically: a temporary file, synced, renamed into place,
/// and the directory synced.
fn write_meta(storage: &Storage, dir: &Path, meta: &Meta, mode: u32) -> Result<()> {
    let path = dir.join(format::META_FILE);
    let tmp = dir.join(format!("{}.{}", format::META_FILE, format::TMP_EXT));
    write_atomically(storage, dir, &path, &tmp, &encode_meta(meta), mode)
}

fn remove(storage: &Storage, path: &Path, report: &mut RecoveryReport) -> Result<()> {
    remove_if_exists(storage, path)?;
    report.removed_files.push(path.to_path_buf());
    Ok(())
}

/// [`RecoveryMode::TruncateAtFirstCorruption`]: verifies every sealed
/// segment; at the first damaged one, removes all later segments (newest
/// first, so a crash midway leaves no gap) so that it becomes the newest
/// and is cut by the tail recovery, which then scans it whole. A segment
/// whose header is damaged is damaged from its first byte: it goes too,
/// renamed to `{base}.0.damaged` for forensics, and the one before it
/// becomes the newest. Returns the base a new first segment takes when
/// no segment is left.
fn cut_at_first_damaged_sealed(
    storage: &Storage,
    dir: &Path,
    segments: &mut Vec<(u64, u64)>,
    config: &SegmentConfig,
    report: &mut RecoveryReport,
) -> Result<Option<u64>> {
    for i in 0..segments.len().saturating_sub(1) {
        let (base, _) = segments[i];
        let expected_end = segments[i + 1].0;
        // Opening a sealed segment checks its header (its index is
        // rebuilt if damaged), so damage found here is in the header.
        let (intact, header_damaged) =
            match Segment::open_sealed(storage, dir, base, expected_end, true, config) {
                Ok((segment, _)) => (segment.verify().is_ok(), false),
                Err(e) if e.is_corruption() => (false, true),
                Err(e) => return Err(e),
            };
        if intact {
            continue;
        }
        for &(later, _) in segments[i + 1..].iter().rev() {
            remove_segment(storage, dir, later, report)?;
        }
        segments.truncate(i + 1);
        let mut fresh_base = None;
        if header_damaged {
            let path = dir.join(format::segment_name(base));
            let copy = dir.join(format::damaged_name(base, 0));
            storage
                .rename(&path, &copy)
                .map_err(|e| Error::io("rename", &path, e))?;
            report.removed_files.push(path.clone());
            report.truncated_segment = Some(path);
            report.truncated_at = Some(0);
            report.damaged_copy = Some(copy);
            remove_index(storage, dir, base, report)?;
            segments.truncate(i);
            fresh_base = Some(base);
        }
        storage
            .sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
        return Ok(fresh_base);
    }
    Ok(None)
}

/// Removes a segment and then its index, if it has one.
fn remove_segment(
    storage: &Storage,
    dir: &Path,
    base: u64,
    report: &mut RecoveryReport,
) -> Result<()> {
    remove(storage, &dir.join(format::segment_name(base)), report)?;
    remove_index(storage, dir, base, report)
}

/// Removes a segment's index if there is one, and reports it.
fn remove_index(
    storage: &Storage,
    dir: &Path,
    base: u64,
    report: &mut RecoveryReport,
) -> Result<()> {
    let index_path = dir.join(format::index_name(base));
    if remove_if_exists(storage, &index_path)? {
        report.removed_files.push(index_path);
    }
    Ok(())
}

/// Whether any byte after the header of a segment file is not zero. Read
/// rather than mapped: a follower may get here while the writer's recovery
/// truncates the same file, and a read past the end is an error, not a
/// fault.
fn holds_data(file: &File, len: u64) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; 1 << 16];
    let mut at = RECORDS_START;
    while at < len {
        let n = chunk.len().min((len - at) as usize);
        file.read_at(&mut chunk[..n], at)?;
        if chunk[..n].iter().any(|&b| b != 0) {
            return Ok(true);
        }
        at += n as u64;
    }
    Ok(false)
}
