//! Forwarding one request to an upstream and its answer back.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;

use super::headers;
use super::pool::{ConnectError, Lease};
use super::Proxy;
use crate::contract::http::plain;
use crate::contract::{FromPeer, MountPrefix};

/// Pooled connections found closed, one after the other, before a fresh one is opened.
const MAX_STALE_TRIES: usize = 4;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

impl Proxy {
    /// Forwards `request` (its path already relative to the service) to an upstream.
    pub async fn forward(self: &Arc<Self>, request: Request<Body>) -> Response<Body> {
        let (mut parts, body) = request.into_parts();
        let upgrade = is_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        // A proxy that reaches itself again (through Herve or another proxy) would
        // multiply connections until something gives.
        if headers::has_passed(&parts.headers, &self.hop) {
            return plain(
                StatusCode::LOOP_DETECTED,
                "The request came back to the proxy that sent it: the proxy loops.\n",
            );
        }
        let Some(path_and_query) = confined(&parts.uri) else {
            return plain(StatusCode::BAD_REQUEST, "The request path is invalid.\n");
        };
        let client = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|info| info.0.ip());
        prepare_headers(&mut parts.headers, upgrade);
        // HTTP/2 clients name the host in the URI's authority, not in `Host`.
        let host = parts.headers.remove(header::HOST).or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::try_from(authority.as_str()).ok()
        });
        let https = parts.extensions.get::<Scheme>() == Some(&Scheme::HTTPS);
        let prefix = parts
            .extensions
            .get::<MountPrefix>()
            .map_or(&self.prefix, MountPrefix::header_value);
        // Another node forwarded it: its forwarding headers are a trusted proxy's.
        let from_node = parts.extensions.get::<FromPeer>().is_some();
        headers::set_forwarding(
            &mut parts.headers,
            (client, from_node),
            (host, https),
            prefix,
            &self.trusted,
        );
        headers::add_via(&mut parts.headers, &self.via);

        // Without a body, an idempotent request can be sent again to another upstream
        // if the first one could not be connected to.
        let replayable = self
            .upstreams
            .iter()
            .filter(|u| u.is_healthy())
            .nth(1)
            .is_some()
            && is_idempotent(&parts.method)
            && body.is_end_stream()
            && !upgrade;
        let retry = replayable.then(|| (parts.method.clone(), parts.headers.clone()));

        let Some(first) = self.pick(None) else {
            return plain(
                StatusCode::BAD_GATEWAY,
                "No healthy upstream is available.\n",
            );
        };
        let request = match self.outgoing(first, &path_and_query, parts.method, parts.headers, body)
        {
            Some(request) => request,
            None => return plain(StatusCode::BAD_REQUEST, "The request path is invalid.\n"),
        };
        let (used, result) = match self.send(first, request).await {
            Err(failure @ (Failure::Refused | Failure::Unreachable)) => {
                self.mark_down(first);
                match (retry, self.pick(Some(first))) {
                    (Some((method, headers)), Some(second)) => {
                        match self.outgoing(second, &path_and_query, method, headers, Body::empty())
                        {
                            Some(request) => (second, self.send(second, request).await),
                            None => (first, Err(failure)),
                        }
                    }
                    _ => (first, Err(failure)),
                }
            }
            other => (first, other),
        };
        match result {
            Ok((response, in_flight, lease)) => answer_from(
                response,
                in_flight,
                lease,
                client_upgrade.map(|upgrade| (upgrade, self.closed.clone())),
            ),
            Err(Failure::Refused) => {
                self.mark_down(used);
                plain(
                    StatusCode::BAD_GATEWAY,
                    "The upstream refused the connection.\n",
                )
            }
            Err(Failure::Unreachable) => {
                self.mark_down(used);
                plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "The upstream could not be reached in time.\n",
                )
            }
            Err(Failure::TimedOut) => plain(
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream did not answer in time.\n",
            ),
            Err(Failure::Tls(error)) => {
                tracing::warn!(upstream = %self.upstreams[used].url(), %error, "TLS to the upstream failed");
                plain(
                    StatusCode::BAD_GATEWAY,
                    "The upstream's TLS handshake failed (its certificate could not be verified, or it does not speak TLS).\n",
                )
            }
            Err(Failure::Other(error)) => {
                tracing::debug!(upstream = %self.upstreams[used].url(), %error, "upstream request failed");
                plain(StatusCode::BAD_GATEWAY, "The upstream failed to answer.\n")
            }
        }
    }

    /// The request to send to upstream `index`.
    fn outgoing(
        &self,
        index: usize,
        path_and_query: &PathAndQuery,
        method: Method,
        headers: HeaderMap,
        body: Body,
    ) -> Option<Request<Body>> {
        let upstream = &self.upstreams[index];
        let path_and_query = if upstream.base.is_empty() {
            path_and_query.clone()
        } else {
            format!("{}{}", upstream.base, path_and_query)
                .try_into()
                .ok()?
        };
        // Origin form on the wire, the upstream's name in Host.
        let uri = Uri::from(path_and_query);
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.headers_mut() = headers;
        request
            .headers_mut()
            .insert(header::HOST, upstream.host.clone());
        Some(request)
    }

    async fn send(
        self: &Arc<Self>,
        index: usize,
        request: Request<Body>,
    ) -> Result<(Response<hyper::body::Incoming>, InFlight, Lease), Failure> {
        // Counted until the answer's body is done, or dropped with this future if the
        // client goes away first.
        let in_flight = InFlight::enter(self, index);
        let upstream = &self.upstreams[index];
        // One deadline for connecting and answering: a connection that cannot be made
        // in time (a host that drops packets) is told apart from a slow answer, so the
        // upstream leaves the rotation as one that refuses does.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let exchange = async {
            let mut request = request;
            // A pooled connection may have been closed by the upstream since; a request
            // it never sent goes out again on the next one (at worst a fresh one).
            for _ in 0..=MAX_STALE_TRIES {
                let connecting = upstream.connections.lease(
                    &upstream.target,
                    upstream.tls.as_ref(),
                    super::CONNECT_TIMEOUT,
                );
                let mut lease = match tokio::time::timeout_at(deadline, connecting).await {
                    Ok(Ok(lease)) => lease,
                    Ok(Err(ConnectError::TimedOut(_))) | Err(_) => {
                        return Err(Failure::Unreachable)
                    }
                    Ok(Err(ConnectError::Tls(error))) => return Err(Failure::Tls(error)),
                    Ok(Err(_)) => return Err(Failure::Refused),
                };
                let Some(sender) = lease.sender() else {
                    return Err(Failure::Refused);
                };
                match sender.try_send_request(request).await {
                    Ok(response) => return Ok((response, lease)),
                    Err(mut error) => {
                        let unsent = error.take_message();
                        let reused = lease.reused;
                        lease.discard();
                        match unsent {
                            Some(unsent) if reused => request = unsent,
                            _ => return Err(Failure::Other(error.into_error().to_string())),
                        }
                    }
                }
            }
            Err(Failure::Other(
                "every pooled connection had gone stale".to_owned(),
            ))
        };
        // The connect deadline above is polled first, so it wins a tie with this one.
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok((response, lease))) => Ok((response, in_flight, lease)),
            Ok(Err(failure)) => Err(failure),
            Err(_) => Err(Failure::TimedOut),
        }
    }
}

