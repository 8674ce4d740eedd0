//! How the leader agent sees the cluster: the cloud's host list, every
//! agent's answer about its node, and the data plane's membership as the
//! local node knows it, joined into one [`Observed`].
//!
//! Every call has a deadline; an agent that does not answer in time makes
//! its host `Unreachable` (the planner waits for it, it does not replace it);
//! only the cloud can say a host `Failed`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_cloud::{CloudClient, Host, HostState as CloudHostState};
use cairn_control::model::{HostCondition, HostObs, NodeObs, NodeProcess, Observed};

use crate::client::AgentClient;
use crate::status::{NodeState, NodeStatus};
use crate::TurnError;

/// How long one agent may take to answer a status call.
pub const AGENT_STATUS_TIMEOUT_MS: u64 = 2_000;
/// How long one HTTP call to the cloud or a node may take.
pub const HTTP_TIMEOUT_MS: u64 = 5_000;

/// The data plane's membership as the local node sees it.
#[derive(Clone, Debug, Default)]
pub struct MembershipView {
    /// Member node ids and their peer addresses.
    pub members: BTreeMap<u64, String>,
    /// The first index of the current configuration.
    pub base_index: u64,
    /// Each member's applied index, where known.
    pub applied: BTreeMap<u64, u64>,
    pub leader: Option<u64>,
    /// The cluster version in the local node's state.
    pub cluster_version: Option<String>,
}

/// What the observation is made of: a client for the cloud and the local
/// node's address.
#[derive(Clone)]
pub struct Observer {
    pub cloud: CloudClient,
    /// The local node, for reads (a short deadline).
    pub node: cairn_client::Client,
    /// The local node, for writes and membership changes (a step's
    /// deadline).
    pub node_steps: cairn_client::Client,
    /// How to reach other agents: mutual TLS when the cluster has a CA.
    pub agent_tls: Option<Arc<rustls::ClientConfig>>,
    /// How to reach nodes: HTTPS trusting the CA, when there is one.
    pub api_tls: Option<Arc<rustls::ClientConfig>>,
}

impl Observer {
    pub fn new(
        cloud: &str,
        cloud_token: Option<String>,
        node: &str,
        node_token: Option<String>,
        agent_tls: Option<Arc<rustls::ClientConfig>>,
        api_tls: Option<Arc<rustls::ClientConfig>>,
        step_timeout: Duration,
    ) -> Result<Observer, TurnError> {
        let timeout = Duration::from_millis(HTTP_TIMEOUT_MS);
        let node_client = |timeout| {
            cairn_client::Client::with_tls(node, timeout, api_tls.clone())
                .map(|client| client.with_token(node_token.clone()))
        };
        Ok(Observer {
            cloud: CloudClient::new(cloud, timeout)?.with_token(cloud_token),
            node: node_client(timeout)?,
            node_steps: node_client(step_timeout)?,
            agent_tls,
            api_tls,
        })
    }

    /// The cloud's hosts.
    pub async fn hosts(&self) -> Result<Vec<Host>, TurnError> {
        Ok(self.cloud.hosts().await?)
    }

    /// The membership, as the local node knows it.
    pub async fn membership(&self) -> Result<MembershipView, TurnError> {
        let members = self.node.members().await?;
        let cluster = self.node.cluster().await?;
        let applied = cluster.nodes.iter().filter_map(|n| Some((n.id, n.applied_index?)));
        let mut membership = MembershipView {
            members: members.members,
            base_index: members.base_index,
            applied: applied.collect(),
            leader: cluster.leader,
            cluster_version: cluster.cluster_version,
        };
        if membership.leader.is_none() && membership.members.len() <= 1 {
            // A lone node leads itself.
            membership.leader = cluster.nodes.first().map(|node| node.id);
        }
        Ok(membership)
    }

    /// The whole observation. `Err` when the cloud or the local node cannot
    /// be read: then nothing is decided.
    pub async fn observe(&self) -> Result<(Observed, Vec<Host>), TurnError> {
        let hosts = self.hosts().await?;
        let membership = self.membership().await?;
        let statuses = futures_join(&hosts, self.agent_tls.clone()).await;
        let mut observed = Observed {
            members: membership.members.keys().copied().collect(),
            leader: membership.leader,
            members_caught_up: membership.members.keys().all(|id| {
                membership.applied.get(id).is_some_and(|&applied| applied >= membership.base_index)
            }),
            now_ms: cairn_util::now_ms(),
            cluster_version: membership.cluster_version.clone(),
            ..Observed::default()
        };
        for (host, status) in hosts.iter().zip(statuses) {
            observed.hosts.insert(host.name.clone(), host_obs(host, status));
        }
        for (id, peer) in &membership.members {
            if let Some(host) = hosts.iter().find(|h| &h.peer_address == peer) {
                observed.member_hosts.insert(*id, host.name.clone());
            }
        }
        Ok((observed, hosts))
    }
}

/// A host as the planner sees it, from the cloud's listing and its agent's
/// answer (`None`: no answer).
pub fn host_obs(host: &Host, status: Option<NodeStatus>) -> HostObs {
    let state = match (host.state, &status) {
        (CloudHostState::Failed, _) => HostCondition::Failed,
        (_, Some(_)) => HostCondition::Running,
        (_, None) => HostCondition::Unreachable,
    };
    let node = status.filter(|_| state == HostCondition::Running).map(|s| NodeObs {
        node_id: (s.node_id != 0).then_some(s.node_id),
        process: match s.state {
            NodeState::Absent => NodeProcess::Absent,
            NodeState::Starting | NodeState::Backoff => NodeProcess::Starting,
            NodeState::Running => NodeProcess::Running,
            NodeState::Stopped => NodeProcess::Stopped,
        },
        healthy: s.healthy,
        restart_generation: s.restart_generation,
        version: s.node_version,
    });
    HostObs { name: host.name.clone(), zone: host.zone.clone(), state, node }
}

/// Every host's agent status, asked at once.
async fn futures_join(
    hosts: &[Host],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Vec<Option<NodeStatus>> {
    let mut tasks = Vec::with_capacity(hosts.len());
    for host in hosts {
        let address = host.agent_address.clone();
        let tls = tls.clone();
        let failed = host.state == CloudHostState::Failed;
        tasks.push(tokio::spawn(async move {
            if failed {
                return None;
            }
            ask_status(&address, tls).await
        }));
    }
    let mut statuses = Vec::with_capacity(tasks.len());
    for task in tasks {
        statuses.push(task.await.ok().flatten());
    }
    statuses
}

/// One agent's status, or `None` when it does not answer within
/// [`AGENT_STATUS_TIMEOUT_MS`] (connecting included).
pub async fn ask_status(
    address: &str,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Option<NodeStatus> {
    let timeout = Duration::from_millis(AGENT_STATUS_TIMEOUT_MS);
    let asked = async {
        let client = AgentClient::connect_with(address, timeout, tls).await.ok()?;
        client.status().await.ok()
    };
    tokio::time::timeout(timeout, asked).await.ok().flatten()
}
