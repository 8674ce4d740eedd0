//! The key-value space: raw bytes in and out under keys that may contain `/`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_client::views::{Counted, Deleted, Written};
use cairn_storage::cluster_version::KV_INCREMENT;
use cairn_storage::command::validate_kv_key;
use cairn_storage::{Op, Outcome};

use super::openapi::Failures;
use super::tables::unexpected;
use crate::error::ApiError;
use crate::extract::{Body, KeyParam, ReadParams, WriteId};
use crate::state::AppState;

type KeyPath = Result<Path<KeyParam>, PathRejection>;

fn key(path: KeyPath) -> Result<String, ApiError> {
    let Path(KeyParam { key }) = path?;
    validate_kv_key(&key).map_err(ApiError::bad_request)?;
    Ok(key)
}

/// Stores a value under a key.
#[utoipa::path(put, operation_id = "kv_put", path = "/v1/kv/{key}", tag = "kv", params(KeyParam, WriteId),
    request_body(content = Vec<u8>, content_type = "application/octet-stream",
        description = "The value: any bytes."),
    responses((status = 200, description = "The value is stored.", body = Written), Failures))]
pub async fn put(
    State(state): State<AppState>,
    write_id: WriteId,
    path: KeyPath,
    body: Body,
) -> Result<Json<Written>, ApiError> {
    let key = key(path)?;
    cairn_storage::command::validate_kv_value(body.0.len()).map_err(super::docs::too_large)?;
    let applied = state.write(Op::KvPut { key, value: body.0.to_vec() }, write_id).await?;
    match applied.outcome {
        Outcome::KvWritten => Ok(Json(Written { index: applied.index })),
        other => Err(unexpected(other)),
    }
}

/// The value under a key.
#[utoipa::path(get, operation_id = "kv_get", path = "/v1/kv/{key}", tag = "kv", params(KeyParam, ReadParams),
    responses((status = 200, description = "The value, as it was stored.", body = Vec<u8>,
        content_type = "application/octet-stream"), Failures))]
pub async fn get(
    State(state): State<AppState>,
    path: KeyPath,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    params?.barrier(&state).await?;
    match state.store.kv_get(&key)? {
        Some(value) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
        }
        None => Err(ApiError::not_found("key_not_found", format!("key '{key}' does not exist"))),
    }
}

/// Deletes a key.
#[utoipa::path(delete, operation_id = "kv_delete", path = "/v1/kv/{key}", tag = "kv", params(KeyParam, WriteId),
    responses((status = 200, description = "The key is gone.", body = Deleted), Failures))]
pub async fn delete(
    State(state): State<AppState>,
    write_id: WriteId,
    path: KeyPath,
) -> Result<Json<Deleted>, ApiError> {
    let key = key(path)?;
    let applied = state.write(Op::KvDelete { key }, write_id).await?;
    match applied.outcome {
        Outcome::Deleted { existed } => {
            Ok(Json(Deleted { deleted: existed, index: applied.index }))
        }
        other => Err(unexpected(other)),
    }
}

/// Adds to the counter under a key: the body is `{"increment": N}` (N a
/// signed 64-bit integer); the value is decimal text, an absent key counts
/// as 0. The state machine adds, so concurrent increments never lose one,
/// and a retried one (same `Cairn-Session`/`Cairn-Seq`) adds once. Needs
/// cluster version 0.2: 409 `not_finalized` before.
#[utoipa::path(post, operation_id = "kv_increment", path = "/v1/kv/{key}", tag = "kv", params(KeyParam, WriteId),
    request_body(content = Object, description = "`{\"increment\": N}`: N a signed 64-bit integer."),
    responses((status = 200, description = "The counter after the increment.", body = Counted),
        Failures))]
pub async fn increment(
    State(state): State<AppState>,
    write_id: WriteId,
    path: KeyPath,
    body: Body,
) -> Result<Json<Counted>, ApiError> {
    let key = key(path)?;
    let request = body.json("an object {\"increment\": N}")?;
    let by = match request.as_object() {
        Some(fields) if fields.len() == 1 => fields.get("increment").and_then(|n| n.as_i64()),
        _ => None,
    }
    .ok_or_else(|| {
        ApiError::bad_request(
            "the body must be {\"increment\": N}, N an integer of 64 bits (negative to subtract)",
        )
    })?;
    if !KV_INCREMENT.allowed_at(state.store.cluster_version()?) {
        // This node's state may lag a finalize that already happened.
        state.read_barrier().await?;
        let cluster = state.store.cluster_version()?;
        if !KV_INCREMENT.allowed_at(cluster) {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "not_finalized",
                KV_INCREMENT.refusal(cluster),
            ));
        }
    }
    let applied = state.write(Op::KvIncrement { key, by }, write_id).await?;
    match applied.outcome {
        Outcome::Counted { value } => Ok(Json(Counted { value, index: applied.index })),
        other => Err(unexpected(other)),
    }
}
