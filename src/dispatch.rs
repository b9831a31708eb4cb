//! Where every request goes.
//!
//! `/<uuid>/...` (a canonical uuid, either case) belongs to the service with that uuid:
//! its router is looked up in the routing snapshot and called with the `/<uuid>` prefix
//! stripped, so `/<uuid>/echo` reaches the route `/echo` of the `echo` service. Every
//! other path belongs to the admin API. Both get the same body limits and the same
//! access log line.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{
    header, uri::PathAndQuery, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::ServiceExt;
use uuid::Uuid;

use crate::api::ApiError;
use crate::routing::RouteTable;
use axum::response::IntoResponse;

/// Who sent a request, as the connection tells.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The connection came in while the data plane was full: it may only reach
    /// `/health` and the admin API, and is closed after one answer.
    pub reserve: bool,
}

/// Routes requests to the admin API or to a running service.
pub struct Dispatcher {
    routes: Arc<RouteTable>,
    admin: Router,
    /// Where admin requests run (see [`Dispatcher::admin`]).
    control_plane: tokio::runtime::Handle,
    body_limits: BodyLimits,
    access_log: bool,
}

impl Dispatcher {
    pub fn new(
        routes: Arc<RouteTable>,
        admin: Router,
        control_plane: tokio::runtime::Handle,
        body_limits: BodyLimits,
        access_log: bool,
    ) -> Self {
        Dispatcher {
            routes,
            admin,
            control_plane,
            body_limits,
            access_log,
        }
    }

    /// Answers one request from `peer`.
    pub async fn handle<B>(&self, peer: Peer, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if !self.access_log {
            return self.route(peer, request).await;
        }
        let started = Instant::now();
        // Cloning the URI shares its bytes; copying the path out would allocate.
        let method = request.method().clone();
        let uri = request.uri().clone();
        let response = self.route(peer, request).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        access_line(
            peer.addr,
            response.status(),
            method.as_str(),
            uri.path(),
            latency_us,
        );
        response
    }

    /// Writes the access line of a request that never reached [`Dispatcher::handle`]:
    /// one hyper refused while reading it (it answered `status` itself and closed), or
    /// a connection refused before it was served.
    pub fn log_refused(&self, client: SocketAddr, status: StatusCode) {
        if self.access_log {
            access_line(client, status, "-", "-", 0);
        }
    }

    async fn route<B>(&self, peer: Peer, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let mut response = self.route_unclosed(peer, request).await;
        if peer.reserve {
            // A reserved slot serves one answer: it must be free for the next admin.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    async fn route_unclosed<B>(&self, peer: Peer, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        // Health checks come often and never change: answered here, not by the router.
        if request.uri().path() == "/health"
            && matches!(*request.method(), Method::GET | Method::HEAD)
        {
            return crate::api::health_response(request.method() == Method::HEAD);
        }
        let service = service_uuid(request.uri().path());
        if peer.reserve && service.is_some() {
            linger(request.into_body());
            let mut refused = plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "Herve is at its connection limit; try again shortly.\n",
            );
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return refused;
        }
        if declared_length(&request).is_some_and(|length| length > self.body_limits.max_bytes) {
            linger(request.into_body());
            return too_large(service.is_some());
        }
        let (request, cut) = self.guard(request);
        let Some(uuid) = service else {
            let mut request = request;
            if request.uri().path().starts_with("/services") {
                // The admin API throttles clients that keep failing to authenticate.
                request.extensions_mut().insert(ConnectInfo(peer.addr));
            }
            let response = self.admin(request).await;
            return answer_for_cut(response, cut.as_deref(), false);
        };
        let Some(route) = self.routes.get(&uuid) else {
            return plain(
                StatusCode::NOT_FOUND,
                "No running service answers at this path.\n",
            );
        };
        let Some(mut request) = strip_service_prefix(request) else {
            return plain(StatusCode::BAD_REQUEST, "The request path is invalid.\n");
        };
        // Services may want the client's address (proxies forward it) and where they
        // are mounted.
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(peer.addr));
        extensions.insert(route.prefix);
        let response = match route.router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        answer_for_cut(response, cut.as_deref(), true)
    }

    /// Runs an admin request on the control plane's runtime rather than on the worker
    /// that read it: what a lifecycle change starts (supervisors, health checks) must
    /// not be tied to one data-plane thread, and a change runs to its end even if the
    /// client goes away.
    async fn admin(&self, request: Request<Body>) -> Response<Body> {
        let call = self.admin.clone().oneshot(request);
        match self.control_plane.spawn(call).await {
            Ok(Ok(response)) => response,
            Ok(Err(never)) => match never {},
            Err(error) => {
                tracing::error!(%error, "an admin request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The request could not be completed.",
                )
                .into_response()
            }
        }
    }

    /// Bounds a request body (see [`BodyGuard`]); with the flag that tells why it was
    /// cut off, if it was.
    fn guard<B>(&self, request: Request<B>) -> (Request<Body>, Option<Arc<AtomicU8>>)
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let (parts, body) = request.into_parts();
        if body.is_end_stream() {
            // Most requests (GET) have no body: nothing to guard.
            return (Request::from_parts(parts, Body::new(body)), None);
        }
        let cut = Arc::new(AtomicU8::new(Cut::No as u8));
        let guarded = BodyGuard::new(body, self.body_limits, Arc::clone(&cut));
        (Request::from_parts(parts, Body::new(guarded)), Some(cut))
    }
}

