//! `GET /v1/cluster`: the cloud's hosts joined with the nodes as the first
//! answering node sees them, and the last reconciliation report: what
//! `cairn status` shows, gathered where the hosts are known (the provider)
//! rather than by each client.
//!
//! The cloud reaches the nodes as any admin client does: over HTTPS, trusting
//! the cluster's CA, with the nodes' admin token (both under its root). A
//! node that does not answer within [`NODE_CALL_TIMEOUT_MS`] is passed over;
//! with none answering, the view has the hosts and no nodes.

use std::path::Path;
use std::time::Duration;

use cairn_client::views::BackupView;
use cairn_client::NodeView;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::local::{Host, HostState};
use crate::status::StatusSnapshot;

/// How long the cloud waits for one node's answer.
pub const NODE_CALL_TIMEOUT_MS: u64 = 3_000;

/// The cluster as the cloud and the first answering node see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// The leader agent's last report to the cloud, or the node's copy when
    /// the cloud has none (a restarted cloud); null before either.
    pub reconciliation: Value,
    pub hosts: Vec<HostRow>,
    /// Every member, as the answering node sees it; empty when none answered.
    pub nodes: Vec<NodeView>,
    pub leader: Option<u64>,
    /// The cluster version in the answering node's state.
    pub cluster_version: Option<String>,
    /// The backups in the answering node's backup directory (every node of
    /// a cluster of this cloud shares one); empty when none answered.
    pub backups: Vec<BackupView>,
}

/// One host of a [`StatusView`], with the node it runs when a node lists
/// its API address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRow {
    pub name: String,
    pub zone: String,
    pub state: HostState,
    pub api_address: String,
    pub node_id: Option<u64>,
}

/// Asks the running hosts' nodes, in host order, until one answers, and
/// joins what it says with `hosts` and the status log's `status`.
pub async fn gather(
    hosts: Vec<Host>,
    status: StatusSnapshot,
    node_token_file: &Path,
    ca_cert: &Path,
) -> StatusView {
    // Read at each call: a token or CA replaced on disk is used at once.
    let token = cairn_util::secret::read(node_token_file).ok().flatten();
    let tls = cairn_tls::api_client(ca_cert).ok();
    let mut cluster = None;
    let mut backups = Vec::new();
    for host in hosts.iter().filter(|h| h.state == HostState::Running) {
        let timeout = Duration::from_millis(NODE_CALL_TIMEOUT_MS);
        let Ok(node) = cairn_client::Client::with_tls(&host.api_address, timeout, tls.clone())
        else {
            continue;
        };
        let node = node.with_token(token.clone());
        if let Ok(answered) = node.cluster().await {
            cluster = Some(answered);
            backups = node.list_backups(None).await.map(|list| list.backups).unwrap_or_default();
            break;
        }
    }
    let nodes = cluster.as_ref().map(|c| c.nodes.clone()).unwrap_or_default();
    let reconciliation = match status.last {
        Some(report) => serde_json::to_value(report).unwrap_or(Value::Null),
        None => cluster.as_ref().map_or(Value::Null, |c| c.reconciliation.clone()),
    };
    let hosts = hosts
        .into_iter()
        .map(|h| {
            let node = nodes.iter().find(|n| n.address.as_deref() == Some(&h.api_address));
            HostRow {
                node_id: node.map(|n| n.id),
                name: h.name,
                zone: h.zone,
                state: h.state,
                api_address: h.api_address,
            }
        })
        .collect();
    let leader = cluster.as_ref().and_then(|c| c.leader);
    let cluster_version = cluster.and_then(|c| c.cluster_version);
    StatusView { reconciliation, hosts, nodes, leader, cluster_version, backups }
}
