//! The replicated log: the thin event loop that serves a [`LogHandle`] with a
//! [`Driver`] and the peer transport.
//!
//! One thread owns the driver (and so the replica and the state machine). It
//! runs a small single-threaded tokio runtime of its own, so that a synced
//! write in the driver stalls only this loop, never the HTTP server. Each turn
//! it waits for the first of: a request from the node, an event from the
//! transport, or the next tick; takes whatever else is already queued (up to a
//! bound); then polls the driver once, sends the messages it produced and
//! delivers its answers. Under load one turn carries many requests and
//! messages, and one apply batch.
//!
//! Messages are the driver's [`PeerMessage`]s, encoded with postcard: consensus,
//! each node's `Hello` (its API address, zone, version and progress, which make
//! up the cluster view of [`LogHandle::members`]), and catch-up requests.
//!
//! Everything here is plumbing: no decision is taken outside the driver, so a
//! simulator that drives [`Driver`] directly tests the logic this loop runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_storage::{Applied, StateMachine};
use cairn_transport::{Event, TransportHandle};
use tokio::sync::{mpsc, oneshot};

use crate::driver::Blocked;
use crate::driver::{Answer, Driver, DriverConfig, Output, PeerMessage, RequestId};
use crate::membership::Membership;
use crate::replica::NodeId;
use crate::{Error, Handover, LogHandle, LogThread, Request, Shared};

/// Requests that may wait for the loop before senders are slowed down.
pub const REQUESTS_QUEUED_MAX: usize = 8192;
/// Most requests, and most transport events, taken in one turn.
pub const TURN_INPUTS_MAX: usize = 1024;

/// Settings of the replicated log.
#[derive(Clone, Debug)]
pub struct ReplicatedConfig {
    pub driver: DriverConfig,
    /// The period of one tick of the replica.
    pub tick: Duration,
    /// How often, in ticks, the loop publishes the cluster view and looks for
    /// requests whose caller gave up.
    pub housekeeping_interval_ticks: u64,
}

/// Starts the replicated log over `sm` and a running transport; the loop
/// stops once every handle is dropped (or on a storage fault), or hands over
/// to the single-node log when a membership change leaves this node alone.
pub fn start(
    config: ReplicatedConfig,
    sm: StateMachine,
    transport: TransportHandle,
    events: mpsc::Receiver<Event>,
) -> Result<(LogThread, LogHandle), StartError> {
    let driver = Driver::open(config.driver.clone(), sm)?;
    let (tx, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
    let handle = LogHandle::new(tx, driver.status(), true);
    let shared = handle.shared();
    let thread = spawn(config, driver, shared, rx, transport, events)?;
    Ok((thread, handle))
}

/// Takes over from a single-node log that gained members: same queue of
/// requests, same published state. `config.driver.membership` must be the
/// handover's.
pub fn resume(
    config: ReplicatedConfig,
    handover: Handover,
    transport: TransportHandle,
    events: mpsc::Receiver<Event>,
) -> Result<LogThread, StartError> {
    let Handover { requests, shared, sm, .. } = handover;
    let driver = Driver::open(config.driver.clone(), sm)?;
    shared.set_reads_need_barrier(true);
    spawn(config, driver, shared, requests, transport, events)
}

fn spawn(
    config: ReplicatedConfig,
    driver: Driver,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Request>,
    transport: TransportHandle,
    events: mpsc::Receiver<Event>,
) -> Result<LogThread, StartError> {
    shared.publish_membership(Some(driver.membership().clone()));
    shared.publish_transport(Some(transport.clone()));
    let status = driver.status();
    shared.publish(|published| *published = status);
    LogThread::spawn("cairn-replica", move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the replica's runtime");
                return None;
            }
        };
        let event_loop = EventLoop {
            driver,
            transport,
            shared,
            config,
            replies: HashMap::new(),
            next_request: 0,
            out: Output::default(),
        };
        runtime.block_on(event_loop.run(requests, events))
    })
    .map_err(StartError::Thread)
}

/// Why the replicated log could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Replica(#[from] crate::replica::Error),
    #[error("cannot start the replica thread: {0}")]
    Thread(std::io::Error),
}

enum Reply {
    Write(oneshot::Sender<Result<Applied, Error>>),
    Read(oneshot::Sender<Result<u64, Error>>),
    Membership(oneshot::Sender<Result<Membership, Error>>),
}

