//! Control payloads: what a version-2 control frame carries. The one kind
//! today is a checkpoint, stored in the same write as the records it
//! covers: the reader's name, how many records follow it in its batch, and
//! a body (source positions and the caller's state) split into chunks when
//! it is larger than one frame. The batch rule that makes a checkpoint's
//! batch all-or-nothing is [`BatchTracker`]'s.

use super::{read_u16, read_u32, read_u64};
use crate::error::CorruptionKind;
use crate::record::{LogId, SourcePosition};

/// The first byte of a checkpoint's control payload.
pub(crate) const CONTROL_CHECKPOINT: u8 = 1;
/// Kinds of source position in a checkpoint body.
const POSITION_LOG: u8 = 1;
const POSITION_EXTERNAL: u8 = 2;
/// Type, records, name length, chunk, chunks: the fixed part of a chunk.
const CHUNK_FIXED: usize = 1 + 4 + 2 + 4 + 4;

/// One checkpoint frame's payload, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chunk<'a> {
    /// Records following the checkpoint in its batch (0 in later chunks).
    pub(crate) records: u32,
    pub(crate) name: &'a str,
    /// This chunk's number, from 0, of `chunks`.
    pub(crate) chunk: u32,
    pub(crate) chunks: u32,
    /// This chunk's part of the body.
    pub(crate) body: &'a [u8],
}

/// The control payloads of a checkpoint named `name` covering `records`
/// records: `body` split so that no payload is over `max_payload` bytes.
/// `None` if even an empty chunk would not fit.
pub(crate) fn encode_checkpoint(
    name: &str,
    records: u32,
    body: &[u8],
    max_payload: u32,
) -> Option<Vec<Vec<u8>>> {
    let fixed = CHUNK_FIXED + name.len();
    let room = (max_payload as usize)
        .checked_sub(fixed)
        .filter(|&r| r > 0)?;
    let parts: Vec<&[u8]> = if body.is_empty() {
        vec![&[]]
    } else {
        body.chunks(room).collect()
    };
    let chunks = u32::try_from(parts.len()).ok()?;
    let payloads = parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let mut out = Vec::with_capacity(fixed + part.len());
            out.push(CONTROL_CHECKPOINT);
            let stated = if i == 0 { records } else { 0 };
            out.extend_from_slice(&stated.to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(i as u32).to_le_bytes());
            out.extend_from_slice(&chunks.to_le_bytes());
            out.extend_from_slice(part);
            out
        })
        .collect();
    Some(payloads)
}

/// The bytes on disk of the frames of a checkpoint named `name` with a
/// body of `body_len` bytes, each frame adding `frame_overhead` to its
/// payload (as [`encode_checkpoint`] splits it).
pub(crate) fn checkpoint_frames_len(
    name: &str,
    body_len: usize,
    max_payload: u32,
    frame_overhead: usize,
) -> u64 {
    let fixed = CHUNK_FIXED + name.len();
    let room = (max_payload as usize).saturating_sub(fixed).max(1);
    let chunks = body_len.div_ceil(room).max(1);
    (chunks * (frame_overhead + fixed) + body_len) as u64
}

/// Decodes a checkpoint chunk; `None` for anything else (another control
/// type, or fields that contradict each other).
pub(crate) fn decode_checkpoint(payload: &[u8]) -> Option<Chunk<'_>> {
    if *payload.first()? != CONTROL_CHECKPOINT {
        return None;
    }
    let records = read_u32(payload, 1)?;
    let name_len = usize::from(read_u16(payload, 5)?);
    let name = std::str::from_utf8(payload.get(7..7 + name_len)?).ok()?;
    crate::name::validate(name).ok()?;
    let at = 7 + name_len;
    let chunk = read_u32(payload, at)?;
    let chunks = read_u32(payload, at + 4)?;
    if chunk >= chunks || (chunk > 0 && records != 0) {
        return None;
    }
    Some(Chunk {
        records,
        name,
        chunk,
        chunks,
        body: &payload[at + 8..],
    })
}

