//! `cors_*` and `compress`: answers shaped for browsers. CORS is answered here from
//! values made once per configuration (tower-http's layer clones itself and allocates
//! for every request); compression is tower-http's, streamed.

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use tower_http::compression::predicate::Predicate;

use super::FieldError;
use crate::contract::Fields;

/// Most values each `cors_*` list may hold (an origin is checked against each).
const MAX_LISTED: usize = 64;
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
        for field in ["cors_origins", "cors_methods", "cors_headers"] {
            if fields.list(field).len() > MAX_LISTED {
                return Err(FieldError::new(
                    field,
                    format!("The field '{field}' may list at most {MAX_LISTED} values."),
                ));
            }
        }
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

    /// The CORS rules in force for this configuration.
    pub fn build(&self) -> Cors {
        let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", ")).ok();
        Cors {
            origins: self.origins.clone(),
            methods: self
                .methods
                .as_ref()
                .and_then(|methods| join(methods.iter().map(Method::as_str).collect())),
            headers: match &self.headers {
                None => AllowedHeaders::Mirror,
                Some(headers) if headers.is_empty() => AllowedHeaders::Safelisted,
                Some(headers) => join(headers.iter().map(HeaderName::as_str).collect())
                    .map_or(AllowedHeaders::Safelisted, AllowedHeaders::List),
            },
            credentials: self.credentials,
            max_age: self.max_age.map(HeaderValue::from),
        }
    }
}

/// CORS as the Fetch standard has it, answered from values made once: a preflight is
/// answered here (it never reaches the service, nor needs credentials), and an answer to
/// a listed origin says so. An origin not listed gets no `Access-Control-Allow-Origin`,
/// which is how a browser is told no.
pub(crate) struct Cors {
    /// `None` for any origin.
    origins: Option<Vec<HeaderValue>>,
    /// `None` for any method (the one asked is allowed).
    methods: Option<HeaderValue>,
    headers: AllowedHeaders,
    credentials: bool,
    max_age: Option<HeaderValue>,
}

enum AllowedHeaders {
    /// Only the CORS-safelisted ones: nothing to say.
    Safelisted,
    List(HeaderValue),
    /// Any: the ones asked for are allowed.
    Mirror,
}

/// What a preflight's answer varies with.
const PREFLIGHT_VARY: &str =
    "origin, access-control-request-method, access-control-request-headers";

impl Cors {
    /// The value of `Access-Control-Allow-Origin` for a request from `origin`, if it
    /// is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            // With credentials a wildcard is refused at registration; `*` is only ever
            // sent without.
            None => Some(HeaderValue::from_static("*")),
            Some(origins) => origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    /// The answer to a preflight (see [`is_preflight`]).
    pub fn preflight<B>(&self, request: &Request<B>) -> Response<Body> {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let asked = request.headers();
        let headers = response.headers_mut();
        headers.insert(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        let Some(allowed) = asked
            .get(header::ORIGIN)
            .and_then(|origin| self.allow_origin(origin))
        else {
            return response;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        let methods = self
            .methods
            .clone()
            .or_else(|| asked.get(header::ACCESS_CONTROL_REQUEST_METHOD).cloned());
        if let Some(methods) = methods {
            headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods);
        }
        let allowed_headers = match &self.headers {
            AllowedHeaders::Safelisted => None,
            AllowedHeaders::List(list) => Some(list.clone()),
            AllowedHeaders::Mirror => asked.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned(),
        };
        if let Some(allowed_headers) = allowed_headers {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allowed_headers);
        }
        if let Some(max_age) = &self.max_age {
            headers.insert(header::ACCESS_CONTROL_MAX_AGE, max_age.clone());
        }
        response
    }

    /// Marks the answer to a request from `origin` (if it came with one).
    pub fn decorate(&self, origin: Option<&HeaderValue>, response: &mut Response<Body>) {
        let headers = response.headers_mut();
        if self.origins.is_some() {
            // Caches must keep one answer per origin.
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        let Some(allowed) = origin.and_then(|origin| self.allow_origin(origin)) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
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
        let essence = content_type.split(';').next().unwrap_or_default().trim();
        let is = |name: &str| essence.eq_ignore_ascii_case(name);
        let starts = |prefix: &str| {
            essence
                .get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        };
        let ends = |suffix: &str| {
            essence
                .len()
                .checked_sub(suffix.len())
                .and_then(|at| essence.get(at..))
                .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        };
        let compressible = (starts("text/") && !is("text/event-stream"))
            || [
                "application/json",
                "application/javascript",
                "application/xml",
                "application/wasm",
                "application/manifest+json",
                "image/svg+xml",
                "font/ttf",
                "font/otf",
                "application/vnd.ms-fontobject",
            ]
            .into_iter()
            .any(is)
            || ends("+json")
            || ends("+xml");
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
            (
                vec![("cors_origins", &"https://a.test,".repeat(65)[..])],
                "cors_origins",
            ),
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
        let cors = read(&[
            ("cors_origins", "https://a.test"),
            ("cors_credentials", "true"),
        ])
        .expect("valid")
        .expect("some")
        .build();
        let preflight = Request::builder()
            .method(Method::OPTIONS)
            .header("origin", "https://A.test")
            .header("access-control-request-method", "PUT")
            .body(())
            .expect("request");
        assert!(is_preflight(&preflight));
        let answer = cors.preflight(&preflight);
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let headers = answer.headers();
        assert_eq!(headers["access-control-allow-origin"], "https://A.test");
        assert_eq!(headers["access-control-allow-credentials"], "true");
        assert_eq!(headers["access-control-allow-methods"], "GET, HEAD, POST");
        let mut response = Response::new(Body::empty());
        cors.decorate(
            Some(&HeaderValue::from_static("https://b.test")),
            &mut response,
        );
        assert!(response
            .headers()
            .get("access-control-allow-origin")
            .is_none());
        assert_eq!(response.headers()["vary"], "origin");
    }
}
