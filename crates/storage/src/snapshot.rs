//! State-machine snapshots: a node's state exported as a stream of bounded
//! chunks, and installed from one, so that a lagging or new replica catches up
//! without the log entries that were trimmed away.
//!
//! Export ([`SnapshotSource`]): a RocksDB checkpoint (hard links to the live
//! SST files, taken at one sequence number) is opened read-only, and its
//! state-machine column families are read in the fixed order of
//! [`SnapshotCf::ALL`], each in key order. The checkpoint isolates the stream
//! from every later write, so the node keeps applying while it serves. The
//! consensus log (`log`, `log_meta`) is never part of a snapshot.
//!
//! The stream is a sequence of [`Chunk`]s numbered 0, 1, 2, …; each holds pairs
//! of one column family and at most the asked number of key+value bytes, but
//! never fewer than one pair, so a single pair larger than the budget still
//! goes, alone. The last chunk is flagged; a state with no keys at all is one
//! empty last chunk. Every chunk carries the snapshot's applied index and an
//! FNV-1a checksum of everything else in it. `meta` comes last, so the applied
//! index lands with the final chunks.
//!
//! Install ([`SnapshotSink`]) into the live store, crash-safely:
//! 1. `begin` writes, in one synced batch, a range deletion of every
//!    state-machine column family and the install marker in `meta`. From then
//!    on the store reports [`Store::snapshot_install_incomplete`] and
//!    [`crate::StateMachine::open`] refuses it.
//! 2. `push` checks each chunk (checksum, applied index, sequence, bounds, order
//!    of column families and keys, nothing after the last) and writes its pairs
//!    unsynced. A refused chunk writes nothing, so the caller may send the right
//!    one instead or give up.
//! 3. `finish` checks that the last chunk came and that the stream's own `meta`
//!    carried the applied index, then deletes the marker with a synced write,
//!    which makes every earlier unsynced write durable with it (the write-ahead
//!    log is one sequence).
//!
//! A crash or an error anywhere before `finish` returns leaves the marker: the
//! store holds part of a state, reports itself incomplete, and the node must
//! install a snapshot again; `begin` works over an incomplete store.
//!
//! Bounds: what comes from the network is refused beyond
//! [`CHUNK_ENCODED_BYTES_MAX`], [`CHUNK_PAIRS_MAX`] and
//! [`CHUNK_PAYLOAD_BYTES_MAX`], and decoding allocates no more than those
//! allow. A node can therefore only export pairs of up to
//! [`CHUNK_PAYLOAD_BYTES_MAX`]; a document or value is bounded by the HTTP body
//! limit, which must stay below it.
//!
//! Not here:
//! - Moving chunks between nodes, deciding when a replica needs a snapshot, and
//!   what the log does around it (trimming, continuing after the index): the
//!   network and consensus layers own those.
//! - Exclusive access: nothing may apply entries to the store between `begin`
//!   and the state machine's `reload` (or a fresh `open`), and the node must not
//!   serve reads from an incomplete store; the caller holds the state machine.
//! - Authenticity: the checksum detects corruption, not a peer that lies.
//! - Choosing between snapshots: `begin` installs whatever index it is given,
//!   older than the store's or not.
//! - Reclaiming space at once: deleted data goes with RocksDB's compactions.

use std::fmt;
use std::path::{Path, PathBuf};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::{ColumnFamily, Direction, IteratorMode, Options, WriteBatch, DB};
use serde::{Deserialize, Serialize};

use crate::engine::{
    u64_from, Store, Write, CF_CHANGES, CF_DOCS, CF_KV, CF_META, CF_SESSIONS, CF_SESSION_LRU,
    CF_TABLES, COLUMN_FAMILIES, META_APPLIED_INDEX, META_SESSION_COUNT, META_SNAPSHOT_INSTALL,
};
use crate::fnv::Fnv1a;
use crate::Error;

