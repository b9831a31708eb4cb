//! `proxy`: routes `/<uuid>/...` to one or more HTTP(S) servers that run elsewhere.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::contract::{
    FieldSpec, Fields, Report, RunningService, ServiceContext, ServiceError, ServiceType,
};
use crate::upstream::{
    client_config, HealthCheck, Prober, Proxy, ProxyOptions, Strategy, TrustedProxies, Upstream,
};
use crate::util::AbortOnDrop;

/// The most upstreams one service may have.
const MAX_UPSTREAMS: usize = 64;

/// The `proxy` service type.
pub(crate) struct ProxyType {
    prober: Prober,
    trusted: TrustedProxies,
}

impl ProxyType {
    pub fn new(prober: Prober, trusted: TrustedProxies) -> Self {
        ProxyType { prober, trusted }
    }
}

/// What a proxy service keeps from its registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ProxyConfig {
    pub upstreams: Vec<String>,
    pub weights: Vec<u32>,
    pub strategy: Strategy,
    pub health_path: Option<String>,
    pub health_interval_ms: u64,
    pub timeout_ms: u64,
    /// A PEM file of the CA certificates that `https://` upstreams are verified
    /// against, instead of the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
}

impl ProxyConfig {
    fn from_fields(fields: &Fields) -> Result<ProxyConfig, ServiceError> {
        let upstreams = fields.list("upstream");
        if upstreams.is_empty() {
            return Err(ServiceError::invalid_field(
                "upstream",
                "The field 'upstream' is required: one or more http://host:port[/path] URLs.",
            ));
        }
        if upstreams.len() > MAX_UPSTREAMS {
            return Err(ServiceError::invalid_field(
                "upstream",
                format!("The field 'upstream' may list at most {MAX_UPSTREAMS} URLs."),
            ));
        }
        let mut any_https = false;
        for url in &upstreams {
            let upstream = Upstream::parse(url).map_err(|why| {
                ServiceError::invalid_field(
                    "upstream",
                    format!("The field 'upstream' is invalid: {why}."),
                )
            })?;
            any_https |= upstream.is_https();
        }
        let tls_ca = fields.optional("tls_ca").map(str::to_owned);
        if let Some(path) = &tls_ca {
            if !any_https {
                return Err(ServiceError::invalid_field(
                    "tls_ca",
                    "The field 'tls_ca' applies to https:// upstreams only.",
                ));
            }
            tls_client(Some(path)).map_err(|why| {
                ServiceError::invalid_field(
                    "tls_ca",
                    format!("The field 'tls_ca' is invalid: {why}."),
                )
            })?;
        }
        let weights = fields.list("weight");
        let weights: Vec<u32> = if weights.is_empty() {
            vec![1; upstreams.len()]
        } else {
            let bad = || {
                ServiceError::invalid_field(
                    "weight",
                    format!(
                        "The field 'weight' must give one whole number from 1 to 1000 per upstream ({}).",
                        upstreams.len()
                    ),
                )
            };
            if weights.len() != upstreams.len() {
                return Err(bad());
            }
            weights
                .iter()
                .map(|w| {
                    w.parse::<u32>()
                        .ok()
                        .filter(|w| (1..=1000).contains(w))
                        .ok_or_else(bad)
                })
                .collect::<Result<_, _>>()?
        };
        Ok(ProxyConfig {
            upstreams: upstreams.iter().map(|u| (*u).to_owned()).collect(),
            weights,
            strategy: fields.choice("strategy", &Strategy::CHOICES)?,
            health_path: fields.url_path("health_path")?,
            health_interval_ms: fields.number("health_interval_ms", 5000, 100..=3_600_000)?,
            timeout_ms: fields.number("timeout_ms", 30_000, 1..=3_600_000)?,
            tls_ca,
        })
    }
}

#[async_trait]
impl ServiceType for ProxyType {
    type Config = ProxyConfig;

