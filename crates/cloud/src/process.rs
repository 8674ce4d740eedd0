//! Processes and ports for the `local` provider: starting an agent, signalling
//! process groups, killing the node an agent leaves behind, and probing
//! whether a host's ports are free.
//!
//! Each agent runs in a process group of its own (its pid is the group's id),
//! so a signal to the group reaches whatever helpers it started in it, and a
//! Ctrl-C at the terminal of `cairn up` does not reach the agents directly:
//! the cloud stops them in order. The node an agent starts runs in yet another
//! group, so it survives its agent (an agent restart must not take the data
//! plane down); it is found through the `node.pid` file the agent writes.
//!
//! A pid in `node.pid` is trusted only while its command line names the
//! host's data directory (`cairn_util::process`, the rules the agent follows
//! too): a pid the system gave to another program after the node died is
//! never killed as the node.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cairn_util::process as os;
use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use crate::inventory::Ports;
use crate::Error;

/// The file an agent writes with its node's pid.
pub use os::NODE_PID_FILE;
/// The file an agent's stdout and stderr are appended to.
pub const AGENT_LOG_FILE: &str = "agent.log";
/// How often a wait for a process to exit looks again.
const EXIT_POLL_MS: u64 = 50;

/// What an agent is started with.
pub(crate) struct AgentSpec<'a> {
    pub bin: &'a Path,
    pub host: &'a str,
    pub zone: &'a str,
    pub dir: &'a Path,
    pub ports: Ports,
    /// The cloud's URL, `http://127.0.0.1:port`.
    pub cloud_url: &'a str,
    /// The cluster's CA, which the agent issues its node's certificate from.
    pub ca_dir: &'a Path,
    /// The cloud's admin token, which the agent sends with its calls.
    pub token_file: &'a Path,
    /// The cluster's admin token, which the agent gives its node.
    pub node_token_file: &'a Path,
    /// Where the node keeps its backups.
    pub backup_dir: &'a Path,
}

/// The agent's command line after the binary.
pub(crate) fn agent_args(spec: &AgentSpec<'_>) -> Vec<OsString> {
    let [api, peer, agent] = spec.ports.addresses();
    let mut args: Vec<OsString> = Vec::with_capacity(24);
    args.push("agent".into());
    for (flag, value) in [("--host", spec.host), ("--zone", spec.zone)] {
        args.push(flag.into());
        args.push(value.into());
    }
    args.push("--dir".into());
    args.push(spec.dir.as_os_str().to_owned());
    for (flag, addr) in [("--listen", agent), ("--node-listen", api), ("--node-peer-listen", peer)]
    {
        args.push(flag.into());
        args.push(addr.to_string().into());
    }
    args.push("--cloud".into());
    args.push(spec.cloud_url.into());
    args.push("--ca-dir".into());
    args.push(spec.ca_dir.as_os_str().to_owned());
    args.push("--cloud-token-file".into());
    args.push(spec.token_file.as_os_str().to_owned());
    args.push("--node-token-file".into());
    args.push(spec.node_token_file.as_os_str().to_owned());
    args.push("--backup-dir".into());
    args.push(spec.backup_dir.as_os_str().to_owned());
    args
}

/// Starts an agent in a process group of its own, its output appended to
/// `<dir>/agent.log`. The agent outlives the `Child` handle: the cloud stops
/// agents itself, in order, and never by dropping a handle.
pub(crate) fn spawn_agent(spec: &AgentSpec<'_>, started_ms: u64) -> Result<Child, Error> {
    let log_path = spec.dir.join(AGENT_LOG_FILE);
    let open_error = |e| Error::io("cannot open the agent's log", &log_path, e);
    let mut log =
        OpenOptions::new().create(true).append(true).open(&log_path).map_err(open_error)?;
    // A marker between runs, so a restart is visible in the log itself.
    let marker = format!("--- cloud: starting the agent of {} at {started_ms} ms ---\n", spec.host);
    log.write_all(marker.as_bytes()).map_err(open_error)?;
    let err_log = log.try_clone().map_err(open_error)?;
    let spawn_error =
        |source| Error::Spawn { bin: spec.bin.into(), host: spec.host.into(), source };
    Command::new(spec.bin)
        .args(agent_args(spec))
        .current_dir(spec.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
        .map_err(spawn_error)
}

/// Sends `signal` to the process group `pgid`; a group already gone is fine.
pub(crate) fn signal_group(pgid: u32, signal: Signal) {
    if let Err(e) = os::signal_group(pgid, signal) {
        tracing::warn!(pgid, ?signal, error = %e, "cannot signal an agent's process group");
    }
}

/// Waits up to `limit` for `pid` to be gone; says whether it is.
pub(crate) async fn wait_gone(pid: u32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while os::is_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(EXIT_POLL_MS)).await;
    }
    true
}

