//! Processes as the agent and the cloud see them: which pids may be
//! signalled, whether a process lives, which process is a host's node, pid
//! files, and signals to a process or its group.
//!
//! A host directory holds the node's data in [`NODE_DATA_DIR`] and its pid
//! in [`NODE_PID_FILE`] (the agent writes it, the agent and the cloud read
//! it). A pid read from a file is never trusted alone: the node is the live
//! process whose command line says `node` and `--data-dir <that data
//! directory>`, so a pid the system gave to another program after the node
//! died is never signalled as the node.
//!
//! Invariants:
//! - Pid 0, pid 1 and this process itself are never signalled (to kill(2),
//!   0 means every process of the group, and 1 is init).
//! - A zombie (dead, not yet reaped) is not alive: an adopted node is not
//!   our child, so its exit shows only as its pid vanishing or turning into
//!   a zombie.
//!
//! Linux only: liveness and command lines come from `/proc`.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgid, Pid};

/// The file, in a host directory, that holds its node's pid.
pub const NODE_PID_FILE: &str = "node.pid";
/// The directory, in a host directory, that holds its node's data.
pub const NODE_DATA_DIR: &str = "data";

/// The largest pid file read (a pid is a few digits).
const PID_FILE_BYTES_MAX: u64 = 64;
/// The largest `/proc` file read (a node's command line is a few hundred
/// bytes).
const PROC_FILE_BYTES_MAX: u64 = 64 * 1024;

/// `pid` as something kill(2) may be given: never 0 or 1, never this
/// process.
pub fn signalable(pid: u32) -> Option<Pid> {
    let raw = i32::try_from(pid).ok()?;
    (raw > 1 && pid != std::process::id()).then(|| Pid::from_raw(raw))
}

