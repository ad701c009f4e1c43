//! What opening a log does: take the lock, recognise (or refuse) the
//! directory, tidy what a crash left behind, and bring the newest segment
//! back to its longest intact prefix. The result is reported in a
//! [`RecoveryReport`].
//!
//! Opening is O(1) in the size of the log: sealed segments are only listed
//! (their records are checked when read), and the newest one is scanned
//! from its durable watermark, the position up to which it was known to be
//! on stable storage. Anything past the watermark that fails validation is
//! the torn tail of an unfinished write, never acknowledged as durable: it
//! is cut off (its bytes kept in a `.damaged` file when they were not all
//! zeros) and reported. With [`RecoveryMode::TruncateAtFirstCorruption`] the
//! whole log is scanned instead and cut at the first damaged record.

use std::path::{Path, PathBuf};

use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    self, decode_meta, decode_watermark, encode_meta, IndexEntry, Meta, MetaError, Watermark,
    FORMAT_VERSION, INDEX_HEADER_LEN, SEGMENT_HEADER_LEN, WATERMARK_AT,
};
use crate::index::{self, Index};
use crate::options::{Options, RecoveryMode};
use crate::segment::{self, check_header, scan, IndexBuilder, Segment, SegmentConfig};
use crate::storage::{DirEntry, DirLock, OpenMode, Storage};

const HEADER: u64 = SEGMENT_HEADER_LEN as u64;
/// How far past the end of a closed segment recovery looks for stray bytes.
const CLOSED_PROBE: usize = 4096;

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
}

impl RecoveryReport {
    /// Whether opening found nothing to repair.
    pub fn is_clean(&self) -> bool {
        self.truncated_segment.is_none()
            && self.removed_files.is_empty()
            && self.rebuilt_indexes.is_empty()
    }
}

/// The state recovery hands to the engine.
pub(crate) struct Recovered {
    pub(crate) lock: Option<DirLock>,
    /// Sealed segments, oldest first: base offset and file length.
    pub(crate) sealed: Vec<(u64, u64)>,
    pub(crate) active: Segment,
    pub(crate) tail: Tail,
    pub(crate) report: RecoveryReport,
}

/// Where the writer resumes in the active segment.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tail {
    pub(crate) pos: u64,
    pub(crate) next: u64,
    pub(crate) last_ts: u64,
    pub(crate) index_count: u64,
    pub(crate) index_last_pos: Option<u64>,
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
            || name.ends_with(".damaged")
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
/// engine around the result.
pub(crate) fn recover(options: &Options, dir: &Path, meta: &Meta) -> Result<Recovered> {
    let storage = &options.storage;
    let read_only = options.read_only;
    let config = segment_config(options);
    let mut report = RecoveryReport::default();

    let entries = match storage.list(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !read_only => {
            storage
                .create_dir_all(dir, options.file_mode)
                .map_err(|e| Error::io("create directory", dir, e))?;
            Vec::new()
        }
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    // Refuse a directory that is not ours before creating anything in it.
    let listing = classify(entries);
    check_meta(storage, dir, &listing, meta, options)?;
    let lock = if read_only {
        None
    } else {
        let path = dir.join(format::LOCK_FILE);
        match storage
            .try_lock(&path, options.file_mode)
            .map_err(|e| Error::io("lock", &path, e))?
        {
            Some(lock) => Some(lock),
            None => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                })
            }
        }
    };
    // List again under the lock: another writer may have changed the
    // directory between the first listing and taking the lock.
    let mut listing = if read_only {
        listing
    } else {
        let entries = storage.list(dir).map_err(|e| Error::io("list", dir, e))?;
        classify(entries)
    };
    check_meta(storage, dir, &listing, meta, options)?;
    // (A read-only open of a directory without META was refused above.)
    if !listing.meta {
        write_meta(storage, dir, meta, options.file_mode)?;
    }
    if !read_only {
        for name in std::mem::take(&mut listing.temporaries) {
            remove(storage, &dir.join(name), &mut report)?;
        }
        let bases: Vec<u64> = listing.segments.iter().map(|s| s.0).collect();
        for base in std::mem::take(&mut listing.indexes) {
            if bases.binary_search(&base).is_err() {
                remove(storage, &dir.join(format::index_name(base)), &mut report)?;
            }
        }
    }

    let mut segments = listing.segments;
    let scan_all = options.recovery == RecoveryMode::TruncateAtFirstCorruption && !read_only;
    // Where a new first segment starts if no segment is left.
    let mut fresh_base = 0;
    if scan_all {
        if let Some(cut) =
            cut_at_first_damaged_sealed(storage, dir, &mut segments, &config, &mut report)?
        {
            fresh_base = cut;
        }
    }

    // The newest segment: drop unfinished creates, then recover its tail.
    loop {
        let Some(&(base, len)) = segments.last() else {
            if read_only {
                return Err(Error::NotALog {
                    path: dir.to_path_buf(),
                    reason: "it has no segment files",
                });
            }
            let active = Segment::create(
                storage,
                dir,
                fresh_base,
                options.segment_bytes,
                0,
                &config,
                None,
            )?;
            storage
                .sync_dir(dir)
                .map_err(|e| Error::io("fsync directory", dir, e))?;
            return Ok(Recovered {
                lock,
                sealed: Vec::new(),
                active,
                tail: Tail {
                    pos: HEADER,
                    next: fresh_base,
                    last_ts: 0,
                    index_count: 0,
                    index_last_pos: None,
                },
                report,
            });
        };
        let path = dir.join(format::segment_name(base));
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let complete = len >= HEADER && {
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
            break;
        }
        // A segment whose create never finished: it cannot hold an
        // acknowledged record (the header is synced before the first one).
        segments.pop();
        if read_only {
            continue;
        }
        remove_segment(storage, dir, base, &mut report)?;
        // Recreated at the same base, so no offset is ever reused.
        fresh_base = base;
    }

    let (base, len) = *segments.last().expect("loop breaks with a segment");
    let sealed = segments[..segments.len() - 1].to_vec();
    let (active, tail) = recover_active(
        storage,
        dir,
        base,
        len,
        scan_all,
        options,
        &config,
        &mut report,
    )?;
    if !read_only {
        // Always: the newest segment's directory entry may never have been
        // synced (a roll that failed after creating it), and records
        // acknowledged from now on must not vanish with it.
        storage
            .sync_dir(dir)
            .map_err(|e| Error::io("fsync directory", dir, e))?;
    }
    Ok(Recovered {
        lock,
        sealed,
        active,
        tail,
        report,
    })
}

