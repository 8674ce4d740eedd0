//! The `local` provider: a host is a directory `<root>/hosts/<name>/` and one
//! agent process on loopback ports, supervised by the cloud as an init system
//! would supervise it on a real machine.
//!
//! Every host has a supervisor task that owns its agent's `Child`: it waits
//! for the agent to exit, sweeps what the agent left in its process group,
//! and starts it again after [`RESTART_DELAY_MS`] (doubling, up to
//! [`RESTART_DELAY_MS_MAX`], once the agent died young
//! [`QUICK_EXITS_BEFORE_BACKOFF`] times in a row), as long as the host is
//! active. Operations on a host (create, fail, delete, shutdown)
//! change its lifecycle under the one lock first, then signal processes, then
//! wait for the supervisor to end; a supervisor only starts an agent under
//! the lock, after checking the lifecycle. So no agent is started for a host
//! that is failed, being deleted, or whose cloud is shutting down.
//!
//! Invariants:
//! - the inventory on disk holds every host the cloud made that is not fully
//!   deleted: it is saved before an operation answers, and a deletion is
//!   recorded (lifecycle `deleting`) before anything is removed, so a cloud
//!   that dies mid-way finishes it when it starts again;
//! - host numbers grow and are never given twice; a number fixes the ports;
//! - the lock is never held across an await (the futures would not be `Send`).
//!
//! Not done here: deciding which hosts should exist (the leader agent does),
//! host types (every local host is the same machine), and anything about the
//! node beyond killing the one named in `node.pid` when its host fails or is
//! deleted: the agent starts and stops its node.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_util::Backoff;
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};

use crate::inventory::{check_name, HostRecord, Inventory, Lifecycle, Ports};
use crate::process::{self, AgentSpec};
use crate::status::{Events, HostChange, StatusEvent};
use crate::{lock, now_ms, Error};

/// Pause before restarting an agent that exited.
pub const RESTART_DELAY_MS: u64 = 1_000;
/// The longest pause between restarts of an agent that keeps dying young.
pub const RESTART_DELAY_MS_MAX: u64 = 30_000;
/// An agent that ran this long before exiting did not die young: the count
/// of young deaths starts again.
pub const AGENT_STABLE_MS: u64 = 10_000;
/// Young deaths in a row restarted after the shortest pause before the
/// pauses start doubling.
pub const QUICK_EXITS_BEFORE_BACKOFF: u32 = 3;
/// How long a deleted host's agent has to stop after SIGTERM.
pub const DELETE_GRACE_MS: u64 = 10_000;
/// How long every agent has to stop after SIGTERM when the cloud stops.
pub const SHUTDOWN_GRACE_MS: u64 = 15_000;
/// How long a process has to be gone after SIGKILL before the cloud moves on.
pub const KILL_WAIT_MS: u64 = 5_000;
/// Host numbers tried for a new host before giving up on finding free ports.
pub const PORT_SEARCH_NUMBERS_MAX: u32 = 100;
/// How long a delete waits for another delete of the same host to finish.
pub const DELETE_WAIT_MS: u64 = 30_000;
/// The directory under the root that holds the hosts.
pub const HOSTS_DIR: &str = "hosts";
/// How often a delete looks whether another delete finished.
const DELETE_POLL_MS: u64 = 100;

/// How a host looks from outside: `GET /v1/hosts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Its agent process is alive.
    Running,
    /// Its agent exited and is being started again.
    Restarting,
    /// It was made to die; nothing of it runs until it is deleted.
    Failed,
    Deleting,
}

impl HostState {
    /// The state's name, as the API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Running => "running",
            HostState::Restarting => "restarting",
            HostState::Failed => "failed",
            HostState::Deleting => "deleting",
        }
    }
}

/// One host in the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
    pub number: u32,
    pub zone: String,
    pub host_type: String,
    pub state: HostState,
    /// The agent's gRPC, `127.0.0.1:port`.
    pub agent_address: String,
    /// The node's client API.
    pub api_address: String,
    /// The node's peer transport.
    pub peer_address: String,
    /// The agent's pid while it runs.
    pub pid: Option<u32>,
    pub created_ms: u64,
    /// Times the agent was restarted by this run of the cloud.
    pub restarts: u32,
}

