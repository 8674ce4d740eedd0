//! The control plane end to end: `cairn up` on loopback (the cloud with the
//! local provider, agents, nodes) under a concurrent writer, through
//! scale 1 → 3 → 5, a host that dies, a scale down to 3 whose leader agent
//! (and its node, the OmniPaxos leader) is killed mid-step, and a rolling
//! restart. Each desired state must be
//! reached (`AT_DESIRED_STATE`, with the asked members serving) and no
//! acknowledged write may be lost.
//!
//! Deadlines are generous (a shared, slow machine); durations are printed
//! (`--nocapture`), never asserted. `CAIRN_CONTROL_TEST_LOG=1` also prints
//! the cloud's log (every status transition) after the leader agent's death;
//! `CAIRN_CONTROL_TEST_KEEP=1` keeps every run's directory (hosts' logs), not
//! only a failed one's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{Client, Read};
use serde_json::Value;

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_cairn");
/// How long one desired state may take to be reached.
const REACH_TIMEOUT: Duration = Duration::from_secs(240);

/// `cairn up` in a temporary directory, stopped (SIGTERM) when dropped.
struct Up {
    dir: tempfile::TempDir,
    cloud: String,
    child: Option<Child>,
}

impl Up {
    fn start(desired: &str) -> Up {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("desired_state.jsonc"), desired).unwrap();
        let port = free_base_port();
        let cloud = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
        let child = Command::new(BIN)
            .current_dir(dir.path())
            .args(["up", "--listen", &cloud])
            // Every process inherits it: `CAIRN_LOG=info` in the test's
            // environment gives each host's logs their whole story.
            .env("CAIRN_LOG", std::env::var("CAIRN_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Up { dir, cloud, child: Some(child) }
    }

    /// Replaces the desired state file as editors do (write, then rename).
    fn edit(&self, desired: &str) {
        let tmp = self.dir.path().join("desired_state.jsonc.tmp");
        std::fs::write(&tmp, desired).unwrap();
        std::fs::rename(&tmp, self.dir.path().join("desired_state.jsonc")).unwrap();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cloud)
    }

    /// The cloud's admin token, once `cairn up` made it.
    fn token(&self) -> String {
        let path = self.dir.path().join(".cairn").join(cairn_cloud::TOKEN_FILE);
        std::fs::read_to_string(path).map(|t| t.trim().to_string()).unwrap_or_default()
    }

    /// The nodes' admin token, which `cairn up` made beside the cloud's.
    fn node_token(&self) -> String {
        let path = self.dir.path().join(".cairn").join(cairn_cloud::NODE_TOKEN_FILE);
        std::fs::read_to_string(path).map(|t| t.trim().to_string()).unwrap_or_default()
    }

