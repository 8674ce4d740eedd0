//! Linearizable reads without a log entry, in the manner of Raft's ReadIndex.
//!
//! A read may be answered from local state once that state holds every write
//! acknowledged anywhere before the read arrived. The barrier path (an entry
//! in the log, `propose_barrier`) gets there with a round of accepts and an
//! fsync on a majority. This path gets there with one round of messages and
//! no write at all.
//!
//! # The leader
//!
//! The leader `L`, in the accept phase of its ballot `b`, gathers the reads
//! that arrived (its own and those its followers ask about) and starts a
//! *round*: it notes its log's end `R` (the accepted index) and asks every
//! peer which ballot it has promised ([`PeerMessage::ReadConfirm`]). Once a
//! majority, `L` included, has answered `b`, the reads of the round are served
//! from local state as soon as it has applied through `R`.
//!
//! Why that is linearizable: take a write `w` acknowledged before a read of
//! the round arrived. `w` was chosen before the round started, under some
//! ballot `c`.
//!
//! - `c < b`: `L` ended its prepare phase with the log of a majority that
//!   promised `b`; that majority meets the one that accepted `w` under `c`,
//!   so `L` adopted `w` (Paxos's choice rule), and `L`'s log held it at the
//!   round's start.
//! - `c = b`: only `L` proposes under `b`, and it appends to its own log before
//!   it sends an accept, so its log held `w` at the round's start.
//! - `c > b`: a majority promised `c` before `w` was chosen, so before the
//!   round started. That majority meets the majority that answered `b` after
//!   the round started; the node in both answered `b` after it had promised
//!   `c > b`, and promises never go down (they are stored before they are
//!   sent, and recovered on restart). So this case cannot happen.
//!
//! So `w` sits at an index `≤ R` in the chosen log, and a state applied
//! through `R` holds it. Entries past the chosen ones at the round's start may
//! be replaced later; that changes nothing, as whatever is chosen at an index
//! `≤ R` is applied before the read is served.
//!
//! Answers are cumulative: a peer's answer to round `r` confirms every round
//! `≤ r` of the same ballot, as it was sent after they all started.
//!
//! A StopSign ends the argument: once one is chosen, the next configuration
//! chooses entries in another log, which `R` does not cover. A leader whose
//! log holds a StopSign (accepted or decided; a chosen one would be in its log
//! by the argument above) sends its reads through the log instead, and so
//! does a leader whose ballot changes while a round is out.
//!
//! # A follower
//!
//! A follower asks its leader for a read index ([`PeerMessage::ReadIndex`]);
//! the leader takes the ask into its next round and answers with `R`
//! ([`PeerMessage::ReadIndexReply`]), and the follower serves the reads once
//! its own state has applied through `R`. The ask left the follower after its
//! reads arrived, and the round started after the ask arrived, so the
//! argument holds as it stands.
//!
//! # Falling back to the log
//!
//! Whatever goes wrong sends the read to the barrier path, which is always
//! safe and makes progress whenever the log does: a leader change, a refused
//! ask, a round or an ask with no answer within
//! [`DriverConfig::read_index_timeout_ticks`](super::DriverConfig), or a
//! state that has not applied through `R` by then. A peer that never answered
//! a round or an ask (one that runs a version without this path, during a
//! rolling upgrade) is not counted on: a leader uses this path only once a
//! majority is known to answer rounds, a follower only with a leader known
//! to answer asks, and both keep probing meanwhile.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use omnipaxos::ballot_leader_election::Ballot;

use super::{Answer, Driver, Output, PeerMessage, RequestId};
use crate::replica::NodeId;

/// Counters of the read paths since the driver started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Reads served after a confirmation round, without a log entry.
    pub read_index: u64,
    /// Reads sent through a barrier entry in the log.
    pub barrier: u64,
    /// Of those, reads that started on the round path and fell back.
    pub fell_back: u64,
    /// Confirmation rounds started (as leader).
    pub rounds: u64,
}

impl std::ops::AddAssign for ReadStats {
    fn add_assign(&mut self, more: ReadStats) {
        self.read_index += more.read_index;
        self.barrier += more.barrier;
        self.fell_back += more.fell_back;
        self.rounds += more.rounds;
    }
}

/// Who waits for a round.
enum Waiter {
    Local(RequestId),
    /// A follower's ask.
    Remote {
        node: NodeId,
        ask: u64,
    },
}

/// A confirmation round in flight.
struct Round {
    id: u64,
    /// The leader's log end when the round started.
    index: u64,
    started_tick: u64,
    waiters: Vec<Waiter>,
}

