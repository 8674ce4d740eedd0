//! Scenarios for the driver: three drivers in one thread, each on its own
//! RocksDB, joined by an in-memory network with one tick of latency that can
//! cut links. They check what clients of a replicated node see: writes on any
//! node answered once applied there, linearizable reads (after a confirmation
//! round, or through a barrier), refusals when no quorum is in sight, cancelled requests, and progress after
//! the leader stops.

use std::collections::{BTreeMap, BTreeSet};

use cairn_consensus::driver::{
    Answer, Blocked, Driver, DriverConfig, Hello, Output, PeerMessage, RequestId,
};
use cairn_consensus::replica::{NodeId, Timing};
use cairn_consensus::Error;
use cairn_consensus::Membership;
use cairn_storage::{Command, CommandId, Durability, Op, Outcome, StateMachine, Store};
use tempfile::TempDir;

const NODES: [NodeId; 3] = [1, 2, 3];
const TIMING: Timing =
    Timing { election_timeout_ticks: 5, resend_timeout_ticks: 10, repropose_timeout_ticks: 15 };
const SILENCE_TICKS: u64 = 15;

/// Peer addresses are never dialled here: the network is in memory.
fn address(id: NodeId) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", 7100 + id).parse().unwrap()
}

fn membership() -> Membership {
    Membership::new_cluster(NODES.iter().map(|&id| (id, address(id))).collect()).unwrap()
}

struct Net {
    drivers: BTreeMap<NodeId, Driver>,
    /// Drivers that no longer run (crashed), by id.
    down: BTreeSet<NodeId>,
    _dirs: Vec<TempDir>,
    /// Messages to deliver at the next step: (from, to, message).
    wire: Vec<(NodeId, NodeId, PeerMessage)>,
    cut: BTreeSet<(NodeId, NodeId)>,
    answers: BTreeMap<RequestId, (NodeId, Answer)>,
    next_request: RequestId,
}

impl Net {
    fn new(seed: u64) -> Net {
        Net::with(seed, |_| {})
    }

    fn with(seed: u64, tune: impl Fn(&mut DriverConfig)) -> Net {
        let mut drivers = BTreeMap::new();
        let mut dirs = Vec::new();
        for id in NODES {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            membership().begin(&store).unwrap();
            // As a replicated node runs: one sync per poll.
            store.set_durability(Durability::Deferred);
            let sm = StateMachine::open(store).unwrap();
            let me = Hello { api_address: format!("api-{id}"), ..Hello::default() };
            let mut config =
                DriverConfig::new(id, membership(), TIMING, seed, me, dir.path().join("snapshots"));
            config.peer_silence_ticks = SILENCE_TICKS;
            tune(&mut config);
            drivers.insert(id, Driver::open(config, sm).unwrap());
            dirs.push(dir);
        }
        Net {
            drivers,
            down: BTreeSet::new(),
            _dirs: dirs,
            wire: Vec::new(),
            cut: BTreeSet::new(),
            answers: BTreeMap::new(),
            next_request: 0,
        }
    }

    /// One tick: deliver what is on the wire, tick everyone, poll everyone.
    fn step(&mut self) {
        for (from, to, message) in std::mem::take(&mut self.wire) {
            if self.down.contains(&to) || self.cut.contains(&(from, to)) {
                continue;
            }
            // Nothing listens for a node that has not started yet.
            if let Some(driver) = self.drivers.get_mut(&to) {
                driver.step(from, message).expect("step");
            }
        }
        for (&id, driver) in self.drivers.iter_mut() {
            if self.down.contains(&id) {
                continue;
            }
            driver.tick();
            let mut out = Output::default();
            driver.poll(&mut out).expect("poll");
            self.wire.extend(out.messages.into_iter().map(|(to, m)| (id, to, m)));
            for (request, answer) in out.answers {
                assert!(
                    self.answers.insert(request, (id, answer)).is_none(),
                    "request {request} was answered twice"
                );
            }
        }
    }

