//! Materialized tables: a [`Table`] folds a source log's records into one
//! value per key, keeps the result in memory for reads at any time, and
//! makes it durable beside the source so that a restart replays only what
//! is new. This module owns the table's directory (its changelog and its
//! snapshot) and the driver that keeps it current. It reads the source and
//! writes the changelog only through the public log API, and the snapshot
//! through the storage seam; it never writes to the source's files (a
//! committed position registers the table as a reader there, as every
//! exactly-once hand-off does).
//!
//! # On disk
//!
//! A table `name` of the source log in directory `orders` lives in
//! `orders.tables/name/`: a `changelog/` log of [`TableChange`]s (for each
//! batch of source records applied, the newest value of every key the
//! batch touched, committed with the source position by one
//! [`EventLog::append_committing`]) and a `snapshot` of every entry as of
//! a changelog offset. docs/FORMAT.md ("Stream jobs and tables") gives
//! the snapshot's bytes. The table's state is the snapshot's entries,
//! then the changelog's records from the snapshot's offset on. A snapshot
//! is written once the changelog has grown by more records than the table
//! has keys (and at least 4096) since the last one, so writing snapshots
//! costs a bounded amount per change, and a restart replays at most about
//! as many changelog records as the table has keys: the user's fold
//! function is called only for source records after the checkpoint.
//!
//! # What a crash leaves
//!
//! - While a batch is folded: nothing on disk has changed; the batch is
//!   applied again, from the source, by the next start.
//! - The changelog append is all or nothing ([`EventLog::append_committing`]):
//!   the changes and the source position land together, so no source
//!   record is ever applied twice or skipped.
//! - A snapshot is written to `snapshot.tmp`, synced, renamed over
//!   `snapshot`, and the directory synced, after the changelog it covers is
//!   synced: a crash leaves the old snapshot or the new one (and perhaps a
//!   `snapshot.tmp`, which the next start removes), never one ahead of its
//!   changelog.
//! - Compaction ([`EventLog::truncate_before`]`(covered)`) comes last; cut
//!   short, it leaves changelog records below `covered`, which a start
//!   skips (and removes).
//!
//! A `snapshot` that fails its checksum or does not decode is an error
//! ([`Error::Corrupt`]), never skipped: the table would silently lose the
//! entries it holds. Nothing here depends on a clean shutdown.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Waker;

use parking_lot::RwLock;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::running::Claim;
use super::runtime::{Ending, Progress, Runtime, Step, Task};
use crate::codec::Codec;
use crate::error::{CorruptionKind, Error, Result};
use crate::log::{Checkpoint, EventLog, SubscribeOptions, Subscription};
use crate::options::Options;
use crate::record::{Record, Start};
use crate::storage::{remove_if_exists, write_atomically, OpenMode, Storage};

/// Source records applied per batch, at most, by default.
const DEFAULT_BATCH: usize = 1024;

/// Keys a table may hold by default.
const DEFAULT_MAX_KEYS: usize = 10_000_000;

/// A snapshot is due once the changelog has grown by more than
/// `max(keys, MIN_SNAPSHOT_CHANGES)` records since the last one: a
/// snapshot costs about as much as its entries, so this bounds its cost per
/// change, and small tables do not write one every few batches.
const MIN_SNAPSHOT_CHANGES: u64 = 4096;

const CHANGELOG: &str = "changelog";
const SNAPSHOT: &str = "snapshot";
const SNAPSHOT_TMP: &str = "snapshot.tmp";
const SNAPSHOT_MAGIC: [u8; 8] = *b"BBONETBL";
const SNAPSHOT_VERSION: u32 = 1;
const SNAPSHOT_HEADER_LEN: usize = 40;
/// Where the checksummed bytes start: `covered`, the counts and the body.
const SNAPSHOT_CHECKED_FROM: usize = 16;

/// The user's functions, boxed: where a record goes, and how it changes
/// its key's value.
type KeyFn<T, K> = Box<dyn FnMut(&T) -> K + Send>;
type FoldFn<T, V> = Box<dyn FnMut(&mut V, T) + Send>;

/// One change of a table, as its changelog holds it: `key` now has `value`.
///
/// A batch of source records writes one change per key it touched, with
/// the value after the whole batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableChange<K, V> {
    /// The key.
    pub key: K,
    /// Its value from this change on.
    pub value: V,
}

/// How a table runs, for [`EventLog::table_with`]: a builder with
/// documented defaults.
///
/// ```
/// use backbone::stream::TableOptions;
/// use backbone::{Durability, Options};
///
/// let options = TableOptions::new()
///     .max_keys(1_000_000)
///     .changelog(Options::new().durability(Durability::Buffered));
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct TableOptions {
    max_keys: usize,
    batch: usize,
    changelog: Options,
    runtime: Option<Runtime>,
}

impl Default for TableOptions {
    fn default() -> TableOptions {
        TableOptions::new()
    }
}

