//! Delivery: messages arrive complete and in order per pair, many small
//! messages share frames, and a peer that cannot keep up costs dropped
//! messages, never a blocked sender.
//!
//! Run: `cargo test -p cairn-transport --test delivery`.

mod common;

use std::collections::BTreeMap;

use bytes::Bytes;
use cairn_transport::{Error, Event, Limits, MESSAGE_BYTES_MAX};
use common::{cluster, eventually, limits, tagged, unused_addr, wait_all_connected, Node};

/// Three nodes send to each other before any connection is up; every node
/// receives every message from every peer, in the order it was sent. Messages
/// sent early wait in the queue and are flushed on connect. Runs on several
/// threads, as a node does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_exchange_all_to_all_in_order() {
    const PER_PAIR: usize = 300;
    let mut nodes = cluster(&[1, 2, 3], limits()).await;
    let ids = [1u64, 2, 3];
    for node in &nodes {
        for &to in ids.iter().filter(|&&to| to != node.id) {
            for seq in 0..PER_PAIR {
                node.handle.send(to, tagged(node.id, to, seq)).expect("queue has room");
            }
        }
    }
    for node in nodes.iter_mut() {
        let mut by_sender: BTreeMap<u64, Vec<Bytes>> = BTreeMap::new();
        while by_sender.values().map(Vec::len).sum::<usize>() < 2 * PER_PAIR {
            if let Event::Message { from, msg } = node.next_event().await {
                by_sender.entry(from).or_default().push(msg);
            }
        }
        for (from, got) in by_sender {
            let expected: Vec<Bytes> = (0..PER_PAIR).map(|s| tagged(from, node.id, s)).collect();
            assert_eq!(got, expected, "node {} from node {from}", node.id);
        }
    }
    for node in &nodes {
        let handle = &node.handle;
        eventually("every message counted as sent", || {
            let stats = handle.stats();
            stats.messages_sent == 2 * PER_PAIR as u64 && stats.messages_queued == 0
        })
        .await;
        let stats = handle.stats();
        assert_eq!(stats.messages_received, 2 * PER_PAIR as u64);
        assert_eq!(stats.messages_dropped, 0);
        assert_eq!(stats.connections, 2, "one connection per peer: {stats:?}");
        assert_eq!(stats.reconnects, 0);
    }
}

/// Twenty thousand small messages sent at once travel in a handful of
/// frames, all of them, in order.
#[tokio::test]
async fn many_small_messages_share_frames() {
    const MESSAGES: usize = 20_000;
    let limits = Limits { queue_messages_max: MESSAGES, ..limits() };
    let mut nodes = cluster(&[1, 2], limits).await;
    wait_all_connected(&mut nodes).await;
    let [one, two] = &mut nodes[..] else { unreachable!("two nodes") };
    // The test runs on one thread: the writer gets to run only after the
    // whole burst is queued, as under load.
    for seq in 0..MESSAGES {
        one.handle.send(2, tagged(1, 2, seq)).expect("queue has room");
    }
    let got = two.recv_from(1, MESSAGES).await;
    let expected: Vec<Bytes> = (0..MESSAGES).map(|s| tagged(1, 2, s)).collect();
    assert!(got == expected, "messages lost or out of order");
    let handle = &one.handle;
    eventually("the burst counted as sent", || handle.stats().messages_sent == MESSAGES as u64)
        .await;
    let stats = one.handle.stats();
    assert!(
        stats.frames_sent * 100 <= stats.messages_sent,
        "expected at least 100 messages per frame: {stats:?}"
    );
    assert_eq!(two.handle.stats().frames_received, stats.frames_sent);
}

