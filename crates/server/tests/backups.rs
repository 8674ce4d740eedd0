//! Backups through the API (`/v1/admin/backups`) of a live node, restored
//! into a new data directory that a new node then serves. Each test says what
//! it proves.

mod common;

use cairn_client::{Conflict, Read};
use common::TestNode;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A backup taken under the API holds every write acknowledged before it and
/// none after; a node started on the restored directory serves exactly that
/// state and goes on taking writes. A second backup shares files with the
/// first, and deleting the first leaves the second whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_node_that_serves_it() {
    let backups = tempfile::tempdir().unwrap();
    let backup_dir = backups.path().join("sink");
    let sink = backup_dir.clone();
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), move |c| {
        c.backup_dir = Some(sink);
    })
    .await;
    let client = node.client();
    client.create_table("users").await.unwrap();
    let docs: Vec<_> = (0..300).map(|n| json!({"id": format!("u{n:03}"), "n": n})).collect();
    client.insert("users", &json!(docs), Conflict::Error).await.unwrap();
    client.kv_put("config/mode", "fast").await.unwrap();

    let first = client.create_backup("first", None).await.unwrap();
    assert!(first.applied_index >= 3, "{first:?}");
    assert!(first.bytes > 0 && first.new_bytes == first.bytes, "{first:?}");
    assert_eq!(first.sink, "default");
    assert_eq!(first.location, backup_dir.join("default/first").display().to_string());
    client.insert("users", &json!({"id": "late", "n": -1}), Conflict::Error).await.unwrap();
    let second = client.create_backup("second", Some("default")).await.unwrap();
    assert!(second.applied_index > first.applied_index);
    assert!(second.new_bytes < second.bytes, "the second shares files: {second:?}");
    // Another sink shares nothing with the first.
    let other = client.create_backup("first", Some("nightly")).await.unwrap();
    assert_eq!(other.new_bytes, other.bytes, "{other:?}");
    assert_eq!(other.location, backup_dir.join("nightly/first").display().to_string());
    let listed = |list: cairn_client::views::BackupList| -> Vec<String> {
        list.backups.into_iter().map(|b| format!("{}/{}", b.sink, b.name)).collect()
    };
    let all = listed(client.list_backups(None).await.unwrap());
    assert_eq!(all, ["default/first", "default/second", "nightly/first"]);
    assert_eq!(listed(client.list_backups(Some("nightly")).await.unwrap()), ["nightly/first"]);
    assert!(client.list_backups(Some("empty")).await.unwrap().backups.is_empty());

    // Restore the first into a new directory and serve it.
    let restored = tempfile::tempdir().unwrap();
    let sink = cairn_storage::backup::DirSink::existing(&backup_dir.join("default")).unwrap();
    let scratch = restored.path().join("scratch");
    let manifest =
        cairn_storage::backup::restore(&sink, "first", &scratch, &restored.path().join("data"))
            .unwrap();
    assert_eq!(manifest.fingerprint, first.fingerprint);
    let copy = TestNode::start_with(restored, |_| {}).await;
    let reader = copy.client();
    assert_eq!(reader.health().await.unwrap().applied_index, first.applied_index);
    let one = reader.get_doc("users", "u123", Read::Linearizable).await.unwrap();
    assert_eq!(one, Some(json!({"id": "u123", "n": 123})));
    assert_eq!(reader.get_doc("users", "late", Read::Linearizable).await.unwrap(), None);
    let mode = reader.kv_get("config/mode", Read::Linearizable).await.unwrap();
    assert_eq!(mode.as_deref(), Some(&b"fast"[..]));
    let index = reader.kv_put("after", "restore").await.unwrap();
    assert!(index > first.applied_index, "the log goes on after the backup's index");
    copy.stop().await;

    // Deleting the first keeps the second whole.
    assert!(client.delete_backup("first", None).await.unwrap().deleted);
    assert!(!client.delete_backup("first", None).await.unwrap().deleted);
    assert!(client.delete_backup("first", Some("nightly")).await.unwrap().deleted);
    let again = tempfile::tempdir().unwrap();
    cairn_storage::backup::verify(&sink, "second", &again.path().join("scratch")).unwrap();
    node.stop().await;
}

/// Bad names, a name taken twice and a node without a backup directory are
/// refused in the JSON error shape, naming what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_requests_are_checked() {
    let plain = TestNode::start().await;
    let message = plain
        .refused(
            Method::POST,
            "/v1/admin/backups",
            r#"{"name":"b1"}"#,
            StatusCode::CONFLICT,
            "backups_not_configured",
        )
        .await;
    assert!(message.contains("--backup-dir"), "{message}");
    plain.stop().await;

    let backups = tempfile::tempdir().unwrap();
    let sink = backups.path().to_path_buf();
    let node = TestNode::start_with(tempfile::tempdir().unwrap(), move |c| {
        c.backup_dir = Some(sink);
    })
    .await;
    for (body, needle) in [
        (r#"{"name":"../up"}"#, "a-z 0-9"),
        (r#"{"name":"files"}"#, "reserved"),
        (r#"{"name":""}"#, "a-z 0-9"),
        (r#"{"name":7}"#, "\"name\" is required"),
        (r#"{"name":"b1","sink":"/etc"}"#, "no paths"),
        (r#"{"name":"b1","sink":"../up"}"#, "no paths"),
        (r#"{"name":"b1","sink":3}"#, "\"sink\" must be a string"),
        (r#"{"name":"b1","where":"x"}"#, "unknown field"),
        (r#"[]"#, "object"),
    ] {
        let message = node
            .refused(
                Method::POST,
                "/v1/admin/backups",
                body,
                StatusCode::BAD_REQUEST,
                "bad_request",
            )
            .await;
        assert!(message.contains(needle), "{body}: {message}");
    }
    node.client().create_backup("b1", None).await.unwrap();
    let message = node
        .refused(
            Method::POST,
            "/v1/admin/backups",
            r#"{"name":"b1"}"#,
            StatusCode::CONFLICT,
            "backup_exists",
        )
        .await;
    assert!(message.contains("b1"), "{message}");
    node.refused(
        Method::DELETE,
        "/v1/admin/backups/UP",
        "",
        StatusCode::BAD_REQUEST,
        "bad_request",
    )
    .await;
    for path in ["/v1/admin/backups?sink=..", "/v1/admin/backups/b1?sink=a%2Fb"] {
        let method = if path.contains("b1") { Method::DELETE } else { Method::GET };
        let message = node.refused(method, path, "", StatusCode::BAD_REQUEST, "bad_request").await;
        assert!(message.contains("no paths"), "{path}: {message}");
    }
    node.stop().await;
}
