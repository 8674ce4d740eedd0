//! The key-value space: raw bytes in and out under keys that may contain `/`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_storage::command::validate_kv_key;
use cairn_storage::{Op, Outcome};
use serde_json::{json, Value};

use super::tables::unexpected;
use super::written;
use crate::error::ApiError;
use crate::extract::WriteId;
use crate::extract::{Body, ReadParams};
use crate::state::AppState;

fn key(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path?;
    validate_kv_key(&key).map_err(ApiError::bad_request)?;
    Ok(key)
}

pub async fn put(
    State(state): State<AppState>,
    write_id: WriteId,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let key = key(path)?;
    let applied = state.write(Op::KvPut { key, value: body.0.to_vec() }, write_id).await?;
    match applied.outcome {
        Outcome::KvWritten => Ok(Json(written(&applied, json!({})))),
        other => Err(unexpected(other)),
    }
}

pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
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

pub async fn delete(
    State(state): State<AppState>,
    write_id: WriteId,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let key = key(path)?;
    let applied = state.write(Op::KvDelete { key }, write_id).await?;
    match applied.outcome {
        Outcome::Deleted { existed } => Ok(Json(written(&applied, json!({ "deleted": existed })))),
        other => Err(unexpected(other)),
    }
}
