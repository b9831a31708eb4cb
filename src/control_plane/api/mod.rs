//! The admin API: `/health`, the Service Management endpoints under `/services`, and
//! the certificates under `/certificates`.
//!
//! Handlers extract, call the [`Registry`] and answer in the JSON envelope. Everything
//! under `/services` and `/certificates` needs the admin credentials. The data plane runs every admin
//! request on the control plane's runtime, to its end even if the client goes away.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use uuid::Uuid;

mod certificates;
mod openapi;
mod operate;
mod ui;

use super::admin_auth::AdminAuth;
use super::certificates::Certificates;
use super::cluster::Cluster;
use super::metrics::Sources;
use super::registry::{validate_name, Registry, RegistryError};
use super::sessions::Sessions;
use crate::contract::http::{ApiError, Envelope, FormOrJson};
use crate::data_plane::health_response;
use crate::util::throttle::client_key;
use openapi::{Lines, OneService, Said, ServiceList};

/// The admin API's router.
pub(crate) fn router(
    registry: Arc<Registry>,
    auth: Arc<AdminAuth>,
    certificates: Arc<Certificates>,
    metrics: Arc<Sources>,
    cluster: Option<Arc<Cluster>>,
    sessions: Arc<Sessions>,
) -> Router {
    let gate = Gate {
        auth: Arc::clone(&auth),
        sessions: Arc::clone(&sessions),
    };
    let services = Router::new()
        .route("/services", get(list))
        .route("/services/register", post(register))
        .route("/services/{uuid}", get(show).patch(edit))
        .route("/services/{uuid}/start", post(start))
        .route("/services/{uuid}/stop", post(stop))
        .route("/services/{uuid}/unregister", post(unregister))
        .route("/services/{uuid}/restart", post(restart))
        .route("/services/{uuid}/logs", get(logs))
        .route("/services/{uuid}/reload", post(operate::reload))
        .route("/services/status", get(operate::status))
        .route("/services/types", get(operate::types))
        .route("/openapi.json", get(openapi::document))
        .route("/services/apply", get(operate::export).post(operate::apply))
        .with_state(registry)
        .merge(certificates::routes(certificates))
        .merge(metrics_routes(metrics))
        .merge(
            Router::new()
                .route("/cluster", get(operate::cluster))
                .with_state(cluster),
        )
        // `layer`, not `route_layer`: a wrong method is refused only after the
        // credentials are checked, so nothing under /services answers a stranger.
        .layer(middleware::from_fn_with_state(gate, require_admin))
        // Outermost: a cross-site request is refused before its credentials count.
        .layer(middleware::from_fn(refuse_cross_site));
    let api = Router::new()
        .route("/health", get(health))
        .merge(services)
        .merge(ui::routes(ui::Ui { auth, sessions }))
        .fallback(unknown_path)
        // The dispatcher bounds bodies (HERVE_MAX_BODY_BYTES); no second, smaller limit.
        .layer(DefaultBodyLimit::disable());
    // Around the whole router, not pushed down to each route as `layer` is: axum adds
    // `Allow` after a route's layers have run.
    Router::new()
        .fallback_service(api)
        .layer(middleware::map_response(explain_method_not_allowed))
}

/// `GET /metrics`, for the admin API, or alone on `HERVE_METRICS_ADDR`.
pub(crate) fn metrics_routes(sources: Arc<Sources>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources)
}

#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn scrape(State(sources): State<Arc<Sources>>) -> Response {
    let text = tokio::task::spawn_blocking(move || super::metrics::render(&sources))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], text).into_response()
}

/// The dispatcher answers `/health` before routing; this route exists for its 405s.
async fn health(method: axum::http::Method) -> Response {
    health_response(method == axum::http::Method::HEAD)
}

#[utoipa::path(get, path = "/services", tag = "services",
    responses((status = 200, description = "Every service, newest first", body = ServiceList)))]
async fn list(State(registry): State<Arc<Registry>>) -> Response {
    Envelope::data(registry.list()).respond(StatusCode::OK)
}

#[utoipa::path(get, path = "/services/{uuid}", tag = "services", params(("uuid" = String, Path, description = "The service's uuid")),
    responses((status = 200, description = "The service, with its configuration", body = OneService), (status = 404, description = "No such service", body = Said)))]
async fn show(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    let service = registry.get(uuid.0).map_err(api_error)?;
    Ok(Envelope::data(service).respond(StatusCode::OK))
}

#[utoipa::path(post, path = "/services/register", tag = "services",
    request_body(description = "`name`, `type`, and the type's fields", content(
        (Object = "application/x-www-form-urlencoded"), (Object = "application/json"))),
    responses(
        (status = 201, description = "Registered", body = OneService),
        (status = 400, description = "A field is missing or invalid", body = Said),
        (status = 404, description = "No such type", body = Said),
        (status = 409, description = "The name or a route is taken, or no room is left", body = Said),
        (status = 415, description = "Not a form or JSON", body = Said)))]
