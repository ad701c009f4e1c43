//! Tail recovery: bringing the newest segment back to its longest intact
//! prefix when a log is opened, and opening a segment a follower meets.
//!
//! It is two parts. [`plan`] is pure: given the segment's bytes, its durable
//! watermark and the index entries found on disk, it works out where the
//! intact records end, which index entries hold, and what must be cut and
//! reported; it touches no file, so it can be tested exhaustively. [`apply`]
//! then does what the plan says, in the order the durability protocol needs:
//! save a copy of the cut bytes, rewrite what was only read from the page
//! cache, cut, sync, and only then move the watermark.
//!
//! The newest segment is scanned from its durable watermark, the position up
//! to which it was known to be on stable storage. Anything past the
//! watermark that fails validation is the torn tail of an unfinished write,
//! never acknowledged as durable: it is cut off (its bytes kept in a
//! `.damaged` file when they were not all zeros) and reported. With
//! [`RecoveryMode::TruncateAtFirstCorruption`] the whole segment is scanned
//! instead and cut at its first damaged record.

use std::path::Path;

use super::index::{self, Index, IndexBuilder};
use super::open::RecoveryReport;
use super::segment::{self, scan, Heads, Segment, SegmentConfig};
use super::writer::Tail;
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    self, decode_watermark, BatchTracker, FrameKind, IndexEntry, Layout, Watermark,
    INDEX_HEADER_LEN, RECORDS_START, WATERMARK_AT,
};
use crate::options::{Options, RecoveryMode};
use crate::storage::{remove_if_exists, File, Map, OpenMode, Storage};

/// What recovery of one newest segment found, before anything is changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Where the scan of unverified records started (the watermark, or the
    /// first record).
    pub(crate) scan_from: u64,
    /// Where the intact records end, and the offset after them.
    pub(crate) end_pos: u64,
    pub(crate) next: u64,
    /// The timestamp of the last record (0 if none is known).
    pub(crate) last_ts: u64,
    /// The damage the scan stopped at, if it was not a clean end.
    pub(crate) damage: Option<CorruptionKind>,
    /// The index entries of the intact records.
    pub(crate) entries: Vec<IndexEntry>,
    /// The index on disk was missing or damaged and was rebuilt.
    pub(crate) index_rebuilt: bool,
    /// Bytes past `end_pos` that are not zero: `end_pos + cut_len` is the
    /// end of what must be saved before it is cut.
    pub(crate) cut_len: Option<u64>,
    /// The writer closed the segment cleanly (a closed watermark that the
    /// records end exactly at): everything in it was synced, so nothing
    /// past the records needs rewriting.
    pub(crate) closed: bool,
}

/// The block size below which holes are assumed: a file system allocates
/// at least this much at a time.
const BLOCK: u64 = 4096;

