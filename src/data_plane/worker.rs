//! The data-plane workers: one thread per core, each running a single-threaded runtime
//! that serves the connections it is given from start to end.
//!
//! Why not one work-stealing runtime for everything: a proxied request wakes the
//! client's connection task, then the upstream connection's task, then the client's
//! again. Spread over threads, each of those wakeups crosses cores; on one thread they
//! are a queue push. Each worker keeps its own upstream connections too (see
//! `runtime::current_worker`), so a request never leaves the thread that read it. The admin
//! API and the services' own background work (supervisors, health checks) stay on the
//! main runtime, where the dispatcher sends admin requests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::accept::{ServerLimits, MAX_HEADERS};
use super::admission::{Admitted, Class};
use super::dispatch::{Dispatcher, Door, Peer};
use super::timed_io::TimedStream;
use super::tls::ACME_TLS_ALPN;

/// How long a stopping worker waits for its blocking tasks (file opens).
const BLOCKING_GRACE: Duration = Duration::from_secs(1);
/// Bytes a connection may buffer beyond a request head, each way.
const BUFFER_BEYOND_HEAD: usize = 48 * 1024;
/// Streams one HTTP/2 connection may have open at once (nginx's default is 128).
const H2_MAX_STREAMS: u32 = 128;
/// What an HTTP/2 connection may buffer to send, per stream.
const H2_SEND_BUFFER: usize = 64 * 1024;

/// How the HTTPS listener's connections are taken over.
#[derive(Clone)]
pub(crate) struct TlsServing {
    pub acceptor: TlsAcceptor,
    /// How long a handshake may take, from the first byte to the last.
    pub handshake_timeout: Duration,
}

/// A connection on its way to a worker, with its place in the connection limits.
struct Assigned {
    stream: std::net::TcpStream,
    client: SocketAddr,
    door: Door,
    tls: bool,
    admitted: Admitted,
    permit: OwnedSemaphorePermit,
}

/// The running workers.
pub(crate) struct Workers {
    lanes: Vec<Lane>,
    threads: Vec<JoinHandle<()>>,
    /// Cancelled when every connection should finish its request in flight and close.
    finish: CancellationToken,
    dispatcher: Arc<Dispatcher>,
}

