//! The supervisor: keeps this host's node as the cluster asked — running or
//! stopped — and knows how it is doing.
//!
//! [`Supervisor`] is a cheap, shareable handle. The gRPC service calls its
//! commands ([`Supervisor::start_node`], [`Supervisor::stop_node`],
//! [`Supervisor::restart_node`]); an in-process leader loop may call them too
//! and reads [`Supervisor::status`]. Two background tasks (see `watch`)
//! restart a node that exits unexpectedly and poll its health.
//!
//! Invariants:
//! - One change at a time: every command and every supervised restart holds
//!   the `ops` lock, so a stop never races a restart. `status` takes only the
//!   short state lock and never waits for a command.
//! - The intent is persisted before it is acted on (see [`crate::intent`]);
//!   a restart generation is persisted only once its restart is done, so a
//!   restart interrupted by a crash is done again rather than skipped.
//! - A host holds one node's data: `StartNode` with another id is refused
//!   while the data (or a process) of the first exists.
//! - Health answers are tied to the process that was asked (an epoch bumped
//!   at every spawn and exit): a late answer never marks a new process
//!   healthy.
//!
//! - The version the node runs is in the intent, persisted before the node
//!   is restarted into it: an agent that restarts runs the same binary.
//!
//! Not handled here: deciding what the cluster needs (the leader loop),
//! fetching and checking versions (`install`), backups, and the node's own
//! recovery.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::install::Versions;
use crate::intent::Intent;
use cairn_client::NodeRole;
use cairn_util::process as os;
use cairn_util::Backoff;

use crate::process::{self, LaunchSpec, NodeProcess};
use crate::status::{NodeState, NodeStatus};
use crate::Error;

/// How long a node has after SIGTERM before it is killed.
pub const STOP_GRACE_MS: u64 = 10_000;
/// How long a node may take to disappear after SIGKILL.
const KILL_WAIT_MS: u64 = 5_000;
/// How often a stopping node is checked for its exit.
const EXIT_POLL_MS: u64 = 50;
/// The wait before restarting a node that exited unexpectedly, doubled at
/// every quick exit up to [`BACKOFF_MS_MAX`].
pub const BACKOFF_MS_INITIAL: u64 = 250;
/// The longest wait before a restart.
pub const BACKOFF_MS_MAX: u64 = 5_000;
/// The longest a restore may take (it reads and checks the whole backup).
const RESTORE_TIMEOUT_MS: u64 = 600_000;
/// A node up this long starts over from [`BACKOFF_MS_INITIAL`] when it exits.
pub const BACKOFF_RESET_MS: u64 = 30_000;

/// Where the node lives and how it is reached: fixed for the agent's life.
#[derive(Clone, Debug)]
pub(crate) struct NodeSpec {
    pub host: String,
    pub zone: String,
    /// The node binaries: the agent's own, and the versions installed.
    pub versions: Versions,
    pub node_listen: SocketAddr,
    pub node_peer_listen: SocketAddr,
    /// `<dir>/agent.json`, `<dir>/node.pid`, `<dir>/data`, `<dir>/node.log`.
    pub intent_path: PathBuf,
    pub pid_path: PathBuf,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// `<dir>/certs`: the node's certificates, when the agent has a CA.
    pub certs_dir: PathBuf,
    /// The cluster's CA, which issues the node's certificate.
    pub ca_dir: Option<PathBuf>,
    /// The node's admin token (with a CA).
    pub admin_token_file: Option<PathBuf>,
    /// Where the node keeps its backups (`--backup-dir`).
    pub backup_dir: Option<PathBuf>,
    /// With a CA, the node's API speaks HTTPS: how to reach it.
    pub api_tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl NodeSpec {
    pub fn new(
        host: String,
        zone: String,
        dir: PathBuf,
        node_bin: PathBuf,
        node_listen: SocketAddr,
        node_peer_listen: SocketAddr,
    ) -> NodeSpec {
        NodeSpec {
            host,
            zone,
            versions: Versions { dir: dir.join("versions"), own_bin: node_bin },
            node_listen,
            node_peer_listen,
            intent_path: dir.join("agent.json"),
            pid_path: dir.join(os::NODE_PID_FILE),
            data_dir: dir.join(os::NODE_DATA_DIR),
            log_path: dir.join("node.log"),
            certs_dir: dir.join("certs"),
            ca_dir: None,
            admin_token_file: None,
            backup_dir: None,
            api_tls: None,
        }
    }

    /// The certificates directory for node `node_id`, its certificate issued
    /// by the CA when missing (or for another node); `None` without a CA.
    fn node_certificates(&self, node_id: u64) -> Result<Option<PathBuf>, Error> {
        let Some(ca_dir) = &self.ca_dir else { return Ok(None) };
        let cert = self.certs_dir.join(cairn_tls::node_cert_file(node_id));
        if !cert.exists() {
            let names = [
                self.host.clone(),
                self.node_listen.ip().to_string(),
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ];
            cairn_tls::Ca::load(ca_dir)?.issue_node(&self.certs_dir, node_id, &names)?;
        }
        Ok(Some(self.certs_dir.clone()))
    }

    /// The address others reach `addr` at: the host's name when it listens
    /// on every interface (in a container the name resolves, the wildcard
    /// does not).
    fn advertised(&self, addr: SocketAddr) -> String {
        if addr.ip().is_unspecified() {
            format!("{}:{}", self.host, addr.port())
        } else {
            addr.to_string()
        }
    }

    /// The address the agent asks for health: loopback when the node listens
    /// on every interface.
    pub fn health_addr(&self) -> SocketAddr {
        let addr = self.node_listen;
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
            IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
            _ => addr,
        }
    }
}