/// Whether `pid` names a live process (a zombie counts as gone).
pub fn is_alive(pid: u32) -> bool {
    let Some(raw) = i32::try_from(pid).ok().filter(|raw| *raw > 0).map(Pid::from_raw) else {
        return false;
    };
    if !matches!(kill(raw, None), Ok(()) | Err(Errno::EPERM)) {
        return false;
    }
    let Some(stat) = read_bounded(Path::new(&format!("/proc/{pid}/stat")), PROC_FILE_BYTES_MAX)
    else {
        return false;
    };
    // `pid (comm) STATE ...`; comm may hold spaces and parentheses.
    let stat = String::from_utf8_lossy(&stat);
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// Whether `pid` leads its own process group.
pub fn leads_group(pid: u32) -> bool {
    signalable(pid).is_some_and(|p| getpgid(Some(p)) == Ok(p))
}

/// Sends `signal` to `pid`, to its whole group when it leads one (so that a
/// wrapper script and the program it runs stop together). A process gone
/// already is not an error; a pid that may not be signalled is `EINVAL`.
pub fn signal(pid: u32, signal: Signal) -> Result<(), Errno> {
    let Some(target) = signalable(pid) else { return Err(Errno::EINVAL) };
    let sent = if leads_group(pid) { killpg(target, signal) } else { kill(target, signal) };
    match sent {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Sends `signal` to the process group `pgid`; a group gone already is not
/// an error.
pub fn signal_group(pgid: u32, signal: Signal) -> Result<(), Errno> {
    let Some(target) = signalable(pgid) else { return Err(Errno::EINVAL) };
    match killpg(target, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The arguments `pid` was started with, if it lives and `/proc` says.
pub fn cmdline(pid: u32) -> Option<Vec<Vec<u8>>> {
    let bytes = read_bounded(Path::new(&format!("/proc/{pid}/cmdline")), PROC_FILE_BYTES_MAX)?;
    let mut args: Vec<Vec<u8>> = bytes.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    if args.last().is_some_and(Vec::is_empty) {
        args.pop();
    }
    Some(args)
}

/// The pid a pid file holds; `None` when it is missing, too long or holds no
/// pid.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    let bytes = read_bounded(path, PID_FILE_BYTES_MAX)?;
    std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
}

/// A node found running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundNode {
    pub pid: u32,
    /// The `--id` on its command line.
    pub node_id: Option<u64>,
}

/// The host's node still running, for the data directory `data_dir`: first
/// from the pid file, then (a crash between spawning the node and writing
/// the file) among all processes.
pub fn find_node(pid_file: &Path, data_dir: &Path) -> Option<FoundNode> {
    let from_file = read_pid_file(pid_file).filter(|pid| is_node(*pid, data_dir));
    let pid = from_file.or_else(|| scan_for_node(data_dir))?;
    let node_id = cmdline(pid).and_then(|args| arg_value(&args, "--id")?.parse().ok());
    Some(FoundNode { pid, node_id })
}

/// Whether `pid` is alive and the node of `data_dir`.
pub fn is_node(pid: u32, data_dir: &Path) -> bool {
    signalable(pid).is_some()
        && is_alive(pid)
        && cmdline(pid).is_some_and(|args| is_node_cmdline(&args, data_dir.as_os_str()))
}

/// The lowest pid leading its own group whose command line is the node of
/// `data_dir` (a wrapper script and the program it runs both match).
fn scan_for_node(data_dir: &Path) -> Option<u32> {
    let mut matches: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| is_node(*pid, data_dir))
        .collect();
    matches.sort_unstable();
    let leader = matches.iter().copied().find(|pid| leads_group(*pid));
    leader.or_else(|| matches.first().copied())
}

fn is_node_cmdline(args: &[Vec<u8>], data_dir: &OsStr) -> bool {
    args.iter().any(|a| a == b"node")
        && args.windows(2).any(|w| w[0] == b"--data-dir" && w[1] == data_dir.as_bytes())
}

fn arg_value(args: &[Vec<u8>], flag: &str) -> Option<String> {
    let value = args.windows(2).find(|w| w[0] == flag.as_bytes())?.get(1)?;
    String::from_utf8(value.clone()).ok()
}

/// A file's first `limit_bytes` bytes; `None` when it cannot be read.
fn read_bounded(path: &Path, limit_bytes: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path).ok()?.take(limit_bytes).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line test accepts the node of this data directory only,
    /// not one whose data directory merely starts the same.
    #[test]
    fn a_node_is_named_by_its_exact_data_dir() {
        let args = |list: &[&str]| list.iter().map(|a| a.as_bytes().to_vec()).collect::<Vec<_>>();
        let dir = OsStr::new("/h/data");
        assert!(is_node_cmdline(&args(&["cairn", "node", "--data-dir", "/h/data"]), dir));
        assert!(!is_node_cmdline(&args(&["cairn", "node", "--data-dir", "/h/data2"]), dir));
        assert!(!is_node_cmdline(&args(&["cairn", "agent", "--data-dir", "/h/data"]), dir));
        assert_eq!(arg_value(&args(&["x", "node", "--id", "4"]), "--id"), Some("4".to_string()));
        assert_eq!(arg_value(&args(&["x", "--id"]), "--id"), None);
    }

    /// This process lives but is never signalled, and is not a node; pids 0
    /// and 1 are never signalled.
    #[test]
    fn unsafe_pids_are_refused() {
        let me = std::process::id();
        assert!(is_alive(me));
        assert!(signalable(me).is_none() && signalable(0).is_none() && signalable(1).is_none());
        assert!(signalable(u32::MAX).is_none());
        assert_eq!(signal(me, Signal::SIGTERM), Err(Errno::EINVAL));
        assert!(!is_node(me, Path::new("/nonexistent/data")));
        assert!(!is_alive(0));
    }

    /// A pid file holds a pid or nothing usable.
    #[test]
    fn pid_files_are_read_with_care() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(NODE_PID_FILE);
        assert_eq!(read_pid_file(&path), None, "missing");
        std::fs::write(&path, "4242\n").expect("written");
        assert_eq!(read_pid_file(&path), Some(4242));
        std::fs::write(&path, "not a pid").expect("written");
        assert_eq!(read_pid_file(&path), None);
        std::fs::write(&path, "1".repeat(100)).expect("written");
        assert_eq!(read_pid_file(&path), None, "too long");
    }
}
