//! Commands and their outcomes: the vocabulary of the replicated state machine.
//!
//! A [`Command`] is what the log orders and every replica applies. It is plain
//! data, encoded with `postcard` ([`Command::encode`]), so it can travel in
//! consensus messages and sit in the log. JSON documents travel as validated JSON
//! text, never as `serde_json::Value`: the state machine parses them where it
//! needs to (merge patches), and the encoding stays compact and self-contained.
//!
//! Every input that reaches the state machine was validated at the edge (the HTTP
//! API) with the functions of this module, and the state machine checks again:
//! a command from the log is input from the network, and a bad one must become a
//! deterministic [`ApplyError::Invalid`], the same on every replica, never a panic.
//!
//! Not here: how commands are applied (`machine`), or how they are ordered (the
//! consensus crate).

use serde::{Deserialize, Serialize};

/// Longest table name, in bytes.
pub const TABLE_NAME_BYTES_MAX: usize = 64;
/// Longest document id, in bytes.
pub const DOC_ID_BYTES_MAX: usize = 512;
/// Longest key of the key-value space, in bytes.
pub const KV_KEY_BYTES_MAX: usize = 1024;
/// Most documents one insert may carry; larger imports are split by the client.
pub const INSERT_DOCS_MAX: usize = 10_000;
/// Largest document, as stored JSON text: what a write carries, and what a
/// merge patch makes, is checked against it.
pub const DOC_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest value of the key-value space.
pub const KV_VALUE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Largest encoded command, that is, one log entry. The HTTP body limit stays
/// under it, and it stays under one peer message (checked where both are
/// known, in the consensus crate).
pub const COMMAND_BYTES_MAX: usize = 40 * 1024 * 1024;
/// How far past a session's last sequence number a command may go. A client
/// counts up by one; a number far ahead is a bug or an attack that would burn
/// the session (nothing below it could be used again), and is refused.
pub const SEQ_GAP_MAX: u64 = 1 << 20;

/// The identity of a command for exactly-once application: a session opened
/// through the log, and a sequence number that grows with every command of that
/// session. A retried command carries the same id and is answered from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommandId {
    pub session: u64,
    pub seq: u64,
}

/// How the node that proposed a command recognises it among decided entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WaitKey {
    /// A write with an exactly-once id.
    Id(CommandId),
    /// An id-less command (barrier, session opening) with its random token.
    Token(u64),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// `None` for commands whose repetition is harmless (no-ops, read barriers,
    /// opening a session). Every write a client asked for carries an id.
    pub id: Option<CommandId>,
    pub op: Op,
}

/// What happens when an inserted document's id already exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Conflict {
    /// Refuse the whole insert (nothing is written) and name the clashing ids.
    #[default]
    Error,
    /// Overwrite the stored document.
    Replace,
    /// Merge the new document into the stored one (RFC 7396 merge patch).
    Update,
}

/// A document ready to be written: its id, and its JSON text (an object whose
/// `id` field equals `id`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Doc {
    pub id: String,
    pub json: String,
}

/// The operations of the state machine.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Changes nothing.
    Noop,
    /// Changes nothing: a read barrier. `token` (random, drawn by the node
    /// that proposed it) tells that node which decided entry is its own.
    Barrier {
        token: u64,
    },
    /// Opens a session for exactly-once commands; its id is the entry's index.
    /// `token` is drawn by the proposing node to recognise its entry; it does
    /// not take part in applying.
    OpenSession {
        token: u64,
    },
    CreateTable {
        table: String,
    },
    DropTable {
        table: String,
    },
    Insert {
        table: String,
        docs: Vec<Doc>,
        conflict: Conflict,
    },
    /// Replaces the document, creating it when absent.
    Replace {
        table: String,
        doc: Doc,
    },
    /// Applies an RFC 7396 merge patch (JSON text) to an existing document.
    Update {
        table: String,
        id: String,
        patch: String,
    },
    Delete {
        table: String,
        id: String,
    },
    KvPut {
        key: String,
        value: Vec<u8>,
    },
    KvDelete {
        key: String,
    },
    /// Writes (replaces) a record of the system table, [`SYSTEM_TABLE`]: the
    /// control plane's replicated state. User routes cannot name it. A
    /// record is a JSON object; the state machine sets its `revision` to the
    /// entry's index. With `expect_revision`, the write applies only over
    /// that revision (0: no record yet): two writers that read the same
    /// revision cannot both write.
    SystemPut {
        key: String,
        json: String,
        expect_revision: Option<u64>,
    },
    /// Adds `by` to the counter under `key` (absent: 0), stored as decimal
    /// text. Gated: applies only once the cluster version allows
    /// [`crate::cluster_version::KV_INCREMENT`]; new variants go last, so
    /// that older entries keep their encoding.
    KvIncrement {
        key: String,
        by: i64,
    },
}

