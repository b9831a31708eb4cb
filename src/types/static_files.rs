//! `static`: serves the files of a directory, and nothing outside it.

use std::io::SeekFrom;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::Router;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::contract::http::plain;
use crate::contract::{
    FieldSpec, Fields, RunningService, ServiceContext, ServiceError, ServiceType,
};

/// Bytes read from a file per chunk of the answer: what a client that reads slowly
/// holds, with the connection's own buffer.
const CHUNK: usize = 32 * 1024;

/// The `static` service type.
pub(crate) struct StaticType {
    /// Herve's data directory: never served.
    herve_data: PathBuf,
}

impl StaticType {
    pub fn new(herve_data: &Path) -> Self {
        StaticType {
            herve_data: herve_data.to_path_buf(),
        }
    }

    /// Refuses a root that contains Herve's data directory (its secret, its database).
    fn check_root(&self, root: &Path) -> Result<(), ServiceError> {
        let (Ok(root), Ok(data)) = (
            std::fs::canonicalize(root),
            std::fs::canonicalize(&self.herve_data),
        ) else {
            return Ok(());
        };
        if data.starts_with(&root) {
            return Err(ServiceError::invalid_field(
                "root",
                "The field 'root' must not contain Herve's data directory.",
            ));
        }
        Ok(())
    }
}

/// What a static service keeps from its registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StaticConfig {
    /// The directory served, as registered.
    pub root: String,
    pub index: String,
    pub spa: bool,
}

impl StaticConfig {
    fn from_fields(fields: &Fields) -> Result<StaticConfig, ServiceError> {
        let root = fields.require("root")?;
        if !Path::new(root).is_dir() {
            return Err(ServiceError::invalid_field(
                "root",
                format!("The field 'root' must be an existing directory; '{root}' is not."),
            ));
        }
        let index = fields
            .get("index")
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .unwrap_or("index.html");
        if index.contains('/') || index == "." || index == ".." || index.contains('\0') {
            return Err(ServiceError::invalid_field(
                "index",
                "The field 'index' must be a file name (no '/').",
            ));
        }
        let spa = fields.flag("spa")?;
        Ok(StaticConfig {
            root: root.to_owned(),
            index: index.to_owned(),
            spa,
        })
    }
}

#[async_trait]
impl ServiceType for StaticType {
    type Config = StaticConfig;

    fn name(&self) -> &str {
        "static"
    }

    fn description(&self) -> &str {
        "A service serving the files of a directory"
    }

    fn fields(&self) -> Vec<FieldSpec> {
        vec![
            FieldSpec::required("root", "The directory to serve."),
            FieldSpec::optional("index", "The file a directory answers with.").or("index.html"),
            FieldSpec::optional("spa", "true: unknown paths answer with the index.").or("false"),
        ]
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<StaticConfig, ServiceError> {
        let config = StaticConfig::from_fields(fields)?;
        self.check_root(Path::new(&config.root))?;
        Ok(config)
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        config: &StaticConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        self.check_root(Path::new(&config.root))
            .map_err(|error| ServiceError::failed(error.to_string()))?;
        // Resolved once: every served path must stay inside this one.
        let root = tokio::fs::canonicalize(&config.root).await.map_err(|e| {
            ServiceError::failed(format!(
                "The directory '{}' cannot be served: {e}",
                config.root
            ))
        })?;
        let site = std::sync::Arc::new(Site {
            root,
            index: config.index.clone(),
            spa: config.spa,
        });
        let router = Router::new().fallback(move |request: Request| {
            let site = std::sync::Arc::clone(&site);
            async move { site.serve(request).await }
        });
        Ok(Box::new(router))
    }
}

struct Site {
    /// Canonical.
    root: PathBuf,
    index: String,
    spa: bool,
}

/// A file opened for a request: the handle is what is served, so the checks below
/// hold for exactly the bytes sent, whatever changes on disk meanwhile.
struct Found {
    file: std::fs::File,
    /// Its real path, inside the root (for the MIME type).
    path: PathBuf,
    len: u64,
    modified: SystemTime,
}

/// What a URL path leads to.
enum Lookup {
    Found(Found),
    /// Nothing there: a single-page app answers with its index.
    Missing,
    /// A path trick or a way out of the root: always 404, never the index.
    Refused,
}

impl Site {
    async fn serve(&self, request: Request) -> Response<Body> {
        let head = request.method() == Method::HEAD;
        if request.method() != Method::GET && !head {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "Only GET and HEAD are served here.\n",
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
            return response;
        }
        let found = match self.resolve(request.uri().path()).await {
            Lookup::Found(found) => found,
            Lookup::Missing if self.spa => match self.open(self.root.join(&self.index)).await {
                Lookup::Found(found) => found,
                _ => return not_found(),
            },
            Lookup::Missing | Lookup::Refused => return not_found(),
        };
        let (found, encoding) = self.precompressed(found, request.headers()).await;
        let mut response = respond(found, request.headers(), head).await;
        if let Some(encoding) = encoding {
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
            headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        }
        response
    }

