//! The operators' endpoints: reload, the server's status, following logs, and the
//! whole desired state (`/services/apply`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::json;

use super::openapi::{OneService, Said, WithData};
use super::{api_error, ServiceId};
use crate::contract::http::{ApiError, Envelope};
use crate::contract::LogLines;
use crate::control_plane::registry::{DesiredState, Registry, RegistryError};

/// A comment line sent to a server-sent-events client that hears nothing else, so that
/// proxies keep the connection and a client that left is noticed.
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

#[utoipa::path(post, path = "/services/{uuid}/reload", tag = "services", params(("uuid" = String, Path, description = "The service's uuid")),
    responses((status = 200, description = "Reloaded", body = OneService),
        (status = 400, description = "It does not run", body = Said), (status = 404, description = "No such service", body = Said)))]
pub(super) async fn reload(
    State(registry): State<Arc<Registry>>,
    uuid: ServiceId,
) -> Result<Response, ApiError> {
    let service = registry.reload(uuid.0).await.map_err(api_error)?;
    Ok(Envelope::data(service)
        .with_message("The service has been reloaded.")
        .respond(StatusCode::OK))
}

#[utoipa::path(get, path = "/services/status", tag = "services",
    responses((status = 200, description = "Version, uptime, services by status", body = WithData)))]
pub(super) async fn status(State(registry): State<Arc<Registry>>) -> Response {
    let summary = registry.summary();
    Envelope::data(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": summary.uptime_s,
        "services": summary.services,
        "by_status": summary.by_status,
    }))
    .respond(StatusCode::OK)
}

/// Every service type, its description and the fields it describes.
#[utoipa::path(get, path = "/services/types", tag = "services",
    responses((status = 200, description = "Every type and the fields it describes", body = WithData)))]
pub(super) async fn types(State(registry): State<Arc<Registry>>) -> Response {
    Envelope::data(registry.types()).respond(StatusCode::OK)
}

/// The current state, as `POST /services/apply` takes it.
#[utoipa::path(get, path = "/services/apply", tag = "services",
    responses((status = 200, description = "The current state, as POST /services/apply takes it", body = WithData)))]
pub(super) async fn export(State(registry): State<Arc<Registry>>) -> Response {
    Envelope::data(json!({ "services": registry.export() })).respond(StatusCode::OK)
}

#[utoipa::path(post, path = "/services/apply", tag = "services",
    request_body(description = "`{services, prune, dry_run}`", content((Object = "application/json"))),
    responses((status = 200, description = "The changes, made or planned", body = WithData),
        (status = 400, description = "Not a desired state, or its problems", body = WithData)))]
pub(super) async fn apply(State(registry): State<Arc<Registry>>, body: Bytes) -> Response {
    let desired: DesiredState = match serde_json::from_slice(&body) {
        Ok(desired) => desired,
        Err(error) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("The body is not a desired state: {error}."),
            )
            .into_response()
        }
    };
    let dry_run = desired.dry_run;
    match registry.apply(desired).await {
        Ok(changes) => {
            let failed = changes
                .iter()
                .filter(|change| change.done == Some(false))
                .count();
            let message = if dry_run {
                format!("{} change(s) planned; nothing was changed.", changes.len())
            } else if failed == 0 {
                format!("{} change(s) made.", changes.len())
            } else {
                format!("{failed} of {} change(s) failed.", changes.len())
            };
            let status = if failed == 0 {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            (
                status,
                Json(json!({
                    "success": failed == 0,
                    "message": message,
                    "data": { "dry_run": dry_run, "changes": changes },
                })),
            )
                .into_response()
        }
        Err(RegistryError::Plan(problems)) => {
            let message = RegistryError::Plan(problems.clone()).to_string();
            (
                StatusCode::BAD_REQUEST,
                Json(json!({
                    "success": false,
                    "message": message,
                    "data": { "problems": problems },
                })),
            )
                .into_response()
        }
        Err(error) => api_error(error).into_response(),
    }
}

/// `last`, then each line of `lines` as it comes: server-sent events (`data:` lines)
/// when the client accepts them, else chunked plain text, one line each.
pub(super) fn stream_lines(last: Vec<String>, lines: LogLines, headers: &HeaderMap) -> Response {
    let events = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|accept| accept.contains("text/event-stream"));
    let all = futures_util::stream::iter(last).chain(lines);
    let (body, content_type) = if events {
        let keepalive = ticks(SSE_KEEPALIVE).map(|()| Bytes::from_static(b": keep-alive\n\n"));
        let data = all.map(|line| {
            let mut event = String::with_capacity(line.len() + 8);
            // A line has no newline; `\r` alone would split an event's field.
            for part in line.split('\r') {
                event.push_str("data: ");
                event.push_str(part);
                event.push('\n');
            }
            event.push('\n');
            Bytes::from(event)
        });
        // The keep-alive ends with the lines: their end is a `None`.
        let data = data
            .map(Some)
            .chain(futures_util::stream::once(async { None }));
        let body = futures_util::stream::select(data, keepalive.map(Some))
            .take_while(|item| std::future::ready(item.is_some()))
            .filter_map(std::future::ready);
        (
            Body::from_stream(body.map(Ok::<_, Infallible>)),
            "text/event-stream",
        )
    } else {
        let body = all.map(|mut line| {
            line.push('\n');
            Ok::<_, Infallible>(Bytes::from(line))
        });
        (Body::from_stream(body), "text/plain; charset=utf-8")
    };
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A tick every `period`, the first after one period.
fn ticks(period: Duration) -> impl futures_util::Stream<Item = ()> {
    futures_util::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some(((), ()))
    })
}

/// The nodes sharing this Herve's database, when it runs with several.
#[utoipa::path(get, path = "/cluster", tag = "meta",
    responses((status = 200, description = "This node, the revision it applied, and every node: address, last heartbeat, revision, what it runs", body = WithData),
        (status = 404, description = "This Herve runs alone", body = Said),
        (status = 503, description = "The shared database cannot be reached", body = Said)))]
pub(super) async fn cluster(
    State(cluster): State<Option<Arc<crate::control_plane::cluster::Cluster>>>,
) -> Result<Response, ApiError> {
    let Some(cluster) = cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "This Herve runs alone, on its own SQLite database: there is no cluster. \
             Give every node the same HERVE_DATABASE_URL to run several.",
        ));
    };
    let view = cluster.view().await.map_err(|error| {
        if error.is_unavailable() {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        } else {
            ApiError::internal("The cluster's nodes could not be read.", error)
        }
    })?;
    Ok(Envelope::data(view).respond(StatusCode::OK))
}
