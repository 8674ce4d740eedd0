//! Starting a transport, the handle the node holds, the acceptor, and changes
//! of membership.
//!
//! The handle keeps a registry of peers: for each, its address, its
//! `Peer` state (queue, connection slot) and its link task. Sending looks
//! the peer up and pushes onto its queue; nothing on that path waits on the
//! network. The acceptor checks the handshake of every incoming connection and
//! hands it to the link of the peer it claims to be.
//!
//! Invariants:
//! - The registry holds exactly the configured peers, each with one running
//!   link; a removed peer's link is cancelled and its queue closed at once.
//! - An incoming connection is handed to a link only after its HELLO names
//!   this cluster, this node, and a configured peer with a lower id (the lower
//!   id dials); otherwise it is closed, logged and counted.
//! - At most [`HANDSHAKES_IN_FLIGHT_MAX`] incoming connections wait for their
//!   handshake, at most [`HANDSHAKES_PER_ADDRESS_MAX`] of them from one IP
//!   address, each for at most the handshake timeout.
//! - Cancelling the root token (shutdown, or dropping the last handle) stops
//!   every task; nothing outlives the transport for longer than it takes a
//!   task to notice.
//!
//! It does not read, order or retry messages: links do.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{validate_peers, TransportConfig};
use crate::frame::{Frame, FrameCodec, Handshake};
use crate::link::{Conn, Context, Link, Peer, Role};
use crate::queue::Refused;
use crate::stats::{Counters, Stats};
use crate::stream::Stream;
use crate::{lock, Error};

/// Incoming connections that may be in their handshake at once; more are
/// closed on accept. Peers are few, so only strangers ever reach this.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 64;
/// Of those, how many may come from one IP address, so that idle sockets
/// from one stranger cannot fill the pool and keep the real peers out.
/// Every member of a cluster on one machine shares an address: this leaves
/// room for all of them (a configuration has at most 9 members) to reconnect
/// at once.
pub const HANDSHAKES_PER_ADDRESS_MAX: usize = 16;
/// Pending connections the kernel holds for the listener.
const LISTEN_BACKLOG: u32 = 128;
/// Pause after a failed accept (out of file descriptors, say), so the loop
/// does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE_MS: u64 = 100;

/// What the transport tells the node, in order per peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message from a peer, as the peer sent it.
    Message { from: u64, msg: Bytes },
    /// A connection to the peer was established, first or again. Consensus
    /// should call `reconnected(peer)`: messages may have been lost.
    Connected { peer: u64 },
    /// The connection to the peer ended. The transport reconnects by itself
    /// while the peer stays configured.
    Disconnected { peer: u64 },
}

/// Starts transports.
#[derive(Debug)]
pub struct Transport;

impl Transport {
    /// Binds `config.listen`, starts a link to every peer and the acceptor,
    /// and returns the handle and the receiver of events. Messages to peers
    /// can be sent at once: they wait in the queue until the connection is
    /// up. Must run inside a tokio runtime.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(TransportHandle, mpsc::Receiver<Event>), Error> {
        config.validate()?;
        let listener = bind(config.listen)?;
        let local_addr =
            listener.local_addr().map_err(|source| Error::Bind { addr: config.listen, source })?;
        let (events, receiver) = mpsc::channel(config.limits.inbound_events_max);
        let shared = Arc::new(Shared {
            ctx: Arc::new(Context {
                node_id: config.node_id,
                cluster_id: config.cluster_id,
                limits: config.limits,
                counters: Counters::default(),
                tls: config.tls.clone(),
            }),
            registry: Mutex::new(Registry {
                peers: BTreeMap::new(),
                events: Some(events),
                retired: BTreeMap::new(),
            }),
            cancel: CancellationToken::new(),
            runtime: tokio::runtime::Handle::current(),
            local_addr,
        });
        let acceptor = tokio::spawn(accept_loop(shared.clone(), listener));
        let handle = TransportHandle {
            inner: Arc::new(HandleInner { shared, acceptor: Mutex::new(Some(acceptor)) }),
        };
        handle.set_peers(config.peers)?;
        info!(node = config.node_id, %local_addr, "transport listening");
        Ok((handle, receiver))
    }
}

