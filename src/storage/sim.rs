//! The fault-injecting, crash-simulating storage backend, [`SimStorage`], and
//! the fault model it implements, written down below. Test-only: it serves
//! this crate's own test build and its fuzz targets (see `tests/sim/mod.rs`;
//! never a dependent's build), is modelled on
//! SQLite's test VFS, LazyFS and TigerBeetle's storage simulator, and never
//! touches a real disk.
//!
//! # Fault model
//!
//! - A file (inode) has `durable` bytes (on the platter), `live` bytes (what
//!   reads and maps see) and the ops `pending` since its last sync: `Write`
//!   (zero-filling any hole) or `SetLen`. A successful `sync_data` or
//!   `sync_all` applies them to `durable`.
//! - A directory, `path.parent()` of its files, has `durable` and `live`
//!   entries and the `Create`, `Rename` and `Unlink` ops pending since its
//!   last `sync_dir`. Syncing a file does not make its entry durable; creating
//!   a directory is always durable. Unlink is POSIX: open handles and maps
//!   keep the inode, and a new file of the same name is a new inode.
//! - [`SimStorage::crash`] returns a new storage holding what survives, per
//!   [`CrashMode`]: the live state (process crash); the durable state; a
//!   random prefix of each file's and each directory's pending ops, the last
//!   write of which may be torn (cut at a 512-byte sector or any byte) or
//!   garbage-extended (the size grows, the data is zeros or noise); or any
//!   subset of them in their original order, each write dropped, kept, torn
//!   or garbage-extended. So unsynced creates may vanish and unsynced renames
//!   and unlinks revert, whatever the files' own syncs.
//! - Each operation counts towards [`SimStorage::op_count`]; an injected
//!   [`Fault`] fails the n-th matching one, once or from then on, with a Linux
//!   errno. `write_at` absorbs `EINTR` and short writes like `write_all_at`.
//!   A failed file sync is Linux's "fsyncgate": its pending ops stay readable
//!   but never become durable, and a retried sync succeeds; a failed
//!   `sync_dir` leaves the directory's ops pending.
//! - A writeback hint (`sync_file_range` without waiting) changes nothing,
//!   live or durable, and is no operation: [`SimStorage::writebacks`] lists
//!   the hints each file received, for tests of who sends them.
//! - With [`SimStorage::set_capacity`], growing the linked files past the
//!   capacity fails with `ENOSPC`, after a write stored the prefix that fits
//!   (removed files that are still open do not count).
//!
//! The one simulator assertion: shrinking a file below a live [`SimMap`]
//! panics, as real storage would fault (`SIGBUS`) on reads of the map.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::{fmt, mem};

use parking_lot::{MappedRwLockReadGuard, Mutex, MutexGuard, RwLock, RwLockReadGuard};

use super::OpenMode;

const SECTOR: u64 = 512;
// Holes are stored, not sparse, so a wild offset must not allocate for real.
const MAX_FILE_LEN: u64 = 1 << 31;

/// What a simulated crash leaves of the state that was not yet durable.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CrashMode {
    /// The process dies (`SIGKILL`): everything that reached the OS survives.
    ProcessCrash,
    /// Power loss that keeps only durable state.
    PowerLossNothing,
    /// Power loss that keeps a random prefix of each file's and directory's
    /// pending ops; the last write kept may be torn or garbage-extended.
    PowerLossOrdered,
    /// Power loss that keeps any subset of the pending ops, each write
    /// dropped, kept, torn or garbage-extended (ext4 `data=writeback`).
    PowerLossReorder,
}

impl CrashMode {
    /// Every crash mode, for tests that try them all.
    pub const ALL: [CrashMode; 4] = [
        CrashMode::ProcessCrash,
        CrashMode::PowerLossNothing,
        CrashMode::PowerLossOrdered,
        CrashMode::PowerLossReorder,
    ];
}

/// The error an injected [`Fault`] produces.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// `EIO`: the device failed.
    Eio,
    /// `ENOSPC`: no space left.
    Enospc,
    /// `EROFS`: the filesystem went read-only.
    Erofs,
    /// `EACCES`: permission denied.
    Eacces,
    /// `EINTR`: `write_at` retries it; other operations fail with it.
    Eintr,
    /// `write_at` stores a prefix, then the rest; other operations ignore it.
    ShortWrite,
}

impl FaultKind {
    fn error(self) -> io::Error {
        io::Error::from_raw_os_error(match self {
            FaultKind::Eintr => 4,
            // ShortWrite never surfaces; EIO keeps the match total.
            FaultKind::Eio | FaultKind::ShortWrite => 5,
            FaultKind::Eacces => 13,
            FaultKind::Enospc => 28,
            FaultKind::Erofs => 30,
        })
    }
}

/// A kind of storage operation, to count and target faults by.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// `SimStorage::open`.
    Open,
    /// `SimStorage::remove`.
    Remove,
    /// `SimStorage::rename`.
    Rename,
    /// `SimStorage::list`.
    List,
    /// `SimStorage::create_dir_all`.
    CreateDir,
    /// `SimStorage::sync_dir`.
    SyncDir,
    /// `SimStorage::try_lock`.
    Lock,
    /// `SimFile::len`.
    Len,
    /// `SimFile::read_at`.
    Read,
    /// `SimFile::write_at`.
    Write,
    /// `SimFile::set_len`.
    SetLen,
    /// `SimFile::sync_data`.
    SyncData,
    /// `SimFile::sync_all`.
    SyncAll,
    /// `SimFile::map`.
    Map,
}

