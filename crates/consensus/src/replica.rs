//! The replica: OmniPaxos behind an IO-free interface that an event loop drives.
//!
//! A [`Replica`] owns one `OmniPaxos<Command, LogStore>` instance, whose log
//! and consensus state live in the node's RocksDB (`cairn_storage::log_store`).
//! It does no IO of its own apart from those synced storage writes, keeps no
//! clock and draws no randomness except from the seed it is given, so a whole
//! cluster of replicas can run in one thread under a simulator and replay
//! exactly from a seed. The event loop around it is thin:
//!
//! - in: [`Replica::step`] for each message from a peer, [`Replica::tick`] at a
//!   fixed period, [`Replica::propose`] for each command a client sent here,
//!   [`Replica::reconnected`] when the link to a peer comes back;
//! - out: [`Replica::drain_outgoing`] for the messages to send, and
//!   [`Replica::take_decided`] for the decided entries to apply, in order.
//!
//! Restarting is building the replica again from the same
//! [`Store`]: OmniPaxos recovers its promise, log and
//! decided index from the store, and the replica resumes handing out decided
//! entries after the state machine's applied index, which the caller passes in.
//!
//! # Indexes
//!
//! OmniPaxos numbers its entries from 0; the node's *global* log index is the
//! OmniPaxos index plus one, so that a fresh node is at applied index 0 and
//! [`take_decided`](Replica::take_decided) yields `(index, command)` pairs that
//! `StateMachine::apply` takes as they are: contiguous, right after the applied
//! index. Every index this module shows is global.
//!
//! # Lost proposals and exactly-once writes
//!
//! A follower's `append` forwards the entry to the leader and returns `Ok` even
//! when the forward is lost, and OmniPaxos never retries it (omnipaxos #136); a
//! leader's own entries can be overwritten when it loses leadership before they
//! are decided. So the replica remembers every proposal that carries a
//! [`CommandId`], with the tick it is next due, and re-appends the ones that
//! are not decided within the re-proposal timeout (at most
//! [`REPROPOSALS_PER_TICK_MAX`] per tick, oldest first). A decided entry that
//! carries a pending id clears it once the caller takes it, and also clears
//! the same session's pending commands with a lower sequence number: a
//! session has one command in flight (`proposer`), so those were abandoned
//! and can only be refused as stale.
//!
//! A re-proposed command can be decided twice. That is safe: the state machine
//! answers a repeated `(session, seq)` from memory, and every write takes
//! effect once. Id-less commands that carry a token (read barriers,
//! `OpenSession`) are remembered and re-proposed the same way, keyed by their
//! token; a repeated barrier changes nothing and a repeated session opening
//! opens a session nobody uses, which eviction reclaims. A caller that stops
//! waiting for a command [`forget`](Replica::forget)s it. Commands with
//! neither an id nor a token are appended once.
//!
//! Re-proposals wait until this node is in the accept phase under a known
//! leader, so that an election does not pile copies into OmniPaxos's buffers.
//! When the leader changes, every pending command falls due at once: what was
//! forwarded to the old leader is likely lost, and waiting out the timeout
//! would add it to every failover. Deadlines carry a little jitter drawn from
//! the seed, so that replicas that lost the same leader do not re-propose in
//! lockstep.
//!
//! # Invariants
//!
//! - `taken_index` (the last global index handed out) never goes back, and
//!   entries are handed out once each, in log order, without gaps.
//! - The pending set holds at most [`PENDING_PROPOSALS_MAX`] commands; beyond
//!   that [`propose`](Replica::propose) refuses with a retryable error.
//! - Every pending command is in the due queue exactly once (asserted after
//!   every change).
//! - A message from a node outside the configuration, from this node itself or
//!   addressed to another node never reaches OmniPaxos (it would index its
//!   per-peer tables out of bounds and panic).
//!
//! # Not here
//!
//! - Applying entries: the caller owns the `StateMachine` and applies what
//!   [`take_decided`](Replica::take_decided) returns.
//! - Snapshots and catch-up by state transfer: a replica whose next entries
//!   were compacted away reports [`Decided::NeedsSnapshot`] and waits for the
//!   caller to install one ([`Replica::caught_up_to`]).
//! - Trimming the log, and membership changes: a decided StopSign is reported
//!   as [`Decided::Reconfigured`]; starting the next configuration is the
//!   caller's work.
//! - Storage faults: OmniPaxos panics on a storage error (omnipaxos #124), and
//!   the node restarts from disk; the replica does not try to carry on.
//! - Validating the content of messages from members: peers are trusted to run
//!   OmniPaxos (the transport checks which node each connection claims to be;
//!   it does not authenticate).

