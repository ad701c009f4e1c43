//! Damage tests of the storage core: every kind of on-disk damage must end
//! in either the log opening with exactly the longest intact prefix of what
//! was appended, or a clear typed error naming the file (and byte position).
//! Never a wrong record, a panic, or a silently shortened log.
//!
//! Byte-level payloads (the `Raw` codec) keep every expected byte known.
//! Exhaustive and random sweeps run on the simulator; the rest on real files.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::common::{open_raw, payload, SplitMix as Rng};
use backbone::sim::SimStorage;
use backbone::{
    Checkpoint, CorruptionKind, Durability, Error, EventLog, Options, Raw, RecoveryMode, Start,
    Timestamp,
};

const SEED: u64 = 0xDA3A_6E5E;
const HEADER: usize = 64;
/// docs/FORMAT.md: the segment format version this build writes (it reads
/// 1 and 2), and the one after it, which it must refuse.
const SEGMENT_VERSION: u32 = 2;
const NEWER_VERSION: u32 = 3;
/// The flags word of a version-2 segment header: the checksum kind, CRC-32.
const CHECKSUM_CRC32: u8 = 1;
const SIM_DIR: &str = "/log";

type RawLog = EventLog<Vec<u8>, Raw>;

fn small() -> Options {
    Options::new()
        .segment_bytes(4096)
        .max_record_bytes(512)
        .index_interval_bytes(256)
}

// ---- the disk under test: the simulator or a real directory -----------------

enum Disk {
    Sim(SimStorage),
    Real,
}

impl Disk {
    fn options(&self, options: Options) -> Options {
        match self {
            Disk::Sim(storage) => options.simulated(storage),
            Disk::Real => options,
        }
    }

    fn read(&self, path: &Path) -> Vec<u8> {
        match self {
            Disk::Sim(storage) => storage
                .read_file(path)
                .unwrap_or_else(|| panic!("no file {}", path.display())),
            Disk::Real => std::fs::read(path).unwrap(),
        }
    }

    fn write(&self, path: &Path, bytes: &[u8]) {
        match self {
            Disk::Sim(storage) => storage.write_file(path, bytes),
            Disk::Real => std::fs::write(path, bytes).unwrap(),
        }
    }

    fn remove(&self, path: &Path) {
        match self {
            Disk::Sim(storage) => storage.remove_file_durably(path),
            Disk::Real => std::fs::remove_file(path).unwrap(),
        }
    }

    fn exists(&self, path: &Path) -> bool {
        match self {
            Disk::Sim(storage) => storage.read_file(path).is_some(),
            Disk::Real => path.exists(),
        }
    }

    /// File names in `dir`, sorted.
    fn names(&self, dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = match self {
            Disk::Sim(storage) => storage
                .files()
                .into_iter()
                .filter(|(p, _)| p.parent() == Some(dir))
                .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect(),
            Disk::Real => std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
        };
        names.sort();
        names
    }
}

/// A simulator disk holding exactly `files`.
fn sim_from(files: &[(PathBuf, Vec<u8>)]) -> SimStorage {
    let storage = SimStorage::new();
    for (path, bytes) in files {
        storage.write_file(path, bytes);
    }
    storage
}

/// A log of records `0..n` built (one append at a time, closed) on a fresh
/// simulator disk at [`sim_dir`]: the payloads, a snapshot of its files to
/// start each damage case from, and its segments.
fn pristine_sim(n: u64) -> (Vec<Vec<u8>>, Snapshot, Vec<Seg>) {
    let pristine = SimStorage::new();
    let disk = Disk::Sim(pristine.clone());
    let values = build(&disk, &sim_dir(), small(), n, 1);
    (values, sim_snapshot(&pristine), layout(&disk, &sim_dir()))
}

/// Every file of a simulator disk, with its bytes.
type Snapshot = Vec<(PathBuf, Vec<u8>)>;