impl Reply {
    fn is_closed(&self) -> bool {
        match self {
            Reply::Write(tx) => tx.is_closed(),
            Reply::Read(tx) => tx.is_closed(),
            Reply::Membership(tx) => tx.is_closed(),
        }
    }

    fn send(self, answer: Answer) {
        match (self, answer) {
            (Reply::Write(tx), Answer::Applied(applied)) => {
                let _ = tx.send(Ok(applied));
            }
            (Reply::Read(tx), Answer::ReadReady { index }) => {
                let _ = tx.send(Ok(index));
            }
            (Reply::Membership(tx), Answer::Reconfigured(membership)) => {
                let _ = tx.send(Ok(membership));
            }
            (Reply::Membership(tx), Answer::Failed(error)) => {
                let _ = tx.send(Err(error));
            }
            (Reply::Membership(tx), other) => {
                let _ = tx.send(Err(Error::Storage(format!(
                    "a membership change was answered {other:?}"
                ))));
            }
            (Reply::Write(tx), Answer::Failed(error)) => {
                let _ = tx.send(Err(error));
            }
            (Reply::Read(tx), Answer::Failed(error)) => {
                let _ = tx.send(Err(error));
            }
            (Reply::Write(tx), other) => {
                let _ = tx.send(Err(Error::Storage(format!("a write was answered {other:?}"))));
            }
            (Reply::Read(tx), other) => {
                let _ = tx.send(Err(Error::Storage(format!("a read was answered {other:?}"))));
            }
        }
    }
}

struct EventLoop {
    driver: Driver,
    transport: TransportHandle,
    shared: std::sync::Arc<Shared>,
    config: ReplicatedConfig,
    replies: HashMap<RequestId, Reply>,
    next_request: RequestId,
    out: Output,
}

