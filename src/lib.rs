//! An embeddable event log: a durable, typed, append-only log in a
//! directory on local disk, with replay from any offset and durable named
//! consumers. One dependency, no broker to run.
//!
//! # Quick start
//!
//! ```
//! use backbone::{Durability, EventLog, Options, Start};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
//! struct Checkout {
//!     order_id: u64,
//!     sku: String,
//!     qty: u32,
//! }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let log: EventLog<Checkout> = Options::new()
//!     .segment_bytes(64 << 20)
//!     .durability(Durability::EveryAppend)
//!     .open(dir.path().join("checkouts"))?;
//!
//! let checkout = Checkout { order_id: 1, sku: "SKU-0001".into(), qty: 2 };
//! let off = log.append(&checkout)?; // on stable storage when this returns
//! assert_eq!(log.get(off)?.map(|rec| rec.value), Some(checkout));
//!
//! // A service that starts later replays from the beginning...
//! for rec in log.read(Start::Beginning) {
//!     let rec = rec?;
//!     println!("{} at {:?}: {:?}", rec.offset, rec.timestamp, rec.value);
//! }
//! // ...and keeps its place durably across restarts.
//! let inventory = log.consumer("inventory")?;
//! inventory.commit(off + 1)?;
//! assert_eq!(inventory.position(), 1);
//! # Ok::<(), backbone::Error>(())
//! ```
//!
//! # Concepts
//!
//! - **Offset**: a record's position, dense and gapless from 0. The first
//!   offset grows when retention removes old segments.
//! - **Segment**: the log is a sequence of files, each holding a run of
//!   records, with a sparse offset and time index beside it. Only the
//!   newest segment is written; the others are sealed and never change.
//! - **Cursor**: [`EventLog::read`] replays from a [`Start`]: the
//!   beginning, an offset, a time, or the end.
//! - **Consumer**: [`EventLog::consumer`] is a durable, named position, so
//!   a service resumes where it left off.
//! - **Subscription**: [`EventLog::subscribe`] delivers history and then
//!   every new record, live; the receiving thread reads, decodes and
//!   filters them itself, so subscriptions cost no thread.
//! - **Inspection**: [`inspect::Inspector`] reads any log on disk, whatever
//!   its event type, without taking the writer's lock.
//!
//! # Guarantees
//!
//! - **Ordering**: one total order per log. Each thread's appends keep
//!   their order; an append that returned before another started has the
//!   smaller offset.
//! - **Durability**, per [`Durability`] mode: with the default
//!   `EveryAppend`, a returned append survives a process crash and a power
//!   loss (given a disk that honours flushes). `Interval` survives a
//!   process crash and bounds what a power loss takes; `Buffered` is the
//!   fastest and a process crash loses what was not flushed.
//!   [`EventLog::sync`] makes everything appended durable in any mode.
//! - **Integrity**: every record carries its length, offset and a CRC32;
//!   a read never returns bytes that were not appended at that offset.
//!   Damage is an [`Error::Corrupt`] naming the file and byte position.
//! - **Recovery**: after a crash, opening cuts the newest segment back to
//!   its longest intact prefix (the cut is reported in
//!   [`RecoveryReport`] and the bytes kept aside); no acknowledged record is
//!   lost and no gap appears. Opening reads only the tail of the newest
//!   segment, whatever the size of the log.
//! - **One writer**: a second writer, in this process or another, gets
//!   [`Error::Locked`]. [`Options::read_only`] handles may follow a log
//!   another process writes.
//!
//! # Feature flags
//!
//! - `bincode`: the `Bincode` codec (bincode 2.0.1, serde API).
//! - `json`: the `Json` codec.
//! - `async`: [`Subscription`] is also a `futures_core::Stream`.
//! - `cli`: the `backbone` command-line tool (`cargo install --path .
//!   --features cli`) and `backbone::cli`, to build it with an
//!   application's event types registered.
//!
//! The on-disk format is specified in `docs/FORMAT.md`.

#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