/// The key+value bytes a chunk holds unless asked otherwise.
pub const CHUNK_PAYLOAD_BYTES_DEFAULT: usize = 1024 * 1024;
/// Most key+value bytes in one chunk, whatever is asked: also the largest pair
/// a snapshot can carry, so the largest document or value with its key must
/// fit (checked below), and an encoded chunk must fit one peer message
/// (checked in the consensus crate, which knows both).
pub const CHUNK_PAYLOAD_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Most pairs in one chunk (a full default chunk of 16-byte `session_lru` keys).
pub const CHUNK_PAIRS_MAX: usize = 65_536;
/// Most bytes of an encoded chunk: the payload, two length prefixes (varints of
/// at most 10 bytes) per pair, and the fixed fields.
pub const CHUNK_ENCODED_BYTES_MAX: usize =
    CHUNK_PAYLOAD_BYTES_MAX + CHUNK_PAIRS_MAX * 2 * VARINT_BYTES_MAX + CHUNK_HEADER_BYTES_MAX;

const _: () = assert!(
    crate::command::DOC_BYTES_MAX
        + crate::command::TABLE_NAME_BYTES_MAX
        + 1
        + crate::command::DOC_ID_BYTES_MAX
        <= CHUNK_PAYLOAD_BYTES_MAX
);
const _: () = assert!(
    crate::command::KV_VALUE_BYTES_MAX + crate::command::KV_KEY_BYTES_MAX
        <= CHUNK_PAYLOAD_BYTES_MAX
);

/// Longest postcard varint of a `u64`.
const VARINT_BYTES_MAX: usize = 10;
/// Room for a chunk's fields other than its pairs, with margin.
const CHUNK_HEADER_BYTES_MAX: usize = 64;

/// One key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// The state machine's column families, in the order a snapshot streams them.
/// `meta` is last: the applied index arrives once everything it counts has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum SnapshotCf {
    Tables,
    Docs,
    Kv,
    Sessions,
    SessionLru,
    Changes,
    Meta,
}

// A column family's discriminant is its position in the stream order.
const _: () = {
    let mut position = 0;
    while position < SnapshotCf::ALL.len() {
        assert!(SnapshotCf::ALL[position] as usize == position);
        position += 1;
    }
};

impl SnapshotCf {
    /// Every state-machine column family, in stream order.
    pub const ALL: [SnapshotCf; 7] = [
        SnapshotCf::Tables,
        SnapshotCf::Docs,
        SnapshotCf::Kv,
        SnapshotCf::Sessions,
        SnapshotCf::SessionLru,
        SnapshotCf::Changes,
        SnapshotCf::Meta,
    ];

    /// The column family's name in the database.
    pub fn name(self) -> &'static str {
        match self {
            SnapshotCf::Tables => CF_TABLES,
            SnapshotCf::Docs => CF_DOCS,
            SnapshotCf::Kv => CF_KV,
            SnapshotCf::Sessions => CF_SESSIONS,
            SnapshotCf::SessionLru => CF_SESSION_LRU,
            SnapshotCf::Changes => CF_CHANGES,
            SnapshotCf::Meta => CF_META,
        }
    }
}

/// One piece of a snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// The applied index of the snapshot this chunk belongs to.
    pub applied_index: u64,
    /// The chunk's place in the stream: 0, 1, 2, …
    pub seq: u64,
    /// The column family of every pair in the chunk.
    pub cf: SnapshotCf,
    /// Pairs in strictly ascending key order.
    #[serde(with = "wire")]
    pub pairs: Vec<Pair>,
    /// Whether this is the stream's last chunk.
    pub last: bool,
    /// FNV-1a of every other field ([`Chunk::new`] computes it).
    pub checksum: u64,
}

impl Chunk {
    /// A chunk with its checksum.
    pub fn new(
        applied_index: u64,
        seq: u64,
        cf: SnapshotCf,
        pairs: Vec<Pair>,
        last: bool,
    ) -> Chunk {
        let mut chunk = Chunk { applied_index, seq, cf, pairs, last, checksum: 0 };
        chunk.checksum = chunk.compute_checksum();
        chunk
    }