impl TableOptions {
    /// The defaults: at most 10 million keys, batches of at most 1024
    /// source records, and a changelog opened with the default [`Options`].
    pub fn new() -> TableOptions {
        TableOptions {
            max_keys: DEFAULT_MAX_KEYS,
            batch: DEFAULT_BATCH,
            changelog: Options::new().segment_bytes(CHANGELOG_SEGMENT_BYTES),
            runtime: None,
        }
    }

    /// Runs the table's driver on `runtime` instead of the shared one
    /// ([`Runtime::shared`]).
    pub fn runtime(mut self, runtime: &Runtime) -> TableOptions {
        self.runtime = Some(runtime.clone());
        self
    }

    /// The most keys the table may hold (default 10 million). The whole
    /// table lives in memory, as a `HashMap`, and each snapshot is built
    /// in memory too before it is written, so this bounds its memory at
    /// about twice the size of its entries. A batch that would take the
    /// table past it stops the table with [`Error::TableTooLarge`],
    /// committing nothing of that batch; started again with a higher
    /// limit, it goes on from there.
    pub fn max_keys(mut self, keys: usize) -> TableOptions {
        self.max_keys = keys;
        self
    }

    /// At most this many source records per batch (default 1024): each
    /// batch is one committing append to the changelog.
    pub fn batch_size(mut self, records: usize) -> TableOptions {
        self.batch = records.max(1);
        self
    }

    /// The options the changelog is opened with (default [`Options::new`]
    /// with 4 MiB segments: every batch is on stable storage when the
    /// table publishes it). The snapshot file gets the same file mode.
    /// The segment size bounds what a restart scans for the changelog's
    /// checkpoint and what a snapshot leaves behind: compaction removes
    /// whole segments only. With
    /// [`Durability::Buffered`](crate::Durability::Buffered) a crash can
    /// take back the last batches, changes and source position together,
    /// and the table applies their source records again: still exactly
    /// once.
    pub fn changelog(mut self, options: Options) -> TableOptions {
        self.changelog = options;
        self
    }
}

/// A table kept current from a log: the fold of its records, one value per
/// key, readable at any time. Started by [`EventLog::table`] or
/// [`EventLog::table_with`].
///
/// A driver applies the source's records in batches, on a
/// [`Runtime`]'s threads (the shared one unless
/// [`TableOptions::runtime`] says otherwise): it calls the key and fold functions on a copy of the keys
/// a batch touches, commits the batch's changes with its source position,
/// and only then publishes them, so reads never see half a batch, and a
/// batch whose function panics is neither committed nor seen. Reads
/// ([`get`](Table::get), [`to_map`](Table::to_map)) take a read lock held
/// for the lookup only.
///
/// The table lives in `<source log's directory>.tables/<name>/`: a
/// changelog (a log of [`TableChange`]s; a batch's changes and its source
/// position are one all-or-nothing append) and a snapshot of every
/// entry, written once the changelog has grown by more records than the
/// table has keys, after which the changelog is compacted. A start loads
/// the snapshot, replays the changelog after it (no fold calls), and
/// folds only the source records after the committed position: after any
/// crash, no record is applied twice and none is skipped. A snapshot that
/// fails its checksum is [`Error::Corrupt`] at start, never skipped. The
/// whole table is held in memory, up to
/// [`TableOptions::max_keys`] keys (default 10 million).
///
/// Handles are cheap to clone; every clone is the same table. Dropping the
/// last one stops the driver after its current batch and waits for it:
/// what it committed stays, and the table's next start goes on from there.
/// [`stop`](Table::stop) and [`join`](Table::join) do the same and report
/// how it ended. A table keeps its source log and its changelog open while
/// any handle of it lives; its name can be started again once every handle
/// is dropped.
///
/// ```
/// use backbone::stream::Table;
/// use backbone::{EventLog, Start};
/// # let dir = tempfile::tempdir().unwrap();
/// let sales: EventLog<(String, u32)> = EventLog::open(dir.path().join("sales"))?;
/// let sold: Table<String, u64> =
///     sales.table("sold", |(sku, _)| sku.clone(), |n: &mut u64, (_, qty)| *n += u64::from(qty))?;
/// let end = sales.append_batch(&[("tea".into(), 2), ("jam".into(), 1), ("tea".into(), 5)])?.end;
/// sold.wait_for(end)?; // every record below `end` applied
/// assert_eq!(sold.get("tea"), Some(7));
/// assert_eq!(sold.len(), 2);
/// # Ok::<(), backbone::Error>(())
/// ```
pub struct Table<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        Table {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> std::fmt::Debug for Table<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.inner.name)
            .field("position", &self.position())
            .field("keys", &self.inner.shared.map.read().len())
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// What every handle of one table shares; its drop is the last handle's.
struct Inner<K, V> {
    name: String,
    shared: Arc<Shared<K, V>>,
    changelog: EventLog<TableChange<K, V>>,
    source_end: Box<dyn Fn() -> u64 + Send + Sync>,
    /// Wakes the driver's task (to see its stop flag).
    waker: Waker,
    /// Released after the driver ended and with the last handle, which
    /// also holds the changelog open: a new start of the name then finds
    /// both free.
    _running: Claim,
}

