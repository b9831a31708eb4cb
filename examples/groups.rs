//! Routes in groups, each with middleware of its own: `groups`, a service whose `/`
//! is public and whose `/admin` group asks for the HTTP Basic credentials given at
//! registration, with a logger over everything.
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example groups
//! curl -u admin:secret -d name=g -d type=groups -d user=ann -d password=pw \
//!      http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! curl http://127.0.0.1:5000/<uuid>/                        # public
//! curl -u ann:pw http://127.0.0.1:5000/<uuid>/admin/stats   # requests seen: 2
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use herve::contract::http::{basic_credentials, plain, TEXT_PLAIN};
use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use herve::{async_trait, host};

/// `groups`: a public route, and an `/admin` group behind Basic credentials.
pub struct Groups;

/// The credentials the `/admin` group asks for.
#[derive(Clone, Serialize, Deserialize)]
pub struct GroupsConfig {
    user: String,
    // Kept as registered, so an admin viewing the service sees it; a real service would
    // keep a password hash instead.
    password: String,
}

#[async_trait]
impl ServiceType for Groups {
    type Config = GroupsConfig;

    fn name(&self) -> &str {
        "groups"
    }

    fn description(&self) -> &str {
        "A service with a public route and an /admin group behind Basic credentials"
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<GroupsConfig, ServiceError> {
        let user = fields.require("user")?;
        // The Basic scheme splits id and secret at the first colon.
        if user.contains(':') {
            return Err(ServiceError::invalid_field(
                "user",
                "The field 'user' must not contain ':'.",
            ));
        }
        let password = fields.require("password")?;
        Ok(GroupsConfig {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        config: &GroupsConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let served = Arc::new(AtomicU64::new(0));
        let admin = Router::new()
            .route("/stats", get(stats))
            .with_state(Arc::clone(&served))
            // A fallback of the group's own, under its layer: an unknown `/admin/...`
            // path is refused like a real one, which does not tell what routes exist.
            .fallback(|| async { plain(StatusCode::NOT_FOUND, "Not found.\n") })
            // On the group only: `/` stays public.
            .layer(from_fn_with_state(Arc::new(config.clone()), require_basic));
        let routes = Router::new()
            .route("/", get(|| async { plain(StatusCode::OK, "public\n") }))
            .nest("/admin", admin)
            .layer(from_fn_with_state(served, log_request));
        Ok(Box::new(routes))
    }
}

/// Logs every request the service gets, and counts them for `/admin/stats`.
async fn log_request(
    State(served): State<Arc<AtomicU64>>,
    request: Request,
    next: Next,
) -> Response {
    served.fetch_add(1, Ordering::Relaxed);
    tracing::info!(method = %request.method(), path = %request.uri().path(), "groups request");
    next.run(request).await
}

/// Lets a request through only with the configured Basic credentials.
async fn require_basic(
    State(config): State<Arc<GroupsConfig>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| basic_credentials(value.as_bytes()));
    let allowed = presented.is_some_and(|(user, password)| {
        // Both are compared whatever the first gives, so the time taken does not tell
        // which one was wrong.
        let user_ok = same(&user, config.user.as_bytes());
        let password_ok = same(&password, config.password.as_bytes());
        user_ok & password_ok
    });
    if allowed {
        return next.run(request).await;
    }
    let mut refused = plain(StatusCode::UNAUTHORIZED, "Credentials are required.\n");
    refused.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"groups\""),
    );
    refused
}

/// Byte equality that looks at every byte rather than stopping at the first difference.
/// The optimiser gives no guarantee here; a real service uses a constant-time crate.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn stats(
    State(served): State<Arc<AtomicU64>>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    let served = served.load(Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, TEXT_PLAIN)],
        format!("requests seen: {served}\n"),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(Groups)).await
}
