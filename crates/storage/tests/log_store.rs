//! The RocksDB log store against OmniPaxos's reference `MemoryStorage`.
//!
//! The differential property test runs random sequences of storage calls
//! (every write, alone and inside `write_atomically`, and reads of random
//! ranges, in and out of the log) against both, with restarts of the log store
//! in between; after every call all of their answers must agree. Only calls
//! OmniPaxos can make are generated: `MemoryStorage` underflows and panics on a
//! trim, an `append_on_prefix` or a read below the log's first index, so those
//! never are; everything else (trims past the end, reads past the end, empty
//! and reversed ranges) is fair game.
//!
//! The scenarios after it pin down durability, absolute indexes after a trim,
//! and corrupt data on disk turning into errors that name what was corrupt.
//!
//! On failure proptest prints the minimal failing sequence; set
//! `PROPTEST_CASES=N` for a longer run:
//! `PROPTEST_CASES=2000 cargo test -p cairn-storage --test log_store`.

use std::panic::AssertUnwindSafe;
use std::path::Path;

use cairn_storage::log_store::{read_retained, release_retained, LogStore};
use cairn_storage::{Command, CommandId, CompactionMarker, Op, Store};
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::{StopSign, Storage, StorageOp};
use omnipaxos::util::FlexibleQuorum;
use omnipaxos::ClusterConfig;
use omnipaxos_storage::memory_storage::MemoryStorage;
use proptest::prelude::*;
use tempfile::TempDir;

/// The column families of the log, as `engine` names them.
const CF_LOG: &str = "log";
const CF_LOG_META: &str = "log_meta";

/// A node's log store and the directory it lives in.
struct Disk {
    dir: TempDir,
    log: LogStore,
}

impl Disk {
    fn new() -> Disk {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = open_log(dir.path()).expect("a new log store opens");
        Disk { dir, log }
    }

    /// Closes the database and opens it again, as after a restart.
    fn restart(self) -> Disk {
        let Disk { dir, log } = self;
        drop(log);
        let log = open_log(dir.path()).expect("the log store reopens");
        Disk { dir, log }
    }
}

fn open_log(dir: &Path) -> Result<LogStore, cairn_storage::Error> {
    let store = Store::open(dir)?;
    LogStore::open(&store)
}

/// Changes the database behind the store's back: the store must be closed.
fn with_raw_db(dir: &Path, change: impl FnOnce(&rocksdb::DB)) {
    let opts = rocksdb::Options::default();
    let names = rocksdb::DB::list_cf(&opts, dir).expect("column families");
    let db = rocksdb::DB::open_cf(&opts, dir, names).expect("the raw database opens");
    change(&db);
}

fn cmd(n: u64) -> Command {
    Command::new(
        Some(CommandId { session: 1, seq: n }),
        Op::KvPut { key: format!("k{n}"), value: n.to_be_bytes().to_vec() },
    )
}

fn cmds(range: std::ops::Range<u64>) -> Vec<Command> {
    range.map(cmd).collect()
}

// ---------------------------------------------------------------------------
// The differential property test.

/// One write, with indexes given as offsets from the log's first index at the
/// moment it runs, so that every generated write is one OmniPaxos could make.
#[derive(Clone, Debug)]
enum Write {
    AppendEntry(Command),
    AppendEntries(Vec<Command>),
    /// From `first + offset`: inside the log, at its end, or past it.
    AppendOnPrefix {
        offset: usize,
        entries: Vec<Command>,
    },
    SetPromise(Ballot),
    SetDecidedIdx(usize),
    SetAcceptedRound(Ballot),
    /// To `first + offset`, possibly past the end of the log.
    Trim {
        offset: usize,
    },
    SetCompactedIdx(usize),
    SetStopsign(Option<StopSign>),
    SetSnapshotNone,
}

#[derive(Clone, Debug)]
enum Call {
    Write(Write),
    Atomically(Vec<Write>),
    /// `[first + from, first + to)`: possibly reversed, empty or past the end.
    GetEntries {
        from: usize,
        to: usize,
    },
    GetSuffix {
        from: usize,
    },
    Restart,
}

