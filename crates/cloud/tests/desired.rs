//! The desired state: from the watched file (edited the way editors save, by
//! rename) and from `PUT /v1/desired`; invalid or stale submissions change
//! nothing; a restarted cloud serves the same state.
//!
//! Run one: `cargo test -p cairn-cloud --test desired NAME -- --nocapture`.

mod common;

use std::path::Path;
use std::time::Duration;

use cairn_cloud::{DesiredSource, StatusEvent};
use common::{desired_text, eventually, Harness};
use reqwest::StatusCode;

/// Saves `text` to `path` the way editors do: a new file renamed over it.
fn save_by_rename(path: &Path, text: &str) {
    let temp = path.with_extension("swp");
    std::fs::write(&temp, text).expect("write the new version");
    std::fs::rename(&temp, path).expect("rename it over the old one");
}

/// Waits until the cloud serves desired state `id`; answers its body.
async fn served(h: &Harness, id: u64) -> serde_json::Value {
    eventually(&format!("desired state {id} to be served"), || async move {
        let (status, body) = h.get("/v1/desired").await;
        (status == StatusCode::OK && body["id"] == id).then_some(body)
    })
    .await
}

/// Edits of the watched file are served within a few polls; an invalid
/// edit is refused (and said so) while the previous state stays; a file
/// that vanishes keeps the last state; a restarted cloud serves it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_edits_are_served() {
    let mut h = Harness::new();
    let file = h.watch_desired_file();
    save_by_rename(&file, &desired_text(1));
    h.start().await;
    let first = served(&h, 1).await;
    assert_eq!(
        (first["source"].as_str(), first["text"].as_str()),
        (Some("file"), Some(&*desired_text(1)))
    );

    save_by_rename(&file, &desired_text(2));
    served(&h, 2).await;

    h.take_events();
    save_by_rename(&file, r#"{"id": 3, "replicas": "#);
    let refusal = eventually("the invalid edit to be refused", || {
        let found = h.take_events().into_iter().find_map(|event| match event {
            StatusEvent::DesiredRefused { source: DesiredSource::File, message, .. } => {
                Some(message)
            }
            _ => None,
        });
        async move { found }
    })
    .await;
    assert!(!refusal.is_empty());
    let (_, still) = h.get("/v1/desired").await;
    assert_eq!(still["id"], 2, "the previous state stays: {still}");

    std::fs::remove_file(&file).expect("remove the file");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let (_, kept) = h.get("/v1/desired").await;
    assert_eq!(kept["id"], 2, "a vanished file keeps the last state: {kept}");

    h.stop().await;
    h.start().await;
    let again = served(&h, 2).await;
    assert_eq!(again["text"].as_str(), Some(&*desired_text(2)));
    h.stop().await;
}

/// `PUT /v1/desired` takes a newer valid state, answers 409 to an id not
/// above the current one, 400 naming the field to an invalid one, and the
/// same text again is harmless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_checks_validity_and_ids() {
    let mut h = Harness::new();
    h.start().await;
    let (status, none) = h.get("/v1/desired").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{none}");
    assert_eq!(none["error"]["code"], "no_desired_state");

    let (status, put) = h.put_text("/v1/desired", desired_text(5)).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!((put["id"].as_u64(), put["source"].as_str()), (Some(5), Some("apply")));
    let (status, same) = h.put_text("/v1/desired", desired_text(5)).await;
    assert_eq!(status, StatusCode::OK, "{same}");

    let (status, stale) = h.put_text("/v1/desired", desired_text(4)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{stale}");
    assert_eq!(stale["error"]["code"], "stale_desired_state");
    let equal = desired_text(5).replace(r#""replicas":3"#, r#""replicas":5"#);
    let (status, _) = h.put_text("/v1/desired", equal).await;
    assert_eq!(status, StatusCode::CONFLICT, "the same id with other contents");

    let bad = r#"{"id": 9, "replicas": 4}"#.to_string();
    let (status, invalid) = h.put_text("/v1/desired", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{invalid}");
    assert_eq!(invalid["error"]["code"], "invalid_desired_state");
    assert_eq!(invalid["error"]["field"], "replicas", "{invalid}");

    // A backup to restore from is named by an absolute path.
    let restore = r#"{"id": 9, "restore_from": "b/b1"}"#.to_string();
    let (status, relative) = h.put_text("/v1/desired", restore).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{relative}");
    assert_eq!(relative["error"]["field"], "restore_from", "{relative}");
    let message = relative["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("absolute path"), "{relative}");
    // A sink is a directory under the cluster's backup root, never a path.
    let backups = r#"{"id": 9, "backups": [{"name": "b1", "sink": "/tmp/b"}]}"#.to_string();
    let (status, outside) = h.put_text("/v1/desired", backups).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{outside}");
    assert_eq!(outside["error"]["field"], "backups[0].sink", "{outside}");

    let (_, current) = h.get("/v1/desired").await;
    assert_eq!(current["id"], 5, "{current}");
    let (status, newer) = h.put_text("/v1/desired", desired_text(6)).await;
    assert_eq!((status, &newer["id"]), (StatusCode::OK, &serde_json::json!(6)));
    h.stop().await;
}
