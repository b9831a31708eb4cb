//! The HTTP toolkit of a service type: answers in Herve's JSON envelope, an error type
//! that is an answer, plain-text answers, body parsing, Basic credentials, cookies,
//! CSRF tokens and templates. Herve's own admin API answers with the same pieces.

mod body;
mod csrf;

use std::borrow::Cow;

use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::Serialize;

pub use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
pub use body::{fields_from_body, media_type, parse_form, parse_json, BodyError, FormOrJson};
pub use csrf::CsrfGuard;
/// Templates with auto-escaping (`.html` templates escape every value): the
/// [`minijinja`](https://docs.rs/minijinja) crate.
pub use minijinja;

/// The content type of plain-text answers, as the first Herve sent it.
pub const TEXT_PLAIN: &str = "text/plain; charset=UTF-8";

/// A short plain-text answer.
pub fn plain(status: StatusCode, message: &'static str) -> Response {
    let mut response = message.into_response();
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_PLAIN));
    response
}

/// An answer in Herve's JSON envelope: `{"success":…,"message":…,"data":…}`,
/// compact, keys in this order, `message` and `data` left out when there is none.
#[derive(Debug, Serialize)]
pub struct Envelope<T: Serialize> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<T>,
}

impl<T: Serialize> Envelope<T> {
    /// A successful answer carrying `data`.
    pub fn data(data: T) -> Self {
        Envelope {
            success: true,
            message: None,
            data: Some(data),
        }
    }

    /// The same answer with a message.
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The answer, with `status`.
    pub fn respond(self, status: StatusCode) -> Response {
        (status, Json(self)).into_response()
    }
}

impl Envelope<()> {
    /// A successful answer carrying only a message.
    pub fn message(message: impl Into<Cow<'static, str>>) -> Self {
        Envelope {
            success: true,
            message: Some(message.into()),
            data: None,
        }
    }
}

/// A refused or failed request, answered in the envelope: its status, the message the
/// client reads, headers to add, and (for a server error) what went wrong underneath,
/// which Herve logs once, where it answers.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: Cow<'static, str>,
    headers: Vec<(HeaderName, HeaderValue)>,
    cause: Option<String>,
}

/// What went wrong behind a server error, carried in the answer's extensions to the
/// one place that logs it.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCause(pub String);

impl ApiError {
    /// An error with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        ApiError {
            status,
            message: message.into(),
            headers: Vec::new(),
            cause: None,
        }
    }

    /// A 500 with `message` for the client, caused by `cause` (logged, not shown).
    pub fn internal(message: impl Into<Cow<'static, str>>, cause: impl std::fmt::Display) -> Self {
        let mut error = ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message);
        error.cause = Some(cause.to_string());
        error
    }

    /// Records what caused this error, for the logs.
    pub fn caused_by(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(cause.to_string());
        self
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` (whole seconds, at least one).
    pub fn retry_after(self, wait: std::time::Duration) -> Self {
        self.with_header(
            header::RETRY_AFTER,
            HeaderValue::from(wait.as_secs().max(1)),
        )
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message the client reads.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope: Envelope<()> = Envelope {
            success: false,
            message: Some(self.message),
            data: None,
        };
        let mut response = (self.status, Json(envelope)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(ErrorCause(cause));
        }
        response
    }
}

/// The id and secret of an `Authorization: Basic …` header value (the scheme in any
/// case); `None` when it is not one.
pub fn basic_credentials(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let secret = decoded[colon + 1..].to_vec();
    let mut id = decoded;
    id.truncate(colon);
    Some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let encoded = base64::engine::general_purpose::STANDARD.encode("ann:se:cret");
        let (id, secret) =
            basic_credentials(format!("basic {encoded}").as_bytes()).expect("credentials");
        assert_eq!(id, b"ann");
        assert_eq!(secret, b"se:cret");
        assert!(basic_credentials(b"Bearer x").is_none());
        assert!(basic_credentials(b"Basic !!").is_none());
    }
}
