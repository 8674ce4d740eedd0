//! Mutual TLS between peers: nodes with certificates of the cluster's CA
//! connect and exchange messages; a stranger without a certificate, with
//! another CA's, or with a real node's certificate while claiming to be
//! another node, is refused and counted, and the real peers are not
//! disturbed.
//!
//! Run: `cargo test --workspace --test tls`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use cairn_tls::{Ca, PeerTls};
use cairn_transport::frame::{Frame, FrameCodec, Handshake};
use common::{closed_by_peer, eventually, limits, loopback, unused_addr, Node, CLUSTER};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

fn issue(dir: &Path, ids: &[u64]) {
    let ca = Ca::create(dir).unwrap();
    for &id in ids {
        ca.issue_node(dir, id, &[]).unwrap();
    }
}

/// Dials `addr` under TLS with node `cert_of`'s certificate (of `dir`'s CA),
/// expecting node `to`, and says HELLO as node `from`.
async fn tls_hello(
    dir: &Path,
    cert_of: u64,
    from: u64,
    to: u64,
    addr: std::net::SocketAddr,
) -> Option<Framed<tokio_rustls::client::TlsStream<TcpStream>, FrameCodec>> {
    let tls = PeerTls::load(dir, cert_of).unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let stream = connector.connect(PeerTls::server_name(to), stream).await.ok()?;
    let mut conn = Framed::new(stream, FrameCodec::new());
    conn.send(Frame::Hello(Handshake { cluster_id: CLUSTER, from, to })).await.ok()?;
    Some(conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_the_clusters_certificates_talk_and_strangers_are_refused() {
    let certs = tempfile::tempdir().unwrap();
    issue(certs.path(), &[1, 2, 3]);
    let addr1 = unused_addr();
    let mut three = Node::start_tls(
        3,
        loopback(),
        BTreeMap::from([(1, addr1)]),
        limits(),
        Some(PeerTls::load(certs.path(), 3).unwrap()),
    )
    .await;
    let mut one = Node::start_tls(
        1,
        addr1,
        BTreeMap::from([(3, three.addr())]),
        limits(),
        Some(PeerTls::load(certs.path(), 1).unwrap()),
    )
    .await;
    one.wait_connected(3).await;
    three.wait_connected(1).await;
    one.handle.send(3, Bytes::from_static(b"over tls")).unwrap();
    assert_eq!(three.recv_from(1, 1).await, vec![Bytes::from_static(b"over tls")]);
    let rejected_before = three.handle.stats().connections_rejected;

    // Plain TCP, as a node without certificates (or any stranger) speaks.
    let mut plain = TcpStream::connect(three.addr()).await.unwrap();
    let hello = [0u8; 40];
    let _ = plain.write_all(&hello).await;
    closed_by_peer(&mut plain, "a plain connection").await;

    // A certificate of another CA.
    let other = tempfile::tempdir().unwrap();
    issue(other.path(), &[1]);
    if let Some(mut conn) = tls_hello(other.path(), 1, 1, 3, three.addr()).await {
        let answer = tokio::time::timeout(common::DEADLINE, conn.next()).await.unwrap();
        assert!(!matches!(answer, Some(Ok(Frame::Ack(_)))), "another CA's node was answered");
    }

    // Node 2's real certificate, claiming to be node 1 (a member node 3
    // expects): the newest connection would otherwise evict the real one.
    if let Some(mut conn) = tls_hello(certs.path(), 2, 1, 3, three.addr()).await {
        let answer = tokio::time::timeout(common::DEADLINE, conn.next()).await.unwrap();
        assert!(!matches!(answer, Some(Ok(Frame::Ack(_)))), "node 2 posed as node 1");
    }
    let handle = three.handle.clone();
    eventually("the three strangers counted as rejected", || {
        handle.stats().connections_rejected == rejected_before + 3
    })
    .await;

    // The real peers were not disturbed.
    three.handle.send(1, Bytes::from_static(b"still here")).unwrap();
    assert_eq!(one.recv_from(3, 1).await, vec![Bytes::from_static(b"still here")]);
    let disturbed: Vec<_> = three
        .pending_events()
        .into_iter()
        .chain(one.pending_events())
        .filter(|e| !matches!(e, cairn_transport::Event::Message { .. }))
        .collect();
    assert!(disturbed.is_empty(), "real peers disturbed: {disturbed:?}");
}

/// A dialing node checks that it reached the node it meant: a listener with
/// another node's certificate at node 3's address is not taken for node 3.
#[tokio::test]
async fn a_dialer_refuses_a_node_that_is_not_the_one_it_dialed() {
    let certs = tempfile::tempdir().unwrap();
    issue(certs.path(), &[1, 2]);
    // Node 2 listens where node 1 believes node 3 is.
    let two = Node::start_tls(
        2,
        loopback(),
        BTreeMap::from([(1, unused_addr())]),
        limits(),
        Some(PeerTls::load(certs.path(), 2).unwrap()),
    )
    .await;
    let one = Node::start_tls(
        1,
        loopback(),
        BTreeMap::from([(3, two.addr())]),
        limits(),
        Some(PeerTls::load(certs.path(), 1).unwrap()),
    )
    .await;
    let handle = one.handle.clone();
    eventually("node 1 refuses the impostor it reached", || {
        handle.stats().connections_rejected >= 1
    })
    .await;
    assert!(!one.handle.is_connected(3));
}
