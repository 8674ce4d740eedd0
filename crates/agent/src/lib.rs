//! Cairn's host agent: one per host, it runs the host's node as the cluster
//! asks and answers the leader agent over gRPC.
//!
//! A host is a directory. The agent keeps there its intent (`agent.json`:
//! which node, stopped or not, the restart generation), the node's pid
//! (`node.pid`), the node's data (`data/`) and the node's output
//! (`node.log`). Its parts, from the bottom:
//!
//! - `intent`: what the cluster last asked, written
//!   atomically before it is acted on.
//! - `process`: the node as a process — spawned so that it
//!   outlives the agent, found again by a restarted agent, signalled.
//! - [`Supervisor`]: keeps the node as the intent says; its commands
//!   (start, stop, restart) are idempotent and run one at a time.
//! - `watch`: restarts a node that exits unexpectedly (with
//!   backoff) and polls its health.
//! - The gRPC service (`proto/agent.proto`, package `cairn.agent.v1`) and
//!   its [`client::AgentClient`].
//!
//! [`Agent::start`] opens the host (adopting a node left running by an
//! earlier agent), [`Agent::serve`] answers gRPC until its shutdown future
//! completes. [`Agent::supervisor`] hands an in-process leader loop the same
//! commands and status the gRPC service uses.
//!
//! Invariants:
//! - The node survives its agent: an agent that crashes, is SIGKILLed, or
//!   shuts down leaves its node running (unless
//!   [`AgentConfig::stop_node_on_shutdown`] asks otherwise), and the next
//!   agent adopts it.
//! - A node asked stopped stays stopped, across agent restarts, until it is
//!   asked to start.
//! - A host runs at most one node id for as long as it holds that node's
//!   data.
//!
//! Not handled here: deciding what the cluster needs (the leader loop),
//! creating hosts (the cloud), installing versions and backups, and
//! authentication (agents talk on the cluster's private network).

pub mod client;
mod error;
mod install;
mod intent;
pub mod leader;
mod observe;
mod process;
mod service;
mod status;
mod supervisor;
mod tls;
mod watch;

/// The agent's gRPC messages, client and server, generated from
/// `proto/agent.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("cairn.agent.v1");
}

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use client::AgentClient;
pub use error::{Error, TurnError};
pub use status::{NodeState, NodeStatus};
pub use supervisor::{
    Supervisor, BACKOFF_MS_INITIAL, BACKOFF_MS_MAX, BACKOFF_RESET_MS, STOP_GRACE_MS,
};
pub use watch::{HEALTH_PERIOD_MS, WATCH_PERIOD_MS};

/// How an agent runs: its host, where it keeps things, where it and its node
/// listen.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The host's name (reported in statuses; advertised as the node's
    /// address when the node listens on every interface).
    pub host: String,
    /// The host's zone, passed to the node as `--zone`.
    pub zone: String,
    /// The host's directory (created when missing).
    pub dir: PathBuf,
    /// Where the agent serves gRPC.
    pub listen: SocketAddr,
    /// The node's HTTP address (`--listen`).
    pub node_listen: SocketAddr,
    /// The node's peer (replication) address (`--peer-listen`).
    pub node_peer_listen: SocketAddr,
    /// The cloud's URL, for the leader loop.
    pub cloud: Option<String>,
    /// The cloud's admin token, sent with the leader loop's calls.
    pub cloud_token: Option<String>,
    /// The `cairn` binary the node runs as (`<node_bin> node --id …`).
    pub node_bin: PathBuf,
    /// Stop the node (SIGTERM) when the agent shuts down: the cloud's `down`
    /// stops the whole host. Otherwise the node outlives the agent.
    pub stop_node_on_shutdown: bool,
    /// The cluster's CA (`ca.crt`, `ca.key`): the agent issues its node a
    /// certificate for the node's id into `<dir>/certs` and starts it with
    /// `--certs-dir`, so peers talk mutual TLS. Without it, plain TCP.
    pub ca_dir: Option<PathBuf>,
    /// With a CA: the cluster's admin token, which the node starts with
    /// (`--admin-token-file`) and the agent sends to it. By default
    /// `<dir>/admin.token`, made when missing.
    pub node_token_file: Option<PathBuf>,
    /// Passed to the node as `--backup-dir`: where its backups go.
    pub backup_dir: Option<PathBuf>,
}

/// The agent's own certificate, issued from the CA into `<dir>/certs` when
/// missing, and the mutual TLS settings made from it.
fn agent_tls(
    config: &AgentConfig,
    ca_dir: &std::path::Path,
    dir: &std::path::Path,
    listen: SocketAddr,
) -> Result<cairn_tls::AgentTls, Error> {
    let certs = dir.join("certs");
    if !certs.join(cairn_tls::AGENT_CERT_FILE).exists() {
        let names = [
            config.host.clone(),
            listen.ip().to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        cairn_tls::Ca::load(ca_dir)?.issue_agent(&certs, &names)?;
    }
    Ok(cairn_tls::AgentTls::load(&certs)?)
}

/// A started agent: its node supervised, its gRPC port bound.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    supervisor: Supervisor,
    listener: tokio::net::TcpListener,
    local_addr: SocketAddr,
    tasks: watch::Tasks,
    /// What the agent sends its node as `Authorization: Bearer`.
    node_token: Option<String>,
    /// Mutual TLS for gRPC, with a CA.
    tls: Option<cairn_tls::AgentTls>,
}

