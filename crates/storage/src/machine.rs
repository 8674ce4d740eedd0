//! The state machine: applies batches of decided log entries to the store.
//!
//! [`StateMachine::apply`] is the one way state changes. It takes entries
//! `(index, command)` with contiguous indexes starting right after the applied
//! index, computes every effect, and writes the effects together with the new
//! applied index in one synced RocksDB `WriteBatch`. A crash therefore leaves the
//! store at the end of some batch, never inside one, and a restarted node resumes
//! from [`StateMachine::applied_index`]. Whatever orders the commands (the local
//! log of a single node, OmniPaxos in a cluster) feeds this same function.
//!
//! Invariants:
//! - Determinism: the outcome of every entry depends only on the state after the
//!   entry before it, never on how entries were grouped into batches, on time or
//!   on randomness. Entries later in a batch see the effects of earlier ones
//!   through an overlay of pending writes.
//! - Exactly once: a command with an id `(session, seq)` is applied only if `seq`
//!   is above the session's last; a repeat of the last is answered with the
//!   stored outcome and index, and changes nothing. Sessions are opened through
//!   the log ([`Op::OpenSession`]); a command of an unknown session is refused,
//!   so an expired session can never make a retry apply twice.
//! - Sessions are bounded: at every index that is a multiple of
//!   [`SESSION_GC_INTERVAL_ENTRIES`] the least recently used sessions above
//!   [`SESSIONS_MAX`] are evicted, from the state committed before that entry,
//!   so every replica evicts the same ones.
//!
//! A storage error leaves the in-memory counters unreliable: the state machine
//! refuses every later call, and the node must stop and restart from disk.
//!
//! A store with an unfinished snapshot install ([`crate::snapshot`]) holds a
//! partial state: [`StateMachine::open`] refuses it with
//! [`Error::SnapshotIncomplete`]. After a snapshot is installed under a running
//! state machine, [`StateMachine::reload`] picks up the installed state.

use std::collections::{HashMap, HashSet};

use rocksdb::{IteratorMode, WriteBatch};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::changes::{self, Kept, Subject, Window, META_CHANGES_BYTES, META_CHANGES_FIRST};
use crate::cluster_version::{self, ClusterVersion, Feature, CLUSTER_VERSION_KEY, KV_INCREMENT};
use crate::command::{
    validate_doc_id, validate_doc_size, validate_kv_key, validate_kv_value, validate_table_name,
    ApplyError, Command, CommandId, Conflict, Doc, Op, Outcome, INSERT_DOCS_MAX, SEQ_GAP_MAX,
    SYSTEM_TABLE,
};
use crate::engine::{
    doc_key, doc_prefix, doc_prefix_end, Store, Write, CF_CHANGES, CF_DOCS, CF_KV, CF_META,
    CF_SESSIONS, CF_SESSION_LRU, CF_TABLES, META_APPLIED_INDEX, META_SESSION_COUNT,
};
use crate::fnv::Fnv1a;
use crate::Error;

/// Sessions kept before the least recently used are evicted.
pub const SESSIONS_MAX: u64 = 65_536;
/// Eviction runs at indexes that are multiples of this.
pub const SESSION_GC_INTERVAL_ENTRIES: u64 = 4096;

/// An applied entry's answer, with the index it took effect at (for a repeated
/// command: the index of its first application).
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub index: u64,
    pub outcome: Outcome,
}

#[derive(Serialize, Deserialize)]
struct SessionRecord {
    last_seq: u64,
    last_index: u64,
    /// Fingerprint of the last command's op: a repeat must be the same command.
    op_hash: u64,
    outcome: Outcome,
}

/// The single writer of a node's store.
pub struct StateMachine {
    store: Store,
    applied_index: u64,
    session_count: u64,
    /// Where the change history begins and its size ([`crate::changes`]).
    kept: Kept,
    window: Window,
    poisoned: bool,
}

impl StateMachine {
    /// Takes over the store as its only writer, resuming from its applied index.
    /// A store with an unfinished snapshot install is refused
    /// ([`Error::SnapshotIncomplete`]): install a snapshot again first.
    pub fn open(store: Store) -> Result<StateMachine, Error> {
        if store.snapshot_install_incomplete()? {
            return Err(Error::SnapshotIncomplete);
        }
        check_cluster_version(&store)?;
        // `Store::open` already read the applied index from disk.
        let applied_index = store.applied_index();
        let session_count = store.read_meta_u64(META_SESSION_COUNT)?;
        let kept = Kept::read(&store)?;
        let window = Window::default();
        Ok(StateMachine { store, applied_index, session_count, kept, window, poisoned: false })
    }