    fn run(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    fn run_until(&mut self, ticks: u64, what: &str, done: impl Fn(&Net) -> bool) {
        for _ in 0..ticks {
            if done(self) {
                return;
            }
            self.step();
        }
        assert!(done(self), "not within {ticks} ticks: {what}");
    }

    /// Starts node `id` on an empty store in `membership` (as `--join` does
    /// with the membership it is answered).
    fn add_node(&mut self, id: NodeId, membership: Membership, seed: u64) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_durability(Durability::Deferred);
        membership.begin(&store).unwrap();
        let sm = StateMachine::open(store).unwrap();
        let me = Hello { api_address: format!("api-{id}"), ..Hello::default() };
        let mut config =
            DriverConfig::new(id, membership, TIMING, seed, me, dir.path().join("snapshots"));
        config.peer_silence_ticks = SILENCE_TICKS;
        self.drivers.insert(id, Driver::open(config, sm).unwrap());
        self._dirs.push(dir);
    }

    /// Asks `via` to move to `members`; answers the new membership.
    fn change(&mut self, via: NodeId, members: Vec<NodeId>) -> Membership {
        let members = members.into_iter().map(|id| (id, address(id))).collect();
        let request = self.submit(via, |d, r, out| d.change_membership(r, members, out));
        self.run_until(1000, "the membership change takes effect", |n| {
            n.answers.contains_key(&request)
        });
        match &self.answers[&request].1 {
            Answer::Reconfigured(membership) => membership.clone(),
            other => panic!("a membership change answered {other:?}"),
        }
    }

    /// The members of the newest configuration any node is in.
    fn members(&self) -> Vec<NodeId> {
        let newest =
            self.drivers.values().map(|d| d.membership()).max_by_key(|m| m.configuration_id);
        newest.unwrap().ids()
    }

    fn leader(&self) -> Option<NodeId> {
        self.drivers
            .iter()
            .filter(|(id, _)| !self.down.contains(id))
            .find(|(_, d)| d.replica().is_leader())
            .map(|(id, _)| *id)
    }

    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        self.next_request
    }

    fn submit(
        &mut self,
        node: NodeId,
        f: impl FnOnce(&mut Driver, RequestId, &mut Output),
    ) -> RequestId {
        let request = self.request();
        let mut out = Output::default();
        f(self.drivers.get_mut(&node).unwrap(), request, &mut out);
        for (r, answer) in out.answers {
            self.answers.insert(r, (node, answer));
        }
        self.wire.extend(out.messages.into_iter().map(|(to, m)| (node, to, m)));
        request
    }

    fn write(&mut self, node: NodeId, id: CommandId, key: &str, value: &str) -> RequestId {
        let command =
            Command::new(Some(id), Op::KvPut { key: key.into(), value: value.as_bytes().to_vec() });
        self.submit(node, |d, r, out| d.propose(r, command, out))
    }

    fn read(&mut self, node: NodeId) -> RequestId {
        self.submit(node, |d, r, out| d.read(r, out))
    }

    fn open_session(&mut self, node: NodeId) -> u64 {
        let request = self.submit(node, |d, r, out| d.open_session(r, out));
        self.run_until(200, "a session opens", |net| net.answers.contains_key(&request));
        match &self.answers[&request].1 {
            Answer::Applied(applied) => match applied.outcome {
                Outcome::SessionOpened { session } => session,
                ref other => panic!("opened a session: {other:?}"),
            },
            other => panic!("opened a session: {other:?}"),
        }
    }

    fn kv(&self, node: NodeId, key: &str) -> Option<String> {
        let store = self.drivers[&node].state_machine().store();
        store.kv_get(key).unwrap().map(|v| String::from_utf8(v).unwrap())
    }

    fn isolate(&mut self, node: NodeId) {
        let all: Vec<NodeId> = self.drivers.keys().copied().collect();
        for other in all {
            if other != node {
                self.cut.insert((node, other));
                self.cut.insert((other, node));
            }
        }
    }

    /// Runs until every node has heard from a majority.
    fn settle(&mut self) -> NodeId {
        self.run_until(300, "a leader with a quorum in sight everywhere", |net| {
            net.leader().is_some()
                && net
                    .drivers
                    .iter()
                    .filter(|(id, _)| !net.down.contains(id))
                    .all(|(_, d)| d.quorum_in_sight())
        });
        self.leader().unwrap()
    }
}

fn applied_index(answer: &Answer) -> u64 {
    match answer {
        Answer::Applied(applied) => applied.index,
        other => panic!("expected an applied write, got {other:?}"),
    }
}

