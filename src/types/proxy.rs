//! `proxy`: routes `/<uuid>/...` to one or more HTTP servers that run elsewhere.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::field;
use crate::contract::{Fields, Report, RunningService, ServiceContext, ServiceError, ServiceType};
use crate::upstream::{
    HealthCheck, Proxy, ProxyOptions, Strategy, TrustedProxies, Upstream, UpstreamClient,
};

/// The most upstreams one service may have.
const MAX_UPSTREAMS: usize = 64;

/// The `proxy` service type.
pub struct ProxyType {
    client: UpstreamClient,
    trusted: TrustedProxies,
}

impl ProxyType {
    pub fn new(client: UpstreamClient, trusted: TrustedProxies) -> Self {
        ProxyType { client, trusted }
    }
}

/// What a proxy service keeps from its registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyConfig {
    pub upstreams: Vec<String>,
    pub weights: Vec<u32>,
    pub strategy: String,
    pub health_path: Option<String>,
    pub health_interval_ms: u64,
    pub timeout_ms: u64,
}

impl ProxyConfig {
    fn from_fields(fields: &Fields) -> Result<ProxyConfig, ServiceError> {
        let upstreams = field::list(fields, "upstream");
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
        for url in &upstreams {
            Upstream::parse(url).map_err(|why| {
                ServiceError::invalid_field(
                    "upstream",
                    format!("The field 'upstream' is invalid: {why}."),
                )
            })?;
        }
        let weights = field::list(fields, "weight");
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
        let strategy = field::choice(
            fields,
            "strategy",
            &["round_robin", "weighted", "least_conn"],
        )?;
        Ok(ProxyConfig {
            upstreams: upstreams.iter().map(|u| (*u).to_owned()).collect(),
            weights,
            strategy: strategy.to_owned(),
            health_path: field::url_path(fields, "health_path")?,
            health_interval_ms: field::number(fields, "health_interval_ms", 5000, 100..=3_600_000)?,
            timeout_ms: field::number(fields, "timeout_ms", 30_000, 1..=3_600_000)?,
        })
    }
}

#[async_trait]
impl ServiceType for ProxyType {
    fn name(&self) -> &str {
        "proxy"
    }

    fn description(&self) -> &str {
        "A service routing requests to existing HTTP servers"
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<Value, ServiceError> {
        let config = ProxyConfig::from_fields(fields)?;
        field::to_config(&config)
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &Value,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let config: ProxyConfig = field::from_config(config)?;
        let upstreams = config
            .upstreams
            .iter()
            .map(|url| Upstream::parse(url))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ServiceError::failed)?;
        let strategy = Strategy::parse(&config.strategy).ok_or_else(|| {
            ServiceError::failed(format!("unknown strategy '{}'", config.strategy))
        })?;
        let interval = Duration::from_millis(config.health_interval_ms);
        let health_check = match config.health_path {
            Some(path) => HealthCheck::Active { path, interval },
            None => HealthCheck::Passive { interval },
        };
        let options = ProxyOptions {
            strategy,
            weights: config.weights,
            timeout: Duration::from_millis(config.timeout_ms),
            health_check,
            trusted: self.trusted.clone(),
        };
        let proxy = Proxy::new(self.client.clone(), upstreams, options, ctx.uuid());
        let reporter = ctx.reporter().clone();
        let checker = tokio::spawn(Arc::clone(&proxy).check_health(move |proxy: &Proxy| {
            reporter.report(Report::Runtime(upstream_state(proxy)));
        }));
        Ok(Box::new(RunningProxy { proxy, checker }))
    }
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
    checker: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl RunningService for RunningProxy {
    fn routes(&self) -> Router {
        self.proxy.router()
    }

    async fn stop(&self) -> Result<(), ServiceError> {
        self.checker.abort();
        self.proxy.close();
        Ok(())
    }
}
