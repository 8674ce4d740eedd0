//! Who may do what: every request but the open ones (`/v1/health`, the
//! OpenAPI document, `/metrics`) shows `Authorization: Bearer <token>`, and
//! the token's role must cover the route (see [`required`]).
//!
//! Two kinds of token:
//! - **the node's admin token** (`--admin-token-file`, made on first start
//!   when missing; `cairn up` gives every node the cluster's): role `admin`,
//!   kept by the node, never in the log. It is how the first tokens are made
//!   and how agents reach their nodes.
//! - **cluster tokens**, made through `POST /v1/tokens` and kept in the
//!   replicated system record [`TOKENS_KEY`] as SHA-256 hashes only. A token
//!   reads `<id>.<secret>`: a 64-bit id that names its record and a 256-bit
//!   secret. Tokens are random, so one unsalted hash is enough to make the
//!   record useless to whoever reads it.
//!
//! A token is checked against this node's copy of the record, parsed once
//! per version of the record ([`TokenCache`]). One that is not there yet
//! (made on another node a moment ago) waits for a read barrier and is looked
//! up once more. Such barriers run one at a time, and at most one begins per
//! [`UNKNOWN_TOKEN_BARRIER_INTERVAL`]: a stranger who sends made-up tokens
//! cannot fill the log with barriers (a barrier that began after a request
//! arrived serves it too). A token made on another node is therefore found
//! here once this node has applied it, which a follower does continuously,
//! and within one interval of a barrier. A revoked token stops working on a
//! node once that node applied the revocation.
//!
//! `--insecure` turns all of this off: every request acts as
//! [`Principal::anonymous`], an admin.
//!
//! Sessions for exactly-once writes are bound to the principal that opened
//! them: a session's handle is `<number>.<tag>`, where the tag is a keyed
//! hash of the number and the principal's id under a random key kept in the
//! system record [`SESSIONS_KEY`]. Another credential, or a guessed number,
//! has no valid tag.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_client::views::Role;
use cairn_storage::Store;
use cairn_util::secret;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::state::AppState;

/// The system record that holds the cluster's tokens (hashed).
pub const TOKENS_KEY: &str = "tokens";
/// The system record that holds the key sessions are tagged with.
pub const SESSIONS_KEY: &str = "sessions";
/// Hex digits of a token's id (64 bits).
const TOKEN_ID_HEX: usize = 16;
/// Hex digits of a session's tag (128 bits).
const SESSION_TAG_HEX: usize = 32;
/// Least time between two read barriers for tokens this node does not know.
pub const UNKNOWN_TOKEN_BARRIER_INTERVAL: Duration = Duration::from_millis(100);

/// This node's parsed copy of the tokens record, and when the last barrier
/// for an unknown token began (one per node, in [`AppState`]).
#[derive(Default)]
pub struct TokenCache {
    /// The record's text and what it parses to: parsed again only when the
    /// text changed.
    parsed: Mutex<Option<(String, Arc<TokensRecord>)>>,
    /// Held while a barrier for an unknown token runs; when the last began.
    barrier: tokio::sync::Mutex<Option<Instant>>,
}

impl TokenCache {
    /// The record as this node holds it now.
    fn current(&self, store: &Store) -> Result<Arc<TokensRecord>, ApiError> {
        let Some(text) = store.get_system(TOKENS_KEY)? else {
            return Ok(Arc::new(TokensRecord::default()));
        };
        let mut parsed = self.parsed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached, record)) = parsed.as_ref() {
            if *cached == text {
                return Ok(record.clone());
            }
        }
        let record = Arc::new(parse_tokens(&text)?);
        *parsed = Some((text, record.clone()));
        Ok(record)
    }

    /// Makes this node's copy as fresh as a read barrier begun after
    /// `arrived` would, unless one began less than an interval ago.
    async fn refresh(&self, state: &AppState, arrived: Instant) -> Result<(), ApiError> {
        let mut last = self.barrier.lock().await;
        let covered = last.is_some_and(|began| {
            began >= arrived || began.elapsed() < UNKNOWN_TOKEN_BARRIER_INTERVAL
        });
        if !covered {
            *last = Some(Instant::now());
            state.read_barrier().await?;
        }
        Ok(())
    }
}

