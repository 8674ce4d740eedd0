//! The RocksDB engine: one database per node, its column families, key layout,
//! and the read side of the state machine.
//!
//! Column families:
//! - `tables`: table name → table metadata.
//! - `docs`: `table ++ 0x00 ++ id` → the document's JSON text. Table names never
//!   hold `0x00`, so a table's documents are one contiguous range, in id order
//!   (byte order of UTF-8, which is code point order).
//! - `kv`: key → raw bytes.
//! - `sessions`: session id (u64, big-endian) → its last command and outcome.
//! - `session_lru`: `last_index ++ session` (both big-endian) → nothing; the
//!   sessions in the order they were last used, for eviction.
//! - `changes`: the change history, in log order ([`crate::changes`]).
//! - `meta`: the applied index and counters; written in the same `WriteBatch` as
//!   the effects of the entries they count. While a snapshot is being installed
//!   it also holds the install marker ([`crate::snapshot`]), and the state is
//!   partial.
//! - `log`, `log_meta`: OmniPaxos's log and consensus state (`log_store`).
//!
//! Reads go through a RocksDB snapshot, so a read that touches two column
//! families (a table's existence and its documents) sees one state.
//!
//! Not here: applying commands (`machine`), the consensus log's logic
//! (`log_store`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, ReadOptions, DB,
};

use crate::Error;

pub(crate) const CF_TABLES: &str = "tables";
pub(crate) const CF_DOCS: &str = "docs";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_SESSIONS: &str = "sessions";
pub(crate) const CF_SESSION_LRU: &str = "session_lru";
pub(crate) const CF_META: &str = "meta";
/// The consensus log and its metadata (`log_store`).
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_LOG_META: &str = "log_meta";
/// The change history ([`crate::changes`]).
pub(crate) const CF_CHANGES: &str = "changes";
pub(crate) const COLUMN_FAMILIES: [&str; 9] = [
    CF_TABLES,
    CF_DOCS,
    CF_KV,
    CF_SESSIONS,
    CF_SESSION_LRU,
    CF_CHANGES,
    CF_META,
    CF_LOG,
    CF_LOG_META,
];

pub(crate) const META_APPLIED_INDEX: &[u8] = b"applied_index";
pub(crate) const META_SESSION_COUNT: &[u8] = b"session_count";
/// Present while a snapshot install has begun and not finished; its value is
/// the snapshot's applied index (big-endian), for diagnosis.
pub(crate) const META_SNAPSHOT_INSTALL: &[u8] = b"snapshot_install";
/// In `log_meta`: the node's replication settings (`Store::cluster_config`).
const META_CLUSTER_CONFIG: &[u8] = b"cluster_config";
/// In `log_meta`: the on-disk format the data is in (u64, big-endian). Kept
/// out of the state machine's column families, so snapshots and backups do
/// not carry one node's format to another.
const META_FORMAT: &[u8] = b"format_version";

/// The on-disk format this build writes: the column families, key layouts
/// and value encodings above, and the log's. Raised by a change that an older
/// build would misread; such a change also needs the cluster version gate.
pub const FORMAT_VERSION: u64 = 1;
/// The oldest on-disk format this build reads. A data directory from before
/// formats were recorded is format 1.
pub const FORMAT_VERSION_MIN: u64 = 1;

/// Most documents one page of a listing returns.
pub const LIST_LIMIT_MAX: usize = 1000;
/// A page of a listing ends after the document that takes its documents to
/// this many bytes or more: a page holds at most this plus one document
/// ([`crate::command::DOC_BYTES_MAX`]), whatever its `limit`.
pub const PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The start of a table's range in `docs`.
pub(crate) fn doc_prefix(table: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(table.len() + 1);
    key.extend_from_slice(table.as_bytes());
    key.push(0);
    key
}

/// The first key after a table's range in `docs`.
pub(crate) fn doc_prefix_end(table: &str) -> Vec<u8> {
    let mut key = doc_prefix(table);
    *key.last_mut().expect("a prefix ends with its separator") = 1;
    key
}

pub(crate) fn doc_key(table: &str, id: &str) -> Vec<u8> {
    let mut key = doc_prefix(table);
    key.extend_from_slice(id.as_bytes());
    key
}

