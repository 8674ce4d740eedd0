//! Cairn's cloud: it gives a cluster its hosts, serves the desired state, and
//! logs the leader agent's status. `cairn cloud` runs it alone; `cairn up`
//! runs it in the foreground and prints its [`StatusEvent`]s.
//!
//! - `local`: the `local` provider. A host is a directory
//!   `<root>/hosts/<name>/` and one agent process on loopback ports, started,
//!   supervised and restarted by the cloud.
//! - `inventory`: the hosts the cloud made, kept in `<root>/inventory.json`,
//!   and the rule that gives host number `n` its ports.
//! - `ports`: the kernel's ephemeral port range, which host ports stay out
//!   of.
//! - `process`: starting agents and signalling process groups.
//! - `desired`: the desired state, from the watched file or `PUT
//!   /v1/desired`, kept in `<root>/desired_state.jsonc`.
//! - `status`: the leader's reports, their transitions, and the events.
//! - `view`: the hosts joined with the nodes (`GET /v1/cluster`, what
//!   `cairn status` shows).
//! - `routes`: the HTTP API (its table is in that module).
//!
//! A cloud's life: [`Cloud::start`] binds, loads what a previous run kept
//! and starts the agents of the active hosts (they reach the cloud at its
//! bound address, and wait for it to serve); [`Cloud::serve`] answers
//! requests and watches the desired-state file until its shutdown future
//! completes or `POST /v1/shutdown` arrives; then it stops every agent
//! (SIGTERM, up to 15 s, SIGKILL) and returns. The inventory and the host
//! directories stay, so the next start brings the same hosts back.
//!
//! Invariants: a host number is never given twice, so host ports never
//! change hands; the desired state served is the newest valid submission;
//! every change of the inventory or the desired state is on disk before the
//! request that made it is answered.
//!
//! Not handled: several clouds on one root (nothing stops a second one
//! from managing the same hosts; don't), authentication (see `routes`), and
//! the `docker` and `kubernetes` providers (only `local` exists so far).

use std::future::{Future, IntoFuture};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{broadcast, oneshot, Notify};

mod client;
mod desired;
mod error;
mod inventory;
mod local;
pub mod ports;
mod process;
mod routes;
mod status;
mod view;

pub use client::{ClientError, CloudClient};
pub use desired::{
    DesiredRecord, DesiredSource, DESIRED_POLL_MS, DESIRED_STATE_FILE, DESIRED_TEXT_BYTES_MAX,
};
pub use error::Error;
pub use inventory::{Ports, INVENTORY_FILE, PORTS_PER_HOST};
pub use local::{
    CreateHost, Host, HostState, AGENT_STABLE_MS, DELETE_GRACE_MS, HOSTS_DIR,
    QUICK_EXITS_BEFORE_BACKOFF, RESTART_DELAY_MS, RESTART_DELAY_MS_MAX, SHUTDOWN_GRACE_MS,
};
pub use process::{AGENT_LOG_FILE, NODE_PID_FILE};
pub use routes::{HOST_BODY_BYTES_MAX, STATUS_BODY_BYTES_MAX};
pub use status::{HostChange, StatusEvent, StatusSnapshot, Transition, STATUS_HISTORY_MAX};
pub use view::{HostRow, StatusView, NODE_CALL_TIMEOUT_MS};

use desired::DesiredStore;
use local::{LocalProvider, ProviderConfig};
use status::{Events, StatusLog};

/// The base port by default: host 1 serves its API on 7001.
pub const BASE_PORT_DEFAULT: u16 = 7000;
/// How long requests still open at shutdown may run before they are cut.
pub const SERVE_DRAIN_MS: u64 = 5_000;

/// Where under the root the cluster's CA is kept (`ca.crt`, `ca.key`).
pub const CA_DIR: &str = "ca";
/// The file under the root that holds the cloud's admin token (made on the
/// first start, readable by its owner only): every request but
/// `GET /v1/health` carries it as `Authorization: Bearer <token>`.
pub const TOKEN_FILE: &str = "cloud.token";
/// The file under the root that holds the cluster's admin token: every
/// node starts with it (`--admin-token-file`), agents send it to their
/// nodes, and the CLI finds it here (`.cairn/admin.token`).
pub const NODE_TOKEN_FILE: &str = "admin.token";
/// Where every node of the cluster keeps its backups (`--backup-dir`), in
/// the cloud's directory.
pub const BACKUPS_DIR: &str = "backups";
/// The directory under the root whose files the cloud serves at
/// `GET /artifacts/{file}`: release artifacts (`cairn release --out
/// .cairn/artifacts`), for a desired state whose `artifacts` is the
/// cloud's URL, as a web server of releases would.
pub const ARTIFACTS_DIR: &str = "artifacts";

