//! The commands that change a log: `consumers set|delete` and `truncate`.
//! Each opens the log for writing through the public API, so it takes the
//! writer's lock and refuses while a writer holds it, and it opens the log
//! whatever its codec and event type, as opaque bytes.

use std::io::Write;
use std::path::Path;

use crate::inspect::{AttachedKind, Inspector};
use crate::{Codec, CodecError, Error, EventLog, Options};

use super::output::{describe, Failure, Out};
use super::read::{self, Reader};
use super::EXIT_OK;

/// Payloads as they are, under the codec name the log records, so that
/// any log opens for writing (nothing is appended through it).
#[derive(Debug)]
struct Opaque(&'static str);

impl Codec<Vec<u8>> for Opaque {
    fn name(&self) -> &'static str {
        self.0
    }

    fn encode(&self, value: &Vec<u8>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(value);
        Ok(())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
        Ok(bytes.to_vec())
    }
}

/// The log at `path` opened for writing, and a read-only view of it; an
/// error for a path that holds no log (it is never created) and a clear
/// refusal while another process writes it.
fn open_for_writing(path: &Path) -> Result<(EventLog<Vec<u8>, Opaque>, Inspector), Failure> {
    let inspector = read::open(path)?;
    // `Codec::name` is `'static`: one short string, leaked once per run.
    let codec: &'static str = Box::leak(inspector.meta().codec.into_boxed_str());
    let log = Options::new()
        .any_event_type()
        .preallocate(false)
        .open_with_codec(path, Opaque(codec))
        .map_err(|e| match e {
            Error::Locked { .. } => Failure::new(format!(
                "{}; stop the writer first (read-only commands such as stat, dump, tail \
                 and verify work while it runs)",
                describe(&e)
            )),
            e => Failure::from(e),
        })?;
    Ok((log, inspector))
}

/// A refusal if `name` is not a plain consumer of `log`: a registered
/// reader (its true position lives in another log) or a work group's
/// consumer (its state lives in the group's log).
fn refuse_foreign(inspector: &Inspector, name: &str) -> Result<(), Failure> {
    if let Some(reader) = inspector.readers()?.into_iter().find(|r| r.name == name) {
        return Err(Failure::new(format!(
            "{name} is a registered reader of {} (a job, table or hand-off): its position \
             lives in the checkpoint {name} of the log {}, and it would overwrite any \
             change made here; change it there, or retire it",
            inspector.path().display(),
            reader.location.display()
        )));
    }
    let groups = inspector.attached()?;
    if let Some(group) = groups
        .iter()
        .find(|a| a.kind == AttachedKind::Group && a.name == name)
    {
        return Err(Failure::new(format!(
            "{name} is a work group: its position follows the group's own log {}, \
             which would undo any change made here",
            group.log.display()
        )));
    }
    Ok(())
}

pub(super) fn set_consumer(
    path: &Path,
    name: &str,
    offset: u64,
    out: &mut Out,
) -> Result<u8, Failure> {
    let (log, inspector) = open_for_writing(path)?;
    refuse_foreign(&inspector, name)?;
    let consumer = log.consumer(name)?;
    let before = consumer.position();
    consumer.seek(offset)?;
    drop(consumer);
    log.close()?;
    writeln!(out, "consumer {name}: position {before} -> {offset}")?;
    Ok(EXIT_OK)
}

pub(super) fn delete_consumer(path: &Path, name: &str, out: &mut Out) -> Result<u8, Failure> {
    let (log, inspector) = open_for_writing(path)?;
    refuse_foreign(&inspector, name)?;
    let existed = log.delete_consumer(name)?;
    log.close()?;
    if !existed {
        return Err(Failure::new(format!(
            "{} has no consumer {name}",
            path.display()
        )));
    }
    writeln!(out, "consumer {name}: deleted")?;
    Ok(EXIT_OK)
}

/// Who would lose records below `new_first`: `(name, kind, position)`.
fn losers(
    inspector: &Inspector,
    readers: &[Reader],
    new_first: u64,
) -> Result<Vec<(String, &'static str, u64)>, Failure> {
    let mut found = Vec::new();
    for consumer in inspector.consumers()? {
        // An unreadable position needs everything.
        let position = consumer.position.unwrap_or(0);
        if position < new_first {
            found.push((consumer.name, "consumer", position));
        }
    }
    for reader in readers {
        let position = reader.position().unwrap_or(0);
        if position < new_first {
            found.push((reader.name.clone(), reader.kind, position));
        }
    }
    Ok(found)
}

pub(super) fn truncate(
    path: &Path,
    before: u64,
    force: bool,
    out: &mut Out,
) -> Result<u8, Failure> {
    let (log, inspector) = open_for_writing(path)?;
    let first = log.first_offset();
    // Whole segments go: the new first offset is the base of the segment
    // holding `before` (the newest segment always stays).
    let new_first = inspector
        .segments()?
        .iter()
        .map(|s| s.base_offset)
        .filter(|&base| base <= before)
        .max()
        .unwrap_or(first)
        .max(first);
    if new_first == first {
        writeln!(
            out,
            "nothing to remove: the segment holding offset {before} starts at {first}, the first offset"
        )?;
        log.close()?;
        return Ok(EXIT_OK);
    }
    let readers = read::readers(&inspector)?;
    let losers = losers(&inspector, &readers, new_first)?;
    if !losers.is_empty() && !force {
        let mut message = format!(
            "truncating {} before {before} would remove offsets {first}..{new_first}, which \
             these have not read:",
            path.display()
        );
        for (name, kind, position) in &losers {
            message.push_str(&format!("\n  {kind} {name} at {position}"));
        }
        message.push_str("\nnothing was removed; give --force to remove them anyway");
        return Err(Failure::new(message));
    }
    let now_first = log.truncate_before(before)?;
    log.close()?;
    writeln!(
        out,
        "removed offsets {first}..{now_first} ({} records); the log now starts at {now_first}",
        now_first - first
    )?;
    for (name, kind, position) in losers {
        writeln!(
            out,
            "{kind} {name} at {position} lost offsets {position}..{now_first} ({} records)",
            now_first - position.max(first)
        )?;
    }
    Ok(EXIT_OK)
}
