//! The control plane's commands: `up`, `down`, `status`, `apply`, and the
//! long-running `agent` and `cloud` processes.
//!
//! `cairn up` is the cloud with the local provider in the foreground: it
//! validates the desired state file, starts the cloud on it (which watches
//! the file), creates the first host when there is none, and prints every
//! status transition until Ctrl-C, which stops the agents and their nodes
//! and keeps the data under `--dir`. Run again, it brings the same cluster
//! back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use cairn_agent::AgentConfig;
use cairn_cloud::{
    ClientError, Cloud, CloudClient, CloudConfig, CreateHost, HostState, StatusEvent, StatusView,
};
use cairn_control::status::ReconcileState;
use serde_json::{json, Value};

use crate::args::{
    AgentArgs, ApplyArgs, BackupArgs, BackupCommand, CloudArg, CloudArgs, ConsoleArgs, Output,
    StatusArgs, UpArgs,
};
use crate::error::CliError;
use crate::node_cmd::{init_tracing, shutdown_signal};

/// How long `cairn down` waits for the cloud to stop everything.
const DOWN_WAIT_MS: u64 = 60_000;
/// How long one call to the cloud or a node may take.
const CALL_TIMEOUT_MS: u64 = 5_000;

pub async fn agent(output: Output, args: AgentArgs) -> ExitCode {
    init_tracing();
    let node_bin = match std::env::current_exe() {
        Ok(bin) => bin,
        Err(source) => {
            let path = PathBuf::from("/proc/self/exe");
            return fail(output, CliError::Io { what: "find this program at", path, source });
        }
    };
    let cloud_token = match &args.cloud_token_file {
        Some(path) => match cairn_util::secret::read(path) {
            Ok(token) => token,
            Err(source) => {
                let what = "read the cloud's admin token from";
                return fail(output, CliError::Io { what, path: path.clone(), source });
            }
        },
        None => None,
    };
    let config = AgentConfig {
        host: args.host,
        zone: args.zone,
        dir: args.dir,
        listen: args.listen,
        node_listen: args.node_listen,
        node_peer_listen: args.node_peer_listen,
        cloud: args.cloud,
        node_bin,
        // The cloud stops an agent (down, delete) with SIGTERM: its node goes
        // with it. A killed agent leaves its node running for the next one.
        stop_node_on_shutdown: true,
        ca_dir: args.ca_dir,
        node_token_file: args.node_token_file,
        backup_dir: args.backup_dir,
        cloud_token,
    };
    match cairn_agent::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(output, CliError::AgentRun(e)),
    }
}

pub async fn cloud(output: Output, args: CloudArgs) -> ExitCode {
    init_tracing();
    let mut config = match cloud_config(&args.dir, args.listen, args.file.as_deref(), args.insecure)
    {
        Ok(config) => config,
        Err(e) => return fail(output, e),
    };
    if let Some(base_port) = args.base_port {
        config.base_port = base_port;
    }
    let cloud = match Cloud::start(config).await {
        Ok(cloud) => cloud,
        Err(e) => return fail(output, e.into()),
    };
    tracing::info!(addr = %cloud.local_addr(), "cloud started");
    match cloud.serve(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(output, e.into()),
    }
}

