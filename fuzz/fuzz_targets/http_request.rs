//! HTTP requests, as any client could send them, through a real node's
//! routes and extractors (bodies, JSON, path and query parameters, session
//! headers, tokens, browser checks), its log and its store: nothing panics,
//! no request gets a 500, and every error answers the JSON error contract
//! `{"error": {"code", "message"}}`.
//!
//! One node serves the whole run (starting one per input would leave no time
//! to fuzz), so an input's outcome can depend on the ones before it; a crash
//! reproduces from its input alone in almost every case, as each request is
//! checked on its own.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use cairn_server::{Node, NodeConfig};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const ADMIN_TOKEN: &str = "the-fuzzed-nodes-admin-token";

/// The paths the node serves; `{}` takes a fuzzed, percent-encoded segment.
const ROUTES: &[&str] = &[
    "/v1/health",
    "/v1/cluster",
    "/v1/sessions",
    "/v1/tables",
    "/v1/tables/{}",
    "/v1/tables/{}/docs",
    "/v1/tables/{}/docs/{}",
    "/v1/system/{}",
    "/v1/admin/members",
    "/v1/admin/members/{}",
    "/v1/tokens",
    "/v1/tokens/{}",
    "/v1/kv/{}",
    "/v1/kv/{}/{}",
    "/v1/openapi.json",
    "/metrics",
    "/{}",
];

const METHODS: &[Method] =
    &[Method::GET, Method::PUT, Method::POST, Method::PATCH, Method::DELETE, Method::HEAD];

const HEADERS: &[&str] = &[
    "content-type",
    "cairn-session",
    "cairn-seq",
    "authorization",
    "origin",
    "host",
    "accept",
    "content-length",
    "if-match",
];

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    route: u8,
    segments: Vec<String>,
    query: Option<String>,
    headers: Vec<(u8, String)>,
    /// 0: the admin token; 1: none; else only what `headers` say.
    auth: u8,
    body: Vec<u8>,
}

struct Fuzzed {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    host: String,
}

fn fuzzed() -> &'static Fuzzed {
    static NODE: OnceLock<Fuzzed> = OnceLock::new();
    NODE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        // Kept for the whole run: the process ends with the fuzzer.
        let dir = cairn_fuzz::scratch_dir().keep();
        let mut config =
            NodeConfig::new(1, dir.join("data"), "127.0.0.1:0".parse().expect("an address"));
        config.admin_token = Some(cairn_util::secret::Secret::new(ADMIN_TOKEN));
        config.max_body_bytes = 64 * 1024;
        let node = runtime.block_on(Node::start(config)).expect("the node starts");
        let host = node.local_addr().to_string();
        let router = node.router();
        // The node's log runs until the process ends; its listener is unused.
        std::mem::forget(node);
        Fuzzed { runtime, router, host }
    })
}

fn percent_encoded(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn request(input: &Input, host: &str) -> Option<Request<Body>> {
    let template = ROUTES[usize::from(input.route) % ROUTES.len()];
    let mut segments = input.segments.iter();
    let mut path = String::new();
    for (i, part) in template.split("{}").enumerate() {
        if i > 0 {
            path.push_str(&percent_encoded(segments.next().map_or("", String::as_str)));
        }
        path.push_str(part);
    }
    if let Some(query) = &input.query {
        path.push('?');
        path.push_str(query);
    }
    let method = METHODS[usize::from(input.method) % METHODS.len()].clone();
    let mut builder = Request::builder().method(method).uri(path);
    let headers = builder.headers_mut()?;
    headers.insert("host", HeaderValue::from_str(host).ok()?);
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    if input.auth == 0 {
        headers
            .insert("authorization", HeaderValue::from_str(&format!("Bearer {ADMIN_TOKEN}")).ok()?);
    }
    for (name, value) in &input.headers {
        let name = HeaderName::from_static(HEADERS[usize::from(*name) % HEADERS.len()]);
        headers.insert(name, HeaderValue::from_str(value).ok()?);
    }
    builder.body(Body::from(input.body.clone())).ok()
}

fuzz_target!(|input: Input| {
    let fuzzed = fuzzed();
    let Some(request) = request(&input, &fuzzed.host) else { return };
    let router = fuzzed.router.clone();
    // A HEAD answer has no body, by definition.
    let has_body = request.method() != Method::HEAD;
    fuzzed.runtime.block_on(async move {
        let response = router.oneshot(request).await.expect("a router never fails");
        let status = response.status();
        assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "a request got a 500");
        if has_body && (status.is_client_error() || status.is_server_error()) {
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("an error body is read whole");
            let value: serde_json::Value =
                serde_json::from_slice(&body).expect("an error body is JSON");
            let error = &value["error"];
            assert!(
                error["code"].is_string() && error["message"].is_string(),
                "an error answers the contract: {value}"
            );
        }
    });
});
