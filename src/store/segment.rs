//! One segment file: its header, its records, its index, every read of a
//! record from it, and the two walks over frames that everything else uses
//! ([`scan`], which checks every CRC, and [`Heads`], which follows length
//! and offset fields alone).
//!
//! A segment is created at its full capacity (so appends never change the
//! file's length) and mapped read-only once. Readers only look at bytes
//! below the published `limit`, which the writer advances after the bytes
//! are written; so a reader never sees a partial frame of this process. A
//! sealed segment never changes again. Segments opened from disk are
//! validated lazily: their records are checked (length, CRC, offset) as they
//! are read, and damage surfaces as [`Error::Corrupt`] naming the file and
//! byte position.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::cursor::FrameBatch;
use super::index::{self, Index, IndexBuilder};
use super::writer::{Active, Checkpoints};
use crate::error::{CorruptionKind, Error, Result};
use crate::format::{
    self, decode_frame, decode_segment_header, encode_index_header, encode_segment_header,
    BatchTracker, Frame, FrameKind, HeaderError, IndexEntry, Layout, OpenBatch, Scan,
    SegmentHeader, Watermark, FORMAT_VERSION, INDEX_HEADER_LEN, RECORDS_START,
};
use crate::options::Options;
use crate::storage::{File, Map, OpenMode, Storage};

/// One segment: `{base:020}.seg` and its index `{base:020}.idx`.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    map: Map,
    /// Readers read frames in `[RECORDS_START, limit)`.
    limit: AtomicU64,
    /// Offsets `[base, next)` are in this segment and may be read. For a
    /// sealed segment opened from disk this is where the next segment
    /// starts, so a segment that ends early is detected, not skipped.
    next: AtomicU64,
    pub(crate) index: Index,
    pub(crate) index_path: PathBuf,
    max_payload: u32,
    /// Its frames' layout (its header's version).
    layout: Layout,
}

/// What one read found: the value made of the record at the requested
/// offset, and where the next record starts.
pub(crate) struct ReadFrame<R> {
    pub(crate) value: R,
    pub(crate) next_pos: u64,
}

/// The result of scanning frames forward from a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ScanEnd {
    /// Where the valid frames end.
    pub(crate) pos: u64,
    /// The offset the next frame would have.
    pub(crate) next: u64,
    /// The timestamp of the last valid frame seen, if any.
    pub(crate) last_ts: Option<u64>,
    /// Why the scan stopped: `None` at a clean end (zero length or the
    /// limit), or the damage found at `pos`.
    pub(crate) damage: Option<CorruptionKind>,
    /// The checkpoint batch the frames end inside, if they do: a torn
    /// write, which [`whole`](ScanEnd::whole) cuts.
    pub(crate) open_batch: Option<OpenBatch>,
}

impl ScanEnd {
    /// Where the whole batches end: before the batch the frames end inside,
    /// if any (the recovery rule of docs/FORMAT.md: a checkpoint's batch is
    /// all or nothing).
    pub(crate) fn whole(self) -> ScanEnd {
        match self.open_batch {
            Some(batch) => ScanEnd {
                pos: batch.pos,
                next: batch.next,
                last_ts: batch.last_ts,
                damage: Some(batch.torn()),
                open_batch: None,
            },
            None => self,
        }
    }
}

