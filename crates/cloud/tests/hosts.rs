//! The `local` provider with real processes: creating, restarting, failing
//! and deleting hosts, and a cloud that restarts on the same root.
//!
//! Run one: `cargo test -p cairn-cloud --test hosts NAME -- --nocapture`.

mod common;

use std::time::Duration;

use cairn_cloud::Cloud;
use common::{alive, eventually, kill9, Harness};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// The port a host's address names.
fn port(host: &Value, field: &str) -> u16 {
    let address = host[field].as_str().unwrap_or_else(|| panic!("{field} in {host}"));
    let (ip, port) = address.rsplit_once(':').unwrap_or_else(|| panic!("{address} has no port"));
    assert_eq!(ip, "127.0.0.1", "{field} is on loopback");
    port.parse().unwrap_or_else(|_| panic!("{address} has a bad port"))
}

/// Creating a host makes its directory and starts its agent with the
/// contract's flags and the ports its number gives; asking again for the
/// same name and zone answers the same host; another zone is a conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_starts_an_agent_and_is_idempotent() {
    let mut h = Harness::new();
    h.start().await;
    let (status, host) = h.create("host-1", "zone-a").await;
    assert_eq!(status, StatusCode::CREATED, "{host}");
    assert!(h.host_dir("host-1").is_dir());
    let number = host["number"].as_u64().expect("number") as u16;
    let api = h.base_port + 10 * (number - 1) + 1;
    assert_eq!(port(&host, "api_address"), api);
    assert_eq!(port(&host, "peer_address"), api + 1);
    assert_eq!(port(&host, "agent_address"), api + 2);
    assert_eq!(
        (host["zone"].as_str(), host["host_type"].as_str()),
        (Some("zone-a"), Some("small"))
    );

    let running = h.running("host-1", None).await;
    let dir = std::fs::canonicalize(h.host_dir("host-1")).expect("host dir");
    let cloud = h.url("").trim_end_matches('/').to_string();
    let root = std::fs::canonicalize(h.root.path()).expect("root");
    let expected = [
        "agent".to_string(),
        "--host".into(),
        "host-1".into(),
        "--zone".into(),
        "zone-a".into(),
        "--dir".into(),
        dir.display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", api + 2),
        "--node-listen".into(),
        format!("127.0.0.1:{api}"),
        "--node-peer-listen".into(),
        format!("127.0.0.1:{}", api + 1),
        "--cloud".into(),
        cloud,
        "--ca-dir".into(),
        root.join("ca").display().to_string(),
        "--cloud-token-file".into(),
        root.join("cloud.token").display().to_string(),
        "--node-token-file".into(),
        root.join("admin.token").display().to_string(),
        "--backup-dir".into(),
        root.join("backups").display().to_string(),
    ];
    assert_eq!(h.argv("host-1").await, expected);

    let (status, again) = h.create("host-1", "zone-a").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!((&again["number"], &again["pid"]), (&running["number"], &running["pid"]));
    let (status, conflict) = h.create("host-1", "zone-b").await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["error"]["code"], "host_conflict");
    let (status, bad) = h.create("Host_1", "zone-a").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    let (status, bad) = h.post("/v1/hosts", json!({"name": "host-9"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");

    let (status, second) = h.create("host-2", "zone-b").await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let numbers: Vec<u64> =
        h.hosts().await.iter().filter_map(|host| host["number"].as_u64()).collect();
    assert_eq!(numbers.len(), 2);
    assert!(numbers[0] < numbers[1], "sorted by number: {numbers:?}");
    h.agents_started("host-1", 1).await;
    h.stop().await;
    assert!(!alive(running["pid"].as_u64().expect("pid") as u32), "shutdown stopped the agent");
}

/// A host number with a port in use is skipped: the host gets the next
/// number whose three ports are free, and that number is not given again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_moves_the_host_number_on() {
    let mut h = Harness::new();
    let taken = std::net::TcpListener::bind(("127.0.0.1", h.base_port + 2))
        .expect("take host 1's peer port");
    h.start().await;
    let (status, host) = h.create("host-a", "zone-a").await;
    assert_eq!(status, StatusCode::CREATED, "{host}");
    let number = host["number"].as_u64().expect("number") as u16;
    assert!(number >= 2, "number 1 has a port in use: {host}");
    assert_eq!(port(&host, "api_address"), h.base_port + 10 * (number - 1) + 1);
    drop(taken);
    let (_, next) = h.create("host-b", "zone-a").await;
    assert!(next["number"].as_u64() > Some(u64::from(number)), "{next}");
    h.stop().await;
}

/// Host ports stay out of the kernel's ephemeral port range, where outgoing
/// connections take ports and could keep a node from binding its own: a
/// base port whose first host falls in it is refused with a message naming
/// the range, and host numbers whose ports would fall in it are skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_stay_out_of_the_ephemeral_range() {
    let Some(range) = cairn_cloud::ports::avoided_range() else {
        eprintln!("no ephemeral port range to avoid here: nothing to check");
        return;
    };
    let (low, high) = (*range.start(), *range.end());
    let mut h = Harness::new();
    let mut config = h.config();
    config.base_port = low;
    let Err(refused) = cairn_cloud::Cloud::start(config).await else {
        panic!("a base port in the ephemeral range {low}-{high} was taken");
    };
    let message = refused.to_string();
    assert!(
        message.contains("ephemeral port range") && message.contains(&format!("{low}-{high}")),
        "{message}"
    );
    assert!(message.contains(&format!("below {}", low - 10)), "{message}");

    // Hosts 1 and 2 fit below the range; host 3's ports would not.
    h.base_port = low - 15;
    let free = |first: u16| {
        (first..first + 3).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
    };
    if !(free(low - 14) && free(low - 4)) {
        eprintln!("the ports just below {low} are in use: nothing to check");
        return;
    }
    h.start().await;
    let mut numbers = Vec::new();
    for name in ["host-a", "host-b", "host-c"] {
        let (status, host) = h.create(name, "zone-a").await;
        if status != StatusCode::CREATED {
            // Ports above the range may all be taken or beyond 65535.
            assert!(host.to_string().contains("ephemeral port range"), "{host}");
            break;
        }
        let (api, agent) = (port(&host, "api_address"), port(&host, "agent_address"));
        assert!(agent < low || api > high, "{name} got ports in {low}-{high}: {host}");
        numbers.push(host["number"].as_u64().expect("number"));
    }
    eprintln!("host numbers around the range {low}-{high}: {numbers:?}");
    assert_eq!(numbers[..2], [1, 2], "hosts below the range keep their numbers");
    if let Some(&third) = numbers.get(2) {
        assert!(third > 3, "host number 3 has ports in the range: {numbers:?}");
    }
    h.stop().await;
}

