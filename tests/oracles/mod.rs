//! The oracles of the fuzz targets, shared by the cargo-fuzz targets in
//! `fuzz/fuzz_targets/` (which include this file with `#[path]`) and by
//! `tests/sim/fuzz_oracles.rs` (proptest on the stable toolchain).
//!
//! Every oracle takes the fuzzer's raw bytes, decodes from them what to
//! plant or do (with [`Input`], a byte reader that yields zeros once the
//! bytes run out), runs a log on the crash simulator, and returns `Err`
//! with a description when a property fails. A panic anywhere (in the
//! crate, or a simulator assertion) is a failure too.
//!
//! - [`frame_decode`]: fuzzed record frames in a sealed segment; every read
//!   agrees with a reference decoder written from docs/FORMAT.md.
//! - [`segment_recover`]: a fuzzed last segment; opening yields exactly the
//!   longest valid prefix (or a typed error), and a second open cuts nothing.
//! - [`dir_recover`]: a fuzzed directory of 1-6 files; opening never panics,
//!   and what it yields is contiguous and only ever records that were
//!   appended.
//! - [`index_parse`]: a fuzzed index file; every lookup equals a sequential
//!   scan.
//! - [`api_ops`]: operations, crashes and injected faults against an
//!   in-memory model.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use backbone::sim::{CrashMode, Fault, FaultKind, OpKind, SimStorage};
use backbone::{
    CorruptionKind, Durability, Error, EventLog, Options, Raw, Record, Start, Timestamp,
};

pub type Log = EventLog<Vec<u8>, Raw>;
pub type Outcome = Result<(), String>;

pub const DIR: &str = "/log";
/// Segment size of the logs the oracles build (small: several segments).
pub const SEGMENT: u64 = 1024;
/// `max_record_bytes` of those logs.
pub const MAXP: u32 = 200;
const HEADER: usize = 64;
const FRAME_OVERHEAD: usize = 24;
/// Records in the base log of [`segment_recover`], [`dir_recover`] and
/// [`index_parse`].
const BASE_RECORDS: u64 = 40;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// ---- reading the fuzzer's bytes ---------------------------------------------

/// A reader of the fuzzer's bytes: integers little-endian, zeros once the
/// bytes are used up, so every input decodes to something.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    /// Uniform-ish in `0..n` (0 when `n <= 1`).
    pub fn below(&mut self, n: u64) -> u64 {
        match n {
            0 | 1 => 0,
            2..=256 => u64::from(self.u8()) % n,
            257..=65536 => u64::from(self.u16()) % n,
            _ => self.u64() % n,
        }
    }

    /// Up to `n` bytes (fewer if the input runs out).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

