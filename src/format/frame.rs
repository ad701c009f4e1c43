//! Record frames: length, CRC, offset, timestamp, payload. The writer seals
//! frames in place; readers validate them whole ([`decode_frame`]) or walk
//! their length and offset fields alone (the `frame_*_field` accessors).

use super::{read_u32, read_u64};
use crate::error::CorruptionKind;

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

/// The length field of the frame starting at `at` (`None` past the end of
/// `bytes`). Walks read it, and the offset field, without checking the CRC.
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

/// The whole size on disk of a frame whose length field is `len`.
#[inline]
pub(crate) fn frame_size(len: u32) -> u64 {
    FRAME_PREFIX as u64 + u64::from(len)
}

/// Whether `len` can be the length field of a frame whose payload is at
/// most `max_payload` bytes (zero, the end marker, is not).
#[inline]
pub(crate) fn frame_len_plausible(len: u32, max_payload: u32) -> bool {
    len >= FRAME_LEN_MIN && len - FRAME_LEN_MIN <= max_payload
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
    if !frame_len_plausible(len, max_payload) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
