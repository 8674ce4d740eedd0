//! Faults: cut connections come back, restarted peers are reconnected to, the
//! newest connection from a peer wins, and strangers (bad handshakes, garbage,
//! oversized or corrupt frames, silence) are closed without disturbing the
//! real peers.
//!
//! Run: `cargo test -p cairn-transport --test faults`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use cairn_transport::frame::{Frame, FrameCodec, Handshake, MAGIC};
use cairn_transport::{Event, Limits, FRAME_BYTES_MAX};
use common::{
    closed_by_peer, cluster, eventually, limits, loopback, unused_addr, wait_all_connected, Node,
    CLUSTER,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, Framed};

/// Sends one message each way and waits for both.
async fn assert_messages_flow(a: &mut Node, b: &mut Node, tag: &str) {
    let (a_to_b, b_to_a) = (Bytes::from(format!("{tag} a->b")), Bytes::from(format!("{tag} b->a")));
    a.handle.send(b.id, a_to_b.clone()).expect("queued");
    b.handle.send(a.id, b_to_a.clone()).expect("queued");
    assert_eq!(b.recv_from(a.id, 1).await, vec![a_to_b]);
    assert_eq!(a.recv_from(b.id, 1).await, vec![b_to_a]);
}

/// A connection cut from either side is reported as `Disconnected` then
/// `Connected` on both sides (the signal for OmniPaxos `reconnected`), and
/// messages flow again. Runs on several threads, as a node does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn severed_connection_reconnects_on_both_sides() {
    let mut nodes = cluster(&[1, 2], limits()).await;
    wait_all_connected(&mut nodes).await;
    let [one, two] = &mut nodes[..] else { unreachable!("two nodes") };
    assert_messages_flow(one, two, "before").await;

    // Cut by the dialing side, then by the accepting side.
    for (round, cut_by_dialer) in [(1, true), (2, false)] {
        let cut = if cut_by_dialer { one.handle.disconnect(2) } else { two.handle.disconnect(1) };
        assert!(cut, "round {round}: a connection was up to cut");
        for (node, peer) in [(&mut *one, 2), (&mut *two, 1)] {
            node.wait_for(Event::Disconnected { peer }).await;
            node.wait_connected(peer).await;
        }
        assert_messages_flow(one, two, &format!("after cut {round}")).await;
        assert!(one.handle.is_connected(2) && two.handle.is_connected(1));
    }
    assert_eq!(one.handle.stats().reconnects, 2);
    assert_eq!(two.handle.stats().reconnects, 2);
}

/// A peer whose transport stops and starts again on the same port is
/// reconnected to, whether it was the accepting side (node 2 restarts: node 1
/// redials it) or the dialing side (node 1 restarts and dials again).
#[tokio::test]
async fn restarted_peer_is_reconnected() {
    let mut nodes = cluster(&[1, 2], limits()).await;
    wait_all_connected(&mut nodes).await;
    let two = nodes.pop().expect("node 2");
    let mut one = nodes.pop().expect("node 1");
    let (addr1, addr2) = (one.addr(), two.addr());

    two.handle.shutdown().await;
    one.wait_for(Event::Disconnected { peer: 2 }).await;
    let mut two = Node::start(2, addr2, BTreeMap::from([(1, addr1)]), limits()).await;
    one.wait_connected(2).await;
    two.wait_connected(1).await;
    assert_messages_flow(&mut one, &mut two, "node 2 restarted").await;

    // Dropping the handle stops the transport too.
    drop(one);
    two.wait_for(Event::Disconnected { peer: 1 }).await;
    let mut one = Node::start(1, addr1, BTreeMap::from([(2, addr2)]), limits()).await;
    one.wait_connected(2).await;
    two.wait_connected(1).await;
    assert_messages_flow(&mut one, &mut two, "node 1 restarted").await;
}

/// Opens a raw connection to `addr` and completes a valid handshake as
/// `from` (not necessarily who it is).
async fn handshake_as(from: u64, to: u64, addr: SocketAddr) -> Framed<TcpStream, FrameCodec> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut conn = Framed::new(stream, FrameCodec::new());
    let hello = Handshake { cluster_id: CLUSTER, from, to };
    conn.send(Frame::Hello(hello)).await.expect("send HELLO");
    let ack = conn.next().await.expect("an answer").expect("a frame");
    assert_eq!(ack, Frame::Ack(Handshake { cluster_id: CLUSTER, from: to, to: from }));
    conn.codec_mut().establish();
    conn
}