    /// Sets how much change history this node keeps, from the next batch on.
    pub fn set_changes_window(&mut self, window: Window) {
        self.window = window;
    }

    /// Reads the applied index and counters again from disk, as a restart
    /// would: call it after a snapshot was installed into this state machine's
    /// store (nothing may be applied between the install's begin and this).
    /// Fails, and poisons the state machine, if the install did not finish:
    /// once one does, [`StateMachine::open`] gives a new state machine.
    pub fn reload(&mut self) -> Result<(), Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let result = self.reload_inner();
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn reload_inner(&mut self) -> Result<(), Error> {
        if self.store.snapshot_install_incomplete()? {
            return Err(Error::SnapshotIncomplete);
        }
        check_cluster_version(&self.store)?;
        self.applied_index = self.store.read_meta_u64(META_APPLIED_INDEX)?;
        self.session_count = self.store.read_meta_u64(META_SESSION_COUNT)?;
        self.kept = Kept::read(&self.store)?;
        self.store.publish_applied(self.applied_index);
        Ok(())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// What applying `command` now would answer without executing it, when
    /// the state already settles it: the stored outcome of its session's last
    /// command if it is that command, a refusal if it reuses or precedes that
    /// sequence number. `None` when applying it would execute it (or decide
    /// nothing yet: a session not opened as far as this state goes). For a
    /// node whose state jumped past entries it never applied itself (a
    /// snapshot), to answer the requests those entries settled.
    pub fn recall(&self, command: &Command) -> Result<Option<Applied>, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let Some(id) = command.id else { return Ok(None) };
        let Some(record) = read_session(&self.store, id.session)? else { return Ok(None) };
        let index = self.applied_index;
        let outcome = if id.seq > record.last_seq {
            return Ok(None);
        } else if id.seq < record.last_seq {
            let last = record.last_seq;
            Outcome::Failed(ApplyError::StaleSequence { session: id.session, seq: id.seq, last })
        } else if record.op_hash != op_hash(&command.op) {
            Outcome::Failed(ApplyError::SequenceReused { session: id.session, seq: id.seq })
        } else {
            return Ok(Some(Applied { index: record.last_index, outcome: record.outcome }));
        };
        Ok(Some(Applied { index, outcome }))
    }