    /// Encodes for the network. Encoding plain data cannot fail short of memory.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a chunk always encodes")
    }

    /// Decodes bytes from the network, refusing more than
    /// [`CHUNK_ENCODED_BYTES_MAX`] bytes or [`CHUNK_PAIRS_MAX`] pairs before
    /// allocating for them. The checksum is checked by [`SnapshotSink::push`].
    pub fn decode(bytes: &[u8]) -> Result<Chunk, Error> {
        if bytes.len() > CHUNK_ENCODED_BYTES_MAX {
            return Err(refused(format!(
                "an encoded chunk of {} bytes is over the {CHUNK_ENCODED_BYTES_MAX}-byte limit",
                bytes.len()
            )));
        }
        let (chunk, rest): (Chunk, &[u8]) = postcard::take_from_bytes(bytes)
            .map_err(|e| refused(format!("a chunk does not decode: {e}")))?;
        if !rest.is_empty() {
            return Err(refused(format!("{} bytes follow an encoded chunk", rest.len())));
        }
        chunk.check_bounds()?;
        Ok(chunk)
    }

    /// The key+value bytes the chunk carries.
    pub fn payload_bytes(&self) -> usize {
        self.pairs.iter().map(|(key, value)| key.len().saturating_add(value.len())).sum()
    }

    fn compute_checksum(&self) -> u64 {
        let mut hasher = Fnv1a::new();
        hasher.write(&self.applied_index.to_be_bytes());
        hasher.write(&self.seq.to_be_bytes());
        hasher.write(&[self.cf as u8, u8::from(self.last)]);
        hasher.write(&(self.pairs.len() as u64).to_be_bytes());
        for (key, value) in &self.pairs {
            // Lengths first, so moving bytes from a key to its value shows.
            hasher.write(&(key.len() as u64).to_be_bytes());
            hasher.write(key);
            hasher.write(&(value.len() as u64).to_be_bytes());
            hasher.write(value);
        }
        hasher.finish()
    }

    fn check_bounds(&self) -> Result<(), Error> {
        if self.pairs.len() > CHUNK_PAIRS_MAX {
            let count = self.pairs.len();
            return Err(refused(format!(
                "chunk {} holds {count} pairs, over the limit of {CHUNK_PAIRS_MAX}",
                self.seq
            )));
        }
        let bytes = self.payload_bytes();
        if bytes > CHUNK_PAYLOAD_BYTES_MAX {
            return Err(refused(format!(
                "chunk {} holds {bytes} bytes of pairs, over the limit of {}",
                self.seq, CHUNK_PAYLOAD_BYTES_MAX
            )));
        }
        Ok(())
    }
}

fn refused(reason: String) -> Error {
    Error::Snapshot { reason }
}

/// Removes a directory this module made, when dropped; best effort.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            let dir = self.0.display();
            tracing::warn!(%dir, %error, "could not remove a snapshot checkpoint");
        }
    }
}

/// A snapshot being exported: a checkpoint of the store and a cursor in it.
/// Dropping it removes the checkpoint.
pub struct SnapshotSource {
    /// Declared before `_checkpoint_dir`: the database closes before its
    /// directory is removed.
    db: DB,
    applied_index: u64,
    next_seq: u64,
    /// The first pair not yet sent, with its column family; `None` once every
    /// pair has been put in a chunk.
    pending: Option<(SnapshotCf, Pair)>,
    /// Whether the last chunk has been returned.
    done: bool,
    /// A read failed: the cursor is lost, and going on could end the stream
    /// early with a chunk flagged last.
    failed: bool,
    _checkpoint_dir: RemoveOnDrop,
}