    /// The `.br` or `.gz` sibling of `found`, when the client takes that encoding and
    /// the sibling is there (inside the root, a regular file): served instead, under the
    /// original's type. Never for a range (its bytes would be of the encoded file).
    async fn precompressed(
        &self,
        found: Found,
        request: &HeaderMap,
    ) -> (Found, Option<&'static str>) {
        if request.contains_key(header::RANGE) {
            return (found, None);
        }
        let accepted = request
            .get(header::ACCEPT_ENCODING)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        for (encoding, suffix) in [("br", "br"), ("gzip", "gz")] {
            if !accepts(accepted, encoding) {
                continue;
            }
            let mut sibling = found.path.clone().into_os_string();
            sibling.push(".");
            sibling.push(suffix);
            if let Lookup::Found(mut encoded) = self.open(PathBuf::from(sibling)).await {
                encoded.path = found.path;
                return (encoded, Some(encoding));
            }
        }
        (found, None)
    }

    /// The file a URL path names inside the root. Every `..`, encoded or not, and
    /// every symlink leading out of the root is refused.
    async fn resolve(&self, url_path: &str) -> Lookup {
        let Some(relative) = relative_path(url_path) else {
            return Lookup::Refused;
        };
        let candidate = self.root.join(&relative);
        // Whatever exists of the path must really be inside the root: a directory
        // symlink leading out refuses everything below it, missing or not.
        let root = self.root.clone();
        let probe = candidate.clone();
        let inside = tokio::task::spawn_blocking(move || {
            probe
                .ancestors()
                .find_map(|existing| std::fs::canonicalize(existing).ok())
                .is_some_and(|real| real.starts_with(&root))
        })
        .await
        .unwrap_or(false);
        if !inside {
            return Lookup::Refused;
        }
        match tokio::fs::metadata(&candidate).await {
            Ok(metadata) if metadata.is_dir() => self.open(candidate.join(&self.index)).await,
            Ok(_) => self.open(candidate).await,
            Err(_) => match tokio::fs::symlink_metadata(&candidate).await {
                // A dangling link: it leads nowhere we serve.
                Ok(_) => Lookup::Refused,
                Err(_) => Lookup::Missing,
            },
        }
    }

    /// Opens `path` if it is a regular file whose real location is inside the root.
    async fn open(&self, path: PathBuf) -> Lookup {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || open_beneath(&root, &path))
            .await
            .unwrap_or(Lookup::Refused)
    }
}

/// Whether an `Accept-Encoding` value takes `encoding` (named, or `*`, with a weight
/// above 0).
fn accepts(accept_encoding: &str, encoding: &str) -> bool {
    let mut named = None;
    let mut any = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or_default().trim();
        let weight = parts
            .find_map(|param| {
                let (key, value) = param.split_once('=')?;
                (key.trim().eq_ignore_ascii_case("q")).then(|| value.trim().parse::<f32>().ok())?
            })
            .unwrap_or(1.0);
        if name.eq_ignore_ascii_case(encoding) {
            named = Some(weight > 0.0);
        } else if name == "*" {
            any = Some(weight > 0.0);
        }
    }
    named.or(any).unwrap_or(false)
}

/// The path below the root that a URL path names: percent-decoded, plain names only.
/// `None` for anything that could climb out (`..`, encoded or not), NUL bytes,
/// backslashes, or text that does not decode.
pub(crate) fn relative_path(url_path: &str) -> Option<PathBuf> {
    let decoded = percent_encoding::percent_decode_str(url_path)
        .decode_utf8()
        .ok()?;
    let mut relative = PathBuf::new();
    for segment in decoded.split('/') {
        if segment.is_empty() || segment == "." {
            continue;
        }
        if segment == ".." || segment.contains('\0') || segment.contains('\\') {
            return None;
        }
        relative.push(segment);
    }
    // Belt and braces: only plain names may remain.
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(relative)
}

/// Opens first, then checks what was opened: its real path (from `/proc/self/fd`) must
/// be inside `root` and it must be a regular file. A symlink swapped in between a check
/// and an open cannot win, and a FIFO cannot block (`O_NONBLOCK`).
fn open_beneath(root: &Path, path: &Path) -> Lookup {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
        Err(_) => return Lookup::Refused,
    };
    let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return Lookup::Refused;
    };
    if !real.starts_with(root) {
        return Lookup::Refused;
    }
    let Ok(metadata) = file.metadata() else {
        return Lookup::Refused;
    };
    if !metadata.is_file() {
        return Lookup::Missing;
    }
    Lookup::Found(Found {
        file,
        path: real,
        len: metadata.len(),
        modified: metadata.modified().unwrap_or(UNIX_EPOCH),
    })
}

