//! Kept-alive connections to one upstream.
//!
//! A request leases an idle connection (or opens one), sends on it directly (no task
//! between the request and the connection's sender), and gives it back once the
//! response body has been read to its end. A connection the upstream closed meanwhile is
//! noticed when leased and thrown away; a request that it never sent goes out again on a
//! fresh connection.
//!
//! Each data-plane worker keeps its own idle connections: a connection's task runs on
//! the worker that opened it, and a request sent on it from that same thread never
//! waits on another core.
//!
//! The pool closes its own idle connections once they are past [`IDLE_TIMEOUT`]: a
//! sweeper task starts with the first connection and ends with the pool.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use axum::body::Body;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::tls::UpstreamTls;
use crate::util::lock;

/// Idle connections kept per upstream; more are closed when their response ends.
const MAX_IDLE: usize = 1024;
/// An idle connection older than this is closed rather than used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the idle connections past their time are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Most bytes read from an upstream ahead of what its client has taken.
const READ_AHEAD: usize = 64 * 1024;
/// Separate idle lists; workers beyond this many share them (still correct, less local).
const SHARDS: usize = 16;

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("could not connect: {0}")]
    Refused(#[from] std::io::Error),
    #[error("connecting took longer than {0:?}")]
    TimedOut(Duration),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
}

/// The idle connections of one upstream.
#[derive(Default)]
pub(crate) struct ConnPool {
    /// Per worker, with when each went idle.
    shards: [Mutex<Vec<Idle>>; SHARDS],
    /// The task closing idle connections past their time; stopped with the pool.
    sweeper: OnceLock<tokio::task::AbortHandle>,
}

impl Drop for ConnPool {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.get() {
            sweeper.abort();
        }
    }
}

type Idle = (SendRequest<Body>, Instant);

/// A connection lent to one request.
pub(crate) struct Lease {
    sender: Option<SendRequest<Body>>,
    pool: Arc<ConnPool>,
    /// Whether it had served a request before (so it may have gone stale).
    pub reused: bool,
}

impl std::fmt::Debug for ConnPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = self.shards.iter().map(|shard| lock(shard).len()).sum();
        f.debug_struct("ConnPool").field("idle", &idle).finish()
    }
}

impl ConnPool {
    /// An empty pool.
    pub fn new() -> Arc<ConnPool> {
        Arc::new(ConnPool::default())
    }

    /// An idle connection ready for a request, or a new one to `target` (`host:port`),
    /// over TLS with `tls`.
    pub async fn lease(
        self: &Arc<Self>,
        target: &str,
        tls: Option<&UpstreamTls>,
        connect_timeout: Duration,
    ) -> Result<Lease, ConnectError> {
        self.sweeper.get_or_init(|| {
            let pool = Arc::downgrade(self);
            tokio::spawn(sweep(pool)).abort_handle()
        });
        if let Some(sender) = self.take_ready() {
            return Ok(Lease {
                sender: Some(sender),
                pool: Arc::clone(self),
                reused: true,
            });
        }
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let timed_out = |_| ConnectError::TimedOut(connect_timeout);
        let stream = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(target))
            .await
            .map_err(timed_out)??;
        // Small requests should leave at once, not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let sender = match tls {
            None => handshake(stream).await?,
            Some(tls) => {
                let secured = tls.connector.connect(tls.name.clone(), stream);
                let stream = tokio::time::timeout_at(deadline, secured)
                    .await
                    .map_err(timed_out)?
                    .map_err(ConnectError::Tls)?;
                handshake(stream).await?
            }
        };
        Ok(Lease {
            sender: Some(sender),
            pool: Arc::clone(self),
            reused: false,
        })
    }

    /// The most recently returned connection that can take a request now. Closed ones
    /// are dropped; one whose last response is still being wound up stays for later.
    fn take_ready(&self) -> Option<SendRequest<Body>> {
        let mut idle = self.shard();
        let now = Instant::now();
        let mut index = idle.len();
        while index > 0 {
            index -= 1;
            let (sender, since) = &idle[index];
            if sender.is_closed() || now.duration_since(*since) > IDLE_TIMEOUT {
                idle.swap_remove(index);
            } else if sender.is_ready() {
                return Some(idle.swap_remove(index).0);
            }
        }
        None
    }

    /// Closes what would be expired at `now`.
    fn close_idle_at(&self, now: Instant) {
        for shard in &self.shards {
            let mut idle = lock(shard);
            idle.retain(|(sender, since)| {
                !sender.is_closed() && now.saturating_duration_since(*since) <= IDLE_TIMEOUT
            });
        }
    }

    fn give_back(&self, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.shard();
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }
}

impl ConnPool {
    /// The idle list of the worker running this thread.
    fn shard(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        let index = crate::runtime::current_worker().map_or(0, |worker| (worker + 1) % SHARDS);
        lock(&self.shards[index])
    }
}

/// HTTP/1.1 on a new connection, served by a task of its own.
async fn handshake<I>(io: I) -> Result<SendRequest<Body>, hyper::Error>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::Builder::new()
        // A response read ahead of a slow client stays small.
        .max_buf_size(READ_AHEAD)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended");
        }
    });
    Ok(sender)
}

/// Closes the idle connections that are past their time or closed already, so that a
/// burst does not leave them open until the next request comes; ends with the pool.
async fn sweep(pool: Weak<ConnPool>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        pool.close_idle_at(Instant::now());
    }
}

impl Lease {
    pub fn sender(&mut self) -> Option<&mut SendRequest<Body>> {
        self.sender.as_mut()
    }

    /// The connection is not to be used again (it was upgraded, or failed).
    pub fn discard(mut self) {
        self.sender = None;
    }
}

impl Drop for Lease {
    /// Back to the pool: the lease lives as long as the response body, so by now the
    /// connection has carried the whole exchange.
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.give_back(sender);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn expired_idle_connections_are_closed_without_waiting_for_a_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let target = listener.local_addr().expect("addr").to_string();
        // An upstream that answers one request, then reports when Herve hangs up.
        let upstream = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buffer = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let read = stream.read(&mut buffer).await.expect("read");
                assert!(read > 0, "closed before the request");
                seen.extend_from_slice(&buffer[..read]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .expect("write");
            // Returns once Herve closes the connection.
            while stream.read(&mut buffer).await.expect("read") > 0 {}
        });

        let pool = ConnPool::new();
        let mut lease = pool
            .lease(&target, None, Duration::from_secs(5))
            .await
            .expect("lease");
        let request = http::Request::get("/")
            .body(Body::empty())
            .expect("request");
        let sender = lease.sender().expect("sender");
        let response = sender.send_request(request).await.expect("response");
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body");
        assert_eq!(&body.to_bytes()[..], b"ok");
        drop(lease);

        // Still fresh: kept.
        pool.close_idle_at(Instant::now());
        assert!(format!("{pool:?}").contains("idle: 1"), "{pool:?}");
        // As if a minute had passed with no request.
        pool.close_idle_at(Instant::now() + IDLE_TIMEOUT + Duration::from_secs(1));
        assert!(format!("{pool:?}").contains("idle: 0"), "{pool:?}");
        tokio::time::timeout(Duration::from_secs(5), upstream)
            .await
            .expect("the upstream saw the connection closed")
            .expect("upstream task");
    }
}
