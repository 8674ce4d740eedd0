//! What the reconciler reasons about: the cluster as observed, the control
//! state it keeps (replicated by the data plane), and the steps it takes.
//!
//! Everything here is plain data with a stable JSON form: the control state
//! is stored in the system table, steps are logged and reported, and the
//! generative tests write failing cases as JSON.
//!
//! Invariants the planner keeps on [`ControlState`]:
//! - a host enters `host_plans` *before* the step that creates it runs, so a
//!   leader that dies mid-step leaves a successor who knows the host's name
//!   and creates the same host, never a second one;
//! - a node id is assigned to a host in `host_plans` before the node starts,
//!   and node ids are reused only once no host holds them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::desired::DesiredState;
use crate::status::ReconcileState;

/// Node ids the data plane accepts: 1 to this, small and reused.
pub const NODE_ID_MAX: u64 = 64;

/// A host as the cloud and its agent show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostObs {
    pub name: String,
    pub zone: String,
    pub state: HostCondition,
    /// The agent's view of its node; `None` when the agent did not answer.
    pub node: Option<NodeObs>,
}

/// A host's state as the cloud reports it, joined with its agent's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostCondition {
    /// The host runs and its agent answered.
    Running,
    /// The host is listed but its agent did not answer (restarting, or
    /// about to be declared failed): wait, do not replace.
    Unreachable,
    /// The cloud says the host is gone for good (a dead machine).
    Failed,
}

/// A node as its agent reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeObs {
    /// The node id this host holds data for; `None` before a node started.
    pub node_id: Option<u64>,
    pub process: NodeProcess,
    /// The node answers `/v1/health`: it serves (quorum in sight, caught up).
    pub healthy: bool,
    pub restart_generation: u64,
    pub version: String,
}

/// The node process's state on its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeProcess {
    /// No node on this host yet.
    Absent,
    /// Started, or being restarted by its agent after a crash.
    Starting,
    Running,
    /// Stopped on request (`running: false`); its data is kept.
    Stopped,
}

/// The cluster as observed in one loop.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// Every host the cloud lists, by name.
    pub hosts: BTreeMap<String, HostObs>,
    /// The data plane's members (node ids), as the leader node knows them.
    /// Empty before the first node ran.
    pub members: Vec<u64>,
    /// Which host each member runs on, from the data plane's peer addresses
    /// and the cloud's host list: known even when the agent does not answer.
    pub member_hosts: BTreeMap<u64, String>,
    /// Whether every member has applied through the current configuration's
    /// first index: until then a removed node may still be needed as the
    /// only source of the previous configuration's tail, and its host is
    /// kept.
    pub members_caught_up: bool,
    /// The OmniPaxos leader's node id.
    pub leader: Option<u64>,
    /// When the observation was made, in milliseconds since the Unix epoch
    /// (the leader agent's clock): when scheduled backups fall due.
    #[serde(default)]
    pub now_ms: u64,
    /// The cluster version (`MAJOR.MINOR`) in the leader node's state:
    /// releases that cannot run it are refused. `None` from a node older
    /// than the cluster version gate.
    #[serde(default)]
    pub cluster_version: Option<String>,
}

impl Observed {
    /// The host holding node `id`'s data, if any.
    pub fn host_of(&self, id: u64) -> Option<&HostObs> {
        if let Some(host) = self.member_hosts.get(&id).and_then(|name| self.hosts.get(name)) {
            return Some(host);
        }
        self.hosts.values().find(|h| h.node.as_ref().and_then(|n| n.node_id) == Some(id))
    }

    /// Whether member `id` serves: its host runs and its node is healthy.
    pub fn is_up(&self, id: u64) -> bool {
        self.host_of(id).is_some_and(|h| {
            h.state == HostCondition::Running && h.node.as_ref().is_some_and(|n| n.healthy)
        })
    }

    /// Whether member `id` is gone for good: its host failed or vanished.
    pub fn is_lost(&self, id: u64) -> bool {
        self.host_of(id).is_none_or(|h| h.state == HostCondition::Failed)
    }

    /// How many members serve.
    pub fn up_count(&self) -> usize {
        self.members.iter().filter(|&&id| self.is_up(id)).count()
    }
}

/// The smallest number of members that decides: a majority.
pub fn majority(members: usize) -> usize {
    members / 2 + 1
}

/// What the control plane intends for one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub zone: String,
    /// The node id assigned to this host (before or after its node started).
    pub node_id: Option<u64>,
    pub role: HostRole,
}

/// Where a host is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostRole {
    /// Created (or being created) to hold a new member.
    Provisioning,
    /// Its node is a member.
    Serving,
    /// Its node was removed (or never joined): the host is to be deleted.
    Retiring,
}