/// `POST /v1/hosts`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateHost {
    pub name: String,
    pub zone: String,
    pub host_type: String,
}

/// What the provider needs from the cloud's settings.
pub(crate) struct ProviderConfig {
    /// Absolute, so agents get absolute directories.
    pub root: PathBuf,
    pub agent_bin: PathBuf,
    pub base_port: u16,
    /// Where agents reach the cloud.
    pub cloud_url: String,
    /// The cluster's CA (`<root>/ca`): agents issue their nodes'
    /// certificates from it, so peers talk mutual TLS.
    pub ca_dir: PathBuf,
    /// The admin token's file, which agents read to call the cloud.
    pub token_file: PathBuf,
    /// The nodes' admin token's file, which agents give their nodes.
    pub node_token_file: PathBuf,
    /// Where every node keeps its backups (`<root>/backups`).
    pub backup_dir: PathBuf,
}

/// What this run of the cloud knows of a host beyond the inventory.
#[derive(Default)]
struct Runtime {
    supervisor: Option<JoinHandle<()>>,
    restarts: u32,
    /// A delete is in flight (a second one waits for it).
    deleting: bool,
}

struct Hosts {
    inventory: Inventory,
    runtime: BTreeMap<String, Runtime>,
    shutting_down: bool,
}

/// The hosts of the `local` provider and their agents.
pub(crate) struct LocalProvider {
    config: ProviderConfig,
    inventory_path: PathBuf,
    events: Events,
    hosts: Mutex<Hosts>,
}

/// What a supervisor does after a pause.
enum Restart {
    Started(Child),
    /// Starting failed (logged); try again after the next pause.
    Retry,
    /// The host is no longer active, or the cloud is stopping.
    Stop,
}

/// What a delete found when it began.
enum Deletion {
    Gone,
    InFlight,
    Begun { pid: Option<u32>, supervisor: Option<JoinHandle<()>> },
}

/// The pauses before restarting an agent that keeps dying young: the
/// shortest for the first few (an agent killed once or twice comes back at
/// once), then doubling, so an agent that cannot start does not spin.
pub(crate) fn restart_pauses() -> Backoff {
    Backoff::new(RESTART_DELAY_MS, RESTART_DELAY_MS_MAX)
        .with_free_retries(QUICK_EXITS_BEFORE_BACKOFF - 1)
}

fn view(record: &HostRecord, runtime: Option<&Runtime>) -> Host {
    let state = match record.lifecycle {
        Lifecycle::Failed => HostState::Failed,
        Lifecycle::Deleting => HostState::Deleting,
        Lifecycle::Active if record.agent_pid.is_some() => HostState::Running,
        Lifecycle::Active => HostState::Restarting,
    };
    let [api, peer, agent] = record.ports.addresses();
    Host {
        name: record.name.clone(),
        number: record.number,
        zone: record.zone.clone(),
        host_type: record.host_type.clone(),
        state,
        agent_address: agent.to_string(),
        api_address: api.to_string(),
        peer_address: peer.to_string(),
        pid: record.agent_pid,
        created_ms: record.created_ms,
        restarts: runtime.map_or(0, |r| r.restarts),
    }
}

impl LocalProvider {
    /// Loads the inventory; starts nothing (see [`LocalProvider::resume`]).
    pub fn open(config: ProviderConfig, events: Events) -> Result<Arc<LocalProvider>, Error> {
        let hosts_dir = config.root.join(HOSTS_DIR);
        std::fs::create_dir_all(&hosts_dir)
            .map_err(|e| Error::io("cannot create the hosts directory", &hosts_dir, e))?;
        let inventory_path = Inventory::path(&config.root);
        let inventory = Inventory::load(&inventory_path, config.base_port)?;
        let hosts = Hosts { inventory, runtime: BTreeMap::new(), shutting_down: false };
        Ok(Arc::new(LocalProvider { config, inventory_path, events, hosts: Mutex::new(hosts) }))
    }

    fn host_dir(&self, name: &str) -> PathBuf {
        self.config.root.join(HOSTS_DIR).join(name)
    }

