//! Reverse proxying to upstream HTTP servers, shared by the `proxy` and `process` types.
//!
//! A [`Proxy`] holds the upstreams of one service, picks one per request
//! ([`balance`]), forwards the request with its body streamed both ways over a
//! kept-alive connection of that upstream's pool (`forward`, `pool`; the pool closes
//! its own idle connections), and keeps each upstream's health up to date
//! ([`Proxy::check_health`], probing with the one [`Prober`]).

mod balance;
mod forward;
mod headers;
mod pool;
mod probe;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;
use tokio_util::sync::CancellationToken;

pub(crate) use balance::Strategy;
use balance::{Balancer, Health};
pub use headers::TrustedProxies;
pub(crate) use probe::Prober;
pub(crate) use tls::client_config;
use tls::UpstreamTls;

/// How long connecting to an upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one health probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probes in a row that must agree before an upstream changes state.
const PROBES_TO_CHANGE: u32 = 2;

/// One upstream server: where it is and how it is doing.
#[derive(Debug)]
pub(crate) struct Upstream {
    authority: Authority,
    /// Path prefix of the upstream (`/api` of `http://host:port/api`), without a
    /// trailing slash; empty for none.
    base: String,
    health: Health,
    /// `host:port` to connect to.
    target: String,
    /// The value of the `Host` header it gets.
    host: http::HeaderValue,
    /// Whether it is an `https://` upstream.
    https: bool,
    /// How to open TLS to it (see [`Upstream::secured_by`]).
    tls: Option<UpstreamTls>,
    connections: Arc<pool::ConnPool>,
}

impl Upstream {
    /// Parses `http://host[:port][/base]` or `https://host[:port][/base]`.
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let uri: Uri = url.parse().map_err(|_| format!("'{url}' is not a URL"))?;
        let https = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP => false,
            Some(scheme) if *scheme == Scheme::HTTPS => true,
            _ => return Err(format!("'{url}' must start with http:// or https://")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("'{url}' has no host"))?
            .clone();
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(format!("'{url}' must be http(s)://host:port[/path]"));
        }
        let declares_port = authority
            .as_str()
            .rsplit(']')
            .next()
            .is_some_and(|after_host| after_host.contains(':'));
        if declares_port && authority.port_u16().is_none() {
            return Err(format!("'{url}' has an invalid port"));
        }
        if uri.query().is_some() {
            return Err(format!("'{url}' must not have a query"));
        }
        let base = uri.path().trim_end_matches('/').to_owned();
        Ok(Upstream::new(authority, base, https))
    }

    /// Opens TLS with `config` when this is an `https://` upstream, verifying the
    /// certificate against the URL's host name.
    pub fn secured_by(mut self, config: &Arc<rustls::ClientConfig>) -> Result<Upstream, String> {
        if !self.https {
            return Ok(self);
        }
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| format!("'{host}' is not a name TLS can verify"))?;
        self.tls = Some(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(Arc::clone(config)),
            name,
        });
        Ok(self)
    }

    fn new(authority: Authority, base: String, https: bool) -> Upstream {
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let target = format!("{}:{port}", authority.host());
        let host = http::HeaderValue::try_from(authority.as_str())
            .unwrap_or_else(|_| http::HeaderValue::from_static("localhost"));
        Upstream {
            authority,
            base,
            health: Health::new(),
            target,
            host,
            https,
            tls: None,
            connections: pool::ConnPool::new(),
        }
    }

    /// The upstream at `127.0.0.1:port`.
    pub fn local(port: u16) -> Upstream {
        let authority = Authority::try_from(format!("127.0.0.1:{port}").as_str())
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        Upstream::new(authority, String::new(), false)
    }

    /// `http(s)://host:port/base`, as registered.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority, self.base)
    }

    /// Whether it is an `https://` upstream.
    pub fn is_https(&self) -> bool {
        self.https
    }

    pub fn is_healthy(&self) -> bool {
        self.health.is_healthy()
    }

    /// The `host:port` to connect to.
    fn socket_target(&self) -> &str {
        &self.target
    }

    /// Whether `GET <base><path>` answers 2xx or 3xx.
    async fn answers(&self, path: &str) -> bool {
        /// A health answer is short; a longer one is read no further.
        const MOST_READ: usize = 64 * 1024;
        let connecting = self
            .connections
            .lease(&self.target, self.tls.as_ref(), CONNECT_TIMEOUT);
        let Ok(mut lease) = connecting.await else {
            return false;
        };
        let request = http::Request::get(format!("{}{}", self.base, path))
            .header(http::header::HOST, self.host.clone())
            .body(axum::body::Body::empty());
        let (Some(sender), Ok(request)) = (lease.sender(), request) else {
            return false;
        };
        let Ok(response) = sender.send_request(request).await else {
            lease.discard();
            return false;
        };
        let status = response.status();
        // Read to its end, so that the connection can serve again.
        let body = http_body_util::Limited::new(response.into_body(), MOST_READ);
        if http_body_util::BodyExt::collect(body).await.is_err() {
            lease.discard();
            return false;
        }
        status.is_success() || status.is_redirection()
    }
}