// ---- the format, independently of the crate (docs/FORMAT.md) ----------------

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A record frame: length, CRC, offset, timestamp, payload.
pub fn encode_frame(offset: u64, ts: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    out.extend_from_slice(&(16 + payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = frame_crc(&out);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

fn frame_crc(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&frame[..4]);
    h.update(&frame[8..]);
    h.finalize()
}

/// The watermark slot (bytes 32..64 of a segment header).
pub fn encode_watermark(pos: u64, next: u64, last_ts: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&pos.to_le_bytes());
    out[8..16].copy_from_slice(&next.to_le_bytes());
    out[16..24].copy_from_slice(&last_ts.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// A valid segment header for `base` with the given watermark slot.
pub fn encode_segment_header(base: u64, slot: &[u8; 32]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER];
    out[..8].copy_from_slice(b"BBONESEG");
    out[8..12].copy_from_slice(&1u32.to_le_bytes());
    out[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out[32..].copy_from_slice(slot);
    out
}

/// The watermark of a segment header, if its slot's CRC holds.
fn decode_watermark(file: &[u8]) -> Option<(u64, u64, u64)> {
    let slot = file.get(32..64)?;
    if u32_at(slot, 28)? != crc32fast::hash(&slot[..28]) {
        return None;
    }
    Some((u64_at(slot, 0)?, u64_at(slot, 8)?, u64_at(slot, 16)?))
}

/// The position of a valid watermark slot whose *closed* bit is set.
fn closed_at(file: &[u8]) -> Option<u64> {
    let (pos, ..) = decode_watermark(file)?;
    (u32_at(&file[32..64], 24)? & 1 == 1).then_some(pos)
}

/// What opening makes of the newest segment's 64-byte header (docs/FORMAT.md,
/// "Segment header" and "Recovery"), in the order the fields are checked.
#[derive(Clone, Debug, PartialEq, Eq)]
enum HeaderCheck {
    /// Shorter than the header: an unfinished create, whatever it holds.
    Short,
    /// All zeros (`Zeroed`), or torn: bad magic (`BadMagic`) or a bad
    /// header CRC (`HeaderChecksum`). An unfinished create if no byte after
    /// the header is non-zero; otherwise damage of that kind.
    Torn(CorruptionKind),
    /// Magic and CRC hold, but another format version.
    Version(u32),
    /// Flags non-zero, or a base that differs from the name: `BadHeader`.
    Bad,
    Ok,
}

fn check_segment_header(file: &[u8], base: u64) -> HeaderCheck {
    let Some(h) = file.get(..HEADER) else {
        return HeaderCheck::Short;
    };
    if h.iter().all(|&b| b == 0) {
        return HeaderCheck::Torn(CorruptionKind::Zeroed);
    }
    if &h[..8] != b"BBONESEG" {
        return HeaderCheck::Torn(CorruptionKind::BadMagic);
    }
    if u32_at(h, 24) != Some(crc32fast::hash(&h[..24])) {
        return HeaderCheck::Torn(CorruptionKind::HeaderChecksum);
    }
    match u32_at(h, 8) {
        Some(1) => {}
        Some(v) => return HeaderCheck::Version(v),
        None => unreachable!("in the header"),
    }
    if u32_at(h, 12) != Some(0) || u64_at(h, 16) != Some(base) {
        return HeaderCheck::Bad;
    }
    HeaderCheck::Ok
}

/// A valid frame found by the reference decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefFrame {
    pub pos: usize,
    pub offset: u64,
    pub ts: u64,
    pub payload: Vec<u8>,
    pub len: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum RefScan {
    Frame(RefFrame),
    End,
    /// What is wrong with the bytes there, as `Error::Corrupt` names it.
    Damaged(CorruptionKind),
}

/// What lies at `pos`: docs/FORMAT.md, "Record frames". A zero length (or
/// only zeros left) ends the records; a length that is impossible or runs
/// past the bytes is `Length` (a non-zero stub too short for one is
/// `Length { len: 0 }`); then the CRC.
fn ref_decode(bytes: &[u8], pos: usize, max_payload: u32) -> RefScan {
    let rest = bytes.get(pos..).unwrap_or(&[]);
    let Some(len) = u32_at(rest, 0) else {
        return if rest.iter().all(|&b| b == 0) {
            RefScan::End
        } else {
            RefScan::Damaged(CorruptionKind::Length { len: 0 })
        };
    };
    if len == 0 {
        return RefScan::End;
    }
    if len < 16 || len - 16 > max_payload || rest.len() < 8 + len as usize {
        return RefScan::Damaged(CorruptionKind::Length { len });
    }
    let frame = &rest[..8 + len as usize];
    let (stored, computed) = (u32_at(frame, 4).unwrap_or_default(), frame_crc(frame));
    if stored != computed {
        return RefScan::Damaged(CorruptionKind::Checksum { stored, computed });
    }
    RefScan::Frame(RefFrame {
        pos,
        offset: u64_at(frame, 8).unwrap_or_default(),
        ts: u64_at(frame, 16).unwrap_or_default(),
        payload: frame[24..].to_vec(),
        len: frame.len(),
    })
}

/// The chain of valid frames from `pos` with offsets `next, next + 1, ..`
/// (a CRC-checking scan): the frames, where the chain ends, and the damage
/// that ended it (`None` at a zero length / the end of the bytes; a valid
/// frame of another offset is `OffsetMismatch`).
fn ref_scan(
    bytes: &[u8],
    mut pos: usize,
    mut next: u64,
    max_payload: u32,
) -> (Vec<RefFrame>, usize, Option<CorruptionKind>) {
    let mut frames = Vec::new();
    loop {
        match ref_decode(bytes, pos, max_payload) {
            RefScan::Frame(f) if f.offset == next => {
                pos += f.len;
                next += 1;
                frames.push(f);
            }
            RefScan::Frame(f) => {
                let kind = CorruptionKind::OffsetMismatch {
                    expected: next,
                    found: f.offset,
                };
                return (frames, pos, Some(kind));
            }
            RefScan::Damaged(kind) => return (frames, pos, Some(kind)),
            RefScan::End => return (frames, pos, None),
        }
    }
}

/// [`ref_scan`], with only whether the chain ended in damage.
fn ref_chain(
    bytes: &[u8],
    pos: usize,
    next: u64,
    max_payload: u32,
) -> (Vec<RefFrame>, usize, bool) {
    let (frames, end, damage) = ref_scan(bytes, pos, next, max_payload);
    (frames, end, damage.is_some())
}

/// Where a walk over frame length and offset fields (not CRCs) from `pos`,
/// expecting offset `at` there, goes wrong before it lands exactly on the
/// watermark `(mark_pos, mark_next)`: the position, the offset expected
/// there, and what is wrong (`Zeroed` for a zero length, `Length`,
/// `OffsetMismatch`, or `BadHeader` for a walk that reached or passed
/// `mark_pos` elsewhere than on the watermark). docs/FORMAT.md, "The durable
/// watermark slot", and the brief for the change.
fn ref_walk(
    bytes: &[u8],
    mut pos: u64,
    mut at: u64,
    (mark_pos, mark_next): (u64, u64),
    max_payload: u32,
) -> Result<(), (u64, u64, CorruptionKind)> {
    loop {
        if pos == mark_pos && at == mark_next {
            return Ok(());
        }
        if pos >= mark_pos {
            return Err((pos, at, CorruptionKind::BadHeader));
        }
        let p = pos as usize;
        let len = u32_at(bytes, p).unwrap_or(0);
        let found = u64_at(bytes, p + 8);
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
}

/// The entries of an index file that opening uses for records before
/// `limit` (docs/FORMAT.md, "Index files"): `None` if the file is missing
/// or its header is not valid for `base`; else the `(offset, position)` of
/// the leading entries that are inside `[64, limit)` and strictly
/// increasing in offset and position, with non-decreasing timestamps.
fn ref_index_entries(index: Option<&[u8]>, base: u64, limit: u64) -> Option<Vec<(u64, u64)>> {
    let index = index?;
    let h = index.get(..32)?;
    let header_ok = &h[..8] == b"BBONEIDX"
        && u32_at(h, 8) == Some(1)
        && u64_at(h, 16) == Some(base)
        && u32_at(h, 24) == Some(crc32fast::hash(&h[..24]));
    if !header_ok {
        return None;
    }
    let mut entries = Vec::new();
    let mut previous: Option<(u32, u32, u64)> = None;
    for raw in index[32..].chunks_exact(16) {
        let (rel, pos, ts) = (u32_at(raw, 0)?, u32_at(raw, 4)?, u64_at(raw, 8)?);
        if u64::from(pos) < HEADER as u64 || u64::from(pos) >= limit {
            break;
        }
        if previous.is_some_and(|(r, p, t)| rel <= r || pos <= p || ts < t) {
            break;
        }
        previous = Some((rel, pos, ts));
        entries.push((base + u64::from(rel), u64::from(pos)));
    }
    Some(entries)
}

/// What opening a log must do with its newest segment, `file` (extended
/// with zeros to its capacity) at `base` with index file `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Newest {
    /// An unfinished create: removed (with its index), the log ends at `base`.
    Removed,
    /// `Error::Corrupt` naming the segment.
    Corrupt {
        position: u64,
        offset: Option<u64>,
        kind: CorruptionKind,
    },
    /// `Error::UnsupportedVersion` naming the segment.
    Version(u32),
    /// Opens; the tail is scanned from `(pos, next)` (a watermark that
    /// checks out, or the first record) and `trusted` says it was a
    /// watermark past the first record.
    Scan {
        pos: usize,
        next: u64,
        trusted: bool,
    },
}

fn ref_newest(file: &[u8], ext: &[u8], base: u64, index: Option<&[u8]>) -> Newest {
    let holds_data = file.iter().skip(HEADER).any(|&x| x != 0);
    match check_segment_header(file, base) {
        HeaderCheck::Short => return Newest::Removed,
        HeaderCheck::Torn(_) if !holds_data => return Newest::Removed,
        HeaderCheck::Torn(kind) => {
            return Newest::Corrupt {
                position: 0,
                offset: None,
                kind,
            }
        }
        HeaderCheck::Version(v) => return Newest::Version(v),
        HeaderCheck::Bad => {
            return Newest::Corrupt {
                position: 0,
                offset: None,
                kind: CorruptionKind::BadHeader,
            }
        }
        HeaderCheck::Ok => {}
    }
    let from_start = Newest::Scan {
        pos: HEADER,
        next: base,
        trusted: false,
    };
    let Some((pos, next, _)) = decode_watermark(file) else {
        return from_start;
    };
    if pos < HEADER as u64 || pos > ext.len() as u64 || next < base {
        return from_start;
    }
    // The frames must lead exactly to the watermark: from the last index
    // entry below it, or else from the first record.
    let mark = (pos, next);
    let entries = ref_index_entries(index, base, pos).unwrap_or_default();
    let from_entry = entries
        .last()
        .is_some_and(|&(o, p)| ref_walk(ext, p, o, mark, MAXP).is_ok());
    if from_entry {
        return Newest::Scan {
            pos: pos as usize,
            next,
            trusted: pos != HEADER as u64 || next != base,
        };
    }
    match ref_walk(ext, HEADER as u64, base, mark, MAXP) {
        Ok(()) => Newest::Scan {
            pos: pos as usize,
            next,
            trusted: pos != HEADER as u64 || next != base,
        },
        Err((stop, at, kind)) => {
            // Named by the first damaged frame a CRC-checking scan finds
            // before where the walk stopped, or by where it stopped.
            let limit = (stop as usize).min(ext.len());
            let (frames, end, damage) = ref_scan(&ext[..limit], HEADER, base, MAXP);
            let (position, offset, kind) = match damage {
                Some(d) if (end as u64) < stop => (end as u64, base + frames.len() as u64, d),
                _ => (stop, at, kind),
            };
            Newest::Corrupt {
                position,
                offset: Some(offset),
                kind,
            }
        }
    }
}

/// Where a lookup of `offset` lands in a sealed segment (docs/FORMAT.md,
/// "Index files"): walk frame lengths from the first record checking each
/// length and offset field, then check the target frame whole.
fn ref_lookup(bytes: &[u8], base: u64, offset: u64, max_payload: u32) -> Option<RefFrame> {
    let (mut pos, mut at) = (HEADER, base);
    loop {
        let len = u32_at(bytes, pos)?;
        let found = u64_at(bytes, pos + 8)?;
        if len < 16 || len - 16 > max_payload || found != at {
            return None;
        }
        if at == offset {
            break;
        }
        pos += 8 + len as usize;
        at += 1;
    }
    match ref_decode(bytes, pos, max_payload) {
        RefScan::Frame(f) if f.offset == offset => Some(f),
        _ => None,
    }
}

/// A recognisable payload of `len` bytes.
pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i as u8 ^ seed))
        .collect()
}

/// Record-area bytes decoded from `inp`: mostly valid frames continuing the
/// chain from `next`, mixed with frames of the wrong offset, bad CRCs,
/// oversized lengths, torn frames and raw bytes.
fn structured_area(inp: &mut Input<'_>, mut next: u64, mut ts: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let n = inp.below(24);
    for _ in 0..n {
        let kind = inp.u8();
        let len = match kind >> 5 {
            0 => MAXP as usize,
            1 => MAXP as usize + 1 + inp.below(3) as usize,
            _ => inp.below(u64::from(MAXP) / 2) as usize,
        };
        let payload = pattern(inp.u8(), len);
        match kind % 8 {
            0..=3 => {
                out.extend(encode_frame(next, ts, &payload));
                next += 1;
                ts += inp.below(3);
            }
            4 => {
                let wrong = match inp.below(3) {
                    0 => next.wrapping_sub(1),
                    1 => next + 1 + inp.below(4),
                    _ => inp.u64(),
                };
                out.extend(encode_frame(wrong, ts, &payload));
            }
            5 => {
                let mut frame = encode_frame(next, ts, &payload);
                let at = inp.below(frame.len() as u64) as usize;
                frame[at] ^= 1 << inp.below(8);
                out.extend(frame);
                next += 1;
            }
            6 => {
                let n = inp.below(48) as usize + 1;
                out.extend_from_slice(inp.bytes(n));
            }
            _ => {
                let frame = encode_frame(next, ts, &payload);
                let cut = inp.below(frame.len() as u64) as usize;
                out.extend_from_slice(&frame[..cut]);
            }
        }
    }
    out
}

