//! Scenarios for the state machine: each test says what it proves.

use cairn_storage::{
    Applied, ApplyError, Command, CommandId, Conflict, Doc, Op, Outcome, Page, StateMachine, Store,
};
use tempfile::TempDir;

struct Node {
    dir: TempDir,
    sm: StateMachine,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
        Node { dir, sm }
    }

    /// Closes the database and opens it again, as after a restart.
    fn restart(self) -> Node {
        let Node { dir, sm } = self;
        drop(sm);
        let sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
        Node { dir, sm }
    }

    fn apply(&mut self, commands: Vec<Command>) -> Vec<Applied> {
        let first = self.sm.applied_index() + 1;
        let entries: Vec<(u64, Command)> = (first..).zip(commands).collect();
        self.sm.apply(&entries).unwrap()
    }

    fn run(&mut self, op: Op) -> Outcome {
        self.apply(vec![Command::new(None, op)]).remove(0).outcome
    }

    fn open_session(&mut self) -> u64 {
        match self.run(Op::OpenSession { token: 0 }) {
            Outcome::SessionOpened { session } => session,
            other => panic!("expected a session, got {other:?}"),
        }
    }
}

fn doc(id: &str, body: &str) -> Doc {
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["id"] = id.into();
    Doc { id: id.into(), json: value.to_string() }
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

fn create(table: &str) -> Op {
    Op::CreateTable { table: table.into() }
}

fn insert(table: &str, docs: Vec<Doc>, conflict: Conflict) -> Op {
    Op::Insert { table: table.into(), docs, conflict }
}

fn stored(node: &Node, table: &str, id: &str) -> Option<serde_json::Value> {
    let json = node.sm.store().get_doc(table, id).unwrap()?;
    Some(serde_json::from_str(&json).unwrap())
}

#[test]
fn tables_are_created_idempotently_and_dropped_with_their_documents() {
    let mut node = Node::new();
    assert_eq!(node.run(create("users")), Outcome::TableCreated { created: true });
    assert_eq!(node.run(create("users")), Outcome::TableCreated { created: false });
    node.run(insert("users", vec![doc("a", "{}")], Conflict::Error));
    assert_eq!(node.sm.store().list_tables().unwrap(), vec!["users".to_string()]);
    assert_eq!(node.run(Op::DropTable { table: "users".into() }), Outcome::TableDropped);
    assert!(node.sm.store().list_tables().unwrap().is_empty());
    // A new table of the same name starts empty.
    node.run(create("users"));
    assert_eq!(stored(&node, "users", "a"), None);
    let missing = node.run(Op::DropTable { table: "nope".into() });
    assert_eq!(missing, Outcome::Failed(ApplyError::TableNotFound { table: "nope".into() }));
}

#[test]
fn an_insert_that_clashes_writes_nothing_unless_asked_to_replace_or_update() {
    let mut node = Node::new();
    node.run(create("t"));
    node.run(insert("t", vec![doc("a", r#"{"n":1,"keep":true}"#)], Conflict::Error));
    let clash =
        node.run(insert("t", vec![doc("b", "{}"), doc("a", r#"{"n":2}"#)], Conflict::Error));
    assert_eq!(
        clash,
        Outcome::Failed(ApplyError::Conflict { table: "t".into(), ids: vec!["a".into()] })
    );
    assert_eq!(stored(&node, "t", "b"), None, "a refused insert writes none of its documents");

    let replaced = node.run(insert("t", vec![doc("a", r#"{"n":2}"#)], Conflict::Replace));
    assert_eq!(
        replaced,
        Outcome::Inserted { inserted: 0, replaced: 1, updated: 0, ids: ids(&["a"]) }
    );
    assert_eq!(stored(&node, "t", "a").unwrap(), serde_json::json!({"id": "a", "n": 2}));

    let updated =
        node.run(insert("t", vec![doc("a", r#"{"m":3}"#), doc("c", "{}")], Conflict::Update));
    assert_eq!(
        updated,
        Outcome::Inserted { inserted: 1, replaced: 0, updated: 1, ids: ids(&["a", "c"]) }
    );
    assert_eq!(stored(&node, "t", "a").unwrap(), serde_json::json!({"id": "a", "n": 2, "m": 3}));
}

#[test]
fn merge_patch_follows_rfc_7396_and_cannot_touch_the_id() {
    let mut node = Node::new();
    node.run(create("t"));
    node.run(insert("t", vec![doc("a", r#"{"a":{"b":1,"c":2},"d":[1,2]}"#)], Conflict::Error));
    let patch = r#"{"a":{"b":null,"e":3},"d":[9]}"#.to_string();
    let outcome = node.run(Op::Update { table: "t".into(), id: "a".into(), patch });
    let expected = serde_json::json!({"id":"a","a":{"c":2,"e":3},"d":[9]});
    match outcome {
        Outcome::Updated { json } => {
            assert_eq!(serde_json::from_str::<serde_json::Value>(&json).unwrap(), expected)
        }
        other => panic!("unexpected {other:?}"),
    }
    for bad in [r#"{"id":null}"#, r#"{"id":"b"}"#, "[1]", "7"] {
        let outcome = node.run(Op::Update { table: "t".into(), id: "a".into(), patch: bad.into() });
        assert!(
            matches!(outcome, Outcome::Failed(ApplyError::Invalid { .. })),
            "{bad}: {outcome:?}"
        );
    }
    assert_eq!(stored(&node, "t", "a").unwrap(), expected, "refused patches change nothing");
    let missing = node.run(Op::Update { table: "t".into(), id: "zz".into(), patch: "{}".into() });
    assert_eq!(
        missing,
        Outcome::Failed(ApplyError::DocNotFound { table: "t".into(), id: "zz".into() })
    );
}

#[test]
fn malformed_commands_from_the_log_are_refused_the_same_way_everywhere() {
    let mut node = Node::new();
    node.run(create("t"));
    let bad_docs = [
        Doc { id: "a".into(), json: "{not json".into() },
        Doc { id: "a".into(), json: "[1,2]".into() },
        Doc { id: "a".into(), json: r#"{"id":"b"}"#.into() },
        Doc { id: "".into(), json: r#"{"id":""}"#.into() },
    ];
    for bad in bad_docs {
        let outcome = node.run(insert("t", vec![bad.clone()], Conflict::Error));
        assert!(matches!(outcome, Outcome::Failed(ApplyError::Invalid { .. })), "{bad:?}");
    }
    let twice = node.run(insert("t", vec![doc("a", "{}"), doc("a", "{}")], Conflict::Replace));
    assert!(matches!(twice, Outcome::Failed(ApplyError::Invalid { .. })));
    let empty = node.run(insert("t", vec![], Conflict::Error));
    assert!(matches!(empty, Outcome::Failed(ApplyError::Invalid { .. })));
    let bad_table = node.run(create("_system"));
    assert!(matches!(bad_table, Outcome::Failed(ApplyError::Invalid { .. })));
    assert_eq!(node.sm.store().list_docs("t", None, 10).unwrap().docs.len(), 0);
}

#[test]
fn a_retried_command_is_answered_from_memory_and_applied_once() {
    let mut node = Node::new();
    node.run(create("t"));
    let session = node.open_session();
    let id = CommandId { session, seq: 1 };
    let add = Command::new(Some(id), insert("t", vec![doc("a", "{}")], Conflict::Error));
    let first = node.apply(vec![add.clone()]).remove(0);
    assert_eq!(
        first.outcome,
        Outcome::Inserted { inserted: 1, replaced: 0, updated: 0, ids: ids(&["a"]) }
    );

    // The same command again, later, and twice within one batch: each answer is
    // the first one, with the first index; a second application would conflict.
    let later = node.apply(vec![Command::new(None, Op::Noop), add.clone(), add.clone()]);
    assert_eq!(later[1], first);
    assert_eq!(later[2], first);

    // Still remembered after a restart.
    let mut node = node.restart();
    assert_eq!(node.apply(vec![add.clone()]).remove(0), first);

    // The next command of the session applies; then the old one is stale.
    let next = Command::new(
        Some(CommandId { session, seq: 2 }),
        Op::Delete { table: "t".into(), id: "a".into() },
    );
    assert_eq!(node.apply(vec![next]).remove(0).outcome, Outcome::Deleted { existed: true });
    let stale = node.apply(vec![add]).remove(0).outcome;
    assert_eq!(stale, Outcome::Failed(ApplyError::StaleSequence { session, seq: 1, last: 2 }));
    assert_eq!(stored(&node, "t", "a"), None);
}

#[test]
fn a_sequence_number_reused_for_another_command_is_refused() {
    let mut node = Node::new();
    let session = node.open_session();
    let id = Some(CommandId { session, seq: 1 });
    node.apply(vec![Command::new(id, Op::KvPut { key: "a".into(), value: b"1".to_vec() })]);
    let other = Command::new(id, Op::KvPut { key: "b".into(), value: b"2".to_vec() });
    let refused = node.apply(vec![other]).remove(0).outcome;
    assert_eq!(refused, Outcome::Failed(ApplyError::SequenceReused { session, seq: 1 }));
    assert_eq!(node.sm.store().kv_get("b").unwrap(), None, "never acknowledged as applied");
}

#[test]
fn a_retry_within_one_batch_is_deduplicated() {
    let mut node = Node::new();
    let session = node.open_session();
    let id = Some(CommandId { session, seq: 5 });
    let put = Command::new(id, Op::KvPut { key: "k".into(), value: b"v".to_vec() });
    let out = node.apply(vec![put.clone(), put]);
    assert_eq!(out[0].index, out[1].index, "the repeat reports the first index");
}

/// A node whose state jumped past entries (a snapshot) recalls what applying
/// a command again would answer, without executing it: the stored outcome for
/// the session's last command, a refusal for a reused or older sequence
/// number, and nothing for a command the state has not settled.
#[test]
fn the_state_recalls_the_outcome_of_commands_it_settled_and_only_those() {
    let mut node = Node::new();
    let session = node.open_session();
    let put = |seq, key: &str| {
        let op = Op::KvPut { key: key.into(), value: b"v".to_vec() };
        Command::new(Some(CommandId { session, seq }), op)
    };
    node.apply(vec![put(1, "a")]);
    let second = node.apply(vec![put(2, "b")]).remove(0);
    let before = node.sm.applied_index();

    assert_eq!(node.sm.recall(&put(2, "b")).unwrap(), Some(second.clone()));
    let reused = node.sm.recall(&put(2, "c")).unwrap().unwrap();
    assert_eq!(reused.outcome, Outcome::Failed(ApplyError::SequenceReused { session, seq: 2 }));
    let stale = node.sm.recall(&put(1, "a")).unwrap().unwrap();
    assert_eq!(
        stale.outcome,
        Outcome::Failed(ApplyError::StaleSequence { session, seq: 1, last: 2 })
    );
    assert_eq!(node.sm.recall(&put(3, "c")).unwrap(), None, "not applied yet");
    let unknown = Command::new(Some(CommandId { session: 999, seq: 1 }), Op::Noop);
    assert_eq!(node.sm.recall(&unknown).unwrap(), None, "a session opened later, maybe");
    assert_eq!(node.sm.recall(&Command::new(None, Op::Noop)).unwrap(), None);
    assert_eq!(node.sm.applied_index(), before, "recalling changes nothing");
    assert_eq!(node.sm.store().kv_get("c").unwrap(), None);
    // What recall answers is what applying the command again answers.
    assert_eq!(node.apply(vec![put(2, "b")]).remove(0), second);
}

#[test]
fn commands_of_unknown_sessions_are_refused() {
    let mut node = Node::new();
    let id = Some(CommandId { session: 999, seq: 1 });
    let out = node.apply(vec![Command::new(id, Op::KvPut { key: "k".into(), value: vec![] })]);
    assert_eq!(out[0].outcome, Outcome::Failed(ApplyError::SessionUnknown { session: 999 }));
    assert_eq!(node.sm.store().kv_get("k").unwrap(), None);
}

#[test]
fn the_applied_index_and_every_effect_survive_a_restart() {
    let mut node = Node::new();
    node.run(create("t"));
    for i in 0..50 {
        node.run(Op::KvPut { key: format!("k{i}"), value: vec![i as u8] });
    }
    let applied = node.sm.applied_index();
    assert_eq!(applied, 51);
    let node = node.restart();
    assert_eq!(node.sm.applied_index(), applied);
    assert_eq!(node.sm.store().applied_index(), applied);
    assert_eq!(node.sm.store().kv_get("k49").unwrap(), Some(vec![49]));
}

#[test]
#[should_panic(expected = "without gaps")]
fn entries_must_follow_the_applied_index() {
    let mut node = Node::new();
    node.sm.apply(&[(2, Command::new(None, Op::Noop))]).unwrap();
}

#[test]
fn listing_pages_through_a_table_in_id_order_and_stays_inside_it() {
    let mut node = Node::new();
    node.run(create("a"));
    node.run(create("b"));
    let ids: Vec<String> = (0..25).map(|i| format!("d{i:02}")).collect();
    let docs = ids.iter().map(|id| doc(id, "{}")).collect();
    node.run(insert("a", docs, Conflict::Error));
    node.run(insert("b", vec![doc("zzz", "{}")], Conflict::Error));
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let Page { docs, next } = node.sm.store().list_docs("a", after.as_deref(), 10).unwrap();
        for json in docs {
            let value: serde_json::Value = serde_json::from_str(&json).unwrap();
            seen.push(value["id"].as_str().unwrap().to_string());
        }
        match next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let tail = node.sm.store().list_docs("a", Some("d23"), 10).unwrap();
    assert_eq!((tail.docs.len(), tail.next), (1, None));
    assert!(node.sm.store().list_docs("missing", None, 10).is_err());
}

#[test]
fn a_sequence_number_far_past_the_last_is_refused_and_the_session_stays_usable() {
    let mut node = Node::new();
    let session = node.open_session();
    let put = |seq, key: &str| {
        Command::new(
            Some(CommandId { session, seq }),
            Op::KvPut { key: key.into(), value: b"1".to_vec() },
        )
    };
    // A guessed session and u64::MAX would otherwise burn the session: no
    // number below could be used again.
    let refused = node.apply(vec![put(u64::MAX, "burn")]).remove(0).outcome;
    let Outcome::Failed(ApplyError::Invalid { message }) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(message.contains("past its last"), "{message}");
    assert_eq!(node.sm.store().kv_get("burn").unwrap(), None);
    let far = node.apply(vec![put(cairn_storage::SEQ_GAP_MAX + 1, "far")]).remove(0).outcome;
    assert!(matches!(far, Outcome::Failed(ApplyError::Invalid { .. })), "{far:?}");
    // The session's owner goes on counting from where it was.
    assert_eq!(node.apply(vec![put(1, "a")]).remove(0).outcome, Outcome::KvWritten);
    let edge = put(1 + cairn_storage::SEQ_GAP_MAX, "edge");
    assert_eq!(node.apply(vec![edge]).remove(0).outcome, Outcome::KvWritten);
}

#[test]
fn documents_and_values_stay_under_their_size_limits_merge_patches_included() {
    use cairn_storage::{DOC_BYTES_MAX, KV_VALUE_BYTES_MAX};
    let mut node = Node::new();
    node.run(create("t"));
    let big = "x".repeat(DOC_BYTES_MAX - 100);
    let near = doc("a", &format!(r#"{{"pad":"{big}"}}"#));
    assert!(near.json.len() <= DOC_BYTES_MAX);
    assert!(matches!(node.run(insert("t", vec![near], Conflict::Error)), Outcome::Inserted { .. }));
    // A patch that would take the document over the limit is refused, and the
    // document stays as it was: repeated patches cannot grow it without bound.
    let patch = format!(r#"{{"more":"{}"}}"#, "y".repeat(200));
    let refused = node.run(Op::Update { table: "t".into(), id: "a".into(), patch });
    let Outcome::Failed(ApplyError::Invalid { message }) = refused else {
        panic!("expected a refusal, got {refused:?}");
    };
    assert!(message.contains("over the limit"), "{message}");
    assert!(stored(&node, "t", "a").unwrap().get("more").is_none());
    // A document over the limit is refused whole, by insert and by replace.
    let over = doc("b", &format!(r#"{{"pad":"{}"}}"#, "x".repeat(DOC_BYTES_MAX)));
    let refused = node.run(insert("t", vec![over.clone()], Conflict::Error));
    assert!(matches!(refused, Outcome::Failed(ApplyError::Invalid { .. })), "{refused:?}");
    let refused = node.run(Op::Replace { table: "t".into(), doc: over });
    assert!(matches!(refused, Outcome::Failed(ApplyError::Invalid { .. })), "{refused:?}");
    assert_eq!(stored(&node, "t", "b"), None);
    let value = vec![0u8; KV_VALUE_BYTES_MAX + 1];
    let refused = node.run(Op::KvPut { key: "k".into(), value });
    assert!(matches!(refused, Outcome::Failed(ApplyError::Invalid { .. })), "{refused:?}");
    assert_eq!(node.sm.store().kv_get("k").unwrap(), None);
}

#[test]
fn a_page_is_bounded_in_bytes_whatever_its_limit() {
    use cairn_storage::PAGE_BYTES_MAX;
    let mut node = Node::new();
    node.run(create("t"));
    let pad = "x".repeat(1024 * 1024);
    let docs: Vec<Doc> =
        (0..10).map(|i| doc(&format!("d{i}"), &format!(r#"{{"pad":"{pad}"}}"#))).collect();
    node.run(insert("t", docs, Conflict::Error));
    let mut pages = 0;
    let mut seen = 0;
    let mut after: Option<String> = None;
    loop {
        let page = node.sm.store().list_docs("t", after.as_deref(), 1000).unwrap();
        let bytes: usize = page.docs.iter().map(String::len).sum();
        let last = page.docs.last().map_or(0, String::len);
        assert!(bytes - last < PAGE_BYTES_MAX, "a page of {bytes} bytes went on past the bound");
        pages += 1;
        seen += page.docs.len();
        match page.next {
            Some(cursor) => after = Some(cursor),
            None => break,
        }
    }
    assert_eq!(seen, 10);
    assert!(pages >= 3, "10 MiB in pages of at most ~4 MiB takes 3 pages, not {pages}");
}

fn set_cluster_version(json: &str) -> Op {
    Op::SystemPut {
        key: cairn_storage::CLUSTER_VERSION_KEY.into(),
        json: json.into(),
        expect_revision: None,
    }
}

fn increment(key: &str, by: i64) -> Op {
    Op::KvIncrement { key: key.into(), by }
}

fn refused(outcome: Outcome, says: &str) {
    match outcome {
        Outcome::Failed(ApplyError::Invalid { message }) => {
            assert!(message.contains(says), "{message:?} does not say {says:?}")
        }
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
}

#[test]
fn increments_are_gated_on_the_cluster_version_and_count_exactly_once() {
    let mut node = Node::new();
    assert_eq!(node.sm.store().cluster_version().unwrap().to_string(), "0.1");
    // Below 0.2 the gate refuses, and nothing is written.
    refused(node.run(increment("n", 1)), "needs cluster version 0.2");
    assert_eq!(node.sm.store().kv_get("n").unwrap(), None);
    // A record that is not a version, or goes down, is refused.
    refused(node.run(set_cluster_version(r#"{"v":"0.2"}"#)), "no string 'version'");
    refused(node.run(set_cluster_version(r#"{"version":"0.2.0"}"#)), "not MAJOR.MINOR");
    assert!(matches!(
        node.run(set_cluster_version(r#"{"version":"0.2","x":1}"#)),
        Outcome::Replaced { created: true }
    ));
    // Stored in one form: the version and its revision.
    let record = node.sm.store().get_system(cairn_storage::CLUSTER_VERSION_KEY).unwrap().unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record.as_object().unwrap().len(), 2, "{record}");
    refused(node.run(set_cluster_version(r#"{"version":"0.1"}"#)), "never goes down");

    // Counters: absent is 0, the sum is stored as decimal text.
    let session = node.open_session();
    let id = |seq| Some(CommandId { session, seq });
    let add = Command::new(id(1), increment("n", 5));
    let answers = node.apply(vec![add.clone(), add.clone()]);
    assert_eq!(answers[0].outcome, Outcome::Counted { value: 5 });
    assert_eq!(answers[1], answers[0], "a retry is answered from memory, not added again");
    let answers = node.apply(vec![Command::new(id(2), increment("n", -7)), add]);
    assert_eq!(answers[0].outcome, Outcome::Counted { value: -2 });
    assert!(matches!(answers[1].outcome, Outcome::Failed(ApplyError::StaleSequence { .. })));
    assert_eq!(node.sm.store().kv_get("n").unwrap().as_deref(), Some(&b"-2"[..]));
    // A value that is no counter, and an overflow, are refused unchanged.
    node.run(Op::KvPut { key: "text".into(), value: b"12 apples".to_vec() });
    refused(node.run(increment("text", 1)), "not a decimal integer");
    node.run(Op::KvPut { key: "big".into(), value: i64::MAX.to_string().into_bytes() });
    refused(node.run(increment("big", 1)), "overflows");
    assert_eq!(node.sm.store().kv_get("big").unwrap(), Some(i64::MAX.to_string().into_bytes()));

    // The gate and the counters survive a restart.
    let mut node = node.restart();
    assert_eq!(node.sm.store().cluster_version().unwrap().to_string(), "0.2");
    assert_eq!(node.run(increment("n", 2)), Outcome::Counted { value: 0 });
}

#[test]
fn a_cluster_version_this_binary_does_not_run_stops_the_machine_before_it_applies() {
    let mut node = Node::new();
    let supported = cairn_storage::cluster_version::supported();
    let beyond = format!("{}.{}", supported.max.major, supported.max.minor + 1);
    let first = node.sm.applied_index() + 1;
    let entries = vec![
        (first, Command::new(None, Op::KvPut { key: "before".into(), value: b"1".to_vec() })),
        (
            first + 1,
            Command::new(None, set_cluster_version(&format!(r#"{{"version":"{beyond}"}}"#))),
        ),
    ];
    let error = node.sm.apply(&entries).unwrap_err().to_string();
    assert!(error.contains(&format!("cluster version {beyond}")), "{error}");
    assert!(error.contains(&format!("({})", cairn_util::version())), "{error}");
    // Nothing of the batch is applied; a restart resumes before it.
    let node = node.restart();
    assert_eq!(node.sm.applied_index(), first - 1);
    assert_eq!(node.sm.store().kv_get("before").unwrap(), None);
    assert_eq!(node.sm.store().cluster_version().unwrap(), cairn_storage::ClusterVersion::BASE);
}