    /// Every host, in number order.
    pub fn list(&self) -> Vec<Host> {
        let hosts = lock(&self.hosts);
        let mut list: Vec<Host> = hosts
            .inventory
            .hosts
            .values()
            .map(|record| view(record, hosts.runtime.get(&record.name)))
            .collect();
        list.sort_by_key(|host| host.number);
        list
    }

    pub fn get(&self, name: &str) -> Result<Host, Error> {
        let hosts = lock(&self.hosts);
        let record = hosts.inventory.hosts.get(name);
        let record = record.ok_or_else(|| Error::HostNotFound { name: name.into() })?;
        Ok(view(record, hosts.runtime.get(name)))
    }

    fn save(&self, hosts: &Hosts) -> Result<(), Error> {
        hosts.inventory.save(&self.inventory_path)
    }

    fn publish(&self, name: &str, change: HostChange, detail: String) {
        let event = StatusEvent::Host { at_ms: now_ms(), name: name.into(), change, detail };
        self.events.publish(event);
    }

    fn spawn_agent(&self, record: &HostRecord) -> Result<Child, Error> {
        let dir = self.host_dir(&record.name);
        let spec = AgentSpec {
            bin: &self.config.agent_bin,
            host: &record.name,
            zone: &record.zone,
            dir: &dir,
            ports: record.ports,
            cloud_url: &self.config.cloud_url,
            ca_dir: &self.config.ca_dir,
            token_file: &self.config.token_file,
            node_token_file: &self.config.node_token_file,
            backup_dir: &self.config.backup_dir,
        };
        process::spawn_agent(&spec, now_ms())
    }

    /// The first host number from `next` whose three ports bind now and lie
    /// outside the kernel's ephemeral port range (see [`crate::ports`]).
    fn allocate(&self, next: u32) -> Result<(u32, Ports), Error> {
        let base_port = self.config.base_port;
        let ephemeral = crate::ports::avoided_range();
        let mut number = next;
        let mut last = next;
        let mut tried = 0;
        while tried < PORT_SEARCH_NUMBERS_MAX {
            let Some(ports) = Ports::for_number(base_port, number) else { break };
            last = number;
            if let Some(range) = ephemeral.as_ref().filter(|range| ports.overlap(range)) {
                // Numbers in the range are skipped, not counted as tries.
                let past = u32::from(*range.end()) + 1;
                let skip_to = past
                    .saturating_sub(u32::from(base_port) + 1)
                    .div_ceil(crate::inventory::PORTS_PER_HOST)
                    + 1;
                tracing::info!(
                    number,
                    skip_to,
                    "host ports in the kernel's ephemeral port range are skipped"
                );
                number = skip_to.max(number + 1);
                continue;
            }
            tried += 1;
            if process::ports_free(&ports) {
                return Ok((number, ports));
            }
            tracing::info!(
                number,
                ?ports,
                "a port of host number {number} is in use; trying the next number"
            );
            number += 1;
        }
        Err(Error::NoFreePorts { first: next, last, base_port })
    }

    /// Creates a host (`true`), or answers the existing one of the same name,
    /// zone and type (`false`): a leader that died after asking may ask
    /// again. The same name with another zone or type is a conflict.
    pub fn create(self: &Arc<Self>, request: CreateHost) -> Result<(Host, bool), Error> {
        check_name("host name", &request.name)?;
        check_name("zone", &request.zone)?;
        check_name("host type", &request.host_type)?;
        let mut guard = lock(&self.hosts);
        let hosts = &mut *guard;
        if hosts.shutting_down {
            return Err(Error::ShuttingDown);
        }
        if let Some(existing) = hosts.inventory.hosts.get(&request.name) {
            return same_host(existing, &request)
                .map(|()| (view(existing, hosts.runtime.get(&request.name)), false));
        }
        let (record, child) = self.add_host(hosts, request)?;
        let supervisor = tokio::spawn(Arc::clone(self).supervise(record.name.clone(), Some(child)));
        let runtime = Runtime { supervisor: Some(supervisor), ..Runtime::default() };
        let host = view(&record, Some(&runtime));
        hosts.runtime.insert(record.name.clone(), runtime);
        drop(guard);
        let detail =
            format!("number {}, zone {}, api {}", host.number, host.zone, host.api_address);
        self.publish(&host.name, HostChange::Created, detail);
        Ok((host, true))
    }

