//! Tables: list, create (idempotent), drop.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_storage::command::validate_table_name;
use cairn_storage::{Op, Outcome};
use serde_json::{json, Value};

use super::{created_answer, written};
use crate::error::ApiError;
use crate::extract::ReadParams;
use crate::extract::WriteId;
use crate::state::AppState;

pub async fn list(
    State(state): State<AppState>,
    params: Result<axum::extract::Query<ReadParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    params?.barrier(&state).await?;
    Ok(Json(json!({ "tables": state.store.list_tables()? })))
}

/// Checks a table name from the path.
pub fn table_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(table) = path?;
    validate_table_name(&table).map_err(ApiError::bad_request)?;
    Ok(table)
}

pub async fn create(
    State(state): State<AppState>,
    write_id: WriteId,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let table = table_name(path)?;
    let applied = state.write(Op::CreateTable { table }, write_id).await?;
    match applied.outcome {
        Outcome::TableCreated { created } => Ok(created_answer(&applied, created)),
        other => Err(unexpected(other)),
    }
}

pub async fn drop(
    State(state): State<AppState>,
    write_id: WriteId,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let table = table_name(path)?;
    let applied = state.write(Op::DropTable { table }, write_id).await?;
    match applied.outcome {
        Outcome::TableDropped => Ok(Json(written(&applied, json!({ "dropped": true })))),
        other => Err(unexpected(other)),
    }
}

/// Maps a refusal to its error, and anything else to an internal error (an
/// outcome that does not belong to the op is a bug, reported, not hidden).
pub fn unexpected(outcome: Outcome) -> ApiError {
    match outcome {
        Outcome::Failed(refusal) => refusal.into(),
        other => {
            tracing::error!(?other, "an outcome that does not match its operation");
            ApiError::internal(format!("unexpected outcome {other:?}"))
        }
    }
}