/// A follower's ask in flight.
struct Ask {
    leader: NodeId,
    sent_tick: u64,
    requests: Vec<RequestId>,
}

/// The state of the round path. See the module docs.
#[derive(Default)]
pub(super) struct Reads {
    /// Every read on this path. A read that leaves it (answered, fallen
    /// back, cancelled) is skipped wherever else it is still listed.
    live: BTreeSet<RequestId>,
    /// When each read falls back to the log, in arrival order (so in order
    /// of the tick, too).
    deadlines: VecDeque<(u64, RequestId)>,
    /// Reads that arrived since the last poll.
    arrived: Vec<RequestId>,
    /// The configuration the state below belongs to.
    configuration_id: u32,
    // ---- As leader ----
    /// Waiters for the next round.
    queued: Vec<Waiter>,
    /// A round is due even without waiters, to learn who answers.
    probe: bool,
    rounds: VecDeque<Round>,
    next_round: u64,
    /// The ballot the rounds in flight were started under.
    ballot: Option<Ballot>,
    /// The latest round each peer confirmed under `ballot`.
    confirmed: BTreeMap<NodeId, u64>,
    /// Peers known to take part in rounds in this configuration: they
    /// answered one, or sent one of this path's messages.
    confirmers: BTreeSet<NodeId>,
    // ---- As follower ----
    asks: BTreeMap<u64, Ask>,
    next_ask: u64,
    /// Leaders known to answer asks in this configuration: they answered
    /// one, or sent one of this path's messages.
    answerers: BTreeSet<NodeId>,
    // ---- Both ----
    /// Confirmed reads, by the index the state must have applied through.
    ready: BTreeMap<u64, Vec<RequestId>>,
    pub(super) stats: ReadStats,
}

impl Reads {
    pub(super) fn len(&self) -> usize {
        self.live.len()
    }

    /// Takes `request` off this path, if it is on it.
    pub(super) fn cancel(&mut self, request: RequestId) -> bool {
        self.live.remove(&request)
    }

    /// Every read on this path, which leaves it.
    pub(super) fn take_all(&mut self) -> Vec<RequestId> {
        let requests = std::mem::take(&mut self.live).into_iter().collect();
        let stats = self.stats;
        *self = Reads { stats, ..Reads::default() };
        requests
    }
}

impl Driver {
    /// A linearizable read that passed the availability checks.
    pub(super) fn read_arrived(&mut self, request: RequestId) {
        let deadline = self.now_ticks + self.config.read_index_timeout_ticks;
        self.reads.live.insert(request);
        self.reads.deadlines.push_back((deadline, request));
        self.reads.arrived.push(request);
    }

    /// Sends `request` through a barrier entry instead, if it is still on
    /// the round path: `tried` says whether it tried a round or an ask.
    fn route_to_barrier(&mut self, request: RequestId, tried: bool) {
        if self.reads.live.remove(&request) {
            self.reads.stats.fell_back += u64::from(tried);
            self.reads.stats.barrier += 1;
            self.unbarriered.push(request);
        }
    }

    fn fall_back(&mut self, request: RequestId) {
        self.route_to_barrier(request, true);
    }

    /// Routes the reads that arrived, starts a round for what waits for one,
    /// and serves the confirmed reads the state has caught up with. Called
    /// by `poll` before the barrier is proposed, so that reads sent to the
    /// log join this turn's barrier.
    pub(super) fn drive_reads(&mut self, out: &mut Output) {
        self.check_read_configuration();
        if !self.reads.rounds.is_empty() && !self.holds_ballot() {
            self.drop_rounds();
        }
        let leader = self.replica.leader();
        let stale: Vec<u64> = self
            .reads
            .asks
            .iter()
            .filter(|(_, ask)| Some(ask.leader) != leader)
            .map(|(&id, _)| id)
            .collect();
        for id in stale {
            self.ask_failed(id);
        }
        self.route_arrived();
        self.start_round();
        self.serve_ready(out);
    }

    /// A membership change starts the path afresh: other peers, other
    /// ballots.
    fn check_read_configuration(&mut self) {
        let configuration_id = self.membership.configuration_id;
        if self.reads.configuration_id == configuration_id {
            return;
        }
        self.drop_rounds();
        let asks: Vec<u64> = self.reads.asks.keys().copied().collect();
        for id in asks {
            self.ask_failed(id);
        }
        self.reads.configuration_id = configuration_id;
        self.reads.confirmers.clear();
        self.reads.answerers.clear();
    }

