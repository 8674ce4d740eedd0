//! Documents: insert (one or many, with a conflict mode), get, replace, merge
//! patch, delete, and paged listing in id order.
//!
//! Ids are decided here, at the edge, before the command enters the log: a
//! generated id must be the same on every replica.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_client::views::{Created, Deleted, DocsPage, Inserted, Updated};
use cairn_storage::command::{
    validate_doc_id, validate_doc_size, DOC_ID_BYTES_MAX, INSERT_DOCS_MAX,
};
use cairn_storage::{Conflict, Doc, Op, Outcome, COMMAND_BYTES_MAX, LIST_LIMIT_MAX};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::openapi::{ArrayBuilder, ObjectBuilder, OneOfBuilder, RefOr, Schema, Type};

use super::created_answer;
use super::openapi::Failures;
use super::tables::{table_name, unexpected};
use crate::error::ApiError;
use crate::extract::{Body, DocParam, ReadMode, ReadParams, TableParam, WriteId};
use crate::state::AppState;

/// Documents per page when `limit` is not given.
const LIST_LIMIT_DEFAULT: usize = 100;

type TablePath = Result<Path<TableParam>, PathRejection>;
type DocPath = Result<Path<DocParam>, PathRejection>;

fn doc_path(path: DocPath) -> Result<(String, String), ApiError> {
    let Path(DocParam { table, id }) = path?;
    let table = table_name(Ok(Path(TableParam { table })))?;
    validate_doc_id(&id).map_err(ApiError::bad_request)?;
    Ok((table, id))
}

/// An insert's query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InsertParams {
    /// What an existing id meets: `error` (the default: 409), `replace`, or
    /// `update` (a merge).
    #[serde(default)]
    #[param(inline)]
    conflict: cairn_client::Conflict,
}

/// An insert's body: one document, or an array of 1 to [`INSERT_DOCS_MAX`].
/// A document is a JSON object; its `id`, when given, is a string of 1 to
/// 512 bytes (generated when absent).
pub struct NewDocs(Value);

impl FromRequest<AppState> for NewDocs {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<NewDocs, ApiError> {
        let body = Body::from_request(req, state).await?;
        Ok(NewDocs(body.json("a document (a JSON object) or an array of documents")?))
    }
}

impl utoipa::PartialSchema for NewDocs {
    fn schema() -> RefOr<Schema> {
        let id = ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(DOC_ID_BYTES_MAX))
            .description(Some("1 to 512 bytes; generated when absent"))
            .build();
        let doc = || ObjectBuilder::new().schema_type(Type::Object).property("id", id.clone());
        let many =
            ArrayBuilder::new().items(doc()).min_items(Some(1)).max_items(Some(INSERT_DOCS_MAX));
        OneOfBuilder::new().item(doc()).item(many).into()
    }
}

impl utoipa::ToSchema for NewDocs {}

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
    let json = Value::Object(object).to_string();
    validate_doc_size(&id, json.len()).map_err(|e| too_large(format!("{}{e}", at())))?;
    Ok(Doc { id, json })
}

/// What a document adds to an entry beyond its id and JSON: two length
/// prefixes, with margin.
const DOC_FRAMING_BYTES: usize = 16;

/// 413 for a document, value or command over its limit.
pub(super) fn too_large(message: String) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
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

/// Inserts a document, or an array of them at once (all or none).
#[utoipa::path(post, operation_id = "docs_insert", path = "/v1/tables/{table}/docs", tag = "tables",
    params(TableParam, InsertParams, WriteId), request_body = NewDocs,
    responses((status = 201, description = "The documents are in.", body = Inserted), Failures))]
pub async fn insert(
    State(state): State<AppState>,
    write_id: WriteId,
    path: TablePath,
    params: Result<Query<InsertParams>, QueryRejection>,
    NewDocs(body): NewDocs,
) -> Result<(StatusCode, Json<Inserted>), ApiError> {
    let table = table_name(path)?;
    // The wire's name for it, to the state machine's.
    let conflict = match params?.conflict {
        cairn_client::Conflict::Error => Conflict::Error,
        cairn_client::Conflict::Replace => Conflict::Replace,
        cairn_client::Conflict::Update => Conflict::Update,
    };
    let docs = match body {
        Value::Array(values) => {
            if values.is_empty() || values.len() > INSERT_DOCS_MAX {
                return Err(ApiError::bad_request(format!(
                    "an insert takes 1 to {INSERT_DOCS_MAX} documents (got {})",
                    values.len()
                )));
            }
            let docs = values.into_iter().enumerate().map(|(i, v)| new_doc(v, Some(i), &write_id));
            let docs = docs.collect::<Result<Vec<_>, _>>()?;
            // Stored JSON can be longer than what was sent (ids added,
            // numbers written out): the entry is checked, not the body.
            let bytes: usize =
                docs.iter().map(|d| d.json.len() + d.id.len() + DOC_FRAMING_BYTES).sum();
            if bytes > COMMAND_BYTES_MAX {
                return Err(too_large(format!(
                    "the insert would make a log entry of about {bytes} bytes, over the limit of \
                     {COMMAND_BYTES_MAX}: send fewer documents at once"
                )));
            }
            docs
        }
        value => vec![new_doc(value, None, &write_id)?],
    };
    let applied = state.write(Op::Insert { table, docs, conflict }, write_id).await?;
    match applied.outcome {
        // The ids come from the outcome: a retry answered from memory reports
        // the ids first stored, not the ones generated for the retry.
        Outcome::Inserted { inserted, replaced, updated, ids } => {
            let answer = Inserted { inserted, replaced, updated, ids, index: applied.index };
            Ok((StatusCode::CREATED, Json(answer)))
        }
        other => Err(unexpected(other)),
    }
}