pub(crate) fn u64_from(bytes: &[u8], what: &str) -> Result<u64, Error> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| Error::Corrupt {
        what: format!("{what}: expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(array))
}

/// A node's database, shared by the applier (one writer) and any number of
/// readers. Cloning is cheap.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    /// The last applied index, mirrored from `meta` for readers that only need
    /// the number (health, metrics) without a RocksDB read.
    pub(crate) applied_index: Arc<AtomicU64>,
    /// The same, for those who wait for it to move ([`Store::watch_applied`]).
    applied_watch: Arc<tokio::sync::watch::Sender<u64>>,
    /// The [`Durability`], as its `u8` code, shared by every handle.
    durability: Arc<AtomicU8>,
    /// The first log entry (OmniPaxos index) the state machine has not
    /// applied: compaction keeps it and what follows on disk.
    log_retention: Arc<AtomicU64>,
    /// Which writes since the last sync are not yet on disk.
    unsynced: Arc<Unsynced>,
    /// A bug planted on purpose: history reads that resume inside an
    /// entry skip a change (feature `planted-bugs`, for the simulator).
    #[cfg(feature = "planted-bugs")]
    pub(crate) planted_skip_on_resume: Arc<std::sync::atomic::AtomicBool>,
}

/// How a write reaches the disk ([`Store::write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Write {
    /// Synced before it returns, whatever the [`Durability`].
    Durable,
    /// Synced unless the durability defers syncs; then a later message or
    /// answer may depend on it, and [`Store::sync_owed`] syncs.
    Owed,
    /// Synced unless the durability defers syncs; then nothing owes a sync,
    /// as recovery makes it again (applied entries, the decided index).
    Replayed,
    /// Never synced on its own: a later synced write makes it durable.
    Unsynced,
}

/// What is not yet on disk.
#[derive(Debug, Default)]
struct Unsynced {
    /// Some write since the last sync.
    any: AtomicBool,
    /// Some write since the last sync that something depends on.
    owed: AtomicBool,
    /// Where each durable point leaves a copy (simulations only).
    durable_copy: Mutex<Option<PathBuf>>,
}

/// When the state machine's and the log's writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Every write is synced before it returns (the default).
    Synced,
    /// Writes reach the operating system at once (a crashed process loses
    /// nothing) and the disk at the owner's next [`Store::sync`]. The owner
    /// must let nothing depend on a write (a message, an answer) before that
    /// sync: one sync then covers every write of a turn. Writes that
    /// recovery makes again by itself (applying decided entries, which the
    /// log replays; the decided index, which peers tell again) owe no sync:
    /// [`Store::sync_owed`] syncs only after a write that does (a log
    /// append, a promise).
    Deferred,
    /// Writes reach the operating system and are never forced to disk:
    /// [`Store::sync`] does nothing. A crashed process loses nothing, a power
    /// cut may. For simulations, which crash processes, not machines.
    Unsynced,
}

impl Durability {
    fn code(self) -> u8 {
        match self {
            Durability::Synced => 0,
            Durability::Deferred => 1,
            Durability::Unsynced => 2,
        }
    }

    fn from_code(code: u8) -> Durability {
        match code {
            1 => Durability::Deferred,
            2 => Durability::Unsynced,
            _ => Durability::Synced,
        }
    }
}

/// One page of a table listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Documents as JSON text, in id order.
    pub docs: Vec<String>,
    /// The id to pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A page of [`Store::export_docs`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExportPage {
    /// The applied index the documents are as of.
    pub applied_index: u64,
    /// Documents as (id, JSON text), in id order.
    pub docs: Vec<(String, String)>,
    /// Whether no page follows.
    pub last: bool,
}

/// How much memory and disk a store takes for its buffers and files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Footprint {
    /// RocksDB's defaults: 64 MiB write buffers, preallocated logs.
    Server,
    /// Small buffers and no preallocation, for the many short-lived stores
    /// of tests and simulations. Same data, same durability.
    Small,
}

/// Write buffer per column family of a [`Footprint::Small`] store.
const SMALL_WRITE_BUFFER_BYTES: usize = 512 * 1024;

impl Store {
    /// Opens (or creates) the database in `dir`, sized for a server.
    pub fn open(dir: &Path) -> Result<Store, Error> {
        Store::open_with(dir, Footprint::Server)
    }

