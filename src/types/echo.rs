//! `echo`: answers `POST /echo` with the request body, byte for byte.

use async_trait::async_trait;
use axum::{body::Bytes, http::header, routing::post, Router};
use serde_json::Value;

use crate::contract::{RunningService, ServiceContext, ServiceError, ServiceType};

/// The `echo` service type.
pub struct Echo;

#[async_trait]
impl ServiceType for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    fn description(&self) -> &str {
        "A service returning the request body"
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &Value,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        Ok(Box::new(Router::new().route("/echo", post(echo))))
    }
}

async fn echo(body: Bytes) -> ([(header::HeaderName, &'static str); 1], Bytes) {
    ([(header::CONTENT_TYPE, super::TEXT_PLAIN)], body)
}
