//! The HTTP API against a real node in this process: every route's success
//! path, and every kind of bad input answered with the JSON error contract and
//! the right status, with nothing written.

mod common;

use std::net::SocketAddr;

use cairn_client::{Client, Conflict, Read};
use cairn_server::{Node, NodeConfig};
use common::{TestNode, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn health_and_cluster_describe_the_single_node() {
    let node = TestNode::start().await;
    let client = node.client();
    let health = client.health().await.unwrap();
    assert_eq!((health.status.as_str(), health.id), ("ok", 1));
    assert_eq!(health.role, cairn_client::NodeRole::Leader);
    let cluster = client.cluster().await.unwrap();
    assert_eq!(cluster.leader, Some(1));
    let nodes = &cluster.nodes;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].address, Some(node.addr.to_string()));
    assert!(nodes[0].reachable);
    assert!(nodes[0].applied_index.is_some() && nodes[0].decided_index.is_some());
    assert!(nodes[0].version.is_some());
    node.stop().await;
}

/// A node that clients reach at another address than it listens on (a port
/// a container publishes) lists that one, and takes a page of it as its own.
#[tokio::test]
async fn an_advertised_address_is_the_one_listed() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(dir, |config| {
        config.advertise = Some("localhost:18081".into());
    })
    .await;
    let cluster = node.client().cluster().await.unwrap();
    assert_eq!(cluster.nodes[0].address.as_deref(), Some("localhost:18081"));
    let from = |origin: &'static str| {
        let url = format!("http://{}/v1/tables", node.addr);
        async move {
            let request = reqwest::Client::new().get(url).header("origin", origin);
            request.bearer_auth(ADMIN_TOKEN).send().await.unwrap().status()
        }
    };
    assert_eq!(from("http://localhost:18081").await, StatusCode::OK, "its own page");
    assert_eq!(from("http://localhost:18082").await, StatusCode::FORBIDDEN, "another page");
    node.stop().await;
}

#[tokio::test]
async fn tables_are_listed_created_idempotently_and_dropped() {
    let node = TestNode::start().await;
    let client = node.client();
    let (status, _) = node.raw(Method::PUT, "/v1/tables/users", "").await;
    assert_eq!(status, StatusCode::CREATED);
    let again = client.create_table("users").await.unwrap();
    assert_eq!(again["created"], false);
    assert!(again["index"].as_u64().unwrap() > 0, "writes answer with their index");
    client.create_table("posts").await.unwrap();
    assert_eq!(client.list_tables().await.unwrap(), vec!["posts", "users"]);
    assert_eq!(client.drop_table("posts").await.unwrap()["dropped"], true);
    assert_eq!(client.list_tables().await.unwrap(), vec!["users"]);
    node.refused(Method::DELETE, "/v1/tables/posts", "", StatusCode::NOT_FOUND, "table_not_found")
        .await;
    node.stop().await;
}

