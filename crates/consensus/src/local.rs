//! The log of a single node: group commit in front of the state machine.
//!
//! One thread owns the [`StateMachine`]. It takes every request waiting in its
//! queue (up to [`BATCH_ENTRIES_MAX`]), gives the proposals consecutive indexes
//! after the applied index, applies them in one synced `WriteBatch`, and only
//! then answers them. Under load many writers share one fsync; alone, a write
//! costs one.
//!
//! A single node needs no separate log: the batch that orders its entries is the
//! batch that applies them, so the applied state is the whole durable history.
//! Reads need no barrier: every acknowledged write is already applied, so local
//! state is linearizable, and the handle answers barriers without a round trip.
//!
//! A storage fault stops the thread: pending and later requests get
//! [`Error::Storage`] or [`Error::Stopped`], and the node must restart.

use cairn_storage::{Command, Op, StateMachine};
use tokio::sync::{mpsc, oneshot};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::membership::Membership;
use crate::{CatchUpStats, Error, Handover, LogHandle, LogThread, Request, Role, Shared, Status};

/// Most entries applied in one batch (one fsync).
pub const BATCH_ENTRIES_MAX: usize = 1024;
/// Requests that may wait for the log before senders are slowed down.
pub const REQUESTS_QUEUED_MAX: usize = 8192;

/// The single-node log.
pub struct LocalLog;

type Reply = oneshot::Sender<Result<cairn_storage::Applied, Error>>;
type MembershipReply = oneshot::Sender<Result<Membership, Error>>;

impl LocalLog {
    /// Starts the log thread; it stops once every handle is dropped.
    /// `membership` is the node's one-member configuration if it belonged to
    /// a cluster before (or `None`).
    pub fn start(
        node_id: u64,
        sm: StateMachine,
        membership: Option<Membership>,
    ) -> std::io::Result<(LogThread, LogHandle)> {
        let (tx, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let applied = sm.applied_index();
        let status = Status {
            node_id,
            role: Role::Leader,
            leader: Some(node_id),
            configuration_id: membership.as_ref().map_or(0, |m| m.configuration_id),
            decided_index: applied,
            applied_index: applied,
            catch_up: CatchUpStats::default(),
            not_serving: None,
        };
        let handle = LogHandle::new(tx, status, false);
        let shared = handle.shared();
        shared.publish_membership(membership.clone());
        let log = Local { node_id, sm, requests: rx, shared, membership };
        // Returning closes the queue before `stopped` fires: handles see
        // `Stopped` at once.
        let thread = LogThread::spawn("cairn-log", move || log.run())?;
        Ok((thread, handle))
    }

    /// Takes over from a replicated log whose configuration left this node
    /// alone.
    pub fn resume(node_id: u64, handover: Handover) -> std::io::Result<LogThread> {
        let Handover { requests, shared, sm, membership } = handover;
        shared.set_reads_need_barrier(false);
        shared.publish_membership(Some(membership.clone()));
        shared.publish_members(Vec::new());
        let applied = sm.applied_index();
        shared.publish(|status| {
            status.role = Role::Leader;
            status.leader = Some(node_id);
            status.configuration_id = membership.configuration_id;
            status.decided_index = applied;
            status.applied_index = applied;
            // Whatever kept the replicated log from serving (a peer out of
            // sight) is gone with it: alone, this node serves.
            status.not_serving = None;
        });
        let log = Local { node_id, sm, requests, shared, membership: Some(membership) };
        LogThread::spawn("cairn-log", move || log.run())
    }
}

struct Local {
    node_id: u64,
    sm: StateMachine,
    requests: mpsc::Receiver<Request>,
    shared: Arc<Shared>,
    membership: Option<Membership>,
}

impl Local {
    fn run(mut self) -> Option<Handover> {
        let mut entries: Vec<(u64, Command)> = Vec::with_capacity(BATCH_ENTRIES_MAX);
        let mut replies: Vec<Reply> = Vec::with_capacity(BATCH_ENTRIES_MAX);
        while let Some(first) = self.requests.blocking_recv() {
            let mut next = Some(first);
            let mut change: Option<(BTreeMap<u64, SocketAddr>, MembershipReply)> = None;
            while let Some(request) = next.take() {
                let index = self.sm.applied_index() + 1 + entries.len() as u64;
                match request {
                    Request::Propose { command, reply } => {
                        entries.push((index, command));
                        replies.push(reply);
                    }
                    Request::OpenSession { reply } => {
                        // Entries are this node's own: no token is needed.
                        entries.push((index, Command::new(None, Op::OpenSession { token: 0 })));
                        replies.push(reply);
                    }
                    Request::ReadBarrier { reply } => {
                        // Answered before this batch applies: it waits for
                        // nothing that was acknowledged.
                        let _ = reply.send(Ok(self.sm.applied_index()));
                    }
                    Request::ChangeMembership { members, reply } => {
                        // Applied after this batch, and before anything else.
                        change = Some((members, reply));
                        break;
                    }
                }
                if entries.len() < BATCH_ENTRIES_MAX {
                    next = self.requests.try_recv().ok();
                }
            }
            if !entries.is_empty() && !self.apply(&mut entries, &mut replies) {
                return None;
            }
            if let Some((members, reply)) = change {
                match self.change_membership(members) {
                    Ok(Some(next)) => {
                        let _ = reply.send(Ok(next.clone()));
                        return Some(Handover {
                            requests: self.requests,
                            shared: self.shared,
                            sm: self.sm,
                            membership: next,
                        });
                    }
                    Ok(None) => {
                        let current = self.membership.clone();
                        let _ = reply.send(
                            current.ok_or_else(|| Error::Refused { reason: "no change".into() }),
                        );
                    }
                    Err(error) => {
                        let failed = matches!(error, Error::Storage(_));
                        let _ = reply.send(Err(error));
                        if failed {
                            self.requests.close();
                            return None;
                        }
                    }
                }
            }
        }
        None
    }