fn sim_snapshot(storage: &SimStorage) -> Snapshot {
    storage
        .files()
        .into_iter()
        .map(|(path, _)| {
            let bytes = storage.read_file(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

// ---- building logs -----------------------------------------------------------

fn expected(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|i| payload(SEED, i)).collect()
}

/// Appends records `0..n` (`payload(SEED, i)`) in batches of `batch`, then
/// closes the log cleanly. Returns the payloads.
fn build(disk: &Disk, dir: &Path, options: Options, n: u64, batch: usize) -> Vec<Vec<u8>> {
    let values = expected(n);
    let log = open_raw(dir, disk.options(options)).unwrap();
    for chunk in values.chunks(batch) {
        log.append_batch(chunk).unwrap();
    }
    assert_eq!(log.next_offset(), n);
    log.close().unwrap();
    values
}

/// Like [`build`], one append at a time and with strictly increasing
/// timestamps (it waits for the clock to move between appends).
fn build_distinct_times(disk: &Disk, dir: &Path, n: u64) -> Vec<Vec<u8>> {
    let values = expected(n);
    let log = open_raw(dir, disk.options(small())).unwrap();
    let mut last = Timestamp::from_micros(0);
    for value in &values {
        while Timestamp::now() <= last {
            std::hint::spin_loop();
        }
        let offset = log.append(value).unwrap();
        last = log.get(offset).unwrap().unwrap().timestamp;
    }
    log.close().unwrap();
    values
}

// ---- the format, parsed independently of the crate ---------------------------

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

#[derive(Clone, Copy, Debug)]
struct FrameAt {
    pos: usize,
    /// The whole frame: 8 + `len`.
    size: usize,
    offset: u64,
    ts: u64,
}

impl FrameAt {
    fn end(&self) -> usize {
        self.pos + self.size
    }
}

#[derive(Clone, Debug)]
struct Seg {
    path: PathBuf,
    idx: PathBuf,
    base: u64,
    bytes: Vec<u8>,
    frames: Vec<FrameAt>,
}

impl Seg {
    /// Where the records end.
    fn end(&self) -> usize {
        self.frames.last().map_or(HEADER, FrameAt::end)
    }

    fn next(&self) -> u64 {
        self.base + self.frames.len() as u64
    }

    fn frame_of(&self, offset: u64) -> FrameAt {
        self.frames[(offset - self.base) as usize]
    }
}

fn parse_frames(bytes: &[u8]) -> Vec<FrameAt> {
    let mut frames = Vec::new();
    let mut pos = HEADER;
    while pos + 8 <= bytes.len() {
        let len = u32_at(bytes, pos) as usize;
        if len == 0 {
            break;
        }
        frames.push(FrameAt {
            pos,
            size: 8 + len,
            offset: u64_at(bytes, pos + 8),
            ts: u64_at(bytes, pos + 16),
        });
        pos += 8 + len;
    }
    frames
}

/// The segments of a pristine log, oldest first, checked to be contiguous.
fn layout(disk: &Disk, dir: &Path) -> Vec<Seg> {
    let mut segs = Vec::new();
    for name in disk.names(dir) {
        let Some(stem) = name.strip_suffix(".seg") else {
            continue;
        };
        let base: u64 = stem.parse().unwrap();
        let path = dir.join(&name);
        let bytes = disk.read(&path);
        let frames = parse_frames(&bytes);
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(f.offset, base + i as u64, "pristine layout of {name}");
        }
        segs.push(Seg {
            idx: dir.join(format!("{stem}.idx")),
            path,
            base,
            bytes,
            frames,
        });
    }
    for pair in segs.windows(2) {
        assert_eq!(pair[0].next(), pair[1].base, "pristine segments contiguous");
    }
    segs
}

/// Sets the durable watermark slot (bytes 32..64) of a segment image, as a
/// writer that has not closed the log writes it.
fn set_watermark(bytes: &mut [u8], pos: u64, next: u64, last_ts: u64) {
    bytes[32..40].copy_from_slice(&pos.to_le_bytes());
    bytes[40..48].copy_from_slice(&next.to_le_bytes());
    bytes[48..56].copy_from_slice(&last_ts.to_le_bytes());
    bytes[56..60].fill(0);
    let crc = crc32fast::hash(&bytes[32..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes the watermark slot's CRC (bytes 60..64 over 32..60).
fn fix_watermark_crc(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[32..60]);
    bytes[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes a segment header's CRC (bytes 24..28 over 0..24).
fn fix_header_crc(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// Index entries (after the 32-byte header) up to the first all-zero one.
fn index_entries(bytes: &[u8]) -> Vec<[u8; 16]> {
    bytes
        .get(32..)
        .unwrap_or(&[])
        .chunks_exact(16)
        .take_while(|e| e.iter().any(|&b| b != 0))
        .map(|e| e.try_into().unwrap())
        .collect()
}

// ---- reading and checking ----------------------------------------------------

/// Every record from `start` up to the first error, and that error.
fn read_from(log: &RawLog, start: Start) -> (Vec<(u64, Vec<u8>)>, Option<Error>) {
    let mut records = Vec::new();
    for rec in log.read(start) {
        match rec {
            Ok(rec) => records.push((rec.offset, rec.value)),
            Err(e) => return (records, Some(e)),
        }
    }
    (records, None)
}

fn read_until_error(log: &RawLog) -> (Vec<(u64, Vec<u8>)>, Option<Error>) {
    read_from(log, Start::Beginning)
}

/// The log holds exactly `values` (offsets `0..values.len()`).
fn assert_holds(log: &RawLog, values: &[Vec<u8>], what: &str) {
    let (records, err) = read_until_error(log);
    assert!(err.is_none(), "{what}: read failed: {err:?}");
    assert_eq!(
        log.next_offset(),
        values.len() as u64,
        "{what}: next_offset"
    );
    assert_eq!(records.len(), values.len(), "{what}: record count");
    for (i, (offset, value)) in records.iter().enumerate() {
        assert_eq!(*offset, i as u64, "{what}: offsets contiguous");
        assert_eq!(value, &values[i], "{what}: record {i}");
    }
}

/// `records` are exactly `values[first..]` in order.
fn assert_run(records: &[(u64, Vec<u8>)], values: &[Vec<u8>], first: u64, what: &str) {
    for (i, (offset, value)) in records.iter().enumerate() {
        let want = first + i as u64;
        assert_eq!(*offset, want, "{what}: offsets contiguous");
        assert_eq!(value, &values[want as usize], "{what}: record {want}");
    }
}

fn assert_get(log: &RawLog, offset: u64, values: &[Vec<u8>]) {
    let rec = log
        .get(offset)
        .unwrap_or_else(|e| panic!("get({offset}): {e}"))
        .unwrap_or_else(|| panic!("get({offset}): None"));
    assert_eq!(rec.offset, offset);
    assert_eq!(rec.value, values[offset as usize], "get({offset})");
}

/// The parts of an `Error::Corrupt`, or a panic naming what came instead.
fn corrupt(err: Option<Error>, what: &str) -> (PathBuf, u64, Option<u64>, CorruptionKind) {
    match err {
        Some(Error::Corrupt {
            path,
            position,
            offset,
            kind,
        }) => (path, position, offset, kind),
        other => panic!("{what}: expected Error::Corrupt, got {other:?}"),
    }
}

fn get_corrupt(log: &RawLog, offset: u64) -> (PathBuf, u64, Option<u64>, CorruptionKind) {
    match log.get(offset) {
        Err(e) => corrupt(Some(e), &format!("get({offset})")),
        Ok(rec) => panic!(
            "get({offset}): expected Error::Corrupt, got Ok({:?})",
            rec.map(|r| r.offset)
        ),
    }
}

fn is_record_damage(kind: &CorruptionKind) -> bool {
    matches!(
        kind,
        CorruptionKind::Checksum { .. }
            | CorruptionKind::Length { .. }
            | CorruptionKind::OffsetMismatch { .. }
            | CorruptionKind::Zeroed
    )
}

/// After a recovery that kept `values`, a further append gets the next
/// offset, reads back, and survives a reopen that reports a clean log.
fn assert_appends_continue(disk: &Disk, dir: &Path, options: Options, values: &[Vec<u8>]) {
    let next = values.len() as u64;
    let extra = b"after recovery".to_vec();
    let log = open_raw(dir, disk.options(options.clone())).unwrap();
    assert!(
        log.recovery_report().is_clean(),
        "the second open must be clean (recovery is idempotent): {:?}",
        log.recovery_report()
    );
    assert_holds(&log, values, "second open");
    assert_eq!(log.append(&extra).unwrap(), next);
    assert_eq!(log.get(next).unwrap().unwrap().value, extra);
    log.close().unwrap();
    let log = open_raw(dir, disk.options(options)).unwrap();
    assert!(
        log.recovery_report().is_clean(),
        "{:?}",
        log.recovery_report()
    );
    let mut all = values.to_vec();
    all.push(extra);
    assert_holds(&log, &all, "after the append");
    log.close().unwrap();
}

/// The report of a torn tail cut at `at` in `seg`, whose cut bytes were
/// `cut` (as they were on disk, before the recovery).
fn assert_cut_reported(disk: &Disk, log: &RawLog, seg: &Seg, at: usize, cut: &[u8], what: &str) {
    let report = log.recovery_report();
    let last = cut.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if last == 0 {
        assert!(report.is_clean(), "{what}: nothing was cut: {report:?}");
        return;
    }
    assert_eq!(report.truncated_segment.as_ref(), Some(&seg.path), "{what}");
    assert!(!report.is_clean(), "{what}: a cut tail is a repair");
    assert_eq!(report.truncated_at, Some(at as u64), "{what}: truncated_at");
    assert_eq!(
        report.truncated_bytes, last as u64,
        "{what}: truncated_bytes"
    );
    // A frame (or garbage) starts at the cut, or only zeros do (an
    // unfinished write that left no frame: no damage to name).
    let starts_a_frame = cut.iter().take(4).any(|&b| b != 0);
    assert_eq!(
        report.damage.is_some(),
        starts_a_frame,
        "{what}: damage: {report:?}"
    );
    let copy = seg
        .path
        .with_file_name(format!("{:020}.{at}.damaged", seg.base));
    assert_eq!(report.damaged_copy.as_ref(), Some(&copy), "{what}");
    assert_eq!(disk.read(&copy), &cut[..last], "{what}: the .damaged copy");
}

fn sim_dir() -> PathBuf {
    PathBuf::from(SIM_DIR)
}

// =============================================================================
// 1. Exhaustive tail truncation
// =============================================================================

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    /// The watermark slot says the segment was durable up to the
    /// third-last record: the cut is in the torn tail.
    Early,
    /// The watermark slot fails its CRC (a torn slot): the whole segment is
    /// scanned.
    Torn,
    /// The watermark close wrote (at the end of the records): the cut
    /// bytes were durable, so this is damage, reported when read.
    AtEnd,
}

fn apply_mark(bytes: &mut [u8], seg: &Seg, mark: Mark) {
    let r = seg.frames.len();
    match mark {
        Mark::Early => {
            let from = seg.frames[r - 3];
            let ts = seg.frames[r - 4].ts;
            set_watermark(bytes, from.pos as u64, from.offset, ts);
        }
        Mark::Torn => bytes[60] ^= 0x5A,
        Mark::AtEnd => {}
    }
}

/// Checks one cut of the newest segment at `cut` (the bytes from `cut` on
/// are gone), on a log already damaged on `disk`.
fn check_tail_cut(disk: &Disk, dir: &Path, values: &[Vec<u8>], seg: &Seg, cut: usize, mark: Mark) {
    let what = format!("cut at {cut}, watermark {mark:?}");
    let kept_local = seg.frames.iter().filter(|f| f.end() <= cut).count();
    let kept = seg.base + kept_local as u64;
    if mark == Mark::AtEnd {
        // The cut bytes were below the durable watermark: damage, not a
        // torn tail. Opening checks that the frames' lengths and offsets
        // reach the watermark and refuses if not, naming the first damaged
        // record; damage they do not reveal (a cut inside the last
        // payload) is found when the record is read. Either way the log
        // never opens short of what was acknowledged, nor yields a wrong
        // record.
        let log = match open_raw(dir, disk.options(small())) {
            Ok(log) => log,
            Err(Error::Corrupt {
                path,
                position,
                offset,
                ..
            }) => {
                assert!(kept < values.len() as u64, "{what}: refused an intact log");
                assert_eq!(path, seg.path, "{what}");
                assert_eq!(position, seg.frame_of(kept).pos as u64, "{what}");
                assert_eq!(offset, Some(kept), "{what}");
                return;
            }
            Err(e) => panic!("{what}: {e}"),
        };
        assert!(log.recovery_report().is_clean(), "{what}");
        assert_eq!(log.next_offset(), values.len() as u64, "{what}");
        let (records, err) = read_until_error(&log);
        assert_run(&records, values, 0, &what);
        if kept == values.len() as u64 {
            assert!(err.is_none(), "{what}: {err:?}");
            assert_eq!(records.len(), values.len());
        } else {
            let (path, position, offset, _) = corrupt(err, &what);
            assert_eq!(records.len() as u64, kept, "{what}");
            assert_eq!(path, seg.path, "{what}");
            assert_eq!(position, seg.frame_of(kept).pos as u64, "{what}");
            assert_eq!(offset, Some(kept), "{what}");
            let (path, ..) = get_corrupt(&log, kept);
            assert_eq!(path, seg.path, "{what}");
            for o in kept + 1..values.len() as u64 {
                assert!(
                    !matches!(log.get(o), Ok(Some(ref r)) if r.value != values[o as usize]),
                    "{what}: get({o}) returned a wrong record"
                );
            }
        }
        return;
    }
    let log = open_raw(dir, disk.options(small())).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_holds(&log, &values[..kept as usize], &what);
    let at = seg.frames.get(kept_local).map_or(seg.end(), |f| f.pos);
    let cut_bytes = &seg.bytes[at..cut.max(at)];
    assert_cut_reported(disk, &log, seg, at, cut_bytes, &what);
    log.close().unwrap();
    assert_appends_continue(disk, dir, small(), &values[..kept as usize]);
}

#[test]
fn every_tail_cut_of_the_newest_segment_recovers_the_intact_prefix() {
    let dir = sim_dir();
    let (values, snapshot, segs) = pristine_sim(300);
    assert!(segs.len() >= 3, "several segments: {}", segs.len());
    let seg = segs.last().unwrap().clone();
    assert!(seg.frames.len() >= 4, "the newest segment holds 4+ records");
    let from = seg.frames[seg.frames.len() - 3].pos;
    let mut positions = 0;
    for cut in from..=seg.end() {
        for mark in [Mark::Early, Mark::Torn, Mark::AtEnd] {
            let storage = sim_from(&snapshot);
            let mut bytes = seg.bytes.clone();
            bytes[cut..].fill(0);
            apply_mark(&mut bytes, &seg, mark);
            storage.write_file(&seg.path, &bytes);
            check_tail_cut(&Disk::Sim(storage), &dir, &values, &seg, cut, mark);
            positions += 1;
        }
    }
    eprintln!(
        "tail truncation: {} byte positions x 3 watermarks = {positions} cases",
        seg.end() + 1 - from
    );
}

#[test]
fn real_file_truncation_of_the_newest_segment_recovers_the_intact_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, small(), 300, 10);
    let segs = layout(&Disk::Real, &template);
    let seg = segs.last().unwrap().clone();
    let r = seg.frames.len();
    let (a, b) = (seg.frames[r - 3], seg.frames[r - 2]);
    // Inside a frame's length, its CRC, its kind and flags (24..28 of a
    // version-2 frame), right where its payload starts (28), and further.
    let cuts = [
        a.pos,
        a.pos + 1,
        a.pos + 7,
        a.pos + 24,
        a.pos + 28,
        b.pos,
        b.pos + b.size / 2,
        seg.end() - 1,
        seg.end(),
    ];
    for (i, &cut) in cuts.iter().enumerate() {
        for mark in [Mark::Early, Mark::Torn, Mark::AtEnd] {
            let dir = tmp.path().join(format!("cut{i}-{mark:?}"));
            copy_dir(&template, &dir);
            let path = dir.join(seg.path.file_name().unwrap());
            let mut header = seg.bytes[..HEADER].to_vec();
            apply_mark(&mut header, &seg, mark);
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            file.set_len(cut as u64).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &header, 0).unwrap();
            drop(file);
            let mut seg_here = seg.clone();
            seg_here.path = path;
            check_tail_cut(&Disk::Real, &dir, &values, &seg_here, cut, mark);
        }
    }
}

// =============================================================================
// 2. Garbage after the last frame
// =============================================================================

#[test]
fn garbage_after_the_last_frame_is_cut_reported_and_saved() {
    let dir = sim_dir();
    let (values, snapshot, segs) = pristine_sim(300);
    let seg = segs.last().unwrap().clone();
    let end = seg.end();
    assert!(end + 200 <= seg.bytes.len(), "room after the records");
    let n = values.len() as u64;

    let mut rng = Rng(SEED);
    let stale = seg.bytes[seg.frames[1].pos..seg.frames[1].end()].to_vec();
    let mut random = rng.bytes(150);
    *random.last_mut().unwrap() = 0x77;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("random bytes", random, false),
        ("0xFF bytes", vec![0xFF; 150], false),
        ("a stale valid frame", stale, false),
        // Past the preallocated capacity: the file grew.
        ("random bytes past the capacity", rng.bytes(100), true),
    ];
    for (what, garbage, past_capacity) in cases {
        let storage = sim_from(&snapshot);
        let mut bytes = seg.bytes.clone();
        let at = if past_capacity { bytes.len() } else { end };
        if past_capacity {
            bytes.extend_from_slice(&garbage);
        } else {
            bytes[at..at + garbage.len()].copy_from_slice(&garbage);
        }
        storage.write_file(&seg.path, &bytes);
        let disk = Disk::Sim(storage.clone());
        let log = open_raw(&dir, disk.options(small())).unwrap();
        assert_holds(&log, &values, what);
        // The whole region after the last frame is what was cut.
        assert_cut_reported(&disk, &log, &seg, end, &bytes[end..], what);
        if what == "a stale valid frame" {
            assert_eq!(
                log.recovery_report().damage,
                Some(CorruptionKind::OffsetMismatch {
                    expected: n,
                    found: seg.base + 1
                }),
                "{what}"
            );
        }
        if what == "0xFF bytes" {
            assert_eq!(
                log.recovery_report().damage,
                Some(CorruptionKind::Length { len: u32::MAX }),
                "{what}"
            );
        }
        log.close().unwrap();
        // The tail is zeroed on disk after the cut.
        let now = storage.read_file(&seg.path).unwrap();
        assert!(now[end..].iter().all(|&b| b == 0), "{what}: tail zeroed");
        assert_appends_continue(&disk, &dir, small(), &values);
    }
}

/// The story of a gap found by mutation testing. The watermark is rewritten
/// at most every 100 ms, so records acknowledged under `EveryAppend` can
/// lie past it. If a run of them is zeroed (media damage, or a power loss
/// that kept later pages and lost earlier ones), recovery stops at the
/// zeros and cuts the log there, as it must for a torn tail. But it looked
/// only 4 KiB past the cut for anything it was cutting: behind a longer
/// zeroed run, the records were zeroed with the rest of the tail, with no
/// `.damaged` copy and no report. After a crash the whole rest of the
/// segment is now searched.
#[test]
fn records_behind_a_long_zeroed_run_past_the_watermark_are_saved_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, far_options(), 2000, 1);
    let segs = layout(&Disk::Real, &template);
    assert_eq!(segs.len(), 1, "one segment");
    let seg = &segs[0];
    // A crash state: the watermark last written at record 100.
    let mut crashed = seg.bytes.clone();
    let mark = seg.frames[100];
    set_watermark(
        &mut crashed,
        mark.pos as u64,
        mark.offset,
        seg.frames[99].ts,
    );
    let at = seg.frames[500].pos;
    for run in [4096, 4097, 20_000, seg.end() - at - 1] {
        let mut bytes = crashed.clone();
        bytes[at..at + run].fill(0);
        let what = format!("{run} zeroed bytes at {at}");
        check_far_cut(&tmp, &template, seg, &bytes, &values[..500], at, &what);
    }
}

