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
//! Invariants:
//! - A pid is trusted only while `/proc/<pid>/cmdline` says it is this host's
//!   node: an argument `node` and `--data-dir <this host's data dir>`. A pid
//!   reused by another program after the node died is never adopted or
//!   signalled as the node.
//! - A zombie is dead: an adopted node is not our child, so its exit shows
//!   only as its pid disappearing or turning into a zombie.
//! - Signals go to the node's process group when it leads one (as spawned),
//!   so a wrapper script and the program it runs stop together.
//!
//! Not handled here: when to start, stop or restart (the supervisor
//! decides), and anything inside the node (its health is asked over HTTP).

use std::ffi::OsStr;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::intent::{read_small, write_atomically};
use crate::Error;

/// The largest pid file read (a pid is a few digits).
const PID_FILE_BYTES_MAX: u64 = 64;
/// The largest `/proc/<pid>/cmdline` read; the node's is a few hundred bytes.
const CMDLINE_BYTES_MAX: u64 = 64 * 1024;

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
                if is_node_process(*pid, data_dir) {
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
    if let Some(join) = spec.join.filter(|_| !has_data(spec.data_dir)) {
        command.arg("--join").arg(join);
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

/// A node found running.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Found {
    pub pid: u32,
    /// The `--id` on its command line.
    pub node_id: Option<u64>,
}

/// Finds this host's node still running: first from the pid file, then (a
/// crash between spawn and pid file) among all processes.
pub(crate) fn find_node(pid_file: &Path, data_dir: &Path) -> Option<Found> {
    let from_file = read_small(pid_file, PID_FILE_BYTES_MAX)
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|pid| is_node_process(*pid, data_dir));
    let pid = from_file.or_else(|| scan_proc(data_dir))?;
    let node_id = cmdline(pid).and_then(|args| arg_value(&args, "--id")?.parse().ok());
    Some(Found { pid, node_id })
}

/// The lowest pid leading its own group whose command line is this host's
/// node (a wrapper script and the program it runs both match).
fn scan_proc(data_dir: &Path) -> Option<u32> {
    let mut matches: Vec<u32> = fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && is_node_process(*pid, data_dir))
        .collect();
    matches.sort_unstable();
    let leader = matches.iter().copied().find(|pid| leads_group(*pid));
    leader.or_else(|| matches.first().copied())
}

/// Whether `pid` is alive, not a zombie, and this host's node.
pub(crate) fn is_node_process(pid: u32, data_dir: &Path) -> bool {
    let Some(raw) = raw_pid(pid) else { return false };
    let alive = matches!(signal::kill(raw, None), Ok(()) | Err(Errno::EPERM));
    alive
        && !is_zombie(pid)
        && cmdline(pid).is_some_and(|args| is_node_cmdline(&args, data_dir.as_os_str()))
}

fn raw_pid(pid: u32) -> Option<Pid> {
    // Pid 0 and negative pids mean process groups to kill(2): never a node.
    i32::try_from(pid).ok().filter(|p| *p > 0).map(Pid::from_raw)
}

fn is_zombie(pid: u32) -> bool {
    let Some(stat) = read_small(Path::new(&format!("/proc/{pid}/stat")), CMDLINE_BYTES_MAX) else {
        return true;
    };
    // `pid (comm) STATE ...`; comm may hold spaces and parentheses.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z") | Some("X") | None)
}

fn cmdline(pid: u32) -> Option<Vec<Vec<u8>>> {
    let path = format!("/proc/{pid}/cmdline");
    let bytes = fs::File::open(&path).ok().and_then(|file| {
        use std::io::Read;
        let mut bytes = Vec::new();
        file.take(CMDLINE_BYTES_MAX).read_to_end(&mut bytes).ok().map(|_| bytes)
    })?;
    let mut args: Vec<Vec<u8>> = bytes.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    if args.last().is_some_and(Vec::is_empty) {
        args.pop();
    }
    Some(args)
}

fn is_node_cmdline(args: &[Vec<u8>], data_dir: &OsStr) -> bool {
    args.iter().any(|a| a == b"node")
        && args.windows(2).any(|w| w[0] == b"--data-dir" && w[1] == data_dir.as_bytes())
}

fn arg_value(args: &[Vec<u8>], flag: &str) -> Option<String> {
    let value = args.windows(2).find(|w| w[0] == flag.as_bytes())?.get(1)?;
    String::from_utf8(value.clone()).ok()
}

fn leads_group(pid: u32) -> bool {
    raw_pid(pid).is_some_and(|p| nix::unistd::getpgid(Some(p)) == Ok(p))
}

/// Sends `sig` to the node (its whole group when it leads one). A node gone
/// already is not an error.
pub(crate) fn send_signal(pid: u32, sig: Signal) -> Result<(), Error> {
    let Some(raw) = raw_pid(pid) else {
        return Err(Error::Signal { signal: sig.as_str(), pid, source: Errno::EINVAL });
    };
    let sent = if leads_group(pid) { signal::killpg(raw, sig) } else { signal::kill(raw, sig) };
    match sent {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(Error::Signal { signal: sig.as_str(), pid, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line test accepts the node of this data directory only,
    /// not one whose data directory merely starts the same.
    #[test]
    fn cmdline_must_name_node_and_the_exact_data_dir() {
        let args = |list: &[&str]| list.iter().map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>();
        let dir = OsStr::new("/h/data");
        assert!(is_node_cmdline(&args(&["cairn", "node", "--data-dir", "/h/data"]), dir));
        assert!(!is_node_cmdline(&args(&["cairn", "node", "--data-dir", "/h/data2"]), dir));
        assert!(!is_node_cmdline(&args(&["cairn", "agent", "--data-dir", "/h/data"]), dir));
        assert_eq!(arg_value(&args(&["x", "node", "--id", "4"]), "--id"), Some("4".to_string()));
        assert_eq!(arg_value(&args(&["x", "--id"]), "--id"), None);
    }

    /// This test process is alive and not a node; pid 0 is never a node.
    #[test]
    fn liveness_checks_refuse_what_is_not_the_node() {
        assert!(!is_node_process(std::process::id(), Path::new("/nonexistent/data")));
        assert!(!is_node_process(0, Path::new("/nonexistent/data")));
        assert!(!is_zombie(std::process::id()));
    }
}
