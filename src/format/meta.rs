//! `META`, the file that marks a directory as a log: magic, version, the
//! codec of the payloads, and (from version 2) the log's random id, the
//! checksum kind of its frames and the event type it holds, declared by the
//! application, plus the Rust type name for diagnostics.
//!
//! Version 1 held only the codec and the type name; it is still read, and
//! a writer rewrites it as version 2 when it opens the log.

use super::{read_u16, read_u32};

pub(crate) const META_MAGIC: &[u8; 8] = b"BBONELOG";
/// The `META` version this build writes; it reads 1 and 2.
pub(crate) const META_VERSION: u32 = 2;
/// The checksum of frames written by this build: CRC-32 (IEEE), as in
/// version 1. The field lets a faster checksum come without a new version.
pub(crate) const CHECKSUM_CRC32: u8 = 1;

/// The event type a log holds: a name and a version the application
/// declares (or the Rust type's own name, version 1). An empty name means
/// none was recorded (a version-1 log, or one made through `Raw`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventType {
    pub(crate) name: String,
    pub(crate) version: u32,
}

impl EventType {
    /// No event type recorded (or, asked for, none checked).
    pub(crate) fn none() -> EventType {
        EventType {
            name: String::new(),
            version: 0,
        }
    }

    pub(crate) fn is_none(&self) -> bool {
        self.name.is_empty()
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_none() {
            f.write_str("(no declared type)")
        } else {
            write!(f, "{} version {}", self.name, self.version)
        }
    }
}

/// What `META` records about a log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    /// The version of the `META` file this was read from (or is written as).
    pub(crate) version: u32,
    /// The random id made when the log was created (or first opened by a
    /// writer of this version); `None` in a version-1 `META`.
    pub(crate) log_id: Option<u128>,
    pub(crate) checksum: u8,
    pub(crate) codec: String,
    pub(crate) event: EventType,
    /// The Rust type name of the events, for diagnostics only.
    pub(crate) type_name: String,
}

pub(crate) fn encode_meta(meta: &Meta) -> Vec<u8> {
    let codec = truncate_utf8(&meta.codec, u16::MAX as usize);
    let event = truncate_utf8(&meta.event.name, u16::MAX as usize);
    let type_name = truncate_utf8(&meta.type_name, u16::MAX as usize);
    let mut out = Vec::with_capacity(48 + codec.len() + event.len() + type_name.len());
    out.extend_from_slice(META_MAGIC);
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&meta.log_id.unwrap_or(0).to_le_bytes());
    out.push(meta.checksum);
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&meta.event.version.to_le_bytes());
    for field in [codec, event, type_name] {
        out.extend_from_slice(&(field.len() as u16).to_le_bytes());
        out.extend_from_slice(field.as_bytes());
    }
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
    if version != 1 && version != META_VERSION {
        return Err(MetaError::Version(version));
    }
    // At least 12 bytes (the version was read), so there is a CRC to split.
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(MetaError::Damaged);
    }
    let string = |at: &mut usize| -> Result<String, MetaError> {
        let len = read_u16(body, *at).ok_or(MetaError::Damaged)? as usize;
        let bytes = body.get(*at + 2..*at + 2 + len).ok_or(MetaError::Damaged)?;
        *at += 2 + len;
        String::from_utf8(bytes.to_vec()).map_err(|_| MetaError::Damaged)
    };
    let meta = if version == 1 {
        let mut at = 12;
        let codec = string(&mut at)?;
        let type_name = string(&mut at)?;
        if at != body.len() {
            return Err(MetaError::Damaged);
        }
        Meta {
            version,
            log_id: None,
            checksum: CHECKSUM_CRC32,
            codec,
            event: EventType::none(),
            type_name,
        }
    } else {
        let fixed = body.get(12..36).ok_or(MetaError::Damaged)?;
        let log_id = u128::from_le_bytes(fixed[..16].try_into().expect("16 bytes"));
        let checksum = fixed[16];
        if checksum != CHECKSUM_CRC32 || fixed[17..20] != [0; 3] {
            // A checksum this build does not know, or reserved bits set:
            // a later version's log, which must not be misread.
            return Err(MetaError::Damaged);
        }
        let event_version = read_u32(fixed, 20).expect("in fixed part");
        let mut at = 36;
        let codec = string(&mut at)?;
        let event = string(&mut at)?;
        let type_name = string(&mut at)?;
        if at != body.len() {
            return Err(MetaError::Damaged);
        }
        Meta {
            version,
            log_id: Some(log_id),
            checksum,
            codec,
            event: EventType {
                name: event,
                version: event_version,
            },
            type_name,
        }
    };
    Ok(meta)
}