/// Close (and a roll) mark the watermark *closed*, which spares recovery
/// the rewrite of the tail. It must trust the mark only when the records end
/// exactly at it; and stray bytes after a closed end are found, saved and
/// reported wherever they lie.
#[test]
fn only_a_closed_watermark_at_the_end_of_the_records_is_trusted() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, far_options(), 2000, 1);
    let seg = &layout(&Disk::Real, &template)[0];
    assert_eq!(u32_at(&seg.bytes, 56), 1, "close marked the segment closed");
    let (at, end) = (seg.frames[500].pos, seg.end());
    let zero_run = |bytes: &mut Vec<u8>| bytes[at..at + 5000].fill(0);

    // The mark (not closed) sits exactly where the zeroed run starts.
    let mut open_mark = seg.bytes.clone();
    let f = seg.frames[500];
    set_watermark(&mut open_mark, f.pos as u64, f.offset, seg.frames[499].ts);
    zero_run(&mut open_mark);
    let what = "an open mark where the records stop";
    check_far_cut(&tmp, &template, seg, &open_mark, &values[..500], at, what);

    // A closed mark with records after it: not a state this crate writes
    // (open clears the mark before appending), so it is not trusted.
    let mut closed_early = seg.bytes.clone();
    let f = seg.frames[100];
    set_watermark(&mut closed_early, f.pos as u64, f.offset, seg.frames[99].ts);
    closed_early[56] = 1;
    fix_watermark_crc(&mut closed_early);
    zero_run(&mut closed_early);
    let what = "a closed mark before the end";
    check_far_cut(
        &tmp,
        &template,
        seg,
        &closed_early,
        &values[..500],
        at,
        what,
    );

    // Closed at the end, and the page after the records full of garbage.
    let mut stray = seg.bytes.clone();
    stray[end..end + 4096].fill(0xA5);
    let what = "a page of garbage after a closed end";
    check_far_cut(&tmp, &template, seg, &stray, &values, end, what);
}

/// The story of a gap in the closed mark: after a clean close, recovery
/// looked only 4 KiB past the records for stray bytes, and then zeroed the
/// whole tail anyway, so bytes further out (media damage while the log was
/// closed) were destroyed with no `.damaged` copy and a clean report. Now
/// the rest of the segment is searched after a close too.
#[test]
fn stray_bytes_far_past_a_closed_end_are_saved_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, far_options(), 2000, 1);
    let seg = &layout(&Disk::Real, &template)[0];
    assert_eq!(u32_at(&seg.bytes, 56), 1, "close marked the segment closed");
    let end = seg.end();
    for (at, len) in [(end + 8192, 100), (seg.bytes.len() - 10, 10)] {
        let mut stray = seg.bytes.clone();
        stray[at..at + len].fill(0x5A);
        let what = format!("{len} stray bytes {} past a closed end", at - end);
        check_far_cut(&tmp, &template, seg, &stray, &values, end, &what);
    }
}

fn far_options() -> Options {
    Options::new()
        .segment_bytes(256 << 10)
        .max_record_bytes(512)
        .index_interval_bytes(256)
}

/// Opens copies of the log at `template` with its only segment replaced by
/// `bytes`, on the simulator and on real files: the log must hold `kept`,
/// report the cut at `at` with every non-zero byte after it saved, zero the
/// tail, and take appends.
fn check_far_cut(
    tmp: &tempfile::TempDir,
    template: &Path,
    seg: &Seg,
    bytes: &[u8],
    kept: &[Vec<u8>],
    at: usize,
    what: &str,
) {
    let name = seg.path.file_name().unwrap();
    let sim = Disk::Sim(SimStorage::new());
    for path in std::fs::read_dir(template).unwrap() {
        let path = path.unwrap().path();
        sim.write(
            &sim_dir().join(path.file_name().unwrap()),
            &std::fs::read(&path).unwrap(),
        );
    }
    let real = tempfile::tempdir_in(tmp.path()).unwrap();
    let real_dir = real.path().join("log");
    copy_dir(template, &real_dir);
    for (disk, dir) in [(sim, sim_dir()), (Disk::Real, real_dir)] {
        let seg = Seg {
            path: dir.join(name),
            ..seg.clone()
        };
        disk.write(&seg.path, bytes);
        let log = open_raw(&dir, disk.options(far_options())).unwrap();
        assert_holds(&log, kept, what);
        assert_cut_reported(&disk, &log, &seg, at, &bytes[at..], what);
        log.close().unwrap();
        let now = disk.read(&seg.path);
        assert!(now[at..].iter().all(|&b| b == 0), "{what}: tail zeroed");
        assert_appends_continue(&disk, &dir, far_options(), kept);
    }
}

/// Close (and a roll) mark the watermark slot closed: nothing was written
/// past it. Recovery then looks only at the next page past the records, so
/// an open after a clean close stays O(1). Open must clear the mark, durably,
/// before any append can put a record past it. Dropping the last handle
/// marks it too when every record is durable (`EveryAppend`), and leaves it
/// unmarked when some are not (`Buffered`, before a sync).
#[test]
fn the_watermark_is_marked_closed_only_while_nothing_can_follow_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    build(&Disk::Real, &dir, small(), 300, 10);
    let segs = layout(&Disk::Real, &dir);
    assert!(segs.len() >= 3, "several segments: {}", segs.len());
    let flags = |path: &Path| u32_at(&std::fs::read(path).unwrap(), 56);
    for seg in &segs {
        assert_eq!(
            flags(&seg.path),
            1,
            "{}: sealed or closed",
            seg.path.display()
        );
    }
    let newest = segs.last().unwrap().path.clone();
    let log = open_raw(&dir, small()).unwrap();
    assert!(log.recovery_report().is_clean());
    assert_eq!(flags(&newest), 0, "an open log is not closed");
    log.append(&b"one more".to_vec()).unwrap();
    drop(log);
    assert_eq!(flags(&newest), 1, "dropped with every record durable");
    let buffered = || small().durability(Durability::Buffered);
    let log = open_raw(&dir, buffered()).unwrap();
    assert_eq!(log.next_offset(), 301);
    assert!(log.recovery_report().is_clean());
    assert_eq!(flags(&newest), 0, "an open log is not closed");
    log.append(&b"buffered".to_vec()).unwrap();
    drop(log);
    assert_eq!(flags(&newest), 0, "dropped with a record not durable");
    let log = open_raw(&dir, buffered()).unwrap();
    assert_eq!(log.next_offset(), 302, "the buffered record reached the OS");
    log.close().unwrap();
    assert_eq!(flags(&newest), 1, "closed again");
}

// =============================================================================
// 3. Random single-bit flips
// =============================================================================

#[derive(Default, Debug)]
struct FlipCounts {
    flips: u64,
    in_sealed: u64,
    in_newest: u64,
    /// Detected exactly at the damaged record, every record before it right.
    detected: u64,
    /// Open refused the log with Error::Corrupt.
    refused_at_open: u64,
    /// Read the whole log back, every record right (the flip went unseen).
    intact: u64,
    /// A wrong record, a silently short read, or an error at the wrong place.
    wrong: u64,
    kinds: std::collections::BTreeMap<String, u64>,
}

