//! Scenarios for the replica: three replicas in one thread, each on its own
//! RocksDB, talking through a seeded in-memory network that delays, drops,
//! duplicates and partitions messages, under a clock of ticks. Decided entries
//! go through the real `StateMachine`, so "every write took effect once" is
//! checked on the state that clients would read.
//!
//! Every run draws all of its randomness from one seed. A failing test prints
//! its seed and the command that replays it (`CAIRN_SEED=<seed>`).

use std::collections::{BTreeMap, BTreeSet};

use cairn_consensus::replica::{
    batched_entries, Decided, Error, Message, NodeId, Replica, ReplicaConfig, Timing,
    MESSAGE_ENTRIES_BYTES_MAX, PENDING_PROPOSALS_MAX,
};
use cairn_storage::{Applied, Command, CommandId, Conflict, Doc, Op, Outcome, StateMachine, Store};
use cairn_util::Rng;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::ballot_leader_election::{BLEMessage, HeartbeatMsg, HeartbeatRequest};
use omnipaxos::messages::sequence_paxos::{Accepted, PaxosMessage, PaxosMsg};
use omnipaxos::storage::Entry;
use tempfile::TempDir;

const NODES: [NodeId; 3] = [1, 2, 3];
const TABLE: &str = "t";
const TIMING: Timing =
    Timing { election_timeout_ticks: 5, resend_timeout_ticks: 10, repropose_timeout_ticks: 15 };
/// A leader must be elected within this many ticks of a clean start.
const ELECTION_TICKS_MAX: u64 = 20 * TIMING.election_timeout_ticks;
/// Decided entries applied per `take_decided` call.
const APPLY_BATCH_ENTRIES: usize = 16;

/// The seeds a test runs: `CAIRN_SEED` alone when set, else `defaults`.
fn seeds(defaults: &[u64]) -> Vec<u64> {
    match std::env::var("CAIRN_SEED") {
        Ok(seed) => vec![seed.parse().expect("CAIRN_SEED is a u64")],
        Err(_) => defaults.to_vec(),
    }
}

/// Prints how to replay a failing run.
struct ReplayHint {
    test: &'static str,
    seed: u64,
}

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n{} failed with seed {}; replay with:\n  CAIRN_SEED={} cargo test --workspace --test replica {}\n",
                self.test, self.seed, self.seed, self.test
            );
        }
    }
}

/// What the network does to messages.
#[derive(Clone, Copy, Debug, Default)]
struct Faults {
    drop_percent: u64,
    duplicate_percent: u64,
    /// Each message takes 1 to this many ticks.
    latency_ticks_max: u64,
    /// Drop every proposal a follower forwards to its leader (omnipaxos #136).
    drop_forwards: bool,
}

const CALM: Faults =
    Faults { drop_percent: 0, duplicate_percent: 0, latency_ticks_max: 2, drop_forwards: false };
const ROUGH: Faults =
    Faults { drop_percent: 5, duplicate_percent: 5, latency_ticks_max: 2, drop_forwards: false };

struct Live {
    replica: Replica,
    sm: StateMachine,
}

struct Node {
    id: NodeId,
    dir: TempDir,
    live: Option<Live>,
    /// Every entry applied here, across restarts, with its answer.
    history: Vec<(u64, Command, Applied)>,
    /// Decided entries stay untaken while set (a slow applier).
    apply_paused: bool,
}

/// A client of one node: one session, one write in flight, retried on its
/// node until it is applied there (as the proposer does).
struct Client {
    node: NodeId,
    session: u64,
    seq: u64,
    writes_wanted: u64,
    writes_done: u64,
    in_flight: Option<Command>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    now: u64,
    nodes: Vec<Node>,
    faults: Faults,
    /// Directed links that lose everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Directed links that lose the log's messages but pass the leader
    /// election's heartbeats, so that a leader stays leader without a quorum
    /// that accepts.
    log_cut: BTreeSet<(NodeId, NodeId)>,
    in_flight: BTreeMap<(u64, u64), (NodeId, Message)>,
    sent: u64,
    clients: Vec<Client>,
    /// What replicas started from now on bound their messages' entries to.
    message_entries_bytes_max: usize,
    /// The most bytes of entries seen in one message that carried several.
    largest_batch_bytes: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let nodes = NODES
            .iter()
            .map(|&id| Node {
                id,
                dir: tempfile::tempdir().expect("tempdir"),
                live: None,
                history: Vec::new(),
                apply_paused: false,
            })
            .collect();
        let mut sim = Sim {
            seed,
            rng: Rng::new(seed),
            now: 0,
            nodes,
            faults: CALM,
            cut: BTreeSet::new(),
            log_cut: BTreeSet::new(),
            in_flight: BTreeMap::new(),
            sent: 0,
            clients: Vec::new(),
            message_entries_bytes_max: MESSAGE_ENTRIES_BYTES_MAX,
            largest_batch_bytes: 0,
        };
        for id in NODES {
            sim.start(id);
        }
        sim
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn replica(&mut self, id: NodeId) -> &mut Replica {
        &mut self.node(id).live.as_mut().expect("node is up").replica
    }

