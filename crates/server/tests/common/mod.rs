//! What the API tests share: a real node in this process, and requests to
//! it with or without the admin token.

#![allow(dead_code)] // Each test file uses its own part of it.

use std::net::SocketAddr;

use cairn_client::Client;
use cairn_server::{Node, NodeConfig};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The admin token of the test nodes that are not `--insecure`.
pub const ADMIN_TOKEN: &str = "the-test-nodes-admin-token";

pub struct TestNode {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), cairn_server::node::Error>>>,
    pub dir: TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        TestNode::start_with(tempfile::tempdir().unwrap(), |_| {}).await
    }

    pub async fn start_with(dir: TempDir, configure: impl FnOnce(&mut NodeConfig)) -> TestNode {
        // reqwest takes the process's TLS cryptography: install it first.
        cairn_tls::install_default_provider();
        let mut config =
            NodeConfig::new(1, dir.path().join("data"), "127.0.0.1:0".parse().unwrap());
        config.admin_token = Some(cairn_util::secret::Secret::new(ADMIN_TOKEN));
        configure(&mut config);
        if config.insecure {
            config.admin_token = None;
        }
        let node = Node::start(config).await.unwrap();
        let addr = node.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(async move {
            let _ = stopped.await;
        }));
        TestNode { addr, stop: Some(stop), task: Some(task), dir }
    }

    /// A client with the admin token.
    pub fn client(&self) -> Client {
        self.client_with(Some(ADMIN_TOKEN))
    }

    pub fn client_with(&self, token: Option<&str>) -> Client {
        Client::new(&self.addr.to_string()).unwrap().with_token(token.map(str::to_string))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Vec<u8>) {
        // A node takes a POST only as JSON (the browser checks).
        let content_type = if method == Method::POST { "application/json" } else { "" };
        self.with_headers(method, path, body, &[("content-type", content_type)]).await
    }

    /// `raw` with these headers (an empty value is left out), and the admin
    /// token unless they name an `authorization` of their own.
    pub async fn with_headers(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Vec<u8>) {
        let mut request = reqwest::Client::new().request(method, self.url(path)).body(body);
        if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("authorization")) {
            request = request.bearer_auth(ADMIN_TOKEN);
        }
        for (name, value) in headers.iter().filter(|(_, value)| !value.is_empty()) {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.bytes().await.unwrap().to_vec())
    }

    /// Sends a request that must fail with `status` and `code`, in the JSON
    /// error shape, and returns the message.
    pub async fn refused(
        &self,
        method: Method,
        path: &str,
        body: &str,
        status: StatusCode,
        code: &str,
    ) -> String {
        let (got, bytes) = self.raw(method.clone(), path, body.to_string()).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(got, status, "{method} {path} {body:?} answered {text}");
        let value: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("not JSON: {text}"));
        let error = &value["error"];
        assert_eq!(error["code"], code, "{method} {path}: {text}");
        assert!(error["indeterminate"].is_boolean(), "{text}");
        let message = error["message"].as_str().unwrap().to_string();
        assert!(!message.is_empty());
        message
    }

    pub async fn stop(mut self) -> TempDir {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
        self.dir
    }
}