/// An injected failure of the `after`-th matching operation counted from
/// [`SimStorage::inject`] (0 counts as 1).
#[derive(Clone, Debug)]
pub struct Fault {
    /// The 1-based number of the matching operation that fails.
    pub after: u64,
    /// The error it fails with.
    pub kind: FaultKind,
    /// Whether every later matching operation fails too.
    pub persistent: bool,
    /// Count and fail only operations of this kind.
    pub only: Option<OpKind>,
}

impl Fault {
    /// A one-shot fault on the `after`-th operation of any kind.
    pub fn new(after: u64, kind: FaultKind) -> Fault {
        let (persistent, only) = (false, None);
        Fault {
            after,
            kind,
            persistent,
            only,
        }
    }
}

fn err(kind: ErrorKind, what: impl fmt::Debug) -> io::Error {
    io::Error::new(kind, format!("simulator: {what:?}: {kind}"))
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, bytes: Vec<u8> },
    SetLen(u64),
}

impl Op {
    fn apply(&self, data: &mut Vec<u8>) {
        match self {
            Op::Write { offset, bytes } => write_into(data, *offset, bytes),
            Op::SetLen(len) => data.resize(*len as usize, 0),
        }
    }
}

fn push(meta: &mut Meta, live: &mut Vec<u8>, op: Op) {
    op.apply(live);
    meta.pending.push(op);
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let (start, end) = (offset as usize, offset as usize + bytes.len());
    if !bytes.is_empty() {
        data.resize(data.len().max(end), 0);
        data[start..end].copy_from_slice(bytes);
    }
}

#[derive(Default)]
struct Meta {
    durable: Vec<u8>,
    pending: Vec<Op>,
    // Live map length -> how many maps of that length are alive.
    maps: BTreeMap<u64, usize>,
}

struct Inode {
    id: u64,
    // Apart from `meta` so a map reads it without any other lock.
    live: RwLock<Vec<u8>>,
    meta: Mutex<Meta>,
}

impl Inode {
    fn new(id: u64, data: Vec<u8>) -> Arc<Inode> {
        let meta = Mutex::new(Meta {
            durable: data.clone(),
            ..Meta::default()
        });
        Arc::new(Inode {
            id,
            live: RwLock::new(data),
            meta,
        })
    }

    fn len(&self) -> u64 {
        self.live.read_recursive().len() as u64
    }
}

impl fmt::Debug for Inode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Inode {{ id: {}, len: {} }}", self.id, self.len())
    }
}

type Entries = BTreeMap<OsString, Arc<Inode>>;

#[derive(Debug)]
enum DirOp {
    Create(OsString, Arc<Inode>),
    Rename(OsString, OsString, Arc<Inode>),
    Unlink(OsString),
}

impl DirOp {
    fn apply(&self, entries: &mut Entries) {
        match self {
            DirOp::Create(name, inode) => drop(entries.insert(name.clone(), inode.clone())),
            DirOp::Rename(from, to, inode) => {
                // A reordered image may lack the source's create; another
                // inode holding the name then stays.
                if entries.get(from).is_some_and(|i| i.id == inode.id) {
                    entries.remove(from);
                }
                entries.insert(to.clone(), inode.clone());
            }
            DirOp::Unlink(name) => drop(entries.remove(name)),
        }
    }

    fn names(&self) -> [&OsStr; 2] {
        match self {
            DirOp::Create(name, _) | DirOp::Unlink(name) => [name, name],
            DirOp::Rename(from, to, _) => [from, to],
        }
    }
}

#[derive(Debug, Default)]
struct Dir {
    live: Entries,
    durable: Entries,
    pending: Vec<DirOp>,
}

impl Dir {
    fn push(&mut self, op: DirOp) {
        op.apply(&mut self.live);
        self.pending.push(op);
    }
}

#[derive(Debug)]
struct Armed {
    fault: Fault,
    seen: u64,
}

#[derive(Debug, Default)]
struct State {
    dirs: BTreeMap<PathBuf, Dir>,
    next_inode: u64,
    ops: u64,
    writebacks: Vec<Writeback>,
    faults: Vec<Armed>,
    capacity: Option<u64>,
    locked: HashSet<u64>,
}

impl State {
    /// Counts one operation and returns the fault it suffers, if any.
    fn begin(&mut self, kind: OpKind) -> Option<FaultKind> {
        self.ops += 1;
        let mut hit = None;
        self.faults.retain_mut(|armed| {
            if armed.fault.only.is_some_and(|only| only != kind) {
                return true;
            }
            armed.seen += 1;
            let first = armed.fault.after.max(1);
            let fires = armed.seen == first || (armed.fault.persistent && armed.seen > first);
            hit = hit.or(fires.then_some(armed.fault.kind));
            armed.fault.persistent || !fires
        });
        hit
    }

    fn check(&mut self, kind: OpKind) -> io::Result<()> {
        match self.begin(kind) {
            None | Some(FaultKind::ShortWrite) => Ok(()),
            Some(fault) => Err(fault.error()),
        }
    }

    fn dir(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs
            .get_mut(dir)
            .ok_or_else(|| err(ErrorKind::NotFound, dir))
    }

    fn mkdirs(&mut self, dir: &Path) {
        for ancestor in dir.ancestors() {
            self.dirs.entry(ancestor.to_path_buf()).or_default();
        }
    }

    fn new_inode(&mut self) -> Arc<Inode> {
        self.next_inode += 1;
        Inode::new(self.next_inode, Vec::new())
    }

    fn lookup(&mut self, path: &Path) -> io::Result<Option<Arc<Inode>>> {
        let (dir, name) = split(path)?;
        Ok(self.dir(dir)?.live.get(name).cloned())
    }

