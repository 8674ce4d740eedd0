//! The simulated network, as the peer transport presents it to the nodes.
//!
//! Packets misbehave: they are delayed, duplicated, reordered and lost, all
//! drawn from the seed. The transport above them is one framed TCP connection
//! per pair of nodes, and the model keeps its guarantees, because OmniPaxos
//! relies on them:
//!
//! - **In order, once**: each directed link numbers its messages; a message is
//!   never delivered before an earlier one on its link (delivery times on a
//!   link never decrease) and a repeated one is dropped. Reordering and
//!   duplication are therefore visible only as delay.
//! - **Loss breaks the connection**: a lost packet loses everything after it
//!   on that pair until the pair reconnects, and then both ends are told
//!   ([`Network::reconnections`]), so that each calls `reconnected(peer)`
//!   and OmniPaxos resynchronises. A message is never lost in the middle of a
//!   stream that goes on. (Fed a stale `AcceptSync` after a newer one, or a
//!   gap it is not told about, an OmniPaxos follower's log can go out of line
//!   with its leader's: the simulator found both.)
//! - **Partitions are per pair**: a cut pair is down both ways (a TCP
//!   connection needs both directions), and cuts of some pairs but not others
//!   give the partial-connectivity scenarios.
//!
//! Delivery order among messages due at the same tick is the order they were
//! sent: everything is a function of the seed.

use std::collections::{BTreeMap, BTreeSet};

use cairn_consensus::driver::PeerMessage;
use cairn_consensus::replica::NodeId;
use cairn_util::Rng;

/// Ticks a broken connection stays down before it reconnects (when its pair
/// is not cut and both nodes are up).
const RECONNECT_TICKS: u64 = 3;

/// How packets misbehave while faults are on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Extra delivery delay, in ticks, is drawn below this (at least 1).
    pub latency_ticks: u64,
    /// Chance that a message's packet is lost, breaking its connection.
    pub drop_percent: u64,
    pub duplicate_percent: u64,
}

/// Counters of what the network did, for the run's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    pub sent: u64,
    pub delivered: u64,
    /// Packets lost (each broke its connection).
    pub dropped: u64,
    pub duplicated: u64,
    /// Messages lost because their connection was down or cut.
    pub lost_while_down: u64,
    pub reconnections: u64,
}

/// A pair of nodes, lower id first.
type Pair = (NodeId, NodeId);

fn pair(a: NodeId, b: NodeId) -> Pair {
    (a.min(b), a.max(b))
}

/// Messages in flight and the state of every connection.
pub struct Network {
    faults: Faults,
    /// Pairs that cannot talk.
    cut: BTreeSet<Pair>,
    /// Broken connections, with the tick they may come back at.
    down: BTreeMap<Pair, u64>,
    /// `(due tick, sequence) → (from, to, link number, message)`.
    in_flight: BTreeMap<(u64, u64), (NodeId, NodeId, u64, PeerMessage)>,
    sequence: u64,
    /// Per directed link: the last number sent, and the last due tick.
    link_sent: BTreeMap<(NodeId, NodeId), (u64, u64)>,
    /// Per directed link: the last number taken by the receiver.
    link_taken: BTreeMap<(NodeId, NodeId), u64>,
    stats: NetworkStats,
}

impl Network {
    pub fn new(faults: Faults) -> Network {
        Network {
            faults,
            cut: BTreeSet::new(),
            down: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            sequence: 0,
            link_sent: BTreeMap::new(),
            link_taken: BTreeMap::new(),
            stats: NetworkStats::default(),
        }
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    /// Cuts the pair `a`–`b` (both ways) and breaks its connection.
    pub fn cut(&mut self, a: NodeId, b: NodeId, now: u64) {
        if a != b {
            self.cut.insert(pair(a, b));
            self.break_pair(pair(a, b), now);
        }
    }

    /// Restores every pair; broken connections come back shortly.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Breaks every connection of `node` (it crashed) and forgets what was
    /// in flight to or from it.
    pub fn crash(&mut self, node: NodeId, now: u64, nodes: &[NodeId]) {
        for &other in nodes {
            if other != node {
                self.break_pair(pair(node, other), now);
            }
        }
        self.in_flight.retain(|_, (from, to, _, _)| *to != node && *from != node);
    }

    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    /// Sends `message` at tick `now`.
    pub fn send(
        &mut self,
        rng: &mut Rng,
        now: u64,
        from: NodeId,
        to: NodeId,
        message: PeerMessage,
    ) {
        self.stats.sent += 1;
        let link = pair(from, to);
        if self.cut.contains(&link) || self.down.contains_key(&link) {
            self.stats.lost_while_down += 1;
            return;
        }
        if rng.chance(self.faults.drop_percent) {
            self.stats.dropped += 1;
            self.break_pair(link, now);
            return;
        }
        let (number, last_due) = {
            let sent = self.link_sent.entry((from, to)).or_default();
            sent.0 += 1;
            (sent.0, sent.1)
        };
        let latency = self.faults.latency_ticks.max(1);
        let due = (now + 1 + rng.below(latency)).max(last_due);
        if rng.chance(self.faults.duplicate_percent) {
            // The copy is delivered later and dropped as a repeat.
            self.stats.duplicated += 1;
            let copy_due = due + rng.below(latency);
            self.enqueue(copy_due, from, to, number, message.clone());
        }
        self.link_sent.entry((from, to)).or_default().1 = due;
        self.enqueue(due, from, to, number, message);
    }

    /// The messages due at or before `now`, in order.
    pub fn deliver(&mut self, now: u64) -> Vec<(NodeId, NodeId, PeerMessage)> {
        let mut due = Vec::new();
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (from, to, number, message) = entry.remove();
            let taken = self.link_taken.entry((from, to)).or_default();
            if number <= *taken {
                continue; // a repeat
            }
            *taken = number;
            self.stats.delivered += 1;
            due.push((from, to, message));
        }
        due
    }

    /// Connections that come back at `now`: both ends are told. `up` says
    /// whether a node is running.
    pub fn reconnections(&mut self, now: u64, up: impl Fn(NodeId) -> bool) -> Vec<Pair> {
        let ready: Vec<Pair> = self
            .down
            .iter()
            .filter(|(link, at)| {
                **at <= now && !self.cut.contains(*link) && up(link.0) && up(link.1)
            })
            .map(|(link, _)| *link)
            .collect();
        for link in &ready {
            self.down.remove(link);
            self.stats.reconnections += 1;
        }
        ready
    }

    /// A connection breaks: what is in flight on it is lost, and nothing
    /// goes through until it reconnects.
    fn break_pair(&mut self, link: Pair, now: u64) {
        self.down.insert(link, now + RECONNECT_TICKS);
        let before = self.in_flight.len();
        self.in_flight.retain(|_, (from, to, _, _)| pair(*from, *to) != link);
        self.stats.lost_while_down += (before - self.in_flight.len()) as u64;
    }

    fn enqueue(&mut self, due: u64, from: NodeId, to: NodeId, number: u64, message: PeerMessage) {
        self.sequence += 1;
        self.in_flight.insert((due, self.sequence), (from, to, number, message));
    }
}