/// How a proxy learns that an upstream is down and back.
#[derive(Debug, Clone)]
pub(crate) enum HealthCheck {
    /// None: every upstream is always tried (one local program, supervised elsewhere).
    Off,
    /// An upstream that refuses connections leaves the rotation, and a TCP probe every
    /// `interval` brings it back.
    Passive { interval: Duration },
    /// `GET <base><path>` on every upstream every `interval`: 2xx and 3xx are healthy.
    Active { path: String, interval: Duration },
}

/// The upstreams of one service and how to reach them.
pub(crate) struct Proxy {
    prober: Prober,
    upstreams: Vec<Upstream>,
    balancer: Balancer,
    /// How long an upstream has to start answering.
    timeout: Duration,
    health_check: HealthCheck,
    /// The value of `X-Forwarded-Prefix`: `/<uuid>`.
    prefix: http::HeaderValue,
    /// This proxy's name in `Via` (`herve-<id>`), and the entry it adds.
    hop: String,
    via: http::HeaderValue,
    trusted: TrustedProxies,
    /// Cancelled when the service stops (or the proxy is dropped): ends its upgraded
    /// connections.
    closed: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// How a [`Proxy`] spreads, times and checks its requests.
#[derive(Debug, Clone)]
pub(crate) struct ProxyOptions {
    pub strategy: Strategy,
    /// One per upstream (for `Weighted`).
    pub weights: Vec<u32>,
    /// How long an upstream has to start answering.
    pub timeout: Duration,
    pub health_check: HealthCheck,
    pub trusted: TrustedProxies,
}

impl Proxy {
    /// The proxy of service `service` to `upstreams`.
    pub fn new(
        prober: Prober,
        upstreams: Vec<Upstream>,
        options: ProxyOptions,
        service: uuid::Uuid,
    ) -> Arc<Proxy> {
        let ProxyOptions {
            strategy,
            weights,
            timeout,
            health_check,
            trusted,
        } = options;
        let prefix = format!("/{service}");
        // Enough of the uuid to tell proxies apart, not more than needed; and which
        // Herve this is, since the nodes of a cluster forward a service's traffic to
        // the one node that runs it, under the same uuid.
        let hop = format!(
            "herve-{}-{}",
            &service.simple().to_string()[..12],
            prober.herve()
        );
        let via = http::HeaderValue::try_from(format!("1.1 {hop}"))
            .unwrap_or_else(|_| http::HeaderValue::from_static("1.1 herve"));
        Arc::new(Proxy {
            hop,
            via,
            trusted,
            prober,
            balancer: Balancer::new(strategy, &weights),
            upstreams,
            timeout,
            health_check,
            prefix: http::HeaderValue::try_from(prefix.as_str())
                .unwrap_or_else(|_| http::HeaderValue::from_static("/")),
            closed: CancellationToken::new(),
        })
    }

    /// Ends the connections upgraded through this proxy (WebSocket and the like): they
    /// belong to the service, and a stopped service leaves nothing running.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Routes that send every request of the service to its upstreams.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let proxy = Arc::clone(self);
        axum::Router::new().fallback(move |request: axum::extract::Request| {
            let proxy = Arc::clone(&proxy);
            async move { proxy.forward(request).await }
        })
    }

    /// Requests sent through this proxy whose answers are not done yet (a replaced
    /// proxy is drained when this is 0).
    pub fn in_flight(&self) -> usize {
        self.upstreams
            .iter()
            .map(|upstream| upstream.health.requests_now())
            .sum()
    }

    /// Each upstream's state now, for the metrics.
    pub fn states(&self) -> Vec<crate::contract::UpstreamState> {
        self.upstreams
            .iter()
            .map(|upstream| crate::contract::UpstreamState {
                url: upstream.url(),
                healthy: upstream.is_healthy(),
                in_flight: upstream.health.requests_now(),
            })
            .collect()
    }

    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    /// Whether requests in flight are counted (only `least_conn` reads the count).
    fn counts_in_flight(&self) -> bool {
        self.balancer.strategy() == Strategy::LeastConn
    }

