//! Changefeeds: a table's changes, or the key-value space's, streamed as
//! Server-Sent Events from the change history ([`cairn_storage::changes`]).
//!
//! A feed is a reader of the history that walks it at its consumer's pace:
//! it reads a page after its cursor, sends it, and when it has caught up
//! waits for the applied index to move. So it never misses a change, never
//! repeats one, and holds at most one page and a small buffer of events in
//! memory, however slow its consumer. Its cursor is the history's: the same
//! on every replica, so a client resumes on any node (`?since=` or
//! `Last-Event-ID`).
//!
//! A feed ends with an `error` event, and the client resumes elsewhere from
//! its cursor, when:
//! - its cursor leaves the history window (a consumer so slow the history
//!   was trimmed past it): `cursor_expired`, as the 410 a request for such a
//!   cursor gets;
//! - the node shuts down (`node_stopping`), or cannot serve for
//!   [`UNSERVING_GRACE`] on end (no quorum, removed, catching up from far
//!   behind): the code of the error a request would get.
//!
//! Heartbeats are SSE comments every [`HEARTBEAT`]. The open feeds of a node
//! are capped (`--feeds-max`): one more gets 503.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use cairn_storage::changes::{Change, Cursor, Expired, Filter, Limits, Subject};
use cairn_storage::command::{validate_doc_id, validate_kv_key};
use futures_util::stream::Stream;
use serde::Deserialize;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::openapi::Failures;
use super::tables::table_name;
use crate::error::ApiError;
use crate::extract::{ReadMode, TableParam};
use crate::state::AppState;

/// How often an idle feed sends a comment, so that clients and proxies see
/// it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a node may be unable to serve before its feeds end.
pub const UNSERVING_GRACE: Duration = Duration::from_secs(3);
/// How often a caught-up feed looks at the node's health.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// A feed at most this many entries behind the applied index reads the
/// history on the runtime's thread; further behind, on the blocking pool.
const INLINE_READ_ENTRIES: u64 = 64;
/// Events a feed holds for a consumer that has not taken them yet.
const BUFFER_EVENTS: usize = 16;
/// Initial states exported at once. Each holds a thread of the blocking
/// pool (and a RocksDB snapshot) for as long as its consumer takes to read
/// it: more wait their turn, so that slow consumers cannot take every
/// thread that feeds read the history with.
pub const EXPORTS_MAX: usize = 32;

/// A table feed's query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TableFeedParams {
    /// Resume after this cursor (an event's `id`), with no gap and no
    /// duplicate, on any node. Takes precedence over `Last-Event-ID`.
    since: Option<String>,
    /// First send the table's documents as of one index (events of type
    /// `initial`), then `{"state": "ready", "index": N}`, then every change
    /// after N.
    #[serde(default)]
    include_initial: bool,
    /// Follow one document only.
    id: Option<String>,
    /// Where the feed begins when no cursor is given: `linearizable` (the
    /// default) after every write acknowledged before the request; `local`
    /// at this node's state as it is.
    #[serde(default)]
    #[param(inline)]
    read: ReadMode,
}

/// A key-value feed's query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct KvFeedParams {
    /// Resume after this cursor, as for a table feed.
    since: Option<String>,
    /// Follow only the keys that start with this.
    #[serde(default)]
    prefix: String,
    /// Where the feed begins when no cursor is given, as for a table feed.
    #[serde(default)]
    #[param(inline)]
    read: ReadMode,
}

/// A table's changes, live, as Server-Sent Events.
///
/// Each event's `id` is its cursor; its `data` is
/// `{"cursor", "index", "table", "id", "type", "old_val", "new_val"}` with
/// `type` one of `add`, `change`, `remove`, `drop` (the table was dropped;
/// `id` and both values are null) or `initial`. A feed that must end sends
/// an `error` event, `{"error": {"code", "message"}}`, and the client resumes
/// from its last cursor, on this node or another.
#[utoipa::path(get, operation_id = "tables_changes", path = "/v1/tables/{table}/changes", tag = "changes",
    params(TableParam, TableFeedParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor (what browsers send when they reconnect).")),
    responses(
        (status = 200, description = "The feed: `text/event-stream`.", content_type = "text/event-stream", body = String),
        (status = 410, description = "The cursor is older than this node's change history (`cursor_expired`): start over with `include_initial`."),
        Failures))]
