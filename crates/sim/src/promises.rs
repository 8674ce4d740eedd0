//! Checker: a node never forgets what it told a peer it promised or
//! accepted.
//!
//! Paxos counts a promise or an acceptance once it reaches the leader, so
//! the node must still hold it whatever happens to it later: a promise
//! forgotten lets it promise a lower ballot again, an acceptance forgotten
//! lets a chosen entry fall out of a majority. After every restart, power
//! cuts included, the node's log must hold at least the highest promise it
//! sent in its configuration, and a log at least as far along as each
//! `Promise` and `Accepted` it sent: the same accepted round with at least
//! as many entries, or a higher round.

use std::collections::BTreeMap;

use cairn_consensus::driver::PeerMessage;
use cairn_consensus::replica::NodeId;
use cairn_storage::log_store::LogStore;
use omnipaxos::ballot_leader_election::Ballot;
use omnipaxos::messages::sequence_paxos::{PaxosMessage, PaxosMsg};
use omnipaxos::messages::Message;
use omnipaxos::storage::Storage;

/// What one node told its peers in one configuration.
#[derive(Clone, Copy, Debug)]
struct Told {
    configuration_id: u32,
    promise: Ballot,
    /// The furthest log it reported: accepted round, then length.
    accepted: (Ballot, usize),
}

#[derive(Default)]
pub struct Promises {
    told: BTreeMap<NodeId, Told>,
}

impl Promises {
    /// `from` sent `message`.
    pub fn sent(&mut self, from: NodeId, message: &PeerMessage) {
        let PeerMessage::Paxos {
            configuration_id,
            message: Message::SequencePaxos(PaxosMessage { msg, .. }),
        } = message
        else {
            return;
        };
        let (promise, accepted) = match msg {
            PaxosMsg::Promise(p) => (p.n, (p.n_accepted, p.accepted_idx)),
            PaxosMsg::Accepted(a) => (a.n, (a.n, a.accepted_idx)),
            _ => return,
        };
        let told = self.told.entry(from).or_insert(Told {
            configuration_id: *configuration_id,
            promise,
            accepted,
        });
        if *configuration_id > told.configuration_id {
            *told = Told { configuration_id: *configuration_id, promise, accepted };
        } else if *configuration_id == told.configuration_id {
            told.promise = told.promise.max(promise);
            told.accepted = told.accepted.max(accepted);
        }
    }

    /// `node` restarted in configuration `configuration_id` with `log`;
    /// answers the violations.
    pub fn restarted(&self, node: NodeId, configuration_id: u32, log: &LogStore) -> Vec<String> {
        let Some(told) = self.told.get(&node) else { return Vec::new() };
        if told.configuration_id != configuration_id {
            return Vec::new();
        }
        let promise = log.get_promise().ok().flatten().unwrap_or_default();
        let round = log.get_accepted_round().ok().flatten().unwrap_or_default();
        // As OmniPaxos counts it: the log as if it was never compacted, and
        // a StopSign as one more entry.
        let len = log.get_log_len().unwrap_or(0)
            + log.get_compacted_idx().unwrap_or(0)
            + usize::from(log.get_stopsign().ok().flatten().is_some());
        let mut violations = Vec::new();
        if promise < told.promise {
            violations.push(format!(
                "node {node} restarted with promise {promise:?}, below the {:?} it sent",
                told.promise
            ));
        }
        if (round, len) < told.accepted {
            violations.push(format!(
                "node {node} restarted with a log of {len} entries in round {round:?}, behind \
                 the {} entries in round {:?} it told a peer it had accepted",
                told.accepted.1, told.accepted.0
            ));
        }
        violations
    }

    /// `node` was deleted; a node that reuses its id starts afresh.
    pub fn deleted(&mut self, node: NodeId) {
        self.told.remove(&node);
    }
}
