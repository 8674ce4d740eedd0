//! The desired state: what the operator asks the cluster to be, parsed from
//! `desired_state.jsonc` (JSON with comments and trailing commas) and validated
//! strictly.
//!
//! (The strict parser and its error messages are being written; this first
//! version parses plain JSON.)

use serde::{Deserialize, Serialize};

/// The software version this build runs, the default of `version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The replica counts a cluster may have (2f+1 for f = 0..=3).
pub const REPLICAS_ALLOWED: [u32; 4] = [1, 3, 5, 7];

/// What the operator wants the cluster to be. See the repository's
/// `desired_state.jsonc` for every field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    /// Raised for every change; a state whose id is not above the accepted one
    /// is refused.
    pub id: u64,
    /// `false` stops every node, keeping its data; `true` runs them.
    pub running: bool,
    /// The software version every node runs.
    pub version: String,
    /// Where `cairn-<version>` binaries and `SHA256SUMS` are found (a directory
    /// or a URL); `None` when only this build's version is used.
    pub artifacts: Option<String>,
    /// Raise to restart every node, one at a time. Never above `id`.
    pub restart_generation: u64,
    /// How many nodes hold the data: 1, 3, 5 or 7.
    pub replicas: u32,
    /// Zones the replicas spread over, evenly.
    pub zones: Vec<String>,
    /// The kind of host asked of the cloud.
    pub host_type: String,
    /// Whether a step may create a host beyond `replicas` for a while (to
    /// replace one before removing the other).
    pub allow_temporary_hosts: bool,
    /// On-demand backups: an entry added is taken, an entry removed is deleted.
    pub backups: Vec<Backup>,
    /// Periodic backups.
    pub backup_schedule: Option<BackupSchedule>,
    /// A backup to start a new cluster from (only for a cluster that never ran).
    pub restore_from: Option<String>,
    /// Failed tries of one step before the reconciler stops in `ERROR_STATE`.
    pub max_attempts: u32,
}

/// One on-demand backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Names the backup; unique within `backups`.
    pub name: String,
    /// Where it is written (a directory or a URL).
    pub sink: String,
}

/// Periodic backups.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSchedule {
    /// How often, in seconds.
    pub every_s: u64,
    /// How many to keep.
    pub keep: u32,
    /// Where they are written.
    pub sink: String,
}

/// A refused desired state: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DesiredError {
    /// The field at fault (`id`, `zones[2]`, …), or `document` for syntax.
    pub field: String,
    pub message: String,
}

impl DesiredError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        DesiredError { field: field.into(), message: message.into() }
    }
}

/// Parses and validates a desired state on its own (not against the accepted
/// one: see [`check_transition`]).
pub fn parse(text: &str) -> Result<DesiredState, DesiredError> {
    serde_json::from_str(text).map_err(|e| DesiredError::new("document", e.to_string()))
}

/// Checks a new desired state against the accepted one: its id must be above,
/// and `restore_from` is only for a cluster that never ran.
pub fn check_transition(
    accepted: Option<&DesiredState>,
    cluster_has_run: bool,
    new: &DesiredState,
) -> Result<(), DesiredError> {
    if let Some(accepted) = accepted {
        if new.id <= accepted.id {
            return Err(DesiredError::new(
                "id",
                format!("{} is not above the accepted id {}", new.id, accepted.id),
            ));
        }
    }
    if cluster_has_run && new.restore_from.is_some() {
        return Err(DesiredError::new("restore_from", "only a cluster that never ran can restore"));
    }
    Ok(())
}
