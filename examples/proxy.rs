//! A reverse proxy of a few lines: `forward`, which sends every request it gets to the
//! HTTP server named at registration and streams the answer back.
//!
//! (Herve's built-in `proxy` type does this properly: several upstreams, health checks,
//! forwarding headers, upgrades. This one shows the bones.)
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example proxy
//! curl -u admin:secret -d name=f -d type=forward -d to=http://127.0.0.1:8080 \
//!      http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! curl http://127.0.0.1:5000/<uuid>/some/page?x=1    # what 127.0.0.1:8080 answers to /some/page?x=1
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use herve::contract::http::plain;
use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use herve::{async_trait, host};

/// How long the upstream has to start answering.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// `forward`: every request goes to the server in `to`.
pub struct Forward;

/// Where requests go.
#[derive(Serialize, Deserialize)]
pub struct ForwardConfig {
    /// `http://host:port`, without a path: the client's path is appended as it came.
    to: String,
}

#[async_trait]
impl ServiceType for Forward {
    type Config = ForwardConfig;

    fn name(&self) -> &str {
        "forward"
    }

    fn description(&self) -> &str {
        "A service forwarding every request to one HTTP server"
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<ForwardConfig, ServiceError> {
        let to = upstream_origin(fields.require("to")?.trim()).ok_or_else(|| {
            ServiceError::invalid_field(
                "to",
                "The field 'to' must be an http://host:port URL, without a path.",
            )
        })?;
        Ok(ForwardConfig { to })
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        config: &ForwardConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        // One client per instance: its pool keeps connections to the upstream open
        // between requests, and goes when the instance does.
        let forwarder = Arc::new(Forwarder {
            to: config.to.clone(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        });
        let routes = Router::new().fallback(forward).with_state(forwarder);
        Ok(Box::new(routes))
    }
}

/// `http://authority` of an `http://host[:port][/]` URL; `None` for anything else
/// (another scheme, credentials, a path or a query that the forwarded path would clash with).
fn upstream_origin(text: &str) -> Option<String> {
    let uri: Uri = text.parse().ok()?;
    let authority = uri.authority()?;
    let plain_origin = uri.scheme_str() == Some("http")
        && !authority.host().is_empty()
        && !authority.as_str().contains('@')
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    plain_origin.then(|| format!("http://{authority}"))
}

struct Forwarder {
    to: String,
    client: Client<HttpConnector, Body>,
}

async fn forward(State(forwarder): State<Arc<Forwarder>>, request: Request) -> Response {
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = format!("{}{path}", forwarder.to).parse::<Uri>() else {
        return plain(StatusCode::BAD_REQUEST, "The request path is invalid.\n");
    };
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    // The client then names the upstream in `Host`, as a server of its own expects.
    parts.headers.remove(header::HOST);
    let request = Request::from_parts(parts, body);

    match tokio::time::timeout(ANSWER_TIMEOUT, forwarder.client.request(request)).await {
        Ok(Ok(answer)) => {
            let (mut parts, body) = answer.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // The body is passed on as it arrives, never held whole.
            Response::from_parts(parts, Body::new(body))
        }
        Ok(Err(error)) => {
            tracing::warn!(upstream = %forwarder.to, %error, "the upstream cannot be reached");
            plain(
                StatusCode::BAD_GATEWAY,
                "The upstream server cannot be reached.\n",
            )
        }
        Err(_) => plain(
            StatusCode::GATEWAY_TIMEOUT,
            "The upstream server did not answer in time.\n",
        ),
    }
}

/// Removes what describes one connection rather than the message (RFC 9110, 7.6.1):
/// each side of the proxy has connections of its own.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(Forward)).await
}