use std::collections::{BTreeMap, BTreeSet};

use cairn_storage::log_store::LogStore;
use cairn_storage::{Command, CommandId, Store, WaitKey};
use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
use omnipaxos::storage::StopSign;
use omnipaxos::util::LogEntry;
use omnipaxos::{ClusterConfig, OmniPaxos, OmniPaxosConfig, ProposeErr, ServerConfig};

use cairn_util::Rng;

use crate::Role;

/// A node's id in a configuration (OmniPaxos's pid): non-zero and small.
pub type NodeId = u64;
/// The messages replicas exchange.
pub type Message = omnipaxos::messages::Message<Command>;

/// Most members of one configuration (Cairn runs 1, 3, 5 or 7 replicas).
pub const MEMBERS_MAX: usize = 9;
/// Largest node id. OmniPaxos sizes its per-peer tables by the largest id in
/// the configuration (omnipaxos #156), so ids are kept small and reused.
pub const NODE_ID_MAX: NodeId = 64;
/// Most proposals with an id awaiting their decision on one node.
pub const PENDING_PROPOSALS_MAX: usize = 4096;
/// Most pending proposals re-appended in one tick, so a backlog after a long
/// partition goes out over several ticks instead of one burst.
pub const REPROPOSALS_PER_TICK_MAX: usize = 64;
/// Most decided entries one [`Replica::take_decided`] call returns.
pub const TAKE_DECIDED_ENTRIES_MAX: usize = 1024;
/// Most bytes of entries (each counted as it encodes) that one OmniPaxos
/// message carries, so that every `AcceptDecide` and `ProposalForward` fits
/// one peer message whatever the batch; one entry always goes, and a single
/// command fits (see the limits in the crate's root).
pub const MESSAGE_ENTRIES_BYTES_MAX: usize =
    cairn_transport::MESSAGE_BYTES_MAX - crate::PEER_MESSAGE_OVERHEAD_BYTES;
/// Messages OmniPaxos reserves room for in its outgoing buffer (it grows past
/// this; the event loop drains it every turn).
const OUTGOING_RESERVE_MESSAGES: usize = 1024;

/// The entries a message carries in a batch, which
/// [`MESSAGE_ENTRIES_BYTES_MAX`] bounds: those of an `AcceptDecide` or a
/// `ProposalForward` (OmniPaxos patch 3), and the suffix of an `AcceptSync`
/// (patch 5). A `Promise`'s suffix is not bounded: see patch 4.
pub fn batched_entries(message: &Message) -> Option<&[Command]> {
    use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
    let Message::SequencePaxos(PaxosMessage { msg, .. }) = message else {
        return None;
    };
    match msg {
        PaxosMsg::AcceptDecide(accept) => Some(&accept.entries),
        PaxosMsg::ProposalForward(entries) => Some(entries),
        PaxosMsg::AcceptSync(sync) => Some(&sync.log_sync.suffix),
        _ => None,
    }
}

/// Errors of the replica, grouped by how the caller reacts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot run (bad ids, too few members): fix it.
    #[error("bad replica configuration: {0}")]
    Config(String),
    /// The node's store could not be read: restart from disk, or repair it.
    #[error("storage: {0}")]
    Storage(#[from] cairn_storage::Error),
    /// Too many proposals await their decision here; retry later.
    #[error("{pending} proposals await their decision on this node; retry later")]
    Busy { pending: usize },
    /// This node leads and holds as many bytes of undecided entries as a log
    /// sync may carry; retry once some are decided.
    #[error("this leader's undecided entries fill {bytes_max} bytes; retry later")]
    Backlog { bytes_max: usize },
    /// The configuration is being replaced (a StopSign was accepted); retry in
    /// the next configuration.
    #[error("configuration {configuration_id} is stopping for a membership change")]
    Stopping { configuration_id: u32 },
    /// A message that is not for this node, or not from a member; dropped.
    #[error("dropped a message from node {from} to node {to}: not a peer of node {node_id}")]
    Misaddressed { node_id: NodeId, from: NodeId, to: NodeId },
    /// A peer id outside the configuration.
    #[error("node {peer} is not a peer in this configuration")]
    UnknownPeer { peer: NodeId },
}

