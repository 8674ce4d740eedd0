//! Prometheus metrics: requests by route, method and status, request latency by
//! route, the node's applied and decided index, and its compaction and
//! catch-up counters, its open changefeeds and the size of its change
//! history. Routes are labelled by their pattern
//! (`/v1/tables/{table}`), never by the raw path, so label sets stay bounded.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    applied_index: Gauge,
    decided_index: Gauge,
    compactions: Gauge,
    entries_fetched: Gauge,
    snapshots_installed: Gauge,
    snapshots_served: Gauge,
    peer_messages_dropped: Gauge,
    peer_messages_too_large: Gauge,
    peer_connections_rejected: Gauge,
    feeds_open: Gauge,
    changes_first_index: Gauge,
    changes_bytes: Gauge,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 13 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 19))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("cairn");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let applied_index = Gauge::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", latency.clone());
        registry.register(
            "applied_index",
            "Last log index applied to the state machine",
            applied_index.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let decided_index =
            gauge(&mut registry, "decided_index", "Last log index known to be decided");
        let compactions =
            gauge(&mut registry, "log_compactions", "Times the log was compacted since start");
        let entries_fetched = gauge(
            &mut registry,
            "catch_up_entries_fetched",
            "Entries applied from peers' logs to fill compacted gaps, since start",
        );
        let snapshots_installed = gauge(
            &mut registry,
            "catch_up_snapshots_installed",
            "Snapshots installed from peers, since start",
        );
        let snapshots_served = gauge(
            &mut registry,
            "catch_up_snapshots_served",
            "Snapshot transfers started for peers, since start",
        );
        let peer_messages_dropped = gauge(
            &mut registry,
            "peer_messages_dropped",
            "Messages to peers given up (queue full, too large, peer gone, connection cut), since start",
        );
        let peer_messages_too_large = gauge(
            &mut registry,
            "peer_messages_too_large",
            "Messages to peers dropped for being over one peer message's limit, since start",
        );
        let peer_connections_rejected = gauge(
            &mut registry,
            "peer_connections_rejected",
            "Peer connections refused or closed: bad handshakes, broken frames, too many \
             handshakes, since start",
        );
        let feeds_open = gauge(&mut registry, "feeds_open", "Changefeeds open on this node");
        let changes_first_index = gauge(
            &mut registry,
            "changes_first_index",
            "The first log index whose changes this node's change history keeps",
        );
        let changes_bytes =
            gauge(&mut registry, "changes_bytes", "Bytes this node's change history takes");
        Metrics {
            registry,
            feeds_open,
            changes_first_index,
            changes_bytes,
            peer_messages_dropped,
            peer_messages_too_large,
            peer_connections_rejected,
            requests,
            latency,
            applied_index,
            decided_index,
            compactions,
            entries_fetched,
            snapshots_installed,
            snapshots_served,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Middleware: counts and times every request.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = match request.extensions().get::<MatchedPath>() {
        Some(path) => path.as_str().to_string(),
        None => "unmatched".to_string(),
    };
    // Any method a client invents would be a new label set: fold the rare ones.
    let method = match request.method().as_str() {
        known @ ("GET" | "PUT" | "POST" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => known,
        _ => "other",
    }
    .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    let metrics = &state.metrics;
    metrics.latency.get_or_create(&RouteLabels { route: route.clone() }).observe(elapsed);
    metrics.requests.get_or_create(&RequestLabels { route, method, status }).inc();
    response
}

pub async fn scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    let metrics = &state.metrics;
    let applied = i64::try_from(state.store.applied_index()).unwrap_or(i64::MAX);
    metrics.applied_index.set(applied);
    let set = |gauge: &Gauge, value: u64| gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    if let Ok(status) = state.log().status() {
        set(&metrics.decided_index, status.decided_index);
        set(&metrics.compactions, status.catch_up.compactions);
        set(&metrics.entries_fetched, status.catch_up.entries_fetched);
        set(&metrics.snapshots_installed, status.catch_up.snapshots_installed);
        set(&metrics.snapshots_served, status.catch_up.snapshots_served);
    }
    let open = state.config.feeds_cap().saturating_sub(state.feeds.available_permits());
    set(&metrics.feeds_open, open as u64);
    set(&metrics.changes_first_index, state.store.changes_first()?);
    set(&metrics.changes_bytes, state.store.changes_bytes()?);
    if let Some(stats) = state.log().transport_stats() {
        set(&metrics.peer_messages_dropped, stats.messages_dropped);
        set(&metrics.peer_messages_too_large, stats.messages_too_large);
        set(&metrics.peer_connections_rejected, stats.connections_rejected);
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &metrics.registry)
        .map_err(|e| ApiError::internal(format!("encoding metrics: {e}")))?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}