/// With its peer unreachable, a node's queue fills to its bound; further
/// sends return at once with `QueueFull` and are counted as dropped. When the
/// peer comes up, exactly the queued messages arrive, in order.
#[tokio::test]
async fn full_queue_drops_and_counts_instead_of_blocking() {
    const BOUND: usize = 8;
    const SENT: usize = 20;
    let limits = Limits { queue_messages_max: BOUND, ..limits() };
    let addr2 = unused_addr();
    let one =
        Node::start(1, common::loopback(), BTreeMap::from([(2, addr2)]), limits.clone()).await;
    for seq in 0..SENT {
        match one.handle.send(2, tagged(1, 2, seq)) {
            Ok(()) => assert!(seq < BOUND, "message {seq} queued past the bound"),
            Err(e @ Error::QueueFull { peer: 2 }) => {
                assert!(seq >= BOUND, "message {seq} refused below the bound");
                assert!(e.is_retryable());
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let stats = one.handle.stats();
    assert_eq!(stats.messages_dropped, (SENT - BOUND) as u64);
    assert_eq!(stats.messages_queued, BOUND as u64);

    // A message no frame can carry is refused too, and counted.
    let too_big = Bytes::from(vec![0u8; MESSAGE_BYTES_MAX + 1]);
    assert!(matches!(one.handle.send(2, too_big), Err(Error::MessageTooLarge { .. })));
    assert!(matches!(one.handle.send(9, Bytes::new()), Err(Error::UnknownPeer { peer: 9 })));
    let dropped = (SENT - BOUND + 2) as u64;
    assert_eq!(one.handle.stats().messages_dropped, dropped);

    let mut two = Node::start(2, addr2, BTreeMap::from([(1, one.addr())]), limits).await;
    let got = two.recv_from(1, BOUND).await;
    let expected: Vec<Bytes> = (0..BOUND).map(|s| tagged(1, 2, s)).collect();
    assert_eq!(got, expected);
    let handle = &one.handle;
    eventually("the queue flushed", || {
        let stats = handle.stats();
        stats.messages_sent == BOUND as u64 && stats.messages_queued == 0
    })
    .await;
    assert_eq!(one.handle.stats().messages_dropped, dropped);
}

/// A receiver that does not read its events stops its node reading from the
/// socket; TCP pushes back, the sender's queue fills, and its sends drop
/// instead of blocking. Once the receiver reads again, what was not dropped
/// arrives in order, and every message is either received or counted dropped.
#[tokio::test]
async fn slow_receiver_makes_the_sender_drop_not_block() {
    const MESSAGE_BYTES: usize = 256 * 1024;
    const ATTEMPTS_MAX: usize = 4_000;
    let limits = Limits { queue_messages_max: 64, inbound_events_max: 16, ..limits() };
    let mut nodes = cluster(&[1, 2], limits).await;
    wait_all_connected(&mut nodes).await;
    let [one, two] = &mut nodes[..] else { unreachable!("two nodes") };
    let mut attempts = 0;
    let mut first_refusal = None;
    while first_refusal.is_none() {
        assert!(attempts < ATTEMPTS_MAX, "the sender never filled up");
        let mut msg = vec![0u8; MESSAGE_BYTES];
        msg[..8].copy_from_slice(&(attempts as u64).to_be_bytes());
        match one.handle.send(2, Bytes::from(msg)) {
            Ok(()) => {}
            Err(Error::QueueFull { .. }) => first_refusal = Some(attempts),
            Err(e) => panic!("unexpected error: {e}"),
        }
        attempts += 1;
        // Let the writer and reader tasks run between sends.
        tokio::task::yield_now().await;
    }
    let accepted = attempts - 1;
    let got = two.recv_from(1, accepted).await;
    let seqs: Vec<u64> =
        got.iter().map(|m| u64::from_be_bytes(m[..8].try_into().expect("8 bytes"))).collect();
    let expected: Vec<u64> = (0..accepted as u64).collect();
    assert_eq!(seqs, expected, "accepted messages arrive in order");
    let handle = &one.handle;
    eventually("all accepted messages counted sent", || {
        handle.stats().messages_sent == accepted as u64
    })
    .await;
    assert_eq!(one.handle.stats().messages_dropped, 1);
}
