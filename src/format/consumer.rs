//! Consumer position files: a 16-byte header and two 24-byte slots that
//! commits fill in turn.

use super::{read_u32, read_u64};

/// The version of consumer files: unchanged since format version 1 (format
/// version 2 changed segments only).
pub(crate) const CONSUMER_VERSION: u32 = 1;

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
    out[8..12].copy_from_slice(&CONSUMER_VERSION.to_le_bytes());
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
    if version != CONSUMER_VERSION {
        return Err(ConsumerError::Version(version));
    }
    decode_slots(bytes)
}

/// The newest valid of the two slots after a 16-byte header (consumer and
/// reader files share them).
pub(crate) fn decode_slots(bytes: &[u8]) -> Result<ConsumerSlot, ConsumerError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
