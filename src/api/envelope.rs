//! The JSON envelope of every admin answer, and the API's error type.
//!
//! `{"success":true,"message":"...","data":...}`: compact, keys in this order,
//! `message` and `data` left out when empty.

use std::borrow::Cow;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::registry::RegistryError;

#[derive(Serialize)]
pub struct Envelope<T: Serialize> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

/// A successful answer.
pub fn ok<T: Serialize>(
    status: StatusCode,
    message: Option<&'static str>,
    data: Option<T>,
) -> Response {
    let envelope = Envelope {
        success: true,
        message: message.map(Cow::Borrowed),
        data,
    };
    (status, Json(envelope)).into_response()
}

/// A successful answer with a message made at run time.
pub fn ok_with<T: Serialize>(
    status: StatusCode,
    message: Option<String>,
    data: Option<T>,
) -> Response {
    let envelope = Envelope {
        success: true,
        message: message.map(Cow::Owned),
        data,
    };
    (status, Json(envelope)).into_response()
}

/// A refused or failed admin request: its status and the message the client reads.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn not_found() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "The service does not exist.")
    }

    pub fn unauthorized() -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "Admin credentials are required.")
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        let status = match &error {
            RegistryError::NotFound | RegistryError::UnknownType | RegistryError::NoLogs => {
                StatusCode::NOT_FOUND
            }
            RegistryError::InvalidField { .. } | RegistryError::StillRunning => {
                StatusCode::BAD_REQUEST
            }
            RegistryError::NameTaken(_) | RegistryError::TooMany(_) => StatusCode::CONFLICT,
            RegistryError::TypeUnavailable(_)
            | RegistryError::Hook(_)
            | RegistryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RegistryError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "admin request failed");
        }
        ApiError::new(status, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let envelope: Envelope<()> = Envelope {
            success: false,
            message: Some(self.message),
            data: None,
        };
        let mut response = (self.status, Json(envelope)).into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"herve\""),
            );
        }
        response
    }
}