/// Reads frames until a batch, skipping pings.
async fn next_batch(conn: &mut Framed<TcpStream, FrameCodec>) -> Vec<Bytes> {
    loop {
        let frame = tokio::time::timeout(common::DEADLINE, conn.next())
            .await
            .expect("a frame within the deadline")
            .expect("connection open")
            .expect("a valid frame");
        if let Frame::Batch(messages) = frame {
            return messages;
        }
    }
}

/// A second connection from the same peer replaces the first: the old one is
/// closed, `Disconnected` then `Connected` are reported, and messages go to
/// the new one. (Node 1 here is played by raw sockets.)
#[tokio::test]
async fn newest_connection_from_a_peer_wins() {
    let mut two = Node::start(2, loopback(), BTreeMap::from([(1, unused_addr())]), limits()).await;
    let mut first = handshake_as(1, 2, two.addr()).await;
    two.wait_connected(1).await;
    let mut second = handshake_as(1, 2, two.addr()).await;
    two.wait_for(Event::Disconnected { peer: 1 }).await;
    two.wait_connected(1).await;
    closed_by_peer(first.get_mut(), "the replaced connection").await;

    two.handle.send(1, Bytes::from_static(b"to the newest")).expect("queued");
    assert_eq!(next_batch(&mut second).await, vec![Bytes::from_static(b"to the newest")]);
    second
        .send(Frame::Batch(vec![Bytes::from_static(b"from the newest")]))
        .await
        .expect("send a batch");
    assert_eq!(two.recv_from(1, 1).await, vec![Bytes::from_static(b"from the newest")]);
    assert_eq!(two.handle.stats().reconnects, 1);
}

fn hello_bytes(magic: &[u8; 8], cluster_id: u64, from: u64, to: u64) -> Vec<u8> {
    let mut frame = BytesMut::new();
    frame.put_u32(35);
    frame.put_u8(1);
    frame.extend_from_slice(magic);
    frame.put_u16(cairn_transport::PROTOCOL_VERSION);
    frame.put_u64(cluster_id);
    frame.put_u64(from);
    frame.put_u64(to);
    frame.to_vec()
}