impl SnapshotSource {
    /// Takes a checkpoint of `store` into `dir`, which must not exist (its
    /// parent must), and opens it to be streamed. A store with an unfinished
    /// install is refused: it has no state to give.
    pub fn create(store: &Store, dir: &Path) -> Result<SnapshotSource, Error> {
        if dir.exists() {
            let dir = dir.display();
            return Err(refused(format!("the checkpoint directory {dir} already exists")));
        }
        Checkpoint::new(store.db.as_ref())?.create_checkpoint(dir)?;
        SnapshotSource::over_checkpoint(RemoveOnDrop(dir.to_path_buf()))
    }

    /// Opens the checkpoint `dir` (made by this module, or restored from a
    /// backup) to be streamed, and removes it when dropped.
    pub(crate) fn open_checkpoint(dir: &Path) -> Result<SnapshotSource, Error> {
        SnapshotSource::over_checkpoint(RemoveOnDrop(dir.to_path_buf()))
    }

    fn over_checkpoint(checkpoint_dir: RemoveOnDrop) -> Result<SnapshotSource, Error> {
        let dir = checkpoint_dir.0.clone();
        let dir = dir.as_path();
        let db = DB::open_cf_for_read_only(&Options::default(), dir, COLUMN_FAMILIES, false)?;
        let meta = cf_handle(&db, SnapshotCf::Meta)?;
        if db.get_pinned_cf(meta, META_SNAPSHOT_INSTALL)?.is_some() {
            return Err(Error::SnapshotIncomplete);
        }
        let applied_index = match db.get_cf(meta, META_APPLIED_INDEX)? {
            Some(bytes) => u64_from(&bytes, "meta applied index")?,
            None => 0,
        };
        let mut source = SnapshotSource {
            db,
            applied_index,
            next_seq: 0,
            pending: None,
            done: false,
            failed: false,
            _checkpoint_dir: checkpoint_dir,
        };
        source.pending = source.first_pair_from(0)?;
        tracing::info!(applied_index, dir = %dir.display(), "snapshot checkpoint taken");
        Ok(source)
    }

    /// The index of the last log entry applied to the snapshot's state.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The next chunk, with at most `max_bytes` (capped at
    /// [`CHUNK_PAYLOAD_BYTES_MAX`]) of key+value bytes, except that a chunk
    /// always holds at least one pair: a single pair can exceed `max_bytes`.
    /// `None` after the last chunk. After an error every later call fails:
    /// take a new snapshot.
    pub fn next_chunk(&mut self, max_bytes: usize) -> Result<Option<Chunk>, Error> {
        if self.failed {
            return Err(refused("an earlier read of this snapshot failed; take a new one".into()));
        }
        if self.done {
            return Ok(None);
        }
        let result = self.read_chunk(max_bytes);
        self.failed = result.is_err();
        result.map(Some)
    }

    fn read_chunk(&mut self, max_bytes: usize) -> Result<Chunk, Error> {
        let budget = max_bytes.min(CHUNK_PAYLOAD_BYTES_MAX);
        let Some((cf, first)) = self.pending.take() else {
            // An empty state: one empty last chunk, which carries the index.
            return Ok(self.emit(SnapshotCf::Meta, Vec::new()));
        };
        let mut bytes = first.0.len() + first.1.len();
        if bytes > CHUNK_PAYLOAD_BYTES_MAX {
            return Err(refused(format!(
                "a pair of {bytes} bytes in '{}' is over the chunk limit of {}",
                cf.name(),
                CHUNK_PAYLOAD_BYTES_MAX
            )));
        }
        // The smallest key above the first is the first with 0x00 appended.
        let mut start = first.0.clone();
        start.push(0);
        let mut pairs = vec![first];
        let handle = cf_handle(&self.db, cf)?;
        for item in self.db.iterator_cf(handle, IteratorMode::From(&start, Direction::Forward)) {
            let (key, value) = item?;
            let size = key.len() + value.len();
            if pairs.len() == CHUNK_PAIRS_MAX || bytes + size > budget {
                self.pending = Some((cf, (key.into_vec(), value.into_vec())));
                break;
            }
            bytes += size;
            pairs.push((key.into_vec(), value.into_vec()));
        }
        if self.pending.is_none() {
            self.pending = self.first_pair_from(cf as usize + 1)?;
        }
        Ok(self.emit(cf, pairs))
    }

