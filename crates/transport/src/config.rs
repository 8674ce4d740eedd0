//! What a transport is told at start: who it is, where it listens, who its
//! peers are, and the limits it keeps.
//!
//! Invariants checked by [`TransportConfig::validate`] before anything binds:
//! node and cluster ids are non-zero, a node is never its own peer, every limit
//! is non-zero and the limits agree with each other (backoff start below its
//! cap, heartbeats well inside the idle timeout, batches within a frame).
//!
//! The wire-format limits ([`crate::FRAME_BYTES_MAX`] and friends) are not
//! here: both ends of a connection must agree on them, so they are constants
//! of the protocol, not settings of one node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::MESSAGE_BYTES_MAX;
use crate::Error;

/// Default bound on messages waiting for one peer. At OmniPaxos's message
/// rates this is several seconds of traffic: enough to ride out a reconnect,
/// small enough that a dead peer costs little memory.
pub const QUEUE_MESSAGES_MAX_DEFAULT: usize = 4096;
/// Default bound on the bytes waiting for one peer (64 MiB): the memory a slow
/// or absent peer can hold on this node.
pub const QUEUE_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Default target size of one batch frame (1 MiB): big enough that many small
/// messages share one write, small enough that a frame is written quickly.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default bound on events waiting for the caller. When it is full, readers
/// stop reading and TCP pushes back on the senders, whose queues then drop.
pub const INBOUND_EVENTS_MAX_DEFAULT: usize = 4096;
/// Default first reconnect delay.
pub const BACKOFF_INITIAL_MS_DEFAULT: u64 = 50;
/// Default cap on the reconnect delay, which doubles from the initial one.
pub const BACKOFF_MAX_MS_DEFAULT: u64 = 2_000;
/// Default limit on a TCP connect.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default limit on the handshake, from accept (or connect) to an accepted
/// peer: a connection that says nothing is closed after this.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Default interval after which an idle writer sends a ping, so the other end
/// can tell an idle peer from a vanished one.
pub const HEARTBEAT_INTERVAL_MS_DEFAULT: u64 = 500;
/// Default silence after which a connection is presumed dead and closed. Ten
/// heartbeats: a paused process or a silent partition is noticed within
/// seconds (and reported as `Disconnected`), not after TCP's minutes.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// A heartbeat interval must leave at least this many heartbeats per idle
/// timeout, so one late ping does not close a healthy connection.
const HEARTBEATS_PER_IDLE_TIMEOUT_MIN: u64 = 3;

/// The bounds and timings a transport keeps. [`Limits::default`] suits a
/// production node; tests shrink them to reach the edges quickly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Messages waiting for one peer, at most.
    pub queue_messages_max: usize,
    /// Bytes waiting for one peer, at most. A message larger than this is
    /// still accepted into an empty queue, so any message that fits in a
    /// frame can be sent.
    pub queue_bytes_max: usize,
    /// A writer stops adding messages to a frame past this many bytes (a
    /// frame always carries at least one message).
    pub batch_bytes_max: usize,
    /// Events waiting in the receiver returned by [`crate::Transport::start`].
    pub inbound_events_max: usize,
    /// First delay before redialing a peer.
    pub backoff_initial_ms: u64,
    /// Cap of the doubling redial delay.
    pub backoff_max_ms: u64,
    /// Limit on one TCP connect.
    pub connect_timeout_ms: u64,
    /// Limit on one handshake.
    pub handshake_timeout_ms: u64,
    /// An idle connection sends a ping this often.
    pub heartbeat_interval_ms: u64,
    /// A connection that receives nothing for this long is closed.
    pub idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            queue_messages_max: QUEUE_MESSAGES_MAX_DEFAULT,
            queue_bytes_max: QUEUE_BYTES_MAX_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            inbound_events_max: INBOUND_EVENTS_MAX_DEFAULT,
            backoff_initial_ms: BACKOFF_INITIAL_MS_DEFAULT,
            backoff_max_ms: BACKOFF_MAX_MS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS_DEFAULT,
            idle_timeout_ms: IDLE_TIMEOUT_MS_DEFAULT,
        }
    }
}