    fn create(&mut self, path: &Path) -> io::Result<Arc<Inode>> {
        let (dir, name) = split(path)?;
        let inode = self.new_inode();
        self.dir(dir)?
            .push(DirOp::Create(name.to_owned(), inode.clone()));
        Ok(inode)
    }

    /// The length `inode` may grow to before the disk is full.
    fn room_for(&self, inode: &Inode) -> u64 {
        let Some(capacity) = self.capacity else {
            return MAX_FILE_LEN;
        };
        let mut seen = HashSet::from([inode.id]);
        let others = self.dirs.values().flat_map(|dir| dir.live.values());
        let used: u64 = others.filter(|i| seen.insert(i.id)).map(|i| i.len()).sum();
        capacity.saturating_sub(used).min(MAX_FILE_LEN)
    }
}

fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    let parts = path.parent().zip(path.file_name());
    parts.ok_or_else(|| err(ErrorKind::InvalidInput, path))
}

/// splitmix64: tiny, seedable and plenty to pick crash outcomes with.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n.max(1)
    }

    /// How many of `count` pending ops a crash in `mode` considers.
    fn prefix(&mut self, mode: CrashMode, count: usize) -> usize {
        match mode {
            CrashMode::ProcessCrash | CrashMode::PowerLossReorder => count,
            CrashMode::PowerLossOrdered => self.below(count as u64 + 1) as usize,
            CrashMode::PowerLossNothing => 0,
        }
    }
}

/// Applies `op` to a crash image whole (`fate` 1), torn (2) or
/// garbage-extended (3); only writes tear or extend.
fn apply_fate(op: &Op, fate: u64, image: &mut Vec<u8>, rng: &mut Rng) {
    let (Op::Write { offset, bytes }, 2 | 3) = (op, fate) else {
        return op.apply(image);
    };
    let (offset, end) = (*offset, offset + bytes.len() as u64);
    match fate {
        2 => {
            let sector = (offset / SECTOR + 1) * SECTOR;
            let cut = if sector < end && rng.below(2) == 0 {
                sector + rng.below((end - 1 - sector) / SECTOR + 1) * SECTOR - offset
            } else {
                rng.below(bytes.len() as u64)
            };
            write_into(image, offset, &bytes[..cut as usize]);
        }
        // The new size reached the disk, the data did not.
        3 if (image.len() as u64) < end => {
            let start = image.len().max(offset as usize);
            image.resize(end as usize, 0);
            if rng.below(2) == 0 {
                image[start..].fill_with(|| rng.below(256) as u8);
            }
        }
        _ => {}
    }
}

fn file_image(inode: &Inode, mode: CrashMode, rng: &mut Rng) -> Vec<u8> {
    if mode == CrashMode::ProcessCrash {
        return inode.live.read_recursive().clone();
    }
    let meta = inode.meta.lock();
    let mut image = meta.durable.clone();
    let applied = rng.prefix(mode, meta.pending.len());
    for (i, op) in meta.pending[..applied].iter().enumerate() {
        let fate = match (mode, rng.below(4)) {
            (CrashMode::PowerLossOrdered, fate) if i + 1 == applied => fate.max(1),
            (CrashMode::PowerLossOrdered, _) => 1,
            (_, fate) => fate,
        };
        if fate != 0 {
            apply_fate(op, fate, &mut image, rng);
        }
    }
    image
}

fn dir_image(dir: &Dir, mode: CrashMode, rng: &mut Rng) -> Entries {
    if mode == CrashMode::ProcessCrash {
        return dir.live.clone();
    }
    let mut entries = dir.durable.clone();
    for op in &dir.pending[..rng.prefix(mode, dir.pending.len())] {
        if mode != CrashMode::PowerLossReorder || rng.below(2) == 0 {
            op.apply(&mut entries);
        }
    }
    entries
}

fn assert_map_fits(meta: &Meta, len: u64) {
    if let Some((&mapped, _)) = meta.maps.last_key_value() {
        assert!(
            len >= mapped,
            "simulator assertion: shrinking a file to {len} bytes, below a live map \
             of {mapped} bytes (a real map would SIGBUS)"
        );
    }
}

/// A writeback hint one file received: bytes `from..to` of the file
/// `file` (an inode number, the same for every handle to the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Writeback {
    /// The file's inode number.
    pub file: u64,
    /// The first byte of the stretch.
    pub from: u64,
    /// The byte after it.
    pub to: u64,
}

/// The simulated disk. Clones share it, like handles to one filesystem.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
}

/// An open file of a [`SimStorage`].
#[derive(Debug)]
pub struct SimFile {
    state: Arc<Mutex<State>>,
    inode: Arc<Inode>,
    writable: bool,
}

/// A read-only view of a file's first bytes that sees later writes, like a
/// shared `mmap` over Linux's unified page cache.
#[derive(Debug)]
pub struct SimMap {
    inode: Arc<Inode>,
    len: u64,
}

/// A held lock file; dropping it releases the lock.
#[derive(Debug)]
pub struct SimLock {
    state: Arc<Mutex<State>>,
    inode: u64,
}

