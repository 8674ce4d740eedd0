//! What every request handler shares: the store to read, the proposer to write
//! through, the node's settings and its metrics, and whether the node is
//! shutting down (requests waiting on the log then answer at once, so a
//! graceful shutdown does not wait out their timeouts).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use cairn_consensus::{LogHandle, Proposer};
use cairn_storage::{Applied, ApplyError, Command, Op, Outcome, Store};

use crate::error::ApiError;
use crate::extract::WriteId;
use crate::metrics::Metrics;
use crate::NodeConfig;

/// Why a bounded wait ended without its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The wait's timeout passed.
    Timeout,
    /// The node began to shut down.
    Stopping,
}

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub proposer: Arc<Proposer>,
    pub config: Arc<NodeConfig>,
    pub metrics: Arc<Metrics>,
    /// Set once the node begins to shut down.
    pub stopping: Arc<watch::Sender<bool>>,
    /// The parsed tokens record, and the pace of barriers for unknown tokens.
    pub tokens: Arc<crate::auth::TokenCache>,
    /// Places for open changefeeds (`--feeds-max`).
    pub feeds: Arc<tokio::sync::Semaphore>,
    /// Turns for feeds' initial states ([`crate::routes::changes::EXPORTS_MAX`]).
    pub exports: Arc<tokio::sync::Semaphore>,
    /// The API address of every member this node has seen since it started
    /// (at most [`MEMBER_ADDRESSES_MAX`]): pages they served may call it, so
    /// a console loaded from a node since removed carries on through this one.
    pub member_addresses: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// How many member addresses a node remembers for the browser checks.
pub const MEMBER_ADDRESSES_MAX: usize = 1024;

impl AppState {
    /// Adds the current members' API addresses to those remembered.
    pub fn remember_members(&self) {
        let members = self.log().members();
        let mut known = cairn_util::lock(&self.member_addresses);
        for address in members.into_iter().filter_map(|member| member.api_address) {
            if known.len() < MEMBER_ADDRESSES_MAX || known.contains(&address) {
                known.insert(address);
            }
        }
    }

    /// Whether a page at `authority` (`host:port`, see
    /// [`cairn_util::browser::origin_authority`]) was served by this node or
    /// by a member it has seen.
    pub fn trusts_page_of(&self, authority: &str) -> bool {
        use cairn_util::browser::names_address;
        if names_address(authority, &self.config.advertise_address()) {
            return true;
        }
        // The current members first (the tick remembers them; a request
        // need not write the set), then those seen before.
        let current = self.log().members().into_iter().filter_map(|member| member.api_address);
        current
            .chain(cairn_util::lock(&self.member_addresses).iter().cloned())
            .any(|address| names_address(authority, &address))
    }

    pub fn log(&self) -> &LogHandle {
        self.proposer.log()
    }

    /// Applies a write exactly once, within the node's write timeout: under the
    /// client's id when it sent one, else under one from the node's pool.
    pub async fn write(&self, op: Op, id: WriteId) -> Result<Applied, ApiError> {
        let applied = match id.0 {
            Some(id) => {
                let command = Command::new(Some(id), op);
                self.within_timeout(self.log().propose(command)).await?
            }
            None => self.within_timeout(self.proposer.write(op)).await?,
        };
        if let (Some(id), Outcome::Failed(ApplyError::SessionUnknown { .. })) =
            (id.0, &applied.outcome)
        {
            // An earlier attempt may have applied before the session was
            // evicted: the client cannot know, so neither can this answer.
            return Err(ApiError {
                indeterminate: true,
                ..ApiError::not_found(
                    "session_not_found",
                    format!(
                        "session {} is unknown or expired: open a new one (POST /v1/sessions); \
                     this attempt did not apply, an earlier one may have",
                        id.session
                    ),
                )
            });
        }
        Ok(applied)
    }

    /// Opens a session for a client's exactly-once writes.
    pub async fn open_session(&self) -> Result<Applied, ApiError> {
        self.within_timeout(self.log().open_session()).await
    }

    async fn within_timeout(
        &self,
        write: impl Future<Output = Result<Applied, cairn_consensus::Error>>,
    ) -> Result<Applied, ApiError> {
        let timeout_ms = self.config.write_timeout_ms;
        match self.awaited(timeout_ms, write).await {
            Ok(result) => Ok(result?),
            Err(Cut::Timeout) => Err(ApiError::timeout(format!(
                "the write was not applied within {timeout_ms} ms; it may still take effect"
            ))),
            Err(Cut::Stopping) => Err(ApiError::unavailable(
                "the node is shutting down before the write's outcome is known; it may still \
                 take effect",
            )),
        }
    }

    /// Waits until local state reflects every acknowledged write.
    pub async fn read_barrier(&self) -> Result<(), ApiError> {
        match self.awaited(self.config.write_timeout_ms, self.log().read_barrier()).await {
            // A read changes nothing: its failure is never indeterminate.
            Ok(result) => {
                result.map_err(|e| ApiError { indeterminate: false, ..ApiError::from(e) })
            }
            Err(Cut::Timeout) => Err(ApiError::new(
                axum::http::StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the read barrier did not complete in time",
            )),
            Err(Cut::Stopping) => Err(ApiError {
                indeterminate: false,
                ..ApiError::unavailable("the node is shutting down: read from another node")
            }),
        }
    }

    /// The one bounded wait of a request on the log: `fut`'s output, unless
    /// `timeout_ms` passes first or the node begins to shut down. Each caller
    /// words the cut for what it waited on.
    pub async fn awaited<T>(
        &self,
        timeout_ms: u64,
        fut: impl Future<Output = T>,
    ) -> Result<T, Cut> {
        tokio::select! {
            waited = tokio::time::timeout(Duration::from_millis(timeout_ms), fut) => {
                waited.map_err(|_| Cut::Timeout)
            }
            () = self.stopped() => Err(Cut::Stopping),
        }
    }

    /// Resolves once the node begins to shut down.
    pub async fn stopped(&self) {
        let mut stopping = self.stopping.subscribe();
        // The sender lives in this state: waiting cannot fail while it does.
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}