/// A document.
#[utoipa::path(get, operation_id = "docs_get", path = "/v1/tables/{table}/docs/{id}", tag = "tables",
    params(DocParam, ReadParams),
    responses((status = 200, description = "The document.", body = Object), Failures))]
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

/// Replaces a document, or creates it.
#[utoipa::path(put, operation_id = "docs_replace", path = "/v1/tables/{table}/docs/{id}", tag = "tables",
    params(DocParam, WriteId),
    request_body(content = Object, description = "The document; an `id` in it must be the path's."),
    responses(
        (status = 201, description = "The document was created.", body = Created),
        (status = 200, description = "The document was replaced.", body = Created),
        Failures))]
pub async fn replace(
    State(state): State<AppState>,
    write_id: WriteId,
    path: DocPath,
    body: Body,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let (table, id) = doc_path(path)?;
    let Value::Object(mut object) = body.json("a document (a JSON object)")? else {
        return Err(ApiError::bad_request("a document must be a JSON object"));
    };
    check_id_matches(&object, &id)?;
    object.insert("id".into(), Value::String(id.clone()));
    let json = Value::Object(object).to_string();
    validate_doc_size(&id, json.len()).map_err(too_large)?;
    let doc = Doc { id, json };
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

/// Merges a JSON merge patch (RFC 7396) into a document.
#[utoipa::path(patch, operation_id = "docs_update", path = "/v1/tables/{table}/docs/{id}", tag = "tables",
    params(DocParam, WriteId),
    request_body(content = Object, description = "A JSON merge patch; it cannot change the `id`."),
    responses((status = 200, description = "The document as it now is.", body = Updated), Failures))]
pub async fn update(
    State(state): State<AppState>,
    write_id: WriteId,
    path: DocPath,
    body: Body,
) -> Result<Json<Updated>, ApiError> {
    let (table, id) = doc_path(path)?;
    let patch = body.json("a JSON merge patch (an object)")?;
    let Value::Object(object) = &patch else {
        return Err(ApiError::bad_request("a merge patch for a document must be a JSON object"));
    };
    check_id_matches(object, &id)?;
    let applied = state.write(Op::Update { table, id, patch: patch.to_string() }, write_id).await?;
    match applied.outcome {
        Outcome::Updated { ref json } => {
            let doc: Map<String, Value> = serde_json::from_str(json).map_err(|e| {
                ApiError::internal(format!("patched document is not a JSON object: {e}"))
            })?;
            Ok(Json(Updated { doc, index: applied.index }))
        }
        other => Err(unexpected(other)),
    }
}

/// Deletes a document.
#[utoipa::path(delete, operation_id = "docs_delete", path = "/v1/tables/{table}/docs/{id}", tag = "tables",
    params(DocParam, WriteId),
    responses((status = 200, description = "The document is gone.", body = Deleted), Failures))]
pub async fn delete(
    State(state): State<AppState>,
    write_id: WriteId,
    path: DocPath,
) -> Result<Json<Deleted>, ApiError> {
    let (table, id) = doc_path(path)?;
    let applied = state.write(Op::Delete { table, id }, write_id).await?;
    match applied.outcome {
        Outcome::Deleted { existed } => {
            Ok(Json(Deleted { deleted: existed, index: applied.index }))
        }
        other => Err(unexpected(other)),
    }
}

/// A page's query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The page starts after this id (the last page's `next`).
    after: Option<String>,
    /// Documents per page: 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `linearizable` (the default) or `local`.
    #[serde(default)]
    #[param(inline)]
    read: ReadMode,
}

/// A page of documents in id order.
#[utoipa::path(get, operation_id = "docs_list", path = "/v1/tables/{table}/docs", tag = "tables",
    params(TableParam, ListParams),
    responses((status = 200, description = "One page, and the cursor of the next.", body = DocsPage),
        Failures))]
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