    /// Makes the host's directory, starts its agent and saves the inventory;
    /// undoes all of it when a step fails.
    fn add_host(
        &self,
        hosts: &mut Hosts,
        request: CreateHost,
    ) -> Result<(HostRecord, Child), Error> {
        let next_before = hosts.inventory.next_number;
        let (number, ports) = self.allocate(next_before)?;
        let dir = self.host_dir(&request.name);
        if dir.exists() {
            // Left by a deletion that did not finish: a new host has an empty disk.
            tracing::warn!(dir = %dir.display(), "removing a leftover directory of an earlier host");
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot clear", &dir, e))?;
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("cannot create the host directory", &dir, e))?;
        let mut record = HostRecord {
            name: request.name,
            number,
            zone: request.zone,
            host_type: request.host_type,
            ports,
            lifecycle: Lifecycle::Active,
            created_ms: now_ms(),
            agent_pid: None,
        };
        let child = self.spawn_agent(&record).inspect_err(|_| remove_dir_quietly(&dir))?;
        record.agent_pid = child.id();
        hosts.inventory.hosts.insert(record.name.clone(), record.clone());
        hosts.inventory.next_number = number + 1;
        if let Err(e) = self.save(hosts) {
            // A host the file does not hold would be lost at the next start.
            hosts.inventory.hosts.remove(&record.name);
            hosts.inventory.next_number = next_before;
            if let Some(pid) = record.agent_pid {
                process::signal_group(pid, Signal::SIGKILL);
            }
            remove_dir_quietly(&dir);
            return Err(e);
        }
        assert!(hosts.inventory.next_number > record.number);
        Ok((record, child))
    }

    /// Starts the agents of the active hosts in the inventory and finishes
    /// deletions a previous run left half-done. An agent an earlier run left
    /// behind (that run died without stopping it) is killed first: it holds
    /// the host's ports.
    pub async fn resume(self: &Arc<Self>) {
        let records: Vec<HostRecord> =
            lock(&self.hosts).inventory.hosts.values().cloned().collect();
        for record in records {
            match record.lifecycle {
                Lifecycle::Failed => {}
                Lifecycle::Deleting => {
                    let provider = Arc::clone(self);
                    tokio::spawn(async move {
                        if let Err(e) = provider.delete(&record.name).await {
                            tracing::error!(host = %record.name, error = %e, "cannot finish deleting the host");
                        }
                    });
                }
                Lifecycle::Active => {
                    if let Some(pid) = record.agent_pid {
                        let dir = self.host_dir(&record.name);
                        if process::is_stale_agent(pid, &dir) {
                            tracing::warn!(host = %record.name, pid, "an agent from an earlier run is still running; killing it");
                            process::signal_group(pid, Signal::SIGKILL);
                            process::wait_gone(pid, Duration::from_millis(KILL_WAIT_MS)).await;
                        }
                    }
                    self.resume_host(&record.name);
                }
            }
        }
    }

    fn resume_host(self: &Arc<Self>, name: &str) {
        let mut guard = lock(&self.hosts);
        let hosts = &mut *guard;
        let Some(record) = hosts.inventory.hosts.get_mut(name) else { return };
        record.agent_pid = None;
        let dir = self.host_dir(name);
        let child = if !dir.is_dir() {
            // Like a machine whose disk is gone: it cannot come back as itself.
            tracing::warn!(host = name, dir = %dir.display(), "the host's directory is gone; marking the host failed");
            record.lifecycle = Lifecycle::Failed;
            None
        } else {
            match self.spawn_agent(record) {
                Ok(child) => {
                    record.agent_pid = child.id();
                    tracing::info!(host = name, pid = ?record.agent_pid, "agent started");
                    Some(child)
                }
                Err(e) => {
                    tracing::error!(host = name, error = %e, "cannot start the agent; trying again");
                    None
                }
            }
        };
        let active = record.lifecycle == Lifecycle::Active;
        if let Err(e) = self.save(hosts) {
            tracing::error!(error = %e, "cannot save the inventory");
        }
        if active {
            let supervisor = tokio::spawn(Arc::clone(self).supervise(name.to_string(), child));
            hosts.runtime.entry(name.to_string()).or_default().supervisor = Some(supervisor);
        }
    }

