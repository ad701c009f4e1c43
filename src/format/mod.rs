//! The on-disk format as code: every byte layout of a log's files, as
//! constants and pure encode/decode functions. No I/O happens here, and no
//! other module spells out a size or a field position: the store reads and
//! writes bytes only through these functions.
//!
//! `docs/FORMAT.md` is the specification (byte diagrams, the write and sync
//! protocol, recovery rules, version policy); the unit tests check the sizes
//! and positions it documents against these constants. All integers are
//! little-endian. One file per kind of file: [`meta`] (the directory
//! marker), [`segment`] (segment header and durable watermark), [`frame`]
//! (record and control frames), [`control`] (checkpoint payloads and the
//! batch rule), [`index`] (index header and entries), [`consumer`]
//! (consumer position files), [`reader`] (registered readers), [`notice`]
//! (the durable notice in `LOCK`);
//! this module holds the version, file names
//! and the little-endian helpers.

mod consumer;
mod control;
mod frame;
mod index;
mod meta;
mod notice;
mod reader;
mod segment;

pub(crate) use consumer::*;
pub(crate) use control::*;
pub(crate) use frame::*;
pub(crate) use index::*;
pub(crate) use meta::*;
pub(crate) use notice::*;
pub(crate) use reader::*;
pub(crate) use segment::*;

/// The segment format version this build writes; it reads 1 and 2.
pub(crate) const FORMAT_VERSION: u32 = 2;

// ---- file names ---------------------------------------------------------------

pub(crate) const META_FILE: &str = "META";
pub(crate) const LOCK_FILE: &str = "LOCK";
pub(crate) const SEGMENT_EXT: &str = "seg";
pub(crate) const INDEX_EXT: &str = "idx";
pub(crate) const CONSUMER_EXT: &str = "consumer";
pub(crate) const TMP_EXT: &str = "tmp";
/// The spare segment file prepared ahead of a roll, `spare.tmp`.
pub(crate) const SPARE_FILE: &str = "spare";
/// The suffix of a copy of the bytes recovery cut from a segment.
pub(crate) const DAMAGED_EXT: &str = ".damaged";

pub(crate) fn segment_name(base: u64) -> String {
    format!("{base:020}.{SEGMENT_EXT}")
}

pub(crate) fn index_name(base: u64) -> String {
    format!("{base:020}.{INDEX_EXT}")
}

/// `{base:020}.{position}.damaged`: a raw copy of the bytes cut from
/// segment `base` at byte `position`, with no header of its own.
pub(crate) fn damaged_name(base: u64, position: u64) -> String {
    format!("{base:020}.{position}{DAMAGED_EXT}")
}

/// Parses `{base:020}.{ext}`; anything else is not ours to interpret.
pub(crate) fn parse_numbered_name(name: &str, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

// ---- little-endian helpers ------------------------------------------------------

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
        assert_eq!(FRAME_OVERHEAD, 28);
        assert_eq!(FRAME_OVERHEAD_V1, 24);
        assert_eq!(SOURCE_TIME_LEN, 8);
        assert_eq!(INDEX_HEADER_LEN, 32);
        assert_eq!(INDEX_ENTRY_LEN, 16);
        assert_eq!(CONSUMER_FILE_LEN, 64);
        assert_eq!((READER_CHECKPOINT, READER_MIRROR), (1, 2));
        let spec = include_str!("../../docs/FORMAT.md");
        for fact in [
            "segment header: 64 bytes",
            "version-1 frame overhead: 24 bytes",
            "version-2 frame overhead: 28 bytes",
            "index header: 32 bytes",
            "index entry: 16 bytes",
            "consumer file: 64 bytes",
            "format version: 2",
            "META version: 2",
            "1 = its position is a checkpoint in a log; 2 = it is a NATS JetStream mirror",
        ] {
            assert!(
                spec.contains(fact),
                "docs/FORMAT.md does not state {fact:?}"
            );
        }
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
