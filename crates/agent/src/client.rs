//! A client of the agent's gRPC API, for the leader loop, the cloud and the
//! CLI.
//!
//! [`AgentClient`] talks to one agent over one HTTP/2 connection (cheap to
//! clone, clones share it). Every call has a deadline, so a hung agent costs
//! its caller a bounded wait, and answers a plain [`NodeStatus`] that prints
//! as JSON.
//!
//! The client does not retry. Every agent call is idempotent, so a caller
//! may repeat any failed call as it is; [`Error::is_retryable`] says when
//! that may help.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::proto;
use crate::proto::agent_client::AgentClient as GrpcClient;
use crate::supervisor::STOP_GRACE_MS;
use crate::{Error, NodeStatus};

/// The deadline of a status or start call.
pub const CALL_TIMEOUT_MS: u64 = 15_000;
/// The deadline of a stop or restart call: the node's grace period after
/// SIGTERM, then SIGKILL, then the start, with room to spare.
pub const STOP_CALL_TIMEOUT_MS: u64 = STOP_GRACE_MS + 20_000;
/// How long `RunVersion` waits: a download and unpack, then a restart.
pub const INSTALL_CALL_TIMEOUT_MS: u64 = 600_000 + STOP_CALL_TIMEOUT_MS;

/// A connection to one host's agent.
#[derive(Clone, Debug)]
pub struct AgentClient {
    grpc: GrpcClient<Channel>,
    addr: String,
}

impl AgentClient {
    /// Connects to the agent at `addr` (`HOST:PORT` or `http://HOST:PORT`)
    /// over plain TCP, waiting at most `timeout`: for agents run without a
    /// CA.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<AgentClient, Error> {
        AgentClient::connect_with(addr, timeout, None).await
    }

    /// Connects to the agent at `addr`, over mutual TLS when given this
    /// agent's client settings ([`cairn_tls::AgentTls::client`]).
    pub async fn connect_with(
        addr: &str,
        timeout: Duration,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<AgentClient, Error> {
        let addr = addr.trim();
        let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| Error::InvalidArgument(format!("agent address '{addr}': {e}")))?
            .connect_timeout(timeout);
        let connecting = async {
            match tls {
                Some(config) => {
                    endpoint.connect_with_connector(crate::tls::Connector { config }).await
                }
                None => endpoint.connect().await,
            }
        };
        let channel = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| Error::Deadline {
                addr: addr.to_string(),
                call: "connect",
                timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            })?
            .map_err(|source| Error::Transport { addr: addr.to_string(), source })?;
        Ok(AgentClient { grpc: GrpcClient::new(channel), addr: addr.to_string() })
    }

    /// The agent's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The agent's node as it sees it now.
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let request = request(proto::StatusRequest {}, CALL_TIMEOUT_MS);
        self.call("Status", CALL_TIMEOUT_MS, |mut grpc| async move { grpc.status(request).await })
            .await
    }

    /// Runs node `node_id` on the agent's host (a no-op when it runs);
    /// `join` is a member's HTTP address for a node without data.
    pub async fn start_node(
        &self,
        node_id: u64,
        join: Option<String>,
        restart_generation: u64,
    ) -> Result<NodeStatus, Error> {
        let message = proto::StartNodeRequest {
            node_id,
            join: join.unwrap_or_default(),
            restart_generation,
            restore_from: String::new(),
        };
        self.start(message, CALL_TIMEOUT_MS).await
    }

    async fn start(
        &self,
        message: proto::StartNodeRequest,
        timeout_ms: u64,
    ) -> Result<NodeStatus, Error> {
        let request = request(message, timeout_ms);
        self.call("StartNode", timeout_ms, |mut grpc| async move { grpc.start_node(request).await })
            .await
    }

    /// Stops the node and keeps it stopped (its data is kept).
    pub async fn stop_node(&self) -> Result<NodeStatus, Error> {
        let request = request(proto::StopNodeRequest {}, STOP_CALL_TIMEOUT_MS);
        self.call("StopNode", STOP_CALL_TIMEOUT_MS, |mut grpc| async move {
            grpc.stop_node(request).await
        })
        .await
    }

    /// Restarts the node unless it was restarted for this generation.
    pub async fn restart_node(&self, restart_generation: u64) -> Result<NodeStatus, Error> {
        let message = proto::RestartNodeRequest { restart_generation };
        let request = request(message, STOP_CALL_TIMEOUT_MS);
        self.call("RestartNode", STOP_CALL_TIMEOUT_MS, |mut grpc| async move {
            grpc.restart_node(request).await
        })
        .await
    }

    /// Restores the backup at `from` into the node's data directory while it
    /// has none, then runs node `node_id` (a cluster's first node, made
    /// from a backup). Restoring reads and checks the whole backup: the call
    /// waits as long as an install.
    pub async fn restore_node(
        &self,
        node_id: u64,
        from: &str,
        restart_generation: u64,
    ) -> Result<NodeStatus, Error> {
        let message = proto::StartNodeRequest {
            node_id,
            join: String::new(),
            restart_generation,
            restore_from: from.to_string(),
        };
        self.start(message, INSTALL_CALL_TIMEOUT_MS).await
    }

    /// Runs the node as `version`, installed from `artifacts` when missing.
    /// Installing may download and unpack a large artifact: the call waits
    /// longer than the others.
    pub async fn run_version(
        &self,
        version: &str,
        artifacts: Option<&str>,
    ) -> Result<NodeStatus, Error> {
        let message = proto::RunVersionRequest {
            version: version.to_string(),
            artifacts: artifacts.unwrap_or_default().to_string(),
        };
        let request = request(message, INSTALL_CALL_TIMEOUT_MS);
        self.call("RunVersion", INSTALL_CALL_TIMEOUT_MS, |mut grpc| async move {
            grpc.run_version(request).await
        })
        .await
    }

    async fn call<F, Fut>(
        &self,
        call: &'static str,
        timeout_ms: u64,
        send: F,
    ) -> Result<NodeStatus, Error>
    where
        F: FnOnce(GrpcClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<proto::NodeStatus>, Status>>,
    {
        let deadline = Duration::from_millis(timeout_ms);
        let answer = tokio::time::timeout(deadline, send(self.grpc.clone()))
            .await
            .map_err(|_| Error::Deadline { addr: self.addr.clone(), call, timeout_ms })?
            .map_err(|status| Error::Rpc { addr: self.addr.clone(), status })?;
        NodeStatus::try_from(answer.into_inner())
            .map_err(|message| Error::BadAnswer { addr: self.addr.clone(), message })
    }
}

/// A request that tells the agent how long its caller waits.
fn request<T>(message: T, timeout_ms: u64) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(Duration::from_millis(timeout_ms));
    request
}