// ---- logs on the simulator ----------------------------------------------------

pub fn options(storage: &SimStorage) -> Options {
    Options::new()
        .segment_bytes(SEGMENT)
        .max_record_bytes(MAXP)
        .index_interval_bytes(16)
        .durability(Durability::EveryAppend)
        .simulated(storage)
}

pub fn open(storage: &SimStorage) -> backbone::Result<Log> {
    options(storage).open_with_codec(DIR, Raw)
}

fn seg_path(base: u64) -> PathBuf {
    Path::new(DIR).join(format!("{base:020}.seg"))
}

fn idx_path(base: u64) -> PathBuf {
    Path::new(DIR).join(format!("{base:020}.idx"))
}

/// The payload of record `i` of the base log.
fn base_payload(i: u64) -> Vec<u8> {
    pattern(i as u8, 5 + (i * 37 % 110) as usize)
}

/// A closed log of [`BASE_RECORDS`] records over several segments, with a
/// committed consumer `x`: its files and its records `(timestamp, payload)`.
pub struct Base {
    pub files: Vec<(PathBuf, Vec<u8>)>,
    pub records: Vec<(u64, Vec<u8>)>,
    /// Segment base offsets, oldest first.
    pub bases: Vec<u64>,
}

impl Base {
    fn file(&self, path: &Path) -> Option<&[u8]> {
        self.files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, b)| b.as_slice())
    }

    /// A simulator holding the base log, but for the files `skip` names.
    fn storage_without(&self, skip: &[PathBuf]) -> SimStorage {
        let s = SimStorage::new();
        for (path, bytes) in &self.files {
            if !skip.contains(path) {
                s.write_file(path, bytes);
            }
        }
        s
    }
}

pub fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(|| {
        let s = SimStorage::new();
        let log = open(&s).expect("open the base log");
        for i in 0..BASE_RECORDS {
            log.append(&base_payload(i))
                .expect("append to the base log");
        }
        log.consumer("x").unwrap().commit(10).unwrap();
        let records = log
            .read(Start::Beginning)
            .map(|r| r.map(|r| (r.timestamp.as_micros(), r.value)))
            .collect::<Result<Vec<_>, _>>()
            .expect("read the base log");
        log.close().expect("close the base log");
        let files: Vec<_> = s
            .files()
            .into_iter()
            .filter(|(p, _)| p.file_name().is_some_and(|n| n != "LOCK"))
            .map(|(p, _)| {
                let bytes = s.read_file(&p).unwrap();
                (p, bytes)
            })
            .collect();
        let mut bases: Vec<u64> = files
            .iter()
            .filter_map(|(p, _)| {
                let name = p.file_name()?.to_str()?;
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        bases.sort_unstable();
        assert!(bases.len() >= 3, "the base log should span segments");
        Base {
            files,
            records,
            bases,
        }
    })
}

fn meta_bytes() -> &'static [u8] {
    base()
        .file(&Path::new(DIR).join("META"))
        .expect("the base log has a META")
}

fn read_all(log: &Log, start: Start) -> Vec<backbone::Result<Record<Vec<u8>>>> {
    log.read(start).collect()
}

fn same(rec: &Record<Vec<u8>>, offset: u64, ts: u64, payload: &[u8]) -> bool {
    rec.offset == offset && rec.timestamp.as_micros() == ts && rec.value == payload
}

fn corrupt<T: std::fmt::Debug>(r: &backbone::Result<T>) -> bool {
    matches!(r, Err(e) if e.is_corruption())
}

// ---- frame_decode -----------------------------------------------------------

/// Fuzzed bytes as the record area of sealed segment 0, in front of an
/// empty active segment at base `end`. Opening must succeed (sealed
/// segments are not read on open), and reads, lookups and `verify` must
/// agree with the reference decoder: exactly the valid frames are returned,
/// and where records are missing or damaged a typed corruption error, never
/// a wrong or missing record.
pub fn frame_decode(data: &[u8]) -> Outcome {
    let mut inp = Input::new(data);
    let end = 1 + inp.below(24);
    let slot = match inp.below(3) {
        0 => encode_watermark(HEADER as u64, 0, 0),
        1 => encode_watermark(inp.u64(), inp.u64(), inp.u64()),
        _ => [0; 32],
    };
    let probe = inp.u64();
    let area = if inp.bool() {
        let ts = 1_000_000 + inp.below(1000);
        structured_area(&mut inp, 0, ts)
    } else {
        inp.rest().to_vec()
    };
    let mut seg = encode_segment_header(0, &slot);
    seg.extend_from_slice(&area);

    let s = SimStorage::new();
    s.write_file(&Path::new(DIR).join("META"), meta_bytes());
    s.write_file(&seg_path(0), &seg);
    let mut active = encode_segment_header(end, &encode_watermark(HEADER as u64, end, 0));
    active.resize(SEGMENT as usize, 0);
    s.write_file(&seg_path(end), &active);
    let log = open(&s).map_err(|e| format!("open with a damaged sealed segment failed: {e}"))?;
    ensure!(
        log.first_offset() == 0 && log.next_offset() == end,
        "log spans [{}, {}), expected [0, {end})",
        log.first_offset(),
        log.next_offset()
    );

    // Sequential reads from a start found by a lookup.
    let check_read = |from: u64| -> Outcome {
        let got = read_all(&log, Start::Offset(from));
        let mut expected = Vec::new();
        if let Some(first) = ref_lookup(&seg, 0, from, MAXP) {
            let (frames, _, _) = ref_chain(&seg, first.pos, from, MAXP);
            expected = frames;
        }
        expected.truncate((end - from) as usize);
        let complete = from + expected.len() as u64 == end;
        for (i, item) in got.iter().enumerate() {
            match (item, expected.get(i)) {
                (Ok(rec), Some(f)) => ensure!(
                    same(rec, f.offset, f.ts, &f.payload),
                    "read from {from}: item {i} is {rec:?}, the frame there is {f:?}"
                ),
                (Err(e), None) if e.is_corruption() && i == expected.len() && !complete => {}
                (item, f) => {
                    return Err(format!(
                        "read from {from}: item {i} is {item:?}, expected {f:?} \
                         ({} valid frames from there, segment ends at {end})",
                        expected.len()
                    ))
                }
            }
        }
        let wanted = if complete {
            expected.len()
        } else {
            expected.len() + 1
        };
        ensure!(
            got.len() == wanted,
            "read from {from} yielded {} items, expected {wanted}",
            got.len()
        );
        Ok(())
    };
    check_read(0)?;
    check_read(probe % end)?;
    for o in 0..end + 2 {
        let got = log.get(o);
        let expected = if o < end {
            ref_lookup(&seg, 0, o, MAXP)
        } else {
            None
        };
        match (&got, expected) {
            (Ok(Some(rec)), Some(f)) if same(rec, f.offset, f.ts, &f.payload) => {}
            (Err(e), None) if e.is_corruption() && o < end => {}
            (Ok(None), None) if o >= end => {}
            (got, f) => return Err(format!("get({o}) is {got:?}, reference {f:?}")),
        }
    }
    // `verify` scans the whole file: exactly `end` valid records; fewer is
    // the damage that ended them (or `SegmentTruncated`); more overlap the
    // next segment (`SegmentSequence`, named at the end of the scan with
    // the offset where the next segment starts).
    let (frames, scan_end, damage) = ref_scan(&seg, HEADER, 0, MAXP);
    let found = frames.len() as u64;
    let expected = match found.cmp(&end) {
        std::cmp::Ordering::Equal => Ok(end),
        std::cmp::Ordering::Greater => Err((
            scan_end as u64,
            end,
            CorruptionKind::SegmentSequence {
                expected: end,
                found,
            },
        )),
        std::cmp::Ordering::Less => Err((
            scan_end as u64,
            found,
            damage.unwrap_or(CorruptionKind::SegmentTruncated {
                expected_end: end,
                found_end: found,
            }),
        )),
    };
    let got = log.verify();
    let agrees = match (&got, &expected) {
        (Ok(n), Ok(e)) => n == e,
        (
            Err(Error::Corrupt {
                path,
                position,
                offset,
                kind,
            }),
            Err((p, o, k)),
        ) => *path == seg_path(0) && position == p && *offset == Some(*o) && kind == k,
        _ => false,
    };
    ensure!(
        agrees,
        "verify is {got:?}, expected {expected:?} ({found} valid records, {end} in the segment)"
    );
    Ok(())
}

