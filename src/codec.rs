//! How event values become record payloads: the [`Codec`] trait and the
//! built-in codecs.
//!
//! A log records the name of the codec that wrote it and refuses to open with
//! another one ([`Error::CodecMismatch`](crate::Error::CodecMismatch)). Which
//! to choose:
//!
//! - [`Postcard`] (the default): compact, fast, and its wire format is
//!   documented and stable since postcard 1.0, which matters for data kept
//!   for years. Fields are positional: add new fields only at the end, as
//!   `Option`s with `#[serde(default)]`, and never reorder them.
//! - [`Bincode`] (feature `bincode`): bincode 2.0.1 through its serde API,
//!   for applications already on bincode. The bincode project is no longer
//!   maintained (its 3.0 release is a tombstone), so prefer postcard for new
//!   logs.
//! - [`Json`] (feature `json`): readable with any tool and tolerant of added
//!   or reordered fields, at several times the size and encode cost.
//! - [`Raw`]: payloads are `Vec<u8>` as given, for applications with their
//!   own serialization (protobuf, Cap'n Proto, rkyv) or none.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A boxed error from a codec.
pub type CodecError = Box<dyn std::error::Error + Send + Sync>;

/// Turns values of `T` into payload bytes and back.
///
/// # Laws
///
/// `decode(encode(v)) == v` for every value `v`, and `encode` appends to
/// `out` without touching the bytes already in it. `decode` must reject
/// bytes it cannot fully account for (trailing bytes included), so that a
/// log read with the wrong type fails instead of yielding garbage. Neither
/// may panic on any input.
///
/// # Example
///
/// A codec for plain strings:
///
/// ```
/// use backbone::{Codec, CodecError};
///
/// #[derive(Default)]
/// struct Utf8;
///
/// impl Codec<String> for Utf8 {
///     fn name(&self) -> &'static str {
///         "utf8"
///     }
///     fn encode(&self, value: &String, out: &mut Vec<u8>) -> Result<(), CodecError> {
///         out.extend_from_slice(value.as_bytes());
///         Ok(())
///     }
///     fn decode(&self, bytes: &[u8]) -> Result<String, CodecError> {
///         Ok(std::str::from_utf8(bytes)?.to_owned())
///     }
/// }
///
/// let dir = tempfile::tempdir()?;
/// let log = backbone::Options::new().open_with_codec(dir.path(), Utf8)?;
/// log.append(&"hello".to_string())?;
/// assert_eq!(log.get(0)?.unwrap().value, "hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Codec<T>: Send + Sync + 'static {
    /// The name recorded in the log; a log opens only with a codec of the
    /// same name. Change it whenever the encoding changes incompatibly.
    fn name(&self) -> &'static str;

    /// Appends the encoding of `value` to `out`.
    ///
    /// # Errors
    ///
    /// Whatever the serializer reports; the log then writes nothing.
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes one whole payload.
    ///
    /// # Errors
    ///
    /// When the bytes are not exactly the encoding of a `T`.
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// The default codec: [postcard](https://docs.rs/postcard), a compact format
/// with a documented, stable wire format.
#[derive(Clone, Copy, Debug, Default)]
pub struct Postcard;

impl<T: Serialize + DeserializeOwned> Codec<T> for Postcard {
    fn name(&self) -> &'static str {
        "postcard"
    }

    #[inline]
    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        postcard::to_io(value, out)?;
        Ok(())
    }

    #[inline]
    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (value, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(trailing(rest.len()));
        }
        Ok(value)
    }
}

/// Bytes in, the same bytes out: for payloads serialized by the application.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Codec<Vec<u8>> for Raw {
    fn name(&self) -> &'static str {
        "raw"
    }

    #[inline]
    fn encode(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value);
        Ok(())
    }

    #[inline]
    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// [bincode](https://docs.rs/bincode) 2.0.1 with its standard configuration,
/// through its serde API (feature `bincode`).
#[cfg(feature = "bincode")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Bincode;

#[cfg(feature = "bincode")]
impl<T: Serialize + DeserializeOwned> Codec<T> for Bincode {
    fn name(&self) -> &'static str {
        "bincode2-standard"
    }

    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
        if used != bytes.len() {
            return Err(trailing(bytes.len() - used));
        }
        Ok(value)
    }
}

/// JSON through [serde_json](https://docs.rs/serde_json) (feature `json`).
#[cfg(feature = "json")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl<T: Serialize + DeserializeOwned> Codec<T> for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode(&self, value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, value)?;
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

fn trailing(count: usize) -> CodecError {
    format!("{count} trailing bytes after the value").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<C: Codec<(u64, String)>>(codec: C) {
        let value = (7u64, "sku-1234".to_string());
        let mut out = vec![0xAA];
        codec.encode(&value, &mut out).unwrap();
        assert_eq!(out[0], 0xAA, "encode must append");
        assert_eq!(codec.decode(&out[1..]).unwrap(), value);
        let mut longer = out[1..].to_vec();
        longer.push(0);
        assert!(codec.decode(&longer).is_err(), "trailing byte accepted");
        assert!(codec.decode(&out[1..out.len() - 1]).is_err());
    }

    #[test]
    fn postcard_round_trips_and_rejects_trailing_bytes() {
        round_trip(Postcard);
    }

    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_round_trips_and_rejects_trailing_bytes() {
        round_trip(Bincode);
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips_and_rejects_trailing_bytes() {
        round_trip(Json);
    }
}
