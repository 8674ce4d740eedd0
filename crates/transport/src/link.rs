//! The link to one peer: a task that owns the peer's connection from dial (or
//! accept) to close, and again after every reconnection, until the peer is
//! removed or the transport stops.
//!
//! ```text
//!            ┌──────────── backoff ◄───────────┐
//!            ▼                                 │ (dialing side)
//!   dial / wait for accept ──► Connected ──► serve ──► Disconnected
//!                                              │ newest connection wins
//!                                              └──► Connected ...  (accepting side)
//! ```
//!
//! The lower id of a pair dials; the higher id waits for the acceptor to hand
//! it a connection that passed the handshake. Serving a connection runs its
//! reader and writer side by side, so a node blocked writing to a peer still
//! reads from it (two nodes writing to each other never deadlock).
//!
//! Invariants:
//! - At most one connection per peer is served at a time; the link is the only
//!   emitter of this peer's events, so they come in order: `Connected`, the
//!   messages read on that connection, then `Disconnected`.
//! - The dialing side retries forever, with a growing jittered delay, while
//!   the peer stays configured. The delay resets once a connection has lasted
//!   as long as the longest delay.
//! - An established connection that is silent for the idle timeout is closed:
//!   a paused peer or a silent partition ends in `Disconnected`, and the
//!   reconnection after it in `Connected`, which is when consensus must call
//!   `reconnected(pid)`.
//!
//! It does not decide who is a peer (the transport does) and does not check
//! incoming handshakes (the acceptor does).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use cairn_util::Backoff;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::codec::{Framed, FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::frame::{Frame, FrameCodec, Handshake};
use crate::queue::OutboundQueue;
use crate::stats::{Counters, InFlight};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::transport::Event;
use crate::{lock, Error};

/// An established, framed connection.
pub(crate) type Conn = Framed<Stream, FrameCodec>;

/// What all links and the acceptor of one transport share.
#[derive(Debug)]
pub(crate) struct Context {
    pub node_id: u64,
    pub cluster_id: u64,
    pub limits: Limits,
    pub counters: Counters,
    /// Mutual TLS with the cluster's CA; `None` runs plain TCP (insecure).
    pub tls: Option<cairn_tls::PeerTls>,
}

/// The state of one peer that outlives its connections.
#[derive(Debug)]
pub(crate) struct Peer {
    pub id: u64,
    pub queue: OutboundQueue,
    /// A connection the acceptor took for this peer, waiting for the link. A
    /// newer one replaces (and so closes) an older one not yet picked up.
    incoming: Mutex<Option<Conn>>,
    incoming_ready: Notify,
    /// Cuts the connection being served; `None` while there is none.
    current: Mutex<Option<CancellationToken>>,
}

impl Peer {
    pub fn new(id: u64, limits: &Limits) -> Peer {
        Peer {
            id,
            queue: OutboundQueue::new(limits.queue_messages_max, limits.queue_bytes_max),
            incoming: Mutex::new(None),
            incoming_ready: Notify::new(),
            current: Mutex::new(None),
        }
    }

    /// Hands an accepted connection to the link.
    pub fn offer(&self, conn: Conn) {
        *lock(&self.incoming) = Some(conn);
        self.incoming_ready.notify_one();
    }

    /// Waits for an accepted connection. Cancel-safe.
    async fn next_incoming(&self) -> Conn {
        loop {
            if let Some(conn) = lock(&self.incoming).take() {
                return conn;
            }
            self.incoming_ready.notified().await;
        }
    }

    /// Whether a connection to the peer is being served.
    pub fn is_connected(&self) -> bool {
        lock(&self.current).is_some()
    }

    /// Cuts the connection being served, if any; the link then reconnects as
    /// after any other break.
    pub fn sever(&self) -> bool {
        match lock(&self.current).take() {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }
}

/// How a link gets its connections.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// This node has the lower id: it dials the peer here.
    Dial(SocketAddr),
    /// This node has the higher id: the peer dials in.
    Accept,
}

impl Role {
    pub fn is_dial(&self) -> bool {
        matches!(self, Role::Dial(_))
    }
}