/// Works out where the intact records of a newest segment end: after the
/// last whole frame, and before a checkpoint's batch that the frames end
/// inside (a torn write: cut whole).
///
/// `bytes` is the whole segment (frames of `layout`), `existing` the index entries found on disk
/// (`None` if the index is missing or damaged), `allocated` the bytes the
/// file system has allocated to the file, if known. Errors only in
/// [`RecoveryMode::Strict`], when the durable part before the watermark
/// does not check out: that is damage, not a crash.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    bytes: &[u8],
    base: u64,
    layout: Layout,
    existing: Option<Vec<IndexEntry>>,
    allocated: Option<u64>,
    scan_all: bool,
    options: &Options,
    config: &SegmentConfig,
) -> std::result::Result<Plan, (u64, u64, CorruptionKind)> {
    let index_rebuilt = existing.is_none();
    let Start {
        watermark,
        pos: start_pos,
        next: start_next,
        last_ts: start_ts,
        mut kept,
    } = scan_start(bytes, base, layout, existing, scan_all, options, config)?;
    let mut builder = IndexBuilder::new(
        options.index_interval_bytes,
        kept.last().map(|e| u64::from(e.pos)),
    );
    let end = scan(
        bytes,
        start_pos,
        start_next,
        config.max_payload,
        layout,
        |pos, frame| {
            if !frame.is_record() {
                return;
            }
            if let Some(entry) = builder.observe(base, pos, frame.offset, frame.timestamp) {
                kept.push(entry);
            }
        },
    )
    .whole();
    // (A batch never straddles the watermark: the writer syncs whole
    // writes, and a batch is one write.)
    kept.retain(|e| u64::from(e.pos) < end.pos);
    // Anything after the end is an unfinished write (or, when scanning the
    // whole segment on request, damage). After a crash, what the writer had
    // issued may lie anywhere past the end, behind zeros (a page that never
    // reached the disk, or media damage among records written after the
    // last watermark); after a clean close nothing should, but media damage
    // may have put bytes there since. Either way every non-zero byte is
    // saved and reported before it is cut, so the whole rest of the segment
    // is searched (5 to 10 ms for 64 MiB of zeros) unless the file system
    // says it holds no data there: after a clean close, a sparse file whose
    // allocated bytes do not reach past the block after the records has
    // only holes beyond it, which read as zeros. (Damage where the scan
    // stopped means non-zero bytes there, so a cut that names damage always
    // has bytes to save.)
    let closed = watermark.is_some_and(|w| w.closed && w.pos == end.pos);
    let holes_from = (end.pos.div_ceil(BLOCK) + 1) * BLOCK;
    let rest = match allocated {
        Some(allocated) if closed && allocated <= holes_from => {
            &bytes[end.pos as usize..(holes_from as usize).min(bytes.len())]
        }
        _ => &bytes[end.pos as usize..],
    };
    let last = last_nonzero(rest);
    Ok(Plan {
        scan_from: start_pos,
        end_pos: end.pos,
        next: end.next,
        last_ts: end.last_ts.or(start_ts).unwrap_or(0),
        damage: end.damage,
        entries: kept,
        index_rebuilt,
        cut_len: last.map(|last| last as u64 + 1),
        closed,
    })
}

/// Where the scan of a newest segment starts, and the index entries kept
/// before it.
struct Start {
    /// The durable watermark, if it is intact and trusted.
    watermark: Option<Watermark>,
    pos: u64,
    next: u64,
    last_ts: Option<u64>,
    kept: Vec<IndexEntry>,
}

/// Scans start from the durable watermark: everything before it was synced.
/// Index entries before it are kept (each is validated when used); entries
/// for the scanned records are regenerated.
fn scan_start(
    bytes: &[u8],
    base: u64,
    layout: Layout,
    existing: Option<Vec<IndexEntry>>,
    scan_all: bool,
    options: &Options,
    config: &SegmentConfig,
) -> std::result::Result<Start, (u64, u64, CorruptionKind)> {
    let capacity = bytes.len() as u64;
    let watermark = decode_watermark(bytes)
        .filter(|w| w.pos >= RECORDS_START && w.pos <= capacity && w.next >= base && !scan_all);
    // A scan from the first record regenerates every index entry.
    let from_first = || Start {
        watermark: None,
        pos: RECORDS_START,
        next: base,
        last_ts: None,
        kept: Vec::new(),
    };
    let Some(w) = watermark else {
        return Ok(from_first());
    };
    let kept: Vec<IndexEntry> = match existing {
        Some(entries) => entries
            .into_iter()
            .filter(|e| u64::from(e.pos) < w.pos)
            .collect(),
        None => segment::rebuild_entries(&bytes[..w.pos as usize], base, layout, config),
    };
    // A watermark is written by this crate after the data before it was
    // synced, so it must agree with the frames: walking them from the last
    // index entry (or the first record) must land exactly on it. One that
    // does not is damage (or a misdirected write), not a crash.
    match frames_reach(bytes, &kept, base, &w, config.max_payload, layout) {
        Ok(()) => Ok(Start {
            watermark: Some(w),
            pos: w.pos,
            next: w.next,
            last_ts: Some(w.last_ts),
            kept,
        }),
        Err((position, offset, kind)) if options.recovery == RecoveryMode::Strict => {
            // The walk trusts length and offset fields; to name the first
            // damaged record, check the CRCs up to where it stopped (damage
            // the scan finds lies before that point).
            let limit = (position as usize).min(bytes.len());
            let first = scan(
                &bytes[..limit],
                RECORDS_START,
                base,
                config.max_payload,
                layout,
                |_, _| {},
            );
            Err(match first.damage {
                Some(damage) => (first.pos, first.next, damage),
                None => (position, offset, kind),
            })
        }
        Err(_) => Ok(from_first()),
    }
}

