//! The status log: the leader's reports are kept, and each transition is
//! recorded and published once, however often a report repeats.
//!
//! Run: `cargo test -p cairn-cloud --test status -- --nocapture`.

mod common;

use cairn_cloud::StatusEvent;
use cairn_control::status::{ReconcileState, Report};
use common::Harness;
use reqwest::StatusCode;
use serde_json::json;

fn report(state: ReconcileState, desired_id: u64, step: Option<&str>) -> Report {
    Report {
        state,
        desired_id,
        pending_id: None,
        step: step.map(str::to_string),
        message: String::new(),
        attempts: 0,
        leader_host: Some("host-1".into()),
        backups: Vec::new(),
    }
}

/// Reports repeated by every loop make one transition each; a new message
/// or attempt count alone makes none; the last report is always kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_are_logged_once() {
    let mut h = Harness::new();
    h.start().await;
    let (status, empty) = h.get("/v1/status").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty, json!({"last": null, "last_at_ms": null, "history": []}));
    h.take_events();

    let working =
        report(ReconcileState::WorkingTowardsDesiredState, 2, Some("create host-4 in zone-b"));
    let retrying = Report { attempts: 1, message: "timed out".into(), ..working.clone() };
    let done = report(ReconcileState::AtDesiredState, 2, None);
    let sent = [&working, &working, &retrying, &done, &done, &done];
    let mut answers = Vec::new();
    for report in sent {
        let (status, answer) = h.post("/v1/status", json!(report)).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answers.push(answer["transition"].as_bool().expect("transition"));
    }
    assert_eq!(answers, [true, false, false, true, false, false]);

    let (_, log) = h.get("/v1/status").await;
    let history = log["history"].as_array().expect("history");
    assert_eq!(history.len(), 2, "{log}");
    assert_eq!(history[0]["report"], json!(working));
    assert!(history[0]["at_ms"].as_u64() > Some(0));
    assert_eq!(log["last"], json!(done));

    let lines: Vec<String> = h
        .take_events()
        .into_iter()
        .filter(|event| matches!(event, StatusEvent::Transition(_)))
        .map(|event| event.to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "WORKING_TOWARDS_DESIRED_STATE desired 2: create host-4 in zone-b (leader host-1)",
            "AT_DESIRED_STATE desired 2 (leader host-1)",
        ]
    );

    let (status, bad) = h.post("/v1/status", json!({"state": "SLEEPING"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    h.stop().await;
}

/// `GET /v1/cluster` joins the hosts with the nodes and the last report:
/// with no node answering (the fake agents run none), every host is listed
/// without a node, and the report is the one posted; it needs the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_lists_hosts_and_the_last_report() {
    let mut h = Harness::new();
    h.start().await;
    let (status, empty) = h.get("/v1/cluster").await;
    assert_eq!(status, StatusCode::OK, "{empty}");
    assert_eq!(empty["reconciliation"], serde_json::Value::Null, "{empty}");
    assert_eq!(empty["hosts"], json!([]), "{empty}");
    assert_eq!(empty["nodes"], json!([]), "{empty}");

    for (name, zone) in [("host-1", "zone-a"), ("host-2", "zone-b")] {
        let (status, body) = h.create(name, zone).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let done = report(ReconcileState::AtDesiredState, 3, None);
    let (status, answer) = h.post("/v1/status", json!(done)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");

    let (status, view) = h.get("/v1/cluster").await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["reconciliation"], json!(done), "{view}");
    let hosts = view["hosts"].as_array().expect("hosts");
    let named: Vec<(&str, &str)> = hosts
        .iter()
        .map(|host| (host["name"].as_str().unwrap(), host["zone"].as_str().unwrap()))
        .collect();
    assert_eq!(named, [("host-1", "zone-a"), ("host-2", "zone-b")], "{view}");
    assert!(hosts.iter().all(|host| host["node_id"].is_null()), "{view}");
    assert_eq!(view["nodes"], json!([]), "{view}");
    assert_eq!(view["leader"], serde_json::Value::Null, "{view}");

    let refused = reqwest::Client::new().get(h.url("/v1/cluster")).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
}
