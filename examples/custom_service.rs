//! A Herve with a service type of its own, added without touching Herve's source.
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example custom_service
//! curl -u admin:secret -d name=hi -d type=greeter -d greeting=Bonjour \
//!      http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! curl http://127.0.0.1:5000/<uuid>/hello            # Bonjour from hi
//! ```

use axum::extract::Query;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use herve::{async_trait, host};

/// `greeter`: answers `GET /hello` with a greeting chosen at registration.
pub struct Greeter;

/// What a greeter keeps from its registration: typed, stored as JSON by Herve.
#[derive(Serialize, Deserialize)]
pub struct GreeterConfig {
    greeting: String,
}

#[async_trait]
impl ServiceType for Greeter {
    type Config = GreeterConfig;

    fn name(&self) -> &str {
        "greeter"
    }

    fn description(&self) -> &str {
        "A service greeting whoever asks"
    }

    /// `greeting` is required and short; a bad one is a 400 naming the field.
    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<GreeterConfig, ServiceError> {
        let greeting = fields.require("greeting")?;
        if greeting.chars().count() > 40 {
            return Err(ServiceError::invalid_field(
                "greeting",
                "The field 'greeting' must be at most 40 characters.",
            ));
        }
        Ok(GreeterConfig {
            greeting: greeting.to_owned(),
        })
    }

    async fn start(
        &self,
        ctx: &ServiceContext,
        config: &GreeterConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let greeting = config.greeting.clone();
        let name = ctx.name().to_owned();
        let routes = Router::new().route(
            "/hello",
            get(move |Query(who): Query<Who>| async move {
                match who.to {
                    Some(to) => format!("{greeting}, {to}, from {name}\n"),
                    None => format!("{greeting} from {name}\n"),
                }
            }),
        );
        // A router alone is a complete running service: stopping it releases nothing.
        Ok(Box::new(routes))
    }
}

#[derive(Deserialize)]
pub struct Who {
    to: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(Greeter)).await
}
