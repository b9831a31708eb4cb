//! Asking an upstream whether it is up: by TCP (does it accept connections?) or by
//! HTTP (does `GET path` answer 2xx or 3xx?). One prober serves the proxy's health
//! checks and a program's readiness checks.

use std::time::Duration;

use axum::body::Body;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// How long connecting for a probe may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Probes upstreams; cheap to clone (its pool of connections is shared). One per
/// Herve, which it also names (see [`Prober::herve`]).
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Body>,
    herve: std::sync::Arc<str>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Prober {
            client,
            herve: random_name().into(),
        }
    }
}

impl Prober {
    /// Whether `target` (`host:port`) accepts a connection within `timeout`.
    pub async fn accepts(&self, target: &str, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await,
            Ok(Ok(_))
        )
    }

    /// Whether `GET url` answers 2xx or 3xx within `timeout`.
    pub async fn answers(&self, url: &str, timeout: Duration) -> bool {
        let Ok(request) = http::Request::get(url).body(Body::empty()) else {
            return false;
        };
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => {
                let status = response.status();
                status.is_success() || status.is_redirection()
            }
            _ => false,
        }
    }
}

impl Prober {
    /// A short random name of the Herve this prober serves: its proxies' `Via` tells
    /// them apart from those of another Herve (the nodes of a cluster forward a
    /// service's traffic to the node that runs it, under the same uuid).
    pub fn herve(&self) -> &str {
        &self.herve
    }
}

fn random_name() -> String {
    let mut bytes = [0u8; 3];
    // Without randomness, the pid and the time tell Herves apart well enough.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.subsec_nanos())
            .unwrap_or(0);
        return format!("{:x}{:x}", std::process::id(), nanos & 0xfff);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
