//! What any service may be given besides its type's fields, to guard and shape its
//! traffic, applied in this order:
//!
//! 1. limits (`max_body_bytes`, in the dispatcher, below Herve's own),
//! 2. CORS preflights answered (`cors_*`),
//! 3. protection (`protect`, `basic_users`): 401 without valid credentials,
//! 4. rate limit (`rate_limit`, `burst`): 429, per user when protected, else per
//!    client address,
//! 5. request header rules (`request_headers`),
//! 6. the service,
//! 7. response header rules (`response_headers`),
//! 8. compression (`compress`), then the CORS headers of the answer.
//!
//! Nothing here allocates per request but what a middleware must (a token cache miss,
//! a compressed body): the chain is called in place, not as boxed services.
//!
//! A service given none of them is routed as if this module did not exist: its routes
//! carry no chain and the dispatcher calls its router directly.

mod protect;
mod rate;
mod rules;
mod shape;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Service, ServiceExt};
use tower_http::compression::predicate::Predicate;
use tower_http::compression::Compression;

use crate::contract::http::plain;
use crate::contract::Fields;
use crate::util::hashing::HashPool;
use crate::util::throttle::client_key;
use protect::Guard;
pub(crate) use protect::{ProtectSpec, USER_HEADER};
use rate::{RateKey, RateLimit, RateSpec};
use rules::HeaderRule;
use shape::{is_preflight, Compressible, Cors, CorsSpec};

use super::routes::Target;
use super::RouteTable;

/// A middleware field that does not hold what it must.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        FieldError {
            field,
            message: message.into(),
        }
    }
}

/// A service's middlewares as configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MiddlewareSpec {
    pub protect: Option<ProtectSpec>,
    rate: Option<RateSpec>,
    cors: Option<CorsSpec>,
    compress: bool,
    request_headers: Vec<HeaderRule>,
    response_headers: Vec<HeaderRule>,
    max_body_bytes: Option<u64>,
}

impl MiddlewareSpec {
    /// Reads and checks the middleware fields.
    pub fn read(fields: &Fields) -> Result<MiddlewareSpec, FieldError> {
        let compress = fields.flag("compress").map_err(|_| {
            FieldError::new("compress", "The field 'compress' must be true or false.")
        })?;
        let max_body_bytes = match fields.optional("max_body_bytes") {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(bytes) if bytes > 0 => Some(bytes),
                _ => {
                    return Err(FieldError::new(
                        "max_body_bytes",
                        "The field 'max_body_bytes' must be a whole number of bytes above 0.",
                    ))
                }
            },
        };
        Ok(MiddlewareSpec {
            protect: ProtectSpec::read(fields)?,
            rate: RateSpec::read(fields)?,
            cors: CorsSpec::read(fields)?,
            compress,
            request_headers: HeaderRule::read_all(fields, "request_headers")?,
            response_headers: HeaderRule::read_all(fields, "response_headers")?,
            max_body_bytes,
        })
    }

    /// Whether the service has any middleware.
    pub fn is_empty(&self) -> bool {
        *self == MiddlewareSpec::default()
    }
}

/// A service's middlewares in force: built once per configuration (rate and failure
/// counts live as long as it does), shared by every request.
pub(crate) struct Chain {
    guard: Option<Guard>,
    rate: Option<RateLimit>,
    cors: Option<Cors>,
    compress: bool,
    request_headers: Vec<HeaderRule>,
    response_headers: Vec<HeaderRule>,
    max_body_bytes: Option<u64>,
}

impl Chain {
    /// The chain `spec` asks for on the service named `service`; `None` when it asks
    /// for nothing.
    pub fn build(
        spec: &MiddlewareSpec,
        service: &str,
        hashing: &Arc<HashPool>,
    ) -> Option<Arc<Chain>> {
        if spec.is_empty() {
            return None;
        }
        Some(Arc::new(Chain {
            guard: spec
                .protect
                .as_ref()
                .map(|protect| Guard::new(protect, service, hashing)),
            rate: spec.rate.as_ref().map(RateLimit::new),
            cors: spec.cors.as_ref().map(CorsSpec::build),
            compress: spec.compress,
            request_headers: spec.request_headers.clone(),
            response_headers: spec.response_headers.clone(),
            max_body_bytes: spec.max_body_bytes,
        }))
    }

