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

use crate::{CatchUpStats, Error, LogHandle, LogThread, Request, Role, Shared, Status};

/// Most entries applied in one batch (one fsync).
pub const BATCH_ENTRIES_MAX: usize = 1024;
/// Requests that may wait for the log before senders are slowed down.
pub const REQUESTS_QUEUED_MAX: usize = 8192;

/// The single-node log.
pub struct LocalLog;

type Reply = oneshot::Sender<Result<cairn_storage::Applied, Error>>;

impl LocalLog {
    /// Starts the log thread; it stops once every handle is dropped.
    pub fn start(node_id: u64, sm: StateMachine) -> std::io::Result<(LogThread, LogHandle)> {
        let (tx, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let applied = sm.applied_index();
        let status = Status {
            node_id,
            role: Role::Leader,
            leader: Some(node_id),
            configuration_id: 0,
            decided_index: applied,
            applied_index: applied,
            catch_up: CatchUpStats::default(),
        };
        let handle = LogHandle::new(tx, status, false);
        let shared = handle.shared();
        // Returning closes the queue before `stopped` fires: handles see
        // `Stopped` at once.
        let thread = LogThread::spawn("cairn-log", move || run(sm, rx, &shared))?;
        Ok((thread, handle))
    }
}

fn run(mut sm: StateMachine, mut rx: mpsc::Receiver<Request>, shared: &Shared) {
    let mut entries: Vec<(u64, Command)> = Vec::with_capacity(BATCH_ENTRIES_MAX);
    let mut replies: Vec<Reply> = Vec::with_capacity(BATCH_ENTRIES_MAX);
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request {
                Request::Propose { command, reply } => {
                    let index = sm.applied_index() + 1 + entries.len() as u64;
                    entries.push((index, command));
                    replies.push(reply);
                }
                Request::OpenSession { reply } => {
                    // Entries are this node's own: no token is needed.
                    let index = sm.applied_index() + 1 + entries.len() as u64;
                    entries.push((index, Command::new(None, Op::OpenSession { token: 0 })));
                    replies.push(reply);
                }
                Request::ReadBarrier { reply } => {
                    // Answered before this batch applies: it waits for nothing
                    // that was acknowledged.
                    let _ = reply.send(Ok(sm.applied_index()));
                }
            }
            if entries.len() < BATCH_ENTRIES_MAX {
                next = rx.try_recv().ok();
            }
        }
        if entries.is_empty() {
            continue;
        }
        match sm.apply(&entries) {
            Ok(applied) => {
                assert_eq!(applied.len(), replies.len(), "one answer per entry");
                let index = sm.applied_index();
                shared.publish(|status| {
                    status.decided_index = index;
                    status.applied_index = index;
                });
                for (reply, answer) in replies.drain(..).zip(applied) {
                    let _ = reply.send(Ok(answer));
                }
                entries.clear();
            }
            Err(error) => {
                tracing::error!(%error, "storage fault: the log stops");
                rx.close();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(Error::Storage(error.to_string())));
                }
                return;
            }
        }
    }
}
