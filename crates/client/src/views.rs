//! What a node's cluster routes answer, as types: the server builds these
//! and serializes them, and the client, the CLI and the agents read them
//! back, so the two sides cannot disagree about a field.
//!
//! - [`Health`]: `GET /v1/health` (200 while the node serves).
//! - [`ClusterView`] and [`NodeView`]: `GET /v1/cluster`.
//! - [`MembersView`]: `GET /v1/admin/members`, and what a membership change
//!   answers.
//! - [`Failure`]: every error answer.
//! - The data routes' answers: [`Written`], [`Created`], [`Deleted`],
//!   [`Dropped`], [`Inserted`], [`Updated`], [`SessionOpened`], [`Tables`],
//!   [`DocsPage`].
//!
//! Each derives its OpenAPI schema, so the document the node serves at
//! `/v1/openapi.json` is made from the very types it answers with.
//!
//! Not here: the control plane's record (`/v1/system/control`), which the
//! control crate types; a node only passes its report through.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A node's role in its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    Leader,
    Follower,
}

/// `GET /v1/health`: the node serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `"ok"` (a node that cannot serve answers 503 instead).
    pub status: String,
    pub id: u64,
    pub role: NodeRole,
    pub applied_index: u64,
    /// Whether the node's peers authenticate each other with mutual TLS (it
    /// runs with `--certs-dir`); without, they talk plain TCP.
    #[serde(default)]
    pub peer_tls: bool,
    /// Whether the node runs `--insecure` (no authentication of peers).
    #[serde(default)]
    pub insecure: bool,
}

/// One node of [`ClusterView`], as the answering node knows it: its own
/// progress is live, a peer's is as of its last hello; what a peer has not
/// told yet is `None`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: u64,
    /// The node's HTTP API address.
    pub address: Option<String>,
    /// The node's peer (replication) address; `None` for a single node.
    pub peer_address: Option<String>,
    pub zone: Option<String>,
    pub version: Option<String>,
    pub role: Option<NodeRole>,
    pub decided_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Whether the answering node heard from it lately (always, for itself).
    pub reachable: bool,
}

/// `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterView {
    /// Every member, in id order (a single node: itself).
    pub nodes: Vec<NodeView>,
    pub leader: Option<u64>,
    /// 0 for a single node that never replicated.
    pub configuration_id: u32,
    /// The cluster version (the feature gate) in this node's state; absent
    /// from nodes older than the gate.
    #[serde(default)]
    pub cluster_version: Option<String>,
    /// The control plane's last report, from this node's copy of the
    /// control record; `null` before the control plane wrote one.
    #[schema(value_type = Option<Object>)]
    pub reconciliation: Value,
}

impl ClusterView {
    /// The node with id `id`.
    pub fn node(&self, id: u64) -> Option<&NodeView> {
        self.nodes.iter().find(|node| node.id == id)
    }
}

/// `GET /v1/admin/members`: the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MembersView {
    /// `None` for a single node that never replicated.
    pub cluster_id: Option<u64>,
    pub configuration_id: u32,
    /// Every member's peer address, by node id (JSON keys are strings).
    #[schema(value_type = BTreeMap<String, String>)]
    pub members: BTreeMap<u64, String>,
    /// The global log index just before the configuration's first entry.
    pub base_index: u64,
}

/// Every error answer: `{"error": {...}}` with a status that says how to
/// react (400 fix the request, 404 missing, 409 conflict, 413 too large, 503
/// retry later, 504 timed out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Failure {
    pub error: FailureDetail,
}

/// What went wrong, for [`Failure`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FailureDetail {
    /// A stable code to branch on, such as `table_not_found`.
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// True when a write may or may not have taken effect.
    pub indeterminate: bool,
}

/// A write's answer: the log index it applied at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Written {
    pub index: u64,
}

/// A counter's answer (`POST /v1/kv/{key}` with `{"increment": N}`): its
/// value after the increment, and the log index it applied at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Counted {
    pub value: i64,
    pub index: u64,
}

/// The answer of `POST /v1/admin/finalize`: the cluster version before and
/// after, and the log index of the change (`None` when it was already
/// there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Finalized {
    pub cluster_version: String,
    pub previous: String,
    pub index: Option<u64>,
}

/// The answer of a write that may create (a table, a replaced document, a
/// system record): 201 when it did, 200 otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Created {
    pub created: bool,
    pub index: u64,
}