    /// Keeps one host's agent running while the host is active.
    async fn supervise(self: Arc<Self>, name: String, mut child: Option<Child>) {
        let mut pauses = restart_pauses();
        loop {
            if let Some(mut running) = child.take() {
                let pid = running.id();
                let started = Instant::now();
                let status = running.wait().await;
                if let Some(pid) = pid {
                    // Whatever the agent left in its group goes with it (its
                    // node runs in a group of its own and is left alone).
                    process::signal_group(pid, Signal::SIGKILL);
                }
                if started.elapsed() >= Duration::from_millis(AGENT_STABLE_MS) {
                    pauses.reset();
                }
                let status = match status {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("cannot wait for it: {e}"),
                };
                if !self.agent_exited(&name, pid, status, pauses.ceiling_ms()) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(pauses.next_delay_ms())).await;
            match self.restart(&name) {
                Restart::Started(started) => child = Some(started),
                Restart::Retry => {}
                Restart::Stop => return,
            }
        }
    }

    /// Notes that the agent `pid` exited; says whether to start it again.
    fn agent_exited(&self, name: &str, pid: Option<u32>, status: String, delay_ms: u64) -> bool {
        let restart = {
            let mut guard = lock(&self.hosts);
            let hosts = &mut *guard;
            let Some(record) = hosts.inventory.hosts.get_mut(name) else { return false };
            if record.agent_pid == pid {
                record.agent_pid = None;
            }
            record.lifecycle == Lifecycle::Active && !hosts.shutting_down
        };
        if restart {
            self.publish(
                name,
                HostChange::AgentExited,
                format!("{status}; restarting in {delay_ms} ms"),
            );
        } else {
            tracing::debug!(host = name, %status, "agent stopped");
        }
        restart
    }

    /// Starts the agent of an active host again.
    fn restart(&self, name: &str) -> Restart {
        let mut guard = lock(&self.hosts);
        let hosts = &mut *guard;
        let Some(record) = hosts.inventory.hosts.get_mut(name) else { return Restart::Stop };
        if hosts.shutting_down || record.lifecycle != Lifecycle::Active {
            return Restart::Stop;
        }
        let child = match self.spawn_agent(record) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(host = name, error = %e, "cannot restart the agent; trying again");
                return Restart::Retry;
            }
        };
        record.agent_pid = child.id();
        let pid = record.agent_pid;
        let runtime = hosts.runtime.entry(name.to_string()).or_default();
        runtime.restarts += 1;
        let restarts = runtime.restarts;
        if let Err(e) = self.save(hosts) {
            tracing::error!(error = %e, "cannot save the inventory");
        }
        drop(guard);
        let pid = pid.map_or_else(|| "unknown".to_string(), |pid| pid.to_string());
        self.publish(name, HostChange::AgentRestarted, format!("pid {pid}, restart {restarts}"));
        Restart::Started(child)
    }
}