/// The node's last health answer.
#[derive(Clone, Debug, Default)]
pub(crate) struct Health {
    pub healthy: bool,
    pub role: Option<NodeRole>,
    pub applied_index: u64,
}

/// Everything the supervisor knows, behind the state lock.
#[derive(Debug)]
pub(crate) struct State {
    pub intent: Intent,
    pub process: Option<NodeProcess>,
    pub phase: NodeState,
    /// Bumped at every spawn and exit; see the module's invariants.
    pub epoch: u64,
    pub health: Health,
    pub restarts: u32,
    /// The waits before restarts after unexpected exits.
    pub backoff: Backoff,
    pub started_at: Option<Instant>,
    /// When a node in backoff is restarted.
    pub retry_at: Option<Instant>,
    pub message: String,
}

impl State {
    fn new(intent: Intent, phase: NodeState) -> State {
        State {
            intent,
            process: None,
            phase,
            epoch: 0,
            health: Health::default(),
            restarts: 0,
            backoff: Backoff::new(BACKOFF_MS_INITIAL, BACKOFF_MS_MAX),
            started_at: None,
            retry_at: None,
            message: String::new(),
        }
    }
}

/// Finds the node an earlier agent left running and makes its pid file
/// right; a node whose id the intent does not know yet gives it its id.
fn adopt(spec: &NodeSpec, intent: &mut Intent) -> Result<Option<os::FoundNode>, Error> {
    let Some(found) = os::find_node(&spec.pid_path, &spec.data_dir) else {
        process::remove_pid_file(&spec.pid_path)?;
        return Ok(None);
    };
    match (intent.node_id, found.node_id) {
        (Some(ours), Some(theirs)) if ours != theirs => {
            return Err(Error::BadIntent {
                path: spec.intent_path.clone(),
                message: format!(
                    "it names node {ours} but node {theirs} (pid {}) runs from {}",
                    found.pid,
                    spec.data_dir.display()
                ),
            });
        }
        (None, Some(theirs)) => {
            intent.node_id = Some(theirs);
            intent.save(&spec.intent_path)?;
        }
        _ => {}
    }
    tracing::info!(pid = found.pid, "adopting the node left running by an earlier agent");
    process::write_pid_file(&spec.pid_path, found.pid)?;
    Ok(Some(found))
}

/// What a look at the node process found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Poll {
    Running,
    /// It exited (how); the state no longer holds it.
    Exited(String),
    /// No process.
    Absent,
}

pub(crate) struct Inner {
    pub spec: NodeSpec,
    pub state: Mutex<State>,
    /// Held by every command and supervised restart (one change at a time).
    pub ops: tokio::sync::Mutex<()>,
}

