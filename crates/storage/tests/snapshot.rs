//! Scenarios for state-machine snapshots: export from a checkpoint as bounded
//! chunks, install into a live store. Each test says what it proves. Stores are
//! compared byte for byte through a raw read-only view of the database, so the
//! comparison does not go through the code under test.
//!
//! The property test at the end draws random states and chunk sizes; on
//! failure proptest prints the minimal case; set `PROPTEST_CASES=N` for a
//! longer run: `PROPTEST_CASES=500 cargo test --workspace --locked --test snapshot`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_storage::log_store::LogStore;
use cairn_storage::snapshot::{CHUNK_ENCODED_BYTES_MAX, CHUNK_PAIRS_MAX};
use cairn_storage::{
    Applied, Chunk, Command, CommandId, Conflict, Doc, Error, Op, Outcome, SnapshotCf,
    SnapshotSink, SnapshotSource, StateMachine, Store,
};
use omnipaxos::storage::Storage;
use proptest::prelude::*;
use tempfile::TempDir;

const STATE_CFS: [&str; 6] = ["tables", "docs", "kv", "sessions", "session_lru", "meta"];
const LOG_CFS: [&str; 2] = ["log", "log_meta"];

/// Every key and value of some column families, by name.
type Dump = BTreeMap<&'static str, Vec<(Vec<u8>, Vec<u8>)>>;

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

    fn store(&self) -> &Store {
        self.sm.store()
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

    fn dump(&self) -> Dump {
        dump(self.dir.path(), &STATE_CFS)
    }
}

