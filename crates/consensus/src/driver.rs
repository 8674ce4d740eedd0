//! The driver: everything a replicated node does between the network and its
//! clients, without doing IO itself.
//!
//! A [`Driver`] owns a node's [`Replica`] and its [`StateMachine`], and keeps
//! the requests that wait for the log: writes and session openings until
//! their entry is applied here, linearizable reads until a barrier entry
//! proposed after they arrived is applied here. The event loop around it
//! (`replicated`) feeds it requests, peer messages and ticks, and after every
//! turn calls [`Driver::poll`], which applies what was decided and hands back
//! the messages to send and the answers to deliver. A simulator drives the
//! same type in one thread, from a seed.
//!
//! # Requests and answers
//!
//! The caller names each request with a [`RequestId`] of its choosing and gets
//! exactly one [`Answer`] for it from `poll` (or none, once it
//! [`cancel`](Driver::cancel)s it). A write is answered when the first copy of
//! its command is applied here, with the state machine's outcome (a repeat of
//! an applied `(session, seq)` gets the stored outcome). Requests that cannot
//! be proposed are answered at once with a determinate error: no quorum in
//! sight ([`Error::Unavailable`]), or too many proposals pending
//! ([`Error::Busy`]).
//!
//! # Linearizable reads
//!
//! Reads that arrive in one turn share one barrier: an entry
//! `Op::Barrier { token }` with a fresh random token, proposed after they
//! arrived. Once it is applied here, every write acknowledged anywhere before
//! those reads arrived is applied here too (it was decided before the barrier
//! was appended, so it has a lower index), and local state answers them. A
//! barrier is never shared with a read that arrived after it was proposed.
//!
//! # Quorum in sight
//!
//! OmniPaxos has no leases and no notion of being cut off: a node that lost
//! its peers keeps its old leader. The driver tracks when it last heard from
//! each peer; with fewer than a majority (itself included) heard from within
//! the configured silence, new requests are refused as unavailable instead of
//! waiting for a timeout. Requests already proposed keep waiting: their
//! outcome is unknown.
//!
//! # Compaction and catch-up
//!
//! Every node compacts its own log behind what it has applied, keeping the
//! last [`DriverConfig::log_retain_entries`] entries, so the log stays bounded
//! even while a peer is down. OmniPaxos syncs a peer that lags behind the
//! leader by marking the prefix it lacks as compacted (a content-free marker)
//! and sending the rest of the log; the replica then reports the gap
//! ([`Decided::NeedsSnapshot`]) and the driver fills it from a peer that has
//! applied past it, out of band:
//!
//! 1. it asks for the decided entries after its applied index
//!    ([`PeerMessage::FetchEntries`]), which a peer still has if the gap is
//!    within its retention, and applies them as they come;
//! 2. if the peer compacted them, it asks for a snapshot of the peer's state
//!    machine instead: a RocksDB checkpoint streamed one bounded chunk per
//!    request ([`PeerMessage::FetchSnapshot`]), installed crash-safely, after
//!    which the log resumes after the snapshot's index.
//!
//! Requests that get no answer are asked again (of another peer when there is
//! one) after [`DriverConfig::catch_up_timeout_ticks`]. While the gap is open
//! the node takes no new requests (they are refused as unavailable).
//!
//! # Not here
//!
//! - Membership changes: a decided StopSign stops the driver from taking
//!   entries and is reported in [`Driver::blocked`].
//! - Time: it counts the ticks it is given.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;

use cairn_storage::snapshot::{Chunk, CHUNK_PAYLOAD_BYTES_DEFAULT};
use cairn_storage::{
    Applied, Command, Durability, Op, SnapshotSink, SnapshotSource, StateMachine, WaitKey,
};
use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::replica::{Decided, Message, NodeId, Replica, ReplicaConfig, Rng, Timing};
pub use crate::CatchUpStats;
use crate::{Error, Member, Role, Status};

/// The caller's name for one request.
pub type RequestId = u64;

/// Most decided entries applied in one batch (one synced write).
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;
/// Most entries in one answer to [`PeerMessage::FetchEntries`].
pub const FETCH_ENTRIES_MAX: usize = 1024;
/// Most encoded bytes of commands in one answer to
/// [`PeerMessage::FetchEntries`] (at least one command always goes).
pub const FETCH_ENTRIES_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Snapshots served at once; more requests are refused until one ends.
pub const SNAPSHOTS_SERVED_MAX: usize = 2;

/// What a node tells its peers about itself, at a fixed period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub api_address: String,
    pub peer_address: String,
    pub zone: Option<String>,
    pub version: String,
    pub leader: bool,
    pub decided_index: u64,
    pub applied_index: u64,
}

/// A message between nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Consensus. OmniPaxos's messages do not say which configuration they
    /// belong to, so each carries its configuration id; one for another
    /// configuration is dropped.
    Paxos { configuration_id: u32, message: Message },
    /// News about the sender.
    Hello(Hello),
    /// Asks for the decided entries from global index `from` on.
    FetchEntries { from: u64 },
    /// Decided entries from global index `from` on.
    Entries { from: u64, commands: Vec<Command> },
    /// The sender no longer has (or does not yet have) entry `from`.
    EntriesUnavailable { from: u64 },
    /// Asks for chunk `chunk` of snapshot transfer `transfer` (chunk 0 starts
    /// a new one).
    FetchSnapshot { transfer: u64, chunk: u64 },
    /// One chunk of a snapshot transfer, encoded.
    SnapshotChunk { transfer: u64, chunk: u64, bytes: Vec<u8> },
    /// The sender cannot serve the transfer.
    SnapshotUnavailable { transfer: u64, reason: String },
    /// The sender is in an older configuration than the receiver's message
    /// showed: it asks for the current membership.
    FetchMembership,
    /// The sender's current membership.
    Membership(Membership),
}

/// The answer to one request.
#[derive(Debug)]
pub enum Answer {
    /// A write or a session opening was applied here.
    Applied(Applied),
    /// A read may now be answered from local state, which has applied at
    /// least `index`.
    ReadReady { index: u64 },
    /// A membership change took effect: the new configuration.
    Reconfigured(Membership),
    /// The request failed; see [`Error::is_determinate`].
    Failed(Error),
}