/// Herve's answer from the upstream's: hop-by-hop headers out, body streamed.
fn answer_from(
    mut response: Response<hyper::body::Incoming>,
    in_flight: InFlight,
    lease: Lease,
    client_upgrade: Option<(hyper::upgrade::OnUpgrade, CancellationToken)>,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        drop(in_flight);
        // The connection now carries the tunnel: it never goes back to the pool.
        lease.discard();
        let Some((client_upgrade, closed)) = client_upgrade else {
            return plain(
                StatusCode::BAD_GATEWAY,
                "The upstream switched protocols unasked.\n",
            );
        };
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(async move {
            match tokio::try_join!(client_upgrade, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let mut client = TokioIo::new(client);
                    let mut upstream = TokioIo::new(upstream);
                    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
                    tokio::select! {
                        copied = copy => if let Err(error) = copied {
                            tracing::debug!(%error, "upgraded connection ended");
                        },
                        // Stopped (or gone): both ends are dropped, so closed.
                        () = closed.cancelled() => {}
                    }
                }
                Err(error) => tracing::debug!(%error, "protocol switch failed"),
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, Body::empty());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The upstream's HTTP version is its hop's business; hyper answers our client
    // in the version of its own connection.
    parts.version = http::Version::default();
    let body = Tracked {
        inner: body,
        _in_flight: in_flight,
        _lease: lease,
    };
    Response::from_parts(parts, Body::new(body))
}

/// One request in flight through a proxy (until its answer's body ends), and on an
/// upstream for `least_conn`; uncounted when dropped.
struct InFlight {
    proxy: Arc<Proxy>,
    upstream: usize,
    /// The worker slot it is counted in.
    slot: usize,
    /// Whether `least_conn`'s count has it too.
    balanced: bool,
}

impl InFlight {
    fn enter(proxy: &Arc<Proxy>, index: usize) -> InFlight {
        let health = &proxy.upstreams[index].health;
        let slot = health.started();
        let balanced = proxy.counts_in_flight();
        if balanced {
            health.enter();
        }
        InFlight {
            proxy: Arc::clone(proxy),
            upstream: index,
            slot,
            balanced,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let health = &self.proxy.upstreams[self.upstream].health;
        if self.balanced {
            health.leave();
        }
        health.finished(self.slot);
    }
}

enum Failure {
    /// No connection could be made: the upstream is down.
    Refused,
    /// The connection could not be made in time: the upstream is unreachable.
    Unreachable,
    TimedOut,
    /// The TLS handshake failed (a certificate not verified, most often).
    Tls(std::io::Error),
    Other(String),
}

/// A response body from an upstream, holding its request's place in the count and
/// its connection, which goes back to the pool when the body is done.
struct Tracked {
    inner: hyper::body::Incoming,
    _in_flight: InFlight,
    _lease: Lease,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Removes the hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is cheaper than a removal
    // (a hash lookup) per hop-by-hop name.
    if !headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// The request's path and query with its dot segments resolved (see
/// [`headers::confined_path`]); the original when there were none.
fn confined(uri: &Uri) -> Option<PathAndQuery> {
    let Some(original) = uri.path_and_query() else {
        return Some(PathAndQuery::from_static("/"));
    };
    match headers::confined_path(original.path())? {
        Cow::Borrowed(_) => Some(original.clone()),
        Cow::Owned(path) => {
            let joined = match original.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            };
            PathAndQuery::try_from(joined).ok()
        }
    }
}

/// Strips the hop-by-hop headers, keeping an upgrade the client asked for.
fn prepare_headers(headers: &mut HeaderMap, upgrade: bool) {
    let upgrade_to = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    strip_hop_by_hop(headers);
    if let Some(protocol) = upgrade_to {
        headers.insert(header::UPGRADE, protocol);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));

        let mut plain = HeaderMap::new();
        plain.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut plain);
        assert_eq!(plain.len(), 1);
    }
}
