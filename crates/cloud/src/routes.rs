//! The cloud's HTTP API: hosts, the desired state, the status log, shutdown.
//!
//! | route | does |
//! |---|---|
//! | `GET /v1/health` | 200 while the cloud serves |
//! | `POST /v1/hosts` | create a host (201), or answer the same one again (200); 409 on another zone or type |
//! | `GET /v1/hosts` · `GET /v1/hosts/{name}` | hosts in number order · one host |
//! | `DELETE /v1/hosts/{name}` | delete; `{"deleted": bool}`, idempotent |
//! | `POST /v1/hosts/{name}/fail` | kill the host's agent and node; never restarted |
//! | `GET /v1/desired` · `PUT /v1/desired` | the current desired state · submit one (JSONC text) |
//! | `GET /v1/status` · `POST /v1/status` | the last report and the transitions · a leader's report |
//! | `GET /v1/cluster` | the hosts joined with the nodes as the first answering node sees them, and the last report ([`crate::StatusView`]) |
//! | `POST /v1/shutdown` | 202, then the cloud stops its agents and exits |
//! | `POST /v1/login-codes` | a one-time login code (`{"code", "until_ms"}`), good for 15 minutes |
//! | `POST /v1/login` | with the code as bearer token: the cloud's token, once (`{"token"}`) |
//! | `GET /artifacts/{file}` | a file of `<root>/artifacts` (release artifacts and `SHA256SUMS`), streamed; no token needed |
//!
//! Errors are `{"error": {"code", "message"}}` (plus `field` for a refused
//! desired state) with the status of [`Error`]'s groups, the same shape as the
//! data plane's. Handlers only translate: every decision is made by the
//! provider, the desired store or the status log, so the same rules hold for
//! callers inside the process.
//!
//! Requests a web page could send through a user's browser are refused (403
//! for a foreign Host or Origin, 415 for a `POST` that is not JSON; see
//! [`cairn_util::browser`]).
//!
//! Every request but `GET /v1/health` and `GET /artifacts/{file}` (release
//! binaries are no secret, and agents check each against its sum) must
//! carry the cloud's admin token
//! (`Authorization: Bearer <token>`, from `<root>/cloud.token`); 401
//! `unauthorized` otherwise. Agents get the file's path from the cloud; the
//! CLI reads `.cairn/cloud.token` (`--cloud-token-file`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_control::status::Report;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::desired::DESIRED_TEXT_BYTES_MAX;
use crate::local::CreateHost;
use crate::{now_ms, Error, Shared};

/// Largest `POST /v1/hosts` body.
pub const HOST_BODY_BYTES_MAX: usize = 4 * 1024;
/// Largest `POST /v1/status` body.
pub const STATUS_BODY_BYTES_MAX: usize = 64 * 1024;