impl Error {
    /// Whether the same request may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Busy { .. } | Error::Backlog { .. } | Error::Stopping { .. })
    }
}

/// Timing of the replica, in ticks of the event loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Length of a heartbeat round of leader election; a dead leader is
    /// replaced after about two rounds.
    pub election_timeout_ticks: u64,
    /// After how long OmniPaxos resends a prepare, promise or decide that got
    /// no answer.
    pub resend_timeout_ticks: u64,
    /// After how long a proposal that is not decided is appended again.
    pub repropose_timeout_ticks: u64,
}

impl Default for Timing {
    /// For a 10 ms tick: election rounds of 100 ms, resends after 200 ms,
    /// re-proposals after 500 ms.
    fn default() -> Timing {
        Timing { election_timeout_ticks: 10, resend_timeout_ticks: 20, repropose_timeout_ticks: 50 }
    }
}

/// What a replica is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    pub node_id: NodeId,
    /// Every member of the configuration, this node included.
    pub members: Vec<NodeId>,
    /// Non-zero; raised with every membership change.
    pub configuration_id: u32,
    pub timing: Timing,
    /// Seeds the jitter of re-proposal deadlines.
    pub seed: u64,
    /// The global index just before this configuration's first entry: 0 for
    /// the first configuration, the index of the StopSign that ended the
    /// previous one after a membership change (each configuration has a
    /// fresh OmniPaxos log).
    pub base_index: u64,
    /// Most bytes of entries one message carries (one entry always goes):
    /// see [`MESSAGE_ENTRIES_BYTES_MAX`].
    pub message_entries_bytes_max: usize,
    /// This node's leader priority (OmniPaxos's): between ballots of one
    /// round, the higher priority wins. 1 for the node that led the
    /// configuration before this one, so that a membership change keeps its
    /// leader instead of electing the member with the highest id (the new
    /// one, often); 0 otherwise. It only breaks ties: a node that has the
    /// priority but is down or cut off is outvoted by a higher round as any
    /// node is.
    pub leader_priority: u32,
}

/// The next thing [`Replica::take_decided`] has for the caller.
#[derive(Debug)]
pub enum Decided {
    /// Decided entries with contiguous global indexes right after the last
    /// taken one; empty when nothing new is decided.
    Entries(Vec<(u64, Command)>),
    /// The entries after the taken index up to `through_index` were compacted
    /// away here: the state machine needs a snapshot that covers at least
    /// `through_index`, then [`Replica::caught_up_to`].
    NeedsSnapshot { through_index: u64 },
    /// A StopSign was decided at `index`: this configuration takes no more
    /// entries, and its members move to `stopsign.next_config`.
    Reconfigured { index: u64, stopsign: StopSign },
}

/// A snapshot of the replica's progress, for status pages and the event loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub node_id: NodeId,
    /// Leader once this node has won an election and finished its prepare
    /// phase, so it orders entries itself.
    pub role: Role,
    /// The node this one has promised to follow (possibly itself), if any.
    pub leader: Option<NodeId>,
    pub configuration_id: u32,
    /// Global index of the last decided entry known here.
    pub decided_index: u64,
    /// Global index of the last entry handed out by `take_decided`.
    pub taken_index: u64,
    pub pending_proposals: usize,
}

/// A proposal with an id, awaiting its decision.
struct Pending {
    command: Command,
    /// The tick at which it is appended again if still pending.
    due_tick: u64,
}

/// A pending command's key: its id or token. Ids order by `(session, seq)`,
/// so one session's commands are one range.
type Key = WaitKey;

