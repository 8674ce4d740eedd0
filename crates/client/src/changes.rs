//! A changefeed that survives its node: [`Changes`] reads a feed's
//! Server-Sent Events and, when the node goes away (killed, stopping,
//! removed, silent past its heartbeats), reconnects to another node of the
//! cluster and resumes from the last cursor it handed out. No event is lost
//! or repeated: cursors are the cluster's, the same on every node.
//!
//! A cursor that a node's history no longer reaches (410 `cursor_expired`)
//! is tried on the other nodes, which may keep more; when none has it, the
//! error is returned and the caller starts over (with `include_initial`).
//! Errors of the request itself (400, 401, 403, 404) are returned at once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Client, Error};

/// Silence after which a feed counts as dead: three missed heartbeats.
pub const SILENCE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the stream keeps trying nodes without reaching any before it
/// returns the last error.
pub const RECONNECT_GIVE_UP: Duration = Duration::from_secs(60);
/// Largest event the stream takes: a change holds at most two documents.
const EVENT_BYTES_MAX: usize = 40 * 1024 * 1024;

/// What a feed follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedTarget {
    /// A table's documents, or one of them.
    Table { table: String, id: Option<String> },
    /// The key-value space's keys under a prefix.
    Kv { prefix: String },
}

/// One event of a feed.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedEvent {
    /// A change (`type` `add`, `change`, `remove`, `drop`, `put`, `delete`),
    /// as the node sent it: `{"cursor", "index", "table", "id", "type",
    /// "old_val", "new_val"}` (or `key` for the key-value space).
    Change(Value),
    /// A document as it stood when the feed began (`include_initial`).
    Initial(Value),
    /// Every initial document was sent; changes after `index` follow.
    Ready { index: u64 },
}

/// A changefeed over a set of nodes; see the module's documentation.
pub struct Changes {
    nodes: Vec<Client>,
    current: usize,
    target: FeedTarget,
    include_initial: bool,
    /// The last cursor handed out (or the one to start after).
    cursor: Option<String>,
    response: Option<reqwest::Response>,
    buffer: Vec<u8>,
    ready: VecDeque<FeedEvent>,
    /// Whether the initial documents were all handed out, and whether any
    /// was.
    initial_done: bool,
    initial_handed: bool,
}

impl Changes {
    /// A feed of `target` over `nodes` (any order; the first is tried
    /// first), after `since` when given, else from now, or from the current
    /// documents with `include_initial`.
    pub fn new(
        nodes: Vec<Client>,
        target: FeedTarget,
        since: Option<String>,
        include_initial: bool,
    ) -> Result<Changes, Error> {
        if nodes.is_empty() {
            return Err(Error::BadRequest("a feed needs at least one node".into()));
        }
        if since.is_some() && include_initial {
            return Err(Error::BadRequest(
                "include_initial starts a feed over; it cannot go with a cursor".into(),
            ));
        }
        Ok(Changes {
            nodes,
            current: 0,
            target,
            include_initial,
            cursor: since,
            response: None,
            buffer: Vec::new(),
            ready: VecDeque::new(),
            initial_done: !include_initial,
            initial_handed: false,
        })
    }

    /// The cursor to resume after: the last event's.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// The node the feed reads from now.
    pub fn node(&self) -> &str {
        self.nodes[self.current].addr()
    }

    /// The next event, waiting for it as long as it takes; moves to another
    /// node when this one fails.
    pub async fn next(&mut self) -> Result<FeedEvent, Error> {
        let mut failing_since: Option<Instant> = None;
        let mut expired_on = 0;
        loop {
            if let Some(event) = self.ready.pop_front() {
                self.initial_handed |= matches!(event, FeedEvent::Initial(_));
                return Ok(event);
            }
            if self.response.is_none() {
                match self.connect().await {
                    Ok(response) => {
                        self.response = Some(response);
                        failing_since = None;
                        expired_on = 0;
                    }
                    Err(error) if is_final(&error) => return Err(error),
                    Err(error) => {
                        if error.code() == Some("cursor_expired") {
                            expired_on += 1;
                            if expired_on >= self.nodes.len() {
                                return Err(error);
                            }
                        }
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > RECONNECT_GIVE_UP {
                            return Err(error);
                        }
                        self.move_on().await;
                    }
                }
                continue;
            }
            if let Err(error) = self.read().await {
                // Half an initial state handed out is no state: the caller
                // starts over, whole.
                if is_final(&error) || (!self.initial_done && self.initial_handed) {
                    self.response = None;
                    return Err(error);
                }
                self.response = None;
                self.buffer.clear();
                self.move_on().await;
            }
        }
    }

    /// Opens the feed on the current node, after the cursor.
    async fn connect(&mut self) -> Result<reqwest::Response, Error> {
        let client = &self.nodes[self.current];
        let mut query: Vec<(&str, String)> = Vec::new();
        let segments: Vec<&str> = match &self.target {
            FeedTarget::Table { table, id } => {
                if let Some(id) = id {
                    query.push(("id", id.clone()));
                }
                vec!["v1", "tables", table, "changes"]
            }
            FeedTarget::Kv { prefix } => {
                query.push(("prefix", prefix.clone()));
                vec!["v1", "changes", "kv"]
            }
        };
        match &self.cursor {
            Some(cursor) => query.push(("since", cursor.clone())),
            None if self.include_initial => query.push(("include_initial", "true".into())),
            None => {}
        }
        // The stream lives as long as it is fed: heartbeats, not a
        // deadline, tell that it is alive.
        let request = client
            .request(reqwest::Method::GET, &segments)?
            .query(&query)
            .timeout(Duration::from_secs(365 * 24 * 3600));
        client.send(request).await
    }