/// A handle on this host's node: status and commands. Clones share one
/// supervisor.
#[derive(Clone)]
pub struct Supervisor {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").field("host", &self.inner.spec.host).finish()
    }
}

impl Supervisor {
    /// Reads the intent and adopts a node still running from an earlier
    /// agent; starts the node when the intent says it runs and none does.
    /// Needs a Tokio runtime (the node's handle is a Tokio child).
    pub(crate) fn open(spec: NodeSpec) -> Result<Supervisor, Error> {
        let mut intent = Intent::load(&spec.intent_path)?;
        let found = adopt(&spec, &mut intent)?;
        let phase = match (intent.node_id, intent.stopped) {
            (None, _) => NodeState::Absent,
            (_, true) => NodeState::Stopped,
            // Adopted or about to start: the first health answer decides.
            (_, false) => NodeState::Starting,
        };
        let wants_launch = intent.node_id.is_some() && !intent.stopped && found.is_none();
        let mut state = State::new(intent, phase);
        if let Some(found) = found {
            state.process =
                Some(NodeProcess::Adopted { pid: found.pid, data_dir: spec.data_dir.clone() });
            state.started_at = Some(Instant::now());
        }
        let supervisor = Supervisor {
            inner: Arc::new(Inner { spec, state: Mutex::new(state), ops: Default::default() }),
        };
        if wants_launch {
            // A failure leaves the node in backoff; the watcher retries.
            if let Err(e) = supervisor.launch() {
                tracing::warn!("cannot start the node: {e}");
            }
        }
        Ok(supervisor)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        cairn_util::lock(&self.inner.state)
    }

    /// The node as the agent sees it now. Never waits for a command.
    pub fn status(&self) -> NodeStatus {
        let spec = &self.inner.spec;
        let has_data = process::has_data(&spec.data_dir);
        let s = self.state();
        let running = s.process.is_some();
        NodeStatus {
            host: spec.host.clone(),
            zone: spec.zone.clone(),
            node_id: s.intent.node_id.unwrap_or(0),
            state: s.phase,
            pid: s.process.as_ref().map_or(0, NodeProcess::pid),
            healthy: running && s.health.healthy,
            role: if running { s.health.role } else { None },
            applied_index: s.health.applied_index,
            restart_generation: s.intent.restart_generation,
            version: cairn_util::version().to_string(),
            node_version: s.intent.node_version().to_string(),
            node_address: spec.advertised(spec.node_listen),
            peer_address: spec.advertised(spec.node_peer_listen),
            restarts: s.restarts,
            has_data,
            stopped: s.intent.stopped,
            message: s.message.clone(),
        }
    }

    /// Runs node `node_id` on this host. A no-op when it runs already (or
    /// waits in backoff to be restarted); refused when the host holds another
    /// node. `join` (a member's HTTP address) is used while the node has no
    /// data. Clears `stopped`.
    pub async fn start_node(
        &self,
        node_id: u64,
        join: Option<String>,
        restart_generation: u64,
    ) -> Result<NodeStatus, Error> {
        let this = self.clone();
        detached(async move { this.start_now(node_id, join, restart_generation).await }).await
    }

    /// Stops the node (SIGTERM, SIGKILL after [`STOP_GRACE_MS`]) and keeps it
    /// stopped until a `StartNode`, across agent restarts. Keeps its data.
    pub async fn stop_node(&self) -> Result<NodeStatus, Error> {
        let this = self.clone();
        detached(async move { this.stop_now().await }).await
    }

    /// Restarts the node gracefully, once per generation: a generation at or
    /// below the one persisted is a no-op. Returns once the new process is
    /// started (not necessarily healthy). A stopped node is not started: it
    /// starts afresh whenever it is, so only the generation is recorded.
    pub async fn restart_node(&self, restart_generation: u64) -> Result<NodeStatus, Error> {
        let this = self.clone();
        detached(async move { this.restart_now(restart_generation).await }).await
    }

    /// Restores the backup at `from` (a backup's directory, an absolute
    /// path) into the node's data directory while it has none, with the
    /// node's own binary (`cairn restore`, which checks every file's sum
    /// before it writes anything), then starts node `node_id` as
    /// [`Supervisor::start_node`] does. A node that has data is only
    /// started: a restore done once is not done again.
    pub async fn restore_node(
        &self,
        node_id: u64,
        from: String,
        restart_generation: u64,
    ) -> Result<NodeStatus, Error> {
        let this = self.clone();
        detached(async move {
            this.restore_now(node_id, &from).await?;
            this.start_now(node_id, None, restart_generation).await
        })
        .await
    }