    /// The largest request body this service takes, below Herve's own `global`.
    pub fn max_body_bytes(&self, global: u64) -> u64 {
        self.max_body_bytes.map_or(global, |own| own.min(global))
    }

    /// Answers `request` for `target` through the chain.
    pub async fn serve(
        &self,
        routes: &RouteTable,
        target: &Target,
        client: SocketAddr,
        request: Request<Body>,
    ) -> Response<Body> {
        if let Some(cors) = &self.cors {
            if is_preflight(&request) {
                return cors.preflight(&request);
            }
        }
        let origin = self
            .cors
            .as_ref()
            .and_then(|_| request.headers().get(header::ORIGIN).cloned());
        let accept_encoding = self
            .compress
            .then(|| request.headers().get(header::ACCEPT_ENCODING).cloned())
            .flatten();
        let mut response = self.guarded(routes, target, client, request).await;
        if let Some(accept_encoding) = accept_encoding {
            response = compress(response, accept_encoding).await;
        }
        if let Some(cors) = &self.cors {
            cors.decorate(origin.as_ref(), &mut response);
        }
        response
    }

    /// Checks the credentials `request` carries for `guard`; the user they name goes
    /// in [`USER_HEADER`] (and only Herve's word goes there).
    async fn check(
        &self,
        guard: &Guard,
        routes: &RouteTable,
        client: SocketAddr,
        request: &mut Request<Body>,
    ) -> Result<HeaderValue, Response<Body>> {
        let user_header = HeaderName::from_static(USER_HEADER);
        request.headers_mut().remove(&user_header);
        // Asked only when the token is not in the guard's cache.
        let authenticator = || {
            guard
                .authority()
                .and_then(|authority| routes.authenticator(authority))
        };
        let name = guard
            .check(authenticator, client.ip(), request.headers())
            .await?;
        request.headers_mut().insert(user_header, name.clone());
        Ok(name)
    }

    /// Protection, rate limit, header rules and the service.
    async fn guarded(
        &self,
        routes: &RouteTable,
        target: &Target,
        client: SocketAddr,
        mut request: Request<Body>,
    ) -> Response<Body> {
        let mut user = None;
        if let Some(guard) = &self.guard {
            match self.check(guard, routes, client, &mut request).await {
                Ok(name) => user = Some(name),
                Err(refusal) => return refusal,
            }
        }
        if let Some(rate) = &self.rate {
            let key = match user {
                Some(user) => RateKey::User(user),
                None => RateKey::Address(client_key(client.ip())),
            };
            if let Err(wait) = rate.check(&key) {
                return too_many_requests(wait);
            }
        }
        HeaderRule::apply(&self.request_headers, request.headers_mut());
        let mut response = target.answer(request).await;
        HeaderRule::apply(&self.response_headers, response.headers_mut());
        response
    }
}

/// Compresses `response` as `accept_encoding` allows, by tower-http's layer around a
/// service that only hands the answer back (the layer reads nothing else of the
/// request).
async fn compress(response: Response<Body>, accept_encoding: HeaderValue) -> Response<Body> {
    // Most answers of most services are not worth it (small, already encoded, a range):
    // they go on as they are, unwrapped.
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_ENCODING)
        || headers.contains_key(header::CONTENT_RANGE)
        || !Compressible.should_compress(&response)
    {
        return response;
    }
    let mut probe = Request::new(());
    probe
        .headers_mut()
        .insert(header::ACCEPT_ENCODING, accept_encoding);
    // Fused: the compressor reads its body once more after the end, which not every
    // body takes (a stream that panics when polled past its end).
    let response = response.map(|body| Body::new(http_body_util::BodyExt::fuse(body)));
    let answered = Compression::new(Answered(Some(response)))
        .no_deflate()
        .no_zstd()
        .compress_when(Compressible)
        .oneshot(probe)
        .await;
    match answered {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// A service whose one answer is made already.
struct Answered(Option<Response<Body>>);

impl Service<Request<()>> for Answered {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<()>) -> Self::Future {
        std::future::ready(Ok(self.0.take().unwrap_or_default()))
    }
}

fn too_many_requests(wait: std::time::Duration) -> Response<Body> {
    let mut response = plain(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests; slow down.\n",
    );
    // Whole seconds, rounded up: a client that waits that long gets through.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}
