//! Index files: a 32-byte header naming the segment, then 16-byte entries.

use super::{read_u32, read_u64};

/// The version of index files: unchanged since format version 1 (format
/// version 2 changed segments only).
pub(crate) const INDEX_VERSION: u32 = 1;

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

/// The byte position of entry number `entry` in an index file.
pub(crate) fn index_entry_at(entry: u64) -> u64 {
    INDEX_HEADER_LEN as u64 + entry * INDEX_ENTRY_LEN as u64
}

pub(crate) fn encode_index_header(base: u64) -> [u8; INDEX_HEADER_LEN] {
    let mut out = [0u8; INDEX_HEADER_LEN];
    out[..8].copy_from_slice(INDEX_MAGIC);
    out[8..12].copy_from_slice(&INDEX_VERSION.to_le_bytes());
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
        && read_u32(header, 8) == Some(INDEX_VERSION)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