/// Brings the newest segment at `base` (a file of `len` bytes) to its
/// longest intact prefix and opens it for appending, or, read-only, for
/// following.
#[allow(clippy::too_many_arguments)]
pub(crate) fn recover(
    storage: &Storage,
    dir: &Path,
    base: u64,
    len: u64,
    scan_all: bool,
    options: &Options,
    config: &SegmentConfig,
    report: &mut RecoveryReport,
) -> Result<(Segment, Tail)> {
    let path = dir.join(format::segment_name(base));
    let io = |op: &'static str| {
        let path = path.clone();
        move |e| Error::io(op, path, e)
    };
    let mode = if options.read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::Existing
    };
    let file = storage
        .open(&path, mode, options.file_mode)
        .map_err(io("open"))?;
    let capacity = if options.read_only {
        len
    } else {
        let capacity = len.max(options.segment_bytes);
        if capacity > len {
            file.set_len(capacity).map_err(io("preallocate"))?;
        }
        capacity
    };
    let map = file.map(capacity).map_err(io("map"))?;
    let index_path = dir.join(format::index_name(base));
    let (layout, plan) = {
        let bytes = map.bytes();
        let layout = segment::check_header(&bytes, &path, base)?.layout;
        let existing = existing_entries(storage, &index_path, base, capacity, mode, options);
        let allocated = file.allocated_len();
        let plan = plan(
            &bytes, base, layout, existing, allocated, scan_all, options, config,
        )
        .map_err(|(position, offset, kind)| Error::Corrupt {
            path: path.clone(),
            position,
            offset: Some(offset),
            kind,
        })?;
        (layout, plan)
    };
    if plan.index_rebuilt {
        report.rebuilt_indexes.push(index_path.clone());
    }
    report.scanned_bytes = plan.end_pos - plan.scan_from;
    report.closed_cleanly = plan.closed;
    let tail = Tail {
        pos: plan.end_pos,
        next: plan.next,
        last_ts: plan.last_ts,
        index_count: plan.entries.len() as u64,
        index_last_pos: plan.entries.last().map(|e| u64::from(e.pos)),
    };
    let end = (plan.end_pos, plan.next);
    if options.read_only {
        // A follower never writes; it keeps the index it checked in memory.
        let index = Index::memory(&plan.entries);
        let segment =
            Segment::from_recovered(dir, base, file, map, end, index, config.max_payload, layout);
        return Ok((segment, tail));
    }
    settle(
        storage, dir, base, &file, map, &plan, capacity, options, report,
    )?;
    let map = file.map(capacity).map_err(io("map"))?;
    let index_len = index::file_len_for(capacity, options.index_interval_bytes);
    let index = rewrite_index(
        storage,
        &index_path,
        base,
        &plan.entries,
        index_len,
        options,
    )
    .map_err(|e| Error::io("write index", &index_path, e))?;
    let segment =
        Segment::from_recovered(dir, base, file, map, end, index, config.max_payload, layout);
    Ok((segment, tail))
}