impl<K, V> Drop for Inner<K, V> {
    fn drop(&mut self) {
        self.shared.progress.request_stop();
        self.waker.wake_by_ref();
        // The last handle may be dropped on a runtime thread (by a job's
        // function, or by the driver itself through a fold that captured
        // its own table): it must not wait there, and the driver stops
        // after this batch anyway.
        if !runtime_thread() {
            self.shared.progress.wait_ended();
        }
    }
}

/// Whether this thread is one of a stream runtime's.
fn runtime_thread() -> bool {
    std::thread::current()
        .name()
        .is_some_and(|name| name.starts_with("backbone-stream-"))
}

/// The changelog's segment size unless [`TableOptions::changelog`] says
/// otherwise: small, so that compaction after a snapshot frees space soon
/// and a restart's scan of the newest segment for the checkpoint is
/// short.
const CHANGELOG_SEGMENT_BYTES: u64 = 4 << 20;

/// What the driver and the handles share.
struct Shared<K, V> {
    /// The table as of the progress's position: written only by the
    /// driver, after each commit.
    map: RwLock<HashMap<K, V>>,
    progress: Arc<Progress>,
}

impl<T, C> EventLog<T, C>
where
    T: Send + 'static,
    C: Codec<T> + Send + Sync + 'static,
{
    /// Starts the table `name` of this log (1 to 128 ASCII letters, digits,
    /// `_`, `-`, `.`): each record goes to the key `key` gives it, and
    /// `fold` updates that key's value with it, starting from
    /// `V::default()` for a key not seen before. The table lives in
    /// `<this log's directory>.tables/<name>/`; started again under the
    /// same name, it loads what it committed and folds only the records
    /// after it. A first run starts at the log's first record. See
    /// [`Table`], and [`table_with`](EventLog::table_with) for limits.
    ///
    /// ```
    /// # use backbone::{EventLog, Start};
    /// # use backbone::stream::Table;
    /// # #[derive(serde::Serialize, serde::Deserialize)]
    /// # struct StockDelta { sku: String, delta: i64 }
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let stock_deltas: EventLog<StockDelta> = EventLog::open(dir.path().join("deltas"))?;
    /// let offset = stock_deltas.append(&StockDelta { sku: "sku-42".into(), delta: 5 })? + 1;
    /// let stock: Table<String, i64> =
    ///     stock_deltas.table("stock", |d| d.sku.clone(), |s: &mut i64, d| *s += d.delta)?;
    /// stock.wait_for(offset)?; // read-your-writes
    /// let on_hand: Option<i64> = stock.get("sku-42");
    /// assert_eq!(on_hand, Some(5));
    /// let changes = stock.changes(Start::Beginning)?; // the changelog, live
    /// assert_eq!(changes.recv()?.value.value, 5);
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; [`Error::JobRunning`] while the table runs
    /// in this process; [`Error::Corrupt`] or
    /// [`Error::UnsupportedVersion`] for a damaged snapshot;
    /// [`Error::TableTooLarge`] if what it committed holds more keys than
    /// allowed; errors resuming from its checkpoint
    /// ([`Error::CheckpointAhead`], [`Error::NotInCheckpoint`],
    /// [`Error::OffsetTruncated`] when the source no longer holds the
    /// records after it) or opening, reading and writing the logs.
    pub fn table<K, V>(
        &self,
        name: &str,
        key: impl FnMut(&T) -> K + Send + 'static,
        fold: impl FnMut(&mut V, T) + Send + 'static,
    ) -> Result<Table<K, V>>
    where
        K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        self.table_with(name, key, fold, TableOptions::new())
    }

    /// As [`table`](EventLog::table), with `options`: the key limit, the
    /// batch size and the changelog's [`Options`].
    ///
    /// # Errors
    ///
    /// As [`table`](EventLog::table).
    pub fn table_with<K, V>(
        &self,
        name: &str,
        key: impl FnMut(&T) -> K + Send + 'static,
        fold: impl FnMut(&mut V, T) + Send + 'static,
        options: TableOptions,
    ) -> Result<Table<K, V>>
    where
        K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
        V: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        Table::start(self, name, Box::new(key), Box::new(fold), options)
    }
}

