//! `/certificates`: the certificates Herve serves over HTTPS, per host name.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use super::error_chain;
use crate::contract::http::{ApiError, Envelope};
use crate::control_plane::certificates::{CertificateError, Certificates};

/// The largest upload: a chain of a few certificates and a key is a few KiB.
const MAX_UPLOAD_BYTES: usize = 64 * 1024;

/// The routes, without the admin check (the caller adds it).
pub(super) fn routes(certificates: Arc<Certificates>) -> Router {
    Router::new()
        .route("/certificates", get(list))
        .route(
            "/certificates/{host}",
            axum::routing::put(upload).delete(remove),
        )
        .with_state(certificates)
}

#[utoipa::path(get, path = "/certificates", tag = "certificates",
    responses((status = 200, description = "Every certificate kept", body = super::openapi::WithData)))]
async fn list(State(certificates): State<Arc<Certificates>>) -> Response {
    Envelope::data(certificates.list()).respond(StatusCode::OK)
}

#[utoipa::path(put, path = "/certificates/{host}", tag = "certificates",
    params(("host" = String, Path, description = "A host name, or *.parent")),
    request_body(description = "The PEM chain and its private key", content((String = "text/plain"), (String = "application/x-pem-file"))),
    responses((status = 200, description = "Stored", body = super::openapi::WithData),
        (status = 400, description = "Invalid", body = super::openapi::Said),
        (status = 413, description = "Over 64 KiB", body = super::openapi::Said)))]
async fn upload(
    State(certificates): State<Arc<Certificates>>,
    Path(host): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_UPLOAD_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "The upload is larger than {} KiB; send the PEM chain and key only.",
                    MAX_UPLOAD_BYTES / 1024
                ),
            )
        })?;
    let Ok(pem) = std::str::from_utf8(&bytes) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "The body must be PEM text: the certificate chain, then its private key.",
        ));
    };
    let shown = certificates.upload(&host, pem).await.map_err(api_error)?;
    Ok(Envelope::data(shown)
        .with_message("The certificate has been stored.")
        .respond(StatusCode::OK))
}

#[utoipa::path(delete, path = "/certificates/{host}", tag = "certificates",
    params(("host" = String, Path, description = "A host name, or *.parent")),
    responses((status = 200, description = "Removed", body = super::openapi::Said),
        (status = 400, description = "Invalid host", body = super::openapi::Said),
        (status = 404, description = "None kept for this host", body = super::openapi::Said)))]
async fn remove(
    State(certificates): State<Arc<Certificates>>,
    Path(host): Path<String>,
) -> Result<Response, ApiError> {
    certificates.remove(&host).await.map_err(api_error)?;
    Ok(Envelope::message("The certificate has been removed.").respond(StatusCode::OK))
}

fn api_error(error: CertificateError) -> ApiError {
    let status = match &error {
        CertificateError::NotFound => StatusCode::NOT_FOUND,
        CertificateError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    };
    let answer = ApiError::new(status, error.to_string());
    if status.is_server_error() {
        answer.caused_by(error_chain(&error))
    } else {
        answer
    }
}
