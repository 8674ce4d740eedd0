//! Tables: list, create (idempotent), drop.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_client::views::{Created, Dropped, Tables};
use cairn_storage::command::validate_table_name;
use cairn_storage::{Op, Outcome};

use super::created_answer;
use super::openapi::Failures;
use crate::error::ApiError;
use crate::extract::{ReadParams, TableParam, WriteId};
use crate::state::AppState;

/// `GET /v1/tables`'s query.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// See [`ReadParams`].
    #[serde(default)]
    #[param(inline)]
    pub read: crate::extract::ReadMode,
    /// `true` adds each table's number of documents (a scan of its keys).
    #[serde(default)]
    pub count: bool,
}

/// The tables, by name, and with `?count=true` how many documents each
/// holds.
#[utoipa::path(get, operation_id = "tables_list", path = "/v1/tables", tag = "tables", params(ListParams),
    responses((status = 200, description = "The table names, in order.", body = Tables), Failures))]
pub async fn list(
    State(state): State<AppState>,
    params: Result<axum::extract::Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Tables>, ApiError> {
    let axum::extract::Query(params) = params?;
    ReadParams { read: params.read }.barrier(&state).await?;
    let tables = state.store.list_tables()?;
    let counts = if params.count {
        let store = state.store.clone();
        let names = tables.clone();
        let counts = tokio::task::spawn_blocking(move || {
            names
                .into_iter()
                .map(|name| store.count_docs(&name).map(|count| (name, count)))
                .collect::<Result<std::collections::BTreeMap<_, _>, _>>()
        })
        .await
        .map_err(|e| ApiError::internal(format!("counting documents failed: {e}")))??;
        Some(counts)
    } else {
        None
    };
    Ok(Json(Tables { tables, counts }))
}

/// Checks a table name from the path.
pub fn table_name(path: Result<Path<TableParam>, PathRejection>) -> Result<String, ApiError> {
    let Path(TableParam { table }) = path?;
    validate_table_name(&table).map_err(ApiError::bad_request)?;
    Ok(table)
}

/// Creates a table; creating one that exists changes nothing.
#[utoipa::path(put, operation_id = "tables_create", path = "/v1/tables/{table}", tag = "tables", params(TableParam, WriteId),
    responses(
        (status = 201, description = "The table was created.", body = Created),
        (status = 200, description = "The table was there already.", body = Created),
        Failures))]
pub async fn create(
    State(state): State<AppState>,
    write_id: WriteId,
    path: Result<Path<TableParam>, PathRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let table = table_name(path)?;
    let applied = state.write(Op::CreateTable { table }, write_id).await?;
    match applied.outcome {
        Outcome::TableCreated { created } => Ok(created_answer(&applied, created)),
        other => Err(unexpected(other)),
    }
}

/// Drops a table with its documents.
#[utoipa::path(delete, operation_id = "tables_drop", path = "/v1/tables/{table}", tag = "tables", params(TableParam, WriteId),
    responses((status = 200, description = "The table is gone.", body = Dropped), Failures))]
pub async fn drop(
    State(state): State<AppState>,
    write_id: WriteId,
    path: Result<Path<TableParam>, PathRejection>,
) -> Result<Json<Dropped>, ApiError> {
    let table = table_name(path)?;
    let applied = state.write(Op::DropTable { table }, write_id).await?;
    match applied.outcome {
        Outcome::TableDropped => Ok(Json(Dropped { dropped: true, index: applied.index })),
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