pub async fn table(
    State(state): State<AppState>,
    path: Result<Path<TableParam>, PathRejection>,
    params: Result<Query<TableFeedParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let table = table_name(path)?;
    let Query(params) = params?;
    if let Some(id) = &params.id {
        validate_doc_id(id).map_err(ApiError::bad_request)?;
    }
    let since = cursor(params.since.as_deref(), &headers)?;
    if since.is_some() && params.include_initial {
        return Err(ApiError::bad_request(
            "include_initial starts a feed over; it cannot go with a cursor to resume from",
        ));
    }
    let permit = admit(&state)?;
    let filter = Filter::Table { table: table.clone(), id: params.id.clone() };
    let start = match since {
        Some(since) => Start::After(since),
        None => {
            barrier(&state, params.read).await?;
            if params.include_initial {
                Start::Initial { table, id: params.id }
            } else {
                if !state.store.table_exists(&table)? {
                    return Err(cairn_storage::Error::TableNotFound { table }.into());
                }
                Start::After(Cursor::end_of(state.store.applied_index()))
            }
        }
    };
    open(state, filter, start, permit).await
}

/// The key-value space's changes, live, as Server-Sent Events.
///
/// As a table's feed; an event's `data` is
/// `{"cursor", "index", "key", "type", "old_val", "new_val"}`, with values
/// in base64 (they are bytes) and `type` one of `put`, `delete`.
#[utoipa::path(get, operation_id = "kv_changes", path = "/v1/changes/kv", tag = "changes",
    params(KvFeedParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor.")),
    responses(
        (status = 200, description = "The feed: `text/event-stream`.", content_type = "text/event-stream", body = String),
        (status = 410, description = "The cursor is older than this node's change history (`cursor_expired`)."),
        Failures))]
pub async fn kv(
    State(state): State<AppState>,
    params: Result<Query<KvFeedParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    if !params.prefix.is_empty() {
        validate_kv_key(&params.prefix)
            .map_err(|e| ApiError::bad_request(format!("prefix: {e}")))?;
    }
    let since = cursor(params.since.as_deref(), &headers)?;
    let permit = admit(&state)?;
    let start = match since {
        Some(since) => Start::After(since),
        None => {
            barrier(&state, params.read).await?;
            Start::After(Cursor::end_of(state.store.applied_index()))
        }
    };
    open(state, Filter::Kv { prefix: params.prefix }, start, permit).await
}

/// The cursor to resume after: the query's, else `Last-Event-ID`'s.
fn cursor(since: Option<&str>, headers: &HeaderMap) -> Result<Option<Cursor>, ApiError> {
    let text = match since {
        Some(since) => since,
        None => match headers.get("last-event-id") {
            Some(value) => value.to_str().map_err(|_| {
                ApiError::bad_request("the Last-Event-ID header is not a cursor this cluster made")
            })?,
            None => return Ok(None),
        },
    };
    Cursor::parse(text).map(Some).map_err(ApiError::bad_request)
}

/// A place among the node's open feeds, or 503.
fn admit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.feeds.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_feeds",
            format!(
                "this node serves {} feeds already: open this one on another node",
                state.config.feeds_cap()
            ),
        )
    })
}

async fn barrier(state: &AppState, read: ReadMode) -> Result<(), ApiError> {
    crate::extract::ReadParams { read }.barrier(state).await
}

/// Where a feed begins.
enum Start {
    /// After a cursor.
    After(Cursor),
    /// With the documents of a table (or one of them) as of one index.
    Initial { table: String, id: Option<String> },
}

/// Answers the feed: 410 at once for a cursor the history no longer
/// reaches, else the stream, fed by a task of its own.
async fn open(
    state: AppState,
    filter: Filter,
    start: Start,
    permit: OwnedSemaphorePermit,
) -> Result<Response, ApiError> {
    if let Start::After(after) = start {
        // Checked before the stream begins, so that a client can tell a
        // cursor refused (410) from a feed cut.
        if let Err(expired) = read_page(&state, after, &filter).await? {
            return Err(expired_error(after, expired));
        }
    }
    let (events, receiver) = mpsc::channel(BUFFER_EVENTS);
    let feed = Feed { state, filter, events, _permit: permit };
    tokio::spawn(feed.run(start));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (Ok::<Event, Infallible>(event), receiver))
    });
    Ok(sse(stream).into_response())
}

fn sse(
    stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> impl IntoResponse {
    Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
}

fn expired_error(after: Cursor, expired: Expired) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "cursor_expired",
        format!(
            "cursor {after} is older than this node's change history, which begins at index \
             {}: start over with include_initial=true (another node may keep more)",
            expired.first
        ),
    )
}

