//! `ping`: answers `GET /ping` with `pong\n`.

use async_trait::async_trait;
use axum::{http::header, routing::get, Router};
use serde_json::Value;

use crate::contract::{RunningService, ServiceContext, ServiceError, ServiceType};

/// The `ping` service type.
pub struct Ping;

#[async_trait]
impl ServiceType for Ping {
    fn name(&self) -> &str {
        "ping"
    }

    fn description(&self) -> &str {
        "A service returning pong to /ping"
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &Value,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        Ok(Box::new(Router::new().route("/ping", get(ping))))
    }
}

async fn ping() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, super::TEXT_PLAIN)], "pong\n")
}