/// The way to one worker, and how many connections it serves now.
struct Lane {
    sender: mpsc::UnboundedSender<Assigned>,
    open: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` workers (at least one) serving requests with `dispatcher`, and
    /// HTTPS connections with `tls`.
    pub fn start(
        count: usize,
        dispatcher: Arc<Dispatcher>,
        limits: &ServerLimits,
        tls: Option<TlsServing>,
    ) -> std::io::Result<Workers> {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_headers(MAX_HEADERS)
            .max_header_size(limits.max_header_bytes as usize)
            // What one connection may buffer: a head, and a little of a body either
            // way. Body chunks are copied into this buffer rather than queued, so a
            // client that reads slowly holds tens of KiB, not a queue of chunks.
            .max_buf_size(limits.max_header_bytes as usize + BUFFER_BEYOND_HEAD)
            .writev(false)
            .keep_alive(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_header_list_size(limits.max_header_bytes)
            .max_send_buf_size(H2_SEND_BUFFER)
            // Dead peers are found by pings; idle ones are closed by `serve_h2`.
            .keep_alive_interval(Some(limits.header_timeout))
            .keep_alive_timeout(limits.header_timeout);
        let finish = CancellationToken::new();
        let mut workers = Workers {
            lanes: Vec::new(),
            threads: Vec::new(),
            finish: finish.clone(),
            dispatcher: Arc::clone(&dispatcher),
        };
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (sender, receiver) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let worker = Worker {
                index,
                receiver,
                open: Arc::clone(&open),
                dispatcher: Arc::clone(&dispatcher),
                http: http.clone(),
                h2: h2.clone(),
                tls: tls.clone(),
                finishing: finish.clone(),
                send_timeout: limits.send_timeout,
                // The keep-alive limit of HTTP/1.1 (see `header_timeout`) ends idle HTTP/2 too.
                idle_timeout: limits.header_timeout,
            };
            let thread = std::thread::Builder::new()
                .name(format!("herve-worker-{index}"))
                .spawn(move || worker.run(runtime))?;
            workers.lanes.push(Lane { sender, open });
            workers.threads.push(thread);
        }
        Ok(workers)
    }

    /// Hands a connection to the worker that serves the fewest.
    pub fn assign(
        &self,
        stream: std::net::TcpStream,
        client: SocketAddr,
        (door, tls): (Door, bool),
        admitted: Admitted,
        permit: OwnedSemaphorePermit,
    ) {
        // A worker is only gone if it panicked; the others go on serving.
        let least_busy = self
            .lanes
            .iter()
            .filter(|lane| !lane.sender.is_closed())
            .min_by_key(|lane| lane.open.load(Ordering::Relaxed));
        let Some(lane) = least_busy else {
            tracing::error!(%client, "no data-plane worker is running; connection dropped");
            return;
        };
        lane.open.fetch_add(1, Ordering::Relaxed);
        let assigned = Assigned {
            stream,
            client,
            door,
            tls,
            admitted,
            permit,
        };
        if lane.sender.send(assigned).is_err() {
            lane.open.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(%client, "the data-plane worker stopped; connection dropped");
        }
    }

    /// Writes the access line of a connection refused before it was served.
    pub fn log_refused(&self, client: SocketAddr, status: StatusCode) {
        self.dispatcher.log_refused(client, status);
    }

    /// Tells every connection to finish the request in flight, then close.
    pub fn finish_connections(&self) {
        self.finish.cancel();
    }

    /// Stops the workers; connections still open are closed.
    pub async fn stop(mut self) {
        self.lanes.clear();
        let threads = std::mem::take(&mut self.threads);
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let _ = joined.await;
    }
}

/// One worker thread's share of the state.
struct Worker {
    index: usize,
    receiver: mpsc::UnboundedReceiver<Assigned>,
    open: Arc<AtomicUsize>,
    dispatcher: Arc<Dispatcher>,
    http: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    tls: Option<TlsServing>,
    finishing: CancellationToken,
    send_timeout: Duration,
    idle_timeout: Duration,
}

impl Worker {
    fn run(mut self, runtime: tokio::runtime::Runtime) {
        crate::runtime::set_current_worker(self.index);
        runtime.block_on(async {
            while let Some(assigned) = self.receiver.recv().await {
                self.serve(assigned);
            }
        });
        // The sender is gone: Herve is stopping, and what still runs here is cut.
        runtime.shutdown_timeout(BLOCKING_GRACE);
    }

    fn serve(&self, assigned: Assigned) {
        let Assigned {
            stream,
            client,
            door,
            tls,
            admitted,
            permit,
        } = assigned;
        let peer = Peer {
            addr: client,
            reserve: admitted.class == Class::Reserved,
            door,
            tls,
        };
        let open = OpenConnection {
            open: Arc::clone(&self.open),
            _admitted: admitted,
            _permit: permit,
        };
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%client, %error, "could not take the connection over");
                return;
            }
        };
        let stream = TimedStream::new(stream, self.send_timeout);
        let meter = Arc::clone(self.dispatcher.server_meter());
        meter
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let counted = Closed(Arc::clone(&meter));
        let session = Session {
            peer,
            dispatcher: Arc::clone(&self.dispatcher),
            finishing: self.finishing.clone(),
            idle_timeout: self.idle_timeout,
        };
        match (tls, &self.tls) {
            (false, _) => {
                let http = self.http.clone();
                tokio::spawn(async move {
                    session.serve_h1(&http, stream).await;
                    drop(open);
                    drop(counted);
                });
            }
            (true, Some(serving)) => {
                let serving = serving.clone();
                let (http, h2) = (self.http.clone(), self.h2.clone());
                tokio::spawn(async move {
                    let _counted = counted;
                    let handshake = serving.acceptor.accept(stream);
                    let stream =
                        match tokio::time::timeout(serving.handshake_timeout, handshake).await {
                            Ok(Ok(stream)) => {
                                meter
                                    .tls_handshakes
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                stream
                            }
                            Ok(Err(error)) => {
                                meter
                                    .tls_failures
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::debug!(%client, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                meter
                                    .tls_failures
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tracing::debug!(%client, "TLS handshake timed out");
                                return;
                            }
                        };
                    match stream.get_ref().1.alpn_protocol() {
                        Some(b"h2") => session.serve_h2(&h2, stream).await,
                        // A TLS-ALPN-01 validation: the handshake was all of it.
                        Some(ACME_TLS_ALPN) => {}
                        _ => session.serve_h1(&http, stream).await,
                    }
                    drop(open);
                });
            }
            (true, None) => tracing::error!(%client, "a TLS connection without TLS set up"),
        }
    }
}

/// Counts its connection closed when dropped, however the connection ended.
struct Closed(Arc<super::ServerMeter>);

impl Drop for Closed {
    fn drop(&mut self) {
        self.0
            .closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One client connection, once its transport (TCP or TLS) is ready.
struct Session {
    peer: Peer,
    dispatcher: Arc<Dispatcher>,
    finishing: CancellationToken,
    idle_timeout: Duration,
}

impl Session {
    async fn serve_h1<I>(self, http: &http1::Builder, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Session {
            peer,
            dispatcher,
            finishing,
            ..
        } = self;
        let service = {
            let dispatcher = Arc::clone(&dispatcher);
            hyper::service::service_fn(move |request| {
                let dispatcher = Arc::clone(&dispatcher);
                async move { Ok::<_, Infallible>(dispatcher.handle(peer, request).await) }
            })
        };
        let connection = http
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = finishing.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = result {
            // hyper answers a request it cannot parse itself (400, or 431 for a head
            // too large); it gets an access line like any other answer.
            if error.is_parse_too_large() {
                dispatcher.log_refused(peer.addr, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
            } else if error.is_parse() {
                dispatcher.log_refused(peer.addr, StatusCode::BAD_REQUEST);
            }
            tracing::debug!(client = %peer.addr, %error, "connection ended with an error");
        }
    }

    /// Serves HTTP/2 until the client is done, Herve stops, or no stream has been
    /// open for the idle timeout (HTTP/2 has no header timeout to end idle clients).
    async fn serve_h2<I>(self, h2: &http2::Builder<TokioExecutor>, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Session {
            peer,
            dispatcher,
            finishing,
            idle_timeout,
        } = self;
        let streams = Arc::new(AtomicUsize::new(0));
        let service = {
            let streams = Arc::clone(&streams);
            hyper::service::service_fn(move |request| {
                let dispatcher = Arc::clone(&dispatcher);
                let stream = OpenStream::enter(&streams);
                async move {
                    let response = dispatcher.handle(peer, request).await;
                    drop(stream);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let connection = h2.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        // Idle is counted in whole seconds without a stream open. A connection asked
        // to close (GOAWAY) gets two more quiet seconds to go, then is dropped: one
        // that never even sent its preface would otherwise stay.
        let mut second = tokio::time::interval(Duration::from_secs(1));
        second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let idle_limit = idle_timeout.as_secs().max(1);
        let mut quiet = 0u64;
        let mut closing = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break result,
                () = finishing.cancelled(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                    quiet = 0;
                }
                _ = second.tick() => {
                    quiet = if streams.load(Ordering::Relaxed) == 0 { quiet + 1 } else { 0 };
                    if closing && quiet > 2 {
                        break Ok(());
                    }
                    if !closing && quiet > idle_limit {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        quiet = 0;
                    }
                }
            }
        };
        if let Err(error) = result {
            tracing::debug!(client = %peer.addr, %error, "HTTP/2 connection ended with an error");
        }
    }
}

/// A request being answered on an HTTP/2 connection (its response head at least).
struct OpenStream(Arc<AtomicUsize>);

impl OpenStream {
    fn enter(streams: &Arc<AtomicUsize>) -> OpenStream {
        streams.fetch_add(1, Ordering::Relaxed);
        OpenStream(Arc::clone(streams))
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection being served: counted in its worker's load and in the server's limit
/// until it ends, however it ends.
struct OpenConnection {
    open: Arc<AtomicUsize>,
    _admitted: Admitted,
    _permit: OwnedSemaphorePermit,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}
