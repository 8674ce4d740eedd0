//! Cairn's deterministic simulator: whole clusters run in one thread on a
//! seeded network, with simulated clients whose histories are then checked.
//!
//! This crate will hold the simulator and the checkers of what it records.
//! For now it holds the first checker:
//! - [`linearizability`]: decides whether a client history of the key-value
//!   space is linearizable, key by key.

pub mod linearizability;
