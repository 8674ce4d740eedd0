//! Cairn's storage: one RocksDB per node holding tables of JSON documents, a
//! key-value space, and the state machine that changes them.
//!
//! Layers, bottom-up:
//! - [`engine`]: the database, its column families and key layout, and reads.
//! - [`command`]: the commands the log orders and their outcomes.
//! - [`machine`]: the single writer, applying batches of log entries atomically.
//! - [`changes`]: the change history the state machine keeps, for changefeeds.
//! - [`log_store`]: OmniPaxos's durable log and consensus state, in the same
//!   database (our own `omnipaxos::Storage`, so only one RocksDB is linked).
//! - [`snapshot`]: the state machine exported from a checkpoint as a stream of
//!   bounded chunks, and installed from one, to catch up a lagging replica.
//!
//! The crate does no networking and keeps no clock: what it does depends only on
//! the commands it is given, which is what lets every replica reach the same
//! state and lets a simulator drive it.

pub mod backup;
pub mod changes;
pub mod cluster_version;
pub mod command;
pub mod engine;
pub mod fnv;
pub mod log_store;
pub mod machine;
pub mod snapshot;

pub use cluster_version::{ClusterVersion, CLUSTER_VERSION_KEY};
pub use command::{
    ApplyError, Command, CommandId, CompactionMarker, Conflict, Doc, Op, Outcome, WaitKey,
    COMMAND_BYTES_MAX, DOC_BYTES_MAX, KV_VALUE_BYTES_MAX, SEQ_GAP_MAX,
};
pub use engine::{Durability, ExportPage, Footprint, Page, Store, LIST_LIMIT_MAX, PAGE_BYTES_MAX};
pub use machine::{Applied, StateMachine};
pub use snapshot::{Chunk, SnapshotCf, SnapshotSink, SnapshotSource};

/// Storage errors. Apart from [`Error::TableNotFound`], which answers a read,
/// and the snapshot errors, they are faults of the disk or of the data on it:
/// the node must stop and restart from what is durable rather than carry on.
/// After [`Error::Snapshot`] or [`Error::SnapshotIncomplete`] the node fetches
/// a snapshot again.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("table '{table}' does not exist")]
    TableNotFound { table: String },
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt data: {what}")]
    Corrupt { what: String },
    #[error("the state machine stopped after a storage error; restart the node")]
    Poisoned,
    /// A snapshot stream was refused (a chunk out of order, of another
    /// snapshot, corrupt or out of bounds), or a snapshot could not be made.
    /// A refused chunk writes nothing.
    #[error("snapshot: {reason}")]
    Snapshot { reason: String },
    /// The store holds a snapshot install that began and did not finish: its
    /// state is partial and must not be served. `SnapshotSink::begin` starts a
    /// new install over it.
    #[error("a snapshot install into this store did not finish; install a snapshot again")]
    SnapshotIncomplete,
    /// A backup could not be taken, read, restored or deleted: the reason
    /// names the backup, file or directory at fault.
    #[error("backup: {reason}")]
    Backup { reason: String },
    /// The data directory is in an on-disk format this build cannot read.
    #[error(
        "the data directory {dir} is in on-disk format {found}; this version of Cairn ({}) \
         reads {reads}: run a version that reads it",
        cairn_util::version()
    )]
    Format { dir: String, found: u64, reads: String },
    /// The state is at a cluster version this binary cannot run (a data
    /// directory, a snapshot, or a finalize entry of the log): the node
    /// stops rather than apply what it may not know.
    #[error(
        "the cluster runs at cluster version {cluster}; this version of Cairn ({}) runs \
         cluster versions {supported}: run a version of Cairn that runs {cluster}",
        cairn_util::version()
    )]
    ClusterVersion { cluster: String, supported: String },
}

impl Error {
    /// Whether the error is an answer (the same on every try and every replica)
    /// rather than a fault.
    pub fn is_deterministic(&self) -> bool {
        matches!(self, Error::TableNotFound { .. })
    }
}
