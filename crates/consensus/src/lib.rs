//! Cairn's log: what orders commands before the state machine applies them.
//!
//! The node talks to its log through a [`LogHandle`]: it proposes commands and
//! gets each one's [`Applied`] answer once the command is durable and applied
//! locally, waits for read barriers, and reads the log's published status. Whatever serves
//! that handle owns the [`StateMachine`] and is its
//! only writer.
//!
//! - [`local`]: the log of a single node. Commands are ordered by arrival,
//!   grouped (group commit) and applied in one synced batch; the batch that
//!   applies them is also what makes them durable.
//! - [`proposer`]: gives every write a `(session, seq)` id from a pool of
//!   sessions, so that a re-proposed write applies exactly once.
//! - [`replica`]: the IO-free wrapper around OmniPaxos: messages and ticks
//!   in, messages and decided entries out, lost proposals re-proposed.
//! - [`driver`]: the IO-free heart of a replicated node: the replica, the
//!   state machine, and the requests waiting for them (writes, sessions,
//!   linearizable reads through barrier entries).
//! - [`replicated`]: the thin event loop that serves a handle with a driver
//!   and the peer transport.
//!
//! Both logs serve the same handle, so the API above it does not change when
//! a node joins a cluster.

pub mod driver;
pub mod local;
pub mod membership;
pub mod proposer;
pub mod replica;
pub mod replicated;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use cairn_storage::{Applied, Command, StateMachine};
use tokio::sync::{mpsc, oneshot};

pub use local::LocalLog;
pub use membership::Membership;
pub use proposer::Proposer;

/// Room, beyond its payload, that a peer message takes: the message's enum
/// tag, its small fields as varints, and OmniPaxos' own fields around an
/// entry (ballot, indexes) with margin.
pub const PEER_MESSAGE_OVERHEAD_BYTES: usize = 4096;

// The limits agree: every log entry and every snapshot chunk fits one peer
// message, so nothing a node accepted can be stuck at the transport.
const _: () = assert!(
    cairn_storage::COMMAND_BYTES_MAX + PEER_MESSAGE_OVERHEAD_BYTES
        <= cairn_transport::MESSAGE_BYTES_MAX
);
const _: () = assert!(
    cairn_storage::snapshot::CHUNK_ENCODED_BYTES_MAX + PEER_MESSAGE_OVERHEAD_BYTES
        <= cairn_transport::MESSAGE_BYTES_MAX
);
const _: () = assert!(
    driver::FETCH_ENTRIES_BYTES_MAX
        + cairn_storage::COMMAND_BYTES_MAX
        + PEER_MESSAGE_OVERHEAD_BYTES
        <= cairn_transport::MESSAGE_BYTES_MAX
);

/// Errors of the log. Either way the node cannot serve until restarted, and a
/// write that got one may or may not have taken effect: the last batch may have
/// become durable before the log could answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The log stopped (shutdown or a storage fault): the node cannot serve.
    #[error("the log has stopped")]
    Stopped,
    /// The state machine failed to write: the node must restart from disk.
    #[error("storage fault: {0}")]
    Storage(String),
    /// This node cannot reach a quorum of its configuration, so nothing can be
    /// ordered through it now; the request was not proposed. Retry, here later
    /// or on another node.
    #[error("no quorum: {reason}")]
    Unavailable { reason: String },
    /// This node does not serve requests now (it is catching up from a
    /// peer, was removed from the cluster, or is switching logs); nothing
    /// was proposed. Retry, on another node when it was removed.
    #[error("not serving: {reason}")]
    NotServing { reason: String },
    /// Too many requests await their decision on this node; the request was
    /// not proposed. Retry later.
    #[error("busy: {reason}")]
    Busy { reason: String },
    /// The request cannot be carried out as asked (a membership that cannot
    /// be); nothing changed.
    #[error("{reason}")]
    Refused { reason: String },
    /// This node can no longer learn the outcome of a request it proposed
    /// (it left the cluster before seeing it decided): it may or may not
    /// have taken effect. Retry on another node; a write with an
    /// exactly-once id is safe to retry.
    #[error("outcome unknown: {reason}")]
    Orphaned { reason: String },
}