/// An agent killed on its own (not its host) is started again by the cloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_is_restarted() {
    let mut h = Harness::new();
    h.start().await;
    let (status, host) = h.create("host-1", "zone-a").await;
    assert_eq!(status, StatusCode::CREATED, "{host}");
    let first = h.running("host-1", None).await;
    let first_pid = first["pid"].as_u64().expect("pid");
    h.agents_started("host-1", 1).await;
    kill9(first_pid as u32);
    let second = h.running("host-1", Some(first_pid)).await;
    assert_eq!(second["restarts"], 1, "{second}");
    assert_eq!(second["number"], first["number"]);
    h.agents_started("host-1", 2).await;
    let log = std::fs::read_to_string(h.host_dir("host-1").join("agent.log")).expect("agent.log");
    assert_eq!(log.matches("--- cloud: starting the agent").count(), 2, "{log}");
    h.stop().await;
}

/// A failed host's agent and node are killed and stay dead; the host stays
/// listed as failed until it is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_host_stays_down() {
    let mut h = Harness::new();
    h.start().await;
    h.create("host-1", "zone-a").await;
    let host = h.running("host-1", None).await;
    let agent = host["pid"].as_u64().expect("pid") as u32;
    let node = h.node_pid("host-1").await;
    assert!(alive(node));

    let (status, failed) = h.post("/v1/hosts/host-1/fail", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["state"], "failed");
    eventually("the agent and the node to be gone", || async move {
        (!alive(agent) && !alive(node)).then_some(())
    })
    .await;
    // Longer than the restart pause: nothing comes back.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let host = h.host("host-1").await.expect("still listed");
    assert_eq!((host["state"].as_str(), &host["pid"]), (Some("failed"), &Value::Null));
    assert_eq!(h.agent_starts("host-1"), 1);
    let (status, _) = h.post("/v1/hosts/nope/fail", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, deleted) = h.delete("/v1/hosts/host-1").await;
    assert_eq!((status, &deleted["deleted"]), (StatusCode::OK, &json!(true)));
    h.stop().await;
}