impl Write {
    /// The storage operation, and the log's first index after it.
    fn resolve(&self, first: usize) -> (StorageOp<Command>, usize) {
        let op = match self.clone() {
            Write::AppendEntry(entry) => StorageOp::AppendEntry(entry),
            Write::AppendEntries(entries) => StorageOp::AppendEntries(entries),
            Write::AppendOnPrefix { offset, entries } => {
                StorageOp::AppendOnPrefix(first + offset, entries)
            }
            Write::SetPromise(ballot) => StorageOp::SetPromise(ballot),
            Write::SetDecidedIdx(idx) => StorageOp::SetDecidedIndex(idx),
            Write::SetAcceptedRound(ballot) => StorageOp::SetAcceptedRound(ballot),
            Write::Trim { offset } => return (StorageOp::Trim(first + offset), first + offset),
            Write::SetCompactedIdx(idx) => StorageOp::SetCompactedIdx(idx),
            Write::SetStopsign(stopsign) => StorageOp::SetStopsign(stopsign),
            Write::SetSnapshotNone => StorageOp::SetSnapshot(None),
        };
        (op, first)
    }
}

/// Runs one operation through the matching single-operation method, so that
/// each of them is exercised (`write_atomically` is exercised by `Atomically`).
fn run_alone(storage: &mut impl Storage<Command>, op: StorageOp<Command>) {
    let result = match op {
        StorageOp::AppendEntry(entry) => storage.append_entry(entry),
        StorageOp::AppendEntries(entries) => storage.append_entries(entries),
        StorageOp::AppendOnPrefix(from, entries) => storage.append_on_prefix(from, entries),
        StorageOp::SetPromise(ballot) => storage.set_promise(ballot),
        StorageOp::SetDecidedIndex(idx) => storage.set_decided_idx(idx),
        StorageOp::SetAcceptedRound(ballot) => storage.set_accepted_round(ballot),
        StorageOp::SetCompactedIdx(idx) => storage.set_compacted_idx(idx),
        StorageOp::Trim(idx) => storage.trim(idx),
        StorageOp::SetStopsign(stopsign) => storage.set_stopsign(stopsign),
        StorageOp::SetSnapshot(snapshot) => storage.set_snapshot(snapshot),
    };
    result.expect("the write succeeds");
}

/// Every getter of both stores, compared; `first` is where the log starts.
fn assert_same_state(mem: &MemoryStorage<Command>, disk: &LogStore, first: usize, step: usize) {
    let ctx = format!("after step {step}");
    let ok = "a getter succeeds";
    assert_eq!(disk.get_log_len().expect(ok), mem.get_log_len().expect(ok), "log_len {ctx}");
    assert_eq!(
        disk.get_decided_idx().expect(ok),
        mem.get_decided_idx().expect(ok),
        "decided_idx {ctx}"
    );
    assert_eq!(
        disk.get_compacted_idx().expect(ok),
        mem.get_compacted_idx().expect(ok),
        "compacted_idx {ctx}"
    );
    assert_eq!(disk.get_promise().expect(ok), mem.get_promise().expect(ok), "promise {ctx}");
    assert_eq!(
        disk.get_accepted_round().expect(ok),
        mem.get_accepted_round().expect(ok),
        "accepted_round {ctx}"
    );
    assert_eq!(disk.get_stopsign().expect(ok), mem.get_stopsign().expect(ok), "stopsign {ctx}");
    assert_eq!(disk.get_snapshot().expect(ok), mem.get_snapshot().expect(ok), "snapshot {ctx}");
    assert_eq!(
        disk.get_suffix(first).expect(ok),
        mem.get_suffix(first).expect(ok),
        "whole log {ctx}"
    );
}

fn run_sequence(calls: Vec<Call>) {
    let mut mem = MemoryStorage::<Command>::default();
    let mut disk = Disk::new();
    // MemoryStorage's trimmed index is private: the test follows it here.
    let mut first = 0;
    for (step, call) in calls.into_iter().enumerate() {
        match call {
            Call::Write(write) => {
                let (op, _) = write.resolve(first);
                run_alone(&mut mem, op);
                let (op, next_first) = write.resolve(first);
                run_alone(&mut disk.log, op);
                first = next_first;
            }
            Call::Atomically(writes) => {
                let (mut mem_ops, mut disk_ops) = (Vec::new(), Vec::new());
                for write in &writes {
                    let (op, _) = write.resolve(first);
                    mem_ops.push(op);
                    let (op, next_first) = write.resolve(first);
                    disk_ops.push(op);
                    first = next_first;
                }
                mem.write_atomically(mem_ops).expect("memory batch");
                disk.log.write_atomically(disk_ops).expect("disk batch");
            }
            Call::GetEntries { from, to } => {
                let (from, to) = (first + from, first + to);
                assert_eq!(
                    disk.log.get_entries(from, to).expect("get_entries"),
                    mem.get_entries(from, to).expect("get_entries"),
                    "get_entries({from}, {to}) at step {step}"
                );
            }
            Call::GetSuffix { from } => {
                let from = first + from;
                assert_eq!(
                    disk.log.get_suffix(from).expect("get_suffix"),
                    mem.get_suffix(from).expect("get_suffix"),
                    "get_suffix({from}) at step {step}"
                );
            }
            Call::Restart => disk = disk.restart(),
        }
        assert_same_state(&mem, &disk.log, first, step);
    }
}

