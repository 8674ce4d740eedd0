//! Running a node: open the store, start the log, serve the API until told to
//! stop, then let the log finish its last batch.
//!
//! A node runs one of two logs:
//! - **single node** (no `peers`, and a data directory that never belonged to
//!   a cluster): the local group-commit log;
//! - **replicated**: OmniPaxos over the peer transport. The first start on an
//!   empty data directory takes `peers` as the initial configuration and
//!   stores it; later starts use what is stored (like etcd's initial cluster
//!   flags, `peers` is then only checked against it).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_consensus::driver::{DriverConfig, Hello};
use cairn_consensus::replica::{ReplicaConfig, Timing};
use cairn_consensus::replicated::{self, ReplicatedConfig};
use cairn_consensus::{LocalLog, LogThread, Proposer};
use cairn_storage::{Durability, StateMachine, Store};
use cairn_transport::{Transport, TransportConfig, TransportHandle};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::routes::router;
use crate::state::AppState;

/// Largest request body accepted by default: 16 MiB.
pub const MAX_BODY_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// How long a write may wait for its answer by default.
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// The replica's tick by default.
pub const TICK_MS_DEFAULT: u64 = 10;
/// One round of leader election by default; a dead leader is replaced after
/// about two rounds.
pub const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 250;
/// Log entries kept behind the applied index by default.
pub const LOG_RETAIN_ENTRIES_DEFAULT: u64 = 10_000;

/// A node's settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub zone: Option<String>,
    pub max_body_bytes: usize,
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
}

impl NodeConfig {
    pub fn new(id: u64, data_dir: PathBuf, listen: SocketAddr) -> NodeConfig {
        NodeConfig {
            id,
            data_dir,
            listen,
            zone: None,
            max_body_bytes: MAX_BODY_BYTES_DEFAULT,
            write_timeout_ms: WRITE_TIMEOUT_MS_DEFAULT,
            peer_listen: None,
            peers: BTreeMap::new(),
            tick_ms: TICK_MS_DEFAULT,
            election_timeout_ms: ELECTION_TIMEOUT_MS_DEFAULT,
            log_retain_entries: LOG_RETAIN_ENTRIES_DEFAULT,
        }
    }

    /// The address clients should use for this node.
    pub fn advertise_address(&self) -> String {
        self.listen.to_string()
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
    transport: Option<TransportHandle>,
}

/// The replication settings stored with a replicated node's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StoredCluster {
    /// Carried in every peer handshake: nodes of another cluster are refused.
    cluster_id: u64,
    configuration_id: u32,
    /// Every member's peer address.
    members: BTreeMap<u64, SocketAddr>,
}

impl StoredCluster {
    fn load(store: &Store) -> Result<Option<StoredCluster>, Error> {
        let Some(bytes) = store.cluster_config().map_err(|e| Error::Cluster(e.to_string()))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Cluster(format!("the stored cluster settings do not decode: {e}")))
    }

    fn save(&self, store: &Store) -> Result<(), Error> {
        let bytes = serde_json::to_vec(self).map_err(|e| Error::Cluster(e.to_string()))?;
        store.set_cluster_config(&bytes).map_err(|e| Error::Cluster(e.to_string()))
    }

    /// The cluster id of a new cluster: a hash of its initial members, so
    /// that every node started with the same `--peers` agrees on it.
    fn new(members: BTreeMap<u64, SocketAddr>) -> StoredCluster {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for (id, addr) in &members {
            for byte in format!("{id}={addr};").bytes() {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        StoredCluster { cluster_id: hash.max(1), configuration_id: 1, members }
    }
}

/// Decides how this node replicates: `None` for a single node.
fn cluster_settings(config: &NodeConfig, store: &Store) -> Result<Option<StoredCluster>, Error> {
    if let Some(stored) = StoredCluster::load(store)? {
        if !config.peers.is_empty() && config.peers != stored.members {
            tracing::warn!(
                stored = ?stored.members,
                given = ?config.peers,
                "--peers differs from the configuration stored in the data directory; using the stored one"
            );
        }
        if !stored.members.contains_key(&config.id) {
            return Err(Error::Cluster(format!(
                "this data directory belongs to node(s) {:?}, not node {}",
                stored.members.keys().collect::<Vec<_>>(),
                config.id
            )));
        }
        return Ok(Some(stored));
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
             start a new cluster; start from an empty directory",
            store.applied_index()
        )));
    }
    let stored = StoredCluster::new(config.peers.clone());
    stored.save(store)?;
    Ok(Some(stored))
}