/// A checkpoint body: the source positions, then the caller's state.
pub(crate) fn encode_checkpoint_body(positions: &[SourcePosition], state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + positions.len() * 25 + state.len());
    out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for position in positions {
        match position {
            SourcePosition::Log { log_id, offset } => {
                out.push(POSITION_LOG);
                out.extend_from_slice(&log_id.0.to_le_bytes());
                out.extend_from_slice(&offset.to_le_bytes());
            }
            SourcePosition::External { name, sequence } => {
                out.push(POSITION_EXTERNAL);
                out.extend_from_slice(&(name.len() as u16).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&sequence.to_le_bytes());
            }
        }
    }
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(state);
    out
}

/// Decodes a whole (joined) checkpoint body.
pub(crate) fn decode_checkpoint_body(body: &[u8]) -> Option<(Vec<SourcePosition>, Vec<u8>)> {
    let count = read_u32(body, 0)?;
    let mut at = 4;
    // Each position takes at least 11 bytes: a crafted count cannot
    // allocate more than the body could hold.
    let mut positions = Vec::with_capacity((count as usize).min(body.len() / 11));
    for _ in 0..count {
        let kind = *body.get(at)?;
        at += 1;
        match kind {
            POSITION_LOG => {
                let id = u128::from_le_bytes(body.get(at..at + 16)?.try_into().ok()?);
                let offset = read_u64(body, at + 16)?;
                at += 24;
                positions.push(SourcePosition::Log {
                    log_id: LogId(id),
                    offset,
                });
            }
            POSITION_EXTERNAL => {
                let len = usize::from(read_u16(body, at)?);
                let name = std::str::from_utf8(body.get(at + 2..at + 2 + len)?).ok()?;
                let sequence = read_u64(body, at + 2 + len)?;
                at += 2 + len + 8;
                positions.push(SourcePosition::External {
                    name: name.to_owned(),
                    sequence,
                });
            }
            _ => return None,
        }
    }
    let len = read_u32(body, at)? as usize;
    let state = body.get(at + 4..at + 4 + len)?;
    if at + 4 + len != body.len() {
        return None;
    }
    Some((positions, state.to_vec()))
}

/// A batch a checkpoint opened and the walk has not yet seen whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenBatch {
    /// Where its first checkpoint frame starts, the offset of its first
    /// record, and the timestamp of the record before it (if any).
    pub(crate) pos: u64,
    pub(crate) next: u64,
    pub(crate) last_ts: Option<u64>,
    /// What the checkpoint states, and what has been seen of it.
    pub(crate) records: u32,
    pub(crate) chunks: u32,
    pub(crate) seen_records: u32,
    pub(crate) seen_chunks: u32,
}

impl OpenBatch {
    /// The damage of a log that ends inside this batch.
    pub(crate) fn torn(&self) -> CorruptionKind {
        CorruptionKind::TornBatch {
            records: self.records,
            found: self.seen_records,
        }
    }
}

/// Follows the batch rule over a walk of frames in order: a checkpoint's
/// chunks come first in its batch, then exactly the records it states. The
/// walk feeds every frame; when it ends, [`open`](BatchTracker::open) is the
/// batch it ended inside, which is torn.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BatchTracker {
    open: Option<OpenBatch>,
}

impl BatchTracker {
    /// The batch the frames seen so far end inside, if any.
    pub(crate) fn open(&self) -> Option<OpenBatch> {
        self.open
    }

    /// A control frame at `pos`, where the next record has offset `next`.
    pub(crate) fn control(
        &mut self,
        payload: &[u8],
        pos: u64,
        next: u64,
        last_ts: Option<u64>,
    ) -> Result<(), CorruptionKind> {
        let chunk = decode_checkpoint(payload).ok_or(CorruptionKind::BadControl)?;
        match &mut self.open {
            None if chunk.chunk == 0 => {
                let batch = OpenBatch {
                    pos,
                    next,
                    last_ts,
                    records: chunk.records,
                    chunks: chunk.chunks,
                    seen_records: 0,
                    seen_chunks: 1,
                };
                self.open = Some(batch);
                self.close_if_whole();
                Ok(())
            }
            Some(batch) if batch.seen_chunks == chunk.chunk && batch.chunks == chunk.chunks => {
                batch.seen_chunks += 1;
                self.close_if_whole();
                Ok(())
            }
            // A chunk out of order, or a new checkpoint inside a batch: not
            // what any write of this crate leaves, torn or not.
            _ => Err(CorruptionKind::BadControl),
        }
    }

