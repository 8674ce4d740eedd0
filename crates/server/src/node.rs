//! Running a node: open the store, start the log, serve the API until told to
//! stop, then let the log finish its last batch.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cairn_consensus::{LocalLog, Proposer};
use cairn_storage::{StateMachine, Store};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::routes::router;
use crate::state::AppState;

/// Largest request body accepted by default: 16 MiB.
pub const MAX_BODY_BYTES_DEFAULT: usize = 16 * 1024 * 1024;
/// How long a write may wait for its answer by default.
pub const WRITE_TIMEOUT_MS_DEFAULT: u64 = 10_000;

/// A node's settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub zone: Option<String>,
    pub max_body_bytes: usize,
    pub write_timeout_ms: u64,
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
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("the log stopped after a storage fault; restart the node to recover from disk")]
    LogFailed,
}

/// A node bound to its port, ready to serve.
pub struct Node {
    listener: TcpListener,
    state: AppState,
    log: LocalLog,
}

impl Node {
    /// Opens the store, starts the log and binds the listener.
    pub async fn start(mut config: NodeConfig) -> Result<Node, Error> {
        let open_error = |source| Error::Open { dir: config.data_dir.clone(), source };
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| open_error(cairn_storage::Error::Corrupt { what: e.to_string() }))?;
        let store = Store::open(&config.data_dir).map_err(open_error)?;
        let sm = StateMachine::open(store.clone()).map_err(open_error)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Listen { addr: config.listen, source })?;
        // Port 0 picks a free port: advertise the real one.
        config.listen = listener.local_addr().map_err(Error::Serve)?;
        let (log, handle) = LocalLog::start(config.id, sm).map_err(Error::Log)?;
        let state = AppState {
            store,
            proposer: Arc::new(Proposer::new(handle)),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
        };
        Ok(Node { listener, state, log })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.config.listen
    }

    /// Serves until `shutdown` completes, then drains and stops the log.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let Node { listener, state, mut log } = self;
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
        result
    }
}
