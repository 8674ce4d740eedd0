//! gRPC between agents over mutual TLS with the cluster's CA (see
//! [`cairn_tls::AgentTls`]): the server's stream of accepted connections,
//! each one's handshake done apart so that a slow one holds up no other,
//! and the client's connector.
//!
//! An agent takes a call only from a client whose certificate is the CA's
//! and names an agent: a stranger, or a node's certificate, gets no
//! connection at all.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tonic::codegen::http::Uri;

/// How long a caller has to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in flight at once; more connections wait to be accepted.
const HANDSHAKES_MAX: usize = 64;
/// Accepted connections waiting for the server to take them.
const QUEUE: usize = 64;

/// One accepted, authenticated connection.
pub struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

/// The connections `listener` accepts whose callers prove to be agents of
/// the cluster, for `serve_with_incoming`. The accepting task ends when the
/// stream is dropped.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<TlsConn>(QUEUE);
    let accepting = tokio::spawn(accept_loop(listener, TlsAcceptor::from(config), tx));
    let guard = AbortOnDrop(accepting);
    futures_util::stream::unfold((rx, guard), |(mut rx, guard)| async move {
        let conn = rx.recv().await?;
        Some((Ok(conn), (rx, guard)))
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, tx: mpsc::Sender<TlsConn>) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
        let (tcp, from) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(error = %e, "cannot accept an agent connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let _ = tcp.set_nodelay(true);
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
                    match cairn_tls::check_agent(certs) {
                        Ok(()) => {
                            let _ = tx.send(TlsConn(tls)).await;
                        }
                        Err(why) => tracing::warn!(%from, %why, "refused an agent call"),
                    }
                }
                Ok(Err(e)) => tracing::warn!(%from, error = %e, "refused an agent call"),
                Err(_) => tracing::warn!(%from, "an agent call's handshake timed out"),
            }
        });
    }
}

/// Dials agents over TLS, presenting this agent's certificate and expecting
/// the other's to name an agent.
#[derive(Clone)]
pub struct Connector {
    pub config: Arc<rustls::ClientConfig>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = TlsConnector::from(self.config.clone());
        Box::pin(async move {
            let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("an agent address needs a host and a port: {uri}"),
                ));
            };
            // A bracketed IPv6 literal dials without its brackets.
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                connector.connect(cairn_tls::AgentTls::server_name(), tcp),
            )
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "the TLS handshake timed out")
            })??;
            Ok(TokioIo::new(tls))
        })
    }
}