// ---- segment_recover --------------------------------------------------------

/// Fuzzed bytes as the last segment of a valid log: a valid header with a
/// fresh, torn, original or forged watermark before fuzzed frames, the
/// original segment with fuzzed damage, or fuzzed bytes throughout.
/// Opening does exactly what [`ref_newest`] says: removes an unfinished
/// create (a short, zeroed or torn header with nothing after it) and ends
/// at its base; refuses a damaged header, or a watermark the frames do not
/// lead to, with the exact `Corrupt` error; otherwise it keeps every sealed
/// record, ends the log exactly where the valid frames after the watermark
/// end, reports the cut, reads back only frames that are in the file, opens
/// again cutting nothing, and appends.
pub fn segment_recover(data: &[u8]) -> Outcome {
    let b = base();
    let mut inp = Input::new(data);
    let last = *b.bases.last().expect("segments");
    let orig = b.file(&seg_path(last)).expect("last segment");
    let area_mode = inp.below(4);
    let slot: [u8; 32] = match inp.below(4) {
        0 => encode_watermark(HEADER as u64, last, 0),
        1 => [0; 32],
        2 => orig[32..64].try_into().expect("32 bytes"),
        _ => encode_watermark(
            HEADER as u64 + inp.below(1100),
            last + inp.below(48),
            inp.u64(),
        ),
    };
    let keep_index = inp.bool();
    let mut seg = match area_mode {
        0 => {
            let mut seg = encode_segment_header(last, &slot);
            let ts = b.records.last().map_or(0, |r| r.0);
            seg.extend(structured_area(&mut inp, last, ts));
            seg
        }
        1 => {
            let mut seg = orig.to_vec();
            seg[32..64].copy_from_slice(&slot);
            for _ in 0..inp.below(8) {
                let at = HEADER + inp.below((seg.len() - HEADER) as u64) as usize;
                seg[at] = inp.u8();
            }
            seg
        }
        2 => {
            let mut seg = encode_segment_header(last, &slot);
            seg.extend_from_slice(inp.rest());
            seg
        }
        _ => {
            let keep = inp.below(orig.len() as u64 + 1) as usize;
            let mut seg = orig[..keep].to_vec();
            seg.extend_from_slice(inp.rest());
            seg
        }
    };
    if inp.bool() {
        let cut = inp.below(seg.len() as u64 + 1) as usize;
        seg.truncate(cut.max(HEADER.min(seg.len())));
    }

    let mut skip = vec![seg_path(last)];
    if !keep_index {
        skip.push(idx_path(last));
    }
    let s = b.storage_without(&skip);
    s.write_file(&seg_path(last), &seg);
    let opened = open(&s);

    // The reference outcome.
    let mut ext = seg.clone();
    ext.resize(ext.len().max(SEGMENT as usize), 0);
    let index = keep_index.then(|| b.file(&idx_path(last))).flatten();
    let expected = ref_newest(&seg, &ext, last, index);
    let path = seg_path(last);
    let (log, start_pos, start_next, trusted) = match (&expected, opened) {
        (Newest::Removed, Ok(log)) => {
            ensure!(
                log.next_offset() == last,
                "an unfinished last segment removed, yet next_offset {} != {last}",
                log.next_offset()
            );
            let mut removed = vec![path.clone()];
            if index.is_some() {
                removed.push(idx_path(last));
            }
            let report = log.recovery_report();
            ensure!(
                report.removed_files == removed && report.truncated_segment.is_none(),
                "an unfinished last segment: expected {removed:?} removed, report {report:?}"
            );
            (log, HEADER, last, false)
        }
        (
            Newest::Corrupt {
                position,
                offset,
                kind,
            },
            Err(Error::Corrupt {
                path: p,
                position: got_position,
                offset: got_offset,
                kind: got_kind,
            }),
        ) if p == path
            && got_position == *position
            && got_offset == *offset
            && got_kind == *kind =>
        {
            return Ok(())
        }
        (
            Newest::Version(v),
            Err(Error::UnsupportedVersion {
                path: p,
                found,
                supported,
            }),
        ) if p == path && found == *v && supported == 1 => return Ok(()),
        (&Newest::Scan { pos, next, trusted }, Ok(log)) => (log, pos, next, trusted),
        (expected, opened) => {
            return Err(format!(
                "last segment: expected {expected:?}, open gave {:?}",
                opened.map(|l| (l.next_offset(), l.recovery_report().clone()))
            ))
        }
    };
    let removed = expected == Newest::Removed;
    let (chain, chain_end, damaged) = if removed {
        (Vec::new(), HEADER, false)
    } else {
        ref_chain(&ext, start_pos, start_next, MAXP)
    };
    let expected_next = start_next + chain.len() as u64;
    ensure!(
        log.first_offset() == 0 && log.next_offset() == expected_next,
        "recovered [{}, {}), expected [0, {expected_next}): watermark ({start_pos}, \
         {start_next}), {} valid frames after it",
        log.first_offset(),
        log.next_offset(),
        chain.len()
    );
    let report = log.recovery_report().clone();
    if !removed {
        if let Some(at) = report.truncated_at {
            ensure!(
                at == chain_end as u64,
                "cut at {at}, the valid frames end at {chain_end}: {report:?}"
            );
            let last_nonzero = ext[chain_end..]
                .iter()
                .rposition(|&x| x != 0)
                .map_or(0, |i| i + 1);
            ensure!(
                report.truncated_bytes == last_nonzero as u64,
                "reported {} truncated bytes, {last_nonzero} non-zero bytes were cut",
                report.truncated_bytes
            );
        } else {
            ensure!(
                !damaged,
                "the frames after the watermark end in damage at {chain_end}, \
                 yet nothing was reported cut: {report:?}"
            );
            // Nothing reported cut, so nothing was there: after a crash the
            // whole rest of the segment is searched; after a close (a closed
            // watermark where the records end) only the next 4 KiB.
            let searched = if closed_at(&seg) == Some(chain_end as u64) {
                (chain_end + 4096).min(ext.len())
            } else {
                ext.len()
            };
            ensure!(
                ext[chain_end..searched].iter().all(|&x| x == 0),
                "non-zero bytes after the records (which end at {chain_end}) were \
                 cut without a report: {report:?}"
            );
        }
    }
    check_recovered(&log, b, last, &ext, trusted.then_some(start_next), &chain)?;
    let records: Vec<_> = log.read(Start::Beginning).collect();
    drop(log);

    // Idempotent: a second open finds nothing to cut.
    let log = open(&s).map_err(|e| format!("second open failed: {e}"))?;
    let report = log.recovery_report();
    ensure!(
        report.truncated_segment.is_none() && report.truncated_bytes == 0,
        "the second open cut again: {report:?}"
    );
    ensure!(
        log.next_offset() == expected_next,
        "second open: next_offset {} != {expected_next}",
        log.next_offset()
    );
    let again: Vec<_> = log.read(Start::Beginning).collect();
    ensure!(
        format!("{again:?}") == format!("{records:?}"),
        "the second open reads otherwise"
    );
    // And the recovered log takes appends.
    let at = log
        .append(&b"after recovery".to_vec())
        .map_err(|e| format!("append after recovery: {e}"))?;
    ensure!(at == expected_next, "appended at {at}, not {expected_next}");
    drop(log);
    let log = open(&s).map_err(|e| format!("third open failed: {e}"))?;
    match log.get(at) {
        Ok(Some(rec)) if rec.value == b"after recovery" => Ok(()),
        other => Err(format!("the append after recovery reads back as {other:?}")),
    }
}

