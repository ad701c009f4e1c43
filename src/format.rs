//! The on-disk format as code: constants, and pure encode/decode functions
//! for every header, record frame, index entry and slot. No I/O happens here.
//!
//! `docs/FORMAT.md` is the specification (byte diagrams, the write and sync
//! protocol, recovery rules, version policy); the unit tests at the bottom
//! check the sizes and positions it documents against these constants.
//! All integers are little-endian.

use crate::error::CorruptionKind;

/// The on-disk format version this build writes and reads.
pub(crate) const FORMAT_VERSION: u32 = 1;

// ---- log directory marker: META -------------------------------------------

pub(crate) const META_FILE: &str = "META";
pub(crate) const META_MAGIC: &[u8; 8] = b"BBONELOG";
pub(crate) const LOCK_FILE: &str = "LOCK";
pub(crate) const SEGMENT_EXT: &str = "seg";
pub(crate) const INDEX_EXT: &str = "idx";
pub(crate) const CONSUMER_EXT: &str = "consumer";
pub(crate) const TMP_EXT: &str = "tmp";
/// The spare segment file prepared ahead of a roll, `spare.tmp`.
pub(crate) const SPARE_FILE: &str = "spare";

/// What `META` records about a log: the codec that encoded its payloads and,
/// for diagnostics, the Rust type name of its events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) codec: String,
    pub(crate) type_name: String,
}

pub(crate) fn encode_meta(meta: &Meta) -> Vec<u8> {
    let codec = truncate_utf8(&meta.codec, u16::MAX as usize);
    let type_name = truncate_utf8(&meta.type_name, u16::MAX as usize);
    let mut out = Vec::with_capacity(20 + codec.len() + type_name.len());
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(codec.len() as u16).to_le_bytes());
    out.extend_from_slice(codec.as_bytes());
    out.extend_from_slice(&(type_name.len() as u16).to_le_bytes());
    out.extend_from_slice(type_name.as_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why a `META` file was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MetaError {
    Magic,
    Version(u32),
    Damaged,
}

pub(crate) fn decode_meta(bytes: &[u8]) -> Result<Meta, MetaError> {
    if bytes.len() < 8 || &bytes[..8] != META_MAGIC {
        return Err(MetaError::Magic);
    }
    let version = read_u32(bytes, 8).ok_or(MetaError::Damaged)?;
    if version != FORMAT_VERSION {
        return Err(MetaError::Version(version));
    }
    // At least 12 bytes (the version was read), so there is a CRC to split.
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(MetaError::Damaged);
    }
    let mut at = 12;
    let string = |at: &mut usize| -> Result<String, MetaError> {
        let len = read_u16(body, *at).ok_or(MetaError::Damaged)? as usize;
        let bytes = body.get(*at + 2..*at + 2 + len).ok_or(MetaError::Damaged)?;
        *at += 2 + len;
        String::from_utf8(bytes.to_vec()).map_err(|_| MetaError::Damaged)
    };
    let codec = string(&mut at)?;
    let type_name = string(&mut at)?;
    if at != body.len() {
        return Err(MetaError::Damaged);
    }
    Ok(Meta { codec, type_name })
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ---- segment files: {base:020}.seg ------------------------------------------

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"BBONESEG";
/// Bytes before the first frame of a segment.
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// The immutable part of the header is covered by the CRC stored here.
const SEGMENT_HEADER_CRC_AT: usize = 24;
/// Where the durable-watermark slot starts, and its length.
pub(crate) const WATERMARK_AT: usize = 32;
pub(crate) const WATERMARK_LEN: usize = 32;

/// The immutable part of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) base: u64,
}

/// The durable watermark of a segment: every byte before `pos` was on
/// stable storage when the slot was written; the record at `pos` (if any)
/// has offset `next`, and the record before it timestamp `last_ts`.
/// `closed` says the writer stopped at `pos` (the log was closed or the
/// segment sealed): nothing was written past it while this slot stood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Watermark {
    pub(crate) pos: u64,
    pub(crate) next: u64,
    pub(crate) last_ts: u64,
    pub(crate) closed: bool,
}

/// Bit 0 of the watermark slot's flags: [`Watermark::closed`].
const WATERMARK_CLOSED: u32 = 1;