#[tokio::test]
async fn documents_go_through_their_whole_life() {
    let node = TestNode::start().await;
    let client = node.client();
    client.create_table("users").await.unwrap();

    // One document without an id gets a generated one.
    let one = client.insert("users", &json!({"name": "ada"}), Conflict::Error).await.unwrap();
    assert_eq!(one["inserted"], 1);
    let generated = one["ids"][0].as_str().unwrap().to_string();
    let doc = client.get_doc("users", &generated, Read::Linearizable).await.unwrap().unwrap();
    assert_eq!(doc, json!({"id": generated, "name": "ada"}));

    // Many at once; an existing id conflicts unless replace or update is asked.
    let many = json!([{"id": "a", "n": 1, "keep": true}, {"id": "b", "n": 2}]);
    assert_eq!(client.insert("users", &many, Conflict::Error).await.unwrap()["inserted"], 2);
    let clash = client
        .insert("users", &json!([{"id": "c"}, {"id": "a"}]), Conflict::Error)
        .await
        .unwrap_err();
    assert_eq!(clash.code(), Some("conflict"));
    assert!(clash.to_string().contains("'a'"), "{clash}");
    assert_eq!(
        client.get_doc("users", "c", Read::Linearizable).await.unwrap(),
        None,
        "nothing written"
    );
    let updated =
        client.insert("users", &json!({"id": "a", "n": 10}), Conflict::Update).await.unwrap();
    assert_eq!(updated["updated"], 1);
    let a = client.get_doc("users", "a", Read::Local).await.unwrap().unwrap();
    assert_eq!(a, json!({"id": "a", "n": 10, "keep": true}));
    let replaced =
        client.insert("users", &json!({"id": "a", "n": 11}), Conflict::Replace).await.unwrap();
    assert_eq!(replaced["replaced"], 1);

    // PUT creates or replaces; PATCH merges; DELETE says whether it existed.
    let (status, _) = node.raw(Method::PUT, "/v1/tables/users/docs/z", r#"{"v":1}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    let put = client.replace_doc("users", "z", &json!({"id": "z", "v": 2})).await.unwrap();
    assert_eq!(put["created"], false);
    let patched = client.update_doc("users", "z", &json!({"v": null, "w": [1]})).await.unwrap();
    assert_eq!(patched["doc"], json!({"id": "z", "w": [1]}));
    assert_eq!(client.delete_doc("users", "z").await.unwrap()["deleted"], true);
    assert_eq!(client.delete_doc("users", "z").await.unwrap()["deleted"], false);
    let missing = client.update_doc("users", "z", &json!({})).await.unwrap_err();
    assert_eq!(missing.code(), Some("doc_not_found"));

    // Ids with slashes and spaces survive the path.
    client.replace_doc("users", "x/y z", &json!({})).await.unwrap();
    let odd = client.get_doc("users", "x/y z", Read::Linearizable).await.unwrap().unwrap();
    assert_eq!(odd["id"], "x/y z");
    node.stop().await;
}

#[tokio::test]
async fn listing_pages_through_a_table_with_a_cursor() {
    let node = TestNode::start().await;
    let client = node.client();
    client.create_table("t").await.unwrap();
    let docs: Vec<Value> = (0..7).map(|i| json!({"id": format!("d{i}")})).collect();
    client.insert("t", &Value::Array(docs), Conflict::Error).await.unwrap();
    let first = client.list_docs("t", None, 3, Read::Linearizable).await.unwrap();
    assert_eq!(first.docs.len(), 3);
    assert_eq!(first.next.as_deref(), Some("d2"));
    let rest = client.list_docs("t", Some("d2"), 10, Read::Local).await.unwrap();
    let ids: Vec<&str> = rest.docs.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d3", "d4", "d5", "d6"]);
    assert_eq!(rest.next, None);
    node.stop().await;
}

#[tokio::test]
async fn the_key_value_space_stores_raw_bytes() {
    let node = TestNode::start().await;
    let client = node.client();
    let bytes = vec![0u8, 159, 146, 150, 255];
    let index = client.kv_put("bin/a b", bytes.clone()).await.unwrap();
    assert!(index > 0);
    assert_eq!(
        client.kv_get("bin/a b", Read::Linearizable).await.unwrap().unwrap().to_vec(),
        bytes
    );
    let (status, raw) = node.raw(Method::GET, "/v1/kv/bin/a%20b", "").await;
    assert_eq!((status, raw), (StatusCode::OK, bytes));
    client.kv_put("empty", Vec::new()).await.unwrap();
    assert_eq!(client.kv_get("empty", Read::Local).await.unwrap().unwrap().len(), 0);
    assert!(client.kv_delete("bin/a b").await.unwrap());
    assert!(!client.kv_delete("bin/a b").await.unwrap());
    assert_eq!(client.kv_get("bin/a b", Read::Linearizable).await.unwrap(), None);
    node.refused(Method::GET, "/v1/kv/nope", "", StatusCode::NOT_FOUND, "key_not_found").await;
    node.stop().await;
}

/// Counters wait for the cluster version gate: refused at 0.1, with what to
/// do; a single node of this build finalizes to its own version, and the
/// record cannot be written around the finalize.
#[tokio::test]
async fn counters_open_once_the_upgrade_is_finalized() {
    let node = TestNode::start().await;
    let client = node.client();
    assert_eq!(client.cluster().await.unwrap().cluster_version.as_deref(), Some("0.1"));
    let message = node
        .refused(
            Method::POST,
            "/v1/kv/n",
            r#"{"increment": 1}"#,
            StatusCode::CONFLICT,
            "not_finalized",
        )
        .await;
    assert!(
        message.contains("needs cluster version 0.2") && message.contains("cairn cluster finalize")
    );
    assert_eq!(client.kv_get("n", Read::Linearizable).await.unwrap(), None);
    let refused = |body: &'static str, says: &'static str| {
        let node = &node;
        async move {
            let message = node
                .refused(
                    Method::POST,
                    "/v1/admin/finalize",
                    body,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                )
                .await;
            assert!(message.contains(says), "{body}: {message}");
        }
    };
    refused(r#"{"version": "0.2.0"}"#, "not MAJOR.MINOR").await;
    refused(r#"{"version": 2}"#, "the body must be").await;
    refused(r#"{"version": "0.2", "now": true}"#, "the body must be").await;
    let message = node
        .refused(
            Method::PUT,
            "/v1/system/cluster_version",
            r#"{"version": "0.2"}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    assert!(message.contains("finaliz"), "{message}");
    let too_high = node
        .refused(
            Method::POST,
            "/v1/admin/finalize",
            r#"{"version": "9.9"}"#,
            StatusCode::CONFLICT,
            "not_finalizable",
        )
        .await;
    assert!(too_high.contains("not 9.9"), "{too_high}");

    let finalized = client.finalize(None).await.unwrap();
    let own = cairn_storage::cluster_version::supported().max.to_string();
    assert_eq!(
        (finalized.previous.as_str(), finalized.cluster_version.as_str()),
        ("0.1", own.as_str())
    );
    assert!(finalized.index.is_some());
    assert_eq!(client.finalize(None).await.unwrap().index, None, "nothing left to do");
    let lower = node
        .refused(
            Method::POST,
            "/v1/admin/finalize",
            r#"{"version": "0.1"}"#,
            StatusCode::CONFLICT,
            "not_finalizable",
        )
        .await;
    assert!(lower.contains("never goes down"), "{lower}");

    assert_eq!(client.kv_increment("n", 5).await.unwrap().value, 5);
    assert_eq!(client.kv_increment("n", -7).await.unwrap().value, -2);
    assert_eq!(client.kv_get("n", Read::Linearizable).await.unwrap().unwrap(), "-2".as_bytes());
    client.kv_put("text", "twelve").await.unwrap();
    let message = node
        .refused(
            Method::POST,
            "/v1/kv/text",
            r#"{"increment": 1}"#,
            StatusCode::BAD_REQUEST,
            "bad_request",
        )
        .await;
    assert!(message.contains("not a decimal integer"), "{message}");
    for body in [r#"{"increment": 1.5}"#, r#"{"by": 1}"#, r#"[1]"#, r#"{"increment": 1, "x": 2}"#] {
        node.refused(Method::POST, "/v1/kv/n", body, StatusCode::BAD_REQUEST, "bad_request").await;
    }
    // A retried increment (same session and sequence) adds once.
    let session = client.open_session().await.unwrap();
    let once = client.with_write_id(&session, 1);
    assert_eq!(once.kv_increment("n", 10).await.unwrap().value, 8);
    assert_eq!(once.kv_increment("n", 10).await.unwrap().value, 8);
    assert_eq!(client.kv_get("n", Read::Linearizable).await.unwrap().unwrap(), "8".as_bytes());
    node.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_json_error_and_writes_nothing() {
    let node = TestNode::start().await;
    node.client().create_table("t").await.unwrap();
    let bad = StatusCode::BAD_REQUEST;
    let post = "/v1/tables/t/docs";

    let message = node.refused(Method::POST, post, "{\"a\": ", bad, "invalid_json").await;
    assert!(message.contains("not valid JSON"), "{message}");
    node.refused(Method::POST, post, "", bad, "invalid_json").await;
    let message = node.refused(Method::POST, post, "[1]", bad, "bad_request").await;
    assert!(message.contains("document 0") && message.contains("object"), "{message}");
    node.refused(Method::POST, post, "\"text\"", bad, "bad_request").await;
    let message = node.refused(Method::POST, post, r#"{"id": 5}"#, bad, "bad_request").await;
    assert!(message.contains("\"id\" must be a string"), "{message}");
    node.refused(Method::POST, post, r#"{"id": ""}"#, bad, "bad_request").await;
    node.refused(Method::POST, post, "[]", bad, "bad_request").await;
    let message = node.refused(Method::PUT, "/v1/tables/bad%20name", "", bad, "bad_request").await;
    assert!(message.contains("bad table name"), "{message}");
    node.refused(Method::PUT, "/v1/tables/_system", "", bad, "bad_request").await;
    node.refused(Method::POST, &format!("{post}?conflict=maybe"), "{}", bad, "bad_request").await;
    node.refused(Method::GET, "/v1/tables/t/docs/x?read=sometimes", "", bad, "bad_request").await;
    node.refused(Method::GET, "/v1/tables/t/docs?limit=0", "", bad, "bad_request").await;
    node.refused(Method::GET, "/v1/tables/t/docs?limit=5000", "", bad, "bad_request").await;
    node.refused(Method::GET, "/v1/tables/t/docs?limit=ten", "", bad, "bad_request").await;
    node.refused(Method::GET, "/v1/tables?unknown=1", "", bad, "bad_request").await;
    let message =
        node.refused(Method::PUT, "/v1/tables/t/docs/a", r#"{"id":"b"}"#, bad, "bad_request").await;
    assert!(message.contains("differs"), "{message}");
    node.refused(Method::PUT, "/v1/tables/t/docs/a", "[]", bad, "bad_request").await;
    node.refused(Method::PATCH, "/v1/tables/t/docs/a", "[1]", bad, "bad_request").await;
    node.refused(Method::GET, "/v1/tables/t/docs/%FF", "", bad, "bad_request").await;

    let missing = StatusCode::NOT_FOUND;
    node.refused(Method::POST, "/v1/tables/nope/docs", "{}", missing, "table_not_found").await;
    node.refused(Method::GET, "/v1/tables/nope/docs/a", "", missing, "table_not_found").await;
    node.refused(Method::GET, "/v1/tables/nope/docs", "", missing, "table_not_found").await;
    node.refused(Method::GET, "/v1/tables/t/docs/a", "", missing, "doc_not_found").await;
    node.refused(Method::GET, "/v2/anything", "", missing, "route_not_found").await;
    node.refused(Method::GET, "/console/missing.js", "", missing, "route_not_found").await;
    let message = node
        .refused(
            Method::POST,
            "/v1/tables",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;
    assert!(message.contains("POST"), "{message}");
    node.refused(
        Method::DELETE,
        "/v1/health",
        "",
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    )
    .await;

    // None of it wrote anything.
    let page = node.client().list_docs("t", None, 10, Read::Linearizable).await.unwrap();
    assert!(page.docs.is_empty(), "{:?}", page.docs);
    assert_eq!(node.client().list_tables().await.unwrap(), vec!["t"]);
    node.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() {
    let node =
        TestNode::start_with(tempfile::tempdir().unwrap(), |c| c.max_body_bytes = 1024).await;
    node.client().create_table("t").await.unwrap();
    let big = format!(r#"{{"id":"a","pad":"{}"}}"#, "x".repeat(2000));
    let too_large = StatusCode::PAYLOAD_TOO_LARGE;
    let message =
        node.refused(Method::POST, "/v1/tables/t/docs", &big, too_large, "payload_too_large").await;
    assert!(message.contains("1024 bytes"), "{message}");
    node.refused(Method::PUT, "/v1/kv/k", &"v".repeat(1025), too_large, "payload_too_large").await;
    // Just under the limit is fine.
    node.client().kv_put("k", vec![b'v'; 1000]).await.unwrap();
    assert_eq!(node.client().get_doc("t", "a", Read::Local).await.unwrap(), None);
    node.stop().await;
}

#[tokio::test]
async fn requests_a_web_page_could_send_are_refused() {
    let node = TestNode::start().await;
    node.client().create_table("t").await.unwrap();
    let doc = r#"{"id":"a"}"#;
    let host = node.addr.to_string();
    let own_origin = format!("http://{host}");
    // (what, method, path, headers, status, code)
    type Refusal<'a> = (&'a str, Method, &'a str, Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let refusals: Vec<Refusal> = vec![
        // A simple cross-site POST: a form or text/plain body, or none.
        (
            "a form POST",
            Method::POST,
            "/v1/tables/t/docs",
            vec![("content-type", "application/x-www-form-urlencoded")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "a text/plain POST",
            Method::POST,
            "/v1/tables/t/docs",
            vec![("content-type", "text/plain")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "a POST without a type",
            Method::POST,
            "/v1/sessions",
            vec![],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        // A page of another origin, whatever it sends.
        (
            "another origin",
            Method::POST,
            "/v1/tables/t/docs",
            vec![("content-type", "application/json"), ("origin", "http://evil.example")],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "another origin reading",
            Method::GET,
            "/v1/tables/t/docs/a",
            vec![("origin", "http://evil.example")],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        // DNS rebinding: the page's own name, pointed at this node.
        (
            "a rebound name",
            Method::POST,
            "/v1/tables/t/docs",
            vec![
                ("content-type", "application/json"),
                ("host", "evil.example:7001"),
                ("origin", "http://evil.example:7001"),
            ],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "a rebound name reading",
            Method::GET,
            "/v1/tables/t/docs/a",
            vec![("host", "evil.example")],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
    ];
    for (what, method, path, headers, status, code) in refusals {
        let (got, bytes) = node.with_headers(method, path, doc, &headers).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(got, status, "{what}: {text}");
        let value: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{text}"));
        assert_eq!(value["error"]["code"], code, "{what}: {text}");
    }
    // Nothing of it was written.
    assert_eq!(node.client().get_doc("t", "a", Read::Linearizable).await.unwrap(), None);
    // The node's own pages, and clients that are no browser, pass.
    let own = [("content-type", "application/json"), ("origin", own_origin.as_str())];
    let (got, _) = node.with_headers(Method::POST, "/v1/tables/t/docs", doc, &own).await;
    assert_eq!(got, StatusCode::CREATED);
    let by_name = [("host", "localhost")];
    let (got, _) = node.with_headers(Method::GET, "/v1/tables/t/docs/a", "", &by_name).await;
    assert_eq!(got, StatusCode::OK);
    // A name the node was told to answer to.
    let named = TestNode::start_with(tempfile::tempdir().unwrap(), |c| {
        c.browser.allowed_hosts = vec!["db.example".into()]
    })
    .await;
    let (got, _) =
        named.with_headers(Method::GET, "/v1/health", "", &[("host", "db.example:7001")]).await;
    assert_eq!(got, StatusCode::OK);
    named.stop().await;
    node.stop().await;
}

#[tokio::test]
async fn a_slow_client_cannot_hold_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start().await;
    // Headers a byte at a time, never finished: the node closes the
    // connection once the header timeout passes, whatever trickles in.
    let mut slow = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    slow.write_all(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.unwrap();
    let started = std::time::Instant::now();
    let limit = cairn_server::http::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(30);
    let mut buf = [0u8; 1024];
    loop {
        assert!(started.elapsed() < limit, "the connection stayed open past {limit:?}");
        let _ = slow.write_all(b"X").await;
        match tokio::time::timeout(std::time::Duration::from_secs(2), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => break, // an error answer, then the close
            Err(_) => {}
        }
    }
    assert!(
        started.elapsed() + std::time::Duration::from_secs(3)
            >= cairn_server::http::HEADER_READ_TIMEOUT,
        "closed before the header timeout: {:?}",
        started.elapsed()
    );
    // Meanwhile, and after, others are served.
    node.client().health().await.unwrap();
    node.stop().await;
}

#[tokio::test]
async fn settings_past_the_limits_are_refused_at_start() {
    let mut config = NodeConfig::new(
        1,
        tempfile::tempdir().unwrap().path().join("data"),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.max_body_bytes = cairn_server::node::MAX_BODY_BYTES_LIMIT + 1;
    let error = Node::start(config.clone()).await.err().expect("refused");
    assert!(error.to_string().contains("--max-body-bytes"), "{error}");
    config.max_body_bytes = 1024;
    config.max_connections = 0;
    let error = Node::start(config.clone()).await.err().expect("refused");
    assert!(error.to_string().contains("--max-connections"), "{error}");
    config.max_connections = 16;
    config.feeds_max = 0;
    let error = Node::start(config.clone()).await.err().expect("refused");
    assert!(error.to_string().contains("--feeds-max"), "{error}");
    config.feeds_max = 8;
    // A node that replicates needs certificates, or to be told --insecure.
    config.peer_listen = Some("127.0.0.1:0".parse().unwrap());
    let error = Node::start(config.clone()).await.err().expect("refused");
    assert!(
        error.to_string().contains("--certs-dir") && error.to_string().contains("--insecure"),
        "{error}"
    );
    config.insecure = true;
    config.certs_dir = Some("certs".into());
    let error = Node::start(config).await.err().expect("refused");
    assert!(error.to_string().contains("exclude each other"), "{error}");
}

#[tokio::test]
async fn documents_over_the_limit_are_refused_with_413_and_nothing_written() {
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), |c| {
        c.max_body_bytes = cairn_server::node::MAX_BODY_BYTES_LIMIT
    })
    .await;
    node.client().create_table("t").await.unwrap();
    let over = format!(r#"{{"id":"a","pad":"{}"}}"#, "x".repeat(cairn_storage::DOC_BYTES_MAX));
    let status = StatusCode::PAYLOAD_TOO_LARGE;
    let message = node.refused(Method::POST, "/v1/tables/t/docs", &over, status, "too_large").await;
    assert!(message.contains("document 'a'"), "{message}");
    node.refused(Method::PUT, "/v1/tables/t/docs/a", &over, status, "too_large").await;
    let value = "v".repeat(cairn_storage::KV_VALUE_BYTES_MAX + 1);
    node.refused(Method::PUT, "/v1/kv/k", &value, status, "too_large").await;
    assert_eq!(node.client().get_doc("t", "a", Read::Linearizable).await.unwrap(), None);
    assert_eq!(node.client().kv_get("k", Read::Linearizable).await.unwrap(), None);
    node.stop().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_in_prometheus_text() {
    let node = TestNode::start().await;
    let client = node.client();
    client.kv_put("a", "1").await.unwrap();
    client.kv_get("a", Read::Linearizable).await.unwrap();
    let text = client.metrics().await.unwrap();
    assert!(text.contains("cairn_http_requests_total{"), "{text}");
    assert!(text.contains("route=\"/v1/kv/{*key}\""), "{text}");
    assert!(text.contains("cairn_http_request_duration_seconds_bucket"), "{text}");
    assert!(text.contains("cairn_applied_index"), "{text}");
    node.stop().await;
}

#[tokio::test]
async fn a_node_stopped_gracefully_restarts_with_its_data() {
    let node = TestNode::start().await;
    let client = node.client();
    client.create_table("t").await.unwrap();
    client.insert("t", &json!({"id": "kept"}), Conflict::Error).await.unwrap();
    let index = client.kv_put("k", "v").await.unwrap();
    let dir = node.stop().await;

    let node = TestNode::start_with(dir, |_| {}).await;
    let client = node.client();
    assert!(client.get_doc("t", "kept", Read::Linearizable).await.unwrap().is_some());
    assert_eq!(client.health().await.unwrap().applied_index, index);
    // New writes continue the index sequence.
    assert!(client.kv_put("k2", "v").await.unwrap() > index);
    node.stop().await;
}

#[tokio::test]
async fn concurrent_writers_each_get_their_own_answer() {
    let node = TestNode::start().await;
    let client = node.client();
    let mut tasks = Vec::new();
    for writer in 0..32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut indexes = Vec::new();
            for i in 0..20 {
                indexes.push(
                    client
                        .kv_put(&format!("w{writer}/{i}"), format!("{writer}:{i}"))
                        .await
                        .unwrap(),
                );
            }
            indexes
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 32 * 20, "every write has its own log index");
    for writer in [0, 17, 31] {
        let value =
            client.kv_get(&format!("w{writer}/19"), Read::Linearizable).await.unwrap().unwrap();
        assert_eq!(value, format!("{writer}:19").as_bytes());
    }
    node.stop().await;
}

/// Session numbers are log indexes, so a client could guess the node's own
/// pooled session and write under it far ahead of the node's count, which
/// failed every plain write on that session (409 `stale_sequence`) until the
/// node restarted. A session is now named by a handle only its opener can
/// have: the number alone, or with a made-up tag, is refused, and nothing
/// is written.
#[tokio::test]
async fn a_guessed_session_is_refused_and_costs_nothing() {
    let node = TestNode::start().await;
    let client = node.client();
    // The node's first plain write opens its pooled session just before it.
    let created = client.create_table("t").await.unwrap();
    let pooled = created["index"].as_u64().unwrap() - 1;
    for guess in [pooled.to_string(), format!("{pooled}.{}", "0".repeat(32))] {
        for seq in [u64::MAX, 1_000] {
            let refused = client.with_write_id(&guess, seq).kv_put("ahead", "x").await.unwrap_err();
            assert_eq!(refused.code(), Some("session_forbidden"), "{refused}");
            assert!(!refused.is_indeterminate(), "nothing was proposed");
        }
    }
    assert_eq!(client.kv_get("ahead", Read::Linearizable).await.unwrap(), None);
    // A real session's handle is refused far past its last sequence.
    let session = client.open_session().await.unwrap();
    let burn = client.with_write_id(&session, u64::MAX).kv_put("burn", "x").await.unwrap_err();
    assert_eq!(burn.code(), Some("bad_request"), "{burn}");
    let mut failed = 0;
    for i in 0..6 {
        if let Err(e) = client.kv_put(&format!("plain{i}"), "v").await {
            assert_eq!(e.code(), Some("stale_sequence"), "{e}");
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "{failed} plain writes failed after the guesses");
    assert_eq!(
        client.kv_get("plain5", Read::Linearizable).await.unwrap().as_deref(),
        Some(&b"v"[..])
    );
    node.stop().await;
}

#[tokio::test]
async fn a_client_retrying_with_its_session_id_writes_once() {
    let node = TestNode::start().await;
    let client = node.client();
    client.create_table("t").await.unwrap();
    let session = client.open_session().await.unwrap();

    // The same insert sent three times under (session, 1), as a client would
    // after timeouts: one effect, one index, the first answer every time.
    // The document has no id: the node generates one per request, yet every
    // answer names the id that was stored.
    let first_try = client.with_write_id(&session, 1);
    let first = first_try.insert("t", &json!({"x": 1}), Conflict::Error).await.unwrap();
    for _ in 0..2 {
        let again = first_try.insert("t", &json!({"x": 1}), Conflict::Error).await.unwrap();
        assert_eq!(again, first, "a repeat is answered from memory");
    }
    let stored_id = first["ids"][0].as_str().unwrap();
    assert!(client.get_doc("t", stored_id, Read::Linearizable).await.unwrap().is_some());
    assert_eq!(client.list_docs("t", None, 10, Read::Linearizable).await.unwrap().docs.len(), 1);

    // The next write of the session applies; the old one is now stale.
    let next = client.with_write_id(&session, 2).kv_put("k", "v").await.unwrap();
    assert!(next > first["index"].as_u64().unwrap());
    let stale = first_try.insert("t", &json!({"id": "b"}), Conflict::Error).await.unwrap_err();
    assert_eq!(stale.code(), Some("stale_sequence"));
    assert_eq!(client.get_doc("t", "b", Read::Linearizable).await.unwrap(), None);

    let reused = client.with_write_id(&session, 2).kv_put("other", "v").await.unwrap_err();
    assert_eq!(reused.code(), Some("sequence_reused"));
    let unknown = client.with_write_id("999999", 1).kv_put("k", "w").await.unwrap_err();
    assert_eq!(unknown.code(), Some("session_forbidden"));
    assert_eq!(client.kv_get("k", Read::Linearizable).await.unwrap().unwrap(), "v".as_bytes());

    let bad = [
        (session.as_str(), "x", StatusCode::BAD_REQUEST),
        ("abc", "1", StatusCode::FORBIDDEN),
        (session.as_str(), "0", StatusCode::BAD_REQUEST),
    ];
    for (session, seq, status) in bad {
        let response = reqwest::Client::new()
            .put(node.url("/v1/kv/k"))
            .bearer_auth(ADMIN_TOKEN)
            .header("cairn-session", session)
            .header("cairn-seq", seq)
            .body("z")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{session}/{seq}");
    }
    let only_one = reqwest::Client::new()
        .delete(node.url("/v1/kv/k"))
        .bearer_auth(ADMIN_TOKEN)
        .header("cairn-seq", "3");
    assert_eq!(only_one.send().await.unwrap().status(), StatusCode::BAD_REQUEST);
    node.stop().await;
}

/// The system table keeps the control plane's records apart from user
/// tables, and `/v1/cluster` shows the reconciliation status from it.
#[tokio::test]
async fn system_records_are_kept_and_shown_as_reconciliation() {
    let node = TestNode::start().await;
    node.refused(Method::GET, "/v1/system/control", "", StatusCode::NOT_FOUND, "record_not_found")
        .await;
    assert_eq!(node.client().cluster().await.unwrap().reconciliation, Value::Null);
    let record = json!({
        "control": {"anything": 1},
        "report": {"state": "AT_DESIRED_STATE", "desired_id": 7},
    });
    let put = |query: &'static str, body: String| {
        let node = &node;
        async move { node.raw(Method::PUT, &format!("/v1/system/control{query}"), body).await }
    };
    let (status, bytes) = put("?expect_revision=0", record.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&bytes));
    let written: Value = serde_json::from_slice(&bytes).unwrap();
    let revision = written["index"].as_u64().unwrap();
    let (status, bytes) = node.raw(Method::GET, "/v1/system/control", "").await;
    assert_eq!(status, StatusCode::OK);
    let mut stored: Value = serde_json::from_slice(&bytes).unwrap();
    // The state machine stamps the record with its revision: the index.
    assert_eq!(stored["revision"], revision);
    stored.as_object_mut().unwrap().remove("revision");
    assert_eq!(stored, record);
    // Two writers that read the same revision cannot both write.
    let (status, _) = put("", json!({"v": 2}).to_string()).await;
    assert_eq!(status, StatusCode::OK);
    node.refused(
        Method::PUT,
        &format!("/v1/system/control?expect_revision={revision}"),
        &json!({"v": 3}).to_string(),
        StatusCode::CONFLICT,
        "revision_conflict",
    )
    .await;
    let (status, _) = put("", record.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let cluster = node.client().cluster().await.unwrap();
    assert_eq!(cluster.reconciliation["state"], "AT_DESIRED_STATE");
    assert_eq!(cluster.reconciliation["desired_id"], 7);
    // Not a user table, and not JSON is refused.
    let tables = node.client().list_tables().await.unwrap();
    assert!(!tables.iter().any(|t| t.starts_with('_')), "{tables:?}");
    node.refused(
        Method::PUT,
        "/v1/system/control",
        "{not json",
        StatusCode::BAD_REQUEST,
        "invalid_json",
    )
    .await;
    node.refused(Method::PUT, "/v1/system/control", "[1]", StatusCode::BAD_REQUEST, "bad_request")
        .await;
    node.stop().await;
}

/// A node that begins to shut down answers the writes waiting on its log at
/// once (503, indeterminate) rather than holding its shutdown for their
/// timeout. Node 1 takes a write after its only peer is gone but while it
/// still counts the peer as heard (three election timeouts), so the write
/// waits for a quorum that will not come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_writes_at_once() {
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let peers: std::collections::BTreeMap<u64, SocketAddr> = [(1, free()), (2, free())].into();
    let write_timeout_ms = 300_000;
    let configure = |id: u64| {
        let peers = peers.clone();
        move |c: &mut NodeConfig| {
            c.id = id;
            c.peer_listen = Some(peers[&id]);
            c.peers = peers;
            c.insecure = true;
            c.election_timeout_ms = 3_000;
            c.write_timeout_ms = write_timeout_ms;
        }
    };
    let (one, two) = tokio::join!(
        TestNode::start_with(tempfile::tempdir().unwrap(), configure(1)),
        TestNode::start_with(tempfile::tempdir().unwrap(), configure(2)),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while one.client().kv_put("ready", "yes").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the pair never took a write");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    two.stop().await;

    let url = one.url("/v1/kv/waiting");
    let write = tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_millis(write_timeout_ms * 2))
            .build()
            .unwrap();
        let response = http.put(url).body("v").send().await.unwrap();
        (response.status(), response.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!write.is_finished(), "the write did not wait: {:?}", write.await);
    let stopping = std::time::Instant::now();
    one.stop().await;
    let (status, body) = write.await.unwrap();
    // Far below the write timeout: the shutdown did not wait it out.
    assert!(stopping.elapsed() < std::time::Duration::from_secs(60), "{:?}", stopping.elapsed());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert_eq!(body["error"]["indeterminate"], true, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("shutting down"), "{body}");
}

/// The OpenAPI document lists every route of the API with its methods, and
/// states the limits the node enforces, from the same constants.
#[tokio::test]
async fn the_api_is_described_by_an_openapi_document() {
    use cairn_storage::command::{
        DOC_ID_BYTES_MAX, INSERT_DOCS_MAX, KV_KEY_BYTES_MAX, TABLE_NAME_BYTES_MAX,
    };
    let node = TestNode::start().await;
    let (status, bytes) = node.raw(Method::GET, "/v1/openapi.json", "").await;
    assert_eq!(status, StatusCode::OK);
    let document: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let routes = [
        ("/v1/health", &["get"][..]),
        ("/v1/cluster", &["get"]),
        ("/v1/sessions", &["post"]),
        ("/v1/tables", &["get"]),
        ("/v1/tables/{table}", &["put", "delete"]),
        ("/v1/tables/{table}/docs", &["get", "post"]),
        ("/v1/tables/{table}/docs/{id}", &["get", "put", "patch", "delete"]),
        ("/v1/kv/{key}", &["get", "put", "delete", "post"]),
        ("/v1/system/{key}", &["get", "put"]),
        ("/v1/admin/members", &["get", "post"]),
        ("/v1/admin/members/{id}", &["delete"]),
        ("/v1/admin/finalize", &["post"]),
        ("/v1/admin/backups", &["get", "post"]),
        ("/v1/admin/backups/{name}", &["delete"]),
        ("/v1/tokens", &["get", "post"]),
        ("/v1/tokens/{id}", &["delete"]),
        ("/v1/login", &["post"]),
        ("/v1/tables/{table}/changes", &["get"]),
        ("/v1/changes/kv", &["get"]),
    ];
    let paths = document["paths"].as_object().unwrap();
    assert_eq!(paths.len(), routes.len(), "{:?}", paths.keys().collect::<Vec<_>>());
    for (path, methods) in routes {
        let item = paths.get(path).unwrap_or_else(|| panic!("{path} is not described"));
        let mut described: Vec<&str> =
            item.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        described.retain(|k| *k != "parameters");
        described.sort_unstable();
        let mut expected = methods.to_vec();
        expected.sort_unstable();
        assert_eq!(described, expected, "{path}");
    }
    let parameter = |path: &str, method: &str, name: &str| -> Value {
        let parameters = document["paths"][path][method]["parameters"].as_array().unwrap();
        parameters.iter().find(|p| p["name"] == name).unwrap()["schema"].clone()
    };
    let table = parameter("/v1/tables/{table}", "put", "table");
    assert_eq!(table["maxLength"], TABLE_NAME_BYTES_MAX);
    let id = parameter("/v1/tables/{table}/docs/{id}", "get", "id");
    assert_eq!(id["maxLength"], DOC_ID_BYTES_MAX);
    assert_eq!(parameter("/v1/kv/{key}", "get", "key")["maxLength"], KV_KEY_BYTES_MAX);
    assert_eq!(parameter("/v1/system/{key}", "get", "key")["maxLength"], DOC_ID_BYTES_MAX);
    let limit = parameter("/v1/tables/{table}/docs", "get", "limit");
    assert_eq!(limit["maximum"], cairn_storage::LIST_LIMIT_MAX);
    let insert = &document["paths"]["/v1/tables/{table}/docs"]["post"]["requestBody"];
    let schema = &insert["content"]["application/json"]["schema"]["$ref"];
    assert_eq!(schema, "#/components/schemas/NewDocs");
    let many = &document["components"]["schemas"]["NewDocs"]["oneOf"][1];
    assert_eq!(many["maxItems"], INSERT_DOCS_MAX);
    // Writes take the exactly-once headers; every operation lists its errors.
    assert_eq!(parameter("/v1/tables/{table}/docs", "post", "Cairn-Seq")["minimum"], 1);
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.contains_key("400") && responses.contains_key("503"),
                "{method} {path}"
            );
            let id = operation["operationId"].as_str().unwrap();
            assert!(operation_ids.insert(id.to_string()), "operationId {id} is used twice");
        }
    }
    node.stop().await;
}

/// What anyone who reaches the port could do before: add a member of their
/// own (and be sent the whole dataset), rewrite the control plane's record,
/// read and write everything. Now every route but the open three needs a
/// token, and its role must cover the route.
#[tokio::test]
async fn clients_need_a_token_whose_role_covers_the_route() {
    let node = TestNode::start().await;
    let none = [("authorization", "")];
    for path in ["/v1/health", "/metrics", "/v1/openapi.json"] {
        let (status, _) = node.with_headers(Method::GET, path, "", &none).await;
        assert_eq!(status, StatusCode::OK, "{path} stays open");
    }
    let member = r#"{"id": 9, "peer_address": "127.0.0.1:1"}"#;
    let strangers = [
        (Method::POST, "/v1/admin/members", member),
        (Method::PUT, "/v1/system/control", r#"{"x": 1}"#),
        (Method::GET, "/v1/tables", ""),
        (Method::PUT, "/v1/kv/a", "1"),
        (Method::GET, "/v1/no/such/route", ""),
    ];
    for (method, path, body) in &strangers {
        for header in ["", "Bearer nope", "Bearer 0123456789abcdef.00", "Basic YTpi"] {
            let mut request = reqwest::Client::new()
                .request(method.clone(), node.url(path))
                .header("content-type", "application/json")
                .body(body.to_string());
            if !header.is_empty() {
                request = request.header("authorization", header);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{method} {path} {header}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    let admin = node.client();
    let members = admin.members().await.unwrap().members;
    assert!(!members.contains_key(&9), "a stranger got in: {members:?}");

    let reader = admin.create_token("dashboards", cairn_client::views::Role::Read).await.unwrap();
    let writer = admin.create_token("the app", cairn_client::views::Role::Write).await.unwrap();
    assert_ne!(reader.token, writer.token);
    let (id, secret) = reader.token.split_once('.').unwrap();
    assert_eq!((id, secret.len()), (reader.view.id.as_str(), 64), "{}", reader.token);
    // The cluster keeps hashes only: neither listing nor the record holds a
    // secret.
    let listed = admin.list_tokens().await.unwrap();
    assert_eq!(listed.tokens.len(), 2);
    let (_, record) = node.raw(Method::GET, "/v1/system/tokens", "").await;
    let record = String::from_utf8(record).unwrap();
    for created in [&reader, &writer] {
        let (_, secret) = created.token.split_once('.').unwrap();
        assert!(!record.contains(secret), "{record}");
        assert!(!serde_json::to_string(&listed).unwrap().contains(secret));
    }

    let read = node.client_with(Some(&reader.token));
    let write = node.client_with(Some(&writer.token));
    admin.create_table("t").await.unwrap();
    assert_eq!(read.kv_get("a", Read::Linearizable).await.unwrap(), None);
    assert_eq!(read.list_tables().await.unwrap(), vec!["t".to_string()]);
    let forbidden = |result: Result<_, cairn_client::Error>| match result {
        Err(e) => assert_eq!((e.status(), e.code()), (Some(403), Some("forbidden")), "{e}"),
        Ok(_) => panic!("allowed"),
    };
    forbidden(read.kv_put("a", "1").await.map(drop));
    forbidden(read.open_session().await.map(drop));
    write.kv_put("a", "1").await.unwrap();
    write.insert("t", &json!({"id": "d"}), Conflict::Error).await.unwrap();
    forbidden(write.create_table("u").await.map(drop));
    forbidden(write.drop_table("t").await.map(drop));
    forbidden(write.members().await.map(drop));
    forbidden(write.add_member(9, "127.0.0.1:1", None).await.map(drop));
    forbidden(write.system_put("control", &json!({"x": 1}), None).await.map(drop));
    forbidden(write.create_token("more", cairn_client::views::Role::Admin).await.map(drop));
    forbidden(write.list_tokens().await.map(drop));
    assert_eq!(read.kv_get("a", Read::Linearizable).await.unwrap().as_deref(), Some(&b"1"[..]));

    let revoked = admin.revoke_token(&reader.view.id).await.unwrap();
    assert!(revoked.revoked);
    assert!(!admin.revoke_token(&reader.view.id).await.unwrap().revoked, "gone already");
    let after = read.kv_get("a", Read::Linearizable).await.unwrap_err();
    assert_eq!(after.code(), Some("unauthorized"), "{after}");
    write.kv_put("b", "2").await.unwrap();
    assert_eq!(admin.list_tokens().await.unwrap().tokens.len(), 1);
    // A bad request for a token names what is wrong and makes none.
    node.refused(
        Method::POST,
        "/v1/tokens",
        r#"{"name": "x", "role": "root"}"#,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    node.refused(
        Method::POST,
        "/v1/tokens",
        r#"{"name": "", "role": "read"}"#,
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    assert_eq!(admin.list_tokens().await.unwrap().tokens.len(), 1);
    node.stop().await;
}

/// A session's handle is good only with the credential that opened it.
#[tokio::test]
async fn a_session_works_only_with_the_credential_that_opened_it() {
    let node = TestNode::start().await;
    let admin = node.client();
    let alice = admin.create_token("alice", cairn_client::views::Role::Write).await.unwrap();
    let bob = admin.create_token("bob", cairn_client::views::Role::Write).await.unwrap();
    let alice = node.client_with(Some(&alice.token));
    let bob = node.client_with(Some(&bob.token));
    let session = alice.open_session().await.unwrap();
    let (number, tag) = session.split_once('.').unwrap();
    assert!(number.parse::<u64>().is_ok() && tag.len() == 32, "{session}");
    let stolen = bob.with_write_id(&session, 1).kv_put("k", "bob").await.unwrap_err();
    assert_eq!((stolen.status(), stolen.code()), (Some(403), Some("session_forbidden")));
    let admins = admin.with_write_id(&session, 1).kv_put("k", "admin").await.unwrap_err();
    assert_eq!(admins.code(), Some("session_forbidden"));
    alice.with_write_id(&session, 1).kv_put("k", "alice").await.unwrap();
    assert_eq!(bob.kv_get("k", Read::Linearizable).await.unwrap().as_deref(), Some(&b"alice"[..]));
    node.stop().await;
}

/// `--insecure` lets every client in as an admin, and says so.
#[tokio::test]
async fn an_insecure_node_needs_no_token() {
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), |c| c.insecure = true).await;
    let anyone = node.client_with(None);
    assert!(anyone.health().await.unwrap().insecure);
    anyone.create_table("t").await.unwrap();
    anyone.members().await.unwrap();
    let session = anyone.open_session().await.unwrap();
    anyone.with_write_id(&session, 1).kv_put("k", "v").await.unwrap();
    node.stop().await;
}

/// A node run by hand makes its admin token on first start, readable by
/// its owner only, and keeps it across restarts.
#[tokio::test]
async fn a_node_makes_its_admin_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || async {
        let config = NodeConfig::new(1, data.clone(), "127.0.0.1:0".parse().unwrap());
        let node = Node::start(config).await.unwrap();
        let addr = node.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(async move {
            let _ = stopped.await;
        }));
        (addr, stop, task)
    };
    let (addr, stop, task) = start().await;
    let path = data.join("admin.token");
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o077, 0);
    let client = Client::new(&addr.to_string()).unwrap();
    let refused = client.list_tables().await.unwrap_err();
    assert_eq!(refused.status(), Some(401));
    client.clone().with_token(Some(token.clone())).create_table("t").await.unwrap();
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    let (addr, stop, task) = start().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), token, "kept");
    let client = Client::new(&addr.to_string()).unwrap().with_token(Some(token));
    assert_eq!(client.list_tables().await.unwrap(), vec!["t".to_string()]);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// With certificates the API speaks HTTPS only, with the node's certificate
/// of the cluster's CA: a client that trusts the CA gets in (with its
/// token), plain HTTP and a client of another CA get nothing.
#[tokio::test]
async fn a_node_with_certificates_serves_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = cairn_tls::Ca::create(&certs).unwrap();
    ca.issue_node(&certs, 1, &["127.0.0.1".to_string()]).unwrap();
    let other = dir.path().join("other");
    cairn_tls::Ca::create(&other).unwrap();
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), |c| {
        c.certs_dir = Some(certs.clone());
    })
    .await;
    let addr = node.addr.to_string();
    let timeout = std::time::Duration::from_secs(10);
    let trusted = cairn_tls::api_client(&certs.join("ca.crt")).unwrap();
    let client = Client::with_tls(&addr, timeout, Some(trusted.clone()))
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()));
    assert!(client.health().await.unwrap().peer_tls);
    client.kv_put("k", "v").await.unwrap();
    let explicit = Client::with_tls(&format!("https://{addr}"), timeout, Some(trusted))
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()));
    assert_eq!(explicit.kv_get("k", Read::Linearizable).await.unwrap().as_deref(), Some(&b"v"[..]));

    let plain = node.client().health().await.unwrap_err();
    assert!(matches!(plain, cairn_client::Error::Transport { .. }), "{plain}");
    let strange = cairn_tls::api_client(&other.join("ca.crt")).unwrap();
    let strange = Client::with_tls(&addr, timeout, Some(strange)).unwrap();
    let refused = strange.health().await.unwrap_err();
    assert!(matches!(refused, cairn_client::Error::Transport { .. }), "{refused}");
    node.stop().await;
}

/// Plain HTTP only on loopback: a node that listens elsewhere needs
/// certificates, or to be told --insecure.
#[tokio::test]
async fn a_node_off_loopback_needs_certificates_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(1, dir.path().join("data"), "0.0.0.0:0".parse().unwrap());
    let error = Node::start(config.clone()).await.err().expect("refused");
    let message = error.to_string();
    assert!(message.contains("loopback") && message.contains("--certs-dir"), "{message}");
    config.insecure = true;
    let node = Node::start(config).await.expect("--insecure starts");
    assert!(node.local_addr().ip().is_unspecified());
    // Stopped, not dropped: its log closes before the process ends.
    node.serve(async {}).await.unwrap();
}

/// Made-up tokens cannot fill the log. A node waits for a linearizable read
/// before it refuses a token it does not know (it may have been made on
/// another node a moment ago), but such reads begin at most once per
/// `UNKNOWN_TOKEN_BARRIER_INTERVAL`, however many requests show one: a read
/// that goes through the log (a barrier, when no confirmation round can
/// serve it) is a log entry on every node. Before the limit, every such
/// request appended one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_tokens_cannot_fill_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let ca = cairn_tls::Ca::create(&certs).unwrap();
    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let peers: std::collections::BTreeMap<u64, SocketAddr> = [(1, free()), (2, free())].into();
    for id in peers.keys() {
        ca.issue_node(&certs, *id, &["127.0.0.1".to_string()]).unwrap();
    }
    let configure = |id: u64| {
        let (peers, certs) = (peers.clone(), certs.clone());
        move |c: &mut NodeConfig| {
            c.id = id;
            c.peer_listen = Some(peers[&id]);
            c.peers = peers;
            c.certs_dir = Some(certs);
        }
    };
    let (one, two) = tokio::join!(
        TestNode::start_with(tempfile::tempdir().unwrap(), configure(1)),
        TestNode::start_with(tempfile::tempdir().unwrap(), configure(2)),
    );
    let timeout = std::time::Duration::from_secs(30);
    let trusted = cairn_tls::api_client(&certs.join("ca.crt")).unwrap();
    let client = |token: &str| {
        Client::with_tls(&one.addr.to_string(), timeout, Some(trusted.clone()))
            .unwrap()
            .with_token(Some(token.to_string()))
    };
    let admin = client(ADMIN_TOKEN);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while admin.kv_put("ready", "yes").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "the pair never took a write");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let before = admin.health().await.unwrap().applied_index;
    let started = std::time::Instant::now();
    for i in 0..200u64 {
        let made_up = format!("{i:016x}.{}", "0".repeat(64));
        let refused = client(&made_up).list_tables().await.unwrap_err();
        assert_eq!(refused.status(), Some(401), "{refused}");
    }
    let elapsed = started.elapsed();
    let barriers = admin.health().await.unwrap().applied_index - before;
    // One barrier may begin per 100 ms interval the loop spans, the first at
    // once; the slack of 3 covers entries this count cannot tell from
    // barriers (the pair's own, an interval split by a slow scheduler). A
    // barrier per refused token would be 200.
    let most = u64::try_from(elapsed.as_millis() / 100).unwrap() + 1 + 3;
    assert!(barriers <= most, "{barriers} barriers in {elapsed:?} (at most {most})");
    // A token made through the other node is found all the same, once an
    // interval has passed since the last barrier.
    let other = Client::with_tls(&two.addr.to_string(), timeout, Some(trusted.clone()))
        .unwrap()
        .with_token(Some(ADMIN_TOKEN.into()));
    let made = other.create_token("fresh", cairn_client::views::Role::Read).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(client(&made.token).list_tables().await.is_ok(), "a fresh token works");
    one.stop().await;
    two.stop().await;
}
