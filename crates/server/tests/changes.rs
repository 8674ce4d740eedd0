//! Changefeeds against a real node in this process: what a feed sends, how
//! it resumes, its initial state, its filters, its limits and its end.

mod common;

use std::time::Duration;

use cairn_client::{Changes, Conflict, FeedEvent, FeedTarget};
use common::{TestNode, ADMIN_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Long enough for anything a feed must do on a slow, shared machine.
const PATIENCE: Duration = Duration::from_secs(60);

async fn next(changes: &mut Changes) -> FeedEvent {
    tokio::time::timeout(PATIENCE, changes.next())
        .await
        .expect("an event in time")
        .expect("an event")
}

fn change(event: FeedEvent) -> Value {
    match event {
        FeedEvent::Change(data) => data,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn feed(node: &TestNode, target: FeedTarget, since: Option<String>, initial: bool) -> Changes {
    Changes::new(vec![node.client()], target, since, initial).unwrap()
}

fn table(name: &str) -> FeedTarget {
    FeedTarget::Table { table: name.into(), id: None }
}

/// Opens a feed by hand and reads its raw text until `until` holds of it.
async fn raw_feed(node: &TestNode, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = reqwest::Client::new().get(node.url(path)).bearer_auth(ADMIN_TOKEN);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

async fn read_until(response: &mut reqwest::Response, until: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    while !until(&text) {
        let chunk = tokio::time::timeout(PATIENCE, response.chunk()).await.expect("in time");
        match chunk.unwrap() {
            Some(chunk) => text.push_str(std::str::from_utf8(&chunk).unwrap()),
            None => break,
        }
    }
    text
}

/// Every kind of change comes in log order with its old and new values, a
/// table's drop included; a feed opened after one of them, at its cursor,
/// gets exactly what followed.
#[tokio::test]
async fn a_feed_sends_every_change_in_order_and_resumes_after_its_cursor() {
    let node = TestNode::start().await;
    let client = node.client();
    client.create_table("t").await.unwrap();
    let mut changes = feed(&node, table("t"), None, false);
    // The feed is open once its first read is answered: write after it.
    let opened = tokio::spawn(async move {
        let event = next(&mut changes).await;
        (changes, event)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    client.insert("t", &json!([{"id": "a", "n": 1}, {"id": "b"}]), Conflict::Error).await.unwrap();
    client.update_doc("t", "a", &json!({"n": 2})).await.unwrap();
    client.delete_doc("t", "b").await.unwrap();
    client.kv_put("elsewhere", "x").await.unwrap();
    client.drop_table("t").await.unwrap();
    let (mut changes, first) = opened.await.unwrap();
    let mut events = vec![change(first)];
    for _ in 0..4 {
        events.push(change(next(&mut changes).await));
    }
    let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["add", "add", "change", "remove", "drop"]);
    assert_eq!(events[0]["new_val"], json!({"id": "a", "n": 1}));
    assert_eq!(events[0]["old_val"], Value::Null);
    assert_eq!(events[0]["index"], events[1]["index"], "one insert, one entry");
    assert_ne!(events[0]["cursor"], events[1]["cursor"]);
    assert_eq!(events[2]["old_val"], json!({"id": "a", "n": 1}));
    assert_eq!(events[2]["new_val"], json!({"id": "a", "n": 2}));
    assert_eq!(events[3]["id"], "b");
    assert_eq!(events[3]["new_val"], Value::Null);
    assert_eq!(events[4]["table"], "t");
    assert!(events.windows(2).all(|w| w[0]["index"].as_u64() <= w[1]["index"].as_u64()));

    // Resumed after the second event: the third on, nothing before.
    let cursor = events[1]["cursor"].as_str().unwrap().to_string();
    let mut resumed = feed(&node, table("t"), Some(cursor), false);
    for expected in &events[2..] {
        assert_eq!(&change(next(&mut resumed).await), expected);
    }
    // And by the header a browser sends when it reconnects.
    let last = events[3]["cursor"].as_str().unwrap();
    let mut response = raw_feed(&node, "/v1/tables/t/changes", &[("last-event-id", last)]).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = read_until(&mut response, |t| t.contains("\"drop\"")).await;
    assert!(!text.contains("\"remove\""), "{text}");
    assert!(text.contains(&format!("id: {}", events[4]["cursor"].as_str().unwrap())), "{text}");
    // Stopped, not dropped: its store closes before the process exits.
    node.stop().await;
}

/// `include_initial` sends the documents as of one index, page after page
/// for a table larger than a page, then `ready` at that index, then the
/// changes after it: together, the table with nothing missed.
#[tokio::test]
async fn include_initial_sends_the_table_then_ready_then_changes() {
    let node = TestNode::start().await;
    let client = node.client();
    client.create_table("big").await.unwrap();
    let docs: Vec<Value> = (0..2500).map(|i| json!({"id": format!("d{i:05}"), "i": i})).collect();
    for chunk in docs.chunks(500) {
        client.insert("big", &json!(chunk), Conflict::Error).await.unwrap();
    }
    let mut changes = feed(&node, table("big"), None, true);
    let mut seen = Vec::new();
    let ready_at = loop {
        match next(&mut changes).await {
            FeedEvent::Initial(data) => seen.push(data["new_val"]["i"].as_u64().unwrap()),
            FeedEvent::Ready { index } => break index,
            other => panic!("before ready: {other:?}"),
        }
    };
    assert_eq!(seen, (0..2500).collect::<Vec<u64>>(), "every document once, in id order");
    assert_eq!(changes.cursor(), Some(ready_at.to_string().as_str()));
    let written = client.update_doc("big", "d00007", &json!({"x": 1})).await.unwrap();
    let event = change(next(&mut changes).await);
    assert_eq!(event["id"], "d00007");
    assert_eq!(event["index"], written["index"]);
    assert!(event["index"].as_u64().unwrap() > ready_at);

    // One document only.
    let one = FeedTarget::Table { table: "big".into(), id: Some("d00042".into()) };
    let mut changes = feed(&node, one, None, true);
    let FeedEvent::Initial(data) = next(&mut changes).await else { panic!("the document") };
    assert_eq!(data["id"], "d00042");
    assert!(matches!(next(&mut changes).await, FeedEvent::Ready { .. }));
    client.update_doc("big", "d00041", &json!({"x": 1})).await.unwrap();
    client.update_doc("big", "d00042", &json!({"x": 2})).await.unwrap();
    let event = change(next(&mut changes).await);
    assert_eq!(event["id"], "d00042", "another document's change is not followed");
    // Stopped, not dropped: its store closes before the process exits.
    node.stop().await;
}

/// The key-value feed follows a prefix, with values in base64.
#[tokio::test]
async fn the_key_value_feed_follows_a_prefix() {
    let node = TestNode::start().await;
    let client = node.client();
    let since = client.kv_put("a/0", "before").await.unwrap();
    client.kv_put("a/1", "one").await.unwrap();
    client.kv_put("b/1", "other").await.unwrap();
    client.kv_put("a/1", "uno").await.unwrap();
    client.kv_delete("a/1").await.unwrap();
    let target = FeedTarget::Kv { prefix: "a/".into() };
    let mut changes = feed(&node, target, Some(since.to_string()), false);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(change(next(&mut changes).await));
    }
    let summary: Vec<(&str, &str, &Value, &Value)> = got
        .iter()
        .map(|e| {
            (e["key"].as_str().unwrap(), e["type"].as_str().unwrap(), &e["old_val"], &e["new_val"])
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a/1", "put", &Value::Null, &json!("b25l")),
            ("a/1", "put", &json!("b25l"), &json!("dW5v")),
            ("a/1", "delete", &json!("dW5v"), &Value::Null),
        ]
    );
    // Stopped, not dropped: its store closes before the process exits.
    node.stop().await;
}

/// What cannot be served is refused before the stream begins, in the JSON
/// error shape: a cursor older than the history (410, with where it
/// begins), a made-up cursor (400), a table that does not exist (404), a
/// cursor with `include_initial` (400).
#[tokio::test]
async fn feeds_that_cannot_be_served_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start_with(dir, |c| {
        c.changes_window = cairn_storage::changes::Window { entries: 5, bytes: u64::MAX };
    })
    .await;
    let client = node.client();
    client.create_table("t").await.unwrap();
    for i in 0..40 {
        client.kv_put("k", format!("{i}")).await.unwrap();
    }
    let message = node
        .refused(
            Method::GET,
            "/v1/tables/t/changes?since=2",
            "",
            StatusCode::GONE,
            "cursor_expired",
        )
        .await;
    assert!(message.contains("include_initial"), "{message}");
    let made_up = "/v1/tables/t/changes?since=abc";
    let message =
        node.refused(Method::GET, made_up, "", StatusCode::BAD_REQUEST, "bad_request").await;
    assert!(message.contains("abc"), "{message}");
    node.refused(
        Method::GET,
        "/v1/tables/nope/changes",
        "",
        StatusCode::NOT_FOUND,
        "table_not_found",
    )
    .await;
    let both = "/v1/tables/t/changes?since=30&include_initial=true";
    node.refused(Method::GET, both, "", StatusCode::BAD_REQUEST, "bad_request").await;
    node.refused(
        Method::GET,
        "/v1/tables/t/changes?bogus=1",
        "",
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    // The client tells the caller, after trying every node it has.
    let mut expired =
        feed(&node, FeedTarget::Kv { prefix: String::new() }, Some("3".into()), false);
    let error = tokio::time::timeout(PATIENCE, expired.next()).await.unwrap().unwrap_err();
    assert_eq!(error.code(), Some("cursor_expired"));
    // Stopped, not dropped: its store closes before the process exits.
    node.stop().await;
}

/// A node serves at most `--feeds-max` feeds; one more gets 503, and a
/// feed that closes gives its place back.
#[tokio::test]
async fn open_feeds_are_capped_and_places_come_back() {
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), |c| c.feeds_max = 2).await;
    node.client().create_table("t").await.unwrap();
    let first = raw_feed(&node, "/v1/tables/t/changes", &[]).await;
    let second = raw_feed(&node, "/v1/tables/t/changes", &[]).await;
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let metrics = node.client().metrics().await.unwrap();
    assert!(metrics.contains("cairn_feeds_open 2"), "{metrics}");
    assert!(metrics.contains("cairn_changes_first_index 1"), "{metrics}");
    let message = node
        .refused(
            Method::GET,
            "/v1/tables/t/changes",
            "",
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_feeds",
        )
        .await;
    assert!(message.contains("another node"), "{message}");
    drop(first);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let third = raw_feed(&node, "/v1/tables/t/changes", &[]).await;
        if third.status() == StatusCode::OK {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the closed feed's place never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stopped, not dropped: its store closes before the process exits.
    node.stop().await;
}

/// A node that shuts down ends its feeds with an error event that says so,
/// and its shutdown does not wait on them.
#[tokio::test]
async fn a_stopping_node_ends_its_feeds_with_an_error_event() {
    let node = TestNode::start().await;
    node.client().create_table("t").await.unwrap();
    let mut response = raw_feed(&node, "/v1/tables/t/changes", &[]).await;
    assert_eq!(response.status(), StatusCode::OK);
    let reader = tokio::spawn(async move { read_until(&mut response, |_| false).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(PATIENCE, node.stop()).await.expect("the shutdown did not wait");
    let text = tokio::time::timeout(PATIENCE, reader).await.unwrap().unwrap();
    assert!(text.contains("event: error"), "{text}");
    assert!(text.contains("node_stopping"), "{text}");
}

/// A feed needs a token that may read, like any read.
#[tokio::test]
async fn feeds_need_a_token() {
    let node = TestNode::start().await;
    node.client().create_table("t").await.unwrap();
    let status =
        reqwest::Client::new().get(node.url("/v1/tables/t/changes")).send().await.unwrap().status();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Stopped, not dropped: its store closes before the process exits.
    node.stop().await;
}
