//! A Rust client for Cairn's HTTP/JSON API, used by the CLI, the shell, the
//! bench and the tests.
//!
//! One [`Client`] talks to one node and keeps its connections alive; clone it to
//! share the pool. Errors keep the server's answer whole: [`Error::Api`] has the
//! status, the error code, the message and whether a failed write may still have
//! taken effect (`indeterminate`).
//!
//! Given the cluster's other nodes ([`Client::with_endpoints`]), a client
//! sends a request that one node cannot answer (it is restarting, stopped,
//! or does not serve) to the next, for up to [`FAILOVER_BUDGET_MS`], as
//! long as doing so cannot apply a write twice:
//! - a read, whatever went wrong;
//! - any request the node refused before acting on it (the connection was
//!   refused, or it answered 503 without `indeterminate`);
//! - a write with a write id ([`Client::with_write_id`]), whatever went
//!   wrong: the cluster applies a write id once, however often it is sent.
//!
//! Otherwise the client does not retry: a write without a write id that
//! fails with `indeterminate` may have applied, and only the caller knows
//! whether repeating it is safe.

use std::time::Duration;

pub mod changes;
pub mod views;

pub use changes::{Changes, FeedEvent, FeedTarget};
pub use views::{ClusterView, Health, MembersView, NodeRole, NodeView};

use bytes::Bytes;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde_json::Value;

/// How long a request may take by default, server wait included.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// How long a client with several endpoints keeps trying other nodes (an
/// election, a node restarting) before it gives up with the last error.
pub const FAILOVER_BUDGET_MS: u64 = 15_000;
/// The pause after a round in which no node answered, doubled each round.
const FAILOVER_PAUSE_MS: u64 = 100;
/// The longest pause between rounds.
const FAILOVER_PAUSE_MS_MAX: u64 = 1_000;
/// The system record (`/v1/system/{key}`) the leader agent keeps the
/// control state in, with its last report, which `/v1/cluster` shows as
/// `reconciliation`.
pub const CONTROL_KEY: &str = "control";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error.
    #[error("{message} ({status} {code})")]
    Api { status: u16, code: String, message: String, indeterminate: bool },
    /// The request did not get an answer (connection refused, reset, timeout).
    #[error("cannot reach {addr}: {source}")]
    Transport { addr: String, source: reqwest::Error },
    #[error("bad address '{0}': use HOST:PORT, a port, or http://HOST:PORT")]
    BadAddress(String),
    #[error("unexpected answer from the server: {0}")]
    BadResponse(String),
    /// The request cannot be expressed (nothing was sent).
    #[error("{0}")]
    BadRequest(String),
}

impl Error {
    /// Whether a failed write may have taken effect anyway. A request that got
    /// no answer at all is indeterminate too.
    pub fn is_indeterminate(&self) -> bool {
        match self {
            Error::Api { indeterminate, .. } => *indeterminate,
            Error::Transport { .. } => true,
            Error::BadAddress(_) | Error::BadResponse(_) | Error::BadRequest(_) => false,
        }
    }

    /// The API error code, if the server answered.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What happens when an inserted document's id exists: the `?conflict=`
/// of `POST /v1/tables/{t}/docs`, as the server reads it and the client
/// and the CLI write it.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Conflict {
    /// The insert is refused (409).
    #[default]
    Error,
    /// The existing document is replaced.
    Replace,
    /// The existing document is merged with the new one (RFC 7396).
    Update,
}

impl Conflict {
    pub fn as_str(self) -> &'static str {
        match self {
            Conflict::Error => "error",
            Conflict::Replace => "replace",
            Conflict::Update => "update",
        }
    }
}

impl std::str::FromStr for Conflict {
    type Err = String;