/// Strangers are refused one by one: garbage, a length over the handshake
/// limit, a wrong magic, cluster, target or id, a node that should be dialed
/// rather than dial, and a connection that says nothing. Each is closed and
/// counted; the real peers stay connected and keep exchanging messages.
#[tokio::test]
async fn bad_handshakes_are_refused_without_harm() {
    let limits = Limits { handshake_timeout_ms: 1_000, ..limits() };
    let mut nodes = cluster(&[1, 5], limits).await;
    wait_all_connected(&mut nodes).await;
    let [one, five] = &mut nodes[..] else { unreachable!("two nodes") };
    let strangers: Vec<(&str, Vec<u8>)> = vec![
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("a huge length prefix", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("a wrong magic", hello_bytes(b"NOT-CAIR", CLUSTER, 1, 5)),
        ("another cluster", hello_bytes(&MAGIC, CLUSTER + 1, 1, 5)),
        ("another target", hello_bytes(&MAGIC, CLUSTER, 1, 4)),
        ("an unknown node", hello_bytes(&MAGIC, CLUSTER, 3, 5)),
        ("a higher id dialing", hello_bytes(&MAGIC, CLUSTER, 9, 5)),
        ("a zero-length frame", vec![0, 0, 0, 0]),
        ("silence", Vec::new()),
    ];
    for (what, bytes) in &strangers {
        let mut stream = TcpStream::connect(five.addr()).await.expect("connect");
        stream.write_all(bytes).await.expect("write");
        closed_by_peer(&mut stream, what).await;
    }
    let handle = &five.handle;
    eventually("every stranger counted as rejected", || {
        handle.stats().connections_rejected == strangers.len() as u64
    })
    .await;
    assert_messages_flow(one, five, "after the strangers").await;
    let disturbed: Vec<Event> = five
        .pending_events()
        .into_iter()
        .chain(one.pending_events())
        .filter(|e| !matches!(e, Event::Message { .. }))
        .collect();
    assert!(disturbed.is_empty(), "real peers disturbed: {disturbed:?}");
    assert_eq!(five.handle.stats().connections, 1);
}

/// Idle sockets from one stranger's address fill no more than its share of
/// the handshake pool: a real peer (on another address) still gets in at
/// once, long before the stranger's sockets time out.
#[tokio::test]
async fn idle_sockets_from_one_address_do_not_keep_real_peers_out() {
    let limits = Limits { handshake_timeout_ms: 120_000, ..limits() };
    let addr1 = unused_addr();
    let mut five = Node::start(5, loopback(), BTreeMap::from([(1, addr1)]), limits.clone()).await;
    // 127.0.0.2 is loopback too, and not the peers' 127.0.0.1.
    let mut idle = Vec::new();
    for _ in 0..cairn_transport::HANDSHAKES_IN_FLIGHT_MAX {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket.bind("127.0.0.2:0".parse().unwrap()).expect("bind 127.0.0.2");
        idle.push(socket.connect(five.addr()).await.expect("connect"));
    }
    let refused = (cairn_transport::HANDSHAKES_IN_FLIGHT_MAX
        - cairn_transport::HANDSHAKES_PER_ADDRESS_MAX) as u64;
    let handle = five.handle.clone();
    eventually("the stranger's sockets past its share are refused", || {
        handle.stats().connections_rejected == refused
    })
    .await;
    let mut one = Node::start(1, addr1, BTreeMap::from([(5, five.addr())]), limits).await;
    one.wait_connected(5).await;
    five.wait_connected(1).await;
    assert_messages_flow(&mut one, &mut five, "beside the stranger").await;
    drop(idle);
}

/// After a valid handshake, a corrupt batch or a frame over the size limit
/// closes that connection alone, and is counted. (Node 3 is played by raw
/// sockets; node 1 is real and stays connected.)
#[tokio::test]
async fn corrupt_frames_close_only_their_connection() {
    let mut nodes = cluster(&[1, 5], limits()).await;
    wait_all_connected(&mut nodes).await;
    let [one, five] = &mut nodes[..] else { unreachable!("two nodes") };
    let peers = BTreeMap::from([(1, one.addr()), (3, unused_addr())]);
    five.handle.set_peers(peers).expect("valid peers");

    let mut corrupt_batch = BytesMut::new();
    corrupt_batch.put_u32(5);
    corrupt_batch.put_u8(3); // a batch...
    corrupt_batch.put_u32(9); // ...whose message claims 9 bytes, with none left
    let mut oversized = BytesMut::new();
    oversized.put_u32(FRAME_BYTES_MAX as u32 + 1);
    let mut handshake_again = BytesMut::new();
    let hello = Handshake { cluster_id: CLUSTER, from: 3, to: 5 };
    FrameCodec::new().encode(Frame::Hello(hello), &mut handshake_again).expect("encode HELLO");
    for (what, bytes) in [
        ("a corrupt batch", corrupt_batch),
        ("an oversized frame", oversized),
        ("a second HELLO", handshake_again),
    ] {
        let mut conn = handshake_as(3, 5, five.addr()).await;
        five.wait_connected(3).await;
        conn.get_mut().write_all(&bytes).await.expect("write");
        closed_by_peer(conn.get_mut(), what).await;
        five.wait_for(Event::Disconnected { peer: 3 }).await;
    }
    assert_eq!(five.handle.stats().connections_rejected, 3);
    assert_messages_flow(one, five, "after the corrupt frames").await;
    assert!(five.handle.is_connected(1));
    let disturbed: Vec<Event> =
        one.pending_events().into_iter().filter(|e| !matches!(e, Event::Message { .. })).collect();
    assert!(disturbed.is_empty(), "node 1 disturbed: {disturbed:?}");
}

/// A peer that goes silent after its handshake (a paused process, a silent
/// partition) is disconnected after the idle timeout, while one that keeps
/// sending, even a frame trickling in byte by byte, is not.
#[tokio::test]
async fn silent_peer_is_disconnected_but_a_slow_frame_is_not() {
    const TRICKLE_PAUSE: Duration = Duration::from_millis(250);
    let limits = Limits { heartbeat_interval_ms: 200, idle_timeout_ms: 1_000, ..limits() };
    let mut two = Node::start(2, loopback(), BTreeMap::from([(1, unused_addr())]), limits).await;

    // A slow frame: each byte comes well within the idle timeout, the whole
    // frame well after it.
    let mut slow = handshake_as(1, 2, two.addr()).await;
    two.wait_connected(1).await;
    let mut frame = BytesMut::new();
    Encoder::encode(
        &mut FrameCodec::new(),
        Frame::Batch(vec![Bytes::from_static(b"slowly")]),
        &mut frame,
    )
    .expect("encode");
    for byte in frame.iter() {
        slow.get_mut().write_all(&[*byte]).await.expect("write");
        // Pacing, not an assertion: the trickle must outlast the timeout.
        tokio::time::sleep(TRICKLE_PAUSE).await;
    }
    assert_eq!(two.recv_from(1, 1).await, vec![Bytes::from_static(b"slowly")]);
    assert!(two.pending_events().is_empty(), "the slow frame cut the connection");

    // Now silence: the connection is closed.
    two.wait_for(Event::Disconnected { peer: 1 }).await;
    closed_by_peer(slow.get_mut(), "the silent connection").await;
}
