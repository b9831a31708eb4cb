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

/// Probes upstreams; cheap to clone (its pool of connections is shared).
#[derive(Clone)]
pub struct Prober {
    client: Client<HttpConnector, Body>,
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
        Prober { client }
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