fn command() -> impl Strategy<Value = Command> {
    let id = prop::option::of(
        (1..4u64, 0..100u64).prop_map(|(session, seq)| CommandId { session, seq }),
    );
    let op = prop_oneof![
        Just(Op::Noop),
        Just(Op::OpenSession { token: 7 }),
        Just(Op::Barrier { token: 9 }),
        ("[a-c]{1,3}", prop::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(key, value)| Op::KvPut { key, value }),
        "[a-z]{1,8}".prop_map(|table| Op::CreateTable { table }),
    ];
    (id, op).prop_map(|(id, op)| Command::new(id, op))
}

fn ballot() -> impl Strategy<Value = Ballot> {
    (1..3u32, 0..4u32, 0..2u32, 1..4u64)
        .prop_map(|(config_id, n, priority, pid)| Ballot::with(config_id, n, priority, pid))
}

fn stopsign() -> impl Strategy<Value = StopSign> {
    let quorum = prop::option::of((1..4usize, 1..4usize).prop_map(|(read, write)| {
        FlexibleQuorum { read_quorum_size: read, write_quorum_size: write }
    }));
    (
        1..5u32,
        prop::collection::vec(1..6u64, 2..5),
        quorum,
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
    )
        .prop_map(|(configuration_id, nodes, flexible_quorum, metadata)| {
            let config = ClusterConfig { configuration_id, nodes, flexible_quorum };
            StopSign::with(config, metadata)
        })
}

/// Offsets reach a little past the longest logs the sequences build, so that
/// trims, appends and reads past the end all happen.
const OFFSET_MAX: usize = 12;

fn write() -> impl Strategy<Value = Write> {
    let entries = || prop::collection::vec(command(), 0..5);
    prop_oneof![
        3 => command().prop_map(Write::AppendEntry),
        3 => entries().prop_map(Write::AppendEntries),
        2 => (0..OFFSET_MAX, entries())
            .prop_map(|(offset, entries)| Write::AppendOnPrefix { offset, entries }),
        1 => ballot().prop_map(Write::SetPromise),
        1 => (0..30usize).prop_map(Write::SetDecidedIdx),
        1 => ballot().prop_map(Write::SetAcceptedRound),
        2 => (0..OFFSET_MAX).prop_map(|offset| Write::Trim { offset }),
        1 => (0..30usize).prop_map(Write::SetCompactedIdx),
        1 => prop::option::of(stopsign()).prop_map(Write::SetStopsign),
        1 => Just(Write::SetSnapshotNone),
    ]
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => write().prop_map(Call::Write),
        3 => prop::collection::vec(write(), 0..6).prop_map(Call::Atomically),
        3 => (0..OFFSET_MAX * 2, 0..OFFSET_MAX * 2).prop_map(|(from, to)| Call::GetEntries { from, to }),
        1 => (0..OFFSET_MAX * 2).prop_map(|from| Call::GetSuffix { from }),
        1 => Just(Call::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200)
    ))]

    /// Whatever OmniPaxos writes and asks, the log store answers as
    /// MemoryStorage does, across restarts.
    #[test]
    fn log_store_answers_as_memory_storage(calls in prop::collection::vec(call(), 1..40)) {
        run_sequence(calls);
    }
}

// ---------------------------------------------------------------------------
// Scenarios.

/// Everything one `write_atomically` wrote is there after a restart, as
/// OmniPaxos's log sync writes it: round, decided index, trim, compacted
/// index, suffix and stopsign together.
#[test]
fn write_atomically_is_durable_across_a_restart() {
    let mut disk = Disk::new();
    disk.log.append_entries(cmds(0..5)).unwrap();
    let round = Ballot::with(1, 3, 0, 2);
    let stopsign = StopSign::with(
        ClusterConfig { configuration_id: 2, nodes: vec![1, 2, 3], flexible_quorum: None },
        Some(vec![7]),
    );
    disk.log
        .write_atomically(vec![
            StorageOp::SetAcceptedRound(round),
            StorageOp::SetDecidedIndex(4),
            StorageOp::Trim(2),
            StorageOp::SetCompactedIdx(2),
            StorageOp::AppendOnPrefix(4, cmds(10..13)),
            StorageOp::SetStopsign(Some(stopsign.clone())),
            StorageOp::SetPromise(round),
        ])
        .unwrap();

    let disk = disk.restart();
    let log = &disk.log;
    assert_eq!(log.get_accepted_round().unwrap(), Some(round));
    assert_eq!(log.get_promise().unwrap(), Some(round));
    assert_eq!(log.get_decided_idx().unwrap(), 4);
    assert_eq!(log.get_compacted_idx().unwrap(), 2);
    assert_eq!(log.get_stopsign().unwrap(), Some(stopsign));
    assert_eq!(log.get_log_len().unwrap(), 5);
    let expected: Vec<Command> = [cmd(2), cmd(3), cmd(10), cmd(11), cmd(12)].into();
    assert_eq!(log.get_suffix(2).unwrap(), expected);
}

