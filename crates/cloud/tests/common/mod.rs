//! The cloud's test harness: a cloud on a temporary root, real processes, and
//! a stand-in agent (a shell script) that records how it was started, starts
//! a stand-in node in a process group of its own (as the real agent does),
//! and sleeps until signalled.
//!
//! Deadlines are generous (the tests share a slow machine): whatever should
//! happen is polled for up to [`DEADLINE_MS`]. Whatever a failed test leaves
//! running is killed when its harness is dropped.

#![allow(dead_code)]

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_cloud::{Cloud, CloudConfig, Error, StatusEvent};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;

/// How long anything the tests wait for may take.
pub const DEADLINE_MS: u64 = 30_000;
const POLL_MS: u64 = 100;

const FAKE_AGENT: &str = r#"#!/bin/sh
# A stand-in for `cairn agent`: records its command line, starts a stand-in
# node in a process group of its own unless one runs, and sleeps. The
# stand-in node's command line names `node` and the host's data directory,
# as a real node's does: the cloud signals nothing else as the node.
dir=""
prev=""
for arg in "$@"; do
    if [ "$prev" = "--dir" ]; then dir="$arg"; fi
    prev="$arg"
done
[ -n "$dir" ] || { echo "no --dir" >&2; exit 2; }
printf '%s\n' "$@" > "$dir/argv.tmp" && mv "$dir/argv.tmp" "$dir/argv"
echo $$ >> "$dir/agent.pids"
node=$(cat "$dir/node.pid" 2>/dev/null)
if [ -z "$node" ] || ! kill -0 "$node" 2>/dev/null; then
    setsid sh -c 'sleep 300; :' node --data-dir "$dir/data" </dev/null >/dev/null 2>&1 &
    echo $! > "$dir/node.pid"
fi
exec sleep 300
"#;

/// A desired state with every field, numbered `id`.
pub fn desired_text(id: u64) -> String {
    format!(
        r#"{{"id":{id},"running":true,"version":"0.1.0","artifacts":null,"restart_generation":0,"replicas":3,"zones":["zone-a"],"host_type":"small","allow_temporary_hosts":false,"backups":[],"backup_schedule":null,"restore_from":null,"max_attempts":5}}"#
    )
}

/// A cloud that serves in a task, and how to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub events: broadcast::Receiver<StatusEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), Error>>,
}

pub struct Harness {
    pub root: tempfile::TempDir,
    pub scratch: tempfile::TempDir,
    pub agent_bin: PathBuf,
    pub base_port: u16,
    pub desired_file: Option<PathBuf>,
    pub http: reqwest::Client,
    pub cloud: Option<Running>,
}

/// A base port from 20000 up to the kernel's ephemeral port range (which
/// the cloud keeps hosts out of) whose first hosts' ports are free now.
fn free_base_port() -> u16 {
    let top = cairn_cloud::ports::avoided_range().map_or(60_000, |range| *range.start());
    let slots = u64::from(top.saturating_sub(20_000 + 200) / 10).max(1);
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let base = 20_000 + (hasher.finish() % slots) as u16 * 10;
        let free = (1..=15).all(|offset| TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return base;
        }
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        }
        Err(_) => false,
    }
}