/// Scans valid, consecutive frames of `layout` in `bytes[pos..]`, calling
/// `on_frame` for each (records and control frames), and stops at the
/// first end marker, damaged frame, frame whose offset does not continue
/// the sequence, or break of the batch rule.
pub(crate) fn scan(
    bytes: &[u8],
    mut pos: u64,
    mut next: u64,
    max_payload: u32,
    layout: Layout,
    mut on_frame: impl FnMut(u64, &Frame<'_>),
) -> ScanEnd {
    let mut last_ts = None;
    let mut batches = BatchTracker::default();
    let damage = loop {
        let rest = bytes.get(pos as usize..).unwrap_or(&[]);
        match decode_frame(rest, max_payload, layout) {
            Scan::Frame(frame) if frame.offset == next => {
                let rule = match frame.kind {
                    FrameKind::Record => batches.record(),
                    FrameKind::Control => batches.control(frame.payload, pos, next, last_ts),
                };
                if let Err(kind) = rule {
                    break Some(kind);
                }
                on_frame(pos, &frame);
                last_ts = Some(frame.timestamp);
                pos += frame.len as u64;
                if frame.is_record() {
                    next += 1;
                }
            }
            Scan::Frame(frame) => {
                break Some(CorruptionKind::OffsetMismatch {
                    expected: next,
                    found: frame.offset,
                })
            }
            Scan::End => break None,
            Scan::Damaged(kind) => break Some(kind),
        }
    };
    ScanEnd {
        pos,
        next,
        last_ts,
        damage,
        open_batch: batches.open(),
    }
}

/// A walk over frame headers that trusts nothing and checks no CRC: from a
/// position and the offset expected there, it follows each frame's length
/// field to the next, checking that the length is plausible, the kind
/// known and the offset field the one expected (a control frame's is the
/// next record's, and it does not advance the offset). Locating a record from an index entry, and
/// checking a watermark against the frames before it, both walk this way:
/// it touches two fields per frame, where [`scan`] reads every byte.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heads<'a> {
    bytes: &'a [u8],
    /// The byte position and offset of the frame the next step checks.
    pub(crate) pos: u64,
    pub(crate) at: u64,
    max_payload: u32,
    layout: Layout,
}

impl<'a> Heads<'a> {
    pub(crate) fn new(
        bytes: &'a [u8],
        (pos, at): (u64, u64),
        max_payload: u32,
        layout: Layout,
    ) -> Heads<'a> {
        Heads {
            bytes,
            pos,
            at,
            max_payload,
            layout,
        }
    }

    /// Checks the header of the frame at the current position and moves
    /// past it, saying what kind it was; on damage, stays and says what is
    /// wrong there.
    pub(crate) fn step(&mut self) -> std::result::Result<FrameKind, CorruptionKind> {
        let pos = self.pos as usize;
        let len = format::frame_len_field(self.bytes, pos).unwrap_or(0);
        let found = format::frame_offset_field(self.bytes, pos);
        if len == 0 {
            return Err(CorruptionKind::Zeroed);
        }
        if !format::frame_len_plausible(len, self.max_payload, self.layout) {
            return Err(CorruptionKind::Length { len });
        }
        if found != Some(self.at) {
            return Err(CorruptionKind::OffsetMismatch {
                expected: self.at,
                found: found.unwrap_or(0),
            });
        }
        let kind = format::frame_kind_field(self.bytes, pos, self.layout).ok_or(
            CorruptionKind::UnknownFrame {
                kind: self.bytes.get(pos + 24).copied().unwrap_or(0),
                flags: self.bytes.get(pos + 25).copied().unwrap_or(0),
            },
        )?;
        self.pos += format::frame_size(len);
        if kind == FrameKind::Record {
            self.at += 1;
        }
        Ok(kind)
    }
}

/// Parameters every segment of a log shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SegmentConfig {
    pub(crate) max_payload: u32,
    pub(crate) index_interval: u32,
    pub(crate) file_mode: u32,
}

impl SegmentConfig {
    pub(crate) fn of(options: &Options) -> SegmentConfig {
        SegmentConfig {
            max_payload: options.record_limit(),
            index_interval: options.index_interval_bytes,
            file_mode: options.file_mode,
        }
    }
}