/// Deleting a host stops its agent and node and removes its directory;
/// deleting it again is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_host_and_is_idempotent() {
    let mut h = Harness::new();
    h.start().await;
    h.create("host-1", "zone-a").await;
    let host = h.running("host-1", None).await;
    let agent = host["pid"].as_u64().expect("pid") as u32;
    let node = h.node_pid("host-1").await;

    let (status, deleted) = h.delete("/v1/hosts/host-1").await;
    assert_eq!((status, &deleted["deleted"]), (StatusCode::OK, &json!(true)), "{deleted}");
    assert!(!h.host_dir("host-1").exists());
    assert!(!alive(agent) && !alive(node), "agent {agent} and node {node} are gone");
    assert!(h.hosts().await.is_empty());
    let (status, missing) = h.get("/v1/hosts/host-1").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
    let (status, again) = h.delete("/v1/hosts/host-1").await;
    assert_eq!((status, &again["deleted"]), (StatusCode::OK, &json!(false)), "{again}");

    // The number is not given again.
    let (_, next) = h.create("host-1", "zone-a").await;
    assert!(next["number"].as_u64() > host["number"].as_u64(), "{next} after {host}");
    h.stop().await;
}

/// A new cloud on the same root brings the active hosts back (same ports,
/// new agents), leaves failed ones down, and goes on numbering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_survives_a_restart() {
    let mut h = Harness::new();
    h.start().await;
    h.create("host-1", "zone-a").await;
    h.create("host-2", "zone-b").await;
    let before = h.running("host-1", None).await;
    h.running("host-2", None).await;
    h.agents_started("host-1", 1).await;
    h.agents_started("host-2", 1).await;
    h.post("/v1/hosts/host-2/fail", json!({})).await;
    h.stop().await;
    let first_pid = before["pid"].as_u64().expect("pid");
    assert!(!alive(first_pid as u32), "the agent stopped with its cloud");
    assert!(h.root.path().join("inventory.json").is_file());

    h.start().await;
    let after = h.running("host-1", Some(first_pid)).await;
    assert_eq!(
        (&after["number"], &after["api_address"], &after["zone"]),
        (&before["number"], &before["api_address"], &before["zone"])
    );
    h.agents_started("host-1", 2).await;
    let failed = h.host("host-2").await.expect("host-2 listed");
    assert_eq!(failed["state"], "failed");
    assert_eq!(h.agent_starts("host-2"), 1);
    let (status, third) = h.create("host-3", "zone-a").await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    assert!(third["number"].as_u64() > failed["number"].as_u64(), "{third}");
    h.stop().await;
}