    /// The upstream for the next request, other than `exclude`.
    fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        self.balancer.pick_by(
            self.upstreams.len(),
            |index| &self.upstreams[index].health,
            exclude,
        )
    }

    /// Marks `index` down after a refused connection, if health is tracked at all.
    fn mark_down(&self, index: usize) {
        if matches!(self.health_check, HealthCheck::Off) {
            return;
        }
        if self.upstreams[index].health.set_healthy(false) {
            tracing::warn!(upstream = %self.upstreams[index].url(), "upstream down: it refused the connection");
        }
    }

    /// Checks health forever as the health check says, calling `on_change` first and
    /// after every change of health. Run it as a task and abort it when the service
    /// stops.
    pub async fn check_health(self: Arc<Self>, on_change: impl Fn(&Proxy) + Send) {
        let interval = match &self.health_check {
            HealthCheck::Off => return,
            HealthCheck::Passive { interval } | HealthCheck::Active { interval, .. } => *interval,
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut told: Option<Vec<bool>> = None;
        // Results in a row that disagree with each upstream's state: one bad probe on
        // a busy machine must not take an upstream out.
        let mut disagreements = vec![0u32; self.upstreams.len()];
        // Tells what changed since it was last told; requests mark upstreams down too,
        // so this runs before the probes (which may take a while) as well as after.
        let mut tell = |proxy: &Proxy| {
            let now: Vec<bool> = proxy.upstreams.iter().map(Upstream::is_healthy).collect();
            if told.as_ref() != Some(&now) {
                on_change(proxy);
                told = Some(now);
            }
        };
        loop {
            ticker.tick().await;
            tell(&self);
            let probes = self.upstreams.iter().map(|upstream| self.probe(upstream));
            let results = futures_util::future::join_all(probes).await;
            for ((upstream, result), streak) in
                self.upstreams.iter().zip(results).zip(&mut disagreements)
            {
                let Some(healthy) = result else {
                    *streak = 0;
                    continue;
                };
                if healthy == upstream.is_healthy() {
                    *streak = 0;
                    continue;
                }
                *streak += 1;
                if *streak < PROBES_TO_CHANGE {
                    continue;
                }
                *streak = 0;
                upstream.health.set_healthy(healthy);
                if healthy {
                    tracing::info!(upstream = %upstream.url(), "upstream back in the rotation");
                } else {
                    tracing::warn!(upstream = %upstream.url(), "upstream out of the rotation: its health check failed");
                }
            }
            tell(&self);
        }
    }

    /// Whether `upstream` looks healthy now; `None` when there is nothing to check.
    async fn probe(&self, upstream: &Upstream) -> Option<bool> {
        match &self.health_check {
            HealthCheck::Off => None,
            HealthCheck::Passive { .. } => {
                // Only the upstreams out of the rotation need a probe.
                if upstream.is_healthy() {
                    return None;
                }
                Some(
                    self.prober
                        .accepts(upstream.socket_target(), PROBE_TIMEOUT.min(self.timeout))
                        .await,
                )
            }
            HealthCheck::Active { path, .. } => {
                // Through the upstream's own pool: the same connections (and TLS) as
                // its requests.
                let probe = upstream.answers(path);
                let timeout = PROBE_TIMEOUT.min(self.timeout);
                Some(matches!(
                    tokio::time::timeout(timeout, probe).await,
                    Ok(true)
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let up = Upstream::parse("http://127.0.0.1:8080/api/").expect("valid");
        assert_eq!(up.authority.as_str(), "127.0.0.1:8080");
        assert_eq!(up.base, "/api");
        assert_eq!(up.url(), "http://127.0.0.1:8080/api");
        let bare = Upstream::parse("http://example.test").expect("valid");
        assert_eq!(bare.base, "");
        assert_eq!(bare.socket_target(), "example.test:80");
        let secure = Upstream::parse("https://example.test/v1").expect("valid");
        assert_eq!(secure.socket_target(), "example.test:443");
        assert_eq!(secure.url(), "https://example.test/v1");
        for bad in [
            "",
            "localhost:80",
            "ftp://a",
            "http://",
            "http://u:p@h:1",
            "http://h:1/?q=1",
            "http://h:99999",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