/// Why the driver has stopped taking decided entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The entries after the applied index through `through_index` were
    /// compacted away here: they, or a snapshot, come from a peer.
    NeedsSnapshot { through_index: u64 },
    /// The configuration was stopped at `index` for a membership change and
    /// this node could not move on (a StopSign it cannot read).
    Reconfigured { index: u64 },
    /// The configuration this node belonged to ended, and the next one does
    /// not include it: it takes no more requests.
    Removed { configuration_id: u32 },
    /// The next configuration has this node alone: the replicated log hands
    /// over to the single-node log.
    Alone { configuration_id: u32 },
}

/// What one [`Driver::poll`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages for peers, each with the node it is for.
    pub messages: Vec<(NodeId, PeerMessage)>,
    /// Answers for requests.
    pub answers: Vec<(RequestId, Answer)>,
    /// The membership this node moved to, if it changed (the event loop
    /// updates the transport's peers).
    pub membership: Option<Membership>,
}

/// Settings of a driver beyond its replica's.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub node_id: NodeId,
    pub timing: Timing,
    /// Seeds all randomness of the driver and its replica.
    pub seed: u64,
    /// The configuration to start in (as stored with the node's data).
    pub membership: Membership,
    /// After how many ticks of silence a peer no longer counts towards a
    /// quorum in sight.
    pub peer_silence_ticks: u64,
    /// How often, in ticks, the node sends its `Hello`.
    pub hello_interval_ticks: u64,
    /// This node's `Hello` (the progress fields are filled in as it runs).
    pub me: Hello,
    /// Entries kept in the log behind the applied index, so a peer that lags
    /// by fewer gets entries rather than a whole snapshot.
    pub log_retain_entries: u64,
    /// How often, in ticks, the log is compacted.
    pub compact_interval_ticks: u64,
    /// After how many ticks an unanswered catch-up request is asked again.
    pub catch_up_timeout_ticks: u64,
    /// Key+value bytes per snapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Where checkpoints for peers are taken: a directory on the store's
    /// file system (checkpoints are hard links), emptied at start.
    pub snapshot_dir: PathBuf,
}

impl DriverConfig {
    /// Defaults for everything but who the node is, its `Hello` and the
    /// snapshot directory, for a tick of about 10 ms.
    pub fn new(
        node_id: NodeId,
        membership: Membership,
        timing: Timing,
        seed: u64,
        me: Hello,
        snapshot_dir: PathBuf,
    ) -> DriverConfig {
        let election = timing.election_timeout_ticks;
        DriverConfig {
            node_id,
            timing,
            seed,
            membership,
            peer_silence_ticks: election * 3,
            hello_interval_ticks: election,
            me,
            log_retain_entries: 10_000,
            compact_interval_ticks: 100,
            catch_up_timeout_ticks: election * 4,
            snapshot_chunk_bytes: CHUNK_PAYLOAD_BYTES_DEFAULT,
            snapshot_dir,
        }
    }

    /// The replica of `membership`'s configuration on this node.
    fn replica_config(&self, membership: &Membership) -> ReplicaConfig {
        ReplicaConfig {
            node_id: self.node_id,
            members: membership.ids(),
            configuration_id: membership.configuration_id,
            timing: self.timing,
            seed: self.seed ^ u64::from(membership.configuration_id).rotate_left(32),
            base_index: membership.base_index,
        }
    }
}

/// A membership change this node asked for, until a StopSign is decided.
struct Reconfiguration {
    members: BTreeMap<NodeId, SocketAddr>,
    waiters: Vec<RequestId>,
    /// When to ask again (a forwarded StopSign can be lost).
    due_tick: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Answered with the applied outcome.
    Write,
    /// Answered with `ReadReady` once its barrier is applied.
    Read,
}

/// Filling a compacted gap from a peer.
enum CatchUp {
    /// Waiting for decided entries after the applied index.
    Entries { peer: NodeId, asked_tick: u64 },
    /// Receiving a snapshot; `sink` is open once chunk 0 arrived.
    Snapshot {
        peer: NodeId,
        transfer: u64,
        next_chunk: u64,
        sink: Option<SnapshotSink>,
        asked_tick: u64,
    },
}

/// A snapshot this node streams to a peer.
struct Serving {
    transfer: u64,
    source: SnapshotSource,
    /// The chunk the peer asks for next.
    next_chunk: u64,
    /// The last chunk sent, encoded, to send again if it was lost.
    last_sent: Option<(u64, Vec<u8>)>,
    used_tick: u64,
}

/// The IO-free heart of a replicated node. See the module docs.
pub struct Driver {
    replica: Replica,
    sm: StateMachine,
    config: DriverConfig,
    now_ticks: u64,
    /// When each peer was last heard from (consensus messages).
    heard: BTreeMap<NodeId, u64>,
    /// The last `Hello` from each peer.
    hellos: BTreeMap<NodeId, Hello>,
    /// Requests waiting for the entry with this key to be applied.
    waiting: HashMap<WaitKey, Vec<(RequestId, Kind)>>,
    /// Each waiting request's key, to cancel it.
    keys: HashMap<RequestId, WaitKey>,
    /// Reads that arrived since the last barrier was proposed.
    unbarriered: Vec<RequestId>,
    blocked: Option<Blocked>,
    catch_up: Option<CatchUp>,
    serving: BTreeMap<NodeId, Serving>,
    rng: Rng,
    failed: bool,
    /// Messages produced between polls (answers to peers, hellos).
    pending_messages: Vec<(NodeId, PeerMessage)>,
    /// Answers produced between polls (entries applied while catching up),
    /// delivered by the next poll, after its sync.
    deferred_answers: Vec<(RequestId, Answer)>,
    /// A membership change made between polls, reported by the next one.
    deferred_membership: Option<Membership>,
    /// Scratch for the replica's outgoing messages.
    paxos_out: Vec<(NodeId, Message)>,
    stats: CatchUpStats,
    /// This node's decided index when it last saw its leader ahead of it.
    lagging_since: Option<u64>,
    /// The configuration this node is in.
    membership: Membership,
    /// A membership change asked for here, until its StopSign is decided.
    reconfiguration: Option<Reconfiguration>,
    /// When this node last asked a peer for a newer membership.
    membership_asked_tick: Option<u64>,
}