/// The link was told to stop, or nobody listens to its events any more.
struct Stopped;

/// Why serving a connection ended.
enum Ended {
    Stopped,
    ReceiverGone,
    Severed,
    Replaced(Conn),
    Closed,
    Idle,
    Failed(Error),
}

/// The task of one peer.
pub(crate) struct Link {
    pub ctx: Arc<Context>,
    pub peer: Arc<Peer>,
    pub role: Role,
    pub events: mpsc::Sender<Event>,
    /// Cancelled when the peer is removed or the transport stops.
    pub cancel: CancellationToken,
    /// The previous link of the same peer (removed, then added again), which
    /// must finish before this one emits anything.
    pub predecessor: Option<JoinHandle<()>>,
}

impl Link {
    /// Runs until stopped; then discards (and counts) what is still queued.
    pub async fn run(mut self) {
        if let Some(predecessor) = self.predecessor.take() {
            // It was cancelled already; a panic in it has stopped it too.
            let _ = predecessor.await;
        }
        // The same pair always draws the same delays; no global generator.
        let seed = (self.ctx.node_id << 32) ^ self.peer.id;
        let limits = &self.ctx.limits;
        let backoff =
            Backoff::new(limits.backoff_initial_ms, limits.backoff_max_ms).with_jitter(seed);
        let _ = self.connect_forever(backoff).await;
        lock(&self.peer.current).take();
        let discarded = self.peer.queue.close();
        Counters::add(&self.ctx.counters.messages_dropped, discarded as u64);
        debug!(node = self.ctx.node_id, peer = self.peer.id, discarded, "link stopped");
    }

    async fn connect_forever(&self, mut backoff: Backoff) -> Result<(), Stopped> {
        let (node, peer) = (self.ctx.node_id, self.peer.id);
        let mut next: Option<Conn> = None;
        let mut connected_before = false;
        let mut dial_after_delay = false;
        loop {
            let conn = match (next.take(), self.role) {
                (Some(conn), _) => conn,
                (None, Role::Accept) => self.until_stopped(self.peer.next_incoming()).await?,
                (None, Role::Dial(addr)) => self.dial(addr, &mut backoff, dial_after_delay).await?,
            };
            dial_after_delay = true;
            let connected_at = Instant::now();
            let token = self.cancel.child_token();
            *lock(&self.peer.current) = Some(token.clone());
            Counters::add(&self.ctx.counters.connections, 1);
            if connected_before {
                Counters::add(&self.ctx.counters.reconnects, 1);
            }
            connected_before = true;
            info!(node, peer, "connected");
            self.emit(Event::Connected { peer }).await?;

            let ended = self.serve(conn, &token).await;
            lock(&self.peer.current).take();
            // Only a connection that lasted counts as success: one that
            // breaks at once keeps the redial delay growing, so a flapping
            // peer is not redialed at full speed.
            if connected_at.elapsed() >= Duration::from_millis(self.ctx.limits.backoff_max_ms) {
                backoff.reset();
            }
            match ended {
                Ended::Stopped | Ended::ReceiverGone => {
                    // Best effort: the receiver may be gone or full, and the
                    // link must stop now rather than wait for room.
                    let _ = self.events.try_send(Event::Disconnected { peer });
                    return Err(Stopped);
                }
                Ended::Severed => info!(node, peer, "disconnected on request"),
                Ended::Replaced(conn) => {
                    info!(node, peer, "a newer connection from the peer replaces this one");
                    next = Some(conn);
                }
                Ended::Closed => info!(node, peer, "peer closed the connection"),
                Ended::Idle => warn!(
                    node,
                    peer,
                    idle_timeout_ms = self.ctx.limits.idle_timeout_ms,
                    "peer silent past the idle timeout; closing"
                ),
                Ended::Failed(e) => {
                    if matches!(e, Error::Protocol { .. } | Error::Handshake { .. }) {
                        Counters::add(&self.ctx.counters.connections_rejected, 1);
                    }
                    warn!(node, peer, "connection failed: {e}");
                }
            }
            self.emit(Event::Disconnected { peer }).await?;
        }
    }