/// Does what `plan` says to the newest segment's file, whose `map` it
/// drops before anything shrinks the file: saves the bytes to cut, then
/// rewrites and cuts the tail (or, after a clean close with nothing to
/// cut, only clears the closed mark).
#[allow(clippy::too_many_arguments)]
fn settle(
    storage: &Storage,
    dir: &Path,
    base: u64,
    file: &File,
    map: Map,
    plan: &Plan,
    capacity: u64,
    options: &Options,
    report: &mut RecoveryReport,
) -> Result<()> {
    let path = dir.join(format::segment_name(base));
    let bytes = map.bytes();
    // The records scanned past the old watermark are read from the page
    // cache, which after a failed fdatasync may hold pages the kernel will
    // never write ("fsyncgate"): they are written again below. So is the
    // header of a segment whose create was not synced (a roll whose sync
    // failed).
    let rescanned = bytes[plan.scan_from as usize..plan.end_pos as usize].to_vec();
    let header = bytes[..WATERMARK_AT].to_vec();
    if let Some(cut_len) = plan.cut_len {
        let at = plan.end_pos as usize;
        let cut = &bytes[at..at + cut_len as usize];
        save_cut(storage, dir, base, plan, cut, options, report)?;
    }
    bytes.release();
    drop(map);
    if plan.closed && plan.cut_len.is_none() {
        // A clean close synced everything, and nothing lies past the
        // records: only the closed mark is cleared (durably, before any
        // append can put a record past it).
        reopen_closed(file, &path, plan)
    } else {
        apply(file, &path, &header, &rescanned, plan, capacity)
    }
}

/// Keeps the bytes about to be cut in `{base}.{position}.damaged`, durably,
/// and reports the cut. Nothing is cut before its copy is durable: if the
/// copy cannot be saved (a full disk), opening fails and the segment stays
/// as it is, to be opened again once there is room.
fn save_cut(
    storage: &Storage,
    dir: &Path,
    base: u64,
    plan: &Plan,
    cut: &[u8],
    options: &Options,
    report: &mut RecoveryReport,
) -> Result<()> {
    report.truncated_segment = Some(dir.join(format::segment_name(base)));
    report.truncated_at = Some(plan.end_pos);
    report.truncated_bytes = cut.len() as u64;
    report.damage = plan.damage.clone();
    let copy = dir.join(format::damaged_name(base, plan.end_pos));
    remove_if_exists(storage, &copy)?;
    storage
        .open(&copy, OpenMode::CreateNew, options.file_mode)
        .and_then(|f| f.write_at(cut, 0).and_then(|()| f.sync_data()))
        .map_err(|e| Error::io("save the cut tail to", &copy, e))?;
    report.damaged_copy = Some(copy);
    Ok(())
}

/// The effectful half of tail recovery: rewrites what was read from the
/// page cache (`header`, and the `rescanned` records from the plan's scan
/// start), zeroes everything past the end, syncs, and only then writes the
/// new watermark and syncs it.
fn apply(
    file: &File,
    path: &Path,
    header: &[u8],
    rescanned: &[u8],
    plan: &Plan,
    capacity: u64,
) -> Result<()> {
    let io = |op: &'static str| move |e| Error::io(op, path, e);
    file.write_at(header, 0)
        .map_err(io("rewrite the header of"))?;
    if !rescanned.is_empty() {
        file.write_at(rescanned, plan.scan_from)
            .map_err(io("rewrite the tail of"))?;
    }
    // Zero the tail unconditionally: after a crash the bytes past the end
    // may hold a later part of a torn write that starts with zeros.
    file.set_len(plan.end_pos).map_err(io("truncate"))?;
    file.set_len(capacity).map_err(io("preallocate"))?;
    // Only once the cut is durable may new records be acknowledged after
    // it, and only then may the watermark claim the records before it: if
    // this sync fails, the old watermark still stands and the next open
    // scans (and rewrites) the tail again.
    file.sync_data().map_err(io("fdatasync"))?;
    reopen_closed(file, path, plan)
}

/// Writes the plan's end as the durable watermark, not closed, and syncs it.
fn reopen_closed(file: &File, path: &Path, plan: &Plan) -> Result<()> {
    let io = |op: &'static str| move |e| Error::io(op, path, e);
    let mark = Watermark {
        pos: plan.end_pos,
        next: plan.next,
        last_ts: plan.last_ts,
        closed: false,
    };
    file.write_at(&format::encode_watermark(&mark), WATERMARK_AT as u64)
        .map_err(io("write header of"))?;
    file.sync_data().map_err(io("fdatasync"))
}

