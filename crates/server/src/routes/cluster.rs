//! Health and cluster membership as this node sees it.

use axum::extract::State;
use axum::Json;
use cairn_client::views::{ClusterView, Health, NodeRole, NodeView, SessionOpened};
use cairn_consensus::Role;

use super::openapi::Failures;

use crate::error::ApiError;
use crate::state::AppState;

/// 200 while the node serves; 503 with the reason when it cannot (no quorum
/// in sight, catching up from a peer, removed from the cluster).
#[utoipa::path(get, operation_id = "cluster_health", path = "/v1/health", tag = "cluster",
    responses((status = 200, description = "The node serves.", body = Health), Failures))]
pub async fn health(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    let status = state.log().status()?;
    if let Some(reason) = status.not_serving {
        return Err(ApiError::from(reason));
    }
    Ok(Json(Health {
        status: "ok".into(),
        id: status.node_id,
        role: node_role(status.role),
        applied_index: status.applied_index,
        peer_tls: state.config.certs_dir.is_some(),
        insecure: state.config.insecure,
    }))
}

/// The cluster as this node sees it: every member's address, zone, version,
/// role and progress, the leader, and the control plane's last report.
#[utoipa::path(get, operation_id = "cluster_cluster", path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "The members as this node knows them.", body = ClusterView), Failures))]
pub async fn cluster(State(state): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let status = state.log().status()?;
    let members = state.log().members();
    let nodes: Vec<NodeView> = if members.is_empty() {
        // A single node: only itself.
        vec![NodeView {
            id: status.node_id,
            address: Some(state.config.advertise_address()),
            peer_address: None,
            zone: state.config.zone.clone(),
            version: Some(cairn_util::version().to_string()),
            role: Some(node_role(status.role)),
            decided_index: Some(status.decided_index),
            applied_index: Some(status.applied_index),
            reachable: true,
        }]
    } else {
        // This node's own progress and its view of the leader are live; a
        // peer's progress is as of its last hello (a fraction of a second).
        members
            .into_iter()
            .map(|m| {
                let own = m.node_id == status.node_id;
                let role = match (status.leader, m.role) {
                    (Some(leader), _) if leader == m.node_id => Some(NodeRole::Leader),
                    (_, Some(_)) => Some(NodeRole::Follower),
                    (_, None) => None,
                };
                NodeView {
                    id: m.node_id,
                    address: m.api_address,
                    peer_address: m.peer_address,
                    zone: m.zone,
                    version: m.version,
                    role,
                    decided_index: if own { Some(status.decided_index) } else { m.decided_index },
                    applied_index: if own { Some(status.applied_index) } else { m.applied_index },
                    reachable: m.reachable,
                }
            })
            .collect()
    };
    Ok(Json(ClusterView {
        nodes,
        leader: status.leader,
        configuration_id: status.configuration_id,
        cluster_version: Some(state.store.cluster_version()?.to_string()),
        reconciliation: super::system::reconciliation(&state),
    }))
}

fn node_role(role: Role) -> NodeRole {
    match role {
        Role::Leader => NodeRole::Leader,
        Role::Follower => NodeRole::Follower,
    }
}

/// Opens a session for exactly-once writes: the client then sends
/// `Cairn-Session: <session>` and `Cairn-Seq: 1, 2, …` with its writes, one
/// write in flight at a time, and repeats the same pair when it retries.
/// The handle is unguessable and works only with the credential that
/// opened the session.
#[utoipa::path(post, operation_id = "cluster_open_session", path = "/v1/sessions", tag = "cluster",
    responses((status = 201, description = "The session is open.", body = SessionOpened), Failures))]
pub async fn open_session(
    State(state): State<AppState>,
    principal: axum::Extension<crate::auth::Principal>,
    _: crate::extract::JsonPost,
) -> Result<(axum::http::StatusCode, Json<SessionOpened>), ApiError> {
    // The key first: a session whose handle cannot be made is not opened.
    let key = crate::auth::session_key(&state).await?;
    let applied = state.open_session().await?;
    match applied.outcome {
        cairn_storage::Outcome::SessionOpened { session } => Ok((
            axum::http::StatusCode::CREATED,
            Json(SessionOpened {
                session: crate::auth::session_handle(&key, session, &principal),
                index: applied.index,
            }),
        )),
        other => Err(super::tables::unexpected(other)),
    }
}
