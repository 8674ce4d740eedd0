//! A typed client of the cloud's HTTP API, for the agents and the CLI: every
//! call sends and reads back the types the routes use ([`Host`],
//! [`DesiredRecord`], [`StatusSnapshot`], [`Report`]), so that no caller
//! picks fields out of untyped JSON and both sides agree on every field.
//!
//! Every call has a deadline (the client's timeout). Errors say which cloud,
//! which call and what it answered, and keep the cloud's error code.
//!
//! Not here: retries. A caller that wants one (the leader's loop does, on
//! its next turn) repeats the call; every call of the cloud's API is
//! idempotent or harmless to repeat.

use std::time::Duration;

use cairn_control::status::Report;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::desired::DesiredRecord;
use crate::local::{CreateHost, Host};
use crate::status::StatusSnapshot;
use crate::view::StatusView;

/// What can go wrong talking to the cloud.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// `--cloud` or the configured address is not an HTTP address.
    #[error("{0}")]
    BadAddress(String),
    /// Nothing answered (refused, reset, timed out).
    #[error("no cloud answers at {base} ({call}): {source}")]
    Unreachable { base: String, call: String, source: reqwest::Error },
    /// The cloud answered with an error.
    #[error("the cloud at {base} refused {call} ({status}): {message}")]
    Refused { base: String, call: String, status: u16, code: String, message: String },
    /// The cloud answered something this build cannot read.
    #[error("the cloud at {base} answered {call} with something unreadable: {message}")]
    BadAnswer { base: String, call: String, message: String },
}

impl ClientError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client of one cloud. Cloning is cheap (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct CloudClient {
    http: reqwest::Client,
    base: String,
    /// The cloud's admin token, sent with every call.
    token: Option<String>,
}

impl CloudClient {
    /// A client of the cloud at `address` (`7000`, `HOST:PORT` or
    /// `http://HOST:PORT`); every call takes at most `timeout`.
    pub fn new(address: &str, timeout: Duration) -> Result<CloudClient, ClientError> {
        let base = cairn_client::base_url(address)
            .map_err(|e| ClientError::BadAddress(format!("the cloud's address: {e}")))?;
        cairn_tls::install_default_provider();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ClientError::BadAddress(format!("cannot build an HTTP client: {e}")))?;
        Ok(CloudClient { http, base, token: None })
    }

    /// Sends `token` (the cloud's admin token) with every call.
    pub fn with_token(mut self, token: Option<String>) -> CloudClient {
        self.token = token;
        self
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The cloud's base URL (`http://HOST:PORT`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Whether the cloud answers at all.
    pub async fn health(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::GET, "/v1/health", None::<&()>).await.map(drop)
    }

    /// Every host, in name order.
    pub async fn hosts(&self) -> Result<Vec<Host>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Hosts {
            hosts: Vec<Host>,
        }
        let list: Hosts = self.call(Method::GET, "/v1/hosts", None::<&()>).await?;
        Ok(list.hosts)
    }

    /// Creates a host (or answers the existing one of that name).
    pub async fn create_host(&self, request: &CreateHost) -> Result<Host, ClientError> {
        self.call(Method::POST, "/v1/hosts", Some(request)).await
    }

    /// Deletes a host; answers whether it existed.
    pub async fn delete_host(&self, name: &str) -> Result<bool, ClientError> {
        #[derive(serde::Deserialize)]
        struct Deleted {
            deleted: bool,
        }
        let path = format!("/v1/hosts/{name}");
        let answer: Deleted = self.call(Method::DELETE, &path, None::<&()>).await?;
        Ok(answer.deleted)
    }

    /// The desired state the cloud serves; `None` before it has one.
    pub async fn desired(&self) -> Result<Option<DesiredRecord>, ClientError> {
        match self.call(Method::GET, "/v1/desired", None::<&()>).await {
            Ok(record) => Ok(Some(record)),
            Err(error) if error.status() == Some(404) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Offers a desired state (JSONC text); answers it as accepted.
    pub async fn put_desired(&self, text: String) -> Result<DesiredRecord, ClientError> {
        let call = "PUT /v1/desired".to_string();
        let request =
            self.authorized(self.http.put(format!("{}/v1/desired", self.base)).body(text));
        self.read(call, request).await
    }

    /// The last report and the transitions.
    pub async fn status(&self) -> Result<StatusSnapshot, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    /// The hosts joined with the nodes, and the last report (`GET
    /// /v1/cluster`, what `cairn status` shows).
    pub async fn cluster(&self) -> Result<StatusView, ClientError> {
        self.call(Method::GET, "/v1/cluster", None::<&()>).await
    }

    /// Posts a leader's report.
    pub async fn post_status(&self, report: &Report) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/status", Some(report)).await.map(drop)
    }

    /// A one-time login code for the cloud (`POST /v1/login-codes`), good
    /// for 15 minutes.
    pub async fn login_code(&self) -> Result<String, ClientError> {
        #[derive(serde::Deserialize)]
        struct Code {
            code: String,
        }
        let answer: Code = self.call(Method::POST, "/v1/login-codes", None::<&()>).await?;
        Ok(answer.code)
    }

    /// Asks the cloud to stop (its agents, then itself).
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/shutdown", None::<&()>).await.map(drop)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let call = format!("{method} {path}");
        let mut request =
            self.authorized(self.http.request(method, format!("{}{path}", self.base)));
        match body {
            Some(body) => request = request.json(body),
            // The cloud takes a POST only as JSON, with a body or without.
            None => request = request.header(reqwest::header::CONTENT_TYPE, "application/json"),
        }
        self.read(call, request).await
    }

    async fn read<T: DeserializeOwned>(
        &self,
        call: String,
        request: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let base = self.base.clone();
        let response = match request.send().await {
            Ok(response) => response,
            Err(source) => return Err(ClientError::Unreachable { base, call, source }),
        };
        let status = response.status();
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(source) => return Err(ClientError::Unreachable { base, call, source }),
        };
        if !status.is_success() {
            let error: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let text = |field: &str| error["error"][field].as_str().unwrap_or_default().to_string();
            let message = match text("message") {
                message if message.is_empty() => String::from_utf8_lossy(&bytes).into_owned(),
                message => message,
            };
            let (code, status) = (text("code"), status.as_u16());
            return Err(ClientError::Refused { base, call, status, code, message });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadAnswer {
            base,
            call,
            message: e.to_string(),
        })
    }
}