    /// Numbers the chunk and flags it last when nothing is left to send.
    fn emit(&mut self, cf: SnapshotCf, pairs: Vec<Pair>) -> Chunk {
        assert!(!self.done, "no chunk comes after the last");
        let last = self.pending.is_none();
        let chunk = Chunk::new(self.applied_index, self.next_seq, cf, pairs, last);
        self.next_seq += 1;
        self.done = last;
        chunk
    }

    /// The first pair of the first non-empty column family at or after
    /// `position` in stream order.
    fn first_pair_from(&self, position: usize) -> Result<Option<(SnapshotCf, Pair)>, Error> {
        for cf in SnapshotCf::ALL.into_iter().skip(position) {
            let handle = cf_handle(&self.db, cf)?;
            if let Some(item) = self.db.iterator_cf(handle, IteratorMode::Start).next() {
                let (key, value) = item?;
                return Ok(Some((cf, (key.into_vec(), value.into_vec()))));
            }
        }
        Ok(None)
    }
}

fn cf_handle(db: &DB, cf: SnapshotCf) -> Result<&ColumnFamily, Error> {
    db.cf_handle(cf.name()).ok_or_else(|| Error::Corrupt {
        what: format!("checkpoint lacks column family '{}'", cf.name()),
    })
}

/// A snapshot being installed into a live store. Dropping it before
/// [`SnapshotSink::finish`] leaves the store incomplete.
pub struct SnapshotSink {
    store: Store,
    applied_index: u64,
    next_seq: u64,
    /// The column family and key of the last pair written: the stream goes on
    /// strictly above it.
    position: Option<(SnapshotCf, Vec<u8>)>,
    /// Whether the stream's `meta` carried the applied index.
    applied_index_received: bool,
    last_received: bool,
    /// A write failed: what is on disk is unknown.
    poisoned: bool,
}

impl SnapshotSink {
    /// Marks the store incomplete and empties its state machine, in one synced
    /// write, to receive the snapshot at `applied_index`. Works over an
    /// incomplete store. The store's applied index reads 0 until
    /// [`SnapshotSink::finish`]. Nothing may apply entries to the store until
    /// the install is finished and the state machine reloaded.
    pub fn begin(store: &Store, applied_index: u64) -> Result<SnapshotSink, Error> {
        let mut batch = WriteBatch::default();
        for cf in SnapshotCf::ALL {
            let handle = store.cf(cf.name());
            // Keys have no maximum: the range ends just above the last key there is.
            if let Some(item) = store.db.iterator_cf(handle, IteratorMode::End).next() {
                let (last_key, _) = item?;
                let mut end = last_key.into_vec();
                end.push(0);
                batch.delete_range_cf(handle, Vec::new(), end);
            }
        }
        // After the range deletion in the same batch, so the marker survives it.
        batch.put_cf(store.cf(CF_META), META_SNAPSHOT_INSTALL, applied_index.to_be_bytes());
        store.write(batch, Write::Durable)?;
        store.publish_applied(0);
        tracing::info!(applied_index, "snapshot install begun");
        Ok(SnapshotSink {
            store: store.clone(),
            applied_index,
            next_seq: 0,
            position: None,
            applied_index_received: false,
            last_received: false,
            poisoned: false,
        })
    }