    /// Opens (or creates) the database in `dir` with the given footprint.
    pub fn open_with(dir: &Path, footprint: Footprint) -> Result<Store, Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        if footprint == Footprint::Small {
            // RocksDB preallocates each write-ahead log at about the size of
            // a write buffer, and each manifest at 4 MiB: on a memory file
            // system that is most of the cost of opening a small store.
            opts.set_manifest_preallocation_size(64 * 1024);
            opts.set_db_write_buffer_size(COLUMN_FAMILIES.len() * SMALL_WRITE_BUFFER_BYTES);
            opts.set_max_background_jobs(1);
        }
        let cfs = COLUMN_FAMILIES.iter().map(|name| {
            let mut cf_opts = Options::default();
            cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if footprint == Footprint::Small {
                cf_opts.set_write_buffer_size(SMALL_WRITE_BUFFER_BYTES);
            }
            ColumnFamilyDescriptor::new(*name, cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        check_format(&db, dir)?;
        Store::over(Arc::new(db))
    }

    /// A handle on the same database as a process that restarted would have
    /// after reopening it: the caches are read again from the database and
    /// shared with no earlier handle, and the durability is the default.
    /// For simulations of process crashes, where every write reaches the
    /// operating system before a crash (`Durability::Unsynced` or stronger)
    /// and reopening RocksDB would find exactly what it holds: what differs
    /// is only the time that reopening takes. No handle of the crashed
    /// process may be used again but to call this.
    pub fn reopened(&self) -> Result<Store, Error> {
        Store::over(Arc::clone(&self.db))
    }

    fn over(db: Arc<DB>) -> Result<Store, Error> {
        let store = Store {
            db,
            applied_index: Arc::new(AtomicU64::new(0)),
            applied_watch: Arc::new(tokio::sync::watch::Sender::new(0)),
            durability: Arc::new(AtomicU8::new(Durability::Synced.code())),
            log_retention: Arc::new(AtomicU64::new(u64::MAX)),
            unsynced: Arc::default(),
            #[cfg(feature = "planted-bugs")]
            planted_skip_on_resume: Arc::default(),
        };
        // A partial install has applied nothing that can be trusted.
        if !store.snapshot_install_incomplete()? {
            let applied = store.read_meta_u64(META_APPLIED_INDEX)?;
            store.publish_applied(applied);
        }
        Ok(store)
    }

    /// Whether a snapshot install into this store began and did not finish
    /// ([`crate::snapshot`]). Such a store holds part of a state: it must not serve
    /// reads or apply entries until a snapshot is installed again in full.
    pub fn snapshot_install_incomplete(&self) -> Result<bool, Error> {
        Ok(self.db.get_pinned_cf(self.cf(CF_META), META_SNAPSHOT_INSTALL)?.is_some())
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family '{name}' is created at open"))
    }

    pub(crate) fn read_meta_u64(&self, key: &[u8]) -> Result<u64, Error> {
        match self.db.get_cf(self.cf(CF_META), key)? {
            Some(bytes) => u64_from(&bytes, "meta value"),
            None => Ok(0),
        }
    }

    /// Keeps log entries from `first_unapplied` (an OmniPaxos index) on disk
    /// when OmniPaxos compacts past them: OmniPaxos may compact a node's log
    /// beyond what its state machine applied (when it syncs a lagging node),
    /// and those entries must stay readable until they are applied here or
    /// served to a peer (`log_store::read_retained`). Without a call, nothing
    /// is retained.
    pub fn set_log_retention(&self, first_unapplied: u64) {
        self.log_retention.store(first_unapplied, Ordering::Release);
    }

    pub(crate) fn log_retention(&self) -> u64 {
        self.log_retention.load(Ordering::Acquire)
    }

    /// Chooses when writes reach the disk, for every handle on this store.
    /// Set it before the writers start.
    pub fn set_durability(&self, durability: Durability) {
        self.durability.store(durability.code(), Ordering::Release);
    }

    pub fn durability(&self) -> Durability {
        Durability::from_code(self.durability.load(Ordering::Acquire))
    }

    /// Whether a writer syncs each write itself.
    pub(crate) fn syncs_each_write(&self) -> bool {
        self.durability() == Durability::Synced
    }

    /// Makes every write so far durable (syncs the write-ahead log); nothing
    /// under `Durability::Unsynced`.
    pub fn sync(&self) -> Result<(), Error> {
        if self.durability() != Durability::Unsynced {
            self.db.flush_wal(true)?;
        }
        self.durable_point();
        Ok(())
    }

    /// Syncs if a write since the last sync owes one (see
    /// [`Durability::Deferred`]); says whether it synced.
    pub fn sync_owed(&self) -> Result<bool, Error> {
        if !self.unsynced.owed.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.sync()?;
        Ok(true)
    }

    /// Whether every write so far is durable.
    pub fn all_synced(&self) -> bool {
        !self.unsynced.any.load(Ordering::Acquire)
    }

    /// Writes `batch`: synced as `write` says, and recorded as owing a sync
    /// or not when it is left to a later one.
    pub(crate) fn write(&self, batch: rocksdb::WriteBatch, write: Write) -> Result<(), Error> {
        let sync = match write {
            Write::Durable => true,
            Write::Owed | Write::Replayed => self.syncs_each_write(),
            Write::Unsynced => false,
        };
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)?;
        if sync {
            // A synced write syncs every write before it too.
            self.durable_point();
        } else {
            self.unsynced.any.store(true, Ordering::Release);
            if write == Write::Owed {
                self.unsynced.owed.store(true, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Every write so far is on disk.
    fn durable_point(&self) {
        self.unsynced.owed.store(false, Ordering::Release);
        self.unsynced.any.store(false, Ordering::Release);
        let copy = self.unsynced.durable_copy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = copy.as_ref() {
            if let Err(error) = self.copy_to(dir) {
                // Only simulations keep a copy; they check that it exists.
                tracing::error!(%error, dir = %dir.display(), "the durable copy failed");
            }
        }
    }

    fn copy_to(&self, dir: &Path) -> Result<(), Error> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| Error::Snapshot {
                reason: format!("cannot remove the old durable copy {}: {e}", dir.display()),
            })?;
        }
        rocksdb::checkpoint::Checkpoint::new(&self.db)?.create_checkpoint(dir)?;
        Ok(())
    }

    /// For simulations of power cuts, which lose every write not yet on
    /// disk: from now on each durable point (a sync, a synced write) leaves a
    /// copy of the database in `dir` (a RocksDB checkpoint, made now too).
    /// Replacing the store's directory with that copy, with every handle
    /// closed, gives what the disk would hold after a power cut. Costly:
    /// keep it on for a few turns at a time.
    pub fn keep_durable_copy(&self, dir: &Path) -> Result<(), Error> {
        self.copy_to(dir)?;
        *self.unsynced.durable_copy.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(dir.to_path_buf());
        Ok(())
    }

    /// Stops what [`Store::keep_durable_copy`] started.
    pub fn stop_durable_copy(&self) {
        *self.unsynced.durable_copy.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// A fingerprint of the whole state machine (every state-machine column
    /// family, keys and values, and the applied index): replicas at the same
    /// applied index must have equal fingerprints. Reads one RocksDB snapshot.
    /// The change history is left out: each node keeps its own window of it.
    pub fn state_fingerprint(&self) -> Result<u64, Error> {
        fingerprint_of(&self.db)
    }

    /// The replication settings this node's data belongs to (written once,
    /// when a replicated node first starts on an empty directory), as the
    /// node encoded them; `None` for a single node.
    pub fn cluster_config(&self) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(CF_LOG_META), META_CLUSTER_CONFIG)?)
    }

