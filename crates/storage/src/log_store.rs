//! OmniPaxos's durable storage: the replicated log and the replica's consensus
//! state, kept in the node's one RocksDB next to the state machine.
//!
//! [`LogStore`] implements `omnipaxos::storage::Storage<Command>`. OmniPaxos
//! treats whatever a storage call returns as durable, so every mutating call
//! writes one RocksDB `WriteBatch` with `sync` before it returns, unless the
//! store's durability is `Deferred`: then the event loop syncs once per turn,
//! before any message that depends on the writes leaves the node. The crate
//! `omnipaxos_storage` has a persistent storage of its own, but it pins an older
//! `rocksdb`, and two `librocksdb-sys` cannot link into one binary.
//!
//! Key layout:
//! - `log`: absolute index (u64, big-endian) → [`Command::encode`]. Big-endian
//!   keys sort in index order, so a range of the log is a range of keys.
//! - `log_meta`: `first_idx`, `decided_idx`, `compacted_idx` (u64,
//!   big-endian); `promise`, `accepted_round`, `stopsign`, `snapshot` (postcard
//!   of OmniPaxos's serde types). An absent key means the default: 0 or `None`.
//!
//! Invariants:
//! - No holes: `log` holds exactly the indexes `[first_idx, end_idx)`.
//!   [`LogStore::open`] recovers `end_idx` from the last key and checks that the
//!   first key is `first_idx`; a read that finds a gap says which entry is gone.
//! - All or nothing: `write_atomically` stages its operations in order into one
//!   batch, against a copy of the caches, so a later operation sees the effect
//!   of an earlier one (an append after a trim lands after the trimmed index).
//!   Every single-operation call goes through the same path.
//! - The caches (log bounds, decided and compacted index, promise, accepted
//!   round, stopsign) change only after the batch is on disk. Entries and the
//!   snapshot are always read from RocksDB.
//! - A failed write may or may not have reached the disk (the write-ahead log
//!   can hold it while the sync failed), so the caches can no longer be trusted:
//!   the store refuses every later call with [`Error::Poisoned`] and the node
//!   restarts from disk. OmniPaxos panics on a storage error anyway (#124).
//!
//! It answers every call exactly as `omnipaxos_storage::MemoryStorage` does,
//! which the differential test in `tests/log_store.rs` checks:
//! - Indexes are absolute. `get_log_len` counts only the entries from
//!   `first_idx` on; OmniPaxos adds the compacted index itself.
//! - `trim(idx)` moves the start of the log to `idx` and deletes what lies
//!   below it; trimming past the end leaves an empty log that continues at
//!   `idx`. The compacted index is a separate value, set by
//!   `set_compacted_idx`: OmniPaxos always writes both in one batch, but
//!   `MemoryStorage` keeps them apart, and so does this.
//! - `append_on_prefix(from, ..)` past the end of the log appends at the end
//!   (`Vec::truncate` beyond the length does nothing).
//! - A read of a range that is not wholly in the log answers an empty vector,
//!   as the trait asks. Where `MemoryStorage` would underflow (a read below
//!   `first_idx`), this answers empty too.
//!
//! Not here:
//! - The state of a compacted prefix: OmniPaxos stores only a content-free
//!   marker (`CompactionMarker`); a lagging node gets the entries or a
//!   checkpoint of the state machine from the application instead.
//! - Deciding when to compact: the replica does, through OmniPaxos.
//! - Bounding reads: OmniPaxos asks for whole suffixes; how much log a node
//!   keeps is bounded by trimming behind the applied index.
//! - Calls OmniPaxos never makes: a trim or an `append_on_prefix` below the
//!   first index would rewrite what was compacted away. They are programmer
//!   errors and panic, as they do in `MemoryStorage`.