/// The table of the system's own records; its name starts with `_`, which
/// user table names cannot.
pub const SYSTEM_TABLE: &str = "_system";

/// The answer to an applied command. Stored per session, so a retry gets the
/// very same answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    SessionOpened {
        session: u64,
    },
    TableCreated {
        created: bool,
    },
    TableDropped,
    /// Counts, and the ids in the order given: a retry answered from memory
    /// reports the ids that were stored, even ones the edge generated.
    Inserted {
        inserted: u64,
        replaced: u64,
        updated: u64,
        ids: Vec<String>,
    },
    Replaced {
        created: bool,
    },
    /// The document after the patch, as JSON text.
    Updated {
        json: String,
    },
    Deleted {
        existed: bool,
    },
    KvWritten,
    Failed(ApplyError),
    /// The counter after an increment.
    Counted {
        value: i64,
    },
}

/// Deterministic refusals: every replica reaches the same one for the same
/// command in the same state, so they are answers to the client, not faults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("table '{table}' does not exist")]
    TableNotFound { table: String },
    #[error("document '{id}' does not exist in table '{table}'")]
    DocNotFound { table: String, id: String },
    #[error("table '{table}' already has documents with ids {}", quoted(ids))]
    Conflict { table: String, ids: Vec<String> },
    #[error("{message}")]
    Invalid { message: String },
    #[error("session {session} is unknown or expired")]
    SessionUnknown { session: u64 },
    #[error("sequence {seq} of session {session} is older than its last command ({last})")]
    StaleSequence { session: u64, seq: u64, last: u64 },
    #[error("sequence {seq} of session {session} was already used for a different command")]
    SequenceReused { session: u64, seq: u64 },
    #[error("system record '{key}' is at revision {actual}, not the expected {expected}")]
    RevisionMismatch { key: String, expected: u64, actual: u64 },
}

fn quoted(ids: &[String]) -> String {
    let shown: Vec<String> = ids.iter().take(10).map(|id| format!("'{id}'")).collect();
    let more = ids.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

impl Command {
    pub fn new(id: Option<CommandId>, op: Op) -> Command {
        Command { id, op }
    }

    /// Encodes for the log. Encoding plain data cannot fail short of memory.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("a command always encodes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, crate::Error> {
        postcard::from_bytes(bytes)
            .map_err(|e| crate::Error::Corrupt { what: format!("command: {e}") })
    }

    /// Whether the command changes state (everything but no-ops and barriers).
    pub fn is_write(&self) -> bool {
        !matches!(self.op, Op::Noop | Op::Barrier { .. })
    }

    /// What a proposing node waits on to recognise this command once it is
    /// decided: its `(session, seq)` id, or the token of an id-less command.
    /// `None` for commands nobody waits for.
    pub fn wait_key(&self) -> Option<WaitKey> {
        match (&self.id, &self.op) {
            (Some(id), _) => Some(WaitKey::Id(*id)),
            (None, Op::Barrier { token } | Op::OpenSession { token }) => {
                Some(WaitKey::Token(*token))
            }
            (None, _) => None,
        }
    }
}

/// Commands are OmniPaxos's log entries.
impl omnipaxos::storage::Entry for Command {
    type Snapshot = CompactionMarker;

    /// Exactly the bytes the command takes in a message, counted without
    /// encoding it.
    fn message_bytes(&self) -> usize {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default())
            .unwrap_or(COMMAND_BYTES_MAX)
    }
}

/// OmniPaxos's "snapshot" of a compacted log prefix: a marker with no content.
///
/// Cairn compacts each node's log behind its applied index through
/// OmniPaxos's snapshot call, and OmniPaxos syncs a lagging follower by
/// sending it a snapshot of the prefix it lacks, then the log. The state
/// itself never travels inside OmniPaxos: a node that finds a compacted gap
/// before its next entry fetches the entries, or a checkpoint of the state
/// machine, from a peer on its own. So the marker carries nothing; where a
/// gap ends is the log's compacted index, never the marker's content.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionMarker;

impl omnipaxos::storage::Snapshot<Command> for CompactionMarker {
    fn create(_entries: &[Command]) -> CompactionMarker {
        CompactionMarker
    }