pub(crate) fn segment_config(options: &Options) -> SegmentConfig {
    SegmentConfig {
        max_payload: options.record_limit(),
        index_interval: options.index_interval_bytes,
        file_mode: options.file_mode,
    }
}

fn check_meta(
    storage: &Storage,
    dir: &Path,
    listing: &Listing,
    meta: &Meta,
    options: &Options,
) -> Result<()> {
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
        return Ok(());
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
                supported: FORMAT_VERSION,
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
    if found.codec != meta.codec {
        return Err(Error::CodecMismatch {
            path: dir.to_path_buf(),
            expected: meta.codec.clone(),
            found: found.codec,
        });
    }
    Ok(())
}

/// Writes `META` atomically: a temporary file, synced, renamed into place,
/// and the directory synced.
fn write_meta(storage: &Storage, dir: &Path, meta: &Meta, mode: u32) -> Result<()> {
    let path = dir.join(format::META_FILE);
    let tmp = dir.join(format!("{}.{}", format::META_FILE, format::TMP_EXT));
    write_atomically(storage, dir, &path, &tmp, &encode_meta(meta), mode)
}

pub(crate) fn write_atomically(
    storage: &Storage,
    dir: &Path,
    path: &Path,
    tmp: &Path,
    bytes: &[u8],
    mode: u32,
) -> Result<()> {
    remove_if_exists(storage, tmp)?;
    let file = storage
        .open(tmp, OpenMode::CreateNew, mode)
        .map_err(|e| Error::io("create", tmp, e))?;
    file.write_at(bytes, 0)
        .map_err(|e| Error::io("write", tmp, e))?;
    file.sync_data()
        .map_err(|e| Error::io("fdatasync", tmp, e))?;
    storage
        .rename(tmp, path)
        .map_err(|e| Error::io("rename", tmp, e))?;
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

fn remove(storage: &Storage, path: &Path, report: &mut RecoveryReport) -> Result<()> {
    remove_if_exists(storage, path)?;
    report.removed_files.push(path.to_path_buf());
    Ok(())
}

pub(crate) fn remove_if_exists(storage: &Storage, path: &Path) -> Result<bool> {
    match storage.remove(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io("remove", path, e)),
    }
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
            let copy = dir.join(format!("{base:020}.0.damaged"));
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

/// Brings the newest segment to its longest intact prefix and opens it for
/// appending (or following, when read-only).
#[allow(clippy::too_many_arguments)]
fn recover_active(
    storage: &Storage,
    dir: &Path,
    base: u64,
    len: u64,
    scan_all: bool,
    options: &Options,
    config: &SegmentConfig,
    report: &mut RecoveryReport,
) -> Result<(Segment, Tail)> {
    let read_only = options.read_only;
    let path = dir.join(format::segment_name(base));
    let io = |op: &'static str| {
        let path = path.clone();
        move |e| Error::io(op, path, e)
    };
    let mode = if read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::Existing
    };
    let file = storage
        .open(&path, mode, options.file_mode)
        .map_err(io("open"))?;
    let capacity = if read_only {
        len
    } else {
        let capacity = len.max(options.segment_bytes);
        if capacity > len {
            file.set_len(capacity).map_err(io("preallocate"))?;
        }
        capacity
    };
    let map = file.map(capacity).map_err(io("map"))?;
    let bytes = map.bytes();
    check_header(&bytes, &path, base)?;

    // Scan from the durable watermark: everything before it was synced.
    let watermark = decode_watermark(&bytes)
        .filter(|w| w.pos >= HEADER && w.pos <= capacity && w.next >= base && !scan_all);
    let (start_pos, start_next, start_ts) = match watermark {
        Some(w) => (w.pos, w.next, Some(w.last_ts)),
        None => (HEADER, base, None),
    };

    // Index entries before the scan start are kept (each is validated when
    // used); entries for the scanned records are regenerated.
    let index_path = dir.join(format::index_name(base));
    let index_len = index::file_len_for(capacity, options.index_interval_bytes);
    let mut kept = match existing_entries(storage, &index_path, base, start_pos, mode, options) {
        Some(entries) => entries,
        // Missing or damaged: rebuild the entries before the scan start
        // (the scan below adds the rest).
        None => {
            report.rebuilt_indexes.push(index_path.clone());
            segment::rebuild_entries(&bytes[..start_pos as usize], base, config)
        }
    };
    // A watermark is written by this crate after the data before it was
    // synced, so it must agree with the frames: walking them from the last
    // index entry (or the first record) must land exactly on it. One that
    // does not is damage (or a misdirected write), not a crash.
    let reached = match &watermark {
        Some(w) => frames_reach(&bytes, &kept, base, w, config.max_payload),
        None => Ok(()),
    };
    let (start_pos, start_next, start_ts) = match reached {
        Ok(()) => (start_pos, start_next, start_ts),
        Err((position, offset, kind)) => {
            if options.recovery == RecoveryMode::Strict {
                // The walk trusts length and offset fields; to name the
                // first damaged record, check the CRCs up to where it
                // stopped (damage the scan finds lies before that point).
                let limit = (position as usize).min(bytes.len());
                let first = scan(&bytes[..limit], HEADER, base, config.max_payload, |_, _| {});
                let (position, offset, kind) = match first.damage {
                    Some(damage) => (first.pos, first.next, damage),
                    None => (position, offset, kind),
                };
                return Err(Error::Corrupt {
                    path,
                    position,
                    offset: Some(offset),
                    kind,
                });
            }
            kept.clear();
            (HEADER, base, None)
        }
    };
    let mut builder = IndexBuilder::new(
        options.index_interval_bytes,
        kept.last().map(|e| u64::from(e.pos)),
    );
    let end = scan(
        &bytes,
        start_pos,
        start_next,
        config.max_payload,
        |pos, frame| {
            if let Some(entry) = builder.observe(base, pos, frame.offset, frame.timestamp) {
                kept.push(entry);
            }
        },
    );
    report.scanned_bytes = end.pos - start_pos;
    let last_ts = end.last_ts.or(start_ts).unwrap_or(0);

    if read_only {
        bytes.release();
        // A follower never writes; it keeps the index it checked in memory.
        let index = Index::memory(&kept);
        let segment = Segment::from_recovered(
            dir,
            base,
            file,
            map,
            (end.pos, end.next),
            index,
            config.max_payload,
        );
        let tail = Tail {
            pos: end.pos,
            next: end.next,
            last_ts,
            index_count: kept.len() as u64,
            index_last_pos: kept.last().map(|e| u64::from(e.pos)),
        };
        return Ok((segment, tail));
    }

    // Anything after the end is an unfinished write (or, when scanning the
    // whole segment on request, damage): keep a copy if it holds data, then
    // cut it so a later crash cannot bring stale frames back into sequence.
    // After a close or a seal nothing was written past the watermark, so a
    // look at the next page is enough to catch damage there. After a crash,
    // what the writer had issued may lie anywhere past the end, behind
    // zeros (a page that never reached the disk, or media damage among
    // records written after the last watermark), so the whole rest of the
    // segment is searched.
    let closed = watermark.is_some_and(|w| w.closed && w.pos == end.pos);
    let rest = &bytes[end.pos as usize..];
    let last = if closed && !rest[..rest.len().min(CLOSED_PROBE)].iter().any(|&b| b != 0) {
        None
    } else {
        last_nonzero(rest)
    };
    // (Damage where the scan stopped means non-zero bytes there, so a cut
    // that names damage always has bytes to save.)
    if let Some(last) = last {
        report.truncated_segment = Some(path.clone());
        report.truncated_at = Some(end.pos);
        report.truncated_bytes = last as u64 + 1;
        report.damage = end.damage.clone();
        // Nothing is cut before its copy is durable: if the copy cannot be
        // saved (a full disk), opening fails and the segment stays as it
        // is, to be opened again once there is room.
        let copy = dir.join(format!("{base:020}.{}.damaged", end.pos));
        let cut = &rest[..=last];
        remove_if_exists(storage, &copy)?;
        storage
            .open(&copy, OpenMode::CreateNew, options.file_mode)
            .and_then(|f| f.write_at(cut, 0).and_then(|()| f.sync_data()))
            .map_err(|e| Error::io("save the cut tail to", &copy, e))?;
        report.damaged_copy = Some(copy);
    }
    // The records scanned past the old watermark are read from the page
    // cache, which after a failed fdatasync may hold pages the kernel will
    // never write ("fsyncgate"). Writing them again makes them dirty, so
    // the sync below really puts them on disk before the new watermark
    // claims them.
    let rescanned = bytes[start_pos as usize..end.pos as usize].to_vec();
    // The same goes for the header of a segment whose create was not
    // synced (a roll whose sync failed): it is written again too.
    let header = bytes[..WATERMARK_AT].to_vec();
    bytes.release();
    drop(map);
    file.write_at(&header, 0)
        .map_err(io("rewrite the header of"))?;
    if !rescanned.is_empty() {
        file.write_at(&rescanned, start_pos)
            .map_err(io("rewrite the tail of"))?;
    }
    // Zero the tail unconditionally: after a crash the bytes past the end
    // may hold a later part of a torn write that starts with zeros.
    file.set_len(end.pos).map_err(io("truncate"))?;
    file.set_len(capacity).map_err(io("preallocate"))?;
    // Only once the cut is durable may new records be acknowledged after
    // it, and only then may the watermark claim the records before it: if
    // this sync fails, the old watermark still stands and the next open
    // scans (and rewrites) the tail again.
    file.sync_data().map_err(io("fdatasync"))?;
    let mark = Watermark {
        pos: end.pos,
        next: end.next,
        last_ts,
        closed: false,
    };
    file.write_at(&format::encode_watermark(&mark), WATERMARK_AT as u64)
        .map_err(io("write header of"))?;
    file.sync_data().map_err(io("fdatasync"))?;
    let map = file.map(capacity).map_err(io("map"))?;

    let index = rewrite_index(storage, &index_path, base, &kept, index_len, options)
        .map_err(|e| Error::io("write index", &index_path, e))?;
    let segment = Segment::from_recovered(
        dir,
        base,
        file,
        map,
        (end.pos, end.next),
        index,
        config.max_payload,
    );
    let tail = Tail {
        pos: end.pos,
        next: end.next,
        last_ts,
        index_count: kept.len() as u64,
        index_last_pos: kept.last().map(|e| u64::from(e.pos)),
    };
    Ok((segment, tail))
}