impl<K, V> Table<K, V>
where
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn start<T, C>(
        source: &EventLog<T, C>,
        name: &str,
        key: KeyFn<T, K>,
        fold: FoldFn<T, V>,
        options: TableOptions,
    ) -> Result<Table<K, V>>
    where
        T: Send + 'static,
        C: Codec<T> + Send + Sync + 'static,
    {
        crate::name::validate(name)?;
        let dir = table_dir(source.path(), name)?;
        let running = Claim::take(name, &dir)?;
        super::job::registered_from(source, name, &dir.join(CHANGELOG))?;
        let driver = Driver::open(source, name, dir, key, fold, &options)?;
        let (shared, changelog) = (driver.shared.clone(), driver.changelog.clone());
        let runtime = match options.runtime.clone() {
            Some(runtime) => runtime,
            None => Runtime::shared()?,
        };
        let waker = runtime.spawn(Box::new(driver));
        let source = source.clone();
        Ok(Table {
            inner: Arc::new(Inner {
                name: name.to_owned(),
                shared,
                changelog,
                source_end: Box::new(move || source.next_offset()),
                waker,
                _running: running,
            }),
        })
    }

    /// Rebuilds the table `name` of `source` from what it committed (its
    /// last snapshot and its changelog's tail), without running it: for
    /// another process, or a check. Nothing is written; the changelog is
    /// opened read-only, so the table may be running meanwhile. Returns
    /// the entries and a source position every record below which they
    /// include (they may include a few later batches too, when the table
    /// runs meanwhile).
    ///
    /// ```
    /// # use backbone::EventLog;
    /// # use backbone::stream::Table;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let log: EventLog<u32> = EventLog::open(dir.path().join("numbers"))?;
    /// log.append_batch(&[1, 2, 3, 4])?;
    /// let parity: Table<bool, u32> = log.table("parity", |n| n % 2 == 0, |sum: &mut u32, n| *sum += n)?;
    /// parity.wait_for(4)?;
    /// let (entries, position) = Table::<bool, u32>::load(&log, "parity")?;
    /// assert_eq!((entries[&true], entries[&false], position), (6, 4, 4));
    /// # Ok::<(), backbone::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidName`]; errors opening the changelog (a table that
    /// never ran has none: [`Error::Io`], `NotFound`); [`Error::Corrupt`] or
    /// [`Error::UnsupportedVersion`] for a damaged snapshot; errors reading
    /// the checkpoint's position in `source`.
    pub fn load<T, C: Codec<T>>(
        source: &EventLog<T, C>,
        name: &str,
    ) -> Result<(HashMap<K, V>, u64)> {
        crate::name::validate(name)?;
        let dir = table_dir(source.path(), name)?;
        let changelog: EventLog<TableChange<K, V>> =
            Options::new().read_only().open(dir.join(CHANGELOG))?;
        let storage = Storage::os();
        let mut retries = 0;
        loop {
            // The position first: the changes read after it are as new or
            // newer, so every source record below it is in the entries.
            let position = match changelog.last_checkpoint(name)? {
                Some(checkpoint) => checkpoint.position_in(source)?,
                None => 0,
            };
            match load(&storage, &dir, &changelog) {
                Ok(loaded) => return Ok((loaded.map, position)),
                // A compaction removed the tail of the snapshot read just
                // before it was replaced: read the new one.
                Err(Error::OffsetTruncated { .. }) if retries < 3 => retries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

impl<K, V> Table<K, V> {
    /// The table's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The next source offset the table will apply: every record below it
    /// is in the table (committed, and visible to reads).
    pub fn position(&self) -> u64 {
        self.inner.shared.progress.position(0)
    }

    /// Source records not yet applied.
    pub fn lag(&self) -> u64 {
        (self.inner.source_end)().saturating_sub(self.position())
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.inner.shared.map.read().len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the driver has ended (stopped, failed, or a log closed).
    /// The table stays readable as it was.
    pub fn is_finished(&self) -> bool {
        self.inner.shared.progress.ended().is_some()
    }

    /// Waits until the table has applied every source record below
    /// `offset` (read-your-writes: pass the end of what you appended).
    ///
    /// # Errors
    ///
    /// [`Error::JobFailed`] if the driver ends first.
    pub fn wait_for(&self, offset: u64) -> Result<()> {
        self.inner.shared.progress.wait_for(0, offset)
    }

    /// Asks the driver to finish its current batch and stop; what it
    /// committed is then made durable (a changelog with a lazier
    /// [`Durability`](crate::Durability) is synced), so
    /// [`Table::load`] in another process sees all of it. Reads go on
    /// answering from the table as it stands.
    pub fn stop(&self) {
        self.inner.shared.progress.request_stop();
        self.inner.waker.wake_by_ref();
    }

    /// Waits for the driver to end and says how it ended.
    ///
    /// # Errors
    ///
    /// What stopped it: [`Error::JobFailed`] for a panic in the key or
    /// fold function (nothing of that batch is committed or visible),
    /// [`Error::TableTooLarge`], or the error of a read, an append or a
    /// snapshot ([`Error::Closed`] when the source was closed under it).
    /// A second `join` (from any handle) reports a failure as
    /// [`Error::JobFailed`] with the first one's text.
    pub fn join(&self) -> Result<()> {
        self.inner.shared.progress.join()
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Table<K, V> {
    /// The value of `key`, or `None` if no record has had that key.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        self.inner.shared.map.read().get(key).cloned()
    }

    /// A copy of every entry, as of [`position`](Table::position) when it
    /// was taken.
    pub fn to_map(&self) -> HashMap<K, V> {
        self.inner.shared.map.read().clone()
    }
}

impl<K, V> Table<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// The table's changelog as a live subscription from `start`: one
    /// [`TableChange`] per key and batch, the value after the batch, in
    /// commit order. The changelog is compacted when a snapshot is written
    /// (whole segments of changes the snapshot holds are removed), so
    /// `Start::Beginning` begins at the oldest change kept, and a
    /// subscriber far behind may find its next changes removed
    /// ([`Error::OffsetTruncated`]); [`Table::load`] rebuilds the whole
    /// table. The subscription ends with [`Error::Closed`] once every
    /// handle of the table is dropped.
    ///
    /// # Errors
    ///
    /// As [`EventLog::subscribe`].
    pub fn changes(&self, start: Start) -> Result<Subscription<TableChange<K, V>>> {
        self.inner.changelog.subscribe(start)
    }
}

impl<T, C, K, V> Task for Driver<T, C, K, V>
where
    T: Send + 'static,
    C: Codec<T> + Send + Sync + 'static,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
    V: Default + Clone + Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn step(&mut self, waker: &Waker) -> Step {
        if self.shared.progress.stop_requested() {
            // What it committed, made durable for other processes.
            let synced = self.changelog.sync();
            self.ending.set(synced);
            return Step::Done;
        }
        match self.apply(waker) {
            Ok(true) => Step::Again,
            Ok(false) => Step::Wait,
            Err(e) => {
                self.ending.set(Err(e));
                Step::Done
            }
        }
    }

    fn abort(&mut self, reason: String) {
        self.ending.set(Err(Error::JobFailed {
            name: self.name.clone(),
            reason: format!("the table's driver: {reason}"),
        }));
    }
}

/// The driver: applies batches of source records and commits them, a
/// batch per step of its runtime.
struct Driver<T, C, K, V> {
    name: String,
    dir: PathBuf,
    storage: Storage,
    file_mode: u32,
    source: EventLog<T, C>,
    subscription: Subscription<T, C>,
    changelog: EventLog<TableChange<K, V>>,
    key: KeyFn<T, K>,
    fold: FoldFn<T, V>,
    shared: Arc<Shared<K, V>>,
    /// The changelog offset the snapshot on disk covers.
    covered: u64,
    max_keys: usize,
    batch: usize,
    records: Vec<Record<T>>,
    /// Last: says how it ended once the logs above are let go.
    ending: Ending,
}

impl<T, C, K, V> Driver<T, C, K, V>
where
    C: Codec<T>,
    K: Hash + Eq + Clone + Serialize + DeserializeOwned,
    V: Default + Clone + Serialize + DeserializeOwned,
{
    /// Opens the table's directory and loads what it committed: a driver
    /// that goes on from its checkpoint (on a first run, from the source's
    /// first record, committed at once).
    fn open(
        source: &EventLog<T, C>,
        name: &str,
        dir: PathBuf,
        key: KeyFn<T, K>,
        fold: FoldFn<T, V>,
        options: &TableOptions,
    ) -> Result<Driver<T, C, K, V>> {
        // The snapshot goes through the changelog's storage, so that a
        // table on the crash simulator is simulated whole.
        let storage = options.changelog.storage().clone();
        let file_mode = options.changelog.created_file_mode();
        create_dirs(&storage, &dir, file_mode)?;
        remove_if_exists(&storage, &dir.join(SNAPSHOT_TMP))?;
        let changelog: EventLog<TableChange<K, V>> =
            options.changelog.clone().open(dir.join(CHANGELOG))?;
        let Loaded { map, covered } = load(&storage, &dir, &changelog)?;
        if map.len() > options.max_keys {
            return Err(Error::TableTooLarge {
                name: name.to_owned(),
                keys: map.len(),
                max: options.max_keys,
            });
        }
        let next = match changelog.last_checkpoint(name)? {
            Some(checkpoint) => checkpoint.position_in(source)?,
            None => {
                // A first run: its start is committed at once, so that a
                // restart resumes there even if the source's first records
                // are removed meanwhile.
                let next = source.first_offset();
                let checkpoint = Checkpoint::new(name).source(source, next)?;
                changelog.append_committing(&[], &checkpoint)?;
                next
            }
        };
        if covered > changelog.first_offset() {
            // Compaction removes whole segments only, and a crash may have
            // cut the last one short: whatever it can remove now, it does.
            changelog.truncate_before(covered)?;
        }
        let subscription = source.subscribe_with(
            SubscribeOptions::new(Start::Offset(next)).capacity(options.batch.min(4096)),
        )?;
        let progress = Arc::new(Progress::new(name, &[next]));
        let shared = Arc::new(Shared {
            map: RwLock::new(map),
            progress: progress.clone(),
        });
        Ok(Driver {
            name: name.to_owned(),
            dir,
            storage,
            file_mode,
            source: source.clone(),
            subscription,
            changelog,
            key,
            fold,
            shared,
            covered,
            max_keys: options.max_keys,
            batch: options.batch,
            records: Vec::with_capacity(options.batch.min(4096)),
            ending: Ending::new(progress),
        })
    }

    /// Applies one batch of the source's records; whether there was one
    /// (if not, `waker` is woken when there may be).
    fn apply(&mut self, waker: &Waker) -> Result<bool> {
        if self
            .subscription
            .poll_batch(waker, &mut self.records, self.batch)?
            == 0
        {
            return Ok(false);
        }
        let end = self.records.last().map_or(0, |r| r.offset + 1);
        let changes = self.fold_batch()?;
        let checkpoint = Checkpoint::new(self.name.clone()).source(&self.source, end)?;
        self.changelog.append_committing(&changes, &checkpoint)?;
        {
            let mut map = self.shared.map.write();
            for change in changes {
                map.insert(change.key, change.value);
            }
        }
        self.shared.progress.advance(0, end);
        let due = self.changelog.next_offset() - self.covered;
        if due > MIN_SNAPSHOT_CHANGES.max(self.shared.map.read().len() as u64) {
            self.snapshot()?;
        }
        Ok(true)
    }

    /// Folds the batch into copies of the keys it touches, in the order
    /// first touched: the changes to commit. The published table is left
    /// as it is, so a panic here leaves nothing of the batch visible.
    fn fold_batch(&mut self) -> Result<Vec<TableChange<K, V>>> {
        let (key, fold, map) = (&mut self.key, &mut self.fold, &self.shared.map);
        let records = &mut self.records;
        let mut changes: Vec<TableChange<K, V>> = Vec::new();
        let mut new_keys = 0;
        let folded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut touched: HashMap<K, usize> = HashMap::new();
            for record in records.drain(..) {
                let key = key(&record.value);
                let at = match touched.get(&key) {
                    Some(&at) => at,
                    None => {
                        // The lock is held for the lookup only: never
                        // while user code runs.
                        let value = map.read().get(&key).cloned();
                        new_keys += usize::from(value.is_none());
                        touched.insert(key.clone(), changes.len());
                        changes.push(TableChange {
                            key,
                            value: value.unwrap_or_default(),
                        });
                        changes.len() - 1
                    }
                };
                fold(&mut changes[at].value, record.value);
            }
        }));
        if let Err(panic) = folded {
            self.records.clear();
            return Err(Error::JobFailed {
                name: self.name.clone(),
                reason: panic_message("a user function", panic.as_ref()),
            });
        }
        let keys = self.shared.map.read().len() + new_keys;
        if keys > self.max_keys {
            return Err(Error::TableTooLarge {
                name: self.name.clone(),
                keys,
                max: self.max_keys,
            });
        }
        Ok(changes)
    }

    /// Writes a snapshot of the table as it stands, then compacts the
    /// changelog below it.
    fn snapshot(&mut self) -> Result<()> {
        // A snapshot must never cover changes a power loss could take
        // back: the changelog would then continue from before it.
        self.changelog.sync()?;
        let covered = self.changelog.next_offset();
        let bytes = encode_snapshot(covered, &self.shared.map.read())?;
        write_atomically(
            &self.storage,
            &self.dir,
            &self.dir.join(SNAPSHOT),
            &self.dir.join(SNAPSHOT_TMP),
            &bytes,
            self.file_mode,
        )?;
        self.covered = covered;
        self.changelog.truncate_before(covered)?;
        Ok(())
    }
}