async fn respond(found: Found, request: &HeaderMap, head: bool) -> Response<Body> {
    let modified = found
        .modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let etag = format!(
        "\"{:x}-{:x}-{:x}\"",
        found.len,
        modified.as_secs(),
        modified.subsec_nanos()
    );
    // HTTP dates have whole seconds.
    let modified_secs = UNIX_EPOCH + Duration::from_secs(modified.as_secs());
    let last_modified = httpdate::fmt_http_date(modified_secs);

    let mut response = Response::new(Body::empty());
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::try_from(etag.as_str()) {
        headers.insert(header::ETAG, value);
    }
    if let Ok(value) = HeaderValue::try_from(last_modified.as_str()) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if not_modified(request, &etag, modified_secs) {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        return response;
    }

    let mime = mime_guess::from_path(&found.path).first_or_octet_stream();
    let content_type =
        if mime.type_() == mime_guess::mime::TEXT && mime.get_param("charset").is_none() {
            format!("{mime}; charset=utf-8")
        } else {
            mime.to_string()
        };
    if let Ok(value) = HeaderValue::try_from(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }

    let (start, length) = match requested_range(request, &etag, &last_modified, found.len) {
        RangeAsked::None => (0, found.len),
        RangeAsked::Satisfiable(start, end) => {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(value) = HeaderValue::try_from(format!("bytes {start}-{end}/{}", found.len)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            (start, end - start + 1)
        }
        RangeAsked::Unsatisfiable => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            if let Ok(value) = HeaderValue::try_from(format!("bytes */{}", found.len)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return response;
        }
    };
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if head || length == 0 {
        return response;
    }
    match stream_file(found.file, start, length).await {
        Some(body) => {
            *response.body_mut() = body;
            response
        }
        None => not_found(),
    }
}

fn not_modified(request: &HeaderMap, etag: &str, modified: SystemTime) -> bool {
    if let Some(wanted) = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        // If-None-Match wins over If-Modified-Since (RFC 9110 §13.1.3).
        return wanted
            .split(',')
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag == etag);
    }
    request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|text| httpdate::parse_http_date(text).ok())
        .is_some_and(|since| modified <= since)
}

enum RangeAsked {
    None,
    /// First and last byte, inclusive.
    Satisfiable(u64, u64),
    Unsatisfiable,
}

/// The single byte range asked for, if any and if it still applies (`If-Range`).
/// Several ranges at once are answered with the whole file, as RFC 9110 allows.
fn requested_range(request: &HeaderMap, etag: &str, last_modified: &str, len: u64) -> RangeAsked {
    let Some(range) = request.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return RangeAsked::None;
    };
    if let Some(condition) = request.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        if condition.trim() != etag && condition.trim() != last_modified {
            return RangeAsked::None;
        }
    }
    let range = range.trim();
    let Some(spec) = range
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .map(|_| &range[6..])
    else {
        return RangeAsked::None;
    };
    if spec.contains(',') {
        return RangeAsked::None;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAsked::None;
    };
    let (first, last) = (first.trim(), last.trim());
    let parsed = match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match last.parse::<u64>() {
            Ok(0) => return RangeAsked::Unsatisfiable,
            Ok(n) if len > 0 => Some((len.saturating_sub(n), len - 1)),
            Ok(_) => return RangeAsked::Unsatisfiable,
            Err(_) => None,
        },
        // bytes=N-: from N to the end.
        (false, true) => first
            .parse::<u64>()
            .ok()
            .map(|start| (start, len.saturating_sub(1))),
        (false, false) => match (first.parse::<u64>(), last.parse::<u64>()) {
            (Ok(start), Ok(end)) if start <= end => Some((start, end.min(len.saturating_sub(1)))),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        // A malformed Range header is ignored: the whole file.
        None => RangeAsked::None,
        Some((start, _)) if start >= len => RangeAsked::Unsatisfiable,
        Some((start, end)) => RangeAsked::Satisfiable(start, end),
    }
}

/// The `length` bytes of `file` from `start`, read as they are sent.
async fn stream_file(file: std::fs::File, start: u64, length: u64) -> Option<Body> {
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.ok()?;
    }
    // Fused: whoever reads the body (a compressor, say) may ask once more after its end.
    let stream = futures_util::stream::unfold((file, length), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
        let mut buffer = BytesMut::zeroed(want);
        match file.read(&mut buffer).await {
            // The file shrank under us: end the body early rather than pad it.
            Ok(0) => Some((
                Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                (file, 0),
            )),
            Ok(n) => {
                buffer.truncate(n);
                Some((
                    Ok::<Bytes, std::io::Error>(buffer.freeze()),
                    (file, left - n as u64),
                ))
            }
            Err(error) => Some((Err(error), (file, 0))),
        }
    });
    Some(Body::from_stream(futures_util::StreamExt::fuse(stream)))
}

fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "Not found.\n")
}

#[cfg(test)]
mod tests {
    use super::accepts;

    #[test]
    fn accept_encoding_weights() {
        assert!(accepts("gzip, deflate, br", "br"));
        assert!(accepts("br;q=0.5, gzip", "gzip"));
        assert!(!accepts("br;q=0, gzip", "br"));
        assert!(accepts("*", "br"));
        assert!(!accepts("*;q=0", "gzip"));
        assert!(!accepts("gzip;q=0, *", "gzip"));
        assert!(!accepts("", "gzip"));
        assert!(!accepts("identity", "br"));
    }
}
