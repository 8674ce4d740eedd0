//! The agent's scenarios, with real processes: an agent (in this process, or
//! in a child process for the crash scenario) supervising a fake node (see
//! `support`), driven through its gRPC client.
//!
//! Reproduce one with `cargo test -p cairn-agent --test agent NAME`; a
//! failure prints the last status and the node's output.

mod support;

use std::time::Duration;

use cairn_agent::{AgentClient, AgentConfig, NodeState};
use nix::sys::signal::Signal;
use support::{free_addr, kill, runs_from, wait_for, Host, RunningAgent};

/// The crash scenario runs an agent as a child process: this test binary
/// again, running only [`agent_process`], configured through this variable.
const AGENT_CONFIG_ENV: &str = "CAIRN_AGENT_TEST_CONFIG";

/// A new host has no node; StartNode runs one that turns healthy; the same
/// StartNode again (over gRPC or in process) changes nothing; another id, id 0, a bad join address and
/// a restart of no node are refused with messages that say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_node_runs_one_healthy_node_and_refuses_others() {
    let host = Host::new();
    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;

    let status = client.status().await.expect("status");
    assert_eq!((status.state, status.node_id, status.pid), (NodeState::Absent, 0, 0));
    assert_eq!(status.version, cairn_util::version());
    let err = client.restart_node(1).await.expect_err("no node to restart");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");

    let err = client.start_node(0, None, 0).await.expect_err("id 0");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
    let err = client.start_node(1, Some("ftp://x".into()), 0).await.expect_err("bad join");
    assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");

    let started = client.start_node(1, None, 0).await.expect("start node 1");
    assert!(started.pid != 0, "{started:?}");
    let healthy = wait_for(&host, &client, "a healthy node 1", |s| s.healthy).await;
    assert_eq!(healthy.state, NodeState::Running);
    assert_eq!((healthy.node_id, healthy.role), (1, Some(cairn_client::NodeRole::Leader)));
    assert!(healthy.has_data && !healthy.stopped, "{healthy:?}");
    assert_eq!(healthy.node_address, host.config.node_listen.to_string());
    assert_eq!(healthy.peer_address, host.config.node_peer_listen.to_string());

    let again = client.start_node(1, None, 0).await.expect("start node 1 again");
    assert_eq!(again.pid, healthy.pid, "a second StartNode is a no-op");
    // An in-process leader loop sees and commands the same node.
    let local = agent.supervisor.start_node(1, None, 0).await.expect("start in process");
    assert_eq!((local.pid, agent.supervisor.status().healthy), (healthy.pid, true));
    let err = client.start_node(2, None, 0).await.expect_err("another node id");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition), "{err}");
    let message = err.to_string();
    assert!(message.contains("node 1") && message.contains("node 2"), "{message}");
    assert_eq!(host.starts().len(), 1, "one process was started");
    agent.shutdown().await.expect("shutdown");
}

/// A node killed with SIGKILL is restarted by the agent: the restart count
/// grows and the node is healthy again. It joined through `--join` only the
/// first time, while its data directory was empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_restarted_and_joins_only_without_data() {
    let host = Host::new();
    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    client.start_node(3, Some("127.0.0.1:9".into()), 0).await.expect("start");
    let first = wait_for(&host, &client, "a healthy node", |s| s.healthy).await;

    kill(first.pid, Signal::SIGKILL);
    let again = wait_for(&host, &client, "a restarted, healthy node", |s| {
        s.healthy && s.pid != first.pid && s.restarts >= 1
    })
    .await;
    assert_eq!(again.state, NodeState::Running);
    assert!(again.message.contains("SIGKILL"), "the exit is reported: {again:?}");

    let starts = host.starts();
    assert_eq!(starts.len(), 2, "{starts:?}");
    let has_join = |start: &serde_json::Value| {
        start["argv"].as_array().is_some_and(|a| a.iter().any(|x| x == "--join"))
    };
    assert!(has_join(&starts[0]), "the first start joins: {starts:?}");
    assert!(!has_join(&starts[1]), "a node with data does not join: {starts:?}");
    assert_eq!(host.intent()["join"], "127.0.0.1:9");
    agent.shutdown().await.expect("shutdown");
}

