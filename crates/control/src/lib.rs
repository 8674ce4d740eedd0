//! Cairn's control plane core, free of IO: the desired state and its
//! validation ([`desired`]), the status reported ([`status`]), and the
//! reconciliation planner.

pub mod desired;
pub mod status;