impl Error {
    /// Whether the request certainly did not take effect, so that a retry
    /// cannot apply it twice even without an exactly-once id.
    pub fn is_determinate(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::NotServing { .. }
                | Error::Busy { .. }
                | Error::Refused { .. }
        )
    }
}

/// The role of this node in its log's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
        }
    }
}

/// A snapshot of the log's progress.
#[derive(Clone, Debug)]
pub struct Status {
    pub node_id: u64,
    pub role: Role,
    /// The leader's node id, if one is known.
    pub leader: Option<u64>,
    pub configuration_id: u32,
    pub decided_index: u64,
    pub applied_index: u64,
    /// Compaction and catch-up so far (zero on a single node).
    pub catch_up: CatchUpStats,
    /// Why the node refuses new requests now (no quorum in sight, catching
    /// up, removed); `None` while it serves.
    pub not_serving: Option<Error>,
}

/// Counters of compaction and catch-up since the log started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CatchUpStats {
    /// Gaps filled, by either way.
    pub gaps_filled: u64,
    /// Entries applied from peers' logs.
    pub entries_fetched: u64,
    /// Snapshots installed from peers.
    pub snapshots_installed: u64,
    /// Snapshot transfers started for peers.
    pub snapshots_served: u64,
    /// Times the log was compacted.
    pub compactions: u64,
}

/// One node of the cluster as this node last heard of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node_id: u64,
    /// The node's HTTP API address, once it has told it.
    pub api_address: Option<String>,
    /// The node's peer (replication) address.
    pub peer_address: Option<String>,
    pub zone: Option<String>,
    pub version: Option<String>,
    pub role: Option<Role>,
    pub decided_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Whether this node heard from it recently (always true for itself).
    pub reachable: bool,
}

/// Requests from the node to its log.
pub(crate) enum Request {
    Propose {
        command: Command,
        reply: oneshot::Sender<Result<Applied, Error>>,
    },
    OpenSession {
        reply: oneshot::Sender<Result<Applied, Error>>,
    },
    ReadBarrier {
        reply: oneshot::Sender<Result<u64, Error>>,
    },
    ChangeMembership {
        members: BTreeMap<u64, SocketAddr>,
        reply: oneshot::Sender<Result<Membership, Error>>,
    },
}

/// What the log publishes for readers without a round trip to its loop.
pub(crate) struct Shared {
    status: Mutex<Status>,
    /// Every member of the configuration, this node included, in id order.
    members: Mutex<Vec<Member>>,
    /// The configuration this node is in (`None` for a node that never
    /// replicated).
    membership: Mutex<Option<Membership>>,
    /// Whether local state can lag acknowledged writes (a replica), so reads
    /// must wait for a barrier. A single node applies before it acknowledges.
    reads_need_barrier: AtomicBool,
    /// The peer transport, while the log is replicated: its counters are
    /// read for metrics.
    transport: Mutex<Option<cairn_transport::TransportHandle>>,
}

impl Shared {
    /// Updates the published status (called by the loop that owns the log).
    pub(crate) fn publish(&self, update: impl FnOnce(&mut Status)) {
        update(&mut cairn_util::lock(&self.status));
    }

    /// Replaces the published view of the members.
    pub(crate) fn publish_members(&self, members: Vec<Member>) {
        *cairn_util::lock(&self.members) = members;
    }

    pub(crate) fn publish_transport(&self, transport: Option<cairn_transport::TransportHandle>) {
        *cairn_util::lock(&self.transport) = transport;
    }

    pub(crate) fn publish_membership(&self, membership: Option<Membership>) {
        *cairn_util::lock(&self.membership) = membership;
    }

    pub(crate) fn set_reads_need_barrier(&self, need: bool) {
        self.reads_need_barrier.store(need, Ordering::Release);
    }
}

/// What a log that stopped for a change of kind hands to the next one: the
/// node's queue of requests, its published state, its state machine, and
/// the membership to continue in. A single node that gains members hands
/// over to the replicated log; a replica left alone hands over to the
/// single-node log. Requests keep flowing into the same queue meanwhile.
pub struct Handover {
    pub(crate) requests: mpsc::Receiver<Request>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sm: StateMachine,
    pub membership: Membership,
}

impl Handover {
    /// Whether the next log is the replicated one.
    pub fn replicated(&self) -> bool {
        self.membership.members.len() > 1
    }

