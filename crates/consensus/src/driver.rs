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
//! Every node that lags closes its gap in the end, because the node with the
//! most advanced state can always move on: the leader that decided the next
//! entry after that state kept it (a node keeps decided entries until it
//! applies them, and it has not applied that one, or its state would be
//! further on), and the node asks every peer that decided that entry in
//! turn, after looking in its own log first. Every other node then gets
//! entries or a snapshot from a peer past it. A peer past this node but short
//! of its gap's end answers with a snapshot all the same: it leaves less to
//! fill, and the entries in between may exist nowhere any more.
//!
//! # Membership changes (`driver/reconfigure.rs`)
//!
//! A change asked for here is proposed as a StopSign whose metadata is the
//! next member list, once a check shows that enough members of the next
//! configuration hold the data. A decided StopSign is applied as a no-op and
//! the node moves to the next configuration (a fresh log), stops serving when
//! it is not in it, or hands over to the single-node log when it is alone in
//! it. A member that hears of a newer configuration before it applied the
//! current one to its end catches up to the new one's base index first.
//!
//! # Not here
//!
//! - Choosing members: the caller (an operator, the control plane) asks.
//! - Time: it counts the ticks it is given.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use cairn_storage::snapshot::CHUNK_PAYLOAD_BYTES_DEFAULT;
use cairn_storage::{Applied, Command, CommandId, Durability, Op, StateMachine, WaitKey};
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

mod catch_up;
mod reads;
mod reconfigure;

use crate::replica::{Decided, Message, NodeId, Replica, ReplicaConfig, Timing};
pub use crate::CatchUpStats;
use crate::{Error, Member, Role, Status};
use cairn_util::Rng;
use catch_up::{CatchUp, Serving};
pub use reads::ReadStats;
use reconfigure::Reconfiguration;

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
/// Election rounds out of the accept phase, with a majority in sight, before
/// a node starts an election itself (at least; see `check_unsettled`).
const UNSETTLED_ROUNDS_MIN: u64 = 8;

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
    /// A leader asks which ballot the receiver has promised, for its read
    /// confirmation round `round` (see `driver/reads.rs`).
    ReadConfirm { configuration_id: u32, round: u64 },
    /// The answer to [`PeerMessage::ReadConfirm`].
    ReadConfirmed {
        configuration_id: u32,
        round: u64,
        promise: omnipaxos::ballot_leader_election::Ballot,
    },
    /// A follower asks its leader for a read index; `ask` names the request.
    ReadIndex { configuration_id: u32, ask: u64 },
    /// The leader's answer: serve once applied through `index`, or (`None`)
    /// it cannot say, and the reads go through the log.
    ReadIndexReply { ask: u64, index: Option<u64> },
}

/// Why bytes from a peer are not a [`PeerMessage`].
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("a peer message does not decode: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{0} bytes follow a peer message")]
    Trailing(usize),
}

impl PeerMessage {
    /// Encodes for the network.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Decodes what a peer sent: all of `bytes` is one message. A length
    /// written in the bytes reserves at most about 1 MiB ahead (serde's
    /// cautious size hint), never what the length claims.
    pub fn decode(bytes: &[u8]) -> Result<PeerMessage, DecodeError> {
        let (message, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::Trailing(rest.len()));
        }
        Ok(message)
    }
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
    /// Most bytes of entries in one consensus message (see
    /// [`crate::replica::MESSAGE_ENTRIES_BYTES_MAX`], the default).
    pub message_entries_bytes_max: usize,
    /// Where checkpoints for peers are taken: a directory on the store's
    /// file system (checkpoints are hard links), emptied at start.
    pub snapshot_dir: PathBuf,
    /// After how many ticks a read that waits for a confirmation round, a
    /// leader's answer or its state to catch up goes through the log
    /// instead (see `driver/reads.rs`).
    pub read_index_timeout_ticks: u64,
    /// Keep a record of every applied entry for [`Driver::take_applied`]
    /// (simulations check replicas against each other with it).
    pub record_applied: bool,
    /// A planted bug, for the simulator's proof that it finds bugs: answer
    /// linearizable reads from local state at once, without a barrier. Only
    /// in test builds (feature `planted-bugs`).
    #[cfg(feature = "planted-bugs")]
    pub planted_stale_reads: bool,
    /// A planted bug: a leader serves reads after a confirmation round that
    /// nobody answered (no quorum check). Test builds only.
    #[cfg(feature = "planted-bugs")]
    pub planted_unconfirmed_reads: bool,
    /// A planted bug: every replica message leaves before the turn's sync,
    /// acceptances and promises included. Test builds only.
    #[cfg(feature = "planted-bugs")]
    pub planted_early_acceptances: bool,
}

