//! Membership changes on a live cluster, under `/v1/admin/`.
//!
//! - `GET /v1/admin/members`: the configuration this node is in.
//! - `POST /v1/admin/members` `{"id": N, "peer_address": "HOST:PORT",
//!   "replaces": M?}`: adds node N (in place of M, in one change); adding a
//!   member that is already there at the same address changes nothing, so a
//!   joining node can ask again.
//! - `DELETE /v1/admin/members/{id}`: removes a member.
//! - `POST /v1/admin/finalize` `{"version": "0.2"}?`: raises the cluster
//!   version once every member runs a release that runs it.
//!
//! Any node takes these; the change is ordered through the log (a StopSign
//! ends the configuration, the next one starts with a fresh log) and the
//! answer, the new membership, comes once it took effect on this node. A
//! single node decides alone, and starts replicating when it gains members.
//! One change at a time; a node to be added should be running, with an empty
//! data directory, so the new configuration keeps a quorum (`cairn node
//! --join` does both: it starts, then asks to be added).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::{Path, State};
use axum::Json;
use cairn_consensus::replica::NODE_ID_MAX;
use cairn_consensus::Membership;
use serde_json::Value;

use cairn_client::views::{Finalized, MembersView};
use cairn_storage::cluster_version::supported_by;
use cairn_storage::{ClusterVersion, Op, Outcome, CLUSTER_VERSION_KEY};

use super::openapi::Failures;
use crate::error::ApiError;
use crate::extract::{Body, WriteId};
use crate::state::{AppState, Cut};

/// The least time a membership change is given: it may first wait for a
/// member to catch up to the new configuration's base, which takes longer
/// than a write.
const MEMBERSHIP_TIMEOUT_MS_MIN: u64 = 30_000;

/// The wire's view of a configuration.
fn view(membership: &Membership) -> MembersView {
    MembersView {
        cluster_id: Some(membership.cluster_id),
        configuration_id: membership.configuration_id,
        members: addresses(&membership.members),
        base_index: membership.base_index,
    }
}

/// Each member's peer address, as the wire writes it.
fn addresses(members: &BTreeMap<u64, SocketAddr>) -> BTreeMap<u64, String> {
    members.iter().map(|(id, at)| (*id, at.to_string())).collect()
}

/// The members as this node knows them: its membership, or itself alone.
fn current(state: &AppState) -> (BTreeMap<u64, SocketAddr>, MembersView) {
    match state.log().membership() {
        Some(membership) => {
            let answer = view(&membership);
            (membership.members, answer)
        }
        None => {
            let config = &state.config;
            let members: BTreeMap<u64, SocketAddr> =
                config.peer_listen.map(|addr| (config.id, addr)).into_iter().collect();
            let answer = MembersView {
                cluster_id: None,
                configuration_id: 0,
                members: addresses(&members),
                base_index: 0,
            };
            (members, answer)
        }
    }
}

/// The configuration this node is in.
#[utoipa::path(get, operation_id = "admin_list", path = "/v1/admin/members", tag = "cluster",
    responses((status = 200, description = "The members, by node id.", body = MembersView), Failures))]
pub async fn list(State(state): State<AppState>) -> Result<Json<MembersView>, ApiError> {
    Ok(Json(current(&state).1))
}

/// Adds a member (in place of another, with `replaces`), once it can take
/// effect safely; answers the new configuration.
#[utoipa::path(post, operation_id = "admin_add", path = "/v1/admin/members", tag = "cluster",
    request_body(content = Object,
        description = "`{\"id\": N, \"peer_address\": \"IP:PORT\", \"replaces\": M}` (`replaces` optional)."),
    responses((status = 200, description = "The new configuration.", body = MembersView), Failures))]