/// The node's handle on its transport. Cheap to clone; when the last clone
/// is dropped, the transport stops (as with [`TransportHandle::shutdown`],
/// without waiting).
#[derive(Debug, Clone)]
pub struct TransportHandle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
    }
}

#[derive(Debug)]
struct Shared {
    ctx: Arc<Context>,
    registry: Mutex<Registry>,
    /// The root of every task's cancellation.
    cancel: CancellationToken,
    /// Where links are spawned, so membership can change from any thread.
    runtime: tokio::runtime::Handle,
    local_addr: SocketAddr,
}

#[derive(Debug)]
struct Registry {
    peers: BTreeMap<u64, PeerEntry>,
    /// Cloned into every link; `None` once shut down, so that the receiver
    /// ends when the last link has stopped.
    events: Option<mpsc::Sender<Event>>,
    /// The last link of each removed peer, perhaps still stopping. A link
    /// started for the same peer waits for it, so the old link's last
    /// `Disconnected` cannot follow the new link's `Connected`.
    retired: BTreeMap<u64, JoinHandle<()>>,
}

#[derive(Debug)]
struct PeerEntry {
    addr: SocketAddr,
    peer: Arc<Peer>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Shared {
    fn registry(&self) -> MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    fn peer(&self, id: u64) -> Option<Arc<Peer>> {
        self.registry().peers.get(&id).map(|e| e.peer.clone())
    }

    fn drop_messages(&self, n: usize) {
        Counters::add(&self.ctx.counters.messages_dropped, n as u64);
    }
}

impl TransportHandle {
    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.inner.shared.ctx.node_id
    }