impl Segment {
    /// Creates a new segment file (version 2) at its full capacity, with
    /// its header and the control frames `initial` (checkpoints carried
    /// over from the segment before it, or none) on stable storage, and its
    /// index. With a `spare` (a zeroed, synced file of `capacity` bytes at
    /// that path) the segment is made from it by writing the header and
    /// renaming it. The caller syncs the directory before acknowledging any
    /// record in it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn create(
        storage: &Storage,
        dir: &Path,
        base: u64,
        capacity: u64,
        last_ts: u64,
        config: &SegmentConfig,
        spare: Option<(File, &Path)>,
        initial: &[u8],
    ) -> Result<Segment> {
        let path = dir.join(format::segment_name(base));
        let io = |op| move |e| Error::io(op, path_buf(dir, base), e);
        let records_end = RECORDS_START + initial.len() as u64;
        // The carried checkpoints are synced with the header: the durable
        // watermark is after them, so a follower knows they are durable
        // before any record of this segment is.
        let header = encode_segment_header(
            &SegmentHeader {
                base,
                layout: Layout::V2,
            },
            &Watermark {
                pos: records_end,
                next: base,
                last_ts,
                closed: false,
            },
        );
        let mut start = header.to_vec();
        start.extend_from_slice(initial);
        let file = match spare {
            Some((file, spare_path)) => {
                let spare_io = |op| move |e| Error::io(op, spare_path, e);
                file.write_at(&start, 0)
                    .map_err(spare_io("write header of"))?;
                file.sync_data().map_err(spare_io("fdatasync"))?;
                // The header (and the carried checkpoints) are durable
                // before the name is, so a segment file never exists
                // without them. No file has this name (bases only grow,
                // and recovery removed any unfinished create past the
                // active segment), except a newest segment of no record
                // being replaced whole: the rename then swaps it
                // atomically.
                storage
                    .rename(spare_path, &path)
                    .map_err(spare_io("rename"))?;
                file
            }
            None => {
                let file = storage
                    .open(&path, OpenMode::CreateNew, config.file_mode)
                    .map_err(io("create"))?;
                file.set_len(capacity).map_err(io("preallocate"))?;
                file.write_at(&start, 0).map_err(io("write header of"))?;
                file.sync_data().map_err(io("fdatasync"))?;
                file
            }
        };
        let map = file.map(capacity).map_err(io("map"))?;

        let index_path = dir.join(format::index_name(base));
        let index_len = index::file_len_for(capacity, config.index_interval);
        let index = create_index_file(storage, &index_path, base, index_len, config.file_mode)
            .map_err(|e| Error::io("create", &index_path, e))?;
        Ok(Segment {
            base,
            path,
            file,
            map,
            limit: AtomicU64::new(records_end),
            next: AtomicU64::new(base),
            index,
            index_path,
            max_payload: config.max_payload,
            layout: Layout::V2,
        })
    }

    /// Assembles the active segment that recovery opened and checked; its
    /// records end at `end = (byte position, next offset)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_recovered(
        dir: &Path,
        base: u64,
        file: File,
        map: Map,
        end: (u64, u64),
        index: Index,
        max_payload: u32,
        layout: Layout,
    ) -> Segment {
        Segment {
            base,
            path: dir.join(format::segment_name(base)),
            file,
            map,
            limit: AtomicU64::new(end.0),
            next: AtomicU64::new(end.1),
            index,
            index_path: dir.join(format::index_name(base)),
            max_payload,
            layout,
        }
    }

    /// Opens a sealed segment for reading. Its records are validated as
    /// they are read; `expected_end` is the base offset of the segment after
    /// it. A missing or damaged index is rebuilt (and rewritten unless
    /// `read_only`). Returns the segment and whether its index was rebuilt.
    pub(crate) fn open_sealed(
        storage: &Storage,
        dir: &Path,
        base: u64,
        expected_end: u64,
        read_only: bool,
        config: &SegmentConfig,
    ) -> Result<(Segment, bool)> {
        let path = dir.join(format::segment_name(base));
        let file = storage
            .open(&path, OpenMode::ReadOnly, config.file_mode)
            .map_err(|e| Error::io("open", &path, e))?;
        let len = file.len().map_err(|e| Error::io("stat", &path, e))?;
        let map = file.map(len).map_err(|e| Error::io("map", &path, e))?;
        let layout = check_header(&map.bytes(), &path, base)?.layout;
        let index_path = dir.join(format::index_name(base));
        let (index, rebuilt) =
            open_or_rebuild_index(storage, &index_path, base, &map, layout, read_only, config)?;
        let segment = Segment {
            base,
            path,
            file,
            limit: AtomicU64::new(len),
            next: AtomicU64::new(expected_end),
            map,
            index,
            index_path,
            max_payload: config.max_payload,
            layout,
        };
        Ok((segment, rebuilt))
    }

    /// The file's size, which bounds every record in it.
    pub(crate) fn capacity(&self) -> u64 {
        self.map.len()
    }

    /// Its frames' layout.
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit.load(Ordering::Acquire)
    }

    pub(crate) fn next(&self) -> u64 {
        self.next.load(Ordering::Acquire)
    }

    /// Makes the records in `[.., limit)`, offsets `[.., next)`, readable.
    pub(crate) fn publish_extent(&self, limit: u64, next: u64) {
        self.limit.store(limit, Ordering::Release);
        self.next.store(next, Ordering::Release);
    }

    /// Reads the record at `offset`, which starts at `pos` or after the
    /// control frames there, and hands its frame to `f`.
    pub(crate) fn read<R>(
        &self,
        pos: u64,
        offset: u64,
        f: impl FnOnce(&Frame<'_>) -> R,
    ) -> Result<ReadFrame<R>> {
        let bytes = self.map.bytes();
        let (frame, next_pos) = self.record_at(&bytes, self.limit(), pos, offset)?;
        Ok(ReadFrame {
            value: f(&frame),
            next_pos,
        })
    }

    /// Copies the records from `*offset`, which starts at `*pos`, up to
    /// `stop` (and this segment's end) into `batch` in one walk, each
    /// verified first, until the bytes copied reach `max_bytes` (at least
    /// one record). The run's bytes go over in one copy, headers and any
    /// control frames between the records included, and each record notes
    /// where its payload lies in them. `*pos` and `*offset` move past each
    /// record copied, so they say where the walk stopped, error or not.
    #[inline]
    pub(crate) fn copy_run(
        &self,
        pos: &mut u64,
        offset: &mut u64,
        stop: u64,
        max_bytes: usize,
        batch: &mut FrameBatch,
    ) -> Result<()> {
        let (bytes, limit) = (self.map.bytes(), self.limit());
        let stop = stop.min(self.next());
        let run_start = *pos;
        // Where the run's first byte lands in the batch's buffer.
        let base = batch.bytes.len();
        let mut walked = Ok(());
        while *offset < stop && ((*pos - run_start) as usize) < max_bytes {
            let (frame, next_pos) = match self.record_at(&bytes, limit, *pos, *offset) {
                Ok(found) => found,
                Err(e) => {
                    walked = Err(e);
                    break;
                }
            };
            batch.note(&frame, base + (next_pos - run_start) as usize);
            *pos = next_pos;
            *offset += 1;
        }
        batch
            .bytes
            .extend_from_slice(&bytes[run_start as usize..*pos as usize]);
        walked
    }

    /// The record at `offset` in `bytes[..limit]`, which starts at `pos` or
    /// after the control frames there, and the position after it.
    #[inline]
    fn record_at<'a>(
        &self,
        bytes: &'a [u8],
        limit: u64,
        mut pos: u64,
        offset: u64,
    ) -> Result<(Frame<'a>, u64)> {
        // Matched by value, not through a reference: the frame stays in
        // registers (a `Scan` spilled and reloaded stalls each record).
        loop {
            let region = bytes.get(pos as usize..limit as usize).unwrap_or(&[]);
            match decode_frame(region, self.max_payload, self.layout) {
                Scan::Frame(frame) if frame.offset == offset && frame.is_record() => {
                    return Ok((frame, pos + frame.len as u64));
                }
                // The control frames before the record.
                Scan::Frame(frame) if frame.offset == offset => pos += frame.len as u64,
                scan => return Err(self.not_a_record(scan, region, pos, offset)),
            }
        }
    }

    /// Why the frame at `pos` is not the record at `offset`.
    #[cold]
    fn not_a_record(&self, scan: Scan<'_>, region: &[u8], pos: u64, offset: u64) -> Error {
        let kind = match scan {
            Scan::Frame(frame) => CorruptionKind::OffsetMismatch {
                expected: offset,
                found: frame.offset,
            },
            // Records are expected here (offset < next): either zeros hide
            // them or the file ends early.
            Scan::End if region.iter().any(|&b| b != 0) => CorruptionKind::Zeroed,
            Scan::End => CorruptionKind::SegmentTruncated {
                expected_end: self.next(),
                found_end: offset,
            },
            Scan::Damaged(kind) => kind,
        };
        self.corrupt(pos, offset, kind)
    }

    fn corrupt(&self, pos: u64, offset: u64, kind: CorruptionKind) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            position: pos,
            offset: Some(offset),
            kind,
        }
    }

    /// The byte position of the record at `offset`, which must be in
    /// `[base, next)`.
    pub(crate) fn locate(&self, offset: u64) -> Result<u64> {
        let rel = (offset - self.base) as u32;
        if let Some(entry) = self.index.seek_offset(rel) {
            let start = (
                u64::from(entry.pos),
                self.base + u64::from(entry.rel_offset),
            );
            // The index is a cache: the walk checks every frame's length and
            // offset from the entry to the target, and the target must be a
            // whole, valid frame. A lying entry can point at bytes whose
            // length and offset fields look right (inside a payload, or past
            // the records); only the CRC tells, and then the walk from the
            // first record decides.
            if let Ok(pos) = self.walk(start, offset) {
                if self
                    .frame_at(pos)
                    .is_some_and(|f| f.offset == offset && f.is_record())
                {
                    return Ok(pos);
                }
            }
        }
        // No usable index entry: walk from the first record. A failure here
        // is real damage, reported by reading the record where it stops.
        match self.walk((RECORDS_START, self.base), offset) {
            Ok(pos) => Ok(pos),
            Err((pos, at)) => {
                // The read reports the damage the walk stopped at.
                self.read(pos, at, |_| ())?;
                Err(self.corrupt(pos, at, CorruptionKind::BadHeader))
            }
        }
    }

    /// Walks frame headers from `start` to `offset`, checking every frame's
    /// length and offset fields on the way, the target's included (the
    /// caller or the final read checks the CRC). On failure, the position
    /// and offset of the frame that did not check out.
    fn walk(&self, start: (u64, u64), offset: u64) -> Result<u64, (u64, u64)> {
        let limit = self.limit();
        let bytes = self.map.bytes();
        let region = bytes.get(..limit as usize).unwrap_or(&[]);
        let mut heads = Heads::new(region, start, self.max_payload, self.layout);
        loop {
            let (pos, at) = (heads.pos, heads.at);
            let kind = heads.step().map_err(|_| (pos, at))?;
            if at == offset && kind == FrameKind::Record {
                return Ok(pos);
            }
            // (A start past `offset` never gets here: the index only offers
            // entries at or before it. It would walk to the limit and fail.)
        }
    }

    /// The valid frame at `pos`, if there is one below the limit.
    fn frame_at(&self, pos: u64) -> Option<Frame<'_>> {
        let limit = self.limit();
        let bytes = self.map.bytes();
        let region = bytes.get(pos as usize..limit as usize)?;
        match decode_frame(region, self.max_payload, self.layout) {
            // Copy out what callers need; the guard ends here.
            Scan::Frame(frame) => Some(Frame {
                offset: frame.offset,
                timestamp: frame.timestamp,
                kind: frame.kind,
                source_time: frame.source_time,
                payload: &[],
                len: frame.len,
            }),
            _ => None,
        }
    }

    /// The first record in this segment with a timestamp of at least
    /// `micros`: its position and offset, or `None` if there is none.
    pub(crate) fn locate_time(&self, micros: u64) -> Result<Option<(u64, u64)>> {
        let next = self.next();
        let (mut pos, mut offset) = (RECORDS_START, self.base);
        if let Some(entry) = self.index.seek_time(micros) {
            let at = self.base + u64::from(entry.rel_offset);
            // Start from the entry only if the record there really is older
            // than `micros`: an index claiming too small a timestamp must
            // not make the search skip records.
            if self
                .frame_at(u64::from(entry.pos))
                .is_some_and(|f| f.offset == at && f.timestamp < micros)
            {
                (pos, offset) = (u64::from(entry.pos), at);
            }
        }
        while offset < next {
            let ReadFrame {
                value: ts,
                next_pos,
            } = self.read(pos, offset, |frame| frame.timestamp)?;
            if ts >= micros {
                return Ok(Some((pos, offset)));
            }
            pos = next_pos;
            offset += 1;
        }
        Ok(None)
    }

    /// The timestamp of the first record, if the segment has one.
    pub(crate) fn first_timestamp(&self) -> Result<Option<u64>> {
        if self.next() <= self.base {
            return Ok(None);
        }
        Ok(Some(
            self.read(RECORDS_START, self.base, |frame| frame.timestamp)?
                .value,
        ))
    }

    /// Scans the published records from the start, to verify every one.
    pub(crate) fn verify(&self) -> Result<u64> {
        let bytes = self.map.bytes();
        let region = bytes.get(..self.limit() as usize).unwrap_or(&[]);
        let end = scan(
            region,
            RECORDS_START,
            self.base,
            self.max_payload,
            self.layout,
            |_, _| {},
        );
        let expected = self.next();
        let kind = match end.next.cmp(&expected) {
            std::cmp::Ordering::Equal => match end.open_batch {
                None => return Ok(end.next - self.base),
                // The records are all there but a checkpoint states more.
                Some(batch) => {
                    return Err(self.corrupt(batch.pos, batch.next, batch.torn()));
                }
            },
            // Records past the offset where the next segment starts: the
            // two segments overlap.
            std::cmp::Ordering::Greater => {
                return Err(self.corrupt(
                    end.pos,
                    expected,
                    CorruptionKind::SegmentSequence {
                        expected,
                        found: end.next,
                    },
                ))
            }
            std::cmp::Ordering::Less => end.damage.unwrap_or(CorruptionKind::SegmentTruncated {
                expected_end: expected,
                found_end: end.next,
            }),
        };
        Err(self.corrupt(end.pos, end.next, kind))
    }

    /// The index entries that do not point at the start of a frame with
    /// their offset and timestamp, by entry number. (Only the frame's header
    /// fields are compared: a damaged record under a right entry is the
    /// record's damage, which [`verify`](Segment::verify) reports.)
    pub(crate) fn bad_index_entries(&self) -> Vec<u64> {
        let limit = self.limit();
        let bytes = self.map.bytes();
        let region = bytes.get(..limit as usize).unwrap_or(&[]);
        let mut bad = Vec::new();
        for (i, entry) in self.index.entries().iter().enumerate() {
            let (pos, at) = (entry.pos as usize, self.base + u64::from(entry.rel_offset));
            let ok = at < self.next()
                && format::frame_len_field(region, pos).is_some_and(|len| {
                    format::frame_len_plausible(len, self.max_payload, self.layout)
                })
                && format::frame_kind_field(region, pos, self.layout) == Some(FrameKind::Record)
                && format::frame_offset_field(region, pos) == Some(at)
                && format::frame_timestamp_field(region, pos) == Some(entry.timestamp);
            if !ok {
                bad.push(i as u64);
            }
        }
        bad
    }

    /// The durable watermark in the segment's header, if it is intact.
    pub(crate) fn watermark(&self) -> Option<Watermark> {
        format::decode_watermark(&self.map.bytes())
    }

    /// The newest whole checkpoint of each name among the published frames:
    /// its body (the chunks of one checkpoint joined), by name. Damage among
    /// them is an error, never an older checkpoint passed off as the newest.
    pub(crate) fn checkpoints(&self) -> Result<Checkpoints> {
        let bytes = self.map.bytes();
        let region = bytes.get(..self.limit() as usize).unwrap_or(&[]);
        let collect = |region: &[u8]| {
            let mut found = Checkpoints::new();
            let mut current: Option<(String, Vec<u8>)> = None;
            let end = scan(
                region,
                RECORDS_START,
                self.base,
                self.max_payload,
                self.layout,
                |_, frame| {
                    // (The scan checked the batch rule: chunks are whole
                    // and in order.)
                    let Some(chunk) = format::decode_checkpoint(frame.payload) else {
                        return;
                    };
                    if chunk.chunk == 0 {
                        current = Some((chunk.name.to_owned(), Vec::new()));
                    }
                    if let Some((_, body)) = &mut current {
                        body.extend_from_slice(chunk.body);
                    }
                    if chunk.chunk + 1 == chunk.chunks {
                        if let Some((name, body)) = current.take() {
                            found.insert(name, body);
                        }
                    }
                },
            );
            (found, end)
        };
        match collect(region) {
            (_, end) if end.damage.is_some() => {
                let kind = end.damage.expect("just matched");
                Err(self.corrupt(end.pos, end.next, kind))
            }
            // The frames end inside a batch (a follower sees a write in
            // progress): its checkpoint does not count yet.
            (
                _,
                ScanEnd {
                    open_batch: Some(torn),
                    ..
                },
            ) => Ok(collect(&region[..torn.pos as usize]).0),
            (found, _) => Ok(found),
        }
    }

    /// Follower mode: withdraws the published extent to the offsets below
    /// `durable` (never below the segment's base), and returns the new
    /// next offset.
    pub(crate) fn cap_to(&self, durable: u64) -> u64 {
        let next = self.next();
        if durable >= next {
            return next;
        }
        let target = durable.max(self.base);
        let bytes = self.map.bytes();
        let limit = self.limit();
        let region = bytes.get(..limit as usize).unwrap_or(&[]);
        // Frames before the header's watermark were synced (the carried
        // checkpoints of a new segment, at least), whatever the notice says.
        let synced = format::decode_watermark(&bytes)
            .filter(|w| w.pos <= limit)
            .map_or(RECORDS_START, |w| w.pos);
        let mut cut = None;
        scan(
            region,
            RECORDS_START,
            self.base,
            self.max_payload,
            self.layout,
            |pos, frame| {
                if pos >= synced && frame.offset >= target && cut.is_none() {
                    cut = Some((pos, frame.offset));
                }
            },
        );
        bytes.release();
        if let Some((pos, offset)) = cut {
            self.publish_extent(pos, offset);
            return offset;
        }
        next
    }

    /// Follower mode: extends the published extent with any complete,
    /// valid records another process has written since, below offset
    /// `durable` (what its writer has made durable). Returns whether
    /// anything new was found. A frame still being written fails its CRC
    /// and is simply not seen yet; so is a batch not yet whole.
    pub(crate) fn follow(&self, durable: u64) -> bool {
        let (limit, next) = (self.limit(), self.next());
        if durable <= next {
            return false;
        }
        let bytes = self.map.bytes();
        // Where the first frame at or past `durable` starts: a control
        // frame there belongs to the batch that is not durable yet.
        let mut cut = None;
        let end = scan(
            &bytes,
            limit,
            next,
            self.max_payload,
            self.layout,
            |pos, frame| {
                if frame.offset >= durable && cut.is_none() {
                    cut = Some(pos);
                }
            },
        )
        .whole();
        bytes.release();
        let (pos, next_offset) = match cut {
            Some(pos) if pos < end.pos => (pos, durable),
            _ => (end.pos, end.next),
        };
        if next_offset == next {
            return false;
        }
        self.publish_extent(pos, next_offset);
        true
    }
}

