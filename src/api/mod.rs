//! The admin API: `/health` and the Service Management endpoints under `/services`.
//!
//! Handlers are thin: they parse the request, call the [`Registry`] and wrap its answer
//! in the JSON envelope. Everything under `/services` needs the admin credentials.

mod envelope;
pub mod form;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use uuid::Uuid;

pub use envelope::{ok as json_ok, ok_with as json_ok_with, ApiError};
use form::RegistrationFields;

use crate::auth::AdminAuth;
use crate::registry::{Registry, RegistryError};

/// The admin API's router.
pub fn router(registry: Arc<Registry>, auth: Arc<AdminAuth>) -> Router {
    let services = Router::new()
        .route("/services", get(list))
        .route("/services/register", post(register))
        .route("/services/{uuid}", get(show))
        .route("/services/{uuid}/start", post(start))
        .route("/services/{uuid}/stop", post(stop))
        .route("/services/{uuid}/unregister", post(unregister))
        .route("/services/{uuid}/restart", post(restart))
        .route("/services/{uuid}/logs", get(logs))
        // `layer`, not `route_layer`: a wrong method is refused only after the
        // credentials are checked, so nothing under /services answers a stranger.
        .layer(middleware::from_fn_with_state(auth, require_admin))
        .with_state(registry);
    let api = Router::new()
        .route("/health", get(health))
        .merge(services)
        .fallback(unknown_path)
        // The dispatcher bounds bodies (HERVE_MAX_BODY_BYTES); no second, smaller limit.
        .layer(DefaultBodyLimit::disable());
    // Around the whole router, not pushed down to each route as `layer` is: axum adds
    // `Allow` after a route's layers have run.
    Router::new()
        .fallback_service(api)
        .layer(middleware::map_response(explain_method_not_allowed))
}

/// The body of `GET /health`: the envelope with the message `ok`.
const HEALTH_BODY: &[u8] = br#"{"success":true,"message":"ok"}"#;

/// The answer to `GET` (or, with `head`, `HEAD`) `/health`. The dispatcher answers it
/// before routing (it is asked often); the route exists for its `405`s.
pub fn health_response(head: bool) -> Response {
    let body = if head {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from(HEALTH_BODY)
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONTENT_LENGTH, HEALTH_BODY.len().into());
    response
}

async fn health(method: axum::http::Method) -> Response {
    health_response(method == axum::http::Method::HEAD)
}

async fn list(State(registry): State<Arc<Registry>>) -> Response {
    envelope::ok(StatusCode::OK, None, Some(registry.list()))
}

async fn show(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    let service = registry.get(uuid.0)?;
    Ok(envelope::ok(StatusCode::OK, None, Some(service)))
}

async fn register(
    State(registry): State<Arc<Registry>>,
    RegistrationFields(fields): RegistrationFields,
) -> Result<Response, ApiError> {
    let name = fields.get("name").unwrap_or_default().to_owned();
    crate::registry::validate_name(&name)?;
    let type_name = match fields.get("type") {
        Some(type_name) if !type_name.is_empty() => type_name.to_owned(),
        _ => {
            return Err(RegistryError::InvalidField {
                field: "type".to_owned(),
                message: "The field 'type' is required.".to_owned(),
            }
            .into())
        }
    };
    let service =
        to_completion(async move { registry.register(&name, &type_name, &fields).await }).await?;
    Ok(envelope::ok(
        StatusCode::CREATED,
        Some("The service has been successfully registered."),
        Some(service),
    ))
}

async fn start(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    to_completion(async move { registry.start(uuid.0).await }).await?;
    Ok(envelope::ok::<()>(
        StatusCode::OK,
        Some("The service has successfully started."),
        None,
    ))
}

async fn stop(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    to_completion(async move { registry.stop(uuid.0).await }).await?;
    Ok(envelope::ok::<()>(
        StatusCode::OK,
        Some("The service has successfully stopped."),
        None,
    ))
}

async fn unregister(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    to_completion(async move { registry.unregister(uuid.0).await }).await?;
    Ok(envelope::ok::<()>(
        StatusCode::OK,
        Some("The service has been successfully unregistered."),
        None,
    ))
}