/// The plausible index entries for records before `limit`; `None` if the
/// index file is missing or its header is damaged.
fn existing_entries(
    storage: &Storage,
    path: &Path,
    base: u64,
    limit: u64,
    mode: OpenMode,
    options: &Options,
) -> Option<Vec<IndexEntry>> {
    let file = storage.open(path, mode, options.file_mode).ok()?;
    let map = file.map(file.len().ok()?).ok()?;
    let bytes = map.bytes();
    if !format::index_header_ok(&bytes, base) {
        return None;
    }
    let body = &bytes[INDEX_HEADER_LEN..];
    let count = index::valid_prefix(body, limit) as usize;
    Some(
        body.chunks_exact(format::INDEX_ENTRY_LEN)
            .take(count)
            .filter_map(format::decode_index_entry)
            .collect(),
    )
}

/// Checks that the frames of a segment lead exactly to the watermark
/// `mark`: a walk of length and offset fields from the last index entry
/// (or, if that entry is stale, from the first record) must reach
/// `mark.pos` with the next offset `mark.next`. Otherwise, where the walk
/// from the first record went wrong: position, offset expected, damage.
fn frames_reach(
    bytes: &[u8],
    entries: &[IndexEntry],
    base: u64,
    mark: &Watermark,
    max_payload: u32,
) -> std::result::Result<(), (u64, u64, CorruptionKind)> {
    let walk = |mut pos: u64, mut at: u64| -> std::result::Result<(), (u64, u64, CorruptionKind)> {
        loop {
            if pos == mark.pos && at == mark.next {
                return Ok(());
            }
            if pos >= mark.pos {
                return Err((pos, at, CorruptionKind::BadHeader));
            }
            let len = format::read_u32(bytes, pos as usize).unwrap_or(0);
            let found = format::read_u64(bytes, pos as usize + 8);
            let kind = if len == 0 {
                CorruptionKind::Zeroed
            } else if len < 16 || len - 16 > max_payload {
                CorruptionKind::Length { len }
            } else if found != Some(at) {
                CorruptionKind::OffsetMismatch {
                    expected: at,
                    found: found.unwrap_or(0),
                }
            } else {
                pos += 8 + u64::from(len);
                at += 1;
                continue;
            };
            return Err((pos, at, kind));
        }
    };
    if let Some(e) = entries.last() {
        if walk(u64::from(e.pos), base + u64::from(e.rel_offset)).is_ok() {
            return Ok(());
        }
    }
    walk(HEADER, base)
}

