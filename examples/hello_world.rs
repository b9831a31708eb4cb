//! The smallest Herve service type: `hello`, whose one route greets the world.
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example hello_world
//! curl -u admin:secret -d name=hi -d type=hello http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! curl http://127.0.0.1:5000/<uuid>/                 # Hello, world!
//! ```

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use herve::contract::http::plain;
use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use herve::{async_trait, host};

/// `hello`: answers `GET /` with `Hello, world!`.
pub struct Hello;

#[async_trait]
impl ServiceType for Hello {
    // Nothing to remember from a registration.
    type Config = ();

    fn name(&self) -> &str {
        "hello"
    }

    fn description(&self) -> &str {
        "A service greeting the world"
    }

    async fn register(&self, _ctx: &ServiceContext, _fields: &Fields) -> Result<(), ServiceError> {
        Ok(())
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        _config: &(),
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let routes = Router::new().route(
            "/",
            get(|| async { plain(StatusCode::OK, "Hello, world!\n") }),
        );
        Ok(Box::new(routes))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(Hello)).await
}
