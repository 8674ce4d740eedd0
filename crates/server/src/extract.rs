//! Request parsing at the edge: bodies under the size limit, JSON with errors
//! that say where it broke, and the query parameters shared by routes.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use cairn_storage::CommandId;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{body_error, ApiError};
use crate::state::AppState;

/// A request body read whole, within `--max-body-bytes` and
/// [`crate::http::BODY_READ_TIMEOUT`].
pub struct Body(pub Bytes);

impl FromRequest<AppState> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Body, ApiError> {
        json_post(req.method().as_str(), req.headers())?;
        let limit = state.config.max_body_bytes;
        let read = Bytes::from_request(req, state);
        match tokio::time::timeout(crate::http::BODY_READ_TIMEOUT, read).await {
            Ok(read) => read.map(Body).map_err(|rejection| body_error(rejection, limit)),
            Err(_) => Err(ApiError::new(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} s",
                    crate::http::BODY_READ_TIMEOUT.as_secs()
                ),
            )),
        }
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

/// A `POST` must say `Content-Type: application/json`: a browser sends no
/// such request cross-site without asking first, and nobody answers its
/// question (see [`cairn_util::browser`]). Routes that take a POST without a
/// body extract this; [`Body`] checks it too.
pub struct JsonPost;

impl<S: Send + Sync> FromRequestParts<S> for JsonPost {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<JsonPost, ApiError> {
        json_post(parts.method.as_str(), &parts.headers).map(|()| JsonPost)
    }
}

fn json_post(method: &str, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let content_type =
        headers.get(axum::http::header::CONTENT_TYPE).map(|value| value.to_str().unwrap_or(""));
    cairn_util::browser::check_content_type(method, content_type).map_err(|refusal| {
        ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            refusal.to_string(),
        )
    })
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Sees every write acknowledged before the read began.
    #[default]
    Linearizable,
    /// This node's state as it is; may miss recent writes on a lagging replica.
    Local,
}

/// A read's query: how fresh it must be.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// `linearizable` (the default) sees every write acknowledged before the
    /// read began; `local` reads this node's state as it is.
    #[serde(default)]
    #[param(inline)]
    pub read: ReadMode,
}

impl ReadParams {
    pub async fn barrier(&self, state: &AppState) -> Result<(), ApiError> {
        match self.read {
            ReadMode::Linearizable => state.read_barrier().await,
            // Local state as it is, unless it is not a state at all: a node
            // installing a snapshot from a peer holds part of one.
            ReadMode::Local => match state.log().status()?.not_serving {
                Some(error @ cairn_consensus::Error::NotServing { .. }) => Err(error.into()),
                _ => Ok(()),
            },
        }
    }
}

/// Header naming a client's session (from `POST /v1/sessions`).
pub const SESSION_HEADER: &str = "cairn-session";
/// Header numbering a write within the client's session, from 1 up.
pub const SEQ_HEADER: &str = "cairn-seq";

/// The exactly-once id a client gave its write, if any. A client that retries
/// a write after a timeout or a broken connection sends the same
/// `Cairn-Session` and `Cairn-Seq` again, and the state machine answers the
/// repeat from memory instead of applying it twice. Without them the node
/// gives the write an id of its own, which covers the node's retries only.
pub struct WriteId(pub Option<CommandId>);

fn header_u64(parts: &Parts, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = parts.headers.get(name) else { return Ok(None) };
    let parsed = value.to_str().ok().and_then(|text| text.trim().parse::<u64>().ok());
    match parsed {
        Some(number) => Ok(Some(number)),
        None => Err(ApiError::bad_request(format!("header {name} must be a whole number"))),
    }
}

impl utoipa::IntoParams for WriteId {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Type};
        let header = |name: &str, schema: ObjectBuilder, description: &str| {
            ParameterBuilder::new()
                .name(name)
                .parameter_in(ParameterIn::Header)
                .description(Some(description))
                .schema(Some(schema))
                .build()
        };
        let seq = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(1));
        vec![
            header(
                "Cairn-Session",
                ObjectBuilder::new().schema_type(Type::String),
                "The handle of the client's session (from POST /v1/sessions), for \
                 exactly-once retries; sent with Cairn-Seq or not at all.",
            ),
            header(
                "Cairn-Seq",
                seq,
                "The write's number in the session (1, 2, ...); a retry sends the same pair.",
            ),
        ]
    }
}

impl FromRequestParts<AppState> for WriteId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<WriteId, ApiError> {
        let handle = match parts.headers.get(SESSION_HEADER) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                ApiError::bad_request(format!("header {SESSION_HEADER} must be text"))
            })?),
        };
        let (handle, seq) = match (handle, header_u64(parts, SEQ_HEADER)?) {
            (None, None) => return Ok(WriteId(None)),
            (Some(_), Some(0)) => {
                return Err(ApiError::bad_request(format!("header {SEQ_HEADER} starts at 1")))
            }
            (Some(handle), Some(seq)) => (handle.to_string(), seq),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "send both {SESSION_HEADER} and {SEQ_HEADER}, or neither"
                )))
            }
        };
        let principal = parts
            .extensions
            .get::<crate::auth::Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a write reached its route unauthenticated"))?;
        // The key is made before the first session's handle: a node that
        // does not have it yet is behind, and a barrier brings it.
        let key = crate::auth::known_session_key(state).await?;
        match key.and_then(|key| crate::auth::session_number(&key, &handle, &principal)) {
            Some(session) => Ok(WriteId(Some(CommandId { session, seq }))),
            None => Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "session_forbidden",
                format!(
                    "{SESSION_HEADER} is not a session this credential opened: open one with \
                     POST /v1/sessions and send its handle"
                ),
            )),
        }
    }
}

/// A path naming a table.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TableParam {
    /// 1 to 64 letters, digits, `_` or `-`, starting with a letter or digit.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", min_length = 1, max_length = 64)]
    pub table: String,
}

/// A path naming a document of a table.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct DocParam {
    /// 1 to 64 letters, digits, `_` or `-`, starting with a letter or digit.
    #[param(pattern = "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$", min_length = 1, max_length = 64)]
    pub table: String,
    /// The document's id: 1 to 512 bytes of UTF-8, other than `.` and `..`.
    #[param(min_length = 1, max_length = 512)]
    pub id: String,
}

/// A path naming a key of the key-value space.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct KeyParam {
    /// 1 to 1024 bytes of UTF-8, other than `.` and `..`; it may contain `/`.
    #[param(min_length = 1, max_length = 1024)]
    pub key: String,
}

/// A path naming a record of the system table.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RecordParam {
    /// 1 to 512 bytes of UTF-8, other than `.` and `..`.
    #[param(min_length = 1, max_length = 512)]
    pub key: String,
}
