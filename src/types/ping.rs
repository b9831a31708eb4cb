//! `ping`: answers `GET /ping` with `pong\n`.

use async_trait::async_trait;
use axum::{http::header, routing::get, Router};

use crate::contract::http::TEXT_PLAIN;
use crate::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};

/// The `ping` service type.
pub(crate) struct Ping;

#[async_trait]
impl ServiceType for Ping {
    type Config = ();

    fn name(&self) -> &str {
        "ping"
    }

    fn description(&self) -> &str {
        "A service returning pong to /ping"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        Ok(Box::new(Router::new().route("/ping", get(ping))))
    }
}

async fn ping() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, TEXT_PLAIN)], "pong\n")
}