/// StopNode stops the node and keeps it stopped: a second StopNode is a
/// no-op, an agent restarted on the host does not start it, and StartNode
/// runs it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_stays_stopped_across_agent_restarts() {
    let host = Host::new();
    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    client.start_node(1, None, 0).await.expect("start");
    let running = wait_for(&host, &client, "a healthy node", |s| s.healthy).await;

    let stopped = client.stop_node().await.expect("stop");
    assert_eq!((stopped.state, stopped.pid, stopped.stopped), (NodeState::Stopped, 0, true));
    assert!(stopped.has_data, "stopping keeps the data");
    assert!(!runs_from(running.pid, &host.data_dir()), "the process is gone");
    let again = client.stop_node().await.expect("stop again");
    assert_eq!(again.state, NodeState::Stopped);
    assert_eq!(host.intent()["stopped"], true);
    agent.shutdown().await.expect("shutdown");

    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = client.status().await.expect("status");
    assert_eq!((status.state, status.pid, status.node_id), (NodeState::Stopped, 0, 1));
    assert_eq!(host.starts().len(), 1, "the new agent started nothing");

    let started = client.start_node(1, None, 0).await.expect("start again");
    assert!(!started.stopped && started.pid != 0, "{started:?}");
    wait_for(&host, &client, "a healthy node after StopNode", |s| s.healthy).await;
    assert_eq!(host.intent()["stopped"], false);
    agent.shutdown().await.expect("shutdown");
}

/// RestartNode restarts the node once per generation: generation 1 starts a
/// new process, generation 1 again (or 0) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_happens_once_per_generation() {
    let host = Host::new();
    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    client.start_node(1, None, 0).await.expect("start");
    let before = wait_for(&host, &client, "a healthy node", |s| s.healthy).await;

    let restarted = client.restart_node(1).await.expect("restart for generation 1");
    assert!(restarted.pid != 0 && restarted.pid != before.pid, "{restarted:?}");
    assert_eq!(restarted.restart_generation, 1);
    assert!(!runs_from(before.pid, &host.data_dir()), "the old process is gone");
    let after = wait_for(&host, &client, "a healthy restarted node", |s| s.healthy).await;
    assert_eq!(after.restarts, 0, "a requested restart is not a crash");

    for generation in [1, 0] {
        let same = client.restart_node(generation).await.expect("an old generation");
        assert_eq!(same.pid, after.pid, "generation {generation} is a no-op");
    }
    assert_eq!(host.intent()["restart_generation"], 1);
    assert_eq!(host.starts().len(), 2);
    agent.shutdown().await.expect("shutdown");
}

/// An agent asked to stop its node on shutdown (the cloud's `down`) stops
/// it without recording it stopped: the next agent runs it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_node_only_when_asked() {
    let host = Host::new();
    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    client.start_node(1, None, 0).await.expect("start");
    let first = wait_for(&host, &client, "a healthy node", |s| s.healthy).await;
    agent.shutdown().await.expect("shutdown leaving the node");
    assert!(runs_from(first.pid, &host.data_dir()), "the node outlives a plain shutdown");

    let config = AgentConfig { stop_node_on_shutdown: true, ..host.config.clone() };
    let agent = RunningAgent::start(config).await;
    let client = agent.client().await;
    let adopted = wait_for(&host, &client, "the adopted node, healthy", |s| s.healthy).await;
    assert_eq!(adopted.pid, first.pid, "the node was adopted, not restarted");
    agent.shutdown().await.expect("shutdown stopping the node");
    assert!(!runs_from(first.pid, &host.data_dir()), "the node is stopped");
    assert_eq!(host.intent()["stopped"], false, "a shutdown is not a StopNode");

    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    let next = wait_for(&host, &client, "the node started again", |s| s.healthy).await;
    assert_ne!(next.pid, first.pid);
    agent.shutdown().await.expect("shutdown");
}