/// A table's state as committed: its entries, and the changelog offset its
/// snapshot covers.
struct Loaded<K, V> {
    map: HashMap<K, V>,
    covered: u64,
}

/// Rebuilds a table from its snapshot (if any) and its changelog from
/// there: the one way both a start and [`Table::load`] read it. A
/// changelog that no longer holds the records from `covered` on, or holds
/// fewer, is an error ([`Error::OffsetTruncated`],
/// [`Error::OffsetOutOfRange`]), never a table with entries missing.
fn load<K, V>(
    storage: &Storage,
    dir: &Path,
    changelog: &EventLog<TableChange<K, V>>,
) -> Result<Loaded<K, V>>
where
    K: Hash + Eq + Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    let (covered, mut map) = read_snapshot(storage, &dir.join(SNAPSHOT))?.unwrap_or_default();
    for record in changelog.read(Start::Offset(covered)) {
        let change = record?.value;
        map.insert(change.key, change.value);
    }
    Ok(Loaded { map, covered })
}

/// `<source>.tables/<name>`: beside the source log's directory, never in it
/// (a log refuses files it does not know) and never outside its parent
/// (the name is validated).
fn table_dir(source: &Path, name: &str) -> Result<PathBuf> {
    let named;
    let source = if source.file_name().is_some() {
        source
    } else {
        // `.` or `..`: the directory's own name is needed.
        named = std::fs::canonicalize(source)
            .map_err(|e| Error::io("resolve the path of", source, e))?;
        &named
    };
    let Some(log_name) = source.file_name() else {
        return Err(Error::InvalidOption {
            name: "table",
            reason: format!(
                "{} has no directory name to put tables beside",
                source.display()
            ),
        });
    };
    let mut tables = log_name.to_owned();
    tables.push(".tables");
    Ok(source.with_file_name(tables).join(name))
}