    /// Opens the node's store and builds its replica, as a (re)start does.
    fn start(&mut self, id: NodeId) {
        let (seed, message_entries_bytes_max) = (self.seed, self.message_entries_bytes_max);
        let node = self.node(id);
        assert!(node.live.is_none(), "node {id} is already up");
        let store = Store::open(node.dir.path()).expect("open store");
        let sm = StateMachine::open(store.clone()).expect("open state machine");
        let config = ReplicaConfig {
            node_id: id,
            members: NODES.to_vec(),
            configuration_id: 1,
            timing: TIMING,
            seed,
            base_index: 0,
            message_entries_bytes_max,
            leader_priority: 0,
        };
        let replica = Replica::open(config, &store, sm.applied_index()).expect("open replica");
        assert_eq!(replica.taken_index(), sm.applied_index(), "resumes after the applied index");
        node.live = Some(Live { replica, sm });
    }

    /// Drops the node's replica and state machine: what was not synced is gone.
    fn crash(&mut self, id: NodeId) {
        assert!(self.node(id).live.take().is_some(), "node {id} was up");
    }

    fn partition(&mut self, groups: &[&[NodeId]]) {
        for (i, a) in groups.iter().enumerate() {
            for b in &groups[i + 1..] {
                for &x in *a {
                    for &y in *b {
                        self.cut.insert((x, y));
                        self.cut.insert((y, x));
                    }
                }
            }
        }
    }

