//! Record frames, in both layouts a segment can hold. Version 1: length,
//! CRC, offset, timestamp, payload. Version 2 adds a kind (a record, or a
//! control frame that takes no offset), flags and an optional source time.
//! The writer seals version-2 frames in place; readers validate frames of
//! either layout whole ([`decode_frame`]) or walk their length, offset and
//! kind fields alone (the `frame_*_field` accessors).

use super::{read_u32, read_u64};
use crate::error::CorruptionKind;

/// The frame layout of a segment, decided by its header's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `len | crc | offset | timestamp | payload`: every frame a record.
    V1,
    /// `len | crc | offset | timestamp | kind | flags | reserved |
    /// [source time] | payload`.
    V2,
}

impl Layout {
    /// The layout of segments of format `version`, if this build reads it.
    pub(crate) fn of_version(version: u32) -> Option<Layout> {
        match version {
            1 => Some(Layout::V1),
            2 => Some(Layout::V2),
            _ => None,
        }
    }

    pub(crate) fn version(self) -> u32 {
        match self {
            Layout::V1 => 1,
            Layout::V2 => 2,
        }
    }

    /// Bytes a frame without a source time adds to its payload.
    #[inline]
    pub(crate) const fn overhead(self) -> usize {
        match self {
            Layout::V1 => FRAME_OVERHEAD_V1,
            Layout::V2 => FRAME_OVERHEAD,
        }
    }

    /// The smallest length field: the header after the 8-byte prefix.
    #[inline]
    const fn len_min(self) -> u32 {
        (self.overhead() - FRAME_PREFIX) as u32
    }

    /// The most header bytes a frame of this layout can have past
    /// [`overhead`](Layout::overhead) (a source time).
    #[inline]
    const fn optional_header(self) -> u32 {
        match self {
            Layout::V1 => 0,
            Layout::V2 => SOURCE_TIME_LEN as u32,
        }
    }
}

/// Bytes a version-2 frame adds to its payload (36 with a source time):
/// the layout this build writes.
pub(crate) const FRAME_OVERHEAD: usize = 28;
/// Bytes a version-1 frame adds to its payload.
pub(crate) const FRAME_OVERHEAD_V1: usize = 24;
/// The length of the optional source-time field of a version-2 frame.
pub(crate) const SOURCE_TIME_LEN: usize = 8;
/// The length field counts the bytes after the 8-byte prefix, so it is
/// never zero for a real frame and a zero length marks the end of the
/// written data.
const FRAME_PREFIX: usize = 8;
/// Where a version-2 frame's kind, flags and source time are.
const KIND_AT: usize = 24;
const FLAGS_AT: usize = 25;
const RESERVED_AT: usize = 26;
const SOURCE_TIME_AT: usize = 28;
/// Bit 0 of a version-2 frame's flags: a source time follows the header.
const FLAG_SOURCE_TIME: u8 = 1;

/// What a frame holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A record: it has an offset and readers return it.
    Record,
    /// A control frame (a checkpoint): it takes no offset, its offset field
    /// holding the next record's, and typed reads never return it.
    Control,
}

impl FrameKind {
    fn code(self) -> u8 {
        match self {
            FrameKind::Record => 0,
            FrameKind::Control => 1,
        }
    }

    fn from_code(code: u8) -> Option<FrameKind> {
        match code {
            0 => Some(FrameKind::Record),
            1 => Some(FrameKind::Control),
            _ => None,
        }
    }
}

