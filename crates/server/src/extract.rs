//! Request parsing at the edge: bodies under the size limit, JSON with errors
//! that say where it broke, and the query parameters shared by routes.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{body_error, ApiError};
use crate::state::AppState;

/// A request body read whole, within `--max-body-bytes`.
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Body, ApiError> {
        let limit = state.config.max_body_bytes;
        Bytes::from_request(req, state)
            .await
            .map(Body)
            .map_err(|rejection| body_error(rejection, limit))
    }
}

impl Body {
    /// Parses the body as JSON; `what` names what was expected, for the message.
    pub fn json(&self, what: &str) -> Result<Value, ApiError> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_json(format!(
                "the request body is empty: expected {what}"
            )));
        }
        serde_json::from_slice(&self.0).map_err(|e| {
            ApiError::invalid_json(format!(
                "the request body is not valid JSON ({e}): expected {what}"
            ))
        })
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Sees every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// This node's state as it is; may miss recent writes on a lagging replica.
    Local,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default)]
    pub read: ReadMode,
}

impl ReadParams {
    pub async fn barrier(&self, state: &AppState) -> Result<(), ApiError> {
        match self.read {
            ReadMode::Linearizable => state.read_barrier().await,
            ReadMode::Local => Ok(()),
        }
    }
}
