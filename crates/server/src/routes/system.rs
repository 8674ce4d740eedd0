//! The system table, under `/v1/system/{key}`: records the control plane
//! keeps in the data plane so that they are replicated like any write and
//! survive the loss of any host (the accepted desired state, the
//! reconciliation status, the host inventory, the step in flight).
//!
//! `GET` reads a record (linearizable by default, `?read=local` for this
//! node's copy); `PUT` replaces it with a JSON object, whose `revision` the
//! state machine sets to the write's log index. `PUT
//! …?expect_revision=N` writes only over revision N (0: no record yet) and
//! answers 409 `revision_conflict` otherwise: the control plane's leader
//! agents use it so that two of them cannot both act from the same state.
//! User tables cannot reach these records: the system table's name starts
//! with `_`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_client::views::Created;
use cairn_storage::command::validate_doc_id;
use cairn_storage::{Op, Outcome};
use serde_json::Value;

use super::openapi::Failures;
use super::tables::unexpected;
use crate::error::ApiError;
use crate::extract::{Body, ReadParams, RecordParam, WriteId};
use crate::state::AppState;

type RecordPath = Result<Path<RecordParam>, PathRejection>;

fn key(path: RecordPath) -> Result<String, ApiError> {
    let Path(RecordParam { key }) = path?;
    validate_doc_id(&key).map_err(ApiError::bad_request)?;
    Ok(key)
}

/// A system record.
#[utoipa::path(get, operation_id = "system_get", path = "/v1/system/{key}", tag = "system", params(RecordParam, ReadParams),
    responses((status = 200, description = "The record, with its `revision`.", body = Object),
        Failures))]
pub async fn get(
    State(state): State<AppState>,
    path: RecordPath,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    params?.barrier(&state).await?;
    match state.store.get_system(&key)? {
        Some(json) => Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response()),
        None => Err(ApiError::not_found(
            "record_not_found",
            format!("system record '{key}' does not exist"),
        )),
    }
}

/// `PUT`'s query: the revision the write expects.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PutParams {
    /// Write only over this revision (0: only when there is no record yet).
    expect_revision: Option<u64>,
}

/// Replaces a system record; the record's `revision` becomes the write's
/// log index.
#[utoipa::path(put, operation_id = "system_put", path = "/v1/system/{key}", tag = "system",
    params(RecordParam, PutParams, WriteId),
    request_body(content = Object, description = "The record: a JSON object."),
    responses((status = 200, description = "The record is stored.", body = Created), Failures))]
pub async fn put(
    State(state): State<AppState>,
    write_id: WriteId,
    path: RecordPath,
    params: Result<Query<PutParams>, QueryRejection>,
    body: Body,
) -> Result<Json<Created>, ApiError> {
    let key = key(path)?;
    if key == cairn_storage::CLUSTER_VERSION_KEY {
        return Err(ApiError::bad_request(
            "the cluster version is raised by finalizing an upgrade (POST /v1/admin/finalize, \
             `cairn cluster finalize`), which checks every member first; it is not written here",
        ));
    }
    let Query(PutParams { expect_revision }) = params?;
    let value = body.json("a JSON object")?;
    let json = value.to_string();
    let applied = state.write(Op::SystemPut { key, json, expect_revision }, write_id).await?;
    match applied.outcome {
        Outcome::Replaced { created } => Ok(Json(Created { created, index: applied.index })),
        other => Err(unexpected(other)),
    }
}

/// The reconciliation status from this node's copy of the control record,
/// or `null` before the control plane wrote one.
pub fn reconciliation(state: &AppState) -> Value {
    let record = match state.store.get_system(cairn_client::CONTROL_KEY) {
        Ok(Some(text)) => text,
        _ => return Value::Null,
    };
    serde_json::from_str::<Value>(&record)
        .ok()
        .and_then(|mut v| v.get_mut("report").map(Value::take))
        .unwrap_or(Value::Null)
}