impl SimStorage {
    /// An empty disk with no directories.
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    fn op(&self, kind: OpKind) -> io::Result<MutexGuard<'_, State>> {
        let mut st = self.state.lock();
        st.check(kind)?;
        Ok(st)
    }

    /// Opens the file `path`.
    pub(crate) fn open(&self, path: &Path, mode: OpenMode) -> io::Result<SimFile> {
        let mut st = self.op(OpKind::Open)?;
        let inode = match (mode, st.lookup(path)?) {
            (OpenMode::CreateNew, Some(_)) => return Err(err(ErrorKind::AlreadyExists, path)),
            (OpenMode::CreateNew, None) => st.create(path)?,
            (_, Some(inode)) => inode,
            (_, None) => return Err(err(ErrorKind::NotFound, path)),
        };
        let (state, writable) = (self.state.clone(), mode != OpenMode::ReadOnly);
        Ok(SimFile {
            state,
            inode,
            writable,
        })
    }

    /// Unlinks `path`; its open handles and maps keep working.
    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.op(OpKind::Remove)?;
        if st.lookup(path)?.is_none() {
            return Err(err(ErrorKind::NotFound, path));
        }
        let (dir, name) = split(path)?;
        st.dir(dir)?.push(DirOp::Unlink(name.to_owned()));
        Ok(())
    }

    /// Renames `from` to `to` within one directory, atomically replacing an
    /// existing `to`.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.op(OpKind::Rename)?;
        let ((dir, from_name), (to_dir, to_name)) = (split(from)?, split(to)?);
        if dir != to_dir {
            return Err(err(ErrorKind::Unsupported, (from, to)));
        }
        let Some(inode) = st.lookup(from)? else {
            return Err(err(ErrorKind::NotFound, from));
        };
        if from_name != to_name {
            let (from, to) = (from_name.to_owned(), to_name.to_owned());
            st.dir(dir)?.push(DirOp::Rename(from, to, inode));
        }
        Ok(())
    }

    /// The files in `dir` with their live lengths.
    pub(crate) fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, u64)>> {
        let mut st = self.op(OpKind::List)?;
        let entries = st.dir(dir)?.live.iter();
        Ok(entries
            .map(|(name, inode)| (name.clone(), inode.len()))
            .collect())
    }

    /// Registers `dir` and its ancestors, durably.
    pub(crate) fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.op(OpKind::CreateDir)?.mkdirs(dir);
        Ok(())
    }

    /// Makes the entries of `dir` durable; a failure leaves them pending.
    pub(crate) fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.op(OpKind::SyncDir)?;
        let dir = st.dir(dir)?;
        dir.durable = dir.live.clone();
        dir.pending.clear();
        Ok(())
    }

    /// Takes the exclusive lock file `path`, creating it if missing;
    /// `Ok(None)` when this storage (or a clone) already holds it.
    pub(crate) fn try_lock(&self, path: &Path) -> io::Result<Option<SimLock>> {
        let mut st = self.op(OpKind::Lock)?;
        let inode = match st.lookup(path)? {
            Some(inode) => inode.id,
            None => st.create(path)?.id,
        };
        // Lazily: a SimLock built and dropped here would release the lock.
        let state = self.state.clone();
        Ok(st.locked.insert(inode).then(|| SimLock { state, inode }))
    }

    /// The number of storage operations so far.
    pub fn op_count(&self) -> u64 {
        self.state.lock().ops
    }

    /// Arms `fault`, counting matching operations from now on.
    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push(Armed { fault, seen: 0 });
    }

    /// Disarms every injected fault.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// Caps the sum of the linked files' lengths (`None`: unlimited).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity = bytes;
    }

    /// The number of pending (not yet durable) ops of the linked files and of
    /// the directories: what a crash may keep or lose.
    pub fn pending_op_count(&self) -> usize {
        let st = self.state.lock();
        let mut seen = HashSet::new();
        let dirs = st.dirs.values();
        let inodes = dirs
            .clone()
            .flat_map(|d| d.live.values().chain(d.durable.values()));
        let files = inodes.filter(|inode| seen.insert(inode.id));
        let file_ops: usize = files.map(|inode| inode.meta.lock().pending.len()).sum();
        file_ops + dirs.map(|dir| dir.pending.len()).sum::<usize>()
    }

    /// The disk after a crash of kind `mode`, its unknowns decided by `seed`:
    /// a new, independent storage with nothing pending and no locks held. The
    /// capacity carries over, faults do not; `self` is left unchanged.
    pub fn crash(&self, seed: u64, mode: CrashMode) -> SimStorage {
        let st = self.state.lock();
        let mut rng = Rng(seed);
        let mut images: HashMap<u64, Arc<Inode>> = HashMap::new();
        let mut dirs = BTreeMap::new();
        for (path, dir) in &st.dirs {
            let mut live = Entries::new();
            for (name, inode) in dir_image(dir, mode, &mut rng) {
                let image = images
                    .entry(inode.id)
                    .or_insert_with(|| Inode::new(inode.id, file_image(&inode, mode, &mut rng)));
                live.insert(name, image.clone());
            }
            let mut dir = Dir::default();
            (dir.live, dir.durable) = (live.clone(), live);
            dirs.insert(path.clone(), dir);
        }
        let (next_inode, capacity) = (st.next_inode, st.capacity);
        let state = State {
            dirs,
            next_inode,
            capacity,
            ..State::default()
        };
        SimStorage {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// The live bytes of `path`, if it exists (not counted as an operation).
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let inode = self.state.lock().lookup(path).ok()??;
        let bytes = inode.live.read_recursive().clone();
        Some(bytes)
    }

    /// Replaces the content of `path` durably and live, creating it, its
    /// directory and its durable entry if needed; open handles see the new
    /// bytes. For damage tests; not counted as an operation.
    ///
    /// # Panics
    ///
    /// If `path` names no file, or (simulator assertion) if the file would
    /// shrink below a live [`SimMap`].
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut st = self.state.lock();
        let (dir, name) = split(path).expect("simulator: write_file needs a file path");
        st.mkdirs(dir);
        let inode = match st.lookup(path) {
            Ok(Some(inode)) => inode,
            _ => st.new_inode(),
        };
        let mut meta = inode.meta.lock();
        assert_map_fits(&meta, bytes.len() as u64);
        *inode.live.write() = bytes.to_vec();
        meta.durable = bytes.to_vec();
        meta.pending.clear();
        drop(meta);
        let dir = st.dirs.entry(dir.to_path_buf()).or_default();
        dir.live.insert(name.to_owned(), inode.clone());
        dir.durable.insert(name.to_owned(), inode);
    }

    /// Removes `path` live and durably, with the pending directory ops that
    /// name it (not counted as an operation).
    pub fn remove_file_durably(&self, path: &Path) {
        let mut st = self.state.lock();
        let Ok((dir, name)) = split(path) else { return };
        if let Ok(dir) = st.dir(dir) {
            dir.live.remove(name);
            dir.durable.remove(name);
            dir.pending.retain(|op| !op.names().contains(&name));
        }
    }

    /// The writeback hints files received, in the order they came.
    pub fn writebacks(&self) -> Vec<Writeback> {
        self.state.lock().writebacks.clone()
    }

    /// Every live file with its length, sorted by path.
    pub fn files(&self) -> Vec<(PathBuf, u64)> {
        let st = self.state.lock();
        let mut files: Vec<_> = (st.dirs.iter())
            .flat_map(|(dir, d)| d.live.iter().map(|(n, i)| (dir.join(n), i.len())))
            .collect();
        files.sort();
        files
    }
}