async fn restart(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    to_completion(async move { registry.restart(uuid.0).await }).await?;
    Ok(envelope::ok::<()>(
        StatusCode::OK,
        Some("The service has successfully restarted."),
        None,
    ))
}

/// The most lines one logs request returns.
const MAX_TAIL: usize = 10_000;

#[derive(serde::Deserialize)]
struct LogsQuery {
    tail: Option<String>,
}

async fn logs(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let bad_tail = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("The parameter 'tail' must be a whole number from 1 to {MAX_TAIL}."),
        )
    };
    let tail = match query.map_err(|_| bad_tail())?.0.tail {
        None => 100,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_TAIL).contains(&n) => n,
            _ => return Err(bad_tail()),
        },
    };
    let lines = registry.logs(uuid.0, tail).await?;
    Ok(envelope::ok(StatusCode::OK, None, Some(lines)))
}

/// Runs a registry change to its end even if the client goes away: hyper drops a
/// handler whose client disconnected, and a change cut off between the store and
/// memory would leave them disagreeing.
async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = Result<T, RegistryError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(change).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(error) => {
            tracing::error!(%error, "a registry change panicked");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The change failed unexpectedly.",
            ))
        }
    }
}

/// The `{uuid}` of a `/services/{uuid}/...` path. Only the canonical 36-character
/// form names a service (in either case); anything else, even text that does not
/// decode, names no service: 404.
struct ServiceId(Uuid);

impl<S: Send + Sync> FromRequestParts<S> for ServiceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::not_found())?;
        parse_uuid(&text).map(ServiceId)
    }
}

/// Only the canonical 36-character form names a service (in either case); anything
/// else names no service.
fn parse_uuid(text: &str) -> Result<Uuid, ApiError> {
    if text.len() != 36 {
        return Err(ApiError::not_found());
    }
    Uuid::try_parse(text).map_err(|_| ApiError::not_found())
}

async fn require_admin(
    State(auth): State<Arc<AdminAuth>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| crate::auth::client_key(info.0.ip()));
    // A client that keeps guessing is refused for a while, whatever it sends; the
    // admin, from anywhere else, is not affected.
    if let Some(client) = client {
        if let Some(wait) = auth.throttle().blocked_for(&client) {
            return Ok(too_many(
                "Too many failed authentications from this address; try again later.",
                wait,
            ));
        }
    }
    let presented = request.headers().get(header::AUTHORIZATION);
    let guessed = presented.is_some();
    // A configured hash costs tens of milliseconds of CPU: checked on the hashing
    // pool, a few at a time, so that a flood of wrong secrets cannot take every core.
    let granted = match auth
        .check_async(presented.map(|value| value.as_bytes()))
        .await
    {
        Ok(granted) => granted,
        Err(_busy) => {
            return Ok(too_many(
                "Too many authentications are being checked; try again shortly.",
                std::time::Duration::from_secs(1),
            ))
        }
    };
    if !granted {
        // Only wrong credentials count: a client that sent none was not guessing.
        if let (Some(client), true) = (client, guessed) {
            auth.throttle().failed(client);
        }
        return Err(ApiError::unauthorized());
    }
    Ok(next.run(request).await)
}

/// A 429 with `Retry-After`.
fn too_many(message: &'static str, wait: std::time::Duration) -> Response {
    let mut refused = ApiError::new(StatusCode::TOO_MANY_REQUESTS, message).into_response();
    refused
        .headers_mut()
        .insert(header::RETRY_AFTER, wait.as_secs().max(1).into());
    refused
}

async fn unknown_path() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "Nothing is served at this path.")
}

/// axum answers a wrong method with an empty 405 (and the right `Allow`); give it the
/// same JSON envelope as every other admin error. axum also adds `Allow` to whatever
/// answers a wrong method, a 401 from the credentials check included: a stranger
/// learns nothing from a 401, not even the methods.
async fn explain_method_not_allowed(mut response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        if response.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().remove(header::ALLOW);
        }
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut explained = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "This method is not allowed here.",
    )
    .into_response();
    if let Some(allow) = parts.headers.get(header::ALLOW) {
        explained.headers_mut().insert(header::ALLOW, allow.clone());
    }
    explained
}