/// Who sent a request, as the routes see it (a request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's id; `admin` for the node's admin token; `anonymous`
    /// on an `--insecure` node.
    pub id: String,
    pub role: Role,
    /// A one-time login code: good only for `POST /v1/login`.
    pub login: bool,
}

impl Principal {
    pub fn anonymous() -> Principal {
        Principal { id: "anonymous".into(), role: Role::Admin, login: false }
    }

    fn node_admin() -> Principal {
        Principal { id: "admin".into(), role: Role::Admin, login: false }
    }
}

/// The one route a login code may call.
pub const LOGIN_PATH: &str = "/v1/login";

/// The record [`TOKENS_KEY`]: token id → what it is, with its hash.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TokensRecord {
    #[serde(default)]
    pub tokens: BTreeMap<String, StoredToken>,
    /// Set by the state machine to the index of the write that stored it.
    #[serde(default)]
    pub revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub name: String,
    pub role: Role,
    /// SHA-256 of the secret, as hex.
    pub sha256: String,
    pub created_ms: u64,
    /// Set for a one-time login code: until when it is good (ms since the
    /// Unix epoch, by the clock of the node it is shown to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_until_ms: Option<u64>,
}

impl StoredToken {
    /// Whether this is a login code whose time is up at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.login_until_ms.is_some_and(|until| now_ms > until)
    }
}

pub use cairn_util::now_ms;

/// The record [`SESSIONS_KEY`].
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionsRecord {
    /// 256 random bits, as hex.
    pub key: String,
    #[serde(default)]
    pub revision: u64,
}

/// The role a request needs; `None` for the routes anyone may call.
pub fn required(method: &Method, path: &str) -> Option<Role> {
    if matches!(path, "/v1/health" | "/v1/openapi.json" | "/metrics") {
        return None;
    }
    // The web console's and the apps' pages: they hold no data, and ask for
    // a token before they read any.
    if (*method == Method::GET || *method == Method::HEAD) && crate::console::is_page(path) {
        return None;
    }
    if path == LOGIN_PATH {
        // Any login code; `authenticate` lets nothing else call it.
        return Some(Role::Read);
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let admin = match segments.as_slice() {
        ["v1", "admin" | "system" | "tokens", ..] => true,
        // Creating and dropping a table; listing its documents is a read.
        ["v1", "tables", _] => *method != Method::GET,
        _ => false,
    };
    Some(if admin {
        Role::Admin
    } else if *method == Method::GET || *method == Method::HEAD {
        Role::Read
    } else {
        Role::Write
    })
}

fn unauthorized(message: impl Into<String>) -> Response {
    let mut response =
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The middleware: finds the request's principal, refuses it when its role
/// falls short, and hands it to the routes.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.config.insecure {
        request.extensions_mut().insert(Principal::anonymous());
        return next.run(request).await;
    }
    let Some(needed) = required(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = bearer else {
        return unauthorized(
            "this needs a token: send `Authorization: Bearer <token>` (the CLI reads \
             .cairn/admin.token, --token-file or CAIRN_TOKEN)",
        );
    };
    let is_admin =
        state.config.admin_token.as_ref().is_some_and(|admin| secret::same(token, admin.expose()));
    let principal = if is_admin {
        Principal::node_admin()
    } else {
        match cluster_token(&state, token).await {
            Ok(Some(principal)) => principal,
            Ok(None) if request.uri().path() == LOGIN_PATH => {
                return unauthorized(
                    "the login code was used already, its time is up, or it is not one: \
                     `cairn console` makes another",
                )
            }
            Ok(None) => {
                return unauthorized("the token is not valid: unknown, revoked or mistyped")
            }
            Err(error) => return error.into_response(),
        }
    };
    let login_route = request.method() == Method::POST && request.uri().path() == LOGIN_PATH;
    if principal.login != login_route {
        let message = if principal.login {
            format!("token '{}' is a one-time login code: it is good only for POST {LOGIN_PATH}, which answers a token", principal.id)
        } else {
            format!("POST {LOGIN_PATH} takes a one-time login code (cairn console makes one), not a token")
        };
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", message).into_response();
    }
    if principal.role < needed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token '{}' has role {}; {} {} needs {needed}",
                principal.id,
                principal.role,
                request.method(),
                request.uri().path()
            ),
        )
        .into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The principal of a cluster token, if it is one.