#[test]
fn writes_on_any_node_are_answered_once_applied_there() {
    let mut net = Net::new(1);
    net.settle();
    let session = net.open_session(2);
    let mut requests = Vec::new();
    for (seq, node) in [(1, 1), (2, 2), (3, 3)] {
        let id = CommandId { session, seq };
        let request = net.write(node, id, &format!("k{seq}"), "v");
        net.run_until(200, "the write is answered", |n| n.answers.contains_key(&request));
        requests.push((node, request));
    }
    for (node, request) in requests {
        let (answered_by, answer) = &net.answers[&request];
        assert_eq!(*answered_by, node);
        let index = applied_index(answer);
        assert!(net.drivers[&node].state_machine().applied_index() >= index);
    }
    net.run_until(100, "every node applies everything", |n| {
        let applied: BTreeSet<u64> =
            n.drivers.values().map(|d| d.state_machine().applied_index()).collect();
        applied.len() == 1
    });
    for node in NODES {
        assert_eq!(net.kv(node, "k3").as_deref(), Some("v"));
    }
}

/// The kind of a replica message, for the tests that look at what a turn sends.
fn paxos_kind(message: &PeerMessage) -> Option<&'static str> {
    use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
    use omnipaxos::messages::Message;
    match message {
        PeerMessage::Paxos {
            message: Message::SequencePaxos(PaxosMessage { msg, .. }), ..
        } => Some(match msg {
            PaxosMsg::AcceptDecide(_) => "AcceptDecide",
            PaxosMsg::Accepted(_) => "Accepted",
            PaxosMsg::Decide(_) => "Decide",
            _ => "other",
        }),
        _ => None,
    }
}

/// A write waits for one fsync after another no more than twice: the leader
/// sends its accepts before it syncs its own copy, a follower answers only
/// after its sync, and the leader answers the client from a turn that only
/// applies, with no sync at all.
#[test]
fn a_write_waits_for_the_follower_s_sync_and_the_leader_s_runs_beside_it() {
    let mut net = Net::new(11);
    let leader = net.settle();
    let session = net.open_session(leader);
    net.run(20);
    let follower = *NODES.iter().find(|&&id| id != leader).unwrap();
    net.drivers[&leader].state_machine().store().sync().unwrap();
    let request = net.write(leader, CommandId { session, seq: 1 }, "k", "v");

    // The leader's turn: its accepts leave before its sync.
    let driver = net.drivers.get_mut(&leader).unwrap();
    let mut out = Output::default();
    driver.prepare(&mut out).unwrap();
    let store = driver.state_machine().store().clone();
    let early: Vec<_> = out.messages.iter().filter_map(|(_, m)| paxos_kind(m)).collect();
    assert!(early.contains(&"AcceptDecide"), "the accepts leave first: {early:?}");
    assert!(!store.all_synced(), "the entry is not yet on the leader's disk");
    driver.commit(&mut out).unwrap();
    assert!(store.all_synced(), "the leader syncs its copy in the same turn");
    let to_follower: Vec<PeerMessage> =
        out.messages.into_iter().filter(|(to, _)| *to == follower).map(|(_, m)| m).collect();

    // The follower's turn: its acceptance waits for its sync.
    let driver = net.drivers.get_mut(&follower).unwrap();
    for message in to_follower {
        driver.step(leader, message).unwrap();
    }
    let mut out = Output::default();
    driver.prepare(&mut out).unwrap();
    assert!(
        !out.messages.iter().any(|(_, m)| paxos_kind(m) == Some("Accepted")),
        "an acceptance must not leave before the sync"
    );
    driver.commit(&mut out).unwrap();
    assert!(driver.state_machine().store().all_synced());
    let accepted: Vec<PeerMessage> = out
        .messages
        .into_iter()
        .filter(|(to, m)| *to == leader && paxos_kind(m) == Some("Accepted"))
        .map(|(_, m)| m)
        .collect();
    assert!(!accepted.is_empty(), "the follower accepts after its sync");

    // The leader's next turn decides, applies and answers, without a sync.
    let driver = net.drivers.get_mut(&leader).unwrap();
    for message in accepted {
        driver.step(follower, message).unwrap();
    }
    let mut out = Output::default();
    driver.prepare(&mut out).unwrap();
    assert!(
        out.answers.iter().any(|(r, a)| *r == request && matches!(a, Answer::Applied(_))),
        "the answer leaves before any sync: {:?}",
        out.answers
    );
    driver.commit(&mut out).unwrap();
    assert!(!store.all_synced(), "applying owes no sync, so the turn made none");
}

