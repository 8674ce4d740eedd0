//! Backups of this node's state, under `/v1/admin/backups` (admin only).
//!
//! Backups live in sinks: directories under the node's backup root
//! (`--backup-dir`), each named as a backup is (so a sink is always inside
//! the root: no paths, no `..`). `default` is the sink when none is named.
//!
//! - `POST /v1/admin/backups` `{"name": "b1", "sink": "nightly"}`: waits for
//!   a read barrier, so the state holds every write acknowledged before the
//!   request, then takes backup `b1` into the sink and answers it (201): its
//!   index, fingerprint, sizes and duration.
//! - `GET /v1/admin/backups[?sink=S]`: the backups of one sink, or of every
//!   sink, by sink and name.
//! - `DELETE /v1/admin/backups/{name}[?sink=S]`: deletes one, and the files
//!   no other backup of its sink shares.
//!
//! The work is [`cairn_storage::backup`]'s, on a blocking thread: the node
//! goes on serving and applying meanwhile (a checkpoint is hard links, and the
//! copy reads files that no longer change). A node without `--backup-dir`
//! refuses with 409 `backups_not_configured`. `cairn restore` turns a backup
//! into a new data directory. The control plane takes its backups through
//! these routes, on a follower.

use std::path::{Path, PathBuf};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_client::views::{BackupDeleted, BackupList, BackupView};
use cairn_storage::backup::{self, BackupSink, DirSink, Manifest};
use serde::Deserialize;
use serde_json::Value;

use super::openapi::Failures;
use crate::error::ApiError;
use crate::extract::Body;
use crate::state::AppState;

/// The directory, in the data directory, where backups' checkpoints are taken
/// (hard links need the store's file system); emptied when the node starts.
pub const BACKUP_SCRATCH_DIR: &str = "backup-scratch";

/// The wire's view of a manifest in `dir`, sink `sink`.
pub fn view(manifest: &Manifest, sink: &str, dir: &Path) -> BackupView {
    BackupView {
        name: manifest.name.clone(),
        sink: sink.to_string(),
        applied_index: manifest.applied_index,
        fingerprint: manifest.fingerprint.clone(),
        created_ms: manifest.created_ms,
        duration_ms: manifest.duration_ms,
        bytes: manifest.bytes,
        new_bytes: manifest.new_bytes,
        files: manifest.files.len(),
        cairn_version: manifest.cairn_version.clone(),
        location: dir.join(&manifest.name).display().to_string(),
    }
}

/// `?sink=`: which sink.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SinkParams {
    /// The sink: a directory under the node's backup root, 1 to 63
    /// characters of a-z 0-9 - _ (`default` when left out).
    #[param(pattern = "^[a-z0-9_-]{1,63}$")]
    sink: Option<String>,
}

/// The directory of `sink` (`default` when `None`) under the backup root.
fn sink_of(root: &Path, sink: Option<&str>) -> Result<(String, PathBuf), ApiError> {
    let sink = sink.unwrap_or(backup::DEFAULT_SINK);
    let dir = backup::sink_dir(root, sink).map_err(|e| ApiError::bad_request(reason_of(e)))?;
    Ok((sink.to_string(), dir))
}

fn reason_of(error: cairn_storage::Error) -> String {
    match error {
        cairn_storage::Error::Backup { reason } => reason,
        other => other.to_string(),
    }
}

fn backup_dir(state: &AppState) -> Result<PathBuf, ApiError> {
    state.config.backup_dir.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "backups_not_configured",
            "this node has no backup directory: start it with --backup-dir DIR",
        )
    })
}

fn failed(error: cairn_storage::Error) -> ApiError {
    tracing::error!(%error, "a backup operation failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "backup_failed", error.to_string())
}

fn bad_name(name: &str) -> Result<(), ApiError> {
    backup::check_name(name).map_err(|e| ApiError::bad_request(reason_of(e)))
}

/// Runs `work` on a blocking thread; a panic there is an internal error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("the backup task failed: {e}")))?
}