    /// Stores the replication settings (synced).
    pub fn set_cluster_config(&self, encoded: &[u8]) -> Result<(), Error> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(self.cf(CF_LOG_META), META_CLUSTER_CONFIG, encoded);
        self.write(batch, Write::Durable)
    }

    /// Starts a new configuration's log: empties the consensus log and its
    /// state (OmniPaxos starts every configuration afresh) and stores the new
    /// replication settings, in one synced write. The state machine is not
    /// touched. Nothing may hold a `LogStore` on this store meanwhile.
    pub fn begin_configuration(&self, encoded: &[u8]) -> Result<(), Error> {
        let mut batch = rocksdb::WriteBatch::default();
        for name in [CF_LOG, CF_LOG_META] {
            let cf = self.cf(name);
            if let Some(item) = self.db.iterator_cf(cf, IteratorMode::End).next() {
                let (last_key, _) = item?;
                let mut end = last_key.into_vec();
                end.push(0);
                batch.delete_range_cf(cf, Vec::new(), end);
            }
        }
        batch.put_cf(self.cf(CF_LOG_META), META_CLUSTER_CONFIG, encoded);
        self.write(batch, Write::Durable)
    }

    /// Publishes a new applied index to readers and waiters.
    pub(crate) fn publish_applied(&self, index: u64) {
        self.applied_index.store(index, Ordering::Release);
        self.applied_watch.send_replace(index);
    }

    /// A receiver that sees every later applied index (it may skip some):
    /// for readers that wait for the state to move on.
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_watch.subscribe()
    }

    /// The index of the last log entry applied to this state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index.load(Ordering::Acquire)
    }

    /// Table names in order.
    pub fn list_tables(&self) -> Result<Vec<String>, Error> {
        let mut names = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_TABLES), IteratorMode::Start) {
            let (key, _) = item?;
            names.push(
                String::from_utf8(key.into_vec())
                    .map_err(|_| Error::Corrupt { what: "table name is not UTF-8".into() })?,
            );
        }
        Ok(names)
    }

    /// How many documents `table` holds (0 for a table that does not
    /// exist): a scan of its keys, from one RocksDB snapshot.
    pub fn count_docs(&self, table: &str) -> Result<u64, Error> {
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(doc_prefix_end(table));
        read_opts.fill_cache(false);
        let start = doc_prefix(table);
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(CF_DOCS), read_opts);
        iter.seek(&start);
        let mut count = 0;
        while iter.valid() {
            count += 1;
            iter.next();
        }
        iter.status()?;
        Ok(count)
    }

    pub fn table_exists(&self, table: &str) -> Result<bool, Error> {
        Ok(self.db.get_pinned_cf(self.cf(CF_TABLES), table)?.is_some())
    }

    /// One document as JSON text; `Ok(None)` when the table has no such id.
    pub fn get_doc(&self, table: &str, id: &str) -> Result<Option<String>, Error> {
        let snapshot = self.db.snapshot();
        if snapshot.get_cf(self.cf(CF_TABLES), table)?.is_none() {
            return Err(Error::TableNotFound { table: table.to_string() });
        }
        match snapshot.get_cf(self.cf(CF_DOCS), doc_key(table, id))? {
            Some(bytes) => Ok(Some(json_text(bytes)?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` documents with ids after `after`, in id order, fewer
    /// when they reach [`PAGE_BYTES_MAX`] (the page's cursor says where the
    /// next one starts).
    pub fn list_docs(&self, table: &str, after: Option<&str>, limit: usize) -> Result<Page, Error> {
        assert!(limit > 0 && limit <= LIST_LIMIT_MAX, "limit {limit} out of range");
        let snapshot = self.db.snapshot();
        if snapshot.get_cf(self.cf(CF_TABLES), table)?.is_none() {
            return Err(Error::TableNotFound { table: table.to_string() });
        }
        let start = match after {
            // The smallest key above `table\0after` is `table\0after\0`.
            Some(after) => {
                let mut key = doc_key(table, after);
                key.push(0);
                key
            }
            None => doc_prefix(table),
        };
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(doc_prefix_end(table));
        let mode = IteratorMode::From(&start, Direction::Forward);
        let prefix_len = doc_prefix(table).len();
        let mut docs = Vec::with_capacity(limit.min(64));
        let mut last_id = None;
        let mut bytes = 0;
        for item in snapshot.iterator_cf_opt(self.cf(CF_DOCS), read_opts, mode) {
            let (key, value) = item?;
            if docs.len() == limit || bytes >= PAGE_BYTES_MAX {
                // There is at least one more: the page gets a cursor.
                return Ok(Page { docs, next: last_id });
            }
            last_id = Some(json_text(key[prefix_len..].to_vec())?);
            bytes += value.len();
            docs.push(json_text(value.into_vec())?);
        }
        Ok(Page { docs, next: None })
    }

    /// Every document of `table` (or only `id`'s) as of one applied index,
    /// handed to `visit` page by page ([`PAGE_BYTES_MAX`] bytes at most,
    /// plus one document), in id order; the last page is flagged, and an
    /// empty table makes one empty last page. All pages come from one
    /// RocksDB snapshot, which lives until `visit` returns `false` or the
    /// last page is handed over: the caller paces the export. Answers the
    /// applied index the documents are as of.
    pub fn export_docs(
        &self,
        table: &str,
        id: Option<&str>,
        mut visit: impl FnMut(ExportPage) -> bool,
    ) -> Result<u64, Error> {
        let snapshot = self.db.snapshot();
        let applied_index = match snapshot.get_cf(self.cf(CF_META), META_APPLIED_INDEX)? {
            Some(bytes) => u64_from(&bytes, "meta value")?,
            None => 0,
        };
        if snapshot.get_cf(self.cf(CF_TABLES), table)?.is_none() {
            return Err(Error::TableNotFound { table: table.to_string() });
        }
        if let Some(id) = id {
            let docs = match snapshot.get_cf(self.cf(CF_DOCS), doc_key(table, id))? {
                Some(bytes) => vec![(id.to_string(), json_text(bytes)?)],
                None => Vec::new(),
            };
            visit(ExportPage { applied_index, docs, last: true });
            return Ok(applied_index);
        }
        let mut read_opts = ReadOptions::default();
        read_opts.set_iterate_upper_bound(doc_prefix_end(table));
        let start = doc_prefix(table);
        let mode = IteratorMode::From(&start, Direction::Forward);
        let mut docs = Vec::new();
        let mut bytes = 0;
        for item in snapshot.iterator_cf_opt(self.cf(CF_DOCS), read_opts, mode) {
            let (key, value) = item?;
            if bytes >= PAGE_BYTES_MAX || docs.len() == LIST_LIMIT_MAX {
                let page =
                    ExportPage { applied_index, docs: std::mem::take(&mut docs), last: false };
                if !visit(page) {
                    return Ok(applied_index);
                }
                bytes = 0;
            }
            bytes += value.len();
            let id = json_text(key[start.len()..].to_vec())?;
            docs.push((id, json_text(value.into_vec())?));
        }
        visit(ExportPage { applied_index, docs, last: true });
        Ok(applied_index)
    }

    /// A record of the system table, as JSON text.
    pub fn get_system(&self, key: &str) -> Result<Option<String>, Error> {
        match self.db.get_cf(self.cf(CF_DOCS), doc_key(crate::command::SYSTEM_TABLE, key))? {
            Some(bytes) => Ok(Some(json_text(bytes)?)),
            None => Ok(None),
        }
    }

    /// The cluster version of this node's state
    /// ([`crate::cluster_version`]): the base version without a record.
    pub fn cluster_version(&self) -> Result<crate::ClusterVersion, Error> {
        match self.get_system(crate::CLUSTER_VERSION_KEY)? {
            None => Ok(crate::ClusterVersion::BASE),
            Some(json) => {
                crate::cluster_version::from_record(&json).map_err(|what| Error::Corrupt { what })
            }
        }
    }

    /// The value under a key of the key-value space.
    pub fn kv_get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.db.get_cf(self.cf(CF_KV), key)?)
    }
}

fn json_text(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes)
        .map_err(|_| Error::Corrupt { what: "stored document is not UTF-8".into() })
}

/// [`Store::state_fingerprint`] of any database with Cairn's column families
/// (a live store, or a checkpoint opened read-only).
pub(crate) fn fingerprint_of(db: &DB) -> Result<u64, Error> {
    let snapshot = db.snapshot();
    let mut hash = crate::fnv::Fnv1a::new();
    let mut feed = |bytes: &[u8]| {
        hash.write(&(bytes.len() as u64).to_be_bytes());
        hash.write(bytes);
    };
    for name in [CF_TABLES, CF_DOCS, CF_KV, CF_SESSIONS, CF_SESSION_LRU, CF_META] {
        feed(name.as_bytes());
        let cf = db.cf_handle(name).ok_or_else(|| Error::Corrupt {
            what: format!("the database lacks column family '{name}'"),
        })?;
        for item in snapshot.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item?;
            if name == CF_META && key.starts_with(b"changes_") {
                continue;
            }
            feed(&key);
            feed(&value);
        }
    }
    Ok(hash.finish())
}

/// Refuses a database in an on-disk format this build cannot read, naming
/// both; records [`FORMAT_VERSION`] in one that has none (new, or from before
/// formats were recorded, which is format 1).
fn check_format(db: &DB, dir: &Path) -> Result<(), Error> {
    let log_meta = db.cf_handle(CF_LOG_META).ok_or_else(|| Error::Corrupt {
        what: format!("the database lacks column family '{CF_LOG_META}'"),
    })?;
    match db.get_cf(log_meta, META_FORMAT)? {
        Some(bytes) => {
            let found = u64_from(&bytes, "on-disk format version")?;
            if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&found) {
                return Err(Error::Format {
                    dir: dir.display().to_string(),
                    found,
                    reads: if FORMAT_VERSION_MIN == FORMAT_VERSION {
                        format!("format {FORMAT_VERSION}")
                    } else {
                        format!("formats {FORMAT_VERSION_MIN} to {FORMAT_VERSION}")
                    },
                });
            }
            Ok(())
        }
        None => {
            let mut options = rocksdb::WriteOptions::default();
            options.set_sync(true);
            db.put_cf_opt(log_meta, META_FORMAT, FORMAT_VERSION.to_be_bytes(), &options)?;
            Ok(())
        }
    }
}
