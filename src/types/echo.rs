//! `echo`: answers `POST /echo` with the request body, byte for byte.

use async_trait::async_trait;
use axum::{body::Bytes, http::header, routing::post, Router};

use crate::contract::http::TEXT_PLAIN;
use crate::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};

/// The `echo` service type.
pub(crate) struct Echo;

#[async_trait]
impl ServiceType for Echo {
    type Config = ();

    fn name(&self) -> &str {
        "echo"
    }

    fn description(&self) -> &str {
        "A service returning the request body"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        Ok(Box::new(Router::new().route("/echo", post(echo))))
    }
}

async fn echo(body: Bytes) -> ([(header::HeaderName, &'static str); 1], Bytes) {
    ([(header::CONTENT_TYPE, TEXT_PLAIN)], body)
}
