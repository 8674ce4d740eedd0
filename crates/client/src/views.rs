//! What a node's cluster routes answer, as types: the server builds these
//! and serializes them, and the client, the CLI and the agents read them
//! back, so the two sides cannot disagree about a field.
//!
//! - [`Health`]: `GET /v1/health` (200 while the node serves).
//! - [`ClusterView`] and [`NodeView`]: `GET /v1/cluster`.
//! - [`MembersView`]: `GET /v1/admin/members`, and what a membership change
//!   answers.
//!
//! Not here: the control plane's record (`/v1/system/control`), which the
//! control crate types; a node only passes its report through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A node's role in its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Leader,
    Follower,
}

/// `GET /v1/health`: the node serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `"ok"` (a node that cannot serve answers 503 instead).
    pub status: String,
    pub id: u64,
    pub role: NodeRole,
    pub applied_index: u64,
}

/// One node of [`ClusterView`], as the answering node knows it: its own
/// progress is live, a peer's is as of its last hello; what a peer has not
/// told yet is `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: u64,
    /// The node's HTTP API address.
    pub address: Option<String>,
    /// The node's peer (replication) address; `None` for a single node.
    pub peer_address: Option<String>,
    pub zone: Option<String>,
    pub version: Option<String>,
    pub role: Option<NodeRole>,
    pub decided_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Whether the answering node heard from it lately (always, for itself).
    pub reachable: bool,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    /// Every member, in id order (a single node: itself).
    pub nodes: Vec<NodeView>,
    pub leader: Option<u64>,
    /// 0 for a single node that never replicated.
    pub configuration_id: u32,
    /// The control plane's last report, from this node's copy of the
    /// control record; `null` before the control plane wrote one.
    pub reconciliation: Value,
}

impl ClusterView {
    /// The node with id `id`.
    pub fn node(&self, id: u64) -> Option<&NodeView> {
        self.nodes.iter().find(|node| node.id == id)
    }
}

/// `GET /v1/admin/members`: the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersView {
    /// `None` for a single node that never replicated.
    pub cluster_id: Option<u64>,
    pub configuration_id: u32,
    /// Every member's peer address, by node id.
    pub members: BTreeMap<u64, String>,
    /// The global log index just before the configuration's first entry.
    pub base_index: u64,
}
