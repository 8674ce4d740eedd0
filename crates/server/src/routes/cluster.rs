//! Health and cluster membership as this node sees it.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::state::AppState;

pub async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let status = state.log().status()?;
    Ok(Json(json!({
        "status": "ok",
        "id": status.node_id,
        "role": status.role.as_str(),
        "applied_index": status.applied_index,
    })))
}

pub async fn cluster(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let status = state.log().status()?;
    let node = json!({
        "id": status.node_id,
        "address": state.config.advertise_address(),
        "zone": state.config.zone,
        "version": crate::VERSION,
        "role": status.role.as_str(),
        "decided_index": status.decided_index,
        "applied_index": status.applied_index,
        "reachable": true,
    });
    Ok(Json(json!({
        "nodes": [node],
        "leader": status.leader,
        "configuration_id": status.configuration_id,
        "reconciliation": null,
    })))
}