type AppState = State<Arc<Shared>>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/hosts", get(list_hosts).post(create_host))
        .route("/v1/hosts/{name}", get(get_host).delete(delete_host))
        .route("/v1/hosts/{name}/fail", post(fail_host))
        .route("/v1/desired", get(get_desired).put(put_desired))
        .route("/v1/status", get(get_status).post(post_status))
        .route("/v1/cluster", get(get_cluster))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/login-codes", post(create_login_code))
        .route("/v1/login", post(login))
        .route("/artifacts/{file}", get(get_artifact))
        .fallback(not_found)
        // The largest body of any route; each route checks its own below.
        .layer(DefaultBodyLimit::max(DESIRED_TEXT_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), authorize))
        .layer(axum::middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Refuses what a web page could send through a user's browser (see
/// [`cairn_util::browser`]): the cloud listens on loopback, where any page
/// could otherwise stop the cluster or fail its hosts. Pages its hosts' nodes
/// serve (the web console) are trusted: their preflights are answered here,
/// before the token is checked, and their answers get CORS headers.
async fn guard(
    State(shared): AppState,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::http::{header, HeaderValue};
    use cairn_util::browser;
    let headers = request.headers();
    let text = |name| headers.get(name).map(|value: &HeaderValue| value.to_str().unwrap_or(""));
    let checked = browser::Request {
        method: request.method().as_str(),
        host: text(header::HOST),
        origin: text(header::ORIGIN),
        content_type: text(header::CONTENT_TYPE),
    };
    let trusted = |authority: &str| {
        shared
            .provider
            .list()
            .iter()
            .any(|host| browser::names_address(authority, &host.api_address))
    };
    let access =
        match browser::Policy::default().check_access(&checked, trusted).and_then(|access| {
            browser::check_content_type(checked.method, checked.content_type).map(|()| access)
        }) {
            Ok(access) => access,
            Err(refusal) => return Error::Browser(refusal).into_response(),
        };
    let browser::Access::Trusted(origin) = access else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response =
        if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(request).await };
    for (name, value) in browser::cors_headers(&origin, preflight) {
        // The origin passed the checks as text: it makes a header value.
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

/// Makes a one-time login code for the cloud: good for one `POST /v1/login`
/// within [`crate::LOGIN_CODE_MS`] (the console's login URL carries one, so
/// the cloud's token itself is never printed).
async fn create_login_code(State(shared): AppState) -> Result<Response, Error> {
    let code = cairn_util::secret::generate().map_err(|e| {
        Error::io("cannot draw random bytes", std::path::Path::new("/dev/urandom"), e)
    })?;
    let now = now_ms();
    let until = now + crate::LOGIN_CODE_MS;
    let mut codes = crate::lock(&shared.login_codes);
    codes.retain(|(_, until)| *until >= now);
    if codes.len() >= crate::LOGIN_CODES_MAX {
        codes.remove(0);
    }
    codes.push((code.clone(), until));
    Ok((StatusCode::CREATED, Json(json!({ "code": code, "until_ms": until }))).into_response())
}

/// Bytes read from an artifact at a time.
const ARTIFACT_CHUNK_BYTES: usize = 256 * 1024;

/// `GET /artifacts/{file}`: a file of the artifacts directory, streamed. Only
/// plain names (A-Z a-z 0-9 `.` `_` `+` `-`, not starting with a dot) are
/// looked up, so no request reaches outside the directory.
async fn get_artifact(
    State(shared): AppState,
    file: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    use std::io::Read;
    let Path(file) = file.map_err(|e| Error::BadRequest(e.body_text()))?;
    let dir = shared.artifacts_dir.display().to_string();
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._+-".contains(c);
    if file.is_empty() || file.starts_with('.') || !file.chars().all(allowed) {
        return Err(Error::ArtifactNotFound { file, dir });
    }
    let path = shared.artifacts_dir.join(&file);
    let opened = tokio::task::spawn_blocking(move || {
        let opened = std::fs::File::open(&path)?;
        let meta = opened.metadata()?;
        Ok::<_, std::io::Error>((opened, meta))
    })
    .await
    .map_err(|e| Error::Serve(std::io::Error::other(e)))?;
    let (opened, meta) = match opened {
        Ok((opened, meta)) if meta.is_file() => (opened, meta),
        Ok(_) => return Err(Error::ArtifactNotFound { file, dir }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::ArtifactNotFound { file, dir })
        }
        Err(e) => return Err(Error::io("cannot read", shared.artifacts_dir.join(&file), e)),
    };
    // One chunk at a time on the blocking pool: a large artifact is never
    // held in memory whole.
    let chunks = futures_util::stream::unfold(Some(opened), |state| async move {
        let mut opened = state?;
        let read = tokio::task::spawn_blocking(move || {
            let mut chunk = vec![0u8; ARTIFACT_CHUNK_BYTES];
            let n = opened.read(&mut chunk)?;
            chunk.truncate(n);
            Ok::<_, std::io::Error>((opened, chunk))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match read {
            Ok((_, chunk)) if chunk.is_empty() => None,
            Ok((opened, chunk)) => Some((Ok(Bytes::from(chunk)), Some(opened))),
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = axum::body::Body::from_stream(chunks).into_response();
    let headers = response.headers_mut();
    headers.insert(axum::http::header::CONTENT_LENGTH, meta.len().into());
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// Trades a login code (as the bearer token) for the cloud's token, once.
async fn login(State(shared): AppState, request: axum::extract::Request) -> Response {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let now = now_ms();
    let mut codes = crate::lock(&shared.login_codes);
    codes.retain(|(_, until)| *until >= now);
    let found = codes.iter().position(|(code, _)| cairn_util::secret::same(code, &given));
    match found {
        Some(at) if !given.is_empty() => {
            codes.remove(at);
            (StatusCode::CREATED, Json(json!({ "token": shared.token }))).into_response()
        }
        _ => Error::LoginCode.into_response(),
    }
}

/// Every request but `GET /v1/health` must carry the admin token.
async fn authorize(
    State(shared): AppState,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let open = match request.uri().path() {
        "/v1/health" => request.method() == Method::GET,
        // It takes a login code instead (checked there).
        "/v1/login" => request.method() == Method::POST,
        path if path.starts_with("/artifacts/") => request.method() == Method::GET,
        _ => false,
    };
    if open {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        Some(token) if cairn_util::secret::same(token.trim(), &shared.token) => {
            next.run(request).await
        }
        _ => Error::Unauthorized { file: crate::TOKEN_FILE }.into_response(),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut error = json!({"code": self.code(), "message": self.to_string()});
        if let Error::DesiredInvalid(refusal) = &self {
            error["field"] = json!(refusal.field);
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}

/// The body, within `limit_bytes`.
fn body(body: Result<Bytes, BytesRejection>, limit_bytes: usize) -> Result<Bytes, Error> {
    let bytes = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge { limit_bytes },
        _ => Error::BadRequest(format!("cannot read the request body: {}", rejection.body_text())),
    })?;
    if bytes.len() > limit_bytes {
        return Err(Error::TooLarge { limit_bytes });
    }
    Ok(bytes)
}

/// The body as JSON of `T`; `what` says what was expected, for the message.
fn json_body<T: DeserializeOwned>(
    raw: Result<Bytes, BytesRejection>,
    limit_bytes: usize,
    what: &str,
) -> Result<T, Error> {
    let bytes = body(raw, limit_bytes)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::BadRequest(format!("the request body is not {what}: {e}")))
}

fn host_name(path: Result<Path<String>, PathRejection>) -> Result<String, Error> {
    path.map(|Path(name)| name)
        .map_err(|rejection| Error::BadRequest(format!("bad path: {}", rejection.body_text())))
}

async fn health(State(shared): AppState) -> Json<serde_json::Value> {
    Json(json!({"ok": true, "hosts": shared.provider.list().len()}))
}

async fn list_hosts(State(shared): AppState) -> Json<serde_json::Value> {
    Json(json!({"hosts": shared.provider.list()}))
}

async fn create_host(
    State(shared): AppState,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let what = r#"a host: {"name", "zone", "host_type"}"#;
    let request: CreateHost = json_body(raw, HOST_BODY_BYTES_MAX, what)?;
    let (host, created) = shared.provider.create(request)?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(host)).into_response())
}

async fn get_host(
    State(shared): AppState,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let host = shared.provider.get(&host_name(path)?)?;
    Ok(Json(host).into_response())
}

async fn delete_host(
    State(shared): AppState,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let deleted = shared.provider.delete(&host_name(path)?).await?;
    Ok(Json(json!({ "deleted": deleted })).into_response())
}

async fn fail_host(
    State(shared): AppState,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let host = shared.provider.fail(&host_name(path)?).await?;
    Ok(Json(host).into_response())
}

async fn get_desired(State(shared): AppState) -> Result<Response, Error> {
    let record = shared.desired.current().ok_or(Error::NoDesiredState)?;
    Ok(Json(record).into_response())
}

async fn put_desired(
    State(shared): AppState,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let bytes = body(raw, DESIRED_TEXT_BYTES_MAX)?;
    let text = String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::BadRequest("the desired state is not UTF-8 text".into()))?;
    let record = shared.desired.apply(text)?.record();
    Ok(Json(record).into_response())
}

async fn get_status(State(shared): AppState) -> Response {
    Json(shared.status.snapshot()).into_response()
}

async fn get_cluster(State(shared): AppState) -> Response {
    let hosts = shared.provider.list();
    let status = shared.status.snapshot();
    let view = crate::view::gather(hosts, status, &shared.node_token_file, &shared.ca_cert).await;
    Json(view).into_response()
}

async fn post_status(
    State(shared): AppState,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, Error> {
    let report: Report = json_body(raw, STATUS_BODY_BYTES_MAX, "a status report")?;
    let transition = shared.status.record(report, now_ms());
    Ok(Json(json!({ "transition": transition })).into_response())
}

async fn shutdown(State(shared): AppState) -> Response {
    shared.shutdown.notify_one();
    (StatusCode::ACCEPTED, Json(json!({"shutting_down": true}))).into_response()
}

async fn not_found(method: Method, uri: Uri) -> Error {
    Error::RouteNotFound { method: method.to_string(), path: uri.path().to_string() }
}