    async fn restore_now(&self, node_id: u64, from: &str) -> Result<(), Error> {
        let refuse = |reason: String| Error::Restore { from: from.to_string(), reason };
        if !from.starts_with('/') {
            return Err(refuse("the backup must be named by an absolute path".into()));
        }
        let _ops = self.inner.ops.lock().await;
        let spec = &self.inner.spec;
        let bin = {
            let s = self.state();
            if s.process.is_some() || process::has_data(&spec.data_dir) {
                return Ok(());
            }
            if let Some(held) = s.intent.node_id.filter(|held| *held != node_id) {
                return Err(Error::OtherNode { held, requested: node_id });
            }
            spec.versions.binary(s.intent.version.as_deref())
        };
        tracing::info!(from, "restoring a backup into the node's data directory");
        let run = tokio::process::Command::new(&bin)
            .arg("restore")
            .arg("--from")
            .arg(from)
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_millis(RESTORE_TIMEOUT_MS), run)
            .await
            .map_err(|_| refuse(format!("it took more than {RESTORE_TIMEOUT_MS} ms")))?
            .map_err(|source| Error::Spawn { bin: bin.clone(), source })?;
        if !output.status.success() {
            let said = [output.stderr, output.stdout]
                .iter()
                .map(|text| String::from_utf8_lossy(text).trim().to_string())
                .filter(|text| !text.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(refuse(said));
        }
        tracing::info!(from, "backup restored");
        Ok(())
    }

    /// Runs the node as `version`: installs it from `artifacts` unless it
    /// is installed, then restarts the node with its binary (a stopped node
    /// or one not started yet runs it when it starts). A no-op when the node
    /// runs that version already. Keeps the version it replaced installed,
    /// and deletes older ones.
    pub async fn run_version(
        &self,
        version: String,
        artifacts: Option<String>,
    ) -> Result<NodeStatus, Error> {
        let this = self.clone();
        detached(async move { this.run_version_now(version, artifacts).await }).await
    }

    async fn run_version_now(
        &self,
        version: String,
        artifacts: Option<String>,
    ) -> Result<NodeStatus, Error> {
        let versions = &self.inner.spec.versions;
        // Installing is slow and idempotent: done before the lock, so that
        // the node's status and other commands need not wait for it.
        if self.state().intent.node_version() != version {
            versions.install(&version, artifacts.as_deref()).await?;
        }
        let _ops = self.inner.ops.lock().await;
        let mut intent = self.state().intent.clone();
        let previous = intent.node_version().to_string();
        if previous == version {
            return Ok(self.status());
        }
        intent.version = (version != cairn_util::version()).then(|| version.clone());
        let runs = intent.node_id.is_some() && !intent.stopped;
        self.set_intent(intent)?;
        if runs {
            self.terminate().await?;
            self.state().backoff.reset();
            self.launch()?;
        }
        self.state().message = format!("runs version {version} (was {previous})");
        tracing::info!(version, previous, "the node's version changed");
        versions.prune(&[&version, &previous]);
        Ok(self.status())
    }

