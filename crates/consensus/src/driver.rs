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
//! # Not here
//!
//! - Snapshot transfer and membership changes: the driver stops taking
//!   entries and reports them in [`Driver::blocked`].
//! - Time: it counts the ticks it is given.

use std::collections::{BTreeMap, HashMap};

use cairn_storage::{Applied, Command, Durability, Op, StateMachine, WaitKey};

use crate::replica::{Decided, Message, NodeId, Replica, ReplicaConfig, Rng};
use crate::{Error, Status};

/// The caller's name for one request.
pub type RequestId = u64;

/// Most decided entries applied in one batch (one synced write).
pub const APPLY_BATCH_ENTRIES_MAX: usize = 1024;

/// The answer to one request.
#[derive(Debug)]
pub enum Answer {
    /// A write or a session opening was applied here.
    Applied(Applied),
    /// A read may now be answered from local state, which has applied at
    /// least `index`.
    ReadReady { index: u64 },
    /// The request failed; see [`Error::is_determinate`].
    Failed(Error),
}

/// Why the driver has stopped taking decided entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocked {
    /// The entries after the applied index were compacted away here: the state
    /// machine needs a snapshot covering at least `through_index`.
    NeedsSnapshot { through_index: u64 },
    /// The configuration was stopped at `index` for a membership change.
    Reconfigured { index: u64 },
}

/// What one [`Driver::poll`] produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages for peers, each with the node it is for.
    pub messages: Vec<(NodeId, Message)>,
    /// Answers for requests.
    pub answers: Vec<(RequestId, Answer)>,
}

/// Settings of a driver beyond its replica's.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    pub replica: ReplicaConfig,
    /// After how many ticks of silence a peer no longer counts towards a
    /// quorum in sight.
    pub peer_silence_ticks: u64,
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
    peer_silence_ticks: u64,
    now_ticks: u64,
    /// When each peer was last heard from.
    heard: BTreeMap<NodeId, u64>,
    /// Requests waiting for the entry with this key to be applied.
    waiting: HashMap<WaitKey, Vec<(RequestId, Kind)>>,
    /// Each waiting request's key, to cancel it.
    keys: HashMap<RequestId, WaitKey>,
    /// Reads that arrived since the last barrier was proposed.
    unbarriered: Vec<RequestId>,
    blocked: Option<Blocked>,
    rng: Rng,
    failed: bool,
}

impl Driver {
    /// Builds the driver over the state machine; the replica resumes after
    /// its applied index.
    pub fn open(config: DriverConfig, sm: StateMachine) -> Result<Driver, crate::replica::Error> {
        let seed = config.replica.seed;
        let node_id = config.replica.node_id;
        let replica = Replica::open(config.replica, sm.store(), sm.applied_index())?;
        Ok(Driver {
            replica,
            sm,
            peer_silence_ticks: config.peer_silence_ticks.max(1),
            now_ticks: 0,
            heard: BTreeMap::new(),
            waiting: HashMap::new(),
            keys: HashMap::new(),
            unbarriered: Vec::new(),
            blocked: None,
            // A different stream from the replica's, from the same seed.
            rng: Rng::new(seed.rotate_left(17) ^ node_id.wrapping_mul(0x9E37_79B9)),
            failed: false,
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

    /// A message from peer `from`.
    pub fn step(&mut self, from: NodeId, message: Message) {
        if message.get_sender() != from {
            tracing::warn!(from, claimed = message.get_sender(), "dropped a message: wrong sender");
            return;
        }
        match self.replica.step(message) {
            Ok(()) => {
                self.heard.insert(from, self.now_ticks);
            }
            Err(error) => tracing::debug!(%error, "dropped a message"),
        }
    }

    /// The link to `peer` came back.
    pub fn reconnected(&mut self, peer: NodeId) {
        if let Err(error) = self.replica.reconnected(peer) {
            tracing::debug!(%error, "reconnected");
        }
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.now_ticks += 1;
        self.replica.tick();
    }

    /// Proposes the barrier for waiting reads, applies what was decided, and
    /// moves messages and answers into `out`. After a storage fault it answers
    /// every waiting request with the fault and returns it; the driver is then
    /// unusable.
    pub fn poll(&mut self, out: &mut Output) -> Result<(), Error> {
        if self.failed {
            return Err(Error::Stopped);
        }
        self.propose_barrier(out);
        if let Err(error) = self.apply_decided(out) {
            self.failed = true;
            let message = error.to_string();
            for (request, _) in self.waiting.drain().flat_map(|(_, w)| w) {
                out.answers.push((request, Answer::Failed(Error::Storage(message.clone()))));
            }
            self.keys.clear();
            self.replica.drain_outgoing(&mut out.messages);
            out.messages.clear();
            return Err(Error::Storage(message));
        }
        // Everything this turn wrote reaches the disk before any message or
        // answer that depends on it leaves.
        if self.sm.store().durability() == Durability::Deferred {
            if let Err(error) = self.sm.store().sync() {
                self.failed = true;
                tracing::error!(%error, "cannot sync the store");
                return Err(Error::Storage(error.to_string()));
            }
        }
        self.replica.drain_outgoing(&mut out.messages);
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
        }
    }

    /// Whether this node can hear a majority of its configuration.
    pub fn quorum_in_sight(&self) -> bool {
        let members = self.replica.members();
        let heard = members
            .iter()
            .filter(|&&m| {
                m == self.replica.node_id()
                    || self.heard.get(&m).is_some_and(|t| {
                        self.now_ticks.saturating_sub(*t) <= self.peer_silence_ticks
                    })
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

    /// How many requests wait for an answer (reads included).
    pub fn waiting_len(&self) -> usize {
        self.keys.len() + self.unbarriered.len()
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
        if let Some(blocked) = &self.blocked {
            return Err(Error::Unavailable {
                reason: format!("node {} cannot apply: {blocked:?}", self.replica.node_id()),
            });
        }
        Ok(())
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
                    tracing::warn!(
                        through_index,
                        "the log here was compacted: a snapshot is needed"
                    );
                    self.blocked = Some(Blocked::NeedsSnapshot { through_index });
                    return Ok(());
                }
                Decided::Reconfigured { index, stopsign } => {
                    tracing::info!(index, next = ?stopsign.next_config.nodes, "the configuration stopped");
                    self.blocked = Some(Blocked::Reconfigured { index });
                    return Ok(());
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
}