use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{Entry, StopSign, Storage, StorageOp, StorageResult};
use rocksdb::{ColumnFamily, Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::{de::DeserializeOwned, Serialize};

use crate::engine::{u64_from, Store, Write, CF_LOG, CF_LOG_META};
use crate::{Command, Error};

/// The snapshot type OmniPaxos stores for our entries.
type Snapshot = <Command as Entry>::Snapshot;

const META_FIRST_IDX: &[u8] = b"first_idx";
const META_DECIDED_IDX: &[u8] = b"decided_idx";
const META_COMPACTED_IDX: &[u8] = b"compacted_idx";
const META_PROMISE: &[u8] = b"promise";
const META_ACCEPTED_ROUND: &[u8] = b"accepted_round";
const META_STOPSIGN: &[u8] = b"stopsign";
const META_SNAPSHOT: &[u8] = b"snapshot";

/// Most entries a read reserves room for up front: a corrupt or huge range
/// must not allocate before the entries are actually found.
const READ_RESERVE_ENTRIES_MAX: usize = 1024;

// Log keys are u64: every usize index must fit.
const _: () = assert!(usize::BITS <= u64::BITS);

/// What is kept in memory: everything OmniPaxos reads often, small enough to
/// clone for every batch.
#[derive(Clone, Debug, Default)]
struct Cache {
    /// The absolute index of the first entry still in the log (MemoryStorage's
    /// trimmed index).
    first_idx: usize,
    /// One past the absolute index of the last entry.
    end_idx: usize,
    decided_idx: usize,
    compacted_idx: usize,
    promise: Option<Ballot>,
    accepted_round: Option<Ballot>,
    stopsign: Option<StopSign>,
}

/// OmniPaxos's storage in the node's RocksDB. Owned by the OmniPaxos instance;
/// nothing else writes the `log` and `log_meta` column families.
pub struct LogStore {
    store: Store,
    cache: Cache,
    poisoned: bool,
}

impl LogStore {
    /// Loads the log's state from the store, as it was after the last write
    /// that returned: a new store starts empty, a restarted node where it was.
    pub fn open(store: &Store) -> Result<LogStore, Error> {
        let first_idx = read_index(store, META_FIRST_IDX)?;
        let cache = Cache {
            first_idx,
            end_idx: recover_end_idx(store, first_idx)?,
            decided_idx: read_index(store, META_DECIDED_IDX)?,
            compacted_idx: read_index(store, META_COMPACTED_IDX)?,
            promise: read_value(store, META_PROMISE)?,
            accepted_round: read_value(store, META_ACCEPTED_ROUND)?,
            stopsign: read_value(store, META_STOPSIGN)?,
        };
        // A stored snapshot that does not decode should stop the node now,
        // not when a lagging peer first asks for it.
        read_value::<Snapshot>(store, META_SNAPSHOT)?;
        Ok(LogStore { store: store.clone(), cache, poisoned: false })
    }

    /// Stages `ops` in order and writes them as one synced batch; the caches
    /// follow only once the batch is on disk.
    fn commit(&mut self, ops: Vec<StorageOp<Command>>) -> Result<(), Error> {
        self.check_usable()?;
        let mut staged = Staged {
            batch: WriteBatch::default(),
            cache: self.cache.clone(),
            log: self.store.cf(CF_LOG),
            meta: self.store.cf(CF_LOG_META),
            retain_from: usize::try_from(self.store.log_retention()).unwrap_or(usize::MAX),
            decided_before: self.cache.decided_idx,
            owed: false,
        };
        for op in ops {
            staged.stage(op);
        }
        let Staged { batch, cache, owed, .. } = staged;
        if batch.is_empty() {
            return Ok(());
        }
        let write = if owed { Write::Owed } else { Write::Replayed };
        if let Err(e) = self.store.write(batch, write) {
            self.poisoned = true;
            return Err(e);
        }
        self.cache = cache;
        Ok(())
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        Ok(())
    }

    /// The entries `[from, to)`, which the caller has checked lie in the log.
    fn read_range(&self, from: usize, to: usize) -> Result<Vec<Command>, Error> {
        assert!(
            self.cache.first_idx <= from && from < to && to <= self.cache.end_idx,
            "read of [{from}, {to}) outside the log [{}, {})",
            self.cache.first_idx,
            self.cache.end_idx
        );
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(entry_key(to));
        let start = entry_key(from);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut entries = Vec::with_capacity((to - from).min(READ_RESERVE_ENTRIES_MAX));
        let mut expected = from;
        for item in self.store.db.iterator_cf_opt(self.store.cf(CF_LOG), read_opts, mode) {
            let (key, value) = item?;
            let idx = index_from_key(&key)?;
            if idx != expected {
                return Err(missing_entry(expected));
            }
            entries.push(decode_entry(idx, &value)?);
            expected += 1;
        }
        if expected != to {
            return Err(missing_entry(expected));
        }
        Ok(entries)
    }
}

/// A batch being built, and the caches as they will be once it is written.
struct Staged<'a> {
    batch: WriteBatch,
    cache: Cache,
    log: &'a ColumnFamily,
    meta: &'a ColumnFamily,
    /// Entries from here on stay on disk when trimmed (`Store::set_log_retention`).
    retain_from: usize,
    /// The decided index before this batch: only entries decided before it
    /// can be retained (later ones may be stale, from an older round).
    decided_before: usize,
    /// Whether the batch holds what a message may depend on: entries, a
    /// promise, an accepted round, a stopsign, a snapshot. The decided index,
    /// trims and compaction owe no sync: a node that loses them learns the
    /// decided index again from its peers and keeps more log than it needed.
    owed: bool,
}