    /// Dials until a handshake passes, waiting a backoff delay before every
    /// attempt but a first one.
    async fn dial(
        &self,
        addr: SocketAddr,
        backoff: &mut Backoff,
        mut after_delay: bool,
    ) -> Result<Conn, Stopped> {
        let (node, peer) = (self.ctx.node_id, self.peer.id);
        let mut failures: u64 = 0;
        loop {
            if after_delay {
                let delay = Duration::from_millis(backoff.next_delay_ms());
                self.until_stopped(tokio::time::sleep(delay)).await?;
            }
            after_delay = true;
            match self.until_stopped(dial_once(&self.ctx, peer, addr)).await? {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    failures += 1;
                    if matches!(e, Error::Handshake { .. } | Error::Protocol { .. }) {
                        Counters::add(&self.ctx.counters.connections_rejected, 1);
                        warn!(node, peer, %addr, "handshake with peer failed: {e}");
                    } else if failures == 1 {
                        info!(node, peer, %addr, "cannot reach peer, will keep trying: {e}");
                    } else {
                        debug!(node, peer, %addr, failures, "cannot reach peer: {e}");
                    }
                }
            }
        }
    }

    /// Serves one connection until it ends, is cut, or is replaced.
    async fn serve(&self, conn: Conn, token: &CancellationToken) -> Ended {
        let accepting = matches!(self.role, Role::Accept);
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Ended::Stopped,
            _ = token.cancelled() => Ended::Severed,
            conn = self.peer.next_incoming(), if accepting => Ended::Replaced(conn),
            ended = self.run_connection(conn) => ended,
        }
    }

    async fn run_connection(&self, conn: Conn) -> Ended {
        let parts = conn.into_parts();
        // Every write of the handshake was flushed.
        assert!(parts.write_buf.is_empty(), "unflushed handshake bytes");
        let (read_half, write_half) = parts.io.split();
        let mut reader = FramedRead::new(Counted::new(read_half), parts.codec);
        // Frames the peer sent right behind its handshake are already here.
        *reader.read_buffer_mut() = parts.read_buf;
        let mut codec = FrameCodec::new();
        codec.establish();
        let writer = FramedWrite::new(write_half, codec);
        tokio::select! {
            ended = self.write_loop(writer) => ended,
            ended = self.read_loop(reader) => ended,
        }
    }

    /// Drains the queue in batches, one frame each; pings when idle.
    async fn write_loop(&self, mut writer: FramedWrite<WriteHalf, FrameCodec>) -> Ended {
        let limits = &self.ctx.limits;
        loop {
            let taken = timeout(
                limits.heartbeat_interval(),
                self.peer.queue.take_batch(limits.batch_bytes_max),
            )
            .await;
            let Ok(batch) = taken else {
                if let Err(e) = writer.send(Frame::Ping).await {
                    return Ended::Failed(e);
                }
                continue;
            };
            let in_flight = InFlight::new(&self.ctx.counters, batch.len());
            if let Err(e) = writer.send(Frame::Batch(batch)).await {
                return Ended::Failed(e);
            }
            in_flight.sent();
        }
    }

    /// Delivers every message read, in order; waits when the receiver is
    /// full, which stops reading and lets TCP push back on the peer.
    async fn read_loop(&self, mut reader: Reader) -> Ended {
        let counters = &self.ctx.counters;
        loop {
            let frame = match next_frame(&mut reader, self.ctx.limits.idle_timeout()).await {
                None => return Ended::Idle,
                Some(None) => return Ended::Closed,
                Some(Some(Err(e))) => return Ended::Failed(e),
                Some(Some(Ok(frame))) => frame,
            };
            let messages = match frame {
                Frame::Batch(messages) => messages,
                Frame::Ping => continue,
                Frame::Hello(_) | Frame::Ack(_) => {
                    return Ended::Failed(Error::protocol(
                        "handshake frame on an established connection",
                    ))
                }
            };
            // Counted on arrival, so an event never outruns its count.
            Counters::add(&counters.frames_received, 1);
            Counters::add(&counters.messages_received, messages.len() as u64);
            for msg in messages {
                let event = Event::Message { from: self.peer.id, msg };
                if self.events.send(event).await.is_err() {
                    return Ended::ReceiverGone;
                }
            }
        }
    }

    async fn emit(&self, event: Event) -> Result<(), Stopped> {
        match self.until_stopped(self.events.send(event)).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(Stopped),
        }
    }

    /// Runs `work` unless the link is stopped first.
    async fn until_stopped<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Stopped> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Stopped),
            out = work => Ok(out),
        }
    }
}