impl Node {
    /// Opens the store, starts the log and binds the listener.
    pub async fn start(mut config: NodeConfig) -> Result<Node, Error> {
        let open_error = |source| Error::Open { dir: config.data_dir.clone(), source };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| open_error(cairn_storage::Error::Corrupt { what: e.to_string() }))?;
        let store = Store::open(&config.data_dir).map_err(open_error)?;
        let sm = match StateMachine::open(store.clone()) {
            Err(cairn_storage::Error::SnapshotIncomplete) => {
                // A crash during a snapshot install: forget the partial state;
                // the node catches up from its peers again.
                tracing::warn!("an interrupted snapshot install: starting from an empty state");
                reset_state(&store).map_err(open_error)?;
                StateMachine::open(store.clone()).map_err(open_error)?
            }
            other => other.map_err(open_error)?,
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen { addr: config.listen, source })?;
        // Port 0 picks a free port: advertise the real one.
        config.listen = listener.local_addr().map_err(Error::Serve)?;
        let (log, handle, transport) = match cluster_settings(&config, &store)? {
            None => {
                let (log, handle) = LocalLog::start(config.id, sm).map_err(Error::Log)?;
                (log, handle, None)
            }
            Some(cluster) => {
                let (log, handle, transport) = start_replicated(&mut config, cluster, sm).await?;
                (log, handle, Some(transport))
            }
        };
        let state = AppState {
            store,
            proposer: Arc::new(Proposer::new(handle)),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
        };
        Ok(Node { listener, state, log, transport })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.config.listen
    }

    /// Serves until `shutdown` completes, then drains and stops the log.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Node { listener, state, mut log, transport } = self;
        let log_stopped = log.stopped();
        let app = router(state);
        tracing::info!(addr = %listener.local_addr().map_err(Error::Serve)?, "serving the HTTP API");
        let server = axum::serve(listener, app).with_graceful_shutdown(shutdown);
        let result = tokio::select! {
            served = server => served.map_err(Error::Serve),
            _ = log_stopped => Err(Error::LogFailed),
        };
        // The router and its handles are gone: the log finishes and exits.
        tokio::task::spawn_blocking(move || log.join()).await.ok();
        if let Some(transport) = transport {
            transport.shutdown().await;
        }
        result
    }
}

/// Empties the state machine (to applied index 0) over an interrupted
/// snapshot install.
fn reset_state(store: &Store) -> Result<(), cairn_storage::Error> {
    use cairn_storage::snapshot::{Chunk, SnapshotCf};
    let mut sink = cairn_storage::SnapshotSink::begin(store, 0)?;
    sink.push(Chunk::new(0, 0, SnapshotCf::Meta, Vec::new(), true))?;
    sink.finish().map(|_| ())
}

/// Starts the peer transport and the replicated log.
async fn start_replicated(
    config: &mut NodeConfig,
    cluster: StoredCluster,
    sm: StateMachine,
) -> Result<(LogThread, cairn_consensus::LogHandle, TransportHandle), Error> {
    let own = cluster.members[&config.id];
    let listen = config.peer_listen.unwrap_or(own);
    let peers: BTreeMap<u64, SocketAddr> =
        cluster.members.iter().filter(|(id, _)| **id != config.id).map(|(i, a)| (*i, *a)).collect();
    let transport_config = TransportConfig::new(config.id, cluster.cluster_id, listen, peers);
    let (transport, events) =
        Transport::start(transport_config).await.map_err(|e| Error::Replication(e.to_string()))?;
    config.peer_listen = Some(transport.local_addr());
    let tick_ms = config.tick_ms.max(1);
    let election_ticks = (config.election_timeout_ms / tick_ms).max(2);
    let timing = Timing {
        election_timeout_ticks: election_ticks,
        resend_timeout_ticks: election_ticks * 2,
        repropose_timeout_ticks: election_ticks * 4,
    };
    let replica = ReplicaConfig {
        node_id: config.id,
        members: cluster.members.keys().copied().collect(),
        configuration_id: cluster.configuration_id,
        timing,
        seed: uuid::Uuid::new_v4().as_u64_pair().0,
    };
    let me = Hello {
        api_address: config.advertise_address(),
        peer_address: own.to_string(),
        zone: config.zone.clone(),
        version: crate::VERSION.to_string(),
        ..Hello::default()
    };
    let mut driver = DriverConfig::new(replica, me, config.data_dir.join("snapshots"));
    driver.log_retain_entries = config.log_retain_entries;
    let replicated_config = ReplicatedConfig {
        driver,
        tick: Duration::from_millis(tick_ms),
        housekeeping_interval_ticks: election_ticks,
    };
    // One sync per turn of the event loop instead of one per write.
    sm.store().set_durability(Durability::Deferred);
    let (log, handle) = replicated::start(replicated_config, sm, transport.clone(), events)
        .map_err(|e| Error::Replication(e.to_string()))?;
    tracing::info!(
        id = config.id,
        peer_listen = %listen,
        members = ?cluster.members.keys().collect::<Vec<_>>(),
        "replicating"
    );
    Ok((log, handle, transport))
}
