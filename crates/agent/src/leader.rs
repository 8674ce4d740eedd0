//! The reconciliation loop, run by every agent and acting in one: the agent
//! beside the OmniPaxos leader node (before any node exists, the agent of
//! the cloud's first host, which bootstraps the cluster).
//!
//! Each turn (every [`LOOP_MS`]): read the control state from the system
//! table, the newest desired state from the cloud, and observe; let
//! [`cairn_control::reconcile::turn`] decide; store the control state; run
//! the step after checking it against a fresh look
//! ([`Step::check`](cairn_control::model::Step::check)); record the outcome,
//! store again, and report the status to the cloud.
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

use std::time::{Duration, Instant};

use cairn_client::CONTROL_KEY;
use cairn_cloud::{CreateHost, Host, HostState};
use cairn_control::desired::{parse, DesiredState};
use cairn_control::model::{ControlState, Observed, Step};
use cairn_control::reconcile::{record, report, turn};
use cairn_control::status::Report;
use serde_json::{json, Value};

use crate::client::AgentClient;
use crate::observe::{ask_status, host_obs, Observer, HTTP_TIMEOUT_MS};
use crate::status::{NodeState, NodeStatus};
use crate::supervisor::Supervisor;

/// How often the loop turns.
pub const LOOP_MS: u64 = 500;
/// The longest one step may take (a membership change waits for a node to
/// join and catch up).
pub const STEP_TIMEOUT_MS: u64 = 120_000;
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
    /// The local node's HTTP address.
    pub node: String,
}