    /// A record.
    pub(crate) fn record(&mut self) -> Result<(), CorruptionKind> {
        if let Some(batch) = &mut self.open {
            if batch.seen_chunks < batch.chunks {
                return Err(CorruptionKind::BadControl);
            }
            batch.seen_records += 1;
            self.close_if_whole();
        }
        Ok(())
    }

    fn close_if_whole(&mut self) {
        if self
            .open
            .is_some_and(|b| b.seen_chunks == b.chunks && b.seen_records == b.records)
        {
            self.open = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions() -> Vec<SourcePosition> {
        vec![
            SourcePosition::Log {
                log_id: LogId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
                offset: 42,
            },
            SourcePosition::External {
                name: "orders".into(),
                sequence: 9,
            },
        ]
    }

    #[test]
    fn bodies_round_trip_and_refuse_damage() {
        let body = encode_checkpoint_body(&positions(), b"state");
        assert_eq!(
            decode_checkpoint_body(&body),
            Some((positions(), b"state".to_vec()))
        );
        for cut in 0..body.len() {
            assert_eq!(decode_checkpoint_body(&body[..cut]), None, "cut at {cut}");
        }
        let mut longer = body.clone();
        longer.push(0);
        assert_eq!(decode_checkpoint_body(&longer), None);
        let mut crafted = body;
        crafted[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_checkpoint_body(&crafted), None);
    }

    #[test]
    fn a_large_body_is_chunked_and_only_the_first_chunk_states_records() {
        let body: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let chunks = encode_checkpoint("job", 7, &body, 100).expect("fits");
        assert!(chunks.len() > 1);
        let mut joined = Vec::new();
        for (i, payload) in chunks.iter().enumerate() {
            assert!(payload.len() <= 100);
            let chunk = decode_checkpoint(payload).expect("valid chunk");
            assert_eq!(chunk.name, "job");
            assert_eq!(chunk.chunk, i as u32);
            assert_eq!(chunk.chunks, chunks.len() as u32);
            assert_eq!(chunk.records, if i == 0 { 7 } else { 0 });
            joined.extend_from_slice(chunk.body);
        }
        assert_eq!(joined, body);
        let on_disk: usize = chunks.iter().map(|c| c.len() + 28).sum();
        assert_eq!(
            checkpoint_frames_len("job", body.len(), 100, 28),
            on_disk as u64
        );
        let empty = encode_checkpoint("job", 0, &[], 100).expect("fits");
        assert_eq!(
            checkpoint_frames_len("job", 0, 100, 28),
            (empty[0].len() + 28) as u64
        );
        assert_eq!(encode_checkpoint("job", 0, &body, 10), None);
        let one = encode_checkpoint("job", 0, &[], 100).expect("fits");
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn the_tracker_closes_whole_batches_and_names_torn_ones() {
        let chunks = encode_checkpoint("job", 2, &[1; 50], 40).expect("fits");
        let mut tracker = BatchTracker::default();
        for (i, chunk) in chunks.iter().enumerate() {
            tracker
                .control(chunk, 100 + i as u64, 5, Some(1))
                .expect("in order");
        }
        tracker.record().expect("record");
        let open = tracker.open().expect("one record short");
        assert_eq!((open.pos, open.next, open.last_ts), (100, 5, Some(1)));
        assert_eq!(
            open.torn(),
            CorruptionKind::TornBatch {
                records: 2,
                found: 1
            }
        );
        tracker.record().expect("record");
        assert_eq!(tracker.open(), None);
        tracker.record().expect("a record outside any batch");

        // Records before the last chunk, a chunk twice, a foreign payload.
        let mut early = BatchTracker::default();
        early.control(&chunks[0], 0, 0, None).expect("first chunk");
        assert_eq!(early.record(), Err(CorruptionKind::BadControl));
        let mut twice = BatchTracker::default();
        twice.control(&chunks[0], 0, 0, None).expect("first chunk");
        assert!(twice.control(&chunks[0], 0, 0, None).is_err());
        assert!(BatchTracker::default()
            .control(b"\x07xyz", 0, 0, None)
            .is_err());
        // A checkpoint of no records is whole at once.
        let empty = encode_checkpoint("job", 0, b"", 100).expect("fits");
        let mut alone = BatchTracker::default();
        alone.control(&empty[0], 0, 0, None).expect("valid");
        assert_eq!(alone.open(), None);
    }
}