async fn read_page(
    state: &AppState,
    after: Cursor,
    filter: &Filter,
) -> Result<Result<cairn_storage::changes::Page, Expired>, ApiError> {
    if state.store.applied_index().saturating_sub(after.index) <= INLINE_READ_ENTRIES {
        // The tail of the history: a few records in RocksDB's memtable,
        // read in microseconds, cheaper here than a hop to another thread.
        return Ok(state.store.changes_after(after, filter, Limits::default())?);
    }
    let store = state.store.clone();
    let filter = filter.clone();
    let read =
        tokio::task::spawn_blocking(move || store.changes_after(after, &filter, Limits::default()));
    match read.await {
        Ok(page) => Ok(page?),
        Err(e) => Err(ApiError::internal(format!("reading the change history failed: {e}"))),
    }
}

/// One open feed: reads the history and hands events to its stream.
struct Feed {
    state: AppState,
    filter: Filter,
    events: mpsc::Sender<Event>,
    /// Its place among the node's open feeds, given back when it ends.
    _permit: OwnedSemaphorePermit,
}

/// Why a feed stopped sending.
enum End {
    /// The consumer went away: nothing more to say.
    Gone,
    /// The feed must end; the consumer is told why.
    Error(ApiError),
}

impl From<ApiError> for End {
    fn from(error: ApiError) -> End {
        End::Error(error)
    }
}

impl Feed {
    async fn run(self, start: Start) {
        let ended = match start {
            Start::After(after) => self.follow(after).await,
            Start::Initial { table, id } => match self.initial(table, id).await {
                Ok(after) => self.follow(after).await,
                Err(end) => Err(end),
            },
        };
        if let Err(End::Error(error)) = ended {
            let body = serde_json::json!({"error": {"code": error.code, "message": error.message}});
            let _ = self.events.send(Event::default().event("error").data(body.to_string())).await;
        }
    }

    /// Sends the documents as of one index, then the ready event; answers
    /// the cursor after that index.
    async fn initial(&self, table: String, id: Option<String>) -> Result<Cursor, End> {
        let turn = tokio::select! {
            permit = self.state.exports.clone().acquire_owned() => permit,
            () = self.events.closed() => return Err(End::Gone),
        };
        let Ok(turn) = turn else {
            return Err(ApiError::unavailable("the node is shutting down").into());
        };
        let store = self.state.store.clone();
        let events = self.events.clone();
        let export = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            store.export_docs(&table, id.as_deref(), |page| {
                page.docs.iter().all(|(id, json)| {
                    let data = initial_event(&table, id, json);
                    events.blocking_send(Event::default().data(data)).is_ok()
                })
            })
        });
        let index = match export.await {
            Ok(index) => index.map_err(ApiError::from)?,
            Err(e) => return Err(ApiError::internal(format!("the export failed: {e}")).into()),
        };
        if self.events.is_closed() {
            return Err(End::Gone);
        }
        let ready = Cursor::end_of(index);
        let data = format!(r#"{{"state":"ready","index":{index},"cursor":"{ready}"}}"#);
        self.send(Event::default().id(ready.to_string()).data(data)).await?;
        Ok(ready)
    }

    /// Sends every change after `after`, for as long as the feed lives.
    async fn follow(&self, mut after: Cursor) -> Result<(), End> {
        let mut applied = self.state.store.watch_applied();
        let mut unserving_since: Option<Instant> = None;
        loop {
            let page = read_page(&self.state, after, &self.filter)
                .await?
                .map_err(|expired| expired_error(after, expired))?;
            for change in &page.changes {
                let event = Event::default().id(change.cursor.to_string()).data(event_data(change));
                self.send(event).await?;
            }
            after = page.next;
            if after < Cursor::end_of(page.applied_index) {
                continue;
            }
            // Caught up: wait for more, watching the node meanwhile.
            loop {
                tokio::select! {
                    changed = applied.changed() => {
                        if changed.is_err() {
                            return Err(ApiError::unavailable("the node's store closed").into());
                        }
                        if *applied.borrow_and_update() > page.applied_index {
                            break;
                        }
                    }
                    () = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {
                        self.check_health(&mut unserving_since)?;
                    }
                    () = self.state.stopped() => {
                        return Err(ApiError {
                            indeterminate: false,
                            ..ApiError::new(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "node_stopping",
                                "the node is shutting down: resume from your cursor on another node",
                            )
                        }
                        .into());
                    }
                    () = self.events.closed() => return Err(End::Gone),
                }
            }
        }
    }

    /// Ends the feed once the node has been unable to serve for
    /// [`UNSERVING_GRACE`].
    fn check_health(&self, unserving_since: &mut Option<Instant>) -> Result<(), End> {
        let not_serving = match self.state.log().status() {
            Ok(status) => status.not_serving,
            Err(error) => Some(error),
        };
        let Some(error) = not_serving else {
            *unserving_since = None;
            return Ok(());
        };
        let since = *unserving_since.get_or_insert_with(Instant::now);
        if since.elapsed() < UNSERVING_GRACE {
            return Ok(());
        }
        let error = ApiError::from(error);
        Err(ApiError {
            message: format!(
                "{}: this node cannot serve the feed; resume from your cursor on another node",
                error.message
            ),
            ..error
        }
        .into())
    }

    async fn send(&self, event: Event) -> Result<(), End> {
        self.events.send(event).await.map_err(|_| End::Gone)
    }
}