impl EventLoop {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut events: mpsc::Receiver<Event>,
    ) -> Option<Handover> {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let housekeeping_every = self.config.housekeeping_interval_ticks.max(1);
        self.publish_members();
        loop {
            let mut fault = false;
            tokio::select! {
                biased;
                request = requests.recv() => match request {
                    Some(request) => self.request(request),
                    // Every handle is gone: the node is shutting down.
                    None => break,
                },
                event = events.recv() => match event {
                    Some(event) => fault |= self.event(event).is_err(),
                    None => {
                        tracing::info!("the transport stopped: the replica stops");
                        break;
                    }
                },
                _ = ticker.tick() => {
                    self.driver.tick();
                    if self.driver.now_ticks().is_multiple_of(housekeeping_every) {
                        self.sweep_abandoned();
                        self.publish_members();
                    }
                }
            }
            for _ in 0..TURN_INPUTS_MAX {
                match requests.try_recv() {
                    Ok(request) => self.request(request),
                    Err(_) => break,
                }
            }
            for _ in 0..TURN_INPUTS_MAX {
                match events.try_recv() {
                    Ok(event) => fault |= self.event(event).is_err(),
                    Err(_) => break,
                }
            }
            if self.flush().is_err() || fault {
                requests.close();
                // Answer whatever is still queued, then stop.
                while let Ok(request) = requests.try_recv() {
                    self.request(request);
                }
                let _ = self.flush();
                for (_, reply) in self.replies.drain() {
                    reply.send(Answer::Failed(Error::Stopped));
                }
                return None;
            }
            if let Some(Blocked::Alone { .. }) = self.driver.blocked() {
                return Some(self.hand_over(requests));
            }
        }
        for (_, reply) in self.replies.drain() {
            reply.send(Answer::Failed(Error::Stopped));
        }
        None
    }

    /// This node is alone in its new configuration: the single-node log
    /// takes over the same queue. Requests in flight here fail as
    /// unavailable (determinate: they were refused or are re-proposed by
    /// nobody; clients with exactly-once ids may retry).
    fn hand_over(mut self, requests: mpsc::Receiver<Request>) -> Handover {
        tracing::info!("alone in the new configuration: handing over to the single-node log");
        for (_, reply) in self.replies.drain() {
            let reason = "the node is switching to its single-node log; retry".to_string();
            reply.send(Answer::Failed(Error::NotServing { reason }));
        }
        let membership = self.driver.membership().clone();
        Handover { requests, shared: self.shared, sm: self.driver.into_state_machine(), membership }
    }

    fn request(&mut self, request: Request) {
        let id = self.next_request;
        self.next_request += 1;
        match request {
            Request::Propose { command, reply } => {
                self.replies.insert(id, Reply::Write(reply));
                self.driver.propose(id, command, &mut self.out);
            }
            Request::OpenSession { reply } => {
                self.replies.insert(id, Reply::Write(reply));
                self.driver.open_session(id, &mut self.out);
            }
            Request::ReadBarrier { reply } => {
                self.replies.insert(id, Reply::Read(reply));
                self.driver.read(id, &mut self.out);
            }
            Request::ChangeMembership { members, reply } => {
                self.replies.insert(id, Reply::Membership(reply));
                self.driver.change_membership(id, members, &mut self.out);
            }
        }
    }

    fn event(&mut self, event: Event) -> Result<(), Error> {
        match event {
            Event::Message { from, msg } => match PeerMessage::decode(&msg) {
                Ok(message) => return self.driver.step(from, message),
                Err(error) => {
                    tracing::warn!(from, %error, "dropped a message that does not decode")
                }
            },
            Event::Connected { peer } => self.driver.reconnected(peer),
            Event::Disconnected { .. } => {}
        }
        Ok(())
    }

    /// Polls the driver, sends its messages and delivers its answers: what
    /// may leave before the turn's sync leaves first, so peers and clients
    /// work while this node syncs.
    fn flush(&mut self) -> Result<(), Error> {
        let result = self.driver.prepare(&mut self.out);
        self.deliver();
        let result = result.and_then(|()| self.driver.commit(&mut self.out));
        self.deliver();
        if let Some(membership) = self.out.membership.take() {
            let me = self.driver.status().node_id;
            if let Err(error) = self.transport.set_peers(membership.peers_of(me)) {
                tracing::error!(%error, "cannot reach the new configuration's peers");
            }
            self.shared.publish_membership(Some(membership));
            self.publish_members();
        }
        let status = self.driver.status();
        self.shared.publish(|published| *published = status);
        result
    }

    /// Sends the messages and delivers the answers in `out`.
    fn deliver(&mut self) {
        for (to, message) in self.out.messages.drain(..) {
            send(&self.transport, to, &message);
        }
        for (id, answer) in self.out.answers.drain(..) {
            if let Some(reply) = self.replies.remove(&id) {
                reply.send(answer);
            }
        }
    }

    /// Cancels the requests whose caller stopped waiting (a timeout, a client
    /// that hung up), so their commands are no longer re-proposed.
    fn sweep_abandoned(&mut self) {
        let abandoned: Vec<RequestId> =
            self.replies.iter().filter(|(_, reply)| reply.is_closed()).map(|(id, _)| *id).collect();
        for id in abandoned {
            self.replies.remove(&id);
            self.driver.cancel(id);
        }
    }

    fn publish_members(&self) {
        self.shared.publish_members(self.driver.members());
    }
}

/// Encodes and sends one message; a message the transport drops is left to
/// consensus to make up for. OmniPaxos makes up for lost messages only when
/// it is told the link came back (`reconnected`), so a message dropped from
/// a full queue while the connection is up breaks that connection: both ends
/// then see it come back and resynchronise, and no gap goes unnoticed in the
/// middle of a stream (the simulator shows what such a gap does).
fn send(transport: &TransportHandle, to: NodeId, message: &PeerMessage) {
    let bytes = match message.encode() {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(%error, "a message does not encode");
            return;
        }
    };
    match transport.send(to, Bytes::from(bytes)) {
        Ok(()) => {}
        Err(cairn_transport::Error::QueueFull { .. }) => {
            if transport.disconnect(to) {
                tracing::warn!(to, "the queue to a peer overflowed: reconnecting to resynchronise");
            }
        }
        Err(error @ cairn_transport::Error::MessageTooLarge { .. }) => {
            // The limits keep every entry and chunk under a message: this is
            // a bug, or a batch OmniPaxos made of many large entries.
            tracing::warn!(to, %error, "a message too large for the transport was dropped");
        }
        Err(error) => tracing::trace!(to, %error, "a message was dropped"),
    }
}