/// The records of a recovered log: the sealed ones as appended; in the last
/// segment, the reference chain (and, before a trusted watermark's `next`,
/// either a typed error or frames that are in the file).
fn check_recovered(
    log: &Log,
    b: &Base,
    last: u64,
    file: &[u8],
    trusted_next: Option<u64>,
    chain: &[RefFrame],
) -> Outcome {
    let next = log.next_offset();
    let mut expected_offset = 0;
    for item in log.read(Start::Beginning) {
        let o = expected_offset;
        match item {
            Ok(rec) => {
                ensure!(
                    rec.offset == o,
                    "read yielded offset {} for {o}",
                    rec.offset
                );
                if o < last {
                    let (ts, p) = &b.records[o as usize];
                    ensure!(same(&rec, o, *ts, p), "sealed record {o} reads {rec:?}");
                } else if o >= trusted_next.unwrap_or(last) {
                    let t = trusted_next.unwrap_or(last);
                    let Some(f) = chain.get((o - t) as usize) else {
                        return Err(format!("record {o} ({rec:?}) past the valid frames"));
                    };
                    ensure!(
                        same(&rec, f.offset, f.ts, &f.payload),
                        "record {o} is {rec:?}, the valid frame there is {f:?}"
                    );
                } else {
                    // Before a trusted watermark: it must be in the file.
                    let frame = encode_frame(rec.offset, rec.timestamp.as_micros(), &rec.value);
                    ensure!(
                        file.windows(frame.len()).any(|w| w == frame.as_slice()),
                        "record {o} ({rec:?}) is not a frame of the file"
                    );
                }
            }
            Err(e) => {
                ensure!(
                    e.is_corruption() && trusted_next.is_some_and(|t| o >= last && o < t),
                    "reading offset {o} failed: {e}"
                );
                return Ok(());
            }
        }
        expected_offset += 1;
    }
    ensure!(
        expected_offset == next,
        "read yielded offsets up to {expected_offset}, the log ends at {next}"
    );
    Ok(())
}

// ---- dir_recover ------------------------------------------------------------

const JUNK_NAMES: [&str; 10] = [
    "META",
    "META.tmp",
    "LOCK",
    "x.consumer",
    "y.consumer",
    "junk",
    "0.seg",
    "00000000000000000000.idx.tmp",
    "00000000000000000000.77.damaged",
    "99999999999999999999.seg",
];