    fn from_str(text: &str) -> Result<Conflict, String> {
        match text {
            "error" => Ok(Conflict::Error),
            "replace" => Ok(Conflict::Replace),
            "update" => Ok(Conflict::Update),
            other => Err(format!("{other:?} is not error, replace or update")),
        }
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Read {
    #[default]
    Linearizable,
    Local,
}

impl Read {
    fn as_str(self) -> &'static str {
        match self {
            Read::Linearizable => "linearizable",
            Read::Local => "local",
        }
    }
}

/// One page of documents.
#[derive(Debug, Clone, Deserialize)]
pub struct Page {
    pub docs: Vec<Value>,
    pub next: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
    #[serde(default)]
    indeterminate: bool,
}

/// A connection pool to one node.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    addr: String,
    /// `(session handle, seq)` sent with every write, for exactly-once
    /// retries.
    write_id: Option<(std::sync::Arc<str>, u64)>,
    /// The bearer token sent with every request.
    token: Option<std::sync::Arc<str>>,
    /// The cluster's nodes, when a request may go to another one.
    endpoints: Option<std::sync::Arc<Endpoints>>,
}

/// The nodes a client may send a request to, and the one that answered
/// last (tried first).
#[derive(Debug)]
struct Endpoints {
    nodes: Vec<(Url, String)>,
    preferred: std::sync::atomic::AtomicUsize,
}

/// Turns `7001`, `host:7001`, `http://host:7001` or `https://host:7001`
/// into a base URL; an address without a scheme is plain HTTP.
pub fn parse_addr(addr: &str) -> Result<Url, Error> {
    parse_addr_as(addr, "http")
}

/// [`parse_addr`], with `scheme` for an address that names none.
fn parse_addr_as(addr: &str, scheme: &str) -> Result<Url, Error> {
    let addr = addr.trim();
    let with_host = if !addr.is_empty() && addr.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{addr}")
    } else {
        addr.to_string()
    };
    let full =
        if with_host.contains("://") { with_host } else { format!("{scheme}://{with_host}") };
    let url = Url::parse(&full).map_err(|_| Error::BadAddress(addr.to_string()))?;
    let known = matches!(url.scheme(), "http" | "https");
    if !known || url.host_str().is_none() || url.port_or_known_default().is_none() {
        return Err(Error::BadAddress(addr.to_string()));
    }
    Ok(url)
}

/// The base URL of a server at `addr` (a node's API or the cloud's), as
/// [`parse_addr`] reads it, as text without a trailing slash: what request
/// URLs are built on.
pub fn base_url(addr: &str) -> Result<String, Error> {
    Ok(parse_addr(addr)?.as_str().trim_end_matches('/').to_string())
}

/// Points `url` at the node of `base` (scheme, host and port).
fn rebase(url: &mut Url, base: &Url) {
    // Both are http(s) URLs with a host: none of these can fail.
    let _ = url.set_scheme(base.scheme());
    let _ = url.set_host(base.host_str());
    let _ = url.set_port(base.port_or_known_default());
}

/// Whether a request that failed with `error` may go to another node
/// without risking a write applied twice (see the module's rules).
fn may_send_elsewhere(error: &Error, read: bool, exactly_once: bool) -> bool {
    match error {
        // Never sent: the node is down or restarting.
        Error::Transport { source, .. } if source.is_connect() => true,
        Error::Transport { .. } => read || exactly_once,
        // A session is the cluster's: another node knows it no better.
        Error::Api { code, .. } if code == "session_expired" => false,
        Error::Api { status: 503, indeterminate: false, .. } => true,
        Error::Api { status: 503 | 504, .. } => read || exactly_once,
        _ => false,
    }
}

impl Client {
    pub fn new(addr: &str) -> Result<Client, Error> {
        Client::with_timeout(addr, Duration::from_millis(REQUEST_TIMEOUT_MS_DEFAULT))
    }

    pub fn with_timeout(addr: &str, timeout: Duration) -> Result<Client, Error> {
        Client::with_tls(addr, timeout, None)
    }

