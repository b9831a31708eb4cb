//! Accepting connections, bounding them, and shutting down gracefully.
//!
//! Like mini-redis, the accept loop takes a permit from a semaphore before accepting,
//! so at most `max_connections` are served at once and the rest wait in the kernel's
//! backlog. Each accepted connection is handed to one of the data-plane [`Workers`]
//! (one thread per core, as nginx and HAProxy do), which serves it to the end. On
//! shutdown the loop stops accepting, every connection is told to finish its in-flight
//! request and close, and the server waits (up to a limit) for all the permits to come
//! back.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::admission::{self, Admission, Refusal};
use super::dispatch::Door;
use super::worker::Workers;
use crate::contract::http::TEXT_PLAIN;

/// The limits of the HTTP layer.
#[derive(Debug, Clone)]
pub(crate) struct ServerLimits {
    pub max_connections: u32,
    pub max_connections_per_ip: u32,
    pub max_header_bytes: u32,
    pub header_timeout: Duration,
    /// How long a response may wait for a client that reads nothing.
    pub send_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// Refused connections being answered at once; past this they are just closed.
const MAX_REFUSING: usize = 256;
/// How long a refused connection is read from (so the client sees the answer, not a
/// reset) before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Most headers in one request; more is a 431.
pub(super) const MAX_HEADERS: usize = 100;

/// A listening socket and what it serves.
pub(crate) struct Listener {
    pub socket: TcpListener,
    pub door: Door,
    /// Whether its connections start with a TLS handshake.
    pub tls: bool,
}

/// Serves `listeners` on `workers` until `shutdown` completes, then drains the
/// connections and stops the workers.
pub(crate) async fn serve(
    listeners: Vec<Listener>,
    workers: Workers,
    limits: &ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let max_connections = limits.max_connections.max(1) as usize + admission::RESERVED;
    let permits = Arc::new(Semaphore::new(max_connections));
    let admission = Admission::new(
        limits.max_connections as usize,
        limits.max_connections_per_ip as usize,
    );
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    // Accepted connections are registered only with the worker that serves them, not
    // with this runtime first: the socket is watched for readiness and accepted by hand.
    let mut watched = Vec::with_capacity(listeners.len());
    for Listener { socket, door, tls } in listeners {
        let registered = socket.into_std().and_then(|listener| {
            // SAFETY: the std listener owns its descriptor, which stays open and the
            // same for as long as the AsyncFd owns the listener.
            unsafe { AsyncFd::register_with_interest(listener, Interest::READABLE) }
                .map_err(std::io::Error::from)
        });
        match registered {
            Ok(listener) => watched.push((listener, (door, tls))),
            Err(error) => {
                tracing::error!(%error, "could not watch a listening socket");
                return;
            }
        }
    }

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let ((stream, client), door) = tokio::select! {
            accepted = accept_any(&watched) => accepted,
            () = &mut shutdown => break,
        };
        match admission.admit(client.ip()) {
            Ok(admitted) => workers.assign(stream, client, door, admitted, permit),
            Err(refusal) => {
                let status = match refusal {
                    Refusal::TooManyFromAddress => hyper::StatusCode::TOO_MANY_REQUESTS,
                    Refusal::Full => hyper::StatusCode::SERVICE_UNAVAILABLE,
                };
                workers.log_refused(client, status);
                // A TLS client could not read a plain answer: it is just closed.
                let (_, tls) = door;
                if !tls {
                    refuse(stream, refusal, &refusing);
                }
            }
        }
    }

    drop(watched);
    workers.finish_connections();
    let drained = tokio::time::timeout(
        limits.shutdown_timeout,
        permits.acquire_many(u32::try_from(max_connections).unwrap_or(u32::MAX)),
    )
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = max_connections - permits.available_permits(),
            "connections still open after the shutdown timeout; closing them"
        );
    }
    workers.stop().await;
}

/// Answers a connection that is not let in with a 429 (or 503) and closes it. The
/// answer is written at once; the socket is read a little longer, or closing it with
/// the client's request unread would reset the connection and lose the answer.
fn refuse(stream: std::net::TcpStream, refusal: Refusal, refusing: &Arc<Semaphore>) {
    let Ok(slot) = Arc::clone(refusing).try_acquire_owned() else {
        return;
    };
    let (status, message) = match refusal {
        Refusal::TooManyFromAddress => (
            "429 Too Many Requests",
            "Too many connections from this address.\n",
        ),
        Refusal::Full => (
            "503 Service Unavailable",
            "Herve is at its connection limit; try again.\n",
        ),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {TEXT_PLAIN}\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{message}",
        message.len()
    );
    tokio::spawn(async move {
        let _slot = slot;
        let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) else {
            return;
        };
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            stream.write_all(answer.as_bytes()).await?;
            stream.shutdown().await?;
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok::<(), std::io::Error>(())
        };
        let _ = tokio::time::timeout(REFUSAL_LINGER, exchange).await;
    });
}

/// The next connection on any of `listeners`, with the door it came through and
/// whether it is TLS.
async fn accept_any(
    listeners: &[(AsyncFd<std::net::TcpListener>, (Door, bool))],
) -> ((std::net::TcpStream, SocketAddr), (Door, bool)) {
    if let [(only, door)] = listeners {
        return (accept(only).await, *door);
    }
    let accepts = listeners
        .iter()
        .map(|(listener, door)| Box::pin(async move { (accept(listener).await, *door) }));
    futures_util::future::select_all(accepts).await.0
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