#[test]
fn a_thousand_random_bit_flips_never_yield_a_wrong_record() {
    let dir = sim_dir();
    let pristine = SimStorage::new();
    let values = build(&Disk::Sim(pristine.clone()), &dir, small(), 400, 1);
    let n = values.len() as u64;
    let snapshot = sim_snapshot(&pristine);
    let segs = layout(&Disk::Sim(pristine.clone()), &dir);
    assert!(segs.len() >= 4);
    // Every byte of the record areas, sealed and newest.
    let areas: Vec<(usize, usize)> = segs.iter().map(|s| (HEADER, s.end())).collect();
    let total: usize = areas.iter().map(|(a, b)| b - a).sum();

    let mut rng = Rng(SEED ^ 0xF11F);
    let mut counts = FlipCounts::default();
    let mut failures = Vec::new();
    const FLIPS: u64 = 1500;
    for trial in 0..FLIPS {
        let mut at = rng.below(total as u64) as usize;
        let mut s = 0;
        while at >= areas[s].1 - areas[s].0 {
            at -= areas[s].1 - areas[s].0;
            s += 1;
        }
        let seg = &segs[s];
        let pos = HEADER + at;
        let bit = rng.below(8) as u8;
        let frame = *seg
            .frames
            .iter()
            .find(|f| f.pos <= pos && pos < f.end())
            .unwrap();
        let damaged = frame.offset;
        counts.flips += 1;
        if s + 1 == segs.len() {
            counts.in_newest += 1;
        } else {
            counts.in_sealed += 1;
        }

        let storage = sim_from(&snapshot);
        let mut bytes = seg.bytes.clone();
        bytes[pos] ^= 1 << bit;
        storage.write_file(&seg.path, &bytes);
        let what = format!(
            "trial {trial}: bit {bit} of byte {pos} of {} (record {damaged})",
            seg.path.display()
        );
        let log = match open_raw(&dir, small().simulated(&storage)) {
            Ok(log) => log,
            Err(Error::Corrupt { .. }) => {
                counts.refused_at_open += 1;
                continue;
            }
            Err(e) => panic!("{what}: open: {e:?}"),
        };
        let mut wrong = Vec::new();
        if log.next_offset() != n {
            wrong.push(format!("next_offset {} != {n}", log.next_offset()));
        }
        let (records, err) = read_until_error(&log);
        for (i, (offset, value)) in records.iter().enumerate() {
            if *offset != i as u64 || value != &values[i] {
                wrong.push(format!("read: wrong record at {i} (offset {offset})"));
                break;
            }
        }
        match err {
            None if records.len() as u64 == n => counts.intact += 1,
            None => wrong.push(format!("read silently ended at {}", records.len())),
            Some(Error::Corrupt {
                path,
                position,
                offset,
                kind,
            }) => {
                *counts
                    .kinds
                    .entry(
                        format!("{kind:?}")
                            .split([' ', '{'])
                            .next()
                            .unwrap()
                            .to_owned(),
                    )
                    .or_default() += 1;
                if path == seg.path
                    && position == frame.pos as u64
                    && offset == Some(damaged)
                    && records.len() as u64 == damaged
                    && is_record_damage(&kind)
                {
                    counts.detected += 1;
                } else {
                    wrong.push(format!(
                        "read: Corrupt at {} byte {position} offset {offset:?} {kind:?} after {} records",
                        path.display(),
                        records.len()
                    ));
                }
            }
            Some(e) => wrong.push(format!("read: unexpected error {e:?}")),
        }
        // Random reads: the damaged record, its neighbours, and samples.
        let mut sample: Vec<u64> = (0..12).map(|_| rng.below(n)).collect();
        sample.extend([damaged, damaged.saturating_sub(1), (damaged + 1).min(n - 1)]);
        for o in sample {
            match log.get(o) {
                Ok(Some(rec)) if rec.offset == o && rec.value == values[o as usize] => {
                    if o == damaged {
                        wrong.push(format!("get({o}) returned the damaged record"));
                    }
                }
                Ok(other) => wrong.push(format!("get({o}) = {:?}", other.map(|r| r.offset))),
                Err(Error::Corrupt { .. }) => {}
                Err(e) => wrong.push(format!("get({o}): unexpected error {e:?}")),
            }
        }
        match log.verify() {
            Err(Error::Corrupt { offset, .. }) if offset == Some(damaged) => {}
            other => wrong.push(format!("verify() = {other:?}")),
        }
        if !wrong.is_empty() {
            counts.wrong += 1;
            failures.push(format!("{what}: {wrong:?}"));
        }
    }
    eprintln!("bit flips: {counts:?}");
    assert_eq!(counts.flips, FLIPS);
    assert!(counts.in_sealed > 0 && counts.in_newest > 0, "{counts:?}");
    assert!(
        failures.is_empty(),
        "{} of {FLIPS} flips went wrong; first: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert_eq!(counts.wrong, 0);
    // Every byte of a frame is covered by its CRC: every flip is detected.
    assert_eq!(
        counts.detected + counts.refused_at_open,
        FLIPS,
        "{counts:?}"
    );
}

// =============================================================================
// 4. A zeroed page in a sealed segment
// =============================================================================

#[test]
fn a_zeroed_page_in_a_sealed_segment_is_reported_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let options = Options::new()
        .segment_bytes(16384)
        .max_record_bytes(512)
        .index_interval_bytes(256);
    let values = build(&Disk::Real, &dir, options.clone(), 900, 50);
    let segs = layout(&Disk::Real, &dir);
    assert!(segs.len() >= 3, "{}", segs.len());
    let seg = &segs[0];
    let page = 4096..8192;
    assert!(seg.end() > page.end);
    let mut bytes = seg.bytes.clone();
    bytes[page.clone()].fill(0);
    std::fs::write(&seg.path, &bytes).unwrap();
    let hit: Vec<u64> = seg
        .frames
        .iter()
        .filter(|f| f.pos < page.end && f.end() > page.start)
        .map(|f| f.offset)
        .collect();
    let first_hit = hit[0];

    let log = open_raw(&dir, options).unwrap();
    assert!(log.recovery_report().is_clean());
    let (records, err) = read_until_error(&log);
    assert_run(&records, &values, 0, "read");
    assert_eq!(records.len() as u64, first_hit);
    let (path, position, offset, kind) = corrupt(err, "read into the page");
    assert_eq!(path, seg.path);
    assert_eq!(position, seg.frame_of(first_hit).pos as u64);
    assert_eq!(offset, Some(first_hit));
    assert!(
        matches!(
            kind,
            CorruptionKind::Zeroed
                | CorruptionKind::SegmentTruncated { .. }
                | CorruptionKind::Checksum { .. }
                | CorruptionKind::Length { .. }
        ),
        "{kind:?}"
    );
    for o in 0..values.len() as u64 {
        if o < first_hit || o >= seg.next() {
            assert_get(&log, o, &values);
        } else if hit.contains(&o) {
            let (path, ..) = get_corrupt(&log, o);
            assert_eq!(path, seg.path);
        } else {
            // After the page: reachable through the index, or an error.
            match log.get(o) {
                Ok(Some(rec)) => assert_eq!(rec.value, values[o as usize]),
                Err(Error::Corrupt { .. }) => {}
                other => panic!("get({o}) = {other:?}"),
            }
        }
    }
    let (records, err) = read_from(&log, Start::Offset(segs[1].base));
    assert!(err.is_none(), "{err:?}");
    assert_run(
        &records,
        &values,
        segs[1].base,
        "read from the next segment",
    );
    assert_eq!(records.len() as u64, values.len() as u64 - segs[1].base);
    assert!(matches!(log.verify(), Err(Error::Corrupt { offset: Some(o), .. }) if o == first_hit));
}

// =============================================================================
// 5. A truncated sealed segment
// =============================================================================

#[test]
fn a_truncated_sealed_segment_is_reported_never_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, small(), 400, 20);
    let segs = layout(&Disk::Real, &template);
    assert!(segs.len() >= 4);
    let (seg, after) = (&segs[1], &segs[2]);
    let j = seg.frames.len() / 2;
    let frame = seg.frames[j];
    // (length, first offset lost, whether the cut is at a frame boundary)
    let cases = [
        (frame.pos, frame.offset, true),
        (frame.pos + 10, frame.offset, false),
        (seg.end() - 1, seg.next() - 1, false),
        (HEADER, seg.base, true),
        (0, seg.base, true),
    ];
    for (i, &(len, lost, boundary)) in cases.iter().enumerate() {
        let what = format!("sealed segment cut to {len} bytes");
        let dir = tmp.path().join(format!("case{i}"));
        copy_dir(&template, &dir);
        let path = dir.join(seg.path.file_name().unwrap());
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(len as u64).unwrap();
        drop(file);

        let log = open_raw(&dir, small()).unwrap();
        assert_eq!(log.next_offset(), values.len() as u64);
        let (records, err) = read_until_error(&log);
        assert_run(&records, &values, 0, &what);
        assert_eq!(records.len() as u64, lost, "{what}");
        let (p, _, offset, kind) = corrupt(err, &what);
        assert_eq!(p, path, "{what}");
        if len >= HEADER {
            assert_eq!(offset, Some(lost), "{what}");
        }
        if boundary && len >= HEADER {
            assert_eq!(
                kind,
                CorruptionKind::SegmentTruncated {
                    expected_end: after.base,
                    found_end: lost
                },
                "{what}"
            );
        } else {
            assert!(
                matches!(
                    kind,
                    CorruptionKind::SegmentTruncated { .. } | CorruptionKind::Length { .. }
                ),
                "{what}: {kind:?}"
            );
        }
        // Never an offset gap: every lost offset is an error, not None.
        for o in lost..after.base {
            let (p, ..) = get_corrupt(&log, o);
            assert_eq!(p, path, "{what}");
        }
        for o in (0..lost).chain(after.base..values.len() as u64) {
            assert_get(&log, o, &values);
        }
        let (records, err) = read_from(&log, Start::Offset(after.base));
        assert!(err.is_none(), "{what}: {err:?}");
        assert_eq!(records.len() as u64, values.len() as u64 - after.base);
        assert!(matches!(log.verify(), Err(Error::Corrupt { .. })), "{what}");
    }

    // Zeroed to its end rather than cut short (the file keeps its length):
    // the records are missing just the same, so it reads as truncated; a
    // zeroed run with data after it is `Zeroed` (section 4).
    let dir = tmp.path().join("zeroed-tail");
    copy_dir(&template, &dir);
    let path = dir.join(seg.path.file_name().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[frame.pos..].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let log = open_raw(&dir, small()).unwrap();
    let (records, err) = read_until_error(&log);
    assert_eq!(records.len() as u64, frame.offset);
    let (p, position, offset, kind) = corrupt(err, "zeroed tail");
    assert_eq!((p, position), (path, frame.pos as u64));
    assert_eq!(offset, Some(frame.offset));
    assert_eq!(
        kind,
        CorruptionKind::SegmentTruncated {
            expected_end: after.base,
            found_end: frame.offset
        }
    );
}

// =============================================================================
// 6. Segment header damage
// =============================================================================

fn header_case(
    tmp: &Path,
    template: &Path,
    name: &str,
    seg: &Seg,
    damage: impl FnOnce(&mut Vec<u8>),
) -> (PathBuf, PathBuf) {
    let dir = tmp.join(name);
    copy_dir(template, &dir);
    let path = dir.join(seg.path.file_name().unwrap());
    let mut bytes = seg.bytes.clone();
    damage(&mut bytes);
    std::fs::write(&path, &bytes).unwrap();
    (dir, path)
}

/// Opening succeeds, reading reaches `seg` and fails with `want` at
/// position 0; everything before it is right.
fn assert_sealed_header_error(dir: &Path, path: &Path, seg: &Seg, values: &[Vec<u8>], want: &str) {
    let log = open_raw(dir, small()).unwrap();
    let (records, err) = read_until_error(&log);
    assert_run(&records, values, 0, want);
    assert_eq!(records.len() as u64, seg.base, "{want}");
    match (want, err) {
        (
            "version",
            Some(Error::UnsupportedVersion {
                path: p,
                found,
                supported,
            }),
        ) => {
            assert_eq!(
                (p.as_path(), found, supported),
                (path, NEWER_VERSION, SEGMENT_VERSION)
            );
        }
        (_, err) => {
            let (p, position, _, kind) = corrupt(err, want);
            assert_eq!(p, path, "{want}");
            assert_eq!(position, 0, "{want}");
            assert_eq!(format!("{kind:?}"), want);
        }
    }
    assert!(log.get(seg.base).is_err(), "{want}: get into the segment");
    assert_get(&log, seg.base - 1, values);
    assert_get(&log, seg.next(), values);
}

fn assert_open_refused(dir: &Path, path: &Path, want: &str) {
    match open_raw(dir, small()) {
        Err(Error::UnsupportedVersion {
            path: p,
            found,
            supported,
        }) if want == "version" => {
            assert_eq!(
                (p.as_path(), found, supported),
                (path, NEWER_VERSION, SEGMENT_VERSION)
            );
        }
        Err(e) => {
            let (p, position, _, kind) = corrupt(Some(e), want);
            assert_eq!(p, path, "{want}");
            assert_eq!(position, 0, "{want}");
            assert_eq!(format!("{kind:?}"), want);
        }
        Ok(log) => panic!("{want}: the log opened with next {}", log.next_offset()),
    }
}