/// Stopping: failing a host, deleting it, and stopping every agent.
impl LocalProvider {
    /// Simulates the machine dying: its agent's process group and its node
    /// are killed at once, and nothing of it is started again until it is
    /// deleted. Failing a failed host again kills whatever is left.
    pub async fn fail(self: &Arc<Self>, name: &str) -> Result<Host, Error> {
        check_name("host name", name)?;
        let (pid, supervisor) = {
            let mut guard = lock(&self.hosts);
            let hosts = &mut *guard;
            let record = hosts.inventory.hosts.get_mut(name);
            let record = record.ok_or_else(|| Error::HostNotFound { name: name.into() })?;
            if record.lifecycle == Lifecycle::Deleting {
                return Err(Error::HostDeleting { name: name.into() });
            }
            let before = record.lifecycle;
            record.lifecycle = Lifecycle::Failed;
            let pid = record.agent_pid;
            if let Err(e) = self.save(hosts) {
                if let Some(record) = hosts.inventory.hosts.get_mut(name) {
                    record.lifecycle = before;
                }
                return Err(e);
            }
            (pid, hosts.runtime.get_mut(name).and_then(|r| r.supervisor.take()))
        };
        if let Some(pid) = pid {
            process::signal_group(pid, Signal::SIGKILL);
        }
        // The agent first, so it cannot start the node again.
        end_supervisor(name, pid, supervisor, Duration::from_millis(KILL_WAIT_MS)).await;
        let node =
            process::kill_node(&self.host_dir(name), Duration::from_millis(KILL_WAIT_MS)).await;
        let agent = pid.map_or_else(|| "none running".to_string(), |pid| pid.to_string());
        let node = node.map_or_else(|| "none recorded".to_string(), |pid| pid.to_string());
        self.publish(name, HostChange::Failed, format!("killed agent {agent} and node {node}"));
        self.get(name)
    }