    /// Whether this node leads, in the accept phase, under the ballot of the
    /// rounds in flight, with no StopSign in its log.
    fn holds_ballot(&self) -> bool {
        self.replica.is_leader()
            && !self.replica.has_stopsign()
            && self.reads.ballot == Some(self.replica.promise())
    }

    fn route_arrived(&mut self) {
        let arrived = std::mem::take(&mut self.reads.arrived);
        let arrived: Vec<RequestId> =
            arrived.into_iter().filter(|r| self.reads.live.contains(r)).collect();
        if arrived.is_empty() {
            return;
        }
        let me = self.replica.node_id();
        let open = self.blocked.is_none() && !self.replica.has_stopsign();
        if open && self.replica.is_leader() {
            let majority = self.replica.members().len() / 2 + 1;
            if self.reads.confirmers.len() + 1 >= majority {
                self.reads.queued.extend(arrived.into_iter().map(Waiter::Local));
                return;
            }
            self.reads.probe = true;
        } else if let Some(leader) = self
            .replica
            .leader()
            .filter(|&leader| open && leader != me && self.replica.is_settled())
        {
            if self.reads.answerers.contains(&leader) {
                self.ask(leader, arrived);
                return;
            }
            if !self.reads.asks.values().any(|ask| ask.leader == leader) {
                self.ask(leader, Vec::new());
            }
        }
        for request in arrived {
            self.route_to_barrier(request, false);
        }
    }

    fn ask(&mut self, leader: NodeId, requests: Vec<RequestId>) {
        let id = self.reads.next_ask;
        self.reads.next_ask += 1;
        let configuration_id = self.membership.configuration_id;
        self.pending_messages.push((leader, PeerMessage::ReadIndex { configuration_id, ask: id }));
        self.reads.asks.insert(id, Ask { leader, sent_tick: self.now_ticks, requests });
    }

    fn ask_failed(&mut self, id: u64) {
        let Some(ask) = self.reads.asks.remove(&id) else { return };
        for request in ask.requests {
            self.fall_back(request);
        }
    }

    /// Starts a round for the queued waiters, when this node can.
    fn start_round(&mut self) {
        if self.reads.queued.is_empty() && !std::mem::take(&mut self.reads.probe) {
            return;
        }
        let waiters = std::mem::take(&mut self.reads.queued);
        if !self.replica.is_leader() || self.replica.has_stopsign() || self.blocked.is_some() {
            self.release(waiters, None);
            return;
        }
        let ballot = self.replica.promise();
        if self.reads.ballot != Some(ballot) {
            self.drop_rounds();
            self.reads.ballot = Some(ballot);
            self.reads.confirmed.clear();
        }
        let id = self.reads.next_round;
        self.reads.next_round += 1;
        self.reads.stats.rounds += 1;
        let index = self.replica.accepted_index();
        self.reads.rounds.push_back(Round { id, index, started_tick: self.now_ticks, waiters });
        let configuration_id = self.membership.configuration_id;
        let me = self.replica.node_id();
        for &peer in self.replica.members() {
            if peer != me {
                self.pending_messages
                    .push((peer, PeerMessage::ReadConfirm { configuration_id, round: id }));
            }
        }
        self.complete_rounds();
    }

    /// Ends every round in flight unconfirmed.
    fn drop_rounds(&mut self) {
        let rounds = std::mem::take(&mut self.reads.rounds);
        for round in rounds {
            self.release(round.waiters, None);
        }
        self.reads.ballot = None;
        self.reads.confirmed.clear();
    }

    /// Hands waiters their index, or (with `None`) sends them to the log.
    fn release(&mut self, waiters: Vec<Waiter>, index: Option<u64>) {
        for waiter in waiters {
            match (waiter, index) {
                (Waiter::Local(request), Some(index)) => {
                    if self.reads.live.contains(&request) {
                        self.reads.ready.entry(index).or_default().push(request);
                    }
                }
                (Waiter::Local(request), None) => self.fall_back(request),
                (Waiter::Remote { node, ask }, index) => {
                    self.pending_messages.push((node, PeerMessage::ReadIndexReply { ask, index }));
                }
            }
        }
    }

    /// Confirms the rounds a majority has answered, oldest first.
    fn complete_rounds(&mut self) {
        let majority = self.replica.members().len() / 2 + 1;
        #[cfg(feature = "planted-bugs")]
        let majority = if self.config.planted_unconfirmed_reads { 1 } else { majority };
        while let Some(round) = self.reads.rounds.front() {
            let answered = 1 + self.reads.confirmed.values().filter(|&&r| r >= round.id).count();
            if answered < majority {
                break;
            }
            let round = self.reads.rounds.pop_front().expect("a round");
            self.release(round.waiters, Some(round.index));
        }
    }