impl Driver {
    /// Builds the driver over the state machine; the replica resumes after
    /// its applied index.
    pub fn open(config: DriverConfig, sm: StateMachine) -> Result<Driver, crate::replica::Error> {
        let seed = config.seed;
        let node_id = config.node_id;
        config.membership.validate().map_err(|e| crate::replica::Error::Config(e.to_string()))?;
        let replica_config = config.replica_config(&config.membership);
        let replica = Replica::open(replica_config, sm.store(), sm.applied_index())?;
        let membership = config.membership.clone();
        // Checkpoints left by an earlier run are of no use.
        let _ = std::fs::remove_dir_all(&config.snapshot_dir);
        Ok(Driver {
            replica,
            sm,
            config,
            now_ticks: 0,
            heard: BTreeMap::new(),
            hellos: BTreeMap::new(),
            waiting: HashMap::new(),
            keys: HashMap::new(),
            unbarriered: Vec::new(),
            blocked: None,
            catch_up: None,
            serving: BTreeMap::new(),
            // A different stream from the replica's, from the same seed.
            rng: Rng::new(seed.rotate_left(17) ^ node_id.wrapping_mul(0x9E37_79B9)),
            failed: false,
            pending_messages: Vec::new(),
            deferred_answers: Vec::new(),
            deferred_membership: None,
            paxos_out: Vec::new(),
            stats: CatchUpStats::default(),
            lagging_since: None,
            membership,
            reconfiguration: None,
            membership_asked_tick: None,
        })
    }

    /// Proposes a write (a command with an id) and answers once it applied.
    pub fn propose(&mut self, request: RequestId, command: Command, out: &mut Output) {
        self.submit(request, command, Kind::Write, out);
    }

    /// Opens a session through the log.
    pub fn open_session(&mut self, request: RequestId, out: &mut Output) {
        let token = self.rng.next_u64();
        self.submit(request, Command::new(None, Op::OpenSession { token }), Kind::Write, out);
    }

    /// Asks for a linearizable read: answered with `ReadReady` once local
    /// state reflects every write acknowledged before this call.
    pub fn read(&mut self, request: RequestId, out: &mut Output) {
        if let Err(error) = self.check_available() {
            out.answers.push((request, Answer::Failed(error)));
            return;
        }
        self.unbarriered.push(request);
    }

    /// The caller gave up on `request`: it gets no answer, and the command is
    /// no longer re-proposed if nobody else waits for it.
    pub fn cancel(&mut self, request: RequestId) {
        if let Some(pos) = self.unbarriered.iter().position(|r| *r == request) {
            self.unbarriered.swap_remove(pos);
            return;
        }
        let Some(key) = self.keys.remove(&request) else { return };
        let Some(waiters) = self.waiting.get_mut(&key) else { return };
        waiters.retain(|(r, _)| *r != request);
        if waiters.is_empty() {
            self.waiting.remove(&key);
            self.replica.forget(key);
        }
    }

    /// A message from peer `from`. Nothing a peer sends can panic the driver:
    /// what does not fit is dropped with a log line.
    pub fn step(&mut self, from: NodeId, message: PeerMessage) -> Result<(), Error> {
        if from == self.replica.node_id() || !self.replica.members().contains(&from) {
            tracing::debug!(from, "dropped a message from a node outside the configuration");
            return Ok(());
        }
        match message {
            PeerMessage::Paxos { configuration_id, message } => {
                if configuration_id > self.membership.configuration_id {
                    self.ask_membership(from);
                } else if configuration_id != self.membership.configuration_id {
                    tracing::debug!(
                        from,
                        configuration_id,
                        "dropped a message of another configuration"
                    );
                } else if message.get_sender() != from {
                    tracing::warn!(
                        from,
                        claimed = message.get_sender(),
                        "dropped a message: wrong sender"
                    );
                } else if let Err(error) = self.replica.step(message) {
                    tracing::debug!(%error, "dropped a message");
                } else {
                    self.heard.insert(from, self.now_ticks);
                }
            }
            PeerMessage::Hello(hello) => {
                self.hellos.insert(from, hello);
            }
            PeerMessage::FetchEntries { from: index } => self.serve_entries(from, index),
            PeerMessage::Entries { from: index, commands } => {
                return self.entries_arrived(from, index, commands);
            }
            PeerMessage::EntriesUnavailable { from: index } => {
                self.entries_unavailable(from, index)
            }
            PeerMessage::FetchSnapshot { transfer, chunk } => {
                self.serve_snapshot(from, transfer, chunk)
            }
            PeerMessage::SnapshotChunk { transfer, chunk, bytes } => {
                return self.chunk_arrived(from, transfer, chunk, &bytes);
            }
            PeerMessage::SnapshotUnavailable { transfer, reason } => {
                self.snapshot_unavailable(from, transfer, &reason)
            }
            PeerMessage::FetchMembership => {
                let membership = self.membership.clone();
                self.pending_messages.push((from, PeerMessage::Membership(membership)));
            }
            PeerMessage::Membership(next) => {
                if next.configuration_id > self.membership.configuration_id
                    && next.cluster_id == self.membership.cluster_id
                    && next.validate().is_ok()
                {
                    tracing::info!(
                        from,
                        configuration_id = next.configuration_id,
                        "a peer is in a newer configuration: moving to it"
                    );
                    let mut out = Output::default();
                    // Everything before the StopSign applied here: the StopSign
                    // itself is a no-op, no need to fetch it.
                    let index = next.base_index;
                    let result = if self.sm.applied_index() + 1 == index && index > 0 {
                        let noop = [(index, Command::new(None, Op::Noop))];
                        self.sm.apply(&noop).map(|_| ())
                    } else {
                        Ok(())
                    };
                    let result = result.and_then(|()| self.switch_to(next, &mut out));
                    self.deferred_answers.append(&mut out.answers);
                    if out.membership.is_some() {
                        self.deferred_membership = out.membership;
                    }
                    if let Err(error) = result {
                        return Err(self.fail_now(error));
                    }
                }
            }
        }
        Ok(())
    }