/// A delete's answer; `deleted` is false when there was nothing to delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: bool,
    pub index: u64,
}

/// A table drop's answer (dropping a table that is not there is not an error).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Dropped {
    pub dropped: bool,
    pub index: u64,
}

/// An insert's answer: how each document went, and every id in the order
/// given (generated ones included).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Inserted {
    pub inserted: u64,
    pub replaced: u64,
    pub updated: u64,
    pub ids: Vec<String>,
    pub index: u64,
}

/// A merge patch's answer: the document as it now is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Updated {
    #[schema(value_type = Object)]
    pub doc: Map<String, Value>,
    pub index: u64,
}

/// `POST /v1/sessions`: the new session's handle, for `Cairn-Session`. It
/// is unguessable and good only with the credential that opened it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionOpened {
    pub session: String,
    pub index: u64,
}

/// A client's role: `read`, `write` (which reads too) or `admin` (all of
/// it, with membership, the system table, tokens and tables).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        match text {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("'{other}' is not a role: use read, write or admin")),
        }
    }
}

/// `POST /v1/tokens`: what a new token is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for: 1 to 64 printable characters.
    pub name: String,
    pub role: Role,
    /// `true` makes a one-time login code instead: good for one
    /// `POST /v1/login` within [`LOGIN_CODE_MS`], which answers a new token
    /// of the same role (the console's login URL carries one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub login: bool,
}

/// How long a login code is good for, in milliseconds: 15 minutes.
pub const LOGIN_CODE_MS: u64 = 15 * 60 * 1000;

/// A token as listed: never its secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// When it was made, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// For a one-time login code: until when it is good (milliseconds since
    /// the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login_until_ms: Option<u64>,
}

/// `POST /v1/tokens`: the new token. `token` is shown this once; the
/// cluster keeps only its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenCreated {
    #[serde(flatten)]
    pub view: TokenView,
    pub token: String,
    pub index: u64,
}

/// `GET /v1/tokens`: every token, by id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// `DELETE /v1/tokens/{id}`: whether the token existed; it is gone now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenRevoked {
    pub revoked: bool,
    pub index: u64,
}

/// One backup in a node's backup directory (`/v1/admin/backups`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupView {
    pub name: String,
    /// The sink holding it: a directory under the node's backup root.
    pub sink: String,
    /// The index of the last log entry applied to the state it holds.
    pub applied_index: u64,
    /// The state fingerprint at that index, 16 hex digits: equal on every
    /// replica at that index, and on a cluster restored from it.
    pub fingerprint: String,
    /// When it was taken (milliseconds since the Unix epoch), and how long
    /// that took.
    pub created_ms: u64,
    pub duration_ms: u64,
    /// The size of its files, and of those it added to the directory (the
    /// rest are shared with earlier backups).
    pub bytes: u64,
    pub new_bytes: u64,
    pub files: usize,
    /// The version of Cairn that took it.
    pub cairn_version: String,
    /// Where it is: `<backup root>/<sink>/<name>` (what `cairn restore
    /// --from` takes).
    pub location: String,
}

/// `GET /v1/admin/backups`: the backups in the node's backup directory, by
/// name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupList {
    pub backups: Vec<BackupView>,
}

/// `POST /v1/admin/backups`: the backup to take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NewBackup {
    /// 1 to 63 characters of `a-z 0-9 - _`, not `files`.
    #[schema(pattern = "^[a-z0-9_-]{1,63}$")]
    pub name: String,
    /// The sink, a directory under the node's backup root, named as a
    /// backup is; `default` when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[a-z0-9_-]{1,63}$")]
    pub sink: Option<String>,
}

/// `DELETE /v1/admin/backups/{name}`: whether it existed; it is gone now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BackupDeleted {
    pub deleted: bool,
}

/// `GET /v1/tables`: the table names, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tables {
    pub tables: Vec<String>,
    /// With `?count=true`: each table's number of documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<std::collections::BTreeMap<String, u64>>,
}

/// `GET /v1/tables/{t}/docs`: one page of documents in id order, and the id
/// to pass as `after` for the next page (`null` on the last).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DocsPage {
    #[schema(value_type = Vec<Object>)]
    pub docs: Vec<Map<String, Value>>,
    pub next: Option<String>,
}