/// Reads column families through a read-only view of the database, beside any
/// open handle.
fn dump(dir: &Path, cfs: &[&'static str]) -> Dump {
    let all = STATE_CFS.iter().chain(LOG_CFS.iter());
    let db =
        rocksdb::DB::open_cf_for_read_only(&rocksdb::Options::default(), dir, all, false).unwrap();
    cfs.iter()
        .map(|name| {
            let cf = db.cf_handle(name).unwrap();
            let pairs = db
                .iterator_cf(cf, rocksdb::IteratorMode::Start)
                .map(|item| {
                    let (key, value) = item.unwrap();
                    (key.into_vec(), value.into_vec())
                })
                .collect();
            (*name, pairs)
        })
        .collect()
}

fn doc(id: &str, body: &str) -> Doc {
    let mut value: serde_json::Value = serde_json::from_str(body).unwrap();
    value["id"] = id.into();
    Doc { id: id.into(), json: value.to_string() }
}

fn in_session(session: u64, seq: u64, op: Op) -> Command {
    Command::new(Some(CommandId { session, seq }), op)
}

fn kv_put(key: &str, value: &[u8]) -> Op {
    Op::KvPut { key: key.into(), value: value.to_vec() }
}

/// A state with every column family in use; session 1's last command is
/// `kv_put("k1", b"one")` at seq 2.
fn populated() -> Node {
    let mut node = Node::new();
    let session = node.open_session();
    node.run(Op::CreateTable { table: "users".into() });
    node.run(Op::CreateTable { table: "orders".into() });
    let docs = (0..12).map(|n| doc(&format!("u{n:02}"), &format!(r#"{{"n":{n}}}"#))).collect();
    node.run(Op::Insert { table: "users".into(), docs, conflict: Conflict::Error });
    node.run(Op::Insert {
        table: "orders".into(),
        docs: vec![doc("o1", r#"{"total":3}"#)],
        conflict: Conflict::Error,
    });
    // One value far above the chunk size used in the tests: it goes alone.
    node.run(kv_put("big", &[7; 300]));
    node.apply(vec![in_session(session, 1, kv_put("k0", b"zero"))]);
    node.apply(vec![in_session(session, 2, kv_put("k1", b"one"))]);
    node.open_session();
    node
}

fn checkpoint_path(parent: &TempDir) -> PathBuf {
    parent.path().join("checkpoint")
}

/// Streams the rest of the snapshot after the chunks already `received`,
/// checking the stream's shape on the way: chunks numbered from 0, within
/// `max_bytes` unless a single pair, the last flagged and only it, each
/// surviving the network encoding.
fn stream(source: &mut SnapshotSource, max_bytes: usize, received: Vec<Chunk>) -> Vec<Chunk> {
    let mut chunks = received;
    while let Some(chunk) = source.next_chunk(max_bytes).unwrap() {
        assert_eq!(chunk.seq, chunks.len() as u64);
        assert_eq!(chunk.applied_index, source.applied_index());
        assert!(chunks.last().is_none_or(|previous| !previous.last), "a chunk after the last");
        assert!(chunk.payload_bytes() <= max_bytes || chunk.pairs.len() == 1);
        assert!(chunk.last || !chunk.pairs.is_empty(), "only the last chunk may be empty");
        assert_eq!(Chunk::decode(&chunk.encode()).unwrap(), chunk);
        chunks.push(chunk);
    }
    assert!(chunks.last().is_some_and(|chunk| chunk.last), "the stream ends with its last chunk");
    chunks
}

fn export(store: &Store, max_bytes: usize) -> (u64, Vec<Chunk>) {
    let parent = tempfile::tempdir().unwrap();
    let mut source = SnapshotSource::create(store, &checkpoint_path(&parent)).unwrap();
    (source.applied_index(), stream(&mut source, max_bytes, Vec::new()))
}

fn install(store: &Store, applied_index: u64, chunks: Vec<Chunk>) -> u64 {
    let mut sink = SnapshotSink::begin(store, applied_index).unwrap();
    for chunk in chunks {
        sink.push(chunk).unwrap();
    }
    sink.finish().unwrap()
}

fn snapshot_reason(error: Error) -> String {
    match error {
        Error::Snapshot { reason } => reason,
        other => panic!("expected a refused snapshot, got {other:?}"),
    }
}

fn assert_incomplete(store: &Store) {
    assert!(store.snapshot_install_incomplete().unwrap());
    assert!(matches!(StateMachine::open(store.clone()), Err(Error::SnapshotIncomplete)));
}

/// A snapshot in many small chunks recreates the state byte for byte, in a new
/// store and over a store with other data, and the installed replica then
/// answers the next entries exactly as the source does: a retried command of a
/// session is answered from the stored outcome, so exactly-once survives.
#[test]
fn a_snapshot_round_trips_and_the_replica_carries_on_like_the_source() {
    let mut source = populated();
    let (applied, chunks) = export(source.store(), 64);
    assert_eq!(applied, source.sm.applied_index());
    assert!(chunks.len() > 8, "64-byte chunks split the state: {} chunks", chunks.len());
    let cfs: Vec<SnapshotCf> = chunks.iter().map(|chunk| chunk.cf).collect();
    assert!(cfs.windows(2).all(|pair| pair[0] <= pair[1]), "column families in stream order");
    assert_eq!(cfs.last(), Some(&SnapshotCf::Meta));

    let fresh = Node::new();
    assert_eq!(install(fresh.store(), applied, chunks.clone()), applied);
    assert_eq!(fresh.dump(), source.dump());
    assert_eq!(fresh.store().applied_index(), applied);

    // A replica with a state of its own, further along: all of it goes.
    let mut other = Node::new();
    let session = other.open_session();
    other.run(Op::CreateTable { table: "zzz".into() });
    other.apply(vec![in_session(session, 1, kv_put("mine", b"x"))]);
    for _ in 0..20 {
        other.run(kv_put("k1", b"other"));
    }
    assert_eq!(install(other.store(), applied, chunks), applied);
    other.sm.reload().unwrap();
    assert_eq!(other.sm.applied_index(), applied);
    assert_eq!(other.dump(), source.dump());

    let mut replicas = [StateMachine::open(fresh.store().clone()).unwrap(), other.sm];
    let next = [
        in_session(1, 2, kv_put("k1", b"one")),
        in_session(1, 1, kv_put("k0", b"zero")),
        in_session(1, 3, kv_put("k2", b"two")),
        Command::new(None, Op::Delete { table: "users".into(), id: "u03".into() }),
        Command::new(None, Op::OpenSession { token: 0 }),
    ];
    let entries: Vec<(u64, Command)> = (applied + 1..).zip(next).collect();
    let expected = source.sm.apply(&entries).unwrap();
    assert_eq!(expected[0], Applied { index: 8, outcome: Outcome::KvWritten }, "from memory");
    for replica in &mut replicas {
        assert_eq!(replica.apply(&entries).unwrap(), expected);
    }
    assert_eq!(fresh.dump(), source.dump());
    assert_eq!(dump(other.dir.path(), &STATE_CFS), source.dump());
}

/// The source streams the state at `create`: what the node applies meanwhile
/// stays out of the stream.
#[test]
fn the_checkpoint_isolates_the_stream_from_later_writes() {
    let mut source = populated();
    let at_create = source.dump();
    let parent = tempfile::tempdir().unwrap();
    let mut snapshot = SnapshotSource::create(source.store(), &checkpoint_path(&parent)).unwrap();
    let applied = snapshot.applied_index();
    let first = snapshot.next_chunk(64).unwrap().unwrap();

    source.run(kv_put("late", b"late"));
    source.run(Op::DropTable { table: "users".into() });
    source.apply(vec![in_session(1, 3, kv_put("k1", b"changed"))]);

    let chunks = stream(&mut snapshot, 64, vec![first]);
    let replica = Node::new();
    install(replica.store(), applied, chunks);
    assert_eq!(replica.dump(), at_create);
    assert_eq!(replica.store().kv_get("late").unwrap(), None);
    assert_ne!(source.store().applied_index(), applied);

    // The checkpoint goes with the source.
    let dir = checkpoint_path(&parent);
    assert!(dir.exists());
    drop(snapshot);
    assert!(!dir.exists());
}

/// An install replaces the state machine only: the consensus log and its
/// metadata, in the same database, are left as they were.
#[test]
fn install_leaves_the_consensus_log_alone() {
    let source = populated();
    let (applied, chunks) = export(source.store(), 128);

    let replica = Node::new();
    let entries: Vec<Command> = (1..=5).map(|n| Command::new(None, kv_put("x", &[n]))).collect();
    let mut log = LogStore::open(replica.store()).unwrap();
    log.append_entries(entries.clone()).unwrap();
    log.set_decided_idx(3).unwrap();
    drop(log);
    let log_before = dump(replica.dir.path(), &LOG_CFS);
    assert!(log_before.values().all(|pairs| !pairs.is_empty()));

    install(replica.store(), applied, chunks);
    assert_eq!(dump(replica.dir.path(), &LOG_CFS), log_before);
    let log = LogStore::open(replica.store()).unwrap();
    assert_eq!(log.get_entries(0, 5).unwrap(), entries);
    assert_eq!(log.get_decided_idx().unwrap(), 3);
}

/// A chunk that is corrupt, out of order, of another snapshot or past the end
/// is refused, and so is a stream that stops early. Whatever was refused, the
/// store reports itself incomplete and cannot be opened as a state machine,
/// until a new install of the whole stream succeeds.
#[test]
fn a_bad_stream_is_refused_and_the_store_stays_incomplete_until_installed_again() {
    let source = populated();
    let (applied, chunks) = export(source.store(), 64);
    let n = chunks.len();
    assert!(n >= 4);
    let replica = Node::new();
    let store = replica.store().clone();
    let begin = |index| SnapshotSink::begin(&store, index).unwrap();

    // A flipped byte inside a value on the wire.
    let big = chunks.iter().position(|c| c.pairs.iter().any(|(k, _)| k == b"big")).unwrap();
    let mut sink = begin(applied);
    for chunk in &chunks[..big] {
        sink.push(chunk.clone()).unwrap();
    }
    let mut bytes = chunks[big].encode();
    let at = bytes.windows(300).position(|w| w.iter().all(|b| *b == 7)).unwrap() + 150;
    bytes[at] ^= 0x10;
    let reason = snapshot_reason(sink.push(Chunk::decode(&bytes).unwrap()).unwrap_err());
    assert!(reason.contains("checksum"), "{reason}");
    assert_incomplete(&store);
    // A refused chunk wrote nothing: the right one can follow.
    sink.push(chunks[big].clone()).unwrap();

    let refusals: [(String, Attempt); 4] = [
        (
            "expected chunk 1, got chunk 2".into(),
            Box::new(|| push_all(begin(applied), [0, 2], &chunks)),
        ),
        (
            "expected chunk 2, got chunk 1".into(),
            Box::new(|| push_all(begin(applied), [0, 1, 1], &chunks)),
        ),
        (
            format!("belongs to the snapshot at index {applied}"),
            Box::new(|| push_all(begin(applied + 1), [0], &chunks)),
        ),
        (
            "without its last chunk".into(),
            Box::new(|| {
                let mut sink = begin(applied);
                chunks[..n - 1].iter().try_for_each(|chunk| sink.push(chunk.clone()))?;
                sink.finish().map(drop)
            }),
        ),
    ];
    for (expected, attempt) in refusals {
        let reason = snapshot_reason(attempt().unwrap_err());
        assert!(reason.contains(&expected), "'{reason}' should say '{expected}'");
        assert_incomplete(&store);
    }

    // Past the last chunk.
    let mut sink = begin(applied);
    chunks.iter().try_for_each(|chunk| sink.push(chunk.clone())).unwrap();
    let extra = Chunk::new(applied, n as u64, SnapshotCf::Meta, Vec::new(), true);
    let reason = snapshot_reason(sink.push(extra).unwrap_err());
    assert!(reason.contains("after the last chunk"), "{reason}");

    // A fresh install over the incomplete store.
    assert_eq!(install(&store, applied, chunks), applied);
    assert!(!store.snapshot_install_incomplete().unwrap());
    assert_eq!(replica.dump(), source.dump());
    assert_eq!(StateMachine::open(store).unwrap().applied_index(), applied);
}

/// One way to feed a sink, answering the first refusal.
type Attempt<'a> = Box<dyn Fn() -> Result<(), Error> + 'a>;

/// Pushes the chunks at `seqs` in that order; the first refusal is the answer.
fn push_all<const N: usize>(
    mut sink: SnapshotSink,
    seqs: [usize; N],
    chunks: &[Chunk],
) -> Result<(), Error> {
    seqs.iter().try_for_each(|seq| sink.push(chunks[*seq].clone()))
}

/// What a peer can send that is well-formed but wrong: keys out of order, the
/// install marker, a meta applied index that disagrees with the snapshot's.
#[test]
fn chunks_that_break_the_stream_rules_are_refused() {
    let replica = Node::new();
    let store = replica.store();
    let pairs = |keys: &[&[u8]]| keys.iter().map(|k| (k.to_vec(), b"v".to_vec())).collect();
    let cases: [(Vec<Chunk>, &str); 5] = [
        (vec![Chunk::new(9, 0, SnapshotCf::Kv, pairs(&[b"b", b"a"]), false)], "out of order"),
        (
            vec![
                Chunk::new(9, 0, SnapshotCf::Kv, pairs(&[b"a"]), false),
                Chunk::new(9, 1, SnapshotCf::Kv, pairs(&[b"a"]), false),
            ],
            "out of order",
        ),
        (
            vec![
                Chunk::new(9, 0, SnapshotCf::Kv, pairs(&[b"a"]), false),
                Chunk::new(9, 1, SnapshotCf::Tables, pairs(&[b"t"]), false),
            ],
            "goes back",
        ),
        (
            vec![Chunk::new(9, 0, SnapshotCf::Meta, pairs(&[b"snapshot_install"]), true)],
            "install marker",
        ),
        (
            vec![Chunk::new(
                9,
                0,
                SnapshotCf::Meta,
                vec![(b"applied_index".to_vec(), 8u64.to_be_bytes().to_vec())],
                true,
            )],
            "applied index is 8",
        ),
    ];
    for (stream, expected) in cases {
        let mut sink = SnapshotSink::begin(store, 9).unwrap();
        let error = stream.into_iter().try_for_each(|chunk| sink.push(chunk)).unwrap_err();
        let reason = snapshot_reason(error);
        assert!(reason.contains(expected), "'{reason}' should say '{expected}'");
        assert_incomplete(store);
    }
    // A stream whose meta never says which index it is at.
    let mut sink = SnapshotSink::begin(store, 9).unwrap();
    sink.push(Chunk::new(9, 0, SnapshotCf::Kv, pairs(&[b"a"]), true)).unwrap();
    assert!(snapshot_reason(sink.finish().unwrap_err()).contains("no applied index"));
    assert_incomplete(store);
}

/// Bytes from the network are bounded before anything is allocated for them,
/// and garbage is an error, never a panic.
#[test]
fn decoding_refuses_oversized_and_malformed_chunks() {
    let too_long = vec![0u8; CHUNK_ENCODED_BYTES_MAX + 1];
    assert!(snapshot_reason(Chunk::decode(&too_long).unwrap_err()).contains("limit"));

    // applied index 1, seq 0, cf 0, then a pair count above the limit.
    let mut announced = vec![1, 0, 0];
    let mut count = CHUNK_PAIRS_MAX as u64 + 1;
    while count >= 0x80 {
        announced.push((count as u8) | 0x80);
        count >>= 7;
    }
    announced.push(count as u8);
    assert!(snapshot_reason(Chunk::decode(&announced).unwrap_err()).contains("decode"));

    let many = vec![(Vec::new(), Vec::new()); CHUNK_PAIRS_MAX + 1];
    let chunk = Chunk::new(1, 0, SnapshotCf::Kv, many, true);
    assert!(Chunk::decode(&chunk.encode()).is_err());
    let replica = Node::new();
    let mut sink = SnapshotSink::begin(replica.store(), 1).unwrap();
    assert!(snapshot_reason(sink.push(chunk).unwrap_err()).contains("pairs, over the limit"));

    let good = Chunk::new(1, 0, SnapshotCf::Docs, vec![(b"k".to_vec(), b"v".to_vec())], false);
    let mut trailing = good.encode();
    trailing.push(0);
    assert!(snapshot_reason(Chunk::decode(&trailing).unwrap_err()).contains("follow"));
    let mut unknown_cf = good.encode();
    unknown_cf[2] = 42;
    assert!(Chunk::decode(&unknown_cf).is_err());
    for cut in 0..good.encode().len() {
        assert!(Chunk::decode(&good.encode()[..cut]).is_err());
    }
}

/// A node that crashes in the middle of an install restarts incomplete (and
/// with nothing applied), and installing again gives the right state, durably.
#[test]
fn a_crash_mid_install_leaves_the_store_incomplete_until_installed_again() {
    let source = populated();
    let (applied, chunks) = export(source.store(), 64);
    let Node { dir, sm } = populated();
    let store = sm.store().clone();
    drop(sm);
    let mut sink = SnapshotSink::begin(&store, applied).unwrap();
    for chunk in &chunks[..chunks.len() / 2] {
        sink.push(chunk.clone()).unwrap();
    }
    drop(sink);
    drop(store);

    let store = Store::open(dir.path()).unwrap();
    assert_incomplete(&store);
    assert_eq!(store.applied_index(), 0);
    assert_eq!(install(&store, applied, chunks), applied);
    drop(store);

    let sm = StateMachine::open(Store::open(dir.path()).unwrap()).unwrap();
    assert_eq!(sm.applied_index(), applied);
    assert_eq!(sm.store().applied_index(), applied);
    drop(sm);
    assert_eq!(dump(dir.path(), &STATE_CFS), source.dump());
}

/// A state with nothing applied is a stream of one empty last chunk, and
/// installing it empties the replica.
#[test]
fn an_empty_state_is_one_empty_last_chunk() {
    let source = Node::new();
    let (applied, chunks) = export(source.store(), 64);
    assert_eq!(applied, 0);
    assert_eq!(chunks, vec![Chunk::new(0, 0, SnapshotCf::Meta, Vec::new(), true)]);
    let replica = populated();
    install(replica.store(), applied, chunks);
    assert_eq!(replica.dump(), source.dump());
    assert_eq!(replica.store().applied_index(), 0);
}

/// A checkpoint is never written over something that exists, and a store in
/// the middle of an install has no snapshot to give.
#[test]
fn a_source_needs_a_new_directory_and_a_complete_store() {
    let node = populated();
    let parent = tempfile::tempdir().unwrap();
    let reason =
        snapshot_reason(SnapshotSource::create(node.store(), parent.path()).err().unwrap());
    assert!(reason.contains("already exists"), "{reason}");
    assert!(parent.path().exists(), "a directory the source did not make stays");

    let _sink = SnapshotSink::begin(node.store(), 5).unwrap();
    let dir = checkpoint_path(&parent);
    let refused = SnapshotSource::create(node.store(), &dir);
    assert!(matches!(refused, Err(Error::SnapshotIncomplete)));
    assert!(!dir.exists(), "a refused checkpoint is removed");
}

#[derive(Clone, Debug)]
enum Step {
    /// A command outside any session.
    Run(Op),
    /// The next command of the newest session (opening one if there is none).
    Session(Op),
    /// The newest session's last command again.
    Retry,
}

fn op() -> impl Strategy<Value = Op> {
    let table = prop::sample::select(vec!["t1", "t2"]).prop_map(String::from);
    let id = "[a-f]{1,3}";
    let key = "[a-z]{1,4}";
    prop_oneof![
        table.clone().prop_map(|table| Op::CreateTable { table }),
        table.clone().prop_map(|table| Op::DropTable { table }),
        (table.clone(), prop::collection::btree_set(id, 1..6)).prop_map(|(table, ids)| {
            let docs = ids.iter().map(|id| doc(id, r#"{"x":1}"#)).collect();
            Op::Insert { table, docs, conflict: Conflict::Replace }
        }),
        (table, id).prop_map(|(table, id)| Op::Delete { table, id }),
        (key, prop::collection::vec(any::<u8>(), 0..200))
            .prop_map(|(key, value)| Op::KvPut { key, value }),
        key.prop_map(|key| Op::KvDelete { key }),
        Just(Op::OpenSession { token: 0 }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => op().prop_map(Step::Run),
        3 => op().prop_map(Step::Session),
        1 => Just(Step::Retry),
    ]
}

fn build(steps: &[Step]) -> Node {
    let mut node = Node::new();
    let mut session: Option<(u64, Command)> = None;
    for step in steps {
        let command = match (step, &session) {
            (Step::Run(op), _) => Command::new(None, op.clone()),
            (Step::Session(op), Some((id, last))) => {
                let seq = last.id.map_or(0, |id| id.seq) + 1;
                in_session(*id, seq, op.clone())
            }
            (Step::Session(_), None) => Command::new(None, Op::OpenSession { token: 0 }),
            (Step::Retry, Some((_, last))) => last.clone(),
            (Step::Retry, None) => continue,
        };
        let outcome = node.apply(vec![command.clone()]).remove(0).outcome;
        if let Outcome::SessionOpened { session: id } = outcome {
            session = Some((id, in_session(id, 0, Op::Noop)));
        } else if command.id.is_some() {
            session = session.map(|(id, _)| (id, command));
        }
    }
    node
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(32)
    ))]

    /// Any state, any chunk size, over any previous state: the install is the
    /// source byte for byte.
    #[test]
    fn export_then_install_is_the_identity(
        source_steps in prop::collection::vec(step(), 0..40),
        replica_steps in prop::collection::vec(step(), 0..20),
        max_bytes in 1usize..2048,
    ) {
        let source = build(&source_steps);
        let replica = build(&replica_steps);
        let (applied, chunks) = export(source.store(), max_bytes);
        prop_assert_eq!(install(replica.store(), applied, chunks), applied);
        prop_assert_eq!(replica.dump(), source.dump());
        prop_assert_eq!(replica.store().applied_index(), source.store().applied_index());
        prop_assert!(!replica.store().snapshot_install_incomplete().unwrap());
    }
}
