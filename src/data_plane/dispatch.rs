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
    header,
    uri::{PathAndQuery, Scheme},
    HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body::Body as HttpBody;
use tower::ServiceExt;
use uuid::Uuid;

use super::access_log::AccessLog;
use super::body::{linger, BodyGuard, BodyLimits, Cut};
use super::routes::{first_segment, RouteTable, Target, OWN_PATHS};
use super::tls::CertTable;
use crate::contract::http::{plain, ApiError, ErrorCause, TEXT_PLAIN};
use crate::contract::{FromPeer, PEER_HEADER};

/// Who sent a request, as the connection tells.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    /// The connection came in while the data plane was full: it may only reach
    /// `/health` and the admin API, and is closed after one answer.
    pub reserve: bool,
    /// What the listener it came through serves.
    pub door: Door,
    /// Whether it came over TLS.
    pub tls: bool,
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// The admin API and the services (one port for everything).
    Both,
    /// The services and `/health` only (the admin API has its own address).
    Public,
    /// The admin API and `/health` only (`HERVE_ADMIN_ADDR`).
    Admin,
}

/// Routes requests to the admin API or to a running service.
pub(crate) struct Dispatcher {
    routes: Arc<RouteTable>,
    admin: Router,
    /// Where admin requests run (see [`Dispatcher::run_admin`]).
    control_plane: tokio::runtime::Handle,
    body_limits: BodyLimits,
    access_log: Option<Arc<AccessLog>>,
    /// ACME HTTP-01 answers.
    certificates: Arc<CertTable>,
    /// The HTTPS port plain requests are sent to (`HERVE_TLS_REDIRECT`).
    redirect_to_tls: Option<u16>,
    /// Connections and refusals, for the metrics.
    meter: Arc<super::ServerMeter>,
    /// What the other nodes of the cluster put in [`PEER_HEADER`]; `None` alone.
    peer_token: Option<HeaderValue>,
}

/// Where ACME's HTTP-01 challenges are asked (RFC 8555 §8.3).
const ACME_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// What the dispatcher needs besides the routes and the admin API.
pub(crate) struct DispatchSettings {
    pub control_plane: tokio::runtime::Handle,
    pub body_limits: BodyLimits,
    pub access_log: Option<Arc<AccessLog>>,
    pub certificates: Arc<CertTable>,
    pub redirect_to_tls: Option<u16>,
    pub meter: Arc<super::ServerMeter>,
    pub peer_token: Option<HeaderValue>,
}

impl Dispatcher {
    pub fn new(routes: Arc<RouteTable>, admin: Router, settings: DispatchSettings) -> Self {
        Dispatcher {
            routes,
            admin,
            control_plane: settings.control_plane,
            body_limits: settings.body_limits,
            access_log: settings.access_log,
            meter: settings.meter,
            certificates: settings.certificates,
            redirect_to_tls: settings.redirect_to_tls,
            peer_token: settings.peer_token,
        }
    }