/// A batch that fails part-way writes nothing: here the last operation is a
/// trim below the first index (a call OmniPaxos never makes, which panics),
/// and the append and decided index staged before it are neither on disk nor
/// in the caches.
#[test]
fn a_batch_that_fails_part_way_writes_nothing() {
    let mut disk = Disk::new();
    disk.log.append_entries(cmds(0..4)).unwrap();
    disk.log.trim(2).unwrap();
    let failed = std::panic::catch_unwind(AssertUnwindSafe(|| {
        disk.log.write_atomically(vec![
            StorageOp::AppendEntries(cmds(4..6)),
            StorageOp::SetDecidedIndex(5),
            StorageOp::Trim(1),
        ])
    }));
    assert!(failed.is_err(), "a trim below the first index is refused");

    let check = |log: &LogStore| {
        assert_eq!(log.get_log_len().unwrap(), 2);
        assert_eq!(log.get_decided_idx().unwrap(), 0);
        assert_eq!(log.get_suffix(2).unwrap(), cmds(2..4));
    };
    check(&disk.log);
    check(&disk.restart().log);
}

/// After a trim, indexes stay absolute: entry i is still asked for as i, the
/// length counts only what is left, and what was trimmed reads as empty.
#[test]
fn a_trimmed_log_keeps_absolute_indexes() {
    let mut disk = Disk::new();
    disk.log.append_entries(cmds(0..10)).unwrap();
    disk.log.trim(4).unwrap();

    let check = |log: &LogStore| {
        assert_eq!(log.get_log_len().unwrap(), 6);
        assert_eq!(log.get_entries(4, 6).unwrap(), cmds(4..6));
        assert_eq!(log.get_entries(8, 10).unwrap(), cmds(8..10));
        assert_eq!(log.get_suffix(7).unwrap(), cmds(7..10));
        assert!(log.get_entries(2, 6).unwrap().is_empty(), "partly trimmed");
        assert!(log.get_entries(8, 11).unwrap().is_empty(), "partly past the end");
        assert!(log.get_entries(6, 5).unwrap().is_empty(), "reversed");
        assert!(log.get_suffix(10).unwrap().is_empty(), "at the end");
    };
    check(&disk.log);
    check(&disk.restart().log);
}

/// A trim past the end empties the log, which then continues at the trim
/// index, as in MemoryStorage; a restart finds it there.
#[test]
fn a_trim_past_the_end_moves_the_log_forward() {
    let mut disk = Disk::new();
    disk.log.append_entries(cmds(0..3)).unwrap();
    disk.log.trim(7).unwrap();
    assert_eq!(disk.log.get_log_len().unwrap(), 0);

    let mut disk = disk.restart();
    disk.log.append_entry(cmd(7)).unwrap();
    assert_eq!(disk.log.get_log_len().unwrap(), 1);
    assert_eq!(disk.log.get_entries(7, 8).unwrap(), vec![cmd(7)]);
    assert_eq!(disk.restart().log.get_suffix(7).unwrap(), vec![cmd(7)]);
}

/// A log entry that no longer decodes is an error naming its index, from
/// every read that touches it; reads that do not touch it still work.
#[test]
fn a_corrupt_entry_is_an_error_naming_it() {
    let mut disk = Disk::new();
    disk.log.append_entries(cmds(0..6)).unwrap();
    let Disk { dir, log } = disk;
    drop(log);
    with_raw_db(dir.path(), |db| {
        let cf = db.cf_handle(CF_LOG).unwrap();
        db.put_cf(cf, 3u64.to_be_bytes(), [0xff, 0xff, 0xff]).unwrap();
    });

    let log = open_log(dir.path()).unwrap();
    let err = log.get_entries(2, 5).unwrap_err().to_string();
    assert!(err.contains("log entry 3"), "{err}");
    let err = log.get_suffix(0).unwrap_err().to_string();
    assert!(err.contains("log entry 3"), "{err}");
    assert_eq!(log.get_entries(4, 6).unwrap(), cmds(4..6));
}