#[test]
fn a_read_waits_for_every_write_acknowledged_before_it() {
    let mut net = Net::new(2);
    let leader = net.settle();
    let follower = NODES.into_iter().find(|n| *n != leader).unwrap();
    let session = net.open_session(leader);
    // The follower falls behind: it hears nothing from the leader's side for
    // a while, but not long enough to refuse requests.
    for other in NODES {
        if other != follower {
            net.cut.insert((other, follower));
        }
    }
    let write = net.write(leader, CommandId { session, seq: 1 }, "x", "1");
    net.run_until(100, "the write is acknowledged", |n| n.answers.contains_key(&write));
    let acknowledged_at = applied_index(&net.answers[&write].1);
    assert_eq!(net.kv(follower, "x"), None, "the follower is behind");
    assert!(net.drivers[&follower].quorum_in_sight(), "still within the silence");
    let read = net.read(follower);
    net.run(3);
    assert!(!net.answers.contains_key(&read), "a read cannot be answered while behind");
    net.cut.clear();
    net.run_until(200, "the read is ready", |n| n.answers.contains_key(&read));
    match &net.answers[&read] {
        (node, Answer::ReadReady { index }) => {
            assert_eq!(*node, follower);
            assert!(*index >= acknowledged_at, "the read is served after the write applied");
        }
        other => panic!("expected a ready read, got {other:?}"),
    }
    assert_eq!(net.kv(follower, "x").as_deref(), Some("1"));
}

/// Reads on any node, once the leader knows its peers answer rounds, are
/// served after a confirmation round: the log does not grow.
#[test]
fn reads_leave_the_log_as_it_is() {
    let mut net = Net::new(4);
    let leader = net.settle();
    let follower = NODES.into_iter().find(|n| *n != leader).unwrap();
    let session = net.open_session(leader);
    let write = net.write(follower, CommandId { session, seq: 1 }, "r", "1");
    net.run_until(200, "the write is acknowledged", |n| n.answers.contains_key(&write));
    // The first reads teach the nodes that their peers answer rounds.
    for node in NODES {
        let read = net.read(node);
        net.run_until(200, "a first read", |n| n.answers.contains_key(&read));
    }
    net.run(10);
    let decided: Vec<u64> = net.drivers.values().map(|d| d.replica().decided_index()).collect();
    let before: BTreeMap<NodeId, u64> =
        net.drivers.iter().map(|(id, d)| (*id, d.read_stats().read_index)).collect();
    let mut reads = Vec::new();
    for _ in 0..5 {
        for node in NODES {
            reads.push(net.read(node));
        }
        net.step();
    }
    net.run_until(200, "every read is ready", |n| reads.iter().all(|r| n.answers.contains_key(r)));
    for read in &reads {
        assert!(matches!(net.answers[read].1, Answer::ReadReady { .. }), "{:?}", net.answers[read]);
    }
    let after: Vec<u64> = net.drivers.values().map(|d| d.replica().decided_index()).collect();
    assert_eq!(decided, after, "reads appended to the log");
    for (id, driver) in &net.drivers {
        assert_eq!(driver.read_stats().read_index - before[id], 5, "node {id}'s reads");
    }
    assert_eq!(net.kv(follower, "r").as_deref(), Some("1"));
}

/// A leader cut off from the others, before it notices, gets no answer to
/// its round: it serves no read until it has what the new leader's majority
/// acknowledged.
#[test]
fn a_leader_cut_off_serves_no_read_it_cannot_confirm() {
    let mut net = Net::new(5);
    let old = net.settle();
    let session = net.open_session(old);
    let write = net.write(old, CommandId { session, seq: 1 }, "z", "1");
    net.run_until(200, "the write is acknowledged", |n| n.answers.contains_key(&write));
    let read = net.read(old);
    net.run_until(200, "a first read", |n| n.answers.contains_key(&read));
    net.isolate(old);
    let read = net.read(old);
    let new = loop {
        net.step();
        let leader = net
            .drivers
            .iter()
            .find(|(id, d)| **id != old && d.replica().is_leader())
            .map(|(id, _)| *id);
        if let Some(leader) = leader {
            break leader;
        }
        assert!(net.drivers[&1].now_ticks() < 1000, "no new leader");
    };
    let write = net.write(new, CommandId { session, seq: 2 }, "z", "2");
    net.run_until(200, "the new leader writes", |n| n.answers.contains_key(&write));
    net.run(2 * SILENCE_TICKS);
    match net.answers.get(&read) {
        None | Some((_, Answer::Failed(_))) => {}
        Some(other) => panic!("a cut-off leader answered a read: {other:?}"),
    }
    assert_eq!(net.kv(old, "z").as_deref(), Some("1"));
    net.cut.clear();
    net.run_until(300, "the old leader rejoins", |n| n.drivers[&old].quorum_in_sight());
    let read = net.read(old);
    net.run_until(300, "the old leader reads again", |n| n.answers.contains_key(&read));
    assert!(matches!(net.answers[&read].1, Answer::ReadReady { .. }));
    assert_eq!(net.kv(old, "z").as_deref(), Some("2"));
}