impl Active for Segment {
    fn base(&self) -> u64 {
        self.base
    }

    fn capacity(&self) -> u64 {
        self.map.len()
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn index_path(&self) -> &Path {
        &self.index_path
    }

    fn write(&self, frames: &[u8], pos: u64) -> std::io::Result<()> {
        self.file.write_at(frames, pos)
    }

    fn write_index(&self, entries: &[u8], at: u64) -> std::io::Result<()> {
        self.index.write(entries, at)
    }

    fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    fn start_writeback(&self, from: u64, to: u64) -> std::io::Result<()> {
        self.file.start_writeback(from, to - from)
    }

    /// The caller has already synced everything before `mark.pos`, so
    /// whenever these bytes reach the disk they are true.
    fn write_watermark(&self, mark: &Watermark) -> std::io::Result<()> {
        self.file
            .write_at(&format::encode_watermark(mark), format::WATERMARK_AT as u64)
    }

    fn publish(&self, limit: u64, next: u64, index_count: u64) {
        // Entries first: a lookup may use an entry only for a record it can
        // read.
        self.index.publish(index_count);
        self.publish_extent(limit, next);
    }
}

fn path_buf(dir: &Path, base: u64) -> PathBuf {
    dir.join(format::segment_name(base))
}

/// Checks the header of a segment file against the base in its name, and
/// returns it (its version says how its frames are laid out).
pub(crate) fn check_header(bytes: &[u8], path: &Path, base: u64) -> Result<SegmentHeader> {
    let corrupt = |kind| Error::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        offset: None,
        kind,
    };
    match decode_segment_header(bytes) {
        Ok(header) if header.base == base => Ok(header),
        Ok(_) => Err(corrupt(CorruptionKind::BadHeader)),
        Err(HeaderError::Incomplete) => Err(corrupt(CorruptionKind::SegmentTruncated {
            expected_end: base,
            found_end: base,
        })),
        Err(HeaderError::Corrupt(kind)) => Err(corrupt(kind)),
        Err(HeaderError::Version(found)) => Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        }),
    }
}

