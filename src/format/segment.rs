//! The 64-byte header of a segment file: its immutable part (magic,
//! version, checksum kind, base offset, CRC) and the durable-watermark slot
//! the writer rewrites in place. The version decides the layout of the
//! segment's frames ([`Layout`]), so one log can hold version-1 segments
//! followed by version-2 ones.

use super::{read_u32, read_u64, Layout, CHECKSUM_CRC32};
use crate::error::CorruptionKind;

pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"BBONESEG";
/// Bytes before the first frame of a segment.
pub(crate) const SEGMENT_HEADER_LEN: usize = 64;
/// Where the first frame of a segment starts.
pub(crate) const RECORDS_START: u64 = SEGMENT_HEADER_LEN as u64;
/// The immutable part of the header is covered by the CRC stored here.
const SEGMENT_HEADER_CRC_AT: usize = 24;
/// Where the durable-watermark slot starts, and its length.
pub(crate) const WATERMARK_AT: usize = 32;
pub(crate) const WATERMARK_LEN: usize = 32;

/// The immutable part of a segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) base: u64,
    /// How its frames are laid out: its format version.
    pub(crate) layout: Layout,
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
    out[8..12].copy_from_slice(&header.layout.version().to_le_bytes());
    // 12..16: flags, zero in version 1; the checksum kind in the low byte
    // from version 2.
    if header.layout == Layout::V2 {
        out[12] = CHECKSUM_CRC32;
    }
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
    let Some(layout) = Layout::of_version(version) else {
        return Err(HeaderError::Version(version));
    };
    let flags = match layout {
        Layout::V1 => 0,
        // A checksum this build does not know, or other flags set: a later
        // build's segment, which must not be misread.
        Layout::V2 => u32::from(CHECKSUM_CRC32),
    };
    if read_u32(bytes, 12) != Some(flags) {
        return Err(HeaderError::Corrupt(CorruptionKind::BadHeader));
    }
    Ok(SegmentHeader {
        base: read_u64(bytes, 16).expect("in header"),
        layout,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trip_and_damage() {
        let header = SegmentHeader {
            base: 1234,
            layout: Layout::V2,
        };
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
        assert_eq!(read_u32(&bytes, 8), Some(2));
        assert_eq!(read_u32(&bytes, 12), Some(1), "the CRC-32 checksum kind");
        let reseal = |mut bytes: [u8; 64], at: usize, value: u32| {
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            let crc = crc32fast::hash(&bytes[..24]);
            bytes[24..28].copy_from_slice(&crc.to_le_bytes());
            bytes
        };
        let newer = reseal(bytes, 8, 3);
        assert_eq!(decode_segment_header(&newer), Err(HeaderError::Version(3)));
        let other_checksum = reseal(bytes, 12, 2);
        assert_eq!(
            decode_segment_header(&other_checksum),
            Err(HeaderError::Corrupt(CorruptionKind::BadHeader))
        );
        let v1 = SegmentHeader {
            base: 1234,
            layout: Layout::V1,
        };
        let old = encode_segment_header(&v1, &mark);
        assert_eq!(read_u32(&old, 8), Some(1));
        assert_eq!(read_u32(&old, 12), Some(0));
        assert_eq!(decode_segment_header(&old), Ok(v1));
        let v1_with_flags = reseal(old, 12, 1);
        assert_eq!(
            decode_segment_header(&v1_with_flags),
            Err(HeaderError::Corrupt(CorruptionKind::BadHeader))
        );
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
}