/// The index of the last byte of `bytes` that is not zero. Whole blocks
/// are tested with a branch-free fold the compiler vectorizes, because
/// after a crash this reads the rest of a segment that is mostly zeros.
fn last_nonzero(bytes: &[u8]) -> Option<usize> {
    let mut end = bytes.len();
    for block in bytes.rchunks(4096) {
        let start = end - block.len();
        if block.iter().fold(0, |acc, &b| acc | b) != 0 {
            return block.iter().rposition(|&b| b != 0).map(|i| start + i);
        }
        end = start;
    }
    None
}

/// Whether any byte after the header of a segment file is not zero. Read
/// rather than mapped: a follower may get here while the writer's recovery
/// truncates the same file, and a read past the end is an error, not a
/// fault.
fn holds_data(file: &crate::storage::File, len: u64) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; 1 << 16];
    let mut at = HEADER;
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

/// Writes the active segment's index afresh at its full size, so the writer
/// can add entries in place.
fn rewrite_index(
    storage: &Storage,
    path: &Path,
    base: u64,
    entries: &[IndexEntry],
    len: u64,
    options: &Options,
) -> std::io::Result<Index> {
    let index = segment::write_index(storage, path, base, entries, options.file_mode)?;
    drop(index);
    let file = storage.open(path, OpenMode::Existing, options.file_mode)?;
    let used = (INDEX_HEADER_LEN + entries.len() * format::INDEX_ENTRY_LEN) as u64;
    file.set_len(used.max(len))?;
    let map = file.map(used.max(len))?;
    Ok(Index::mapped(file, map, entries.len() as u64))
}

/// Follower mode: opens a segment another process has just created, if its
/// header is complete yet.
pub(crate) fn open_followed(
    options: &Options,
    dir: &Path,
    base: u64,
    len: u64,
) -> Result<Option<Segment>> {
    if len < HEADER {
        return Ok(None);
    }
    let path = dir.join(format::segment_name(base));
    let file = options
        .storage
        .open(&path, OpenMode::ReadOnly, options.file_mode)
        .map_err(|e| Error::io("open", &path, e))?;
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    file.read_at(&mut header, 0)
        .map_err(|e| Error::io("read", &path, e))?;
    if let Err(format::HeaderError::Incomplete) = format::decode_segment_header(&header) {
        return Ok(None);
    }
    let config = segment_config(options);
    let mut report = RecoveryReport::default();
    let (segment, _) = recover_active(
        &options.storage,
        dir,
        base,
        len,
        false,
        options,
        &config,
        &mut report,
    )?;
    Ok(Some(segment))
}