    async fn start_now(
        &self,
        node_id: u64,
        join: Option<String>,
        restart_generation: u64,
    ) -> Result<NodeStatus, Error> {
        if node_id == 0 {
            return Err(Error::InvalidArgument(
                "node id 0 is not a node id: ids start at 1".into(),
            ));
        }
        let join = join.map(|j| j.trim().to_string()).filter(|j| !j.is_empty());
        if let Some(join) = &join {
            cairn_client::parse_addr(join)
                .map_err(|e| Error::InvalidArgument(format!("join address: {e}")))?;
        }
        let _ops = self.inner.ops.lock().await;
        let has_data = process::has_data(&self.inner.spec.data_dir);
        let mut intent = {
            let s = self.state();
            if let Some(held) = s.intent.node_id.filter(|held| *held != node_id) {
                if has_data || s.process.is_some() {
                    return Err(Error::OtherNode { held, requested: node_id });
                }
            }
            let alive = s.process.is_some() || s.phase == NodeState::Backoff;
            if s.intent.node_id == Some(node_id) && !s.intent.stopped && alive {
                drop(s);
                return Ok(self.status());
            }
            s.intent.clone()
        };
        if intent.node_id.is_none() && has_data {
            tracing::warn!(
                "the data directory holds data of an unknown node; running it as node {node_id}"
            );
        }
        intent.node_id = Some(node_id);
        intent.stopped = false;
        intent.join = join;
        intent.restart_generation = intent.restart_generation.max(restart_generation);
        self.set_intent(intent)?;
        self.state().message = String::new();
        if self.state().process.is_none() {
            self.state().backoff.reset();
            self.launch()?;
        } else {
            // A node being stopped for an earlier `StopNode` that was
            // interrupted: it runs, so it only needs to be marked running.
            self.state().phase = NodeState::Starting;
        }
        Ok(self.status())
    }

    async fn stop_now(&self) -> Result<NodeStatus, Error> {
        let _ops = self.inner.ops.lock().await;
        let mut intent = self.state().intent.clone();
        if !intent.stopped {
            intent.stopped = true;
            self.set_intent(intent)?;
        }
        self.terminate().await?;
        let mut s = self.state();
        s.phase = if s.intent.node_id.is_some() { NodeState::Stopped } else { NodeState::Absent };
        s.retry_at = None;
        s.message = "stopped as asked".into();
        drop(s);
        Ok(self.status())
    }

    async fn restart_now(&self, restart_generation: u64) -> Result<NodeStatus, Error> {
        let _ops = self.inner.ops.lock().await;
        let mut intent = self.state().intent.clone();
        if intent.restart_generation >= restart_generation {
            return Ok(self.status());
        }
        if intent.node_id.is_none() {
            return Err(Error::NoNode(format!(
                "cannot restart it for generation {restart_generation}"
            )));
        }
        if !intent.stopped {
            self.terminate().await?;
            self.state().backoff.reset();
            self.launch()?;
            self.state().message = format!("restarted for generation {restart_generation}");
        }
        intent.restart_generation = restart_generation;
        self.set_intent(intent)?;
        Ok(self.status())
    }

    /// Stops the node gracefully without recording it stopped: the agent is
    /// going away and the next agent runs the node again.
    pub(crate) async fn stop_for_shutdown(&self) -> Result<(), Error> {
        let _ops = self.inner.ops.lock().await;
        self.terminate().await
    }

    /// Persists the intent, then makes it the one in memory.
    fn set_intent(&self, intent: Intent) -> Result<(), Error> {
        intent.save(&self.inner.spec.intent_path)?;
        self.state().intent = intent;
        Ok(())
    }

    /// Spawns the node of the intent. The caller holds `ops`, and no process
    /// runs. A failure puts the node in backoff.
    pub(crate) fn launch(&self) -> Result<(), Error> {
        let spec = &self.inner.spec;
        let (node_id, join, bin) = {
            let s = self.state();
            assert!(s.process.is_none(), "a node is launched only when none runs");
            let Some(node_id) = s.intent.node_id else {
                return Err(Error::NoNode("nothing to start".into()));
            };
            (node_id, s.intent.join.clone(), spec.versions.binary(s.intent.version.as_deref()))
        };
        // The node's certificate is issued first (when the agent has a CA);
        // either failing puts the node in backoff.
        let launched = spec.node_certificates(node_id).and_then(|certs_dir| {
            process::spawn(&LaunchSpec {
                certs_dir: certs_dir.as_deref(),
                admin_token_file: spec.admin_token_file.as_deref(),
                backup_dir: spec.backup_dir.as_deref(),
                bin: &bin,
                node_id,
                data_dir: &spec.data_dir,
                listen: spec.node_listen,
                peer_listen: spec.node_peer_listen,
                zone: &spec.zone,
                join: join.as_deref(),
                log_path: &spec.log_path,
            })
        });
        let child = match launched {
            Ok(child) => child,
            Err(e) => {
                let mut s = self.state();
                schedule_retry(&mut s, Duration::ZERO);
                s.message = e.to_string();
                return Err(e);
            }
        };
        let pid = child.pid();
        tracing::info!(pid, node_id, "node started");
        if let Err(e) = process::write_pid_file(&spec.pid_path, pid) {
            // The node runs; a restarted agent still finds it by its command
            // line.
            tracing::warn!("{e}");
        }
        let mut s = self.state();
        s.process = Some(child);
        s.phase = NodeState::Starting;
        s.epoch += 1;
        s.health = Health::default();
        s.started_at = Some(Instant::now());
        s.retry_at = None;
        // The message stays: after a supervised restart it tells why.
        Ok(())
    }