pub fn kill9(pid: u32) {
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// Polls `check` until it answers `Some`, for up to [`DEADLINE_MS`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DEADLINE_MS);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "waited {DEADLINE_MS} ms for {what}");
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

impl Harness {
    pub fn new() -> Harness {
        let root = tempfile::tempdir().expect("temp root");
        let scratch = tempfile::tempdir().expect("temp scratch");
        let agent_bin = scratch.path().join("fake-agent.sh");
        std::fs::write(&agent_bin, FAKE_AGENT).expect("write the fake agent");
        let mut permissions = std::fs::metadata(&agent_bin).expect("stat").permissions();
        permissions.set_mode(0o755);
        std::fs::set_permissions(&agent_bin, permissions).expect("chmod the fake agent");
        // reqwest takes the process's TLS cryptography: install it first.
        cairn_tls::install_default_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(DEADLINE_MS))
            .build()
            .expect("http client");
        Harness {
            root,
            scratch,
            agent_bin,
            base_port: free_base_port(),
            desired_file: None,
            http,
            cloud: None,
        }
    }

    /// Watches `<scratch>/desired_state.jsonc` from the next start.
    pub fn watch_desired_file(&mut self) -> PathBuf {
        let path = self.scratch.path().join("desired_state.jsonc");
        self.desired_file = Some(path.clone());
        path
    }

    pub fn config(&self) -> CloudConfig {
        let listen = "127.0.0.1:0".parse().expect("addr");
        let mut config = CloudConfig::new(self.root.path().into(), listen, self.agent_bin.clone());
        config.base_port = self.base_port;
        config.desired_file = self.desired_file.clone();
        config
    }

    pub async fn start(&mut self) {
        assert!(self.cloud.is_none(), "the cloud runs already");
        let cloud = Cloud::start(self.config()).await.expect("start the cloud");
        let addr = cloud.local_addr();
        let events = cloud.status_events();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(cloud.serve(async move {
            let _ = stopped.await;
        }));
        self.cloud = Some(Running { addr, events, stop: Some(stop), task });
    }

    /// Stops the cloud and waits for it to have stopped its agents.
    pub async fn stop(&mut self) {
        let mut running = self.cloud.take().expect("a running cloud");
        if let Some(stop) = running.stop.take() {
            let _ = stop.send(());
        }
        self.join(running).await;
    }

    /// Waits for a cloud that was told to stop some other way.
    pub async fn join_stopped(&mut self) {
        let running = self.cloud.take().expect("a running cloud");
        self.join(running).await;
    }

    async fn join(&self, running: Running) {
        let limit = Duration::from_millis(DEADLINE_MS * 2);
        let result =
            tokio::time::timeout(limit, running.task).await.expect("the cloud stops in time");
        result.expect("the serve task").expect("the cloud stops cleanly");
    }

    pub fn events(&mut self) -> &mut broadcast::Receiver<StatusEvent> {
        &mut self.cloud.as_mut().expect("a running cloud").events
    }

    /// Every event published so far, not yet taken.
    pub fn take_events(&mut self) -> Vec<StatusEvent> {
        let mut taken = Vec::new();
        while let Ok(event) = self.events().try_recv() {
            taken.push(event);
        }
        taken
    }

    pub fn url(&self, path: &str) -> String {
        let addr = self.cloud.as_ref().expect("a running cloud").addr;
        format!("http://{addr}{path}")
    }

    pub fn host_dir(&self, name: &str) -> PathBuf {
        self.root.path().join("hosts").join(name)
    }

    async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        let body = response.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// The cloud's admin token, which every call but the health check needs.
    pub fn token(&self) -> String {
        let path = self.root.path().join(cairn_cloud::TOKEN_FILE);
        cairn_util::secret::read(&path).expect("read the token").expect("the cloud made a token")
    }

    fn with_token(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        request.bearer_auth(self.token())
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        let request = self.with_token(self.http.get(self.url(path)));
        Self::answer(request.send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let request = self.with_token(self.http.post(self.url(path)).json(&body));
        Self::answer(request.send().await.expect("POST")).await
    }

    pub async fn put_text(&self, path: &str, text: String) -> (StatusCode, Value) {
        let request = self.with_token(self.http.put(self.url(path)).body(text));
        Self::answer(request.send().await.expect("PUT")).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        let request = self.with_token(self.http.delete(self.url(path)));
        Self::answer(request.send().await.expect("DELETE")).await
    }

    pub async fn create(&self, name: &str, zone: &str) -> (StatusCode, Value) {
        let body = serde_json::json!({"name": name, "zone": zone, "host_type": "small"});
        self.post("/v1/hosts", body).await
    }

    pub async fn hosts(&self) -> Vec<Value> {
        let (status, body) = self.get("/v1/hosts").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["hosts"].as_array().cloned().expect("a hosts array")
    }

    pub async fn host(&self, name: &str) -> Option<Value> {
        self.hosts().await.into_iter().find(|host| host["name"] == name)
    }

    /// Waits for `name` to run an agent other than `not_pid`; answers it.
    pub async fn running(&self, name: &str, not_pid: Option<u64>) -> Value {
        eventually(&format!("{name} to run an agent other than {not_pid:?}"), || async move {
            let host = self.host(name).await?;
            let pid = host["pid"].as_u64()?;
            (host["state"] == "running" && Some(pid) != not_pid && alive(pid as u32))
                .then_some(host)
        })
        .await
    }

    /// The stand-in agent's recorded command line, once it wrote it.
    pub async fn argv(&self, name: &str) -> Vec<String> {
        let path = &self.host_dir(name).join("argv");
        eventually(&format!("{} to be written", path.display()), || async move {
            let text = std::fs::read_to_string(path).ok()?;
            Some(text.lines().map(str::to_string).collect())
        })
        .await
    }

    /// The stand-in node's pid, once the agent wrote it.
    pub async fn node_pid(&self, name: &str) -> u32 {
        let path = &self.host_dir(name).join(cairn_cloud::NODE_PID_FILE);
        eventually(&format!("{} to be written", path.display()), || async move {
            std::fs::read_to_string(path).ok()?.trim().parse().ok()
        })
        .await
    }

    /// How many agents started for `name` so far (each appends its pid).
    pub fn agent_starts(&self, name: &str) -> usize {
        let path = self.host_dir(name).join("agent.pids");
        std::fs::read_to_string(path).map_or(0, |text| text.lines().count())
    }

    /// Waits until `count` agents started for `name` (an agent writes its
    /// pid a moment after it starts), and checks no more did.
    pub async fn agents_started(&self, name: &str, count: usize) {
        eventually(&format!("{count} agents of {name} to start"), || async move {
            (self.agent_starts(name) >= count).then_some(())
        })
        .await;
        assert_eq!(self.agent_starts(name), count, "agents started for {name}");
    }
}

/// Kills whatever the stand-ins started under `root`.
fn kill_leftovers(root: &Path) {
    let Ok(hosts) = std::fs::read_dir(root.join("hosts")) else { return };
    for dir in hosts.flatten() {
        for file in ["agent.pids", cairn_cloud::NODE_PID_FILE] {
            let Ok(text) = std::fs::read_to_string(dir.path().join(file)) else { continue };
            for pid in text.lines().filter_map(|line| line.trim().parse::<u32>().ok()) {
                if pid > 1 && alive(pid) {
                    kill9(pid);
                }
            }
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        kill_leftovers(self.root.path());
    }
}