#[test]
fn a_node_without_a_quorum_in_sight_refuses_at_once_and_recovers() {
    let mut net = Net::new(3);
    net.settle();
    let session = net.open_session(1);
    net.isolate(3);
    net.run(SILENCE_TICKS + 2);
    let write = net.write(3, CommandId { session, seq: 1 }, "y", "1");
    let read = net.read(3);
    for request in [write, read] {
        match &net.answers[&request].1 {
            Answer::Failed(Error::Unavailable { .. }) => {}
            other => panic!("expected no quorum, got {other:?}"),
        }
    }
    assert_eq!(net.drivers[&3].replica().pending_len(), 0, "nothing was proposed");
    // The majority side carries on.
    let write = net.write(1, CommandId { session, seq: 2 }, "y", "2");
    net.run_until(200, "the majority writes", |n| n.answers.contains_key(&write));
    net.cut.clear();
    net.run_until(300, "node 3 rejoins", |n| n.drivers[&3].quorum_in_sight());
    let read = net.read(3);
    net.run_until(300, "node 3 reads again", |n| n.answers.contains_key(&read));
    assert!(matches!(net.answers[&read].1, Answer::ReadReady { .. }));
    assert_eq!(net.kv(3, "y").as_deref(), Some("2"));
}

#[test]
fn a_membership_nobody_asked_for_moves_no_node() {
    let mut net = Net::new(11);
    net.settle();
    // An impostor (or a peer with a bug) posing as member 1 tells node 3
    // that the cluster moved on to node 3 alone: taken, it would split the
    // brain (node 3 deciding alone beside the others' majority).
    let alone = membership().next([(3, address(3))].into_iter().collect(), 0);
    net.drivers.get_mut(&3).unwrap().step(1, PeerMessage::Membership(alone)).unwrap();
    net.run(20);
    assert_eq!(net.drivers[&3].membership(), &membership(), "node 3 stayed in its configuration");
    assert_eq!(net.drivers[&3].blocked(), None);
    // It still writes with the others.
    let session = net.open_session(3);
    let write = net.write(3, CommandId { session, seq: 1 }, "still", "here");
    net.run_until(200, "node 3 writes with its peers", |n| n.answers.contains_key(&write));
    net.run_until(100, "every node applied it", |n| {
        NODES.iter().all(|&id| n.kv(id, "still").is_some())
    });
}

#[test]
fn a_cancelled_request_gets_no_answer_and_is_not_re_proposed() {
    let mut net = Net::new(4);
    net.settle();
    let session = net.open_session(2);
    // Node 2 is cut off but does not know yet: its requests are proposed.
    net.isolate(2);
    let write = net.write(2, CommandId { session, seq: 1 }, "z", "1");
    let read = net.read(2);
    net.run(2);
    assert!(net.drivers[&2].replica().pending_len() >= 1);
    for request in [write, read] {
        net.drivers.get_mut(&2).unwrap().cancel(request);
    }
    assert_eq!(net.drivers[&2].replica().pending_len(), 0);
    assert_eq!(net.drivers[&2].waiting_len(), 0);
    net.cut.clear();
    net.run(300);
    assert!(!net.answers.contains_key(&write) && !net.answers.contains_key(&read));
}

#[test]
fn writes_resume_after_the_leader_stops() {
    let mut net = Net::new(5);
    let leader = net.settle();
    let session = net.open_session(leader);
    net.down.insert(leader);
    let survivor = NODES.into_iter().find(|n| *n != leader).unwrap();
    let write = net.write(survivor, CommandId { session, seq: 1 }, "after", "1");
    net.run_until(500, "a write after the leader stopped", |n| n.answers.contains_key(&write));
    let index = applied_index(&net.answers[&write].1);
    assert!(index > 0);
    let new_leader = net.leader().expect("a new leader");
    assert_ne!(new_leader, leader);
    // The same write again (a client retry) is answered from memory.
    let retry = net.write(survivor, CommandId { session, seq: 1 }, "after", "1");
    net.run_until(200, "the retry is answered", |n| n.answers.contains_key(&retry));
    assert_eq!(applied_index(&net.answers[&retry].1), index);
}

