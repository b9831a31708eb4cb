//! `ping`: answers `GET /ping` with `pong\n`.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use axum::{routing::get, Router};

use crate::contract::http::TEXT_PLAIN;
use crate::contract::{
    Answer, Fields, Handler, RunningService, ServiceContext, ServiceError, ServiceType,
};

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
        Ok(Box::new(RunningPing))
    }
}

/// A running `ping`: one answer to one path, given without a router.
struct RunningPing;

#[async_trait]
impl RunningService for RunningPing {
    fn routes(&self) -> Router {
        Router::new().route("/ping", get(ping))
    }

    fn handler(&self) -> Option<Arc<dyn Handler>> {
        Some(Arc::new(RunningPing))
    }
}

impl Handler for RunningPing {
    /// What the router would answer: `pong`, 405 with `Allow` for another method, 404
    /// for another path.
    fn answer(&self, request: Request<Body>) -> Answer {
        let mut response = Response::new(Body::empty());
        if request.uri().path() != "/ping" {
            *response.status_mut() = StatusCode::NOT_FOUND;
        } else if matches!(*request.method(), Method::GET | Method::HEAD) {
            *response.body_mut() = Body::from("pong\n");
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
        } else {
            *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        }
        Answer::Now(response)
    }
}

async fn ping() -> ([(header::HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, TEXT_PLAIN)], "pong\n")
}