/// The reading half of an established connection.
type Reader = FramedRead<Counted<ReadHalf>, FrameCodec>;

/// The next frame, or `None` when nothing at all arrived for `idle`. A large
/// frame may take longer than `idle` to arrive: while its bytes keep coming,
/// the connection is not idle.
async fn next_frame(reader: &mut Reader, idle: Duration) -> Option<Option<Result<Frame, Error>>> {
    let mut bytes_read = reader.get_ref().bytes_read;
    loop {
        tokio::select! {
            // Cancel-safe: bytes read stay in the reader's buffer.
            frame = reader.next() => return Some(frame),
            _ = tokio::time::sleep(idle) => {
                let now = reader.get_ref().bytes_read;
                if now == bytes_read {
                    return None;
                }
                bytes_read = now;
            }
        }
    }
}

/// A reader that counts the bytes it delivers, so that a silent peer can be
/// told from a slow frame.
struct Counted<R> {
    inner: R,
    bytes_read: u64,
}

impl<R> Counted<R> {
    fn new(inner: R) -> Counted<R> {
        Counted { inner, bytes_read: 0 }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.bytes_read += (buf.filled().len() - before) as u64;
        poll
    }
}

/// One attempt: connect, send HELLO, expect the peer's ACK.
async fn dial_once(ctx: &Context, peer: u64, addr: SocketAddr) -> Result<Conn, Error> {
    let stream =
        timeout(ctx.limits.connect_timeout(), TcpStream::connect(addr)).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connect timed out after {} ms", ctx.limits.connect_timeout_ms),
            )
        })??;
    // Batching is done here; Nagle would only add latency to each frame.
    stream.set_nodelay(true)?;
    let hello = Handshake { cluster_id: ctx.cluster_id, from: ctx.node_id, to: peer };
    let answer = timeout(ctx.limits.handshake_timeout(), async {
        let stream = match &ctx.tls {
            None => Stream::Plain(stream),
            // The peer's certificate must be the CA's and name node `peer`.
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
                let name = cairn_tls::PeerTls::server_name(peer);
                let stream = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| Error::handshake(format!("TLS with node {peer} failed: {e}")))?;
                Stream::Tls(Box::new(stream.into()))
            }
        };
        let mut conn = Framed::new(stream, FrameCodec::new());
        conn.send(Frame::Hello(hello)).await?;
        let answer = conn.next().await.transpose()?;
        Ok::<_, Error>((conn, answer))
    })
    .await
    .map_err(|_| {
        Error::handshake(format!("no answer within {} ms", ctx.limits.handshake_timeout_ms))
    })?;
    let (mut conn, answer) = answer?;
    match answer {
        Some(Frame::Ack(ack)) => check_ack(ctx, peer, ack)?,
        Some(other) => return Err(Error::handshake(format!("expected ACK, got {other:?}"))),
        None => {
            return Err(Error::handshake(
                "peer closed the connection during the handshake (its log says why)",
            ))
        }
    }
    conn.codec_mut().establish();
    Ok(conn)
}

fn check_ack(ctx: &Context, peer: u64, ack: Handshake) -> Result<(), Error> {
    if ack.cluster_id != ctx.cluster_id {
        return Err(Error::handshake(format!(
            "peer is in cluster {}, this node in cluster {}",
            ack.cluster_id, ctx.cluster_id
        )));
    }
    if ack.from != peer || ack.to != ctx.node_id {
        return Err(Error::handshake(format!(
            "expected node {peer} answering node {}, got node {} answering node {}",
            ctx.node_id, ack.from, ack.to
        )));
    }
    Ok(())
}