    /// The address the listener is bound to (the real port when the
    /// configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.shared.local_addr
    }

    /// Queues `msg` for peer `to` and returns at once. A message that cannot
    /// be queued is dropped and counted, and the error says why; consensus
    /// may ignore it, as it tolerates loss. Messages to a peer that is not
    /// connected wait in its queue (within its bounds) and go out when the
    /// connection comes up.
    pub fn send(&self, to: u64, msg: Bytes) -> Result<(), Error> {
        let shared = &self.inner.shared;
        let size_bytes = msg.len();
        let refused = if shared.cancel.is_cancelled() {
            Error::ShutDown
        } else {
            let Some(peer) = shared.peer(to) else {
                shared.drop_messages(1);
                return Err(Error::UnknownPeer { peer: to });
            };
            match peer.queue.push(msg) {
                Ok(()) => return Ok(()),
                Err(Refused::Full) => Error::QueueFull { peer: to },
                Err(Refused::Closed) => Error::UnknownPeer { peer: to },
                Err(Refused::TooLarge) => {
                    Counters::add(&shared.ctx.counters.messages_too_large, 1);
                    Error::MessageTooLarge { size_bytes, size_bytes_max: crate::MESSAGE_BYTES_MAX }
                }
            }
        };
        shared.drop_messages(1);
        Err(refused)
    }

    /// Replaces the set of peers: links start to new peers, and links to
    /// removed peers (or to dialed peers whose address changed) stop, their
    /// connections closed and their queued messages dropped.
    pub fn set_peers(&self, peers: BTreeMap<u64, SocketAddr>) -> Result<(), Error> {
        let shared = &self.inner.shared;
        validate_peers(shared.ctx.node_id, &peers)?;
        let mut registry = shared.registry();
        let Some(events) = registry.events.clone() else {
            return Err(Error::ShutDown);
        };
        let stale: Vec<u64> = registry
            .peers
            .iter()
            .filter(|(id, entry)| match peers.get(id) {
                None => true,
                // Only the dialing side cares where the peer listens.
                Some(addr) => *addr != entry.addr && self.role(**id, *addr).is_dial(),
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(entry) = registry.peers.remove(&id) {
                entry.cancel.cancel();
                shared.drop_messages(entry.peer.queue.close());
                registry.retired.insert(id, entry.task);
                info!(node = shared.ctx.node_id, peer = id, "peer removed");
            }
        }
        registry.retired.retain(|_, task| !task.is_finished());
        for (id, addr) in peers {
            if let Some(entry) = registry.peers.get_mut(&id) {
                entry.addr = addr;
                continue;
            }
            let predecessor = registry.retired.remove(&id);
            let entry = self.spawn_link(id, addr, events.clone(), predecessor);
            registry.peers.insert(id, entry);
        }
        Ok(())
    }

    fn role(&self, peer: u64, addr: SocketAddr) -> Role {
        if self.node_id() < peer {
            Role::Dial(addr)
        } else {
            Role::Accept
        }
    }

    fn spawn_link(
        &self,
        id: u64,
        addr: SocketAddr,
        events: mpsc::Sender<Event>,
        predecessor: Option<JoinHandle<()>>,
    ) -> PeerEntry {
        let shared = &self.inner.shared;
        let peer = Arc::new(Peer::new(id, &shared.ctx.limits));
        let cancel = shared.cancel.child_token();
        let link = Link {
            ctx: shared.ctx.clone(),
            peer: peer.clone(),
            role: self.role(id, addr),
            events,
            cancel: cancel.clone(),
            predecessor,
        };
        let task = shared.runtime.spawn(link.run());
        PeerEntry { addr, peer, cancel, task }
    }

    /// The configured peers and their addresses.
    pub fn peers(&self) -> BTreeMap<u64, SocketAddr> {
        let registry = self.inner.shared.registry();
        registry.peers.iter().map(|(id, e)| (*id, e.addr)).collect()
    }

    /// Whether a connection to `peer` is up now.
    pub fn is_connected(&self, peer: u64) -> bool {
        self.inner.shared.peer(peer).is_some_and(|p| p.is_connected())
    }

    /// Fault injection: cuts the connection to `peer` as a network failure
    /// would. The link reconnects as usual. Returns whether a connection was
    /// up to cut.
    pub fn disconnect(&self, peer: u64) -> bool {
        self.inner.shared.peer(peer).is_some_and(|p| p.sever())
    }

    /// The counters, now.
    pub fn stats(&self) -> Stats {
        let shared = &self.inner.shared;
        let queued: usize = shared.registry().peers.values().map(|e| e.peer.queue.len()).sum();
        shared.ctx.counters.snapshot(queued as u64)
    }

    /// Stops every task and waits for them: connections close, the listener
    /// is released, queued messages are dropped, and the event receiver ends
    /// once drained. Later sends answer [`Error::ShutDown`].
    pub async fn shutdown(&self) {
        let shared = &self.inner.shared;
        shared.cancel.cancel();
        let tasks: Vec<JoinHandle<()>> = {
            let mut registry = shared.registry();
            registry.events = None;
            let peers = std::mem::take(&mut registry.peers);
            let mut tasks: Vec<_> = std::mem::take(&mut registry.retired).into_values().collect();
            for entry in peers.into_values() {
                shared.drop_messages(entry.peer.queue.close());
                tasks.push(entry.task);
            }
            tasks
        };
        let acceptor = lock(&self.inner.acceptor).take();
        for task in acceptor.into_iter().chain(tasks) {
            // A task that panicked has stopped all the same.
            let _ = task.await;
        }
        debug!(node = shared.ctx.node_id, "transport stopped");
    }
}

/// Binds with SO_REUSEADDR, so a restarted node gets its port back at once
/// even while connections of its previous run linger in TIME_WAIT.
fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    let bind_error = |source| Error::Bind { addr, source };
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(bind_error)?;
    socket.set_reuseaddr(true).map_err(bind_error)?;
    socket.bind(addr).map_err(bind_error)?;
    socket.listen(LISTEN_BACKLOG).map_err(bind_error)
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut handshakes = JoinSet::new();
    // Handshakes in flight by remote address, and the address of each task.
    let mut per_address: HashMap<IpAddr, usize> = HashMap::new();
    let mut task_address: HashMap<tokio::task::Id, IpAddr> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            Some(done) = handshakes.join_next_with_id(), if !handshakes.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(error) => error.id(),
                };
                if let Some(ip) = task_address.remove(&id) {
                    if let Some(count) = per_address.get_mut(&ip) {
                        *count -= 1;
                        if *count == 0 {
                            per_address.remove(&ip);
                        }
                    }
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let from_here = per_address.get(&remote.ip()).copied().unwrap_or(0);
                    let refusal = if handshakes.len() >= HANDSHAKES_IN_FLIGHT_MAX {
                        Some("too many handshakes in flight")
                    } else if from_here >= HANDSHAKES_PER_ADDRESS_MAX {
                        Some("too many handshakes in flight from its address")
                    } else {
                        None
                    };
                    match refusal {
                        None => {
                            let task = handshakes.spawn(accept_one(shared.clone(), stream, remote));
                            task_address.insert(task.id(), remote.ip());
                            *per_address.entry(remote.ip()).or_default() += 1;
                        }
                        Some(reason) => {
                            drop(stream);
                            Counters::add(&shared.ctx.counters.connections_rejected, 1);
                            warn!(node = shared.ctx.node_id, %remote, "{reason}; connection closed");
                        }
                    }
                }
                Err(e) => {
                    warn!(node = shared.ctx.node_id, "accept failed: {e}");
                    tokio::select! {
                        _ = shared.cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)) => {}
                    }
                }
            },
        }
    }
    handshakes.shutdown().await;
}

