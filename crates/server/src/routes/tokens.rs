//! Clients' tokens, under `/v1/tokens` (admin only; see [`crate::auth`]).
//! They live in one replicated system record, changed by compare-and-set
//! on its revision, so two admins making tokens at once on two nodes both
//! get theirs.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_client::views::{
    NewToken, TokenCreated, TokenList, TokenRevoked, TokenView, LOGIN_CODE_MS,
};
use cairn_storage::{ApplyError, Op, Outcome};
use serde::Deserialize;

use super::openapi::Failures;
use super::tables::unexpected;
use crate::auth::{self, StoredToken, TokensRecord, TOKENS_KEY};
use crate::error::ApiError;
use crate::extract::{Body, WriteId};
use crate::state::AppState;

/// Tries at a compare-and-set before giving up on a busy record.
const CAS_ATTEMPTS: usize = 8;
/// Longest name of a token.
const NAME_CHARS_MAX: usize = 64;

/// A path naming a token.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenParam {
    /// The token's id (16 hex digits; the part before the `.`).
    id: String,
}

/// Applies `change` to the tokens record, as of a read barrier, and stores
/// the result over the revision it read; again when another write came
/// between. Answers what `change` answered and the write's index.
async fn change_tokens<T>(
    state: &AppState,
    mut change: impl FnMut(&mut TokensRecord) -> T,
) -> Result<(T, u64), ApiError> {
    for _ in 0..CAS_ATTEMPTS {
        state.read_barrier().await?;
        let mut record = auth::tokens(state)?;
        let revision = record.revision;
        let answer = change(&mut record);
        let json = serde_json::to_string(&record)
            .map_err(|e| ApiError::internal(format!("cannot write the tokens record: {e}")))?;
        let op = Op::SystemPut { key: TOKENS_KEY.into(), json, expect_revision: Some(revision) };
        let applied = state.write(op, WriteId(None)).await?;
        match applied.outcome {
            Outcome::Replaced { .. } => return Ok((answer, applied.index)),
            Outcome::Failed(ApplyError::RevisionMismatch { .. }) => continue,
            other => return Err(unexpected(other)),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "revision_conflict",
        format!("the tokens changed under {CAS_ATTEMPTS} tries in a row: try again"),
    ))
}

fn view(id: &str, stored: &StoredToken) -> TokenView {
    TokenView {
        id: id.to_string(),
        name: stored.name.clone(),
        role: stored.role,
        created_ms: stored.created_ms,
        login_until_ms: stored.login_until_ms,
    }
}

/// Drops the login codes whose time is up (with any write of the record).
fn prune_expired(record: &mut TokensRecord, now_ms: u64) {
    record.tokens.retain(|_, stored| !stored.expired(now_ms));
}

/// Makes a token. Its secret is in this answer only: the cluster keeps its
/// SHA-256.
#[utoipa::path(post, operation_id = "tokens_create", path = "/v1/tokens", tag = "tokens",
    request_body = NewToken,
    responses((status = 201, description = "The token, shown this once.", body = TokenCreated),
        Failures))]
pub async fn create(
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let asked: NewToken = serde_json::from_value(body.json("an object {\"name\", \"role\"}")?)
        .map_err(|e| ApiError::bad_request(format!("bad token request: {e}")))?;
    let name = asked.name.trim().to_string();
    if name.is_empty()
        || name.chars().count() > NAME_CHARS_MAX
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(format!(
            "a token's name is 1 to {NAME_CHARS_MAX} printable characters"
        )));
    }
    let (id, token) = auth::new_token()?;
    let created_ms = auth::now_ms();
    let stored = StoredToken {
        name,
        role: asked.role,
        sha256: auth::token_hash(&token),
        created_ms,
        login_until_ms: asked.login.then_some(created_ms + LOGIN_CODE_MS),
    };
    let ((), index) = change_tokens(&state, |record| {
        prune_expired(record, created_ms);
        record.tokens.insert(id.clone(), stored.clone());
    })
    .await?;
    let kind = if asked.login { "login code" } else { "token" };
    tracing::info!(token = %id, name = %stored.name, role = %stored.role, "{kind} created");
    Ok((StatusCode::CREATED, Json(TokenCreated { view: view(&id, &stored), token, index })))
}

/// Trades a one-time login code (the request's token) for a new token of
/// the same role, in one write: the code is gone once the token exists, so
/// it can be traded once, on any node, however many try at once.
#[utoipa::path(post, operation_id = "tokens_login", path = "/v1/login", tag = "tokens",
    responses((status = 201, description = "The new token, shown this once.", body = TokenCreated),
        Failures))]
pub async fn login(
    State(state): State<AppState>,
    principal: axum::Extension<auth::Principal>,
    _: crate::extract::JsonPost,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    if !principal.login {
        return Err(ApiError::bad_request(
            "POST /v1/login takes a one-time login code (cairn console makes one), not a token",
        ));
    }
    let code_id = principal.id.clone();
    let (id, token) = auth::new_token()?;
    let now = auth::now_ms();
    let (made, index) = change_tokens(&state, |record| {
        let code = record.tokens.get(&code_id).filter(|code| !code.expired(now))?.clone();
        record.tokens.remove(&code_id);
        prune_expired(record, now);
        let stored = StoredToken {
            name: format!("{} (logged in)", code.name),
            role: code.role,
            sha256: auth::token_hash(&token),
            created_ms: now,
            login_until_ms: None,
        };
        record.tokens.insert(id.clone(), stored.clone());
        Some(stored)
    })
    .await?;
    let Some(stored) = made else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the login code was used already or its time is up: `cairn console` makes another",
        ));
    };
    tracing::info!(code = %code_id, token = %id, role = %stored.role, "login code traded for a token");
    Ok((StatusCode::CREATED, Json(TokenCreated { view: view(&id, &stored), token, index })))
}

/// Every token: id, name, role and when it was made; never a secret.
#[utoipa::path(get, operation_id = "tokens_list", path = "/v1/tokens", tag = "tokens",
    responses((status = 200, description = "The tokens, by id.", body = TokenList), Failures))]
pub async fn list(State(state): State<AppState>) -> Result<Json<TokenList>, ApiError> {
    state.read_barrier().await?;
    let record = auth::tokens(&state)?;
    let tokens = record.tokens.iter().map(|(id, stored)| view(id, stored)).collect();
    Ok(Json(TokenList { tokens }))
}

/// Revokes a token: each node refuses it once it applied this write.
#[utoipa::path(delete, operation_id = "tokens_revoke", path = "/v1/tokens/{id}", tag = "tokens",
    params(TokenParam),
    responses((status = 200, description = "The token is gone.", body = TokenRevoked), Failures))]
pub async fn revoke(
    State(state): State<AppState>,
    path: Result<Path<TokenParam>, PathRejection>,
) -> Result<Json<TokenRevoked>, ApiError> {
    let Path(TokenParam { id }) = path?;
    state.read_barrier().await?;
    if !auth::tokens(&state)?.tokens.contains_key(&id) {
        // Nothing to write: it is already gone everywhere this node knows of.
        return Ok(Json(TokenRevoked { revoked: false, index: state.store.applied_index() }));
    }
    let (revoked, index) =
        change_tokens(&state, |record| record.tokens.remove(&id).is_some()).await?;
    if revoked {
        tracing::info!(token = %id, "token revoked");
    }
    Ok(Json(TokenRevoked { revoked, index }))
}
