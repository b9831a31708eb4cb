//! Reading a request body and a query string: `echo-plus`, which answers what it is
//! sent, byte for byte, or what it is asked to say.
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example echo
//! curl -u admin:secret -d name=e -d type=echo-plus http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! curl --data-binary @some-file http://127.0.0.1:5000/<uuid>/echo    # the file, as sent
//! curl 'http://127.0.0.1:5000/<uuid>/echo?say=hello%20there'          # hello there
//! ```

use axum::body::Bytes;
use axum::extract::Query;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use herve::contract::http::{plain, TEXT_PLAIN};
use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use herve::{async_trait, host};

/// `echo-plus`: `POST /echo` answers the body, `GET /echo?say=…` the value of `say`.
pub struct EchoPlus;

#[async_trait]
impl ServiceType for EchoPlus {
    type Config = ();

    fn name(&self) -> &str {
        "echo-plus"
    }

    fn description(&self) -> &str {
        "A service answering the request body, or the query's say"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let routes = Router::new().route("/echo", get(say).post(echo));
        Ok(Box::new(routes))
    }
}

/// Herve has already bounded the body (size and pace), so reading it whole is safe.
async fn echo(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, TEXT_PLAIN)], body).into_response()
}

#[derive(Deserialize)]
pub struct Say {
    say: Option<String>,
}

async fn say(Query(query): Query<Say>) -> Response {
    match query.say {
        Some(words) => ([(header::CONTENT_TYPE, TEXT_PLAIN)], words).into_response(),
        None => plain(
            StatusCode::BAD_REQUEST,
            "Add ?say=something to the URL, or POST a body.\n",
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(EchoPlus)).await
}
