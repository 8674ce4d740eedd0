//! The agent's one error type, for the supervisor, the gRPC service and the
//! client alike.
//!
//! Variants are grouped by how a caller reacts. A refused request
//! ([`Error::InvalidArgument`], [`Error::OtherNode`], [`Error::NoNode`]) will
//! be refused again: the caller must change what it asks. The host's own
//! troubles ([`Error::Io`], [`Error::Spawn`], [`Error::StopTimeout`],
//! [`Error::BadIntent`]) need an operator or time. A call that got no answer
//! ([`Error::Transport`], [`Error::Deadline`], some [`Error::Rpc`]) may be
//! repeated as it is: every agent call is idempotent; see
//! [`Error::is_retryable`].
//!
//! Every message names what was wrong: the file, the process, the ids.

use std::path::PathBuf;

/// Everything that can go wrong in the agent and its client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request that makes no sense (a zero node id, a malformed address).
    #[error("{0}")]
    InvalidArgument(String),
    /// The host holds another node's data (or runs another node).
    #[error(
        "this host holds node {held}'s data; it cannot run node {requested} \
         (remove node {held} from the cluster and delete its host first)"
    )]
    OtherNode { held: u64, requested: u64 },
    /// The request needs a node and the host has none.
    #[error("this host has no node: {0}")]
    NoNode(String),
    /// A file or directory of the host could not be read or written.
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// The persisted intent (`agent.json`) is not what this agent wrote.
    #[error("cannot read {path}: {message} (fix or remove the file)")]
    BadIntent { path: PathBuf, message: String },
    /// The node's certificate could not be issued.
    #[error("cannot issue the node's certificate: {0}")]
    Certificate(#[from] cairn_tls::Error),
    /// The node's binary could not be started.
    #[error("cannot start the node binary {bin}: {source}")]
    Spawn { bin: PathBuf, source: std::io::Error },
    /// A signal could not be sent to the node.
    #[error("cannot send {signal} to the node (pid {pid}): {source}")]
    Signal { signal: &'static str, pid: u32, source: nix::Error },
    /// The node outlived SIGTERM and SIGKILL.
    #[error("the node (pid {pid}) did not exit {waited_ms} ms after SIGTERM and SIGKILL")]
    StopTimeout { pid: u32, waited_ms: u64 },
    /// The agent cannot listen on its gRPC address.
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    /// A version could not be installed: the reason names the file, URL or
    /// check at fault.
    #[error("cannot install version {version}: {reason}")]
    Install { version: String, reason: String },
    /// A backup could not be restored into the node's data directory.
    #[error("cannot restore the backup {from}: {reason}")]
    Restore { from: String, reason: String },
    /// A command was cut short (the agent is shutting down).
    #[error("the command was interrupted: {0}")]
    Interrupted(String),
    /// The gRPC server or a client connection failed.
    #[error("gRPC transport to {addr}: {source}")]
    Transport { addr: String, source: tonic::transport::Error },
    /// The agent answered a call with an error.
    #[error("agent at {addr}: {} ({:?})", .status.message(), .status.code())]
    Rpc { addr: String, status: tonic::Status },
    /// The agent answered with something this build cannot read.
    #[error("agent at {addr} answered oddly: {message}")]
    BadAnswer { addr: String, message: String },
    /// A call got no answer within its deadline.
    #[error("agent at {addr} did not answer {call} within {timeout_ms} ms")]
    Deadline { addr: String, call: &'static str, timeout_ms: u64 },
}

impl Error {
    /// Whether repeating the same call may succeed (every agent call is
    /// idempotent, so repeating is always safe).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport { .. }
            | Error::Deadline { .. }
            | Error::StopTimeout { .. }
            | Error::Interrupted(_) => true,
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            _ => false,
        }
    }

    /// The gRPC code of an error the agent answered with, if any.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The gRPC status the service answers with.
    pub fn to_status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(message),
            Error::OtherNode { .. }
            | Error::NoNode(_)
            | Error::BadIntent { .. }
            | Error::Install { .. }
            | Error::Restore { .. } => tonic::Status::failed_precondition(message),
            Error::StopTimeout { .. } | Error::Deadline { .. } => {
                tonic::Status::deadline_exceeded(message)
            }
            Error::Rpc { status, .. } => tonic::Status::new(status.code(), message),
            Error::Io { .. }
            | Error::Certificate(_)
            | Error::Spawn { .. }
            | Error::Signal { .. }
            | Error::BadAnswer { .. }
            | Error::Listen { .. } => tonic::Status::internal(message),
            Error::Transport { .. } | Error::Interrupted(_) => tonic::Status::unavailable(message),
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Error {
        Error::Io { what, path: path.into(), source }
    }
}

/// What stops a turn of the leader's loop, or fails one of its steps. Each
/// keeps its source; a failed step's message goes into the control state.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The cloud did not answer, or refused.
    #[error(transparent)]
    Cloud(#[from] cairn_cloud::ClientError),
    /// Another host's agent did not answer, or refused.
    #[error(transparent)]
    Agent(#[from] Error),
    /// The local node did not answer, or refused.
    #[error("the local node: {0}")]
    Node(#[from] cairn_client::Error),
    /// Another host's node did not answer, or refused.
    #[error("the node on {host}: {source}")]
    HostNode { host: String, source: cairn_client::Error },
    /// A step names a host the cloud does not list.
    #[error("{0} is not among the cloud's hosts")]
    UnknownHost(String),
    /// A step outlasted its deadline.
    #[error("no answer within {0} ms")]
    Timeout(u64),
    /// A node restarted by a step did not serve again, caught up, in time.
    #[error(
        "the node on {host} did not serve again caught up within {waited_ms} ms: it must apply \
         through index {target}; {now}"
    )]
    NotCaughtUp { host: String, target: u64, now: String, waited_ms: u64 },
}
