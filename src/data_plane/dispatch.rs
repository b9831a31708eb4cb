//! Where every request goes.
//!
//! `/health` is answered here. `/<uuid>/...` (a canonical uuid, either case) belongs
//! to the service with that uuid: its router is looked up in the routing snapshot and
//! called with the `/<uuid>` prefix stripped, so `/<uuid>/echo` reaches the route
//! `/echo` of the `echo` service. Every other path belongs to the admin API, whose
//! router the composition root hands in. Both get the same body rules, the same
//! access log line, and server errors logged here, once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{
    header, uri::PathAndQuery, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body::Body as HttpBody;
use tower::ServiceExt;
use uuid::Uuid;

use super::access_log::access_line;
use super::body::{linger, BodyGuard, BodyLimits, Cut};
use super::routes::RouteTable;
use crate::contract::http::{plain, ApiError, ErrorCause};

/// Who sent a request, as the connection tells.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The connection came in while the data plane was full: it may only reach
    /// `/health` and the admin API, and is closed after one answer.
    pub reserve: bool,
}

/// Routes requests to the admin API or to a running service.
pub(crate) struct Dispatcher {
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
            let (method, uri) = (request.method().clone(), request.uri().clone());
            let response = self.route(peer, request).await;
            log_server_error(&response, method.as_str(), uri.path());
            return response;
        }
        let started = Instant::now();
        // Cloning the URI shares its bytes; copying the path out would allocate.
        let method = request.method().clone();
        let uri = request.uri().clone();
        let response = self.route(peer, request).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        log_server_error(&response, method.as_str(), uri.path());
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
            return health_response(request.method() == Method::HEAD);
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

/// Logs what caused a server error, once, wherever it was made (see `ApiError`).
fn log_server_error(response: &Response<Body>, method: &str, path: &str) {
    if let Some(ErrorCause(cause)) = response.extensions().get::<ErrorCause>() {
        tracing::error!(status = response.status().as_u16(), %method, %path, %cause, "request failed");
    }
}

/// The body of `GET /health`: the envelope with the message `ok`.
const HEALTH_BODY: &[u8] = br#"{"success":true,"message":"ok"}"#;

/// The answer to `GET` (or, with `head`, `HEAD`) `/health`. Answered before any
/// routing: it is asked often and never changes.
pub(crate) fn health_response(head: bool) -> Response<Body> {
    let body = if head {
        Body::empty()
    } else {
        Body::from(HEALTH_BODY)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HEALTH_BODY.len().into());
    response
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
pub(crate) fn service_uuid(path: &str) -> Option<Uuid> {
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