    /// Applies entries whose indexes run on from the applied index without gaps,
    /// and makes them durable (synced) before returning their outcomes.
    pub fn apply(&mut self, entries: &[(u64, Command)]) -> Result<Vec<Applied>, Error> {
        if self.poisoned {
            return Err(Error::Poisoned);
        }
        let result = self.apply_inner(entries);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn apply_inner(&mut self, entries: &[(u64, Command)]) -> Result<Vec<Applied>, Error> {
        let mut results = Vec::with_capacity(entries.len());
        let mut committed = self.applied_index;
        let mut batch = self.new_batch();
        for (index, command) in entries {
            assert_eq!(
                *index,
                self.applied_index + 1,
                "entries must follow the applied index without gaps"
            );
            if index % SESSION_GC_INTERVAL_ENTRIES == 0 {
                // Evict from committed state only, whatever the batching.
                self.commit(batch, false)?;
                committed = self.applied_index;
                batch = self.new_batch();
                self.evict_sessions(&mut batch)?;
            }
            let applied = self.apply_one(&mut batch, *index, command)?;
            self.applied_index = *index;
            results.push(applied);
        }
        if !entries.is_empty() {
            self.trim_changes(&mut batch, committed)?;
            self.commit(batch, true)?;
        }
        Ok(results)
    }

    fn new_batch(&self) -> Batch {
        Batch::new(self.store.clone(), self.window.entries > 0)
    }

    fn commit(&mut self, mut batch: Batch, sync: bool) -> Result<(), Error> {
        let meta = self.store.cf(CF_META);
        self.kept.bytes += batch.change_bytes;
        if !batch.record_changes {
            // No history is kept: it begins after what is applied.
            self.kept.first = self.applied_index + 1;
        }
        batch.wb.put_cf(meta, META_APPLIED_INDEX, self.applied_index.to_be_bytes());
        batch.wb.put_cf(meta, META_SESSION_COUNT, self.session_count.to_be_bytes());
        batch.wb.put_cf(meta, META_CHANGES_FIRST, self.kept.first.to_be_bytes());
        batch.wb.put_cf(meta, META_CHANGES_BYTES, self.kept.bytes.to_be_bytes());
        self.store.write(batch.wb, if sync { Write::Replayed } else { Write::Unsynced })?;
        self.store.publish_applied(self.applied_index);
        Ok(())
    }

    /// Trims the oldest history, whole entries at a time, when it outgrows
    /// the window; only records already committed (up to `committed`) go.
    fn trim_changes(&mut self, batch: &mut Batch, committed: u64) -> Result<(), Error> {
        if !batch.record_changes {
            return Ok(());
        }
        let kept = Kept { bytes: self.kept.bytes + batch.change_bytes, ..self.kept };
        let trim = changes::trim_to(&self.store, kept, self.window, self.applied_index, committed)?;
        if let Some((first, freed)) = trim {
            let cf = self.store.cf(CF_CHANGES);
            batch.wb.delete_range_cf(
                cf,
                changes::record_key(self.kept.first, 0, 0),
                changes::record_key(first, 0, 0),
            );
            self.kept.first = first;
            self.kept.bytes -= freed;
        }
        Ok(())
    }

    fn apply_one(
        &mut self,
        batch: &mut Batch,
        index: u64,
        command: &Command,
    ) -> Result<Applied, Error> {
        batch.begin_entry(index);
        let Some(id) = command.id else {
            let outcome = self.execute(batch, index, &command.op)?;
            return Ok(Applied { index, outcome });
        };
        if id.seq == 0 {
            let message = "sequence numbers start at 1".to_string();
            return Ok(Applied { index, outcome: Outcome::Failed(invalid(message)) });
        }
        let Some(record) = batch.session(id.session)? else {
            let outcome = Outcome::Failed(ApplyError::SessionUnknown { session: id.session });
            return Ok(Applied { index, outcome });
        };
        let hash = op_hash(&command.op);
        if id.seq == record.last_seq {
            if record.op_hash != hash {
                // A client bug (or a guessed session): answering the first
                // command's outcome would acknowledge a write never applied.
                let error = ApplyError::SequenceReused { session: id.session, seq: id.seq };
                return Ok(Applied { index, outcome: Outcome::Failed(error) });
            }
            return Ok(Applied { index: record.last_index, outcome: record.outcome });
        }
        if id.seq < record.last_seq {
            let error = ApplyError::StaleSequence {
                session: id.session,
                seq: id.seq,
                last: record.last_seq,
            };
            return Ok(Applied { index, outcome: Outcome::Failed(error) });
        }
        if id.seq - record.last_seq > SEQ_GAP_MAX {
            let message = format!(
                "sequence {} of session {} is more than {SEQ_GAP_MAX} past its last ({}): \
                 a session's sequence numbers count up by one",
                id.seq, id.session, record.last_seq
            );
            return Ok(Applied { index, outcome: Outcome::Failed(invalid(message)) });
        }
        let outcome = self.execute(batch, index, &command.op)?;
        batch.touch_session(id, record.last_index, index, hash, &outcome);
        Ok(Applied { index, outcome })
    }

    fn execute(&mut self, batch: &mut Batch, index: u64, op: &Op) -> Result<Outcome, Error> {
        let outcome = match op {
            Op::Noop | Op::Barrier { .. } => Ok(Ok(Outcome::Done)),
            Op::OpenSession { .. } => {
                let id = CommandId { session: index, seq: 0 };
                batch.touch_session(id, 0, index, 0, &Outcome::Done);
                self.session_count += 1;
                Ok(Ok(Outcome::SessionOpened { session: index }))
            }
            Op::CreateTable { table } => create_table(batch, index, table),
            Op::DropTable { table } => drop_table(batch, table),
            Op::Insert { table, docs, conflict } => insert(batch, table, docs, *conflict),
            Op::Replace { table, doc } => replace(batch, table, doc),
            Op::Update { table, id, patch } => update(batch, table, id, patch),
            Op::Delete { table, id } => delete(batch, table, id),
            Op::KvPut { key, value } => kv_put(batch, key, value),
            Op::KvDelete { key } => kv_delete(batch, key),
            Op::SystemPut { key, json, expect_revision } if key == CLUSTER_VERSION_KEY => {
                set_cluster_version(batch, index, json, *expect_revision)
            }
            Op::SystemPut { key, json, expect_revision } => {
                system_put(batch, index, key, json, *expect_revision)
            }
            Op::KvIncrement { key, by } => kv_increment(batch, key, *by),
        };
        Ok(match outcome? {
            Ok(outcome) => outcome,
            Err(refusal) => Outcome::Failed(refusal),
        })
    }

    /// Deletes the least recently used sessions above [`SESSIONS_MAX`].
    fn evict_sessions(&mut self, batch: &mut Batch) -> Result<(), Error> {
        if self.session_count <= SESSIONS_MAX {
            return Ok(());
        }
        let excess = self.session_count - SESSIONS_MAX;
        let lru = self.store.cf(CF_SESSION_LRU);
        let mut evicted = 0;
        for item in self.store.db.iterator_cf(lru, IteratorMode::Start) {
            if evicted == excess {
                break;
            }
            let (key, _) = item?;
            if key.len() != 16 {
                return Err(Error::Corrupt { what: "session_lru key is not 16 bytes".into() });
            }
            batch.delete(Cf::SessionLru, key.to_vec());
            batch.delete(Cf::Sessions, key[8..].to_vec());
            evicted += 1;
        }
        self.session_count -= evicted;
        tracing::debug!(evicted, sessions = self.session_count, "evicted idle sessions");
        Ok(())
    }
}

/// Effects of a command: `Err` is a storage fault, `Ok(Err)` a refusal.
type Effect = Result<Result<Outcome, ApplyError>, Error>;

fn invalid(message: String) -> ApplyError {
    ApplyError::Invalid { message }
}

fn require_table(batch: &Batch, table: &str) -> Result<Result<(), ApplyError>, Error> {
    if let Err(message) = validate_table_name(table) {
        return Ok(Err(invalid(message)));
    }
    if batch.get(Cf::Tables, table.as_bytes())?.is_none() {
        return Ok(Err(ApplyError::TableNotFound { table: table.to_string() }));
    }
    Ok(Ok(()))
}

/// Parses a document and checks that it is an object whose `id` is `id`.
fn parse_doc(doc: &Doc) -> Result<Value, ApplyError> {
    validate_doc_id(&doc.id).map_err(invalid)?;
    validate_doc_size(&doc.id, doc.json.len()).map_err(invalid)?;
    let value: Value = serde_json::from_str(&doc.json)
        .map_err(|e| invalid(format!("document '{}' is not valid JSON: {e}", doc.id)))?;
    check_doc(&doc.id, &value)?;
    Ok(value)
}

fn check_doc(id: &str, value: &Value) -> Result<(), ApplyError> {
    let Some(object) = value.as_object() else {
        return Err(invalid(format!("document '{id}' is not a JSON object")));
    };
    if object.get("id").and_then(Value::as_str) != Some(id) {
        return Err(invalid(format!("document '{id}' must keep \"id\": \"{id}\"")));
    }
    Ok(())
}

fn create_table(batch: &mut Batch, index: u64, table: &str) -> Effect {
    if let Err(message) = validate_table_name(table) {
        return Ok(Err(invalid(message)));
    }
    if batch.get(Cf::Tables, table.as_bytes())?.is_some() {
        return Ok(Ok(Outcome::TableCreated { created: false }));
    }
    batch.put(Cf::Tables, table.as_bytes().to_vec(), index.to_be_bytes().to_vec());
    Ok(Ok(Outcome::TableCreated { created: true }))
}

fn drop_table(batch: &mut Batch, table: &str) -> Effect {
    if let Err(refusal) = require_table(batch, table)? {
        return Ok(Err(refusal));
    }
    batch.delete(Cf::Tables, table.as_bytes().to_vec());
    batch.drop_docs(table);
    batch.change(Subject::TableDropped { table: table.to_string() }, None, None);
    Ok(Ok(Outcome::TableDropped))
}

fn insert(batch: &mut Batch, table: &str, docs: &[Doc], conflict: Conflict) -> Effect {
    if let Err(refusal) = require_table(batch, table)? {
        return Ok(Err(refusal));
    }
    if docs.is_empty() || docs.len() > INSERT_DOCS_MAX {
        let message =
            format!("an insert carries 1 to {INSERT_DOCS_MAX} documents (got {})", docs.len());
        return Ok(Err(invalid(message)));
    }
    let mut seen = HashSet::with_capacity(docs.len());
    let mut parsed = Vec::with_capacity(docs.len());
    let mut existing = Vec::with_capacity(docs.len());
    let mut clashes = Vec::new();
    for doc in docs {
        let value = match parse_doc(doc) {
            Ok(value) => value,
            Err(refusal) => return Ok(Err(refusal)),
        };
        if !seen.insert(doc.id.as_str()) {
            return Ok(Err(invalid(format!("the insert holds id '{}' twice", doc.id))));
        }
        let old = batch.get(Cf::Docs, &doc_key(table, &doc.id))?;
        if old.is_some() {
            clashes.push(doc.id.clone());
        }
        parsed.push(value);
        existing.push(old);
    }
    if conflict == Conflict::Error && !clashes.is_empty() {
        return Ok(Err(ApplyError::Conflict { table: table.to_string(), ids: clashes }));
    }
    // Every document's final JSON first, then the writes: a refusal midway
    // must leave nothing of the insert behind.
    let (mut inserted, mut replaced, mut updated) = (0, 0, 0);
    let mut writes = Vec::with_capacity(docs.len());
    for ((doc, value), old) in docs.iter().zip(parsed).zip(existing) {
        let json = match (&old, conflict) {
            (None, _) => {
                inserted += 1;
                doc.json.clone()
            }
            (Some(_), Conflict::Replace | Conflict::Error) => {
                replaced += 1;
                doc.json.clone()
            }
            (Some(old), Conflict::Update) => {
                updated += 1;
                match merge(&doc.id, old, &value)? {
                    Ok(json) => json,
                    Err(refusal) => return Ok(Err(refusal)),
                }
            }
        };
        writes.push((doc, old, json.into_bytes()));
    }
    for (doc, old, json) in writes {
        let subject = Subject::Doc { table: table.to_string(), id: doc.id.clone() };
        batch.change(subject, old.as_deref(), Some(&json));
        batch.put(Cf::Docs, doc_key(table, &doc.id), json);
    }
    let ids = docs.iter().map(|doc| doc.id.clone()).collect();
    Ok(Ok(Outcome::Inserted { inserted, replaced, updated, ids }))
}

/// Merges `patch` into the stored document `old` (RFC 7396) and checks the result.
fn merge(id: &str, old: &[u8], patch: &Value) -> Result<Result<String, ApplyError>, Error> {
    let mut value: Value = serde_json::from_slice(old)
        .map_err(|e| Error::Corrupt { what: format!("stored document '{id}' is not JSON: {e}") })?;
    json_patch::merge(&mut value, patch);
    if let Err(refusal) = check_doc(id, &value) {
        let message = format!("{refusal}: a patch cannot remove or change a document's id");
        return Ok(Err(invalid(message)));
    }
    let json = value.to_string();
    if let Err(message) = validate_doc_size(id, json.len()) {
        return Ok(Err(invalid(format!("the patch would make {message}"))));
    }
    Ok(Ok(json))
}

fn replace(batch: &mut Batch, table: &str, doc: &Doc) -> Effect {
    if let Err(refusal) = require_table(batch, table)? {
        return Ok(Err(refusal));
    }
    if let Err(refusal) = parse_doc(doc) {
        return Ok(Err(refusal));
    }
    let key = doc_key(table, &doc.id);
    let old = batch.get(Cf::Docs, &key)?;
    let created = old.is_none();
    let json = doc.json.clone().into_bytes();
    let subject = Subject::Doc { table: table.to_string(), id: doc.id.clone() };
    batch.change(subject, old.as_deref(), Some(&json));
    batch.put(Cf::Docs, key, json);
    Ok(Ok(Outcome::Replaced { created }))
}

fn update(batch: &mut Batch, table: &str, id: &str, patch: &str) -> Effect {
    if let Err(refusal) = require_table(batch, table)? {
        return Ok(Err(refusal));
    }
    if let Err(message) = validate_doc_id(id) {
        return Ok(Err(invalid(message)));
    }
    let patch: Value = match serde_json::from_str(patch) {
        Ok(patch) => patch,
        Err(e) => return Ok(Err(invalid(format!("the patch is not valid JSON: {e}")))),
    };
    let key = doc_key(table, id);
    let Some(old) = batch.get(Cf::Docs, &key)? else {
        return Ok(Err(ApplyError::DocNotFound { table: table.to_string(), id: id.to_string() }));
    };
    let json = match merge(id, &old, &patch)? {
        Ok(json) => json,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let subject = Subject::Doc { table: table.to_string(), id: id.to_string() };
    batch.change(subject, Some(&old), Some(json.as_bytes()));
    batch.put(Cf::Docs, key, json.clone().into_bytes());
    Ok(Ok(Outcome::Updated { json }))
}

fn delete(batch: &mut Batch, table: &str, id: &str) -> Effect {
    if let Err(refusal) = require_table(batch, table)? {
        return Ok(Err(refusal));
    }
    if let Err(message) = validate_doc_id(id) {
        return Ok(Err(invalid(message)));
    }
    let key = doc_key(table, id);
    let old = batch.get(Cf::Docs, &key)?;
    let existed = old.is_some();
    if existed {
        let subject = Subject::Doc { table: table.to_string(), id: id.to_string() };
        batch.change(subject, old.as_deref(), None);
        batch.delete(Cf::Docs, key);
    }
    Ok(Ok(Outcome::Deleted { existed }))
}

fn kv_put(batch: &mut Batch, key: &str, value: &[u8]) -> Effect {
    if let Err(message) = validate_kv_key(key) {
        return Ok(Err(invalid(message)));
    }
    if let Err(message) = validate_kv_value(value.len()) {
        return Ok(Err(invalid(message)));
    }
    // The old value is read only for the history.
    let old = if batch.record_changes { batch.get(Cf::Kv, key.as_bytes())? } else { None };
    batch.change(Subject::Kv { key: key.to_string() }, old.as_deref(), Some(value));
    batch.put(Cf::Kv, key.as_bytes().to_vec(), value.to_vec());
    Ok(Ok(Outcome::KvWritten))
}

/// A system record: a JSON object under a document id, in the system table
/// (which needs no creating), its `revision` set to the entry's index.
fn system_put(
    batch: &mut Batch,
    index: u64,
    key: &str,
    json: &str,
    expect_revision: Option<u64>,
) -> Effect {
    if let Err(message) = validate_doc_id(key) {
        return Ok(Err(invalid(message)));
    }
    let mut value = match serde_json::from_str::<Value>(json) {
        Ok(value @ Value::Object(_)) => value,
        Ok(_) => return Ok(Err(invalid(format!("system record '{key}' is not a JSON object")))),
        Err(e) => return Ok(Err(invalid(format!("system record '{key}' is not valid JSON: {e}")))),
    };
    let doc_key = doc_key(SYSTEM_TABLE, key);
    let current = batch.get(Cf::Docs, &doc_key)?;
    if let Some(expected) = expect_revision {
        // A stored record is JSON the machine wrote: unreadable means corrupt.
        let actual = match &current {
            None => 0,
            Some(bytes) => serde_json::from_slice::<Value>(bytes)
                .map_err(|e| Error::Corrupt { what: format!("system record '{key}': {e}") })?
                ["revision"]
                .as_u64()
                .unwrap_or(0),
        };
        if actual != expected {
            return Ok(Err(ApplyError::RevisionMismatch {
                key: key.to_string(),
                expected,
                actual,
            }));
        }
    }
    value["revision"] = Value::from(index);
    let json = value.to_string().into_bytes();
    let created = current.is_none();
    let subject = Subject::Doc { table: SYSTEM_TABLE.to_string(), id: key.to_string() };
    batch.change(subject, current.as_deref(), Some(&json));
    batch.put(Cf::Docs, doc_key, json);
    Ok(Ok(Outcome::Replaced { created }))
}

/// Refuses a store at a cluster version this binary does not run.
fn check_cluster_version(store: &Store) -> Result<(), Error> {
    let cluster = store.cluster_version()?;
    let supported = cluster_version::supported();
    if supported.contains(cluster) {
        return Ok(());
    }
    Err(Error::ClusterVersion { cluster: cluster.to_string(), supported: supported.to_string() })
}

/// The cluster version in the state as of this point of the batch.
fn batch_cluster_version(batch: &Batch) -> Result<ClusterVersion, Error> {
    match batch.get(Cf::Docs, &doc_key(SYSTEM_TABLE, CLUSTER_VERSION_KEY))? {
        None => Ok(ClusterVersion::BASE),
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            cluster_version::from_record(&text).map_err(|what| Error::Corrupt { what })
        }
    }
}

/// Refuses, the same on every replica, a command of a feature the cluster
/// version does not turn on yet.
fn gate(batch: &Batch, feature: Feature) -> Result<Result<(), ApplyError>, Error> {
    let cluster = batch_cluster_version(batch)?;
    if feature.allowed_at(cluster) {
        return Ok(Ok(()));
    }
    Ok(Err(invalid(feature.refusal(cluster))))
}

/// Finalizing: raises the cluster version record. Its JSON must be
/// `{"version": "MAJOR.MINOR"}`, at or above the current version; it is
/// stored in that one form. A version this binary does not run is a fault,
/// not an answer: the node stops before applying what it may not know,
/// while the nodes that run it go on.
fn set_cluster_version(
    batch: &mut Batch,
    index: u64,
    json: &str,
    expect_revision: Option<u64>,
) -> Effect {
    let version = match cluster_version::from_record(json) {
        Ok(version) => version,
        Err(message) => return Ok(Err(invalid(message))),
    };
    let current = batch_cluster_version(batch)?;
    if version < current {
        return Ok(Err(invalid(format!(
            "the cluster version is {current}, and it never goes down (asked: {version})"
        ))));
    }
    let supported = cluster_version::supported();
    if !supported.contains(version) {
        return Err(Error::ClusterVersion {
            cluster: version.to_string(),
            supported: supported.to_string(),
        });
    }
    system_put(
        batch,
        index,
        CLUSTER_VERSION_KEY,
        &cluster_version::record_json(version),
        expect_revision,
    )
}

/// Adds to a counter of the key-value space.
fn kv_increment(batch: &mut Batch, key: &str, by: i64) -> Effect {
    if let Err(refusal) = gate(batch, KV_INCREMENT)? {
        return Ok(Err(refusal));
    }
    if let Err(message) = validate_kv_key(key) {
        return Ok(Err(invalid(message)));
    }
    let old = batch.get(Cf::Kv, key.as_bytes())?;
    let current = match old.as_deref().map(cluster_version::parse_counter) {
        None => 0,
        Some(Some(value)) => value,
        Some(None) => {
            let message = format!("the value under key '{key}' is not a decimal integer");
            return Ok(Err(invalid(message)));
        }
    };
    let Some(value) = current.checked_add(by) else {
        let message = format!("adding {by} to {current} under key '{key}' overflows 64 bits");
        return Ok(Err(invalid(message)));
    };
    let text = value.to_string().into_bytes();
    batch.change(Subject::Kv { key: key.to_string() }, old.as_deref(), Some(&text));
    batch.put(Cf::Kv, key.as_bytes().to_vec(), text);
    Ok(Ok(Outcome::Counted { value }))
}

fn kv_delete(batch: &mut Batch, key: &str) -> Effect {
    if let Err(message) = validate_kv_key(key) {
        return Ok(Err(invalid(message)));
    }
    let old = batch.get(Cf::Kv, key.as_bytes())?;
    let existed = old.is_some();
    if existed {
        batch.change(Subject::Kv { key: key.to_string() }, old.as_deref(), None);
        batch.delete(Cf::Kv, key.as_bytes().to_vec());
    }
    Ok(Ok(Outcome::Deleted { existed }))
}

/// The column families a batch writes, as a hashable name for the overlay.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Cf {
    Tables,
    Docs,
    Kv,
    Sessions,
    SessionLru,
}

