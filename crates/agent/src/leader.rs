//! The reconciliation loop, run by every agent and acting in one: the agent
//! beside the OmniPaxos leader node (before any node exists, the agent of
//! the cloud's first host, which bootstraps the cluster).
//!
//! Each turn (every [`LOOP_MS`]): read the newest desired state from the
//! cloud, observe, and read the control state from the system table; let
//! [`cairn_control::reconcile::turn`] decide; store the control state; run
//! the step after checking it against a fresh look
//! ([`Step::check`](cairn_control::model::Step::check)); record the outcome,
//! store again, and report the status to the cloud. A turn first decides
//! from the local node's copy of the control state, and when that turn
//! would change nothing it ends there: an idle cluster's log stays idle.
//! Anything else is decided again from a linearizable read.
//!
//! Because the control state is replicated by the data plane and stored
//! before a step runs, an agent that becomes leader after another died
//! carries on from the same state; every step is idempotent, so one that ran
//! (or half ran) before its leader died is simply taken again.
//!
//! Two rules run on every agent, leader or not, for the one time no leader
//! can act — when the cluster is stopped (`running: false`):
//! - an agent whose node was stopped by the cluster starts it again once the
//!   cloud's desired state says `running: true` (the cloud serves only the
//!   newest state, so that is a newer one than the one that stopped it);
//! - an agent whose node has not served for [`STOP_WITHOUT_QUORUM_MS`], and
//!   whose node's own copy of the control state says the cluster is to be
//!   stopped, stops it: a stop cut short by a failure still completes.
//!
//! Two agents may both believe they lead for a moment (at a leader change,
//! a deposed leader's node has not noticed yet). Three things keep that
//! harmless: every write of the control state expects the revision it read
//! (the system table refuses a write over another, so of two agents acting
//! from one state only one records its step and the other drops its turn);
//! an agent that finds the step in flight of another agent whose node still
//! says it leads waits it out (for at most [`DEFER_MAX_MS`]); and every step
//! is idempotent and checked against a fresh look right before it runs.
//!
//! Not here: deciding (the planner), the agent's own commands (the
//! supervisor).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::{Read, CONTROL_KEY};
use cairn_cloud::{CreateHost, Host, HostState};
use cairn_control::desired::{parse, DesiredState};
use cairn_control::execute::{run_turn, Effects, Outcome};
use cairn_control::model::{ControlRecord, ControlState, Observed, Step};
use cairn_control::reconcile::{report, turn};
use cairn_control::status::Report;

use crate::client::{AgentClient, INSTALL_CALL_TIMEOUT_MS};
use crate::observe::{ask_status, host_obs, Observer, HTTP_TIMEOUT_MS};
use crate::status::{NodeState, NodeStatus};
use crate::supervisor::Supervisor;
use crate::TurnError;

/// How often the loop turns.
pub const LOOP_MS: u64 = 500;
/// The longest one step may take (a membership change waits for a node to
/// join and catch up).
pub const STEP_TIMEOUT_MS: u64 = 120_000;
/// How long a restarted node may take to serve again, caught up.
const SETTLE_TIMEOUT_MS: u64 = 60_000;
/// How often it is asked meanwhile.
const SETTLE_POLL_MS: u64 = 200;
/// How long a node may go without serving before its agent checks whether
/// the cluster was asked to stop.
pub const STOP_WITHOUT_QUORUM_MS: u64 = 5_000;
/// How long an agent that now leads waits for the step in flight of another
/// agent that still answers.
pub const DEFER_MAX_MS: u64 = 10_000;

/// What the loop needs to know about its host.
pub struct LeaderConfig {
    pub host: String,
    pub cloud: String,
    /// The cloud's admin token.
    pub cloud_token: Option<String>,
    /// The local node's admin token.
    pub node_token: Option<String>,
    /// This agent's TLS client settings, for calls to other agents.
    pub agent_tls: Option<Arc<rustls::ClientConfig>>,
    /// How to reach nodes' HTTPS APIs (trust in the CA).
    pub api_tls: Option<Arc<rustls::ClientConfig>>,
    /// The local node's HTTP address.
    pub node: String,
}