    /// Checks the next chunk and writes its pairs (unsynced). A refused chunk
    /// writes nothing and leaves the sink as it was.
    pub fn push(&mut self, chunk: Chunk) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let carries_applied_index = self.check(&chunk)?;
        let handle = self.store.cf(chunk.cf.name());
        let mut batch = WriteBatch::default();
        for (key, value) in &chunk.pairs {
            batch.put_cf(handle, key, value);
        }
        if let Err(error) = self.store.write(batch, Write::Unsynced) {
            self.poisoned = true;
            return Err(error);
        }
        self.next_seq += 1;
        self.last_received = chunk.last;
        self.applied_index_received |= carries_applied_index;
        if let Some((key, _)) = chunk.pairs.into_iter().next_back() {
            self.position = Some((chunk.cf, key));
        }
        Ok(())
    }

    /// Completes the install: requires the last chunk, removes the marker with
    /// a synced write (which makes the whole install durable), and returns the
    /// installed applied index. Reload the state machine afterwards.
    pub fn finish(self) -> Result<u64, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        if !self.last_received {
            return Err(refused(format!(
                "the stream stopped after {} chunks, without its last chunk",
                self.next_seq
            )));
        }
        if !self.applied_index_received && self.applied_index != 0 {
            return Err(refused(format!(
                "the stream of the snapshot at index {} carried no applied index in 'meta'",
                self.applied_index
            )));
        }
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.store.cf(CF_META), META_SNAPSHOT_INSTALL);
        self.store.write(batch, Write::Durable)?;
        self.store.publish_applied(self.applied_index);
        tracing::info!(
            applied_index = self.applied_index,
            chunks = self.next_seq,
            "snapshot installed"
        );
        Ok(self.applied_index)
    }

    /// Everything `push` checks before writing; answers whether the chunk
    /// carries the applied index.
    fn check(&self, chunk: &Chunk) -> Result<bool, Error> {
        let seq = chunk.seq;
        if chunk.checksum != chunk.compute_checksum() {
            return Err(refused(format!("chunk {seq} fails its checksum: corrupt in transit")));
        }
        if self.last_received {
            return Err(refused(format!("chunk {seq} came after the last chunk")));
        }
        if chunk.applied_index != self.applied_index {
            return Err(refused(format!(
                "chunk {seq} belongs to the snapshot at index {}, not {}",
                chunk.applied_index, self.applied_index
            )));
        }
        if seq != self.next_seq {
            return Err(refused(format!("expected chunk {}, got chunk {seq}", self.next_seq)));
        }
        chunk.check_bounds()?;
        self.check_order(chunk)?;
        if chunk.cf == SnapshotCf::Meta {
            return self.check_meta(chunk);
        }
        Ok(false)
    }

    /// Column families never go back, and keys rise strictly within one.
    fn check_order(&self, chunk: &Chunk) -> Result<(), Error> {
        let mut previous = match &self.position {
            Some((cf, key)) if *cf == chunk.cf => Some(key.as_slice()),
            Some((cf, _)) if *cf > chunk.cf => {
                return Err(refused(format!(
                    "chunk {} goes back from '{}' to '{}'",
                    chunk.seq,
                    cf.name(),
                    chunk.cf.name()
                )));
            }
            _ => None,
        };
        for (key, _) in &chunk.pairs {
            if previous.is_some_and(|previous| key.as_slice() <= previous) {
                return Err(refused(format!(
                    "chunk {} has keys of '{}' out of order",
                    chunk.seq,
                    chunk.cf.name()
                )));
            }
            previous = Some(key);
        }
        Ok(())
    }

    /// The stream's `meta` holds counters the state machine reads back, never
    /// the install marker.
    fn check_meta(&self, chunk: &Chunk) -> Result<bool, Error> {
        let mut carries_applied_index = false;
        for (key, value) in &chunk.pairs {
            let key = key.as_slice();
            if key == META_SNAPSHOT_INSTALL {
                return Err(refused(format!("chunk {} carries an install marker", chunk.seq)));
            }
            if key != META_APPLIED_INDEX && key != META_SESSION_COUNT {
                continue;
            }
            let number = <[u8; 8]>::try_from(value.as_slice()).map(u64::from_be_bytes);
            let name = String::from_utf8_lossy(key);
            let Ok(number) = number else {
                return Err(refused(format!(
                    "chunk {}: meta '{name}' is {} bytes, not 8",
                    chunk.seq,
                    value.len()
                )));
            };
            if key == META_APPLIED_INDEX {
                if number != self.applied_index {
                    return Err(refused(format!(
                        "chunk {}: the state's applied index is {number}, the snapshot's {}",
                        chunk.seq, self.applied_index
                    )));
                }
                carries_applied_index = true;
            }
        }
        Ok(carries_applied_index)
    }
}

