//! Scenarios for the fixes in Cairn's copy of OmniPaxos
//! (`vendor/omnipaxos/PATCHES.md`): one OmniPaxos leader over the node's real
//! log store, fed hand-made messages in the order that broke it, and checked
//! on the log syncs it sends. The simulator found each bug in a whole cluster
//! (the seeds are in `crates/sim/tests/sim.rs`); these pin the mechanism down.

use cairn_storage::log_store::LogStore;
use cairn_storage::{Command, CommandId, CompactionMarker, Footprint, Op, Store};
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::sequence_paxos::{
    AcceptSync, PaxosMessage, PaxosMsg, PrepareReq, Promise,
};
use omnipaxos::messages::Message;
use omnipaxos::storage::SnapshotType;
use omnipaxos::util::LogSync;
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ServerConfig};
use tempfile::TempDir;

const CONFIGURATION_ID: u32 = 1;

/// Node 1 of `members`, over a fresh store, not yet leader.
fn node_one(members: &[u64]) -> (OmniPaxos<Command, LogStore>, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = Store::open_with(dir.path(), Footprint::Small).expect("the store opens");
    let log = LogStore::open(&store).expect("the log opens");
    let config = OmniPaxosConfig {
        cluster_config: ClusterConfig {
            configuration_id: CONFIGURATION_ID,
            nodes: members.to_vec(),
            flexible_quorum: None,
        },
        server_config: ServerConfig { pid: 1, ..ServerConfig::default() },
    };
    (config.build(log).expect("a valid configuration"), dir)
}

fn write(seq: u64) -> Command {
    let op = Op::KvPut { key: format!("k{seq}"), value: vec![1] };
    Command::new(Some(CommandId { session: 1, seq }), op)
}

fn deliver(omni: &mut OmniPaxos<Command, LogStore>, from: u64, msg: PaxosMsg<Command>) {
    omni.handle_incoming(Message::SequencePaxos(PaxosMessage { from, to: 1, msg }));
}

fn promise(
    ballot: Ballot,
    n_accepted: Ballot,
    decided: usize,
    accepted: usize,
) -> Promise<Command> {
    Promise { n: ballot, n_accepted, decided_idx: decided, accepted_idx: accepted, log_sync: None }
}

/// The log syncs node 1 sent, by receiver.
fn accept_syncs(omni: &mut OmniPaxos<Command, LogStore>) -> Vec<(u64, AcceptSync<Command>)> {
    let mut out = Vec::new();
    omni.take_outgoing_messages(&mut out);
    out.into_iter()
        .filter_map(|message| match message {
            Message::SequencePaxos(PaxosMessage {
                to, msg: PaxosMsg::AcceptSync(sync), ..
            }) => Some((to, sync)),
            _ => None,
        })
        .collect()
}

/// Patch 1 (seed 7001029): a new leader adopts the log of the best promise,
/// a compaction marker through 66 from a node that decided 66; that node's
/// promise is then reset by its `PrepareReq` before the majority comes in.
/// The leader must still count 66 as decided, and every sync it sends must
/// start where its log holds entries: before the fix it took 0 as decided
/// and synced a follower from 0 with no entries, although its log started
/// at 66, so the follower put the leader's next entry at index 0.
#[test]
fn a_reset_promise_never_leaves_the_log_compacted_past_its_decided_index() {
    let (mut omni, _dir) = node_one(&[1, 2, 3, 4, 5]);
    omni.try_become_leader();
    let ballot = omni.get_promise();
    assert_eq!(ballot.pid, 1, "node 1 runs for leader");
    let mut discard = Vec::new();
    omni.take_outgoing_messages(&mut discard);
    // Proposed during the prepare phase: appended after the adopted log.
    omni.append(write(1)).expect("appended");

    let older_round = Ballot::with(CONFIGURATION_ID, 0, 0, 2);
    let best = Promise {
        log_sync: Some(LogSync {
            decided_snapshot: Some(SnapshotType::Complete(CompactionMarker)),
            suffix: Vec::new(),
            sync_idx: 66,
            stopsign: None,
        }),
        ..promise(ballot, older_round, 66, 66)
    };
    deliver(&mut omni, 2, PaxosMsg::Promise(best));
    deliver(&mut omni, 2, PaxosMsg::PrepareReq(PrepareReq { n: ballot }));
    deliver(&mut omni, 3, PaxosMsg::Promise(promise(ballot, Ballot::default(), 0, 0)));
    deliver(&mut omni, 4, PaxosMsg::Promise(promise(ballot, Ballot::default(), 0, 0)));

    assert_eq!(omni.get_current_leader(), Some((1, true)), "node 1 leads, in the accept phase");
    assert_eq!(omni.get_compacted_idx(), 66, "the adopted log is compacted through 66");
    assert!(
        omni.get_decided_idx() >= omni.get_compacted_idx(),
        "decided index {} below the compacted index {}",
        omni.get_decided_idx(),
        omni.get_compacted_idx()
    );
    // A follower that decided nothing promises late: its sync must carry
    // the marker through 66 and then the leader's own entry.
    accept_syncs(&mut omni);
    deliver(&mut omni, 5, PaxosMsg::Promise(promise(ballot, Ballot::default(), 0, 0)));
    let syncs = accept_syncs(&mut omni);
    let (_, sync) = syncs.iter().find(|(to, _)| *to == 5).expect("a sync for node 5");
    assert_eq!(sync.log_sync.sync_idx, 66, "{sync:?}");
    assert!(sync.log_sync.decided_snapshot.is_some(), "{sync:?}");
    assert_eq!(sync.log_sync.suffix, vec![write(1)], "{sync:?}");
}

/// Patch 2 (seed 13): a leader whose log ends with an accepted StopSign
/// syncs a follower of its own round that accepted the StopSign too. The
/// sync must start at the StopSign's slot and carry it once: before the fix
/// it started one past it and the follower counted the slot twice.
#[test]
fn a_log_sync_never_counts_a_stopsign_slot_twice() {
    let (mut omni, _dir) = node_one(&[1, 2, 3]);
    omni.try_become_leader();
    let ballot = omni.get_promise();
    deliver(&mut omni, 2, PaxosMsg::Promise(promise(ballot, Ballot::default(), 0, 0)));
    assert_eq!(omni.get_current_leader(), Some((1, true)), "node 1 leads, in the accept phase");
    omni.append(write(1)).expect("appended");
    omni.append(write(2)).expect("appended");
    let next = ClusterConfig { configuration_id: 2, nodes: vec![1, 2], flexible_quorum: None };
    omni.reconfigure(next, Some(b"next".to_vec())).expect("a StopSign is appended");
    assert_eq!(omni.get_accepted_idx(), 3, "two entries and the StopSign's slot");
    accept_syncs(&mut omni);

    // Node 3 accepted all three slots in this round, then promised again.
    deliver(&mut omni, 3, PaxosMsg::Promise(promise(ballot, ballot, 0, 3)));
    let syncs = accept_syncs(&mut omni);
    let (_, sync) = syncs.iter().find(|(to, _)| *to == 3).expect("a sync for node 3");
    assert_eq!(sync.log_sync.sync_idx, 2, "the sync starts at the StopSign's slot: {sync:?}");
    assert!(sync.log_sync.suffix.is_empty(), "{sync:?}");
    assert!(sync.log_sync.stopsign.is_some(), "{sync:?}");
}