/// One step of reconciliation: the only effects the leader agent has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Step {
    /// Asks the cloud for a host (idempotent by name).
    CreateHost { host: String, zone: String },
    /// Starts node `node_id` on `host`; with `join` it enters the running
    /// cluster through a member (the data plane adds it).
    StartNode { host: String, node_id: u64, join: bool },
    /// Starts node `node_id` on `host` from the backup at `from` (the
    /// bootstrap of a cluster whose desired state has `restore_from`): the
    /// agent restores the backup into the node's empty data directory,
    /// checking every file's sum, then runs the node. Idempotent: a node
    /// with data is only started.
    RestoreNode { host: String, node_id: u64, from: String },
    /// Stops the nodes of `hosts`, in order, keeping their data.
    StopNodes { hosts: Vec<String> },
    /// Restarts `host`'s node unless it already runs `generation`.
    RestartNode { host: String, generation: u64 },
    /// Runs `host`'s node as `version` (an upgrade or a downgrade):
    /// installs it from `artifacts` unless the host has it, then restarts
    /// the node with it (idempotent: a no-op when it runs that version).
    RunVersion { host: String, version: String, artifacts: Option<String> },
    /// Removes node `node_id` from the data plane's membership.
    /// Node ids are reused: `host` says which node `node_id` is meant, so a
    /// step planned from a stale look cannot remove its successor.
    RemoveMember { node_id: u64, host: Option<String> },
    /// Deletes a host and its data (idempotent).
    DeleteHost { host: String },
    /// Takes backup `name` into `sink` on `host`'s node (a follower where
    /// there is one). A name the sink already holds counts as taken (the
    /// step is idempotent); `slot_ms` is a scheduled backup's time slot.
    TakeBackup { name: String, sink: String, host: String, slot_ms: Option<u64> },
    /// Deletes backup `name` from `sink`, and the files no other backup of
    /// the sink shares (idempotent).
    DeleteBackup { name: String, sink: String },
}

/// A backup the control plane took, or set out to take, and keeps track
/// of until it deletes it. Recorded before the step that takes it runs, so
/// that one taken by a leader that died before it could say so is still
/// known, and deleted when no longer wanted: the control plane leaves no
/// backup behind that it does not know of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub name: String,
    pub sink: String,
    /// A scheduled backup's time slot (milliseconds since the Unix epoch);
    /// `None` for one taken on demand.
    pub slot_ms: Option<u64>,
    /// Whether a step taking it finished; until then the sink may hold all,
    /// part or none of it.
    pub taken: bool,
}

/// Why a step planned from an earlier observation may not run now
/// ([`Step::check`] against a fresh one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsafe {
    #[error("{step} would cost the quorum: fewer than {} of nodes {:?} serve", .guard.at_least, .guard.among)]
    CostsQuorum { step: String, guard: Guard },
    #[error("node {node_id} is no longer the one on {host}")]
    NodeMoved { node_id: u64, host: String },
    #[error("{host} holds node {node_id}, a member")]
    HoldsMember { host: String, node_id: u64 },
    #[error("{host} may still be needed: not every member caught up")]
    MembersBehind { host: String },
}

/// What must hold right before a disruptive step runs: at least `at_least`
/// of the members `among` serve. The planner only proposes steps whose guard
/// holds in its observation; the executor checks the guard again against a
/// fresh look, so a stale observation cannot make a step cost the quorum.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    pub among: Vec<u64>,
    pub at_least: usize,
}

impl Guard {
    /// Whether the guard holds in `observed`.
    pub fn holds(&self, observed: &Observed) -> bool {
        self.among.iter().filter(|&&id| observed.is_up(id)).count() >= self.at_least
    }
}

impl Step {
    /// The quorum guard of this step, for the steps that take a member down
    /// or out; `None` for the others.
    pub fn guard(&self, observed: &Observed) -> Option<Guard> {
        let (disrupted, removed) = match self {
            Step::RestartNode { host, .. } | Step::RunVersion { host, .. } => {
                (observed.hosts.get(host).and_then(|h| h.node.as_ref()?.node_id)?, false)
            }
            Step::RemoveMember { node_id, .. } => (*node_id, true),
            _ => return None,
        };
        let n = observed.members.len();
        if n <= 1 && !removed {
            // A single replica has nothing to keep a quorum with: restarting
            // it is the one step that makes the cluster unavailable.
            return None;
        }
        let among: Vec<u64> =
            observed.members.iter().copied().filter(|&id| id != disrupted).collect();
        let at_least = if removed {
            // The old configuration decides the change (the removed node
            // counts if it serves), the new one must decide what follows.
            let removed_up = usize::from(observed.is_up(disrupted));
            majority(n).saturating_sub(removed_up).max(majority(n.saturating_sub(1)))
        } else {
            majority(n)
        };
        Some(Guard { among, at_least })
    }

