//! The node as an operating-system process: spawning it, finding it again
//! after an agent restart, telling whether it still runs, and signalling it.
//!
//! The node must outlive its agent. An agent that crashes or is SIGKILLed
//! (an upgrade, a bug, the cloud killing the agent's process group) must not
//! take the node, and the cluster's quorum, with it. So the node is spawned
//! in a process group of its own (a signal to the agent's group does not
//! reach it) and is never killed when its handle is dropped. Its pid goes to
//! `<dir>/node.pid`, and a restarted agent adopts it from there.
//!
//! Which process is the node, whether it lives, and how it is signalled are
//! the shared rules of `cairn_util::process` (a pid is trusted only while
//! its command line names this host's data directory; a zombie is dead;
//! signals go to the node's group when it leads one).
//!
//! Not handled here: when to start, stop or restart (the supervisor
//! decides), and anything inside the node (its health is asked over HTTP).

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use cairn_util::process as os;
use nix::sys::signal::Signal;

use crate::intent::write_atomically;
use crate::Error;

/// How the node is started.
#[derive(Debug)]
pub(crate) struct LaunchSpec<'a> {
    pub bin: &'a Path,
    pub node_id: u64,
    pub data_dir: &'a Path,
    pub listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub zone: &'a str,
    /// Passed as `--join` only when the data directory is empty: joining is
    /// how a node without data enters a running cluster.
    pub join: Option<&'a str>,
    /// Where the node's stdout and stderr are appended.
    pub log_path: &'a Path,
    /// Passed as `--certs-dir`: the node's certificates.
    pub certs_dir: Option<&'a Path>,
    /// Passed as `--admin-token-file` with `certs_dir`.
    pub admin_token_file: Option<&'a Path>,
    /// Passed as `--backup-dir`.
    pub backup_dir: Option<&'a Path>,
}

/// A running node process.
#[derive(Debug)]
pub(crate) enum NodeProcess {
    /// Spawned by this agent: its exit is reaped through the handle.
    Child { child: tokio::process::Child, pid: u32 },
    /// Found running by a restarted agent: not its child, watched by polling.
    Adopted { pid: u32, data_dir: PathBuf },
}

impl NodeProcess {
    pub fn pid(&self) -> u32 {
        match self {
            NodeProcess::Child { pid, .. } | NodeProcess::Adopted { pid, .. } => *pid,
        }
    }

    /// `Some(how it ended)` once the process has exited, `None` while it runs.
    pub fn exited(&mut self) -> Option<String> {
        match self {
            NodeProcess::Child { child, pid } => match child.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) => Some(describe_exit(*pid, status)),
                // Not waitable any more: someone else reaped it.
                Err(e) => Some(format!("the node (pid {pid}) cannot be waited for: {e}")),
            },
            NodeProcess::Adopted { pid, data_dir } => {
                if os::is_node(*pid, data_dir) {
                    None
                } else {
                    Some(format!("the adopted node (pid {pid}) exited"))
                }
            }
        }
    }
}

fn describe_exit(pid: u32, status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("the node (pid {pid}) exited with code {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map(|s| s.as_str()).unwrap_or("an unknown signal");
            format!("the node (pid {pid}) was killed by {name} ({sig})")
        }
        (None, None) => format!("the node (pid {pid}) exited: {status}"),
    }
}

/// Whether the node's data directory holds anything.
pub(crate) fn has_data(data_dir: &Path) -> bool {
    fs::read_dir(data_dir).map(|mut entries| entries.next().is_some()).unwrap_or(false)
}

/// Starts the node in a process group of its own, detached from the agent's
/// fate, its output appended to the log file.
pub(crate) fn spawn(spec: &LaunchSpec<'_>) -> Result<NodeProcess, Error> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(spec.log_path)
        .map_err(|e| Error::io("cannot open the node's log", spec.log_path, e))?;
    let log_err =
        log.try_clone().map_err(|e| Error::io("cannot open the node's log", spec.log_path, e))?;
    let mut command = tokio::process::Command::new(spec.bin);
    command
        .arg("node")
        .arg("--id")
        .arg(spec.node_id.to_string())
        .arg("--data-dir")
        .arg(spec.data_dir)
        .arg("--listen")
        .arg(spec.listen.to_string())
        .arg("--peer-listen")
        .arg(spec.peer_listen.to_string())
        .arg("--zone")
        .arg(spec.zone);
    if let Some(backup_dir) = spec.backup_dir {
        command.arg("--backup-dir").arg(backup_dir);
    }
    if let Some(join) = spec.join.filter(|_| !has_data(spec.data_dir)) {
        command.arg("--join").arg(join);
    }
    match spec.certs_dir {
        Some(certs_dir) => {
            command.arg("--certs-dir").arg(certs_dir);
            if let Some(token_file) = spec.admin_token_file {
                command.arg("--admin-token-file").arg(token_file);
            }
        }
        // An agent without the cluster's CA (one run by hand) runs its node
        // as it can: with peers on plain TCP and no client tokens.
        None => {
            command.arg("--insecure");
        }
    }
    // The environment (CAIRN_LOG among it) is inherited as it is.
    command.stdin(Stdio::null()).stdout(log).stderr(log_err).kill_on_drop(false).process_group(0);
    let child =
        command.spawn().map_err(|e| Error::Spawn { bin: spec.bin.to_path_buf(), source: e })?;
    let Some(pid) = child.id() else {
        // A child reaped already has no id; the supervisor sees the exit.
        return Err(Error::Spawn {
            bin: spec.bin.to_path_buf(),
            source: std::io::Error::other("the node exited as soon as it started"),
        });
    };
    Ok(NodeProcess::Child { child, pid })
}

/// Records the node's pid for a restarted agent to adopt.
pub(crate) fn write_pid_file(path: &Path, pid: u32) -> Result<(), Error> {
    write_atomically(path, format!("{pid}\n").as_bytes())
}

/// Forgets the node's pid (it exited or was stopped).
pub(crate) fn remove_pid_file(path: &Path) -> Result<(), Error> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(Error::io("cannot remove", path, e))
        }
        _ => Ok(()),
    }
}

/// Sends `sig` to the node (its whole group when it leads one). A node gone
/// already is not an error.
pub(crate) fn send_signal(pid: u32, sig: Signal) -> Result<(), Error> {
    os::signal(pid, sig).map_err(|source| Error::Signal { signal: sig.as_str(), pid, source })
}