    /// Applies a batch and answers it; false after a storage fault.
    fn apply(&mut self, entries: &mut Vec<(u64, Command)>, replies: &mut Vec<Reply>) -> bool {
        match self.sm.apply(entries) {
            Ok(applied) => {
                assert_eq!(applied.len(), replies.len(), "one answer per entry");
                let index = self.sm.applied_index();
                self.shared.publish(|status| {
                    status.decided_index = index;
                    status.applied_index = index;
                });
                for (reply, answer) in replies.drain(..).zip(applied) {
                    let _ = reply.send(Ok(answer));
                }
                entries.clear();
                true
            }
            Err(error) => {
                tracing::error!(%error, "storage fault: the log stops");
                self.requests.close();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(Error::Storage(error.to_string())));
                }
                false
            }
        }
    }

    /// A single node decides a membership change alone: the change takes
    /// effect at the next index, where a new configuration (and, with more
    /// than one member, the replicated log) begins. `Ok(None)`: nothing to
    /// change.
    fn change_membership(
        &mut self,
        members: BTreeMap<u64, SocketAddr>,
    ) -> Result<Option<Membership>, Error> {
        if !members.contains_key(&self.node_id) {
            return Err(Error::Refused {
                reason: format!(
                    "node {} is the only member: it cannot remove itself",
                    self.node_id
                ),
            });
        }
        if self.membership.as_ref().is_some_and(|m| m.members == members) {
            return Ok(None);
        }
        let index = self.sm.applied_index() + 1;
        let next = match &self.membership {
            Some(current) => current.next(members, index),
            None => Membership::new_cluster(members)
                .map(|first| Membership { base_index: index, ..first })
                .map_err(|e| Error::Refused { reason: e.to_string() })?,
        };
        next.validate().map_err(|e| Error::Refused { reason: e.to_string() })?;
        let storage = |e: cairn_storage::Error| Error::Storage(e.to_string());
        self.sm.apply(&[(index, Command::new(None, Op::Noop))]).map_err(storage)?;
        next.begin(self.sm.store()).map_err(|e| Error::Storage(e.to_string()))?;
        tracing::info!(
            index,
            configuration_id = next.configuration_id,
            members = ?next.ids(),
            "membership changed"
        );
        self.shared.publish_membership(Some(next.clone()));
        if next.members.len() > 1 {
            return Ok(Some(next));
        }
        // Still alone (a new address for itself): no handover.
        self.membership = Some(next);
        Ok(None)
    }
}