/// Runs the handshake of one incoming connection and hands it to its link,
/// or closes it with a log line.
async fn accept_one(shared: Arc<Shared>, stream: TcpStream, remote: SocketAddr) {
    let ctx = &shared.ctx;
    let outcome = timeout(ctx.limits.handshake_timeout(), accept_handshake(&shared, stream))
        .await
        .unwrap_or_else(|_| {
            Err(Error::handshake(format!(
                "no handshake within {} ms",
                ctx.limits.handshake_timeout_ms
            )))
        });
    match outcome {
        Ok((peer, conn)) => {
            debug!(node = ctx.node_id, peer = peer.id, %remote, "accepted connection");
            peer.offer(conn);
        }
        Err(e) => {
            Counters::add(&ctx.counters.connections_rejected, 1);
            warn!(node = ctx.node_id, %remote, "refused incoming connection: {e}");
        }
    }
}

async fn accept_handshake(shared: &Shared, stream: TcpStream) -> Result<(Arc<Peer>, Conn), Error> {
    let ctx = &shared.ctx;
    stream.set_nodelay(true)?;
    let (stream, certificates) = match &ctx.tls {
        None => (Stream::Plain(stream), None),
        // The dialer's certificate must be the CA's; which node it names is
        // checked against the HELLO below.
        Some(tls) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
            let stream = acceptor
                .accept(stream)
                .await
                .map_err(|e| Error::handshake(format!("TLS failed: {e}")))?;
            let certificates: Vec<_> = stream
                .get_ref()
                .1
                .peer_certificates()
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into_owned())
                .collect();
            (Stream::Tls(Box::new(stream.into())), Some(certificates))
        }
    };
    let mut conn = Framed::new(stream, FrameCodec::new());
    let hello = match conn.next().await.transpose()? {
        Some(Frame::Hello(hello)) => hello,
        Some(other) => return Err(Error::handshake(format!("expected HELLO, got {other:?}"))),
        None => return Err(Error::handshake("closed before its handshake")),
    };
    if hello.cluster_id != ctx.cluster_id {
        return Err(Error::handshake(format!(
            "node {} is in cluster {}, this node in cluster {}",
            hello.from, hello.cluster_id, ctx.cluster_id
        )));
    }
    if hello.to != ctx.node_id {
        return Err(Error::handshake(format!(
            "node {} dialed node {}, but this is node {}",
            hello.from, hello.to, ctx.node_id
        )));
    }
    if hello.from >= ctx.node_id {
        return Err(Error::handshake(format!(
            "node {} must not dial node {}: the lower id dials",
            hello.from, ctx.node_id
        )));
    }
    if let Some(certificates) = &certificates {
        cairn_tls::check_peer_id(certificates, hello.from).map_err(|reason| {
            Error::handshake(format!("a peer claiming to be node {}: {reason}", hello.from))
        })?;
    }
    let Some(peer) = shared.peer(hello.from) else {
        return Err(Error::handshake(format!("node {} is not a configured peer", hello.from)));
    };
    let ack = Handshake { cluster_id: ctx.cluster_id, from: ctx.node_id, to: hello.from };
    conn.send(Frame::Ack(ack)).await?;
    conn.codec_mut().establish();
    Ok((peer, conn))
}