/// Appends one frame of `layout` to `out` (the writer seals frames in
/// place with [`seal_frame`]; this is for tests and fixtures that build
/// frames by hand). A version-1 frame has no kind or source time.
#[cfg(test)]
pub(crate) fn encode_frame(
    out: &mut Vec<u8>,
    layout: Layout,
    offset: u64,
    timestamp: u64,
    kind: FrameKind,
    source_time: Option<u64>,
    payload: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_PREFIX]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    if layout == Layout::V2 {
        let flags = if source_time.is_some() {
            FLAG_SOURCE_TIME
        } else {
            0
        };
        out.extend_from_slice(&[kind.code(), flags, 0, 0]);
        if let Some(source_time) = source_time {
            out.extend_from_slice(&source_time.to_le_bytes());
        }
    }
    out.extend_from_slice(payload);
    let len = (out.len() - start - FRAME_PREFIX) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = frame_crc(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Writes a version-2 frame header in front of a payload already placed at
/// `frame[FRAME_OVERHEAD..]` (or at `frame[FRAME_OVERHEAD +
/// SOURCE_TIME_LEN..]` with a source time), so encoders can serialize in
/// place.
#[inline]
pub(crate) fn seal_frame(
    frame: &mut [u8],
    offset: u64,
    timestamp: u64,
    kind: FrameKind,
    source_time: Option<u64>,
) {
    let len = (frame.len() - FRAME_PREFIX) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[8..16].copy_from_slice(&offset.to_le_bytes());
    frame[16..24].copy_from_slice(&timestamp.to_le_bytes());
    frame[KIND_AT] = kind.code();
    frame[FLAGS_AT] = 0;
    frame[RESERVED_AT..SOURCE_TIME_AT].copy_from_slice(&[0, 0]);
    if let Some(source_time) = source_time {
        frame[FLAGS_AT] = FLAG_SOURCE_TIME;
        frame[SOURCE_TIME_AT..SOURCE_TIME_AT + SOURCE_TIME_LEN]
            .copy_from_slice(&source_time.to_le_bytes());
    }
    let crc = frame_crc(frame);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The CRC32 of a whole frame: its length field, then everything after the
/// CRC field. The same in both layouts.
///
/// The length field's four bytes go through [`crc32_of_word`] and
/// `crc32fast` goes on from there: a separate `update` of four bytes costs
/// about a quarter of the whole frame's checksum (every read verifies it).
#[inline]
fn frame_crc(frame: &[u8]) -> u32 {
    let len = u32::from_le_bytes(frame[..4].try_into().expect("4 bytes"));
    let mut hasher = crc32fast::Hasher::new_with_initial(crc32_of_word(len));
    hasher.update(&frame[FRAME_PREFIX..]);
    hasher.finalize()
}

/// The CRC32 (IEEE, reflected, as `crc32fast` computes it) of the four
/// little-endian bytes of `word`, by slicing-by-4 tables.
#[inline]
fn crc32_of_word(word: u32) -> u32 {
    let x = !word;
    !(CRC_TABLES[3][(x & 0xff) as usize]
        ^ CRC_TABLES[2][((x >> 8) & 0xff) as usize]
        ^ CRC_TABLES[1][((x >> 16) & 0xff) as usize]
        ^ CRC_TABLES[0][(x >> 24) as usize])
}

/// Slicing-by-4 tables of the reflected CRC32 polynomial: `[0]` is the
/// byte-at-a-time table, and `[k][b]` is byte `b` followed by `k` zero bytes.
static CRC_TABLES: [[u32; 256]; 4] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 4] {
    let mut tables = [[0u32; 256]; 4];
    let mut b = 0;
    while b < 256 {
        let mut crc = b as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][b] = crc;
        b += 1;
    }
    let mut k = 1;
    while k < 4 {
        let mut b = 0;
        while b < 256 {
            let prev = tables[k - 1][b];
            tables[k][b] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            b += 1;
        }
        k += 1;
    }
    tables
}

/// The length field of the frame starting at `at` (`None` past the end of
/// `bytes`). Walks read it, and the offset and kind fields, without
/// checking the CRC.
#[inline]
pub(crate) fn frame_len_field(bytes: &[u8], at: usize) -> Option<u32> {
    read_u32(bytes, at)
}

/// The offset field of the frame starting at `at`.
#[inline]
pub(crate) fn frame_offset_field(bytes: &[u8], at: usize) -> Option<u64> {
    read_u64(bytes, at + 8)
}

/// The timestamp field of the frame starting at `at`.
#[inline]
pub(crate) fn frame_timestamp_field(bytes: &[u8], at: usize) -> Option<u64> {
    read_u64(bytes, at + 16)
}