impl Limits {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub(crate) fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    pub(crate) fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub(crate) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    fn validate(&self) -> Result<(), Error> {
        let nonzero = [
            ("queue_messages_max", self.queue_messages_max as u64),
            ("queue_bytes_max", self.queue_bytes_max as u64),
            ("batch_bytes_max", self.batch_bytes_max as u64),
            ("inbound_events_max", self.inbound_events_max as u64),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("heartbeat_interval_ms", self.heartbeat_interval_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
        ];
        for (field, value) in nonzero {
            if value == 0 {
                return Err(config_error(field, "must be above zero"));
            }
        }
        if self.backoff_initial_ms > self.backoff_max_ms {
            return Err(config_error(
                "backoff_initial_ms",
                format!("must not exceed backoff_max_ms ({})", self.backoff_max_ms),
            ));
        }
        if self.batch_bytes_max > MESSAGE_BYTES_MAX {
            return Err(config_error(
                "batch_bytes_max",
                format!("must not exceed one frame's payload ({MESSAGE_BYTES_MAX} bytes)"),
            ));
        }
        let heartbeats = self.idle_timeout_ms / self.heartbeat_interval_ms;
        if heartbeats < HEARTBEATS_PER_IDLE_TIMEOUT_MIN {
            return Err(config_error(
                "heartbeat_interval_ms",
                format!(
                    "must fit at least {HEARTBEATS_PER_IDLE_TIMEOUT_MIN} times in idle_timeout_ms ({})",
                    self.idle_timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Who this node is, where it listens and whom it talks to.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node's id: non-zero, unique in the cluster.
    pub node_id: u64,
    /// The cluster's id, carried in every handshake so that a node of another
    /// cluster (a reused port on a shared machine) is refused, not believed.
    pub cluster_id: u64,
    /// Where to listen. Port 0 picks a free port; see
    /// [`crate::TransportHandle::local_addr`].
    pub listen: SocketAddr,
    /// The other nodes, by id. Never contains `node_id`.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Bounds and timings.
    pub limits: Limits,
    /// Mutual TLS with the cluster's CA: every connection is encrypted, and
    /// a peer must hold a certificate of the CA naming the node it claims
    /// to be. `None` runs plain TCP, where anyone who reaches the port and
    /// knows the cluster id can pose as a member (`cairn node --insecure`).
    pub tls: Option<cairn_tls::PeerTls>,
}

impl TransportConfig {
    /// A configuration with default limits.
    pub fn new(
        node_id: u64,
        cluster_id: u64,
        listen: SocketAddr,
        peers: BTreeMap<u64, SocketAddr>,
    ) -> TransportConfig {
        TransportConfig { node_id, cluster_id, listen, peers, limits: Limits::default(), tls: None }
    }

    /// Refuses a configuration that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.node_id == 0 {
            return Err(config_error("node_id", "must be above zero"));
        }
        if self.cluster_id == 0 {
            return Err(config_error("cluster_id", "must be above zero"));
        }
        validate_peers(self.node_id, &self.peers)?;
        self.limits.validate()
    }
}

/// Refuses a peer set that names this node or the reserved id 0.
pub(crate) fn validate_peers(node_id: u64, peers: &BTreeMap<u64, SocketAddr>) -> Result<(), Error> {
    if peers.contains_key(&0) {
        return Err(config_error("peers", "node id 0 is reserved"));
    }
    if peers.contains_key(&node_id) {
        return Err(config_error("peers", format!("contains this node's own id {node_id}")));
    }
    Ok(())
}

fn config_error(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Config { field, reason: reason.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> TransportConfig {
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        TransportConfig::new(2, 7, listen, BTreeMap::from([(1, listen), (3, listen)]))
    }

    fn refused_field(config: &TransportConfig) -> &'static str {
        match config.validate() {
            Err(Error::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    // The defaults are a working configuration.
    #[test]
    fn defaults_are_valid() {
        config().validate().expect("default limits validate");
    }

    // Each impossible value is refused with the name of its field.
    #[test]
    fn impossible_values_name_their_field() {
        let mut c = config();
        c.node_id = 0;
        assert_eq!(refused_field(&c), "node_id");

        let mut c = config();
        c.peers.insert(2, c.listen);
        assert_eq!(refused_field(&c), "peers");

        let mut c = config();
        c.limits.queue_messages_max = 0;
        assert_eq!(refused_field(&c), "queue_messages_max");

        let mut c = config();
        c.limits.backoff_initial_ms = c.limits.backoff_max_ms + 1;
        assert_eq!(refused_field(&c), "backoff_initial_ms");

        let mut c = config();
        c.limits.heartbeat_interval_ms = c.limits.idle_timeout_ms;
        assert_eq!(refused_field(&c), "heartbeat_interval_ms");

        let mut c = config();
        c.limits.batch_bytes_max = MESSAGE_BYTES_MAX + 1;
        assert_eq!(refused_field(&c), "batch_bytes_max");
    }
}