impl SimFile {
    fn op(&self, kind: OpKind) -> io::Result<MutexGuard<'_, State>> {
        let mut st = self.state.lock();
        st.check(kind)?;
        Ok(st)
    }

    fn writable(&self) -> io::Result<()> {
        let read_only = || err(ErrorKind::PermissionDenied, "read-only file (EBADF)");
        self.writable.then_some(()).ok_or_else(read_only)
    }

    /// The live length.
    #[allow(clippy::len_without_is_empty)] // the backend interface has none
    pub(crate) fn len(&self) -> io::Result<u64> {
        self.op(OpKind::Len).map(|_| self.inode.len())
    }

    /// Reads exactly `buf.len()` bytes at `offset`; `UnexpectedEof` if the
    /// file is shorter.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let _st = self.op(OpKind::Read)?;
        let live = self.inode.live.read_recursive();
        let end = offset.checked_add(buf.len() as u64);
        let Some(end) = end.filter(|&end| end <= live.len() as u64) else {
            return Err(err(ErrorKind::UnexpectedEof, "read past the end"));
        };
        buf.copy_from_slice(&live[offset as usize..end as usize]);
        Ok(())
    }

    /// Writes all of `buf` at `offset`, zero-filling any hole; absorbs
    /// injected `EINTR` and short writes like `write_all_at`. A thread must
    /// not hold [`SimMap::bytes`] of the file across it (it would wait).
    pub(crate) fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let cut = match st.begin(OpKind::Write) {
            None | Some(FaultKind::Eintr) => buf.len(),
            Some(FaultKind::ShortWrite) => buf.len() / 2,
            Some(fault) => return Err(fault.error()),
        };
        self.writable()?;
        if offset.saturating_add(buf.len() as u64) > MAX_FILE_LEN {
            return Err(err(ErrorKind::InvalidInput, "file too large"));
        }
        let room = st.room_for(&self.inode);
        let mut meta = self.inode.meta.lock();
        let mut live = self.inode.live.write();
        let (first, rest) = buf.split_at(cut);
        let mut at = offset;
        for part in [first, rest].into_iter().filter(|part| !part.is_empty()) {
            // Overwrites never need space; growth stops where the disk is full.
            let fits = room.max(live.len() as u64).saturating_sub(at);
            let fits = fits.min(part.len() as u64) as usize;
            if fits > 0 {
                let bytes = part[..fits].to_vec();
                push(&mut meta, &mut live, Op::Write { offset: at, bytes });
            }
            if fits < part.len() {
                return Err(FaultKind::Enospc.error());
            }
            at += part.len() as u64;
        }
        Ok(())
    }

    /// Shrinks or zero-extends the file to `len`.
    ///
    /// # Panics
    ///
    /// Simulator assertion: if that shrinks the file below a live [`SimMap`].
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        let st = self.op(OpKind::SetLen)?;
        self.writable()?;
        if len > MAX_FILE_LEN {
            return Err(err(ErrorKind::InvalidInput, "file too large"));
        }
        let room = st.room_for(&self.inode);
        let mut meta = self.inode.meta.lock();
        let mut live = self.inode.live.write();
        if len > live.len() as u64 && len > room {
            return Err(FaultKind::Enospc.error());
        }
        assert_map_fits(&meta, len);
        push(&mut meta, &mut live, Op::SetLen(len));
        Ok(())
    }

    fn sync(&self, kind: OpKind) -> io::Result<()> {
        let fault = self.state.lock().begin(kind);
        let mut meta = self.inode.meta.lock();
        match fault {
            None | Some(FaultKind::ShortWrite) => {
                let pending = mem::take(&mut meta.pending);
                pending.iter().for_each(|op| op.apply(&mut meta.durable));
                Ok(())
            }
            // Interrupted before writeback began: nothing is lost yet.
            Some(FaultKind::Eintr) => Err(FaultKind::Eintr.error()),
            Some(fault) => {
                // Linux marks the failed pages clean: readable until a crash,
                // never written back.
                meta.pending.clear();
                Err(fault.error())
            }
        }
    }

    /// A writeback hint: recorded, not counted as an operation, and without
    /// effect on what a crash keeps.
    pub(crate) fn start_writeback(&self, offset: u64, len: u64) {
        self.state.lock().writebacks.push(Writeback {
            file: self.inode.id,
            from: offset,
            to: offset + len,
        });
    }

    /// `fdatasync`: makes the pending ops durable.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        self.sync(OpKind::SyncData)
    }

    /// `fsync`: the same as [`SimFile::sync_data`], as metadata is not
    /// modelled apart from data. (The log itself only uses `fdatasync`.)
    #[cfg(test)]
    pub(crate) fn sync_all(&self) -> io::Result<()> {
        self.sync(OpKind::SyncAll)
    }

    /// Maps the first `len` bytes; `InvalidInput` if the file is shorter.
    pub(crate) fn map(&self, len: u64) -> io::Result<SimMap> {
        let _st = self.op(OpKind::Map)?;
        let mut meta = self.inode.meta.lock();
        if len > self.inode.len() {
            return Err(err(ErrorKind::InvalidInput, "map past the end"));
        }
        *meta.maps.entry(len).or_default() += 1;
        let inode = self.inode.clone();
        Ok(SimMap { inode, len })
    }
}

