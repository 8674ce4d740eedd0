//! Cairn's deterministic simulator: whole clusters run in one thread on a
//! seeded network, with simulated clients whose histories are then checked.
//!
//! - [`cluster`]: one run from one seed: the real driver, replica, state
//!   machine and RocksDB on every node; a simulated network, clock and
//!   clients; faults, then healing; the checks.
//! - [`network`]: the simulated network (latency, loss, duplication,
//!   reordering, cut links).
//! - [`linearizability`]: decides whether a client history of the key-value
//!   space is linearizable, key by key.

pub mod cluster;
pub mod linearizability;
pub mod network;