pub(crate) fn encode_segment_header(header: &SegmentHeader, mark: &Watermark) -> [u8; 64] {
    let mut out = [0u8; SEGMENT_HEADER_LEN];
    out[..8].copy_from_slice(SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    // 12..16: flags, zero in version 1.
    out[16..24].copy_from_slice(&header.base.to_le_bytes());
    let crc = crc32fast::hash(&out[..SEGMENT_HEADER_CRC_AT]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    // 28..32: reserved, zero.
    out[WATERMARK_AT..].copy_from_slice(&encode_watermark(mark));
    out
}

/// Why a segment header was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer bytes than a header, or all zeros: a create that never finished.
    Incomplete,
    Corrupt(CorruptionKind),
    Version(u32),
}

pub(crate) fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, HeaderError> {
    let Some(bytes) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return Err(HeaderError::Incomplete);
    };
    if bytes.iter().all(|&b| b == 0) {
        return Err(HeaderError::Incomplete);
    }
    if &bytes[..8] != SEGMENT_MAGIC {
        return Err(HeaderError::Corrupt(CorruptionKind::BadMagic));
    }
    let stored = read_u32(bytes, SEGMENT_HEADER_CRC_AT).expect("in header");
    if stored != crc32fast::hash(&bytes[..SEGMENT_HEADER_CRC_AT]) {
        return Err(HeaderError::Corrupt(CorruptionKind::HeaderChecksum));
    }
    let version = read_u32(bytes, 8).expect("in header");
    if version != FORMAT_VERSION {
        return Err(HeaderError::Version(version));
    }
    if read_u32(bytes, 12) != Some(0) {
        return Err(HeaderError::Corrupt(CorruptionKind::BadHeader));
    }
    Ok(SegmentHeader {
        base: read_u64(bytes, 16).expect("in header"),
    })
}