/// Creates the table's directory and makes its entry and its parent's
/// durable, so that a power loss cannot take back a table whose changelog
/// registered it as a reader of its source.
fn create_dirs(storage: &Storage, dir: &Path, file_mode: u32) -> Result<()> {
    storage
        .create_dir_all(dir, file_mode)
        .map_err(|e| Error::io("create directory", dir, e))?;
    let tables = parent(dir);
    for synced in [tables, parent(tables)] {
        storage
            .sync_dir(synced)
            .map_err(|e| Error::io("fsync directory", synced, e))?;
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// The snapshot at `path`, or `None` if there is none.
fn read_snapshot<K, V>(storage: &Storage, path: &Path) -> Result<Option<(u64, HashMap<K, V>)>>
where
    K: Hash + Eq + DeserializeOwned,
    V: DeserializeOwned,
{
    let file = match storage.open(path, OpenMode::ReadOnly, 0) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let len = file.len().map_err(|e| Error::io("stat", path, e))?;
    let len = usize::try_from(len).map_err(|_| Error::Corrupt {
        path: path.to_path_buf(),
        position: 0,
        offset: None,
        kind: CorruptionKind::BadHeader,
    })?;
    let mut bytes = vec![0; len];
    file.read_at(&mut bytes, 0)
        .map_err(|e| Error::io("read", path, e))?;
    decode_snapshot(&bytes, path).map(Some)
}

/// The bytes of a snapshot covering the changelog below `covered`.
fn encode_snapshot<K: Serialize, V: Serialize>(
    covered: u64,
    map: &HashMap<K, V>,
) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + 16 * map.len());
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // the checksum, once the rest is known
    out.extend_from_slice(&covered.to_le_bytes());
    out.extend_from_slice(&(map.len() as u64).to_le_bytes());
    out.extend_from_slice(&[0; 8]); // the body's length, likewise
    for entry in map {
        out = postcard::to_io(&entry, out).map_err(|e| Error::Codec {
            codec: "postcard",
            offset: None,
            event_type: None,
            source: Box::new(e),
        })?;
    }
    let body = (out.len() - SNAPSHOT_HEADER_LEN) as u64;
    out[32..40].copy_from_slice(&body.to_le_bytes());
    let crc = crc32fast::hash(&out[SNAPSHOT_CHECKED_FROM..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// The `covered` offset and the entries of a snapshot's bytes, read from
/// `path`; any damage is an error, and no input makes it panic.
fn decode_snapshot<K, V>(bytes: &[u8], path: &Path) -> Result<(u64, HashMap<K, V>)>
where
    K: Hash + Eq + DeserializeOwned,
    V: DeserializeOwned,
{
    let corrupt = |position: usize, kind| Error::Corrupt {
        path: path.to_path_buf(),
        position: position as u64,
        offset: None,
        kind,
    };
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if bytes.get(..8) != Some(&SNAPSHOT_MAGIC[..]) {
        return Err(corrupt(0, CorruptionKind::BadMagic));
    }
    if bytes.len() < 12 {
        return Err(corrupt(8, CorruptionKind::BadHeader));
    }
    match u32_at(8) {
        SNAPSHOT_VERSION => {}
        0 => return Err(corrupt(8, CorruptionKind::BadHeader)),
        found => {
            return Err(Error::UnsupportedVersion {
                path: path.to_path_buf(),
                found,
                supported: SNAPSHOT_VERSION,
            })
        }
    }
    if bytes.len() < SNAPSHOT_HEADER_LEN {
        return Err(corrupt(12, CorruptionKind::BadHeader));
    }
    let stored = u32_at(12);
    let computed = crc32fast::hash(&bytes[SNAPSHOT_CHECKED_FROM..]);
    if stored != computed {
        return Err(corrupt(
            SNAPSHOT_CHECKED_FROM,
            CorruptionKind::Checksum { stored, computed },
        ));
    }
    let (covered, count, body) = (u64_at(16), u64_at(24), u64_at(32));
    let mut rest = &bytes[SNAPSHOT_HEADER_LEN..];
    if body != rest.len() as u64 {
        return Err(corrupt(32, CorruptionKind::BadHeader));
    }
    // Entries take a byte or more each, unless both types take none; then
    // the second is a duplicate, which ends the loop below.
    let capacity = usize::try_from(count.min(body)).unwrap_or(0);
    let mut map = HashMap::with_capacity(capacity);
    for _ in 0..count {
        let at = bytes.len() - rest.len();
        let Ok(((key, value), tail)) = postcard::take_from_bytes::<(K, V)>(rest) else {
            return Err(corrupt(at, CorruptionKind::BadSnapshot));
        };
        if map.insert(key, value).is_some() {
            return Err(corrupt(at, CorruptionKind::BadSnapshot));
        }
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(corrupt(
            bytes.len() - rest.len(),
            CorruptionKind::BadSnapshot,
        ));
    }
    Ok((covered, map))
}

fn panic_message(who: &str, panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => format!("{who} panicked: {message}"),
        (_, Some(message)) => format!("{who} panicked: {message}"),
        _ => format!("{who} panicked"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HashMap<String, i64> {
        (0..100)
            .map(|i| (format!("sku-{i}"), i * 7 - 300))
            .collect()
    }

    /// The layout in the module docs.
    #[test]
    fn snapshot_layout_matches_the_docs() {
        let bytes = encode_snapshot(1234, &sample()).unwrap();
        assert_eq!(&bytes[0..8], b"BBONETBL");
        assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
        let crc = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        assert_eq!(crc, crc32fast::hash(&bytes[16..]));
        assert_eq!(u64::from_le_bytes(bytes[16..24].try_into().unwrap()), 1234);
        assert_eq!(u64::from_le_bytes(bytes[24..32].try_into().unwrap()), 100);
        let body = u64::from_le_bytes(bytes[32..40].try_into().unwrap());
        assert_eq!(body as usize, bytes.len() - SNAPSHOT_HEADER_LEN);
        let docs = include_str!("table.rs");
        for fact in [
            "| 0..8 | magic `BBONETBL` |",
            "| 8..12 | version (`u32`), 1 |",
            "| 12..16 | CRC-32 of every byte from 16 to the end |",
            "| 16..24 | `covered` (`u64`)",
            "| 24..32 | entry count (`u64`) |",
            "| 32..40 | body length (`u64`) |",
        ] {
            assert!(docs.contains(fact), "the module docs lack {fact:?}");
        }
    }

    #[test]
    fn a_snapshot_decodes_to_what_was_encoded() {
        let map = sample();
        let bytes = encode_snapshot(99, &map).unwrap();
        let (covered, decoded) = decode_snapshot::<String, i64>(&bytes, Path::new("s")).unwrap();
        assert_eq!((covered, decoded), (99, map));
        let empty = encode_snapshot::<u8, u8>(0, &HashMap::new()).unwrap();
        assert_eq!(empty.len(), SNAPSHOT_HEADER_LEN);
        let (covered, decoded) = decode_snapshot::<u8, u8>(&empty, Path::new("s")).unwrap();
        assert_eq!((covered, decoded.len()), (0, 0));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_an_error() {
        let bytes = encode_snapshot(7, &sample()).unwrap();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[at] ^= 1 << bit;
                let decoded = decode_snapshot::<String, i64>(&damaged, Path::new("s"));
                assert!(
                    matches!(
                        decoded,
                        Err(Error::Corrupt { .. } | Error::UnsupportedVersion { .. })
                    ),
                    "byte {at} bit {bit}: {:?}",
                    decoded.map(|(c, m)| (c, m.len()))
                );
            }
        }
        for len in 0..bytes.len() {
            let decoded = decode_snapshot::<String, i64>(&bytes[..len], Path::new("s"));
            assert!(decoded.is_err(), "cut at {len}");
        }
    }

    #[test]
    fn a_valid_checksum_over_bad_entries_is_still_an_error() {
        // Bytes a crafted or foreign file could hold: the checksum holds,
        // the body does not decode as the table's types.
        let mut bytes = encode_snapshot(0, &sample()).unwrap();
        bytes[24..32].copy_from_slice(&101u64.to_le_bytes()); // one entry too many
        let crc = crc32fast::hash(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
        let decoded = decode_snapshot::<String, i64>(&bytes, Path::new("s"));
        assert!(
            matches!(
                decoded,
                Err(Error::Corrupt {
                    kind: CorruptionKind::BadSnapshot,
                    ..
                })
            ),
            "{:?}",
            decoded.map(|(c, m)| (c, m.len()))
        );
        // Zero-sized entries counted in the billions end at the first
        // duplicate, not after the count.
        let mut units = encode_snapshot::<(), ()>(0, &HashMap::from([((), ())])).unwrap();
        units[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&units[16..]);
        units[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(decode_snapshot::<(), ()>(&units, Path::new("s")).is_err());
    }

    #[test]
    fn a_newer_version_is_refused_by_name() {
        let mut bytes = encode_snapshot(0, &sample()).unwrap();
        bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            decode_snapshot::<String, i64>(&bytes, Path::new("s")),
            Err(Error::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            })
        ));
    }

    #[test]
    fn tables_live_beside_their_source() {
        let dir = |source: &str| table_dir(Path::new(source), "stock").unwrap();
        assert_eq!(dir("data/orders"), Path::new("data/orders.tables/stock"));
        assert_eq!(dir("data/orders/"), Path::new("data/orders.tables/stock"));
        assert_eq!(dir("orders"), Path::new("orders.tables/stock"));
    }
}