impl Staged<'_> {
    fn stage(&mut self, op: StorageOp<Command>) {
        self.owed |= !matches!(
            op,
            StorageOp::SetDecidedIndex(_) | StorageOp::SetCompactedIdx(_) | StorageOp::Trim(_)
        );
        match op {
            StorageOp::AppendEntry(entry) => self.append(&[entry]),
            StorageOp::AppendEntries(entries) => self.append(&entries),
            StorageOp::AppendOnPrefix(from_idx, entries) => {
                self.truncate(from_idx);
                self.append(&entries);
            }
            StorageOp::SetPromise(ballot) => {
                self.put_value(META_PROMISE, &ballot);
                self.cache.promise = Some(ballot);
            }
            StorageOp::SetDecidedIndex(idx) => {
                self.put_index(META_DECIDED_IDX, idx);
                self.cache.decided_idx = idx;
            }
            StorageOp::SetAcceptedRound(ballot) => {
                self.put_value(META_ACCEPTED_ROUND, &ballot);
                self.cache.accepted_round = Some(ballot);
            }
            StorageOp::SetCompactedIdx(idx) => {
                self.put_index(META_COMPACTED_IDX, idx);
                self.cache.compacted_idx = idx;
            }
            StorageOp::Trim(idx) => self.trim(idx),
            StorageOp::SetStopsign(stopsign) => {
                self.put_optional(META_STOPSIGN, stopsign.as_ref());
                self.cache.stopsign = stopsign;
            }
            StorageOp::SetSnapshot(snapshot) => {
                self.put_optional(META_SNAPSHOT, snapshot.as_ref());
            }
        }
    }

    fn append(&mut self, entries: &[Command]) {
        for entry in entries {
            self.batch.put_cf(self.log, entry_key(self.cache.end_idx), entry.encode());
            self.cache.end_idx =
                self.cache.end_idx.checked_add(1).expect("log indexes stay far below usize::MAX");
        }
    }

    /// Drops the entries from `from_idx` on; past the end there are none.
    fn truncate(&mut self, from_idx: usize) {
        assert!(
            from_idx >= self.cache.first_idx,
            "append_on_prefix({from_idx}) would rewrite the log below its first index {}",
            self.cache.first_idx
        );
        let from_idx = from_idx.min(self.cache.end_idx);
        if from_idx < self.cache.end_idx {
            self.batch.delete_range_cf(
                self.log,
                entry_key(from_idx),
                entry_key(self.cache.end_idx),
            );
        }
        self.cache.end_idx = from_idx;
    }

    /// Deletes the entries below `idx` and makes `idx` the log's first index,
    /// also when it lies past the end (the log then continues at `idx`).
    fn trim(&mut self, idx: usize) {
        assert!(
            idx >= self.cache.first_idx,
            "trim({idx}) below the log's first index {}",
            self.cache.first_idx
        );
        // Entries the state machine has not applied stay on disk (see
        // `Store::set_log_retention`), out of OmniPaxos's sight.
        let end = idx.min(self.cache.end_idx);
        let keep_from = self.retain_from.min(end);
        let keep_to = self.decided_before.min(end).max(keep_from);
        if keep_from > 0 {
            self.batch.delete_range_cf(self.log, entry_key(0), entry_key(keep_from));
        }
        if keep_to < end {
            self.batch.delete_range_cf(self.log, entry_key(keep_to), entry_key(end));
        }
        self.put_index(META_FIRST_IDX, idx);
        self.cache.first_idx = idx;
        self.cache.end_idx = self.cache.end_idx.max(idx);
    }

    fn put_index(&mut self, key: &[u8], idx: usize) {
        self.batch.put_cf(self.meta, key, (idx as u64).to_be_bytes());
    }

    fn put_value<V: Serialize>(&mut self, key: &[u8], value: &V) {
        // Ballots, stopsigns and snapshots are plain derived data: encoding
        // them cannot fail short of memory, as for `Command::encode`.
        let bytes = postcard::to_stdvec(value).expect("plain data always encodes");
        self.batch.put_cf(self.meta, key, bytes);
    }

    fn put_optional<V: Serialize>(&mut self, key: &[u8], value: Option<&V>) {
        match value {
            Some(value) => self.put_value(key, value),
            None => self.batch.delete_cf(self.meta, key),
        }
    }
}

