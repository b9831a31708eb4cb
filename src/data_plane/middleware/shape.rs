//! `cors_*` and `compress`: answers shaped for browsers, by tower-http's layers.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use tower_http::compression::predicate::Predicate;
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer};

use super::FieldError;
use crate::contract::Fields;

/// Longest `cors_max_age`: browsers cap it lower anyway (Chromium at 2 h).
const MAX_AGE_LIMIT: u64 = 86_400;
/// Bodies smaller than this are sent as they are: compressing them gains nothing.
pub(crate) const COMPRESS_MIN_BYTES: u64 = 512;

/// Which cross-origin requests browsers may make, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CorsSpec {
    /// `None` for any origin (`*`).
    pub origins: Option<Vec<HeaderValue>>,
    /// `None` for any method.
    pub methods: Option<Vec<Method>>,
    /// `None` for any header; empty for the CORS-safelisted ones only.
    pub headers: Option<Vec<HeaderName>>,
    pub credentials: bool,
    pub max_age: Option<u64>,
}

impl CorsSpec {
    /// Reads the `cors_*` fields; `None` without `cors_origins`.
    pub fn read(fields: &Fields) -> Result<Option<CorsSpec>, FieldError> {
        let origins = fields.list("cors_origins");
        if origins.is_empty() {
            for field in [
                "cors_methods",
                "cors_headers",
                "cors_credentials",
                "cors_max_age",
            ] {
                if fields.optional(field).is_some() {
                    return Err(FieldError::new(
                        field,
                        format!("The field '{field}' needs 'cors_origins'."),
                    ));
                }
            }
            return Ok(None);
        }
        let any = |list: &[&str]| list.contains(&"*");
        let origins = if any(&origins) {
            None
        } else {
            Some(
                origins
                    .iter()
                    .map(|origin| parse_origin(origin))
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let methods = fields.list("cors_methods");
        let methods = if methods.is_empty() {
            Some(vec![Method::GET, Method::HEAD, Method::POST])
        } else if any(&methods) {
            None
        } else {
            Some(
                methods
                    .iter()
                    .map(|method| {
                        Method::from_bytes(method.to_ascii_uppercase().as_bytes()).map_err(|_| {
                            FieldError::new(
                                "cors_methods",
                                format!("'{method}' in 'cors_methods' is not a method."),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let headers = fields.list("cors_headers");
        let headers = if any(&headers) {
            None
        } else {
            Some(
                headers
                    .iter()
                    .map(|name| {
                        HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                            FieldError::new(
                                "cors_headers",
                                format!("'{name}' in 'cors_headers' is not a header name."),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            )
        };
        let credentials = fields.flag("cors_credentials").map_err(|_| {
            FieldError::new(
                "cors_credentials",
                "The field 'cors_credentials' must be true or false.",
            )
        })?;
        if credentials {
            // The Fetch standard forbids wildcards with credentials: browsers would
            // refuse every answer.
            for (field, wildcard) in [
                ("cors_origins", origins.is_none()),
                ("cors_methods", methods.is_none()),
                ("cors_headers", headers.is_none()),
            ] {
                if wildcard {
                    return Err(FieldError::new(
                        field,
                        format!(
                            "The field '{field}' cannot be '*' with cors_credentials=true; \
                             list them."
                        ),
                    ));
                }
            }
        }
        let max_age = match fields.optional("cors_max_age") {
            None => None,
            Some(text) => match text.parse::<u64>() {
                Ok(seconds) if seconds <= MAX_AGE_LIMIT => Some(seconds),
                _ => {
                    return Err(FieldError::new(
                        "cors_max_age",
                        format!(
                            "The field 'cors_max_age' must be a number of seconds from 0 to \
                             {MAX_AGE_LIMIT}."
                        ),
                    ))
                }
            },
        };
        Ok(Some(CorsSpec {
            origins,
            methods,
            headers,
            credentials,
            max_age,
        }))
    }

    /// tower-http's layer for this configuration (checked by [`CorsSpec::read`], so it
    /// cannot refuse it).
    pub fn layer(&self) -> CorsLayer {
        let mut layer = CorsLayer::new()
            .allow_origin(match &self.origins {
                None => AllowOrigin::any(),
                Some(origins) => AllowOrigin::list(origins.iter().cloned()),
            })
            .allow_methods(match &self.methods {
                None => AllowMethods::any(),
                Some(methods) => AllowMethods::list(methods.iter().cloned()),
            })
            .allow_headers(match &self.headers {
                None => AllowHeaders::any(),
                Some(headers) => AllowHeaders::list(headers.iter().cloned()),
            })
            .allow_credentials(self.credentials);
        if let Some(seconds) = self.max_age {
            layer = layer.max_age(Duration::from_secs(seconds));
        }
        layer
    }
}

/// `https://app.example.com` or `http://localhost:3000`: a scheme and a host, an
/// optional port, nothing else (browsers send exactly this in `Origin`).
fn parse_origin(text: &str) -> Result<HeaderValue, FieldError> {
    let invalid = || {
        FieldError::new(
            "cors_origins",
            format!(
                "'{text}' in 'cors_origins' is not an origin (like https://app.example.com, \
                 without a path), nor '*'."
            ),
        )
    };
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))
        .ok_or_else(invalid)?;
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    let port_ok = port.is_none_or(|port| port.parse::<u16>().is_ok());
    if !host_ok || !port_ok {
        return Err(invalid());
    }
    HeaderValue::from_str(&text.to_ascii_lowercase()).map_err(|_| invalid())
}

/// A request a browser sends before a cross-origin one (not every `OPTIONS` is one:
/// the others go to the service).
pub(crate) fn is_preflight<B>(request: &Request<B>) -> bool {
    request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ORIGIN)
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// What is worth compressing: text, JSON, JavaScript, XML, SVG, WebAssembly and a few
/// font formats, of [`COMPRESS_MIN_BYTES`] or more (or of a length not known yet).
/// Not event streams (each event must leave at once), not images, archives or media.
#[derive(Clone, Copy)]
pub(crate) struct Compressible;

impl Predicate for Compressible {
    fn should_compress<B: http_body::Body>(&self, response: &axum::http::Response<B>) -> bool {
        let Some(content_type) = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let compressible = (essence.starts_with("text/") && essence != "text/event-stream")
            || matches!(
                essence.as_str(),
                "application/json"
                    | "application/javascript"
                    | "application/xml"
                    | "application/wasm"
                    | "application/manifest+json"
                    | "image/svg+xml"
                    | "font/ttf"
                    | "font/otf"
                    | "application/vnd.ms-fontobject"
            )
            || essence.ends_with("+json")
            || essence.ends_with("+xml");
        if !compressible {
            return false;
        }
        let length = response.body().size_hint().exact().or_else(|| {
            response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok())
        });
        length.is_none_or(|length| length >= COMPRESS_MIN_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_fields_are_checked() {
        let read = |pairs: &[(&str, &str)]| CorsSpec::read(&Fields::from_pairs(pairs.to_vec()));
        assert_eq!(read(&[]), Ok(None));
        let spec = read(&[
            (
                "cors_origins",
                "https://app.example.com, http://localhost:3000",
            ),
            ("cors_methods", "get, put"),
            ("cors_max_age", "600"),
        ])
        .expect("valid")
        .expect("some");
        assert_eq!(spec.origins.as_ref().map(Vec::len), Some(2));
        assert_eq!(spec.methods, Some(vec![Method::GET, Method::PUT]));
        for (pairs, field) in [
            (vec![("cors_methods", "GET")], "cors_methods"),
            (vec![("cors_origins", "app.example.com")], "cors_origins"),
            (
                vec![("cors_origins", "https://a.test/path")],
                "cors_origins",
            ),
            (
                vec![("cors_origins", "*"), ("cors_credentials", "true")],
                "cors_origins",
            ),
            (
                vec![("cors_origins", "https://a.test"), ("cors_max_age", "-1")],
                "cors_max_age",
            ),
        ] {
            assert_eq!(
                read(&pairs).err().map(|e| e.field),
                Some(field),
                "{pairs:?}"
            );
        }
        // A checked spec always makes a layer tower-http accepts.
        let spec = read(&[
            ("cors_origins", "https://a.test"),
            ("cors_credentials", "true"),
        ])
        .expect("valid")
        .expect("some");
        let _ = tower::Layer::layer(&spec.layer(), ());
    }
}