/// Makes the cluster's CA on the first start; checks it on the others.
fn open_ca(dir: &std::path::Path) -> Result<(), Error> {
    let opened = if dir.join(cairn_tls::CA_CERT_FILE).exists() {
        cairn_tls::Ca::load(dir).map(drop)
    } else {
        tracing::info!(dir = %dir.display(), "making the cluster's certificate authority");
        cairn_tls::Ca::create(dir).map(drop)
    };
    opened.map_err(|e| Error::Config(format!("the cluster's certificate authority: {e}")))
}

/// A cloud's settings.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// Holds the inventory, the desired state and the host directories.
    pub root: PathBuf,
    /// Where the cloud's API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The desired-state file to watch, if any.
    pub desired_file: Option<PathBuf>,
    /// The `cairn` binary agents run (`<agent_bin> agent …`).
    pub agent_bin: PathBuf,
    /// Host `n` gets ports `base_port + 10 (n - 1) + 1 ..= + 3`.
    pub base_port: u16,
    /// Lets the API listen beyond loopback. It speaks plain HTTP, so its
    /// admin token then crosses the network in the clear; without this, an
    /// address that is not loopback is refused.
    pub insecure: bool,
}

impl CloudConfig {
    /// Settings with no watched file and [`BASE_PORT_DEFAULT`].
    pub fn new(root: PathBuf, listen: SocketAddr, agent_bin: PathBuf) -> CloudConfig {
        CloudConfig {
            root,
            listen,
            desired_file: None,
            agent_bin,
            base_port: BASE_PORT_DEFAULT,
            insecure: false,
        }
    }
}

/// What the routes share.
pub(crate) struct Shared {
    pub provider: Arc<LocalProvider>,
    pub desired: Arc<DesiredStore>,
    pub status: StatusLog,
    /// Woken by `POST /v1/shutdown`.
    pub shutdown: Notify,
    /// The admin token every request but `GET /v1/health` must carry.
    pub token: String,
    /// One-time login codes (`POST /v1/login-codes`), each good for one
    /// `POST /v1/login` until its time (ms since the Unix epoch); kept in
    /// memory only, so a restarted cloud has none.
    pub login_codes: std::sync::Mutex<Vec<(String, u64)>>,
    /// `<root>/artifacts`, served read-only at `GET /artifacts/{file}`.
    pub artifacts_dir: std::path::PathBuf,
    /// The nodes' admin token and the cluster's CA certificate, to ask the
    /// nodes for `GET /v1/cluster`.
    pub node_token_file: std::path::PathBuf,
    pub ca_cert: std::path::PathBuf,
}

/// How long a cloud login code is good for: 15 minutes.
pub const LOGIN_CODE_MS: u64 = 15 * 60 * 1000;
/// The most login codes a cloud holds at once; the oldest goes first.
pub const LOGIN_CODES_MAX: usize = 64;

/// A cloud, bound and with its agents started: call [`Cloud::serve`]. (A
/// cloud dropped without serving leaves its agents running.)
pub struct Cloud {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    events: Events,
}

