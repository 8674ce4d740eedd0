//! The HTTP API's routes (see the README, "HTTP API (v1)"). Handlers parse and
//! validate at the edge, turn the request into one state-machine [`Op`] or one
//! read, and map the outcome to the JSON contract. Unknown routes and methods
//! get JSON errors too.
//!
//! [`Op`]: cairn_storage::Op

mod admin;
mod cluster;
mod docs;
mod kv;
mod system;
mod tables;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::routing::get;
use axum::{Json, Router};
use cairn_storage::Applied;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(cluster::health))
        .route("/v1/cluster", get(cluster::cluster))
        .route("/v1/sessions", axum::routing::post(cluster::open_session))
        .route("/v1/tables", get(tables::list))
        .route("/v1/tables/{table}", axum::routing::put(tables::create).delete(tables::drop))
        .route("/v1/tables/{table}/docs", get(docs::list).post(docs::insert))
        .route(
            "/v1/tables/{table}/docs/{id}",
            get(docs::get).put(docs::replace).patch(docs::update).delete(docs::delete),
        )
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/system/{key}", get(system::get).put(system::put))
        .route("/v1/admin/members", get(admin::list).post(admin::add))
        .route("/v1/admin/members/{id}", axum::routing::delete(admin::remove))
        .route("/metrics", get(metrics::scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found("route_not_found", format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// The answer to a write that may create: 201 when it did, 200 otherwise.
fn created_answer(applied: &Applied, created: bool) -> (StatusCode, Json<Value>) {
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    (status, Json(written(applied, json!({ "created": created }))))
}

/// A write's JSON answer: `fields` plus the index it was applied at.
fn written(applied: &Applied, mut fields: Value) -> Value {
    fields["index"] = json!(applied.index);
    fields
}