fn cloud_config(
    dir: &Path,
    listen: std::net::SocketAddr,
    file: Option<&Path>,
    insecure: bool,
) -> Result<CloudConfig, CliError> {
    let agent_bin = std::env::current_exe().map_err(|source| CliError::Io {
        what: "find this program at",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut config = CloudConfig::new(dir.to_path_buf(), listen, agent_bin);
    config.desired_file = file.map(Path::to_path_buf);
    config.insecure = insecure;
    // Host 1 serves its API on the port after the cloud's.
    config.base_port = listen.port();
    Ok(config)
}

pub async fn up(output: Output, args: UpArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let (_, desired) = match read_desired(&args.file) {
        Ok(read) => read,
        Err(e) => return fail(output, e),
    };
    if let Err(source) = std::fs::create_dir_all(&args.dir) {
        return fail(output, CliError::Io { what: "create", path: args.dir.clone(), source });
    }
    let config = match cloud_config(&args.dir, args.listen, Some(&args.file), args.insecure) {
        Ok(config) => config,
        Err(e) => return fail(output, e),
    };
    let cloud = match Cloud::start(config).await {
        Ok(cloud) => cloud,
        Err(e) => return fail(output, e.into()),
    };
    let addr = cloud.local_addr();
    let mut events = cloud.status_events();
    let listening = json!({ "listening": format!("http://{addr}"), "dir": args.dir });
    let _ = crate::output::success(output, &listening, || {
        format!("cloud listening on http://{addr} (local provider, data in {})", args.dir.display())
    });
    let served = tokio::spawn(cloud.serve(shutdown_signal()));
    let zone = desired.zones.first().cloned().unwrap_or_default();
    let token_file = args.dir.join(cairn_cloud::TOKEN_FILE);
    if let Err(e) = first_host(addr, &token_file, &zone, &desired.host_type).await {
        let _ = fail(output, e);
    }
    let printer = tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => print_event(output, addr, &token_file, &event).await,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
    let result = served.await;
    printer.abort();
    match result {
        Ok(Ok(())) => {
            let stopped = json!({ "stopped": true, "dir": args.dir });
            crate::output::success(output, &stopped, || {
                format!("stopped; the data is kept in {}", args.dir.display())
            })
        }
        Ok(Err(e)) => fail(output, e.into()),
        Err(e) => fail(output, e.into()),
    }
}

/// One event as a line: text for people, or one JSON object a line
/// (`{"at", "event"}`) for programs.
async fn print_event(
    output: Output,
    cloud: std::net::SocketAddr,
    token_file: &std::path::Path,
    event: &StatusEvent,
) {
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    if output == Output::Json {
        println!("{}", json!({ "at": time.to_string(), "event": event }));
        return;
    }
    println!("{time} {event}");
    if let StatusEvent::Transition(t) = event {
        let at = t.report.state == cairn_control::status::ReconcileState::AtDesiredState;
        if at && t.report.step.is_none() {
            let hosts = match cloud_client(&cloud.to_string(), token_file) {
                Ok(client) => client.hosts().await.map_err(CliError::from),
                Err(e) => Err(e),
            };
            if let Ok(hosts) = hosts {
                let apis: Vec<String> = hosts
                    .iter()
                    .filter(|h| h.state == HostState::Running)
                    // Every node of `cairn up` serves HTTPS with the
                    // cluster's CA (`.cairn/ca/ca.crt`).
                    .map(|h| format!("https://{}", h.api_address))
                    .collect();
                println!("{time}   API (any node): {}", apis.join(" "));
                if let Some(first) = hosts.iter().find(|h| h.state == HostState::Running) {
                    print_login_urls(&time, &first.api_address, cloud, token_file).await;
                }
            }
        }
    }
}

/// The console's and the todo app's login URLs, on the node `node` (a
/// client with an admin token): each carries its own one-time login code
/// (and the console's a one-time code of the cloud, when `cloud` is given)
/// in its fragment, which a browser never sends to a server. The page
/// trades them for tokens (`POST /v1/login`) and takes them out of the
/// address bar; each code is good once, for 15 minutes.
pub async fn login_urls(
    node: &cairn_client::Client,
    cloud: Option<&CloudClient>,
    url: Option<&str>,
) -> Result<(String, String), CliError> {
    let base = match url {
        Some(url) => {
            cairn_client::base_url(url).map_err(|e| CliError::Usage(format!("--url {url}: {e}")))?
        }
        None => node.base().to_string(),
    };
    let role = cairn_client::views::Role::Admin;
    let console = node.create_login_code("console login", role).await?.token;
    let todo = node.create_login_code("todo app login", role).await?.token;
    let mut console_url = format!("{base}/#code={}", url_encode(&console));
    if let Some(cloud) = cloud {
        let code = cloud.login_code().await?;
        console_url +=
            &format!("&cloud={}&cloud_code={}", url_encode(cloud.base()), url_encode(&code));
    }
    Ok((console_url, format!("{base}/apps/todo/#code={}", url_encode(&todo))))
}

/// `text` percent-encoded for a URL's query or fragment.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `cairn console`: prints fresh login URLs of the console and the todo app.
pub async fn console(global: &crate::args::Global, args: ConsoleArgs) -> ExitCode {
    let output = global.output;
    let node = match global.client(&global.addr) {
        Ok(node) => node,
        Err(e) => return crate::output::usage(output, &e),
    };
    let cloud = if args.no_cloud {
        None
    } else {
        match cloud_client(&args.cloud.cloud, &args.cloud.cloud_token_file) {
            Ok(cloud) => Some(cloud),
            Err(e) => return fail(output, e),
        }
    };
    match login_urls(&node, cloud.as_ref(), args.url.as_deref()).await {
        Ok((console, todo)) => {
            let urls = json!({ "console": console, "todo": todo });
            crate::output::success(output, &urls, || {
                format!("console:  {console}\ntodo app: {todo}\n(each link logs in once, within 15 minutes)")
            })
        }
        Err(e) => fail(output, e),
    }
}

/// Prints the login URLs of a `cairn up` cluster, once per run of `cairn
/// up` (each holds one-time codes; `cairn console` makes more).
async fn print_login_urls(
    time: &humantime::Rfc3339Timestamp,
    api_address: &str,
    cloud: std::net::SocketAddr,
    cloud_token_file: &Path,
) {
    static PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if PRINTED.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let Some(dir) = cloud_token_file.parent() else { return };
    let made = async {
        let token = cairn_util::secret::read(&dir.join(cairn_cloud::NODE_TOKEN_FILE))
            .map_err(|e| CliError::Usage(format!("cannot read the admin token: {e}")))?;
        let tls = cairn_tls::api_client(&dir.join("ca").join("ca.crt"))
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let timeout = Duration::from_millis(cairn_client::REQUEST_TIMEOUT_MS_DEFAULT);
        let node =
            cairn_client::Client::with_tls(api_address, timeout, Some(tls))?.with_token(token);
        let cloud = cloud_client(&cloud.to_string(), cloud_token_file)?;
        login_urls(&node, Some(&cloud), None).await
    };
    match made.await {
        Ok((console, todo)) => {
            PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
            println!("{time}   console: {console}");
            println!("{time}   todo app: {todo}");
            println!(
                "{time}   (each link logs in once, within 15 minutes; `cairn console` makes more)"
            );
        }
        Err(e) => println!("{time}   console: no login link ({e}); `cairn console` makes one"),
    }
}

/// Creates `host-1` when the cloud has no host: the host whose agent
/// bootstraps the cluster.
async fn first_host(
    cloud: std::net::SocketAddr,
    token_file: &std::path::Path,
    zone: &str,
    host_type: &str,
) -> Result<(), CliError> {
    let client = cloud_client(&cloud.to_string(), token_file)?;
    if !client.hosts().await?.is_empty() {
        return Ok(());
    }
    let request =
        CreateHost { name: "host-1".into(), zone: zone.into(), host_type: host_type.into() };
    client.create_host(&request).await?;
    Ok(())
}

pub async fn down(output: Output, args: CloudArg) -> ExitCode {
    let client = match cloud_client(&args.cloud, &args.cloud_token_file) {
        Ok(client) => client,
        Err(e) => return fail(output, e),
    };
    let base = client.base().to_string();
    if let Err(e) = client.shutdown().await {
        return fail(output, e.into());
    }
    if output == Output::Text {
        println!("stopping the cluster at {base}…");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(DOWN_WAIT_MS);
    while tokio::time::Instant::now() < deadline {
        if client.health().await.is_err() {
            let stopped = json!({ "stopped": true, "cloud": base });
            return crate::output::success(output, &stopped, || "stopped; the data is kept".into());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fail(
        output,
        CliError::Usage(format!("the cloud at {base} still answers after {DOWN_WAIT_MS} ms")),
    )
}

pub async fn apply(output: Output, args: ApplyArgs) -> ExitCode {
    let (text, desired) = match read_desired(&args.file) {
        Ok(read) => read,
        Err(e) => return fail(output, e),
    };
    let client = match cloud_client(&args.cloud.cloud, &args.cloud.cloud_token_file) {
        Ok(client) => client,
        Err(e) => return fail(output, e),
    };
    let record = match client.put_desired(text).await {
        Ok(record) => record,
        Err(ClientError::Refused { message, .. }) => {
            let path = args.file.clone();
            let message = format!("the cloud refused desired state {}: {message}", desired.id);
            return fail(output, CliError::Desired { path, message });
        }
        Err(e) => return fail(output, e.into()),
    };
    let body = serde_json::to_value(&record).unwrap_or(Value::Null);
    crate::output::success(output, &body, || {
        format!("submitted desired state {}; follow it with `cairn status --watch`", desired.id)
    })
}

pub async fn status(global: &crate::args::Global, args: StatusArgs) -> ExitCode {
    let output = global.output;
    loop {
        // The cloud joins its hosts with the nodes (`GET /v1/cluster`).
        let gathered = match cloud_client(&args.cloud.cloud, &args.cloud.cloud_token_file) {
            Ok(client) => client.cluster().await.map_err(CliError::from),
            Err(e) => Err(e),
        };
        let view = match gathered {
            Ok(view) => view,
            Err(e) => return fail(output, e),
        };
        match output {
            Output::Json => println!("{}", serde_json::to_value(&view).unwrap_or(Value::Null)),
            Output::Text => {
                if args.watch {
                    print!("\x1b[2J\x1b[H");
                }
                println!("{}", render(&view));
            }
        }
        if !args.watch {
            return ExitCode::SUCCESS;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn render(view: &StatusView) -> String {
    let r = &view.reconciliation;
    let mut out = match r["state"].as_str() {
        Some(state) => format!(
            "reconciliation: {state}, desired state {}{}\n",
            r["desired_id"],
            r["step"].as_str().map(|s| format!(", step: {s}")).unwrap_or_default()
        ),
        None => "reconciliation: not reported yet\n".to_string(),
    };
    if let Some(message) = r["message"].as_str().filter(|m| !m.is_empty()) {
        out.push_str(&format!("  {message}\n"));
    }
    if let Some(version) = &view.cluster_version {
        out.push_str(&format!("cluster version: {version}\n"));
    }
    out.push_str(&format!(
        "\n{:<10} {:<10} {:<10} {:<5} {:<9} {:<8} {:>9}  {}\n",
        "HOST", "ZONE", "STATE", "NODE", "ROLE", "VERSION", "APPLIED", "API"
    ));
    for host in &view.hosts {
        let node = view.nodes.iter().find(|n| n.address.as_deref() == Some(&host.api_address));
        let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
        let role = node.and_then(|n| n.role).map(|role| match role {
            cairn_client::NodeRole::Leader => "leader".to_string(),
            cairn_client::NodeRole::Follower => "follower".to_string(),
        });
        out.push_str(&format!(
            "{:<10} {:<10} {:<10} {:<5} {:<9} {:<8} {:>9}  {}\n",
            host.name,
            host.zone,
            host.state.as_str(),
            or_dash(node.map(|n| n.id.to_string())),
            or_dash(role),
            or_dash(node.and_then(|n| n.version.clone())),
            or_dash(node.and_then(|n| n.applied_index).map(|i| i.to_string())),
            host.api_address,
        ));
    }
    if !view.backups.is_empty() {
        out.push_str(&format!(
            "\n{:<40} {:>9}  {:<20}  {:>12} {:>9}\n",
            "BACKUP (SINK/NAME)", "INDEX", "TAKEN", "BYTES", "TOOK"
        ));
        for backup in &view.backups {
            out.push_str(&format!(
                "{:<40} {:>9}  {:<20}  {:>12} {:>7}ms\n",
                format!("{}/{}", backup.sink, backup.name),
                backup.applied_index,
                utc(backup.created_ms),
                backup.bytes,
                backup.duration_ms
            ));
        }
    }
    out
}

/// Milliseconds since the Unix epoch as RFC 3339 to the second, UTC.
fn utc(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A client of the cloud named by `--cloud`; the error names the address.
/// Sends the admin token from `token_file` when the file is there (the cloud
/// answers 401 naming the file when the token is missing or wrong).
fn cloud_client(address: &str, token_file: &std::path::Path) -> Result<CloudClient, CliError> {
    let token = cairn_util::secret::read(token_file).map_err(|source| CliError::Io {
        what: "read the cloud's admin token from",
        path: token_file.to_path_buf(),
        source,
    })?;
    Ok(CloudClient::new(address, Duration::from_millis(CALL_TIMEOUT_MS))?.with_token(token))
}

/// A desired state file's text and what it says; the error names the file
/// and the field.
fn read_desired(file: &Path) -> Result<(String, cairn_control::desired::DesiredState), CliError> {
    let path = file.to_path_buf();
    let text = std::fs::read_to_string(file).map_err(|source| CliError::Io {
        what: "read",
        path: path.clone(),
        source,
    })?;
    let desired = cairn_control::desired::parse(&text)
        .and_then(|d| cairn_control::desired::check_supported(&d).map(|()| d))
        .map_err(|e| CliError::Desired { path, message: e.to_string() })?;
    Ok((text, desired))
}

/// How long `cairn backup --via-cloud` waits for the control plane.
const VIA_CLOUD_WAIT_MS: u64 = 300_000;

/// `cairn backup --via-cloud`: a backup added to (or removed from) the
/// desired state's `backups`, submitted to the cloud as `cairn apply`
/// would, then followed in the control plane's reports until it is taken
/// (or deleted). `list` shows the backups the control plane keeps.
pub async fn backup_via_cloud(output: Output, args: BackupArgs) -> ExitCode {
    let client = match cloud_client(&args.cloud, &args.cloud_token_file) {
        Ok(client) => client,
        Err(e) => return fail(output, e),
    };
    match via_cloud(&client, args.command).await {
        Ok((body, text)) => crate::output::success(output, &body, || text),
        Err(e) => fail(output, e),
    }
}

async fn via_cloud(
    client: &CloudClient,
    command: BackupCommand,
) -> Result<(Value, String), CliError> {
    if let BackupCommand::List { sink } = command {
        let kept = client.status().await?.last.map(|report| report.backups).unwrap_or_default();
        let kept: Vec<_> =
            kept.into_iter().filter(|b| sink.as_ref().is_none_or(|s| *s == b.sink)).collect();
        let text = if kept.is_empty() {
            "no backups kept by the control plane".to_string()
        } else {
            let rows: Vec<String> = kept
                .iter()
                .map(|b| {
                    let kind = if b.slot_ms.is_some() { "scheduled" } else { "on demand" };
                    let taken = if b.taken { "taken" } else { "being taken" };
                    format!("{}/{}  {kind}  {taken}", b.sink, b.name)
                })
                .collect();
            rows.join("\n")
        };
        return Ok((serde_json::json!({ "backups": kept }), text));
    }
    let record = client.desired().await?.ok_or_else(|| {
        CliError::Control("the cloud has no desired state yet: start with `cairn up`".into())
    })?;
    let mut desired = cairn_control::desired::parse(&record.text).map_err(|e| {
        CliError::Control(format!("the cloud's desired state {} does not parse: {e}", record.id))
    })?;
    let (name, sink, adding) = match command {
        BackupCommand::Create { here: true, .. } => {
            return Err(CliError::Usage(
                "--here names a node; --via-cloud lets the control plane choose one".into(),
            ))
        }
        BackupCommand::Create { name, sink, .. } => (name, sink, true),
        BackupCommand::Delete { name, sink } => (name, sink, false),
        BackupCommand::List { .. } => unreachable!("answered above"),
    };
    let listed = desired.backups.iter().position(|b| b.name == name && b.sink == sink);
    match (adding, listed) {
        (true, Some(_)) | (false, None) => {
            let what = if adding { "already lists" } else { "does not list" };
            let text = format!(
                "desired state {} {what} backup {sink}/{name}: nothing to submit",
                record.id
            );
            return Ok((serde_json::json!({ "desired_id": record.id, "changed": false }), text));
        }
        (true, None) => desired
            .backups
            .push(cairn_control::desired::Backup { name: name.clone(), sink: sink.clone() }),
        (false, Some(at)) => {
            desired.backups.remove(at);
        }
    }
    desired.id = record.id + 1;
    let id = desired.id;
    client.put_desired(desired.to_jsonc()).await.map_err(|e| match e {
        ClientError::Refused { message, .. } => {
            CliError::Control(format!("the cloud refused desired state {id}: {message}"))
        }
        other => other.into(),
    })?;
    // Followed through the leader's reports: done once it reports a state
    // as new as ours at the desired state, with the backup kept (or gone).
    let started = std::time::Instant::now();
    let mut last = String::new();
    loop {
        if let Some(report) = client.status().await?.last {
            let kept = report.backups.iter().find(|b| b.name == name && b.sink == sink);
            let current = report.desired_id >= id;
            last = format!("{:?}: {}", report.state, report.message);
            if current && report.state == ReconcileState::ErrorState {
                return Err(CliError::Control(format!(
                    "the control plane failed desired state {id}: {}",
                    report.message
                )));
            }
            let done = current
                && report.state == ReconcileState::AtDesiredState
                && kept.is_some_and(|b| b.taken) == adding;
            if done {
                let text = if adding {
                    format!("backup {sink}/{name} taken by the control plane (desired state {id})")
                } else {
                    format!(
                        "backup {sink}/{name} deleted by the control plane (desired state {id})"
                    )
                };
                let body = serde_json::json!({
                    "desired_id": id, "changed": true, "name": name, "sink": sink, "taken": adding,
                });
                return Ok((body, text));
            }
        }
        if started.elapsed() > Duration::from_millis(VIA_CLOUD_WAIT_MS) {
            return Err(CliError::Control(format!(
                "desired state {id} was submitted, but the control plane did not report it done \
                 within {} s; its last report: {last}",
                VIA_CLOUD_WAIT_MS / 1000
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn fail(output: Output, error: CliError) -> ExitCode {
    crate::output::failed(output, "control", &error.to_string())
}
