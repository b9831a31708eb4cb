//! Bodies read as [`Fields`]: a form (`application/x-www-form-urlencoded`) or a JSON
//! object, as registrations are.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde_json::Value;

use super::ApiError;
use crate::contract::Fields;

/// An extractor: the fields of a form or JSON object body. A body of another type is
/// a 415, a malformed one a 400, both in the envelope and naming the problem.
pub struct FormOrJson(pub Fields);

impl<S: Send + Sync> FromRequest<S> for FormOrJson {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let media_type = media_type(req.headers().get(header::CONTENT_TYPE));
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| ApiError::new(rejection.status(), rejection.body_text()))?;
        let fields = fields_from_body(media_type.as_deref(), &body).map_err(ApiError::from)?;
        Ok(FormOrJson(fields))
    }
}

/// Why a body could not be read as fields.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Neither a form nor JSON.
    #[error("The content type '{0}' is not supported: send application/x-www-form-urlencoded or application/json.")]
    UnsupportedType(String),
    /// Not valid for its type; the message says why.
    #[error("{0}")]
    Invalid(String),
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        let status = match error {
            BodyError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            BodyError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, error.to_string())
    }
}

/// The lowercase media type of a `Content-Type` value, without parameters; `None`
/// when there is no such header.
pub fn media_type(value: Option<&axum::http::HeaderValue>) -> Option<String> {
    value.map(|value| {
        value
            .to_str()
            .ok()
            .and_then(|text| text.split(';').next())
            .map(|media| media.trim().to_ascii_lowercase())
            .unwrap_or_default()
    })
}

/// Reads a form (also when no type is given) or a JSON object body as fields.
pub fn fields_from_body(media_type: Option<&str>, body: &[u8]) -> Result<Fields, BodyError> {
    match media_type {
        // curl -d and HTML forms send this; a body without a type is read the same way.
        None | Some("application/x-www-form-urlencoded") => Ok(parse_form(body)),
        Some("application/json") => parse_json(body),
        Some(other) => Err(BodyError::UnsupportedType(other.to_owned())),
    }
}

/// Percent-decodes a form body; invalid UTF-8 becomes U+FFFD, which no validation accepts.
pub fn parse_form(body: &[u8]) -> Fields {
    Fields::from_pairs(
        form_urlencoded::parse(body).map(|(key, value)| (key.into_owned(), value.into_owned())),
    )
}

/// Reads a JSON object as fields: strings as they are, numbers and booleans as their
/// JSON text, arrays as one field per element.
pub fn parse_json(body: &[u8]) -> Result<Fields, BodyError> {
    let bad = BodyError::Invalid;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("The body is not valid JSON: {e}.")))?;
    let Value::Object(object) = value else {
        return Err(bad("The JSON body must be an object.".to_owned()));
    };
    let mut pairs = Vec::with_capacity(object.len());
    for (key, value) in object {
        match value {
            Value::Array(items) => {
                for item in items {
                    pairs.push((key.clone(), json_scalar(&key, item)?));
                }
            }
            other => pairs.push((key.clone(), json_scalar(&key, other)?)),
        }
    }
    Ok(Fields::from_pairs(pairs))
}

fn json_scalar(key: &str, value: Value) -> Result<String, BodyError> {
    match value {
        Value::String(text) => Ok(text),
        Value::Number(number) => Ok(number.to_string()),
        Value::Bool(flag) => Ok(flag.to_string()),
        Value::Null => Ok(String::new()),
        Value::Array(_) | Value::Object(_) => Err(BodyError::Invalid(format!(
            "The field '{key}' must be a string, a number or a boolean."
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_and_duplicates() {
        let fields = parse_form(b"name=a%20b&type=echo&name=c+d&x=%ZZ&empty=");
        assert_eq!(fields.get("name"), Some("c d"));
        assert_eq!(fields.get_all("name").collect::<Vec<_>>(), ["a b", "c d"]);
        assert_eq!(fields.get("x"), Some("%ZZ"));
        assert_eq!(fields.get("empty"), Some(""));
        assert_eq!(fields.get("missing"), None);
    }

    #[test]
    fn json_objects_become_fields() {
        let fields =
            parse_json(br#"{"name":"svc","n":3,"on":true,"up":["a","b"]}"#).expect("valid");
        assert_eq!(fields.get("n"), Some("3"));
        assert_eq!(fields.get("on"), Some("true"));
        assert_eq!(fields.get_all("up").collect::<Vec<_>>(), ["a", "b"]);
        assert!(parse_json(b"[1]").is_err());
        assert!(parse_json(b"{").is_err());
        assert!(parse_json(br#"{"a":{"b":1}}"#).is_err());
    }
}