/// The key of the entry at absolute index `idx`.
fn entry_key(idx: usize) -> [u8; 8] {
    // Lossless: usize is at most 64 bits (checked at compile time above).
    (idx as u64).to_be_bytes()
}

fn index_from_key(key: &[u8]) -> Result<usize, Error> {
    let idx = u64_from(key, "log key")?;
    usize::try_from(idx).map_err(|_| Error::Corrupt {
        what: format!("log key {idx} does not fit this platform's usize"),
    })
}

fn decode_entry(idx: usize, bytes: &[u8]) -> Result<Command, Error> {
    Command::decode(bytes).map_err(|e| match e {
        Error::Corrupt { what } => Error::Corrupt { what: format!("log entry {idx}: {what}") },
        other => other,
    })
}

fn missing_entry(idx: usize) -> Error {
    Error::Corrupt { what: format!("log entry {idx} is missing from the middle of the log") }
}

fn meta_name(key: &[u8]) -> String {
    format!("log_meta '{}'", String::from_utf8_lossy(key))
}

/// An index from `log_meta`; 0 when it was never written.
fn read_index(store: &Store, key: &[u8]) -> Result<usize, Error> {
    let Some(bytes) = store.db.get_pinned_cf(store.cf(CF_LOG_META), key)? else {
        return Ok(0);
    };
    let idx = u64_from(&bytes, &meta_name(key))?;
    usize::try_from(idx).map_err(|_| Error::Corrupt {
        what: format!("{}: {idx} does not fit this platform's usize", meta_name(key)),
    })
}