pub async fn add(State(state): State<AppState>, body: Body) -> Result<Json<MembersView>, ApiError> {
    let request = body.json("an object {\"id\": N, \"peer_address\": \"HOST:PORT\"}")?;
    let Some(fields) = request.as_object() else {
        return Err(ApiError::bad_request(
            "the body must be an object with \"id\" and \"peer_address\"",
        ));
    };
    if let Some(unknown) =
        fields.keys().find(|k| !["id", "peer_address", "replaces"].contains(&k.as_str()))
    {
        return Err(ApiError::bad_request(format!("unknown field \"{unknown}\"")));
    }
    let id = node_id(fields.get("id"), "id")?
        .ok_or_else(|| ApiError::bad_request("\"id\" is required: the new node's id"))?;
    let replaces = node_id(fields.get("replaces"), "replaces")?;
    let peer_address: SocketAddr = match fields.get("peer_address") {
        Some(Value::String(text)) => text.parse().map_err(|e| {
            ApiError::bad_request(format!(
                "\"peer_address\" '{text}' is not HOST:PORT with an IP: {e}"
            ))
        })?,
        _ => return Err(ApiError::bad_request("\"peer_address\" is required: a string HOST:PORT")),
    };
    let (mut members, answer) = current(&state);
    if members.is_empty() {
        return Err(ApiError::bad_request(
            "this node runs alone without a peer address: restart it with --peer-listen to add members",
        ));
    }
    if let Some(at) = members.get(&id) {
        if *at == peer_address && replaces.is_none() {
            return Ok(Json(answer));
        }
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "member_exists",
            format!("node {id} is already a member, at {at}"),
        ));
    }
    if let Some(old) = replaces {
        if members.remove(&old).is_none() {
            return Err(ApiError::not_found(
                "member_not_found",
                format!("node {old} is not a member"),
            ));
        }
    }
    members.insert(id, peer_address);
    change(&state, members).await
}

/// Removes a member; answers the new configuration.
#[utoipa::path(delete, operation_id = "admin_remove", path = "/v1/admin/members/{id}", tag = "cluster",
    params(("id" = u64, Path, description = "The member's node id.", minimum = 1)),
    responses((status = 200, description = "The new configuration.", body = MembersView), Failures))]
pub async fn remove(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<MembersView>, ApiError> {
    let id = node_id(Some(&Value::String(id.clone())), "id")?.unwrap_or_default();
    let (mut members, _) = current(&state);
    if members.remove(&id).is_none() {
        return Err(ApiError::not_found("member_not_found", format!("node {id} is not a member")));
    }
    if members.is_empty() {
        return Err(ApiError::bad_request(format!(
            "node {id} is the only member: it cannot be removed"
        )));
    }
    change(&state, members).await
}

async fn change(
    state: &AppState,
    members: BTreeMap<u64, SocketAddr>,
) -> Result<Json<MembersView>, ApiError> {
    let timeout_ms = state.config.write_timeout_ms.max(MEMBERSHIP_TIMEOUT_MS_MIN);
    let changed = match state.awaited(timeout_ms, state.log().change_membership(members)).await {
        Ok(result) => result?,
        Err(Cut::Timeout) => {
            return Err(ApiError::timeout(
                "the membership change did not take effect in time; it may still",
            ))
        }
        Err(Cut::Stopping) => {
            return Err(ApiError::unavailable(
                "the node is shutting down before the membership change took effect; it may \
                 still",
            ))
        }
    };
    Ok(Json(view(&changed)))
}

/// A node id from JSON (a number, or a string of digits in a path).
fn node_id(value: Option<&Value>, field: &str) -> Result<Option<u64>, ApiError> {
    let id = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        Some(_) => None,
    };
    match id {
        Some(id) if (1..=NODE_ID_MAX).contains(&id) => Ok(Some(id)),
        _ => Err(ApiError::bad_request(format!(
            "\"{field}\" must be a node id from 1 to {NODE_ID_MAX}"
        ))),
    }
}