/// One replica of the log. See the module docs.
pub struct Replica {
    node_id: NodeId,
    /// Sorted, without duplicates.
    members: Vec<NodeId>,
    configuration_id: u32,
    timing: Timing,
    omni: OmniPaxos<Command, LogStore>,
    /// The node's store, for the log entries kept below OmniPaxos's
    /// compacted index until they are applied (`Store::set_log_retention`).
    store: Store,
    base_index: u64,
    now_ticks: u64,
    taken_index: u64,
    pending: BTreeMap<Key, Pending>,
    /// `(due_tick, key)` for every pending command, earliest first.
    due: BTreeSet<(u64, Key)>,
    rng: Rng,
    /// The leader seen at the last tick, to notice a change.
    last_leader: Option<NodeId>,
    /// Scratch for OmniPaxos's outgoing messages, reused across calls.
    outgoing: Vec<Message>,
    /// The bound on one message's entries, and on a leader's undecided ones.
    message_entries_bytes_max: usize,
}

impl Replica {
    /// Builds the replica over the node's store, resuming after
    /// `applied_index`, the state machine's applied index (0 on a fresh node).
    pub fn open(
        config: ReplicaConfig,
        store: &Store,
        applied_index: u64,
    ) -> Result<Replica, Error> {
        let members = check_config(&config)?;
        let ReplicaConfig {
            node_id,
            configuration_id,
            timing,
            seed,
            base_index,
            message_entries_bytes_max,
            leader_priority,
            ..
        } = config;
        let cluster =
            ClusterConfig { configuration_id, nodes: members.clone(), flexible_quorum: None };
        let server = ServerConfig {
            pid: node_id,
            election_tick_timeout: timing.election_timeout_ticks,
            resend_message_tick_timeout: timing.resend_timeout_ticks,
            buffer_size: OUTGOING_RESERVE_MESSAGES,
            batch_size: 1,
            message_entries_bytes_max,
            leader_priority,
            ..ServerConfig::default()
        };
        let log = LogStore::open(store)?;
        let omni = OmniPaxosConfig { cluster_config: cluster, server_config: server }
            .build(log)
            .map_err(|e| Error::Config(e.to_string()))?;
        let replica = Replica {
            node_id,
            members,
            configuration_id,
            timing,
            omni,
            store: store.clone(),
            base_index,
            now_ticks: 0,
            taken_index: applied_index,
            pending: BTreeMap::new(),
            due: BTreeSet::new(),
            rng: Rng::new(seed ^ node_id),
            last_leader: None,
            outgoing: Vec::with_capacity(OUTGOING_RESERVE_MESSAGES),
            message_entries_bytes_max,
        };
        replica.retain_unapplied();
        Ok(replica)
    }

    /// Hands a message from a peer to OmniPaxos. A message from outside the
    /// configuration or for another node is refused and changes nothing.
    pub fn step(&mut self, mut message: Message) -> Result<(), Error> {
        let (from, to) = (message.get_sender(), message.get_receiver());
        if to != self.node_id || from == self.node_id || !self.is_member(from) {
            return Err(Error::Misaddressed { node_id: self.node_id, from, to });
        }
        if let Message::SequencePaxos(PaxosMessage { msg, .. }) = &mut message {
            if self.omni.is_reconfigured().is_some() {
                match msg {
                    // This configuration is over here: a sync has nothing to
                    // add, and the peer learns of the next configuration
                    // from this node's hellos.
                    PaxosMsg::AcceptSync(_) => return Ok(()),
                    PaxosMsg::Promise(promise) => promise.log_sync = None,
                    _ => {}
                }
            }
        }
        self.omni.handle_incoming(message);
        Ok(())
    }

    /// Advances time by one tick: elections, resends, and re-proposals that
    /// are due.
    pub fn tick(&mut self) {
        self.now_ticks += 1;
        self.omni.tick();
        self.repropose_due();
    }

    /// Appends `command` to the log. A command with an id or a token is
    /// remembered and appended again until it is decided; proposing a key that
    /// is already pending changes nothing. Other commands are appended once.
    pub fn propose(&mut self, command: Command) -> Result<(), Error> {
        let Some(k) = command.wait_key() else {
            return self.append(command);
        };
        if self.pending.contains_key(&k) {
            return Ok(());
        }
        if self.pending.len() >= PENDING_PROPOSALS_MAX {
            return Err(Error::Busy { pending: self.pending.len() });
        }
        // A leader whose undecided entries fill their budget takes the
        // command at a later tick, once some are decided: the command waits
        // here, as one forwarded to it waits at its proposer.
        let due_tick = match self.append(command.clone()) {
            Ok(()) => self.next_due_tick(),
            Err(Error::Backlog { .. }) => self.now_ticks + 1,
            Err(error) => return Err(error),
        };
        self.pending.insert(k, Pending { command, due_tick });
        self.due.insert((due_tick, k));
        self.check_pending();
        Ok(())
    }