/// An `initial` event's data: a document as it stood.
fn initial_event(table: &str, id: &str, json: &str) -> String {
    format!(
        r#"{{"table":{},"id":{},"type":"initial","old_val":null,"new_val":{json}}}"#,
        quoted(table),
        quoted(id)
    )
}

/// A change's event data, written out by hand so that documents, stored as
/// JSON text, go out without being parsed again.
fn event_data(change: &Change) -> String {
    let cursor = change.cursor;
    let doc = |value: &Option<Vec<u8>>| match value {
        // Stored documents are JSON objects the state machine checked.
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        None => "null".to_string(),
    };
    let bytes = |value: &Option<Vec<u8>>| match value {
        Some(bytes) => quoted(&base64::engine::general_purpose::STANDARD.encode(bytes)),
        None => "null".to_string(),
    };
    let kind = match (&change.old, &change.new) {
        (None, Some(_)) => "add",
        (Some(_), Some(_)) => "change",
        _ => "remove",
    };
    match &change.subject {
        Subject::Doc { table, id } => format!(
            r#"{{"cursor":"{cursor}","index":{},"table":{},"id":{},"type":"{kind}","old_val":{},"new_val":{}}}"#,
            cursor.index,
            quoted(table),
            quoted(id),
            doc(&change.old),
            doc(&change.new)
        ),
        Subject::TableDropped { table } => format!(
            r#"{{"cursor":"{cursor}","index":{},"table":{},"id":null,"type":"drop","old_val":null,"new_val":null}}"#,
            cursor.index,
            quoted(table)
        ),
        Subject::Kv { key } => format!(
            r#"{{"cursor":"{cursor}","index":{},"key":{},"type":"{}","old_val":{},"new_val":{}}}"#,
            cursor.index,
            quoted(key),
            if change.new.is_some() { "put" } else { "delete" },
            bytes(&change.old),
            bytes(&change.new)
        ),
    }
}

fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(subject: Subject, old: Option<&str>, new: Option<&str>) -> Change {
        Change {
            cursor: Cursor::at(7, 2),
            subject,
            old: old.map(|s| s.as_bytes().to_vec()),
            new: new.map(|s| s.as_bytes().to_vec()),
        }
    }

    #[test]
    fn events_are_json_with_the_documents_inline() {
        let doc = |id: &str| Subject::Doc { table: "t".into(), id: id.into() };
        let parse = |c: &Change| serde_json::from_str::<serde_json::Value>(&event_data(c)).unwrap();
        let added = parse(&change(doc("a\"b"), None, Some(r#"{"id":"a\"b","n":1}"#)));
        assert_eq!(added["cursor"], "7.2");
        assert_eq!(added["index"], 7);
        assert_eq!(added["id"], "a\"b");
        assert_eq!(added["type"], "add");
        assert_eq!(added["old_val"], serde_json::Value::Null);
        assert_eq!(added["new_val"]["n"], 1);
        let changed = parse(&change(doc("a"), Some(r#"{"id":"a"}"#), Some(r#"{"id":"a","x":2}"#)));
        assert_eq!(changed["type"], "change");
        assert_eq!(changed["old_val"]["id"], "a");
        let removed = parse(&change(doc("a"), Some(r#"{"id":"a"}"#), None));
        assert_eq!(removed["type"], "remove");
        assert_eq!(removed["new_val"], serde_json::Value::Null);
        let dropped = parse(&change(Subject::TableDropped { table: "t".into() }, None, None));
        assert_eq!(dropped["type"], "drop");
        assert_eq!(dropped["id"], serde_json::Value::Null);
        let put = parse(&change(Subject::Kv { key: "k/1".into() }, None, Some("v")));
        assert_eq!(put["key"], "k/1");
        assert_eq!(put["type"], "put");
        assert_eq!(put["new_val"], "dg==");
        let initial: serde_json::Value =
            serde_json::from_str(&initial_event("t", "x", r#"{"id":"x","n":[1]}"#)).unwrap();
        assert_eq!(initial["type"], "initial");
        assert_eq!(initial["id"], "x");
        assert_eq!(initial["new_val"]["n"][0], 1);
    }
}