    /// Asks to move the cluster to `members` (every member's peer address):
    /// answered with [`Answer::Reconfigured`] once the StopSign that ends this
    /// configuration is decided and this node moved on. One change at a time;
    /// asking again for the same members joins the change in flight.
    pub fn change_membership(
        &mut self,
        request: RequestId,
        members: BTreeMap<NodeId, SocketAddr>,
        out: &mut Output,
    ) {
        if let Err(error) = self.check_available() {
            out.answers.push((request, Answer::Failed(error)));
            return;
        }
        if members == self.membership.members {
            out.answers.push((request, Answer::Reconfigured(self.membership.clone())));
            return;
        }
        let next = self.membership.next(members.clone(), 0);
        if let Err(error) = next.validate() {
            out.answers
                .push((request, Answer::Failed(Error::Refused { reason: error.to_string() })));
            return;
        }
        match &mut self.reconfiguration {
            Some(change) if change.members == members => change.waiters.push(request),
            Some(change) => {
                let reason = format!(
                    "another membership change is in flight (to {:?})",
                    change.members.keys().collect::<Vec<_>>()
                );
                out.answers.push((request, Answer::Failed(Error::Busy { reason })));
            }
            None => {
                self.reconfiguration =
                    Some(Reconfiguration { members, waiters: vec![request], due_tick: 0 });
                self.propose_reconfiguration();
            }
        }
    }

    /// The configuration this node is in.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Gives the state machine back (to hand it to the single-node log).
    pub fn into_state_machine(self) -> StateMachine {
        self.sm
    }

    /// The link to `peer` came back.
    pub fn reconnected(&mut self, peer: NodeId) {
        if let Err(error) = self.replica.reconnected(peer) {
            tracing::debug!(%error, "reconnected");
            return;
        }
        let hello = self.hello();
        self.pending_messages.push((peer, PeerMessage::Hello(hello)));
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.now_ticks += 1;
        self.replica.tick();
        if self.now_ticks.is_multiple_of(self.config.hello_interval_ticks.max(1)) {
            self.check_lag();
            let hello = self.hello();
            for &peer in self.replica.members() {
                if peer != self.replica.node_id() {
                    self.pending_messages.push((peer, PeerMessage::Hello(hello.clone())));
                }
            }
        }
        if self.reconfiguration.as_ref().is_some_and(|change| change.due_tick <= self.now_ticks) {
            self.propose_reconfiguration();
        }
        if self.now_ticks.is_multiple_of(self.config.compact_interval_ticks.max(1)) {
            self.compact();
            self.expire_serving();
        }
    }