/// One entry as a driver applied it (see [`DriverConfig::record_applied`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppliedEntry {
    pub index: u64,
    pub id: Option<CommandId>,
    /// Whether the command took effect here (false: a repeat answered from
    /// memory, or one refused as stale or from an unknown session).
    pub fresh: bool,
    /// FNV-1a of the command's encoding: equal entries on two replicas have
    /// equal fingerprints.
    pub fingerprint: u64,
}

/// A snapshot as a driver served or installed it (see
/// [`DriverConfig::record_applied`]): the state's fingerprint
/// ([`cairn_storage::Store::state_fingerprint`]) at the snapshot's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotEvent {
    /// A checkpoint taken here for `peer`.
    Served { peer: NodeId, applied_index: u64, state: u64 },
    /// A snapshot from `peer` installed here; `short_of_gap` when it did
    /// not reach the end of the gap it was fetched for (no peer had applied
    /// that far), so that entries still had to follow.
    Installed { peer: NodeId, applied_index: u64, state: u64, short_of_gap: bool },
}

/// Whether a replica message may leave before the turn's writes are on
/// disk: the leader's accepts and decisions, and proposals forwarded to it.
/// Promises, acceptances and the leader's sync of a follower's log all
/// report what this node wrote: they wait for the sync.
fn leaves_before_sync(message: &Message) -> bool {
    use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
    matches!(
        message,
        Message::SequencePaxos(PaxosMessage {
            msg: PaxosMsg::AcceptDecide(_) | PaxosMsg::Decide(_) | PaxosMsg::ProposalForward(_),
            ..
        })
    )
}