    /// Trust in the cluster's CA, which `cairn up` made: the nodes serve
    /// HTTPS with its certificates.
    fn node_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        let ca = self.dir.path().join(".cairn/ca").join(cairn_tls::CA_CERT_FILE);
        cairn_tls::api_client(&ca).ok()
    }

    /// A client of the node at `api`, as the admin.
    fn node(&self, api: &str, timeout: Duration) -> Client {
        Client::with_tls(api, timeout, self.node_tls()).unwrap().with_token(Some(self.node_token()))
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let response = http().get(self.url(path)).bearer_auth(self.token()).send().await.ok()?;
        response.status().is_success().then_some(())?;
        response.json().await.ok()
    }

    async fn hosts(&self) -> Vec<Value> {
        self.get("/v1/hosts").await.and_then(|v| v["hosts"].as_array().cloned()).unwrap_or_default()
    }

    /// The API addresses of running hosts.
    async fn apis(&self) -> Vec<String> {
        let hosts = self.hosts().await;
        hosts
            .iter()
            .filter(|h| h["state"] == "running")
            .filter_map(|h| h["api_address"].as_str().map(String::from))
            .collect()
    }

    /// Waits until the leader reports desired state `id` reached and a node
    /// shows `replicas` members, all reachable; returns how long it took.
    async fn reached(&self, id: u64, replicas: usize) -> Duration {
        let started = Instant::now();
        loop {
            let status = self.get("/v1/status").await.unwrap_or(Value::Null);
            let last = &status["last"];
            if last["state"] == "AT_DESIRED_STATE" && last["desired_id"] == id {
                if let Some(nodes) = self.members(replicas).await {
                    if nodes == replicas {
                        return started.elapsed();
                    }
                }
            }
            assert!(
                started.elapsed() < REACH_TIMEOUT,
                "desired state {id} not reached: {last}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the leader reports desired state `id` in
    /// `ERROR_STATE`; answers that report.
    async fn error_state(&self, id: u64) -> Value {
        let started = Instant::now();
        loop {
            let last = self.get("/v1/status").await.unwrap_or(Value::Null)["last"].clone();
            if last["desired_id"] == id && last["state"] == "ERROR_STATE" {
                return last;
            }
            assert!(
                started.elapsed() < REACH_TIMEOUT,
                "no ERROR_STATE: {last}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reads every acknowledged key back, linearizably: none may be lost.
    async fn read_back(&self, acked: &[String]) {
        let apis = self.apis().await;
        let client = self.node(&apis[0], Duration::from_secs(30));
        for key in acked {
            let got = client.kv_get(key, Read::Linearizable).await.unwrap();
            assert_eq!(got.as_deref(), Some(key.as_bytes()), "acknowledged write {key} lost");
        }
    }

    /// The number of members a node shows, when every one is reachable.
    async fn members(&self, _replicas: usize) -> Option<usize> {
        for api in self.apis().await {
            let Ok(cluster) = self.node(&api, Duration::from_secs(5)).cluster().await else {
                continue;
            };
            if cluster.nodes.iter().all(|n| n.reachable) {
                return Some(cluster.nodes.len());
            }
            return None;
        }
        None
    }

    /// The end of the cloud's log and of every host's agent and node logs:
    /// what a failure needs to be understood where the run is gone.
    fn log_tail(&self) -> String {
        let tail = |path: &Path, n: usize| {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        let mut out = tail(&self.dir.path().join("up.log"), 30);
        let hosts = self.dir.path().join(".cairn/hosts");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&hosts)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        dirs.sort();
        for dir in dirs {
            for log in ["agent.log", "node.log"] {
                out.push_str(&format!("\n--- {} {log}\n", dir.display()));
                out.push_str(&tail(&dir.join(log), 12));
            }
        }
        out
    }

    /// Runs a `cairn` command against this cluster's cloud, in its
    /// directory (where the cloud's token is); answers what it printed, and
    /// fails the test if it failed.
    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .current_dir(self.dir.path())
            .args(args)
            .args(["--cloud", &self.cloud])
            .output()
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "cairn {args:?} failed: {stdout}{stderr}");
        stdout.into_owned()
    }

    /// What `cairn status` shows now.
    fn status(&self) -> String {
        let out = Command::new(BIN)
            .current_dir(self.dir.path())
            .args(["status", "--cloud", &self.cloud])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn host_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(".cairn/hosts").join(name)
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CAIRN_CONTROL_TEST_KEEP").is_some() {
            // Keep the hosts' logs (agent.log, node.log) of a failed run, or
            // of every run when asked to.
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("the run's directory is kept: {}", kept.display());
        }
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn http() -> reqwest::Client {
    // reqwest takes the process's TLS cryptography: install it first.
    cairn_tls::install_default_provider();
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

/// A base port whose next 100 ports are free, below the ephemeral range
/// (hosts take base+1…).
fn free_base_port() -> u16 {
    common::free_ports(100)
}

fn desired(id: u64, replicas: u32, restart_generation: u64) -> String {
    desired_running(id, replicas, restart_generation, true)
}

fn desired_running(id: u64, replicas: u32, restart_generation: u64, running: bool) -> String {
    format!(
        r#"{{
  // written by the control process test
  "id": {id},
  "running": {running},
  "replicas": {replicas},
  "zones": ["zone-a", "zone-b", "zone-c"],
  "restart_generation": {restart_generation},
}}"#
    )
}

fn unix_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_millis() as u64)
}

fn node_pid(dir: &Path) -> Option<u32> {
    cairn_util::process::read_pid_file(&dir.join(cairn_util::process::NODE_PID_FILE))
}

/// Writes keys until stopped, as an application would: one client over
/// every node (it sends a request its node cannot answer to another), each
/// write with a write id of one session (so a retried write applies once).
/// A write that fails all the same is recorded, and the writer starts over
/// with a fresh list of nodes and a new session.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    failed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(up: &Up) -> Writer {
        let (cloud, token, node_token) = (up.cloud.clone(), up.token(), up.node_token());
        let tls = up.node_tls();
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, a, f) = (stop.clone(), acked.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            let mut session: Option<(Client, String, u64)> = None;
            while !s.load(Ordering::Relaxed) {
                let Some((client, id, seq)) = &mut session else {
                    let apis = live_apis(&cloud, &token).await;
                    let Some(first) = apis.first() else {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    };
                    let client = Client::with_tls(first, Duration::from_secs(10), tls.clone())
                        .unwrap()
                        .with_token(Some(node_token.clone()))
                        .with_endpoints(&apis)
                        .unwrap();
                    match client.open_session().await {
                        Ok(id) => session = Some((client, id, 0)),
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                    continue;
                };
                *seq += 1;
                let key = format!("w{i}");
                i += 1;
                match client.with_write_id(id, *seq).kv_put(&key, key.clone()).await {
                    Ok(_) => a.lock().unwrap().push(key),
                    Err(e) => {
                        f.lock().unwrap().push(format!("{key}: {e}"));
                        session = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        Writer { stop, acked, failed, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// The writes that failed so far, with why.
    fn failures(&self) -> Vec<String> {
        self.failed.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

/// Reads, linearizably, the last key the writer acknowledged before each
/// read began, through one client over every node, until stopped. A read
/// that fails, or misses that write, is recorded.
struct Reader {
    stop: Arc<AtomicBool>,
    reads: Arc<std::sync::atomic::AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(up: &Up, writer: &Writer) -> Reader {
        let (cloud, token, node_token) = (up.cloud.clone(), up.token(), up.node_token());
        let tls = up.node_tls();
        let acked = writer.acked.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, r, f) = (stop.clone(), reads.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let apis = live_apis(&cloud, &token).await;
            let client = Client::with_tls(&apis[0], Duration::from_secs(10), tls)
                .unwrap()
                .with_token(Some(node_token))
                .with_endpoints(&apis)
                .unwrap();
            while !s.load(Ordering::Relaxed) {
                let Some(key) = acked.lock().unwrap().last().cloned() else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                match client.kv_get(&key, Read::Linearizable).await {
                    Ok(Some(value)) if value == key.as_bytes() => {}
                    Ok(other) => f.lock().unwrap().push(format!("{key}: read {other:?}")),
                    Err(e) => f.lock().unwrap().push(format!("{key}: {e}")),
                }
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        Reader { stop, reads, failed, task }
    }

    /// How many reads were made, and the ones that failed.
    async fn stop(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failed = self.failed.lock().unwrap().clone();
        (self.reads.load(Ordering::Relaxed), failed)
    }
}

async fn live_apis(cloud: &str, token: &str) -> Vec<String> {
    let hosts = http().get(format!("http://{cloud}/v1/hosts")).bearer_auth(token);
    let Ok(response) = hosts.send().await else {
        return Vec::new();
    };
    let hosts: Value = response.json().await.unwrap_or(Value::Null);
    hosts["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["state"] == "running")
        .filter_map(|h| h["api_address"].as_str().map(String::from))
        .collect()
}

async fn writes_go_on(writer: &Writer, more: usize) {
    let target = writer.count() + more;
    let started = Instant::now();
    while writer.count() < target {
        assert!(started.elapsed() < REACH_TIMEOUT, "writes stalled at {}", writer.count());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bad input is refused before anything runs, naming the field.
#[test]
fn up_and_apply_refuse_a_bad_desired_state() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.jsonc");
    std::fs::write(&file, r#"{ "id": 1, "replicas": 4 }"#).unwrap();
    let apply = ["apply", "--cloud", "127.0.0.1:9", "-f"];
    for args in [&apply[..], &["up", "-f"][..]] {
        let out = Command::new(BIN).current_dir(dir.path()).args(args).arg(&file).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted a bad state");
        assert!(stderr.contains("replicas"), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join(".cairn").exists(), "nothing was created");
}

/// Scale 1 → 3 → 5, lose a host, 5 → 3 with the leader agent killed
/// mid-step, rolling restart: every state reached, no acknowledged write
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_up_reaches_every_desired_state_under_load() {
    let up = Up::start(&desired(1, 1, 0));
    let mut timings = Vec::new();
    timings.push(("bootstrap, 1 replica", up.reached(1, 1).await));
    eprintln!("after bootstrap:\n{}", up.status());
    // Secure by default: a node of `cairn up` speaks HTTPS only, lets no
    // one in without a token, and the CLI run in the cluster's directory
    // finds the CA and the admin's token.
    let api = up.apis().await.remove(0);
    let plain = http().get(format!("http://{api}/v1/health")).send().await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let stranger = Client::with_tls(&api, Duration::from_secs(10), up.node_tls()).unwrap();
    assert!(stranger.health().await.is_ok(), "health is open, over HTTPS");
    let refused = stranger.list_tables().await.unwrap_err();
    assert_eq!(refused.status(), Some(401), "{refused}");
    let put = Command::new(BIN)
        .current_dir(up.dir.path())
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_TOKEN_FILE")
        .args(["--addr", &api, "put", "from-the-cli", "1"])
        .output()
        .unwrap();
    assert!(put.status.success(), "{}", String::from_utf8_lossy(&put.stderr));
    let writer = Writer::start(&up);
    writes_go_on(&writer, 50).await;

    up.edit(&desired(2, 3, 0));
    timings.push(("scale 1 -> 3", up.reached(2, 3).await));
    writes_go_on(&writer, 50).await;
    up.edit(&desired(3, 5, 0));
    timings.push(("scale 3 -> 5", up.reached(3, 5).await));
    eprintln!("at 5 replicas:\n{}", up.status());
    writes_go_on(&writer, 50).await;

    // A host dies (not the leader's): the cluster replaces it on its own.
    let leader = up.get("/v1/status").await.unwrap()["last"]["leader_host"].clone();
    let victim = up
        .hosts()
        .await
        .into_iter()
        .find(|h| h["name"] != leader && h["state"] == "running")
        .and_then(|h| h["name"].as_str().map(String::from))
        .unwrap();
    let failed = http()
        .post(up.url(&format!("/v1/hosts/{victim}/fail")))
        .bearer_auth(up.token())
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert!(failed.status().is_success());
    let started = Instant::now();
    loop {
        let gone = !up.hosts().await.iter().any(|h| h["name"] == victim.as_str());
        if gone && up.members(5).await == Some(5) {
            let last = up.get("/v1/status").await.unwrap()["last"].clone();
            if last["state"] == "AT_DESIRED_STATE" {
                break;
            }
        }
        assert!(started.elapsed() < REACH_TIMEOUT, "{victim} never replaced\n{}", up.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    timings.push(("replace a dead host", started.elapsed()));
    eprintln!("after {victim} died and was replaced:\n{}", up.status());
    writes_go_on(&writer, 50).await;

    // Scale down, and kill the leader agent while it works.
    up.edit(&desired(4, 3, 0));
    let started = Instant::now();
    let leader_host = loop {
        let last = up.get("/v1/status").await.unwrap_or(Value::Null)["last"].clone();
        if last["desired_id"] == 4 && last["state"] == "WORKING_TOWARDS_DESIRED_STATE" {
            break last["leader_host"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < REACH_TIMEOUT, "desired state 4 never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let agent_pid = up
        .hosts()
        .await
        .into_iter()
        .find(|h| h["name"] == leader_host.as_str())
        .and_then(|h| h["pid"].as_u64())
        .unwrap();
    // The agent and its node both die (the node is the OmniPaxos leader):
    // another host's agent must take over and finish. The cloud restarts
    // the agent, which restarts its node.
    let leader_node_pid = node_pid(&up.host_dir(&leader_host)).unwrap();
    let killed_at_ms = unix_ms();
    let _ = Command::new("kill").args(["-KILL", &agent_pid.to_string()]).status();
    let _ = Command::new("kill").args(["-KILL", &leader_node_pid.to_string()]).status();
    eprintln!("killed the leader agent on {leader_host} and its node mid-step");
    up.reached(4, 3).await;
    // Another agent led desired state 4 after the kill: the cloud's
    // transitions (a leader change is one) name it.
    let status = up.get("/v1/status").await.unwrap();
    let leaders_after: Vec<String> = status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["at_ms"].as_u64() >= Some(killed_at_ms) && t["report"]["desired_id"] == 4)
        .filter_map(|t| t["report"]["leader_host"].as_str().map(str::to_string))
        .collect();
    assert!(
        leaders_after.iter().any(|host| *host != leader_host),
        "no other agent led desired state 4 after the one on {leader_host} died: {leaders_after:?}"
    );
    eprintln!("desired state 4 went on under {leaders_after:?}");
    if std::env::var("CAIRN_CONTROL_TEST_LOG").is_ok() {
        eprintln!("{}", up.log_tail());
    }
    timings.push(("scale 5 -> 3, leader agent killed", started.elapsed()));
    writes_go_on(&writer, 50).await;

    // Rolling restart: every node restarts (a new process), one at a time.
    let before: Vec<(String, Option<u32>)> = up
        .hosts()
        .await
        .iter()
        .filter_map(|h| h["name"].as_str().map(String::from))
        .map(|name| (name.clone(), node_pid(&up.host_dir(&name))))
        .collect();
    up.edit(&desired(5, 3, 5));
    timings.push(("rolling restart", up.reached(5, 3).await));
    for (name, pid) in &before {
        let now = node_pid(&up.host_dir(name));
        assert_ne!(now, *pid, "the node on {name} was not restarted");
    }
    eprintln!("after the rolling restart:\n{}", up.status());
    writes_go_on(&writer, 50).await;
    // A member may stop serving for a moment (a follower catching up from
    // the new leader after the restarts): the state goes back to work and
    // returns, so the JSON is read until it shows the state reached.
    let started = Instant::now();
    let json = loop {
        let out = Command::new(BIN)
            .current_dir(up.dir.path())
            .args(["status", "--cloud", &up.cloud, "--output", "json"])
            .output()
            .unwrap();
        let json: Value = serde_json::from_slice(&out.stdout).unwrap();
        if json["reconciliation"]["state"] == "AT_DESIRED_STATE"
            || started.elapsed() > REACH_TIMEOUT
        {
            break json;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(json["reconciliation"]["state"], "AT_DESIRED_STATE", "{json}");
    assert_eq!(json["reconciliation"]["desired_id"], 5, "{json}");
    assert_eq!(json["hosts"].as_array().map(Vec::len), Some(3), "{json}");
    assert_eq!(json["nodes"].as_array().map(Vec::len), Some(3), "{json}");

    // Hosts and a leader were killed under the writer: a write in flight
    // on a killed node may fail; the count says how many did.
    eprintln!("writes failed: {}", writer.failures().len());
    let acked = writer.stop().await;
    // Stop every node (data kept), then run them again.
    up.edit(&desired_running(6, 3, 5, false));
    let started = Instant::now();
    while !up.apis().await.is_empty() && up.members(3).await.is_some() {
        assert!(started.elapsed() < REACH_TIMEOUT, "the nodes never stopped\n{}", up.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        let hosts = up.hosts().await;
        let running = hosts
            .iter()
            .filter(|h| h["name"].as_str().and_then(|n| node_pid(&up.host_dir(n))).is_some());
        if running.count() == 0 {
            break;
        }
        assert!(started.elapsed() < REACH_TIMEOUT, "a node still runs\n{}", up.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    timings.push(("running: false", started.elapsed()));
    up.edit(&desired_running(7, 3, 5, true));
    timings.push(("running: true again", up.reached(7, 3).await));
    up.read_back(&acked).await;
    for (what, took) in &timings {
        eprintln!("{what}: {took:.1?}");
    }
    eprintln!("{} acknowledged writes, all read back", acked.len());
    idle_log_stays_idle(&up).await;
}

/// With no client, a cluster at its desired state appends nothing to its
/// log: the leader agent's turns read the control state without a log entry
/// when they have nothing to do. The decided index must hold still for 5 s.
async fn idle_log_stays_idle(up: &Up) {
    let api = up.apis().await.remove(0);
    let node = Client::with_tls(&api, Duration::from_secs(10), up.node_tls())
        .unwrap()
        .with_token(Some(up.node_token()));
    let started = Instant::now();
    let mut still = (None, Instant::now());
    loop {
        let view = node.cluster().await;
        let decided = view.ok().and_then(|v| v.nodes.iter().filter_map(|n| n.decided_index).max());
        if decided.is_none() || decided != still.0 {
            still = (decided, Instant::now());
        } else if still.1.elapsed() >= Duration::from_secs(5) {
            eprintln!("idle: the log held still at {decided:?} for 5 s");
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "an idle cluster's log kept growing (now at {decided:?})\n{}",
            up.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn desired_backups(id: u64, backups: &str, schedule: &str) -> String {
    format!(
        r#"{{
  // written by the control process test
  "id": {id},
  "replicas": 3,
  "zones": ["zone-a", "zone-b", "zone-c"],
  "max_attempts": 2,
  "backups": [{backups}],
  {schedule}
}}"#
    )
}

/// Backups follow the desired state: an entry added is taken on a follower
/// into its sink under the cluster's backup root, a schedule takes one at
/// once and keeps `keep`, an entry removed is deleted, a sink that cannot
/// be written puts reconciliation in ERROR_STATE naming it, and a sink that
/// is a path is refused before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_follow_the_desired_state() {
    let schedule = r#""backup_schedule": { "every": "1h", "keep": 1, "sink": "nightly" },"#;
    let up = Up::start(&desired_backups(1, r#"{ "name": "b1", "sink": "manual" }"#, schedule));
    let took = up.reached(1, 3).await;
    eprintln!("3 replicas and two backups: {took:.1?}");
    let root = up.dir.path().join(".cairn").join(cairn_cloud::BACKUPS_DIR);
    assert!(root.join("manual/b1/manifest.json").is_file(), "b1 is in its sink");
    let slot = unix_ms() / 3_600_000 * 3_600_000;
    let scheduled = cairn_control::planner::scheduled_name(slot);
    let hourly = root.join("nightly").join(&scheduled).join("manifest.json");
    // The slot may have turned since the state was reached: then the next
    // one is taken soon after.
    let started = Instant::now();
    while !hourly.is_file() {
        assert!(started.elapsed() < REACH_TIMEOUT, "{scheduled} never taken\n{}", up.log_tail());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Taken on a follower: the step named a host other than the leader's.
    let status = up.get("/v1/status").await.unwrap();
    let history = status["history"].as_array().cloned().unwrap_or_default();
    let taken_on: Vec<(String, String)> = history
        .iter()
        .filter_map(|t| {
            let step = t["report"]["step"].as_str()?;
            let host = step.strip_prefix("take backup manual/b1 on ")?;
            Some((host.to_string(), t["report"]["leader_host"].as_str()?.to_string()))
        })
        .collect();
    assert!(!taken_on.is_empty(), "no step took b1: {history:?}");
    for (host, leader) in &taken_on {
        assert_ne!(host, leader, "b1 was taken on the leader's host");
    }
    // The cluster's view lists both, taken.
    let last = &status["last"];
    let listed: Vec<String> = last["backups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["taken"] == true)
        .filter_map(|b| Some(format!("{}/{}", b["sink"].as_str()?, b["name"].as_str()?)))
        .collect();
    assert!(listed.contains(&"manual/b1".to_string()), "{last}");
    assert!(up.status().contains("manual/b1"), "{}", up.status());

    // Removed from the desired state: deleted, its files with it.
    up.edit(&desired_backups(2, "", schedule));
    up.reached(2, 3).await;
    assert!(!root.join("manual/b1").exists(), "b1 is deleted");
    let left: Vec<_> = std::fs::read_dir(root.join("manual/files")).unwrap().flatten().collect();
    assert!(left.is_empty(), "b1's files are deleted: {left:?}");
    assert!(hourly.is_file() || root.join("nightly").read_dir().unwrap().count() > 1);

    // A sink that cannot be written (a file where its directory should be):
    // the step fails, and after max_attempts the state says why.
    std::fs::write(root.join("broken"), "not a directory").unwrap();
    up.edit(&desired_backups(3, r#"{ "name": "b2", "sink": "broken" }"#, schedule));
    let last = up.error_state(3).await;
    let message = last["message"].as_str().unwrap_or_default();
    assert!(message.contains("broken") && message.contains("b2"), "{last}");
    eprintln!("a sink that cannot be written: {message}");

    // A sink that is a path is refused by `cairn apply`, naming the field.
    let bad = up.dir.path().join("bad.jsonc");
    std::fs::write(&bad, desired_backups(4, r#"{ "name": "b3", "sink": "../../etc" }"#, ""))
        .unwrap();
    let out = Command::new(BIN)
        .current_dir(up.dir.path())
        .args(["apply", "--cloud", &up.cloud, "-f"])
        .arg(&bad)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("backups[0].sink"), "{said}");
}

fn desired_version(id: u64, version: &str, artifacts: Option<&Path>) -> String {
    let artifacts =
        artifacts.map_or("null".to_string(), |a| format!("{:?}", a.display().to_string()));
    format!(
        r#"{{
  // written by the control process test
  "id": {id},
  "version": "{version}",
  "artifacts": {artifacts},
  "replicas": 3,
  "zones": ["zone-a", "zone-b", "zone-c"],
}}"#
    )
}

/// The version every node reports of itself once all of them do alike.
async fn cluster_version(up: &Up) -> Option<String> {
    let apis = up.apis().await;
    let cluster = up.node(apis.first()?, Duration::from_secs(5)).cluster().await.ok()?;
    let versions: Vec<Option<String>> = cluster.nodes.iter().map(|n| n.version.clone()).collect();
    let first = versions.first()?.clone()?;
    (cluster.nodes.len() == 3 && versions.iter().all(|v| v.as_deref() == Some(first.as_str())))
        .then_some(first)
}

async fn wait_version(up: &Up, version: &str) {
    let started = Instant::now();
    while cluster_version(up).await.as_deref() != Some(version) {
        assert!(
            started.elapsed() < REACH_TIMEOUT,
            "the nodes do not all run {version}\n{}",
            up.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A rolling upgrade to a second version, and a downgrade back, under a
/// writer. The second version is this build restamped (a distinct binary
/// that reports another version), packed with its own `cairn release` into
/// the directory the cloud serves; the agents download it over HTTP, check
/// its sum, and move one node at a time. The downgrade needs no artifacts (the agents'
/// own version), and every host keeps the version it left. A linearizable
/// reader runs beside the writer: no request fails and no acknowledged
/// write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_and_downgrade_keep_every_write() {
    let ours = cairn_util::version().to_string();
    let next = format!("{ours}-next");
    let work = tempfile::tempdir().unwrap();
    let next_bin = work.path().join("cairn");
    let mut bytes = std::fs::read(BIN).unwrap();
    cairn_util::version::restamp(&mut bytes, &next).unwrap();
    std::fs::write(&next_bin, bytes).unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&next_bin, executable).unwrap();
    let says = Command::new(&next_bin).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&says.stdout).trim(), format!("cairn {next}"));
    let up = Up::start(&desired_version(1, &ours, None));
    // The release goes where the cloud serves it over HTTP, as a web server
    // of releases would: agents download it from there.
    let artifacts = up.dir.path().join(".cairn").join(cairn_cloud::ARTIFACTS_DIR);
    let packed =
        Command::new(&next_bin).arg("release").arg("--out").arg(&artifacts).output().unwrap();
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let mut timings = vec![("3 replicas", up.reached(1, 3).await)];
    let writer = Writer::start(&up);
    writes_go_on(&writer, 30).await;
    let reader = Reader::start(&up, &writer);

    // An artifact whose sum does not match is refused, naming the file:
    // the state ends in ERROR_STATE and no node moved.
    let tampered = work.path().join("tampered");
    std::fs::create_dir_all(&tampered).unwrap();
    let name = format!("cairn-{next}-{}.tar.gz", cairn_release::TARGET);
    std::fs::copy(artifacts.join(&name), tampered.join(&name)).unwrap();
    let wrong = format!("{}  {name}\n", "0".repeat(64));
    std::fs::write(tampered.join("SHA256SUMS"), wrong).unwrap();
    let mut refused = desired_version(2, &next, Some(&tampered));
    refused = refused.replace("\"replicas\"", "\"max_attempts\": 1,\n  \"replicas\"");
    up.edit(&refused);
    let last = up.error_state(2).await;
    let message = last["message"].as_str().unwrap_or_default();
    assert!(message.contains(&name) && message.contains("refused"), "{last}");
    let named = format!("{}/SHA256SUMS lists", tampered.display());
    assert!(message.contains(&named), "names the sums the state named: {last}");
    assert_eq!(cluster_version(&up).await.as_deref(), Some(ours.as_str()));
    eprintln!("a tampered artifact: {message}");

    // Only plain names of the artifacts directory are served, to anyone.
    for (path, status) in [
        ("/artifacts/SHA256SUMS", 200),
        ("/artifacts/cloud.token", 404),
        ("/artifacts/..%2Fcloud.token", 404),
        ("/artifacts/.hidden", 404),
    ] {
        let answer = http().get(up.url(path)).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), status, "{path}");
    }
    let url = up.url("/artifacts");
    up.edit(
        &desired_version(3, &next, None)
            .replace("\"artifacts\": null", &format!("\"artifacts\": {url:?}")),
    );
    timings.push(("upgrade", up.reached(3, 3).await));
    wait_version(&up, &next).await;
    writes_go_on(&writer, 30).await;

    // Back, with no artifacts: the agents' own version needs none.
    up.edit(&desired_version(4, &ours, None));
    timings.push(("downgrade", up.reached(4, 3).await));
    wait_version(&up, &ours).await;
    writes_go_on(&writer, 30).await;
    for host in up.hosts().await {
        let name = host["name"].as_str().unwrap();
        let kept = up.host_dir(name).join("versions").join(&next).join("cairn");
        assert!(kept.is_file(), "{name} no longer holds {next}");
    }

    // Every node restarted twice under the writer and the reader, and not
    // one request failed.
    let failures = writer.failures();
    assert!(failures.is_empty(), "writes failed during the upgrade: {failures:?}");
    let (reads, failures) = reader.stop().await;
    assert!(failures.is_empty(), "reads failed during the upgrade: {failures:?}");
    eprintln!("{reads} linearizable reads, none failed or stale");
    let acked = writer.stop().await;
    up.read_back(&acked).await;
    for (what, took) in &timings {
        eprintln!("{what}: {took:.1?}");
    }
    eprintln!("{} acknowledged writes, all read back, none failed", acked.len());
}

fn desired_restore(id: u64, from: &Path) -> String {
    format!(
        r#"{{
  // written by the control process test
  "id": {id},
  "replicas": 3,
  "zones": ["zone-a", "zone-b", "zone-c"],
  "max_attempts": 1,
  "restore_from": {:?},
}}"#,
        from.display().to_string()
    )
}

/// A new cluster from a backup: `restore_from` in its first desired state.
/// A backup with one flipped byte is refused, naming the file, and no node
/// starts from it; the good backup starts node 1, the cluster grows to 3,
/// and every write acknowledged before the backup reads back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_restores_from_a_backup() {
    let old = Up::start(&desired_backups(1, "", ""));
    old.reached(1, 3).await;
    let apis = old.apis().await;
    let client = old.node(&apis[0], Duration::from_secs(30));
    let keys: Vec<String> = (0..200).map(|i| format!("before-{i}")).collect();
    for key in &keys {
        client.kv_put(key, key.clone()).await.unwrap();
    }
    // Taken through the cloud: the CLI adds it to the desired state's
    // backups and waits for the control plane to take it.
    let said = old.cli(&["backup", "create", "b1", "--sink", "manual", "--via-cloud"]);
    assert!(
        said.contains("backup manual/b1 taken by the control plane (desired state 2)"),
        "{said}"
    );
    old.reached(2, 3).await;
    let root = old.dir.path().join(".cairn").join(cairn_cloud::BACKUPS_DIR);
    let backup = root.join("manual").join("b1");
    assert!(backup.join("manifest.json").is_file(), "b1 was taken");
    let listed = old.cli(&["backup", "list", "--via-cloud"]);
    assert!(listed.contains("manual/b1  on demand  taken"), "{listed}");
    let again = old.cli(&["backup", "create", "b1", "--sink", "manual", "--via-cloud"]);
    assert!(again.contains("already lists backup manual/b1: nothing to submit"), "{again}");

    // A copy of the sink with one byte of one file flipped.
    let work = tempfile::tempdir().unwrap();
    let copy = work.path().join("manual");
    let status = Command::new("cp").arg("-r").arg(root.join("manual")).arg(&copy).status();
    assert!(status.unwrap().success());
    let file = std::fs::read_dir(copy.join("files")).unwrap().flatten().next().unwrap().path();
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let new = Up::start(&desired_restore(1, &copy.join("b1")));
    let last = new.error_state(1).await;
    let message = last["message"].as_str().unwrap_or_default();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(message.contains(&name), "the flipped file is named: {last}");
    eprintln!("a corrupt backup: {message}");
    for host in new.hosts().await {
        let name = host["name"].as_str().unwrap();
        assert!(node_pid(&new.host_dir(name)).is_none(), "a node runs on {name}");
    }

    new.edit(&desired_restore(2, &backup));
    let took = new.reached(2, 3).await;
    eprintln!("restored into a new 3-node cluster: {took:.1?}");
    new.read_back(&keys).await;

    // Deleted through the cloud too.
    let said = old.cli(&["backup", "delete", "b1", "--sink", "manual", "--via-cloud"]);
    assert!(
        said.contains("backup manual/b1 deleted by the control plane (desired state 3)"),
        "{said}"
    );
    assert!(!backup.exists(), "b1 was deleted");
}