/// Finalizes an upgrade: raises the cluster version (the feature gate,
/// see `cairn_storage::cluster_version`) to `version`, or, without a body,
/// to the highest version every member runs. Every member must be
/// reachable and run a release that runs the new version; the version
/// never goes down. Answers the versions before and after.
#[utoipa::path(post, operation_id = "admin_finalize", path = "/v1/admin/finalize", tag = "cluster",
    request_body(content = Object,
        description = "`{\"version\": \"MAJOR.MINOR\"}`, or no body for the highest every member runs."),
    responses((status = 200, description = "The cluster version before and after.", body = Finalized),
        Failures))]
pub async fn finalize(
    State(state): State<AppState>,
    body: Body,
) -> Result<Json<Finalized>, ApiError> {
    let asked = if body.0.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let request = body.json("an object {\"version\": \"MAJOR.MINOR\"}")?;
        let text = match request.as_object() {
            Some(fields) if fields.len() == 1 => fields.get("version").and_then(Value::as_str),
            _ => None,
        }
        .ok_or_else(|| {
            ApiError::bad_request("the body must be {\"version\": \"MAJOR.MINOR\"}, or empty")
        })?;
        Some(ClusterVersion::parse(text).map_err(ApiError::bad_request)?)
    };
    // What every member runs, as the members last said in their hellos.
    let members = state.log().members();
    let runs: Vec<(u64, String)> = if members.is_empty() {
        vec![(state.config.id, cairn_util::version().to_string())]
    } else {
        let mut runs = Vec::with_capacity(members.len());
        for member in members {
            match member.version {
                Some(version) if member.reachable => runs.push((member.node_id, version)),
                _ => {
                    return Err(not_finalizable(format!(
                        "node {} is not reachable, so what it runs is unknown: every member \
                         must answer to finalize",
                        member.node_id
                    )))
                }
            }
        }
        runs
    };
    let mut ranges = Vec::with_capacity(runs.len());
    for (id, version) in &runs {
        let supported = supported_by(version)
            .map_err(|e| not_finalizable(format!("node {id} reports version '{version}': {e}")))?;
        ranges.push((*id, version, supported));
    }
    let highest = ranges.iter().map(|(_, _, s)| s.max).min().unwrap_or(ClusterVersion::BASE);
    let target = asked.unwrap_or(highest);
    if let Some((id, version, supported)) = ranges.iter().find(|(_, _, s)| !s.contains(target)) {
        return Err(not_finalizable(format!(
            "node {id} runs Cairn {version}, which runs cluster versions {supported}, not \
             {target}: upgrade it first"
        )));
    }
    state.read_barrier().await?;
    let previous = state.store.cluster_version()?;
    if target < previous {
        return Err(not_finalizable(format!(
            "the cluster version is {previous}, and it never goes down (asked: {target})"
        )));
    }
    if target == previous {
        let version = previous.to_string();
        return Ok(Json(Finalized {
            cluster_version: version.clone(),
            previous: version,
            index: None,
        }));
    }
    let revision = match state.store.get_system(CLUSTER_VERSION_KEY)? {
        None => 0,
        Some(json) => serde_json::from_str::<Value>(&json)
            .ok()
            .and_then(|record| record["revision"].as_u64())
            .unwrap_or(0),
    };
    let op = Op::SystemPut {
        key: CLUSTER_VERSION_KEY.into(),
        json: cairn_storage::cluster_version::record_json(target),
        expect_revision: Some(revision),
    };
    let applied = state.write(op, WriteId(None)).await?;
    match applied.outcome {
        Outcome::Replaced { .. } => {
            tracing::info!(%previous, cluster_version = %target, "upgrade finalized");
            Ok(Json(Finalized {
                cluster_version: target.to_string(),
                previous: previous.to_string(),
                index: Some(applied.index),
            }))
        }
        other => Err(super::unexpected(other)),
    }
}

fn not_finalizable(message: String) -> ApiError {
    ApiError::new(axum::http::StatusCode::CONFLICT, "not_finalizable", message)
}