    /// Checks, against a fresh observation, that this step is still safe:
    /// its quorum guard holds, and a host to delete holds no member (and,
    /// unless it failed, every member caught up). The executor calls this
    /// right before running a step, so that a step planned from a stale
    /// observation cannot do harm.
    pub fn check(&self, fresh: &Observed) -> Result<(), Unsafe> {
        if let Some(guard) = self.guard(fresh) {
            if !guard.holds(fresh) {
                return Err(Unsafe::CostsQuorum { step: self.describe(), guard });
            }
        }
        if let Step::RemoveMember { node_id, host: Some(host) } = self {
            let now = fresh.host_of(*node_id).map(|h| &h.name);
            if now.is_some_and(|now| now != host) {
                return Err(Unsafe::NodeMoved { node_id: *node_id, host: host.clone() });
            }
        }
        if let Step::DeleteHost { host } = self {
            let member = fresh.members.iter().find(|&&id| {
                fresh.member_hosts.get(&id) == Some(host)
                    || fresh.hosts.get(host).and_then(|h| h.node.as_ref()?.node_id) == Some(id)
            });
            if let Some(id) = member {
                return Err(Unsafe::HoldsMember { host: host.clone(), node_id: *id });
            }
            let failed = fresh.hosts.get(host).is_none_or(|h| h.state == HostCondition::Failed);
            if !failed && !fresh.members_caught_up {
                return Err(Unsafe::MembersBehind { host: host.clone() });
            }
        }
        Ok(())
    }

    /// The step for people: `create host-4 in zone-b`.
    pub fn describe(&self) -> String {
        match self {
            Step::CreateHost { host, zone } => format!("create {host} in {zone}"),
            Step::StartNode { host, node_id, join: true } => {
                format!("start node {node_id} on {host} and add it")
            }
            Step::StartNode { host, node_id, join: false } => {
                format!("start node {node_id} on {host}")
            }
            Step::RestoreNode { host, node_id, from } => {
                format!("start node {node_id} on {host} from backup {from}")
            }
            Step::StopNodes { hosts } => format!("stop the nodes on {}", hosts.join(", ")),
            Step::RestartNode { host, generation } => {
                format!("restart the node on {host} (generation {generation})")
            }
            Step::RunVersion { host, version, .. } => {
                format!("run version {version} on {host}")
            }
            Step::RemoveMember { node_id, host: Some(host) } => {
                format!("remove node {node_id} ({host})")
            }
            Step::RemoveMember { node_id, host: None } => format!("remove node {node_id}"),
            Step::DeleteHost { host } => format!("delete {host}"),
            Step::TakeBackup { name, sink, host, .. } => {
                format!("take backup {sink}/{name} on {host}")
            }
            Step::DeleteBackup { name, sink } => format!("delete backup {sink}/{name}"),
        }
    }
}

/// The system record `control` (`/v1/system/control`): the control state
/// and the report made from it, which `/v1/cluster` shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub control: ControlState,
    pub report: crate::status::Report,
}

/// The control state: what the reconciler must not forget when its leader
/// dies. Stored in the data plane's system table after every change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlState {
    /// The accepted desired state.
    pub accepted: Option<DesiredState>,
    pub state: ReconcileState,
    /// The step being taken (persisted before it runs).
    pub step: Option<Step>,
    /// Failed tries of the current step.
    pub attempts: u32,
    /// Loops spent waiting for the cluster to settle (a node joining, a node
    /// restarting) without a step to take.
    pub waited_loops: u32,
    /// Why the state is what it is.
    pub message: String,
    /// What the control plane intends for each host, by name. (Stored as
    /// `inventory` before it was renamed: such records still read.)
    #[serde(alias = "inventory")]
    pub host_plans: BTreeMap<String, HostPlan>,
    /// The number in the next host's name (`host-N`).
    pub next_host_number: u64,
    /// Whether a node ever ran (then `restore_from` is refused).
    pub has_run: bool,
    /// The backups taken by the control plane and not deleted, on demand and
    /// scheduled, oldest first.
    #[serde(default)]
    pub backups: Vec<BackupRecord>,
}

impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            accepted: None,
            state: ReconcileState::WorkingTowardsDesiredState,
            step: None,
            attempts: 0,
            waited_loops: 0,
            message: String::new(),
            host_plans: BTreeMap::new(),
            next_host_number: 1,
            has_run: false,
            backups: Vec::new(),
        }
    }
}