/// An entry gone from the middle of the log (a hole) is an error naming it.
#[test]
fn a_hole_in_the_log_is_an_error_naming_it() {
    let mut disk = Disk::new();
    disk.log.append_entries(cmds(0..6)).unwrap();
    let Disk { dir, log } = disk;
    drop(log);
    with_raw_db(dir.path(), |db| {
        let cf = db.cf_handle(CF_LOG).unwrap();
        db.delete_cf(cf, 2u64.to_be_bytes()).unwrap();
    });

    let log = open_log(dir.path()).unwrap();
    let err = log.get_entries(0, 4).unwrap_err().to_string();
    assert!(err.contains("log entry 2 is missing"), "{err}");
}

/// Corrupt metadata stops the store from opening, with a message naming the
/// value, instead of handing OmniPaxos a wrong promise.
#[test]
fn corrupt_metadata_fails_the_open_naming_it() {
    let disk = Disk::new();
    let Disk { dir, log } = disk;
    drop(log);
    with_raw_db(dir.path(), |db| {
        let cf = db.cf_handle(CF_LOG_META).unwrap();
        db.put_cf(cf, b"promise", [0xff; 3]).unwrap();
        db.put_cf(cf, b"decided_idx", [1, 2, 3]).unwrap();
    });
    let err = open_log(dir.path()).err().expect("the open fails").to_string();
    assert!(err.contains("decided_idx") || err.contains("promise"), "{err}");

    with_raw_db(dir.path(), |db| {
        let cf = db.cf_handle(CF_LOG_META).unwrap();
        db.put_cf(cf, b"decided_idx", 9u64.to_be_bytes()).unwrap();
    });
    let err = open_log(dir.path()).err().expect("the open fails").to_string();
    assert!(err.contains("log_meta 'promise'"), "{err}");
}

/// A log whose first entry is missing (later ones present) is refused at open.
#[test]
fn a_log_missing_its_first_entry_fails_the_open() {
    let mut disk = Disk::new();
    disk.log.append_entries(cmds(0..6)).unwrap();
    disk.log.trim(3).unwrap();
    let Disk { dir, log } = disk;
    drop(log);
    with_raw_db(dir.path(), |db| {
        let cf = db.cf_handle(CF_LOG).unwrap();
        db.delete_cf(cf, 3u64.to_be_bytes()).unwrap();
    });
    let err = open_log(dir.path()).err().expect("the open fails").to_string();
    assert!(err.contains("first entry 3 is gone"), "{err}");
}

/// Entries the state machine has not applied stay on disk when OmniPaxos
/// compacts past them, but only those decided before the compaction (later
/// ones may be stale); they survive a restart, are read back, and go once
/// released.
#[test]
fn unapplied_decided_entries_are_kept_when_compacted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.set_log_retention(2);
        let mut log = LogStore::open(&store).unwrap();
        log.append_entries(cmds(0..8)).unwrap();
        log.set_decided_idx(5).unwrap();
        log.write_atomically(vec![StorageOp::Trim(7), StorageOp::SetCompactedIdx(7)]).unwrap();
        // Below the first index for OmniPaxos…
        assert!(log.get_entries(2, 5).unwrap().is_empty());
        // …kept for the state machine: decided entries 2..5, not 5 and 6.
        let kept = read_retained(&store, 2, 7).unwrap();
        assert_eq!(kept, cmds(2..5));
        assert!(read_retained(&store, 0, 2).unwrap().is_empty(), "applied ones go");
    }
    let store = Store::open(dir.path()).unwrap();
    let log = LogStore::open(&store).expect("a log with kept entries below its first index opens");
    assert_eq!(log.get_log_len().unwrap(), 1, "entry 7 is the log");
    assert_eq!(read_retained(&store, 2, 7).unwrap(), cmds(2..5));
    release_retained(&store, 4).unwrap();
    assert!(read_retained(&store, 2, 7).unwrap().is_empty());
    assert_eq!(read_retained(&store, 4, 7).unwrap(), cmds(4..5));
    drop(log);
}

/// The snapshot slot round-trips the compaction marker and clears, like the other
/// optional values.
#[test]
fn the_snapshot_slot_is_stored_and_cleared() {
    let mut disk = Disk::new();
    disk.log.set_snapshot(Some(CompactionMarker)).unwrap();
    let mut disk = disk.restart();
    assert_eq!(disk.log.get_snapshot().unwrap(), Some(CompactionMarker));
    disk.log.set_snapshot(None).unwrap();
    assert_eq!(disk.restart().log.get_snapshot().unwrap(), None);
}
