//! A log's records as their stored bytes, for a bridge that carries them
//! to another system unchanged: read in batches below a bound (the
//! durable watermark) without decoding, appended back with a checkpoint
//! after checking that each one decodes, and a mirror's registration as a
//! reader of the log. The typed API stays the only public way in; these
//! are the crate's own doors for `bridge`.

use std::ops::Range;

use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::format::READER_MIRROR;
use crate::log::{Checkpoint, EventLog};
use crate::record::{Start, Timestamp};
pub(crate) use crate::store::FrameBatch;
use crate::store::RawCursor;

impl<T, C: Codec<T>> EventLog<T, C> {
    /// Reads records from `from` into `batch` (after clearing it), as
    /// stored: at most `max_records`, stopping before `end` and once the
    /// payloads reach `max_bytes` (at least one record is read whatever
    /// its size). A record that fails its checksum is an error, as on any
    /// read.
    pub(crate) fn read_encoded(
        &self,
        from: u64,
        end: u64,
        max_records: usize,
        max_bytes: usize,
        batch: &mut FrameBatch,
    ) -> Result<()> {
        batch.clear();
        if from >= end {
            return Ok(());
        }
        let store = self.store();
        let pin = store.pin()?;
        let mut cursor = RawCursor::new(store, Start::Offset(from));
        cursor.end = cursor.end.min(end);
        let copied = cursor.copy_frames(store, &pin, max_records, max_bytes, batch);
        cursor.unpin();
        copied
    }

    /// Appends `payloads` as they are, each with its source time, and
    /// `checkpoint` in the same batch ([`append_committing`]'s all or
    /// nothing), after checking that each payload decodes with this log's
    /// codec: bytes from elsewhere that this log's readers could not read
    /// are refused with [`Error::Codec`], nothing written.
    ///
    /// [`append_committing`]: EventLog::append_committing
    pub(crate) fn append_encoded_committing(
        &self,
        payloads: &[&[u8]],
        source_times: &[Timestamp],
        checkpoint: &Checkpoint,
    ) -> Result<Range<u64>> {
        if source_times.len() != payloads.len() {
            return Err(Error::InvalidArgument {
                name: "source_times",
                reason: format!(
                    "{} source times for {} payloads",
                    source_times.len(),
                    payloads.len()
                ),
            });
        }
        let codec = &*self.codec;
        let event = &self.store().meta().event;
        for payload in payloads {
            if let Err(source) = codec.decode(payload) {
                return Err(Error::Codec {
                    codec: codec.name(),
                    offset: None,
                    event_type: (!event.is_none()).then(|| event.to_string()),
                    source,
                });
            }
        }
        let body = checkpoint.encode_body()?;
        self.store().append(
            payloads.len(),
            None,
            Some((checkpoint.name(), &body)),
            Some(source_times),
            |i, out| {
                out.extend_from_slice(payloads[i]);
                Ok(())
            },
        )
    }

    /// Registers (or moves) the mirror `name` as a reader of this log at
    /// `position`, its true position being the last message on the
    /// JetStream subject `location` names; with `sync`, the position is
    /// made durable before this returns.
    pub(crate) fn note_mirror(
        &self,
        name: &str,
        location: &str,
        position: u64,
        sync: bool,
    ) -> Result<()> {
        let store = self.store();
        store.note_reader_of_kind(READER_MIRROR, name, location, position)?;
        if sync {
            store.sync_reader(name)?;
        }
        Ok(())
    }

    /// The name of the log's codec (`postcard`, `json`, …).
    pub(crate) fn codec_name(&self) -> &'static str {
        self.codec.name()
    }

    /// Whether this handle appends (a read-only handle's records are made
    /// durable by their writer).
    pub(crate) fn is_writer(&self) -> bool {
        self.store().is_writer()
    }
}