impl SimMap {
    /// The live bytes `[0, len)`, including writes made after mapping.
    pub(crate) fn bytes(&self) -> MappedRwLockReadGuard<'_, [u8]> {
        let len = self.len as usize;
        // Recursive so one thread may hold two views while a writer waits.
        RwLockReadGuard::map(self.inode.live.read_recursive(), |data| &data[..len])
    }

    /// The mapped length.
    #[allow(clippy::len_without_is_empty)] // the backend interface has none
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

impl Drop for SimMap {
    fn drop(&mut self) {
        let mut meta = self.inode.meta.lock();
        if let Some(count) = meta.maps.get_mut(&self.len) {
            *count -= 1;
            if *count == 0 {
                meta.maps.remove(&self.len);
            }
        }
    }
}

impl Drop for SimLock {
    fn drop(&mut self) {
        self.state.lock().locked.remove(&self.inode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CrashMode::*;
    use ErrorKind as K;

    const A: &str = "/db/a";

    fn p(path: &str) -> &Path {
        Path::new(path)
    }

    /// A storage with directory `/db` and an open, empty, unsynced file `A`.
    fn setup() -> (SimStorage, SimFile) {
        let s = SimStorage::new();
        s.create_dir_all(p("/db")).unwrap();
        let f = s.open(p(A), OpenMode::CreateNew).unwrap();
        (s, f)
    }

    fn durable_file(data: &[u8]) -> (SimStorage, SimFile) {
        let (s, f) = setup();
        f.write_at(data, 0).unwrap();
        f.sync_data().unwrap();
        s.sync_dir(p("/db")).unwrap();
        (s, f)
    }

    fn after(s: &SimStorage, seed: u64, mode: CrashMode, path: &str) -> Option<Vec<u8>> {
        s.crash(seed, mode).read_file(p(path))
    }

    fn persistent(after: u64, kind: FaultKind, only: OpKind) -> Fault {
        let only = Some(only);
        Fault {
            persistent: true,
            only,
            ..Fault::new(after, kind)
        }
    }

    fn snapshot(s: &SimStorage) -> Vec<(Option<Vec<u8>>, PathBuf)> {
        let read = |(path, _): (PathBuf, u64)| (s.read_file(&path), path);
        s.files().into_iter().map(read).collect()
    }

    #[test]
    fn synced_write_survives_every_crash_mode() {
        let (s, _f) = durable_file(b"hello");
        for mode in CrashMode::ALL {
            for seed in 0..50 {
                assert_eq!(after(&s, seed, mode, A).unwrap(), b"hello");
            }
        }
    }

    #[test]
    fn unsynced_write_is_lost_on_power_loss_but_not_on_process_crash() {
        let (s, f) = durable_file(b"");
        f.write_at(b"x", 0).unwrap();
        assert_eq!(after(&s, 0, PowerLossNothing, A), Some(vec![]));
        assert_eq!(after(&s, 0, ProcessCrash, A), Some(b"x".to_vec()));
        // The crash image is independent and the old storage keeps working.
        let image = s.crash(0, ProcessCrash);
        f.write_at(b"y", 0).unwrap();
        assert_eq!(image.read_file(p(A)), Some(b"x".to_vec()));
        assert_eq!(image.pending_op_count(), 0);
    }

    #[test]
    fn unsynced_create_vanishes_even_after_the_file_sync() {
        let (s, f) = setup();
        f.write_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        assert_eq!(after(&s, 0, PowerLossNothing, A), None);
        assert_eq!(after(&s, 0, ProcessCrash, A), Some(b"x".to_vec()));
        s.sync_dir(p("/db")).unwrap();
        assert_eq!(after(&s, 0, PowerLossNothing, A), Some(b"x".to_vec()));
    }

    #[test]
    fn unsynced_unlink_reverts_and_open_handles_keep_the_inode() {
        let (s, f) = durable_file(b"x");
        s.remove(p(A)).unwrap();
        assert_eq!(s.read_file(p(A)), None);
        assert_eq!(after(&s, 0, PowerLossNothing, A), Some(b"x".to_vec()));
        assert_eq!(after(&s, 0, ProcessCrash, A), None);
        // POSIX: the handle still works, and the name now means a new inode.
        f.write_at(b"yz", 0).unwrap();
        let g = s.open(p(A), OpenMode::CreateNew).unwrap();
        assert_eq!((f.len().unwrap(), g.len().unwrap()), (2, 0));
        s.sync_dir(p("/db")).unwrap();
        assert_eq!(after(&s, 0, PowerLossNothing, A), Some(vec![]));
    }

    #[test]
    fn rename_is_atomic_under_reorder() {
        let (s, _f) = durable_file(b"new");
        s.write_file(p("/db/b"), b"old");
        s.rename(p(A), p("/db/b")).unwrap();
        let mut outcomes = HashSet::new();
        for seed in 0..200 {
            let image = s.crash(seed, PowerLossReorder);
            let (a, b) = (image.read_file(p(A)), image.read_file(p("/db/b")));
            let old_names = (Some(b"new".to_vec()), Some(b"old".to_vec()));
            assert!((a.clone(), b.clone()) == old_names || (a.is_none() && b == old_names.0));
            outcomes.insert(a.is_some());
        }
        assert_eq!(outcomes.len(), 2, "both outcomes occur");
        s.sync_dir(p("/db")).unwrap();
        assert_eq!(
            after(&s, 0, PowerLossNothing, "/db/b"),
            Some(b"new".to_vec())
        );
    }

    #[test]
    fn torn_writes_keep_a_prefix() {
        let (s, f) = durable_file(b"");
        let data: Vec<u8> = (0..2000u32).map(|i| (i % 251) as u8 + 1).collect();
        f.write_at(&data, 0).unwrap();
        let mut seen = HashSet::new();
        for mode in [PowerLossOrdered, PowerLossReorder] {
            for seed in 0..400 {
                let image = after(&s, seed, mode, A).unwrap();
                let len = image.len();
                assert!(
                    len == data.len() || image[..] == data[..len],
                    "torn to a prefix"
                );
                let noise = image.iter().any(|&b| b != 0);
                seen.insert(match len {
                    0 => "lost",
                    _ if image == data => "whole",
                    _ if len == data.len() => ["zeros", "noise"][usize::from(noise)],
                    _ if len.is_multiple_of(512) => "torn at a sector",
                    _ => "torn mid-sector",
                });
            }
        }
        assert_eq!(seen.len(), 6, "{seen:?}");
    }

    #[test]
    fn ordered_mode_applies_only_prefixes() {
        let (s, f) = durable_file(b"");
        for k in 0..3u8 {
            f.write_at(&[k + 1; 512], 512 * u64::from(k)).unwrap();
        }
        f.set_len(2000).unwrap();
        assert_eq!(s.pending_op_count(), 4);
        let mut lengths = HashSet::new();
        for seed in 0..500 {
            let image = after(&s, seed, PowerLossOrdered, A).unwrap();
            let region = |k: usize| image.get(512 * k..(512 * k + 512).min(image.len()));
            let whole = |k: usize| region(k).is_some_and(|r| r == [k as u8 + 1; 512]);
            for k in 1..3 {
                let started = region(k).is_some_and(|r| r.contains(&(k as u8 + 1)));
                assert!(
                    !started || (0..k).all(whole),
                    "seed {seed}: op {k} without its elders"
                );
            }
            assert!(image.len() != 2000 || (0..3).all(whole));
            lengths.insert(image.len());
        }
        assert!(
            lengths.len() > 4,
            "prefixes of several lengths: {lengths:?}"
        );
    }

    #[test]
    fn crash_images_are_deterministic_per_seed() {
        let (s, f) = durable_file(b"base");
        f.write_at(&[7; 1500], 100).unwrap();
        let b = s.open(p("/db/b"), OpenMode::CreateNew).unwrap();
        b.write_at(b"b", 0).unwrap();
        s.remove(p(A)).unwrap();
        for mode in CrashMode::ALL {
            let mut distinct = HashSet::new();
            for seed in 0..40 {
                let image = snapshot(&s.crash(seed, mode));
                assert_eq!(image, snapshot(&s.crash(seed, mode)));
                distinct.insert(image);
            }
            assert_eq!(
                distinct.len() > 1,
                matches!(mode, PowerLossOrdered | PowerLossReorder)
            );
        }
    }

    #[test]
    fn injected_faults_fire_once_or_persistently() {
        let (s, f) = setup();
        let before = s.op_count();
        s.inject(Fault::new(2, FaultKind::Eio));
        f.len().unwrap();
        assert_eq!(f.len().unwrap_err().raw_os_error(), Some(5));
        f.len().unwrap();
        assert_eq!(s.op_count(), before + 3);
        s.inject(persistent(2, FaultKind::Eacces, OpKind::Read));
        f.len().unwrap();
        f.read_at(&mut [], 0).unwrap();
        for _ in 0..3 {
            assert_eq!(
                f.read_at(&mut [], 0).unwrap_err().kind(),
                K::PermissionDenied
            );
        }
        s.clear_faults();
        f.read_at(&mut [], 0).unwrap();
        let kinds = [
            (FaultKind::Enospc, K::StorageFull),
            (FaultKind::Erofs, K::ReadOnlyFilesystem),
            (FaultKind::Eacces, K::PermissionDenied),
            (FaultKind::Eintr, K::Interrupted),
        ];
        for (fault, kind) in kinds {
            s.inject(Fault::new(1, fault));
            assert_eq!(s.list(p("/db")).unwrap_err().kind(), kind);
        }
    }

    #[test]
    fn write_at_absorbs_eintr_and_short_writes() {
        let (s, f) = durable_file(b"");
        s.inject(persistent(1, FaultKind::Eintr, OpKind::Write));
        f.write_at(b"abcd", 0).unwrap();
        s.clear_faults();
        f.sync_data().unwrap();
        s.inject(Fault::new(1, FaultKind::ShortWrite));
        f.write_at(b"efgh", 4).unwrap();
        assert_eq!(s.read_file(p(A)).unwrap(), b"abcdefgh");
        assert_eq!(s.pending_op_count(), 2, "the short write took two writes");
        s.inject(Fault::new(1, FaultKind::ShortWrite));
        assert_eq!(f.len().unwrap(), 8, "other operations ignore short writes");
        s.inject(Fault::new(1, FaultKind::Eintr));
        assert_eq!(f.sync_data().unwrap_err().kind(), K::Interrupted);
    }

    #[test]
    fn failed_sync_drops_its_ops_from_durability() {
        let (s, f) = durable_file(b"old");
        f.write_at(b"new", 0).unwrap();
        s.inject(Fault::new(1, FaultKind::Eio));
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(5));
        f.sync_all().unwrap();
        assert_eq!(s.read_file(p(A)).unwrap(), b"new");
        assert_eq!(after(&s, 0, ProcessCrash, A).unwrap(), b"new");
        for seed in 0..20 {
            assert_eq!(after(&s, seed, PowerLossReorder, A).unwrap(), b"old");
        }
        f.write_at(b"!", 3).unwrap();
        f.sync_data().unwrap();
        assert_eq!(after(&s, 0, PowerLossNothing, A).unwrap(), b"old!");
    }

    #[test]
    fn full_disk_fails_with_enospc_after_storing_what_fits() {
        let (s, f) = setup();
        s.set_capacity(Some(10));
        f.write_at(&[1; 8], 0).unwrap();
        assert_eq!(f.write_at(&[2; 4], 8).unwrap_err().kind(), K::StorageFull);
        assert_eq!(s.read_file(p(A)).unwrap(), [1, 1, 1, 1, 1, 1, 1, 1, 2, 2]);
        f.write_at(&[3; 4], 0).unwrap();
        assert_eq!(f.set_len(11).unwrap_err().raw_os_error(), Some(28));
        f.set_len(6).unwrap();
        let g = s.open(p("/db/b"), OpenMode::CreateNew).unwrap();
        assert!(g.write_at(&[4; 5], 0).is_err());
        assert_eq!(g.len().unwrap(), 4);
        s.set_capacity(None);
        g.write_at(&[4; 100], 0).unwrap();
    }

    #[test]
    fn maps_see_later_writes_and_outlive_unlink() {
        let (s, f) = setup();
        f.write_at(b"abcd", 0).unwrap();
        let map = f.map(4).unwrap();
        f.write_at(b"XY", 1).unwrap();
        assert_eq!((&*map.bytes(), map.len()), (&b"aXYd"[..], 4));
        assert_eq!(f.map(5).unwrap_err().kind(), K::InvalidInput);
        s.remove(p(A)).unwrap();
        let new = s.open(p(A), OpenMode::CreateNew).unwrap();
        new.write_at(b"new", 0).unwrap();
        assert_eq!(&*map.bytes(), b"aXYd");
        drop(map);
        f.set_len(0).unwrap();
    }

    #[test]
    #[should_panic(expected = "below a live map")]
    fn shrinking_below_a_live_map_panics() {
        let (_s, f) = setup();
        f.write_at(&[0; 8], 0).unwrap();
        let _map = f.map(6).unwrap();
        let _ = f.set_len(5);
    }

    #[test]
    fn open_modes_and_read_only_files() {
        let (s, f) = durable_file(b"ab");
        let open = |path, mode| s.open(p(path), mode).map(drop).unwrap_err().kind();
        assert_eq!(open(A, OpenMode::CreateNew), K::AlreadyExists);
        assert_eq!(open("/db/none", OpenMode::Existing), K::NotFound);
        assert_eq!(open("/db/none", OpenMode::ReadOnly), K::NotFound);
        assert_eq!(open("/nodir/a", OpenMode::CreateNew), K::NotFound);
        let r = s.open(p(A), OpenMode::ReadOnly).unwrap();
        assert_eq!(r.write_at(b"x", 0).unwrap_err().kind(), K::PermissionDenied);
        assert_eq!(r.set_len(0).unwrap_err().kind(), K::PermissionDenied);
        let mut buf = [0; 2];
        r.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"ab");
        assert_eq!(f.read_at(&mut buf, 1).unwrap_err().kind(), K::UnexpectedEof);
        f.write_at(b"z", 4).unwrap();
        assert_eq!(
            s.read_file(p(A)).unwrap(),
            b"ab\0\0z",
            "holes read as zeros"
        );
    }