    /// Stops re-proposing the command with key `k` (its caller gave up). The
    /// command may still be decided from a copy already appended.
    pub fn forget(&mut self, k: WaitKey) {
        if let Some(pending) = self.pending.remove(&k) {
            assert!(self.due.remove(&(pending.due_tick, k)), "a pending key is due once");
        }
        self.check_pending();
    }

    /// Tells OmniPaxos that the link to `peer` is back, so it resynchronises
    /// with it (omnipaxos #21, #68, #115).
    pub fn reconnected(&mut self, peer: NodeId) -> Result<(), Error> {
        if peer == self.node_id || !self.is_member(peer) {
            return Err(Error::UnknownPeer { peer });
        }
        self.omni.reconnected(peer);
        Ok(())
    }

    /// Moves the messages to send into `out`, each with the node it is for.
    pub fn drain_outgoing(&mut self, out: &mut Vec<(NodeId, Message)>) {
        self.omni.take_outgoing_messages(&mut self.outgoing);
        out.extend(self.outgoing.drain(..).map(|message| (message.get_receiver(), message)));
    }

    /// The next decided entries, at most `max_entries` (and at most
    /// [`TAKE_DECIDED_ENTRIES_MAX`]), after the last taken index; or why the
    /// log cannot give them. Entries are handed out once: the caller applies
    /// them before it takes more.
    pub fn take_decided(&mut self, max_entries: usize) -> Decided {
        if self.taken_index < self.base_index {
            // A new member: the state before this configuration comes first.
            return Decided::NeedsSnapshot { through_index: self.base_index };
        }
        let decided = self.decided_index();
        let count = (max_entries.min(TAKE_DECIDED_ENTRIES_MAX) as u64)
            .min(decided.saturating_sub(self.taken_index));
        if count == 0 {
            // A configuration that stopped says so on every call once its
            // StopSign is taken (also after a restart right at it).
            if let Some(stopsign) = self.omni.is_reconfigured() {
                if self.taken_index == decided && decided > self.base_index {
                    return Decided::Reconfigured { index: decided, stopsign };
                }
            }
            return Decided::Entries(Vec::new());
        }
        // Global index `taken + 1` is OmniPaxos index `taken`.
        let from = self.omni_after(self.taken_index);
        let to = self.omni_after(self.taken_index + count);
        let Some(read) = self.omni.read_entries(from..to) else {
            return Decided::Entries(Vec::new());
        };
        let mut entries = Vec::with_capacity(read.len());
        for entry in read {
            let index = self.taken_index + 1;
            match entry {
                LogEntry::Decided(command) => {
                    self.clear_pending(&command);
                    entries.push((index, command));
                    self.taken_index = index;
                }
                // Compaction leaves one marker for everything below it.
                LogEntry::Trimmed(compacted) if entries.is_empty() => {
                    let through_index = self.base_index + compacted as u64;
                    return Decided::NeedsSnapshot { through_index };
                }
                LogEntry::Snapshotted(snapshot) if entries.is_empty() => {
                    let through_index = self.base_index + snapshot.trimmed_idx as u64;
                    return Decided::NeedsSnapshot { through_index };
                }
                LogEntry::StopSign(stopsign, true) if entries.is_empty() => {
                    self.taken_index = index;
                    return Decided::Reconfigured { index, stopsign };
                }
                // Anything else ends this batch; the next call starts there.
                _ => break,
            }
        }
        assert!(self.taken_index <= decided, "took past the decided index {decided}");
        self.retain_unapplied();
        Decided::Entries(entries)
    }

    /// Keeps the log entries this node has not applied on disk when
    /// OmniPaxos compacts past them (it does when it syncs a lagging node
    /// with a compaction marker): they may exist nowhere else.
    fn retain_unapplied(&self) {
        let first_unapplied = self.taken_index.saturating_sub(self.base_index);
        self.store.set_log_retention(first_unapplied);
    }

