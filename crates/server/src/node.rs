//! Running a node: open the store, start the log, serve the API until told to
//! stop, then let the log finish its last batch.
//!
//! A node runs one of two logs:
//! - **single node** (no `peers`, or a configuration of one member): the
//!   local group-commit log;
//! - **replicated**: OmniPaxos over the peer transport.
//!
//! Which one comes from the membership stored with the data. On an empty data
//! directory the node starts a new cluster of `peers`, or joins a running
//! cluster through `join` (the HTTP address of any member: the node asks to
//! be added and gets the new configuration back), or runs alone. Later starts
//! use what is stored (like etcd's initial-cluster flags, `peers` is then
//! only checked against it). A membership change can turn one kind into the
//! other while the node serves: the log hands its queue of requests and its
//! state machine over, and the API never notices.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_consensus::driver::{DriverConfig, Hello};
use cairn_consensus::replica::Timing;
use cairn_consensus::replicated::{self, ReplicatedConfig};
use cairn_consensus::{Handover, LocalLog, LogThread, Membership, Proposer};
use cairn_storage::{Durability, StateMachine, Store};
use cairn_transport::{Event, Transport, TransportConfig, TransportHandle};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::routes::router;
use crate::state::AppState;

/// Largest request body accepted by default: 16 MiB.
pub const MAX_BODY_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// The most `--max-body-bytes` may be: what a body turns into (one log
/// entry) stays under [`cairn_storage::COMMAND_BYTES_MAX`], with room for
/// what JSON documents gain when stored (ids, numbers written out).
pub const MAX_BODY_BYTES_LIMIT: usize = 32 * 1024 * 1024;
const _: () = assert!(MAX_BODY_BYTES_LIMIT < cairn_storage::COMMAND_BYTES_MAX);
/// How long a joining node keeps asking to be added.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a write may wait for its answer by default.
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The replica's tick by default.
pub const TICK_MS_DEFAULT: u64 = 10;
/// One round of leader election by default; a dead leader is replaced after
/// about two rounds.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 250;
/// Changefeeds a node serves at once by default.
pub const FEEDS_MAX_DEFAULT: usize = 512;
/// Log entries kept behind the applied index by default.
pub const LOG_RETAIN_ENTRIES_DEFAULT: u64 = 10_000;

/// Why a node that replicates without certificates is refused.
const NO_CERTIFICATES: &str = "a node that replicates needs certificates, so that only the \
    cluster's nodes can be its peers: give --certs-dir DIR (make them with `cairn cert`), or \
    --insecure to let peers talk plain TCP with no authentication (tests and development only)";

/// A node's settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Where clients reach the API when that is not `listen` (`HOST:PORT`:
    /// a port a container publishes, a name behind a proxy): what the node
    /// tells its peers and lists in `/v1/cluster`.
    pub advertise: Option<String>,
    pub zone: Option<String>,
    pub max_body_bytes: usize,
    /// HTTP connections served at once; more wait.
    pub max_connections: usize,
    pub write_timeout_ms: u64,
    /// Where peers reach this node (replicated mode).
    pub peer_listen: Option<SocketAddr>,
    /// Every member's peer address, this node's included: the initial
    /// configuration of a new cluster. Empty for a single node.
    pub peers: BTreeMap<u64, SocketAddr>,
    pub tick_ms: u64,
    pub election_timeout_ms: u64,
    /// Log entries kept behind the applied index for peers that lag.
    pub log_retain_entries: u64,
    /// On an empty data directory: the HTTP address of a member of a running
    /// cluster to join.
    pub join: Option<String>,
    /// What requests from browsers must show (the names this node answers
    /// to beyond addresses and `localhost`).
    pub browser: cairn_util::browser::Policy,
    /// Where this node's certificates are (`ca.crt`, `node-<id>.crt`,
    /// `node-<id>.key`; see `cairn cert`): peers then talk over mutual TLS.
    pub certs_dir: Option<PathBuf>,
    /// Lets peers talk plain TCP and clients in with no token (tests and
    /// development). A node that replicates needs this or `certs_dir`.
    pub insecure: bool,
    /// The node's admin token (see [`crate::auth`]); read from
    /// `admin_token_file` at start when not given.
    pub admin_token: Option<cairn_util::secret::Secret>,
    /// Where the admin token is, made there when missing; by default
    /// `admin.token` in the data directory.
    pub admin_token_file: Option<PathBuf>,
    /// How much change history the node keeps for changefeeds to resume
    /// from (see [`cairn_storage::changes`]).
    pub changes_window: cairn_storage::changes::Window,
    /// Changefeeds open at once; one more gets 503. Kept below
    /// `max_connections` ([`NodeConfig::feeds_cap`]).
    pub feeds_max: usize,
    /// Where `/v1/admin/backups` keeps this node's backups (a directory
    /// sink, see [`cairn_storage::backup`]); `None`: backups are refused.
    pub backup_dir: Option<PathBuf>,
}

