//! Exactly-once writes: every write gets a `(session, seq)` id.
//!
//! The proposer keeps a pool of sessions opened through the log. A write takes
//! an idle session, uses its next sequence number, and gives the session back
//! when it has its answer, so a session never has two commands in flight (the
//! state machine's dedup remembers only a session's last command). If the log
//! loses a proposal and the node proposes the same command again, the state
//! machine answers the repeat from memory: the write takes effect once.
//!
//! The pool is first in, first out: every pooled session is used in turn, so
//! none sits idle long enough to be the least recently used the state machine
//! evicts. If one is evicted all the same (many client sessions opened since),
//! its write is refused as `SessionUnknown` without applying, the session is
//! forgotten, and the caller may retry.
//!
//! A write whose future is dropped (a client that hung up, a timeout) still
//! returns its session: the next command of that session has a higher sequence
//! number, so at worst the abandoned one is refused as stale, never applied
//! twice.

use std::collections::VecDeque;
use std::sync::Mutex;

use cairn_storage::{Applied, ApplyError, Command, CommandId, Op, Outcome};

use crate::{Error, LogHandle};

/// Idle sessions kept for reuse; more are let go (the state machine evicts
/// sessions unused for long).
pub const SESSIONS_POOLED_MAX: usize = 1024;

#[derive(Debug)]
struct Session {
    id: u64,
    last_seq: u64,
}

/// Proposes writes with exactly-once ids. Shared by every request of a node.
pub struct Proposer {
    log: LogHandle,
    idle: Mutex<VecDeque<Session>>,
}

impl Proposer {
    pub fn new(log: LogHandle) -> Proposer {
        Proposer { log, idle: Mutex::new(VecDeque::new()) }
    }

    pub fn log(&self) -> &LogHandle {
        &self.log
    }

    /// Applies `op` exactly once and answers with where and how it applied.
    ///
    /// A pooled session that the state machine no longer takes is forgotten,
    /// so only the one write that found out fails (it did not apply, and may
    /// be retried): one evicted while idle (`SessionUnknown`), or one a
    /// client used behind this node's back (`StaleSequence`,
    /// `SequenceReused`: a client may send any session id).
    pub async fn write(&self, op: Op) -> Result<Applied, Error> {
        let mut lease = self.lease().await?;
        let session = lease.session.as_mut().expect("a lease holds its session");
        session.last_seq += 1;
        let id = CommandId { session: session.id, seq: session.last_seq };
        let applied = self.log.propose(Command::new(Some(id), op)).await?;
        if let Outcome::Failed(
            ApplyError::SessionUnknown { .. }
            | ApplyError::StaleSequence { .. }
            | ApplyError::SequenceReused { .. },
        ) = applied.outcome
        {
            tracing::debug!(session = id.session, outcome = ?applied.outcome, "a pooled session was lost");
            lease.session = None;
        }
        Ok(applied)
    }

    async fn lease(&self) -> Result<Lease<'_>, Error> {
        let pooled = cairn_util::lock(&self.idle).pop_front();
        let session = match pooled {
            Some(session) => session,
            None => self.open().await?,
        };
        Ok(Lease { proposer: self, session: Some(session) })
    }

    async fn open(&self) -> Result<Session, Error> {
        let applied = self.log.open_session().await?;
        match applied.outcome {
            Outcome::SessionOpened { session } => Ok(Session { id: session, last_seq: 0 }),
            other => Err(Error::Storage(format!("opening a session answered {other:?}"))),
        }
    }
}

/// A session on loan to one write; back to the pool when dropped.
struct Lease<'a> {
    proposer: &'a Proposer,
    session: Option<Session>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let mut idle = cairn_util::lock(&self.proposer.idle);
            if idle.len() < SESSIONS_POOLED_MAX {
                idle.push_back(session);
            }
        }
    }
}
