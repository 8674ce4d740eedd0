//! Documents: insert (one or many, with a conflict mode), get, replace, merge
//! patch, delete, and paged listing in id order.
//!
//! Ids are decided here, at the edge, before the command enters the log: a
//! generated id must be the same on every replica.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_storage::command::{validate_doc_id, INSERT_DOCS_MAX};
use cairn_storage::{Conflict, Doc, Op, Outcome, LIST_LIMIT_MAX};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::tables::{table_name, unexpected};
use super::{created_answer, written};
use crate::error::ApiError;
use crate::extract::WriteId;
use crate::extract::{Body, ReadMode, ReadParams};
use crate::state::AppState;

/// Documents per page when `limit` is not given.
const LIST_LIMIT_DEFAULT: usize = 100;

type TablePath = Result<Path<String>, PathRejection>;
type DocPath = Result<Path<(String, String)>, PathRejection>;

fn doc_path(path: DocPath) -> Result<(String, String), ApiError> {
    let Path((table, id)) = path?;
    let table = table_name(Ok(Path(table)))?;
    validate_doc_id(&id).map_err(ApiError::bad_request)?;
    Ok((table, id))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsertParams {
    #[serde(default)]
    conflict: cairn_client::Conflict,
}

/// The id for a document sent without one. A write with a client's
/// `(session, seq)` gets ids derived from it, so a retry carries the same
/// command (the state machine checks that a repeat is the same command);
/// otherwise a random UUID.
fn generated_id(write_id: &WriteId, position: usize) -> String {
    match write_id.0 {
        Some(id) => {
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&id.session.to_be_bytes());
            // The low 48 bits of seq: a session never lives 2^48 writes.
            bytes[8..14].copy_from_slice(&id.seq.to_be_bytes()[2..]);
            bytes[14..].copy_from_slice(&(position as u16).to_be_bytes());
            uuid::Uuid::new_v8(bytes).to_string()
        }
        None => uuid::Uuid::new_v4().to_string(),
    }
}

/// Turns one JSON value of an insert into a document, generating its id.
fn new_doc(value: Value, position: Option<usize>, write_id: &WriteId) -> Result<Doc, ApiError> {
    let at = || position.map(|i| format!("document {i}: ")).unwrap_or_default();
    let Value::Object(mut object) = value else {
        return Err(ApiError::bad_request(format!("{}a document must be a JSON object", at())));
    };
    let id = match object.get("id") {
        None => generated_id(write_id, position.unwrap_or(0)),
        Some(Value::String(id)) => id.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "{}\"id\" must be a string, not {}",
                at(),
                json_kind(other)
            )))
        }
    };
    validate_doc_id(&id).map_err(|e| ApiError::bad_request(format!("{}{e}", at())))?;
    object.insert("id".into(), Value::String(id.clone()));
    Ok(Doc { id, json: Value::Object(object).to_string() })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub async fn insert(
    State(state): State<AppState>,
    write_id: WriteId,
    path: TablePath,
    params: Result<Query<InsertParams>, QueryRejection>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let table = table_name(path)?;
    // The wire's name for it, to the state machine's.
    let conflict = match params?.conflict {
        cairn_client::Conflict::Error => Conflict::Error,
        cairn_client::Conflict::Replace => Conflict::Replace,
        cairn_client::Conflict::Update => Conflict::Update,
    };
    let docs = match body.json("a document (a JSON object) or an array of documents")? {
        Value::Array(values) => {
            if values.is_empty() || values.len() > INSERT_DOCS_MAX {
                return Err(ApiError::bad_request(format!(
                    "an insert takes 1 to {INSERT_DOCS_MAX} documents (got {})",
                    values.len()
                )));
            }
            let docs = values.into_iter().enumerate().map(|(i, v)| new_doc(v, Some(i), &write_id));
            docs.collect::<Result<Vec<_>, _>>()?
        }
        value => vec![new_doc(value, None, &write_id)?],
    };
    let applied = state.write(Op::Insert { table, docs, conflict }, write_id).await?;
    match &applied.outcome {
        // The ids come from the outcome: a retry answered from memory reports
        // the ids first stored, not the ones generated for the retry.
        Outcome::Inserted { inserted, replaced, updated, ids } => {
            let fields =
                json!({"inserted": inserted, "replaced": replaced, "updated": updated, "ids": ids});
            Ok((StatusCode::CREATED, Json(written(&applied, fields))))
        }
        other => Err(unexpected(other.clone())),
    }
}