impl Cf {
    fn name(self) -> &'static str {
        match self {
            Cf::Tables => CF_TABLES,
            Cf::Docs => CF_DOCS,
            Cf::Kv => CF_KV,
            Cf::Sessions => CF_SESSIONS,
            Cf::SessionLru => CF_SESSION_LRU,
        }
    }
}

/// A `WriteBatch` that can be read back: pending writes shadow the store.
struct Batch {
    store: Store,
    wb: WriteBatch,
    /// Pending point writes; `None` is a deletion. Only looked up, never
    /// iterated, so its order cannot leak into the outcome.
    pending: HashMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    /// Tables whose documents were range-deleted in this batch.
    dropped: HashSet<String>,
    /// Whether changes go into the history ([`crate::changes`]).
    record_changes: bool,
    /// Bytes of the history's records this batch writes.
    change_bytes: u64,
    /// The entry being applied, and the position of its next change.
    index: u64,
    position: u32,
}

impl Batch {
    fn new(store: Store, record_changes: bool) -> Batch {
        Batch {
            store,
            wb: WriteBatch::default(),
            pending: HashMap::new(),
            dropped: HashSet::new(),
            record_changes,
            change_bytes: 0,
            index: 0,
            position: 0,
        }
    }

    /// The changes that follow belong to the entry at `index`.
    fn begin_entry(&mut self, index: u64) {
        self.index = index;
        self.position = 0;
    }