/// Runs the loop until the task is dropped.
pub async fn run(config: LeaderConfig, supervisor: Supervisor) {
    let step_timeout = Duration::from_millis(STEP_TIMEOUT_MS);
    let observer = match Observer::new(
        &config.cloud,
        config.cloud_token.clone(),
        &config.node,
        config.node_token.clone(),
        config.agent_tls.clone(),
        config.api_tls.clone(),
        step_timeout,
    ) {
        Ok(observer) => observer,
        Err(e) => {
            tracing::error!(error = %e, "the reconciliation loop cannot start");
            return;
        }
    };
    let mut leader = Leader {
        config,
        observer,
        supervisor,
        memory: None,
        stored: None,
        revision: 0,
        deferring: None,
        unhealthy_since: None,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(LOOP_MS)).await;
        leader.once().await;
    }
}

/// A leader's turn acting on the world: the cloud, the agents, its node.
struct Acting<'a> {
    leader: &'a mut Leader,
    /// The hosts as the turn's observation found them.
    hosts: Vec<Host>,
    /// No node exists yet: nothing to store the control state in.
    bootstrap: bool,
}

impl Effects for Acting<'_> {
    type Error = TurnError;

    async fn look(&mut self) -> Result<Observed, TurnError> {
        Ok(self.leader.observer.observe().await?.0)
    }

    async fn run(&mut self, step: &Step, desired: &DesiredState) -> Result<(), TurnError> {
        tracing::info!(step = %step.describe(), "taking a step");
        // Installing a version may download a large artifact first.
        let timeout_ms = match step {
            Step::RunVersion { .. } | Step::RestoreNode { .. } => {
                INSTALL_CALL_TIMEOUT_MS + STEP_TIMEOUT_MS
            }
            _ => STEP_TIMEOUT_MS,
        };
        let timeout = Duration::from_millis(timeout_ms);
        match tokio::time::timeout(timeout, self.leader.run_step(step, desired, &self.hosts)).await
        {
            Ok(result) => result,
            Err(_) => Err(TurnError::Timeout(timeout_ms)),
        }
    }

    /// Stores the decision before a step (and reports it to the cloud),
    /// and the outcome after it: that one is reported with the next turn's
    /// decision.
    async fn store(
        &mut self,
        control: &ControlState,
        pending_id: Option<u64>,
        after_step: bool,
    ) -> Result<(), TurnError> {
        self.leader.store(control, pending_id, self.bootstrap, !after_step).await
    }
}