/// Takes a backup of this node's state into a sink under its backup root.
#[utoipa::path(post, operation_id = "backup_create", path = "/v1/admin/backups", tag = "cluster",
    request_body(content = cairn_client::views::NewBackup,
        description = "`{\"name\": \"b1\", \"sink\": \"nightly\"}`: each 1 to 63 characters of \
            a-z 0-9 - _; the sink is `default` when left out."),
    responses((status = 201, description = "The backup taken.", body = BackupView), Failures))]
pub async fn create(
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    let request = body.json("an object {\"name\": \"b1\"}")?;
    let Some(fields) = request.as_object() else {
        return Err(ApiError::bad_request("the body must be an object with \"name\""));
    };
    if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "name" | "sink")) {
        return Err(ApiError::bad_request(format!("unknown field \"{unknown}\"")));
    }
    let name = match fields.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err(ApiError::bad_request("\"name\" is required: a string")),
    };
    let sink = match fields.get("sink") {
        None => None,
        Some(Value::String(sink)) => Some(sink.as_str()),
        Some(_) => return Err(ApiError::bad_request("\"sink\" must be a string")),
    };
    bad_name(&name)?;
    let (sink_name, dir) = sink_of(&backup_dir(&state)?, sink)?;
    // Everything acknowledged before the request is in the backup.
    state.read_barrier().await?;
    let store = state.store.clone();
    let scratch_parent = state.config.data_dir.join(BACKUP_SCRATCH_DIR);
    let taken = blocking(move || {
        let sink = DirSink::new(&dir).map_err(failed)?;
        if sink.manifest(&name).map_err(failed)?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "backup_exists",
                format!("{} already holds a backup named {name:?}", dir.display()),
            ));
        }
        let manifest = backup::take(&store, &scratch_parent, &sink, &name).map_err(failed)?;
        Ok(view(&manifest, &sink_name, &dir))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(taken)))
}

/// The backups of one sink, or of every sink, under this node's backup
/// root.
#[utoipa::path(get, operation_id = "backup_list", path = "/v1/admin/backups", tag = "cluster",
    params(SinkParams),
    responses((status = 200, description = "The backups, by sink and name.", body = BackupList),
        Failures))]
pub async fn list(
    State(state): State<AppState>,
    params: Result<Query<SinkParams>, QueryRejection>,
) -> Result<Json<BackupList>, ApiError> {
    let Query(params) = params?;
    let root = backup_dir(&state)?;
    let one = match params.sink {
        Some(sink) => Some(sink_of(&root, Some(&sink))?),
        None => None,
    };
    let backups = blocking(move || {
        let sinks = match one {
            Some(one) => vec![one],
            None => backup::sinks(&root)
                .map_err(failed)?
                .into_iter()
                .map(|sink| {
                    let dir = root.join(&sink);
                    (sink, dir)
                })
                .collect(),
        };
        let mut views = Vec::new();
        for (sink, dir) in sinks {
            if !dir.exists() {
                continue;
            }
            let held = DirSink::existing(&dir).map_err(failed)?;
            views.extend(held.manifests().map_err(failed)?.iter().map(|m| view(m, &sink, &dir)));
        }
        Ok(views)
    })
    .await?;
    Ok(Json(BackupList { backups }))
}

/// Deletes a backup, and every file no other backup of its sink shares.
#[utoipa::path(delete, operation_id = "backup_delete", path = "/v1/admin/backups/{name}",
    tag = "cluster",
    params(("name" = String, Path, description = "The backup's name."), SinkParams),
    responses((status = 200, description = "Whether it existed; it is gone now.",
        body = BackupDeleted), Failures))]
pub async fn delete(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
    params: Result<Query<SinkParams>, QueryRejection>,
) -> Result<Json<BackupDeleted>, ApiError> {
    let Query(params) = params?;
    bad_name(&name)?;
    let (_, dir) = sink_of(&backup_dir(&state)?, params.sink.as_deref())?;
    let deleted = blocking(move || {
        if !dir.exists() {
            return Ok(false);
        }
        let sink = DirSink::existing(&dir).map_err(failed)?;
        backup::delete(&sink, &name).map_err(failed)
    })
    .await?;
    Ok(Json(BackupDeleted { deleted }))
}
