//! The public HTTP/1 listener, with the limits a stranger cannot push past.
//!
//! hyper's connection builder does the HTTP: it closes a connection whose
//! request head is incomplete after the header timeout, and refuses heads over
//! [`MAX_HEADER_BYTES`]. Around it: a cap on open connections (a semaphore
//! taken before `accept`, so extra clients wait in the kernel's backlog), an
//! idle timeout between requests, the peer address for the refusal log, and a
//! drain on shutdown.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::ConnectInfo, Router};
use hyper::{body::Incoming, server::conn::http1, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

use crate::metrics::Metrics;

/// Largest request head (request line and headers) accepted; a Svix delivery
/// sends about 1 KiB of headers. Larger heads get 431.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Largest read buffer of one connection: bounds what a connection holds
/// beyond the body it is allowed to read.
const MAX_BUFFER_BYTES: usize = 64 * 1024;

/// How long to wait before accepting again after `accept` itself failed (for
/// example when the process is out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The connection limits of the public listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once; more wait to be accepted.
    pub max_connections: usize,
    /// Time a connection has to send a complete request head, counted from
    /// when it is ready for one (accepted, or done with its last response).
    pub header_read_timeout: Duration,
    /// Time a connection may stay open, after a response, with no new
    /// request in progress (keep-alive). hyper's header timer also runs
    /// while waiting for the next request, so the shorter of the two wins.
    pub idle_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then asks every
/// connection to finish its request in progress and close, and returns once
/// all have (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUFFER_BYTES)
        .max_header_size(MAX_HEADER_BYTES);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(error.message = %shared::error::Chain(&error), "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            app: app.clone(),
            builder: builder.clone(),
            limits,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        connections.spawn(async move {
            connection.serve(stream, peer).await;
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
}

struct Connection {
    app: Router,
    builder: http1::Builder,
    limits: Limits,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        self.metrics.connection_opened();
        // Requests in progress on this connection; the idle timer runs while 0.
        let (in_progress, mut watch_progress) = watch::channel(0usize);
        let in_progress = Arc::new(in_progress);
        let app = self.app;
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let guard = InProgress::start(in_progress.clone());
            let app = app.clone();
            async move {
                let response = app.oneshot(request).await;
                drop(guard);
                Ok::<_, Infallible>(response.unwrap_or_else(|never| match never {}))
            }
        });
        let connection = self.builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let idle = idle(&mut watch_progress, self.limits.idle_timeout);
        tokio::pin!(idle);
        let mut closing = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                () = self.shutdown.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                () = &mut idle, if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        };
        if let Err(error) = result {
            if error.is_timeout() {
                self.metrics.header_timeout();
            }
            tracing::debug!(%peer, error.message = %shared::error::Chain(&error), "connection closed with an error");
        }
        self.metrics.connection_closed();
    }
}

/// Resolves once a connection that served a request has had no request in
/// progress for `limit`. Until its first request, the header timeout alone
/// applies.
async fn idle(progress: &mut watch::Receiver<usize>, limit: Duration) {
    if progress.wait_for(|n| *n > 0).await.is_err() {
        std::future::pending::<()>().await;
    }
    loop {
        if progress.wait_for(|n| *n == 0).await.is_err() {
            // The service is gone: the connection is closing by itself.
            std::future::pending::<()>().await;
        }
        tokio::select! {
            () = tokio::time::sleep(limit) => {
                if *progress.borrow() == 0 {
                    return;
                }
            }
            changed = progress.changed() => {
                if changed.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}

/// Counts one request in progress until dropped.
struct InProgress(Arc<watch::Sender<usize>>);

impl InProgress {
    fn start(sender: Arc<watch::Sender<usize>>) -> Self {
        sender.send_modify(|n| *n += 1);
        Self(sender)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