#[test]
fn damaged_segment_headers_are_reported_naming_the_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, small(), 400, 20);
    let segs = layout(&Disk::Real, &template);
    let (sealed, newest) = (&segs[1], segs.last().unwrap());

    let (dir, path) = header_case(tmp.path(), &template, "sealed-magic", sealed, |b| {
        b[0] ^= 0xFF
    });
    assert_sealed_header_error(&dir, &path, sealed, &values, "BadMagic");
    let (dir, path) = header_case(tmp.path(), &template, "sealed-crc", sealed, |b| {
        b[25] ^= 0x10
    });
    assert_sealed_header_error(&dir, &path, sealed, &values, "HeaderChecksum");
    let (dir, path) = header_case(tmp.path(), &template, "sealed-base", sealed, |b| {
        b[16] ^= 0x01
    });
    assert_sealed_header_error(&dir, &path, sealed, &values, "HeaderChecksum");
    // Version 2 keeps the checksum kind in the flags word's low byte (1,
    // CRC-32) and zeros in the rest: another kind (a later build's
    // checksum), the version-1 value 0, or any other bit is refused.
    assert_eq!(&sealed.bytes[8..16], &[2, 0, 0, 0, CHECKSUM_CRC32, 0, 0, 0]);
    for (name, byte, value) in [
        ("sealed-checksum-kind", 12, 2),
        ("sealed-flags-zero", 12, 0),
        ("sealed-flags-high", 13, 1),
        ("sealed-flags-top", 15, 0x80),
    ] {
        let (dir, path) = header_case(tmp.path(), &template, name, sealed, |b| {
            b[byte] = value;
            fix_header_crc(b);
        });
        assert_sealed_header_error(&dir, &path, sealed, &values, "BadHeader");
    }

    let (dir, path) = header_case(tmp.path(), &template, "newest-magic", newest, |b| {
        b[3] ^= 0x01
    });
    assert_open_refused(&dir, &path, "BadMagic");
    let (dir, path) = header_case(tmp.path(), &template, "newest-crc", newest, |b| {
        b[24] ^= 0x80
    });
    assert_open_refused(&dir, &path, "HeaderChecksum");
    let (dir, path) = header_case(tmp.path(), &template, "newest-base", newest, |b| {
        b[17] ^= 0x01;
        fix_header_crc(b);
    });
    assert_open_refused(&dir, &path, "BadHeader");
    for (name, byte, value) in [
        ("newest-checksum-kind", 12, 7),
        ("newest-flags-high", 14, 1),
    ] {
        let (dir, path) = header_case(tmp.path(), &template, name, newest, |b| {
            b[byte] = value;
            fix_header_crc(b);
        });
        assert_open_refused(&dir, &path, "BadHeader");
    }
}

#[test]
fn an_unfinished_newest_segment_is_removed_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, small(), 400, 20);
    let segs = layout(&Disk::Real, &template);
    let newest = segs.last().unwrap();
    let kept = &values[..newest.base as usize];
    // A header torn by a power loss (its magic or its CRC wrong) with no
    // record behind it is an unfinished create too.
    let torn_at = |byte: usize| {
        let mut bytes = newest.bytes[..64].to_vec();
        bytes[byte] ^= 0x5A;
        bytes.resize(newest.bytes.len(), 0);
        bytes
    };
    let cases: [(&str, Vec<u8>); 6] = [
        ("all zeros at capacity", vec![0; newest.bytes.len()]),
        ("empty", Vec::new()),
        ("short", vec![0; 20]),
        ("a short partial header", newest.bytes[..40].to_vec()),
        ("a torn magic", torn_at(3)),
        ("a torn header CRC", torn_at(25)),
    ];
    for (what, bytes) in cases {
        let dir = tmp.path().join(what.replace(' ', "-"));
        copy_dir(&template, &dir);
        let path = dir.join(newest.path.file_name().unwrap());
        std::fs::write(&path, &bytes).unwrap();
        let log = open_raw(&dir, small()).unwrap_or_else(|e| panic!("{what}: {e}"));
        let report = log.recovery_report().clone();
        assert!(report.removed_files.contains(&path), "{what}: {report:?}");
        assert_holds(&log, kept, what);
        log.close().unwrap();
        assert_appends_continue(&Disk::Real, &dir, small(), kept);
    }
}

/// A zeroed header in front of records was first taken for an unfinished
/// create and the segment deleted with its acknowledged records. The header
/// is synced before any record is written, so records behind a zeroed
/// header mean damage: the open is refused and nothing is deleted.
#[test]
fn a_zeroed_header_in_front_of_records_is_damage_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    build(&Disk::Real, &template, small(), 400, 20);
    let segs = layout(&Disk::Real, &template);
    let newest = segs.last().unwrap();
    let mut zero_header = newest.bytes.clone();
    zero_header[..HEADER].fill(0);
    // The records may sit far behind zeros too (a zeroed range of pages):
    // the search for data must look at the whole file, not its first
    // chunk (a mutant that stopped after one chunk went unnoticed).
    let mut far = vec![0u8; 200 << 10];
    far.extend_from_slice(&newest.bytes[HEADER..]);
    for (what, bytes) in [("zeroed-header", zero_header), ("zeroed-200k", far)] {
        let dir = tmp.path().join(what);
        copy_dir(&template, &dir);
        let path = dir.join(newest.path.file_name().unwrap());
        std::fs::write(&path, &bytes).unwrap();
        match open_raw(&dir, small()) {
            Err(Error::Corrupt {
                path: p,
                position: 0,
                kind: CorruptionKind::Zeroed,
                ..
            }) => assert_eq!(p, path, "{what}"),
            other => panic!("{what}: expected Corrupt(Zeroed) naming {path:?}, got {other:?}"),
        }
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "{what}: the segment was changed"
        );
    }
}

// =============================================================================
// 7. Newer format versions
// =============================================================================

#[test]
fn a_newer_format_version_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    let values = build(&Disk::Real, &template, small(), 400, 20);
    {
        let log = open_raw(&template, small()).unwrap();
        log.consumer("shipping").unwrap().commit(7).unwrap();
        log.close().unwrap();
    }
    let segs = layout(&Disk::Real, &template);
    // This build writes segments of version 2 and reads 1 and 2: version 3
    // is from the future.
    let newer = |b: &mut Vec<u8>| {
        assert_eq!(u32_at(b, 8), SEGMENT_VERSION);
        b[8..12].copy_from_slice(&NEWER_VERSION.to_le_bytes());
        fix_header_crc(b);
    };
    let (dir, path) = header_case(tmp.path(), &template, "sealed-v3", &segs[1], newer);
    assert_sealed_header_error(&dir, &path, &segs[1], &values, "version");
    let (dir, path) = header_case(
        tmp.path(),
        &template,
        "newest-v3",
        segs.last().unwrap(),
        newer,
    );
    assert_open_refused(&dir, &path, "version");

    let dir = tmp.path().join("meta-v2");
    copy_dir(&template, &dir);
    let meta = dir.join("META");
    let mut bytes = std::fs::read(&meta).unwrap();
    // META is at version 2 already (this build writes it): version 3 is
    // from the future.
    bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
    let body = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body]);
    bytes[body..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&meta, &bytes).unwrap();
    match open_raw(&dir, small()) {
        Err(Error::UnsupportedVersion {
            path,
            found,
            supported,
        }) => assert_eq!((path, found, supported), (meta, 3, 2)),
        other => panic!("META of version 3: {other:?}"),
    }

    // Consumer files are still version 1 (format version 2 changed segments
    // only): a version-2 consumer file is from the future.
    let dir = tmp.path().join("consumer-v2");
    copy_dir(&template, &dir);
    let file = dir.join("shipping.consumer");
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap();
    let log = open_raw(&dir, small()).unwrap();
    match log.consumer("shipping") {
        Err(Error::UnsupportedVersion {
            path,
            found,
            supported,
        }) => assert_eq!((path, found, supported), (file, 2, 1)),
        other => panic!("consumer of version 2: {other:?}"),
    }
}

// =============================================================================
// 8. Index damage
// =============================================================================

#[derive(Clone, Copy, Debug)]
enum IndexDamage {
    Deleted,
    TruncatedInHeader,
    TruncatedInEntries,
    Garbage,
    NonMonotonic,
    WrongPosition,
    MidFramePosition,
    WrongOffset,
    UnderstatedTimestamps,
}

const INDEX_DAMAGE: [IndexDamage; 9] = [
    IndexDamage::Deleted,
    IndexDamage::TruncatedInHeader,
    IndexDamage::TruncatedInEntries,
    IndexDamage::Garbage,
    IndexDamage::NonMonotonic,
    IndexDamage::WrongPosition,
    IndexDamage::MidFramePosition,
    IndexDamage::WrongOffset,
    IndexDamage::UnderstatedTimestamps,
];

/// Damages the index of `seg` on `disk`; returns whether its header is no
/// longer valid (so the index must be rebuilt).
fn damage_index(disk: &Disk, seg: &Seg, damage: IndexDamage, rng: &mut Rng) -> bool {
    let mut bytes = disk.read(&seg.idx);
    let entries = index_entries(&bytes).len();
    let whole_file = matches!(
        damage,
        IndexDamage::Deleted | IndexDamage::TruncatedInHeader | IndexDamage::Garbage
    );
    assert!(
        whole_file || entries >= 4,
        "{damage:?} needs entries: {entries}"
    );
    let set_u32 = |b: &mut Vec<u8>, i: usize, field: usize, v: u32| {
        let at = 32 + i * 16 + field;
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    };
    let entry_pos = |b: &[u8], i: usize| u32_at(b, 32 + i * 16 + 4) as usize;
    match damage {
        IndexDamage::Deleted => {
            disk.remove(&seg.idx);
            return true;
        }
        IndexDamage::TruncatedInHeader => {
            bytes.truncate(20);
            disk.write(&seg.idx, &bytes);
            return true;
        }
        IndexDamage::TruncatedInEntries => bytes.truncate(32 + 16 + 8),
        IndexDamage::Garbage => {
            let garbage = rng.bytes(bytes.len());
            disk.write(&seg.idx, &garbage);
            return true;
        }
        IndexDamage::NonMonotonic => {
            let (a, b) = (32 + 16, 32 + 2 * 16);
            let first: [u8; 16] = bytes[a..a + 16].try_into().unwrap();
            bytes.copy_within(b..b + 16, a);
            bytes[b..b + 16].copy_from_slice(&first);
        }
        IndexDamage::WrongPosition | IndexDamage::MidFramePosition => {
            // Every entry but the first points one frame later (or three
            // bytes into its frame): still monotonic, inside the segment.
            for i in 1..entries {
                let pos = entry_pos(&bytes, i);
                let frame = seg.frames.iter().find(|f| f.pos == pos).unwrap();
                let new = match damage {
                    IndexDamage::WrongPosition => frame.end(),
                    _ => frame.pos + 3,
                };
                set_u32(&mut bytes, i, 4, new as u32);
            }
        }
        IndexDamage::WrongOffset => {
            for i in 1..entries {
                let rel = u32_at(&bytes, 32 + i * 16);
                set_u32(&mut bytes, i, 0, rel + 1);
            }
        }
        IndexDamage::UnderstatedTimestamps => {
            // Each entry claims the timestamp of the record five before
            // its own: non-decreasing, so it passes the plausibility check.
            for i in 1..entries {
                let rel = u32_at(&bytes, 32 + i * 16) as usize;
                let ts = seg.frames[rel.saturating_sub(5)].ts;
                let at = 32 + i * 16 + 8;
                bytes[at..at + 8].copy_from_slice(&ts.to_le_bytes());
            }
        }
    }
    disk.write(&seg.idx, &bytes);
    false
}

