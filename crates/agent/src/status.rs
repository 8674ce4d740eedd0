//! What an agent reports about its node: [`NodeStatus`], a plain struct that
//! prints as JSON, and its conversions to and from the gRPC message.
//!
//! The struct and the message carry the same fields; the struct exists so
//! that callers (the leader loop, the CLI) never handle generated types, and
//! so that `state` is an enum rather than a string.
//!
//! Not handled here: gathering the status (the supervisor does).

use cairn_client::NodeRole;
use serde::{Deserialize, Serialize};

use crate::proto;

/// Where the node stands in its life on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// The host has no node (no `StartNode` yet).
    Absent,
    /// The process runs and has not yet answered a health check.
    Starting,
    /// The process runs and has answered healthy since it started (`healthy`
    /// says whether it still does).
    Running,
    /// The cluster asked the node stopped, or the host is stopping it.
    Stopped,
    /// The node exited unexpectedly and waits to be restarted.
    Backoff,
}

impl NodeState {
    /// The name used on the wire and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Absent => "absent",
            NodeState::Starting => "starting",
            NodeState::Running => "running",
            NodeState::Stopped => "stopped",
            NodeState::Backoff => "backoff",
        }
    }

    /// Parses a name from the wire; `None` for one this build does not know.
    pub fn parse(name: &str) -> Option<NodeState> {
        [
            NodeState::Absent,
            NodeState::Starting,
            NodeState::Running,
            NodeState::Stopped,
            NodeState::Backoff,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

/// One host's node as its agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The host's name.
    pub host: String,
    /// The host's zone.
    pub zone: String,
    /// The node's id; 0 when the host has none.
    pub node_id: u64,
    pub state: NodeState,
    /// The node's process id; 0 when no process runs.
    pub pid: u32,
    /// Whether the node's last health check answered 200 with its id.
    pub healthy: bool,
    /// The node's role from its last healthy answer; `None` when it has not
    /// answered (on the wire, `""`).
    pub role: Option<NodeRole>,
    /// The node's applied index from its last healthy answer.
    pub applied_index: u64,
    /// The restart generation the node was last (re)started for.
    pub restart_generation: u64,
    /// The agent's version.
    pub version: String,
    /// The version the node runs (or runs when it starts).
    pub node_version: String,
    /// The node's HTTP address.
    pub node_address: String,
    /// The node's peer (replication) address.
    pub peer_address: String,
    /// Restarts after unexpected exits since the agent started.
    pub restarts: u32,
    /// Whether the node's data directory holds anything.
    pub has_data: bool,
    /// Whether the cluster asked the node stopped.
    pub stopped: bool,
    /// Why the node is in this state (its last exit, a start failure).
    pub message: String,
}

impl From<NodeStatus> for proto::NodeStatus {
    fn from(s: NodeStatus) -> proto::NodeStatus {
        proto::NodeStatus {
            host: s.host,
            zone: s.zone,
            node_id: s.node_id,
            state: s.state.as_str().to_string(),
            pid: s.pid,
            healthy: s.healthy,
            role: match s.role {
                Some(NodeRole::Leader) => "leader".into(),
                Some(NodeRole::Follower) => "follower".into(),
                None => String::new(),
            },
            applied_index: s.applied_index,
            restart_generation: s.restart_generation,
            version: s.version,
            node_version: s.node_version,
            node_address: s.node_address,
            peer_address: s.peer_address,
            restarts: s.restarts,
            has_data: s.has_data,
            stopped: s.stopped,
            message: s.message,
        }
    }
}

impl TryFrom<proto::NodeStatus> for NodeStatus {
    /// The state name that this build does not know.
    type Error = String;

    fn try_from(s: proto::NodeStatus) -> Result<NodeStatus, String> {
        let state = NodeState::parse(&s.state)
            .ok_or_else(|| format!("unknown node state '{}' from {}", s.state, s.host))?;
        let role = match s.role.as_str() {
            "leader" => Some(NodeRole::Leader),
            "follower" => Some(NodeRole::Follower),
            "" => None,
            other => return Err(format!("unknown node role '{other}' from {}", s.host)),
        };
        Ok(NodeStatus {
            host: s.host,
            zone: s.zone,
            node_id: s.node_id,
            state,
            pid: s.pid,
            healthy: s.healthy,
            role,
            applied_index: s.applied_index,
            restart_generation: s.restart_generation,
            node_version: if s.node_version.is_empty() {
                s.version.clone()
            } else {
                s.node_version
            },
            version: s.version,
            node_address: s.node_address,
            peer_address: s.peer_address,
            restarts: s.restarts,
            has_data: s.has_data,
            stopped: s.stopped,
            message: s.message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every state survives the wire; an unknown one is refused by name.
    #[test]
    fn states_round_trip_through_their_names() {
        for name in ["absent", "starting", "running", "stopped", "backoff"] {
            let state = NodeState::parse(name).expect("known state");
            assert_eq!(state.as_str(), name);
            assert_eq!(serde_json::to_value(state).expect("json"), serde_json::json!(name));
        }
        assert_eq!(NodeState::parse("sleeping"), None);
    }
}