    pub fn state_machine(&self) -> &StateMachine {
        &self.sm
    }
}

/// The thread that serves a log.
pub struct LogThread {
    thread: thread::JoinHandle<Option<Handover>>,
    stopped: Option<oneshot::Receiver<()>>,
}

impl LogThread {
    /// Runs `serve` on a thread of its own; [`stopped`](LogThread::stopped)
    /// completes when it returns.
    pub(crate) fn spawn(
        name: &str,
        serve: impl FnOnce() -> Option<Handover> + Send + 'static,
    ) -> std::io::Result<LogThread> {
        let (stopped_tx, stopped) = oneshot::channel::<()>();
        let thread = thread::Builder::new().name(name.into()).spawn(move || {
            let handover = serve();
            drop(stopped_tx);
            handover
        })?;
        Ok(LogThread { thread, stopped: Some(stopped) })
    }

    /// Completes when the log thread has exited: after the last handle is
    /// dropped, or at once after a storage fault.
    pub fn stopped(&mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let stopped = self.stopped.take();
        async move {
            if let Some(stopped) = stopped {
                let _ = stopped.await;
            }
        }
    }

    /// Waits for the log thread to exit: after every handle is gone (it
    /// finishes its last batch first), after a storage fault, or to hand
    /// over to the other kind of log, which it then answers.
    pub fn join(self) -> Option<Handover> {
        match self.thread.join() {
            Ok(handover) => handover,
            Err(_) => {
                tracing::error!("the log thread panicked");
                None
            }
        }
    }
}

/// How the node reaches its log. Cheap to clone; the log stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct LogHandle {
    requests: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

impl LogHandle {
    pub(crate) fn new(
        requests: mpsc::Sender<Request>,
        status: Status,
        reads_need_barrier: bool,
    ) -> LogHandle {
        let shared = Arc::new(Shared {
            status: Mutex::new(status),
            members: Mutex::new(Vec::new()),
            membership: Mutex::new(None),
            reads_need_barrier: AtomicBool::new(reads_need_barrier),
            transport: Mutex::new(None),
        });
        LogHandle { requests, shared }
    }

    /// Orders `command`, and answers once it is durable and applied here.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::Propose { command, reply }).await?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Opens a session for exactly-once writes through the log; the answer's
    /// outcome is `SessionOpened`.
    pub async fn open_session(&self) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::OpenSession { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// Completes once local reads see every write acknowledged before the call.
    pub async fn read_barrier(&self) -> Result<(), Error> {
        if !self.shared.reads_need_barrier.load(Ordering::Acquire) {
            return if self.requests.is_closed() { Err(Error::Stopped) } else { Ok(()) };
        }
        let (reply, answer) = oneshot::channel();
        self.send(Request::ReadBarrier { reply }).await?;
        answer.await.map_err(|_| Error::Stopped)?.map(|_| ())
    }

    /// The log's progress as last published; an error once it has stopped.
    /// The peer transport's counters, while the log is replicated.
    pub fn transport_stats(&self) -> Option<cairn_transport::Stats> {
        cairn_util::lock(&self.shared.transport).as_ref().map(|t| t.stats())
    }

    pub fn status(&self) -> Result<Status, Error> {
        if self.requests.is_closed() {
            return Err(Error::Stopped);
        }
        Ok(cairn_util::lock(&self.shared.status).clone())
    }

    /// Moves the cluster to `members` (every member's peer address, this
    /// node's included when it stays): answers with the new configuration
    /// once the change took effect here. One change at a time.
    pub async fn change_membership(
        &self,
        members: BTreeMap<u64, SocketAddr>,
    ) -> Result<Membership, Error> {
        let (reply, answer) = oneshot::channel();
        self.send(Request::ChangeMembership { members, reply }).await?;
        answer.await.map_err(|_| Error::Stopped)?
    }

    /// The configuration this node is in, as last published.
    pub fn membership(&self) -> Option<Membership> {
        cairn_util::lock(&self.shared.membership).clone()
    }

    /// The members of the configuration as last published (empty until the
    /// log publishes them).
    pub fn members(&self) -> Vec<Member> {
        cairn_util::lock(&self.shared.members).clone()
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    async fn send(&self, request: Request) -> Result<(), Error> {
        self.requests.send(request).await.map_err(|_| Error::Stopped)
    }
}
