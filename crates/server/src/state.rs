//! What every request handler shares: the store to read, the proposer to write
//! through, the node's settings and its metrics.

use std::sync::Arc;
use std::time::Duration;

use cairn_consensus::{LogHandle, Proposer};
use cairn_storage::{Applied, Op, Store};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::NodeConfig;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub proposer: Arc<Proposer>,
    pub config: Arc<NodeConfig>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn log(&self) -> &LogHandle {
        self.proposer.log()
    }

    /// Applies a write exactly once, within the node's write timeout.
    pub async fn write(&self, op: Op) -> Result<Applied, ApiError> {
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        match tokio::time::timeout(timeout, self.proposer.write(op)).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(ApiError::timeout(format!(
                "the write was not applied within {} ms; it may still take effect",
                self.config.write_timeout_ms
            ))),
        }
    }

    /// Waits until local state reflects every acknowledged write.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        let timeout = Duration::from_millis(self.config.write_timeout_ms);
        match tokio::time::timeout(timeout, self.log().read_barrier()).await {
            Ok(result) => result.map_err(ApiError::from),
            Err(_) => Err(ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the read barrier did not complete in time",
            )),
        }
    }
}