    #[test]
    fn locks_are_exclusive_across_clones_until_dropped() {
        let (s, _f) = setup();
        let lock = s.try_lock(p("/db/LOCK")).unwrap().expect("free");
        assert!(s.clone().try_lock(p("/db/LOCK")).unwrap().is_none());
        let image = s.crash(0, ProcessCrash);
        assert!(image.try_lock(p("/db/LOCK")).unwrap().is_some());
        drop(lock);
        assert!(s.try_lock(p("/db/LOCK")).unwrap().is_some());
    }

    #[test]
    fn listing_and_damage_helpers() {
        let (s, _f) = setup();
        assert_eq!(s.list(p("/nodir")).unwrap_err().kind(), K::NotFound);
        s.write_file(p("/db/sub/c"), b"ccc");
        let mut names = s.list(p("/db")).unwrap();
        names.sort();
        assert_eq!(names, [(OsString::from("a"), 0)]);
        let files = [(PathBuf::from(A), 0), (PathBuf::from("/db/sub/c"), 3)];
        assert_eq!(s.files(), files);
        assert_eq!(after(&s, 0, PowerLossNothing, "/db/sub/c").unwrap(), b"ccc");
        s.remove_file_durably(p(A));
        assert_eq!(after(&s, 0, PowerLossOrdered, A), None);
        assert_eq!(s.files().len(), 1);
    }
}
