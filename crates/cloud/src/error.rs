//! The cloud's one error type, for starting up and for every request.
//!
//! Variants fall in three groups, by how a caller reacts:
//! - **the request as sent is refused** ([`Error::is_client_error`]): a bad
//!   name, a conflicting host, an invalid or stale desired state. Sending the
//!   same request again gets the same answer; fix it first.
//! - **the cloud is stopping** ([`Error::ShuttingDown`]): try another time.
//! - **the machine failed us**: a port, a file, a process that could not be
//!   had. The message names the path or the binary at fault.
//!
//! The HTTP status and the stable `code` of each variant live here too, so a
//! route never decides them on its own and the same fault always answers the
//! same way.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::StatusCode;
use cairn_control::desired::DesiredError;

/// Why the cloud could not start, serve, or do what a request asked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting of [`crate::CloudConfig`] cannot work.
    #[error("bad cloud settings: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// A file or directory the cloud keeps could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io { action: &'static str, path: PathBuf, source: io::Error },
    #[error("the inventory {} is not valid: {message}", path.display())]
    InventoryInvalid { path: PathBuf, message: String },
    #[error("the HTTP server failed: {0}")]
    Serve(io::Error),
    #[error("cannot start the agent {} for host {host}: {source}", bin.display())]
    Spawn { bin: PathBuf, host: String, source: io::Error },
    #[error(
        "no free ports for a new host: host numbers {first}..={last} (base port {base_port}) \
         each have a port in use, in the kernel's ephemeral port range, or beyond 65535"
    )]
    NoFreePorts { first: u32, last: u32, base_port: u16 },
    /// A request body that is not what the route takes.
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is over the limit of {limit_bytes} bytes")]
    TooLarge { limit_bytes: usize },
    #[error("{what} {value:?} is not valid: {rule}")]
    BadName { what: &'static str, value: String, rule: &'static str },
    #[error(
        "host {name} exists in zone {existing_zone} (type {existing_type}); \
         asked for zone {zone} (type {host_type})"
    )]
    HostConflict {
        name: String,
        existing_zone: String,
        existing_type: String,
        zone: String,
        host_type: String,
    },
    #[error("no host named {name}")]
    HostNotFound { name: String },
    #[error("host {name} is being deleted")]
    HostDeleting { name: String },
    #[error("the cloud is shutting down")]
    ShuttingDown,
    #[error("the desired state is refused: {0}")]
    DesiredInvalid(DesiredError),
    #[error("the desired state's id {id} is not above the current id {current}")]
    DesiredStale { id: u64, current: u64 },
    #[error("no desired state yet: write the desired state file or send PUT /v1/desired")]
    NoDesiredState,
    #[error("no route {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("no artifact {file} in {dir} (`cairn release --out {dir}` makes one)")]
    ArtifactNotFound { file: String, dir: String },
    /// A request without the admin token.
    #[error("this call needs the cloud's admin token: send `Authorization: Bearer <token>`, the token being in the cloud's {file}")]
    Unauthorized { file: &'static str },
    /// `POST /v1/login` without a login code that is good.
    #[error("the login code was used already, its time is up, or it is not one: `cairn console` makes another")]
    LoginCode,
    /// What a web page could send through a user's browser.
    #[error("{0}")]
    Browser(cairn_util::browser::Refusal),
}

impl Error {
    /// The request as sent is refused: sending it again gets the same answer.
    pub fn is_client_error(&self) -> bool {
        self.http_status().is_client_error()
    }

    /// The status a request that failed with this error answers.
    pub(crate) fn http_status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::BadName { .. } | Error::DesiredInvalid(_) => {
                StatusCode::BAD_REQUEST
            }
            Error::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Browser(cairn_util::browser::Refusal::ContentType { .. }) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Error::Browser(_) => StatusCode::FORBIDDEN,
            Error::Unauthorized { .. } | Error::LoginCode => StatusCode::UNAUTHORIZED,
            Error::HostNotFound { .. }
            | Error::NoDesiredState
            | Error::RouteNotFound { .. }
            | Error::ArtifactNotFound { .. } => StatusCode::NOT_FOUND,
            Error::HostConflict { .. }
            | Error::HostDeleting { .. }
            | Error::DesiredStale { .. } => StatusCode::CONFLICT,
            Error::ShuttingDown | Error::NoFreePorts { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Config(_)
            | Error::Listen { .. }
            | Error::Io { .. }
            | Error::InventoryInvalid { .. }
            | Error::Serve(_)
            | Error::Spawn { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of the error's JSON answer.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::TooLarge { .. } => "too_large",
            Error::BadName { .. } => "bad_name",
            Error::HostConflict { .. } => "host_conflict",
            Error::HostNotFound { .. } => "host_not_found",
            Error::HostDeleting { .. } => "host_deleting",
            Error::ShuttingDown => "shutting_down",
            Error::NoFreePorts { .. } => "no_free_ports",
            Error::DesiredInvalid(_) => "invalid_desired_state",
            Error::DesiredStale { .. } => "stale_desired_state",
            Error::NoDesiredState => "no_desired_state",
            Error::RouteNotFound { .. } => "not_found",
            Error::ArtifactNotFound { .. } => "artifact_not_found",
            Error::Browser(cairn_util::browser::Refusal::ContentType { .. }) => {
                "unsupported_media_type"
            }
            Error::Browser(_) => "forbidden",
            Error::Unauthorized { .. } | Error::LoginCode => "unauthorized",
            Error::Config(_)
            | Error::Listen { .. }
            | Error::Io { .. }
            | Error::InventoryInvalid { .. }
            | Error::Serve(_)
            | Error::Spawn { .. } => "internal",
        }
    }

    /// Builds an [`Error::Io`]; `action` reads before the path ("cannot
    /// write the inventory").
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io { action, path: path.into(), source }
    }
}