async fn register(
    State(registry): State<Arc<Registry>>,
    FormOrJson(fields): FormOrJson,
) -> Result<Response, ApiError> {
    let name = fields.get("name").unwrap_or_default();
    validate_name(name).map_err(api_error)?;
    let Some(type_name) = fields.get("type").filter(|t| !t.is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "The field 'type' is required.",
        ));
    };
    let service = registry
        .register(name, type_name, &fields)
        .await
        .map_err(api_error)?;
    Ok(Envelope::data(service)
        .with_message("The service has been successfully registered.")
        .respond(StatusCode::CREATED))
}

#[utoipa::path(patch, path = "/services/{uuid}", tag = "services", params(("uuid" = String, Path, description = "The service's uuid")),
    request_body(description = "The fields to change", content(
        (Object = "application/x-www-form-urlencoded"), (Object = "application/json"))),
    responses(
        (status = 200, description = "Edited", body = OneService),
        (status = 400, description = "A field is invalid", body = Said),
        (status = 404, description = "No such service", body = Said),
        (status = 409, description = "A route is taken", body = Said),
        (status = 415, description = "Not a form or JSON", body = Said)))]
async fn edit(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
    FormOrJson(fields): FormOrJson,
) -> Result<Response, ApiError> {
    let service = registry.edit(uuid.0, &fields).await.map_err(api_error)?;
    Ok(Envelope::data(service)
        .with_message("The service has been successfully updated.")
        .respond(StatusCode::OK))
}

#[utoipa::path(post, path = "/services/{uuid}/start", tag = "services", params(("uuid" = String, Path, description = "The service's uuid")),
    responses((status = 200, description = "Started (or already running)", body = Said), (status = 404, description = "No such service", body = Said)))]
async fn start(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    registry.start(uuid.0).await.map_err(api_error)?;
    Ok(Envelope::message("The service has successfully started.").respond(StatusCode::OK))
}

#[utoipa::path(post, path = "/services/{uuid}/stop", tag = "services", params(("uuid" = String, Path, description = "The service's uuid")),
    responses((status = 200, description = "Stopped (or not running)", body = Said), (status = 404, description = "No such service", body = Said)))]
async fn stop(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    registry.stop(uuid.0).await.map_err(api_error)?;
    Ok(Envelope::message("The service has successfully stopped.").respond(StatusCode::OK))
}

#[utoipa::path(post, path = "/services/{uuid}/unregister", tag = "services", params(("uuid" = String, Path, description = "The service's uuid")),
    responses((status = 200, description = "Unregistered", body = Said),
        (status = 400, description = "It still runs", body = Said), (status = 404, description = "No such service", body = Said)))]
async fn unregister(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    registry.unregister(uuid.0).await.map_err(api_error)?;
    Ok(
        Envelope::message("The service has been successfully unregistered.")
            .respond(StatusCode::OK),
    )
}

#[utoipa::path(post, path = "/services/{uuid}/restart", tag = "services", params(("uuid" = String, Path, description = "The service's uuid")),
    responses((status = 200, description = "Stopped if it ran, then started", body = Said), (status = 404, description = "No such service", body = Said)))]
async fn restart(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    registry.restart(uuid.0).await.map_err(api_error)?;
    Ok(Envelope::message("The service has successfully restarted.").respond(StatusCode::OK))
}

/// The most lines one logs request returns.
const MAX_TAIL: usize = 10_000;

#[derive(serde::Deserialize)]
struct LogsQuery {
    tail: Option<String>,
    follow: Option<String>,
}

#[utoipa::path(get, path = "/services/{uuid}/logs", tag = "services",
    params(("uuid" = String, Path, description = "The service's uuid"), ("tail" = Option<u32>, Query, description = "How many of the last lines (1 to 10000)")),
    responses((status = 200, description = "The last lines, oldest first", body = Lines),
        (status = 400, description = "A parameter is invalid", body = Said),
        (status = 404, description = "No such service, or it keeps no logs", body = Said)))]
async fn logs(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
    query: Result<Query<LogsQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
) -> Result<Response, ApiError> {
    let bad_tail = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("The parameter 'tail' must be a whole number from 1 to {MAX_TAIL}."),
        )
    };
    let query = query.map_err(|_| bad_tail())?.0;
    let follow = match query
        .follow
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("false" | "0" | "no") => false,
        Some("true" | "1" | "yes" | "") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "The parameter 'follow' must be true or false.",
            ))
        }
    };
    let tail = match query.tail {
        // Following starts from the last few lines, as `tail -f` does.
        None if follow => 10,
        None => 100,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_TAIL).contains(&n) => n,
            _ => return Err(bad_tail()),
        },
    };
    if follow {
        let (last, lines) = registry
            .follow_logs(uuid.0, tail)
            .await
            .map_err(api_error)?;
        return Ok(operate::stream_lines(last, lines, &headers));
    }
    let lines = registry.logs(uuid.0, tail).await.map_err(api_error)?;
    Ok(Envelope::data(lines).respond(StatusCode::OK))
}