/// Every lookup that does not return the right records: get of every
/// offset, reads from several offsets, and reads from every record's
/// timestamp (and from just before it). One line per kind of lookup, with
/// the first wrong answer and how many were wrong.
fn lookup_failures(log: &RawLog, values: &[Vec<u8>], times: &[u64]) -> Vec<String> {
    let n = values.len() as u64;
    let mut failures = Vec::new();
    let mut note = |kind: &str, count: usize, total: usize, first: Option<String>| {
        if let Some(first) = first {
            failures.push(format!("{kind}: {count} of {total} wrong, first: {first}"));
        }
    };
    let (mut count, mut first) = (0, None);
    for o in 0..n {
        match log.get(o) {
            Ok(Some(rec)) if rec.offset == o && rec.value == values[o as usize] => {}
            other => {
                count += 1;
                first.get_or_insert(format!("get({o}) = {other:?}"));
            }
        }
    }
    note("get", count, n as usize, first);
    let starts = [0, 1, 37, 97, n / 3, n / 2, n - 37, n - 5, n - 1, n];
    let (mut count, mut first) = (0, None);
    for start in starts {
        let (records, err) = read_from(log, Start::Offset(start));
        let right = err.is_none()
            && records.len() as u64 == n - start
            && records
                .iter()
                .enumerate()
                .all(|(i, (o, v))| *o == start + i as u64 && *v == values[*o as usize]);
        if !right {
            count += 1;
            first.get_or_insert(format!(
                "read from {start}: {} records, then {err:?}",
                records.len()
            ));
        }
    }
    note("read from an offset", count, starts.len(), first);
    let (mut count, mut first) = (0, None);
    for (k, &ts) in times.iter().enumerate() {
        for micros in [ts, ts - 1] {
            let want = times.iter().position(|&t| t >= micros).unwrap() as u64;
            let mut cursor = log.read(Start::Timestamp(Timestamp::from_micros(micros)));
            match cursor.next() {
                Some(Ok(rec)) if rec.offset == want && rec.value == values[want as usize] => {}
                other => {
                    count += 1;
                    first.get_or_insert(format!(
                        "read from the time of record {k} ({micros}) must start at {want}, got {:?}",
                        other.map(|r| r.map(|r| r.offset))
                    ));
                }
            }
        }
    }
    note("read from a time", count, 2 * times.len(), first);
    failures
}

