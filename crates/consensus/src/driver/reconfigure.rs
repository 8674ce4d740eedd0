//! Membership changes, as the driver carries them out: a change asked for
//! here is proposed as a StopSign whose metadata is the next member list
//! (and asked again until one is decided, since a follower's forward can be
//! lost); a decided StopSign is applied as a no-op and the node moves to the
//! next configuration (a fresh log, stored with the membership in one synced
//! write), or stops serving when it is not in it, or hands over to the
//! single-node log when it is alone in it. A node that hears a newer
//! configuration from a peer asks for its membership and moves to it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use cairn_storage::{Command, Op};

use super::{Answer, Blocked, Driver, Kind, Output, PeerMessage, RequestId};
use crate::membership::Membership;
use crate::replica::{NodeId, Replica};
use crate::Error;

/// A membership change this node asked for, until a StopSign is decided.
pub(super) struct Reconfiguration {
    pub(super) members: BTreeMap<NodeId, SocketAddr>,
    pub(super) waiters: Vec<RequestId>,
    /// When to ask again (a forwarded StopSign can be lost).
    pub(super) due_tick: u64,
}

impl Driver {
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
        if let Err(reason) = self.check_holders(&next) {
            out.answers.push((request, Answer::Failed(Error::Refused { reason })));
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

    /// Members of this configuration that hold its state, as far as this
    /// node can tell: itself (it serves, so it applied up to the base
    /// index), and every peer heard from lately whose last hello showed it
    /// applied up to the base index.
    fn holders(&self) -> BTreeSet<NodeId> {
        let base = self.membership.base_index;
        let silence = self.config.peer_silence_ticks;
        self.membership
            .ids()
            .into_iter()
            .filter(|&id| {
                id == self.config.node_id
                    || (self.heard_ticks_ago(id).is_some_and(|ago| ago <= silence)
                        && self.hellos.get(&id).is_some_and(|h| h.applied_index >= base))
            })
            .collect()
    }

    /// Refuses a change after which fewer members of the next configuration
    /// would hold the state than hold it now, or than make its majority,
    /// whichever is fewer. New members start empty and catch up from the
    /// members that hold the state; a configuration without enough of them
    /// could decide nothing that survives the loss of the one that holds
    /// the data, and a configuration with none of them could never serve
    /// again (its members would need a removed node's state). Changing one
    /// member at a time, each once the last has caught up, always passes.
    fn check_holders(&self, next: &Membership) -> Result<(), String> {
        let holders = self.holders();
        let kept: Vec<NodeId> = holders.iter().copied().filter(|id| next.contains(*id)).collect();
        let majority = next.members.len() / 2 + 1;
        let needed = majority.min(holders.len());
        if kept.len() >= needed {
            return Ok(());
        }
        let behind: Vec<NodeId> = next
            .ids()
            .into_iter()
            .filter(|id| self.membership.contains(*id) && !holders.contains(id))
            .collect();
        let new: Vec<NodeId> =
            next.ids().into_iter().filter(|id| !self.membership.contains(*id)).collect();
        Err(format!(
            "the change would leave {} of the new members {:?} holding the data of configuration              {} (nodes {kept:?}), fewer than the {needed} it needs: new members {new:?} start              empty, and members {behind:?} have not caught up or cannot be heard; change one              member at a time, once the last one caught up",
            kept.len(),
            next.ids(),
            self.membership.configuration_id,
        ))
    }

    /// A peer's membership, asked for because its messages showed a newer
    /// configuration: move to it.
    ///
    /// Moving starts the new configuration's fresh log, which drops this
    /// configuration's: entries decided here that this node holds and has
    /// not applied would go with it, and they may be the only copies a
    /// member of the new configuration has (a node that moved this way
    /// cannot serve them). So a node that is in the new configuration moves
    /// only once it has applied everything before that configuration's base
    /// index; until then it catches up to there like any node behind
    /// (`Blocked::NeedsSnapshot`), from its own log, from peers that still
    /// hold this configuration's entries, or from a snapshot of a peer that
    /// moved on, and [`Driver::finish_move`] moves it. A node that is not
    /// in the new configuration keeps its log and stops serving at once.
    pub(super) fn membership_arrived(
        &mut self,
        from: NodeId,
        next: Membership,
    ) -> Result<(), Error> {
        if !self.membership_asked.remove(&from) {
            tracing::warn!(
                from,
                configuration_id = next.configuration_id,
                "refused a membership this node did not ask that peer for"
            );
            return Ok(());
        }
        if next.configuration_id <= self.membership.configuration_id
            || next.cluster_id != self.membership.cluster_id
            || next.validate().is_err()
        {
            return Ok(());
        }
        if self.moving_to.as_ref().is_some_and(|m| m.configuration_id >= next.configuration_id) {
            return Ok(());
        }
        let member = next.contains(self.config.node_id);
        let behind = self.sm.applied_index() + 1 < next.base_index;
        let catching_up = matches!(self.blocked, None | Some(Blocked::NeedsSnapshot { .. }));
        if member && behind && catching_up {
            let through_index = next.base_index - 1;
            tracing::info!(
                from,
                configuration_id = next.configuration_id,
                applied = self.sm.applied_index(),
                through_index,
                "a peer is in a newer configuration: catching up to its start before moving to it"
            );
            let through_index = match self.blocked {
                Some(Blocked::NeedsSnapshot { through_index: gap }) => gap.max(through_index),
                _ => through_index,
            };
            self.blocked = Some(Blocked::NeedsSnapshot { through_index });
            self.moving_to = Some(next);
            return Ok(());
        }
        tracing::info!(
            from,
            configuration_id = next.configuration_id,
            "a peer is in a newer configuration: moving to it"
        );
        self.moving_to = Some(next);
        let mut out = Output::default();
        let result = self.finish_move(&mut out);
        self.deferred_answers.append(&mut out.answers);
        if out.membership.is_some() {
            self.deferred_membership = out.membership;
        }
        result.map_err(|error| self.fail_now(error))
    }

    /// Moves to the configuration learned from a peer once everything before
    /// its base index is applied here (the StopSign at the base index is a
    /// no-op, no need to fetch it); until then, catches up to there.
    pub(super) fn finish_move(&mut self, out: &mut Output) -> Result<(), cairn_storage::Error> {
        let Some(next) = self.moving_to.take() else { return Ok(()) };
        let index = next.base_index;
        let applied = self.sm.applied_index();
        if next.contains(self.config.node_id) && applied + 1 < index {
            // A snapshot that ended short of the base index (the target rose
            // while it streamed): on with catching up.
            self.blocked = Some(Blocked::NeedsSnapshot { through_index: index - 1 });
            self.moving_to = Some(next);
            return Ok(());
        }
        if applied + 1 == index && index > 0 {
            let noop = [(index, Command::new(None, Op::Noop))];
            self.sm.apply(&noop)?;
        }
        self.switch_to(next, out)
    }

    pub(super) fn propose_reconfiguration(&mut self) {
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
    pub(super) fn stopsign_decided(
        &mut self,
        index: u64,
        nodes: &[NodeId],
        metadata: Option<&[u8]>,
        out: &mut Output,
    ) -> Result<(), cairn_storage::Error> {
        let members = match stopsign_members(&self.membership, nodes, metadata) {
            Ok(members) => members,
            Err(reason) => {
                tracing::error!(index, %reason, "a StopSign this node cannot follow: it stops here");
                self.blocked = Some(Blocked::Reconfigured { index });
                return Ok(());
            }
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
    pub(super) fn switch_to(
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
        self.moving_to = None;
        self.catch_up = None;
        self.lagging_since = None;
        // Nodes that left are no longer heard from, nor asked for entries.
        self.hellos.retain(|id, _| next.contains(*id));
        self.heard.retain(|id, _| next.contains(*id));
        if !next.contains(me) {
            self.blocked = Some(Blocked::Removed { configuration_id: next.configuration_id });
            self.membership = next;
            // What this node applied may settle some; the others it proposed
            // and can no longer follow (it may not have applied all that was
            // decided before it left): their outcome is unknown.
            self.settle_from_state(out)?;
            let reason = format!("node {me} was removed from the cluster");
            for (request, kind) in std::mem::take(&mut self.waiting).into_values().flatten() {
                let error = match kind {
                    Kind::Read => Error::NotServing { reason: reason.clone() },
                    Kind::Write => Error::Orphaned { reason: reason.clone() },
                };
                out.answers.push((request, Answer::Failed(error)));
            }
            self.keys.clear();
            return Ok(());
        }
        // The membership came from a decided StopSign or a peer and was
        // validated: only the store can fail to take it.
        next.begin(self.sm.store()).map_err(|e| match e {
            crate::membership::MembershipError::Storage(e) => e,
            other => panic!("a validated membership refused: {other}"),
        })?;
        self.membership = next.clone();
        if next.members.len() == 1 {
            self.blocked = Some(Blocked::Alone { configuration_id: next.configuration_id });
            return Ok(());
        }
        let mut config = self.config.replica_config(&next);
        // The leader of the configuration that ends keeps leading the next
        // one where it can: without a priority, the member with the highest
        // id wins the first election, and every node added became leader.
        config.leader_priority = u32::from(self.replica.is_leader());
        // A validated membership of two or more members, this node among
        // them, always makes a replica's configuration.
        self.replica = Replica::open(config, self.sm.store(), self.sm.applied_index()).map_err(
            |e| match e {
                crate::replica::Error::Storage(e) => e,
                other => panic!("a validated membership makes no replica: {other}"),
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
    pub(super) fn ask_membership(&mut self, peer: NodeId) {
        let interval = self.config.hello_interval_ticks.max(1);
        if self.membership_asked_tick.is_some_and(|t| self.now_ticks < t + interval) {
            return;
        }
        self.membership_asked_tick = Some(self.now_ticks);
        self.membership_asked.insert(peer);
        self.pending_messages.push((peer, PeerMessage::FetchMembership));
    }
}

/// The member map a decided StopSign carries, checked: it must read, make
/// a valid configuration, and name exactly the nodes of the StopSign's
/// own configuration. Every node decides the same StopSign, so every node
/// refuses the same bad one.
fn stopsign_members(
    current: &Membership,
    nodes: &[NodeId],
    metadata: Option<&[u8]>,
) -> Result<BTreeMap<NodeId, SocketAddr>, String> {
    let bytes = metadata.ok_or("it carries no member list")?;
    let members: BTreeMap<NodeId, SocketAddr> =
        serde_json::from_slice(bytes).map_err(|e| format!("its member list does not read: {e}"))?;
    current.next(members.clone(), 0).validate().map_err(|e| e.to_string())?;
    let named: BTreeSet<NodeId> = nodes.iter().copied().collect();
    if !members.keys().copied().eq(named.iter().copied()) {
        return Err(format!(
            "its member list {:?} is not its configuration's nodes {named:?}",
            members.keys().collect::<Vec<_>>()
        ));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(id: NodeId) -> SocketAddr {
        format!("127.0.0.1:{}", 7000 + id).parse().unwrap()
    }

    fn members(ids: &[NodeId]) -> BTreeMap<NodeId, SocketAddr> {
        ids.iter().map(|&id| (id, addr(id))).collect()
    }

    #[test]
    fn a_stopsigns_member_list_must_read_be_valid_and_match_its_configuration() {
        let current = Membership::new_cluster(members(&[1, 2, 3])).unwrap();
        let encode = |m: &BTreeMap<NodeId, SocketAddr>| serde_json::to_vec(m).unwrap();
        let good = members(&[1, 2, 4]);
        assert_eq!(stopsign_members(&current, &[1, 2, 4], Some(&encode(&good))), Ok(good.clone()));
        let refused = |nodes: &[NodeId], metadata: Option<&[u8]>| {
            stopsign_members(&current, nodes, metadata).unwrap_err()
        };
        assert!(refused(&[1, 2, 4], None).contains("no member list"));
        assert!(refused(&[1, 2, 4], Some(b"{not json")).contains("does not read"));
        // Members the StopSign's own configuration does not name, or misses.
        assert!(refused(&[1, 2], Some(&encode(&good))).contains("not its configuration"));
        assert!(refused(&[1, 2, 4, 5], Some(&encode(&good))).contains("not its configuration"));
        // An empty list, or ids out of range, make no configuration.
        assert!(refused(&[], Some(&encode(&BTreeMap::new()))).contains("members"));
        let out_of_range = members(&[0, 1]);
        assert!(refused(&[0, 1], Some(&encode(&out_of_range))).contains("out of range"));
    }
}
