//! Helpers shared by the scenario tests: nodes on loopback with port 0,
//! waits bounded by a generous deadline (the machine is slow and shared), and
//! raw sockets that speak (or break) the wire format.
//!
//! Nothing here sleeps to make an assertion true: every wait is for an event
//! or a condition, and fails with a message after [`DEADLINE`].

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use cairn_transport::{Event, Limits, Transport, TransportConfig, TransportHandle};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long any one wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);
/// The cluster id every test node uses.
pub const CLUSTER: u64 = 7;

/// Default limits with quick reconnects, so tests do not wait on backoff.
pub fn limits() -> Limits {
    Limits { backoff_initial_ms: 20, backoff_max_ms: 300, ..Limits::default() }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// An address nothing listens on (a port the kernel just gave and took back).
pub fn unused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind(loopback()).expect("bind a probe port");
    listener.local_addr().expect("probe address")
}

/// One transport and its events.
pub struct Node {
    pub id: u64,
    pub handle: TransportHandle,
    pub events: mpsc::Receiver<Event>,
}

impl Node {
    pub async fn start(
        id: u64,
        listen: SocketAddr,
        peers: BTreeMap<u64, SocketAddr>,
        limits: Limits,
    ) -> Node {
        Node::start_tls(id, listen, peers, limits, None).await
    }

    /// [`Node::start`] under mutual TLS with `tls`, or plain with `None`.
    pub async fn start_tls(
        id: u64,
        listen: SocketAddr,
        peers: BTreeMap<u64, SocketAddr>,
        limits: Limits,
        tls: Option<cairn_tls::PeerTls>,
    ) -> Node {
        let mut config = TransportConfig::new(id, CLUSTER, listen, peers);
        config.limits = limits;
        config.tls = tls;
        let (handle, events) = Transport::start(config)
            .await
            .unwrap_or_else(|e| panic!("node {id} failed to start: {e}"));
        Node { id, handle, events }
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// The next event, or a failure after the deadline.
    pub async fn next_event(&mut self) -> Event {
        match tokio::time::timeout(DEADLINE, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("node {}: event receiver ended", self.id),
            Err(_) => panic!("node {}: no event within {DEADLINE:?}", self.id),
        }
    }

    /// Reads events until `wanted`; returns those skipped on the way.
    pub async fn wait_for(&mut self, wanted: Event) -> Vec<Event> {
        let mut skipped = Vec::new();
        loop {
            let event = self.next_event().await;
            if event == wanted {
                return skipped;
            }
            skipped.push(event);
        }
    }

    pub async fn wait_connected(&mut self, peer: u64) {
        self.wait_for(Event::Connected { peer }).await;
    }

    /// Collects the next `n` messages from `from`; connection events and
    /// other peers' messages are skipped.
    pub async fn recv_from(&mut self, from: u64, n: usize) -> Vec<Bytes> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            if let Event::Message { from: f, msg } = self.next_event().await {
                if f == from {
                    got.push(msg);
                }
            }
        }
        got
    }

    /// Events already waiting, without waiting for more.
    pub fn pending_events(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            events.push(event);
        }
        events
    }
}

/// Starts nodes on port 0, then tells each about all the others.
pub async fn cluster(ids: &[u64], limits: Limits) -> Vec<Node> {
    let mut nodes = Vec::new();
    for &id in ids {
        nodes.push(Node::start(id, loopback(), BTreeMap::new(), limits.clone()).await);
    }
    let addrs: BTreeMap<u64, SocketAddr> = nodes.iter().map(|n| (n.id, n.addr())).collect();
    for node in &nodes {
        let mut peers = addrs.clone();
        peers.remove(&node.id);
        node.handle.set_peers(peers).expect("valid peers");
    }
    nodes
}

/// Waits until every pair of `nodes` has reported `Connected`.
pub async fn wait_all_connected(nodes: &mut [Node]) {
    let ids: Vec<u64> = nodes.iter().map(|n| n.id).collect();
    for node in nodes.iter_mut() {
        let me = node.id;
        for &peer in ids.iter().filter(|&&p| p != me) {
            node.wait_connected(peer).await;
        }
    }
}

/// Polls `condition` until it holds; fails naming `what` after the deadline.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < DEADLINE, "not within {DEADLINE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits for the other end to close `stream` (EOF or reset), failing after
/// the deadline. Whatever arrives before the close is discarded.
pub async fn closed_by_peer(stream: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "{what}: connection still open after {DEADLINE:?}");
}

/// A message payload naming its sender, receiver and sequence number.
pub fn tagged(from: u64, to: u64, seq: usize) -> Bytes {
    Bytes::from(format!("{from}->{to}#{seq}"))
}
