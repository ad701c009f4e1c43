//! The durable notice: 24 bytes a writer writes at the start of `LOCK`
//! after each sync, saying how far the log is durable, for followers in
//! other processes. It is not synced itself (it is a message through the
//! page cache, not a durability record), so after a crash it may be stale,
//! which only makes followers more careful.

use super::{read_u32, read_u64};

/// The notice's size at the start of `LOCK`.
pub(crate) const NOTICE_LEN: usize = 24;

/// `durable next offset (u64) | log id, low 64 bits (u64) | CRC-32 of the
/// 16 bytes before it (u32) | reserved, zero (u32)`.
pub(crate) fn encode_notice(durable: u64, log_id: u128) -> [u8; NOTICE_LEN] {
    let mut out = [0u8; NOTICE_LEN];
    out[..8].copy_from_slice(&durable.to_le_bytes());
    out[8..16].copy_from_slice(&(log_id as u64).to_le_bytes());
    let crc = crc32fast::hash(&out[..16]);
    out[16..20].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The durable offset a notice states, if it is whole, for this log (the
/// low 64 bits of `log_id` match) and of this version (reserved bytes
/// zero); `None` otherwise, and for an empty `LOCK` (an older writer).
pub(crate) fn decode_notice(bytes: &[u8], log_id: u128) -> Option<u64> {
    let crc = read_u32(bytes, 16)?;
    if crc != crc32fast::hash(&bytes[..16])
        || read_u64(bytes, 8)? != log_id as u64
        || read_u32(bytes, 20)? != 0
    {
        return None;
    }
    read_u64(bytes, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_refuse_damage_or_another_log() {
        let id = 0x1111_2222_3333_4444_5555_6666_7777_8888;
        let notice = encode_notice(42, id);
        assert_eq!(decode_notice(&notice, id), Some(42));
        assert_eq!(decode_notice(&notice, id + 1), None);
        assert_eq!(decode_notice(&[], id), None);
        assert_eq!(decode_notice(&notice[..20], id), None);
        for byte in 0..NOTICE_LEN {
            let mut bad = notice;
            bad[byte] ^= 0x10;
            assert_eq!(decode_notice(&bad, id), None, "byte {byte}");
        }
    }
}