/// The plausible index entries for records of a segment of `limit` bytes;
/// `None` if the index file is missing or its header is damaged.
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
/// `mark.pos` with the next offset `mark.next`, keeping the batch rule
/// over the checkpoint batches it passes, and not inside one: the writer
/// writes a watermark only between batches. (A walk from an index entry
/// cannot see a batch that began before the entry; one from the first
/// record sees them all.) Otherwise, where the walk from the first record
/// went wrong: position, offset expected, damage.
fn frames_reach(
    bytes: &[u8],
    entries: &[IndexEntry],
    base: u64,
    mark: &Watermark,
    max_payload: u32,
    layout: Layout,
) -> std::result::Result<(), (u64, u64, CorruptionKind)> {
    let walk = |start: (u64, u64)| {
        let mut heads = Heads::new(bytes, start, max_payload, layout);
        // The batch the frames walked so far end inside, while known: a
        // damaged checkpoint (left for reads to report) makes it unknown
        // until the next batch begins.
        let mut batches = Some(BatchTracker::default());
        loop {
            let (pos, at) = (heads.pos, heads.at);
            if pos == mark.pos && at == mark.next {
                // A watermark is written between batches, never inside one.
                return match batches.and_then(|b| b.open()) {
                    Some(open) => Err((open.pos, open.next, open.torn())),
                    None => Ok(()),
                };
            }
            if pos >= mark.pos {
                return Err((pos, at, CorruptionKind::BadHeader));
            }
            let kind = heads.step().map_err(|kind| (pos, at, kind))?;
            batches = match kind {
                FrameKind::Record => batches.and_then(|mut b| b.record().ok().map(|()| b)),
                FrameKind::Control => {
                    let frame = &bytes[pos as usize..];
                    let mut tracker = batches.unwrap_or_default();
                    match format::decode_frame(frame, max_payload, layout) {
                        format::Scan::Frame(f) => tracker
                            .control(f.payload, pos, at, None)
                            .ok()
                            .map(|()| tracker),
                        _ => None,
                    }
                }
            };
        }
    };
    if let Some(e) = entries.last() {
        if walk((u64::from(e.pos), base + u64::from(e.rel_offset))).is_ok() {
            return Ok(());
        }
    }
    walk((RECORDS_START, base))
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
    if len < RECORDS_START {
        return Ok(None);
    }
    let path = dir.join(format::segment_name(base));
    let file = options
        .storage
        .open(&path, OpenMode::ReadOnly, options.file_mode)
        .map_err(|e| Error::io("open", &path, e))?;
    let mut header = [0u8; format::SEGMENT_HEADER_LEN];
    file.read_at(&mut header, 0)
        .map_err(|e| Error::io("read", &path, e))?;
    if let Err(format::HeaderError::Incomplete) = format::decode_segment_header(&header) {
        return Ok(None);
    }
    let config = SegmentConfig::of(options);
    let mut report = RecoveryReport::default();
    let (segment, _) = recover(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(base: u64, n: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORDS_START as usize];
        for i in 0..n {
            let kind = format::FrameKind::Record;
            let payload = [i as u8; 10];
            format::encode_frame(&mut bytes, L, base + i, 1_000 + i, kind, None, &payload);
        }
        bytes
    }

    const L: Layout = Layout::V2;

    fn config() -> SegmentConfig {
        SegmentConfig::of(&Options::new())
    }

    /// Three records in a 64 KiB segment closed after them: the bytes, the
    /// end of the records, and the closed watermark.
    fn closed_segment() -> (Vec<u8>, u64, Watermark) {
        let mut bytes = frames(0, 3);
        let end = bytes.len() as u64;
        bytes.resize(64 << 10, 0);
        let mark = Watermark {
            pos: end,
            next: 3,
            last_ts: 1_002,
            closed: true,
        };
        bytes[WATERMARK_AT..WATERMARK_AT + format::WATERMARK_LEN]
            .copy_from_slice(&format::encode_watermark(&mark));
        (bytes, end, mark)
    }

    #[test]
    fn a_clean_tail_needs_no_cut() {
        let mut bytes = frames(0, 5);
        let end = bytes.len() as u64;
        bytes.resize(8192, 0);
        let plan = plan(&bytes, 0, L, None, None, false, &Options::new(), &config()).unwrap();
        assert_eq!((plan.end_pos, plan.next, plan.last_ts), (end, 5, 1_004));
        assert_eq!(plan.cut_len, None);
        assert!(plan.index_rebuilt);
        assert_eq!(
            plan.entries.first().map(|e| e.pos),
            Some(RECORDS_START as u32)
        );
    }

    #[test]
    fn bytes_far_past_a_torn_end_are_all_cut() {
        let mut bytes = frames(0, 3);
        let end = bytes.len();
        bytes.resize(64 << 10, 0);
        bytes[end + 2] = 7;
        bytes[60 << 10] = 9;
        let plan = plan(&bytes, 0, L, None, None, false, &Options::new(), &config()).unwrap();
        assert_eq!(plan.end_pos, end as u64);
        assert_eq!(plan.cut_len, Some((60 << 10) as u64 - end as u64 + 1));
        assert!(plan.damage.is_some());
    }

    #[test]
    fn stray_bytes_far_past_a_clean_close_are_found() {
        let (mut bytes, end, _) = closed_segment();
        bytes[60 << 10] = 9;
        let options = Options::new();
        let plan = plan(&bytes, 0, L, None, None, false, &options, &config()).unwrap();
        assert_eq!((plan.scan_from, plan.end_pos), (end, end));
        assert!(plan.closed);
        assert_eq!(plan.cut_len, Some((60 << 10) as u64 - end + 1));
        bytes[60 << 10] = 0;
        let plan = super::plan(&bytes, 0, L, None, None, false, &options, &config()).unwrap();
        assert_eq!((plan.closed, plan.cut_len), (true, None));
    }

    #[test]
    fn after_a_clean_close_holes_past_the_records_are_not_read() {
        let (mut bytes, end, mark) = closed_segment();
        // A byte in the block after the records is always read; one past it
        // only when the file system has data there.
        bytes[BLOCK as usize + 5] = 7;
        bytes[60 << 10] = 9;
        let options = Options::new();
        let sparse = Some(2 * BLOCK);
        let plan = plan(&bytes, 0, L, None, sparse, false, &options, &config()).unwrap();
        assert_eq!(plan.cut_len, Some(BLOCK + 5 - end + 1));
        let full = Some(64 << 10);
        let plan = super::plan(&bytes, 0, L, None, full, false, &options, &config()).unwrap();
        assert_eq!(plan.cut_len, Some((60 << 10) - end + 1));
        // Not closed: the allocation is no reason to look less far.
        bytes[WATERMARK_AT..WATERMARK_AT + format::WATERMARK_LEN].copy_from_slice(
            &format::encode_watermark(&Watermark {
                closed: false,
                ..mark
            }),
        );
        let plan = super::plan(&bytes, 0, L, None, sparse, false, &options, &config()).unwrap();
        assert_eq!(plan.cut_len, Some((60 << 10) - end + 1));
    }

    #[test]
    fn a_watermark_the_frames_do_not_reach_is_damage_in_strict_mode() {
        let mut bytes = frames(0, 3);
        bytes.resize(8192, 0);
        let mark = Watermark {
            pos: RECORDS_START + 10,
            next: 1,
            last_ts: 0,
            closed: false,
        };
        bytes[WATERMARK_AT..WATERMARK_AT + format::WATERMARK_LEN]
            .copy_from_slice(&format::encode_watermark(&mark));
        let strict = plan(&bytes, 0, L, None, None, false, &Options::new(), &config());
        assert!(
            matches!(strict, Err((_, _, CorruptionKind::BadHeader))),
            "{strict:?}"
        );
        let salvage = Options::new().recovery(RecoveryMode::TruncateAtFirstCorruption);
        let plan = plan(&bytes, 0, L, None, None, false, &salvage, &config()).unwrap();
        assert_eq!((plan.scan_from, plan.next), (RECORDS_START, 3));
    }
}