impl Agent {
    /// Opens the host: reads the intent, adopts a node left running by an
    /// earlier agent or starts the node when the intent says it runs, starts
    /// watching it, and binds the gRPC port. Needs a Tokio runtime.
    pub async fn start(config: AgentConfig) -> Result<Agent, Error> {
        if config.host.trim().is_empty() || config.zone.trim().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the agent needs a host name and a zone (host '{}', zone '{}')",
                config.host, config.zone
            )));
        }
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| Error::io("cannot create the host directory", &config.dir, e))?;
        // The node is recognised by the data directory on its command line:
        // one spelling of it, whatever the agent's working directory.
        let dir = std::fs::canonicalize(&config.dir)
            .map_err(|e| Error::io("cannot resolve the host directory", &config.dir, e))?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen { addr: config.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Listen { addr: config.listen, source })?;
        let mut spec = supervisor::NodeSpec::new(
            config.host.clone(),
            config.zone.clone(),
            dir.clone(),
            config.node_bin.clone(),
            config.node_listen,
            config.node_peer_listen,
        );
        spec.ca_dir = config.ca_dir.clone();
        spec.backup_dir = config.backup_dir.clone();
        let node_token = match &config.ca_dir {
            None => None,
            Some(_) => {
                let path =
                    config.node_token_file.clone().unwrap_or_else(|| dir.join("admin.token"));
                let token = cairn_util::secret::load_or_create(&path).map_err(|e| {
                    Error::io("cannot read or make the node's admin token", &path, e)
                })?;
                spec.admin_token_file = Some(path);
                Some(token)
            }
        };
        let tls = match &config.ca_dir {
            None => None,
            Some(ca_dir) => Some(agent_tls(&config, ca_dir, &dir, local_addr)?),
        };
        if let Some(ca_dir) = &config.ca_dir {
            spec.api_tls = Some(cairn_tls::api_client(&ca_dir.join(cairn_tls::CA_CERT_FILE))?);
        }
        let supervisor = Supervisor::open(spec)?;
        let tasks = watch::start(&supervisor)?;
        tracing::info!(%local_addr, host = %config.host, "agent started");
        Ok(Agent { config, supervisor, listener, local_addr, tasks, node_token, tls })
    }

    /// The supervisor of this host's node, for an in-process leader loop.
    pub fn supervisor(&self) -> Supervisor {
        self.supervisor.clone()
    }

    /// The address the gRPC service is bound to (the port is known even
    /// when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// Serves gRPC until `shutdown` completes, then stops watching the node
    /// and, when the configuration asks, stops the node. Dropping the agent
    /// (or the future) instead leaves the node running, as a crash would.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Agent { config, supervisor, listener, local_addr, tasks, node_token, tls } = self;
        let service =
            proto::agent_server::AgentServer::new(service::AgentService::new(supervisor.clone()));
        // Every agent with a cloud runs the reconciliation loop; it acts only
        // where it leads.
        let leader = config.cloud.clone().map(|cloud| {
            let leader_config = leader::LeaderConfig {
                host: config.host.clone(),
                cloud,
                cloud_token: config.cloud_token.clone(),
                node_token,
                agent_tls: tls.as_ref().map(|tls| tls.client.clone()),
                api_tls: supervisor.inner.spec.api_tls.clone(),
                node: supervisor.inner.spec.health_addr().to_string(),
            };
            tokio::spawn(leader::run(leader_config, supervisor.clone()))
        });
        let server = tonic::transport::Server::builder().add_service(service);
        let served = match &tls {
            Some(tls) => {
                let incoming = tls::incoming(listener, tls.server.clone());
                server.serve_with_incoming_shutdown(incoming, shutdown).await
            }
            None => {
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                server.serve_with_incoming_shutdown(incoming, shutdown).await
            }
        }
        .map_err(|source| Error::Transport { addr: local_addr.to_string(), source });
        drop(tasks);
        if let Some(leader) = leader {
            leader.abort();
        }
        if config.stop_node_on_shutdown {
            supervisor.stop_for_shutdown().await?;
            tracing::info!("agent shut down; its node is stopped");
        } else {
            tracing::info!("agent shut down; its node keeps running");
        }
        served
    }
}

/// Starts an agent and serves it until `shutdown` completes; see
/// [`Agent::start`] and [`Agent::serve`].
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    Agent::start(config).await?.serve(shutdown).await
}