// The layers, bottom to top (`src/layers.rs` holds every import to this
// table: imports point down):
// - L0, the vocabulary: `error`, `record` (with the append clock's
//   `unsafe` block, one `clock_gettime` call), `codec`, `name`;
// - L1, every byte layout, as pure functions: `format`;
// - L2, every byte read or written (two `unsafe` blocks, in `storage::os`:
//   the map and the writeback hint) and the synchronization primitives
//   loom checks: `storage`, `sync`;
// - L3, configuration: `options`;
// - L4, the untyped log: `store`;
// - L5, a read-only, codec-agnostic view of a log on disk: `inspect`;
// - L6, the typed API: `log`;
// - L7, stream processing built on the public API: `stream`;
// - the command-line tool, on `inspect` and the public API: `cli` (behind
//   the `cli` feature) and the binary in `src/bin/`.
#[cfg(feature = "nats")]
mod bridge;
#[cfg(feature = "cli")]
pub mod cli;
mod codec;
mod error;
mod format;
pub mod inspect;
mod log;
mod name;
mod options;
mod record;
mod storage;
mod store;
pub mod stream;
mod sync;

/// The channel crate subscriptions speak, for `select!` over
/// [`Subscription::ready`]: `backbone::channel::select!`. Its version is
/// part of this crate's semver (crossbeam-channel 0.5).
pub use crossbeam_channel as channel;

#[cfg(feature = "bincode")]
pub use codec::Bincode;
#[cfg(feature = "json")]
pub use codec::Json;
pub use codec::{Codec, CodecError, Postcard, Raw};
pub use error::{CorruptionKind, Error, Result};
pub use log::{
    Checkpoint, CloseReport, CommitPolicy, Consumer, ConsumerOptions, ConsumerStatus,
    ConsumerSubscription, Cursor, DeadLetter, DeadLetters, EventLog, GroupEvent, GroupOptions,
    Iter, ReaderStatus, Stopper, SubscribeOptions, Subscription, Task, Undecodable, WorkGroup,
};
pub use options::{Durability, Event, Options, RecoveryMode};
pub use record::{LogId, ReaderKind, Record, SourcePosition, Start, Timestamp};
pub use store::{RecoveryReport, Stats};

/// The bridge to NATS JetStream (feature `nats`): [`Mirror`](nats::Mirror)
/// publishes a log's durable records to a subject exactly once and in
/// order; [`Source`](nats::Source) feeds a log from the subjects mirrors
/// publish to, exactly once. The async client runs on one shared thread
/// of its own; the API is synchronous.
#[cfg(feature = "nats")]
pub mod nats {
    pub use crate::bridge::{
        BridgeStatus, Connect, Mirror, MirrorHandle, Retention, Source, SourceHandle,
    };
}

/// The crash-simulating, fault-injecting storage this crate's tests run
/// on. Test-only: it exists in the crate's own test build, in cargo-fuzz
/// builds (`cfg(fuzzing)`) and with `--cfg backbone_sim`, never in a
/// dependent's build.
#[cfg(any(test, fuzzing, backbone_sim))]
pub use storage::sim;

// The suites that run on the simulator (tests/sim/) are written against the
// public API, as `backbone::...`; they are compiled into this crate's test
// build, the only build of it that has the simulator.
#[cfg(test)]
extern crate self as backbone;

#[cfg(test)]
#[path = "../tests/sim/mod.rs"]
#[allow(
    unreachable_pub,
    missing_docs,
    missing_debug_implementations,
    unsafe_op_in_unsafe_fn
)]
mod sim_suites;

#[cfg(test)]
mod layers;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<X: Send + Sync>() {}

    #[test]
    fn handles_are_send_and_sync() {
        struct NotSync(std::marker::PhantomData<std::cell::Cell<u8>>);
        assert_send_sync::<EventLog<NotSync>>();
        assert_send_sync::<Consumer<String>>();
        assert_send_sync::<Error>();
    }
}

/// The README's code blocks, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
