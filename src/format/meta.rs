//! `META`, the file that marks a directory as a log: magic, version, the
//! codec of the payloads and, for diagnostics, the type name of the events.

use super::{read_u16, read_u32, FORMAT_VERSION};

pub(crate) const META_MAGIC: &[u8; 8] = b"BBONELOG";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