    /// Restores every link, and tells both ends (the transport's `Connected`).
    fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cut) {
            if let Some(live) = self.node(from).live.as_mut() {
                live.replica.reconnected(to).expect("a member");
            }
        }
    }

    /// One tick of the whole cluster.
    fn step(&mut self) {
        self.now += 1;
        self.deliver();
        for node in &mut self.nodes {
            if let Some(live) = node.live.as_mut() {
                live.replica.tick();
            }
        }
        self.clients_propose();
        self.send();
        self.apply();
    }

    fn deliver(&mut self) {
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (to, message) = entry.remove();
            if let Some(live) = self.node(to).live.as_mut() {
                live.replica.step(message).expect("messages between members are accepted");
            }
        }
    }

    fn send(&mut self) {
        let mut out = Vec::new();
        for i in 0..self.nodes.len() {
            let from = self.nodes[i].id;
            let Some(live) = self.nodes[i].live.as_mut() else { continue };
            live.replica.drain_outgoing(&mut out);
            for (to, message) in out.drain(..) {
                if let Some(entries) = batched_entries(&message).filter(|entries| entries.len() > 1)
                {
                    let bytes = entries.iter().map(Entry::message_bytes).sum::<usize>();
                    self.largest_batch_bytes = self.largest_batch_bytes.max(bytes);
                }
                let faults = self.faults;
                if self.cut.contains(&(from, to))
                    || (self.log_cut.contains(&(from, to))
                        && matches!(message, Message::SequencePaxos(_)))
                    || (faults.drop_forwards && is_forward(&message))
                    || self.rng.chance(faults.drop_percent)
                {
                    continue;
                }
                let copies = if self.rng.chance(faults.duplicate_percent) { 2 } else { 1 };
                for _ in 0..copies {
                    let at = self.now + 1 + self.rng.below(faults.latency_ticks_max);
                    self.sent += 1;
                    self.in_flight.insert((at, self.sent), (to, message.clone()));
                }
            }
        }
    }

    /// Every up node applies what is decided, through the real state machine.
    /// A node that finds a compacted gap before its next entry (OmniPaxos
    /// syncs a lagging follower with a compaction marker) fills it with
    /// decided entries read from a peer's replica, as the driver does over
    /// the network.
    fn apply(&mut self) {
        for i in 0..self.nodes.len() {
            loop {
                let node = &mut self.nodes[i];
                if node.apply_paused {
                    break;
                }
                let Some(live) = node.live.as_mut() else { break };
                let entries = match live.replica.take_decided(APPLY_BATCH_ENTRIES) {
                    Decided::Entries(entries) if entries.is_empty() => break,
                    Decided::Entries(entries) => entries,
                    Decided::NeedsSnapshot { through_index } => {
                        let from = live.sm.applied_index() + 1;
                        match self.fetch_decided(i, from, through_index) {
                            Some(entries) => entries,
                            None => break,
                        }
                    }
                    other => panic!("node {}: unexpected {other:?}", node.id),
                };
                self.apply_on(i, entries);
            }
        }
    }

    /// Decided entries `from..=through` (or a prefix) from any other up node.
    fn fetch_decided(&self, to: usize, from: u64, through: u64) -> Option<Vec<(u64, Command)>> {
        let wanted = (through + 1 - from) as usize;
        self.nodes.iter().enumerate().filter(|(i, _)| *i != to).find_map(|(_, node)| {
            let live = node.live.as_ref()?;
            let commands = live.replica.read_decided(from, wanted)?;
            Some(commands.into_iter().enumerate().map(|(k, c)| (from + k as u64, c)).collect())
        })
    }

    fn apply_on(&mut self, i: usize, entries: Vec<(u64, Command)>) {
        let node = &mut self.nodes[i];
        let live = node.live.as_mut().expect("an up node");
        let answers = live.sm.apply(&entries).expect("apply");
        for ((index, command), applied) in entries.into_iter().zip(answers) {
            for client in &mut self.clients {
                if client.node == node.id && client.in_flight.as_ref() == Some(&command) {
                    client.in_flight = None;
                    client.writes_done += 1;
                }
            }
            node.history.push((index, command, applied));
        }
        let applied = live.sm.applied_index();
        if applied > live.replica.taken_index() {
            // The gap is filled: the replica resumes after it.
            live.replica.caught_up_to(applied);
        }
    }

    /// Clients start their next write, and (re)propose the one in flight: a
    /// no-op while it is pending, a retry after their node restarted.
    fn clients_propose(&mut self) {
        for c in 0..self.clients.len() {
            let node = self.clients[c].node;
            if self.node(node).live.is_none() {
                continue;
            }
            let client = &mut self.clients[c];
            if client.in_flight.is_none() && client.writes_done < client.writes_wanted {
                client.seq += 1;
                client.in_flight = Some(write(client.node, client.session, client.seq));
            }
            if let Some(command) = self.clients[c].in_flight.clone() {
                self.replica(node).propose(command).expect("propose");
            }
        }
    }

    /// Runs until `done` holds, failing after `ticks_max` ticks.
    fn run_until(&mut self, ticks_max: u64, what: &str, mut done: impl FnMut(&mut Sim) -> bool) {
        let deadline = self.now + ticks_max;
        while !done(self) {
            assert!(self.now < deadline, "seed {}: not {what} within {ticks_max} ticks", self.seed);
            self.step();
        }
    }

    fn run_for(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    /// The leader every up node agrees on, once it orders entries.
    fn agreed_leader(&mut self) -> Option<NodeId> {
        let leaders: BTreeSet<Option<NodeId>> =
            self.nodes.iter().filter_map(|n| n.live.as_ref()).map(|l| l.replica.leader()).collect();
        let leaders: Vec<Option<NodeId>> = leaders.into_iter().collect();
        let [Some(leader)] = leaders[..] else { return None };
        self.replica(leader).is_leader().then_some(leader)
    }

    fn elect(&mut self) -> NodeId {
        self.run_until(ELECTION_TICKS_MAX, "a leader elected", |sim| sim.agreed_leader().is_some());
        self.agreed_leader().expect("just elected")
    }

    /// Creates the table and opens `sessions` sessions through the leader, in a
    /// calm network; answers the session ids.
    fn setup(&mut self, sessions: usize) -> Vec<u64> {
        let leader = self.elect();
        let before = self.node(leader).history.len();
        self.replica(leader).propose(Command::new(None, create_table())).expect("propose");
        for token in 1..=sessions as u64 {
            let open = Command::new(None, Op::OpenSession { token });
            self.replica(leader).propose(open).expect("propose");
        }
        self.run_until(200, "set up", |sim| {
            sim.node(leader).history.len() == before + 1 + sessions
        });
        self.node(leader).history[before..]
            .iter()
            .filter_map(|(_, _, applied)| match applied.outcome {
                Outcome::SessionOpened { session } => Some(session),
                _ => None,
            })
            .collect()
    }

    fn add_clients(&mut self, nodes: &[NodeId], sessions: &[u64], writes_each: u64) {
        for (i, &session) in sessions.iter().enumerate() {
            let node = nodes[i % nodes.len()];
            let client = Client {
                node,
                session,
                seq: 0,
                writes_wanted: writes_each,
                writes_done: 0,
                in_flight: None,
            };
            self.clients.push(client);
        }
    }

    fn clients_done(&self) -> bool {
        self.clients.iter().all(|c| c.writes_done == c.writes_wanted)
    }

    /// Every node is up and has applied the same number of entries.
    fn converged(&mut self) -> bool {
        let lens: BTreeSet<usize> = self.nodes.iter().map(|n| n.history.len()).collect();
        self.nodes.iter().all(|n| n.live.is_some()) && lens.len() == 1
    }

    fn applied_index(&mut self, id: NodeId) -> u64 {
        self.node(id).history.last().map_or(0, |(index, _, _)| *index)
    }

    /// The checks every scenario ends with: the same log applied everywhere,
    /// the same documents everywhere, and every client write took effect once.
    fn check_outcome(&mut self) {
        let seed = self.seed;
        let log = |n: &Node| n.history.iter().map(|(i, c, _)| (*i, c.clone())).collect::<Vec<_>>();
        let first = log(&self.nodes[0]);
        let indexes: Vec<u64> = first.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, (1..=first.len() as u64).collect::<Vec<_>>(), "seed {seed}: gaps");
        for node in &self.nodes[1..] {
            assert!(log(node) == first, "seed {seed}: node {} applied another log", node.id);
        }
        let wanted: BTreeSet<(u64, u64)> = self
            .clients
            .iter()
            .flat_map(|c| (1..=c.writes_wanted).map(move |seq| (c.session, seq)))
            .collect();
        let mut docs = Vec::new();
        for node in &self.nodes {
            let mut effective: BTreeMap<(u64, u64), u32> = BTreeMap::new();
            for (index, command, applied) in &node.history {
                let Some(id) = command.id else { continue };
                if applied.index == *index && !matches!(applied.outcome, Outcome::Failed(_)) {
                    *effective.entry((id.session, id.seq)).or_default() += 1;
                }
            }
            let once = effective.values().all(|&n| n == 1);
            let keys: BTreeSet<(u64, u64)> = effective.keys().copied().collect();
            assert!(once && keys == wanted, "seed {seed}: node {}: {effective:?}", node.id);
            let store = node.live.as_ref().expect("up").sm.store();
            docs.push(store.list_docs(TABLE, None, 1000).expect("list").docs);
        }
        assert_eq!(docs[0].len(), wanted.len(), "seed {seed}: one document per write");
        assert!(docs.iter().all(|d| *d == docs[0]), "seed {seed}: the replicas differ");
    }

    /// How many decided entries repeated an earlier command (deduplicated).
    fn repeats(&self) -> usize {
        self.nodes[0].history.iter().filter(|(index, _, applied)| applied.index != *index).count()
    }
}

