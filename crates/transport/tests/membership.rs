//! Membership and lifecycle: peers added and removed at run time, invalid
//! configurations refused by name, and shutdown that stops everything.
//!
//! Run: `cargo test -p cairn-transport --test membership`.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_transport::{Error, Event, Transport, TransportConfig};
use common::{eventually, limits, loopback, Node, CLUSTER};

/// Peers join and leave with `set_peers`: a new pair connects and exchanges
/// messages; a peer removed by the dialing side is disconnected and no longer
/// addressable; a peer removed by the accepting side is refused when it
/// redials, and connects again once added back.
#[tokio::test]
async fn set_peers_adds_and_removes_peers() {
    let mut one = Node::start(1, loopback(), BTreeMap::new(), limits()).await;
    let mut two = Node::start(2, loopback(), BTreeMap::new(), limits()).await;
    let mut three = Node::start(3, loopback(), BTreeMap::new(), limits()).await;
    let (a1, a2, a3) = (one.addr(), two.addr(), three.addr());

    // 1 and 2 know each other; 3 joins later.
    one.handle.set_peers(BTreeMap::from([(2, a2)])).expect("valid");
    two.handle.set_peers(BTreeMap::from([(1, a1)])).expect("valid");
    one.wait_connected(2).await;
    two.wait_connected(1).await;
    one.handle.set_peers(BTreeMap::from([(2, a2), (3, a3)])).expect("valid");
    three.handle.set_peers(BTreeMap::from([(1, a1)])).expect("valid");
    one.wait_connected(3).await;
    three.wait_connected(1).await;
    one.handle.send(3, Bytes::from_static(b"welcome")).expect("queued");
    assert_eq!(three.recv_from(1, 1).await, vec![Bytes::from_static(b"welcome")]);
    assert_eq!(one.handle.peers(), BTreeMap::from([(2, a2), (3, a3)]));

    // The dialing side removes its peer: both sides see the link go, and the
    // removed peer can no longer be addressed.
    one.handle.set_peers(BTreeMap::from([(3, a3)])).expect("valid");
    one.wait_for(Event::Disconnected { peer: 2 }).await;
    two.wait_for(Event::Disconnected { peer: 1 }).await;
    assert!(matches!(one.handle.send(2, Bytes::new()), Err(Error::UnknownPeer { peer: 2 })));
    assert!(!one.handle.is_connected(2) && !two.handle.is_connected(1));

    // The accepting side removes its peer: the dialer is cut off, and its
    // attempts to come back are refused until it is added again.
    three.handle.set_peers(BTreeMap::new()).expect("valid");
    one.wait_for(Event::Disconnected { peer: 3 }).await;
    let handle = &three.handle;
    eventually("node 3 refuses node 1's redial", || handle.stats().connections_rejected >= 1).await;
    assert!(!one.handle.is_connected(3));
    three.handle.set_peers(BTreeMap::from([(1, a1)])).expect("valid");
    one.wait_connected(3).await;
    three.wait_connected(1).await;
    three.handle.send(1, Bytes::from_static(b"back")).expect("queued");
    assert_eq!(one.recv_from(3, 1).await, vec![Bytes::from_static(b"back")]);
}

/// Impossible configurations are refused before anything binds, naming the
/// field at fault.
#[tokio::test]
async fn invalid_configuration_is_refused_by_field() {
    let own = TransportConfig::new(1, CLUSTER, loopback(), BTreeMap::from([(1, loopback())]));
    match Transport::start(own).await {
        Err(Error::Config { field: "peers", .. }) => {}
        other => panic!("expected a peers error, got {:?}", other.map(|_| ())),
    }
    let mut no_queue = TransportConfig::new(1, CLUSTER, loopback(), BTreeMap::new());
    no_queue.limits.queue_messages_max = 0;
    match Transport::start(no_queue).await {
        Err(Error::Config { field: "queue_messages_max", .. }) => {}
        other => panic!("expected a queue error, got {:?}", other.map(|_| ())),
    }
    let node = Node::start(1, loopback(), BTreeMap::new(), limits()).await;
    assert!(matches!(
        node.handle.set_peers(BTreeMap::from([(1, loopback())])),
        Err(Error::Config { field: "peers", .. })
    ));
}

/// Shutdown closes the connections (the peer sees `Disconnected`), drops
/// what was queued, refuses later sends, and ends the event receiver.
#[tokio::test]
async fn shutdown_stops_everything() {
    let unreachable = common::unused_addr();
    let mut one = Node::start(1, loopback(), BTreeMap::new(), limits()).await;
    let mut two = Node::start(2, loopback(), BTreeMap::from([(1, one.addr())]), limits()).await;
    one.handle.set_peers(BTreeMap::from([(2, two.addr()), (3, unreachable)])).expect("valid");
    one.wait_connected(2).await;
    two.wait_connected(1).await;
    one.handle.send(3, Bytes::from_static(b"never delivered")).expect("queued");

    one.handle.shutdown().await;
    two.wait_for(Event::Disconnected { peer: 1 }).await;
    assert!(matches!(one.handle.send(2, Bytes::new()), Err(Error::ShutDown)));
    assert!(matches!(one.handle.set_peers(BTreeMap::new()), Err(Error::ShutDown)));
    let stats = one.handle.stats();
    assert_eq!((stats.messages_dropped, stats.messages_queued), (2, 0), "{stats:?}");
    // The receiver yields what was left, then ends.
    while let Some(event) = one.events.recv().await {
        assert!(!matches!(event, Event::Message { .. }), "{event:?}");
    }
}
