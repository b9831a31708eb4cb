//! Serving files: `site`, which serves the files below a directory given at
//! registration, and nothing outside it.
//!
//! (Herve's built-in `static` type does this properly: streamed bodies, caching
//! headers, ranges. This one reads each file whole, which suits a small site.)
//!
//! ```sh
//! AUTH_ADMIN_ID=admin AUTH_ADMIN_SECRET=secret cargo run --example static_content
//! curl -u admin:secret -d name=s -d type=site -d root="$PWD/docs" \
//!      http://127.0.0.1:5000/services/register
//! curl -u admin:secret -X POST http://127.0.0.1:5000/services/<uuid>/start
//! curl http://127.0.0.1:5000/<uuid>/api.md           # the file docs/api.md
//! curl --path-as-is http://127.0.0.1:5000/<uuid>/../Cargo.toml    # 404: nothing outside the root
//! ```

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};

use herve::contract::http::{plain, TEXT_PLAIN};
use herve::contract::{Fields, RunningService, ServiceContext, ServiceError, ServiceType};
use herve::{async_trait, host};

/// The file `GET /` (or a directory) serves.
const INDEX: &str = "index.html";

/// `site`: the files below `root`.
pub struct Site;

/// The directory served.
#[derive(Serialize, Deserialize)]
pub struct SiteConfig {
    root: String,
}

#[async_trait]
impl ServiceType for Site {
    type Config = SiteConfig;

    fn name(&self) -> &str {
        "site"
    }

    fn description(&self) -> &str {
        "A service serving the files of a directory"
    }

    async fn register(
        &self,
        _ctx: &ServiceContext,
        fields: &Fields,
    ) -> Result<SiteConfig, ServiceError> {
        let root = fields.require("root")?;
        if !tokio::fs::metadata(root).await.is_ok_and(|m| m.is_dir()) {
            return Err(ServiceError::invalid_field(
                "root",
                format!("The field 'root' must be an existing directory; '{root}' is not."),
            ));
        }
        Ok(SiteConfig {
            root: root.to_owned(),
        })
    }

    async fn start(
        &self,
        _ctx: &ServiceContext,
        config: &SiteConfig,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        // Resolved once, symlinks and all: every file served must resolve below it.
        let root = tokio::fs::canonicalize(&config.root).await.map_err(|e| {
            ServiceError::failed_because(
                format!("The directory '{}' cannot be served", config.root),
                e,
            )
        })?;
        let root = Arc::new(root);
        let routes = Router::new()
            .route("/", get(index))
            .route("/{*path}", get(file))
            .with_state(root);
        Ok(Box::new(routes))
    }
}

async fn index(State(root): State<Arc<PathBuf>>) -> Response {
    serve(&root, FsPath::new(INDEX)).await
}

/// `path` arrives percent-decoded, so `%2e%2e` is a `..` here and refused like one.
async fn file(State(root): State<Arc<PathBuf>>, Path(path): Path<String>) -> Response {
    serve(&root, FsPath::new(&path)).await
}

async fn serve(root: &FsPath, relative: &FsPath) -> Response {
    match read_below(root, relative).await {
        Some((real, content)) => {
            let content_type = HeaderValue::from_static(content_type(&real));
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    // Browsers must not guess a type other than the one given.
                    (
                        header::X_CONTENT_TYPE_OPTIONS,
                        HeaderValue::from_static("nosniff"),
                    ),
                ],
                content,
            )
                .into_response()
        }
        // The same answer for what is missing and what is refused: a client learns
        // nothing about what lies outside the root.
        None => plain(StatusCode::NOT_FOUND, "Not found.\n"),
    }
}

/// The real path and the content of the file `relative` names below `root`; `None`
/// when there is none, or when the path climbs out of `root` by `..` or a symlink.
async fn read_below(root: &FsPath, relative: &FsPath) -> Option<(PathBuf, Vec<u8>)> {
    // Only plain names: no `..`, and no absolute path that `join` would put in place
    // of the root.
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    let mut real = inside(root, &root.join(relative)).await?;
    if tokio::fs::metadata(&real).await.ok()?.is_dir() {
        real = inside(root, &real.join(INDEX)).await?;
    }
    // Not a FIFO or a device, whose reading could block or never end.
    if !tokio::fs::metadata(&real).await.ok()?.is_file() {
        return None;
    }
    let content = tokio::fs::read(&real).await.ok()?;
    Some((real, content))
}

/// Where `path` really is, if that is below `root` (canonical).
async fn inside(root: &FsPath, path: &FsPath) -> Option<PathBuf> {
    let real = tokio::fs::canonicalize(path).await.ok()?;
    real.starts_with(root).then_some(real)
}

fn content_type(path: &FsPath) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("txt") => TEXT_PLAIN,
        _ => "application/octet-stream",
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt().init();
    host::serve_with(|herve| herve.service_type(Site)).await
}