impl NodeConfig {
    pub fn new(id: u64, data_dir: PathBuf, listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            id,
            data_dir,
            listen,
            advertise: None,
            zone: None,
            max_body_bytes: MAX_BODY_BYTES_DEFAULT,
            max_connections: crate::http::MAX_CONNECTIONS_DEFAULT,
            write_timeout_ms: WRITE_TIMEOUT_MS_DEFAULT,
            peer_listen: None,
            peers: BTreeMap::new(),
            tick_ms: TICK_MS_DEFAULT,
            election_timeout_ms: ELECTION_TIMEOUT_MS_DEFAULT,
            log_retain_entries: LOG_RETAIN_ENTRIES_DEFAULT,
            join: None,
            browser: cairn_util::browser::Policy::default(),
            certs_dir: None,
            insecure: false,
            admin_token: None,
            admin_token_file: None,
            changes_window: cairn_storage::changes::Window::default(),
            feeds_max: FEEDS_MAX_DEFAULT,
            backup_dir: None,
        }
    }

    /// Whether the node may talk to peers: it has peers, joins a cluster,
    /// or listens for peers to grow.
    fn may_replicate(&self) -> bool {
        !self.peers.is_empty() || self.join.is_some() || self.peer_listen.is_some()
    }

    /// Checks the settings against each other and against the limits that
    /// hold for the whole cluster (see `docs/security.md`, "Limits").
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_body_bytes == 0 || self.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(Error::Config(format!(
                "--max-body-bytes must be 1 to {MAX_BODY_BYTES_LIMIT} (got {}): a body becomes \
                 one log entry, and an entry must fit in one peer message",
                self.max_body_bytes
            )));
        }
        if self.feeds_max == 0 {
            return Err(Error::Config("--feeds-max must be at least 1".into()));
        }
        if self.max_connections == 0 {
            return Err(Error::Config("--max-connections must be at least 1".into()));
        }
        if self.insecure && (self.admin_token.is_some() || self.admin_token_file.is_some()) {
            return Err(Error::Config(
                "--insecure lets every client in: it takes no --admin-token-file".into(),
            ));
        }
        if self.insecure && self.certs_dir.is_some() {
            return Err(Error::Config("--insecure and --certs-dir exclude each other".into()));
        }
        if self.may_replicate() && self.certs_dir.is_none() && !self.insecure {
            return Err(Error::Config(NO_CERTIFICATES.into()));
        }
        if !self.listen.ip().is_loopback() && self.certs_dir.is_none() && !self.insecure {
            return Err(Error::Config(format!(
                "--listen {} is not a loopback address: clients would send their tokens and \
                 data in the clear. Give --certs-dir DIR (the API then speaks HTTPS), listen \
                 on 127.0.0.1, or --insecure (tests and development only)",
                self.listen
            )));
        }
        Ok(())
    }

    /// The feeds served at once: `feeds_max`, but fewer than the
    /// connections, so that a node full of feeds still answers requests.
    pub fn feeds_cap(&self) -> usize {
        self.feeds_max.min(self.max_connections.saturating_sub(1)).max(1)
    }

    /// The address clients should use for this node: `advertise`, else the
    /// address it listens on.
    pub fn advertise_address(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.listen.to_string())
    }
}

/// Why a node stopped other than by being asked to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the data directory {dir}: {source}")]
    Open { dir: PathBuf, source: cairn_storage::Error },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start the log: {0}")]
    Log(std::io::Error),
    #[error("bad cluster settings: {0}")]
    Cluster(String),
    #[error("bad settings: {0}")]
    Config(String),
    #[error("cannot use the certificates: {0}")]
    Certificates(#[from] cairn_tls::Error),
    #[error("cannot start replication: {0}")]
    Replication(String),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("the log stopped after a storage fault; restart the node to recover from disk")]
    LogFailed,
}

/// A node bound to its port, ready to serve.
pub struct Node {
    listener: TcpListener,
    state: AppState,
    log: LogThread,
    /// The node's peer TLS settings (from `--certs-dir`), for every
    /// transport it starts.
    peer_tls: Option<cairn_tls::PeerTls>,
    transport: Option<TransportHandle>,
}

