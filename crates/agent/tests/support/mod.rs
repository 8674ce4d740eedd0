//! What the agent's scenarios share: a host directory with a fake node, an
//! agent run in this process, and patient polling.
//!
//! The fake node is a small Python program behind a shell wrapper, so that
//! `<node_bin> node --id N --data-dir D --listen A ...` runs it the way the
//! agent runs `cairn node`. It serves `GET /v1/health` as a healthy leader
//! (over HTTPS with the certificate the agent issued, given `--certs-dir`),
//! appends its pid and arguments to `<data-dir>/starts.log` (how scenarios
//! see restarts and `--join`), exits on SIGTERM, and exits by itself once its
//! host directory is gone (a test run that dies leaves no node behind).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_agent::{Agent, AgentClient, AgentConfig, Error, NodeStatus, Supervisor};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a scenario waits for the agent or the node to get somewhere
/// (the test machine is slow and shared).
pub const WAIT_MS_MAX: u64 = 30_000;
/// How often a scenario looks again.
const POLL_MS: u64 = 100;

const FAKE_NODE: &str = r#"
import json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer

def arg(name):
    args = sys.argv
    return args[args.index(name) + 1] if name in args else None

if sys.argv[1:2] != ["node"]:
    sys.exit("usage: node --id N --data-dir DIR --listen HOST:PORT")
node_id = int(arg("--id"))
data_dir = arg("--data-dir")
host, port = arg("--listen").rsplit(":", 1)
os.makedirs(data_dir, exist_ok=True)
with open(os.path.join(data_dir, "starts.log"), "a") as log:
    log.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\n")

class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/v1/health":
            self.send_error(404)
            return
        body = json.dumps({"status": "ok", "id": node_id, "role": "leader",
                           "applied_index": 0}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

def orphan_watch():
    host_dir = os.path.dirname(data_dir)
    while os.path.isdir(host_dir):
        time.sleep(1)
    os._exit(3)

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
threading.Thread(target=orphan_watch, daemon=True).start()
server = HTTPServer((host, int(port)), Health)
certs_dir = arg("--certs-dir")
if certs_dir:
    # As `cairn node` does with certificates: the API speaks HTTPS.
    import ssl
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(certs_dir, "node-%d.crt" % node_id),
                            os.path.join(certs_dir, "node-%d.key" % node_id))
    server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// A free loopback port: bound, read, released.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("a bound port has an address")
}

/// A host directory, its fake node binary and an agent configuration.
/// Dropping it kills whatever node still runs from it.
pub struct Host {
    pub tmp: TempDir,
    pub config: AgentConfig,
}

impl Host {
    pub fn new() -> Host {
        let tmp = tempfile::tempdir().expect("temp dir");
        // The node's command line holds the resolved path; so do the checks.
        let root = tmp.path().canonicalize().expect("resolve the temp dir");
        let script = tmp.path().join("fake_node.py");
        std::fs::write(&script, FAKE_NODE).expect("write the fake node");
        let node_bin = tmp.path().join("cairn");
        let wrapper = format!("#!/bin/sh\nexec python3 -u '{}' \"$@\"\n", script.display());
        std::fs::write(&node_bin, wrapper).expect("write the wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&node_bin, std::fs::Permissions::from_mode(0o755))
            .expect("make the wrapper executable");
        let config = AgentConfig {
            host: "host-1".into(),
            zone: "zone-a".into(),
            dir: root.join("host"),
            listen: "127.0.0.1:0".parse().expect("an address"),
            node_listen: free_addr(),
            node_peer_listen: free_addr(),
            cloud: None,
            cloud_token: None,
            node_bin,
            stop_node_on_shutdown: false,
            ca_dir: None,
            node_token_file: None,
            backup_dir: None,
        };
        Host { tmp, config }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.config.dir.join("data")
    }

    /// Every start of the node: `{"pid": …, "argv": [...]}`.
    pub fn starts(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.data_dir().join("starts.log")).unwrap_or_default();
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// The node's output, for failure messages.
    pub fn node_log(&self) -> String {
        std::fs::read_to_string(self.config.dir.join("node.log")).unwrap_or_default()
    }

    /// The persisted intent.
    pub fn intent(&self) -> Value {
        let text = std::fs::read_to_string(self.config.dir.join("agent.json")).expect("agent.json");
        serde_json::from_str(&text).expect("agent.json is JSON")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for start in self.starts() {
            let pid = start["pid"].as_u64().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
            if runs_from(pid, &self.data_dir()) {
                kill(pid, Signal::SIGKILL);
            }
        }
    }
}

/// Whether `pid` is alive (not a zombie) with `data_dir` on its command line.
pub fn runs_from(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let zombie = stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    let dir = data_dir.as_os_str().as_encoded_bytes();
    !zombie && pid != 0 && cmdline.split(|b| *b == 0).any(|arg| arg == dir)
}

/// Sends `sig` to `pid`, ignoring a process already gone.
pub fn kill(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            let _ = signal::kill(Pid::from_raw(pid), sig);
        }
    }
}

/// An agent served in this process.
pub struct RunningAgent {
    pub addr: SocketAddr,
    pub supervisor: Supervisor,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

impl RunningAgent {
    pub async fn start(config: AgentConfig) -> RunningAgent {
        let agent = Agent::start(config).await.expect("the agent starts");
        let addr = agent.local_addr();
        let supervisor = agent.supervisor();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.serve(async move {
            let _ = stopped.await;
        }));
        RunningAgent { addr, supervisor, stop: Some(stop), task }
    }

    pub async fn client(&self) -> AgentClient {
        AgentClient::connect(&self.addr.to_string(), Duration::from_secs(10))
            .await
            .expect("connect to the agent")
    }

    /// Shuts the agent down as SIGTERM would.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the agent task ends")
    }

    /// Ends the agent abruptly, as a crash would: nothing runs after.
    pub async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Polls the agent's status until `done` holds; fails with the last status
/// and the node's output after [`WAIT_MS_MAX`].
pub async fn wait_for(
    host: &Host,
    client: &AgentClient,
    what: &str,
    done: impl Fn(&NodeStatus) -> bool,
) -> NodeStatus {
    let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
    let mut last = None;
    while Instant::now() < deadline {
        match client.status().await {
            Ok(status) if done(&status) => return status,
            Ok(status) => last = Some(format!("{status:?}")),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
    panic!(
        "waited {WAIT_MS_MAX} ms for {what}; last status: {}\nnode.log:\n{}",
        last.unwrap_or_default(),
        host.node_log()
    );
}
