//! Cairn's deterministic simulator: whole clusters run in one thread on a
//! seeded network, with simulated clients whose histories are then checked.
//!
//! - [`cluster`]: one run from one seed: the real driver, replica, state
//!   machine and RocksDB on every node; a simulated network, clock and
//!   clients; faults, then healing; the checks.
//! - [`network`]: the simulated network (latency, loss, duplication,
//!   reordering, cut links).
//!
//! The checkers, one file each:
//! - [`linearizability`]: decides whether a client history of the key-value
//!   space is linearizable, key by key (which covers acknowledged writes
//!   lost: the final reads on every node see every completed write);
//! - [`exactly_once`]: no command takes effect twice on a node;
//! - [`agreement`]: replicas apply the same entry at every index and end in
//!   the same state;
//! - [`log_invariants`]: applied, decided and compacted indexes move only
//!   forward, nothing is applied undecided, and logs stay bounded;
//! - [`promises`]: a node that restarts, after a power cut too, still holds
//!   every promise and acceptance it sent;
//! - [`snapshots`]: every snapshot installed is the state its peer served;
//! - [`feeds`]: every replica records the same change history, and
//!   changefeeds read from any node miss, repeat and reorder nothing.

pub mod agreement;
pub mod cluster;
pub mod exactly_once;
pub mod feeds;
pub mod linearizability;
pub mod log_invariants;
pub mod network;
pub mod promises;
pub mod snapshots;