    /// A client that speaks HTTPS with `tls` (which trusts the cluster's
    /// CA; see `cairn_tls::api_client`): an address without a scheme is
    /// then `https://`. Without it, plain HTTP.
    pub fn with_tls(
        addr: &str,
        timeout: Duration,
        tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    ) -> Result<Client, Error> {
        cairn_tls::install_default_provider();
        let base = parse_addr_as(addr, if tls.is_some() { "https" } else { "http" })?;
        let mut builder = reqwest::Client::builder().timeout(timeout).tcp_nodelay(true);
        if let Some(tls) = tls {
            builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(&tls));
        }
        let http =
            builder.build().map_err(|e| Error::Transport { addr: addr.to_string(), source: e })?;
        Ok(Client {
            http,
            base,
            addr: addr.to_string(),
            write_id: None,
            token: None,
            endpoints: None,
        })
    }

    /// This client with a bearer token (`Authorization: Bearer <token>`) on
    /// every request; `None` sends none (an `--insecure` node).
    pub fn with_token(self, token: Option<String>) -> Client {
        Client { token: token.map(std::sync::Arc::from), ..self }
    }

    /// This client, with its settings, token and connection pool, talking
    /// to the node at `addr` instead (an address without a scheme takes
    /// this client's scheme).
    pub fn at(&self, addr: &str) -> Result<Client, Error> {
        let base = parse_addr_as(addr, self.base.scheme())?;
        Ok(Client { base, addr: addr.to_string(), write_id: None, endpoints: None, ..self.clone() })
    }

    /// This client, sending a request that its node cannot answer to the
    /// other nodes of `addrs` (its own node is tried first); see the
    /// module's rules for what is retried. Clones share which node answered
    /// last.
    pub fn with_endpoints<S: AsRef<str>>(self, addrs: &[S]) -> Result<Client, Error> {
        let mut nodes = vec![(self.base.clone(), self.addr.clone())];
        for addr in addrs {
            let addr = addr.as_ref();
            let url = parse_addr_as(addr, self.base.scheme())?;
            if !nodes.iter().any(|(known, _)| *known == url) {
                nodes.push((url, addr.to_string()));
            }
        }
        let endpoints = Endpoints { nodes, preferred: Default::default() };
        Ok(Client { endpoints: Some(std::sync::Arc::new(endpoints)), ..self })
    }

    /// The node this client talks to, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The node's base URL (`https://HOST:PORT` or `http://…`), without a
    /// trailing slash.
    pub fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut().expect("an http URL has a path").clear().extend(segments);
        url
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let request = request.build().map_err(|e| Error::BadRequest(e.to_string()))?;
        let Some(endpoints) = self.endpoints.as_deref().filter(|e| e.nodes.len() > 1) else {
            return self.execute(request, &self.addr).await;
        };
        let read = request.method() == Method::GET;
        let once = self.write_id.is_some();
        let started = std::time::Instant::now();
        let budget = Duration::from_millis(FAILOVER_BUDGET_MS);
        let n = endpoints.nodes.len();
        let first = endpoints.preferred.load(std::sync::atomic::Ordering::Relaxed) % n;
        let mut pause = FAILOVER_PAUSE_MS;
        let mut tried = 0usize;
        loop {
            let (url, addr) = &endpoints.nodes[(first + tried) % n];
            // A body that cannot be copied (none here) is sent once.
            let Some(mut attempt) = request.try_clone() else {
                return self.execute(request, &self.addr).await;
            };
            rebase(attempt.url_mut(), url);
            let error = match self.execute(attempt, addr).await {
                Ok(response) => {
                    let at = (first + tried) % n;
                    endpoints.preferred.store(at, std::sync::atomic::Ordering::Relaxed);
                    return Ok(response);
                }
                Err(error) => error,
            };
            tried += 1;
            if !may_send_elsewhere(&error, read, once) || started.elapsed() >= budget {
                return Err(error);
            }
            if tried.is_multiple_of(n) {
                // No node answered this round: an election, or restarts.
                tokio::time::sleep(Duration::from_millis(pause)).await;
                pause = (pause * 2).min(FAILOVER_PAUSE_MS_MAX);
            }
        }
    }

    /// Sends `request` to the node at `addr` (which its URL names).
    async fn execute(
        &self,
        request: reqwest::Request,
        addr: &str,
    ) -> Result<reqwest::Response, Error> {
        let transport = |source| Error::Transport { addr: addr.to_string(), source };
        let response = self.http.execute(request).await.map_err(transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        Err(match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => Error::Api {
                status: status.as_u16(),
                code: error.code,
                message: error.message,
                indeterminate: error.indeterminate,
            },
            Err(_) => Error::Api {
                status: status.as_u16(),
                code: "http_error".into(),
                message: String::from_utf8_lossy(&body).into_owned(),
                indeterminate: status == StatusCode::GATEWAY_TIMEOUT,
            },
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, Error> {
        self.typed(request).await
    }

    /// The answer's body as `T`; a body that does not fit is a bad response
    /// that names what was wrong.
    async fn typed<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, Error> {
        let response = self.send(request).await?;
        let bytes =
            response.bytes().await.map_err(|e| Error::BadResponse(format!("reading: {e}")))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::BadResponse(format!("the body does not fit: {e}")))
    }

    fn request(&self, method: Method, segments: &[&str]) -> Result<reqwest::RequestBuilder, Error> {
        // URL parsing drops `.` and `..` segments: refuse them rather than
        // send a request for another path.
        if let Some(dot) = segments.iter().find(|s| **s == "." || **s == "..") {
            return Err(Error::BadRequest(format!(
                "'{dot}' cannot be used as a table, id or key: URLs treat it as a path step"
            )));
        }
        let is_write = method != Method::GET;
        // A node takes a POST only as JSON, with a body or without (see the
        // server's browser checks); a body sets its own type over this.
        let is_post = method == Method::POST;
        let mut request = self.http.request(method, self.url(segments));
        if is_post {
            request = request.header(reqwest::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        Ok(match &self.write_id {
            Some((session, seq)) if is_write => {
                request.header("cairn-session", &**session).header("cairn-seq", seq.to_string())
            }
            _ => request,
        })
    }

    /// Opens a session for exactly-once writes, and answers its handle; see
    /// [`Client::with_write_id`].
    pub async fn open_session(&self) -> Result<String, Error> {
        let answer: views::SessionOpened =
            self.typed(self.request(Method::POST, &["v1", "sessions"])?).await?;
        Ok(answer.session)
    }

    /// A client whose writes carry `(session, seq)`. Send one write per `seq`
    /// (1, 2, …), one at a time; when a write fails as indeterminate, send it
    /// again with the same `seq`: the node answers a repeat from memory, so the
    /// write takes effect once however often it is sent.
    pub fn with_write_id(&self, session: &str, seq: u64) -> Client {
        Client { write_id: Some((std::sync::Arc::from(session), seq)), ..self.clone() }
    }

    fn with_body(
        &self,
        method: Method,
        segments: &[&str],
        body: &Value,
    ) -> Result<reqwest::RequestBuilder, Error> {
        // `request` already says JSON for a POST.
        let is_post = method == Method::POST;
        let request = self.request(method, segments)?;
        let request = if is_post {
            request
        } else {
            request.header(reqwest::header::CONTENT_TYPE, "application/json")
        };
        Ok(request.body(body.to_string()))
    }

    pub async fn health(&self) -> Result<Health, Error> {
        self.typed(self.request(Method::GET, &["v1", "health"])?).await
    }

    pub async fn cluster(&self) -> Result<ClusterView, Error> {
        self.typed(self.request(Method::GET, &["v1", "cluster"])?).await
    }

    /// The cluster's membership.
    pub async fn members(&self) -> Result<MembersView, Error> {
        self.typed(self.request(Method::GET, &["v1", "admin", "members"])?).await
    }

    /// Adds node `id`, which peers reach at `peer_address`, in place of
    /// `replaces` if given; answers the new membership once it took effect.
    pub async fn add_member(
        &self,
        id: u64,
        peer_address: &str,
        replaces: Option<u64>,
    ) -> Result<MembersView, Error> {
        let body =
            serde_json::json!({ "id": id, "peer_address": peer_address, "replaces": replaces });
        let request = self.request(Method::POST, &["v1", "admin", "members"])?.json(&body);
        self.typed(request).await
    }

    /// Removes node `id`; answers the new membership once it took effect.
    pub async fn remove_member(&self, id: u64) -> Result<MembersView, Error> {
        let id = id.to_string();
        self.typed(self.request(Method::DELETE, &["v1", "admin", "members", &id])?).await
    }

    /// Makes a token with `role` (admin only); the answer holds its secret,
    /// shown this once.
    pub async fn create_token(
        &self,
        name: &str,
        role: views::Role,
    ) -> Result<views::TokenCreated, Error> {
        self.post_token(name, role, false).await
    }

    /// Makes a one-time login code with `role` (admin only): good for one
    /// [`Client::login`] within 15 minutes.
    pub async fn create_login_code(
        &self,
        name: &str,
        role: views::Role,
    ) -> Result<views::TokenCreated, Error> {
        self.post_token(name, role, true).await
    }

    async fn post_token(
        &self,
        name: &str,
        role: views::Role,
        login: bool,
    ) -> Result<views::TokenCreated, Error> {
        let body = views::NewToken { name: name.to_string(), role, login };
        let request = self.request(Method::POST, &["v1", "tokens"])?.json(&body);
        self.typed(request).await
    }

    /// Trades this client's token, a one-time login code, for a new token of
    /// the same role; the code is spent.
    pub async fn login(&self) -> Result<views::TokenCreated, Error> {
        let request = self.request(Method::POST, &["v1", "login"])?.json(&serde_json::json!({}));
        self.typed(request).await
    }

    /// Takes backup `name` on this node into `sink` (a directory under its
    /// backup root; `default` when `None`) (admin only), of a state that
    /// holds every write acknowledged before.
    pub async fn create_backup(
        &self,
        name: &str,
        sink: Option<&str>,
    ) -> Result<views::BackupView, Error> {
        let body = views::NewBackup { name: name.to_string(), sink: sink.map(str::to_string) };
        self.typed(self.request(Method::POST, &["v1", "admin", "backups"])?.json(&body)).await
    }

    /// The backups under this node's backup root: in `sink`, or in every
    /// sink when `None` (admin only).
    pub async fn list_backups(&self, sink: Option<&str>) -> Result<views::BackupList, Error> {
        let mut request = self.request(Method::GET, &["v1", "admin", "backups"])?;
        if let Some(sink) = sink {
            request = request.query(&[("sink", sink)]);
        }
        self.typed(request).await
    }

    /// Deletes backup `name` from `sink` (`default` when `None`) (admin
    /// only).
    pub async fn delete_backup(
        &self,
        name: &str,
        sink: Option<&str>,
    ) -> Result<views::BackupDeleted, Error> {
        let mut request = self.request(Method::DELETE, &["v1", "admin", "backups", name])?;
        if let Some(sink) = sink {
            request = request.query(&[("sink", sink)]);
        }
        self.typed(request).await
    }

    /// The cluster's tokens, without their secrets (admin only).
    pub async fn list_tokens(&self) -> Result<views::TokenList, Error> {
        self.typed(self.request(Method::GET, &["v1", "tokens"])?).await
    }

    /// Revokes the token `id` (admin only).
    pub async fn revoke_token(&self, id: &str) -> Result<views::TokenRevoked, Error> {
        self.typed(self.request(Method::DELETE, &["v1", "tokens", id])?).await
    }

    pub async fn metrics(&self) -> Result<String, Error> {
        let response = self.send(self.request(Method::GET, &["metrics"])?).await?;
        response.text().await.map_err(|e| Error::BadResponse(e.to_string()))
    }

    pub async fn list_tables(&self) -> Result<Vec<String>, Error> {
        let value = self.json(self.request(Method::GET, &["v1", "tables"])?).await?;
        serde_json::from_value(value["tables"].clone())
            .map_err(|e| Error::BadResponse(format!("tables: {e}")))
    }

    /// Creates a table; `{"created": bool, "index": n}`.
    pub async fn create_table(&self, table: &str) -> Result<Value, Error> {
        self.json(self.request(Method::PUT, &["v1", "tables", table])?).await
    }

    pub async fn drop_table(&self, table: &str) -> Result<Value, Error> {
        self.json(self.request(Method::DELETE, &["v1", "tables", table])?).await
    }

    /// Inserts one document (an object) or many (an array).
    pub async fn insert(
        &self,
        table: &str,
        docs: &Value,
        conflict: Conflict,
    ) -> Result<Value, Error> {
        let request = self
            .with_body(Method::POST, &["v1", "tables", table, "docs"], docs)?
            .query(&[("conflict", conflict.as_str())]);
        self.json(request).await
    }

    /// One document; `None` when the table has no such id.
    pub async fn get_doc(&self, table: &str, id: &str, read: Read) -> Result<Option<Value>, Error> {
        let request = self
            .request(Method::GET, &["v1", "tables", table, "docs", id])?
            .query(&[("read", read.as_str())]);
        match self.json(request).await {
            Ok(doc) => Ok(Some(doc)),
            Err(error) if error.code() == Some("doc_not_found") => Ok(None),
            Err(error) => Err(error),
        }
    }

    pub async fn replace_doc(&self, table: &str, id: &str, doc: &Value) -> Result<Value, Error> {
        self.json(self.with_body(Method::PUT, &["v1", "tables", table, "docs", id], doc)?).await
    }

    /// Applies a JSON merge patch; answers `{"doc": ..., "index": n}`.
    pub async fn update_doc(&self, table: &str, id: &str, patch: &Value) -> Result<Value, Error> {
        self.json(self.with_body(Method::PATCH, &["v1", "tables", table, "docs", id], patch)?).await
    }

    pub async fn delete_doc(&self, table: &str, id: &str) -> Result<Value, Error> {
        self.json(self.request(Method::DELETE, &["v1", "tables", table, "docs", id])?).await
    }

    pub async fn list_docs(
        &self,
        table: &str,
        after: Option<&str>,
        limit: usize,
        read: Read,
    ) -> Result<Page, Error> {
        let mut request = self
            .request(Method::GET, &["v1", "tables", table, "docs"])?
            .query(&[("limit", limit.to_string()), ("read", read.as_str().to_string())]);
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        let value = self.json(request).await?;
        serde_json::from_value(value).map_err(|e| Error::BadResponse(format!("page: {e}")))
    }

    /// Stores raw bytes under `key`; answers the index it was applied at.
    pub async fn kv_put(&self, key: &str, value: impl Into<Bytes>) -> Result<u64, Error> {
        let request = self.request(Method::PUT, &["v1", "kv", key])?.body(value.into());
        let answer = self.json(request).await?;
        answer["index"].as_u64().ok_or_else(|| Error::BadResponse(format!("no index in {answer}")))
    }

    /// Adds `by` to the counter under `key` (absent: 0; negative subtracts);
    /// answers its new value. Needs cluster version 0.2 (see
    /// [`Client::finalize`]).
    pub async fn kv_increment(&self, key: &str, by: i64) -> Result<views::Counted, Error> {
        let body = serde_json::json!({ "increment": by });
        self.typed(self.request(Method::POST, &["v1", "kv", key])?.json(&body)).await
    }

    /// Finalizes an upgrade: raises the cluster version to `version`, or
    /// to the highest every member runs (admin only).
    pub async fn finalize(&self, version: Option<&str>) -> Result<views::Finalized, Error> {
        let mut request = self.request(Method::POST, &["v1", "admin", "finalize"])?;
        if let Some(version) = version {
            request = request.json(&serde_json::json!({ "version": version }));
        }
        self.typed(request).await
    }

    /// The bytes under `key`; `None` when absent.
    pub async fn kv_get(&self, key: &str, read: Read) -> Result<Option<Bytes>, Error> {
        let request =
            self.request(Method::GET, &["v1", "kv", key])?.query(&[("read", read.as_str())]);
        match self.send(request).await {
            Ok(response) => {
                let bytes = response.bytes().await;
                bytes
                    .map(Some)
                    .map_err(|source| Error::Transport { addr: self.addr.clone(), source })
            }
            Err(error) if error.code() == Some("key_not_found") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The system record `key` (`/v1/system/{key}`), as stored: a JSON
    /// object stamped with its `revision`; `None` when it does not exist.
    pub async fn system_get<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        read: Read,
    ) -> Result<Option<T>, Error> {
        let request =
            self.request(Method::GET, &["v1", "system", key])?.query(&[("read", read.as_str())]);
        match self.typed(request).await {
            Ok(record) => Ok(Some(record)),
            Err(error) if error.code() == Some("record_not_found") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Replaces the system record `key` with `record` (a JSON object), only
    /// over revision `expect_revision` when given (409 `revision_conflict`
    /// otherwise); answers the new revision (the write's log index).
    pub async fn system_put(
        &self,
        key: &str,
        record: &impl serde::Serialize,
        expect_revision: Option<u64>,
    ) -> Result<u64, Error> {
        let mut request = self.request(Method::PUT, &["v1", "system", key])?.json(record);
        if let Some(revision) = expect_revision {
            request = request.query(&[("expect_revision", revision)]);
        }
        let answer = self.json(request).await?;
        answer["index"].as_u64().ok_or_else(|| {
            Error::BadResponse(format!("a write answered without an index: {answer}"))
        })
    }

    /// Deletes `key`; answers whether it existed.
    pub async fn kv_delete(&self, key: &str) -> Result<bool, Error> {
        let answer = self.json(self.request(Method::DELETE, &["v1", "kv", key])?).await?;
        answer["deleted"]
            .as_bool()
            .ok_or_else(|| Error::BadResponse(format!("no 'deleted' in {answer}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_take_a_port_a_host_and_port_or_a_url() {
        assert_eq!(parse_addr("7002").unwrap().as_str(), "http://127.0.0.1:7002/");
        assert_eq!(parse_addr("localhost:7001").unwrap().as_str(), "http://localhost:7001/");
        assert_eq!(parse_addr("http://10.0.0.1:80").unwrap().host_str(), Some("10.0.0.1"));
        assert_eq!(parse_addr("https://x:1").unwrap().as_str(), "https://x:1/");
        assert_eq!(parse_addr_as("7002", "https").unwrap().as_str(), "https://127.0.0.1:7002/");
        assert_eq!(parse_addr_as("http://a:1", "https").unwrap().as_str(), "http://a:1/");
        for bad in ["", "::::", "ftp://a:1"] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dot_segments_are_refused_before_sending() {
        let client = Client::new("7001").unwrap();
        for dot in [".", ".."] {
            let error = client.request(Method::GET, &["v1", "kv", dot]).unwrap_err();
            assert!(error.to_string().contains("path step"), "{error}");
        }
        assert!(client.request(Method::GET, &["v1", "kv", "..."]).is_ok());
    }

    #[test]
    fn segments_are_percent_encoded() {
        let client = Client::new("7001").unwrap();
        let url = client.url(&["v1", "kv", "a/b c"]);
        assert_eq!(url.path(), "/v1/kv/a%2Fb%20c");
    }
}