/// The answer to a request whose body was cut off: whatever the handler made of its
/// failed read (a 400, a 502 from an upstream that got half a body, …), the client is
/// told what happened.
fn answer_for_cut(
    response: Response<Body>,
    cut: Option<&AtomicU8>,
    service: bool,
) -> Response<Body> {
    let Some(cut) = cut else {
        return response;
    };
    match cut.load(Ordering::Relaxed) {
        c if c == Cut::TooLarge as u8 => too_large(service),
        c if c == Cut::TooSlow as u8 => {
            let mut response = if service {
                plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "The request body came too slowly.\n",
                )
            } else {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "The request body came too slowly.",
                )
                .into_response()
            };
            // What is left of the body will not be read.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
        _ => response,
    }
}

/// 413: plain text for service traffic, the JSON envelope for admin clients.
fn too_large(service: bool) -> Response<Body> {
    if service {
        plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large.\n",
        )
    } else {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "The request body is too large.",
        )
        .into_response()
    }
}

/// The one format of access lines (target `herve::access`).
fn access_line(client: SocketAddr, status: StatusCode, method: &str, path: &str, latency_us: u64) {
    tracing::info!(
        target: "herve::access",
        client = %client.ip(),
        status = status.as_u16(),
        // Displayed, not debugged: `path=/x`, not `path="/x"`.
        method = %method,
        path = %path,
        latency_us,
    );
}

/// How long the rest of a refused body is read and thrown away.
const LINGER: Duration = Duration::from_secs(10);

/// Reads and discards what remains of a body that was answered without being read to
/// its end (refused as too large, or ignored by its handler), for a while, as nginx's
/// lingering close does: a client that sends its whole body before reading (most do,
/// without `Expect: 100-continue`) would otherwise meet a reset connection instead of
/// the answer. Bounded in time; the bytes go nowhere.
fn linger<B>(body: B)
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
{
    if body.is_end_stream() {
        return;
    }
    // Bodies may be dropped where no runtime runs; then there is nobody to read for.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut body = body;
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(LINGER, drain).await;
    });
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The uuid of `/<uuid>` or `/<uuid>/...`, if the first segment is a canonical uuid.
pub fn service_uuid(path: &str) -> Option<Uuid> {
    let bytes = path.as_bytes();
    if bytes.len() < 37 || bytes[0] != b'/' || (bytes.len() > 37 && bytes[37] != b'/') {
        return None;
    }
    Uuid::try_parse_ascii(&bytes[1..37]).ok()
}

/// Rewrites `/<uuid>/rest?query` to `/rest?query`.
fn strip_service_prefix(mut request: Request<Body>) -> Option<Request<Body>> {
    let uri = request.uri();
    let rest = &uri.path()[37..];
    let rest = if rest.is_empty() { "/" } else { rest };
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{rest}?{query}")),
        None => PathAndQuery::try_from(rest),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = path_and_query.ok();
    *request.uri_mut() = Uri::from_parts(parts).ok()?;
    Some(request)
}

/// A short plain-text answer from Herve itself on the data plane (no service, no
/// upstream, a refused path, …); shared by the built-in types.
pub fn plain(status: StatusCode, message: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(message));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    response
}