#[test]
fn damaged_indexes_never_change_what_lookups_return() {
    let dir = sim_dir();
    let pristine = SimStorage::new();
    let values = build_distinct_times(&Disk::Sim(pristine.clone()), &dir, 400);
    let snapshot = sim_snapshot(&pristine);
    let segs = layout(&Disk::Sim(pristine.clone()), &dir);
    let times: Vec<u64> = segs
        .iter()
        .flat_map(|s| s.frames.iter().map(|f| f.ts))
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "distinct timestamps");
    let mut rng = Rng(SEED ^ 0x1D);
    let mut failures = Vec::new();
    for (target, seg) in [("sealed", &segs[1]), ("newest", segs.last().unwrap())] {
        for damage in INDEX_DAMAGE {
            let what = format!("{damage:?} index of the {target} segment");
            let storage = sim_from(&snapshot);
            let disk = Disk::Sim(storage.clone());
            let rebuild = damage_index(&disk, seg, damage, &mut rng);
            let log = open_raw(&dir, small().simulated(&storage)).unwrap();
            let wrong = lookup_failures(&log, &values, &times);
            if !wrong.is_empty() {
                failures.push(format!("{what}:\n    {}", wrong.join("\n    ")));
                continue;
            }
            if target == "sealed" && rebuild {
                assert_eq!(log.stats().indexes_rebuilt, 1, "{what}");
                // The rebuilt index is the one the writer wrote.
                assert_eq!(
                    index_entries(&storage.read_file(&seg.idx).unwrap()),
                    index_entries(&seg_idx(&snapshot, seg)),
                    "{what}: rebuilt entries"
                );
            }
            log.close().unwrap();
            // And again after a reopen.
            let log = open_raw(&dir, small().simulated(&storage)).unwrap();
            assert_holds(&log, &values, &what);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn seg_idx(snapshot: &[(PathBuf, Vec<u8>)], seg: &Seg) -> Vec<u8> {
    snapshot
        .iter()
        .find(|(p, _)| *p == seg.idx)
        .map(|(_, b)| b.clone())
        .unwrap()
}

/// FORMAT.md: "a missing or damaged index | rebuilt from the segment (on
/// open for the newest segment, ...)", and `RecoveryReport::rebuilt_indexes`
/// lists "Indexes rebuilt from their segments because they were missing or
/// damaged".
#[test]
fn a_missing_newest_index_is_rebuilt_at_open_and_reported() {
    // A newest segment with records, and an empty one (its watermark at
    // the header: nothing to rebuild from, but the index is still made
    // anew and so still reported).
    let mut failures = Vec::new();
    for n in [400, 0] {
        let dir = sim_dir();
        let (values, snapshot, segs) = pristine_sim(n);
        let newest = segs.last().unwrap();
        assert_eq!(newest.frames.is_empty(), n == 0);
        for damage in [
            IndexDamage::Deleted,
            IndexDamage::TruncatedInHeader,
            IndexDamage::Garbage,
        ] {
            let storage = sim_from(&snapshot);
            assert!(damage_index(
                &Disk::Sim(storage.clone()),
                newest,
                damage,
                &mut Rng(3)
            ));
            let log = open_raw(&dir, small().simulated(&storage)).unwrap();
            assert_holds(&log, &values, "newest index damaged");
            let report = log.recovery_report();
            if report.is_clean() {
                failures.push(format!(
                    "{n} records, {damage:?}: a rebuilt index reported as clean"
                ));
            }
            if !report.rebuilt_indexes.contains(&newest.idx) {
                failures.push(format!(
                    "{n} records, {damage:?}: recovery_report().rebuilt_indexes = {:?}",
                    report.rebuilt_indexes
                ));
            }
            let rebuilt = index_entries(&storage.read_file(&newest.idx).unwrap());
            let original = index_entries(&seg_idx(&snapshot, newest));
            if rebuilt != original {
                failures.push(format!(
                    "{n} records, {damage:?}: the newest index holds {} entries after open, the writer wrote {}",
                    rebuilt.len(),
                    original.len()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The index holds exactly the entries docs/FORMAT.md describes: one for
/// the first record of a segment, then one for the first record at least
/// `index_interval_bytes` after the previous entry. (Lookups stay right
/// with any entries, so only this test sees their density.)
#[test]
fn index_entries_are_where_the_format_says() {
    let dir = sim_dir();
    let interval = 256;
    // Records of mixed sizes, and 32-byte frames that land exactly on
    // each `interval` (the boundary case: an entry is due there).
    let mixed = SimStorage::new();
    build(&Disk::Sim(mixed.clone()), &dir, small(), 400, 1);
    let even = SimStorage::new();
    let log = open_raw(&dir, small().simulated(&even)).unwrap();
    for i in 0..300u64 {
        log.append(&i.to_le_bytes().to_vec()).unwrap();
    }
    log.close().unwrap();
    let mut segs = Vec::new();
    for storage in [&mixed, &even] {
        for seg in layout(&Disk::Sim(storage.clone()), &dir) {
            segs.push((storage.clone(), seg));
        }
    }
    for (storage, seg) in &segs {
        let mut want = Vec::new();
        let mut last: Option<usize> = None;
        for f in &seg.frames {
            if last.is_none_or(|l| f.pos >= l + interval) {
                let mut e = [0u8; 16];
                e[..4].copy_from_slice(&((f.offset - seg.base) as u32).to_le_bytes());
                e[4..8].copy_from_slice(&(f.pos as u32).to_le_bytes());
                e[8..].copy_from_slice(&f.ts.to_le_bytes());
                want.push(e);
                last = Some(f.pos);
            }
        }
        assert!(
            want.len() >= 3,
            "{}: {} entries",
            seg.idx.display(),
            want.len()
        );
        let got = index_entries(&storage.read_file(&seg.idx).unwrap());
        assert_eq!(got, want, "{}", seg.idx.display());
    }
}

/// Records appended in one batch share a timestamp. An index entry inside
/// such a run that understates its timestamp must not make a time lookup
/// start at that entry: the records of the run before it would be skipped.
/// The lookup checks the record the entry points at and starts there only
/// if it is strictly older than the time sought.
#[test]
fn an_understated_index_entry_never_skips_records_that_share_its_time() {
    let dir = sim_dir();
    let storage = SimStorage::new();
    let options = || small().segment_bytes(64 << 10).simulated(&storage);
    let log = open_raw(&dir, options()).unwrap();
    for i in 0..10 {
        log.append(&payload(SEED, i)).unwrap();
    }
    let batch: Vec<Vec<u8>> = (10..70).map(|i| payload(SEED, i)).collect();
    log.append_batch(&batch).unwrap();
    let t = log.get(10).unwrap().unwrap().timestamp;
    assert_eq!(
        log.get(69).unwrap().unwrap().timestamp,
        t,
        "one time per batch"
    );
    assert!(log.get(9).unwrap().unwrap().timestamp < t);
    log.close().unwrap();

    let seg = &layout(&Disk::Sim(storage.clone()), &dir)[0];
    let mut idx = storage.read_file(&seg.idx).unwrap();
    let entries = index_entries(&idx);
    let before = entries.iter().rposition(|e| u32_at(e, 0) < 10).unwrap();
    let older = u64_at(&entries[before], 8);
    let mut understated = 0;
    for (i, e) in entries.iter().enumerate().skip(before + 1) {
        assert!(u32_at(e, 0) > 10, "an entry past the run's first record");
        idx[32 + i * 16 + 8..32 + i * 16 + 16].copy_from_slice(&older.to_le_bytes());
        understated += 1;
    }
    assert!(understated >= 3, "{understated} entries inside the run");
    storage.write_file(&seg.idx, &idx);

    let log = open_raw(&dir, options()).unwrap();
    let first = log.read(Start::Timestamp(t)).next().unwrap().unwrap();
    assert_eq!(first.offset, 10);
}

/// A damaged record hides only itself from lookups by offset: `get` of a
/// later record walks from an index entry past the damage. That includes
/// entries the writer adds while the log is open, so the active segment's
/// index file is sized for all of them when the segment is opened.
#[test]
fn a_damaged_record_hides_only_itself_from_lookups() {
    let dir = sim_dir();
    let storage = SimStorage::new();
    let log = open_raw(&dir, small().segment_bytes(64 << 10).simulated(&storage)).unwrap();
    let values = expected(300);
    for value in &values {
        log.append(value).unwrap();
    }
    let seg = &layout(&Disk::Sim(storage.clone()), &dir)[0];
    assert_eq!(seg.frames.len(), 300, "one segment");
    let mut bytes = seg.bytes.clone();
    let damaged = seg.frames[100];
    bytes[damaged.pos..damaged.pos + 4].copy_from_slice(&3u32.to_le_bytes());
    storage.write_file(&seg.path, &bytes);
    let (path, position, offset, _) = get_corrupt(&log, 100);
    assert_eq!(
        (path, position, offset),
        (seg.path.clone(), damaged.pos as u64, Some(100))
    );
    for o in [20, 99, 150, 299] {
        assert_get(&log, o, &values);
    }
}

// =============================================================================
// 9. Stray files
// =============================================================================

#[test]
fn stray_files_are_tidied_or_left_alone() {
    let dir = sim_dir();
    let pristine = SimStorage::new();
    let values = build(&Disk::Sim(pristine.clone()), &dir, small(), 300, 1);
    let snapshot = sim_snapshot(&pristine);
    let mut rng = Rng(SEED ^ 0x5);

    let storage = sim_from(&snapshot);
    let foreign = [
        (dir.join("foo.txt"), b"hello".to_vec()),
        (dir.join(".DS_Store"), rng.bytes(300)),
    ];
    let removed = [
        (dir.join("junk.tmp"), rng.bytes(10)),
        (dir.join("00000000000000000123.idx.tmp"), rng.bytes(50)),
        (dir.join("00000000000000777777.idx"), rng.bytes(64)),
    ];
    for (path, bytes) in foreign.iter().chain(&removed) {
        storage.write_file(path, bytes);
    }
    let log = open_raw(&dir, small().simulated(&storage)).unwrap();
    assert_holds(&log, &values, "with stray files");
    let reported: BTreeSet<PathBuf> = log
        .recovery_report()
        .removed_files
        .iter()
        .cloned()
        .collect();
    let want: BTreeSet<PathBuf> = removed.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(reported, want);
    assert!(log.recovery_report().truncated_segment.is_none());
    assert!(
        !log.recovery_report().is_clean(),
        "removed files are a repair"
    );
    for (path, bytes) in &foreign {
        assert_eq!(
            storage.read_file(path).as_ref(),
            Some(bytes),
            "{}",
            path.display()
        );
    }
    for (path, _) in &removed {
        assert!(storage.read_file(path).is_none(), "{}", path.display());
    }
    log.close().unwrap();
    assert_appends_continue(&Disk::Sim(storage), &dir, small(), &values);
}

#[test]
fn a_file_named_like_a_segment_is_refused_or_removed() {
    let dir = sim_dir();
    let (values, snapshot, segs) = pristine_sim(300);
    let mut rng = Rng(SEED ^ 0x99);

    // Newest by name, random bytes: refused at open, naming it.
    let stray = dir.join("00000000000000099999.seg");
    let storage = sim_from(&snapshot);
    storage.write_file(&stray, &rng.bytes(4096));
    match open_raw(&dir, small().simulated(&storage)) {
        Err(Error::Corrupt {
            path,
            position,
            kind,
            ..
        }) => {
            assert_eq!(path, stray);
            assert_eq!(position, 0);
            assert_eq!(kind, CorruptionKind::BadMagic);
        }
        other => panic!(
            "random segment-named file: {:?}",
            other.map(|l| l.next_offset())
        ),
    }

    // Newest by name, all zeros: an unfinished create, removed.
    let storage = sim_from(&snapshot);
    storage.write_file(&stray, &[0; 4096]);
    let log = open_raw(&dir, small().simulated(&storage)).unwrap();
    assert_eq!(log.recovery_report().removed_files, vec![stray.clone()]);
    assert_holds(&log, &values, "zeroed segment-named file");
    log.close().unwrap();
    assert!(storage.read_file(&stray).is_none());
    assert_appends_continue(&Disk::Sim(storage), &dir, small(), &values);

    // Inside the log's range, random bytes: reading reaches it and fails.
    let inside = segs[1].base + 5;
    let stray = dir.join(format!("{inside:020}.seg"));
    let storage = sim_from(&snapshot);
    storage.write_file(&stray, &rng.bytes(4096));
    let log = open_raw(&dir, small().simulated(&storage)).unwrap();
    let (records, err) = read_until_error(&log);
    assert_run(&records, &values, 0, "stray inside");
    assert_eq!(records.len() as u64, inside);
    let (path, _, _, kind) = corrupt(err, "stray inside");
    assert_eq!((path, kind), (stray, CorruptionKind::BadMagic));
    assert!(matches!(log.get(inside), Err(Error::Corrupt { .. })));
}

// =============================================================================
// 10. Consumer files
// =============================================================================

#[test]
fn a_damaged_consumer_slot_falls_back_to_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let template = tmp.path().join("template");
    build(&Disk::Real, &template, small(), 50, 50);
    {
        let log = open_raw(&template, small()).unwrap();
        let shipping = log.consumer("shipping").unwrap();
        shipping.commit(10).unwrap(); // generation 1, slot B
        shipping.commit(20).unwrap(); // generation 2, slot A
        log.close().unwrap();
    }
    let (slot_a, slot_b) = (16, 40);
    let cases: [(&str, Vec<usize>, Option<u64>); 4] = [
        ("newest slot damaged", vec![slot_a + 9], Some(10)),
        ("older slot damaged", vec![slot_b + 9], Some(20)),
        ("newest slot's CRC damaged", vec![slot_a + 17], Some(10)),
        ("both slots damaged", vec![slot_a + 9, slot_b + 2], None),
    ];
    for (what, flips, want) in cases {
        let dir = tmp.path().join(what.replace(' ', "-").replace('\'', ""));
        copy_dir(&template, &dir);
        let file = dir.join("shipping.consumer");
        let mut bytes = std::fs::read(&file).unwrap();
        for at in flips {
            bytes[at] ^= 0x04;
        }
        std::fs::write(&file, &bytes).unwrap();
        let log = open_raw(&dir, small()).unwrap();
        match (want, log.consumer("shipping")) {
            (Some(position), Ok(consumer)) => {
                assert_eq!(consumer.position(), position, "{what}");
                consumer.commit(30).unwrap();
                drop(consumer);
                log.close().unwrap();
                let log = open_raw(&dir, small()).unwrap();
                assert_eq!(log.consumer("shipping").unwrap().position(), 30, "{what}");
            }
            (None, Err(Error::Corrupt { path, .. })) => assert_eq!(path, file, "{what}"),
            (want, other) => panic!(
                "{what}: want {want:?}, got {:?}",
                other.map(|c| c.position())
            ),
        }
    }
    // A consumer file cut short keeps slot A.
    let dir = tmp.path().join("short");
    copy_dir(&template, &dir);
    let file = dir.join("shipping.consumer");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..slot_b]).unwrap();
    let log = open_raw(&dir, small()).unwrap();
    assert_eq!(log.consumer("shipping").unwrap().position(), 20);
}

// =============================================================================
// 11. Salvage mode
// =============================================================================

#[test]
fn salvage_mode_cuts_the_log_at_the_first_damaged_record() {
    let dir = sim_dir();
    let (values, snapshot, segs) = pristine_sim(400);
    assert!(segs.len() >= 4);
    let salvage = || small().recovery(RecoveryMode::TruncateAtFirstCorruption);

    for (what, s) in [
        ("a sealed segment", 1),
        ("the newest segment", segs.len() - 1),
    ] {
        let seg = &segs[s];
        let frame = seg.frames[seg.frames.len() / 2];
        let storage = sim_from(&snapshot);
        let mut bytes = seg.bytes.clone();
        bytes[frame.pos + 30] ^= 0x20; // in the payload
        storage.write_file(&seg.path, &bytes);
        let disk = Disk::Sim(storage.clone());

        // Strict: opens, and reading reports the damage.
        let log = open_raw(&dir, small().simulated(&storage)).unwrap();
        let (p, _, offset, _) = corrupt(read_until_error(&log).1, what);
        assert_eq!((p, offset), (seg.path.clone(), Some(frame.offset)));
        drop(log);

        let log = open_raw(&dir, salvage().simulated(&storage)).unwrap();
        let kept = &values[..frame.offset as usize];
        assert_holds(&log, kept, what);
        let report = log.recovery_report().clone();
        let mut want_removed = Vec::new();
        for later in segs[s + 1..].iter().rev() {
            want_removed.push(later.path.clone());
            want_removed.push(later.idx.clone());
        }
        assert_eq!(report.removed_files, want_removed, "{what}");
        assert!(
            matches!(report.damage, Some(CorruptionKind::Checksum { .. })),
            "{what}: {report:?}"
        );
        assert_cut_reported(&disk, &log, seg, frame.pos, &bytes[frame.pos..], what);
        for later in &segs[s + 1..] {
            assert!(
                !disk.exists(&later.path),
                "{what}: {}",
                later.path.display()
            );
        }
        log.close().unwrap();
        assert_appends_continue(&disk, &dir, salvage(), kept);
        // And a strict open agrees.
        let log = open_raw(&dir, small().simulated(&storage)).unwrap();
        assert!(log.recovery_report().is_clean());
        assert_eq!(log.next_offset(), frame.offset + 1);
    }
}

/// The salvage mode and a sealed segment whose header is damaged: the
/// first damage is at that segment's first byte, so the log is cut there,
/// and the damaged segment's bytes are kept for forensics.
#[test]
fn salvage_mode_cuts_the_log_at_a_sealed_segment_with_a_damaged_header() {
    let dir = sim_dir();
    let (values, snapshot, segs) = pristine_sim(400);
    assert!(segs.len() >= 4);
    let salvage = || small().recovery(RecoveryMode::TruncateAtFirstCorruption);
    for (s, byte) in [(1, 0usize), (1, 20), (1, 25), (0, 3)] {
        let what = format!("header byte {byte} of segment {s}");
        let seg = &segs[s];
        let storage = sim_from(&snapshot);
        let mut bytes = seg.bytes.clone();
        bytes[byte] ^= 0x20;
        storage.write_file(&seg.path, &bytes);
        let disk = Disk::Sim(storage.clone());
        let log =
            open_raw(&dir, salvage().simulated(&storage)).unwrap_or_else(|e| panic!("{what}: {e}"));
        let kept = &values[..seg.base as usize];
        assert_holds(&log, kept, &what);
        let report = log.recovery_report().clone();
        assert!(!report.is_clean(), "{what}");
        // The damaged segment and all after it are gone (with nothing left,
        // a new, empty first segment takes the damaged one's base).
        for later in &segs[s + usize::from(s == 0)..] {
            assert!(
                !disk.exists(&later.path),
                "{what}: {}",
                later.path.display()
            );
        }
        let copy = seg
            .path
            .with_file_name(format!("{:020}.0.damaged", seg.base));
        assert_eq!(
            disk.read(&copy),
            bytes,
            "{what}: the damaged segment is kept"
        );
        log.close().unwrap();
        assert_appends_continue(&disk, &dir, salvage(), kept);
    }
}

// =============================================================================
// 12. Watermark slots that do not tell the truth
// =============================================================================

/// Writes the frame CRC of the frame at `pos` (bytes 4..8: CRC-32 of bytes
/// 0..4 and 8..8+len), so a forged frame is internally valid.
fn fix_frame_crc(bytes: &mut [u8], pos: usize) {
    let len = u32_at(bytes, pos) as usize;
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[pos..pos + 4]);
    h.update(&bytes[pos + 8..pos + 8 + len]);
    bytes[pos + 4..pos + 8].copy_from_slice(&h.finalize().to_le_bytes());
}

/// A watermark slot with a valid CRC is still checked. One that cannot be
/// right for its segment (a position inside the header, an offset below
/// the segment's base) is ignored and the segment scanned from its start;
/// one that the frames do not lead to is damage: a strict open refuses,
/// naming where the frames and the slot part ways, and the salvage mode
/// (which ignores slots) and a salvaging follower (which falls back to a
/// scan) open the intact log.
#[test]
fn watermark_slots_are_checked_against_the_frames() {
    let dir = sim_dir();
    let (values, snapshot, segs) = pristine_sim(300);
    let seg = segs.last().unwrap();
    assert!(
        seg.base > 0 && seg.frames.len() >= 6,
        "a later segment with records"
    );
    let r = seg.frames.len();
    let last_ts = seg.frames[r - 1].ts;
    let end = seg.end() as u64;
    let open_with = |bytes: &[u8], options: Options| {
        let storage = sim_from(&snapshot);
        storage.write_file(&seg.path, bytes);
        // Without the index, the walk to the slot starts at the first record.
        storage.remove_file_durably(&seg.idx);
        (open_raw(&dir, options.simulated(&storage)), storage)
    };

    // Implausible slots: ignored, the whole segment is scanned.
    for (what, pos, next) in [
        ("a position inside the header", 10, seg.next()),
        ("an offset below the base", end, seg.base - 1),
    ] {
        let mut bytes = seg.bytes.clone();
        set_watermark(&mut bytes, pos, next, last_ts);
        let (log, _) = open_with(&bytes, small());
        let log = log.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_holds(&log, &values, what);
        assert_eq!(
            log.recovery_report().scanned_bytes,
            end - HEADER as u64,
            "{what}: scanned from the first record"
        );
    }

    // Slots the frames do not lead to.
    let k = r - 3;
    let at = seg.frames[k];
    let mut wrong_next = seg.bytes.clone();
    set_watermark(&mut wrong_next, end, seg.next() + 1, last_ts);
    let mut stale_frame = seg.bytes.clone();
    stale_frame[at.pos + 8..at.pos + 16].copy_from_slice(&(at.offset + 7).to_le_bytes());
    fix_frame_crc(&mut stale_frame, at.pos);
    set_watermark(&mut stale_frame, end, seg.next(), last_ts);
    let mut short_frame = seg.bytes.clone();
    short_frame[at.pos..at.pos + 4].copy_from_slice(&5u32.to_le_bytes());
    // 16 is the length of an empty version-1 record: a version-2 frame
    // holds at least 20 bytes after its first 8.
    let mut v1_length = seg.bytes.clone();
    v1_length[at.pos..at.pos + 4].copy_from_slice(&16u32.to_le_bytes());
    for (what, bytes, position, offset, kind) in [
        (
            "the right position with the wrong next offset",
            &wrong_next,
            end,
            seg.next(),
            CorruptionKind::BadHeader,
        ),
        (
            "a valid frame with another offset before the slot",
            &stale_frame,
            at.pos as u64,
            at.offset,
            CorruptionKind::OffsetMismatch {
                expected: at.offset,
                found: at.offset + 7,
            },
        ),
        (
            "a frame before the slot shorter than a frame can be",
            &short_frame,
            at.pos as u64,
            at.offset,
            CorruptionKind::Length { len: 5 },
        ),
        (
            "a frame before the slot of a version-1 length",
            &v1_length,
            at.pos as u64,
            at.offset,
            CorruptionKind::Length { len: 16 },
        ),
    ] {
        let (opened, _) = open_with(bytes, small());
        match opened {
            Err(Error::Corrupt {
                path,
                position: p,
                offset: o,
                kind: k,
            }) => {
                assert_eq!(path, seg.path, "{what}");
                assert_eq!((p, o, k), (position, Some(offset), kind), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
        // The salvage mode ignores slots and cuts at the first bad frame.
        let salvage = small().recovery(RecoveryMode::TruncateAtFirstCorruption);
        let (log, _) = open_with(bytes, salvage.clone());
        let log = log.unwrap_or_else(|e| panic!("{what}, salvage: {e}"));
        // It keeps everything up to the first frame that is not right.
        let kept = if position == end {
            values.len()
        } else {
            at.offset as usize
        };
        assert_holds(&log, &values[..kept], what);
        drop(log);
        // A follower in the salvage mode does not write; it falls back to
        // scanning the segment from its start.
        let (log, _) = open_with(bytes, salvage.read_only());
        let log = log.unwrap_or_else(|e| panic!("{what}, salvaging follower: {e}"));
        assert_eq!(log.next_offset(), kept as u64, "{what}, salvaging follower");
    }
}

/// A frame of a kind this build does not know, before the watermark: the
/// walk from the first record to the watermark stops there, and the open is
/// refused naming the frame with the kind and flags bytes found
/// (`CorruptionKind::UnknownFrame`: "the flags byte found"; the walk once
/// reported 0 whatever the byte was).
#[test]
fn a_walk_to_the_watermark_names_an_unknown_frame_as_found() {
    let dir = sim_dir();
    let (_, snapshot, segs) = pristine_sim(300);
    let seg = segs.last().unwrap();
    let at = seg.frames[seg.frames.len() - 3];
    let mut bytes = seg.bytes.clone();
    // Bytes 24 and 25 of a version-2 frame: its kind and flags.
    bytes[at.pos + 24] = 7;
    bytes[at.pos + 25] = 3;
    fix_frame_crc(&mut bytes, at.pos);
    set_watermark(
        &mut bytes,
        seg.end() as u64,
        seg.next(),
        seg.frames.last().unwrap().ts,
    );
    let storage = sim_from(&snapshot);
    storage.write_file(&seg.path, &bytes);
    storage.remove_file_durably(&seg.idx);
    match open_raw(&dir, small().simulated(&storage)) {
        Err(Error::Corrupt {
            path,
            position,
            offset,
            kind,
        }) => {
            assert_eq!(path, seg.path);
            assert_eq!((position, offset), (at.pos as u64, Some(at.offset)));
            assert_eq!(kind, CorruptionKind::UnknownFrame { kind: 7, flags: 3 });
        }
        other => panic!("{other:?}"),
    }
}

/// A checkpoint is read from the newest segment, whose frames before its
/// watermark are not checked on open. When the newest checkpoint of a name
/// is damaged there, `last_checkpoint` cannot know it and must say so
/// (`Error::Corrupt`, as a read of the records in its batch does), never
/// return an older checkpoint: a reader resuming from that one would hand
/// on again inputs whose outputs the log already holds. (The walk for
/// checkpoints once stopped at the damage and kept what it had found.)
#[test]
fn a_damaged_newest_checkpoint_is_an_error_not_an_older_one() {
    let dir = sim_dir();
    let storage = SimStorage::new();
    let log = open_raw(&dir, small().simulated(&storage)).unwrap();
    for (value, state) in [(b"a", b"old"), (b"b", b"new")] {
        let checkpoint = Checkpoint::new("job").with_state(state.to_vec());
        log.append_committing(&[value.to_vec()], &checkpoint)
            .unwrap();
    }
    log.close().unwrap();
    let path = dir.join(format!("{:020}.seg", 0));
    let mut bytes = storage.read_file(&path).unwrap();
    // Its frames: checkpoint "old", record 0, checkpoint "new", record 1.
    // A byte of the second checkpoint's payload (after its 28-byte header)
    // goes bad.
    let second = HEADER
        + parse_frames(&bytes)[..2]
            .iter()
            .map(|f| f.size)
            .sum::<usize>();
    assert_eq!(bytes[second + 24], 1, "a control frame");
    bytes[second + 28 + 5] ^= 0xFF;
    storage.write_file(&path, &bytes);

    let log = open_raw(&dir, small().simulated(&storage)).unwrap();
    // The damage is real: a read from the start meets it after record 0,
    // and so does `verify`. (A lookup of record 1 goes to it through the
    // index, past the checkpoint in front of it: it reads fine.)
    let (records, err) = read_until_error(&log);
    assert_eq!(records, vec![(0, b"a".to_vec())]);
    assert!(matches!(err, Some(Error::Corrupt { .. })), "{err:?}");
    assert!(matches!(log.verify(), Err(Error::Corrupt { .. })));
    assert_eq!(log.get(1).unwrap().unwrap().value, b"b");
    match log.last_checkpoint("job") {
        Err(Error::Corrupt { path: p, .. }) => assert_eq!(p, path),
        other => panic!(
            "the newest checkpoint is damaged, yet last_checkpoint gave {:?}",
            other.map(|c| c.map(|c| String::from_utf8_lossy(c.state()).into_owned()))
        ),
    }
}

/// A follower that finds a new segment whose header is damaged (here, a
/// base that differs from its name) reports it when it reads on, naming
/// the file, after every record it had; those stay readable by offset.
#[test]
fn a_follower_reports_a_damaged_new_segment() {
    let dir = sim_dir();
    let storage = SimStorage::new();
    let values = build(&Disk::Sim(storage.clone()), &dir, small(), 50, 1);
    let segs = layout(&Disk::Sim(storage.clone()), &dir);
    let newest = segs.last().unwrap();
    let follower = open_raw(&dir, small().read_only().simulated(&storage)).unwrap();
    assert_holds(&follower, &values, "before");
    let next = newest.next();
    let path = dir.join(format!("{next:020}.seg"));
    let mut header = newest.bytes[..HEADER].to_vec();
    header[16..24].copy_from_slice(&(next + 1).to_le_bytes());
    fix_header_crc(&mut header);
    set_watermark(&mut header, HEADER as u64, next + 1, 0);
    header.resize(4096, 0);
    storage.write_file(&path, &header);
    let (records, err) = read_until_error(&follower);
    assert_eq!(records.len(), values.len(), "every record before the error");
    assert_run(&records, &values, 0, "read before the error");
    match err {
        Some(Error::Corrupt { path: p, kind, .. }) => {
            assert_eq!(p, path);
            assert_eq!(kind, CorruptionKind::BadHeader);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(follower.get(3).unwrap().unwrap().value, values[3]);
    // A subscription of the follower gets the records, then the error.
    let sub = follower.subscribe(Start::Beginning).unwrap();
    for (offset, value) in values.iter().enumerate() {
        let rec = sub.recv().unwrap();
        assert_eq!((rec.offset, &rec.value), (offset as u64, value));
    }
    assert!(matches!(sub.recv(), Err(Error::Corrupt { .. })));
    assert!(matches!(sub.recv(), Err(Error::Closed)));
}
