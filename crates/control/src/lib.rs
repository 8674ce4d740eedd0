//! Cairn's control plane core, free of IO: the desired state and its
//! validation ([`desired`]), the status reported ([`status`]), and the
//! reconciliation planner ([`model`], [`planner`]) and its loop ([`reconcile`]).

pub mod desired;
pub mod execute;
pub mod model;
pub mod planner;
pub mod reconcile;
pub mod status;