    /// Looks at the node process; an exit is taken out of the state.
    pub(crate) fn poll(&self) -> Poll {
        let mut s = self.state();
        let Some(process) = s.process.as_mut() else { return Poll::Absent };
        let Some(how) = process.exited() else { return Poll::Running };
        s.process = None;
        s.epoch += 1;
        s.health.healthy = false;
        drop(s);
        if let Err(e) = process::remove_pid_file(&self.inner.spec.pid_path) {
            tracing::warn!("{e}");
        }
        Poll::Exited(how)
    }

    /// Stops the node process if one runs: SIGTERM, then SIGKILL. The caller
    /// holds `ops`.
    pub(crate) async fn terminate(&self) -> Result<(), Error> {
        let Some(pid) = self.state().process.as_ref().map(NodeProcess::pid) else {
            return Ok(());
        };
        tracing::info!(pid, "stopping the node");
        process::send_signal(pid, Signal::SIGTERM)?;
        if self.wait_exit(STOP_GRACE_MS).await {
            return Ok(());
        }
        tracing::warn!(pid, "the node outlived SIGTERM for {STOP_GRACE_MS} ms: killing it");
        process::send_signal(pid, Signal::SIGKILL)?;
        if self.wait_exit(KILL_WAIT_MS).await {
            return Ok(());
        }
        Err(Error::StopTimeout { pid, waited_ms: STOP_GRACE_MS + KILL_WAIT_MS })
    }

    async fn wait_exit(&self, timeout_ms: u64) -> bool {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            if self.poll() != Poll::Running {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(EXIT_POLL_MS)).await;
        }
    }
}

/// Runs a command to its end even when its caller goes away (a deadline, a
/// dropped connection): a restart cut between its stop and its start would
/// leave the node down until the watcher noticed.
async fn detached<F>(command: F) -> Result<NodeStatus, Error>
where
    F: std::future::Future<Output = Result<NodeStatus, Error>> + Send + 'static,
{
    match tokio::spawn(command).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Error::Interrupted(e.to_string())),
    }
}

/// Puts the node in backoff after it ran for `up`: the wait starts over
/// after a long run and doubles after a short one.
pub(crate) fn schedule_retry(s: &mut State, up: Duration) {
    if up >= Duration::from_millis(BACKOFF_RESET_MS) {
        s.backoff.reset();
    }
    let wait_ms = s.backoff.next_delay_ms();
    s.retry_at = Some(Instant::now() + Duration::from_millis(wait_ms));
    s.phase = NodeState::Backoff;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        State::new(Intent::default(), NodeState::Running)
    }

    fn wait_ms(s: &State) -> u128 {
        s.retry_at.map_or(0, |t| t.saturating_duration_since(Instant::now()).as_millis())
    }

    /// Quick exits double the wait up to its cap; a long run starts over.
    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_long_run() {
        let mut s = state();
        let mut waits = Vec::new();
        for _ in 0..7 {
            schedule_retry(&mut s, Duration::from_millis(10));
            assert_eq!(s.phase, NodeState::Backoff);
            waits.push(s.backoff.ceiling_ms());
        }
        // The next wait after each exit: 500, 1000, … up to the cap.
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000, 5000]);
        assert!(wait_ms(&s) > u128::from(BACKOFF_MS_MAX) - 1000, "the cap is waited");
        schedule_retry(&mut s, Duration::from_millis(BACKOFF_RESET_MS));
        assert!(wait_ms(&s) <= u128::from(BACKOFF_MS_INITIAL), "a long run starts over");
        assert_eq!(s.backoff.ceiling_ms(), 2 * BACKOFF_MS_INITIAL);
    }
}