    fn name(&self) -> &str {
        "proxy"
    }

    fn description(&self) -> &str {
        "A service routing requests to existing HTTP servers"
    }

    fn fields(&self) -> Vec<FieldSpec> {
        vec![
            FieldSpec::required(
                "upstream",
                "http://host:port[/base] or https://host[:port][/base].",
            )
            .many(),
            FieldSpec::optional("weight", "One whole number per upstream (for weighted).").many(),
            FieldSpec::optional("strategy", "round_robin, weighted or least_conn.")
                .or("round_robin"),
            FieldSpec::optional(
                "health_path",
                "A path every upstream answers 2xx on when healthy.",
            ),
            FieldSpec::optional("health_interval_ms", "How often health is checked.").or("5000"),
            FieldSpec::optional("timeout_ms", "How long an upstream has to start answering.")
                .or("30000"),
            FieldSpec::optional(
                "tls_ca",
                "A PEM file of CA certificates for https upstreams.",
            ),
        ]
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<ProxyConfig, ServiceError> {
        ProxyConfig::from_fields(fields)
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &ProxyConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let tls = tls_client(config.tls_ca.as_deref()).map_err(ServiceError::failed)?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|url| Upstream::parse(url)?.secured_by(&tls))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::failed)?;
        let interval = Duration::from_millis(config.health_interval_ms);
        let health_check = match &config.health_path {
            Some(path) => HealthCheck::Active {
                path: path.clone(),
                interval,
            },
            None => HealthCheck::Passive { interval },
        };
        let options = ProxyOptions {
            strategy: config.strategy,
            weights: config.weights.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            health_check,
            trusted: self.trusted.clone(),
        };
        let proxy = Proxy::new(self.prober.clone(), upstreams, options, ctx.uuid());
        let reporter = ctx.reporter().clone();
        let checker = AbortOnDrop::spawn(Arc::clone(&proxy).check_health(move |proxy: &Proxy| {
            reporter.report(Report::Runtime(upstream_state(proxy)));
        }));
        Ok(Box::new(RunningProxy {
            proxy,
            _checker: checker,
        }))
    }
}

/// How `https://` upstreams are verified: against the CA certificates in the file at
/// `ca` (read now: a renewed CA is picked up at the next start), or the public roots.
fn tls_client(ca: Option<&str>) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = match ca {
        Some(path) => {
            Some(std::fs::read(path).map_err(|error| format!("cannot read '{path}': {error}"))?)
        }
        None => None,
    };
    client_config(pem.as_deref())
}

fn upstream_state(proxy: &Proxy) -> Value {
    let upstreams: Vec<Value> = proxy
        .upstreams()
        .iter()
        .map(|u| json!({ "url": u.url(), "healthy": u.is_healthy() }))
        .collect();
    json!({ "upstreams": upstreams })
}

struct RunningProxy {
    proxy: Arc<Proxy>,
    /// The health checks, which end with the instance.
    _checker: AbortOnDrop,
}

#[async_trait]
impl RunningService for RunningProxy {
    fn routes(&self) -> Router {
        self.proxy.router()
    }

    async fn stop(&self) -> Result<(), ServiceError> {
        self.proxy.close();
        Ok(())
    }

    fn upstreams(&self) -> Vec<crate::contract::UpstreamState> {
        self.proxy.states()
    }

    fn handler(&self) -> Option<Arc<dyn crate::contract::Handler>> {
        Some(Arc::new(ForwardAll(Arc::clone(&self.proxy))))
    }
}

/// Every request forwarded, without a router in between.
struct ForwardAll(Arc<Proxy>);

impl crate::contract::Handler for ForwardAll {
    fn answer(&self, request: axum::extract::Request) -> crate::contract::Answer {
        let proxy = Arc::clone(&self.0);
        crate::contract::Answer::Later(Box::pin(async move { proxy.forward(request).await }))
    }
}