/// The kind field of the frame starting at `at` (every version-1 frame is
/// a record); `None` for a kind this build does not know or no bytes.
#[inline]
pub(crate) fn frame_kind_field(bytes: &[u8], at: usize, layout: Layout) -> Option<FrameKind> {
    match layout {
        Layout::V1 => Some(FrameKind::Record),
        Layout::V2 => FrameKind::from_code(*bytes.get(at + KIND_AT)?),
    }
}

/// The whole size on disk of a frame whose length field is `len`.
#[inline]
pub(crate) fn frame_size(len: u32) -> u64 {
    FRAME_PREFIX as u64 + u64::from(len)
}

/// Whether `len` can be the length field of a frame of `layout` whose
/// payload is at most `max_payload` bytes (zero, the end marker, is not).
#[inline]
pub(crate) fn frame_len_plausible(len: u32, max_payload: u32, layout: Layout) -> bool {
    len >= layout.len_min()
        && u64::from(len - layout.len_min())
            <= u64::from(max_payload) + u64::from(layout.optional_header())
}

/// A frame that passed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) offset: u64,
    pub(crate) timestamp: u64,
    pub(crate) kind: FrameKind,
    /// The event time of the input a derived record came from.
    pub(crate) source_time: Option<u64>,
    pub(crate) payload: &'a [u8],
    /// The frame's whole length on disk.
    pub(crate) len: usize,
}

impl Frame<'_> {
    pub(crate) fn is_record(&self) -> bool {
        self.kind == FrameKind::Record
    }
}

/// What lies at a position where a frame may start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Scan<'a> {
    /// A valid frame.
    Frame(Frame<'a>),
    /// A zero length field, or no bytes left: the end of the written data.
    End,
    /// Bytes that are not a valid frame.
    Damaged(CorruptionKind),
}