    /// Records a change of the entry being applied in the history.
    fn change(&mut self, subject: Subject, old: Option<&[u8]>, new: Option<&[u8]>) {
        if !self.record_changes {
            return;
        }
        let cf = self.store.cf(CF_CHANGES);
        for (key, value) in changes::encode(self.index, self.position, &subject, old, new) {
            self.change_bytes += (key.len() + value.len()) as u64;
            self.wb.put_cf(cf, key, value);
        }
        self.position += 1;
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if let Some(value) = self.pending.get(&(cf, key.to_vec())) {
            return Ok(value.clone());
        }
        if cf == Cf::Docs && self.in_dropped_table(key) {
            return Ok(None);
        }
        Ok(self.store.db.get_cf(self.store.cf(cf.name()), key)?)
    }

    fn in_dropped_table(&self, doc_key: &[u8]) -> bool {
        let table_len = doc_key.iter().position(|&b| b == 0).unwrap_or(doc_key.len());
        std::str::from_utf8(&doc_key[..table_len]).is_ok_and(|table| self.dropped.contains(table))
    }

    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        self.wb.put_cf(self.store.cf(cf.name()), &key, &value);
        self.pending.insert((cf, key), Some(value));
    }

    fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        self.wb.delete_cf(self.store.cf(cf.name()), &key);
        self.pending.insert((cf, key), None);
    }

    fn drop_docs(&mut self, table: &str) {
        let cf = self.store.cf(CF_DOCS);
        self.wb.delete_range_cf(cf, doc_prefix(table), doc_prefix_end(table));
        let prefix = doc_prefix(table);
        self.pending.retain(|(cf, key), _| !(*cf == Cf::Docs && key.starts_with(&prefix)));
        self.dropped.insert(table.to_string());
    }

    fn session(&self, session: u64) -> Result<Option<SessionRecord>, Error> {
        let Some(bytes) = self.get(Cf::Sessions, &session.to_be_bytes())? else {
            return Ok(None);
        };
        decode_session(session, &bytes).map(Some)
    }

    /// Records `outcome` as the session's last command, used at `index`.
    fn touch_session(
        &mut self,
        id: CommandId,
        previous_index: u64,
        index: u64,
        op_hash: u64,
        outcome: &Outcome,
    ) {
        let record = SessionRecord {
            last_seq: id.seq,
            last_index: index,
            op_hash,
            outcome: outcome.clone(),
        };
        let bytes = postcard::to_stdvec(&record).expect("a session record always encodes");
        self.put(Cf::Sessions, id.session.to_be_bytes().to_vec(), bytes);
        if previous_index != 0 {
            self.delete(Cf::SessionLru, lru_key(previous_index, id.session));
        }
        self.put(Cf::SessionLru, lru_key(index, id.session), Vec::new());
    }
}

fn decode_session(session: u64, bytes: &[u8]) -> Result<SessionRecord, Error> {
    postcard::from_bytes(bytes)
        .map_err(|e| Error::Corrupt { what: format!("session {session}: {e}") })
}

/// A session's record as the store holds it.
fn read_session(store: &Store, session: u64) -> Result<Option<SessionRecord>, Error> {
    let cf = store.cf(crate::engine::CF_SESSIONS);
    match store.db.get_pinned_cf(cf, session.to_be_bytes())? {
        Some(bytes) => decode_session(session, &bytes).map(Some),
        None => Ok(None),
    }
}

fn lru_key(index: u64, session: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    key.extend_from_slice(&index.to_be_bytes());
    key.extend_from_slice(&session.to_be_bytes());
    key
}

/// A stable fingerprint of an op: FNV-1a over its log encoding. Stable across
/// builds and replicas (unlike `std`'s hasher), which the state machine needs.
fn op_hash(op: &Op) -> u64 {
    let mut hasher = Fnv1a::new();
    hasher.write(&postcard::to_stdvec(op).expect("an op always encodes"));
    hasher.finish()
}