/// A client of the agent on host `name`, as the cloud lists it.
async fn agent_client(
    hosts: &[Host],
    name: String,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<AgentClient, TurnError> {
    let host = hosts.iter().find(|h| h.name == name).ok_or(TurnError::UnknownHost(name))?;
    let timeout = Duration::from_millis(HTTP_TIMEOUT_MS);
    Ok(AgentClient::connect_with(&host.agent_address, timeout, tls).await?)
}

/// The control record as the system table keeps it, stamped with its
/// revision.
#[derive(serde::Deserialize)]
struct StoredRecord {
    revision: u64,
    #[serde(flatten)]
    record: ControlRecord,
}

struct Leader {
    config: LeaderConfig,
    observer: Observer,
    supervisor: Supervisor,
    /// The last control state this agent wrote or read: the state before
    /// the first node exists to store it.
    memory: Option<ControlState>,
    /// The control state as the system table holds it, as far as this agent
    /// knows: an unchanged state is not written again (an idle cluster's log
    /// stays idle).
    stored: Option<ControlRecord>,
    /// The record's revision as last read or written (0: no record): every
    /// write expects it, so of two agents acting from one revision only one
    /// writes, and the other drops its turn.
    revision: u64,
    /// Another host's step in flight this agent is waiting out, and since
    /// when.
    deferring: Option<(String, Instant)>,
    unhealthy_since: Option<Instant>,
}

impl Leader {
    async fn once(&mut self) {
        let own = self.supervisor.status();
        if own.stopped {
            self.wake_if_asked(&own).await;
            return;
        }
        self.stop_if_cluster_stopped(&own).await;
        match self.leads(&own).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::debug!(error = %e, "cannot tell who leads");
                return;
            }
        }
        if let Err(e) = self.lead(&own).await {
            tracing::warn!(error = %e, "reconciliation turn failed");
        }
    }

    /// Whether this agent leads: beside the leader node, or, before any
    /// node exists, on the cloud's first live host.
    async fn leads(&self, own: &NodeStatus) -> Result<bool, TurnError> {
        if own.node_id != 0 {
            let membership = self.observer.membership().await?;
            return Ok(membership.leader == Some(own.node_id));
        }
        let hosts = self.observer.hosts().await?;
        let first = hosts.iter().find(|h| h.state != HostState::Failed);
        if first.is_none_or(|h| h.name != self.config.host) {
            return Ok(false);
        }
        // Bootstrap only where no node answers anywhere: a new host added to
        // a running cluster must not start a second cluster.
        let timeout = Duration::from_millis(HTTP_TIMEOUT_MS);
        for host in hosts.iter().filter(|h| h.name != self.config.host) {
            // An address that does not parse has no node to answer; any
            // answer, 503 included, is a node.
            let tls = self.observer.api_tls.clone();
            let Ok(node) = cairn_client::Client::with_tls(&host.api_address, timeout, tls) else {
                continue;
            };
            if !matches!(node.health().await, Err(cairn_client::Error::Transport { .. })) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn lead(&mut self, own: &NodeStatus) -> Result<(), TurnError> {
        let bootstrap = own.node_id == 0;
        let offered = self.offered().await;
        let (observed, hosts) = self.observe(bootstrap).await?;
        if !bootstrap && self.idle(offered.as_ref(), &observed).await? {
            return Ok(());
        }
        let read = if bootstrap { None } else { self.read_control(Read::Linearizable).await? };
        let read = match read {
            Some(StoredRecord { revision, record }) => {
                self.revision = revision;
                if self.defer(&record).await {
                    return Ok(());
                }
                let control = record.control.clone();
                self.stored = Some(record);
                Some(control)
            }
            None => {
                self.revision = 0;
                None
            }
        };
        let control = read.or_else(|| self.memory.clone()).unwrap_or_default();
        let mut acting = Acting { leader: self, hosts, bootstrap };
        let turned =
            run_turn(&mut acting, &control, offered.as_ref(), &observed, !bootstrap).await?;
        match turned.step {
            Some((step, Outcome::Refused(why) | Outcome::Failed(why))) => {
                tracing::warn!(step = %step.describe(), error = %why, "the step failed");
            }
            Some((step, Outcome::Done)) => tracing::info!(step = %step.describe(), "step done"),
            None => {}
        }
        Ok(())
    }

    async fn observe(&self, bootstrap: bool) -> Result<(Observed, Vec<Host>), TurnError> {
        if !bootstrap {
            return self.observer.observe().await;
        }
        // No node yet: no membership to read, only hosts and agents.
        let hosts = self.observer.hosts().await?;
        let mut observed = Observed::default();
        for host in &hosts {
            let status = self.agent_status(host).await;
            observed.hosts.insert(host.name.clone(), host_obs(host, status));
        }
        Ok((observed, hosts))
    }

    async fn agent_status(&self, host: &Host) -> Option<NodeStatus> {
        if host.name == self.config.host {
            return Some(self.supervisor.status());
        }
        ask_status(&host.agent_address, self.observer.agent_tls.clone()).await
    }

    /// The stored control record, with its revision.
    async fn read_control(&self, read: Read) -> Result<Option<StoredRecord>, TurnError> {
        Ok(self.observer.node.system_get(CONTROL_KEY, read).await?)
    }

    /// Whether this turn has nothing to do, judged from the local node's
    /// own copy of the control record, which costs no log entry (a
    /// linearizable read is a barrier entry, and the loop turns twice a
    /// second: an idle cluster's log would grow for ever). Idle means that
    /// the turn would run no step and store the record as it is; the status
    /// is still reported to the cloud. A turn that would do anything reads
    /// the record again, linearizably, and decides from that: a stale copy
    /// can make a turn idle late, never act. It lags only by what another
    /// agent wrote and this node has not applied yet (this agent's own
    /// writes are applied here before they are answered).
    async fn idle(
        &self,
        offered: Option<&DesiredState>,
        observed: &Observed,
    ) -> Result<bool, TurnError> {
        let Some(StoredRecord { record, .. }) = self.read_control(Read::Local).await? else {
            return Ok(false);
        };
        let t = turn(&record.control, offered, observed);
        let unchanged = ControlRecord {
            report: report(&t.control, t.pending_id, Some(self.config.host.clone())),
            control: t.control,
        };
        if t.step.is_some() || unchanged != record {
            return Ok(false);
        }
        self.report(&record.report).await;
        Ok(true)
    }

    /// Stores the control state (when a node exists) and, with `tell`,
    /// reports it to the cloud.
    async fn store(
        &mut self,
        control: &ControlState,
        pending_id: Option<u64>,
        bootstrap: bool,
        tell: bool,
    ) -> Result<(), TurnError> {
        self.memory = Some(control.clone());
        let report = report(control, pending_id, Some(self.config.host.clone()));
        let record = ControlRecord { control: control.clone(), report: report.clone() };
        let stored = if bootstrap || self.stored.as_ref() == Some(&record) {
            Ok(())
        } else {
            let node = &self.observer.node_steps;
            match node.system_put(CONTROL_KEY, &record, Some(self.revision)).await {
                Ok(revision) => {
                    self.revision = revision;
                    self.stored = Some(record);
                    Ok(())
                }
                Err(e) => {
                    // Another agent wrote first (or the write failed): what
                    // this turn decided is dropped; the next turn reads again.
                    self.stored = None;
                    Err(e.into())
                }
            }
        };
        if tell {
            self.report(&report).await;
        }
        stored
    }

    /// Whether to wait out another host's step in flight: while its agent
    /// answers and its node says it leads, for at most [`DEFER_MAX_MS`], so
    /// that two agents that both think they lead (for a moment, at a leader
    /// change) do not take two disruptive steps at once. A dead agent's
    /// step, or one beside a node that no longer leads, is taken over at
    /// once.
    async fn defer(&mut self, record: &ControlRecord) -> bool {
        let other = record.report.leader_host.clone().unwrap_or_default();
        if record.control.step.is_none() || other.is_empty() || other == self.config.host {
            self.deferring = None;
            return false;
        }
        let since = match &self.deferring {
            Some((host, since)) if *host == other => *since,
            _ => {
                let now = Instant::now();
                self.deferring = Some((other.clone(), now));
                now
            }
        };
        if since.elapsed() >= Duration::from_millis(DEFER_MAX_MS) {
            return false;
        }
        let Ok(hosts) = self.observer.hosts().await else { return false };
        let Some(host) = hosts.iter().find(|h| h.name == other) else { return false };
        // It acts only while its node leads: a restarted agent beside a node
        // that no longer leads will not finish the step.
        let acting = self
            .agent_status(host)
            .await
            .is_some_and(|s| s.role == Some(cairn_client::NodeRole::Leader));
        if acting {
            tracing::debug!(host = %other, "waiting out another agent's step in flight");
        }
        acting
    }

    async fn report(&self, report: &Report) {
        if let Err(e) = self.observer.cloud.post_status(report).await {
            tracing::debug!(error = %e, "cannot report to the cloud");
        }
    }

    async fn offered(&self) -> Option<DesiredState> {
        let record = self.observer.cloud.desired().await.ok()??;
        match parse(&record.text) {
            Ok(state) => Some(state),
            Err(e) => {
                tracing::warn!(error = %e, "the cloud serves a desired state this agent refuses");
                None
            }
        }
    }

    async fn run_step(
        &self,
        step: &Step,
        desired: &DesiredState,
        hosts: &[Host],
    ) -> Result<(), TurnError> {
        let agent =
            |name: &str| agent_client(hosts, name.to_string(), self.observer.agent_tls.clone());
        match step {
            Step::CreateHost { host, zone } => {
                let request = CreateHost {
                    name: host.clone(),
                    zone: zone.clone(),
                    host_type: desired.host_type.clone(),
                };
                self.observer.cloud.create_host(&request).await?;
            }
            Step::StartNode { host, node_id, join } => {
                let join = join.then(|| self.config.node.clone());
                let client = agent(host).await?;
                // A new node runs the cluster's version from its first
                // start: the agent's own may not run the cluster version.
                client.run_version(&desired.version, desired.artifacts.as_deref()).await?;
                client.start_node(*node_id, join, desired.restart_generation).await?;
            }
            Step::RestoreNode { host, node_id, from } => {
                let client = agent(host).await?;
                client.run_version(&desired.version, desired.artifacts.as_deref()).await?;
                client.restore_node(*node_id, from, desired.restart_generation).await?;
            }
            Step::StopNodes { hosts: names } => {
                for name in names {
                    if *name == self.config.host {
                        self.supervisor.stop_node().await?;
                    } else {
                        agent(name).await?.stop_node().await?;
                    }
                }
            }
            Step::RestartNode { host, generation } => {
                let target = self.decided_index().await?;
                agent(host).await?.restart_node(*generation).await?;
                self.settle(host, hosts, target).await?;
            }
            Step::RunVersion { host, version, artifacts } => {
                let target = self.decided_index().await?;
                agent(host).await?.run_version(version, artifacts.as_deref()).await?;
                self.settle(host, hosts, target).await?;
            }
            Step::RemoveMember { node_id, .. } => {
                // Already gone is done: the step is idempotent.
                match self.observer.node_steps.remove_member(*node_id).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some("member_not_found") => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Step::DeleteHost { host } => {
                self.observer.cloud.delete_host(host).await?;
            }
            Step::TakeBackup { name, sink, host, .. } => {
                let listed = hosts.iter().find(|h| h.name == *host);
                let address = listed.ok_or_else(|| TurnError::UnknownHost(host.clone()))?;
                let on_host = |source| TurnError::HostNode { host: host.clone(), source };
                let node = cairn_client::Client::with_tls(
                    &address.api_address,
                    Duration::from_millis(STEP_TIMEOUT_MS),
                    self.observer.api_tls.clone(),
                )
                .map_err(on_host)?
                .with_token(self.config.node_token.clone());
                // Taken already (by an earlier try whose answer was lost):
                // the step is idempotent.
                match node.create_backup(name, Some(sink)).await {
                    Ok(taken) => tracing::info!(
                        backup = %format!("{sink}/{name}"),
                        host = %host,
                        index = taken.applied_index,
                        bytes = taken.bytes,
                        new_bytes = taken.new_bytes,
                        "backup taken"
                    ),
                    Err(e) if e.code() == Some("backup_exists") => {}
                    Err(e) => return Err(on_host(e)),
                }
            }
            Step::DeleteBackup { name, sink } => {
                self.observer.node_steps.delete_backup(name, Some(sink)).await?;
            }
        }
        Ok(())
    }

    /// How far the leader had decided, as the local node knows it now (its
    /// own index when it leads, which the leader agent's node does).
    async fn decided_index(&self) -> Result<u64, TurnError> {
        let view = self.observer.node.cluster().await?;
        let leader = view.leader.and_then(|id| view.node(id)?.decided_index);
        let most = view.nodes.iter().filter_map(|n| n.decided_index).max();
        Ok(leader.or(most).unwrap_or(0))
    }

    /// Waits until `host`'s node, just restarted by a step, serves again and
    /// has applied through `target`: a rolling restart or upgrade touches
    /// the next node only once this one is whole again.
    async fn settle(&self, host: &str, hosts: &[Host], target: u64) -> Result<(), TurnError> {
        let listed = hosts.iter().find(|h| h.name == host);
        let address = listed.ok_or_else(|| TurnError::UnknownHost(host.to_string()))?;
        let started = Instant::now();
        let mut now = String::from("its agent did not answer");
        while started.elapsed() < Duration::from_millis(SETTLE_TIMEOUT_MS) {
            let status = if host == self.config.host {
                Some(self.supervisor.status())
            } else {
                ask_status(&address.agent_address, self.observer.agent_tls.clone()).await
            };
            if let Some(status) = status {
                if status.healthy && status.applied_index >= target {
                    tracing::info!(host, target, applied = status.applied_index, "node caught up");
                    return Ok(());
                }
                now = format!(
                    "it is {}{}, applied through {}",
                    status.state.as_str(),
                    if status.healthy { " and healthy" } else { ", not healthy" },
                    status.applied_index
                );
            }
            tokio::time::sleep(Duration::from_millis(SETTLE_POLL_MS)).await;
        }
        Err(TurnError::NotCaughtUp {
            host: host.to_string(),
            target,
            now,
            waited_ms: SETTLE_TIMEOUT_MS,
        })
    }

    /// Starts a node the cluster stopped once the cloud asks it to run.
    async fn wake_if_asked(&self, own: &NodeStatus) {
        let Some(desired) = self.offered().await else { return };
        if !desired.running || own.node_id == 0 {
            return;
        }
        tracing::info!(desired = desired.id, "the cluster is to run again: starting the node");
        if let Err(e) = self.supervisor.start_node(own.node_id, None, own.restart_generation).await
        {
            tracing::warn!(error = %e, "cannot start the node");
        }
    }

    /// Stops a node that lost its quorum when its own copy of the control
    /// state says the cluster is to stop.
    async fn stop_if_cluster_stopped(&mut self, own: &NodeStatus) {
        if own.node_id == 0 || own.healthy || own.state != NodeState::Running {
            self.unhealthy_since = None;
            return;
        }
        let since = *self.unhealthy_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Duration::from_millis(STOP_WITHOUT_QUORUM_MS) {
            return;
        }
        let read = self.observer.node.system_get::<StoredRecord>(CONTROL_KEY, Read::Local).await;
        let Ok(Some(stored)) = read else { return };
        if stored.record.control.accepted.is_some_and(|desired| !desired.running) {
            tracing::info!("the cluster is stopped: stopping this node too");
            if let Err(e) = self.supervisor.stop_node().await {
                tracing::warn!(error = %e, "cannot stop the node");
            }
        }
    }
}