pub async fn get(
    State(state): State<AppState>,
    path: DocPath,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (table, id) = doc_path(path)?;
    params?.barrier(&state).await?;
    match state.store.get_doc(&table, &id)? {
        Some(json) => Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response()),
        None => Err(ApiError::not_found(
            "doc_not_found",
            format!("document '{id}' does not exist in table '{table}'"),
        )),
    }
}

pub async fn replace(
    State(state): State<AppState>,
    write_id: WriteId,
    path: DocPath,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (table, id) = doc_path(path)?;
    let Value::Object(mut object) = body.json("a document (a JSON object)")? else {
        return Err(ApiError::bad_request("a document must be a JSON object"));
    };
    check_id_matches(&object, &id)?;
    object.insert("id".into(), Value::String(id.clone()));
    let doc = Doc { id, json: Value::Object(object).to_string() };
    let applied = state.write(Op::Replace { table, doc }, write_id).await?;
    match applied.outcome {
        Outcome::Replaced { created } => Ok(created_answer(&applied, created)),
        other => Err(unexpected(other)),
    }
}

/// A body may repeat the path's id, but not contradict it.
fn check_id_matches(object: &Map<String, Value>, id: &str) -> Result<(), ApiError> {
    match object.get("id") {
        None => Ok(()),
        Some(Value::String(given)) if given == id => Ok(()),
        Some(other) => Err(ApiError::bad_request(format!(
            "the body's \"id\" ({other}) differs from the path's id '{id}'"
        ))),
    }
}

pub async fn update(
    State(state): State<AppState>,
    write_id: WriteId,
    path: DocPath,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (table, id) = doc_path(path)?;
    let patch = body.json("a JSON merge patch (an object)")?;
    let Value::Object(object) = &patch else {
        return Err(ApiError::bad_request("a merge patch for a document must be a JSON object"));
    };
    check_id_matches(object, &id)?;
    let applied = state.write(Op::Update { table, id, patch: patch.to_string() }, write_id).await?;
    match applied.outcome {
        Outcome::Updated { ref json } => {
            let doc: Value = serde_json::from_str(json)
                .map_err(|e| ApiError::internal(format!("patched document is not JSON: {e}")))?;
            Ok(Json(written(&applied, json!({ "doc": doc }))))
        }
        other => Err(unexpected(other)),
    }
}

pub async fn delete(
    State(state): State<AppState>,
    write_id: WriteId,
    path: DocPath,
) -> Result<Json<Value>, ApiError> {
    let (table, id) = doc_path(path)?;
    let applied = state.write(Op::Delete { table, id }, write_id).await?;
    match applied.outcome {
        Outcome::Deleted { existed } => Ok(Json(written(&applied, json!({ "deleted": existed })))),
        other => Err(unexpected(other)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<usize>,
    #[serde(default)]
    read: ReadMode,
}

pub async fn list(
    State(state): State<AppState>,
    path: TablePath,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let table = table_name(path)?;
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {LIST_LIMIT_MAX} (got {limit})"
        )));
    }
    ReadParams { read: params.read }.barrier(&state).await?;
    let page = state.store.list_docs(&table, params.after.as_deref(), limit)?;
    // The documents are stored as JSON text: splice them in rather than parse.
    let mut body = String::with_capacity(page.docs.iter().map(|d| d.len() + 1).sum::<usize>() + 64);
    body.push_str("{\"docs\":[");
    body.push_str(&page.docs.join(","));
    body.push_str("],\"next\":");
    body.push_str(&json!(page.next).to_string());
    body.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
