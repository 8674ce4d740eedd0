//! The change history: what it records, how it is read from a cursor, how
//! its window is trimmed, and that it survives restarts and travels with
//! snapshots. Each test says what it proves.

use cairn_storage::changes::{Change, Cursor, Expired, Filter, Limits, Page, Subject, Window};
use cairn_storage::snapshot::{SnapshotSink, SnapshotSource};
use cairn_storage::{Command, Conflict, Doc, Op, StateMachine, Store};
use cairn_util::Rng;
use tempfile::TempDir;

struct Node {
    dir: TempDir,
    sm: StateMachine,
}

impl Node {
    fn new() -> Node {
        Node::with_window(Window::default())
    }

    fn with_window(window: Window) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
        sm.set_changes_window(window);
        Node { dir, sm }
    }

    fn restart(self, window: Window) -> Node {
        let Node { dir, sm } = self;
        drop(sm);
        let mut sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
        sm.set_changes_window(window);
        Node { dir, sm }
    }

    fn store(&self) -> &Store {
        self.sm.store()
    }

    fn apply(&mut self, ops: Vec<Op>) {
        let first = self.sm.applied_index() + 1;
        let entries: Vec<(u64, Command)> =
            (first..).zip(ops.into_iter().map(|op| Command::new(None, op))).collect();
        self.sm.apply(&entries).unwrap();
    }

    fn run(&mut self, op: Op) {
        self.apply(vec![op]);
    }

    /// Every change after `after` the filter admits, read page by page
    /// with small pages, so that paging is part of what is checked.
    fn read_all(&self, after: Cursor, filter: &Filter) -> Result<Vec<Change>, Expired> {
        let limits = Limits { changes: 3, bytes: 64, scanned: 5 };
        let mut changes = Vec::new();
        let mut cursor = after;
        loop {
            let Page { changes: page, next, applied_index } =
                self.store().changes_after(cursor, filter, limits).unwrap()?;
            assert!(next >= cursor, "a page never goes back");
            changes.extend(page);
            if next == Cursor::end_of(applied_index) || next == cursor {
                return Ok(changes);
            }
            cursor = next;
        }
    }
}

fn doc(id: &str, body: &str) -> Doc {
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["id"] = id.into();
    Doc { id: id.into(), json: value.to_string() }
}

/// A value as the history holds it.
type Value = Option<Vec<u8>>;

fn json(bytes: &Value) -> Option<serde_json::Value> {
    bytes.as_ref().map(|bytes| serde_json::from_slice(bytes).unwrap())
}

fn table(name: &str) -> Filter {
    Filter::Table { table: name.into(), id: None }
}