/// Writes `count` keys through `node`, one at a time, each acknowledged.
fn write_many(net: &mut Net, node: NodeId, session: u64, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        let request =
            net.write(node, CommandId { session, seq }, &format!("k{seq}"), &format!("v{seq}"));
        net.run_until(200, "a write is acknowledged", |n| n.answers.contains_key(&request));
        assert!(
            matches!(net.answers[&request].1, Answer::Applied(_)),
            "{:?}",
            net.answers[&request]
        );
    }
}

/// Every node holds the same keys `k{from..to}`.
fn same_state(net: &Net, seqs: std::ops::Range<u64>) {
    let applied: BTreeSet<u64> =
        net.drivers.values().map(|d| d.state_machine().applied_index()).collect();
    assert_eq!(applied.len(), 1, "applied indexes differ: {applied:?}");
    for node in NODES {
        for seq in seqs.clone() {
            assert_eq!(
                net.kv(node, &format!("k{seq}")),
                Some(format!("v{seq}")),
                "node {node}, k{seq}"
            );
        }
    }
}

#[test]
fn logs_stay_bounded_and_a_node_far_behind_catches_up_by_snapshot() {
    let mut net = Net::with(6, |c| {
        c.log_retain_entries = 10;
        c.compact_interval_ticks = 5;
        c.snapshot_chunk_bytes = 200;
    });
    let leader = net.settle();
    let behind = NODES.into_iter().find(|n| *n != leader).unwrap();
    let session = net.open_session(leader);
    net.isolate(behind);
    write_many(&mut net, leader, session, 1..120);
    net.run(20);
    for node in NODES.into_iter().filter(|n| *n != behind) {
        let replica = net.drivers[&node].replica();
        assert!(
            replica.decided_index() - replica.compacted_index() <= 10 + 10,
            "node {node}'s log is bounded: decided {}, compacted {}",
            replica.decided_index(),
            replica.compacted_index()
        );
    }
    net.cut.clear();
    net.run_until(2000, "the node behind catches up", |n| {
        n.drivers[&behind].state_machine().applied_index()
            == n.drivers[&leader].state_machine().applied_index()
    });
    let stats = net.drivers[&behind].catch_up_stats();
    assert!(stats.snapshots_installed >= 1, "caught up by snapshot: {stats:?}");
    // It takes writes again, and every node ends in the same state.
    let write = net.write(behind, CommandId { session, seq: 120 }, "k120", "v120");
    net.run_until(300, "a write on the node that caught up", |n| n.answers.contains_key(&write));
    net.run_until(300, "everyone applies it", |n| {
        n.drivers.values().all(|d| {
            d.state_machine().applied_index() == n.drivers[&leader].state_machine().applied_index()
        })
    });
    same_state(&net, 1..121);
    // Exactly-once survives the snapshot: a retry of an old write is
    // answered from memory on the node that caught up.
    let retry = net.write(behind, CommandId { session, seq: 120 }, "k120", "v120");
    net.run_until(300, "the retry is answered", |n| n.answers.contains_key(&retry));
    assert_eq!(applied_index(&net.answers[&retry].1), applied_index(&net.answers[&write].1));
}

#[test]
fn a_node_a_little_behind_catches_up_from_the_log() {
    let mut net = Net::with(7, |c| {
        c.log_retain_entries = 1000;
        c.compact_interval_ticks = 5;
    });
    let leader = net.settle();
    let behind = NODES.into_iter().find(|n| *n != leader).unwrap();
    let session = net.open_session(leader);
    net.isolate(behind);
    write_many(&mut net, leader, session, 1..40);
    net.cut.clear();
    net.run_until(1000, "the node behind catches up", |n| {
        n.drivers[&behind].state_machine().applied_index()
            == n.drivers[&leader].state_machine().applied_index()
    });
    let stats = net.drivers[&behind].catch_up_stats();
    assert_eq!(stats.snapshots_installed, 0, "no snapshot was needed: {stats:?}");
    same_state(&net, 1..40);
}