async fn cluster_token(state: &AppState, token: &str) -> Result<Option<Principal>, ApiError> {
    let Some((id, secret_part)) = token.split_once('.') else { return Ok(None) };
    if id.len() != TOKEN_ID_HEX || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let arrived = Instant::now();
    let mut record = state.tokens.current(&state.store)?;
    if !record.tokens.contains_key(id) {
        // Made a moment ago through another node, maybe.
        state.tokens.refresh(state, arrived).await?;
        record = state.tokens.current(&state.store)?;
    }
    Ok(record.tokens.get(id).filter(|stored| !stored.expired(now_ms())).and_then(|stored| {
        secret::same(&sha256_hex(secret_part.as_bytes()), &stored.sha256).then(|| Principal {
            id: id.to_string(),
            role: stored.role,
            login: stored.login_until_ms.is_some(),
        })
    }))
}

/// This node's copy of the tokens record (empty when there is none).
pub fn tokens(state: &AppState) -> Result<TokensRecord, ApiError> {
    match state.store.get_system(TOKENS_KEY)? {
        None => Ok(TokensRecord::default()),
        Some(text) => parse_tokens(&text),
    }
}

fn parse_tokens(text: &str) -> Result<TokensRecord, ApiError> {
    serde_json::from_str(text).map_err(|e| {
        ApiError::internal(format!("the system record '{TOKENS_KEY}' is unreadable: {e}"))
    })
}

/// A new token's id and secret: `(id, "<id>.<secret>")`.
pub fn new_token() -> Result<(String, String), ApiError> {
    let random = secret::generate()
        .map_err(|e| ApiError::internal(format!("cannot draw random bytes: {e}")))?;
    let id = random[..TOKEN_ID_HEX].to_string();
    let secret_part = secret::generate()
        .map_err(|e| ApiError::internal(format!("cannot draw random bytes: {e}")))?;
    Ok((id.clone(), format!("{id}.{secret_part}")))
}

/// The hash kept of a token: that of its secret part.
pub fn token_hash(token: &str) -> String {
    let secret_part = token.split_once('.').map_or(token, |(_, secret_part)| secret_part);
    sha256_hex(secret_part.as_bytes())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    secret::hex(digest.as_ref())
}

/// The handle of session `number` opened by `principal`, under `key`.
pub fn session_handle(key: &str, number: u64, principal: &Principal) -> String {
    format!("{number}.{}", session_tag(key, number, principal))
}

fn session_tag(key: &str, number: u64, principal: &Principal) -> String {
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let message = format!("{number}:{}", principal.id);
    let tag = ring::hmac::sign(&hmac_key, message.as_bytes());
    secret::hex(&tag.as_ref()[..SESSION_TAG_HEX / 2])
}

/// The session number a handle names, when `principal` opened it; `None`
/// for a handle of another principal, a guess, or no handle at all.
pub fn session_number(key: &str, handle: &str, principal: &Principal) -> Option<u64> {
    let (number, tag) = handle.trim().split_once('.')?;
    let number: u64 = number.parse().ok()?;
    secret::same(tag, &session_tag(key, number, principal)).then_some(number)
}

/// The key sessions are tagged with, made on the cluster's first session.
pub async fn session_key(state: &AppState) -> Result<String, ApiError> {
    if let Some(key) = known_session_key(state).await? {
        return Ok(key);
    }
    let key = secret::generate()
        .map_err(|e| ApiError::internal(format!("cannot draw random bytes: {e}")))?;
    let json = serde_json::json!({ "key": key }).to_string();
    let op = cairn_storage::Op::SystemPut {
        key: SESSIONS_KEY.to_string(),
        json,
        expect_revision: Some(0),
    };
    let applied = state.write(op, crate::extract::WriteId(None)).await?;
    match applied.outcome {
        // Ours, or another node's made at the same time: either is the key.
        cairn_storage::Outcome::Replaced { .. }
        | cairn_storage::Outcome::Failed(cairn_storage::ApplyError::RevisionMismatch { .. }) => {
            stored_session_key(state)?
                .ok_or_else(|| ApiError::internal("the session key vanished after it was written"))
        }
        cairn_storage::Outcome::Failed(refusal) => Err(refusal.into()),
        other => Err(crate::routes::unexpected(other)),
    }
}

