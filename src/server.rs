//! The HTTP server: accepting connections, bounding them, and shutting down gracefully.
//!
//! Like mini-redis, the accept loop takes a permit from a semaphore before accepting,
//! so at most `max_connections` are served at once and the rest wait in the kernel's
//! backlog. On shutdown the loop stops accepting, every connection is told to finish
//! its in-flight request and close, and the server waits (up to a limit) for all the
//! permits to come back.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::dispatch::Dispatcher;

/// The limits of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub max_connections: u32,
    pub max_header_bytes: u32,
    pub header_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// Most headers in one request; more is a 431.
const MAX_HEADERS: usize = 100;

/// Serves `listener` until `shutdown` completes, then drains the connections.
pub async fn serve(
    listener: TcpListener,
    dispatcher: Arc<Dispatcher>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections as usize));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_headers(MAX_HEADERS)
        .max_header_size(limits.max_header_bytes as usize)
        .keep_alive(true);

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = accept(&listener) => accepted,
            () = &mut shutdown => break,
        };
        let service = {
            let dispatcher = Arc::clone(&dispatcher);
            hyper::service::service_fn(move |request| {
                let dispatcher = Arc::clone(&dispatcher);
                async move { Ok::<_, Infallible>(dispatcher.handle(client, request).await) }
            })
        };
        let connection = http
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopping(&mut stop) => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%client, %error, "connection ended with an error");
            }
            drop(permit);
        });
    }

    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(
        limits.shutdown_timeout,
        permits.acquire_many(max_connections),
    )
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = max_connections as usize - permits.available_permits(),
            "connections still open after the shutdown timeout; closing them"
        );
    }
}

/// Completes once shutdown is announced (or its sender is gone).
async fn stopping(stop: &mut watch::Receiver<bool>) {
    // `wait_for` hands out a read guard that is not `Send`; drop it inside.
    let _ = stop.wait_for(|stopping| *stopping).await.map(|_| ());
}

/// Accepts one connection, riding out transient errors (such as running out of file
/// descriptors) instead of ending the server.
async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, client)) => {
                // Small responses should leave at once, not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return (stream, client);
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
