//! The event types an application's build of the tool can print as JSON,
//! by the name a log's `META` declares for its events.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::inspect::LogMeta;
use crate::{Codec, Event, Postcard};

type Decoder = Box<dyn Fn(&str, &[u8]) -> Option<serde_json::Value> + Send + Sync>;

/// The event types the `backbone` tool decodes, by the event name a log
/// declares ([`Options::event_type`](crate::Options::event_type), or the
/// type's short name when none was declared). A log of a registered type,
/// in the postcard codec (or bincode, with that feature), prints its
/// payloads as JSON; others print as hex, except JSON-codec logs, which
/// print as JSON without a registration.
///
/// ```
/// use backbone::cli::Registry;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct Checkout { order_id: u64 }
/// # impl backbone::Event for Checkout { const NAME: &'static str = "shop.Checkout"; const VERSION: u32 = 1; }
/// let registry = Registry::new()
///     .register::<Checkout>()                // by Checkout::NAME
///     .register_as::<u64>("Tick");           // a log opened as EventLog<u64>, event name `Tick`
/// assert_eq!(registry.names().collect::<Vec<_>>(), ["Tick", "shop.Checkout"]);
/// ```
#[derive(Default)]
pub struct Registry {
    types: BTreeMap<String, Decoder>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.types.keys()).finish()
    }
}

impl Registry {
    /// No event types: every payload prints as hex, or as JSON in a
    /// JSON-codec log.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `E` under its declared name, [`Event::NAME`].
    pub fn register<E: Event + Serialize + DeserializeOwned + 'static>(self) -> Registry {
        self.register_as::<E>(E::NAME)
    }

    /// Registers `T` for logs whose declared event name is `name`
    /// (replacing an earlier registration of it).
    pub fn register_as<T: Serialize + DeserializeOwned + 'static>(
        mut self,
        name: impl Into<String>,
    ) -> Registry {
        let decoder: Decoder = Box::new(|codec, bytes| {
            let value: T = match codec {
                "postcard" => Codec::<T>::decode(&Postcard, bytes).ok()?,
                #[cfg(feature = "bincode")]
                "bincode2-standard" => Codec::<T>::decode(&crate::Bincode, bytes).ok()?,
                "json" => serde_json::from_slice(bytes).ok()?,
                _ => return None,
            };
            serde_json::to_value(value).ok()
        });
        self.types.insert(name.into(), decoder);
        self
    }

    /// The registered event names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.types.keys().map(String::as_str)
    }

    /// `payload` of the log described by `meta` as JSON, if its type is
    /// registered or its codec is JSON.
    pub(super) fn decode(&self, meta: &LogMeta, payload: &[u8]) -> Option<serde_json::Value> {
        let registered = meta
            .event_type
            .as_ref()
            .and_then(|(name, _)| self.types.get(name));
        match registered {
            Some(decode) => decode(&meta.codec, payload),
            None if meta.codec == "json" => serde_json::from_slice(payload).ok(),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, serde::Deserialize)]
    struct Note {
        id: u64,
        text: String,
    }

    fn meta(codec: &str, event: Option<&str>) -> LogMeta {
        LogMeta {
            format_version: 2,
            meta_version: 2,
            log_id: None,
            codec: codec.to_owned(),
            event_type: event.map(|name| (name.to_owned(), 1)),
            type_name: "Note".to_owned(),
        }
    }

    #[test]
    fn registered_types_decode_by_the_logs_event_name() {
        let note = Note {
            id: 3,
            text: "hi".into(),
        };
        let mut bytes = Vec::new();
        Codec::<Note>::encode(&Postcard, &note, &mut bytes).unwrap();
        let registry = Registry::new().register_as::<Note>("app.Note");
        let expected = serde_json::json!({"id": 3, "text": "hi"});
        assert_eq!(
            registry.decode(&meta("postcard", Some("app.Note")), &bytes),
            Some(expected.clone())
        );
        // Another event name, no name, or bytes that do not decode: none.
        assert_eq!(
            registry.decode(&meta("postcard", Some("other")), &bytes),
            None
        );
        assert_eq!(registry.decode(&meta("postcard", None), &bytes), None);
        assert_eq!(
            registry.decode(&meta("postcard", Some("app.Note")), &[0xff]),
            None
        );
        // A JSON-codec log decodes without a registration.
        let json = serde_json::to_vec(&note).unwrap();
        assert_eq!(
            Registry::new().decode(&meta("json", None), &json),
            Some(expected)
        );
    }
}