#[test]
fn membership_changes_on_a_live_cluster_keep_every_write() {
    let mut net = Net::new(8);
    let leader = net.settle();
    let session = net.open_session(leader);
    write_many(&mut net, leader, session, 1..20);
    let mut seq = 20;
    // 3 → 4 → 5: each new node starts empty and catches up by snapshot.
    for new in [4, 5] {
        let mut members = net.members();
        members.push(new);
        let via = members[1];
        let membership = net.change(via, members.clone());
        assert_eq!(membership.ids(), members);
        net.add_node(new, membership, 8);
        write_many(&mut net, via, session, seq..seq + 10);
        seq += 10;
    }
    net.run_until(3000, "five nodes converge", |n| {
        let applied: BTreeSet<u64> =
            n.drivers.values().map(|d| d.state_machine().applied_index()).collect();
        applied.len() == 1
    });
    assert!(net.drivers[&5].catch_up_stats().snapshots_installed >= 1);
    // 5 → 3, removing the leader among others.
    let leader = net.leader().unwrap();
    let keep: Vec<NodeId> = net.members().into_iter().filter(|id| *id != leader).take(3).collect();
    let membership = net.change(keep[0], keep.clone());
    assert_eq!(membership.ids(), keep);
    for removed in net.drivers.keys().copied().filter(|id| !keep.contains(id)).collect::<Vec<_>>() {
        net.run_until(500, "a removed node stops taking requests", |n| {
            n.drivers[&removed].blocked().is_some()
                || n.drivers[&removed].membership().configuration_id == membership.configuration_id
        });
        net.down.insert(removed);
    }
    write_many(&mut net, keep[0], session, seq..seq + 10);
    seq += 10;
    net.run_until(1000, "the three converge", |n| {
        let applied: BTreeSet<u64> =
            keep.iter().map(|id| n.drivers[id].state_machine().applied_index()).collect();
        applied.len() == 1
    });
    for id in &keep {
        for k in 1..seq {
            assert_eq!(net.kv(*id, &format!("k{k}")), Some(format!("v{k}")), "node {id}, k{k}");
        }
    }
    // Replace one member by a new node in one change, then bring a removed
    // id back on an empty store: ids are small and reused.
    let out = keep[2];
    let mut replaced: Vec<NodeId> = keep.iter().copied().filter(|id| *id != out).collect();
    replaced.push(6);
    let membership = net.change(keep[0], replaced.clone());
    net.add_node(6, membership, 8);
    net.down.insert(out);
    write_many(&mut net, keep[0], session, seq..seq + 5);
    seq += 5;
    let reused = *net.drivers.keys().find(|id| !replaced.contains(id)).unwrap();
    let mut with_reused = replaced.clone();
    with_reused.push(reused);
    with_reused.sort_unstable();
    let membership = net.change(keep[0], with_reused.clone());
    net.down.remove(&reused);
    net.add_node(reused, membership, 9);
    write_many(&mut net, keep[0], session, seq..seq + 5);
    seq += 5;
    net.run_until(3000, "the four converge", |n| {
        let applied: BTreeSet<u64> =
            with_reused.iter().map(|id| n.drivers[id].state_machine().applied_index()).collect();
        applied.len() == 1
    });
    for id in &with_reused {
        for k in 1..seq {
            assert_eq!(net.kv(*id, &format!("k{k}")), Some(format!("v{k}")), "node {id}, k{k}");
        }
    }
    let keep = with_reused;
    // A node that is not a member is refused, and a bad membership too.
    let bad = net.submit(keep[0], |d, r, out| d.change_membership(r, BTreeMap::new(), out));
    assert!(matches!(net.answers[&bad].1, Answer::Failed(Error::Refused { .. })));
}

/// A membership change keeps its leader: the leader of the configuration
/// that ends has the priority in the next one. Without it the member with
/// the highest id won the new configuration's election, so every node added
/// (here 4, then 5) took the leadership, and every change cost a failover.
#[test]
fn a_membership_change_keeps_its_leader() {
    let mut net = Net::new(21);
    let first = net.settle();
    let session = net.open_session(first);
    write_many(&mut net, first, session, 1..5);
    net.run(300);
    let mut seq = 5;
    for new in [4, 5] {
        let leader = net.settle();
        let mut members = net.members();
        members.push(new);
        let membership = net.change(leader, members);
        net.add_node(new, membership, 21);
        write_many(&mut net, leader, session, seq..seq + 5);
        seq += 5;
        net.run(300);
        assert_eq!(net.settle(), leader, "the leader moved when node {new} was added");
    }
}

