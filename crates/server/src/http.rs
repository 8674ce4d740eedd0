//! Serving HTTP/1.1 connections with bounds a stranger cannot wear down.
//!
//! - At most [`NodeConfig::max_connections`] connections are served at once;
//!   past that, new ones wait in the kernel's backlog until one closes.
//! - A request's headers must arrive within [`HEADER_READ_TIMEOUT`] of the
//!   connection being ready for them. The clock runs from the end of the
//!   last answer too, so it is also how long an idle kept-alive connection
//!   stays open. A client that sends a byte every few seconds (slowloris)
//!   holds a connection no longer than that.
//! - A body must arrive within [`BODY_READ_TIMEOUT`] (the `Body` extractor).
//! - With TLS (a node with certificates), the handshake must finish within
//!   [`HEADER_READ_TIMEOUT`] too, and counts against the connection cap.
//! - On shutdown the listener closes at once; connections finish the request
//!   they are serving, idle ones close.
//!
//! [`NodeConfig::max_connections`]: crate::NodeConfig::max_connections

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once by default.
pub const MAX_CONNECTIONS_DEFAULT: usize = 1024;
/// How long a request's headers may take, and how long a connection may
/// stay idle between requests.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a request's body may take to arrive, once its headers did.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The most bytes of headers a request may have.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed accept (out of file descriptors, say), so the loop
/// does not spin while the cause lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown`
/// completes, then waits for the connections to finish what they serve.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    max_connections: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(HEADER_BYTES_MAX.max(8192));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let Some(acceptor) = tls.clone() else {
            let connection =
                graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "an HTTP connection ended with an error");
                }
                drop(permit);
            });
            continue;
        };
        let (watcher, builder) = (graceful.watcher(), builder.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = watcher.watch(connection).await {
                        tracing::debug!(%error, "an HTTPS connection ended with an error");
                    }
                }
                Ok(Err(error)) => tracing::debug!(%error, "a TLS handshake failed"),
                Err(_) => tracing::debug!("a TLS handshake timed out"),
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