/// Every kind of write records what it changed, with the old and new
/// values, at its entry's index and in order within the entry; refused
/// writes and writes that change nothing record nothing.
#[test]
fn every_change_is_recorded_with_its_old_and_new_value() {
    let mut node = Node::new();
    node.run(Op::CreateTable { table: "t".into() });
    node.run(Op::Insert {
        table: "t".into(),
        docs: vec![doc("a", r#"{"n":1}"#), doc("b", r#"{"n":2}"#)],
        conflict: Conflict::Error,
    });
    node.run(Op::Update { table: "t".into(), id: "a".into(), patch: r#"{"n":10}"#.into() });
    node.run(Op::Replace { table: "t".into(), doc: doc("b", r#"{"m":3}"#) });
    node.run(Op::Delete { table: "t".into(), id: "a".into() });
    node.run(Op::Delete { table: "t".into(), id: "missing".into() });
    node.run(Op::Insert {
        table: "t".into(),
        docs: vec![doc("b", r#"{"z":1}"#)],
        conflict: Conflict::Error,
    });
    node.run(Op::KvPut { key: "k/1".into(), value: b"one".to_vec() });
    node.run(Op::KvPut { key: "k/1".into(), value: b"uno".to_vec() });
    node.run(Op::KvDelete { key: "k/1".into() });
    node.run(Op::DropTable { table: "t".into() });
    let all = node.read_all(Cursor::end_of(0), &Filter::All).unwrap();
    let seen: Vec<(String, Option<serde_json::Value>, Option<serde_json::Value>)> = all
        .iter()
        .filter(|c| matches!(c.subject, Subject::Doc { .. }))
        .map(|c| (c.cursor.to_string(), json(&c.old), json(&c.new)))
        .collect();
    let v = |text: &str| Some(serde_json::from_str::<serde_json::Value>(text).unwrap());
    assert_eq!(
        seen,
        vec![
            ("2.0".into(), None, v(r#"{"id":"a","n":1}"#)),
            ("2.1".into(), None, v(r#"{"id":"b","n":2}"#)),
            ("3.0".into(), v(r#"{"id":"a","n":1}"#), v(r#"{"id":"a","n":10}"#)),
            ("4.0".into(), v(r#"{"id":"b","n":2}"#), v(r#"{"id":"b","m":3}"#)),
            ("5.0".into(), v(r#"{"id":"a","n":10}"#), None),
        ],
        "the delete of a missing id and the refused insert record nothing"
    );
    let kv: Vec<(String, Value, Value)> = node
        .read_all(Cursor::end_of(0), &Filter::Kv { prefix: "k/".into() })
        .unwrap()
        .into_iter()
        .map(|c| (c.cursor.to_string(), c.old, c.new))
        .collect();
    assert_eq!(
        kv,
        vec![
            ("8.0".into(), None, Some(b"one".to_vec())),
            ("9.0".into(), Some(b"one".to_vec()), Some(b"uno".to_vec())),
            ("10.0".into(), Some(b"uno".to_vec()), None),
        ]
    );
    let last = all.last().unwrap();
    assert_eq!(last.subject, Subject::TableDropped { table: "t".into() });
    assert_eq!(last.cursor, Cursor::at(11, 0));
    assert!(node
        .read_all(Cursor::end_of(0), &Filter::Kv { prefix: "x".into() })
        .unwrap()
        .is_empty());
    let only_b = Filter::Table { table: "t".into(), id: Some("b".into()) };
    let b: Vec<String> = node
        .read_all(Cursor::end_of(0), &only_b)
        .unwrap()
        .iter()
        .map(|c| c.cursor.to_string())
        .collect();
    assert_eq!(b, vec!["2.1", "4.0", "11.0"], "one document's changes, and its table's drop");
}

/// A model of the history (every change in order) against the store's, over
/// random writes: reading after any cursor, page by page, gives exactly the
/// model's suffix after it, whatever the filter. No gap, no duplicate, no
/// reorder; and the cursor's text round-trips.
#[test]
fn reading_after_any_cursor_gives_exactly_what_followed() {
    for seed in 0..8 {
        let mut rng = Rng::new(seed);
        let mut node = Node::new();
        node.apply(vec![
            Op::CreateTable { table: "a".into() },
            Op::CreateTable { table: "b".into() },
        ]);
        for _ in 0..40 {
            let batch = (0..rng.below(4) + 1)
                .map(|_| {
                    let table = if rng.below(2) == 0 { "a" } else { "b" };
                    let id = format!("d{}", rng.below(5));
                    match rng.below(5) {
                        0 => Op::Delete { table: table.into(), id },
                        1 => Op::KvPut { key: format!("k{}", rng.below(3)), value: vec![1; 3] },
                        2 => Op::Insert {
                            table: table.into(),
                            docs: (0..rng.below(3) + 1)
                                .map(|i| {
                                    doc(&format!("m{i}"), &format!(r#"{{"r":{}}}"#, rng.below(9)))
                                })
                                .collect(),
                            conflict: Conflict::Replace,
                        },
                        _ => Op::Replace { table: table.into(), doc: doc(&id, r#"{"x":1}"#) },
                    }
                })
                .collect();
            node.apply(batch);
        }
        let all = node.read_all(Cursor::end_of(0), &Filter::All).unwrap();
        assert!(all.windows(2).all(|w| w[0].cursor < w[1].cursor), "seed {seed}: in order");
        let filters = [Filter::All, table("a"), table("b"), Filter::Kv { prefix: "k".into() }];
        let mut cursors: Vec<Cursor> = all.iter().map(|c| c.cursor).collect();
        cursors.extend((0..=node.sm.applied_index()).map(Cursor::end_of));
        for cursor in cursors {
            assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
            for filter in &filters {
                let expected: Vec<&Change> = all
                    .iter()
                    .filter(|c| c.cursor > cursor)
                    .filter(|c| match (filter, &c.subject) {
                        (Filter::All, _) => true,
                        (Filter::Table { table, .. }, Subject::Doc { table: t, .. }) => table == t,
                        (Filter::Kv { .. }, Subject::Kv { .. }) => true,
                        _ => false,
                    })
                    .collect();
                let got = node.read_all(cursor, filter).unwrap();
                assert_eq!(got.iter().collect::<Vec<_>>(), expected, "seed {seed} after {cursor}");
            }
        }
    }
}

/// Cursors that were not made by a cluster are refused with a message.
#[test]
fn made_up_cursors_are_refused() {
    for text in
        ["", "x", "1.", ".1", "1.2.3", "-1", "1.4294967295", "99999999999999999999999", "1 "]
    {
        let error = Cursor::parse(text).unwrap_err();
        assert!(error.contains("not one this cluster made"), "{text:?}: {error}");
    }
    assert_eq!(Cursor::parse("12"), Ok(Cursor::end_of(12)));
    assert_eq!(Cursor::parse("12.0"), Ok(Cursor::at(12, 0)));
}

/// The window trims the oldest entries whole: what is kept reads as before,
/// a cursor before it is refused with where the history begins (never a
/// silent gap), and both the beginning and the size survive a restart.
#[test]
fn the_window_trims_whole_entries_and_says_where_history_begins() {
    let window = Window { entries: 20, bytes: u64::MAX };
    let mut node = Node::with_window(window);
    node.run(Op::CreateTable { table: "t".into() });
    for i in 0..100 {
        node.run(Op::Insert {
            table: "t".into(),
            docs: vec![doc(&format!("a{i}"), "{}"), doc(&format!("b{i}"), "{}")],
            conflict: Conflict::Error,
        });
    }
    let applied = node.sm.applied_index();
    let first = node.store().changes_first().unwrap();
    assert!(
        first > 1 && applied + 1 - first >= 20 && applied + 1 - first <= 20 + 20 / 8 + 1,
        "first {first}, applied {applied}"
    );
    assert_eq!(
        node.store()
            .changes_after(Cursor::at(first - 1, 0), &Filter::All, Limits::default())
            .unwrap(),
        Err(Expired { first })
    );
    // After every change of the index before the first: nothing is missing.
    let from_edge = node.read_all(Cursor::end_of(first - 1), &Filter::All).unwrap();
    assert_eq!(from_edge.len() as u64, 2 * (applied + 1 - first));
    assert_eq!(from_edge[0].cursor, Cursor::at(first, 0));
    let bytes = node.store().changes_bytes().unwrap();
    assert!(bytes > 0);

    let node = node.restart(window);
    assert_eq!(node.store().changes_first().unwrap(), first);
    assert_eq!(node.store().changes_bytes().unwrap(), bytes);
    assert_eq!(node.read_all(Cursor::end_of(first - 1), &Filter::All).unwrap(), from_edge);
}

/// The byte bound trims too, and the size the history reports is the size
/// of its records: after trimming, it matches a recount from scratch.
#[test]
fn the_byte_bound_trims_and_the_size_stays_exact() {
    let mut node = Node::with_window(Window { entries: 1_000_000, bytes: 4096 });
    node.run(Op::CreateTable { table: "t".into() });
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
    for i in 0..200 {
        node.run(Op::Replace { table: "t".into(), doc: doc(&format!("d{}", i % 7), &body) });
    }
    let bytes = node.store().changes_bytes().unwrap();
    assert!(bytes <= 4096 + 4096 / 8 + 1024, "{bytes} bytes kept");
    let first = node.store().changes_first().unwrap();
    assert!(first > 100, "history begins at {first}");
    let kept = node.read_all(Cursor::end_of(first - 1), &Filter::All).unwrap();
    // Each change is two records: 13-byte keys, the subject, 1 + each value.
    let recount: u64 = kept
        .iter()
        .map(|c| {
            let subject = postcard_len(&c.subject);
            let value = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, |v| 1 + v.len()) as u64;
            26 + subject + value(&c.old) + value(&c.new)
        })
        .sum();
    assert_eq!(recount, bytes);
}

fn postcard_len(subject: &Subject) -> u64 {
    match subject {
        // Variant tag, then length-prefixed strings (all short here).
        Subject::Doc { table, id } => 1 + 1 + table.len() as u64 + 1 + id.len() as u64,
        Subject::TableDropped { table } => 1 + 1 + table.len() as u64,
        Subject::Kv { key } => 1 + 1 + key.len() as u64,
    }
}

/// With a window of 0 entries nothing is kept, and every cursor before the
/// applied index is expired; a node that starts keeping history later
/// begins it where it is.
#[test]
fn a_node_may_keep_no_history() {
    let none = Window { entries: 0, bytes: 0 };
    let mut node = Node::with_window(none);
    node.run(Op::KvPut { key: "a".into(), value: vec![1] });
    node.run(Op::KvPut { key: "a".into(), value: vec![2] });
    assert_eq!(node.store().changes_bytes().unwrap(), 0);
    assert_eq!(node.store().changes_first().unwrap(), 3);
    assert!(node.read_all(Cursor::end_of(1), &Filter::All).is_err());
    assert_eq!(node.read_all(Cursor::end_of(2), &Filter::All), Ok(Vec::new()));
    let mut node = node.restart(Window::default());
    node.run(Op::KvPut { key: "a".into(), value: vec![3] });
    let changes = node.read_all(Cursor::end_of(2), &Filter::All).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].old, Some(vec![2]));
}

/// A snapshot carries the history and where it begins: the replica that
/// installs it answers every cursor exactly as its source does, and both go
/// on recording the same changes.
#[test]
fn the_history_travels_with_snapshots() {
    let window = Window { entries: 30, bytes: u64::MAX };
    let mut source = Node::with_window(window);
    source.run(Op::CreateTable { table: "t".into() });
    for i in 0..60 {
        source.run(Op::Replace { table: "t".into(), doc: doc(&format!("d{}", i % 5), "{}") });
    }
    let parent = tempfile::tempdir().unwrap();
    let mut export = SnapshotSource::create(source.store(), &parent.path().join("cp")).unwrap();
    let applied = export.applied_index();
    let mut replica = Node::with_window(window);
    // A state of its own, which the install replaces.
    for i in 0..10 {
        replica.run(Op::KvPut { key: format!("mine{i}"), value: vec![0; 50] });
    }
    let mut sink = SnapshotSink::begin(replica.store(), applied).unwrap();
    while let Some(chunk) = export.next_chunk(256).unwrap() {
        sink.push(chunk).unwrap();
    }
    sink.finish().unwrap();
    replica.sm.reload().unwrap();
    let first = source.store().changes_first().unwrap();
    assert!(first > 1);
    assert_eq!(replica.store().changes_first().unwrap(), first);
    assert_eq!(replica.store().changes_bytes().unwrap(), source.store().changes_bytes().unwrap());
    for index in first - 1..=applied {
        let cursor = Cursor::end_of(index);
        assert_eq!(replica.read_all(cursor, &Filter::All), source.read_all(cursor, &Filter::All));
    }
    let next = vec![Op::Delete { table: "t".into(), id: "d1".into() }];
    source.apply(next.clone());
    replica.apply(next);
    let after = Cursor::end_of(applied);
    assert_eq!(replica.read_all(after, &Filter::All), source.read_all(after, &Filter::All));
    assert_eq!(replica.read_all(after, &Filter::All).unwrap().len(), 1);
}