/// A change after which too few members of the new configuration would hold
/// the data is refused, naming the members that lack it; the same change
/// passes once they caught up, and one that keeps the holders passes at once.
/// (Seeds 7010658 and 14920204 of the simulator: two replacements in a row
/// left a configuration whose members were all empty, and the only node
/// with the data was the one removed.)
#[test]
fn a_change_that_would_leave_too_few_members_with_the_data_is_refused() {
    let mut net = Net::new(10);
    let leader = net.settle();
    let session = net.open_session(leader);
    write_many(&mut net, leader, session, 1..10);
    let behind = NODES.into_iter().find(|n| *n != leader).unwrap();
    let other = NODES.into_iter().find(|n| *n != leader && *n != behind).unwrap();
    net.isolate(behind);
    net.run(SILENCE_TICKS + 5);
    net.cut.clear();
    net.cut.insert((behind, leader));
    net.cut.insert((behind, other));
    // Replacing `other` by a new node would leave `leader` alone with the
    // data among {leader, behind, 4}: `behind` cannot be heard.
    let mut members = vec![leader, behind, 4];
    members.sort_unstable();
    let by_id = |ids: &[NodeId]| ids.iter().map(|&id| (id, address(id))).collect();
    let refused = net.submit(leader, |d, r, out| d.change_membership(r, by_id(&members), out));
    let Answer::Failed(Error::Refused { reason }) = &net.answers[&refused].1 else {
        panic!("the change was not refused: {:?}", net.answers[&refused]);
    };
    assert!(reason.contains(&format!("[{behind}]")), "the reason names node {behind}: {reason}");
    assert_eq!(net.drivers[&leader].membership().configuration_id, 1, "nothing changed");
    // Replacing the node that cannot be heard keeps both holders.
    let mut kept = vec![leader, other, 4];
    kept.sort_unstable();
    let membership = net.change(leader, kept.clone());
    assert_eq!(membership.ids(), kept);
    net.add_node(4, membership, 10);
    net.run_until(2000, "the new member catches up", |n| {
        n.drivers[&4].state_machine().applied_index()
            == n.drivers[&leader].state_machine().applied_index()
    });
    for k in 1..10 {
        assert_eq!(net.kv(4, &format!("k{k}")), Some(format!("v{k}")), "k{k}");
    }
}

/// A member that hears of a newer configuration before it applied the
/// current one to its end catches up to the new configuration's base index
/// before it moves, so it never drops entries of its log that it has not
/// applied; then it moves and holds every write.
#[test]
fn a_member_behind_a_membership_change_catches_up_before_it_moves() {
    let mut net = Net::new(11);
    let leader = net.settle();
    let session = net.open_session(leader);
    write_many(&mut net, leader, session, 1..10);
    let behind = NODES.into_iter().find(|n| *n != leader).unwrap();
    net.isolate(behind);
    net.run(SILENCE_TICKS + 5);
    // 3 → 4 while `behind` hears nothing: it misses the writes and the
    // StopSign.
    let mut members = NODES.to_vec();
    members.push(4);
    let membership = net.change(leader, members);
    net.add_node(4, membership.clone(), 11);
    net.run_until(500, "the new member is heard", |n| n.drivers[&leader].quorum_in_sight());
    write_many(&mut net, leader, session, 10..20);
    assert_eq!(net.drivers[&behind].membership().configuration_id, 1);
    net.cut.clear();
    let base = membership.base_index;
    net.run_until(1000, "the node behind waits in its configuration, catching up", |n| {
        n.drivers[&behind].membership().configuration_id == 1
            && matches!(n.drivers[&behind].blocked(),
                Some(Blocked::NeedsSnapshot { through_index }) if *through_index == base - 1)
    });
    assert!(net.drivers[&behind].state_machine().applied_index() < base - 1);
    net.run_until(2000, "the node behind moves and catches up", |n| {
        n.drivers[&behind].membership().configuration_id == 2
            && n.drivers[&behind].state_machine().applied_index()
                == n.drivers[&leader].state_machine().applied_index()
    });
    for k in 1..20 {
        assert_eq!(net.kv(behind, &format!("k{k}")), Some(format!("v{k}")), "k{k}");
    }
}