fn create_index_file(
    storage: &Storage,
    path: &Path,
    base: u64,
    len: u64,
    mode: u32,
) -> std::io::Result<Index> {
    // An index left behind by an earlier life of this base is stale.
    match storage.remove(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let file = storage.open(path, OpenMode::CreateNew, mode)?;
    file.set_len(len)?;
    file.write_at(&encode_index_header(base), 0)?;
    let map = file.map(len)?;
    Ok(Index::mapped(file, map, 0))
}

/// Builds the index entries of a whole segment by scanning it: entries
/// for its records, in whole batches only.
pub(crate) fn rebuild_entries(
    bytes: &[u8],
    base: u64,
    layout: Layout,
    config: &SegmentConfig,
) -> Vec<IndexEntry> {
    let mut builder = IndexBuilder::new(config.index_interval, None);
    let mut entries = Vec::new();
    let end = scan(
        bytes,
        RECORDS_START,
        base,
        config.max_payload,
        layout,
        |pos, frame| {
            if !frame.is_record() {
                return;
            }
            if let Some(entry) = builder.observe(base, pos, frame.offset, frame.timestamp) {
                entries.push(entry);
            }
        },
    )
    .whole();
    entries.retain(|e| u64::from(e.pos) < end.pos);
    entries
}

fn open_or_rebuild_index(
    storage: &Storage,
    path: &Path,
    base: u64,
    segment: &Map,
    layout: Layout,
    read_only: bool,
    config: &SegmentConfig,
) -> Result<(Index, bool)> {
    let mode = if read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::Existing
    };
    if let Ok(file) = storage.open(path, mode, config.file_mode) {
        if let Ok(len) = file.len() {
            if let Ok(map) = file.map(len) {
                let bytes = map.bytes();
                if format::index_header_ok(&bytes, base) {
                    let count = index::valid_prefix(&bytes[INDEX_HEADER_LEN..], segment.len());
                    bytes.release();
                    return Ok((Index::mapped(file, map, count), false));
                }
            }
        }
    }
    let entries = rebuild_entries(&segment.bytes(), base, layout, config);
    if read_only {
        return Ok((Index::memory(&entries), true));
    }
    let index = write_index(storage, path, base, &entries, config.file_mode)
        .map_err(|e| Error::io("rebuild index", path, e))?;
    Ok((index, true))
}

/// Writes a complete index file through a temporary file and a rename, so
/// a crash leaves either the old file or the new one.
pub(crate) fn write_index(
    storage: &Storage,
    path: &Path,
    base: u64,
    entries: &[IndexEntry],
    mode: u32,
) -> std::io::Result<Index> {
    let tmp = path.with_extension(format!("{}.{}", format::INDEX_EXT, format::TMP_EXT));
    let _ = storage.remove(&tmp);
    let file = storage.open(&tmp, OpenMode::CreateNew, mode)?;
    let mut bytes = encode_index_header(base).to_vec();
    for entry in entries {
        bytes.extend_from_slice(&format::encode_index_entry(entry));
    }
    file.write_at(&bytes, 0)?;
    storage.rename(&tmp, path)?;
    let map = file.map(bytes.len() as u64)?;
    Ok(Index::mapped(file, map, entries.len() as u64))
}
