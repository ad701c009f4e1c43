//! Reader files, `{name}.reader`: a reader that hands records of this log
//! on elsewhere (an exactly-once hand-off, later a stream job or a mirror)
//! registers here, so that retention keeps what it has not passed and
//! monitoring can show its lag. Its true position lives where it commits
//! (a checkpoint in its output log); this file holds an advisory copy,
//! written after each commit and never synced, so it may lag, never lead.
//!
//! Layout: the 16-byte header (magic `BBONERDR`, version `u32`, kind `u8`,
//! three reserved zero bytes), the two 24-byte position slots of consumer
//! files, then where the true position lives: a `u16` length and UTF-8.

use super::{consumer_slot_at, decode_slots, encode_consumer_slot, read_u16, read_u32};
use crate::record::ReaderKind;

use super::{ConsumerError, ConsumerSlot, CONSUMER_FILE_LEN, CONSUMER_HEADER_LEN};

pub(crate) const READER_MAGIC: &[u8; 8] = b"BBONERDR";
pub(crate) const READER_VERSION: u32 = 1;
pub(crate) const READER_EXT: &str = "reader";
/// A reader whose true position is a checkpoint in a log: the location is
/// that log's directory (and the checkpoint has the reader's name).
pub(crate) const READER_CHECKPOINT: u8 = 1;
/// A reader whose true position is the last message it published to a
/// NATS JetStream subject (a mirror): the location is
/// `nats://<servers>/<stream>/<subject>`.
pub(crate) const READER_MIRROR: u8 = 2;

/// The kind byte as the public [`ReaderKind`].
pub(crate) fn reader_kind(kind: u8) -> ReaderKind {
    match kind {
        READER_CHECKPOINT => ReaderKind::Checkpoint,
        READER_MIRROR => ReaderKind::Mirror,
        other => ReaderKind::Unknown(other),
    }
}

/// A whole reader file, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReaderFile {
    pub(crate) kind: u8,
    pub(crate) location: String,
    pub(crate) slot: ConsumerSlot,
}

/// A new reader file: header, `slot` in its place, the other slot zero,
/// then the location.
pub(crate) fn encode_reader_file(kind: u8, location: &str, slot: &ConsumerSlot) -> Vec<u8> {
    let location = &location.as_bytes()[..location.len().min(usize::from(u16::MAX))];
    let mut out = vec![0u8; CONSUMER_FILE_LEN];
    out[..8].copy_from_slice(READER_MAGIC);
    out[8..12].copy_from_slice(&READER_VERSION.to_le_bytes());
    out[12] = kind;
    let at = consumer_slot_at(slot.generation);
    out[at..at + 24].copy_from_slice(&encode_consumer_slot(slot));
    out.extend_from_slice(&(location.len() as u16).to_le_bytes());
    out.extend_from_slice(location);
    out
}

/// Why a reader file was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReaderError {
    Damaged,
    Version(u32),
}

pub(crate) fn decode_reader_file(bytes: &[u8]) -> Result<ReaderFile, ReaderError> {
    if bytes.len() < CONSUMER_HEADER_LEN || &bytes[..8] != READER_MAGIC {
        return Err(ReaderError::Damaged);
    }
    let version = read_u32(bytes, 8).expect("in header");
    if version != READER_VERSION {
        return Err(ReaderError::Version(version));
    }
    let slot = decode_slots(bytes).map_err(|e| match e {
        ConsumerError::Version(v) => ReaderError::Version(v),
        _ => ReaderError::Damaged,
    })?;
    let len = usize::from(read_u16(bytes, CONSUMER_FILE_LEN).ok_or(ReaderError::Damaged)?);
    let at = CONSUMER_FILE_LEN + 2;
    let location = bytes.get(at..at + len).ok_or(ReaderError::Damaged)?;
    let location = std::str::from_utf8(location).map_err(|_| ReaderError::Damaged)?;
    Ok(ReaderFile {
        kind: bytes[12],
        location: location.to_owned(),
        slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_files_round_trip_and_keep_the_older_slot_when_one_tears() {
        let first = ConsumerSlot {
            generation: 0,
            position: 7,
        };
        let mut file = encode_reader_file(READER_CHECKPOINT, "/data/out", &first);
        let decoded = decode_reader_file(&file).unwrap();
        assert_eq!(decoded.kind, READER_CHECKPOINT);
        assert_eq!(decoded.location, "/data/out");
        assert_eq!(decoded.slot, first);
        let next = ConsumerSlot {
            generation: 1,
            position: 9,
        };
        let at = consumer_slot_at(1);
        file[at..at + 24].copy_from_slice(&encode_consumer_slot(&next));
        assert_eq!(decode_reader_file(&file).unwrap().slot, next);
        file[at + 3] ^= 1;
        assert_eq!(decode_reader_file(&file).unwrap().slot, first);
        assert_eq!(decode_reader_file(&file[..70]), Err(ReaderError::Damaged));
        let mut newer = file.clone();
        newer[8] = 2;
        assert_eq!(decode_reader_file(&newer), Err(ReaderError::Version(2)));
    }
}