/// Runs the loop until the task is dropped.
pub async fn run(config: LeaderConfig, supervisor: Supervisor) {
    let observer = match Observer::new(config.cloud.clone(), config.node.clone()) {
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
    stored: Option<Value>,
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
    async fn leads(&self, own: &NodeStatus) -> Result<bool, String> {
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
        for host in hosts.iter().filter(|h| h.name != self.config.host) {
            // An address that does not parse has no node to answer.
            let Ok(base) = cairn_client::base_url(&host.api_address) else { continue };
            if self.observer.http.get(format!("{base}/v1/health")).send().await.is_ok() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn lead(&mut self, own: &NodeStatus) -> Result<(), String> {
        let bootstrap = own.node_id == 0;
        let read = if bootstrap { None } else { self.read_control().await? };
        let read = match read {
            Some((control, mut record)) => {
                self.revision = record["revision"].as_u64().unwrap_or(0);
                if let Some(fields) = record.as_object_mut() {
                    fields.remove("revision");
                }
                if self.defer(&control, &record).await {
                    return Ok(());
                }
                self.stored = Some(record);
                Some(control)
            }
            None => {
                self.revision = 0;
                None
            }
        };
        let control = read.or_else(|| self.memory.clone()).unwrap_or_default();
        let offered = self.offered().await;
        let (observed, hosts) = self.observe(bootstrap).await?;
        let t = turn(&control, offered.as_ref(), &observed);
        let mut control = t.control;
        self.store(&control, t.pending_id, bootstrap, true).await?;
        if let Some(step) = t.step {
            tracing::info!(step = %step.describe(), "taking a step");
            let result = self.take(&step, &control, &hosts, bootstrap).await;
            if let Err(e) = &result {
                tracing::warn!(step = %step.describe(), error = %e, "the step failed");
            }
            control = record(&control, result);
            // A step that stopped every node cannot be recorded: the state
            // stored before it already says where the cluster is.
            // The outcome is reported with the next turn's decision.
            if !matches!(step, Step::StopNodes { .. }) {
                self.store(&control, t.pending_id, bootstrap, false).await?;
            }
        }
        Ok(())
    }

    async fn observe(&self, bootstrap: bool) -> Result<(Observed, Vec<Host>), String> {
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
        ask_status(&host.agent_address).await
    }

    /// The stored control state, and the whole record it came in.
    async fn read_control(&self) -> Result<Option<(ControlState, Value)>, String> {
        let url = format!("{}/v1/system/{CONTROL_KEY}", self.observer.node);
        let response =
            self.observer.http.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(format!("GET {url}: {}", response.status()));
        }
        let record: Value = response.json().await.map_err(|e| format!("GET {url}: {e}"))?;
        let control = serde_json::from_value(record["control"].clone())
            .map_err(|e| format!("the stored control state is not readable: {e}"))?;
        Ok(Some((control, record)))
    }

    /// Stores the control state (when a node exists) and, with `tell`,
    /// reports it to the cloud.
    async fn store(
        &mut self,
        control: &ControlState,
        pending_id: Option<u64>,
        bootstrap: bool,
        tell: bool,
    ) -> Result<(), String> {
        self.memory = Some(control.clone());
        let report = report(control, pending_id, Some(self.config.host.clone()));
        let record = json!({ "control": control, "report": report });
        let stored = if bootstrap || self.stored.as_ref() == Some(&record) {
            Ok(())
        } else {
            let url = format!(
                "{}/v1/system/{CONTROL_KEY}?expect_revision={}",
                self.observer.node, self.revision
            );
            match send(&self.observer.http, reqwest::Method::PUT, &url, Some(&record), false).await
            {
                Ok(answer) => {
                    self.revision = answer["index"].as_u64().unwrap_or(self.revision);
                    self.stored = Some(record);
                    Ok(())
                }
                Err(e) => {
                    // Another agent wrote first (or the write failed): what
                    // this turn decided is dropped; the next turn reads again.
                    self.stored = None;
                    Err(e)
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
    async fn defer(&mut self, control: &ControlState, record: &Value) -> bool {
        let other = record["report"]["leader_host"].as_str().unwrap_or_default().to_string();
        if control.step.is_none() || other.is_empty() || other == self.config.host {
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

    /// Runs one step after checking it against a fresh look.
    async fn take(
        &self,
        step: &Step,
        control: &ControlState,
        hosts: &[Host],
        bootstrap: bool,
    ) -> Result<(), String> {
        if !bootstrap {
            let (fresh, _) = self.observer.observe().await?;
            step.check(&fresh)?;
        }
        let timeout = Duration::from_millis(STEP_TIMEOUT_MS);
        match tokio::time::timeout(timeout, self.run_step(step, control, hosts)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {STEP_TIMEOUT_MS} ms")),
        }
    }

    async fn run_step(
        &self,
        step: &Step,
        control: &ControlState,
        hosts: &[Host],
    ) -> Result<(), String> {
        let desired = control.accepted.as_ref().ok_or("no accepted desired state")?;
        let agent = |name: &str| -> Result<String, String> {
            hosts
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.agent_address.clone())
                .ok_or_else(|| format!("{name} is not among the cloud's hosts"))
        };
        let connect = |address: String| async move {
            AgentClient::connect(&address, Duration::from_millis(HTTP_TIMEOUT_MS))
                .await
                .map_err(|e| e.to_string())
        };
        match step {
            Step::CreateHost { host, zone } => {
                let request = CreateHost {
                    name: host.clone(),
                    zone: zone.clone(),
                    host_type: desired.host_type.clone(),
                };
                self.observer.cloud.create_host(&request).await.map(drop).map_err(|e| e.to_string())
            }
            Step::StartNode { host, node_id, join } => {
                let join = join.then(|| self.config.node.clone());
                let client = connect(agent(host)?).await?;
                client
                    .start_node(*node_id, join, desired.restart_generation)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Step::StopNodes { hosts: names } => {
                for name in names {
                    if *name == self.config.host {
                        self.supervisor.stop_node().await.map_err(|e| e.to_string())?;
                    } else {
                        let client = connect(agent(name)?).await?;
                        client.stop_node().await.map_err(|e| e.to_string())?;
                    }
                }
                Ok(())
            }
            Step::RestartNode { host, generation } => {
                let client = connect(agent(host)?).await?;
                client.restart_node(*generation).await.map(drop).map_err(|e| e.to_string())
            }
            Step::RemoveMember { node_id, .. } => {
                // Already gone is done: the step is idempotent.
                let url = format!("{}/v1/admin/members/{node_id}", self.observer.node);
                send(&self.observer.http, reqwest::Method::DELETE, &url, None, true).await.map(drop)
            }
            Step::DeleteHost { host } => {
                self.observer.cloud.delete_host(host).await.map(drop).map_err(|e| e.to_string())
            }
        }
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
        let url = format!("{}/v1/system/{CONTROL_KEY}?read=local", self.observer.node);
        let Ok(record) = self.observer.get_json::<Value>(&url).await else { return };
        if record["control"]["accepted"]["running"] == Value::Bool(false) {
            tracing::info!("the cluster is stopped: stopping this node too");
            if let Err(e) = self.supervisor.stop_node().await {
                tracing::warn!(error = %e, "cannot stop the node");
            }
        }
    }
}

/// One call: its JSON answer (`null` when there is none), or an error naming
/// the call and the answer (404 counts as success with `absent_is_done`).
async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&Value>,
    absent_is_done: bool,
) -> Result<Value, String> {
    let mut request =
        http.request(method.clone(), url).timeout(Duration::from_millis(STEP_TIMEOUT_MS));
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.map_err(|e| format!("{method} {url}: {e}"))?;
    let status = response.status();
    if status.is_success() || (absent_is_done && status == reqwest::StatusCode::NOT_FOUND) {
        return Ok(response.json().await.unwrap_or(Value::Null));
    }
    Err(format!("{method} {url}: {status}: {}", response.text().await.unwrap_or_default()))
}