/// The name of a Rust type without its module paths, generics kept:
/// `app::shop::Checkout` is `Checkout`, `alloc::vec::Vec<app::Item>` is
/// `Vec<Item>`. It survives moving the type between modules and crates,
/// and compiler versions (whose `type_name` output is not guaranteed).
pub(crate) fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    let mut chars = full.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            // What came before `::` was a module path segment.
            word.clear();
        } else if c.is_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            out.push_str(&word);
            word.clear();
            out.push(c);
        }
    }
    out.push_str(&word);
    out
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

    fn meta(codec: &str, type_name: &str) -> Meta {
        Meta {
            version: META_VERSION,
            log_id: Some(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            checksum: CHECKSUM_CRC32,
            codec: codec.into(),
            event: EventType {
                name: "shop.Checkout".into(),
                version: 3,
            },
            type_name: type_name.into(),
        }
    }

    #[test]
    fn version_2_layout_is_as_documented() {
        let m = meta("postcard", "app::Checkout");
        let bytes = encode_meta(&m);
        assert_eq!(&bytes[..8], b"BBONELOG");
        assert_eq!(read_u32(&bytes, 8), Some(2));
        assert_eq!(
            u128::from_le_bytes(bytes[12..28].try_into().unwrap()),
            m.log_id.unwrap()
        );
        assert_eq!(bytes[28], 1);
        assert_eq!(&bytes[29..32], &[0, 0, 0]);
        assert_eq!(read_u32(&bytes, 32), Some(3));
        assert_eq!(read_u16(&bytes, 36), Some(8));
        assert_eq!(&bytes[38..46], b"postcard");
        assert_eq!(read_u16(&bytes, 46), Some(13));
        assert_eq!(&bytes[48..61], b"shop.Checkout");
        assert_eq!(read_u16(&bytes, 61), Some(13));
        assert_eq!(bytes.len(), 63 + 13 + 4);
    }

    #[test]
    fn version_1_meta_is_still_read() {
        // A version-1 META as version 1 of this crate wrote it.
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"BBONELOG");
        v1.extend_from_slice(&1u32.to_le_bytes());
        for field in ["postcard", "app::Checkout"] {
            v1.extend_from_slice(&(field.len() as u16).to_le_bytes());
            v1.extend_from_slice(field.as_bytes());
        }
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let read = decode_meta(&v1).unwrap();
        assert_eq!(read.version, 1);
        assert_eq!(read.log_id, None);
        assert_eq!(read.codec, "postcard");
        assert_eq!(read.type_name, "app::Checkout");
        assert!(read.event.is_none());
    }

    #[test]
    fn unknown_checksums_and_versions_are_refused() {
        let mut bytes = encode_meta(&meta("postcard", "t"));
        bytes[28] = 2;
        let body = bytes.len() - 4;
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode_meta(&bytes), Err(MetaError::Damaged));
        let mut newer = encode_meta(&meta("postcard", "t"));
        newer[8..12].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(decode_meta(&newer), Err(MetaError::Version(3)));
    }

    #[test]
    fn short_type_names_drop_module_paths() {
        assert_eq!(short_type_name("app::shop::Checkout"), "Checkout");
        assert_eq!(short_type_name("Checkout"), "Checkout");
        assert_eq!(short_type_name("u64"), "u64");
        assert_eq!(short_type_name("alloc::vec::Vec<app::Item>"), "Vec<Item>");
        assert_eq!(
            short_type_name(
                "std::collections::hash::map::HashMap<alloc::string::String, (u8, [app::X; 2])>"
            ),
            "HashMap<String, (u8, [X; 2])>"
        );
        assert_eq!(short_type_name("&str"), "&str");
    }

    #[test]
    fn meta_round_trip_and_refusals() {
        let meta = meta("postcard", "app::Checkout");
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
        let m = meta("postcard", &long);
        let decoded = decode_meta(&encode_meta(&m)).unwrap();
        assert_eq!(decoded.type_name, long[..65_534]);
        let exact = "b".repeat(65_535);
        let m = meta(&exact, "t");
        assert_eq!(decode_meta(&encode_meta(&m)).unwrap().codec, exact);
    }
}