/// A web page the operator opens cannot stop the cluster or fail its hosts
/// through the operator's browser: a simple cross-site POST (form or text
/// body, no preflight), a page of another origin, or a rebound name (DNS
/// rebinding) is refused before anything is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_web_page_could_send_are_refused() {
    let mut h = Harness::new();
    h.start().await;
    h.create("host-1", "zone-a").await;
    h.running("host-1", None).await;
    let http = reqwest::Client::new();
    let token = h.token();
    // (what, headers, status)
    type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode);
    let attempts: Vec<Attempt> = vec![
        (
            "a form POST",
            vec![("content-type", "application/x-www-form-urlencoded")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        ("a text POST", vec![("content-type", "text/plain")], StatusCode::UNSUPPORTED_MEDIA_TYPE),
        ("a POST without a type", vec![], StatusCode::UNSUPPORTED_MEDIA_TYPE),
        (
            "another origin",
            vec![("content-type", "application/json"), ("origin", "http://evil.example")],
            StatusCode::FORBIDDEN,
        ),
        (
            "a rebound name",
            vec![("content-type", "application/json"), ("host", "evil.example:7000")],
            StatusCode::FORBIDDEN,
        ),
    ];
    for path in ["/v1/hosts/host-1/fail", "/v1/shutdown"] {
        for (what, headers, status) in &attempts {
            let mut request = http.post(h.url(path)).bearer_auth(&token).body("{}");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let answer = request.send().await.expect("POST");
            assert_eq!(answer.status(), *status, "{what} to {path}");
            let body: serde_json::Value = answer.json().await.expect("a JSON error");
            assert!(body["error"]["message"].is_string(), "{what} to {path}: {body}");
        }
    }
    // Nothing was done: the host runs, and the cloud still serves.
    let host = h.host("host-1").await.expect("host-1");
    assert_eq!(host["state"], "running", "{host}");
    assert_eq!(h.get("/v1/health").await.0, StatusCode::OK);

    // A page one of its hosts' nodes serves (the web console) may submit a
    // desired state: its preflight is answered without a token, its calls
    // get CORS headers and still need the token. Any other origin may not.
    let console = format!("https://{}", host["api_address"].as_str().expect("api address"));
    let preflight = |origin: String| {
        http.request(reqwest::Method::OPTIONS, h.url("/v1/desired"))
            .header("origin", origin)
            .header("access-control-request-method", "PUT")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let answer = preflight(console.clone()).await.expect("preflight");
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    assert_eq!(answer.headers()["access-control-allow-origin"], console.as_str());
    let answer = preflight("https://127.0.0.1:1".into()).await.expect("preflight");
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(answer.headers().get("access-control-allow-origin").is_none());
    let answer = http
        .get(h.url("/v1/hosts"))
        .bearer_auth(&token)
        .header("origin", console.as_str())
        .send()
        .await
        .expect("GET");
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(answer.headers()["access-control-allow-origin"], console.as_str());
    let answer =
        http.get(h.url("/v1/hosts")).header("origin", console.as_str()).send().await.expect("GET");
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
}

/// Every call but the health check needs the cloud's admin token (made on
/// the first start in the root, readable by its owner only): without it, or
/// with another, nothing is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_the_admin_token() {
    let mut h = Harness::new();
    h.start().await;
    h.create("host-1", "zone-a").await;
    h.running("host-1", None).await;
    let http = reqwest::Client::new();
    for token in [None, Some("0".repeat(64))] {
        for (method, path) in [
            (reqwest::Method::GET, "/v1/hosts"),
            (reqwest::Method::POST, "/v1/hosts/host-1/fail"),
            (reqwest::Method::POST, "/v1/shutdown"),
            (reqwest::Method::DELETE, "/v1/hosts/host-1"),
        ] {
            let mut request = http
                .request(method.clone(), h.url(path))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(token) = &token {
                request = request.bearer_auth(token);
            }
            let answer = request.send().await.expect("a request");
            assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
            let body: serde_json::Value = answer.json().await.expect("a JSON error");
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    let health = http.get(h.url("/v1/health")).send().await.expect("health");
    assert_eq!(health.status(), StatusCode::OK, "the health check is open");
    let host = h.host("host-1").await.expect("host-1");
    assert_eq!(host["state"], "running", "{host}");
    use std::os::unix::fs::PermissionsExt;
    let token_file = h.root.path().join(cairn_cloud::TOKEN_FILE);
    let mode = std::fs::metadata(token_file).expect("the token file").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the token file is readable by others: {mode:o}");
}

/// The cloud's API speaks plain HTTP, so it listens on loopback only: an
/// address beyond it is refused, naming it, unless the operator accepts that
/// the admin token crosses the network in the clear (`insecure`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_listens_beyond_loopback_only_when_told_to() {
    let h = Harness::new();
    let mut config = h.config();
    config.listen = "0.0.0.0:0".parse().expect("addr");
    let error = match Cloud::start(config.clone()).await {
        Ok(_) => panic!("a cloud on 0.0.0.0 started without --insecure"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("0.0.0.0") && error.contains("--insecure"), "{error}");
    config.insecure = true;
    let cloud = Cloud::start(config).await.expect("with insecure, it starts");
    assert!(cloud.local_addr().ip().is_unspecified());
}

/// `POST /v1/shutdown` stops a serving cloud and its agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_route_stops_the_cloud() {
    let mut h = Harness::new();
    h.start().await;
    h.create("host-1", "zone-a").await;
    let host = h.running("host-1", None).await;
    let (status, _) = h.post("/v1/shutdown", json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    h.join_stopped().await;
    assert!(!alive(host["pid"].as_u64().expect("pid") as u32));
    assert!(h.host_dir("host-1").is_dir(), "a stopped cloud keeps its hosts");
}

/// A login code, made with the cloud's token, is traded once for it (the
/// console's login link carries one, so the token itself is never printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_code_is_traded_once_for_the_clouds_token() {
    let mut h = Harness::new();
    h.start().await;
    let http = reqwest::Client::new();
    let token = h.token();
    let made = http.post(h.url("/v1/login-codes")).header("content-type", "application/json");
    assert_eq!(made.send().await.expect("POST").status(), StatusCode::UNAUTHORIZED);
    let answer = http
        .post(h.url("/v1/login-codes"))
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status(), StatusCode::CREATED);
    let code: serde_json::Value = answer.json().await.expect("JSON");
    let code = code["code"].as_str().expect("a code").to_string();
    let trade = || {
        http.post(h.url("/v1/login"))
            .bearer_auth(&code)
            .header("content-type", "application/json")
            .send()
    };
    let answer = trade().await.expect("POST");
    assert_eq!(answer.status(), StatusCode::CREATED);
    let body: serde_json::Value = answer.json().await.expect("JSON");
    assert_eq!(body["token"], token.as_str());
    let again = trade().await.expect("POST");
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let body: serde_json::Value = again.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
    // A made-up code, or none, gets nothing.
    for given in ["nope", ""] {
        let answer = http
            .post(h.url("/v1/login"))
            .bearer_auth(given)
            .header("content-type", "application/json")
            .send()
            .await
            .expect("POST");
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{given:?}");
    }
}
