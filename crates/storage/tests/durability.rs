//! Which writes owe a sync under deferred durability, and what a power cut
//! keeps: the durable copy ([`Store::keep_durable_copy`]) holds exactly what
//! was synced, so the simulator's power cuts lose what a real one may.

use std::path::Path;

use cairn_storage::log_store::LogStore;
use cairn_storage::{Command, CommandId, Durability, Op, StateMachine, Store};
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::storage::Storage;
use tempfile::TempDir;

fn cmd(n: u64) -> Command {
    Command::new(
        Some(CommandId { session: 1, seq: n }),
        Op::KvPut { key: format!("k{n}"), value: n.to_be_bytes().to_vec() },
    )
}

fn deferred(dir: &Path) -> Store {
    let store = Store::open(dir).expect("the store opens");
    store.set_durability(Durability::Deferred);
    store
}

/// Opens what the durable copy holds, as a node would after a power cut.
fn after_power_cut(copy: &Path) -> (Store, LogStore) {
    let store = Store::open(copy).expect("the durable copy opens");
    let log = LogStore::open(&store).expect("its log opens");
    (store, log)
}

#[test]
fn log_appends_and_promises_owe_a_sync_and_the_decided_index_does_not() {
    let dir = TempDir::new().unwrap();
    let store = deferred(dir.path());
    let mut log = LogStore::open(&store).unwrap();
    assert!(store.all_synced());
    assert!(!store.sync_owed().unwrap(), "nothing was written");

    log.append_entries(vec![cmd(1), cmd(2)]).unwrap();
    assert!(!store.all_synced());
    assert!(store.sync_owed().unwrap(), "an append owes a sync");
    assert!(store.all_synced());
    assert!(!store.sync_owed().unwrap(), "the sync paid it");

    log.set_decided_idx(2).unwrap();
    assert!(!store.all_synced());
    assert!(!store.sync_owed().unwrap(), "the decided index is learnt again");

    log.set_promise(Ballot::with(1, 2, 0, 1)).unwrap();
    assert!(store.sync_owed().unwrap(), "a promise owes a sync");
}

#[test]
fn applying_entries_owes_no_sync() {
    let dir = TempDir::new().unwrap();
    let store = deferred(dir.path());
    let mut sm = StateMachine::open(store.clone()).unwrap();
    sm.apply(&[(1, cmd(1))]).unwrap();
    assert!(!store.all_synced(), "the write waits for a sync");
    assert!(!store.sync_owed().unwrap(), "recovery replays the log");
    store.sync().unwrap();
    assert!(store.all_synced());
}

#[test]
fn a_power_cut_keeps_what_was_synced_and_loses_the_rest() {
    let dir = TempDir::new().unwrap();
    let copies = TempDir::new().unwrap();
    let copy = copies.path().join("db");
    let store = deferred(dir.path());
    let mut log = LogStore::open(&store).unwrap();
    log.append_entries(vec![cmd(1)]).unwrap();
    store.keep_durable_copy(&copy).unwrap();

    log.append_entries(vec![cmd(2), cmd(3)]).unwrap();
    store.sync().unwrap();
    log.append_entries(vec![cmd(4)]).unwrap();
    log.set_decided_idx(3).unwrap();
    let mut sm = StateMachine::open(store.clone()).unwrap();
    sm.apply(&[(1, cmd(1))]).unwrap();
    assert_eq!(log.get_log_len().unwrap(), 4);

    let (cut, log_after) = after_power_cut(&copy);
    assert_eq!(log_after.get_log_len().unwrap(), 3, "the synced appends stay, the last goes");
    assert_eq!(log_after.get_decided_idx().unwrap(), 0, "the decided index was not synced");
    let sm_after = StateMachine::open(cut.clone()).unwrap();
    assert_eq!(sm_after.applied_index(), 0, "applying was not synced");
    drop((sm_after, log_after, cut));

    // A synced write makes everything before it durable too.
    store.stop_durable_copy();
    store.keep_durable_copy(&copy).unwrap();
    store.set_cluster_config(b"settings").unwrap();
    let (cut, log_after) = after_power_cut(&copy);
    assert_eq!(log_after.get_log_len().unwrap(), 4);
    assert_eq!(log_after.get_decided_idx().unwrap(), 3);
    assert_eq!(StateMachine::open(cut.clone()).unwrap().applied_index(), 1);
    assert_eq!(cut.cluster_config().unwrap().as_deref(), Some(&b"settings"[..]));
}