/// Decides the membership this node runs in: the stored one, a new cluster
/// of `peers`, one joined through `join`, or none (a single node).
async fn membership(config: &NodeConfig, store: &Store) -> Result<Option<Membership>, Error> {
    let cluster = |e: cairn_consensus::membership::MembershipError| Error::Cluster(e.to_string());
    if let Some(stored) = Membership::load(store).map_err(cluster)? {
        if !config.peers.is_empty() && config.peers != stored.members {
            tracing::info!(
                stored = ?stored.members,
                "--peers differs from the configuration stored in the data directory; using the stored one"
            );
        }
        if !stored.contains(config.id) {
            return Err(Error::Cluster(format!(
                "this data directory belongs to node(s) {:?} of configuration {}, not node {}",
                stored.ids(),
                stored.configuration_id,
                config.id
            )));
        }
        return Ok(Some(stored));
    }
    if let Some(join) = &config.join {
        if store.applied_index() > 0 {
            return Err(Error::Cluster(format!(
                "--join needs an empty data directory; {} holds data (applied index {})",
                config.data_dir.display(),
                store.applied_index()
            )));
        }
        let joined = join_cluster(config, join).await?;
        joined.begin(store).map_err(cluster)?;
        return Ok(Some(joined));
    }
    if config.peers.is_empty() {
        return Ok(None);
    }
    if !config.peers.contains_key(&config.id) {
        return Err(Error::Cluster(format!(
            "--peers must name this node ({}) with its peer address; it names {:?}",
            config.id,
            config.peers.keys().collect::<Vec<_>>()
        )));
    }
    if config.peers.len() < 2 {
        return Err(Error::Cluster(
            "--peers names one node: leave it out to run a single node, or name 3 or 5".into(),
        ));
    }
    if store.applied_index() > 0 {
        return Err(Error::Cluster(format!(
            "the data directory holds a single node's data (applied index {}): it cannot \
             start a new cluster; add members to the running node instead (cairn member add)",
            store.applied_index()
        )));
    }
    let first = Membership::new_cluster(config.peers.clone()).map_err(cluster)?;
    first.begin(store).map_err(cluster)?;
    Ok(Some(first))
}

