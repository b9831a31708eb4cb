//! The admin API over HTTP, with the credentials found the way `herve help` says.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// How long to wait for the server to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most a command waits for an answer (a start waits for its program).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(600);
/// The biggest answer read whole.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Why a command failed, and its exit code.
#[derive(Debug)]
pub enum Failure {
    /// The command line is wrong.
    Usage(String),
    /// The server answered with an error.
    Refused {
        status: u16,
        body: Value,
        message: String,
    },
    /// A file given is invalid (every problem, one per line).
    Invalid(String),
    /// The server cannot be reached.
    Unreachable { url: String, reason: String },
}

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Refused { .. } | Failure::Invalid(_) => 1,
            Failure::Unreachable { .. } => 3,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(message) => write!(f, "error: {message}"),
            Failure::Refused {
                status, message, ..
            } => write!(f, "error: {message} ({status})"),
            Failure::Invalid(lines) => f.write_str(lines),
            Failure::Unreachable { url, reason } => {
                write!(f, "error: cannot connect to {url}: {reason}")
            }
        }
    }
}

pub struct Client {
    base: String,
    authorization: Option<HeaderValue>,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of the server at `url`, else where the environment says.
    pub fn new(url: Option<&str>) -> Result<Client, Failure> {
        let base = match url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => default_url(),
        };
        let uri: Uri = base
            .parse()
            .map_err(|error| Failure::Usage(format!("the URL '{base}' is invalid: {error}")))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(Failure::Usage(format!(
                "the URL '{base}' must be http://HOST:PORT (the admin API in plain HTTP)"
            )));
        }
        let authorization = credentials().map(|(id, secret)| {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"));
            HeaderValue::from_str(&format!("Basic {token}"))
                .unwrap_or_else(|_| HeaderValue::from_static(""))
        });
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let http =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            base,
            authorization,
            http,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str) -> Result<Value, Failure> {
        self.call(Method::POST, path, None).await
    }

    pub async fn post_form(
        &self,
        path: &str,
        pairs: &[(String, String)],
    ) -> Result<Value, Failure> {
        self.call(Method::POST, path, Some(form(pairs))).await
    }

    pub async fn patch_form(
        &self,
        path: &str,
        pairs: &[(String, String)],
    ) -> Result<Value, Failure> {
        self.call(Method::PATCH, path, Some(form(pairs))).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        self.call(Method::POST, path, Some(("application/json", bytes)))
            .await
    }

    /// The uuid of the service `target` names (a uuid, or a name).
    pub async fn resolve(&self, target: &str) -> Result<String, Failure> {
        if uuid::Uuid::try_parse(target).is_ok() {
            return Ok(target.to_owned());
        }
        let listing = self.get("/services").await?;
        listing["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|service| service["name"] == target)
            .and_then(|service| service["uuid"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| Failure::Refused {
                status: 404,
                body: Value::Null,
                message: format!("No service is named '{target}'."),
            })
    }

    /// Copies the body of a GET to `out` as it comes, until the server ends it.
    pub async fn stream(&self, path: &str, out: &mut impl Write) -> Result<(), Failure> {
        let response = self.send(Method::GET, path, None).await?;
        if !response.status().is_success() {
            return Err(refusal(
                response.status(),
                read_body(response.into_body()).await,
            ));
        }
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| self.unreachable(&error))?;
            if let Ok(data) = frame.into_data() {
                if out.write_all(&data).and_then(|()| out.flush()).is_err() {
                    // The reader went away (`| head`): done.
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Value, Failure> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let body = tokio::time::timeout(ANSWER_TIMEOUT, read_body(response.into_body()))
            .await
            .map_err(|_| Failure::Unreachable {
                url: self.base.clone(),
                reason: "the answer did not come".to_owned(),
            })?;
        if status.is_success() {
            Ok(body)
        } else {
            Err(refusal(status, body))
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Failure> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let bytes = match body {
            Some((content_type, bytes)) => {
                request = request.header(header::CONTENT_TYPE, content_type);
                bytes
            }
            None => Vec::new(),
        };
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|error| Failure::Usage(format!("cannot make a request to {url}: {error}")))?;
        tokio::time::timeout(ANSWER_TIMEOUT, self.http.request(request))
            .await
            .map_err(|_| Failure::Unreachable {
                url: self.base.clone(),
                reason: "no answer".to_owned(),
            })?
            .map_err(|error| self.unreachable(&error))
    }

    fn unreachable(&self, error: &dyn std::error::Error) -> Failure {
        let mut reason = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        Failure::Unreachable {
            url: self.base.clone(),
            reason,
        }
    }
}

async fn read_body(body: hyper::body::Incoming) -> Value {
    let limited = http_body_util::Limited::new(body, MAX_ANSWER);
    match limited.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        }
        Err(_) => Value::Null,
    }
}

fn refusal(status: StatusCode, body: Value) -> Failure {
    let message = body["message"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| body.as_str().map(|text| text.trim().to_owned()))
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
    Failure::Refused {
        status: status.as_u16(),
        body,
        message,
    }
}

fn form(pairs: &[(String, String)]) -> (&'static str, Vec<u8>) {
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    ("application/x-www-form-urlencoded", encoded.into_bytes())
}

/// `HERVE_ADMIN_ADDR` when the admin API has an address of its own, else the port
/// Herve listens on, on loopback.
fn default_url() -> String {
    if let Some(addr) = env("HERVE_ADMIN_ADDR") {
        return format!("http://{addr}");
    }
    let port = env("PORT").unwrap_or_else(|| "5000".to_owned());
    format!("http://127.0.0.1:{port}")
}

/// The admin's id and secret: the client's own variables, else the server's (unless
/// its secret is a hash), else the secret Herve generated in its data directory.
fn credentials() -> Option<(String, String)> {
    if let Some(secret) = env("HERVE_ADMIN_SECRET") {
        let id = env("HERVE_ADMIN_ID")
            .or_else(|| env("AUTH_ADMIN_ID"))
            .unwrap_or_else(|| "admin".to_owned());
        return Some((id, secret));
    }
    let id = env("AUTH_ADMIN_ID").unwrap_or_else(|| "admin".to_owned());
    if let Some(secret) = env("AUTH_ADMIN_SECRET") {
        if !is_hash(&secret) {
            return Some((id, secret));
        }
    }
    let data_dir =
        env("HERVE_DATA_DIR").map_or_else(|| PathBuf::from("./herve-data"), PathBuf::from);
    let secret = std::fs::read_to_string(data_dir.join("admin-secret")).ok()?;
    let secret = secret.trim();
    (!secret.is_empty()).then(|| (id, secret.to_owned()))
}

fn is_hash(secret: &str) -> bool {
    ["$argon2", "$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| secret.starts_with(prefix))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}