fn is_forward(message: &Message) -> bool {
    matches!(
        message,
        Message::SequencePaxos(PaxosMessage { msg: PaxosMsg::ProposalForward(_), .. })
    )
}

fn create_table() -> Op {
    Op::CreateTable { table: TABLE.into() }
}

/// A write that is not idempotent: inserting an existing id is a conflict, so
/// a second effect would show.
fn write(node: NodeId, session: u64, seq: u64) -> Command {
    let id = format!("{session}-{seq}");
    let doc = Doc { json: format!(r#"{{"id":"{id}","via":{node}}}"#), id };
    let op = Op::Insert { table: TABLE.into(), docs: vec![doc], conflict: Conflict::Error };
    Command::new(Some(CommandId { session, seq }), op)
}

/// A clean start elects one leader within a bound, and proposals made on every
/// node are decided in one order everywhere.
#[test]
fn a_leader_is_elected_and_every_replica_decides_the_same_sequence() {
    for seed in seeds(&[1, 2]) {
        let _hint = ReplayHint { test: "a_leader_is_elected", seed };
        let mut sim = Sim::new(seed);
        let sessions = sim.setup(3);
        sim.add_clients(&NODES, &sessions, 8);
        sim.run_until(1500, "all writes applied", |sim| sim.clients_done() && sim.converged());
        sim.check_outcome();
    }
}

/// A message carries at most `message_entries_bytes_max` bytes of entries
/// (one entry always goes), so that a batch of large entries never exceeds
/// what the transport takes: the leader splits its accepts into several
/// messages with consecutive sequence numbers, and a follower its forwards.
/// The same load with no bound makes larger batches, and the split changes
/// nothing of what is decided.
#[test]
fn batches_of_entries_stay_within_the_message_bound() {
    const BOUND: usize = 300;
    for seed in seeds(&[11, 12]) {
        let _hint = ReplayHint { test: "batches_of_entries_stay_within", seed };
        let run = |bound: usize| {
            let mut sim = Sim::new(seed);
            sim.message_entries_bytes_max = bound;
            for id in NODES {
                sim.crash(id);
                sim.start(id);
            }
            let sessions = sim.setup(24);
            sim.add_clients(&NODES, &sessions, 6);
            sim.faults = ROUGH;
            sim.run_until(4000, "all writes applied", |sim| sim.clients_done() && sim.converged());
            sim.check_outcome();
            sim.largest_batch_bytes
        };
        let unbounded = run(MESSAGE_ENTRIES_BYTES_MAX);
        assert!(unbounded > BOUND, "seed {seed}: the load makes batches of {unbounded} bytes");
        let bounded = run(BOUND);
        assert!(bounded <= BOUND, "seed {seed}: a batch of {bounded} bytes");
    }
}

/// A log sync carries its sender's entries past its decided index whole, so a
/// leader keeps those within the message bound (OmniPaxos patch 4). Here the
/// log's messages between a leader and its followers are lost while the
/// election's heartbeats pass, so the leader stays leader and goes on taking
/// writes from twelve clients that nothing decides. Once the messages pass
/// again, a follower sees a gap and asks for a sync, which carries what the
/// leader holds undecided. Without the bound the leader held every write and
/// its re-proposals, and the sync carried them all in one message over the
/// bound; with it, writes beyond the bound wait at the leader, and every
/// write still takes effect once.
#[test]
fn a_log_sync_stays_within_the_message_bound() {
    const BOUND: usize = 300;
    for seed in seeds(&[21, 22]) {
        let _hint = ReplayHint { test: "a_log_sync_stays_within", seed };
        let mut sim = Sim::new(seed);
        sim.message_entries_bytes_max = BOUND;
        for id in NODES {
            sim.crash(id);
            sim.start(id);
        }
        let sessions = sim.setup(12);
        let leader = sim.agreed_leader().expect("a leader");
        sim.largest_batch_bytes = 0;
        for follower in NODES.into_iter().filter(|&n| n != leader) {
            sim.log_cut.insert((leader, follower));
            sim.log_cut.insert((follower, leader));
        }
        sim.add_clients(&[leader], &sessions, 3);
        sim.run_for(4 * TIMING.repropose_timeout_ticks);
        assert_eq!(sim.agreed_leader(), Some(leader), "seed {seed}: the leader stays");
        sim.log_cut.clear();
        sim.run_until(4000, "all writes applied", |sim| sim.clients_done() && sim.converged());
        sim.check_outcome();
        let largest = sim.largest_batch_bytes;
        assert!(largest <= BOUND, "seed {seed}: {largest} bytes of entries in one message");
    }
}

/// Proposals made on followers while every forward to the leader is lost are
/// re-proposed, and once forwards get through each write takes effect once,
/// also with messages dropped and duplicated.
#[test]
fn writes_on_followers_survive_lost_forwards() {
    for seed in seeds(&[3, 4]) {
        let _hint = ReplayHint { test: "writes_on_followers_survive_lost_forwards", seed };
        let mut sim = Sim::new(seed);
        let sessions = sim.setup(4);
        let leader = sim.agreed_leader().expect("a leader");
        let followers: Vec<NodeId> = NODES.into_iter().filter(|&n| n != leader).collect();
        sim.faults.drop_forwards = true;
        sim.add_clients(&followers, &sessions, 5);
        let decided = sim.replica(leader).decided_index();
        sim.run_for(8 * TIMING.repropose_timeout_ticks);
        assert_eq!(
            sim.replica(leader).decided_index(),
            decided,
            "seed {seed}: nothing got through"
        );
        assert!(followers.iter().all(|&f| sim.replica(f).pending_len() > 0), "seed {seed}");
        sim.faults = ROUGH;
        sim.run_until(3000, "all writes applied", |sim| sim.clients_done() && sim.converged());
        sim.check_outcome();
        for f in followers {
            assert_eq!(sim.replica(f).pending_len(), 0, "seed {seed}: decided writes are settled");
        }
        eprintln!("seed {seed}: {} repeated entries deduplicated", sim.repeats());
    }
}

/// A replica that crashes with decided entries it had not applied comes back
/// from its store, resumes after its applied index, and catches up by log.
/// Odd seeds crash a follower, even seeds the leader (the others then elect a
/// new one, and writes proposed through the old one are re-proposed).
#[test]
fn a_restarted_replica_resumes_and_catches_up_by_log() {
    for seed in seeds(&[5, 6]) {
        let _hint = ReplayHint { test: "a_restarted_replica_resumes", seed };
        let mut sim = Sim::new(seed);
        let sessions = sim.setup(3);
        let leader = sim.agreed_leader().expect("a leader");
        let follower = NODES.into_iter().find(|&n| n != leader).expect("a follower");
        let (victim, survivor) =
            if seed % 2 == 0 { (leader, follower) } else { (follower, leader) };
        sim.add_clients(&NODES, &sessions, 10);
        sim.node(victim).apply_paused = true;
        sim.run_until(1000, "a backlog", |sim| {
            let live = &sim.node(victim).live.as_ref().expect("up").replica;
            live.decided_index() >= live.taken_index() + 3
        });
        let decided = sim.replica(victim).decided_index();
        sim.crash(victim);
        sim.node(victim).apply_paused = false;
        sim.run_until(1000, "the others moving on", |sim| sim.applied_index(survivor) > decided);
        sim.start(victim);
        sim.run_until(3000, "all writes applied", |sim| sim.clients_done() && sim.converged());
        sim.check_outcome();
    }
}

/// A leader cut off alone cannot decide, even its own proposals; the other two
/// elect a leader and carry on; after healing, everyone converges and the
/// isolated node's write takes effect once.
#[test]
fn a_minority_cannot_decide_and_all_converge_after_healing() {
    for seed in seeds(&[7, 8]) {
        let _hint = ReplayHint { test: "a_minority_cannot_decide", seed };
        let mut sim = Sim::new(seed);
        let sessions = sim.setup(3);
        let old = sim.agreed_leader().expect("a leader");
        let majority: Vec<NodeId> = NODES.into_iter().filter(|&n| n != old).collect();
        sim.partition(&[&[old], &majority]);
        let decided = sim.replica(old).decided_index();
        sim.add_clients(&[old, majority[0], majority[1]], &sessions, 4);
        sim.run_until(1500, "the majority's writes applied", |sim| {
            sim.clients[1..].iter().all(|c| c.writes_done == c.writes_wanted)
        });
        assert_eq!(sim.replica(old).decided_index(), decided, "seed {seed}: the minority decided");
        assert_eq!(sim.clients[0].writes_done, 0, "seed {seed}: a minority write was applied");
        assert!(majority.iter().any(|&n| sim.replica(n).is_leader()), "seed {seed}: no new leader");
        sim.heal();
        sim.run_until(3000, "all writes applied", |sim| sim.clients_done() && sim.converged());
        sim.check_outcome();
    }
}

/// The same seed gives the same run: the same decided log on every node, at
/// the same tick, with a network that drops and duplicates messages.
#[test]
fn the_same_seed_decides_the_same_sequence() {
    for seed in seeds(&[9]) {
        let _hint = ReplayHint { test: "the_same_seed_decides_the_same_sequence", seed };
        let run = || {
            let mut sim = Sim::new(seed);
            let sessions = sim.setup(3);
            sim.faults = ROUGH;
            sim.add_clients(&NODES, &sessions, 6);
            sim.run_until(3000, "all writes applied", |sim| sim.clients_done() && sim.converged());
            sim.check_outcome();
            let logs: Vec<Vec<(u64, Command)>> = sim
                .nodes
                .iter()
                .map(|n| n.history.iter().map(|(i, c, _)| (*i, c.clone())).collect())
                .collect();
            (sim.now, sim.sent, logs)
        };
        let first = run();
        let second = run();
        assert!(first == second, "seed {seed}: two runs differ");
    }
}

/// Messages from outside the configuration, from the node itself or for
/// another node are refused without reaching OmniPaxos (whose per-peer tables
/// they would index out of bounds), even on a leader.
#[test]
fn messages_that_are_not_for_this_node_are_refused() {
    let mut sim = Sim::new(11);
    let leader = sim.elect();
    let accepted = |from: NodeId, to: NodeId| {
        let msg = PaxosMsg::Accepted(Accepted { n: Ballot::default(), accepted_idx: 1 });
        Message::SequencePaxos(PaxosMessage { from, to, msg })
    };
    let heartbeat = |from: NodeId, to: NodeId| {
        let msg = HeartbeatMsg::Request(HeartbeatRequest { round: 1 });
        Message::BLE(BLEMessage { from, to, msg })
    };
    let other = NODES.into_iter().find(|&n| n != leader).expect("a follower");
    let replica = sim.replica(leader);
    for (from, to) in [(9, leader), (0, leader), (leader, leader), (other, 9), (other, other)] {
        let refused = replica.step(accepted(from, to)).unwrap_err();
        assert!(!refused.is_retryable(), "{refused}");
        assert!(replica.step(heartbeat(from, to)).is_err(), "{from} -> {to}");
    }
    assert!(replica.reconnected(9).is_err() && replica.reconnected(leader).is_err());
    assert!(replica.is_leader(), "refused messages change nothing");
}

/// A node that cannot reach a leader keeps at most `PENDING_PROPOSALS_MAX`
/// proposals, then refuses with a retryable error; proposing a pending id
/// again is a no-op.
#[test]
fn the_pending_set_is_bounded() {
    let mut sim = Sim::new(12);
    let replica = sim.replica(1);
    for seq in 1..=PENDING_PROPOSALS_MAX as u64 {
        replica.propose(write(1, 1, seq)).expect("room");
    }
    replica.propose(write(1, 1, 1)).expect("already pending: a no-op");
    let busy = replica.propose(write(1, 1, PENDING_PROPOSALS_MAX as u64 + 1)).unwrap_err();
    assert!(busy.is_retryable(), "{busy}");
    assert_eq!(replica.pending_len(), PENDING_PROPOSALS_MAX);
    assert!(replica.is_pending(CommandId { session: 1, seq: 1 }));
}

/// Configurations OmniPaxos cannot run are refused when the replica is built.
#[test]
fn bad_configurations_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let config = |node_id, members: &[NodeId], configuration_id| ReplicaConfig {
        node_id,
        members: members.to_vec(),
        configuration_id,
        timing: TIMING,
        seed: 0,
        base_index: 0,
        message_entries_bytes_max: MESSAGE_ENTRIES_BYTES_MAX,
        leader_priority: 0,
    };
    let bad = [
        config(1, &[1], 1),
        config(1, &[1, 2, 2], 1),
        config(0, &[0, 1, 2], 1),
        config(3, &[1, 2], 1),
        config(1, &[1, 2, 3], 0),
        config(1, &[1, 2, 1000], 1),
        ReplicaConfig {
            timing: Timing { repropose_timeout_ticks: 0, ..TIMING },
            ..config(1, &[1, 2], 1)
        },
    ];
    for config in bad {
        let refused = Replica::open(config.clone(), &store, 0).err();
        assert!(matches!(refused, Some(Error::Config(_))), "{config:?} gave {refused:?}");
    }
    Replica::open(config(2, &[3, 1, 2], 1), &store, 0).expect("a good configuration");
}
