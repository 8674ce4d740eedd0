//! The reconciliation status the leader agent reports: to the cloud (which
//! logs its transitions) and in `GET /v1/cluster`.

use serde::{Deserialize, Serialize};

/// Where reconciliation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReconcileState {
    /// The observed cluster is what the accepted desired state asks.
    AtDesiredState,
    /// Steps are being taken towards the accepted desired state.
    WorkingTowardsDesiredState,
    /// A step failed `max_attempts` times; a new desired state is accepted.
    ErrorState,
}

impl ReconcileState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileState::AtDesiredState => "AT_DESIRED_STATE",
            ReconcileState::WorkingTowardsDesiredState => "WORKING_TOWARDS_DESIRED_STATE",
            ReconcileState::ErrorState => "ERROR_STATE",
        }
    }
}

/// What the leader agent reports after every loop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub state: ReconcileState,
    /// The accepted desired state's id (0 before any).
    pub desired_id: u64,
    /// A newer desired state waiting to be accepted, if any.
    pub pending_id: Option<u64>,
    /// The step in flight, described for people.
    pub step: Option<String>,
    /// Why the state is what it is (the last error in `ERROR_STATE`).
    pub message: String,
    /// Failed tries of the current step.
    pub attempts: u32,
    /// The host whose agent leads.
    pub leader_host: Option<String>,
    /// The backups the control plane keeps track of (on demand and
    /// scheduled), oldest first; `taken` is false while one is being taken.
    #[serde(default)]
    pub backups: Vec<crate::model::BackupRecord>,
}
