//! Tier 5: a cluster in containers under faults, with every client history
//! checked for linearizability.
//!
//! Runs the repository's `compose.yaml` (the container quickstart) with an
//! image of this build's `cairn` (made by `scripts/image`), as its own
//! compose project on a free /24 and free published ports. It first checks
//! the quickstart itself: three nodes serve, each listed at its published
//! port, and the CLI inside a container prints console login links. Then six
//! clients put, read and delete a few keys
//! through the published HTTPS ports while the test kills, pauses and cuts
//! off containers: `docker kill` and start of the leader, `docker pause` and
//! unpause of a follower and of the leader, and `docker network disconnect`
//! and connect of a follower and of the leader, and a chained cut: the link
//! between the leader and one follower dropped with iptables inside both
//! containers' network namespaces (through `nsenter`), so that the follower
//! reaches only the other follower. The history (a write that
//! failed counts as unknown: it may have applied) goes to the simulator's
//! checker, which must find it linearizable. For each fault the test prints
//! the longest time without an acknowledged write.
//!
//! A second test runs five nodes (with `docker run`, peers and clients in
//! plain TCP) through the partial-connectivity scenarios of the Omni-Paxos
//! paper, each made with iptables rules inside the containers' network
//! namespaces: quorum-loss (every link cut but one follower's, so that the
//! leader reaches only that follower, as does everyone else), constrained
//! election (a follower cut off until its log lags; then the leader cut off
//! from all, the other followers from each other, and the laggard's links
//! back: the only node that reaches a majority has the shortest log),
//! chained (one link, the leader's to a follower, cut), and the leader cut
//! off from all. Each lasts twice `CAIRN_CONTAINER_FAULT_MS`. Under each
//! the cluster must acknowledge writes sent after the fault began, before it
//! ends; the history must be linearizable. It prints the longest time
//! without an acknowledged write under each.
//! (`bench/partial-connectivity` runs the same scenarios against etcd too.)
//!
//! Needs a running Docker Engine, `docker-compose` (or `docker compose`;
//! `scripts/setup --tests` installs it), and `nsenter` and `iptables` run
//! as root. Each fault lasts
//! `CAIRN_CONTAINER_FAULT_MS` (default 3000).
//!
//! Run it: `cargo test --workspace --locked --features cairn/etcd --test containers -- --nocapture`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{Client, Read};
use cairn_sim::linearizability::{self, Completion, Entry, Op, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");
/// Anything the cluster does within this, on a slow shared machine.
const DEADLINE: Duration = Duration::from_secs(120);
const CLIENTS: u64 = 6;
const KEYS: usize = 4;
/// A request's deadline: one that meets a paused node gives up, unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const IMAGE: &str = "cairn:containers-test";
/// The tests of this file run one at a time: each makes a network on a free
/// /24, and two clusters at once would slow each other's faults.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The image of this build, made once.
fn image() {
    static MADE: std::sync::Once = std::sync::Once::new();
    MADE.call_once(|| {
        run(
            &repo().join("scripts/image").display().to_string(),
            &["--binary", BIN, "--tag", IMAGE],
        );
    });
}

/// How long each fault lasts (`CAIRN_CONTAINER_FAULT_MS`, default 3000).
fn fault_duration() -> Duration {
    Duration::from_millis(
        std::env::var("CAIRN_CONTAINER_FAULT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
    )
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `program` with `args`; its standard output, or a panic naming it.
fn run(program: &str, args: &[&str]) -> String {
    output_of(Command::new(program).args(args))
}

/// Runs `command`; its standard output, or a panic naming it.
fn output_of(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `client`'s node (`node`, for the message) answers a
/// linearizable read.
async fn wait_serving(client: &Client, node: u64) {
    let started = Instant::now();
    while client.kv_get("k0", Read::Linearizable).await.is_err() {
        assert!(started.elapsed() < DEADLINE, "node {node} does not serve again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Adds (`-A`) or deletes (`-D`) a rule in the network namespace of the
/// process `pid` (a container's) that drops what comes from `source`.
fn drop_rule(pid: &str, action: &str, source: &str) {
    run("nsenter", &["-t", pid, "-n", "iptables", action, "INPUT", "-s", source, "-j", "DROP"]);
}

/// `docker-compose`, or the `docker compose` plugin.
fn compose_program() -> Vec<String> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program).args(args).output().is_ok_and(|out| out.status.success())
    };
    if works("docker-compose", &["version"]) {
        vec!["docker-compose".into()]
    } else if works("docker", &["compose", "version"]) {
        vec!["docker".into(), "compose".into()]
    } else {
        panic!("neither docker-compose nor `docker compose` works (scripts/setup --tests)")
    }
}

/// A /24 prefix (`10.89.X`) that no Docker network uses.
fn free_subnet() -> String {
    let ids = run("docker", &["network", "ls", "-q"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    let mut used = String::new();
    if !ids.is_empty() {
        let mut args =
            vec!["network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}} {{end}}"];
        args.extend(ids);
        used = run("docker", &args);
    }
    let start = std::process::id() as usize % 100;
    (0..100)
        .map(|i| format!("10.89.{}", 100 + (start + i) % 100))
        .find(|prefix| !used.contains(&format!("{prefix}.0/")))
        .expect("a free /24 under 10.89")
}

/// The compose project: brought up by `up`, taken down with its volumes on
/// drop.
struct Project {
    compose: Vec<String>,
    name: String,
    env: Vec<(String, String)>,
    ports: [u16; 3],
    net: String,
    dir: tempfile::TempDir,
}

impl Project {
    fn up() -> Project {
        image();
        let dir = tempfile::tempdir().unwrap();
        let net = free_subnet();
        let ports = [free_port(), free_port(), free_port()];
        let mut env = vec![
            ("CAIRN_IMAGE".to_string(), IMAGE.to_string()),
            ("CAIRN_COMPOSE_DIR".to_string(), dir.path().join("state").display().to_string()),
            ("CAIRN_COMPOSE_NET".to_string(), net.clone()),
        ];
        for (i, port) in ports.iter().enumerate() {
            env.push((format!("CAIRN_COMPOSE_PORT_{}", i + 1), port.to_string()));
        }
        let project = Project {
            compose: compose_program(),
            name: format!("cairn-containers-test-{}", std::process::id()),
            env,
            ports,
            net,
            dir,
        };
        project.compose(&["up", "-d"]);
        project
    }

    /// The compose command for this project, with `args`.
    fn compose_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.compose[0]);
        command.args(&self.compose[1..]).arg("-f").arg(repo().join("compose.yaml"));
        command.args(["-p", &self.name]).args(args);
        command.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        command
    }

    /// Runs compose with `args`; its standard output, or a panic.
    fn compose(&self, args: &[&str]) -> String {
        output_of(&mut self.compose_command(args))
    }

    fn container(&self, node: u64) -> String {
        self.compose(&["ps", "-q", &format!("node{node}")]).trim().to_string()
    }

    fn docker(&self, args: &[&str]) {
        run("docker", args);
    }

    /// The compose network's name and node's address on it.
    fn network(&self) -> String {
        let prefix: String =
            self.name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        format!("{prefix}_cairn")
    }

    fn ip(&self, node: u64) -> String {
        format!("{}.1{node}", self.net)
    }

    /// Adds (`-A`) or deletes (`-D`) a rule in node `node`'s network
    /// namespace that drops what comes from node `from`.
    fn drop_from(&self, action: &str, node: u64, from: u64) {
        let pid = run("docker", &["inspect", "-f", "{{.State.Pid}}", &self.container(node)]);
        drop_rule(pid.trim(), action, &self.ip(from));
    }

    fn client(&self, first: usize) -> Client {
        let state = self.dir.path().join("state");
        let tls = cairn_tls::api_client(&state.join("certs/ca/ca.crt")).expect("the CA");
        let token = std::fs::read_to_string(state.join("token/admin.token")).expect("the token");
        let addrs: Vec<String> =
            (0..3).map(|i| format!("https://localhost:{}", self.ports[(first + i) % 3])).collect();
        Client::with_tls(&addrs[0], REQUEST_TIMEOUT, Some(tls))
            .unwrap()
            .with_token(Some(token.trim().to_string()))
            .with_endpoints(&addrs[1..])
            .unwrap()
    }

    /// A client of node `node` alone.
    fn node_client(&self, node: u64) -> Client {
        let client = self.client(0);
        client.at(&format!("https://localhost:{}", self.ports[node as usize - 1])).unwrap()
    }

    /// The leader every answering node names.
    async fn leader(&self) -> u64 {
        let started = Instant::now();
        loop {
            let mut named = BTreeSet::new();
            for node in 1..=3 {
                if let Ok(cluster) = self.node_client(node).cluster().await {
                    named.insert(cluster.leader);
                }
            }
            if let [Some(leader)] = named.into_iter().collect::<Vec<_>>()[..] {
                return leader;
            }
            assert!(started.elapsed() < DEADLINE, "no leader that every node names");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until node `node` answers a linearizable read.
    async fn serving(&self, node: u64) {
        wait_serving(&self.node_client(node), node).await;
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose_command(&["down", "-v", "--remove-orphans"]).output();
    }
}

/// One client's loop: random operations on the keys until `stop`.
async fn client_loop(
    id: u64,
    client: Client,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Entry>>>,
) {
    let mut rng = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut seq = 0u64;
    let tick = || start.elapsed().as_micros() as u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("k{}", next() % KEYS as u64);
        let roll = next() % 10;
        let invoked_at = tick();
        let (op, completion) = if roll < 5 {
            match client.kv_get(&key, Read::Linearizable).await {
                Ok(value) => (Op::Get, Some(Output::Get(value.map(|bytes| bytes.to_vec())))),
                // A failed read changed nothing: it is left out.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        } else if roll < 9 {
            seq += 1;
            let value = format!("{id}-{seq}").into_bytes();
            let op = Op::Put { value: value.clone() };
            match client.kv_put(&key, value).await {
                Ok(_) => (op, Some(Output::Put)),
                Err(_) => (op, None),
            }
        } else {
            match client.kv_delete(&key).await {
                Ok(existed) => (Op::Delete, Some(Output::Delete { existed })),
                Err(_) => (Op::Delete, None),
            }
        };
        let completion = match completion {
            Some(output) => Completion::Returned { at: tick(), output },
            None => Completion::Unknown,
        };
        let failed = completion == Completion::Unknown;
        history.lock().unwrap().push(Entry { client: id, key, op, invoked_at, completion });
        tokio::time::sleep(Duration::from_millis(if failed { 50 } else { 5 })).await;
    }
}

/// The longest time between acknowledged writes from `from` to `to`, in
/// history ticks (µs).
fn longest_write_gap(history: &[Entry], from: u64, to: u64) -> u64 {
    let mut acks: Vec<u64> = history
        .iter()
        .filter(|e| !matches!(e.op, Op::Get))
        .filter_map(|e| match e.completion {
            Completion::Returned { at, .. } if at >= from && at <= to => Some(at),
            _ => None,
        })
        .collect();
    acks.sort_unstable();
    let mut points = vec![from];
    points.extend(acks);
    points.push(to);
    points.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_in_containers_stays_linearizable_through_kills_pauses_and_cuts() {
    let _one = ONE_AT_A_TIME.lock().await;
    let fault = fault_duration();
    let project = Project::up();
    let leader = project.leader().await;
    for node in 1..=3 {
        project.serving(node).await;
    }
    eprintln!("containers: three nodes serve, node {leader} leads");
    // Each node advertises its published port, so that what `/v1/cluster`
    // lists is what clients and browsers on the host reach.
    // (A node learns a peer's address from the peer's hello.)
    let published: Vec<(u64, Option<String>)> = (1..=3)
        .map(|n| (n, Some(format!("localhost:{}", project.ports[n as usize - 1]))))
        .collect();
    let started = Instant::now();
    loop {
        let cluster = project.node_client(1).cluster().await.unwrap();
        let listed: Vec<(u64, Option<String>)> =
            cluster.nodes.iter().map(|n| (n.id, n.address.clone())).collect();
        if listed == published {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "listed {listed:?}, published {published:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The CLI inside a container reaches its node, and prints login links
    // on the published port.
    let url = format!("https://localhost:{}", project.ports[0]);
    let links =
        project.compose(&["exec", "-T", "node1", "cairn", "console", "--no-cloud", "--url", &url]);
    assert!(links.contains(&format!("{url}/#code=")), "{links}");

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let client = project.client(id as usize % 3);
        clients.push(tokio::spawn(client_loop(
            id,
            client,
            start,
            Arc::clone(&stop),
            Arc::clone(&history),
        )));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut windows: Vec<(String, u64, u64)> = Vec::new();
    let tick = || start.elapsed().as_micros() as u64;
    let network = project.network();
    for name in [
        "kill the leader",
        "pause a follower",
        "pause the leader",
        "disconnect a follower",
        "disconnect the leader",
        "cut the leader from one follower (chained)",
    ] {
        let leader = project.leader().await;
        let target = if name.ends_with("leader") { leader } else { leader % 3 + 1 };
        let target = if name.starts_with("cut") { leader % 3 + 1 } else { target };
        let container = project.container(target);
        let began = tick();
        match name {
            "kill the leader" => {
                project.docker(&["kill", &container]);
                tokio::time::sleep(fault).await;
                project.docker(&["start", &container]);
            }
            "pause a follower" | "pause the leader" => {
                project.docker(&["pause", &container]);
                tokio::time::sleep(fault).await;
                project.docker(&["unpause", &container]);
            }
            "cut the leader from one follower (chained)" => {
                project.drop_from("-A", target, leader);
                project.drop_from("-A", leader, target);
                tokio::time::sleep(fault).await;
                project.drop_from("-D", target, leader);
                project.drop_from("-D", leader, target);
            }
            _ => {
                project.docker(&["network", "disconnect", &network, &container]);
                tokio::time::sleep(fault).await;
                let ip = project.ip(target);
                project.docker(&["network", "connect", "--ip", &ip, &network, &container]);
            }
        }
        project.serving(target).await;
        let ended = tick();
        tokio::time::sleep(Duration::from_secs(1)).await;
        windows.push((format!("{name} (node {target})"), began, ended));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let history = history.lock().unwrap().clone();
    for (name, began, ended) in &windows {
        let gap = longest_write_gap(&history, *began, *ended);
        eprintln!(
            "containers: {name}: {:.1} s, longest time without an acknowledged write {:.2} s",
            (ended - began) as f64 / 1e6,
            gap as f64 / 1e6
        );
    }
    let returned = history.iter().filter(|e| e.completion != Completion::Unknown).count();
    let report = linearizability::check(&history).expect("a well-formed history");
    eprintln!(
        "containers: {} operations ({returned} returned, {} unknown), verdict {:?}",
        history.len(),
        history.len() - returned,
        report.verdict()
    );
    if let Some(violation) = report.violations().next() {
        panic!("not linearizable:\n{violation}");
    }
    assert!(report.is_linearizable(), "the checker ran out of budget on some key");
    let writes = history
        .iter()
        .filter(|e| !matches!(e.op, Op::Get) && e.completion != Completion::Unknown)
        .count();
    assert!(writes > 100, "the load made only {writes} acknowledged writes");
}

/// Five nodes started with `docker run` on their own network, peers and
/// clients in plain TCP (`--insecure`), removed on drop. Links between them
/// are cut and mended with iptables in their network namespaces.
struct Five {
    name: String,
    net: String,
    pids: Vec<String>,
    cuts: BTreeSet<(u64, u64)>,
}

impl Five {
    fn up() -> Five {
        image();
        let net = free_subnet();
        let name = format!("cairn-five-test-{}", std::process::id());
        run("docker", &["network", "create", "--subnet", &format!("{net}.0/24"), &name]);
        let mut five = Five { name, net, pids: Vec::new(), cuts: BTreeSet::new() };
        let peers: Vec<String> = (1..=5).map(|n| format!("{n}={}:7100", five.ip(n))).collect();
        let peers = format!("--peers={}", peers.join(","));
        for node in 1..=5 {
            let ip = five.ip(node);
            let container = five.container(node);
            run(
                "docker",
                &[
                    "run",
                    "-d",
                    "--name",
                    &container,
                    "--network",
                    &five.name,
                    "--ip",
                    &ip,
                    IMAGE,
                    "node",
                    &format!("--id={node}"),
                    "--data-dir=/data",
                    &format!("--listen={ip}:8080"),
                    &format!("--peer-listen={ip}:7100"),
                    &peers,
                    "--insecure",
                ],
            );
            let pid = run("docker", &["inspect", "-f", "{{.State.Pid}}", &container]);
            five.pids.push(pid.trim().to_string());
        }
        five
    }

    fn container(&self, node: u64) -> String {
        format!("{}-{node}", self.name)
    }

    fn ip(&self, node: u64) -> String {
        format!("{}.1{node}", self.net)
    }

    fn iptables(&self, node: u64, action: &str, from: u64) {
        drop_rule(&self.pids[node as usize - 1], action, &self.ip(from));
    }

    /// Drops what `a` and `b` send each other.
    fn cut(&mut self, a: u64, b: u64) {
        if self.cuts.insert((a.min(b), a.max(b))) {
            self.iptables(a, "-A", b);
            self.iptables(b, "-A", a);
        }
    }

    fn mend(&mut self, a: u64, b: u64) {
        if self.cuts.remove(&(a.min(b), a.max(b))) {
            self.iptables(a, "-D", b);
            self.iptables(b, "-D", a);
        }
    }

    fn mend_all(&mut self) {
        for (a, b) in std::mem::take(&mut self.cuts) {
            self.iptables(a, "-D", b);
            self.iptables(b, "-D", a);
        }
    }

    fn addr(&self, node: u64) -> String {
        format!("http://{}:8080", self.ip(node))
    }

    /// A client of every node, node `first` tried first.
    fn client(&self, first: u64) -> Client {
        let others: Vec<String> = (1..5).map(|i| self.addr((first - 1 + i) % 5 + 1)).collect();
        Client::with_timeout(&self.addr(first), REQUEST_TIMEOUT)
            .unwrap()
            .with_endpoints(&others)
            .unwrap()
    }

    fn node_client(&self, node: u64) -> Client {
        Client::with_timeout(&self.addr(node), REQUEST_TIMEOUT).unwrap()
    }

    /// The leader that a majority of the nodes name.
    async fn leader(&self) -> u64 {
        let started = Instant::now();
        loop {
            let mut named = std::collections::BTreeMap::new();
            for node in 1..=5 {
                if let Ok(cluster) = self.node_client(node).cluster().await {
                    if let Some(leader) = cluster.leader {
                        *named.entry(leader).or_insert(0) += 1;
                    }
                }
            }
            if let Some((leader, _)) = named.into_iter().find(|(_, count)| *count >= 3) {
                return leader;
            }
            assert!(started.elapsed() < DEADLINE, "no leader that a majority names");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until node `node` answers a linearizable read.
    async fn serving(&self, node: u64) {
        wait_serving(&self.node_client(node), node).await;
    }
}

impl Drop for Five {
    fn drop(&mut self) {
        for node in 1..=5 {
            let _ = Command::new("docker").args(["rm", "-f", &self.container(node)]).output();
        }
        let _ = Command::new("docker").args(["network", "rm", &self.name]).output();
    }
}

/// Pairs of distinct nodes among `nodes`.
fn pairs(nodes: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (i, a) in nodes.iter().enumerate() {
        for b in &nodes[i + 1..] {
            out.push((*a, *b));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_in_containers_make_progress_under_partial_connectivity() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Twice the other test's faults: a new leader must be elected and take
    // writes within each, and clients give up on a request after 2 s.
    let fault = fault_duration() * 2;
    let mut five = Five::up();
    let leader = five.leader().await;
    for node in 1..=5 {
        five.serving(node).await;
    }
    eprintln!("five: five nodes serve, node {leader} leads");

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let client = five.client(id % 5 + 1);
        let (stop, history) = (Arc::clone(&stop), Arc::clone(&history));
        clients.push(tokio::spawn(client_loop(id, client, start, stop, history)));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let tick = || start.elapsed().as_micros() as u64;
    let mut windows: Vec<(String, u64, u64)> = Vec::new();
    for name in ["quorum-loss", "constrained election", "chained", "leader isolation"] {
        let leader = five.leader().await;
        let others: Vec<u64> = (1..=5).filter(|n| *n != leader).collect();
        let (cuts, lagging) = match name {
            "quorum-loss" => {
                // Only others[0], the hub, keeps its links.
                let mut rest = vec![leader];
                rest.extend(&others[1..]);
                (pairs(&rest), Vec::new())
            }
            "constrained election" => {
                let laggard = others[0];
                let lagging: Vec<(u64, u64)> =
                    (1..=5).filter(|n| *n != laggard).map(|n| (laggard, n)).collect();
                let mut cuts: Vec<(u64, u64)> = others.iter().map(|n| (leader, *n)).collect();
                cuts.extend(pairs(&others[1..]));
                (cuts, lagging)
            }
            "chained" => (vec![(leader, others[0])], Vec::new()),
            _ => (others.iter().map(|n| (leader, *n)).collect(), Vec::new()),
        };
        if !lagging.is_empty() {
            for (a, b) in &lagging {
                five.cut(*a, *b);
            }
            tokio::time::sleep(fault).await;
        }
        let began = tick();
        for (a, b) in &cuts {
            five.cut(*a, *b);
        }
        for (a, b) in &lagging {
            if !cuts.contains(&(*a, *b)) && !cuts.contains(&(*b, *a)) {
                five.mend(*a, *b);
            }
        }
        tokio::time::sleep(fault).await;
        let ended = tick();
        five.mend_all();
        for node in 1..=5 {
            five.serving(node).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        windows.push((format!("{name} (leader {leader})"), began, ended));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let history = history.lock().unwrap().clone();
    let mut stalled = Vec::new();
    for (name, began, ended) in &windows {
        let gap = longest_write_gap(&history, *began, *ended);
        let progressed = history.iter().any(|e| {
            !matches!(e.op, Op::Get)
                && e.invoked_at >= *began
                && matches!(e.completion, Completion::Returned { at, .. } if at <= *ended)
        });
        eprintln!(
            "five: {name}: {:.1} s, longest time without an acknowledged write {:.2} s{}",
            (ended - began) as f64 / 1e6,
            gap as f64 / 1e6,
            if progressed { "" } else { ", no write sent in the fault acknowledged in it" }
        );
        if !progressed {
            stalled.push(name.clone());
        }
    }
    let returned = history.iter().filter(|e| e.completion != Completion::Unknown).count();
    let report = linearizability::check(&history).expect("a well-formed history");
    eprintln!(
        "five: {} operations ({returned} returned, {} unknown), verdict {:?}",
        history.len(),
        history.len() - returned,
        report.verdict()
    );
    if let Some(violation) = report.violations().next() {
        panic!("not linearizable:\n{violation}");
    }
    assert!(report.is_linearizable(), "the checker ran out of budget on some key");
    assert!(stalled.is_empty(), "no progress under {stalled:?}");
}