/// Asks a member of a running cluster to add this node, until it answers
/// with a configuration that includes it.
async fn join_cluster(config: &NodeConfig, join: &str) -> Result<Membership, Error> {
    let peer_address = config.peer_listen.ok_or_else(|| {
        Error::Cluster("--join needs --peer-listen: the address peers reach this node at".into())
    })?;
    // With certificates, the members' APIs speak HTTPS with the same CA.
    let tls = match &config.certs_dir {
        Some(dir) => Some(cairn_tls::api_client(&dir.join(cairn_tls::CA_CERT_FILE))?),
        None => None,
    };
    let client = cairn_client::Client::with_tls(join, Duration::from_secs(30), tls)
        .map_err(|e| Error::Cluster(format!("--join {join}: {e}")))?
        // Joining is an admin's act: the cluster's nodes share the admin
        // token (`cairn up` gives each the same one).
        .with_token(config.admin_token.as_ref().map(|token| token.expose().to_string()));
    let started = std::time::Instant::now();
    loop {
        match client.add_member(config.id, &peer_address.to_string(), None).await {
            Ok(answer) => {
                // The wire's view of a membership, read as the one stored.
                let membership: Membership =
                    serde_json::to_value(&answer).and_then(serde_json::from_value).map_err(
                        |e| Error::Cluster(format!("{join} answered a bad membership: {e}")),
                    )?;
                membership.validate().map_err(|e| Error::Cluster(e.to_string()))?;
                if !membership.contains(config.id) {
                    return Err(Error::Cluster(format!(
                        "{join} answered a membership without node {}",
                        config.id
                    )));
                }
                tracing::info!(
                    configuration_id = membership.configuration_id,
                    members = ?membership.ids(),
                    "joined the cluster"
                );
                return Ok(membership);
            }
            Err(error) if error.code() == Some("refused") || started.elapsed() > JOIN_TIMEOUT => {
                return Err(Error::Cluster(format!("cannot join through {join}: {error}")));
            }
            Err(error) => {
                tracing::info!(%error, "asking to join again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

impl Node {
    /// Opens the store, starts the log and binds the listener.
    pub async fn start(mut config: NodeConfig) -> Result<Node, Error> {
        config.validate()?;
        if config.insecure {
            tracing::warn!(
                "running --insecure: peers are not authenticated, clients need no token, \
                 and nothing is encrypted; use it for tests and development only"
            );
        }
        let open_error = |source| Error::Open { dir: config.data_dir.clone(), source };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| open_error(cairn_storage::Error::Corrupt { what: e.to_string() }))?;
        if !config.insecure && config.admin_token.is_none() {
            let path = config
                .admin_token_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("admin.token"));
            let token = cairn_util::secret::load_or_create(&path).map_err(|e| {
                Error::Config(format!(
                    "cannot read or make the admin token {}: {e}",
                    path.display()
                ))
            })?;
            tracing::info!(path = %path.display(), "the node's admin token is in this file");
            config.admin_token = Some(cairn_util::secret::Secret::new(token));
        }
        let store = Store::open(&config.data_dir).map_err(open_error)?;
        // Checkpoints of backups that a crash interrupted.
        let _ = std::fs::remove_dir_all(config.data_dir.join(crate::routes::BACKUP_SCRATCH_DIR));
        // A crash during a snapshot install: forget the partial state; the
        // node catches up from its peers again.
        if cairn_storage::snapshot::discard_unfinished_install(&store).map_err(open_error)? {
            tracing::warn!("an interrupted snapshot install: starting from an empty state");
        }
        let mut sm = StateMachine::open(store.clone()).map_err(open_error)?;
        sm.set_changes_window(config.changes_window);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen { addr: config.listen, source })?;
        // Port 0 picks a free port: advertise the real one.
        config.listen = listener.local_addr().map_err(Error::Serve)?;
        // The name it advertises is one this node answers to.
        let advertised = config.advertise.as_deref().and_then(cairn_util::browser::host_name);
        if let Some(name) = advertised.filter(|name| name.parse::<std::net::IpAddr>().is_err()) {
            config.browser.allowed_hosts.push(name.to_string());
        }
        let peer_tls = match &config.certs_dir {
            Some(dir) => Some(cairn_tls::PeerTls::load(dir, config.id)?),
            None => None,
        };
        let (log, handle, transport) = match membership(&config, &store).await? {
            Some(membership) if membership.members.len() > 1 => {
                let (transport, events) =
                    start_transport(&config, &membership, peer_tls.clone()).await?;
                let replicated_config = replicated_config(&config, membership);
                sm.store().set_durability(Durability::Deferred);
                let (log, handle) =
                    replicated::start(replicated_config, sm, transport.clone(), events)
                        .map_err(|e| Error::Replication(e.to_string()))?;
                (log, handle, Some(transport))
            }
            alone => {
                let (log, handle) = LocalLog::start(config.id, sm, alone).map_err(Error::Log)?;
                (log, handle, None)
            }
        };
        let feeds = Arc::new(tokio::sync::Semaphore::new(config.feeds_cap()));
        let state = AppState {
            store,
            proposer: Arc::new(Proposer::new(handle)),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
            stopping: Arc::new(tokio::sync::watch::Sender::new(false)),
            tokens: Arc::default(),
            feeds,
            exports: Arc::new(tokio::sync::Semaphore::new(crate::routes::changes::EXPORTS_MAX)),
            member_addresses: Arc::default(),
        };
        Ok(Node { listener, state, log, transport, peer_tls })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.config.listen
    }

    /// The node's routes, to answer requests without its listener (the
    /// fuzzing of requests does this). Writes go through the node's log,
    /// which runs from [`Node::start`] on.
    pub fn router(&self) -> axum::Router {
        router(self.state.clone())
    }

    /// Serves until `shutdown` completes, then drains and stops the log.
    /// When a membership change turns the log into the other kind, starts
    /// that one on the same queue and goes on serving.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Node { listener, state, mut log, mut transport, peer_tls } = self;
        let config = state.config.clone();
        // Requests waiting on the log answer as soon as shutdown begins: a
        // node without quorum (one just removed, say) would otherwise hold
        // its shutdown for a whole write timeout.
        let stopping = state.stopping.clone();
        let shutdown = async move {
            shutdown.await;
            stopping.send_replace(true);
        };
        // Members are remembered as they come (see `AppState::trusts_page_of`).
        let members_seen = state.clone();
        let mut remember = tokio::time::interval(std::time::Duration::from_secs(1));
        remember.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let app = router(state);
        let addr = listener.local_addr().map_err(Error::Serve)?;
        let api_tls = peer_tls.as_ref().map(|tls| tls.api.clone());
        let scheme = if api_tls.is_some() { "https" } else { "http" };
        tracing::info!(%addr, %scheme, "serving the HTTP API");
        let server = crate::http::serve(listener, app, config.max_connections, api_tls, shutdown);
        tokio::pin!(server);
        // Taken once per log: it holds the log's one stop signal.
        let mut log_stopped = Box::pin(log.stopped());
        let result = loop {
            tokio::select! {
                () = &mut server => break Ok(()),
                _ = remember.tick() => members_seen.remember_members(),
                () = &mut log_stopped => {
                    let handover = tokio::task::spawn_blocking(move || log.join()).await.ok().flatten();
                    let Some(handover) = handover else {
                        if let Some(transport) = transport.take() {
                            transport.shutdown().await;
                        }
                        return Err(Error::LogFailed);
                    };
                    match take_over(&config, handover, &mut transport, peer_tls.clone()).await {
                        Ok(next) => {
                            log = next;
                            log_stopped = Box::pin(log.stopped());
                        }
                        Err(error) => {
                            tracing::error!(%error, "cannot start the next log");
                            return Err(error);
                        }
                    }
                }
            }
        };
        // The router and its handles are gone: the log finishes and exits.
        drop(members_seen);
        tokio::task::spawn_blocking(move || log.join()).await.ok();
        if let Some(transport) = transport {
            transport.shutdown().await;
        }
        result
    }
}

/// Starts the log that takes over from one that handed over.
async fn take_over(
    config: &NodeConfig,
    handover: Handover,
    transport: &mut Option<TransportHandle>,
    tls: Option<cairn_tls::PeerTls>,
) -> Result<LogThread, Error> {
    if handover.replicated() {
        let membership = handover.membership.clone();
        let (started, events) = start_transport(config, &membership, tls).await?;
        handover.state_machine().store().set_durability(Durability::Deferred);
        let log = replicated::resume(
            replicated_config(config, membership),
            handover,
            started.clone(),
            events,
        )
        .map_err(|e| Error::Replication(e.to_string()))?;
        *transport = Some(started);
        tracing::info!("now replicating");
        Ok(log)
    } else {
        if let Some(old) = transport.take() {
            old.shutdown().await;
        }
        handover.state_machine().store().set_durability(Durability::Synced);
        let log = LocalLog::resume(config.id, handover).map_err(Error::Log)?;
        tracing::info!("now a single node");
        Ok(log)
    }
}

/// Starts the peer transport for `membership`.
async fn start_transport(
    config: &NodeConfig,
    membership: &Membership,
    tls: Option<cairn_tls::PeerTls>,
) -> Result<(TransportHandle, mpsc::Receiver<Event>), Error> {
    let own = membership.members[&config.id];
    let listen = config.peer_listen.unwrap_or(own);
    if tls.is_none() {
        // A node restarted on a replicated data directory without the flags
        // it ran with.
        if !config.insecure {
            return Err(Error::Config(NO_CERTIFICATES.into()));
        }
        tracing::warn!(
            "--insecure: peers talk plain TCP, and anyone who reaches the peer port and knows \
             the cluster id can pose as a member"
        );
    }
    let mut transport_config = TransportConfig::new(
        config.id,
        membership.cluster_id,
        listen,
        membership.peers_of(config.id),
    );
    transport_config.tls = tls;
    let started =
        Transport::start(transport_config).await.map_err(|e| Error::Replication(e.to_string()))?;
    tracing::info!(
        id = config.id,
        peer_listen = %started.0.local_addr(),
        members = ?membership.ids(),
        configuration_id = membership.configuration_id,
        "replicating"
    );
    Ok(started)
}

/// The replicated log's settings for this node in `membership`.
fn replicated_config(config: &NodeConfig, membership: Membership) -> ReplicatedConfig {
    let tick_ms = config.tick_ms.max(1);
    let election_ticks = (config.election_timeout_ms / tick_ms).max(2);
    let timing = Timing {
        election_timeout_ticks: election_ticks,
        resend_timeout_ticks: election_ticks * 2,
        repropose_timeout_ticks: election_ticks * 4,
    };
    let own = membership.members.get(&config.id).map(|a| a.to_string()).unwrap_or_default();
    let me = Hello {
        api_address: config.advertise_address(),
        peer_address: own,
        zone: config.zone.clone(),
        version: cairn_util::version().to_string(),
        ..Hello::default()
    };
    let seed = uuid::Uuid::new_v4().as_u64_pair().0;
    let mut driver = DriverConfig::new(
        config.id,
        membership,
        timing,
        seed,
        me,
        config.data_dir.join("snapshots"),
    );
    driver.log_retain_entries = config.log_retain_entries;
    ReplicatedConfig {
        driver,
        tick: Duration::from_millis(tick_ms),
        housekeeping_interval_ticks: election_ticks,
    }
}