impl Cloud {
    /// Binds `listen`, loads the inventory and the kept desired state, and
    /// starts the agents of the hosts that are not failed.
    pub async fn start(config: CloudConfig) -> Result<Cloud, Error> {
        let Some(first) = Ports::for_number(config.base_port, 1) else {
            return Err(Error::Config(format!(
                "base port {} leaves no room for a host",
                config.base_port
            )));
        };
        if let Some(range) = ports::avoided_range() {
            if first.overlap(&range) {
                return Err(Error::Config(format!(
                    "base port {}: host 1's ports {}-{} fall in the kernel's ephemeral port \
                     range {}-{} (net.ipv4.ip_local_port_range), where any outgoing \
                     connection may take one and keep the host's node from starting; choose \
                     a base port below {} (`cairn up` and `cairn cloud` take it from the \
                     port of --listen)",
                    config.base_port,
                    first.api,
                    first.agent,
                    range.start(),
                    range.end(),
                    u32::from(*range.start()) - PORTS_PER_HOST,
                )));
            }
        }
        if !config.listen.ip().is_loopback() {
            if !config.insecure {
                return Err(Error::Config(format!(
                    "the cloud's API speaks plain HTTP, so it listens on loopback only, not on \
                     {}: its admin token would cross the network in the clear (--insecure \
                     accepts that)",
                    config.listen
                )));
            }
            tracing::warn!(
                listen = %config.listen,
                "the cloud's API listens beyond loopback in plain HTTP (--insecure): its admin \
                 token crosses the network in the clear"
            );
        }
        std::fs::create_dir_all(&config.root)
            .map_err(|e| Error::io("cannot create the cloud's root", &config.root, e))?;
        let root = std::fs::canonicalize(&config.root)
            .map_err(|e| Error::io("cannot resolve the cloud's root", &config.root, e))?;
        let agent_bin = process::resolve_bin(&config.agent_bin)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen { addr: config.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| Error::Listen { addr: config.listen, source })?;
        let events = Events::new();
        let desired =
            Arc::new(DesiredStore::open(&root, config.desired_file.clone(), events.clone())?);
        let ca_dir = root.join(CA_DIR);
        open_ca(&ca_dir)?;
        let token_file = root.join(TOKEN_FILE);
        let token = cairn_util::secret::load_or_create(&token_file)
            .map_err(|e| Error::io("cannot make or read the admin token", &token_file, e))?;
        let node_token_file = root.join(NODE_TOKEN_FILE);
        cairn_util::secret::load_or_create(&node_token_file).map_err(|e| {
            Error::io("cannot make or read the nodes' admin token", &node_token_file, e)
        })?;
        let backup_dir = root.join(BACKUPS_DIR);
        let artifacts_dir = root.join(ARTIFACTS_DIR);
        let ca_cert = ca_dir.join(cairn_tls::CA_CERT_FILE);
        let node_token_for_views = node_token_file.clone();
        let provider_config = ProviderConfig {
            root,
            agent_bin,
            base_port: config.base_port,
            cloud_url: cloud_url(local_addr),
            ca_dir,
            token_file,
            node_token_file,
            backup_dir,
        };
        let provider = LocalProvider::open(provider_config, events.clone())?;
        provider.resume().await;
        let status = StatusLog::new(events.clone());
        let shared = Arc::new(Shared {
            provider,
            desired,
            status,
            shutdown: Notify::new(),
            token,
            login_codes: std::sync::Mutex::default(),
            artifacts_dir,
            node_token_file: node_token_for_views,
            ca_cert,
        });
        tracing::info!(%local_addr, "cloud started");
        Ok(Cloud { listener, local_addr, shared, events })
    }

    /// The address the API is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Every status transition, desired-state acceptance or refusal and host
    /// change from now on, as they happen (for `cairn up` to print).
    pub fn status_events(&self) -> broadcast::Receiver<StatusEvent> {
        self.events.subscribe()
    }

    /// Serves the API and watches the desired-state file until `shutdown`
    /// completes or `POST /v1/shutdown` arrives; then stops every agent
    /// (SIGTERM, up to [`SHUTDOWN_GRACE_MS`], then SIGKILL to their process
    /// groups) and returns.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Cloud { listener, shared, .. } = self;
        // One look before serving, so the first answer already knows the file.
        shared.desired.poll_file();
        let watcher = tokio::spawn(Arc::clone(&shared.desired).watch());
        let (draining_tx, draining_rx) = oneshot::channel::<()>();
        let asked = Arc::clone(&shared);
        let signal = async move {
            tokio::select! {
                () = shutdown => {}
                () = asked.shutdown.notified() => {}
            }
            tracing::info!("the cloud is shutting down");
            let _ = draining_tx.send(());
        };
        let server = axum::serve(listener, routes::router(Arc::clone(&shared)))
            .with_graceful_shutdown(signal)
            .into_future();
        // Graceful shutdown waits for every open request; bound that wait.
        let drained = async {
            match draining_rx.await {
                Ok(()) => tokio::time::sleep(Duration::from_millis(SERVE_DRAIN_MS)).await,
                Err(_) => std::future::pending().await,
            }
        };
        let served = tokio::select! {
            result = server => result.map_err(Error::Serve),
            () = drained => {
                tracing::warn!("requests still open {SERVE_DRAIN_MS} ms after shutdown began; closing them");
                Ok(())
            }
        };
        watcher.abort();
        shared.provider.shutdown().await;
        tracing::info!("cloud stopped");
        served
    }
}

/// The URL agents reach the cloud at: loopback when it listens on every
/// interface.
fn cloud_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

pub(crate) use cairn_util::now_ms;

pub(crate) use cairn_util::lock;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_reach_the_cloud_on_loopback() {
        let any: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        assert_eq!(cloud_url(any), "http://127.0.0.1:7000");
        let any6: SocketAddr = "[::]:7000".parse().expect("addr");
        assert_eq!(cloud_url(any6), "http://[::1]:7000");
        let one: SocketAddr = "10.0.0.5:7000".parse().expect("addr");
        assert_eq!(cloud_url(one), "http://10.0.0.5:7000");
    }
}