    /// Proposes the barrier for waiting reads, applies what was decided, goes
    /// on with catching up, and moves messages and answers into `out`. After
    /// a storage fault it answers every waiting request with the fault and
    /// returns it; the driver is then unusable.
    pub fn poll(&mut self, out: &mut Output) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Stopped);
        }
        self.propose_barrier(out);
        let result = self.apply_decided(out).and_then(|()| self.drive_catch_up());
        // Everything this turn wrote reaches the disk before any message or
        // answer that depends on it leaves.
        let result = result.and_then(|()| {
            if self.sm.store().durability() == Durability::Deferred {
                self.sm.store().sync()?;
            }
            Ok(())
        });
        if let Err(error) = result {
            out.answers.append(&mut self.deferred_answers);
            return Err(self.fail(error, out));
        }
        self.replica.drain_outgoing(&mut self.paxos_out);
        let configuration_id = self.replica.status().configuration_id;
        out.messages.extend(
            self.paxos_out
                .drain(..)
                .map(|(to, message)| (to, PeerMessage::Paxos { configuration_id, message })),
        );
        out.messages.append(&mut self.pending_messages);
        out.answers.append(&mut self.deferred_answers);
        if let Some(membership) = self.deferred_membership.take() {
            out.membership = Some(membership);
        }
        Ok(())
    }

    pub fn status(&self) -> Status {
        let replica = self.replica.status();
        Status {
            node_id: replica.node_id,
            role: replica.role,
            leader: replica.leader,
            configuration_id: replica.configuration_id,
            decided_index: replica.decided_index,
            applied_index: self.sm.applied_index(),
            catch_up: self.stats,
            not_serving: self.check_available().err(),
        }
    }

    /// Every member as this node knows it, itself included, in id order.
    pub fn members(&self) -> Vec<Member> {
        let status = self.status();
        let me = &self.config.me;
        self.replica
            .members()
            .iter()
            .map(|&id| {
                if id == status.node_id {
                    return Member {
                        node_id: id,
                        api_address: Some(me.api_address.clone()),
                        peer_address: Some(me.peer_address.clone()),
                        zone: me.zone.clone(),
                        version: Some(me.version.clone()),
                        role: Some(status.role),
                        decided_index: Some(status.decided_index),
                        applied_index: Some(status.applied_index),
                        reachable: true,
                    };
                }
                let reachable = self
                    .heard_ticks_ago(id)
                    .is_some_and(|ago| ago <= self.config.peer_silence_ticks);
                let hello = self.hellos.get(&id);
                Member {
                    node_id: id,
                    api_address: hello.map(|h| h.api_address.clone()),
                    peer_address: hello.map(|h| h.peer_address.clone()),
                    zone: hello.and_then(|h| h.zone.clone()),
                    version: hello.map(|h| h.version.clone()),
                    role: hello.map(|h| if h.leader { Role::Leader } else { Role::Follower }),
                    decided_index: hello.map(|h| h.decided_index),
                    applied_index: hello.map(|h| h.applied_index),
                    reachable,
                }
            })
            .collect()
    }

    /// Whether this node can hear a majority of its configuration.
    pub fn quorum_in_sight(&self) -> bool {
        let members = self.replica.members();
        let heard = members
            .iter()
            .filter(|&&m| {
                m == self.replica.node_id()
                    || self
                        .heard_ticks_ago(m)
                        .is_some_and(|ago| ago <= self.config.peer_silence_ticks)
            })
            .count();
        heard > members.len() / 2
    }

    /// When `peer` was last heard from, in ticks ago.
    pub fn heard_ticks_ago(&self, peer: NodeId) -> Option<u64> {
        self.heard.get(&peer).map(|t| self.now_ticks.saturating_sub(*t))
    }

    /// Why the driver stopped taking decided entries, if it did.
    pub fn blocked(&self) -> Option<&Blocked> {
        self.blocked.as_ref()
    }

    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }

    pub fn now_ticks(&self) -> u64 {
        self.now_ticks
    }

    pub fn catch_up_stats(&self) -> CatchUpStats {
        self.stats
    }

    /// How many requests wait for an answer (reads included).
    pub fn waiting_len(&self) -> usize {
        self.keys.len() + self.unbarriered.len()
    }

    fn hello(&self) -> Hello {
        let status = self.status();
        Hello {
            leader: status.role == Role::Leader,
            decided_index: status.decided_index,
            applied_index: status.applied_index,
            ..self.config.me.clone()
        }
    }

    fn fail(&mut self, error: cairn_storage::Error, out: &mut Output) -> Error {
        self.failed = true;
        let message = error.to_string();
        tracing::error!(error = %message, "storage fault: the replica stops");
        for (request, _) in self.waiting.drain().flat_map(|(_, w)| w) {
            out.answers.push((request, Answer::Failed(Error::Storage(message.clone()))));
        }
        for request in self.unbarriered.drain(..) {
            out.answers.push((request, Answer::Failed(Error::Storage(message.clone()))));
        }
        self.keys.clear();
        Error::Storage(message)
    }

    fn check_available(&self) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Stopped);
        }
        if !self.quorum_in_sight() {
            return Err(Error::Unavailable {
                reason: format!(
                    "node {} hears from fewer than a majority of the members {:?}",
                    self.replica.node_id(),
                    self.replica.members()
                ),
            });
        }
        match &self.blocked {
            None => Ok(()),
            Some(Blocked::NeedsSnapshot { through_index }) => Err(Error::NotServing {
                reason: format!(
                    "node {} is catching up from a peer (applied {}, needs {through_index})",
                    self.replica.node_id(),
                    self.sm.applied_index()
                ),
            }),
            Some(Blocked::Reconfigured { index }) => Err(Error::NotServing {
                reason: format!(
                    "node {}'s configuration stopped at index {index} for a membership change",
                    self.replica.node_id()
                ),
            }),
            Some(Blocked::Removed { configuration_id }) => Err(Error::NotServing {
                reason: format!(
                    "node {} was removed from the cluster (configuration {configuration_id})",
                    self.replica.node_id()
                ),
            }),
            Some(Blocked::Alone { .. }) => Err(Error::NotServing {
                reason: format!(
                    "node {} is handing over to its single-node log",
                    self.replica.node_id()
                ),
            }),
        }
    }

    fn submit(&mut self, request: RequestId, command: Command, kind: Kind, out: &mut Output) {
        let Some(key) = command.wait_key() else {
            let error = Error::Busy { reason: "a command without an id or token".into() };
            out.answers.push((request, Answer::Failed(error)));
            return;
        };
        if let Err(error) = self.check_available() {
            out.answers.push((request, Answer::Failed(error)));
            return;
        }
        if let Err(error) = self.replica.propose(command) {
            let error = Error::Busy { reason: error.to_string() };
            out.answers.push((request, Answer::Failed(error)));
            return;
        }
        self.waiting.entry(key).or_default().push((request, kind));
        self.keys.insert(request, key);
    }

    /// One barrier for every read that arrived since the last one.
    fn propose_barrier(&mut self, out: &mut Output) {
        if self.unbarriered.is_empty() {
            return;
        }
        let token = self.rng.next_u64();
        let command = Command::new(None, Op::Barrier { token });
        if let Err(error) = self.replica.propose(command) {
            for request in self.unbarriered.drain(..) {
                let error = Error::Busy { reason: error.to_string() };
                out.answers.push((request, Answer::Failed(error)));
            }
            return;
        }
        let key = WaitKey::Token(token);
        let waiters = self.waiting.entry(key).or_default();
        for request in self.unbarriered.drain(..) {
            waiters.push((request, Kind::Read));
            self.keys.insert(request, key);
        }
    }

    fn apply_decided(&mut self, out: &mut Output) -> Result<(), cairn_storage::Error> {
        if self.blocked.is_some() {
            return Ok(());
        }
        loop {
            match self.replica.take_decided(APPLY_BATCH_ENTRIES_MAX) {
                Decided::Entries(entries) if entries.is_empty() => return Ok(()),
                Decided::Entries(entries) => {
                    let applied = self.sm.apply(&entries)?;
                    for ((_, command), applied) in entries.iter().zip(applied) {
                        self.answer(command, applied, out);
                    }
                }
                Decided::NeedsSnapshot { through_index } => {
                    tracing::info!(
                        applied = self.sm.applied_index(),
                        through_index,
                        "entries were compacted away here: catching up from a peer"
                    );
                    self.blocked = Some(Blocked::NeedsSnapshot { through_index });
                    return Ok(());
                }
                Decided::Reconfigured { index, stopsign } => {
                    return self.stopsign_decided(index, stopsign.metadata.as_deref(), out);
                }
            }
        }
    }

    fn answer(&mut self, command: &Command, applied: Applied, out: &mut Output) {
        let Some(key) = command.wait_key() else { return };
        let Some(waiters) = self.waiting.remove(&key) else { return };
        for (request, kind) in waiters {
            self.keys.remove(&request);
            let answer = match kind {
                Kind::Write => Answer::Applied(applied.clone()),
                Kind::Read => Answer::ReadReady { index: applied.index },
            };
            out.answers.push((request, answer));
        }
    }

    // ---- Membership changes ----

    fn propose_reconfiguration(&mut self) {
        let Some(change) = &mut self.reconfiguration else { return };
        change.due_tick = self.now_ticks + self.config.timing.repropose_timeout_ticks.max(1);
        let ids: Vec<NodeId> = change.members.keys().copied().collect();
        let metadata = serde_json::to_vec(&change.members).expect("a member map encodes");
        match self.replica.reconfigure(&ids, metadata) {
            // Stopping: a StopSign is already on its way; it decides.
            Ok(()) | Err(crate::replica::Error::Stopping { .. }) => {}
            Err(error) => {
                let change = self.reconfiguration.take().expect("a change in flight");
                for request in change.waiters {
                    let error = Error::Refused { reason: error.to_string() };
                    self.deferred_answers.push((request, Answer::Failed(error)));
                }
            }
        }
    }

    /// The StopSign at `index` ended this configuration: apply it (as a
    /// no-op, so indexes stay contiguous) and move to the next one.
    fn stopsign_decided(
        &mut self,
        index: u64,
        metadata: Option<&[u8]>,
        out: &mut Output,
    ) -> Result<(), cairn_storage::Error> {
        let members: Option<BTreeMap<NodeId, SocketAddr>> =
            metadata.and_then(|bytes| serde_json::from_slice(bytes).ok());
        let Some(members) = members else {
            tracing::error!(
                index,
                "a StopSign without a readable member list: this node stops here"
            );
            self.blocked = Some(Blocked::Reconfigured { index });
            return Ok(());
        };
        if self.sm.applied_index() + 1 == index {
            let noop = [(index, Command::new(None, Op::Noop))];
            self.sm.apply(&noop)?;
        }
        let next = self.membership.next(members, index);
        tracing::info!(
            index,
            configuration_id = next.configuration_id,
            members = ?next.ids(),
            "the configuration stopped: moving to the next one"
        );
        self.switch_to(next, out)
    }

    /// Moves to `next`: stores it with a fresh log, opens its replica, and
    /// proposes again what was pending; or stops taking requests when this
    /// node is not in it, or hands over when it is alone in it.
    fn switch_to(
        &mut self,
        next: Membership,
        out: &mut Output,
    ) -> Result<(), cairn_storage::Error> {
        let me = self.config.node_id;
        let pending = self.replica.pending_commands();
        // The old configuration's last messages (the decision of its
        // StopSign among them) still go out, under its id.
        let configuration_id = self.membership.configuration_id;
        let mut last = Vec::new();
        self.replica.drain_outgoing(&mut last);
        self.pending_messages.extend(
            last.into_iter()
                .map(|(to, message)| (to, PeerMessage::Paxos { configuration_id, message })),
        );
        if let Some(change) = self.reconfiguration.take() {
            for request in change.waiters {
                out.answers.push((request, Answer::Reconfigured(next.clone())));
            }
        }
        out.membership = Some(next.clone());
        self.catch_up = None;
        self.lagging_since = None;
        if !next.contains(me) {
            self.blocked = Some(Blocked::Removed { configuration_id: next.configuration_id });
            self.membership = next;
            let reason = format!("node {me} was removed from the cluster");
            for (request, _) in self.waiting.drain().flat_map(|(_, w)| w) {
                let error = Error::NotServing { reason: reason.clone() };
                out.answers.push((request, Answer::Failed(error)));
            }
            self.keys.clear();
            return Ok(());
        }
        next.begin(self.sm.store()).map_err(|e| match e {
            crate::membership::MembershipError::Storage(e) => e,
            other => cairn_storage::Error::Corrupt { what: other.to_string() },
        })?;
        self.membership = next.clone();
        if next.members.len() == 1 {
            self.blocked = Some(Blocked::Alone { configuration_id: next.configuration_id });
            return Ok(());
        }
        let config = self.config.replica_config(&next);
        self.replica = Replica::open(config, self.sm.store(), self.sm.applied_index()).map_err(
            |e| match e {
                crate::replica::Error::Storage(e) => e,
                other => cairn_storage::Error::Corrupt { what: other.to_string() },
            },
        )?;
        self.blocked = None;
        for command in pending {
            if let Err(error) = self.replica.propose(command) {
                tracing::warn!(%error, "a pending command was not proposed again");
            }
        }
        Ok(())
    }

    /// Asks `peer` for its membership, at most once per hello interval.
    fn ask_membership(&mut self, peer: NodeId) {
        let interval = self.config.hello_interval_ticks.max(1);
        if self.membership_asked_tick.is_some_and(|t| self.now_ticks < t + interval) {
            return;
        }
        self.membership_asked_tick = Some(self.now_ticks);
        self.pending_messages.push((peer, PeerMessage::FetchMembership));
    }

    /// OmniPaxos notices that a follower missed entries only when the next
    /// one arrives (or the link comes back): a follower cut off without
    /// losing its connection stays behind until the next write. When the
    /// leader's hellos show it ahead, twice in a row without progress here,
    /// the follower asks it to resynchronise.
    fn check_lag(&mut self) {
        let me = self.replica.node_id();
        let decided = self.replica.decided_index();
        let ahead = self
            .replica
            .leader()
            .filter(|leader| *leader != me)
            .and_then(|leader| self.hellos.get(&leader).map(|h| (leader, h.decided_index)))
            .filter(|(_, leader_decided)| *leader_decided > decided);
        match (ahead, self.lagging_since) {
            (Some((leader, _)), Some(before)) if before == decided => {
                tracing::info!(
                    leader,
                    decided,
                    "behind the leader without progress: resynchronising"
                );
                let _ = self.replica.reconnected(leader);
                self.lagging_since = None;
            }
            (Some(_), _) => self.lagging_since = Some(decided),
            (None, _) => self.lagging_since = None,
        }
    }

    // ---- Compaction ----

    fn compact(&mut self) {
        let applied = self.sm.applied_index();
        let through = applied.saturating_sub(self.config.log_retain_entries);
        if through > 0 && self.replica.compact(through) {
            self.stats.compactions += 1;
            tracing::debug!(through, "compacted the log");
        }
    }

    // ---- Catching up (the side that lacks entries) ----

    /// Starts, re-asks or finishes catching up.
    fn drive_catch_up(&mut self) -> Result<(), cairn_storage::Error> {
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else {
            return Ok(());
        };
        if self.sm.applied_index() >= through_index && self.catch_up.is_none() {
            self.caught_up();
            return Ok(());
        }
        let timeout = self.config.catch_up_timeout_ticks.max(1);
        match &mut self.catch_up {
            None => self.ask_entries(None),
            Some(CatchUp::Entries { peer, asked_tick }) => {
                if self.now_ticks >= *asked_tick + timeout {
                    let previous = *peer;
                    self.ask_entries(Some(previous));
                }
            }
            Some(CatchUp::Snapshot { peer, transfer, next_chunk, asked_tick, .. }) => {
                if self.now_ticks >= *asked_tick + timeout {
                    *asked_tick = self.now_ticks;
                    let message =
                        PeerMessage::FetchSnapshot { transfer: *transfer, chunk: *next_chunk };
                    self.pending_messages.push((*peer, message));
                }
            }
        }
        Ok(())
    }

    /// A peer that has applied past the gap, other than `avoid` when there is
    /// a choice; the leader first.
    fn catch_up_source(&self, avoid: Option<NodeId>) -> Option<NodeId> {
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else { return None };
        let me = self.replica.node_id();
        let leader = self.replica.leader();
        let mut candidates: Vec<NodeId> = self
            .hellos
            .iter()
            .filter(|(id, hello)| **id != me && hello.applied_index >= through_index)
            .map(|(id, _)| *id)
            .collect();
        candidates.sort_by_key(|id| (Some(*id) != leader, Some(*id) == avoid, *id));
        candidates.first().copied()
    }

    fn ask_entries(&mut self, avoid: Option<NodeId>) {
        let Some(peer) = self.catch_up_source(avoid) else {
            self.catch_up = None;
            return;
        };
        let from = self.sm.applied_index() + 1;
        self.catch_up = Some(CatchUp::Entries { peer, asked_tick: self.now_ticks });
        self.pending_messages.push((peer, PeerMessage::FetchEntries { from }));
    }

    fn entries_arrived(
        &mut self,
        peer: NodeId,
        from: u64,
        commands: Vec<Command>,
    ) -> Result<(), Error> {
        let expected = matches!(self.catch_up, Some(CatchUp::Entries { peer: p, .. }) if p == peer);
        if !expected || from != self.sm.applied_index() + 1 || commands.is_empty() {
            return Ok(());
        }
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else { return Ok(()) };
        // Only the gap: what follows it is in the local log.
        let gap = (through_index + 1).saturating_sub(from);
        if gap == 0 {
            return Ok(());
        }
        let count = commands.len().min(usize::try_from(gap).unwrap_or(usize::MAX));
        let entries: Vec<(u64, Command)> = commands
            .into_iter()
            .take(count)
            .enumerate()
            .map(|(i, c)| (from + i as u64, c))
            .collect();
        let mut out = Output::default();
        let applied = match self.sm.apply(&entries) {
            Ok(applied) => applied,
            Err(error) => return Err(self.fail(error, &mut out)),
        };
        self.stats.entries_fetched += entries.len() as u64;
        for ((_, command), applied) in entries.iter().zip(applied) {
            self.answer(command, applied, &mut out);
        }
        self.deferred_answers.append(&mut out.answers);
        if self.sm.applied_index() >= through_index {
            self.catch_up = None;
            self.caught_up();
        } else {
            let from = self.sm.applied_index() + 1;
            self.catch_up = Some(CatchUp::Entries { peer, asked_tick: self.now_ticks });
            self.pending_messages.push((peer, PeerMessage::FetchEntries { from }));
        }
        Ok(())
    }

    fn entries_unavailable(&mut self, peer: NodeId, from: u64) {
        let expected = matches!(self.catch_up, Some(CatchUp::Entries { peer: p, .. }) if p == peer);
        if !expected || from != self.sm.applied_index() + 1 {
            return;
        }
        let transfer = self.rng.next_u64();
        tracing::info!(peer, from, transfer, "the peer compacted the entries: fetching a snapshot");
        self.catch_up = Some(CatchUp::Snapshot {
            peer,
            transfer,
            next_chunk: 0,
            sink: None,
            asked_tick: self.now_ticks,
        });
        self.pending_messages.push((peer, PeerMessage::FetchSnapshot { transfer, chunk: 0 }));
    }

    fn chunk_arrived(
        &mut self,
        peer: NodeId,
        transfer: u64,
        chunk_seq: u64,
        bytes: &[u8],
    ) -> Result<(), Error> {
        let Some(CatchUp::Snapshot { peer: p, transfer: t, next_chunk, .. }) = &self.catch_up
        else {
            return Ok(());
        };
        if *p != peer || *t != transfer || *next_chunk != chunk_seq {
            return Ok(());
        }
        let Some(Blocked::NeedsSnapshot { through_index }) = self.blocked else { return Ok(()) };
        let chunk = match Chunk::decode(bytes) {
            Ok(chunk) => chunk,
            Err(error) => {
                tracing::warn!(peer, %error, "a snapshot chunk was refused: starting over");
                self.restart_snapshot(peer);
                return Ok(());
            }
        };
        let applied = self.sm.applied_index();
        if chunk_seq == 0 && (chunk.applied_index < through_index || chunk.applied_index <= applied)
        {
            tracing::warn!(
                peer,
                snapshot = chunk.applied_index,
                through_index,
                applied,
                "the peer's snapshot does not cover the gap: asking again"
            );
            self.catch_up = None;
            return Ok(());
        }
        let Some(CatchUp::Snapshot { sink, next_chunk, asked_tick, .. }) = &mut self.catch_up
        else {
            return Ok(());
        };
        if sink.is_none() {
            match SnapshotSink::begin(self.sm.store(), chunk.applied_index) {
                Ok(opened) => *sink = Some(opened),
                Err(error) => return Err(self.fail_now(error)),
            }
        }
        let last = chunk.last;
        let open = sink.as_mut().expect("the sink was just opened");
        match open.push(chunk) {
            Ok(()) => {}
            Err(error @ cairn_storage::Error::Snapshot { .. }) => {
                tracing::warn!(peer, %error, "a snapshot chunk was refused: starting over");
                self.restart_snapshot(peer);
                return Ok(());
            }
            Err(error) => return Err(self.fail_now(error)),
        }
        *next_chunk += 1;
        *asked_tick = self.now_ticks;
        if !last {
            let message = PeerMessage::FetchSnapshot { transfer, chunk: *next_chunk };
            self.pending_messages.push((peer, message));
            return Ok(());
        }
        let Some(CatchUp::Snapshot { sink: Some(sink), .. }) = self.catch_up.take() else {
            unreachable!("a snapshot transfer with an open sink");
        };
        let installed = sink.finish().and_then(|index| self.sm.reload().map(|()| index));
        match installed {
            Ok(index) => {
                self.stats.snapshots_installed += 1;
                tracing::info!(peer, index, "installed a snapshot from a peer");
                self.caught_up();
                Ok(())
            }
            Err(error) => Err(self.fail_now(error)),
        }
    }

    fn snapshot_unavailable(&mut self, peer: NodeId, transfer: u64, reason: &str) {
        let ours = matches!(&self.catch_up, Some(CatchUp::Snapshot { peer: p, transfer: t, .. }) if *p == peer && *t == transfer);
        if ours {
            tracing::warn!(peer, reason, "the peer cannot serve a snapshot: asking again later");
            // A half-installed snapshot stays marked incomplete until the
            // next transfer overwrites it.
            self.catch_up = None;
        }
    }

    /// Starts a new transfer from the same peer after a refused chunk.
    fn restart_snapshot(&mut self, peer: NodeId) {
        let transfer = self.rng.next_u64();
        self.catch_up = Some(CatchUp::Snapshot {
            peer,
            transfer,
            next_chunk: 0,
            sink: None,
            asked_tick: self.now_ticks,
        });
        self.pending_messages.push((peer, PeerMessage::FetchSnapshot { transfer, chunk: 0 }));
    }

    /// The gap is filled: the replica resumes after the applied index.
    fn caught_up(&mut self) {
        let applied = self.sm.applied_index();
        self.stats.gaps_filled += 1;
        tracing::info!(applied, "caught up from a peer");
        self.replica.snapshot_installed(applied);
        self.blocked = None;
        self.catch_up = None;
    }

    fn fail_now(&mut self, error: cairn_storage::Error) -> Error {
        let mut out = Output::default();
        let error = self.fail(error, &mut out);
        self.deferred_answers.append(&mut out.answers);
        error
    }

    // ---- Serving peers that catch up ----

    fn serve_entries(&mut self, peer: NodeId, from: u64) {
        let message = match self.replica.read_decided(from, FETCH_ENTRIES_MAX) {
            Some(mut commands) => {
                let mut bytes = 0;
                let keep = commands
                    .iter()
                    .position(|command| {
                        bytes += command.encode().len();
                        bytes > FETCH_ENTRIES_BYTES_MAX
                    })
                    .unwrap_or(commands.len())
                    .max(1);
                commands.truncate(keep);
                PeerMessage::Entries { from, commands }
            }
            None => PeerMessage::EntriesUnavailable { from },
        };
        self.pending_messages.push((peer, message));
    }

    fn serve_snapshot(&mut self, peer: NodeId, transfer: u64, chunk: u64) {
        let unavailable = |reason: String| PeerMessage::SnapshotUnavailable { transfer, reason };
        let current = self.serving.get(&peer).is_some_and(|s| s.transfer == transfer);
        if !current {
            if chunk != 0 {
                self.pending_messages.push((peer, unavailable(format!("no transfer {transfer}"))));
                return;
            }
            self.serving.remove(&peer);
            if self.serving.len() >= SNAPSHOTS_SERVED_MAX {
                let reason = format!("already serving {SNAPSHOTS_SERVED_MAX} snapshots");
                self.pending_messages.push((peer, unavailable(reason)));
                return;
            }
            if let Err(error) = std::fs::create_dir_all(&self.config.snapshot_dir) {
                self.pending_messages.push((peer, unavailable(error.to_string())));
                return;
            }
            let dir = self.config.snapshot_dir.join(format!("{peer}-{transfer:016x}"));
            let _ = std::fs::remove_dir_all(&dir);
            match SnapshotSource::create(self.sm.store(), &dir) {
                Ok(source) => {
                    self.stats.snapshots_served += 1;
                    tracing::info!(peer, applied = source.applied_index(), "serving a snapshot");
                    let serving = Serving {
                        transfer,
                        source,
                        next_chunk: 0,
                        last_sent: None,
                        used_tick: self.now_ticks,
                    };
                    self.serving.insert(peer, serving);
                }
                Err(error) => {
                    self.pending_messages.push((peer, unavailable(error.to_string())));
                    return;
                }
            }
        }
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let serving = self.serving.get_mut(&peer).expect("serving this peer");
        serving.used_tick = self.now_ticks;
        let message = match &serving.last_sent {
            Some((seq, bytes)) if *seq == chunk => {
                PeerMessage::SnapshotChunk { transfer, chunk, bytes: bytes.clone() }
            }
            _ if chunk == serving.next_chunk => match serving.source.next_chunk(chunk_bytes) {
                Ok(Some(next)) => {
                    let bytes = next.encode();
                    serving.next_chunk += 1;
                    serving.last_sent = Some((chunk, bytes.clone()));
                    PeerMessage::SnapshotChunk { transfer, chunk, bytes }
                }
                Ok(None) => unavailable(format!("transfer {transfer} has no chunk {chunk}")),
                Err(error) => {
                    self.serving.remove(&peer);
                    unavailable(error.to_string())
                }
            },
            _ => unavailable(format!("chunk {chunk} is out of order")),
        };
        self.pending_messages.push((peer, message));
    }

    /// Drops the snapshots nobody asked for in a while (their checkpoints
    /// go with them).
    fn expire_serving(&mut self) {
        let idle = self.config.catch_up_timeout_ticks.max(1) * 10;
        let now = self.now_ticks;
        self.serving.retain(|_, serving| now.saturating_sub(serving.used_tick) <= idle);
    }
}