/// An agent that died while stopping its node (the intent says stopped, the
/// node still runs) is succeeded by one that finishes the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_cut_short_by_a_crash_is_finished_by_the_next_agent() {
    let host = Host::new();
    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    client.start_node(1, None, 0).await.expect("start");
    let running = wait_for(&host, &client, "a healthy node", |s| s.healthy).await;
    agent.crash().await;
    // What StopNode persists before it signals the node.
    let mut intent = host.intent();
    intent["stopped"] = serde_json::Value::Bool(true);
    std::fs::write(host.config.dir.join("agent.json"), intent.to_string()).expect("write intent");

    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    let stopped = wait_for(&host, &client, "the node stopped", |s| s.pid == 0).await;
    assert_eq!((stopped.state, stopped.stopped), (NodeState::Stopped, true));
    assert!(!runs_from(running.pid, &host.data_dir()), "the process is gone");
    agent.shutdown().await.expect("shutdown");
}

/// A node binary that cannot start: StartNode fails naming it, and the node
/// waits in backoff while the agent keeps trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_start_waits_in_backoff() {
    let host = Host::new();
    let missing = host.tmp.path().join("no-such-cairn");
    let config = AgentConfig { node_bin: missing.clone(), ..host.config.clone() };
    let agent = RunningAgent::start(config).await;
    let client = agent.client().await;
    let err = client.start_node(1, None, 0).await.expect_err("no binary");
    assert!(err.to_string().contains("no-such-cairn"), "{err}");
    let status = wait_for(&host, &client, "retries", |s| s.restarts >= 2).await;
    assert_eq!((status.state, status.pid, status.healthy), (NodeState::Backoff, 0, false));
    assert!(status.message.contains("no-such-cairn"), "{status:?}");
    agent.shutdown().await.expect("shutdown");
}

/// The cloud kills an agent's process group with SIGKILL: the node, in a
/// group of its own, keeps running; a new agent on the host adopts it (same
/// pid), reports it healthy, and restarts it when it dies, though it is not
/// the new agent's child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_leaves_its_node_to_the_next_agent() {
    let host = Host::new();
    let config = AgentConfig { listen: free_addr(), ..host.config.clone() };
    let mut child = spawn_agent_process(&host, &config);
    let client = connect_patiently(&config.listen.to_string()).await;
    client.start_node(1, None, 0).await.expect("start");
    let first = wait_for(&host, &client, "a healthy node", |s| s.healthy).await;

    let group = i32::try_from(child.id()).expect("a pid fits i32");
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), Signal::SIGKILL);
    let _ = child.wait();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(runs_from(first.pid, &host.data_dir()), "the node survives its agent");

    let agent = RunningAgent::start(host.config.clone()).await;
    let client = agent.client().await;
    let adopted = wait_for(&host, &client, "the adopted node, healthy", |s| s.healthy).await;
    assert_eq!(adopted.pid, first.pid, "adopted, not restarted");
    assert_eq!(host.starts().len(), 1);

    kill(first.pid, Signal::SIGKILL);
    let restarted = wait_for(&host, &client, "the adopted node restarted", |s| {
        s.healthy && s.pid != first.pid && s.restarts >= 1
    })
    .await;
    assert_eq!(restarted.node_id, 1);
    agent.shutdown().await.expect("shutdown");
}

