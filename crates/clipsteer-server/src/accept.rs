//! serve's accept loop. axum's own `serve` sets no timer on hyper's connections, so a client
//! that opens a connection and never finishes its headers holds it, and its socket, forever; a
//! few thousand of them exhaust the server's file descriptors. Here each connection has a header
//! read timeout (the first request's and every keep-alive request's), and at most
//! [`MAX_CONNECTIONS`] are open at once: one more is closed as soon as it is accepted.

use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Open connections at once. Well under the usual 1024 descriptors a process may hold, so that
/// model files and part files can still be opened when every connection is taken.
pub const MAX_CONNECTIONS: usize = 512;

/// How long a client has to send a request's headers, from the moment the connection is open or
/// the previous response was sent. nginx's `client_header_timeout` is 60 s; browsers and curl
/// send headers in one write, so a few seconds are plenty.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting and lets open
/// connections finish their requests (a running job runs to its end, as with axum's graceful
/// shutdown).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()>,
    header_timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Out of descriptors, or a connection reset before it was accepted: wait a
                // moment instead of spinning, then go on.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let mut app = app.clone();
                tower_service::Service::call(&mut app, request.map(axum::body::Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stop.wait_for(|stopping| *stopping) => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every slot back means every connection has ended.
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
}