    /// Deletes a host: stops its agent (SIGTERM, then SIGKILL after
    /// [`DELETE_GRACE_MS`]), kills its node, removes its directory and drops
    /// it from the inventory. Answers whether this call deleted it; either
    /// way the host is gone when it answers. A delete of a host another
    /// delete is removing waits for that one.
    pub async fn delete(self: &Arc<Self>, name: &str) -> Result<bool, Error> {
        check_name("host name", name)?;
        let (pid, supervisor) = match self.begin_delete(name)? {
            Deletion::Gone => return Ok(false),
            Deletion::InFlight => return self.await_deletion(name).await.map(|()| false),
            Deletion::Begun { pid, supervisor } => (pid, supervisor),
        };
        if let Some(pid) = pid {
            process::signal_group(pid, Signal::SIGTERM);
        }
        end_supervisor(name, pid, supervisor, Duration::from_millis(DELETE_GRACE_MS)).await;
        let dir = self.host_dir(name);
        process::kill_node(&dir, Duration::from_millis(KILL_WAIT_MS)).await;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                // Stays `deleting`: the next delete (or start) tries again.
                if let Some(runtime) = lock(&self.hosts).runtime.get_mut(name) {
                    runtime.deleting = false;
                }
                return Err(Error::io("cannot remove the host directory", &dir, e));
            }
        }
        {
            let mut hosts = lock(&self.hosts);
            hosts.inventory.hosts.remove(name);
            hosts.runtime.remove(name);
            if let Err(e) = self.save(&hosts) {
                // The host is gone all the same; the file still says
                // `deleting`, which a later start finishes harmlessly.
                tracing::error!(error = %e, "cannot save the inventory");
            }
        }
        self.publish(name, HostChange::Deleted, String::new());
        Ok(true)
    }

    /// Marks a host `deleting` (saved before anything is removed).
    fn begin_delete(&self, name: &str) -> Result<Deletion, Error> {
        let mut guard = lock(&self.hosts);
        let hosts = &mut *guard;
        let Some(record) = hosts.inventory.hosts.get_mut(name) else { return Ok(Deletion::Gone) };
        let runtime = hosts.runtime.entry(name.to_string()).or_default();
        if runtime.deleting {
            return Ok(Deletion::InFlight);
        }
        let before = record.lifecycle;
        record.lifecycle = Lifecycle::Deleting;
        let pid = record.agent_pid;
        if let Err(e) = self.save(hosts) {
            if let Some(record) = hosts.inventory.hosts.get_mut(name) {
                record.lifecycle = before;
            }
            return Err(e);
        }
        let runtime = hosts.runtime.entry(name.to_string()).or_default();
        runtime.deleting = true;
        Ok(Deletion::Begun { pid, supervisor: runtime.supervisor.take() })
    }

    /// Waits for another delete of `name` to finish.
    async fn await_deletion(&self, name: &str) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_millis(DELETE_WAIT_MS);
        while lock(&self.hosts).inventory.hosts.contains_key(name) {
            if Instant::now() >= deadline {
                return Err(Error::HostDeleting { name: name.into() });
            }
            tokio::time::sleep(Duration::from_millis(DELETE_POLL_MS)).await;
        }
        Ok(())
    }

    /// Stops every agent: SIGTERM to each, up to [`SHUTDOWN_GRACE_MS`] for
    /// all of them to exit, then SIGKILL to the groups of those still there.
    /// Nothing is restarted afterwards; the inventory and the directories
    /// stay for the next start.
    pub async fn shutdown(&self) {
        let agents: Vec<(String, Option<u32>, JoinHandle<()>)> = {
            let mut guard = lock(&self.hosts);
            let hosts = &mut *guard;
            hosts.shutting_down = true;
            let records = &hosts.inventory.hosts;
            hosts
                .runtime
                .iter_mut()
                .filter_map(|(name, runtime)| {
                    let supervisor = runtime.supervisor.take()?;
                    Some((name.clone(), records.get(name).and_then(|r| r.agent_pid), supervisor))
                })
                .collect()
        };
        for pid in agents.iter().filter_map(|(_, pid, _)| *pid) {
            process::signal_group(pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_millis(SHUTDOWN_GRACE_MS);
        for (name, pid, supervisor) in agents {
            let grace = deadline.saturating_duration_since(Instant::now());
            end_supervisor(&name, pid, Some(supervisor), grace).await;
        }
        let hosts = lock(&self.hosts);
        if let Err(e) = self.save(&hosts) {
            tracing::error!(error = %e, "cannot save the inventory");
        }
    }
}

/// Waits up to `grace` for a host's supervisor to end once its agent was
/// signalled; then SIGKILLs the agent's group and waits [`KILL_WAIT_MS`]
/// more. A supervisor with no agent running is only pausing between
/// restarts, and every restart checks the lifecycle first: it is ended at
/// once.
async fn end_supervisor(
    name: &str,
    pid: Option<u32>,
    supervisor: Option<JoinHandle<()>>,
    grace: Duration,
) {
    let Some(mut supervisor) = supervisor else { return };
    let Some(pid) = pid else {
        supervisor.abort();
        return;
    };
    if timeout(grace, &mut supervisor).await.is_ok() {
        return;
    }
    tracing::warn!(
        host = name,
        pid,
        "the agent did not stop in {} ms; killing it",
        grace.as_millis()
    );
    process::signal_group(pid, Signal::SIGKILL);
    if timeout(Duration::from_millis(KILL_WAIT_MS), &mut supervisor).await.is_err() {
        tracing::error!(host = name, pid, "the agent is still there after SIGKILL; leaving it");
        supervisor.abort();
    }
}

/// Whether an existing host is the one asked for again.
fn same_host(existing: &HostRecord, request: &CreateHost) -> Result<(), Error> {
    if existing.lifecycle == Lifecycle::Deleting {
        return Err(Error::HostDeleting { name: existing.name.clone() });
    }
    if existing.zone != request.zone || existing.host_type != request.host_type {
        return Err(Error::HostConflict {
            name: existing.name.clone(),
            existing_zone: existing.zone.clone(),
            existing_type: existing.host_type.clone(),
            zone: request.zone.clone(),
            host_type: request.host_type.clone(),
        });
    }
    Ok(())
}

fn remove_dir_quietly(dir: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the host directory");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first few restarts come after the shortest pause; an agent that
    /// keeps dying young then waits twice as long each time, up to the
    /// longest pause.
    #[test]
    fn restart_pauses_back_off() {
        let mut pauses = restart_pauses();
        let taken: Vec<u64> = (0..10).map(|_| pauses.next_delay_ms()).collect();
        let first_doubled = QUICK_EXITS_BEFORE_BACKOFF as usize;
        assert!(taken[..first_doubled].iter().all(|p| *p == RESTART_DELAY_MS), "{taken:?}");
        assert_eq!(taken[first_doubled], 2 * RESTART_DELAY_MS);
        assert_eq!(taken[first_doubled + 3], 16 * RESTART_DELAY_MS);
        assert_eq!(taken[first_doubled + 4], RESTART_DELAY_MS_MAX);
        assert_eq!(taken[9], RESTART_DELAY_MS_MAX);
    }
}