/// The key, once this node applied it; when it has not, a read barrier
/// brings it if the cluster has one at all.
pub async fn known_session_key(state: &AppState) -> Result<Option<String>, ApiError> {
    if let Some(key) = stored_session_key(state)? {
        return Ok(Some(key));
    }
    state.read_barrier().await?;
    stored_session_key(state)
}

/// The key as this node has it, once the state machine applied it.
pub fn stored_session_key(state: &AppState) -> Result<Option<String>, ApiError> {
    let Some(text) = state.store.get_system(SESSIONS_KEY)? else { return Ok(None) };
    let record: SessionsRecord = serde_json::from_str(&text).map_err(|e| {
        ApiError::internal(format!("the system record '{SESSIONS_KEY}' is unreadable: {e}"))
    })?;
    Ok(Some(record.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_the_roles_of_the_contract() {
        let get = Method::GET;
        let put = Method::PUT;
        for open in ["/v1/health", "/v1/openapi.json", "/metrics"] {
            assert_eq!(required(&get, open), None, "{open}");
        }
        assert_eq!(required(&get, "/v1/tables/t/docs/a"), Some(Role::Read));
        assert_eq!(required(&get, "/v1/tables"), Some(Role::Read));
        assert_eq!(required(&get, "/v1/tables/t"), Some(Role::Read));
        assert_eq!(required(&get, "/v1/kv/a/b"), Some(Role::Read));
        assert_eq!(required(&get, "/v1/cluster"), Some(Role::Read));
        assert_eq!(required(&get, "/no/such/route"), Some(Role::Read));
        assert_eq!(required(&put, "/v1/tables/t/docs/a"), Some(Role::Write));
        assert_eq!(required(&Method::POST, "/v1/sessions"), Some(Role::Write));
        assert_eq!(required(&Method::DELETE, "/v1/kv/a"), Some(Role::Write));
        assert_eq!(required(&put, "/v1/tables/t"), Some(Role::Admin));
        assert_eq!(required(&Method::DELETE, "/v1/tables/t"), Some(Role::Admin));
        assert_eq!(required(&get, "/v1/system/control"), Some(Role::Admin));
        assert_eq!(required(&get, "/v1/admin/members"), Some(Role::Admin));
        assert_eq!(required(&get, "/v1/tokens"), Some(Role::Admin));
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
    }

    #[test]
    fn a_session_handle_works_only_for_who_opened_it() {
        let alice = Principal { id: "00000000000000aa".into(), role: Role::Write, login: false };
        let bob = Principal { id: "00000000000000bb".into(), role: Role::Write, login: false };
        let key = "k".repeat(64);
        let handle = session_handle(&key, 17, &alice);
        assert_eq!(session_number(&key, &handle, &alice), Some(17));
        assert_eq!(session_number(&key, &handle, &bob), None);
        assert_eq!(session_number(&"x".repeat(64), &handle, &alice), None, "another key");
        let (_, tag) = handle.split_once('.').unwrap();
        assert_eq!(tag.len(), SESSION_TAG_HEX);
        assert_eq!(session_number(&key, &format!("18.{tag}"), &alice), None, "another number");
        assert_eq!(session_number(&key, "17", &alice), None);
        assert_eq!(session_number(&key, "", &alice), None);
    }

    #[test]
    fn a_token_is_random_and_only_its_secret_is_hashed() {
        let (id, token) = new_token().unwrap();
        let (other_id, other) = new_token().unwrap();
        assert_ne!(id, other_id);
        assert_ne!(token, other);
        assert_eq!(id.len(), TOKEN_ID_HEX);
        let (prefix, secret_part) = token.split_once('.').unwrap();
        assert_eq!(prefix, id);
        assert_eq!(secret_part.len(), 2 * secret::TOKEN_BYTES, "256 bits");
        assert_eq!(token_hash(&token), sha256_hex(secret_part.as_bytes()));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
