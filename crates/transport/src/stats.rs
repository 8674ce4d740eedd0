//! Counters of what the transport did, for the node's metrics.
//!
//! Every message handed to [`crate::TransportHandle::send`] ends up counted
//! exactly once as sent or dropped, or is still queued: after the transport
//! goes quiet, `sent + dropped + queued` equals the number of sends. Counters
//! only grow; they are relaxed atomics, read without stopping anyone.
//!
//! It does not keep rates, histograms or per-peer series: the metrics layer
//! derives what it needs.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the transport's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages written to a peer's socket.
    pub messages_sent: u64,
    /// Messages read from peers' sockets (and then handed to the event
    /// receiver, unless the transport stops first).
    pub messages_received: u64,
    /// Messages given up: queue full, too large, unknown or removed peer,
    /// or in flight when a connection broke.
    pub messages_dropped: u64,
    /// Of those, messages over [`crate::MESSAGE_BYTES_MAX`]: a bug in what
    /// the node sends, since its limits keep every entry and chunk under it.
    pub messages_too_large: u64,
    /// Messages waiting in outbound queues now (a gauge, not a counter).
    pub messages_queued: u64,
    /// Batch frames written (pings excluded): `messages_sent / frames_sent`
    /// is the batching factor.
    pub frames_sent: u64,
    /// Batch frames received.
    pub frames_received: u64,
    /// Connections established (handshake passed), both directions.
    pub connections: u64,
    /// Connections established to a peer that had been connected before.
    pub reconnects: u64,
    /// Incoming or outgoing connections refused for a bad handshake, and
    /// established ones closed for breaking the wire format.
    pub connections_rejected: u64,
}

/// The live counters behind [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub messages_sent: AtomicU64,
    pub messages_received: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub messages_too_large: AtomicU64,
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub connections: AtomicU64,
    pub reconnects: AtomicU64,
    pub connections_rejected: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self, messages_queued: u64) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            messages_sent: read(&self.messages_sent),
            messages_received: read(&self.messages_received),
            messages_dropped: read(&self.messages_dropped),
            messages_too_large: read(&self.messages_too_large),
            messages_queued,
            frames_sent: read(&self.frames_sent),
            frames_received: read(&self.frames_received),
            connections: read(&self.connections),
            reconnects: read(&self.reconnects),
            connections_rejected: read(&self.connections_rejected),
        }
    }
}

/// Messages taken from a queue and not yet written. Dropping it without
/// [`InFlight::sent`] counts them as dropped: a write that fails or a
/// connection that is cut mid-write loses them, and the counters must say so.
pub(crate) struct InFlight<'a> {
    counters: &'a Counters,
    messages: u64,
}

impl<'a> InFlight<'a> {
    pub fn new(counters: &'a Counters, messages: usize) -> InFlight<'a> {
        InFlight { counters, messages: messages as u64 }
    }

    /// The messages reached the socket.
    pub fn sent(mut self) {
        // Frames first: whoever sees the messages counted sees their frame.
        Counters::add(&self.counters.frames_sent, 1);
        Counters::add(&self.counters.messages_sent, self.messages);
        self.messages = 0;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        Counters::add(&self.counters.messages_dropped, self.messages);
    }
}