/// Kills (SIGKILL) the node of the host directory `dir`, if one runs (found
/// through `node.pid`, checked against its command line), and waits up to
/// `limit` for it to be gone. Returns the pid it signalled.
pub(crate) async fn kill_node(dir: &Path, limit: Duration) -> Option<u32> {
    let found = os::find_node(&dir.join(NODE_PID_FILE), &dir.join(os::NODE_DATA_DIR))?;
    match os::signal(found.pid, Signal::SIGKILL) {
        Ok(()) => {
            if !wait_gone(found.pid, limit).await {
                tracing::warn!(pid = found.pid, "the node is still there after SIGKILL");
            }
        }
        Err(e) => tracing::warn!(pid = found.pid, error = %e, "cannot kill the node"),
    }
    Some(found.pid)
}

/// Whether `pid` is an agent started for the host in `dir` by an earlier run
/// of the cloud (one that died without stopping its agents). Only a process
/// whose command line names `dir` qualifies, so a reused pid is never taken
/// for an agent; where `/proc` does not exist the answer is no.
pub(crate) fn is_stale_agent(pid: u32, dir: &Path) -> bool {
    if os::signalable(pid).is_none() || !os::is_alive(pid) {
        return false;
    }
    let dir = dir.as_os_str().as_encoded_bytes();
    os::cmdline(pid).is_some_and(|args| args.iter().any(|arg| arg == dir))
}

/// Whether all three ports bind on loopback now. (They may be taken again
/// before the agent binds them; the agent then fails and is restarted.)
pub(crate) fn ports_free(ports: &Ports) -> bool {
    // Held together, so one probe cannot succeed only because another
    // released the same port.
    let mut held: Vec<TcpListener> = Vec::with_capacity(3);
    for addr in ports.addresses() {
        match TcpListener::bind(addr) {
            Ok(listener) => held.push(listener),
            Err(_) => return false,
        }
    }
    true
}

/// Makes `bin` absolute when it is a path, so it means the same from the
/// agent's working directory (its host directory). A bare name is looked up
/// in `PATH` as it is.
pub(crate) fn resolve_bin(bin: &Path) -> Result<PathBuf, Error> {
    if bin.components().count() == 1 && !bin.is_absolute() {
        return Ok(bin.to_path_buf());
    }
    std::fs::canonicalize(bin).map_err(|e| Error::io("cannot find the agent binary", bin, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's flags, in the contract's order.
    #[test]
    fn agent_command_line() {
        let ports = Ports::for_number(7000, 1).expect("fits");
        let spec = AgentSpec {
            bin: Path::new("/bin/cairn"),
            host: "host-1",
            zone: "zone-a",
            dir: Path::new("/r/hosts/host-1"),
            ports,
            cloud_url: "http://127.0.0.1:6999",
            ca_dir: Path::new("/r/ca"),
            token_file: Path::new("/r/cloud.token"),
            node_token_file: Path::new("/r/admin.token"),
            backup_dir: Path::new("/r/backups"),
        };
        let args: Vec<String> =
            agent_args(&spec).into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
        let expected = "agent --host host-1 --zone zone-a --dir /r/hosts/host-1 \
                        --listen 127.0.0.1:7003 --node-listen 127.0.0.1:7001 \
                        --node-peer-listen 127.0.0.1:7002 --cloud http://127.0.0.1:6999 \
                        --ca-dir /r/ca --cloud-token-file /r/cloud.token \
                        --node-token-file /r/admin.token --backup-dir /r/backups";
        assert_eq!(args.join(" "), expected);
    }

    /// A process is taken for a host's stale agent only when its command
    /// line names the host's directory.
    #[test]
    fn stale_agents_are_recognised_by_their_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("sleep 30; exit 0") // two commands: the shell stays, with its arguments
            .arg(dir.path())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // The spawn returns once exec began; the arguments show a moment later.
        let cmdline = format!("/proc/{pid}/cmdline");
        for _ in 0..100 {
            if std::fs::read(&cmdline).is_ok_and(|bytes| !bytes.is_empty()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_stale_agent(pid, dir.path()));
        assert!(!is_stale_agent(pid, &dir.path().join("other")));
        let _ = child.kill();
        let _ = child.wait();
        assert!(!is_stale_agent(pid, dir.path()), "a dead process is no agent");
    }
}
