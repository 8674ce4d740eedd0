//! Cairn's control plane core, free of IO: the desired state and its
//! validation ([`desired`]), and the reconciliation planner.

pub mod desired;