impl fmt::Debug for SnapshotSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotSource")
            .field("applied_index", &self.applied_index)
            .field("next_seq", &self.next_seq)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SnapshotSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotSink")
            .field("applied_index", &self.applied_index)
            .field("next_seq", &self.next_seq)
            .field("last_received", &self.last_received)
            .finish_non_exhaustive()
    }
}

/// The wire form of a chunk's pairs: a sequence of (bytes, bytes). Keys and
/// values go as byte strings rather than sequences of `u8` (the same postcard
/// bytes, decoded at once instead of byte by byte), and decoding refuses more
/// than [`CHUNK_PAIRS_MAX`] pairs before reserving room for them.
mod wire {
    use std::fmt;

    use serde::de::{Error as _, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Pair, CHUNK_PAIRS_MAX, CHUNK_PAYLOAD_BYTES_MAX};

    pub(super) fn serialize<S: Serializer>(
        pairs: &[Pair],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(pairs.iter().map(|(key, value)| (Bytes(key), Bytes(value))))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Pair>, D::Error> {
        deserializer.deserialize_seq(PairsVisitor)
    }

    struct Bytes<'a>(&'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    struct ByteBuf(Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteBuf, D::Error> {
            deserializer.deserialize_byte_buf(ByteBufVisitor)
        }
    }

    struct ByteBufVisitor;

    impl<'de> Visitor<'de> for ByteBufVisitor {
        type Value = ByteBuf;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a byte string of at most {CHUNK_PAYLOAD_BYTES_MAX} bytes")
        }

        fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ByteBuf, E> {
            Ok(ByteBuf(bytes.to_vec()))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, bytes: Vec<u8>) -> Result<ByteBuf, E> {
            Ok(ByteBuf(bytes))
        }

        /// Formats without byte strings send a sequence of numbers.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
            let mut bytes = Vec::new();
            while let Some(byte) = seq.next_element::<u8>()? {
                if bytes.len() == CHUNK_PAYLOAD_BYTES_MAX {
                    return Err(A::Error::invalid_length(bytes.len() + 1, &self));
                }
                bytes.push(byte);
            }
            Ok(ByteBuf(bytes))
        }
    }

    struct PairsVisitor;

    impl<'de> Visitor<'de> for PairsVisitor {
        type Value = Vec<Pair>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {CHUNK_PAIRS_MAX} key/value pairs")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Pair>, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            if announced > CHUNK_PAIRS_MAX {
                return Err(A::Error::invalid_length(announced, &self));
            }
            let mut pairs = Vec::with_capacity(announced);
            while let Some((ByteBuf(key), ByteBuf(value))) = seq.next_element()? {
                if pairs.len() == CHUNK_PAIRS_MAX {
                    return Err(A::Error::invalid_length(pairs.len() + 1, &self));
                }
                pairs.push((key, value));
            }
            Ok(pairs)
        }
    }
}

/// After a crash during an install, empties the state machine (to applied
/// index 0, as on a new node) so that it can be opened and catch up from its
/// peers again; answers whether there was an unfinished install. The log is
/// not touched.
pub fn discard_unfinished_install(store: &Store) -> Result<bool, Error> {
    if !store.snapshot_install_incomplete()? {
        return Ok(false);
    }
    let mut sink = SnapshotSink::begin(store, 0)?;
    sink.push(Chunk::new(0, 0, SnapshotCf::Meta, Vec::new(), true))?;
    sink.finish()?;
    Ok(true)
}
