//! The CLI's errors, by where they come from; each names what was wrong,
//! and keeps its source. Commands turn them into the text or JSON error of
//! `--output` (see `output`), and an exit code.

use std::path::PathBuf;

/// What a command can fail on, beyond an answer it prints as it is.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The cloud did not answer, or refused.
    #[error(transparent)]
    Cloud(#[from] cairn_cloud::ClientError),
    /// The cloud could not start or serve here.
    #[error("the cloud: {0}")]
    CloudRun(#[from] cairn_cloud::Error),
    /// The agent could not start or serve here.
    #[error("the agent: {0}")]
    AgentRun(#[from] cairn_agent::Error),
    /// A node did not answer, or refused.
    #[error(transparent)]
    Node(#[from] cairn_client::Error),
    /// A file or directory could not be read or made.
    #[error("cannot {what} {}: {source}", .path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    /// A desired state file that does not parse or does not hold.
    #[error("{}: {message}", .path.display())]
    Desired { path: PathBuf, message: String },
    /// The arguments do not make a command.
    #[error("{0}")]
    Usage(String),
    /// The control plane did not do what was asked: it failed, or ran out
    /// of time (says which, with its last message).
    #[error("{0}")]
    Control(String),
    /// etcd's client failed (`cairn bench --system etcd`).
    #[cfg(feature = "etcd")]
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A request got no answer within its time (`cairn bench
    /// --request-timeout-ms`).
    #[error("no answer within {0} ms")]
    TimedOut(u128),
    /// A task of the command died.
    #[error("a task of the command failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}