    /// Reads from the open response until at least one event is ready.
    async fn read(&mut self) -> Result<(), Error> {
        let addr = self.node().to_string();
        let response = self.response.as_mut().expect("read only with a response");
        let chunk = match tokio::time::timeout(SILENCE_TIMEOUT, response.chunk()).await {
            Err(_) => {
                return Err(Error::BadResponse(format!(
                    "{addr} sent nothing for {} s, not even a heartbeat",
                    SILENCE_TIMEOUT.as_secs()
                )))
            }
            Ok(Err(source)) => return Err(Error::Transport { addr, source }),
            Ok(Ok(None)) => return Err(Error::BadResponse(format!("{addr} ended the feed"))),
            Ok(Ok(Some(chunk))) => chunk,
        };
        self.buffer.extend_from_slice(&chunk);
        if self.buffer.len() > EVENT_BYTES_MAX {
            return Err(Error::BadResponse(format!("{addr} sent an event over the limit")));
        }
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end.1).collect();
            self.take_event(&block[..end.0], &addr)?;
        }
        Ok(())
    }

    /// Handles one SSE block (the lines of one event).
    fn take_event(&mut self, block: &[u8], addr: &str) -> Result<(), Error> {
        let text = std::str::from_utf8(block)
            .map_err(|_| Error::BadResponse(format!("{addr} sent an event that is not UTF-8")))?;
        let (mut id, mut kind, mut data) = (None, None, Vec::new());
        for line in text.lines() {
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line, ""),
            };
            match field {
                "" => {} // A comment: a heartbeat.
                "id" => id = Some(value.to_string()),
                "event" => kind = Some(value.to_string()),
                "data" => data.push(value),
                _ => {}
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        let data: Value = serde_json::from_str(&data.join("\n")).map_err(|e| {
            Error::BadResponse(format!("{addr} sent an event that is not JSON: {e}"))
        })?;
        if kind.as_deref() == Some("error") {
            // The node ends the feed: resume elsewhere from the cursor.
            let error = &data["error"];
            return Err(Error::Api {
                status: 503,
                code: error["code"].as_str().unwrap_or("feed_ended").to_string(),
                message: error["message"].as_str().unwrap_or("the feed ended").to_string(),
                indeterminate: false,
            });
        }
        if let Some(id) = id {
            self.cursor = Some(id);
        }
        let event = if data["state"] == "ready" {
            self.initial_done = true;
            FeedEvent::Ready { index: data["index"].as_u64().unwrap_or(0) }
        } else if data["type"] == "initial" {
            FeedEvent::Initial(data)
        } else {
            FeedEvent::Change(data)
        };
        self.ready.push_back(event);
        Ok(())
    }

    /// Moves to the next node, after a pause once every node was tried.
    async fn move_on(&mut self) {
        if !self.initial_done {
            // Nothing of the initial state was handed out: ask again.
            self.cursor = None;
            self.ready.clear();
        }
        self.current = (self.current + 1) % self.nodes.len();
        if self.current == 0 {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Errors no other node would answer differently.
fn is_final(error: &Error) -> bool {
    matches!(error.status(), Some(400 | 401 | 403 | 404))
        || matches!(error, Error::BadAddress(_) | Error::BadRequest(_))
}

/// The end of the first event in `buffer`: where its lines end, and where
/// the next event begins.
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buffer.len() {
        if buffer[i] == b'\n' {
            if buffer.get(i + 1) == Some(&b'\n') {
                return Some((i, i + 2));
            }
            if buffer.get(i + 1) == Some(&b'\r') && buffer.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed() -> Changes {
        let client = Client::new("127.0.0.1:1").unwrap();
        Changes::new(vec![client], FeedTarget::Kv { prefix: String::new() }, None, false).unwrap()
    }

    #[test]
    fn events_are_parsed_and_heartbeats_skipped() {
        let mut changes = feed();
        changes.buffer =
            b":heartbeat\n\nid: 5.0\ndata: {\"cursor\":\"5.0\",\"type\":\"put\"}\n\nid: 6".to_vec();
        while let Some(end) = find_blank_line(&changes.buffer) {
            let block: Vec<u8> = changes.buffer.drain(..end.1).collect();
            changes.take_event(&block[..end.0], "n").unwrap();
        }
        assert_eq!(changes.cursor(), Some("5.0"));
        assert_eq!(changes.ready.len(), 1);
        assert!(matches!(&changes.ready[0], FeedEvent::Change(v) if v["type"] == "put"));
        assert_eq!(changes.buffer, b"id: 6", "a partial event waits for the rest");
        let error = changes
            .take_event(
                b"event: error\ndata: {\"error\":{\"code\":\"node_stopping\",\"message\":\"m\"}}",
                "n",
            )
            .unwrap_err();
        assert_eq!(error.code(), Some("node_stopping"));
        assert_eq!(changes.cursor(), Some("5.0"), "an error event moves no cursor");
    }

    #[test]
    fn a_cursor_and_include_initial_exclude_each_other() {
        let client = Client::new("127.0.0.1:1").unwrap();
        let target = FeedTarget::Table { table: "t".into(), id: None };
        assert!(Changes::new(vec![client], target, Some("3".into()), true).is_err());
        assert!(Changes::new(Vec::new(), FeedTarget::Kv { prefix: String::new() }, None, false)
            .is_err());
    }
}