    /// Serves the confirmed reads whose index the state has applied.
    pub(super) fn serve_ready(&mut self, out: &mut Output) {
        let applied = self.sm.applied_index();
        while let Some(entry) = self.reads.ready.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for request in entry.remove() {
                if self.reads.live.remove(&request) {
                    self.reads.stats.read_index += 1;
                    out.answers.push((request, Answer::ReadReady { index: applied }));
                }
            }
        }
    }

    // ---- Messages ----

    /// A peer that sends this path's messages knows the path.
    fn knows_rounds(&mut self, peer: NodeId) {
        self.reads.confirmers.insert(peer);
        self.reads.answerers.insert(peer);
    }

    /// A leader asks whether this node still holds its promise.
    pub(super) fn read_confirm_arrived(&mut self, from: NodeId, configuration_id: u32, round: u64) {
        if configuration_id != self.membership.configuration_id {
            return;
        }
        self.knows_rounds(from);
        let promise = self.replica.promise();
        self.pending_messages
            .push((from, PeerMessage::ReadConfirmed { configuration_id, round, promise }));
    }

    /// A peer answered a round with the ballot it promised.
    pub(super) fn read_confirmed_arrived(
        &mut self,
        from: NodeId,
        configuration_id: u32,
        round: u64,
        promise: Ballot,
    ) {
        if configuration_id != self.membership.configuration_id {
            return;
        }
        self.knows_rounds(from);
        // An answer with another ballot confirms nothing; the rounds wait
        // for a majority or time out.
        if self.reads.ballot != Some(promise) {
            return;
        }
        let latest = self.reads.confirmed.entry(from).or_insert(round);
        *latest = (*latest).max(round);
        self.complete_rounds();
    }

    /// A follower asks for a read index.
    pub(super) fn read_index_asked(&mut self, from: NodeId, configuration_id: u32, ask: u64) {
        if configuration_id == self.membership.configuration_id {
            self.knows_rounds(from);
        }
        let able = configuration_id == self.membership.configuration_id
            && self.replica.is_leader()
            && !self.replica.has_stopsign()
            && self.blocked.is_none();
        if able {
            self.reads.queued.push(Waiter::Remote { node: from, ask });
        } else {
            self.pending_messages.push((from, PeerMessage::ReadIndexReply { ask, index: None }));
        }
    }

    /// The leader answered an ask.
    pub(super) fn read_index_answered(&mut self, from: NodeId, ask: u64, index: Option<u64>) {
        match self.reads.asks.get(&ask) {
            Some(pending) if pending.leader == from => {}
            _ => return,
        }
        self.knows_rounds(from);
        match index {
            Some(index) => {
                let pending = self.reads.asks.remove(&ask).expect("an ask");
                let live: Vec<RequestId> =
                    pending.requests.into_iter().filter(|r| self.reads.live.contains(r)).collect();
                if !live.is_empty() {
                    self.reads.ready.entry(index).or_default().extend(live);
                }
            }
            None => self.ask_failed(ask),
        }
    }

    /// Sends what waited too long to the log. Called every tick.
    pub(super) fn expire_reads(&mut self) {
        let now = self.now_ticks;
        let timeout = self.config.read_index_timeout_ticks;
        while self.reads.rounds.front().is_some_and(|r| r.started_tick + timeout <= now) {
            let round = self.reads.rounds.pop_front().expect("a round");
            self.release(round.waiters, None);
        }
        let late: Vec<u64> = self
            .reads
            .asks
            .iter()
            .filter(|(_, ask)| ask.sent_tick + timeout <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in late {
            // A leader that does not answer in time may not know the path.
            if let Some(ask) = self.reads.asks.get(&id) {
                let leader = ask.leader;
                self.reads.answerers.remove(&leader);
            }
            self.ask_failed(id);
        }
        let mut expired = false;
        while let Some(&(deadline, request)) = self.reads.deadlines.front() {
            if deadline > now {
                break;
            }
            self.reads.deadlines.pop_front();
            expired |= self.reads.live.contains(&request);
            self.fall_back(request);
        }
        if !expired {
            return;
        }
        let live = &self.reads.live;
        self.reads.ready.retain(|_, requests| {
            requests.retain(|r| live.contains(r));
            !requests.is_empty()
        });
    }
}