    /// Answers one request from `peer`.
    pub async fn handle<B>(&self, peer: Peer, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let Some(access_log) = &self.access_log else {
            let (method, uri) = (request.method().clone(), request.uri().clone());
            let response = self.route(peer, request).await;
            log_server_error(&response, method.as_str(), uri.path());
            return response;
        };
        let started = Instant::now();
        // Cloning the URI shares its bytes; copying the path out would allocate.
        let method = request.method().clone();
        let uri = request.uri().clone();
        let response = self.route(peer, request).await;
        let latency_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        log_server_error(&response, method.as_str(), uri.path());
        access_log.line(
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
    /// The counters of connections and refusals.
    pub fn server_meter(&self) -> &Arc<super::ServerMeter> {
        &self.meter
    }

    pub fn log_refused(&self, client: SocketAddr, status: StatusCode) {
        self.meter.refused(status);
        if let Some(access_log) = &self.access_log {
            access_log.line(client, status, "-", "-", 0);
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

    async fn route_unclosed<B>(&self, peer: Peer, mut request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let path = request.uri().path();
        // Health checks come often and never change: answered here, not by the router.
        if path == "/health" && matches!(*request.method(), Method::GET | Method::HEAD) {
            return health_response(request.method() == Method::HEAD);
        }
        if !peer.tls && peer.door != Door::Admin {
            if let Some(token) = path.strip_prefix(ACME_CHALLENGE_PATH) {
                if let Some(answer) = self.certificates.http_challenge(token) {
                    let mut response = Response::new(Body::from(answer));
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
                    return response;
                }
            }
            if let Some(port) = self.redirect_to_tls {
                if path != "/health" && !path.starts_with(ACME_CHALLENGE_PATH) {
                    let host = request_parts_host(&request);
                    let uri = request.uri().clone();
                    linger(request.into_body());
                    return redirect_to_https(&host, &uri, port);
                }
            }
        }
        // Herve's own paths first; then the routes of services; an admin door serves
        // nothing else.
        let own = OWN_PATHS.contains(&first_segment(path));
        let found = match (peer.door, own) {
            (Door::Admin, _) | (Door::Both, true) => None,
            (Door::Public, true) => return not_served(),
            (Door::Public | Door::Both, false) => {
                let host = request_host(&request);
                self.routes.find(host, path)
            }
        };
        let Some(found) = found else {
            if peer.door == Door::Public || service_uuid(path).is_some() {
                return not_served();
            }
            return self.admin(peer, request).await;
        };
        if peer.reserve {
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
        // Forwarded by another node, which forwards a program's requests without
        // running its middlewares: they run here, on the node that runs it, keyed on
        // the client that node names. The header is removed either way: no service
        // ever sees it.
        let from_node = self
            .peer_token
            .as_ref()
            .is_some_and(|token| forwarded_by_node(request.headers_mut(), token));
        let limits = match &found.chain {
            None => self.body_limits,
            Some(chain) => BodyLimits {
                max_bytes: chain.max_body_bytes(self.body_limits.max_bytes),
                ..self.body_limits
            },
        };
        if declared_length(&request).is_some_and(|length| length > limits.max_bytes) {
            linger(request.into_body());
            self.meter.refused(StatusCode::PAYLOAD_TOO_LARGE);
            return too_large(true);
        }
        let (request, cut) = guard(request, limits);
        let Some(mut request) = strip_prefix(request, found.strip) else {
            return plain(StatusCode::BAD_REQUEST, "The request path is invalid.\n");
        };
        // Services may want the client's address (proxies forward it) and where they
        // are mounted; and whether it came over TLS, said only when it did (each
        // extension is an allocation, and plain HTTP is what a missing one means).
        let extensions = request.extensions_mut();
        extensions.insert(ConnectInfo(peer.addr));
        extensions.insert(found.prefix);
        if peer.tls {
            extensions.insert(Scheme::HTTPS);
        }
        if from_node {
            extensions.insert(FromPeer);
        }
        let slot = found.target.meter().begin();
        let started = Instant::now();
        let method = request.method().clone();
        let response = match &found.chain {
            None => found.target.answer(request).await,
            // Boxed: the chain's future is large, and inline it would make every
            // request's future (and its moves) as large, chain or not.
            Some(chain) => {
                // What the middlewares key on (rates, failed credentials): the client,
                // which a forwarding node names, not that node.
                let client = match from_node {
                    true => client_named_by_node(request.headers()).unwrap_or(peer.addr),
                    false => peer.addr,
                };
                Box::pin(chain.serve(&self.routes, &found.target, client, request)).await
            }
        };
        let response = answer_for_cut(response, cut.as_deref(), true);
        if matches!(response.status().as_u16(), 408 | 413) {
            self.meter.refused(response.status());
        }
        found
            .target
            .meter()
            .record(&method, response.status(), started.elapsed());
        // The answer holds its service's instance until its body ends: an instance
        // being replaced is stopped only once its last answer is out. It counts as in
        // flight until then, through the target it holds anyway (no other reference
        // to count).
        let target = found.target;
        response.map(|body| Body::new(Held { body, target, slot }))
    }

    /// An admin request: bounded as any other, with the client's address (the admin
    /// API throttles clients that keep failing to authenticate).
    async fn admin<B>(&self, peer: Peer, request: Request<B>) -> Response<Body>
    where
        B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if declared_length(&request).is_some_and(|length| length > self.body_limits.max_bytes) {
            linger(request.into_body());
            return too_large(false);
        }
        let (mut request, cut) = guard(request, self.body_limits);
        request.extensions_mut().insert(ConnectInfo(peer.addr));
        // The dashboard marks its cookie `Secure` over HTTPS.
        request.extensions_mut().insert(if peer.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        let response = self.run_admin(request).await;
        answer_for_cut(response, cut.as_deref(), false)
    }

    /// Runs an admin request on the control plane's runtime rather than on the worker
    /// that read it: what a lifecycle change starts (supervisors, health checks) must
    /// not be tied to one data-plane thread, and a change runs to its end even if the
    /// client goes away.
    async fn run_admin(&self, request: Request<Body>) -> Response<Body> {
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
}

/// Bounds a request body (see [`BodyGuard`]); with the flag that tells why it was cut
/// off, if it was.
fn guard<B>(request: Request<B>, limits: BodyLimits) -> (Request<Body>, Option<Arc<AtomicU8>>)
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
    let guarded = BodyGuard::new(body, limits, Arc::clone(&cut));
    (Request::from_parts(parts, Body::new(guarded)), Some(cut))
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

/// Rewrites `<prefix>/rest?query` to `/rest?query`, the prefix being the first `strip`
/// bytes of the path.
fn strip_prefix(mut request: Request<Body>, strip: usize) -> Option<Request<Body>> {
    if strip == 0 {
        return Some(request);
    }
    let uri = request.uri();
    let rest = uri.path().get(strip..)?;
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

/// The host a request is for: its `Host` header, or the authority of its URI.
fn request_host<B>(request: &Request<B>) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str())
        })
}

/// The host of a request without its port, for a redirect.
fn request_parts_host<B>(request: &Request<B>) -> Option<String> {
    let host = request_host(request)?;
    let without_port = match host.rsplit_once(':') {
        // `[::1]:8080` or `host:8080`, but not the colons inside `[::1]`.
        Some((name, port)) if !port.contains(']') => name,
        _ => host,
    };
    Some(without_port.to_owned())
}

/// 308 to the same URL on the HTTPS port; a request without a host cannot be sent
/// anywhere (400).
fn redirect_to_https(host: &Option<String>, uri: &Uri, port: u16) -> Response<Body> {
    let Some(host) = host else {
        return plain(
            StatusCode::BAD_REQUEST,
            "The request has no Host header to redirect to HTTPS.\n",
        );
    };
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let location = if port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{port}{path}")
    };
    let Ok(location) = HeaderValue::try_from(location) else {
        return plain(StatusCode::BAD_REQUEST, "The request's host is invalid.\n");
    };
    let mut response = plain(
        StatusCode::PERMANENT_REDIRECT,
        "This server answers over HTTPS.\n",
    );
    response.headers_mut().insert(header::LOCATION, location);
    response
}

/// 404 for a path no running service (and nothing of Herve's, here) answers.
fn not_served() -> Response<Body> {
    plain(
        StatusCode::NOT_FOUND,
        "No running service answers at this path.\n",
    )
}

/// A service's answer body, holding the instance that made it until it ends.
struct Held {
    body: Body,
    target: Arc<Target>,
    /// The meter's slot the request was counted in flight in.
    slot: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.target.meter().end(self.slot);
    }
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The client a forwarding node names in `X-Real-IP` (its own view of who asked).
fn client_named_by_node(headers: &axum::http::HeaderMap) -> Option<SocketAddr> {
    let named = headers.get("x-real-ip")?.to_str().ok()?;
    let ip: std::net::IpAddr = named.trim().parse().ok()?;
    Some(SocketAddr::new(ip, 0))
}

/// Whether `headers` carry the cluster's `token` in [`PEER_HEADER`] (compared in
/// constant time); the header is removed either way.
fn forwarded_by_node(headers: &mut axum::http::HeaderMap, token: &HeaderValue) -> bool {
    static NAME: axum::http::HeaderName = axum::http::HeaderName::from_static(PEER_HEADER);
    match headers.remove(&NAME) {
        Some(value) => bool::from(subtle::ConstantTimeEq::ct_eq(
            value.as_bytes(),
            token.as_bytes(),
        )),
        None => false,
    }
}
