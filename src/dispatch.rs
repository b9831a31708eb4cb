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
use http_body_util::{BodyExt, Limited};
use tower::ServiceExt;
use uuid::Uuid;

use crate::api::ApiError;
use crate::routing::RouteTable;
use axum::response::IntoResponse;

/// Routes requests to the admin API or to a running service.
pub struct Dispatcher {
    routes: Arc<RouteTable>,
    admin: Router,
    /// Where admin requests run (see [`Dispatcher::admin`]).
    control_plane: tokio::runtime::Handle,
    max_body_bytes: u64,
    body_timeout: Duration,
    access_log: bool,
}

impl Dispatcher {
    pub fn new(
        routes: Arc<RouteTable>,
        admin: Router,
        control_plane: tokio::runtime::Handle,
        max_body_bytes: u64,
        body_timeout: Duration,
        access_log: bool,
    ) -> Self {
        Dispatcher {
            routes,
            admin,
            control_plane,
            max_body_bytes,
            body_timeout,
            access_log,
        }
    }

    /// Answers one request from `client`.
    pub async fn handle<B>(&self, client: SocketAddr, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if !self.access_log {
            return self.route(client, request).await;
        }
        let started = Instant::now();
        // Cloning the URI shares its bytes; copying the path out would allocate.
        let method = request.method().clone();
        let uri = request.uri().clone();
        let response = self.route(client, request).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        access_line(
            client,
            response.status(),
            method.as_str(),
            uri.path(),
            latency_us,
        );
        response
    }

    /// Writes the access line of a request that never reached [`Dispatcher::handle`]:
    /// one hyper refused while reading it (it answered `status` itself and closed).
    pub fn log_refused(&self, client: SocketAddr, status: StatusCode) {
        if self.access_log {
            access_line(client, status, "-", "-", 0);
        }
    }

    async fn route<B>(&self, client: SocketAddr, request: Request<B>) -> Response<Body>
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
        if declared_length(&request).is_some_and(|length| length > self.max_body_bytes) {
            linger(request.into_body());
            // Service traffic gets plain text; admin clients get the JSON envelope.
            return match service {
                Some(_) => plain(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is too large.\n",
                ),
                None => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is too large.",
                )
                .into_response(),
            };
        }
        let mut request = request.map(|body| self.guard(body));
        let Some(uuid) = service else {
            if request.uri().path().starts_with("/services") {
                // The admin API throttles clients that keep failing to authenticate.
                request.extensions_mut().insert(ConnectInfo(client));
            }
            return self.admin(request).await;
        };
        let Some(router) = self.routes.get(&uuid) else {
            return plain(
                StatusCode::NOT_FOUND,
                "No running service answers at this path.\n",
            );
        };
        let Some(mut request) = strip_service_prefix(request) else {
            return plain(StatusCode::BAD_REQUEST, "The request path is invalid.\n");
        };
        // Services may want the client's address (proxies forward it).
        request.extensions_mut().insert(ConnectInfo(client));
        match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
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

    /// Bounds a request body in size and in how long it may stall.
    fn guard<B>(&self, body: B) -> Body
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if body.is_end_stream() {
            // Most requests (GET) have no body: nothing to guard.
            return Body::new(body);
        }
        let max = usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX);
        Body::new(Limited::new(StallGuard::new(body, self.body_timeout), max))
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

/// Fails a body that sends nothing for `timeout`, so a client that stalls mid-body
/// cannot hold a request (and whatever it holds) forever. Dropped unfinished (and not
/// for stalling), it leaves the rest of the body to [`linger`].
struct StallGuard<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> {
    /// Taken when dropped, to be read to its end; gone at once if it stalled.
    inner: Option<B>,
    timeout: Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> StallGuard<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        StallGuard {
            inner: Some(inner),
            timeout,
            deadline: None,
        }
    }
}

impl<B: HttpBody<Data = Bytes> + Send + Unpin + 'static> Drop for StallGuard<B> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            linger(inner);
        }
    }
}

/// The error of a body that stalled.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {0:?}")]
pub struct BodyStalled(Duration);

impl<B> HttpBody for StallGuard<B>
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
            Poll::Ready(frame) => {
                // Progress: the next frame gets a fresh allowance.
                if let Some(deadline) = this.deadline.as_mut() {
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + this.timeout);
                }
                Poll::Ready(frame.map(|result| result.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        // Not worth lingering for.
                        this.inner = None;
                        Poll::Ready(Some(Err(Box::new(BodyStalled(timeout)))))
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
