//! Cairn's peer transport: carries opaque messages between data nodes over one
//! framed TCP connection per pair of nodes.
//!
//! The replica around OmniPaxos is sans-IO: it produces messages addressed to
//! peer ids and consumes messages from peer ids. This crate is the thin layer
//! that moves those bytes. The caller encodes and decodes; the transport never
//! looks inside a message.
//!
//! # Shape
//!
//! [`Transport::start`] binds the listener and returns a [`TransportHandle`]
//! (send, membership, fault injection, counters, shutdown) and a bounded
//! receiver of [`Event`]s (messages in, connections up and down).
//!
//! Inside, one *link* task per configured peer owns everything about that
//! peer: its outbound queue, its one connection, and the events it emits. An
//! acceptor task takes incoming connections, checks their handshake, and hands
//! each one to the link of the peer it claims to be.
//!
//! - [`frame`]: the wire format (length-delimited frames; handshake, batch,
//!   ping). Public, so that tests and tools can speak it.
//! - `queue`: the bounded per-peer outbound queue the writer drains in
//!   batches.
//! - `link`: the per-peer task: dial or accept, serve, reconnect.
//! - `transport`: start, the handle, the acceptor, membership changes.
//!
//! # Invariants
//!
//! - **One connection per pair.** The node with the lower id dials, the higher
//!   id accepts. When a second connection from the same peer passes the
//!   handshake, the newest wins and the older is closed, so a restarted peer is
//!   served at once instead of waiting for the dead connection to time out.
//! - **Order per connection.** Messages to one peer leave in the order they
//!   were sent and arrive in that order while one connection lasts. Across a
//!   reconnection, messages may be lost (see below) but never reordered or
//!   duplicated.
//! - **Events per peer are ordered**: `Connected`, its messages, then
//!   `Disconnected`, all from the link task that owns the peer.
//! - **Everything is bounded**: outbound queues (messages and bytes), frames,
//!   messages per frame, inbound events, handshakes in flight, reconnect delay.
//!   Each bound is a named constant or a field of [`Limits`].
//! - **Nothing from the network can panic the node.** A bad handshake, a frame
//!   over the size limit or a malformed batch closes that one connection with a
//!   log line; other connections carry on.
//!
//! # Loss is allowed
//!
//! The transport is *at most once*: a message can be dropped when the peer's
//! queue is full, when it is in flight as a connection breaks, or when its peer
//! is removed; every drop is counted ([`Stats::messages_dropped`]). OmniPaxos
//! tolerates lost messages (it resends what matters after
//! [`Event::Connected`], on which the replica calls `reconnected(pid)`, and on
//! its own timers), so [`TransportHandle::send`] never waits: it is called from
//! the replica's event loop, which must not stall on a slow peer.
//!
//! Queue policy: messages to a peer that is not connected (not yet, or not
//! any more) wait in its queue and go out, in order, when the connection comes
//! up. A short outage loses nothing; a long one fills the queue to its bound,
//! after which new messages are refused and dropped while the oldest are kept
//! (stale consensus messages are harmless: OmniPaxos discards those of old
//! ballots). Inbound, a caller that does not drain its events makes its
//! readers wait, TCP pushes back, and the *sender's* queue drops: memory stays
//! bounded on both ends.
//!
//! # Trust
//!
//! With [`TransportConfig::tls`] (a node's `--certs-dir`), connections run
//! under mutual TLS 1.3: each side's certificate must be the cluster CA's,
//! the dialer checks that the node it reached is the one it dialed, and
//! the acceptor that the dialer's certificate names the node its HELLO
//! claims. Without it (`--insecure`), there is no encryption or
//! authentication: a process that can reach the port and knows the
//! cluster id can claim to be a peer.
//!
//! # What it does not do
//!
//! - No retransmission, acknowledgement or deduplication: that is consensus's
//!   job.
//! - No message priorities: a large snapshot chunk queued before a heartbeat
//!   delays it.
//! - No time of its own inside consensus: reconnect backoff and heartbeats use
//!   the tokio clock here, at the edge, never in the replica core.

pub mod frame;

mod config;
mod link;
mod queue;
mod stats;
mod stream;
mod transport;

pub use config::{
    Limits, TransportConfig, BACKOFF_INITIAL_MS_DEFAULT, BACKOFF_MAX_MS_DEFAULT,
    BATCH_BYTES_MAX_DEFAULT, CONNECT_TIMEOUT_MS_DEFAULT, HANDSHAKE_TIMEOUT_MS_DEFAULT,
    HEARTBEAT_INTERVAL_MS_DEFAULT, IDLE_TIMEOUT_MS_DEFAULT, INBOUND_EVENTS_MAX_DEFAULT,
    QUEUE_BYTES_MAX_DEFAULT, QUEUE_MESSAGES_MAX_DEFAULT,
};
pub use frame::{FRAME_BYTES_MAX, MESSAGES_PER_FRAME_MAX, MESSAGE_BYTES_MAX, PROTOCOL_VERSION};
pub use stats::Stats;
pub use transport::{
    Event, Transport, TransportHandle, HANDSHAKES_IN_FLIGHT_MAX, HANDSHAKES_PER_ADDRESS_MAX,
};

use std::net::SocketAddr;

/// Transport errors, grouped by how a caller reacts.
///
/// [`TransportHandle::send`] answers with [`Error::QueueFull`],
/// [`Error::UnknownPeer`], [`Error::MessageTooLarge`] or [`Error::ShutDown`];
/// every one of them means the message was dropped (and counted), which
/// consensus tolerates. [`Transport::start`] and [`TransportHandle::set_peers`]
/// answer with [`Error::Config`] or [`Error::Bind`], which are the operator's
/// to fix. [`Error::Handshake`], [`Error::Protocol`] and [`Error::Io`] describe
/// why one connection was refused or closed: they reach the logs, not callers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is impossible; `field` names it.
    #[error("invalid transport config: {field}: {reason}")]
    Config { field: &'static str, reason: String },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The message is addressed to a node that is not a configured peer.
    #[error("node {peer} is not a configured peer")]
    UnknownPeer { peer: u64 },
    /// The peer's outbound queue is at its bound; the message was dropped.
    #[error("outbound queue to node {peer} is full; message dropped")]
    QueueFull { peer: u64 },
    /// The message cannot fit in one frame; it was dropped.
    #[error("message of {size_bytes} bytes exceeds the limit of {size_bytes_max} bytes")]
    MessageTooLarge { size_bytes: usize, size_bytes_max: usize },
    /// The transport was shut down (or its handle dropped).
    #[error("the transport is shut down")]
    ShutDown,
    /// The other end of a connection failed the handshake.
    #[error("handshake failed: {reason}")]
    Handshake { reason: String },
    /// The other end of an established connection broke the wire format.
    #[error("protocol violation: {reason}")]
    Protocol { reason: String },
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub(crate) use cairn_util::lock;

impl Error {
    /// Whether the same call may succeed later without anyone changing the
    /// configuration: a full queue drains, a connection comes back.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::QueueFull { .. }
                | Error::Handshake { .. }
                | Error::Protocol { .. }
                | Error::Io(_)
        )
    }

    pub(crate) fn handshake(reason: impl Into<String>) -> Error {
        Error::Handshake { reason: reason.into() }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Error {
        Error::Protocol { reason: reason.into() }
    }
}