/// What bounds a request body in size and in time, all of it client-controlled.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Most bytes (413 beyond).
    pub max_bytes: u64,
    /// Longest time without a byte.
    pub stall: Duration,
    /// Longest time for the whole body, from when its head has arrived.
    pub deadline: Duration,
    /// Fewest bytes a second, on average, once `grace` has passed (0: no minimum).
    pub min_rate: u64,
    pub grace: Duration,
}

/// Frames smaller than this, past a body's first, are copied out of the read buffer.
const SMALL_FRAME: usize = 1024;

/// Why a body was cut off; shared with the dispatcher, which answers for it whatever
/// the handler made of the failed read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Cut {
    No = 0,
    TooLarge = 1,
    TooSlow = 2,
}

/// The error a cut-off body gives its reader.
#[derive(Debug, thiserror::Error)]
pub enum BodyCut {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body sent nothing for {0:?}")]
    Stalled(Duration),
    #[error("the request body was not complete within {0:?}")]
    Deadline(Duration),
    #[error("the request body came slower than {0} bytes a second")]
    TooSlow(u64),
}

/// Bounds a body in size, in stalls, in total time and in rate (nginx's
/// `client_max_body_size` and `client_body_timeout`, HAProxy's `timeout http-request`):
/// a client trickling bytes cannot hold a connection, nor what a handler holds for it,
/// for long. Dropped unfinished (and not for being slow), it leaves the rest of the
/// body to [`linger`].
struct BodyGuard<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> {
    /// Taken when dropped, to be read to its end; gone at once if it was too slow.
    inner: Option<B>,
    limits: BodyLimits,
    received: u64,
    frames: u32,
    started: tokio::time::Instant,
    /// The earlier of the next stall limit and the deadline; made at the first wait.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    cut: Arc<AtomicU8>,
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> BodyGuard<B> {
    fn new(inner: B, limits: BodyLimits, cut: Arc<AtomicU8>) -> Self {
        BodyGuard {
            inner: Some(inner),
            limits,
            received: 0,
            frames: 0,
            started: tokio::time::Instant::now(),
            timer: None,
            cut,
        }
    }

    fn next_wake(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        (now + self.limits.stall).min(self.started + self.limits.deadline)
    }

    /// Fails the body: `cut` says why, to the dispatcher.
    fn fail(
        &mut self,
        cut: Cut,
        error: BodyCut,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        match cut {
            // A refused body is still read to its end, so its sender reads the 413.
            Cut::TooLarge => {
                if let Some(inner) = self.inner.take() {
                    linger(inner);
                }
            }
            // A slow one is not worth waiting for.
            _ => self.inner = None,
        }
        self.cut.store(cut as u8, Ordering::Relaxed);
        Poll::Ready(Some(Err(Box::new(error))))
    }
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> Drop for BodyGuard<B> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            linger(inner);
        }
    }
}

impl<B> HttpBody for BodyGuard<B>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = tokio::time::Instant::now();
                this.frames += 1;
                let mut frame = frame;
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limits.max_bytes {
                        return this.fail(Cut::TooLarge, BodyCut::TooLarge(this.limits.max_bytes));
                    }
                    // A small frame is a slice of the connection's read buffer and
                    // keeps all of it alive: a client trickling a byte at a time would
                    // make a handler that collects the body hold KiBs per byte. Past the
                    // first frame (most bodies have one), small ones are copied out.
                    if this.frames > 1 && data.len() < SMALL_FRAME {
                        frame = frame.map_data(|data| Bytes::copy_from_slice(&data));
                    }
                }
                let elapsed = now.duration_since(this.started);
                if this.limits.min_rate > 0
                    && elapsed > this.limits.grace
                    && u128::from(this.received) * 1000
                        < u128::from(this.limits.min_rate) * elapsed.as_millis()
                {
                    return this.fail(Cut::TooSlow, BodyCut::TooSlow(this.limits.min_rate));
                }
                // Progress: the next frame gets a fresh stall allowance.
                let wake = this.next_wake(now);
                if let Some(timer) = this.timer.as_mut() {
                    timer.as_mut().reset(wake);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|result| result.map_err(Into::into))),
            Poll::Pending => {
                let wake = this.next_wake(tokio::time::Instant::now());
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let limits = this.limits;
                        let error = if tokio::time::Instant::now() >= this.started + limits.deadline
                        {
                            BodyCut::Deadline(limits.deadline)
                        } else {
                            BodyCut::Stalled(limits.stall)
                        };
                        this.fail(Cut::TooSlow, error)
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}