    /// Deletes retained entries below global index `below` (applied here).
    pub fn release_retained(&self, below: u64) {
        let below = usize::try_from(below.saturating_sub(self.base_index)).unwrap_or(usize::MAX);
        if let Err(error) = cairn_storage::log_store::release_retained(&self.store, below) {
            tracing::warn!(%error, "cannot release retained log entries");
        }
    }

    /// The caller's state machine applied through `applied_index` without
    /// this replica (entries or a snapshot from a peer): resumes taking
    /// entries after it, and lets compaction release what it applied.
    pub fn caught_up_to(&mut self, applied_index: u64) {
        assert!(
            applied_index >= self.taken_index,
            "a snapshot at {applied_index} would go back before the taken index {}",
            self.taken_index
        );
        self.taken_index = applied_index;
        self.retain_unapplied();
    }

    /// Compacts this node's log through global index `through` (at most the
    /// decided index, and only behind what the caller has applied): the
    /// entries go, OmniPaxos keeps a content-free marker in their place, and
    /// a peer that needs them later syncs with the marker and fetches the
    /// state from a peer. Local only: each node compacts its own log, so a
    /// node that is down holds no one back. Answers whether anything was
    /// compacted.
    pub fn compact(&mut self, through: u64) -> bool {
        let through = through.min(self.decided_index()).min(self.taken_index);
        if through <= self.compacted_index() || through <= self.base_index {
            return false;
        }
        match self.omni.snapshot(Some(self.omni_after(through)), true) {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(?error, through, "compaction refused");
                false
            }
        }
    }

    /// Global index of the last entry compacted away here (0: none).
    pub fn compacted_index(&self) -> u64 {
        self.base_index + self.omni.get_compacted_idx() as u64
    }

    /// The global index just before this configuration's first entry.
    pub fn base_index(&self) -> u64 {
        self.base_index
    }

    /// Decided entries from global index `from` on, at most `max_entries`,
    /// for a peer that lacks them; `None` when `from` was compacted away here
    /// or is not decided yet.
    pub fn read_decided(&self, from: u64, max_entries: usize) -> Option<Vec<Command>> {
        let decided = self.decided_index();
        if from <= self.base_index || from > decided {
            return None;
        }
        let compacted = self.compacted_index();
        if from <= compacted {
            // Compacted away as far as OmniPaxos knows; perhaps still kept.
            let to = compacted.min(from + max_entries.max(1) as u64 - 1);
            let retained = cairn_storage::log_store::read_retained(
                &self.store,
                self.omni_after(from - 1),
                self.omni_after(to),
            );
            return match retained {
                Ok(commands) if !commands.is_empty() => Some(commands),
                Ok(_) => None,
                Err(error) => {
                    tracing::warn!(%error, "cannot read retained log entries");
                    None
                }
            };
        }
        let to = decided.min(from + max_entries.max(1) as u64 - 1);
        let read = self.omni.read_entries(self.omni_after(from - 1)..self.omni_after(to))?;
        let mut commands = Vec::with_capacity(read.len());
        for entry in read {
            match entry {
                LogEntry::Decided(command) => commands.push(command),
                _ => break,
            }
        }
        if commands.is_empty() {
            None
        } else {
            Some(commands)
        }
    }

    /// Proposes to end this configuration and continue with `members`
    /// (OmniPaxos appends a StopSign; a follower forwards it to the leader).
    /// `metadata` travels with the StopSign: the next configuration is what
    /// it says, OmniPaxos's own copy of the member list is informational (it
    /// cannot hold a single member).
    pub fn reconfigure(&mut self, members: &[NodeId], metadata: Vec<u8>) -> Result<(), Error> {
        let mut nodes = members.to_vec();
        if nodes.len() == 1 {
            nodes.push(members[0]);
        }
        let next = ClusterConfig {
            configuration_id: self.configuration_id + 1,
            nodes,
            flexible_quorum: None,
        };
        match self.omni.reconfigure(next, Some(metadata)) {
            Ok(()) => Ok(()),
            Err(ProposeErr::PendingReconfigConfig(..)) => {
                Err(Error::Stopping { configuration_id: self.configuration_id })
            }
            Err(other) => Err(Error::Config(format!("{other:?}"))),
        }
    }

    /// Every command awaiting its decision, oldest key first: what a new
    /// configuration must propose again.
    pub fn pending_commands(&self) -> Vec<Command> {
        self.pending.values().map(|pending| pending.command.clone()).collect()
    }

    /// Whether this node orders entries itself (leader, accept phase).
    /// OmniPaxos has no leases: a leader cut off from the others stays one
    /// here until it hears of a newer leader, so this alone never makes a
    /// local read linearizable (reads go through a barrier in the log).
    pub fn is_leader(&self) -> bool {
        self.omni.get_current_leader() == Some((self.node_id, true))
    }

    /// The node this one follows (possibly itself), if it knows one.
    pub fn leader(&self) -> Option<NodeId> {
        self.omni.get_current_leader().map(|(leader, _)| leader)
    }

    /// Whether this node is in the accept phase of some leader's ballot
    /// (its own included): entries flow to or from it.
    pub fn is_settled(&self) -> bool {
        matches!(self.omni.get_current_leader(), Some((_, true)))
    }

    /// Starts an election with a ballot above every ballot this node has
    /// promised. For a node stuck out of the accept phase: see
    /// `Driver::check_unsettled`.
    pub fn start_election(&mut self) {
        self.omni.try_become_leader();
    }

    /// Global index of the last decided entry known here.
    pub fn decided_index(&self) -> u64 {
        self.base_index + self.omni.get_decided_idx() as u64
    }

    /// Global index of the last entry in this node's log, decided or not
    /// (entries still in OmniPaxos's batch are not in the log yet).
    pub fn accepted_index(&self) -> u64 {
        self.base_index + self.omni.get_accepted_idx() as u64
    }

    /// The ballot this node promised: its own while it leads.
    pub fn promise(&self) -> omnipaxos::ballot_leader_election::Ballot {
        self.omni.get_promise()
    }

    /// Whether this configuration's log holds a StopSign, accepted or
    /// decided: the configuration is ending.
    pub fn has_stopsign(&self) -> bool {
        self.omni.has_stopsign()
    }

    /// Global index of the last entry handed out by `take_decided`.
    pub fn taken_index(&self) -> u64 {
        self.taken_index
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The members of the configuration, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.members
    }

    /// The ticks this replica has seen since it was built.
    pub fn now_ticks(&self) -> u64 {
        self.now_ticks
    }

    /// How many proposals with an id await their decision.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The command with key `k`, while it awaits its decision here.
    pub fn pending_command(&self, k: &WaitKey) -> Option<&Command> {
        self.pending.get(k).map(|pending| &pending.command)
    }

    /// Whether a command with `id` awaits its decision here.
    pub fn is_pending(&self, id: CommandId) -> bool {
        self.pending.contains_key(&WaitKey::Id(id))
    }

    pub fn status(&self) -> ReplicaStatus {
        ReplicaStatus {
            node_id: self.node_id,
            role: if self.is_leader() { Role::Leader } else { Role::Follower },
            leader: self.leader(),
            configuration_id: self.configuration_id,
            decided_index: self.decided_index(),
            taken_index: self.taken_index,
            pending_proposals: self.pending.len(),
        }
    }

    /// OmniPaxos's index of the entry after global index `global` (at least
    /// the base index).
    fn omni_after(&self, global: u64) -> usize {
        let local = global.checked_sub(self.base_index).expect("an index of this configuration");
        usize::try_from(local).expect("log indexes fit in usize")
    }

    fn is_member(&self, node: NodeId) -> bool {
        self.members.binary_search(&node).is_ok()
    }

    fn append(&mut self, command: Command) -> Result<(), Error> {
        match self.omni.append(command) {
            Ok(()) => Ok(()),
            Err(ProposeErr::PendingReconfigEntry(_)) => {
                Err(Error::Stopping { configuration_id: self.configuration_id })
            }
            Err(ProposeErr::Busy(_)) => {
                Err(Error::Backlog { bytes_max: self.message_entries_bytes_max })
            }
            Err(other) => unreachable!("append of an entry failed with {other:?}"),
        }
    }

    /// The tick a proposal made now is due again: the timeout plus up to a
    /// quarter of it in jitter.
    fn next_due_tick(&mut self) -> u64 {
        let timeout = self.timing.repropose_timeout_ticks;
        self.now_ticks + timeout + self.rng.below(timeout / 4 + 1)
    }

    /// Appends again the proposals whose time is up, oldest first, once this
    /// node can reach a leader that accepts entries.
    fn repropose_due(&mut self) {
        let current = self.omni.get_current_leader();
        if !matches!(current, Some((_, true))) {
            return;
        }
        let leader = current.map(|(leader, _)| leader);
        if leader != self.last_leader {
            self.last_leader = leader;
            self.make_all_due();
        }
        for _ in 0..REPROPOSALS_PER_TICK_MAX {
            let Some(&(due_tick, k)) = self.due.first() else { break };
            if due_tick > self.now_ticks {
                break;
            }
            self.due.pop_first();
            let next = self.next_due_tick();
            let pending = self.pending.get_mut(&k).expect("every due key is pending");
            pending.due_tick = next;
            let command = pending.command.clone();
            self.due.insert((next, k));
            match self.append(command) {
                Ok(()) => {}
                Err(Error::Backlog { .. }) => {
                    // No room at this leader: try again next tick.
                    let soon = self.now_ticks + 1;
                    self.due.remove(&(next, k));
                    self.due.insert((soon, k));
                    self.pending.get_mut(&k).expect("every due key is pending").due_tick = soon;
                    break;
                }
                // Stopping: nothing more is decided in this configuration, so
                // the caller fails these proposals over to the next one.
                Err(_) => break,
            }
        }
        self.check_pending();
    }

    /// Makes every pending command due now (keeping their order).
    fn make_all_due(&mut self) {
        let now = self.now_ticks;
        let keys: Vec<(u64, Key)> = std::mem::take(&mut self.due).into_iter().collect();
        for (_, k) in keys {
            self.pending.get_mut(&k).expect("every due key is pending").due_tick = now;
            self.due.insert((now, k));
        }
        self.check_pending();
    }

    /// A decided command settles its own proposal, and any of its session's
    /// with a lower sequence number.
    fn clear_pending(&mut self, command: &Command) {
        let Some(k) = command.wait_key() else { return };
        let settled: Vec<Key> = match k {
            WaitKey::Token(_) => vec![k],
            WaitKey::Id(id) => {
                let first = WaitKey::Id(CommandId { session: id.session, seq: 0 });
                self.pending.range(first..=k).map(|(k, _)| *k).collect()
            }
        };
        for k in settled {
            if let Some(pending) = self.pending.remove(&k) {
                assert!(self.due.remove(&(pending.due_tick, k)), "a pending key is due once");
            }
        }
        self.check_pending();
    }

    fn check_pending(&self) {
        assert!(self.pending.len() <= PENDING_PROPOSALS_MAX, "the pending set is bounded");
        assert_eq!(self.pending.len(), self.due.len(), "one due entry per pending command");
    }
}

/// Checks the configuration and returns its members sorted.
fn check_config(config: &ReplicaConfig) -> Result<Vec<NodeId>, Error> {
    let mut members = config.members.clone();
    members.sort_unstable();
    members.dedup();
    let bad = |why: String| Err(Error::Config(why));
    if members.len() != config.members.len() {
        return bad(format!("members {:?} name a node twice", config.members));
    }
    if members.len() < 2 || members.len() > MEMBERS_MAX {
        return bad(format!("{} members: OmniPaxos needs 2 to {MEMBERS_MAX}", members.len()));
    }
    if members.first() == Some(&0) || members.last() > Some(&NODE_ID_MAX) {
        return bad(format!("members {members:?}: node ids run from 1 to {NODE_ID_MAX}"));
    }
    if !members.contains(&config.node_id) {
        return bad(format!("node {} is not among the members {members:?}", config.node_id));
    }
    if config.configuration_id == 0 {
        return bad("the configuration id must not be 0".into());
    }
    let timing = config.timing;
    if timing.election_timeout_ticks == 0
        || timing.resend_timeout_ticks == 0
        || timing.repropose_timeout_ticks == 0
    {
        return bad(format!("every timeout must be at least one tick: {timing:?}"));
    }
    Ok(members)
}
