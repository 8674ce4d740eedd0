//! Backups of this node's state, under `/v1/admin/backups` (admin only).
//!
//! - `POST /v1/admin/backups` `{"name": "b1"}`: waits for a read barrier, so
//!   the state holds every write acknowledged before the request, then takes
//!   backup `b1` into the node's backup directory (`--backup-dir`) and answers
//!   it (201): its index, fingerprint, sizes and duration.
//! - `GET /v1/admin/backups`: the backups in the directory, by name.
//! - `DELETE /v1/admin/backups/{name}`: deletes one, and the files no other
//!   backup shares.
//!
//! The work is [`cairn_storage::backup`]'s, on a blocking thread: the node
//! goes on serving and applying meanwhile (a checkpoint is hard links, and the
//! copy reads files that no longer change). A node without `--backup-dir`
//! refuses with 409 `backups_not_configured`. `cairn restore` turns a backup
//! into a new data directory.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use cairn_client::views::{BackupDeleted, BackupList, BackupView};
use cairn_storage::backup::{self, BackupSink, DirSink, Manifest};
use serde_json::Value;

use super::openapi::Failures;
use crate::error::ApiError;
use crate::extract::Body;
use crate::state::AppState;

/// The directory, in the data directory, where backups' checkpoints are taken
/// (hard links need the store's file system); emptied when the node starts.
pub const BACKUP_SCRATCH_DIR: &str = "backup-scratch";

/// The wire's view of a manifest in `dir`.
pub fn view(manifest: &Manifest, dir: &Path) -> BackupView {
    BackupView {
        name: manifest.name.clone(),
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
    backup::check_name(name).map_err(|e| match e {
        cairn_storage::Error::Backup { reason } => ApiError::bad_request(reason),
        other => ApiError::bad_request(other.to_string()),
    })
}

/// Runs `work` on a blocking thread; a panic there is an internal error.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::internal(format!("the backup task failed: {e}")))?
}

/// Takes a backup of this node's state into its backup directory.
#[utoipa::path(post, operation_id = "backup_create", path = "/v1/admin/backups", tag = "cluster",
    request_body(content = cairn_client::views::NewBackup,
        description = "`{\"name\": \"b1\"}`: 1 to 63 characters of a-z 0-9 - _."),
    responses((status = 201, description = "The backup taken.", body = BackupView), Failures))]
pub async fn create(
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    let request = body.json("an object {\"name\": \"b1\"}")?;
    let Some(fields) = request.as_object() else {
        return Err(ApiError::bad_request("the body must be an object with \"name\""));
    };
    if let Some(unknown) = fields.keys().find(|k| k.as_str() != "name") {
        return Err(ApiError::bad_request(format!("unknown field \"{unknown}\"")));
    }
    let name = match fields.get("name") {
        Some(Value::String(name)) => name.clone(),
        _ => return Err(ApiError::bad_request("\"name\" is required: a string")),
    };
    bad_name(&name)?;
    let dir = backup_dir(&state)?;
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
        std::fs::create_dir_all(&scratch_parent).map_err(|e| {
            ApiError::internal(format!("cannot create {}: {e}", scratch_parent.display()))
        })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let scratch = scratch_parent.join(format!("{name}-{nanos}"));
        let manifest = backup::take(&store, &scratch, &sink, &name).map_err(failed)?;
        Ok(view(&manifest, &dir))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(taken)))
}

/// The backups in this node's backup directory.
#[utoipa::path(get, operation_id = "backup_list", path = "/v1/admin/backups", tag = "cluster",
    responses((status = 200, description = "The backups, by name.", body = BackupList), Failures))]
pub async fn list(State(state): State<AppState>) -> Result<Json<BackupList>, ApiError> {
    let dir = backup_dir(&state)?;
    let backups = blocking(move || {
        if !dir.exists() {
            return Ok(Vec::new());
        }
        let sink = DirSink::existing(&dir).map_err(failed)?;
        let manifests = sink.manifests().map_err(failed)?;
        Ok(manifests.iter().map(|m| view(m, &dir)).collect())
    })
    .await?;
    Ok(Json(BackupList { backups }))
}

/// Deletes a backup, and every file no other backup shares.
#[utoipa::path(delete, operation_id = "backup_delete", path = "/v1/admin/backups/{name}",
    tag = "cluster",
    params(("name" = String, Path, description = "The backup's name.")),
    responses((status = 200, description = "Whether it existed; it is gone now.",
        body = BackupDeleted), Failures))]
pub async fn delete(
    State(state): State<AppState>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<BackupDeleted>, ApiError> {
    bad_name(&name)?;
    let dir = backup_dir(&state)?;
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