/// Whether the state machine refused a command for its session or sequence
/// (it did not take effect, and it is not a fresh application).
fn refused_as_repeat(outcome: &cairn_storage::Outcome) -> bool {
    use cairn_storage::ApplyError;
    matches!(
        outcome,
        cairn_storage::Outcome::Failed(
            ApplyError::SessionUnknown { .. }
                | ApplyError::StaleSequence { .. }
                | ApplyError::SequenceReused { .. }
        )
    )
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hash = cairn_storage::fnv::Fnv1a::new();
    hash.write(bytes);
    hash.finish()
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
            message_entries_bytes_max: crate::replica::MESSAGE_ENTRIES_BYTES_MAX,
            snapshot_dir,
            read_index_timeout_ticks: election * 2,
            record_applied: false,
            #[cfg(feature = "planted-bugs")]
            planted_stale_reads: false,
            #[cfg(feature = "planted-bugs")]
            planted_unconfirmed_reads: false,
            #[cfg(feature = "planted-bugs")]
            planted_early_acceptances: false,
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
            message_entries_bytes_max: self.message_entries_bytes_max,
            leader_priority: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Answered with the applied outcome.
    Write,
    /// Answered with `ReadReady` once its barrier is applied.
    Read,
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
    waiting: BTreeMap<WaitKey, Vec<(RequestId, Kind)>>,
    /// Each waiting request's key, to cancel it.
    keys: BTreeMap<RequestId, WaitKey>,
    /// Reads that arrived since the last barrier was proposed.
    unbarriered: Vec<RequestId>,
    /// Reads served after a confirmation round instead of a barrier.
    reads: reads::Reads,
    blocked: Option<Blocked>,
    catch_up: Option<CatchUp>,
    /// Catch-up requests made so far, to take peers in turn.
    catch_up_turn: u64,
    /// A snapshot install began here and has not finished: the store holds
    /// part of a state until one does.
    install_begun: bool,
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
    /// The replica's messages that wait for this turn's sync.
    held_out: Vec<(NodeId, Message)>,
    stats: CatchUpStats,
    /// Applied entries and snapshots, when `record_applied` is set.
    applied_log: Vec<AppliedEntry>,
    snapshot_log: Vec<SnapshotEvent>,
    /// This node's decided index when it last saw its leader ahead of it.
    lagging_since: Option<u64>,
    /// Election rounds in a row spent out of the accept phase with a
    /// majority in sight, and how many make this node start an election.
    unsettled_rounds: u64,
    unsettled_limit: u64,
    /// The configuration this node is in.
    membership: Membership,
    /// A membership change asked for here, until its StopSign is decided.
    reconfiguration: Option<Reconfiguration>,
    /// When this node last asked a peer for a newer membership.
    membership_asked_tick: Option<u64>,
    /// The peers asked for their membership and not yet answered: only
    /// their answers are taken (a membership nobody asked for is a peer's
    /// bug or an impostor's attempt to move this node).
    membership_asked: BTreeSet<NodeId>,
    /// The applied and decided indexes at the end of the last poll: neither
    /// ever goes back.
    high_water: (u64, u64),
    /// A newer configuration that includes this node, learned from a peer
    /// before this node applied the current one to its end: it catches up
    /// to that configuration's base index first (see `membership_arrived`).
    moving_to: Option<Membership>,
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
            waiting: BTreeMap::new(),
            keys: BTreeMap::new(),
            unbarriered: Vec::new(),
            reads: reads::Reads::default(),
            blocked: None,
            catch_up: None,
            catch_up_turn: 0,
            install_begun: false,
            serving: BTreeMap::new(),
            // A different stream from the replica's, from the same seed.
            rng: Rng::new(seed.rotate_left(17) ^ node_id.wrapping_mul(0x9E37_79B9)),
            failed: false,
            pending_messages: Vec::new(),
            deferred_answers: Vec::new(),
            deferred_membership: None,
            paxos_out: Vec::new(),
            held_out: Vec::new(),
            stats: CatchUpStats::default(),
            applied_log: Vec::new(),
            snapshot_log: Vec::new(),
            lagging_since: None,
            unsettled_rounds: 0,
            unsettled_limit: UNSETTLED_ROUNDS_MIN,
            membership,
            reconfiguration: None,
            membership_asked_tick: None,
            membership_asked: BTreeSet::new(),
            moving_to: None,
            high_water: (0, 0),
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
        #[cfg(feature = "planted-bugs")]
        if self.config.planted_stale_reads {
            let index = self.sm.applied_index();
            out.answers.push((request, Answer::ReadReady { index }));
            return;
        }
        self.read_arrived(request);
    }

    /// The caller gave up on `request`: it gets no answer, and the command is
    /// no longer re-proposed if nobody else waits for it.
    pub fn cancel(&mut self, request: RequestId) {
        if self.reads.cancel(request) {
            return;
        }
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
            PeerMessage::Membership(next) => return self.membership_arrived(from, next),
            PeerMessage::ReadConfirm { configuration_id, round } => {
                self.read_confirm_arrived(from, configuration_id, round)
            }
            PeerMessage::ReadConfirmed { configuration_id, round, promise } => {
                self.read_confirmed_arrived(from, configuration_id, round, promise)
            }
            PeerMessage::ReadIndex { configuration_id, ask } => {
                self.read_index_asked(from, configuration_id, ask)
            }
            PeerMessage::ReadIndexReply { ask, index } => {
                self.read_index_answered(from, ask, index)
            }
        }
        Ok(())
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
            self.check_unsettled();
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
        self.expire_reads();
        if self.now_ticks.is_multiple_of(self.config.compact_interval_ticks.max(1)) {
            self.compact();
            self.expire_serving();
        }
    }

    /// One whole turn: [`Driver::prepare`], then [`Driver::commit`], with
    /// every message and answer of both in `out`.
    pub fn poll(&mut self, out: &mut Output) -> Result<(), Error> {
        self.prepare(out)?;
        self.commit(out)
    }

    /// The first half of a turn: proposes the barrier for waiting reads,
    /// applies what was decided and goes on with catching up. It leaves in
    /// `out` only what may leave before this turn's writes reach the disk:
    /// the leader's accepts and decisions, sent while it syncs its own copy
    /// of the entries (its own accept counts only in a later turn, after
    /// [`Driver::commit`] synced: Raft's "write to the leader's disk in
    /// parallel"), forwarded proposals, and the answers of applied entries,
    /// which rest on entries a majority holds on disk, not on this node's
    /// copy. Send those, then call [`Driver::commit`] before anything else.
    /// After a storage fault it answers every waiting request with the fault
    /// and returns it; the driver is then unusable.
    pub fn prepare(&mut self, out: &mut Output) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Stopped);
        }
        self.drive_reads(out);
        self.propose_barrier(out);
        let result = self.apply_decided(out).and_then(|()| self.drive_catch_up());
        self.serve_ready(out);
        if let Err(error) = result {
            out.answers.append(&mut self.deferred_answers);
            return Err(self.fail(error, out));
        }
        self.replica.drain_outgoing(&mut self.paxos_out);
        let configuration_id = self.replica.status().configuration_id;
        // A message leaves early only if no message before it to the same
        // node waits for the sync: each link keeps its order.
        let mut held: BTreeSet<NodeId> = BTreeSet::new();
        #[cfg(feature = "planted-bugs")]
        let planted = self.config.planted_early_acceptances;
        #[cfg(not(feature = "planted-bugs"))]
        let planted = false;
        for (to, message) in self.paxos_out.drain(..) {
            if !held.contains(&to) && (planted || leaves_before_sync(&message)) {
                out.messages.push((to, PeerMessage::Paxos { configuration_id, message }));
            } else {
                held.insert(to);
                self.held_out.push((to, message));
            }
        }
        Ok(())
    }

    /// The second half of a turn: syncs this turn's writes if anything
    /// depends on them (a log append, a promise; applying entries owes no
    /// sync, as recovery replays the log), then moves the other messages and
    /// answers into `out`.
    pub fn commit(&mut self, out: &mut Output) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Stopped);
        }
        if self.sm.store().durability() != Durability::Synced {
            if let Err(error) = self.sm.store().sync_owed() {
                out.answers.append(&mut self.deferred_answers);
                return Err(self.fail(error, out));
            }
        }
        let configuration_id = self.replica.status().configuration_id;
        out.messages.extend(
            self.held_out
                .drain(..)
                .map(|(to, message)| (to, PeerMessage::Paxos { configuration_id, message })),
        );
        out.messages.append(&mut self.pending_messages);
        out.answers.append(&mut self.deferred_answers);
        if let Some(membership) = self.deferred_membership.take() {
            out.membership = Some(membership);
        }
        self.check_progress();
        Ok(())
    }

    /// The indexes move only forward, and the replica never hands out more
    /// than the state machine applied (a snapshot or a gap fill can take the
    /// state past it; the replica then resumes after the state).
    fn check_progress(&mut self) {
        let applied = self.sm.applied_index();
        let decided = self.replica.decided_index();
        let (applied_before, decided_before) = self.high_water;
        assert!(
            applied >= applied_before,
            "applied index went back: {applied_before} to {applied}"
        );
        assert!(
            decided >= decided_before,
            "decided index went back: {decided_before} to {decided}"
        );
        let taken = self.replica.taken_index();
        assert!(taken <= applied, "the replica handed out {taken}, the state applied {applied}");
        self.high_water = (applied, decided);
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

    /// The entries applied since the last call (empty unless
    /// `record_applied` is set).
    pub fn take_applied(&mut self) -> Vec<AppliedEntry> {
        std::mem::take(&mut self.applied_log)
    }

    /// The snapshots served and installed since the last call (empty unless
    /// `record_applied` is set).
    pub fn take_snapshot_events(&mut self) -> Vec<SnapshotEvent> {
        std::mem::take(&mut self.snapshot_log)
    }

    pub fn catch_up_stats(&self) -> CatchUpStats {
        self.stats
    }

    /// How many requests wait for an answer (reads included).
    pub fn waiting_len(&self) -> usize {
        self.keys.len() + self.unbarriered.len() + self.reads.len()
    }

    /// How reads were served so far.
    pub fn read_stats(&self) -> ReadStats {
        self.reads.stats
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
        for (request, _) in std::mem::take(&mut self.waiting).into_values().flatten() {
            out.answers.push((request, Answer::Failed(Error::Storage(message.clone()))));
        }
        for request in self.unbarriered.drain(..) {
            out.answers.push((request, Answer::Failed(Error::Storage(message.clone()))));
        }
        for request in self.reads.take_all() {
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
        // Writes carry an exactly-once id and session openings a token: the
        // proposer and `open_session` see to it.
        let key = command.wait_key().expect("a write or session opening names what it awaits");
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
        let earlier = self.keys.insert(request, key);
        assert!(earlier.is_none(), "request {request} was submitted twice");
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
        if self.moving_to.is_some() {
            return self.finish_move(out);
        }
        loop {
            match self.replica.take_decided(APPLY_BATCH_ENTRIES_MAX) {
                Decided::Entries(entries) if entries.is_empty() => return Ok(()),
                Decided::Entries(entries) => {
                    let applied = self.sm.apply(&entries)?;
                    self.record_applied(&entries, &applied);
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
                    let nodes = &stopsign.next_config.nodes;
                    return self.stopsign_decided(index, nodes, stopsign.metadata.as_deref(), out);
                }
            }
        }
    }

    /// Answers the writes waiting here that the state machine already
    /// settles (see `StateMachine::recall`): after a snapshot, the entries it
    /// covers were never applied here one by one, and their requests would
    /// otherwise wait for a copy decided again, or, on a node that leaves,
    /// never learn that they took effect.
    pub(super) fn settle_from_state(
        &mut self,
        out: &mut Output,
    ) -> Result<(), cairn_storage::Error> {
        let keys: Vec<WaitKey> =
            self.waiting.keys().copied().filter(|k| matches!(k, WaitKey::Id(_))).collect();
        for key in keys {
            let Some(command) = self.replica.pending_command(&key).cloned() else { continue };
            if let Some(applied) = self.sm.recall(&command)? {
                self.answer(&command, applied, out);
                self.replica.forget(key);
            }
        }
        Ok(())
    }

    /// Keeps a snapshot served or installed, for checkers, when asked to.
    pub(super) fn record_snapshot(&mut self, event: impl FnOnce(u64, u64) -> SnapshotEvent) {
        if !self.config.record_applied {
            return;
        }
        let applied = self.sm.applied_index();
        match self.sm.store().state_fingerprint() {
            Ok(state) => self.snapshot_log.push(event(applied, state)),
            Err(error) => tracing::warn!(%error, "cannot fingerprint the state"),
        }
    }

    /// Keeps what was applied, for checkers, when asked to.
    fn record_applied(&mut self, entries: &[(u64, Command)], applied: &[Applied]) {
        if !self.config.record_applied {
            return;
        }
        for ((index, command), applied) in entries.iter().zip(applied) {
            self.applied_log.push(AppliedEntry {
                index: *index,
                id: command.id,
                fresh: applied.index == *index && !refused_as_repeat(&applied.outcome),
                fingerprint: fingerprint(&command.encode()),
            });
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

    /// A node that hears a majority but stays out of the accept phase for
    /// many election rounds starts an election itself.
    ///
    /// OmniPaxos 0.2.4 can leave a node there for good: a node that promised
    /// its own candidate ballot, which never won, and then restarted, recovers
    /// that promise as a follower. The leader the others elected meanwhile may
    /// hold a lower ballot: the node refuses its `Prepare`, and the leader
    /// ignores the node's `PrepareReq` for a ballot above its own. Its leader
    /// election sees a happy majority and never runs an election either.
    /// Only a ballot above every promise ends it. A healthy leader settles a
    /// follower within a resend round, so the limit (8 to 15 rounds, drawn
    /// per node so that two stuck nodes do not duel) is reached only when
    /// nothing else would help.
    fn check_unsettled(&mut self) {
        if self.replica.is_settled() || self.blocked.is_some() || !self.quorum_in_sight() {
            self.unsettled_rounds = 0;
            return;
        }
        self.unsettled_rounds += 1;
        if self.unsettled_rounds >= self.unsettled_limit {
            tracing::info!(
                rounds = self.unsettled_rounds,
                leader = ?self.replica.leader(),
                "out of the accept phase with a majority in sight: starting an election"
            );
            self.replica.start_election();
            self.unsettled_rounds = 0;
            self.unsettled_limit = UNSETTLED_ROUNDS_MIN + self.rng.below(UNSETTLED_ROUNDS_MIN);
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
        // Entries kept for the state machine below the compacted index, once
        // applied, go with the rest.
        if through > 0 {
            self.replica.release_retained(through);
        }
    }
}