/// A directory of 1-6 files with plausible names (META, the segments and
/// indexes of the base log and one more, consumers, temporaries, junk) and
/// original, damaged, truncated, empty or fuzzed contents. Opening never
/// panics; without META but with segment files it is `NotALog`; if it
/// opens, reads yield contiguous offsets and only the records appended
/// there, up to a typed error, `verify` agrees with them, orphaned indexes
/// are gone, consumers sit inside the log, and a second open cuts nothing.
pub fn dir_recover(data: &[u8]) -> Outcome {
    let b = base();
    let mut inp = Input::new(data);
    let mut names: Vec<String> = JUNK_NAMES.iter().map(|s| s.to_string()).collect();
    let mut bases = b.bases.clone();
    bases.push(*bases.last().expect("segments") + 7);
    for base in bases {
        names.push(format!("{base:020}.seg"));
        names.push(format!("{base:020}.idx"));
    }
    let s = SimStorage::new();
    let count = 1 + inp.below(6);
    let mut planted = Vec::new();
    for _ in 0..count {
        let name = &names[inp.below(names.len() as u64) as usize];
        let path = Path::new(DIR).join(name);
        let original = b.file(&path).map(<[u8]>::to_vec);
        let bytes = match (inp.below(5), original) {
            (0 | 1, Some(bytes)) => bytes,
            (2, Some(mut bytes)) => {
                for _ in 0..1 + inp.below(6) {
                    if !bytes.is_empty() {
                        let at = inp.below(bytes.len() as u64) as usize;
                        bytes[at] ^= inp.u8() | 1;
                    }
                }
                bytes
            }
            (3, Some(mut bytes)) => {
                bytes.truncate(inp.below(bytes.len() as u64 + 1) as usize);
                bytes
            }
            (4, _) => Vec::new(),
            _ => {
                let n = inp.below(200) as usize;
                inp.bytes(n).to_vec()
            }
        };
        s.write_file(&path, &bytes);
        planted.push(name.clone());
    }
    let has_meta = planted.iter().any(|n| n == "META");
    // Segment and index files, or names the log does not know: without
    // META the directory is not a log (docs/FORMAT.md, "The directory").
    let not_ours = planted.iter().any(|n| {
        let numbered =
            n.len() == 24 && (n.ends_with(".seg") || n.ends_with(".idx")) && n.starts_with('0');
        numbered || ["junk", "0.seg", "99999999999999999999.seg"].contains(&n.as_str())
    });

    let log = match open(&s) {
        Ok(log) => log,
        Err(e) => {
            if !has_meta && not_ours {
                ensure!(
                    matches!(e, Error::NotALog { .. }),
                    "files without META: {e:?}, expected NotALog (planted {planted:?})"
                );
            }
            // Any other typed error is an acceptable refusal.
            return Ok(());
        }
    };
    ensure!(
        has_meta || !not_ours,
        "opened a directory with foreign or segment files and no META: {planted:?}"
    );
    let (first, next) = (log.first_offset(), log.next_offset());
    let mut offset = first;
    let mut complete = true;
    for item in log.read(Start::Beginning) {
        match item {
            Ok(rec) => {
                ensure!(
                    rec.offset == offset,
                    "read yielded {} for {offset}",
                    rec.offset
                );
                let Some((ts, p)) = b.records.get(offset as usize) else {
                    return Err(format!("phantom record {rec:?} (planted {planted:?})"));
                };
                ensure!(
                    same(&rec, offset, *ts, p),
                    "record {offset} reads {rec:?}, appended {p:?} (planted {planted:?})"
                );
                offset += 1;
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    ensure!(
        !complete || offset == next,
        "read ended at {offset}, the log ends at {next}"
    );
    match log.verify() {
        Ok(n) => ensure!(
            complete && n == next - first,
            "verify counted {n}, read was complete: {complete} up to {offset} of [{first}, {next})"
        ),
        Err(e) => ensure!(
            !complete && e.is_corruption(),
            "verify failed ({e}) but the whole log read fine"
        ),
    }
    for name in ["x", "y"] {
        if let Ok(c) = log.consumer(name) {
            // Past the end it is clamped; below the first offset it stays
            // (records it had not passed are gone) and its reads say so.
            let p = c.position();
            ensure!(p <= next, "consumer {name} at {p}, past the end {next}");
            if p < first {
                let read: Vec<_> = c.read().take(1).collect();
                ensure!(
                    matches!(&read[..], [Err(Error::OffsetTruncated { requested, first: f })]
                        if *requested == p && *f == first),
                    "consumer {name} at {p} below {first}: its read gave {read:?}"
                );
            }
        }
    }
    let files: Vec<String> = s
        .files()
        .iter()
        .filter_map(|(p, _)| Some(p.file_name()?.to_str()?.to_owned()))
        .collect();
    for f in &files {
        if let Some(stem) = f.strip_suffix(".idx") {
            ensure!(
                files.contains(&format!("{stem}.seg")),
                "orphaned index {f} left: {files:?}"
            );
        }
        ensure!(!f.ends_with(".tmp"), "temporary {f} left: {files:?}");
    }
    drop(log);
    let log = open(&s).map_err(|e| format!("second open failed: {e}"))?;
    let report = log.recovery_report();
    ensure!(
        report.truncated_segment.is_none() && log.next_offset() == next,
        "second open: next {} (was {next}), {report:?}",
        log.next_offset()
    );
    Ok(())
}

// ---- index_parse ------------------------------------------------------------

/// A valid log whose index file of one segment (sealed or active) is fuzzed:
/// fuzzed bytes, a valid header before fuzzed or structured entries, or the
/// original with fuzzed damage or cut short. Opening succeeds, and every
/// `get`, every `read` from an offset and every `read` from a timestamp
/// equals what a sequential read of the records gives; again after a
/// reopen.
pub fn index_parse(data: &[u8]) -> Outcome {
    let b = base();
    let mut inp = Input::new(data);
    let which = b.bases[inp.below(b.bases.len() as u64) as usize];
    let path = idx_path(which);
    let orig = b.file(&path).map(<[u8]>::to_vec).unwrap_or_default();
    let header = || {
        let mut h = vec![0u8; 32];
        h[..8].copy_from_slice(b"BBONEIDX");
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[16..24].copy_from_slice(&which.to_le_bytes());
        let crc = crc32fast::hash(&h[..24]);
        h[24..28].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let ts0 = b.records.first().map_or(0, |r| r.0);
    let bytes = match inp.below(5) {
        0 => inp.rest().to_vec(),
        1 => {
            let mut h = header();
            h.extend_from_slice(inp.rest());
            h
        }
        2 => {
            let mut bytes = orig.clone();
            for _ in 0..1 + inp.below(8) {
                if bytes.len() > 32 {
                    let at = 32 + inp.below(bytes.len() as u64 - 32) as usize;
                    bytes[at] = inp.u8();
                }
            }
            bytes
        }
        3 => {
            let mut bytes = orig.clone();
            bytes.truncate(inp.below(bytes.len() as u64 + 1) as usize);
            bytes
        }
        _ => {
            let mut h = header();
            while !inp.is_empty() {
                let rel = inp.below(24) as u32;
                let pos = inp.below(SEGMENT + 64) as u32;
                let ts = ts0.wrapping_add(inp.below(4000)).wrapping_sub(100);
                h.extend_from_slice(&rel.to_le_bytes());
                h.extend_from_slice(&pos.to_le_bytes());
                h.extend_from_slice(&ts.to_le_bytes());
            }
            h
        }
    };
    let s = b.storage_without(&[]);
    s.write_file(&path, &bytes);
    for round in 0..2 {
        let log = open(&s).map_err(|e| format!("open {round} with a fuzzed index: {e}"))?;
        check_lookups(&log, &b.records).map_err(|e| format!("open {round}: {e}"))?;
    }
    Ok(())
}

fn check_lookups(log: &Log, records: &[(u64, Vec<u8>)]) -> Outcome {
    let n = records.len() as u64;
    ensure!(
        log.first_offset() == 0 && log.next_offset() == n,
        "log is [{}, {}), appended [0, {n})",
        log.first_offset(),
        log.next_offset()
    );
    // A lookup from `start` must land on `from`, and the records from there
    // must be the ones appended (the first few; the whole log once).
    let expect_from = |start: Start, from: u64, take: usize| -> Outcome {
        let mut cursor = log.read(start);
        if let Start::Offset(o) = start {
            if o > n {
                // A start past the end is an error, the cursor's one item.
                let got: Vec<_> = cursor.collect();
                ensure!(
                    matches!(&got[..], [Err(Error::OffsetOutOfRange { requested, next })]
                        if *requested == o && *next == n),
                    "read({start:?}) past the end {n}: {got:?}"
                );
                return Ok(());
            }
        }
        ensure!(
            cursor.position() == from.min(n) && cursor.end() == n,
            "read({start:?}) starts at {} (ends {}), expected {from}",
            cursor.position(),
            cursor.end()
        );
        for o in from..n.min(from + take as u64) {
            let (ts, p) = &records[o as usize];
            match cursor.next() {
                Some(Ok(rec)) if same(&rec, o, *ts, p) => {}
                other => return Err(format!("read({start:?}) at {o}: {other:?}")),
            }
        }
        if from + take as u64 >= n {
            let rest = cursor.next();
            ensure!(
                rest.is_none(),
                "read({start:?}) goes on past the end: {rest:?}"
            );
        }
        Ok(())
    };
    expect_from(Start::Beginning, 0, records.len())?;
    for o in 0..n + 2 {
        let got = log.get(o);
        match (&got, records.get(o as usize)) {
            (Ok(Some(rec)), Some((ts, p))) if same(rec, o, *ts, p) => {}
            (Ok(None), None) => {}
            (got, _) => return Err(format!("get({o}) is {got:?}")),
        }
        expect_from(Start::Offset(o), o, 3)?;
    }
    let mut times: Vec<u64> = vec![0, u64::MAX];
    for (ts, _) in records {
        times.extend([ts.saturating_sub(1), *ts, ts + 1]);
    }
    times.sort_unstable();
    times.dedup();
    for t in times {
        let from = records
            .iter()
            .position(|r| r.0 >= t)
            .unwrap_or(records.len()) as u64;
        expect_from(Start::Timestamp(Timestamp::from_micros(t)), from, 3)?;
    }
    Ok(())
}

// ---- api_ops ------------------------------------------------------------------

/// `BACKBONE_ORACLE_VERBOSE=1`: print every operation of `api_ops` as it runs.
fn verbose() -> bool {
    static VERBOSE: OnceLock<bool> = OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("BACKBONE_ORACLE_VERBOSE").is_some())
}

const NAMES: [&str; 2] = ["a", "b"];
/// So long that the background sync never runs during a case.
const INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug, Default)]
struct ConsumerModel {
    stored: u64,
    /// A commit that failed may or may not have reached the disk.
    maybe: Option<u64>,
}

#[derive(Debug, Default)]
struct Model {
    records: Vec<Vec<u8>>,
    first: u64,
    /// A failed `truncate_before` may have moved the first offset up to here.
    first_maybe: Option<u64>,
    /// Acknowledged durable: a power loss keeps offsets below.
    durable: u64,
    /// Reached the OS: a process crash keeps offsets below.
    written: u64,
    /// Appends that failed: any prefix of them may be in the log.
    maybe: Vec<Vec<u8>>,
    consumers: BTreeMap<&'static str, ConsumerModel>,
}

impl Model {
    fn next(&self) -> u64 {
        self.records.len() as u64
    }

    fn pick(&self, k: u64) -> u64 {
        if k == u64::MAX {
            k
        } else {
            k % (self.next() + 3)
        }
    }
}

struct Api {
    storage: SimStorage,
    opts: (u64, Durability, u32),
    log: Option<Log>,
    m: Model,
    armed: bool,
    trace: Vec<String>,
}

impl Api {
    fn open(&self, storage: &SimStorage) -> backbone::Result<Log> {
        let (segment, durability, interval) = self.opts;
        Options::new()
            .segment_bytes(segment)
            .max_record_bytes(100)
            .index_interval_bytes(interval)
            .durability(durability)
            // The harness receives on the thread that closes: a close
            // could only wait out its timeout.
            .close_timeout(Duration::ZERO)
            .simulated(storage)
            .open_with_codec(DIR, Raw)
    }

    fn log(&self) -> &Log {
        self.log.as_ref().expect("an open log")
    }

    fn after_append(&mut self) {
        let next = self.m.next();
        match self.opts.1 {
            Durability::EveryAppend => {
                self.m.durable = next;
                self.m.written = next;
            }
            Durability::Interval(_) => self.m.written = next,
            _ => {}
        }
    }

    /// Checks an append's result; `Err(None)`: it failed under a fault.
    fn appended(
        &mut self,
        batch: &[Vec<u8>],
        result: backbone::Result<std::ops::Range<u64>>,
    ) -> Result<(), Option<String>> {
        let next = self.m.next();
        let too_large = batch.iter().find(|p| p.len() > 100);
        match (result, too_large) {
            (Ok(range), None) => {
                let expected = next..next + batch.len() as u64;
                if range != expected {
                    return Err(Some(format!("appended at {range:?}, model {expected:?}")));
                }
                self.m.records.extend(batch.iter().cloned());
                if !batch.is_empty() {
                    self.after_append();
                }
                Ok(())
            }
            (Err(Error::RecordTooLarge { size, .. }), Some(p)) if size == p.len() => Ok(()),
            // A batch holding a record too large is refused whole; but a
            // log the armed fault has already poisoned says so first. The
            // fault may have struck a flush the oracle did not see fail: a
            // read's (which keeps what was published and reads on) or one
            // by a subscription's read.
            (Err(e), too_large) if self.armed && e.io_kind().is_some() => {
                self.m.maybe = match too_large {
                    None => batch.to_vec(),
                    Some(_) => Vec::new(),
                };
                Err(None)
            }
            (other, _) => Err(Some(format!(
                "append of {} records: {other:?}",
                batch.len()
            ))),
        }
    }

    /// Checks the log as opened after a crash or a fault: `lower <= next <=
    /// appended (+ the failed appends)`, the records, the first offset, the
    /// consumers. The model then adopts what survived.
    fn recovered(&mut self, lower: u64) -> Outcome {
        let log = self.log();
        let (first, next) = (log.first_offset(), log.next_offset());
        let upper = self.m.next() + self.m.maybe.len() as u64;
        ensure!(
            lower <= next && next <= upper,
            "recovered next_offset {next} outside [{lower}, {upper}] (durable {}, written {}, \
             {} failed appends); {:?}",
            self.m.durable,
            self.m.written,
            self.m.maybe.len(),
            log.recovery_report()
        );
        let first_hi = self.m.first_maybe.unwrap_or(self.m.first).max(self.m.first);
        ensure!(
            first >= self.m.first && first <= first_hi,
            "recovered first_offset {first}, model {} (up to {first_hi})",
            self.m.first
        );
        ensure!(
            log.durable_offset() == next,
            "after recovery durable_offset {} != next_offset {next}",
            log.durable_offset()
        );
        let maybe = std::mem::take(&mut self.m.maybe);
        self.m.records.truncate(next as usize);
        let extra = next as usize - self.m.records.len();
        self.m.records.extend(maybe.into_iter().take(extra));
        self.m.first = first;
        self.m.first_maybe = None;
        self.m.durable = next;
        self.m.written = next;
        self.check_all()?;
        let log = self.log();
        let verified = log.verify().map_err(|e| format!("verify: {e}"))?;
        ensure!(verified == next - first, "verify counted {verified}");
        let names: Vec<&'static str> = self.m.consumers.keys().copied().collect();
        for name in names {
            let c = self
                .log()
                .consumer(name)
                .map_err(|e| format!("consumer {name}: {e}"))?;
            let model = self.m.consumers[name].clone();
            let ok = |stored: u64| stored <= next && c.position() == stored.min(next.max(first));
            ensure!(
                ok(model.stored) || model.maybe.is_some_and(ok),
                "consumer {name} at {} after recovery; its commits: {model:?}, log [{first}, {next})",
                c.position()
            );
            let stored = c.position();
            self.m.consumers.insert(
                name,
                ConsumerModel {
                    stored,
                    maybe: None,
                },
            );
        }
        Ok(())
    }

    fn check_all(&self) -> Outcome {
        let log = self.log();
        let (first, next) = (self.m.first, self.m.next());
        ensure!(
            log.first_offset() == first && log.next_offset() == next,
            "log [{}, {}), model [{first}, {next})",
            log.first_offset(),
            log.next_offset()
        );
        let mut o = first;
        for item in log.read(Start::Beginning) {
            let rec = item.map_err(|e| format!("read at {o}: {e}"))?;
            ensure!(
                rec.offset == o && rec.value == self.m.records[o as usize],
                "read {rec:?} at {o}, model {:?}",
                self.m.records[o as usize]
            );
            o += 1;
        }
        ensure!(o == next, "read ended at {o}, model at {next}");
        Ok(())
    }

    /// After an operation failed under an injected fault: disarm, drop the
    /// log and open it again on the same disk (a restart of the process),
    /// which must succeed and keep what reached the OS.
    fn resolve_fault(&mut self) -> Outcome {
        self.storage.clear_faults();
        self.armed = false;
        self.log = None;
        let log = self
            .open(&self.storage)
            .map_err(|e| format!("reopen after a fault failed: {e}"))?;
        self.log = Some(log);
        self.recovered(self.m.written.min(self.m.next()))
    }

    fn crash(&mut self, mode: CrashMode, seed: u64) -> Outcome {
        let mut lower = self.m.durable.max(self.log().durable_offset());
        if mode == CrashMode::ProcessCrash {
            lower = lower.max(self.m.written);
        }
        let image = self.storage.crash(seed, mode);
        self.log = None;
        self.armed = false;
        self.storage = image;
        if verbose() {
            eprintln!("    crash image: {:?}", self.storage.files());
        }
        let log = self
            .open(&self.storage)
            .map_err(|e| format!("open after a {mode:?} crash failed: {e}"))?;
        if verbose() {
            eprintln!("    recovered: {:?}", log.recovery_report());
            eprintln!("    files: {:?}", self.storage.files());
        }
        self.log = Some(log);
        self.recovered(lower)
    }

    /// One operation; `Err(None)` when it failed under an injected fault.
    fn step(&mut self, inp: &mut Input<'_>) -> Result<(), Option<String>> {
        let next = self.m.next();
        let payload = |inp: &mut Input<'_>| {
            let len = if inp.below(16) == 0 {
                101 + inp.below(3) as usize
            } else {
                inp.below(101) as usize
            };
            pattern(inp.u8(), len)
        };
        let io_fault = |armed: bool, e: &Error| armed && e.io_kind().is_some();
        let op = inp.below(17);
        match op {
            0..=4 => {
                let p = payload(inp);
                self.trace.push(format!("append {}", p.len()));
                let r = self.log().append(&p).map(|o| o..o + 1);
                self.appended(&[p], r)?;
            }
            5 | 6 => {
                let batch: Vec<_> = (0..inp.below(6)).map(|_| payload(inp)).collect();
                self.trace.push(format!("batch {}", batch.len()));
                let r = self.log().append_batch(&batch);
                self.appended(&batch, r)?;
            }
            7 | 8 => {
                self.trace
                    .push(if op == 7 { "sync" } else { "flush" }.into());
                let r = if op == 7 {
                    self.log().sync()
                } else {
                    self.log().flush()
                };
                match r {
                    Ok(()) => {
                        if op == 7 {
                            self.m.durable = next;
                        }
                        self.m.written = next;
                    }
                    Err(e) if io_fault(self.armed, &e) => return Err(None),
                    Err(e) => return Err(Some(format!("sync/flush: {e}"))),
                }
            }
            9 => {
                let o = self.m.pick(inp.u64());
                self.trace.push(format!("get {o}"));
                match self.log().get(o) {
                    Ok(got) => {
                        let expected = (o >= self.m.first && o < next)
                            .then(|| self.m.records[o as usize].clone());
                        if got.as_ref().map(|r| &r.value) != expected.as_ref()
                            || got.is_some_and(|r| r.offset != o)
                        {
                            return Err(Some(format!("get({o}) disagrees, model {expected:?}")));
                        }
                    }
                    Err(e) if io_fault(self.armed, &e) => return Err(None),
                    Err(e) => return Err(Some(format!("get({o}): {e}"))),
                }
            }
            10 => {
                let o = self.m.pick(inp.u64());
                self.trace.push(format!("read from {o}"));
                let got: Vec<_> = self.log().read(Start::Offset(o)).collect();
                if o > next {
                    let ok = matches!(&got[..], [Err(Error::OffsetOutOfRange { requested, next: n })]
                        if *requested == o && *n == next);
                    if !ok
                        && !got
                            .iter()
                            .any(|r| matches!(r, Err(e) if io_fault(self.armed, e)))
                    {
                        return Err(Some(format!("read past the end {next}: {got:?}")));
                    }
                } else if o < self.m.first {
                    let ok = matches!(&got[..], [Err(Error::OffsetTruncated { requested, first })]
                        if *requested == o && *first == self.m.first);
                    if !ok
                        && !got
                            .iter()
                            .any(|r| matches!(r, Err(e) if io_fault(self.armed, e)))
                    {
                        return Err(Some(format!("read below first {}: {got:?}", self.m.first)));
                    }
                } else {
                    let mut at = o.min(next);
                    for item in got {
                        match item {
                            Ok(rec)
                                if rec.offset == at && rec.value == self.m.records[at as usize] =>
                            {
                                at += 1
                            }
                            Err(e) if io_fault(self.armed, &e) => return Err(None),
                            other => return Err(Some(format!("read from {o}: {other:?} at {at}"))),
                        }
                    }
                    if at != next {
                        return Err(Some(format!("read from {o} ended at {at}, model {next}")));
                    }
                }
            }
            11 => {
                let close = inp.bool();
                self.trace.push(format!("reopen close={close}"));
                let log = self.log.take().expect("open log");
                if close {
                    match log.close() {
                        Ok(_) => self.m.durable = next,
                        Err(e) if io_fault(self.armed, &e) => return Err(None),
                        Err(e) => return Err(Some(format!("close: {e}"))),
                    }
                } else {
                    drop(log);
                }
                if !self.armed {
                    // Dropping the last handle writes buffered appends out.
                    self.m.written = next;
                }
                match self.open(&self.storage) {
                    Ok(log) => self.log = Some(log),
                    Err(e) if io_fault(self.armed, &e) => return Err(None),
                    Err(e) => return Err(Some(format!("reopen: {e}"))),
                }
                if self.armed {
                    // What the drop or close wrote out under the fault is
                    // unknown: settle it as after a failure.
                    return Err(None);
                }
                self.check_all().map_err(Some)?;
                if close && !self.log().recovery_report().is_clean() {
                    return Err(Some(format!(
                        "reopen after close: {:?}",
                        self.log().recovery_report()
                    )));
                }
            }
            12 => {
                let o = self.m.pick(if inp.below(8) == 0 {
                    u64::MAX
                } else {
                    inp.u64()
                });
                self.trace.push(format!("truncate_before {o}"));
                let old = self.m.first;
                match self.log().truncate_before(o) {
                    Ok(first) => {
                        let bound = old.max(o.min(next));
                        if first < old || first > bound || first != self.log().first_offset() {
                            return Err(Some(format!(
                                "truncate_before({o}) moved first from {old} to {first}"
                            )));
                        }
                        self.m.first = first;
                    }
                    Err(e) if io_fault(self.armed, &e) => {
                        self.m.first_maybe = Some(old.max(o.min(next)));
                        return Err(None);
                    }
                    Err(e) => return Err(Some(format!("truncate_before({o}): {e}"))),
                }
            }
            13 => {
                let name = NAMES[inp.below(2) as usize];
                let at = self.m.pick(inp.u64());
                self.trace.push(format!("commit {name} {at}"));
                let handle = match self.log().consumer(name) {
                    Ok(h) => h,
                    Err(e) if io_fault(self.armed, &e) => return Err(None),
                    Err(e) => return Err(Some(format!("consumer {name}: {e}"))),
                };
                let first = self.m.first;
                // Unknown to the model: new, or created by an open that then
                // failed (after its rename), at the first offset of that
                // time, which retention may have passed since.
                let c = self.m.consumers.entry(name).or_insert(ConsumerModel {
                    stored: handle.position().min(first),
                    maybe: None,
                });
                let expected = c.stored.min(next.max(first));
                if handle.position() != expected && handle.position() != c.stored {
                    return Err(Some(format!(
                        "consumer {name} at {}, model {expected}",
                        handle.position()
                    )));
                }
                let position = handle.position();
                match handle.commit(at) {
                    // Commits never move a position back.
                    Err(Error::CommitBehind {
                        position: p,
                        requested,
                        ..
                    }) if at < position && p == position && requested == at => {}
                    Err(Error::OffsetTruncated {
                        requested,
                        first: f,
                    }) if at > position && at < first && requested == at && f == first => {}
                    Ok(()) if at == position => {}
                    Ok(()) if at <= next && at > position && at >= first => {
                        c.stored = at;
                        self.m.durable = self.m.durable.max(at);
                        self.m.written = self.m.written.max(at);
                    }
                    Err(Error::OffsetOutOfRange { requested, next: n })
                        if at > next && requested == at && n == next => {}
                    Err(e) if io_fault(self.armed, &e) && at <= next => {
                        c.maybe = Some(at);
                        return Err(None);
                    }
                    other => return Err(Some(format!("commit({at}) at {next}: {other:?}"))),
                }
            }
            14 => {
                let mode = CrashMode::ALL[inp.below(4) as usize];
                let seed = inp.u64();
                self.trace.push(format!("crash {mode:?} {seed}"));
                self.crash(mode, seed).map_err(Some)?;
            }
            15 => {
                let kind = [
                    FaultKind::Eio,
                    FaultKind::Enospc,
                    FaultKind::Erofs,
                    FaultKind::Eacces,
                    FaultKind::Eintr,
                    FaultKind::ShortWrite,
                ][inp.below(6) as usize];
                let only = match inp.below(6) {
                    0 => Some(OpKind::Write),
                    1 => Some(OpKind::SyncData),
                    2 => Some(OpKind::SyncDir),
                    3 => Some(OpKind::Open),
                    _ => None,
                };
                let fault = Fault {
                    after: 1 + inp.below(40),
                    kind,
                    persistent: inp.bool(),
                    only,
                };
                self.trace.push(format!("inject {fault:?}"));
                self.storage.inject(fault);
                self.armed = true;
            }
            _ => {
                if self.armed {
                    return Ok(());
                }
                let o = self.m.pick(inp.u64());
                self.trace.push(format!("subscribe from {o}"));
                self.log()
                    .flush()
                    .map_err(|e| Some(format!("flush: {e}")))?;
                self.m.written = next;
                let sub = self.log().subscribe(Start::Offset(o));
                let wait = Duration::from_secs(10);
                // A start outside the log is refused at once.
                if o < self.m.first || o > next {
                    let ok = match &sub {
                        Err(Error::OffsetTruncated { requested, first }) => {
                            *requested == o && *first == self.m.first
                        }
                        Err(Error::OffsetOutOfRange { requested, next: n }) => {
                            *requested == o && *n == next
                        }
                        _ => false,
                    };
                    if !ok {
                        return Err(Some(format!(
                            "subscribe from {o} outside [{}, {next}]: {sub:?}",
                            self.m.first
                        )));
                    }
                } else {
                    let sub = sub.map_err(|e| Some(format!("subscribe: {e}")))?;
                    for at in o.min(next)..next {
                        match sub.recv_timeout(wait) {
                            Ok(Some(rec))
                                if rec.offset == at && rec.value == self.m.records[at as usize] => {
                            }
                            other => return Err(Some(format!("subscription at {at}: {other:?}"))),
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A sequence of operations (appends, batches, syncs, flushes, gets, reads,
/// reopens, `truncate_before`, consumer commits, subscriptions, crashes of
/// every mode, injected faults) decoded from the bytes, each checked
/// against an in-memory model. An operation that fails under an injected
/// fault must fail with an I/O error; the log is then reopened on the same
/// disk and must hold everything that reached the OS. After a crash it must
/// hold everything acknowledged durable and nothing that was not appended.
pub fn api_ops(data: &[u8]) -> Outcome {
    let mut inp = Input::new(data);
    let durability = match inp.below(3) {
        0 => Durability::EveryAppend,
        1 => Durability::Interval(INTERVAL),
        _ => Durability::Buffered,
    };
    let opts = (512 + inp.below(1537), durability, 1 + inp.below(256) as u32);
    let mut api = Api {
        storage: SimStorage::new(),
        opts,
        log: None,
        m: Model::default(),
        armed: false,
        trace: Vec::new(),
    };
    let log = api
        .open(&api.storage)
        .map_err(|e| format!("first open: {e}"))?;
    api.log = Some(log);
    let context = |api: &Api, e: String| {
        let start = api.trace.len().saturating_sub(40);
        format!(
            "{opts:?}: {e}\nlast operations: {}",
            api.trace[start..].join("; ")
        )
    };
    let mut ops = 0;
    while !inp.is_empty() && ops < 200 {
        ops += 1;
        let result = api.step(&mut inp);
        if verbose() {
            let log = api.log.as_ref();
            eprintln!(
                "{:?} -> {result:?}; log next {:?} durable {:?}; model next {} durable {} written {}",
                api.trace.last(),
                log.map(|l| l.next_offset()),
                log.map(|l| l.durable_offset()),
                api.m.next(),
                api.m.durable,
                api.m.written
            );
            eprintln!("    files: {:?}", api.storage.files());
        }
        match result {
            Ok(()) => {}
            Err(None) => api.resolve_fault().map_err(|e| context(&api, e))?,
            Err(Some(e)) => return Err(context(&api, e)),
        }
    }
    // A final power loss, to check what was acknowledged durable.
    let mode = CrashMode::PowerLossReorder;
    if verbose() {
        eprintln!(
            "final crash: pending ops {}",
            api.storage.pending_op_count()
        );
    }
    api.crash(mode, 7).map_err(|e| context(&api, e))
}