    fn merge(&mut self, _delta: CompactionMarker) {}

    fn use_snapshots() -> bool {
        true
    }
}

/// Checks a table name: 1 to 64 ASCII letters, digits, `_` or `-`, starting with
/// a letter or digit (names starting with `_` are kept for the system).
pub fn validate_table_name(name: &str) -> Result<(), String> {
    let starts_ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    let chars_ok = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > TABLE_NAME_BYTES_MAX || !starts_ok || !chars_ok {
        return Err(format!(
            "bad table name '{}': use 1 to {TABLE_NAME_BYTES_MAX} letters, digits, '_' or '-', starting with a letter or digit",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Checks a document id: a string of 1 to 512 bytes, other than `.` and `..`
/// (URL clients resolve those as path steps, so they could never be read).
pub fn validate_doc_id(id: &str) -> Result<(), String> {
    if id == "." || id == ".." {
        return Err(format!("bad document id '{id}': '.' and '..' cannot stand in a URL path"));
    }
    if id.is_empty() || id.len() > DOC_ID_BYTES_MAX {
        return Err(format!(
            "bad document id: an id is a string of 1 to {DOC_ID_BYTES_MAX} bytes (got {} bytes)",
            id.len()
        ));
    }
    Ok(())
}

/// Checks the size of a document's JSON text against [`DOC_BYTES_MAX`].
pub fn validate_doc_size(id: &str, bytes: usize) -> Result<(), String> {
    if bytes > DOC_BYTES_MAX {
        return Err(format!(
            "document '{}' is {bytes} bytes of JSON, over the limit of {DOC_BYTES_MAX} bytes",
            id.escape_debug()
        ));
    }
    Ok(())
}

/// Checks the size of a value of the key-value space.
pub fn validate_kv_value(bytes: usize) -> Result<(), String> {
    if bytes > KV_VALUE_BYTES_MAX {
        return Err(format!(
            "the value is {bytes} bytes, over the limit of {KV_VALUE_BYTES_MAX} bytes"
        ));
    }
    Ok(())
}

/// Checks a key of the key-value space: 1 to 1024 bytes, other than `.` and `..`.
pub fn validate_kv_key(key: &str) -> Result<(), String> {
    if key == "." || key == ".." {
        return Err(format!("bad key '{key}': '.' and '..' cannot stand in a URL path"));
    }
    if key.is_empty() || key.len() > KV_KEY_BYTES_MAX {
        return Err(format!(
            "bad key: a key is 1 to {KV_KEY_BYTES_MAX} bytes (got {} bytes)",
            key.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_through_the_log_encoding() {
        let cmd = Command::new(
            Some(CommandId { session: 7, seq: 3 }),
            Op::Insert {
                table: "users".into(),
                docs: vec![Doc { id: "a".into(), json: r#"{"id":"a","n":1}"#.into() }],
                conflict: Conflict::Update,
            },
        );
        assert_eq!(Command::decode(&cmd.encode()).unwrap(), cmd);
    }

    #[test]
    fn garbage_does_not_decode_as_a_command() {
        assert!(Command::decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(Command::decode(&[]).is_err());
    }

    #[test]
    fn table_names_are_checked() {
        for good in ["users", "a", "A-b_9", &"x".repeat(64)] {
            assert!(validate_table_name(good).is_ok(), "{good}");
        }
        for bad in ["", "_sys", "-a", "a b", "a/b", "é", &"x".repeat(65)] {
            let err = validate_table_name(bad).unwrap_err();
            assert!(err.contains("bad table name"), "{err}");
        }
    }

    #[test]
    fn ids_and_keys_are_bounded() {
        assert!(validate_doc_id("").is_err());
        assert!(validate_doc_id(".").is_err() && validate_doc_id("..").is_err());
        assert!(validate_kv_key("..").is_err() && validate_kv_key("...").is_ok());
        assert!(validate_doc_id(&"x".repeat(DOC_ID_BYTES_MAX)).is_ok());
        assert!(validate_doc_id(&"x".repeat(DOC_ID_BYTES_MAX + 1)).is_err());
        assert!(validate_kv_key("").is_err());
        assert!(validate_kv_key("a/b/c").is_ok());
        assert!(validate_kv_key(&"k".repeat(KV_KEY_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn conflict_messages_stay_short() {
        let ids: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        let msg = ApplyError::Conflict { table: "t".into(), ids }.to_string();
        assert!(msg.ends_with("and 15 more"), "{msg}");
    }
}