/// The answer to a refused or failed registry operation. A server error keeps its
/// cause for the one log line the dispatcher writes.
fn api_error(error: RegistryError) -> ApiError {
    let status = match &error {
        RegistryError::Store(error) if error.is_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
        // The cluster could not place a program for want of the shared database.
        RegistryError::Hook(error) if placement_unavailable(error) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        RegistryError::NotFound | RegistryError::UnknownType | RegistryError::NoLogs => {
            StatusCode::NOT_FOUND
        }
        RegistryError::InvalidField { .. }
        | RegistryError::StillRunning
        | RegistryError::NotRunning
        | RegistryError::Plan(_) => StatusCode::BAD_REQUEST,
        RegistryError::NameTaken(_)
        | RegistryError::Elsewhere { .. }
        | RegistryError::TooMany(_)
        | RegistryError::RouteTaken { .. } => StatusCode::CONFLICT,
        RegistryError::TypeUnavailable(_)
        | RegistryError::Corrupt(_)
        | RegistryError::Hook(_)
        | RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        RegistryError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        RegistryError::TooManyFollowers(_) => StatusCode::TOO_MANY_REQUESTS,
    };
    let answer = ApiError::new(status, error.to_string());
    if status.is_server_error() {
        answer.caused_by(error_chain(&error))
    } else {
        answer
    }
}

/// Whether a hook failed because the shared database could not be reached.
fn placement_unavailable(error: &crate::contract::ServiceError) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<crate::control_plane::store::StoreError>())
        .is_some_and(|error| error.is_unavailable())
}

/// An error and its sources, as one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
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
            .map_err(|_| api_error(RegistryError::NotFound))?;
        if text.len() != 36 {
            return Err(api_error(RegistryError::NotFound));
        }
        Uuid::try_parse(&text)
            .map(ServiceId)
            .map_err(|_| api_error(RegistryError::NotFound))
    }
}

/// What admits a request to the admin API: Basic credentials, or a dashboard session.
#[derive(Clone)]
struct Gate {
    auth: Arc<AdminAuth>,
    sessions: Arc<Sessions>,
}

async fn require_admin(
    State(gate): State<Gate>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let auth = &gate.auth;
    if request.headers().get(header::AUTHORIZATION).is_none() {
        if let Some((_, valid)) = ui::session_of(&gate.sessions, request.headers()).await {
            let safe = matches!(
                *request.method(),
                axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
            );
            if !safe && !ui::carries_token(&valid, request.headers()) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "The dashboard's CSRF token is missing or wrong.",
                ));
            }
            return Ok(next.run(request).await);
        }
    }
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| client_key(info.0.ip()));
    // A client that keeps guessing is refused for a while, whatever it sends; the
    // admin, from anywhere else, is not affected.
    if let Some(client) = client {
        if let Some(wait) = auth.blocked_for(&client) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many failed authentications from this address; try again later.",
            )
            .retry_after(wait));
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
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many authentications are being checked; try again shortly.",
            )
            .retry_after(Duration::from_secs(1)))
        }
    };
    if !granted {
        // Only wrong credentials count: a client that sent none was not guessing.
        if let (Some(client), true) = (client, guessed) {
            auth.failed(client);
        }
        return Err(unauthorized());
    }
    Ok(next.run(request).await)
}

/// Refuses a state-changing request that a browser sent for another site: a browser
/// that holds the admin's Basic credentials would send them along with a form another
/// site makes it post. Browsers say where a request comes from (`Origin`,
/// `Sec-Fetch-Site`); curl and the CLI send neither, and are let through.
async fn refuse_cross_site(request: Request, next: Next) -> Result<Response, ApiError> {
    let method = request.method();
    let safe = matches!(
        *method,
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    if !safe && is_cross_site(&request) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "Cross-site requests to the admin API are refused.",
        ));
    }
    Ok(next.run(request).await)
}

/// Whether the browser that sent `request` says it comes from another origin.
fn is_cross_site(request: &Request) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        // A browser that says where the request comes from says it best (its `Origin`
        // may be `null` under a strict referrer policy). `none`: typed by the user;
        // `same-origin`: Herve's own pages.
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(ToString::to_string));
    let origin_authority = origin
        .to_str()
        .ok()
        .and_then(|origin| origin.split_once("://"))
        .map(|(_, authority)| authority.trim_end_matches('/'));
    match (origin_authority, host) {
        (Some(from), Some(host)) => !from.eq_ignore_ascii_case(&host),
        // `Origin: null` (a sandboxed frame, a file) or no Host to compare with.
        _ => true,
    }
}

/// 401 with the Basic challenge.
fn unauthorized() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "Admin credentials are required.").with_header(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Basic realm=\"herve\""),
    )
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
