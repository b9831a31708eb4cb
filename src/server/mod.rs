//! The HTTP server: accepting connections, bounding them, and shutting down gracefully.
//!
//! Like mini-redis, the accept loop takes a permit from a semaphore before accepting,
//! so at most `max_connections` are served at once and the rest wait in the kernel's
//! backlog. Each accepted connection is handed to one of the data-plane [`Workers`]
//! (one thread per core, as nginx and HAProxy do), which serves it to the end. On
//! shutdown the loop stops accepting, every connection is told to finish its in-flight
//! request and close, and the server waits (up to a limit) for all the permits to come
//! back.

mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub use worker::{current_worker, Workers};

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

/// Serves `listener` on `workers` until `shutdown` completes, then drains the
/// connections and stops the workers.
pub async fn serve(
    listener: TcpListener,
    workers: Workers,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max_connections as usize));
    // Accepted connections are registered only with the worker that serves them, not
    // with this runtime first: the socket is watched for readiness and accepted by hand.
    let watched = listener.into_std().and_then(|listener| {
        // SAFETY: the std listener owns its descriptor, which stays open and the same
        // for as long as the AsyncFd owns the listener.
        unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
            .map_err(std::io::Error::from)
    });
    let listener = match watched {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "could not watch the listening socket");
            return;
        }
    };

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
        workers.assign(stream, client, permit);
    }

    drop(listener);
    workers.finish_connections();
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
    workers.stop().await;
}

/// Accepts one connection, riding out transient errors (such as running out of file
/// descriptors) instead of ending the server.
async fn accept(listener: &AsyncFd<std::net::TcpListener>) -> (std::net::TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = match listener.readable().await {
            Ok(mut ready) => match ready.try_io(|listener| listener.get_ref().accept()) {
                Ok(accepted) => accepted,
                // Not ready after all: wait for the next readiness.
                Err(_would_block) => continue,
            },
            Err(error) => Err(error),
        };
        match accepted {
            Ok((stream, client)) => {
                // Small responses should leave at once, not wait for Nagle; the
                // worker's runtime needs the socket non-blocking.
                let _ = stream.set_nodelay(true);
                if let Err(error) = stream.set_nonblocking(true) {
                    tracing::debug!(%client, %error, "could not set up the connection");
                    continue;
                }
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