pub(crate) fn encode_watermark(mark: &Watermark) -> [u8; WATERMARK_LEN] {
    let mut out = [0u8; WATERMARK_LEN];
    out[..8].copy_from_slice(&mark.pos.to_le_bytes());
    out[8..16].copy_from_slice(&mark.next.to_le_bytes());
    out[16..24].copy_from_slice(&mark.last_ts.to_le_bytes());
    let flags = if mark.closed { WATERMARK_CLOSED } else { 0 };
    out[24..28].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32fast::hash(&out[..28]);
    out[28..32].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the watermark slot of a segment header; `None` if it is torn.
pub(crate) fn decode_watermark(header: &[u8]) -> Option<Watermark> {
    let slot = header.get(WATERMARK_AT..WATERMARK_AT + WATERMARK_LEN)?;
    if read_u32(slot, 28)? != crc32fast::hash(&slot[..28]) {
        return None;
    }
    Some(Watermark {
        pos: read_u64(slot, 0)?,
        next: read_u64(slot, 8)?,
        last_ts: read_u64(slot, 16)?,
        // Other bits are reserved: a later version may set them, and
        // ignoring them here is safe because `closed` only ever spares
        // recovery work, never changes what it keeps.
        closed: read_u32(slot, 24)? & WATERMARK_CLOSED != 0,
    })
}

// ---- record frames ------------------------------------------------------------

/// Bytes a frame adds to its payload.
pub(crate) const FRAME_OVERHEAD: usize = 24;
/// The length field counts the bytes after the 8-byte prefix (offset,
/// timestamp, payload), so it is never zero for a real frame and a zero
/// length marks the end of the written data.
const FRAME_PREFIX: usize = 8;
const FRAME_LEN_MIN: u32 = 16;

/// Appends one frame to `out` (the writer seals frames in place with
/// [`seal_frame`]; this is for tests that build frames by hand).
#[cfg(test)]
pub(crate) fn encode_frame(out: &mut Vec<u8>, offset: u64, timestamp: u64, payload: &[u8]) {
    let len = (FRAME_LEN_MIN as usize + payload.len()) as u32;
    let start = out.len();
    out.reserve(FRAME_OVERHEAD + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = frame_crc(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Writes a frame header in front of a payload already placed at
/// `frame[FRAME_OVERHEAD..]`, so encoders can serialize in place.
#[inline]
pub(crate) fn seal_frame(frame: &mut [u8], offset: u64, timestamp: u64) {
    let len = (frame.len() - FRAME_PREFIX) as u32;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[8..16].copy_from_slice(&offset.to_le_bytes());
    frame[16..24].copy_from_slice(&timestamp.to_le_bytes());
    let crc = frame_crc(frame);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// The CRC32 of a whole frame: its length field, then everything after the
/// CRC field (offset, timestamp, payload).
#[inline]
fn frame_crc(frame: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&frame[..4]);
    hasher.update(&frame[FRAME_PREFIX..]);
    hasher.finalize()
}

/// A frame that passed validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Frame<'a> {
    pub(crate) offset: u64,
    pub(crate) timestamp: u64,
    pub(crate) payload: &'a [u8],
    /// The frame's whole length on disk.
    pub(crate) len: usize,
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

/// Validates the frame at the start of `buf`.
///
/// The length is checked against `max_payload` and the bytes available
/// before anything else is read, so a crafted length can neither allocate
/// nor read out of bounds.
#[inline]
pub(crate) fn decode_frame(buf: &[u8], max_payload: u32) -> Scan<'_> {
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
    if len < FRAME_LEN_MIN || len - FRAME_LEN_MIN > max_payload {
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
    Scan::Frame(Frame {
        offset: read_u64(frame, 8).expect("in frame"),
        timestamp: read_u64(frame, 16).expect("in frame"),
        payload: &frame[FRAME_OVERHEAD..],
        len: total,
    })
}

// ---- index files: {base:020}.idx --------------------------------------------

pub(crate) const INDEX_MAGIC: &[u8; 8] = b"BBONEIDX";
pub(crate) const INDEX_HEADER_LEN: usize = 32;
pub(crate) const INDEX_ENTRY_LEN: usize = 16;

/// One sparse index entry: the record `base + rel_offset` starts at byte
/// `pos` of the segment and has timestamp `timestamp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub(crate) rel_offset: u32,
    pub(crate) pos: u32,
    pub(crate) timestamp: u64,
}

pub(crate) fn encode_index_header(base: u64) -> [u8; INDEX_HEADER_LEN] {
    let mut out = [0u8; INDEX_HEADER_LEN];
    out[..8].copy_from_slice(INDEX_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32fast::hash(&out[..24]);
    out[24..28].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Whether `bytes` start with a valid index header for segment `base`.
pub(crate) fn index_header_ok(bytes: &[u8], base: u64) -> bool {
    let Some(header) = bytes.get(..INDEX_HEADER_LEN) else {
        return false;
    };
    &header[..8] == INDEX_MAGIC
        && read_u32(header, 8) == Some(FORMAT_VERSION)
        && read_u64(header, 16) == Some(base)
        && read_u32(header, 24) == Some(crc32fast::hash(&header[..24]))
}

#[inline]
pub(crate) fn encode_index_entry(entry: &IndexEntry) -> [u8; INDEX_ENTRY_LEN] {
    let mut out = [0u8; INDEX_ENTRY_LEN];
    out[..4].copy_from_slice(&entry.rel_offset.to_le_bytes());
    out[4..8].copy_from_slice(&entry.pos.to_le_bytes());
    out[8..16].copy_from_slice(&entry.timestamp.to_le_bytes());
    out
}

#[inline]
pub(crate) fn decode_index_entry(bytes: &[u8]) -> Option<IndexEntry> {
    Some(IndexEntry {
        rel_offset: read_u32(bytes, 0)?,
        pos: read_u32(bytes, 4)?,
        timestamp: read_u64(bytes, 8)?,
    })
}

// ---- consumer position files: {name}.consumer --------------------------------

pub(crate) const CONSUMER_MAGIC: &[u8; 8] = b"BBONECSR";
pub(crate) const CONSUMER_HEADER_LEN: usize = 16;
pub(crate) const CONSUMER_SLOT_LEN: usize = 24;
pub(crate) const CONSUMER_FILE_LEN: usize = CONSUMER_HEADER_LEN + 2 * CONSUMER_SLOT_LEN;

/// One committed consumer position; the slot with the higher generation
/// among the valid ones wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConsumerSlot {
    pub(crate) generation: u64,
    pub(crate) position: u64,
}

pub(crate) fn encode_consumer_header() -> [u8; CONSUMER_HEADER_LEN] {
    let mut out = [0u8; CONSUMER_HEADER_LEN];
    out[..8].copy_from_slice(CONSUMER_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out
}

pub(crate) fn consumer_slot_at(generation: u64) -> usize {
    CONSUMER_HEADER_LEN + (generation % 2) as usize * CONSUMER_SLOT_LEN
}

pub(crate) fn encode_consumer_slot(slot: &ConsumerSlot) -> [u8; CONSUMER_SLOT_LEN] {
    let mut out = [0u8; CONSUMER_SLOT_LEN];
    out[..8].copy_from_slice(&slot.generation.to_le_bytes());
    out[8..16].copy_from_slice(&slot.position.to_le_bytes());
    let crc = crc32fast::hash(&out[..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Why a consumer file was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ConsumerError {
    Magic,
    Version(u32),
    /// Neither slot is valid.
    NoValidSlot,
}

/// The newest valid slot of a consumer file.
pub(crate) fn decode_consumer(bytes: &[u8]) -> Result<ConsumerSlot, ConsumerError> {
    if bytes.len() < CONSUMER_HEADER_LEN || &bytes[..8] != CONSUMER_MAGIC {
        return Err(ConsumerError::Magic);
    }
    let version = read_u32(bytes, 8).expect("in header");
    if version != FORMAT_VERSION {
        return Err(ConsumerError::Version(version));
    }
    let slot = |at: usize| -> Option<ConsumerSlot> {
        let raw = bytes.get(at..at + CONSUMER_SLOT_LEN)?;
        // (An all-zero slot, never written, fails this too: the CRC of
        // 16 zero bytes is not zero.)
        if read_u32(raw, 16)? != crc32fast::hash(&raw[..16]) {
            return None;
        }
        let slot = ConsumerSlot {
            generation: read_u64(raw, 0)?,
            position: read_u64(raw, 8)?,
        };
        // A slot only ever holds generations of its own parity.
        (consumer_slot_at(slot.generation) == at).then_some(slot)
    };
    let a = slot(CONSUMER_HEADER_LEN);
    let b = slot(CONSUMER_HEADER_LEN + CONSUMER_SLOT_LEN);
    match (a, b) {
        // The two slots hold generations of different parity, never equal.
        (Some(a), Some(b)) => Ok(std::cmp::max_by_key(a, b, |s| s.generation)),
        (Some(one), None) | (None, Some(one)) => Ok(one),
        (None, None) => Err(ConsumerError::NoValidSlot),
    }
}

// ---- file names -------------------------------------------------------------

pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.{SEGMENT_EXT}")
}

pub(crate) fn index_name(base: u64) -> String {
    format!("{base:020}.{INDEX_EXT}")
}

/// Parses `{base:020}.{ext}`; anything else is not ours to interpret.
pub(crate) fn parse_numbered_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

// ---- little-endian helpers ----------------------------------------------------

#[inline]
pub(crate) fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

#[inline]
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

#[inline]
pub(crate) fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sizes and positions documented in docs/FORMAT.md.
    #[test]
    fn documented_layout_matches_constants() {
        assert_eq!(SEGMENT_HEADER_LEN, 64);
        assert_eq!(WATERMARK_AT + WATERMARK_LEN, SEGMENT_HEADER_LEN);
        assert_eq!(FRAME_OVERHEAD, 24);
        assert_eq!(INDEX_HEADER_LEN, 32);
        assert_eq!(INDEX_ENTRY_LEN, 16);
        assert_eq!(CONSUMER_FILE_LEN, 64);
        let spec = include_str!("../docs/FORMAT.md");
        for fact in [
            "segment header: 64 bytes",
            "frame overhead: 24 bytes",
            "index header: 32 bytes",
            "index entry: 16 bytes",
            "consumer file: 64 bytes",
            "format version: 1",
        ] {
            assert!(
                spec.contains(fact),
                "docs/FORMAT.md does not state {fact:?}"
            );
        }
    }

    #[test]
    fn frame_layout_is_as_documented() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 7, 99, b"abc");
        assert_eq!(buf.len(), FRAME_OVERHEAD + 3);
        assert_eq!(read_u32(&buf, 0), Some(16 + 3));
        assert_eq!(read_u64(&buf, 8), Some(7));
        assert_eq!(read_u64(&buf, 16), Some(99));
        assert_eq!(&buf[24..], b"abc");
        let mut crc = crc32fast::Hasher::new();
        crc.update(&buf[..4]);
        crc.update(&buf[8..]);
        assert_eq!(read_u32(&buf, 4), Some(crc.finalize()));
    }

    #[test]
    fn frame_round_trip_and_seal_agree() {
        let mut a = Vec::new();
        encode_frame(&mut a, 42, 1_700_000_000_000_000, b"payload");
        let mut b = vec![0u8; FRAME_OVERHEAD];
        b.extend_from_slice(b"payload");
        seal_frame(&mut b, 42, 1_700_000_000_000_000);
        assert_eq!(a, b);
        let Scan::Frame(frame) = decode_frame(&a, 1024) else {
            panic!("valid frame refused");
        };
        assert_eq!(frame.offset, 42);
        assert_eq!(frame.timestamp, 1_700_000_000_000_000);
        assert_eq!(frame.payload, b"payload");
        assert_eq!(frame.len, a.len());
    }

    #[test]
    fn empty_payload_is_not_the_end_marker() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 0, 0, b"");
        assert!(matches!(decode_frame(&buf, 0), Scan::Frame(f) if f.payload.is_empty()));
        assert_eq!(decode_frame(&[0; 64], 10), Scan::End);
        assert_eq!(decode_frame(&[], 10), Scan::End);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 3, 5, b"some bytes");
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_frame(&damaged, 1 << 20), Scan::Frame(_)),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn oversized_or_overlong_lengths_are_refused_before_reading() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, 0, 0, &[1; 100]);
        assert!(matches!(
            decode_frame(&buf, 99),
            Scan::Damaged(CorruptionKind::Length { .. })
        ));
        assert!(matches!(
            decode_frame(&buf[..50], 1000),
            Scan::Damaged(CorruptionKind::Length { .. })
        ));
        let huge = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(matches!(
            decode_frame(&huge, u32::MAX),
            Scan::Damaged(CorruptionKind::Length { .. })
        ));
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let header = SegmentHeader { base: 1234 };
        let mark = Watermark {
            pos: 64,
            next: 1234,
            last_ts: 9,
            closed: false,
        };
        let bytes = encode_segment_header(&header, &mark);
        assert_eq!(decode_segment_header(&bytes), Ok(header));
        assert_eq!(decode_watermark(&bytes), Some(mark));
        assert_eq!(
            decode_segment_header(&[0; 64]),
            Err(HeaderError::Incomplete)
        );
        assert_eq!(
            decode_segment_header(&bytes[..40]),
            Err(HeaderError::Incomplete)
        );
        let mut bad = bytes;
        bad[0] ^= 1;
        assert_eq!(
            decode_segment_header(&bad),
            Err(HeaderError::Corrupt(CorruptionKind::BadMagic))
        );
        let mut bad = bytes;
        bad[17] ^= 1;
        assert_eq!(
            decode_segment_header(&bad),
            Err(HeaderError::Corrupt(CorruptionKind::HeaderChecksum))
        );
        let mut newer = bytes;
        newer[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&newer[..24]);
        newer[24..28].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_segment_header(&newer), Err(HeaderError::Version(2)));
        let mut torn_slot = bytes;
        torn_slot[40] ^= 1;
        assert_eq!(decode_watermark(&torn_slot), None);
        assert_eq!(decode_segment_header(&torn_slot), Ok(header));
    }

    #[test]
    fn the_closed_bit_round_trips_and_other_flag_bits_are_ignored() {
        let mark = Watermark {
            pos: 4096,
            next: 77,
            last_ts: 5,
            closed: true,
        };
        let slot = encode_watermark(&mark);
        assert_eq!(read_u32(&slot, 24), Some(1));
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        header[WATERMARK_AT..].copy_from_slice(&slot);
        assert_eq!(decode_watermark(&header), Some(mark));
        let open = Watermark {
            closed: false,
            ..mark
        };
        let slot = encode_watermark(&open);
        assert_eq!(read_u32(&slot, 24), Some(0));
        // A later version's flag bit, with a valid CRC: read, not refused.
        let mut later = slot;
        later[24..28].copy_from_slice(&0x8000_0000u32.to_le_bytes());
        let crc = crc32fast::hash(&later[..28]);
        later[28..32].copy_from_slice(&crc.to_le_bytes());
        header[WATERMARK_AT..].copy_from_slice(&later);
        assert_eq!(decode_watermark(&header), Some(open));
    }

    #[test]
    fn meta_round_trip_and_refusals() {
        let meta = Meta {
            codec: "postcard".into(),
            type_name: "app::Checkout".into(),
        };
        let bytes = encode_meta(&meta);
        assert_eq!(decode_meta(&bytes), Ok(meta));
        assert_eq!(decode_meta(b"hello world"), Err(MetaError::Magic));
        let mut bad = bytes.clone();
        let last = bad.len() - 6;
        bad[last] ^= 1;
        assert_eq!(decode_meta(&bad), Err(MetaError::Damaged));
        assert_eq!(
            decode_meta(&bytes[..bytes.len() - 1]),
            Err(MetaError::Damaged)
        );
        // The magic and nothing else: ours, but damaged.
        assert_eq!(decode_meta(META_MAGIC), Err(MetaError::Damaged));
        assert_eq!(decode_meta(&META_MAGIC[..7]), Err(MetaError::Magic));
    }

    #[test]
    fn meta_strings_longer_than_their_length_field_are_cut_at_a_char_boundary() {
        // 65,534 ASCII bytes, then 'é' (2 bytes) straddling the 65,535 cap.
        let long = format!("{}é and more", "a".repeat(65_534));
        let meta = Meta {
            codec: "postcard".into(),
            type_name: long.clone(),
        };
        let decoded = decode_meta(&encode_meta(&meta)).unwrap();
        assert_eq!(decoded.type_name, long[..65_534]);
        let exact = "b".repeat(65_535);
        let meta = Meta {
            codec: exact.clone(),
            type_name: "t".into(),
        };
        assert_eq!(decode_meta(&encode_meta(&meta)).unwrap().codec, exact);
    }

    #[test]
    fn an_index_header_must_match_in_every_field() {
        let good = encode_index_header(7);
        assert!(index_header_ok(&good, 7));
        assert!(!index_header_ok(&good, 8), "another base");
        assert!(!index_header_ok(&good[..31], 7), "short");
        for (at, what) in [(0, "magic"), (8, "version"), (16, "base"), (24, "CRC")] {
            let mut bad = good;
            bad[at] ^= 1;
            if at != 24 {
                // Keep the CRC right, so only the field itself is wrong.
                let crc = crc32fast::hash(&bad[..24]);
                bad[24..28].copy_from_slice(&crc.to_le_bytes());
            }
            assert!(!index_header_ok(&bad, 7), "{what}");
        }
    }

    #[test]
    fn consumer_slots_pick_the_newest_valid() {
        let mut file = vec![0u8; CONSUMER_FILE_LEN];
        file[..16].copy_from_slice(&encode_consumer_header());
        assert_eq!(decode_consumer(&file), Err(ConsumerError::NoValidSlot));
        assert_eq!(
            decode_consumer(&file[..CONSUMER_HEADER_LEN]),
            Err(ConsumerError::NoValidSlot),
            "a header with no slots"
        );
        assert_eq!(decode_consumer(&file[..15]), Err(ConsumerError::Magic));
        for (generation, position) in [(1u64, 10u64), (2, 20), (3, 30)] {
            let at = consumer_slot_at(generation);
            file[at..at + 24].copy_from_slice(&encode_consumer_slot(&ConsumerSlot {
                generation,
                position,
            }));
        }
        assert_eq!(decode_consumer(&file).map(|s| s.position), Ok(30));
        // Tear the newest slot: the previous generation survives.
        let at = consumer_slot_at(3);
        file[at + 9] ^= 0xff;
        assert_eq!(decode_consumer(&file).map(|s| s.position), Ok(20));
    }

    #[test]
    fn names_parse_only_our_pattern() {
        assert_eq!(
            parse_numbered_name(&segment_name(42), SEGMENT_EXT),
            Some(42)
        );
        assert_eq!(parse_numbered_name(&index_name(7), INDEX_EXT), Some(7));
        assert_eq!(parse_numbered_name("42.seg", SEGMENT_EXT), None);
        assert_eq!(
            parse_numbered_name("0000000000000000004x.seg", SEGMENT_EXT),
            None
        );
        assert_eq!(
            parse_numbered_name("99999999999999999999.seg", SEGMENT_EXT),
            None
        );
    }
}