/// A postcard value from `log_meta`; `None` when absent. Trailing bytes count
/// as corruption: a value that was cut or overwritten must not pass.
fn read_value<V: DeserializeOwned>(store: &Store, key: &[u8]) -> Result<Option<V>, Error> {
    let Some(bytes) = store.db.get_pinned_cf(store.cf(CF_LOG_META), key)? else {
        return Ok(None);
    };
    let corrupt = |reason: String| Error::Corrupt { what: format!("{}: {reason}", meta_name(key)) };
    match postcard::take_from_bytes::<V>(&bytes) {
        Ok((value, [])) => Ok(Some(value)),
        Ok((_, rest)) => Err(corrupt(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// One past the last entry's index, checking that the log starts where
/// `log_meta` says it does. An empty log continues at `first_idx`.
fn recover_end_idx(store: &Store, first_idx: usize) -> Result<usize, Error> {
    let log = store.cf(CF_LOG);
    // Entries below the first index may remain, retained for the state
    // machine; the log proper starts at the first index.
    let Some(last) = store.db.iterator_cf(log, IteratorMode::End).next() else {
        return Ok(first_idx);
    };
    let highest = index_from_key(&last?.0)?;
    if highest < first_idx {
        return Ok(first_idx);
    }
    if store.db.get_pinned_cf(log, entry_key(first_idx))?.is_none() {
        return Err(Error::Corrupt {
            what: format!(
                "the log ends at entry {highest}, but its first entry {first_idx} is gone"
            ),
        });
    }
    highest.checked_add(1).ok_or_else(|| Error::Corrupt {
        what: format!("log entry {highest} is past the largest index"),
    })
}

/// Entries `from..to` (OmniPaxos indexes) still on disk, whether in the log
/// or retained below its first index for the state machine, as far as they
/// run without a gap from `from`.
pub fn read_retained(store: &Store, from: usize, to: usize) -> Result<Vec<Command>, Error> {
    let log = store.cf(CF_LOG);
    let mut entries = Vec::new();
    let mode = IteratorMode::From(&entry_key(from), Direction::Forward);
    for (expected, item) in (from..to).zip(store.db.iterator_cf(log, mode)) {
        let (key, value) = item?;
        if index_from_key(&key)? != expected {
            break;
        }
        entries.push(Command::decode(&value)?);
    }
    Ok(entries)
}

/// Deletes the retained entries below `below` (an OmniPaxos index) that lie
/// under the log's first index: the state machine no longer needs them.
pub fn release_retained(store: &Store, below: usize) -> Result<(), Error> {
    let first_idx = read_index(store, META_FIRST_IDX)?;
    let to = below.min(first_idx);
    if to > 0 {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(store.cf(CF_LOG), entry_key(0), entry_key(to));
        store.write(batch, Write::Unsynced)?;
    }
    Ok(())
}

impl Storage<Command> for LogStore {
    fn write_atomically(&mut self, ops: Vec<StorageOp<Command>>) -> StorageResult<()> {
        Ok(self.commit(ops)?)
    }

    fn append_entry(&mut self, entry: Command) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::AppendEntry(entry)])?)
    }

    fn append_entries(&mut self, entries: Vec<Command>) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::AppendEntries(entries)])?)
    }

    fn append_on_prefix(&mut self, from_idx: usize, entries: Vec<Command>) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::AppendOnPrefix(from_idx, entries)])?)
    }

    fn set_promise(&mut self, n_prom: Ballot) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::SetPromise(n_prom)])?)
    }

    fn set_decided_idx(&mut self, ld: usize) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::SetDecidedIndex(ld)])?)
    }

    fn get_decided_idx(&self) -> StorageResult<usize> {
        self.check_usable()?;
        Ok(self.cache.decided_idx)
    }

    fn set_accepted_round(&mut self, na: Ballot) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::SetAcceptedRound(na)])?)
    }

    fn get_accepted_round(&self) -> StorageResult<Option<Ballot>> {
        self.check_usable()?;
        Ok(self.cache.accepted_round)
    }

    fn get_entries(&self, from: usize, to: usize) -> StorageResult<Vec<Command>> {
        self.check_usable()?;
        if from < self.cache.first_idx || from >= to || to > self.cache.end_idx {
            return Ok(Vec::new());
        }
        Ok(self.read_range(from, to)?)
    }

    fn get_log_len(&self) -> StorageResult<usize> {
        self.check_usable()?;
        Ok(self.cache.end_idx - self.cache.first_idx)
    }

    fn get_suffix(&self, from: usize) -> StorageResult<Vec<Command>> {
        self.check_usable()?;
        if from < self.cache.first_idx || from >= self.cache.end_idx {
            return Ok(Vec::new());
        }
        Ok(self.read_range(from, self.cache.end_idx)?)
    }

    fn get_promise(&self) -> StorageResult<Option<Ballot>> {
        self.check_usable()?;
        Ok(self.cache.promise)
    }

    fn set_stopsign(&mut self, s: Option<StopSign>) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::SetStopsign(s)])?)
    }

    fn get_stopsign(&self) -> StorageResult<Option<StopSign>> {
        self.check_usable()?;
        Ok(self.cache.stopsign.clone())
    }

    fn trim(&mut self, idx: usize) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::Trim(idx)])?)
    }

    fn set_compacted_idx(&mut self, idx: usize) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::SetCompactedIdx(idx)])?)
    }

    fn get_compacted_idx(&self) -> StorageResult<usize> {
        self.check_usable()?;
        Ok(self.cache.compacted_idx)
    }

    fn set_snapshot(&mut self, snapshot: Option<Snapshot>) -> StorageResult<()> {
        Ok(self.commit(vec![StorageOp::SetSnapshot(snapshot)])?)
    }

    fn get_snapshot(&self) -> StorageResult<Option<Snapshot>> {
        self.check_usable()?;
        Ok(read_value(&self.store, META_SNAPSHOT)?)
    }
}