/// Runs [`agent_process`] in a child process, in a process group of its own
/// (as the cloud starts agents), its output appended to `agent.log`.
fn spawn_agent_process(host: &Host, config: &AgentConfig) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().expect("this test binary");
    let log = std::fs::File::create(host.tmp.path().join("agent.log")).expect("agent.log");
    let settings = serde_json::json!({
        "dir": config.dir,
        "listen": config.listen.to_string(),
        "node_listen": config.node_listen.to_string(),
        "node_peer_listen": config.node_peer_listen.to_string(),
        "node_bin": config.node_bin,
    });
    std::process::Command::new(exe)
        .args(["agent_process", "--exact", "--ignored", "--nocapture"])
        .env(AGENT_CONFIG_ENV, settings.to_string())
        .stdout(log.try_clone().expect("agent.log"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("spawn the agent process")
}

async fn connect_patiently(addr: &str) -> AgentClient {
    let deadline = std::time::Instant::now() + Duration::from_millis(support::WAIT_MS_MAX);
    loop {
        match AgentClient::connect(addr, Duration::from_secs(5)).await {
            Ok(client) => return client,
            Err(e) if std::time::Instant::now() > deadline => panic!("no agent at {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The agent process of the crash scenario; without its configuration in
/// the environment it does nothing.
#[test]
#[ignore = "run as a child process by a_killed_agent_leaves_its_node_to_the_next_agent"]
fn agent_process() {
    let Ok(settings) = std::env::var(AGENT_CONFIG_ENV) else { return };
    let settings: serde_json::Value = serde_json::from_str(&settings).expect("settings");
    let text = |key: &str| settings[key].as_str().expect("a setting").to_string();
    let config = AgentConfig {
        host: "host-1".into(),
        zone: "zone-a".into(),
        dir: text("dir").into(),
        listen: text("listen").parse().expect("listen"),
        node_listen: text("node_listen").parse().expect("node_listen"),
        node_peer_listen: text("node_peer_listen").parse().expect("node_peer_listen"),
        cloud: None,
        cloud_token: None,
        node_bin: text("node_bin").into(),
        stop_node_on_shutdown: false,
        ca_dir: None,
        node_token_file: None,
        backup_dir: None,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(cairn_agent::run(config, std::future::pending())).expect("the agent runs");
}

/// Agent gRPC used to stop a node for anyone who reached its port, and the
/// stop persisted. With the cluster's CA, an agent takes calls only over
/// mutual TLS from a certificate of the CA that names an agent: plain TCP,
/// an agent of another CA and a node's certificate of this CA all get
/// nothing done, and an agent of the cluster commands as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_ca_only_the_clusters_agents_can_call_an_agent() {
    let mut host = Host::new();
    let ca_dir = host.tmp.path().join("ca");
    let ca = cairn_tls::Ca::create(&ca_dir).expect("a CA");
    host.config.ca_dir = Some(ca_dir.clone());
    let agent = RunningAgent::start(host.config.clone()).await;
    let addr = agent.addr.to_string();
    let timeout = Duration::from_secs(5);

    // Another agent of the cluster.
    let ours = host.tmp.path().join("other-agent");
    ca.issue_agent(&ours, &[]).expect("an agent certificate");
    let ours = cairn_tls::AgentTls::load(&ours).expect("its settings").client;
    let client = AgentClient::connect_with(&addr, timeout, Some(ours)).await.expect("connect");
    client.start_node(1, None, 0).await.expect("start node 1");
    let running = wait_for(&host, &client, "a healthy node 1", |s| s.healthy).await;
    assert!(host.config.dir.join("certs").join(cairn_tls::AGENT_CERT_FILE).exists());

    // Strangers: no TLS; an agent of another CA; a node of this one.
    let other_ca_dir = host.tmp.path().join("other-ca");
    let other_ca = cairn_tls::Ca::create(&other_ca_dir).expect("another CA");
    let theirs = host.tmp.path().join("their-agent");
    other_ca.issue_agent(&theirs, &[]).expect("their agent");
    let theirs = cairn_tls::AgentTls::load(&theirs).expect("their settings").client;
    let node_dir = host.tmp.path().join("node-certs");
    ca.issue_node(&node_dir, 7, &[]).expect("a node certificate");
    let node = cairn_tls::PeerTls::load(&node_dir, 7).expect("the node's settings").client;
    for (who, tls) in [("plain TCP", None), ("another CA", Some(theirs)), ("a node", Some(node))] {
        let refused = match AgentClient::connect_with(&addr, timeout, tls).await {
            Ok(stranger) => stranger.stop_node().await.map(drop),
            Err(e) => Err(e),
        };
        assert!(refused.is_err(), "{who} stopped the node");
    }
    let after = client.status().await.expect("status");
    assert_eq!((after.state, after.pid, after.stopped), (NodeState::Running, running.pid, false));
    assert!(runs_from(running.pid, &host.data_dir()), "the node still runs");
    let stopped = client.stop_node().await.expect("the cluster's agent stops it");
    assert!(stopped.stopped, "{stopped:?}");
    agent.shutdown().await.expect("shutdown");
}