/// Validates the frame of `layout` at the start of `buf`.
///
/// The length is checked against `max_payload` and the bytes available
/// before anything else is read, so a crafted length can neither allocate
/// nor read out of bounds. A version-2 frame whose CRC holds but whose
/// kind, flags or reserved bytes this build does not know is refused as
/// [`CorruptionKind::UnknownFrame`], never guessed at.
// Always inlined: returned through memory, the `Scan` costs a
// store-forwarding stall per record on the replay path.
#[inline(always)]
pub(crate) fn decode_frame(buf: &[u8], max_payload: u32, layout: Layout) -> Scan<'_> {
    let Some(len) = read_u32(buf, 0) else {
        return if buf.iter().all(|&b| b == 0) {
            Scan::End
        } else {
            Scan::Damaged(CorruptionKind::Length { len: 0 })
        };
    };
    if len == 0 {
        return Scan::End;
    }
    if !frame_len_plausible(len, max_payload, layout) {
        return Scan::Damaged(CorruptionKind::Length { len });
    }
    let total = FRAME_PREFIX + len as usize;
    let Some(frame) = buf.get(..total) else {
        return Scan::Damaged(CorruptionKind::Length { len });
    };
    let stored = read_u32(frame, 4).expect("in frame");
    let computed = frame_crc(frame);
    if stored != computed {
        return Scan::Damaged(CorruptionKind::Checksum { stored, computed });
    }
    let offset = read_u64(frame, 8).expect("in frame");
    let timestamp = read_u64(frame, 16).expect("in frame");
    let (kind, source_time, header) = match layout {
        Layout::V1 => (FrameKind::Record, None, FRAME_OVERHEAD_V1),
        Layout::V2 => {
            let (code, flags) = (frame[KIND_AT], frame[FLAGS_AT]);
            let unknown = CorruptionKind::UnknownFrame { kind: code, flags };
            let Some(kind) = FrameKind::from_code(code) else {
                return Scan::Damaged(unknown);
            };
            let reserved_clear = frame[RESERVED_AT..SOURCE_TIME_AT] == [0, 0];
            match flags {
                0 if reserved_clear => (kind, None, FRAME_OVERHEAD),
                FLAG_SOURCE_TIME if reserved_clear && kind == FrameKind::Record => {
                    match read_u64(frame, SOURCE_TIME_AT) {
                        Some(time) => (kind, Some(time), FRAME_OVERHEAD + SOURCE_TIME_LEN),
                        None => return Scan::Damaged(CorruptionKind::Length { len }),
                    }
                }
                _ => return Scan::Damaged(unknown),
            }
        }
    };
    let payload = &frame[header..];
    if payload.len() > max_payload as usize {
        return Scan::Damaged(CorruptionKind::Length { len });
    }
    Scan::Frame(Frame {
        offset,
        timestamp,
        kind,
        source_time,
        payload,
        len: total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(layout: Layout, offset: u64, timestamp: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let kind = FrameKind::Record;
        encode_frame(&mut buf, layout, offset, timestamp, kind, None, payload);
        buf
    }

    #[test]
    fn frame_layouts_are_as_documented() {
        let v1 = record(Layout::V1, 7, 99, b"abc");
        assert_eq!(v1.len(), FRAME_OVERHEAD_V1 + 3);
        assert_eq!(read_u32(&v1, 0), Some(16 + 3));
        assert_eq!(read_u64(&v1, 8), Some(7));
        assert_eq!(read_u64(&v1, 16), Some(99));
        assert_eq!(&v1[24..], b"abc");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&v1[..4]);
        crc.update(&v1[8..]);
        assert_eq!(read_u32(&v1, 4), Some(crc.finalize()));

        let v2 = record(Layout::V2, 7, 99, b"abc");
        assert_eq!(v2.len(), FRAME_OVERHEAD + 3);
        assert_eq!(read_u32(&v2, 0), Some(20 + 3));
        assert_eq!(read_u64(&v2, 8), Some(7));
        assert_eq!(read_u64(&v2, 16), Some(99));
        assert_eq!(&v2[24..28], &[0, 0, 0, 0]);
        assert_eq!(&v2[28..], b"abc");

        let mut timed = Vec::new();
        let kind = FrameKind::Record;
        encode_frame(&mut timed, Layout::V2, 7, 99, kind, Some(55), b"abc");
        assert_eq!(timed.len(), FRAME_OVERHEAD + SOURCE_TIME_LEN + 3);
        assert_eq!(&timed[24..28], &[0, 1, 0, 0]);
        assert_eq!(read_u64(&timed, 28), Some(55));

        let mut control = Vec::new();
        let kind = FrameKind::Control;
        encode_frame(&mut control, Layout::V2, 7, 99, kind, None, b"c");
        assert_eq!(control[24], 1);
        assert_eq!(frame_kind_field(&control, 0, Layout::V2), Some(kind));
        assert_eq!(
            frame_kind_field(&v1, 0, Layout::V1),
            Some(FrameKind::Record)
        );
    }

    #[test]
    fn frame_round_trip_and_seal_agree() {
        for source_time in [None, Some(1_699_999_999_000_000)] {
            let mut a = Vec::new();
            let kind = FrameKind::Record;
            let ts = 1_700_000_000_000_000;
            encode_frame(&mut a, Layout::V2, 42, ts, kind, source_time, b"payload");
            let header = FRAME_OVERHEAD + source_time.map_or(0, |_| SOURCE_TIME_LEN);
            let mut b = vec![0u8; header];
            b.extend_from_slice(b"payload");
            seal_frame(&mut b, 42, ts, kind, source_time);
            assert_eq!(a, b);
            let Scan::Frame(frame) = decode_frame(&a, 1024, Layout::V2) else {
                panic!("valid frame refused");
            };
            assert_eq!(frame.offset, 42);
            assert_eq!(frame.timestamp, ts);
            assert_eq!(frame.kind, FrameKind::Record);
            assert_eq!(frame.source_time, source_time);
            assert_eq!(frame.payload, b"payload");
            assert_eq!(frame.len, a.len());
        }
        let v1 = record(Layout::V1, 3, 4, b"old");
        let Scan::Frame(frame) = decode_frame(&v1, 1024, Layout::V1) else {
            panic!("valid version-1 frame refused");
        };
        assert_eq!(
            (frame.offset, frame.timestamp, frame.payload),
            (3, 4, &b"old"[..])
        );
        assert_eq!(frame.kind, FrameKind::Record);
    }

    #[test]
    fn the_length_word_checksum_is_crc32() {
        for word in [0u32, 1, 20, 0xff, 0x1234_5678, 0xdead_beef, u32::MAX] {
            assert_eq!(crc32_of_word(word), crc32fast::hash(&word.to_le_bytes()));
        }
        let frame: Vec<u8> = (0..97u8).collect();
        let mut whole = crc32fast::Hasher::new();
        whole.update(&frame[..4]);
        whole.update(&frame[FRAME_PREFIX..]);
        assert_eq!(frame_crc(&frame), whole.finalize());
    }

    #[test]
    fn empty_payload_is_not_the_end_marker() {
        for layout in [Layout::V1, Layout::V2] {
            let buf = record(layout, 0, 0, b"");
            assert!(
                matches!(decode_frame(&buf, 0, layout), Scan::Frame(f) if f.payload.is_empty())
            );
            assert_eq!(decode_frame(&[0; 64], 10, layout), Scan::End);
            assert_eq!(decode_frame(&[], 10, layout), Scan::End);
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut timed = Vec::new();
        let kind = FrameKind::Record;
        encode_frame(&mut timed, Layout::V2, 3, 5, kind, Some(4), b"some bytes");
        for (layout, buf) in [
            (Layout::V1, record(Layout::V1, 3, 5, b"some bytes")),
            (Layout::V2, record(Layout::V2, 3, 5, b"some bytes")),
            (Layout::V2, timed),
        ] {
            for bit in 0..buf.len() * 8 {
                let mut damaged = buf.clone();
                damaged[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !matches!(decode_frame(&damaged, 1 << 20, layout), Scan::Frame(_)),
                    "flip of bit {bit} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn unknown_kinds_flags_and_reserved_bytes_are_refused() {
        let reseal = |mut frame: Vec<u8>, at: usize, value: u8| {
            frame[at] = value;
            let crc = frame_crc(&frame);
            frame[4..8].copy_from_slice(&crc.to_le_bytes());
            frame
        };
        let good = record(Layout::V2, 1, 2, b"12345678");
        for (at, value) in [
            (KIND_AT, 2),
            (FLAGS_AT, 2),
            (RESERVED_AT, 1),
            (RESERVED_AT + 1, 9),
        ] {
            let bad = reseal(good.clone(), at, value);
            assert!(
                matches!(
                    decode_frame(&bad, 1 << 10, Layout::V2),
                    Scan::Damaged(CorruptionKind::UnknownFrame { .. })
                ),
                "byte {at} = {value} was accepted"
            );
        }
        // A control frame carries no source time.
        let mut control = Vec::new();
        let kind = FrameKind::Control;
        encode_frame(&mut control, Layout::V2, 1, 2, kind, None, b"12345678");
        let bad = reseal(control, FLAGS_AT, FLAG_SOURCE_TIME);
        assert!(matches!(
            decode_frame(&bad, 1 << 10, Layout::V2),
            Scan::Damaged(CorruptionKind::UnknownFrame { .. })
        ));
    }

    #[test]
    fn oversized_or_overlong_lengths_are_refused_before_reading() {
        for layout in [Layout::V1, Layout::V2] {
            let buf = record(layout, 0, 0, &[1; 100]);
            assert!(matches!(
                decode_frame(&buf, 99, layout),
                Scan::Damaged(CorruptionKind::Length { .. })
            ));
            assert!(matches!(
                decode_frame(&buf[..50], 1000, layout),
                Scan::Damaged(CorruptionKind::Length { .. })
            ));
            let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
            assert!(matches!(
                decode_frame(&huge, u32::MAX, layout),
                Scan::Damaged(CorruptionKind::Length { .. })
            ));
        }
    }
}
